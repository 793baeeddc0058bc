//! Principals: what the snapshot says a credential is. Turns store records
//! into cacheable [`Verdict`]s (SPEC §3, §2 permissions JSON). No route or
//! request knowledge here: that is the decision's job.

use std::sync::Arc;

use crate::cache::TokenTable;
use crate::snapshot::{McpServerRecord, OrgRecord, Reader, StoreError};

/// What an API key may reach (`api_keys.permissions`).
#[derive(Debug, Clone)]
pub enum Scope {
    OrgWide,
    /// workspace-scoped; `header` is the comma-joined list for X-Allowed-Workspaces
    Workspaces {
        ids: Arc<[Arc<str>]>,
        header: Arc<str>,
    },
    /// permissions JSON that cannot be understood: the key is unusable (403)
    Malformed,
}

impl Scope {
    pub fn parse(permissions: Option<&str>) -> Scope {
        #[derive(serde::Deserialize)]
        struct Perms {
            scope: Option<String>,
            #[serde(rename = "workspaceIds")]
            workspace_ids: Option<Vec<String>>,
        }
        let Some(text) = permissions else {
            return Scope::OrgWide;
        };
        // JSON `null` is org-wide like SQL NULL; anything else must be valid
        // JSON (found by fuzz/permissions_json: `str::trim` accepted a
        // vertical tab around "null", which JSON does not).
        let p = match serde_json::from_str::<Option<Perms>>(text) {
            Ok(Some(p)) => p,
            Ok(None) => return Scope::OrgWide,
            Err(_) => return Scope::Malformed,
        };
        match p.scope.as_deref() {
            Some("org") => Scope::OrgWide,
            Some("workspace") => match p.workspace_ids {
                // An empty list would become an empty X-Allowed-Workspaces,
                // which `if (header)` reads as org-wide (SPEC §5.1).
                Some(ids)
                    if !ids.is_empty() && ids.iter().all(|i| !i.is_empty() && !i.contains(',')) =>
                {
                    Scope::Workspaces {
                        header: Arc::from(ids.join(",")),
                        ids: ids.into_iter().map(Arc::from).collect(),
                    }
                }
                _ => Scope::Malformed,
            },
            _ => Scope::Malformed,
        }
    }

    pub fn allows(&self, workspace: &str) -> bool {
        match self {
            Scope::OrgWide => true,
            Scope::Workspaces { ids, .. } => ids.iter().any(|i| &**i == workspace),
            Scope::Malformed => false,
        }
    }

    pub fn is_scoped(&self) -> bool {
        matches!(self, Scope::Workspaces { .. })
    }
}

#[derive(Debug)]
pub struct ApiKey {
    pub id: Arc<str>,
    pub prefix: Arc<str>,
    pub org_id: Arc<str>,
    /// None: the organization is not in the snapshot (403)
    pub org: Option<OrgRecord>,
    pub scope: Scope,
    pub expires_at: Option<i64>,
}

#[derive(Debug)]
pub struct Session {
    pub user_id: Arc<str>,
    pub active_org_id: Option<Arc<str>>,
    pub org: Option<OrgRecord>,
    pub expires_at: i64,
}

#[derive(Debug)]
pub struct ServiceKey {
    pub id: Arc<str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McpKind {
    Static,
    EndUser,
    OAuth,
}

#[derive(Debug)]
pub struct McpToken {
    pub id: Arc<str>,
    pub kind: Option<McpKind>,
    pub server_id: Arc<str>,
    pub server: Option<McpServerRecord>,
    pub org: Option<OrgRecord>,
    pub end_user_id: Option<Arc<str>>,
    pub expires_at: Option<i64>,
}

/// A cached answer about one token.
#[derive(Debug)]
pub enum Verdict {
    ApiKey(ApiKey),
    Session(Session),
    ServiceKey(ServiceKey),
    Mcp(McpToken),
    /// unknown or revoked: 401 with this reason
    Rejected(&'static str),
}

impl Verdict {
    pub fn is_negative(&self) -> bool {
        matches!(self, Verdict::Rejected(_))
    }
}

/// What the snapshot says the token hashed to `hash_hex` is, read through
/// `r` (one read transaction for the token's row and the rows it names).
pub fn load(r: &Reader<'_>, table: TokenTable, hash_hex: &str) -> Result<Verdict, StoreError> {
    match table {
        TokenTable::ApiKey => load_api_key(r, hash_hex),
        TokenTable::Session => load_session(r, hash_hex),
        TokenTable::ServiceKey => load_service_key(r, hash_hex),
        TokenTable::McpToken => load_mcp_token(r, hash_hex),
    }
}

fn load_api_key(r: &Reader<'_>, hash_hex: &str) -> Result<Verdict, StoreError> {
    let Some(k) = r.api_key(hash_hex)? else {
        return Ok(Verdict::Rejected("unknown"));
    };
    if k.revoked_at.is_some() {
        return Ok(Verdict::Rejected("revoked"));
    }
    let org = r.organization(&k.organization_id)?;
    Ok(Verdict::ApiKey(ApiKey {
        id: Arc::from(k.id),
        prefix: Arc::from(k.key_prefix.unwrap_or_default()),
        org_id: Arc::from(k.organization_id),
        org,
        scope: Scope::parse(k.permissions.as_deref()),
        expires_at: k.expires_at,
    }))
}

fn load_session(r: &Reader<'_>, hash_hex: &str) -> Result<Verdict, StoreError> {
    let Some(s) = r.session(hash_hex)? else {
        return Ok(Verdict::Rejected("unknown"));
    };
    let org = match &s.active_organization_id {
        Some(o) => r.organization(o)?,
        None => None,
    };
    Ok(Verdict::Session(Session {
        user_id: Arc::from(s.user_id),
        active_org_id: s.active_organization_id.map(Arc::from),
        org,
        expires_at: s.expires_at,
    }))
}

fn load_service_key(r: &Reader<'_>, hash_hex: &str) -> Result<Verdict, StoreError> {
    Ok(match r.service_key(hash_hex)? {
        None => Verdict::Rejected("unknown"),
        Some(k) if k.revoked_at.is_some() => Verdict::Rejected("revoked"),
        Some(k) => Verdict::ServiceKey(ServiceKey {
            id: Arc::from(k.id),
        }),
    })
}

fn load_mcp_token(r: &Reader<'_>, hash_hex: &str) -> Result<Verdict, StoreError> {
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
    Ok(Verdict::Mcp(McpToken {
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
    }))
}

/// `auth_mode` of an MCP server: does it accept bearer / OAuth tokens?
pub fn mcp_mode(auth_mode: &str) -> (bool, bool) {
    match auth_mode {
        "bearer" => (true, false),
        "oauth" => (false, true),
        "oauth_and_bearer" => (true, true),
        _ => (false, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_json_forms() {
        assert!(matches!(Scope::parse(Some("\u{b}null")), Scope::Malformed));
        assert!(matches!(Scope::parse(Some(" null\n")), Scope::OrgWide));
        assert!(matches!(Scope::parse(None), Scope::OrgWide));
        assert!(matches!(
            Scope::parse(Some(r#"{"scope":"org"}"#)),
            Scope::OrgWide
        ));
        let s = Scope::parse(Some(
            r#"{"scope":"workspace","workspaceIds":["ws_1","ws_2"],"x":1}"#,
        ));
        assert!(s.allows("ws_2") && !s.allows("ws_3") && s.is_scoped());
        assert!(matches!(Scope::parse(Some("{nope")), Scope::Malformed));
        assert!(matches!(
            Scope::parse(Some(r#"{"scope":"workspace","workspaceIds":[]}"#)),
            Scope::Malformed
        ));
        assert!(matches!(
            Scope::parse(Some(r#"{"scope":"workspace"}"#)),
            Scope::Malformed
        ));
        assert!(matches!(
            Scope::parse(Some(r#"{"scope":"galaxy"}"#)),
            Scope::Malformed
        ));
        assert!(!Scope::Malformed.allows("ws_1"));
    }
}
