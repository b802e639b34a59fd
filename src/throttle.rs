//! Limits per source address before authentication (review finding M4),
//! so one host can neither lock everyone out nor flood the identity
//! provider:
//!
//! - [`FailureThrottle`]: each failed authentication from a source makes
//!   the next answer to it wait longer (`auth.failure_delay`, doubling up
//!   to `auth.failure_delay_max`); bounded, evicting the least recently
//!   failed source when full (never forgetting everyone at once);
//! - [`SourceLimits`]: at most `auth.max_unauthenticated_per_source`
//!   unauthenticated connections per source, and penalties that refuse a
//!   misbehaving source for a while, like OpenSSH 9.8's
//!   `PerSourceMaxStartups` and `PerSourcePenalties` (sshd_config(5));
//! - [`DeviceAuthorizationBudget`]: how many device authorizations (RFC
//!   8628 §3.1) one connection and one source may start.
//!
//! A source is an IPv4 address, or the /64 of an IPv6 address (one
//! customer's allocation, RFC 6177), like OpenSSH's `PerSourceNetBlockSize
//! 32:64`; IPv4-mapped IPv6 addresses count as their IPv4 address.
//!
//! Owns counting only: it never closes sockets, writes audit events or
//! sleeps; the SSH front door asks and acts. All tables are bounded by
//! [`MAX_SOURCES`] and evict their least recently used entry when full.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hashlink::LruCache;

use crate::config::AuthConfig;

/// Most sources each table tracks at once.
pub const MAX_SOURCES: usize = 65_536;

/// Where a connection comes from, as the limits count it: an IPv4 address
/// or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// One IPv4 address (also for IPv4-mapped IPv6 addresses).
    V4(Ipv4Addr),
    /// The first 64 bits of an IPv6 address.
    V6Net64(u64),
}

impl Source {
    /// The source `addr` counts towards.
    pub fn of(addr: IpAddr) -> Source {
        match addr {
            IpAddr::V4(v4) => Source::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4),
                None => Source::V6Net64((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::V4(v4) => write!(f, "{v4}"),
            Source::V6Net64(net) => write!(f, "{}/64", Ipv6Addr::from(u128::from(*net) << 64)),
        }
    }
}

/// Why a source was refused. `Display` is for logs and audit events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThrottleError {
    /// The source has `auth.max_unauthenticated_per_source` connections
    /// that have not authenticated yet.
    #[error("{from} already has {open} unauthenticated connections")]
    TooManyUnauthenticated {
        /// The source.
        from: Source,
        /// Its open unauthenticated connections.
        open: usize,
    },
    /// The source earned penalties (failed logins, idle connections) above
    /// `auth.penalty_min`; refused until they run out.
    #[error("{from} is penalised for another {}", humantime::format_duration(*remaining))]
    Penalised {
        /// The source.
        from: Source,
        /// Time left, rounded to whole seconds.
        remaining: Duration,
    },
    /// This connection already started `auth.device_authorizations_per_connection`.
    #[error("this connection already started {0} device authorization(s)")]
    DeviceAuthorizationsPerConnection(u32),
    /// The source started `auth.device_authorizations_per_source` within
    /// the window.
    #[error("{0} started too many device authorizations; try again later")]
    DeviceAuthorizationsPerSource(Source),
}

impl ThrottleError {
    /// One line for the SSH user.
    pub fn user_message(&self) -> String {
        match self {
            ThrottleError::DeviceAuthorizationsPerConnection(_) => {
                "Login failed: this connection already started a browser login; connect again."
                    .into()
            }
            ThrottleError::DeviceAuthorizationsPerSource(_) => {
                "Login failed: too many browser logins from your address; try again in a few \
                 minutes."
                    .into()
            }
            _ => "Too many connections from your address; try again later.".into(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Delays for sources that failed to authenticate.
#[derive(Debug)]
pub struct FailureThrottle {
    entries: Mutex<LruCache<Source, Failures>>,
    base: Duration,
    max: Duration,
    forget_after: Duration,
}

impl FailureThrottle {
    /// A throttle with the delays of `[auth]`, tracking at most
    /// [`MAX_SOURCES`] sources.
    pub fn new(config: &AuthConfig) -> FailureThrottle {
        FailureThrottle::with_capacity(config, MAX_SOURCES)
    }

    fn with_capacity(config: &AuthConfig, capacity: usize) -> FailureThrottle {
        FailureThrottle {
            entries: Mutex::new(LruCache::new(capacity.max(1))),
            base: config.failure_delay,
            max: config.failure_delay_max,
            forget_after: config.failure_forget_after,
        }
    }

    /// Records a failure from `addr`; returns how long to wait before
    /// answering it: `base * 2^(n-1)` for the n-th recent failure of its
    /// source, at most `max` (zero when the delay is off). When the table
    /// is full, the source that failed least recently is forgotten.
    pub fn record_failure(&self, addr: IpAddr) -> Duration {
        if self.base.is_zero() {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let source = Source::of(addr);
        let mut entries = lock(&self.entries);
        let mut entry = entries.remove(&source).unwrap_or(Failures {
            count: 0,
            last: now,
        });
        if now.duration_since(entry.last) >= self.forget_after {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        entries.insert(source, entry);
        let factor = 2u32.saturating_pow(entry.count.saturating_sub(1).min(20));
        self.base.saturating_mul(factor).min(self.max)
    }

    /// Recent failures of `addr`'s source.
    pub fn failures(&self, addr: IpAddr) -> u32 {
        lock(&self.entries)
            .peek(&Source::of(addr))
            .filter(|e| e.last.elapsed() < self.forget_after)
            .map_or(0, |e| e.count)
    }
}

/// What a source did to earn a penalty (OpenSSH `PerSourcePenalties`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Penalty {
    /// A failed authentication attempt (`authfail`).
    AuthFailed,
    /// A connection closed before any authentication attempt (`noauth`).
    NoAuth,
    /// A connection dropped at `auth.login_grace_time` (`grace-exceeded`).
    GraceExceeded,
}

impl Penalty {
    /// OpenSSH's name for it (sshd_config(5), `PerSourcePenalties`).
    pub fn as_str(self) -> &'static str {
        match self {
            Penalty::AuthFailed => "authfail",
            Penalty::NoAuth => "noauth",
            Penalty::GraceExceeded => "grace-exceeded",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct PenaltyState {
    expires: Instant,
    active: bool,
}

#[derive(Debug)]
struct SourceTables {
    open: std::collections::HashMap<Source, usize>,
    penalties: LruCache<Source, PenaltyState>,
}

/// Per-source limits on unauthenticated connections and penalties.
#[derive(Debug, Clone)]
pub struct SourceLimits {
    tables: Arc<Mutex<SourceTables>>,
    max_per_source: usize,
    authfail: Duration,
    noauth: Duration,
    grace_exceeded: Duration,
    min: Duration,
    max: Duration,
}

/// One unauthenticated connection counted against its source; dropping it
/// (at authentication or disconnection) frees the slot.
#[derive(Debug)]
pub struct SourcePermit {
    source: Source,
    tables: Arc<Mutex<SourceTables>>,
}

impl SourcePermit {
    /// The source this permit counts against.
    pub fn source(&self) -> Source {
        self.source
    }
}

impl Drop for SourcePermit {
    fn drop(&mut self) {
        let mut t = lock(&self.tables);
        if let Some(n) = t.open.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                t.open.remove(&self.source);
            }
        }
    }
}

impl SourceLimits {
    /// Limits with the values of `[auth]`.
    pub fn new(config: &AuthConfig) -> SourceLimits {
        SourceLimits::with_capacity(config, MAX_SOURCES)
    }

    fn with_capacity(config: &AuthConfig, capacity: usize) -> SourceLimits {
        SourceLimits {
            tables: Arc::new(Mutex::new(SourceTables {
                open: std::collections::HashMap::new(),
                penalties: LruCache::new(capacity.max(1)),
            })),
            max_per_source: config.max_unauthenticated_per_source,
            authfail: config.penalty_authfail,
            noauth: config.penalty_noauth,
            grace_exceeded: config.penalty_grace_exceeded,
            min: config.penalty_min,
            max: config.penalty_max,
        }
    }

    /// Admits a new connection from `addr` at accept time, before any
    /// protocol byte: refused while its source is penalised or already has
    /// `max_unauthenticated_per_source` unauthenticated connections. Hold
    /// the permit until the connection authenticates or ends.
    ///
    /// # Errors
    /// [`ThrottleError::Penalised`] or [`ThrottleError::TooManyUnauthenticated`].
    pub fn admit(&self, addr: IpAddr) -> Result<SourcePermit, ThrottleError> {
        let source = Source::of(addr);
        let now = Instant::now();
        let mut t = lock(&self.tables);
        if let Some(p) = t.penalties.peek(&source).copied() {
            if now >= p.expires {
                t.penalties.remove(&source);
            } else if p.active {
                let remaining = Duration::from_secs((p.expires - now).as_secs_f64().ceil() as u64);
                return Err(ThrottleError::Penalised {
                    from: source,
                    remaining,
                });
            }
        }
        let open = t.open.get(&source).copied().unwrap_or(0);
        if open >= self.max_per_source {
            return Err(ThrottleError::TooManyUnauthenticated { from: source, open });
        }
        t.open.insert(source, open + 1);
        Ok(SourcePermit {
            source,
            tables: self.tables.clone(),
        })
    }

    /// Adds `what`'s penalty to `addr`'s source: the penalty accumulates
    /// (up to `auth.penalty_max`) and, once it reaches `auth.penalty_min`,
    /// the source is refused until it runs out. Off when `penalty_min` is
    /// zero. Returns the source and how long it is refused (whole
    /// seconds) when this penalty is the one that made it refused, so the
    /// caller audits each penalty once.
    pub fn penalise(&self, addr: IpAddr, what: Penalty) -> Option<(Source, Duration)> {
        if self.min.is_zero() {
            return None;
        }
        let add = match what {
            Penalty::AuthFailed => self.authfail,
            Penalty::NoAuth => self.noauth,
            Penalty::GraceExceeded => self.grace_exceeded,
        };
        if add.is_zero() {
            return None;
        }
        let source = Source::of(addr);
        let now = Instant::now();
        let mut t = lock(&self.tables);
        let mut p = t
            .penalties
            .remove(&source)
            .filter(|p| p.expires > now)
            .unwrap_or(PenaltyState {
                expires: now,
                active: false,
            });
        p.expires = (p.expires + add).min(now + self.max);
        // Whole seconds, as OpenSSH counts them: time passing between two
        // penalties must not keep a source just under the minimum.
        let pending = p.expires.duration_since(now).as_secs_f64().ceil();
        let was_active = p.active;
        p.active = p.active || pending >= self.min.as_secs_f64();
        t.penalties.insert(source, p);
        (p.active && !was_active).then(|| (source, Duration::from_secs(pending as u64)))
    }

    /// Unauthenticated connections `addr`'s source holds now.
    pub fn open(&self, addr: IpAddr) -> usize {
        lock(&self.tables)
            .open
            .get(&Source::of(addr))
            .copied()
            .unwrap_or(0)
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// How many device authorizations connections and sources may start.
#[derive(Debug)]
pub struct DeviceAuthorizationBudget {
    per_connection: u32,
    per_source: u32,
    window: Duration,
    buckets: Mutex<LruCache<Source, Bucket>>,
}

/// One connection's share of [`DeviceAuthorizationBudget`]; keep it with
/// the connection (a new keyboard-interactive attempt does not renew it).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionDeviceBudget {
    started: u32,
}

impl DeviceAuthorizationBudget {
    /// The budget of `[auth]`: `device_authorizations_per_connection`, and
    /// `device_authorizations_per_source` per `device_authorization_window`
    /// (a token bucket refilled evenly over the window).
    pub fn new(config: &AuthConfig) -> DeviceAuthorizationBudget {
        DeviceAuthorizationBudget::with_capacity(config, MAX_SOURCES)
    }

    fn with_capacity(config: &AuthConfig, capacity: usize) -> DeviceAuthorizationBudget {
        DeviceAuthorizationBudget {
            per_connection: config.device_authorizations_per_connection,
            per_source: config.device_authorizations_per_source,
            window: config.device_authorization_window,
            buckets: Mutex::new(LruCache::new(capacity.max(1))),
        }
    }

    /// A fresh share for a new connection.
    pub fn connection(&self) -> ConnectionDeviceBudget {
        ConnectionDeviceBudget { started: 0 }
    }

    /// Takes one device authorization for `connection` from `addr`; call
    /// before asking the issuer (RFC 8628 §3.1).
    ///
    /// # Errors
    /// [`ThrottleError::DeviceAuthorizationsPerConnection`] or
    /// [`ThrottleError::DeviceAuthorizationsPerSource`]; nothing is taken
    /// then.
    pub fn try_start(
        &self,
        addr: IpAddr,
        connection: &mut ConnectionDeviceBudget,
    ) -> Result<(), ThrottleError> {
        if connection.started >= self.per_connection {
            return Err(ThrottleError::DeviceAuthorizationsPerConnection(
                connection.started,
            ));
        }
        let source = Source::of(addr);
        let now = Instant::now();
        let capacity = f64::from(self.per_source);
        let rate = capacity / self.window.as_secs_f64().max(0.001);
        let mut buckets = lock(&self.buckets);
        let mut b = buckets.remove(&source).unwrap_or(Bucket {
            tokens: capacity,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(capacity);
        b.at = now;
        let result = if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            connection.started += 1;
            Ok(())
        } else {
            Err(ThrottleError::DeviceAuthorizationsPerSource(source))
        };
        buckets.insert(source, b);
        result
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn auth(extra: &str) -> AuthConfig {
        let text = format!("[oidc]\nissuer = \"https://i\"\nclient_id = \"c\"\n[auth]\n{extra}\n");
        crate::config::Config::parse(&text, std::path::Path::new("t"))
            .unwrap()
            .auth
    }

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Source::of(a), Source::of(b));
        assert_ne!(Source::of(a), Source::of(c));
        assert_eq!(Source::of(a).to_string(), "2001:db8:1:2::/64");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(Source::of(mapped), Source::of(v4(7)));
    }

    #[test]
    fn failure_delays_grow_per_source_up_to_the_max() {
        let t = FailureThrottle::new(&auth("failure_delay = \"1s\"\nfailure_delay_max = \"5s\""));
        let delays: Vec<u64> = (0..5).map(|_| t.record_failure(v4(1)).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
        assert_eq!(t.record_failure(v4(2)).as_secs(), 1);
        assert_eq!(t.failures(v4(1)), 5);
        let off = FailureThrottle::new(&auth("failure_delay = \"0s\""));
        assert_eq!(off.record_failure(v4(1)), Duration::ZERO);
    }

    /// Review M4: the old table was cleared when full, so a spray of
    /// addresses made everyone's failures forgotten. Now only the oldest
    /// are evicted.
    #[test]
    fn a_full_failure_table_evicts_the_oldest_not_everyone() {
        let t = FailureThrottle::with_capacity(&auth(""), 100);
        for _ in 0..4 {
            t.record_failure(v4(1));
        }
        for i in 0..99u32 {
            t.record_failure(IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + i)));
        }
        // The attacked address failed recently again: it stays.
        t.record_failure(v4(1));
        for i in 99..300u32 {
            t.record_failure(IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + i)));
            if i % 50 == 0 {
                t.record_failure(v4(1));
            }
        }
        assert!(t.failures(v4(1)) >= 5, "{}", t.failures(v4(1)));
        assert_eq!(t.failures(IpAddr::V4(Ipv4Addr::from(0x0A00_0000))), 0);
        assert_eq!(lock(&t.entries).len(), 100);
    }

    #[test]
    fn unauthenticated_connections_are_capped_per_source_not_globally() {
        let limits = SourceLimits::new(&auth("max_unauthenticated_per_source = 3"));
        let attacker: IpAddr = "127.0.0.2".parse().unwrap();
        let user: IpAddr = "127.0.0.1".parse().unwrap();
        let held: Vec<SourcePermit> = (0..3).map(|_| limits.admit(attacker).unwrap()).collect();
        for _ in 0..200 {
            assert!(matches!(
                limits.admit(attacker),
                Err(ThrottleError::TooManyUnauthenticated { open: 3, .. })
            ));
        }
        let permit = limits.admit(user).unwrap();
        assert_eq!(permit.source(), Source::of(user));
        assert_eq!(limits.open(attacker), 3);
        drop(held);
        assert_eq!(limits.open(attacker), 0);
        assert!(limits.admit(attacker).is_ok());
        // One IPv6 /64 is one source.
        let limits = SourceLimits::new(&auth("max_unauthenticated_per_source = 2"));
        let _a = limits.admit("2001:db8::1".parse().unwrap()).unwrap();
        let _b = limits.admit("2001:db8::2".parse().unwrap()).unwrap();
        assert!(limits.admit("2001:db8::3".parse().unwrap()).is_err());
        assert!(limits.admit("2001:db8:0:1::3".parse().unwrap()).is_ok());
    }

    #[test]
    fn penalties_accumulate_then_refuse_the_source_only() {
        let limits = SourceLimits::new(&auth(
            "penalty_authfail = \"5s\"\npenalty_min = \"15s\"\npenalty_max = \"30s\"",
        ));
        let bad = v4(9);
        assert_eq!(limits.penalise(bad, Penalty::AuthFailed), None);
        assert_eq!(limits.penalise(bad, Penalty::AuthFailed), None);
        assert!(limits.admit(bad).is_ok(), "10 s is under the 15 s minimum");
        assert_eq!(
            limits.penalise(bad, Penalty::AuthFailed),
            Some((Source::of(bad), Duration::from_secs(15))),
            "the penalty that made it refused, once"
        );
        match limits.admit(bad) {
            Err(ThrottleError::Penalised { remaining, .. }) => {
                assert!(
                    remaining <= Duration::from_secs(15) && remaining >= Duration::from_secs(14)
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            limits.penalise(bad, Penalty::AuthFailed),
            None,
            "already refused"
        );
        for _ in 0..20 {
            limits.penalise(bad, Penalty::GraceExceeded);
        }
        match limits.admit(bad) {
            Err(ThrottleError::Penalised { remaining, .. }) => {
                assert!(remaining <= Duration::from_secs(30), "capped at the max");
            }
            other => panic!("{other:?}"),
        }
        assert!(limits.admit(v4(10)).is_ok());
        let off = SourceLimits::new(&auth("penalty_min = \"0s\""));
        for _ in 0..100 {
            off.penalise(bad, Penalty::GraceExceeded);
        }
        assert!(off.admit(bad).is_ok());
    }

    #[test]
    fn device_authorizations_are_budgeted_per_connection_and_source() {
        let budget = DeviceAuthorizationBudget::new(&auth(
            "device_authorizations_per_connection = 1\ndevice_authorizations_per_source = 3\n\
             device_authorization_window = \"1h\"",
        ));
        let mut first = budget.connection();
        budget.try_start(v4(1), &mut first).unwrap();
        assert_eq!(
            budget.try_start(v4(1), &mut first),
            Err(ThrottleError::DeviceAuthorizationsPerConnection(1))
        );
        for _ in 0..2 {
            budget.try_start(v4(1), &mut budget.connection()).unwrap();
        }
        let err = budget
            .try_start(v4(1), &mut budget.connection())
            .unwrap_err();
        assert!(matches!(
            err,
            ThrottleError::DeviceAuthorizationsPerSource(_)
        ));
        assert!(err.user_message().contains("too many browser logins"));
        budget.try_start(v4(2), &mut budget.connection()).unwrap();
        let none =
            DeviceAuthorizationBudget::new(&auth("device_authorizations_per_connection = 0"));
        assert!(none.try_start(v4(3), &mut none.connection()).is_err());
    }
}
