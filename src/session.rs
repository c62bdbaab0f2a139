//! An established session: its player ID, its two channels, and how it ends.
//!
//! The same types serve both sides: a [`Server`](crate::Server) yields a [`Session`] per player,
//! [`Client::connect`](crate::Client::connect) returns one.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::driver::link::{CLOSE_LINGER, Link, finish_all};
use crate::driver::stream::{FrameReader, FrameWriter, ReadFailure};
use crate::error::{Disconnect, RecvError, SendError};
use crate::protocol::codec::{self, EncodeError};
use crate::protocol::{ChannelKind, FrameLimits, Inbound, InboundRules, PlayerId, Reason};

/// How long a receiver that saw the peer finish a channel waits for the connection close that
/// should follow, before treating the half-closed channel as a violation.
const FINISH_GRACE: Duration = Duration::from_secs(3);

/// One player's session: the player ID and the `main` and `feed` channels.
///
/// Use [`main`](Session::main) and [`feed`](Session::feed) from one task, or
/// [`into_parts`](Session::into_parts) to move each channel (or each direction, with
/// [`Channel::split`]) to its own task.
///
/// Ending a session:
/// - [`close_gracefully`](Session::close_gracefully) delivers everything already sent, then
///   closes with a reason;
/// - dropping every part of the session does the same in the background, with
///   [`Reason::Normal`] (dropping only some parts changes nothing the peer can see: their
///   streams stay open, unused, until the session ends);
/// - [`close`](Session::close) closes at once, discarding anything still in flight.
#[derive(Debug)]
pub struct Session {
    handle: SessionHandle,
    main: Channel,
    feed: Channel,
}

/// The pieces the driver assembles a channel from.
pub(crate) struct ChannelParts {
    kind: ChannelKind,
    writer: FrameWriter,
    reader: FrameReader,
    rules: InboundRules,
    peer_max: usize,
}

impl ChannelParts {
    pub(crate) fn new(
        kind: ChannelKind,
        writer: FrameWriter,
        mut reader: FrameReader,
        rules: InboundRules,
        local: FrameLimits,
        peer: FrameLimits,
    ) -> Self {
        reader.set_limit(local.get(kind).min(codec::MAX_FRAME_LIMIT));
        ChannelParts {
            kind,
            writer,
            reader,
            rules,
            peer_max: peer.get(kind).min(codec::MAX_FRAME_LIMIT),
        }
    }
}

impl Session {
    pub(crate) fn new(
        link: Link,
        player_id: PlayerId,
        main: ChannelParts,
        feed: ChannelParts,
    ) -> Self {
        let channel = |parts: ChannelParts| Channel {
            sender: Sender {
                kind: parts.kind,
                writer: Some(parts.writer),
                max: parts.peer_max,
                link: link.clone(),
            },
            receiver: Receiver {
                kind: parts.kind,
                reader: Some(parts.reader),
                rules: parts.rules,
                link: link.clone(),
            },
        };
        let (main, feed) = (channel(main), channel(feed));
        Session {
            handle: SessionHandle { link, player_id },
            main,
            feed,
        }
    }

    /// The player's ID, the same on both sides.
    pub fn player_id(&self) -> PlayerId {
        self.handle.player_id
    }

    /// The `main` channel.
    pub fn main(&mut self) -> &mut Channel {
        &mut self.main
    }

    /// The `feed` channel.
    pub fn feed(&mut self) -> &mut Channel {
        &mut self.feed
    }

    /// A cloneable handle for closing the session and reading its state.
    pub fn handle(&self) -> &SessionHandle {
        &self.handle
    }

    /// Splits the session into its handle and its two channels, to use from separate tasks.
    pub fn into_parts(self) -> (SessionHandle, Channel, Channel) {
        (self.handle, self.main, self.feed)
    }

    /// The peer's current UDP address.
    pub fn remote_address(&self) -> SocketAddr {
        self.handle.remote_address()
    }

    /// The current smoothed round-trip time estimate.
    pub fn rtt(&self) -> Duration {
        self.handle.rtt()
    }

    /// Closes the session at once; see [`SessionHandle::close`].
    pub fn close(&self, reason: Reason, message: &str) {
        self.handle.close(reason, message);
    }

    /// Closes the session after the peer has received everything already sent on both
    /// channels (waiting at most 2 s for its acknowledgement), with `reason` and `message`.
    /// On a client, returns once the close has gone out, so the program may exit right after.
    pub async fn close_gracefully(mut self, reason: Reason, message: &str) {
        let writers = [
            self.main.sender.writer.take(),
            self.feed.sender.writer.take(),
        ];
        finish_all(writers.into_iter().flatten(), CLOSE_LINGER).await;
        self.handle.close(reason, message);
        self.handle.closed().await;
    }

    /// Waits until the session ends and says why.
    pub async fn closed(&self) -> Disconnect {
        self.handle.closed().await
    }
}

/// A cloneable handle to a session, for closing it or reading its state from any task.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    link: Link,
    player_id: PlayerId,
}

impl SessionHandle {
    /// The player's ID.
    pub fn player_id(&self) -> PlayerId {
        self.player_id
    }

    /// The peer's current UDP address.
    pub fn remote_address(&self) -> SocketAddr {
        self.link.remote_address()
    }

    /// The current smoothed round-trip time estimate.
    pub fn rtt(&self) -> Duration {
        self.link.rtt()
    }

    /// Closes the session at once with `reason` (sent to the peer as the QUIC application error
    /// code, with `message`). Data not yet delivered is discarded, as with any QUIC close; use
    /// [`Session::close_gracefully`] to deliver it first.
    ///
    /// The close is sent in the background: a client about to exit should then await
    /// [`closed`](Self::closed), which returns once it has gone out.
    pub fn close(&self, reason: Reason, message: &str) {
        self.link.close(reason, message);
    }

    /// Waits until the session ends and says why. After a local close on a client, it also
    /// waits (at most 2 s) until the close has been sent.
    pub async fn closed(&self) -> Disconnect {
        self.link.closed().await
    }
}

/// One channel of a session, both directions. Messages on a channel arrive reliably and in the
/// order they were sent; the two channels are independent of each other.
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
///
/// Dropping it while other parts of the session live leaves the channel's stream open and
/// unused; when every part is gone, the session closes gracefully (see [`Session`]).
#[derive(Debug)]
pub struct Sender {
    kind: ChannelKind,
    /// `None` only once [`Session::close_gracefully`] or `drop` has taken it.
    writer: Option<FrameWriter>,
    max: usize,
    link: Link,
}

impl Drop for Sender {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take() {
            self.link.park_writer(writer);
        }
    }
}

impl Sender {
    /// Which channel this sends on.
    pub fn kind(&self) -> ChannelKind {
        self.kind
    }

    /// The largest payload, in bytes, the peer accepts in one message on this channel: for
    /// [`send_bytes`](Self::send_bytes) the slice length, for [`send`](Self::send) the value's
    /// bincode encoding. Larger messages fail with [`SendError::TooLarge`].
    pub fn max_payload_size(&self) -> usize {
        codec::max_data_payload(self.max)
    }

    /// Encodes `value` with bincode (standard configuration) and sends it.
    ///
    /// Returns once the message is queued in the connection's send buffer, waiting if flow
    /// control or the send window is full. Not cancel-safe: if the future is dropped part of
    /// the message may have been queued, and the channel must then not be used again.
    pub async fn send<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SendError> {
        let frame = codec::encode_data_value(value, self.max).map_err(encode_error)?;
        self.write(frame).await
    }

    /// Sends raw bytes. Same guarantees as [`send`](Self::send).
    pub async fn send_bytes(&mut self, payload: &[u8]) -> Result<(), SendError> {
        let frame = codec::encode_data_bytes(payload, self.max).map_err(encode_error)?;
        self.write(frame).await
    }

    async fn write(&mut self, frame: Bytes) -> Result<(), SendError> {
        let Some(writer) = self.writer.as_mut() else {
            return Err(SendError::Closed(Disconnect::Locally {
                reason: Reason::Normal,
                message: "session closing".into(),
            }));
        };
        writer.write(frame).await.map_err(|e| match e {
            quinn::WriteError::ConnectionLost(e) => SendError::Closed(self.link.disconnect(&e)),
            other => {
                let message = format!("{} stream: {other}", self.kind);
                self.link.close(Reason::InvalidStream, &message);
                SendError::Closed(Disconnect::Locally {
                    reason: Reason::InvalidStream,
                    message,
                })
            }
        })
    }
}

fn encode_error(e: EncodeError) -> SendError {
    match e {
        EncodeError::TooLarge { len, max } => SendError::TooLarge { len, max },
        other => SendError::Encode(other.to_string()),
    }
}

/// The receiving half of a channel.
///
/// Dropping it while other parts of the session live leaves the stream open and unread: the
/// peer's sends on this channel then stop once flow control is exhausted.
#[derive(Debug)]
pub struct Receiver {
    kind: ChannelKind,
    /// `None` only once `drop` has taken it.
    reader: Option<FrameReader>,
    rules: InboundRules,
    link: Link,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.take() {
            self.link.park_reader(reader);
        }
    }
}

impl Receiver {
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
    /// Anything the protocol does not allow (a malformed or oversize frame, a handshake message
    /// after `CONN_OK`) closes the session with the matching [`Reason`] and returns
    /// [`RecvError::Violation`]. Cancel-safe: a message is never half-consumed.
    pub async fn recv_bytes(&mut self) -> Result<Bytes, RecvError> {
        loop {
            let Some(reader) = self.reader.as_mut() else {
                return Err(RecvError::Closed(Disconnect::Locally {
                    reason: Reason::Normal,
                    message: "session closing".into(),
                }));
            };
            let body = match reader.next_frame().await {
                Ok(body) => body,
                Err(ReadFailure::Decode(e)) => {
                    return Err(self.violation(e.reason(), e.to_string()));
                }
                Err(ReadFailure::Finished) => return Err(self.peer_finished().await),
                Err(ReadFailure::StreamEnded(detail)) => {
                    return Err(self.violation(Reason::InvalidStream, detail));
                }
                Err(ReadFailure::Connection(e)) => {
                    return Err(RecvError::Closed(self.link.disconnect(&e)));
                }
            };
            let message = match codec::decode_message(body) {
                Ok(message) => message,
                Err(e) => return Err(self.violation(e.reason(), e.to_string())),
            };
            match self.rules.classify(message) {
                Inbound::Data(payload) => return Ok(payload),
                Inbound::Ignored => continue,
                Inbound::Violation { reason, message } => {
                    return Err(self.violation(reason, message));
                }
            }
        }
    }

    /// The peer finished the channel: it is closing gracefully, and its connection close
    /// follows once it has our acknowledgements. Report that close.
    async fn peer_finished(&self) -> RecvError {
        match tokio::time::timeout(FINISH_GRACE, self.link.closed()).await {
            Ok(disconnect) => RecvError::Closed(disconnect),
            Err(_) => self.violation(
                Reason::InvalidStream,
                "stream finished but the session stayed open",
            ),
        }
    }

    fn violation(&self, reason: Reason, message: impl Into<String>) -> RecvError {
        let message = format!("{}: {}", self.kind, message.into());
        tracing::debug!(%reason, %message, "peer violated the protocol; closing");
        self.link.close(reason, &message);
        RecvError::Violation { reason, message }
    }
}
