//! Forwarding an authorized request to the upstream, on pingora-core's HTTP
//! sessions and transport connector, with keyward's own keep-alive pool
//! (not pingora-proxy).
//!
//! Why not pingora-proxy: its per-request machinery (a boxed future of
//! several KiB, two mpsc task pipes between a downstream and an upstream
//! half, module and cache hooks) cost keyward about a quarter of its
//! throughput on small requests (issue 9: the same bare job took 89.8k
//! instructions per request on pingora-proxy and 64.7k as a direct
//! `HttpServerApp` loop; README "Benchmarks"). What it did for correctness
//! is done here, each part named: hop-by-hop and `Connection`-nominated
//! request fields are not forwarded, WebSocket upgrades pass through
//! normalized, a body keeps its transfer codings (an unframed one is sent
//! chunked), HTTP/2 requests get a `Host`, 1xx responses are relayed, the
//! request body and the response stream concurrently, and an idempotent
//! request that fails on a reused pooled connection before the upstream
//! answered is retried once on another connection when its body can be
//! replayed.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderMap, HeaderName, HeaderValue, Version};
use pingora::apps::{HttpPersistentSettings, ReusedHttpStream};
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora::protocols::http::{HttpTask, ServerSession};
use pingora::protocols::Stream;
use pingora::server::configuration::ServerConf;
use pingora::{Error, ErrorType, RetryType};

use crate::config::UpstreamConfig;
use tokio::io::{AsyncRead, ReadBuf};

/// Idle time of a pooled upstream connection before it is closed.
const UPSTREAM_IDLE: Duration = Duration::from_secs(60);

/// Idle upstream connections one worker thread keeps.
const IDLE_PER_THREAD: usize = 128;

/// An upstream connection waiting for its next request.
struct Idle {
    upstream: usize,
    stream: Stream,
    since: Instant,
}

thread_local! {
    /// The keep-alive pool, per worker thread, oldest first. keyward's
    /// workers are single-threaded runtimes without work stealing, so a
    /// connection's requests stay on one thread and this pool needs no lock
    /// (pingora's shared pool took a lock, spawned a watcher task per
    /// release and checked the socket's peer with a syscall per reuse).
    /// Closed or expired connections are found and dropped when taken.
    static IDLE: RefCell<Vec<Idle>> = const { RefCell::new(Vec::new()) };
}

/// Tells apart the pools of several `Upstream`s in one process (tests).
static NEXT_UPSTREAM_ID: AtomicUsize = AtomicUsize::new(0);

/// How forwarding failed, for the 502/504 answer, the metric and whether the
/// downstream connection can be reused.
#[derive(Debug)]
pub enum Failure {
    /// The upstream could not be reached or broke off; `timeout` picks 504.
    /// `answered` is true once a response header went downstream (nothing
    /// more can be said to the client then).
    Upstream { timeout: bool, answered: bool },
    /// The client went away or broke framing mid-request.
    Downstream,
}

/// What the upstream answered: its status, once the response went downstream.
pub struct Forwarded {
    pub status: u16,
}

pub struct Upstream {
    id: usize,
    transport: TransportConnector,
    peer: HttpPeer,
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig, conf: &ServerConf) -> Upstream {
        let mut peer = HttpPeer::new(cfg.address, cfg.tls, cfg.sni.clone());
        peer.options.connection_timeout = Some(cfg.connect_timeout);
        peer.options.total_connection_timeout = Some(cfg.connect_timeout);
        peer.options.read_timeout = Some(cfg.read_timeout);
        peer.options.write_timeout = Some(cfg.read_timeout);
        peer.options.idle_timeout = Some(UPSTREAM_IDLE);
        Upstream {
            id: NEXT_UPSTREAM_ID.fetch_add(1, Ordering::Relaxed),
            // upstream.ca_file reaches the TLS connector through ServerConf.ca_file.
            transport: TransportConnector::new(Some(ConnectorOptions::from_server_conf(conf))),
            peer,
        }
    }

    /// An idle pooled connection when one is alive, else a new one; `true`
    /// when reused.
    async fn session(&self) -> pingora::Result<(UpstreamSession, bool)> {
        let (stream, reused) = match self.take_idle() {
            Some(s) => (s, true),
            None => (self.transport.new_stream(&self.peer).await?, false),
        };
        Ok((
            UpstreamSession::new_with_options(stream, &self.peer),
            reused,
        ))
    }

    fn take_idle(&self) -> Option<Stream> {
        IDLE.with_borrow_mut(|idle| {
            let now = Instant::now();
            while let Some(pos) = idle.iter().rposition(|c| c.upstream == self.id) {
                let mut c = idle.remove(pos);
                if now.duration_since(c.since) < UPSTREAM_IDLE && still_open(&mut c.stream) {
                    return Some(c.stream);
                }
            }
            None
        })
    }

    /// Back to the pool, when the exchange left the connection reusable.
    async fn release(&self, mut up: UpstreamSession) {
        up.respect_keepalive();
        let Some(stream) = up.reuse().await else {
            return;
        };
        IDLE.with_borrow_mut(|idle| {
            let now = Instant::now();
            let expired = idle
                .iter()
                .take_while(|c| now.duration_since(c.since) >= UPSTREAM_IDLE)
                .count();
            idle.drain(..expired);
            if idle.len() >= IDLE_PER_THREAD {
                idle.remove(0);
            }
            idle.push(Idle {
                upstream: self.id,
                stream,
                since: now,
            });
        });
    }

    /// Send `req` (already carrying keyward's identity headers) and stream
    /// the exchange: the rest of the downstream body up, the response down.
    /// `inspected` is a body keyward already read in full to decide on.
    /// `on_response` adds keyward's response headers to the final response.
    /// `rebuild` makes the head again for the one retry (the first copy went
    /// to the failed connection; building it twice on that rare path is
    /// cheaper than copying it for every request). `None` gives up.
    pub async fn forward(
        &self,
        session: &mut ServerSession,
        mut req: Box<RequestHeader>,
        inspected: Option<Bytes>,
        on_response: impl Fn(&mut ResponseHeader) + Copy,
        rebuild: impl Fn(&ServerSession) -> Option<Box<RequestHeader>>,
    ) -> Result<Forwarded, Failure> {
        // Replayable: an idempotent method (RFC 9110 §9.2.2: the upstream
        // may have acted on the lost attempt) whose body is not streamed.
        let replayable =
            req.method.is_idempotent() && (inspected.is_some() || session.is_body_empty());
        let mut retried = false;
        loop {
            let (up, reused) = match self.session().await {
                Ok(s) => s,
                Err(e) => return Err(upstream_failure(&e, false)),
            };
            let retry_possible = reused && replayable && !retried;
            match self
                .exchange(session, up, req, inspected.clone(), on_response)
                .await
            {
                Err(Exchange::Retry(e)) if retry_possible => {
                    tracing::debug!(error = %e, "reused upstream connection failed; retrying once");
                    retried = true;
                    req = rebuild(session).ok_or(upstream_failure(&e, false))?;
                }
                Err(Exchange::Retry(e)) => return Err(upstream_failure(&e, false)),
                Err(Exchange::Failed(f)) => return Err(f),
                Ok(done) => return Ok(done),
            }
        }
    }

    async fn exchange(
        &self,
        session: &mut ServerSession,
        mut up: UpstreamSession,
        req: Box<RequestHeader>,
        inspected: Option<Bytes>,
        on_response: impl Fn(&mut ResponseHeader),
    ) -> Result<Forwarded, Exchange> {
        up.read_timeout = self.peer.options.read_timeout;
        up.write_timeout = self.peer.options.write_timeout;
        // Failures before the upstream said anything may be retried (pingora
        // marks which errors a reused connection may have caused; the caller
        // retries only on a reused one).
        let early = |e: Box<Error>| {
            if !matches!(e.retry, RetryType::Decided(false)) {
                Exchange::Retry(e)
            } else {
                Exchange::Failed(upstream_failure(&e, false))
            }
        };
        // A 101 is relayed only in answer to a forwarded WebSocket handshake
        // (the only upgrade keyward forwards, and re-states); any other
        // leaves the connection in neither protocol (SPEC §5.1).
        let websocket = req.headers.contains_key(header::UPGRADE);
        up.write_request_header(req).await.map_err(early)?;
        let mut request_done = true;
        if let Some(body) = inspected {
            if !body.is_empty() {
                up.write_body(&body).await.map_err(early)?;
            }
            up.finish_body().await.map_err(early)?;
        } else if !session.is_body_empty() {
            request_done = false;
        } else {
            up.finish_body().await.map_err(early)?;
        }

        let mut status = 0u16;
        let mut answered = false;
        let mut response_done = false;
        let mut upgraded = false;
        // The request body was not sent to its end (the upstream answered
        // early): pingora's reuse check looks only at the response.
        let mut request_cut = false;
        // Duplex: the request body goes up while the response may already
        // come down (pingora's reads here are cancel-safe; writes are awaited
        // inside the branch, never cancelled).
        while !request_done || !response_done {
            tokio::select! {
                chunk = session.read_request_body(), if !request_done => match chunk {
                    Ok(Some(data)) => {
                        if upgraded {
                            up.maybe_upgrade_body_writer();
                        }
                        up.write_body(&data).await.map_err(|e| fail(&e, answered))?;
                    }
                    Ok(None) => {
                        request_done = true;
                        up.finish_body().await.map_err(|e| fail(&e, answered))?;
                    }
                    Err(_) => return Err(Exchange::Failed(Failure::Downstream)),
                },
                task = up.read_response_task(), if !response_done => {
                    let task = match task {
                        Ok(t) => t,
                        Err(e) if !answered && status == 0 => return Err(early(e)),
                        Err(e) => return Err(fail(&e, answered)),
                    };
                    response_done = task.is_end();
                    match task {
                        HttpTask::Header(mut resp, end) => {
                            let code = resp.status.as_u16();
                            if (100..200).contains(&code) && code != 101 {
                                // informational: relay, the final answer follows
                                status = code;
                                response_done = false;
                                session.write_response_header(resp).await.map_err(|_| down())?;
                                continue;
                            }
                            if code == 101 && !websocket {
                                tracing::warn!("upstream answered 101 to a request that asked for no upgrade");
                                return Err(Exchange::Failed(Failure::Upstream { timeout: false, answered: false }));
                            }
                            status = code;
                            on_response(&mut resp);
                            session.write_response_header(resp).await.map_err(|_| down())?;
                            answered = true;
                            if end {
                                session.write_response_body(Bytes::new(), true).await.map_err(|_| down())?;
                            }
                            if !upgraded && up.was_upgraded() && session.was_upgraded() {
                                // The connection now carries another protocol both
                                // ways until either side closes.
                                upgraded = true;
                                up.maybe_upgrade_body_writer();
                                request_done = false;
                            }
                        }
                        HttpTask::Body(data, end) | HttpTask::UpgradedBody(data, end) => {
                            if let Some(data) = data {
                                session.write_response_body(data, end).await.map_err(|_| down())?;
                            } else if end {
                                session.write_response_body(Bytes::new(), true).await.map_err(|_| down())?;
                            }
                        }
                        HttpTask::Done => {
                            session.write_response_body(Bytes::new(), true).await.map_err(|_| down())?;
                        }
                        HttpTask::Trailer(_) => {}
                        HttpTask::Failed(e) => return Err(fail(&e, answered)),
                    }
                    if response_done && !upgraded && !request_done {
                        // The upstream answered before the request body ended:
                        // stop reading it; both connections close (each is
                        // mid-message and must never carry another request).
                        session.set_keepalive(None);
                        request_done = true;
                        request_cut = true;
                    }
                }
            }
        }

        if upgraded || request_cut {
            // Not reusable: dropping the session closes the connection.
            drop(up);
        } else {
            self.release(up).await;
        }
        Ok(Forwarded { status })
    }
}

/// A pooled connection the upstream has not closed and sent nothing on (a
/// read that would block; the read registers no task: nothing waits on it).
fn still_open(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    matches!(Pin::new(stream).poll_read(&mut cx, &mut buf), Poll::Pending)
}

/// The downstream connection handed back to pingora for its next request,
/// when the exchange left it reusable (body done, keep-alive on).
pub async fn keep_alive(session: ServerSession) -> Option<ReusedHttpStream> {
    let settings = HttpPersistentSettings::for_session(&session);
    let stream = session.finish().await.ok().flatten()?;
    Some(ReusedHttpStream::from_reusable_stream(stream, settings))
}

enum Exchange {
    /// Nothing was answered and the failed connection was a reused one.
    Retry(Box<Error>),
    Failed(Failure),
}

fn down() -> Exchange {
    Exchange::Failed(Failure::Downstream)
}

fn fail(e: &Error, answered: bool) -> Exchange {
    Exchange::Failed(upstream_failure(e, answered))
}

fn upstream_failure(e: &Error, answered: bool) -> Failure {
    let timeout = matches!(
        e.etype(),
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
    );
    Failure::Upstream { timeout, answered }
}

/// Standard hop-by-hop request fields (RFC 9110 §7.6.1), never forwarded as
/// the client sent them.
const HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

/// Fields a `Connection` header may not nominate for removal: a client must
/// not make keyward drop what identifies the target or the caller.
const PROTECTED: [&str; 4] = ["host", "x-forwarded-for", "forwarded", "x-real-ip"];

/// Why a request header cannot be forwarded.
#[derive(Debug, PartialEq, Eq)]
pub struct Unforwardable(pub &'static str);

/// The upstream's copy of the request head: HTTP/1.1, no hop-by-hop or
/// `Connection`-nominated fields and none that `drop` names (a WebSocket
/// upgrade is re-stated normalized), `Host` from the HTTP/2 authority,
/// chunked framing for a body that has none.
///
/// Returned as plain `http` parts whose header map has room for keyward's
/// own headers: the caller inserts them with static names, which costs a
/// fraction of pingora's case-preserving `insert_header` (header names go
/// upstream in canonical case). The fields are copied once, filtered on the
/// way, instead of cloned and then removed.
pub fn upstream_request(
    down: &RequestHeader,
    has_body: bool,
    drop: impl Fn(&HeaderName) -> bool,
) -> Result<Parts, Unforwardable> {
    // Fields nominated by Connection (RFC 9110 §7.6.1).
    let nominated: Vec<HeaderName> = down
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
        .map(|t| {
            let name = HeaderName::from_bytes(t)
                .map_err(|_| Unforwardable("malformed_connection_header"))?;
            if PROTECTED.contains(&name.as_str()) {
                return Err(Unforwardable("protected_connection_nomination"));
            }
            Ok(name)
        })
        .collect::<Result<_, _>>()?;
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = down.method.clone();
    parts.uri = down.uri.clone();
    parts.version = Version::HTTP_11;
    let mut h = HeaderMap::with_capacity(down.headers.len() + ROOM_FOR_KEYWARD);
    for (name, value) in &down.headers {
        if !HOP_BY_HOP.contains(name) && !nominated.contains(name) && !drop(name) {
            h.append(name.clone(), value.clone());
        }
    }
    if is_websocket_upgrade(down) {
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    if down.version == Version::HTTP_2 && !h.contains_key(header::HOST) {
        if let Some(a) = down.uri.authority() {
            let v = HeaderValue::from_str(a.as_str())
                .map_err(|_| Unforwardable("malformed_authority"))?;
            h.insert(header::HOST, v);
        }
    }
    if has_body && !h.contains_key(header::CONTENT_LENGTH) {
        // The client's transfer codings are kept in order (pingora checked
        // that chunked is the last and de-chunked the body; it is chunked
        // again on the way up), so `gzip, chunked` stays gzip; with exactly
        // one `chunked`, keyward's own (SPEC §5.1: `chunked, chunked` would
        // be read as two layers). Without any, chunked.
        h.insert(header::TRANSFER_ENCODING, transfer_codings(down)?);
    }
    parts.headers = h;
    Ok(parts)
}

/// The client's transfer codings other than `chunked`, in order, then one
/// `chunked`.
fn transfer_codings(down: &RequestHeader) -> Result<HeaderValue, Unforwardable> {
    let mut out: Vec<u8> = Vec::new();
    for v in down.headers.get_all(header::TRANSFER_ENCODING) {
        for coding in v.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if coding.is_empty() || coding.eq_ignore_ascii_case(b"chunked") {
                continue;
            }
            out.extend_from_slice(coding);
            out.extend_from_slice(b", ");
        }
    }
    if out.is_empty() {
        return Ok(HeaderValue::from_static("chunked"));
    }
    out.extend_from_slice(b"chunked");
    HeaderValue::from_bytes(&out).map_err(|_| Unforwardable("malformed_transfer_encoding"))
}

/// Headers keyward may add to the upstream's copy (identity, request id,
/// framing, upgrade).
const ROOM_FOR_KEYWARD: usize = 12;

/// An HTTP/1.1 WebSocket handshake: GET, `Connection: upgrade`,
/// `Upgrade: websocket` (RFC 6455 §4.1).
fn is_websocket_upgrade(req: &RequestHeader) -> bool {
    let has_token = |name: header::HeaderName, token: &[u8]| {
        req.headers.get_all(name).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
        })
    };
    req.version == Version::HTTP_11
        && req.method == http::Method::GET
        && has_token(header::CONNECTION, b"upgrade")
        && has_token(header::UPGRADE, b"websocket")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(lines: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/x", None).unwrap();
        for (k, v) in lines {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn hop_by_hop_and_nominated_fields_are_dropped() {
        let r = req(&[
            ("host", "a"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("x-kept", "1"),
        ]);
        let up = upstream_request(&r, false, |_| false).unwrap();
        assert_eq!(up.version, Version::HTTP_11);
        for gone in ["connection", "x-secret", "keep-alive", "te"] {
            assert!(!up.headers.contains_key(gone), "{gone}");
        }
        assert_eq!(up.headers["x-kept"], "1");
        assert_eq!(up.headers["host"], "a");
    }

    #[test]
    fn protected_or_malformed_nominations_are_refused() {
        let r = req(&[("connection", "close, Host")]);
        assert_eq!(
            upstream_request(&r, false, |_| false).unwrap_err(),
            Unforwardable("protected_connection_nomination")
        );
        let r = req(&[("connection", "\"x-a\"")]);
        assert!(upstream_request(&r, false, |_| false).is_err());
    }

    #[test]
    fn websocket_upgrade_is_restated_other_upgrades_dropped() {
        let r = req(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ]);
        let up = upstream_request(&r, false, |_| false).unwrap();
        assert_eq!(up.headers["connection"], "Upgrade");
        assert_eq!(up.headers["upgrade"], "websocket");
        let r = req(&[("connection", "upgrade"), ("upgrade", "h2c")]);
        let up = upstream_request(&r, false, |_| false).unwrap();
        assert!(!up.headers.contains_key("upgrade") && !up.headers.contains_key("connection"));
    }

    #[test]
    fn transfer_codings_are_kept_for_a_body() {
        let r = req(&[("transfer-encoding", "gzip, chunked")]);
        let up = upstream_request(&r, true, |_| false).unwrap();
        assert_eq!(up.headers["transfer-encoding"], "gzip, chunked");
        let up = upstream_request(&r, false, |_| false).unwrap();
        assert!(!up.headers.contains_key("transfer-encoding"));
        let r = req(&[("transfer-encoding", "chunked, chunked")]);
        let up = upstream_request(&r, true, |_| false).unwrap();
        assert_eq!(up.headers["transfer-encoding"], "chunked");
        let r = req(&[
            ("transfer-encoding", "gzip, Chunked"),
            ("transfer-encoding", "chunked"),
        ]);
        let up = upstream_request(&r, true, |_| false).unwrap();
        assert_eq!(up.headers["transfer-encoding"], "gzip, chunked");
        assert_eq!(up.headers.get_all("transfer-encoding").iter().count(), 1);
    }

    #[test]
    fn unframed_body_is_sent_chunked() {
        let r = req(&[("transfer-encoding", "chunked")]);
        let up = upstream_request(&r, true, |_| false).unwrap();
        assert_eq!(up.headers["transfer-encoding"], "chunked");
        let r = req(&[("content-length", "3")]);
        let up = upstream_request(&r, true, |_| false).unwrap();
        assert!(!up.headers.contains_key("transfer-encoding"));
        assert!(upstream_request(&req(&[]), false, |_| false)
            .unwrap()
            .headers
            .is_empty());
    }
}
