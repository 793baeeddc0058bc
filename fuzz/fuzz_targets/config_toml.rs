//! Operator input: arbitrary TOML → validated config. Errors, never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = keyward::config::Config::from_toml_str(text, std::path::Path::new("/etc/keyward"));
});
