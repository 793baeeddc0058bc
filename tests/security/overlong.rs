//! Overlong input: tokens, header lines, header blocks, paths. Each gets a
//! clear refusal, the process survives, and keyward keeps serving.
use super::*;
use std::time::Duration;

#[test]
fn overlong_tokens_are_401_malformed_and_service_continues() {
    let w = World::new();
    let session = w.snap.session("user_1", Some("org_a"), now() + 3600);
    let mut kw = w.start(echo());
    let big = format!("wvz_{}", "A".repeat(100 * 1024));
    // Authorization: 100 KB token
    let r = kw.get("/api/v1/things", Some(&big));
    r.assert_error(401, "UNAUTHENTICATED");
    assert_eq!(reason(&r), "malformed_token");
    assert!(!r.body_str().contains("AAAA"), "token echoed");
    // the boundary: 4096 characters are looked up (unknown), 4097 refused unparsed
    let at = format!("wvz_{}", "B".repeat(4096 - 4));
    let over = format!("wvz_{}", "B".repeat(4097 - 4));
    let r = kw.get("/api/v1/things", Some(&at));
    r.assert_error(401, "UNAUTHENTICATED");
    assert_ne!(reason(&r), "malformed_token");
    let r = kw.get("/api/v1/things", Some(&over));
    r.assert_error(401, "UNAUTHENTICATED");
    assert_eq!(reason(&r), "malformed_token");
    // X-Service-Key: 100 KB
    let r = kw.request("GET", "/api/v1/things", &[("X-Service-Key", &big)], "");
    r.assert_error(401, "UNAUTHENTICATED");
    assert_eq!(reason(&r), "malformed_service_key");
    // session cookie: a valid cookie padded to 100 KB no longer verifies
    let cookie = format!(
        "better-auth.session_token={session}{}",
        "C".repeat(100 * 1024)
    );
    let r = kw.request("GET", "/api/v1/things", &[("Cookie", &cookie)], "");
    r.assert_error(401, "UNAUTHENTICATED");
    assert_eq!(reason(&r), "bad_session_signature");
    // 100 KB of other cookies next to a valid session cookie is fine
    let cookie = format!(
        "junk={}; better-auth.session_token={session}",
        "j".repeat(100 * 1024)
    );
    let r = kw.request("GET", "/api/v1/things", &[("Cookie", &cookie)], "");
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.upstream_header("x-user-id"), vec!["user_1"]);
    assert_alive(&mut kw);
    assert_eq!(kw.get("/api/v1/things", Some(&w.org_key)).status, 200);
}

#[test]
fn oversized_header_blocks_are_refused_400_and_service_continues() {
    let w = World::new();
    let up = RawUpstream::start();
    let mut kw = w.start(up.addr);
    let auth = bearer(&w.org_key);
    let quiet = Duration::from_millis(400);
    // (case, extra header lines)
    let cases: Vec<(&str, String)> = vec![
        // one header line just over 1 MiB
        (
            "1 MiB header line",
            format!("X-Big: {}\r\n", "x".repeat(1024 * 1024 + 16)),
        ),
        // 1 MiB spread over 64 lines of 16 KiB
        (
            "1 MiB header block",
            (0..64)
                .map(|i| format!("X-Big-{i}: {}\r\n", "y".repeat(16 * 1024)))
                .collect(),
        ),
        // more header lines than pingora's parser accepts (256)
        (
            "300 headers",
            (0..300).map(|i| format!("X-H{i}: v\r\n")).collect(),
        ),
    ];
    for (case, extra) in cases {
        let req = format!("GET /api/v1/things HTTP/1.1\r\nHost: kw.test\r\n{auth}{extra}\r\n");
        let out = exchange(kw.addr, req.as_bytes(), quiet);
        // pingora's parser refuses before keyward sees the request: a bare 400,
        // or a reset if the client is still writing when the socket closes
        if !out.is_empty() {
            let resps = parse_responses(&out);
            assert_eq!(resps.len(), 1, "{case}");
            assert_eq!(
                resps[0].status,
                400,
                "{case}: {}",
                String::from_utf8_lossy(&out[..out.len().min(300)])
            );
        }
        assert_eq!(up.count(), 0, "{case}: forwarded");
        assert_alive(&mut kw);
    }
    // 250 headers (under the cap) still pass and all reach the upstream
    let extra: String = (0..250).map(|i| format!("X-H{i}: v\r\n")).collect();
    let req = format!(
        "GET /api/v1/many HTTP/1.1\r\nHost: kw.test\r\n{auth}{extra}Connection: close\r\n\r\n"
    );
    let r = raw(kw.addr, &req);
    assert_eq!(r.status, 200);
    assert_eq!(up.seen()[0].header("x-h249"), vec!["v"]);
    assert_eq!(kw.get("/api/v1/after", Some(&w.org_key)).status, 200);
}

#[test]
fn overlong_paths_are_refused_or_forwarded_exactly() {
    let w = World::new();
    let up = RawUpstream::start();
    let mut kw = w.start(up.addr);
    // more than 64 segments: keyward refuses to match them
    let deep = "/a".repeat(65);
    kw.get(&deep, Some(&w.org_key))
        .assert_error(400, "BAD_REQUEST");
    let deep_dots = format!("{}/x/..", "/a".repeat(65));
    kw.get(&deep_dots, Some(&w.org_key))
        .assert_error(400, "BAD_REQUEST");
    // 64 segments pass
    let ok = "/a".repeat(64);
    assert_eq!(kw.get(&ok, Some(&w.org_key)).status, 200);
    // a 60 KB single segment: forwarded byte for byte (the upstream decides)
    let long = format!("/api/v1/{}", "p".repeat(60 * 1024));
    let r = kw.get(&long, Some(&w.org_key));
    assert_eq!(r.status, 200);
    assert_eq!(up.targets().last().unwrap(), &long);
    // a 60 KB workspace id is refused before any lookup (SPEC §5.1)
    let long_ws = format!("/api/v1/workspaces/{}/x", "w".repeat(60 * 1024));
    let r = kw.get(&long_ws, Some(&w.scoped_key));
    r.assert_error(400, "BAD_REQUEST");
    assert_eq!(reason(&r), "malformed_id");
    // past 64 KiB the target no longer fits http::Uri: pingora answers a bare
    // 400 before keyward sees the request
    let huge = format!("/api/v1/{}", "p".repeat(100 * 1024));
    let r = kw.get(&huge, Some(&w.org_key));
    assert_eq!(r.status, 400);
    assert_alive(&mut kw);
    assert_eq!(up.count(), 2);
}
