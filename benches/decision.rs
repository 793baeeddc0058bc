//! Decision-path benchmarks: a cached API-key decision, a cache-miss
//! decision against a real 100,000-key SQLite snapshot, and route matching
//! on the shipped route table. Run: `cargo bench --bench decision`.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use keyward::auth::decide::{Decision, RequestFacts};
use keyward::config::Config;
use keyward::engine::Engine;
use keyward::metrics::Metrics;
use keyward::snapshot::{schema, SnapshotStore};

const KEYS: usize = 100_000;

fn build_snapshot(dir: &Path) -> (std::path::PathBuf, Vec<String>) {
    let path = dir.join("bench.db");
    let conn = schema::init(&path).unwrap();
    conn.execute_batch("BEGIN; INSERT INTO organizations (id, plan) VALUES ('org_1', 'free'); INSERT INTO workspaces (id, organization_id) VALUES ('ws_1', 'org_1');").unwrap();
    let mut keys = Vec::with_capacity(KEYS);
    {
        let mut stmt = conn.prepare("INSERT INTO api_keys (id, organization_id, key_hash, key_prefix) VALUES (?1, 'org_1', ?2, ?3)").unwrap();
        for i in 0..KEYS {
            let key = format!("wvz_bench_{i:032}");
            stmt.execute(rusqlite::params![
                format!("key_{i}"),
                schema::token_hash_hex(key.as_bytes()),
                &key[..8]
            ])
            .unwrap();
            keys.push(key);
        }
    }
    conn.execute_batch("COMMIT").unwrap();
    // SPEC §6.1 columns (an older keyward reads the file as before): key 7
    // has its own window and an IP allow-list, the others none
    conn.execute_batch(
        "ALTER TABLE api_keys ADD COLUMN rate_limit INTEGER;
         ALTER TABLE api_keys ADD COLUMN allowed_ips TEXT;
         UPDATE api_keys SET rate_limit = 1000000000, allowed_ips = '[\"10.0.0.0/8\",\"127.0.0.0/8\"]' WHERE id = 'key_7';",
    )
    .unwrap();
    (path, keys)
}

fn engine(path: &Path, capacity: u64) -> Arc<Engine> {
    let text = format!(
        "{}\n",
        keyward::demo::SHIPPED_CONFIG
            .replace("capacity = 100000", &format!("capacity = {capacity}"))
            .replace(
                "requests_per_window = 60\n[plans.pro]",
                "requests_per_window = 1000000000\n[plans.pro]"
            )
    );
    let mut cfg = Config::from_toml_str(&text, Path::new("/")).unwrap();
    // never limited: every iteration is the forwarded path (a text replace
    // of the shipped plan stopped matching once a comment was added there,
    // and the bench measured 429s after the first 60 requests)
    for plan in cfg.plans.values_mut() {
        plan.requests_per_window = 1_000_000_000;
    }
    cfg.snapshot.path = path.to_path_buf();
    let store = SnapshotStore::new(path);
    store.reload().unwrap();
    Engine::new(cfg, store, Metrics::new())
}

fn bearer(key: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
    );
    headers
}

/// The decision as the shell makes it (pin the policy and snapshot, then
/// decide); the header map is built once, outside the loop.
fn decide(engine: &Engine, headers: &HeaderMap, path: &str) -> bool {
    // (forwarded, as the assertions before each bench check)
    let facts = RequestFacts {
        method: &Method::GET,
        path,
        query: None,
        headers,
        client: keyward::forwarding::Client::resolve(
            IpAddr::from([127, 0, 0, 1]),
            false,
            headers,
            &[],
        ),
    };
    let pinned = engine.pin();
    matches!(
        pinned.decide(&facts, keyward::clock::now_unix()),
        Decision::Forward(_)
    )
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (path, keys) = build_snapshot(dir.path());

    let cached = engine(&path, 100_000);
    let hv = bearer(&keys[42]);
    assert!(decide(&cached, &hv, "/api/v1/workspaces/ws_1/connections"));
    c.bench_function("decision/cached_api_key_scope_route", |b| {
        b.iter(|| {
            black_box(decide(
                &cached,
                &hv,
                black_box("/api/v1/workspaces/ws_1/connections"),
            ))
        })
    });

    // the same with the key's own window and allowed_ips (SPEC §6.1)
    let hv_policy = bearer(&keys[7]);
    assert!(decide(
        &cached,
        &hv_policy,
        "/api/v1/workspaces/ws_1/connections"
    ));
    c.bench_function("decision/cached_api_key_own_window_allowed_ips", |b| {
        b.iter(|| {
            black_box(decide(
                &cached,
                &hv_policy,
                black_box("/api/v1/workspaces/ws_1/connections"),
            ))
        })
    });

    // A cache of one entry: cycling over many keys makes every lookup a miss.
    let missing = engine(&path, 1);
    let headers: Vec<HeaderMap> = keys.iter().step_by(97).map(|k| bearer(k)).collect();
    let mut i = 0usize;
    c.bench_function("decision/cache_miss_sqlite_100k_keys", |b| {
        b.iter(|| {
            i = (i + 1) % headers.len();
            missing.verdicts.current().invalidate_all();
            black_box(decide(
                &missing,
                &headers[i],
                "/api/v1/workspaces/ws_1/connections",
            ))
        })
    });

    let cfg = Config::from_toml_str(keyward::demo::SHIPPED_CONFIG, Path::new("/")).unwrap();
    let routes = cfg.routes;
    for (name, p) in [
        ("first", "/api/auth/sign-in"),
        ("workspace", "/api/v1/workspaces/ws_1/connections"),
        ("last_mcp", "/mcp/srv_1/sse"),
        ("unmatched", "/api/v1/nothing/here/at/all"),
    ] {
        c.bench_function(&format!("routes/match_{name}"), |b| {
            b.iter(|| black_box(routes.find(&Method::GET, black_box(p)).0.index))
        });
    }
    c.bench_function("routes/normalize_clean_path", |b| {
        b.iter(|| {
            black_box(
                keyward::routes::normalize(black_box("/api/v1/workspaces/ws_1/connections"))
                    .is_ok(),
            )
        })
    });
}

/// One admission on each limiter backend (the Redis one against a real
/// redis-server on a free port, when `redis-server` is installed).
fn limiters(c: &mut Criterion) {
    use keyward::ratelimit::{Limiter, LocalLimiter, RedisLimiter};
    let now = keyward::clock::now_unix();
    let local = LocalLimiter::new(60);
    c.bench_function("limiter/local_admit", |b| {
        b.iter(|| black_box(local.admit(black_box("org_1"), u64::MAX >> 33, now)))
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let Ok(mut server) = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
    else {
        eprintln!("redis-server not installed: skipping limiter/redis_admit");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let cfg = keyward::config::RedisConfig {
        topology: keyward::config::RedisTopology::Single {
            url: format!("redis://127.0.0.1:{port}/0"),
        },
        ca_file: None,
        timeout: std::time::Duration::from_millis(50),
        expected_replicas: 1,
        batch: 64,
        sync_interval: std::time::Duration::from_millis(10),
    };
    let gauge = prometheus::IntGauge::new("up", "up").unwrap();
    let redis = RedisLimiter::start(&cfg, 60, rt.handle(), gauge).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !redis.status().up && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if redis.status().up {
        // Admissions include the transient 429s when one batch outruns a
        // round trip; both are the per-request cost of the shared path.
        c.bench_function("limiter/redis_admit", |b| {
            b.iter(|| black_box(redis.admit(black_box("org_1"), u64::MAX >> 33, now)))
        });
    }
    let _ = server.kill();
    let _ = server.wait();
}

criterion_group! {
    name = decision;
    config = Criterion::default().sample_size(50).measurement_time(std::time::Duration::from_secs(3));
    targets = benches, limiters
}
criterion_main!(decision);
