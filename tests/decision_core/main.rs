//! The decision core against the contract's tables (SPEC §3, §5, §5.1, §6):
//! rows against an in-memory snapshot, one behaviour per row, no sockets.
//! The core is driven as the shell drives it (`decide`, then `decide_body`
//! when it asks for the body), with the store's in-memory directory and the
//! local limiter wired in from outside.

use std::path::Path;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use keyward::auth::decide::*;
use keyward::config::{Config, Secret};
use keyward::credentials::signed_cookie_value;
use keyward::principal::OrgRecord;
use keyward::ratelimit::{AuthFailureThrottle, LocalLimiter, RateState};
use keyward::snapshot::{ApiKeyRecord, McpTokenRecord, ServiceKeyRecord, SessionRecord};
use keyward::store::memory::MemoryDirectory;

mod credentials;
mod limits;
mod workspaces;

const NOW: i64 = 1_900_000_000;
const SECRET: &str = "better-auth-secret-12345678901234567890";

const CONFIG: &str = concat!(
    r#"
[session]
secret = "better-auth-secret-12345678901234567890"
[plans.free]
requests_per_window = 1000
[plans.tiny]
requests_per_window = 2
"#,
    include_str!("../routes.toml")
);

fn key(id: &str, org: &str, permissions: Option<&str>) -> ApiKeyRecord {
    ApiKeyRecord {
        id: id.into(),
        organization_id: org.into(),
        key_prefix: Some(id.chars().take(8).collect()),
        permissions: permissions.map(Into::into),
        expires_at: None,
        revoked_at: None,
        rate_limit: None,
        allowed_ips: None,
    }
}

fn session(user: &str, org: Option<&str>, expires_at: i64) -> SessionRecord {
    SessionRecord {
        id: format!("s_{user}"),
        user_id: user.into(),
        active_organization_id: org.map(Into::into),
        expires_at,
    }
}

fn mcp(id: &str, kind: &str, server: &str, end_user: Option<&str>) -> McpTokenRecord {
    McpTokenRecord {
        id: id.into(),
        kind: kind.into(),
        mcp_server_id: server.into(),
        end_user_id: end_user.map(Into::into),
        expires_at: None,
        revoked_at: None,
        rate_limit: None,
    }
}

/// Two organizations with workspaces and resources, a disabled and an
/// over-quota one, and a credential of every kind and state.
fn world() -> MemoryDirectory {
    let mut d = MemoryDirectory::new();
    d.org("org_a", "free")
        .org("org_b", "free")
        .org("org_tiny", "tiny")
        .org_record(OrgRecord {
            id: "org_off".into(),
            plan: "free".into(),
            rate_limit: None,
            quota_exceeded: false,
            disabled: true,
        })
        .org_record(OrgRecord {
            id: "org_quota".into(),
            plan: "free".into(),
            rate_limit: None,
            quota_exceeded: true,
            disabled: false,
        })
        .org_record(OrgRecord {
            id: "org_override".into(),
            plan: "free".into(),
            rate_limit: Some(1),
            quota_exceeded: false,
            disabled: false,
        })
        .org("org_noplan", "enterprise")
        .workspace("ws_a1", "org_a")
        .workspace("ws_a2", "org_a")
        .workspace("ws_b", "org_b")
        .workspace("ws_q", "org_quota")
        .resource("conn_a1", "ws_a1")
        .resource("conn_b", "ws_b")
        .resource("conn_ghost", "ws_ghost");
    let scoped = r#"{"scope":"workspace","workspaceIds":["ws_a1"]}"#;
    d.api_key("wvz_org_a", key("key_a", "org_a", None))
        .api_key("wvz_scoped", key("key_s", "org_a", Some(scoped)))
        .api_key(
            "wvz_orgscope",
            key("key_o", "org_a", Some(r#"{"scope":"org"}"#)),
        )
        .api_key("wvz_malformed", key("key_m", "org_a", Some("{nope")))
        .api_key(
            "wvz_empty",
            key(
                "key_e",
                "org_a",
                Some(r#"{"scope":"workspace","workspaceIds":[]}"#),
            ),
        )
        .api_key("wvz_off", key("key_off", "org_off", None))
        .api_key("wvz_ghost", key("key_g", "org_ghost", None))
        .api_key("wvz_quota", key("key_q", "org_quota", None))
        .api_key("wvz_tiny", key("key_t", "org_tiny", None))
        .api_key("wvz_override", key("key_ov", "org_override", None))
        .api_key("wvz_noplan", key("key_np", "org_noplan", None))
        .api_key(
            "wvz_revoked",
            ApiKeyRecord {
                revoked_at: Some(NOW - 10),
                ..key("key_r", "org_a", None)
            },
        )
        .api_key(
            "wvz_expired",
            ApiKeyRecord {
                expires_at: Some(NOW - 1),
                ..key("key_x", "org_a", None)
            },
        )
        .api_key(
            "wvz_later",
            ApiKeyRecord {
                expires_at: Some(NOW + 60),
                ..key("key_l", "org_a", None)
            },
        );
    d.session("sess_a", session("user_a", Some("org_a"), NOW + 3600))
        .session("sess_old", session("user_o", Some("org_a"), NOW - 1))
        .session("sess_noorg", session("user_n", None, NOW + 3600))
        .session("sess_off", session("user_f", Some("org_off"), NOW + 3600));
    d.service_key(
        "svc_ok",
        ServiceKeyRecord {
            id: "sk_1".into(),
            revoked_at: None,
        },
    )
    .service_key(
        "svc_revoked",
        ServiceKeyRecord {
            id: "sk_2".into(),
            revoked_at: Some(NOW - 1),
        },
    );
    d.server("srv_bearer", "org_a", "ws_a1", "bearer")
        .server("srv_oauth", "org_a", "ws_a2", "oauth")
        .server("srv_both", "org_b", "ws_b", "oauth_and_bearer")
        .server("srv_odd", "org_a", "ws_a1", "something");
    d.mcp_token("mcp_static", mcp("t_s", "static", "srv_bearer", None))
        .mcp_token("mcp_user", mcp("t_u", "end_user", "srv_both", Some("eu_1")))
        .mcp_token("mcpo_oauth", mcp("t_o", "oauth", "srv_oauth", None))
        .mcp_token("mcpo_notoauth", mcp("t_n", "static", "srv_bearer", None))
        .mcp_token("mcp_isoauth", mcp("t_i", "oauth", "srv_oauth", None))
        .mcp_token("mcp_onoauth", mcp("t_x", "static", "srv_oauth", None))
        .mcp_token("mcp_odd", mcp("t_d", "static", "srv_odd", None))
        .mcp_token("mcp_weird", mcp("t_w", "weird", "srv_bearer", None))
        .mcp_token(
            "mcp_revoked",
            McpTokenRecord {
                revoked_at: Some(NOW - 1),
                ..mcp("t_r", "static", "srv_bearer", None)
            },
        );
    d
}

fn cookie(token: &str) -> String {
    format!(
        "better-auth.session_token={}",
        signed_cookie_value(token, &Secret::new(SECRET))
    )
}

/// One request: method, target (path and query), header lines, body.
struct Req<'a> {
    method: &'a str,
    target: &'a str,
    headers: Vec<(&'a str, String)>,
    body: Option<&'a str>,
}

fn get(target: &str) -> Req<'_> {
    Req {
        method: "GET",
        target,
        headers: Vec::new(),
        body: None,
    }
}

fn post<'a>(target: &'a str, body: &'a str) -> Req<'a> {
    Req {
        method: "POST",
        target,
        headers: vec![("content-type", "application/json".into())],
        body: Some(body),
    }
}

impl<'a> Req<'a> {
    fn h(mut self, name: &'a str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
    fn bearer(self, token: &str) -> Self {
        self.h("authorization", format!("Bearer {token}"))
    }
}

/// What the core answered, in the contract's words.
#[derive(Debug, Clone, PartialEq)]
enum Got {
    /// identity headers the upstream would get (name, value), sorted
    Forward(Vec<(&'static str, String)>),
    Refuse(u16, &'static str, Option<&'static str>),
}

fn identity_pairs(id: &Identity) -> Vec<(&'static str, String)> {
    let mut v = Vec::new();
    let mut put = |name: &'static str, value: &Option<Arc<str>>| {
        if let Some(x) = value {
            v.push((name, x.to_string()));
        }
    };
    put("x-org-id", &id.org_id);
    put("x-api-key-id", &id.api_key_id);
    put("x-user-id", &id.user_id);
    put("x-workspace-id", &id.workspace_id);
    put("x-allowed-workspaces", &id.allowed_workspaces);
    put("x-mcp-server-id", &id.mcp_server_id);
    put("x-end-user-id", &id.end_user_id);
    if let Some(m) = id.auth_method {
        v.push(("x-auth-method", m.as_str().to_string()));
    }
    v.sort();
    v
}

struct World {
    policy: Policy,
    dir: MemoryDirectory,
    limiter: LocalLimiter,
    throttle: AuthFailureThrottle,
}

impl World {
    /// The test config with `extra` tables before it.
    fn new(extra: &str) -> World {
        World::from_text(&format!("{extra}\n{CONFIG}"))
    }

    fn from_text(text: &str) -> World {
        let config = Config::from_toml_str(text, Path::new("/")).unwrap();
        World {
            throttle: AuthFailureThrottle::new(60, config.rate_limit.auth_failures_per_ip),
            limiter: LocalLimiter::new(60),
            policy: Policy { config },
            dir: world(),
        }
    }

    /// The full decision for one request, as the shell drives it.
    fn run(&self, req: &Req<'_>) -> (Got, Option<RateState>) {
        let mut headers = HeaderMap::new();
        for (k, v) in &req.headers {
            headers.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let body = req.body.unwrap_or("");
        if req.body.is_some() && !headers.contains_key(http::header::CONTENT_LENGTH) {
            headers.insert(http::header::CONTENT_LENGTH, body.len().into());
        }
        let (path, query) = match req.target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (req.target, None),
        };
        let method = Method::from_bytes(req.method.as_bytes()).unwrap();
        let facts = RequestFacts {
            method: &method,
            path,
            query,
            headers: &headers,
            client: keyward::request::forwarding::Client::resolve(
                "192.0.2.1".parse().unwrap(),
                false,
                &headers,
                &[],
            ),
        };
        let env = Env {
            policy: &self.policy,
            directory: &self.dir,
            limiter: &self.limiter,
            throttle: &self.throttle,
            now: NOW,
            trace: None,
        };
        let mut d = decide(&facts, &env);
        if let Decision::NeedBody(p) = d {
            let read = if body.len() > p.cap {
                Body::TooLarge
            } else {
                Body::Read(body.as_bytes())
            };
            d = decide_body(&facts, p, read, &env);
        }
        match d {
            Decision::Forward(g) => (Got::Forward(identity_pairs(&g.identity)), g.rate),
            Decision::Refuse(r) => (
                Got::Refuse(r.denial.status(), r.denial.code(), r.denial.reason()),
                r.rate,
            ),
            Decision::NeedBody(_) => panic!("asked for the body twice"),
        }
    }
}

fn fwd(pairs: &[(&'static str, &str)]) -> Got {
    let mut v: Vec<(&'static str, String)> =
        pairs.iter().map(|(k, v)| (*k, v.to_string())).collect();
    v.sort();
    Got::Forward(v)
}

fn refuse(status: u16, code: &'static str, reason: &'static str) -> Got {
    Got::Refuse(status, code, (!reason.is_empty()).then_some(reason))
}

/// Run every row; report all mismatches at once.
fn check(world: &World, rows: Vec<(&str, Req<'_>, Got)>) {
    let mut failures = Vec::new();
    for (name, req, want) in rows {
        let (got, _) = world.run(&req);
        if got != want {
            failures.push(format!("{name}:\n   want {want:?}\n    got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

const ORG_KEY: &[(&str, &str)] = &[
    ("x-org-id", "org_a"),
    ("x-auth-method", "api_key"),
    ("x-api-key-id", "key_a"),
];
