//! PROXY protocol (SPEC §8.3) from outside: raw bytes on real sockets to
//! the real binary, and curl's `--haproxy-protocol` over TLS.
mod common;
use common::*;

use std::time::Duration;

const QUIET: Duration = Duration::from_millis(300);

fn v1(src: &str, port: u16) -> Vec<u8> {
    format!("PROXY TCP4 {src} 10.0.0.1 {port} 8080\r\n").into_bytes()
}

fn v2(cmd: u8, src: [u8; 4], port: u16) -> Vec<u8> {
    let mut b = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    b.extend_from_slice(&[0x20 | cmd, 0x11, 0, 12]);
    b.extend_from_slice(&src);
    b.extend_from_slice(&[10, 0, 0, 1]);
    b.extend_from_slice(&port.to_be_bytes());
    b.extend_from_slice(&8080u16.to_be_bytes());
    b
}

/// keyward behind a balancer at 127.0.0.1 (trusted) speaking `version`.
fn behind(snap: &Snap, version: &str, trusted: &str) -> Keyward {
    Keyward::start(
        snap,
        Opts::new(echo())
            .generous_plan()
            .set("server.proxy_protocol", version)
            .set("server.trusted_proxies", vec![trusted]),
    )
}

fn world() -> (Snap, String) {
    let snap = Snap::new();
    snap.org("org_p", "free");
    snap.sql(
        "ALTER TABLE api_keys ADD COLUMN rate_limit INTEGER; ALTER TABLE api_keys ADD COLUMN allowed_ips TEXT;",
    );
    let (key, id) = snap.api_key_full("org_p", None, None, None);
    snap.sql(&format!(
        "UPDATE api_keys SET allowed_ips = '[\"203.0.113.0/24\"]' WHERE id = '{id}'"
    ));
    (snap, key)
}

fn with_header(kw: &Keyward, header: &[u8], key: &str) -> Vec<u8> {
    let req = request_bytes("GET", "/api/v1/x", bearer(key).as_bytes(), None);
    exchange(kw.addr, &[header, &req].concat(), QUIET)
}

#[test]
fn the_headers_source_is_the_client_for_forwarding_allowed_ips_and_the_log() {
    let (snap, key) = world();
    let plain = snap.api_key("org_p");
    let kw = behind(&snap, "any", "127.0.0.1/32");
    let r = parse_response(&with_header(&kw, &v1("203.0.113.7", 41000), &key));
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.upstream_header("x-real-ip"), ["203.0.113.7"]);
    assert_eq!(r.upstream_header("x-forwarded-for"), ["203.0.113.7"]);
    assert!(wait_until(LOG_TIMEOUT, || kw
        .log()
        .contains("client_ip=203.0.113.7")));
    // v2, and the allow-list judges the header's source
    let r = parse_response(&with_header(&kw, &v2(1, [203, 0, 113, 9], 1), &key));
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-real-ip"), ["203.0.113.9"]);
    let r = parse_response(&with_header(&kw, &v1("198.51.100.1", 2), &key));
    assert_eq!(r.status, 403);
    assert_eq!(reason(&r), "ip_not_allowed");
    // LOCAL (a health check of the balancer): the real peer
    let r = parse_response(&with_header(&kw, &v2(0, [0; 4], 0), &plain));
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-real-ip"), ["127.0.0.1"]);
}

/// Read one response (head + Content-Length body) from `s`.
fn read_one(s: &mut std::net::TcpStream) -> Resp {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).unwrap(),
            1,
            "{}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    buf.extend_from_slice(&body);
    parse_response(&buf)
}

#[test]
fn one_header_per_connection_then_requests_as_usual() {
    use std::io::Write;
    let (snap, _) = world();
    let key = snap.api_key("org_p");
    let kw = behind(&snap, "v1", "127.0.0.1/32");
    let mut s = std::net::TcpStream::connect(kw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: kw.test\r\n{}\r\n",
            bearer(&key)
        )
    };
    s.write_all(&[v1("203.0.113.5", 7), req("/api/v1/x").into_bytes()].concat())
        .unwrap();
    let first = read_one(&mut s);
    assert_eq!(first.status, 200);
    // the next request on the connection is a request, not a header
    s.write_all(req("/api/v1/y").as_bytes()).unwrap();
    let second = read_one(&mut s);
    assert_eq!(second.status, 200);
    assert_eq!(second.upstream_header("x-real-ip"), ["203.0.113.5"]);
}

#[test]
fn a_trusted_peer_without_a_valid_header_is_closed_without_a_response() {
    let (snap, key) = world();
    let kw = behind(&snap, "v2", "127.0.0.1/32");
    let req = request_bytes("GET", "/api/v1/x", bearer(&key).as_bytes(), None);
    for first in [
        Vec::new(),                                        // no header
        v1("203.0.113.7", 1),                              // the other version
        b"PROXY TCP4 203.0.113.7 10.0.0.1 1\r\n".to_vec(), // malformed
        [
            b"\r\n\r\n\0\r\nQUIT\n".as_slice(),
            &[0x21, 0x12, 0, 12],
            &[0; 12],
        ]
        .concat(), // UDP
    ] {
        let out = exchange(kw.addr, &[first.as_slice(), &req].concat(), QUIET);
        assert!(
            out.is_empty(),
            "{:?}: {}",
            first,
            String::from_utf8_lossy(&out)
        );
    }
    // a header that never completes is dropped, not waited on forever
    let out = exchange(kw.addr, b"\r\n\r\n\0\r\nQUIT\n", Duration::from_secs(8));
    assert!(out.is_empty());
    assert!(kw.metric("keyward_proxy_protocol_refused_total{reason=\"invalid\"}") >= 4.0);
    assert_eq!(
        kw.metric("keyward_proxy_protocol_refused_total{reason=\"timeout\"}"),
        1.0
    );
}

#[test]
fn an_untrusted_peer_that_sends_a_header_is_closed_and_others_are_served() {
    let (snap, _) = world();
    let key = snap.api_key("org_p");
    // the balancer is elsewhere: this loopback client is not it
    let kw = behind(&snap, "any", "10.9.9.9/32");
    let out = with_header(&kw, &v1("203.0.113.7", 1), &key);
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    let out = with_header(&kw, &v2(1, [203, 0, 113, 7], 1), &key);
    assert!(out.is_empty());
    assert_eq!(
        kw.metric("keyward_proxy_protocol_refused_total{reason=\"untrusted\"}"),
        2.0
    );
    let r = kw.get("/api/v1/x", Some(&key));
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-real-ip"), ["127.0.0.1"]);
}

#[test]
fn the_header_comes_before_the_tls_handshake() {
    let (snap, _) = world();
    let key = snap.api_key("org_p");
    let dir = snap.dir.path();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "keyward PROXY test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).unwrap();
    let kw = Keyward::start(
        &snap,
        Opts::new(echo())
            .generous_plan()
            .set("server.proxy_protocol", "v1")
            .set("server.trusted_proxies", vec!["127.0.0.1/32"])
            .set(
                "server.tls.cert",
                dir.join("cert.pem").to_string_lossy().into_owned(),
            )
            .set(
                "server.tls.key",
                dir.join("key.pem").to_string_lossy().into_owned(),
            ),
    );
    let curl = |haproxy: bool| {
        let port = kw.addr.port();
        let mut c = std::process::Command::new("curl");
        c.args(["-sS", "--max-time", "5", "--cacert"])
            .arg(dir.join("ca.pem"))
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .args(["-H", &format!("Authorization: Bearer {key}")]);
        if haproxy {
            c.arg("--haproxy-protocol");
        }
        c.arg(format!("https://localhost:{port}/api/v1/x"))
            .output()
            .unwrap()
    };
    let ok = curl(true);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let body: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(body["headers"]["x-org-id"][0], "org_p");
    // without the header the trusted peer's handshake never starts
    assert!(!curl(false).status.success());
}
