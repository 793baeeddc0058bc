//! Test harness: a snapshot file with the contract schema, the echo upstream,
//! and a real `keyward` process on free loopback ports, killed on drop.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};

pub const SECRET: &str = "better-auth-secret-12345678901234567890";

pub fn hash(token: &str) -> String {
    keyward::snapshot::schema::token_hash_hex(token.as_bytes())
}

/// A snapshot file in its own temp dir.
pub struct Snap {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    n: std::cell::Cell<u32>,
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
}

fn rand_suffix() -> String {
    use rand::Rng;
    let n: u64 = rand::thread_rng().gen();
    format!("{n:016x}")
}

pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The echo upstream on a free loopback port.
pub fn echo() -> SocketAddr {
    keyward::echo::spawn("127.0.0.1:0".parse().unwrap()).unwrap()
}

/// A running keyward process; killed on drop.
pub struct Keyward {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
}

pub struct Opts {
    pub upstream: SocketAddr,
    pub extra: String,
    pub routes: String,
    pub env: Vec<(String, String)>,
    pub wait_ready: bool,
    /// `snapshot.poll_interval_ms`
    pub poll_ms: u64,
    /// `server.threads`
    pub threads: usize,
}

impl Opts {
    pub fn new(upstream: SocketAddr) -> Opts {
        Opts {
            upstream,
            extra: String::new(),
            routes: DEFAULT_ROUTES.into(),
            env: vec![("BETTER_AUTH_SECRET".into(), SECRET.into())],
            wait_ready: true,
            poll_ms: 100,
            threads: 2,
        }
    }
}

pub const DEFAULT_ROUTES: &str = r#"
[[route]]
path = "/api/auth/**"
auth = "none"
[[route]]
path = "/api/v1/workspaces/{workspaceId}/**"
workspace = "path:workspaceId"
[[route]]
path = "/api/v1/connections"
methods = ["POST"]
workspace = "body:workspaceId"
[[route]]
path = "/api/v1/connections/{id}/**"
workspace = "resource_path:id"
[[route]]
path = "/api/v1/triggers/disable"
workspace = "resource_body:triggerSourceId"
[[route]]
path = "/api/v1/triggers"
workspace = "query:workspaceId"
[[route]]
path = "/api/v1/by-header"
workspace = "header:X-Target-Workspace"
[[route]]
path = "/api/v1/actions/execute"
workspace = "body:workspaceId"
quota = true
[[route]]
path = "/api/v1/api-keys/**"
org_wide_only = true
[[route]]
path = "/api/v1/orgs/**"
org_optional = true
[[route]]
path = "/api/v1/list"
scoped_keys = "filter"
[[route]]
path = "/mcp/{server}/**"
auth = "mcp"
"#;

impl Keyward {
    pub fn start(snap: &Snap, opts: Opts) -> Keyward {
        let dir = snap.dir.path();
        for _ in 0..5 {
            let addr = free_port();
            let admin = free_port();
            let config_path = dir.join("keyward.toml");
            let has_server = opts.extra.contains("[server]");
            let server = if has_server {
                opts.extra.replace(
                    "[server]",
                    &format!(
                        "[server]\nlisten = \"{addr}\"\nadmin_listen = \"{admin}\"\nthreads = {}",
                        opts.threads
                    ),
                )
            } else {
                format!(
                    "[server]\nlisten = \"{addr}\"\nadmin_listen = \"{admin}\"\nthreads = {}\n{}",
                    opts.threads, opts.extra
                )
            };
            let has_upstream = server.contains("[upstream]");
            let upstream_addr = format!("address = \"{}\"", opts.upstream);
            let server = if has_upstream {
                server.replace("[upstream]", &format!("[upstream]\n{upstream_addr}"))
            } else {
                format!("{server}\n[upstream]\n{upstream_addr}\n")
            };
            let has_snapshot = server.contains("[snapshot]");
            let snapshot = format!(
                "path = \"{}\"\npoll_interval_ms = {}",
                snap.path.display(),
                opts.poll_ms
            );
            let server = if has_snapshot {
                server.replace("[snapshot]", &format!("[snapshot]\n{snapshot}"))
            } else {
                format!("{server}\n[snapshot]\n{snapshot}\n")
            };
            let text = format!("{server}\n{}\n", opts.routes);
            std::fs::write(&config_path, text).unwrap();
            let log_path = dir.join(format!("keyward-{}.log", addr.port()));
            let log = std::fs::File::create(&log_path).unwrap();
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyward"));
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
            };
            if kw.wait_listening(Duration::from_secs(20)) {
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
            if TcpStream::connect(self.addr).is_ok() && TcpStream::connect(self.admin).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if get(self.admin, "/readyz").status == 200 {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("keyward not ready: {}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// GET with an optional bearer token.
    pub fn get(&self, path: &str, bearer: Option<&str>) -> Resp {
        let auth = bearer
            .map(|b| format!("Authorization: Bearer {b}\r\n"))
            .unwrap_or_default();
        raw(
            self.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: kw.test\r\n{auth}Connection: close\r\n\r\n"),
        )
    }

    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
        let mut h = String::new();
        for (k, v) in headers {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
        raw(self.addr, &format!("{method} {path} HTTP/1.1\r\nHost: kw.test\r\n{h}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()))
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

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body_str()))
    }
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or("").to_string()
    }
    /// Values of a header the upstream received (echo body).
    pub fn upstream_header(&self, name: &str) -> Vec<String> {
        self.json()["headers"][name.to_ascii_lowercase()]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    }
    pub fn upstream_headers(&self) -> HashMap<String, Vec<String>> {
        serde_json::from_value(self.json()["headers"].clone()).unwrap()
    }
    /// Assert keyward's own error shape and return the code.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "body: {}", self.body_str());
        assert_eq!(self.header("content-type"), Some("application/json"));
        assert_eq!(
            self.header("content-length")
                .map(|v| v.parse::<usize>().unwrap()),
            Some(self.body.len())
        );
        let j = self.json();
        assert_eq!(j["code"], code, "{j}");
        assert!(j["error"].is_string() && j["details"].is_object(), "{j}");
    }
}

pub fn get(addr: SocketAddr, path: &str) -> Resp {
    raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: kw.test\r\nConnection: close\r\n\r\n"),
    )
}

/// Send raw bytes, read the response to EOF, parse it.
pub fn raw(addr: SocketAddr, request: &str) -> Resp {
    raw_bytes(addr, request.as_bytes())
}

pub fn raw_bytes(addr: SocketAddr, request: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    // The server may answer and close before reading everything (413).
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse_response(&buf)
}

pub fn parse_response(buf: &[u8]) -> Resp {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let mut body = buf[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(p) = rest.windows(2).position(|w| w == b"\r\n") {
            let size =
                usize::from_str_radix(String::from_utf8_lossy(&rest[..p]).trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[p + 2..p + 2 + size]);
            rest = &rest[p + 2 + size + 2..];
        }
        body = out;
    } else if let Some(len) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        body.truncate(len.1.parse().unwrap());
    }
    Resp {
        status,
        headers,
        body,
    }
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

pub fn now() -> i64 {
    keyward::clock::now_unix()
}

// ------------------------------------------------- adversarial test helpers

/// Send raw bytes, then read whatever comes back: up to 10 s for the first
/// bytes, then until EOF or `quiet` passes without more (keep-alive
/// connections stay open). No parsing: an empty result means the connection
/// closed without a response.
pub fn exchange(addr: SocketAddr, request: &[u8], quiet: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may answer and close before reading everything.
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                s.set_read_timeout(Some(quiet)).unwrap();
            }
        }
    }
    buf
}

/// Split a byte stream holding several pipelined responses (each framed by
/// Content-Length) into parsed responses.
pub fn parse_responses(mut buf: &[u8]) -> Vec<Resp> {
    let mut out = Vec::new();
    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
        let r = parse_response(buf);
        let len: usize = r
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(buf.len() - end - 4);
        buf = &buf[(end + 4 + len).min(buf.len())..];
        out.push(r);
    }
    out
}

/// One request as a [`RawUpstream`] read it off the wire.
#[derive(Debug, Clone)]
pub struct Seen {
    /// the request-target exactly as sent by keyward
    pub target: Vec<u8>,
    /// request line and headers, lossily decoded
    pub head: String,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn target_str(&self) -> String {
        String::from_utf8_lossy(&self.target).into_owned()
    }
    /// Values of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Vec<String> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }
}

/// A raw-socket HTTP/1.1 upstream that records every request exactly as it
/// arrives on the wire (target bytes, header lines, de-chunked body) and
/// answers `200 {"n": index, "target": …}`. Unlike the echo upstream it has no
/// HTTP library between the wire and the record, so it shows what keyward
/// really sent, even requests a strict server would refuse.
pub struct RawUpstream {
    pub addr: SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl RawUpstream {
    pub fn start() -> RawUpstream {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let seen = seen2.clone();
                        std::thread::spawn(move || raw_upstream_conn(s, seen));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        RawUpstream { addr, seen, stop }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Request-targets received so far, lossily decoded.
    pub fn targets(&self) -> Vec<String> {
        self.seen().iter().map(Seen::target_str).collect()
    }

    /// Whether any received request line or header block contains `marker`.
    pub fn saw(&self, marker: &str) -> bool {
        self.seen()
            .iter()
            .any(|s| s.head.contains(marker) || String::from_utf8_lossy(&s.body).contains(marker))
    }

    /// Whether any received request line (not body) contains `marker`.
    pub fn saw_request_for(&self, marker: &str) -> bool {
        self.seen().iter().any(|s| s.target_str().contains(marker))
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn raw_upstream_conn(mut s: TcpStream, seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>) {
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    // Read until `buf` holds at least `n` bytes; false on EOF or error.
    let mut fill = |s: &mut TcpStream, buf: &mut Vec<u8>, n: usize| -> bool {
        while buf.len() < n {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return false,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        }
        true
    };
    loop {
        // the head
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            let want = buf.len() + 1;
            if !fill(&mut s, &mut buf, want) {
                return;
            }
        };
        let head_bytes: Vec<u8> = buf.drain(..end + 4).collect();
        let head = String::from_utf8_lossy(&head_bytes[..end]).into_owned();
        let line_end = head_bytes
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or(end);
        let line = &head_bytes[..line_end];
        let target = line
            .split(|&b| b == b' ')
            .nth(1)
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        let mut cls: Vec<String> = Vec::new();
        let mut chunked = false;
        for l in head.split("\r\n").skip(1) {
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    cls.push(v.trim().to_string());
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    chunked |= v.to_ascii_lowercase().contains("chunked");
                }
            }
        }
        let mut body = Vec::new();
        let mut framing_ok = true;
        if chunked {
            if !cls.is_empty() {
                framing_ok = false;
            }
            loop {
                let p = loop {
                    if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                        break p;
                    }
                    let want = buf.len() + 1;
                    if !fill(&mut s, &mut buf, want) {
                        return;
                    }
                };
                let size_line = String::from_utf8_lossy(&buf[..p]).into_owned();
                let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
                    .unwrap_or(0);
                buf.drain(..p + 2);
                if size == 0 {
                    // trailers up to the empty line
                    loop {
                        let q = loop {
                            if let Some(q) = buf.windows(2).position(|w| w == b"\r\n") {
                                break q;
                            }
                            let want = buf.len() + 1;
                            if !fill(&mut s, &mut buf, want) {
                                return;
                            }
                        };
                        buf.drain(..q + 2);
                        if q == 0 {
                            break;
                        }
                    }
                    break;
                }
                if !fill(&mut s, &mut buf, size + 2) {
                    return;
                }
                body.extend_from_slice(&buf[..size]);
                buf.drain(..size + 2);
            }
        } else if !cls.is_empty() {
            let first = cls[0].clone();
            if cls.iter().any(|v| *v != first) || first.contains(',') {
                framing_ok = false;
            }
            let n: usize = first.split(',').next().unwrap().trim().parse().unwrap_or(0);
            if !fill(&mut s, &mut buf, n) {
                return;
            }
            body = buf.drain(..n).collect();
        }
        let index = {
            let mut seen = seen.lock().unwrap();
            seen.push(Seen {
                target: target.clone(),
                head,
                body,
            });
            seen.len() - 1
        };
        let json = serde_json::json!({
            "n": index,
            "target": String::from_utf8_lossy(&target),
        })
        .to_string();
        let status = if framing_ok {
            "200 OK"
        } else {
            "400 Bad Request"
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        );
        if s.write_all(resp.as_bytes()).is_err() || !framing_ok {
            return;
        }
    }
}

/// The echo upstream on its own runtime, which can be stopped (listener and
/// every open connection closed, like a killed process) and started again on
/// the same address.
pub struct KillableEcho {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KillableEcho {
    /// Bind `addr` (`127.0.0.1:0` for a free port) and serve.
    pub fn start(addr: SocketAddr) -> std::io::Result<KillableEcho> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                tokio::select! {
                    _ = keyward::echo::serve(listener) => {}
                    _ = rx => {}
                }
            });
            // Dropping the runtime drops every connection task: their sockets close.
            drop(rt);
        });
        Ok(KillableEcho {
            addr,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// Start again on `addr`, retrying while the port is briefly unavailable.
    pub fn restart_on(addr: SocketAddr) -> KillableEcho {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match KillableEcho::start(addr) {
                Ok(e) => return e,
                Err(e) if Instant::now() > deadline => panic!("rebind {addr}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Close the listener and every open connection; returns once they are closed.
    pub fn kill(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for KillableEcho {
    fn drop(&mut self) {
        self.kill();
    }
}
