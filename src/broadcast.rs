//! One message to many sessions, encoded once.
//!
//! A game server sends the same snapshot or event to every player of a match. Encoding it per
//! player wastes CPU on serialisation that gives the same bytes each time; [`Prepared`] encodes a
//! value once, and the reliable channels then share its bytes (each session adds only its own
//! few header bytes; nothing is copied), while the lane copies them into each player's datagram.
//! [`Group`] holds the sessions of a match (or a region, or the spectators), and
//! [`Server::broadcast_feed`](crate::Server::broadcast_feed) and
//! [`broadcast_lane`](crate::Server::broadcast_lane) reach every session of a server.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::driver::session::SessionCore;
use crate::error::SendError;
use crate::prepared::Prepared;
use crate::protocol::{ChannelKind, PlayerId};
use crate::session::SessionHandle;

/// What a broadcast did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Broadcast {
    /// Sessions the message was queued for.
    pub sent: usize,
    /// Sessions it could not be sent to, and why: the session had ended, the message is over
    /// that session's limit, or its send buffer is full ([`SendError::Blocked`]: that peer is
    /// not keeping up; nothing was queued for it).
    pub failed: Vec<(PlayerId, SendError)>,
}

impl Broadcast {
    fn record(&mut self, player: PlayerId, result: Result<(), SendError>) {
        match result {
            Ok(()) => self.sent = self.sent.saturating_add(1),
            Err(e) => self.failed.push((player, e)),
        }
    }
}

/// A set of sessions that receive the same messages: the players of a match, a region, the
/// spectators. Holds a [`SessionHandle`] per player (so a member's session stays open while it
/// is in a group).
#[derive(Debug, Clone, Default)]
pub struct Group {
    members: BTreeMap<PlayerId, SessionHandle>,
}

impl Group {
    /// An empty group.
    pub fn new() -> Self {
        Group::default()
    }

    /// Adds a session (replacing any with the same player ID); returns whether it is new.
    pub fn insert(&mut self, session: SessionHandle) -> bool {
        self.members.insert(session.player_id(), session).is_none()
    }

    /// Removes a player's session from the group.
    pub fn remove(&mut self, player: PlayerId) -> Option<SessionHandle> {
        self.members.remove(&player)
    }

    /// Whether the player is in the group.
    pub fn contains(&self, player: PlayerId) -> bool {
        self.members.contains_key(&player)
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the group is empty.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The members' player IDs, in increasing order.
    pub fn players(&self) -> impl Iterator<Item = PlayerId> + '_ {
        self.members.keys().copied()
    }

    /// Removes the members whose session has ended; returns how many.
    pub fn remove_ended(&mut self) -> usize {
        let before = self.members.len();
        self.members.retain(|_, s| s.core().ended().is_none());
        before.saturating_sub(self.members.len())
    }

    /// Queues `message` on every member's reliable feed channel, without waiting: a member whose
    /// send buffer is full (its peer is not keeping up) is reported at once as
    /// [`SendError::Blocked`] and gets nothing, and every other member gets the message in this
    /// same call. Per member, the guarantees of [`Sender::send`](crate::Sender::send). The cost
    /// is one lock and one wake-up per member; the bytes are shared, not copied.
    pub fn send_feed(&self, message: &Prepared) -> Broadcast {
        send_feed_to(self.members.values().map(SessionHandle::core), message)
    }

    /// Sends `message` on every member's datagram lane (see [`Lane`](crate::Lane)), without
    /// waiting. A member between connections counts as sent (its datagram is dropped, as
    /// [`Lane::send_bytes`](crate::Lane::send_bytes) does).
    pub fn send_lane(&self, message: &Prepared) -> Broadcast {
        send_lane_to(self.members.values().map(SessionHandle::core), message)
    }
}

/// Queues a prepared message on the reliable feed of every session, without waiting.
pub(crate) fn send_feed_to<'a>(
    sessions: impl Iterator<Item = &'a Arc<SessionCore>>,
    message: &Prepared,
) -> Broadcast {
    let mut report = Broadcast::default();
    for core in sessions {
        let result = core.try_send(ChannelKind::Feed, message.payload());
        report.record(core.player_id, result);
    }
    report
}

/// Sends a prepared message on the lane of every session.
pub(crate) fn send_lane_to<'a>(
    sessions: impl Iterator<Item = &'a Arc<SessionCore>>,
    message: &Prepared,
) -> Broadcast {
    let mut report = Broadcast::default();
    for core in sessions {
        report.record(core.player_id, core.send_lane(message.as_bytes()));
    }
    report
}
