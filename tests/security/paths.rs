//! Path tricks against route rules (SPEC §5): keyward must decide on exactly
//! the path the upstream acts on, or refuse. The raw upstream records the
//! request-target byte for byte, so "forwarded" below means "this exact
//! target reached the upstream".
use super::*;

#[derive(Debug, Clone, Copy)]
enum Want {
    /// 200, and the upstream received exactly this origin-form target
    Forward(&'static str),
    /// keyward's own JSON error; nothing reaches the upstream
    Deny(u16, &'static str),
}
use Want::*;

/// Run every case; report all mismatches at once.
fn check(kw: &Keyward, up: &RawUpstream, token: &str, cases: &[(&str, Want)], ws: Option<&str>) {
    let mut failures = Vec::new();
    for (target, want) in cases {
        let before = up.count();
        let r = kw.send_head(target, bearer(token));
        let seen = up.seen();
        let new: Vec<&Seen> = seen[before..].iter().collect();
        let ok = match want {
            Forward(path) => {
                r.status == 200
                    && new.len() == 1
                    && new[0].target_str() == *path
                    && ws.is_none_or(|ws| new[0].header("x-workspace-id") == vec![ws.to_string()])
            }
            Deny(status, code) => {
                r.status == *status
                    && r.header("content-type") == Some("application/json")
                    && r.json()["code"] == *code
                    && new.is_empty()
            }
        };
        if !ok {
            failures.push(format!(
                "{target:?}: want {want:?}, got {} {} / upstream saw {:?}",
                r.status,
                r.body_str(),
                new.iter()
                    .map(|s| (s.target_str(), s.header("x-workspace-id")))
                    .collect::<Vec<_>>()
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn scoped_key_cannot_leave_its_workspace_by_path_tricks() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let cases: &[(&str, Want)] = &[
        // the straightforward cases
        (
            "/api/v1/workspaces/ws_a1/c",
            Forward("/api/v1/workspaces/ws_a1/c"),
        ),
        ("/api/v1/workspaces/ws_a2/c", Deny(403, "SCOPE_DENIED")),
        ("/api/v1/workspaces/ws_b/c", Deny(403, "SCOPE_DENIED")),
        // dot segments, plain and encoded, in every case
        (
            "/api/v1/workspaces/ws_a1/../ws_a2/c",
            Deny(403, "SCOPE_DENIED"),
        ),
        (
            "/api/v1/workspaces/ws_a1/%2e%2e/ws_a2/c",
            Deny(403, "SCOPE_DENIED"),
        ),
        (
            "/api/v1/workspaces/ws_a1/%2E%2E/ws_a2/c",
            Deny(403, "SCOPE_DENIED"),
        ),
        (
            "/api/v1/workspaces/ws_a1/.%2e/ws_a2/c",
            Deny(403, "SCOPE_DENIED"),
        ),
        (
            "/api/v1/workspaces/ws_a1/%2e./ws_a2/c",
            Deny(403, "SCOPE_DENIED"),
        ),
        (
            "/api/v1/workspaces/ws_a1/./../ws_a2/c",
            Deny(403, "SCOPE_DENIED"),
        ),
        (
            "/api/v1/workspaces/ws_a1/c/../../ws_a2/c",
            Deny(403, "SCOPE_DENIED"),
        ),
        (
            "/api/v1/workspaces/ws_a1/../../workspaces/ws_a2/c",
            Deny(403, "SCOPE_DENIED"),
        ),
        ("/api/v1/workspaces/./ws_a2/c", Deny(403, "SCOPE_DENIED")),
        ("/api/v1/workspaces/%2e/ws_a2/c", Deny(403, "SCOPE_DENIED")),
        // `;` anywhere is a path parameter (SPEC §5.1)
        (
            "/api/v1/workspaces/ws_a1;/../ws_a2/c",
            Deny(400, "BAD_REQUEST"),
        ),
        (
            "/api/v1/workspaces/ws_a2/../ws_a1/c",
            Forward("/api/v1/workspaces/ws_a1/c"),
        ),
        (
            "/api/v1/workspaces/ws_a2/%2E%2E/ws_a1/c",
            Forward("/api/v1/workspaces/ws_a1/c"),
        ),
        // repeated slashes
        ("//api/v1/workspaces/ws_a2/c", Deny(403, "SCOPE_DENIED")),
        ("/api/v1//workspaces//ws_a2/c", Deny(403, "SCOPE_DENIED")),
        (
            "//api//v1/workspaces/ws_a1/./c/",
            Forward("/api/v1/workspaces/ws_a1/c/"),
        ),
        // letter case of the literals (matched case-insensitively), and of the id
        ("/API/V1/WORKSPACES/ws_a2/c", Deny(403, "SCOPE_DENIED")),
        ("/Api/v1/Workspaces/ws_a2/c", Deny(403, "SCOPE_DENIED")),
        (
            "/API/v1/Workspaces/ws_a1/c",
            Forward("/API/v1/Workspaces/ws_a1/c"),
        ),
        ("/api/v1/workspaces/WS_A1/c", Deny(403, "SCOPE_DENIED")),
        // trailing slashes and the bare workspace (`**` matches zero segments)
        ("/api/v1/workspaces/ws_a2", Deny(403, "SCOPE_DENIED")),
        ("/api/v1/workspaces/ws_a2/", Deny(403, "SCOPE_DENIED")),
        ("/api/v1/workspaces/ws_a2//", Deny(403, "SCOPE_DENIED")),
        (
            "/api/v1/workspaces/ws_a1",
            Forward("/api/v1/workspaces/ws_a1"),
        ),
        (
            "/api/v1/workspaces/ws_a1/",
            Forward("/api/v1/workspaces/ws_a1/"),
        ),
        // percent-encoded unreserved characters decode before matching
        ("/api/v1/workspaces/%77s_a2/c", Deny(403, "SCOPE_DENIED")),
        ("/api/v1/workspaces/ws%5Fa2/c", Deny(403, "SCOPE_DENIED")),
        ("/api/v1/workspaces/ws%5fa2/c", Deny(403, "SCOPE_DENIED")),
        ("/api/v1/%77orkspaces/ws_a2/c", Deny(403, "SCOPE_DENIED")),
        (
            "/api/v1/workspaces/%77s_a1/c",
            Forward("/api/v1/workspaces/ws_a1/c"),
        ),
        // an id with a space is malformed (SPEC §5.1)
        ("/api/v1/workspaces/ws_a1%20/c", Deny(400, "BAD_REQUEST")),
        // encoded separators, NUL, bad escapes, above the root: refused
        (
            "/api/v1/workspaces/ws_a1/..%2Fws_a2/c",
            Deny(400, "BAD_REQUEST"),
        ),
        (
            "/api/v1/workspaces/ws_a1%2F..%2Fws_a2/c",
            Deny(400, "BAD_REQUEST"),
        ),
        (
            "/api/v1/workspaces/ws_a1/%2e%2e%2fws_a2",
            Deny(400, "BAD_REQUEST"),
        ),
        (
            "/api/v1/workspaces/ws_a1/..%5Cws_a2/c",
            Deny(400, "BAD_REQUEST"),
        ),
        (
            "/api/v1/workspaces/ws_a1\\..\\ws_a2/c",
            Deny(400, "BAD_REQUEST"),
        ),
        (
            "/api/v1/workspaces/ws_a1/%00/../ws_a2",
            Deny(400, "BAD_REQUEST"),
        ),
        ("/api/v1/workspaces/ws_a1/%2", Deny(400, "BAD_REQUEST")),
        ("/api/v1/workspaces/ws_a1/%zz/c", Deny(400, "BAD_REQUEST")),
        (
            "/api/v1/workspaces/ws_a1/../../../../../ws_a2",
            Deny(400, "BAD_REQUEST"),
        ),
        ("/../api/v1/workspaces/ws_a2/c", Deny(400, "BAD_REQUEST")),
        // the query and the fragment are not the path
        (
            "/api/v1/workspaces/ws_a2/c?workspaceId=ws_a1",
            Deny(400, "BAD_REQUEST"),
        ),
        (
            "/api/v1/workspaces/ws_a2/c?/../../ws_a1/c",
            Deny(403, "SCOPE_DENIED"),
        ),
        (
            "/api/v1/workspaces/ws_a1/c?x=%2F..%2Fws_a2",
            Forward("/api/v1/workspaces/ws_a1/c?x=%2F..%2Fws_a2"),
        ),
        (
            "/api/v1/workspaces/ws_a1#/../../ws_a2/c",
            Forward("/api/v1/workspaces/ws_a1"),
        ),
        // `..;` is not a dot segment to RFC 3986 but is `..` to Tomcat and
        // Spring: refused (SPEC §5.1)
        (
            "/api/v1/workspaces/ws_a1/..;/ws_a2/c",
            Deny(400, "BAD_REQUEST"),
        ),
    ];
    check(&kw, &up, &w.scoped_key, cases, Some("ws_a1"));
}

#[test]
fn org_wide_key_cannot_reach_another_organizations_workspace() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let cases: &[(&str, Want)] = &[
        ("/api/v1/workspaces/ws_b/c", Deny(403, "SCOPE_DENIED")),
        (
            "/api/v1/workspaces/ws_a1/../ws_b/c",
            Deny(403, "SCOPE_DENIED"),
        ),
        (
            "/api/v1/workspaces/ws_a1/%2E%2E/ws_b",
            Deny(403, "SCOPE_DENIED"),
        ),
        ("/API/V1/WORKSPACES/ws_b/c", Deny(403, "SCOPE_DENIED")),
        ("/api/v1/workspaces/%77s_b", Deny(403, "SCOPE_DENIED")),
        ("//api/v1/workspaces/ws_b/", Deny(403, "SCOPE_DENIED")),
        (
            "/api/v1/workspaces/ws_a2/c",
            Forward("/api/v1/workspaces/ws_a2/c"),
        ),
        // absolute-form (RFC 9112 §3.2.2): decided on its path, forwarded in origin-form
        (
            "http://kw.test/api/v1/workspaces/ws_b/c",
            Deny(403, "SCOPE_DENIED"),
        ),
        (
            "HTTP://kw.test/api/v1/workspaces/ws_b/c",
            Deny(403, "SCOPE_DENIED"),
        ),
        (
            "http://kw.test/api/v1/workspaces/ws_a1/../ws_b/c",
            Deny(403, "SCOPE_DENIED"),
        ),
        (
            "http://kw.test/api/v1/workspaces/ws_a1/c",
            Forward("/api/v1/workspaces/ws_a1/c"),
        ),
        // targets that are neither origin- nor absolute-form: pingora routes
        // them as "/", so they must be refused, not forwarded as sent
        ("foo:/api/v1/workspaces/ws_b/c", Deny(400, "BAD_REQUEST")),
        ("api/v1/workspaces/ws_b/c", Deny(400, "BAD_REQUEST")),
        ("x:/api/v1/workspaces/ws_b", Deny(400, "BAD_REQUEST")),
        ("?/api/v1/workspaces/ws_b", Deny(400, "BAD_REQUEST")),
        ("*", Deny(400, "BAD_REQUEST")),
    ];
    check(&kw, &up, &w.org_key, cases, None);
}

#[test]
fn org_wide_only_route_cannot_be_reached_by_a_scoped_key() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let forbidden = Deny(403, "FORBIDDEN");
    let cases: &[(&str, Want)] = &[
        ("/api/v1/api-keys", forbidden),
        ("/api/v1/api-keys/", forbidden),
        ("/api/v1/api-keys/k1", forbidden),
        ("/api/v1/api-keys/k1/", forbidden),
        ("/API/V1/API-KEYS", forbidden),
        ("/Api/V1/Api-Keys/k1", forbidden),
        ("//api/v1/api-keys", forbidden),
        ("/api/v1//api-keys", forbidden),
        ("/api/v1/./api-keys", forbidden),
        ("/api/v1/x/../api-keys", forbidden),
        ("/api/v1/%61pi-keys", forbidden),
        ("/api/v1/api%2Dkeys", forbidden),
        ("/api/v1/api%2dkeys/", forbidden),
        ("/api/v1/api-keys?x=1", forbidden),
        ("/api/v1/api-keys#frag", forbidden),
        ("/api/v1/workspaces/ws_a1/../../api-keys", forbidden),
        ("/api/v1/workspaces/ws_a1/%2e%2e/%2e%2e/api-keys", forbidden),
        ("http://kw.test/api/v1/api-keys", forbidden),
        ("/api/v1/api-keys%2F", Deny(400, "BAD_REQUEST")),
        ("/api/v1%2Fapi-keys", Deny(400, "BAD_REQUEST")),
        ("/api/v1/api-keys%00", Deny(400, "BAD_REQUEST")),
        ("foo:/api/v1/api-keys", Deny(400, "BAD_REQUEST")),
        ("api/v1/api-keys", Deny(400, "BAD_REQUEST")),
        // not the route: the unmatched default, which refuses scoped keys
        ("/api/v1/api-keys;x", Deny(400, "BAD_REQUEST")),
        ("/api/v1/api-keysx", Deny(403, "SCOPE_DENIED")),
    ];
    check(&kw, &up, &w.scoped_key, cases, None);
    assert_eq!(up.count(), 0);
}

#[test]
fn the_upstream_receives_exactly_the_normalized_target() {
    let w = World::new();
    let up = RawUpstream::start();
    let kw = w.start(up.addr);
    let cases: &[(&str, Want)] = &[
        ("/api/v1/plain?q=1", Forward("/api/v1/plain?q=1")),
        (
            "/api//v1/./x/%61b?q=%2F&r=a%20b",
            Forward("/api/v1/x/ab?q=%2F&r=a%20b"),
        ),
        ("/api/v1/x%20y", Forward("/api/v1/x%20y")),
        ("/api/v1/%7Euser", Forward("/api/v1/~user")),
        ("/api/v1/%e2%82%ac", Forward("/api/v1/%E2%82%AC")),
        ("/api/v1/a/b/..", Forward("/api/v1/a/")),
        ("/api/v1/a/.", Forward("/api/v1/a/")),
        ("/api/v1/a/%2e", Forward("/api/v1/a/")),
        ("/api/v1/a/b/../../c", Forward("/api/v1/c")),
        ("http://kw.test/api/v1/abs?x=1", Forward("/api/v1/abs?x=1")),
    ];
    check(&kw, &up, &w.org_key, cases, None);
    // a raw space in the target: pingora escapes it before keyward decides
    let r = kw.send_head("/api/v1/x y", bearer(&w.org_key));
    assert_eq!(r.status, 200);
    assert_eq!(up.targets().last().unwrap(), "/api/v1/x%20y");
}
