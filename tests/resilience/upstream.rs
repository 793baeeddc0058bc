//! Upstream failures (SPEC §7): refused or reset → 502 UPSTREAM_UNAVAILABLE,
//! no answer in time → 504 UPSTREAM_TIMEOUT, always as keyward's JSON, always
//! within the configured timeouts (no hung client), and recovery as soon as
//! the upstream is back.
use super::*;
use std::io::{Read, Write};

fn keyward_for(upstream: std::net::SocketAddr, extra: &str) -> (Snap, Keyward, String) {
    keyward_with_threads(upstream, extra, 2)
}

fn keyward_with_threads(
    upstream: std::net::SocketAddr,
    extra: &str,
    threads: usize,
) -> (Snap, Keyward, String) {
    let snap = Snap::new();
    snap.org("org_a", "free");
    let key = snap.api_key("org_a");
    let mut opts = Opts::new(upstream);
    // one worker: one upstream pool, so a wrongly pooled connection is reused
    opts.threads = threads;
    opts.extra = format!(
        "[plans.free]\nrequests_per_window = 1000000\n[upstream]\nconnect_timeout_ms = 300\n{extra}"
    );
    let kw = Keyward::start(&snap, opts);
    (snap, kw, key)
}

#[test]
fn upstream_killed_and_restarted_under_load() {
    let mut echo = KillableEcho::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = echo.addr;
    let (_snap, kw, key) = keyward_for(addr, "read_timeout_ms = 2000\n");
    assert_eq!(kw.get("/api/v1/x", Some(&key)).status, 200);
    let load = Load::start(kw.addr, "/api/v1/x", &key, 4);
    std::thread::sleep(Duration::from_millis(400));
    let killed = Instant::now();
    echo.kill();
    std::thread::sleep(Duration::from_millis(800));
    let restarted = Instant::now();
    let echo2 = KillableEcho::restart_on(addr);
    std::thread::sleep(Duration::from_millis(800));
    let results = load.stop();
    drop(echo2);

    let hung: Vec<_> = results.iter().filter(|r| r.1 == 0).collect();
    assert!(
        hung.is_empty(),
        "requests without an answer in 3 s: {}",
        hung.len()
    );
    let before: Vec<_> = results.iter().filter(|r| r.0 < killed).collect();
    // answers completed after the kill settled and before the restart
    let down: Vec<_> = results
        .iter()
        .filter(|r| r.0 > killed + Duration::from_millis(100) && r.0 < restarted)
        .collect();
    let after: Vec<_> = results
        .iter()
        .filter(|r| r.0 > restarted + Duration::from_millis(300))
        .collect();
    assert!(
        before.len() > 10 && down.len() > 10 && after.len() > 10,
        "too little traffic: {} / {} / {}",
        before.len(),
        down.len(),
        after.len()
    );
    assert!(
        before.iter().all(|r| r.1 == 200),
        "before the kill: {before:?}"
    );
    assert!(
        down.iter()
            .all(|r| r.1 == 502 && r.2 == "UPSTREAM_UNAVAILABLE"),
        "while down: {:?}",
        down.iter().filter(|r| r.1 != 502).collect::<Vec<_>>()
    );
    assert!(
        after.iter().all(|r| r.1 == 200),
        "after the restart: {:?}",
        after.iter().filter(|r| r.1 != 200).collect::<Vec<_>>()
    );
    // everything in between is one of the two, nothing else
    assert!(
        results.iter().all(|r| r.1 == 200 || r.1 == 502),
        "{results:?}"
    );
    assert!(kw.metric("keyward_upstream_errors_total{kind=\"unavailable\"}") >= down.len() as f64);
    eprintln!(
        "kill/restart under load: {} requests, {} before, {} while down (all 502), {} after (all 200)",
        results.len(),
        before.len(),
        down.len(),
        after.len()
    );
}

/// A listener that accepts and then does `f` with each connection.
fn fake_upstream(f: impl Fn(std::net::TcpStream) + Send + Sync + 'static) -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let f = Arc::new(f);
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let f = f.clone();
            std::thread::spawn(move || f(s));
        }
    });
    addr
}

#[test]
fn silent_upstream_is_504_within_the_read_timeout() {
    // reads the request, never answers
    let up = fake_upstream(|mut s| {
        let mut b = [0u8; 4096];
        let _ = s.read(&mut b);
        std::thread::sleep(Duration::from_secs(30));
    });
    let (_snap, kw, key) = keyward_for(up, "read_timeout_ms = 500\n");
    let start = Instant::now();
    let r = timed_get(kw.addr, "/api/v1/x", &key, Duration::from_secs(5)).expect("hung");
    r.assert_error(504, "UPSTREAM_TIMEOUT");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(kw.metric("keyward_upstream_errors_total{kind=\"timeout\"}") >= 1.0);
}

#[test]
fn upstream_that_resets_or_answers_garbage_is_502() {
    let reset = fake_upstream(|s| {
        // close with unread data: the kernel answers with a reset
        drop(s);
    });
    let half = fake_upstream(|mut s| {
        let mut b = [0u8; 4096];
        let _ = s.read(&mut b);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part");
    });
    let garbage = fake_upstream(|mut s| {
        let mut b = [0u8; 4096];
        let _ = s.read(&mut b);
        let _ = s.write_all(b"\x00\x01\x02 definitely not HTTP\r\n\r\n");
    });
    for (case, up) in [("reset", reset), ("garbage", garbage)] {
        let (_snap, kw, key) = keyward_for(up, "read_timeout_ms = 1000\n");
        let r = timed_get(kw.addr, "/api/v1/x", &key, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{case}: hung"));
        assert_eq!(r.status, 502, "{case}: {}", r.body_str());
        r.assert_error(502, "UPSTREAM_UNAVAILABLE");
    }
    // a body cut short after the head was sent: the client must not hang
    // waiting for the rest (the head is already out, so no 502 is possible)
    let (_snap, kw, key) = keyward_for(half, "read_timeout_ms = 1000\n");
    let start = Instant::now();
    let _ = timed_get(kw.addr, "/api/v1/x", &key, Duration::from_secs(5));
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    let r = timed_get(kw.addr, "/api/v1/x", &key, Duration::from_secs(5));
    assert!(r.is_some(), "no answer after a truncated body");
}

#[test]
fn a_pooled_connection_the_upstream_drops_is_retried_once_on_a_new_one() {
    // Answers the first request on each connection, then reads the next one
    // and closes without a word: what an upstream whose keep-alive timeout
    // fires just as keyward reuses the connection looks like.
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = accepted.clone();
    let up = fake_upstream(move |mut s| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut b = [0u8; 4096];
        if s.read(&mut b).unwrap_or(0) == 0 {
            return;
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let _ = s.read(&mut b);
    });
    let (_snap, kw, key) = keyward_for(up, "read_timeout_ms = 2000\n");
    for i in 0..10 {
        let r = timed_get(kw.addr, "/api/v1/x", &key, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("request {i} hung"));
        assert_eq!(r.status, 200, "request {i}: {}", r.body_str());
    }
    // one fresh connection per request: every reuse failed and was retried
    assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) >= 10);
    assert_eq!(
        kw.metric("keyward_upstream_errors_total{kind=\"unavailable\"}"),
        0.0
    );
}

#[test]
fn an_upstream_that_answers_mid_upload_never_gets_another_request_on_that_connection() {
    // Answers as soon as the head is in, without reading the body, and then
    // only listens: a connection whose request body was cut off must be
    // closed, never pooled (the next request would land inside the body).
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = accepted.clone();
    let up = fake_upstream(move |mut s| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(1) => head.push(b[0]),
                _ => return,
            }
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let mut rest = [0u8; 4096];
        while matches!(s.read(&mut rest), Ok(n) if n > 0) {}
    });
    let (_snap, kw, key) = keyward_with_threads(up, "read_timeout_ms = 2000\n", 1);
    let mut c = std::net::TcpStream::connect(kw.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(format!("POST /api/v1/x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n").as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 1024];
    while !got.ends_with(b"ok") {
        match c.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&b[..n]),
        }
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let _ = c.write_all(b"0\r\n\r\n");
    // the next request goes to a new upstream connection and is answered
    let r = timed_get(kw.addr, "/api/v1/x", &key, Duration::from_secs(5)).expect("hung");
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[test]
fn a_post_that_failed_on_a_reused_connection_is_not_replayed() {
    // Every connection: answer one request, then read the next and close
    // without answering. A GET on the dead reuse is retried (idempotent); a
    // POST may already have been acted on, so it is 502, sent once.
    let posts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = posts.clone();
    let up = fake_upstream(move |mut s| {
        let mut b = [0u8; 4096];
        let n = s.read(&mut b).unwrap_or(0);
        if n == 0 {
            return;
        }
        if b.starts_with(b"POST") {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        if let Ok(n) = s.read(&mut b) {
            if b[..n].starts_with(b"POST") {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let (_snap, kw, key) = keyward_with_threads(up, "read_timeout_ms = 2000\n", 1);
    // leaves one pooled connection the upstream will drop on its next request
    let r = timed_get(kw.addr, "/api/v1/x", &key, Duration::from_secs(5)).expect("hung");
    assert_eq!(r.status, 200);
    let mut c = std::net::TcpStream::connect(kw.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(format!("POST /api/v1/x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert_eq!(
        posts.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the POST was replayed"
    );
}
