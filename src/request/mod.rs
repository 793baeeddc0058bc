//! What keyward reads of a request before deciding anything, shared by the
//! decision core and the shell: the header names keyward owns and how a
//! header is read (one value, another spelling), and who the client is
//! (socket peer, trusted proxies, scheme — SPEC §4.1). Pure: no pingora, no
//! policy.

pub mod forwarding;
pub mod headers;
pub mod method;
pub mod proxy_protocol;
