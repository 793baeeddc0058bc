//! `keyward keys list | revoke | rotate` (SPEC §8.2): API keys in a snapshot
//! file, read or changed by the operator while keyward serves the file.
//!
//! Each change is one short `BEGIN IMMEDIATE` transaction (the write lock is
//! taken before the row is read, so the check and the write see the same
//! row): a running keyward sees the commit through its watcher (`PRAGMA
//! data_version`) and re-reads its cached verdicts. Like `keys create`, a
//! change also stamps `meta.generated_at`, and appends to the optional
//! `changes` table (SPEC §2.1) when the file has one. Nothing here reads or
//! prints a key's hash; only `rotate` prints a secret, the one it mints.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use super::{random_token, token_hash_hex, SchemaError};
use crate::principal::Scope;

/// How long a writer waits for a reader's or another writer's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a `keys` command failed; the message is what the operator reads.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("{}: no such snapshot (create it with `keyward snapshot init`)", .0.display())]
    NoSnapshot(PathBuf),
    #[error("{}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("{}: not a keyward snapshot: {source}", path.display())]
    Schema { path: PathBuf, source: SchemaError },
    #[error("no API key with id `{0}`")]
    UnknownKey(String),
    #[error("API key `{id}` is already revoked (since {})", rfc3339(*at))]
    AlreadyRevoked { id: String, at: i64 },
    #[error("API key `{id}` is revoked (since {}): only a live key can be rotated", rfc3339(*at))]
    RotateRevoked { id: String, at: i64 },
    #[error("API key `{id}` expired at {}: only a live key can be rotated (mint a new one with `keyward keys create`)", rfc3339(*at))]
    RotateExpired { id: String, at: i64 },
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
}

/// Open an existing snapshot for `keys` commands: never creates the file
/// (or a table), waits up to [`BUSY_TIMEOUT`] for locks, and checks the
/// schema keyward itself requires.
pub fn open(path: &Path, writable: bool) -> Result<Connection, KeysError> {
    if !path.exists() {
        return Err(KeysError::NoSnapshot(path.to_path_buf()));
    }
    let open_error = |source| KeysError::Open {
        path: path.to_path_buf(),
        source,
    };
    let mode = if writable {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    };
    let conn = Connection::open_with_flags(path, mode | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(open_error)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
    super::validate(&conn).map_err(|source| KeysError::Schema {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(conn)
}

/// One API key as an operator may see it: the snapshot's row without the
/// hash (the row type the proxy reads; no secret is in it).
pub type KeyInfo = crate::snapshot::ApiKeyRecord;

impl KeyInfo {
    /// Read the way the proxy reads it (`Scope::parse`).
    pub fn scope(&self) -> Scope {
        Scope::parse(self.permissions.as_deref())
    }

    /// `org`, the comma-joined workspace ids, or `malformed` (the proxy
    /// answers 403 for such a key).
    pub fn scope_text(&self) -> String {
        match self.scope() {
            Scope::OrgWide => "org".into(),
            Scope::Workspaces { header, .. } => header.to_string(),
            Scope::Malformed => "malformed".into(),
        }
    }
}

const COLUMNS: &str = "id, organization_id, key_prefix, permissions, expires_at, revoked_at";

fn key_info(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyInfo> {
    Ok(KeyInfo {
        id: r.get(0)?,
        organization_id: r.get(1)?,
        key_prefix: r.get(2)?,
        permissions: r.get(3)?,
        expires_at: r.get(4)?,
        revoked_at: r.get(5)?,
        rate_limit: None,
        allowed_ips: None,
    })
}

/// Every API key, or those of `org`, ordered by organization then id.
pub fn list(conn: &Connection, org: Option<&str>) -> Result<Vec<KeyInfo>, KeysError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM api_keys WHERE ?1 IS NULL OR organization_id = ?1 ORDER BY organization_id, id"
    ))?;
    let rows = stmt.query_map(params![org], key_info)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The row with `id` and its hash (for the `changes` table only).
fn find(conn: &Connection, id: &str) -> Result<(KeyInfo, String), KeysError> {
    conn.query_row(
        &format!("SELECT {COLUMNS}, key_hash FROM api_keys WHERE id = ?1"),
        params![id],
        |r| Ok((key_info(r)?, r.get::<_, String>(6)?)),
    )
    .optional()?
    .ok_or_else(|| KeysError::UnknownKey(id.to_string()))
}

/// Append `(kind, key)` to the `changes` table (SPEC §2.1) if the file has
/// one, as the next `seq`, so a keyward that follows it invalidates exactly
/// that verdict.
pub(super) fn note_change(conn: &Connection, kind: &str, key: &str) -> rusqlite::Result<()> {
    let has_changes: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'changes')",
        [],
        |r| r.get(0),
    )?;
    if has_changes {
        conn.execute(
            "INSERT INTO changes (seq, kind, key) VALUES ((SELECT COALESCE(MAX(seq), 0) + 1 FROM changes), ?1, ?2)",
            params![kind, key],
        )?;
    }
    Ok(())
}

/// `meta.generated_at = now`, as `keys create` does.
pub(super) fn stamp_generated_at(conn: &Connection, now: i64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('generated_at', ?1)",
        params![now.to_string()],
    )
    .map(drop)
}

/// Set `revoked_at = now` on key `id`. An unknown id, or a key already
/// revoked (its `revoked_at` is kept), is an error.
pub fn revoke(conn: &mut Connection, id: &str, now: i64) -> Result<KeyInfo, KeysError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (mut key, hash) = find(&tx, id)?;
    if let Some(at) = key.revoked_at {
        return Err(KeysError::AlreadyRevoked { id: key.id, at });
    }
    tx.execute(
        "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1",
        params![id, now],
    )?;
    note_change(&tx, "api_key", &hash)?;
    stamp_generated_at(&tx, now)?;
    tx.commit()?;
    key.revoked_at = Some(now);
    Ok(key)
}

/// What [`rotate`] did.
#[derive(Debug, Clone)]
pub struct Rotated {
    /// The new key (the only time it exists in clear).
    pub key: String,
    /// The new key's row.
    pub new: KeyInfo,
    /// The old key's row as it is now (its new `expires_at`).
    pub old: KeyInfo,
}

/// Mint a key with the organization and `permissions` (verbatim) of live key
/// `id`, and let `id` expire `grace` seconds from `now`, or earlier if it
/// already expires earlier (a rotation never extends a key's life). The new
/// key never expires. A revoked or expired key is refused.
pub fn rotate(conn: &mut Connection, id: &str, grace: u64, now: i64) -> Result<Rotated, KeysError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (mut old, old_hash) = find(&tx, id)?;
    if let Some(at) = old.revoked_at {
        return Err(KeysError::RotateRevoked { id: old.id, at });
    }
    if let Some(at) = old.expires_at.filter(|&at| at <= now) {
        return Err(KeysError::RotateExpired { id: old.id, at });
    }
    let until = now.saturating_add(i64::try_from(grace).unwrap_or(i64::MAX));
    let expires_at = old.expires_at.map_or(until, |at| at.min(until));
    let key = random_token("wvz_", 40);
    let new = KeyInfo {
        id: random_token("key_", 16),
        organization_id: old.organization_id.clone(),
        key_prefix: Some(key[..8].to_string()),
        permissions: old.permissions.clone(),
        expires_at: None,
        revoked_at: None,
        rate_limit: None,
        allowed_ips: None,
    };
    let new_hash = token_hash_hex(key.as_bytes());
    tx.execute(
        "INSERT INTO api_keys (id, organization_id, key_hash, key_prefix, permissions) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![new.id, new.organization_id, new_hash, new.key_prefix, new.permissions],
    )?;
    // the new key keeps the old one's per-key policy (SPEC §6.1)
    let policy = super::PolicyColumns::read(&tx)?;
    for (has, column) in [
        (policy.api_key_rate_limit, "rate_limit"),
        (policy.api_key_allowed_ips, "allowed_ips"),
    ] {
        if has {
            tx.execute(
                &format!("UPDATE api_keys SET {column} = (SELECT {column} FROM api_keys WHERE id = ?1) WHERE id = ?2"),
                params![id, new.id],
            )?;
        }
    }
    tx.execute(
        "UPDATE api_keys SET expires_at = ?2 WHERE id = ?1",
        params![id, expires_at],
    )?;
    note_change(&tx, "api_key", &old_hash)?;
    note_change(&tx, "api_key", &new_hash)?;
    stamp_generated_at(&tx, now)?;
    tx.commit()?;
    old.expires_at = Some(expires_at);
    Ok(Rotated { key, new, old })
}

/// A duration as `keys rotate --grace` takes it: a whole number followed by
/// `s`, `m`, `h` or `d` (`90s`, `15m`, `24h`, `7d`); in seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let bad = || {
        format!("invalid duration `{text}`: expected a whole number followed by s, m, h or d (e.g. 90s, 15m, 24h, 7d)")
    };
    let unit = text.chars().last().ok_or_else(bad)?;
    let digits = &text[..text.len() - unit.len_utf8()];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let per_unit: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(per_unit))
        // beyond this a unix timestamp would not fit an SQLite INTEGER
        .filter(|&secs| secs <= i64::MAX as u64 / 2)
        .ok_or_else(|| format!("invalid duration `{text}`: too large"))
}

/// Unix seconds as RFC 3339 UTC, e.g. `2026-11-22T20:42:33Z`.
pub fn rfc3339(secs: i64) -> String {
    let (days, s) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = crate::store::clock::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

fn time_text(t: Option<i64>) -> String {
    t.map_or_else(|| "-".into(), rfc3339)
}

/// `keys list`: a header line, then one line per key in aligned columns
/// (id, org, prefix, scope, expires_at, revoked_at; `-` for none).
pub fn table(keys: &[KeyInfo]) -> String {
    let rows: Vec<[String; 6]> = keys
        .iter()
        .map(|k| {
            [
                k.id.clone(),
                k.organization_id.clone(),
                k.key_prefix.clone().unwrap_or_else(|| "-".into()),
                k.scope_text(),
                time_text(k.expires_at),
                time_text(k.revoked_at),
            ]
        })
        .collect();
    let header = ["ID", "ORG", "PREFIX", "SCOPE", "EXPIRES_AT", "REVOKED_AT"].map(String::from);
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `keys list --json`: an array of
/// `{"id","org","prefix","scope":"org"|"workspace"|"malformed","workspace_ids",
/// "expires_at","revoked_at"}`, times as RFC 3339 UTC or null.
pub fn json(keys: &[KeyInfo]) -> serde_json::Value {
    keys.iter()
        .map(|k| {
            let (scope, workspace_ids) = match k.scope() {
                Scope::OrgWide => ("org", None),
                Scope::Workspaces { ids, .. } => (
                    "workspace",
                    Some(ids.iter().map(|i| i.to_string()).collect::<Vec<_>>()),
                ),
                Scope::Malformed => ("malformed", None),
            };
            serde_json::json!({
                "id": k.id,
                "org": k.organization_id,
                "prefix": k.key_prefix,
                "scope": scope,
                "workspace_ids": workspace_ids,
                "expires_at": k.expires_at.map(rfc3339),
                "revoked_at": k.revoked_at.map(rfc3339),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_each_unit() {
        assert_eq!(parse_duration("0s"), Ok(0));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("24h"), Ok(86_400));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        assert_eq!(parse_duration("007m"), Ok(420));
    }

    #[test]
    fn durations_refused_with_the_expected_form() {
        for bad in [
            "", "5x", "5", "s", "h", "-5s", "+5s", " 5s", "5s ", "5 s", "1.5h", "5S", "5ms",
            "1h30m", "5é", "٥s",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains(&format!("`{bad}`")), "{bad:?}: {e}");
            assert!(e.contains("s, m, h or d"), "{bad:?}: {e}");
        }
        let e = parse_duration("99999999999999999999d").unwrap_err();
        assert!(e.contains("too large"), "{e}");
        assert!(parse_duration(&format!("{}d", u64::MAX / 86_400)).is_err());
    }

    #[test]
    fn rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_763_844_153), "2025-11-22T20:42:33Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }

    /// A schema-complete file with org `org_a`, an org-wide key and a key
    /// scoped to two workspaces.
    fn snapshot() -> (tempfile::TempDir, PathBuf, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let conn = super::super::init(&path).unwrap();
        let org_key = super::super::create_api_key(&conn, "org_a", &[]).unwrap();
        let ws = ["ws_1".to_string(), "ws_2".to_string()];
        let scoped = super::super::create_api_key(&conn, "org_a", &ws).unwrap();
        (dir, path, org_key, scoped)
    }

    fn id_of(conn: &Connection, key: &str) -> String {
        conn.query_row(
            "SELECT id FROM api_keys WHERE key_hash = ?1",
            [token_hash_hex(key.as_bytes())],
            |r| r.get(0),
        )
        .unwrap()
    }

    #[test]
    fn open_refuses_a_missing_file_without_creating_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.db");
        let e = open(&path, true).unwrap_err();
        assert!(e.to_string().contains("snapshot init"), "{e}");
        assert!(!path.exists());
        std::fs::write(&path, b"").unwrap();
        let e = open(&path, false).unwrap_err();
        assert!(e.to_string().contains("missing table"), "{e}");
    }

    #[test]
    fn list_shows_scopes_and_filters_by_org() {
        let (_dir, path, org_key, _scoped) = snapshot();
        let conn = open(&path, true).unwrap();
        super::super::create_api_key(&conn, "org_b", &[]).unwrap();
        conn.execute(
            "INSERT INTO api_keys (id, organization_id, key_hash, permissions) VALUES ('key_bad', 'org_b', 'h', '{')",
            [],
        )
        .unwrap();
        let all = list(&conn, None).unwrap();
        assert_eq!(all.len(), 4);
        let scopes: Vec<String> = all.iter().map(KeyInfo::scope_text).collect();
        assert!(scopes.contains(&"org".to_string()));
        assert!(scopes.contains(&"ws_1,ws_2".to_string()));
        assert!(scopes.contains(&"malformed".to_string()));
        let a = list(&conn, Some("org_a")).unwrap();
        assert_eq!(a.len(), 2);
        assert!(a.iter().all(|k| k.organization_id == "org_a"));
        assert!(list(&conn, Some("org_none")).unwrap().is_empty());
        let text = table(&all);
        assert_eq!(text.lines().count(), 5, "{text}");
        assert!(text.lines().next().unwrap().starts_with("ID "), "{text}");
        assert!(
            text.contains(&org_key[..8]) && !text.contains(&org_key),
            "{text}"
        );
        // aligned: every line has its second column at the same offset
        let at: Vec<usize> = text
            .lines()
            .map(|l| l.find("  ").unwrap() + l[l.find("  ").unwrap()..].find(|c| c != ' ').unwrap())
            .collect();
        assert!(at.windows(2).all(|w| w[0] == w[1]), "{text}");
        let j = json(&a);
        let scoped = j
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["scope"] == "workspace")
            .unwrap();
        assert_eq!(scoped["workspace_ids"], serde_json::json!(["ws_1", "ws_2"]));
        assert_eq!(scoped["expires_at"], serde_json::Value::Null);
    }

    #[test]
    fn revoke_sets_revoked_at_once() {
        let (_dir, path, org_key, _) = snapshot();
        let mut conn = open(&path, true).unwrap();
        let id = id_of(&conn, &org_key);
        let k = revoke(&mut conn, &id, 1_000).unwrap();
        assert_eq!(k.revoked_at, Some(1_000));
        let again = revoke(&mut conn, &id, 2_000).unwrap_err();
        assert!(
            matches!(again, KeysError::AlreadyRevoked { at: 1_000, .. }),
            "{again}"
        );
        let row = list(&conn, None)
            .unwrap()
            .into_iter()
            .find(|k| k.id == id)
            .unwrap();
        assert_eq!(row.revoked_at, Some(1_000));
        let e = revoke(&mut conn, "key_nope", 1).unwrap_err();
        assert!(matches!(e, KeysError::UnknownKey(_)), "{e}");
        assert!(e.to_string().contains("key_nope"));
    }

    #[test]
    fn rotate_copies_org_and_permissions_and_sets_the_grace() {
        let (_dir, path, _, scoped) = snapshot();
        let mut conn = open(&path, true).unwrap();
        let id = id_of(&conn, &scoped);
        let now = crate::clock::now_unix();
        let r = rotate(&mut conn, &id, 900, now).unwrap();
        assert!(r.key.starts_with("wvz_") && r.key != scoped);
        assert_eq!(r.new.id, id_of(&conn, &r.key));
        let rows = list(&conn, None).unwrap();
        let old = rows.iter().find(|k| k.id == id).unwrap();
        let new = rows.iter().find(|k| k.id == r.new.id).unwrap();
        assert_eq!(old.expires_at, Some(now + 900));
        assert_eq!(new.organization_id, old.organization_id);
        assert_eq!(new.permissions, old.permissions);
        assert_eq!((new.expires_at, new.revoked_at), (None, None));
        assert_eq!(new.key_prefix.as_deref(), Some(&r.key[..8]));
        // never extends: a second rotation with a longer grace keeps the sooner expiry
        rotate(&mut conn, &id, 86_400, now).unwrap();
        let old = list(&conn, None)
            .unwrap()
            .into_iter()
            .find(|k| k.id == id)
            .unwrap();
        assert_eq!(old.expires_at, Some(now + 900));
    }

    #[test]
    fn rotate_refuses_revoked_expired_and_unknown_keys_and_writes_nothing() {
        let (_dir, path, org_key, scoped) = snapshot();
        let mut conn = open(&path, true).unwrap();
        let (a, b) = (id_of(&conn, &org_key), id_of(&conn, &scoped));
        revoke(&mut conn, &a, 10).unwrap();
        conn.execute("UPDATE api_keys SET expires_at = 20 WHERE id = ?1", [&b])
            .unwrap();
        let e = rotate(&mut conn, &a, 60, 30).unwrap_err();
        assert!(matches!(e, KeysError::RotateRevoked { .. }), "{e}");
        let e = rotate(&mut conn, &b, 60, 30).unwrap_err();
        assert!(matches!(e, KeysError::RotateExpired { at: 20, .. }), "{e}");
        let e = rotate(&mut conn, "key_nope", 60, 30).unwrap_err();
        assert!(matches!(e, KeysError::UnknownKey(_)), "{e}");
        assert_eq!(list(&conn, None).unwrap().len(), 2);
    }

    #[test]
    fn changes_rows_follow_the_next_seq_when_the_table_exists() {
        let (_dir, path, org_key, scoped) = snapshot();
        let mut conn = open(&path, true).unwrap();
        conn.execute_batch(
            "CREATE TABLE changes (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, key TEXT NOT NULL);
             INSERT INTO changes VALUES (41, 'organization', 'org_a');",
        )
        .unwrap();
        let (a, b) = (id_of(&conn, &org_key), id_of(&conn, &scoped));
        revoke(&mut conn, &a, 10).unwrap();
        let r = rotate(&mut conn, &b, 60, 10).unwrap();
        let rows: Vec<(i64, String, String)> = conn
            .prepare("SELECT seq, kind, key FROM changes WHERE seq > 41 ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let hash = |k: &str| token_hash_hex(k.as_bytes());
        let want = [
            (42, hash(&org_key)),
            (43, hash(&scoped)),
            (44, hash(&r.key)),
        ];
        assert_eq!(rows.len(), 3);
        for ((seq, kind, key), (want_seq, want_key)) in rows.iter().zip(want) {
            assert_eq!((*seq, kind.as_str(), key), (want_seq, "api_key", &want_key));
        }
    }
}
