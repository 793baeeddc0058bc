//! Authorization header bytes → credential. Never panics; a bearer token it
//! accepts is a substring of the input, within the length cap, and carries
//! the kind its prefix says.
#![no_main]
use keyward::credentials::{parse_authorization, BearerKind, Credential, MAX_TOKEN_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Credential::Bearer { kind, token } = parse_authorization(data) {
        assert!(!token.is_empty() && token.len() <= MAX_TOKEN_LEN);
        let text = std::str::from_utf8(data).expect("accepted token from non-UTF-8 header");
        assert!(text.contains(token));
        match kind {
            BearerKind::McpOAuth => assert!(token.starts_with("mcpo_")),
            BearerKind::Mcp => assert!(token.starts_with("mcp_") && !token.starts_with("mcpo_")),
            BearerKind::ApiKey => {}
        }
    }
});
