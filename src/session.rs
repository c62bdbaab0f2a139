//! An established session: its player ID, its two channels, its events, and how it ends.
//!
//! The same types serve both sides: a [`Server`](crate::Server) yields a [`Session`] per player,
//! [`Client::connect`](crate::Client::connect) returns one. A session outlives its QUIC
//! connections: when a client's path changes the connection migrates, and when a connection is
//! lost the client resumes the session on a new one; the handles here keep working throughout,
//! and every message is delivered exactly once, in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::driver::link::drain;
use crate::driver::session::{AppRef, Counters, SessionCore};
use crate::error::{Disconnect, RecvError, SendError};
use crate::events::{Events, SessionCounters, SessionEvent};
use crate::lane::Lane;
use crate::prepared::Prepared;
use crate::protocol::codec::{self, Payload};
use crate::protocol::{ChannelKind, PlayerId, Reason};
use crate::stats::SessionStats;

/// One player's session: the player ID and the `main` and `feed` channels.
///
/// Sending and receiving take `&self`: use [`main`](Session::main) and [`feed`](Session::feed) from
/// one task or, with the session in an `Arc` or split by [`into_parts`](Session::into_parts),
/// from several (each direction of a channel too, with [`Channel::split`]; a [`Sender`] is
/// cheap to clone). Nothing but the `async` methods needs the tokio runtime: a fixed-step game
/// loop on its own thread sends with [`Channel::try_send`], takes what arrived this tick with
/// [`Channel::drain`], and reads the lane with [`Lane::try_recv_latest`].
///
/// Ending a session:
/// - [`close_gracefully`](SessionHandle::close_gracefully) delivers everything already sent,
///   then closes with a reason;
/// - dropping every part of the session does the same in the background, with
///   [`Reason::Normal`];
/// - [`close`](SessionHandle::close) closes at once, discarding anything still in flight.
#[derive(Debug)]
pub struct Session {
    handle: SessionHandle,
    main: Channel,
    feed: Channel,
}

impl Session {
    pub(crate) fn new(app: AppRef) -> Self {
        let app = Arc::new(app);
        app.core.set_app(&app);
        let channel = |kind: ChannelKind| Channel {
            sender: Sender {
                app: app.clone(),
                kind,
            },
            receiver: Receiver {
                app: app.clone(),
                kind,
            },
        };
        let (main, feed) = (channel(ChannelKind::Main), channel(ChannelKind::Feed));
        Session {
            handle: SessionHandle::new(app),
            main,
            feed,
        }
    }

    /// A handle on the feed datagram lane: unreliable, newest-wins messages for state
    /// snapshots (see [`Lane`]).
    pub fn lane(&self) -> Lane {
        self.handle.lane()
    }

    /// The player's ID, the same on both sides and for the session's whole life.
    pub fn player_id(&self) -> PlayerId {
        self.handle.player_id()
    }

    /// The `main` channel. Borrows the session shared, so
    /// `session.main().send(&session.player_id())` compiles.
    pub fn main(&self) -> &Channel {
        &self.main
    }

    /// The `feed` channel.
    pub fn feed(&self) -> &Channel {
        &self.feed
    }

    /// What the server's authenticator attached to this session, if it is a `T` (see
    /// [`AuthDecision::with_data`](crate::AuthDecision::with_data)); `None` on a client.
    pub fn user_data<T: std::any::Any>(&self) -> Option<&T> {
        self.handle.user_data()
    }

    /// A cloneable handle for closing the session, reading its state and its events.
    pub fn handle(&self) -> &SessionHandle {
        &self.handle
    }

    /// Splits the session into its handle and its two channels, to use from separate tasks.
    pub fn into_parts(self) -> (SessionHandle, Channel, Channel) {
        (self.handle, self.main, self.feed)
    }

    /// The peer's current UDP address (`None` while the connection is lost).
    pub fn remote_address(&self) -> Option<SocketAddr> {
        self.handle.remote_address()
    }

    /// The current smoothed round-trip time estimate (`None` while the connection is lost).
    pub fn rtt(&self) -> Option<Duration> {
        self.handle.rtt()
    }

    /// Closes the session at once; see [`SessionHandle::close`].
    pub fn close(&self, reason: Reason, message: &str) {
        self.handle.close(reason, message);
    }

    /// Closes the session after delivering what was sent; see
    /// [`SessionHandle::close_gracefully`].
    pub async fn close_gracefully(self, reason: Reason, message: &str) {
        self.handle.close_gracefully(reason, message).await;
    }

    /// Waits until the session ends and says why.
    pub async fn closed(&self) -> Disconnect {
        self.handle.closed().await
    }
}

/// A cloneable handle to a session: close it, read its state and events, move a client to a
/// new socket.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    app: Arc<AppRef>,
}

impl SessionHandle {
    pub(crate) fn new(app: Arc<AppRef>) -> Self {
        SessionHandle { app }
    }

    /// What the server's authenticator attached to this session, if it is a `T` (see
    /// [`AuthDecision::with_data`](crate::AuthDecision::with_data)); `None` on a client.
    pub fn user_data<T: std::any::Any>(&self) -> Option<&T> {
        self.core().user_data.as_ref()?.get()
    }

    /// A sender on one of the session's channels: for sending to a player found by
    /// [`Server::session`](crate::Server::session), from any task or thread. (Receiving stays
    /// with the [`Session`]'s channels: there is one receiver per channel.)
    pub fn sender(&self, channel: ChannelKind) -> Sender {
        Sender {
            app: self.app.clone(),
            kind: channel,
        }
    }

    pub(crate) fn core(&self) -> &Arc<SessionCore> {
        &self.app.core
    }

    /// The player's ID.
    pub fn player_id(&self) -> PlayerId {
        self.core().player_id
    }

    /// The peer's current UDP address (`None` while the connection is lost).
    pub fn remote_address(&self) -> Option<SocketAddr> {
        self.core().remote_address()
    }

    /// The current smoothed round-trip time estimate (`None` while the connection is lost).
    pub fn rtt(&self) -> Option<Duration> {
        self.core().link().map(|link| link.rtt())
    }

    /// A client's local UDP address (the new one after [`rebind`](Self::rebind)); `None` on a
    /// server-side session.
    pub fn local_address(&self) -> Option<SocketAddr> {
        self.core().endpoint()?.local_addr().ok()
    }

    /// Whether the session has a live connection right now (it may be resuming otherwise).
    pub fn is_connected(&self) -> bool {
        self.core().link().is_some()
    }

    /// A handle on the session's feed datagram lane: unreliable, newest-wins messages (see
    /// [`Lane`]). Each call returns a new handle; all share the lane.
    pub fn lane(&self) -> Lane {
        Lane::new(self.app.clone())
    }

    /// The session's events (migrations, lost connections, resumes), from now on.
    pub fn events(&self) -> Events {
        Events {
            events: self.core().subscribe_events(),
            end: {
                let end: std::sync::Weak<dyn crate::events::EndSignal> =
                    Arc::downgrade(self.core()) as _;
                end
            },
        }
    }

    /// The session's connection quality: RTT (smoothed, minimum, percentiles), jitter, loss,
    /// throughput, congestion window, and its counters. See [`crate::stats`].
    pub fn stats(&self) -> SessionStats {
        self.core().stats()
    }

    /// What the session holds in memory now, per channel: unsent, unacknowledged and unread
    /// bytes (see [`SessionBuffers`](crate::SessionBuffers)). A growing `unsent` means the peer
    /// or the path is not keeping up with what this side sends.
    pub fn buffers(&self) -> crate::SessionBuffers {
        self.core().buffers()
    }

    /// Counts of what happened to the session's connections so far.
    pub fn counters(&self) -> SessionCounters {
        self.core().counters()
    }

    /// Moves a client's connection to `socket` (for example, after the device switched from
    /// Wi-Fi to cellular), by QUIC connection migration: the session continues with no round
    /// trip and nothing lost. A packet goes out at once from the new socket, so the server
    /// learns the new path even if this client only receives. Reports
    /// [`SessionEvent::Migrated`](crate::SessionEvent::Migrated) with the local addresses.
    ///
    /// Fails on a server-side session (servers cannot migrate) and if the socket is unusable.
    pub async fn rebind(&self, socket: std::net::UdpSocket) -> std::io::Result<()> {
        self.move_to(|endpoint| endpoint.rebind(socket))
    }

    /// Moves a client's connection to `socket`, a socket of the application's own (see
    /// [`Client::connect_with_socket`](crate::Client::connect_with_socket)); otherwise as
    /// [`rebind`](Self::rebind).
    pub fn rebind_socket(
        &self,
        socket: std::sync::Arc<dyn quinn::AsyncUdpSocket>,
    ) -> std::io::Result<()> {
        self.move_to(|endpoint| endpoint.rebind_abstract(socket))
    }

    /// Moves a client's endpoint with `rebind`, then shows the server the new path at once and
    /// reports the migration.
    fn move_to(
        &self,
        rebind: impl FnOnce(&quinn::Endpoint) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let core = self.core();
        let Some(endpoint) = core.endpoint() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "only a client can move to a new socket",
            ));
        };
        let from = endpoint.local_addr()?;
        rebind(endpoint)?;
        let to = endpoint.local_addr()?;
        core.poke();
        Counters::bump(&core.counters.migrations, 1);
        core.emit(SessionEvent::Migrated { from, to });
        Ok(())
    }

    /// Makes a client give up its current connection and resume the session on a new one now,
    /// without waiting for the dead-path timeout: for example when the OS reports that the
    /// network the connection used is gone. Reports
    /// [`ConnectionLost`](crate::SessionEvent::ConnectionLost) then
    /// [`Resumed`](crate::SessionEvent::Resumed), like a resume after an outage. Fails on a
    /// server-side session.
    pub fn reconnect(&self) -> std::io::Result<()> {
        if self.core().endpoint().is_none() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "only a client can reconnect",
            ));
        }
        self.core().detach(Reason::Superseded, "reconnecting");
        Ok(())
    }

    /// Closes the session at once with `reason` (sent to the peer as the QUIC application error
    /// code, with `message`). Messages not yet delivered are discarded; use
    /// [`close_gracefully`](Self::close_gracefully) to deliver them first.
    ///
    /// The close is sent in the background: a client about to exit should then await
    /// [`closed`](Self::closed), which returns once it has gone out.
    pub fn close(&self, reason: Reason, message: &str) {
        self.core().close(reason, message);
    }

    /// Closes the session after the peer has taken in everything already sent on both
    /// channels (waiting at most 2 s for its acknowledgements; a send that waits meanwhile is
    /// refused), with `reason` and `message`. Returns within about 2 s whatever the peer does;
    /// on a client, once the close has gone out too (at most 2 s more), so the program may exit
    /// right after.
    pub async fn close_gracefully(&self, reason: Reason, message: &str) {
        self.core().close_gracefully(reason, message).await;
    }

    /// Why the session ended, if it has, without waiting (see [`closed`](Self::closed)).
    pub fn ended(&self) -> Option<Disconnect> {
        self.core().ended()
    }

    /// Waits until the session ends and says why. After a local close on a client, it also
    /// waits (at most 2 s) until the close has been sent.
    pub async fn closed(&self) -> Disconnect {
        let why = self.core().wait_ended().await;
        if let (Disconnect::Locally { .. }, Some(endpoint)) = (&why, self.core().endpoint()) {
            drain(endpoint).await;
        }
        why
    }
}

/// One channel of a session, both directions. Messages on a channel arrive reliably, exactly
/// once and in the order they were sent, across migrations and resumes; the two channels are
/// independent of each other.
#[derive(Debug)]
pub struct Channel {
    sender: Sender,
    receiver: Receiver,
}

impl Channel {
    /// Which channel this is.
    pub fn kind(&self) -> ChannelKind {
        self.sender.kind
    }

    /// Sends `value`, encoded with bincode; see [`Sender::send`].
    pub async fn send<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), SendError> {
        self.sender.send(value).await
    }

    /// Sends a message encoded once for many sessions; see [`Sender::send_prepared`].
    pub async fn send_prepared(&self, message: &Prepared) -> Result<(), SendError> {
        self.sender.send_prepared(message).await
    }

    /// Sends raw bytes; see [`Sender::send_bytes`].
    pub async fn send_bytes(&self, payload: &[u8]) -> Result<(), SendError> {
        self.sender.send_bytes(payload).await
    }

    /// Sends `value` if the channel's send buffer has room now; see [`Sender::try_send`].
    pub fn try_send<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), SendError> {
        self.sender.try_send(value)
    }

    /// Sends a prepared message if the channel's send buffer has room now; see
    /// [`Sender::try_send_prepared`].
    pub fn try_send_prepared(&self, message: &Prepared) -> Result<(), SendError> {
        self.sender.try_send_prepared(message)
    }

    /// Sends raw bytes if the channel's send buffer has room now; see
    /// [`Sender::try_send_bytes`].
    pub fn try_send_bytes(&self, payload: &[u8]) -> Result<(), SendError> {
        self.sender.try_send_bytes(payload)
    }

    /// The next message as `T` if one has arrived; see [`Receiver::try_recv`].
    pub fn try_recv<T: DeserializeOwned>(&self) -> Option<Result<T, RecvError>> {
        self.receiver.try_recv()
    }

    /// The next message as raw bytes if one has arrived; see [`Receiver::try_recv_bytes`].
    pub fn try_recv_bytes(&self) -> Option<Result<Bytes, RecvError>> {
        self.receiver.try_recv_bytes()
    }

    /// Every message that has arrived, without waiting; see [`Receiver::drain`].
    pub fn drain<T: DeserializeOwned>(&self) -> Drain<T> {
        self.receiver.drain()
    }

    /// Every message that has arrived, as raw bytes; see [`Receiver::drain_bytes`].
    pub fn drain_bytes(&self) -> Drain<Bytes> {
        self.receiver.drain_bytes()
    }

    /// The sending half, to clone and hand to another task or thread.
    pub fn sender(&self) -> &Sender {
        &self.sender
    }

    /// The largest payload the peer accepts in one message; see [`Sender::max_payload_size`].
    pub fn max_payload_size(&self) -> usize {
        self.sender.max_payload_size()
    }

    /// Receives the next message as `T`; see [`Receiver::recv`].
    pub async fn recv<T: DeserializeOwned>(&self) -> Result<T, RecvError> {
        self.receiver.recv().await
    }

    /// Receives the next message as raw bytes; see [`Receiver::recv_bytes`].
    pub async fn recv_bytes(&self) -> Result<Bytes, RecvError> {
        self.receiver.recv_bytes().await
    }

    /// Splits the channel into its sending and receiving halves.
    pub fn split(self) -> (Sender, Receiver) {
        (self.sender, self.receiver)
    }
}

/// The sending half of a channel. Clones send on the same channel, in the order their sends
/// return; it is `Send + Sync`, and its `try_` methods work from any thread.
#[derive(Debug, Clone)]
pub struct Sender {
    app: Arc<AppRef>,
    kind: ChannelKind,
}

impl Sender {
    fn core(&self) -> &Arc<SessionCore> {
        &self.app.core
    }

    /// Which channel this sends on.
    pub fn kind(&self) -> ChannelKind {
        self.kind
    }

    /// The largest payload, in bytes, the peer accepts in one message on this channel: for
    /// [`send_bytes`](Self::send_bytes) the slice length, for [`send`](Self::send) the value's
    /// bincode encoding. Larger messages fail with [`SendError::TooLarge`]. Returns at once.
    pub fn max_payload_size(&self) -> usize {
        self.core().max_payload(self.kind)
    }

    /// Encodes `value` with bincode (standard configuration) and sends it.
    ///
    /// Returns once the message is numbered, kept for a replay, and queued for the connection.
    /// It waits only while the channel's send buffer
    /// ([`TransportConfig::send_buffer`](crate::TransportConfig::send_buffer)) is full, that is
    /// while the peer does not take messages as fast as they are sent. While the session is
    /// between connections it does not wait: the message is kept and sent after the resume (if
    /// the outage outlasts the replay buffer, the oldest kept messages are dropped and the peer
    /// is told).
    ///
    /// Fails with [`SendError::Closed`] once the session has ended or a graceful close has
    /// begun, and with [`SendError::TooLarge`] for a message over the peer's limit.
    ///
    /// Cancel-safe: a send cancelled while it waits queued nothing; one that returned queued
    /// its message whole.
    pub async fn send<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), SendError> {
        let payload = Payload::encode(value)?;
        self.core().send(self.kind, payload.into_bytes()).await
    }

    /// Sends a message encoded once for many sessions (see [`Prepared`]): no serialisation and
    /// no copy here. Same guarantees as [`send`](Self::send).
    pub async fn send_prepared(&self, message: &Prepared) -> Result<(), SendError> {
        self.core().send(self.kind, message.payload()).await
    }

    /// Sends raw bytes. Same guarantees as [`send`](Self::send).
    pub async fn send_bytes(&self, payload: &[u8]) -> Result<(), SendError> {
        self.core()
            .send(self.kind, Bytes::copy_from_slice(payload))
            .await
    }

    /// Sends raw bytes if the channel's send buffer has room now, without waiting: for a game
    /// loop that must not stall. Fails with [`SendError::Blocked`] when it is full (nothing
    /// was sent), otherwise as [`send`](Self::send).
    pub fn try_send_bytes(&self, payload: &[u8]) -> Result<(), SendError> {
        self.core()
            .try_send(self.kind, Bytes::copy_from_slice(payload))
    }

    /// Sends a prepared message if the channel's send buffer has room now (see
    /// [`try_send_bytes`](Self::try_send_bytes)), without copying it: what a backend that is
    /// handed [`Bytes`] each frame (a bevy_replicon `drain_sent`) uses, through
    /// [`Prepared::from_bytes`].
    pub fn try_send_prepared(&self, message: &Prepared) -> Result<(), SendError> {
        self.core().try_send(self.kind, message.payload())
    }

    /// Encodes `value` and sends it if the channel's send buffer has room now; see
    /// [`try_send_bytes`](Self::try_send_bytes).
    pub fn try_send<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), SendError> {
        let payload = Payload::encode(value)?;
        self.core().try_send(self.kind, payload.into_bytes())
    }
}

/// The receiving half of a channel. Its methods take `&self`; if several tasks receive at
/// once, each message goes to one of them.
///
/// Messages are taken in (and acknowledged to the peer) as they arrive, whether or not the
/// application is reading; up to [`TransportConfig::receive_buffer`] bytes wait here, and the
/// peer is held back beyond it. Dropping the receiver while the session lives makes the channel
/// discard what arrives on it from then on (still acknowledging it, so the peer's replay buffer
/// stays small): drop it only if this side never wants the peer's messages on this channel.
///
/// [`TransportConfig::receive_buffer`]: crate::TransportConfig::receive_buffer
#[derive(Debug)]
pub struct Receiver {
    app: Arc<AppRef>,
    kind: ChannelKind,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.app.core.discard(self.kind);
    }
}

impl Receiver {
    fn core(&self) -> &Arc<SessionCore> {
        &self.app.core
    }

    /// Which channel this receives from.
    pub fn kind(&self) -> ChannelKind {
        self.kind
    }

    /// Receives the next message and decodes it as `T` with bincode.
    ///
    /// A message that does not decode as `T` is consumed and reported as
    /// [`RecvError::Decode`]; the session continues. Cancel-safe.
    pub async fn recv<T: DeserializeOwned>(&self) -> Result<T, RecvError> {
        let payload = self.recv_bytes().await?;
        codec::decode_data_value(&payload).map_err(RecvError::Decode)
    }

    /// Receives the next message as raw bytes.
    ///
    /// Waits across migrations and resumes. Returns [`RecvError::Gap`] once if messages were
    /// lost in an outage. Once the session has ended, returns every message it had taken in
    /// (a graceful close from the peer delivers all it sent), then [`RecvError::Closed`].
    /// Anything the protocol does not allow (a malformed or oversize frame, a handshake message
    /// after `CONN_OK`, a sequence number out of order) closes the session with the matching
    /// [`Reason`], and the channel where it happened returns [`RecvError::Violation`] (once,
    /// after the messages before it). Cancel-safe: a message is never half-consumed.
    pub async fn recv_bytes(&self) -> Result<Bytes, RecvError> {
        self.core().recv(self.kind).await
    }

    /// The next message if one has arrived, without waiting: `None` when there is none yet.
    /// Same results as [`recv_bytes`](Self::recv_bytes) otherwise.
    pub fn try_recv_bytes(&self) -> Option<Result<Bytes, RecvError>> {
        self.core().try_recv(self.kind)
    }

    /// [`try_recv_bytes`](Self::try_recv_bytes), decoded as `T`.
    pub fn try_recv<T: DeserializeOwned>(&self) -> Option<Result<T, RecvError>> {
        let payload = self.try_recv_bytes()?;
        Some(payload.and_then(|p| codec::decode_data_value(&p).map_err(RecvError::Decode)))
    }

    /// Takes every message that has arrived, without waiting, for a game loop's tick: what
    /// [`try_recv_bytes`](Self::try_recv_bytes) would return call after call, taken under one
    /// lock. The results end after the first error ([`RecvError::Gap`] is followed by the
    /// messages after the gap on the next call; [`RecvError::Closed`] and
    /// [`RecvError::Violation`] come once all messages before them have been taken). Messages
    /// arriving meanwhile wait for the next call, so a busy peer cannot keep a tick here.
    pub fn drain_bytes(&self) -> Drain<Bytes> {
        Drain {
            taken: self.core().drain(self.kind).into_iter(),
            decode: Ok,
        }
    }

    /// [`drain_bytes`](Self::drain_bytes), each message decoded as `T` (one that does not
    /// decode is a [`RecvError::Decode`] in its place; the others still arrive).
    pub fn drain<T: DeserializeOwned>(&self) -> Drain<T> {
        Drain {
            taken: self.core().drain(self.kind).into_iter(),
            decode: |payload| codec::decode_data_value(&payload).map_err(RecvError::Decode),
        }
    }
}

/// The messages a [`Receiver::drain`] took, in order, as `T`.
#[derive(Debug)]
pub struct Drain<T> {
    taken: std::vec::IntoIter<Result<Bytes, RecvError>>,
    decode: fn(Bytes) -> Result<T, RecvError>,
}

impl<T> Iterator for Drain<T> {
    type Item = Result<T, RecvError>;

    fn next(&mut self) -> Option<Self::Item> {
        let taken = self.taken.next()?;
        Some(taken.and_then(self.decode))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.taken.size_hint()
    }
}

impl<T> ExactSizeIterator for Drain<T> {}
