//! Reading principals from snapshot rows: one token's row and the rows it
//! names (organization, MCP server), as the [`Verdict`] the cache keeps. The
//! only place rows become principals — for SQLite (inside the caller's read
//! transaction) and for the in-memory directory alike, through [`Rows`].

use std::sync::Arc;

use crate::auth::limit::credential_key;
use crate::principal::{
    AllowedIps, ApiKey, McpKind, McpToken, OwnLimit, Permissions, ServiceKey, Session, TokenTable,
    Verdict,
};
use crate::snapshot::{
    ApiKeyRecord, McpServerRecord, McpTokenRecord, Org, Reader, ServiceKeyRecord, SessionRecord,
    StoreError,
};

/// The snapshot rows a verdict is read from (SPEC §2), by token hash (hex)
/// or id.
pub trait Rows {
    fn api_key(&self, hash_hex: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
    fn session(&self, hash_hex: &str) -> Result<Option<SessionRecord>, StoreError>;
    fn service_key(&self, hash_hex: &str) -> Result<Option<ServiceKeyRecord>, StoreError>;
    fn mcp_token(&self, hash_hex: &str) -> Result<Option<McpTokenRecord>, StoreError>;
    fn mcp_server(&self, id: &str) -> Result<Option<McpServerRecord>, StoreError>;
    fn organization(&self, id: &str) -> Result<Option<Org>, StoreError>;
}

impl Rows for Reader<'_> {
    fn api_key(&self, hash_hex: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        Reader::api_key(self, hash_hex)
    }
    fn session(&self, hash_hex: &str) -> Result<Option<SessionRecord>, StoreError> {
        Reader::session(self, hash_hex)
    }
    fn service_key(&self, hash_hex: &str) -> Result<Option<ServiceKeyRecord>, StoreError> {
        Reader::service_key(self, hash_hex)
    }
    fn mcp_token(&self, hash_hex: &str) -> Result<Option<McpTokenRecord>, StoreError> {
        Reader::mcp_token(self, hash_hex)
    }
    fn mcp_server(&self, id: &str) -> Result<Option<McpServerRecord>, StoreError> {
        Reader::mcp_server(self, id)
    }
    fn organization(&self, id: &str) -> Result<Option<Org>, StoreError> {
        Reader::organization(self, id)
    }
}

/// What the snapshot says the token hashed to `hash_hex` is, read through
/// `r` (for SQLite: one read transaction for the token's row and the rows
/// it names).
pub fn load(r: &impl Rows, table: TokenTable, hash_hex: &str) -> Result<Verdict, StoreError> {
    match table {
        TokenTable::ApiKey => load_api_key(r, hash_hex),
        TokenTable::Session => load_session(r, hash_hex),
        TokenTable::ServiceKey => load_service_key(r, hash_hex),
        TokenTable::McpToken => load_mcp_token(r, hash_hex),
    }
}

fn load_api_key(r: &impl Rows, hash_hex: &str) -> Result<Verdict, StoreError> {
    let Some(k) = r.api_key(hash_hex)? else {
        return Ok(Verdict::Rejected("unknown"));
    };
    if k.revoked_at.is_some() {
        return Ok(Verdict::Rejected("revoked"));
    }
    let org = r.organization(&k.organization_id)?;
    let permissions = Permissions::parse(k.permissions.as_deref());
    let own_limit = own_limit("api_key", &k.id, k.rate_limit);
    Ok(Verdict::ApiKey(ApiKey {
        own_limit,
        read_only: permissions.read_only,
        allowed_ips: AllowedIps::parse(k.allowed_ips.as_deref()),
        id: Arc::from(k.id),
        prefix: Arc::from(k.key_prefix.unwrap_or_default()),
        // the organization's own id when it is there: shared, not a copy
        org_id: org
            .as_ref()
            .map_or_else(|| Arc::from(k.organization_id), |o| o.id.clone()),
        org,
        scope: permissions.scope,
        expires_at: k.expires_at,
    }))
}

fn load_session(r: &impl Rows, hash_hex: &str) -> Result<Verdict, StoreError> {
    let Some(s) = r.session(hash_hex)? else {
        return Ok(Verdict::Rejected("unknown"));
    };
    let org = match &s.active_organization_id {
        Some(o) => r.organization(o)?,
        None => None,
    };
    Ok(Verdict::Session(Session {
        user_id: Arc::from(s.user_id),
        active_org_id: match &org {
            Some(o) => Some(o.id.clone()),
            None => s.active_organization_id.map(Arc::from),
        },
        org,
        expires_at: s.expires_at,
    }))
}

fn load_service_key(r: &impl Rows, hash_hex: &str) -> Result<Verdict, StoreError> {
    Ok(match r.service_key(hash_hex)? {
        None => Verdict::Rejected("unknown"),
        Some(k) if k.revoked_at.is_some() => Verdict::Rejected("revoked"),
        Some(k) => Verdict::ServiceKey(ServiceKey {
            id: Arc::from(k.id),
        }),
    })
}

fn load_mcp_token(r: &impl Rows, hash_hex: &str) -> Result<Verdict, StoreError> {
    let Some(t) = r.mcp_token(hash_hex)? else {
        return Ok(Verdict::Rejected("unknown"));
    };
    if t.revoked_at.is_some() {
        return Ok(Verdict::Rejected("revoked"));
    }
    let server = r.mcp_server(&t.mcp_server_id)?;
    let org = match &server {
        Some(s) => r.organization(&s.organization_id)?,
        None => None,
    };
    Ok(Verdict::Mcp(Box::new(McpToken {
        own_limit: own_limit("mcp_token", &t.id, t.rate_limit),
        id: Arc::from(t.id),
        kind: match t.kind.as_str() {
            "static" => Some(McpKind::Static),
            "end_user" => Some(McpKind::EndUser),
            "oauth" => Some(McpKind::OAuth),
            _ => None,
        },
        server_id: Arc::from(t.mcp_server_id),
        server,
        org,
        end_user_id: t.end_user_id.map(Arc::from),
        expires_at: t.expires_at,
    })))
}

/// A credential's own window (SPEC §6.1): a negative `rate_limit` reads as
/// 0 (the key admits nothing), never as "no limit".
fn own_limit(kind: &str, id: &str, rate_limit: Option<i64>) -> Option<OwnLimit> {
    rate_limit.map(|n| OwnLimit {
        limit: n.max(0) as u64,
        key: Arc::from(credential_key(kind, id)),
    })
}
