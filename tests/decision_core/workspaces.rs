//! Workspaces, unknown workspaces, no snapshot, inspected bodies (SPEC §5, §5.1).

use super::*;

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
