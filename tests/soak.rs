//! Soak: mixed traffic across every credential kind while the snapshot is
//! republished (rename) and the config reloaded (SIGHUP), asserting zero 5xx
//! and zero wrong admits — every answer is checked against what the snapshot
//! in force allowed, and every forwarded request against the identity the
//! upstream saw.
//!
//! The default test run soaks for `SOAK_SECS` (default 3 s) to keep the
//! harness honest; `scripts/soak.sh` runs it for 10 minutes on a release
//! build.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use rand::Rng;

/// How long after publishing keyward may still serve the previous snapshot
/// (poll interval is 100 ms in the harness; a slower swap fails the soak). Answers for the flipping key
/// are judged only outside this margin around a flip.
const SWAP_MARGIN: Duration = Duration::from_secs(1);
/// How often the publisher checks whether a swap or a SIGHUP is due.
const PUBLISHER_TICK: Duration = Duration::from_millis(20);

struct Creds {
    org_wide: String,
    scoped: String,
    revoked: String,
    flipping: String,
    cookie: String,
    service: String,
    mcp: String,
}

#[derive(Default)]
struct Tally {
    by_case: BTreeMap<&'static str, (u64, u64)>, // (checked, 200s)
    failures: Vec<String>,
    flip_unjudged: u64,
}

fn check(
    tally: &Mutex<Tally>,
    case: &'static str,
    r: &Resp,
    want: u16,
    code: &str,
    org: Option<&str>,
) {
    let mut t = tally.lock().unwrap();
    let e = t.by_case.entry(case).or_default();
    e.0 += 1;
    if r.status == 200 {
        e.1 += 1;
    }
    let mut fail = |m: String| {
        if t.failures.len() < 50 {
            t.failures.push(format!("{case}: {m}"));
        }
    };
    if r.status >= 500 {
        fail(format!("5xx {}: {}", r.status, r.body_str()));
        return;
    }
    if r.status != want {
        fail(format!("status {} want {want}: {}", r.status, r.body_str()));
        return;
    }
    if want == 200 {
        let seen = r.upstream_header("x-org-id");
        if let Some(org) = org {
            if seen != vec![org.to_string()] {
                fail(format!("upstream saw X-Org-ID {seen:?}, want {org}"));
            }
        }
    } else if r.code() != code {
        fail(format!("code {} want {code}", r.code()));
    }
}

#[test]
fn soak_mixed_credentials_with_swaps_and_reloads() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let snap = Snap::new();
    snap.org("org_a", "pro")
        .org("org_b", "pro")
        .workspace("ws_a1", "org_a")
        .workspace("ws_a2", "org_a")
        .workspace("ws_b1", "org_b")
        .mcp_server("srv_a", "org_a", "ws_a1", "bearer")
        .mcp_server("srv_b", "org_b", "ws_b1", "bearer");
    let (flipping, flip_id) = snap.api_key_full("org_a", None, None, None);
    let creds = Creds {
        org_wide: snap.api_key("org_a"),
        scoped: snap.scoped_key("org_a", &["ws_a1"]),
        revoked: snap.api_key_full("org_a", None, None, Some(1)).0,
        flipping,
        cookie: snap.session("user_1", Some("org_a"), now() + 86_400),
        service: snap.service_key(false),
        mcp: snap.mcp_token("srv_a", "static", None),
    };
    // every reload changes the plan's limit, so each one is a real change
    let limit = |n: u64| 1_000_000_000 + n as i64;
    let opts = Opts::new(echo())
        .set("rate_limit.auth_failures_per_ip", 0)
        .set("plans.pro.requests_per_window", limit(0));
    let kw = Keyward::start(&snap, opts);
    kw.wait_catches(libc::SIGHUP);

    // Flip history: (time published, flipping key revoked?)
    let flips: Mutex<Vec<(Instant, bool)>> = Mutex::new(vec![(Instant::now(), false)]);
    let tally = Mutex::new(Tally::default());
    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut swaps, mut reloads) = (0u64, 0u64);

    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let mut rng = rand::thread_rng();
                let ws = "/api/v1/workspaces";
                while !stop.load(Ordering::Relaxed) {
                    let bearer = |t: &str| format!("Bearer {t}");
                    match rng.gen_range(0..12) {
                        0 => check(
                            &tally,
                            "org_wide_own",
                            &kw.get(&format!("{ws}/ws_a2/f"), Some(&creds.org_wide)),
                            200,
                            "",
                            Some("org_a"),
                        ),
                        1 => check(
                            &tally,
                            "org_wide_other_org",
                            &kw.get(&format!("{ws}/ws_b1/f"), Some(&creds.org_wide)),
                            403,
                            "SCOPE_DENIED",
                            None,
                        ),
                        2 => check(
                            &tally,
                            "scoped_in",
                            &kw.get(&format!("{ws}/ws_a1/f"), Some(&creds.scoped)),
                            200,
                            "",
                            Some("org_a"),
                        ),
                        3 => check(
                            &tally,
                            "scoped_out",
                            &kw.get(&format!("{ws}/ws_a2/f"), Some(&creds.scoped)),
                            403,
                            "SCOPE_DENIED",
                            None,
                        ),
                        4 => check(
                            &tally,
                            "revoked",
                            &kw.get(&format!("{ws}/ws_a1/f"), Some(&creds.revoked)),
                            401,
                            "UNAUTHENTICATED",
                            None,
                        ),
                        5 => {
                            let t = format!("wvz_{:032x}", rng.gen::<u128>());
                            check(
                                &tally,
                                "unknown",
                                &kw.get(&format!("{ws}/ws_a1/f"), Some(&t)),
                                401,
                                "UNAUTHENTICATED",
                                None,
                            )
                        }
                        6 => {
                            let c = format!("better-auth.session_token={}", creds.cookie);
                            check(
                                &tally,
                                "session",
                                &kw.request("GET", &format!("{ws}/ws_a1/f"), &[("Cookie", &c)], ""),
                                200,
                                "",
                                Some("org_a"),
                            )
                        }
                        7 => check(
                            &tally,
                            "service_key",
                            &kw.request(
                                "GET",
                                &format!("{ws}/ws_b1/f"),
                                &[("X-Service-Key", &creds.service), ("X-Org-ID", "org_b")],
                                "",
                            ),
                            200,
                            "",
                            Some("org_b"),
                        ),
                        8 => check(
                            &tally,
                            "mcp_own",
                            &kw.request(
                                "GET",
                                "/mcp/srv_a/sse",
                                &[("Authorization", &bearer(&creds.mcp))],
                                "",
                            ),
                            200,
                            "",
                            Some("org_a"),
                        ),
                        9 => check(
                            &tally,
                            "mcp_other",
                            &kw.request(
                                "GET",
                                "/mcp/srv_b/sse",
                                &[("Authorization", &bearer(&creds.mcp))],
                                "",
                            ),
                            403,
                            "FORBIDDEN",
                            None,
                        ),
                        10 => {
                            let body = r#"{"workspaceId":"ws_b1"}"#;
                            check(
                                &tally,
                                "body_other_org",
                                &kw.request(
                                    "POST",
                                    "/api/v1/connections",
                                    &[
                                        ("Authorization", &bearer(&creds.org_wide)),
                                        ("Content-Type", "application/json"),
                                    ],
                                    body,
                                ),
                                403,
                                "SCOPE_DENIED",
                                None,
                            )
                        }
                        _ => {
                            let sent = Instant::now();
                            let r = kw.get(&format!("{ws}/ws_a1/f"), Some(&creds.flipping));
                            let done = Instant::now();
                            // The state in force: the same for every flip
                            // that could have been live during the request.
                            let states: Vec<bool> = {
                                let f = flips.lock().unwrap();
                                let before = f
                                    .iter()
                                    .rev()
                                    .find(|(t, _)| *t + SWAP_MARGIN <= sent)
                                    .map(|x| x.1);
                                before
                                    .into_iter()
                                    .chain(
                                        f.iter()
                                            .filter(|(t, _)| *t + SWAP_MARGIN > sent && *t <= done)
                                            .map(|x| x.1),
                                    )
                                    .collect()
                            };
                            match states.as_slice() {
                                [] => tally.lock().unwrap().flip_unjudged += 1,
                                s if s.iter().all(|&v| v) => check(
                                    &tally,
                                    "flipping_revoked",
                                    &r,
                                    401,
                                    "UNAUTHENTICATED",
                                    None,
                                ),
                                s if s.iter().all(|&v| !v) => {
                                    check(&tally, "flipping_valid", &r, 200, "", Some("org_a"))
                                }
                                _ => {
                                    if r.status >= 500 {
                                        check(&tally, "flipping_in_swap", &r, 200, "", None);
                                    }
                                    tally.lock().unwrap().flip_unjudged += 1;
                                }
                            }
                        }
                    }
                }
            });
        }

        // Publisher: flip the key by rename every 4 s, SIGHUP every 2 s.
        let mut next_swap = Instant::now() + Duration::from_millis(700);
        let mut next_hup = Instant::now() + Duration::from_millis(400);
        let mut revoked = false;
        while Instant::now() < deadline {
            if Instant::now() >= next_swap {
                revoked = !revoked;
                snap.replace_by_rename(|c| {
                    c.execute(
                        "UPDATE api_keys SET revoked_at = ?1 WHERE id = ?2",
                        rusqlite::params![revoked.then_some(1i64), flip_id],
                    )
                    .unwrap();
                });
                flips.lock().unwrap().push((Instant::now(), revoked));
                swaps += 1;
                next_swap += Duration::from_secs(4);
            }
            if Instant::now() >= next_hup {
                reloads += 1;
                let mut doc = kw.config.clone();
                set_key(&mut doc, "plans.pro.requests_per_window", limit(reloads));
                kw.write_config(&doc);
                kw.signal(libc::SIGHUP);
                next_hup += Duration::from_secs(2);
            }
            std::thread::sleep(PUBLISHER_TICK);
        }
        stop.store(true, Ordering::Relaxed);
    });

    let t = tally.into_inner().unwrap();
    let total: u64 = t.by_case.values().map(|v| v.0).sum();
    eprintln!(
        "soak {secs}s: {total} checked requests, {} flipping-key answers unjudged (inside a swap margin), {swaps} snapshot swaps, {reloads} SIGHUP reloads",
        t.flip_unjudged
    );
    for (case, (n, ok)) in &t.by_case {
        eprintln!("  {case:<20} {n:>8} checked {ok:>8} x 200");
    }
    assert!(
        t.failures.is_empty(),
        "{} failures, first: {:#?}",
        t.failures.len(),
        t.failures
    );
    assert!(total > 0);
    let log = kw.log();
    assert!(
        !log.contains("config reload rejected"),
        "a reload was rejected: {log}"
    );
    assert!(!log.contains("snapshot rejected"), "a swap was rejected");
}
