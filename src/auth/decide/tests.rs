//! The contract's tables (SPEC §3, §5, §5.1, §6) as rows against an
//! in-memory snapshot: one behaviour per row, no sockets.

use std::path::Path;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::*;
use crate::config::Secret;
use crate::credentials::signed_cookie_value;
use crate::ratelimit::LocalLimiter;
use crate::snapshot::{ApiKeyRecord, McpTokenRecord, ServiceKeyRecord, SessionRecord};
use crate::store::memory::MemoryDirectory;

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
    include_str!("../../../tests/routes.toml")
);

fn key(id: &str, org: &str, permissions: Option<&str>) -> ApiKeyRecord {
    ApiKeyRecord {
        id: id.into(),
        organization_id: org.into(),
        key_prefix: Some(id.chars().take(8).collect()),
        permissions: permissions.map(Into::into),
        expires_at: None,
        revoked_at: None,
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
            client: crate::request::forwarding::Client::resolve(
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

#[test]
fn credentials_spec_3() {
    let w = World::new("");
    let unauth = |r| refuse(401, "UNAUTHENTICATED", r);
    let forbidden = |r| refuse(403, "FORBIDDEN", r);
    let rows = vec![
        (
            "no credential",
            get("/api/v1/x"),
            unauth("missing_credential"),
        ),
        (
            "basic scheme",
            get("/api/v1/x").h("authorization", "Basic dTpw"),
            unauth("unsupported_scheme"),
        ),
        (
            "two Authorization headers",
            get("/api/v1/x").bearer("wvz_org_a").bearer("wvz_org_a"),
            unauth("multiple_authorization_headers"),
        ),
        (
            "unknown token type",
            get("/api/v1/x").bearer("xyz"),
            unauth("unknown_token_type"),
        ),
        (
            "unknown API key",
            get("/api/v1/x").bearer("wvz_nope"),
            unauth("unknown"),
        ),
        (
            "revoked API key",
            get("/api/v1/x").bearer("wvz_revoked"),
            unauth("revoked"),
        ),
        (
            "expired API key",
            get("/api/v1/x").bearer("wvz_expired"),
            unauth("expired"),
        ),
        (
            "API key expiring later",
            get("/api/v1/x").bearer("wvz_later"),
            fwd(&[
                ("x-org-id", "org_a"),
                ("x-auth-method", "api_key"),
                ("x-api-key-id", "key_l"),
            ]),
        ),
        (
            "valid org-wide key",
            get("/api/v1/x").bearer("wvz_org_a"),
            fwd(ORG_KEY),
        ),
        (
            "scope org is org-wide",
            get("/api/v1/x").bearer("wvz_orgscope"),
            fwd(&[
                ("x-org-id", "org_a"),
                ("x-auth-method", "api_key"),
                ("x-api-key-id", "key_o"),
            ]),
        ),
        (
            "key of a disabled organization",
            get("/api/v1/x").bearer("wvz_off"),
            forbidden("organization_disabled"),
        ),
        (
            "key of a missing organization",
            get("/api/v1/x").bearer("wvz_ghost"),
            forbidden("organization_missing"),
        ),
        (
            "malformed permissions",
            get("/api/v1/x").bearer("wvz_malformed"),
            forbidden("malformed_permissions"),
        ),
        (
            "empty workspace list",
            get("/api/v1/list").bearer("wvz_empty"),
            forbidden("malformed_permissions"),
        ),
        (
            "a bad Authorization is not rescued by a service key",
            get("/api/v1/x")
                .bearer("wvz_nope")
                .h("x-service-key", "svc_ok"),
            unauth("unknown"),
        ),
        (
            "service key without X-Org-ID",
            get("/api/v1/x").h("x-service-key", "svc_ok"),
            fwd(&[("x-auth-method", "service_key")]),
        ),
        (
            "service key acting for an organization",
            get("/api/v1/x")
                .h("x-service-key", "svc_ok")
                .h("x-org-id", "org_a"),
            fwd(&[("x-org-id", "org_a"), ("x-auth-method", "service_key")]),
        ),
        (
            "service key for an unknown organization",
            get("/api/v1/x")
                .h("x-service-key", "svc_ok")
                .h("x-org-id", "org_nope"),
            forbidden("unknown_organization"),
        ),
        (
            "service key for a disabled organization",
            get("/api/v1/x")
                .h("x-service-key", "svc_ok")
                .h("x-org-id", "org_off"),
            forbidden("organization_disabled"),
        ),
        (
            "service key with two X-Org-ID",
            get("/api/v1/x")
                .h("x-service-key", "svc_ok")
                .h("x-org-id", "org_a")
                .h("x-org-id", "org_b"),
            forbidden("ambiguous_organization"),
        ),
        (
            "revoked service key",
            get("/api/v1/x").h("x-service-key", "svc_revoked"),
            unauth("revoked"),
        ),
        (
            "unknown service key",
            get("/api/v1/x").h("x-service-key", "svc_nope"),
            unauth("unknown"),
        ),
        (
            "session",
            get("/api/v1/x").h("cookie", cookie("sess_a")),
            fwd(&[
                ("x-org-id", "org_a"),
                ("x-auth-method", "session"),
                ("x-user-id", "user_a"),
            ]),
        ),
        (
            "expired session",
            get("/api/v1/x").h("cookie", cookie("sess_old")),
            unauth("expired"),
        ),
        (
            "unknown session",
            get("/api/v1/x").h("cookie", cookie("sess_nope")),
            unauth("unknown"),
        ),
        (
            "session cookie with a bad signature",
            get("/api/v1/x").h("cookie", "better-auth.session_token=sess_a.c2ln"),
            unauth("bad_session_signature"),
        ),
        (
            "session cookie under two names with two values",
            get("/api/v1/x").h(
                "cookie",
                format!("{}; __Secure-{}", cookie("sess_a"), cookie("sess_noorg")),
            ),
            unauth("ambiguous_session_cookie"),
        ),
        (
            "session without an active organization",
            get("/api/v1/x").h("cookie", cookie("sess_noorg")),
            forbidden("no_active_organization"),
        ),
        (
            "session without an organization on an org_optional route",
            get("/api/v1/orgs/new").h("cookie", cookie("sess_noorg")),
            fwd(&[("x-auth-method", "session"), ("x-user-id", "user_n")]),
        ),
        (
            "session of a disabled organization",
            get("/api/v1/x").h("cookie", cookie("sess_off")),
            forbidden("organization_disabled"),
        ),
        (
            "MCP token outside an MCP route",
            get("/api/v1/x").bearer("mcp_static"),
            unauth("mcp_token_outside_mcp_route"),
        ),
        (
            "API key on an MCP route",
            get("/mcp/srv_bearer/sse").bearer("wvz_org_a"),
            unauth("api_key_on_mcp_route"),
        ),
        (
            "service key on an MCP route",
            get("/mcp/srv_bearer/sse").h("x-service-key", "svc_ok"),
            unauth("service_key_on_mcp_route"),
        ),
        (
            "session on an MCP route",
            get("/mcp/srv_bearer/sse").h("cookie", cookie("sess_a")),
            unauth("session_on_mcp_route"),
        ),
        (
            "static token on its bearer server",
            get("/mcp/srv_bearer/sse").bearer("mcp_static"),
            fwd(&[
                ("x-org-id", "org_a"),
                ("x-auth-method", "mcp_bearer"),
                ("x-mcp-server-id", "srv_bearer"),
                ("x-workspace-id", "ws_a1"),
            ]),
        ),
        (
            "end-user token on an oauth_and_bearer server",
            get("/mcp/srv_both/sse").bearer("mcp_user"),
            fwd(&[
                ("x-org-id", "org_b"),
                ("x-auth-method", "mcp_bearer"),
                ("x-mcp-server-id", "srv_both"),
                ("x-workspace-id", "ws_b"),
                ("x-end-user-id", "eu_1"),
            ]),
        ),
        (
            "oauth token on its oauth server",
            get("/mcp/srv_oauth/sse").bearer("mcpo_oauth"),
            fwd(&[
                ("x-org-id", "org_a"),
                ("x-auth-method", "mcp_oauth"),
                ("x-mcp-server-id", "srv_oauth"),
                ("x-workspace-id", "ws_a2"),
            ]),
        ),
        (
            "valid token for another server",
            get("/mcp/srv_both/sse").bearer("mcp_static"),
            forbidden("wrong_mcp_server"),
        ),
        (
            "mcpo_ prefix on a static token",
            get("/mcp/srv_bearer/sse").bearer("mcpo_notoauth"),
            unauth("token_kind_mismatch"),
        ),
        (
            "mcp_ prefix on an oauth token",
            get("/mcp/srv_oauth/sse").bearer("mcp_isoauth"),
            unauth("token_kind_mismatch"),
        ),
        (
            "static token on an oauth-only server",
            get("/mcp/srv_oauth/sse").bearer("mcp_onoauth"),
            unauth("auth_mode_not_allowed"),
        ),
        (
            "server with an unknown auth_mode",
            get("/mcp/srv_odd/sse").bearer("mcp_odd"),
            unauth("auth_mode_not_allowed"),
        ),
        (
            "token of an unknown kind",
            get("/mcp/srv_bearer/sse").bearer("mcp_weird"),
            unauth("unknown_token_kind"),
        ),
        (
            "revoked MCP token",
            get("/mcp/srv_bearer/sse").bearer("mcp_revoked"),
            unauth("revoked"),
        ),
        (
            "MCP request from an Origin not allowed",
            get("/mcp/srv_bearer/sse")
                .bearer("mcp_static")
                .h("origin", "http://evil.example"),
            forbidden("origin_not_allowed"),
        ),
        (
            "MCP server id that is not an id",
            get("/mcp/srv%20x/sse").bearer("mcp_static"),
            refuse(400, "BAD_REQUEST", "malformed_id"),
        ),
        ("auth = none route", get("/api/auth/sign-in"), fwd(&[])),
    ];
    check(&w, rows);
}

#[test]
fn origins_spec_3_1_and_3_3() {
    let w = World::from_text(&CONFIG.replace(
        "[session]\n",
        "[mcp]\nallowed_origins = [\"https://app.example\"]\n[session]\ntrusted_origins = [\"https://app.example\"]\n",
    ));
    let session = fwd(&[
        ("x-org-id", "org_a"),
        ("x-auth-method", "session"),
        ("x-user-id", "user_a"),
    ]);
    let rows = vec![
        (
            "MCP request from an allowed Origin",
            get("/mcp/srv_bearer/sse")
                .bearer("mcp_static")
                .h("origin", "https://app.example"),
            fwd(&[
                ("x-org-id", "org_a"),
                ("x-auth-method", "mcp_bearer"),
                ("x-mcp-server-id", "srv_bearer"),
                ("x-workspace-id", "ws_a1"),
            ]),
        ),
        (
            "MCP Origin compared exactly",
            get("/mcp/srv_bearer/sse")
                .bearer("mcp_static")
                .h("origin", "https://APP.example"),
            refuse(403, "FORBIDDEN", "origin_not_allowed"),
        ),
        (
            "cookie write from a trusted Origin",
            post("/api/v1/x", "")
                .h("cookie", cookie("sess_a"))
                .h("origin", "https://app.example"),
            session.clone(),
        ),
        (
            "cookie write from another Origin",
            post("/api/v1/x", "")
                .h("cookie", cookie("sess_a"))
                .h("origin", "https://evil.example"),
            refuse(403, "FORBIDDEN", "origin_not_trusted"),
        ),
        (
            "cookie write without an Origin",
            post("/api/v1/x", "").h("cookie", cookie("sess_a")),
            refuse(403, "FORBIDDEN", "origin_not_trusted"),
        ),
        (
            "cookie read without an Origin",
            get("/api/v1/x").h("cookie", cookie("sess_a")),
            session,
        ),
    ];
    check(&w, rows);
}

#[test]
fn workspaces_spec_5() {
    let w = World::new("");
    let scope = |r| refuse(403, "SCOPE_DENIED", r);
    let bad = |r| refuse(400, "BAD_REQUEST", r);
    let scoped_in = |ws: &str| {
        let mut v = vec![
            ("x-org-id", "org_a".to_string()),
            ("x-auth-method", "api_key".to_string()),
            ("x-api-key-id", "key_s".to_string()),
            ("x-allowed-workspaces", "ws_a1".to_string()),
            ("x-workspace-id", ws.to_string()),
        ];
        v.sort();
        Got::Forward(v)
    };
    let org_in = |ws: &str| {
        let mut v: Vec<(&'static str, String)> =
            ORG_KEY.iter().map(|(k, v)| (*k, v.to_string())).collect();
        v.push(("x-workspace-id", ws.to_string()));
        v.sort();
        Got::Forward(v)
    };
    let rows = vec![
        (
            "scoped key in its workspace (path)",
            get("/api/v1/workspaces/ws_a1/c").bearer("wvz_scoped"),
            scoped_in("ws_a1"),
        ),
        (
            "scoped key in another workspace of its org",
            get("/api/v1/workspaces/ws_a2/c").bearer("wvz_scoped"),
            scope("workspace_not_in_scope"),
        ),
        (
            "org-wide key in any workspace of its org",
            get("/api/v1/workspaces/ws_a2/c").bearer("wvz_org_a"),
            org_in("ws_a2"),
        ),
        (
            "workspace of another organization",
            get("/api/v1/workspaces/ws_b/c").bearer("wvz_org_a"),
            scope("workspace_of_another_organization"),
        ),
        (
            "workspace not in the snapshot",
            get("/api/v1/workspaces/ws_nope/c").bearer("wvz_org_a"),
            scope("unknown_workspace"),
        ),
        (
            "case variant of another org's workspace",
            get("/api/v1/workspaces/WS_B/c").bearer("wvz_org_a"),
            scope("unknown_workspace"),
        ),
        (
            "session in a workspace of its org",
            get("/api/v1/workspaces/ws_a1/c").h("cookie", cookie("sess_a")),
            {
                let mut v = vec![
                    ("x-org-id", "org_a".to_string()),
                    ("x-auth-method", "session".to_string()),
                    ("x-user-id", "user_a".to_string()),
                    ("x-workspace-id", "ws_a1".to_string()),
                ];
                v.sort();
                Got::Forward(v)
            },
        ),
        (
            "session in another org's workspace",
            get("/api/v1/workspaces/ws_b/c").h("cookie", cookie("sess_a")),
            scope("workspace_of_another_organization"),
        ),
        (
            "service keys are admin level",
            get("/api/v1/workspaces/ws_b/c").h("x-service-key", "svc_ok"),
            fwd(&[("x-auth-method", "service_key")]),
        ),
        (
            "query source",
            get("/api/v1/triggers?workspaceId=ws_a1").bearer("wvz_scoped"),
            scoped_in("ws_a1"),
        ),
        (
            "query source repeated",
            get("/api/v1/triggers?workspaceId=ws_a1&workspaceId=ws_a1").bearer("wvz_scoped"),
            bad("ambiguous_workspace"),
        ),
        (
            "query source bracketed",
            get("/api/v1/triggers?workspaceId[]=ws_a1").bearer("wvz_scoped"),
            bad("ambiguous_workspace"),
        ),
        (
            "query source in another case",
            get("/api/v1/triggers?WorkspaceId=ws_a1").bearer("wvz_scoped"),
            bad("ambiguous_workspace"),
        ),
        (
            "query source absent: scoped key",
            get("/api/v1/triggers").bearer("wvz_scoped"),
            scope("no_workspace_resolved"),
        ),
        (
            "query source absent: org-wide key",
            get("/api/v1/triggers").bearer("wvz_org_a"),
            fwd(ORG_KEY),
        ),
        (
            "query beside a path source, same workspace",
            get("/api/v1/workspaces/ws_a1/c?workspaceId=ws_a1").bearer("wvz_scoped"),
            scoped_in("ws_a1"),
        ),
        (
            "query beside a path source, another workspace",
            get("/api/v1/workspaces/ws_a1/c?workspaceId=ws_b").bearer("wvz_scoped"),
            bad("conflicting_workspace"),
        ),
        (
            "bracketed query beside a path source",
            get("/api/v1/workspaces/ws_a1/c?workspaceId[]=ws_b").bearer("wvz_scoped"),
            bad("conflicting_workspace"),
        ),
        (
            "header source",
            get("/api/v1/by-header")
                .bearer("wvz_scoped")
                .h("x-target-workspace", "ws_a1"),
            scoped_in("ws_a1"),
        ),
        (
            "header source twice",
            get("/api/v1/by-header")
                .bearer("wvz_scoped")
                .h("x-target-workspace", "ws_a1")
                .h("x-target-workspace", "ws_a1"),
            bad("ambiguous_workspace"),
        ),
        (
            "header source in an underscore spelling",
            get("/api/v1/by-header")
                .bearer("wvz_scoped")
                .h("x_target_workspace", "ws_b"),
            bad("ambiguous_workspace"),
        ),
        (
            "header id with a space",
            get("/api/v1/by-header")
                .bearer("wvz_scoped")
                .h("x-target-workspace", "ws a1"),
            bad("malformed_id"),
        ),
        (
            "body source",
            post("/api/v1/connections", r#"{"workspaceId":"ws_a1"}"#).bearer("wvz_scoped"),
            scoped_in("ws_a1"),
        ),
        (
            "body source outside the scope",
            post("/api/v1/connections", r#"{"workspaceId":"ws_a2"}"#).bearer("wvz_scoped"),
            scope("workspace_not_in_scope"),
        ),
        (
            "body that is not JSON",
            post("/api/v1/connections", "{nope").bearer("wvz_scoped"),
            bad("body_not_json"),
        ),
        (
            "body field twice",
            post(
                "/api/v1/connections",
                r#"{"workspaceId":"ws_a1","workspaceId":"ws_b"}"#,
            )
            .bearer("wvz_scoped"),
            bad("ambiguous_workspace"),
        ),
        (
            "body field not a string",
            post("/api/v1/connections", r#"{"workspaceId":5}"#).bearer("wvz_scoped"),
            bad("workspace_not_a_string"),
        ),
        (
            "empty body: scoped key finds nothing",
            post("/api/v1/connections", "").bearer("wvz_scoped"),
            scope("no_workspace_resolved"),
        ),
        (
            "form body",
            post("/api/v1/connections", r#"{"workspaceId":"ws_a1"}"#)
                .bearer("wvz_scoped")
                .h("content-type", "application/x-www-form-urlencoded"),
            refuse(415, "UNSUPPORTED_MEDIA_TYPE", "unsupported_media_type"),
        ),
        (
            "encoded body",
            post("/api/v1/connections", r#"{"workspaceId":"ws_a1"}"#)
                .bearer("wvz_scoped")
                .h("content-encoding", "br"),
            refuse(415, "UNSUPPORTED_MEDIA_TYPE", "encoded_body"),
        ),
        (
            "service keys' bodies are not inspected",
            post("/api/v1/connections", "{nope").h("x-service-key", "svc_ok"),
            fwd(&[("x-auth-method", "service_key")]),
        ),
        (
            "resource in the scope (path)",
            get("/api/v1/connections/conn_a1/x").bearer("wvz_scoped"),
            scoped_in("ws_a1"),
        ),
        (
            "resource of another organization",
            get("/api/v1/connections/conn_b/x").bearer("wvz_scoped"),
            scope("workspace_of_another_organization"),
        ),
        (
            "unknown resource: scoped key",
            get("/api/v1/connections/conn_nope/x").bearer("wvz_scoped"),
            scope("unknown_resource"),
        ),
        (
            "unknown resource: org-wide key",
            get("/api/v1/connections/conn_nope/x").bearer("wvz_org_a"),
            fwd(ORG_KEY),
        ),
        (
            "resource in an unknown workspace",
            get("/api/v1/connections/conn_ghost/x").bearer("wvz_org_a"),
            scope("unknown_workspace"),
        ),
        (
            "resource from the body",
            post(
                "/api/v1/triggers/disable",
                r#"{"triggerSourceId":"conn_a1"}"#,
            )
            .bearer("wvz_scoped"),
            scoped_in("ws_a1"),
        ),
        (
            "org_wide_only route: scoped key",
            get("/api/v1/api-keys").bearer("wvz_scoped"),
            refuse(403, "FORBIDDEN", "org_wide_only"),
        ),
        (
            "org_wide_only route: org-wide key",
            get("/api/v1/api-keys/k").bearer("wvz_org_a"),
            fwd(ORG_KEY),
        ),
        (
            "quota route over quota",
            post("/api/v1/actions/execute", r#"{"workspaceId":"ws_q"}"#).bearer("wvz_quota"),
            refuse(403, "QUOTA_EXCEEDED", ""),
        ),
        (
            "non-quota route over quota",
            get("/api/v1/workspaces/ws_q/c").bearer("wvz_quota"),
            fwd(&[
                ("x-org-id", "org_quota"),
                ("x-auth-method", "api_key"),
                ("x-api-key-id", "key_q"),
                ("x-workspace-id", "ws_q"),
            ]),
        ),
        (
            "scoped key on a route without a rule",
            get("/api/v1/other").bearer("wvz_scoped"),
            scope("no_workspace_resolved"),
        ),
        (
            "scoped key on a filter route",
            get("/api/v1/list").bearer("wvz_scoped"),
            fwd(&[
                ("x-org-id", "org_a"),
                ("x-auth-method", "api_key"),
                ("x-api-key-id", "key_s"),
                ("x-allowed-workspaces", "ws_a1"),
            ]),
        ),
        (
            "MCP tokens act in their server's workspace",
            get("/mcp/srv_bearer/w/ws_b").bearer("mcp_static"),
            fwd(&[
                ("x-org-id", "org_a"),
                ("x-auth-method", "mcp_bearer"),
                ("x-mcp-server-id", "srv_bearer"),
                ("x-workspace-id", "ws_a1"),
            ]),
        ),
        (
            "id with a control character",
            get("/api/v1/workspaces/kw%0Aprobe/c").bearer("wvz_org_a"),
            bad("malformed_id"),
        ),
        (
            "HEAD matches a GET-only route like GET",
            Req {
                method: "HEAD",
                ..get("/api/v1/workspaces/ws_a2/c").bearer("wvz_scoped")
            },
            scope("workspace_not_in_scope"),
        ),
        (
            "a POST-only route does not match GET",
            get("/api/v1/connections").bearer("wvz_scoped"),
            scope("no_workspace_resolved"),
        ),
        (
            "literals match in any case",
            get("/API/V1/Workspaces/ws_a2/c").bearer("wvz_scoped"),
            scope("workspace_not_in_scope"),
        ),
    ];
    check(&w, rows);
}

#[test]
fn unknown_workspaces_pass_lets_the_upstream_judge() {
    let w = World::new("[scopes]\nunknown_workspaces = \"pass\"\n");
    let mut org = ORG_KEY.to_vec();
    org.push(("x-workspace-id", "ws_nope"));
    check(
        &w,
        vec![
            (
                "org-wide key",
                get("/api/v1/workspaces/ws_nope/c").bearer("wvz_org_a"),
                fwd(&org),
            ),
            (
                "scoped key judged by its list",
                get("/api/v1/workspaces/ws_nope/c").bearer("wvz_scoped"),
                refuse(403, "SCOPE_DENIED", "workspace_not_in_scope"),
            ),
        ],
    );
}

#[test]
fn no_snapshot_is_auth_unavailable() {
    let mut w = World::new("");
    w.dir.unloaded = true;
    let (got, _) = w.run(&get("/api/v1/x").bearer("wvz_org_a"));
    assert_eq!(got, refuse(503, "AUTH_UNAVAILABLE", ""));
    let (got, _) = w.run(&get("/api/auth/sign-in"));
    assert_eq!(got, fwd(&[]), "auth = none routes need no snapshot");
}

#[test]
fn inspected_body_past_the_cap_is_payload_too_large() {
    let w = World::new("[server]\nmax_body_inspect_bytes = 16\n");
    let (got, rate) = w.run(
        &post(
            "/api/v1/connections",
            r#"{"workspaceId":"ws_a1","pad":"xxxxxxxx"}"#,
        )
        .bearer("wvz_scoped"),
    );
    assert_eq!(got, refuse(413, "PAYLOAD_TOO_LARGE", ""));
    assert!(
        rate.is_some(),
        "a refusal for a limited organization carries its rate state"
    );
}

#[test]
fn exactly_the_plan_limit_is_admitted_spec_6() {
    let w = World::new("");
    let req = get("/api/v1/x").bearer("wvz_tiny");
    let (first, r1) = w.run(&req);
    assert!(matches!(first, Got::Forward(_)));
    assert_eq!(r1.unwrap().remaining, 1);
    let (second, r2) = w.run(&req);
    assert!(matches!(second, Got::Forward(_)));
    assert_eq!(r2.unwrap().remaining, 0);
    let (third, r3) = w.run(&req);
    assert_eq!(third, refuse(429, "RATE_LIMIT_EXCEEDED", ""));
    let r3 = r3.unwrap();
    assert_eq!((r3.limit, r3.remaining), (2, 0));
    assert_eq!(
        r3.reset % 60,
        0,
        "windows are aligned to multiples of window_s"
    );
}

#[test]
fn denied_requests_do_not_use_up_the_window_spec_6() {
    let w = World::new("");
    // two refusals (another org's workspace) then both admissions still there
    for _ in 0..2 {
        let (got, rate) = w.run(&get("/api/v1/workspaces/ws_b/c").bearer("wvz_tiny"));
        assert_eq!(
            got,
            refuse(403, "SCOPE_DENIED", "workspace_of_another_organization")
        );
        assert_eq!(
            rate.unwrap().limit,
            2,
            "denials carry the organization's headers"
        );
    }
    let (got, rate) = w.run(&get("/api/v1/x").bearer("wvz_tiny"));
    assert!(matches!(got, Got::Forward(_)));
    assert_eq!(rate.unwrap().remaining, 1, "the refusals were not counted");
}

#[test]
fn organization_override_plan_fallback_and_unlimited_callers_spec_6() {
    let w = World::new("");
    let req = get("/api/v1/x").bearer("wvz_override");
    assert!(matches!(w.run(&req).0, Got::Forward(_)));
    assert_eq!(
        w.run(&req).0,
        refuse(429, "RATE_LIMIT_EXCEEDED", ""),
        "organizations.rate_limit overrides the plan"
    );
    // a plan with no table and no [plans.default]: not limited, no headers
    let (got, rate) = w.run(&get("/api/v1/x").bearer("wvz_noplan"));
    assert!(matches!(got, Got::Forward(_)) && rate.is_none());
    // service keys are not limited by default, with or without an organization
    for _ in 0..5 {
        let (got, rate) = w.run(
            &get("/api/v1/x")
                .h("x-service-key", "svc_ok")
                .h("x-org-id", "org_tiny"),
        );
        assert!(matches!(got, Got::Forward(_)) && rate.is_none());
    }
    // requests without an organization carry no headers
    let (_, rate) = w.run(&get("/api/v1/x"));
    assert!(rate.is_none());
    let w = World::new("[plans.default]\nrequests_per_window = 1\n");
    let req = get("/api/v1/x").bearer("wvz_noplan");
    assert!(matches!(w.run(&req).0, Got::Forward(_)));
    assert_eq!(
        w.run(&req).0,
        refuse(429, "RATE_LIMIT_EXCEEDED", ""),
        "[plans.default] applies"
    );
}

#[test]
fn failed_authentications_are_throttled_per_ip_spec_6() {
    let w = World::new("[rate_limit]\nauth_failures_per_ip = 3\n");
    // a valid key first: known valid keys keep working past the limit
    assert!(matches!(
        w.run(&get("/api/v1/x").bearer("wvz_org_a")).0,
        Got::Forward(_)
    ));
    for _ in 0..10 {
        assert_eq!(
            w.run(&get("/api/v1/x")).0,
            refuse(401, "UNAUTHENTICATED", "missing_credential"),
            "requests without a credential are never counted"
        );
    }
    for _ in 0..3 {
        assert_eq!(
            w.run(&get("/api/v1/x").bearer("wvz_nope")).0,
            refuse(401, "UNAUTHENTICATED", "unknown")
        );
    }
    let loads = w.dir.token_loads.get();
    assert_eq!(
        w.run(&get("/api/v1/x").bearer("wvz_other")).0,
        refuse(429, "RATE_LIMIT_EXCEEDED", "")
    );
    assert_eq!(
        w.dir.token_loads.get(),
        loads,
        "a throttled IP does not reach the store"
    );
    assert_eq!(
        w.run(&get("/api/v1/x")).0,
        refuse(401, "UNAUTHENTICATED", "missing_credential")
    );
}

#[test]
fn mcp_challenges_spec_3_1() {
    let w = World::new("");
    let challenge = |req: Req<'_>| {
        let mut headers = HeaderMap::new();
        for (k, v) in &req.headers {
            headers.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        headers.insert(http::header::HOST, HeaderValue::from_static("kw.test"));
        let method = Method::GET;
        let facts = RequestFacts {
            method: &method,
            path: req.target,
            query: None,
            headers: &headers,
            client: crate::request::forwarding::Client::resolve(
                "192.0.2.1".parse().unwrap(),
                false,
                &headers,
                &[],
            ),
        };
        let env = Env {
            policy: &w.policy,
            directory: &w.dir,
            limiter: &w.limiter,
            throttle: &w.throttle,
            now: NOW,
            trace: None,
        };
        match decide(&facts, &env) {
            Decision::Refuse(r) => r.denial.headers(),
            _ => panic!("not refused"),
        }
    };
    let www = |h: Option<(http::HeaderName, String)>| match h {
        Some((k, v)) if k == http::header::WWW_AUTHENTICATE => v,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        www(challenge(get("/mcp/srv_oauth/sse").bearer("mcp_nope"))),
        "Bearer resource_metadata=\"http://kw.test/.well-known/oauth-protected-resource/mcp/srv_oauth\", error=\"invalid_token\""
    );
    assert_eq!(
        www(challenge(get("/mcp/srv_oauth/sse"))),
        "Bearer resource_metadata=\"http://kw.test/.well-known/oauth-protected-resource/mcp/srv_oauth\""
    );
    assert_eq!(
        www(challenge(get("/mcp/srv_bearer/sse").bearer("mcp_nope"))),
        "Bearer error=\"invalid_token\""
    );
    assert_eq!(www(challenge(get("/mcp/srv_bearer/sse"))), "Bearer");
}
