//! Which addresses the egress may dial itself, for a CONNECT whose host is
//! no node's (`[egress] direct`, `direct_allow`): address blocks
//! ([`Cidr`]), the blocks never dialled unless named ([`NEVER`]), and the
//! verdict on one address ([`Policy::check`]). No IO here.
//!
//! Why a deny list at all: whoever can make kube-apiserver dial (a webhook
//! registration, an APIService, `pods/proxy`) could otherwise make the hub
//! reach its own loopback services or the cloud's metadata endpoint
//! (169.254.169.254), which hands out credentials.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address block, `10.96.0.0/12` or `fd00::/8`; a bare address is the
/// block of that one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The first address (host bits zero).
    net: IpAddr,
    /// Leading bits that must match.
    prefix: u8,
}

impl Cidr {
    /// A block from its first address and prefix length; `None` if the
    /// prefix is too long for the family or host bits are set.
    pub const fn new(net: IpAddr, prefix: u8) -> Option<Cidr> {
        let cidr = Cidr { net, prefix };
        let max = match net {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if prefix > max || bits(net) & !cidr.mask() != 0 {
            return None;
        }
        Some(cidr)
    }

    /// Whether `ip` is in the block. An IPv4-mapped IPv6 address
    /// (`::ffff:127.0.0.1`) counts as the IPv4 address it carries, as the
    /// kernel dials it.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.net.is_ipv4() && bits(ip) & self.mask() == bits(self.net)
    }

    /// Whether every address of `other` is in this block.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.net)
    }

    /// The mask of the prefix, over the family's bits (right-aligned).
    const fn mask(&self) -> u128 {
        let width = match self.net {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if self.prefix == 0 {
            0
        } else {
            let ones = u128::MAX << (128 - self.prefix as u32);
            ones >> (128 - width)
        }
    }
}

/// The address as a number, right-aligned (an IPv4 address in the low 32
/// bits).
const fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => v4.to_bits() as u128,
        IpAddr::V6(v6) => v6.to_bits(),
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an address block such as \"10.96.0.0/12\""))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        Cidr::new(net, prefix).ok_or_else(|| {
            let first = Cidr { net, prefix }.first();
            format!("{text:?} has bits set past its prefix: did you mean \"{first}/{prefix}\"?")
        })
    }
}

impl Cidr {
    /// The first address of the block `net/prefix`, whatever `net`'s host
    /// bits (for the error that suggests it).
    fn first(&self) -> IpAddr {
        let n = bits(self.net) & self.mask();
        match self.net {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from_bits(n as u32)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from_bits(n)),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// A block of [`NEVER`]: built at compile time from known-good values.
const fn block(net: IpAddr, prefix: u8) -> Cidr {
    match Cidr::new(net, prefix) {
        Some(c) => c,
        None => panic!("a NEVER block with host bits set"),
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

const fn v6(first: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(first, 0, 0, 0, 0, 0, 0, 0))
}

/// The blocks the egress never dials directly unless `direct_allow` names
/// them (a block inside them; a wider one such as `0.0.0.0/0` does not
/// open them), and why: none of them is a place in the cluster network
/// that kube-apiserver means.
pub const NEVER: [(Cidr, &str); 9] = [
    (block(v4(0, 0, 0, 0), 8), "unspecified (\"this network\")"),
    (block(v4(127, 0, 0, 0), 8), "loopback"),
    (
        block(v4(169, 254, 0, 0), 16),
        "link-local (cloud metadata lives there)",
    ),
    (block(v4(224, 0, 0, 0), 4), "multicast"),
    (block(v4(255, 255, 255, 255), 32), "broadcast"),
    (block(v6(0), 128), "unspecified"),
    (
        block(IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1)), 128),
        "loopback",
    ),
    (block(v6(0xfe80), 10), "link-local"),
    (block(v6(0xff00), 8), "multicast"),
];

/// What may be dialled directly.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    /// `direct_allow`: when set, only addresses in these blocks.
    pub allow: Option<Vec<Cidr>>,
}

impl Policy {
    /// Whether `ip` may be dialled directly; if not, why (for the 403 and
    /// the log). An address in [`NEVER`] is refused unless an allowed block
    /// lies inside that [`NEVER`] block and holds it: `127.0.0.0/8` allows
    /// loopback, `0.0.0.0/0` does not.
    pub fn check(&self, ip: IpAddr) -> Result<(), String> {
        let ip = ip.to_canonical();
        if let Some((never, why)) = NEVER.iter().find(|(c, _)| c.contains(ip)) {
            let named = self
                .allow
                .iter()
                .flatten()
                .any(|a| never.covers(a) && a.contains(ip));
            if named {
                return Ok(());
            }
            return Err(format!(
                "{ip} is {why} ({never}): never dialled unless [egress] direct_allow names it"
            ));
        }
        match &self.allow {
            Some(allow) if !allow.iter().any(|a| a.contains(ip)) => Err(format!(
                "{ip} is not in [egress] direct_allow ({})",
                allow
                    .iter()
                    .map(Cidr::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    fn cidr(text: &str) -> Cidr {
        text.parse().expect("cidr")
    }

    #[test]
    fn blocks_parse_and_match() {
        let svc = cidr("10.96.0.0/12");
        assert_eq!(svc.to_string(), "10.96.0.0/12");
        assert!(svc.contains(ip("10.96.0.1")));
        assert!(svc.contains(ip("10.111.255.255")));
        assert!(!svc.contains(ip("10.112.0.0")));
        assert!(!svc.contains(ip("10.95.255.255")));
        // The other family never matches, but a mapped address does.
        assert!(!svc.contains(ip("fd00::a60:1")));
        assert!(svc.contains(ip("::ffff:10.96.0.10")));
        let all = cidr("0.0.0.0/0");
        assert!(all.contains(ip("255.255.255.255")) && all.contains(ip("0.0.0.0")));
        assert!(!all.contains(ip("::")));
        let one = cidr("192.0.2.7");
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.6")));
        let pods = cidr("fd00:10:244::/56");
        assert!(pods.contains(ip("fd00:10:244:0:ff::3")));
        assert!(!pods.contains(ip("fd00:10:244:100::1")));
        assert!(cidr("::/0").contains(ip("ff02::1")));
        assert_eq!(cidr("2001:db8::1").to_string(), "2001:db8::1/128");
        assert!(cidr("10.0.0.0/8").covers(&svc));
        assert!(!svc.covers(&cidr("10.0.0.0/8")));
        assert!(svc.covers(&svc));
    }

    #[test]
    fn bad_blocks_say_what_to_write() {
        for (text, needle) in [
            ("10.96.0.1/12", "did you mean \"10.96.0.0/12\"?"),
            ("fd00::1/8", "did you mean \"fd00::/8\"?"),
            ("10.96.0.0/33", "0 to 32"),
            ("fd00::/129", "0 to 128"),
            ("10.96.0.0/", "0 to 32"),
            ("10.96.0.0/-1", "0 to 32"),
            ("kubernetes/12", "is not an address block"),
            ("10.96/12", "is not an address block"),
            ("", "is not an address block"),
        ] {
            let e = text.parse::<Cidr>().expect_err(text);
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn never_dialled_unless_named() {
        let open = Policy::default();
        for never in [
            "127.0.0.1",
            "127.255.0.9",
            "169.254.169.254",
            "169.254.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.251",
            "239.255.255.250",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "febf::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            let e = open.check(ip(never)).expect_err(never);
            assert!(e.contains("never dialled"), "{never}: {e}");
        }
        assert!(open
            .check(ip("169.254.169.254"))
            .unwrap_err()
            .contains("metadata"));
        for fine in [
            "10.96.0.10",
            "10.244.1.7",
            "192.168.10.11",
            "172.16.0.1",
            "8.8.8.8",
            "126.255.255.255",
            "128.0.0.1",
            "169.253.255.255",
            "169.255.0.0",
            "223.255.255.255",
            "fd00::10",
            "fec0::1",
            "fc00::1",
            "2001:db8::1",
            "fe7f::1",
        ] {
            assert_eq!(open.check(ip(fine)), Ok(()), "{fine}");
        }
    }

    #[test]
    fn direct_allow_restricts_and_names_the_never_blocks() {
        let cluster = Policy {
            allow: Some(vec![cidr("10.96.0.0/12"), cidr("fd00:10:244::/56")]),
        };
        assert_eq!(cluster.check(ip("10.96.0.1")), Ok(()));
        assert_eq!(cluster.check(ip("fd00:10:244::9")), Ok(()));
        let e = cluster.check(ip("10.244.0.5")).expect_err("outside");
        assert!(
            e.contains("not in [egress] direct_allow (10.96.0.0/12, fd00:10:244::/56)"),
            "{e}"
        );
        assert!(cluster
            .check(ip("127.0.0.1"))
            .expect_err("loopback")
            .contains("loopback"));

        // Naming a block inside a never-dialled one opens it, and only it.
        let tests = Policy {
            allow: Some(vec![cidr("127.0.0.0/8")]),
        };
        assert_eq!(tests.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(tests.check(ip("::ffff:127.0.0.1")), Ok(()));
        assert!(tests.check(ip("::1")).is_err());
        assert!(tests.check(ip("169.254.169.254")).is_err());
        assert!(tests.check(ip("10.0.0.1")).is_err());
        let metadata = Policy {
            allow: Some(vec![cidr("169.254.169.254")]),
        };
        assert_eq!(metadata.check(ip("169.254.169.254")), Ok(()));
        assert!(metadata.check(ip("169.254.169.253")).is_err());

        // A wide block does not open them.
        let wide = Policy {
            allow: Some(vec![cidr("0.0.0.0/0"), cidr("::/0")]),
        };
        assert_eq!(wide.check(ip("10.1.2.3")), Ok(()));
        for never in ["127.0.0.1", "169.254.169.254", "::1", "fe80::1", "0.0.0.0"] {
            assert!(wide.check(ip(never)).is_err(), "{never}");
        }
    }
}
