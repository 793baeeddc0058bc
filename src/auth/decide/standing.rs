//! A stream's standing (SPEC §8.2 Streams): what an open WebSocket or SSE
//! stream was granted on, judged again against a newer snapshot with the
//! same rules [`decide`](super::decide) applied when it opened — the
//! credential's own rules (revoked, expired, organization usable, MCP
//! server), the route's `org_wide_only` and the workspace rules for the
//! workspace the request was judged for. No I/O: the caller reads the rows.

use std::sync::Arc;

use super::{
    api_key_org, limited_org, mcp_standing, owner_rule, plan_of, scope_rule, session_org,
    usable_org, AuthMethod, Caller, Identity,
};
use crate::auth::credentials::BearerKind;
use crate::auth::denial::Denial;
use crate::auth::directory::StoreError;
use crate::auth::principal::{Org, Scope, TokenKey, Verdict};
use crate::config::routes::Route;
use crate::config::{Config, UnknownWorkspaces};

/// What one open stream was granted on. Holds the credential's cache key
/// (table, sha256), never the token.
#[derive(Debug, Clone)]
pub struct Standing {
    pub key: TokenKey,
    pub method: AuthMethod,
    /// the organization the stream acts for
    pub org_id: Option<Arc<str>>,
    /// the workspace the request was judged for (API keys and sessions)
    pub workspace: Option<Arc<str>>,
    /// the MCP server the path named (MCP tokens)
    pub mcp_server: Option<Arc<str>>,
    org_optional: bool,
    org_wide_only: bool,
    scoped_filter: bool,
    unknown_workspaces: UnknownWorkspaces,
    /// unix seconds after which the credential has expired (None: never)
    pub expires_at: Option<i64>,
}

impl Standing {
    /// The standing of a granted request: its caller, the identity the
    /// upstream got and the route that matched (None: no route matched).
    pub fn of(caller: &Caller, identity: &Identity, route: Option<&Route>, cfg: &Config) -> Self {
        let workspace = match caller.method {
            AuthMethod::ApiKey | AuthMethod::Session => identity.workspace_id.clone(),
            _ => None,
        };
        Standing {
            key: caller.key,
            method: caller.method,
            org_id: caller.org.as_ref().map(|o| o.id.clone()),
            workspace,
            mcp_server: identity.mcp_server_id.clone(),
            org_optional: route.is_some_and(|r| r.org_optional),
            org_wide_only: route.is_some_and(|r| r.org_wide_only),
            scoped_filter: route.is_some_and(|r| r.scoped_filter),
            unknown_workspaces: cfg.unknown_workspaces,
            expires_at: expires_at(&caller.verdict.value),
        }
    }

    /// Judge the stream again on `verdict`, the credential as the new
    /// snapshot says it is; `org` and `owner` read an organization and a
    /// workspace's owner from the same snapshot. `Ok(Ok(expires_at))`: it
    /// stands (until then); `Ok(Err(denial))`: it must close, for the
    /// reason the same request would now be refused.
    pub fn recheck(
        &self,
        verdict: &Verdict,
        org: impl FnOnce(&str) -> Result<Option<Org>, StoreError>,
        owner: impl FnOnce(&str) -> Result<Option<Arc<str>>, StoreError>,
        now: i64,
    ) -> Result<Result<Option<i64>, Denial>, StoreError> {
        let (acting, scope) = match (self.method, verdict) {
            (_, Verdict::Rejected(reason)) => return Ok(Err(Denial::unauthenticated(reason))),
            (AuthMethod::ApiKey, Verdict::ApiKey(k)) => match api_key_org(k, now) {
                Ok(o) => (Some(o), Some(&k.scope)),
                Err(d) => return Ok(Err(d)),
            },
            (AuthMethod::Session, Verdict::Session(s)) => {
                match session_org(s, self.org_optional, now) {
                    Ok(o) => (o, None),
                    Err(d) => return Ok(Err(d)),
                }
            }
            (AuthMethod::McpBearer | AuthMethod::McpOAuth, Verdict::Mcp(t)) => {
                let prefix = if self.method == AuthMethod::McpOAuth {
                    BearerKind::McpOAuth
                } else {
                    BearerKind::Mcp
                };
                return Ok(
                    match mcp_standing(t, prefix, self.mcp_server.as_deref(), now) {
                        Ok((_, o)) if Some(&o.id) != self.org_id.as_ref() => {
                            Err(Denial::Forbidden("organization_changed"))
                        }
                        Ok(_) => Ok(t.expires_at),
                        Err(d) => Err(d),
                    },
                );
            }
            (AuthMethod::ServiceKey, Verdict::ServiceKey(_)) => {
                // acting for X-Org-ID: that organization must still be usable
                return Ok(match &self.org_id {
                    None => Ok(None),
                    Some(id) => match org(id)? {
                        None => Err(Denial::Forbidden("unknown_organization")),
                        found => usable_org(found.as_ref()).map(|_| None),
                    },
                });
            }
            _ => return Ok(Err(Denial::unauthenticated("unknown"))),
        };
        if acting.as_ref().map(|o| &o.id) != self.org_id.as_ref() {
            return Ok(Err(Denial::Forbidden("organization_changed")));
        }
        let expiry = expires_at(verdict);
        let scoped = scope.is_some_and(Scope::is_scoped);
        if self.org_wide_only && scoped {
            return Ok(Err(Denial::Forbidden("org_wide_only")));
        }
        match &self.workspace {
            Some(ws) => {
                let owner = owner(ws)?;
                let org = acting.as_ref().map(|o| &*o.id);
                Ok(owner_rule(owner.as_deref(), org, self.unknown_workspaces)
                    .and_then(|()| scope.map_or(Ok(()), |s| scope_rule(s, ws)))
                    .map(|()| expiry))
            }
            None if scoped && !self.scoped_filter => {
                Ok(Err(Denial::ScopeDenied("no_workspace_resolved")))
            }
            None => Ok(Ok(expiry)),
        }
    }
}

/// When a credential expires (unix seconds), as its verdict says.
fn expires_at(v: &Verdict) -> Option<i64> {
    match v {
        Verdict::ApiKey(k) => k.expires_at,
        Verdict::Session(s) => Some(s.expires_at),
        Verdict::Mcp(t) => t.expires_at,
        _ => None,
    }
}

/// The `streams_closed_total{reason}` label for why a stream's credential
/// no longer stands: `revoked`, `expired`, `organization` or `scope`.
pub fn lapse_reason(d: &Denial) -> &'static str {
    match d {
        Denial::Unauthenticated {
            reason: "expired", ..
        } => "expired",
        Denial::Unauthenticated { .. } => "revoked",
        Denial::Forbidden(
            "organization_missing"
            | "organization_disabled"
            | "no_active_organization"
            | "unknown_organization"
            | "organization_changed",
        ) => "organization",
        _ => "scope",
    }
}

/// Every `streams_closed_total{reason}` label value.
pub const LAPSE_REASONS: [&str; 4] = ["revoked", "expired", "organization", "scope"];

/// `plans.NAME.max_streams` for the organization a caller acts for, with
/// that organization's id (None: no cap — no organization, a service key
/// that is not limited, or a plan without `max_streams`).
pub fn stream_cap(caller: &Caller, cfg: &Config) -> Option<(Arc<str>, u64)> {
    let org = limited_org(caller, cfg)?;
    let (_, plan) = plan_of(org, cfg)?;
    Some((org.id.clone(), plan.max_streams?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lapse_reasons_are_the_listed_labels() {
        for d in [
            Denial::unauthenticated("revoked"),
            Denial::unauthenticated("expired"),
            Denial::Forbidden("organization_disabled"),
            Denial::ScopeDenied("workspace_not_in_scope"),
            Denial::Forbidden("org_wide_only"),
        ] {
            assert!(LAPSE_REASONS.contains(&lapse_reason(&d)), "{d:?}");
        }
        assert_eq!(lapse_reason(&Denial::unauthenticated("unknown")), "revoked");
        assert_eq!(lapse_reason(&Denial::unauthenticated("expired")), "expired");
        assert_eq!(
            lapse_reason(&Denial::Forbidden("organization_missing")),
            "organization"
        );
    }
}
