//! `[server] trusted_proxies`: the addresses (CIDR blocks) whose `X-Forwarded-For` and
//! `Forwarded` fields the gateway believes (see `server::client`).

use super::errors::ConfigErrors;
use std::net::IpAddr;

/// An address block: `10.0.0.0/8`, `::1/128`, or a bare address (the whole width).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR[/PREFIX]`.
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.trim().parse::<IpAddr>().ok()?, Some(p.trim().parse::<u8>().ok()?)),
            None => (text.trim().parse::<IpAddr>().ok()?, None),
        };
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(width);
        (prefix <= width).then_some(Cidr { addr, prefix })
    }

    /// Whether `ip` is in the block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), 32, self.prefix) == masked(u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), 128, self.prefix) == masked(u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

fn masked(bits: u128, width: u8, prefix: u8) -> u128 {
    match width - prefix {
        w if w >= 128 => 0,
        shift => bits >> shift,
    }
}

/// The one field the trusted proxies write the client's address into (`[server]
/// forwarded_field`); the other is never read. A proxy writes one of them and passes the
/// other on as the client sent it, so reading whichever is present (or both) would let
/// a client pick its own address for the guard, the log and the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedField {
    /// `X-Forwarded-For` (HAProxy's `option forwardfor`, nginx, Envoy, cloud balancers).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=` (RFC 7239).
    Forwarded,
}

/// Reads `forwarded_field` (default `"x-forwarded-for"`).
pub fn field(raw: Option<&str>, errs: &mut ConfigErrors) -> Option<ForwardedField> {
    match raw.map(str::to_ascii_lowercase).as_deref() {
        None | Some("x-forwarded-for") => Some(ForwardedField::XForwardedFor),
        Some("forwarded") => Some(ForwardedField::Forwarded),
        Some(_) => {
            errs.push("server.forwarded_field", "must be \"x-forwarded-for\" or \"forwarded\"");
            None
        }
    }
}

/// Compiles the list; every entry that does not parse is reported.
pub fn compile(list: &[String], errs: &mut ConfigErrors) -> Vec<Cidr> {
    list.iter()
        .enumerate()
        .filter_map(|(i, text)| {
            let cidr = Cidr::parse(text);
            if cidr.is_none() {
                errs.push(
                    format!("server.trusted_proxies[{i}]"),
                    "not an address or CIDR block (the value is not shown)",
                );
            }
            cidr
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_contain_their_addresses() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("203.0.113.9".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(!Cidr::parse("127.0.0.1").unwrap().contains("127.0.0.2".parse().unwrap()));
        for bad in ["10.0.0.0/33", "::/129", "gateway", "10.0.0/8", ""] {
            assert!(Cidr::parse(bad).is_none(), "{bad}");
        }
    }
}
