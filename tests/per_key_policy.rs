//! Per-key policy (SPEC §6.1) from outside: the real binary, a real SQLite
//! snapshot with the optional columns, raw requests on real sockets.
mod common;
use common::*;
use std::sync::atomic::{AtomicU64, Ordering};

/// Routes with a cost, a limit group and a shadowed limit, before the
/// shared table.
fn routes() -> String {
    format!(
        r#"
[[route]]
path = "/api/v1/heavy/**"
cost = 3
[[route]]
path = "/api/v1/uploads/**"
limit = "uploads"
[[route]]
path = "/api/v1/trial/**"
limit_mode = "shadow"
{DEFAULT_ROUTES}"#
    )
}

/// A snapshot with the §6.1 columns.
fn policy_snap() -> Snap {
    let snap = Snap::new();
    snap.sql(
        "ALTER TABLE api_keys ADD COLUMN rate_limit INTEGER;
         ALTER TABLE api_keys ADD COLUMN allowed_ips TEXT;
         ALTER TABLE mcp_tokens ADD COLUMN rate_limit INTEGER;",
    );
    snap
}

fn set_key(snap: &Snap, id: &str, column: &str, value: &str) {
    snap.sql(&format!(
        "UPDATE api_keys SET {column} = {value} WHERE id = '{id}'"
    ));
}

/// keyward with [`routes`]; a plan no organization is on defines the
/// `uploads` group the routes name (a group no plan defines is refused).
fn start(snap: &Snap, opts: Opts) -> Keyward {
    let opts = opts
        .routes(&routes())
        .set("rate_limit.window_s", 3600)
        .set("plans.groups.requests_per_window", 1)
        .set("plans.groups.limits.uploads.requests_per_window", 1);
    Keyward::start(snap, opts)
}

fn limit_of(r: &Resp) -> (u16, Option<String>, Option<String>, Option<String>) {
    let details = (r.status == 429).then(|| {
        r.json()["details"]["limit"]
            .as_str()
            .unwrap_or("")
            .to_string()
    });
    (
        r.status,
        r.header("x-ratelimit-limit").map(String::from),
        r.header("x-ratelimit-remaining").map(String::from),
        details,
    )
}

#[test]
fn a_key_window_and_its_organization_window_both_admit_and_headers_show_the_tighter() {
    let snap = policy_snap();
    snap.sql("INSERT INTO organizations (id, plan, rate_limit) VALUES ('org_k', 'free', 5)");
    let (limited, limited_id) = snap.api_key_full("org_k", None, None, None);
    let other = snap.api_key("org_k");
    set_key(&snap, &limited_id, "rate_limit", "2");
    let kw = start(&snap, Opts::new(echo()));
    let s = |x: &str| Some(x.to_string());
    // key window 2, org window 5: the key's is tighter
    assert_eq!(
        limit_of(&kw.get("/api/v1/x", Some(&limited))),
        (200, s("2"), s("1"), None)
    );
    assert_eq!(
        limit_of(&kw.get("/api/v1/x", Some(&limited))),
        (200, s("2"), s("0"), None)
    );
    let r = kw.get("/api/v1/x", Some(&limited));
    r.assert_error(429, "RATE_LIMIT_EXCEEDED");
    assert_eq!(limit_of(&r), (429, s("2"), s("0"), s("key")));
    assert!(r.header("retry-after").is_some());
    // the key's refused request used none of the organization's window:
    // 3 of 5 left for the other key
    assert_eq!(
        limit_of(&kw.get("/api/v1/x", Some(&other))),
        (200, s("5"), s("2"), None)
    );
    assert_eq!(kw.get("/api/v1/x", Some(&other)).status, 200);
    assert_eq!(kw.get("/api/v1/x", Some(&other)).status, 200);
    let r = kw.get("/api/v1/x", Some(&other));
    assert_eq!(limit_of(&r), (429, s("5"), s("0"), s("organization")));
}

#[test]
fn key_and_organization_windows_are_exact_under_racing_connections() {
    let snap = policy_snap();
    // three keys of 25 each share an organization of 60: exactly 60 pass,
    // none of them past its own 25
    snap.sql("INSERT INTO organizations (id, plan, rate_limit) VALUES ('org_x', 'free', 60)");
    let keys: Vec<(String, String)> = (0..3)
        .map(|_| snap.api_key_full("org_x", None, None, None))
        .collect();
    for (_, id) in &keys {
        set_key(&snap, id, "rate_limit", "25");
    }
    // and three keys of 20 in an organization of 100: exactly 20 each
    snap.sql("INSERT INTO organizations (id, plan, rate_limit) VALUES ('org_y', 'free', 100)");
    let small: Vec<(String, String)> = (0..3)
        .map(|_| snap.api_key_full("org_y", None, None, None))
        .collect();
    for (_, id) in &small {
        set_key(&snap, id, "rate_limit", "20");
    }
    let kw = start(&snap, Opts::new(echo()));
    let per_key: Vec<AtomicU64> = (0..6).map(|_| AtomicU64::new(0)).collect();
    std::thread::scope(|s| {
        for t in 0..48 {
            let (kw, keys, small, per_key) = (&kw, &keys, &small, &per_key);
            s.spawn(move || {
                let i = t % 6;
                let token = if i < 3 { &keys[i].0 } else { &small[i - 3].0 };
                for _ in 0..5 {
                    match kw.get("/api/v1/x", Some(token)).status {
                        200 => {
                            per_key[i].fetch_add(1, Ordering::Relaxed);
                        }
                        429 => {}
                        other => panic!("unexpected {other}"),
                    }
                }
            });
        }
    });
    let n: Vec<u64> = per_key.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    // 8 threads × 5 = 40 offered per key
    assert_eq!(n[..3].iter().sum::<u64>(), 60, "{n:?}");
    assert!(n[..3].iter().all(|&k| k <= 25), "{n:?}");
    assert_eq!(&n[3..], &[20, 20, 20], "{n:?}");
}

#[test]
fn a_route_cost_uses_n_of_every_window_and_a_window_with_fewer_left_refuses_it() {
    let snap = policy_snap();
    snap.sql("INSERT INTO organizations (id, plan, rate_limit) VALUES ('org_c', 'free', 10)");
    let (key, id) = snap.api_key_full("org_c", None, None, None);
    set_key(&snap, &id, "rate_limit", "100");
    let kw = start(&snap, Opts::new(echo()));
    for left in ["7", "4", "1"] {
        let r = kw.get("/api/v1/heavy/run", Some(&key));
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-remaining"), Some(left));
    }
    let r = kw.get("/api/v1/heavy/run", Some(&key));
    r.assert_error(429, "RATE_LIMIT_EXCEEDED");
    assert_eq!(r.json()["details"]["limit"], "organization");
    // the refused cost took nothing: a cost-1 request still fits
    let r = kw.get("/api/v1/x", Some(&key));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
}

#[test]
fn a_limit_group_counts_apart_from_the_main_window_and_a_plan_without_it_uses_the_main_one() {
    let snap = policy_snap();
    snap.org("org_g", "pro").org("org_h", "free");
    let pro = snap.api_key("org_g");
    let free = snap.api_key("org_h");
    let kw = start(
        &snap,
        Opts::new(echo()).toml(
            "[plans.pro]\nrequests_per_window = 100\n[plans.pro.limits.uploads]\nrequests_per_window = 2\n\
             [plans.free]\nrequests_per_window = 3\n",
        ),
    );
    for left in ["1", "0"] {
        let r = kw.get("/api/v1/uploads/a", Some(&pro));
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-limit"), Some("2"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some(left));
    }
    let r = kw.get("/api/v1/uploads/a", Some(&pro));
    r.assert_error(429, "RATE_LIMIT_EXCEEDED");
    assert_eq!(r.header("x-ratelimit-limit"), Some("2"));
    // the main window is untouched by the group
    let r = kw.get("/api/v1/x", Some(&pro));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-limit"), Some("100"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("99"));
    // `free` has no uploads group: its main window counts the route
    assert_eq!(
        kw.get("/api/v1/uploads/a", Some(&free))
            .header("x-ratelimit-remaining"),
        Some("2")
    );
    assert_eq!(
        kw.get("/api/v1/x", Some(&free))
            .header("x-ratelimit-remaining"),
        Some("1")
    );
}

#[test]
fn a_limit_group_no_plan_defines_is_a_config_error() {
    let err = check_refuses(
        &Snap::new(),
        "[[route]]\npath = \"/x\"\nlimit = \"uplods\"\n",
    );
    assert!(err.contains("uplods") && err.contains("limits"), "{err}");
}

#[test]
fn shadow_mode_forwards_over_the_limit_counts_it_and_logs_would_deny() {
    let snap = policy_snap();
    snap.sql("INSERT INTO organizations (id, plan, rate_limit) VALUES ('org_s', 'free', 1)");
    let key = snap.api_key("org_s");
    let scoped = snap.scoped_key("org_s", &["ws_s"]);
    snap.workspace("ws_s", "org_s").workspace("ws_t", "org_s");
    let kw = start(&snap, Opts::new(echo()).set("rate_limit.mode", "shadow"));
    assert_eq!(kw.get("/api/v1/x", Some(&key)).status, 200);
    let r = kw.get("/api/v1/x", Some(&key));
    assert_eq!(r.status, 200, "over a shadowed limit: forwarded");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert!(r.upstream_header("x-org-id").contains(&"org_s".to_string()));
    assert!(
        wait_until(LOG_TIMEOUT, || kw.log().contains("would_deny=rate_limit")),
        "{}",
        kw.log()
    );
    let shadowed: Vec<String> = kw
        .metrics()
        .lines()
        .filter(|l| l.contains("shadow_denied"))
        .map(String::from)
        .collect();
    assert_eq!(
        shadowed,
        ["keyward_rate_limit_decisions_total{decision=\"shadow_denied\",plan=\"unconfigured\"} 1"]
    );
    // scopes and authentication are never shadowed
    kw.get("/api/v1/workspaces/ws_t/x", Some(&scoped))
        .assert_error(403, "SCOPE_DENIED");
    kw.get("/api/v1/x", Some("wvz_not_a_key_at_all_000000"))
        .assert_error(401, "UNAUTHENTICATED");
}

#[test]
fn a_route_limit_mode_shadows_only_that_route() {
    let snap = policy_snap();
    snap.sql("INSERT INTO organizations (id, plan, rate_limit) VALUES ('org_t', 'free', 1)");
    let key = snap.api_key("org_t");
    let kw = start(&snap, Opts::new(echo()));
    assert_eq!(kw.get("/api/v1/trial/a", Some(&key)).status, 200);
    assert_eq!(
        kw.get("/api/v1/trial/a", Some(&key)).status,
        200,
        "shadowed route"
    );
    kw.get("/api/v1/x", Some(&key))
        .assert_error(429, "RATE_LIMIT_EXCEEDED");
}

/// A GET from a trusted proxy (127.0.0.1) on behalf of `client`.
fn via_proxy(kw: &Keyward, key: &str, client: &str) -> Resp {
    kw.send_head(
        "/api/v1/x",
        format!("{}X-Forwarded-For: {client}\r\n", bearer(key)),
    )
}

#[test]
fn allowed_ips_admit_only_the_listed_clients_as_section_4_1_resolves_them() {
    let snap = policy_snap();
    snap.org("org_i", "free");
    let (key, id) = snap.api_key_full("org_i", None, None, None);
    set_key(
        &snap,
        &id,
        "allowed_ips",
        r#"'["203.0.113.0/24","2001:db8::/32","198.51.100.7"]'"#,
    );
    let (bad, bad_id) = snap.api_key_full("org_i", None, None, None);
    set_key(&snap, &bad_id, "allowed_ips", r#"'["10.0.0.0/33"]'"#);
    let (broken, broken_id) = snap.api_key_full("org_i", None, None, None);
    set_key(&snap, &broken_id, "allowed_ips", r#"'not json'"#);
    let plain = snap.api_key("org_i");
    let kw = start(
        &snap,
        Opts::new(echo())
            .generous_plan()
            .set("server.trusted_proxies", vec!["127.0.0.1/32"]),
    );
    assert_eq!(via_proxy(&kw, &key, "203.0.113.9").status, 200);
    assert_eq!(via_proxy(&kw, &key, "198.51.100.7").status, 200);
    assert_eq!(via_proxy(&kw, &key, "2001:db8::5").status, 200);
    for outside in ["198.51.100.8", "203.0.114.1", "2001:db9::1", "127.0.0.1"] {
        let r = via_proxy(&kw, &key, outside);
        r.assert_error(403, "FORBIDDEN");
        assert_eq!(reason(&r), "ip_not_allowed", "{outside}");
    }
    // the last untrusted hop decides, not one the client wrote before it
    let r = via_proxy(&kw, &key, "203.0.113.9, 192.0.2.1");
    assert_eq!(reason(&r), "ip_not_allowed");
    // without a forwarding header the peer (127.0.0.1) is the client
    let r = kw.get("/api/v1/x", Some(&key));
    assert_eq!(reason(&r), "ip_not_allowed");
    // a malformed list makes that key unusable, never the others
    for k in [&bad, &broken] {
        let r = via_proxy(&kw, k, "10.0.0.1");
        r.assert_error(403, "FORBIDDEN");
        assert_eq!(reason(&r), "malformed_allowed_ips");
    }
    assert_eq!(via_proxy(&kw, &plain, "192.0.2.1").status, 200);
}

#[test]
fn allowed_ips_ignore_forwarding_headers_from_an_untrusted_peer() {
    let snap = policy_snap();
    snap.org("org_u", "free");
    let (key, id) = snap.api_key_full("org_u", None, None, None);
    set_key(&snap, &id, "allowed_ips", r#"'["203.0.113.0/24"]'"#);
    let kw = start(&snap, Opts::new(echo()).generous_plan());
    // no trusted proxies: a client cannot claim another address
    let r = via_proxy(&kw, &key, "203.0.113.9");
    assert_eq!(reason(&r), "ip_not_allowed");
    let r = kw.send_head(
        "/api/v1/x",
        format!(
            "{}X-Real-IP: 203.0.113.9\r\nForwarded: for=203.0.113.9\r\n",
            bearer(&key)
        ),
    );
    assert_eq!(r.status, 403, "{}", r.body_str());
}

#[test]
fn a_read_only_key_passes_only_get_head_and_options() {
    let snap = policy_snap();
    snap.org("org_r", "free");
    let (key, _) = snap.api_key_full(
        "org_r",
        Some(r#"{"scope":"org","readOnly":true}"#),
        None,
        None,
    );
    let (weird, _) = snap.api_key_full(
        "org_r",
        Some(r#"{"scope":"org","readOnly":"yes"}"#),
        None,
        None,
    );
    let kw = start(&snap, Opts::new(echo()).generous_plan());
    let auth = bearer(&key);
    assert_eq!(kw.send_head("/api/v1/x", &auth).status, 200);
    assert_eq!(
        send_bytes(kw.addr, "HEAD", "/api/v1/x", auth.as_bytes(), None).status,
        200
    );
    assert_eq!(
        send_bytes(kw.addr, "OPTIONS", "/api/v1/x", auth.as_bytes(), None).status,
        200
    );
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        let r = kw.send(method, "/api/v1/x", &auth, "{}");
        r.assert_error(403, "SCOPE_DENIED");
        assert_eq!(reason(&r), "read_only", "{method}");
    }
    // readOnly that is not a boolean: the key is unusable
    let r = kw.get("/api/v1/x", Some(&weird));
    r.assert_error(403, "FORBIDDEN");
    assert_eq!(reason(&r), "malformed_permissions");
}

#[test]
fn a_snapshot_without_the_columns_keeps_working_and_columns_added_later_apply() {
    let snap = Snap::new(); // the contract's schema: no §6.1 columns
    snap.sql("INSERT INTO organizations (id, plan, rate_limit) VALUES ('org_o', 'free', 100)");
    let (key, id) = snap.api_key_full("org_o", None, None, None);
    let kw = start(&snap, Opts::new(echo()));
    let r = kw.get("/api/v1/x", Some(&key));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-limit"), Some("100"));
    // a new version with the column and a limit for the key
    let before = kw.generation();
    snap.replace_by_rename(|c| {
        c.execute_batch(&format!(
            "ALTER TABLE api_keys ADD COLUMN rate_limit INTEGER; UPDATE api_keys SET rate_limit = 1 WHERE id = '{id}';"
        ))
        .unwrap();
    });
    kw.wait_reloaded(before);
    let r = kw.get("/api/v1/x", Some(&key));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-limit"), Some("1"));
    let r = kw.get("/api/v1/x", Some(&key));
    assert_eq!(r.json()["details"]["limit"], "key");
}

#[test]
fn an_mcp_token_has_its_own_window_too() {
    let snap = policy_snap();
    snap.org("org_m", "free")
        .workspace("ws_m", "org_m")
        .mcp_server("srv_m", "org_m", "ws_m", "bearer");
    let token = snap.mcp_token("srv_m", "static", None);
    snap.sql("UPDATE mcp_tokens SET rate_limit = 1");
    let kw = start(&snap, Opts::new(echo()).generous_plan());
    let path = "/mcp/srv_m/sse";
    let first = kw.get(path, Some(&token));
    assert_eq!(first.status, 200, "{}", first.body_str());
    assert_eq!(first.header("x-ratelimit-limit"), Some("1"));
    let r = kw.get(path, Some(&token));
    r.assert_error(429, "RATE_LIMIT_EXCEEDED");
    assert_eq!(r.json()["details"]["limit"], "key");
}

#[test]
fn a_client_a_trusted_proxy_does_not_name_is_unknown_to_an_allow_list() {
    let snap = policy_snap();
    snap.org("org_p", "free");
    // a key meant for the proxies' own range: the proxy's address must
    // never stand in for a client it failed to name
    let (key, id) = snap.api_key_full("org_p", None, None, None);
    set_key(
        &snap,
        &id,
        "allowed_ips",
        r#"'["127.0.0.0/8","203.0.113.7"]'"#,
    );
    let kw = start(
        &snap,
        Opts::new(echo())
            .generous_plan()
            .set("server.trusted_proxies", vec!["127.0.0.1/32"]),
    );
    assert_eq!(via_proxy(&kw, &key, "203.0.113.7").status, 200);
    for hop in [
        "10.0.0.1:1234",
        "203.0.113.7,",
        "[2001:db8::1]:443",
        "unknown",
        "10.0.0.1, unknown",
        "127.0.0.1",
    ] {
        let r = via_proxy(&kw, &key, hop);
        r.assert_error(403, "FORBIDDEN");
        assert_eq!(reason(&r), "ip_not_allowed", "{hop}");
    }
    let r = kw.get("/api/v1/x", Some(&key));
    assert_eq!(reason(&r), "ip_not_allowed", "no hop at all");
    // the refusal is the key's: its prefix is on the access line
    assert!(
        wait_until(LOG_TIMEOUT, || kw
            .log()
            .lines()
            .any(|l| l.contains("reason=ip_not_allowed")
                && l.contains("auth_method=api_key")
                && l.contains(&format!("key_prefix={}", &key[..8])))),
        "{}",
        kw.log()
    );
}

#[test]
fn a_read_only_key_cannot_open_a_websocket() {
    let snap = policy_snap();
    snap.org("org_w", "free");
    let (key, _) = snap.api_key_full(
        "org_w",
        Some(r#"{"scope":"org","readOnly":true}"#),
        None,
        None,
    );
    let kw = start(&snap, Opts::new(echo()).generous_plan());
    let r = kw.send_head(
        "/api/v1/ws",
        format!(
            "{}Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
            bearer(&key)
        ),
    );
    r.assert_error(403, "SCOPE_DENIED");
    assert_eq!(reason(&r), "read_only");
}

#[test]
fn a_policy_column_of_the_wrong_type_fails_closed_without_a_store_error() {
    let snap = policy_snap();
    snap.org("org_y", "free");
    let (text_limit, a) = snap.api_key_full("org_y", None, None, None);
    set_key(&snap, &a, "rate_limit", "'abc'");
    let (real_limit, b) = snap.api_key_full("org_y", None, None, None);
    set_key(&snap, &b, "rate_limit", "2.5");
    let (blob_ips, c) = snap.api_key_full("org_y", None, None, None);
    set_key(&snap, &c, "allowed_ips", "X'5b2231302e302e302e302f38225d'");
    let kw = start(&snap, Opts::new(echo()).generous_plan());
    for k in [&text_limit, &real_limit] {
        let r = kw.get("/api/v1/x", Some(k));
        r.assert_error(429, "RATE_LIMIT_EXCEEDED");
        assert_eq!(r.json()["details"]["limit"], "key");
    }
    let r = kw.get("/api/v1/x", Some(&blob_ips));
    r.assert_error(403, "FORBIDDEN");
    assert_eq!(reason(&r), "malformed_allowed_ips");
    // cached like any verdict: the store is not asked again
    let lookups = kw.metric("keyward_snapshot_lookups_total{table=\"api_keys\"}");
    for _ in 0..5 {
        assert_eq!(kw.get("/api/v1/x", Some(&blob_ips)).status, 403);
    }
    assert_eq!(
        kw.metric("keyward_snapshot_lookups_total{table=\"api_keys\"}"),
        lookups
    );
    assert!(!kw.log().contains("snapshot lookup failed"), "{}", kw.log());
}
