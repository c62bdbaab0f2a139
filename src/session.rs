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
use tokio::sync::watch;

use crate::broadcast::Prepared;
use crate::driver::link::{CLOSE_LINGER, drain, finish_all};
use crate::driver::session::{ChannelCore, Counters, Outgoing, Role, SessionCore, lock};
use crate::driver::stream::{FrameReader, ReadFailure};
use crate::error::{Disconnect, RecvError, SendError};
use crate::events::{Events, SessionCounters};
use crate::lane::Lane;
use crate::protocol::codec::{self, EncodeError, Payload};
use crate::protocol::reliability::Arrival;
use crate::protocol::{ChannelKind, Inbound, InboundRules, PlayerId, Reason};
use crate::stats::SessionStats;

/// How long a receiver that saw the peer finish a channel waits for the session to end (or to
/// move to a new connection) before treating the half-closed channel as a violation.
const FINISH_GRACE: Duration = Duration::from_secs(3);

/// One player's session: the player ID and the `main` and `feed` channels.
///
/// Use [`main`](Session::main) and [`feed`](Session::feed) from one task, or
/// [`into_parts`](Session::into_parts) to move each channel (or each direction, with
/// [`Channel::split`]) to its own task.
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

/// Keeps the session open while any application handle exists; the last one dropped closes it
/// gracefully.
#[derive(Debug)]
pub(crate) struct AppRef {
    pub(crate) core: Arc<SessionCore>,
}

impl Drop for AppRef {
    fn drop(&mut self) {
        if self.core.ended().is_some() {
            return;
        }
        let core = self.core.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    close_gracefully(&core, Reason::Normal, "").await;
                });
            }
            Err(_) => core.close(Reason::Normal, ""),
        }
    }
}

impl std::fmt::Debug for SessionCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCore")
            .field("player_id", &self.player_id)
            .finish_non_exhaustive()
    }
}

/// Finishes both channels' streams, waits (at most 2 s) for the peer to acknowledge them, then
/// ends the session with `reason`; on a client, waits for the close to go out.
async fn close_gracefully(core: &Arc<SessionCore>, reason: Reason, message: &str) {
    let mut writers = Vec::with_capacity(2);
    for channel in [&core.main, &core.feed] {
        if let Some(writer) = channel.out.lock().await.writer.take() {
            writers.push(writer);
        }
    }
    finish_all(writers, CLOSE_LINGER).await;
    core.close(reason, message);
    if let Role::Client(resumer) = &core.role {
        drain(resumer.endpoint()).await;
    }
}

impl Session {
    pub(crate) fn new(core: Arc<SessionCore>) -> Self {
        let app = Arc::new(AppRef { core: core.clone() });
        let channel = |kind: ChannelKind| Channel {
            sender: Sender {
                app: app.clone(),
                kind,
            },
            receiver: Receiver {
                core: core.clone(),
                app: Some(app.clone()),
                kind,
                reader: None,
                readers: core.channel(kind).subscribe_readers(),
                ended: core.subscribe_end(),
            },
        };
        let (main, feed) = (channel(ChannelKind::Main), channel(ChannelKind::Feed));
        Session {
            handle: SessionHandle { app },
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

    /// The `main` channel.
    pub fn main(&mut self) -> &mut Channel {
        &mut self.main
    }

    /// The `feed` channel.
    pub fn feed(&mut self) -> &mut Channel {
        &mut self.feed
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
        self.core().connection().map(|c| c.rtt())
    }

    /// A client's local UDP address (the new one after [`rebind`](Self::rebind)); `None` on a
    /// server-side session.
    pub fn local_address(&self) -> Option<SocketAddr> {
        match &self.core().role {
            Role::Client(resumer) => resumer.endpoint().local_addr().ok(),
            Role::Server(_) => None,
        }
    }

    /// Whether the session has a live connection right now (it may be resuming otherwise).
    pub fn is_connected(&self) -> bool {
        self.core().connection().is_some()
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
            ended: self.core().subscribe_end(),
        }
    }

    /// The session's connection quality: RTT (smoothed, minimum, percentiles), jitter, loss,
    /// throughput, congestion window, and its counters. See [`crate::stats`].
    pub fn stats(&self) -> SessionStats {
        self.core().stats()
    }

    /// Counts of what happened to the session's connections so far.
    pub fn counters(&self) -> SessionCounters {
        self.core().counters.snapshot()
    }

    /// Moves a client's connection to `socket` (for example, after the device switched from
    /// Wi-Fi to cellular), by QUIC connection migration: the session continues with no round
    /// trip and nothing lost. A packet goes out at once from the new socket, so the server
    /// learns the new path even if this client only receives. Reports
    /// [`SessionEvent::Migrated`](crate::SessionEvent::Migrated) with the local addresses.
    ///
    /// Fails on a server-side session (servers cannot migrate) and if the socket is unusable.
    pub async fn rebind(&self, socket: std::net::UdpSocket) -> std::io::Result<()> {
        let core = self.core();
        let Role::Client(resumer) = &core.role else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "only a client can move to a new socket",
            ));
        };
        let endpoint = resumer.endpoint();
        let from = endpoint.local_addr()?;
        endpoint.rebind(socket)?;
        let to = endpoint.local_addr()?;
        core.poke().await;
        crate::driver::session::Counters::bump(&core.counters.migrations, 1);
        core.emit(crate::events::SessionEvent::Migrated { from, to });
        Ok(())
    }

    /// Makes a client give up its current connection and resume the session on a new one now,
    /// without waiting for the dead-path timeout: for example when the OS reports that the
    /// network the connection used is gone. Reports
    /// [`ConnectionLost`](crate::SessionEvent::ConnectionLost) then
    /// [`Resumed`](crate::SessionEvent::Resumed), like a resume after an outage. Fails on a
    /// server-side session.
    pub fn reconnect(&self) -> std::io::Result<()> {
        match &self.core().role {
            Role::Client(_) => {
                self.core().detach(Reason::Superseded, "reconnecting");
                Ok(())
            }
            Role::Server(_) => Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "only a client can reconnect",
            )),
        }
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

    /// Closes the session after the peer has received everything already sent on both
    /// channels (waiting at most 2 s for its acknowledgement), with `reason` and `message`.
    /// On a client, returns once the close has gone out, so the program may exit right after.
    pub async fn close_gracefully(&self, reason: Reason, message: &str) {
        close_gracefully(self.core(), reason, message).await;
    }

    /// Waits until the session ends and says why. After a local close on a client, it also
    /// waits (at most 2 s) until the close has been sent.
    pub async fn closed(&self) -> Disconnect {
        let mut ended = self.core().subscribe_end();
        let why = loop {
            if let Some(why) = ended.borrow_and_update().clone() {
                break why;
            }
            if ended.changed().await.is_err() {
                break Disconnect::Transport("session state lost".into());
            }
        };
        if let (Disconnect::Locally { .. }, Role::Client(resumer)) = (&why, &self.core().role) {
            drain(resumer.endpoint()).await;
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
    pub async fn send<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SendError> {
        self.sender.send(value).await
    }

    /// Sends a message encoded once for many sessions; see [`Sender::send_prepared`].
    pub async fn send_prepared(&mut self, message: &Prepared) -> Result<(), SendError> {
        self.sender.send_prepared(message).await
    }

    /// Sends raw bytes; see [`Sender::send_bytes`].
    pub async fn send_bytes(&mut self, payload: &[u8]) -> Result<(), SendError> {
        self.sender.send_bytes(payload).await
    }

    /// Receives the next message as `T`; see [`Receiver::recv`].
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<T, RecvError> {
        self.receiver.recv().await
    }

    /// Receives the next message as raw bytes; see [`Receiver::recv_bytes`].
    pub async fn recv_bytes(&mut self) -> Result<Bytes, RecvError> {
        self.receiver.recv_bytes().await
    }

    /// Splits the channel into its sending and receiving halves.
    pub fn split(self) -> (Sender, Receiver) {
        (self.sender, self.receiver)
    }
}

/// The sending half of a channel.
#[derive(Debug)]
pub struct Sender {
    app: Arc<AppRef>,
    kind: ChannelKind,
}

impl Sender {
    fn channel(&self) -> &ChannelCore {
        self.app.core.channel(self.kind)
    }

    /// Which channel this sends on.
    pub fn kind(&self) -> ChannelKind {
        self.kind
    }

    /// The largest payload, in bytes, the peer accepts in one message on this channel: for
    /// [`send_bytes`](Self::send_bytes) the slice length, for [`send`](Self::send) the value's
    /// bincode encoding. Larger messages fail with [`SendError::TooLarge`].
    pub async fn max_payload_size(&self) -> usize {
        codec::max_data_payload(self.channel().out.lock().await.peer_max)
    }

    /// Encodes `value` with bincode (standard configuration) and sends it.
    ///
    /// Returns once the message is numbered, kept for a replay, and queued on the current
    /// connection; it waits while flow control or the send window is full. While the session is
    /// between connections, the message is kept and sent after the resume (if the outage
    /// outlasts the replay buffer, the oldest kept messages are dropped and the peer is told).
    ///
    /// Cancel-safe in the sense that matters: a message is never cut short; if the future is
    /// dropped after the message was queued, it is still sent.
    pub async fn send<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SendError> {
        let payload = Payload::encode(value).map_err(encode_error)?;
        self.send_payload(Outgoing::Owned(payload)).await
    }

    /// Sends a message encoded once for many sessions (see [`Prepared`]): no serialisation and
    /// no copy here. Same guarantees as [`send`](Self::send).
    pub async fn send_prepared(&mut self, message: &Prepared) -> Result<(), SendError> {
        self.send_payload(message.shared()).await
    }

    /// Sends raw bytes. Same guarantees as [`send`](Self::send).
    pub async fn send_bytes(&mut self, payload: &[u8]) -> Result<(), SendError> {
        self.send_payload(Outgoing::Owned(Payload::from_bytes(payload)))
            .await
    }

    async fn send_payload(&mut self, payload: Outgoing) -> Result<(), SendError> {
        self.app.core.send(self.kind, payload).await
    }
}

pub(crate) fn encode_error(e: EncodeError) -> SendError {
    match e {
        EncodeError::TooLarge { len, max } => SendError::TooLarge { len, max },
        other => SendError::Encode(other.to_string()),
    }
}

/// The receiving half of a channel.
///
/// Dropping it while the session lives makes the channel discard what arrives on it from then
/// on (still processing the peer's acknowledgements, so the session's replay buffers stay
/// small): drop it only if this side never wants the peer's messages on this channel.
#[derive(Debug)]
pub struct Receiver {
    core: Arc<SessionCore>,
    /// Keeps the session open; `None` in the background task that drains a dropped receiver.
    app: Option<Arc<AppRef>>,
    kind: ChannelKind,
    /// The stream currently read, and its rules.
    reader: Option<(FrameReader, InboundRules)>,
    readers: watch::Receiver<u64>,
    ended: watch::Receiver<Option<Disconnect>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if self.app.is_none() || self.core.ended().is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // The drain holds the session, not the application's hold on it: once the application
        // drops everything else, the session still closes.
        let mut drain = Receiver {
            core: self.core.clone(),
            app: None,
            kind: self.kind,
            reader: self.reader.take(),
            readers: self.readers.clone(),
            ended: self.ended.clone(),
        };
        runtime.spawn(async move {
            while let Ok(_) | Err(RecvError::Gap { .. } | RecvError::Decode(_)) =
                drain.next_message().await
            {}
        });
    }
}

impl Receiver {
    fn core(&self) -> &Arc<SessionCore> {
        &self.core
    }

    /// Which channel this receives from.
    pub fn kind(&self) -> ChannelKind {
        self.kind
    }

    /// Receives the next message and decodes it as `T` with bincode.
    ///
    /// A message that does not decode as `T` is consumed and reported as
    /// [`RecvError::Decode`]; the session continues. Cancel-safe.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<T, RecvError> {
        let payload = self.recv_bytes().await?;
        codec::decode_data_value(&payload).map_err(RecvError::Decode)
    }

    /// Receives the next message as raw bytes.
    ///
    /// Waits across migrations and resumes. Returns [`RecvError::Gap`] once if messages were
    /// lost in an outage, and [`RecvError::Closed`] when the session has ended. Anything the
    /// protocol does not allow (a malformed or oversize frame, a handshake message after
    /// `CONN_OK`, a sequence number out of order) closes the session with the matching
    /// [`Reason`] and returns [`RecvError::Violation`]. Cancel-safe: a message is never
    /// half-consumed.
    pub async fn recv_bytes(&mut self) -> Result<Bytes, RecvError> {
        self.next_message().await
    }

    async fn next_message(&mut self) -> Result<Bytes, RecvError> {
        loop {
            if let Some(why) = self.ended.borrow().clone() {
                return Err(RecvError::Closed(why));
            }
            // A newer stream (after a resume) replaces the current one; without a stream, take
            // whatever the session attached (possibly before this receiver subscribed).
            if self.reader.is_none() || self.readers.has_changed().unwrap_or(false) {
                self.readers.borrow_and_update();
                if let Some(newer) = self.core().channel(self.kind).take_reader() {
                    self.reader = Some(newer);
                }
            }
            let Some((reader, _)) = self.reader.as_mut() else {
                self.wait_for_stream().await?;
                continue;
            };
            let read = tokio::select! {
                biased;
                changed = self.readers.changed() => {
                    if changed.is_err() {
                        return Err(self.closed());
                    }
                    // Loop round: the new stream is picked up above (borrow_and_update there).
                    self.readers.mark_changed();
                    continue;
                }
                _ = self.ended.changed() => continue,
                read = reader.next_frame() => read,
            };
            match read {
                Ok(body) => {
                    if let Some(payload) = self.on_frame(body).await? {
                        return Ok(payload);
                    }
                }
                // This connection is done; the session moves to the next one or ends.
                Err(ReadFailure::Connection(_)) => self.reader = None,
                Err(ReadFailure::Finished) => {
                    self.reader = None;
                    self.peer_finished().await?;
                }
                Err(ReadFailure::Decode(e)) => {
                    return Err(self.violation(e.reason(), e.to_string()));
                }
                Err(ReadFailure::StreamEnded(detail)) => {
                    // A client whose channel stream alone failed drops the connection (both
                    // channels) and resumes the session on a new one; for a server it is the
                    // client breaking the protocol.
                    self.reader = None;
                    self.core().stream_failed(self.kind, &detail);
                    if matches!(self.core().role, Role::Client(_)) {
                        continue;
                    }
                    return Err(self.violation(Reason::InvalidStream, detail));
                }
                Err(ReadFailure::ZeroRttRejected) => self.reader = None,
            }
        }
    }

    /// Handles one frame; returns a payload to deliver, if it is one.
    async fn on_frame(&mut self, body: Bytes) -> Result<Option<Bytes>, RecvError> {
        if self.kind == ChannelKind::Main {
            // Anything from the client on a resumed connection shows it got CONN_OK.
            self.core.confirm();
        }
        let message =
            codec::decode_message(body).map_err(|e| self.violation(e.reason(), e.to_string()))?;
        let Some((_, rules)) = self.reader.as_mut() else {
            return Ok(None);
        };
        let channel = self.core.channel(self.kind);
        match rules.classify(message) {
            Inbound::Data { seq, payload } => {
                let arrival = lock(&channel.inbound).arrive(seq, payload.len());
                match arrival {
                    Ok(Arrival::Deliver) => {
                        Counters::bump(&self.core.counters.messages_received, 1);
                        if lock(&channel.inbound).ack_due() {
                            channel.try_ack().await;
                        }
                        Ok(Some(payload))
                    }
                    Ok(Arrival::Duplicate) => Ok(None),
                    Err(e) => Err(self.violation(Reason::SequenceError, e.to_string())),
                }
            }
            Inbound::Ack(next) => {
                let acked = channel.out.lock().await.outbound.ack(next);
                acked.map_err(|e| self.violation(Reason::SequenceError, e.to_string()))?;
                Ok(None)
            }
            Inbound::Gap(next) => {
                let missed = lock(&channel.inbound).gap(next);
                if missed > 0 {
                    return Err(RecvError::Gap { missed });
                }
                Ok(None)
            }
            Inbound::Ignored => Ok(None),
            Inbound::Violation { reason, message } => Err(self.violation(reason, message)),
        }
    }

    /// Waits for the session to attach a stream for this channel, or to end.
    async fn wait_for_stream(&mut self) -> Result<(), RecvError> {
        tokio::select! {
            changed = self.readers.changed() => {
                if changed.is_err() {
                    return Err(self.closed());
                }
                self.readers.mark_changed();
                Ok(())
            }
            changed = self.ended.changed() => {
                if changed.is_err() {
                    return Err(self.closed());
                }
                Ok(())
            }
        }
    }

    /// The peer finished this channel's stream: a graceful close, whose connection close (or a
    /// new connection) should follow. Waits for either, at most [`FINISH_GRACE`].
    async fn peer_finished(&mut self) -> Result<(), RecvError> {
        match tokio::time::timeout(FINISH_GRACE, self.wait_for_stream()).await {
            Ok(result) => result,
            Err(_) => Err(self.violation(
                Reason::InvalidStream,
                "stream finished but the session stayed open",
            )),
        }
    }

    fn closed(&self) -> RecvError {
        RecvError::Closed(
            self.core()
                .ended()
                .unwrap_or_else(|| Disconnect::Transport("session state lost".into())),
        )
    }

    fn violation(&self, reason: Reason, message: impl Into<String>) -> RecvError {
        let message = format!("{}: {}", self.kind, message.into());
        tracing::debug!(%reason, %message, "peer violated the protocol; closing");
        self.core().close(reason, &message);
        RecvError::Violation { reason, message }
    }
}
