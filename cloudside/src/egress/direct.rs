//! Dialling a CONNECT's host that is no node's (`[egress] direct =
//! "cluster"`), as konnectivity's server does: kube-apiserver's `cluster`
//! egress also carries its calls to admission webhooks and aggregated APIs
//! (a Service's ClusterIP, a pod's address, an ExternalName's DNS name),
//! which only the cluster network reaches. A name resolves when it is
//! dialled (on smol's blocking pool, as `upstream` dials); every address,
//! given or resolved, is checked against the [`Policy`] first, so a name
//! cannot smuggle in an address the policy refuses.

use super::policy::Policy;
use super::Refusal;
use futures_lite::FutureExt;
use smol::net::TcpStream;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The metric label of a CONNECT the hub dialled itself.
pub const DIALLED: &str = "direct";
/// The metric label of an address the [`Policy`] refuses (403).
pub const REFUSED: &str = "direct_refused";
/// The metric label of a name that did not resolve or a dial that failed (502).
pub const FAILED: &str = "direct_failed";
/// The metric label of a dial that did not finish in time (504).
pub const TIMEOUT: &str = "direct_timeout";

/// What the hub is asked to dial: an address, or a name to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// An IP address (an IPv6 one may come in brackets, as in a URL).
    Ip(IpAddr),
    /// A DNS name (`[a-z0-9.-]`, at most 253 characters).
    Name(String),
}

/// Reads the host of a CONNECT as an address or a name; anything else is
/// refused with 400 before any lookup.
pub fn host(text: &str) -> Result<Host, Refusal> {
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        return match inner.parse::<std::net::Ipv6Addr>() {
            Ok(ip) => Ok(Host::Ip(IpAddr::V6(ip))),
            Err(_) => Err(Refusal::new(
                400,
                format!("{text:?} is not an IPv6 address in brackets"),
            )),
        };
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(Host::Ip(ip));
    }
    let name_like = !text.is_empty()
        && text.len() <= 253
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
    if name_like {
        Ok(Host::Name(text.to_owned()))
    } else {
        Err(Refusal::new(
            400,
            format!("{text:?} is neither a host name nor an IP address"),
        ))
    }
}

/// Dials `host:port` within `timeout` (name resolution included), to the
/// first address that the policy allows and that answers. Returns the
/// connection and the address it reached.
///
/// Refusals: 403 when the policy refuses every address (nothing was
/// dialled), 502 when the name does not resolve or no address accepted,
/// 504 when `timeout` ran out.
pub async fn dial(
    host: &Host,
    port: u16,
    policy: &Policy,
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), Refusal> {
    let shown = match host {
        Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        Host::Ip(ip) => format!("{ip}:{port}"),
        Host::Name(name) => format!("{name}:{port}"),
    };
    if let Host::Ip(ip) = host {
        // Refused before anything else: no lookup, no dial.
        policy.check(*ip).map_err(|why| refused(&shown, why))?;
    }
    let attempt = async {
        let addrs = match host {
            Host::Ip(ip) => vec![SocketAddr::new(*ip, port)],
            Host::Name(name) => smol::net::resolve((name.as_str(), port))
                .await
                .map_err(|e| {
                    Refusal::labelled(502, FAILED, format!("cannot resolve {shown}: {e}"))
                })?,
        };
        let mut allowed = Vec::new();
        let mut first_refusal = None;
        for addr in addrs {
            match policy.check(addr.ip()) {
                Ok(()) => allowed.push(addr),
                Err(why) => {
                    first_refusal.get_or_insert(why);
                }
            }
        }
        if allowed.is_empty() {
            return Err(match first_refusal {
                Some(why) => refused(&shown, why),
                None => Refusal::labelled(502, FAILED, format!("{shown} resolves to no address")),
            });
        }
        let mut last: Option<(SocketAddr, io::Error)> = None;
        for addr in allowed {
            match TcpStream::connect(addr).await {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    return Ok((tcp, addr));
                }
                Err(e) => last = Some((addr, e)),
            }
        }
        let why = match last {
            Some((addr, e)) if addr.to_string() != shown => format!("{addr}: {e}"),
            Some((_, e)) => e.to_string(),
            None => "no address to dial".into(),
        };
        Err(Refusal::labelled(
            502,
            FAILED,
            format!("the hub could not connect to {shown}: {why}"),
        ))
    };
    attempt
        .or(async {
            async_io::Timer::after(timeout).await;
            Err(Refusal::labelled(
                504,
                TIMEOUT,
                format!("the hub could not connect to {shown} within {timeout:?}"),
            ))
        })
        .await
}

/// The 403 of an address the policy refuses.
fn refused(shown: &str, why: String) -> Refusal {
    Refusal::labelled(403, REFUSED, format!("{shown} is not dialled: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_addresses_or_names() {
        assert_eq!(
            host("10.96.0.10"),
            Ok(Host::Ip("10.96.0.10".parse().expect("ip")))
        );
        assert_eq!(
            host("[fd00::a]"),
            Ok(Host::Ip("fd00::a".parse().expect("ip")))
        );
        // Go's dialers bracket IPv6; a bare one (after the last colon was
        // taken as the port's) is still an address.
        assert_eq!(
            host("fd00::a"),
            Ok(Host::Ip("fd00::a".parse().expect("ip")))
        );
        assert_eq!(
            host("webhook.tether-system.svc"),
            Ok(Host::Name("webhook.tether-system.svc".into()))
        );
        for bad in [
            "[10.0.0.1]",
            "[fd00::a",
            "a b",
            "a/b",
            "x@y",
            "",
            &"a".repeat(254),
        ] {
            assert_eq!(host(bad).map_err(|r| r.status), Err(400), "{bad:?}");
        }
    }

    #[test]
    fn a_refused_address_is_never_dialled() {
        // 169.254.169.254 is refused before any dial: the answer comes at
        // once, a 403, though nothing listens there.
        let refusal = smol::block_on(dial(
            &Host::Ip("169.254.169.254".parse().expect("ip")),
            80,
            &Policy::default(),
            Duration::from_secs(30),
        ))
        .expect_err("refused");
        assert_eq!((refusal.status, refusal.label), (403, REFUSED));
        assert!(refusal.message.contains("metadata"), "{}", refusal.message);
    }

    #[test]
    fn a_name_resolving_to_a_refused_address_is_refused() {
        // The resolver reads "127.1" as 127.0.0.1: a name, as far as the
        // hub can tell, that lands on loopback.
        let refusal = smol::block_on(dial(
            &Host::Name("127.1".into()),
            9,
            &Policy::default(),
            Duration::from_secs(30),
        ))
        .expect_err("refused");
        assert_eq!(
            (refusal.status, refusal.label),
            (403, REFUSED),
            "{}",
            refusal.message
        );
        assert!(refusal.message.contains("loopback"), "{}", refusal.message);
    }
}
