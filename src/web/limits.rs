//! Rate limits of the console (issue 17): logins started per client
//! address (an IPv6 address counts by its /64) and state-changing actions
//! per principal, each a fixed one-minute window held in memory.
//!
//! Per gateway: several gateways behind one name each count on their own,
//! so the effective limit is the configured one times their number. It
//! never blocks logins of the SSH server, which has its own throttle.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);

/// Most keys kept per limit; past it the oldest windows are dropped first.
const MAX_KEYS: usize = 100_000;

/// One limit: at most `per_window` hits per key per minute.
#[derive(Debug)]
struct Window {
    per_window: u32,
    hits: Mutex<HashMap<String, (Instant, u32)>>,
}

impl Window {
    fn new(per_window: u32) -> Window {
        Window {
            per_window,
            hits: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a hit of `key`; false when it is over the limit.
    fn hit(&self, key: &str) -> bool {
        let Ok(mut hits) = self.hits.lock() else {
            return false;
        };
        let now = Instant::now();
        if hits.len() >= MAX_KEYS && !hits.contains_key(key) {
            hits.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if hits.len() >= MAX_KEYS {
                // Fail closed for new keys while the table is full.
                return false;
            }
        }
        let entry = hits.entry(key.to_string()).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        entry.1 <= self.per_window
    }

    fn forget_old(&self) {
        if let Ok(mut hits) = self.hits.lock() {
            let now = Instant::now();
            hits.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
        }
    }
}

/// The console's limits.
#[derive(Debug)]
pub(crate) struct RateLimits {
    logins: Window,
    actions: Window,
}

impl RateLimits {
    /// `logins` login starts per address and `actions` actions per
    /// principal, per minute.
    pub(crate) fn new(logins: u32, actions: u32) -> RateLimits {
        RateLimits {
            logins: Window::new(logins),
            actions: Window::new(actions),
        }
    }

    /// Counts a login start from `ip`; false when over the limit.
    pub(crate) fn login(&self, ip: IpAddr) -> bool {
        self.logins.hit(&address_key(ip))
    }

    /// Counts an action of `principal`; false when over the limit.
    pub(crate) fn action(&self, principal: &str) -> bool {
        self.actions.hit(principal)
    }

    /// Drops windows that ended.
    pub(crate) fn forget_old(&self) {
        self.logins.forget_old();
        self.actions.forget_old();
    }
}

/// The key of an address: IPv4 as is, IPv6 by its /64 (one host usually
/// holds a whole /64).
fn address_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_per_key_and_ipv6_per_64() {
        let l = RateLimits::new(2, 1);
        let a: IpAddr = "2001:db8::1".parse().unwrap_or(IpAddr::from([0; 4]));
        let b: IpAddr = "2001:db8::2".parse().unwrap_or(IpAddr::from([0; 4]));
        let c: IpAddr = "192.0.2.1".parse().unwrap_or(IpAddr::from([0; 4]));
        assert!(l.login(a));
        assert!(l.login(b));
        assert!(!l.login(a), "the same /64 shares one window");
        assert!(l.login(c));
        assert!(l.action("alice"));
        assert!(!l.action("alice"));
        assert!(l.action("bob"));
    }
}
