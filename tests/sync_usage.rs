//! The usage receiver of `keyward sync` (SPEC §8.4): pushes as keyward
//! sends them, written back to a real PostgreSQL started per test
//! (BetterAuth's `apikey` through the preset, or a custom UPDATE), sent
//! with the raw HTTP/1.1 client of tests/common.
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::postgres::Postgres;
use common::*;

/// BetterAuth's tables (tests/common/postgres.rs: better-auth 1.4,
/// timestamptz) with one user, organization and key.
static BETTERAUTH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| [common::postgres::BETTERAUTH_TABLES, BETTERAUTH_ROWS].concat());
const BETTERAUTH_ROWS: &str = r#"
INSERT INTO "user" VALUES ('u_1', 'Ada', 'ada@example.test', true, NULL, now(), now());
INSERT INTO "organization" VALUES ('org_1', 'Acme', 'acme', NULL, now(), NULL);
INSERT INTO "member" VALUES ('m_1', 'org_1', 'u_1', 'owner', now());
INSERT INTO "apikey" (id, key, "userId", enabled, "createdAt", "updatedAt", metadata)
  VALUES ('key_1', 'x', 'u_1', true, now(), '2020-01-01T00:00:00Z', '{"organizationId":"org_1"}');
"#;

const TOKEN: &str = "usage-push-token-0123456789abcdef";
const TOKEN_ENV: &str = "KW_TEST_USAGE_TOKEN";
const PATIENCE: Duration = Duration::from_secs(10);

/// A following `keyward sync` with `[usage]`, killed on drop.
struct Sync {
    child: Child,
    log: PathBuf,
    usage: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Sync {
    /// `source` and `usage` are the bodies of those tables (after `url_env`
    /// and `listen`); `extra` is appended to the file.
    fn start(pg: &Postgres, source: &str, usage: &str, extra: &str) -> Sync {
        let dir = tempfile::tempdir().unwrap();
        let (admin, listen) = (free_port(), free_port());
        let config = dir.path().join("sync.toml");
        std::fs::write(
            &config,
            format!(
                "[source]\nurl_env = \"KW_TEST_DATABASE_URL\"\n{source}\n\
                 [output]\npath = \"{}\"\n[follow]\nmode = \"poll\"\ninterval_ms = 1000\n\
                 [sync]\nadmin_listen = \"{admin}\"\n[usage]\nlisten = \"{listen}\"\n{usage}\n{extra}\n",
                dir.path().join("snapshot.db").display()
            ),
        )
        .unwrap();
        let log = dir.path().join("sync.log");
        let f = std::fs::File::create(&log).unwrap();
        let child = keyward_cmd()
            .args(["sync", "--config", config.to_str().unwrap()])
            .env("KW_TEST_DATABASE_URL", pg.url())
            .env(TOKEN_ENV, TOKEN)
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut sync = Sync {
            child,
            log,
            usage: listen,
            admin,
            _dir: dir,
        };
        let up = wait_until(PATIENCE, || {
            TcpStream::connect(listen).is_ok() || sync.child.try_wait().unwrap().is_some()
        });
        assert!(
            up && sync.child.try_wait().unwrap().is_none(),
            "{}",
            sync.log()
        );
        sync
    }

    /// With the preset and a bearer token.
    fn betterauth(pg: &Postgres) -> Sync {
        Sync::start(
            pg,
            "preset = \"betterauth\"",
            &format!("token_env = \"{TOKEN_ENV}\""),
            "",
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn metrics(&self) -> String {
        get(self.admin, "/metrics").body_str()
    }

    fn metric(&self, line_start: &str) -> f64 {
        let m = self.metrics();
        m.lines()
            .find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{line_start} not in {m}"))
            .parse()
            .unwrap()
    }

    /// A push with `token` (if any) and `content_type` (if any).
    fn send(&self, token: Option<&str>, content_type: Option<&str>, body: &str) -> Resp {
        let mut lines = String::new();
        if let Some(t) = token {
            lines.push_str(&bearer(t));
        }
        if let Some(c) = content_type {
            lines.push_str(&format!("Content-Type: {c}\r\n"));
        }
        send_bytes(
            self.usage,
            "POST",
            "/v1/usage",
            lines.as_bytes(),
            Some(body.as_bytes()),
        )
    }

    fn push(&self, body: &str) -> Resp {
        self.send(Some(TOKEN), Some("application/json"), body)
    }
}

impl Drop for Sync {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A push body for `keys`: (id, kind, forwarded, denied, last_used).
fn body(keys: &[(&str, &str, u64, u64, i64)]) -> String {
    let keys: Vec<serde_json::Value> = keys
        .iter()
        .map(|(id, kind, f, d, at)| {
            serde_json::json!({"id": id, "kind": kind, "organization_id": "org_1",
                "forwarded": f, "denied": d, "last_used": at})
        })
        .collect();
    serde_json::json!({"replica": "host-a", "interval": [1700000000, 1700000010], "keys": keys})
        .to_string()
}

/// `requestCount|lastRequest (unix)` of an apikey row.
fn apikey(pg: &Postgres, id: &str) -> String {
    pg.sql(&format!(
        "SELECT \"requestCount\", floor(extract(epoch FROM \"lastRequest\"))::bigint \
         FROM apikey WHERE id = '{id}'"
    ))
}

#[test]
fn pushes_are_written_back_to_betterauths_apikey_and_add_up() {
    let pg = Postgres::start();
    pg.sql(&BETTERAUTH);
    let sync = Sync::betterauth(&pg);
    assert_eq!(apikey(&pg, "key_1"), "|", "never used yet");
    // two entries for one key are merged; an unknown key and an MCP token
    // (the preset has no SQL for them) are accepted and ignored
    let r = sync.push(&body(&[
        ("key_1", "api_key", 3, 1, 1700000005),
        ("key_1", "api_key", 2, 1, 1700000009),
        ("key_gone", "api_key", 1, 0, 1700000009),
        ("tok_1", "mcp_token", 1, 0, 1700000009),
    ]));
    assert_eq!(r.status, 200, "{}\n{}", r.body_str(), sync.log());
    assert_eq!(r.json(), serde_json::json!({"written": 1, "ignored": 2}));
    assert_eq!(apikey(&pg, "key_1"), "5|1700000009");
    // a second push adds up; its older last_used does not move lastRequest back
    let r = sync.push(&body(&[("key_1", "api_key", 4, 7, 1700000001)]));
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(
        apikey(&pg, "key_1"),
        "9|1700000009",
        "denied requests are not added"
    );
    let r = sync.push(&body(&[("key_1", "api_key", 1, 0, 1700000100)]));
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(apikey(&pg, "key_1"), "10|1700000100");
    // updatedAt is left alone
    assert_eq!(
        pg.sql("SELECT floor(extract(epoch FROM \"updatedAt\"))::bigint FROM apikey WHERE id = 'key_1'"),
        "1577836800"
    );
    // an empty push is fine
    let r = sync.push(&body(&[]));
    assert_eq!(r.json(), serde_json::json!({"written": 0, "ignored": 0}));
    assert_eq!(
        sync.metric("keyward_sync_usage_pushes_total{result=\"ok\"}"),
        4.0
    );
    assert_eq!(sync.metric("keyward_sync_usage_keys_written_total"), 3.0);
    assert_eq!(sync.metric("keyward_sync_usage_keys_ignored_total"), 2.0);
}

#[test]
fn a_wrong_or_missing_token_is_401_and_nothing_is_written() {
    let pg = Postgres::start();
    pg.sql(&BETTERAUTH);
    let sync = Sync::betterauth(&pg);
    let push = body(&[("key_1", "api_key", 5, 0, 1700000009)]);
    for (what, token) in [
        ("missing", None),
        ("wrong", Some("usage-push-token-0123456789abcdeX")),
        ("a prefix", Some(&TOKEN[..10])),
        ("empty", Some("")),
    ] {
        let r = sync.send(token, Some("application/json"), &push);
        r.assert_error(401, "UNAUTHENTICATED");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{what}");
    }
    // another scheme
    let r = send_bytes(
        sync.usage,
        "POST",
        "/v1/usage",
        format!("Authorization: Basic {TOKEN}\r\nContent-Type: application/json\r\n").as_bytes(),
        Some(push.as_bytes()),
    );
    r.assert_error(401, "UNAUTHENTICATED");
    assert_eq!(apikey(&pg, "key_1"), "|", "nothing written");
    assert_eq!(
        sync.metric("keyward_sync_usage_pushes_total{result=\"unauthorized\"}"),
        5.0
    );
    // the scheme is case-insensitive
    let r = sync.send(Some(TOKEN), Some("application/json"), &push);
    assert_eq!(r.status, 200, "{}", r.body_str());
    let r = send_bytes(
        sync.usage,
        "POST",
        "/v1/usage",
        format!("authorization: bearer {TOKEN}\r\nContent-Type: application/json\r\n").as_bytes(),
        Some(push.as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(apikey(&pg, "key_1"), "10|1700000009");
    assert!(!sync.log().contains(TOKEN), "the token is never logged");
}

/// A chunked body of `total` bytes, written by a thread while the answer
/// is read (the receiver answers 413 before reading it all).
fn post_chunked(addr: SocketAddr, total: usize) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let head = format!(
            "POST /v1/usage HTTP/1.1\r\nHost: kw.test\r\n{}Content-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            bearer(TOKEN)
        );
        w.write_all(head.as_bytes())?;
        let chunk = vec![b' '; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            w.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())?;
            w.write_all(&chunk)?;
            w.write_all(b"\r\n")?;
            sent += chunk.len();
        }
        w.write_all(b"0\r\n\r\n")
    });
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let _ = writer.join();
    parse_response(&buf)
}

#[test]
fn malformed_pushes_get_keywards_error_contract() {
    let pg = Postgres::start();
    pg.sql(&BETTERAUTH);
    let sync = Sync::betterauth(&pg);
    let good = body(&[("key_1", "api_key", 5, 0, 1700000009)]);
    let variant = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
        f(&mut v);
        v.to_string()
    };
    // not JSON, or not the shape: 400
    let bad_counts = variant(&|v| v["keys"][0]["forwarded"] = (-5).into());
    let no_org = variant(&|v| {
        v["keys"][0]
            .as_object_mut()
            .unwrap()
            .remove("organization_id");
    });
    let text_count = variant(&|v| v["keys"][0]["forwarded"] = "5".into());
    let bad_kind = variant(&|v| v["keys"][0]["kind"] = 1.into());
    for (what, b) in [
        ("not JSON", "{\"replica\": "),
        ("an array", "[]"),
        ("no keys", r#"{"replica": "host-a", "interval": [1, 2]}"#),
        ("a negative count", bad_counts.as_str()),
        ("no organization_id", no_org.as_str()),
        ("a count as text", text_count.as_str()),
        ("a kind that is no string", bad_kind.as_str()),
    ] {
        let r = sync.push(b);
        r.assert_error(400, "BAD_REQUEST");
        assert!(!r.json()["error"].as_str().unwrap().is_empty(), "{what}");
    }
    // not application/json: 415
    for ctype in [None, Some("text/plain"), Some("application/jsonx")] {
        sync.send(Some(TOKEN), ctype, &good)
            .assert_error(415, "UNSUPPORTED_MEDIA_TYPE");
    }
    let gz = send_bytes(
        sync.usage,
        "POST",
        "/v1/usage",
        format!(
            "{}Content-Type: application/json\r\nContent-Encoding: gzip\r\n",
            bearer(TOKEN)
        )
        .as_bytes(),
        Some(good.as_bytes()),
    );
    gz.assert_error(415, "UNSUPPORTED_MEDIA_TYPE");
    // past 8 MiB: 413, whether declared or streamed
    let declared = raw_bytes(
        sync.usage,
        format!(
            "POST /v1/usage HTTP/1.1\r\nHost: kw.test\r\n{}Content-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            bearer(TOKEN),
            8 * 1024 * 1024 + 1
        )
        .as_bytes(),
    );
    declared.assert_error(413, "PAYLOAD_TOO_LARGE");
    post_chunked(sync.usage, 8 * 1024 * 1024 + 64 * 1024).assert_error(413, "PAYLOAD_TOO_LARGE");
    // a body of exactly the cap is read
    let mut padded = good.clone();
    padded.push_str(&" ".repeat(8 * 1024 * 1024 - padded.len()));
    let r = sync.push(&padded);
    assert_eq!(r.status, 200, "{}", r.body_str());
    // other methods, other paths
    let r = send_bytes(
        sync.usage,
        "GET",
        "/v1/usage",
        bearer(TOKEN).as_bytes(),
        None,
    );
    r.assert_error(405, "METHOD_NOT_ALLOWED");
    assert_eq!(r.header("allow"), Some("POST"));
    let r = send_bytes(
        sync.usage,
        "POST",
        "/v1/other",
        bearer(TOKEN).as_bytes(),
        Some(b"{}"),
    );
    r.assert_error(404, "NOT_FOUND");
    assert_eq!(apikey(&pg, "key_1"), "5|1700000009", "only the padded push");
    // unknown top-level fields and key fields are ignored (forward compatible);
    // a charset parameter is fine
    let newer = variant(&|v| {
        v["schema_version"] = 2.into();
        v["extra"] = serde_json::json!({"a": [1]});
        v["keys"][0]["region"] = "eu".into();
    });
    let r = sync.send(Some(TOKEN), Some("application/json; charset=utf-8"), &newer);
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(apikey(&pg, "key_1"), "10|1700000009");
    assert_eq!(
        sync.metric("keyward_sync_usage_pushes_total{result=\"bad_request\"}"),
        14.0
    );
    // a request head not complete within 10 s is dropped
    let mut slow = TcpStream::connect(sync.usage).unwrap();
    slow.write_all(b"POST /v1/usage HTTP/1.1\r\nHost: kw.test\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(8) && waited < Duration::from_secs(15),
        "{waited:?}"
    );
}

#[test]
fn a_push_while_postgres_is_down_is_503_and_the_retry_is_written() {
    let mut pg = Postgres::start();
    pg.sql(&BETTERAUTH);
    let sync = Sync::betterauth(&pg);
    // a first push: the receiver holds a connection, which then breaks
    let r = sync.push(&body(&[("key_1", "api_key", 1, 0, 1700000001)]));
    assert_eq!(r.status, 200, "{}\n{}", r.body_str(), sync.log());
    pg.stop();
    let push = body(&[("key_1", "api_key", 5, 0, 1700000009)]);
    let r = sync.push(&push);
    r.assert_error(503, "SERVICE_UNAVAILABLE");
    pg.run();
    // keyward retries the same push: written once, nothing lost
    let mut last = None;
    assert!(
        wait_until(PATIENCE, || {
            let r = sync.push(&push);
            let ok = r.status == 200;
            last = Some(r);
            ok
        }),
        "{:?}\n{}",
        last.map(|r| r.body_str()),
        sync.log()
    );
    assert_eq!(apikey(&pg, "key_1"), "6|1700000009");
    assert!(sync.metric("keyward_sync_usage_pushes_total{result=\"failed\"}") >= 1.0);
    assert_eq!(
        sync.metric("keyward_sync_usage_pushes_total{result=\"ok\"}"),
        2.0
    );
}

#[test]
fn custom_updates_write_a_table_of_the_applications_own_without_auth() {
    let pg = Postgres::start();
    pg.sql(
        "CREATE TABLE app_keys (id text PRIMARY KEY, used bigint NOT NULL DEFAULT 0,
           refused bigint NOT NULL DEFAULT 0, last_seen bigint);
         CREATE TABLE app_tokens (id text PRIMARY KEY, used bigint NOT NULL DEFAULT 0);
         INSERT INTO app_keys (id) VALUES ('k_1'), ('k_2');
         INSERT INTO app_tokens (id) VALUES ('t_1');",
    );
    let sync = Sync::start(
        &pg,
        "",
        "api_key_update = \"UPDATE app_keys SET used = used + $2, refused = refused + $3, \
         last_seen = GREATEST(last_seen, $4) WHERE id = $1\"\n\
         mcp_token_update = \"UPDATE app_tokens SET used = used + $2 WHERE id = $1\"",
        "[tables.organizations]\nquery = \"SELECT 'org_1'::text AS id, 'default'::text AS plan\"",
    );
    let push = body(&[
        ("k_1", "api_key", 5, 2, 1700000009),
        ("k_2", "api_key", 0, 4, 1700000003),
        ("t_1", "mcp_token", 7, 1, 1700000008),
        ("x_1", "service_key", 1, 1, 1700000008),
    ]);
    let r = sync.send(None, Some("application/json"), &push);
    assert_eq!(r.status, 200, "{}\n{}", r.body_str(), sync.log());
    assert_eq!(
        r.json(),
        serde_json::json!({"written": 3, "ignored": 1}),
        "a kind sync does not know is ignored"
    );
    let r = sync.send(None, Some("application/json"), &push);
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(
        pg.sql("SELECT string_agg(id || ':' || used || ':' || refused || ':' || last_seen, ',' ORDER BY id) FROM app_keys"),
        "k_1:10:4:1700000009,k_2:0:8:1700000003"
    );
    assert_eq!(pg.sql("SELECT used FROM app_tokens"), "14");
}

#[test]
fn a_failing_custom_update_writes_nothing_of_the_push() {
    let pg = Postgres::start();
    pg.sql(
        "CREATE TABLE app_keys (id text PRIMARY KEY, used bigint NOT NULL DEFAULT 0
           CHECK (used < 100));
         INSERT INTO app_keys (id) VALUES ('k_1'), ('k_2');",
    );
    let sync = Sync::start(
        &pg,
        "",
        "api_key_update = \"UPDATE app_keys SET used = used + $2 WHERE id = $1\"",
        "[tables.organizations]\nquery = \"SELECT 'org_1'::text AS id, 'default'::text AS plan\"",
    );
    // k_2 violates the check: the whole push is rolled back, k_1 included
    let r = sync.send(
        None,
        Some("application/json"),
        &body(&[("k_1", "api_key", 5, 0, 1), ("k_2", "api_key", 500, 0, 1)]),
    );
    r.assert_error(503, "SERVICE_UNAVAILABLE");
    assert_eq!(pg.sql("SELECT sum(used) FROM app_keys"), "0");
    // the connection is still good for the next push
    let r = sync.send(
        None,
        Some("application/json"),
        &body(&[("k_1", "api_key", 5, 0, 1)]),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body_str(), sync.log());
    assert_eq!(pg.sql("SELECT sum(used) FROM app_keys"), "5");
}

#[test]
fn the_preset_follows_its_schema_and_a_timestamp_without_time_zone() {
    let pg = Postgres::start();
    // BetterAuth in schema `auth`, `lastRequest` as older migrations made it,
    // and a server whose time zone is not UTC
    pg.sql(&format!(
        "CREATE SCHEMA auth; SET search_path TO auth; {}
         ALTER TABLE auth.apikey ALTER COLUMN \"lastRequest\" TYPE timestamp;
         ALTER DATABASE postgres SET timezone TO 'America/New_York';",
        BETTERAUTH.as_str()
    ));
    let sync = Sync::start(
        &pg,
        "preset = \"betterauth\"\n[preset]\nschema = \"auth\"",
        "",
        "",
    );
    let r = sync.send(
        None,
        Some("application/json"),
        &body(&[("key_1", "api_key", 2, 0, 1700000009)]),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.body_str(), sync.log());
    assert_eq!(r.json()["written"], 1);
    assert_eq!(
        pg.sql(
            "SELECT \"requestCount\" || ' ' || to_char(\"lastRequest\", 'YYYY-MM-DD HH24:MI:SS') \
             FROM auth.apikey"
        ),
        "2 2023-11-14 22:13:29",
        "UTC wall time"
    );
}

fn load(usage: &str, env: &[(&str, &str)]) -> Result<keyward::sync::SyncConfig, String> {
    let text = format!(
        "[source]\nurl = \"postgres://u@db/app\"\npreset = \"betterauth\"\n\
         [preset]\nschema = \"tenant\"\n[output]\npath = \"s.db\"\n[usage]\n{usage}\n"
    );
    keyward::sync::SyncConfig::from_toml_str(&text, Path::new("/"), |k| {
        env.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    })
    .map_err(|e| e.to_string())
}

#[test]
fn the_usage_table_is_checked_at_start() {
    let cfg = load("listen = \"127.0.0.1:9092\"", &[]).unwrap();
    let u = cfg.usage.unwrap();
    assert!(u.token_digest.is_none());
    let sql = u.api_key_update.unwrap();
    assert!(sql.starts_with("UPDATE \"tenant\".\"apikey\""), "{sql}");
    assert!(u.mcp_token_update.is_none());
    // "" turns the preset's write-back off
    let cfg = load("listen = \"127.0.0.1:9092\"\napi_key_update = \"\"", &[]).unwrap();
    assert!(cfg.usage.unwrap().api_key_update.is_none());
    assert!(load(
        "listen = \"127.0.0.1:9092\"\ntoken_env = \"T\"",
        &[("T", "s3cret")]
    )
    .unwrap()
    .usage
    .unwrap()
    .token_digest
    .is_some());
    for (usage, env, says) in [
        (
            "listen = \"127.0.0.1:9092\"\ntoken_env = \"T\"",
            &[][..],
            "usage.token_env",
        ),
        (
            "listen = \"127.0.0.1:9092\"\ntoken_env = \"T\"",
            &[("T", "")][..],
            "no T",
        ),
        (
            "listen = \"127.0.0.1:9092\"\npush_url = \"x\"",
            &[][..],
            "push_url",
        ),
        ("token_env = \"\"", &[][..], "listen"),
        ("listen = \"nowhere\"", &[][..], "usage.listen"),
    ] {
        let err = load(usage, env).err().unwrap_or_else(|| panic!("{usage}"));
        assert!(err.contains(says), "{usage}: {err}");
    }
    // no [usage]: off
    let text = "[source]\nurl = \"postgres://u@db/app\"\npreset = \"betterauth\"\n\
                [output]\npath = \"s.db\"\n";
    let cfg = keyward::sync::SyncConfig::from_toml_str(text, Path::new("/"), |_| None).unwrap();
    assert!(cfg.usage.is_none());
}

/// keyward → `keyward sync` → PostgreSQL: the requests a key made reach
/// BetterAuth's `apikey` row through the real pusher and receiver.
#[test]
fn keywards_pushes_reach_the_apikey_row_through_sync() {
    let pg = Postgres::start();
    pg.sql(&BETTERAUTH);
    let sync = Sync::betterauth(&pg);
    let snap = Snap::new();
    snap.org("org_1", "free");
    let token = "wvz_usage_end_to_end_0123456789abcdef";
    snap.sql(&format!(
        "INSERT INTO api_keys (id, organization_id, key_hash, key_prefix, permissions) \
         VALUES ('key_1', 'org_1', '{}', 'wvz_usag', '{{\"scope\":\"org\",\"readOnly\":true}}')",
        hash(token)
    ));
    let mut opts = Opts::new(echo())
        .generous_plan()
        .set("usage.push_url", format!("http://{}/v1/usage", sync.usage))
        .set("usage.push_interval_ms", 200)
        .set("usage.push_token_env", TOKEN_ENV);
    opts.env.push((TOKEN_ENV.into(), TOKEN.into()));
    let kw = Keyward::start(&snap, opts);
    let start = now();
    for _ in 0..3 {
        assert_eq!(kw.get("/api/v1/x", Some(token)).status, 200);
    }
    // refused (read-only): counted as denied, not added to requestCount
    kw.send("POST", "/api/v1/x", bearer(token), "{}")
        .assert_error(403, "SCOPE_DENIED");
    let written = wait_until(PATIENCE, || apikey(&pg, "key_1").starts_with("3|"));
    assert!(
        written,
        "{}\n{}\n{}",
        apikey(&pg, "key_1"),
        sync.log(),
        kw.log()
    );
    let last: i64 = apikey(&pg, "key_1")[2..].parse().unwrap();
    assert!(last >= start && last <= now(), "{last}");
    assert!(kw.metric("keyward_usage_pushes_total{result=\"ok\"}") >= 1.0);
    assert_eq!(
        kw.metric("keyward_usage_pushes_total{result=\"failed\"}"),
        0.0
    );
}
