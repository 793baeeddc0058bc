//! TLS on both sides, with certificates made in the test (rcgen):
//! downstream `[server.tls]` (HTTP/1.1 and HTTP/2 by ALPN, checked with curl)
//! and upstream `upstream.tls` + `sni` + `ca_file` against a rustls server.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// A CA and a leaf for `localhost` / 127.0.0.1, written as PEM files in `dir`.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

fn make_pki(dir: &Path, name: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("keyward test CA {name}"));
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let p = |f: &str| dir.join(format!("{name}-{f}"));
    std::fs::write(p("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(p("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(p("key.pem"), leaf_key.serialize_pem()).unwrap();
    Pki {
        ca: p("ca.pem"),
        cert: p("cert.pem"),
        key: p("key.pem"),
        cert_der: leaf.der().to_vec(),
        key_der: leaf_key.serialize_der(),
    }
}

/// curl over TLS to keyward; returns (http_version, status, body).
fn curl(
    kw: &Keyward,
    ca: &Path,
    http: &str,
    path: &str,
    bearer: Option<&str>,
) -> (String, u16, String) {
    let port = kw.addr.port();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", http, "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["-w", "\n%{http_version} %{http_code}"]);
    if let Some(b) = bearer {
        cmd.args(["-H", &format!("Authorization: Bearer {b}")]);
    }
    cmd.arg(format!("https://localhost:{port}{path}"));
    let out = cmd.output().expect("curl is installed by scripts/setup.sh");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, tail) = text.rsplit_once('\n').unwrap();
    let (version, code) = tail.split_once(' ').unwrap();
    (version.to_string(), code.parse().unwrap(), body.to_string())
}

/// A world with `org_a` (`ws_a`, plan `pro`) and its key, keyward serving
/// TLS with a leaf of a fresh CA; (snapshot, keyward, key, PKI).
fn tls_keyward() -> (Snap, Keyward, String, Pki) {
    let snap = Snap::new();
    snap.org("org_a", "pro").workspace("ws_a", "org_a");
    let key = snap.api_key("org_a");
    let pki = make_pki(snap.dir.path(), "server");
    let opts = Opts::new(echo())
        .set("server.tls.cert", pki.cert.to_string_lossy().into_owned())
        .set("server.tls.key", pki.key.to_string_lossy().into_owned());
    let kw = Keyward::start(&snap, opts);
    (snap, kw, key, pki)
}

/// Over TLS with ALPN `flag`, expecting HTTP version `want`: a valid key is
/// forwarded with its identity, no credential is 401.
fn serves_and_decides(flag: &str, want: &str) {
    let (_snap, kw, key, pki) = tls_keyward();
    let (version, status, body) = curl(
        &kw,
        &pki.ca,
        flag,
        "/api/v1/workspaces/ws_a/flows",
        Some(&key),
    );
    assert_eq!((version.as_str(), status), (want, 200), "{body}");
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["headers"]["x-org-id"][0], "org_a", "{body}");
    assert_eq!(echoed["path"], "/api/v1/workspaces/ws_a/flows");

    let (version, status, body) = curl(&kw, &pki.ca, flag, "/api/v1/workspaces/ws_a/flows", None);
    assert_eq!((version.as_str(), status), (want, 401), "{body}");
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["code"], "UNAUTHENTICATED", "{body}");
}

#[test]
fn downstream_tls_serves_http2_and_still_decides() {
    serves_and_decides("--http2", "2");
}

#[test]
fn downstream_tls_serves_http1_1_and_still_decides() {
    serves_and_decides("--http1.1", "1.1");
}

/// How long to wait for an answer to plain HTTP on the TLS port.
const PLAIN_HTTP_TIMEOUT: Duration = Duration::from_secs(5);

#[test]
fn plain_http_on_the_tls_port_gets_no_answer_from_the_proxy() {
    let (_snap, kw, _key, _pki) = tls_keyward();
    let mut s = std::net::TcpStream::connect(kw.addr).unwrap();
    s.set_read_timeout(Some(PLAIN_HTTP_TIMEOUT)).unwrap();
    s.write_all(
        b"GET /api/v1/workspaces/ws_a/flows HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        !buf.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
}

#[test]
fn a_client_that_does_not_trust_the_ca_refuses_the_server() {
    let (snap, kw, _key, _pki) = tls_keyward();
    let other = make_pki(snap.dir.path(), "other");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&other.ca)
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", kw.addr.port()),
        ])
        .arg(format!("https://localhost:{}/api/auth/x", kw.addr.port()))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn bad_tls_files_are_a_clear_startup_error() {
    let snap = Snap::new();
    let dir = snap.dir.path();
    std::fs::write(dir.join("junk.pem"), "not a certificate").unwrap();
    let config = dir.join("tls.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [server.tls]\ncert = \"{0}\"\nkey = \"{0}\"\n[upstream]\naddress = \"127.0.0.1:1\"\n\
             [snapshot]\npath = \"{1}\"\n",
            dir.join("junk.pem").display(),
            snap.path.display()
        ),
    )
    .unwrap();
    let out = keyward_cmd()
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(err.contains("server.tls"), "{err}");
}

fn upstream_tls_keyward(snap: &Snap, upstream: SocketAddr, ca: &Path, sni: &str) -> Keyward {
    let opts = Opts::new(upstream)
        .set("upstream.tls", true)
        .set("upstream.sni", sni)
        .set("upstream.ca_file", ca.to_string_lossy().into_owned())
        .set("upstream.connect_timeout_ms", 2000);
    Keyward::start(snap, opts)
}

/// A world with `org_a` (`ws_a`, plan `pro`) and its key, and a TLS
/// upstream with a leaf of a fresh CA; (snapshot, upstream, its PKI, key).
fn tls_upstream_world() -> (Snap, SocketAddr, Pki, String) {
    let snap = Snap::new();
    snap.org("org_a", "pro").workspace("ws_a", "org_a");
    let key = snap.api_key("org_a");
    let server_pki = make_pki(snap.dir.path(), "upstream");
    let upstream = tls_upstream(server_pki.cert_der.clone(), server_pki.key_der.clone());
    (snap, upstream, server_pki, key)
}

#[test]
fn upstream_tls_verifies_the_certificate_against_ca_file() {
    let (snap, upstream, server_pki, key) = tls_upstream_world();
    let kw = upstream_tls_keyward(&snap, upstream, &server_pki.ca, "localhost");
    let r = kw.get("/api/v1/workspaces/ws_a/flows", Some(&key));
    assert_eq!(r.status, 200, "{} / log: {}", r.body_str(), kw.log());
    assert_eq!(r.upstream_header("x-org-id"), vec!["org_a"]);
    assert_eq!(r.json()["sni"], "localhost");
}

#[test]
fn upstream_tls_fails_closed_on_a_certificate_the_ca_file_does_not_vouch_for() {
    let (snap, upstream, _server_pki, key) = tls_upstream_world();
    let other = make_pki(snap.dir.path(), "untrusted");
    let kw = upstream_tls_keyward(&snap, upstream, &other.ca, "localhost");
    kw.get("/api/v1/workspaces/ws_a/flows", Some(&key))
        .assert_error(502, "UPSTREAM_UNAVAILABLE");
}

#[test]
fn upstream_tls_fails_closed_on_an_sni_the_certificate_does_not_cover() {
    let (snap, upstream, server_pki, key) = tls_upstream_world();
    let kw = upstream_tls_keyward(&snap, upstream, &server_pki.ca, "wrong.example");
    kw.get("/api/v1/workspaces/ws_a/flows", Some(&key))
        .assert_error(502, "UPSTREAM_UNAVAILABLE");
}

/// curl once to `https://localhost:PORT/healthz-ish`: did the handshake
/// (verified against `ca`) succeed?
fn handshake_ok(kw: &Keyward, ca: &Path) -> bool {
    let port = kw.addr.port();
    Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "5", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg(format!("https://localhost:{port}/api/auth/ok"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// SPEC §8.3: a new pair renamed over the files is served to new
/// connections without a restart and without a failed handshake; a pair
/// whose key does not match is refused and the served one kept.
#[test]
fn a_certificate_renamed_in_is_served_without_a_failed_handshake() {
    let snap = Snap::new();
    let dir = snap.dir.path();
    let old = make_pki(dir, "old");
    let new = make_pki(dir, "new");
    let (cert, key) = (dir.join("served-cert.pem"), dir.join("served-key.pem"));
    std::fs::copy(&old.cert, &cert).unwrap();
    std::fs::copy(&old.key, &key).unwrap();
    let both = dir.join("both-ca.pem");
    let bundle = [
        std::fs::read(&old.ca).unwrap(),
        std::fs::read(&new.ca).unwrap(),
    ]
    .concat();
    std::fs::write(&both, bundle).unwrap();
    let kw = Keyward::start(
        &snap,
        Opts::new(echo())
            .set("server.tls.cert", cert.to_string_lossy().into_owned())
            .set("server.tls.key", key.to_string_lossy().into_owned()),
    );
    assert!(handshake_ok(&kw, &old.ca) && !handshake_ok(&kw, &new.ca));
    assert!(kw.metric("keyward_tls_cert_expiry_seconds") > 86_400.0);
    // clients trusting both CAs hammer the listener across the rotation
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (ok, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    if handshake_ok(&kw, &both) {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(300));
        // key first, then the certificate: each renamed over its file
        for (from, to) in [(&new.key, &key), (&new.cert, &cert)] {
            let tmp = to.with_extension("tmp");
            std::fs::copy(from, &tmp).unwrap();
            std::fs::rename(&tmp, to).unwrap();
        }
        let served = wait_until(Duration::from_secs(10), || handshake_ok(&kw, &new.ca));
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        assert!(served, "{}", kw.log());
    });
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed handshakes");
    assert!(ok.load(Ordering::Relaxed) > 10);
    assert!(
        !handshake_ok(&kw, &old.ca),
        "new connections get the new pair"
    );
    assert!(kw.metric("keyward_tls_reloads_total{result=\"ok\"}") >= 1.0);
    // a certificate whose key is not the served key: refused, pair kept
    let failed_before = kw.metric("keyward_tls_reloads_total{result=\"failed\"}");
    let tmp = cert.with_extension("tmp");
    std::fs::copy(&old.cert, &tmp).unwrap();
    std::fs::rename(&tmp, &cert).unwrap();
    assert!(wait_until(Duration::from_secs(10), || kw
        .metric("keyward_tls_reloads_total{result=\"failed\"}")
        > failed_before));
    assert!(handshake_ok(&kw, &new.ca), "the served pair is kept");
    assert!(kw.log().contains("do not match"), "{}", kw.log());
}
