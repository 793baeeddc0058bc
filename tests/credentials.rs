//! Sessions, service keys and MCP tokens (SPEC §3.2–3.4) against the real binary.
mod common;
use common::*;

fn setup() -> (Snap, Keyward) {
    let snap = Snap::new();
    snap.org("org_a", "free")
        .org("org_b", "free")
        .workspace("ws_a", "org_a")
        .workspace("ws_b", "org_b");
    snap.mcp_server("srv_bearer", "org_a", "ws_a", "bearer")
        .mcp_server("srv_oauth", "org_a", "ws_a", "oauth")
        .mcp_server("srv_both", "org_a", "ws_a", "oauth_and_bearer");
    let mut opts = Opts::new(echo());
    opts.extra = "[session]\ntrusted_origins = [\"https://app.weavz.test\"]\n".into();
    let kw = Keyward::start(&snap, opts);
    (snap, kw)
}

fn cookie(v: &str) -> String {
    format!("better-auth.session_token={v}")
}

#[test]
fn valid_session_cookie_is_forwarded_as_session() {
    let (snap, kw) = setup();
    let c = snap.session("user_1", Some("org_a"), now() + 3600);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let r = kw.request(
        "GET",
        "/api/v1/x",
        &[("Cookie", &format!("theme=dark; {}", cookie(&c)))],
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.upstream_header("x-auth-method"), vec!["session"]);
    assert_eq!(r.upstream_header("x-user-id"), vec!["user_1"]);
    assert_eq!(r.upstream_header("x-org-id"), vec!["org_a"]);
    // the __Secure- name is accepted
    let r = kw.request(
        "GET",
        "/api/v1/x",
        &[("Cookie", &format!("__Secure-better-auth.session_token={c}"))],
        "",
    );
    assert_eq!(r.status, 200);
    // under both names with different values: the upstream might read the
    // other one (SPEC §5.1)
    let r = kw.request(
        "GET",
        "/api/v1/x",
        &[(
            "Cookie",
            &format!("__Secure-better-auth.session_token={c}; better-auth.session_token=junk.sig"),
        )],
        "",
    );
    r.assert_error(401, "UNAUTHENTICATED");
    assert_eq!(r.json()["details"]["reason"], "ambiguous_session_cookie");
}

#[test]
fn bad_signatures_expired_sessions_and_missing_org() {
    let (snap, kw) = setup();
    let good = snap.session("user_1", Some("org_a"), now() + 3600);
    let expired = snap.session("user_2", Some("org_a"), now() - 1);
    let no_org = snap.session("user_3", None, now() + 3600);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let tampered = good.replacen('s', "t", 1);
    kw.request("GET", "/api/v1/x", &[("Cookie", &cookie(&tampered))], "")
        .assert_error(401, "UNAUTHENTICATED");
    let r = kw.request("GET", "/api/v1/x", &[("Cookie", &cookie(&expired))], "");
    r.assert_error(401, "UNAUTHENTICATED");
    assert_eq!(r.json()["details"]["reason"], "expired");
    kw.request("GET", "/api/v1/x", &[("Cookie", &cookie(&no_org))], "")
        .assert_error(403, "FORBIDDEN");
    let r = kw.request(
        "GET",
        "/api/v1/orgs/list",
        &[("Cookie", &cookie(&no_org))],
        "",
    );
    assert_eq!(r.status, 200);
    assert!(r.upstream_header("x-org-id").is_empty());
    assert_eq!(r.upstream_header("x-user-id"), vec!["user_3"]);
}

#[test]
fn unsafe_methods_need_a_trusted_origin() {
    let (snap, kw) = setup();
    let c = snap.session("user_1", Some("org_a"), now() + 3600);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let ck = cookie(&c);
    kw.request("POST", "/api/v1/x", &[("Cookie", &ck)], "{}")
        .assert_error(403, "FORBIDDEN");
    kw.request(
        "DELETE",
        "/api/v1/x",
        &[("Cookie", &ck), ("Origin", "https://evil.test")],
        "",
    )
    .assert_error(403, "FORBIDDEN");
    assert_eq!(
        kw.request(
            "POST",
            "/api/v1/x",
            &[("Cookie", &ck), ("Origin", "https://app.weavz.test")],
            "{}"
        )
        .status,
        200
    );
    assert_eq!(
        kw.request("GET", "/api/v1/x", &[("Cookie", &ck)], "")
            .status,
        200
    );
}

#[test]
fn sessions_without_a_secret_are_401_sessions_disabled() {
    let snap = Snap::new();
    snap.org("org_a", "free");
    let c = snap.session("user_1", Some("org_a"), now() + 3600);
    let mut opts = Opts::new(echo());
    opts.env.clear();
    let kw = Keyward::start(&snap, opts);
    let r = kw.request("GET", "/api/v1/x", &[("Cookie", &cookie(&c))], "");
    r.assert_error(401, "UNAUTHENTICATED");
    assert_eq!(r.json()["details"]["reason"], "sessions_disabled");
    assert!(kw.log().contains("no BetterAuth secret"));
}

#[test]
fn service_keys_act_for_the_named_org_and_are_never_forwarded() {
    let (snap, kw) = setup();
    let sk = snap.service_key(false);
    let revoked = snap.service_key(true);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let r = kw.request(
        "GET",
        "/api/v1/workspaces/ws_b/x",
        &[("X-Service-Key", &sk), ("X-Org-ID", "org_a")],
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.upstream_header("x-auth-method"), vec!["service_key"]);
    assert_eq!(r.upstream_header("x-org-id"), vec!["org_a"]);
    assert!(r.upstream_header("x-service-key").is_empty());
    assert!(
        r.header("x-ratelimit-limit").is_none(),
        "service keys are not limited by default"
    );
    let r = kw.request("GET", "/api/v1/x", &[("X-Service-Key", &sk)], "");
    assert_eq!(r.status, 200);
    assert!(r.upstream_header("x-org-id").is_empty());
    kw.request(
        "GET",
        "/api/v1/x",
        &[("X-Service-Key", &sk), ("X-Org-ID", "org_nope")],
        "",
    )
    .assert_error(403, "FORBIDDEN");
    kw.request("GET", "/api/v1/x", &[("X-Service-Key", &revoked)], "")
        .assert_error(401, "UNAUTHENTICATED");
    kw.request("GET", "/api/v1/x", &[("X-Service-Key", "nope")], "")
        .assert_error(401, "UNAUTHENTICATED");
}

#[test]
fn precedence_authorization_first_and_never_rescued() {
    let (snap, kw) = setup();
    let sk = snap.service_key(false);
    std::thread::sleep(std::time::Duration::from_millis(300));
    kw.request(
        "GET",
        "/api/v1/x",
        &[("Authorization", "Bearer wvz_bad"), ("X-Service-Key", &sk)],
        "",
    )
    .assert_error(401, "UNAUTHENTICATED");
    let key = snap.api_key("org_a");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let auth = format!("Bearer {key}");
    kw.request(
        "GET",
        "/api/v1/x",
        &[("Authorization", &auth), ("Authorization", &auth)],
        "",
    )
    .assert_error(401, "UNAUTHENTICATED");
}

#[test]
fn mcp_tokens_follow_auth_mode_and_server() {
    let (snap, kw) = setup();
    let static_tok = snap.mcp_token("srv_bearer", "static", None);
    let end_user = snap.mcp_token("srv_both", "end_user", Some("eu_1"));
    let oauth = snap.mcp_token("srv_oauth", "oauth", Some("eu_2"));
    let oauth_on_bearer = snap.mcp_token("srv_bearer", "oauth", None);
    let static_on_oauth = snap.mcp_token("srv_oauth", "static", None);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let r = kw.get("/mcp/srv_bearer/sse", Some(&static_tok));
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.upstream_header("x-auth-method"), vec!["mcp_bearer"]);
    assert_eq!(r.upstream_header("x-mcp-server-id"), vec!["srv_bearer"]);
    assert_eq!(r.upstream_header("x-workspace-id"), vec!["ws_a"]);
    assert_eq!(r.upstream_header("x-org-id"), vec!["org_a"]);
    let r = kw.get("/mcp/srv_both/messages", Some(&end_user));
    assert_eq!(r.upstream_header("x-end-user-id"), vec!["eu_1"]);
    let r = kw.get("/mcp/srv_oauth/messages", Some(&oauth));
    assert_eq!(r.upstream_header("x-auth-method"), vec!["mcp_oauth"]);
    kw.get("/mcp/srv_bearer/x", Some(&oauth_on_bearer))
        .assert_error(401, "UNAUTHENTICATED");
    kw.get("/mcp/srv_oauth/x", Some(&static_on_oauth))
        .assert_error(401, "UNAUTHENTICATED");
    kw.get("/mcp/srv_both/x", Some(&static_tok))
        .assert_error(403, "FORBIDDEN");
    kw.get("/api/v1/x", Some(&static_tok))
        .assert_error(401, "UNAUTHENTICATED");
    let key = snap.api_key("org_a");
    std::thread::sleep(std::time::Duration::from_millis(300));
    kw.get("/mcp/srv_bearer/x", Some(&key))
        .assert_error(401, "UNAUTHENTICATED");
}

#[test]
fn mcp_401_on_oauth_servers_points_at_resource_metadata() {
    let (_snap, kw) = setup();
    let r = kw.get("/mcp/srv_oauth/sse", None);
    r.assert_error(401, "UNAUTHENTICATED");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer resource_metadata=\"http://kw.test/.well-known/oauth-protected-resource/mcp/srv_oauth\"")
    );
    assert_eq!(
        kw.get("/mcp/srv_bearer/sse", None)
            .header("www-authenticate"),
        Some("Bearer")
    );
}
