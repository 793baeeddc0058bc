//! The engine: what one keyward process shares between requests — the
//! snapshot store, the verdict cache's lifecycle, the current [`Policy`],
//! the limiters and the metrics — and the per-request entry to the decision
//! core: one policy and one directory pinned for the request, then
//! [`decide`](crate::auth::decide::decide). Wiring only; policy lives in
//! `auth`, I/O in `store`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth::decide::{self, Body, Decision, Env, Pending, PlanUse, Policy, RequestFacts};
use crate::config::Config;
use crate::http::streams::Streams;
use crate::http::usage::Usage;
use crate::metrics::Metrics;
use crate::ratelimit::{AuthFailureThrottle, Limiter, LocalLimiter};
use crate::snapshot::SnapshotStore;
use crate::store::verdicts::Verdicts;
use crate::store::SnapshotDirectory;

pub struct Engine {
    pub store: Arc<SnapshotStore>,
    pub policy: ArcSwap<Policy>,
    pub verdicts: Arc<Verdicts>,
    pub limiter: Arc<dyn Limiter>,
    pub throttle: AuthFailureThrottle,
    pub metrics: Arc<Metrics>,
    /// open WebSocket and SSE streams, closed when their credential lapses
    pub streams: Arc<Streams>,
    /// per-key usage for `usage.push_url` (SPEC §8.4)
    pub usage: Arc<Usage>,
    /// the downstream certificate, with `[server.tls]` (SPEC §8.3)
    pub tls: std::sync::OnceLock<Arc<crate::http::tls::CertStore>>,
    warned_unconfigured: AtomicBool,
    /// set from SIGTERM/SIGQUIT on: `/readyz` answers 503 while in-flight
    /// requests drain, so a load balancer stops sending
    pub draining: AtomicBool,
    /// with `snapshot.source`: set while the origin cannot be reached
    /// (`/readyz` degraded `snapshot_source_unreachable`)
    pub source_unreachable: std::sync::OnceLock<Arc<AtomicBool>>,
}

/// One request's pinned view: the policy and the directory (snapshot
/// generation + verdict cache) it is judged by from start to end.
pub struct Pinned<'e> {
    engine: &'e Engine,
    pub policy: Arc<Policy>,
    directory: SnapshotDirectory<'e>,
}

impl Engine {
    pub fn new(config: Config, store: Arc<SnapshotStore>, metrics: Arc<Metrics>) -> Arc<Engine> {
        let limiter = Arc::new(LocalLimiter::new(config.rate_limit.window_s));
        Engine::with_limiter(config, store, metrics, limiter)
    }

    pub fn with_limiter(
        config: Config,
        store: Arc<SnapshotStore>,
        metrics: Arc<Metrics>,
        limiter: Arc<dyn Limiter>,
    ) -> Arc<Engine> {
        // No bound on token lookups at once (a lookup gate, removed): with
        // `threads - 1` slots and a 2 ms or 50 ms wait it
        // refused valid requests with 503 — during a reload under load one
        // lookup can take 50 ms (benches/load/snapshot_scale.sh: 2 of 860,207
        // valid requests shed), and the waiting worker spins, so its own
        // cached requests wait too. Random tokens, what the bound was for,
        // no longer reach SQLite: the token filter rules them out.
        Arc::new(Engine {
            throttle: AuthFailureThrottle::new(
                config.rate_limit.window_s,
                config.rate_limit.auth_failures_per_ip,
            ),
            limiter,
            verdicts: Verdicts::attach(&config.cache, &store),
            streams: Streams::new(store.clone(), metrics.clone()),
            usage: Usage::new(
                &config.usage,
                &config.server.replica_id,
                metrics.usage.clone(),
                crate::clock::now_unix(),
            ),
            store,
            policy: ArcSwap::from_pointee(Policy { config }),
            metrics,
            warned_unconfigured: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            source_unreachable: std::sync::OnceLock::new(),
            tls: std::sync::OnceLock::new(),
        })
    }

    /// Apply a reloaded config (routes, plans, cache sizes, session settings).
    pub fn reload_policy(&self, config: Config) {
        self.verdicts.reconfigure(&config.cache);
        self.policy.store(Arc::new(Policy { config }));
    }

    /// Pin the current policy and snapshot generation for one request.
    pub fn pin(&self) -> Pinned<'_> {
        Pinned {
            engine: self,
            policy: self.policy.load_full(),
            directory: SnapshotDirectory::pin(
                self.store.current(),
                self.verdicts.current(),
                &self.metrics.cache,
            ),
        }
    }
}

impl<'e> Pinned<'e> {
    /// The directory this request is judged by (`keyward explain` on the
    /// status page runs against the live snapshot and cache).
    pub fn directory(&self) -> &dyn crate::auth::directory::Directory {
        &self.directory
    }

    fn env(&self, now: i64) -> Env<'_> {
        Env {
            policy: &self.policy,
            directory: &self.directory,
            limiter: &*self.engine.limiter,
            throttle: &self.engine.throttle,
            now,
            trace: None,
        }
    }

    /// [`decide::decide`] with this request's pinned policy and directory.
    pub fn decide(&self, facts: &RequestFacts<'_>, now: i64) -> Decision<'_> {
        let d = decide::decide(facts, &self.env(now));
        self.count(&d);
        d
    }

    /// [`decide::decide_body`], once the body the core asked for was read.
    pub fn decide_body<'s>(
        &'s self,
        facts: &RequestFacts<'_>,
        pending: Pending<'s>,
        body: Body<'_>,
        now: i64,
    ) -> Decision<'s> {
        let d = decide::decide_body(facts, pending, body, &self.env(now));
        self.count(&d);
        d
    }

    /// `rate_limit_decisions_total{plan,decision}`, and one warning for an
    /// organization whose plan has no table.
    fn count(&self, d: &Decision<'_>) {
        let (plan, decision) = match d {
            Decision::Forward(g) if g.would_deny.is_some() => (g.plan, "shadow_denied"),
            Decision::Forward(g) => (g.plan, "allowed"),
            Decision::Refuse(r) => (r.plan, "limited"),
            Decision::NeedBody(_) => (None, ""),
        };
        let m = &self.engine.metrics;
        match plan {
            Some(PlanUse::Plan(p)) => m.rate_limit(p, decision),
            Some(PlanUse::Unconfigured) => {
                m.rate_limit("unconfigured", decision);
                if !self
                    .engine
                    .warned_unconfigured
                    .swap(true, Ordering::Relaxed)
                {
                    tracing::warn!("an organization's plan has no [plans] table and there is no [plans.default]: not rate limited");
                }
            }
            None => {}
        }
    }
}
