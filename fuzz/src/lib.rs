//! Shared helpers of the quicfeed fuzz targets: a deterministic entropy source, a fixed clock
//! origin, and structured message builders that can reuse the tokens and player IDs a state
//! machine issued, so the fuzzer gets past token checks and reaches deep states.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use quicfeed::protocol::codec::{decode_frame, decode_message, encode_message};
use quicfeed::protocol::{
    Entropy, EntropyError, FrameLimits, HANDSHAKE_FRAME_LIMIT, Message, PlayerId, Reason,
    TOKEN_LEN, Token,
};

/// The origin of virtual time: one `Instant` per process, so runs are reproducible.
pub fn t0() -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

/// `t0` plus `ms` milliseconds.
pub fn at_ms(ms: u64) -> Instant {
    t0() + Duration::from_millis(ms)
}

/// Deterministic entropy: distinct 16-byte values from a counter, and a switch that makes the
/// next draw fail (to reach the `INTERNAL_ERROR` paths).
#[derive(Debug, Default)]
pub struct DetEntropy {
    counter: u64,
    /// The next `fill` fails (once).
    pub fail_next: bool,
    /// The bytes of the last successful draw of 16 bytes.
    pub last: Option<Token>,
}

impl Entropy for DetEntropy {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyError> {
        if std::mem::take(&mut self.fail_next) {
            return Err(EntropyError);
        }
        self.counter += 1;
        // splitmix64 of the counter, repeated: distinct for every draw, never all zero.
        let mut z = self.counter.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        for (i, b) in dest.iter_mut().enumerate() {
            *b = (z.rotate_left((i as u32 % 8) * 8) as u8) ^ (self.counter as u8);
        }
        if dest.len() == TOKEN_LEN {
            let mut t = [0u8; TOKEN_LEN];
            t.copy_from_slice(dest);
            self.last = Some(Token(t));
        }
        Ok(())
    }
}

/// Tokens and player IDs seen in a state machine's outputs, for the fuzzer to present again.
#[derive(Debug, Default)]
pub struct Pool {
    /// Tokens and credentials, in the order they were seen.
    pub tokens: Vec<Token>,
    /// Player IDs, in the order they were seen.
    pub ids: Vec<PlayerId>,
}

impl Pool {
    /// Remembers a token (bounded, so long runs stay cheap).
    pub fn token(&mut self, token: Token) {
        if self.tokens.len() < 64 && !self.tokens.contains(&token) {
            self.tokens.push(token);
        }
    }

    /// Remembers a player ID.
    pub fn id(&mut self, id: PlayerId) {
        if self.ids.len() < 64 && !self.ids.contains(&id) {
            self.ids.push(id);
        }
    }
}

/// A token: one the pool holds (newest first), one with a single bit flipped, or raw bytes.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum TokenPick {
    /// The pool's `n`-th newest token.
    Known(u8),
    /// A known token with one bit flipped: must never be accepted.
    Flipped(u8, u8),
    /// Any bytes.
    Raw([u8; TOKEN_LEN]),
}

impl TokenPick {
    /// The token this pick stands for.
    pub fn get(self, pool: &Pool) -> Token {
        let known = |n: u8| -> Option<Token> {
            let len = pool.tokens.len();
            (len > 0).then(|| pool.tokens[len - 1 - usize::from(n) % len])
        };
        match self {
            TokenPick::Known(n) => known(n).unwrap_or(Token([0; TOKEN_LEN])),
            TokenPick::Flipped(n, bit) => {
                let mut t = known(n).unwrap_or(Token([0; TOKEN_LEN]));
                t.0[usize::from(bit / 8) % TOKEN_LEN] ^= 1 << (bit % 8);
                t
            }
            TokenPick::Raw(bytes) => Token(bytes),
        }
    }
}

/// A player ID: one the pool holds, or any value.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum IdPick {
    /// The pool's `n`-th newest ID.
    Known(u8),
    /// Any ID.
    Raw(u64),
}

impl IdPick {
    /// The ID this pick stands for.
    pub fn get(self, pool: &Pool) -> PlayerId {
        match self {
            IdPick::Known(n) => {
                let len = pool.ids.len();
                if len == 0 {
                    PlayerId(1)
                } else {
                    pool.ids[len - 1 - usize::from(n) % len]
                }
            }
            IdPick::Raw(v) => PlayerId(v),
        }
    }
}

/// A frame limit as announced: mostly valid (at least 256), sometimes anything.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum LimitPick {
    /// 256 + the value.
    Valid(u16),
    /// Exactly the value (often below the minimum).
    Raw(u32),
    /// The largest value.
    Max,
}

impl LimitPick {
    /// The announced value.
    pub fn get(self) -> u32 {
        match self {
            LimitPick::Valid(v) => 256 + u32::from(v),
            LimitPick::Raw(v) => v,
            LimitPick::Max => u32::MAX,
        }
    }
}

/// Frame limits made of two [`LimitPick`]s.
pub fn limits(main: LimitPick, feed: LimitPick) -> FrameLimits {
    FrameLimits {
        main: main.get(),
        feed: feed.get(),
    }
}

/// A sequence number: small, a boundary, or anything.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum SeqPick {
    /// 0..=255.
    Small(u8),
    /// Around a varint boundary: 250, 251, 65535, 65536, 2^32-1, 2^32, u64::MAX, plus an
    /// offset.
    Boundary(u8, i8),
    /// Any value.
    Raw(u64),
}

impl SeqPick {
    /// The number.
    pub fn get(self) -> u64 {
        const B: [u64; 7] = [
            250,
            251,
            65_535,
            65_536,
            u32::MAX as u64,
            u32::MAX as u64 + 1,
            u64::MAX,
        ];
        match self {
            SeqPick::Small(v) => u64::from(v),
            SeqPick::Boundary(i, off) => {
                B[usize::from(i) % B.len()].saturating_add_signed(i64::from(off))
            }
            SeqPick::Raw(v) => v,
        }
    }
}

/// A channel.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chan {
    /// main.
    Main,
    /// feed.
    Feed,
}

impl Chan {
    /// As the library's type.
    pub fn kind(self) -> quicfeed::ChannelKind {
        match self {
            Chan::Main => quicfeed::ChannelKind::Main,
            Chan::Feed => quicfeed::ChannelKind::Feed,
        }
    }
}

/// Longest credentials a client sends (the reference client refuses more).
pub const MAX_CREDENTIALS: usize = 4064;

/// Any message, with tokens and IDs drawn through a [`Pool`].
#[derive(Arbitrary, Debug, Clone)]
pub enum MsgSpec {
    /// `CONN_INIT`.
    ConnInit {
        /// Announced main limit.
        main: LimitPick,
        /// Announced feed limit.
        feed: LimitPick,
        /// Credentials.
        credentials: Vec<u8>,
    },
    /// `CONN_INIT_REPLY`.
    ConnInitReply {
        /// Player ID.
        id: IdPick,
        /// Token A.
        token: TokenPick,
    },
    /// `FEED_INIT`.
    FeedInit {
        /// Player ID.
        id: IdPick,
        /// Token A.
        token: TokenPick,
    },
    /// `FEED_INIT_REPLY`.
    FeedInitReply {
        /// Token B.
        token: TokenPick,
    },
    /// `FINAL_AUTH`.
    FinalAuth {
        /// Token B.
        token: TokenPick,
    },
    /// `CONN_OK`.
    ConnOk {
        /// Announced main limit.
        main: LimitPick,
        /// Announced feed limit.
        feed: LimitPick,
        /// Credential.
        credential: TokenPick,
        /// main_next.
        main_next: SeqPick,
        /// feed_next.
        feed_next: SeqPick,
    },
    /// `CONN_FAILED`.
    ConnFailed {
        /// Reason code.
        reason: u16,
        /// Text.
        message: String,
        /// Hint of when to try again.
        retry_after_ms: Option<u32>,
    },
    /// `DATA`.
    Data {
        /// Sequence number.
        seq: SeqPick,
        /// Payload.
        payload: Vec<u8>,
    },
    /// `ACK`.
    Ack {
        /// next.
        next: SeqPick,
    },
    /// `RESUME`.
    Resume {
        /// Player ID.
        id: IdPick,
        /// Credential.
        credential: TokenPick,
        /// Announced main limit.
        main: LimitPick,
        /// Announced feed limit.
        feed: LimitPick,
        /// main_next.
        main_next: SeqPick,
        /// feed_next.
        feed_next: SeqPick,
    },
    /// `GAP`.
    Gap {
        /// next.
        next: SeqPick,
    },
}

impl MsgSpec {
    /// The message.
    pub fn build(&self, pool: &Pool) -> Message {
        match self {
            MsgSpec::ConnInit {
                main,
                feed,
                credentials,
            } => Message::ConnInit {
                max_main_frame: main.get(),
                max_feed_frame: feed.get(),
                credentials: Bytes::copy_from_slice(
                    &credentials[..credentials.len().min(MAX_CREDENTIALS)],
                ),
            },
            MsgSpec::ConnInitReply { id, token } => Message::ConnInitReply {
                player_id: id.get(pool),
                token_a: token.get(pool),
            },
            MsgSpec::FeedInit { id, token } => Message::FeedInit {
                player_id: id.get(pool),
                token_a: token.get(pool),
            },
            MsgSpec::FeedInitReply { token } => Message::FeedInitReply {
                token_b: token.get(pool),
            },
            MsgSpec::FinalAuth { token } => Message::FinalAuth {
                token_b: token.get(pool),
            },
            MsgSpec::ConnOk {
                main,
                feed,
                credential,
                main_next,
                feed_next,
            } => Message::ConnOk {
                max_main_frame: main.get(),
                max_feed_frame: feed.get(),
                credential: credential.get(pool),
                main_next: main_next.get(),
                feed_next: feed_next.get(),
            },
            MsgSpec::ConnFailed {
                reason,
                message,
                retry_after_ms,
            } => Message::ConnFailed {
                reason: Reason::from_code(*reason),
                message: message.clone(),
                retry_after_ms: *retry_after_ms,
            },
            MsgSpec::Data { seq, payload } => Message::Data {
                seq: seq.get(),
                payload: Bytes::copy_from_slice(payload),
            },
            MsgSpec::Ack { next } => Message::Ack { next: next.get() },
            MsgSpec::Resume {
                id,
                credential,
                main,
                feed,
                main_next,
                feed_next,
            } => Message::Resume {
                player_id: id.get(pool),
                proof: credential.get(pool),
                max_main_frame: main.get(),
                max_feed_frame: feed.get(),
                main_next: main_next.get(),
                feed_next: feed_next.get(),
            },
            MsgSpec::Gap { next } => Message::Gap { next: next.get() },
        }
    }
}

/// What a driver reading with `limit` makes of `message`: the decoded message, or the violation
/// it reports. Panics if the codec loses or alters anything.
pub fn through_wire(message: &Message, limit: usize) -> Result<Message, (Reason, String)> {
    let frame = encode_message(message).expect("every message encodes");
    let mut buf = BytesMut::from(&frame[..]);
    match decode_frame(&mut buf, limit) {
        Ok(Some(body)) => {
            assert!(buf.is_empty(), "one frame, nothing left");
            let decoded = decode_message(body).expect("an encoded message decodes");
            assert_eq!(&decoded, message, "the codec round-trips");
            Ok(decoded)
        }
        Ok(None) => panic!("a whole frame must decode"),
        Err(e) => Err((e.reason(), e.to_string())),
    }
}

/// Asserts a message an endpoint sends during its handshake fits the handshake frame limit and
/// survives the codec unchanged.
pub fn assert_sendable_in_handshake(message: &Message) {
    match through_wire(message, HANDSHAKE_FRAME_LIMIT) {
        Ok(_) => {}
        Err((reason, detail)) => {
            panic!(
                "{} does not fit a handshake frame: {reason} {detail}",
                message.name()
            )
        }
    }
}

/// Asserts the frame limits are a valid announcement (each at least 256).
pub fn assert_valid_limits(l: FrameLimits) {
    assert!(l.is_valid_announcement(), "limits {l:?} below the minimum");
}
