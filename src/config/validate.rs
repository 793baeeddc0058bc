//! Validation: raw structs in, model out, one function per section. Each
//! function destructures its raw struct exhaustively, so a key added to the
//! file format without being validated here does not compile. Every error
//! names the offending key. It resolves paths against the config file's
//! directory and reads the PEM files TLS names, but opens no socket and never
//! touches the snapshot; the one lookup beyond the file system is the name
//! resolution of `host:port` addresses (`ToSocketAddrs`).

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use super::model::{
    CacheConfig, Config, McpConfig, Plan, RateLimitBackend, RateLimitConfig, RedisConfig,
    RedisTopology, Secret, ServerConfig, SessionConfig, SnapshotConfig, TlsConfig, TracingConfig,
    UnknownWorkspaces, UpstreamConfig, UsageConfig,
};
use super::raw::{
    RawCache, RawMcp, RawPlan, RawRateLimit, RawScopes, RawServer, RawSession, RawSnapshot, RawTls,
    RawTracing, RawUpstream, RawUsage,
};
use super::{invalid, ConfigError};

mod policy;
use crate::routes::{RawRoute, RouteTable};
use policy::hostname;
pub(super) use policy::{plans, route_groups, usage};

/// A path from the file, relative to its directory unless absolute.
fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn socket_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| invalid(key, format!("`{value}` is not a host:port address")))
}

pub(super) fn server(raw: RawServer, base: &Path) -> Result<ServerConfig, ConfigError> {
    let RawServer {
        listen,
        admin_listen,
        threads,
        trusted_proxies,
        public_url,
        shutdown_grace_s,
        max_body_inspect_bytes,
        upgrade_sock,
        tls,
        replica_id,
        auth_listen,
        proxy_protocol,
    } = raw;
    let proxy_protocol = {
        use super::model::ProxyVersion as Version;
        match proxy_protocol.as_str() {
            "off" => None,
            "v1" => Some(Version::V1),
            "v2" => Some(Version::V2),
            "any" => Some(Version::Any),
            other => {
                return Err(invalid(
                    "server.proxy_protocol",
                    format!("`{other}`: expected \"off\", \"v1\", \"v2\" or \"any\""),
                ))
            }
        }
    };
    let auth_listen = if auth_listen.is_empty() {
        None
    } else {
        Some(socket_addr("server.auth_listen", &auth_listen)?)
    };
    let replica_id = if replica_id.is_empty() {
        hostname()
    } else {
        replica_id
    };
    if threads == 0 {
        return Err(invalid("server.threads", "must be at least 1"));
    }
    let trusted_proxies = trusted_proxies
        .iter()
        .map(|c| {
            c.parse::<IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| invalid("server.trusted_proxies", format!("`{c}` is not a CIDR")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if max_body_inspect_bytes == 0 {
        return Err(invalid("server.max_body_inspect_bytes", "must be positive"));
    }
    Ok(ServerConfig {
        listen: socket_addr("server.listen", &listen)?,
        admin_listen: socket_addr("server.admin_listen", &admin_listen)?,
        threads,
        trusted_proxies,
        public_url: public_url.trim_end_matches('/').to_string(),
        shutdown_grace: Duration::from_secs(shutdown_grace_s),
        max_body_inspect_bytes,
        upgrade_sock: {
            if upgrade_sock.is_empty() {
                return Err(invalid("server.upgrade_sock", "must be a path"));
            }
            // sun_path holds 108 bytes; pingora derives no longer name
            if upgrade_sock.len() > 100 {
                return Err(invalid(
                    "server.upgrade_sock",
                    "a unix socket path must be under 100 bytes",
                ));
            }
            resolve(base, &upgrade_sock)
        },
        tls: tls.map(|RawTls { cert, key }| TlsConfig {
            cert: resolve(base, &cert),
            key: resolve(base, &key),
        }),
        replica_id,
        auth_listen,
        proxy_protocol,
    })
}

pub(super) fn upstream(raw: RawUpstream, base: &Path) -> Result<UpstreamConfig, ConfigError> {
    let RawUpstream {
        address,
        tls,
        sni,
        ca_file,
        connect_timeout_ms,
        read_timeout_ms,
        strip_credentials,
    } = raw;
    if connect_timeout_ms == 0 {
        return Err(invalid("upstream.connect_timeout_ms", "must be positive"));
    }
    if read_timeout_ms == 0 {
        return Err(invalid("upstream.read_timeout_ms", "must be positive"));
    }
    Ok(UpstreamConfig {
        address: socket_addr("upstream.address", &address)?,
        sni: if sni.is_empty() {
            address
                .rsplit_once(':')
                .map(|(h, _)| h.to_string())
                .unwrap_or_default()
        } else {
            sni
        },
        tls,
        ca_file: (!ca_file.is_empty()).then(|| resolve(base, &ca_file)),
        connect_timeout: Duration::from_millis(connect_timeout_ms),
        read_timeout: Duration::from_millis(read_timeout_ms),
        strip_credentials,
    })
}

pub(super) fn snapshot(raw: RawSnapshot, base: &Path) -> Result<SnapshotConfig, ConfigError> {
    let RawSnapshot {
        path,
        poll_interval_ms,
        max_staleness_s,
        source,
        verify_key,
    } = raw;
    if poll_interval_ms == 0 {
        return Err(invalid("snapshot.poll_interval_ms", "must be positive"));
    }
    let source = (!source.trim().is_empty()).then(|| source.trim().to_string());
    let verify_key = match verify_key.trim() {
        "" => None,
        v => Some(
            crate::config::source::VerifyKey::parse(v, base)
                .map_err(|e| invalid("snapshot.verify_key", e.to_string()))?,
        ),
    };
    if verify_key.is_some() && source.is_none() {
        return Err(invalid(
            "snapshot.verify_key",
            "checks versions fetched from snapshot.source; set a source too",
        ));
    }
    if let Some(url) = &source {
        crate::config::source::parse_url(url).map_err(|e| invalid("snapshot.source", e))?;
    }
    Ok(SnapshotConfig {
        path: resolve(base, &path),
        poll_interval: Duration::from_millis(poll_interval_ms),
        max_staleness: Duration::from_secs(max_staleness_s),
        source,
        verify_key,
    })
}

pub(super) fn cache(raw: RawCache) -> Result<CacheConfig, ConfigError> {
    let RawCache {
        capacity,
        ttl_s,
        negative_ttl_s,
    } = raw;
    if capacity == 0 {
        return Err(invalid("cache.capacity", "must be positive"));
    }
    Ok(CacheConfig {
        capacity,
        ttl: Duration::from_secs(ttl_s.max(1)),
        negative_ttl: Duration::from_secs(negative_ttl_s),
    })
}

/// `env` reads environment variables (injected for tests).
pub(super) fn session(
    raw: RawSession,
    env: impl Fn(&str) -> Option<String>,
) -> Result<SessionConfig, ConfigError> {
    let RawSession {
        secret_env,
        secret,
        cookie_names,
        trusted_origins,
    } = raw;
    // An inline secret wins over the environment.
    let secret = if !secret.is_empty() {
        Some(Secret::new(secret.into_bytes()))
    } else if secret_env.is_empty() {
        None
    } else {
        env(&secret_env)
            .filter(|v| !v.is_empty())
            .map(|v| Secret::new(v.into_bytes()))
    };
    if cookie_names.is_empty() {
        return Err(invalid(
            "session.cookie_names",
            "must name at least one cookie",
        ));
    }
    Ok(SessionConfig {
        secret,
        cookie_names,
        trusted_origins: trusted_origins
            .into_iter()
            .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
            .collect(),
    })
}

pub(super) fn rate_limit(raw: RawRateLimit, base: &Path) -> Result<RateLimitConfig, ConfigError> {
    let RawRateLimit {
        window_s,
        auth_failures_per_ip,
        service_keys_limited,
        backend,
        redis_url,
        redis_timeout_ms,
        expected_replicas,
        redis_batch,
        redis_sync_interval_ms,
        redis_mode,
        redis_nodes,
        redis_sentinel_master,
        redis_ca_file,
        mode,
    } = raw;
    let mode = crate::config::routes::LimitMode::parse(&mode).ok_or_else(|| {
        invalid(
            "rate_limit.mode",
            format!("`{mode}`: expected \"enforce\" or \"shadow\""),
        )
    })?;
    if window_s == 0 {
        return Err(invalid("rate_limit.window_s", "must be positive"));
    }
    if expected_replicas == Some(0) {
        return Err(invalid(
            "rate_limit.expected_replicas",
            "must be at least 1",
        ));
    }
    if redis_batch == 0 {
        return Err(invalid("rate_limit.redis_batch", "must be at least 1"));
    }
    if redis_timeout_ms == 0 {
        return Err(invalid("rate_limit.redis_timeout_ms", "must be positive"));
    }
    if redis_sync_interval_ms == 0 {
        return Err(invalid(
            "rate_limit.redis_sync_interval_ms",
            "must be positive",
        ));
    }
    let backend = match backend.as_str() {
        "local" => RateLimitBackend::Local,
        "redis" => {
            let topology =
                redis_topology(&redis_mode, redis_url, redis_nodes, redis_sentinel_master)?;
            let ca_file = redis_ca(&redis_ca_file, &topology, base)?;
            // Without it every replica would fall back to the full
            // limit during an outage: replicas × limit (SPEC §6).
            let Some(expected_replicas) = expected_replicas else {
                return Err(invalid(
                    "rate_limit.expected_replicas",
                    "required with backend = \"redis\" (the number of replicas sharing the limit; each admits limit / expected_replicas while Redis is unreachable)",
                ));
            };
            RateLimitBackend::Redis(RedisConfig {
                topology,
                ca_file,
                timeout: Duration::from_millis(redis_timeout_ms),
                expected_replicas,
                batch: redis_batch,
                sync_interval: Duration::from_millis(redis_sync_interval_ms),
            })
        }
        other => {
            return Err(invalid(
                "rate_limit.backend",
                format!("`{other}`: expected \"local\" or \"redis\""),
            ))
        }
    };
    Ok(RateLimitConfig {
        window_s,
        auth_failures_per_ip,
        service_keys_limited,
        backend,
        mode,
    })
}

/// `rate_limit.redis_mode` and the keys it reads. A key another mode reads
/// is refused rather than ignored: `redis_url` beside `redis_mode =
/// "cluster"` names one server where the limiter would use others. URLs are
/// parsed (`redis://` or `rediss://`), never connected to.
fn redis_topology(
    mode: &str,
    url: Option<String>,
    nodes: Vec<String>,
    master: String,
) -> Result<RedisTopology, ConfigError> {
    let parse = |key: &str, url: &str| -> Result<bool, ConfigError> {
        match redis::Client::open(url) {
            Ok(_) => Ok(url.starts_with("rediss://")),
            Err(e) => Err(invalid(key, format!("`{url}`: {e}"))),
        }
    };
    let unused = |key: &str, set: bool| -> Result<(), ConfigError> {
        if set {
            return Err(invalid(
                key,
                format!("not used with redis_mode = \"{mode}\"; leave it out"),
            ));
        }
        Ok(())
    };
    let url_set = url.as_deref().is_some_and(|u| !u.is_empty());
    let node_list = |nodes: Vec<String>, what: &str| -> Result<Vec<String>, ConfigError> {
        if nodes.is_empty() {
            return Err(invalid(
                "rate_limit.redis_nodes",
                format!("required with redis_mode = \"{mode}\" ({what})"),
            ));
        }
        let mut tls = None;
        for node in &nodes {
            if !node.starts_with("redis://") && !node.starts_with("rediss://") {
                return Err(invalid(
                    "rate_limit.redis_nodes",
                    format!("`{node}`: expected a redis:// or rediss:// URL"),
                ));
            }
            let this = parse("rate_limit.redis_nodes", node)?;
            if *tls.get_or_insert(this) != this {
                return Err(invalid(
                    "rate_limit.redis_nodes",
                    "mixes redis:// and rediss:// URLs: use one scheme for every node",
                ));
            }
        }
        Ok(nodes)
    };
    match mode {
        "single" => {
            unused("rate_limit.redis_nodes", !nodes.is_empty())?;
            unused("rate_limit.redis_sentinel_master", !master.is_empty())?;
            let url = url
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| "redis://127.0.0.1:6379/0".into());
            parse("rate_limit.redis_url", &url)?;
            Ok(RedisTopology::Single { url })
        }
        "cluster" => {
            unused("rate_limit.redis_url", url_set)?;
            unused("rate_limit.redis_sentinel_master", !master.is_empty())?;
            let nodes = node_list(nodes, "seed URLs of the cluster's nodes")?;
            Ok(RedisTopology::Cluster { nodes })
        }
        "sentinel" => {
            unused("rate_limit.redis_url", url_set)?;
            let sentinels = node_list(nodes, "the sentinels' URLs")?;
            if master.is_empty() {
                return Err(invalid(
                    "rate_limit.redis_sentinel_master",
                    "required with redis_mode = \"sentinel\" (the name the sentinels monitor)",
                ));
            }
            Ok(RedisTopology::Sentinel { sentinels, master })
        }
        other => Err(invalid(
            "rate_limit.redis_mode",
            format!("`{other}`: expected \"single\", \"cluster\" or \"sentinel\""),
        )),
    }
}

/// `rate_limit.redis_ca_file`: a PEM bundle with at least one certificate,
/// for `rediss://` URLs only.
fn redis_ca(
    file: &str,
    topology: &RedisTopology,
    base: &Path,
) -> Result<Option<PathBuf>, ConfigError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    if file.is_empty() {
        return Ok(None);
    }
    const KEY: &str = "rate_limit.redis_ca_file";
    let tls = match topology {
        RedisTopology::Single { url } => url.starts_with("rediss://"),
        RedisTopology::Cluster { nodes }
        | RedisTopology::Sentinel {
            sentinels: nodes, ..
        } => nodes.iter().all(|n| n.starts_with("rediss://")),
    };
    if !tls {
        return Err(invalid(
            KEY,
            "only used with rediss:// URLs (TLS); the URLs here are redis://",
        ));
    }
    let path = resolve(base, file);
    let certs = CertificateDer::pem_file_iter(&path)
        .map_err(|e| invalid(KEY, format!("{}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(KEY, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(
            KEY,
            format!("{}: no PEM certificate", path.display()),
        ));
    }
    Ok(Some(path))
}

/// `[tracing]`: refused by a build without the `otel` feature, which could
/// not honour it (an operator who asked for traces would get none, silently).
pub(super) fn tracing(raw: Option<RawTracing>) -> Result<Option<TracingConfig>, ConfigError> {
    let Some(RawTracing {
        endpoint,
        sample_ratio,
        service_name,
        include_org,
    }) = raw
    else {
        return Ok(None);
    };
    if !cfg!(feature = "otel") {
        return Err(invalid(
            "tracing",
            "this keyward was built without the otel feature (a --no-default-features build); remove [tracing] or use the default build",
        ));
    }
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|_| invalid("tracing.endpoint", format!("`{endpoint}` is not a URL")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(invalid(
                "tracing.endpoint",
                format!("`{endpoint}`: https is not supported; export over http to a collector (e.g. an OpenTelemetry Collector beside keyward)"),
            ))
        }
        _ => {
            return Err(invalid(
                "tracing.endpoint",
                format!("`{endpoint}`: expected http://host:port/path"),
            ))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid(
            "tracing.endpoint",
            format!("`{endpoint}`: no host"),
        ));
    }
    if uri.path() == "/" {
        return Err(invalid(
            "tracing.endpoint",
            format!("`{endpoint}`: name the traces path too (OTLP/HTTP: /v1/traces)"),
        ));
    }
    if !(0.0..=1.0).contains(&sample_ratio) {
        return Err(invalid(
            "tracing.sample_ratio",
            format!("{sample_ratio}: must be between 0.0 and 1.0"),
        ));
    }
    if service_name.is_empty() {
        return Err(invalid("tracing.service_name", "must not be empty"));
    }
    Ok(Some(TracingConfig {
        endpoint,
        sample_ratio,
        service_name,
        include_org,
    }))
}

pub(super) fn scopes(raw: RawScopes) -> Result<UnknownWorkspaces, ConfigError> {
    let RawScopes { unknown_workspaces } = raw;
    match unknown_workspaces.as_str() {
        "deny" => Ok(UnknownWorkspaces::Deny),
        "pass" => Ok(UnknownWorkspaces::Pass),
        other => Err(invalid(
            "scopes.unknown_workspaces",
            format!("`{other}`: expected \"deny\" or \"pass\""),
        )),
    }
}

pub(super) fn mcp(raw: RawMcp) -> Result<McpConfig, ConfigError> {
    let RawMcp { allowed_origins } = raw;
    if let Some(o) = allowed_origins
        .iter()
        .find(|o| o.is_empty() || !o.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(invalid(
            "mcp.allowed_origins",
            format!("`{o}` is not an Origin (scheme://host[:port])"),
        ));
    }
    Ok(McpConfig { allowed_origins })
}

/// Route fields are checked by `routes` itself; errors name the route by its
/// index in the file and its path.
pub(super) fn routes(raw: Vec<RawRoute>) -> Result<RouteTable, ConfigError> {
    RouteTable::compile(raw)
        .map_err(|e| invalid(format!("route[{}] ({})", e.index, e.path), e.message))
}

/// The PEM files TLS names must exist and hold what they should, so a bad
/// path is a startup (and `keyward check`) error, not a failed handshake.
pub(super) fn tls_files(cfg: &Config) -> Result<(), ConfigError> {
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
    if let Some(tls) = &cfg.server.tls {
        certs("server.tls.cert", &tls.cert)?;
        PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| {
            invalid(
                "server.tls.key",
                format!("{}: no usable PEM private key ({e})", tls.key.display()),
            )
        })?;
    }
    if let Some(ca) = &cfg.upstream.ca_file {
        certs("upstream.ca_file", ca)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, String> {
        Config::from_toml_str(text, Path::new("/etc/keyward")).map_err(|e| e.to_string())
    }

    fn error(text: &str) -> String {
        parse(text).err().expect("an invalid config")
    }

    const REDIS: &str = "[rate_limit]\nbackend = \"redis\"\nexpected_replicas = 2\n";

    #[test]
    fn redis_topologies() {
        use crate::config::{RateLimitBackend, RedisTopology};
        let topology = |extra: &str| match parse(&format!("{REDIS}{extra}"))
            .unwrap()
            .rate_limit
            .backend
        {
            RateLimitBackend::Redis(r) => r.topology,
            RateLimitBackend::Local => unreachable!(),
        };
        assert_eq!(
            topology(""),
            RedisTopology::Single {
                url: "redis://127.0.0.1:6379/0".into()
            }
        );
        assert_eq!(
            topology("redis_url = \"rediss://cache.example:6380/1\"\n"),
            RedisTopology::Single {
                url: "rediss://cache.example:6380/1".into()
            }
        );
        assert_eq!(
            topology("redis_mode = \"cluster\"\nredis_nodes = [\"redis://a:7000\", \"redis://b:7000\"]\n"),
            RedisTopology::Cluster {
                nodes: vec!["redis://a:7000".into(), "redis://b:7000".into()]
            }
        );
        assert_eq!(
            topology("redis_mode = \"sentinel\"\nredis_nodes = [\"rediss://s:26379\"]\nredis_sentinel_master = \"m\"\nredis_url = \"\"\n"),
            RedisTopology::Sentinel {
                sentinels: vec!["rediss://s:26379".into()],
                master: "m".into()
            }
        );
        // With the local backend the Redis keys are not read.
        assert!(parse("[rate_limit]\nredis_mode = \"cluster\"\n").is_ok());
    }

    #[test]
    fn bad_redis_topologies_name_their_key() {
        for (extra, key, words) in [
            ("redis_mode = \"ring\"\n", "rate_limit.redis_mode", "expected \"single\", \"cluster\" or \"sentinel\""),
            ("redis_mode = \"cluster\"\n", "rate_limit.redis_nodes", "required with redis_mode = \"cluster\""),
            ("redis_mode = \"sentinel\"\n", "rate_limit.redis_nodes", "required with redis_mode = \"sentinel\""),
            ("redis_mode = \"sentinel\"\nredis_nodes = [\"redis://s:26379\"]\n", "rate_limit.redis_sentinel_master", "required"),
            ("redis_mode = \"cluster\"\nredis_nodes = [\"redis://a:7000\"]\nredis_url = \"redis://a:7000\"\n", "rate_limit.redis_url", "not used with redis_mode = \"cluster\""),
            ("redis_mode = \"cluster\"\nredis_nodes = [\"redis://a:7000\"]\nredis_sentinel_master = \"m\"\n", "rate_limit.redis_sentinel_master", "not used"),
            ("redis_nodes = [\"redis://a:7000\"]\n", "rate_limit.redis_nodes", "not used with redis_mode = \"single\""),
            ("redis_mode = \"cluster\"\nredis_nodes = [\"redis://a:7000\", \"rediss://b:7000\"]\n", "rate_limit.redis_nodes", "mixes"),
            ("redis_mode = \"cluster\"\nredis_nodes = [\"http://a:7000\"]\n", "rate_limit.redis_nodes", "expected a redis:// or rediss:// URL"),
            ("redis_url = \"nonsense\"\n", "rate_limit.redis_url", "nonsense"),
            ("redis_ca_file = \"ca.pem\"\n", "rate_limit.redis_ca_file", "only used with rediss://"),
            ("redis_url = \"rediss://r:6380\"\nredis_ca_file = \"missing.pem\"\n", "rate_limit.redis_ca_file", "/etc/keyward/missing.pem"),
        ] {
            let err = error(&format!("{REDIS}{extra}"));
            assert!(err.contains(key) && err.contains(words), "{extra}: {err}");
        }
    }

    #[test]
    fn redis_ca_file_is_resolved_and_read() {
        use crate::config::RateLimitBackend;
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["redis.test".into()]).unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.cert.pem()).unwrap();
        std::fs::write(dir.path().join("empty.pem"), "").unwrap();
        let text = format!("{REDIS}redis_url = \"rediss://r:6380\"\nredis_ca_file = \"ca.pem\"\n");
        let c = Config::from_toml_str(&text, dir.path()).unwrap();
        let RateLimitBackend::Redis(r) = c.rate_limit.backend else {
            unreachable!()
        };
        assert_eq!(
            r.ca_file.as_deref(),
            Some(dir.path().join("ca.pem").as_path())
        );
        let err = Config::from_toml_str(&text.replace("ca.pem", "empty.pem"), dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("rate_limit.redis_ca_file") && err.contains("no PEM certificate"),
            "{err}"
        );
    }

    #[test]
    fn no_tracing_table_is_no_tracing() {
        assert!(parse("").unwrap().tracing.is_none());
    }

    #[cfg(not(feature = "otel"))]
    #[test]
    fn a_build_without_otel_refuses_a_tracing_table_by_name() {
        let err = error("[tracing]\n");
        assert!(
            err.contains("tracing") && err.contains("built without the otel feature"),
            "{err}"
        );
    }

    #[cfg(feature = "otel")]
    #[test]
    fn tracing_defaults_and_values() {
        let t = parse("[tracing]\n").unwrap().tracing.unwrap();
        assert_eq!(t.endpoint, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(t.sample_ratio, 1.0);
        assert_eq!(t.service_name, "keyward");
        assert!(!t.include_org);
        let t = parse(
            "[tracing]\nendpoint = \"http://otel:4318/v1/traces\"\nsample_ratio = 0.01\nservice_name = \"kw\"\ninclude_org = true\n",
        )
        .unwrap()
        .tracing
        .unwrap();
        assert_eq!(t.endpoint, "http://otel:4318/v1/traces");
        assert_eq!(t.sample_ratio, 0.01);
        assert_eq!(t.service_name, "kw");
        assert!(t.include_org);
    }

    #[cfg(feature = "otel")]
    #[test]
    fn bad_tracing_values_name_their_key() {
        for (line, key) in [
            (
                "endpoint = \"https://otel:4318/v1/traces\"",
                "tracing.endpoint",
            ),
            ("endpoint = \"otel:4318\"", "tracing.endpoint"),
            ("endpoint = \"http://otel:4318\"", "tracing.endpoint"),
            ("endpoint = \"not a url\"", "tracing.endpoint"),
            ("sample_ratio = 1.5", "tracing.sample_ratio"),
            ("sample_ratio = -0.1", "tracing.sample_ratio"),
            ("sample_ratio = nan", "tracing.sample_ratio"),
            ("service_name = \"\"", "tracing.service_name"),
        ] {
            let err = error(&format!("[tracing]\n{line}\n"));
            assert!(err.contains(key), "{line}: {err}");
        }
        let err = error("[tracing]\nsampel_ratio = 1.0\n");
        assert!(err.contains("sampel_ratio"), "{err}");
    }
}
