//! One HTTP/1 connection, served request after request by one future.
//!
//! pingora's `HttpServerApp` glue calls the app once per request through an
//! `async_trait` method, which boxes that request's whole future — the
//! decision, the upstream exchange and their buffers — and copies it onto
//! the heap every time: about 12.5k of the 88k instructions a proxied
//! request cost (callgrind, `benches/load/profile.sh`, issue 30). This
//! `ServerApp` keeps pingora's listener, TLS and session machinery and runs
//! the keep-alive loop itself, so the per-request future lives inside the
//! connection's and is boxed once per connection. HTTP/2 (ALPN `h2`) still
//! goes through pingora's accept loop, one task per stream.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;

use crate::http::app::{KeywardApp, KEEPALIVE_IDLE_S};

/// The listener's app: keyward's HTTP/1 loop around [`KeywardApp`].
pub struct Connections {
    pub app: Arc<KeywardApp>,
}

impl Connections {
    pub fn new(app: KeywardApp) -> Connections {
        Connections { app: Arc::new(app) }
    }
}

#[async_trait]
impl ServerApp for Connections {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            // pingora's HTTP/2 accept loop (the blanket `ServerApp` of an
            // `HttpServerApp`), one task per stream
            return ServerApp::process_new(&self.app, stream, shutdown).await;
        }
        // As pingora's HTTP/1 branch does: keep-alive on (the same idle
        // limit before the first request as between requests) unless
        // shutting down; each reused connection gets a fresh session carrying the
        // previous one's settings (and any bytes read past its request).
        let mut session = ServerSession::new_http1(stream);
        if *shutdown.borrow() {
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(KEEPALIVE_IDLE_S));
        }
        loop {
            let reused = self.app.serve(session, shutdown).await?;
            let (stream, settings) = reused.consume();
            session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
        }
    }
}
