//! `keyward sync` (SPEC §9): builds and follows the snapshot from the
//! application's Postgres, so no deployment writes its own exporter.
//!
//! - `config`: the sync TOML file → [`SyncConfig`]
//! - `preset`: BetterAuth's tables mapped to snapshot tables
//! - `pg`: the connection (TLS per sslmode) and row values
//! - `build`: full builds (beside, checked, renamed in) and differences
//!   written in place with `changes` rows
//! - `outbox`: the outbox table and triggers, and one follow round
//! - `usage`: the usage receiver (SPEC §8.4), `[usage] listen`
//!
//! A layer-4 program beside `ops`: it writes the file keyward reads, and
//! shares keyward's schema, hashing and clock, nothing of the proxy.

pub mod build;
pub mod config;
pub mod outbox;
pub mod pg;
pub mod preset;
pub mod upload;
pub mod usage;

use std::convert::Infallible;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use prometheus::{Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use self::build::{Scope, SyncError};
pub use self::config::{Mode, SyncConfig};

/// What `/metrics` and `/readyz` on `[sync] admin_listen` show.
pub struct SyncMetrics {
    registry: Registry,
    pub builds: IntCounterVec,
    pub changes_applied: IntCounter,
    pub lag: Gauge,
    pub source_up: IntGauge,
    pub rows_skipped: IntCounterVec,
    pub uploads: IntCounterVec,
    pub usage: usage::UsageMetrics,
    /// unix seconds of the last round that reached the source
    pub last_contact: AtomicI64,
    max_staleness: Duration,
}

impl SyncMetrics {
    pub fn new(max_staleness: Duration) -> Arc<SyncMetrics> {
        let registry = Registry::new();
        let opts = |n: &str, h: &str| Opts::new(n, h).namespace("keyward");
        let builds = IntCounterVec::new(
            opts("sync_builds_total", "Full snapshot builds, by result"),
            &["result"],
        )
        .unwrap();
        let changes_applied = IntCounter::with_opts(opts(
            "sync_changes_applied_total",
            "Rows written into the snapshot in place",
        ))
        .unwrap();
        let lag = Gauge::with_opts(opts(
            "sync_lag_seconds",
            "Age of the oldest outbox row not yet applied",
        ))
        .unwrap();
        let source_up =
            IntGauge::with_opts(opts("sync_source_up", "1 while the source answers")).unwrap();
        let rows_skipped = IntCounterVec::new(
            opts(
                "sync_rows_skipped_total",
                "Source rows left out (no id, unreadable hash, no organization)",
            ),
            &["table"],
        )
        .unwrap();
        let uploads = IntCounterVec::new(
            opts(
                "sync_uploads_total",
                "Versions put to output.upload, by result",
            ),
            &["result"],
        )
        .unwrap();
        for c in [
            Box::new(uploads.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(builds.clone()),
            Box::new(changes_applied.clone()),
            Box::new(lag.clone()),
            Box::new(source_up.clone()),
            Box::new(rows_skipped.clone()),
        ] {
            registry.register(c).unwrap();
        }
        for r in ["ok", "failed"] {
            builds.with_label_values(&[r]);
            uploads.with_label_values(&[r]);
        }
        let usage = usage::UsageMetrics::new(&registry);
        Arc::new(SyncMetrics {
            registry,
            builds,
            changes_applied,
            lag,
            source_up,
            rows_skipped,
            uploads,
            usage,
            last_contact: AtomicI64::new(0),
            max_staleness,
        })
    }

    fn contact(&self, up: bool) {
        self.source_up.set(up.into());
        if up {
            self.last_contact
                .store(crate::store::clock::now_unix(), Ordering::Relaxed);
        }
    }

    fn render(&self) -> String {
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .unwrap();
        String::from_utf8(buf).unwrap()
    }

    /// Ready: the source answered within `max_staleness_s` (a snapshot was
    /// built or followed from it).
    fn ready(&self) -> (u16, serde_json::Value) {
        let last = self.last_contact.load(Ordering::Relaxed);
        let age = crate::store::clock::now_unix() - last;
        let ok = last > 0 && age <= self.max_staleness.as_secs() as i64;
        (
            if ok { 200 } else { 503 },
            serde_json::json!({
                "ready": ok,
                "source_up": self.source_up.get() == 1,
                "last_contact_age_s": if last > 0 { Some(age) } else { None },
            }),
        )
    }
}

async fn handle(
    m: Arc<SyncMetrics>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, ctype, body) = match req.uri().path() {
        "/metrics" => (200, "text/plain; version=0.0.4", m.render()),
        "/healthz" => (200, "application/json", r#"{"status":"ok"}"#.to_string()),
        "/readyz" => {
            let (s, b) = m.ready();
            (s, "application/json", b.to_string())
        }
        _ => (
            404,
            "application/json",
            r#"{"error":"Not found","code":"NOT_FOUND","details":{}}"#.to_string(),
        ),
    };
    Ok(Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .unwrap())
}

async fn serve_admin(listener: tokio::net::TcpListener, m: Arc<SyncMetrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let m = m.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(m.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// One full build; counted, and the position saved once it is renamed in.
async fn full_build(
    client: &mut tokio_postgres::Client,
    cfg: &SyncConfig,
    m: &SyncMetrics,
    why: &str,
) -> Result<String, SyncError> {
    let started = Instant::now();
    let result = async {
        let fetched = build::fetch_all(client, cfg).await?;
        let output = cfg.output.clone();
        let fetched = tokio::task::spawn_blocking(move || {
            build::write_full(&output, &fetched).map(|()| fetched)
        })
        .await
        .expect("the build thread panicked")?;
        Ok::<_, SyncError>(fetched)
    }
    .await;
    match result {
        Ok(fetched) => {
            m.builds.with_label_values(&["ok"]).inc();
            let rows: usize = fetched.tables.iter().map(|t| t.rows.len()).sum();
            for t in &fetched.tables {
                if t.skipped > 0 {
                    m.rows_skipped
                        .with_label_values(&[&t.table.name])
                        .inc_by(t.skipped);
                }
            }
            if let Err(e) = build::save_position(&cfg.output, &fetched.xmin) {
                tracing::warn!(error = %e, "could not save the outbox position (the next start rebuilds)");
            }
            tracing::info!(
                why,
                rows,
                ms = started.elapsed().as_millis() as u64,
                path = %cfg.output.display(),
                "snapshot built"
            );
            Ok(fetched.xmin)
        }
        Err(e) => {
            m.builds.with_label_values(&["failed"]).inc();
            Err(e)
        }
    }
}

/// Upload the working copy when `output.upload` is set; a failure leaves
/// `pending` set so the next round tries again.
async fn publish(cfg: &SyncConfig, m: &SyncMetrics, pending: &mut bool) -> Result<(), String> {
    if cfg.upload.is_none() || !*pending {
        return Ok(());
    }
    match upload::upload(cfg).await {
        Ok(_) => {
            m.uploads.with_label_values(&["ok"]).inc();
            *pending = false;
            Ok(())
        }
        Err(e) => {
            m.uploads.with_label_values(&["failed"]).inc();
            tracing::error!(error = %e, "upload failed (retried next round)");
            Err(e)
        }
    }
}

/// `keyward sync install [--print]`: the outbox SQL, run or printed.
pub async fn install(cfg: &SyncConfig, print: bool, schema: &str) -> Result<(), String> {
    let sql = outbox::install_sql(cfg, schema);
    if print {
        print!("{sql}");
        return Ok(());
    }
    let client = pg::connect(&cfg.url, cfg.ca_file.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    client
        .batch_execute(&format!("BEGIN;\n{sql}COMMIT;"))
        .await
        .map_err(|e| format!("postgres: {e}"))?;
    eprintln!(
        "installed keyward_outbox and triggers on {}",
        cfg.watched().join(", ")
    );
    Ok(())
}

/// `keyward sync --config … [--once]`. Returns only with `--once` (or
/// mode `off`) or when the first build fails with `--once`.
pub async fn run(cfg: SyncConfig, once: bool) -> Result<(), String> {
    let metrics = SyncMetrics::new(cfg.max_staleness);
    let once = once || cfg.mode == Mode::Off;
    if !once {
        let listener = tokio::net::TcpListener::bind(cfg.admin_listen)
            .await
            .map_err(|e| format!("sync.admin_listen {}: {e}", cfg.admin_listen))?;
        tokio::spawn(serve_admin(listener, metrics.clone()));
        usage::start(&cfg, &metrics).await?;
    }
    if once {
        let mut client = pg::connect(&cfg.url, cfg.ca_file.as_deref())
            .await
            .map_err(|e| e.to_string())?;
        metrics.contact(true);
        full_build(&mut client, &cfg, &metrics, "once")
            .await
            .map_err(|e| format!("{e} (the last good snapshot is kept)"))?;
        return publish(&cfg, &metrics, &mut true).await;
    }
    let mut backoff = Duration::from_millis(200);
    // kept across reconnects: a round failing over and over must not keep
    // the periodic full rebuild from ever coming
    let mut last_full: Option<Instant> = None;
    loop {
        match follow(&cfg, &metrics, &mut last_full).await {
            Ok(()) => unreachable!("follow returns only on an error"),
            Err(e) => {
                metrics.contact(false);
                tracing::error!(error = %e, "sync: source round failed (the last good snapshot is kept)");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Connect, listen, build when needed, then follow until an error.
async fn follow(
    cfg: &SyncConfig,
    m: &SyncMetrics,
    last_full_at: &mut Option<Instant>,
) -> Result<(), SyncError> {
    // the listening connection: notifications wake the loop early
    let config: tokio_postgres::Config = pg::normalize_url(&cfg.url)
        .parse()
        .map_err(|e: tokio_postgres::Error| pg::PgError::Url(e.to_string()))?;
    let (wake_tx, mut wake) = tokio::sync::mpsc::channel::<()>(1);
    let listener = if cfg.mode == Mode::Outbox {
        Some(listen(&config, cfg, wake_tx).await?)
    } else {
        None
    };
    let mut client = pg::connect(&cfg.url, cfg.ca_file.as_deref()).await?;
    m.contact(true);
    let mut position = build::load_position(&cfg.output).filter(|_| cfg.output.exists());
    let due = last_full_at.is_some_and(|t| t.elapsed() >= cfg.full_rebuild_interval);
    last_full_at.get_or_insert_with(Instant::now);
    if position.is_none() || cfg.mode == Mode::Poll || due {
        position = Some(full_build(&mut client, cfg, m, "start").await?);
        *last_full_at = Some(Instant::now());
    }
    let mut last_full = last_full_at.unwrap_or_else(Instant::now);
    let mut position = position.unwrap();
    // a restart may follow a version that was never uploaded
    let mut pending = true;
    loop {
        let _ = publish(cfg, m, &mut pending).await;
        // a notification, or the interval: a missed NOTIFY is found by the outbox
        let _ = tokio::time::timeout(cfg.interval, wake.recv()).await;
        if let Some(l) = &listener {
            if l.is_finished() {
                return Err(SyncError::Mapping {
                    table: "outbox".into(),
                    message: "the LISTEN connection ended".into(),
                });
            }
        }
        if last_full.elapsed() >= cfg.full_rebuild_interval {
            position = full_build(&mut client, cfg, m, "interval").await?;
            last_full = Instant::now();
            *last_full_at = Some(last_full);
            pending = true;
            continue;
        }
        match cfg.mode {
            Mode::Poll => {
                let fetched = build::fetch_all(&mut client, cfg).await?;
                m.contact(true);
                let output = cfg.output.clone();
                let changed = tokio::task::spawn_blocking(move || {
                    let reads: Vec<(&build::Read, Scope<'_>)> =
                        fetched.tables.iter().map(|t| (t, Scope::All)).collect();
                    build::apply_in_place(&output, &reads)
                })
                .await
                .expect("the apply thread panicked")?;
                m.changes_applied.inc_by(changed);
                pending |= changed > 0;
            }
            Mode::Outbox => {
                let round = outbox::round(&mut client, cfg, &position).await?;
                m.contact(true);
                match round {
                    outbox::Round::Rebuild(why) => {
                        position = full_build(&mut client, cfg, m, why).await?;
                        last_full = Instant::now();
                        *last_full_at = Some(last_full);
                        pending = true;
                    }
                    outbox::Round::Changes {
                        reads,
                        whole,
                        xmin,
                        rows,
                    } => {
                        if rows > 0 {
                            let output = cfg.output.clone();
                            let changed = tokio::task::spawn_blocking(move || {
                                let mut all: Vec<(&build::Read, Scope<'_>)> =
                                    reads.iter().map(|(r, ids)| (r, Scope::Ids(ids))).collect();
                                all.extend(whole.iter().map(|r| (r, Scope::All)));
                                build::apply_in_place(&output, &all)
                            })
                            .await
                            .expect("the apply thread panicked")?;
                            m.changes_applied.inc_by(changed);
                            pending |= changed > 0;
                            tracing::info!(outbox_rows = rows, changed, "changes applied");
                        }
                        if xmin != position {
                            if let Err(e) = build::save_position(&cfg.output, &xmin) {
                                tracing::warn!(error = %e, "could not save the outbox position");
                            } else {
                                position = xmin;
                                if let Err(e) = outbox::prune(&client, &position).await {
                                    tracing::warn!(error = %e, "could not prune the outbox");
                                }
                            }
                        }
                        match outbox::lag(&client, &position).await {
                            Ok(l) => m.lag.set(l),
                            Err(e) => tracing::warn!(error = %e, "sync_lag_seconds"),
                        }
                    }
                }
            }
            Mode::Off => unreachable!("off runs once"),
        }
    }
}

/// A connection that `LISTEN`s on the outbox channel and wakes the loop;
/// the task ends when the connection does.
async fn listen(
    config: &tokio_postgres::Config,
    cfg: &SyncConfig,
    wake: tokio::sync::mpsc::Sender<()>,
) -> Result<tokio::task::JoinHandle<()>, SyncError> {
    use futures_util::StreamExt;
    let pgerr = |e| SyncError::Source(pg::PgError::from(e));
    let (client, mut messages) = pg::connect_raw(config, &cfg.url, cfg.ca_file.as_deref()).await?;
    // the stream drives the connection: poll it before asking anything
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut ready_tx = Some(ready_tx);
        let sql = format!("LISTEN {}", outbox::CHANNEL);
        let listening = client.batch_execute(&sql);
        tokio::pin!(listening);
        let mut listened = false;
        loop {
            tokio::select! {
                r = &mut listening, if !listened => {
                    listened = true;
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(r);
                    }
                }
                msg = messages.next() => match msg {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                        let _ = wake.try_send(());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "outbox LISTEN connection ended");
                        return;
                    }
                    None => return,
                },
            }
        }
    });
    match ready.await {
        Ok(Ok(())) => Ok(task),
        Ok(Err(e)) => Err(pgerr(e)),
        Err(_) => Err(SyncError::Mapping {
            table: "outbox".into(),
            message: "the LISTEN connection ended before LISTEN".into(),
        }),
    }
}
