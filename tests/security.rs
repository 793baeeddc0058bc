//! Adversarial requests (issue 8, SPEC §3–§5, §7): request smuggling, spoofed
//! identity headers, overlong and non-UTF-8 input, malformed Authorization
//! headers, and path tricks against route rules. Each test asserts the exact
//! refusal and what the upstream did (or did not) receive.
mod common;

#[path = "security/credentials.rs"]
mod credentials;
#[path = "security/identity.rs"]
mod identity;
#[path = "security/overlong.rs"]
mod overlong;
#[path = "security/paths.rs"]
mod paths;
#[path = "security/readings.rs"]
mod readings;
#[path = "security/smuggling.rs"]
mod smuggling;

use common::*;

/// `details.reason` of one of keyward's JSON errors.
pub fn reason(r: &Resp) -> String {
    r.json()["details"]["reason"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Two organizations: `org_a` (workspaces `ws_a1`, `ws_a2`) and `org_b`
/// (`ws_b`), an org-wide key of `org_a`, a key of `org_a` scoped to `ws_a1`.
pub struct World {
    pub snap: Snap,
    pub org_key: String,
    pub org_key_id: String,
    pub scoped_key: String,
    pub scoped_key_id: String,
}

impl Default for World {
    fn default() -> World {
        World::new()
    }
}

impl World {
    pub fn new() -> World {
        let snap = Snap::new();
        snap.org("org_a", "free")
            .org("org_b", "free")
            .workspace("ws_a1", "org_a")
            .workspace("ws_a2", "org_a")
            .workspace("ws_b", "org_b");
        let (org_key, org_key_id) = snap.api_key_full("org_a", None, None, None);
        let perms = r#"{"scope":"workspace","workspaceIds":["ws_a1"]}"#;
        let (scoped_key, scoped_key_id) = snap.api_key_full("org_a", Some(perms), None, None);
        World {
            snap,
            org_key,
            org_key_id,
            scoped_key,
            scoped_key_id,
        }
    }

    /// keyward in front of `upstream`; the plan is generous so limits never interfere.
    pub fn start(&self, upstream: std::net::SocketAddr) -> Keyward {
        let mut opts = Opts::new(upstream);
        opts.extra = "[plans.free]\nrequests_per_window = 1000000\n".into();
        Keyward::start(&self.snap, opts)
    }
}

/// `Authorization: Bearer …` header line.
pub fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

/// Assert the process is still running (no crash, no abort).
pub fn assert_alive(kw: &mut Keyward) {
    assert!(
        kw.child.try_wait().unwrap().is_none(),
        "keyward exited: {}",
        kw.log()
    );
}
