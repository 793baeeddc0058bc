//! Assembly: snapshot store + watcher, decision engine, admin listener,
//! SIGHUP reloads, and the pingora server with its shutdown behaviour.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};

use crate::config::{Config, RateLimitBackend};
use crate::engine::Engine;
use crate::http::app::KeywardApp;
use crate::metrics::Metrics;
use crate::ops::upgrade::{self, AdminHandle};
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
    /// the admin listener, to hand over on SIGQUIT (`None` once handed over
    /// or while an upgrade has not received it yet)
    _admin: Arc<Mutex<Option<AdminHandle>>>,
    /// an upgrade's hand-over, to send the final rate-limit counts through
    handed_over: upgrade::Pending,
    _admin_rt: tokio::runtime::Runtime,
    /// `[tracing]`: its batch exporter runs on the admin runtime
    #[cfg(feature = "otel")]
    pub tracing: Option<Arc<crate::http::otel::Tracing>>,
}

/// Longest a SIGINT exit may take before keyward exits without pingora.
const SIGINT_EXIT_BOUND: std::time::Duration = std::time::Duration::from_secs(2);

/// Longest an upgrading process waits for the running one's admin listener
/// (pingora waits about as long for the proxy listeners, then exits).
const ADMIN_HAND_OVER_WAIT: Duration = Duration::from_secs(10);

/// Longest the first fetch from `snapshot.source` may hold the start.
const SOURCE_FIRST_FETCH: Duration = Duration::from_secs(30);

/// Everything but the pingora server: store, watcher, engine, admin, SIGHUP.
/// With `upgrade`, the admin listener and the local rate-limit counts come
/// from the running keyward when it gets SIGQUIT ([`upgrade`]).
pub fn start_support(config: Config, upgrade: bool) -> anyhow::Result<Running> {
    // Listen for the hand-over first: the operator may send SIGQUIT as soon
    // as this process runs, before the snapshot has loaded.
    let admin_sock = upgrade::admin_sock(&config.server.upgrade_sock);
    let incoming = upgrade.then(|| {
        let path = admin_sock.clone();
        std::thread::spawn(move || upgrade::receive(&path, ADMIN_HAND_OVER_WAIT))
    });
    let metrics = Metrics::new();
    let store = SnapshotStore::new(config.snapshot.path.clone());
    if config.session.secret.is_none() {
        tracing::warn!("no BetterAuth secret configured (session.secret_env / session.secret): session cookies will be answered 401");
    }
    let snapshot_source = match &config.snapshot.source {
        None => None,
        Some(url) => Some(
            crate::store::source::Source::new(
                url,
                &config.snapshot.path,
                config.snapshot.verify_key.clone(),
            )?
            .with_metrics(metrics.snapshot_source.clone())
            .reporting_to(store.clone()),
        ),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("keyward-admin")
        .enable_all()
        .build()?;
    let snapshot_source = snapshot_source.map(|mut source| {
        // The first version before the first load (bounded): a fresh
        // replica has no file yet. The watcher loads later ones.
        let _ =
            rt.block_on(async { tokio::time::timeout(SOURCE_FIRST_FETCH, source.poll()).await });
        source
    });
    let _ = store.reload();
    store.watch(config.snapshot.poll_interval);
    let source: Option<PathBuf> = config.source.clone();
    let admin_listen = config.server.admin_listen;
    #[cfg(feature = "otel")]
    let otel = match &config.tracing {
        Some(t) => Some(crate::http::otel::Tracing::start(t, rt.handle())?),
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
        .map_err(|e| anyhow::anyhow!("rate_limit: {e}"))?,
    };
    let grace = config.server.shutdown_grace;
    let poll = config.snapshot.poll_interval;
    let engine = Engine::with_limiter(config, store, metrics, limiter);
    if let Some(source) = snapshot_source {
        let _ = engine.source_unreachable.set(source.unreachable.clone());
        rt.spawn(source.run(poll));
    }
    if engine.usage.enabled() {
        rt.spawn(engine.usage.clone().run());
    }
    let admin: Arc<Mutex<Option<AdminHandle>>> = Arc::default();
    let admin_addr = match incoming {
        None => {
            let listener = crate::admin::bind(admin_listen)
                .map_err(|e| anyhow::anyhow!("cannot bind admin listener {admin_listen}: {e}"))?;
            let (addr, handle) = crate::admin::start(rt.handle(), listener, engine.clone())?;
            *admin.lock().unwrap() = Some(handle);
            addr
        }
        Some(incoming) => {
            take_over_admin(
                incoming,
                rt.handle().clone(),
                engine.clone(),
                admin.clone(),
                grace,
            );
            admin_listen
        }
    };
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
    let handed_over: upgrade::Pending = Arc::default();
    {
        // pingora handles SIGTERM/SIGQUIT itself (drain, then exit; on
        // SIGQUIT it first sends the proxy listeners to an upgrading
        // process). This turns /readyz to 503 from the first moment of
        // draining and, on SIGQUIT, hands the admin listener and the local
        // rate-limit counts over too.
        let engine = engine.clone();
        let admin = admin.clone();
        let handed_over = handed_over.clone();
        rt.spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut quit)) =
                (signal(SignalKind::terminate()), signal(SignalKind::quit()))
            else {
                return;
            };
            let upgrading = tokio::select! {
                _ = term.recv() => false,
                _ = quit.recv() => true,
            };
            engine
                .draining
                .store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::info!("draining: /readyz answers 503");
            if upgrading {
                let _ = tokio::task::spawn_blocking(move || {
                    hand_over_admin(&admin_sock, &engine, &admin, &handed_over)
                })
                .await;
            }
        });
    }
    if let Some(path) = source {
        let engine = engine.clone();
        rt.spawn(async move {
            let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
            while hup.recv().await.is_some() {
                if let Some(tls) = engine.tls.get() {
                    let _ = tls.reload();
                }
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
        _admin: admin,
        handed_over,
        _admin_rt: rt,
        #[cfg(feature = "otel")]
        tracing: otel,
    })
}

/// SIGQUIT: send the admin listener and the counts to an upgrading
/// process, if one listens; stop accepting on the admin listener once sent.
fn hand_over_admin(
    path: &std::path::Path,
    engine: &Engine,
    admin: &Mutex<Option<AdminHandle>>,
    handed_over: &upgrade::Pending,
) {
    let Some(handle) = admin.lock().unwrap().take() else {
        return;
    };
    match upgrade::send(path, handle.fd.as_raw_fd(), &*engine.limiter) {
        Ok(sent) => {
            let _ = handle.stop.send(true);
            *handed_over.lock().unwrap() = Some(sent);
            tracing::info!("upgrade: admin listener and rate-limit counts handed over");
        }
        Err(e) => {
            tracing::info!(error = %e, "SIGQUIT: no upgrading keyward took the admin listener; it serves until exit");
            *admin.lock().unwrap() = Some(handle);
        }
    }
}

/// `--upgrade`: serve the admin listener the running keyward hands over and
/// add its counts; without a hand-over (a keyward that predates it), bind
/// the address once the old process has released it.
fn take_over_admin(
    incoming: std::thread::JoinHandle<std::io::Result<upgrade::Received>>,
    rt: tokio::runtime::Handle,
    engine: Arc<Engine>,
    slot: Arc<Mutex<Option<AdminHandle>>>,
    grace: Duration,
) {
    let addr = engine.policy.load().config.server.admin_listen;
    let spawned = std::thread::Builder::new()
        .name("keyward-upgrade".into())
        .spawn(move || {
            let listener = match incoming.join() {
                Ok(Ok(received)) => Ok(received
                    .absorb_counts(engine.limiter.clone(), grace + Duration::from_secs(15))),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "upgrade: no admin listener handed over; binding it when free");
                    let deadline = std::time::Instant::now() + grace + Duration::from_secs(30);
                    loop {
                        match crate::admin::bind(addr) {
                            Ok(l) => break Ok(l),
                            Err(e) if std::time::Instant::now() < deadline => {
                                let _ = e;
                                std::thread::sleep(Duration::from_millis(100));
                            }
                            Err(e) => break Err(e),
                        }
                    }
                }
                Err(_) => return,
            };
            match listener.and_then(|l| crate::admin::start(&rt, l, engine)) {
                Ok((_, handle)) => *slot.lock().unwrap() = Some(handle),
                Err(e) => tracing::error!(error = %e, %addr, "upgrade: no admin listener"),
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "upgrade: cannot start the admin take-over");
    }
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

/// Run keyward until SIGTERM (graceful, `server.shutdown_grace_s`), SIGQUIT
/// (hand the listeners to a `--upgrade` process, then the same) or SIGINT
/// (fast). With `upgrade`, take the listeners of the keyward running with
/// the same `server.upgrade_sock` when it gets SIGQUIT.
pub fn run(config: Config, upgrade: bool) -> anyhow::Result<()> {
    let listen = config.server.listen;
    let threads = config.server.threads;
    let grace = config.server.shutdown_grace.as_secs();
    let tls = config.server.tls.clone();
    let ca_file = config
        .upstream
        .ca_file
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned());
    let mut conf = server_conf(threads, grace, ca_file);
    conf.upgrade_sock = config.server.upgrade_sock.to_string_lossy().into_owned();
    let running = start_support(config, upgrade)?;
    // the served pair, re-read on SIGHUP and when the files change (SPEC §8.3)
    let certs = match &tls {
        Some(t) => {
            let store = crate::http::tls::CertStore::open(
                &t.cert,
                &t.key,
                running.engine.metrics.tls_reloads.clone(),
            )
            .map_err(|e| anyhow::anyhow!("server.tls: {e}"))?;
            store.watch();
            let _ = running.engine.tls.set(store.clone());
            Some(store)
        }
        None => None,
    };
    tracing::info!(%listen, admin = %running.admin_addr, upgrade, "keyward starting");

    let opt = pingora::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    // with `upgrade`: waits for the running keyward's listeners (SIGQUIT)
    server.bootstrap();
    let server_conf = server.configuration.clone();
    let app = || {
        let app = KeywardApp::new(running.engine.clone(), &server_conf);
        #[cfg(feature = "otel")]
        let app = app.with_tracing(running.tracing.clone());
        app
    };
    // One socket per worker (see `reuseport_key`), except on port 0, where
    // each socket would get a port of its own.
    let per_worker = threads > 1 && listen.port() != 0;
    let keys: Vec<String> = if per_worker {
        (0..threads).map(|w| reuseport_key(listen, w)).collect()
    } else {
        vec![listen.to_string()]
    };
    let proxy_protocol = running.engine.policy.load().config.server.proxy_protocol;
    for addr in &keys {
        let mut service = pingora::services::listening::Service::new(
            "keyward".into(),
            crate::http::proxy_protocol::ProxyProtocolApp::new(
                crate::http::connection::Connections::new(app()),
                running.engine.clone(),
                proxy_protocol,
            ),
        );
        if let (Some(version), Some(_)) = (proxy_protocol, &tls) {
            // the header comes before the TLS handshake
            service.endpoints().set_pre_tls_callback(Arc::new(
                crate::http::proxy_protocol::PreTls {
                    engine: running.engine.clone(),
                    version,
                },
            ));
        }
        let options = per_worker.then(|| {
            service.threads = Some(1);
            let mut options = pingora::listeners::TcpSocketOptions::default();
            options.so_reuseport = Some(true);
            options
        });
        match (&tls, options) {
            (None, None) => service.add_tcp(addr),
            (None, Some(options)) => service.add_tcp_with_settings(addr, options),
            (Some(t), options) => {
                let mut settings = pingora::listeners::tls::TlsSettings::intermediate(
                    &t.cert.to_string_lossy(),
                    &t.key.to_string_lossy(),
                )
                .map_err(|e| anyhow::anyhow!("server.tls: {e}"))?;
                if let Some(store) = &certs {
                    settings.set_cert_resolver(store.clone());
                }
                settings.enable_h2();
                service.add_tls_with_settings(addr, options, settings);
            }
        }
        server.add_service(service);
    }
    // forward-auth (SPEC §8.3): the same engine, one plain listener
    let auth_listen = running.engine.policy.load().config.server.auth_listen;
    if let Some(addr) = auth_listen {
        let mut service = pingora::services::listening::Service::new(
            "keyward-auth".into(),
            crate::http::connection::Connections::new(app().for_forward_auth()),
        );
        service.add_tcp(&addr.to_string());
        server.add_service(service);
        tracing::info!(auth_listen = %addr, "forward-auth listener");
    }
    // SIGQUIT hands the listeners over and drains at once (not pingora's
    // 5 s of accepting first); every graceful exit is bounded (ops/shutdown.rs)
    let signals = crate::ops::shutdown::Signals {
        upgrade_sock: server_conf.upgrade_sock.clone(),
        listen,
        keys,
        admin: running.admin_addr,
        grace: Duration::from_secs(grace),
    };
    server.run(RunArgs {
        shutdown_signal: Box::new(signals),
    });
    finish(running)
}

/// The listening address of worker `worker`'s own `SO_REUSEPORT` socket,
/// spelled so that it names the same address and port (`127.0.0.1:8080`,
/// `127.0.0.1:08080`, …: the port may carry leading zeros) yet is a key of
/// its own in pingora's listener table, which is keyed by that string and
/// would otherwise hand every service the first socket (and hand all of
/// them, each under its key, to a `--upgrade` process).
///
/// Why a socket per worker: with one, pingora accepts on one worker and the
/// connection stays registered with that worker's event loop, so every
/// request the other worker serves costs a cross-thread wake-up (docs/benchmarks.md
/// "Two workers on two cores"). With `SO_REUSEPORT` the kernel spreads
/// connections over the sockets by their address hash.
fn reuseport_key(listen: std::net::SocketAddr, worker: usize) -> String {
    let whole = listen.to_string();
    let (host, port) = whole.rsplit_once(':').expect("host:port");
    format!("{host}:{}{port}", "0".repeat(worker))
}

/// After pingora returns: hand over, export, stop the admin runtime.
fn finish(running: Running) -> anyhow::Result<()> {
    // drained: the upgraded process adds what this one admitted meanwhile
    if let Some(sent) = running.handed_over.lock().unwrap().take() {
        sent.finish(&*running.engine.limiter);
    }
    // the last requests' usage (SPEC §8.4): one bounded push
    if running.engine.usage.enabled() {
        let usage = running.engine.usage.clone();
        let last = running._admin_rt.block_on(async move {
            tokio::time::timeout(std::time::Duration::from_secs(2), usage.flush()).await
        });
        if !matches!(last, Ok(Ok(()))) {
            tracing::warn!("usage: the last push at shutdown did not complete");
        }
    }
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

#[cfg(test)]
mod tests {
    use std::net::{SocketAddr, ToSocketAddrs};

    /// Each worker's key is a distinct string for the same address.
    #[test]
    fn reuseport_keys_name_the_same_address() {
        for listen in ["127.0.0.1:8080", "[::1]:443", "0.0.0.0:1"] {
            let listen: SocketAddr = listen.parse().unwrap();
            let keys: Vec<String> = (0..4).map(|w| super::reuseport_key(listen, w)).collect();
            assert_eq!(keys[0], listen.to_string());
            for k in &keys {
                let addrs: Vec<SocketAddr> = k.to_socket_addrs().unwrap().collect();
                assert_eq!(addrs, vec![listen], "{k}");
            }
            let distinct: std::collections::HashSet<&String> = keys.iter().collect();
            assert_eq!(distinct.len(), 4);
        }
    }
}
