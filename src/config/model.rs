//! The validated model: what the rest of keyward reads, trusting every value
//! (addresses resolved, paths absolute, durations typed, enums closed). These
//! types hold data only: no parsing, no checks, no I/O. A field added here
//! must be built in `validate` and classified live or frozen in `reload`
//! (both destructure these structs exhaustively, so the build says so).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::routes::RouteTable;

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
    /// the unix socket `keyward run --upgrade` takes the listeners over (SPEC §8.2)
    pub upgrade_sock: PathBuf,
    pub tls: Option<TlsConfig>,
    /// `server.replica_id`, else the hostname (usage pushes, SPEC §8.4)
    pub replica_id: String,
    /// `server.auth_listen`: the forward-auth listener (SPEC §8.3)
    pub auth_listen: Option<SocketAddr>,
    /// `server.proxy_protocol`: None off (SPEC §8.3)
    pub proxy_protocol: Option<ProxyVersion>,
}

/// The PROXY protocol version a listener takes (`server.proxy_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    V1,
    V2,
    Any,
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
    /// `snapshot.source` (SPEC §8.2): the origin polled for new versions
    pub source: Option<String>,
    /// `snapshot.verify_key`: versions from the source must be signed with it
    pub verify_key: Option<crate::config::source::VerifyKey>,
}

/// `PartialEq`: a reload compares it to decide whether to start a new cache.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Where the shared windows live (`rate_limit.redis_mode`, see
/// `ratelimit::redis`). URLs are `redis://` or `rediss://` (TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// `"single"`: `redis_url`, one server (or an endpoint that fronts one).
    Single { url: String },
    /// `"cluster"`: `redis_nodes`, seed nodes of a Redis Cluster.
    Cluster { nodes: Vec<String> },
    /// `"sentinel"`: `redis_nodes` are sentinels, which name the current
    /// master of `redis_sentinel_master`.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
    },
}

/// `rate_limit.backend = "redis"` settings (see `ratelimit::redis`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    pub topology: RedisTopology,
    /// `redis_ca_file`: PEM roots for `rediss://` (resolved against the
    /// config's directory); `None`, the bundled webpki (Mozilla) roots.
    pub ca_file: Option<PathBuf>,
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
    /// SPEC §6.1 `rate_limit.mode`; a route's `limit_mode` overrides it
    pub mode: crate::config::routes::LimitMode,
}

/// `[usage]` (SPEC §8.4): per-key usage pushed to a receiver.
#[derive(Clone)]
pub struct UsageConfig {
    /// None: off
    pub push_url: Option<url::Url>,
    pub push_interval: Duration,
    /// the bearer token for the receiver (from `push_token_env`)
    pub push_token: Option<Secret>,
    /// most distinct keys counted and waiting at once
    pub max_keys: u64,
}

/// `[tracing]` (SPEC §8.2): OpenTelemetry spans exported over OTLP/HTTP.
/// Only a build with the `otel` feature accepts it.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// `http://host:port/path` of an OTLP/HTTP (protobuf) traces receiver
    pub endpoint: String,
    /// share of new traces sampled (0.0–1.0); a client's sampled
    /// `traceparent` is followed whatever the ratio
    pub sample_ratio: f64,
    pub service_name: String,
    /// the organization id as a span attribute
    pub include_org: bool,
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

/// One `[plans.NAME]` table (SPEC §6, §6.1, §8.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub requests_per_window: u64,
    /// concurrent streams (WebSocket, SSE) per organization; None: no cap
    pub max_streams: Option<u64>,
    /// limit group → its requests per window (`[plans.NAME.limits.GROUP]`)
    pub limits: HashMap<String, u64>,
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
    /// None: no `[tracing]` table
    pub tracing: Option<TracingConfig>,
    pub unknown_workspaces: UnknownWorkspaces,
    pub mcp: McpConfig,
    pub usage: UsageConfig,
    /// plan name → its limits
    pub plans: HashMap<String, Plan>,
    pub routes: RouteTable,
}
