//! Who is calling (SPEC §3): the credential, its verdict through the
//! [`Directory`], the organization behind it, and MCP's own rules
//! (SPEC §3.1: origins, server binding, challenges).

use super::*;

/// Who is calling (SPEC §3): the first credential present decides.
pub(super) fn authenticate(
    facts: &RequestFacts<'_>,
    route: &Route,
    captures: &Captures,
    env: &Env<'_>,
) -> Result<Caller, Denial> {
    let cfg = &env.policy.config;
    let refuse = |denial| denial;
    if !env.directory.loaded() {
        return Err(refuse(Denial::AuthUnavailable));
    }
    let mcp_route = route.auth == AuthMode::Mcp;
    if mcp_route {
        // SPEC §3.1 MCP transport and §5.1 ids: before any token lookup.
        check_mcp_origin(facts, cfg).map_err(refuse)?;
        mcp_server_id(facts, route, captures)
            .map_err(|e| refuse(Denial::BadRequest(e.reason())))?;
    }
    let settings = SessionSettings {
        secret: cfg.session.secret.as_ref(),
        cookie_names: &cfg.session.cookie_names,
    };
    let credential = credentials::extract(facts.headers, &settings);
    env.note("credential", || describe_credential(&credential));
    // Only a presented credential counts toward the per-IP throttle
    // (SPEC §6): a request with none keeps getting 401.
    let presented = !matches!(credential, Credential::None);
    let result = match credential {
        Credential::None => Err(Denial::unauthenticated("missing_credential")),
        Credential::Invalid(reason) => Err(Denial::unauthenticated(reason)),
        Credential::Bearer {
            kind: BearerKind::ApiKey,
            ..
        } if mcp_route => Err(Denial::unauthenticated("api_key_on_mcp_route")),
        Credential::Bearer {
            kind: BearerKind::ApiKey,
            token,
        } => principal(
            facts,
            route,
            captures,
            TokenTable::ApiKey,
            token.as_bytes(),
            env,
        )
        .and_then(|(k, v)| check_api_key(k, v, env)),
        Credential::Bearer { .. } if !mcp_route => {
            Err(Denial::unauthenticated("mcp_token_outside_mcp_route"))
        }
        Credential::Bearer { kind, token } => principal(
            facts,
            route,
            captures,
            TokenTable::McpToken,
            token.as_bytes(),
            env,
        )
        .and_then(|(k, v)| check_mcp(k, v, kind, facts, route, captures, env.now)),
        Credential::ServiceKey(_) if mcp_route => {
            Err(Denial::unauthenticated("service_key_on_mcp_route"))
        }
        Credential::ServiceKey(key) => {
            principal(facts, route, captures, TokenTable::ServiceKey, key, env)
                .and_then(|(k, v)| check_service_key(k, v, facts, env))
        }
        Credential::Session { .. } if mcp_route => {
            Err(Denial::unauthenticated("session_on_mcp_route"))
        }
        Credential::Session { token } => principal(
            facts,
            route,
            captures,
            TokenTable::Session,
            token.as_bytes(),
            env,
        )
        .and_then(|(k, v)| check_session(k, v, facts, route, cfg, env.now)),
    };
    match result {
        Ok(caller) => Ok(caller),
        Err(Denial::Unauthenticated { reason, .. }) => {
            let unauthenticated = Denial::Unauthenticated {
                reason,
                www_authenticate: mcp_route
                    .then(|| mcp_challenge(facts, route, captures, env))
                    .flatten(),
            };
            if !presented {
                return Err(refuse(unauthenticated));
            }
            if let Some(retry_after) = env.throttle.blocked(facts.client.ip, env.now) {
                env.note("throttle", || {
                    format!(
                        "{} is past rate_limit.auth_failures_per_ip",
                        facts.client.ip
                    )
                });
                return Err(refuse(Denial::RateLimited {
                    retry_after,
                    per_ip: true,
                    limit: None,
                }));
            }
            env.throttle.record_failure(facts.client.ip, env.now);
            Err(refuse(unauthenticated))
        }
        Err(d) => Err(refuse(d)),
    }
}

/// The verdict for a token: the cache, then — unless the client IP is past
/// its failed-authentication limit — the store.
pub(super) fn principal(
    facts: &RequestFacts<'_>,
    route: &Route,
    captures: &Captures,
    table: TokenTable,
    token: &[u8],
    env: &Env<'_>,
) -> Result<(TokenKey, Arc<Entry<Verdict>>), Denial> {
    let key = (table, credentials::token_hash(token));
    let throttled = || {
        env.throttle
            .blocked(facts.client.ip, env.now)
            .map(|retry_after| Denial::RateLimited {
                retry_after,
                per_ip: true,
                limit: None,
            })
    };
    if let Some(entry) = env.directory.cached_token(&key) {
        if entry.is_negative() {
            if let Some(d) = throttled() {
                return Err(d);
            }
        }
        return Ok((key, entry));
    }
    if let Some(d) = throttled() {
        return Err(d);
    }
    // The workspace the request names before its body, which the route
    // rules look up next: the store may read it in the same transaction.
    let workspace = match &route.workspace {
        Some(WorkspaceSource::Path(_) | WorkspaceSource::Query(_) | WorkspaceSource::Header(_)) => {
            scope::resolve(
                route,
                facts.path,
                captures,
                facts.query,
                facts.headers,
                None,
            )
            .ok()
            .flatten()
        }
        _ => None,
    };
    env.directory
        .load_token(key, workspace.as_deref())
        .map(|entry| (key, entry))
        .map_err(|_| Denial::AuthUnavailable)
}

pub(super) fn usable_org(org: Option<&Org>) -> Result<Org, Denial> {
    match org {
        None => Err(Denial::Forbidden("organization_missing")),
        Some(o) if o.disabled => Err(Denial::Forbidden("organization_disabled")),
        Some(o) => Ok(o.clone()),
    }
}

/// SPEC §3.1 `wvz_…`.
pub(super) fn check_api_key(
    key: TokenKey,
    entry: Arc<Entry<Verdict>>,
    env: &Env<'_>,
) -> Result<Caller, Denial> {
    let org = match &entry.value {
        Verdict::Rejected(reason) => return Err(Denial::unauthenticated(reason)),
        Verdict::ApiKey(k) => api_key_org(k, env.now)?,
        _ => return Err(Denial::unauthenticated("unknown")),
    };
    Ok(Caller {
        method: AuthMethod::ApiKey,
        key,
        verdict: entry,
        org: Some(org),
    })
}

/// An API key's own rules: not expired, a usable organization, readable
/// permissions.
pub(super) fn api_key_org(k: &ApiKey, now: i64) -> Result<Org, Denial> {
    if k.expires_at.is_some_and(|t| t <= now) {
        return Err(Denial::unauthenticated("expired"));
    }
    let org = usable_org(k.org.as_ref())?;
    if matches!(k.scope, Scope::Malformed) {
        return Err(Denial::Forbidden("malformed_permissions"));
    }
    Ok(org)
}

/// SPEC §3.3: a BetterAuth session, its active organization and, for unsafe
/// methods, a trusted `Origin`.
pub(super) fn check_session(
    key: TokenKey,
    entry: Arc<Entry<Verdict>>,
    facts: &RequestFacts<'_>,
    route: &Route,
    cfg: &Config,
    now: i64,
) -> Result<Caller, Denial> {
    let org = match &entry.value {
        Verdict::Rejected(reason) => return Err(Denial::unauthenticated(reason)),
        Verdict::Session(s) => {
            let org = session_org(s, route.org_optional, now)?;
            let unsafe_method = matches!(
                *facts.method,
                Method::POST | Method::PUT | Method::PATCH | Method::DELETE
            );
            if unsafe_method && !cfg.session.trusted_origins.is_empty() {
                let trusted = crate::request::headers::single(facts.headers, http::header::ORIGIN)
                    .and_then(|o| o.to_str().ok())
                    .is_some_and(|o| {
                        let o = o.trim_end_matches('/');
                        cfg.session
                            .trusted_origins
                            .iter()
                            .any(|t| t.eq_ignore_ascii_case(o))
                    });
                if !trusted {
                    return Err(Denial::Forbidden("origin_not_trusted"));
                }
            }
            org
        }
        _ => return Err(Denial::unauthenticated("unknown")),
    };
    Ok(Caller {
        method: AuthMethod::Session,
        key,
        verdict: entry,
        org,
    })
}

/// A session's own rules: not expired, and its active organization usable
/// (none only where the route is `org_optional`).
pub(super) fn session_org(
    s: &Session,
    org_optional: bool,
    now: i64,
) -> Result<Option<Org>, Denial> {
    if s.expires_at <= now {
        return Err(Denial::unauthenticated("expired"));
    }
    match &s.active_org_id {
        None if org_optional => Ok(None),
        None => Err(Denial::Forbidden("no_active_organization")),
        Some(_) => Ok(Some(usable_org(s.org.as_ref())?)),
    }
}

/// SPEC §3.2: a service key, acting for the organization in `X-Org-ID` or none.
pub(super) fn check_service_key(
    key: TokenKey,
    entry: Arc<Entry<Verdict>>,
    facts: &RequestFacts<'_>,
    env: &Env<'_>,
) -> Result<Caller, Denial> {
    use crate::request::headers::{count, Count, IdentityHeader};
    match &entry.value {
        Verdict::Rejected(reason) => return Err(Denial::unauthenticated(reason)),
        Verdict::ServiceKey(_) => {}
        _ => return Err(Denial::unauthenticated("unknown")),
    }
    let org = match count(facts.headers, IdentityHeader::OrgId.as_str()) {
        Count::Absent => None,
        Count::Repeated => return Err(Denial::Forbidden("ambiguous_organization")),
        Count::Once(v) => {
            let id = v
                .to_str()
                .map_err(|_| Denial::Forbidden("unknown_organization"))?
                .trim();
            if !scope::valid_id(id.as_bytes()) {
                return Err(Denial::Forbidden("unknown_organization"));
            }
            let org = env
                .directory
                .organization(id)
                .map_err(|_| Denial::AuthUnavailable)?
                .ok_or(Denial::Forbidden("unknown_organization"))?;
            if org.disabled {
                return Err(Denial::Forbidden("organization_disabled"));
            }
            Some(org)
        }
    };
    Ok(Caller {
        method: AuthMethod::ServiceKey,
        key,
        verdict: entry,
        org,
    })
}

/// SPEC §3.1 `mcp_…` / `mcpo_…`: kind, prefix, server auth mode and the
/// server the path names.
pub(super) fn check_mcp(
    key: TokenKey,
    entry: Arc<Entry<Verdict>>,
    prefix: BearerKind,
    facts: &RequestFacts<'_>,
    route: &Route,
    captures: &Captures,
    now: i64,
) -> Result<Caller, Denial> {
    let (method, org) = match &entry.value {
        Verdict::Rejected(reason) => return Err(Denial::unauthenticated(reason)),
        Verdict::Mcp(t) => {
            let path_server = mcp_server_id(facts, route, captures)
                .map_err(|e| Denial::BadRequest(e.reason()))?;
            mcp_standing(t, prefix, path_server.as_deref(), now)?
        }
        _ => return Err(Denial::unauthenticated("unknown")),
    };
    Ok(Caller {
        method,
        key,
        verdict: entry,
        org: Some(org),
    })
}

/// An MCP token's own rules: its kind fits the prefix it was presented
/// with, not expired, its server takes it and is the one the path names,
/// and the server's organization is usable.
pub(super) fn mcp_standing(
    t: &McpToken,
    prefix: BearerKind,
    path_server: Option<&str>,
    now: i64,
) -> Result<(AuthMethod, Org), Denial> {
    let kind = t
        .kind
        .ok_or(Denial::unauthenticated("unknown_token_kind"))?;
    if (prefix == BearerKind::McpOAuth) != (kind == McpKind::OAuth) {
        return Err(Denial::unauthenticated("token_kind_mismatch"));
    }
    if t.expires_at.is_some_and(|e| e <= now) {
        return Err(Denial::unauthenticated("expired"));
    }
    let server = t
        .server
        .as_ref()
        .ok_or(Denial::unauthenticated("unknown_server"))?;
    let allowed = match kind {
        McpKind::Static | McpKind::EndUser => server.auth_mode.allows_bearer(),
        McpKind::OAuth => server.auth_mode.allows_oauth(),
    };
    if !allowed {
        return Err(Denial::unauthenticated("auth_mode_not_allowed"));
    }
    if path_server != Some(&*t.server_id) {
        return Err(Denial::Forbidden("wrong_mcp_server"));
    }
    let method = if kind == McpKind::OAuth {
        AuthMethod::McpOAuth
    } else {
        AuthMethod::McpBearer
    };
    Ok((method, usable_org(t.org.as_ref())?))
}

/// `Origin` on an `auth = "mcp"` route (SPEC §3.1): absent, or one value
/// listed in `mcp.allowed_origins` exactly (DNS-rebinding guard).
pub(super) fn check_mcp_origin(facts: &RequestFacts<'_>, cfg: &Config) -> Result<(), Denial> {
    use crate::request::headers::{count, Count};
    match count(facts.headers, http::header::ORIGIN) {
        Count::Absent => Ok(()),
        Count::Once(o)
            if cfg
                .mcp
                .allowed_origins
                .iter()
                .any(|a| a.as_bytes() == o.as_bytes()) =>
        {
            Ok(())
        }
        _ => Err(Denial::Forbidden("origin_not_allowed")),
    }
}

/// The MCP server the path names, decoded and checked as an id (SPEC §5.1).
pub(super) fn mcp_server_id<'f>(
    facts: &RequestFacts<'f>,
    route: &Route,
    captures: &Captures,
) -> Result<Option<Cow<'f, str>>, scope::SourceError> {
    match route.mcp_server.and_then(|i| captures.get(facts.path, i)) {
        Some(seg) => scope::path_id(seg),
        None => Ok(None),
    }
}

/// `WWW-Authenticate` for a 401 on an MCP route (SPEC §3.1, §7):
/// `resource_metadata` for a server with OAuth enabled, and
/// `error="invalid_token"` when the request carried `Authorization`.
pub(super) fn mcp_challenge(
    facts: &RequestFacts<'_>,
    route: &Route,
    captures: &Captures,
    env: &Env<'_>,
) -> Option<String> {
    let metadata = resource_metadata(facts, route, captures, env);
    let invalid_token = facts.headers.contains_key(http::header::AUTHORIZATION);
    match (metadata, invalid_token) {
        (Some(m), true) => Some(format!("Bearer {m}, error=\"invalid_token\"")),
        (Some(m), false) => Some(format!("Bearer {m}")),
        (None, true) => Some("Bearer error=\"invalid_token\"".to_string()),
        (None, false) => None,
    }
}

/// `resource_metadata="<base>/.well-known/oauth-protected-resource/mcp/<server>"`
/// for a server with OAuth enabled; the base is `server.public_url`, else
/// the scheme and host of SPEC §4.1 (a client's `X-Forwarded-Host` only
/// from a trusted proxy).
pub(super) fn resource_metadata(
    facts: &RequestFacts<'_>,
    route: &Route,
    captures: &Captures,
    env: &Env<'_>,
) -> Option<String> {
    let server_id = mcp_server_id(facts, route, captures).ok()??;
    let server = env.directory.mcp_server(&server_id).ok()??;
    if !server.auth_mode.allows_oauth() {
        return None;
    }
    let cfg = &env.policy.config;
    let base = if cfg.server.public_url.is_empty() {
        let host = facts.client.host(facts.headers)?;
        format!("{}://{host}", facts.client.scheme)
    } else {
        cfg.server.public_url.clone()
    };
    // a valid id is visible ASCII; quotes and backslashes stay out of the quoted string
    let server_id: String = server_id
        .chars()
        .filter(|c| *c != '"' && *c != '\\')
        .collect();
    Some(format!(
        "resource_metadata=\"{base}/.well-known/oauth-protected-resource/mcp/{server_id}\""
    ))
}
