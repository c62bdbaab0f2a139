//! What happens to a session's connections: migrations, losses, resumes. Events as they happen,
//! and counters to read at any time.
//!
//! ```no_run
//! # async fn run(session: quicfeed::Session) {
//! use quicfeed::SessionEvent;
//!
//! let mut events = session.handle().events();
//! while let Some(event) = events.next().await {
//!     match event {
//!         SessionEvent::Migrated { from, to } => println!("moved from {from} to {to}"),
//!         SessionEvent::ConnectionLost { why } => println!("connection lost ({why}); resuming"),
//!         SessionEvent::Resumed { outage, lost, .. } => {
//!             println!("back after {outage:?}; {lost} messages lost")
//!         }
//!         other => println!("{other:?}"),
//!     }
//! }
//! # }
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::error::Disconnect;
use crate::protocol::{PlayerId, Reason};

/// Something that happened to a session's connection. The session itself carries on through
/// all of these except [`ResumeFailed`](SessionEvent::ResumeFailed).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// The connection moved to a new path, with no interruption: on a server, the client's
    /// address changed (NAT rebinding, network switch); on a client, after
    /// [`SessionHandle::rebind`](crate::SessionHandle::rebind) (local addresses).
    Migrated {
        /// The previous address.
        from: SocketAddr,
        /// The new address.
        to: SocketAddr,
    },
    /// The connection is gone (nothing heard for the dead-path timeout, or it failed). A client
    /// starts resuming; a server waits for it, at most the grace period.
    ConnectionLost {
        /// How it was lost.
        why: Disconnect,
    },
    /// The session continues on a new connection.
    Resumed {
        /// Time from the last packet heard on the lost connection to the resume (zero on a
        /// server whose live connection was superseded).
        outage: Duration,
        /// Messages this side sent again because the peer had not received them.
        replayed: u64,
        /// Messages this side could not send again because its replay buffer had overflowed;
        /// the peer's receiver reports them as [`RecvError::Gap`](crate::RecvError::Gap).
        lost: u64,
        /// How long the successful attempt took, from opening the new connection to `CONN_OK`
        /// (client; zero on a server): about one round trip with 0-RTT, two without.
        handshake: Duration,
    },
    /// A client could not resume: the server refused (`reason`) or could not be reached within
    /// the resume budget. The session has ended.
    ResumeFailed {
        /// The server's reason, or [`Reason::HandshakeTimeout`] when it could not be reached.
        reason: Reason,
        /// Detail.
        message: String,
    },
    /// A server replaced a connection that was still open with a resumed one from the same
    /// client (which had given up on it first).
    Superseded,
}

/// Counts of what happened to a session's connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionCounters {
    /// Path changes without interruption.
    pub migrations: u64,
    /// Connections lost.
    pub connections_lost: u64,
    /// Successful resumes.
    pub resumes: u64,
    /// 1 when the session's first connection carried `CONN_INIT` in 0-RTT data that the server
    /// accepted (client side), else 0.
    pub connect_0rtt: u64,
    /// Failed resumes (a client's final one ends the session).
    pub resume_failures: u64,
    /// Connections replaced by a resumed one while still open.
    pub superseded: u64,
    /// Messages sent again after resumes.
    pub messages_replayed: u64,
    /// Messages that could not be sent again (replay buffer overflow).
    pub messages_lost: u64,
    /// Feed datagrams handed to QUIC for sending.
    pub datagrams_sent: u64,
    /// Feed datagrams not sent because the session had no connection at the time (or lost it
    /// while they waited to be sent).
    pub datagrams_unsent: u64,
    /// Feed datagrams dropped unsent because newer ones took their place while QUIC's
    /// congestion control held the connection back
    /// ([`TransportConfig::datagram_send_queue`](crate::TransportConfig::datagram_send_queue)).
    pub datagrams_superseded: u64,
    /// Feed datagrams dropped unsent for waiting longer than
    /// [`TransportConfig::datagram_max_age`](crate::TransportConfig::datagram_max_age).
    pub datagrams_expired: u64,
    /// Feed datagrams delivered to the application.
    pub datagrams_delivered: u64,
    /// Feed datagrams dropped on arrival because a newer one had been delivered (late,
    /// reordered or duplicated).
    pub datagrams_stale: u64,
    /// Feed datagrams dropped on arrival for exceeding the maximum age.
    pub datagrams_too_old: u64,
}

/// What [`Events`] needs of its session: whether it has ended, and a wake-up when that may
/// have changed. (Implemented by the driver's session state, so this module does not depend on
/// the driver.)
pub(crate) trait EndSignal: Send + Sync {
    /// Whether the session has ended.
    fn has_ended(&self) -> bool;
    /// Resolves when the session's status changes (see `SessionCore::status_changed`).
    fn status_changed(&self) -> tokio::sync::futures::Notified<'_>;
}

/// A session's events, in order. See [`SessionHandle::events`](crate::SessionHandle::events).
pub struct Events {
    pub(crate) events: broadcast::Receiver<SessionEvent>,
    /// The session's end. Weak: a subscriber does not keep a session's state in memory; a
    /// session whose state is gone has ended.
    pub(crate) end: std::sync::Weak<dyn EndSignal>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field(
                "ended",
                &self.end.upgrade().is_none_or(|end| end.has_ended()),
            )
            .finish_non_exhaustive()
    }
}

impl Events {
    /// The next event if one has happened, without waiting: `None` when there is none yet or
    /// the session has ended (see [`SessionHandle::ended`](crate::SessionHandle::ended)). Works
    /// from any thread; a game loop drains them once a tick.
    pub fn try_next(&mut self) -> Option<SessionEvent> {
        loop {
            match self.events.try_recv() {
                Ok(event) => return Some(event),
                Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    }

    /// The next event, or `None` once the session has ended and every event before the end has
    /// been returned. Events are kept for a subscriber that falls behind, up to 16; older ones
    /// are skipped.
    pub async fn next(&mut self) -> Option<SessionEvent> {
        loop {
            match self.events.try_recv() {
                Ok(event) => return Some(event),
                Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(broadcast::error::TryRecvError::Closed) => return None,
                Err(broadcast::error::TryRecvError::Empty) => {}
            }
            let end = self.end.upgrade()?;
            let mut changed = std::pin::pin!(end.status_changed());
            changed.as_mut().enable();
            if end.has_ended() {
                return None;
            }
            tokio::select! {
                biased;
                event = self.events.recv() => match event {
                    Ok(event) => return Some(event),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                () = changed => {}
            }
        }
    }
}

/// An event of one of a server's sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerEvent {
    /// Whose session.
    pub player_id: PlayerId,
    /// What happened.
    pub event: SessionEvent,
}

/// Counts over all of a server's sessions since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerCounters {
    /// Sessions established (first handshakes completed).
    pub sessions_established: u64,
    /// Sessions ended.
    pub sessions_ended: u64,
    /// Sessions ended because the client did not return within the grace period.
    pub sessions_expired: u64,
    /// Client path changes seen.
    pub migrations: u64,
    /// Connections lost with their session kept for a resume.
    pub connections_lost: u64,
    /// Successful resumes.
    pub resumes: u64,
    /// Reconnection requests refused (unknown session, bad credential).
    pub resumes_refused: u64,
    /// Live connections replaced by a resumed one.
    pub superseded: u64,
    /// Stateless Retries sent to unvalidated addresses while many handshakes were in progress.
    pub retries_sent: u64,
    /// Connection attempts dropped because too many handshakes were in progress (overall or
    /// from their address); honest clients try again after their probe timeout.
    pub attempts_dropped: u64,
    /// Handshakes ended with `SERVER_BUSY` to make room for a newer attempt when as many were
    /// in progress as the server allows (the oldest go first: those that stall).
    pub handshakes_evicted: u64,
    /// Browser connections refused at once because more connections than
    /// `max_pending_handshakes` were still open that no task serves: browser setups that failed
    /// while the browser held an HTTP/3 stream open, which the server cannot close (see
    /// SECURITY.md), and connections still draining.
    pub browsers_refused: u64,
    /// Connections in their handshake right now (a gauge, not a count).
    pub handshakes_in_progress: u64,
}
