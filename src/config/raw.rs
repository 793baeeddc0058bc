//! The raw layer: the TOML file (SPEC §8.1) exactly as serde reads it, with
//! the documented defaults. Every struct rejects unknown keys, so a typo is an
//! error naming the key. Nothing here checks a value, resolves a path or an
//! address, or reads the environment: that is `validate`'s job, and nothing
//! outside `config` should read these structs.

use std::collections::HashMap;

use serde::Deserialize;

use crate::routes::RawRoute;

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
    /// Absent: no tracing (a client's `traceparent` passes unchanged).
    #[serde(default)]
    pub tracing: Option<RawTracing>,
    #[serde(default)]
    pub scopes: RawScopes,
    #[serde(default)]
    pub mcp: RawMcp,
    #[serde(default)]
    pub usage: RawUsage,
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
    pub upgrade_sock: String,
    pub tls: Option<RawTls>,
    /// this replica's name in usage pushes (SPEC §8.4); "" = the hostname
    pub replica_id: String,
    /// forward-auth listener (SPEC §8.3); "" = off
    pub auth_listen: String,
    /// SPEC §8.3: "off" | "v1" | "v2" | "any"
    pub proxy_protocol: String,
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
            upgrade_sock: "/tmp/keyward-upgrade.sock".into(),
            tls: None,
            replica_id: String::new(),
            auth_listen: String::new(),
            proxy_protocol: "off".into(),
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
    pub source: String,
    pub verify_key: String,
}

impl Default for RawSnapshot {
    fn default() -> Self {
        Self {
            path: "snapshot.db".into(),
            poll_interval_ms: 1000,
            max_staleness_s: 300,
            source: String::new(),
            verify_key: String::new(),
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
    /// `redis_mode = "single"` only; left out, `redis://127.0.0.1:6379/0`.
    /// Optional so that cluster and sentinel modes can refuse one that is set.
    pub redis_url: Option<String>,
    pub redis_timeout_ms: u64,
    /// Required with `backend = "redis"` (SPEC §6): no default.
    pub expected_replicas: Option<u64>,
    pub redis_batch: u64,
    pub redis_sync_interval_ms: u64,
    pub redis_mode: String,
    pub redis_nodes: Vec<String>,
    pub redis_sentinel_master: String,
    pub redis_ca_file: String,
    /// SPEC §6.1: "enforce" (default) | "shadow"
    pub mode: String,
}

impl Default for RawRateLimit {
    fn default() -> Self {
        Self {
            window_s: 60,
            auth_failures_per_ip: 30,
            service_keys_limited: false,
            backend: "local".into(),
            redis_url: None,
            redis_timeout_ms: 5,
            expected_replicas: None,
            redis_batch: 16,
            redis_sync_interval_ms: 10,
            redis_mode: "single".into(),
            redis_nodes: Vec::new(),
            redis_sentinel_master: String::new(),
            redis_ca_file: String::new(),
            mode: "enforce".into(),
        }
    }
}

/// `[usage]`: per-key usage pushed to a receiver (SPEC §8.4).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUsage {
    pub push_url: String,
    pub push_interval_ms: u64,
    pub push_token_env: String,
    pub max_keys: u64,
}

impl Default for RawUsage {
    fn default() -> Self {
        Self {
            push_url: String::new(),
            push_interval_ms: 10_000,
            push_token_env: String::new(),
            max_keys: 100_000,
        }
    }
}

/// `[tracing]`: OpenTelemetry spans over OTLP/HTTP (SPEC §8.2). The
/// defaults apply to keys left out of a `[tracing]` table that is present.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTracing {
    pub endpoint: String,
    pub sample_ratio: f64,
    pub service_name: String,
    pub include_org: bool,
}

impl Default for RawTracing {
    fn default() -> Self {
        Self {
            endpoint: "http://127.0.0.1:4318/v1/traces".into(),
            sample_ratio: 1.0,
            service_name: "keyward".into(),
            include_org: false,
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
    /// concurrent streams per organization (SPEC §8.2); absent: no cap
    #[serde(default)]
    pub max_streams: Option<u64>,
    /// SPEC §6.1 limit groups: `[plans.NAME.limits.GROUP]`
    #[serde(default)]
    pub limits: HashMap<String, RawGroup>,
}

/// `[plans.NAME.limits.GROUP]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    pub requests_per_window: u64,
}
