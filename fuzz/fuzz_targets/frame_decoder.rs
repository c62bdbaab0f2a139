//! `codec::decode_frame` on arbitrary bytes, fed in arbitrary chunks, with an arbitrary limit.
//!
//! Checks: no panic; every body returned is 1..=limit bytes and is exactly the bytes that follow
//! its prefix in the stream; the frames and the final error (or leftover bytes) do not depend on
//! how the stream was cut into chunks; the result matches a straightforward reference decoder.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use quicfeed::protocol::codec::{DecodeError, decode_frame, peek_frame_len};

/// How a stream ends up being read.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    frames: Vec<Bytes>,
    /// The error that stopped the reader, if any.
    error: Option<DecodeError>,
    /// Bytes left unread (no error): an incomplete frame.
    leftover: usize,
}

/// The limit: mostly small, so real frames fit and the boundaries are hit, sometimes huge.
fn limit(u: &mut Unstructured<'_>) -> arbitrary::Result<usize> {
    Ok(match u8::arbitrary(u)? % 4 {
        0 => usize::from(u8::arbitrary(u)?),
        1 => usize::from(u16::arbitrary(u)?),
        2 => usize::try_from(u32::arbitrary(u)?).unwrap_or(usize::MAX),
        _ => usize::MAX - usize::from(u8::arbitrary(u)?),
    })
}

/// Reads `data` in pieces of the given sizes (cycled; 0 means the rest), as a driver would:
/// append, then take every whole frame, stop at the first error.
fn read_chunked(data: &[u8], sizes: &[u8], limit: usize) -> Outcome {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    loop {
        let size = match sizes.get(i % sizes.len().max(1)) {
            Some(&s) if s > 0 => usize::from(s),
            _ => data.len() - pos,
        };
        i += 1;
        let end = (pos + size).min(data.len());
        buf.extend_from_slice(&data[pos..end]);
        pos = end;
        loop {
            let before = buf.len();
            let peeked = peek_frame_len(&buf, limit);
            match decode_frame(&mut buf, limit) {
                Ok(Some(body)) => {
                    assert!(!body.is_empty(), "an empty body was returned");
                    assert!(
                        body.len() <= limit,
                        "body of {} over limit {limit}",
                        body.len()
                    );
                    assert_eq!(peeked, Ok(Some(body.len())), "peek agrees with decode");
                    assert_eq!(
                        buf.len(),
                        before - 4 - body.len(),
                        "exactly one frame taken"
                    );
                    frames.push(body);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "nothing consumed while waiting");
                    if let Ok(Some(len)) = peeked {
                        assert!(before < len + 4, "a whole frame was left waiting");
                    } else {
                        assert_eq!(peeked, Ok(None));
                        assert!(before < 4, "a whole prefix was left waiting");
                    }
                    break;
                }
                Err(error) => {
                    assert_eq!(buf.len(), before, "nothing consumed on error");
                    assert_eq!(peeked, Err(error.clone()), "peek agrees with decode");
                    return Outcome {
                        frames,
                        error: Some(error),
                        leftover: 0,
                    };
                }
            }
        }
        if pos == data.len() {
            return Outcome {
                frames,
                error: None,
                leftover: buf.len(),
            };
        }
    }
}

/// The framing rules of PROTOCOL.md §4, written out directly.
fn reference(data: &[u8], limit: usize) -> Outcome {
    let mut frames = Vec::new();
    let mut pos = 0;
    while data.len() - pos >= 4 {
        let len = u32::from_be_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
        let error = if len > limit {
            Some(DecodeError::FrameTooLarge { len, max: limit })
        } else if len == 0 {
            Some(DecodeError::EmptyFrame)
        } else {
            None
        };
        if error.is_some() {
            return Outcome {
                frames,
                error,
                leftover: 0,
            };
        }
        if data.len() - pos - 4 < len {
            break;
        }
        frames.push(Bytes::copy_from_slice(&data[pos + 4..pos + 4 + len]));
        pos += 4 + len;
    }
    Outcome {
        frames,
        error: None,
        leftover: data.len() - pos,
    }
}

fuzz_target!(|input: &[u8]| {
    let mut u = Unstructured::new(input);
    let Ok(limit) = limit(&mut u) else { return };
    let Ok(sizes) = Vec::<u8>::arbitrary(&mut u) else {
        return;
    };
    let sizes: Vec<u8> = sizes.into_iter().take(64).collect();
    let data = u.take_rest();

    let expected = reference(data, limit);
    let whole = read_chunked(data, &[], limit);
    assert_eq!(whole, expected, "all at once vs reference");
    let chunked = read_chunked(data, &sizes, limit);
    assert_eq!(chunked, expected, "chunks {sizes:?} vs reference");
    if data.len() <= 512 {
        let bytewise = read_chunked(data, &[1], limit);
        assert_eq!(bytewise, expected, "byte by byte vs reference");
    }
});
