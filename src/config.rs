//! Configuration: the one TOML file (SPEC §8.1), parsed into raw serde structs
//! that reject unknown keys, then validated into [`Config`], the model the rest
//! of keyward trusts. Nothing here touches the network or the snapshot.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::routes::{RawRoute, RouteTable};

/// Why a config file was refused. The message always names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------- raw layer

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub upstream: RawUpstream,
    #[serde(default)]
    pub snapshot: RawSnapshot,
    #[serde(default)]
    pub cache: RawCache,
    #[serde(default)]
    pub session: RawSession,
    #[serde(default)]
    pub rate_limit: RawRateLimit,
    #[serde(default)]
    pub scopes: RawScopes,
    #[serde(default)]
    pub mcp: RawMcp,
    #[serde(default)]
    pub plans: HashMap<String, RawPlan>,
    #[serde(default, rename = "route")]
    pub routes: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub listen: String,
    pub admin_listen: String,
    pub threads: usize,
    pub trusted_proxies: Vec<String>,
    pub public_url: String,
    pub shutdown_grace_s: u64,
    pub max_body_inspect_bytes: usize,
    pub tls: Option<RawTls>,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            admin_listen: "127.0.0.1:9090".into(),
            threads: 2,
            trusted_proxies: Vec::new(),
            public_url: String::new(),
            shutdown_grace_s: 5,
            max_body_inspect_bytes: 1 << 20,
            tls: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstream {
    pub address: String,
    pub tls: bool,
    pub sni: String,
    pub ca_file: String,
    pub connect_timeout_ms: u64,
    pub read_timeout_ms: u64,
    pub strip_credentials: bool,
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:3000".into(),
            tls: false,
            sni: String::new(),
            ca_file: String::new(),
            connect_timeout_ms: 1000,
            read_timeout_ms: 60_000,
            strip_credentials: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSnapshot {
    pub path: String,
    pub poll_interval_ms: u64,
    pub max_staleness_s: u64,
}

impl Default for RawSnapshot {
    fn default() -> Self {
        Self {
            path: "snapshot.db".into(),
            poll_interval_ms: 1000,
            max_staleness_s: 300,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCache {
    pub capacity: u64,
    pub ttl_s: u64,
    pub negative_ttl_s: u64,
}

impl Default for RawCache {
    fn default() -> Self {
        Self {
            capacity: 100_000,
            ttl_s: 60,
            negative_ttl_s: 5,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSession {
    pub secret_env: String,
    pub secret: String,
    pub cookie_names: Vec<String>,
    pub trusted_origins: Vec<String>,
}

impl std::fmt::Debug for RawSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawSession")
            .field("secret_env", &self.secret_env)
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Default for RawSession {
    fn default() -> Self {
        Self {
            secret_env: "BETTER_AUTH_SECRET".into(),
            secret: String::new(),
            cookie_names: vec![
                "__Secure-better-auth.session_token".into(),
                "better-auth.session_token".into(),
            ],
            trusted_origins: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRateLimit {
    pub window_s: u64,
    pub auth_failures_per_ip: u64,
    pub service_keys_limited: bool,
    pub backend: String,
    pub redis_url: String,
    pub redis_timeout_ms: u64,
    /// Required with `backend = "redis"` (SPEC §6): no default.
    pub expected_replicas: Option<u64>,
    pub redis_batch: u64,
    pub redis_sync_interval_ms: u64,
}

impl Default for RawRateLimit {
    fn default() -> Self {
        Self {
            window_s: 60,
            auth_failures_per_ip: 30,
            service_keys_limited: false,
            backend: "local".into(),
            redis_url: "redis://127.0.0.1:6379/0".into(),
            redis_timeout_ms: 5,
            expected_replicas: None,
            redis_batch: 16,
            redis_sync_interval_ms: 10,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawScopes {
    pub unknown_workspaces: String,
}

impl Default for RawScopes {
    fn default() -> Self {
        Self {
            unknown_workspaces: "deny".into(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMcp {
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlan {
    pub requests_per_window: u64,
}

// ---------------------------------------------------------------- model

/// The BetterAuth secret. Deliberately not `Debug`/`Display`.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub threads: usize,
    pub trusted_proxies: Vec<IpNet>,
    pub public_url: String,
    pub shutdown_grace: Duration,
    pub max_body_inspect_bytes: usize,
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// `host:port`; resolved at start.
    pub address: SocketAddr,
    pub tls: bool,
    pub sni: String,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub strip_credentials: bool,
}

#[derive(Debug, Clone)]
pub struct SnapshotConfig {
    pub path: PathBuf,
    pub poll_interval: Duration,
    pub max_staleness: Duration,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub capacity: u64,
    pub ttl: Duration,
    pub negative_ttl: Duration,
}

#[derive(Clone)]
pub struct SessionConfig {
    pub secret: Option<Secret>,
    pub cookie_names: Vec<String>,
    pub trusted_origins: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitBackend {
    Local,
    Redis(RedisConfig),
}

/// `rate_limit.backend = "redis"` settings (see `ratelimit::shared`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    pub url: String,
    /// Budget for one Redis round trip; past it the replica falls back.
    pub timeout: Duration,
    pub expected_replicas: u64,
    /// Most requests one replica admits per organization before Redis has
    /// acknowledged them.
    pub batch: u64,
    /// Longest time an admitted request waits to be sent to Redis.
    pub sync_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub window_s: u64,
    pub auth_failures_per_ip: u64,
    pub service_keys_limited: bool,
    pub backend: RateLimitBackend,
}

/// What a workspace id the snapshot lacks gets (SPEC §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownWorkspaces {
    /// 403 SCOPE_DENIED `unknown_workspace` (the default)
    Deny,
    /// scoped keys by their list alone, others pass: the upstream decides
    Pass,
}

#[derive(Debug, Clone)]
pub struct McpConfig {
    /// `Origin` values allowed on `auth = "mcp"` routes, compared exactly.
    pub allowed_origins: Vec<String>,
}

/// The validated configuration.
#[derive(Clone)]
pub struct Config {
    pub source: Option<PathBuf>,
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub snapshot: SnapshotConfig,
    pub cache: CacheConfig,
    pub session: SessionConfig,
    pub rate_limit: RateLimitConfig,
    pub unknown_workspaces: UnknownWorkspaces,
    pub mcp: McpConfig,
    /// plan name → requests per window
    pub plans: HashMap<String, u64>,
    pub routes: RouteTable,
}

impl Config {
    /// Read, parse and validate a config file. Relative paths resolve against
    /// the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut cfg = Config::from_toml_str(&text, &base).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })?;
        cfg.source = Some(path.to_path_buf());
        cfg.check_tls_files()?;
        Ok(cfg)
    }

    /// The PEM files TLS names must exist and hold what they should, so a bad
    /// path is a startup (and `keyward check`) error, not a failed handshake.
    fn check_tls_files(&self) -> Result<(), ConfigError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let certs = |key: &str, path: &Path| -> Result<(), ConfigError> {
            let found = CertificateDer::pem_file_iter(path)
                .map_err(|e| invalid(key, format!("{}: {e}", path.display())))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(key, format!("{}: {e}", path.display())))?;
            if found.is_empty() {
                return Err(invalid(
                    key,
                    format!("{}: no PEM certificate", path.display()),
                ));
            }
            Ok(())
        };
        if let Some(tls) = &self.server.tls {
            certs("server.tls.cert", &tls.cert)?;
            PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| {
                invalid(
                    "server.tls.key",
                    format!("{}: no usable PEM private key ({e})", tls.key.display()),
                )
            })?;
        }
        if let Some(ca) = &self.upstream.ca_file {
            certs("upstream.ca_file", ca)?;
        }
        Ok(())
    }

    /// Parse and validate TOML text; `base` resolves relative paths.
    pub fn from_toml_str(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<inline>"),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        Config::validate(raw, base, |name| std::env::var(name).ok())
    }

    /// Turn raw structs into the trusted model. `env` reads environment
    /// variables (injected for tests).
    pub fn validate(
        raw: RawConfig,
        base: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let resolve = |p: &str| -> PathBuf {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let addr = |key: &str, value: &str| -> Result<SocketAddr, ConfigError> {
            use std::net::ToSocketAddrs;
            value
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| invalid(key, format!("`{value}` is not a host:port address")))
        };

        let s = raw.server;
        if s.threads == 0 {
            return Err(invalid("server.threads", "must be at least 1"));
        }
        let trusted_proxies = s
            .trusted_proxies
            .iter()
            .map(|c| {
                c.parse::<IpNet>()
                    .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| invalid("server.trusted_proxies", format!("`{c}` is not a CIDR")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if s.max_body_inspect_bytes == 0 {
            return Err(invalid("server.max_body_inspect_bytes", "must be positive"));
        }
        let server = ServerConfig {
            listen: addr("server.listen", &s.listen)?,
            admin_listen: addr("server.admin_listen", &s.admin_listen)?,
            threads: s.threads,
            trusted_proxies,
            public_url: s.public_url.trim_end_matches('/').to_string(),
            shutdown_grace: Duration::from_secs(s.shutdown_grace_s),
            max_body_inspect_bytes: s.max_body_inspect_bytes,
            tls: s.tls.map(|t| TlsConfig {
                cert: resolve(&t.cert),
                key: resolve(&t.key),
            }),
        };

        let u = raw.upstream;
        if u.connect_timeout_ms == 0 || u.read_timeout_ms == 0 {
            return Err(invalid("upstream", "timeouts must be positive"));
        }
        let upstream = UpstreamConfig {
            address: addr("upstream.address", &u.address)?,
            sni: if u.sni.is_empty() {
                u.address
                    .rsplit_once(':')
                    .map(|(h, _)| h.to_string())
                    .unwrap_or_default()
            } else {
                u.sni
            },
            tls: u.tls,
            ca_file: (!u.ca_file.is_empty()).then(|| resolve(&u.ca_file)),
            connect_timeout: Duration::from_millis(u.connect_timeout_ms),
            read_timeout: Duration::from_millis(u.read_timeout_ms),
            strip_credentials: u.strip_credentials,
        };

        let sn = raw.snapshot;
        if sn.poll_interval_ms == 0 {
            return Err(invalid("snapshot.poll_interval_ms", "must be positive"));
        }
        let snapshot = SnapshotConfig {
            path: resolve(&sn.path),
            poll_interval: Duration::from_millis(sn.poll_interval_ms),
            max_staleness: Duration::from_secs(sn.max_staleness_s),
        };

        let c = raw.cache;
        if c.capacity == 0 {
            return Err(invalid("cache.capacity", "must be positive"));
        }
        let cache = CacheConfig {
            capacity: c.capacity,
            ttl: Duration::from_secs(c.ttl_s.max(1)),
            negative_ttl: Duration::from_secs(c.negative_ttl_s),
        };

        let se = raw.session;
        let secret = if !se.secret.is_empty() {
            Some(Secret::new(se.secret.into_bytes()))
        } else if se.secret_env.is_empty() {
            None
        } else {
            env(&se.secret_env)
                .filter(|v| !v.is_empty())
                .map(|v| Secret::new(v.into_bytes()))
        };
        if se.cookie_names.is_empty() {
            return Err(invalid(
                "session.cookie_names",
                "must name at least one cookie",
            ));
        }
        let session = SessionConfig {
            secret,
            cookie_names: se.cookie_names,
            trusted_origins: se
                .trusted_origins
                .into_iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        };

        let r = raw.rate_limit;
        if r.window_s == 0 {
            return Err(invalid("rate_limit.window_s", "must be positive"));
        }
        if r.expected_replicas == Some(0) {
            return Err(invalid(
                "rate_limit.expected_replicas",
                "must be at least 1",
            ));
        }
        if r.redis_batch == 0 {
            return Err(invalid("rate_limit.redis_batch", "must be at least 1"));
        }
        if r.redis_timeout_ms == 0 {
            return Err(invalid("rate_limit.redis_timeout_ms", "must be positive"));
        }
        if r.redis_sync_interval_ms == 0 {
            return Err(invalid(
                "rate_limit.redis_sync_interval_ms",
                "must be positive",
            ));
        }
        let backend = match r.backend.as_str() {
            "local" => RateLimitBackend::Local,
            "redis" => {
                if let Err(e) = redis::Client::open(r.redis_url.as_str()) {
                    return Err(invalid("rate_limit.redis_url", e.to_string()));
                }
                // Without it every replica would fall back to the full
                // limit during an outage: replicas × limit (SPEC §6).
                let Some(expected_replicas) = r.expected_replicas else {
                    return Err(invalid(
                        "rate_limit.expected_replicas",
                        "required with backend = \"redis\" (the number of replicas sharing the limit; each admits limit / expected_replicas while Redis is unreachable)",
                    ));
                };
                RateLimitBackend::Redis(RedisConfig {
                    url: r.redis_url,
                    timeout: Duration::from_millis(r.redis_timeout_ms),
                    expected_replicas,
                    batch: r.redis_batch,
                    sync_interval: Duration::from_millis(r.redis_sync_interval_ms),
                })
            }
            other => {
                return Err(invalid(
                    "rate_limit.backend",
                    format!("`{other}`: expected \"local\" or \"redis\""),
                ))
            }
        };
        let rate_limit = RateLimitConfig {
            window_s: r.window_s,
            auth_failures_per_ip: r.auth_failures_per_ip,
            service_keys_limited: r.service_keys_limited,
            backend,
        };

        let unknown_workspaces = match raw.scopes.unknown_workspaces.as_str() {
            "deny" => UnknownWorkspaces::Deny,
            "pass" => UnknownWorkspaces::Pass,
            other => {
                return Err(invalid(
                    "scopes.unknown_workspaces",
                    format!("`{other}`: expected \"deny\" or \"pass\""),
                ))
            }
        };
        if let Some(o) = raw
            .mcp
            .allowed_origins
            .iter()
            .find(|o| o.is_empty() || !o.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(invalid(
                "mcp.allowed_origins",
                format!("`{o}` is not an Origin (scheme://host[:port])"),
            ));
        }
        let mcp = McpConfig {
            allowed_origins: raw.mcp.allowed_origins,
        };

        let plans = raw
            .plans
            .into_iter()
            .map(|(k, v)| (k, v.requests_per_window))
            .collect();

        let routes = RouteTable::compile(raw.routes)
            .map_err(|e| invalid(format!("route[{}] ({})", e.index, e.path), e.message))?;

        Ok(Config {
            source: None,
            server,
            upstream,
            snapshot,
            cache,
            session,
            rate_limit,
            unknown_workspaces,
            mcp,
            plans,
            routes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Path::new("/etc/keyward"))
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = parse("").unwrap();
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.server.admin_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(c.server.max_body_inspect_bytes, 1_048_576);
        assert_eq!(c.snapshot.path, PathBuf::from("/etc/keyward/snapshot.db"));
        assert_eq!(c.snapshot.poll_interval, Duration::from_millis(1000));
        assert_eq!(c.cache.capacity, 100_000);
        assert_eq!(c.rate_limit.window_s, 60);
        assert_eq!(c.session.cookie_names.len(), 2);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("[server]\nlisten = \"127.0.0.1:1\"\nlissten = 3\n")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("lissten"), "{err}");
        let err = parse("[nope]\n").err().unwrap().to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = parse("[upstream]\naddress = \"nowhere\"\n")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("upstream.address"), "{err}");
        let err = parse("[server]\ntrusted_proxies = [\"10.0.0.0/99\"]\n")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("server.trusted_proxies"), "{err}");
    }

    #[test]
    fn redis_needs_expected_replicas() {
        let err = parse("[rate_limit]\nbackend = \"redis\"\n")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("rate_limit.expected_replicas"), "{err}");
        let c = parse("[rate_limit]\nbackend = \"redis\"\nexpected_replicas = 3\n").unwrap();
        assert!(
            matches!(c.rate_limit.backend, RateLimitBackend::Redis(ref r) if r.expected_replicas == 3)
        );
        // ignored with the local backend
        assert!(parse("[rate_limit]\nexpected_replicas = 3\n").is_ok());
    }

    #[test]
    fn scopes_and_mcp_sections() {
        let c = parse("").unwrap();
        assert_eq!(c.unknown_workspaces, UnknownWorkspaces::Deny);
        assert!(c.mcp.allowed_origins.is_empty());
        let c = parse("[scopes]\nunknown_workspaces = \"pass\"\n[mcp]\nallowed_origins = [\"https://a.example\"]\n").unwrap();
        assert_eq!(c.unknown_workspaces, UnknownWorkspaces::Pass);
        assert_eq!(c.mcp.allowed_origins, ["https://a.example"]);
        let err = parse("[scopes]\nunknown_workspaces = \"maybe\"\n")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("scopes.unknown_workspaces"), "{err}");
    }

    #[test]
    fn the_shipped_config_is_valid() {
        let text = include_str!("../config/keyward.toml");
        let c = parse(text).unwrap();
        assert!(c.routes.len() > 10);
        let docker = parse(include_str!("../config/docker.toml")).unwrap();
        assert_eq!(docker.server.admin_listen.to_string(), "0.0.0.0:9090");
    }
}
