//! `rate_limit.backend = "redis"` against a real redis-server on a free
//! loopback port (scripts/setup.sh installs it): the shared-window bound
//! across two keyward replicas, the fallback while Redis is down, recovery.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;

struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    fn start() -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port().port();
        let mut r = RedisServer {
            child: None,
            port,
            dir,
        };
        r.restart();
        r
    }

    /// (Re)start on the same port, empty (no persistence).
    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed by scripts/setup.sh");
        self.child = Some(child);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || self.cli(&["PING"]) == "PONG"),
            "redis-server did not start on {addr}"
        );
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }

    /// The shared count of `org` in the current window.
    fn count(&self, org: &str, window_s: i64) -> u64 {
        let key = format!("keyward:rl:{org}:{}", now() / window_s);
        self.cli(&["GET", &key]).parse().unwrap_or(0)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

const WINDOW: i64 = 86_400;

fn replica(
    snap: &Snap,
    upstream: SocketAddr,
    redis: &RedisServer,
    limit: u64,
    batch: u64,
    replicas: u64,
) -> Keyward {
    // A generous timeout: CI machines are loaded and a flapping backend would
    // exercise the fallback instead of the shared window.
    let opts = Opts::new(upstream)
        .set("rate_limit.window_s", WINDOW)
        .set("rate_limit.backend", "redis")
        .set("rate_limit.redis_url", redis.url())
        .set("rate_limit.redis_timeout_ms", 200)
        .set("rate_limit.redis_batch", batch as i64)
        .set("rate_limit.expected_replicas", replicas as i64)
        .set("plans.pro.requests_per_window", limit as i64);
    let kw = Keyward::start(snap, opts);
    assert!(
        wait_until(Duration::from_secs(10), || kw
            .metric("keyward_rate_limit_backend_up")
            == 1.0),
        "redis backend never came up: {}",
        kw.log()
    );
    kw
}

/// Send `n` requests from `threads` threads to each instance; count statuses.
fn hammer(instances: &[&Keyward], key: &str, threads: usize, n: usize) -> (u64, u64) {
    let ok = AtomicU64::new(0);
    let limited = AtomicU64::new(0);
    std::thread::scope(|s| {
        for kw in instances {
            for _ in 0..threads {
                s.spawn(|| {
                    for _ in 0..n {
                        let r = kw.get("/api/v1/workspaces/ws_a/flows", Some(key));
                        match r.status {
                            200 => ok.fetch_add(1, Ordering::Relaxed),
                            429 => {
                                r.assert_error(429, "RATE_LIMIT_EXCEEDED");
                                limited.fetch_add(1, Ordering::Relaxed)
                            }
                            other => panic!("unexpected {other}: {}", r.body_str()),
                        };
                    }
                });
            }
        }
    });
    (ok.into_inner(), limited.into_inner())
}

#[test]
fn two_replicas_share_one_window_within_the_stated_bound() {
    let redis = RedisServer::start();
    let snap = Snap::new();
    snap.org("org_a", "pro").workspace("ws_a", "org_a");
    let key = snap.api_key("org_a");
    let up = echo();
    let (limit, batch) = (60u64, 5u64);
    let a = replica(&snap, up, &redis, limit, batch, 2);
    let b = replica(&snap, up, &redis, limit, batch, 2);

    // 2 replicas × 6 threads × 25 requests = 300 attempts for 60 slots.
    let (ok, limited) = hammer(&[&a, &b], &key, 6, 25);
    assert_eq!(ok + limited, 300);
    let bound = limit + 2 * batch - 1;
    assert!(
        ok >= limit && ok <= bound,
        "admitted {ok}, expected {limit}..={bound}"
    );
    // Everything admitted reached the shared counter.
    assert!(
        wait_until(Duration::from_secs(5), || redis.count("org_a", WINDOW)
            == ok),
        "redis counted {} but {ok} were admitted",
        redis.count("org_a", WINDOW)
    );
    // Both replicas now refuse, with the shared state in the headers.
    for kw in [&a, &b] {
        let r = kw.get("/api/v1/workspaces/ws_a/flows", Some(&key));
        r.assert_error(429, "RATE_LIMIT_EXCEEDED");
        assert_eq!(r.header("x-ratelimit-limit"), Some("60"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    }
    eprintln!("admitted {ok} of limit {limit} across 2 replicas (bound {bound})");
}

#[test]
fn redis_outage_falls_back_to_a_local_share_and_recovers() {
    let mut redis = RedisServer::start();
    let snap = Snap::new();
    snap.org("org_a", "pro").workspace("ws_a", "org_a");
    let key = snap.api_key("org_a");
    let (limit, batch) = (40u64, 4u64);
    let kw = replica(&snap, echo(), &redis, limit, batch, 2);

    redis.kill();
    // The first flush after the kill fails and marks the backend down.
    let _ = kw.get("/api/v1/workspaces/ws_a/flows", Some(&key));
    assert!(
        wait_until(Duration::from_secs(5), || kw
            .metric("keyward_rate_limit_backend_up")
            == 0.0),
        "backend never reported down: {}",
        kw.log()
    );
    let ready = get(kw.admin, "/readyz");
    assert_eq!(ready.status, 200, "{}", ready.body_str());
    let body = ready.json();
    assert_eq!(body["rate_limit"]["backend"], "redis");
    assert_eq!(body["rate_limit"]["up"], false);
    assert!(
        body["degraded"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d == "rate_limit_backend_down"),
        "{body}"
    );

    // Down: limit / expected_replicas = 20 for this window, counting the one
    // request above; never open, never a 5xx/401/403 (hammer panics on those).
    let (ok, _) = hammer(&[&kw], &key, 4, 15);
    assert_eq!(ok + 1, 20, "fallback admitted {ok} + 1");
    let r = kw.get("/api/v1/workspaces/ws_a/flows", Some(&key));
    r.assert_error(429, "RATE_LIMIT_EXCEEDED");
    assert_eq!(r.header("x-ratelimit-limit"), Some("20"));

    // Redis returns (empty): the 20 admitted while down are flushed, and the
    // shared window of 40 applies again.
    redis.restart();
    assert!(
        wait_until(Duration::from_secs(10), || kw
            .metric("keyward_rate_limit_backend_up")
            == 1.0),
        "backend never recovered: {}",
        kw.log()
    );
    assert!(
        wait_until(Duration::from_secs(5), || redis.count("org_a", WINDOW)
            == 20),
        "redis count after recovery: {}",
        redis.count("org_a", WINDOW)
    );
    let (ok, _) = hammer(&[&kw], &key, 4, 15);
    assert_eq!(ok, 20, "one replica counts exactly: 20 more to reach 40");
    assert!(wait_until(Duration::from_secs(5), || redis
        .count("org_a", WINDOW)
        == 40));
    let ready = get(kw.admin, "/readyz").json();
    assert_eq!(ready["rate_limit"]["up"], true, "{ready}");
}
