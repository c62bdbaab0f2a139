//! `codec::decode_message` on arbitrary frame bodies.
//!
//! Checks: no panic; errors carry a message-level reason (never `FRAME_TOO_LARGE`); every
//! message that decodes re-encodes with `encode_message` into a frame no longer than the input
//! (decoders accept non-shortest varints, encoders write the shortest), which decodes to the same
//! message; the `DATA` fast path agrees with bincode's generic decoding of the same body.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use quicfeed::Reason;
use quicfeed::protocol::codec::{decode_frame, decode_message, encode_message};
use quicfeed::protocol::{MAX_FRAME_LIMIT, Message};

/// bincode's standard configuration, with an allocation limit far above any fuzz input (without
/// one, a hostile length makes bincode abort on allocation).
fn generic() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ 16 * 1024 * 1024 }>()
}

fuzz_target!(|input: &[u8]| {
    let body = Bytes::copy_from_slice(input);
    let message = match decode_message(body.clone()) {
        Ok(message) => message,
        Err(error) => {
            assert!(
                matches!(
                    error.reason(),
                    Reason::MalformedMessage | Reason::UnknownMessage
                ),
                "{error:?}"
            );
            if matches!(input.first(), Some(&7)) {
                // The generic decoder must refuse a DATA body the fast path refuses.
                let generic = bincode::serde::decode_from_slice::<Message, _>(input, generic());
                assert!(
                    !matches!(generic, Ok((_, used)) if used == input.len()),
                    "fast path refused a DATA body bincode accepts: {error}"
                );
            }
            return;
        }
    };
    let frame = encode_message(&message).expect("a decoded message encodes");
    let body_len = frame.len() - 4;
    assert!(
        body_len <= input.len(),
        "{} re-encodes to {body_len} bytes from {}",
        message.name(),
        input.len()
    );
    let mut buf = BytesMut::from(&frame[..]);
    let again = decode_frame(&mut buf, MAX_FRAME_LIMIT)
        .expect("frame")
        .expect("whole frame");
    assert!(buf.is_empty());
    assert_eq!(decode_message(again).expect("decodes again"), message);

    if let Message::Data { .. } = &message {
        let (generic, used) = bincode::serde::decode_from_slice::<Message, _>(input, generic())
            .expect("bincode decodes what the fast path decodes");
        assert_eq!(used, input.len());
        assert_eq!(generic, message, "fast path and bincode disagree");
    }
});
