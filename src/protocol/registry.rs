//! Which player IDs are live on a server, and how many sessions it may hold. No I/O.
//!
//! A connection takes a slot when its `CONN_INIT` is admitted and keeps it until the connection
//! ends, so handshakes in progress count against the limit as well as established sessions.

use std::collections::HashSet;

use super::message::{PlayerId, Reason};

/// Live player IDs and the session limit of one server.
#[derive(Debug)]
pub struct SessionRegistry {
    max_sessions: usize,
    live: HashSet<PlayerId>,
    next_id: u64,
}

impl SessionRegistry {
    /// An empty registry holding at most `max_sessions` sessions.
    pub fn new(max_sessions: usize) -> Self {
        SessionRegistry {
            max_sessions,
            live: HashSet::new(),
            next_id: 1,
        }
    }

    /// Number of live sessions (handshakes in progress included).
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Whether another session would exceed the limit.
    pub fn is_full(&self) -> bool {
        self.live.len() >= self.max_sessions
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
            Some(id) if self.live.contains(&id) => return Err(Reason::PlayerIdInUse),
            Some(id) => id,
            None => self.next_free_id()?,
        };
        self.live.insert(id);
        Ok(id)
    }

    /// Frees `id`'s slot. Releasing an ID that is not live does nothing.
    pub fn release(&mut self, id: PlayerId) {
        self.live.remove(&id);
    }

    fn next_free_id(&mut self) -> Result<PlayerId, Reason> {
        // IDs chosen by an authenticator may sit in the sequence: skip them. Fewer than
        // `max_sessions + 1` probes always find a free one.
        loop {
            let id = PlayerId(self.next_id);
            self.next_id = self.next_id.checked_add(1).ok_or(Reason::ServerFull)?;
            if !self.live.contains(&id) {
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
        let mut r = SessionRegistry::new(10);
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
        let mut r = SessionRegistry::new(2);
        let a = r.admit(None).unwrap();
        r.admit(None).unwrap();
        assert_eq!(r.admit(None), Err(Reason::ServerFull));
        r.release(a);
        assert!(r.admit(None).is_ok());
    }
}
