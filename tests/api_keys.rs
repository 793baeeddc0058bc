//! API keys end to end (SPEC §3.1, §4, §7) against the real binary.
mod common;
use common::*;
use std::time::Duration;

fn setup() -> (Snap, Keyward) {
    let snap = Snap::new();
    snap.org("org_a", "free").workspace("ws_a", "org_a");
    let kw = Keyward::start(&snap, Opts::new(echo()));
    (snap, kw)
}

#[test]
fn valid_key_is_forwarded_with_identity_headers() {
    let (snap, kw) = setup();
    let (key, id) = snap.api_key_full("org_a", None, None, None);
    let r = kw.get("/api/v1/things?x=1", Some(&key));
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.upstream_header("x-org-id"), vec!["org_a"]);
    assert_eq!(r.upstream_header("x-auth-method"), vec!["api_key"]);
    assert_eq!(r.upstream_header("x-api-key-id"), vec![id]);
    assert_eq!(
        r.upstream_header("authorization"),
        vec![format!("Bearer {key}")]
    );
    assert!(r.upstream_header("x-allowed-workspaces").is_empty());
    assert_eq!(r.upstream_header("x-request-id").len(), 1);
    assert_eq!(r.json()["query"], "x=1");
}

#[test]
fn spoofed_identity_headers_are_stripped_in_every_spelling() {
    let (snap, kw) = setup();
    let key = snap.api_key("org_a");
    let spoof = [
        ("X-Org-ID", "evil"),
        ("x-org-id", "evil2"),
        ("X_Org_ID", "evil3"),
        ("x_org-id", "evil4"),
        ("X-AUTH-METHOD", "service_key"),
        ("X-User-Id", "u_evil"),
        ("X_Workspace_ID", "ws_evil"),
        ("X-Allowed-Workspaces", "ws_evil"),
        ("X-MCP-Server-ID", "srv"),
        ("x_end_user_id", "eu"),
        ("X-Api-Key-Id", "key_evil"),
    ];
    let auth = format!("Bearer {key}");
    let mut headers: Vec<(&str, &str)> = spoof.to_vec();
    headers.push(("Authorization", &auth));
    let r = kw.request("GET", "/api/v1/things", &headers, "");
    assert_eq!(r.status, 200);
    let up = r.upstream_headers();
    for (name, _) in spoof {
        let lower = name.to_ascii_lowercase();
        let values = up.get(&lower).cloned().unwrap_or_default();
        assert!(
            values
                .iter()
                .all(|v| !v.contains("evil") && v != "srv" && v != "eu" && v != "service_key"),
            "{name}: {values:?}"
        );
    }
    assert!(
        !up.contains_key("x_org_id")
            && !up.contains_key("x_end_user_id")
            && !up.contains_key("x_workspace_id")
    );
    assert_eq!(r.upstream_header("x-org-id"), vec!["org_a"]);
    // auth = "none" routes strip them too
    let r = kw.request("GET", "/api/auth/session", &spoof, "");
    assert_eq!(r.status, 200);
    let up = r.upstream_headers();
    for (name, _) in spoof {
        assert!(
            !up.contains_key(&name.to_ascii_lowercase()),
            "{name} reached the upstream"
        );
    }
}

#[test]
fn unknown_malformed_and_missing_credentials_are_401_with_challenge() {
    let (_snap, kw) = setup();
    for bearer in [Some("wvz_nope"), Some("garbage"), None] {
        let r = kw.get("/api/v1/things", bearer);
        r.assert_error(401, "UNAUTHENTICATED");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    let r = kw.request(
        "GET",
        "/api/v1/things",
        &[("Authorization", "Basic dTpw")],
        "",
    );
    r.assert_error(401, "UNAUTHENTICATED");
    let r = kw.request("GET", "/api/v1/things", &[("Authorization", "Bearer")], "");
    r.assert_error(401, "UNAUTHENTICATED");
}

#[test]
fn revoked_expired_and_disabled_org_keys() {
    let (snap, kw) = setup();
    snap.sql("INSERT INTO organizations (id, plan, disabled) VALUES ('org_off', 'free', 1)");
    let (revoked, _) = snap.api_key_full("org_a", None, None, Some(1));
    let (expired, _) = snap.api_key_full("org_a", None, Some(now() - 10), None);
    let (future, _) = snap.api_key_full("org_a", None, Some(now() + 3600), None);
    let disabled = snap.api_key("org_off");
    let orphan = snap.api_key("org_missing");
    let (malformed, _) = snap.api_key_full("org_a", Some("{not json"), None, None);
    // the watcher sees the in-place changes
    std::thread::sleep(Duration::from_millis(400));
    let r = kw.get("/api/v1/x", Some(&revoked));
    r.assert_error(401, "UNAUTHENTICATED");
    assert_eq!(r.json()["details"]["reason"], "revoked");
    let r = kw.get("/api/v1/x", Some(&expired));
    r.assert_error(401, "UNAUTHENTICATED");
    assert_eq!(r.json()["details"]["reason"], "expired");
    assert!(!r.body_str().contains(&expired), "secret echoed");
    assert_eq!(kw.get("/api/v1/x", Some(&future)).status, 200);
    kw.get("/api/v1/x", Some(&disabled))
        .assert_error(403, "FORBIDDEN");
    kw.get("/api/v1/x", Some(&orphan))
        .assert_error(403, "FORBIDDEN");
    kw.get("/api/v1/x", Some(&malformed))
        .assert_error(403, "FORBIDDEN");
}

#[test]
fn revocation_in_place_becomes_visible_within_the_poll_interval() {
    let (snap, kw) = setup();
    let (key, id) = snap.api_key_full("org_a", None, None, None);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(kw.get("/api/v1/x", Some(&key)).status, 200);
    assert_eq!(kw.get("/api/v1/x", Some(&key)).status, 200); // now cached
    snap.conn()
        .execute("UPDATE api_keys SET revoked_at = 1 WHERE id = ?1", [&id])
        .unwrap();
    assert!(wait_until(Duration::from_secs(3), || kw
        .get("/api/v1/x", Some(&key))
        .status
        == 401));
}

#[test]
fn new_key_by_rename_is_valid_after_the_negative_cache_saw_it() {
    let (snap, kw) = setup();
    let key = "wvz_brand_new_key_0123456789";
    kw.get("/api/v1/x", Some(key))
        .assert_error(401, "UNAUTHENTICATED");
    kw.get("/api/v1/x", Some(key))
        .assert_error(401, "UNAUTHENTICATED");
    assert!(kw.metric("keyward_cache_lookups_total{result=\"negative_hit\"}") >= 1.0);
    snap.replace_by_rename(|c| {
        c.execute(
            "INSERT INTO api_keys (id, organization_id, key_hash, key_prefix) VALUES ('key_new', 'org_a', ?1, 'wvz_bran')",
            [hash(key)],
        )
        .unwrap();
    });
    assert!(wait_until(Duration::from_secs(3), || kw
        .get("/api/v1/x", Some(key))
        .status
        == 200));
}

#[test]
fn a_renamed_in_snapshot_is_served_at_once_not_at_the_next_poll() {
    // A poll interval far longer than the test: only the file-change
    // notification can make the revocation visible in time.
    let snap = Snap::new();
    snap.org("org_a", "free");
    let (key, id) = snap.api_key_full("org_a", None, None, None);
    let mut opts = Opts::new(echo());
    opts.poll_ms = 600_000;
    let kw = Keyward::start(&snap, opts);
    assert_eq!(kw.get("/api/v1/x", Some(&key)).status, 200);
    // served from the verdict cache from now on
    let hits = kw.metric("keyward_cache_lookups_total{result=\"hit\"}");
    assert_eq!(kw.get("/api/v1/x", Some(&key)).status, 200);
    assert!(kw.metric("keyward_cache_lookups_total{result=\"hit\"}") > hits);
    let generation = kw.metric("keyward_snapshot_generation");
    snap.replace_by_rename(|c| {
        c.execute("DELETE FROM api_keys WHERE id = ?1", [&id])
            .unwrap();
    });

    assert!(
        wait_until(Duration::from_secs(3), || kw
            .get("/api/v1/x", Some(&key))
            .status
            == 401),
        "the revocation was not served within 3 s (poll interval 600 s)"
    );
    assert!(kw.metric("keyward_snapshot_generation") > generation);
}

/// Waits for the snapshot generation after `before` to be served.
fn wait_for_generation_after(kw: &Keyward, before: f64) {
    assert!(
        wait_until(Duration::from_secs(5), || kw
            .metric("keyward_snapshot_generation")
            > before),
        "the new snapshot was not loaded"
    );
}

#[test]
fn a_swap_never_serves_a_cached_verdict_the_new_snapshot_changed() {
    let (snap, kw) = setup();
    snap.org("org_b", "free").workspace("ws_b", "org_b");
    let (revoked, revoked_id) = snap.api_key_full("org_a", None, None, None);
    let (expired, expired_id) = snap.api_key_full("org_a", None, None, None);
    let (rescoped, rescoped_id) = snap.api_key_full("org_a", None, None, None);
    let of_disabled_org = snap.api_key("org_b");
    let path = "/api/v1/workspaces/ws_a/connections";
    let org_b_path = "/api/v1/workspaces/ws_b/connections";
    std::thread::sleep(Duration::from_millis(400));
    for _ in 0..2 {
        // the second round is answered from the verdict cache
        assert_eq!(kw.get(path, Some(&revoked)).status, 200);
        assert_eq!(kw.get(path, Some(&expired)).status, 200);
        assert_eq!(kw.get(path, Some(&rescoped)).status, 200);
        assert_eq!(kw.get(org_b_path, Some(&of_disabled_org)).status, 200);
    }
    assert!(kw.metric("keyward_cache_lookups_total{result=\"hit\"}") >= 4.0);
    let generation = kw.metric("keyward_snapshot_generation");
    snap.replace_by_rename(|c| {
        c.execute_batch(&format!(
            "UPDATE api_keys SET revoked_at = 1 WHERE id = '{revoked_id}';
             UPDATE api_keys SET expires_at = 1 WHERE id = '{expired_id}';
             UPDATE api_keys SET permissions = '{{\"scope\":\"workspace\",\"workspaceIds\":[\"ws_other\"]}}' WHERE id = '{rescoped_id}';
             UPDATE organizations SET disabled = 1 WHERE id = 'org_b';"
        ))
        .unwrap();
    });
    wait_for_generation_after(&kw, generation);
    // The very first request after the swap gets the new snapshot's answer.
    let r = kw.get(path, Some(&revoked));
    r.assert_error(401, "UNAUTHENTICATED");
    assert_eq!(r.json()["details"]["reason"], "revoked");
    let r = kw.get(path, Some(&expired));
    r.assert_error(401, "UNAUTHENTICATED");
    assert_eq!(r.json()["details"]["reason"], "expired");
    kw.get(path, Some(&rescoped))
        .assert_error(403, "SCOPE_DENIED");
    kw.get(org_b_path, Some(&of_disabled_org))
        .assert_error(403, "FORBIDDEN");
}

#[test]
fn a_still_valid_cached_key_stays_a_cache_hit_across_a_swap() {
    let (snap, kw) = setup();
    let key = snap.api_key("org_a");
    let path = "/api/v1/workspaces/ws_a/connections";
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(kw.get(path, Some(&key)).status, 200);
    assert_eq!(kw.get(path, Some(&key)).status, 200);
    let generation = kw.metric("keyward_snapshot_generation");
    snap.replace_by_rename(|c| {
        c.execute_batch("INSERT INTO organizations (id, plan) VALUES ('org_new', 'free')")
            .unwrap();
    });
    wait_for_generation_after(&kw, generation);
    let hits = kw.metric("keyward_cache_lookups_total{result=\"hit\"}");
    let misses = kw.metric("keyward_cache_lookups_total{result=\"miss\"}");
    let r = kw.get(path, Some(&key));
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-workspace-id"), ["ws_a"]);
    assert_eq!(
        kw.metric("keyward_cache_lookups_total{result=\"hit\"}"),
        hits + 1.0
    );
    assert_eq!(
        kw.metric("keyward_cache_lookups_total{result=\"miss\"}"),
        misses
    );
}

#[test]
fn before_any_snapshot_auth_is_unavailable_then_loads() {
    let snap = Snap::new();
    std::fs::remove_file(&snap.path).unwrap();
    let mut opts = Opts::new(echo());
    opts.wait_ready = false;
    let kw = Keyward::start(&snap, opts);
    let r = kw.get("/api/v1/x", Some("wvz_whatever"));
    r.assert_error(503, "AUTH_UNAVAILABLE");
    kw.get("/api/v1/x", None)
        .assert_error(503, "AUTH_UNAVAILABLE");
    assert_eq!(get(kw.admin, "/readyz").status, 503);
    // auth = "none" routes still pass
    assert_eq!(kw.get("/api/auth/ok", None).status, 200);
    let tmp = Snap::new();
    tmp.org("org_a", "free");
    let key = tmp.api_key("org_a");
    std::fs::rename(&tmp.path, &snap.path).unwrap();
    assert!(wait_until(Duration::from_secs(3), || kw
        .get("/api/v1/x", Some(&key))
        .status
        == 200));
    assert_eq!(get(kw.admin, "/readyz").status, 200);
}

#[test]
fn an_invalid_new_snapshot_keeps_the_last_good_one() {
    let (snap, kw) = setup();
    let key = snap.api_key("org_a");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(kw.get("/api/v1/x", Some(&key)).status, 200);
    let bad = snap.dir.path().join("bad.db");
    std::fs::write(&bad, b"this is not sqlite at all, just garbage bytes").unwrap();
    std::fs::rename(&bad, &snap.path).unwrap();
    assert!(wait_until(Duration::from_secs(3), || kw
        .metric("keyward_snapshot_reloads_total{result=\"failed\"}")
        >= 1.0));
    assert_eq!(kw.get("/api/v1/x", Some(&key)).status, 200);
    let ready = get(kw.admin, "/readyz").json();
    assert!(
        ready["snapshot"]["last_reload_error"].is_string(),
        "{ready}"
    );
    // a snapshot missing a required table is refused too
    let other = Snap::new();
    other.sql("DROP TABLE resources");
    std::fs::rename(&other.path, &snap.path).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(kw.get("/api/v1/x", Some(&key)).status, 200);
    assert!(get(kw.admin, "/readyz").body_str().contains("resources"));
}

#[test]
fn upstream_refused_is_502_and_slow_is_504() {
    let snap = Snap::new();
    snap.org("org_a", "free");
    let key = snap.api_key("org_a");
    let kw = Keyward::start(&snap, Opts::new(free_port()));
    kw.get("/api/v1/x", Some(&key))
        .assert_error(502, "UPSTREAM_UNAVAILABLE");

    let mut opts = Opts::new(echo());
    opts.extra = "[upstream]\nread_timeout_ms = 300\n".into();
    let snap2 = Snap::new();
    snap2.org("org_a", "free");
    let key2 = snap2.api_key("org_a");
    let kw2 = Keyward::start(&snap2, opts);
    kw2.get("/api/v1/x?echo_delay_ms=2000", Some(&key2))
        .assert_error(504, "UPSTREAM_TIMEOUT");
    assert_eq!(
        kw2.get("/api/v1/x?echo_delay_ms=10", Some(&key2)).status,
        200
    );
}

#[test]
fn request_id_is_kept_when_valid_and_replaced_otherwise() {
    let (snap, kw) = setup();
    let key = snap.api_key("org_a");
    let auth = format!("Bearer {key}");
    let r = kw.request(
        "GET",
        "/api/v1/x",
        &[("Authorization", &auth), ("X-Request-ID", "abc-123:Z.9_")],
        "",
    );
    assert_eq!(r.upstream_header("x-request-id"), vec!["abc-123:Z.9_"]);
    let r = kw.request(
        "GET",
        "/api/v1/x",
        &[("Authorization", &auth), ("X-Request-ID", "bad id!")],
        "",
    );
    let got = r.upstream_header("x-request-id");
    assert_eq!(got.len(), 1);
    assert_ne!(got[0], "bad id!");
}

#[test]
fn streaming_responses_and_request_bodies_pass_through() {
    let (snap, kw) = setup();
    let key = snap.api_key("org_a");
    let r = kw.get("/api/v1/stream?echo_chunks=5", Some(&key));
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str().matches("data: ").count(), 5);
    let body = "x".repeat(300_000);
    let auth = format!("Bearer {key}");
    let r = kw.request("PUT", "/api/v1/upload", &[("Authorization", &auth)], &body);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 300_000);
}

#[test]
fn paths_are_normalized_or_refused() {
    let (snap, kw) = setup();
    let key = snap.api_key("org_a");
    let r = kw.get("/api//v1/./workspaces/../things/%61bc?q=1", Some(&key));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/api/v1/things/abc");
    assert_eq!(r.json()["query"], "q=1");
    for bad in ["/api/v1/a%2Fb", "/../etc/passwd", "/api/%5c", "/a/%00"] {
        kw.get(bad, Some(&key)).assert_error(400, "BAD_REQUEST");
    }
}

#[test]
fn strip_credentials_drops_authorization_toward_the_upstream() {
    let snap = Snap::new();
    snap.org("org_a", "free");
    let key = snap.api_key("org_a");
    let mut opts = Opts::new(echo());
    opts.extra = "[upstream]\nstrip_credentials = true\n".into();
    let kw = Keyward::start(&snap, opts);
    let r = kw.get("/api/v1/x", Some(&key));
    assert_eq!(r.status, 200);
    assert!(r.upstream_header("authorization").is_empty());
    assert_eq!(r.upstream_header("x-org-id"), vec!["org_a"]);
}

#[test]
fn cli_snapshot_init_keys_create_and_check() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let bin = env!("CARGO_BIN_EXE_keyward");
    let out = std::process::Command::new(bin)
        .args(["snapshot", "init"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = std::process::Command::new(bin)
        .args(["keys", "create", "--snapshot"])
        .arg(&db)
        .args(["--org", "org_cli", "--workspace", "ws_1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap();
    let key = key.trim();
    assert!(key.starts_with("wvz_") && !key.contains('\n'));
    let conn = rusqlite::Connection::open(&db).unwrap();
    let perms: String = conn
        .query_row(
            "SELECT permissions FROM api_keys WHERE key_hash = ?1",
            [hash(key)],
            |r| r.get(0),
        )
        .unwrap();
    assert!(perms.contains("ws_1"));
    std::fs::write(
        dir.path().join("k.toml"),
        "[snapshot]\npath = \"s.db\"\n[plans.free]\nrequests_per_window = 5\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin)
        .args(["check", "--config"])
        .arg(dir.path().join("k.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("api_keys: 1")
            && text.contains("organizations: 1")
            && text.contains("workspaces: 1"),
        "{text}"
    );
    std::fs::write(
        dir.path().join("bad.toml"),
        "[snapshot]\npath = \"s.db\"\nbogus = 1\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin)
        .args(["check", "--config"])
        .arg(dir.path().join("bad.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus"));
}
