//! Test harness for the integration tests, which keep only what needs
//! sockets and a real process:
//!
//! - [`Snap`]: a snapshot file with the contract schema, and [`World`], the
//!   one world builder over it;
//! - [`Opts`]: the typed config builder (`config.rs`);
//! - [`Keyward`]: a real `keyward` process on free loopback ports, killed on
//!   drop, with waits on `/readyz` (snapshot generation, row counts) instead
//!   of sleeps;
//! - the one raw HTTP/1.1 client (`client.rs`) and the fake upstreams
//!   (`upstreams.rs`).
#![allow(dead_code)]

mod client;
mod config;
pub mod moto;
pub mod postgres;
pub mod redis_servers;
mod upstreams;
mod world;

// Not every test binary uses every part.
#[allow(unused_imports)]
pub use {client::*, config::*, upstreams::*, world::*};

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};

pub const SECRET: &str = "better-auth-secret-12345678901234567890";

/// Longest wait for a started keyward to listen on both ports.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for `/readyz` to answer 200 after keyward listens.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for keyward to serve a snapshot change a test made (the
/// harness polls every 100 ms; file notifications are faster still).
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a line keyward logs after an event (SIGHUP, a request).
pub const LOG_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two checks of a condition being waited for.
pub const POLL: Duration = Duration::from_millis(20);

pub fn hash(token: &str) -> String {
    keyward::snapshot::schema::token_hash_hex(token.as_bytes())
}

/// A snapshot file in its own temp dir.
pub struct Snap {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    n: std::cell::Cell<u32>,
}

impl Default for Snap {
    fn default() -> Snap {
        Snap::new()
    }
}

impl Snap {
    pub fn new() -> Snap {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.db");
        keyward::snapshot::schema::init(&path).unwrap();
        Snap {
            dir,
            path,
            n: 0.into(),
        }
    }
    pub fn conn(&self) -> Connection {
        Connection::open(&self.path).unwrap()
    }
    fn uniq(&self, p: &str) -> String {
        self.n.set(self.n.get() + 1);
        format!("{p}{}_{}", self.n.get(), rand_suffix())
    }
    pub fn sql(&self, sql: &str) -> &Self {
        self.conn().execute_batch(sql).unwrap();
        self
    }
    pub fn org(&self, id: &str, plan: &str) -> &Self {
        self.conn()
            .execute(
                "INSERT INTO organizations (id, plan) VALUES (?1, ?2)",
                params![id, plan],
            )
            .unwrap();
        self
    }
    pub fn workspace(&self, id: &str, org: &str) -> &Self {
        self.conn()
            .execute(
                "INSERT INTO workspaces (id, organization_id) VALUES (?1, ?2)",
                params![id, org],
            )
            .unwrap();
        self
    }
    pub fn resource(&self, id: &str, ws: &str) -> &Self {
        self.conn()
            .execute(
                "INSERT INTO resources (id, kind, workspace_id) VALUES (?1, 'connection', ?2)",
                params![id, ws],
            )
            .unwrap();
        self
    }
    /// An API key; returns (token, key id).
    pub fn api_key_full(
        &self,
        org: &str,
        permissions: Option<&str>,
        expires_at: Option<i64>,
        revoked_at: Option<i64>,
    ) -> (String, String) {
        let token = self.uniq("wvz_");
        let id = self.uniq("key_");
        self.conn()
            .execute(
                "INSERT INTO api_keys (id, organization_id, key_hash, key_prefix, permissions, expires_at, revoked_at) VALUES (?1,?2,?3,?4,?5,?6,?7)",
                params![id, org, hash(&token), &token[..8], permissions, expires_at, revoked_at],
            )
            .unwrap();
        (token, id)
    }
    pub fn api_key(&self, org: &str) -> String {
        self.api_key_full(org, None, None, None).0
    }
    pub fn scoped_key(&self, org: &str, ws: &[&str]) -> String {
        let perms = serde_json::json!({"scope": "workspace", "workspaceIds": ws}).to_string();
        self.api_key_full(org, Some(&perms), None, None).0
    }
    /// A session; returns the cookie value BetterAuth would set.
    pub fn session(&self, user: &str, org: Option<&str>, expires_at: i64) -> String {
        let token = self.uniq("sess");
        self.conn()
            .execute(
                "INSERT INTO sessions (id, token_hash, user_id, active_organization_id, expires_at) VALUES (?1,?2,?3,?4,?5)",
                params![self.uniq("s_"), hash(&token), user, org, expires_at],
            )
            .unwrap();
        keyward::credentials::signed_cookie_value(&token, &keyward::config::Secret::new(SECRET))
    }
    pub fn service_key(&self, revoked: bool) -> String {
        let token = self.uniq("svc_");
        self.conn()
            .execute(
                "INSERT INTO service_keys (id, key_hash, revoked_at) VALUES (?1,?2,?3)",
                params![self.uniq("sk_"), hash(&token), revoked.then_some(1i64)],
            )
            .unwrap();
        token
    }
    pub fn mcp_server(&self, id: &str, org: &str, ws: &str, mode: &str) -> &Self {
        self.conn()
            .execute("INSERT INTO mcp_servers (id, organization_id, workspace_id, auth_mode) VALUES (?1,?2,?3,?4)", params![id, org, ws, mode])
            .unwrap();
        self
    }
    pub fn mcp_token(&self, server: &str, kind: &str, end_user: Option<&str>) -> String {
        let token = self.uniq(if kind == "oauth" { "mcpo_" } else { "mcp_" });
        self.conn()
            .execute(
                "INSERT INTO mcp_tokens (id, token_hash, kind, mcp_server_id, end_user_id) VALUES (?1,?2,?3,?4,?5)",
                params![self.uniq("t_"), hash(&token), kind, server, end_user],
            )
            .unwrap();
        token
    }
    /// Build a new version with `f` on a copy, then rename it over the file.
    pub fn replace_by_rename(&self, f: impl FnOnce(&Connection)) {
        let tmp = self.dir.path().join("next.db");
        let _ = std::fs::remove_file(&tmp);
        std::fs::copy(&self.path, &tmp).unwrap();
        let c = Connection::open(&tmp).unwrap();
        f(&c);
        drop(c);
        std::fs::rename(&tmp, &self.path).unwrap();
    }
    /// Row counts of the file as it is now, as `/readyz` reports them.
    pub fn counts(&self) -> serde_json::Value {
        let c = self.conn();
        let mut out = serde_json::Map::new();
        // the tables whose row counts `/readyz` reports
        for t in keyward::snapshot::TABLES {
            let n: i64 = c
                .query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
                .unwrap();
            out.insert(t.into(), n.into());
        }
        out.into()
    }
}

pub fn rand_suffix() -> String {
    use rand::Rng;
    let n: u64 = rand::thread_rng().gen();
    format!("{n:016x}")
}

/// The binary under test, as every test runs it (a one-shot CLI call, the
/// demo, an upgrading process); [`Keyward::start`] is the way to run a
/// server.
pub fn keyward_cmd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keyward"))
}

/// `keyward ARGS…` to its end; it must exit 0 (its stderr is the failure).
pub fn keyward_ok<I, S>(args: I) -> std::process::Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = keyward_cmd().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `keyward check` on a config of `snap`'s snapshot and `rest` (TOML after
/// the `[snapshot]` table); it must fail. Its stderr and stdout.
pub fn check_refuses(snap: &Snap, rest: &str) -> String {
    let path = snap.dir.path().join("check.toml");
    let text = format!("[snapshot]\npath = {:?}\n{rest}", snap.path);
    std::fs::write(&path, text).unwrap();
    let out = keyward_cmd()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    text
}

pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A running keyward process; killed on drop.
pub struct Keyward {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    /// The config document written to `config_path` at start.
    pub config: toml::Table,
}

impl Keyward {
    pub fn start(snap: &Snap, opts: Opts) -> Keyward {
        let dir = snap.dir.path();
        for _ in 0..5 {
            let addr = free_port();
            // Two free ports in a row may be the same one: the admin
            // listener would take it first, pingora's bind would fail in
            // its service task (the process stays up), and every request
            // meant for the proxy would reach the admin listener's 404.
            let admin = loop {
                let p = free_port();
                if p != addr {
                    break p;
                }
            };
            let config_path = dir.join("keyward.toml");
            let config = opts.document(&snap.path, addr, admin);
            std::fs::write(&config_path, render(&config)).unwrap();
            let log_path = dir.join(format!("keyward-{}.log", addr.port()));
            let log = std::fs::File::create(&log_path).unwrap();
            let mut cmd = keyward_cmd();
            cmd.args(["run", "--config"])
                .arg(&config_path)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .stdin(Stdio::null());
            cmd.env_remove("BETTER_AUTH_SECRET");
            for (k, v) in &opts.env {
                cmd.env(k, v);
            }
            let child = cmd.spawn().unwrap();
            let mut kw = Keyward {
                child,
                addr,
                admin,
                config_path,
                log_path,
                config,
            };
            if kw.wait_listening(START_TIMEOUT) {
                if opts.wait_ready {
                    kw.wait_ready();
                }
                return kw;
            }
            let _ = kw.child.kill();
            let _ = kw.child.wait();
        }
        panic!("keyward did not start");
    }

    fn wait_listening(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            // pingora retries a port in use forever: start again elsewhere
            if self.log().contains(" is in use, will try again") {
                return false;
            }
            // The ports must be this process's own: a port another test's
            // process took in between would accept the connections too.
            if self.listens_on(self.addr.port())
                && self.listens_on(self.admin.port())
                && TcpStream::connect(self.addr).is_ok()
                && TcpStream::connect(self.admin).is_ok()
            {
                return true;
            }
            std::thread::sleep(POLL);
        }
        false
    }

    /// Whether this process has a listening TCP socket on `port` (its
    /// descriptors matched against /proc/net/tcp).
    fn listens_on(&self, port: u16) -> bool {
        let pid = self.child.id();
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return false;
        };
        let inodes: Vec<String> = fds
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .filter_map(|l| {
                l.to_str()?
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')
                    .map(str::to_string)
            })
            .collect();
        let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
        let local = format!(":{port:04X}");
        table.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // local_address, st (0A: LISTEN), inode
            f.len() > 9
                && f[1].ends_with(&local)
                && f[3] == "0A"
                && inodes.iter().any(|i| i == f[9])
        })
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if get(self.admin, "/readyz").status == 200 {
                return;
            }
            std::thread::sleep(POLL);
        }
        panic!("keyward not ready: {}", self.log());
    }

    /// Replace the config file with `doc` (send SIGHUP to apply it).
    pub fn write_config(&self, doc: &toml::Table) {
        std::fs::write(&self.config_path, render(doc)).unwrap();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Wait until the log holds `line` at least `n` times; false on timeout.
    pub fn wait_log_count(&self, line: &str, n: usize) -> bool {
        wait_until(LOG_TIMEOUT, || self.log().matches(line).count() >= n)
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Whether the process has a handler installed for `sig` (`SigCgt` in
    /// /proc): until pingora's signal watcher runs, SIGTERM and SIGINT do
    /// whatever their inherited disposition says, not what keyward says.
    pub fn catches(&self, sig: i32) -> bool {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .is_some_and(|mask| mask & (1 << (sig - 1)) != 0)
    }

    /// Wait until the process handles `sig` (see [`Keyward::catches`]).
    pub fn wait_catches(&self, sig: i32) {
        assert!(
            wait_until(READY_TIMEOUT, || self.catches(sig)),
            "signal {sig} still not handled after {READY_TIMEOUT:?}: {}",
            self.log()
        );
    }

    /// Wait up to `timeout` for the process to exit; how long it took, or
    /// `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<Duration> {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if self.child.try_wait().unwrap().is_some() {
                return Some(t.elapsed());
            }
            std::thread::sleep(POLL);
        }
        self.child.try_wait().unwrap().map(|_| t.elapsed())
    }

    /// `/readyz`: status and body.
    pub fn readyz(&self) -> (u16, serde_json::Value) {
        let r = get(self.admin, "/readyz");
        (r.status, r.json())
    }

    /// The snapshot generation `/readyz` reports (0: none loaded).
    pub fn generation(&self) -> u64 {
        self.readyz().1["snapshot"]["generation"]
            .as_u64()
            .unwrap_or(0)
    }

    /// Wait until a generation newer than `after` is served; returns it.
    pub fn wait_reloaded(&self, after: u64) -> u64 {
        let mut now = 0;
        assert!(
            wait_until(RELOAD_TIMEOUT, || {
                now = self.generation();
                now > after
            }),
            "no snapshot generation after {after} within {RELOAD_TIMEOUT:?}: {}",
            self.readyz().1
        );
        now
    }

    /// Wait until the served generation holds every row now in `snap`'s file
    /// (the row counts `/readyz` reports equal the file's): rows a test
    /// inserted in place after the start are loaded.
    pub fn wait_caught_up(&self, snap: &Snap) {
        let want = snap.counts();
        assert!(
            wait_until(RELOAD_TIMEOUT, || self.readyz().1["snapshot"]["counts"]
                == want),
            "the served snapshot never reached the file's counts {want}: {}",
            self.readyz().1
        );
    }

    /// GET with an optional bearer token.
    pub fn get(&self, path: &str, bearer: Option<&str>) -> Resp {
        let auth = bearer.map(client::bearer).unwrap_or_default();
        self.send_head(path, auth)
    }

    /// A request with these headers and a Content-Length framed body.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
        let mut h = String::new();
        for (k, v) in headers {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
        self.send(method, path, h, body)
    }

    /// A request with raw header `lines` (each ending in CRLF) and a
    /// Content-Length framed `body` (see [`request_bytes`]).
    pub fn send(&self, method: &str, target: &str, lines: impl AsRef<[u8]>, body: &str) -> Resp {
        send_bytes(
            self.addr,
            method,
            target,
            lines.as_ref(),
            Some(body.as_bytes()),
        )
    }

    /// A GET with raw header `lines` (each ending in CRLF) and no body.
    pub fn send_head(&self, target: &str, lines: impl AsRef<[u8]>) -> Resp {
        send_bytes(self.addr, "GET", target, lines.as_ref(), None)
    }

    pub fn metrics(&self) -> String {
        get(self.admin, "/metrics").body_str()
    }

    pub fn metric(&self, name_and_labels: &str) -> f64 {
        self.metrics()
            .lines()
            .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for Keyward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Assert the process is still running (no crash, no abort).
pub fn assert_alive(kw: &mut Keyward) {
    assert!(
        kw.child.try_wait().unwrap().is_none(),
        "keyward exited: {}",
        kw.log()
    );
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(POLL);
    }
    false
}

pub fn now() -> i64 {
    keyward::clock::now_unix()
}
