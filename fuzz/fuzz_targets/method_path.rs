//! Request line pieces (SPEC §5.1): a method token and a path, separated by
//! the first space. A standard method (GET HEAD POST PUT PATCH DELETE
//! OPTIONS) in another letter case is noncanonical, the exact spelling and
//! every other method are not. `normalize` refuses any path with `;` as
//! `Parameter` (when origin-form), never refuses for that reason a path
//! without a raw `;` (`%3B` stays encoded), and never yields a `;`.
#![no_main]
use http::Method;
use keyward::request::method::is_noncanonical_method;
use keyward::routes::{normalize, PathError};
use libfuzzer_sys::fuzz_target;

const STANDARD: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

fuzz_target!(|data: &[u8]| {
    let (token, rest) = match data.iter().position(|&b| b == b' ') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    if let Ok(m) = Method::from_bytes(token) {
        let s = m.as_str();
        assert_eq!(s.as_bytes(), token, "method spelled otherwise");
        let exact = STANDARD.contains(&s);
        let folded = STANDARD.iter().any(|c| c.eq_ignore_ascii_case(s));
        assert_eq!(is_noncanonical_method(&m), folded && !exact, "method {s:?}");
    }
    let Ok(path) = std::str::from_utf8(rest) else {
        return;
    };
    let result = normalize(path);
    if path.contains(';') {
        if path.starts_with('/') {
            assert_eq!(
                result.as_deref().err(),
                Some(&PathError::Parameter),
                "{path:?}"
            );
        } else {
            assert!(result.is_err(), "{path:?}");
        }
    } else {
        assert_ne!(
            result.as_deref().err(),
            Some(&PathError::Parameter),
            "refused {path:?} for a `;` it does not have"
        );
    }
    if let Ok(norm) = &result {
        assert!(!norm.contains(';'), "{path:?} → {norm:?}");
    }
});
