//! Who the client is. Directly connected, it is the socket's peer. Behind load
//! balancers listed in `[server] trusted_proxies`, it is the right-most address in the
//! field they write (`forwarded_field`: `X-Forwarded-For`, or `Forwarded: for=`; the
//! other is never read, as the proxy passes it on as the client sent it) that is not one
//! of them: each trusted hop appended the address it saw, and anything left of the first
//! untrusted one was written by the client itself. From any other peer those fields are
//! ignored (and replaced when forwarding). The guard, the access log and the forwarded
//! `X-Forwarded-For` use the result.

use crate::config::trusted::{Cidr, ForwardedField};
use http::header::FORWARDED;
use http::HeaderMap;
use std::net::IpAddr;

const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// The client's address for a request from `peer`. An IPv4 address written as IPv6
/// (`::ffff:192.0.2.1`, a dual-stack socket's or a hop's) is taken as the IPv4 address,
/// so one client has one address in the guard, the logs and the forwarded fields.
pub fn address(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr], field: ForwardedField) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if trusted.is_empty() || !is_trusted(peer) {
        return peer;
    }
    let hops: Vec<&str> = match field {
        ForwardedField::XForwardedFor => headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect(),
        ForwardedField::Forwarded => forwarded_for(headers),
    };
    let mut client = peer;
    for hop in hops.iter().rev() {
        match parse_hop(hop) {
            Some(ip) if is_trusted(ip) => client = ip,
            Some(ip) => return ip,
            // An unreadable hop: nothing left of it can be believed.
            None => return client,
        }
    }
    client
}

/// The `for=` values of `Forwarded` (RFC 7239), in order.
fn forwarded_for(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
            })
        })
        .collect()
}

/// An address as a hop writes it: `203.0.113.7`, `"[2001:db8::1]:4711"`, `1.2.3.4:80`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim().trim_matches('"');
    let ip = if let Ok(ip) = hop.parse::<IpAddr>() {
        Some(ip)
    } else if let Some(rest) = hop.strip_prefix('[') {
        rest.split(']').next()?.parse().ok()
    } else {
        hop.rsplit_once(':').and_then(|(ip, _port)| ip.parse().ok())
    };
    ip.map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    const XFF: ForwardedField = ForwardedField::XForwardedFor;

    /// Only the configured field is read: a proxy writing one passes the other on as
    /// the client sent it (found by the sixth outside attack: with both present,
    /// `X-Forwarded-For` won, and a client behind a `Forwarded` proxy chose its address).
    #[test]
    fn only_the_field_the_proxies_write_is_read() {
        let trusted = [Cidr::parse("127.0.0.1").unwrap()];
        let lb: IpAddr = "127.0.0.1".parse().unwrap();
        let both = headers(&[("x-forwarded-for", "9.9.9.9"), ("forwarded", "for=10.0.0.77")]);
        assert_eq!(address(lb, &both, &trusted, ForwardedField::Forwarded), "10.0.0.77".parse::<IpAddr>().unwrap());
        assert_eq!(address(lb, &both, &trusted, XFF), "9.9.9.9".parse::<IpAddr>().unwrap());
        // The configured field absent: the proxy itself, never the other field.
        let only_xff = headers(&[("x-forwarded-for", "9.9.9.9")]);
        assert_eq!(address(lb, &only_xff, &trusted, ForwardedField::Forwarded), lb);
        let only_fwd = headers(&[("forwarded", "for=9.9.9.9")]);
        assert_eq!(address(lb, &only_fwd, &trusted, XFF), lb);
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap(), Cidr::parse("127.0.0.1").unwrap()];
        let lb: IpAddr = "10.0.0.5".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let xff = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.9")]);
        assert_eq!(address(lb, &xff, &trusted, XFF), ip("198.51.100.7"), "the spoofed left part is ignored");
        assert_eq!(
            address(ip("203.0.113.1"), &xff, &trusted, XFF),
            ip("203.0.113.1"),
            "an untrusted peer's field is ignored"
        );
        assert_eq!(address(lb, &HeaderMap::new(), &[], XFF), lb);
        let fwd = headers(&[("forwarded", "for=192.0.2.60;proto=http, for=\"[2001:db8:cafe::17]:4711\"")]);
        assert_eq!(address(lb, &fwd, &trusted, ForwardedField::Forwarded), ip("2001:db8:cafe::17"));
        let garbage = headers(&[("x-forwarded-for", "198.51.100.7, garbage, 10.0.0.9")]);
        assert_eq!(address(lb, &garbage, &trusted, XFF), ip("10.0.0.9"));
        let all_trusted = headers(&[("x-forwarded-for", "10.1.1.1, 10.2.2.2")]);
        assert_eq!(address(lb, &all_trusted, &trusted, XFF), ip("10.1.1.1"));
        // IPv4 written as IPv6, in a hop or as the peer: the IPv4 address.
        let mapped = headers(&[("x-forwarded-for", "198.51.100.7, ::ffff:10.0.0.9")]);
        assert_eq!(address(lb, &mapped, &trusted, XFF), ip("198.51.100.7"));
        let mapped = headers(&[("x-forwarded-for", "::ffff:198.51.100.7")]);
        assert_eq!(address(lb, &mapped, &trusted, XFF), ip("198.51.100.7"));
        assert_eq!(address(ip("::ffff:10.0.0.5"), &xff, &trusted, XFF), ip("198.51.100.7"));
        assert_eq!(address(ip("::ffff:203.0.113.1"), &xff, &trusted, XFF), ip("203.0.113.1"));
    }
}
