//! Prometheus metrics (SPEC §8.2), all prefixed `keyward_`. No label ever
//! carries an organization, key or user id: labels are auth methods,
//! outcomes, cache results, plan names from the config, and fixed kinds.

use std::sync::Arc;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::auth::denial::Denial;
use crate::cache::CacheResult;
use crate::snapshot::{SnapshotStore, TABLES};

/// Label values of `requests_total{auth_method}` known in advance.
const AUTH_METHODS: [&str; 6] = [
    "api_key",
    "session",
    "service_key",
    "mcp_bearer",
    "mcp_oauth",
    "none",
];
/// `requests_total{outcome}`: how a request ended. One variant per label
/// value, so the metric and its zero series cannot drift apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Forwarded,
    Unauthenticated,
    Forbidden,
    ScopeDenied,
    QuotaExceeded,
    RateLimited,
    BadRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
    UpstreamUnavailable,
    UpstreamTimeout,
    AuthUnavailable,
    /// the client went away or the exchange broke
    Error,
}

impl Outcome {
    pub const ALL: [Outcome; 13] = [
        Outcome::Forwarded,
        Outcome::Unauthenticated,
        Outcome::Forbidden,
        Outcome::ScopeDenied,
        Outcome::QuotaExceeded,
        Outcome::RateLimited,
        Outcome::BadRequest,
        Outcome::PayloadTooLarge,
        Outcome::UnsupportedMediaType,
        Outcome::UpstreamUnavailable,
        Outcome::UpstreamTimeout,
        Outcome::AuthUnavailable,
        Outcome::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::Forbidden => "forbidden",
            Outcome::ScopeDenied => "scope_denied",
            Outcome::QuotaExceeded => "quota_exceeded",
            Outcome::RateLimited => "rate_limited",
            Outcome::BadRequest => "bad_request",
            Outcome::PayloadTooLarge => "payload_too_large",
            Outcome::UnsupportedMediaType => "unsupported_media_type",
            Outcome::UpstreamUnavailable => "upstream_unavailable",
            Outcome::UpstreamTimeout => "upstream_timeout",
            Outcome::AuthUnavailable => "auth_unavailable",
            Outcome::Error => "error",
        }
    }

    /// The outcome of a request keyward answered itself.
    pub fn of(denial: &Denial) -> Outcome {
        match denial {
            Denial::Unauthenticated { .. } => Outcome::Unauthenticated,
            Denial::Forbidden(_) => Outcome::Forbidden,
            Denial::ScopeDenied(_) => Outcome::ScopeDenied,
            Denial::QuotaExceeded => Outcome::QuotaExceeded,
            Denial::RateLimited { .. } => Outcome::RateLimited,
            Denial::BadRequest(_) => Outcome::BadRequest,
            Denial::UnsupportedMediaType(_) => Outcome::UnsupportedMediaType,
            Denial::PayloadTooLarge => Outcome::PayloadTooLarge,
            Denial::UpstreamUnavailable => Outcome::UpstreamUnavailable,
            Denial::AuthUnavailable => Outcome::AuthUnavailable,
            Denial::UpstreamTimeout => Outcome::UpstreamTimeout,
            Denial::TooManyStreams => Outcome::RateLimited,
        }
    }
}

pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: Histogram,
    pub auth_duration: Histogram,
    /// `cache_lookups_total{result}`, counted by the store's directory
    pub cache: crate::store::cache::CacheCounters,
    pub snapshot_generation: IntGauge,
    pub snapshot_age: Gauge,
    pub snapshot_reloads: IntCounterVec,
    /// `snapshot_swaps_total{path,reason}`: how each served version reached
    /// the verdict cache (incremental: SPEC §2.1 `changes`; full: refilled)
    pub snapshot_swaps: IntCounterVec,
    pub rate_limit_decisions: IntCounterVec,
    pub rate_limit_backend_up: IntGauge,
    pub upstream_errors: IntCounterVec,
    /// `requests_total` children resolved once: [method][outcome].
    request_children: Vec<Vec<IntCounter>>,
    /// `rate_limit_decisions_total` children per plan ([allowed, limited]),
    /// copy-on-write so the hot path never takes the registry's lock.
    plan_children: arc_swap::ArcSwap<std::collections::HashMap<Box<str>, [IntCounter; 2]>>,
    pub snapshot_lookups: IntCounterVec,
    /// WebSocket and SSE streams open now (SPEC §8.2 Streams)
    pub streams_open: IntGauge,
    /// `usage_pushes_total{result}`, `usage_dropped_total`,
    /// `usage_keys_pending` (SPEC §8.4)
    pub usage: crate::http::usage::UsageMetrics,
    /// `tls_reloads_total{result}` (SPEC §8.3)
    pub tls_reloads: IntCounterVec,
    /// `proxy_protocol_refused_total{reason}`: connections closed unanswered
    pub proxy_refused: IntCounterVec,
    /// the status page's recent requests and refusals (SPEC §8.5)
    pub recent: crate::http::recent::Recent,
    /// streams closed because their credential no longer stands, by reason
    pub streams_closed: IntCounterVec,
    /// `snapshot_fetches_total{result}` and `snapshot_fetch_bytes_total`
    /// (`snapshot.source`, SPEC §8.2)
    pub snapshot_source: crate::store::source::SourceMetrics,
    /// unix seconds at which this process made its metrics (its start)
    pub started_at: u64,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help).namespace("keyward"), labels)
                .expect("metric");
            registry.register(Box::new(c.clone())).expect("register");
            c
        };
        let histogram = |name: &str, help: &str| {
            let h = Histogram::with_opts(
                HistogramOpts::new(name, help)
                    .namespace("keyward")
                    .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("metric");
            registry.register(Box::new(h.clone())).expect("register");
            h
        };
        let requests = counter_vec(
            "requests_total",
            "Requests by auth method and outcome",
            &["auth_method", "outcome"],
        );
        let request_duration = histogram(
            "request_duration_seconds",
            "Time from request to the end of the response",
        );
        let auth_duration = histogram(
            "auth_duration_seconds",
            "Time spent deciding (authentication and authorization)",
        );
        let cache = counter_vec("cache_lookups_total", "Verdict cache lookups", &["result"]);
        let snapshot_generation = IntGauge::with_opts(
            Opts::new(
                "snapshot_generation",
                "Generation of the served snapshot (0: none)",
            )
            .namespace("keyward"),
        )
        .unwrap();
        registry
            .register(Box::new(snapshot_generation.clone()))
            .unwrap();
        let snapshot_age = Gauge::with_opts(
            Opts::new("snapshot_age_seconds", "Age of the served snapshot").namespace("keyward"),
        )
        .unwrap();
        registry.register(Box::new(snapshot_age.clone())).unwrap();
        let snapshot_reloads = counter_vec(
            "snapshot_reloads_total",
            "Snapshot loads by result",
            &["result"],
        );
        let snapshot_swaps = counter_vec(
            "snapshot_swaps_total",
            "Snapshot versions served, by path: incremental (only the keys the changes table names were re-read) or full (the verdict cache was refilled), and why full",
            &["path", "reason"],
        );
        snapshot_swaps.with_label_values(&["incremental", "changes"]);
        for f in crate::snapshot::Fallback::ALL {
            snapshot_swaps.with_label_values(&["full", f.as_str()]);
        }
        let rate_limit_decisions = counter_vec(
            "rate_limit_decisions_total",
            "Rate limit decisions",
            &["plan", "decision"],
        );
        let rate_limit_backend_up = IntGauge::with_opts(
            Opts::new(
                "rate_limit_backend_up",
                "1 when the rate limit backend is usable",
            )
            .namespace("keyward"),
        )
        .unwrap();
        registry
            .register(Box::new(rate_limit_backend_up.clone()))
            .unwrap();
        rate_limit_backend_up.set(1);
        let upstream_errors = counter_vec(
            "upstream_errors_total",
            "Upstream failures by kind",
            &["kind"],
        );
        let snapshot_lookups = counter_vec(
            "snapshot_lookups_total",
            "Queries that reached SQLite",
            &["table"],
        );
        for r in ["ok", "failed"] {
            snapshot_reloads.with_label_values(&[r]);
        }
        let streams_open = IntGauge::with_opts(
            Opts::new("streams_open", "WebSocket and SSE streams open now").namespace("keyward"),
        )
        .unwrap();
        registry.register(Box::new(streams_open.clone())).unwrap();
        let snapshot_source = crate::store::source::SourceMetrics {
            fetches: counter_vec(
                "snapshot_fetches_total",
                "Polls of snapshot.source by result",
                &["result"],
            ),
            bytes: {
                let c = IntCounter::with_opts(
                    Opts::new(
                        "snapshot_fetch_bytes_total",
                        "Bytes of snapshot versions downloaded from snapshot.source",
                    )
                    .namespace("keyward"),
                )
                .expect("metric");
                registry.register(Box::new(c.clone())).expect("register");
                c
            },
        };
        for r in ["updated", "not_modified", "failed", "rejected"] {
            snapshot_source.fetches.with_label_values(&[r]);
        }
        let streams_closed = counter_vec(
            "streams_closed_total",
            "Streams closed because their credential was revoked, expired, or lost its organization or workspace scope",
            &["reason"],
        );
        for r in crate::auth::decide::LAPSE_REASONS {
            streams_closed.with_label_values(&[r]);
        }
        let tls_reloads = counter_vec(
            "tls_reloads_total",
            "Re-reads of the downstream certificate and key by result (SPEC §8.3)",
            &["result"],
        );
        for r in ["ok", "failed"] {
            tls_reloads.with_label_values(&[r]);
        }
        let proxy_refused = counter_vec(
            "proxy_protocol_refused_total",
            "Connections closed without a response by the PROXY protocol rule (SPEC §8.3)",
            &["reason"],
        );
        for r in ["invalid", "untrusted", "timeout", "io"] {
            proxy_refused.with_label_values(&[r]);
        }
        let usage_pushes = counter_vec(
            "usage_pushes_total",
            "Usage pushes to usage.push_url by result (SPEC §8.4)",
            &["result"],
        );
        for r in ["ok", "failed"] {
            usage_pushes.with_label_values(&[r]);
        }
        let usage_dropped = IntCounter::with_opts(
            Opts::new(
                "usage_dropped_total",
                "Keys whose usage was dropped: more than usage.max_keys waited",
            )
            .namespace("keyward"),
        )
        .unwrap();
        registry.register(Box::new(usage_dropped.clone())).unwrap();
        let usage_pending = IntGauge::with_opts(
            Opts::new(
                "usage_keys_pending",
                "Keys whose usage waits for a successful push",
            )
            .namespace("keyward"),
        )
        .unwrap();
        registry.register(Box::new(usage_pending.clone())).unwrap();
        for t in TABLES {
            snapshot_lookups.with_label_values(&[t]);
        }
        // Zero series exist from the start, so alerts on rate() see them.
        for k in ["unavailable", "timeout"] {
            upstream_errors.with_label_values(&[k]);
        }
        let request_children = AUTH_METHODS
            .iter()
            .map(|m| {
                Outcome::ALL
                    .iter()
                    .map(|o| requests.with_label_values(&[m, o.as_str()]))
                    .collect()
            })
            .collect();
        Arc::new(Metrics {
            cache: crate::store::cache::CacheCounters::new(&cache),
            registry,
            requests,
            request_duration,
            auth_duration,
            snapshot_generation,
            snapshot_age,
            snapshot_reloads,
            snapshot_swaps,
            rate_limit_decisions,
            rate_limit_backend_up,
            request_children,
            plan_children: Default::default(),
            upstream_errors,
            snapshot_lookups,
            streams_open,
            tls_reloads,
            proxy_refused,
            recent: Default::default(),
            usage: crate::http::usage::UsageMetrics {
                pushes: usage_pushes,
                dropped: usage_dropped,
                pending: usage_pending,
            },
            streams_closed,
            snapshot_source,
            started_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        })
    }

    pub fn cache(&self, r: CacheResult) {
        self.cache.count(r)
    }

    /// One request's `requests_total` (static label sets resolve without
    /// hashing or locking; anything else takes the registry's path).
    pub fn request(&self, method: &str, outcome: Outcome) {
        // Outcome::ALL lists the variants in declaration order
        let o = outcome as usize;
        match AUTH_METHODS.iter().position(|x| *x == method) {
            Some(m) => self.request_children[m][o].inc(),
            None => self
                .requests
                .with_label_values(&[method, outcome.as_str()])
                .inc(),
        }
    }

    pub fn rate_limit(&self, plan: &str, decision: &str) {
        let i = match decision {
            "allowed" => 0,
            "limited" => 1,
            _ => {
                self.rate_limit_decisions
                    .with_label_values(&[plan, decision])
                    .inc();
                return;
            }
        };
        if let Some(c) = self.plan_children.load().get(plan) {
            c[i].inc();
            return;
        }
        // First decision for this plan name: resolve and publish its children.
        let pair = [
            self.rate_limit_decisions
                .with_label_values(&[plan, "allowed"]),
            self.rate_limit_decisions
                .with_label_values(&[plan, "limited"]),
        ];
        pair[i].inc();
        self.plan_children.rcu(|m| {
            let mut m = std::collections::HashMap::clone(m);
            m.entry(plan.into()).or_insert_with(|| pair.clone());
            m
        });
    }

    /// Copy the store's own counters into the registry, then encode.
    pub fn render(&self, store: &SnapshotStore) -> String {
        use std::sync::atomic::Ordering;
        self.snapshot_generation.set(store.generation_id() as i64);
        self.snapshot_age
            .set(store.age_seconds().unwrap_or(0) as f64);
        let sync = |c: IntCounter, v: u64| {
            let have = c.get();
            if v > have {
                c.inc_by(v - have);
            }
        };
        sync(
            self.snapshot_reloads.with_label_values(&["ok"]),
            store.reloads.ok.load(Ordering::Relaxed),
        );
        sync(
            self.snapshot_reloads.with_label_values(&["failed"]),
            store.reloads.failed.load(Ordering::Relaxed),
        );
        sync(
            self.snapshot_swaps
                .with_label_values(&["incremental", "changes"]),
            store.reloads.incremental.load(Ordering::Relaxed),
        );
        for f in crate::snapshot::Fallback::ALL {
            sync(
                self.snapshot_swaps.with_label_values(&["full", f.as_str()]),
                store.reloads.full[f as usize].load(Ordering::Relaxed),
            );
        }
        for (i, t) in TABLES.iter().enumerate() {
            sync(
                self.snapshot_lookups.with_label_values(&[t]),
                store.lookups(i),
            );
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encode");
        // the token filter's own families
        out.extend_from_slice(store.filter_stats.render().as_bytes());
        String::from_utf8(out).expect("utf8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_listed_in_declaration_order() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i, "{o:?}");
        }
    }
}
