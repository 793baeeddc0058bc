//! A small echo upstream (for `keyward demo`, tests and benchmarks): answers
//! with the method, path, query, headers and body digest it received, as
//! JSON. `?echo_delay_ms=N` delays the answer; `?echo_chunks=N` streams N
//! chunks 20 ms apart. Loopback only in practice; not part of the proxy.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sha2::Digest;
use tokio::net::TcpListener;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn param(query: &str, name: &str) -> Option<u64> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.parse().ok()).flatten()
    })
}

async fn handle(req: Request<hyper::body::Incoming>) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let query = parts.uri.query().unwrap_or("").to_string();
    let mut headers = serde_json::Map::new();
    for (name, value) in &parts.headers {
        let entry = headers
            .entry(name.as_str())
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(a) = entry {
            a.push(String::from_utf8_lossy(value.as_bytes()).into());
        }
    }
    let echo = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": query,
        "headers": headers,
        "body_len": body.len(),
        "body_sha256": hex::encode(sha2::Sha256::digest(&body)),
        "body": String::from_utf8_lossy(&body),
    });
    if let Some(ms) = param(&query, "echo_delay_ms") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(n) = param(&query, "echo_chunks") {
        let stream = futures_stream(n);
        return Ok(Response::builder()
            .header("content-type", "text/event-stream")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap());
    }
    let bytes = Bytes::from(serde_json::to_vec(&echo).unwrap());
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(BodyExt::boxed(Full::new(bytes)))
        .unwrap())
}

fn futures_stream(n: u64) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        for i in 0..n {
            if tx
                .send(Ok(Frame::data(Bytes::from(format!("data: {i}\n\n")))))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    tokio_stream_from(rx)
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_core::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Serve on an already-bound listener until the task is dropped.
pub async fn serve(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .with_upgrades()
                .await;
        });
    }
}

/// Start the echo upstream on its own thread; returns its address.
pub fn spawn(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let local = std_listener.local_addr()?;
    std::thread::Builder::new()
        .name("keyward-echo".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("listener");
                serve(listener).await
            })
        })?;
    Ok(local)
}
