//! TLS on both sides, with certificates made in the test (rcgen):
//! downstream `[server.tls]` (HTTP/1.1 and HTTP/2 by ALPN, checked with curl)
//! and upstream `upstream.tls` + `sni` + `ca_file` against a rustls server.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

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

#[test]
fn downstream_tls_serves_http1_and_http2_and_still_decides() {
    let snap = Snap::new();
    snap.org("org_a", "pro").workspace("ws_a", "org_a");
    let key = snap.api_key("org_a");
    let pki = make_pki(snap.dir.path(), "server");
    let mut opts = Opts::new(echo());
    opts.extra = format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        pki.cert.display(),
        pki.key.display()
    );
    let kw = Keyward::start(&snap, opts);

    for (flag, want) in [("--http2", "2"), ("--http1.1", "1.1")] {
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

        let (version, status, body) =
            curl(&kw, &pki.ca, flag, "/api/v1/workspaces/ws_a/flows", None);
        assert_eq!((version.as_str(), status), (want, 401), "{body}");
        let err: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(err["code"], "UNAUTHENTICATED", "{body}");
    }

    // Plain HTTP on the TLS port gets no answer from the proxy.
    let mut s = std::net::TcpStream::connect(kw.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
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

    // A client that does not trust the CA refuses the server.
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
    let out = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(err.contains("server.tls"), "{err}");
}

/// A one-thread rustls HTTP/1.1 server that answers each request with the
/// request head it saw (JSON, like the echo upstream) and closes.
fn tls_upstream(pki: &Pki) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![rustls::pki_types::CertificateDer::from(
                pki.cert_der.clone(),
            )],
            rustls::pki_types::PrivateKeyDer::Pkcs8(pki.key_der.clone().into()),
        )
        .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let config = config.clone();
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, stream);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let mut headers = serde_json::Map::new();
                for line in text.split("\r\n").skip(1).filter(|l| !l.is_empty()) {
                    if let Some((k, v)) = line.split_once(':') {
                        headers
                            .insert(k.trim().to_ascii_lowercase(), serde_json::json!([v.trim()]));
                    }
                }
                let sni = tls.conn.server_name().unwrap_or("").to_string();
                let body = serde_json::json!({"headers": headers, "sni": sni}).to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes());
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    addr
}

fn upstream_tls_keyward(snap: &Snap, upstream: SocketAddr, ca: &Path, sni: &str) -> Keyward {
    let mut opts = Opts::new(upstream);
    opts.extra = format!(
        "[upstream]\ntls = true\nsni = \"{sni}\"\nca_file = \"{}\"\nconnect_timeout_ms = 2000\n",
        ca.display()
    );
    Keyward::start(snap, opts)
}

#[test]
fn upstream_tls_verifies_the_certificate_against_ca_file() {
    let snap = Snap::new();
    snap.org("org_a", "pro").workspace("ws_a", "org_a");
    let key = snap.api_key("org_a");
    let server_pki = make_pki(snap.dir.path(), "upstream");
    let upstream = tls_upstream(&server_pki);

    let kw = upstream_tls_keyward(&snap, upstream, &server_pki.ca, "localhost");
    let r = kw.get("/api/v1/workspaces/ws_a/flows", Some(&key));
    assert_eq!(r.status, 200, "{} / log: {}", r.body_str(), kw.log());
    assert_eq!(r.upstream_header("x-org-id"), vec!["org_a"]);
    assert_eq!(r.json()["sni"], "localhost");
    drop(kw);

    // An upstream whose certificate the CA file does not vouch for: fail closed.
    let other = make_pki(snap.dir.path(), "untrusted");
    let kw = upstream_tls_keyward(&snap, upstream, &other.ca, "localhost");
    kw.get("/api/v1/workspaces/ws_a/flows", Some(&key))
        .assert_error(502, "UPSTREAM_UNAVAILABLE");
    drop(kw);

    // The right CA but an SNI the certificate does not cover: fail closed.
    let kw = upstream_tls_keyward(&snap, upstream, &server_pki.ca, "wrong.example");
    kw.get("/api/v1/workspaces/ws_a/flows", Some(&key))
        .assert_error(502, "UPSTREAM_UNAVAILABLE");
}
