//! `api_keys.allowed_ips` JSON → allow-list (SPEC §6.1). Never panics;
//! text that is not a JSON array of CIDRs/IPs never allows a client, and
//! only SQL NULL or JSON `null` allows every client.
#![no_main]
use keyward::principal::{AllowedIps, Permissions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let list = AllowedIps::parse(Some(text));
    let clients = ["10.0.0.1", "::1", "::ffff:192.0.2.1", "203.0.113.7"];
    match &list {
        AllowedIps::Any => assert!(
            matches!(serde_json::from_str::<serde_json::Value>(text), Ok(serde_json::Value::Null)),
            "open from {text:?}"
        ),
        AllowedIps::Malformed => {
            for c in clients {
                assert!(!list.allows(c.parse().unwrap()));
            }
        }
        AllowedIps::Only(_) => {
            assert!(matches!(
                serde_json::from_str::<serde_json::Value>(text),
                Ok(serde_json::Value::Array(_))
            ));
            for c in clients {
                let _ = list.allows(c.parse().unwrap());
            }
        }
    }
    // readOnly beside the scope: never widened by text that is not JSON
    let p = Permissions::parse(Some(text));
    if p.read_only {
        assert!(serde_json::from_str::<serde_json::Value>(text).is_ok());
    }
});
