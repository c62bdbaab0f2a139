//! Framed reading and writing on quinn streams: the only place bytes meet a stream.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use quinn::{ReadError, RecvStream, SendStream, WriteError};

use crate::protocol::codec::{self, DecodeError, LENGTH_PREFIX_LEN};

/// Most bytes taken from quinn in one read. Bounds the buffer to one frame plus this.
const READ_CHUNK: usize = 64 * 1024;

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
}

impl From<ReadError> for ReadFailure {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::ConnectionLost(e) => ReadFailure::Connection(e),
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
                return Ok(body);
            }
            if let Some(len) =
                codec::peek_frame_len(&self.buf, self.max_body).map_err(ReadFailure::Decode)?
            {
                // The length is within the limit: room for the whole frame now saves regrowth.
                self.buf.reserve(
                    len.saturating_add(LENGTH_PREFIX_LEN)
                        .saturating_sub(self.buf.len()),
                );
            }
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
#[derive(Debug)]
pub(crate) struct FrameWriter {
    stream: SendStream,
}

impl FrameWriter {
    pub(crate) fn new(stream: SendStream) -> Self {
        FrameWriter { stream }
    }

    /// Writes one encoded frame (not cancel-safe: a cancelled write may leave part of it sent).
    pub(crate) async fn write(&mut self, frame: Bytes) -> Result<(), WriteError> {
        self.stream.write_chunk(frame).await
    }

    /// Writes several encoded frames (or a declaration byte and a frame) in one go.
    pub(crate) async fn write_all(&mut self, chunks: &mut [Bytes]) -> Result<(), WriteError> {
        self.stream.write_all_chunks(chunks).await
    }

    /// Finishes the stream: the peer reads its end after everything written so far.
    pub(crate) fn finish(&mut self) {
        let _ = self.stream.finish();
    }

    /// Waits until the peer has acknowledged everything written on a finished stream (or the
    /// stream or connection is gone). A QUIC close discards unacknowledged data, so this is what
    /// lets the last messages before a close arrive.
    pub(crate) async fn acknowledged(&mut self) {
        let _ = self.stream.stopped().await;
    }

    /// [`finish`](Self::finish), then [`acknowledged`](Self::acknowledged) for at most `linger`.
    pub(crate) async fn finish_and_linger(&mut self, linger: Duration) {
        self.finish();
        let _ = tokio::time::timeout(linger, self.acknowledged()).await;
    }
}
