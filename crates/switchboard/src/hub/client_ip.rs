//! The client's address, seen through the reverse proxies the hub trusts, and the key
//! its connections are counted under for
//! [`HubConfig::max_connections_per_ip`](super::HubConfig::max_connections_per_ip).

use http::{HeaderMap, HeaderName, header};
use std::{
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    str::FromStr,
};

/// A block of addresses, `10.0.0.0/8` or `2001:db8::/32`, or one address (`127.0.0.1`,
/// `::1`): where the reverse proxies in
/// [`HubConfig::trusted_proxies`](super::HubConfig::trusted_proxies) are.
///
/// ```
/// use switchboard::hub::IpNet;
///
/// let net: IpNet = "10.0.0.0/8".parse().unwrap();
/// assert!(net.contains("10.1.2.3".parse().unwrap()));
/// assert!(!net.contains("11.0.0.1".parse().unwrap()));
/// let one: IpNet = "::1".parse().unwrap();
/// assert!(one.contains("::1".parse().unwrap()));
/// assert!("10.0.0.0/33".parse::<IpNet>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

/// Why a string is not an [`IpNet`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IpNetError {
    /// The part before the `/` is not an IP address.
    #[error("not an ip address")]
    Address,
    /// The prefix length is not a number of bits the address has.
    #[error("prefix length out of range")]
    Prefix,
}

impl IpNet {
    /// The addresses whose first `prefix` bits are those of `addr`; an IPv4 address
    /// mapped into IPv6 (`::ffff:10.0.0.1`) is taken as the IPv4 address.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, IpNetError> {
        let addr = addr.to_canonical();
        let prefix = match addr {
            IpAddr::V4(_) if prefix <= 32 => prefix,
            IpAddr::V6(_) if prefix <= 128 => prefix,
            _ => return Err(IpNetError::Prefix),
        };
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` is in this block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (net, ip, bits) = match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => (u32::from(net).into(), u32::from(ip).into(), 32),
            (IpAddr::V6(net), IpAddr::V6(ip)) => (u128::from(net), u128::from(ip), 128),
            _ => return false,
        };
        let differ: u128 = net ^ ip;
        differ
            .checked_shr(bits - u32::from(self.prefix))
            .unwrap_or(0)
            == 0
    }
}

impl From<IpAddr> for IpNet {
    /// The one address.
    fn from(addr: IpAddr) -> Self {
        let addr = addr.to_canonical();
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        Self { addr, prefix }
    }
}

impl FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(s: &str) -> Result<Self, IpNetError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| IpNetError::Address)?;
        match prefix {
            None => Ok(addr.into()),
            Some(prefix) => Self::new(addr, prefix.parse().map_err(|_| IpNetError::Prefix)?),
        }
    }
}

impl fmt::Debug for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The header a trusted reverse proxy names the client in.
///
/// Only one is read: a proxy that appends to one passes the other through from the
/// client untouched, and an address the client wrote there would be believed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`: what nginx
    /// (`$proxy_add_x_forwarded_for`), HAProxy (`option forwardfor`), AWS and Google
    /// load balancers, Cloudflare and Traefik write.
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239), the standard form; its `for=`
    /// parameters are read.
    Forwarded,
}

impl ProxyHeader {
    fn name(self) -> HeaderName {
        match self {
            Self::XForwardedFor => HeaderName::from_static("x-forwarded-for"),
            Self::Forwarded => header::FORWARDED,
        }
    }

    /// Every line of this header in `headers`, as one list (RFC 9110 §5.3: lines of a
    /// list header combine in order, separated by commas).
    pub(crate) fn read(self, headers: &HeaderMap) -> Option<String> {
        let lines: Vec<&str> = headers
            .get_all(self.name())
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!lines.is_empty()).then(|| lines.join(","))
    }

    /// The address one hop of the list names, `None` when it names none (`unknown`,
    /// an obfuscated name, garbage).
    fn hop(self, element: &str) -> Option<SocketAddr> {
        let node = match self {
            Self::XForwardedFor => element.trim(),
            Self::Forwarded => forwarded_for(element)?,
        };
        let node = node.trim_matches('"');
        if let Ok(ip) = node.parse::<IpAddr>() {
            return Some(SocketAddr::new(ip.to_canonical(), 0));
        }
        if let Ok(addr) = node.parse::<SocketAddr>() {
            return Some(SocketAddr::new(addr.ip().to_canonical(), addr.port()));
        }
        // RFC 7239 §6: an IPv6 address is in brackets, with or without a port.
        let bracketed = node.strip_prefix('[')?.strip_suffix(']')?;
        Some(SocketAddr::new(
            bracketed.parse::<Ipv6Addr>().ok()?.into(),
            0,
        ))
    }
}

/// The `for=` value of one element of a `Forwarded` header (RFC 7239 §4).
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        name.eq_ignore_ascii_case("for").then_some(value)
    })
}

/// The client's address: `peer` itself, unless `peer` is a trusted proxy and `forwarded`
/// (the list its header carried, client first) names someone further out. Then it is
/// the rightmost hop that is not a trusted proxy: everything left of it was written by
/// someone no trusted proxy vouches for. A hop that names no address stops the walk at
/// the last address known. The port is the header's, or 0 when it gives none (as
/// `X-Forwarded-For` never does).
pub(crate) fn client_addr(
    peer: SocketAddr,
    forwarded: Option<&str>,
    trusted: &[IpNet],
    header: ProxyHeader,
) -> SocketAddr {
    let is_trusted = |addr: &SocketAddr| trusted.iter().any(|net| net.contains(addr.ip()));
    let (true, Some(forwarded)) = (is_trusted(&peer), forwarded) else {
        return peer;
    };
    let mut client = peer;
    for element in forwarded.rsplit(',') {
        match header.hop(element) {
            Some(hop) if is_trusted(&hop) => client = hop,
            Some(hop) => return hop,
            None => return client,
        }
    }
    client
}

/// The key a client's connections are counted under: its IPv4 address, or the /64 of
/// its IPv6 address. An IPv6 host gets a /64 of its own to pick addresses from (RFC
/// 4291 §2.5.1, RFC 8981 privacy addresses), so counting single addresses would not
/// bound it; nginx's and Cloudflare's per-client limits count the /64 too.
pub(crate) fn counted_as(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::MAX >> 64))),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 4000)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_contain_their_addresses() {
        let v4: IpNet = "192.168.0.0/16".parse().unwrap();
        assert!(v4.contains(ip("192.168.255.1")));
        assert!(v4.contains(ip("::ffff:192.168.1.1")), "mapped IPv4");
        assert!(!v4.contains(ip("192.169.0.1")));
        assert!(!v4.contains(ip("::1")));
        let all: IpNet = "::/0".parse().unwrap();
        assert!(all.contains(ip("2001:db8::1")));
        assert!(
            "0.0.0.0/0"
                .parse::<IpNet>()
                .unwrap()
                .contains(ip("8.8.8.8"))
        );
        let v6: IpNet = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert_eq!("x/8".parse::<IpNet>(), Err(IpNetError::Address));
        assert_eq!("::/129".parse::<IpNet>(), Err(IpNetError::Prefix));
        assert_eq!("1.2.3.4/x".parse::<IpNet>(), Err(IpNetError::Prefix));
        assert_eq!(v4.to_string(), "192.168.0.0/16");
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let trusted = nets(&["10.0.0.0/8"]);
        let header = ProxyHeader::XForwardedFor;
        let got = client_addr(peer("203.0.113.9"), Some("1.2.3.4"), &trusted, header);
        assert_eq!(got, peer("203.0.113.9"));
        let got = client_addr(peer("10.0.0.1"), Some("1.2.3.4"), &[], header);
        assert_eq!(got, peer("10.0.0.1"), "nothing trusted");
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop() {
        let trusted = nets(&["10.0.0.0/8", "127.0.0.1"]);
        let xff = ProxyHeader::XForwardedFor;
        let from = |list| client_addr(peer("127.0.0.1"), Some(list), &trusted, xff);
        assert_eq!(from("198.51.100.7"), "198.51.100.7:0".parse().unwrap());
        // The client wrote the first hop itself; the proxies appended the rest.
        assert_eq!(
            from("6.6.6.6, 198.51.100.7, 10.1.1.1"),
            "198.51.100.7:0".parse().unwrap()
        );
        assert_eq!(from("10.0.0.5,10.0.0.6"), "10.0.0.5:0".parse().unwrap());
        assert_eq!(from("garbage, 10.0.0.6"), "10.0.0.6:0".parse().unwrap());
        assert_eq!(from("unknown"), peer("127.0.0.1"));
        assert_eq!(
            from("[2001:db8::1]:80"),
            "[2001:db8::1]:80".parse().unwrap()
        );
        assert_eq!(
            from("198.51.100.7:5555"),
            "198.51.100.7:5555".parse().unwrap()
        );
        let got = client_addr(peer("127.0.0.1"), None, &trusted, xff);
        assert_eq!(got, peer("127.0.0.1"), "no header");
    }

    #[test]
    fn forwarded_reads_the_for_parameters() {
        let trusted = nets(&["127.0.0.1"]);
        let header = ProxyHeader::Forwarded;
        let from = |list| client_addr(peer("127.0.0.1"), Some(list), &trusted, header);
        assert_eq!(
            from("for=6.6.6.6, for=192.0.2.60;proto=http;by=203.0.113.43"),
            "192.0.2.60:0".parse().unwrap()
        );
        assert_eq!(
            from(r#"For="[2001:db8:cafe::17]:4711""#),
            "[2001:db8:cafe::17]:4711".parse().unwrap()
        );
        assert_eq!(
            from(r#"for="[2001:db8::17]""#),
            "[2001:db8::17]:0".parse().unwrap()
        );
        assert_eq!(from("for=_hidden"), peer("127.0.0.1"));
        assert_eq!(from("proto=https"), peer("127.0.0.1"));
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        assert_eq!(counted_as(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(counted_as(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(counted_as(ip("1.2.3.4")), ip("1.2.3.4"));
    }

    #[test]
    fn every_line_of_the_header_is_read_in_order() {
        let mut headers = HeaderMap::new();
        headers.append("x-forwarded-for", "1.1.1.1".parse().unwrap());
        headers.append("x-forwarded-for", "2.2.2.2".parse().unwrap());
        assert_eq!(
            ProxyHeader::XForwardedFor.read(&headers).as_deref(),
            Some("1.1.1.1,2.2.2.2")
        );
        assert_eq!(ProxyHeader::Forwarded.read(&headers), None);
    }
}
