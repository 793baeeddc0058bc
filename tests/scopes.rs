//! Routes, workspace scopes and quotas (SPEC §5) against the real binary.
mod common;
use common::*;

fn setup() -> (Snap, Keyward, String, String) {
    let snap = Snap::new();
    snap.org("org_a", "free").org("org_b", "free");
    snap.workspace("ws_1", "org_a")
        .workspace("ws_2", "org_a")
        .workspace("ws_b", "org_b");
    snap.resource("conn_1", "ws_1")
        .resource("conn_2", "ws_2")
        .resource("conn_b", "ws_b");
    let org_key = snap.api_key("org_a");
    let scoped = snap.scoped_key("org_a", &["ws_1"]);
    let kw = Keyward::start(&snap, Opts::new(echo()));
    (snap, kw, org_key, scoped)
}

fn post(kw: &Keyward, path: &str, key: &str, body: &str) -> Resp {
    let auth = format!("Bearer {key}");
    kw.request(
        "POST",
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body,
    )
}

#[test]
fn path_workspace_rules() {
    let (_s, kw, org_key, scoped) = setup();
    let r = kw.get("/api/v1/workspaces/ws_1/connections", Some(&scoped));
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-workspace-id"), vec!["ws_1"]);
    assert_eq!(r.upstream_header("x-allowed-workspaces"), vec!["ws_1"]);
    kw.get("/api/v1/workspaces/ws_2/connections", Some(&scoped))
        .assert_error(403, "SCOPE_DENIED");
    assert_eq!(
        kw.get("/api/v1/workspaces/ws_2/connections", Some(&org_key))
            .status,
        200
    );
    // another organization's workspace: denied even for an org-wide key
    kw.get("/api/v1/workspaces/ws_b/x", Some(&org_key))
        .assert_error(403, "SCOPE_DENIED");
    // unknown workspace: denied for every key (SPEC §5.1; the
    // `unknown_workspaces = "pass"` setting is tested in tests/security)
    kw.get("/api/v1/workspaces/ws_unknown/x", Some(&org_key))
        .assert_error(403, "SCOPE_DENIED");
    kw.get("/api/v1/workspaces/ws_unknown/x", Some(&scoped))
        .assert_error(403, "SCOPE_DENIED");
    // letter case of literals and a trailing slash do not dodge the rule
    kw.get("/API/V1/Workspaces/ws_2/", Some(&scoped))
        .assert_error(403, "SCOPE_DENIED");
}

#[test]
fn body_workspace_rules_forward_the_identical_body() {
    let (_s, kw, _org_key, scoped) = setup();
    let body = r#"{"workspaceId":"ws_1","name":"a b"}"#;
    let r = post(&kw, "/api/v1/connections", &scoped, body);
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.json()["body"], body);
    assert_eq!(r.upstream_header("x-workspace-id"), vec!["ws_1"]);
    // a body well past 64 KiB (under max_body_inspect_bytes, 1 MiB by
    // default) is decided on and forwarded byte for byte
    let large = format!(
        r#"{{"workspaceId":"ws_1","pad":"{}"}}"#,
        "y".repeat(300 * 1024)
    );
    let r = post(&kw, "/api/v1/connections", &scoped, &large);
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.json()["body"].as_str(), Some(large.as_str()));
    post(
        &kw,
        "/api/v1/connections",
        &scoped,
        r#"{"workspaceId":"ws_2"}"#,
    )
    .assert_error(403, "SCOPE_DENIED");
    post(&kw, "/api/v1/connections", &scoped, "not json").assert_error(400, "BAD_REQUEST");
    post(
        &kw,
        "/api/v1/connections",
        &scoped,
        r#"{"workspaceId":"ws_1","workspaceId":"ws_2"}"#,
    )
    .assert_error(400, "BAD_REQUEST");
    post(&kw, "/api/v1/connections", &scoped, r#"{"workspaceId":7}"#)
        .assert_error(400, "BAD_REQUEST");
    post(&kw, "/api/v1/connections", &scoped, "{}").assert_error(403, "SCOPE_DENIED");
    let big = format!(
        r#"{{"workspaceId":"ws_1","pad":"{}"}}"#,
        "x".repeat(2 << 20)
    );
    post(&kw, "/api/v1/connections", &scoped, &big).assert_error(413, "PAYLOAD_TOO_LARGE");
}

#[test]
fn resource_rules() {
    let (_s, kw, org_key, scoped) = setup();
    assert_eq!(
        kw.get("/api/v1/connections/conn_1", Some(&scoped))
            .upstream_header("x-workspace-id"),
        vec!["ws_1"]
    );
    kw.get("/api/v1/connections/conn_2/refresh", Some(&scoped))
        .assert_error(403, "SCOPE_DENIED");
    kw.get("/api/v1/connections/conn_unknown", Some(&scoped))
        .assert_error(403, "SCOPE_DENIED");
    assert_eq!(
        kw.get("/api/v1/connections/conn_unknown", Some(&org_key))
            .status,
        200
    );
    kw.get("/api/v1/connections/conn_b", Some(&org_key))
        .assert_error(403, "SCOPE_DENIED");
    assert_eq!(
        post(
            &kw,
            "/api/v1/triggers/disable",
            &scoped,
            r#"{"triggerSourceId":"conn_1"}"#
        )
        .status,
        200
    );
    post(
        &kw,
        "/api/v1/triggers/disable",
        &scoped,
        r#"{"triggerSourceId":"conn_2"}"#,
    )
    .assert_error(403, "SCOPE_DENIED");
}

#[test]
fn query_and_header_rules_refuse_ambiguity() {
    let (_s, kw, _org_key, scoped) = setup();
    assert_eq!(
        kw.get("/api/v1/triggers?workspaceId=ws_1", Some(&scoped))
            .status,
        200
    );
    kw.get("/api/v1/triggers?workspaceId=ws_2", Some(&scoped))
        .assert_error(403, "SCOPE_DENIED");
    kw.get(
        "/api/v1/triggers?workspaceId=ws_1&workspaceId=ws_2",
        Some(&scoped),
    )
    .assert_error(400, "BAD_REQUEST");
    kw.get("/api/v1/triggers", Some(&scoped))
        .assert_error(403, "SCOPE_DENIED");
    let auth = format!("Bearer {scoped}");
    assert_eq!(
        kw.request(
            "GET",
            "/api/v1/by-header",
            &[("Authorization", &auth), ("X-Target-Workspace", "ws_1")],
            ""
        )
        .status,
        200
    );
    kw.request(
        "GET",
        "/api/v1/by-header",
        &[
            ("Authorization", &auth),
            ("X-Target-Workspace", "ws_1"),
            ("X-Target-Workspace", "ws_2"),
        ],
        "",
    )
    .assert_error(400, "BAD_REQUEST");
}

#[test]
fn scoped_keys_on_routes_without_a_rule() {
    let (_s, kw, org_key, scoped) = setup();
    kw.get("/api/v1/anything", Some(&scoped))
        .assert_error(403, "SCOPE_DENIED");
    assert_eq!(kw.get("/api/v1/anything", Some(&org_key)).status, 200);
    let r = kw.get("/api/v1/list", Some(&scoped));
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-allowed-workspaces"), vec!["ws_1"]);
    kw.get("/api/v1/api-keys", Some(&scoped))
        .assert_error(403, "FORBIDDEN");
    assert_eq!(kw.get("/api/v1/api-keys/", Some(&org_key)).status, 200);
}

#[test]
fn quota_routes_refuse_organizations_over_quota() {
    let (snap, kw, org_key, _scoped) = setup();
    assert_eq!(
        post(
            &kw,
            "/api/v1/actions/execute",
            &org_key,
            r#"{"workspaceId":"ws_1"}"#
        )
        .status,
        200
    );
    snap.sql("UPDATE organizations SET quota_exceeded = 1 WHERE id = 'org_a'");
    assert!(wait_until(std::time::Duration::from_secs(3), || post(
        &kw,
        "/api/v1/actions/execute",
        &org_key,
        r#"{"workspaceId":"ws_1"}"#
    )
    .status
        == 403));
    post(
        &kw,
        "/api/v1/actions/execute",
        &org_key,
        r#"{"workspaceId":"ws_1"}"#,
    )
    .assert_error(403, "QUOTA_EXCEEDED");
    assert_eq!(
        kw.get("/api/v1/workspaces/ws_1/x", Some(&org_key)).status,
        200
    );
}
