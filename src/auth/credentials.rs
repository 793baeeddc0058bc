//! Credentials (SPEC §3): request headers → the one [`Credential`] that
//! decides, in order of precedence (Authorization, X-Service-Key, session
//! cookie). Parsing and signature checks only: no store, no network.

use base64::Engine;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Secret;

/// Longest token accepted; longer ones are refused before hashing.
pub const MAX_TOKEN_LEN: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerKind {
    ApiKey,
    /// `mcp_…`: static or end_user
    Mcp,
    /// `mcpo_…`: oauth
    McpOAuth,
}

/// The credential that decides a request. Borrowed from the headers; not
/// `Debug` so tokens never reach a log line by accident.
pub enum Credential<'a> {
    Bearer {
        kind: BearerKind,
        token: &'a str,
    },
    ServiceKey(&'a [u8]),
    /// A session cookie whose signature verified; `token` is BetterAuth's token.
    Session {
        token: String,
    },
    /// Present but unusable: 401 with this reason.
    Invalid(&'static str),
    None,
}

pub struct SessionSettings<'a> {
    pub secret: Option<&'a Secret>,
    pub cookie_names: &'a [String],
}

/// Pick the deciding credential (SPEC §3: the first present decides).
pub fn extract<'a>(headers: &'a HeaderMap, session: &SessionSettings<'_>) -> Credential<'a> {
    let mut auth = headers.get_all(http::header::AUTHORIZATION).iter();
    if let Some(value) = auth.next() {
        if auth.next().is_some() {
            return Credential::Invalid("multiple_authorization_headers");
        }
        return parse_authorization(value.as_bytes());
    }
    let mut sk = headers.get_all("x-service-key").iter();
    if let Some(value) = sk.next() {
        if sk.next().is_some() {
            return Credential::Invalid("multiple_service_keys");
        }
        let v = value.as_bytes();
        if v.is_empty() || v.len() > MAX_TOKEN_LEN {
            return Credential::Invalid("malformed_service_key");
        }
        return Credential::ServiceKey(v);
    }
    match find_cookie(headers, session.cookie_names) {
        CookieLookup::Absent => Credential::None,
        CookieLookup::Ambiguous => Credential::Invalid("ambiguous_session_cookie"),
        CookieLookup::Malformed => Credential::Invalid("malformed_session_cookie"),
        CookieLookup::Found(raw) => match session.secret {
            None => Credential::Invalid("sessions_disabled"),
            Some(secret) => match verify_session_cookie(raw, secret) {
                Some(token) => Credential::Session { token },
                None => Credential::Invalid("bad_session_signature"),
            },
        },
    }
}

/// `Bearer <token>`: scheme case-insensitive, one or more spaces, a token of
/// visible ASCII. Anything else is 401.
pub fn parse_authorization(value: &[u8]) -> Credential<'_> {
    let Ok(text) = std::str::from_utf8(value) else {
        return Credential::Invalid("malformed_authorization");
    };
    let Some((scheme, rest)) = text.split_once(' ') else {
        return Credential::Invalid("malformed_authorization");
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Credential::Invalid("unsupported_scheme");
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty() {
        return Credential::Invalid("missing_token");
    }
    if token.len() > MAX_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Credential::Invalid("malformed_token");
    }
    let kind = if token.starts_with("wvz_") {
        BearerKind::ApiKey
    } else if token.starts_with("mcpo_") {
        BearerKind::McpOAuth
    } else if token.starts_with("mcp_") {
        BearerKind::Mcp
    } else {
        return Credential::Invalid("unknown_token_type");
    };
    Credential::Bearer { kind, token }
}

enum CookieLookup<'a> {
    Absent,
    Ambiguous,
    /// the session cookie's value is not UTF-8
    Malformed,
    Found(&'a str),
}

/// The session cookie under any configured name (SPEC §5.1). Pairs are split
/// on `;` with spaces and tabs trimmed, as Hono and better-call read them; the
/// cookie under two configured names, or twice under one, with different
/// values is refused: the upstream might read the other copy. Cookie headers
/// are read as bytes, so a header holding non-ASCII bytes elsewhere can
/// neither hide a copy of the session cookie nor drop it.
fn find_cookie<'a>(headers: &'a HeaderMap, names: &[String]) -> CookieLookup<'a> {
    let mut found: Option<&'a str> = None;
    for header in headers.get_all(http::header::COOKIE) {
        for pair in header.as_bytes().split(|&b| b == b';') {
            let pair = trim_spaces(pair);
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            let name = trim_spaces(&pair[..eq]);
            if !names.iter().any(|n| n.as_bytes() == name) {
                continue;
            }
            let Ok(v) = std::str::from_utf8(trim_spaces(&pair[eq + 1..])) else {
                return CookieLookup::Malformed;
            };
            match found {
                Some(prev) if prev != v => return CookieLookup::Ambiguous,
                _ => found = Some(v),
            }
        }
    }
    match found {
        Some(v) => CookieLookup::Found(v),
        None => CookieLookup::Absent,
    }
}

/// Spaces and horizontal tabs off both ends.
fn trim_spaces(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// BetterAuth's signed cookie: URL-decoded `TOKEN.SIGNATURE`, SIGNATURE =
/// standard base64 (padded) of HMAC-SHA256(secret, TOKEN). Returns TOKEN when
/// the signature verifies; compares in constant time.
pub fn verify_session_cookie(raw: &str, secret: &Secret) -> Option<String> {
    if raw.len() > MAX_TOKEN_LEN {
        return None;
    }
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()?;
    let (token, signature) = decoded.rsplit_once('.')?;
    if token.is_empty() || signature.is_empty() {
        return None;
    }
    let expected = sign(token.as_bytes(), secret);
    let ok: bool = expected.as_bytes().ct_eq(signature.as_bytes()).into();
    ok.then(|| token.to_string())
}

/// BetterAuth's cookie signature for `token` (used by tests and the demo).
pub fn sign(token: &[u8], secret: &Secret) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose()).expect("hmac takes any key");
    mac.update(token);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// A cookie value as BetterAuth sets it (URL-encoded `TOKEN.SIGNATURE`).
pub fn signed_cookie_value(token: &str, secret: &Secret) -> String {
    let raw = format!("{token}.{}", sign(token.as_bytes(), secret));
    percent_encoding::utf8_percent_encode(&raw, percent_encoding::NON_ALPHANUMERIC)
        .to_string()
        .replace("%2E", ".")
        .replace("%5F", "_")
        .replace("%2D", "-")
}

/// `sha256(token)` as lowercase hex: how every token is stored and looked up.
pub fn token_hash(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

pub fn token_hash_hex(token: &[u8]) -> String {
    hex::encode(token_hash(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::new("better-auth-secret-12345678901234567890")
    }

    #[test]
    fn better_auth_test_vector_verifies() {
        let cookie =
            "AbCdEfGhIjKlMnOpQrStUvWxYz012345.Ti%2FxeH4hFO5G4Kofpp9E9KCgaAEDRZ5hrYLoq0FI2L8%3D";
        assert_eq!(
            verify_session_cookie(cookie, &secret()).as_deref(),
            Some("AbCdEfGhIjKlMnOpQrStUvWxYz012345")
        );
        assert_eq!(
            signed_cookie_value("AbCdEfGhIjKlMnOpQrStUvWxYz012345", &secret()),
            cookie
        );
    }

    #[test]
    fn tampered_cookies_fail() {
        let good =
            "AbCdEfGhIjKlMnOpQrStUvWxYz012345.Ti%2FxeH4hFO5G4Kofpp9E9KCgaAEDRZ5hrYLoq0FI2L8%3D";
        assert!(verify_session_cookie(&good.replace("AbC", "Abc"), &secret()).is_none());
        assert!(verify_session_cookie(good, &Secret::new("other")).is_none());
        assert!(verify_session_cookie("AbCdEf", &secret()).is_none());
        assert!(verify_session_cookie(".", &secret()).is_none());
        assert!(verify_session_cookie(&good.replace("%3D", ""), &secret()).is_none());
    }

    fn kind(v: &str) -> Result<BearerKind, &'static str> {
        match parse_authorization(v.as_bytes()) {
            Credential::Bearer { kind, .. } => Ok(kind),
            Credential::Invalid(r) => Err(r),
            _ => unreachable!(),
        }
    }

    #[test]
    fn authorization_header_forms() {
        assert_eq!(kind("Bearer wvz_abc"), Ok(BearerKind::ApiKey));
        assert_eq!(kind("bEaReR    wvz_abc"), Ok(BearerKind::ApiKey));
        assert_eq!(kind("Bearer mcp_abc"), Ok(BearerKind::Mcp));
        assert_eq!(kind("Bearer mcpo_abc"), Ok(BearerKind::McpOAuth));
        assert_eq!(kind("Bearer"), Err("malformed_authorization"));
        assert_eq!(kind("Bearer "), Err("missing_token"));
        assert_eq!(kind("Basic dXNlcjpw"), Err("unsupported_scheme"));
        assert_eq!(kind("Bearer wvz_a b"), Err("malformed_token"));
        assert_eq!(kind("Bearer xyz"), Err("unknown_token_type"));
        assert_eq!(kind("Bearer\twvz_abc"), Err("malformed_authorization"));
    }

    #[test]
    fn cookie_copies_in_non_ascii_headers_count() {
        let names = ["better-auth.session_token".to_string()];
        let secret = secret();
        let settings = SessionSettings {
            secret: Some(&secret),
            cookie_names: &names,
        };
        let good = signed_cookie_value("tok", &secret);
        let reason = |cookies: &[&[u8]]| {
            let mut h = HeaderMap::new();
            for c in cookies {
                h.append(
                    http::header::COOKIE,
                    http::HeaderValue::from_bytes(c).unwrap(),
                );
            }
            match extract(&h, &settings) {
                Credential::Session { token } => Ok(token),
                Credential::Invalid(r) => Err(r),
                _ => Err("none"),
            }
        };
        let one = format!("better-auth.session_token={good}");
        assert_eq!(reason(&[one.as_bytes()]), Ok("tok".into()));
        // another cookie with non-ASCII bytes no longer hides the session cookie
        let mixed = [b"x=caf\xc3\xa9; ".as_slice(), one.as_bytes()].concat();
        assert_eq!(reason(&[&mixed]), Ok("tok".into()));
        // a second copy hidden in a non-ASCII header is still a second copy
        let hidden = b"y=\xff; better-auth.session_token=other.c2ln";
        assert_eq!(
            reason(&[one.as_bytes(), hidden]),
            Err("ambiguous_session_cookie")
        );
        assert_eq!(
            reason(&[b"better-auth.session_token=\xff.sig"]),
            Err("malformed_session_cookie")
        );
    }

    #[test]
    fn cookie_pairs_trim_tabs_and_every_name_counts() {
        let names = [
            "__Secure-better-auth.session_token".to_string(),
            "better-auth.session_token".to_string(),
        ];
        let secret = secret();
        let settings = SessionSettings {
            secret: Some(&secret),
            cookie_names: &names,
        };
        let a = signed_cookie_value("tok_a", &secret);
        let b = signed_cookie_value("tok_b", &secret);
        let read = |cookie: String| {
            let mut h = HeaderMap::new();
            h.append(
                http::header::COOKIE,
                http::HeaderValue::from_bytes(cookie.as_bytes()).unwrap(),
            );
            match extract(&h, &settings) {
                Credential::Session { token } => Ok(token),
                Credential::Invalid(r) => Err(r),
                _ => Err("none"),
            }
        };
        assert_eq!(
            read(format!("x=1;\tbetter-auth.session_token={a}\t")),
            Ok("tok_a".into())
        );
        assert_eq!(
            read(format!(
                "__Secure-better-auth.session_token={a}; better-auth.session_token={b}"
            )),
            Err("ambiguous_session_cookie")
        );
        assert_eq!(
            read(format!(
                "__Secure-better-auth.session_token={a}; better-auth.session_token={a}"
            )),
            Ok("tok_a".into())
        );
        assert_eq!(
            read(format!(
                "better-auth.session_token={a};\tbetter-auth.session_token={b}"
            )),
            Err("ambiguous_session_cookie")
        );
    }

    proptest::proptest! {
        #[test]
        fn authorization_parser_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = parse_authorization(&bytes);
        }
        #[test]
        fn cookie_verifier_never_panics(s in ".{0,200}") {
            let _ = verify_session_cookie(&s, &Secret::new("k"));
        }
    }
}
