//! More of one reading (SPEC §3.1 MCP transport, §5.1, §6, §8): the
//! failed-authentication throttle, cookies, framing, empty scopes, MCP's
//! transport rules and a few operational guards; the helpers are
//! readings.rs's.
use super::readings::*;
use super::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

// ------------------------------------------- §6 auth failure throttle

/// keyward throttling an address after 3 failed authentications an hour.
fn throttled(upstream: SocketAddr) -> Opts {
    Opts::new(upstream)
        .set("rate_limit.auth_failures_per_ip", 3)
        .set("rate_limit.window_s", 3600)
}

#[test]
fn requests_without_a_credential_are_never_throttled() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start_with(throttled(up.addr));
    for i in 0..10 {
        let r = kw.send("GET", "/api/v1/things", "", "");
        assert_eq!(r.status, 401, "request {i}: {}", r.body_str());
        r.assert_error(401, "UNAUTHENTICATED");
    }
    assert_not_forwarded("no credential", &up);
    // nothing was counted: a key never seen before still works
    let r = kw.send("GET", "/api/v1/things", bearer(&w.org_key), "");
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(up.count(), 1);
}

#[test]
fn unknown_keys_past_the_per_ip_limit_are_rate_limited() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start_with(throttled(up.addr));
    for i in 0..3 {
        let r = kw.send(
            "GET",
            "/api/v1/things",
            bearer(&format!("wvz_unknown_{i}")),
            "",
        );
        r.assert_error(401, "UNAUTHENTICATED");
    }
    let r = kw.send("GET", "/api/v1/things", bearer("wvz_unknown_4"), "");
    r.assert_error(429, "RATE_LIMIT_EXCEEDED");
    assert_not_forwarded("unknown keys", &up);
}

// ------------------------------------------------------ §5.1 cookies

#[test]
fn session_cookie_is_found_across_a_tab_after_the_semicolon() {
    let w = World::new();
    let cookie = w.snap.session("user_1", Some("org_a"), now() + 3600);
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    for line in [
        format!("Cookie: better-auth.session_token={cookie};\tother=1\r\n"),
        format!("Cookie: other=1;\tbetter-auth.session_token={cookie}\r\n"),
    ] {
        let before = up.count();
        let r = kw.send("GET", "/api/v1/things", &line, "");
        assert_eq!(r.status, 200, "{line:?}: {}", r.body_str());
        let seen = up.seen();
        assert_eq!(seen.len(), before + 1);
        assert_eq!(seen[before].header("x-auth-method"), vec!["session"]);
        assert_eq!(seen[before].header("x-user-id"), vec!["user_1"]);
    }
}

#[test]
fn session_cookie_with_two_different_values_is_ambiguous() {
    let w = World::new();
    let a = w.snap.session("user_a", Some("org_a"), now() + 3600);
    let b = w.snap.session("user_b", Some("org_b"), now() + 3600);
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    for line in [
        format!(
            "Cookie: __Secure-better-auth.session_token={a}; better-auth.session_token={b}\r\n"
        ),
        format!("Cookie: better-auth.session_token={a}; better-auth.session_token={b}\r\n"),
    ] {
        let r = kw.send("GET", "/api/v1/things", &line, "");
        assert_denied(
            &line,
            &r,
            401,
            "UNAUTHENTICATED",
            "ambiguous_session_cookie",
        );
    }
    assert_not_forwarded("ambiguous cookie", &up);
}

// ------------------------------------------------------ §5.1 framing

#[test]
fn repeated_chunked_coding_reaches_the_upstream_as_one_chunked() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let req = format!(
        "POST /api/v1/upload HTTP/1.1\r\nHost: kw.test\r\n{}Transfer-Encoding: chunked, chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        bearer(&w.org_key)
    );
    let out = exchange(kw.addr, req.as_bytes(), QUIET);
    assert!(!out.is_empty(), "closed without a response");
    let r = parse_response(&out);
    if r.status == 400 {
        // refused as malformed framing: acceptable, if never forwarded
        r.assert_error(400, "BAD_REQUEST");
        assert_not_forwarded("chunked, chunked", &up);
        return;
    }
    assert_eq!(r.status, 200, "{}", r.body_str());
    let seen = only_seen(&up);
    let chunked = seen
        .header("transfer-encoding")
        .iter()
        .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .filter(|t| t == "chunked")
        .count();
    assert_eq!(chunked, 1, "{}", seen.head);
    assert_eq!(seen.body, b"hello");
}

#[test]
fn switching_protocols_without_an_upgrade_request_is_bad_gateway() {
    let w = World::new();
    let kw = w.start(switching_upstream());
    let r = kw.send("GET", "/api/v1/things", bearer(&w.org_key), "");
    r.assert_error(502, "UPSTREAM_UNAVAILABLE");
}

// ------------------------------------------------- §5.1 empty scopes

#[test]
fn empty_workspace_scope_list_is_malformed_permissions() {
    let w = World::new();
    let (key, _) = w.snap.api_key_full(
        "org_a",
        Some(r#"{"scope":"workspace","workspaceIds":[]}"#),
        None,
        None,
    );
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let r = kw.send("GET", "/api/v1/list", bearer(&key), "");
    assert_denied("[]", &r, 403, "FORBIDDEN", "malformed_permissions");
    assert_not_forwarded("[]", &up);
}

// ------------------------------------------------ §3.1 MCP transport

/// `srv_1` (bearer), `srv_oauth` (oauth), `srv_both` (oauth_and_bearer), all
/// of `org_a` in `ws_a1`; returns a static token of `srv_1`.
fn mcp_world(w: &World) -> String {
    w.snap
        .mcp_server("srv_1", "org_a", "ws_a1", "bearer")
        .mcp_server("srv_oauth", "org_a", "ws_a1", "oauth")
        .mcp_server("srv_both", "org_a", "ws_a1", "oauth_and_bearer");
    w.snap.mcp_token("srv_1", "static", None)
}

#[test]
fn mcp_request_from_an_origin_not_allowed_is_forbidden_before_the_token() {
    let w = World::new();
    let token = mcp_world(&w);
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    for (case, tok) in [("valid token", token.as_str()), ("unknown", "mcp_unknown")] {
        let headers = format!("{}Origin: http://evil.example\r\n", bearer(tok));
        let r = kw.send("POST", "/mcp/srv_1/messages", &headers, "{}");
        assert_denied(case, &r, 403, "FORBIDDEN", "origin_not_allowed");
    }
    assert_not_forwarded("evil origin", &up);
}

#[test]
fn mcp_request_without_origin_is_not_affected() {
    let w = World::new();
    let token = mcp_world(&w);
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let r = kw.send("POST", "/mcp/srv_1/messages", bearer(&token), "{}");
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(only_seen(&up).header("x-mcp-server-id"), vec!["srv_1"]);
}

#[test]
fn mcp_origin_listed_in_allowed_origins_is_accepted() {
    let w = World::new();
    let token = mcp_world(&w);
    let up = RawUpstream::start();
    let kw =
        w.start_with(Opts::new(up.addr).set("mcp.allowed_origins", vec!["https://app.example"]));
    let headers = format!("{}Origin: https://app.example\r\n", bearer(&token));
    let r = kw.send("POST", "/mcp/srv_1/messages", &headers, "{}");
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(only_seen(&up).header("x-mcp-server-id"), vec!["srv_1"]);
}

fn challenge(r: &Resp) -> String {
    r.header("www-authenticate").unwrap_or("").to_string()
}

#[test]
fn mcp_401_for_a_presented_token_says_invalid_token() {
    let w = World::new();
    mcp_world(&w);
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    for server in ["srv_oauth", "srv_both"] {
        let target = format!("/mcp/{server}/sse");
        let r = kw.send("GET", &target, bearer("mcp_unknown"), "");
        r.assert_error(401, "UNAUTHENTICATED");
        let c = challenge(&r);
        assert!(c.starts_with("Bearer "), "{server}: {c}");
        assert!(c.contains("error=\"invalid_token\""), "{server}: {c}");
        let meta = format!(
            "resource_metadata=\"http://kw.test/.well-known/oauth-protected-resource/mcp/{server}\""
        );
        assert!(c.contains(&meta), "{server}: {c}");
    }
    assert_not_forwarded("mcp 401", &up);
}

#[test]
fn mcp_401_without_a_credential_has_no_error_attribute() {
    let w = World::new();
    mcp_world(&w);
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    for server in ["srv_oauth", "srv_both"] {
        let r = kw.send("GET", &format!("/mcp/{server}/sse"), "", "");
        r.assert_error(401, "UNAUTHENTICATED");
        let c = challenge(&r);
        assert!(c.contains("resource_metadata=\""), "{server}: {c}");
        assert!(!c.contains("error="), "{server}: {c}");
    }
    assert_not_forwarded("mcp 401", &up);
}

#[test]
fn mcp_resource_metadata_is_based_on_public_url() {
    let w = World::new();
    mcp_world(&w);
    let up = RawUpstream::start();
    let kw = w.start_with(Opts::new(up.addr).set("server.public_url", "https://api.example.com"));
    let r = kw.send("GET", "/mcp/srv_oauth/sse", "", "");
    r.assert_error(401, "UNAUTHENTICATED");
    let c = challenge(&r);
    assert!(
        c.contains("resource_metadata=\"https://api.example.com/.well-known/oauth-protected-resource/mcp/srv_oauth\""),
        "{c}"
    );
}

#[test]
fn mcp_resource_metadata_ignores_an_untrusted_forwarded_host() {
    let w = World::new();
    mcp_world(&w);
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let headers = "X-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\n";
    let r = kw.send("GET", "/mcp/srv_oauth/sse", headers, "");
    r.assert_error(401, "UNAUTHENTICATED");
    let c = challenge(&r);
    assert!(!c.contains("evil.example"), "{c}");
    assert!(
        c.contains("resource_metadata=\"http://kw.test/.well-known/oauth-protected-resource/mcp/srv_oauth\""),
        "{c}"
    );
}

#[test]
fn mcp_resource_metadata_follows_a_trusted_proxys_host_and_scheme() {
    let w = World::new();
    mcp_world(&w);
    let up = RawUpstream::start();
    let kw = w.start_with(trusting_loopback(up.addr));
    let headers = "X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Host: api.example.org\r\nX-Forwarded-Proto: https\r\n";
    let r = kw.send("GET", "/mcp/srv_oauth/sse", headers, "");
    r.assert_error(401, "UNAUTHENTICATED");
    let c = challenge(&r);
    assert!(
        c.contains("resource_metadata=\"https://api.example.org/.well-known/oauth-protected-resource/mcp/srv_oauth\""),
        "{c}"
    );
}

// ------------------------------------------------------ §8 operations

#[test]
fn admin_listener_drops_a_request_head_not_complete_within_10_s() {
    let w = World::new();
    let kw = w.start(echo());
    let mut s = TcpStream::connect(kw.admin).unwrap();
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut buf = [0u8; 1024];
    let res = s.read(&mut buf);
    let elapsed = start.elapsed();
    match &res {
        Ok(0) => {}
        Ok(n) => panic!(
            "answered an incomplete head: {:?}",
            String::from_utf8_lossy(&buf[..*n])
        ),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "still open after {elapsed:?}"
        ),
    }
    assert!(
        (Duration::from_secs(9)..=Duration::from_secs(13)).contains(&elapsed),
        "closed after {elapsed:?}"
    );
}

#[test]
fn redis_backend_without_expected_replicas_is_refused_by_check() {
    let w = World::new();
    let path = w.snap.dir.path().join("redis.toml");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [upstream]\naddress = \"127.0.0.1:1\"\n\
         [snapshot]\npath = \"{}\"\n\
         [rate_limit]\nbackend = \"redis\"\n",
        w.snap.path.display()
    );
    std::fs::write(&path, config).unwrap();
    let out = keyward_cmd()
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("BETTER_AUTH_SECRET")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "accepted: {text}");
    assert!(text.contains("expected_replicas"), "{text}");
}

#[test]
fn access_log_key_prefix_is_at_most_8_characters() {
    let w = World::new();
    let token = format!("wvz_{}", "Ab3dEf7hIj".repeat(6));
    let long_prefix = &token[..40];
    w.snap
        .conn()
        .execute(
            "INSERT INTO api_keys (id, organization_id, key_hash, key_prefix) VALUES ('key_long', 'org_a', ?1, ?2)",
            rusqlite::params![hash(&token), long_prefix],
        )
        .unwrap();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let r = kw.send("GET", "/api/v1/things", bearer(&token), "");
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert!(
        wait_until(Duration::from_secs(5), || kw.log().lines().any(|l| l
            .contains("keyward::access")
            && l.contains("/api/v1/things"))),
        "no access line: {}",
        kw.log()
    );
    let log = kw.log();
    for start in 0..=long_prefix.len() - 9 {
        let run = &long_prefix[start..start + 9];
        assert!(
            !log.contains(run),
            "`{run}`: more than 8 characters of the key prefix in the log: {log}"
        );
    }
}

/// Found by an outside attack on this change: Hono's `c.req.query(NAME)`
/// searches the raw URL for `?NAME=`, so a `?` inside the query starts a
/// second reading keyward's parser does not see.
#[test]
fn a_question_mark_inside_the_query_is_a_second_reading() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    for target in [
        "/api/v1/triggers??workspaceId=ws_b&workspaceId=ws_a1",
        "/api/v1/triggers?x=?workspaceId=ws_b&workspaceId=ws_a1",
        "/api/v1/workspaces/ws_a1/x??workspaceId=ws_b",
    ] {
        let r = kw.send("GET", target, bearer(&w.scoped_key), "");
        assert_denied(target, &r, 400, "BAD_REQUEST", "ambiguous_workspace");
    }
    assert_not_forwarded("second reading after ?", &up);
}

/// Found by an outside attack: body-parser decodes any `utf-*` charset, so
/// in UTF-7 `+ACI-` is a quote and hides a second workspaceId.
#[test]
fn an_inspected_body_in_another_charset_is_unsupported_media_type() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let body = r#"{"workspaceId":"ws_a1","a":"+ACI-,+ACI-workspaceId+ACI-:+ACI-ws_b+ACI-,+ACI-b+ACI-:+ACI-"}"#;
    for charset in ["utf-7", "UTF-16", "iso-8859-1"] {
        let headers = format!(
            "{}Content-Type: application/json; charset={charset}\r\n",
            bearer(&w.scoped_key)
        );
        let r = kw.send("POST", "/api/v1/connections", &headers, body);
        assert_denied(
            charset,
            &r,
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            "unsupported_media_type",
        );
    }
    assert_not_forwarded("charset", &up);
}

/// Found by an outside attack: Go's encoding/json and ASP.NET's
/// System.Text.Json match JSON field names ignoring case (the last wins).
#[test]
fn a_body_field_in_another_letter_case_is_ambiguous() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let headers = format!(
        "{}Content-Type: application/json\r\n",
        bearer(&w.scoped_key)
    );
    for body in [
        r#"{"workspaceId":"ws_a1","WorkspaceId":"ws_b"}"#,
        r#"{"workspaceId":"ws_a1","WORKSPACEID":"ws_b"}"#,
    ] {
        let r = kw.send("POST", "/api/v1/connections", &headers, body);
        assert_denied(body, &r, 400, "BAD_REQUEST", "ambiguous_workspace");
    }
    assert_not_forwarded("case variant", &up);
}

/// Found by an outside attack: a Host that is more than `host[:port]`
/// re-routes an upstream that builds `http://${host}${url}`.
#[test]
fn a_host_that_is_not_a_host_is_refused() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    for host in ["x/api/v1/workspaces/ws_b/connections?", "x#", "a b"] {
        let req = format!(
            "GET /api/v1/workspaces/ws_a1/x HTTP/1.1\r\nHost: {host}\r\n{}Connection: close\r\n\r\n",
            bearer(&w.scoped_key)
        );
        let r = raw(kw.addr, &req);
        assert_eq!(r.status, 400, "{host}: {}", r.body_str());
    }
    let r = raw(
        kw.addr,
        &format!(
            "GET /api/v1/workspaces/ws_a1/x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n{}Connection: close\r\n\r\n",
            bearer(&w.scoped_key)
        ),
    );
    assert_eq!(r.status, 400, "two Host headers: {}", r.body_str());
    assert_not_forwarded("host", &up);
}

/// Found by an outside attack: other client-address and URL-override
/// headers never reach the upstream as the client wrote them.
#[test]
fn other_client_address_and_url_override_headers_are_not_forwarded() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let claims = "X-Client-IP: 203.0.113.1\r\nTrue-Client-IP: 203.0.113.2\r\nCF-Connecting-IP: 203.0.113.3\r\n\
        Fastly-Client-IP: 203.0.113.4\r\nX-Cluster-Client-IP: 203.0.113.5\r\nX-Original-Forwarded-For: 203.0.113.6\r\n\
        X-ProxyUser-Ip: 203.0.113.7\r\nX-Original-URL: /api/v1/workspaces/ws_b/x\r\nx_rewrite_url: /admin\r\n";
    let r = kw.send(
        "GET",
        "/api/v1/workspaces/ws_a1/x",
        format!("{}{claims}", bearer(&w.scoped_key)),
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body_str());
    let seen = only_seen(&up);
    let head = seen.head.to_ascii_lowercase();
    for gone in ["203.0.113.", "ws_b", "/admin", "original-url", "rewrite"] {
        assert!(
            !head.contains(gone),
            "{gone} reached the upstream: {}",
            seen.head
        );
    }
}

// ------------------------------------- the response head the client reads

fn lower(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_ascii_lowercase()
}

/// Found by an outside attack: the upstream's hop-by-hop fields (and the
/// ones its `Connection` nominates) went down to the client, and its
/// HTTP/1.0 status line reached HTTP/1.1 clients.
#[test]
fn upstream_hop_by_hop_response_fields_stay_with_the_upstream() {
    let w = World::new();
    let kw = w.start(answering_upstream(
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\n\
          Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\nX-Hop: secret\r\nX-Kept: 1\r\n\
          Content-Length: 2\r\n\r\nok",
    ));
    let req = request_bytes("GET", "/api/v1/things", bearer(&w.org_key).as_bytes(), None);
    let got = exchange(kw.addr, &req, Duration::from_millis(500));
    let text = lower(&got);
    assert!(text.starts_with("http/1.1 200"), "{text}");
    for gone in ["keep-alive:", "proxy-connection:", "upgrade:", "x-hop:"] {
        assert!(!text.contains(gone), "{gone} went down: {text}");
    }
    assert!(
        text.contains("x-kept: 1") && text.ends_with("\r\n\r\nok"),
        "{text}"
    );
    // the Connection the client reads is keyward's own
    assert_eq!(text.matches("connection:").count(), 1, "{text}");
    assert!(text.contains("connection: close"), "{text}");
}

/// Found by an outside attack: a 204 carrying `Content-Length` and
/// `Transfer-Encoding` went down as sent (HTTP/2 clients failed the stream,
/// HTTP/1.1 clients may wait for a body that never comes).
#[test]
fn a_bodyless_status_goes_down_without_framing_fields() {
    let w = World::new();
    let kw = w.start(answering_upstream(
        b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nX-Kept: 1\r\n\r\n",
    ));
    let req = request_bytes("GET", "/api/v1/things", bearer(&w.org_key).as_bytes(), None);
    let got = exchange(kw.addr, &req, Duration::from_millis(500));
    let text = lower(&got);
    assert!(text.starts_with("http/1.1 204"), "{text}");
    assert!(
        !text.contains("content-length") && !text.contains("transfer-encoding"),
        "{text}"
    );
    assert!(
        text.contains("x-kept: 1") && text.ends_with("\r\n\r\n"),
        "{text}"
    );
}

/// Found by an outside attack: an HTTP/1.0 client got the upstream's 103
/// and a chunked body, neither of which HTTP/1.0 can read (RFC 9110
/// §15.2, RFC 9112 §7.1): it now gets the final answer, its body
/// close-delimited.
#[test]
fn an_http10_client_gets_no_interim_answer_and_no_chunked_body() {
    let w = World::new();
    let kw = w.start(answering_upstream(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
          HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ));
    let req = format!(
        "GET /api/v1/things HTTP/1.0\r\nHost: kw.test\r\n{}\r\n",
        bearer(&w.org_key)
    );
    let got = exchange(kw.addr, req.as_bytes(), Duration::from_secs(2));
    let text = lower(&got);
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(!text.contains("103") && !text.contains("link:"), "{text}");
    assert!(!text.contains("transfer-encoding"), "{text}");
    assert!(text.ends_with("\r\n\r\nhello"), "{text}");
    // the same upstream to an HTTP/1.1 client: the 103 is relayed, chunked
    let req = request_bytes("GET", "/api/v1/things", bearer(&w.org_key).as_bytes(), None);
    let text = lower(&exchange(kw.addr, &req, Duration::from_millis(500)));
    assert!(text.starts_with("http/1.1 103"), "{text}");
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
}

/// RFC 9112 §3.2: an HTTP/1.1 request without `Host` is 400, never
/// forwarded for the upstream to pick a virtual host; HTTP/1.0 may omit
/// it, but keyward forwards as HTTP/1.1, so it needs one too.
#[test]
fn an_http11_request_without_host_is_refused() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let req = format!(
        "GET /api/v1/things HTTP/1.1\r\n{}Connection: close\r\n\r\n",
        bearer(&w.org_key)
    );
    let r = raw(kw.addr, &req);
    r.assert_error(400, "BAD_REQUEST");
    assert_eq!(reason(&r), "missing_host");
    assert_not_forwarded("no host", &up);
    // nor HTTP/1.0, which keyward would forward as HTTP/1.1 without Host,
    // nor an absolute-form target in place of Host
    for req in [
        format!("GET /api/v1/things HTTP/1.0\r\n{}\r\n", bearer(&w.org_key)),
        format!(
            "GET http://kw.test/api/v1/things HTTP/1.1\r\n{}Connection: close\r\n\r\n",
            bearer(&w.org_key)
        ),
    ] {
        assert_eq!(reason(&raw(kw.addr, &req)), "missing_host", "{req}");
    }
    assert_not_forwarded("no host", &up);
    let req = format!(
        "GET /api/v1/things HTTP/1.0\r\nHost: kw.test\r\n{}\r\n",
        bearer(&w.org_key)
    );
    assert_eq!(raw(kw.addr, &req).status, 200);
}

/// Found by an outside attack: a close-delimited answer (an HTTP/1.0
/// upstream's) went down with `Connection: keep-alive`, then keyward closed.
#[test]
fn a_close_delimited_answer_says_connection_close() {
    let w = World::new();
    let kw = w.start(answering_upstream(
        b"HTTP/1.0 200 OK\r\nX-A: 1\r\n\r\nbody-until-close",
    ));
    let req = format!(
        "GET /api/v1/things HTTP/1.1\r\nHost: kw.test\r\n{}\r\n",
        bearer(&w.org_key)
    );
    let text = lower(&exchange(kw.addr, req.as_bytes(), Duration::from_secs(2)));
    assert!(
        text.contains("connection: close") && !text.contains("keep-alive"),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\nbody-until-close"), "{text}");
}

/// Found by an outside attack: `Transfer-Encoding: chunked,` is framed
/// close-delimited by pingora (its last token is empty) but chunked by a
/// client (empty list elements are skipped, RFC 9110 §5.6.1); relayed, the
/// bytes after the last chunk were a second response to the client. Refused.
#[test]
fn a_transfer_encoding_read_two_ways_is_bad_gateway() {
    let w = World::new();
    let kw = w.start(answering_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
          HTTP/1.1 200 OK\r\nContent-Length: 8\r\nX-Injected: 1\r\n\r\nINJECTED",
    ));
    let r = send_bytes(
        kw.addr,
        "GET",
        "/api/v1/things",
        bearer(&w.org_key).as_bytes(),
        None,
    );
    r.assert_error(502, "UPSTREAM_UNAVAILABLE");
    assert!(!r.body_str().contains("INJECTED"));
}
