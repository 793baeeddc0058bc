//! Request hygiene: what the shell refuses before any decision because the
//! request cannot be read one way (SPEC §5, §5.1, §7) — malformed framing,
//! a method in another letter case or a second method named in a header,
//! a target that is not a path, a path that cannot be normalized safely —
//! and the request id keyward answers and forwards with. Reads the head;
//! knows no policy.

use std::borrow::Cow;

use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;

use crate::auth::denial::Denial;
use crate::config::routes;
use crate::request::headers::{count, Count, X_REQUEST_ID};

/// The request id (SPEC §4): the client's when it is one value of at most
/// 128 characters of `[A-Za-z0-9._:-]`, else a new one.
pub fn request_id(h: &RequestHeader) -> String {
    match count(&h.headers, X_REQUEST_ID) {
        Count::Once(v) if valid_request_id(v.as_bytes()) => {
            String::from_utf8_lossy(v.as_bytes()).into_owned()
        }
        _ => new_request_id(),
    }
}

fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// 32 lowercase hex digits of randomness (hex-encoded directly: `format!`
/// costs more than the rest of the request id path together).
fn new_request_id() -> String {
    let v: u128 = rand::random();
    hex::encode(v.to_be_bytes())
}

/// Why the head is refused before any decision, and whether the connection
/// must close (its framing cannot be trusted for a next request).
pub struct Refused {
    pub denial: Denial,
    pub close: bool,
}

fn refused(reason: &'static str, close: bool) -> Refused {
    Refused {
        denial: Denial::BadRequest(reason),
        close,
    }
}

/// Every hygiene rule, in order; on success the path keyward decides on —
/// `Some` when it differs from the target's (the head must be rewritten so
/// the upstream acts on the same path).
pub fn check(session: &ServerSession) -> Result<Option<String>, Refused> {
    if cfg!(feature = "bench-unchecked") {
        return Ok(None); // measurement build only (Cargo.toml)
    }
    if malformed_framing(session) {
        return Err(refused("malformed_framing", true));
    }
    let h = session.req_header();
    crate::request::method::check_method(&h.method, &h.headers, h.uri.query())
        .map_err(|reason| refused(reason, false))?;
    if !plausible_host(&h.headers) {
        return Err(refused("malformed_host", false));
    }
    if h.version != http::Version::HTTP_2 && !h.headers.contains_key(http::header::HOST) {
        // RFC 9112 §3.2: an HTTP/1.1 request without Host is answered 400,
        // and keyward forwards every request as HTTP/1.1, which must carry
        // one: HTTP/1.0 without Host too (the upstream would otherwise pick
        // a virtual host of its own)
        return Err(refused("missing_host", false));
    }
    normalized_target(h).map_err(|reason| refused(reason, false))
}

/// Decide on exactly the path the upstream will act on (SPEC §5). pingora
/// keeps a target that is not origin-form verbatim while its Uri holds only
/// a path ("/" for targets it cannot classify): absolute-form http(s)
/// targets (whose authority pingora has checked against Host) are forwarded
/// in origin-form, anything else is refused.
fn normalized_target(h: &RequestHeader) -> Result<Option<String>, &'static str> {
    let target = h.raw_path();
    let origin_form = target.first() == Some(&b'/');
    if !h.raw_path_is_utf8() || !(origin_form || is_absolute_http(target)) {
        return Err(routes::PathError::NotOriginForm.reason());
    }
    match routes::normalize(h.uri.path()) {
        Ok(Cow::Borrowed(_)) if origin_form => Ok(None),
        Ok(p) => Ok(Some(match h.uri.query() {
            Some(q) => format!("{p}?{q}"),
            None => p.into_owned(),
        })),
        Err(e) => Err(e.reason()),
    }
}

/// At most one `Host`, and one that is only `host[:port]` (RFC 3986
/// reg-name or IP literal): an upstream that builds its URL as
/// `http://${host}${url}` would read the path or query out of
/// `Host: x/api/v1/workspaces/ws_b?` (found by an outside attack).
fn plausible_host(headers: &http::HeaderMap) -> bool {
    match count(headers, http::header::HOST) {
        Count::Absent => true,
        Count::Repeated => false,
        Count::Once(v) => {
            let v = v.as_bytes();
            !v.is_empty()
                && v.iter().all(|&b| {
                    b.is_ascii_alphanumeric()
                        || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
                })
        }
    }
}

/// `http://…` or `https://…` (absolute-form, RFC 9112 §3.2.2).
fn is_absolute_http(target: &[u8]) -> bool {
    let starts = |p: &[u8]| target.len() >= p.len() && target[..p.len()].eq_ignore_ascii_case(p);
    starts(b"http://") || starts(b"https://")
}

/// Content-Length beside Transfer-Encoding, and a repeated or comma-listed
/// Content-Length (SPEC §7). pingora refuses differing lengths and obs-fold
/// itself, but collapses equal duplicates and drops Content-Length when
/// Transfer-Encoding is present (RFC 9112 §6.3), so this reads the raw
/// header lines. Requests with neither header skip the scan.
fn malformed_framing(session: &ServerSession) -> bool {
    let headers = &session.req_header().headers;
    if !headers.contains_key(http::header::TRANSFER_ENCODING)
        && !headers.contains_key(http::header::CONTENT_LENGTH)
    {
        return false;
    }
    match session.as_http1() {
        Some(h1) => raw_framing_is_malformed(&h1.get_headers_raw_bytes()),
        None => false,
    }
}

fn raw_framing_is_malformed(raw_header: &[u8]) -> bool {
    let mut content_length = 0usize;
    let mut transfer_encoding = false;
    for line in raw_header.split(|&b| b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        if name.eq_ignore_ascii_case(b"content-length") {
            content_length += 1;
            if line[colon + 1..].contains(&b',') {
                return true;
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
        }
    }
    content_length > 1 || (content_length == 1 && transfer_encoding)
}

/// `Expect: 100-continue` (RFC 9110 §10.1.1).
pub fn expects_continue(h: &RequestHeader) -> bool {
    h.headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing() {
        let ok = |h: &str| !raw_framing_is_malformed(h.as_bytes());
        assert!(ok("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"));
        assert!(ok("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"));
        assert!(ok(
            "POST / HTTP/1.1\r\nX-Content-Length: 5\r\nContent-Length: 5\r\n\r\n"
        ));
        assert!(!ok(
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(!ok(
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\ncontent-length: 5\n\n"
        ));
        assert!(!ok(
            "POST / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n"
        ));
        assert!(!ok("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n"));
        assert!(is_absolute_http(b"HTTPS://h/p") && is_absolute_http(b"http://h"));
        assert!(!is_absolute_http(b"foo:/p") && !is_absolute_http(b"/http://h"));
        let host = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::HOST, v.parse().unwrap());
            plausible_host(&h)
        };
        assert!(host("api.example.com:8443") && host("[::1]:80") && host("kw.test"));
        for bad in ["x/api/v1/workspaces/ws_b?", "x#y", "a b", "x\\y", "u@h"] {
            assert!(!host(bad), "{bad}");
        }
    }

    #[test]
    fn request_ids() {
        assert!(valid_request_id(b"abc-123_.:X"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"a b"));
        assert!(!valid_request_id(&[b'a'; 129]));
    }
}
