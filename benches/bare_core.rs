//! Bare proxy on pingora-core (no pingora-proxy): the same job as
//! `bare_proxy.rs` (401 without Authorization, inject `X-Org-ID: bare`,
//! forward over a pooled keep-alive connection), written as a direct
//! `HttpServerApp` loop. Measures what a leaner proxy loop gains.
//!
//! Arguments: LISTEN_ADDR UPSTREAM_ADDR THREADS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::connectors::http::v1::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::ResponseHeader;
use pingora::prelude::HttpPeer;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::listening::Service;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Lean {
    peer: HttpPeer,
    connector: Connector,
}

impl Lean {
    async fn serve(&self, session: &mut ServerSession) -> pingora::Result<bool> {
        if !session
            .req_header()
            .headers
            .contains_key(http::header::AUTHORIZATION)
        {
            session.respond_error(401).await?;
            return Ok(true);
        }
        let (mut up, _reused) = self.connector.get_http_session(&self.peer).await?;
        let mut req = Box::new(session.req_header().clone());
        req.insert_header("x-org-id", "bare")?;
        up.write_request_header(req).await?;
        while let Some(chunk) = session.read_request_body().await? {
            up.write_body(&chunk).await?;
        }
        up.finish_body().await?;
        up.read_response().await?;
        let resp: Box<ResponseHeader> = Box::new(up.resp_header().unwrap().clone());
        session.write_response_header(resp).await?;
        while let Some(chunk) = up.read_body_bytes().await? {
            session.write_response_body(chunk, false).await?;
        }
        session
            .write_response_body(bytes::Bytes::new(), true)
            .await?;
        up.respect_keepalive();
        self.connector
            .release_http_session(up, &self.peer, Some(Duration::from_secs(60)))
            .await;
        Ok(true)
    }
}

#[async_trait]
impl HttpServerApp for Lean {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match session.read_request().await {
            Ok(true) => {}
            _ => return None,
        }
        match self.serve(&mut session).await {
            Ok(true) => {
                let settings = HttpPersistentSettings::for_session(&session);
                let reusable = session.finish().await.ok().flatten()?;
                Some(ReusedHttpStream::from_reusable_stream(reusable, settings))
            }
            _ => None,
        }
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

    let mut peer = HttpPeer::new(upstream, false, String::new());
    peer.options.connection_timeout = Some(Duration::from_millis(1000));
    peer.options.read_timeout = Some(Duration::from_millis(60000));
    peer.options.write_timeout = Some(Duration::from_millis(60000));
    peer.options.idle_timeout = Some(Duration::from_secs(60));

    let conf = ServerConf {
        threads,
        work_stealing: false,
        grace_period_seconds: Some(5),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: 256,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let connector = Connector::new(Some(ConnectorOptions::from_server_conf(
        &server.configuration,
    )));
    let mut service = Service::new("lean".into(), Lean { peer, connector });
    service.add_tcp(&listen.to_string());
    server.add_service(service);
    server.run(RunArgs::default());
}
