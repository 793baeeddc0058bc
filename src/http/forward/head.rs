//! The heads as they cross keyward: the upstream's copy of the request head
//! (what of the client's head is forwarded, SPEC §4, §5.1 framing, before
//! keyward adds its own headers) and the client's copy of the response head.

use http::request::Parts;
use http::{header, HeaderMap, HeaderName, HeaderValue, Version};
use pingora::http::{RequestHeader, ResponseHeader};

use crate::request::headers::{count, Count};

/// Standard hop-by-hop request fields (RFC 9110 §7.6.1), never forwarded as
/// the client sent them.
const HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

/// Fields a `Connection` header may not nominate for removal: a client must
/// not make keyward drop what identifies the target or the caller.
const PROTECTED: [&str; 4] = ["host", "x-forwarded-for", "forwarded", "x-real-ip"];

/// Why a request header cannot be forwarded.
#[derive(Debug, PartialEq, Eq)]
pub struct Unforwardable(pub &'static str);

/// The upstream's copy of the request head: HTTP/1.1, no hop-by-hop or
/// `Connection`-nominated fields and none that `drop` names (a WebSocket
/// upgrade is re-stated normalized), `Host` from the HTTP/2 authority,
/// chunked framing for a body that has none.
///
/// Returned as plain `http` parts whose header map has room for keyward's
/// own headers: the caller inserts them with static names, which costs a
/// fraction of pingora's case-preserving `insert_header` (header names go
/// upstream in canonical case). The fields are copied once, filtered on the
/// way, instead of cloned and then removed.
pub fn upstream_request(
    down: &RequestHeader,
    has_body: bool,
    drop: impl Fn(&HeaderName) -> bool,
) -> Result<Parts, Unforwardable> {
    // Fields nominated by Connection (RFC 9110 §7.6.1).
    let nominated: Vec<HeaderName> = down
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
        .map(|t| {
            let name = HeaderName::from_bytes(t)
                .map_err(|_| Unforwardable("malformed_connection_header"))?;
            if PROTECTED.contains(&name.as_str()) {
                return Err(Unforwardable("protected_connection_nomination"));
            }
            Ok(name)
        })
        .collect::<Result<_, _>>()?;
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = down.method.clone();
    parts.uri = down.uri.clone();
    parts.version = Version::HTTP_11;
    let mut h = HeaderMap::with_capacity(down.headers.len() + ROOM_FOR_KEYWARD);
    for (name, value) in &down.headers {
        if !HOP_BY_HOP.contains(name) && !nominated.contains(name) && !drop(name) {
            h.append(name.clone(), value.clone());
        }
    }
    if is_websocket_upgrade(down) {
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    if down.version == Version::HTTP_2 && !h.contains_key(header::HOST) {
        if let Some(a) = down.uri.authority() {
            let v = HeaderValue::from_str(a.as_str())
                .map_err(|_| Unforwardable("malformed_authority"))?;
            h.insert(header::HOST, v);
        }
    }
    if has_body && !h.contains_key(header::CONTENT_LENGTH) {
        // The client's transfer codings are kept in order (pingora checked
        // that chunked is the last and de-chunked the body; it is chunked
        // again on the way up), so `gzip, chunked` stays gzip; with exactly
        // one `chunked`, keyward's own (SPEC §5.1: `chunked, chunked` would
        // be read as two layers). Without any, chunked.
        h.insert(header::TRANSFER_ENCODING, transfer_codings(down)?);
    }
    parts.headers = h;
    Ok(parts)
}

/// The client's transfer codings other than `chunked`, in order, then one
/// `chunked`.
fn transfer_codings(down: &RequestHeader) -> Result<HeaderValue, Unforwardable> {
    let mut out: Vec<u8> = Vec::new();
    for v in down.headers.get_all(header::TRANSFER_ENCODING) {
        for coding in v.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if coding.is_empty() || coding.eq_ignore_ascii_case(b"chunked") {
                continue;
            }
            out.extend_from_slice(coding);
            out.extend_from_slice(b", ");
        }
    }
    if out.is_empty() {
        return Ok(HeaderValue::from_static("chunked"));
    }
    out.extend_from_slice(b"chunked");
    HeaderValue::from_bytes(&out).map_err(|_| Unforwardable("malformed_transfer_encoding"))
}

/// Headers keyward may add to the upstream's copy (identity, request id,
/// framing, upgrade).
const ROOM_FOR_KEYWARD: usize = 12;

/// Response fields that describe the upstream connection, not the message
/// (RFC 9110 §7.6.1), and never go down as the upstream sent them. pingora
/// writes the client's own `Connection` for a final response.
const RESPONSE_HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Room for keyward's response headers (`X-RateLimit-*`).
const ROOM_FOR_KEYWARD_RESPONSE: usize = 3;

/// The client's copy of a response head (an informational one too), as plain
/// `http` parts with room for keyward's headers:
/// * the status line says HTTP/1.1, whatever version the upstream spoke;
/// * hop-by-hop fields and the ones the upstream's `Connection` nominates
///   are dropped; a nomination of `Content-Length` or `Transfer-Encoding` is
///   ignored, since the body is framed by them;
/// * a 101 must switch to WebSocket (the only upgrade keyward forwards) and
///   goes down as `Connection: Upgrade`, `Upgrade: websocket`;
/// * a status that has no body (1xx, 204) goes without `Content-Length` or
///   `Transfer-Encoding`, a 304 without `Transfer-Encoding` (RFC 9110
///   §8.6, RFC 9112 §6.1);
/// * `Transfer-Encoding` goes down as one line of the codings in order, and
///   only when pingora (which looks at the last token of the last line)
///   and a client (which skips empty list elements, RFC 9110 §5.6.1) read
///   the same framing from it: `chunked,` is refused, never relayed for a
///   client to read as chunked what was framed close-delimited;
///   `Content-Length` beside it is dropped (RFC 9112 §6.1), a list of equal
///   lengths (`5, 5`) goes down as one;
/// * for an HTTP/1.0 client, which cannot read chunked framing, a chunked
///   body goes close-delimited (the caller closes the connection after it);
///   another transfer coding it could not undo is refused.
pub fn client_response(
    up: &ResponseHeader,
    client: Version,
) -> Result<http::response::Parts, Unforwardable> {
    let status = up.status;
    let switching = status == http::StatusCode::SWITCHING_PROTOCOLS;
    let no_body = status.is_informational() || status == http::StatusCode::NO_CONTENT;
    if switching {
        let websocket = matches!(count(&up.headers, header::UPGRADE),
            Count::Once(v) if v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"));
        if !websocket {
            return Err(Unforwardable("upgrade_not_websocket"));
        }
    }
    let nominated: Vec<HeaderName> = up
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        .filter(|n| *n != header::CONTENT_LENGTH && *n != header::TRANSFER_ENCODING)
        .collect();
    let mut h = HeaderMap::with_capacity(up.headers.len() + ROOM_FOR_KEYWARD_RESPONSE);
    for (name, value) in &up.headers {
        if RESPONSE_HOP_BY_HOP.contains(name)
            || nominated.contains(name)
            || *name == header::TRANSFER_ENCODING
        {
            continue;
        }
        if *name == header::CONTENT_LENGTH {
            if no_body {
                continue;
            }
            if value.as_bytes().contains(&b',') {
                // pingora read equal lengths as one (differing ones fail the read)
                let mut lengths = value
                    .as_bytes()
                    .split(|&b| b == b',')
                    .map(<[u8]>::trim_ascii);
                let first = lengths.next().unwrap_or_default();
                if first.is_empty() || lengths.any(|l| l != first) {
                    return Err(Unforwardable("malformed_content_length"));
                }
                let one = HeaderValue::from_bytes(first)
                    .map_err(|_| Unforwardable("malformed_content_length"))?;
                h.append(header::CONTENT_LENGTH, one);
                continue;
            }
        }
        h.append(name.clone(), value.clone());
    }
    if switching {
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    if up.headers.contains_key(header::TRANSFER_ENCODING)
        && !no_body
        && status != http::StatusCode::NOT_MODIFIED
    {
        let pingora_chunked = pingora_reads_chunked(&up.headers);
        let codings: Vec<&[u8]> = up
            .headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|c| !c.is_empty())
            .collect();
        let chunked = codings
            .last()
            .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
        if chunked != pingora_chunked {
            return Err(Unforwardable("ambiguous_transfer_encoding"));
        }
        // the body below goes framed by these codings, never also by a length
        h.remove(header::CONTENT_LENGTH);
        if client == Version::HTTP_10 {
            if codings.iter().any(|c| !c.eq_ignore_ascii_case(b"chunked")) {
                return Err(Unforwardable("transfer_coding_for_http10"));
            }
        } else if !codings.is_empty() {
            let v = HeaderValue::from_bytes(&codings.join(&b", "[..]))
                .map_err(|_| Unforwardable("ambiguous_transfer_encoding"))?;
            h.insert(header::TRANSFER_ENCODING, v);
        }
    }
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = status;
    parts.version = Version::HTTP_11;
    parts.headers = h;
    Ok(parts)
}

/// Whether a final response head, as it goes down, has a body delimited
/// only by the connection's close (no length, no chunked framing).
pub fn close_delimited(status: http::StatusCode, headers: &HeaderMap, head_request: bool) -> bool {
    !(head_request
        || status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED
        || headers.contains_key(header::CONTENT_LENGTH)
        || pingora_reads_chunked(headers))
}

/// Chunked framing as pingora reads it, to frame a body both ways: the last
/// token of the last `Transfer-Encoding` line.
fn pingora_reads_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.as_bytes().rsplit(|&b| b == b',').next())
        .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// An HTTP/1.1 WebSocket handshake: GET, `Connection: upgrade`,
/// `Upgrade: websocket` (RFC 6455 §4.1).
pub fn is_websocket_upgrade(req: &RequestHeader) -> bool {
    let has_token = |name: header::HeaderName, token: &[u8]| {
        req.headers.get_all(name).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
        })
    };
    req.version == Version::HTTP_11
        && req.method == http::Method::GET
        && has_token(header::CONNECTION, b"upgrade")
        && has_token(header::UPGRADE, b"websocket")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(lines: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/x", None).unwrap();
        for (k, v) in lines {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn hop_by_hop_and_nominated_fields_are_dropped() {
        let r = req(&[
            ("host", "a"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("x-kept", "1"),
        ]);
        let up = upstream_request(&r, false, |_| false).unwrap();
        assert_eq!(up.version, Version::HTTP_11);
        for gone in ["connection", "x-secret", "keep-alive", "te"] {
            assert!(!up.headers.contains_key(gone), "{gone}");
        }
        assert_eq!(up.headers["x-kept"], "1");
        assert_eq!(up.headers["host"], "a");
    }

    #[test]
    fn protected_or_malformed_nominations_are_refused() {
        let r = req(&[("connection", "close, Host")]);
        assert_eq!(
            upstream_request(&r, false, |_| false).unwrap_err(),
            Unforwardable("protected_connection_nomination")
        );
        let r = req(&[("connection", "\"x-a\"")]);
        assert!(upstream_request(&r, false, |_| false).is_err());
    }

    #[test]
    fn websocket_upgrade_is_restated_other_upgrades_dropped() {
        let r = req(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ]);
        let up = upstream_request(&r, false, |_| false).unwrap();
        assert_eq!(up.headers["connection"], "Upgrade");
        assert_eq!(up.headers["upgrade"], "websocket");
        let r = req(&[("connection", "upgrade"), ("upgrade", "h2c")]);
        let up = upstream_request(&r, false, |_| false).unwrap();
        assert!(!up.headers.contains_key("upgrade") && !up.headers.contains_key("connection"));
    }

    #[test]
    fn transfer_codings_are_kept_for_a_body() {
        let r = req(&[("transfer-encoding", "gzip, chunked")]);
        let up = upstream_request(&r, true, |_| false).unwrap();
        assert_eq!(up.headers["transfer-encoding"], "gzip, chunked");
        let up = upstream_request(&r, false, |_| false).unwrap();
        assert!(!up.headers.contains_key("transfer-encoding"));
        let r = req(&[("transfer-encoding", "chunked, chunked")]);
        let up = upstream_request(&r, true, |_| false).unwrap();
        assert_eq!(up.headers["transfer-encoding"], "chunked");
        let r = req(&[
            ("transfer-encoding", "gzip, Chunked"),
            ("transfer-encoding", "chunked"),
        ]);
        let up = upstream_request(&r, true, |_| false).unwrap();
        assert_eq!(up.headers["transfer-encoding"], "gzip, chunked");
        assert_eq!(up.headers.get_all("transfer-encoding").iter().count(), 1);
    }

    fn resp(status: u16, version: Version, lines: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        r.set_version(version);
        for (k, v) in lines {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn response_hop_by_hop_and_nominated_fields_are_dropped() {
        let r = resp(
            200,
            Version::HTTP_10,
            &[
                ("connection", "keep-alive, x-hop, content-length"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("upgrade", "h2c"),
                ("trailer", "x-t"),
                ("x-hop", "1"),
                ("content-length", "3"),
                ("x-kept", "1"),
            ],
        );
        let down = client_response(&r, Version::HTTP_11).unwrap();
        assert_eq!(
            down.version,
            Version::HTTP_11,
            "status line says keyward's version"
        );
        for gone in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "upgrade",
            "trailer",
            "x-hop",
        ] {
            assert!(!down.headers.contains_key(gone), "{gone}");
        }
        assert_eq!(down.headers["content-length"], "3");
        assert_eq!(down.headers["x-kept"], "1");
        // a 101 keeps the switch, re-stated, and only to WebSocket
        let r = resp(
            101,
            Version::HTTP_11,
            &[
                ("connection", "Upgrade, X-Secret"),
                ("upgrade", "WebSocket"),
                ("x-secret", "s"),
                ("keep-alive", "x"),
                ("transfer-encoding", "chunked"),
                ("content-length", "5"),
            ],
        );
        let down = client_response(&r, Version::HTTP_11).unwrap();
        assert_eq!(down.headers["connection"], "Upgrade");
        assert_eq!(down.headers["upgrade"], "websocket");
        assert_eq!(down.headers.len(), 2, "{:?}", down.headers);
        let r = resp(
            101,
            Version::HTTP_11,
            &[("connection", "Upgrade"), ("upgrade", "h2c")],
        );
        assert_eq!(
            client_response(&r, Version::HTTP_11).unwrap_err(),
            Unforwardable("upgrade_not_websocket")
        );
    }

    #[test]
    fn bodyless_statuses_go_without_framing() {
        let framing = [("content-length", "5"), ("transfer-encoding", "chunked")];
        for status in [103, 204] {
            let down = client_response(&resp(status, Version::HTTP_11, &framing), Version::HTTP_11)
                .unwrap();
            assert!(down.headers.is_empty(), "{status}");
        }
        let down =
            client_response(&resp(304, Version::HTTP_11, &framing), Version::HTTP_11).unwrap();
        assert_eq!(down.headers["content-length"], "5");
        assert!(!down.headers.contains_key("transfer-encoding"));
    }

    #[test]
    fn chunked_goes_close_delimited_to_http10_clients() {
        let r = resp(
            200,
            Version::HTTP_11,
            &[("transfer-encoding", "chunked"), ("x-a", "1")],
        );
        let down = client_response(&r, Version::HTTP_10).unwrap();
        assert!(!down.headers.contains_key("transfer-encoding"));
        assert!(!down.headers.contains_key("content-length"));
        assert_eq!(
            client_response(&r, Version::HTTP_11).unwrap().headers["transfer-encoding"],
            "chunked"
        );
        let r = resp(
            200,
            Version::HTTP_11,
            &[("transfer-encoding", "gzip, chunked")],
        );
        assert_eq!(
            client_response(&r, Version::HTTP_10).unwrap_err(),
            Unforwardable("transfer_coding_for_http10")
        );
    }

    #[test]
    fn transfer_encoding_has_one_reading_or_is_refused() {
        let te = |lines: &[(&str, &str)]| {
            client_response(&resp(200, Version::HTTP_11, lines), Version::HTTP_11)
        };
        // pingora frames these close-delimited, a client would read chunked
        for lines in [
            &[("transfer-encoding", "chunked,")][..],
            &[("transfer-encoding", "chunked"), ("transfer-encoding", "")][..],
        ] {
            assert_eq!(
                te(lines).unwrap_err(),
                Unforwardable("ambiguous_transfer_encoding"),
                "{lines:?}"
            );
        }
        let down = te(&[
            ("transfer-encoding", "gzip"),
            ("transfer-encoding", " chunked"),
            ("content-length", "9"),
        ])
        .unwrap();
        assert_eq!(down.headers["transfer-encoding"], "gzip, chunked");
        assert!(!down.headers.contains_key("content-length"));
        assert!(!close_delimited(down.status, &down.headers, false));
        // chunked not last: close-delimited both ways, stated as received
        let down = te(&[("transfer-encoding", "chunked, gzip")]).unwrap();
        assert_eq!(down.headers["transfer-encoding"], "chunked, gzip");
        assert!(close_delimited(down.status, &down.headers, false));
        // equal lengths go down as one
        let down = te(&[("content-length", "5, 5")]).unwrap();
        assert_eq!(down.headers["content-length"], "5");
        assert!(te(&[("content-length", "5, 6")]).is_err());
        assert!(!close_delimited(down.status, &down.headers, false));
        let plain = te(&[]).unwrap();
        assert!(close_delimited(plain.status, &plain.headers, false));
        assert!(!close_delimited(plain.status, &plain.headers, true));
    }

    #[test]
    fn unframed_body_is_sent_chunked() {
        let r = req(&[("transfer-encoding", "chunked")]);
        let up = upstream_request(&r, true, |_| false).unwrap();
        assert_eq!(up.headers["transfer-encoding"], "chunked");
        let r = req(&[("content-length", "3")]);
        let up = upstream_request(&r, true, |_| false).unwrap();
        assert!(!up.headers.contains_key("transfer-encoding"));
        assert!(upstream_request(&req(&[]), false, |_| false)
            .unwrap()
            .headers
            .is_empty());
    }
}
