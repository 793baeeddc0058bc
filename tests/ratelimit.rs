//! Per-organization limits and the per-IP failure throttle (SPEC §6).
mod common;
use common::*;
use std::sync::atomic::{AtomicU64, Ordering};

#[test]
fn exactly_the_limit_is_admitted_under_64_racing_connections() {
    let snap = Snap::new();
    snap.sql("INSERT INTO organizations (id, plan, rate_limit) VALUES ('org_r', 'free', 100)");
    let key = snap.api_key("org_r");
    let kw = Keyward::start(&snap, Opts::new(echo()).set("rate_limit.window_s", 3600));
    let admitted = AtomicU64::new(0);
    let limited = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..64 {
            s.spawn(|| {
                for _ in 0..3 {
                    let r = kw.get("/api/v1/x", Some(&key));
                    match r.status {
                        200 => admitted.fetch_add(1, Ordering::Relaxed),
                        429 => limited.fetch_add(1, Ordering::Relaxed),
                        s => panic!("unexpected {s}"),
                    };
                }
            });
        }
    });
    assert_eq!(admitted.load(Ordering::Relaxed), 100);
    assert_eq!(limited.load(Ordering::Relaxed), 92);
}

/// `org_p` on plan `tiny` (2 requests a window) with workspaces `ws_p` and
/// `ws_q`, and a key scoped to `ws_p`; (snapshot, keyward, key).
fn tiny_plan() -> (Snap, Keyward, String) {
    let snap = Snap::new();
    snap.org("org_p", "tiny")
        .workspace("ws_p", "org_p")
        .workspace("ws_q", "org_p");
    let scoped = snap.scoped_key("org_p", &["ws_p"]);
    let kw = Keyward::start(
        &snap,
        Opts::new(echo()).set("plans.tiny.requests_per_window", 2),
    );
    (snap, kw, scoped)
}

#[test]
fn forwarded_responses_carry_the_limit_headers() {
    let (_snap, kw, scoped) = tiny_plan();
    let r = kw.get("/api/v1/workspaces/ws_p/x", Some(&scoped));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("1"));
    let reset: i64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
    assert!(reset > now() && reset <= now() + 60 && reset % 60 == 0);
}

#[test]
fn a_denied_request_carries_the_headers_and_does_not_use_up_the_window() {
    let (_snap, kw, scoped) = tiny_plan();
    assert_eq!(
        kw.get("/api/v1/workspaces/ws_p/x", Some(&scoped)).status,
        200
    );
    let r = kw.get("/api/v1/workspaces/ws_q/x", Some(&scoped));
    r.assert_error(403, "SCOPE_DENIED");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("1"));
    assert_eq!(
        kw.get("/api/v1/workspaces/ws_p/x", Some(&scoped)).status,
        200
    );
}

#[test]
fn past_the_limit_is_429_with_retry_after_and_counted() {
    let (_snap, kw, scoped) = tiny_plan();
    for _ in 0..2 {
        assert_eq!(
            kw.get("/api/v1/workspaces/ws_p/x", Some(&scoped)).status,
            200
        );
    }
    let r = kw.get("/api/v1/workspaces/ws_p/x", Some(&scoped));
    r.assert_error(429, "RATE_LIMIT_EXCEEDED");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    let retry: i64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert!(
        kw.metric("keyward_rate_limit_decisions_total{decision=\"limited\",plan=\"tiny\"}") >= 1.0
    );
}

#[test]
fn unauthenticated_responses_carry_no_limit_headers() {
    let (_snap, kw, _scoped) = tiny_plan();
    assert!(kw
        .get("/api/v1/x", None)
        .header("x-ratelimit-limit")
        .is_none());
}

/// `org_a` and its key, keyward throttling an address after 5 failed
/// authentications an hour, the key already in the positive cache;
/// (snapshot, keyward, key).
fn throttling() -> (Snap, Keyward, String) {
    let snap = Snap::new();
    snap.org("org_a", "free");
    let key = snap.api_key("org_a");
    let opts = Opts::new(echo())
        .set("rate_limit.auth_failures_per_ip", 5)
        .set("rate_limit.window_s", 3600);
    let kw = Keyward::start(&snap, opts);
    assert_eq!(kw.get("/api/v1/x", Some(&key)).status, 200); // now in the positive cache
    (snap, kw, key)
}

#[test]
fn failed_authentications_are_throttled_per_ip_without_store_lookups() {
    let (_snap, kw, _key) = throttling();
    for i in 0..5 {
        kw.get("/api/v1/x", Some(&format!("wvz_bad_{i}")))
            .assert_error(401, "UNAUTHENTICATED");
    }
    let before = kw.metric("keyward_snapshot_lookups_total{table=\"api_keys\"}");
    for i in 0..20 {
        let r = kw.get("/api/v1/x", Some(&format!("wvz_more_{i}")));
        r.assert_error(429, "RATE_LIMIT_EXCEEDED");
        assert!(r.header("retry-after").is_some());
    }
    // a request with no credential is never throttled (SPEC §6): behind
    // NAT it would lock every user of the address out
    kw.get("/api/v1/x", None)
        .assert_error(401, "UNAUTHENTICATED");
    assert_eq!(
        kw.metric("keyward_snapshot_lookups_total{table=\"api_keys\"}"),
        before,
        "throttled requests reached SQLite"
    );
}

#[test]
fn a_throttled_address_keeps_using_a_credential_known_valid() {
    let (_snap, kw, key) = throttling();
    for i in 0..5 {
        kw.get("/api/v1/x", Some(&format!("wvz_bad_{i}")))
            .assert_error(401, "UNAUTHENTICATED");
    }
    kw.get("/api/v1/x", Some("wvz_more_0"))
        .assert_error(429, "RATE_LIMIT_EXCEEDED");
    assert_eq!(kw.get("/api/v1/x", Some(&key)).status, 200);
}
