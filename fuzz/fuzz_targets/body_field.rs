//! Inspected request bodies → one top-level JSON string field (SPEC §5).
//! Never panics; a value found is the field's string as serde_json reads it.
#![no_main]
use keyward::scope::body_field;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(v)) = body_field(data, "workspaceId") {
        let parsed: serde_json::Value =
            serde_json::from_slice(data).expect("found a field in invalid JSON");
        assert_eq!(parsed["workspaceId"].as_str(), Some(v.as_str()));
    }
});
