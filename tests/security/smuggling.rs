//! Request smuggling (SPEC §7: malformed framing is answered 400 or the
//! connection is closed, and never forwarded). The smuggled request always
//! targets a path with a unique marker that keyward would refuse (401/403),
//! and the raw upstream shows whether it ever arrived.
use super::*;
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(400);

/// How keyward must refuse a request.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// keyward's own JSON 400 BAD_REQUEST
    Json,
    /// refused by pingora's HTTP/1 parser before keyward sees the request:
    /// keyward's JSON 400 with reason `malformed_request`
    Parser,
}

fn assert_refused(case: &str, out: &[u8], how: Refusal, up: &RawUpstream) {
    assert!(
        !out.is_empty(),
        "{case}: connection closed without a response"
    );
    let resps = parse_responses(out);
    assert_eq!(
        resps.len(),
        1,
        "{case}: expected exactly one response, got {:?}",
        String::from_utf8_lossy(out)
    );
    let r = &resps[0];
    match how {
        Refusal::Json => r.assert_error(400, "BAD_REQUEST"),
        Refusal::Parser => {
            r.assert_error(400, "BAD_REQUEST");
            assert!(
                r.body_str().contains("malformed_request"),
                "{case}: {}",
                r.body_str()
            );
        }
    }
    assert_eq!(
        up.count(),
        0,
        "{case}: forwarded to the upstream: {:?}",
        up.seen()
    );
}

/// A request whose body carries a second, smuggled request.
fn smuggled(marker: &str, auth: &str) -> String {
    format!("GET /api/v1/api-keys/{marker} HTTP/1.1\r\nHost: kw.test\r\n{auth}\r\n")
}

#[test]
fn content_length_with_transfer_encoding_is_refused_and_never_forwarded() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let auth = bearer(&w.org_key);
    let scoped = bearer(&w.scoped_key);

    // CL.TE: Content-Length covers the smuggled request, chunked ends before it
    let inner = smuggled("SMUGGLED-CLTE", &scoped);
    let body = format!("0\r\n\r\n{inner}");
    let cl_te = format!(
        "POST /api/v1/x HTTP/1.1\r\nHost: kw.test\r\n{auth}Content-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{body}",
        body.len()
    );
    // TE.CL: chunked carries the smuggled request, Content-Length stops before it
    let inner = smuggled("SMUGGLED-TECL", "");
    let body = format!("{:x}\r\n{inner}\r\n0\r\n\r\n", inner.len());
    let te_cl = format!(
        "POST /api/v1/x HTTP/1.1\r\nHost: kw.test\r\n{auth}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{body}"
    );
    // both headers, differently spelled, on an auth = "none" route
    let inner = smuggled("SMUGGLED-NONE", "");
    let body = format!("0\r\n\r\n{inner}");
    let none_route = format!(
        "POST /api/auth/sign-in HTTP/1.1\r\nHost: kw.test\r\ncontent-length: {}\r\ntransfer-encoding: chunked\r\n\r\n{body}",
        body.len()
    );
    // an unauthenticated request with both: refused before the credential check
    let body = format!("0\r\n\r\n{}", smuggled("SMUGGLED-NOAUTH", ""));
    let no_auth = format!(
        "POST /api/v1/x HTTP/1.1\r\nHost: kw.test\r\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    for (case, req) in [
        ("CL.TE", cl_te),
        ("TE.CL", te_cl),
        ("auth=none", none_route),
        ("no credential", no_auth),
    ] {
        let out = exchange(kw.addr, req.as_bytes(), QUIET);
        assert!(
            !up.saw("SMUGGLED"),
            "{case}: the upstream received a smuggled request: {:?}",
            up.seen()
        );
        assert_refused(case, &out, Refusal::Json, &up);
    }
    // still serving
    assert_eq!(kw.get("/api/v1/after", Some(&w.org_key)).status, 200);
    assert_eq!(up.targets(), vec!["/api/v1/after"]);
}

#[test]
fn duplicate_and_invalid_content_length_are_refused() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let auth = bearer(&w.org_key);
    let smuggle = smuggled("SMUGGLED-CL", "");
    let cases: Vec<(&str, String, Refusal)> = vec![
        // differing values: the first frames "hello", the second the smuggled request
        (
            "differing",
            format!(
                "POST /api/v1/x HTTP/1.1\r\nHost: kw.test\r\n{auth}Content-Length: 5\r\nContent-Length: {}\r\n\r\nhello{smuggle}",
                5 + smuggle.len()
            ),
            Refusal::Parser,
        ),
        // equal values (RFC 9110 lets a recipient collapse them; SPEC §7 refuses)
        (
            "equal",
            format!(
                "POST /api/v1/x HTTP/1.1\r\nHost: kw.test\r\n{auth}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello"
            ),
            Refusal::Json,
        ),
        (
            "comma list",
            format!(
                "POST /api/v1/x HTTP/1.1\r\nHost: kw.test\r\n{auth}Content-Length: 5, 5\r\n\r\nhello"
            ),
            Refusal::Json,
        ),
        (
            "signed",
            format!(
                "POST /api/v1/x HTTP/1.1\r\nHost: kw.test\r\n{auth}Content-Length: +5\r\n\r\nhello"
            ),
            Refusal::Parser,
        ),
        (
            "hex",
            format!(
                "POST /api/v1/x HTTP/1.1\r\nHost: kw.test\r\n{auth}Content-Length: 0x5\r\n\r\nhello"
            ),
            Refusal::Parser,
        ),
        (
            "negative",
            format!(
                "POST /api/v1/x HTTP/1.1\r\nHost: kw.test\r\n{auth}Content-Length: -1\r\n\r\nhello"
            ),
            Refusal::Parser,
        ),
    ];
    for (case, req, how) in cases {
        let out = exchange(kw.addr, req.as_bytes(), QUIET);
        assert!(!up.saw("SMUGGLED"), "{case}: {:?}", up.seen());
        assert_refused(case, &out, how, &up);
    }
    assert_eq!(kw.get("/api/v1/after", Some(&w.org_key)).status, 200);
}

#[test]
fn obs_fold_and_bad_transfer_encodings_are_refused() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let auth = bearer(&w.org_key);
    let h = |extra: &str, body: &str| {
        format!("POST /api/v1/x HTTP/1.1\r\nHost: kw.test\r\n{auth}{extra}\r\n{body}")
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "obs-fold",
            h("X-Foo: a\r\n folded\r\nContent-Length: 0\r\n", ""),
        ),
        (
            "obs-fold tab",
            h("X-Foo: a\r\n\tfolded\r\nContent-Length: 0\r\n", ""),
        ),
        (
            "obs-fold on Transfer-Encoding",
            h("Transfer-Encoding: identity\r\n chunked\r\n", "0\r\n\r\n"),
        ),
        (
            "obs-fold on Content-Length",
            h("Content-Length: 0\r\n 5\r\n", "hello"),
        ),
        (
            "obs-fold on an identity header",
            h("X-Org-ID: org_a\r\n org_b\r\nContent-Length: 0\r\n", ""),
        ),
        (
            "space before colon",
            h("Transfer-Encoding : chunked\r\n", "0\r\n\r\n"),
        ),
        ("identity coding", h("Transfer-Encoding: identity\r\n", "")),
        (
            "chunked not last",
            h("Transfer-Encoding: chunked, identity\r\n", "0\r\n\r\n"),
        ),
        (
            "chunked then identity",
            h(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                "0\r\n\r\n",
            ),
        ),
        (
            "unknown coding",
            h("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"),
        ),
    ];
    for (case, req) in cases {
        let out = exchange(kw.addr, req.as_bytes(), QUIET);
        assert_refused(case, &out, Refusal::Parser, &up);
    }
    // Transfer-Encoding on HTTP/1.0 is faulty framing (RFC 9112 §6.1)
    let req = format!(
        "POST /api/v1/x HTTP/1.0\r\nHost: kw.test\r\n{auth}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    );
    let out = exchange(kw.addr, req.as_bytes(), QUIET);
    assert_refused("HTTP/1.0 chunked", &out, Refusal::Parser, &up);
    assert_eq!(kw.get("/api/v1/after", Some(&w.org_key)).status, 200);
}

#[test]
fn a_request_inside_a_chunked_body_stays_a_body() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let auth = bearer(&w.org_key);
    let inner = smuggled("INNER-MARKER", "");
    let body = format!("{:x}\r\n{inner}\r\n0\r\n\r\n", inner.len());
    // keep-alive: a follow-up request on the same connection must be judged on its own
    let follow =
        "GET /api/v1/api-keys/FOLLOW-MARKER HTTP/1.1\r\nHost: kw.test\r\nConnection: close\r\n\r\n";
    let req = format!(
        "POST /api/v1/upload HTTP/1.1\r\nHost: kw.test\r\n{auth}Transfer-Encoding: chunked\r\n\r\n{body}"
    );
    let out = exchange(kw.addr, req.as_bytes(), QUIET);
    let resps = parse_responses(&out);
    assert_eq!(resps.len(), 1, "{}", String::from_utf8_lossy(&out));
    assert_eq!(resps[0].status, 200);
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].target_str(), "/api/v1/upload");
    assert_eq!(seen[0].body, inner.as_bytes(), "the body arrives intact");
    assert!(!up.saw_request_for("INNER-MARKER"));
    // the same, with the unauthenticated follow-up pipelined behind it
    let out = exchange(kw.addr, format!("{req}{follow}").as_bytes(), QUIET);
    let resps = parse_responses(&out);
    assert!(!resps.is_empty());
    assert_eq!(resps[0].status, 200);
    for r in &resps[1..] {
        r.assert_error(401, "UNAUTHENTICATED");
    }
    assert!(!up.saw_request_for("FOLLOW-MARKER"), "{:?}", up.seen());
    assert_eq!(up.count(), 2);
}

#[test]
fn pipelined_requests_are_each_judged_on_their_own() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let first = format!(
        "GET /api/v1/first HTTP/1.1\r\nHost: kw.test\r\n{}\r\n",
        bearer(&w.org_key)
    );
    let scoped = format!(
        "GET /api/v1/api-keys/PIPE-SCOPED HTTP/1.1\r\nHost: kw.test\r\n{}\r\n",
        bearer(&w.scoped_key)
    );
    let anon = "GET /api/v1/PIPE-ANON HTTP/1.1\r\nHost: kw.test\r\nConnection: close\r\n\r\n";
    let out = exchange(kw.addr, format!("{first}{scoped}{anon}").as_bytes(), QUIET);
    let resps = parse_responses(&out);
    assert!(!resps.is_empty(), "no response");
    assert_eq!(resps[0].status, 200);
    // pingora 0.9 (pipelining off) answers the first and closes; when it does
    // answer the others, it must be with their own verdicts
    if let Some(r) = resps.get(1) {
        r.assert_error(403, "FORBIDDEN");
    }
    if let Some(r) = resps.get(2) {
        r.assert_error(401, "UNAUTHENTICATED");
    }
    assert_eq!(up.targets(), vec!["/api/v1/first"], "{:?}", up.seen());
}
