//! The snapshot schema (SPEC §2): the SQL that creates it, the check that a
//! file has every required table and column, and the small writers behind
//! `keyward snapshot init` and `keyward keys create` (`list`, `revoke` and
//! `rotate` are in [`keys`]). The proxy never writes.

pub mod keys;

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

/// The contract's schema, plus the optional `meta` table.
pub const CREATE_SQL: &str = r#"
CREATE TABLE IF NOT EXISTS organizations (
  id TEXT PRIMARY KEY,
  plan TEXT NOT NULL,
  rate_limit INTEGER,
  quota_exceeded INTEGER NOT NULL DEFAULT 0,
  disabled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS workspaces (
  id TEXT PRIMARY KEY,
  organization_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
  id TEXT PRIMARY KEY,
  organization_id TEXT NOT NULL,
  key_hash TEXT NOT NULL UNIQUE,
  key_prefix TEXT,
  permissions TEXT,
  expires_at INTEGER,
  revoked_at INTEGER
);
CREATE TABLE IF NOT EXISTS sessions (
  id TEXT PRIMARY KEY,
  token_hash TEXT NOT NULL UNIQUE,
  user_id TEXT NOT NULL,
  active_organization_id TEXT,
  expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS service_keys (
  id TEXT PRIMARY KEY,
  key_hash TEXT NOT NULL UNIQUE,
  revoked_at INTEGER
);
CREATE TABLE IF NOT EXISTS mcp_servers (
  id TEXT PRIMARY KEY,
  organization_id TEXT NOT NULL,
  workspace_id TEXT NOT NULL,
  auth_mode TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS mcp_tokens (
  id TEXT PRIMARY KEY,
  token_hash TEXT NOT NULL UNIQUE,
  kind TEXT NOT NULL,
  mcp_server_id TEXT NOT NULL,
  end_user_id TEXT,
  expires_at INTEGER,
  revoked_at INTEGER
);
CREATE TABLE IF NOT EXISTS resources (
  id TEXT PRIMARY KEY,
  kind TEXT NOT NULL,
  workspace_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"#;

/// Required tables and their required columns.
pub const REQUIRED: &[(&str, &[&str])] = &[
    (
        "organizations",
        &["id", "plan", "rate_limit", "quota_exceeded", "disabled"],
    ),
    ("workspaces", &["id", "organization_id"]),
    (
        "api_keys",
        &[
            "id",
            "organization_id",
            "key_hash",
            "key_prefix",
            "permissions",
            "expires_at",
            "revoked_at",
        ],
    ),
    (
        "sessions",
        &[
            "id",
            "token_hash",
            "user_id",
            "active_organization_id",
            "expires_at",
        ],
    ),
    ("service_keys", &["id", "key_hash", "revoked_at"]),
    (
        "mcp_servers",
        &["id", "organization_id", "workspace_id", "auth_mode"],
    ),
    (
        "mcp_tokens",
        &[
            "id",
            "token_hash",
            "kind",
            "mcp_server_id",
            "end_user_id",
            "expires_at",
            "revoked_at",
        ],
    ),
    ("resources", &["id", "kind", "workspace_id"]),
];

/// Why a file is not a snapshot of this schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read schema: {0}")]
    Unreadable(String),
    #[error("missing table `{0}`")]
    MissingTable(&'static str),
    #[error("table `{table}` lacks column `{column}`")]
    MissingColumn {
        table: &'static str,
        column: &'static str,
    },
}

/// Check every required table and column; the error names what is missing.
pub fn validate(conn: &Connection) -> Result<(), SchemaError> {
    for (table, columns) in REQUIRED {
        let unreadable = |e: rusqlite::Error| SchemaError::Unreadable(e.to_string());
        let mut stmt = conn
            .prepare(&format!("PRAGMA table_info({table})"))
            .map_err(unreadable)?;
        let have: Vec<String> = stmt
            .query_map([], |r| r.get::<_, String>(1))
            .and_then(|rows| rows.collect())
            .map_err(unreadable)?;
        if have.is_empty() {
            return Err(SchemaError::MissingTable(table));
        }
        for col in *columns {
            if !have.iter().any(|h| h.eq_ignore_ascii_case(col)) {
                return Err(SchemaError::MissingColumn { table, column: col });
            }
        }
    }
    Ok(())
}

/// The optional per-key policy columns (SPEC §6.1) a snapshot has: each
/// is off when its column is absent, so an older snapshot keeps working.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyColumns {
    pub api_key_rate_limit: bool,
    pub api_key_allowed_ips: bool,
    pub mcp_token_rate_limit: bool,
}

impl PolicyColumns {
    /// Which of the optional columns `conn`'s file has.
    pub fn read(conn: &Connection) -> rusqlite::Result<PolicyColumns> {
        let columns = |table: &str| -> rusqlite::Result<Vec<String>> {
            let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})"))?;
            let names = stmt.query_map([], |r| r.get::<_, String>(1))?;
            names.collect()
        };
        let has = |cols: &[String], c: &str| cols.iter().any(|h| h.eq_ignore_ascii_case(c));
        let keys = columns("api_keys")?;
        let mcp = columns("mcp_tokens")?;
        Ok(PolicyColumns {
            api_key_rate_limit: has(&keys, "rate_limit"),
            api_key_allowed_ips: has(&keys, "allowed_ips"),
            mcp_token_rate_limit: has(&mcp, "rate_limit"),
        })
    }
}

pub use crate::auth::credentials::{token_hash, token_hash_hex};

/// Create (or complete) a snapshot file with the contract's schema.
pub fn init(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.execute_batch(CREATE_SQL)?;
    Ok(conn)
}

fn random_token(prefix: &str, len: usize) -> String {
    use rand::{distributions::Alphanumeric, Rng};
    let body: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect();
    format!("{prefix}{body}")
}

/// Mint a `wvz_` key for `org` (created with plan `free` if missing), scoped
/// to `workspaces` when any are given (created in `org` if missing).
/// Returns the key; only its hash is stored.
pub fn create_api_key(
    conn: &Connection,
    org: &str,
    workspaces: &[String],
) -> Result<String, String> {
    let tx = conn.unchecked_transaction().map_err(|e| e.to_string())?;
    tx.execute(
        "INSERT OR IGNORE INTO organizations (id, plan) VALUES (?1, 'free')",
        params![org],
    )
    .map_err(|e| e.to_string())?;
    for ws in workspaces {
        let owner: Option<String> = tx
            .query_row(
                "SELECT organization_id FROM workspaces WHERE id = ?1",
                params![ws],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| e.to_string())?;
        match owner {
            None => {
                tx.execute(
                    "INSERT INTO workspaces (id, organization_id) VALUES (?1, ?2)",
                    params![ws, org],
                )
                .map_err(|e| e.to_string())?;
            }
            Some(o) if o != org => {
                return Err(format!("workspace `{ws}` belongs to another organization"))
            }
            Some(_) => {}
        }
    }
    let key = random_token("wvz_", 40);
    let id = random_token("key_", 16);
    let hash = token_hash_hex(key.as_bytes());
    let permissions = if workspaces.is_empty() {
        None
    } else {
        Some(serde_json::json!({"scope": "workspace", "workspaceIds": workspaces}).to_string())
    };
    tx.execute(
        "INSERT INTO api_keys (id, organization_id, key_hash, key_prefix, permissions) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, org, hash, &key[..8], permissions],
    )
    .map_err(|e| e.to_string())?;
    // a keyward that follows `changes` drops a negative verdict for the hash
    keys::note_change(&tx, "api_key", &hash).map_err(|e| e.to_string())?;
    keys::stamp_generated_at(&tx, crate::clock::now_unix()).map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())?;
    Ok(key)
}
