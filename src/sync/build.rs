//! Reading the source in one repeatable-read transaction and writing the
//! snapshot: a full build beside the output (checked as keyward loads it,
//! then renamed in), or the difference written in place with SPEC §2.1
//! `changes` rows so keyward drops only those verdicts.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use base64::Engine as _;
use rusqlite::{params_from_iter, Connection};
use tokio_postgres::{Client, IsolationLevel};

use super::config::{Derive, HashEncoding, SyncConfig, Table};
use super::pg::{values, PgError, Value};

/// §6.1 columns a mapping may add to the contract's tables.
const EXTRA_COLUMNS: &[(&str, &str, &str)] = &[
    ("api_keys", "rate_limit", "INTEGER"),
    ("api_keys", "allowed_ips", "TEXT"),
    ("mcp_tokens", "rate_limit", "INTEGER"),
];

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("tables.{table}: {source}")]
    Query { table: String, source: PgError },
    #[error(transparent)]
    Source(#[from] PgError),
    #[error("tables.{table}: {message}")]
    Mapping { table: String, message: String },
    #[error("snapshot {path}: {message}")]
    Snapshot { path: String, message: String },
}

fn pg(e: tokio_postgres::Error) -> SyncError {
    SyncError::Source(PgError::from(e))
}

/// One table as read from the source: its column names and rows, the
/// token column already converted to sha256 hex.
#[derive(Debug)]
pub struct Read {
    pub table: Table,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    /// rows left out (no id, an unreadable token hash), logged by id
    pub skipped: u64,
}

/// Every mapped table, read in one snapshot of the source, and that
/// snapshot's `xmin` (every transaction below it is finished and visible):
/// the outbox position a snapshot built from it starts at.
pub struct Fetched {
    pub tables: Vec<Read>,
    pub xmin: String,
}

/// The position of a repeatable-read transaction (see [`Fetched::xmin`]).
pub const XMIN_SQL: &str = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text";

/// A read-only repeatable-read transaction and its `xmin`: the one view
/// of the source a full build or a follow round reads.
pub async fn snapshot_tx(
    client: &mut Client,
) -> Result<(tokio_postgres::Transaction<'_>, String), SyncError> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg)?;
    let xmin: String = tx.query_one(XMIN_SQL, &[]).await.map_err(pg)?.get(0);
    Ok((tx, xmin))
}

pub async fn fetch_all(client: &mut Client, cfg: &SyncConfig) -> Result<Fetched, SyncError> {
    let (tx, xmin) = snapshot_tx(client).await?;
    let mut tables = Vec::with_capacity(cfg.tables.len());
    for t in &cfg.tables {
        tables.push(read_table(&tx, t, None).await?);
    }
    tx.commit().await.map_err(pg)?;
    Ok(Fetched { tables, xmin })
}

/// One table's rows, all or only those with the given ids.
pub async fn read_table(
    tx: &tokio_postgres::Transaction<'_>,
    t: &Table,
    ids: Option<&[String]>,
) -> Result<Read, SyncError> {
    let query_err = |e: tokio_postgres::Error| SyncError::Query {
        table: t.name.clone(),
        source: PgError::from(e),
    };
    let stmt = match ids {
        None => tx.prepare(&t.query).await.map_err(query_err)?,
        Some(_) => tx
            .prepare(&format!(
                "SELECT * FROM ({}) AS keyward_rows WHERE keyward_rows.id::text = ANY($1::text[])",
                t.query
            ))
            .await
            .map_err(query_err)?,
    };
    let columns: Vec<String> = stmt
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let id_at = columns
        .iter()
        .position(|c| c == "id")
        .ok_or_else(|| SyncError::Mapping {
            table: t.name.clone(),
            message: "the query returns no `id` column".into(),
        })?;
    let hash_at = match t.hash {
        Some((col, _)) => {
            Some(
                columns
                    .iter()
                    .position(|c| c == col)
                    .ok_or_else(|| SyncError::Mapping {
                        table: t.name.clone(),
                        message: format!("the query returns no `{col}` column"),
                    })?,
            )
        }
        None => None,
    };
    let rows = match ids {
        None => tx.query(&stmt, &[]).await,
        Some(ids) => tx.query(&stmt, &[&ids]).await,
    }
    .map_err(query_err)?;
    let mut out = Vec::with_capacity(rows.len());
    let mut skipped = 0;
    for row in &rows {
        let mut v = values(row).map_err(|e| SyncError::Query {
            table: t.name.clone(),
            source: e,
        })?;
        let id = match &v[id_at] {
            Value::Text(s) if !s.is_empty() => s.clone(),
            Value::Int(i) => i.to_string(),
            _ => {
                skipped += 1;
                tracing::warn!(table = %t.name, "a row without an id left out");
                continue;
            }
        };
        v[id_at] = Value::Text(id.clone());
        if let Some(d) = t.derive {
            if !derive(d, &columns, &mut v) {
                skipped += 1;
                tracing::warn!(table = %t.name, id = %id, "a row left out: its organization is not one its user belongs to");
                continue;
            }
        }
        if let (Some(at), Some((_, enc))) = (hash_at, t.hash) {
            match to_hex(enc, &v[at]) {
                Some(h) => v[at] = Value::Text(h),
                None => {
                    skipped += 1;
                    tracing::warn!(table = %t.name, id = %id, "a row whose token hash is unreadable left out (fail closed: that credential answers 401)");
                    continue;
                }
            }
        }
        out.push(v);
    }
    // columns starting with `_` feed a derivation only
    let keep: Vec<usize> = (0..columns.len())
        .filter(|&i| !columns[i].starts_with('_'))
        .collect();
    if keep.len() < columns.len() {
        for row in &mut out {
            *row = keep
                .iter()
                .map(|&i| std::mem::replace(&mut row[i], Value::Null))
                .collect();
        }
    }
    let columns = keep.iter().map(|&i| columns[i].clone()).collect();
    Ok(Read {
        table: t.clone(),
        columns,
        rows: out,
        skipped,
    })
}

/// Compute a preset's derived column in place; false: leave the row out.
fn derive(d: Derive, columns: &[String], row: &mut [Value]) -> bool {
    match d {
        Derive::BetterAuthKeyOrganization => {
            let at = |name: &str| columns.iter().position(|c| c == name);
            let (Some(org_at), Some(members_at)) = (at("organization_id"), at("_members")) else {
                return false;
            };
            let org = match &row[org_at] {
                Value::Text(meta) => serde_json::from_str::<serde_json::Value>(meta)
                    .ok()
                    .and_then(|j| j.get("organizationId")?.as_str().map(str::to_string)),
                _ => None,
            };
            let member = |o: &str| match &row[members_at] {
                Value::Text(list) => list.split(',').any(|m| m == o),
                _ => false,
            };
            match org {
                Some(o) if !o.is_empty() && member(&o) => {
                    row[org_at] = Value::Text(o);
                    true
                }
                _ => false,
            }
        }
    }
}

/// The token column as the snapshot stores it: sha256 as lowercase hex.
pub fn to_hex(enc: HashEncoding, v: &Value) -> Option<String> {
    let Value::Text(s) = v else { return None };
    let s = s.trim();
    let raw: Vec<u8> = match enc {
        HashEncoding::Plain => {
            if s.is_empty() {
                return None;
            }
            return Some(crate::auth::credentials::token_hash_hex(s.as_bytes()));
        }
        HashEncoding::Hex => hex::decode(s).ok()?,
        HashEncoding::Base64Url | HashEncoding::Base64 => {
            use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
            let config = GeneralPurposeConfig::new()
                .with_decode_padding_mode(DecodePaddingMode::Indifferent);
            let alphabet = if enc == HashEncoding::Base64Url {
                &base64::alphabet::URL_SAFE
            } else {
                &base64::alphabet::STANDARD
            };
            GeneralPurpose::new(alphabet, config).decode(s).ok()?
        }
    };
    (raw.len() == 32).then(|| hex::encode(raw))
}

fn snap_err(path: &Path, e: impl std::fmt::Display) -> SyncError {
    SyncError::Snapshot {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Columns the snapshot table has (after [`EXTRA_COLUMNS`] were added).
fn table_columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})"))?;
    let cols = stmt.query_map([], |r| r.get::<_, String>(1))?;
    cols.collect()
}

/// The §2.1 `changes` kind of a snapshot table.
pub fn change_kind(table: &str) -> &'static str {
    match table {
        "api_keys" => "api_key",
        "sessions" => "session",
        "service_keys" => "service_key",
        "mcp_tokens" => "mcp_token",
        "organizations" => "organization",
        "workspaces" => "workspace",
        "mcp_servers" => "mcp_server",
        _ => "resource",
    }
}

fn check_columns(conn: &Connection, read: &Read) -> Result<(), SyncError> {
    let have = table_columns(conn, &read.table.name).map_err(|e| SyncError::Mapping {
        table: read.table.name.clone(),
        message: e.to_string(),
    })?;
    for c in &read.columns {
        if !have.iter().any(|h| h == c) {
            return Err(SyncError::Mapping {
                table: read.table.name.clone(),
                message: format!(
                    "the query returns `{c}`, which the snapshot table lacks (columns: {})",
                    have.join(", ")
                ),
            });
        }
    }
    Ok(())
}

fn prepare_schema(conn: &Connection) -> rusqlite::Result<()> {
    for (table, col, ty) in EXTRA_COLUMNS {
        if !table_columns(conn, table)?.iter().any(|c| c == col) {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {col} {ty}"))?;
        }
    }
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, key TEXT NOT NULL)",
    )
}

/// Write a full build beside `output`, check it as keyward would load it,
/// and rename it in. The last good snapshot stays on any error.
pub fn write_full(output: &Path, fetched: &Fetched) -> Result<(), SyncError> {
    let dir = output.parent().unwrap_or(Path::new("."));
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "snapshot.db".into());
    let staging = dir.join(format!(".{name}.sync-{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let result = (|| {
        let mut conn =
            crate::store::snapshot::schema::init(&staging).map_err(|e| snap_err(&staging, e))?;
        conn.execute_batch("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF")
            .map_err(|e| snap_err(&staging, e))?;
        prepare_schema(&conn).map_err(|e| snap_err(&staging, e))?;
        let tx = conn.transaction().map_err(|e| snap_err(&staging, e))?;
        for read in &fetched.tables {
            check_columns(&tx, read)?;
            let sql = insert_sql(read);
            let mut stmt = tx.prepare(&sql).map_err(|e| snap_err(&staging, e))?;
            for row in &read.rows {
                stmt.execute(params_from_iter(row.iter()))
                    .map_err(|e| SyncError::Mapping {
                        table: read.table.name.clone(),
                        message: format!("row {}: {e}", id_of(read, row)),
                    })?;
            }
        }
        set_meta(&tx, &fetched.xmin).map_err(|e| snap_err(&staging, e))?;
        tx.commit().map_err(|e| snap_err(&staging, e))?;
        crate::store::snapshot::schema::validate(&conn).map_err(|e| snap_err(&staging, e))?;
        conn.execute_batch("PRAGMA journal_mode=DELETE")
            .map_err(|e| snap_err(&staging, e))?;
        drop(conn);
        let f = std::fs::File::open(&staging).map_err(|e| snap_err(&staging, e))?;
        f.sync_all().map_err(|e| snap_err(&staging, e))?;
        std::fs::rename(&staging, output).map_err(|e| snap_err(output, e))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&staging);
    }
    result
}

fn insert_sql(read: &Read) -> String {
    let marks = vec!["?"; read.columns.len()].join(", ");
    format!(
        "INSERT INTO {} ({}) VALUES ({marks})",
        read.table.name,
        read.columns.join(", ")
    )
}

fn id_of(read: &Read, row: &[Value]) -> String {
    let at = read.columns.iter().position(|c| c == "id").unwrap_or(0);
    match &row[at] {
        Value::Text(s) => s.clone(),
        v => format!("{v:?}"),
    }
}

fn set_meta(conn: &Connection, position: &str) -> rusqlite::Result<()> {
    let now = crate::store::clock::now_unix().to_string();
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('generated_at', ?1)",
        [&now],
    )?;
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('sync_position', ?1)",
        [position],
    )?;
    Ok(())
}

/// Which rows a difference covers: the whole table (poll), or these ids
/// (outbox: an id missing from the rows was deleted at the source).
pub enum Scope<'a> {
    All,
    Ids(&'a [String]),
}

fn sqlite_value(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Int(f as i64),
        ValueRef::Text(t) | ValueRef::Blob(t) => {
            Value::Text(String::from_utf8_lossy(t).into_owned())
        }
    }
}

/// Write the difference between `reads` and the snapshot at `output` in
/// place, in one transaction with its `changes` rows; nothing is written
/// when nothing differs (a commit without `changes` rows would make keyward
/// re-read its whole cache). Returns how many rows changed. Applying the
/// same rows twice changes nothing, so a position saved after this commit
/// (see [`save_position`]) can lag it safely.
pub fn apply_in_place(output: &Path, reads: &[(&Read, Scope<'_>)]) -> Result<u64, SyncError> {
    let mut conn = Connection::open(output).map_err(|e| snap_err(output, e))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| snap_err(output, e))?;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| snap_err(output, e))?;
    let mut seq: i64 = tx
        .query_row("SELECT coalesce(max(seq), 0) FROM changes", [], |r| {
            r.get(0)
        })
        .map_err(|e| snap_err(output, e))?;
    let mut changed = 0u64;
    for (read, scope) in reads {
        check_columns(&tx, read)?;
        let table = &read.table.name;
        let kind = change_kind(table);
        let cols = read.columns.join(", ");
        let id_at = read.columns.iter().position(|c| c == "id").unwrap();
        let hash_at = read
            .table
            .hash
            .and_then(|(col, _)| read.columns.iter().position(|c| c == col));
        let new: HashMap<&str, &Vec<Value>> = read
            .rows
            .iter()
            .map(|r| match &r[id_at] {
                Value::Text(s) => (s.as_str(), r),
                _ => unreachable!("ids are text after read_table"),
            })
            .collect();
        // the rows in the snapshot now, for the ids in scope
        let mut old: HashMap<String, Vec<Value>> = HashMap::new();
        {
            let n = read.columns.len();
            let collect = |stmt: &mut rusqlite::Statement<'_>,
                           params: &[&dyn rusqlite::ToSql],
                           old: &mut HashMap<String, Vec<Value>>|
             -> rusqlite::Result<()> {
                let mut rows = stmt.query(params)?;
                while let Some(r) = rows.next()? {
                    let v: Vec<Value> = (0..n)
                        .map(|i| sqlite_value(r.get_ref(i).unwrap()))
                        .collect();
                    if let Value::Text(id) = &v[id_at] {
                        old.insert(id.clone(), v);
                    }
                }
                Ok(())
            };
            match scope {
                Scope::All => {
                    let mut stmt = tx
                        .prepare(&format!("SELECT {cols} FROM {table}"))
                        .map_err(|e| snap_err(output, e))?;
                    collect(&mut stmt, &[], &mut old).map_err(|e| snap_err(output, e))?;
                }
                Scope::Ids(ids) => {
                    let mut stmt = tx
                        .prepare(&format!("SELECT {cols} FROM {table} WHERE id = ?1"))
                        .map_err(|e| snap_err(output, e))?;
                    for id in *ids {
                        collect(&mut stmt, &[id], &mut old).map_err(|e| snap_err(output, e))?;
                    }
                }
            }
        }
        let ids: BTreeSet<&str> = match scope {
            Scope::All => old
                .keys()
                .map(String::as_str)
                .chain(new.keys().copied())
                .collect(),
            Scope::Ids(ids) => ids.iter().map(String::as_str).collect(),
        };
        let mut delete = tx
            .prepare(&format!("DELETE FROM {table} WHERE id = ?1"))
            .map_err(|e| snap_err(output, e))?;
        let mut insert = tx
            .prepare(&insert_sql(read))
            .map_err(|e| snap_err(output, e))?;
        let mut change = tx
            .prepare("INSERT INTO changes (seq, kind, key) VALUES (?1, ?2, ?3)")
            .map_err(|e| snap_err(output, e))?;
        // every delete before any insert: two rows trading a token hash
        // must not meet the UNIQUE index half-way
        let differing: Vec<&str> = ids
            .into_iter()
            .filter(|id| old.get(*id) != new.get(*id).copied())
            .collect();
        for id in &differing {
            if old.contains_key(*id) {
                delete.execute([id]).map_err(|e| snap_err(output, e))?;
            }
        }
        for id in differing {
            let (before, after) = (old.get(id), new.get(id).copied());
            if let Some(row) = after {
                insert
                    .execute(params_from_iter(row.iter()))
                    .map_err(|e| SyncError::Mapping {
                        table: table.clone(),
                        message: format!("row {id}: {e}"),
                    })?;
            }
            // what keyward must forget: a token's hash (old and new), or the id
            let mut keys: Vec<String> = Vec::new();
            match hash_at {
                Some(at) => {
                    for r in [before, after].into_iter().flatten() {
                        if let Value::Text(h) = &r[at] {
                            if !keys.contains(h) {
                                keys.push(h.clone());
                            }
                        }
                    }
                }
                None => keys.push(id.to_string()),
            }
            for k in keys {
                seq += 1;
                change
                    .execute(rusqlite::params![seq, kind, k])
                    .map_err(|e| snap_err(output, e))?;
            }
            changed += 1;
        }
    }
    if changed == 0 {
        return Ok(0); // rolled back: nothing written
    }
    {
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('generated_at', ?1)",
            [crate::store::clock::now_unix().to_string()],
        )
        .map_err(|e| snap_err(output, e))?;
        // keep the log bounded; keyward re-reads its cache on a gap
        tx.execute("DELETE FROM changes WHERE seq <= ?1", [seq - 100_000])
            .map_err(|e| snap_err(output, e))?;
    }
    tx.commit().map_err(|e| snap_err(output, e))?;
    Ok(changed)
}

/// Where the outbox position of the snapshot at `output` is kept: beside
/// it, not in it (writing it into the snapshot would be a commit keyward
/// sees without `changes` rows).
pub fn position_path(output: &Path) -> std::path::PathBuf {
    let mut p = output.as_os_str().to_owned();
    p.push(".position");
    p.into()
}

/// Save the position after the rows up to it are in the snapshot
/// (atomically: written beside, renamed over).
pub fn save_position(output: &Path, position: &str) -> std::io::Result<()> {
    let path = position_path(output);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, position)?;
    std::fs::rename(&tmp, &path)
}

/// The saved position, if any.
pub fn load_position(output: &Path) -> Option<String> {
    std::fs::read_to_string(position_path(output))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
}
