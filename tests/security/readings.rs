//! keyward and the upstream read the same request (SPEC §3.1 MCP transport,
//! §4.1, §5.1, §6, §8.2): where HTTP allows two readings keyward refuses
//! instead of guessing, the forwarding headers the upstream trusts come from
//! keyward, and a few operational guards hold. Every refusal is checked for
//! status, `code` and `details.reason`, and against the raw upstream's record
//! of what reached it.
use super::*;

use std::net::SocketAddr;
use std::time::Duration;

/// How long a response may take to start when reading keep-alive answers.
pub(super) const QUIET: Duration = Duration::from_millis(400);

/// keyward's own JSON error with this status, code and `details.reason`.
pub(super) fn assert_denied(case: &str, r: &Resp, status: u16, code: &str, why: &str) {
    assert_eq!(r.status, status, "{case}: {}", r.body_str());
    r.assert_error(status, code);
    assert_eq!(reason(r), why, "{case}: {}", r.body_str());
}

pub(super) fn assert_not_forwarded(case: &str, up: &RawUpstream) {
    assert_eq!(up.count(), 0, "{case}: forwarded: {:?}", up.seen());
}

/// The single request the upstream received.
pub(super) fn only_seen(up: &RawUpstream) -> Seen {
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    seen[0].clone()
}

/// Client copies of every forwarding header, in several spellings.
pub(super) const SPOOFED_FORWARDING: &str = "X-Forwarded-For: 203.0.113.7\r\n\
    x-forwarded-for: 203.0.113.8\r\n\
    X_Forwarded_For: 203.0.113.9\r\n\
    X-Real-IP: 203.0.113.10\r\n\
    x_real_ip: 203.0.113.11\r\n\
    X-Forwarded-Host: evil.example\r\n\
    X_FORWARDED_HOST: evil2.example\r\n\
    X-Forwarded-Proto: https\r\n\
    x_forwarded_proto: https\r\n\
    Forwarded: for=203.0.113.12;host=evil3.example;proto=https\r\n";

/// Only keyward's values reached the upstream: the peer as address, `http`.
pub(super) fn assert_forwarding_is_keywards(case: &str, seen: &Seen) {
    assert_eq!(seen.header("x-forwarded-for"), vec!["127.0.0.1"], "{case}");
    assert_eq!(seen.header("x-real-ip"), vec!["127.0.0.1"], "{case}");
    assert_eq!(seen.header("x-forwarded-proto"), vec!["http"], "{case}");
    assert!(seen.header("x-forwarded-host").is_empty(), "{case}");
    assert!(seen.header("forwarded").is_empty(), "{case}");
    let head = seen.head.to_ascii_lowercase();
    for spoof in ["203.0.113.", "evil", "x_forwarded", "x_real_ip"] {
        assert!(
            !head.contains(spoof),
            "{case}: `{spoof}` reached the upstream:\n{}",
            seen.head
        );
    }
}

// ------------------------------------------------ §4.1 forwarding headers

#[test]
fn client_forwarding_headers_are_replaced_by_keywards_own_on_auth_none_routes() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let r = kw.send("GET", "/api/auth/sign-in", SPOOFED_FORWARDING, "");
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_forwarding_is_keywards("auth = none", &only_seen(&up));
}

#[test]
fn client_forwarding_headers_are_replaced_by_keywards_own_on_authenticated_routes() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let headers = format!("{}{SPOOFED_FORWARDING}", bearer(&w.org_key));
    let r = kw.send("GET", "/api/v1/things", &headers, "");
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_forwarding_is_keywards("api key", &only_seen(&up));
}

/// keyward behind a trusted proxy at 127.0.0.1 (the test client).
pub(super) fn trusting_loopback(upstream: SocketAddr) -> Opts {
    Opts::new(upstream).set("server.trusted_proxies", vec!["127.0.0.1/32"])
}

#[test]
fn trusted_proxy_forwarding_headers_are_extended_and_kept() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start_with(trusting_loopback(up.addr));
    let headers = format!(
        "{}X-Forwarded-For: 203.0.113.7\r\nX-Real-IP: 198.51.100.99\r\nX-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: app.example\r\nForwarded: for=203.0.113.7;proto=https;host=app.example\r\n",
        bearer(&w.org_key)
    );
    let r = kw.send("GET", "/api/v1/things", &headers, "");
    assert_eq!(r.status, 200, "{}", r.body_str());
    let seen = only_seen(&up);
    assert_eq!(
        seen.header("x-forwarded-for"),
        vec!["203.0.113.7, 127.0.0.1"],
        "{}",
        seen.head
    );
    assert_eq!(
        seen.header("x-real-ip"),
        vec!["203.0.113.7"],
        "{}",
        seen.head
    );
    assert_eq!(seen.header("x-forwarded-proto"), vec!["https"]);
    assert_eq!(seen.header("x-forwarded-host"), vec!["app.example"]);
    assert_eq!(
        seen.header("forwarded"),
        vec!["for=203.0.113.7;proto=https;host=app.example"]
    );
}

#[test]
fn trusted_proxy_scheme_other_than_http_or_https_becomes_http() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start_with(trusting_loopback(up.addr));
    let headers = format!(
        "{}X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: ftp\r\n",
        bearer(&w.org_key)
    );
    let r = kw.send("GET", "/api/v1/things", &headers, "");
    assert_eq!(r.status, 200, "{}", r.body_str());
    let seen = only_seen(&up);
    assert_eq!(
        seen.header("x-forwarded-proto"),
        vec!["http"],
        "{}",
        seen.head
    );
    assert_eq!(
        seen.header("x-forwarded-for"),
        vec!["203.0.113.7, 127.0.0.1"]
    );
}

// ------------------------------------------- §5.1 inspected bodies: 415

/// Reads as `ws_a1` to a JSON parser and as `ws_b` to a form parser.
const POLYGLOT: &str = r#"{"pad":"&workspaceId=ws_b&","workspaceId":"ws_a1"}"#;

#[test]
fn form_encoded_body_on_a_body_route_is_unsupported_media_type() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let headers = format!(
        "{}Content-Type: application/x-www-form-urlencoded\r\n",
        bearer(&w.scoped_key)
    );
    let r = kw.send("POST", "/api/v1/connections", &headers, POLYGLOT);
    assert_denied(
        "form",
        &r,
        415,
        "UNSUPPORTED_MEDIA_TYPE",
        "unsupported_media_type",
    );
    assert_not_forwarded("form", &up);
}

#[test]
fn body_without_content_type_on_a_body_route_is_unsupported_media_type() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let r = kw.send(
        "POST",
        "/api/v1/connections",
        bearer(&w.scoped_key),
        POLYGLOT,
    );
    assert_denied(
        "no content-type",
        &r,
        415,
        "UNSUPPORTED_MEDIA_TYPE",
        "unsupported_media_type",
    );
    assert_not_forwarded("no content-type", &up);
}

#[test]
fn content_encoded_body_on_a_body_route_is_refused_as_encoded_body() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    for coding in ["br", "gzip"] {
        let headers = format!(
            "{}Content-Type: application/json\r\nContent-Encoding: {coding}\r\n",
            bearer(&w.scoped_key)
        );
        let r = kw.send("POST", "/api/v1/connections", &headers, POLYGLOT);
        assert_denied(coding, &r, 415, "UNSUPPORTED_MEDIA_TYPE", "encoded_body");
    }
    assert_not_forwarded("encoded", &up);
}

#[test]
fn json_content_types_with_parameters_or_a_json_suffix_are_inspected_and_forwarded() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    for ct in [
        "application/json; charset=utf-8",
        "application/vnd.api+json",
    ] {
        let before = up.count();
        let headers = format!("{}Content-Type: {ct}\r\n", bearer(&w.scoped_key));
        let r = kw.send("POST", "/api/v1/connections", &headers, POLYGLOT);
        assert_eq!(r.status, 200, "{ct}: {}", r.body_str());
        let seen = up.seen();
        assert_eq!(seen.len(), before + 1, "{ct}");
        assert_eq!(seen[before].header("x-workspace-id"), vec!["ws_a1"], "{ct}");
        assert_eq!(seen[before].body, POLYGLOT.as_bytes(), "{ct}: body intact");
    }
}

#[test]
fn empty_body_with_a_form_content_type_is_not_unsupported_media_type() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let headers = format!(
        "{}Content-Type: application/x-www-form-urlencoded\r\n",
        bearer(&w.org_key)
    );
    let r = kw.send("POST", "/api/v1/connections", &headers, "");
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(only_seen(&up).target_str(), "/api/v1/connections");
}

#[test]
fn unsupported_media_type_is_judged_from_the_head_before_the_size() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    // larger than the default max_body_inspect_bytes (1 MiB); no body follows
    let head = format!(
        "POST /api/v1/connections HTTP/1.1\r\nHost: kw.test\r\n{}Content-Type: text/plain\r\nContent-Length: 5000000\r\n\r\n",
        bearer(&w.scoped_key)
    );
    let out = exchange(kw.addr, head.as_bytes(), QUIET);
    assert!(!out.is_empty(), "no answer before the body");
    let r = parse_response(&out);
    assert_denied(
        "huge text/plain",
        &r,
        415,
        "UNSUPPORTED_MEDIA_TYPE",
        "unsupported_media_type",
    );
    assert_not_forwarded("huge text/plain", &up);
}

// ------------------------------------------------------- §5.1 methods

#[test]
fn noncanonical_method_spelling_is_refused() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let json = format!(
        "{}Content-Type: application/json\r\n",
        bearer(&w.scoped_key)
    );
    let r = kw.send(
        "post",
        "/api/v1/connections",
        &json,
        r#"{"workspaceId":"ws_a1"}"#,
    );
    assert_denied("post", &r, 400, "BAD_REQUEST", "noncanonical_method");
    let r = kw.send(
        "Get",
        "/api/v1/workspaces/ws_a1/x",
        bearer(&w.scoped_key),
        "",
    );
    assert_denied("Get", &r, 400, "BAD_REQUEST", "noncanonical_method");
    assert_not_forwarded("noncanonical", &up);
}

#[test]
fn a_second_method_named_in_a_header_or_the_query_is_refused() {
    // A GET matches no POST route here, so the POST route's body rule would
    // never run, while Express `method-override` or Symfony run the POST
    // handler upstream.
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let cases = [
        ("X-HTTP-Method-Override: POST\r\n", "/api/v1/connections"),
        ("x_http_method: POST\r\n", "/api/v1/connections"),
        ("X-Method-Override: POST\r\n", "/api/v1/connections"),
        ("", "/api/v1/connections?_method=POST"),
        ("", "/api/v1/connections?a=1&%5Fmethod=POST"),
    ];
    for (header, target) in cases {
        let headers = format!("{}{header}", bearer(&w.scoped_key));
        let r = kw.send("GET", target, &headers, "");
        assert_denied(target, &r, 400, "BAD_REQUEST", "method_override");
    }
    assert_not_forwarded("method override", &up);
}

/// A GET-only workspace route before a catch-all that lets scoped keys pass.
const GET_ONLY_ROUTES: &str = r#"
[[route]]
path = "/api/v1/workspaces/{workspaceId}/**"
methods = ["GET"]
workspace = "path:workspaceId"
[[route]]
path = "/**"
scoped_keys = "filter"
"#;

#[test]
fn head_is_judged_by_the_get_route_it_matches() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start_with(Opts::new(up.addr).routes(GET_ONLY_ROUTES));
    let auth = bearer(&w.scoped_key);
    // another organization's workspace: the GET rule applies, not the catch-all
    let r = kw.send("HEAD", "/api/v1/workspaces/ws_b/x", &auth, "");
    assert_eq!(r.status, 403, "{:?}", r.headers);
    if !r.body.is_empty() {
        r.assert_error(403, "SCOPE_DENIED");
    }
    assert_not_forwarded("HEAD ws_b", &up);
    // its own workspace: forwarded with the workspace the GET rule resolved
    let r = kw.send("HEAD", "/api/v1/workspaces/ws_a1/x", &auth, "");
    assert_eq!(r.status, 200, "{:?}", r.headers);
    let seen = only_seen(&up);
    assert!(seen.head.starts_with("HEAD "), "{}", seen.head);
    assert_eq!(
        seen.header("x-workspace-id"),
        vec!["ws_a1"],
        "{}",
        seen.head
    );
}

// ----------------------------------------------- §5.1 path parameters

#[test]
fn semicolon_in_the_path_is_refused_as_a_path_parameter() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let json = format!("{}Content-Type: application/json\r\n", bearer(&w.org_key));
    let r = kw.send(
        "POST",
        "/api/v1/actions;x/execute",
        &json,
        r#"{"workspaceId":"ws_b"}"#,
    );
    assert_denied("actions;x", &r, 400, "BAD_REQUEST", "path_parameter");
    let r = kw.send(
        "GET",
        "/api/v1/workspaces/ws_a1/..;/ws_b/x",
        bearer(&w.scoped_key),
        "",
    );
    assert_denied("..;", &r, 400, "BAD_REQUEST", "path_parameter");
    assert_not_forwarded("semicolon", &up);
}

#[test]
fn encoded_semicolon_is_not_a_path_parameter() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let r = kw.send("GET", "/api/v1/things%3Bx", bearer(&w.org_key), "");
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(only_seen(&up).target_str(), "/api/v1/things%3Bx");
}

// ------------------------------------- §5.1 one workspace per request

#[test]
fn query_parameter_naming_another_workspace_than_the_path_conflicts() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    for query in [
        "workspaceId=ws_b",
        "workspaceId[]=ws_b",
        "workspaceId%5B%5D=ws_b",
    ] {
        let target = format!("/api/v1/workspaces/ws_a1/x?{query}");
        let r = kw.send("GET", &target, bearer(&w.scoped_key), "");
        assert_denied(query, &r, 400, "BAD_REQUEST", "conflicting_workspace");
    }
    assert_not_forwarded("conflicting", &up);
}

#[test]
fn query_parameter_naming_the_path_workspace_is_forwarded() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let target = "/api/v1/workspaces/ws_a1/x?workspaceId=ws_a1";
    let r = kw.send("GET", target, bearer(&w.scoped_key), "");
    assert_eq!(r.status, 200, "{}", r.body_str());
    let seen = only_seen(&up);
    assert_eq!(seen.target_str(), target);
    assert_eq!(seen.header("x-workspace-id"), vec!["ws_a1"]);
}

#[test]
fn bracketed_workspace_parameter_beside_the_plain_one_is_ambiguous() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    for target in [
        "/api/v1/workspaces/ws_a1/x?workspaceId=ws_a1&workspaceId[]=ws_a1",
        "/api/v1/triggers?workspaceId=ws_a1&workspaceId[0]=ws_b",
    ] {
        let r = kw.send("GET", target, bearer(&w.scoped_key), "");
        assert_denied(target, &r, 400, "BAD_REQUEST", "ambiguous_workspace");
    }
    assert_not_forwarded("ambiguous", &up);
}

// ------------------------------------------ §5.1 unknown workspaces

#[test]
fn workspace_missing_from_the_snapshot_is_scope_denied() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let r = kw.send("GET", "/api/v1/workspaces/WS_B/x", bearer(&w.org_key), "");
    assert_denied("WS_B", &r, 403, "SCOPE_DENIED", "unknown_workspace");
    assert_not_forwarded("WS_B", &up);
}

#[test]
fn unknown_workspaces_pass_lets_the_upstream_decide() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start_with(Opts::new(up.addr).set("scopes.unknown_workspaces", "pass"));
    let r = kw.send("GET", "/api/v1/workspaces/WS_B/x", bearer(&w.org_key), "");
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(only_seen(&up).header("x-workspace-id"), vec!["WS_B"]);
}

// ------------------------------------------------------- §5.1 ids

const BAD_REQUEST_METRIC: &str =
    "keyward_requests_total{auth_method=\"api_key\",outcome=\"bad_request\"}";

#[test]
fn workspace_id_with_a_control_character_is_malformed() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let before = kw.metric(BAD_REQUEST_METRIC);
    let r = kw.send(
        "GET",
        "/api/v1/workspaces/kw%0Aprobe/x",
        bearer(&w.org_key),
        "",
    );
    assert_denied("%0A", &r, 400, "BAD_REQUEST", "malformed_id");
    assert!(
        wait_until(Duration::from_secs(5), || kw.metric(BAD_REQUEST_METRIC)
            >= before + 1.0),
        "{}",
        kw.metrics()
    );
    assert_not_forwarded("%0A", &up);
}

#[test]
fn workspace_id_longer_than_256_bytes_is_malformed() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let before = kw.metric(BAD_REQUEST_METRIC);
    let target = format!("/api/v1/workspaces/{}/x", "w".repeat(300));
    let r = kw.send("GET", &target, bearer(&w.org_key), "");
    assert_denied("300 bytes", &r, 400, "BAD_REQUEST", "malformed_id");
    assert!(
        wait_until(Duration::from_secs(5), || kw.metric(BAD_REQUEST_METRIC)
            >= before + 1.0),
        "{}",
        kw.metrics()
    );
    assert_not_forwarded("300 bytes", &up);
}

#[test]
fn header_workspace_id_with_a_space_is_malformed() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let headers = format!("{}X-Target-Workspace: ws a1\r\n", bearer(&w.org_key));
    let r = kw.send("GET", "/api/v1/by-header", &headers, "");
    assert_denied("space", &r, 400, "BAD_REQUEST", "malformed_id");
    assert_not_forwarded("space", &up);
}
