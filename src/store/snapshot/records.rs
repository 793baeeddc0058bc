//! The rows lookups return (SPEC §2), the tables `/metrics` counts, and
//! the row counts `/readyz` reports.

use super::*;

/// A generation's [`Counts`]: read when it is loaded from a file; on an
/// incremental generation first its predecessor's (a `count(*)` over 1M
/// rows on every in-place change would cost tens of ms before a revocation
/// is served), then its own, counted on the watcher thread at most once a
/// second after it is served. Reads as [`Counts`].
#[derive(Debug)]
pub struct CountsCell {
    pub(super) carried: Counts,
    pub(super) own: OnceLock<Counts>,
}

impl CountsCell {
    pub(super) fn loaded(c: Counts) -> CountsCell {
        let own = OnceLock::new();
        let _ = own.set(c);
        CountsCell {
            carried: Counts::default(),
            own,
        }
    }

    pub(super) fn carried(c: Counts) -> CountsCell {
        CountsCell {
            carried: c,
            own: OnceLock::new(),
        }
    }

    /// The counts are this generation's own (not carried over).
    pub fn is_own(&self) -> bool {
        self.own.get().is_some()
    }
}

impl std::ops::Deref for CountsCell {
    type Target = Counts;
    fn deref(&self) -> &Counts {
        self.own.get().unwrap_or(&self.carried)
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Counts {
    pub organizations: u64,
    pub workspaces: u64,
    pub api_keys: u64,
    pub sessions: u64,
    pub service_keys: u64,
    pub mcp_servers: u64,
    pub mcp_tokens: u64,
    pub resources: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub organization_id: String,
    pub key_prefix: Option<String>,
    pub permissions: Option<String>,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// SPEC §6.1 optional columns (None when the snapshot lacks them)
    pub rate_limit: Option<i64>,
    pub allowed_ips: Option<String>,
}

#[derive(Debug, Clone)]
pub struct SessionRecord {
    pub id: String,
    pub user_id: String,
    pub active_organization_id: Option<String>,
    pub expires_at: i64,
}

#[derive(Debug, Clone)]
pub struct ServiceKeyRecord {
    pub id: String,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct McpTokenRecord {
    pub id: String,
    pub kind: String,
    pub mcp_server_id: String,
    pub end_user_id: Option<String>,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// SPEC §6.1 optional column
    pub rate_limit: Option<i64>,
}

/// Tables counted in `keyward_snapshot_lookups_total{table}`.
pub const TABLES: [&str; 8] = [
    "organizations",
    "workspaces",
    "api_keys",
    "sessions",
    "service_keys",
    "mcp_servers",
    "mcp_tokens",
    "resources",
];
