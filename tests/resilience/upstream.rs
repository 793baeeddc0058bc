//! Upstream failures (SPEC §7): refused or reset → 502 UPSTREAM_UNAVAILABLE,
//! no answer in time → 504 UPSTREAM_TIMEOUT, always as keyward's JSON, always
//! within the configured timeouts (no hung client), and recovery as soon as
//! the upstream is back.
use super::*;
use std::io::{Read, Write};

/// keyward (connect timeout 300 ms, read timeout `read_timeout_ms`, two
/// workers) in front of `upstream`; the world and its org-wide key.
fn keyward_for(upstream: std::net::SocketAddr, read_timeout_ms: i32) -> (World, Keyward, String) {
    keyward_with_threads(upstream, read_timeout_ms, 2)
}

fn keyward_with_threads(
    upstream: std::net::SocketAddr,
    read_timeout_ms: i32,
    threads: usize,
) -> (World, Keyward, String) {
    let w = World::new();
    let mut opts = Opts::new(upstream)
        .set("upstream.connect_timeout_ms", 300)
        .set("upstream.read_timeout_ms", read_timeout_ms);
    // one worker: one upstream pool, so a wrongly pooled connection is reused
    opts.threads = threads;
    let kw = w.start_with(opts);
    let key = w.org_key.clone();
    (w, kw, key)
}

/// Traffic before the upstream is killed, while it is down, and after it
/// is back: each phase must see enough answers to judge.
const LOAD_BEFORE_KILL: Duration = Duration::from_millis(400);
const DOWN_FOR: Duration = Duration::from_millis(800);
const UP_AGAIN_FOR: Duration = Duration::from_millis(800);

#[test]
fn upstream_killed_and_restarted_under_load() {
    let mut echo = KillableEcho::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = echo.addr;
    let (_w, kw, key) = keyward_for(addr, 2000);
    assert_eq!(kw.get("/api/v1/x", Some(&key)).status, 200);
    let load = Load::start(kw.addr, "/api/v1/x", &key, 4);
    std::thread::sleep(LOAD_BEFORE_KILL);
    let killed = Instant::now();
    echo.kill();
    std::thread::sleep(DOWN_FOR);
    let restarted = Instant::now();
    let echo2 = KillableEcho::restart_on(addr);
    std::thread::sleep(UP_AGAIN_FOR);
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

#[test]
fn silent_upstream_is_504_within_the_read_timeout() {
    let (_w, kw, key) = keyward_for(silent_upstream(), 500);
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
fn upstream_that_resets_is_502() {
    let (_w, kw, key) = keyward_for(resetting_upstream(), 1000);
    let r = timed_get(kw.addr, "/api/v1/x", &key, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("reset: hung"));
    assert_eq!(r.status, 502, "reset: {}", r.body_str());
    r.assert_error(502, "UPSTREAM_UNAVAILABLE");
}

#[test]
fn a_502_on_a_keep_alive_connection_says_connection_close_and_closes() {
    // keyward does not reuse a connection whose exchange failed; the 502's
    // head must say so (it said `keep-alive`, then closed: a pooling client
    // would send its next request into a closing socket)
    let (_w, kw, key) = keyward_for(resetting_upstream(), 1000);
    let mut s = std::net::TcpStream::connect(kw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = format!(
        "GET /api/v1/x HTTP/1.1\r\nHost: kw.test\r\n{}\r\n",
        bearer(&key)
    );
    s.write_all(req.as_bytes()).unwrap();
    // one answer, then the close (a read timeout here: the socket stayed open)
    let mut all = Vec::new();
    s.read_to_end(&mut all).expect("connection not closed");
    let answers = parse_responses(&all);
    assert_eq!(answers.len(), 1, "{}", String::from_utf8_lossy(&all));
    answers[0].assert_error(502, "UPSTREAM_UNAVAILABLE");
    let connection: Vec<&str> = answers[0]
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("connection"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(connection, ["close"], "{}", String::from_utf8_lossy(&all));
}

#[test]
fn upstream_that_answers_garbage_is_502() {
    let (_w, kw, key) = keyward_for(garbage_upstream(), 1000);
    let r = timed_get(kw.addr, "/api/v1/x", &key, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("garbage: hung"));
    assert_eq!(r.status, 502, "garbage: {}", r.body_str());
    r.assert_error(502, "UPSTREAM_UNAVAILABLE");
}

#[test]
fn a_body_the_upstream_cuts_short_does_not_hang_the_client() {
    // the head is already out, so no 502 is possible: the client must not
    // hang waiting for the rest
    let (_w, kw, key) = keyward_for(truncating_upstream(), 1000);
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
    let (up, accepted) = one_answer_per_connection_upstream();
    let (_w, kw, key) = keyward_for(up, 2000);
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
    let (up, accepted) = answers_before_the_body_upstream();
    let (_w, kw, key) = keyward_with_threads(up, 2000, 1);
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
    let (up, posts) = one_answer_per_connection_counting_posts();
    let (_w, kw, key) = keyward_with_threads(up, 2000, 1);
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
