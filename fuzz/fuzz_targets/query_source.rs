//! Workspace sources (SPEC §5.1) → `scope::resolve` on three routes: a path
//! capture, a `query:` rule and a `header:` rule. Input: a query string (0xFE
//! and 0xFD, never in UTF-8, stand for `workspaceId` and `X-Ws` so that
//! libFuzzer reaches the names) and, after the first 0xFF byte, a name used
//! as the path capture and as the header value. Never panics; any id found
//! is 1–256 bytes of visible ASCII. On the `query:` route an id comes from
//! exactly one pair whose decoded key is `workspaceId` (any case, no
//! brackets), its value form-decoded, and no `;`-separated piece of the query
//! names `workspaceId` a second time. On the path and header routes an id
//! stands only when no query parameter of the rule's name (`workspaceId`,
//! `X-Ws`) names another workspace.
#![no_main]
use std::borrow::Cow;
use std::path::Path;
use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue, Method};
use keyward::config::Config;
use keyward::routes::normalize;
use keyward::scope::{resolve, valid_id};
use libfuzzer_sys::fuzz_target;

const NAME: &str = "workspaceId";
const HEADER: &str = "X-Ws";

fn table() -> &'static Config {
    static CFG: OnceLock<Config> = OnceLock::new();
    CFG.get_or_init(|| {
        let text = r#"
            [[route]]
            path = "/w/{workspaceId}/**"
            workspace = "path:workspaceId"
            [[route]]
            path = "/q"
            workspace = "query:workspaceId"
            [[route]]
            path = "/h"
            workspace = "header:X-Ws"
        "#;
        Config::from_toml_str(text, Path::new("/")).expect("fuzz route table")
    })
}

/// The oracle's own form decoding: `+` is a space, then percent-decoding.
fn decode_lossy(s: &str) -> String {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

fn decode_strict(s: &str) -> Option<String> {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(Cow::into_owned)
}

fn key_of(piece: &str) -> &str {
    piece.split_once('=').map_or(piece, |(k, _)| k)
}

/// The decoded key names `name` in any case, with or without a `[…]` suffix.
fn names(raw_key: &str, name: &str) -> bool {
    let key = decode_lossy(raw_key);
    let base = key.split('[').next().unwrap_or("");
    base.eq_ignore_ascii_case(name)
}

/// Pairs (split on `&`) whose key names `name`, as (index, raw pair).
fn naming_pairs<'q>(query: &'q str, name: &str) -> Vec<(usize, &'q str)> {
    query
        .split('&')
        .enumerate()
        .filter(|(_, p)| names(key_of(p), name))
        .collect()
}

/// The raw values of the pieces in which a parser that splits pairs on `;`
/// as well (Go < 1.17, Python < 3.9.2, Rack 2) finds `name`, other than the
/// `&`-pair `except` itself names.
fn semicolon_readings<'q>(query: &'q str, name: &str, except: Option<usize>) -> Vec<&'q str> {
    query
        .split('&')
        .enumerate()
        .filter(|(_, pair)| pair.contains(';'))
        .flat_map(|(i, pair)| pair.split(';').skip(usize::from(except == Some(i))))
        .filter(|piece| names(key_of(piece), name))
        .map(|piece| piece.split_once('=').map_or("", |(_, v)| v))
        .collect()
}

fn check_query_route(query: &str, id: &str) {
    let pairs = naming_pairs(query, NAME);
    assert_eq!(
        pairs.len(),
        1,
        "id {id:?} from {} naming pairs",
        pairs.len()
    );
    let (index, pair) = pairs[0];
    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
    assert!(
        decode_lossy(k).eq_ignore_ascii_case(NAME),
        "id from a bracketed key {k:?}"
    );
    assert_eq!(decode_strict(v).as_deref(), Some(id), "id is not the value");
    // Even an empty one: a `;` reader that takes the first value reads "".
    assert!(
        semicolon_readings(query, NAME, Some(index)).is_empty(),
        "a `;` piece names {NAME} in {query:?}"
    );
}

/// Path and header rules: a query parameter of the rule's name (the capture's,
/// the header's) is a second source, which must be alone, and agree or be
/// empty, in either reading.
fn check_second_source(query: &str, name: &str, id: &str) {
    let pairs = naming_pairs(query, name);
    assert!(
        pairs.len() <= 1,
        "{name} {} times in the query",
        pairs.len()
    );
    let index = pairs.first().map(|&(i, _)| i);
    if let Some(&(_, pair)) = pairs.first() {
        let v = pair.split_once('=').map_or("", |(_, v)| v);
        let other = decode_strict(v).expect("undecodable second source accepted");
        assert!(
            other.is_empty() || other == id,
            "query names {other:?}, rule found {id:?}"
        );
        assert!(!v.contains(';'), "`;` in the second source {v:?}");
    }
    for v in semicolon_readings(query, name, index) {
        let other = decode_lossy(v);
        assert!(
            other.is_empty() || other == id,
            "a `;` piece names {other:?}, rule found {id:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let (q, name) = match data.iter().position(|&b| b == 0xFF) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let mut expanded = Vec::with_capacity(q.len());
    for &b in q {
        match b {
            0xFE => expanded.extend_from_slice(NAME.as_bytes()),
            0xFD => expanded.extend_from_slice(HEADER.as_bytes()),
            b => expanded.push(b),
        }
    }
    let Ok(query) = std::str::from_utf8(&expanded) else {
        return;
    };
    let cfg = table();
    let get = Method::GET;

    // query: rule
    let none = HeaderMap::new();
    let (route, caps) = cfg.routes.find(&get, "/q");
    assert_eq!(route.index, 1);
    let found = resolve(route, "/q", &caps, Some(query), &none, None);
    if let Ok(Some(id)) = &found {
        assert!(valid_id(id.as_bytes()), "invalid id {id:?}");
        check_query_route(query, id);
    }

    // path: rule, the name as the capture
    if let Ok(name) = std::str::from_utf8(name) {
        let raw = format!("/w/{name}/x");
        if let Ok(path) = normalize(&raw) {
            let (route, caps) = cfg.routes.find(&get, &path);
            if route.index == 0 {
                let found = resolve(route, &path, &caps, Some(query), &none, None);
                if let Ok(Some(id)) = &found {
                    assert!(valid_id(id.as_bytes()), "invalid id {id:?}");
                    check_second_source(query, NAME, id);
                }
            }
        }
    }

    // header: rule, the name as the header's value
    if let Ok(value) = HeaderValue::from_bytes(name) {
        let mut headers = HeaderMap::new();
        headers.insert("x-ws", value);
        let (route, caps) = cfg.routes.find(&get, "/h");
        assert_eq!(route.index, 2);
        let found = resolve(route, "/h", &caps, Some(query), &headers, None);
        if let Ok(Some(id)) = &found {
            assert!(valid_id(id.as_bytes()), "invalid id {id:?}");
            check_second_source(query, HEADER, id);
        }
    }
});
