//! `decide`: one request's facts → [`Decision`] (SPEC §3, §5, §5.1, §6).
//!
//! The whole policy in one place, as a sequence of named steps: route →
//! credential → principal → MCP/session/service-key checks → (body) →
//! route rules and workspace scope → quota → rate limit. Pure but for the
//! two stateful collaborators it is handed — the [`Directory`] (cache +
//! snapshot, pinned to one generation) and the limiters — and it never sees
//! pingora, sockets, SQLite or threads. The shell gathers [`RequestFacts`]
//! once, pins one [`Policy`] and one directory per request, and applies the
//! decision.

use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderMap, Method};

use crate::auth::credentials::{self, BearerKind, Credential, SessionSettings};
use crate::auth::denial::Denial;
use crate::auth::directory::{Directory, Entry};
use crate::auth::limit::{Limiter, RateOutcome, RateState, Throttle};
use crate::auth::principal::{
    ApiKey, McpKind, McpToken, Org, OrgRecord, Scope, Session, TokenKey, TokenTable, Verdict,
};
use crate::auth::scope;
use crate::config::routes::{AuthMode, Captures, Route, WorkspaceSource};
use crate::config::{Config, Plan, UnknownWorkspaces};
use crate::request::forwarding::Client;

/// The request as the core sees it, gathered once by the shell: the only
/// view of the request the core has.
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    /// normalized path (SPEC §5)
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// the client as SPEC §4.1 resolves it (peer, trusted proxies, scheme)
    pub client: Client,
}

/// Everything that may change on SIGHUP, swapped as one and pinned per
/// request: a request is judged by one config from route to limit.
pub struct Policy {
    pub config: Config,
}

/// What the core is handed for one request.
pub struct Env<'a> {
    pub policy: &'a Policy,
    pub directory: &'a dyn Directory,
    pub limiter: &'a dyn Limiter,
    pub throttle: &'a dyn Throttle,
    /// unix seconds
    pub now: i64,
    /// each step of the decision, when someone asks why (`keyward explain`,
    /// `keyward test`); `None` on the request path
    pub trace: Option<&'a Trace>,
}

/// One step of a decision, in words an operator reads: what was looked at
/// and what it gave. Never a secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Step {
    pub step: &'static str,
    pub detail: String,
}

/// The steps of one decision, in order.
pub type Trace = std::cell::RefCell<Vec<Step>>;

impl Env<'_> {
    /// Record a step when tracing (the detail is only built then).
    fn note(&self, step: &'static str, detail: impl FnOnce() -> String) {
        if let Some(t) = self.trace {
            t.borrow_mut().push(Step {
                step,
                detail: detail(),
            });
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    ApiKey,
    Session,
    ServiceKey,
    McpBearer,
    McpOAuth,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ApiKey => "api_key",
            AuthMethod::Session => "session",
            AuthMethod::ServiceKey => "service_key",
            AuthMethod::McpBearer => "mcp_bearer",
            AuthMethod::McpOAuth => "mcp_oauth",
        }
    }
}

/// An authenticated caller (before route rules).
pub struct Caller {
    pub method: AuthMethod,
    /// the credential's cache key (table, sha256): never the token itself
    pub key: TokenKey,
    pub verdict: Arc<Entry<Verdict>>,
    /// the organization the request acts for
    pub org: Option<Org>,
}

impl Caller {
    fn scope(&self) -> Option<&Scope> {
        match &self.verdict.value {
            Verdict::ApiKey(k) => Some(&k.scope),
            _ => None,
        }
    }
    fn is_scoped(&self) -> bool {
        self.scope().is_some_and(Scope::is_scoped)
    }
    /// For logs: the stored prefix, cut to 8 characters whatever the
    /// control plane stored (a longer one may be most of the secret).
    pub fn key_prefix(&self) -> Option<&str> {
        match &self.verdict.value {
            Verdict::ApiKey(k) => Some(log_prefix(&k.prefix)),
            _ => None,
        }
    }
}

/// At most [`LOG_PREFIX_CHARS`] characters of a stored key prefix.
pub fn log_prefix(prefix: &str) -> &str {
    match prefix.char_indices().nth(LOG_PREFIX_CHARS) {
        Some((i, _)) => &prefix[..i],
        None => prefix,
    }
}

/// Longest key prefix a log line shows.
pub const LOG_PREFIX_CHARS: usize = 8;

/// Identity headers for the upstream (SPEC §4).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Identity {
    pub org_id: Option<Arc<str>>,
    pub auth_method: Option<AuthMethod>,
    pub api_key_id: Option<Arc<str>>,
    pub user_id: Option<Arc<str>>,
    pub workspace_id: Option<Arc<str>>,
    pub allowed_workspaces: Option<Arc<str>>,
    pub mcp_server_id: Option<Arc<str>>,
    pub end_user_id: Option<Arc<str>>,
}

/// Which plan counted a request, for `rate_limit_decisions_total{plan}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanUse<'p> {
    /// a `[plans.NAME]` table (or `default`) or an organization override
    Plan(&'p str),
    /// the organization's plan has no table and there is no default: not limited
    Unconfigured,
}

/// A request keyward lets through.
pub struct Grant<'p> {
    pub identity: Identity,
    pub rate: Option<RateState>,
    /// None on `auth = "none"` routes
    pub caller: Option<Caller>,
    pub plan: Option<PlanUse<'p>>,
    /// index of the matched `[[route]]` (None: no route matched)
    pub route: Option<usize>,
}

/// A request keyward answers itself.
pub struct Refusal<'p> {
    pub denial: Denial,
    pub rate: Option<RateState>,
    pub caller: Option<Caller>,
    /// the plan whose limit refused the request (429), for metrics
    pub plan: Option<PlanUse<'p>>,
    /// index of the matched `[[route]]` (None: no route matched)
    pub route: Option<usize>,
}

/// The route's body must be read before the core can decide: read at most
/// `cap` bytes, then call [`decide_body`].
pub struct Pending<'p> {
    pub cap: usize,
    route: &'p Route,
    captures: Captures,
    caller: Caller,
}

pub enum Decision<'p> {
    Forward(Grant<'p>),
    NeedBody(Pending<'p>),
    Refuse(Refusal<'p>),
}

/// Decide one request from its head (SPEC §3, §5, §6). A route that inspects
/// the body answers [`Decision::NeedBody`] for the credentials whose
/// workspace the body names (API keys, sessions).
pub fn decide<'p>(facts: &RequestFacts<'_>, env: &Env<'p>) -> Decision<'p> {
    let (route, captures) = env.policy.config.routes.find(facts.method, facts.path);
    env.note("route", || describe_route(route));
    on_route(facts, route, captures, env).at(route)
}

impl<'p> Decision<'p> {
    /// Name the route that decided (for the access line).
    fn at(mut self, route: &Route) -> Self {
        let index = (route.index != usize::MAX).then_some(route.index);
        match &mut self {
            Decision::Forward(g) => g.route = index,
            Decision::Refuse(r) => r.route = index,
            Decision::NeedBody(_) => {}
        }
        self
    }
}

fn on_route<'p>(
    facts: &RequestFacts<'_>,
    route: &'p Route,
    captures: Captures,
    env: &Env<'p>,
) -> Decision<'p> {
    let cfg = &env.policy.config;
    if route.auth == AuthMode::None {
        return Decision::Forward(Grant {
            identity: Identity::default(),
            rate: None,
            caller: None,
            plan: None,
            route: None,
        });
    }
    let caller = match authenticate(facts, route, &captures, env) {
        Ok(c) => {
            env.note("principal", || describe_caller(&c));
            c
        }
        Err(denial) => {
            return Decision::Refuse(Refusal {
                denial,
                rate: None,
                caller: None,
                plan: None,
                route: None,
            })
        }
    };
    // The route's own rules come before any body is read (a request they
    // refuse is never buffered).
    if let Err(d) = check_flags(route, &caller, env) {
        return refusal(env, caller, d);
    }
    let inspects_body = route
        .workspace
        .as_ref()
        .is_some_and(WorkspaceSource::needs_body)
        && matches!(caller.method, AuthMethod::ApiKey | AuthMethod::Session);
    if inspects_body {
        // Only a body keyward and the upstream read the same way is
        // inspected, judged from the head (415 before 413, SPEC §5.1).
        if let Err(e) = scope::inspectable_body(facts.headers) {
            return refusal(env, caller, Denial::UnsupportedMediaType(e.reason()));
        }
        env.note("body", || {
            format!(
                "the route reads the workspace from the JSON body: read at most {} bytes",
                cfg.server.max_body_inspect_bytes
            )
        });
        return Decision::NeedBody(Pending {
            cap: cfg.server.max_body_inspect_bytes,
            route,
            captures,
            caller,
        });
    }
    authorize(facts, route, &captures, caller, None, env)
}

/// What the shell read of a body the core asked for.
pub enum Body<'b> {
    /// the whole body, at most the pending `cap` bytes
    Read(&'b [u8]),
    /// it went past the cap (413)
    TooLarge,
}

/// Finish a [`Decision::NeedBody`] with what the shell read.
pub fn decide_body<'p>(
    facts: &RequestFacts<'_>,
    pending: Pending<'p>,
    body: Body<'_>,
    env: &Env<'p>,
) -> Decision<'p> {
    let Pending {
        route,
        captures,
        caller,
        ..
    } = pending;
    match body {
        Body::Read(body) => authorize(facts, route, &captures, caller, Some(body), env),
        Body::TooLarge => refusal(env, caller, Denial::PayloadTooLarge),
    }
    .at(route)
}

/// A refusal for an authenticated caller: it carries the organization's
/// rate-limit state when it has one (SPEC §6: every response to a
/// rate-limited organization carries the headers).
fn refusal<'p>(env: &Env<'p>, caller: Caller, denial: Denial) -> Decision<'p> {
    let rate = match (&caller.org, limit_for(&caller, &env.policy.config)) {
        (Some(org), Some((n, _))) => Some(env.limiter.peek(&org.id, n, env.now)),
        _ => None,
    };
    Decision::Refuse(Refusal {
        denial,
        rate,
        caller: Some(caller),
        plan: None,
        route: None,
    })
}

// ------------------------------------------------------------ who is calling

/// Who is calling (SPEC §3): the first credential present decides.
fn authenticate(
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
        .and_then(|(k, v)| check_api_key(k, v, env.now)),
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
fn principal(
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

fn usable_org(org: Option<&Org>) -> Result<Org, Denial> {
    match org {
        None => Err(Denial::Forbidden("organization_missing")),
        Some(o) if o.disabled => Err(Denial::Forbidden("organization_disabled")),
        Some(o) => Ok(o.clone()),
    }
}

/// SPEC §3.1 `wvz_…`.
fn check_api_key(key: TokenKey, entry: Arc<Entry<Verdict>>, now: i64) -> Result<Caller, Denial> {
    let org = match &entry.value {
        Verdict::Rejected(reason) => return Err(Denial::unauthenticated(reason)),
        Verdict::ApiKey(k) => api_key_org(k, now)?,
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
fn api_key_org(k: &ApiKey, now: i64) -> Result<Org, Denial> {
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
fn check_session(
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
fn session_org(s: &Session, org_optional: bool, now: i64) -> Result<Option<Org>, Denial> {
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
fn check_service_key(
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
fn check_mcp(
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
fn mcp_standing(
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
fn check_mcp_origin(facts: &RequestFacts<'_>, cfg: &Config) -> Result<(), Denial> {
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
fn mcp_server_id<'f>(
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
fn mcp_challenge(
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
fn resource_metadata(
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

// ------------------------------------------------------------ may they

/// Route rules, workspace scope (SPEC §5, §5.1), quota, then the rate limit
/// (SPEC §6): a request counts only once every other check passed.
fn authorize<'p>(
    facts: &RequestFacts<'_>,
    route: &Route,
    captures: &Captures,
    caller: Caller,
    body: Option<&[u8]>,
    env: &Env<'p>,
) -> Decision<'p> {
    let cfg = &env.policy.config;
    let identity = match check_route(facts, route, captures, &caller, body, env) {
        Ok(id) => id,
        Err(d) => return refusal(env, caller, d),
    };
    let limit = limit_for(&caller, cfg);
    env.note("rate limit", || match (&caller.org, limit) {
        (Some(org), Some((n, plan))) => {
            let s = env.limiter.peek(&org.id, n, env.now);
            let plan = match plan {
                PlanUse::Plan(p) => p,
                PlanUse::Unconfigured => "unconfigured",
            };
            format!(
                "plan `{plan}`: {} of {} left in this window (resets at {})",
                s.remaining, s.limit, s.reset
            )
        }
        _ => "not limited".to_string(),
    });
    let (rate, plan) = match (&caller.org, limit) {
        (Some(org), Some((n, plan))) => match env.limiter.admit(&org.id, n, env.now) {
            RateOutcome::Admitted(s) => (Some(s), Some(plan)),
            RateOutcome::Limited(s) => {
                return Decision::Refuse(Refusal {
                    denial: Denial::RateLimited {
                        retry_after: s.retry_after(env.now),
                        per_ip: false,
                    },
                    rate: Some(s),
                    caller: Some(caller),
                    plan: Some(plan),
                    route: None,
                })
            }
        },
        (Some(_), None) if caller.method != AuthMethod::ServiceKey => {
            (None, Some(PlanUse::Unconfigured))
        }
        _ => (None, None),
    };
    Decision::Forward(Grant {
        identity,
        rate,
        caller: Some(caller),
        plan,
        route: None,
    })
}

/// The `[plans.NAME]` table of an organization's plan, else
/// `[plans.default]`, with the name it is counted under.
fn plan_of<'c>(org: &OrgRecord, cfg: &'c Config) -> Option<(&'c str, &'c Plan)> {
    cfg.plans
        .get_key_value(&*org.plan)
        .or_else(|| cfg.plans.get_key_value("default"))
        .map(|(name, plan)| (name.as_str(), plan))
}

/// The acting organization of a caller the limits apply to (service keys
/// only with `rate_limit.service_keys_limited`).
fn limited_org<'c>(caller: &'c Caller, cfg: &Config) -> Option<&'c OrgRecord> {
    let org = caller.org.as_ref()?;
    if caller.method == AuthMethod::ServiceKey && !cfg.rate_limit.service_keys_limited {
        return None;
    }
    Some(org)
}

/// (limit, plan) for the acting organization; None: not limited.
fn limit_for<'c>(caller: &Caller, cfg: &'c Config) -> Option<(u64, PlanUse<'c>)> {
    let org = limited_org(caller, cfg)?;
    let (plan_limit, label) = match plan_of(org, cfg) {
        Some((name, p)) => (Some(p.requests_per_window), name),
        None => (None, "unconfigured"),
    };
    match (org.rate_limit, plan_limit) {
        (Some(n), _) => Some((n, PlanUse::Plan(label))),
        (None, Some(n)) => Some((n, PlanUse::Plan(label))),
        (None, None) => None,
    }
}

/// `org_wide_only` and `quota` (SPEC §5): rules of the route and the
/// caller alone, checked before the body is read.
fn check_flags(route: &Route, caller: &Caller, env: &Env<'_>) -> Result<(), Denial> {
    let scoped = caller.is_scoped();
    if route.org_wide_only {
        env.note("rule", || {
            let verdict = if scoped {
                "the key is workspace-scoped: refuse"
            } else {
                "pass"
            };
            format!("org_wide_only: {verdict}")
        });
        if scoped {
            return Err(Denial::Forbidden("org_wide_only"));
        }
    }
    if route.quota {
        let over = caller.org.as_ref().is_some_and(|o| o.quota_exceeded);
        env.note("rule", || {
            let verdict = if over {
                "the organization is over quota: refuse"
            } else {
                "pass"
            };
            format!("quota: {verdict}")
        });
        if over {
            return Err(Denial::QuotaExceeded);
        }
    }
    Ok(())
}

/// The identity the upstream receives, after the route's rules and the
/// caller's scope (SPEC §4, §5, §5.1).
fn check_route(
    facts: &RequestFacts<'_>,
    route: &Route,
    captures: &Captures,
    caller: &Caller,
    body: Option<&[u8]>,
    env: &Env<'_>,
) -> Result<Identity, Denial> {
    let mut id = Identity {
        org_id: caller.org.as_ref().map(|o| o.id.clone()),
        auth_method: Some(caller.method),
        ..Identity::default()
    };
    match &caller.verdict.value {
        Verdict::ApiKey(k) => {
            id.api_key_id = Some(k.id.clone());
            if let Scope::Workspaces { header, .. } = &k.scope {
                id.allowed_workspaces = Some(header.clone());
            }
        }
        Verdict::Session(s) => id.user_id = Some(s.user_id.clone()),
        Verdict::Mcp(t) => {
            id.mcp_server_id = Some(t.server_id.clone());
            id.end_user_id = t.end_user_id.clone();
            id.workspace_id = t
                .server
                .as_ref()
                .map(|s| Arc::from(s.workspace_id.as_str()));
        }
        _ => {}
    }
    let scoped = caller.is_scoped();
    if matches!(
        caller.method,
        AuthMethod::ServiceKey | AuthMethod::McpBearer | AuthMethod::McpOAuth
    ) {
        // Service keys are admin level; MCP tokens act in their server's workspace.
        env.note("workspace", || {
            "workspace rules do not apply to this credential".to_string()
        });
        return Ok(id);
    }
    let found = scope::resolve(
        route,
        facts.path,
        captures,
        facts.query,
        facts.headers,
        body,
    )
    .map_err(|e| {
        env.note("workspace", || {
            format!("{}: {}", describe_source(route), e.reason())
        });
        Denial::BadRequest(e.reason())
    })?;
    env.note("workspace", || match &found {
        Some(v) => format!("{} found `{v}`", describe_source(route)),
        None => format!("{} found nothing", describe_source(route)),
    });
    let is_resource = matches!(
        route.workspace,
        Some(WorkspaceSource::ResourcePath(_) | WorkspaceSource::ResourceBody(_))
    );
    let dir = env.directory;
    let workspace: Option<Cow<'_, str>> = match found {
        None => None,
        Some(rid) if is_resource => match dir
            .resource_workspace(&rid)
            .map_err(|_| Denial::AuthUnavailable)?
        {
            Some(ws) => Some(Cow::Owned(ws.to_string())),
            None if scoped => return Err(Denial::ScopeDenied("unknown_resource")),
            None => return Ok(id),
        },
        Some(ws) => Some(ws),
    };
    if let (true, Some(ws)) = (is_resource, &workspace) {
        env.note("resource", || format!("belongs to workspace `{ws}`"));
    }
    let Some(ws) = workspace else {
        if scoped && !route.scoped_filter {
            return Err(Denial::ScopeDenied("no_workspace_resolved"));
        }
        return Ok(id);
    };
    let owner = dir
        .workspace_owner(&ws)
        .map_err(|_| Denial::AuthUnavailable)?;
    env.note("owner", || match &owner {
        Some(o) => format!("workspace `{ws}` belongs to `{o}`"),
        None => format!("workspace `{ws}` is not in the snapshot"),
    });
    owner_rule(
        owner.as_deref(),
        caller.org.as_ref().map(|o| &*o.id),
        env.policy.config.unknown_workspaces,
    )?;
    if let Some(scope) = caller.scope() {
        let allowed = scope.allows(&ws);
        env.note("scope", || {
            let verdict = if allowed { "is in" } else { "is outside" };
            format!("`{ws}` {verdict} the key's scope")
        });
        scope_rule(scope, &ws)?;
    }
    id.workspace_id = Some(Arc::from(&*ws));
    Ok(id)
}

/// SPEC §5, §5.1 for a resolved workspace whose owner the snapshot says is
/// `owner`: it belongs to the caller's organization `org` (an unknown one
/// per `scopes.unknown_workspaces`).
fn owner_rule(
    owner: Option<&str>,
    org: Option<&str>,
    unknown: UnknownWorkspaces,
) -> Result<(), Denial> {
    match owner {
        Some(owner) if org != Some(owner) => {
            return Err(Denial::ScopeDenied("workspace_of_another_organization"));
        }
        Some(_) => {}
        // X-Workspace-ID always names a workspace keyward verified
        // (SPEC §5.1), unless the operator lets the upstream judge.
        None if unknown == UnknownWorkspaces::Deny => {
            return Err(Denial::ScopeDenied("unknown_workspace"));
        }
        None => {}
    }
    Ok(())
}

/// SPEC §5: a workspace-scoped key's list holds the resolved workspace.
fn scope_rule(scope: &Scope, ws: &str) -> Result<(), Denial> {
    if !scope.allows(ws) {
        return Err(Denial::ScopeDenied("workspace_not_in_scope"));
    }
    Ok(())
}

// ------------------------------------------------------------ words for a trace

fn describe_route(route: &Route) -> String {
    if route.index == usize::MAX {
        return "no route matched: auth required, no workspace rule".to_string();
    }
    let auth = match route.auth {
        AuthMode::Required => "required",
        AuthMode::None => "none",
        AuthMode::Mcp => "mcp",
    };
    let mut flags = Vec::new();
    if route.workspace.is_some() {
        flags.push(format!("workspace = {}", describe_source(route)));
    }
    for (on, name) in [
        (route.org_wide_only, "org_wide_only"),
        (route.quota, "quota"),
        (route.org_optional, "org_optional"),
        (route.scoped_filter, "scoped_keys = filter"),
    ] {
        if on {
            flags.push(name.to_string());
        }
    }
    let flags: String = flags.iter().map(|f| format!(", {f}")).collect();
    format!("#{} `{}` (auth = {auth}{flags})", route.index, route.path)
}

fn describe_source(route: &Route) -> String {
    let name = route.workspace_name().unwrap_or("");
    match &route.workspace {
        None => "no workspace rule".to_string(),
        Some(WorkspaceSource::Path(_)) => format!("path:{name}"),
        Some(WorkspaceSource::Query(n)) => format!("query:{n}"),
        Some(WorkspaceSource::Header(n)) => format!("header:{n}"),
        Some(WorkspaceSource::Body(f)) => format!("body:{f}"),
        Some(WorkspaceSource::ResourcePath(_)) => "resource_path".to_string(),
        Some(WorkspaceSource::ResourceBody(f)) => format!("resource_body:{f}"),
    }
}

fn describe_credential(c: &Credential<'_>) -> String {
    match c {
        Credential::None => "none".to_string(),
        Credential::Invalid(reason) => format!("present but unusable ({reason})"),
        Credential::Bearer {
            kind: BearerKind::ApiKey,
            ..
        } => "API key (Authorization: Bearer wvz_…)".to_string(),
        Credential::Bearer {
            kind: BearerKind::Mcp,
            ..
        } => "MCP token (Authorization: Bearer mcp_…)".to_string(),
        Credential::Bearer {
            kind: BearerKind::McpOAuth,
            ..
        } => "MCP OAuth token (Authorization: Bearer mcpo_…)".to_string(),
        Credential::ServiceKey(_) => "service key (X-Service-Key)".to_string(),
        Credential::Session { .. } => "session cookie (signature verified)".to_string(),
    }
}

fn describe_caller(c: &Caller) -> String {
    let org = match &c.org {
        Some(o) => format!("organization `{}` (plan `{}`)", o.id, o.plan),
        None => "no organization".to_string(),
    };
    match &c.verdict.value {
        Verdict::ApiKey(k) => {
            let scope = match &k.scope {
                Scope::OrgWide => "org-wide".to_string(),
                Scope::Workspaces { header, .. } => format!("workspaces [{header}]"),
                Scope::Malformed => "malformed".to_string(),
            };
            format!("API key `{}`, {org}, scope {scope}", k.id)
        }
        Verdict::Session(s) => format!("session of user `{}`, {org}", s.user_id),
        Verdict::ServiceKey(k) => format!("service key `{}`, acting for {org}", k.id),
        Verdict::Mcp(t) => format!(
            "MCP token `{}` ({}) for server `{}`, {org}",
            t.id,
            c.method.as_str(),
            t.server_id
        ),
        Verdict::Rejected(r) => format!("rejected ({r})"),
    }
}

mod standing;
pub use standing::{lapse_reason, stream_cap, Standing, LAPSE_REASONS};
