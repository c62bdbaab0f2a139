//! Framed reading and writing on a link's streams: the only place bytes meet a stream.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};

use super::link::{StreamError, StreamRecv, StreamSend};
use crate::protocol::codec::{self, DecodeError};
use crate::protocol::{Head, LinkClosed};

/// The fewest bytes a read may take from the transport: what a channel holds stays within its
/// receive buffer (or frame limit) plus this (SECURITY.md, row 4).
const MIN_READ: usize = 16 * 1024;

/// The most bytes one read takes (quinn hands over what arrived in one packet, or more once it
/// has defragmented a backlog): reads this large, while the channel has room for them, keep a
/// bulk transfer from costing one read per 16 KiB.
const MAX_READ: usize = 64 * 1024;

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
    Connection(LinkClosed),
    /// The server rejected the 0-RTT data this stream was opened in.
    ZeroRttRejected,
}

impl From<StreamError> for ReadFailure {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::Lost(closed) => ReadFailure::Connection(closed),
            StreamError::ZeroRttRejected => ReadFailure::ZeroRttRejected,
            StreamError::Failed(detail) => ReadFailure::StreamEnded(detail),
            StreamError::Closed => ReadFailure::StreamEnded("stream closed".into()),
        }
    }
}

/// Reads length-prefixed frames from a stream.
///
/// Cancel-safe: a partially received frame stays in the buffer, so `next_frame` can sit in a
/// `select!` branch. The length prefix is checked against the limit before the body is buffered.
#[derive(Debug)]
pub(crate) struct FrameReader<R = quinn::RecvStream> {
    stream: R,
    buf: BytesMut,
    max_body: usize,
    /// The most bytes the next read takes.
    read_size: usize,
}

impl<R: StreamRecv> FrameReader<R> {
    pub(crate) fn new(stream: R, max_body: usize) -> Self {
        FrameReader {
            stream,
            buf: BytesMut::new(),
            max_body,
            read_size: MIN_READ,
        }
    }

    /// Lets the next reads take up to `room` bytes (what the channel can still hold), within
    /// 16 and 64 KiB.
    pub(crate) fn set_read_room(&mut self, room: usize) {
        self.read_size = room.clamp(MIN_READ, MAX_READ);
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

    /// A whole frame body already received, without reading the stream.
    pub(crate) fn buffered_frame(&mut self) -> Result<Option<Bytes>, ReadFailure> {
        let body =
            codec::decode_frame(&mut self.buf, self.max_body).map_err(ReadFailure::Decode)?;
        if body.is_some() && self.buf.is_empty() {
            // Let go of the read buffer (the frame keeps what it needs): an idle stream then
            // holds no memory of its own.
            self.buf = BytesMut::new();
        }
        Ok(body)
    }

    /// The next frame body.
    pub(crate) async fn next_frame(&mut self) -> Result<Bytes, ReadFailure> {
        loop {
            if let Some(body) = self.buffered_frame()? {
                return Ok(body);
            }
            // The buffer grows with the bytes that arrive, never ahead of them: a length prefix
            // only promises bytes (its limit was checked by `buffered_frame` above).
            self.fill().await?;
        }
    }

    /// Bytes received and not yet taken as frames.
    pub(crate) fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// Reads the next chunk of bytes into the buffer (at most the read size: see
    /// [`set_read_room`](Self::set_read_room)), for
    /// [`buffered_frame`](Self::buffered_frame) to take frames from. Cancel-safe.
    pub(crate) async fn read_more(&mut self) -> Result<(), ReadFailure> {
        self.fill().await
    }

    async fn fill(&mut self) -> Result<(), ReadFailure> {
        match self.stream.read_chunk(self.read_size).await? {
            Some(chunk) => {
                self.buf.extend_from_slice(&chunk);
                Ok(())
            }
            None => Err(ReadFailure::Finished),
        }
    }
}

/// Writes whole frames to a stream.
///
/// Frames are queued as chunks and written with the transport's cancel-safe `write_chunks`;
/// whatever part a cancelled write left unsent is kept and written first by the next flush. A
/// frame is therefore never cut short, and frames never interleave.
#[derive(Debug)]
pub(crate) struct FrameWriter<W = quinn::SendStream> {
    stream: W,
    /// Chunks not yet written, in order (none empty).
    pending: Vec<Bytes>,
    pending_bytes: usize,
    /// `DATA` headers, written side by side and handed to QUIC as slices of this buffer: one
    /// allocation per [`HEADS_BLOCK`] of them, not one each (given back when idle).
    heads: BytesMut,
    /// A frame was queued since the last [`release_idle`](Self::release_idle).
    queued_since_release: bool,
}

/// Bytes of `DATA` headers one allocation of a [`FrameWriter`] holds (a header is 6 to 23
/// bytes; a block is freed once QUIC has let go of every header in it).
const HEADS_BLOCK: usize = 512;

impl<W: StreamSend> FrameWriter<W> {
    pub(crate) fn new(stream: W) -> Self {
        FrameWriter {
            stream,
            pending: Vec::new(),
            pending_bytes: 0,
            heads: BytesMut::new(),
            queued_since_release: false,
        }
    }

    /// Sets the stream's send priority (higher goes first). A stream that is already closed
    /// reports that on its next write instead.
    pub(crate) fn set_priority(&self, priority: i32) {
        self.stream.set_priority(priority);
    }

    /// Writes one encoded frame, after anything already queued.
    pub(crate) async fn write(&mut self, frame: Bytes) -> Result<(), StreamError> {
        self.queue(Head::Control(frame), Bytes::new());
        self.flush().await
    }

    /// Queues a frame given as a head and a body (a payload shared with a replay buffer or
    /// other sessions), to go out at the next [`flush`](Self::flush). The body is not copied;
    /// a `DATA` header is copied into the writer's block of headers.
    pub(crate) fn queue(&mut self, head: Head, body: Bytes) {
        let head = match head {
            Head::Control(frame) => frame,
            Head::Data(header) => {
                if self.heads.capacity() < header.len() {
                    self.heads.reserve(HEADS_BLOCK);
                }
                self.heads.extend_from_slice(&header);
                self.heads.split().freeze()
            }
        };
        self.queued_since_release = true;
        for chunk in [head, body] {
            if !chunk.is_empty() {
                self.pending_bytes = self.pending_bytes.saturating_add(chunk.len());
                self.pending.push(chunk);
            }
        }
    }

    /// Gives back the queue's memory if nothing was queued since the last call (called every
    /// liveness check: a writer in use keeps its memory, an idle one lets it go within two).
    pub(crate) fn release_idle(&mut self) {
        if std::mem::take(&mut self.queued_since_release) {
            return;
        }
        if self.pending.is_empty() {
            if self.pending.capacity() > 0 {
                self.pending = Vec::new();
            }
            if self.heads.capacity() > 0 {
                self.heads = BytesMut::new();
            }
        }
    }

    /// Whether queued bytes wait to be written.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Bytes queued and not yet written.
    pub(crate) fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Writes out everything queued. Cancel-safe: whatever was not written stays queued.
    pub(crate) async fn flush(&mut self) -> Result<(), StreamError> {
        while !self.pending.is_empty() {
            let before: usize = self.pending_bytes;
            let result = self.stream.write_chunks(&mut self.pending).await;
            self.pending.retain(|chunk| !chunk.is_empty());
            let left: usize = self.pending.iter().map(Bytes::len).sum();
            self.pending_bytes = left.min(before);
            result?;
        }
        Ok(())
    }

    /// Finishes the stream: the peer reads its end after everything written so far. Queued
    /// frames must be [flushed](Self::flush) first.
    pub(crate) fn finish(&mut self) {
        self.stream.finish();
    }

    /// Resolves once the peer has received everything on the finished stream (or the stream
    /// or the connection is gone).
    pub(crate) fn acknowledged(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.stream.acknowledged()
    }

    /// Flushes, finishes, and waits until the peer has received it all, for at most `linger`
    /// in all (a `CONN_FAILED` before the connection closes). Returns whether the wait ended
    /// before `linger`: the peer has it all (or the stream or the connection is gone).
    pub(crate) async fn finish_and_linger(&mut self, linger: Duration) -> bool {
        tokio::time::timeout(linger, async {
            let _ = self.flush().await;
            self.finish();
            self.stream.stopped().await;
        })
        .await
        .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MAX_FRAME_LIMIT;

    /// A stream that takes everything and keeps the chunks it was given (as QUIC keeps them
    /// until they are acknowledged).
    #[derive(Default)]
    struct Keeper {
        kept: Vec<Bytes>,
    }

    impl StreamSend for Keeper {
        async fn write_chunks(&mut self, chunks: &mut [Bytes]) -> Result<(), StreamError> {
            for chunk in chunks.iter_mut() {
                self.kept.push(std::mem::take(chunk));
            }
            Ok(())
        }
        fn finish(&mut self) {}
        async fn stopped(&mut self) {}
        fn acknowledged(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
            std::future::ready(())
        }
        fn set_priority(&self, _: i32) {}
    }

    /// Proves: `DATA` frames queued with inline headers go out byte for byte as encoded whole,
    /// their headers share a few blocks instead of one allocation each, and a writer gives its
    /// block back at the second release with nothing queued in between, not at the first.
    #[tokio::test]
    async fn data_headers_share_blocks_and_frames_go_out_exact() {
        let mut writer = FrameWriter::new(Keeper::default());
        let mut expected = Vec::new();
        for seq in 0..200u64 {
            let body = Bytes::from(vec![u8::try_from(seq % 251).unwrap(); 40]);
            let header = codec::data_header(seq, body.len(), MAX_FRAME_LIMIT).unwrap();
            expected.extend_from_slice(&codec::encode_data(seq, &body, MAX_FRAME_LIMIT).unwrap());
            writer.queue(Head::Data(header), body);
        }
        writer.flush().await.unwrap();
        let kept = &writer.stream.kept;
        assert_eq!(kept.concat(), expected);
        // Headers are the even chunks; count where one does not follow the last in memory.
        let heads: Vec<&Bytes> = kept.iter().step_by(2).collect();
        let blocks = 1 + heads
            .windows(2)
            .filter(|pair| pair[0].as_ptr().wrapping_add(pair[0].len()) != pair[1].as_ptr())
            .count();
        assert!(blocks <= 200 * 10 / HEADS_BLOCK + 2, "{blocks} blocks");
        writer.release_idle();
        assert!(
            writer.heads.capacity() > 0,
            "a writer just used keeps its block"
        );
        writer.release_idle();
        assert_eq!(writer.heads.capacity(), 0, "an idle writer holds no block");
    }
}
