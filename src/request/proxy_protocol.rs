//! The PROXY protocol header (HAProxy's spec, versions 1 and 2; SPEC §8.3),
//! parsed from the first bytes of a connection. Pure: the shell reads the
//! bytes and asks [`parse`] how many more it needs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12 bytes a version 2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest version 1 line, CRLF included.
pub const V1_MAX: usize = 107;
/// Longest version 2 header keyward takes (16 + addresses + TLVs): a
/// bound on what an unread header can make it buffer.
pub const V2_MAX: usize = 16 + 1024;

/// `server.proxy_protocol` (the config's type: config is the lowest layer).
pub use crate::config::ProxyVersion as Version;

/// What the first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// read at least this many bytes in all before asking again
    Need(usize),
    /// a complete header of `len` bytes; `source` is the client it names,
    /// None for `LOCAL` (a balancer's health check), `UNKNOWN` or an
    /// unspecified family: the socket peer stays the client
    Header {
        len: usize,
        source: Option<SocketAddr>,
    },
    /// not a header this listener takes: close without a response
    Invalid,
}

/// Whether `prefix` (at least 12 bytes, or the whole of a shorter first
/// read) begins a PROXY header of any version.
pub fn looks_like_header(prefix: &[u8]) -> bool {
    let n = prefix.len().min(12);
    prefix[..n] == V2_SIGNATURE[..n]
        || prefix[..prefix.len().min(6)] == b"PROXY "[..prefix.len().min(6)]
}

/// Parse the start of a connection.
pub fn parse(buf: &[u8], version: Version) -> Parsed {
    if buf.is_empty() {
        return Parsed::Need(1);
    }
    let v2 = buf[..buf.len().min(12)] == V2_SIGNATURE[..buf.len().min(12)];
    let v1 = buf[..buf.len().min(6)] == b"PROXY "[..buf.len().min(6)];
    match (v1, v2, version) {
        (true, _, Version::V1 | Version::Any) => parse_v1(buf),
        (_, true, Version::V2 | Version::Any) => parse_v2(buf),
        _ => Parsed::Invalid,
    }
}

fn parse_v1(buf: &[u8]) -> Parsed {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Parsed::Invalid
        } else {
            Parsed::Need(buf.len() + 1)
        };
    };
    let len = end + 2;
    if len > V1_MAX {
        return Parsed::Invalid;
    }
    let Ok(line) = std::str::from_utf8(&buf[..end]) else {
        return Parsed::Invalid;
    };
    let mut parts = line.split(' ');
    if parts.next() != Some("PROXY") {
        return Parsed::Invalid;
    }
    match parts.next() {
        // anything may follow UNKNOWN; the peer stays the client
        Some("UNKNOWN") => Parsed::Header { len, source: None },
        Some(proto @ ("TCP4" | "TCP6")) => {
            let fields: Vec<&str> = parts.collect();
            let [src, dst, sport, dport] = fields[..] else {
                return Parsed::Invalid;
            };
            let ip = |s: &str| -> Option<IpAddr> {
                match proto {
                    "TCP4" => s.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
                    _ => s.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
                }
            };
            let port = |s: &str| -> Option<u16> {
                let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
                let canonical = s == "0" || !s.starts_with('0');
                (digits && canonical && s.len() <= 5)
                    .then(|| s.parse().ok())
                    .flatten()
            };
            match (ip(src), ip(dst), port(sport), port(dport)) {
                (Some(src), Some(_), Some(sport), Some(_)) => Parsed::Header {
                    len,
                    source: Some(SocketAddr::new(src, sport)),
                },
                _ => Parsed::Invalid,
            }
        }
        _ => Parsed::Invalid,
    }
}

fn parse_v2(buf: &[u8]) -> Parsed {
    if buf.len() < 16 {
        return Parsed::Need(16);
    }
    let (ver_cmd, fam) = (buf[12], buf[13]);
    if ver_cmd >> 4 != 2 {
        return Parsed::Invalid;
    }
    let body = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    let len = 16 + body;
    if len > V2_MAX {
        return Parsed::Invalid;
    }
    if buf.len() < len {
        return Parsed::Need(len);
    }
    let addr = &buf[16..len];
    match ver_cmd & 0x0f {
        // LOCAL: the balancer's own connection (health checks)
        0x0 => Parsed::Header { len, source: None },
        0x1 => match fam {
            // UNSPEC: no address information, the peer stays the client
            0x00 => Parsed::Header { len, source: None },
            // TCP over IPv4: src(4) dst(4) sport(2) dport(2)
            0x11 if addr.len() >= 12 && tlvs_fit(&addr[12..]) => {
                let ip = Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]);
                let port = u16::from_be_bytes([addr[8], addr[9]]);
                Parsed::Header {
                    len,
                    source: Some(SocketAddr::new(IpAddr::V4(ip), port)),
                }
            }
            // TCP over IPv6: src(16) dst(16) sport(2) dport(2)
            0x21 if addr.len() >= 36 && tlvs_fit(&addr[36..]) => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&addr[..16]);
                let port = u16::from_be_bytes([addr[32], addr[33]]);
                Parsed::Header {
                    len,
                    source: Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port)),
                }
            }
            // UDP, unix sockets, short address blocks: not a TCP client
            _ => Parsed::Invalid,
        },
        _ => Parsed::Invalid,
    }
}

/// The TLVs after the addresses fill the header exactly (each type, a
/// 2-byte length, that many bytes): one that claims more is malformed.
fn tlvs_fit(mut rest: &[u8]) -> bool {
    while !rest.is_empty() {
        if rest.len() < 3 {
            return false;
        }
        let n = u16::from_be_bytes([rest[1], rest[2]]) as usize;
        if rest.len() < 3 + n {
            return false;
        }
        rest = &rest[3 + n..];
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, fam: u8, addr: &[u8]) -> Vec<u8> {
        let mut b = V2_SIGNATURE.to_vec();
        b.push(0x20 | cmd);
        b.push(fam);
        b.extend_from_slice(&(addr.len() as u16).to_be_bytes());
        b.extend_from_slice(addr);
        b
    }

    #[test]
    fn version_1_lines() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(line, Version::V1),
            Parsed::Header {
                len: 43,
                source: Some("203.0.113.7:56324".parse().unwrap())
            }
        );
        let six = b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n";
        assert!(
            matches!(parse(six, Version::Any), Parsed::Header { source: Some(s), .. } if s.ip().to_string() == "2001:db8::1")
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN whatever\r\n", Version::V1),
            Parsed::Header {
                len: 24,
                source: None
            }
        );
        assert_eq!(parse(b"PROXY TCP4 1.2", Version::V1), Parsed::Need(15));
        for bad in [
            &b"PROXY TCP4 203.0.113.7 10.0.0.1 56324\r\n"[..],
            b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 1\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 1\r\n",
            b"PROXY TCP4 01.2.3.4 5.6.7.8 1 1\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 1\r\n",
            b"proxy TCP4 1.2.3.4 5.6.7.8 1 1\r\n",
            b"GET / HTTP/1.1\r\n",
        ] {
            assert_eq!(
                parse(bad, Version::Any),
                Parsed::Invalid,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 120]].concat();
        assert_eq!(parse(&long, Version::V1), Parsed::Invalid);
        // the version the listener takes
        assert_eq!(parse(line, Version::V2), Parsed::Invalid);
    }

    #[test]
    fn version_2_headers() {
        let mut addr = vec![203, 0, 113, 7, 10, 0, 0, 1];
        addr.extend_from_slice(&56324u16.to_be_bytes());
        addr.extend_from_slice(&443u16.to_be_bytes());
        let h = v2(1, 0x11, &addr);
        assert_eq!(
            parse(&h, Version::V2),
            Parsed::Header {
                len: 28,
                source: Some("203.0.113.7:56324".parse().unwrap())
            }
        );
        assert_eq!(parse(&h[..10], Version::V2), Parsed::Need(16));
        assert_eq!(parse(&h[..20], Version::Any), Parsed::Need(28));
        // TLVs after the addresses are skipped
        let mut with_tlv = addr.clone();
        with_tlv.extend_from_slice(&[0x04, 0, 1, 0xff]);
        assert!(matches!(
            parse(&v2(1, 0x11, &with_tlv), Version::V2),
            Parsed::Header { len: 32, .. }
        ));
        // a TLV claiming more than the header holds
        let mut overrun = addr.clone();
        overrun.extend_from_slice(&[0x01, 0x00, 0x09, b'h', b'2']);
        assert_eq!(parse(&v2(1, 0x11, &overrun), Version::V2), Parsed::Invalid);
        assert_eq!(
            parse(&v2(0, 0x00, &[]), Version::V2),
            Parsed::Header {
                len: 16,
                source: None
            }
        );
        assert_eq!(
            parse(&v2(1, 0x00, &[]), Version::V2),
            Parsed::Header {
                len: 16,
                source: None
            }
        );
        let mut six = vec![0u8; 36];
        six[0] = 0x20;
        six[1] = 0x01;
        six[32] = 1;
        assert!(
            matches!(parse(&v2(1, 0x21, &six), Version::V2), Parsed::Header { source: Some(s), .. } if s.port() == 256)
        );
        for bad in [
            v2(1, 0x11, &addr[..8]), // short address block
            v2(1, 0x12, &addr),      // UDP
            v2(1, 0x31, &[0; 216]),  // unix
            v2(2, 0x11, &addr),      // unknown command
        ] {
            assert_eq!(parse(&bad, Version::V2), Parsed::Invalid);
        }
        let mut v3 = h.clone();
        v3[12] = 0x31;
        assert_eq!(parse(&v3, Version::V2), Parsed::Invalid);
        let mut huge = h.clone();
        huge[14..16].copy_from_slice(&60000u16.to_be_bytes());
        assert_eq!(parse(&huge, Version::V2), Parsed::Invalid);
        assert_eq!(parse(&h, Version::V1), Parsed::Invalid);
    }

    #[test]
    fn a_header_is_recognised_from_its_first_bytes() {
        assert!(looks_like_header(b"PROXY TCP4 "));
        assert!(looks_like_header(&V2_SIGNATURE));
        assert!(!looks_like_header(b"GET / HTTP/1.1"));
        assert!(!looks_like_header(&[
            0x16, 3, 1, 0, 0xa5, 1, 0, 0, 0xa1, 3, 3, 0
        ]));
    }
}
