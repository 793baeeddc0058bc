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

// ---- Redis for real deployments (issue 18 part 3): rediss://, Cluster, Sentinel.

use common::redis_servers::{cli, Cluster, SentinelSet, TlsRedis};

/// Send `n` requests per thread for `key` against workspace `ws`; count
/// statuses (anything but 200/429 fails the test: no 5xx, no 401/403).
fn hammer_ws(instances: &[&Keyward], ws: &str, key: &str, threads: usize, n: usize) -> u64 {
    let ok = AtomicU64::new(0);
    let path = format!("/api/v1/workspaces/{ws}/flows");
    std::thread::scope(|s| {
        for kw in instances {
            for _ in 0..threads {
                s.spawn(|| {
                    for _ in 0..n {
                        let r = kw.get(&path, Some(key));
                        match r.status {
                            200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            429 => r.assert_error(429, "RATE_LIMIT_EXCEEDED"),
                            other => panic!("unexpected {other}: {}", r.body_str()),
                        }
                    }
                });
            }
        }
    });
    ok.into_inner()
}

/// A keyward on the redis backend with `extra` settings; waits for the
/// backend to come up unless `expect_up` is false.
fn redis_replica(
    snap: &Snap,
    limit: u64,
    batch: u64,
    replicas: u64,
    extra: &[(&str, toml::Value)],
    expect_up: bool,
) -> Keyward {
    let mut opts = Opts::new(echo())
        .set("rate_limit.window_s", WINDOW)
        .set("rate_limit.backend", "redis")
        .set("rate_limit.redis_timeout_ms", 300)
        .set("rate_limit.redis_batch", batch as i64)
        .set("rate_limit.expected_replicas", replicas as i64)
        .set("plans.pro.requests_per_window", limit as i64);
    for (k, v) in extra {
        opts = opts.set(k, v.clone());
    }
    let kw = Keyward::start(snap, opts);
    if expect_up {
        assert!(
            wait_until(Duration::from_secs(15), || kw
                .metric("keyward_rate_limit_backend_up")
                == 1.0),
            "redis backend never came up: {}",
            kw.log()
        );
    }
    kw
}

fn key_of(org: &str) -> String {
    format!("keyward:rl:{org}:{}", now() / WINDOW)
}

#[test]
fn rediss_with_a_ca_file_shares_one_window_and_verifies_the_server() {
    if !common::redis_servers::redis_has_tls() {
        eprintln!("SKIPPED: this redis-server is not built with TLS (--tls-port)");
        return;
    }
    let redis = TlsRedis::start();
    let snap = Snap::new();
    snap.org("org_a", "pro").workspace("ws_a", "org_a");
    let key = snap.api_key("org_a");
    let (limit, batch) = (40u64, 4u64);
    let tls = [
        ("rate_limit.redis_url", toml::Value::from(redis.url())),
        (
            "rate_limit.redis_ca_file",
            toml::Value::from(redis.files.ca.display().to_string()),
        ),
    ];
    let a = redis_replica(&snap, limit, batch, 2, &tls, true);
    let b = redis_replica(&snap, limit, batch, 2, &tls, true);
    let ok = hammer_ws(&[&a, &b], "ws_a", &key, 4, 25);
    let bound = limit + 2 * batch - 1;
    assert!(
        (limit..=bound).contains(&ok),
        "admitted {ok}, expected {limit}..={bound}"
    );
    // The counts reached the TLS server (read back over TLS).
    assert!(
        wait_until(Duration::from_secs(5), || redis
            .cli(&["GET", &key_of("org_a")])
            == ok.to_string()),
        "redis counted {} but {ok} were admitted",
        redis.cli(&["GET", &key_of("org_a")])
    );
    for kw in [&a, &b] {
        kw.get("/api/v1/workspaces/ws_a/flows", Some(&key))
            .assert_error(429, "RATE_LIMIT_EXCEEDED");
    }

    // Without the CA file the server's certificate is not trusted (webpki
    // roots): the backend stays down, and requests get the fallback share,
    // never a 5xx.
    let snap2 = Snap::new();
    snap2.org("org_b", "pro").workspace("ws_b", "org_b");
    let key2 = snap2.api_key("org_b");
    let untrusted = redis_replica(
        &snap2,
        limit,
        batch,
        2,
        &[("rate_limit.redis_url", toml::Value::from(redis.url()))],
        false,
    );
    let ok = hammer_ws(&[&untrusted], "ws_b", &key2, 2, 25);
    assert_eq!(
        ok,
        limit / 2,
        "fallback share while the server is untrusted"
    );
    // Several reconnection attempts later (every 200 ms while down), still down.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(untrusted.metric("keyward_rate_limit_backend_up"), 0.0);
    assert_eq!(redis.cli(&["EXISTS", &key_of("org_b")]), "0");
}

#[test]
fn cluster_limits_orgs_on_every_node_exactly_and_shares_windows() {
    let cluster = Cluster::start();
    let snap = Snap::new();
    let orgs: Vec<String> = (0..6).map(|i| format!("org_{i}")).collect();
    let mut keys = Vec::new();
    for org in &orgs {
        let ws = format!("ws_{org}");
        snap.org(org, "pro").workspace(&ws, org);
        keys.push(snap.api_key(org));
    }
    // The organizations' keys live on more than one master: one flush
    // spans nodes.
    let owners: std::collections::BTreeSet<u16> =
        orgs.iter().map(|o| cluster.node_of(&key_of(o))).collect();
    assert!(owners.len() >= 2, "all keys on one node: {owners:?}");

    let (limit, batch) = (12u64, 3u64);
    let nodes = toml::Value::from(cluster.urls());
    let settings = [
        ("rate_limit.redis_mode", toml::Value::from("cluster")),
        ("rate_limit.redis_nodes", nodes),
    ];
    let a = redis_replica(&snap, limit, batch, 2, &settings, true);
    // One replica counts exactly, every organization at once.
    std::thread::scope(|s| {
        for (org, key) in orgs.iter().zip(&keys) {
            let a = &a;
            s.spawn(move || {
                let ok = hammer_ws(&[a], &format!("ws_{org}"), key, 3, 10);
                assert_eq!(ok, limit, "{org}: one replica on a cluster is exact");
            });
        }
    });
    for org in &orgs {
        assert!(
            wait_until(Duration::from_secs(5), || cluster.get(&key_of(org))
                == limit.to_string()),
            "{org}: the cluster counted {}",
            cluster.get(&key_of(org))
        );
    }
    assert_eq!(a.metric("keyward_rate_limit_backend_up"), 1.0);

    // A second replica shares those windows: it can admit at most one batch
    // before its first reply says the window is full.
    let b = redis_replica(&snap, limit, batch, 2, &settings, true);
    for (org, key) in orgs.iter().zip(&keys) {
        let ok = hammer_ws(&[&b], &format!("ws_{org}"), key, 1, 8);
        assert!(ok <= batch, "{org}: the second replica admitted {ok}");
        let r = b.get(&format!("/api/v1/workspaces/ws_{org}/flows"), Some(key));
        r.assert_error(429, "RATE_LIMIT_EXCEEDED");
        assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    }
    eprintln!("cluster: keys on masters {owners:?}");
}

#[test]
fn sentinel_failover_reaches_the_new_master_without_5xx() {
    let set = SentinelSet::start("kwmaster");
    let snap = Snap::new();
    for org in ["org_a", "org_b"] {
        snap.org(org, "pro").workspace(&format!("ws_{org}"), org);
    }
    // org_c keeps writing through the failover.
    snap.org("org_c", "big").workspace("ws_org_c", "org_c");
    let key_a = snap.api_key("org_a");
    let key_b = snap.api_key("org_b");
    let key_c = snap.api_key("org_c");
    let limit = 20u64;
    let kw = redis_replica(
        &snap,
        limit,
        4,
        1,
        &[
            ("rate_limit.redis_mode", toml::Value::from("sentinel")),
            ("rate_limit.redis_nodes", toml::Value::from(vec![set.url()])),
            (
                "rate_limit.redis_sentinel_master",
                toml::Value::from(set.name.clone()),
            ),
            (
                "plans.big.requests_per_window",
                toml::Value::from(1_000_000),
            ),
        ],
        true,
    );
    let (old, new) = (set.master.port, set.replica.port);
    assert_eq!(set.master_port(), old);
    assert_eq!(hammer_ws(&[&kw], "ws_org_a", &key_a, 4, 10), limit);
    assert!(wait_until(Duration::from_secs(5), || cli(
        old,
        &["GET", &key_of("org_a")]
    ) == limit
        .to_string()));
    // Replicated before the failover (WAIT: one replica acknowledged).
    assert_eq!(cli(old, &["WAIT", "1", "2000"]), "1");

    // Fail over while requests keep coming: never a 5xx (or 401/403).
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let r = kw.get("/api/v1/workspaces/ws_org_c/flows", Some(&key_c));
                assert!(
                    matches!(r.status, 200 | 429),
                    "{} during the failover: {}",
                    r.status,
                    r.body_str()
                );
                let r = kw.get("/api/v1/workspaces/ws_org_a/flows", Some(&key_a));
                assert_eq!(r.status, 429, "org_a is over its limit: {}", r.body_str());
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let failed_over = wait_until(Duration::from_secs(15), || {
            cli(set.sentinel.port, &["SENTINEL", "FAILOVER", &set.name]);
            wait_until(Duration::from_secs(3), || set.master_port() == new)
        });
        // keyward asks the sentinels again and writes to the new master.
        let reached = failed_over
            && wait_until(Duration::from_secs(10), || {
                kw.log().contains(&format!("{new})"))
                    && cli(new, &["GET", &key_of("org_c")]).parse::<u64>().is_ok()
            });
        stop.store(true, Ordering::Relaxed);
        assert!(
            failed_over,
            "the sentinel never failed over: {}",
            set.sentinel.log()
        );
        assert!(reached, "never wrote to the new master: {}", kw.log());
    });
    assert!(
        wait_until(Duration::from_secs(5), || kw
            .metric("keyward_rate_limit_backend_up")
            == 1.0),
        "{}",
        kw.log()
    );
    // Shared counting resumed on the new master: org_b gets exactly its
    // limit (one replica), and org_a's window survived the failover.
    let ok = hammer_ws(&[&kw], "ws_org_b", &key_b, 4, 10);
    assert_eq!(ok, limit, "org_b after the failover");
    assert!(
        wait_until(Duration::from_secs(5), || cli(
            new,
            &["GET", &key_of("org_b")]
        ) == limit.to_string()),
        "new master counts {} for org_b",
        cli(new, &["GET", &key_of("org_b")])
    );
    assert_eq!(cli(new, &["GET", &key_of("org_a")]), limit.to_string());
    kw.get("/api/v1/workspaces/ws_org_a/flows", Some(&key_a))
        .assert_error(429, "RATE_LIMIT_EXCEEDED");
}

/// SPEC §6.1: a key's own window is shared through Redis like its
/// organization's, and counts there beside it.
#[test]
fn a_key_window_is_shared_by_replicas_within_the_same_bound() {
    let redis = RedisServer::start();
    let snap = Snap::new();
    snap.org("org_k", "pro").workspace("ws_a", "org_k");
    snap.sql("ALTER TABLE api_keys ADD COLUMN rate_limit INTEGER");
    let (key, id) = snap.api_key_full("org_k", None, None, None);
    snap.sql(&format!(
        "UPDATE api_keys SET rate_limit = 30 WHERE id = '{id}'"
    ));
    let up = echo();
    let (limit, batch) = (1000u64, 5u64);
    let a = replica(&snap, up, &redis, limit, batch, 2);
    let b = replica(&snap, up, &redis, limit, batch, 2);
    let (ok, limited) = hammer(&[&a, &b], &key, 4, 20);
    assert_eq!(ok + limited, 160);
    let bound = 30 + 2 * batch - 1;
    assert!(
        (30..=bound).contains(&ok),
        "admitted {ok}, expected 30..={bound}"
    );
    let key_window = format!("\u{1f}k\u{1f}api_key\u{1f}{id}");
    assert!(
        wait_until(Duration::from_secs(5), || redis.count(&key_window, WINDOW)
            == ok
            && redis.count("org_k", WINDOW) == ok),
        "redis counted key {} org {}, admitted {ok}",
        redis.count(&key_window, WINDOW),
        redis.count("org_k", WINDOW)
    );
    for kw in [&a, &b] {
        let r = kw.get("/api/v1/workspaces/ws_a/flows", Some(&key));
        r.assert_error(429, "RATE_LIMIT_EXCEEDED");
        assert_eq!(r.json()["details"]["limit"], "key");
        assert_eq!(r.header("x-ratelimit-limit"), Some("30"));
    }
}
