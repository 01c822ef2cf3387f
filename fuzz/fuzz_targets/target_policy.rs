//! The target policy: an IPv4 address and its IPv4-mapped IPv6 form get the same
//! verdict, loopback is allowed exactly when the policy says so, and an address in
//! an allowed range always passes.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use courier_core::target::{classify, AddressClass, TargetPolicy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: [u8; 17]| {
    let strict = TargetPolicy::default();
    let dev = TargetPolicy {
        allow_loopback: true,
        allowed: Vec::new(),
    };
    let mut v6 = [0u8; 16];
    v6.copy_from_slice(&bytes[..16]);
    let v6 = Ipv6Addr::from(v6);
    let v4 = Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]);
    for ip in [IpAddr::V6(v6), IpAddr::V4(v4)] {
        let class = classify(ip);
        assert_eq!(strict.check(ip).is_ok(), class.is_none());
        assert_eq!(
            dev.check(ip).is_ok(),
            class.is_none() || class == Some(AddressClass::Loopback)
        );
        let prefix = bytes[16] % if ip.is_ipv4() { 33 } else { 129 };
        let opened = TargetPolicy {
            allow_loopback: false,
            allowed: vec![ipnet_of(ip, prefix)],
        };
        assert!(opened.check(ip).is_ok());
    }
    let mapped = IpAddr::V6(v4.to_ipv6_mapped());
    assert_eq!(strict.check(mapped).is_ok(), strict.check(IpAddr::V4(v4)).is_ok());
});

fn ipnet_of(ip: IpAddr, prefix: u8) -> courier_core::target::IpNet {
    let text = format!("{ip}/{prefix}");
    courier_core::target::parse_cidrs(&text).unwrap().remove(0)
}
