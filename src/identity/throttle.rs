//! Slowing down brute force of any front end's logins: each failed
//! authentication from an address makes the next answer to that address
//! wait longer (`auth.failure_delay`, doubling per failure up to
//! `auth.failure_delay_max`). An address's failures are forgotten after
//! `auth.failure_forget_after` without one.
//!
//! The table is bounded ([`MAX_ADDRESSES`]); when full, forgotten entries
//! are dropped first, then the whole table (an attacker who can spray
//! that many addresses is better stopped by the connection caps).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::AuthConfig;

/// Most addresses tracked at once.
pub const MAX_ADDRESSES: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
}

/// Failures per source address.
#[derive(Debug)]
pub struct FailureThrottle {
    entries: Mutex<HashMap<IpAddr, Entry>>,
    base: Duration,
    max: Duration,
    forget_after: Duration,
}

impl FailureThrottle {
    /// A throttle with the delays of `[auth]`.
    pub fn new(config: &AuthConfig) -> FailureThrottle {
        FailureThrottle {
            entries: Mutex::new(HashMap::new()),
            base: config.failure_delay,
            max: config.failure_delay_max,
            forget_after: config.failure_forget_after,
        }
    }

    /// Records a failure from `addr`; returns how long to wait before
    /// answering it: `base * 2^(n-1)` for the n-th recent failure, at most
    /// `max` (zero when the delay is off).
    pub fn record_failure(&self, addr: IpAddr) -> Duration {
        if self.base.is_zero() {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ADDRESSES && !entries.contains_key(&addr) {
            let forget = self.forget_after;
            entries.retain(|_, e| now.duration_since(e.last) < forget);
            if entries.len() >= MAX_ADDRESSES {
                entries.clear();
            }
        }
        let entry = entries.entry(addr).or_insert(Entry {
            failures: 0,
            last: now,
        });
        if now.duration_since(entry.last) >= self.forget_after {
            entry.failures = 0;
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.last = now;
        let factor = 2u32.saturating_pow(entry.failures.saturating_sub(1).min(20));
        self.base.saturating_mul(factor).min(self.max)
    }

    /// Recent failures of `addr` (for tests and logs).
    pub fn failures(&self, addr: IpAddr) -> u32 {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(&addr)
            .filter(|e| e.last.elapsed() < self.forget_after)
            .map_or(0, |e| e.failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(base: u64, max: u64) -> FailureThrottle {
        FailureThrottle {
            entries: Mutex::new(HashMap::new()),
            base: Duration::from_secs(base),
            max: Duration::from_secs(max),
            forget_after: Duration::from_secs(60),
        }
    }

    #[test]
    fn the_delay_grows_per_address_up_to_the_max() {
        let t = throttle(1, 5);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let delays: Vec<u64> = (0..5).map(|_| t.record_failure(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
        assert_eq!(t.record_failure(b).as_secs(), 1);
        assert_eq!(t.failures(a), 5);
        assert_eq!(throttle(0, 5).record_failure(a), Duration::ZERO);
    }
}
