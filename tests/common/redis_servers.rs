//! Real Redis topologies on loopback for tests/redis.rs, each killed on drop
//! with its temp dir: a TLS server with certificates made here, a 3-master
//! Redis Cluster, a master + replica watched by one sentinel. Only the
//! Debian `redis-server` / `redis-cli` binaries (scripts/setup.sh): the
//! sentinel is `redis-server --sentinel`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_until};

/// One `redis-server` process.
pub struct RedisProc {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    args: Vec<String>,
}

impl RedisProc {
    /// Start `redis-server` with `args` after the common ones (loopback, no
    /// persistence, its own dir); `ready` says when it may be used.
    pub fn spawn(port: u16, args: &[String]) -> RedisProc {
        let dir = tempfile::tempdir().unwrap();
        let mut p = RedisProc {
            child: None,
            port,
            dir,
            args: args.to_vec(),
        };
        p.start();
        p
    }

    pub fn start(&mut self) {
        let mut cmd = Command::new("redis-server");
        if self.args.first().map(String::as_str) == Some("--sentinel") {
            // A sentinel needs a writable config file as its first argument.
            let conf = self.dir.path().join("sentinel.conf");
            if !conf.exists() {
                std::fs::write(&conf, "").unwrap();
            }
            cmd.arg(&conf);
        }
        cmd.args(&self.args)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if !self.args.iter().any(|a| a == "--tls-port") {
            cmd.args(["--port", &self.port.to_string()]);
        }
        self.child = Some(
            cmd.spawn()
                .expect("redis-server is installed by scripts/setup.sh"),
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-cli` against a plain port; its trimmed stdout.
pub fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// A port whose cluster bus port (+10000) is free too.
pub fn cluster_port() -> u16 {
    loop {
        let p = free_port().port();
        if p < 55_536 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

/// A CA and a server certificate for 127.0.0.1 / localhost, as PEM files.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn tls_files(dir: &Path) -> TlsFiles {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "keyward test redis CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let ca_issuer = rcgen::Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = params.signed_by(&key, &ca_issuer).unwrap();
    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("redis.pem"),
        key: dir.join("redis.key"),
    };
    std::fs::write(&files.ca, ca_cert.pem()).unwrap();
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    files
}

/// Whether this `redis-server` was built with TLS (Debian's is).
pub fn redis_has_tls() -> bool {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("redis-server")
        .args(["--port", "0", "--tls-port", "1", "--tls-cert-file"])
        .arg(dir.path().join("none.pem"))
        .output();
    match out {
        Ok(o) => !String::from_utf8_lossy(&o.stdout).contains("not built with TLS"),
        Err(_) => false,
    }
}

/// `redis-server` listening on TLS only.
pub struct TlsRedis {
    pub server: RedisProc,
    pub files: TlsFiles,
    pub certs: tempfile::TempDir,
}

impl TlsRedis {
    pub fn start() -> TlsRedis {
        let certs = tempfile::tempdir().unwrap();
        let files = tls_files(certs.path());
        let port = free_port().port();
        let args: Vec<String> = vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            files.cert.display().to_string(),
            "--tls-key-file".into(),
            files.key.display().to_string(),
            "--tls-ca-cert-file".into(),
            files.ca.display().to_string(),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        let server = RedisProc::spawn(port, &args);
        let r = TlsRedis {
            server,
            files,
            certs,
        };
        assert!(
            wait_until(Duration::from_secs(10), || r.cli(&["PING"]) == "PONG"),
            "TLS redis-server did not start: {}",
            r.server.log()
        );
        r
    }

    pub fn cli(&self, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["--tls", "--cacert"])
            .arg(&self.files.ca)
            .args(["-h", "127.0.0.1", "-p", &self.server.port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0", self.server.port)
    }
}

/// A Redis Cluster of three masters, no replicas.
pub struct Cluster {
    pub nodes: Vec<RedisProc>,
}

impl Cluster {
    pub fn start() -> Cluster {
        let nodes: Vec<RedisProc> = (0..3)
            .map(|_| {
                let port = cluster_port();
                let args: Vec<String> = vec![
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    "nodes.conf".into(),
                    "--cluster-node-timeout".into(),
                    "2000".into(),
                ];
                RedisProc::spawn(port, &args)
            })
            .collect();
        for n in &nodes {
            assert!(
                wait_until(Duration::from_secs(10), || cli(n.port, &["PING"]) == "PONG"),
                "cluster node {} did not start: {}",
                n.port,
                n.log()
            );
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let c = Cluster { nodes };
        assert!(
            wait_until(Duration::from_secs(15), || c.nodes.iter().all(|n| cli(
                n.port,
                &["CLUSTER", "INFO"]
            )
            .contains("cluster_state:ok"))),
            "cluster never reached cluster_state:ok"
        );
        c
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// `GET key` through the cluster (`-c` follows MOVED).
    pub fn get(&self, key: &str) -> String {
        Command::new("redis-cli")
            .args([
                "-c",
                "-h",
                "127.0.0.1",
                "-p",
                &self.nodes[0].port.to_string(),
            ])
            .args(["GET", key])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }

    /// Port of the master that serves `key`'s slot.
    pub fn node_of(&self, key: &str) -> u16 {
        let slot: u16 = cli(self.nodes[0].port, &["CLUSTER", "KEYSLOT", key])
            .parse()
            .unwrap();
        cli(self.nodes[0].port, &["CLUSTER", "NODES"])
            .lines()
            .find(|l| l.contains("master") && owns(l, slot))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|addr| addr.split(['@', ':']).nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no master owns slot {slot}"))
    }
}

/// Whether a `CLUSTER NODES` line's slot ranges include `slot`.
fn owns(line: &str, slot: u16) -> bool {
    line.split_whitespace()
        .skip(8)
        .any(|r| match r.split_once('-') {
            Some((a, b)) => match (a.parse::<u16>(), b.parse::<u16>()) {
                (Ok(a), Ok(b)) => (a..=b).contains(&slot),
                _ => false,
            },
            None => r.parse::<u16>().ok() == Some(slot),
        })
}

/// A master, one replica, one sentinel watching them as `name`.
pub struct SentinelSet {
    pub master: RedisProc,
    pub replica: RedisProc,
    pub sentinel: RedisProc,
    pub name: String,
}

impl SentinelSet {
    pub fn start(name: &str) -> SentinelSet {
        let master = RedisProc::spawn(free_port().port(), &[]);
        assert!(wait_until(Duration::from_secs(10), || cli(
            master.port,
            &["PING"]
        ) == "PONG"));
        let replica = RedisProc::spawn(
            free_port().port(),
            &[
                "--replicaof".into(),
                "127.0.0.1".into(),
                master.port.to_string(),
            ],
        );
        assert!(
            wait_until(Duration::from_secs(10), || cli(
                replica.port,
                &["INFO", "replication"]
            )
            .contains("master_link_status:up")),
            "replica never synced: {}",
            replica.log()
        );
        let port = free_port().port();
        let sentinel = RedisProc::spawn(
            port,
            &[
                "--sentinel".into(),
                "--sentinel".into(),
                "monitor".into(),
                name.into(),
                "127.0.0.1".into(),
                master.port.to_string(),
                "1".into(),
                "--sentinel".into(),
                "down-after-milliseconds".into(),
                name.into(),
                "1000".into(),
                "--sentinel".into(),
                "failover-timeout".into(),
                name.into(),
                "5000".into(),
            ],
        );
        let s = SentinelSet {
            master,
            replica,
            sentinel,
            name: name.into(),
        };
        assert!(
            wait_until(Duration::from_secs(15), || {
                let r = cli(s.sentinel.port, &["SENTINEL", "REPLICAS", &s.name]);
                r.contains(&s.replica.port.to_string())
            }),
            "the sentinel never saw the replica: {}",
            s.sentinel.log()
        );
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.sentinel.port)
    }

    /// The port the sentinel names as the master now.
    pub fn master_port(&self) -> u16 {
        cli(
            self.sentinel.port,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &self.name],
        )
        .lines()
        .nth(1)
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(0)
    }
}
