//! Malformed and ambiguous credentials (SPEC §3): anything but one
//! `Authorization: Bearer <token>` is 401, never rescued by another
//! credential; non-UTF-8 bytes give a JSON 4xx, never a 5xx.
use super::*;

#[test]
fn authorization_header_forms() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let k = &w.org_key;
    // (header value, expected reason) — all 401 UNAUTHENTICATED
    let refused: Vec<(String, &str)> = vec![
        ("Bearer".into(), "malformed_authorization"),
        ("Bearer ".into(), "malformed_authorization"),
        ("Bearer     ".into(), "malformed_authorization"),
        ("".into(), "malformed_authorization"),
        (" ".into(), "malformed_authorization"),
        (k.clone(), "malformed_authorization"),
        (format!("Bearer\t{k}"), "malformed_authorization"),
        (format!("Bearer:{k}"), "malformed_authorization"),
        (format!("Basic {k}"), "unsupported_scheme"),
        (format!("Token {k}"), "unsupported_scheme"),
        (format!("Bearerx {k}"), "unsupported_scheme"),
        (format!("wvz {k}"), "unsupported_scheme"),
        (format!("Bearer {k} extra"), "malformed_token"),
        (format!("Bearer {k},{k}"), "unknown"),
        (format!("Bearer {k}, Bearer {k}"), "malformed_token"),
        (format!("Bearer \"{k}\""), "unknown_token_type"),
        ("Bearer xyz_unknown_kind".into(), "unknown_token_type"),
        (
            format!("Bearer {}", k.to_ascii_uppercase()),
            "unknown_token_type",
        ),
    ];
    for (value, want) in &refused {
        let r = kw.send_head(
            "/api/v1/things",
            format!("Authorization: {value}\r\n").as_bytes(),
        );
        r.assert_error(401, "UNAUTHENTICATED");
        assert_eq!(reason(&r), *want, "Authorization: {value:?}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    assert_eq!(up.count(), 0, "{:?}", up.seen());
    // accepted: scheme in any case, one or more spaces, trailing whitespace
    for value in [
        format!("Bearer {k}"),
        format!("bearer {k}"),
        format!("BEARER {k}"),
        format!("bEaReR     {k}"),
        format!("Bearer {k}   "),
    ] {
        let r = kw.send_head(
            "/api/v1/things",
            format!("Authorization: {value}\r\n").as_bytes(),
        );
        assert_eq!(r.status, 200, "Authorization: {value:?}: {}", r.body_str());
    }
    assert_eq!(up.count(), 5);
}

#[test]
fn several_authorization_headers_are_401_and_nothing_rescues_them() {
    let w = World::new();
    let session = w.snap.session("user_1", Some("org_a"), now() + 3600);
    let service = w.snap.service_key(false);
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let good = bearer(&w.org_key);
    let other = bearer(&w.scoped_key);
    let cases = [
        ("same key twice", format!("{good}{good}")),
        ("two valid keys", format!("{good}{other}")),
        ("valid then garbage", format!("{good}Authorization: Basic Zm9vOmJhcg==\r\n")),
        ("garbage then valid", format!("Authorization: Basic Zm9vOmJhcg==\r\n{good}")),
        ("empty then valid", format!("Authorization: \r\n{good}")),
        ("case-spelled twice", format!("{good}authorization: Bearer {}\r\n", w.org_key)),
        (
            "several, plus a valid service key and session",
            format!(
                "{good}{good}X-Service-Key: {service}\r\nCookie: better-auth.session_token={session}\r\n"
            ),
        ),
        (
            "one bad Authorization beside valid service key and session",
            format!(
                "Authorization: Bearer\r\nX-Service-Key: {service}\r\nX-Org-ID: org_a\r\nCookie: better-auth.session_token={session}\r\n"
            ),
        ),
    ];
    for (case, lines) in &cases {
        let r = kw.send_head("/api/v1/things", lines.as_bytes());
        r.assert_error(401, "UNAUTHENTICATED");
        let want = if case.starts_with("one bad") {
            "malformed_authorization"
        } else {
            "multiple_authorization_headers"
        };
        assert_eq!(reason(&r), want, "{case}");
    }
    assert_eq!(up.count(), 0, "{:?}", up.seen());
}

#[test]
fn non_utf8_bytes_give_a_4xx_never_a_5xx() {
    let w = World::new();
    let session = w.snap.session("user_1", Some("org_a"), now() + 3600);
    let service = w.snap.service_key(false);
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let cases: Vec<(&str, Vec<u8>, u16, &str, &str)> = vec![
        (
            "Authorization",
            b"Authorization: Bearer wvz_\xff\xfe\x80\r\n".to_vec(),
            401,
            "UNAUTHENTICATED",
            "malformed_authorization",
        ),
        (
            "Authorization scheme",
            b"Authorization: B\xe9arer wvz_abc\r\n".to_vec(),
            401,
            "UNAUTHENTICATED",
            "malformed_authorization",
        ),
        (
            "latin-1 session cookie",
            b"Cookie: better-auth.session_token=\xe9\xff.sig\r\n".to_vec(),
            401,
            "UNAUTHENTICATED",
            "malformed_session_cookie",
        ),
        (
            "X-Service-Key",
            b"X-Service-Key: svc_\xff\r\n".to_vec(),
            401,
            "UNAUTHENTICATED",
            "unknown",
        ),
        (
            "X-Org-ID of a service key",
            [
                format!("X-Service-Key: {service}\r\nX-Org-ID: org_").as_bytes(),
                b"\xff\xfe\r\n",
            ]
            .concat(),
            403,
            "FORBIDDEN",
            "unknown_organization",
        ),
    ];
    for (case, lines, status, code, why) in &cases {
        let r = kw.send_head("/api/v1/things", lines);
        r.assert_error(*status, code);
        assert_eq!(reason(&r), *why, "{case}");
    }
    // a workspace taken from a header must be a visible-ASCII id
    let mut lines = bearer(&w.org_key).into_bytes();
    lines.extend_from_slice(b"X-Target-Workspace: ws_\xff\r\n");
    let r = kw.send_head("/api/v1/by-header", &lines);
    r.assert_error(400, "BAD_REQUEST");
    assert_eq!(reason(&r), "malformed_id");
    assert_eq!(up.count(), 0, "{:?}", up.seen());

    // A non-UTF-8 Cookie header beside a valid one must not hide a second
    // copy of the session cookie from the duplicate check (SPEC §3.3, docs/credentials-and-routes.md:
    // the same cookie name twice with different values is 401).
    let valid = format!("Cookie: better-auth.session_token={session}\r\n");
    for (hidden, why) in [
        (
            &b"Cookie: theme=\xff; better-auth.session_token=other.c2ln\r\n"[..],
            "ambiguous_session_cookie",
        ),
        (
            b"Cookie: better-auth.session_token=other\xff.sig\r\n",
            "malformed_session_cookie",
        ),
    ] {
        let lines = [valid.as_bytes(), hidden].concat();
        let r = kw.send_head("/api/v1/things", &lines);
        r.assert_error(401, "UNAUTHENTICATED");
        assert_eq!(reason(&r), why);
    }
    assert_eq!(up.count(), 0, "{:?}", up.seen());
    // and non-ASCII bytes in another cookie do not hide a valid session cookie
    let mut lines = b"Cookie: theme=caf\xc3\xa9; ".to_vec();
    lines.extend_from_slice(&valid.as_bytes()["Cookie: ".len()..]);
    let r = kw.send_head("/api/v1/things", &lines);
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(up.seen()[0].header("x-user-id"), vec!["user_1"]);
    assert_eq!(up.count(), 1);

    // non-UTF-8 in the request target never reaches keyward's router: pingora
    // answers 400 (a bare one: its parser has no hook for a JSON body)
    for target in [
        &b"/api/v1/workspaces/ws_a1\xff/x"[..],
        b"/api/v1/things?workspaceId=\xfe",
        b"/api/v1/\xc0\xaf../api-keys",
    ] {
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(target);
        req.extend_from_slice(b" HTTP/1.1\r\nHost: kw.test\r\n");
        req.extend_from_slice(bearer(&w.scoped_key).as_bytes());
        req.extend_from_slice(b"Connection: close\r\n\r\n");
        let r = raw_bytes(kw.addr, &req);
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(target));
    }
    assert_eq!(up.count(), 1, "{:?}", up.seen());
}
