//! Strategies: random worlds, configs, route tables and requests.

use super::*;

pub(super) fn expiry() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![
        6 => Just(None),
        1 => Just(Some(NOW - 10)),
        1 => Just(Some(NOW)),
        4 => Just(Some(NOW + 100)),
    ]
}

pub(super) fn org_row(id: &'static str) -> impl Strategy<Value = Option<Org>> {
    prop::option::weighted(
        0.93,
        (
            select(&["free", "pro", "gold"][..]),
            prop::option::weighted(0.25, 1u64..=6),
            prop::bool::weighted(0.12),
            prop::bool::weighted(0.08),
        )
            .prop_map(move |(plan, rate_limit, quota_exceeded, disabled)| Org {
                id,
                plan,
                rate_limit,
                quota_exceeded,
                disabled,
            }),
    )
}

pub(super) fn permissions() -> impl Strategy<Value = Option<String>> {
    let scoped = prop::sample::subsequence(&WS_REFS[..], 1..=3).prop_map(|ids| {
        let list: Vec<String> = ids.iter().map(|i| format!("\"{i}\"")).collect();
        Some(format!(
            "{{\"scope\":\"workspace\",\"workspaceIds\":[{}]}}",
            list.join(",")
        ))
    });
    prop_oneof![
        5 => Just(None),
        2 => Just(Some(r#"{"scope":"org"}"#.to_string())),
        1 => Just(Some(r#"{"scope":"org","note":"x"}"#.to_string())),
        6 => scoped,
        1 => Just(Some(r#"{"scope":"workspace","workspaceIds":[]}"#.to_string())),
        1 => Just(Some("{nope".to_string())),
        1 => Just(Some(r#"{"scope":"galaxy"}"#.to_string())),
        1 => Just(Some(r#"{"scope":"workspace"}"#.to_string())),
        1 => Just(Some(r#"{"workspaceIds":["ws_2"],"scope":"workspace"}"#.to_string())),
        1 => Just(Some(r#"{"scope":"workspace","workspaceIds":["ws_1",5]}"#.to_string())),
        1 => Just(Some(r#"{"scope":"org","workspaceIds":"all"}"#.to_string())),
        1 => Just(Some(r#"{"scope":"org","workspaceIds":null}"#.to_string())),
        1 => Just(Some(r#"{"scope":"workspace","workspaceIds":["ws_1"],"scope":"org"}"#.to_string())),
        1 => Just(Some(r#"[{"scope":"org"}]"#.to_string())),
        1 => Just(Some(r#"{"scope":"Org"}"#.to_string())),
    ]
}

pub(super) fn api_key_row(i: usize) -> impl Strategy<Value = Option<ApiKeyRow>> {
    prop::option::weighted(
        0.9,
        (
            org_ref(),
            permissions(),
            expiry(),
            prop::bool::weighted(0.12),
        )
            .prop_map(move |(org, permissions, expires_at, revoked)| ApiKeyRow {
                token: API_TOKENS[i],
                id: format!("ak_{i}"),
                org,
                permissions,
                expires_at,
                revoked,
            }),
    )
}

pub(super) fn session_row(i: usize) -> impl Strategy<Value = Option<SessionRow>> {
    prop::option::weighted(
        0.9,
        (
            prop::option::weighted(0.8, org_ref()),
            prop_oneof![1 => Just(NOW - 5), 1 => Just(NOW), 8 => Just(NOW + 500)],
        )
            .prop_map(move |(active_org, expires_at)| SessionRow {
                token: SESSION_TOKENS[i],
                id: format!("s_{i}"),
                user_id: format!("user_{i}"),
                active_org,
                expires_at,
            }),
    )
}

pub(super) fn service_key_row(i: usize) -> impl Strategy<Value = Option<ServiceKeyRow>> {
    prop::option::weighted(
        0.9,
        prop::bool::weighted(0.15).prop_map(move |revoked| ServiceKeyRow {
            token: SERVICE_TOKENS[i],
            id: format!("sk_{i}"),
            revoked,
        }),
    )
}

pub(super) fn server_row(id: &'static str) -> impl Strategy<Value = Option<McpServerRow>> {
    prop::option::weighted(
        0.9,
        (
            org_ref(),
            select(&WS_REFS[..]),
            select(&["oauth", "bearer", "oauth_and_bearer"][..]),
        )
            .prop_map(move |(org, workspace, auth_mode)| McpServerRow {
                id,
                org,
                workspace,
                auth_mode,
            }),
    )
}

pub(super) fn mcp_token_row(i: usize) -> impl Strategy<Value = Option<McpTokenRow>> {
    // mostly the kind the prefix names, sometimes not (401)
    let fitting: &'static [&'static str] = if MCP_TOKENS[i].starts_with("mcpo_") {
        &[
            "oauth", "oauth", "oauth", "oauth", "oauth", "static", "end_user",
        ]
    } else {
        &[
            "static", "end_user", "static", "end_user", "static", "end_user", "oauth",
        ]
    };
    prop::option::weighted(
        0.9,
        (
            select(fitting),
            prop_oneof![6 => select(&SERVERS[..]), 1 => Just(SERVER_REFS[2])],
            prop::bool::ANY,
            expiry(),
            prop::bool::weighted(0.12),
        )
            .prop_map(move |(kind, server, eu, expires_at, revoked)| McpTokenRow {
                token: MCP_TOKENS[i],
                id: format!("mt_{i}"),
                kind,
                server,
                // SPEC §2: NULL for 'static'
                end_user: (kind != "static" && eu).then_some("eu_1"),
                expires_at,
                revoked,
            }),
    )
}

pub(super) fn world() -> impl Strategy<Value = World> {
    (
        prop::bool::weighted(0.02),
        (org_row(ORGS[0]), org_row(ORGS[1]), org_row(ORGS[2])),
        prop::collection::vec(prop::option::weighted(0.9, org_ref()), 4),
        prop::collection::vec(prop::option::weighted(0.85, select(&WS_REFS[..])), 3),
        (server_row(SERVERS[0]), server_row(SERVERS[1])),
        (
            api_key_row(0),
            api_key_row(1),
            api_key_row(2),
            api_key_row(3),
        ),
        (session_row(0), session_row(1), session_row(2)),
        (service_key_row(0), service_key_row(1)),
        (
            mcp_token_row(0),
            mcp_token_row(1),
            mcp_token_row(2),
            mcp_token_row(3),
        ),
    )
        .prop_map(
            |(
                unloaded,
                (o0, o1, o2),
                ws,
                res,
                (s0, s1),
                (k0, k1, k2, k3),
                (x0, x1, x2),
                (v0, v1),
                (m0, m1, m2, m3),
            )| {
                World {
                    unloaded,
                    orgs: [o0, o1, o2].into_iter().flatten().collect(),
                    workspaces: WORKSPACES
                        .iter()
                        .zip(ws)
                        .filter_map(|(w, o)| o.map(|o| (*w, o)))
                        .collect(),
                    resources: RESOURCES
                        .iter()
                        .zip(res)
                        .filter_map(|(r, w)| w.map(|w| (*r, w)))
                        .collect(),
                    servers: [s0, s1].into_iter().flatten().collect(),
                    api_keys: [k0, k1, k2, k3].into_iter().flatten().collect(),
                    sessions: [x0, x1, x2].into_iter().flatten().collect(),
                    service_keys: [v0, v1].into_iter().flatten().collect(),
                    mcp_tokens: [m0, m1, m2, m3].into_iter().flatten().collect(),
                }
            },
        )
}

/// Route patterns and their captures.
pub(super) const PATTERNS: [(&str, &[&str]); 9] = [
    ("/api/auth/**", &[]),
    ("/api/v1/workspaces/{workspaceId}/**", &["workspaceId"]),
    ("/api/v1/workspaces/{workspaceId}", &["workspaceId"]),
    ("/api/v1/connections/{connectionId}", &["connectionId"]),
    ("/api/v1/connections", &[]),
    ("/mcp/{server}", &["server"]),
    ("/mcp/{server}/**", &["server"]),
    ("/api/v1/api-keys/**", &[]),
    ("/api/v1/**", &[]),
];

pub(super) fn route(pattern: impl Strategy<Value = usize>) -> impl Strategy<Value = RouteSpec> {
    (
        pattern,
        0u8..10,
        0usize..10,
        prop::option::weighted(
            0.3,
            select(vec![
                vec!["GET"],
                vec!["POST"],
                vec!["GET", "POST"],
                vec!["PUT", "DELETE"],
            ]),
        ),
        (
            prop::bool::weighted(0.25),
            prop::bool::weighted(0.3),
            prop::bool::weighted(0.3),
            prop::bool::weighted(0.4),
        ),
    )
        .prop_map(
            |(p, auth, src, methods, (org_wide_only, quota, org_optional, scoped_filter))| {
                let (pattern, captures) = PATTERNS[p];
                let auth = match (p, auth) {
                    (0, 0..=7) | (_, 0) => AuthMode::None,
                    _ if captures.contains(&"server") && auth >= 2 => AuthMode::Mcp,
                    _ => AuthMode::Required,
                };
                let capture = captures.first().copied();
                // sources 7..=9: the one the pattern suggests
                let src = match (src, p) {
                    (0..=6, _) => src,
                    (_, 1 | 2) => 1,
                    (_, 3) => 2,
                    (7, _) => 3,
                    (8, _) => 5,
                    _ => 6,
                };
                let workspace = match (auth, src) {
                    (AuthMode::None, _) => None,
                    (_, 0) => None,
                    (_, 1) => capture.map(Source::Path),
                    (_, 2) => capture.map(Source::ResourcePath),
                    (_, 3) => Some(Source::Query("workspaceId")),
                    (_, 4) => Some(Source::Header(WS_HEADER)),
                    (_, 5) => Some(Source::Body("workspaceId")),
                    _ => Some(Source::ResourceBody("resourceId")),
                };
                RouteSpec {
                    pattern,
                    methods: methods.map(|m| m.to_vec()),
                    auth,
                    workspace,
                    org_wide_only,
                    quota,
                    org_optional,
                    scoped_filter,
                }
            },
        )
}

/// A route table: most patterns once, sometimes one twice (first wins),
/// in random order.
pub(super) fn routes() -> impl Strategy<Value = Vec<RouteSpec>> {
    let each: Vec<_> = (0..PATTERNS.len())
        .map(|p| prop::option::weighted(if p == 5 { 0.85 } else { 0.6 }, route(Just(p))))
        .collect();
    (each, prop::collection::vec(route(0..PATTERNS.len()), 0..2))
        .prop_map(|(each, extra)| each.into_iter().flatten().chain(extra).collect::<Vec<_>>())
        .prop_shuffle()
}

pub(super) fn settings() -> impl Strategy<Value = Settings> {
    (
        prop::bool::weighted(0.85),
        prop::bool::weighted(0.3),
        prop::bool::ANY,
        prop::bool::weighted(0.3),
        (
            prop::option::of(2u64..=10),
            prop::option::of(2u64..=10),
            prop::option::weighted(0.4, 2u64..=10),
        ),
        prop::bool::weighted(0.3),
        prop_oneof![6 => Just(0u64), 1 => 2u64..=5],
        routes(),
    )
        .prop_map(
            |(
                secret,
                unknown_pass,
                mcp_allowed_origin,
                trusted_origin,
                (free, pro, default),
                service_keys_limited,
                auth_failures_per_ip,
                routes,
            )| {
                let plans = [("free", free), ("pro", pro), ("default", default)]
                    .into_iter()
                    .filter_map(|(n, v)| v.map(|v| (n, v)))
                    .collect();
                Settings {
                    secret,
                    unknown_pass,
                    mcp_allowed_origin,
                    trusted_origin,
                    plans,
                    service_keys_limited,
                    auth_failures_per_ip,
                    routes,
                }
            },
        )
}

/// Ids a request may name in a path segment (some malformed once decoded).
pub(super) const PATH_IDS: [&str; 13] = [
    "ws_1",
    "ws_2",
    "ws_3",
    "ws_9",
    "res_1",
    "res_2",
    "res_9",
    "srv_1",
    "srv_2",
    "srv_9",
    "bad%20id",
    "caf%C3%A9",
    "ws_4",
];

/// Which paths a request aims at.
#[derive(Debug, Clone, Copy)]
pub(super) enum Family {
    Api,
    Mcp,
    Any,
}

pub(super) fn path(family: Family) -> impl Strategy<Value = String> {
    let template = match family {
        Family::Api => select(&[1usize, 1, 2, 3, 3, 4, 7, 8][..]).boxed(),
        Family::Mcp => select(&[5usize, 6][..]).boxed(),
        Family::Any => (0usize..11).boxed(),
    };
    (
        template,
        prop::bool::weighted(0.8),
        0usize..64,
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(t, natural, pick, upper, slash)| {
            // mostly an id of the kind the path names, sometimes any
            let ids: &[&str] = match (natural, t) {
                (true, 1 | 2) => &WS_REFS,
                (true, 3) => &["res_1", "res_2", "res_3", "res_9"],
                (true, 5 | 6) => &["srv_1", "srv_2", "srv_1", "srv_2", "srv_9"],
                _ => &PATH_IDS,
            };
            let id = ids[pick % ids.len()];
            let mut p = match t {
                0 => "/api/auth/sign-in".to_string(),
                1 => format!("/api/v1/workspaces/{id}/connections"),
                2 => format!("/api/v1/workspaces/{id}"),
                3 => format!("/api/v1/connections/{id}"),
                4 => "/api/v1/connections".to_string(),
                5 => format!("/mcp/{id}"),
                6 => format!("/mcp/{id}/messages"),
                7 => "/api/v1/api-keys".to_string(),
                8 => "/api/v1/orgs/current".to_string(),
                9 => "/other/thing".to_string(),
                _ => "/".to_string(),
            };
            if upper {
                p = p
                    .replacen("/api/v1/", "/API/V1/", 1)
                    .replacen("/mcp/", "/MCP/", 1);
            }
            if slash && p != "/" {
                p.push('/');
            }
            p
        })
}

pub(super) fn query() -> impl Strategy<Value = Option<String>> {
    let key = select(
        &[
            "workspaceId",
            "workspaceId",
            "workspaceId[]",
            "workspaceId[0]",
            "workspaceId%5B%5D",
            "x-target-workspace",
            "connectionId",
            "server",
            "resourceId",
            "page",
        ][..],
    );
    let value = select(
        &[
            "ws_1", "ws_2", "ws_3", "ws_4", "ws_9", "res_1", "srv_1", "", "bad%20id", "ws_1+",
        ][..],
    );
    prop::collection::vec((key, value), 0..3).prop_map(|pairs| {
        if pairs.is_empty() {
            None
        } else {
            let p: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            Some(p.join("&"))
        }
    })
}

#[derive(Debug, Clone)]
pub(super) enum Cookie {
    Signed(&'static str),
    WrongSecret(&'static str),
    Garbage,
}

#[derive(Debug, Clone)]
pub(super) enum CredSpec {
    None,
    Bearer(&'static str, usize, &'static str),
    RawAuthorization(&'static str),
    TwoAuthorizations(&'static str),
    ServiceKey(&'static str),
    Cookie(usize, Cookie),
    TwoCookies(Cookie, Cookie),
    BearerAndServiceKey(&'static str, &'static str),
    ServiceKeyAndCookie(&'static str, Cookie),
}

pub(super) const BEARER_TOKENS: [&str; 11] = [
    "wvz_key0",
    "wvz_key1",
    "wvz_key2",
    "wvz_key3",
    "wvz_unknown",
    "mcp_tok0",
    "mcp_tok1",
    "mcpo_tok2",
    "mcpo_tok3",
    "mcp_unknown",
    "mcpo_unknown",
];

pub(super) fn cookie() -> impl Strategy<Value = Cookie> {
    prop_oneof![
        6 => select(&["sess0tok", "sess1tok", "sess2tok", "sessXtok"][..]).prop_map(Cookie::Signed),
        1 => select(&SESSION_TOKENS[..]).prop_map(Cookie::WrongSecret),
        1 => Just(Cookie::Garbage),
    ]
}

pub(super) fn credential() -> impl Strategy<Value = CredSpec> {
    let token = select(&BEARER_TOKENS[..]);
    let service = select(&["svc_key0", "svc_key1", "svc_unknown"][..]);
    prop_oneof![
        2 => Just(CredSpec::None),
        12 => (select(&["Bearer", "bearer", "BEARER"][..]), 1usize..3, token.clone())
            .prop_map(|(s, n, t)| CredSpec::Bearer(s, n, t)),
        1 => select(&["Basic dXNlcjpw", "Bearer", "Bearer xyz_tok", "Bearer wvz_a b", "Token wvz_key0"][..])
            .prop_map(CredSpec::RawAuthorization),
        1 => token.clone().prop_map(CredSpec::TwoAuthorizations),
        4 => service.clone().prop_map(CredSpec::ServiceKey),
        6 => (0usize..2, cookie()).prop_map(|(n, c)| CredSpec::Cookie(n, c)),
        1 => (cookie(), cookie()).prop_map(|(a, b)| CredSpec::TwoCookies(a, b)),
        1 => (token, service.clone()).prop_map(|(t, s)| CredSpec::BearerAndServiceKey(t, s)),
        1 => (service, cookie()).prop_map(|(s, c)| CredSpec::ServiceKeyAndCookie(s, c)),
    ]
}

/// A path and the credential one would send there (mostly well aimed,
/// sometimes anything), and the `X-Org-ID` values.
pub(super) fn scenario() -> impl Strategy<Value = (String, CredSpec, Vec<&'static str>)> {
    let bearer = |tokens: &'static [&'static str]| {
        select(tokens).prop_map(|t| CredSpec::Bearer("Bearer", 1, t))
    };
    let org_ids = || {
        prop_oneof![
            6 => Just(vec![]),
            3 => select(&ORG_REFS[..]).prop_map(|o| vec![o]),
            1 => Just(vec!["org_a", "org_b"]),
        ]
    };
    prop_oneof![
        6 => (
            path(Family::Api),
            bearer(&["wvz_key0", "wvz_key1", "wvz_key2", "wvz_key3", "wvz_key0", "wvz_key1", "wvz_unknown"]),
            org_ids(),
        ),
        3 => (
            path(Family::Api),
            prop_oneof![
                8 => select(&SESSION_TOKENS[..]).prop_map(|t| CredSpec::Cookie(1, Cookie::Signed(t))),
                1 => select(&SESSION_TOKENS[..]).prop_map(|t| CredSpec::Cookie(0, Cookie::Signed(t))),
                1 => select(&SESSION_TOKENS[..])
                    .prop_map(|t| CredSpec::TwoCookies(Cookie::Signed(t), Cookie::Signed(t))),
            ],
            org_ids(),
        ),
        2 => (
            path(Family::Api),
            select(&["svc_key0", "svc_key1"][..]).prop_map(CredSpec::ServiceKey),
            prop_oneof![
                2 => Just(vec![]),
                6 => select(&ORG_REFS[..]).prop_map(|o| vec![o]),
                1 => Just(vec!["org_a", "org_b"]),
            ],
        ),
        4 => (
            path(Family::Mcp),
            bearer(&["mcp_tok0", "mcp_tok1", "mcpo_tok2", "mcpo_tok3", "mcp_unknown"]),
            org_ids(),
        ),
        3 => (path(Family::Any), credential(), org_ids()),
    ]
}

pub(super) fn cookie_value(c: &Cookie) -> String {
    match c {
        Cookie::Signed(t) => keyward::credentials::signed_cookie_value(t, &Secret::new(SECRET)),
        Cookie::WrongSecret(t) => {
            keyward::credentials::signed_cookie_value(t, &Secret::new(OTHER_SECRET))
        }
        Cookie::Garbage => "not-a-signed-value".to_string(),
    }
}

#[derive(Debug, Clone)]
pub(super) struct BodySpec {
    pub(super) content_type: Option<&'static str>,
    pub(super) encoding: Option<&'static str>,
    pub(super) body: String,
}

pub(super) fn body() -> impl Strategy<Value = BodySpec> {
    let text = prop_oneof![
        3 => Just(String::new()),
        1 => Just("{}".to_string()),
        6 => select(&WS_REFS[..]).prop_map(|w| format!("{{\"workspaceId\":\"{w}\"}}")),
        4 => select(&["res_1", "res_2", "res_3", "res_9"][..])
            .prop_map(|r| format!("{{\"name\":\"n\",\"resourceId\":\"{r}\"}}")),
        1 => Just(r#"{"workspaceId":"ws_1","workspaceId":"ws_2"}"#.to_string()),
        1 => Just(r#"{"resourceId":"res_1","resourceId":"res_1"}"#.to_string()),
        1 => Just(r#"{"workspaceId":7,"resourceId":["res_1"]}"#.to_string()),
        1 => Just(r#"{"workspaceId":"","resourceId":""}"#.to_string()),
        1 => Just(r#"{"workspaceId":"ws a"}"#.to_string()),
        1 => Just("workspaceId=ws_1".to_string()),
        1 => Just(format!("{{\"workspaceId\":\"ws_1\",\"pad\":\"{}\"}}", "x".repeat(60))),
        1 => select(&["[1]", "\"ws_1\"", "null", "  \n", "{\"workspaceId\":\"ws_1\"} x"][..])
            .prop_map(String::from),
        1 => Just(r#"{"data":{"workspaceId":"ws_1","resourceId":"res_1"}}"#.to_string()),
        1 => Just(r#"{"workspaceId":"ws_1","workspaceId":7}"#.to_string()),
        1 => Just(r#"{"workspaceId":"ws\u005f1","resourceId":"res\u005f2"}"#.to_string()),
    ];
    (
        prop_oneof![
            6 => Just(Some("application/json")),
            1 => Just(Some("application/vnd.api+json; charset=utf-8")),
            1 => Just(Some("text/plain")),
            1 => Just(None),
        ],
        prop_oneof![8 => Just(None), 1 => Just(Some("gzip")), 1 => Just(Some("identity"))],
        text,
    )
        .prop_map(|(content_type, encoding, body)| BodySpec {
            content_type,
            encoding,
            body,
        })
}

pub(super) fn request() -> impl Strategy<Value = Req> {
    (
        select(
            &[
                "GET", "GET", "HEAD", "POST", "POST", "PUT", "PATCH", "DELETE",
            ][..],
        ),
        scenario(),
        query(),
        prop::option::weighted(0.25, select(&[GOOD_ORIGIN, EVIL_ORIGIN][..])),
        prop_oneof![
            5 => Just(vec![]),
            4 => select(&["ws_1", "ws_2", "ws_4", "ws_9", "", "ws_1,ws_2", "ws a", " ws_2 "][..])
                .prop_map(|v| vec![v]),
            1 => Just(vec!["ws_1", "ws_2"]),
        ],
        body(),
    )
        .prop_map(
            |(method, (path, cred, org_ids), query, origin, ws_headers, body)| {
                let mut h: Vec<(String, String)> = Vec::new();
                let mut add = |n: &str, v: String| h.push((n.to_string(), v));
                match &cred {
                    CredSpec::None => {}
                    CredSpec::Bearer(scheme, spaces, token) => add(
                        "Authorization",
                        format!("{scheme}{}{token}", " ".repeat(*spaces)),
                    ),
                    CredSpec::RawAuthorization(v) => add("Authorization", v.to_string()),
                    CredSpec::TwoAuthorizations(t) => {
                        add("Authorization", format!("Bearer {t}"));
                        add("Authorization", format!("Bearer {t}"));
                    }
                    CredSpec::ServiceKey(k) => add("X-Service-Key", k.to_string()),
                    CredSpec::Cookie(n, c) => add(
                        "Cookie",
                        format!("theme=dark; {}={}", COOKIE_NAMES[*n], cookie_value(c)),
                    ),
                    CredSpec::TwoCookies(a, b) => add(
                        "Cookie",
                        format!(
                            "{}={};\t{}={}",
                            COOKIE_NAMES[0],
                            cookie_value(a),
                            COOKIE_NAMES[1],
                            cookie_value(b)
                        ),
                    ),
                    CredSpec::BearerAndServiceKey(t, k) => {
                        add("Authorization", format!("Bearer {t}"));
                        add("X-Service-Key", k.to_string());
                    }
                    CredSpec::ServiceKeyAndCookie(k, c) => {
                        add("X-Service-Key", k.to_string());
                        add("Cookie", format!("{}={}", COOKIE_NAMES[1], cookie_value(c)));
                    }
                }
                for o in org_ids {
                    add("X-Org-ID", o.to_string());
                }
                if let Some(o) = origin {
                    add("Origin", o.to_string());
                }
                for v in ws_headers {
                    add(WS_HEADER, v.to_string());
                }
                if !body.body.is_empty() {
                    add("Content-Length", body.body.len().to_string());
                }
                if let Some(ct) = body.content_type {
                    add("Content-Type", ct.to_string());
                }
                if let Some(e) = body.encoding {
                    add("Content-Encoding", e.to_string());
                }
                Req {
                    method,
                    path,
                    query,
                    headers: h,
                    body: body.body,
                }
            },
        )
}

pub(super) fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}
