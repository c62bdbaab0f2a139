//! Proves that `PROTOCOL.md` and the implementation agree byte for byte.
//!
//! The document's `vectors` block lists complete frames (length prefix included) and the two
//! stream declaration bytes. For every vector this test builds the message its name stands for,
//! checks that the real encoder produces exactly those bytes and that the real decoder turns
//! them back into the same message (`DATA` vectors also through the send path's encoders); it
//! checks that every message tag is covered and that the declaration bytes are the ones the code
//! writes. It also checks the document's `reasons` block against [`Reason::from_code`], its
//! resume-proof blocks (the TLS exporter's inputs, §7.2, and the WebTransport proof, §14.5)
//! against the code that computes them, and the framing (§4), varint decoding (§5.1) and `DATA`
//! size (§5.5.8) rules the document states against the real decoder and encoder.

use std::collections::BTreeSet;

use bytes::{Bytes, BytesMut};
use quicfeed::protocol::codec::{self, HANDSHAKE_FRAME_LIMIT, MAX_FRAME_LIMIT, Payload};
use quicfeed::protocol::{ChannelKind, DecodeError, Message, PlayerId, Reason, Token};

const DOC: &str = include_str!("../PROTOCOL.md");

/// Token A of the vectors: `a0 a1 … af`.
const TOKEN_A: Token = Token([
    0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf,
]);

/// Token B of the vectors: `b0 b1 … bf`.
const TOKEN_B: Token = Token([
    0xb0, 0xb1, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xbb, 0xbc, 0xbd, 0xbe, 0xbf,
]);

/// The resume credential of the vectors' first `CONN_OK` (and of `resume`): `c0 c1 … cf`.
const CREDENTIAL: Token = Token([
    0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xcb, 0xcc, 0xcd, 0xce, 0xcf,
]);

/// The credential of the `CONN_OK` that answers the `resume` vector: `d0 d1 … df`.
const NEXT_CREDENTIAL: Token = Token([
    0xd0, 0xd1, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf,
]);

/// The value whose bincode encoding is the payload of the `data_typed_u64_str` vector.
fn typed_value() -> (u64, &'static str) {
    (1000, "hi")
}

/// The message a vector name stands for, or `None` for a name this test does not know.
fn message_for(name: &str) -> Option<Message> {
    let message = match name {
        "conn_init_empty" => Message::ConnInit {
            max_main_frame: 65536,
            max_feed_frame: 65536,
            credentials: Bytes::new(),
        },
        "conn_init_credentials" => Message::ConnInit {
            max_main_frame: 1000,
            max_feed_frame: 65536,
            credentials: Bytes::from_static(b"ticket-42"),
        },
        "conn_init_reply_small_id" => Message::ConnInitReply {
            player_id: PlayerId(1),
            token_a: TOKEN_A,
        },
        "conn_init_reply_id_300" => Message::ConnInitReply {
            player_id: PlayerId(300),
            token_a: TOKEN_A,
        },
        "conn_init_reply_id_2pow32" => Message::ConnInitReply {
            player_id: PlayerId(1 << 32),
            token_a: TOKEN_A,
        },
        "feed_init" => Message::FeedInit {
            player_id: PlayerId(1),
            token_a: TOKEN_A,
        },
        "feed_init_id_300" => Message::FeedInit {
            player_id: PlayerId(300),
            token_a: TOKEN_A,
        },
        "feed_init_reply" => Message::FeedInitReply { token_b: TOKEN_B },
        "final_auth" => Message::FinalAuth { token_b: TOKEN_B },
        "conn_ok" => Message::ConnOk {
            max_main_frame: 65536,
            max_feed_frame: 65536,
            credential: CREDENTIAL,
            main_next: 0,
            feed_next: 0,
        },
        "conn_ok_mixed_limits" => Message::ConnOk {
            max_main_frame: 256,
            max_feed_frame: 16 * 1024 * 1024,
            credential: CREDENTIAL,
            main_next: 0,
            feed_next: 0,
        },
        "conn_ok_resumed" => Message::ConnOk {
            max_main_frame: 65536,
            max_feed_frame: 65536,
            credential: NEXT_CREDENTIAL,
            main_next: 70000,
            feed_next: 0,
        },
        "conn_failed_server_full" => Message::ConnFailed {
            reason: Reason::ServerFull,
            message: "server full".to_owned(),
            retry_after_ms: Some(2000),
        },
        "conn_failed_empty_message" => Message::ConnFailed {
            reason: Reason::InvalidToken,
            message: String::new(),
            retry_after_ms: None,
        },
        "conn_failed_application" => Message::ConnFailed {
            reason: Reason::Application(0x1234),
            message: "banned".to_owned(),
            retry_after_ms: Some(3_600_000),
        },
        "conn_failed_unknown_session" => Message::ConnFailed {
            reason: Reason::UnknownSession,
            message: "unknown session".to_owned(),
            retry_after_ms: None,
        },
        "data_empty" => data(0, &[]),
        "data_short" => data(0, b"hello"),
        "data_251_zero_bytes" => data(0, &[0u8; 251]),
        "data_typed_u64_str" => data(1, &[0xfb, 0xe8, 0x03, 0x02, b'h', b'i']),
        "data_seq_300" => data(300, b"hello"),
        "data_seq_2pow32" => data(1 << 32, b"hi"),
        "ack" => Message::Ack { next: 32 },
        "ack_300" => Message::Ack { next: 300 },
        "resume" => Message::Resume {
            player_id: PlayerId(1),
            proof: CREDENTIAL,
            max_main_frame: 65536,
            max_feed_frame: 65536,
            main_next: 300,
            feed_next: 12,
        },
        "gap" => Message::Gap { next: 1000 },
        _ => return None,
    };
    Some(message)
}

/// A `DATA` message.
fn data(seq: u64, payload: &[u8]) -> Message {
    Message::Data {
        seq,
        payload: Bytes::copy_from_slice(payload),
    }
}

/// The library reason a `reasons` line names, or `None` for an unknown name.
fn reason_named(name: &str) -> Option<Reason> {
    let reason = match name {
        "NORMAL" => Reason::Normal,
        "UNEXPECTED_MESSAGE" => Reason::UnexpectedMessage,
        "MALFORMED_MESSAGE" => Reason::MalformedMessage,
        "UNKNOWN_MESSAGE" => Reason::UnknownMessage,
        "FRAME_TOO_LARGE" => Reason::FrameTooLarge,
        "INVALID_STREAM" => Reason::InvalidStream,
        "INVALID_TOKEN" => Reason::InvalidToken,
        "TOKEN_EXPIRED" => Reason::TokenExpired,
        "TOKEN_REUSED" => Reason::TokenReused,
        "PLAYER_MISMATCH" => Reason::PlayerMismatch,
        "HANDSHAKE_TIMEOUT" => Reason::HandshakeTimeout,
        "AUTH_REFUSED" => Reason::AuthRefused,
        "SERVER_FULL" => Reason::ServerFull,
        "PLAYER_ID_IN_USE" => Reason::PlayerIdInUse,
        "SERVER_SHUTDOWN" => Reason::ServerShutdown,
        "INTERNAL_ERROR" => Reason::InternalError,
        "SUPERSEDED" => Reason::Superseded,
        "UNKNOWN_SESSION" => Reason::UnknownSession,
        "DEAD_PATH" => Reason::DeadPath,
        "SESSION_EXPIRED" => Reason::SessionExpired,
        "SEQUENCE_ERROR" => Reason::SequenceError,
        "SERVER_BUSY" => Reason::ServerBusy,
        "ADDRESS_FULL" => Reason::AddressFull,
        _ => return None,
    };
    Some(reason)
}

/// The lines of the one fenced code block whose info string is exactly `info`.
fn fenced_block(info: &str) -> Vec<&'static str> {
    let opening = format!("```{info}");
    let mut blocks = Vec::new();
    let mut lines = DOC.lines();
    while let Some(line) = lines.next() {
        if line.trim_end() == opening {
            let body: Vec<&str> = lines
                .by_ref()
                .take_while(|l| !l.trim_start().starts_with("```"))
                .collect();
            blocks.push(body);
        }
    }
    assert_eq!(
        blocks.len(),
        1,
        "PROTOCOL.md must have exactly one `{info}` block"
    );
    blocks.pop().unwrap()
}

/// The block's `name: value` entries, skipping blank and `#` comment lines.
fn entries(info: &str) -> Vec<(&'static str, &'static str)> {
    fenced_block(info)
        .into_iter()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, value) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("not `name: hex`: {l:?}"));
            (name.trim(), value.trim())
        })
        .collect()
}

/// The block's `key: value` lines as a map, each key once, skipping blank and `#` comment lines.
fn key_values(info: &str) -> std::collections::BTreeMap<&'static str, &'static str> {
    let mut fields = std::collections::BTreeMap::new();
    for (key, value) in entries(info) {
        assert!(
            fields.insert(key, value).is_none(),
            "`{key}` twice in the `{info}` block"
        );
    }
    fields
}

/// Lowercase hex, no separators.
fn hex_decode(hex: &str) -> Vec<u8> {
    assert!(
        hex.len().is_multiple_of(2) && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "not lowercase hex with an even number of digits: {hex:?}"
    );
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// Splits exactly one frame off `bytes` and decodes it; nothing may be left over.
fn decode_one(bytes: &[u8]) -> Message {
    let mut buf = BytesMut::from(bytes);
    let body = codec::decode_frame(&mut buf, MAX_FRAME_LIMIT)
        .unwrap()
        .expect("a whole frame");
    assert!(buf.is_empty(), "bytes left after the frame");
    codec::decode_message(body).unwrap()
}

#[test]
fn every_vector_encodes_and_decodes_exactly() {
    let vectors = entries("vectors");
    assert!(!vectors.is_empty());
    let mut names = BTreeSet::new();
    for (name, hex) in vectors {
        assert!(names.insert(name), "vector {name} listed twice");
        let bytes = hex_decode(hex);
        match name {
            "decl_main" => assert_eq!(bytes, [ChannelKind::Main.tag()], "{name}"),
            "decl_feed" => assert_eq!(bytes, [ChannelKind::Feed.tag()], "{name}"),
            _ => {
                let message =
                    message_for(name).unwrap_or_else(|| panic!("unknown vector name {name}"));
                let encoded = codec::encode_message(&message).unwrap();
                assert_eq!(&encoded[..], &bytes[..], "{name}: encoding differs");
                assert_eq!(decode_one(&bytes), message, "{name}: decoding differs");
                if let Message::Data { seq, payload } = &message {
                    check_data_send_paths(name, *seq, payload, &bytes);
                } else {
                    // Every control message vector fits the handshake frame limit.
                    let mut buf = BytesMut::from(&bytes[..]);
                    assert!(
                        codec::decode_frame(&mut buf, HANDSHAKE_FRAME_LIMIT)
                            .unwrap()
                            .is_some(),
                        "{name}: larger than the handshake frame limit"
                    );
                }
            }
        }
    }
}

/// The send path builds `DATA` frames without the generic encoder: a whole frame, a payload
/// encoded once with its header written in front, or a separate header for a replay. Each must
/// give the vector's bytes.
fn check_data_send_paths(name: &str, seq: u64, payload: &[u8], bytes: &[u8]) {
    let whole = codec::encode_data(seq, payload, MAX_FRAME_LIMIT).unwrap();
    assert_eq!(&whole[..], bytes, "{name}: encode_data differs");
    let (frame, kept) = Payload::from_bytes(payload)
        .into_frame(seq, MAX_FRAME_LIMIT)
        .unwrap();
    assert_eq!(&frame[..], bytes, "{name}: Payload::from_bytes differs");
    assert_eq!(&kept[..], payload, "{name}: the kept payload differs");
    let header = codec::data_header(seq, payload.len(), MAX_FRAME_LIMIT).unwrap();
    assert_eq!(
        [&header[..], payload].concat(),
        bytes,
        "{name}: data_header differs"
    );
    if name == "data_typed_u64_str" {
        let (typed, _) = Payload::encode(&typed_value())
            .unwrap()
            .into_frame(seq, MAX_FRAME_LIMIT)
            .unwrap();
        assert_eq!(&typed[..], bytes, "{name}: Payload::encode differs");
    }
}

#[test]
fn every_message_tag_and_both_declarations_are_covered() {
    let mut tags = BTreeSet::new();
    let mut declarations = BTreeSet::new();
    for (name, hex) in entries("vectors") {
        let bytes = hex_decode(hex);
        match name {
            "decl_main" | "decl_feed" => {
                let channel = ChannelKind::from_tag(bytes[0]).expect("a channel");
                declarations.insert(channel.name());
            }
            _ => {
                tags.insert(decode_one(&bytes).tag());
            }
        }
    }
    assert_eq!(Message::TAG_COUNT, 11, "the document defines tags 0..=10");
    assert_eq!(
        tags,
        (0..=10).collect::<BTreeSet<u8>>(),
        "every message tag 0..=10 needs a vector"
    );
    assert_eq!(declarations, BTreeSet::from(["main", "feed"]));
}

#[test]
fn reason_table_matches_the_code() {
    let mut codes = BTreeSet::new();
    for line in fenced_block("reasons") {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(code), Some(name), None) = (words.next(), words.next(), words.next()) else {
            panic!("not `0xNNNN NAME`: {line:?}");
        };
        let digits = code
            .strip_prefix("0x")
            .unwrap_or_else(|| panic!("code without 0x: {line:?}"));
        assert_eq!(digits.len(), 4, "{line:?}");
        let code = u16::from_str_radix(digits, 16).unwrap();
        let reason = reason_named(name).unwrap_or_else(|| panic!("unknown reason name {name}"));
        assert_eq!(Reason::from_code(code), reason, "{line:?}");
        assert_eq!(reason.code(), code, "{line:?}");
        assert!(codes.insert(code), "code 0x{code:04x} listed twice");
    }
    assert_eq!(
        codes,
        (0x0000..=0x0016).collect::<BTreeSet<u16>>(),
        "every library code 0x0000..=0x0016, and only those"
    );
    // The ranges the document describes around the table.
    assert_eq!(Reason::from_code(0x0017), Reason::Unknown(0x0017));
    assert_eq!(Reason::from_code(0x0fff), Reason::Unknown(0x0fff));
    assert_eq!(Reason::from_code(0x1000), Reason::Application(0x1000));
    assert_eq!(Reason::from_code(0xffff), Reason::Application(0xffff));
}

/// Decodes a frame body and returns the message or the reason it is refused with.
fn decode_body(body: &[u8]) -> Result<Message, Reason> {
    codec::decode_message(Bytes::copy_from_slice(body)).map_err(|e| e.reason())
}

fn with_token(head: &[u8], token: Token) -> Vec<u8> {
    let mut body = head.to_vec();
    body.extend_from_slice(&token.0);
    body
}

#[test]
fn decoders_follow_the_varint_rules_of_section_5_1() {
    use Reason::{MalformedMessage, UnknownMessage};

    // Longer-than-necessary forms are accepted, up to the width of the field's type.
    assert_eq!(
        decode_body(&with_token(&[0xfb, 0x04, 0x00], TOKEN_B)),
        Ok(Message::FinalAuth { token_b: TOKEN_B }),
        "tag 4 as 251 + u16"
    );
    assert_eq!(
        decode_body(&[0x06, 0xfb, 0x0c, 0x00, 0x00, 0x00]),
        Ok(Message::ConnFailed {
            reason: Reason::ServerFull,
            message: String::new(),
            retry_after_ms: None,
        }),
        "u16 reason as 251 + u16"
    );
    let mut conn_ok = with_token(
        &[0x05, 0xfc, 0x00, 0x01, 0x00, 0x00, 0xfb, 0x00, 0x01],
        CREDENTIAL,
    );
    conn_ok.extend_from_slice(&[0xfb, 0x05, 0x00, 0xfd, 0x07, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        decode_body(&conn_ok),
        Ok(Message::ConnOk {
            max_main_frame: 256,
            max_feed_frame: 256,
            credential: CREDENTIAL,
            main_next: 5,
            feed_next: 7
        }),
        "u32 fields as 252 + u32 and 251 + u16, u64 fields as 251 + u16 and 253 + u64"
    );
    let mut resume = with_token(&[0x09, 0xfc, 0x01, 0x00, 0x00, 0x00], CREDENTIAL);
    resume.extend_from_slice(&[
        0xfb, 0x00, 0x01, 0xfb, 0x00, 0x01, 0xfc, 0x2c, 0x01, 0, 0, 0x00,
    ]);
    assert_eq!(
        decode_body(&resume),
        Ok(Message::Resume {
            player_id: PlayerId(1),
            proof: CREDENTIAL,
            max_main_frame: 256,
            max_feed_frame: 256,
            main_next: 300,
            feed_next: 0
        }),
        "RESUME player ID as 252 + u32, next as 252 + u32"
    );
    assert_eq!(
        decode_body(&[0x08, 0xfd, 0x20, 0, 0, 0, 0, 0, 0, 0]),
        Ok(Message::Ack { next: 32 }),
        "ACK next as 253 + u64"
    );
    assert_eq!(
        decode_body(&[0x0a, 0xfb, 0xe8, 0x03]),
        Ok(Message::Gap { next: 1000 }),
        "GAP next as 251 + u16"
    );
    assert_eq!(
        decode_body(&with_token(
            &[0x02, 0xfd, 0x01, 0, 0, 0, 0, 0, 0, 0],
            TOKEN_A
        )),
        Ok(Message::FeedInit {
            player_id: PlayerId(1),
            token_a: TOKEN_A
        }),
        "u64 player ID as 253 + u64"
    );
    assert_eq!(
        decode_body(&[
            0x06, 0x0c, 0xfd, 0x02, 0, 0, 0, 0, 0, 0, 0, b'o', b'k', 0x00
        ]),
        Ok(Message::ConnFailed {
            reason: Reason::ServerFull,
            message: "ok".to_owned(),
            retry_after_ms: None,
        }),
        "string length as 253 + u64"
    );
    assert_eq!(
        decode_body(&[0x06, 0x0c, 0x00, 0x01, 0xfc, 0xa0, 0x86, 0x01, 0x00]),
        Ok(Message::ConnFailed {
            reason: Reason::ServerFull,
            message: String::new(),
            retry_after_ms: Some(100_000),
        }),
        "retry_after_ms as 252 + u32"
    );
    assert_eq!(
        decode_body(&[0x06, 0x0c, 0x00, 0x02, 0x00]),
        Err(MalformedMessage),
        "an option tag other than 0 or 1"
    );
    assert_eq!(
        decode_body(&[0x06, 0x0c, 0x00]),
        Err(MalformedMessage),
        "CONN_FAILED without its retry_after_ms field"
    );
    assert_eq!(
        decode_body(&[0x07, 0x00, 0xfb, 0x02, 0x00, b'h', b'i']),
        Ok(data(0, b"hi")),
        "DATA length as 251 + u16"
    );
    assert_eq!(
        decode_body(&[
            0xfb, 0x07, 0x00, 0xfc, 0x03, 0, 0, 0, 0xfd, 0x02, 0, 0, 0, 0, 0, 0, 0, b'h', b'i'
        ]),
        Ok(data(3, b"hi")),
        "DATA tag as 251 + u16, sequence number as 252 + u32, length as 253 + u64"
    );

    // A marker wider than the field's type, or a reserved marker, is malformed.
    assert_eq!(
        decode_body(&[0x06, 0xfc, 0x0c, 0, 0, 0, 0x00]),
        Err(MalformedMessage),
        "252 in a u16 field"
    );
    assert_eq!(
        decode_body(&[0x05, 0xfd, 0, 1, 0, 0, 0, 0, 0, 0, 0x00]),
        Err(MalformedMessage),
        "253 in a u32 field"
    );
    assert_eq!(
        decode_body(&with_token(
            &[0x01, 0xfe, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            TOKEN_A
        )),
        Err(MalformedMessage),
        "254 in a u64 field"
    );
    assert_eq!(
        decode_body(&[
            0x07, 0xfe, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00
        ]),
        Err(MalformedMessage),
        "254 in a DATA sequence number"
    );
    assert_eq!(
        decode_body(&with_token(&[0x01, 0xff], TOKEN_A)),
        Err(MalformedMessage),
        "255 anywhere"
    );

    // Tags: any u32 value of 11 or more is unknown; a tag that is not a u32 varint is malformed.
    assert_eq!(decode_body(&[0x0b]), Err(UnknownMessage));
    assert_eq!(decode_body(&[0xfa]), Err(UnknownMessage));
    assert_eq!(decode_body(&[0xfb, 0x0b, 0x00]), Err(UnknownMessage));
    assert_eq!(
        decode_body(&[0xfc, 0xff, 0xff, 0xff, 0xff]),
        Err(UnknownMessage)
    );
    assert_eq!(
        decode_body(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0]),
        Err(MalformedMessage)
    );
    assert_eq!(decode_body(&[0xff]), Err(MalformedMessage));
    assert_eq!(decode_body(&[0xfb, 0x04]), Err(MalformedMessage));
    // Tags 8, 9 and 10 are defined: alone, each is a truncated message, not an unknown one.
    for tag in [0x08, 0x09, 0x0a] {
        assert_eq!(decode_body(&[tag]), Err(MalformedMessage), "tag {tag}");
    }

    // A body is exactly one message.
    let mut trailing = with_token(&[0x04], TOKEN_B);
    trailing.push(0x00);
    assert_eq!(
        decode_body(&trailing),
        Err(MalformedMessage),
        "trailing byte"
    );
    assert_eq!(
        decode_body(&with_token(&[0x04], TOKEN_B)[..16]),
        Err(MalformedMessage),
        "truncated token"
    );
    assert_eq!(
        decode_body(&[0x07, 0x00, 0x03, b'h', b'i']),
        Err(MalformedMessage),
        "DATA shorter than its length"
    );
    assert_eq!(
        decode_body(&[0x07, 0x00, 0x01, b'h', b'i']),
        Err(MalformedMessage),
        "DATA longer than its length"
    );
    assert_eq!(
        decode_body(&[0x07, 0x05]),
        Err(MalformedMessage),
        "DATA without its length"
    );
    assert_eq!(
        decode_body(&[0x08, 0x01, 0x00]),
        Err(MalformedMessage),
        "ACK with a trailing byte"
    );
    assert_eq!(
        decode_body(&[0x06, 0x0c, 0x01, 0xff]),
        Err(MalformedMessage),
        "CONN_FAILED text that is not UTF-8"
    );
}

#[test]
fn the_length_prefix_is_checked_before_the_body_arrives() {
    // 4097 > 4096: refused from the four prefix bytes alone.
    let mut buf = BytesMut::from(&[0x00, 0x00, 0x10, 0x01][..]);
    let err = codec::decode_frame(&mut buf, HANDSHAKE_FRAME_LIMIT).unwrap_err();
    assert!(matches!(err, DecodeError::FrameTooLarge { len: 4097, .. }));
    assert_eq!(err.reason(), Reason::FrameTooLarge);
    // Exactly at the limit: waits for the body.
    let mut buf = BytesMut::from(&[0x00, 0x00, 0x10, 0x00][..]);
    assert_eq!(
        codec::decode_frame(&mut buf, HANDSHAKE_FRAME_LIMIT),
        Ok(None)
    );
    // An empty body is malformed.
    let mut buf = BytesMut::from(&[0x00, 0x00, 0x00, 0x00][..]);
    let err = codec::decode_frame(&mut buf, HANDSHAKE_FRAME_LIMIT).unwrap_err();
    assert_eq!(err.reason(), Reason::MalformedMessage);
    // No configuration accepts more than 16 MiB.
    assert_eq!(MAX_FRAME_LIMIT, 16 * 1024 * 1024);
    assert_eq!(HANDSHAKE_FRAME_LIMIT, 4096);
}

#[test]
fn data_size_rules_of_section_5_5_8() {
    // A DATA header is at most the prefix, the tag and two 9-byte varints.
    assert_eq!(codec::DATA_HEADER_MAX, 4 + 1 + 9 + 9);
    // The largest payload a sender accepts leaves room for a 9-byte sequence number, whatever
    // the message's own number is.
    assert_eq!(codec::max_data_payload(65536), 65523);
    assert_eq!(codec::max_data_payload(256), 245);
    assert_eq!(codec::max_data_payload(16 * 1024 * 1024), 16_777_201);
    for max in [256usize, 65536, 16 * 1024 * 1024] {
        let fits = codec::max_data_payload(max);
        assert!(codec::encode_data(u64::MAX, &vec![0; fits], max).is_ok());
        assert!(codec::encode_data(u64::MAX, &vec![0; fits + 1], max).is_err());
        // The reference sender refuses one byte more even with a small sequence number.
        assert!(
            Payload::from_bytes(&vec![0; fits + 1])
                .check_size(max)
                .is_err()
        );
    }
}

/// The `lane-vectors` block (§13.6): each datagram is exactly what the encoder writes for its
/// `seq`, `sent_ms` and payload, and decodes back to them.
#[test]
fn lane_vectors_match_the_encoder_and_decoder() {
    use quicfeed::protocol::lane::{decode_lane_datagram, encode_lane_datagram};
    let vectors = entries("lane-vectors");
    assert!(vectors.len() >= 4, "{vectors:?}");
    for (name, value) in vectors {
        let fields: Vec<&str> = value.split_whitespace().collect();
        let [seq, sent_ms, payload, datagram] = fields[..] else {
            panic!("{name}: not `seq sent_ms payload datagram`: {value:?}");
        };
        let seq: u64 = seq.parse().unwrap();
        let sent_ms: u64 = sent_ms.parse().unwrap();
        let payload = if payload == "-" {
            Vec::new()
        } else {
            hex_decode(payload)
        };
        let datagram = hex_decode(datagram);
        let encoded = encode_lane_datagram(seq, sent_ms, &payload);
        assert_eq!(&encoded[..], &datagram[..], "{name}: encoder");
        let decoded = decode_lane_datagram(Bytes::from(datagram)).unwrap();
        assert_eq!(
            (decoded.seq, decoded.sent_ms, &decoded.payload[..]),
            (seq, sent_ms, &payload[..]),
            "{name}: decoder"
        );
    }
}

/// The `ack-datagram-vectors` block (§11.3, §13.6): each acknowledgement datagram is exactly
/// what the encoder writes for its `main_next` and `feed_next`, and decodes back to them.
#[test]
fn acknowledgement_datagram_vectors_match_the_encoder_and_decoder() {
    use quicfeed::protocol::lane::{Datagram, decode_datagram, encode_ack_datagram};
    let vectors = entries("ack-datagram-vectors");
    assert!(vectors.len() >= 3, "{vectors:?}");
    for (name, value) in vectors {
        let fields: Vec<&str> = value.split_whitespace().collect();
        let [main_next, feed_next, datagram] = fields[..] else {
            panic!("{name}: not `main_next feed_next datagram`: {value:?}");
        };
        let main_next: u64 = main_next.parse().unwrap();
        let feed_next: u64 = feed_next.parse().unwrap();
        let datagram = hex_decode(datagram);
        let encoded = encode_ack_datagram(main_next, feed_next);
        assert_eq!(&encoded[..], &datagram[..], "{name}: encoder");
        assert_eq!(
            decode_datagram(Bytes::from(datagram)).unwrap(),
            Datagram::Ack {
                main_next,
                feed_next
            },
            "{name}: decoder"
        );
    }
}

/// The payload convention's examples (§5.5.8) are what the library's typed encoding writes.
#[test]
fn typed_payload_examples_match_the_encoder() {
    use quicfeed::protocol::codec::Payload;
    #[derive(serde::Serialize)]
    #[allow(dead_code)]
    enum Input {
        Jump,
        Move { dx: i8, dy: f32 },
    }
    let encode = |payload: Payload| payload.bytes().to_vec();
    assert_eq!(
        encode(Payload::encode(&(1000u64, "hi")).unwrap()),
        hex_decode("fbe803026869")
    );
    assert_eq!(
        encode(Payload::encode(&Input::Move { dx: -1, dy: 2.0 }).unwrap()),
        hex_decode("01ff00000040")
    );
    assert_eq!(
        encode(Payload::encode(&Some(-3i32)).unwrap()),
        hex_decode("0105")
    );
}

/// Proves: PROTOCOL.md §7.2's resume-proof block gives the exporter label and the context
/// layout the code uses (the credential, then the player ID as a big-endian u64), and the
/// proof's length.
#[test]
fn the_resume_proof_inputs_match_the_specification() {
    let fields = key_values("resume-proof");
    let label = hex_decode(fields["label"]);
    assert_eq!(label, quicfeed::protocol::RESUME_PROOF_LABEL);
    assert_eq!(label, b"EXPORTER-quicfeed-resume");
    let credential: [u8; 16] = hex_decode(fields["credential"]).try_into().unwrap();
    let player_id = PlayerId(fields["player_id"].parse().unwrap());
    let context = quicfeed::protocol::resume_proof_context(&Token(credential), player_id);
    assert_eq!(context.to_vec(), hex_decode(fields["context"]));
    assert_eq!(
        fields["length"].parse::<usize>().unwrap(),
        quicfeed::protocol::TOKEN_LEN
    );
}

/// Proves: PROTOCOL.md §14.5's block is what the code computes: the label is
/// [`WEBTRANSPORT_PROOF_LABEL`](quicfeed::protocol::WEBTRANSPORT_PROOF_LABEL), the message is
/// the label then the player ID as a big-endian u64, the proof is the first 16 bytes of
/// HMAC-SHA256 keyed with the credential over that message (computed here independently, and by
/// [`webtransport_resume_proof`](quicfeed::protocol::webtransport_resume_proof)), and it travels
/// as the `proof` field of `RESUME`, whose frame is exactly the block's.
#[test]
fn the_webtransport_resume_proof_matches_the_specification() {
    use quicfeed::protocol::{WEBTRANSPORT_PROOF_LABEL, webtransport_resume_proof};
    let fields = key_values("webtransport-resume-proof");
    let label = hex_decode(fields["label"]);
    assert_eq!(label, WEBTRANSPORT_PROOF_LABEL);
    assert_eq!(label, b"quicfeed-resume-webtransport");
    let credential = Token(hex_decode(fields["credential"]).try_into().unwrap());
    assert_eq!(
        credential, CREDENTIAL,
        "the vectors' credential, c0 c1 … cf"
    );
    let player_id = PlayerId(fields["player_id"].parse().unwrap());

    let message = hex_decode(fields["message"]);
    assert_eq!(
        message,
        [&label[..], &player_id.0.to_be_bytes()].concat(),
        "the label, then the player ID as a big-endian u64"
    );
    let proof = hex_decode(fields["proof"]);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &credential.0);
    let tag = ring::hmac::sign(&key, &message);
    assert_eq!(proof, tag.as_ref()[..16], "HMAC-SHA256 cut to 16 bytes");
    let computed = webtransport_resume_proof(&credential, player_id);
    assert_eq!(computed.0.to_vec(), proof, "webtransport_resume_proof");
    assert_ne!(computed, credential, "the credential itself is no proof");

    let resume = Message::Resume {
        player_id,
        proof: computed,
        max_main_frame: 65536,
        max_feed_frame: 65536,
        main_next: 0,
        feed_next: 0,
    };
    let frame = hex_decode(fields["resume"]);
    let encoded = codec::encode_message(&resume).unwrap();
    assert_eq!(&encoded[..], &frame[..], "the RESUME frame");
    assert_eq!(decode_one(&frame), resume);
    assert!(frame.len() - 4 <= HANDSHAKE_FRAME_LIMIT);
}
