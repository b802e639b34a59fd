//! Forward destinations (`ssh -L`, RFC 4254 §7.2 `direct-tcpip`) made
//! canonical before the policy sees them (review finding 4): one address has
//! one spelling, so `forbid … context.host == "127.0.0.1"` cannot be passed
//! with `::ffff:127.0.0.1`, and spellings the kernel would read otherwise
//! than the policy (`2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`, the
//! unspecified `0.0.0.0` that connects to the local host) are refused.
//! Pure: no I/O, no name resolution (a name would be resolved with the
//! host's resolver, not the container's).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Why a destination was refused; the message is safe to show the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// Not an IP literal in its one canonical text form (RFC 791 dotted
    /// quad of decimal octets without leading zeros, RFC 4291 §2.2 IPv6),
    /// nor `localhost`. Names are not resolved.
    #[error(
        "{0:?} is not an IP address (names, and decimal, hex or octal IPv4 forms, are refused)"
    )]
    NotAnAddress(String),
    /// `0.0.0.0` or `::`: connecting there reaches the local host.
    #[error("the unspecified address {0} is refused; name the address")]
    Unspecified(IpAddr),
    /// An IPv6 zone (`fe80::1%eth0`) names an interface of the gateway's
    /// side, not an address.
    #[error("an IPv6 zone ({0:?}) is refused")]
    Zone(String),
    /// Port 0 or above 65535.
    #[error("port {0} is refused")]
    Port(u32),
}

/// Longest host string looked at, in bytes (the longest IPv6 literal with
/// brackets is 47).
const MAX_HOST_BYTES: usize = 64;

/// The canonical destination for a forward to `host`:`port` as the client
/// sent them: `localhost` is `127.0.0.1`; an IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d`, RFC 4291 §2.5.5.2) is the IPv4 address; IPv6 may be in
/// brackets. The result's `ip()` printed with `Display` is the text to give
/// the policy (Cedar `ip("...")`, so `isInRange` and `isLoopback` work:
/// `127.0.0.2` stays itself and is a loopback address).
///
/// # Errors
/// [`AddrError`], naming what is refused.
pub fn canonical_destination(host: &str, port: u32) -> Result<SocketAddr, AddrError> {
    let port16 = u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or(AddrError::Port(port))?;
    let not = || AddrError::NotAnAddress(host.chars().take(MAX_HOST_BYTES).collect());
    if host.len() > MAX_HOST_BYTES {
        return Err(not());
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port16));
    }
    let bare = match host.strip_prefix('[') {
        Some(inner) => inner.strip_suffix(']').ok_or_else(not)?,
        None => host,
    };
    if let Some((_, zone)) = bare.split_once('%') {
        return Err(AddrError::Zone(zone.chars().take(MAX_HOST_BYTES).collect()));
    }
    // The standard parser takes only the canonical forms: four decimal
    // octets without leading zeros, or RFC 4291 IPv6.
    let ip: IpAddr = bare.parse().map_err(|_| not())?;
    if host.starts_with('[') && ip.is_ipv4() {
        return Err(not());
    }
    let ip = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    if ip.is_unspecified() {
        return Err(AddrError::Unspecified(ip));
    }
    Ok(SocketAddr::new(ip, port16))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn ok(host: &str) -> String {
        canonical_destination(host, 80)
            .unwrap_or_else(|e| panic!("{host}: {e}"))
            .ip()
            .to_string()
    }

    #[test]
    fn one_spelling_per_address() {
        for (host, want) in [
            ("127.0.0.1", "127.0.0.1"),
            ("localhost", "127.0.0.1"),
            ("LocalHost", "127.0.0.1"),
            ("::ffff:127.0.0.1", "127.0.0.1"),
            ("[::ffff:127.0.0.1]", "127.0.0.1"),
            ("::FFFF:7f00:1", "127.0.0.1"),
            ("::ffff:169.254.169.254", "169.254.169.254"),
            ("127.0.0.2", "127.0.0.2"),
            ("10.0.3.1", "10.0.3.1"),
            ("::1", "::1"),
            ("[::1]", "::1"),
            ("0:0:0:0:0:0:0:1", "::1"),
            ("FE80::1", "fe80::1"),
            ("2001:DB8::1", "2001:db8::1"),
        ] {
            assert_eq!(ok(host), want, "{host}");
        }
        assert_eq!(
            canonical_destination("::ffff:127.0.0.1", 8080).unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
    }

    #[test]
    fn ambiguous_forms_are_refused() {
        for host in [
            "2130706433",
            "0x7f000001",
            "0x7f.0.0.1",
            "0177.0.0.1",
            "127.000.000.001",
            "127.1",
            "127.0.1",
            "127.0.0.1.",
            " 127.0.0.1",
            "127.0.0.1 ",
            "[127.0.0.1]",
            "[::1",
            "::1]",
            "example.com",
            "localhost.",
            "",
            "256.0.0.1",
            "1.2.3.4/8",
        ] {
            assert!(
                matches!(
                    canonical_destination(host, 80),
                    Err(AddrError::NotAnAddress(_))
                ),
                "{host:?}"
            );
        }
        assert!(matches!(
            canonical_destination(&"1".repeat(100), 80),
            Err(AddrError::NotAnAddress(s)) if s.len() == MAX_HOST_BYTES
        ));
    }

    #[test]
    fn unspecified_zones_and_ports_are_refused() {
        for host in ["0.0.0.0", "::", "[::]", "::ffff:0.0.0.0"] {
            assert!(
                matches!(
                    canonical_destination(host, 80),
                    Err(AddrError::Unspecified(_))
                ),
                "{host}"
            );
        }
        assert_eq!(
            canonical_destination("fe80::1%eth0", 80),
            Err(AddrError::Zone("eth0".into()))
        );
        assert_eq!(
            canonical_destination("127.0.0.1", 0),
            Err(AddrError::Port(0))
        );
        assert_eq!(
            canonical_destination("127.0.0.1", 65536),
            Err(AddrError::Port(65536))
        );
        assert!(canonical_destination("127.0.0.1", 65535).is_ok());
    }

    #[test]
    fn messages_name_the_problem() {
        let e = canonical_destination("2130706433", 80).unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"2130706433\" is not an IP address (names, and decimal, hex or octal IPv4 forms, are refused)"
        );
        let e = canonical_destination("0.0.0.0", 80).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the unspecified address 0.0.0.0 is refused; name the address"
        );
    }
}
