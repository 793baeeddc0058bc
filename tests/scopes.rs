//! Routes, workspace scopes and quotas (SPEC §5) against the real binary.
//! The world is `common::World` (`org_a` with `ws_a1`, `ws_a2`; `org_b`
//! with `ws_b`; an org-wide key and a key scoped to `ws_a1`) plus one
//! resource per workspace: `conn_1` in `ws_a1`, `conn_2` in `ws_a2`,
//! `conn_b` in `ws_b`.
mod common;
use common::*;

fn setup() -> (World, Keyward) {
    let w = World::new();
    w.snap
        .resource("conn_1", "ws_a1")
        .resource("conn_2", "ws_a2")
        .resource("conn_b", "ws_b");
    let kw = w.start(echo());
    (w, kw)
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

// ------------------------------------------------------------ path rule

#[test]
fn path_rule_forwards_a_scoped_key_to_its_own_workspace() {
    let (w, kw) = setup();
    let r = kw.get("/api/v1/workspaces/ws_a1/connections", Some(&w.scoped_key));
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-workspace-id"), vec!["ws_a1"]);
    assert_eq!(r.upstream_header("x-allowed-workspaces"), vec!["ws_a1"]);
}

#[test]
fn path_rule_denies_a_scoped_key_another_workspace_of_its_org() {
    let (w, kw) = setup();
    kw.get("/api/v1/workspaces/ws_a2/connections", Some(&w.scoped_key))
        .assert_error(403, "SCOPE_DENIED");
}

#[test]
fn path_rule_admits_an_org_wide_key_to_every_workspace_of_its_org() {
    let (w, kw) = setup();
    assert_eq!(
        kw.get("/api/v1/workspaces/ws_a2/connections", Some(&w.org_key))
            .status,
        200
    );
}

#[test]
fn path_rule_denies_another_organizations_workspace_even_to_an_org_wide_key() {
    let (w, kw) = setup();
    kw.get("/api/v1/workspaces/ws_b/x", Some(&w.org_key))
        .assert_error(403, "SCOPE_DENIED");
}

#[test]
fn path_rule_denies_an_unknown_workspace_to_every_key() {
    // SPEC §5.1; the `unknown_workspaces = "pass"` setting is tested in
    // tests/security
    let (w, kw) = setup();
    kw.get("/api/v1/workspaces/ws_unknown/x", Some(&w.org_key))
        .assert_error(403, "SCOPE_DENIED");
    kw.get("/api/v1/workspaces/ws_unknown/x", Some(&w.scoped_key))
        .assert_error(403, "SCOPE_DENIED");
}

#[test]
fn path_rule_is_not_dodged_by_letter_case_or_a_trailing_slash() {
    let (w, kw) = setup();
    kw.get("/API/V1/Workspaces/ws_a2/", Some(&w.scoped_key))
        .assert_error(403, "SCOPE_DENIED");
}

// ------------------------------------------------------------ body rule

#[test]
fn body_rule_forwards_the_identical_body() {
    let (w, kw) = setup();
    let body = r#"{"workspaceId":"ws_a1","name":"a b"}"#;
    let r = post(&kw, "/api/v1/connections", &w.scoped_key, body);
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.json()["body"], body);
    assert_eq!(r.upstream_header("x-workspace-id"), vec!["ws_a1"]);
}

#[test]
fn body_rule_decides_on_a_body_past_64_kib_and_forwards_it_byte_for_byte() {
    // under max_body_inspect_bytes (1 MiB by default)
    let (w, kw) = setup();
    let large = format!(
        r#"{{"workspaceId":"ws_a1","pad":"{}"}}"#,
        "y".repeat(300 * 1024)
    );
    let r = post(&kw, "/api/v1/connections", &w.scoped_key, &large);
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.json()["body"].as_str(), Some(large.as_str()));
}

#[test]
fn body_rule_denies_another_workspace_or_none() {
    let (w, kw) = setup();
    post(
        &kw,
        "/api/v1/connections",
        &w.scoped_key,
        r#"{"workspaceId":"ws_a2"}"#,
    )
    .assert_error(403, "SCOPE_DENIED");
    post(&kw, "/api/v1/connections", &w.scoped_key, "{}").assert_error(403, "SCOPE_DENIED");
}

#[test]
fn body_rule_refuses_malformed_or_ambiguous_json_400() {
    let (w, kw) = setup();
    let scoped = &w.scoped_key;
    post(&kw, "/api/v1/connections", scoped, "not json").assert_error(400, "BAD_REQUEST");
    post(
        &kw,
        "/api/v1/connections",
        scoped,
        r#"{"workspaceId":"ws_a1","workspaceId":"ws_a2"}"#,
    )
    .assert_error(400, "BAD_REQUEST");
    post(&kw, "/api/v1/connections", scoped, r#"{"workspaceId":7}"#)
        .assert_error(400, "BAD_REQUEST");
}

#[test]
fn body_rule_refuses_a_body_over_the_inspection_limit_413() {
    let (w, kw) = setup();
    let big = format!(
        r#"{{"workspaceId":"ws_a1","pad":"{}"}}"#,
        "x".repeat(2 << 20)
    );
    post(&kw, "/api/v1/connections", &w.scoped_key, &big).assert_error(413, "PAYLOAD_TOO_LARGE");
}

// -------------------------------------------------------- resource rules

#[test]
fn resource_path_rule_resolves_the_resources_workspace() {
    let (w, kw) = setup();
    let (org_key, scoped) = (&w.org_key, &w.scoped_key);
    assert_eq!(
        kw.get("/api/v1/connections/conn_1", Some(scoped))
            .upstream_header("x-workspace-id"),
        vec!["ws_a1"]
    );
    kw.get("/api/v1/connections/conn_2/refresh", Some(scoped))
        .assert_error(403, "SCOPE_DENIED");
    kw.get("/api/v1/connections/conn_unknown", Some(scoped))
        .assert_error(403, "SCOPE_DENIED");
    assert_eq!(
        kw.get("/api/v1/connections/conn_unknown", Some(org_key))
            .status,
        200
    );
    kw.get("/api/v1/connections/conn_b", Some(org_key))
        .assert_error(403, "SCOPE_DENIED");
}

#[test]
fn resource_body_rule_resolves_the_resources_workspace() {
    let (w, kw) = setup();
    let scoped = &w.scoped_key;
    assert_eq!(
        post(
            &kw,
            "/api/v1/triggers/disable",
            scoped,
            r#"{"triggerSourceId":"conn_1"}"#
        )
        .status,
        200
    );
    post(
        &kw,
        "/api/v1/triggers/disable",
        scoped,
        r#"{"triggerSourceId":"conn_2"}"#,
    )
    .assert_error(403, "SCOPE_DENIED");
}

// -------------------------------------------------- query and header rules

#[test]
fn query_rule_decides_on_one_value_and_refuses_ambiguity() {
    let (w, kw) = setup();
    let scoped = &w.scoped_key;
    assert_eq!(
        kw.get("/api/v1/triggers?workspaceId=ws_a1", Some(scoped))
            .status,
        200
    );
    kw.get("/api/v1/triggers?workspaceId=ws_a2", Some(scoped))
        .assert_error(403, "SCOPE_DENIED");
    kw.get(
        "/api/v1/triggers?workspaceId=ws_a1&workspaceId=ws_a2",
        Some(scoped),
    )
    .assert_error(400, "BAD_REQUEST");
    kw.get("/api/v1/triggers", Some(scoped))
        .assert_error(403, "SCOPE_DENIED");
}

#[test]
fn header_rule_decides_on_one_value_and_refuses_ambiguity() {
    let (w, kw) = setup();
    let auth = format!("Bearer {}", w.scoped_key);
    assert_eq!(
        kw.request(
            "GET",
            "/api/v1/by-header",
            &[("Authorization", &auth), ("X-Target-Workspace", "ws_a1")],
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
            ("X-Target-Workspace", "ws_a1"),
            ("X-Target-Workspace", "ws_a2"),
        ],
        "",
    )
    .assert_error(400, "BAD_REQUEST");
}

// ------------------------------------------------ routes without a rule

#[test]
fn route_without_a_rule_denies_scoped_keys_and_admits_org_wide_keys() {
    let (w, kw) = setup();
    kw.get("/api/v1/anything", Some(&w.scoped_key))
        .assert_error(403, "SCOPE_DENIED");
    assert_eq!(kw.get("/api/v1/anything", Some(&w.org_key)).status, 200);
}

#[test]
fn filter_route_forwards_a_scoped_key_with_its_allowed_workspaces() {
    let (w, kw) = setup();
    let r = kw.get("/api/v1/list", Some(&w.scoped_key));
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-allowed-workspaces"), vec!["ws_a1"]);
}

#[test]
fn org_wide_only_route_refuses_scoped_keys_and_admits_org_wide_keys() {
    let (w, kw) = setup();
    kw.get("/api/v1/api-keys", Some(&w.scoped_key))
        .assert_error(403, "FORBIDDEN");
    assert_eq!(kw.get("/api/v1/api-keys/", Some(&w.org_key)).status, 200);
}

// ----------------------------------------------------------------- quota

#[test]
fn quota_routes_refuse_organizations_over_quota() {
    let (w, kw) = setup();
    let org_key = &w.org_key;
    assert_eq!(
        post(
            &kw,
            "/api/v1/actions/execute",
            org_key,
            r#"{"workspaceId":"ws_a1"}"#
        )
        .status,
        200
    );
    w.snap
        .sql("UPDATE organizations SET quota_exceeded = 1 WHERE id = 'org_a'");
    assert!(wait_until(std::time::Duration::from_secs(3), || post(
        &kw,
        "/api/v1/actions/execute",
        org_key,
        r#"{"workspaceId":"ws_a1"}"#
    )
    .status
        == 403));
    post(
        &kw,
        "/api/v1/actions/execute",
        org_key,
        r#"{"workspaceId":"ws_a1"}"#,
    )
    .assert_error(403, "QUOTA_EXCEEDED");
    assert_eq!(
        kw.get("/api/v1/workspaces/ws_a1/x", Some(org_key)).status,
        200
    );
}
