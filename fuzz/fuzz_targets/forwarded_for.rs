//! Forwarding headers (SPEC §4.1): socket peer + client `X-Forwarded-For` →
//! `forwarding::client_ip`, `Client::resolve` and `Client::write`. Input: a
//! flag byte (bit 0: IPv6 peer, bit 1: put the peer in a trusted range, bit
//! 2: an IPv4 peer written IPv4-mapped), the peer's 4 or 16 bytes, then
//! X-Forwarded-For values separated by `\n`.
//! Never panics. An untrusted peer is the client and the upstream hears only
//! keyward: `X-Forwarded-For` and `X-Real-IP` are the peer's address,
//! `X-Forwarded-Proto` is `http`, no `X-Forwarded-Host` or `Forwarded`. The
//! client IP is the peer or one of the hops the header lists (canonical), and
//! the written `X-Forwarded-For` always ends with the peer.
#![no_main]
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;
use keyward::forwarding::{
    client_ip, Client, FORWARDED, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REAL_IP,
};
use libfuzzer_sys::fuzz_target;

fn trusted() -> &'static [IpNet] {
    static T: OnceLock<Vec<IpNet>> = OnceLock::new();
    T.get_or_init(|| vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()])
}

/// Every hop any of the values lists, parsed and canonical (trimmed either
/// way: the oracle only needs a superset).
fn hops(values: &[&str]) -> Vec<IpAddr> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .flat_map(|h| [h.trim(), h.trim_matches(|c| c == ' ' || c == '\t')])
        .filter_map(|h| h.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let v6 = flags & 1 != 0;
    let n = if v6 { 16 } else { 4 };
    if rest.len() < n {
        return;
    }
    let (addr, xff) = rest.split_at(n);
    let mut peer = if v6 {
        IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(addr).unwrap()))
    } else {
        IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(addr).unwrap()))
    };
    if flags & 2 != 0 {
        // into 10.0.0.0/8 or fd00::/8
        peer = match peer {
            IpAddr::V4(a) => {
                let mut o = a.octets();
                o[0] = 10;
                IpAddr::V4(o.into())
            }
            IpAddr::V6(a) => {
                let mut o = a.octets();
                o[0] = 0xfd;
                IpAddr::V6(o.into())
            }
        };
    }
    if flags & 4 != 0 {
        // an IPv4 peer as an IPv4-mapped IPv6 address (dual-stack listener)
        if let IpAddr::V4(a) = peer {
            peer = IpAddr::V6(a.to_ipv6_mapped());
        }
    }
    let trusted = trusted();
    let canon = peer.to_canonical();
    let canon_trusted = trusted.iter().any(|n| n.contains(&canon));

    // client_ip on the raw text, as the rate limiter may call it
    if let Ok(text) = std::str::from_utf8(xff) {
        let values: Vec<&str> = text.split('\n').collect();
        let ip = client_ip(peer, &values, trusted);
        if !trusted.iter().any(|n| n.contains(&peer)) {
            assert_eq!(ip, peer, "untrusted peer {peer} gave {ip}");
        }
        assert!(
            ip == peer || hops(&values).contains(&ip),
            "{ip} is neither the peer {peer} nor a hop of {values:?}"
        );
        let one = client_ip(peer, &[text], trusted);
        assert!(one == peer || hops(&[text]).contains(&one));
    }

    // Client::resolve + write on a client head
    let mut down = HeaderMap::new();
    for v in xff.split(|&b| b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            down.append(X_FORWARDED_FOR, v);
        }
    }
    down.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    down.insert(X_FORWARDED_HOST, HeaderValue::from_static("evil.example"));
    down.insert(FORWARDED, HeaderValue::from_static("for=192.0.2.1"));
    down.insert(X_REAL_IP, HeaderValue::from_static("192.0.2.2"));
    let client = Client::resolve(peer, false, &down, trusted);
    assert_eq!(client.peer, canon);
    assert_eq!(client.peer_trusted, canon_trusted);
    // Read lossily, as `resolve` does: a line with one obs-text byte keeps
    // its other hops (the trusted proxy's appended one above all).
    let lines: Vec<String> = down
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    let values: Vec<&str> = lines.iter().map(String::as_str).collect();
    assert!(
        client.ip == canon || hops(&values).contains(&client.ip),
        "{} is neither the peer {canon} nor a hop of {values:?}",
        client.ip
    );
    assert_eq!(client.ip, client_ip(canon, &values, trusted));

    let mut up = HeaderMap::new();
    client.write(&mut up, &down);
    let peer_text = canon.to_string();
    // A trusted proxy's list is passed on as sent, obs-text included: bytes.
    let one = |name: &http::HeaderName| -> String {
        let mut all = up.get_all(name).iter();
        let v = all.next().unwrap_or_else(|| panic!("no {name} written"));
        assert!(all.next().is_none(), "{name} written twice");
        String::from_utf8_lossy(v.as_bytes()).into_owned()
    };
    let xff_up = one(&X_FORWARDED_FOR);
    assert!(
        xff_up == peer_text || xff_up.ends_with(&format!(", {peer_text}")),
        "X-Forwarded-For {xff_up:?} does not end with the peer {peer_text}"
    );
    assert_eq!(one(&X_REAL_IP), client.ip.to_string());
    if canon_trusted {
        assert_eq!(one(&X_FORWARDED_PROTO), "https");
    } else {
        assert_eq!(client.ip, canon);
        assert_eq!(client.scheme, "http");
        assert_eq!(xff_up, peer_text);
        assert_eq!(one(&X_REAL_IP), peer_text);
        assert_eq!(one(&X_FORWARDED_PROTO), "http");
        assert!(!up.contains_key(X_FORWARDED_HOST) && !up.contains_key(FORWARDED));
    }
});
