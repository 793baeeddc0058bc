//! Bare proxy on keyward's own forwarding (`keyward::forward`, on
//! pingora-core's HTTP sessions; no pingora-proxy): the job of
//! `bare_proxy.rs` (401 without Authorization, inject `X-Org-ID: bare`,
//! forward over a pooled keep-alive connection) with everything keyward does
//! to move a request, and none of its decisions. keyward / bare_core is the
//! cost of those decisions (credentials, routes, scopes, limits, identity
//! headers, request id, metrics, access log).
//!
//! ```sh
//! cargo build --release --example bare_core
//! target/release/examples/bare_core 127.0.0.1:8082 127.0.0.1:3000 1
//! ```
//!
//! Arguments: LISTEN_ADDR UPSTREAM_ADDR THREADS. Runs until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora::apps::{HttpServerApp, ReusedHttpStream};
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::listening::Service;

use keyward::config::UpstreamConfig;
use keyward::forward::{keep_alive, upstream_request, Upstream};

/// keyward's default `server.shutdown_grace_s`.
const GRACE_S: u64 = 5;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: Upstream,
}

impl Bare {
    /// Whether the downstream connection may be reused.
    async fn serve(&self, session: &mut ServerSession) -> bool {
        if !session
            .req_header()
            .headers
            .contains_key(http::header::AUTHORIZATION)
        {
            return session.respond_error(401).await.is_ok();
        }
        let has_body = !session.is_body_empty();
        let Ok(mut parts) = upstream_request(session.req_header(), has_body, |_| false) else {
            let _ = session.respond_error(400).await;
            return false;
        };
        parts.headers.insert(
            HeaderName::from_static("x-org-id"),
            HeaderValue::from_static("bare"),
        );
        let req = Box::new(RequestHeader::from(parts));
        match self
            .upstream
            .forward(session, req, None, |_| {}, |_| None)
            .await
        {
            Ok(_) => true,
            Err(_) => {
                let _ = session.respond_error(502).await;
                false
            }
        }
    }
}

#[async_trait]
impl HttpServerApp for Bare {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !matches!(session.read_request().await, Ok(true)) {
            return None;
        }
        if !self.serve(&mut session).await {
            return None;
        }
        keep_alive(session).await
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: {} LISTEN_ADDR UPSTREAM_ADDR THREADS", args[0]);
        std::process::exit(2);
    }
    let listen: SocketAddr = args[1].parse().expect("LISTEN_ADDR: host:port");
    let upstream: SocketAddr = args[2].parse().expect("UPSTREAM_ADDR: host:port");
    let threads: usize = args[3].parse().expect("THREADS: a number");

    // keyward's defaults for [upstream], and its pingora settings.
    let cfg = UpstreamConfig {
        address: upstream,
        tls: false,
        sni: String::new(),
        ca_file: None,
        connect_timeout: Duration::from_millis(1000),
        read_timeout: Duration::from_millis(60000),
        strip_credentials: false,
    };
    let conf = keyward::server::server_conf(threads, GRACE_S, None);
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let upstream = Upstream::new(&cfg, &server.configuration);
    let mut service = Service::new("bare_core".into(), Bare { upstream });
    service.add_tcp(&listen.to_string());
    server.add_service(service);
    server.run(RunArgs::default());
}
