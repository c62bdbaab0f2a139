//! Which connection attempts a server takes on, before any state is spent on them. No I/O.
//!
//! Each accepted attempt costs a QUIC connection, a TLS handshake and a task until its token
//! handshake completes or its deadline passes. A flood of attempts (spoofed Initials that never
//! answer, or real clients that never send `CONN_INIT`) must not hold more than a bounded amount
//! of that. [`Admission`] decides, for each new attempt:
//!
//! - with many handshakes in progress, an address QUIC has not validated gets a stateless Retry
//!   (it costs nothing; a spoofed or silent source never comes back);
//! - at the cap of handshakes in progress, overall or for one source address, the attempt is
//!   dropped: an honest client sends its Initial again after its probe timeout, and gets in once
//!   handshakes complete, so a burst is delayed rather than refused.
//!
//! Source addresses are counted per IPv4 address and per IPv6 /64 (one host usually holds a
//! whole /64).

use std::collections::HashMap;
use std::net::IpAddr;

/// The limits of [`Admission`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Most handshakes in progress (connections that have not reached `CONN_OK`).
    pub max_pending: usize,
    /// Most handshakes in progress from one source address.
    pub max_pending_per_address: usize,
    /// From this many handshakes in progress on, unvalidated addresses get a Retry first.
    pub retry_threshold: usize,
}

/// What to do with a new connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Take it on; call [`Admission::finished`] when its handshake ends.
    Accept,
    /// Answer with a stateless Retry: the client must prove it receives at its address.
    Retry,
    /// Drop its packet: too many handshakes in progress overall.
    DropOverloaded,
    /// Drop its packet: too many handshakes in progress from its address.
    DropAddressBusy,
}

/// The handshakes in progress, overall and per source address.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    pending: usize,
    per_address: HashMap<AddressKey, usize>,
}

/// An IPv4 address, or the /64 prefix of an IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum AddressKey {
    V4(u32),
    V6(u64),
}

impl From<IpAddr> for AddressKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => AddressKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey::V4(u32::from(v4)),
                None => {
                    let bits = u128::from(v6);
                    AddressKey::V6(u64::try_from(bits >> 64).unwrap_or(u64::MAX))
                }
            },
        }
    }
}

impl Admission {
    /// No handshake in progress yet.
    pub fn new(limits: AdmissionLimits) -> Self {
        Admission {
            limits,
            pending: 0,
            per_address: HashMap::new(),
        }
    }

    /// Handshakes in progress.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Decides about an attempt from `ip`; `validated` is whether QUIC has already validated
    /// the address (the Initial carried a Retry token).
    pub fn consider(&mut self, ip: IpAddr, validated: bool) -> Admit {
        if !validated && self.pending >= self.limits.retry_threshold {
            return Admit::Retry;
        }
        if self.pending >= self.limits.max_pending {
            return Admit::DropOverloaded;
        }
        let from_address = self.per_address.entry(AddressKey::from(ip)).or_insert(0);
        if *from_address >= self.limits.max_pending_per_address {
            return Admit::DropAddressBusy;
        }
        *from_address = from_address.saturating_add(1);
        self.pending = self.pending.saturating_add(1);
        Admit::Accept
    }

    /// A handshake accepted from `ip` ended (established or failed).
    pub fn finished(&mut self, ip: IpAddr) {
        let key = AddressKey::from(ip);
        if let Some(count) = self.per_address.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_address.remove(&key);
            }
            self.pending = self.pending.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: AdmissionLimits = AdmissionLimits {
        max_pending: 4,
        max_pending_per_address: 2,
        retry_threshold: 3,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn attempts_are_accepted_up_to_the_per_address_limit() {
        let mut a = Admission::new(LIMITS);
        assert_eq!(a.consider(ip("10.0.0.1"), false), Admit::Accept);
        assert_eq!(a.consider(ip("10.0.0.1"), false), Admit::Accept);
        assert_eq!(a.consider(ip("10.0.0.1"), false), Admit::DropAddressBusy);
        assert_eq!(a.consider(ip("10.0.0.2"), false), Admit::Accept);
        assert_eq!(a.pending(), 3);
        a.finished(ip("10.0.0.1"));
        assert_eq!(a.consider(ip("10.0.0.1"), true), Admit::Accept);
    }

    #[test]
    fn past_the_threshold_unvalidated_addresses_get_a_retry_and_validated_ones_get_in() {
        let mut a = Admission::new(LIMITS);
        for host in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
            assert_eq!(a.consider(ip(host), false), Admit::Accept);
        }
        assert_eq!(a.consider(ip("10.0.0.4"), false), Admit::Retry);
        assert_eq!(a.consider(ip("10.0.0.4"), true), Admit::Accept);
        assert_eq!(a.consider(ip("10.0.0.5"), true), Admit::DropOverloaded);
        a.finished(ip("10.0.0.2"));
        assert_eq!(a.consider(ip("10.0.0.5"), true), Admit::Accept);
    }

    #[test]
    fn an_ipv6_slash_64_counts_as_one_address() {
        let mut a = Admission::new(LIMITS);
        assert_eq!(a.consider(ip("2001:db8:1:2::1"), true), Admit::Accept);
        assert_eq!(a.consider(ip("2001:db8:1:2::ffff"), true), Admit::Accept);
        assert_eq!(
            a.consider(ip("2001:db8:1:2:abcd::9"), true),
            Admit::DropAddressBusy
        );
        assert_eq!(a.consider(ip("2001:db8:1:3::1"), true), Admit::Accept);
        assert_eq!(
            a.consider(ip("::ffff:10.0.0.1"), true),
            Admit::Accept,
            "IPv4-mapped"
        );
        assert_eq!(
            a.consider(ip("10.0.0.2"), true),
            Admit::DropOverloaded,
            "limits overall still apply"
        );
    }

    #[test]
    fn finishing_an_unknown_address_changes_nothing() {
        let mut a = Admission::new(LIMITS);
        a.finished(ip("10.9.9.9"));
        assert_eq!(a.pending(), 0);
    }
}
