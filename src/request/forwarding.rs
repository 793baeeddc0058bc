//! Forwarding headers (SPEC §4.1): who the client is and which scheme it
//! used, as the upstream learns it. The upstream sees keyward's socket, so
//! these headers must come from keyward — the socket peer and
//! `server.trusted_proxies` — never from the client. Pure: no pingora.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

pub use crate::request::headers::is_forwarding_header;
use crate::request::headers::single;

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// What keyward knows of the client of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// the socket peer
    pub peer: IpAddr,
    /// the peer is in `server.trusted_proxies`: its forwarding headers are believed
    pub peer_trusted: bool,
    /// the client IP: the peer, or the last untrusted `X-Forwarded-For` hop
    pub ip: IpAddr,
    /// `https` when keyward terminated TLS or a trusted peer said so, else `http`
    pub scheme: &'static str,
    /// `ip` is an address outside `server.trusted_proxies`: the client's
    /// own. False when a trusted proxy named no client, or the walk ended
    /// at a hop that does not parse (`ip:port`, `unknown`, brackets): then
    /// `ip` is a proxy's, and a key's `allowed_ips` cannot judge it.
    pub ip_known: bool,
}

impl Client {
    pub fn resolve(peer: IpAddr, tls: bool, headers: &HeaderMap, trusted: &[IpNet]) -> Client {
        let peer = peer.to_canonical();
        let peer_trusted = is_trusted(peer, trusted);
        if !peer_trusted {
            return Client {
                peer,
                peer_trusted,
                ip: peer,
                scheme: if tls { "https" } else { "http" },
                ip_known: true,
            };
        }
        // Lossy, not `to_str().ok()`: a line with one obs-text byte must not
        // vanish (a trusted proxy appends the real client to the client's
        // own line); the hop holding it just does not parse, and the walk
        // stops there (found by fuzz/forwarded_for).
        let lines: Vec<std::borrow::Cow<'_, str>> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()))
            .collect();
        let xff: Vec<&str> = lines.iter().map(|l| l.as_ref()).collect();
        let scheme = if tls {
            "https"
        } else {
            match single(headers, &X_FORWARDED_PROTO).map(HeaderValue::as_bytes) {
                Some(b"https") => "https",
                _ => "http",
            }
        };
        let ip = client_ip(peer, &xff, trusted);
        Client {
            peer,
            peer_trusted,
            ip,
            scheme,
            ip_known: !is_trusted(ip, trusted),
        }
    }

    /// The host the client addressed: a trusted peer's `X-Forwarded-Host`,
    /// else `Host`; `None` unless it is one plausible `host[:port]`.
    pub fn host<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        let v = if self.peer_trusted {
            single(headers, &X_FORWARDED_HOST).or_else(|| single(headers, &http::header::HOST))
        } else {
            single(headers, &http::header::HOST)
        }?;
        let s = v.to_str().ok()?;
        let ok = !s.is_empty()
            && s.len() <= 255
            && s.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
            });
        ok.then_some(s)
    }

    /// Write keyward's forwarding headers into the upstream's copy of the
    /// head, from which every client spelling was left out (SPEC §4.1).
    /// `down` is the client's head.
    pub fn write(&self, up: &mut HeaderMap, down: &HeaderMap) {
        let peer = ip_value(self.peer);
        let xff = if self.peer_trusted {
            let mut list: Vec<u8> = Vec::with_capacity(64);
            for v in down.get_all(&X_FORWARDED_FOR) {
                let v = v.as_bytes().trim_ascii();
                if !v.is_empty() {
                    list.extend_from_slice(v);
                    list.extend_from_slice(b", ");
                }
            }
            list.extend_from_slice(peer.as_bytes());
            HeaderValue::from_bytes(&list).unwrap_or_else(|_| peer.clone())
        } else {
            peer.clone()
        };
        up.insert(X_FORWARDED_FOR, xff);
        let real = if self.ip == self.peer {
            peer
        } else {
            ip_value(self.ip)
        };
        up.insert(X_REAL_IP, real);
        up.insert(X_FORWARDED_PROTO, HeaderValue::from_static(self.scheme));
        if self.peer_trusted {
            if let Some(h) = single(down, &X_FORWARDED_HOST) {
                up.insert(X_FORWARDED_HOST, h.clone());
            }
            for v in down.get_all(&FORWARDED) {
                up.append(FORWARDED, v.clone());
            }
        }
    }
}

fn ip_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_bytes(IpText::of(ip).as_bytes()).expect("an IP address is a header value")
}

/// An IP address as text, formatted without `fmt` for IPv4 (every request
/// writes the client's into `X-Forwarded-For`, `X-Real-IP` and the access
/// line; `Display` costs about a thousand instructions each time). IPv6
/// goes through `Display`, written into the same buffer.
pub struct IpText {
    buf: [u8; 64],
    len: usize,
}

impl IpText {
    pub fn of(ip: IpAddr) -> IpText {
        let mut t = IpText {
            buf: [0; 64],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.push(b'.');
                    }
                    if octet >= 100 {
                        t.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        t.push(b'0' + octet / 10 % 10);
                    }
                    t.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(v6) => {
                use std::io::Write;
                let mut cursor = std::io::Cursor::new(&mut t.buf[..]);
                // 45 bytes at most (RFC 4291 text with an embedded IPv4)
                let _ = write!(cursor, "{v6}");
                t.len = cursor.position() as usize;
            }
        }
        t
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Whether `ip` is in `server.trusted_proxies`.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(&ip))
}

/// The client IP (SPEC §4.1, §6): the socket peer, or — when the peer is a
/// trusted proxy — the last hop of `X-Forwarded-For` that is not itself
/// trusted.
pub fn client_ip(peer: IpAddr, xff: &[&str], trusted: &[IpNet]) -> IpAddr {
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let mut ip = peer;
    for hop in xff.iter().rev().flat_map(|h| h.rsplit(',')).map(str::trim) {
        match hop.parse::<IpAddr>() {
            Ok(h) => {
                let h = h.to_canonical();
                ip = h;
                if !is_trusted(h, trusted) {
                    return h;
                }
            }
            Err(_) => return ip,
        }
    }
    ip
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn every_spelling_of_a_forwarding_header_is_the_clients() {
        for n in [
            "x-forwarded-for",
            "x_forwarded_for",
            "x-real_ip",
            "forwarded",
            "x-forwarded-proto",
            "x_forwarded-host",
        ] {
            assert!(is_forwarding_header(n), "{n}");
        }
        for n in ["x-forwarded", "x-forwarded-fo", "x-forwarded-server"] {
            assert!(!is_forwarding_header(n), "{n}");
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client() {
        let peer: IpAddr = "192.0.2.9".parse().unwrap();
        let down = headers(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=1.2.3.4"),
            ("host", "api.example"),
        ]);
        let c = Client::resolve(peer, false, &down, &[]);
        assert_eq!((c.ip, c.scheme, c.peer_trusted), (peer, "http", false));
        assert_eq!(c.host(&down), Some("api.example"));
        let mut up = HeaderMap::new();
        c.write(&mut up, &down);
        assert_eq!(up["x-forwarded-for"], "192.0.2.9");
        assert_eq!(up["x-real-ip"], "192.0.2.9");
        assert_eq!(up["x-forwarded-proto"], "http");
        assert!(!up.contains_key("x-forwarded-host") && !up.contains_key("forwarded"));
        assert_eq!(Client::resolve(peer, true, &down, &[]).scheme, "https");
    }

    #[test]
    fn a_trusted_peer_is_believed() {
        let t: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.1.1.1".parse().unwrap();
        let down = headers(&[
            ("x-forwarded-for", "203.0.113.7, 10.2.2.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "api.example"),
            ("forwarded", "for=203.0.113.7"),
        ]);
        let c = Client::resolve(peer, false, &down, &t);
        assert_eq!(c.ip, "203.0.113.7".parse::<IpAddr>().unwrap());
        assert_eq!(c.scheme, "https");
        assert_eq!(c.host(&down), Some("api.example"));
        let mut up = HeaderMap::new();
        c.write(&mut up, &down);
        assert_eq!(up["x-forwarded-for"], "203.0.113.7, 10.2.2.2, 10.1.1.1");
        assert_eq!(up["x-real-ip"], "203.0.113.7");
        assert_eq!(up["x-forwarded-host"], "api.example");
        assert_eq!(up["forwarded"], "for=203.0.113.7");
        let odd = headers(&[("x-forwarded-proto", "ftp")]);
        assert_eq!(Client::resolve(peer, false, &odd, &t).scheme, "http");
    }

    #[test]
    fn a_non_ascii_byte_in_the_clients_part_keeps_the_appended_hop() {
        let t: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.append(
            X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"x\xff, 203.0.113.5").unwrap(),
        );
        let c = Client::resolve("10.0.0.1".parse().unwrap(), false, &h, &t);
        assert_eq!(c.ip, "203.0.113.5".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn xff_is_believed_only_from_trusted_peers() {
        let t: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(client_ip(other, &["1.2.3.4"], &t), other);
        assert_eq!(
            client_ip(peer, &["1.2.3.4, 5.6.7.8, 10.2.2.2"], &t),
            "5.6.7.8".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(peer, &["1.2.3.4", "5.6.7.8"], &t),
            "5.6.7.8".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(peer, &[], &t), peer);
        assert_eq!(client_ip(peer, &["garbage"], &t), peer);
    }

    #[test]
    fn hosts_must_be_plausible() {
        let c = Client::resolve("192.0.2.1".parse().unwrap(), false, &HeaderMap::new(), &[]);
        assert_eq!(
            c.host(&headers(&[("host", "a.example:8080")])),
            Some("a.example:8080")
        );
        assert_eq!(c.host(&headers(&[("host", "a\"b")])), None);
        assert_eq!(c.host(&headers(&[("host", "a/b")])), None);
        assert_eq!(c.host(&headers(&[("host", "a"), ("host", "b")])), None);
    }

    #[test]
    fn ip_text_is_display() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.9",
            "127.0.0.1",
            "203.0.113.77",
            "::1",
            "2001:db8::1",
            "::ffff:192.0.2.1",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
            "1234:5678:9abc:def0:1234:5678:9abc:def0",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::of(ip).as_bytes(), ip.to_string().as_bytes());
        }
        for n in (0..=u32::MAX).step_by(7_919_111) {
            let ip = IpAddr::from(n.to_be_bytes());
            assert_eq!(IpText::of(ip).as_bytes(), ip.to_string().as_bytes());
        }
    }
}
