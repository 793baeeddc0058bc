//! The admin listener (SPEC §8.2): `/metrics`, `/healthz`, `/readyz`.
//! Runs on its own thread and runtime so a busy proxy never delays a scrape.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::engine::Engine;
use crate::ops::upgrade::AdminHandle;

/// Longest wait for a complete request head on the admin listener.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn response(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .unwrap()
}

/// `/readyz` body and status: ready when a snapshot is loaded and younger
/// than `snapshot.max_staleness_s`.
pub fn readiness(engine: &Engine) -> (u16, serde_json::Value) {
    let store = &engine.store;
    let cfg = &engine.policy.load().config;
    let gen = store.current();
    let age = store.age_seconds();
    let max = cfg.snapshot.max_staleness.as_secs() as i64;
    let loaded = gen.is_some();
    let fresh = age.is_some_and(|a| a <= max);
    let draining = engine.draining.load(std::sync::atomic::Ordering::Relaxed);
    let ready = loaded && fresh && !draining;
    let last_error = store.reloads.last_error.lock().unwrap().clone();
    let mut degraded = Vec::new();
    if last_error.is_some() {
        degraded.push("snapshot_reload_failing");
    }
    if engine
        .source_unreachable
        .get()
        .is_some_and(|u| u.load(std::sync::atomic::Ordering::Relaxed))
    {
        degraded.push("snapshot_source_unreachable");
    }
    let limiter = engine.limiter.status();
    if !limiter.up {
        degraded.push("rate_limit_backend_down");
    }
    let body = serde_json::json!({
        "ready": ready,
        "draining": draining,
        "snapshot": {
            "loaded": loaded,
            "generation": gen.as_ref().map(|g| g.id).unwrap_or(0),
            "age_seconds": age,
            "max_staleness_seconds": max,
            "counts": gen.as_ref().map(|g| g.counts.clone()),
            "last_reload_error": last_error,
        },
        "rate_limit": { "backend": limiter.backend, "up": limiter.up },
        "degraded": degraded,
    });
    (if ready { 200 } else { 503 }, body)
}

/// The process's lifecycle as gauges, worked out at scrape time from the
/// same state `/readyz` reads: `keyward_ready` (1 when /readyz answers 200),
/// `keyward_draining` (1 from SIGTERM/SIGQUIT on), the start time (a change
/// is a restart or a binary upgrade) and the build's version.
fn lifecycle_metrics(engine: &Engine) -> String {
    let (status, body) = readiness(engine);
    let draining = body["draining"].as_bool().unwrap_or(false);
    format!(
        "# HELP keyward_ready 1 when /readyz answers 200 (a fresh snapshot loaded, not draining)\n\
         # TYPE keyward_ready gauge\n\
         keyward_ready {}\n\
         # HELP keyward_draining 1 from SIGTERM or SIGQUIT on, while in-flight requests finish\n\
         # TYPE keyward_draining gauge\n\
         keyward_draining {}\n\
         # HELP keyward_process_start_time_seconds Start of this process, unix seconds (changes on restart or binary upgrade)\n\
         # TYPE keyward_process_start_time_seconds gauge\n\
         keyward_process_start_time_seconds {}\n\
         # HELP keyward_build_info The running build, always 1\n\
         # TYPE keyward_build_info gauge\n\
         keyward_build_info{{version=\"{}\"}} 1\n",
        u8::from(status == 200),
        u8::from(draining),
        engine.metrics.started_at,
        env!("CARGO_PKG_VERSION"),
    )
}

/// The explain form's answer (a page), or an error page.
async fn explain_form(
    engine: &Engine,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    use crate::ops::status::{explain_live, form_request, page, status, FORM_MAX, SAMPLES};
    use http_body_util::BodyExt;
    let form = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !form {
        return response(
            415,
            "application/json",
            r#"{"error":"Send the form as application/x-www-form-urlencoded","code":"UNSUPPORTED_MEDIA_TYPE","details":{}}"#,
        );
    }
    let body = match http_body_util::Limited::new(req.into_body(), FORM_MAX)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return response(
                413,
                "application/json",
                r#"{"error":"Form too large","code":"PAYLOAD_TOO_LARGE","details":{}}"#,
            )
        }
    };
    let s = status(engine, &SAMPLES);
    match form_request(&body) {
        Ok(r) => {
            let e = explain_live(engine, &r);
            response(200, "text/html; charset=utf-8", page(&s, Some((&r, &e))))
        }
        Err(msg) => response(
            400,
            "application/json",
            serde_json::to_vec(&serde_json::json!({"error": msg, "code": "BAD_REQUEST", "details": {"reason": "malformed_form"}})).unwrap(),
        ),
    }
}

async fn handle(
    engine: Arc<Engine>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    use crate::ops::status::{page, status, SAMPLES};
    Ok(match (req.method().as_str(), req.uri().path()) {
        ("GET", "/") => response(
            200,
            "text/html; charset=utf-8",
            page(&status(&engine, &SAMPLES), None),
        ),
        ("GET", "/status.json") => response(
            200,
            "application/json",
            serde_json::to_vec(&status(&engine, &SAMPLES)).unwrap(),
        ),
        ("POST", "/explain") => explain_form(&engine, req).await,
        (_, path) => match path {
            "/metrics" => {
                let mut text = engine.metrics.render(&engine.store);
                text.push_str(&lifecycle_metrics(&engine));
                if let Some(tls) = engine.tls.get() {
                    text.push_str(&format!(
                    "# HELP keyward_tls_cert_expiry_seconds Seconds until the served certificate's notAfter\n\
                     # TYPE keyward_tls_cert_expiry_seconds gauge\n\
                     keyward_tls_cert_expiry_seconds {}\n",
                    tls.expires_in(crate::clock::now_unix())
                ));
                }
                response(200, "text/plain; version=0.0.4", text)
            }
            "/healthz" => response(200, "application/json", r#"{"status":"ok"}"#),
            "/readyz" => {
                let (status, body) = readiness(&engine);
                response(
                    status,
                    "application/json",
                    serde_json::to_vec(&body).unwrap(),
                )
            }
            _ => response(
                404,
                "application/json",
                r#"{"error":"Not found","code":"NOT_FOUND","details":{}}"#,
            ),
        },
    })
}

pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            // handed over to an upgrading process, which accepts from now
            // on (connections already accepted finish here)
            _ = stop.changed() => return,
        };
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let engine = engine.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(engine.clone(), req));
            // A request head must be complete within HEADER_TIMEOUT of the
            // connection's start or of the previous response (SPEC §8.2), so
            // a half-sent head cannot hold a descriptor forever.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Bind the admin address now, so errors surface at start.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(addr)
}

/// Serve `listener` on `rt`; the handle can hand it over to an upgrading
/// process ([`crate::ops::upgrade`]) and stop this one accepting.
pub fn start(
    rt: &tokio::runtime::Handle,
    listener: std::net::TcpListener,
    engine: Arc<Engine>,
) -> std::io::Result<(SocketAddr, AdminHandle)> {
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let handle = AdminHandle {
        fd: std::os::fd::OwnedFd::from(listener.try_clone()?),
        stop: tokio::sync::watch::channel(false).0,
    };
    let stop = handle.stop.subscribe();
    // the status page's "last 5 minutes" keeps a sample every 10 s
    let sampled = engine.clone();
    rt.spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
        loop {
            tick.tick().await;
            let _ = crate::ops::status::SAMPLES.recent(&sampled, crate::clock::now_unix());
        }
    });
    rt.spawn(async move {
        let listener = TcpListener::from_std(listener).expect("admin listener");
        serve(listener, engine, stop).await
    });
    Ok((local, handle))
}

/// `keyward healthcheck`: exit status for container health checks.
pub fn healthcheck(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/healthz"),
    };
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let timeout = std::time::Duration::from_secs(2);
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(timeout)).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let head = String::from_utf8_lossy(&buf);
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status == "200" {
        Ok(())
    } else {
        Err(format!("{url} answered {status}"))
    }
}
