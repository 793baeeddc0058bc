//! Reference model (issue 15, item 7): a deliberately slow, obvious
//! implementation of SPEC §3 (credentials), §5/§5.1 (routes, workspaces,
//! scopes, one reading of a request) and §6 (per-organization limits, the
//! per-IP failed-authentication throttle), written from SPEC's text, and
//! proptests that require `keyward::auth::decide` and the model to give the
//! same answer (status, code, `details.reason`) and the same identity
//! headers (SPEC §4) for random snapshots, configs, route tables and request
//! sequences.
//!
//! The model reads plain structs (no SQLite, no cache, no hashing: tokens
//! are looked up by linear scan) and never calls into `keyward` except to
//! build the real side of the comparison (and to sign test cookies; the
//! model verifies them itself). Where SPEC names no `details.reason`, the
//! model uses docs/credentials-and-routes.md "Errors" and docs/security.md
//! ("What keyward refuses, and why") and,
//! where docs/ has none either (`api_key_on_mcp_route`,
//! `organization_missing`, `token_kind_mismatch`, …), the string `decide`
//! uses: those names are vocabulary, not behaviour. Where SPEC leaves the
//! order of two reasons of one status open, the comment at that step says
//! so, and the model takes `decide`'s order.
//!
//! Left out on purpose (covered elsewhere or not a decision of the core):
//! path normalization and the shell's hygiene checks (the paths generated
//! are already normalized, without `;`, dots or method overrides), methods
//! in another letter case, query parameter names in another letter case,
//! `;` inside query pairs, underscore spellings of a `header:` rule's name,
//! two `Origin` headers, `WWW-Authenticate` challenges, `X-RateLimit-*`
//! values and `Retry-After`, the verdict cache ("credentials already known
//! valid keep working" under the per-IP throttle needs the positive cache;
//! the in-memory directory has none).
//!
//! `PROPTEST_CASES` overrides the case count (default 512, a few seconds);
//! `cargo test --test reference_model coverage_report -- --ignored
//! --nocapture` prints how often each answer comes up.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use proptest::prelude::*;
use proptest::sample::select;

use keyward::auth::decide::{
    decide, decide_body, Body, Decision, Env, Identity, Policy, RequestFacts,
};
use keyward::config::{Config, Secret};
use keyward::forwarding::Client;
use keyward::ratelimit::{AuthFailureThrottle, LocalLimiter};
use keyward::snapshot::{ApiKeyRecord, McpTokenRecord, OrgRecord, ServiceKeyRecord, SessionRecord};
use keyward::store::memory::MemoryDirectory;

/// Every request of a case is judged at this instant (one rate-limit window).
const NOW: i64 = 1_700_000_010;
const SECRET: &str = "kw-reference-model-secret-0123456789";
const OTHER_SECRET: &str = "not-the-configured-secret";
const BODY_CAP: usize = 64;
const GOOD_ORIGIN: &str = "https://app.example";
const EVIL_ORIGIN: &str = "https://evil.example";
const WS_HEADER: &str = "X-Target-Workspace";
const COOKIE_NAMES: [&str; 2] = [
    "__Secure-better-auth.session_token",
    "better-auth.session_token",
];

// ------------------------------------------------------------ the world

const ORGS: [&str; 3] = ["org_a", "org_b", "org_c"];
/// Organization ids rows may name: `org_x` is never in the snapshot.
const ORG_REFS: [&str; 4] = ["org_a", "org_b", "org_c", "org_x"];
const WORKSPACES: [&str; 4] = ["ws_1", "ws_2", "ws_3", "ws_4"];
/// `ws_9` is never in the snapshot.
const WS_REFS: [&str; 5] = ["ws_1", "ws_2", "ws_3", "ws_4", "ws_9"];

/// An organization a row names: mostly `org_a`, sometimes one never loaded.
fn org_ref() -> impl Strategy<Value = &'static str> {
    prop_oneof![8 => Just("org_a"), 2 => Just("org_b"), 1 => Just("org_c"), 1 => Just("org_x")]
}
const RESOURCES: [&str; 3] = ["res_1", "res_2", "res_3"];
const SERVERS: [&str; 2] = ["srv_1", "srv_2"];
/// `srv_9` is never in the snapshot.
const SERVER_REFS: [&str; 3] = ["srv_1", "srv_2", "srv_9"];
const API_TOKENS: [&str; 4] = ["wvz_key0", "wvz_key1", "wvz_key2", "wvz_key3"];
const SESSION_TOKENS: [&str; 3] = ["sess0tok", "sess1tok", "sess2tok"];
const SERVICE_TOKENS: [&str; 2] = ["svc_key0", "svc_key1"];
const MCP_TOKENS: [&str; 4] = ["mcp_tok0", "mcp_tok1", "mcpo_tok2", "mcpo_tok3"];

#[derive(Debug, Clone)]
struct Org {
    id: &'static str,
    plan: &'static str,
    rate_limit: Option<u64>,
    quota_exceeded: bool,
    disabled: bool,
}

#[derive(Debug, Clone)]
struct ApiKeyRow {
    token: &'static str,
    id: String,
    org: &'static str,
    permissions: Option<String>,
    expires_at: Option<i64>,
    revoked: bool,
}

#[derive(Debug, Clone)]
struct SessionRow {
    token: &'static str,
    id: String,
    user_id: String,
    active_org: Option<&'static str>,
    expires_at: i64,
}

#[derive(Debug, Clone)]
struct ServiceKeyRow {
    token: &'static str,
    id: String,
    revoked: bool,
}

#[derive(Debug, Clone)]
struct McpServerRow {
    id: &'static str,
    org: &'static str,
    workspace: &'static str,
    auth_mode: &'static str,
}

#[derive(Debug, Clone)]
struct McpTokenRow {
    token: &'static str,
    id: String,
    kind: &'static str,
    server: &'static str,
    end_user: Option<&'static str>,
    expires_at: Option<i64>,
    revoked: bool,
}

/// One snapshot, as plain rows (SPEC §2).
#[derive(Debug, Clone)]
struct World {
    /// no snapshot loaded yet (SPEC §1: 503)
    unloaded: bool,
    orgs: Vec<Org>,
    /// (workspace id, organization id)
    workspaces: Vec<(&'static str, &'static str)>,
    /// (resource id, workspace id)
    resources: Vec<(&'static str, &'static str)>,
    servers: Vec<McpServerRow>,
    api_keys: Vec<ApiKeyRow>,
    sessions: Vec<SessionRow>,
    service_keys: Vec<ServiceKeyRow>,
    mcp_tokens: Vec<McpTokenRow>,
}

// ------------------------------------------------------------ the config

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthMode {
    Required,
    None,
    Mcp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Path(&'static str),
    Query(&'static str),
    Header(&'static str),
    Body(&'static str),
    ResourcePath(&'static str),
    ResourceBody(&'static str),
}

#[derive(Debug, Clone)]
struct RouteSpec {
    pattern: &'static str,
    methods: Option<Vec<&'static str>>,
    auth: AuthMode,
    workspace: Option<Source>,
    org_wide_only: bool,
    quota: bool,
    org_optional: bool,
    scoped_filter: bool,
}

impl RouteSpec {
    /// SPEC §5: "Unmatched paths: auth = "required", no workspace rule."
    fn unmatched() -> RouteSpec {
        RouteSpec {
            pattern: "(unmatched)",
            methods: None,
            auth: AuthMode::Required,
            workspace: None,
            org_wide_only: false,
            quota: false,
            org_optional: false,
            scoped_filter: false,
        }
    }
}

#[derive(Debug, Clone)]
struct Settings {
    secret: bool,
    unknown_pass: bool,
    mcp_allowed_origin: bool,
    trusted_origin: bool,
    /// `[plans.NAME] requests_per_window` (`gold` never has a table)
    plans: Vec<(&'static str, u64)>,
    service_keys_limited: bool,
    /// 0: off
    auth_failures_per_ip: u64,
    routes: Vec<RouteSpec>,
}

impl Settings {
    fn toml(&self) -> String {
        let mut t = String::new();
        t += &format!("[server]\nmax_body_inspect_bytes = {BODY_CAP}\n\n");
        t += "[session]\nsecret_env = \"\"\n";
        if self.secret {
            t += &format!("secret = \"{SECRET}\"\n");
        }
        if self.trusted_origin {
            t += &format!("trusted_origins = [\"{GOOD_ORIGIN}\"]\n");
        }
        t += &format!(
            "\n[rate_limit]\nwindow_s = 60\nauth_failures_per_ip = {}\nservice_keys_limited = {}\n\n",
            self.auth_failures_per_ip, self.service_keys_limited
        );
        t += &format!(
            "[scopes]\nunknown_workspaces = \"{}\"\n\n",
            if self.unknown_pass { "pass" } else { "deny" }
        );
        if self.mcp_allowed_origin {
            t += &format!("[mcp]\nallowed_origins = [\"{GOOD_ORIGIN}\"]\n\n");
        }
        for (name, n) in &self.plans {
            t += &format!("[plans.{name}]\nrequests_per_window = {n}\n\n");
        }
        for r in &self.routes {
            t += &format!("[[route]]\npath = \"{}\"\n", r.pattern);
            if let Some(ms) = &r.methods {
                let list: Vec<String> = ms.iter().map(|m| format!("\"{m}\"")).collect();
                t += &format!("methods = [{}]\n", list.join(", "));
            }
            t += match r.auth {
                AuthMode::Required => "auth = \"required\"\n",
                AuthMode::None => "auth = \"none\"\n",
                AuthMode::Mcp => "auth = \"mcp\"\n",
            };
            if let Some(src) = &r.workspace {
                let s = match src {
                    Source::Path(n) => format!("path:{n}"),
                    Source::Query(n) => format!("query:{n}"),
                    Source::Header(n) => format!("header:{n}"),
                    Source::Body(n) => format!("body:{n}"),
                    Source::ResourcePath(n) => format!("resource_path:{n}"),
                    Source::ResourceBody(n) => format!("resource_body:{n}"),
                };
                t += &format!("workspace = \"{s}\"\n");
            }
            t += &format!(
                "org_wide_only = {}\nquota = {}\norg_optional = {}\nscoped_keys = \"{}\"\n\n",
                r.org_wide_only,
                r.quota,
                r.org_optional,
                if r.scoped_filter { "filter" } else { "deny" }
            );
        }
        t
    }
}

// ------------------------------------------------------------ one request

#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    /// already normalized (SPEC §5)
    path: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
    body: String,
}

impl Req {
    fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn header_map(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in &self.headers {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }
}

/// What a request gets: forwarded with these identity headers (SPEC §4), or
/// answered by keyward (status, code, `details.reason`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Forward(BTreeMap<&'static str, String>),
    Refuse(u16, &'static str, Option<String>),
}

// ============================================================ the model

mod model;
mod strategies;
use strategies::*;

// ============================================================ the real thing

fn directory(w: &World) -> MemoryDirectory {
    let mut d = MemoryDirectory::new();
    d.unloaded = w.unloaded;
    for o in &w.orgs {
        d.org_record(OrgRecord {
            id: o.id.into(),
            plan: o.plan.into(),
            rate_limit: o.rate_limit,
            quota_exceeded: o.quota_exceeded,
            disabled: o.disabled,
        });
    }
    for (ws, org) in &w.workspaces {
        d.workspace(ws, org);
    }
    for (res, ws) in &w.resources {
        d.resource(res, ws);
    }
    for s in &w.servers {
        d.server(s.id, s.org, s.workspace, s.auth_mode);
    }
    for k in &w.api_keys {
        d.api_key(
            k.token,
            ApiKeyRecord {
                id: k.id.clone(),
                organization_id: k.org.to_string(),
                key_prefix: Some(k.token[..8].to_string()),
                permissions: k.permissions.clone(),
                expires_at: k.expires_at,
                revoked_at: k.revoked.then_some(NOW - 100),
                rate_limit: None,
                allowed_ips: None,
            },
        );
    }
    for s in &w.sessions {
        d.session(
            s.token,
            SessionRecord {
                id: s.id.clone(),
                user_id: s.user_id.clone(),
                active_organization_id: s.active_org.map(String::from),
                expires_at: s.expires_at,
            },
        );
    }
    for k in &w.service_keys {
        d.service_key(
            k.token,
            ServiceKeyRecord {
                id: k.id.clone(),
                revoked_at: k.revoked.then_some(NOW - 100),
            },
        );
    }
    for t in &w.mcp_tokens {
        d.mcp_token(
            t.token,
            McpTokenRecord {
                id: t.id.clone(),
                kind: t.kind.to_string(),
                mcp_server_id: t.server.to_string(),
                end_user_id: t.end_user.map(String::from),
                expires_at: t.expires_at,
                revoked_at: t.revoked.then_some(NOW - 100),
                rate_limit: None,
            },
        );
    }
    d
}

fn identity_headers(id: &Identity) -> BTreeMap<&'static str, String> {
    let mut m = BTreeMap::new();
    let mut put = |k: &'static str, v: Option<&str>| {
        if let Some(v) = v {
            m.insert(k, v.to_string());
        }
    };
    put("X-Org-ID", id.org_id.as_deref());
    put("X-Auth-Method", id.auth_method.map(|a| a.as_str()));
    put("X-Api-Key-ID", id.api_key_id.as_deref());
    put("X-User-ID", id.user_id.as_deref());
    put("X-Workspace-ID", id.workspace_id.as_deref());
    put("X-Allowed-Workspaces", id.allowed_workspaces.as_deref());
    put("X-MCP-Server-ID", id.mcp_server_id.as_deref());
    put("X-End-User-ID", id.end_user_id.as_deref());
    m
}

/// One case's real decision core: a policy, a directory and the limiters,
/// kept across the case's requests.
struct Real {
    policy: Policy,
    directory: MemoryDirectory,
    limiter: LocalLimiter,
    throttle: AuthFailureThrottle,
}

impl Real {
    fn new(w: &World, s: &Settings) -> Real {
        let config = Config::from_toml_str(&s.toml(), Path::new("/"))
            .unwrap_or_else(|e| panic!("config: {e}\n{}", s.toml()));
        Real {
            policy: Policy { config },
            directory: directory(w),
            limiter: LocalLimiter::new(60),
            throttle: AuthFailureThrottle::new(60, s.auth_failures_per_ip),
        }
    }

    fn decide(&self, r: &Req) -> Answer {
        let headers = r.header_map();
        let method = Method::from_bytes(r.method.as_bytes()).unwrap();
        let client = Client::resolve(
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
            false,
            &headers,
            &[],
        );
        let facts = RequestFacts {
            method: &method,
            path: &r.path,
            query: r.query.as_deref(),
            headers: &headers,
            client,
        };
        let env = Env {
            policy: &self.policy,
            directory: &self.directory,
            limiter: &self.limiter,
            throttle: &self.throttle,
            now: NOW,
            trace: None,
        };
        let mut d = decide(&facts, &env);
        if let Decision::NeedBody(pending) = d {
            let body = if r.body.len() > pending.cap {
                Body::TooLarge
            } else {
                Body::Read(r.body.as_bytes())
            };
            d = decide_body(&facts, pending, body, &env);
        }
        match d {
            Decision::Forward(g) => Answer::Forward(identity_headers(&g.identity)),
            Decision::Refuse(x) => Answer::Refuse(
                x.denial.status(),
                x.denial.code(),
                x.denial.reason().map(String::from),
            ),
            Decision::NeedBody(_) => panic!("NeedBody after decide_body"),
        }
    }
}

// ============================================================ the properties

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        // no regressions file beside this one: a failure prints its input
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Run a property on a thread with a large stack: shrinking these nested
/// strategies in a debug build overflows the test thread's 2 MiB.
fn check<S: Strategy + 'static>(
    strategy: impl FnOnce() -> S + Send + 'static,
    property: fn(S::Value) -> Result<(), TestCaseError>,
) {
    let outcome = std::thread::Builder::new()
        .stack_size(512 << 20)
        .spawn(move || {
            let mut runner = proptest::test_runner::TestRunner::new(config());
            runner.run(&strategy(), property).map_err(|e| e.to_string())
        })
        .unwrap()
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    if let Err(e) = outcome {
        panic!("{e}");
    }
}

/// `decide` and the model agree on every request of a sequence against one
/// snapshot and config (shared rate-limit window and throttle).
#[test]
fn decide_agrees_with_the_model() {
    check(
        || (world(), settings(), prop::collection::vec(request(), 1..12)),
        |(w, s, reqs)| {
            let real = Real::new(&w, &s);
            let mut state = model::State::default();
            for (i, r) in reqs.iter().enumerate() {
                let expected = model::decide(&w, &s, r, &mut state);
                let got = real.decide(r);
                prop_assert_eq!(
                    &got,
                    &expected,
                    "decide (left) and the model (right) differ on request #{} {:?}\nmodel state after: {:?}\nconfig:\n{}",
                    i,
                    r,
                    state,
                    s.toml()
                );
            }
            Ok(())
        },
    );
}

/// §6: in one window exactly N requests of an organization are admitted,
/// and requests refused for any other reason (unknown key, another
/// organization's workspace, an unknown one) use none of them — and are
/// still refused for that reason once the window is full.
#[test]
fn exactly_n_admitted_and_refusals_are_free() {
    check(
        || {
            (
                1u64..8,
                prop::option::of(1u64..8),
                prop::collection::vec(0u8..4, 1..30),
            )
        },
        |(n, override_limit, seq)| {
            let w = World {
                unloaded: false,
                orgs: vec![
                    Org {
                        id: "org_a",
                        plan: "free",
                        rate_limit: override_limit,
                        quota_exceeded: false,
                        disabled: false,
                    },
                    Org {
                        id: "org_b",
                        plan: "free",
                        rate_limit: None,
                        quota_exceeded: false,
                        disabled: false,
                    },
                ],
                workspaces: vec![("ws_1", "org_a"), ("ws_2", "org_b")],
                resources: vec![],
                servers: vec![],
                api_keys: vec![ApiKeyRow {
                    token: "wvz_key0",
                    id: "ak_0".into(),
                    org: "org_a",
                    permissions: None,
                    expires_at: None,
                    revoked: false,
                }],
                sessions: vec![],
                service_keys: vec![],
                mcp_tokens: vec![],
            };
            let s = Settings {
                secret: false,
                unknown_pass: false,
                mcp_allowed_origin: false,
                trusted_origin: false,
                plans: vec![("free", n)],
                service_keys_limited: false,
                auth_failures_per_ip: 0,
                routes: vec![RouteSpec {
                    pattern: "/api/v1/workspaces/{workspaceId}/**",
                    methods: None,
                    auth: AuthMode::Required,
                    workspace: Some(Source::Path("workspaceId")),
                    org_wide_only: false,
                    quota: false,
                    org_optional: false,
                    scoped_filter: false,
                }],
            };
            let limit = override_limit.unwrap_or(n);
            let real = Real::new(&w, &s);
            let mut admitted = 0u64;
            for kind in seq {
                let (token, ws) = match kind {
                    0 | 1 => ("wvz_key0", "ws_1"),
                    2 => ("wvz_unknown", "ws_1"),
                    _ => ("wvz_key0", if admitted % 2 == 0 { "ws_2" } else { "ws_9" }),
                };
                let r = Req {
                    method: "GET",
                    path: format!("/api/v1/workspaces/{ws}/connections"),
                    query: None,
                    headers: vec![("Authorization".into(), format!("Bearer {token}"))],
                    body: String::new(),
                };
                let got = real.decide(&r);
                match kind {
                    0 | 1 if admitted < limit => {
                        prop_assert!(matches!(got, Answer::Forward(_)), "{:?}", got);
                        admitted += 1;
                    }
                    0 | 1 => prop_assert_eq!(got, Answer::Refuse(429, "RATE_LIMIT_EXCEEDED", None)),
                    2 => prop_assert_eq!(
                        got,
                        Answer::Refuse(401, "UNAUTHENTICATED", Some("unknown".into()))
                    ),
                    _ => prop_assert!(
                        matches!(got, Answer::Refuse(403, "SCOPE_DENIED", _)),
                        "{:?}",
                        got
                    ),
                }
            }
            Ok(())
        },
    );
}

/// How often each answer comes up (run with `--ignored --nocapture`): the
/// equivalence run is only as good as the paths it reaches.
#[test]
#[ignore]
fn coverage_report() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::default();
    let strategy = (world(), settings(), prop::collection::vec(request(), 1..12));
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut total = 0;
    for _ in 0..cases() {
        let (w, s, reqs) = strategy.new_tree(&mut runner).unwrap().current();
        let mut state = model::State::default();
        for r in &reqs {
            let key = match model::decide(&w, &s, r, &mut state) {
                Answer::Forward(id) => format!(
                    "forward {} ws={}",
                    id.get("X-Auth-Method").map_or("none", String::as_str),
                    id.contains_key("X-Workspace-ID")
                ),
                Answer::Refuse(st, code, reason) => format!("{st} {code} {reason:?}"),
            };
            *seen.entry(key).or_default() += 1;
            total += 1;
        }
    }
    for (k, n) in &seen {
        println!("{n:6} {k}");
    }
    println!("{total} requests");
}
