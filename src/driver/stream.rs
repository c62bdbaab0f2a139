//! Framed reading and writing on quinn streams: the only place bytes meet a stream.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use quinn::{ReadError, RecvStream, SendStream, WriteError};

use crate::protocol::codec::{self, DecodeError};

/// Most bytes taken from quinn in one read. Bounds the buffer to one frame plus this.
const READ_CHUNK: usize = 16 * 1024;

/// Why a frame could not be read.
#[derive(Debug)]
pub(crate) enum ReadFailure {
    /// The bytes are not a valid frame (too large, empty).
    Decode(DecodeError),
    /// The peer finished its side of the stream: it is closing the session gracefully.
    Finished,
    /// The peer reset its side of the stream, which the protocol never does.
    StreamEnded(String),
    /// The connection is gone.
    Connection(quinn::ConnectionError),
    /// The server rejected the 0-RTT data this stream was opened in.
    ZeroRttRejected,
}

impl From<ReadError> for ReadFailure {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::ConnectionLost(e) => ReadFailure::Connection(e),
            ReadError::ZeroRttRejected => ReadFailure::ZeroRttRejected,
            other => ReadFailure::StreamEnded(other.to_string()),
        }
    }
}

/// Reads length-prefixed frames from a stream.
///
/// Cancel-safe: a partially received frame stays in the buffer, so `next_frame` can sit in a
/// `select!` branch. The length prefix is checked against the limit before the body is buffered.
#[derive(Debug)]
pub(crate) struct FrameReader {
    stream: RecvStream,
    buf: BytesMut,
    max_body: usize,
}

impl FrameReader {
    pub(crate) fn new(stream: RecvStream, max_body: usize) -> Self {
        FrameReader {
            stream,
            buf: BytesMut::new(),
            max_body,
        }
    }

    /// Changes the frame limit (the handshake uses a small one, sessions the configured one).
    pub(crate) fn set_limit(&mut self, max_body: usize) {
        self.max_body = max_body;
    }

    /// The first byte of the stream: its channel declaration.
    pub(crate) async fn read_tag(&mut self) -> Result<u8, ReadFailure> {
        while self.buf.is_empty() {
            self.fill().await?;
        }
        Ok(self.buf.get_u8())
    }

    /// The next frame body.
    pub(crate) async fn next_frame(&mut self) -> Result<Bytes, ReadFailure> {
        loop {
            if let Some(body) =
                codec::decode_frame(&mut self.buf, self.max_body).map_err(ReadFailure::Decode)?
            {
                if self.buf.is_empty() {
                    // Let go of the read buffer (the frame keeps what it needs): an idle
                    // stream then holds no memory of its own.
                    self.buf = BytesMut::new();
                }
                return Ok(body);
            }
            // The buffer grows with the bytes that arrive, never ahead of them: a length prefix
            // only promises bytes (its limit was checked by `decode_frame` above).
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<(), ReadFailure> {
        match self.stream.read_chunk(READ_CHUNK, true).await? {
            Some(chunk) => {
                self.buf.extend_from_slice(&chunk.bytes);
                Ok(())
            }
            None => Err(ReadFailure::Finished),
        }
    }
}

/// Writes whole frames to a stream.
///
/// Cancel-safe: a frame is written with quinn's cancel-safe `write_chunks`, and whatever part
/// of it a cancelled write left unsent is kept and written first by the next call. A frame is
/// therefore never cut short, and frames never interleave.
#[derive(Debug)]
pub(crate) struct FrameWriter {
    stream: SendStream,
    /// The unsent rest of the frame being written: a header and a body (either may be empty).
    pending: [Bytes; 2],
}

impl FrameWriter {
    pub(crate) fn new(stream: SendStream) -> Self {
        FrameWriter {
            stream,
            pending: [Bytes::new(), Bytes::new()],
        }
    }

    /// Sets the stream's send priority (higher goes first). A stream that is already closed
    /// reports that on its next write instead.
    pub(crate) fn set_priority(&self, priority: i32) {
        let _ = self.stream.set_priority(priority);
    }

    /// Writes one encoded frame, after the rest of any frame a cancelled call left behind.
    pub(crate) async fn write(&mut self, frame: Bytes) -> Result<(), WriteError> {
        self.write_parts(frame, Bytes::new()).await
    }

    /// Writes one frame given as a header and a body (a payload shared with other frames),
    /// without copying either.
    pub(crate) async fn write_parts(
        &mut self,
        header: Bytes,
        body: Bytes,
    ) -> Result<(), WriteError> {
        self.flush().await?;
        self.queue(header, body);
        self.flush().await
    }

    /// Queues a frame, without waiting, to go out at the next [`flush`](Self::flush). The
    /// writer must have been flushed since the last frame was queued.
    pub(crate) fn queue(&mut self, header: Bytes, body: Bytes) {
        debug_assert!(
            self.pending.iter().all(Bytes::is_empty),
            "queued over an unflushed frame"
        );
        self.pending = [header, body];
    }

    /// Writes out the rest of a frame a cancelled write left behind.
    pub(crate) async fn flush(&mut self) -> Result<(), WriteError> {
        while self.pending.iter().any(|chunk| !chunk.is_empty()) {
            self.stream.write_chunks(&mut self.pending).await?;
        }
        Ok(())
    }

    /// Finishes the stream: the peer reads its end after everything written so far. A frame
    /// left unsent by a cancelled write must be [flushed](Self::flush) first.
    pub(crate) fn finish(&mut self) {
        let _ = self.stream.finish();
    }

    /// Waits until the peer has acknowledged everything written on a finished stream (or the
    /// stream or connection is gone). A QUIC close discards unacknowledged data, so this is what
    /// lets the last messages before a close arrive.
    pub(crate) async fn acknowledged(&mut self) {
        let _ = self.stream.stopped().await;
    }

    /// Flushes, finishes, and waits for the acknowledgement, for at most `linger` in all.
    pub(crate) async fn finish_and_linger(&mut self, linger: Duration) {
        let _ = tokio::time::timeout(linger, async {
            let _ = self.flush().await;
            self.finish();
            self.acknowledged().await;
        })
        .await;
    }
}
