//! The method rules of SPEC §5.1: a standard method in another letter case,
//! or a second method named in a header or the query, is refused rather
//! than matched by one method here and run as another upstream.

use http::Method;

/// Headers and the query parameter through which frameworks let a request
/// name another method (Express `method-override`, Symfony, Laravel, Rails,
/// ASP.NET's `X-HTTP-Method-Override`), lowercase.
const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Whether the request names a second method: keyward would match its
/// route by one method and the upstream run the handler of another (a GET
/// that is a POST upstream skips the POST route's body rule). Refused as 400
/// `method_override`, like the other two-readings rules of SPEC §5.1.
pub fn method_override(headers: &http::HeaderMap, query: Option<&str>) -> bool {
    headers.keys().any(|k| {
        METHOD_OVERRIDE_HEADERS
            .iter()
            .any(|h| super::headers::spelled_as(k.as_str(), h))
    }) || query.is_some_and(|q| {
        q.split(['&', ';']).any(|pair| {
            let key = pair.split_once('=').map_or(pair, |(k, _)| k);
            let key = percent_encoding::percent_decode_str(key).decode_utf8_lossy();
            key.eq_ignore_ascii_case("_method")
        })
    })
}

/// The method rules of SPEC §5.1 as the shell and `keyward explain` apply
/// them: `Err(details.reason)` for a standard method in another case or a
/// second method named in a header or the query.
pub fn check_method(
    method: &Method,
    headers: &http::HeaderMap,
    query: Option<&str>,
) -> Result<(), &'static str> {
    if is_noncanonical_method(method) {
        // `post` would miss POST routes here and hit them upstream
        return Err("noncanonical_method");
    }
    if method_override(headers, query) {
        return Err("method_override");
    }
    Ok(())
}

/// The standard methods (SPEC §5.1).
const STANDARD_METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// A standard method in another letter case (`post`, `Get`): 400
/// `noncanonical_method` (SPEC §5.1), since routes compare methods exactly
/// while Werkzeug, Symfony and ASP.NET upper-case them.
pub fn is_noncanonical_method(method: &Method) -> bool {
    let m = method.as_str();
    STANDARD_METHODS
        .iter()
        .any(|s| s.as_str() != m && s.as_str().eq_ignore_ascii_case(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_read_one_way() {
        let h = |name: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                "POST".parse().unwrap(),
            );
            h
        };
        assert!(method_override(&h("x-http-method-override"), None));
        assert!(method_override(&h("x_http_method"), None));
        assert!(!method_override(&h("x-http-methods"), None));
        assert!(method_override(
            &http::HeaderMap::new(),
            Some("a=1&_method=POST")
        ));
        assert!(method_override(
            &http::HeaderMap::new(),
            Some("%5Fmethod=DELETE")
        ));
        assert!(!method_override(&http::HeaderMap::new(), Some("method=x")));
        for m in ["post", "Get", "hEAD", "Delete", "options", "pATCH", "put"] {
            assert!(
                is_noncanonical_method(&Method::from_bytes(m.as_bytes()).unwrap()),
                "{m}"
            );
        }
        for m in ["GET", "POST", "PROPFIND", "purge", "TRACE"] {
            assert!(
                !is_noncanonical_method(&Method::from_bytes(m.as_bytes()).unwrap()),
                "{m}"
            );
        }
    }
}
