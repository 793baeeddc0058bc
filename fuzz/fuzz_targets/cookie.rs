//! Cookie header bytes → session credential, and the BetterAuth signature
//! check. A cookie verifies only when it carries the HMAC of its own token,
//! and every signed cookie verifies to its token.
#![no_main]
use http::{HeaderMap, HeaderValue};
use keyward::config::Secret;
use keyward::credentials::{
    extract, sign, signed_cookie_value, verify_session_cookie, Credential, SessionSettings,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let secret = Secret::new(b"fuzz-secret-0123456789abcdef0123".to_vec());
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(token) = verify_session_cookie(text, &secret) {
            let decoded = percent_encoding::percent_decode_str(text)
                .decode_utf8()
                .unwrap();
            let (tok, sig) = decoded.rsplit_once('.').unwrap();
            assert_eq!(tok, token);
            assert_eq!(
                sig,
                sign(token.as_bytes(), &secret),
                "verified a wrong signature"
            );
        }
        let cookie = signed_cookie_value(text, &secret);
        if !text.is_empty() && cookie.len() <= keyward::credentials::MAX_TOKEN_LEN {
            assert_eq!(
                verify_session_cookie(&cookie, &secret).as_deref(),
                Some(text)
            );
        }
    }
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(http::header::COOKIE, value);
    let names = vec![
        "__Secure-better-auth.session_token".to_string(),
        "better-auth.session_token".to_string(),
    ];
    let settings = SessionSettings {
        secret: Some(&secret),
        cookie_names: &names,
    };
    if let Credential::Session { token } = extract(&headers, &settings) {
        assert!(!token.is_empty());
    }
});
