//! Which network addresses deliveries may go to (protection against server-side
//! request forgery).
//!
//! A webhook URL is chosen by a tenant, so without a policy a tenant could make the
//! worker POST into the deployment's own network: a metadata service, an admin
//! port on loopback, a database on a private range. [`TargetPolicy`] refuses every
//! address that is not globally routable — loopback, private (RFC 1918), link-local
//! (with the cloud metadata address 169.254.169.254), carrier-grade NAT, IPv6
//! unique-local and link-local, multicast, unspecified, broadcast, documentation,
//! benchmarking and other reserved ranges, and IPv4-mapped IPv6 forms of all of
//! these — unless the operator opens a range explicitly. The dev profile allows
//! loopback (a receiver on the developer's machine).
//!
//! This module only decides; the worker applies the decision to every address it
//! is about to connect to, and the gateway to IP-literal URLs when a webhook is
//! created or changed.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use ipnet::IpNet;

/// What kind of non-global address an address is, in words a tenant understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    Loopback,
    /// RFC 1918: 10/8, 172.16/12, 192.168/16.
    Private,
    LinkLocal,
    /// 169.254.169.254, where cloud instances read their credentials.
    CloudMetadata,
    /// 100.64/10, carrier-grade NAT (RFC 6598).
    SharedNat,
    /// fc00::/7.
    UniqueLocal,
    /// fec0::/10, deprecated.
    SiteLocal,
    Multicast,
    Unspecified,
    Broadcast,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32, 3fff::/20.
    Documentation,
    /// 198.18/15, 2001:2::/48.
    Benchmarking,
    /// Anything else outside the global unicast space.
    Reserved,
}

impl AddressClass {
    /// The class with its article: "a private address".
    pub fn describe(self) -> &'static str {
        match self {
            Self::Loopback => "a loopback address",
            Self::Private => "a private address",
            Self::LinkLocal => "a link-local address",
            Self::CloudMetadata => "the cloud metadata address",
            Self::SharedNat => "a carrier-grade NAT address",
            Self::UniqueLocal => "a unique-local address",
            Self::SiteLocal => "a site-local address",
            Self::Multicast => "a multicast address",
            Self::Unspecified => "an unspecified address",
            Self::Broadcast => "the broadcast address",
            Self::Documentation => "a documentation address",
            Self::Benchmarking => "a benchmarking address",
            Self::Reserved => "a reserved address",
        }
    }
}

/// The class of a non-global IPv4 address; `None` for a global one.
fn classify_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    let [a, b, c, _] = ip.octets();
    let class = match (a, b, c) {
        _ if ip.is_unspecified() => AddressClass::Unspecified,
        _ if ip.is_broadcast() => AddressClass::Broadcast,
        _ if ip == Ipv4Addr::new(169, 254, 169, 254) => AddressClass::CloudMetadata,
        (127, _, _) => AddressClass::Loopback,
        (10, _, _) | (192, 168, _) => AddressClass::Private,
        (172, 16..=31, _) => AddressClass::Private,
        (169, 254, _) => AddressClass::LinkLocal,
        (100, 64..=127, _) => AddressClass::SharedNat,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => AddressClass::Documentation,
        (198, 18..=19, _) => AddressClass::Benchmarking,
        (224..=239, _, _) => AddressClass::Multicast,
        // "this network", IETF protocol assignments, the 6to4 relay anycast, and
        // the former class E.
        (0, _, _) | (192, 0, 0) | (192, 88, 99) | (240..=255, _, _) => AddressClass::Reserved,
        _ => return None,
    };
    Some(class)
}

/// The class of a non-global IPv6 address; `None` for a global one. Forms that
/// embed an IPv4 address (mapped, NAT64, 6to4) take the class of that address.
fn classify_v6(ip: Ipv6Addr) -> Option<AddressClass> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    let class = match s {
        _ if ip.is_unspecified() => AddressClass::Unspecified,
        _ if ip.is_loopback() => AddressClass::Loopback,
        // NAT64 well-known prefix 64:ff9b::/96: the IPv4 address it translates to.
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => return classify_v4(embedded(hi, lo)),
        // 6to4 2002::/16: the IPv4 address of the tunnel's end.
        [0x2002, hi, lo, ..] => return classify_v4(embedded(hi, lo)),
        [0x2001, 0xdb8, ..] => AddressClass::Documentation,
        [0x2001, 2, 0, ..] => AddressClass::Benchmarking,
        [0x3fff, x, ..] if x & 0xf000 == 0 => AddressClass::Documentation,
        [x, ..] if x & 0xfe00 == 0xfc00 => AddressClass::UniqueLocal,
        [x, ..] if x & 0xffc0 == 0xfe80 => AddressClass::LinkLocal,
        [x, ..] if x & 0xffc0 == 0xfec0 => AddressClass::SiteLocal,
        [x, ..] if x & 0xff00 == 0xff00 => AddressClass::Multicast,
        // IETF protocol assignments (Teredo among them) and local-use NAT64.
        [0x2001, x, ..] if x < 0x200 => AddressClass::Reserved,
        [0x64, 0xff9b, 1, ..] => AddressClass::Reserved,
        // Only 2000::/3 is global unicast.
        [x, ..] if x & 0xe000 == 0x2000 => return None,
        _ => AddressClass::Reserved,
    };
    Some(class)
}

/// The class of a non-global address; `None` for a globally routable one.
pub fn classify(ip: IpAddr) -> Option<AddressClass> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// An address the policy refuses, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub ip: IpAddr,
    pub class: AddressClass,
}

impl fmt::Display for Refusal {
    /// "10.0.0.1, a private address".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, {}", self.ip, self.class.describe())
    }
}

/// Why deliveries to a refused address do not happen, for logs and API errors.
pub const REFUSED_REASON: &str = "deliveries there are not allowed";

/// Which addresses deliveries may connect to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetPolicy {
    /// Loopback addresses are allowed (the dev profile).
    pub allow_loopback: bool,
    /// Ranges the operator opened (`COURIER_ALLOWED_TARGET_CIDRS`), allowed whatever
    /// their class.
    pub allowed: Vec<IpNet>,
}

impl TargetPolicy {
    /// Whether a delivery may connect to `ip`. An IPv4-mapped IPv6 address is
    /// judged as the IPv4 address it maps.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        let given = ip;
        let ip = canonical(ip);
        if self
            .allowed
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&given))
        {
            return Ok(());
        }
        match classify(ip) {
            None => Ok(()),
            Some(AddressClass::Loopback) if self.allow_loopback => Ok(()),
            Some(class) => Err(Refusal { ip, class }),
        }
    }

    /// Whether a URL's host name stands for loopback whatever DNS says
    /// (`localhost`, `*.localhost`, RFC 6761) and loopback is refused.
    pub fn refuses_name(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        !self.allow_loopback
            && (host == "localhost" || host.ends_with(".localhost"))
            && !self
                .allowed
                .iter()
                .any(|net| net.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)))
    }
}

/// An IPv4-mapped IPv6 address as its IPv4 address; others unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Parses `COURIER_ALLOWED_TARGET_CIDRS`: comma-separated CIDRs (`10.1.0.0/16`,
/// `fd00:1::/64`) or single addresses; empty entries are ignored.
pub fn parse_cidrs(s: &str) -> Result<Vec<IpNet>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.parse::<IpNet>()
                .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                .map(|net| net.trunc())
                .map_err(|_| format!("{e} is not a CIDR range such as 10.1.0.0/16"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn class(s: &str) -> Option<AddressClass> {
        classify(ip(s))
    }

    #[test]
    fn non_global_ipv4_ranges_are_classified() {
        use AddressClass::*;
        for (addr, want) in [
            ("127.0.0.1", Loopback),
            ("127.255.0.9", Loopback),
            ("10.0.0.1", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("169.254.169.254", CloudMetadata),
            ("169.254.1.1", LinkLocal),
            ("100.64.0.1", SharedNat),
            ("100.127.255.255", SharedNat),
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Reserved),
            ("255.255.255.255", Broadcast),
            ("240.0.0.1", Reserved),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("192.0.2.10", Documentation),
            ("198.51.100.1", Documentation),
            ("203.0.113.7", Documentation),
            ("198.18.0.1", Benchmarking),
            ("198.19.255.1", Benchmarking),
            ("192.0.0.8", Reserved),
        ] {
            assert_eq!(class(addr), Some(want), "{addr}");
        }
    }

    #[test]
    fn global_ipv4_addresses_pass() {
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.1.1",
            "192.169.0.1",
            "198.20.0.1",
            "223.255.255.255",
        ] {
            assert_eq!(class(addr), None, "{addr}");
        }
    }

    #[test]
    fn non_global_ipv6_ranges_are_classified_and_embedded_ipv4_counts() {
        use AddressClass::*;
        for (addr, want) in [
            ("::1", Loopback),
            ("::", Unspecified),
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:10.0.0.1", Private),
            ("::ffff:169.254.169.254", CloudMetadata),
            ("64:ff9b::10.1.2.3", Private),
            ("2002:a00:1::", Private),
            ("fc00::1", UniqueLocal),
            ("fd12:3456::1", UniqueLocal),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("fec0::1", SiteLocal),
            ("ff02::1", Multicast),
            ("2001:db8::1", Documentation),
            ("3fff::1", Documentation),
            ("2001:2::1", Benchmarking),
            ("2001::1", Reserved),
            ("100::1", Reserved),
            ("::10.0.0.1", Reserved),
            ("4000::1", Reserved),
        ] {
            assert_eq!(class(addr), Some(want), "{addr}");
        }
        for addr in [
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:808:808::",
        ] {
            assert_eq!(class(addr), None, "{addr}");
        }
    }

    #[test]
    fn the_policy_refuses_non_global_addresses_unless_opened() {
        let strict = TargetPolicy::default();
        let refusal = strict.check(ip("10.0.0.1")).unwrap_err();
        assert_eq!(refusal.to_string(), "10.0.0.1, a private address");
        assert!(strict.check(ip("127.0.0.1")).is_err());
        assert!(strict.check(ip("::1")).is_err());
        assert!(strict.check(ip("93.184.216.34")).is_ok());

        let dev = TargetPolicy {
            allow_loopback: true,
            allowed: Vec::new(),
        };
        assert!(dev.check(ip("127.0.0.1")).is_ok());
        assert!(dev.check(ip("::1")).is_ok());
        assert!(dev.check(ip("::ffff:127.0.0.1")).is_ok());
        assert!(dev.check(ip("10.0.0.1")).is_err());
        assert!(dev.check(ip("169.254.169.254")).is_err());

        let opened = TargetPolicy {
            allow_loopback: false,
            allowed: parse_cidrs("10.1.0.0/16, fd00:1::/64,192.168.7.7").unwrap(),
        };
        assert!(opened.check(ip("10.1.2.3")).is_ok());
        assert!(opened.check(ip("::ffff:10.1.2.3")).is_ok());
        assert!(opened.check(ip("10.2.0.1")).is_err());
        assert!(opened.check(ip("fd00:1::5")).is_ok());
        assert!(opened.check(ip("192.168.7.7")).is_ok());
        let mapped_range = TargetPolicy {
            allow_loopback: false,
            allowed: parse_cidrs("::ffff:10.0.0.0/104").unwrap(),
        };
        assert!(mapped_range.check(ip("::ffff:10.9.9.9")).is_ok());
        assert!(opened.check(ip("192.168.7.8")).is_err());
    }

    #[test]
    fn cidr_lists_are_parsed_and_bad_entries_named() {
        assert_eq!(parse_cidrs("").unwrap(), Vec::<IpNet>::new());
        assert_eq!(
            parse_cidrs("10.1.2.3/16").unwrap(),
            vec!["10.1.0.0/16".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            parse_cidrs("10.0.0.0/8,nope").unwrap_err(),
            "nope is not a CIDR range such as 10.1.0.0/16"
        );
    }

    #[test]
    fn localhost_names_are_refused_with_loopback() {
        let strict = TargetPolicy::default();
        assert!(strict.refuses_name("localhost"));
        assert!(strict.refuses_name("API.LOCALHOST."));
        assert!(!strict.refuses_name("localhost.example.com"));
        let dev = TargetPolicy {
            allow_loopback: true,
            allowed: Vec::new(),
        };
        assert!(!dev.refuses_name("localhost"));
    }
}
