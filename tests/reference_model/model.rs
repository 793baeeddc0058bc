//! The model: SPEC's text as a slow, obvious decision (see main.rs).

use super::*;

/// What the model remembers between requests of one case: requests
/// admitted per organization in the (single) window, and failed
/// authentications of the one client IP.
#[derive(Default, Debug)]
pub struct State {
    pub admitted: HashMap<String, u64>,
    pub failures: u64,
}

fn refuse(status: u16, code: &'static str, reason: Option<&str>) -> Answer {
    Answer::Refuse(status, code, reason.map(str::to_string))
}
fn unauthenticated(reason: &str) -> Answer {
    refuse(401, "UNAUTHENTICATED", Some(reason))
}
fn forbidden(reason: &str) -> Answer {
    refuse(403, "FORBIDDEN", Some(reason))
}
fn scope_denied(reason: &str) -> Answer {
    refuse(403, "SCOPE_DENIED", Some(reason))
}
fn bad_request(reason: &str) -> Answer {
    refuse(400, "BAD_REQUEST", Some(reason))
}

// -------------------------------------------------------- routes (§5)

/// The path's segments, one trailing slash ignored.
fn segments(path: &str) -> Vec<&str> {
    let p = if path.len() > 1 && path.ends_with('/') {
        &path[..path.len() - 1]
    } else {
        path
    };
    if p == "/" {
        return Vec::new();
    }
    p[1..].split('/').collect()
}

/// Captures when `pattern` matches: literals ASCII case-insensitively,
/// `{name}` one segment, a final `**` zero or more further segments.
fn matches(pattern: &str, path: &str) -> Option<Vec<(String, String)>> {
    let mut pat: Vec<&str> = pattern[1..].split('/').collect();
    let rest = pat.last() == Some(&"**");
    if rest {
        pat.pop();
    }
    let segs = segments(path);
    if segs.len() < pat.len() || (!rest && segs.len() != pat.len()) {
        return None;
    }
    let mut caps = Vec::new();
    for (p, s) in pat.iter().zip(&segs) {
        if p.starts_with('{') && p.ends_with('}') {
            if s.is_empty() {
                return None;
            }
            caps.push((p[1..p.len() - 1].to_string(), s.to_string()));
        } else if !p.eq_ignore_ascii_case(s) {
            return None;
        }
    }
    Some(caps)
}

fn method_allowed(route: &RouteSpec, method: &str) -> bool {
    match &route.methods {
        None => true,
        // §5.1: a route listing GET also matches HEAD
        Some(ms) => ms.contains(&method) || (method == "HEAD" && ms.contains(&"GET")),
    }
}

// -------------------------------------------------------- ids (§5.1)

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Form decoding of a query key or value: `+` is a space, then %XX.
fn form_decode(s: &str) -> Vec<u8> {
    percent_decode(&s.replace('+', " "))
}

/// §5.1 Ids: empty finds nothing; else 1–256 bytes of visible ASCII.
fn id(bytes: Vec<u8>) -> Result<Option<String>, Answer> {
    if bytes.is_empty() {
        return Ok(None);
    }
    if bytes.len() > 256 || !bytes.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(bad_request("malformed_id"));
    }
    Ok(Some(String::from_utf8(bytes).unwrap()))
}

// -------------------------------------------------------- credentials (§3)

enum Cred {
    None,
    Invalid(&'static str),
    ApiKey(String),
    /// (token, sent with the `mcpo_` prefix)
    Mcp(String, bool),
    Service(String),
    Session(String),
}

fn bearer(value: &str) -> Cred {
    // one header holding `Bearer <token>`: scheme case-insensitive,
    // one or more spaces
    let Some(space) = value.find(' ') else {
        return Cred::Invalid("malformed_authorization");
    };
    let (scheme, rest) = (&value[..space], &value[space..]);
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Cred::Invalid("unsupported_scheme");
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty() {
        return Cred::Invalid("missing_token");
    }
    if !token.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Cred::Invalid("malformed_token");
    }
    if token.starts_with("wvz_") {
        Cred::ApiKey(token.to_string())
    } else if token.starts_with("mcpo_") {
        Cred::Mcp(token.to_string(), true)
    } else if token.starts_with("mcp_") {
        Cred::Mcp(token.to_string(), false)
    } else {
        Cred::Invalid("unknown_token_type")
    }
}

fn hmac_sha256_base64(key: &[u8], msg: &[u8]) -> String {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(msg);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// §3: the first credential present decides.
fn credential(r: &Req, s: &Settings) -> Cred {
    let auth = r.values("authorization");
    if !auth.is_empty() {
        if auth.len() > 1 {
            return Cred::Invalid("multiple_authorization_headers");
        }
        return bearer(auth[0]);
    }
    let sk = r.values("x-service-key");
    if !sk.is_empty() {
        if sk.len() > 1 {
            return Cred::Invalid("multiple_service_keys");
        }
        return Cred::Service(sk[0].to_string());
    }
    // §5.1 Cookies: pairs split on `;`, spaces and tabs trimmed; the
    // session cookie under two names or twice with different values: 401
    let mut values: Vec<String> = Vec::new();
    for header in r.values("cookie") {
        for pair in header.split(';') {
            let pair = pair.trim_matches([' ', '\t']);
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            if COOKIE_NAMES.contains(&name.trim_matches([' ', '\t'])) {
                values.push(value.trim_matches([' ', '\t']).to_string());
            }
        }
    }
    let Some(first) = values.first() else {
        return Cred::None;
    };
    if values.iter().any(|v| v != first) {
        return Cred::Invalid("ambiguous_session_cookie");
    }
    if !s.secret {
        return Cred::Invalid("sessions_disabled");
    }
    // §3.3: URL-decoded TOKEN.SIGNATURE, split at the last `.`
    let decoded = String::from_utf8_lossy(&percent_decode(first)).into_owned();
    let Some((token, sig)) = decoded.rsplit_once('.') else {
        return Cred::Invalid("bad_session_signature");
    };
    if token.is_empty() || hmac_sha256_base64(SECRET.as_bytes(), token.as_bytes()) != sig {
        return Cred::Invalid("bad_session_signature");
    }
    Cred::Session(token.to_string())
}

// -------------------------------------------------------- callers

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Method {
    ApiKey,
    Session,
    ServiceKey,
    McpBearer,
    McpOAuth,
}

enum Perms {
    OrgWide,
    Workspaces(Vec<String>),
    Malformed,
}

/// §2 `api_keys.permissions`.
fn permissions(p: Option<&str>) -> Perms {
    let Some(text) = p else {
        return Perms::OrgWide;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        return Perms::Malformed;
    };
    // a member given twice has two readings: fail closed
    let Ok(Some(members)) = members(text.as_bytes()) else {
        return Perms::Malformed;
    };
    if (1..members.len()).any(|i| members[..i].iter().any(|(k, _)| *k == members[i].0)) {
        return Perms::Malformed;
    }
    // the two fields SPEC names must have their shapes (a string; a list
    // of strings, or null) whatever the scope: `{"scope":"org",
    // "workspaceIds":"all"}` is not the contract's JSON (the Weavz API
    // would not parse it either), so it is malformed like an unknown
    // scope; unknown fields are ignored
    let ids: Option<Vec<String>> = match v.get("workspaceIds") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Array(l)) => {
            match l.iter().map(|i| i.as_str().map(String::from)).collect() {
                Some(ids) => Some(ids),
                None => return Perms::Malformed,
            }
        }
        Some(_) => return Perms::Malformed,
    };
    match v.get("scope").and_then(|s| s.as_str()) {
        Some("org") => Perms::OrgWide,
        Some("workspace") => {
            match ids {
                // §5.1 Empty scopes are malformed
                Some(ids) if !ids.is_empty() => Perms::Workspaces(ids),
                _ => Perms::Malformed,
            }
        }
        _ => Perms::Malformed,
    }
}

struct Caller {
    method: Method,
    org: Option<Org>,
    scope: Option<Vec<String>>,
    identity: BTreeMap<&'static str, String>,
}

fn org<'w>(w: &'w World, id: &str) -> Option<&'w Org> {
    w.orgs.iter().find(|o| o.id == id)
}

/// "a valid key of a disabled or missing organization: 403 FORBIDDEN";
/// §2: a disabled organization's every credential is 403.
fn usable_org(w: &World, id: &str) -> Result<Org, Answer> {
    match org(w, id) {
        None => Err(forbidden("organization_missing")),
        Some(o) if o.disabled => Err(forbidden("organization_disabled")),
        Some(o) => Ok(o.clone()),
    }
}

fn base_identity(method: Method, org: Option<&Org>) -> BTreeMap<&'static str, String> {
    let mut id = BTreeMap::new();
    id.insert(
        "X-Auth-Method",
        match method {
            Method::ApiKey => "api_key",
            Method::Session => "session",
            Method::ServiceKey => "service_key",
            Method::McpBearer => "mcp_bearer",
            Method::McpOAuth => "mcp_oauth",
        }
        .to_string(),
    );
    if let Some(o) = org {
        id.insert("X-Org-ID", o.id.to_string());
    }
    id
}

fn api_key(w: &World, token: &str) -> Result<Caller, Answer> {
    let Some(k) = w.api_keys.iter().find(|k| k.token == token) else {
        return Err(unauthenticated("unknown"));
    };
    // SPEC leaves open which reason a key both revoked and expired gets
    if k.revoked {
        return Err(unauthenticated("revoked"));
    }
    if k.expires_at.is_some_and(|t| t <= NOW) {
        return Err(unauthenticated("expired"));
    }
    // SPEC leaves open whether a disabled organization or malformed
    // permissions is named first (both 403 FORBIDDEN)
    let o = usable_org(w, k.org)?;
    let scope = match permissions(k.permissions.as_deref()) {
        Perms::Malformed => return Err(forbidden("malformed_permissions")),
        Perms::OrgWide => None,
        Perms::Workspaces(ids) => Some(ids),
    };
    let mut identity = base_identity(Method::ApiKey, Some(&o));
    identity.insert("X-Api-Key-ID", k.id.clone());
    if let Some(ids) = &scope {
        identity.insert("X-Allowed-Workspaces", ids.join(","));
    }
    Ok(Caller {
        method: Method::ApiKey,
        org: Some(o),
        scope,
        identity,
    })
}

fn session(
    w: &World,
    s: &Settings,
    r: &Req,
    route: &RouteSpec,
    token: &str,
) -> Result<Caller, Answer> {
    let Some(row) = w.sessions.iter().find(|x| x.token == token) else {
        return Err(unauthenticated("unknown"));
    };
    if row.expires_at <= NOW {
        return Err(unauthenticated("expired"));
    }
    let o = match row.active_org {
        None if route.org_optional => None,
        None => return Err(forbidden("no_active_organization")),
        Some(id) => Some(usable_org(w, id)?),
    };
    // §3.3: unsafe methods with a cookie need a trusted Origin when the
    // list is set
    let unsafe_method = matches!(r.method, "POST" | "PUT" | "PATCH" | "DELETE");
    if unsafe_method && s.trusted_origin && r.values("origin") != [GOOD_ORIGIN] {
        return Err(forbidden("origin_not_trusted"));
    }
    let mut identity = base_identity(Method::Session, o.as_ref());
    identity.insert("X-User-ID", row.user_id.clone());
    Ok(Caller {
        method: Method::Session,
        org: o,
        scope: None,
        identity,
    })
}

fn service_key(w: &World, r: &Req, key: &str) -> Result<Caller, Answer> {
    let Some(row) = w.service_keys.iter().find(|x| x.token == key) else {
        return Err(unauthenticated("unknown"));
    };
    if row.revoked {
        return Err(unauthenticated("revoked"));
    }
    let org_ids = r.values("x-org-id");
    let o = match org_ids.as_slice() {
        [] => None,
        [id] => match org(w, id) {
            None => return Err(forbidden("unknown_organization")),
            Some(o) if o.disabled => return Err(forbidden("organization_disabled")),
            Some(o) => Some(o.clone()),
        },
        // two readings of the organization (§5.1's spirit; SPEC names no status)
        _ => return Err(forbidden("ambiguous_organization")),
    };
    Ok(Caller {
        method: Method::ServiceKey,
        identity: base_identity(Method::ServiceKey, o.as_ref()),
        org: o,
        scope: None,
    })
}

fn mcp_token(
    w: &World,
    token: &str,
    oauth_prefix: bool,
    path_server: Option<&str>,
) -> Result<Caller, Answer> {
    let Some(t) = w.mcp_tokens.iter().find(|x| x.token == token) else {
        return Err(unauthenticated("unknown"));
    };
    // SPEC names these 401s but not their order
    if t.revoked {
        return Err(unauthenticated("revoked"));
    }
    // `mcpo_` ⇔ `oauth`
    if oauth_prefix != (t.kind == "oauth") {
        return Err(unauthenticated("token_kind_mismatch"));
    }
    if t.expires_at.is_some_and(|e| e <= NOW) {
        return Err(unauthenticated("expired"));
    }
    let Some(server) = w.servers.iter().find(|s| s.id == t.server) else {
        return Err(unauthenticated("unknown_server"));
    };
    let bearer = matches!(server.auth_mode, "bearer" | "oauth_and_bearer");
    let oauth = matches!(server.auth_mode, "oauth" | "oauth_and_bearer");
    let allowed = match t.kind {
        "static" | "end_user" => bearer,
        _ => oauth,
    };
    if !allowed {
        return Err(unauthenticated("auth_mode_not_allowed"));
    }
    if path_server != Some(t.server) {
        return Err(forbidden("wrong_mcp_server"));
    }
    let o = usable_org(w, server.org)?;
    let method = if t.kind == "oauth" {
        Method::McpOAuth
    } else {
        Method::McpBearer
    };
    let mut identity = base_identity(method, Some(&o));
    identity.insert("X-MCP-Server-ID", t.server.to_string());
    identity.insert("X-Workspace-ID", server.workspace.to_string());
    if let Some(eu) = t.end_user {
        identity.insert("X-End-User-ID", eu.to_string());
    }
    Ok(Caller {
        method,
        org: Some(o),
        scope: None,
        identity,
    })
}

// -------------------------------------------------------- workspace sources

/// Occurrences of NAME in the query: (plain or bracketed, raw value).
fn query_names<'q>(query: &'q str, name: &str, any_case: bool) -> Vec<(bool, &'q str)> {
    let mut out = Vec::new();
    if query.is_empty() {
        return out;
    }
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = String::from_utf8_lossy(&form_decode(k)).into_owned();
        let (base, bracketed) = match key.find('[') {
            Some(i) => (&key[..i], true),
            None => (&key[..], false),
        };
        let same = if any_case {
            base.eq_ignore_ascii_case(name)
        } else {
            base == name
        };
        if same {
            out.push((bracketed, v));
        }
    }
    out
}

/// The top-level members of a JSON object, in order, duplicates kept.
fn members(body: &[u8]) -> Result<Option<Vec<(String, serde_json::Value)>>, ()> {
    use serde::de::{Deserializer, MapAccess, Visitor};
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<Vec<(String, serde_json::Value)>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((k, v)) = m.next_entry::<String, serde_json::Value>()? {
                out.push((k, v));
            }
            Ok(Some(out))
        }
    }
    // not JSON at all: Err; JSON but not an object: no members
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| ())?;
    if !value.is_object() {
        return Ok(None);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    de.deserialize_map(V).map_err(|_| ())
}

/// §5: a rule's raw id (workspace or resource), or nothing.
fn find(src: &Source, r: &Req, caps: &[(String, String)]) -> Result<Option<String>, Answer> {
    let query = r.query.as_deref().unwrap_or("");
    let capture = |n: &str| caps.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    match src {
        Source::Path(n) | Source::ResourcePath(n) => match capture(n) {
            Some(seg) => id(percent_decode(&seg)),
            None => Ok(None),
        },
        Source::Query(n) => {
            let found = query_names(query, n, false);
            // a repeated parameter is ambiguous; docs/security.md: a bracketed
            // `NAME[]` alone is too (Express reads an array)
            match found.as_slice() {
                [] => Ok(None),
                [(false, v)] => id(form_decode(v)),
                _ => Err(bad_request("ambiguous_workspace")),
            }
        }
        Source::Header(n) => {
            let vals = r.values(n);
            match vals.as_slice() {
                [] => Ok(None),
                [v] if v.trim().is_empty() => Ok(None),
                // a list is the header repeated
                [v] if v.contains(',') => Err(bad_request("ambiguous_workspace")),
                [v] => id(v.trim().as_bytes().to_vec()),
                _ => Err(bad_request("ambiguous_workspace")),
            }
        }
        Source::Body(field) | Source::ResourceBody(field) => {
            let body = r.body.as_bytes();
            if body.iter().all(u8::is_ascii_whitespace) {
                return Ok(None);
            }
            let Ok(members) = members(body) else {
                return Err(bad_request("body_not_json"));
            };
            let hits: Vec<&serde_json::Value> = members
                .iter()
                .flatten()
                .filter(|(k, _)| k == field)
                .map(|(_, v)| v)
                .collect();
            match hits.as_slice() {
                [] => Ok(None),
                [serde_json::Value::String(s)] => id(s.as_bytes().to_vec()),
                [_] => Err(bad_request("workspace_not_a_string")),
                _ => Err(bad_request("ambiguous_workspace")),
            }
        }
    }
}

/// §5.1 One workspace per request: beside a `path:` or `header:` rule
/// named NAME, a query parameter NAME (plain or bracketed) naming
/// another workspace conflicts; two of them are ambiguous.
fn second_source(src: &Source, r: &Req, found: Option<&str>) -> Result<(), Answer> {
    let (name, any_case) = match src {
        Source::Path(n) => (*n, false),
        Source::Header(n) => (*n, true),
        _ => return Ok(()),
    };
    let q = r.query.as_deref().unwrap_or("");
    match query_names(q, name, any_case).as_slice() {
        [] => Ok(()),
        [(_, v)] => {
            let other = form_decode(v);
            if !other.is_empty() && found.map(str::as_bytes) != Some(&other[..]) {
                Err(bad_request("conflicting_workspace"))
            } else {
                Ok(())
            }
        }
        _ => Err(bad_request("ambiguous_workspace")),
    }
}

/// §5.1 Inspected bodies, judged from the head: 415 before 413.
fn body_readable(r: &Req) -> Result<(), Answer> {
    if r.body.is_empty() {
        return Ok(());
    }
    // SPEC names both reasons but no order between them
    if r.values("content-encoding")
        .iter()
        .any(|e| !e.eq_ignore_ascii_case("identity"))
    {
        return Err(refuse(415, "UNSUPPORTED_MEDIA_TYPE", Some("encoded_body")));
    }
    let json = match r.values("content-type").as_slice() {
        [ct] => {
            let media = ct.split(';').next().unwrap().trim().to_ascii_lowercase();
            media == "application/json"
                || (media.starts_with("application/")
                    && media.ends_with("+json")
                    && media.len() > "application/+json".len())
        }
        _ => false,
    };
    if !json {
        return Err(refuse(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            Some("unsupported_media_type"),
        ));
    }
    if r.body.len() > BODY_CAP {
        return Err(refuse(413, "PAYLOAD_TOO_LARGE", None));
    }
    Ok(())
}

// -------------------------------------------------------- limits (§6)

fn limit(s: &Settings, c: &Caller) -> Option<u64> {
    let o = c.org.as_ref()?;
    if c.method == Method::ServiceKey && !s.service_keys_limited {
        return None;
    }
    let plan = |name: &str| s.plans.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    o.rate_limit
        .or_else(|| plan(o.plan))
        .or_else(|| plan("default"))
}

// -------------------------------------------------------- the decision

/// Where 415 (an inspected body that is not JSON as sent) and 413 (one
/// past the cap) come relative to `org_wide_only` and `quota`. SPEC
/// §5.1 orders 415 (judged from the head) before 413 but names no order
/// against the route rules; read as "route rules, then the workspace
/// source" (which the 400s of a body keyward did read follow) it is
/// `false`, and `decide` now does the same (this model found it asking
/// for the body first). `true` is the old order.
const BODY_HEAD_CHECKS_BEFORE_ROUTE_RULES: bool = false;

pub fn decide(w: &World, s: &Settings, r: &Req, st: &mut State) -> Answer {
    // §5: first matching route in file order, on path and method
    let unmatched = RouteSpec::unmatched();
    let (route, caps) = s
        .routes
        .iter()
        .filter(|rt| method_allowed(rt, r.method))
        .find_map(|rt| matches(rt.pattern, &r.path).map(|c| (rt, c)))
        .unwrap_or((&unmatched, Vec::new()));
    if route.auth == AuthMode::None {
        return Answer::Forward(BTreeMap::new());
    }
    // §1: no snapshot yet
    if w.unloaded {
        return refuse(503, "AUTH_UNAVAILABLE", None);
    }
    let mcp_route = route.auth == AuthMode::Mcp;
    let mut path_server = None;
    if mcp_route {
        // §3.1: Origin before any token lookup
        let origins = r.values("origin");
        if !(origins.is_empty() || s.mcp_allowed_origin && origins == [GOOD_ORIGIN]) {
            return forbidden("origin_not_allowed");
        }
        // §5.1: the server id is an id
        let seg = caps.iter().find(|(k, _)| k == "server").unwrap();
        match id(percent_decode(&seg.1)) {
            Ok(v) => path_server = v,
            Err(e) => return e,
        }
    }
    let cred = credential(r, s);
    let presented = !matches!(cred, Cred::None);
    // §6: past the per-IP limit, a presented credential (not in the
    // positive cache: there is none here) gets 429 without a lookup
    if presented && s.auth_failures_per_ip > 0 && st.failures >= s.auth_failures_per_ip {
        return refuse(429, "RATE_LIMIT_EXCEEDED", None);
    }
    let caller = match cred {
        Cred::None => Err(unauthenticated("missing_credential")),
        Cred::Invalid(reason) => Err(unauthenticated(reason)),
        // §3.1: on MCP routes every other credential is 401, and MCP
        // tokens elsewhere are 401
        Cred::ApiKey(_) if mcp_route => Err(unauthenticated("api_key_on_mcp_route")),
        Cred::Service(_) if mcp_route => Err(unauthenticated("service_key_on_mcp_route")),
        Cred::Session(_) if mcp_route => Err(unauthenticated("session_on_mcp_route")),
        Cred::Mcp(..) if !mcp_route => Err(unauthenticated("mcp_token_outside_mcp_route")),
        Cred::ApiKey(t) => api_key(w, &t),
        Cred::Session(t) => session(w, s, r, route, &t),
        Cred::Service(k) => service_key(w, r, &k),
        Cred::Mcp(t, oauth) => mcp_token(w, &t, oauth, path_server.as_deref()),
    };
    let caller = match caller {
        Ok(c) => c,
        Err(a) => {
            if presented && matches!(a, Answer::Refuse(401, ..)) {
                st.failures += 1;
            }
            return a;
        }
    };
    let mut identity = caller.identity.clone();
    let scoped = caller.scope.is_some();
    // service keys are admin level; MCP tokens act in their server's workspace
    let judged = matches!(caller.method, Method::ApiKey | Method::Session);
    let inspects_body = judged
        && matches!(
            route.workspace,
            Some(Source::Body(_) | Source::ResourceBody(_))
        );
    if inspects_body && BODY_HEAD_CHECKS_BEFORE_ROUTE_RULES {
        if let Err(a) = body_readable(r) {
            return a;
        }
    }
    // route rules: org_wide_only, then quota, then the workspace
    if route.org_wide_only && scoped {
        return forbidden("org_wide_only");
    }
    if route.quota && caller.org.as_ref().is_some_and(|o| o.quota_exceeded) {
        return refuse(403, "QUOTA_EXCEEDED", None);
    }
    if inspects_body && !BODY_HEAD_CHECKS_BEFORE_ROUTE_RULES {
        if let Err(a) = body_readable(r) {
            return a;
        }
    }
    if judged {
        let found = match &route.workspace {
            None => None,
            Some(src) => {
                let found = match find(src, r, &caps) {
                    Ok(f) => f,
                    Err(a) => return a,
                };
                if let Err(a) = second_source(src, r, found.as_deref()) {
                    return a;
                }
                found
            }
        };
        let resource_rule = matches!(
            route.workspace,
            Some(Source::ResourcePath(_) | Source::ResourceBody(_))
        );
        let workspace = match found {
            Some(rid) if resource_rule => {
                match w.resources.iter().find(|(id, _)| *id == rid) {
                    Some((_, ws)) => Some(ws.to_string()),
                    // a resource id not in the snapshot: scoped keys
                    // 403, others pass
                    None if scoped => return scope_denied("unknown_resource"),
                    None => None,
                }
            }
            other => other,
        };
        match workspace {
            None => {
                // a scoped key with no workspace resolved: 403 unless
                // the route filters (and not for an unknown resource,
                // which passed above only for unscoped callers)
                if scoped && !route.scoped_filter {
                    return scope_denied("no_workspace_resolved");
                }
            }
            Some(ws) => {
                let owner = w
                    .workspaces
                    .iter()
                    .find(|(id, _)| *id == ws)
                    .map(|(_, o)| *o);
                let caller_org = caller.org.as_ref().map(|o| o.id);
                match owner {
                    Some(o) if Some(o) != caller_org => {
                        return scope_denied("workspace_of_another_organization")
                    }
                    Some(_) => {}
                    None if !s.unknown_pass => return scope_denied("unknown_workspace"),
                    None => {}
                }
                if let Some(ids) = &caller.scope {
                    if !ids.contains(&ws) {
                        return scope_denied("workspace_not_in_scope");
                    }
                }
                identity.insert("X-Workspace-ID", ws);
            }
        }
    }
    // §6: counted last, only when admitted
    if let (Some(n), Some(o)) = (limit(s, &caller), caller.org.as_ref()) {
        let used = st.admitted.entry(o.id.to_string()).or_default();
        if *used >= n {
            return refuse(429, "RATE_LIMIT_EXCEEDED", None);
        }
        *used += 1;
    }
    Answer::Forward(identity)
}
