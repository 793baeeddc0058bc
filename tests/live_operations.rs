//! Live operations (issue 17, SPEC §8.2): `/readyz` turns 503 from the first
//! moment of draining.
mod common;

use std::time::{Duration, Instant};

use common::*;

/// How long a drain may take to show on a loaded 2-core machine.
const PATIENCE: Duration = Duration::from_secs(5);

#[test]
fn readyz_answers_503_while_sigterm_drains_in_flight_requests() {
    let snap = Snap::new();
    snap.org("org_a", "free");
    let key = snap.api_key("org_a");
    let upstream = SlowUpstream::start(Duration::from_millis(2500));
    let kw = Keyward::start(
        &snap,
        Opts::new(upstream.addr).set("server.shutdown_grace_s", 5),
    );
    assert_eq!(kw.readyz().0, 200);
    kw.wait_catches(libc::SIGTERM);
    let addr = kw.addr;
    let slow = std::thread::spawn(move || {
        raw(
            addr,
            &format!("GET /api/v1/x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"),
        )
    });
    // the slow request is in flight before the signal
    assert!(wait_until(PATIENCE, || upstream.arrived() == 1));
    kw.signal(libc::SIGTERM);
    let started = Instant::now();
    let mut draining = None;
    while started.elapsed() < PATIENCE {
        let (status, body) = kw.readyz();
        if status == 503 {
            draining = Some(body);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let body = draining.expect("/readyz never answered 503 while draining");
    assert_eq!(body["draining"], true, "{body}");
    assert_eq!(kw.metric("keyward_draining"), 1.0, "the gauge agrees");
    assert_eq!(kw.metric("keyward_ready"), 0.0);
    let r = slow.join().unwrap();
    assert_eq!(
        r.status,
        200,
        "the in-flight request finished: {}",
        r.body_str()
    );
}
