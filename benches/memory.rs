//! Memory of the verdict cache, in-process and deterministic (no wrk, no
//! network): a KEYS-key SQLite snapshot over ORGS organizations, WARM keys
//! decided once each through the real decision path (every first use a
//! SQLite lookup, then cached), then RELOADS full reloads of a republished
//! snapshot (each refills the cache from the new generation). Reports RSS
//! (VmRSS, split anon/file) and the peak (VmHWM) after each phase, and the
//! anonymous bytes each warm key costs.
//!
//! Run: `cargo bench --bench memory` (KEYS=1000000 WARM=100000 ORGS=10000
//! RELOADS=10 by default; smaller: `KEYS=200000 cargo bench --bench memory`).
//! The global allocator is mimalloc, as in the keyward binary.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method};
use keyward::auth::decide::{Decision, RequestFacts};
use keyward::config::Config;
use keyward::engine::Engine;
use keyward::metrics::Metrics;
use keyward::snapshot::{schema, SnapshotStore};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn token(i: usize) -> String {
    format!("wvz_mem_{i:032}")
}

/// Every 4th key workspace-scoped to its organization's workspace, the rest
/// organization-wide (as benches/load/snapshot_scale.sh builds them).
fn build_snapshot(path: &Path, keys: usize, orgs: usize) {
    let conn = schema::init(path).unwrap();
    conn.execute_batch("BEGIN").unwrap();
    for o in 0..orgs {
        conn.execute(
            "INSERT INTO organizations (id, plan) VALUES (?1, 'pro')",
            [format!("org_{o}")],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO workspaces (id, organization_id) VALUES (?1, ?2)",
            [format!("ws_{o}"), format!("org_{o}")],
        )
        .unwrap();
    }
    let mut stmt = conn
        .prepare("INSERT INTO api_keys (id, organization_id, key_hash, key_prefix, permissions) VALUES (?1, ?2, ?3, ?4, ?5)")
        .unwrap();
    for i in 0..keys {
        let key = token(i);
        let org = i % orgs;
        let perms =
            (i % 4 == 0).then(|| format!(r#"{{"scope":"workspace","workspaceIds":["ws_{org}"]}}"#));
        stmt.execute(rusqlite::params![
            format!("key_{i}"),
            format!("org_{org}"),
            schema::token_hash_hex(key.as_bytes()),
            &key[..12],
            perms,
        ])
        .unwrap();
    }
    drop(stmt);
    conn.execute_batch("COMMIT").unwrap();
}

/// A `kB` field of /proc/self/status, in KiB.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn rss() -> String {
    format!(
        "VmRSS {} MiB = anon {} + file {}; peak VmHWM {} MiB",
        status_kib("VmRSS:") / 1024,
        status_kib("RssAnon:") / 1024,
        status_kib("RssFile:") / 1024,
        status_kib("VmHWM:") / 1024
    )
}

fn main() {
    // `cargo bench` passes --bench; test runners (`cargo test --benches`,
    // nextest's `--list`) do not, and get nothing: this is a measurement.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // As the keyward binary does (ALLOCATOR=default: mimalloc's own settings).
    if std::env::var("ALLOCATOR").as_deref() != Ok("default") {
        keyward::ops::allocator::tune();
    }
    let keys = env("KEYS", 1_000_000);
    let warm = env("WARM", 100_000).min(keys);
    let orgs = env("ORGS", 10_000);
    let reloads = env("RELOADS", 10);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snapshot.db");
    let t = std::time::Instant::now();
    build_snapshot(&path, keys, orgs);
    println!(
        "snapshot: {keys} keys, {orgs} orgs, built in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let text = keyward::demo::SHIPPED_CONFIG
        .replace("capacity = 100000", &format!("capacity = {}", warm.max(1)));
    let mut cfg = Config::from_toml_str(&text, Path::new("/")).unwrap();
    cfg.snapshot.path = path.clone();
    for plan in cfg.plans.values_mut() {
        plan.requests_per_window = 1_000_000_000;
    }
    let store = SnapshotStore::new(&path);
    store.reload().unwrap();
    let engine: Arc<Engine> = Engine::new(cfg, store.clone(), Metrics::new());
    println!("{:<34}{}", "after load:", rss());

    let before = status_kib("RssAnon:");
    let mut headers = HeaderMap::new();
    let mut forwarded = 0usize;
    for i in 0..warm {
        headers.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {}", token(i))).unwrap(),
        );
        let path = format!("/api/v1/workspaces/ws_{}/connections", i % orgs);
        let facts = RequestFacts {
            method: &Method::GET,
            path: &path,
            query: None,
            headers: &headers,
            client: keyward::forwarding::Client::resolve(
                IpAddr::from([127, 0, 0, 1]),
                false,
                &headers,
                &[],
            ),
        };
        let pinned = engine.pin();
        if matches!(
            pinned.decide(&facts, keyward::clock::now_unix()),
            Decision::Forward(_)
        ) {
            forwarded += 1;
        }
    }
    assert_eq!(forwarded, warm, "every warm key must be forwarded");
    let entries = engine.verdicts.current().token_entries();
    let grown = status_kib("RssAnon:").saturating_sub(before) * 1024;
    println!("{:<34}{}", format!("after {warm} warm keys:"), rss());
    println!(
        "{:<34}{} bytes per warm key ({} cached verdicts)",
        "anon growth:",
        grown / warm.max(1) as u64,
        entries
    );

    for r in 1..=reloads {
        // Republish: a copy with one change, renamed over the file.
        let next = dir.path().join("next.db");
        std::fs::copy(&path, &next).unwrap();
        let conn = rusqlite::Connection::open(&next).unwrap();
        conn.execute(
            "UPDATE organizations SET rate_limit = ?1 WHERE id = 'org_0'",
            [1_000_000_000 + r as i64],
        )
        .unwrap();
        drop(conn);
        std::fs::rename(&next, &path).unwrap();
        store.reload().unwrap();
        // Let the after-swap refill finish (at most 750 ms) and the old
        // cache be released.
        std::thread::sleep(std::time::Duration::from_millis(1500));
        if std::env::var_os("VERBOSE").is_some() {
            println!("  reload {r}: {}", rss());
        }
    }
    println!(
        "{:<34}{} ({} cached verdicts)",
        format!("after {reloads} reloads:"),
        rss(),
        engine.verdicts.current().token_entries()
    );
}
