//! A server's live sessions: their player IDs, the session limit, and the single-use resume
//! credentials. No I/O.
//!
//! A session takes a slot when its `CONN_INIT` is admitted and keeps it until it ends (its
//! connection closed for good, or the grace period after a lost connection passed), so
//! handshakes in progress count against the limit as well as established sessions. Each
//! established session holds one resume credential; a successful `RESUME` replaces it, so a
//! credential works once.

use std::collections::HashMap;

use super::message::{PlayerId, Reason, Token};
use super::session::tokens_equal;

/// Live sessions of one server, each with a value `T` the caller attaches (the driver's
/// per-session state).
#[derive(Debug)]
pub struct SessionRegistry<T> {
    max_sessions: usize,
    entries: HashMap<PlayerId, Entry<T>>,
    next_id: u64,
}

#[derive(Debug)]
struct Entry<T> {
    /// Set once the session is established; `None` during its first handshake.
    established: Option<Established<T>>,
}

#[derive(Debug)]
struct Established<T> {
    credential: Token,
    /// The credential this one replaced, to tell a reused credential from a wrong one.
    previous: Option<Token>,
    value: T,
}

impl<T> SessionRegistry<T> {
    /// An empty registry holding at most `max_sessions` sessions.
    pub fn new(max_sessions: usize) -> Self {
        SessionRegistry {
            max_sessions,
            entries: HashMap::new(),
            next_id: 1,
        }
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

    /// Takes a slot for `requested`, or for the next free sequential ID when `None`.
    ///
    /// Fails with [`Reason::ServerFull`] at the limit, and with [`Reason::PlayerIdInUse`] when the
    /// requested ID is live.
    pub fn admit(&mut self, requested: Option<PlayerId>) -> Result<PlayerId, Reason> {
        if self.is_full() {
            return Err(Reason::ServerFull);
        }
        let id = match requested {
            Some(id) if self.entries.contains_key(&id) => return Err(Reason::PlayerIdInUse),
            Some(id) => id,
            None => self.next_free_id()?,
        };
        self.entries.insert(id, Entry { established: None });
        Ok(id)
    }

    /// Records that `id`'s first handshake completed, with its first resume credential.
    /// Returns `false` (and changes nothing) if `id` holds no slot.
    pub fn establish(&mut self, id: PlayerId, credential: Token, value: T) -> bool {
        match self.entries.get_mut(&id) {
            Some(entry) => {
                entry.established = Some(Established {
                    credential,
                    previous: None,
                    value,
                });
                true
            }
            None => false,
        }
    }

    /// Checks a reconnection request and, if it is valid, replaces the credential with `next`
    /// (so the presented one cannot be used again) and returns the session's value.
    ///
    /// Fails with [`Reason::UnknownSession`] when `id` has no established session,
    /// [`Reason::TokenReused`] when `presented` is the credential a resume already replaced, and
    /// [`Reason::InvalidToken`] otherwise. Comparisons are constant time.
    pub fn resume(&mut self, id: PlayerId, presented: &Token, next: Token) -> Result<&T, Reason> {
        let session = self
            .entries
            .get_mut(&id)
            .and_then(|e| e.established.as_mut())
            .ok_or(Reason::UnknownSession)?;
        if !tokens_equal(&session.credential, presented) {
            let reused = session
                .previous
                .as_ref()
                .is_some_and(|p| tokens_equal(p, presented));
            return Err(if reused {
                Reason::TokenReused
            } else {
                Reason::InvalidToken
            });
        }
        session.previous = Some(std::mem::replace(&mut session.credential, next));
        Ok(&session.value)
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
        self.entries
            .remove(&id)
            .and_then(|e| e.established)
            .map(|s| s.value)
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
    use super::*;

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
            r.resume(id, &first, second),
            Err(Reason::UnknownSession),
            "not established yet"
        );
        assert!(r.establish(id, first, "state"));
        assert_eq!(
            r.resume(id, &Token([9; 16]), second),
            Err(Reason::InvalidToken)
        );
        assert_eq!(r.resume(id, &first, second), Ok(&"state"));
        assert_eq!(r.resume(id, &first, third), Err(Reason::TokenReused));
        assert_eq!(r.resume(id, &second, third), Ok(&"state"));
        assert_eq!(
            r.resume(PlayerId(99), &third, first),
            Err(Reason::UnknownSession)
        );
        assert_eq!(r.release(id), Some("state"));
        assert_eq!(r.resume(id, &third, first), Err(Reason::UnknownSession));
    }
}
