//! Binary upgrade (issue 17, SPEC §8.2): `keyward run --upgrade` takes the
//! proxy and admin listeners of the running keyward when it gets SIGQUIT,
//! with no request failed in between, and carries its rate-limit windows.
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// One response read off a keep-alive connection: status, whether the
/// server closes the connection after it.
struct Answer {
    status: u16,
    close: bool,
}

/// Send one request on `conn` and read its whole response (Content-Length
/// or chunked). An error means a failed request.
fn exchange_one(conn: &mut TcpStream, request: &[u8]) -> Result<Answer, String> {
    conn.write_all(request).map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!("closed after {} bytes of the head", buf.len()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
    };
    let close = header("connection:").is_some_and(|v| v == "close");
    let mut body = buf[head_end..].to_vec();
    let complete = |body: &[u8]| match header("content-length:") {
        Some(n) => body.len() >= n.parse::<usize>().unwrap_or(0),
        None => body.ends_with(b"0\r\n\r\n"),
    };
    while !complete(&body) {
        let n = conn
            .read(&mut chunk)
            .map_err(|e| format!("read body: {e}"))?;
        if n == 0 {
            return Err("closed inside the body".into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Answer { status, close })
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, r: Result<Answer, String>) -> Option<Answer> {
        match r {
            Ok(a) if a.status == 200 => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                Some(a)
            }
            Ok(a) => {
                self.failures
                    .lock()
                    .unwrap()
                    .push(format!("status {}", a.status));
                None
            }
            Err(e) => {
                self.failures.lock().unwrap().push(e);
                None
            }
        }
    }
}

/// A client loop until `stop`: one keep-alive connection (a new one after
/// `Connection: close`), or a new connection per request.
fn load(addr: SocketAddr, key: String, keep_alive: bool, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let request = format!(
        "GET /api/v1/x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\nConnection: {connection}\r\n\r\n"
    );
    let mut conn: Option<TcpStream> = None;
    while !stop.load(Ordering::Relaxed) {
        let c = match conn.take() {
            Some(c) => c,
            None => match TcpStream::connect(addr) {
                Ok(c) => c,
                Err(e) => {
                    tally.failures.lock().unwrap().push(format!("connect: {e}"));
                    continue;
                }
            },
        };
        let mut c = c;
        let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
        if let Some(a) = tally.record(exchange_one(&mut c, request.as_bytes())) {
            if keep_alive && !a.close {
                conn = Some(c);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn wait_for_path(p: &Path, timeout: Duration) -> bool {
    wait_until(timeout, || p.exists())
}

/// `keyward run --upgrade` with the config `old` runs with.
fn start_upgrade(old: &Keyward) -> Keyward {
    let log_path = old.log_path.with_extension("upgraded.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = keyward_cmd()
        .args(["run", "--upgrade", "--config"])
        .arg(&old.config_path)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .env_remove("BETTER_AUTH_SECRET")
        .spawn()
        .unwrap();
    Keyward {
        child,
        addr: old.addr,
        admin: old.admin,
        config_path: old.config_path.clone(),
        log_path,
        config: old.config.clone(),
    }
}

fn remaining(r: &Resp) -> u64 {
    r.header("x-ratelimit-remaining")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no X-RateLimit-Remaining: {}", r.status))
}

#[test]
fn an_upgrade_under_load_fails_no_request_and_carries_the_rate_limit_windows() {
    let snap = Snap::new();
    snap.org("org_a", "free").org("org_b", "counted");
    let key = snap.api_key("org_a");
    let counted = snap.api_key("org_b");
    let sock = snap.dir.path().join("up.sock");
    let mut old = Keyward::start(
        &snap,
        Opts::new(echo())
            .set("server.shutdown_grace_s", 3)
            .set("server.upgrade_sock", sock.to_str().unwrap())
            .set("rate_limit.window_s", 86_400)
            .set("plans.counted.requests_per_window", 1000),
    );
    old.wait_catches(libc::SIGQUIT);

    // 40 requests of org_b counted by the old process
    let mut before = old.get("/api/v1/x", Some(&counted));
    for _ in 1..40 {
        before = old.get("/api/v1/x", Some(&counted));
    }
    assert_eq!(before.status, 200);
    let left_before = remaining(&before);

    let stop = Arc::new(AtomicBool::new(false));
    let tallies: Vec<Arc<Tally>> = (0..2).map(|_| Arc::default()).collect();
    let clients: Vec<_> = tallies
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let (addr, key, stop, t) = (old.addr, key.clone(), stop.clone(), t.clone());
            std::thread::spawn(move || load(addr, key, i == 0, stop, t))
        })
        .collect();
    let served = || -> u64 { tallies.iter().map(|t| t.ok.load(Ordering::Relaxed)).sum() };
    // every client is answered before the upgrade starts
    assert!(wait_until(Duration::from_secs(10), || tallies
        .iter()
        .all(|t| t.ok.load(Ordering::Relaxed) > 0)));

    let mut new = start_upgrade(&old);
    // the new process listens for both hand-overs before the signal
    let admin_sock = snap.dir.path().join("up.sock.admin");
    assert!(
        wait_for_path(&admin_sock, Duration::from_secs(20))
            && wait_for_path(&sock, Duration::from_secs(20)),
        "the upgrading process never listened for the hand-over: {}",
        new.log()
    );
    new.wait_catches(libc::SIGQUIT);
    let served_before: u64 = tallies.iter().map(|t| t.ok.load(Ordering::Relaxed)).sum();
    let signalled = Instant::now();
    old.signal(libc::SIGQUIT);
    let exited = old.wait_exit(Duration::from_secs(20));
    let took = signalled.elapsed();
    assert!(
        exited.is_some(),
        "the old process did not exit: {}",
        old.log()
    );
    // SPEC §8.2: gone within shutdown_grace_s + 1 s of SIGQUIT, whatever
    // pingora's own hand-over window (5 s) — 100 ms for reaping it here
    assert!(
        took <= Duration::from_millis(4_100),
        "the old process took {took:?} to exit after SIGQUIT (grace 3 s): {}",
        old.log()
    );
    // the new process alone serves now
    let after_exit = served();
    assert!(
        wait_until(Duration::from_secs(10), || served() >= after_exit + 50),
        "the new process answers after the old one left: {}",
        new.log()
    );
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let served: u64 = tallies.iter().map(|t| t.ok.load(Ordering::Relaxed)).sum();
    let failures: Vec<String> = tallies
        .iter()
        .flat_map(|t| t.failures.lock().unwrap().clone())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed through the upgrade: {:?}\nold: {}\nnew: {}",
        failures.len(),
        served + failures.len() as u64,
        &failures[..failures.len().min(10)],
        old.log(),
        new.log()
    );
    eprintln!("served: {served_before} before the signal, {after_exit} until the old process exited, {served} in all");
    assert!(
        served_before > 0 && served > after_exit,
        "load ran on both sides: {served_before} / {after_exit} / {served}"
    );
    assert!(
        old.log()
            .contains("admin listener and rate-limit counts handed over"),
        "{}",
        old.log()
    );

    // the admin listener is the new process's: it is ready, not draining
    let (status, body) = new.readyz();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["draining"], false);
    assert!(new.metrics().contains("requests_total"));

    // the windows carried over: org_b's 40 count in the new process
    let after = new.get("/api/v1/x", Some(&counted));
    assert_eq!(after.status, 200);
    assert_eq!(
        remaining(&after),
        left_before - 1,
        "the new process counts the old one's requests in the same window"
    );
    assert!(
        new.wait_exit(Duration::from_millis(10)).is_none(),
        "{}",
        new.log()
    );
}

#[test]
fn an_upgrade_with_no_running_keyward_gives_up_and_exits() {
    let snap = Snap::new();
    snap.org("org_a", "free");
    let sock = snap.dir.path().join("lonely.sock");
    let config = snap.dir.path().join("k.toml");
    let opts = Opts::new(echo()).set("server.upgrade_sock", sock.to_str().unwrap());
    std::fs::write(
        &config,
        render(&opts.document(&snap.path, free_port(), free_port())),
    )
    .unwrap();
    let started = Instant::now();
    let status = keyward_cmd()
        .args(["run", "--upgrade", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "nothing to take over is a failure");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn sigquit_with_no_upgrading_keyward_drains_and_is_gone_within_grace_plus_one_second() {
    let snap = Snap::new();
    snap.org("org_a", "free");
    let key = snap.api_key("org_a");
    let sock = snap.dir.path().join("nobody.sock");
    let mut kw = Keyward::start(
        &snap,
        Opts::new(echo())
            .set("server.shutdown_grace_s", 2)
            .set("server.upgrade_sock", sock.to_str().unwrap()),
    );
    kw.wait_catches(libc::SIGQUIT);
    assert_eq!(kw.get("/api/v1/x", Some(&key)).status, 200);
    let signalled = Instant::now();
    kw.signal(libc::SIGQUIT);
    let exited = kw.wait_exit(Duration::from_secs(20));
    let took = signalled.elapsed();
    assert!(exited.is_some(), "did not exit: {}", kw.log());
    // SPEC §8.2: grace + 1 s (pingora alone: a 5 s attempt to reach an
    // upgrading process first, then the grace period)
    assert!(
        took <= Duration::from_millis(3_100),
        "took {took:?} (grace 2 s): {}",
        kw.log()
    );
    assert!(
        kw.log().contains("no upgrading keyward listens"),
        "{}",
        kw.log()
    );
}
