//! Framing and message encoding: pure functions from bytes to typed messages and back.
//!
//! A frame is a 4-byte big-endian body length followed by the body; the body is one bincode
//! (standard configuration: little-endian, variable-length integers) [`Message`]. See
//! `PROTOCOL.md` §4-5 for the byte-level specification.
//!
//! Everything here treats its input as hostile: lengths are checked against the caller's limit
//! before any buffer grows, and every decode runs with a bincode allocation limit.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::message::{Message, Reason};

/// Size of the length prefix that starts every frame.
pub const LENGTH_PREFIX_LEN: usize = 4;

/// Largest frame body accepted on either channel before `CONN_OK`. Handshake messages are small;
/// this leaves room for credentials up to about 4 000 bytes.
pub const HANDSHAKE_FRAME_LIMIT: usize = 4096;

/// Largest frame body any quicfeed endpoint will ever accept, whatever its configuration.
pub const MAX_FRAME_LIMIT: usize = 16 * 1024 * 1024;

/// Smallest frame limit an endpoint may announce for a channel: room for any control message
/// and a small payload. An announcement below it is a malformed `CONN_INIT` or `CONN_OK`.
pub const MIN_FRAME_LIMIT: u32 = 256;

/// Longest `CONN_FAILED` message text an endpoint sends, in bytes. Longer texts are cut at a
/// character boundary by [`conn_failed`].
pub const MAX_FAILURE_MESSAGE: usize = 256;

/// Allocation limit for decoding control messages. A handshake frame is at most
/// [`HANDSHAKE_FRAME_LIMIT`] bytes, and bincode counts every integer at its decoded size.
const CONTROL_DECODE_LIMIT: usize = 128 * 1024;

/// Largest header of a `DATA` frame: prefix, tag, and two 9-byte varints (sequence, length).
pub const DATA_HEADER_MAX: usize = LENGTH_PREFIX_LEN + 1 + 9 + 9;

/// Why bytes could not be turned into a frame or a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A frame's declared length is over the receiver's limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Declared body length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// A frame with an empty body (no message tag).
    #[error("empty frame")]
    EmptyFrame,
    /// A message tag this version does not define.
    #[error("unknown message tag {0}")]
    UnknownTag(u32),
    /// The body does not decode as the message its tag names, or has bytes left over.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// What went wrong.
        detail: String,
    },
}

impl DecodeError {
    /// The `CONN_FAILED` / close reason this error calls for.
    pub const fn reason(&self) -> Reason {
        match self {
            DecodeError::FrameTooLarge { .. } => Reason::FrameTooLarge,
            DecodeError::UnknownTag(_) => Reason::UnknownMessage,
            DecodeError::EmptyFrame | DecodeError::Malformed { .. } => Reason::MalformedMessage,
        }
    }

    fn malformed(what: &'static str, err: impl std::fmt::Display) -> Self {
        DecodeError::Malformed {
            what,
            detail: err.to_string(),
        }
    }
}

/// Why a value could not be encoded into a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded frame body would exceed the peer's limit.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Encoded body length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The value's `Serialize` implementation failed (for example, a map with non-string keys is
    /// fine, but a serializer error from a custom implementation is reported here).
    #[error("cannot encode value: {0}")]
    Serialize(String),
}

fn standard() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Splits one frame off the front of `buf`, if a whole one is there.
///
/// Returns `Ok(None)` when more bytes are needed. The length prefix is checked against
/// `max_body` as soon as its four bytes are present, before the caller buffers the body, so a
/// hostile length never causes an allocation. The returned body shares `buf`'s allocation.
pub fn decode_frame(buf: &mut BytesMut, max_body: usize) -> Result<Option<Bytes>, DecodeError> {
    let Some(len) = peek_frame_len(buf, max_body)? else {
        return Ok(None);
    };
    let Some(total) = len.checked_add(LENGTH_PREFIX_LEN) else {
        return Err(DecodeError::FrameTooLarge { len, max: max_body });
    };
    if buf.len() < total {
        return Ok(None);
    }
    buf.advance(LENGTH_PREFIX_LEN);
    Ok(Some(buf.split_to(len).freeze()))
}

/// The body length announced by the frame at the front of `buf`, checked against `max_body`;
/// `Ok(None)` if the prefix is not complete yet.
pub fn peek_frame_len(buf: &[u8], max_body: usize) -> Result<Option<usize>, DecodeError> {
    let Some(prefix) = buf.first_chunk::<LENGTH_PREFIX_LEN>() else {
        return Ok(None);
    };
    let len = usize::try_from(u32::from_be_bytes(*prefix)).unwrap_or(usize::MAX);
    if len > max_body {
        return Err(DecodeError::FrameTooLarge { len, max: max_body });
    }
    if len == 0 {
        return Err(DecodeError::EmptyFrame);
    }
    Ok(Some(len))
}

/// Decodes a frame body into a message.
///
/// `DATA` payloads are sliced out of `body` without copying; every other message is decoded by
/// bincode under an allocation limit. Trailing bytes after a message are an error.
pub fn decode_message(body: Bytes) -> Result<Message, DecodeError> {
    let (tag, tag_len) = bincode::decode_from_slice::<u32, _>(&body, standard())
        .map_err(|e| DecodeError::malformed("message tag", e))?;
    if tag >= Message::TAG_COUNT {
        return Err(DecodeError::UnknownTag(tag));
    }
    if tag == u32::from(Message::DATA_TAG) {
        let rest = body.get(tag_len..).unwrap_or_default();
        let (seq, seq_len) = bincode::decode_from_slice::<u64, _>(rest, standard())
            .map_err(|e| DecodeError::malformed("DATA sequence number", e))?;
        let rest = rest.get(seq_len..).unwrap_or_default();
        let (len, len_len) = bincode::decode_from_slice::<u64, _>(rest, standard())
            .map_err(|e| DecodeError::malformed("DATA length", e))?;
        let start = tag_len.saturating_add(seq_len).saturating_add(len_len);
        let available = body.len().saturating_sub(start);
        if usize::try_from(len).ok() != Some(available) {
            return Err(DecodeError::Malformed {
                what: "DATA",
                detail: format!("declares {len} payload bytes but carries {available}"),
            });
        }
        return Ok(Message::Data {
            seq,
            payload: body.slice(start..),
        });
    }
    let (message, used) = bincode::serde::decode_from_slice::<Message, _>(
        &body,
        standard().with_limit::<CONTROL_DECODE_LIMIT>(),
    )
    .map_err(|e| DecodeError::malformed("message", e))?;
    if used != body.len() {
        return Err(DecodeError::Malformed {
            what: message.name(),
            detail: format!("{} trailing bytes", body.len().saturating_sub(used)),
        });
    }
    Ok(message)
}

/// Encodes a message as a complete frame (prefix included).
///
/// Used for control messages; application data takes the paths of [`Payload`], which produce
/// the same bytes without copying the payload.
pub fn encode_message(message: &Message) -> Result<Bytes, EncodeError> {
    let mut frame = BytesMut::with_capacity(64).writer();
    frame.get_mut().put_u32(0);
    bincode::serde::encode_into_std_write(message, &mut frame, standard())
        .map_err(|e| EncodeError::Serialize(e.to_string()))?;
    let mut frame = frame.into_inner();
    let body_len = frame.len().saturating_sub(LENGTH_PREFIX_LEN);
    let prefix = u32::try_from(body_len).map_err(|_| EncodeError::TooLarge {
        len: body_len,
        max: MAX_FRAME_LIMIT,
    })?;
    if let Some(head) = frame.first_chunk_mut::<LENGTH_PREFIX_LEN>() {
        *head = prefix.to_be_bytes();
    }
    Ok(frame.freeze())
}

/// Builds a `CONN_FAILED` message, cutting `message` to [`MAX_FAILURE_MESSAGE`] bytes at a
/// character boundary.
pub fn conn_failed(reason: Reason, message: &str, retry_after: Option<Duration>) -> Message {
    Message::ConnFailed {
        reason,
        message: truncate_utf8(message, MAX_FAILURE_MESSAGE).to_owned(),
        retry_after_ms: retry_after.map(|d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX)),
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
pub fn truncate_utf8(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    text.get(..end).unwrap_or_default()
}

/// The largest payload a `DATA` frame with a body of at most `max_body` bytes can carry,
/// whatever its sequence number (the body is the tag, the sequence number and the payload
/// length as varints, then the payload).
pub fn max_data_payload(max_body: usize) -> usize {
    // For each varint size, the payload lengths it encodes, and the largest that fits.
    const CLASSES: [(usize, u64, u64); 4] = [
        (1, 0, 250),
        (3, 251, u16::MAX as u64),
        (5, u16::MAX as u64 + 1, u32::MAX as u64),
        (9, u32::MAX as u64 + 1, u64::MAX),
    ];
    const TAG_AND_LARGEST_SEQ: usize = 1 + 9;
    CLASSES
        .into_iter()
        .filter_map(|(varint_len, least, most)| {
            let room = max_body.checked_sub(varint_len.saturating_add(TAG_AND_LARGEST_SEQ))? as u64;
            let len = room.min(most);
            (len >= least).then(|| usize::try_from(len).unwrap_or(usize::MAX))
        })
        .max()
        .unwrap_or(0)
}

/// An application payload, encoded once, with room in front of it for a `DATA` header.
///
/// [`into_frame`](Payload::into_frame) writes the header in place, so a message costs one
/// allocation and no copy; [`header`](data_header) builds a separate header for sending the
/// same payload again (a replay) or to many peers.
#[derive(Debug)]
pub struct Payload {
    buf: BytesMut,
}

impl Payload {
    /// `value` encoded with bincode (standard configuration).
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Payload, EncodeError> {
        let mut buf = BytesMut::with_capacity(DATA_HEADER_MAX.saturating_add(64));
        buf.put_bytes(0, DATA_HEADER_MAX);
        let mut writer = buf.writer();
        bincode::serde::encode_into_std_write(value, &mut writer, standard())
            .map_err(|e| EncodeError::Serialize(e.to_string()))?;
        Ok(Payload {
            buf: writer.into_inner(),
        })
    }

    /// Raw bytes as a payload.
    pub fn from_bytes(bytes: &[u8]) -> Payload {
        let mut buf = BytesMut::with_capacity(DATA_HEADER_MAX.saturating_add(bytes.len()));
        buf.put_bytes(0, DATA_HEADER_MAX);
        buf.put_slice(bytes);
        Payload { buf }
    }

    /// The payload's length in bytes.
    pub fn len(&self) -> usize {
        self.buf.len().saturating_sub(DATA_HEADER_MAX)
    }

    /// The payload's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.buf.get(DATA_HEADER_MAX..).unwrap_or_default()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks the frame this payload makes fits `max_body`, for any sequence number.
    pub fn check_size(&self, max_body: usize) -> Result<(), EncodeError> {
        check_data_size(self.len(), max_body)
    }

    /// The payload alone, without the room for a header (to share between many frames).
    pub fn into_bytes(self) -> Bytes {
        let len = self.buf.len();
        self.buf.freeze().slice(DATA_HEADER_MAX.min(len)..)
    }

    /// The complete `DATA` frame with sequence number `seq`, and the payload (a view into the
    /// frame, to keep for a replay).
    pub fn into_frame(mut self, seq: u64, max_body: usize) -> Result<(Bytes, Bytes), EncodeError> {
        let header = DataHeader::new(seq, self.len(), max_body)?;
        let start = DATA_HEADER_MAX.saturating_sub(header.len);
        if let Some(slot) = self.buf.get_mut(start..DATA_HEADER_MAX) {
            slot.copy_from_slice(header.as_slice());
        }
        let frame = self.buf.freeze().slice(start..);
        let payload = frame.slice(header.len..);
        Ok((frame, payload))
    }
}

/// Checks that a `DATA` frame carrying `payload_len` bytes fits `max_body`, for any sequence
/// number.
pub fn check_data_size(payload_len: usize, max_body: usize) -> Result<(), EncodeError> {
    DataHeader::new(u64::MAX, payload_len, max_body).map(|_| ())
}

/// The header of a `DATA` frame carrying `payload_len` bytes with sequence number `seq`; the
/// payload follows it on the wire.
pub fn data_header(
    seq: u64,
    payload_len: usize,
    max_body: usize,
) -> Result<DataHeader, EncodeError> {
    DataHeader::new(seq, payload_len, max_body)
}

/// A whole `DATA` frame (tests, tools; the send path uses [`Payload`]).
pub fn encode_data(seq: u64, payload: &[u8], max_body: usize) -> Result<Bytes, EncodeError> {
    Payload::from_bytes(payload)
        .into_frame(seq, max_body)
        .map(|(frame, _)| frame)
}

/// Decodes an application payload (the bytes of a `DATA` message) as `T`.
///
/// bincode runs with an allocation limit scaled to the payload: at most the smallest power of
/// four from 4 KiB up that covers 9 bytes per payload byte. bincode counts each integer at its
/// decoded size (8 bytes for a `u64`, even when its varint takes one byte), so 9 per byte covers
/// any payload of integers up to 64 bits, strings and byte buffers; a payload dense in small
/// `u128` values may exceed it and fail to decode. A hostile length inside the payload can
/// therefore make the decoder allocate at most about 36 times the payload size (plus 4 KiB)
/// before it fails. Trailing bytes are an error.
///
/// Types with sequences of zero-sized elements (`Vec<()>`, a `Vec` of a field-less struct) must
/// not be decoded from untrusted input: bincode would loop over a hostile length without
/// consuming input.
pub fn decode_data_value<T: DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    /// Decodes under the first limit (powers of four from 4 KiB) that covers `budget`.
    macro_rules! decode_within {
        ($budget:expr, $payload:expr, $($limit:expr),+) => {{
            let budget: usize = $budget;
            $(
                if budget <= $limit {
                    bincode::serde::decode_from_slice($payload, standard().with_limit::<{ $limit }>())
                } else
            )+
            {
                Err(bincode::error::DecodeError::LimitExceeded)
            }
        }};
    }
    const KIB: usize = 1024;
    let (value, used) = decode_within!(
        payload.len().saturating_mul(9),
        payload,
        4 * KIB,
        16 * KIB,
        64 * KIB,
        256 * KIB,
        1024 * KIB,
        4096 * KIB,
        16384 * KIB,
        65536 * KIB,
        262144 * KIB,
        1048576 * KIB
    )
    .map_err(|e: bincode::error::DecodeError| DecodeError::malformed("payload", e))?;
    if used != payload.len() {
        return Err(DecodeError::Malformed {
            what: "payload",
            detail: format!("{} trailing bytes", payload.len().saturating_sub(used)),
        });
    }
    Ok(value)
}

/// The prefix, tag, varint sequence number and varint length of a `DATA` frame, held inline
/// (at most [`DATA_HEADER_MAX`] bytes; it reads as its bytes): whoever sends the frame copies
/// it out, so that building it allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHeader {
    bytes: [u8; DATA_HEADER_MAX],
    len: usize,
}

impl DataHeader {
    fn new(seq: u64, payload_len: usize, max_body: usize) -> Result<Self, EncodeError> {
        let mut bytes = [0u8; DATA_HEADER_MAX];
        let (mut seq_varint, mut len_varint) = ([0u8; 9], [0u8; 9]);
        let seq_len = write_varint(seq, &mut seq_varint);
        let len_len = write_varint(payload_len as u64, &mut len_varint);
        let body_len = payload_len
            .saturating_add(1)
            .saturating_add(seq_len)
            .saturating_add(len_len);
        let max = max_body.min(MAX_FRAME_LIMIT);
        if body_len > max {
            return Err(EncodeError::TooLarge { len: body_len, max });
        }
        let prefix =
            u32::try_from(body_len).map_err(|_| EncodeError::TooLarge { len: body_len, max })?;
        let mut out = &mut bytes[..];
        out.put_u32(prefix);
        out.put_u8(Message::DATA_TAG);
        out.put_slice(seq_varint.get(..seq_len).unwrap_or_default());
        out.put_slice(len_varint.get(..len_len).unwrap_or_default());
        Ok(DataHeader {
            bytes,
            len: LENGTH_PREFIX_LEN
                .saturating_add(1)
                .saturating_add(seq_len)
                .saturating_add(len_len),
        })
    }

    /// The header's bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

impl std::ops::Deref for DataHeader {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

/// Writes `value` in bincode's variable-length integer encoding; returns the bytes used.
///
/// `< 251`: one byte. Otherwise a marker byte then the value little-endian: `251` + 2 bytes,
/// `252` + 4 bytes, `253` + 8 bytes. (Specified in PROTOCOL.md §5.1.)
pub(crate) fn write_varint(value: u64, out: &mut [u8; 9]) -> usize {
    let mut w = &mut out[..];
    if value < 251 {
        w.put_u8(value as u8);
        1
    } else if let Ok(v) = u16::try_from(value) {
        w.put_u8(251);
        w.put_u16_le(v);
        3
    } else if let Ok(v) = u32::try_from(value) {
        w.put_u8(252);
        w.put_u32_le(v);
        5
    } else {
        w.put_u8(253);
        w.put_u64_le(value);
        9
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::message::{PlayerId, Token};

    fn all_messages() -> Vec<Message> {
        vec![
            Message::ConnInit {
                max_main_frame: 65536,
                max_feed_frame: 65536,
                credentials: Bytes::from_static(b"ticket"),
            },
            Message::ConnInitReply {
                player_id: PlayerId(300),
                token_a: Token([7; 16]),
            },
            Message::FeedInit {
                player_id: PlayerId(u64::MAX),
                token_a: Token([0; 16]),
            },
            Message::FeedInitReply {
                token_b: Token([0xff; 16]),
            },
            Message::FinalAuth {
                token_b: Token([1; 16]),
            },
            Message::ConnOk {
                max_main_frame: 1,
                max_feed_frame: u32::MAX,
                credential: Token([0x42; 16]),
                main_next: 0,
                feed_next: 1 << 40,
            },
            conn_failed(Reason::ServerFull, "server full", None),
            conn_failed(
                Reason::Application(0x1234),
                "",
                Some(Duration::from_secs(60)),
            ),
            Message::Data {
                seq: 0,
                payload: Bytes::from_static(&[1, 2, 3]),
            },
            Message::Data {
                seq: u64::MAX,
                payload: Bytes::from(vec![9; 70_000]),
            },
            Message::Ack { next: 251 },
            Message::Resume {
                player_id: PlayerId(7),
                proof: Token([3; 16]),
                max_main_frame: 65536,
                max_feed_frame: 1024,
                main_next: 12,
                feed_next: 100_000,
            },
            Message::Gap { next: 65536 },
        ]
    }

    fn one_frame(frame: Bytes) -> Message {
        let mut buf = BytesMut::from(&frame[..]);
        let body = decode_frame(&mut buf, MAX_FRAME_LIMIT).unwrap().unwrap();
        assert!(buf.is_empty());
        decode_message(body).unwrap()
    }

    #[test]
    fn every_message_round_trips() {
        for message in all_messages() {
            let frame = encode_message(&message).unwrap();
            assert_eq!(one_frame(frame), message);
        }
    }

    #[test]
    fn data_fast_paths_match_the_generic_encoding() {
        for (len, seq) in [
            (0usize, 0u64),
            (1, 250),
            (250, 251),
            (251, 1 << 20),
            (65535, 3),
            (65536, u64::MAX),
            (70_000, 9),
        ] {
            let payload = vec![0x5a; len];
            let generic = encode_message(&Message::Data {
                seq,
                payload: Bytes::from(payload.clone()),
            })
            .unwrap();
            assert_eq!(
                encode_data(seq, &payload, MAX_FRAME_LIMIT).unwrap(),
                generic
            );
            let (frame, kept) = Payload::from_bytes(&payload)
                .into_frame(seq, MAX_FRAME_LIMIT)
                .unwrap();
            assert_eq!((frame.clone(), &kept[..]), (generic.clone(), &payload[..]));
            let header = data_header(seq, payload.len(), MAX_FRAME_LIMIT).unwrap();
            assert_eq!(
                [&header[..], &kept[..]].concat(),
                &generic[..],
                "separate header"
            );
            let typed_payload = bincode::serde::encode_to_vec(&payload, standard()).unwrap();
            let (typed, _) = Payload::encode(&payload)
                .unwrap()
                .into_frame(seq, MAX_FRAME_LIMIT)
                .unwrap();
            let expected = encode_message(&Message::Data {
                seq,
                payload: Bytes::from(typed_payload),
            })
            .unwrap();
            assert_eq!(typed, expected, "payload length {len}");
        }
    }

    #[test]
    fn typed_values_round_trip_through_data_frames() {
        #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
        struct Snapshot {
            tick: u64,
            positions: Vec<(f32, f32)>,
            name: String,
        }
        let value = Snapshot {
            tick: 42,
            positions: vec![(1.0, -2.5); 10],
            name: "arena".into(),
        };
        let (frame, _) = Payload::encode(&value)
            .unwrap()
            .into_frame(5, MAX_FRAME_LIMIT)
            .unwrap();
        let Message::Data { seq: 5, payload } = one_frame(frame) else {
            panic!("not DATA 5")
        };
        assert_eq!(decode_data_value::<Snapshot>(&payload).unwrap(), value);
    }

    #[test]
    fn frames_arrive_byte_by_byte() {
        let messages = all_messages();
        let mut wire = BytesMut::new();
        for m in &messages {
            wire.extend_from_slice(&encode_message(m).unwrap());
        }
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for byte in wire {
            buf.put_u8(byte);
            while let Some(body) = decode_frame(&mut buf, MAX_FRAME_LIMIT).unwrap() {
                decoded.push(decode_message(body).unwrap());
            }
        }
        assert_eq!(decoded, messages);
    }

    #[test]
    fn an_oversize_length_is_refused_from_the_prefix_alone() {
        let mut buf = BytesMut::from(&[0x00, 0x01, 0x00, 0x01][..]);
        assert_eq!(
            decode_frame(&mut buf, 65536),
            Err(DecodeError::FrameTooLarge {
                len: 65537,
                max: 65536
            })
        );
        let mut hostile = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            decode_frame(&mut hostile, MAX_FRAME_LIMIT),
            Err(DecodeError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn truncated_and_empty_input_is_refused_or_waits() {
        let frame = encode_message(&all_messages()[0]).unwrap();
        for cut in 0..frame.len() {
            let mut buf = BytesMut::from(&frame[..cut]);
            assert_eq!(decode_frame(&mut buf, 4096), Ok(None), "cut at {cut}");
        }
        let mut empty = BytesMut::from(&[0, 0, 0, 0][..]);
        assert_eq!(decode_frame(&mut empty, 4096), Err(DecodeError::EmptyFrame));
        for message in all_messages() {
            let frame = encode_message(&message).unwrap();
            let body = frame.slice(LENGTH_PREFIX_LEN..);
            for cut in 0..body.len() {
                assert!(
                    decode_message(body.slice(..cut)).is_err(),
                    "{} cut at {cut}",
                    message.name()
                );
            }
        }
    }

    #[test]
    fn unknown_tags_and_trailing_bytes_are_refused() {
        assert_eq!(
            decode_message(Bytes::from_static(&[11])),
            Err(DecodeError::UnknownTag(11))
        );
        assert_eq!(
            decode_message(Bytes::from_static(&[250])),
            Err(DecodeError::UnknownTag(250))
        );
        let mut body = encode_message(&Message::FinalAuth {
            token_b: Token([1; 16]),
        })
        .unwrap()
        .slice(LENGTH_PREFIX_LEN..)
        .to_vec();
        body.push(0);
        assert_eq!(
            decode_message(Bytes::from(body)).unwrap_err().reason(),
            Reason::MalformedMessage
        );
    }

    #[test]
    fn hostile_lengths_inside_a_body_do_not_allocate() {
        // CONN_INIT whose credentials claim 2^64-1 bytes; CONN_FAILED whose text claims 4 GiB;
        // DATA whose payload claims more than the frame holds; a payload whose string claims
        // 1 TiB. Each must fail fast, not abort on allocation.
        let bodies: [&[u8]; 4] = [
            &[0, 0, 0, 253, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[6, 1, 252, 0xff, 0xff, 0xff, 0xff],
            &[7, 0, 253, 0, 0, 0, 0, 0, 1, 0, 0],
            &[6, 1, 253, 0, 0, 0, 0, 0, 1, 0, 0],
        ];
        for body in bodies {
            assert_eq!(
                decode_message(Bytes::copy_from_slice(body))
                    .unwrap_err()
                    .reason(),
                Reason::MalformedMessage,
                "{body:?}"
            );
        }
        let hostile_payload = [253u8, 0, 0, 0, 0, 0, 1, 0, 0];
        assert!(decode_data_value::<String>(&hostile_payload).is_err());
        assert!(decode_data_value::<Vec<u8>>(&hostile_payload).is_err());
        assert!(decode_data_value::<Vec<Vec<u64>>>(&hostile_payload).is_err());
    }

    #[test]
    fn payloads_dense_in_small_integers_fit_the_decode_budget() {
        // One byte each on the wire, eight bytes each in bincode's accounting.
        for n in [1usize, 100, 10_000, 200_000] {
            let values: Vec<u64> = (0..n).map(|i| (i % 200) as u64).collect();
            let payload = bincode::serde::encode_to_vec(&values, standard()).unwrap();
            assert_eq!(decode_data_value::<Vec<u64>>(&payload).unwrap(), values);
        }
        let strings: Vec<String> = (0..1000).map(|i| format!("player {i}")).collect();
        let payload = bincode::serde::encode_to_vec(&strings, standard()).unwrap();
        assert_eq!(decode_data_value::<Vec<String>>(&payload).unwrap(), strings);
    }

    #[test]
    fn data_larger_than_the_peer_limit_is_refused_at_encode() {
        assert_eq!(
            encode_data(0, &[0; 100], 50),
            Err(EncodeError::TooLarge { len: 103, max: 50 })
        );
        assert!(matches!(
            Payload::encode(&vec![0u8; 100]).unwrap().check_size(50),
            Err(EncodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn max_data_payload_is_exactly_the_largest_payload_that_fits() {
        for max_body in [
            256usize,
            261,
            262,
            263,
            264,
            265,
            65536,
            65540,
            16 * 1024 * 1024,
        ] {
            let fits = max_data_payload(max_body);
            let with_largest_seq = |len: usize| encode_data(u64::MAX, &vec![0; len], max_body);
            assert!(with_largest_seq(fits).is_ok(), "{max_body}");
            assert!(with_largest_seq(fits + 1).is_err(), "{max_body}");
            assert!(
                Payload::from_bytes(&vec![0; fits])
                    .check_size(max_body)
                    .is_ok()
            );
        }
        assert_eq!(max_data_payload(0), 0);
    }

    #[test]
    fn failure_text_is_cut_at_a_character_boundary() {
        let long = "é".repeat(200);
        let Message::ConnFailed { message, .. } = conn_failed(Reason::AuthRefused, &long, None)
        else {
            unreachable!()
        };
        assert_eq!(message.len(), MAX_FAILURE_MESSAGE);
        assert!(message.chars().all(|c| c == 'é'));
    }
}
