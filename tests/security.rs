//! Adversarial requests (issue 8, SPEC §3–§5, §7): request smuggling, spoofed
//! identity headers, overlong and non-UTF-8 input, malformed Authorization
//! headers, and path tricks against route rules. Each test asserts the exact
//! refusal and what the upstream did (or did not) receive. The world is
//! `common::World`: `org_a` (`ws_a1`, `ws_a2`), `org_b` (`ws_b`), an
//! org-wide key and a key scoped to `ws_a1`.
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
#[path = "security/transport.rs"]
mod transport;

use common::*;
