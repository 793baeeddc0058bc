//! PROXY protocol on the listeners (SPEC §8.3): a connection from a peer in
//! `server.trusted_proxies` must begin with a header of the configured
//! version, whose source address then is the socket peer for everything
//! (forwarding headers, throttle, `allowed_ips`, access log); a connection
//! from such a peer without a valid header, and one from any other peer that
//! sends a header, is closed without a response. `LOCAL` keeps the real
//! peer. On the TLS listener the header is read before the handshake
//! ([`PreTls`]); on the plain listener by [`ProxyProtocolApp`], which wraps
//! the HTTP app and reads the header once per connection.
//!
//! The parser is `request::proxy_protocol` (pure, fuzzed); this module only
//! reads exactly the header's bytes, bounded in time.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Stream, UniqueID};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::engine::Engine;
use crate::request::proxy_protocol::{looks_like_header, parse, Parsed, Version};

/// Longest a peer may take to send its header (or, for a peer that must not
/// send one, the first bytes that show it does not).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a connection is closed unanswered.
#[derive(Debug)]
pub enum Refused {
    Io,
    Timeout,
    Invalid,
    /// a peer outside `trusted_proxies` sent a header
    Untrusted,
}

/// Read exactly one header from `s` (byte by byte: nothing after it is
/// consumed). Some(source) replaces the peer; None keeps it.
async fn read_header<S: AsyncRead + Unpin + Send>(
    s: &mut S,
    version: Version,
) -> Result<Option<SocketAddr>, Refused> {
    let mut buf = Vec::with_capacity(64);
    loop {
        match parse(&buf, version) {
            Parsed::Header { len, source } if len == buf.len() => return Ok(source),
            // never read past the header
            Parsed::Header { .. } | Parsed::Invalid => return Err(Refused::Invalid),
            Parsed::Need(n) => {
                let start = buf.len();
                buf.resize(n, 0);
                s.read_exact(&mut buf[start..])
                    .await
                    .map_err(|_| Refused::Io)?;
            }
        }
    }
}

fn digest_with_peer(fd: i32, peer: SocketAddr) -> SocketDigest {
    let d = SocketDigest::from_raw_fd(fd);
    let _ = d.peer_addr.set(Some(PingoraAddr::Inet(peer)));
    d
}

fn inet(d: Option<std::sync::Arc<SocketDigest>>) -> Option<SocketAddr> {
    d.and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied())
}

/// Counted (`proxy_protocol_refused_total{reason}`) and logged at debug:
/// one line per refused connection would let anyone flood the log.
fn refused(engine: &Engine, peer: Option<SocketAddr>, why: &Refused) {
    let reason = match why {
        Refused::Io => "io",
        Refused::Timeout => "timeout",
        Refused::Invalid => "invalid",
        Refused::Untrusted => "untrusted",
    };
    engine
        .metrics
        .proxy_refused
        .with_label_values(&[reason])
        .inc();
    tracing::debug!(peer = ?peer, reason, "PROXY protocol: connection closed");
}

/// The pre-TLS step of the TLS listener.
pub struct PreTls {
    pub engine: Arc<Engine>,
    pub version: Version,
}

#[async_trait]
impl pingora::listeners::PreTlsProcess for PreTls {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        let peer = inet(stream.get_socket_digest());
        let result = if is_trusted(&self.engine, peer) {
            bounded(read_header(stream, self.version)).await
        } else {
            // a TLS ClientHello never starts like a header
            let mut first = [0u8; 12];
            match tokio::time::timeout(HEADER_TIMEOUT, stream.read_exact(&mut first)).await {
                Ok(Ok(_)) => {
                    stream.rewind(&first);
                    if looks_like_header(&first) {
                        Err(Refused::Untrusted)
                    } else {
                        Ok(None)
                    }
                }
                Ok(Err(_)) => Err(Refused::Io),
                Err(_) => Err(Refused::Timeout),
            }
        };
        match result {
            Ok(Some(client)) => {
                stream.set_socket_digest(digest_with_peer(stream.id(), client));
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(why) => {
                refused(&self.engine, peer, &why);
                pingora::Error::e_explain(pingora::ErrorType::AcceptError, "PROXY protocol")
            }
        }
    }
}

/// [`read_header`] within [`HEADER_TIMEOUT`].
async fn bounded(
    read: impl std::future::Future<Output = Result<Option<SocketAddr>, Refused>>,
) -> Result<Option<SocketAddr>, Refused> {
    tokio::time::timeout(HEADER_TIMEOUT, read)
        .await
        .unwrap_or(Err(Refused::Timeout))
}

fn is_trusted(engine: &Engine, peer: Option<SocketAddr>) -> bool {
    peer.is_some_and(|p| {
        let trusted = &engine.policy.load().config.server.trusted_proxies;
        crate::request::forwarding::is_trusted(p.ip().to_canonical(), trusted)
    })
}

/// The plain listener's app: reads the header once per connection (the
/// connection's socket cookie marks it read), then hands the stream on.
pub struct ProxyProtocolApp<A> {
    pub inner: Arc<A>,
    pub engine: Arc<Engine>,
    /// None: `proxy_protocol = "off"`, every stream goes straight on
    pub version: Option<Version>,
    /// connections whose header was read (by socket cookie, never reused)
    open: Mutex<HashSet<u64>>,
}

impl<A> ProxyProtocolApp<A> {
    pub fn new(inner: A, engine: Arc<Engine>, version: Option<Version>) -> Self {
        ProxyProtocolApp {
            inner: Arc::new(inner),
            engine,
            version,
            open: Mutex::new(HashSet::new()),
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for ProxyProtocolApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(version) = self.version else {
            return self.inner.process_new(stream, shutdown).await;
        };
        // TLS streams had their header read before the handshake (PreTls)
        if stream.get_ssl_digest().is_some() {
            return self.inner.process_new(stream, shutdown).await;
        }
        let digest = stream.get_socket_digest();
        let cookie = digest.as_ref().and_then(|d| d.socket_cookie().ok());
        let seen = cookie.is_some_and(|c| {
            self.open
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&c)
        });
        if !seen {
            let peer = inet(digest);
            let result = {
                let s = &mut stream;
                let mut first = [0u8; 12];
                if is_trusted(&self.engine, peer) {
                    bounded(read_header(s, version)).await
                } else {
                    // a peek: the bytes stay for the HTTP parser
                    match tokio::time::timeout(HEADER_TIMEOUT, s.try_peek(&mut first)).await {
                        Ok(Ok(true)) if looks_like_header(&first) => Err(Refused::Untrusted),
                        Ok(Ok(_)) => Ok(None),
                        // fewer than 12 bytes, then EOF: no request to serve
                        _ => Err(Refused::Io),
                    }
                }
            };
            match result {
                Ok(Some(client)) => stream.set_socket_digest(digest_with_peer(stream.id(), client)),
                Ok(None) => {}
                Err(why) => {
                    refused(&self.engine, peer, &why);
                    return None;
                }
            }
            if let Some(c) = cookie {
                self.open
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(c);
            }
        }
        let next = self.inner.process_new(stream, shutdown).await;
        if next.is_none() {
            if let Some(c) = cookie {
                self.open
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&c);
            }
        }
        next
    }
}
