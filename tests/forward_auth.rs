//! Forward-auth (SPEC §8.3) from outside: the real binary's
//! `server.auth_listen` asked with raw requests as nginx, Traefik/Caddy and
//! Envoy ask, and a real nginx with `auth_request` in front of an upstream.
mod common;
use common::*;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// keyward with a forward-auth listener; (keyward, auth address).
fn keyward(snap: &Snap, opts: Opts) -> (Keyward, SocketAddr) {
    let auth = free_port();
    let kw = Keyward::start(snap, opts.set("server.auth_listen", auth.to_string()));
    assert!(
        wait_until(Duration::from_secs(5), || std::net::TcpStream::connect(
            auth
        )
        .is_ok()),
        "{}",
        kw.log()
    );
    (kw, auth)
}

fn world() -> (Snap, String, String) {
    let snap = Snap::new();
    snap.org("org_a", "tiny")
        .workspace("ws_a", "org_a")
        .workspace("ws_b", "org_a");
    let key = snap.api_key("org_a");
    let scoped = snap.scoped_key("org_a", &["ws_a"]);
    (snap, key, scoped)
}

fn ask(auth: SocketAddr, method: &str, target: &str, lines: &str) -> Resp {
    send_bytes(auth, method, target, lines.as_bytes(), None)
}

#[test]
fn each_proxy_family_gets_the_proxys_decision_with_identity_and_limit_headers() {
    let (snap, key, scoped) = world();
    let (kw, auth) = keyward(
        &snap,
        Opts::new(echo()).set("plans.tiny.requests_per_window", 100),
    );
    let cred = bearer(&key);
    // nginx auth_request
    let r = ask(
        auth,
        "GET",
        "/_auth",
        &format!("{cred}X-Original-Method: GET\r\nX-Original-URI: /api/v1/workspaces/ws_a/x?y=1\r\nX-Org-ID: org_spoofed\r\n"),
    );
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.header("x-org-id"), Some("org_a"));
    assert_eq!(r.header("x-workspace-id"), Some("ws_a"));
    assert_eq!(r.header("x-auth-method"), Some("api_key"));
    assert!(r.header("x-api-key-id").is_some() && r.header("x-request-id").is_some());
    assert_eq!(r.header("x-ratelimit-limit"), Some("100"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("99"));
    // Traefik / Caddy
    let r = ask(
        auth,
        "GET",
        "/",
        &format!("{cred}X-Forwarded-Method: GET\r\nX-Forwarded-Uri: /api/v1/workspaces/ws_b/x\r\n"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-workspace-id"), Some("ws_b"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("98"));
    // Envoy ext_authz: the request itself
    let r = ask(auth, "GET", "/api/v1/workspaces/ws_a/y", &cred);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-workspace-id"), Some("ws_a"));
    // refusals are keyward's own, with their status and headers
    let r = ask(
        auth,
        "GET",
        "/_auth",
        "X-Original-Method: GET\r\nX-Original-URI: /api/v1/workspaces/ws_a/x\r\n",
    );
    r.assert_error(401, "UNAUTHENTICATED");
    assert!(r.header("www-authenticate").is_some());
    let r = ask(
        auth,
        "GET",
        "/_auth",
        &format!(
            "{}X-Original-Method: GET\r\nX-Original-URI: /api/v1/workspaces/ws_b/x\r\n",
            bearer(&scoped)
        ),
    );
    r.assert_error(403, "SCOPE_DENIED");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("97"));
    // counted once per request, like the proxy's
    assert!(wait_until(LOG_TIMEOUT, || kw.metric(
        "keyward_requests_total{auth_method=\"api_key\",outcome=\"forwarded\"}"
    ) == 3.0));
    assert_eq!(
        kw.metric("keyward_requests_total{auth_method=\"api_key\",outcome=\"scope_denied\"}"),
        1.0
    );
}

#[test]
fn conflicting_or_malformed_originals_are_refused() {
    let (snap, key, _) = world();
    let (_kw, auth) = keyward(&snap, Opts::new(echo()).generous_plan());
    let cred = bearer(&key);
    for (lines, why) in [
        (
            "X-Original-URI: /api/v1/a\r\nX-Forwarded-Uri: /api/v1/b\r\n",
            "conflicting_original",
        ),
        (
            "X-Original-Method: GET\r\nX-Forwarded-Method: DELETE\r\nX-Original-URI: /a\r\n",
            "conflicting_original",
        ),
        (
            "X-Original-URI: /a\r\nX-Original-URI: /b\r\n",
            "ambiguous_original",
        ),
        ("X-Original-Method: GET\r\n", "malformed_original"),
        (
            "X-Original-URI: /api/v1/connections\r\n",
            "malformed_original",
        ),
        (
            "X-Original-URI: http://other.test/api\r\n",
            "malformed_original",
        ),
        (
            "X-Original-Method: GET\r\nX-Original-URI: /api/v1/workspaces/ws_a%2F..%2Fws_b/x\r\n",
            "encoded_separator",
        ),
        (
            "X-Original-Method: get\r\nX-Original-URI: /a\r\n",
            "noncanonical_method",
        ),
    ] {
        let r = ask(auth, "GET", "/_auth", &format!("{cred}{lines}"));
        r.assert_error(400, "BAD_REQUEST");
        assert_eq!(reason(&r), why, "{lines:?}");
    }
}

#[test]
fn a_route_that_reads_the_body_needs_it_and_limits_count_as_on_the_proxy() {
    let (snap, key, _) = world();
    let (_kw, auth) = keyward(
        &snap,
        Opts::new(echo()).set("plans.tiny.requests_per_window", 3),
    );
    let cred = bearer(&key);
    let r = ask(
        auth,
        "GET",
        "/_auth",
        &format!("{cred}X-Original-Method: POST\r\nX-Original-URI: /api/v1/connections\r\n"),
    );
    r.assert_error(403, "FORBIDDEN");
    assert_eq!(reason(&r), "body_required");
    // Envoy with_request_body: the body comes along and is read
    let r = send_bytes(
        auth,
        "POST",
        "/api/v1/connections",
        format!("{cred}Content-Type: application/json\r\n").as_bytes(),
        Some(br#"{"workspaceId":"ws_a"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.header("x-workspace-id"), Some("ws_a"));
    for _ in 0..2 {
        assert_eq!(ask(auth, "GET", "/api/v1/x", &cred).status, 200);
    }
    let r = ask(auth, "GET", "/api/v1/x", &cred);
    r.assert_error(429, "RATE_LIMIT_EXCEEDED");
    assert!(r.header("retry-after").is_some());
}

struct Nginx {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx on a free port: `auth_request` to keyward's forward-auth
/// listener, identity headers copied to `upstream`, keyward's 429 kept.
fn nginx(auth: SocketAddr, upstream: SocketAddr) -> (Nginx, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_port();
    let d = dir.path().display();
    let conf = format!(
        r#"
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{}}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen {listen};
    location = /_keyward {{
      internal;
      proxy_pass http://{auth}/_auth;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
    }}
    location / {{
      auth_request /_keyward;
      auth_request_set $kw_org $upstream_http_x_org_id;
      auth_request_set $kw_ws $upstream_http_x_workspace_id;
      auth_request_set $kw_method $upstream_http_x_auth_method;
      auth_request_set $kw_status $upstream_status;
      proxy_set_header X-Org-ID $kw_org;
      proxy_set_header X-Workspace-ID $kw_ws;
      proxy_set_header X-Auth-Method $kw_method;
      error_page 500 = @keyward_refused;
      proxy_pass http://{upstream};
    }}
    location @keyward_refused {{
      if ($kw_status = 429) {{ return 429; }}
      if ($kw_status = 400) {{ return 400; }}
      return 500;
    }}
  }}
}}
"#
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let bin = ["/usr/sbin/nginx", "nginx"]
        .into_iter()
        .find(|b| Command::new(b).arg("-v").output().is_ok())
        .expect("nginx is installed by scripts/setup.sh");
    let child = Command::new(bin)
        .args(["-p", &d.to_string(), "-c", path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let n = Nginx { child, _dir: dir };
    assert!(
        wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(
            listen
        )
        .is_ok()),
        "nginx did not start: {}",
        std::fs::read_to_string(n._dir.path().join("error.log")).unwrap_or_default()
    );
    (n, listen)
}

#[test]
fn nginx_auth_request_in_front_copies_identity_and_passes_refusals() {
    let (snap, key, scoped) = world();
    let up = echo();
    let (kw, auth) = keyward(
        &snap,
        Opts::new(up).set("plans.tiny.requests_per_window", 4),
    );
    let (_nginx, front) = nginx(auth, up);
    let get = |path: &str, lines: &str| send_bytes(front, "GET", path, lines.as_bytes(), None);
    let r = get(
        "/api/v1/workspaces/ws_a/flows",
        &format!("{}X-Org-ID: org_spoofed\r\n", bearer(&key)),
    );
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.upstream_header("x-org-id"), ["org_a"]);
    assert_eq!(r.upstream_header("x-workspace-id"), ["ws_a"]);
    assert_eq!(r.upstream_header("x-auth-method"), ["api_key"]);
    assert_eq!(r.json()["path"], "/api/v1/workspaces/ws_a/flows");
    // 401 and 403 pass through auth_request as they are
    assert_eq!(get("/api/v1/workspaces/ws_a/flows", "").status, 401);
    assert_eq!(
        get("/api/v1/workspaces/ws_b/flows", &bearer(&scoped)).status,
        403
    );
    // keyward's 429 (the refusals above used no window: 1 of 4 taken)
    for _ in 0..3 {
        assert_eq!(get("/api/v1/x", &bearer(&key)).status, 200);
    }
    assert_eq!(get("/api/v1/x", &bearer(&key)).status, 429);
    // the decision was keyward's, once per request
    assert_eq!(
        kw.metric("keyward_requests_total{auth_method=\"api_key\",outcome=\"forwarded\"}"),
        4.0
    );
}
