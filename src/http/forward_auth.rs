//! Forward-auth (SPEC §8.3): `server.auth_listen` answers a proxy already in
//! front of the service — nginx `auth_request`, Traefik `forwardAuth`,
//! Envoy `ext_authz` (HTTP service), Caddy `forward_auth` — with the same
//! decision the proxy listener makes, without forwarding anything.
//!
//! The shell's only extra step is here: which request is being asked
//! about. The original is `X-Original-Method` + `X-Original-URI` (nginx), or
//! `X-Forwarded-Method` + `X-Forwarded-Uri` (Traefik, Caddy), or the
//! request itself (Envoy forwards the client's method and path). Every
//! other header is the client's. The head is rewritten to the original —
//! parsed as a request line would be — before the usual hygiene and
//! decision run, so there is one reading of it. The answer is 200 with the
//! identity headers the upstream would receive and `X-RateLimit-*`, or
//! keyward's own refusal.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use pingora::http::RequestHeader;

use crate::auth::denial::Denial;

const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");

/// One family's (method, uri), each at most once.
fn family<'h>(
    h: &'h HeaderMap,
    method: &HeaderName,
    uri: &HeaderName,
) -> Result<(Option<&'h HeaderValue>, Option<&'h HeaderValue>), Denial> {
    let one = |name: &HeaderName| {
        let mut all = h.get_all(name).iter();
        match (all.next(), all.next()) {
            (v, None) => Ok(v),
            // two values for the original: two readings
            _ => Err(Denial::BadRequest("ambiguous_original")),
        }
    };
    Ok((one(method)?, one(uri)?))
}

/// Rewrite `head` to the original request it asks about (see the module
/// doc); the family headers are removed so nothing downstream reads them
/// again. The method and the URI come as a pair (from either family).
pub fn to_original(head: &mut RequestHeader) -> Result<(), Denial> {
    let nginx = family(&head.headers, &X_ORIGINAL_METHOD, &X_ORIGINAL_URI)?;
    let traefik = family(&head.headers, &X_FORWARDED_METHOD, &X_FORWARDED_URI)?;
    let pick = |a: Option<&HeaderValue>, b: Option<&HeaderValue>| match (a, b) {
        (Some(a), Some(b)) if a != b => Err(Denial::BadRequest("conflicting_original")),
        (a, b) => Ok(a.or(b).cloned()),
    };
    let method = pick(nginx.0, traefik.0)?;
    let uri = pick(nginx.1, traefik.1)?;
    if method.is_some() != uri.is_some() {
        // a method without its path, or a path without its method: the
        // carrier's own method (nginx subrequests are always GET) would
        // stand in for the client's
        return Err(Denial::BadRequest("malformed_original"));
    }
    for name in [
        X_ORIGINAL_METHOD,
        X_ORIGINAL_URI,
        X_FORWARDED_METHOD,
        X_FORWARDED_URI,
    ] {
        head.remove_header(&name);
    }
    if let Some(m) = method {
        let m = Method::from_bytes(m.as_bytes())
            .map_err(|_| Denial::BadRequest("malformed_original"))?;
        head.set_method(m);
    }
    if let Some(uri) = uri {
        // origin-form only: an absolute URL here names a host nobody checked
        if uri.as_bytes().first() != Some(&b'/') {
            return Err(Denial::BadRequest("malformed_original"));
        }
        head.set_raw_path(uri.as_bytes())
            .map_err(|_| Denial::BadRequest("malformed_original"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(lines: &[(&str, &str)]) -> RequestHeader {
        let mut h = RequestHeader::build("GET", b"/_auth", None).unwrap();
        for (k, v) in lines {
            h.append_header(k.to_string(), *v).unwrap();
        }
        h
    }

    #[test]
    fn each_family_names_the_original_and_is_removed() {
        for (m, u) in [
            ("x-original-method", "x-original-uri"),
            ("x-forwarded-method", "x-forwarded-uri"),
        ] {
            let mut h = head(&[(m, "POST"), (u, "/api/v1/x?a=1")]);
            to_original(&mut h).unwrap();
            assert_eq!(h.method, Method::POST);
            assert_eq!(h.uri.path(), "/api/v1/x");
            assert_eq!(h.uri.query(), Some("a=1"));
            assert!(h.headers.get(m).is_none() && h.headers.get(u).is_none());
        }
        // Envoy: the request itself
        let mut h = head(&[]);
        to_original(&mut h).unwrap();
        assert_eq!(h.uri.path(), "/_auth");
        // both families agreeing
        let mut h = head(&[
            ("x-original-uri", "/a"),
            ("x-forwarded-uri", "/a"),
            ("x-forwarded-method", "DELETE"),
        ]);
        to_original(&mut h).unwrap();
        assert_eq!(h.method, Method::DELETE);
    }

    #[test]
    fn two_readings_of_the_original_are_refused() {
        let reason =
            |lines: &[(&str, &str)]| to_original(&mut head(lines)).unwrap_err().reason().unwrap();
        assert_eq!(
            reason(&[("x-original-uri", "/a"), ("x-forwarded-uri", "/b")]),
            "conflicting_original"
        );
        assert_eq!(
            reason(&[
                ("x-original-uri", "/a"),
                ("x-original-method", "GET"),
                ("x-forwarded-method", "POST")
            ]),
            "conflicting_original"
        );
        assert_eq!(
            reason(&[("x-original-uri", "/a"), ("x-original-uri", "/b")]),
            "ambiguous_original"
        );
        assert_eq!(
            reason(&[("x-original-method", "GET")]),
            "malformed_original"
        );
        for uri_only in ["x-original-uri", "x-forwarded-uri"] {
            assert_eq!(reason(&[(uri_only, "/a")]), "malformed_original");
        }
        assert_eq!(
            reason(&[("x-original-uri", "http://evil.test/a")]),
            "malformed_original"
        );
        assert_eq!(reason(&[("x-original-uri", "a/b")]), "malformed_original");
    }
}
