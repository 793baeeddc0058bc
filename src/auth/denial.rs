//! What the client sees when keyward answers itself (SPEC §7): one enum,
//! rendered to the contract's JSON in exactly one place.

use bytes::Bytes;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// 401; `www_authenticate` is the full header value
    Unauthenticated {
        reason: &'static str,
        www_authenticate: Option<String>,
    },
    Forbidden(&'static str),
    ScopeDenied(&'static str),
    QuotaExceeded,
    /// 429; seconds until the window ends
    RateLimited {
        retry_after: u64,
        per_ip: bool,
        /// `details.limit` (SPEC §6.1): `"key"` or `"organization"` — the
        /// window that refused; None for the per-IP throttle
        limit: Option<&'static str>,
    },
    BadRequest(&'static str),
    /// 415: a body the route must inspect is not JSON as sent (SPEC §5.1)
    UnsupportedMediaType(&'static str),
    PayloadTooLarge,
    UpstreamUnavailable,
    AuthUnavailable,
    UpstreamTimeout,
    /// 429: the organization's `max_streams` streams are open (SPEC §8.2)
    TooManyStreams,
}

impl Denial {
    pub fn unauthenticated(reason: &'static str) -> Denial {
        Denial::Unauthenticated {
            reason,
            www_authenticate: None,
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Denial::Unauthenticated { .. } => 401,
            Denial::Forbidden(_) | Denial::ScopeDenied(_) | Denial::QuotaExceeded => 403,
            Denial::RateLimited { .. } | Denial::TooManyStreams => 429,
            Denial::BadRequest(_) => 400,
            Denial::UnsupportedMediaType(_) => 415,
            Denial::PayloadTooLarge => 413,
            Denial::UpstreamUnavailable => 502,
            Denial::AuthUnavailable => 503,
            Denial::UpstreamTimeout => 504,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Denial::Unauthenticated { .. } => "UNAUTHENTICATED",
            Denial::Forbidden(_) => "FORBIDDEN",
            Denial::ScopeDenied(_) => "SCOPE_DENIED",
            Denial::QuotaExceeded => "QUOTA_EXCEEDED",
            Denial::RateLimited { .. } | Denial::TooManyStreams => "RATE_LIMIT_EXCEEDED",
            Denial::BadRequest(_) => "BAD_REQUEST",
            Denial::UnsupportedMediaType(_) => "UNSUPPORTED_MEDIA_TYPE",
            Denial::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Denial::UpstreamUnavailable => "UPSTREAM_UNAVAILABLE",
            Denial::AuthUnavailable => "AUTH_UNAVAILABLE",
            Denial::UpstreamTimeout => "UPSTREAM_TIMEOUT",
        }
    }

    fn message(&self) -> &'static str {
        match self {
            Denial::Unauthenticated { .. } => "Authentication required",
            Denial::Forbidden(_) => "Not allowed",
            Denial::ScopeDenied(_) => "Workspace outside the credential's scope",
            Denial::QuotaExceeded => "Organization quota exceeded",
            Denial::RateLimited { per_ip: false, .. } => "Rate limit exceeded",
            Denial::RateLimited { per_ip: true, .. } => "Too many failed authentication attempts",
            Denial::TooManyStreams => "Too many open streams for this organization",
            Denial::BadRequest(_) => "Bad request",
            Denial::UnsupportedMediaType(_) => {
                "The route reads the body as JSON: send it as application/json, not content-encoded"
            }
            Denial::PayloadTooLarge => "Request body too large to inspect",
            Denial::UpstreamUnavailable => "Upstream unavailable",
            Denial::AuthUnavailable => "Authentication data unavailable",
            Denial::UpstreamTimeout => "Upstream timed out",
        }
    }

    /// `details.reason`; never derived from a secret.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Denial::Unauthenticated { reason, .. }
            | Denial::Forbidden(reason)
            | Denial::ScopeDenied(reason)
            | Denial::BadRequest(reason)
            | Denial::UnsupportedMediaType(reason) => Some(reason),
            Denial::TooManyStreams => Some("too_many_streams"),
            _ => None,
        }
    }

    /// The JSON body: `{"error", "code", "details"}`.
    pub fn body(&self) -> Bytes {
        let details = match (self, self.reason()) {
            (
                Denial::RateLimited {
                    retry_after,
                    limit: Some(limit),
                    ..
                },
                _,
            ) => serde_json::json!({ "retry_after": retry_after, "limit": limit }),
            (Denial::RateLimited { retry_after, .. }, _) => {
                serde_json::json!({ "retry_after": retry_after })
            }
            (_, Some(r)) => serde_json::json!({ "reason": r }),
            _ => serde_json::json!({}),
        };
        let v = serde_json::json!({
            "error": self.message(),
            "code": self.code(),
            "details": details,
        });
        Bytes::from(serde_json::to_vec(&v).expect("json"))
    }

    /// The extra response header besides Content-Type/Length, if any.
    pub fn headers(&self) -> Option<(http::HeaderName, String)> {
        match self {
            Denial::Unauthenticated {
                www_authenticate, ..
            } => Some((
                http::header::WWW_AUTHENTICATE,
                www_authenticate
                    .clone()
                    .unwrap_or_else(|| "Bearer".to_string()),
            )),
            Denial::RateLimited { retry_after, .. } => {
                Some((http::header::RETRY_AFTER, retry_after.to_string()))
            }
            // a slot frees whenever a stream ends: try again shortly
            Denial::TooManyStreams => Some((http::header::RETRY_AFTER, "1".to_string())),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_the_contract_shape() {
        let v: serde_json::Value =
            serde_json::from_slice(&Denial::unauthenticated("expired").body()).unwrap();
        assert_eq!(v["code"], "UNAUTHENTICATED");
        assert_eq!(v["details"]["reason"], "expired");
        assert!(v["error"].is_string());
        let v: serde_json::Value = serde_json::from_slice(&Denial::AuthUnavailable.body()).unwrap();
        assert_eq!(v["details"], serde_json::json!({}));
    }
}
