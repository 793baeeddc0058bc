//! Principals: what the snapshot says a credential is, as cacheable
//! [`Verdict`]s (SPEC §3, §2 permissions JSON). Types only: the store reads
//! them (`store::principals`), the decision core judges them. No route or
//! request knowledge here, and no I/O.

use std::sync::Arc;

/// The snapshot table a credential is looked up in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenTable {
    ApiKey,
    Session,
    ServiceKey,
    McpToken,
}

/// What an API key may reach (`api_keys.permissions`).
#[derive(Debug, Clone)]
pub enum Scope {
    OrgWide,
    /// workspace-scoped; `header` is the comma-joined list for X-Allowed-Workspaces
    Workspaces {
        ids: Arc<[Arc<str>]>,
        header: Arc<str>,
    },
    /// permissions JSON that cannot be understood: the key is unusable (403)
    Malformed,
}

/// What `api_keys.permissions` says (SPEC §2, §6.1): the scope, and
/// `readOnly`.
#[derive(Debug, Clone)]
pub struct Permissions {
    pub scope: Scope,
    /// `permissions.readOnly = true`: only GET, HEAD and OPTIONS pass
    pub read_only: bool,
}

impl Permissions {
    pub fn parse(permissions: Option<&str>) -> Permissions {
        #[derive(serde::Deserialize)]
        struct Perms {
            scope: Option<String>,
            #[serde(rename = "workspaceIds")]
            workspace_ids: Option<Vec<String>>,
            /// anything but a JSON boolean (or null) makes the JSON malformed
            #[serde(rename = "readOnly")]
            read_only: Option<bool>,
        }
        let open = |scope| Permissions {
            scope,
            read_only: false,
        };
        let Some(text) = permissions else {
            return open(Scope::OrgWide);
        };
        // JSON `null` is org-wide like SQL NULL; anything else must be valid
        // JSON (found by fuzz/permissions_json: `str::trim` accepted a
        // vertical tab around "null", which JSON does not).
        let p = match serde_json::from_str::<Option<Perms>>(text) {
            Ok(Some(p)) => p,
            Ok(None) => return open(Scope::OrgWide),
            Err(_) => return open(Scope::Malformed),
        };
        Permissions {
            scope: Scope::from_fields(p.scope.as_deref(), p.workspace_ids),
            read_only: p.read_only.unwrap_or(false),
        }
    }
}

impl Scope {
    pub fn parse(permissions: Option<&str>) -> Scope {
        Permissions::parse(permissions).scope
    }

    fn from_fields(scope: Option<&str>, workspace_ids: Option<Vec<String>>) -> Scope {
        match scope {
            Some("org") => Scope::OrgWide,
            Some("workspace") => match workspace_ids {
                // An empty list would become an empty X-Allowed-Workspaces,
                // which `if (header)` reads as org-wide (SPEC §5.1).
                Some(ids)
                    if !ids.is_empty() && ids.iter().all(|i| !i.is_empty() && !i.contains(',')) =>
                {
                    Scope::Workspaces {
                        header: Arc::from(ids.join(",")),
                        ids: ids.into_iter().map(Arc::from).collect(),
                    }
                }
                _ => Scope::Malformed,
            },
            _ => Scope::Malformed,
        }
    }

    pub fn allows(&self, workspace: &str) -> bool {
        match self {
            Scope::OrgWide => true,
            Scope::Workspaces { ids, .. } => ids.iter().any(|i| &**i == workspace),
            Scope::Malformed => false,
        }
    }

    pub fn is_scoped(&self) -> bool {
        matches!(self, Scope::Workspaces { .. })
    }
}

/// `api_keys.allowed_ips` (SPEC §6.1): which client IPs may use a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedIps {
    /// NULL (or JSON null): any
    Any,
    Only(Arc<[ipnet::IpNet]>),
    /// not a JSON array of CIDRs/IPs: the key is unusable (403)
    Malformed,
}

impl AllowedIps {
    pub fn parse(text: Option<&str>) -> AllowedIps {
        let Some(text) = text else {
            return AllowedIps::Any;
        };
        let list = match serde_json::from_str::<Option<Vec<String>>>(text) {
            Ok(None) => return AllowedIps::Any,
            Ok(Some(list)) => list,
            Err(_) => return AllowedIps::Malformed,
        };
        let mut nets = Vec::with_capacity(list.len());
        for entry in &list {
            // exactly as written: no surrounding space, no zone, no port
            let net = entry
                .parse::<ipnet::IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match net {
                // host bits set (`10.0.0.5/8`): a network or a host was
                // meant; refused rather than guessed
                Ok(n) if n == n.trunc() => nets.push(ipv4_mapped(n)),
                _ => return AllowedIps::Malformed,
            }
        }
        AllowedIps::Only(nets.into())
    }

    /// Whether `ip` may use the key (an IPv4 client seen on an IPv6
    /// socket, `::ffff:a.b.c.d`, is matched as IPv4).
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        match self {
            AllowedIps::Any => true,
            AllowedIps::Only(nets) => nets.iter().any(|n| n.contains(&ip)),
            AllowedIps::Malformed => false,
        }
    }
}

/// `::ffff:a.b.c.d/n` (n ≥ 96) as the IPv4 network it names: clients are
/// matched as IPv4 when they come mapped (see [`AllowedIps::allows`]).
fn ipv4_mapped(net: ipnet::IpNet) -> ipnet::IpNet {
    match net {
        ipnet::IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(ipnet::IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        other => other,
    }
}

/// A credential's own window (SPEC §6.1 `rate_limit`): its limit and the
/// limiter key, made once when the verdict is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnLimit {
    pub limit: u64,
    pub key: Arc<str>,
}

#[derive(Debug)]
pub struct ApiKey {
    pub id: Arc<str>,
    pub prefix: Arc<str>,
    pub org_id: Arc<str>,
    /// None: the organization is not in the snapshot (403)
    pub org: Option<Org>,
    pub scope: Scope,
    pub expires_at: Option<i64>,
    /// `permissions.readOnly`
    pub read_only: bool,
    pub allowed_ips: AllowedIps,
    pub own_limit: Option<OwnLimit>,
}

#[derive(Debug)]
pub struct Session {
    pub user_id: Arc<str>,
    pub active_org_id: Option<Arc<str>>,
    pub org: Option<Org>,
    pub expires_at: i64,
}

#[derive(Debug)]
pub struct ServiceKey {
    pub id: Arc<str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McpKind {
    Static,
    EndUser,
    OAuth,
}

#[derive(Debug)]
pub struct McpToken {
    pub id: Arc<str>,
    pub kind: Option<McpKind>,
    pub server_id: Arc<str>,
    pub server: Option<McpServerRecord>,
    pub org: Option<Org>,
    pub end_user_id: Option<Arc<str>>,
    pub expires_at: Option<i64>,
    pub own_limit: Option<OwnLimit>,
}

/// A cached answer about one token.
#[derive(Debug)]
pub enum Verdict {
    ApiKey(ApiKey),
    Session(Session),
    ServiceKey(ServiceKey),
    /// boxed: the largest variant, and the rarest in a cache of API keys
    /// (every cached verdict is as large as the largest variant)
    Mcp(Box<McpToken>),
    /// unknown or revoked: 401 with this reason
    Rejected(&'static str),
}

impl Verdict {
    pub fn is_negative(&self) -> bool {
        matches!(self, Verdict::Rejected(_))
    }
}

/// A token as the cache knows it: its table and `sha256(token)` (never the token).
pub type TokenKey = (TokenTable, [u8; 32]);

/// An organization as verdicts and lookups share it: one record per
/// organization in the cache, not a copy per key (benches/memory.rs).
pub type Org = Arc<OrgRecord>;

#[derive(Debug, Clone)]
pub struct OrgRecord {
    pub id: Arc<str>,
    pub plan: Arc<str>,
    pub rate_limit: Option<u64>,
    pub quota_exceeded: bool,
    pub disabled: bool,
}

#[derive(Debug, Clone)]
pub struct McpServerRecord {
    pub id: String,
    pub organization_id: String,
    pub workspace_id: String,
    pub auth_mode: McpAuthMode,
}

/// `mcp_servers.auth_mode` (SPEC §2, §3.1): which MCP tokens a server takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McpAuthMode {
    Bearer,
    OAuth,
    OAuthAndBearer,
    /// any other value: the server takes no token (fail closed)
    Unknown,
}

impl McpAuthMode {
    pub fn parse(s: &str) -> McpAuthMode {
        match s {
            "bearer" => McpAuthMode::Bearer,
            "oauth" => McpAuthMode::OAuth,
            "oauth_and_bearer" => McpAuthMode::OAuthAndBearer,
            _ => McpAuthMode::Unknown,
        }
    }

    /// `static` and `end_user` tokens
    pub fn allows_bearer(self) -> bool {
        matches!(self, McpAuthMode::Bearer | McpAuthMode::OAuthAndBearer)
    }

    /// `oauth` tokens; also whether 401s advertise `resource_metadata`
    pub fn allows_oauth(self) -> bool {
        matches!(self, McpAuthMode::OAuth | McpAuthMode::OAuthAndBearer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_json_forms() {
        assert!(matches!(Scope::parse(Some("\u{b}null")), Scope::Malformed));
        assert!(matches!(Scope::parse(Some(" null\n")), Scope::OrgWide));
        assert!(matches!(Scope::parse(None), Scope::OrgWide));
        assert!(matches!(
            Scope::parse(Some(r#"{"scope":"org"}"#)),
            Scope::OrgWide
        ));
        let s = Scope::parse(Some(
            r#"{"scope":"workspace","workspaceIds":["ws_1","ws_2"],"x":1}"#,
        ));
        assert!(s.allows("ws_2") && !s.allows("ws_3") && s.is_scoped());
        assert!(matches!(Scope::parse(Some("{nope")), Scope::Malformed));
        assert!(matches!(
            Scope::parse(Some(r#"{"scope":"workspace","workspaceIds":[]}"#)),
            Scope::Malformed
        ));
        assert!(matches!(
            Scope::parse(Some(r#"{"scope":"workspace"}"#)),
            Scope::Malformed
        ));
        assert!(matches!(
            Scope::parse(Some(r#"{"scope":"galaxy"}"#)),
            Scope::Malformed
        ));
        assert!(!Scope::Malformed.allows("ws_1"));
    }
}

#[cfg(test)]
mod policy_tests {
    use super::*;

    #[test]
    fn allowed_ips_read_one_way() {
        let only = AllowedIps::parse(Some(r#"["10.0.0.0/8","2001:db8::/32","203.0.113.7"]"#));
        for ip in ["10.1.2.3", "2001:db8::1", "203.0.113.7", "::ffff:10.9.9.9"] {
            assert!(only.allows(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["11.0.0.1", "203.0.113.8", "2001:db9::1", "::ffff:11.0.0.1"] {
            assert!(!only.allows(ip.parse().unwrap()), "{ip}");
        }
        // entries written IPv4-mapped match IPv4 clients
        let mapped = AllowedIps::parse(Some(r#"["::ffff:127.0.0.1","::ffff:10.0.0.0/104"]"#));
        for ip in ["127.0.0.1", "10.2.3.4", "::ffff:10.2.3.4"] {
            assert!(mapped.allows(ip.parse().unwrap()), "{ip}");
        }
        assert!(!mapped.allows("11.0.0.1".parse().unwrap()));
        assert_eq!(AllowedIps::parse(None), AllowedIps::Any);
        assert_eq!(AllowedIps::parse(Some("null")), AllowedIps::Any);
        assert!(!AllowedIps::parse(Some("[]")).allows("10.0.0.1".parse().unwrap()));
        for bad in [
            "not json",
            "{}",
            r#""10.0.0.0/8""#,
            "[1]",
            r#"["10.0.0.0/33"]"#,
            r#"["10.0.0.5/8"]"#,
            r#"[" 10.0.0.1"]"#,
            r#"["10.0.0.1:80"]"#,
            r#"["fe80::1%eth0"]"#,
            r#"["010.0.0.1"]"#,
            r#"[null]"#,
        ] {
            assert_eq!(AllowedIps::parse(Some(bad)), AllowedIps::Malformed, "{bad}");
            assert!(!AllowedIps::parse(Some(bad)).allows("10.0.0.1".parse().unwrap()));
        }
    }

    #[test]
    fn read_only_is_a_boolean_or_the_permissions_are_malformed() {
        let p = Permissions::parse(Some(r#"{"scope":"org","readOnly":true}"#));
        assert!(p.read_only && matches!(p.scope, Scope::OrgWide));
        assert!(!Permissions::parse(Some(r#"{"scope":"org","readOnly":false}"#)).read_only);
        assert!(!Permissions::parse(Some(r#"{"scope":"org"}"#)).read_only);
        for bad in [
            r#"{"scope":"org","readOnly":"yes"}"#,
            r#"{"scope":"org","readOnly":1}"#,
            r#"{"scope":"org","readOnly":true,"readOnly":false}"#,
        ] {
            assert!(
                matches!(Permissions::parse(Some(bad)).scope, Scope::Malformed),
                "{bad}"
            );
        }
    }
}
