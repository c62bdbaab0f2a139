//! The feed datagram lane: unreliable, newest-wins feed messages in QUIC datagrams.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::broadcast::Prepared;
use crate::driver::session::{Counters, SessionCore, lock};
use crate::error::{Disconnect, RecvError, SendError};
use crate::protocol::codec::{self, Payload};
use crate::protocol::lane::{LaneArrival, decode_lane_datagram, lane_header_len};
use crate::session::{AppRef, encode_error};

/// Most queued datagrams [`Lane::recv_latest_bytes`] looks through for a newer one.
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
/// - QUIC sends datagrams ahead of stream data, within the same congestion control.
///
/// A lane handle sends and receives; clones share the session. Several clones may send; if
/// several receive, each message goes to one of them. Sending while the session is between
/// connections drops the message (counted in
/// [`SessionCounters::datagrams_unsent`](crate::SessionCounters::datagrams_unsent)).
///
/// [`TransportConfig::datagram_max_age`]: crate::TransportConfig::datagram_max_age
#[derive(Debug, Clone)]
pub struct Lane {
    app: Arc<AppRef>,
    attached: watch::Receiver<u64>,
    ended: watch::Receiver<Option<Disconnect>>,
}

impl Lane {
    pub(crate) fn new(app: Arc<AppRef>) -> Self {
        let core = &app.core;
        Lane {
            attached: core.subscribe_attached(),
            ended: core.subscribe_end(),
            app,
        }
    }

    fn core(&self) -> &Arc<SessionCore> {
        &self.app.core
    }

    /// The largest payload that fits one datagram on the current path, in bytes; `None` while
    /// the session has no connection, or if the peer refuses datagrams.
    pub fn max_payload_size(&self) -> Option<usize> {
        let core = self.core();
        let max = self.core().connection()?.max_datagram_size()?;
        let seq = core
            .lane
            .next_seq
            .load(std::sync::atomic::Ordering::Relaxed);
        max.checked_sub(lane_header_len(seq, core.lane.now_ms()))
    }

    /// Encodes `value` with bincode and sends it in one datagram; see [`send_bytes`](Self::send_bytes).
    pub fn send<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), SendError> {
        let payload = Payload::encode(value).map_err(encode_error)?;
        self.send_bytes(payload.bytes())
    }

    /// Sends `payload` in one datagram, without waiting: QUIC queues it (dropping the oldest
    /// queued datagram if its send buffer is full) and sends it as congestion control allows.
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
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<T, RecvError> {
        let payload = self.recv_bytes().await?;
        codec::decode_data_value(&payload).map_err(RecvError::Decode)
    }

    /// Receives the next lane message as raw bytes: waits for one newer than every one
    /// delivered so far. Waits across migrations and resumes; returns [`RecvError::Closed`]
    /// when the session ends. A malformed datagram breaks the protocol: the session is closed
    /// with the reason and [`RecvError::Violation`] returned. Cancel-safe.
    pub async fn recv_bytes(&mut self) -> Result<Bytes, RecvError> {
        loop {
            let datagram = self.next_datagram().await?;
            if let Some(payload) = self.on_datagram(datagram)? {
                return Ok(payload);
            }
        }
    }

    /// Like [`recv_bytes`](Self::recv_bytes), but if several messages have already arrived,
    /// skips to the newest of them: for a consumer that only wants the latest state.
    pub async fn recv_latest_bytes(&mut self) -> Result<Bytes, RecvError> {
        let mut latest = self.recv_bytes().await?;
        // Bounded: a peer sending as fast as this reads must not keep it here.
        for _ in 0..MAX_SKIP {
            let Some(datagram) = self.ready_datagram() else {
                break;
            };
            if let Some(newer) = self.on_datagram(datagram)? {
                latest = newer;
            }
        }
        Ok(latest)
    }

    /// [`recv_latest_bytes`](Self::recv_latest_bytes), decoded as `T`.
    pub async fn recv_latest<T: DeserializeOwned>(&mut self) -> Result<T, RecvError> {
        let payload = self.recv_latest_bytes().await?;
        codec::decode_data_value(&payload).map_err(RecvError::Decode)
    }

    /// A datagram already received on the current connection, without waiting.
    fn ready_datagram(&self) -> Option<Bytes> {
        let conn = self.core().connection()?;
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let read = std::pin::pin!(conn.read_datagram());
        match read.poll(&mut cx) {
            std::task::Poll::Ready(Ok(datagram)) => Some(datagram),
            _ => None,
        }
    }

    /// The next datagram from whichever connection the session has.
    async fn next_datagram(&mut self) -> Result<Bytes, RecvError> {
        loop {
            if let Some(why) = self.ended.borrow().clone() {
                return Err(RecvError::Closed(why));
            }
            // Seen before the connection is taken: an attach after this wakes the wait below.
            self.attached.borrow_and_update();
            let datagram = match self.app.core.connection() {
                Some(conn) => tokio::select! {
                    datagram = conn.read_datagram() => datagram.ok(),
                    _ = self.ended.changed() => continue,
                },
                None => None,
            };
            match datagram {
                Some(datagram) => return Ok(datagram),
                // No connection, or it ended: wait for the next one, or the end.
                None => {
                    tokio::select! {
                        changed = self.attached.changed() => if changed.is_err() {
                            return Err(self.closed());
                        },
                        changed = self.ended.changed() => if changed.is_err() {
                            return Err(self.closed());
                        },
                    }
                }
            }
        }
    }

    /// Decodes a datagram and applies newest-wins and the maximum age; returns the payload to
    /// deliver, if any.
    fn on_datagram(&self, datagram: Bytes) -> Result<Option<Bytes>, RecvError> {
        let core = self.core();
        let lane = decode_lane_datagram(datagram).map_err(|e| {
            let message = format!("feed datagram: {e}");
            tracing::debug!(reason = %e.reason(), %message, "peer violated the protocol; closing");
            core.close(e.reason(), &message);
            RecvError::Violation {
                reason: e.reason(),
                message,
            }
        })?;
        let arrival = lock(&core.lane.inbound).arrive(lane.seq, lane.sent_ms, core.lane.now_ms());
        let counter = match arrival {
            LaneArrival::Deliver => &core.counters.datagrams_delivered,
            LaneArrival::Stale => &core.counters.datagrams_stale,
            LaneArrival::TooOld { .. } => &core.counters.datagrams_too_old,
        };
        Counters::bump(counter, 1);
        Ok((arrival == LaneArrival::Deliver).then_some(lane.payload))
    }

    fn closed(&self) -> RecvError {
        RecvError::Closed(
            self.core()
                .ended()
                .unwrap_or_else(|| Disconnect::Transport("session state lost".into())),
        )
    }
}
