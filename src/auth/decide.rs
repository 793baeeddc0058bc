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
use crate::auth::limit::{group_key, Limiter, RateState, Throttle, Window, MAX_WINDOWS};
use crate::auth::principal::{
    AllowedIps, ApiKey, McpKind, McpToken, Org, OrgRecord, OwnLimit, Scope, Session, TokenKey,
    TokenTable, Verdict,
};
use crate::auth::scope;
use crate::config::routes::{AuthMode, Captures, LimitMode, Route, WorkspaceSource};
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
    /// `Some("rate_limit")`: over a shadowed limit, forwarded anyway (SPEC
    /// §6.1; the access log's `would_deny`, `decision="shadow_denied"`)
    pub would_deny: Option<&'static str>,
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
            would_deny: None,
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
    if let Err(d) = check_flags(facts, route, &caller, env) {
        return refusal(env, route, caller, d);
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
            return refusal(env, route, caller, Denial::UnsupportedMediaType(e.reason()));
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

impl Pending<'_> {
    /// Give up on the body (forward-auth without one): the caller, for the
    /// access line.
    pub fn into_caller(self) -> Caller {
        self.caller
    }
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
        Body::TooLarge => refusal(env, route, caller, Denial::PayloadTooLarge),
    }
    .at(route)
}

/// A refusal for an authenticated caller: it carries the rate-limit state
/// of the windows the request would count in, when it has any (SPEC §6:
/// every response to a rate-limited organization carries the headers).
fn refusal<'p>(env: &Env<'p>, route: &Route, caller: Caller, denial: Denial) -> Decision<'p> {
    Decision::Refuse(Refusal {
        denial,
        rate: peek_windows(&caller, Some(route), env),
        caller: Some(caller),
        plan: None,
        route: None,
    })
}

mod authenticate;
mod authorize;
mod describe;
mod standing;
use authenticate::*;
use authorize::*;
use describe::*;
pub use standing::{lapse_reason, stream_cap, Standing, LAPSE_REASONS};
