//! Operations (SPEC §8.2): metrics exposition, health, SIGHUP, shutdown.
mod common;
use common::*;
use std::time::{Duration, Instant};

#[test]
fn metrics_parse_as_prometheus_exposition_and_name_every_contract_metric() {
    let snap = Snap::new();
    snap.org("org_a", "free");
    let key = snap.api_key("org_a");
    let kw = Keyward::start(&snap, Opts::new(echo()));
    kw.get("/api/v1/x", Some(&key));
    kw.get("/api/v1/x", Some(&key));
    kw.get("/api/v1/x", Some("wvz_nope"));
    let text = kw.metrics();
    for name in [
        "keyward_requests_total",
        "keyward_request_duration_seconds_bucket",
        "keyward_auth_duration_seconds_bucket",
        "keyward_cache_lookups_total",
        "keyward_snapshot_generation",
        "keyward_snapshot_age_seconds",
        "keyward_snapshot_reloads_total",
        "keyward_rate_limit_decisions_total",
        "keyward_rate_limit_backend_up",
        "keyward_snapshot_lookups_total",
    ] {
        assert!(text.lines().any(|l| l.starts_with(name)), "{name} missing");
    }
    assert!(
        !text.contains("org_a") && !text.contains(&key[..8]),
        "an id leaked into a label"
    );
    assert_eq!(
        kw.metric("keyward_requests_total{auth_method=\"api_key\",outcome=\"forwarded\"}"),
        2.0
    );
    assert_eq!(
        kw.metric("keyward_cache_lookups_total{result=\"hit\"}"),
        1.0
    );
    // a real exposition-format parser, when installed (scripts/setup.sh installs it)
    if let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let msg = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(
            !msg.contains("error while linting") && !msg.to_lowercase().contains("parse"),
            "promtool: {msg}"
        );
    } else if std::env::var("CI").is_ok() {
        panic!("promtool not installed");
    }
}

#[test]
fn healthz_readyz_and_healthcheck_command() {
    let snap = Snap::new();
    let kw = Keyward::start(&snap, Opts::new(echo()));
    assert_eq!(get(kw.admin, "/healthz").status, 200);
    let r = get(kw.admin, "/readyz");
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["ready"], true);
    assert!(j["snapshot"]["generation"].as_u64().unwrap() >= 1);
    assert!(j["snapshot"]["age_seconds"].is_number());
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args([
            "healthcheck",
            "--url",
            &format!("http://{}/healthz", kw.admin),
        ])
        .status()
        .unwrap();
    assert!(ok.success());
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args([
            "healthcheck",
            "--url",
            &format!("http://{}/healthz", free_port()),
        ])
        .status()
        .unwrap();
    assert!(!bad.success());
}

#[test]
fn stale_snapshot_makes_readyz_fail() {
    let snap = Snap::new();
    snap.sql(&format!(
        "INSERT INTO meta (key, value) VALUES ('generated_at', '{}')",
        now() - 1000
    ));
    let mut opts = Opts::new(echo());
    opts.extra = "[snapshot]\nmax_staleness_s = 100\n".into();
    opts.wait_ready = false;
    let kw = Keyward::start(&snap, opts);
    std::thread::sleep(Duration::from_millis(300));
    let r = get(kw.admin, "/readyz");
    assert_eq!(r.status, 503);
    assert!(r.json()["snapshot"]["age_seconds"].as_i64().unwrap() >= 1000);
}

#[test]
fn sighup_reloads_routes_and_rejects_invalid_configs_without_failing_requests() {
    let snap = Snap::new();
    snap.org("org_a", "free").workspace("ws", "org_a");
    let key = snap.api_key("org_a");
    let kw = Keyward::start(&snap, Opts::new(echo()));
    assert_eq!(kw.get("/api/v1/api-keys", Some(&key)).status, 200);
    let original = std::fs::read_to_string(&kw.config_path).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let failures = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if kw.get("/api/v1/workspaces/ws/x", Some(&key)).status != 200 {
                        failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
        // invalid config: rejected, old one kept
        std::fs::write(&kw.config_path, format!("{original}\n[bogus]\n")).unwrap();
        kw.signal(libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(300));
        // another invalid one: an unknown key inside a route
        std::fs::write(&kw.config_path, original.replace("[[route]]\npath = \"/api/auth/**\"", "[[route]]\npath = \"/api/v1/api-keys/**\"\nauth = \"mcp\"\npath2 = 1\n[[route]]\npath = \"/api/auth/**\"")).unwrap();
        kw.signal(libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(300));
        std::fs::write(
            &kw.config_path,
            original.replace("[[route]]\npath = \"/api/auth/**\"", "[[route]]\npath = \"/mcp/{server}/api-keys/**\"\nauth = \"mcp\"\n[[route]]\npath = \"/api/v1/api-keys/**\"\norg_wide_only = true\n[[route]]\npath = \"/api/auth/**\""),
        )
        .unwrap();
        for _ in 0..3 {
            kw.signal(libc::SIGHUP);
            std::thread::sleep(Duration::from_millis(200));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert_eq!(failures.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert!(kw.log().contains("config reload rejected"), "{}", kw.log());
    assert!(kw.log().contains("config reloaded"));
    // a frozen key is refused with its name
    std::fs::write(
        &kw.config_path,
        original.replace("threads = 2", "threads = 3"),
    )
    .unwrap();
    kw.signal(libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(3), || kw
        .log()
        .contains("server.threads")));
}

#[test]
fn sigterm_lets_in_flight_requests_finish_and_sigint_is_fast() {
    let snap = Snap::new();
    snap.org("org_a", "free");
    let key = snap.api_key("org_a");
    let mut opts = Opts::new(echo());
    opts.extra = "[server]\nshutdown_grace_s = 3\n".into();
    let mut kw = Keyward::start(&snap, opts);
    let addr = kw.addr;
    let k2 = key.clone();
    let inflight = std::thread::spawn(move || {
        raw(addr, &format!("GET /api/v1/x?echo_delay_ms=1000 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {k2}\r\nConnection: close\r\n\r\n"))
    });
    std::thread::sleep(Duration::from_millis(200));
    kw.signal(libc::SIGTERM);
    let r = inflight.join().unwrap();
    assert_eq!(r.status, 200, "in-flight request was cut: {}", r.body_str());
    let t = Instant::now();
    while kw.child.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        kw.child.try_wait().unwrap().is_some(),
        "did not exit after the grace period"
    );

    let snap2 = Snap::new();
    let mut opts = Opts::new(echo());
    opts.extra = "[server]\nshutdown_grace_s = 30\n".into();
    let mut kw2 = Keyward::start(&snap2, opts);
    // let pingora start its services and install its signal watcher
    wait_until(Duration::from_secs(10), || {
        kw2.log().contains("Starting service")
    });
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    kw2.signal(libc::SIGINT);
    while kw2.child.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Fast: nowhere near the 30 s grace (a loaded 2-core CI machine can take
    // a few seconds to schedule the exit).
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "SIGINT took {:?}",
        t.elapsed()
    );
}

#[test]
fn access_log_has_one_line_per_request_in_text_and_json_and_no_secret() {
    for format in ["text", "json"] {
        let snap = Snap::new();
        snap.org("org_a", "pro").workspace("ws_a", "org_a");
        let key = snap.api_key("org_a");
        let mut opts = Opts::new(echo());
        opts.env.push(("KEYWARD_LOG_FORMAT".into(), format.into()));
        let kw = Keyward::start(&snap, opts);
        assert_eq!(kw.get("/api/v1/workspaces/ws_a/f", Some(&key)).status, 200);
        assert_eq!(kw.get("/api/v1/workspaces/ws_a/f", None).status, 401);
        let access = |log: &str| -> Vec<String> {
            log.lines()
                .filter(|l| l.contains("keyward::access"))
                .map(str::to_string)
                .collect()
        };
        assert!(
            wait_until(Duration::from_secs(5), || access(&kw.log()).len() == 2),
            "{}",
            kw.log()
        );
        let log = kw.log();
        assert!(!log.contains(&key), "the key leaked into the log");
        // Lines are batched per worker thread, so two requests served by
        // different workers may be written in either order.
        let mut lines = access(&log);
        lines.sort_by_key(|l| !(l.contains("status=200") || l.contains("\"status\":200")));
        if format == "json" {
            let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
            assert_eq!(v["status"], 200);
            assert_eq!(v["auth_method"], "api_key");
            assert_eq!(v["org_id"], "org_a");
            assert_eq!(v["path"], "/api/v1/workspaces/ws_a/f");
            assert_eq!(v["key_prefix"].as_str().unwrap(), &key[..8]);
            assert!(v["total_us"].as_u64().is_some());
            let v: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
            assert_eq!(
                (v["status"].as_u64(), v["outcome"].as_str()),
                (Some(401), Some("unauthenticated"))
            );
        } else {
            assert!(lines[0].contains("method=GET path=/api/v1/workspaces/ws_a/f status=200 auth_method=api_key outcome=forwarded org_id=org_a"), "{}", lines[0]);
            assert!(
                lines[0].contains(&format!("key_prefix={} ", &key[..8])),
                "{}",
                lines[0]
            );
            assert!(
                lines[1].contains("status=401") && lines[1].contains("outcome=unauthenticated")
            );
        }
    }
}
