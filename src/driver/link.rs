//! The connection a session runs on, seen through what the protocol needs from it: two
//! bidirectional streams, datagrams, and how it ends.
//!
//! The connection task ([`super::connection`]) and the framed stream I/O ([`super::stream`])
//! work on these traits only. quinn's connection and streams implement them here; a second
//! transport (WebTransport sessions, whose streams and datagrams have the same shape) can
//! implement them and drive the same session machine.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::{ConnectionError, VarInt};

use crate::protocol::{LinkClosed, MAX_FAILURE_MESSAGE, PlayerId, Reason, Token};

/// How long a closing session waits for the peer to take what was sent last.
pub(crate) const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Why a stream could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StreamError {
    /// The connection is gone.
    Lost(LinkClosed),
    /// The peer reset the stream (reading) or stopped it (writing), with this detail.
    Failed(String),
    /// The stream was opened in 0-RTT data, which the server rejected.
    ZeroRttRejected,
    /// This side already finished or reset the stream.
    Closed,
}

/// A transport's counters for one connection, sampled for statistics and liveness.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PathSample {
    pub(crate) rtt: Duration,
    pub(crate) cwnd: u64,
    pub(crate) sent_bytes: u64,
    pub(crate) received_bytes: u64,
    pub(crate) sent_packets: u64,
    pub(crate) lost_packets: u64,
    /// Datagrams (UDP packets) received on the connection: a change means the path is alive.
    pub(crate) received_datagrams: u64,
}

/// What every part of a session may do with its connection without waiting: close it, send a
/// datagram, read its path. Shared between the connection task and the application's handles.
pub(crate) trait LinkHandle: Send + Sync + 'static {
    /// Closes the connection with `reason` as the application error code (the first close wins).
    fn close(&self, reason: Reason, message: &str);
    /// As [`close`](Self::close), for a close that says nothing beyond its code or must not
    /// wait: the reason already went out in a `CONN_FAILED` on main or feed, or the close is an
    /// eviction, which gets no more of the server's time (a browser's link then sends no
    /// farewell, PROTOCOL.md §14.6).
    fn close_at_once(&self, reason: Reason, message: &str) {
        self.close(reason, message);
    }
    /// Queues a datagram; the transport drops the oldest queued ones when its buffer is full.
    fn send_datagram(&self, datagram: Bytes) -> Result<(), DatagramRefused>;
    /// Bytes of datagrams queued and not yet sent (0 when none are), as the transport counts
    /// them (payload and its own bookkeeping): what the lane's outbox decides by.
    fn datagram_queued(&self) -> usize;
    /// The largest datagram the path and the peer accept now; `None` if the peer takes none.
    fn max_datagram_size(&self) -> Option<usize>;
    /// The peer's current address.
    fn remote_address(&self) -> SocketAddr;
    /// The current smoothed RTT estimate.
    fn rtt(&self) -> Duration;
    /// The transport's counters now.
    fn sample(&self) -> PathSample;
}

/// The size of quinn's datagram send queue. The lane hands quinn a datagram only while it holds
/// nothing unsent (or only the rest of the same burst, within one packet), so this is never
/// filled; it must hold the largest datagram.
pub(crate) const DATAGRAM_QUEUE: usize = 64 * 1024;

/// What quinn counts for each queued datagram beside its bytes (a `Bytes`): an empty queue
/// reports this much less free space than its size.
pub(crate) const DATAGRAM_BOOKKEEPING: usize = std::mem::size_of::<Bytes>();

/// Why a datagram was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DatagramRefused {
    /// Larger than the largest the path takes.
    TooLarge,
    /// The peer takes no datagrams, or the connection is gone.
    Unavailable,
}

/// A connection: its handle, plus what the connection task waits on.
pub(crate) trait Link: LinkHandle + Clone {
    /// The sending half of its streams.
    type Send: StreamSend;
    /// The receiving half of its streams.
    type Recv: StreamRecv;
    /// The next datagram received; once the connection has ended (and the datagrams it had
    /// received are read), how it ended. The connection task learns of the end from this.
    fn read_datagram(&self) -> impl Future<Output = Result<Bytes, LinkClosed>> + Send + '_;
    /// The next bidirectional stream the peer opened; how the connection ended, once it has.
    fn accept_bi(
        &self,
    ) -> impl Future<Output = Result<(Self::Send, Self::Recv), LinkClosed>> + Send + '_;
    /// The proof of `credential` a `RESUME` of `player_id`'s session carries on this connection
    /// (PROTOCOL.md §7.2, and §14.5 for WebTransport); `None` while it cannot be computed yet (a
    /// QUIC connection's TLS handshake has not completed).
    fn resume_proof(&self, credential: &Token, player_id: PlayerId) -> Option<Token>;
    /// A shareable handle on this connection.
    fn handle(&self) -> Arc<dyn LinkHandle>;
}

/// The sending half of a stream.
pub(crate) trait StreamSend: Send + 'static {
    /// Writes a prefix of `chunks` as flow control allows, emptying the chunks written and
    /// cutting a partly written one to its unwritten rest. Cancel-safe: if the future is
    /// dropped, nothing was written.
    fn write_chunks(
        &mut self,
        chunks: &mut [Bytes],
    ) -> impl Future<Output = Result<(), StreamError>> + Send;
    /// Finishes the stream (FIN) after everything written.
    fn finish(&mut self);
    /// Resolves once the peer has received everything written on a finished stream (or the
    /// stream or connection is gone).
    fn stopped(&mut self) -> impl Future<Output = ()> + Send;
    /// [`stopped`](Self::stopped), as a future that does not borrow the stream (for a task that
    /// shares the stream's writer with others).
    fn acknowledged(&self) -> impl Future<Output = ()> + Send + 'static;
    /// Sets the stream's send priority (higher goes first).
    fn set_priority(&self, priority: i32);
}

/// The receiving half of a stream.
pub(crate) trait StreamRecv: Send + 'static {
    /// The next bytes received, at most `max`; `None` once the peer finished the stream.
    /// Cancel-safe.
    fn read_chunk(
        &mut self,
        max: usize,
    ) -> impl Future<Output = Result<Option<Bytes>, StreamError>> + Send;
}

/// How a quinn connection ended, in the protocol core's terms.
pub(crate) fn link_closed(error: &ConnectionError) -> LinkClosed {
    match error {
        ConnectionError::ApplicationClosed(close) => LinkClosed::Application {
            code: close.error_code.into_inner(),
            reason: String::from_utf8_lossy(&close.reason).into_owned(),
        },
        ConnectionError::TimedOut => LinkClosed::TimedOut,
        ConnectionError::Reset => LinkClosed::Reset,
        ConnectionError::LocallyClosed => LinkClosed::Locally,
        other => LinkClosed::Transport(other.to_string()),
    }
}

/// Cuts a close message to the protocol's limit at a character boundary.
pub(crate) fn truncate(message: &str) -> &str {
    crate::protocol::codec::truncate_utf8(message, MAX_FAILURE_MESSAGE)
}

/// Closes a quinn connection with `reason` and `message`.
pub(crate) fn close(conn: &quinn::Connection, reason: Reason, message: &str) {
    conn.close(VarInt::from(reason.code()), truncate(message).as_bytes());
}

/// Lets a client's endpoint send its close and drain, for at most [`CLOSE_LINGER`]. (A server's
/// endpoint is shared by every connection; it drains in `Server::shutdown`.)
pub(crate) async fn drain(endpoint: &quinn::Endpoint) {
    let _ = tokio::time::timeout(CLOSE_LINGER, endpoint.wait_idle()).await;
}

impl LinkHandle for quinn::Connection {
    fn close(&self, reason: Reason, message: &str) {
        close(self, reason, message);
    }

    fn send_datagram(&self, datagram: Bytes) -> Result<(), DatagramRefused> {
        quinn::Connection::send_datagram(self, datagram).map_err(|e| match e {
            quinn::SendDatagramError::TooLarge => DatagramRefused::TooLarge,
            _ => DatagramRefused::Unavailable,
        })
    }

    fn datagram_queued(&self) -> usize {
        DATAGRAM_QUEUE
            .saturating_sub(DATAGRAM_BOOKKEEPING)
            .saturating_sub(self.datagram_send_buffer_space())
    }

    fn max_datagram_size(&self) -> Option<usize> {
        quinn::Connection::max_datagram_size(self)
    }

    fn remote_address(&self) -> SocketAddr {
        quinn::Connection::remote_address(self)
    }

    fn rtt(&self) -> Duration {
        quinn::Connection::rtt(self)
    }

    fn sample(&self) -> PathSample {
        let stats = self.stats();
        PathSample {
            rtt: stats.path.rtt,
            cwnd: stats.path.cwnd,
            sent_bytes: stats.udp_tx.bytes,
            received_bytes: stats.udp_rx.bytes,
            sent_packets: stats.path.sent_packets,
            lost_packets: stats.path.lost_packets,
            received_datagrams: stats.udp_rx.datagrams,
        }
    }
}

impl Link for quinn::Connection {
    type Send = quinn::SendStream;
    type Recv = quinn::RecvStream;

    async fn read_datagram(&self) -> Result<Bytes, LinkClosed> {
        quinn::Connection::read_datagram(self)
            .await
            .map_err(|e| link_closed(&e))
    }

    async fn accept_bi(&self) -> Result<(Self::Send, Self::Recv), LinkClosed> {
        quinn::Connection::accept_bi(self)
            .await
            .map_err(|e| link_closed(&e))
    }

    fn resume_proof(&self, credential: &Token, player_id: PlayerId) -> Option<Token> {
        super::resume_proof(self, credential, player_id)
    }

    fn handle(&self) -> Arc<dyn LinkHandle> {
        Arc::new(self.clone())
    }
}

impl StreamSend for quinn::SendStream {
    async fn write_chunks(&mut self, chunks: &mut [Bytes]) -> Result<(), StreamError> {
        match quinn::SendStream::write_chunks(self, chunks).await {
            Ok(_) => Ok(()),
            Err(quinn::WriteError::ConnectionLost(e)) => Err(StreamError::Lost(link_closed(&e))),
            Err(quinn::WriteError::ZeroRttRejected) => Err(StreamError::ZeroRttRejected),
            Err(quinn::WriteError::ClosedStream) => Err(StreamError::Closed),
            Err(e @ quinn::WriteError::Stopped(_)) => Err(StreamError::Failed(e.to_string())),
        }
    }

    fn finish(&mut self) {
        let _ = quinn::SendStream::finish(self);
    }

    async fn stopped(&mut self) {
        let _ = quinn::SendStream::stopped(self).await;
    }

    fn acknowledged(&self) -> impl Future<Output = ()> + Send + 'static {
        let stopped = quinn::SendStream::stopped(self);
        async move {
            let _ = stopped.await;
        }
    }

    fn set_priority(&self, priority: i32) {
        let _ = quinn::SendStream::set_priority(self, priority);
    }
}

impl StreamRecv for quinn::RecvStream {
    async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, StreamError> {
        match quinn::RecvStream::read_chunk(self, max, true).await {
            Ok(chunk) => Ok(chunk.map(|c| c.bytes)),
            Err(quinn::ReadError::ConnectionLost(e)) => Err(StreamError::Lost(link_closed(&e))),
            Err(quinn::ReadError::ZeroRttRejected) => Err(StreamError::ZeroRttRejected),
            Err(quinn::ReadError::ClosedStream) => Err(StreamError::Closed),
            Err(e) => Err(StreamError::Failed(e.to_string())),
        }
    }
}
