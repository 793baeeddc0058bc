//! Reference model (issue 15, item 7): a deliberately slow, obvious
//! implementation of SPEC §3 (credentials), §5/§5.1 (routes, workspaces,
//! scopes, one reading of a request) and §6 (per-organization limits, the
//! per-IP failed-authentication throttle), written from SPEC's text, and
//! proptests that require `keyward::auth::decide` and the model to give the
//! same answer (status, code, `details.reason`) and the same identity
//! headers (SPEC §4) for random snapshots, configs, route tables and request
//! sequences.
//!
//! The model reads plain structs (no SQLite, no cache, no hashing: tokens
//! are looked up by linear scan) and never calls into `keyward` except to
//! build the real side of the comparison (and to sign test cookies; the
//! model verifies them itself). Where SPEC names no `details.reason`, the
//! model uses docs/credentials-and-routes.md "Errors" and docs/security.md
//! ("What keyward refuses, and why") and,
//! where docs/ has none either (`api_key_on_mcp_route`,
//! `organization_missing`, `token_kind_mismatch`, …), the string `decide`
//! uses: those names are vocabulary, not behaviour. Where SPEC leaves the
//! order of two reasons of one status open, the comment at that step says
//! so, and the model takes `decide`'s order.
//!
//! Left out on purpose (covered elsewhere or not a decision of the core):
//! path normalization and the shell's hygiene checks (the paths generated
//! are already normalized, without `;`, dots or method overrides), methods
//! in another letter case, query parameter names in another letter case,
//! `;` inside query pairs, underscore spellings of a `header:` rule's name,
//! two `Origin` headers, `WWW-Authenticate` challenges, `X-RateLimit-*`
//! values and `Retry-After`, the verdict cache ("credentials already known
//! valid keep working" under the per-IP throttle needs the positive cache;
//! the in-memory directory has none).
//!
//! `PROPTEST_CASES` overrides the case count (default 512, a few seconds);
//! `cargo test --test reference_model coverage_report -- --ignored
//! --nocapture` prints how often each answer comes up.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use proptest::prelude::*;
use proptest::sample::select;

use keyward::auth::decide::{
    decide, decide_body, Body, Decision, Env, Identity, Policy, RequestFacts,
};
use keyward::config::{Config, Secret};
use keyward::forwarding::Client;
use keyward::ratelimit::{AuthFailureThrottle, LocalLimiter};
use keyward::snapshot::{ApiKeyRecord, McpTokenRecord, OrgRecord, ServiceKeyRecord, SessionRecord};
use keyward::store::memory::MemoryDirectory;

/// Every request of a case is judged at this instant (one rate-limit window).
const NOW: i64 = 1_700_000_010;
const SECRET: &str = "kw-reference-model-secret-0123456789";
const OTHER_SECRET: &str = "not-the-configured-secret";
const BODY_CAP: usize = 64;
const GOOD_ORIGIN: &str = "https://app.example";
const EVIL_ORIGIN: &str = "https://evil.example";
const WS_HEADER: &str = "X-Target-Workspace";
const COOKIE_NAMES: [&str; 2] = [
    "__Secure-better-auth.session_token",
    "better-auth.session_token",
];

// ------------------------------------------------------------ the world

const ORGS: [&str; 3] = ["org_a", "org_b", "org_c"];
/// Organization ids rows may name: `org_x` is never in the snapshot.
const ORG_REFS: [&str; 4] = ["org_a", "org_b", "org_c", "org_x"];
const WORKSPACES: [&str; 4] = ["ws_1", "ws_2", "ws_3", "ws_4"];
/// `ws_9` is never in the snapshot.
const WS_REFS: [&str; 5] = ["ws_1", "ws_2", "ws_3", "ws_4", "ws_9"];

/// An organization a row names: mostly `org_a`, sometimes one never loaded.
fn org_ref() -> impl Strategy<Value = &'static str> {
    prop_oneof![8 => Just("org_a"), 2 => Just("org_b"), 1 => Just("org_c"), 1 => Just("org_x")]
}
const RESOURCES: [&str; 3] = ["res_1", "res_2", "res_3"];
const SERVERS: [&str; 2] = ["srv_1", "srv_2"];
/// `srv_9` is never in the snapshot.
const SERVER_REFS: [&str; 3] = ["srv_1", "srv_2", "srv_9"];
const API_TOKENS: [&str; 4] = ["wvz_key0", "wvz_key1", "wvz_key2", "wvz_key3"];
const SESSION_TOKENS: [&str; 3] = ["sess0tok", "sess1tok", "sess2tok"];
const SERVICE_TOKENS: [&str; 2] = ["svc_key0", "svc_key1"];
const MCP_TOKENS: [&str; 4] = ["mcp_tok0", "mcp_tok1", "mcpo_tok2", "mcpo_tok3"];

#[derive(Debug, Clone)]
struct Org {
    id: &'static str,
    plan: &'static str,
    rate_limit: Option<u64>,
    quota_exceeded: bool,
    disabled: bool,
}

#[derive(Debug, Clone)]
struct ApiKeyRow {
    token: &'static str,
    id: String,
    org: &'static str,
    permissions: Option<String>,
    expires_at: Option<i64>,
    revoked: bool,
}

#[derive(Debug, Clone)]
struct SessionRow {
    token: &'static str,
    id: String,
    user_id: String,
    active_org: Option<&'static str>,
    expires_at: i64,
}

#[derive(Debug, Clone)]
struct ServiceKeyRow {
    token: &'static str,
    id: String,
    revoked: bool,
}

#[derive(Debug, Clone)]
struct McpServerRow {
    id: &'static str,
    org: &'static str,
    workspace: &'static str,
    auth_mode: &'static str,
}

#[derive(Debug, Clone)]
struct McpTokenRow {
    token: &'static str,
    id: String,
    kind: &'static str,
    server: &'static str,
    end_user: Option<&'static str>,
    expires_at: Option<i64>,
    revoked: bool,
}

/// One snapshot, as plain rows (SPEC §2).
#[derive(Debug, Clone)]
struct World {
    /// no snapshot loaded yet (SPEC §1: 503)
    unloaded: bool,
    orgs: Vec<Org>,
    /// (workspace id, organization id)
    workspaces: Vec<(&'static str, &'static str)>,
    /// (resource id, workspace id)
    resources: Vec<(&'static str, &'static str)>,
    servers: Vec<McpServerRow>,
    api_keys: Vec<ApiKeyRow>,
    sessions: Vec<SessionRow>,
    service_keys: Vec<ServiceKeyRow>,
    mcp_tokens: Vec<McpTokenRow>,
}

// ------------------------------------------------------------ the config

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthMode {
    Required,
    None,
    Mcp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Path(&'static str),
    Query(&'static str),
    Header(&'static str),
    Body(&'static str),
    ResourcePath(&'static str),
    ResourceBody(&'static str),
}

#[derive(Debug, Clone)]
struct RouteSpec {
    pattern: &'static str,
    methods: Option<Vec<&'static str>>,
    auth: AuthMode,
    workspace: Option<Source>,
    org_wide_only: bool,
    quota: bool,
    org_optional: bool,
    scoped_filter: bool,
}

impl RouteSpec {
    /// SPEC §5: "Unmatched paths: auth = "required", no workspace rule."
    fn unmatched() -> RouteSpec {
        RouteSpec {
            pattern: "(unmatched)",
            methods: None,
            auth: AuthMode::Required,
            workspace: None,
            org_wide_only: false,
            quota: false,
            org_optional: false,
            scoped_filter: false,
        }
    }
}

#[derive(Debug, Clone)]
struct Settings {
    secret: bool,
    unknown_pass: bool,
    mcp_allowed_origin: bool,
    trusted_origin: bool,
    /// `[plans.NAME] requests_per_window` (`gold` never has a table)
    plans: Vec<(&'static str, u64)>,
    service_keys_limited: bool,
    /// 0: off
    auth_failures_per_ip: u64,
    routes: Vec<RouteSpec>,
}

impl Settings {
    fn toml(&self) -> String {
        let mut t = String::new();
        t += &format!("[server]\nmax_body_inspect_bytes = {BODY_CAP}\n\n");
        t += "[session]\nsecret_env = \"\"\n";
        if self.secret {
            t += &format!("secret = \"{SECRET}\"\n");
        }
        if self.trusted_origin {
            t += &format!("trusted_origins = [\"{GOOD_ORIGIN}\"]\n");
        }
        t += &format!(
            "\n[rate_limit]\nwindow_s = 60\nauth_failures_per_ip = {}\nservice_keys_limited = {}\n\n",
            self.auth_failures_per_ip, self.service_keys_limited
        );
        t += &format!(
            "[scopes]\nunknown_workspaces = \"{}\"\n\n",
            if self.unknown_pass { "pass" } else { "deny" }
        );
        if self.mcp_allowed_origin {
            t += &format!("[mcp]\nallowed_origins = [\"{GOOD_ORIGIN}\"]\n\n");
        }
        for (name, n) in &self.plans {
            t += &format!("[plans.{name}]\nrequests_per_window = {n}\n\n");
        }
        for r in &self.routes {
            t += &format!("[[route]]\npath = \"{}\"\n", r.pattern);
            if let Some(ms) = &r.methods {
                let list: Vec<String> = ms.iter().map(|m| format!("\"{m}\"")).collect();
                t += &format!("methods = [{}]\n", list.join(", "));
            }
            t += match r.auth {
                AuthMode::Required => "auth = \"required\"\n",
                AuthMode::None => "auth = \"none\"\n",
                AuthMode::Mcp => "auth = \"mcp\"\n",
            };
            if let Some(src) = &r.workspace {
                let s = match src {
                    Source::Path(n) => format!("path:{n}"),
                    Source::Query(n) => format!("query:{n}"),
                    Source::Header(n) => format!("header:{n}"),
                    Source::Body(n) => format!("body:{n}"),
                    Source::ResourcePath(n) => format!("resource_path:{n}"),
                    Source::ResourceBody(n) => format!("resource_body:{n}"),
                };
                t += &format!("workspace = \"{s}\"\n");
            }
            t += &format!(
                "org_wide_only = {}\nquota = {}\norg_optional = {}\nscoped_keys = \"{}\"\n\n",
                r.org_wide_only,
                r.quota,
                r.org_optional,
                if r.scoped_filter { "filter" } else { "deny" }
            );
        }
        t
    }
}

// ------------------------------------------------------------ one request

#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    /// already normalized (SPEC §5)
    path: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
    body: String,
}

impl Req {
    fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn header_map(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in &self.headers {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }
}

/// What a request gets: forwarded with these identity headers (SPEC §4), or
/// answered by keyward (status, code, `details.reason`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Forward(BTreeMap<&'static str, String>),
    Refuse(u16, &'static str, Option<String>),
}

// ============================================================ the model

mod model {
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
}

// ============================================================ the real thing

fn directory(w: &World) -> MemoryDirectory {
    let mut d = MemoryDirectory::new();
    d.unloaded = w.unloaded;
    for o in &w.orgs {
        d.org_record(OrgRecord {
            id: o.id.into(),
            plan: o.plan.into(),
            rate_limit: o.rate_limit,
            quota_exceeded: o.quota_exceeded,
            disabled: o.disabled,
        });
    }
    for (ws, org) in &w.workspaces {
        d.workspace(ws, org);
    }
    for (res, ws) in &w.resources {
        d.resource(res, ws);
    }
    for s in &w.servers {
        d.server(s.id, s.org, s.workspace, s.auth_mode);
    }
    for k in &w.api_keys {
        d.api_key(
            k.token,
            ApiKeyRecord {
                id: k.id.clone(),
                organization_id: k.org.to_string(),
                key_prefix: Some(k.token[..8].to_string()),
                permissions: k.permissions.clone(),
                expires_at: k.expires_at,
                revoked_at: k.revoked.then_some(NOW - 100),
            },
        );
    }
    for s in &w.sessions {
        d.session(
            s.token,
            SessionRecord {
                id: s.id.clone(),
                user_id: s.user_id.clone(),
                active_organization_id: s.active_org.map(String::from),
                expires_at: s.expires_at,
            },
        );
    }
    for k in &w.service_keys {
        d.service_key(
            k.token,
            ServiceKeyRecord {
                id: k.id.clone(),
                revoked_at: k.revoked.then_some(NOW - 100),
            },
        );
    }
    for t in &w.mcp_tokens {
        d.mcp_token(
            t.token,
            McpTokenRecord {
                id: t.id.clone(),
                kind: t.kind.to_string(),
                mcp_server_id: t.server.to_string(),
                end_user_id: t.end_user.map(String::from),
                expires_at: t.expires_at,
                revoked_at: t.revoked.then_some(NOW - 100),
            },
        );
    }
    d
}

fn identity_headers(id: &Identity) -> BTreeMap<&'static str, String> {
    let mut m = BTreeMap::new();
    let mut put = |k: &'static str, v: Option<&str>| {
        if let Some(v) = v {
            m.insert(k, v.to_string());
        }
    };
    put("X-Org-ID", id.org_id.as_deref());
    put("X-Auth-Method", id.auth_method.map(|a| a.as_str()));
    put("X-Api-Key-ID", id.api_key_id.as_deref());
    put("X-User-ID", id.user_id.as_deref());
    put("X-Workspace-ID", id.workspace_id.as_deref());
    put("X-Allowed-Workspaces", id.allowed_workspaces.as_deref());
    put("X-MCP-Server-ID", id.mcp_server_id.as_deref());
    put("X-End-User-ID", id.end_user_id.as_deref());
    m
}

/// One case's real decision core: a policy, a directory and the limiters,
/// kept across the case's requests.
struct Real {
    policy: Policy,
    directory: MemoryDirectory,
    limiter: LocalLimiter,
    throttle: AuthFailureThrottle,
}

impl Real {
    fn new(w: &World, s: &Settings) -> Real {
        let config = Config::from_toml_str(&s.toml(), Path::new("/"))
            .unwrap_or_else(|e| panic!("config: {e}\n{}", s.toml()));
        Real {
            policy: Policy { config },
            directory: directory(w),
            limiter: LocalLimiter::new(60),
            throttle: AuthFailureThrottle::new(60, s.auth_failures_per_ip),
        }
    }

    fn decide(&self, r: &Req) -> Answer {
        let headers = r.header_map();
        let method = Method::from_bytes(r.method.as_bytes()).unwrap();
        let client = Client::resolve(
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
            false,
            &headers,
            &[],
        );
        let facts = RequestFacts {
            method: &method,
            path: &r.path,
            query: r.query.as_deref(),
            headers: &headers,
            client,
        };
        let env = Env {
            policy: &self.policy,
            directory: &self.directory,
            limiter: &self.limiter,
            throttle: &self.throttle,
            now: NOW,
            trace: None,
        };
        let mut d = decide(&facts, &env);
        if let Decision::NeedBody(pending) = d {
            let body = if r.body.len() > pending.cap {
                Body::TooLarge
            } else {
                Body::Read(r.body.as_bytes())
            };
            d = decide_body(&facts, pending, body, &env);
        }
        match d {
            Decision::Forward(g) => Answer::Forward(identity_headers(&g.identity)),
            Decision::Refuse(x) => Answer::Refuse(
                x.denial.status(),
                x.denial.code(),
                x.denial.reason().map(String::from),
            ),
            Decision::NeedBody(_) => panic!("NeedBody after decide_body"),
        }
    }
}

// ============================================================ strategies

fn expiry() -> impl Strategy<Value = Option<i64>> {
    prop_oneof![
        6 => Just(None),
        1 => Just(Some(NOW - 10)),
        1 => Just(Some(NOW)),
        4 => Just(Some(NOW + 100)),
    ]
}

fn org_row(id: &'static str) -> impl Strategy<Value = Option<Org>> {
    prop::option::weighted(
        0.93,
        (
            select(&["free", "pro", "gold"][..]),
            prop::option::weighted(0.25, 1u64..=6),
            prop::bool::weighted(0.12),
            prop::bool::weighted(0.08),
        )
            .prop_map(move |(plan, rate_limit, quota_exceeded, disabled)| Org {
                id,
                plan,
                rate_limit,
                quota_exceeded,
                disabled,
            }),
    )
}

fn permissions() -> impl Strategy<Value = Option<String>> {
    let scoped = prop::sample::subsequence(&WS_REFS[..], 1..=3).prop_map(|ids| {
        let list: Vec<String> = ids.iter().map(|i| format!("\"{i}\"")).collect();
        Some(format!(
            "{{\"scope\":\"workspace\",\"workspaceIds\":[{}]}}",
            list.join(",")
        ))
    });
    prop_oneof![
        5 => Just(None),
        2 => Just(Some(r#"{"scope":"org"}"#.to_string())),
        1 => Just(Some(r#"{"scope":"org","note":"x"}"#.to_string())),
        6 => scoped,
        1 => Just(Some(r#"{"scope":"workspace","workspaceIds":[]}"#.to_string())),
        1 => Just(Some("{nope".to_string())),
        1 => Just(Some(r#"{"scope":"galaxy"}"#.to_string())),
        1 => Just(Some(r#"{"scope":"workspace"}"#.to_string())),
        1 => Just(Some(r#"{"workspaceIds":["ws_2"],"scope":"workspace"}"#.to_string())),
        1 => Just(Some(r#"{"scope":"workspace","workspaceIds":["ws_1",5]}"#.to_string())),
        1 => Just(Some(r#"{"scope":"org","workspaceIds":"all"}"#.to_string())),
        1 => Just(Some(r#"{"scope":"org","workspaceIds":null}"#.to_string())),
        1 => Just(Some(r#"{"scope":"workspace","workspaceIds":["ws_1"],"scope":"org"}"#.to_string())),
        1 => Just(Some(r#"[{"scope":"org"}]"#.to_string())),
        1 => Just(Some(r#"{"scope":"Org"}"#.to_string())),
    ]
}

fn api_key_row(i: usize) -> impl Strategy<Value = Option<ApiKeyRow>> {
    prop::option::weighted(
        0.9,
        (
            org_ref(),
            permissions(),
            expiry(),
            prop::bool::weighted(0.12),
        )
            .prop_map(move |(org, permissions, expires_at, revoked)| ApiKeyRow {
                token: API_TOKENS[i],
                id: format!("ak_{i}"),
                org,
                permissions,
                expires_at,
                revoked,
            }),
    )
}

fn session_row(i: usize) -> impl Strategy<Value = Option<SessionRow>> {
    prop::option::weighted(
        0.9,
        (
            prop::option::weighted(0.8, org_ref()),
            prop_oneof![1 => Just(NOW - 5), 1 => Just(NOW), 8 => Just(NOW + 500)],
        )
            .prop_map(move |(active_org, expires_at)| SessionRow {
                token: SESSION_TOKENS[i],
                id: format!("s_{i}"),
                user_id: format!("user_{i}"),
                active_org,
                expires_at,
            }),
    )
}

fn service_key_row(i: usize) -> impl Strategy<Value = Option<ServiceKeyRow>> {
    prop::option::weighted(
        0.9,
        prop::bool::weighted(0.15).prop_map(move |revoked| ServiceKeyRow {
            token: SERVICE_TOKENS[i],
            id: format!("sk_{i}"),
            revoked,
        }),
    )
}

fn server_row(id: &'static str) -> impl Strategy<Value = Option<McpServerRow>> {
    prop::option::weighted(
        0.9,
        (
            org_ref(),
            select(&WS_REFS[..]),
            select(&["oauth", "bearer", "oauth_and_bearer"][..]),
        )
            .prop_map(move |(org, workspace, auth_mode)| McpServerRow {
                id,
                org,
                workspace,
                auth_mode,
            }),
    )
}

fn mcp_token_row(i: usize) -> impl Strategy<Value = Option<McpTokenRow>> {
    // mostly the kind the prefix names, sometimes not (401)
    let fitting: &'static [&'static str] = if MCP_TOKENS[i].starts_with("mcpo_") {
        &[
            "oauth", "oauth", "oauth", "oauth", "oauth", "static", "end_user",
        ]
    } else {
        &[
            "static", "end_user", "static", "end_user", "static", "end_user", "oauth",
        ]
    };
    prop::option::weighted(
        0.9,
        (
            select(fitting),
            prop_oneof![6 => select(&SERVERS[..]), 1 => Just(SERVER_REFS[2])],
            prop::bool::ANY,
            expiry(),
            prop::bool::weighted(0.12),
        )
            .prop_map(move |(kind, server, eu, expires_at, revoked)| McpTokenRow {
                token: MCP_TOKENS[i],
                id: format!("mt_{i}"),
                kind,
                server,
                // SPEC §2: NULL for 'static'
                end_user: (kind != "static" && eu).then_some("eu_1"),
                expires_at,
                revoked,
            }),
    )
}

fn world() -> impl Strategy<Value = World> {
    (
        prop::bool::weighted(0.02),
        (org_row(ORGS[0]), org_row(ORGS[1]), org_row(ORGS[2])),
        prop::collection::vec(prop::option::weighted(0.9, org_ref()), 4),
        prop::collection::vec(prop::option::weighted(0.85, select(&WS_REFS[..])), 3),
        (server_row(SERVERS[0]), server_row(SERVERS[1])),
        (
            api_key_row(0),
            api_key_row(1),
            api_key_row(2),
            api_key_row(3),
        ),
        (session_row(0), session_row(1), session_row(2)),
        (service_key_row(0), service_key_row(1)),
        (
            mcp_token_row(0),
            mcp_token_row(1),
            mcp_token_row(2),
            mcp_token_row(3),
        ),
    )
        .prop_map(
            |(
                unloaded,
                (o0, o1, o2),
                ws,
                res,
                (s0, s1),
                (k0, k1, k2, k3),
                (x0, x1, x2),
                (v0, v1),
                (m0, m1, m2, m3),
            )| {
                World {
                    unloaded,
                    orgs: [o0, o1, o2].into_iter().flatten().collect(),
                    workspaces: WORKSPACES
                        .iter()
                        .zip(ws)
                        .filter_map(|(w, o)| o.map(|o| (*w, o)))
                        .collect(),
                    resources: RESOURCES
                        .iter()
                        .zip(res)
                        .filter_map(|(r, w)| w.map(|w| (*r, w)))
                        .collect(),
                    servers: [s0, s1].into_iter().flatten().collect(),
                    api_keys: [k0, k1, k2, k3].into_iter().flatten().collect(),
                    sessions: [x0, x1, x2].into_iter().flatten().collect(),
                    service_keys: [v0, v1].into_iter().flatten().collect(),
                    mcp_tokens: [m0, m1, m2, m3].into_iter().flatten().collect(),
                }
            },
        )
}

/// Route patterns and their captures.
const PATTERNS: [(&str, &[&str]); 9] = [
    ("/api/auth/**", &[]),
    ("/api/v1/workspaces/{workspaceId}/**", &["workspaceId"]),
    ("/api/v1/workspaces/{workspaceId}", &["workspaceId"]),
    ("/api/v1/connections/{connectionId}", &["connectionId"]),
    ("/api/v1/connections", &[]),
    ("/mcp/{server}", &["server"]),
    ("/mcp/{server}/**", &["server"]),
    ("/api/v1/api-keys/**", &[]),
    ("/api/v1/**", &[]),
];

fn route(pattern: impl Strategy<Value = usize>) -> impl Strategy<Value = RouteSpec> {
    (
        pattern,
        0u8..10,
        0usize..10,
        prop::option::weighted(
            0.3,
            select(vec![
                vec!["GET"],
                vec!["POST"],
                vec!["GET", "POST"],
                vec!["PUT", "DELETE"],
            ]),
        ),
        (
            prop::bool::weighted(0.25),
            prop::bool::weighted(0.3),
            prop::bool::weighted(0.3),
            prop::bool::weighted(0.4),
        ),
    )
        .prop_map(
            |(p, auth, src, methods, (org_wide_only, quota, org_optional, scoped_filter))| {
                let (pattern, captures) = PATTERNS[p];
                let auth = match (p, auth) {
                    (0, 0..=7) | (_, 0) => AuthMode::None,
                    _ if captures.contains(&"server") && auth >= 2 => AuthMode::Mcp,
                    _ => AuthMode::Required,
                };
                let capture = captures.first().copied();
                // sources 7..=9: the one the pattern suggests
                let src = match (src, p) {
                    (0..=6, _) => src,
                    (_, 1 | 2) => 1,
                    (_, 3) => 2,
                    (7, _) => 3,
                    (8, _) => 5,
                    _ => 6,
                };
                let workspace = match (auth, src) {
                    (AuthMode::None, _) => None,
                    (_, 0) => None,
                    (_, 1) => capture.map(Source::Path),
                    (_, 2) => capture.map(Source::ResourcePath),
                    (_, 3) => Some(Source::Query("workspaceId")),
                    (_, 4) => Some(Source::Header(WS_HEADER)),
                    (_, 5) => Some(Source::Body("workspaceId")),
                    _ => Some(Source::ResourceBody("resourceId")),
                };
                RouteSpec {
                    pattern,
                    methods: methods.map(|m| m.to_vec()),
                    auth,
                    workspace,
                    org_wide_only,
                    quota,
                    org_optional,
                    scoped_filter,
                }
            },
        )
}

/// A route table: most patterns once, sometimes one twice (first wins),
/// in random order.
fn routes() -> impl Strategy<Value = Vec<RouteSpec>> {
    let each: Vec<_> = (0..PATTERNS.len())
        .map(|p| prop::option::weighted(if p == 5 { 0.85 } else { 0.6 }, route(Just(p))))
        .collect();
    (each, prop::collection::vec(route(0..PATTERNS.len()), 0..2))
        .prop_map(|(each, extra)| each.into_iter().flatten().chain(extra).collect::<Vec<_>>())
        .prop_shuffle()
}

fn settings() -> impl Strategy<Value = Settings> {
    (
        prop::bool::weighted(0.85),
        prop::bool::weighted(0.3),
        prop::bool::ANY,
        prop::bool::weighted(0.3),
        (
            prop::option::of(2u64..=10),
            prop::option::of(2u64..=10),
            prop::option::weighted(0.4, 2u64..=10),
        ),
        prop::bool::weighted(0.3),
        prop_oneof![6 => Just(0u64), 1 => 2u64..=5],
        routes(),
    )
        .prop_map(
            |(
                secret,
                unknown_pass,
                mcp_allowed_origin,
                trusted_origin,
                (free, pro, default),
                service_keys_limited,
                auth_failures_per_ip,
                routes,
            )| {
                let plans = [("free", free), ("pro", pro), ("default", default)]
                    .into_iter()
                    .filter_map(|(n, v)| v.map(|v| (n, v)))
                    .collect();
                Settings {
                    secret,
                    unknown_pass,
                    mcp_allowed_origin,
                    trusted_origin,
                    plans,
                    service_keys_limited,
                    auth_failures_per_ip,
                    routes,
                }
            },
        )
}

/// Ids a request may name in a path segment (some malformed once decoded).
const PATH_IDS: [&str; 13] = [
    "ws_1",
    "ws_2",
    "ws_3",
    "ws_9",
    "res_1",
    "res_2",
    "res_9",
    "srv_1",
    "srv_2",
    "srv_9",
    "bad%20id",
    "caf%C3%A9",
    "ws_4",
];

/// Which paths a request aims at.
#[derive(Debug, Clone, Copy)]
enum Family {
    Api,
    Mcp,
    Any,
}

fn path(family: Family) -> impl Strategy<Value = String> {
    let template = match family {
        Family::Api => select(&[1usize, 1, 2, 3, 3, 4, 7, 8][..]).boxed(),
        Family::Mcp => select(&[5usize, 6][..]).boxed(),
        Family::Any => (0usize..11).boxed(),
    };
    (
        template,
        prop::bool::weighted(0.8),
        0usize..64,
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(t, natural, pick, upper, slash)| {
            // mostly an id of the kind the path names, sometimes any
            let ids: &[&str] = match (natural, t) {
                (true, 1 | 2) => &WS_REFS,
                (true, 3) => &["res_1", "res_2", "res_3", "res_9"],
                (true, 5 | 6) => &["srv_1", "srv_2", "srv_1", "srv_2", "srv_9"],
                _ => &PATH_IDS,
            };
            let id = ids[pick % ids.len()];
            let mut p = match t {
                0 => "/api/auth/sign-in".to_string(),
                1 => format!("/api/v1/workspaces/{id}/connections"),
                2 => format!("/api/v1/workspaces/{id}"),
                3 => format!("/api/v1/connections/{id}"),
                4 => "/api/v1/connections".to_string(),
                5 => format!("/mcp/{id}"),
                6 => format!("/mcp/{id}/messages"),
                7 => "/api/v1/api-keys".to_string(),
                8 => "/api/v1/orgs/current".to_string(),
                9 => "/other/thing".to_string(),
                _ => "/".to_string(),
            };
            if upper {
                p = p
                    .replacen("/api/v1/", "/API/V1/", 1)
                    .replacen("/mcp/", "/MCP/", 1);
            }
            if slash && p != "/" {
                p.push('/');
            }
            p
        })
}

fn query() -> impl Strategy<Value = Option<String>> {
    let key = select(
        &[
            "workspaceId",
            "workspaceId",
            "workspaceId[]",
            "workspaceId[0]",
            "workspaceId%5B%5D",
            "x-target-workspace",
            "connectionId",
            "server",
            "resourceId",
            "page",
        ][..],
    );
    let value = select(
        &[
            "ws_1", "ws_2", "ws_3", "ws_4", "ws_9", "res_1", "srv_1", "", "bad%20id", "ws_1+",
        ][..],
    );
    prop::collection::vec((key, value), 0..3).prop_map(|pairs| {
        if pairs.is_empty() {
            None
        } else {
            let p: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            Some(p.join("&"))
        }
    })
}

#[derive(Debug, Clone)]
enum Cookie {
    Signed(&'static str),
    WrongSecret(&'static str),
    Garbage,
}

#[derive(Debug, Clone)]
enum CredSpec {
    None,
    Bearer(&'static str, usize, &'static str),
    RawAuthorization(&'static str),
    TwoAuthorizations(&'static str),
    ServiceKey(&'static str),
    Cookie(usize, Cookie),
    TwoCookies(Cookie, Cookie),
    BearerAndServiceKey(&'static str, &'static str),
    ServiceKeyAndCookie(&'static str, Cookie),
}

const BEARER_TOKENS: [&str; 11] = [
    "wvz_key0",
    "wvz_key1",
    "wvz_key2",
    "wvz_key3",
    "wvz_unknown",
    "mcp_tok0",
    "mcp_tok1",
    "mcpo_tok2",
    "mcpo_tok3",
    "mcp_unknown",
    "mcpo_unknown",
];

fn cookie() -> impl Strategy<Value = Cookie> {
    prop_oneof![
        6 => select(&["sess0tok", "sess1tok", "sess2tok", "sessXtok"][..]).prop_map(Cookie::Signed),
        1 => select(&SESSION_TOKENS[..]).prop_map(Cookie::WrongSecret),
        1 => Just(Cookie::Garbage),
    ]
}

fn credential() -> impl Strategy<Value = CredSpec> {
    let token = select(&BEARER_TOKENS[..]);
    let service = select(&["svc_key0", "svc_key1", "svc_unknown"][..]);
    prop_oneof![
        2 => Just(CredSpec::None),
        12 => (select(&["Bearer", "bearer", "BEARER"][..]), 1usize..3, token.clone())
            .prop_map(|(s, n, t)| CredSpec::Bearer(s, n, t)),
        1 => select(&["Basic dXNlcjpw", "Bearer", "Bearer xyz_tok", "Bearer wvz_a b", "Token wvz_key0"][..])
            .prop_map(CredSpec::RawAuthorization),
        1 => token.clone().prop_map(CredSpec::TwoAuthorizations),
        4 => service.clone().prop_map(CredSpec::ServiceKey),
        6 => (0usize..2, cookie()).prop_map(|(n, c)| CredSpec::Cookie(n, c)),
        1 => (cookie(), cookie()).prop_map(|(a, b)| CredSpec::TwoCookies(a, b)),
        1 => (token, service.clone()).prop_map(|(t, s)| CredSpec::BearerAndServiceKey(t, s)),
        1 => (service, cookie()).prop_map(|(s, c)| CredSpec::ServiceKeyAndCookie(s, c)),
    ]
}

/// A path and the credential one would send there (mostly well aimed,
/// sometimes anything), and the `X-Org-ID` values.
fn scenario() -> impl Strategy<Value = (String, CredSpec, Vec<&'static str>)> {
    let bearer = |tokens: &'static [&'static str]| {
        select(tokens).prop_map(|t| CredSpec::Bearer("Bearer", 1, t))
    };
    let org_ids = || {
        prop_oneof![
            6 => Just(vec![]),
            3 => select(&ORG_REFS[..]).prop_map(|o| vec![o]),
            1 => Just(vec!["org_a", "org_b"]),
        ]
    };
    prop_oneof![
        6 => (
            path(Family::Api),
            bearer(&["wvz_key0", "wvz_key1", "wvz_key2", "wvz_key3", "wvz_key0", "wvz_key1", "wvz_unknown"]),
            org_ids(),
        ),
        3 => (
            path(Family::Api),
            prop_oneof![
                8 => select(&SESSION_TOKENS[..]).prop_map(|t| CredSpec::Cookie(1, Cookie::Signed(t))),
                1 => select(&SESSION_TOKENS[..]).prop_map(|t| CredSpec::Cookie(0, Cookie::Signed(t))),
                1 => select(&SESSION_TOKENS[..])
                    .prop_map(|t| CredSpec::TwoCookies(Cookie::Signed(t), Cookie::Signed(t))),
            ],
            org_ids(),
        ),
        2 => (
            path(Family::Api),
            select(&["svc_key0", "svc_key1"][..]).prop_map(CredSpec::ServiceKey),
            prop_oneof![
                2 => Just(vec![]),
                6 => select(&ORG_REFS[..]).prop_map(|o| vec![o]),
                1 => Just(vec!["org_a", "org_b"]),
            ],
        ),
        4 => (
            path(Family::Mcp),
            bearer(&["mcp_tok0", "mcp_tok1", "mcpo_tok2", "mcpo_tok3", "mcp_unknown"]),
            org_ids(),
        ),
        3 => (path(Family::Any), credential(), org_ids()),
    ]
}

fn cookie_value(c: &Cookie) -> String {
    match c {
        Cookie::Signed(t) => keyward::credentials::signed_cookie_value(t, &Secret::new(SECRET)),
        Cookie::WrongSecret(t) => {
            keyward::credentials::signed_cookie_value(t, &Secret::new(OTHER_SECRET))
        }
        Cookie::Garbage => "not-a-signed-value".to_string(),
    }
}

#[derive(Debug, Clone)]
struct BodySpec {
    content_type: Option<&'static str>,
    encoding: Option<&'static str>,
    body: String,
}

fn body() -> impl Strategy<Value = BodySpec> {
    let text = prop_oneof![
        3 => Just(String::new()),
        1 => Just("{}".to_string()),
        6 => select(&WS_REFS[..]).prop_map(|w| format!("{{\"workspaceId\":\"{w}\"}}")),
        4 => select(&["res_1", "res_2", "res_3", "res_9"][..])
            .prop_map(|r| format!("{{\"name\":\"n\",\"resourceId\":\"{r}\"}}")),
        1 => Just(r#"{"workspaceId":"ws_1","workspaceId":"ws_2"}"#.to_string()),
        1 => Just(r#"{"resourceId":"res_1","resourceId":"res_1"}"#.to_string()),
        1 => Just(r#"{"workspaceId":7,"resourceId":["res_1"]}"#.to_string()),
        1 => Just(r#"{"workspaceId":"","resourceId":""}"#.to_string()),
        1 => Just(r#"{"workspaceId":"ws a"}"#.to_string()),
        1 => Just("workspaceId=ws_1".to_string()),
        1 => Just(format!("{{\"workspaceId\":\"ws_1\",\"pad\":\"{}\"}}", "x".repeat(60))),
        1 => select(&["[1]", "\"ws_1\"", "null", "  \n", "{\"workspaceId\":\"ws_1\"} x"][..])
            .prop_map(String::from),
        1 => Just(r#"{"data":{"workspaceId":"ws_1","resourceId":"res_1"}}"#.to_string()),
        1 => Just(r#"{"workspaceId":"ws_1","workspaceId":7}"#.to_string()),
        1 => Just(r#"{"workspaceId":"ws\u005f1","resourceId":"res\u005f2"}"#.to_string()),
    ];
    (
        prop_oneof![
            6 => Just(Some("application/json")),
            1 => Just(Some("application/vnd.api+json; charset=utf-8")),
            1 => Just(Some("text/plain")),
            1 => Just(None),
        ],
        prop_oneof![8 => Just(None), 1 => Just(Some("gzip")), 1 => Just(Some("identity"))],
        text,
    )
        .prop_map(|(content_type, encoding, body)| BodySpec {
            content_type,
            encoding,
            body,
        })
}

fn request() -> impl Strategy<Value = Req> {
    (
        select(
            &[
                "GET", "GET", "HEAD", "POST", "POST", "PUT", "PATCH", "DELETE",
            ][..],
        ),
        scenario(),
        query(),
        prop::option::weighted(0.25, select(&[GOOD_ORIGIN, EVIL_ORIGIN][..])),
        prop_oneof![
            5 => Just(vec![]),
            4 => select(&["ws_1", "ws_2", "ws_4", "ws_9", "", "ws_1,ws_2", "ws a", " ws_2 "][..])
                .prop_map(|v| vec![v]),
            1 => Just(vec!["ws_1", "ws_2"]),
        ],
        body(),
    )
        .prop_map(
            |(method, (path, cred, org_ids), query, origin, ws_headers, body)| {
                let mut h: Vec<(String, String)> = Vec::new();
                let mut add = |n: &str, v: String| h.push((n.to_string(), v));
                match &cred {
                    CredSpec::None => {}
                    CredSpec::Bearer(scheme, spaces, token) => add(
                        "Authorization",
                        format!("{scheme}{}{token}", " ".repeat(*spaces)),
                    ),
                    CredSpec::RawAuthorization(v) => add("Authorization", v.to_string()),
                    CredSpec::TwoAuthorizations(t) => {
                        add("Authorization", format!("Bearer {t}"));
                        add("Authorization", format!("Bearer {t}"));
                    }
                    CredSpec::ServiceKey(k) => add("X-Service-Key", k.to_string()),
                    CredSpec::Cookie(n, c) => add(
                        "Cookie",
                        format!("theme=dark; {}={}", COOKIE_NAMES[*n], cookie_value(c)),
                    ),
                    CredSpec::TwoCookies(a, b) => add(
                        "Cookie",
                        format!(
                            "{}={};\t{}={}",
                            COOKIE_NAMES[0],
                            cookie_value(a),
                            COOKIE_NAMES[1],
                            cookie_value(b)
                        ),
                    ),
                    CredSpec::BearerAndServiceKey(t, k) => {
                        add("Authorization", format!("Bearer {t}"));
                        add("X-Service-Key", k.to_string());
                    }
                    CredSpec::ServiceKeyAndCookie(k, c) => {
                        add("X-Service-Key", k.to_string());
                        add("Cookie", format!("{}={}", COOKIE_NAMES[1], cookie_value(c)));
                    }
                }
                for o in org_ids {
                    add("X-Org-ID", o.to_string());
                }
                if let Some(o) = origin {
                    add("Origin", o.to_string());
                }
                for v in ws_headers {
                    add(WS_HEADER, v.to_string());
                }
                if !body.body.is_empty() {
                    add("Content-Length", body.body.len().to_string());
                }
                if let Some(ct) = body.content_type {
                    add("Content-Type", ct.to_string());
                }
                if let Some(e) = body.encoding {
                    add("Content-Encoding", e.to_string());
                }
                Req {
                    method,
                    path,
                    query,
                    headers: h,
                    body: body.body,
                }
            },
        )
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

// ============================================================ the properties

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        // no regressions file beside this one: a failure prints its input
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Run a property on a thread with a large stack: shrinking these nested
/// strategies in a debug build overflows the test thread's 2 MiB.
fn check<S: Strategy + 'static>(
    strategy: impl FnOnce() -> S + Send + 'static,
    property: fn(S::Value) -> Result<(), TestCaseError>,
) {
    let outcome = std::thread::Builder::new()
        .stack_size(512 << 20)
        .spawn(move || {
            let mut runner = proptest::test_runner::TestRunner::new(config());
            runner.run(&strategy(), property).map_err(|e| e.to_string())
        })
        .unwrap()
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    if let Err(e) = outcome {
        panic!("{e}");
    }
}

/// `decide` and the model agree on every request of a sequence against one
/// snapshot and config (shared rate-limit window and throttle).
#[test]
fn decide_agrees_with_the_model() {
    check(
        || (world(), settings(), prop::collection::vec(request(), 1..12)),
        |(w, s, reqs)| {
            let real = Real::new(&w, &s);
            let mut state = model::State::default();
            for (i, r) in reqs.iter().enumerate() {
                let expected = model::decide(&w, &s, r, &mut state);
                let got = real.decide(r);
                prop_assert_eq!(
                    &got,
                    &expected,
                    "decide (left) and the model (right) differ on request #{} {:?}\nmodel state after: {:?}\nconfig:\n{}",
                    i,
                    r,
                    state,
                    s.toml()
                );
            }
            Ok(())
        },
    );
}

/// §6: in one window exactly N requests of an organization are admitted,
/// and requests refused for any other reason (unknown key, another
/// organization's workspace, an unknown one) use none of them — and are
/// still refused for that reason once the window is full.
#[test]
fn exactly_n_admitted_and_refusals_are_free() {
    check(
        || {
            (
                1u64..8,
                prop::option::of(1u64..8),
                prop::collection::vec(0u8..4, 1..30),
            )
        },
        |(n, override_limit, seq)| {
            let w = World {
                unloaded: false,
                orgs: vec![
                    Org {
                        id: "org_a",
                        plan: "free",
                        rate_limit: override_limit,
                        quota_exceeded: false,
                        disabled: false,
                    },
                    Org {
                        id: "org_b",
                        plan: "free",
                        rate_limit: None,
                        quota_exceeded: false,
                        disabled: false,
                    },
                ],
                workspaces: vec![("ws_1", "org_a"), ("ws_2", "org_b")],
                resources: vec![],
                servers: vec![],
                api_keys: vec![ApiKeyRow {
                    token: "wvz_key0",
                    id: "ak_0".into(),
                    org: "org_a",
                    permissions: None,
                    expires_at: None,
                    revoked: false,
                }],
                sessions: vec![],
                service_keys: vec![],
                mcp_tokens: vec![],
            };
            let s = Settings {
                secret: false,
                unknown_pass: false,
                mcp_allowed_origin: false,
                trusted_origin: false,
                plans: vec![("free", n)],
                service_keys_limited: false,
                auth_failures_per_ip: 0,
                routes: vec![RouteSpec {
                    pattern: "/api/v1/workspaces/{workspaceId}/**",
                    methods: None,
                    auth: AuthMode::Required,
                    workspace: Some(Source::Path("workspaceId")),
                    org_wide_only: false,
                    quota: false,
                    org_optional: false,
                    scoped_filter: false,
                }],
            };
            let limit = override_limit.unwrap_or(n);
            let real = Real::new(&w, &s);
            let mut admitted = 0u64;
            for kind in seq {
                let (token, ws) = match kind {
                    0 | 1 => ("wvz_key0", "ws_1"),
                    2 => ("wvz_unknown", "ws_1"),
                    _ => ("wvz_key0", if admitted % 2 == 0 { "ws_2" } else { "ws_9" }),
                };
                let r = Req {
                    method: "GET",
                    path: format!("/api/v1/workspaces/{ws}/connections"),
                    query: None,
                    headers: vec![("Authorization".into(), format!("Bearer {token}"))],
                    body: String::new(),
                };
                let got = real.decide(&r);
                match kind {
                    0 | 1 if admitted < limit => {
                        prop_assert!(matches!(got, Answer::Forward(_)), "{:?}", got);
                        admitted += 1;
                    }
                    0 | 1 => prop_assert_eq!(got, Answer::Refuse(429, "RATE_LIMIT_EXCEEDED", None)),
                    2 => prop_assert_eq!(
                        got,
                        Answer::Refuse(401, "UNAUTHENTICATED", Some("unknown".into()))
                    ),
                    _ => prop_assert!(
                        matches!(got, Answer::Refuse(403, "SCOPE_DENIED", _)),
                        "{:?}",
                        got
                    ),
                }
            }
            Ok(())
        },
    );
}

/// How often each answer comes up (run with `--ignored --nocapture`): the
/// equivalence run is only as good as the paths it reaches.
#[test]
#[ignore]
fn coverage_report() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::default();
    let strategy = (world(), settings(), prop::collection::vec(request(), 1..12));
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut total = 0;
    for _ in 0..cases() {
        let (w, s, reqs) = strategy.new_tree(&mut runner).unwrap().current();
        let mut state = model::State::default();
        for r in &reqs {
            let key = match model::decide(&w, &s, r, &mut state) {
                Answer::Forward(id) => format!(
                    "forward {} ws={}",
                    id.get("X-Auth-Method").map_or("none", String::as_str),
                    id.contains_key("X-Workspace-ID")
                ),
                Answer::Refuse(st, code, reason) => format!("{st} {code} {reason:?}"),
            };
            *seen.entry(key).or_default() += 1;
            total += 1;
        }
    }
    for (k, n) in &seen {
        println!("{n:6} {k}");
    }
    println!("{total} requests");
}
