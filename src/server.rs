//! Assembly: snapshot store + watcher, decision engine, admin listener,
//! SIGHUP reloads, and the pingora server with its shutdown behaviour.

use std::path::PathBuf;
use std::sync::Arc;

use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};

use crate::config::{Config, RateLimitBackend};
use crate::engine::Engine;
use crate::http::app::KeywardApp;
use crate::metrics::Metrics;
use crate::ratelimit::{LocalLimiter, RedisLimiter};
use crate::snapshot::SnapshotStore;

/// SIGHUP: re-read the config file; keep the old one on any problem.
pub fn reload_config(engine: &Engine, path: &std::path::Path) -> Result<(), String> {
    let new = Config::load(path).map_err(|e| e.to_string())?;
    let old = engine.policy.load();
    // A key only read at start would silently keep its old value: refuse,
    // naming it (SPEC §8.2).
    if let Some(key) = crate::config::frozen_change(&old.config, &new) {
        return Err(format!("`{key}` cannot change without a restart"));
    }
    engine.reload_policy(new);
    Ok(())
}

pub struct Running {
    pub engine: Arc<Engine>,
    pub admin_addr: std::net::SocketAddr,
    _admin_rt: tokio::runtime::Runtime,
    /// `[tracing]`: its batch exporter runs on the admin runtime
    #[cfg(feature = "otel")]
    pub tracing: Option<Arc<crate::ops::otel::Tracing>>,
}

/// Longest a SIGINT exit may take before keyward exits without pingora.
const SIGINT_EXIT_BOUND: std::time::Duration = std::time::Duration::from_secs(2);

/// Everything but the pingora server: store, watcher, engine, admin, SIGHUP.
pub fn start_support(config: Config) -> anyhow::Result<Running> {
    let metrics = Metrics::new();
    let store = SnapshotStore::new(config.snapshot.path.clone());
    if config.session.secret.is_none() {
        tracing::warn!("no BetterAuth secret configured (session.secret_env / session.secret): session cookies will be answered 401");
    }
    let _ = store.reload();
    store.watch(config.snapshot.poll_interval);
    let source: Option<PathBuf> = config.source.clone();
    let admin_listen = config.server.admin_listen;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("keyward-admin")
        .enable_all()
        .build()?;
    #[cfg(feature = "otel")]
    let otel = match &config.tracing {
        Some(t) => Some(crate::ops::otel::Tracing::start(t, rt.handle())?),
        None => None,
    };
    let limiter: Arc<dyn crate::ratelimit::Limiter> = match &config.rate_limit.backend {
        RateLimitBackend::Local => Arc::new(LocalLimiter::new(config.rate_limit.window_s)),
        RateLimitBackend::Redis(redis) => RedisLimiter::start(
            redis,
            config.rate_limit.window_s,
            rt.handle(),
            metrics.rate_limit_backend_up.clone(),
        )
        .map_err(|e| anyhow::anyhow!("rate_limit.redis_url: {e}"))?,
    };
    let engine = Engine::with_limiter(config, store, metrics, limiter);
    let admin_addr = crate::admin::start(&rt, admin_listen, engine.clone())
        .map_err(|e| anyhow::anyhow!("cannot bind admin listener {admin_listen}: {e}"))?;
    // SIGINT is a fast exit. pingora 0.9 can hang in it: with work stealing
    // off, a worker spins on accept errors once the listener's runtime
    // stopped and never reads its own shutdown (seen 2–5 times in 100 under
    // load). A bounded exit keeps "fast" true whatever pingora does.
    rt.spawn(async {
        let Ok(mut int) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        else {
            return;
        };
        if int.recv().await.is_some() {
            std::thread::spawn(|| {
                std::thread::sleep(SIGINT_EXIT_BOUND);
                tracing::warn!("SIGINT: pingora did not stop in time; exiting");
                std::process::exit(0);
            });
        }
    });
    {
        // pingora handles SIGTERM/SIGQUIT itself (drain, then exit); this
        // only turns /readyz to 503 from the first moment of draining.
        let engine = engine.clone();
        rt.spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut quit)) =
                (signal(SignalKind::terminate()), signal(SignalKind::quit()))
            else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = quit.recv() => {}
            }
            engine
                .draining
                .store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::info!("draining: /readyz answers 503");
        });
    }
    if let Some(path) = source {
        let engine = engine.clone();
        rt.spawn(async move {
            let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
            while hup.recv().await.is_some() {
                match reload_config(&engine, &path) {
                    Ok(()) => tracing::info!(path = %path.display(), "config reloaded"),
                    Err(e) => tracing::error!(path = %path.display(), error = %e, "config reload rejected; keeping the old config"),
                }
            }
        });
    }
    Ok(Running {
        engine,
        admin_addr,
        _admin_rt: rt,
        #[cfg(feature = "otel")]
        tracing: otel,
    })
}

/// keyward's pingora settings (also what the bare proxies in `benches/` run
/// with, so that keyward / bare measures only keyward's decisions): worker
/// threads each on their own runtime without work stealing (a connection's
/// requests stay on one thread, which keyward's per-thread upstream pool
/// relies on), `grace_s` for in-flight requests on SIGTERM.
/// `upstream_keepalive_pool_size` sizes pingora's shared pool, which only
/// pingora-proxy (`benches/bare_proxy.rs`) uses.
pub fn server_conf(threads: usize, grace_s: u64, ca_file: Option<String>) -> ServerConf {
    ServerConf {
        threads,
        work_stealing: false,
        grace_period_seconds: Some(grace_s),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: 256,
        ca_file,
        ..ServerConf::default()
    }
}

/// Run keyward until SIGTERM (graceful, `server.shutdown_grace_s`) or SIGINT (fast).
pub fn run(config: Config) -> anyhow::Result<()> {
    let listen = config.server.listen;
    let threads = config.server.threads;
    let grace = config.server.shutdown_grace.as_secs();
    let tls = config.server.tls.clone();
    let ca_file = config
        .upstream
        .ca_file
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned());
    let running = start_support(config)?;
    tracing::info!(%listen, admin = %running.admin_addr, "keyward starting");

    let mut server = Server::new_with_opt_and_conf(None, server_conf(threads, grace, ca_file));
    server.bootstrap();
    let app = KeywardApp::new(running.engine.clone(), &server.configuration);
    #[cfg(feature = "otel")]
    let app = app.with_tracing(running.tracing.clone());
    let mut service = pingora::services::listening::Service::new("keyward".into(), app);
    match &tls {
        None => service.add_tcp(&listen.to_string()),
        Some(t) => {
            let mut settings = pingora::listeners::tls::TlsSettings::intermediate(
                &t.cert.to_string_lossy(),
                &t.key.to_string_lossy(),
            )
            .map_err(|e| anyhow::anyhow!("server.tls: {e}"))?;
            settings.enable_h2();
            service.add_tls_with_settings(&listen.to_string(), None, settings);
        }
    }
    server.add_service(service);
    server.run(RunArgs::default());
    // spans of the last requests: exported before the runtime stops
    #[cfg(feature = "otel")]
    if let Some(t) = &running.tracing {
        t.shutdown(std::time::Duration::from_secs(2));
    }
    // pingora has stopped serving (after the grace period, or at once on
    // SIGINT); the admin listener and background tasks get a bounded moment,
    // never a wait on a task that does not end.
    running
        ._admin_rt
        .shutdown_timeout(std::time::Duration::from_millis(500));
    Ok(())
}
