//! `snapshot.source` (issue 18, SPEC §8.2): keyward polls an origin with
//! conditional requests, downloads a new version beside `snapshot.path`,
//! verifies it (length, signature with `snapshot.verify_key`, schema) and
//! renames it in; a refused version never reaches the path and the last good
//! one keeps serving. The origin here is a small HTTP server with ETags that
//! counts what it answered and can misbehave on demand.
mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use common::moto::*;
use common::*;

/// What the origin serves at one path.
#[derive(Clone)]
struct Object {
    body: Vec<u8>,
    etag: String,
    /// announce the full length but send only this many bytes
    truncate_to: Option<usize>,
}

#[derive(Default)]
struct OriginState {
    objects: HashMap<String, Object>,
    /// (path, status) → count
    answered: HashMap<(String, u16), u64>,
    /// versions put so far (each gets its own ETag)
    puts: u64,
}

#[derive(Clone)]
struct Origin {
    addr: SocketAddr,
    state: Arc<Mutex<OriginState>>,
}

impl Origin {
    fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state: Arc<Mutex<OriginState>> = Arc::default();
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || serve(conn, &s));
            }
        });
        Origin { addr, state }
    }

    fn put(&self, path: &str, body: Vec<u8>, truncate_to: Option<usize>) {
        let mut st = self.state.lock().unwrap();
        st.puts += 1;
        let etag = format!("\"v{}-{}\"", body.len(), st.puts);
        st.objects.insert(
            path.to_string(),
            Object {
                body,
                etag,
                truncate_to,
            },
        );
    }

    fn remove(&self, path: &str) {
        self.state.lock().unwrap().objects.remove(path);
    }

    fn answered(&self, path: &str, status: u16) -> u64 {
        let st = self.state.lock().unwrap();
        st.answered
            .get(&(path.to_string(), status))
            .copied()
            .unwrap_or(0)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

fn serve(conn: TcpStream, state: &Mutex<OriginState>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let head_only = line.starts_with("HEAD ");
        let path = line.split(' ').nth(1).unwrap_or("/").to_string();
        let mut if_none_match = None;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("if-none-match") {
                    if_none_match = Some(v.trim().to_string());
                }
            }
        }
        let object = state.lock().unwrap().objects.get(&path).cloned();
        let (status, head, body): (u16, String, Vec<u8>) = match object {
            None => (404, "Content-Length: 0\r\n".into(), Vec::new()),
            Some(o) if if_none_match.as_deref() == Some(o.etag.as_str()) => {
                (304, format!("ETag: {}\r\n", o.etag), Vec::new())
            }
            Some(o) => {
                let sent = match o.truncate_to {
                    Some(n) => o.body[..n.min(o.body.len())].to_vec(),
                    None => o.body.clone(),
                };
                (
                    200,
                    format!(
                        "ETag: {}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n",
                        o.etag,
                        o.body.len()
                    ),
                    sent,
                )
            }
        };
        *state
            .lock()
            .unwrap()
            .answered
            .entry((path.clone(), status))
            .or_default() += 1;
        let truncated = !head_only && status == 200 && {
            let st = state.lock().unwrap();
            st.objects
                .get(&path)
                .is_some_and(|o| o.truncate_to.is_some())
        };
        let reason = match status {
            200 => "OK",
            304 => "Not Modified",
            _ => "Not Found",
        };
        let mut out = format!("HTTP/1.1 {status} {reason}\r\n{head}\r\n").into_bytes();
        if !head_only {
            out.extend_from_slice(&body);
        }
        if conn.write_all(&out).is_err() || truncated {
            // a truncated body ends with the connection
            let _ = conn.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}

/// A snapshot file with `org` and one API key for it; its bytes and the key.
fn version(org: &str) -> (Vec<u8>, String, Snap) {
    let snap = Snap::new();
    snap.org(org, "free");
    let key = snap.api_key(org);
    // fold a WAL into the main file, so the bytes are the whole snapshot
    snap.conn()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    (std::fs::read(&snap.path).unwrap(), key, snap)
}

fn pem(label: &str, der: &[u8]) -> String {
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        base64::engine::general_purpose::STANDARD.encode(der)
    )
}

/// A new Ed25519 key pair: (private PEM path, public key base64).
fn key_pair(dir: &Path, name: &str) -> (std::path::PathBuf, String) {
    use ring::signature::KeyPair;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, pem("PRIVATE KEY", pkcs8.as_ref())).unwrap();
    let public = base64::engine::general_purpose::STANDARD.encode(pair.public_key().as_ref());
    (path, public)
}

/// `keyward snapshot sign --key KEY FILE`: the signature file's bytes.
fn sign(key: &Path, bytes: &[u8], dir: &Path) -> Vec<u8> {
    let file = dir.join("to-sign.db");
    std::fs::write(&file, bytes).unwrap();
    keyward_ok([
        "snapshot".as_ref(),
        "sign".as_ref(),
        "--key".as_ref(),
        key.as_os_str(),
        file.as_os_str(),
    ]);
    std::fs::read(dir.join("to-sign.db.sig")).unwrap()
}

/// Wait up to `secs` for `key` to be admitted; fail with `what` and the log.
fn assert_served(kw: &Keyward, key: &str, secs: u64, what: &str) {
    assert!(
        wait_until(Duration::from_secs(secs), || kw
            .get("/api/v1/x", Some(key))
            .status
            == 200),
        "{what}: not served: {}",
        kw.log()
    );
}

fn ino(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().ino()
}

#[test]
fn a_new_version_at_the_origin_is_fetched_and_a_304_costs_nothing() {
    let origin = Origin::start();
    let (v1, key1, _s1) = version("org_one");
    origin.put("/snap/snapshot.db", v1, None);
    // the replica's own file starts empty: the first version comes from the origin
    let snap = Snap::new();
    let kw = Keyward::start(
        &snap,
        Opts::new(echo()).set("snapshot.source", origin.url("/snap/snapshot.db")),
    );
    assert_served(&kw, &key1, 10, "the origin's first version");
    let inode = ino(&snap.path);
    let updated = kw.metric("keyward_snapshot_fetches_total{result=\"updated\"}");
    assert!(updated >= 1.0);
    // polls now cost a 304 each, and nothing is renamed in
    let before = origin.answered("/snap/snapshot.db", 304);
    assert!(wait_until(Duration::from_secs(10), || origin
        .answered("/snap/snapshot.db", 304)
        >= before + 3));
    assert_eq!(
        origin.answered("/snap/snapshot.db", 200),
        1,
        "downloaded once"
    );
    assert_eq!(ino(&snap.path), inode, "no rename without a new version");
    assert!(kw.metric("keyward_snapshot_fetches_total{result=\"not_modified\"}") >= 3.0);
    assert_eq!(
        kw.metric("keyward_snapshot_fetches_total{result=\"updated\"}"),
        updated
    );

    // a new version: fetched, renamed in, served; the old key is gone
    let (v2, key2, _s2) = version("org_two");
    let len = v2.len() as f64;
    let bytes_before = kw.metric("keyward_snapshot_fetch_bytes_total");
    origin.put("/snap/snapshot.db", v2, None);
    assert_served(&kw, &key2, 10, "the origin's new version");
    assert_eq!(kw.get("/api/v1/x", Some(&key1)).status, 401);
    assert_eq!(
        kw.metric("keyward_snapshot_fetch_bytes_total"),
        bytes_before + len
    );
    let (_, ready) = kw.readyz();
    assert!(
        !ready["degraded"]
            .to_string()
            .contains("snapshot_source_unreachable"),
        "{ready}"
    );
}

#[test]
fn truncated_unsigned_and_badly_signed_versions_are_refused_and_the_last_good_one_serves() {
    let origin = Origin::start();
    let snap = Snap::new();
    let (key, public) = key_pair(snap.dir.path(), "control-plane");
    let (other, _) = key_pair(snap.dir.path(), "intruder");
    let (v1, key1, _s1) = version("org_one");
    origin.put("/snapshot.db.sig", sign(&key, &v1, snap.dir.path()), None);
    origin.put("/snapshot.db", v1, None);
    let source = origin.url("/snapshot.db");
    let kw = Keyward::start(
        &snap,
        Opts::new(echo())
            .set("snapshot.source", source.as_str())
            .set("snapshot.verify_key", public.as_str()),
    );
    assert_served(&kw, &key1, 10, "the signed first version");
    assert!(kw.readyz().1["snapshot"]["last_reload_error"].is_null());
    let (v2, key2, _s2) = version("org_two");
    let refused = |what: &str| {
        let before = kw.metric("keyward_snapshot_fetches_total{result=\"rejected\"}")
            + kw.metric("keyward_snapshot_fetches_total{result=\"failed\"}");
        assert!(
            wait_until(Duration::from_secs(10), || {
                kw.metric("keyward_snapshot_fetches_total{result=\"rejected\"}")
                    + kw.metric("keyward_snapshot_fetches_total{result=\"failed\"}")
                    >= before + 1.0
            }),
            "{what}: not refused: {}",
            kw.log()
        );
        assert_eq!(
            kw.get("/api/v1/x", Some(&key2)).status,
            401,
            "{what} is not served"
        );
        assert_eq!(
            kw.get("/api/v1/x", Some(&key1)).status,
            200,
            "{what}: the last good one serves"
        );
        // SPEC §8.2: /readyz reports it as the last reload error, with the
        // source and the reason (still ready: the last good one serves)
        let (status, ready) = kw.readyz();
        assert_eq!(status, 200, "{what}: {ready}");
        let error = ready["snapshot"]["last_reload_error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no last_reload_error in {ready}"))
            .to_string();
        assert!(error.contains(&source), "{what}: no source in {error:?}");
        assert!(
            ready["degraded"]
                .to_string()
                .contains("snapshot_reload_failing"),
            "{what}: {ready}"
        );
        error
    };

    // 1. truncated: the length announced is not what arrives
    origin.put("/snapshot.db.sig", sign(&key, &v2, snap.dir.path()), None);
    origin.put("/snapshot.db", v2.clone(), Some(v2.len() / 2));
    let error = refused("a truncated download");
    assert!(error.contains("truncated"), "{error}");
    // 2. unsigned
    origin.remove("/snapshot.db.sig");
    origin.put("/snapshot.db", v2.clone(), None);
    let error = refused("an unsigned version");
    assert!(error.contains("no signature"), "{error}");
    // 3. signed by another key
    origin.put("/snapshot.db.sig", sign(&other, &v2, snap.dir.path()), None);
    let error = refused("a version signed by another key");
    assert!(error.contains("does not verify"), "{error}");
    // 4. a signature of other bytes
    let (v3, _, _s3) = version("org_three");
    origin.put("/snapshot.db.sig", sign(&key, &v3, snap.dir.path()), None);
    refused("a signature over other bytes");
    assert!(kw.metric("keyward_snapshot_fetches_total{result=\"rejected\"}") >= 3.0);
    // no temporary file is left beside the snapshot
    let leftovers: Vec<_> = std::fs::read_dir(snap.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".download"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // signed properly: served, and the error is gone from /readyz
    origin.put("/snapshot.db.sig", sign(&key, &v2, snap.dir.path()), None);
    assert_served(&kw, &key2, 15, "the properly signed version");
    let (status, ready) = kw.readyz();
    assert_eq!(status, 200);
    assert!(ready["snapshot"]["last_reload_error"].is_null(), "{ready}");
    assert!(!ready["degraded"]
        .to_string()
        .contains("snapshot_reload_failing"));
}

#[test]
fn a_verify_key_in_base64url_as_a_jwk_carries_it_verifies() {
    // SPEC §8.2: standard or URL-safe alphabet, padding optional
    let origin = Origin::start();
    let snap = Snap::new();
    let (key, public) = key_pair(snap.dir.path(), "control-plane");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&public)
        .unwrap();
    let jwk_x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
    let (v1, key1, _s1) = version("org_one");
    origin.put("/snapshot.db.sig", sign(&key, &v1, snap.dir.path()), None);
    origin.put("/snapshot.db", v1, None);
    let kw = Keyward::start(
        &snap,
        Opts::new(echo())
            .set("snapshot.source", origin.url("/snapshot.db"))
            .set("snapshot.verify_key", jwk_x.as_str()),
    );
    assert_served(&kw, &key1, 10, "a version signed for a base64url key");
    // and it is the same key: another one's signature is refused
    let (other, _) = key_pair(snap.dir.path(), "intruder");
    let (v2, key2, _s2) = version("org_two");
    origin.put("/snapshot.db.sig", sign(&other, &v2, snap.dir.path()), None);
    origin.put("/snapshot.db", v2, None);
    assert!(
        wait_until(Duration::from_secs(10), || kw
            .metric("keyward_snapshot_fetches_total{result=\"rejected\"}")
            >= 1.0),
        "{}",
        kw.log()
    );
    assert_eq!(kw.get("/api/v1/x", Some(&key2)).status, 401);
    // `keyward check` accepts the same value
    let cfg = snap.dir.path().join("check.toml");
    std::fs::write(
        &cfg,
        format!(
            "[upstream]\naddress = \"127.0.0.1:1\"\n[snapshot]\npath = \"{}\"\nsource = \"{}\"\nverify_key = \"{jwk_x}\"\n",
            snap.path.display(),
            origin.url("/snapshot.db")
        ),
    )
    .unwrap();
    keyward_ok(["check".as_ref(), "--config".as_ref(), cfg.as_os_str()]);
}

#[test]
fn an_unreachable_origin_degrades_readyz_but_keeps_serving() {
    let origin = Origin::start();
    let (v1, key1, _s1) = version("org_one");
    origin.put("/snapshot.db", v1, None);
    let snap = Snap::new();
    // an origin address nothing listens on after the first version
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let kw = Keyward::start(
        &snap,
        Opts::new(echo()).set("snapshot.source", format!("http://{dead}/snapshot.db")),
    );
    let (status, ready) = kw.readyz();
    assert!(
        wait_until(Duration::from_secs(10), || kw.readyz().1["degraded"]
            .to_string()
            .contains("snapshot_source_unreachable")),
        "{status} {ready}"
    );
    assert!(kw.metric("keyward_snapshot_fetches_total{result=\"failed\"}") >= 1.0);
    // what the replica has keeps serving (its own file here)
    let key = snap.org("org_local", "free").api_key("org_local");
    assert_served(&kw, &key, 10, "the replica's own file");
    let _ = key1;
}

#[test]
fn snapshot_sign_writes_what_openssl_verifies() {
    let dir = tempfile::tempdir().unwrap();
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("SKIP: openssl is not installed");
        return;
    }
    let key = dir.path().join("k.pem");
    let ok = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(ok.success());
    let sig_file = sign(&key, b"bytes of a snapshot", dir.path());
    let file = dir.path().join("to-sign.db");
    let sig = base64::engine::general_purpose::STANDARD
        .decode(std::str::from_utf8(&sig_file).unwrap().trim())
        .unwrap();
    std::fs::write(dir.path().join("sig.bin"), sig).unwrap();
    let public = dir.path().join("pub.pem");
    assert!(Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap()
        .success());
    let verify = Command::new("openssl")
        .args(["pkeyutl", "-verify", "-rawin", "-pubin", "-inkey"])
        .arg(&public)
        .arg("-in")
        .arg(&file)
        .arg("-sigfile")
        .arg(dir.path().join("sig.bin"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&verify.stdout)
    );
    // and the PEM public key works as verify_key
    let mut body = String::new();
    std::fs::File::open(&public)
        .unwrap()
        .read_to_string(&mut body)
        .unwrap();
    assert!(body.contains("BEGIN PUBLIC KEY"));
}

#[test]
fn an_s3_source_on_an_s3_api_server_is_fetched_verified_and_followed() {
    let moto = start_moto();
    let snap = Snap::new();
    let (key, public) = key_pair(snap.dir.path(), "control-plane");
    let (v1, key1, _s1) = version("org_one");
    s3_put(&moto, "snapshots", "prod/snapshot.db", &v1, snap.dir.path());
    let sig = sign(&key, &v1, snap.dir.path());
    s3_put(
        &moto,
        "snapshots",
        "prod/snapshot.db.sig",
        &sig,
        snap.dir.path(),
    );
    let mut opts = Opts::new(echo())
        .set("snapshot.source", "s3://snapshots/prod/snapshot.db")
        .set("snapshot.verify_key", public.as_str());
    opts.env
        .extend(S3_ENV.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    opts.env
        .push(("AWS_ENDPOINT".into(), moto.endpoint.clone()));
    opts.env.push(("AWS_ALLOW_HTTP".into(), "true".into()));
    let kw = Keyward::start(&snap, opts);
    assert_served(&kw, &key1, 15, "the S3 version");
    // unchanged: conditional requests only
    assert!(
        wait_until(Duration::from_secs(10), || kw
            .metric("keyward_snapshot_fetches_total{result=\"not_modified\"}")
            >= 2.0),
        "{}",
        kw.log()
    );
    assert_eq!(
        kw.metric("keyward_snapshot_fetches_total{result=\"updated\"}"),
        1.0
    );
    // a new version, signed second (the signature lands after the object)
    let (v2, key2, _s2) = version("org_two");
    s3_put(&moto, "snapshots", "prod/snapshot.db", &v2, snap.dir.path());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        kw.get("/api/v1/x", Some(&key2)).status,
        401,
        "not signed yet"
    );
    let sig = sign(&key, &v2, snap.dir.path());
    s3_put(
        &moto,
        "snapshots",
        "prod/snapshot.db.sig",
        &sig,
        snap.dir.path(),
    );
    assert_served(&kw, &key2, 15, "the S3 version signed second");
    assert_eq!(kw.get("/api/v1/x", Some(&key1)).status, 401);
}
