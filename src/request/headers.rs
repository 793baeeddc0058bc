//! Header names keyward owns and the few ways it reads a header, each
//! written once: the SPEC §4 identity table (what the upstream receives and
//! every client spelling that is removed), "another spelling of a name"
//! (`_` for `-`, any case), and "exactly one value". Pure: no pingora.

use http::{HeaderMap, HeaderName, HeaderValue};

/// Whether two header names are one to an upstream that reads headers
/// CGI-style: equal in any letter case with `_` read as `-` (`X_Org_ID` is
/// `X-Org-ID`).
pub fn spelled_as(name: &str, other: &str) -> bool {
    let fold = |b: u8| {
        if b == b'_' {
            b'-'
        } else {
            b.to_ascii_lowercase()
        }
    };
    name.len() == other.len()
        && name
            .bytes()
            .zip(other.bytes())
            .all(|(a, c)| fold(a) == fold(c))
}

/// The one value of a header sent exactly once; `None` when it is absent or
/// repeated.
pub fn single(headers: &HeaderMap, name: impl http::header::AsHeaderName) -> Option<&HeaderValue> {
    let mut all = headers.get_all(name).iter();
    match (all.next(), all.next()) {
        (Some(v), None) => Some(v),
        _ => None,
    }
}

/// How a header appears: absent, once, or more than once.
pub enum Count<'h> {
    Absent,
    Once(&'h HeaderValue),
    Repeated,
}

pub fn count<'h>(headers: &'h HeaderMap, name: impl http::header::AsHeaderName) -> Count<'h> {
    let mut all = headers.get_all(name).iter();
    match (all.next(), all.next()) {
        (None, _) => Count::Absent,
        (Some(v), None) => Count::Once(v),
        _ => Count::Repeated,
    }
}

/// One identity header of SPEC §4, as keyward sends it upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityHeader {
    OrgId,
    AuthMethod,
    ApiKeyId,
    UserId,
    WorkspaceId,
    AllowedWorkspaces,
    McpServerId,
    EndUserId,
}

impl IdentityHeader {
    pub const ALL: [IdentityHeader; 8] = [
        IdentityHeader::OrgId,
        IdentityHeader::AuthMethod,
        IdentityHeader::ApiKeyId,
        IdentityHeader::UserId,
        IdentityHeader::WorkspaceId,
        IdentityHeader::AllowedWorkspaces,
        IdentityHeader::McpServerId,
        IdentityHeader::EndUserId,
    ];

    pub const fn name(self) -> HeaderName {
        HeaderName::from_static(self.as_str())
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            IdentityHeader::OrgId => "x-org-id",
            IdentityHeader::AuthMethod => "x-auth-method",
            IdentityHeader::ApiKeyId => "x-api-key-id",
            IdentityHeader::UserId => "x-user-id",
            IdentityHeader::WorkspaceId => "x-workspace-id",
            IdentityHeader::AllowedWorkspaces => "x-allowed-workspaces",
            IdentityHeader::McpServerId => "x-mcp-server-id",
            IdentityHeader::EndUserId => "x-end-user-id",
        }
    }
}

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_SERVICE_KEY: HeaderName = HeaderName::from_static("x-service-key");
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// A client copy of a header keyward sets itself (identity, `X-Service-Key`,
/// `X-Request-ID`, forwarding), in any spelling: never forwarded as sent.
pub fn is_keywards(name: &str) -> bool {
    IdentityHeader::ALL
        .iter()
        .any(|h| spelled_as(name, h.as_str()))
        || spelled_as(name, X_SERVICE_KEY.as_str())
        || spelled_as(name, X_REQUEST_ID.as_str())
        || is_forwarding_header(name)
        || CLIENT_CLAIMS.iter().any(|c| spelled_as(name, c))
}

/// The forwarding headers keyward writes itself (SPEC §4.1), lowercase.
const FORWARDING: [&str; 5] = [
    "x-forwarded-for",
    "x-real-ip",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

/// Other headers through which a client would name its own address or
/// re-route the request (IP helpers read `CF-Connecting-IP` or
/// `X-Client-IP` before `X-Forwarded-For`; IIS, Symfony and Zuul honour
/// `X-Original-URL`): keyward vouches for none of them, so none is
/// forwarded (found by an outside attack).
const CLIENT_CLAIMS: [&str; 9] = [
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-original-forwarded-for",
    "x-proxyuser-ip",
    "x-original-url",
    "x-rewrite-url",
];

/// A client copy of a forwarding header, in any spelling: never forwarded
/// as sent.
pub fn is_forwarding_header(name: &str) -> bool {
    FORWARDING.iter().any(|c| spelled_as(name, c))
}

/// `X-RateLimit-*` for a rate-limited organization (SPEC §6), on keyward's
/// own answers and the upstream's alike.
pub fn insert_rate(h: &mut HeaderMap, r: &crate::auth::limit::RateState) {
    h.insert(X_RATELIMIT_LIMIT, r.limit.into());
    h.insert(X_RATELIMIT_REMAINING, r.remaining.into());
    h.insert(X_RATELIMIT_RESET, r.reset.into());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywards_headers_in_every_spelling() {
        for n in [
            "x-org-id",
            "X-ORG-ID",
            "x_org_id",
            "X_Org-Id",
            "x-service-key",
            "X_Allowed_Workspaces",
            "x_request_id",
            "X_Forwarded_For",
            "CF-Connecting-IP",
            "x_original_url",
        ] {
            assert!(is_keywards(n), "{n}");
        }
        for n in ["x-org-idx", "x-org", "authorization"] {
            assert!(!is_keywards(n), "{n}");
        }
    }

    #[test]
    fn single_and_count() {
        let mut h = HeaderMap::new();
        assert!(single(&h, "a").is_none());
        h.append("a", HeaderValue::from_static("1"));
        assert_eq!(single(&h, "a").unwrap(), "1");
        h.append("a", HeaderValue::from_static("2"));
        assert!(single(&h, "a").is_none());
        assert!(matches!(count(&h, "a"), Count::Repeated));
    }
}
