//! Live or frozen: which differences between the running config and a
//! reloaded one a SIGHUP may apply (SPEC §8.2). A setting is frozen when
//! keyward reads it only at start — listeners, threads, the shutdown grace,
//! TLS, the upstream connector, where and how often the snapshot is polled,
//! the limiter, the failed-authentication throttle, the trace exporter — and
//! live when it is read per request or rebuilt by `Engine::reload_policy`
//! (routes, plans, the verdict cache, session settings, scopes, MCP origins,
//! ...).
//!
//! The functions below destructure the model exhaustively, so a field added
//! to it does not compile until it is classified here. They only compare two
//! configs: they never apply one, touch the network or the snapshot.

use super::model::{
    CacheConfig, Config, McpConfig, RateLimitBackend, RateLimitConfig, RedisConfig, RedisTopology,
    Secret, ServerConfig, SessionConfig, SnapshotConfig, TlsConfig, TracingConfig, UpstreamConfig,
    UsageConfig,
};

/// The dotted key (as written in the file, SPEC §8.1) of the first frozen
/// setting, in file order, that differs between `old` and `new`; `None` when
/// every difference can be applied live.
pub fn frozen_change(old: &Config, new: &Config) -> Option<&'static str> {
    let Config {
        // not a key: a reload re-reads the file keyward started with
        source: _,
        server,
        upstream,
        snapshot,
        // live: `Engine::reload_policy` starts a new verdict cache when these change
        cache:
            CacheConfig {
                capacity: _,
                ttl: _,
                negative_ttl: _,
            },
        // live: read per request
        session:
            SessionConfig {
                secret: _,
                cookie_names: _,
                trusted_origins: _,
            },
        rate_limit,
        tracing,
        // live: read per request
        unknown_workspaces: _,
        // live: read per request
        mcp: McpConfig { allowed_origins: _ },
        usage,
        // live: read per request
        plans: _,
        routes: _,
    } = old;
    server_change(server, &new.server)
        .or_else(|| upstream_change(upstream, &new.upstream))
        .or_else(|| snapshot_change(snapshot, &new.snapshot))
        .or_else(|| rate_limit_change(rate_limit, &new.rate_limit))
        .or_else(|| tracing_change(tracing.as_ref(), new.tracing.as_ref()))
        .or_else(|| usage_change(usage, &new.usage))
}

fn usage_change(old: &UsageConfig, new: &UsageConfig) -> Option<&'static str> {
    let UsageConfig {
        // frozen: the pusher is started once
        push_url,
        push_interval,
        push_token,
        max_keys,
    } = old;
    first([
        ("usage.push_url", *push_url != new.push_url),
        (
            "usage.push_interval_ms",
            *push_interval != new.push_interval,
        ),
        (
            "usage.push_token_env",
            push_token.as_ref().map(Secret::expose) != new.push_token.as_ref().map(Secret::expose),
        ),
        ("usage.max_keys", *max_keys != new.max_keys),
    ])
}

/// The first key whose flag is set.
fn first<const N: usize>(changes: [(&'static str, bool); N]) -> Option<&'static str> {
    changes
        .into_iter()
        .find_map(|(key, changed)| changed.then_some(key))
}

fn server_change(old: &ServerConfig, new: &ServerConfig) -> Option<&'static str> {
    let ServerConfig {
        // frozen: bound once by `server::run` and the admin runtime
        listen,
        admin_listen,
        // frozen: pingora's worker count
        threads,
        // live: read per request
        trusted_proxies: _,
        public_url: _,
        // frozen: pingora's grace period, set when the server is built
        shutdown_grace,
        // live: read per request
        max_body_inspect_bytes: _,
        // frozen: pingora reads it when the server is built
        upgrade_sock,
        // frozen: the listener's TLS settings are loaded once
        tls,
        // frozen: the usage pusher names itself once
        replica_id,
        // frozen: bound once by `server::run`
        auth_listen,
        // frozen: the listeners are built with it
        proxy_protocol,
    } = old;
    first([
        ("server.listen", *listen != new.listen),
        ("server.admin_listen", *admin_listen != new.admin_listen),
        ("server.threads", *threads != new.threads),
        (
            "server.shutdown_grace_s",
            *shutdown_grace != new.shutdown_grace,
        ),
        ("server.upgrade_sock", *upgrade_sock != new.upgrade_sock),
        ("server.replica_id", *replica_id != new.replica_id),
        ("server.auth_listen", *auth_listen != new.auth_listen),
        (
            "server.proxy_protocol",
            *proxy_protocol != new.proxy_protocol,
        ),
    ])
    .or_else(|| tls_change(tls.as_ref(), new.tls.as_ref()))
}

fn tls_change(old: Option<&TlsConfig>, new: Option<&TlsConfig>) -> Option<&'static str> {
    match (old, new) {
        (None, None) => None,
        (Some(TlsConfig { cert, key }), Some(new)) => first([
            ("server.tls.cert", *cert != new.cert),
            ("server.tls.key", *key != new.key),
        ]),
        // turning TLS on or off changes the listener itself
        (Some(_), None) | (None, Some(_)) => Some("server.tls"),
    }
}

/// The upstream peer and its connector are built once, with the app.
fn upstream_change(old: &UpstreamConfig, new: &UpstreamConfig) -> Option<&'static str> {
    let UpstreamConfig {
        address,
        tls,
        sni,
        // reaches the TLS connector through pingora's ServerConf
        ca_file,
        connect_timeout,
        read_timeout,
        // live: read per request
        strip_credentials: _,
    } = old;
    first([
        ("upstream.address", *address != new.address),
        ("upstream.tls", *tls != new.tls),
        ("upstream.sni", *sni != new.sni),
        ("upstream.ca_file", *ca_file != new.ca_file),
        (
            "upstream.connect_timeout_ms",
            *connect_timeout != new.connect_timeout,
        ),
        (
            "upstream.read_timeout_ms",
            *read_timeout != new.read_timeout,
        ),
    ])
}

fn snapshot_change(old: &SnapshotConfig, new: &SnapshotConfig) -> Option<&'static str> {
    let SnapshotConfig {
        // frozen: the store and its watcher are started once
        path,
        poll_interval,
        // live: `/readyz` reads it per request
        max_staleness: _,
        // frozen: the source's poller is started once with them
        source,
        verify_key,
    } = old;
    first([
        ("snapshot.path", *path != new.path),
        (
            "snapshot.poll_interval_ms",
            *poll_interval != new.poll_interval,
        ),
        ("snapshot.source", *source != new.source),
        ("snapshot.verify_key", *verify_key != new.verify_key),
    ])
}

fn rate_limit_change(old: &RateLimitConfig, new: &RateLimitConfig) -> Option<&'static str> {
    let RateLimitConfig {
        // frozen: the limiter and the throttle are built with them at start
        window_s,
        auth_failures_per_ip,
        // live: read per request
        service_keys_limited: _,
        mode: _,
        // frozen: the limiter is built at start
        backend,
    } = old;
    first([
        ("rate_limit.window_s", *window_s != new.window_s),
        (
            "rate_limit.auth_failures_per_ip",
            *auth_failures_per_ip != new.auth_failures_per_ip,
        ),
    ])
    .or_else(|| backend_change(backend, &new.backend))
}

fn backend_change(old: &RateLimitBackend, new: &RateLimitBackend) -> Option<&'static str> {
    match (old, new) {
        (RateLimitBackend::Local, RateLimitBackend::Local) => None,
        (
            RateLimitBackend::Redis(RedisConfig {
                topology,
                ca_file,
                timeout,
                expected_replicas,
                batch,
                sync_interval,
            }),
            RateLimitBackend::Redis(new),
        ) => first([
            topology_change(topology, &new.topology),
            ("rate_limit.redis_ca_file", *ca_file != new.ca_file),
            ("rate_limit.redis_timeout_ms", *timeout != new.timeout),
            (
                "rate_limit.expected_replicas",
                *expected_replicas != new.expected_replicas,
            ),
            ("rate_limit.redis_batch", *batch != new.batch),
            (
                "rate_limit.redis_sync_interval_ms",
                *sync_interval != new.sync_interval,
            ),
        ]),
        (RateLimitBackend::Local, RateLimitBackend::Redis(_))
        | (RateLimitBackend::Redis(_), RateLimitBackend::Local) => Some("rate_limit.backend"),
    }
}

/// The key that names where the shared windows live, if it changed (the
/// limiter connects once, at start).
fn topology_change(old: &RedisTopology, new: &RedisTopology) -> (&'static str, bool) {
    match (old, new) {
        (RedisTopology::Single { url }, RedisTopology::Single { url: new }) => {
            ("rate_limit.redis_url", url != new)
        }
        (RedisTopology::Cluster { nodes }, RedisTopology::Cluster { nodes: new }) => {
            ("rate_limit.redis_nodes", nodes != new)
        }
        (
            RedisTopology::Sentinel { sentinels, master },
            RedisTopology::Sentinel {
                sentinels: new_sentinels,
                master: new_master,
            },
        ) if master == new_master => ("rate_limit.redis_nodes", sentinels != new_sentinels),
        (RedisTopology::Sentinel { .. }, RedisTopology::Sentinel { .. }) => {
            ("rate_limit.redis_sentinel_master", true)
        }
        _ => ("rate_limit.redis_mode", true),
    }
}

/// The exporter, its sampler and the service name are built once, at start.
fn tracing_change(
    old: Option<&TracingConfig>,
    new: Option<&TracingConfig>,
) -> Option<&'static str> {
    match (old, new) {
        (None, None) => None,
        (
            Some(TracingConfig {
                endpoint,
                sample_ratio,
                service_name,
                // live: read per request
                include_org: _,
            }),
            Some(new),
        ) => first([
            ("tracing.endpoint", *endpoint != new.endpoint),
            ("tracing.sample_ratio", *sample_ratio != new.sample_ratio),
            ("tracing.service_name", *service_name != new.service_name),
        ]),
        // turning tracing on or off starts or stops the exporter
        (Some(_), None) | (None, Some(_)) => Some("tracing"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Every key that can be set, each on its own line, so that [`set`] can
    /// change exactly one of them.
    const BASE: &str = r#"
[server]
listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:9090"
threads = 2
trusted_proxies = []
public_url = ""
shutdown_grace_s = 5
max_body_inspect_bytes = 1048576
upgrade_sock = "/tmp/keyward-upgrade.sock"

[server.tls]
cert = "cert.pem"
key = "key.pem"

[upstream]
address = "127.0.0.1:3000"
tls = false
sni = ""
ca_file = ""
connect_timeout_ms = 1000
read_timeout_ms = 60000
strip_credentials = false

[snapshot]
path = "snapshot.db"
poll_interval_ms = 1000
max_staleness_s = 300
source = ""

[cache]
capacity = 100000
ttl_s = 60
negative_ttl_s = 5

[session]
secret_env = ""
secret = "inline-secret"
cookie_names = ["better-auth.session_token"]
trusted_origins = []

[rate_limit]
window_s = 60
auth_failures_per_ip = 30
service_keys_limited = false
backend = "redis"
redis_url = "redis://127.0.0.1:6379/0"
redis_timeout_ms = 5
expected_replicas = 2
redis_batch = 16
redis_sync_interval_ms = 10
redis_mode = "single"
redis_nodes = []
redis_sentinel_master = ""
redis_ca_file = ""

[scopes]
unknown_workspaces = "deny"

[mcp]
allowed_origins = []

[plans.free]
requests_per_window = 60
max_streams = 10

[[route]]
path = "/api/auth/**"
auth = "none"
"#;

    /// Each frozen key, with a value other than [`BASE`]'s.
    const FROZEN: &[(&str, &str)] = &[
        ("server.listen", r#""127.0.0.1:8081""#),
        ("server.admin_listen", r#""127.0.0.1:9091""#),
        ("server.threads", "3"),
        ("server.shutdown_grace_s", "6"),
        ("server.upgrade_sock", r#""/tmp/other.sock""#),
        ("server.tls.cert", r#""other-cert.pem""#),
        ("server.tls.key", r#""other-key.pem""#),
        ("upstream.address", r#""127.0.0.1:3001""#),
        ("upstream.tls", "true"),
        ("upstream.sni", r#""api.example""#),
        ("upstream.ca_file", r#""ca.pem""#),
        ("upstream.connect_timeout_ms", "999"),
        ("upstream.read_timeout_ms", "59999"),
        ("snapshot.path", r#""other.db""#),
        ("snapshot.poll_interval_ms", "500"),
        ("snapshot.source", r#""https://origin.example/snapshot.db""#),
        ("rate_limit.window_s", "30"),
        ("rate_limit.auth_failures_per_ip", "31"),
        ("rate_limit.backend", r#""local""#),
        ("rate_limit.redis_url", r#""redis://10.0.0.1:6379/0""#),
        ("rate_limit.redis_timeout_ms", "6"),
        ("rate_limit.expected_replicas", "3"),
        ("rate_limit.redis_batch", "17"),
        ("rate_limit.redis_sync_interval_ms", "11"),
    ];

    /// Each live key, with a value other than [`BASE`]'s.
    const LIVE: &[(&str, &str)] = &[
        ("server.trusted_proxies", r#"["10.0.0.0/8"]"#),
        ("server.public_url", r#""https://keyward.example""#),
        ("server.max_body_inspect_bytes", "4096"),
        ("upstream.strip_credentials", "true"),
        ("snapshot.max_staleness_s", "60"),
        ("cache.capacity", "10"),
        ("cache.ttl_s", "30"),
        ("cache.negative_ttl_s", "1"),
        ("session.secret_env", r#""KEYWARD_RELOAD_TEST_SECRET""#),
        ("session.secret", r#""another-secret""#),
        ("session.cookie_names", r#"["sid"]"#),
        ("session.trusted_origins", r#"["https://app.example"]"#),
        ("rate_limit.service_keys_limited", "true"),
        ("scopes.unknown_workspaces", r#""pass""#),
        ("mcp.allowed_origins", r#"["https://a.example"]"#),
        ("plans.free.requests_per_window", "61"),
        ("plans.free.max_streams", "11"),
    ];

    fn parse(text: &str) -> Config {
        Config::from_toml_str(text, Path::new("/etc/keyward"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    /// `text` with the line `name = …` of `[section]` (`dotted` is
    /// `section.name`) set to `value`.
    fn set(text: &str, dotted: &str, value: &str) -> String {
        let (section, name) = dotted.rsplit_once('.').unwrap();
        let mut current = "";
        let mut found = false;
        let lines: Vec<String> = text
            .lines()
            .map(|line| {
                if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                    current = header;
                } else if current == section && line.starts_with(&format!("{name} = ")) {
                    found = true;
                    return format!("{name} = {value}");
                }
                line.to_string()
            })
            .collect();
        assert!(found, "`{dotted}` is not set in the base config");
        lines.join("\n")
    }

    #[test]
    fn an_unchanged_config_has_no_frozen_change() {
        assert_eq!(frozen_change(&parse(BASE), &parse(BASE)), None);
    }

    #[test]
    fn each_frozen_key_is_reported_by_its_name() {
        let old = parse(BASE);
        for (key, value) in FROZEN {
            let new = parse(&set(BASE, key, value));
            assert_eq!(frozen_change(&old, &new), Some(*key), "changing {key}");
        }
    }

    #[test]
    fn auth_failures_per_ip_is_reported_as_itself_not_as_the_window() {
        let old = parse(BASE);
        let new = parse(&set(BASE, "rate_limit.auth_failures_per_ip", "5"));
        assert_eq!(
            frozen_change(&old, &new),
            Some("rate_limit.auth_failures_per_ip")
        );
    }

    #[test]
    fn turning_tls_on_or_off_is_reported_as_server_tls() {
        let with = parse(BASE);
        let without =
            parse(&BASE.replace("[server.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n", ""));
        assert!(without.server.tls.is_none());
        assert_eq!(frozen_change(&with, &without), Some("server.tls"));
        assert_eq!(frozen_change(&without, &with), Some("server.tls"));
    }

    #[test]
    fn several_frozen_changes_report_the_first_in_file_order() {
        let old = parse(BASE);
        let new = set(BASE, "rate_limit.window_s", "30");
        let new = parse(&set(&new, "server.threads", "3"));
        assert_eq!(frozen_change(&old, &new), Some("server.threads"));
    }

    #[test]
    fn each_live_key_applies_without_a_restart() {
        let old = parse(BASE);
        for (key, value) in LIVE {
            let new = parse(&set(BASE, key, value));
            assert_eq!(frozen_change(&old, &new), None, "changing {key}");
        }
    }

    #[test]
    fn all_live_changes_at_once_apply_without_a_restart() {
        let mut text = BASE.to_string();
        for (key, value) in LIVE {
            text = set(&text, key, value);
        }
        text.push_str("\n[plans.pro]\nrequests_per_window = 600\n");
        text.push_str("\n[[route]]\npath = \"/api/v1/**\"\norg_wide_only = true\n");
        let (old, new) = (parse(BASE), parse(&text));
        assert_eq!(new.routes.len(), old.routes.len() + 1);
        assert_eq!(new.plans.len(), 2);
        assert_eq!(frozen_change(&old, &new), None);
    }

    /// `[tracing]` needs the `otel` feature, so it is not in [`BASE`].
    #[cfg(feature = "otel")]
    #[test]
    fn tracing_keys_are_frozen_but_include_org() {
        let base = format!(
            "{BASE}\n[tracing]\nendpoint = \"http://127.0.0.1:4318/v1/traces\"\nsample_ratio = 0.5\nservice_name = \"keyward\"\ninclude_org = false\n"
        );
        let old = parse(&base);
        for (key, value) in [
            ("tracing.endpoint", r#""http://127.0.0.1:4319/v1/traces""#),
            ("tracing.sample_ratio", "0.25"),
            ("tracing.service_name", r#""other""#),
        ] {
            let new = parse(&set(&base, key, value));
            assert_eq!(frozen_change(&old, &new), Some(key), "changing {key}");
        }
        let new = parse(&set(&base, "tracing.include_org", "true"));
        assert_eq!(frozen_change(&old, &new), None);
        let without = parse(BASE);
        assert_eq!(frozen_change(&old, &without), Some("tracing"));
        assert_eq!(frozen_change(&without, &old), Some("tracing"));
    }

    #[test]
    fn redis_topology_changes_name_their_key() {
        let cluster = |nodes: &str| {
            let text = set(BASE, "rate_limit.redis_url", r#""""#);
            let text = set(&text, "rate_limit.redis_mode", r#""cluster""#);
            parse(&set(&text, "rate_limit.redis_nodes", nodes))
        };
        let sentinel = |master: &str| {
            let text = set(BASE, "rate_limit.redis_url", r#""""#);
            let text = set(&text, "rate_limit.redis_mode", r#""sentinel""#);
            let text = set(&text, "rate_limit.redis_nodes", r#"["redis://s1:26379"]"#);
            parse(&set(&text, "rate_limit.redis_sentinel_master", master))
        };
        let single = parse(BASE);
        let a = cluster(r#"["redis://a:6379"]"#);
        let b = cluster(r#"["redis://a:6379", "redis://b:6379"]"#);
        assert_eq!(frozen_change(&a, &a), None);
        assert_eq!(frozen_change(&a, &b), Some("rate_limit.redis_nodes"));
        assert_eq!(frozen_change(&single, &a), Some("rate_limit.redis_mode"));
        let m = sentinel(r#""mymaster""#);
        assert_eq!(frozen_change(&m, &m), None);
        assert_eq!(
            frozen_change(&m, &sentinel(r#""other""#)),
            Some("rate_limit.redis_sentinel_master")
        );
        assert_eq!(frozen_change(&a, &m), Some("rate_limit.redis_mode"));
    }

    #[test]
    fn redis_settings_are_ignored_with_the_local_backend() {
        let local = set(BASE, "rate_limit.backend", r#""local""#);
        let old = parse(&local);
        for key in [
            "rate_limit.redis_url",
            "rate_limit.redis_timeout_ms",
            "rate_limit.redis_batch",
        ] {
            let (_, value) = FROZEN.iter().find(|(k, _)| *k == key).unwrap();
            let new = parse(&set(&local, key, value));
            assert_eq!(frozen_change(&old, &new), None, "changing {key}");
        }
    }
}
