//! Operations (SPEC §8.2): metrics exposition, health, SIGHUP, shutdown.
mod common;
use common::*;
use std::time::Duration;

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
        "keyward_ready",
        "keyward_draining",
        "keyward_process_start_time_seconds",
        "keyward_build_info",
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
fn healthz_and_readyz_answer_once_a_snapshot_is_loaded() {
    let snap = Snap::new();
    let kw = Keyward::start(&snap, Opts::new(echo()));
    assert_eq!(get(kw.admin, "/healthz").status, 200);
    let r = get(kw.admin, "/readyz");
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["ready"], true);
    assert!(j["snapshot"]["generation"].as_u64().unwrap() >= 1);
    assert!(j["snapshot"]["age_seconds"].is_number());
    // the same state as gauges, for dashboards and alerts
    assert_eq!(kw.metric("keyward_ready"), 1.0);
    assert_eq!(kw.metric("keyward_draining"), 0.0);
    let started = kw.metric("keyward_process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started > now - 120.0 && started <= now,
        "{started} vs {now}"
    );
    let build = format!(
        "keyward_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(kw.metric(&build), 1.0);
}

#[test]
fn healthcheck_command_succeeds_against_a_live_healthz() {
    let snap = Snap::new();
    let kw = Keyward::start(&snap, Opts::new(echo()));
    let ok = keyward_cmd()
        .args([
            "healthcheck",
            "--url",
            &format!("http://{}/healthz", kw.admin),
        ])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn healthcheck_command_fails_without_a_listener() {
    let bad = keyward_cmd()
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
    let mut opts = Opts::new(echo()).set("snapshot.max_staleness_s", 100);
    opts.wait_ready = false;
    let kw = Keyward::start(&snap, opts);
    // loaded (generation 1), just too old
    kw.wait_reloaded(0);
    let r = get(kw.admin, "/readyz");
    assert_eq!(r.status, 503);
    assert!(r.json()["snapshot"]["age_seconds"].as_i64().unwrap() >= 1000);
}

/// A `[[route]]` table.
fn route(fields: &[(&str, toml::Value)]) -> toml::Value {
    toml::Value::Table(
        fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    )
}

/// `doc` with `routes` put before its first route.
fn with_routes_first(doc: &toml::Table, routes: Vec<toml::Value>) -> toml::Table {
    let mut doc = doc.clone();
    let table = doc.get_mut("route").unwrap().as_array_mut().unwrap();
    for (i, r) in routes.into_iter().enumerate() {
        table.insert(i, r);
    }
    doc
}

#[test]
fn sighup_reloads_routes_and_rejects_invalid_configs_without_failing_requests() {
    let snap = Snap::new();
    snap.org("org_a", "free").workspace("ws", "org_a");
    let key = snap.api_key("org_a");
    let kw = Keyward::start(&snap, Opts::new(echo()));
    assert_eq!(kw.get("/api/v1/api-keys", Some(&key)).status, 200);
    kw.wait_catches(libc::SIGHUP);
    let original = kw.config.clone();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let failures = std::sync::atomic::AtomicU64::new(0);
    let mut waited = Vec::new();
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
        let mut bogus = original.clone();
        bogus.insert("bogus".into(), toml::Value::Table(toml::Table::new()));
        kw.write_config(&bogus);
        kw.signal(libc::SIGHUP);
        waited.push((
            "first rejection",
            kw.wait_log_count("config reload rejected", 1),
        ));
        // another invalid one: an unknown key inside a route
        kw.write_config(&with_routes_first(
            &original,
            vec![route(&[
                ("path", "/api/v1/api-keys/**".into()),
                ("auth", "mcp".into()),
                ("path2", 1.into()),
            ])],
        ));
        kw.signal(libc::SIGHUP);
        waited.push((
            "second rejection",
            kw.wait_log_count("config reload rejected", 2),
        ));
        kw.write_config(&with_routes_first(
            &original,
            vec![
                route(&[
                    ("path", "/mcp/{server}/api-keys/**".into()),
                    ("auth", "mcp".into()),
                ]),
                route(&[
                    ("path", "/api/v1/api-keys/**".into()),
                    ("org_wide_only", true.into()),
                ]),
            ],
        ));
        for i in 1..=3 {
            kw.signal(libc::SIGHUP);
            waited.push(("a reload", kw.wait_log_count("config reloaded", i)));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    // (asserted here: a panic inside the scope would wait forever for the
    // request threads)
    for (what, logged) in waited {
        assert!(logged, "{what} was never logged: {}", kw.log());
    }
    assert_eq!(failures.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert!(kw.log().contains("config reload rejected"), "{}", kw.log());
    assert!(kw.log().contains("config reloaded"));
}

#[test]
fn sighup_refuses_a_frozen_key_by_its_name() {
    let snap = Snap::new();
    let kw = Keyward::start(&snap, Opts::new(echo()));
    kw.wait_catches(libc::SIGHUP);
    let mut doc = kw.config.clone();
    set_key(&mut doc, "server.threads", 3);
    kw.write_config(&doc);
    kw.signal(libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(3), || kw
        .log()
        .contains("server.threads")));
}

/// How long the in-flight request of the SIGTERM test takes upstream.
const IN_FLIGHT_FOR: Duration = Duration::from_millis(1000);

#[test]
fn sigterm_lets_in_flight_requests_finish() {
    let snap = Snap::new();
    snap.org("org_a", "free");
    let key = snap.api_key("org_a");
    let upstream = SlowUpstream::start(IN_FLIGHT_FOR);
    let opts = Opts::new(upstream.addr).set("server.shutdown_grace_s", 3);
    let mut kw = Keyward::start(&snap, opts);
    // until pingora's watcher runs, SIGTERM would just kill the process
    kw.wait_catches(libc::SIGTERM);
    let addr = kw.addr;
    let k2 = key.clone();
    let inflight = std::thread::spawn(move || {
        raw(addr, &format!("GET /api/v1/x?echo_delay_ms=1000 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {k2}\r\nConnection: close\r\n\r\n"))
    });
    assert!(
        wait_until(READY_TIMEOUT, || upstream.arrived() == 1),
        "the request never reached the upstream: {}",
        kw.log()
    );
    kw.signal(libc::SIGTERM);
    let r = inflight.join().unwrap();
    assert_eq!(r.status, 200, "in-flight request was cut: {}", r.body_str());
    assert!(
        kw.wait_exit(Duration::from_secs(10)).is_some(),
        "did not exit after the grace period"
    );
}

#[test]
fn sigint_is_fast() {
    let snap = Snap::new();
    let opts = Opts::new(echo()).set("server.shutdown_grace_s", 30);
    let mut kw = Keyward::start(&snap, opts);
    // Until pingora's watcher runs, SIGINT simply kills the process: wait
    // for the watcher, so that keyward's own fast shutdown is what is timed.
    kw.wait_catches(libc::SIGINT);
    kw.signal(libc::SIGINT);
    let took = kw.wait_exit(Duration::from_secs(20));
    // Fast: nowhere near the 30 s grace (a loaded 2-core CI machine can take
    // a few seconds to schedule the exit).
    assert!(
        took.is_some_and(|t| t < Duration::from_secs(10)),
        "SIGINT took {took:?}: {}",
        kw.log()
    );
}

/// One forwarded and one refused request logged in `format`: one access
/// line each, with what they were, and no secret.
fn access_log_lines(format: &str) {
    let snap = Snap::new();
    snap.org("org_a", "pro").workspace("ws_a", "org_a");
    let key = snap.api_key("org_a");
    let mut opts = Opts::new(echo());
    opts.env.push(("KEYWARD_LOG_FORMAT".into(), format.into()));
    let kw = Keyward::start(&snap, opts);
    assert_eq!(kw.get("/api/v1/workspaces/ws_a/f", Some(&key)).status, 200);
    let refused = kw.get("/api/v1/workspaces/ws_a/f", None);
    assert_eq!(refused.status, 401);
    let refused_reason = serde_json::from_slice::<serde_json::Value>(&refused.body).unwrap()
        ["details"]["reason"]
        .as_str()
        .unwrap()
        .to_string();
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
        assert_eq!(v["client_ip"], "127.0.0.1");
        assert!(v["reason"].as_str().unwrap_or("").is_empty(), "{v}");
        let (auth, total) = (
            v["auth_us"].as_u64().unwrap(),
            v["total_us"].as_u64().unwrap(),
        );
        assert!(total >= auth, "{v}");
        let v: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(
            (v["status"].as_u64(), v["outcome"].as_str()),
            (Some(401), Some("unauthenticated"))
        );
        // the reason is the one the client was answered with
        assert_eq!(v["reason"].as_str(), Some(refused_reason.as_str()), "{v}");
        assert_eq!(v["client_ip"], "127.0.0.1");
        assert!(v["total_us"].as_u64().is_some() && v["auth_us"].as_u64().is_some());
    } else {
        assert!(lines[0].contains("method=GET path=/api/v1/workspaces/ws_a/f status=200 auth_method=api_key outcome=forwarded org_id=org_a"), "{}", lines[0]);
        assert!(
            lines[0].contains(&format!("key_prefix={} ", &key[..8])),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains(" client_ip=127.0.0.1 "), "{}", lines[0]);
        assert!(lines[0].contains(" auth_us=") && lines[0].contains(" total_us="));
        assert!(lines[1].contains("status=401") && lines[1].contains("outcome=unauthenticated"));
        assert!(lines[1].contains(" client_ip=127.0.0.1 "), "{}", lines[1]);
        assert!(
            lines[1].contains(&format!(" reason={refused_reason}")),
            "{}",
            lines[1]
        );
    }
}

#[test]
fn access_log_has_one_line_per_request_in_text_and_no_secret() {
    access_log_lines("text");
}

#[test]
fn access_log_has_one_line_per_request_in_json_and_no_secret() {
    access_log_lines("json");
}
