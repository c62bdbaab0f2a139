//! The feed datagram lane: unreliable, newest-wins feed messages in QUIC datagrams.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::driver::session::{AppRef, SessionCore};
use crate::error::{RecvError, SendError};
use crate::prepared::Prepared;
use crate::protocol::codec::{self, Payload};

/// Most queued messages [`Lane::recv_latest_bytes`] looks through for a newer one.
const MAX_SKIP: usize = 1024;

/// The session's feed datagram lane: state snapshots and other messages where only the newest
/// matters, sent unreliably as QUIC datagrams.
///
/// Next to the reliable [`feed`](crate::Session::feed) channel, where one lost packet holds up
/// every later message until it is retransmitted, a lane message is never retransmitted and
/// never waits for an earlier one:
///
/// - **Unreliable**: a message may be lost; nothing tells either side.
/// - **Newest wins**: a message older than one already delivered (reordered, duplicated, or
///   from before a resume) is dropped, so messages are delivered in increasing order, with
///   gaps.
/// - **Optionally fresh**: with [`TransportConfig::datagram_max_age`], a message delayed longer
///   than that beyond the fastest recent one is dropped when read (the age counts the time it
///   waited to be read, too).
/// - **One packet per message**: a message must fit one QUIC datagram
///   ([`max_payload_size`](Self::max_payload_size), about 1,150 bytes on a typical path);
///   a larger one is refused with [`SendError::TooLarge`], never fragmented.
/// - **Drop, don't delay**: QUIC sends datagrams ahead of stream data, within the same
///   congestion control; a message it cannot send yet is superseded by the next rather than
///   sent late behind it (see [`send_bytes`](Self::send_bytes)).
///
/// A lane handle sends and receives, from any thread (nothing here but the `async` receives
/// needs the tokio runtime); clones share the session. Several clones may send; if
/// several receive, each message goes to one of them. Sending while the session is between
/// connections drops the message (counted in
/// [`SessionCounters::datagrams_unsent`](crate::SessionCounters::datagrams_unsent)).
/// Datagrams are taken in as they arrive, whether or not the application reads the lane; up to
/// [`TransportConfig::datagram_receive_buffer`](crate::TransportConfig::datagram_receive_buffer)
/// bytes of them wait to be read, the oldest giving way.
///
/// [`TransportConfig::datagram_max_age`]: crate::TransportConfig::datagram_max_age
#[derive(Debug, Clone)]
pub struct Lane {
    app: Arc<AppRef>,
}

impl Lane {
    pub(crate) fn new(app: Arc<AppRef>) -> Self {
        Lane { app }
    }

    fn core(&self) -> &Arc<SessionCore> {
        &self.app.core
    }

    /// The largest payload that fits one datagram on the current path, in bytes; `None` while
    /// the session has no connection, or if the peer refuses datagrams.
    pub fn max_payload_size(&self) -> Option<usize> {
        self.core().lane_max_payload()
    }

    /// Encodes `value` with bincode and sends it in one datagram; see [`send_bytes`](Self::send_bytes).
    pub fn send<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), SendError> {
        let payload = Payload::encode(value)?;
        self.send_bytes(payload.bytes())
    }

    /// Sends `payload` in one datagram, without waiting. **Drop, don't delay**: the message
    /// goes to QUIC at once while QUIC keeps up; while congestion control holds the connection
    /// back it waits outside QUIC instead, where a newer message supersedes it (beyond
    /// [`TransportConfig::datagram_send_queue`](crate::TransportConfig::datagram_send_queue),
    /// default 1) and [`TransportConfig::datagram_max_age`](crate::TransportConfig::datagram_max_age)
    /// drops it unsent; the counters say how many were
    /// ([`SessionCounters::datagrams_superseded`](crate::SessionCounters::datagrams_superseded),
    /// [`datagrams_expired`](crate::SessionCounters::datagrams_expired)).
    ///
    /// Fails with [`SendError::TooLarge`] if it does not fit one datagram on the current path
    /// (with `max: 0` if the peer refuses datagrams: its `datagram_receive_buffer` is 0), and
    /// [`SendError::Closed`] once the session has ended. Between connections the message is
    /// dropped and `Ok` returned: a lane message is only worth sending now.
    pub fn send_bytes(&self, payload: &[u8]) -> Result<(), SendError> {
        self.core().send_lane(payload)
    }

    /// Sends a message encoded once for many sessions (see [`Prepared`]) in one datagram:
    /// no serialisation here, one copy into the datagram. See [`send_bytes`](Self::send_bytes).
    pub fn send_prepared(&self, message: &Prepared) -> Result<(), SendError> {
        self.send_bytes(message.as_bytes())
    }

    /// Receives the next lane message newer than every one delivered so far, decoded as `T`.
    ///
    /// A message that does not decode as `T` is reported as [`RecvError::Decode`]; the
    /// session continues. Cancel-safe.
    pub async fn recv<T: DeserializeOwned>(&self) -> Result<T, RecvError> {
        let payload = self.recv_bytes().await?;
        codec::decode_data_value(&payload).map_err(RecvError::Decode)
    }

    /// Receives the next lane message as raw bytes: waits for one newer than every one
    /// delivered so far. Waits across migrations and resumes; returns [`RecvError::Closed`]
    /// when the session ends. A malformed datagram breaks the protocol: the session is closed
    /// with the reason and [`RecvError::Violation`] returned. Cancel-safe.
    pub async fn recv_bytes(&self) -> Result<Bytes, RecvError> {
        self.core().recv_lane().await
    }

    /// The next lane message if one has arrived, without waiting: `None` when there is none
    /// yet. Works from any thread.
    pub fn try_recv_bytes(&self) -> Option<Result<Bytes, RecvError>> {
        self.core().try_recv_lane()
    }

    /// [`try_recv_bytes`](Self::try_recv_bytes), decoded as `T`.
    pub fn try_recv<T: DeserializeOwned>(&self) -> Option<Result<T, RecvError>> {
        let payload = self.try_recv_bytes()?;
        Some(payload.and_then(|p| codec::decode_data_value(&p).map_err(RecvError::Decode)))
    }

    /// The newest lane message that has arrived since the last read, without waiting, skipping
    /// the older ones: what a game loop wants once a tick. `None` when nothing new has arrived.
    /// An error (the session ended, a malformed datagram) is returned as soon as it is seen.
    pub fn try_recv_latest_bytes(&self) -> Option<Result<Bytes, RecvError>> {
        let mut latest = match self.try_recv_bytes()? {
            Ok(first) => first,
            Err(e) => return Some(Err(e)),
        };
        // Bounded: a peer sending as fast as this reads must not keep it here.
        for _ in 0..MAX_SKIP {
            match self.core().take_lane() {
                Some(newer) => latest = newer,
                None => break,
            }
        }
        Some(Ok(latest))
    }

    /// [`try_recv_latest_bytes`](Self::try_recv_latest_bytes), decoded as `T`.
    pub fn try_recv_latest<T: DeserializeOwned>(&self) -> Option<Result<T, RecvError>> {
        let payload = self.try_recv_latest_bytes()?;
        Some(payload.and_then(|p| codec::decode_data_value(&p).map_err(RecvError::Decode)))
    }

    /// Like [`recv_bytes`](Self::recv_bytes), but if several messages have already arrived,
    /// skips to the newest of them: for a consumer that only wants the latest state.
    pub async fn recv_latest_bytes(&self) -> Result<Bytes, RecvError> {
        let mut latest = self.recv_bytes().await?;
        // Bounded: a peer sending as fast as this reads must not keep it here.
        for _ in 0..MAX_SKIP {
            match self.core().take_lane() {
                Some(newer) => latest = newer,
                None => break,
            }
        }
        Ok(latest)
    }

    /// [`recv_latest_bytes`](Self::recv_latest_bytes), decoded as `T`.
    pub async fn recv_latest<T: DeserializeOwned>(&self) -> Result<T, RecvError> {
        let payload = self.recv_latest_bytes().await?;
        codec::decode_data_value(&payload).map_err(RecvError::Decode)
    }
}
