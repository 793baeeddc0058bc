//! Identity headers (SPEC §4): every client-sent copy is removed — any letter
//! case, underscore spellings, duplicates, comma lists — and the upstream
//! sees only keyward's values, for every kind of credential.
use super::*;
use std::collections::HashMap;

/// The identity headers of SPEC §4, plus `X-Service-Key` (never forwarded).
const IDENTITY: [&str; 9] = [
    "X-Org-ID",
    "X-Auth-Method",
    "X-Api-Key-ID",
    "X-User-ID",
    "X-Workspace-ID",
    "X-Allowed-Workspaces",
    "X-MCP-Server-ID",
    "X-End-User-ID",
    "X-Service-Key",
];

/// Letter-case and underscore spellings of a header name.
fn spellings(name: &str) -> Vec<String> {
    let lower = name.to_ascii_lowercase();
    let upper = name.to_ascii_uppercase();
    let alternating: String = lower
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    let mut out = vec![
        name.to_string(),
        lower.clone(),
        upper.clone(),
        alternating.clone(),
    ];
    for base in [name, &lower, &upper, &alternating] {
        out.push(base.replace('-', "_"));
        // one dash at a time: X_Org-ID, X-Org_ID
        for (i, _) in base.match_indices('-') {
            let mut s = base.to_string();
            s.replace_range(i..i + 1, "_");
            out.push(s);
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Spoofed copies of every identity header except `skip` (lowercase names
/// whose dash spelling the credential itself uses, e.g. a service key's X-Org-ID).
fn spoofs(skip: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut n = 0;
    for name in IDENTITY {
        for spelling in spellings(name) {
            if skip.contains(&spelling.to_ascii_lowercase().as_str()) {
                continue;
            }
            n += 1;
            out.push((spelling, format!("spoofed-{n}")));
        }
        if skip.contains(&name.to_ascii_lowercase().as_str()) {
            continue;
        }
        // duplicated, and hidden in comma lists that start with a plausible value
        out.push((name.to_string(), "org_b, spoofed-list".into()));
        out.push((name.to_string(), "spoofed-dup".into()));
        out.push((name.to_string(), "ws_b,spoofed-csv".into()));
    }
    out
}

/// The upstream's view must hold exactly `expected` for the identity headers
/// (lowercase dash names), no underscore spellings, and no spoofed value anywhere.
fn assert_identity(case: &str, r: &Resp, expected: &[(&str, &str)]) {
    assert_eq!(r.status, 200, "{case}: {}", r.body_str());
    let up = r.upstream_headers();
    for (name, values) in &up {
        for v in values {
            assert!(
                !v.contains("spoofed"),
                "{case}: `{name}: {v}` reached the upstream"
            );
        }
    }
    let want: HashMap<&str, &str> = expected.iter().copied().collect();
    for name in IDENTITY {
        let lower = name.to_ascii_lowercase();
        let got = up.get(&lower).cloned().unwrap_or_default();
        match want.get(lower.as_str()) {
            Some(v) => assert_eq!(got, vec![v.to_string()], "{case}: {lower}"),
            None => assert!(got.is_empty(), "{case}: {lower} = {got:?}"),
        }
        for spelling in spellings(name) {
            let l = spelling.to_ascii_lowercase();
            if l != lower {
                assert!(!up.contains_key(&l), "{case}: `{l}` reached the upstream");
            }
        }
    }
}

fn send(kw: &Keyward, path: &str, credential: &[(&str, &str)], skip: &[&str]) -> Resp {
    let spoofed = spoofs(skip);
    let mut headers: Vec<(&str, &str)> = spoofed
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    headers.extend_from_slice(credential);
    assert!(headers.len() < 250, "stay under pingora's 256-header cap");
    kw.request("GET", path, &headers, "")
}

#[test]
fn spoofed_identity_headers_never_reach_the_upstream_for_any_credential() {
    let w = World::new();
    let cookie = w.snap.session("user_1", Some("org_a"), now() + 3600);
    let service = w.snap.service_key(false);
    w.snap.mcp_server("srv_1", "org_a", "ws_a1", "bearer");
    let mcp = w.snap.mcp_token("srv_1", "end_user", Some("eu_1"));
    let kw = w.start(echo());
    let org_auth = format!("Bearer {}", w.org_key);
    let scoped_auth = format!("Bearer {}", w.scoped_key);
    let cookie = format!("better-auth.session_token={cookie}");
    let mcp_auth = format!("Bearer {mcp}");

    let r = send(&kw, "/api/v1/things", &[("Authorization", &org_auth)], &[]);
    assert_identity(
        "org-wide key",
        &r,
        &[
            ("x-org-id", "org_a"),
            ("x-auth-method", "api_key"),
            ("x-api-key-id", &w.org_key_id),
        ],
    );

    let r = send(
        &kw,
        "/api/v1/workspaces/ws_a1/things",
        &[("Authorization", &scoped_auth)],
        &[],
    );
    assert_identity(
        "scoped key",
        &r,
        &[
            ("x-org-id", "org_a"),
            ("x-auth-method", "api_key"),
            ("x-api-key-id", &w.scoped_key_id),
            ("x-workspace-id", "ws_a1"),
            ("x-allowed-workspaces", "ws_a1"),
        ],
    );

    // X-Service-Key is a credential that outranks the cookie: spoofing its
    // dash spelling here would (rightly) make this a service-key request
    let r = send(
        &kw,
        "/api/v1/things",
        &[("Cookie", &cookie)],
        &["x-service-key"],
    );
    assert_identity(
        "session",
        &r,
        &[
            ("x-org-id", "org_a"),
            ("x-auth-method", "session"),
            ("x-user-id", "user_1"),
        ],
    );

    // A service key names its organization in X-Org-ID (its one legitimate
    // use); the other spellings are still spoofs.
    let r = send(
        &kw,
        "/api/v1/things",
        &[("X-Service-Key", &service), ("X-Org-ID", "org_a")],
        &["x-org-id", "x-service-key"],
    );
    assert_identity(
        "service key",
        &r,
        &[("x-org-id", "org_a"), ("x-auth-method", "service_key")],
    );

    let r = send(&kw, "/mcp/srv_1/sse", &[("Authorization", &mcp_auth)], &[]);
    assert_identity(
        "mcp token",
        &r,
        &[
            ("x-org-id", "org_a"),
            ("x-auth-method", "mcp_bearer"),
            ("x-mcp-server-id", "srv_1"),
            ("x-end-user-id", "eu_1"),
            ("x-workspace-id", "ws_a1"),
        ],
    );

    let r = send(&kw, "/api/auth/session", &[], &[]);
    assert_identity("auth = none", &r, &[]);
}

#[test]
fn service_key_organization_must_be_one_plain_value() {
    let w = World::new();
    let service = w.snap.service_key(false);
    let kw = w.start(echo());
    let cases: [(&str, &[(&str, &str)]); 4] = [
        ("comma list", &[("X-Org-ID", "org_a, org_b")]),
        ("duplicate", &[("X-Org-ID", "org_a"), ("X-Org-ID", "org_b")]),
        (
            "case duplicate",
            &[("X-Org-ID", "org_a"), ("x-org-id", "org_a")],
        ),
        ("unknown", &[("X-Org-ID", "org_zzz")]),
    ];
    for (case, org_headers) in cases {
        let mut headers = vec![("X-Service-Key", service.as_str())];
        headers.extend_from_slice(org_headers);
        let r = kw.request("GET", "/api/v1/things", &headers, "");
        assert_eq!(r.status, 403, "{case}: {}", r.body_str());
        r.assert_error(403, "FORBIDDEN");
    }
    // the underscore spelling is not an organization selector: it is stripped
    // and the key acts with no organization
    let r = kw.request(
        "GET",
        "/api/v1/things",
        &[("X-Service-Key", &service), ("X_Org_ID", "org_b")],
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert!(r.upstream_header("x-org-id").is_empty());
    assert!(!r.upstream_headers().contains_key("x_org_id"));
}

#[test]
fn hop_by_hop_tricks_cannot_remove_injected_identity() {
    let w = World::new();
    let kw = w.start(echo());
    let auth = format!("Bearer {}", w.org_key);
    for conn in [
        "keep-alive, X-Org-ID, X-Auth-Method, X-Api-Key-ID",
        "close, x-org-id",
        "X_Org_ID, Authorization",
    ] {
        // keep-alive answers leave the connection open: read until quiet
        let req = format!(
            "GET /api/v1/things HTTP/1.1\r\nHost: kw.test\r\nAuthorization: {auth}\r\nConnection: {conn}\r\n\r\n"
        );
        let out = exchange(
            kw.addr,
            req.as_bytes(),
            std::time::Duration::from_millis(300),
        );
        let r = parse_response(&out);
        assert_eq!(r.status, 200, "{conn}: {}", r.body_str());
        assert_eq!(r.upstream_header("x-org-id"), vec!["org_a"], "{conn}");
        assert_eq!(
            r.upstream_header("x-auth-method"),
            vec!["api_key"],
            "{conn}"
        );
        assert_eq!(
            r.upstream_header("x-api-key-id"),
            vec![w.org_key_id.clone()],
            "{conn}"
        );
    }
}

#[test]
fn malformed_identity_header_lines_are_refused_not_forwarded() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let auth = bearer(&w.org_key);
    for line in [
        "X-Org-ID : org_b\r\n",
        "X-Org-ID\t: org_b\r\n",
        " X-Org-ID: org_b\r\n",
        "X-Org-ID\0: org_b\r\n",
        "X-Org-ID org_b\r\n",
    ] {
        let req = format!("GET /api/v1/things HTTP/1.1\r\nHost: kw.test\r\n{auth}{line}\r\n");
        let out = exchange(
            kw.addr,
            req.as_bytes(),
            std::time::Duration::from_millis(300),
        );
        let resps = parse_responses(&out);
        assert_eq!(
            resps.len(),
            1,
            "{line:?}: {}",
            String::from_utf8_lossy(&out)
        );
        assert_eq!(resps[0].status, 400, "{line:?}");
    }
    assert_eq!(up.count(), 0, "{:?}", up.seen());
}

/// A `header:` workspace source (SPEC §5) is read in exactly one spelling:
/// an underscore spelling or a comma list is a second copy to some upstreams
/// (CGI-style servers read X_Target_Workspace as X-Target-Workspace; RFC 9110
/// §5.3 makes a list the same as repeated lines), so both are ambiguous.
#[test]
fn workspace_header_source_is_read_in_one_spelling_only() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let org = format!("Bearer {}", w.org_key);
    let scoped = format!("Bearer {}", w.scoped_key);
    // (case, Authorization, extra headers, status, code)
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "scoped, own workspace",
            &scoped,
            vec![("X-Target-Workspace", "ws_a1")],
            200,
            "",
        ),
        (
            "scoped, other workspace",
            &scoped,
            vec![("X-Target-Workspace", "ws_b")],
            403,
            "SCOPE_DENIED",
        ),
        (
            "org key, other org",
            &org,
            vec![("X-Target-Workspace", "ws_b")],
            403,
            "SCOPE_DENIED",
        ),
        (
            "underscore spelling only",
            &org,
            vec![("X_Target_Workspace", "ws_b")],
            400,
            "BAD_REQUEST",
        ),
        (
            "both spellings",
            &scoped,
            vec![
                ("X-Target-Workspace", "ws_a1"),
                ("X_Target_Workspace", "ws_b"),
            ],
            400,
            "BAD_REQUEST",
        ),
        (
            "repeated",
            &scoped,
            vec![
                ("X-Target-Workspace", "ws_a1"),
                ("x-target-workspace", "ws_b"),
            ],
            400,
            "BAD_REQUEST",
        ),
        (
            "comma list",
            &org,
            vec![("X-Target-Workspace", "ws_a1, ws_b")],
            400,
            "BAD_REQUEST",
        ),
    ];
    for (case, auth, extra, status, code) in cases {
        let before = up.count();
        let mut headers = vec![("Authorization", auth)];
        headers.extend(extra);
        let r = kw.request("GET", "/api/v1/by-header", &headers, "");
        if status == 200 {
            assert_eq!(r.status, 200, "{case}: {}", r.body_str());
            assert_eq!(
                up.seen()[before].header("x-workspace-id"),
                vec!["ws_a1"],
                "{case}"
            );
        } else {
            r.assert_error(status, code);
            assert_eq!(up.count(), before, "{case}: forwarded");
        }
    }
}
