//! The PROXY protocol header parser (SPEC §8.3) on arbitrary first bytes of
//! a connection. Never panics; a header never claims more bytes than it was
//! given, is the same header when exactly its bytes are given, and asking
//! for more always means more than was read.
#![no_main]
use keyward::request::proxy_protocol::{parse, Parsed, Version, V1_MAX, V2_MAX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for v in [Version::V1, Version::V2, Version::Any] {
        match parse(data, v) {
            Parsed::Header { len, source } => {
                assert!(len <= data.len() && len <= V1_MAX.max(V2_MAX));
                assert_eq!(parse(&data[..len], v), Parsed::Header { len, source });
            }
            Parsed::Need(n) => assert!(n > data.len()),
            Parsed::Invalid => {}
        }
    }
});
