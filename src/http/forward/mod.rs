//! Forwarding an authorized request to the upstream, on pingora-core's HTTP
//! sessions and transport connector, with keyward's own keep-alive pool
//! (not pingora-proxy).
//!
//! Why not pingora-proxy: its per-request machinery (a boxed future of
//! several KiB, two mpsc task pipes between a downstream and an upstream
//! half, module and cache hooks) cost keyward about a quarter of its
//! throughput on small requests (issue 9: the same bare job took 89.8k
//! instructions per request on pingora-proxy and 64.7k as a direct
//! `HttpServerApp` loop; docs/benchmarks.md "Load"). What it did for correctness
//! is done here, each part named: hop-by-hop and `Connection`-nominated
//! request fields are not forwarded, WebSocket upgrades pass through
//! normalized, a body keeps its transfer codings (an unframed one is sent
//! chunked), HTTP/2 requests get a `Host`, 1xx responses are relayed, the
//! request body and the response stream concurrently, and an idempotent
//! request that fails on a reused pooled connection before the upstream
//! answered is retried once on another connection when its body can be
//! replayed.

mod exchange;
mod head;
mod pool;

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use pingora::apps::{HttpPersistentSettings, ReusedHttpStream};
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;

use crate::config::UpstreamConfig;
use exchange::{upstream_failure, Exchange};
pub use head::{is_websocket_upgrade, upstream_request, Unforwardable};
use pool::UPSTREAM_IDLE;

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
    /// A stream whose credential no longer stands was closed (SPEC §8.2);
    /// `answered` as for `Upstream`.
    Closed {
        closing: crate::http::streams::Closing,
        answered: bool,
    },
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

    /// Send `req` (already carrying keyward's identity headers) and stream
    /// the exchange: the rest of the downstream body up, the response down.
    /// `inspected` is a body keyward already read in full to decide on.
    /// `on_response` adds keyward's response headers to the final response
    /// (its head comes as plain `http` parts: static names go straight in).
    /// `rebuild` makes the head again for the one retry (the first copy went
    /// to the failed connection; building it twice on that rare path is
    /// cheaper than copying it for every request). `None` gives up.
    pub async fn forward(
        &self,
        session: &mut ServerSession,
        req: Box<RequestHeader>,
        inspected: Option<Bytes>,
        on_response: impl Fn(&mut http::HeaderMap) + Copy,
        rebuild: impl Fn(&ServerSession) -> Option<Box<RequestHeader>>,
    ) -> Result<Forwarded, Failure> {
        self.forward_followed(session, req, inspected, on_response, rebuild, None)
            .await
    }

    /// [`Upstream::forward`] for a request that may be a stream: with
    /// `stream`, the exchange ends (`Failure::Closed`) as soon as the
    /// stream's credential no longer stands (SPEC §8.2 Streams).
    pub async fn forward_followed(
        &self,
        session: &mut ServerSession,
        mut req: Box<RequestHeader>,
        inspected: Option<Bytes>,
        on_response: impl Fn(&mut http::HeaderMap) + Copy,
        rebuild: impl Fn(&ServerSession) -> Option<Box<RequestHeader>>,
        mut stream: Option<&mut crate::http::streams::Stream>,
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
                .exchange(
                    session,
                    up,
                    req,
                    inspected.clone(),
                    on_response,
                    stream.as_deref_mut(),
                )
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
}

/// The downstream connection handed back to pingora for its next request,
/// when the exchange left it reusable (body done, keep-alive on).
pub async fn keep_alive(session: ServerSession) -> Option<ReusedHttpStream> {
    let settings = HttpPersistentSettings::for_session(&session);
    let stream = session.finish().await.ok().flatten()?;
    Some(ReusedHttpStream::from_reusable_stream(stream, settings))
}
