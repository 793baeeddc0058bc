//! Credentials and origins (SPEC §3, §3.1, §3.3).

use super::*;

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
