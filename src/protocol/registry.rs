//! A server's live sessions: their player IDs, the session limit, and the single-use resume
//! credentials. No I/O.
//!
//! A session takes a slot when its `CONN_INIT` is admitted and keeps it until it ends (its
//! connection closed for good, or the grace period after a lost connection passed), so
//! handshakes in progress count against the limit as well as established sessions. Each
//! established session holds one resume credential; a successful `RESUME` replaces it. The
//! replaced credential is refused ([`Reason::TokenReused`]) as soon as the client confirms it
//! received its successor (its first message on the resumed connection); until then it is still
//! accepted, so a client whose `CONN_OK` was lost with its connection can try again.
//!
//! Sessions are also counted per source address (an IPv4 address, or an IPv6 /64, as in
//! [`admission`](super::admission)): one address may hold at most
//! [`per_address_limit`](SessionRegistry::per_address_limit) sessions, so a single host cannot
//! take every slot. A session counts under the address it was admitted from, or resumed from
//! last; a resume moves it and is never refused for the limit (the session already holds its
//! slot).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use super::admission::AddressKey;
use super::message::{PlayerId, Reason, Token};

/// Live sessions of one server, each with a value `T` the caller attaches (the driver's
/// per-session state).
#[derive(Debug)]
pub struct SessionRegistry<T> {
    max_sessions: usize,
    max_per_address: usize,
    entries: BTreeMap<PlayerId, Entry<T>>,
    per_address: HashMap<AddressKey, usize>,
    next_id: u64,
}

#[derive(Debug)]
struct Entry<T> {
    /// Set once the session is established; `None` during its first handshake.
    established: Option<Established<T>>,
    /// The address the session counts under, if it was admitted with one.
    address: Option<AddressKey>,
}

#[derive(Debug)]
struct Established<T> {
    credential: Token,
    /// The credential this one replaced: still accepted while `confirmed` is false, refused as
    /// reused afterwards.
    previous: Option<Token>,
    /// Whether the client has shown it received `credential`.
    confirmed: bool,
    value: T,
}

impl<T> SessionRegistry<T> {
    /// An empty registry holding at most `max_sessions` sessions, with no limit per address.
    pub fn new(max_sessions: usize) -> Self {
        SessionRegistry {
            max_sessions,
            max_per_address: usize::MAX,
            entries: BTreeMap::new(),
            per_address: HashMap::new(),
            next_id: 1,
        }
    }

    /// Limits the sessions one source address may hold (see [`admit_from`](Self::admit_from)).
    #[must_use]
    pub fn per_address_limit(mut self, max_per_address: usize) -> Self {
        self.max_per_address = max_per_address;
        self
    }

    /// Whether `ip` holds as many sessions as one address may.
    pub fn is_address_full(&self, ip: IpAddr) -> bool {
        self.per_address
            .get(&AddressKey::from(ip))
            .is_some_and(|n| *n >= self.max_per_address)
    }

    /// The established sessions (not those still in their first handshake), in no particular
    /// order.
    pub fn established(&self) -> impl Iterator<Item = (PlayerId, &T)> {
        self.entries
            .iter()
            .filter_map(|(id, entry)| entry.established.as_ref().map(|e| (*id, &e.value)))
    }

    /// Number of live sessions (first handshakes in progress included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether another session would exceed the limit.
    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.max_sessions
    }

    /// Takes a slot for `requested`, or for the next free sequential ID when `None`, without
    /// counting it against any address.
    ///
    /// Fails with [`Reason::ServerFull`] at the limit, and with [`Reason::PlayerIdInUse`] when the
    /// requested ID is live.
    pub fn admit(&mut self, requested: Option<PlayerId>) -> Result<PlayerId, Reason> {
        self.take(requested, None)
    }

    /// As [`admit`](Self::admit), for a client at `ip`: also fails with
    /// [`Reason::AddressFull`] when that address already holds its limit of sessions.
    pub fn admit_from(
        &mut self,
        requested: Option<PlayerId>,
        ip: IpAddr,
    ) -> Result<PlayerId, Reason> {
        if self.is_address_full(ip) {
            return Err(Reason::AddressFull);
        }
        self.take(requested, Some(AddressKey::from(ip)))
    }

    fn take(
        &mut self,
        requested: Option<PlayerId>,
        address: Option<AddressKey>,
    ) -> Result<PlayerId, Reason> {
        if self.is_full() {
            return Err(Reason::ServerFull);
        }
        let id = match requested {
            Some(id) if self.entries.contains_key(&id) => return Err(Reason::PlayerIdInUse),
            Some(id) => id,
            None => self.next_free_id()?,
        };
        self.entries.insert(
            id,
            Entry {
                established: None,
                address,
            },
        );
        if let Some(key) = address {
            Self::count(&mut self.per_address, key);
        }
        Ok(id)
    }

    /// Counts `id`'s session under `ip` from now on (it resumed from there). Never refused: a
    /// resumed session already holds its slot, so it may take an address past its limit.
    pub fn moved(&mut self, id: PlayerId, ip: IpAddr) {
        let key = AddressKey::from(ip);
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        if let Some(old) = entry.address.replace(key) {
            Self::uncount(&mut self.per_address, old);
        }
        Self::count(&mut self.per_address, key);
    }

    fn count(per_address: &mut HashMap<AddressKey, usize>, key: AddressKey) {
        let n = per_address.entry(key).or_insert(0);
        // At most one count per live session, and there are at most `max_sessions` of those.
        *n = n.saturating_add(1);
    }

    fn uncount(per_address: &mut HashMap<AddressKey, usize>, key: AddressKey) {
        if let Some(n) = per_address.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_address.remove(&key);
            }
        }
    }

    /// Records that `id`'s first handshake completed, with its first resume credential.
    /// Returns `false` (and changes nothing) if `id` holds no slot.
    pub fn establish(&mut self, id: PlayerId, credential: Token, value: T) -> bool {
        match self.entries.get_mut(&id) {
            Some(entry) => {
                entry.established = Some(Established {
                    credential,
                    previous: None,
                    confirmed: true,
                    value,
                });
                true
            }
            None => false,
        }
    }

    /// Checks a reconnection request and, if it is valid, replaces the credential with `next`
    /// and returns the session's value. `proves(credential)` says whether the request proves
    /// possession of `credential` (the driver compares the presented proof, in constant time,
    /// with the one it computes for `credential` on the request's connection); it is asked
    /// for the current credential and for the previous one, always both.
    ///
    /// Valid: the current credential, or the one it replaced while the client has not confirmed
    /// the current one ([`confirm`](Self::confirm)). Fails with [`Reason::UnknownSession`] when
    /// `id` has no established session, [`Reason::TokenReused`] for a replaced, confirmed
    /// credential, and [`Reason::InvalidToken`] otherwise.
    pub fn resume(
        &mut self,
        id: PlayerId,
        proves: impl Fn(&Token) -> bool,
        next: Token,
    ) -> Result<&T, Reason> {
        let session = self
            .entries
            .get_mut(&id)
            .and_then(|e| e.established.as_mut())
            .ok_or(Reason::UnknownSession)?;
        let current = proves(&session.credential);
        let previous = session.previous.as_ref().is_some_and(&proves);
        if current {
            session.previous = Some(std::mem::replace(&mut session.credential, next));
        } else if previous && !session.confirmed {
            // A retry: the client never got the credential the last resume issued.
            session.credential = next;
        } else if previous {
            return Err(Reason::TokenReused);
        } else {
            return Err(Reason::InvalidToken);
        }
        session.confirmed = false;
        Ok(&session.value)
    }

    /// The client of `id` has shown, on its resumed connection, that it received the current
    /// credential: the one it replaced is no longer accepted.
    pub fn confirm(&mut self, id: PlayerId) {
        if let Some(session) = self
            .entries
            .get_mut(&id)
            .and_then(|e| e.established.as_mut())
        {
            session.confirmed = true;
        }
    }

    /// The value attached to `id`'s established session.
    pub fn get(&self, id: PlayerId) -> Option<&T> {
        self.entries
            .get(&id)
            .and_then(|e| e.established.as_ref())
            .map(|s| &s.value)
    }

    /// Frees `id`'s slot and returns its value. Releasing an ID that is not live does nothing.
    pub fn release(&mut self, id: PlayerId) -> Option<T> {
        let entry = self.entries.remove(&id)?;
        if let Some(key) = entry.address {
            Self::uncount(&mut self.per_address, key);
        }
        entry.established.map(|s| s.value)
    }

    fn next_free_id(&mut self) -> Result<PlayerId, Reason> {
        // IDs chosen by an authenticator may sit in the sequence: skip them. Fewer than
        // `max_sessions + 1` probes always find a free one.
        loop {
            let id = PlayerId(self.next_id);
            self.next_id = self.next_id.checked_add(1).ok_or(Reason::ServerFull)?;
            if !self.entries.contains_key(&id) {
                return Ok(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::rules::tokens_equal;
    use super::*;

    /// A request that presents `credential` itself (what the proof of it stands for here).
    fn shown(credential: &Token) -> impl Fn(&Token) -> bool + '_ {
        move |c| tokens_equal(c, credential)
    }

    #[test]
    fn ids_are_sequential_unique_and_skip_chosen_ones() {
        let mut r = SessionRegistry::<()>::new(10);
        assert_eq!(r.admit(Some(PlayerId(2))), Ok(PlayerId(2)));
        assert_eq!(r.admit(None), Ok(PlayerId(1)));
        assert_eq!(r.admit(None), Ok(PlayerId(3)));
        assert_eq!(r.admit(Some(PlayerId(3))), Err(Reason::PlayerIdInUse));
        r.release(PlayerId(3));
        assert_eq!(r.admit(Some(PlayerId(3))), Ok(PlayerId(3)));
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn the_limit_refuses_with_server_full_until_a_slot_frees() {
        let mut r = SessionRegistry::<()>::new(2);
        let a = r.admit(None).unwrap();
        r.admit(None).unwrap();
        assert_eq!(r.admit(None), Err(Reason::ServerFull));
        r.release(a);
        assert!(r.admit(None).is_ok());
    }

    #[test]
    fn a_credential_resumes_once_and_is_then_reported_as_reused() {
        let mut r = SessionRegistry::new(10);
        let id = r.admit(None).unwrap();
        let (first, second, third) = (Token([1; 16]), Token([2; 16]), Token([3; 16]));
        assert_eq!(
            r.resume(id, shown(&first), second),
            Err(Reason::UnknownSession),
            "not established yet"
        );
        assert!(r.establish(id, first, "state"));
        assert_eq!(
            r.resume(id, shown(&Token([9; 16])), second),
            Err(Reason::InvalidToken)
        );
        assert_eq!(r.resume(id, shown(&first), second), Ok(&"state"));
        r.confirm(id);
        assert_eq!(r.resume(id, shown(&first), third), Err(Reason::TokenReused));
        assert_eq!(r.resume(id, shown(&second), third), Ok(&"state"));
        r.confirm(id);
        assert_eq!(
            r.resume(PlayerId(99), shown(&third), first),
            Err(Reason::UnknownSession)
        );
        assert_eq!(r.release(id), Some("state"));
        assert_eq!(
            r.resume(id, shown(&third), first),
            Err(Reason::UnknownSession)
        );
    }

    #[test]
    fn a_client_that_never_got_its_new_credential_can_retry_with_the_old_one() {
        let mut r = SessionRegistry::new(10);
        let id = r.admit(None).unwrap();
        let [c0, c1, c2, c3] = [0u8, 1, 2, 3].map(|b| Token([b; 16]));
        r.establish(id, c0, ());
        // A resume with c0 issues c1, but CONN_OK is lost: c0 is tried again, twice.
        assert!(r.resume(id, shown(&c0), c1).is_ok());
        assert!(
            r.resume(id, shown(&c0), c2).is_ok(),
            "unconfirmed: the old one still works"
        );
        assert_eq!(
            r.resume(id, shown(&c1), c3),
            Err(Reason::InvalidToken),
            "c1 never reached it"
        );
        assert!(r.resume(id, shown(&c0), c3).is_ok());
        // The client confirms c3: c0 is now refused as reused.
        r.confirm(id);
        assert_eq!(r.resume(id, shown(&c0), c1), Err(Reason::TokenReused));
        assert!(r.resume(id, shown(&c3), c1).is_ok());
    }

    #[test]
    fn one_address_holds_at_most_its_limit_and_a_resume_moves_without_counting_twice() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let v6_same_64: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        let mut r = SessionRegistry::<()>::new(10).per_address_limit(2);
        let first = r.admit_from(None, a).unwrap();
        r.admit_from(None, a).unwrap();
        assert!(r.is_address_full(a));
        assert_eq!(r.admit_from(None, a), Err(Reason::AddressFull));
        assert!(!r.is_address_full(b), "another address still gets in");
        let moving = r.admit_from(None, b).unwrap();
        // An IPv6 /64 counts as one address.
        r.admit_from(None, v6).unwrap();
        r.admit_from(None, v6_same_64).unwrap();
        assert_eq!(r.admit_from(None, v6), Err(Reason::AddressFull));
        // A session that resumes from a full address is not refused, and counts there now.
        r.moved(moving, a);
        assert_eq!(r.per_address.get(&AddressKey::from(a)), Some(&3));
        assert!(!r.is_address_full(b), "it left b");
        r.moved(moving, a);
        assert_eq!(
            r.per_address.get(&AddressKey::from(a)),
            Some(&3),
            "not twice"
        );
        // Ending sessions frees the address.
        r.release(first);
        r.release(moving);
        assert!(!r.is_address_full(a));
        assert!(r.admit_from(None, a).is_ok());
        // Slots admitted without an address count against none.
        let mut unlimited = SessionRegistry::<()>::new(10).per_address_limit(1);
        unlimited.admit(None).unwrap();
        unlimited.admit(None).unwrap();
        assert!(unlimited.admit_from(None, a).is_ok());
    }
}
