//! `keyward sync` (SPEC §9) against a real PostgreSQL started per test, with
//! BetterAuth's own tables as its migrations create them (better-auth 1.4:
//! quoted camelCase columns, timestamptz), and a real keyward reading the
//! snapshot sync writes.
mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use base64::Engine as _;
use common::postgres::Postgres;
use common::*;
use sha2::Digest;

/// BetterAuth's tables (tests/common/postgres.rs) with two users, each the
/// owner of an organization.
static BETTERAUTH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| [common::postgres::BETTERAUTH_TABLES, BETTERAUTH_ROWS].concat());
const BETTERAUTH_ROWS: &str = r#"
INSERT INTO "user" VALUES ('u_1', 'Ada', 'ada@example.test', true, NULL, now(), now());
INSERT INTO "user" VALUES ('u_2', 'Bob', 'bob@example.test', true, NULL, now(), now());
INSERT INTO "organization" VALUES ('org_1', 'Acme', 'acme', NULL, now(), NULL);
INSERT INTO "organization" VALUES ('org_2', 'Other', 'other', NULL, now(), NULL);
INSERT INTO "member" VALUES ('m_1', 'org_1', 'u_1', 'owner', now());
INSERT INTO "member" VALUES ('m_2', 'org_2', 'u_2', 'owner', now());
"#;

/// BetterAuth's default api-key hasher: base64url(sha256(key)), no padding.
fn betterauth_key_hash(key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(key.as_bytes()))
}

/// An api key for `user`, its metadata naming `org` (or raw `metadata`).
fn add_key(pg: &Postgres, id: &str, user: &str, metadata: &str) -> String {
    let key = format!("wvz_{id}{}", "k".repeat(40));
    pg.sql(&format!(
        "INSERT INTO apikey (id, name, start, prefix, key, \"userId\", enabled, \"rateLimitEnabled\", \
         \"rateLimitTimeWindow\", \"rateLimitMax\", \"createdAt\", \"updatedAt\", metadata) \
         VALUES ('{id}', 'k', '{start}', 'wvz_', '{hash}', '{user}', true, true, 86400000, 10, now(), now(), '{metadata}')",
        start = &key[..6],
        hash = betterauth_key_hash(&key),
    ));
    key
}

fn add_session(pg: &Postgres, id: &str, user: &str, org: Option<&str>) -> String {
    let token = format!("tok{id}{}", "t".repeat(26));
    let org = org.map_or("NULL".to_string(), |o| format!("'{o}'"));
    pg.sql(&format!(
        "INSERT INTO session (id, \"expiresAt\", token, \"updatedAt\", \"userId\", \"activeOrganizationId\") \
         VALUES ('{id}', now() + interval '1 day', '{token}', now(), '{user}', {org})"
    ));
    keyward::credentials::signed_cookie_value(&token, &keyward::config::Secret::new(SECRET))
}

/// The sync config for `pg`, writing `snap`'s path.
fn sync_config(_pg: &Postgres, snap: &Snap, mode: &str, extra: &str) -> std::path::PathBuf {
    let admin = free_port();
    let path = snap.dir.path().join("sync.toml");
    std::fs::write(
        &path,
        format!(
            "[source]\nurl_env = \"KW_TEST_DATABASE_URL\"\npreset = \"betterauth\"\n{extra}\n\
             [output]\npath = \"{}\"\n[follow]\nmode = \"{mode}\"\ninterval_ms = 200\n\
             [sync]\nadmin_listen = \"{admin}\"\n",
            snap.path.display()
        ),
    )
    .unwrap();
    path
}

fn sync_cmd(pg: &Postgres, args: &[&str]) -> std::process::Command {
    let mut c = keyward_cmd();
    c.arg("sync")
        .args(args)
        .env("KW_TEST_DATABASE_URL", pg.url());
    c
}

fn sync_once(pg: &Postgres, config: &std::path::Path) -> std::process::Output {
    sync_cmd(pg, &["--once", "--config", config.to_str().unwrap()])
        .output()
        .unwrap()
}

/// A following `keyward sync`, killed on drop.
struct Sync {
    child: Child,
    log: std::path::PathBuf,
}

impl Sync {
    fn start(pg: &Postgres, config: &std::path::Path) -> Sync {
        let log = config.with_extension(format!("{}.log", rand_suffix()));
        let f = std::fs::File::create(&log).unwrap();
        let child = sync_cmd(pg, &["--config", config.to_str().unwrap()])
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Sync { child, log }
    }
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sync {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keyward_on(snap: &Snap) -> Keyward {
    Keyward::start(
        snap,
        Opts::new(echo()).set("plans.default.requests_per_window", 1_000_000),
    )
}

fn cookie(v: &str) -> String {
    format!("better-auth.session_token={v}")
}

const PATIENCE: Duration = Duration::from_secs(10);

#[test]
fn a_full_build_maps_betterauth_keys_sessions_and_organizations() {
    let pg = Postgres::start();
    pg.sql(&BETTERAUTH);
    let key = add_key(&pg, "a1", "u_1", r#"{"organizationId":"org_1"}"#);
    // names an organization its user is not a member of: left out
    let foreign = add_key(&pg, "a2", "u_1", r#"{"organizationId":"org_2"}"#);
    // no metadata, malformed metadata, nested organizationId: left out
    let bare = add_key(&pg, "a3", "u_1", "");
    let broken = add_key(&pg, "a4", "u_1", "{not json");
    let nested = add_key(&pg, "a5", "u_2", r#"{"x":{"organizationId":"org_2"}}"#);
    let session = add_session(&pg, "s1", "u_1", Some("org_1"));
    // a BetterAuth rate limit over keyward's window (60 s): the key's own
    // §6.1 limit; add_key's (a day) does not match and is left out
    let limited = add_key(&pg, "a6", "u_1", r#"{"organizationId":"org_1"}"#);
    pg.sql(
        "UPDATE apikey SET \"rateLimitTimeWindow\" = 60000, \"rateLimitMax\" = 2 WHERE id = 'a6'",
    );
    let snap = Snap::new();
    let config = sync_config(&pg, &snap, "off", "");
    let out = sync_once(&pg, &config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conn = snap.conn();
    let hash: String = conn
        .query_row("SELECT key_hash FROM api_keys WHERE id = 'a1'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(hash, hash_hex(&key), "base64url converted to sha256 hex");
    let tokens: Vec<String> = conn
        .prepare("SELECT token_hash FROM sessions")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].len(), 64, "the session token is stored hashed");
    let plan: String = conn
        .query_row(
            "SELECT plan FROM organizations WHERE id = 'org_1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(plan, "default");
    let kw = keyward_on(&snap);
    let r = kw.get("/api/v1/x", Some(&key));
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert!(r.body_str().contains("org_1"), "{}", r.body_str());
    for (what, k) in [
        ("not a member", &foreign),
        ("no metadata", &bare),
        ("malformed metadata", &broken),
        ("nested organizationId", &nested),
    ] {
        assert_eq!(kw.get("/api/v1/x", Some(k)).status, 401, "{what}");
    }
    let r = kw.request("GET", "/api/v1/x", &[("Cookie", &cookie(&session))], "");
    assert_eq!(r.status, 200, "{}", r.body_str());
    let rate_limits: Vec<Option<i64>> = conn
        .prepare("SELECT rate_limit FROM api_keys WHERE id IN ('a1', 'a6') ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rate_limits, [None, Some(2)]);
    for _ in 0..2 {
        assert_eq!(kw.get("/api/v1/x", Some(&limited)).status, 200);
    }
    let r = kw.get("/api/v1/x", Some(&limited));
    r.assert_error(429, "RATE_LIMIT_EXCEEDED");
    assert_eq!(r.json()["details"]["limit"], "key");
    // no snapshot ever holds a usable token
    let bytes = std::fs::read(&snap.path).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains(&key) && !text.contains("toks1"));
}

fn hash_hex(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

#[test]
fn a_failed_query_keeps_the_last_good_snapshot_and_says_why() {
    let pg = Postgres::start();
    pg.sql(&BETTERAUTH);
    let key = add_key(&pg, "b1", "u_1", r#"{"organizationId":"org_1"}"#);
    let snap = Snap::new();
    let config = sync_config(&pg, &snap, "off", "");
    assert!(sync_once(&pg, &config).status.success());
    let before = std::fs::read(&snap.path).unwrap();
    let bad = sync_config(
        &pg,
        &snap,
        "off",
        "[tables.workspaces]\nquery = \"SELECT id, organization_id FROM no_such_table\"",
    );
    let out = sync_once(&pg, &bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tables.workspaces") && err.contains("no_such_table"),
        "{err}"
    );
    assert!(
        !err.contains("postgres://"),
        "the URL is never printed: {err}"
    );
    assert_eq!(std::fs::read(&snap.path).unwrap(), before, "last good kept");
    let kw = keyward_on(&snap);
    assert_eq!(kw.get("/api/v1/x", Some(&key)).status, 200);
}

#[test]
fn a_column_the_snapshot_lacks_is_a_clear_error() {
    let pg = Postgres::start();
    pg.sql(&BETTERAUTH);
    let snap = Snap::new();
    let bad = sync_config(
        &pg,
        &snap,
        "off",
        "[tables.workspaces]\nquery = \"SELECT 'ws_1' AS id, 'org_1' AS organization_id, 1 AS colour\"",
    );
    let out = sync_once(&pg, &bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`colour`"), "{err}");
}

fn wait_status(kw: &Keyward, key: &str, status: u16) -> bool {
    wait_until(PATIENCE, || kw.get("/api/v1/x", Some(key)).status == status)
}

fn changes(snap: &Snap) -> i64 {
    snap.conn()
        .query_row("SELECT count(*) FROM changes", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn outbox_follows_revocations_in_place_and_survives_restarts() {
    let mut pg = Postgres::start();
    pg.sql(&BETTERAUTH);
    let k1 = add_key(&pg, "c1", "u_1", r#"{"organizationId":"org_1"}"#);
    let k2 = add_key(&pg, "c2", "u_1", r#"{"organizationId":"org_1"}"#);
    let snap = Snap::new();
    let config = sync_config(&pg, &snap, "outbox", "");
    let printed = sync_cmd(
        &pg,
        &["install", "--print", "--config", config.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert!(String::from_utf8_lossy(&printed.stdout)
        .contains("CREATE TABLE IF NOT EXISTS keyward_outbox"));
    install(&pg, &config);
    let sync = Sync::start(&pg, &config);
    assert!(
        wait_until(PATIENCE, || api_key_rows(&snap) == 2),
        "{}",
        sync.log()
    );
    let kw = keyward_on(&snap);
    assert_eq!(kw.get("/api/v1/x", Some(&k1)).status, 200);
    let inode = ino(&snap);
    // a revocation committed in Postgres is enforced, in place, with a changes row
    pg.sql("UPDATE apikey SET enabled = false, \"updatedAt\" = now() WHERE id = 'c1'");
    assert!(wait_status(&kw, &k1, 401), "{}", sync.log());
    assert_eq!(kw.get("/api/v1/x", Some(&k2)).status, 200);
    assert_eq!(ino(&snap), inode, "written in place, not rebuilt");
    assert!(changes(&snap) >= 1);
    // sync restarts; a change made while it was down is not lost
    drop(sync);
    pg.sql("DELETE FROM apikey WHERE id = 'c2'");
    let new_key = add_key(&pg, "c3", "u_1", r#"{"organizationId":"org_1"}"#);
    let sync = Sync::start(&pg, &config);
    assert!(wait_status(&kw, &k2, 401), "{}", sync.log());
    assert!(wait_status(&kw, &new_key, 200), "{}", sync.log());
    assert_eq!(ino(&snap), inode, "resumed from its position, no rebuild");
    // Postgres restarts; sync reconnects and follows on
    pg.stop();
    pg.run();
    pg.sql("UPDATE apikey SET enabled = false, \"updatedAt\" = now() WHERE id = 'c3'");
    assert!(wait_status(&kw, &new_key, 401), "{}", sync.log());
    // a membership change re-reads the key table: u_1 leaves org_1
    let k4 = add_key(&pg, "c4", "u_1", r#"{"organizationId":"org_1"}"#);
    assert!(wait_status(&kw, &k4, 200), "{}", sync.log());
    pg.sql("DELETE FROM member WHERE id = 'm_1'");
    assert!(wait_status(&kw, &k4, 401), "{}", sync.log());
    let metrics = sync_metrics(&config);
    assert!(metrics.contains("keyward_sync_source_up 1"), "{metrics}");
    assert!(
        metrics.contains("keyward_sync_changes_applied_total"),
        "{metrics}"
    );
}

fn ino(snap: &Snap) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(&snap.path).unwrap().ino()
}

/// `[sync] admin_listen` of a sync config written by [`sync_config`].
fn sync_admin(config: &std::path::Path) -> std::net::SocketAddr {
    std::fs::read_to_string(config)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("admin_listen = "))
        .unwrap()
        .trim_matches('"')
        .parse()
        .unwrap()
}

fn sync_metrics(config: &std::path::Path) -> String {
    get(sync_admin(config), "/metrics").body_str()
}

/// `keyward sync install`: it must succeed.
fn install(pg: &Postgres, config: &std::path::Path) {
    let out = sync_cmd(pg, &["install", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn api_key_rows(snap: &Snap) -> i64 {
    snap.conn()
        .query_row("SELECT count(*) FROM api_keys", [], |r| r.get(0))
        .unwrap_or(0)
}

#[test]
fn poll_mode_writes_the_difference() {
    let pg = Postgres::start();
    pg.sql(&BETTERAUTH);
    let key = add_key(&pg, "d1", "u_1", r#"{"organizationId":"org_1"}"#);
    let snap = Snap::new();
    let config = sync_config(&pg, &snap, "poll", "");
    let sync = Sync::start(&pg, &config);
    assert!(
        wait_until(PATIENCE, || api_key_rows(&snap) == 1),
        "{}",
        sync.log()
    );
    let kw = keyward_on(&snap);
    assert_eq!(kw.get("/api/v1/x", Some(&key)).status, 200);
    let inode = ino(&snap);
    pg.sql("DELETE FROM apikey WHERE id = 'd1'");
    assert!(wait_status(&kw, &key, 401), "{}", sync.log());
    assert_eq!(ino(&snap), inode);
    assert!(changes(&snap) >= 1);
}

#[test]
fn readyz_turns_503_while_the_source_is_unreachable_and_custom_tables_follow() {
    let mut pg = Postgres::start();
    pg.sql(&BETTERAUTH);
    pg.sql(
        "CREATE TABLE app_workspaces (id text PRIMARY KEY, org text NOT NULL);
         INSERT INTO app_workspaces VALUES ('ws_1', 'org_1');
         CREATE TABLE app_service_keys (id text PRIMARY KEY, digest text NOT NULL, revoked boolean NOT NULL DEFAULT false);",
    );
    let service = "svc_secret_value_0123456789";
    pg.sql(&format!(
        "INSERT INTO app_service_keys VALUES ('sk_1', '{}', false)",
        hash_hex(service)
    ));
    let snap = Snap::new();
    let config = sync_config(
        &pg,
        &snap,
        "outbox",
        "[tables.workspaces]\nquery = \"SELECT id, org AS organization_id FROM app_workspaces\"\nwatch = [\"app_workspaces\"]\n\
         [tables.service_keys]\nquery = \"SELECT id, digest AS key_hash, CASE WHEN revoked THEN extract(epoch FROM now())::bigint END AS revoked_at FROM app_service_keys\"\nhash = \"hex\"\nwatch = [\"app_service_keys\"]",
    );
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("max_staleness_s = 1\n");
    std::fs::write(&config, text).unwrap();
    install(&pg, &config);
    let sync = Sync::start(&pg, &config);
    let readyz = || {
        let admin = sync_admin(&config);
        if std::net::TcpStream::connect(admin).is_err() {
            return 0; // not listening yet
        }
        get(admin, "/readyz").status
    };
    assert!(wait_until(PATIENCE, || readyz() == 200), "{}", sync.log());
    let kw = keyward_on(&snap);
    let svc = |kw: &Keyward| {
        kw.request("GET", "/api/v1/x", &[("X-Service-Key", service)], "")
            .status
    };
    assert_eq!(svc(&kw), 200);
    pg.sql("UPDATE app_service_keys SET revoked = true WHERE id = 'sk_1'");
    assert!(wait_until(PATIENCE, || svc(&kw) == 401), "{}", sync.log());
    pg.sql("INSERT INTO app_workspaces VALUES ('ws_2', 'org_2')");
    assert!(
        wait_until(PATIENCE, || snap
            .conn()
            .query_row(
                "SELECT count(*) FROM workspaces WHERE id = 'ws_2'",
                [],
                |r| r.get::<_, i64>(0)
            )
            .unwrap_or(0)
            == 1),
        "{}",
        sync.log()
    );
    pg.stop();
    assert!(wait_until(PATIENCE, || readyz() == 503), "{}", sync.log());
    // keyward keeps serving the last snapshot meanwhile
    assert_eq!(svc(&kw), 401);
    pg.run();
    assert!(
        wait_until(Duration::from_secs(20), || readyz() == 200),
        "{}",
        sync.log()
    );
}

/// A new Ed25519 key pair: (private PKCS#8 PEM path, public key base64).
fn key_pair(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    use ring::signature::KeyPair;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let path = dir.join("sync-sign.pem");
    let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
    std::fs::write(
        &path,
        format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n"),
    )
    .unwrap();
    (
        path,
        base64::engine::general_purpose::STANDARD.encode(pair.public_key().as_ref()),
    )
}

#[test]
fn uploads_signed_versions_a_fleet_keyward_fetches_and_verifies() {
    use common::moto::*;
    let moto = start_moto();
    // the bucket must exist: put a placeholder with boto3
    let pg = Postgres::start();
    pg.sql(&BETTERAUTH);
    let key = add_key(&pg, "e1", "u_1", r#"{"organizationId":"org_1"}"#);
    let work = tempfile::tempdir().unwrap();
    s3_put(&moto, "snapshots", "placeholder", b"x", work.path());
    let (private, public) = key_pair(work.path());
    let admin = free_port();
    let config = work.path().join("sync.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nurl_env = \"KW_TEST_DATABASE_URL\"\npreset = \"betterauth\"\n\
             [output]\nupload = \"s3://snapshots/prod/snapshot.db\"\nsign_key = \"{}\"\n\
             [follow]\nmode = \"outbox\"\ninterval_ms = 200\n[sync]\nadmin_listen = \"{admin}\"\n",
            private.display()
        ),
    )
    .unwrap();
    let env: Vec<(String, String)> = S3_ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain([
            ("AWS_ENDPOINT".to_string(), moto.endpoint.clone()),
            ("AWS_ALLOW_HTTP".to_string(), "true".to_string()),
        ])
        .collect();
    install(&pg, &config);
    let log = work.path().join("sync.log");
    let f = std::fs::File::create(&log).unwrap();
    let mut child = sync_cmd(&pg, &["--config", config.to_str().unwrap()])
        .envs(env.clone())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    let sync_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let snap = Snap::new();
    let mut opts = Opts::new(echo())
        .set("plans.default.requests_per_window", 1_000_000)
        .set("snapshot.source", "s3://snapshots/prod/snapshot.db")
        .set("snapshot.verify_key", public.as_str());
    opts.env.extend(env);
    opts.wait_ready = false;
    let kw = Keyward::start(&snap, opts);
    let ok = wait_until(Duration::from_secs(20), || {
        kw.get("/api/v1/x", Some(&key)).status == 200
    });
    let served = ok && {
        // a revocation in Postgres reaches the fleet through a new signed upload
        pg.sql("UPDATE apikey SET enabled = false, \"updatedAt\" = now() WHERE id = 'e1'");
        wait_until(Duration::from_secs(20), || {
            kw.get("/api/v1/x", Some(&key)).status == 401
        })
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "sync: {}\nkeyward: {}", sync_log(), kw.log());
    assert!(served, "sync: {}\nkeyward: {}", sync_log(), kw.log());
}
