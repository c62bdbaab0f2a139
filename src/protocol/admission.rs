//! Which connection attempts a server takes on, before any state is spent on them. No I/O.
//!
//! Each accepted attempt costs a QUIC connection, a TLS handshake and a task until its token
//! handshake completes or its deadline passes. A flood of attempts (spoofed Initials that never
//! answer, or real clients that never send `CONN_INIT`) must not hold more than a bounded amount
//! of that, nor keep honest clients waiting. [`Admission`] decides, for each new attempt:
//!
//! - with many handshakes in progress, an address QUIC has not validated gets a stateless Retry
//!   (it costs nothing; a spoofed or silent source never comes back);
//! - at the cap of handshakes in progress from one source address, the attempt is dropped (an
//!   honest client sends its Initial again after its probe timeout);
//! - at the overall cap, an attempt from a validated address is taken on and the **oldest**
//!   handshake in progress is evicted to make room, if it has been in progress for at least
//!   `min_evictable_age`. Honest handshakes take a few round trips, so the oldest are the ones
//!   that stall: connections stuck before `CONN_OK` cannot keep honest clients out until their
//!   deadline, and a flood of new attempts cannot evict handshakes younger than that age (the
//!   attempt is dropped instead). An unvalidated attempt at the cap is dropped, so spoofed
//!   sources can never evict anyone.
//!
//! Source addresses are counted per IPv4 address and per IPv6 /64 (one host usually holds a
//! whole /64).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The limits of [`Admission`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Most handshakes in progress (connections that have not reached `CONN_OK`).
    pub max_pending: usize,
    /// Most handshakes in progress from one source address.
    pub max_pending_per_address: usize,
    /// From this many handshakes in progress on, unvalidated addresses get a Retry first.
    pub retry_threshold: usize,
    /// A handshake can be evicted only once it has been in progress this long.
    pub min_evictable_age: Duration,
}

/// One accepted attempt's place among the handshakes in progress. Places are numbered in the
/// order they were given, so a lower number is an older handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Place(pub u64);

/// What to do with a new connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Take it on; call [`Admission::finished`] with its place when its handshake ends.
    Accept(Place),
    /// Take it on in `place`, and end the handshake in place `evicted` at once (the oldest in
    /// progress, which no longer counts): the server was at its cap.
    AcceptEvicting {
        /// The new attempt's place.
        place: Place,
        /// The place of the handshake to end.
        evicted: Place,
    },
    /// Answer with a stateless Retry: the client must prove it receives at its address.
    Retry,
    /// Drop its packet: too many handshakes in progress overall, and the address is not
    /// validated or the oldest handshake is younger than `min_evictable_age`.
    DropOverloaded,
    /// Drop its packet: too many handshakes in progress from its address.
    DropAddressBusy,
}

/// The handshakes in progress, overall and per source address.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    next_place: u64,
    /// Every handshake in progress, oldest first, with its address and start.
    places: BTreeMap<Place, (AddressKey, Instant)>,
    per_address: HashMap<AddressKey, usize>,
}

/// An IPv4 address, or the /64 prefix of an IPv6 address: what counts as one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum AddressKey {
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
            next_place: 0,
            places: BTreeMap::new(),
            per_address: HashMap::new(),
        }
    }

    /// Handshakes in progress.
    pub fn pending(&self) -> usize {
        self.places.len()
    }

    /// Whether a browser's connection (ALPN `h3`) may begin its WebTransport setup while
    /// `abandoned` connections the server cannot close are open (setups given up while the
    /// browser held an HTTP/3 stream open, and connections still draining; SECURITY.md, Known
    /// limits): no more than as many as handshakes may be in progress.
    pub fn admits_browser(&self, abandoned: usize) -> bool {
        abandoned <= self.limits.max_pending
    }

    /// Decides about an attempt from `ip` at `now`; `validated` is whether QUIC has already
    /// validated the address (the Initial carried a Retry token).
    pub fn consider(&mut self, ip: IpAddr, validated: bool, now: Instant) -> Admit {
        if !validated && self.pending() >= self.limits.retry_threshold {
            return Admit::Retry;
        }
        let key = AddressKey::from(ip);
        if self.per_address.get(&key).copied().unwrap_or(0) >= self.limits.max_pending_per_address {
            return Admit::DropAddressBusy;
        }
        let evicted = if self.pending() >= self.limits.max_pending {
            if !validated {
                return Admit::DropOverloaded;
            }
            match self.places.first_key_value() {
                Some((&oldest, &(_, started)))
                    if now.saturating_duration_since(started) >= self.limits.min_evictable_age =>
                {
                    self.finished(oldest);
                    Some(oldest)
                }
                _ => return Admit::DropOverloaded,
            }
        } else {
            None
        };
        let place = Place(self.next_place);
        self.next_place = self.next_place.saturating_add(1);
        self.places.insert(place, (key, now));
        let from_address = self.per_address.entry(key).or_insert(0);
        *from_address = from_address.saturating_add(1);
        match evicted {
            Some(evicted) => Admit::AcceptEvicting { place, evicted },
            None => Admit::Accept(place),
        }
    }

    /// The handshake in `place` ended (established or failed). Nothing happens if the place was
    /// already given back, or evicted.
    pub fn finished(&mut self, place: Place) {
        let Some((key, _)) = self.places.remove(&place) else {
            return;
        };
        if let Some(count) = self.per_address.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_address.remove(&key);
            }
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
        min_evictable_age: Duration::from_secs(1),
    };

    /// Far enough in the future that every handshake is evictable.
    fn later() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn accepted(admit: Admit) -> Place {
        match admit {
            Admit::Accept(place) => place,
            other => panic!("expected Accept, got {other:?}"),
        }
    }

    /// Proves: browsers are admitted while the connections the server cannot close number at
    /// most the handshake cap, and refused past it.
    #[test]
    fn browsers_are_refused_past_the_cap_on_abandoned_connections() {
        let a = Admission::new(LIMITS);
        assert!(a.admits_browser(0));
        assert!(a.admits_browser(LIMITS.max_pending));
        assert!(!a.admits_browser(LIMITS.max_pending + 1));
    }

    #[test]
    fn attempts_are_accepted_up_to_the_per_address_limit() {
        let mut a = Admission::new(LIMITS);
        let first = accepted(a.consider(ip("10.0.0.1"), false, later()));
        accepted(a.consider(ip("10.0.0.1"), false, later()));
        assert_eq!(
            a.consider(ip("10.0.0.1"), false, later()),
            Admit::DropAddressBusy
        );
        accepted(a.consider(ip("10.0.0.2"), false, later()));
        assert_eq!(a.pending(), 3);
        a.finished(first);
        accepted(a.consider(ip("10.0.0.1"), true, later()));
    }

    #[test]
    fn past_the_threshold_unvalidated_addresses_get_a_retry_and_validated_ones_get_in() {
        let mut a = Admission::new(LIMITS);
        for host in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
            accepted(a.consider(ip(host), false, later()));
        }
        assert_eq!(a.consider(ip("10.0.0.4"), false, later()), Admit::Retry);
        accepted(a.consider(ip("10.0.0.4"), true, later()));
        assert_eq!(a.pending(), 4);
    }

    #[test]
    fn at_the_cap_a_validated_attempt_evicts_the_oldest_handshake() {
        let t0 = Instant::now();
        let mut a = Admission::new(LIMITS);
        let places: Vec<Place> = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
            .into_iter()
            .map(|host| accepted(a.consider(ip(host), true, t0)))
            .collect();
        // The second-oldest finishes on its own; the oldest is then still the first.
        a.finished(places[1]);
        let fifth = accepted(a.consider(ip("10.0.0.5"), true, t0));
        match a.consider(ip("10.0.0.6"), true, t0 + Duration::from_secs(1)) {
            Admit::AcceptEvicting { place, evicted } => {
                assert_eq!(evicted, places[0]);
                assert!(place > fifth);
            }
            other => panic!("expected an eviction, got {other:?}"),
        }
        assert_eq!(a.pending(), 4);
        // The evicted handshake's own end changes nothing: its place is already free.
        a.finished(places[0]);
        assert_eq!(a.pending(), 4);
        // 10.0.0.1 no longer counts against its address.
        assert!(matches!(
            a.consider(ip("10.0.0.1"), true, later()),
            Admit::AcceptEvicting { evicted, .. } if evicted == places[2]
        ));
    }

    #[test]
    fn handshakes_younger_than_the_minimum_age_are_not_evicted() {
        let t0 = Instant::now();
        let mut a = Admission::new(LIMITS);
        for host in ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"] {
            accepted(a.consider(ip(host), true, t0));
        }
        let young = t0 + Duration::from_millis(999);
        assert_eq!(
            a.consider(ip("10.0.0.5"), true, young),
            Admit::DropOverloaded
        );
        assert_eq!(a.pending(), 4);
        assert!(matches!(
            a.consider(ip("10.0.0.5"), true, t0 + Duration::from_secs(1)),
            Admit::AcceptEvicting { .. }
        ));
    }

    #[test]
    fn an_unvalidated_attempt_never_evicts() {
        let limits = AdmissionLimits {
            retry_threshold: 100,
            ..LIMITS
        };
        let mut a = Admission::new(limits);
        for host in ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"] {
            accepted(a.consider(ip(host), false, later()));
        }
        assert_eq!(
            a.consider(ip("10.0.0.5"), false, later()),
            Admit::DropOverloaded
        );
        assert_eq!(a.pending(), 4);
    }

    #[test]
    fn with_no_places_at_all_everything_is_dropped() {
        let limits = AdmissionLimits {
            max_pending: 0,
            ..LIMITS
        };
        let mut a = Admission::new(limits);
        assert_eq!(
            a.consider(ip("10.0.0.1"), true, later()),
            Admit::DropOverloaded
        );
        assert_eq!(a.pending(), 0);
    }

    #[test]
    fn an_ipv6_slash_64_counts_as_one_address() {
        let mut a = Admission::new(AdmissionLimits {
            max_pending: 10,
            ..LIMITS
        });
        accepted(a.consider(ip("2001:db8:1:2::1"), true, later()));
        accepted(a.consider(ip("2001:db8:1:2::ffff"), true, later()));
        assert_eq!(
            a.consider(ip("2001:db8:1:2:abcd::9"), true, later()),
            Admit::DropAddressBusy
        );
        accepted(a.consider(ip("2001:db8:1:3::1"), true, later()));
        accepted(a.consider(ip("::ffff:10.0.0.1"), true, later()));
        accepted(a.consider(ip("10.0.0.1"), true, later()));
        assert_eq!(
            a.consider(ip("::ffff:10.0.0.1"), true, later()),
            Admit::DropAddressBusy,
            "IPv4-mapped counts as the IPv4 address"
        );
    }

    #[test]
    fn finishing_an_unknown_place_changes_nothing() {
        let mut a = Admission::new(LIMITS);
        accepted(a.consider(ip("10.0.0.1"), true, later()));
        a.finished(Place(99));
        assert_eq!(a.pending(), 1);
    }
}
