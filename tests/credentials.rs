//! Sessions, service keys and MCP tokens (SPEC §3.2–3.4) against the real
//! binary. The world is `common::World` (`org_a` with `ws_a1`, `ws_a2`;
//! `org_b` with `ws_b`) plus three MCP servers of `org_a` in `ws_a1`.
mod common;
use common::*;

/// The world with `srv_bearer` (bearer), `srv_oauth` (oauth) and
/// `srv_both` (oauth_and_bearer); add credentials, then [`start`].
fn world() -> World {
    let w = World::new();
    w.snap
        .mcp_server("srv_bearer", "org_a", "ws_a1", "bearer")
        .mcp_server("srv_oauth", "org_a", "ws_a1", "oauth")
        .mcp_server("srv_both", "org_a", "ws_a1", "oauth_and_bearer");
    w
}

/// keyward in front of the echo upstream, trusting one origin for sessions.
fn start(w: &World) -> Keyward {
    w.start_with(Opts::new(echo()).set("session.trusted_origins", vec!["https://app.weavz.test"]))
}

fn cookie(v: &str) -> String {
    format!("better-auth.session_token={v}")
}

// ------------------------------------------------------------- sessions

#[test]
fn valid_session_cookie_is_forwarded_as_session() {
    let w = world();
    let c = w.snap.session("user_1", Some("org_a"), now() + 3600);
    let kw = start(&w);
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
}

#[test]
fn the_secure_prefixed_session_cookie_name_is_accepted() {
    let w = world();
    let c = w.snap.session("user_1", Some("org_a"), now() + 3600);
    let kw = start(&w);
    let r = kw.request(
        "GET",
        "/api/v1/x",
        &[("Cookie", &format!("__Secure-better-auth.session_token={c}"))],
        "",
    );
    assert_eq!(r.status, 200);
}

#[test]
fn session_cookie_under_both_names_with_different_values_is_ambiguous() {
    // the upstream might read the other one (SPEC §5.1)
    let w = world();
    let c = w.snap.session("user_1", Some("org_a"), now() + 3600);
    let kw = start(&w);
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
fn tampered_session_cookie_is_401() {
    let w = world();
    let good = w.snap.session("user_1", Some("org_a"), now() + 3600);
    let kw = start(&w);
    let tampered = good.replacen('s', "t", 1);
    kw.request("GET", "/api/v1/x", &[("Cookie", &cookie(&tampered))], "")
        .assert_error(401, "UNAUTHENTICATED");
}

#[test]
fn expired_session_is_401_expired() {
    let w = world();
    let expired = w.snap.session("user_2", Some("org_a"), now() - 1);
    let kw = start(&w);
    let r = kw.request("GET", "/api/v1/x", &[("Cookie", &cookie(&expired))], "");
    r.assert_error(401, "UNAUTHENTICATED");
    assert_eq!(r.json()["details"]["reason"], "expired");
}

#[test]
fn session_without_an_active_organization_is_403() {
    let w = world();
    let no_org = w.snap.session("user_3", None, now() + 3600);
    let kw = start(&w);
    kw.request("GET", "/api/v1/x", &[("Cookie", &cookie(&no_org))], "")
        .assert_error(403, "FORBIDDEN");
}

#[test]
fn session_without_an_active_organization_passes_org_optional_routes() {
    let w = world();
    let no_org = w.snap.session("user_3", None, now() + 3600);
    let kw = start(&w);
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
    let w = world();
    let c = w.snap.session("user_1", Some("org_a"), now() + 3600);
    let kw = start(&w);
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
    let w = World::new();
    let c = w.snap.session("user_1", Some("org_a"), now() + 3600);
    let mut opts = Opts::new(echo());
    opts.env.clear();
    let kw = w.start_with(opts);
    let r = kw.request("GET", "/api/v1/x", &[("Cookie", &cookie(&c))], "");
    r.assert_error(401, "UNAUTHENTICATED");
    assert_eq!(r.json()["details"]["reason"], "sessions_disabled");
    assert!(kw.log().contains("no BetterAuth secret"));
}

// --------------------------------------------------------- service keys

#[test]
fn service_key_acts_for_the_named_org_and_is_never_forwarded() {
    let w = world();
    let sk = w.snap.service_key(false);
    let kw = start(&w);
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
}

#[test]
fn service_key_without_an_org_acts_for_none() {
    let w = world();
    let sk = w.snap.service_key(false);
    let kw = start(&w);
    let r = kw.request("GET", "/api/v1/x", &[("X-Service-Key", &sk)], "");
    assert_eq!(r.status, 200);
    assert!(r.upstream_header("x-org-id").is_empty());
}

#[test]
fn service_key_naming_an_unknown_org_is_403() {
    let w = world();
    let sk = w.snap.service_key(false);
    let kw = start(&w);
    kw.request(
        "GET",
        "/api/v1/x",
        &[("X-Service-Key", &sk), ("X-Org-ID", "org_nope")],
        "",
    )
    .assert_error(403, "FORBIDDEN");
}

#[test]
fn revoked_and_unknown_service_keys_are_401() {
    let w = world();
    let revoked = w.snap.service_key(true);
    let kw = start(&w);
    kw.request("GET", "/api/v1/x", &[("X-Service-Key", &revoked)], "")
        .assert_error(401, "UNAUTHENTICATED");
    kw.request("GET", "/api/v1/x", &[("X-Service-Key", "nope")], "")
        .assert_error(401, "UNAUTHENTICATED");
}

#[test]
fn a_bad_authorization_is_not_rescued_by_a_valid_service_key() {
    let w = world();
    let sk = w.snap.service_key(false);
    let kw = start(&w);
    kw.request(
        "GET",
        "/api/v1/x",
        &[("Authorization", "Bearer wvz_bad"), ("X-Service-Key", &sk)],
        "",
    )
    .assert_error(401, "UNAUTHENTICATED");
}

#[test]
fn a_valid_key_sent_twice_is_401() {
    let w = world();
    let kw = start(&w);
    let auth = format!("Bearer {}", w.org_key);
    kw.request(
        "GET",
        "/api/v1/x",
        &[("Authorization", &auth), ("Authorization", &auth)],
        "",
    )
    .assert_error(401, "UNAUTHENTICATED");
}

// ----------------------------------------------------------- MCP tokens

#[test]
fn static_mcp_token_is_forwarded_with_its_server_workspace_and_org() {
    let w = world();
    let static_tok = w.snap.mcp_token("srv_bearer", "static", None);
    let kw = start(&w);
    let r = kw.get("/mcp/srv_bearer/sse", Some(&static_tok));
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.upstream_header("x-auth-method"), vec!["mcp_bearer"]);
    assert_eq!(r.upstream_header("x-mcp-server-id"), vec!["srv_bearer"]);
    assert_eq!(r.upstream_header("x-workspace-id"), vec!["ws_a1"]);
    assert_eq!(r.upstream_header("x-org-id"), vec!["org_a"]);
}

#[test]
fn end_user_mcp_token_is_forwarded_with_its_end_user() {
    let w = world();
    let end_user = w.snap.mcp_token("srv_both", "end_user", Some("eu_1"));
    let kw = start(&w);
    let r = kw.get("/mcp/srv_both/messages", Some(&end_user));
    assert_eq!(r.upstream_header("x-end-user-id"), vec!["eu_1"]);
}

#[test]
fn oauth_mcp_token_on_an_oauth_server_is_mcp_oauth() {
    let w = world();
    let oauth = w.snap.mcp_token("srv_oauth", "oauth", Some("eu_2"));
    let kw = start(&w);
    let r = kw.get("/mcp/srv_oauth/messages", Some(&oauth));
    assert_eq!(r.upstream_header("x-auth-method"), vec!["mcp_oauth"]);
}

#[test]
fn mcp_token_of_a_kind_the_server_does_not_accept_is_401() {
    let w = world();
    let oauth_on_bearer = w.snap.mcp_token("srv_bearer", "oauth", None);
    let static_on_oauth = w.snap.mcp_token("srv_oauth", "static", None);
    let kw = start(&w);
    kw.get("/mcp/srv_bearer/x", Some(&oauth_on_bearer))
        .assert_error(401, "UNAUTHENTICATED");
    kw.get("/mcp/srv_oauth/x", Some(&static_on_oauth))
        .assert_error(401, "UNAUTHENTICATED");
}

#[test]
fn mcp_token_of_another_server_is_403() {
    let w = world();
    let static_tok = w.snap.mcp_token("srv_bearer", "static", None);
    let kw = start(&w);
    kw.get("/mcp/srv_both/x", Some(&static_tok))
        .assert_error(403, "FORBIDDEN");
}

#[test]
fn mcp_token_outside_mcp_routes_is_401() {
    let w = world();
    let static_tok = w.snap.mcp_token("srv_bearer", "static", None);
    let kw = start(&w);
    kw.get("/api/v1/x", Some(&static_tok))
        .assert_error(401, "UNAUTHENTICATED");
}

#[test]
fn api_key_on_an_mcp_route_is_401() {
    let w = world();
    let key = w.snap.api_key("org_a");
    let kw = start(&w);
    kw.get("/mcp/srv_bearer/x", Some(&key))
        .assert_error(401, "UNAUTHENTICATED");
}

#[test]
fn mcp_401_on_oauth_servers_points_at_resource_metadata() {
    let w = world();
    let kw = start(&w);
    let r = kw.get("/mcp/srv_oauth/sse", None);
    r.assert_error(401, "UNAUTHENTICATED");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer resource_metadata=\"http://kw.test/.well-known/oauth-protected-resource/mcp/srv_oauth\"")
    );
}

#[test]
fn mcp_401_on_bearer_servers_is_a_plain_bearer_challenge() {
    let w = world();
    let kw = start(&w);
    assert_eq!(
        kw.get("/mcp/srv_bearer/sse", None)
            .header("www-authenticate"),
        Some("Bearer")
    );
}
