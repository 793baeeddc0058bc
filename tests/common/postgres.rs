//! A throwaway PostgreSQL cluster per test (`initdb` into a temp dir,
//! `postgres` on a free loopback port, trust auth), stopped on drop. As
//! root the cluster runs as the `postgres` user (Debian's package creates
//! it), since postgres refuses to run as root. Never a mock: the tests of
//! `keyward sync` need the real thing, so a missing server is a failure
//! (scripts/setup.sh installs Debian's postgresql).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Postgres {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub addr: SocketAddr,
    child: Option<Child>,
    bin: PathBuf,
}

fn bin_dir() -> PathBuf {
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
    {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !p.is_empty() {
            let real = std::fs::canonicalize(&p).unwrap_or(PathBuf::from(&p));
            return real.parent().unwrap().to_path_buf();
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .filter(|p| p.join("initdb").exists())
        .expect("PostgreSQL is not installed: run scripts/setup.sh (apt-get install postgresql)")
}

fn as_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// `bin/NAME ARGS` as the cluster's owner.
fn pg_command(bin: &Path, name: &str) -> Command {
    if as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(name));
        c
    } else {
        Command::new(bin.join(name))
    }
}

impl Postgres {
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        if as_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown to postgres (does the user exist?)");
        }
        let out = pg_command(&bin, "initdb")
            .arg("-D")
            .arg(&data)
            .args(["--auth=trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres {
            dir,
            data,
            addr: super::free_port(),
            child: None,
            bin,
        };
        pg.run();
        pg
    }

    /// Start the server (again) on the same port and data.
    pub fn run(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("postgres.log")).unwrap();
        let child = pg_command(&self.bin, "postgres")
            .arg("-D")
            .arg(&self.data)
            .args(["-p", &self.addr.port().to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args([
                "-c",
                &format!("unix_socket_directories={}", self.dir.path().display()),
            ])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ok = self.psql_quiet("SELECT 1").is_ok();
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("postgres did not start: {}", self.log());
    }

    /// Stop the server (fast shutdown), keeping the data.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = pg_command(&self.bin, "pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["stop", "-m", "fast", "-w"])
                .output();
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.addr.port()
        )
    }

    fn psql_quiet(&self, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.addr.port().to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-c", sql])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Run SQL (several statements allowed); panics with psql's error.
    pub fn sql(&self, sql: &str) -> String {
        self.psql_quiet(sql)
            .unwrap_or_else(|e| panic!("psql: {e}\n{sql}"))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// BetterAuth's core, organization-plugin and api-key-plugin tables as its
/// migrations create them (better-auth 1.4, timestamptz), for the tests of
/// `keyward sync` (each adds its own rows).
pub const BETTERAUTH_TABLES: &str = r#"
CREATE TABLE "user" ("id" text NOT NULL PRIMARY KEY, "name" text NOT NULL, "email" text NOT NULL UNIQUE,
  "emailVerified" boolean NOT NULL, "image" text, "createdAt" timestamptz DEFAULT CURRENT_TIMESTAMP NOT NULL,
  "updatedAt" timestamptz DEFAULT CURRENT_TIMESTAMP NOT NULL);
CREATE TABLE "session" ("id" text NOT NULL PRIMARY KEY, "expiresAt" timestamptz NOT NULL,
  "token" text NOT NULL UNIQUE, "createdAt" timestamptz DEFAULT CURRENT_TIMESTAMP NOT NULL,
  "updatedAt" timestamptz NOT NULL, "ipAddress" text, "userAgent" text,
  "userId" text NOT NULL REFERENCES "user"("id") ON DELETE CASCADE, "activeOrganizationId" text);
CREATE TABLE "organization" ("id" text NOT NULL PRIMARY KEY, "name" text NOT NULL, "slug" text NOT NULL UNIQUE,
  "logo" text, "createdAt" timestamptz NOT NULL, "metadata" text);
CREATE TABLE "member" ("id" text NOT NULL PRIMARY KEY,
  "organizationId" text NOT NULL REFERENCES "organization"("id") ON DELETE CASCADE,
  "userId" text NOT NULL REFERENCES "user"("id") ON DELETE CASCADE,
  "role" text NOT NULL, "createdAt" timestamptz NOT NULL);
CREATE TABLE "apikey" ("id" text NOT NULL PRIMARY KEY, "name" text, "start" text, "prefix" text,
  "key" text NOT NULL, "userId" text NOT NULL REFERENCES "user"("id") ON DELETE CASCADE,
  "refillInterval" integer, "refillAmount" integer, "lastRefillAt" timestamptz,
  "enabled" boolean, "rateLimitEnabled" boolean, "rateLimitTimeWindow" integer, "rateLimitMax" integer,
  "requestCount" integer, "remaining" integer, "lastRequest" timestamptz, "expiresAt" timestamptz,
  "createdAt" timestamptz NOT NULL, "updatedAt" timestamptz NOT NULL, "permissions" text, "metadata" text);
"#;
