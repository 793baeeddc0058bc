//! `preset = "betterauth"` (SPEC §9): BetterAuth's own tables as its
//! Postgres migrations create them — core `session`, the organization
//! plugin's `organization` (and `session."activeOrganizationId"`), the
//! api-key plugin's `apikey` — mapped to snapshot tables. Identifiers are
//! BetterAuth's camelCase, quoted.
//!
//! * `session.token` is the token in clear: sync hashes it (`plain`).
//! * `apikey.key` is `base64url(sha256(key))` without padding (the
//!   plugin's default hasher): converted to hex. `enabled = false` →
//!   revoked (at `updatedAt`); `expiresAt` → `expires_at`; the plugin's
//!   `rateLimitMax` per `rateLimitTimeWindow` (milliseconds) becomes the
//!   §6.1 `rate_limit` when the window is keyward's `window_s` (default
//!   60 s; another window cannot be expressed and is left to the
//!   organization's limit).
//! * BetterAuth 1.3/1.4 ties a key to its user only. A key belongs to the
//!   organization its `metadata` (JSON text) names at the top level
//!   (`{"organizationId": "…"}`, what the app passes to `createApiKey`), and
//!   only while the key's user is a `member` of that organization; any
//!   other key (no or malformed metadata, not a member) is left out
//!   (answered 401), never bound to a guessed organization. A membership
//!   change re-reads the key table.
//! * Plans: `[preset] plan_query` (`SELECT id, plan FROM …`), else every
//!   organization is on the `default` plan.

use super::config::{Derive, HashEncoding, Table};

fn q(schema: &str, table: &str) -> String {
    format!("\"{}\".\"{}\"", schema.replace('"', "\"\""), table)
}

pub fn betterauth(schema: &str, plan_query: Option<&str>, window_s: u64) -> Vec<Table> {
    let session = q(schema, "session");
    let organization = q(schema, "organization");
    let apikey = q(schema, "apikey");
    let member = q(schema, "member");
    let window_ms = window_s.saturating_mul(1000);
    let plan = match plan_query {
        Some(pq) => format!(
            "COALESCE((SELECT p.plan FROM ({pq}) AS p WHERE p.id = o.id LIMIT 1), 'default')"
        ),
        None => "'default'".into(),
    };
    vec![
        Table {
            name: "organizations".into(),
            query: format!("SELECT o.id::text AS id, {plan}::text AS plan FROM {organization} AS o"),
            hash: None,
            watch: vec!["organization".into()],
            watch_all: vec![],
            derive: None,
        },
        Table {
            name: "sessions".into(),
            query: format!(
                "SELECT s.id::text AS id, s.token AS token_hash, s.\"userId\"::text AS user_id, \
                 CASE WHEN EXISTS (SELECT 1 FROM {member} AS m WHERE m.\"userId\" = s.\"userId\" \
                      AND m.\"organizationId\" = s.\"activeOrganizationId\") \
                      THEN s.\"activeOrganizationId\"::text END AS active_organization_id, \
                 floor(extract(epoch FROM s.\"expiresAt\"))::bigint AS expires_at \
                 FROM {session} AS s"
            ),
            hash: Some(("token_hash", HashEncoding::Plain)),
            watch: vec!["session".into()],
            watch_all: vec!["member".into()],
            derive: None,
        },
        Table {
            name: "api_keys".into(),
            query: format!(
                "SELECT k.id::text AS id, k.metadata AS organization_id, \
                 (SELECT string_agg(m.\"organizationId\"::text, ',') FROM {member} AS m \
                  WHERE m.\"userId\" = k.\"userId\") AS _members, \
                 k.key AS key_hash, left(coalesce(k.start, k.prefix), 8) AS key_prefix, \
                 NULL::text AS permissions, \
                 floor(extract(epoch FROM k.\"expiresAt\"))::bigint AS expires_at, \
                 CASE WHEN k.enabled IS FALSE OR k.remaining <= 0 \
                      THEN floor(extract(epoch FROM k.\"updatedAt\"))::bigint END AS revoked_at, \
                 CASE WHEN k.\"rateLimitEnabled\" IS TRUE AND k.\"rateLimitTimeWindow\" = {window_ms} \
                      THEN k.\"rateLimitMax\"::bigint END AS rate_limit \
                 FROM {apikey} AS k"
            ),
            hash: Some(("key_hash", HashEncoding::Base64Url)),
            watch: vec!["apikey".into()],
            watch_all: vec!["member".into()],
            derive: Some(Derive::BetterAuthKeyOrganization),
        },
    ]
}
