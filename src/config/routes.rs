//! Routes (SPEC §5): path normalization, pattern compilation and matching.
//! Pure functions over strings: no I/O, no snapshot, no pingora.

use std::borrow::Cow;

use http::Method;
use serde::Deserialize;

/// Most captures a pattern may have; keeps [`Captures`] on the stack.
pub const MAX_CAPTURES: usize = 8;
/// Most segments a path may have to be matched; longer paths are refused.
pub const MAX_SEGMENTS: usize = 64;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub path: String,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub auth: Option<String>,
    #[serde(default)]
    pub workspace: Option<String>,
    #[serde(default)]
    pub org_wide_only: bool,
    #[serde(default)]
    pub quota: bool,
    #[serde(default)]
    pub org_optional: bool,
    #[serde(default)]
    pub scoped_keys: Option<String>,
    /// SPEC §6.1: requests this route's request uses of each window (≥ 1)
    #[serde(default)]
    pub cost: Option<u64>,
    /// SPEC §6.1: the organization's limit group it counts in
    #[serde(default)]
    pub limit: Option<String>,
    /// SPEC §6.1: "enforce" | "shadow" (default: `rate_limit.mode`)
    #[serde(default)]
    pub limit_mode: Option<String>,
}

/// `rate_limit.mode` and route `limit_mode` (SPEC §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitMode {
    Enforce,
    /// over the limit: counted, forwarded, reported (`shadow_denied`)
    Shadow,
}

impl LimitMode {
    pub fn parse(text: &str) -> Option<LimitMode> {
        match text {
            "enforce" => Some(LimitMode::Enforce),
            "shadow" => Some(LimitMode::Shadow),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Required,
    None,
    Mcp,
}

/// Where a route finds its target workspace (SPEC §5 `workspace`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkspaceSource {
    /// index into the route's captures
    Path(usize),
    Query(String),
    Header(String),
    Body(String),
    /// capture index of a resource id
    ResourcePath(usize),
    ResourceBody(String),
}

impl WorkspaceSource {
    pub fn needs_body(&self) -> bool {
        matches!(self, Self::Body(_) | Self::ResourceBody(_))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Capture,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub index: usize,
    pub path: String,
    segments: Vec<Segment>,
    capture_names: Vec<String>,
    rest: bool,
    methods: Option<Vec<Method>>,
    pub auth: AuthMode,
    pub workspace: Option<WorkspaceSource>,
    pub org_wide_only: bool,
    pub quota: bool,
    pub org_optional: bool,
    /// `scoped_keys = "filter"`
    pub scoped_filter: bool,
    /// capture index of `{server}` on `auth = "mcp"` routes
    pub mcp_server: Option<usize>,
    /// requests one request uses of each window it counts in (SPEC §6.1)
    pub cost: u64,
    /// the limit group (`[plans.NAME.limits.GROUP]`) it counts in
    pub limit_group: Option<std::sync::Arc<str>>,
    /// None: `rate_limit.mode`
    pub limit_mode: Option<LimitMode>,
}

impl Route {
    pub fn capture_index(&self, name: &str) -> Option<usize> {
        self.capture_names.iter().position(|n| n == name)
    }

    /// NAME of a `path:`, `query:` or `header:` workspace rule: a query
    /// parameter of that name is a second source (SPEC §5.1).
    pub fn workspace_name(&self) -> Option<&str> {
        match self.workspace.as_ref()? {
            WorkspaceSource::Path(i) => self.capture_names.get(*i).map(String::as_str),
            WorkspaceSource::Query(n) | WorkspaceSource::Header(n) => Some(n),
            _ => None,
        }
    }

    fn allows(&self, method: &Method) -> bool {
        match &self.methods {
            None => true,
            // A route listing GET also matches HEAD (SPEC §5.1): frameworks
            // run the GET handler for HEAD.
            Some(ms) => {
                ms.contains(method) || (*method == Method::HEAD && ms.contains(&Method::GET))
            }
        }
    }
}

/// The route every unmatched path gets: auth required, no workspace rule.
pub static DEFAULT_ROUTE: std::sync::LazyLock<Route> = std::sync::LazyLock::new(|| Route {
    index: usize::MAX,
    path: "(unmatched)".into(),
    segments: Vec::new(),
    capture_names: Vec::new(),
    rest: true,
    methods: None,
    auth: AuthMode::Required,
    workspace: None,
    org_wide_only: false,
    quota: false,
    org_optional: false,
    scoped_filter: false,
    mcp_server: None,
    cost: 1,
    limit_group: None,
    limit_mode: None,
});

#[derive(Debug)]
pub struct RouteError {
    pub index: usize,
    pub path: String,
    pub message: String,
}

/// Byte spans of captured segments in the normalized path.
#[derive(Debug, Clone, Copy, Default)]
pub struct Captures {
    spans: [(u32, u32); MAX_CAPTURES],
    len: usize,
}

impl Captures {
    pub fn get<'p>(&self, path: &'p str, i: usize) -> Option<&'p str> {
        (i < self.len).then(|| {
            let (a, b) = self.spans[i];
            &path[a as usize..b as usize]
        })
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn len(&self) -> usize {
        self.routes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn compile(raw: Vec<RawRoute>) -> Result<RouteTable, RouteError> {
        let routes = raw
            .into_iter()
            .enumerate()
            .map(|(i, r)| compile_route(i, r))
            .collect::<Result<_, _>>()?;
        Ok(RouteTable { routes })
    }

    /// First route matching a normalized path and method; unmatched paths get
    /// [`DEFAULT_ROUTE`].
    pub fn find(&self, method: &Method, path: &str) -> (&Route, Captures) {
        let mut spans = [(0u32, 0u32); MAX_SEGMENTS];
        let n = split_segments(path, &mut spans);
        for route in &self.routes {
            if !route.allows(method) {
                continue;
            }
            if let Some(c) = match_route(route, path, &spans[..n]) {
                return (route, c);
            }
        }
        (&DEFAULT_ROUTE, Captures::default())
    }
}

/// Split `/a/b/c/` into segment spans, ignoring one trailing slash.
fn split_segments(path: &str, out: &mut [(u32, u32); MAX_SEGMENTS]) -> usize {
    let bytes = path.as_bytes();
    let mut end = bytes.len();
    if end > 1 && bytes[end - 1] == b'/' {
        end -= 1;
    }
    let mut n = 0;
    let mut start = 1usize;
    if end <= 1 {
        return 0;
    }
    for i in 1..=end {
        if bytes.get(i).is_none_or(|&b| b == b'/') || i == end {
            if n == MAX_SEGMENTS {
                // normalize() refuses such paths; never match beyond the cap
                return n;
            }
            out[n] = (start as u32, i as u32);
            n += 1;
            start = i + 1;
        }
    }
    n
}

fn match_route(route: &Route, path: &str, segs: &[(u32, u32)]) -> Option<Captures> {
    let fixed = route.segments.len();
    if segs.len() < fixed || (!route.rest && segs.len() != fixed) {
        return None;
    }
    let mut caps = Captures::default();
    for (seg, &(a, b)) in route.segments.iter().zip(segs) {
        let text = &path[a as usize..b as usize];
        match seg {
            Segment::Literal(lit) => {
                if !lit.eq_ignore_ascii_case(text) {
                    return None;
                }
            }
            Segment::Capture => {
                if text.is_empty() {
                    return None;
                }
                caps.spans[caps.len] = (a, b);
                caps.len += 1;
            }
        }
    }
    Some(caps)
}

fn compile_route(index: usize, r: RawRoute) -> Result<Route, RouteError> {
    let err = |message: String| RouteError {
        index,
        path: r.path.clone(),
        message,
    };
    if !r.path.starts_with('/') {
        return Err(err("path must start with `/`".into()));
    }
    let mut segments = Vec::new();
    let mut capture_names: Vec<String> = Vec::new();
    let mut rest = false;
    let body = r.path.trim_end_matches('/');
    let parts: Vec<&str> = if body.is_empty() {
        Vec::new()
    } else {
        body[1..].split('/').collect()
    };
    for (i, part) in parts.iter().enumerate() {
        if *part == "**" {
            if i + 1 != parts.len() {
                return Err(err("`**` may only be the last segment".into()));
            }
            rest = true;
        } else if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(err(format!("bad capture `{part}`")));
            }
            if capture_names.iter().any(|n| n == name) {
                return Err(err(format!("duplicate capture `{{{name}}}`")));
            }
            if capture_names.len() == MAX_CAPTURES {
                return Err(err(format!("more than {MAX_CAPTURES} captures")));
            }
            capture_names.push(name.to_string());
            segments.push(Segment::Capture);
        } else if part.is_empty() {
            return Err(err("empty segment (`//`)".into()));
        } else if part.contains(['{', '}', '*', '%', '?', '#']) || *part == "." || *part == ".." {
            return Err(err(format!("bad literal segment `{part}`")));
        } else {
            segments.push(Segment::Literal(part.to_string()));
        }
    }
    let methods = r
        .methods
        .as_ref()
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                        .map_err(|_| err(format!("bad method `{m}`")))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let auth = match r.auth.as_deref().unwrap_or("required") {
        "required" => AuthMode::Required,
        "none" => AuthMode::None,
        "mcp" => AuthMode::Mcp,
        other => {
            return Err(err(format!(
                "auth `{other}`: expected \"required\", \"none\" or \"mcp\""
            )))
        }
    };
    let capture = |name: &str| -> Result<usize, RouteError> {
        capture_names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| err(format!("`{{{name}}}` is not captured by the path")))
    };
    let workspace = match &r.workspace {
        None => None,
        Some(spec) => {
            let (kind, name) = spec
                .split_once(':')
                .ok_or_else(|| err(format!("workspace `{spec}`: expected KIND:NAME")))?;
            if name.is_empty() {
                return Err(err(format!("workspace `{spec}`: empty name")));
            }
            Some(match kind {
                "path" => WorkspaceSource::Path(capture(name)?),
                "query" => WorkspaceSource::Query(name.to_string()),
                "header" => WorkspaceSource::Header(name.to_ascii_lowercase()),
                "body" => WorkspaceSource::Body(name.to_string()),
                "resource_path" => WorkspaceSource::ResourcePath(capture(name)?),
                "resource_body" => WorkspaceSource::ResourceBody(name.to_string()),
                other => {
                    return Err(err(format!(
                        "unknown workspace source kind `{other}` (path, query, header, body, resource_path, resource_body)"
                    )))
                }
            })
        }
    };
    let scoped_filter = match r.scoped_keys.as_deref().unwrap_or("deny") {
        "deny" => false,
        "filter" => true,
        other => {
            return Err(err(format!(
                "scoped_keys `{other}`: expected \"deny\" or \"filter\""
            )))
        }
    };
    let mcp_server = if auth == AuthMode::Mcp {
        Some(capture("server")?)
    } else {
        None
    };
    if auth == AuthMode::None && workspace.is_some() {
        return Err(err("a workspace rule needs authentication".into()));
    }
    let cost = match r.cost {
        None => 1,
        Some(0) => return Err(err("cost must be at least 1".into())),
        Some(n) if n > u64::from(u32::MAX) => {
            return Err(err(format!("cost {n} is larger than any window can hold")))
        }
        Some(n) => n,
    };
    let limit_group = match r.limit.as_deref() {
        None => None,
        Some(g) if valid_group(g) => Some(std::sync::Arc::from(g)),
        Some(g) => {
            return Err(err(format!(
                "limit `{g}`: a group name is 1-64 of A-Z a-z 0-9 _ -"
            )))
        }
    };
    let limit_mode = match r.limit_mode.as_deref() {
        None => None,
        Some(m) => Some(LimitMode::parse(m).ok_or_else(|| {
            err(format!(
                "limit_mode `{m}`: expected \"enforce\" or \"shadow\""
            ))
        })?),
    };
    if auth == AuthMode::None && (r.cost.is_some() || limit_group.is_some() || limit_mode.is_some())
    {
        return Err(err(
            "cost, limit and limit_mode need authentication (an `auth = \"none\"` route counts in no window)".into(),
        ));
    }
    Ok(Route {
        index,
        path: r.path.clone(),
        segments: segments
            .into_iter()
            .map(|s| match s {
                Segment::Literal(l) => Segment::Literal(l.to_ascii_lowercase()),
                c => c,
            })
            .collect(),
        capture_names,
        rest,
        methods,
        auth,
        workspace,
        org_wide_only: r.org_wide_only,
        quota: r.quota,
        org_optional: r.org_optional,
        scoped_filter,
        mcp_server,
        cost,
        limit_group,
        limit_mode,
    })
}

/// A limit group's name (`[plans.NAME.limits.GROUP]`, route `limit`).
pub fn valid_group(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Why a path was refused (400 BAD_REQUEST).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotOriginForm,
    BadPercentEncoding,
    EncodedSeparator,
    Nul,
    AboveRoot,
    TooManySegments,
    /// `;` in the path: servlet containers strip `;…` from segments and read
    /// `..;` as `..` (SPEC §5.1)
    Parameter,
}

impl PathError {
    pub fn reason(self) -> &'static str {
        match self {
            PathError::NotOriginForm => "path_not_absolute",
            PathError::BadPercentEncoding => "bad_percent_encoding",
            PathError::EncodedSeparator => "encoded_separator",
            PathError::Nul => "nul_in_path",
            PathError::AboveRoot => "path_above_root",
            PathError::TooManySegments => "too_many_segments",
            PathError::Parameter => "path_parameter",
        }
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalize a request path (SPEC §5): decode percent-encoded unreserved
/// characters, collapse repeated slashes, resolve `.` and `..`. Refuses `..`
/// above the root, encoded `/` or `\`, NUL, raw `\` and malformed escapes.
/// Borrows when the path is already normal (the common case).
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    let mut simple = true;
    let mut segments = 0usize;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' | b'\\' | 0 => simple = false,
            b';' => return Err(PathError::Parameter),
            b'/' => {
                segments += 1;
                let next = &bytes[i + 1..];
                if next.starts_with(b"/")
                    || next == b"."
                    || next == b".."
                    || next.starts_with(b"./")
                    || next.starts_with(b"../")
                {
                    simple = false;
                }
            }
            _ => {}
        }
    }
    if simple {
        // A trailing slash ends the last segment; it does not start one.
        if bytes.len() > 1 && bytes.ends_with(b"/") {
            segments -= 1;
        }
        if segments > MAX_SEGMENTS {
            return Err(PathError::TooManySegments);
        }
        return Ok(Cow::Borrowed(path));
    }

    // 1. decode unreserved escapes; keep the others as they are (uppercased)
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            0 => return Err(PathError::Nul),
            b'\\' => return Err(PathError::EncodedSeparator),
            b'%' => {
                let (h, l) = match (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(h), Some(l)) => (h, l),
                    _ => return Err(PathError::BadPercentEncoding),
                };
                let v = h * 16 + l;
                match v {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0 => return Err(PathError::Nul),
                    v if is_unreserved(v) => decoded.push(v),
                    _ => {
                        decoded.push(b'%');
                        decoded.push(bytes[i + 1].to_ascii_uppercase());
                        decoded.push(bytes[i + 2].to_ascii_uppercase());
                    }
                }
                i += 3;
            }
            _ => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    // 2. + 3. collapse slashes, resolve dot segments
    let trailing = decoded.ends_with(b"/") || decoded.ends_with(b"/.") || decoded.ends_with(b"/..");
    let mut out: Vec<&[u8]> = Vec::new();
    for seg in decoded.split(|&b| b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            s => out.push(s),
        }
    }
    if out.len() > MAX_SEGMENTS {
        return Err(PathError::TooManySegments);
    }
    let mut s = Vec::with_capacity(decoded.len());
    for seg in &out {
        s.push(b'/');
        s.extend_from_slice(seg);
    }
    if s.is_empty() || (trailing && !out.is_empty()) {
        s.push(b'/');
    }
    // Only ASCII bytes were decoded, so the input's UTF-8 validity is kept.
    Ok(Cow::Owned(
        String::from_utf8(s).map_err(|_| PathError::BadPercentEncoding)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(toml_routes: &str) -> RouteTable {
        #[derive(Deserialize)]
        struct T {
            route: Vec<RawRoute>,
        }
        let t: T = toml::from_str(toml_routes).unwrap();
        RouteTable::compile(t.route).unwrap()
    }

    #[test]
    fn a_get_route_also_matches_head() {
        let t = table(
            r#"
            [[route]]
            path = "/w/{id}"
            methods = ["GET"]
            workspace = "path:id"
            "#,
        );
        assert_eq!(t.find(&Method::HEAD, "/w/a").0.index, 0);
        assert_eq!(t.find(&Method::GET, "/w/a").0.index, 0);
        assert_eq!(t.find(&Method::POST, "/w/a").0.index, usize::MAX);
        assert_eq!(t.routes()[0].workspace_name(), Some("id"));
    }

    #[test]
    fn normalization_follows_the_contract() {
        let ok = |p: &str| normalize(p).unwrap().into_owned();
        assert_eq!(ok("/api/v1/x"), "/api/v1/x");
        assert_eq!(ok("//api///v1/x"), "/api/v1/x");
        assert_eq!(ok("/api/./v1/../v1/x"), "/api/v1/x");
        assert_eq!(ok("/api/%2e%2e/api/v1"), "/api/v1");
        assert_eq!(ok("/api/%61pi"), "/api/api");
        assert_eq!(ok("/api/a%20b"), "/api/a%20b");
        assert_eq!(ok("/api/v1/"), "/api/v1/");
        assert_eq!(ok("/api/v1/."), "/api/v1/");
        assert_eq!(ok("/"), "/");
        assert_eq!(ok("/a/.."), "/");
        assert_eq!(normalize("/../etc").unwrap_err(), PathError::AboveRoot);
        assert_eq!(
            normalize("/api/v1/actions;x/execute").unwrap_err(),
            PathError::Parameter
        );
        assert_eq!(
            normalize("/w/ws_a/..;/ws_b/x").unwrap_err(),
            PathError::Parameter
        );
        assert_eq!(
            normalize("/api/%2e%2e;/x").unwrap_err(),
            PathError::Parameter
        );
        assert_eq!(ok("/api/a%3Bb"), "/api/a%3Bb");
        assert_eq!(
            normalize("/a/%2e%2e/%2e%2e/b").unwrap_err(),
            PathError::AboveRoot
        );
        assert_eq!(
            normalize("/a%2Fb").unwrap_err(),
            PathError::EncodedSeparator
        );
        assert_eq!(
            normalize("/a%5cb").unwrap_err(),
            PathError::EncodedSeparator
        );
        assert_eq!(normalize("/a\\b").unwrap_err(), PathError::EncodedSeparator);
        assert_eq!(normalize("/a%00").unwrap_err(), PathError::Nul);
        assert_eq!(
            normalize("/a%zz").unwrap_err(),
            PathError::BadPercentEncoding
        );
        assert_eq!(normalize("a/b").unwrap_err(), PathError::NotOriginForm);
    }

    #[test]
    fn patterns_match_literals_captures_and_rest() {
        let t = table(
            r#"
            [[route]]
            path = "/api/v1/workspaces/{workspaceId}/**"
            workspace = "path:workspaceId"
            [[route]]
            path = "/api/v1/api-keys/**"
            org_wide_only = true
            [[route]]
            path = "/api/v1/connections"
            methods = ["POST"]
            workspace = "body:workspaceId"
            "#,
        );
        let p = "/API/v1/workspaces/ws_1/things";
        let (r, c) = t.find(&Method::GET, p);
        assert_eq!(r.index, 0);
        assert_eq!(c.get(p, 0), Some("ws_1"));
        assert_eq!(t.find(&Method::GET, "/api/v1/workspaces/ws_1").0.index, 0);
        assert_eq!(
            t.find(&Method::GET, "/api/v1/workspaces").0.index,
            usize::MAX
        );
        assert_eq!(t.find(&Method::GET, "/api/v1/api-keys").0.index, 1);
        assert_eq!(t.find(&Method::GET, "/api/v1/api-keys/").0.index, 1);
        assert_eq!(t.find(&Method::POST, "/api/v1/connections/").0.index, 2);
        assert_eq!(
            t.find(&Method::GET, "/api/v1/connections").0.index,
            usize::MAX
        );
    }

    #[test]
    fn bad_routes_are_named_by_index_and_path() {
        let bad = |r: &str| {
            #[derive(Deserialize)]
            struct T {
                route: Vec<RawRoute>,
            }
            let t: T = toml::from_str(r).unwrap();
            RouteTable::compile(t.route).unwrap_err()
        };
        let e = bad("[[route]]\npath = \"/a\"\n[[route]]\npath=\"/b/{x}\"\nworkspace = \"nope:x\"");
        assert_eq!(e.index, 1);
        assert_eq!(e.path, "/b/{x}");
        assert!(e.message.contains("nope"));
        assert!(bad("[[route]]\npath = \"/a/{x}\"\nworkspace = \"path:y\"")
            .message
            .contains("{y}"));
        assert!(bad("[[route]]\npath = \"/a/{x}/{x}\"")
            .message
            .contains("duplicate"));
        assert!(bad("[[route]]\npath = \"/a/**/b\"")
            .message
            .contains("last"));
        assert!(bad("[[route]]\npath = \"/mcp/{id}/**\"\nauth = \"mcp\"")
            .message
            .contains("server"));
    }

    #[test]
    fn segment_cap_is_the_same_for_clean_and_dirty_paths() {
        // Found by fuzz/route_match: the normalized form must normalize again.
        let dirty = format!("{}//", "/a".repeat(MAX_SEGMENTS));
        let norm = normalize(&dirty).unwrap().into_owned();
        assert_eq!(norm, format!("{}/", "/a".repeat(MAX_SEGMENTS)));
        assert_eq!(normalize(&norm).unwrap(), norm);
        assert!(normalize(&"/a".repeat(MAX_SEGMENTS + 1)).is_err());
    }
}
