//! `api_keys.permissions` JSON → scope. Never panics; anything that is not
//! understood must not widen a key to org-wide.
#![no_main]
use keyward::principal::Scope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let scope = Scope::parse(Some(text));
    // A key is org-wide only for permissions that are valid JSON.
    if !scope.is_scoped() && !matches!(scope, Scope::Malformed) {
        assert!(
            serde_json::from_str::<serde_json::Value>(text).is_ok(),
            "org-wide from non-JSON"
        );
    }
    let _ = scope.allows("ws_1");
});
