//! Configuration: the one TOML file (SPEC §8.1) read in two steps, as river
//! does — [`raw`] structs that reject unknown keys, then [`validate`] into
//! [`Config`], the model the rest of keyward trusts — and [`reload`], which
//! says which changes a SIGHUP may apply (SPEC §8.2).
//!
//! Config reads its file and the PEM files it names, nothing else: it never
//! opens a socket, never touches the snapshot and never applies a config to
//! the running server (that is `server`'s and the engine's job).
//!
//! - `raw`: serde structs and the documented defaults
//! - `model`: the validated types
//! - `validate`: raw → model, one function per section
//! - `reload`: live or frozen, for SIGHUP

use std::path::{Path, PathBuf};

mod model;
mod raw;
mod reload;
pub mod routes;
pub mod source;
mod validate;

pub use model::{
    CacheConfig, Config, McpConfig, Plan, ProxyVersion, RateLimitBackend, RateLimitConfig,
    RedisConfig, RedisTopology, Secret, ServerConfig, SessionConfig, SnapshotConfig, TlsConfig,
    TracingConfig, UnknownWorkspaces, UpstreamConfig, UsageConfig,
};
pub use raw::{
    RawCache, RawConfig, RawMcp, RawPlan, RawRateLimit, RawScopes, RawServer, RawSession,
    RawSnapshot, RawTls, RawTracing, RawUpstream,
};
pub use reload::frozen_change;

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
        validate::tls_files(&cfg)?;
        Ok(cfg)
    }

    /// Parse and validate TOML text; `base` resolves relative paths.
    pub fn from_toml_str(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<inline>"),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        Config::validate(raw, base, |name| std::env::var(name).ok())
    }

    /// Turn raw structs into the trusted model, section by section in file
    /// order. `env` reads environment variables (injected for tests).
    pub fn validate(
        raw: RawConfig,
        base: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let RawConfig {
            server,
            upstream,
            snapshot,
            cache,
            session,
            rate_limit,
            tracing,
            scopes,
            mcp,
            usage,
            plans,
            routes,
        } = raw;
        let plans = validate::plans(plans)?;
        let routes = validate::routes(routes)?;
        validate::route_groups(&routes, &plans)?;
        Ok(Config {
            source: None,
            server: validate::server(server, base)?,
            upstream: validate::upstream(upstream, base)?,
            snapshot: validate::snapshot(snapshot, base)?,
            cache: validate::cache(cache)?,
            session: validate::session(session, &env)?,
            rate_limit: validate::rate_limit(rate_limit, base)?,
            tracing: validate::tracing(tracing)?,
            unknown_workspaces: validate::scopes(scopes)?,
            mcp: validate::mcp(mcp)?,
            usage: validate::usage(usage, &env)?,
            plans,
            routes,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
    fn zero_timeouts_name_their_key() {
        for key in ["connect_timeout_ms", "read_timeout_ms"] {
            let err = parse(&format!("[upstream]\n{key} = 0\n"))
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(&format!("upstream.{key}")), "{err}");
        }
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
        let text = include_str!("../../config/keyward.toml");
        let c = parse(text).unwrap();
        assert!(c.routes.len() > 10);
        let docker = parse(include_str!("../../config/docker.toml")).unwrap();
        assert_eq!(docker.server.admin_listen.to_string(), "0.0.0.0:9090");
    }

    /// SPEC §6.1 and §8.4 keys: each bad value is an error naming its key.
    #[test]
    fn per_key_policy_and_usage_keys_are_checked() {
        let ok = parse(
            "[rate_limit]\nmode = \"shadow\"\n[plans.pro]\nrequests_per_window = 10\n\
             [plans.pro.limits.uploads]\nrequests_per_window = 2\n\
             [[route]]\npath = \"/u/**\"\nlimit = \"uploads\"\ncost = 3\nlimit_mode = \"enforce\"\n\
             [usage]\npush_url = \"https://cp.example/v1/usage\"\n",
        )
        .unwrap();
        assert_eq!(ok.rate_limit.mode, routes::LimitMode::Shadow);
        assert_eq!(ok.plans["pro"].limits["uploads"], 2);
        let r = &ok.routes.routes()[0];
        assert_eq!(
            (r.cost, r.limit_group.as_deref(), r.limit_mode),
            (3, Some("uploads"), Some(routes::LimitMode::Enforce))
        );
        assert!(ok.usage.push_url.is_some());
        assert_eq!(ok.usage.max_keys, 100_000);
        for (text, names) in [
            ("[rate_limit]\nmode = \"dry\"", "rate_limit.mode"),
            ("[[route]]\npath = \"/x\"\ncost = 0", "cost"),
            ("[[route]]\npath = \"/x\"\nlimit = \"a b\"", "limit"),
            ("[[route]]\npath = \"/x\"\nlimit_mode = \"off\"", "limit_mode"),
            ("[[route]]\npath = \"/x\"\nauth = \"none\"\ncost = 2", "need authentication"),
            ("[plans.p]\nrequests_per_window = 1\n[plans.p.limits.\"a/b\"]\nrequests_per_window = 1", "plans.p.limits"),
            ("[usage]\npush_url = \"ftp://x/\"", "usage.push_url"),
            ("[usage]\npush_interval_ms = 0", "usage.push_interval_ms"),
            ("[usage]\nmax_keys = 0", "usage.max_keys"),
            ("[usage]\npush_tokn_env = \"X\"", "push_tokn_env"),
        ] {
            let e = parse(text).err().unwrap_or_else(|| panic!("accepted: {text}")).to_string();
            assert!(e.contains(names), "{text}: {e}");
        }
    }
}
