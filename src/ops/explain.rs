//! `keyward explain` and `keyward test` (SPEC §8.2): the real decision core
//! on a request that is never forwarded and never counted against a limit,
//! with each step of the decision in words. `explain` reads a snapshot file;
//! `test` runs `[[case]]` tables against fixtures held in memory (ids only:
//! the tokens are made up here, so a test file never holds a secret).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::{Deserialize, Serialize};

use crate::auth::decide::{
    decide, decide_body, Body, Decision, Env, Identity, Policy, RequestFacts, Step, Trace,
};
use crate::config::routes;
use crate::config::{Config, Secret};
use crate::ratelimit::{AuthFailureThrottle, Limiter, LocalLimiter, RateState, Window};
use crate::request::forwarding::Client;
use crate::request::headers::IdentityHeader;
use crate::store::Directory;

/// One request to explain.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// path and query, as on the request line
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub peer: IpAddr,
}

/// What keyward would do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    /// forwarded, with these headers set by keyward (identity and forwarding)
    Forward { headers: BTreeMap<String, String> },
    Refuse {
        status: u16,
        code: &'static str,
        reason: Option<&'static str>,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Explained {
    pub steps: Vec<Step>,
    #[serde(flatten)]
    pub answer: Answer,
    /// the organization's rate-limit state the request would see
    pub rate: Option<RateView>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct RateView {
    pub limit: u64,
    pub remaining: u64,
    pub reset: i64,
}

/// A limiter that admits by looking: `explain` never uses up a window.
struct Peek<'a>(&'a dyn Limiter);

impl Limiter for Peek<'_> {
    fn charge(
        &self,
        windows: &[Window<'_>],
        cost: u64,
        now: i64,
        states: &mut [RateState],
    ) -> Option<usize> {
        let mut refused = None;
        for (i, w) in windows.iter().enumerate() {
            states[i] = self.0.peek(w.key, w.limit, now);
            if refused.is_none() && states[i].remaining < cost.max(1) {
                refused = Some(i);
            }
        }
        if refused.is_none() {
            for s in states.iter_mut().take(windows.len()) {
                s.remaining -= cost.max(1);
            }
        }
        refused
    }
    fn peek(&self, key: &str, limit: u64, now: i64) -> RateState {
        self.0.peek(key, limit, now)
    }
}

fn refuse(status: u16, code: &'static str, reason: &'static str) -> Answer {
    Answer::Refuse {
        status,
        code,
        reason: Some(reason),
    }
}

/// Explain one request against `policy` and `directory`.
pub fn explain(policy: &Policy, directory: &dyn Directory, req: &Request, now: i64) -> Explained {
    let trace = Trace::default();
    let note = |step: &'static str, detail: String| {
        trace.borrow_mut().push(Step { step, detail });
    };
    let done = |answer: Answer, rate: Option<RateState>, trace: Trace| Explained {
        steps: trace.into_inner(),
        answer,
        rate: rate.map(|r| RateView {
            limit: r.limit,
            remaining: r.remaining,
            reset: r.reset,
        }),
    };
    // request hygiene, as the shell applies it (SPEC §5, §5.1)
    let Ok(method) = Method::from_bytes(req.method.as_bytes()) else {
        note("method", format!("`{}` is not a method", req.method));
        return done(refuse(400, "BAD_REQUEST", "malformed_request"), None, trace);
    };
    let mut headers = HeaderMap::new();
    for (k, v) in &req.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) else {
            note("header", format!("`{k}` is not a header line"));
            return done(refuse(400, "BAD_REQUEST", "malformed_request"), None, trace);
        };
        headers.append(name, value);
    }
    if let Some(body) = &req.body {
        if !headers.contains_key(http::header::CONTENT_LENGTH) {
            headers.insert(http::header::CONTENT_LENGTH, body.len().into());
        }
    }
    let (raw_path, query) = match req.target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (req.target.as_str(), None),
    };
    if let Err(reason) = crate::request::method::check_method(&method, &headers, query) {
        note(
            "method",
            match reason {
                "noncanonical_method" => format!("`{method}` is a standard method in another case"),
                _ => "a second method is named (override header or _method)".into(),
            },
        );
        return done(refuse(400, "BAD_REQUEST", reason), None, trace);
    }
    let path = match routes::normalize(raw_path) {
        Ok(p) => p,
        Err(e) => {
            note("path", format!("`{raw_path}` cannot be normalized safely"));
            return done(refuse(400, "BAD_REQUEST", e.reason()), None, trace);
        }
    };
    note(
        "path",
        if path == raw_path {
            format!("`{path}`")
        } else {
            format!("`{raw_path}` normalized to `{path}`")
        },
    );
    let cfg = &policy.config;
    let client = Client::resolve(req.peer, false, &headers, &cfg.server.trusted_proxies);
    let facts = RequestFacts {
        method: &method,
        path: &path,
        query,
        headers: &headers,
        client,
    };
    let counts = LocalLimiter::new(cfg.rate_limit.window_s);
    let limiter = Peek(&counts);
    let throttle = AuthFailureThrottle::new(cfg.rate_limit.window_s, 0);
    let env = Env {
        policy,
        directory,
        limiter: &limiter,
        throttle: &throttle,
        now,
        trace: Some(&trace),
    };
    let mut decision = decide(&facts, &env);
    if let Decision::NeedBody(pending) = decision {
        let body = req.body.as_deref().unwrap_or_default();
        let read = if body.len() > pending.cap {
            Body::TooLarge
        } else {
            Body::Read(body)
        };
        decision = decide_body(&facts, pending, read, &env);
    }
    let (answer, rate) = match decision {
        Decision::Forward(g) => {
            let mut up = HeaderMap::new();
            client.write(&mut up, &headers);
            let mut out: BTreeMap<String, String> = up
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect();
            out.extend(identity_headers(&g.identity));
            (Answer::Forward { headers: out }, g.rate)
        }
        Decision::Refuse(r) => (
            Answer::Refuse {
                status: r.denial.status(),
                code: r.denial.code(),
                reason: r.denial.reason(),
            },
            r.rate,
        ),
        Decision::NeedBody(_) => (refuse(503, "AUTH_UNAVAILABLE", "body_asked_twice"), None),
    };
    done(answer, rate, trace)
}

/// SPEC §4's identity headers for `id`, lowercase names.
pub fn identity_headers(id: &Identity) -> Vec<(String, String)> {
    let values = [
        (IdentityHeader::OrgId, &id.org_id),
        (IdentityHeader::ApiKeyId, &id.api_key_id),
        (IdentityHeader::UserId, &id.user_id),
        (IdentityHeader::WorkspaceId, &id.workspace_id),
        (IdentityHeader::AllowedWorkspaces, &id.allowed_workspaces),
        (IdentityHeader::McpServerId, &id.mcp_server_id),
        (IdentityHeader::EndUserId, &id.end_user_id),
    ];
    let mut out: Vec<(String, String)> = values
        .into_iter()
        .filter_map(|(h, v)| v.as_ref().map(|v| (h.as_str().to_string(), v.to_string())))
        .collect();
    if let Some(m) = id.auth_method {
        out.push((
            IdentityHeader::AuthMethod.as_str().into(),
            m.as_str().into(),
        ));
    }
    out
}

mod cases;
mod render;
pub use cases::*;
pub use render::*;

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[plans.free]
requests_per_window = 10
[[route]]
path = "/w/{workspaceId}/**"
workspace = "path:workspaceId"
[[route]]
path = "/actions"
methods = ["POST"]
workspace = "body:workspaceId"
quota = true
"#;

    const CASES: &str = r#"
[fixtures]
orgs = [{ id = "org_1" }, { id = "org_2" }, { id = "org_q", quota_exceeded = true }]
workspaces = [{ id = "ws_1", org = "org_1" }, { id = "ws_2", org = "org_2" }, { id = "ws_q", org = "org_q" }]
api_keys = [
  { id = "k1", org = "org_1", workspaces = ["ws_1"] },
  { id = "kq", org = "org_q" },
]

[[case]]
name = "scoped key in its workspace"
path = "/w/ws_1/x"
api_key = "k1"
expect = { status = 200, headers = { "X-Org-ID" = "org_1", "X-Workspace-ID" = "ws_1" } }

[[case]]
name = "another org's workspace"
path = "/w/ws_2/x"
api_key = "k1"
expect = { status = 403, code = "SCOPE_DENIED", reason = "workspace_of_another_organization" }

[[case]]
name = "over quota"
method = "POST"
path = "/actions"
api_key = "kq"
body = '{"workspaceId":"ws_q"}'
expect = { status = 403, code = "QUOTA_EXCEEDED" }

[[case]]
name = "a wrong expectation"
path = "/w/ws_1/x"
api_key = "k1"
expect = { status = 403, absent = ["X-Org-ID"] }
"#;

    #[test]
    fn cases_pass_and_a_wrong_one_is_reported_as_a_diff() {
        let cfg = Config::from_toml_str(CONFIG, Path::new("/")).unwrap();
        let file: CaseFile = toml::from_str(CASES).unwrap();
        let (report, failures) = run_cases(cfg, &file, 1_900_000_000);
        assert_eq!(failures, 1, "{report}");
        assert!(
            report.contains("ok   scoped key in its workspace"),
            "{report}"
        );
        assert!(report.contains("ok   over quota"), "{report}");
        assert!(report.contains("FAIL a wrong expectation"), "{report}");
        assert!(
            report.contains("- status 403\n     + status 200"),
            "{report}"
        );
        assert!(
            report.contains("- (no X-Org-ID)\n     + X-Org-ID: org_1"),
            "{report}"
        );
        assert!(
            !report.contains("fixture_"),
            "no token in the report: {report}"
        );
    }

    /// The shipped cases pass, and every route of the shipped table has a
    /// case it lets through and a case it refuses.
    #[test]
    fn shipped_route_table_cases_cover_every_route_both_ways() {
        let cfg = Config::from_toml_str(include_str!("../../config/keyward.toml"), Path::new("/"))
            .unwrap();
        let routes = cfg.routes.len();
        let file: CaseFile =
            toml::from_str(include_str!("../../config/keyward.test.toml")).unwrap();
        let now = 1_900_000_000;
        let (report, failures) = run_cases(cfg, &file, now);
        assert_eq!(failures, 0, "{report}");
        let mut cfg =
            Config::from_toml_str(include_str!("../../config/keyward.toml"), Path::new("/"))
                .unwrap();
        cfg.session.secret = Some(Secret::new(FIXTURE_SECRET));
        let policy = Policy { config: cfg };
        let dir = file.fixtures.directory(now);
        let (mut allowed, mut refused) = (vec![false; routes], vec![false; routes]);
        for case in &file.cases {
            let req = file
                .fixtures
                .request(case, &Secret::new(FIXTURE_SECRET))
                .unwrap();
            let e = explain(&policy, &dir, &req, now);
            // a refusal before routing (hygiene) counts for the route the
            // path would have matched
            let route = e
                .steps
                .iter()
                .find(|s| s.step == "route")
                .and_then(|s| route_index(&s.detail))
                .unwrap_or_else(|| {
                    let path = case.path.split(['?', ';']).next().unwrap_or("/");
                    let method =
                        Method::from_bytes(case.method.to_ascii_uppercase().as_bytes()).unwrap();
                    policy.config.routes.find(&method, path).0.index
                });
            let Some(i) = (route < routes).then_some(route) else {
                continue;
            };
            match e.answer {
                Answer::Forward { .. } => allowed[i] = true,
                Answer::Refuse { .. } => refused[i] = true,
            }
        }
        for i in 0..routes {
            assert!(
                allowed[i] && refused[i],
                "route #{i}: allowed {} refused {}",
                allowed[i],
                refused[i]
            );
        }
    }

    #[test]
    fn explain_names_each_step_and_never_the_token() {
        let cfg = Config::from_toml_str(CONFIG, Path::new("/")).unwrap();
        let file: CaseFile = toml::from_str(CASES).unwrap();
        let dir = file.fixtures.directory(1_900_000_000);
        let policy = Policy { config: cfg };
        let req = Request {
            method: "GET".into(),
            target: "/w//ws_2/./x".into(),
            headers: vec![("authorization".into(), "Bearer wvz_fixture_k1".into())],
            body: None,
            peer: IpAddr::from([127, 0, 0, 1]),
        };
        let e = explain(&policy, &dir, &req, 1_900_000_000);
        let steps: Vec<&str> = e.steps.iter().map(|s| s.step).collect();
        assert_eq!(
            steps,
            [
                "path",
                "route",
                "credential",
                "principal",
                "workspace",
                "owner"
            ],
            "{e:?}"
        );
        assert_eq!(
            e.answer,
            refuse(403, "SCOPE_DENIED", "workspace_of_another_organization")
        );
        let text = render_text(&req, &e, Some(CONFIG));
        assert!(text.contains("config line 4"), "{text}");
        assert!(text.contains("normalized to `/w/ws_2/x`"), "{text}");
        let json = serde_json::to_string(&e).unwrap();
        for out in [&text, &json] {
            assert!(!out.contains("wvz_fixture_k1"), "{out}");
        }
    }

    const POLICY_CONFIG: &str = r#"
[plans.free]
requests_per_window = 10
[plans.free.limits.uploads]
requests_per_window = 3
[[route]]
path = "/uploads/**"
limit = "uploads"
cost = 2
"#;

    const POLICY_CASES: &str = r#"
[fixtures]
orgs = [{ id = "org_1" }]
api_keys = [
  { id = "ro", org = "org_1", permissions = '{"scope":"org","readOnly":true}' },
  { id = "ip", org = "org_1", allowed_ips = '["203.0.113.0/24"]' },
  { id = "zero", org = "org_1", rate_limit = 0 },
]

[[case]]
name = "read-only key reads"
path = "/x"
api_key = "ro"
expect = { status = 200 }

[[case]]
name = "read-only key writes"
method = "POST"
path = "/x"
api_key = "ro"
expect = { status = 403, code = "SCOPE_DENIED", reason = "read_only" }

[[case]]
name = "listed client"
path = "/x"
api_key = "ip"
peer = "203.0.113.5"
expect = { status = 200 }

[[case]]
name = "unlisted client"
path = "/x"
api_key = "ip"
expect = { status = 403, code = "FORBIDDEN", reason = "ip_not_allowed" }

[[case]]
name = "a key that admits nothing"
path = "/x"
api_key = "zero"
expect = { status = 429, code = "RATE_LIMIT_EXCEEDED" }
"#;

    #[test]
    fn cases_and_explain_show_the_per_key_rules() {
        let cfg = Config::from_toml_str(POLICY_CONFIG, Path::new("/")).unwrap();
        let file: CaseFile = toml::from_str(POLICY_CASES).unwrap();
        let (report, failures) = run_cases(cfg.clone(), &file, 1_900_000_000);
        assert_eq!(failures, 0, "{report}");
        let dir = file.fixtures.directory(1_900_000_000);
        let policy = Policy { config: cfg };
        let req = |target: &str, key: &str| Request {
            method: "GET".into(),
            target: target.into(),
            headers: vec![("authorization".into(), format!("Bearer wvz_fixture_{key}"))],
            body: None,
            peer: IpAddr::from([127, 0, 0, 1]),
        };
        let e = explain(&policy, &dir, &req("/x", "ip"), 1_900_000_000);
        let step = |e: &Explained, name: &str| {
            e.steps
                .iter()
                .filter(|s| s.step == name)
                .map(|s| s.detail.clone())
                .collect::<Vec<_>>()
                .join(" | ")
        };
        assert!(
            step(&e, "allowed_ips").contains("127.0.0.1 is outside the key's allowed_ips"),
            "{e:?}"
        );
        let e = explain(&policy, &dir, &req("/uploads/a", "zero"), 1_900_000_000);
        let limits = step(&e, "rate limit");
        assert!(limits.contains("key window: 0 of 0 left"), "{limits}");
        assert!(
            limits.contains("plan `free` group `uploads`: 3 of 3 left"),
            "{limits}"
        );
        assert!(limits.contains("this route costs 2"), "{limits}");
        assert_eq!(e.answer, refuse_429());
        let e = explain(&policy, &dir, &req("/uploads/a", "ro"), 1_900_000_000);
        assert_eq!(e.rate.map(|r| r.remaining), Some(1), "3 - cost 2: {e:?}");
    }

    fn refuse_429() -> Answer {
        Answer::Refuse {
            status: 429,
            code: "RATE_LIMIT_EXCEEDED",
            reason: None,
        }
    }
}
