//! Arbitrary request paths → normalize → match on the shipped route table.
//! Normalization is idempotent, never yields `..`, `.` or `//` segments or an
//! encoded slash, and matching never panics.
#![no_main]
use keyward::routes::normalize;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn table() -> &'static keyward::config::Config {
    static CFG: OnceLock<keyward::config::Config> = OnceLock::new();
    CFG.get_or_init(|| {
        let text = include_str!("../../config/keyward.toml");
        keyward::config::Config::from_toml_str(text, std::path::Path::new("/")).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let cfg = table();
    let Ok(norm) = normalize(path) else { return };
    let again = normalize(&norm).expect("a normalized path normalizes");
    assert_eq!(again.as_ref(), norm.as_ref(), "not idempotent");
    assert!(norm.starts_with('/'));
    for seg in norm.split('/').skip(1) {
        assert!(seg != ".." && seg != ".", "dot segment left in {norm:?}");
    }
    assert!(!norm.contains("//"), "empty segment in {norm:?}");
    let lower = norm.to_ascii_lowercase();
    assert!(!lower.contains("%2f") && !lower.contains("%5c") && !norm.contains('\0'));
    for m in [http::Method::GET, http::Method::POST, http::Method::DELETE] {
        let (route, caps) = cfg.routes.find(&m, &norm);
        for i in 0..caps.len() {
            if let Some(c) = caps.get(&norm, i) {
                assert!(!c.contains('/'), "capture spans segments");
            }
        }
        let _ = route.index;
    }
});
