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
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use crate::driver::session::{Outgoing, SessionCore};
use crate::error::SendError;
use crate::protocol::codec::Payload;
use crate::protocol::{ChannelKind, PlayerId};
use crate::session::{SessionHandle, encode_error};

/// A message encoded once, to send to any number of sessions with
/// [`Sender::send_prepared`](crate::Sender::send_prepared),
/// [`Lane::send_prepared`](crate::Lane::send_prepared), a [`Group`] or a server-wide
/// broadcast. Cloning it is cheap (the bytes are shared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    payload: Bytes,
}

impl Prepared {
    /// Encodes `value` with bincode, once (the same encoding as
    /// [`Sender::send`](crate::Sender::send)).
    pub fn new<T: Serialize + ?Sized>(value: &T) -> Result<Prepared, SendError> {
        let payload = Payload::encode(value).map_err(encode_error)?;
        Ok(Prepared {
            payload: payload.into_bytes(),
        })
    }

    /// Raw bytes as a message (received as they are by `recv_bytes`).
    pub fn from_bytes(payload: impl Into<Bytes>) -> Prepared {
        Prepared {
            payload: payload.into(),
        }
    }

    /// The encoded message.
    pub fn as_bytes(&self) -> &[u8] {
        &self.payload
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.payload.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }

    pub(crate) fn shared(&self) -> Outgoing {
        Outgoing::Shared(self.payload.clone())
    }
}

/// What a broadcast did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Broadcast {
    /// Sessions the message was queued for.
    pub sent: usize,
    /// Sessions it could not be sent to, and why (the session had ended, or the message is
    /// over that session's limit).
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

    /// Sends `message` on every member's reliable feed channel, to all of them at once: it
    /// returns when the message is queued for every member, or after [`MEMBER_WAIT`] for
    /// members whose flow control stays full (a peer that stopped reading), which are reported
    /// as [`SendError::Blocked`]. Same guarantees per member as
    /// [`Sender::send`](crate::Sender::send).
    pub async fn send_feed(&self, message: &Prepared) -> Broadcast {
        send_feed_to(self.members.values().map(|s| s.core().clone()), message).await
    }

    /// Sends `message` on every member's datagram lane (see [`Lane`](crate::Lane)), without
    /// waiting. A member between connections counts as sent (its datagram is dropped, as
    /// [`Lane::send_bytes`](crate::Lane::send_bytes) does).
    pub fn send_lane(&self, message: &Prepared) -> Broadcast {
        send_lane_to(self.members.values().map(SessionHandle::core), message)
    }
}

/// How long a reliable broadcast waits for one member's flow control.
pub const MEMBER_WAIT: Duration = Duration::from_secs(1);

/// One session's part of a broadcast: its player and how its send went.
type BoxedSend = Pin<Box<dyn Future<Output = (PlayerId, Result<(), SendError>)> + Send>>;

/// Sends a prepared message on the reliable feed of every session, concurrently.
pub(crate) async fn send_feed_to(
    sessions: impl Iterator<Item = Arc<SessionCore>>,
    message: &Prepared,
) -> Broadcast {
    let sends: Vec<_> = sessions
        .map(|core| {
            let payload = message.shared();
            let send: BoxedSend = Box::pin(async move {
                let send = core.send(ChannelKind::Feed, payload);
                let result = tokio::time::timeout(MEMBER_WAIT, send)
                    .await
                    .unwrap_or(Err(SendError::Blocked));
                (core.player_id, result)
            });
            send
        })
        .collect();
    let mut report = Broadcast::default();
    for (player, result) in join_all(sends).await {
        report.record(player, result);
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

/// Runs every future to completion, concurrently, on the calling task; the outputs in the same
/// order.
async fn join_all<T>(mut futures: Vec<Pin<Box<dyn Future<Output = T> + Send>>>) -> Vec<T> {
    let mut outputs: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}
