//! Inspected request bodies → one top-level JSON string field (SPEC §5).
//! Never panics; a value is found only in syntactically valid JSON, and it
//! is the field's string as serde_json reads it. (serde_json's `Value`
//! refuses numbers beyond f64 that JSON's grammar allows, so the syntax check
//! uses `IgnoredAny`; found by a 10-minute run.)
#![no_main]
use keyward::scope::body_field;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(v)) = body_field(data, "workspaceId") {
        serde_json::from_slice::<serde::de::IgnoredAny>(data)
            .expect("found a field in invalid JSON");
        if let Ok(parsed) = serde_json::from_slice::<serde_json::Value>(data) {
            assert_eq!(parsed["workspaceId"].as_str(), Some(v.as_str()));
        }
    }
});
