//! The optional `changes` table (SPEC §2.1): what a control plane writing
//! the snapshot in place says it changed, so that an in-place commit costs
//! the verdicts it touched instead of a rebuild of the whole verdict cache.
//!
//! Read on the watcher's change probe, in one read transaction together
//! with `PRAGMA data_version`, so the rows read and the commit counter they
//! answer for describe the same state of the file: a commit landing after
//! that transaction moves `data_version` again and is read on the next
//! wake-up. Nothing here writes.

use rusqlite::{params, Connection, OptionalExtension};

use crate::principal::TokenTable;

/// Most rows one in-place change may carry and still be applied key by
/// key; beyond it the change takes the full path (a refill of the whole
/// cache costs about as much as re-reading that many keys, and bounds the
/// work a single commit can cause).
pub const MAX_CHANGES: usize = 10_000;

/// What one `changes` row names, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// a token row, by `(table, sha256(token))`
    Token(TokenTable, [u8; 32]),
    Organization(String),
    Workspace(String),
    McpServer(String),
    Resource(String),
}

/// Why an in-place change (or a load) takes the full path: every cached
/// verdict is re-read, as without the table. Label values of
/// `keyward_snapshot_swaps_total{path="full",reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// first load, or a file renamed over the path (a new file: its `seq`
    /// is a new starting point)
    Opened,
    /// the file has no `changes` table now, or had none when opened
    NoTable,
    /// the smallest new `seq` is not the last seen + 1 (rows were pruned
    /// before keyward read them, or the sequence was restarted)
    Gap,
    /// more than [`MAX_CHANGES`] rows since the last one seen
    TooMany,
    /// a commit that appended no row (or a row keyward cannot parse): what
    /// changed is unknown
    Unlogged,
    /// the verdict cache chose a full refill (too many keys invalidated
    /// recently to track one by one)
    Cache,
}

impl Fallback {
    pub const ALL: [Fallback; 6] = [
        Fallback::Opened,
        Fallback::NoTable,
        Fallback::Gap,
        Fallback::TooMany,
        Fallback::Unlogged,
        Fallback::Cache,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Opened => "opened",
            Fallback::NoTable => "no_changes_table",
            Fallback::Gap => "gap",
            Fallback::TooMany => "too_many_changes",
            Fallback::Unlogged => "unlogged_commit",
            Fallback::Cache => "cache",
        }
    }
}

/// The state of the file as one read transaction saw it.
#[derive(Debug)]
pub struct Seen {
    pub data_version: i64,
    /// `max(seq)` (0 for an empty table); None without a `changes` table
    pub last_seq: Option<i64>,
    /// rows with `seq` greater than the one asked for, ascending (at most
    /// [`MAX_CHANGES`] + 1)
    pub rows: Vec<(i64, String, String)>,
}

fn has_table(conn: &Connection) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'changes')",
    )?
    .query_row([], |r| r.get(0))
}

/// Read, in one transaction: whether the table exists, its highest `seq`,
/// the rows after `after` (when given) and `PRAGMA data_version`.
pub fn read(conn: &Connection, after: Option<i64>) -> rusqlite::Result<Seen> {
    conn.execute_batch("BEGIN")?;
    let seen = (|| -> rusqlite::Result<Seen> {
        // The first read takes the transaction's snapshot; data_version
        // read after it answers for that same snapshot.
        let exists = has_table(conn)?;
        let mut last_seq = None;
        let mut rows = Vec::new();
        if exists {
            last_seq = Some(
                conn.prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM changes")?
                    .query_row([], |r| r.get::<_, i64>(0))?,
            );
            if let Some(after) = after {
                let mut stmt = conn.prepare_cached(
                    "SELECT seq, kind, key FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )?;
                rows = stmt
                    .query_map(params![after, MAX_CHANGES as i64 + 1], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?
                    .collect::<rusqlite::Result<_>>()?;
            }
        }
        let data_version = conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        Ok(Seen {
            data_version,
            last_seq,
            rows,
        })
    })();
    let end = conn.execute_batch("COMMIT");
    if end.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    let seen = seen?;
    end?;
    Ok(seen)
}

/// What an in-place commit changed, from the rows after `last` (the
/// highest `seq` the served generation saw; None: it had no table) and
/// whether the table exists now: the parsed changes and the new last
/// `seq`, or why the full path must be taken.
pub fn plan(
    last: Option<i64>,
    now_last: Option<i64>,
    rows: &[(i64, String, String)],
) -> Result<(Vec<Change>, i64), Fallback> {
    let (Some(last), Some(_)) = (last, now_last) else {
        return Err(Fallback::NoTable);
    };
    if rows.len() > MAX_CHANGES {
        return Err(Fallback::TooMany);
    }
    let Some(first) = rows.first() else {
        // data_version moved (the caller knows) but nothing was appended
        return Err(Fallback::Unlogged);
    };
    if first.0 != last + 1 {
        return Err(Fallback::Gap);
    }
    let mut changes = Vec::with_capacity(rows.len());
    let mut expect = last + 1;
    for (seq, kind, key) in rows {
        // strictly consecutive: a hole in the middle is a gap too
        if *seq != expect {
            return Err(Fallback::Gap);
        }
        expect += 1;
        changes.push(parse(kind, key).ok_or(Fallback::Unlogged)?);
    }
    Ok((changes, expect - 1))
}

/// One row as a [`Change`]; None for a kind this version does not know or
/// a token key that is not a sha256 in hex (the change is then unknown).
pub fn parse(kind: &str, key: &str) -> Option<Change> {
    let token = |t: TokenTable| {
        let mut hash = [0u8; 32];
        hex::decode_to_slice(key.trim(), &mut hash).ok()?;
        Some(Change::Token(t, hash))
    };
    match kind {
        "api_key" => token(TokenTable::ApiKey),
        "session" => token(TokenTable::Session),
        "service_key" => token(TokenTable::ServiceKey),
        "mcp_token" => token(TokenTable::McpToken),
        "organization" => Some(Change::Organization(key.to_owned())),
        "workspace" => Some(Change::Workspace(key.to_owned())),
        "mcp_server" => Some(Change::McpServer(key.to_owned())),
        "resource" => Some(Change::Resource(key.to_owned())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(r: &[(i64, &str, &str)]) -> Vec<(i64, String, String)> {
        r.iter()
            .map(|(s, k, v)| (*s, k.to_string(), v.to_string()))
            .collect()
    }

    const H: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn consecutive_rows_after_the_last_seen_are_applied() {
        let (c, last) = plan(
            Some(4),
            Some(6),
            &rows(&[(5, "api_key", H), (6, "organization", "org_a")]),
        )
        .unwrap();
        assert_eq!(last, 6);
        assert!(matches!(c[0], Change::Token(TokenTable::ApiKey, h) if h[1] == 0x11));
        assert_eq!(c[1], Change::Organization("org_a".into()));
    }

    #[test]
    fn an_empty_table_at_load_starts_at_zero() {
        let (c, last) = plan(Some(0), Some(1), &rows(&[(1, "session", H)])).unwrap();
        assert_eq!((c.len(), last), (1, 1));
    }

    #[test]
    fn a_gap_before_or_between_rows_falls_back() {
        assert_eq!(
            plan(Some(4), Some(6), &rows(&[(6, "api_key", H)])),
            Err(Fallback::Gap)
        );
        assert_eq!(
            plan(
                Some(4),
                Some(7),
                &rows(&[(5, "api_key", H), (7, "api_key", H)])
            ),
            Err(Fallback::Gap)
        );
        // pruned to nothing and restarted at 1
        assert_eq!(
            plan(Some(9), Some(1), &rows(&[(1, "api_key", H)])),
            Err(Fallback::Gap)
        );
    }

    #[test]
    fn no_table_then_or_now_falls_back() {
        assert_eq!(
            plan(None, Some(1), &rows(&[(1, "api_key", H)])),
            Err(Fallback::NoTable)
        );
        assert_eq!(plan(Some(3), None, &[]), Err(Fallback::NoTable));
    }

    #[test]
    fn a_commit_without_rows_or_with_unknown_rows_falls_back() {
        assert_eq!(plan(Some(3), Some(3), &[]), Err(Fallback::Unlogged));
        assert_eq!(
            plan(Some(3), Some(4), &rows(&[(4, "api_key", "not-hex")])),
            Err(Fallback::Unlogged)
        );
        assert_eq!(
            plan(Some(3), Some(4), &rows(&[(4, "team", "t_1")])),
            Err(Fallback::Unlogged)
        );
    }

    #[test]
    fn too_many_rows_fall_back() {
        let many: Vec<_> = (1..=MAX_CHANGES as i64 + 1)
            .map(|s| (s, "resource".to_string(), format!("r{s}")))
            .collect();
        assert_eq!(
            plan(Some(0), Some(many.len() as i64), &many),
            Err(Fallback::TooMany)
        );
        assert!(plan(Some(0), Some(MAX_CHANGES as i64), &many[..MAX_CHANGES]).is_ok());
    }

    #[test]
    fn read_sees_rows_and_data_version_in_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let w = Connection::open(&path).unwrap();
        let r = Connection::open(&path).unwrap();
        assert_eq!(read(&r, Some(0)).unwrap().last_seq, None);
        w.execute_batch(
            "CREATE TABLE changes (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, key TEXT NOT NULL);",
        )
        .unwrap();
        let before = read(&r, Some(0)).unwrap();
        assert_eq!((before.last_seq, before.rows.len()), (Some(0), 0));
        w.execute_batch(
            "INSERT INTO changes VALUES (1, 'workspace', 'ws_1'), (2, 'resource', 'r');",
        )
        .unwrap();
        let after = read(&r, Some(1)).unwrap();
        assert_eq!(after.last_seq, Some(2));
        assert_eq!(after.rows, rows(&[(2, "resource", "r")]));
        assert_ne!(after.data_version, before.data_version);
        assert!(r.is_autocommit());
    }
}
