//! API keys end to end (SPEC §3.1, §4, §7) against the real binary. The
//! world is `common::World`: `org_a` (`ws_a1`, `ws_a2`), `org_b` (`ws_b`),
//! an org-wide key and a key scoped to `ws_a1`.
mod common;
use common::*;
use std::time::Duration;

fn setup() -> (World, Keyward) {
    let w = World::new();
    let kw = w.start(echo());
    (w, kw)
}

#[test]
fn valid_key_is_forwarded_with_identity_headers() {
    let (w, kw) = setup();
    let (key, id) = (&w.org_key, &w.org_key_id);
    let r = kw.get("/api/v1/things?x=1", Some(key));
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.upstream_header("x-org-id"), vec!["org_a"]);
    assert_eq!(r.upstream_header("x-auth-method"), vec!["api_key"]);
    assert_eq!(r.upstream_header("x-api-key-id"), vec![id.clone()]);
    assert_eq!(
        r.upstream_header("authorization"),
        vec![format!("Bearer {key}")]
    );
    assert!(r.upstream_header("x-allowed-workspaces").is_empty());
    assert_eq!(r.upstream_header("x-request-id").len(), 1);
    assert_eq!(r.json()["query"], "x=1");
}

/// Client copies of identity headers, in several spellings.
const SPOOF: [(&str, &str); 11] = [
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

#[test]
fn spoofed_identity_headers_are_stripped_in_every_spelling() {
    let (w, kw) = setup();
    let auth = format!("Bearer {}", w.org_key);
    let mut headers: Vec<(&str, &str)> = SPOOF.to_vec();
    headers.push(("Authorization", &auth));
    let r = kw.request("GET", "/api/v1/things", &headers, "");
    assert_eq!(r.status, 200);
    let up = r.upstream_headers();
    for (name, _) in SPOOF {
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
}

#[test]
fn spoofed_identity_headers_are_stripped_on_auth_none_routes() {
    let (_w, kw) = setup();
    let r = kw.request("GET", "/api/auth/session", &SPOOF, "");
    assert_eq!(r.status, 200);
    let up = r.upstream_headers();
    for (name, _) in SPOOF {
        assert!(
            !up.contains_key(&name.to_ascii_lowercase()),
            "{name} reached the upstream"
        );
    }
}

#[test]
fn unknown_malformed_and_missing_bearer_tokens_are_401_with_challenge() {
    let (_w, kw) = setup();
    for bearer in [Some("wvz_nope"), Some("garbage"), None] {
        let r = kw.get("/api/v1/things", bearer);
        r.assert_error(401, "UNAUTHENTICATED");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
}

#[test]
fn basic_scheme_and_a_bearer_without_token_are_401() {
    let (_w, kw) = setup();
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
fn revoked_key_is_401_revoked() {
    let w = World::new();
    let (revoked, _) = w.snap.api_key_full("org_a", None, None, Some(1));
    let kw = w.start(echo());
    let r = kw.get("/api/v1/x", Some(&revoked));
    r.assert_error(401, "UNAUTHENTICATED");
    assert_eq!(r.json()["details"]["reason"], "revoked");
}

#[test]
fn expired_key_is_401_expired_and_not_echoed() {
    let w = World::new();
    let (expired, _) = w.snap.api_key_full("org_a", None, Some(now() - 10), None);
    let kw = w.start(echo());
    let r = kw.get("/api/v1/x", Some(&expired));
    r.assert_error(401, "UNAUTHENTICATED");
    assert_eq!(r.json()["details"]["reason"], "expired");
    assert!(!r.body_str().contains(&expired), "secret echoed");
}

#[test]
fn key_expiring_in_the_future_is_admitted() {
    let w = World::new();
    let (future, _) = w.snap.api_key_full("org_a", None, Some(now() + 3600), None);
    let kw = w.start(echo());
    assert_eq!(kw.get("/api/v1/x", Some(&future)).status, 200);
}

#[test]
fn key_of_a_disabled_organization_is_403() {
    let w = World::new();
    w.snap
        .sql("INSERT INTO organizations (id, plan, disabled) VALUES ('org_off', 'free', 1)");
    let disabled = w.snap.api_key("org_off");
    let kw = w.start(echo());
    kw.get("/api/v1/x", Some(&disabled))
        .assert_error(403, "FORBIDDEN");
}

#[test]
fn key_of_a_missing_organization_is_403() {
    let w = World::new();
    let orphan = w.snap.api_key("org_missing");
    let kw = w.start(echo());
    kw.get("/api/v1/x", Some(&orphan))
        .assert_error(403, "FORBIDDEN");
}

#[test]
fn key_with_malformed_permissions_is_403() {
    let w = World::new();
    let (malformed, _) = w.snap.api_key_full("org_a", Some("{not json"), None, None);
    let kw = w.start(echo());
    kw.get("/api/v1/x", Some(&malformed))
        .assert_error(403, "FORBIDDEN");
}

#[test]
fn revocation_in_place_becomes_visible_within_the_poll_interval() {
    let (w, kw) = setup();
    let (key, id) = (&w.org_key, &w.org_key_id);
    assert_eq!(kw.get("/api/v1/x", Some(key)).status, 200);
    assert_eq!(kw.get("/api/v1/x", Some(key)).status, 200); // now cached
    w.snap
        .conn()
        .execute("UPDATE api_keys SET revoked_at = 1 WHERE id = ?1", [id])
        .unwrap();
    assert!(wait_until(Duration::from_secs(3), || kw
        .get("/api/v1/x", Some(key))
        .status
        == 401));
}

#[test]
fn new_key_by_rename_is_valid_after_the_negative_cache_saw_it() {
    let (w, kw) = setup();
    let key = "wvz_brand_new_key_0123456789";
    kw.get("/api/v1/x", Some(key))
        .assert_error(401, "UNAUTHENTICATED");
    kw.get("/api/v1/x", Some(key))
        .assert_error(401, "UNAUTHENTICATED");
    // refused from the negative cache, or by the token filter (whose
    // answers are not cached)
    assert!(
        kw.metric("keyward_cache_lookups_total{result=\"negative_hit\"}")
            + kw.metric("keyward_token_filter_total{result=\"ruled_out\"}")
            >= 1.0
    );
    w.snap.replace_by_rename(|c| {
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
    let w = World::new();
    let (key, id) = (&w.org_key, &w.org_key_id);
    let mut opts = Opts::new(echo());
    opts.poll_ms = 600_000;
    let kw = w.start_with(opts);
    assert_eq!(kw.get("/api/v1/x", Some(key)).status, 200);
    // served from the verdict cache from now on
    let hits = kw.metric("keyward_cache_lookups_total{result=\"hit\"}");
    assert_eq!(kw.get("/api/v1/x", Some(key)).status, 200);
    assert!(kw.metric("keyward_cache_lookups_total{result=\"hit\"}") > hits);
    let generation = kw.metric("keyward_snapshot_generation");
    w.snap.replace_by_rename(|c| {
        c.execute("DELETE FROM api_keys WHERE id = ?1", [id])
            .unwrap();
    });

    assert!(
        wait_until(Duration::from_secs(3), || kw
            .get("/api/v1/x", Some(key))
            .status
            == 401),
        "the revocation was not served within 3 s (poll interval 600 s)"
    );
    assert!(kw.metric("keyward_snapshot_generation") > generation);
}

#[test]
fn a_swap_never_serves_a_cached_verdict_the_new_snapshot_changed() {
    let w = World::new();
    let (revoked, revoked_id) = w.snap.api_key_full("org_a", None, None, None);
    let (expired, expired_id) = w.snap.api_key_full("org_a", None, None, None);
    let (rescoped, rescoped_id) = w.snap.api_key_full("org_a", None, None, None);
    let of_disabled_org = w.snap.api_key("org_b");
    let kw = w.start(echo());
    let path = "/api/v1/workspaces/ws_a1/connections";
    let org_b_path = "/api/v1/workspaces/ws_b/connections";
    for _ in 0..2 {
        // the second round is answered from the verdict cache
        assert_eq!(kw.get(path, Some(&revoked)).status, 200);
        assert_eq!(kw.get(path, Some(&expired)).status, 200);
        assert_eq!(kw.get(path, Some(&rescoped)).status, 200);
        assert_eq!(kw.get(org_b_path, Some(&of_disabled_org)).status, 200);
    }
    assert!(kw.metric("keyward_cache_lookups_total{result=\"hit\"}") >= 4.0);
    let generation = kw.generation();
    w.snap.replace_by_rename(|c| {
        c.execute_batch(&format!(
            "UPDATE api_keys SET revoked_at = 1 WHERE id = '{revoked_id}';
             UPDATE api_keys SET expires_at = 1 WHERE id = '{expired_id}';
             UPDATE api_keys SET permissions = '{{\"scope\":\"workspace\",\"workspaceIds\":[\"ws_other\"]}}' WHERE id = '{rescoped_id}';
             UPDATE organizations SET disabled = 1 WHERE id = 'org_b';"
        ))
        .unwrap();
    });
    kw.wait_reloaded(generation);
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
    let (w, kw) = setup();
    let key = &w.org_key;
    let path = "/api/v1/workspaces/ws_a1/connections";
    assert_eq!(kw.get(path, Some(key)).status, 200);
    assert_eq!(kw.get(path, Some(key)).status, 200);
    let generation = kw.generation();
    w.snap.replace_by_rename(|c| {
        c.execute_batch("INSERT INTO organizations (id, plan) VALUES ('org_new', 'free')")
            .unwrap();
    });
    kw.wait_reloaded(generation);
    let hits = kw.metric("keyward_cache_lookups_total{result=\"hit\"}");
    let misses = kw.metric("keyward_cache_lookups_total{result=\"miss\"}");
    let r = kw.get(path, Some(key));
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-workspace-id"), ["ws_a1"]);
    assert_eq!(
        kw.metric("keyward_cache_lookups_total{result=\"hit\"}"),
        hits + 1.0
    );
    assert_eq!(
        kw.metric("keyward_cache_lookups_total{result=\"miss\"}"),
        misses
    );
}

/// keyward started on a snapshot path with no file yet.
fn without_a_snapshot() -> (Snap, Keyward) {
    let snap = Snap::new();
    std::fs::remove_file(&snap.path).unwrap();
    let mut opts = Opts::new(echo());
    opts.wait_ready = false;
    let kw = Keyward::start(&snap, opts);
    (snap, kw)
}

#[test]
fn before_any_snapshot_auth_is_unavailable_and_readyz_fails() {
    let (_snap, kw) = without_a_snapshot();
    let r = kw.get("/api/v1/x", Some("wvz_whatever"));
    r.assert_error(503, "AUTH_UNAVAILABLE");
    kw.get("/api/v1/x", None)
        .assert_error(503, "AUTH_UNAVAILABLE");
    assert_eq!(get(kw.admin, "/readyz").status, 503);
}

#[test]
fn before_any_snapshot_auth_none_routes_still_pass() {
    let (_snap, kw) = without_a_snapshot();
    assert_eq!(kw.get("/api/auth/ok", None).status, 200);
}

#[test]
fn a_first_snapshot_renamed_in_is_loaded_and_makes_readyz_pass() {
    let (snap, kw) = without_a_snapshot();
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
fn garbage_renamed_over_the_snapshot_keeps_the_last_good_one() {
    let (w, kw) = setup();
    let key = &w.org_key;
    assert_eq!(kw.get("/api/v1/x", Some(key)).status, 200);
    let bad = w.snap.dir.path().join("bad.db");
    std::fs::write(&bad, b"this is not sqlite at all, just garbage bytes").unwrap();
    std::fs::rename(&bad, &w.snap.path).unwrap();
    assert!(wait_until(Duration::from_secs(3), || kw
        .metric("keyward_snapshot_reloads_total{result=\"failed\"}")
        >= 1.0));
    assert_eq!(kw.get("/api/v1/x", Some(key)).status, 200);
    let ready = get(kw.admin, "/readyz").json();
    assert!(
        ready["snapshot"]["last_reload_error"].is_string(),
        "{ready}"
    );
}

#[test]
fn a_snapshot_missing_a_required_table_is_refused() {
    let (w, kw) = setup();
    let key = &w.org_key;
    assert_eq!(kw.get("/api/v1/x", Some(key)).status, 200);
    let other = Snap::new();
    other.sql("DROP TABLE resources");
    std::fs::rename(&other.path, &w.snap.path).unwrap();
    // the refusal is reported before the key is tried again
    assert!(
        wait_until(RELOAD_TIMEOUT, || get(kw.admin, "/readyz")
            .body_str()
            .contains("resources")),
        "{}",
        get(kw.admin, "/readyz").body_str()
    );
    assert_eq!(kw.get("/api/v1/x", Some(key)).status, 200);
    assert!(get(kw.admin, "/readyz").body_str().contains("resources"));
}

#[test]
fn upstream_refused_is_502() {
    let w = World::new();
    let kw = w.start(free_port());
    kw.get("/api/v1/x", Some(&w.org_key))
        .assert_error(502, "UPSTREAM_UNAVAILABLE");
}

#[test]
fn upstream_slower_than_the_read_timeout_is_504() {
    let w = World::new();
    let kw = w.start_with(Opts::new(echo()).set("upstream.read_timeout_ms", 300));
    kw.get("/api/v1/x?echo_delay_ms=2000", Some(&w.org_key))
        .assert_error(504, "UPSTREAM_TIMEOUT");
    assert_eq!(
        kw.get("/api/v1/x?echo_delay_ms=10", Some(&w.org_key))
            .status,
        200
    );
}

#[test]
fn a_valid_request_id_is_kept() {
    let (w, kw) = setup();
    let auth = format!("Bearer {}", w.org_key);
    let r = kw.request(
        "GET",
        "/api/v1/x",
        &[("Authorization", &auth), ("X-Request-ID", "abc-123:Z.9_")],
        "",
    );
    assert_eq!(r.upstream_header("x-request-id"), vec!["abc-123:Z.9_"]);
}

#[test]
fn an_invalid_request_id_is_replaced() {
    let (w, kw) = setup();
    let auth = format!("Bearer {}", w.org_key);
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
fn streaming_responses_pass_through() {
    let (w, kw) = setup();
    let r = kw.get("/api/v1/stream?echo_chunks=5", Some(&w.org_key));
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str().matches("data: ").count(), 5);
}

#[test]
fn large_request_bodies_pass_through() {
    let (w, kw) = setup();
    let body = "x".repeat(300_000);
    let auth = format!("Bearer {}", w.org_key);
    let r = kw.request("PUT", "/api/v1/upload", &[("Authorization", &auth)], &body);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 300_000);
}

#[test]
fn paths_are_normalized_before_forwarding() {
    let (w, kw) = setup();
    let r = kw.get(
        "/api//v1/./workspaces/../things/%61bc?q=1",
        Some(&w.org_key),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/api/v1/things/abc");
    assert_eq!(r.json()["query"], "q=1");
}

#[test]
fn encoded_separators_nul_and_paths_above_the_root_are_400() {
    let (w, kw) = setup();
    for bad in ["/api/v1/a%2Fb", "/../etc/passwd", "/api/%5c", "/a/%00"] {
        kw.get(bad, Some(&w.org_key))
            .assert_error(400, "BAD_REQUEST");
    }
}

#[test]
fn strip_credentials_drops_authorization_toward_the_upstream() {
    let w = World::new();
    let kw = w.start_with(Opts::new(echo()).set("upstream.strip_credentials", true));
    let r = kw.get("/api/v1/x", Some(&w.org_key));
    assert_eq!(r.status, 200);
    assert!(r.upstream_header("authorization").is_empty());
    assert_eq!(r.upstream_header("x-org-id"), vec!["org_a"]);
}

/// `keyward snapshot init`, then `keyward keys create` for `org_cli` scoped
/// to `ws_1`, in `dir`; (snapshot path, key).
fn cli_snapshot_with_a_key(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let db = dir.join("s.db");
    keyward_ok(["snapshot".as_ref(), "init".as_ref(), db.as_os_str()]);
    let out = keyward_ok([
        "keys".as_ref(),
        "create".as_ref(),
        "--snapshot".as_ref(),
        db.as_os_str(),
        "--org".as_ref(),
        "org_cli".as_ref(),
        "--workspace".as_ref(),
        "ws_1".as_ref(),
    ]);
    let key = String::from_utf8(out.stdout).unwrap();
    (db, key)
}

#[test]
fn cli_keys_create_prints_one_key_stored_with_its_workspaces() {
    let dir = tempfile::tempdir().unwrap();
    let (db, key) = cli_snapshot_with_a_key(dir.path());
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
}

#[test]
fn cli_check_counts_what_the_snapshot_holds() {
    let dir = tempfile::tempdir().unwrap();
    cli_snapshot_with_a_key(dir.path());
    std::fs::write(
        dir.path().join("k.toml"),
        "[snapshot]\npath = \"s.db\"\n[plans.free]\nrequests_per_window = 5\n",
    )
    .unwrap();
    let out = keyward_cmd()
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
}

#[test]
fn cli_check_refuses_an_unknown_key_by_name() {
    let dir = tempfile::tempdir().unwrap();
    cli_snapshot_with_a_key(dir.path());
    std::fs::write(
        dir.path().join("bad.toml"),
        "[snapshot]\npath = \"s.db\"\nbogus = 1\n",
    )
    .unwrap();
    let out = keyward_cmd()
        .args(["check", "--config"])
        .arg(dir.path().join("bad.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus"));
}
