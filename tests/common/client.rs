//! The one raw HTTP/1.1 client: requests written byte for byte on a fresh
//! connection (no HTTP library between the test and the wire, so malformed
//! requests go out as written), responses parsed leniently.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long [`send_bytes`] waits for each read of the response.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long [`exchange`] waits for the first bytes of an answer.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(10);

/// `Authorization: Bearer …` header line.
pub fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

/// The bytes of one request: `{method} {target} HTTP/1.1`, `Host: kw.test`,
/// `lines` (complete header lines, each ending in CRLF, any bytes), a
/// `Content-Length` when there is a `body`, `Connection: close`, the body.
pub fn request_bytes(method: &str, target: &str, lines: &[u8], body: Option<&[u8]>) -> Vec<u8> {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: kw.test\r\n").into_bytes();
    req.extend_from_slice(lines);
    if let Some(body) = body {
        req.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    req.extend_from_slice(b"Connection: close\r\n\r\n");
    if let Some(body) = body {
        req.extend_from_slice(body);
    }
    req
}

/// One request built by [`request_bytes`], sent on a fresh connection; the
/// response read to EOF and parsed.
pub fn send_bytes(
    addr: SocketAddr,
    method: &str,
    target: &str,
    lines: &[u8],
    body: Option<&[u8]>,
) -> Resp {
    raw_bytes(addr, &request_bytes(method, target, lines, body))
}

/// `GET path` with no credential.
pub fn get(addr: SocketAddr, path: &str) -> Resp {
    send_bytes(addr, "GET", path, b"", None)
}

/// Send raw bytes, read the response to EOF, parse it.
pub fn raw(addr: SocketAddr, request: &str) -> Resp {
    raw_bytes(addr, request.as_bytes())
}

pub fn raw_bytes(addr: SocketAddr, request: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(RESPONSE_TIMEOUT)).unwrap();
    // The server may answer and close before reading everything (413).
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse_response(&buf)
}

/// Send raw bytes, then read whatever comes back: up to
/// [`FIRST_BYTE_TIMEOUT`] for the first bytes, then until EOF or `quiet`
/// passes without more (keep-alive connections stay open). No parsing: an
/// empty result means the connection closed without a response.
pub fn exchange(addr: SocketAddr, request: &[u8], quiet: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(FIRST_BYTE_TIMEOUT)).unwrap();
    // The server may answer and close before reading everything.
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                s.set_read_timeout(Some(quiet)).unwrap();
            }
        }
    }
    buf
}

/// `GET path` with a bearer token on a fresh connection and a client
/// deadline: the response, or `None` when no complete response head arrived
/// in time (a hung request) or the connection failed.
pub fn timed_get(addr: SocketAddr, path: &str, token: &str, deadline: Duration) -> Option<Resp> {
    let mut s = TcpStream::connect_timeout(&addr, deadline).ok()?;
    s.set_read_timeout(Some(deadline)).ok()?;
    s.set_write_timeout(Some(deadline)).ok()?;
    s.write_all(&request_bytes("GET", path, bearer(token).as_bytes(), None))
        .ok()?;
    let start = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if start.elapsed() > deadline {
            return None;
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return None,
        }
    }
    buf.windows(4)
        .any(|w| w == b"\r\n\r\n")
        .then(|| parse_response(&buf))
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body_str()))
    }
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or("").to_string()
    }
    /// Values of a header the upstream received (echo body).
    pub fn upstream_header(&self, name: &str) -> Vec<String> {
        self.json()["headers"][name.to_ascii_lowercase()]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    }
    pub fn upstream_headers(&self) -> HashMap<String, Vec<String>> {
        serde_json::from_value(self.json()["headers"].clone()).unwrap()
    }
    /// Assert keyward's own error shape and return the code.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "body: {}", self.body_str());
        assert_eq!(self.header("content-type"), Some("application/json"));
        assert_eq!(
            self.header("content-length")
                .map(|v| v.parse::<usize>().unwrap()),
            Some(self.body.len())
        );
        let j = self.json();
        assert_eq!(j["code"], code, "{j}");
        assert!(j["error"].is_string() && j["details"].is_object(), "{j}");
    }
}

/// `details.reason` of one of keyward's JSON errors.
pub fn reason(r: &Resp) -> String {
    r.json()["details"]["reason"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

pub fn parse_response(buf: &[u8]) -> Resp {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let mut body = buf[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(p) = rest.windows(2).position(|w| w == b"\r\n") {
            let size =
                usize::from_str_radix(String::from_utf8_lossy(&rest[..p]).trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[p + 2..p + 2 + size]);
            rest = &rest[p + 2 + size + 2..];
        }
        body = out;
    } else if let Some(len) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        body.truncate(len.1.parse().unwrap());
    }
    Resp {
        status,
        headers,
        body,
    }
}

/// Split a byte stream holding several pipelined responses (each framed by
/// Content-Length) into parsed responses.
pub fn parse_responses(mut buf: &[u8]) -> Vec<Resp> {
    let mut out = Vec::new();
    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
        let r = parse_response(buf);
        let len: usize = r
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(buf.len() - end - 4);
        buf = &buf[(end + 4 + len).min(buf.len())..];
        out.push(r);
    }
    out
}
