//! Fake upstreams. [`echo`] (the library's echo upstream) and [`RawUpstream`]
//! (records the wire bytes) serve most tests; the rest each misbehave in
//! one particular way.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an accept loop on a non-blocking listener sleeps when no
/// connection is waiting.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(5);

/// The echo upstream on a free loopback port: answers with the method, path,
/// query, headers and body it received, as JSON (`?echo_delay_ms=`,
/// `?echo_chunks=`).
pub fn echo() -> SocketAddr {
    keyward::echo::spawn("127.0.0.1:0".parse().unwrap()).unwrap()
}

/// A listener on a free loopback port that hands each accepted connection
/// to `f` on its own thread.
pub fn fake_upstream(f: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let f = Arc::new(f);
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let f = f.clone();
            std::thread::spawn(move || f(s));
        }
    });
    addr
}

/// Reads one request head, answers `answer` (any bytes), then closes.
pub fn answering_upstream(answer: &'static [u8]) -> SocketAddr {
    fake_upstream(move |mut s| {
        if read_head(&mut s).is_some() {
            let _ = s.write_all(answer);
        }
    })
}

/// How long [`silent_upstream`] holds each connection without answering.
const SILENCE: Duration = Duration::from_secs(30);

/// Reads the request and never answers.
pub fn silent_upstream() -> SocketAddr {
    fake_upstream(|mut s| {
        let mut b = [0u8; 4096];
        let _ = s.read(&mut b);
        std::thread::sleep(SILENCE);
    })
}

/// Closes each connection with the request unread: the kernel answers with
/// a reset.
pub fn resetting_upstream() -> SocketAddr {
    fake_upstream(drop)
}

/// Answers a head announcing 100 bytes of body, sends 9, and closes.
pub fn truncating_upstream() -> SocketAddr {
    fake_upstream(|mut s| {
        let mut b = [0u8; 4096];
        let _ = s.read(&mut b);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part");
    })
}

/// Answers bytes that are not HTTP.
pub fn garbage_upstream() -> SocketAddr {
    fake_upstream(|mut s| {
        let mut b = [0u8; 4096];
        let _ = s.read(&mut b);
        let _ = s.write_all(b"\x00\x01\x02 definitely not HTTP\r\n\r\n");
    })
}

/// Answers the first request on each connection, then reads the next one and
/// closes without a word (a keep-alive timeout firing just as the connection
/// is reused); counts the connections it accepted.
pub fn one_answer_per_connection_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen = accepted.clone();
    let addr = fake_upstream(move |mut s| {
        seen.fetch_add(1, Ordering::SeqCst);
        let mut b = [0u8; 4096];
        if s.read(&mut b).unwrap_or(0) == 0 {
            return;
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let _ = s.read(&mut b);
    });
    (addr, accepted)
}

/// Like [`one_answer_per_connection_upstream`], but counts the POST requests
/// it read (answered or not) instead of the connections.
pub fn one_answer_per_connection_counting_posts() -> (SocketAddr, Arc<AtomicUsize>) {
    let posts = Arc::new(AtomicUsize::new(0));
    let seen = posts.clone();
    let addr = fake_upstream(move |mut s| {
        let mut b = [0u8; 4096];
        let n = s.read(&mut b).unwrap_or(0);
        if n == 0 {
            return;
        }
        if b.starts_with(b"POST") {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        if let Ok(n) = s.read(&mut b) {
            if b[..n].starts_with(b"POST") {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    (addr, posts)
}

/// Answers `200 ok` as soon as a request head is in, without reading the
/// body, then only reads until the peer closes; counts the connections.
pub fn answers_before_the_body_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen = accepted.clone();
    let addr = fake_upstream(move |mut s| {
        seen.fetch_add(1, Ordering::SeqCst);
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(1) => head.push(b[0]),
                _ => return,
            }
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let mut rest = [0u8; 4096];
        while matches!(s.read(&mut rest), Ok(n) if n > 0) {}
    });
    (addr, accepted)
}

/// Reads each request head, counts it as arrived, waits `delay`, answers
/// `200 {"slow":true}` and closes: a request a test can tell is in flight.
pub struct SlowUpstream {
    pub addr: SocketAddr,
    arrived: Arc<AtomicUsize>,
}

impl SlowUpstream {
    pub fn start(delay: Duration) -> SlowUpstream {
        let arrived = Arc::new(AtomicUsize::new(0));
        let seen = arrived.clone();
        let addr = fake_upstream(move |mut s| {
            if read_head(&mut s).is_none() {
                return;
            }
            seen.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(delay);
            let body = r#"{"slow":true}"#;
            let _ = s.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        });
        SlowUpstream { addr, arrived }
    }

    /// Requests whose head arrived so far.
    pub fn arrived(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }
}

/// How long [`switching_upstream`] keeps accepting.
const SWITCHING_LIFETIME: Duration = Duration::from_secs(30);
/// How long [`switching_upstream`] holds a connection after its 101.
const SWITCHING_HOLD: Duration = Duration::from_secs(2);

/// Answers every request with `101 Switching Protocols` and holds the
/// connection open for a while; stops accepting after 30 s.
pub fn switching_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let deadline = Instant::now() + SWITCHING_LIFETIME;
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((s, _)) => {
                    std::thread::spawn(move || answer_101(s));
                }
                Err(_) => std::thread::sleep(ACCEPT_BACKOFF),
            }
        }
    });
    addr
}

fn answer_101(mut s: TcpStream) {
    s.set_nonblocking(false).ok();
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    if read_head(&mut s).is_none() {
        return;
    }
    let _ = s.write_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n",
    );
    std::thread::sleep(SWITCHING_HOLD);
}

/// A one-thread-per-connection rustls HTTP/1.1 server with this leaf
/// certificate (DER) and PKCS#8 key (DER): answers each request with the
/// request head it saw and the SNI it was asked for (JSON, like the echo
/// upstream) and closes.
pub fn tls_upstream(cert_der: Vec<u8>, key_der: Vec<u8>) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![rustls::pki_types::CertificateDer::from(cert_der)],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key_der.into()),
        )
        .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let config = config.clone();
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, stream);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let mut headers = serde_json::Map::new();
                for line in text.split("\r\n").skip(1).filter(|l| !l.is_empty()) {
                    if let Some((k, v)) = line.split_once(':') {
                        headers
                            .insert(k.trim().to_ascii_lowercase(), serde_json::json!([v.trim()]));
                    }
                }
                let sni = tls.conn.server_name().unwrap_or("").to_string();
                let body = serde_json::json!({"headers": headers, "sni": sni}).to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes());
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    addr
}

/// One request as a [`RawUpstream`] read it off the wire.
#[derive(Debug, Clone)]
pub struct Seen {
    /// the request-target exactly as sent by keyward
    pub target: Vec<u8>,
    /// request line and headers, lossily decoded
    pub head: String,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn target_str(&self) -> String {
        String::from_utf8_lossy(&self.target).into_owned()
    }
    /// Values of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Vec<String> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }
}

/// A raw-socket HTTP/1.1 upstream that records every request exactly as it
/// arrives on the wire (target bytes, header lines, de-chunked body) and
/// answers `200 {"n": index, "target": …}`. Unlike the echo upstream it has no
/// HTTP library between the wire and the record, so it shows what keyward
/// really sent, even requests a strict server would refuse.
pub struct RawUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl RawUpstream {
    pub fn start() -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let seen = seen2.clone();
                        std::thread::spawn(move || raw_upstream_conn(s, seen));
                    }
                    Err(_) => std::thread::sleep(ACCEPT_BACKOFF),
                }
            }
        });
        RawUpstream { addr, seen, stop }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Request-targets received so far, lossily decoded.
    pub fn targets(&self) -> Vec<String> {
        self.seen().iter().map(Seen::target_str).collect()
    }

    /// Whether any received request line or header block contains `marker`.
    pub fn saw(&self, marker: &str) -> bool {
        self.seen()
            .iter()
            .any(|s| s.head.contains(marker) || String::from_utf8_lossy(&s.body).contains(marker))
    }

    /// Whether any received request line (not body) contains `marker`.
    pub fn saw_request_for(&self, marker: &str) -> bool {
        self.seen().iter().any(|s| s.target_str().contains(marker))
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn raw_upstream_conn(mut s: TcpStream, seen: Arc<Mutex<Vec<Seen>>>) {
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    // Read until `buf` holds at least `n` bytes; false on EOF or error.
    let mut fill = |s: &mut TcpStream, buf: &mut Vec<u8>, n: usize| -> bool {
        while buf.len() < n {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return false,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        }
        true
    };
    loop {
        // the head
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            let want = buf.len() + 1;
            if !fill(&mut s, &mut buf, want) {
                return;
            }
        };
        let head_bytes: Vec<u8> = buf.drain(..end + 4).collect();
        let head = String::from_utf8_lossy(&head_bytes[..end]).into_owned();
        let line_end = head_bytes
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or(end);
        let line = &head_bytes[..line_end];
        let target = line
            .split(|&b| b == b' ')
            .nth(1)
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        let mut cls: Vec<String> = Vec::new();
        let mut chunked = false;
        for l in head.split("\r\n").skip(1) {
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    cls.push(v.trim().to_string());
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    chunked |= v.to_ascii_lowercase().contains("chunked");
                }
            }
        }
        let mut body = Vec::new();
        let mut framing_ok = true;
        if chunked {
            if !cls.is_empty() {
                framing_ok = false;
            }
            loop {
                let p = loop {
                    if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                        break p;
                    }
                    let want = buf.len() + 1;
                    if !fill(&mut s, &mut buf, want) {
                        return;
                    }
                };
                let size_line = String::from_utf8_lossy(&buf[..p]).into_owned();
                let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
                    .unwrap_or(0);
                buf.drain(..p + 2);
                if size == 0 {
                    // trailers up to the empty line
                    loop {
                        let q = loop {
                            if let Some(q) = buf.windows(2).position(|w| w == b"\r\n") {
                                break q;
                            }
                            let want = buf.len() + 1;
                            if !fill(&mut s, &mut buf, want) {
                                return;
                            }
                        };
                        buf.drain(..q + 2);
                        if q == 0 {
                            break;
                        }
                    }
                    break;
                }
                if !fill(&mut s, &mut buf, size + 2) {
                    return;
                }
                body.extend_from_slice(&buf[..size]);
                buf.drain(..size + 2);
            }
        } else if !cls.is_empty() {
            let first = cls[0].clone();
            if cls.iter().any(|v| *v != first) || first.contains(',') {
                framing_ok = false;
            }
            let n: usize = first.split(',').next().unwrap().trim().parse().unwrap_or(0);
            if !fill(&mut s, &mut buf, n) {
                return;
            }
            body = buf.drain(..n).collect();
        }
        let index = {
            let mut seen = seen.lock().unwrap();
            seen.push(Seen {
                target: target.clone(),
                head,
                body,
            });
            seen.len() - 1
        };
        let json = serde_json::json!({
            "n": index,
            "target": String::from_utf8_lossy(&target),
        })
        .to_string();
        let status = if framing_ok {
            "200 OK"
        } else {
            "400 Bad Request"
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        );
        if s.write_all(resp.as_bytes()).is_err() || !framing_ok {
            return;
        }
    }
}

/// How long [`KillableEcho::restart_on`] retries binding the address.
const REBIND_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two bind attempts of [`KillableEcho::restart_on`].
const REBIND_BACKOFF: Duration = Duration::from_millis(20);

/// The echo upstream on its own runtime, which can be stopped (listener and
/// every open connection closed, like a killed process) and started again on
/// the same address.
pub struct KillableEcho {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KillableEcho {
    /// Bind `addr` (`127.0.0.1:0` for a free port) and serve.
    pub fn start(addr: SocketAddr) -> std::io::Result<KillableEcho> {
        let std_listener = TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                tokio::select! {
                    _ = keyward::echo::serve(listener) => {}
                    _ = rx => {}
                }
            });
            // Dropping the runtime drops every connection task: their sockets close.
            drop(rt);
        });
        Ok(KillableEcho {
            addr,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// Start again on `addr`, retrying while the port is briefly unavailable.
    pub fn restart_on(addr: SocketAddr) -> KillableEcho {
        let deadline = Instant::now() + REBIND_TIMEOUT;
        loop {
            match KillableEcho::start(addr) {
                Ok(e) => return e,
                Err(e) if Instant::now() > deadline => panic!("rebind {addr}: {e}"),
                Err(_) => std::thread::sleep(REBIND_BACKOFF),
            }
        }
    }

    /// Close the listener and every open connection; returns once they are closed.
    pub fn kill(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for KillableEcho {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Time between two events of [`sse_upstream`].
pub const SSE_TICK: Duration = Duration::from_millis(100);

/// Reads a request head and answers an endless `text/event-stream`
/// (chunked), one `data: tick N` event every [`SSE_TICK`], until the
/// connection breaks.
pub fn sse_upstream() -> SocketAddr {
    fake_upstream(|mut s| {
        if read_head(&mut s).is_none() {
            return;
        }
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";
        if s.write_all(head.as_bytes()).is_err() {
            return;
        }
        for n in 0u64.. {
            let event = format!("data: tick {n}\n\n");
            let chunk = format!("{:x}\r\n{event}\r\n", event.len());
            if s.write_all(chunk.as_bytes()).is_err() {
                return;
            }
            std::thread::sleep(SSE_TICK);
        }
    })
}

/// Reads a WebSocket handshake, answers `101 Switching Protocols`, then
/// echoes every byte it receives until either side closes (no framing: the
/// bytes are opaque to keyward).
pub fn websocket_echo_upstream() -> SocketAddr {
    fake_upstream(|mut s| {
        if read_head(&mut s).is_none() {
            return;
        }
        let head = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        if s.write_all(head.as_bytes()).is_err() {
            return;
        }
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    })
}

/// Read up to the end of a request head (`\r\n\r\n`), byte by byte (never
/// past it); None when the connection ends first.
pub fn read_head(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return None,
        }
    }
    Some(head)
}
