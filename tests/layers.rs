//! The layer map of docs/layout.md, kept true: every `crate::…` path in
//! src/ names a module of the same layer or a lower one, the decision core
//! names no I/O crate, and no source file grows past the size a reader can
//! hold, in src/, tests/ or benches/ (tests/ and benches/ are outside the
//! layers: they wire anything).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Layer of each top-level module of src/, lowest first.
const LAYERS: &[(&str, u8)] = &[
    ("config", 0),
    ("auth", 1),
    ("request", 1),
    ("store", 2),
    ("ratelimit", 2),
    ("http", 3),
    ("engine", 3),
    ("ops", 4),
    ("server", 4),
    ("sync", 4),
    ("main", 4),
];

/// Crates and paths the pure decision core (auth/, request/) must not name.
const NOT_IN_CORE: &[&str] = &[
    "pingora",
    "rusqlite",
    "tokio",
    "moka",
    "prometheus",
    "std::fs",
    "std::net::TcpStream",
    "crate::store",
    "crate::ratelimit",
];

/// Lines past which a source file must be split along its seams.
const MAX_LINES: usize = 820;

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The file's text without `//` comments (doc links name higher layers on
/// purpose: "the shell applies this").
fn code(text: &str) -> String {
    text.lines()
        .map(|l| {
            // keep `"http://…"` inside strings: only cut at a `//` that
            // starts the line or follows whitespace
            let cut = l
                .match_indices("//")
                .map(|(i, _)| i)
                .find(|&i| i == 0 || l.as_bytes()[i - 1].is_ascii_whitespace());
            cut.map_or(l, |i| &l[..i])
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first segment of every path under `root` (`crate`, or `keyward` in
/// the binary), with `root::{a::x, b}` groups opened.
fn named_modules(code: &str, root: &str) -> Vec<String> {
    let mut out = Vec::new();
    let needle = format!("{root}::");
    let mut rest = code;
    while let Some(i) = rest.find(&needle) {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + needle.len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let end = group
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(group.len(), |(i, _)| i);
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in group[..end].char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(ident_at(group[start..i].trim()).to_string());
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            out.push(ident_at(group[start..end].trim()).to_string());
        } else {
            out.push(ident_at(rest).to_string());
        }
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

/// lib.rs's short paths (`pub use auth::{credentials, …}`): alias → module.
fn aliases() -> BTreeMap<String, String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let mut map = BTreeMap::new();
    for line in lib.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("pub use ") else {
            continue;
        };
        let rest = rest.trim_end_matches(';');
        let (module, names) = rest.split_once("::").expect("pub use module::name");
        let names = names.trim_start_matches('{').trim_end_matches('}');
        for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            map.insert(name.to_string(), module.to_string());
        }
    }
    map
}

fn module_of(path: &Path) -> String {
    let rel = path.strip_prefix(src()).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_str()
        .unwrap();
    first.trim_end_matches(".rs").to_string()
}

#[test]
fn no_module_names_a_higher_layer() {
    let aliases = aliases();
    let mut files = Vec::new();
    sources(&src(), &mut files);
    files.sort();
    let mut upward = Vec::new();
    let mut checked = 0;
    for path in &files {
        let module = module_of(path);
        if module == "lib" {
            continue;
        }
        let own = layer(&module).unwrap_or_else(|| {
            panic!("src/{module} has no layer: add it to LAYERS and docs/layout.md")
        });
        let text = code(&std::fs::read_to_string(path).unwrap());
        let mut named = named_modules(&text, "crate");
        if module == "main" {
            named.extend(named_modules(&text, "keyward"));
        }
        for name in named {
            let target = aliases.get(&name).cloned().unwrap_or(name.clone());
            let Some(theirs) = layer(&target) else {
                continue; // a macro or an item of lib.rs itself
            };
            checked += 1;
            if theirs > own {
                upward.push(format!(
                    "{}: {module} (layer {own}) names {name} → {target} (layer {theirs})",
                    path.strip_prefix(src()).unwrap().display()
                ));
            }
        }
    }
    assert!(checked > 100, "the scan found only {checked} paths");
    assert!(
        upward.is_empty(),
        "imports up the layers:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_decision_core_does_no_io() {
    let mut files = Vec::new();
    sources(&src().join("auth"), &mut files);
    sources(&src().join("request"), &mut files);
    let mut found = Vec::new();
    for path in &files {
        let text = code(&std::fs::read_to_string(path).unwrap());
        for name in NOT_IN_CORE {
            if text.contains(&format!("{name}::")) || text.contains(&format!("use {name};")) {
                found.push(format!("{}: {name}", path.display()));
            }
        }
    }
    assert!(files.len() > 5);
    assert!(found.is_empty(), "I/O in the core:\n{}", found.join("\n"));
}

#[test]
fn no_source_file_is_past_the_split_point() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches"] {
        sources(&root.join(dir), &mut files);
    }
    let long: Vec<String> = files
        .iter()
        .filter_map(|p| {
            let n = std::fs::read_to_string(p).unwrap().lines().count();
            (n > MAX_LINES).then(|| format!("{} ({n} lines)", p.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "split these along their seams:\n{}",
        long.join("\n")
    );
}

#[test]
fn the_scan_sees_groups_and_aliases() {
    let named = named_modules(
        "use crate::{config::Config, store::{a, b}, self};\nlet x = crate::http::metrics::X; keyward::ops::y; xcrate::no",
        "crate",
    );
    assert_eq!(named, ["config", "store", "http"]);
    assert_eq!(aliases().get("metrics").map(String::as_str), Some("http"));
    assert_eq!(
        code("let u = \"http://x\"; // crate::ops"),
        "let u = \"http://x\"; "
    );
}
