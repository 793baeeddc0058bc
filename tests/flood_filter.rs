//! The token filter through the real binary (issue 19, "Under attack"):
//! once built, random unknown tokens cost no snapshot lookup (a filter false
//! positive, ≈ 1 in 65,536, is the only way one reaches SQLite), while keys
//! added in place with a `changes` row, in place without one, or by a
//! rename are admitted.
mod common;

use std::time::Duration;

use common::*;
use rusqlite::params;

const BUILT: &str = "keyward_token_filter_builds_total{result=\"ok\"}";
const RULED_OUT: &str = "keyward_token_filter_total{result=\"ruled_out\"}";
const PASSED: &str = "keyward_token_filter_total{result=\"passed\"}";

/// Every query that reached SQLite, all tables.
fn lookups(kw: &Keyward) -> f64 {
    kw.metrics()
        .lines()
        .filter(|l| l.starts_with("keyward_snapshot_lookups_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn wait_built(kw: &Keyward, n: f64) {
    assert!(
        wait_until(Duration::from_secs(20), || kw.metric(BUILT) >= n),
        "no token filter built: {}",
        kw.log()
    );
}

fn random_token() -> String {
    format!(
        "wvz_{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

/// `n` random tokens: all 401 `unknown`; the lookups they cost are exactly
/// the ones the filter let through, and those are false positives (≤ 1).
fn flood(kw: &Keyward, n: usize) {
    let (l0, r0, p0) = (lookups(kw), kw.metric(RULED_OUT), kw.metric(PASSED));
    for _ in 0..n {
        let r = kw.get("/api/v1/x", Some(&random_token()));
        assert_eq!(r.status, 401, "{}", r.body_str());
    }
    let (l1, r1, p1) = (lookups(kw), kw.metric(RULED_OUT), kw.metric(PASSED));
    assert_eq!(l1 - l0, p1 - p0, "a lookup the filter did not let through");
    assert!(p1 - p0 <= 1.0, "{} of {n} passed the filter", p1 - p0);
    assert_eq!((r1 - r0) + (p1 - p0), n as f64);
}

fn add_key(c: &rusqlite::Connection, id: &str, token: &str) {
    c.execute(
        "INSERT INTO api_keys (id, organization_id, key_hash) VALUES (?1, 'org_a', ?2)",
        params![id, hash(token)],
    )
    .unwrap();
}

#[test]
fn random_tokens_cost_no_lookup_and_added_keys_are_admitted() {
    let w = World::new();
    w.snap.sql(
        "CREATE TABLE changes (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, key TEXT NOT NULL);
         INSERT INTO changes (seq, kind, key) VALUES (1, 'organization', 'org_a');",
    );
    let kw = w.start_with(
        Opts::new(echo())
            // every refusal from the same IP: no per-IP throttle here
            .set("rate_limit.auth_failures_per_ip", 1_000_000),
    );
    wait_built(&kw, 1.0);
    assert!(kw.metric("keyward_token_filter_keys") >= 2.0);
    assert_eq!(kw.get("/api/v1/x", Some(&w.org_key)).status, 200);
    flood(&kw, 500);

    // in place, with its `changes` row: admitted through the same filter
    let logged = random_token();
    {
        let mut c = w.snap.conn();
        let tx = c.transaction().unwrap();
        add_key(&tx, "key_logged", &logged);
        tx.execute(
            "INSERT INTO changes (seq, kind, key) VALUES (2, 'api_key', ?1)",
            [hash(&logged)],
        )
        .unwrap();
        tx.commit().unwrap();
    }
    assert!(
        wait_until(RELOAD_TIMEOUT, || kw.get("/api/v1/x", Some(&logged)).status
            == 200),
        "a key added in place with a changes row was never admitted"
    );
    assert_eq!(kw.metric(BUILT), 1.0, "incremental: no rebuild");
    flood(&kw, 200);

    // in place without a row (an unlogged commit): a full load, admitted
    // (no filter until rebuilt), then the rebuilt filter knows it
    let quiet = random_token();
    add_key(&w.snap.conn(), "key_quiet", &quiet);
    assert!(
        wait_until(RELOAD_TIMEOUT, || kw.get("/api/v1/x", Some(&quiet)).status
            == 200),
        "a key added in place without a changes row was never admitted"
    );
    wait_built(&kw, 2.0);

    // by rename: a new file, admitted, rebuilt
    let renamed = random_token();
    w.snap
        .replace_by_rename(|c| add_key(c, "key_renamed", &renamed));
    assert!(
        wait_until(RELOAD_TIMEOUT, || kw
            .get("/api/v1/x", Some(&renamed))
            .status
            == 200),
        "a key added by rename was never admitted"
    );
    wait_built(&kw, 3.0);
    flood(&kw, 200);
    for k in [&w.org_key, &logged, &quiet, &renamed] {
        assert_eq!(kw.get("/api/v1/x", Some(k)).status, 200);
    }
}
