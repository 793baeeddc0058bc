//! The one world builder: a snapshot with two organizations, their
//! workspaces and two API keys, and keyward started in front of it.

use std::net::SocketAddr;

use super::{Keyward, Opts, Snap};

/// Two organizations on the `free` plan: `org_a` (workspaces `ws_a1`,
/// `ws_a2`) and `org_b` (`ws_b`), an org-wide key of `org_a`, and a key of
/// `org_a` scoped to `ws_a1`. Tests add what else they need through `snap`.
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
    pub fn start(&self, upstream: SocketAddr) -> Keyward {
        self.start_with(Opts::new(upstream))
    }

    /// keyward started with `opts`, with the generous plan unless `opts`
    /// sets `plans.free` itself.
    pub fn start_with(&self, opts: Opts) -> Keyward {
        Keyward::start(&self.snap, opts.generous_plan())
    }
}
