//! The snapshot file broken while traffic flows (SPEC §1, §8.2): the last
//! good generation keeps serving what it can, a store outage is never a 401,
//! and `/metrics` and `/readyz` say what happened.
use super::*;

struct Setup {
    w: World,
    kw: Keyward,
    /// used before the fault: in the positive cache
    cached: String,
    /// valid in the last good generation, never used before the fault
    fresh: String,
}

/// The world stamped as generated now, keyward started with `opts` (and
/// the generous plan), the org-wide key in the positive cache.
fn setup(opts: Opts) -> Setup {
    let w = World::new();
    w.snap.sql(&format!(
        "INSERT INTO meta (key, value) VALUES ('generated_at', '{}')",
        now()
    ));
    let cached = w.org_key.clone();
    let fresh = w.snap.api_key("org_a");
    let kw = w.start_with(opts);
    assert_eq!(kw.get("/api/v1/x", Some(&cached)).status, 200);
    assert_eq!(kw.get("/api/v1/x", Some(&cached)).status, 200);
    assert!(kw.metric("keyward_cache_lookups_total{result=\"hit\"}") >= 1.0);
    Setup {
        w,
        kw,
        cached,
        fresh,
    }
}

/// Traffic with the cached key before the fault, and after the fault was
/// counted, so the fault lands in a stream of requests.
const LOAD_BEFORE_FAULT: Duration = Duration::from_millis(200);
const LOAD_AFTER_FAULT: Duration = Duration::from_millis(300);
/// Time for a dying process to be reaped, so its exit status can be shown.
const LET_EXIT_SHOW: Duration = Duration::from_millis(300);
/// Four poll intervals of the harness (100 ms): long enough for a
/// once-per-poll mistake to show.
const SEVERAL_POLLS: Duration = Duration::from_millis(400);

fn failed_reloads(kw: &Keyward) -> f64 {
    kw.metric("keyward_snapshot_reloads_total{result=\"failed\"}")
}

/// Break the snapshot with `fault` while a load runs with the cached key;
/// returns the generation served before the fault.
fn under_load(s: &Setup, fault: impl FnOnce(&Snap)) -> f64 {
    let gen = s.kw.metric("keyward_snapshot_generation");
    assert!(gen >= 1.0);
    let failed_before = failed_reloads(&s.kw);
    let load = Load::start(s.kw.addr, "/api/v1/x", &s.cached, 2);
    std::thread::sleep(LOAD_BEFORE_FAULT);
    fault(&s.w.snap);
    assert!(
        wait_until(Duration::from_secs(3), || failed_reloads(&s.kw)
            > failed_before),
        "the broken snapshot was not counted: {}",
        s.kw.metrics()
    );
    std::thread::sleep(LOAD_AFTER_FAULT);
    let results = load.stop();
    assert!(results.len() > 20, "too little traffic: {}", results.len());
    let bad: Vec<_> = results.iter().filter(|r| r.1 != 200).collect();
    assert!(
        bad.is_empty(),
        "the cached key failed during the fault: {bad:?}\n{}",
        s.kw.log()
    );
    assert_eq!(
        s.kw.metric("keyward_snapshot_generation"),
        gen,
        "a broken snapshot was swapped in"
    );
    gen
}

/// What a broken store may answer for a credential not in the cache: the
/// right verdict from the last good generation, or 503 AUTH_UNAVAILABLE —
/// never 401 (an outage is not a bad key) and never any other 5xx.
fn assert_fresh_key(s: &mut Setup, case: &str) {
    let r = get_or_dump(s, &s.fresh.clone(), case);
    if r.status != 200 {
        r.assert_error(503, "AUTH_UNAVAILABLE");
    }
    let r = get_or_dump(s, "wvz_never_issued_0123456789", case);
    assert!(
        [401, 503].contains(&r.status),
        "{case}: unknown key got {}",
        r.status
    );
    let r = get_or_dump(s, &s.cached.clone(), case);
    assert_eq!(r.status, 200, "{case}: cached key after the fault");
}

/// GET with `token`; a connection closed without an answer fails the test
/// with keyward's exit status and log.
fn get_or_dump(s: &mut Setup, token: &str, case: &str) -> Resp {
    let req = format!(
        "GET /api/v1/x HTTP/1.1\r\nHost: kw.test\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    let out = exchange(s.kw.addr, req.as_bytes(), Duration::from_millis(500));
    if out.is_empty() {
        std::thread::sleep(LET_EXIT_SHOW);
        panic!(
            "{case}: connection closed without a response; keyward exit status {:?}; log:\n{}",
            s.kw.child.try_wait(),
            s.kw.log()
        );
    }
    parse_response(&out)
}

fn assert_reload_error_reported(kw: &Keyward, contains: &str) {
    let (status, j) = kw.readyz();
    assert_eq!(status, 200, "still fresh, still ready: {j}");
    assert_eq!(j["ready"], true);
    let err = j["snapshot"]["last_reload_error"].as_str().unwrap_or("");
    assert!(
        err.contains(contains),
        "last_reload_error {err:?} lacks {contains:?}: {j}"
    );
    assert!(
        j["degraded"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d == "snapshot_reload_failing"),
        "{j}"
    );
}

#[test]
fn garbage_renamed_over_the_snapshot_keeps_the_last_good_generation() {
    let mut s = setup(Opts::new(echo()));
    under_load(&s, |snap| {
        let tmp = snap.dir.path().join("garbage.db");
        std::fs::write(&tmp, b"this is not an SQLite database\n".repeat(200)).unwrap();
        std::fs::rename(&tmp, &snap.path).unwrap();
    });
    assert_fresh_key(&mut s, "garbage by rename");
    assert_reload_error_reported(&s.kw, "");
    // a good version published afterwards is picked up and clears the error
    let key = publish_good_version(&s);
    let (status, j) = s.kw.readyz();
    assert_eq!(status, 200);
    assert_eq!(j["degraded"], serde_json::json!([]));
    assert_eq!(s.kw.get("/api/v1/x", Some(&key)).status, 200);
}

#[test]
fn garbage_written_in_place_keeps_cached_keys_and_never_401s_valid_ones() {
    let mut s = setup(Opts::new(echo()));
    under_load(&s, |snap| {
        // same inode, new contents: the last good version is gone from disk
        std::fs::write(&snap.path, b"garbage ".repeat(4096)).unwrap();
    });
    assert_fresh_key(&mut s, "garbage in place");
    assert_reload_error_reported(&s.kw, "");
}

#[test]
fn snapshot_truncated_in_place_to_half_keeps_serving() {
    truncate_case("truncated in place to half", true);
}

#[test]
fn truncated_copy_renamed_over_the_snapshot_keeps_serving() {
    truncate_case("truncated copy renamed in", false);
}

/// Truncating the served file to zero bytes in place (what `cp new.db
/// snapshot.db` or `: > snapshot.db` does first) kills keyward with SIGBUS:
/// the per-thread read connections map the file (`mmap_size` 256 MiB in
/// `snapshot::open_read_only`) and touch pages past the new end of file.
#[test]
fn snapshot_truncated_to_zero_in_place_does_not_crash_keyward() {
    let mut s = setup(Opts::new(echo()).set("rate_limit.auth_failures_per_ip", 0));
    under_load(&s, |snap| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&snap.path)
            .unwrap()
            .set_len(0)
            .unwrap();
    });
    // cache misses on both worker threads read through their mapped connections
    for i in 0..40 {
        let r = get_or_dump(&mut s, &format!("wvz_unknown_{i}"), "truncated to zero");
        assert!([401, 503].contains(&r.status), "{}", r.status);
    }
    assert_fresh_key(&mut s, "truncated to zero");
    assert!(s.kw.child.try_wait().unwrap().is_none(), "{}", s.kw.log());
}

fn truncate_case(case: &str, in_place: bool) {
    let mut s = setup(Opts::new(echo()));
    under_load(&s, |snap| {
        let keep = std::fs::metadata(&snap.path).unwrap().len() / 2;
        if in_place {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&snap.path)
                .unwrap()
                .set_len(keep)
                .unwrap();
        } else {
            let tmp = snap.dir.path().join("cut.db");
            std::fs::copy(&snap.path, &tmp).unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&tmp)
                .unwrap()
                .set_len(keep)
                .unwrap();
            std::fs::rename(&tmp, &snap.path).unwrap();
        }
    });
    assert_fresh_key(&mut s, case);
    assert_reload_error_reported(&s.kw, "");
    assert!(
        s.kw.child.try_wait().unwrap().is_none(),
        "{case}: keyward exited: {}",
        s.kw.log()
    );
}

#[test]
fn deleted_snapshot_keeps_serving_and_recovers_when_it_returns() {
    let mut s = setup(Opts::new(echo()));
    under_load(&s, |snap| std::fs::remove_file(&snap.path).unwrap());
    assert_fresh_key(&mut s, "deleted");
    assert_reload_error_reported(&s.kw, "missing");
    // counted once per disappearance, not once per poll
    let failed = failed_reloads(&s.kw);
    std::thread::sleep(SEVERAL_POLLS);
    assert_eq!(failed_reloads(&s.kw), failed);
    let key = publish_good_version(&s);
    assert!(s.kw.metric("keyward_snapshot_generation") >= 2.0);
    assert_eq!(s.kw.get("/api/v1/x", Some(&key)).status, 200);
}

#[test]
fn unreadable_snapshot_keeps_the_last_good_generation() {
    use std::os::unix::fs::PermissionsExt;
    // root reads files whatever their mode: nothing to test there
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("probe");
    std::fs::write(&probe, b"x").unwrap();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::read(&probe).is_ok() {
        eprintln!("SKIPPED unreadable_snapshot_keeps_the_last_good_generation: running as root, chmod 000 does not deny reads");
        return;
    }
    let mut s = setup(Opts::new(echo()));
    under_load(&s, |snap| {
        // a new version the process cannot open
        let tmp = snap.dir.path().join("locked.db");
        std::fs::copy(&snap.path, &tmp).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o000)).unwrap();
        std::fs::rename(&tmp, &snap.path).unwrap();
    });
    assert_fresh_key(&mut s, "unreadable");
    assert_reload_error_reported(&s.kw, "open");
    let _ = std::fs::set_permissions(&s.w.snap.path, std::fs::Permissions::from_mode(0o644));
}

#[test]
fn a_stale_snapshot_fails_readyz_but_keeps_serving() {
    let s = setup(Opts::new(echo()).set("snapshot.max_staleness_s", 2));
    let gen = under_load(&s, |snap| {
        let tmp = snap.dir.path().join("garbage.db");
        std::fs::write(&tmp, b"not a database").unwrap();
        std::fs::rename(&tmp, &snap.path).unwrap();
    });
    assert!(
        wait_until(Duration::from_secs(5), || s.kw.readyz().0 == 503),
        "never stale: {}",
        s.kw.readyz().1
    );
    let (_, j) = s.kw.readyz();
    assert_eq!(j["ready"], false);
    assert_eq!(j["snapshot"]["loaded"], true);
    assert_eq!(j["snapshot"]["generation"].as_f64(), Some(gen));
    assert!(j["snapshot"]["age_seconds"].as_i64().unwrap() > 2, "{j}");
    assert!(j["snapshot"]["last_reload_error"].is_string(), "{j}");
    assert!(s.kw.metric("keyward_snapshot_age_seconds") > 2.0);
    assert_eq!(s.kw.metric("keyward_snapshot_generation"), gen);
    // stale is not a reason to stop serving
    assert_eq!(s.kw.get("/api/v1/x", Some(&s.cached)).status, 200);
    assert_eq!(get(s.kw.admin, "/healthz").status, 200);
}

/// A worker thread that did no lookup since the last good generation loaded
/// must not fall back to an older generation's connection when the next
/// version is broken: a key revoked by the last good generation would be
/// admitted again.
#[test]
fn a_key_revoked_by_the_last_good_generation_stays_revoked_when_the_next_is_broken() {
    let w = World::new();
    let (key, id) = (w.org_key.clone(), w.org_key_id.clone());
    let kw = w.start_with(Opts::new(echo()).set("rate_limit.auth_failures_per_ip", 0));
    // every worker thread opens its per-thread connection on generation 1
    for i in 0..40 {
        kw.get("/api/v1/x", Some(&format!("wvz_warm_{i}")));
    }
    let gen1 = kw.generation();
    // generation 2 revokes the key; no proxied request until it is broken
    w.snap.replace_by_rename(|c| {
        c.execute("UPDATE api_keys SET revoked_at = 1 WHERE id = ?1", [&id])
            .unwrap();
    });
    kw.wait_reloaded(gen1);
    let tmp = w.snap.dir.path().join("garbage.db");
    std::fs::write(&tmp, b"not a database").unwrap();
    std::fs::rename(&tmp, &w.snap.path).unwrap();
    assert!(wait_until(Duration::from_secs(3), || failed_reloads(&kw) >= 1.0));
    for _ in 0..10 {
        let r = kw.get("/api/v1/x", Some(&key));
        assert_ne!(
            r.status, 200,
            "a key revoked by the last good generation was admitted"
        );
        assert!([401, 503].contains(&r.status), "{}", r.body_str());
    }
}

/// Rename a new, valid snapshot (org_a and one key) over the path and wait
/// until keyward serves it and the last reload error is cleared; the key.
fn publish_good_version(s: &Setup) -> String {
    let next = Snap::new();
    next.org("org_a", "free");
    let key = next.api_key("org_a");
    std::fs::rename(&next.path, &s.w.snap.path).unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || s.kw.readyz().1["snapshot"]
            ["last_reload_error"]
            .is_null()),
        "{}",
        s.kw.readyz().1
    );
    key
}
