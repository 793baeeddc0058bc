//! Per-organization limits and the per-IP failure throttle (SPEC §6).
mod common;
use common::*;
use std::sync::atomic::{AtomicU64, Ordering};

#[test]
fn exactly_the_limit_is_admitted_under_64_racing_connections() {
    let snap = Snap::new();
    snap.sql("INSERT INTO organizations (id, plan, rate_limit) VALUES ('org_r', 'free', 100)");
    let key = snap.api_key("org_r");
    let mut opts = Opts::new(echo());
    opts.extra = "[rate_limit]\nwindow_s = 3600\n".into();
    let kw = Keyward::start(&snap, opts);
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

#[test]
fn headers_on_forwarded_and_denied_responses_and_429() {
    let snap = Snap::new();
    snap.org("org_p", "tiny")
        .workspace("ws_p", "org_p")
        .workspace("ws_q", "org_p");
    let scoped = snap.scoped_key("org_p", &["ws_p"]);
    let mut opts = Opts::new(echo());
    opts.extra = "[plans.tiny]\nrequests_per_window = 2\n".into();
    let kw = Keyward::start(&snap, opts);
    let r = kw.get("/api/v1/workspaces/ws_p/x", Some(&scoped));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("1"));
    let reset: i64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
    assert!(reset > now() && reset <= now() + 60 && reset % 60 == 0);
    // a denied request carries the headers and does not use up the window
    let r = kw.get("/api/v1/workspaces/ws_q/x", Some(&scoped));
    r.assert_error(403, "SCOPE_DENIED");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("1"));
    assert_eq!(
        kw.get("/api/v1/workspaces/ws_p/x", Some(&scoped)).status,
        200
    );
    let r = kw.get("/api/v1/workspaces/ws_p/x", Some(&scoped));
    r.assert_error(429, "RATE_LIMIT_EXCEEDED");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    let retry: i64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    // 401s carry none
    assert!(kw
        .get("/api/v1/x", None)
        .header("x-ratelimit-limit")
        .is_none());
    assert!(
        kw.metric("keyward_rate_limit_decisions_total{decision=\"limited\",plan=\"tiny\"}") >= 1.0
    );
}

#[test]
fn failed_authentications_are_throttled_per_ip_without_store_lookups() {
    let snap = Snap::new();
    snap.org("org_a", "free");
    let key = snap.api_key("org_a");
    let mut opts = Opts::new(echo());
    opts.extra = "[rate_limit]\nauth_failures_per_ip = 5\nwindow_s = 3600\n".into();
    let kw = Keyward::start(&snap, opts);
    assert_eq!(kw.get("/api/v1/x", Some(&key)).status, 200); // now in the positive cache
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
    // a credential already known valid keeps working
    assert_eq!(kw.get("/api/v1/x", Some(&key)).status, 200);
}
