//! Bare pingora proxy: the baseline of the load benchmark (issue 9, target d).
//!
//! It does the least a proxy "doing the job" can do: answer 401 when the
//! request has no `Authorization` header, otherwise inject `X-Org-ID: bare`
//! toward the upstream and forward over a keepalive connection. Everything
//! else — ServerConf (threads, no work stealing, grace settings, upstream
//! keepalive pool), peer timeouts, mimalloc — copies what keyward's
//! `src/server.rs` and `src/proxy.rs` set, so that keyward / bare measures
//! only the cost of keyward's decisions.
//!
//! ```sh
//! cargo build --release --example bare_proxy
//! target/release/examples/bare_proxy 127.0.0.1:8081 127.0.0.1:3000 1
//! ```
//!
//! Arguments: LISTEN_ADDR UPSTREAM_ADDR THREADS. Runs until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::{RunArgs, Server};
use pingora::Result;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// keyward's default `server.shutdown_grace_s`.
const GRACE_S: u64 = 5;

struct BareProxy {
    peer: HttpPeer,
}

#[async_trait]
impl ProxyHttp for BareProxy {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        if session
            .req_header()
            .headers
            .contains_key(http::header::AUTHORIZATION)
        {
            return Ok(false);
        }
        session.respond_error(401).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        up: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        up.insert_header("x-org-id", "bare")
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

    // The same peer options keyward sets from its default upstream config.
    let mut peer = HttpPeer::new(upstream, false, String::new());
    peer.options.connection_timeout = Some(Duration::from_millis(1000));
    peer.options.total_connection_timeout = Some(Duration::from_millis(1000));
    peer.options.read_timeout = Some(Duration::from_millis(60000));
    peer.options.write_timeout = Some(Duration::from_millis(60000));
    peer.options.idle_timeout = Some(Duration::from_secs(60));

    // The pingora settings keyward runs with (src/server.rs).
    let conf = keyward::server::server_conf(threads, GRACE_S, None);
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = pingora::proxy::http_proxy_service(&server.configuration, BareProxy { peer });
    service.add_tcp(&listen.to_string());
    server.add_service(service);
    server.run(RunArgs::default());
}
