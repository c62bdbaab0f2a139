//! The wire messages of quicfeed and the small types they carry.
//!
//! Every message is one variant of [`Message`]; its bincode encoding (tag, field order, integer
//! encoding) is specified in `PROTOCOL.md` and checked byte for byte by the codec tests.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// One of the two channels of a session. Each is a QUIC bidirectional stream opened by the
/// client; the first byte the client writes on it is the channel's [`tag`](ChannelKind::tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChannelKind {
    /// Control and request/response traffic: the handshake's first and last steps, then reliable
    /// ordered application messages.
    Main,
    /// The game feed: the handshake's middle step, then reliable ordered application messages
    /// (typically state updates at the tick rate).
    Feed,
}

/// One value for each channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerChannel<T> {
    /// The value for main.
    pub main: T,
    /// The value for feed.
    pub feed: T,
}

impl<T> PerChannel<T> {
    /// The same value for both channels.
    pub fn both(value: T) -> Self
    where
        T: Clone,
    {
        PerChannel {
            main: value.clone(),
            feed: value,
        }
    }

    /// The value for `kind`.
    pub fn get(&self, kind: ChannelKind) -> &T {
        match kind {
            ChannelKind::Main => &self.main,
            ChannelKind::Feed => &self.feed,
        }
    }

    /// The value for `kind`, to change.
    pub fn get_mut(&mut self, kind: ChannelKind) -> &mut T {
        match kind {
            ChannelKind::Main => &mut self.main,
            ChannelKind::Feed => &mut self.feed,
        }
    }

    /// Both values, main first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        [&self.main, &self.feed].into_iter()
    }

    /// Both values, main first, to change.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        [&mut self.main, &mut self.feed].into_iter()
    }
}

impl ChannelKind {
    /// The byte a client writes first on a stream to declare which channel it carries.
    pub const fn tag(self) -> u8 {
        match self {
            ChannelKind::Main => 0x00,
            ChannelKind::Feed => 0x01,
        }
    }

    /// The channel a declaration byte names, or `None` for any other byte.
    pub const fn from_tag(tag: u8) -> Option<ChannelKind> {
        match tag {
            0x00 => Some(ChannelKind::Main),
            0x01 => Some(ChannelKind::Feed),
            _ => None,
        }
    }

    /// Lowercase name, as used in logs and errors.
    pub const fn name(self) -> &'static str {
        match self {
            ChannelKind::Main => "main",
            ChannelKind::Feed => "feed",
        }
    }
}

impl fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A player's identity on a server, unique among the server's live sessions.
///
/// Assigned by the server (sequentially from 1 by default, or by the application's
/// [`Authenticator`](crate::Authenticator)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PlayerId(pub u64);

impl fmt::Display for PlayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "player-{}", self.0)
    }
}

/// Length of a [`Token`] in bytes (128 bits).
pub const TOKEN_LEN: usize = 16;

/// A handshake token: 128 random bits from the operating system's CSPRNG.
///
/// `Debug` shows only the first two bytes, so tokens do not end up whole in logs. Comparison of a
/// presented token with an issued one is done in constant time by
/// [`IssuedToken::redeem`](crate::protocol::IssuedToken::redeem); the derived `PartialEq` is for
/// tests and is not constant time.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Token(pub [u8; TOKEN_LEN]);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, ..] = self.0;
        write!(f, "Token({a:02x}{b:02x}…)")
    }
}

/// Why a handshake was refused or a connection closed.
///
/// On the wire a reason is a `u16` code: in a `CONN_FAILED` message, and as the QUIC application
/// error code of the `CONNECTION_CLOSE` that follows. Codes `0x0000..=0x0fff` belong to quicfeed;
/// `0x1000..=0xffff` are the application's ([`Reason::Application`]). A code this version does
/// not know decodes as [`Reason::Unknown`], never as an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "u16", into = "u16")]
#[non_exhaustive]
pub enum Reason {
    /// `0x0000`: closed normally by the application; not an error.
    Normal,
    /// `0x0001`: a message that is valid but not allowed in this state or on this channel.
    UnexpectedMessage,
    /// `0x0002`: a frame whose body does not decode as the message its tag names.
    MalformedMessage,
    /// `0x0003`: a message tag this protocol version does not define.
    UnknownMessage,
    /// `0x0004`: a frame longer than the receiver's limit for that channel and state.
    FrameTooLarge,
    /// `0x0005`: a stream that does not declare a channel, declares an unknown or already open
    /// channel, or a stream the protocol does not use.
    InvalidStream,
    /// `0x0006`: a token that does not match the one issued on this connection.
    InvalidToken,
    /// `0x0007`: a token presented after its lifetime.
    TokenExpired,
    /// `0x0008`: a token presented again after it was redeemed.
    TokenReused,
    /// `0x0009`: a valid token presented with a player ID it was not issued to.
    PlayerMismatch,
    /// `0x000a`: the handshake did not complete before the deadline.
    HandshakeTimeout,
    /// `0x000b`: the server's authenticator refused the credentials.
    AuthRefused,
    /// `0x000c`: the server is at its session limit.
    ServerFull,
    /// `0x000d`: the authenticator chose a player ID that has a live session.
    PlayerIdInUse,
    /// `0x000e`: the server is shutting down.
    ServerShutdown,
    /// `0x000f`: the peer hit an internal failure (for example, no randomness available).
    InternalError,
    /// `0x0010`: the session resumed on a newer connection, which replaces this one.
    Superseded,
    /// `0x0011`: a reconnection request for a session the server does not hold (never
    /// established, ended, or its grace period has passed).
    UnknownSession,
    /// `0x0012`: nothing was received for the dead-path timeout; the connection is abandoned
    /// (the session may resume on a new one).
    DeadPath,
    /// `0x0013`: the session ended because the client did not come back within the grace
    /// period.
    SessionExpired,
    /// `0x0014`: the peer's acknowledgements or sequence numbers contradict what was sent.
    SequenceError,
    /// `0x0015`: the server had too many handshakes in progress and ended this one, the oldest,
    /// to make room for a newer attempt. Trying again is reasonable.
    ServerBusy,
    /// `0x0016`: the client's source address (an IPv4 address or an IPv6 /64) already holds
    /// as many sessions as the server allows one address.
    AddressFull,
    /// `0x1000..=0xffff`: defined by the application.
    Application(u16),
    /// A library code (`0x0017..=0x0fff`) this version does not know.
    Unknown(u16),
}

impl Reason {
    /// First code of the application-defined range.
    pub const APPLICATION_MIN: u16 = 0x1000;

    /// The wire code.
    pub const fn code(self) -> u16 {
        match self {
            Reason::Normal => 0x0000,
            Reason::UnexpectedMessage => 0x0001,
            Reason::MalformedMessage => 0x0002,
            Reason::UnknownMessage => 0x0003,
            Reason::FrameTooLarge => 0x0004,
            Reason::InvalidStream => 0x0005,
            Reason::InvalidToken => 0x0006,
            Reason::TokenExpired => 0x0007,
            Reason::TokenReused => 0x0008,
            Reason::PlayerMismatch => 0x0009,
            Reason::HandshakeTimeout => 0x000a,
            Reason::AuthRefused => 0x000b,
            Reason::ServerFull => 0x000c,
            Reason::PlayerIdInUse => 0x000d,
            Reason::ServerShutdown => 0x000e,
            Reason::InternalError => 0x000f,
            Reason::Superseded => 0x0010,
            Reason::UnknownSession => 0x0011,
            Reason::DeadPath => 0x0012,
            Reason::SessionExpired => 0x0013,
            Reason::SequenceError => 0x0014,
            Reason::ServerBusy => 0x0015,
            Reason::AddressFull => 0x0016,
            Reason::Application(code) | Reason::Unknown(code) => code,
        }
    }

    /// The reason a wire code stands for. Total: every `u16` maps to a reason.
    pub const fn from_code(code: u16) -> Reason {
        match code {
            0x0000 => Reason::Normal,
            0x0001 => Reason::UnexpectedMessage,
            0x0002 => Reason::MalformedMessage,
            0x0003 => Reason::UnknownMessage,
            0x0004 => Reason::FrameTooLarge,
            0x0005 => Reason::InvalidStream,
            0x0006 => Reason::InvalidToken,
            0x0007 => Reason::TokenExpired,
            0x0008 => Reason::TokenReused,
            0x0009 => Reason::PlayerMismatch,
            0x000a => Reason::HandshakeTimeout,
            0x000b => Reason::AuthRefused,
            0x000c => Reason::ServerFull,
            0x000d => Reason::PlayerIdInUse,
            0x000e => Reason::ServerShutdown,
            0x000f => Reason::InternalError,
            0x0010 => Reason::Superseded,
            0x0011 => Reason::UnknownSession,
            0x0012 => Reason::DeadPath,
            0x0013 => Reason::SessionExpired,
            0x0014 => Reason::SequenceError,
            0x0015 => Reason::ServerBusy,
            0x0016 => Reason::AddressFull,
            c if c >= Reason::APPLICATION_MIN => Reason::Application(c),
            c => Reason::Unknown(c),
        }
    }

    /// A short lowercase description, used when a peer sends no message of its own.
    pub const fn describe(self) -> &'static str {
        match self {
            Reason::Normal => "closed",
            Reason::UnexpectedMessage => "unexpected message",
            Reason::MalformedMessage => "malformed message",
            Reason::UnknownMessage => "unknown message type",
            Reason::FrameTooLarge => "frame too large",
            Reason::InvalidStream => "invalid stream",
            Reason::InvalidToken => "invalid token",
            Reason::TokenExpired => "token expired",
            Reason::TokenReused => "token already used",
            Reason::PlayerMismatch => "token issued to another player",
            Reason::HandshakeTimeout => "handshake timed out",
            Reason::AuthRefused => "authentication refused",
            Reason::ServerFull => "server full",
            Reason::PlayerIdInUse => "player id in use",
            Reason::ServerShutdown => "server shutting down",
            Reason::InternalError => "internal error",
            Reason::Superseded => "superseded by a newer connection",
            Reason::UnknownSession => "unknown session",
            Reason::DeadPath => "path dead",
            Reason::SessionExpired => "session expired",
            Reason::SequenceError => "sequence error",
            Reason::ServerBusy => "server busy",
            Reason::AddressFull => "too many sessions from this address",
            Reason::Application(_) => "application reason",
            Reason::Unknown(_) => "unknown reason",
        }
    }
}

impl From<u16> for Reason {
    fn from(code: u16) -> Self {
        Reason::from_code(code)
    }
}

impl From<Reason> for u16 {
    fn from(reason: Reason) -> Self {
        reason.code()
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:04x})", self.describe(), self.code())
    }
}

/// Every message of the protocol. The variant order is the wire tag order: do not reorder.
///
/// | tag | message           | direction        | channel      |
/// |-----|-------------------|------------------|--------------|
/// | 0   | `ConnInit`        | client -> server | main         |
/// | 1   | `ConnInitReply`   | server -> client | main         |
/// | 2   | `FeedInit`        | client -> server | feed         |
/// | 3   | `FeedInitReply`   | server -> client | feed         |
/// | 4   | `FinalAuth`       | client -> server | main         |
/// | 5   | `ConnOk`          | server -> client | main         |
/// | 6   | `ConnFailed`      | server -> client | main or feed |
/// | 7   | `Data`            | both             | main or feed |
/// | 8   | `Ack`             | both             | main or feed |
/// | 9   | `Resume`          | client -> server | main         |
/// | 10  | `Gap`             | both             | main or feed |
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Step 1 request: opens the handshake.
    ConnInit {
        /// The largest frame body the client accepts on main after `CONN_OK`.
        max_main_frame: u32,
        /// The largest frame body the client accepts on feed after `CONN_OK`.
        max_feed_frame: u32,
        /// Opaque credentials for the server's authenticator (e.g. a matchmaker ticket); may be
        /// empty.
        credentials: Bytes,
    },
    /// Step 1 reply: the player's ID and token A, to be shown on feed.
    ConnInitReply {
        /// The player ID the server assigned.
        player_id: PlayerId,
        /// Token A.
        token_a: Token,
    },
    /// Step 2 request, on feed: proves that the feed stream belongs to the player.
    FeedInit {
        /// The player ID from `ConnInitReply`.
        player_id: PlayerId,
        /// Token A from `ConnInitReply`.
        token_a: Token,
    },
    /// Step 2 reply, on feed: token B, to be shown on main.
    FeedInitReply {
        /// Token B.
        token_b: Token,
    },
    /// Step 3 request, on main: completes the handshake.
    FinalAuth {
        /// Token B from `FeedInitReply`.
        token_b: Token,
    },
    /// Step 3 reply, or the reply to `RESUME`: the session is established (or resumed).
    ConnOk {
        /// The largest frame body the server accepts on main.
        max_main_frame: u32,
        /// The largest frame body the server accepts on feed.
        max_feed_frame: u32,
        /// The credential for the next `RESUME`; single-use, replaced at every `CONN_OK`.
        credential: Token,
        /// Sequence number of the next message the server expects from the client on main:
        /// the client replays its unacknowledged main messages from there (0 on a new session).
        main_next: u64,
        /// The same for feed.
        feed_next: u64,
    },
    /// A refusal: the sender closes the connection right after it.
    ConnFailed {
        /// Why.
        reason: Reason,
        /// Human-readable detail, at most [`MAX_FAILURE_MESSAGE`](crate::protocol::MAX_FAILURE_MESSAGE)
        /// bytes of UTF-8.
        message: String,
        /// A hint: the client may try again after this many milliseconds (a full or busy
        /// server, a temporary ban). `None`: no hint.
        retry_after_ms: Option<u32>,
    },
    /// An application message (after `CONN_OK` only), numbered per channel and direction from 0.
    Data {
        /// Sequence number: one more than the previous `DATA` on this channel and direction.
        seq: u64,
        /// The application's bytes.
        payload: Bytes,
    },
    /// The receiver has delivered every message of this channel's other direction with a
    /// sequence number below `next`: the sender may forget them.
    Ack {
        /// The next sequence number the receiver expects.
        next: u64,
    },
    /// The reconnection request: the first message on main of a new connection that resumes a
    /// session whose connection was lost.
    Resume {
        /// The session's player ID.
        player_id: PlayerId,
        /// Proof that the client holds the credential from the last `CONN_OK`, bound to this
        /// connection's TLS keys ([`resume_proof_context`](crate::protocol::resume_proof_context)):
        /// the credential itself never goes on the wire.
        proof: Token,
        /// The largest frame body the client accepts on main.
        max_main_frame: u32,
        /// The largest frame body the client accepts on feed.
        max_feed_frame: u32,
        /// Sequence number of the next message the client expects from the server on main: the
        /// server replays from there.
        main_next: u64,
        /// The same for feed.
        feed_next: u64,
    },
    /// After a resume, before replaying: messages of this channel below `next` that the
    /// receiver has not got are lost (the sender's replay buffer overflowed); `DATA` resumes at
    /// `next`.
    Gap {
        /// The sequence number of the next `DATA`.
        next: u64,
    },
}

impl Message {
    /// Number of defined message tags; a tag at or above this is unknown.
    pub const TAG_COUNT: u32 = 11;
    /// Wire tag of [`Message::Data`].
    pub const DATA_TAG: u8 = 7;

    /// The message's wire tag.
    pub const fn tag(&self) -> u8 {
        match self {
            Message::ConnInit { .. } => 0,
            Message::ConnInitReply { .. } => 1,
            Message::FeedInit { .. } => 2,
            Message::FeedInitReply { .. } => 3,
            Message::FinalAuth { .. } => 4,
            Message::ConnOk { .. } => 5,
            Message::ConnFailed { .. } => 6,
            Message::Data { .. } => Message::DATA_TAG,
            Message::Ack { .. } => 8,
            Message::Resume { .. } => 9,
            Message::Gap { .. } => 10,
        }
    }

    /// The protocol name of the message, as used in PROTOCOL.md and logs.
    pub const fn name(&self) -> &'static str {
        match self {
            Message::ConnInit { .. } => "CONN_INIT",
            Message::ConnInitReply { .. } => "CONN_INIT_REPLY",
            Message::FeedInit { .. } => "FEED_INIT",
            Message::FeedInitReply { .. } => "FEED_INIT_REPLY",
            Message::FinalAuth { .. } => "FINAL_AUTH",
            Message::ConnOk { .. } => "CONN_OK",
            Message::ConnFailed { .. } => "CONN_FAILED",
            Message::Data { .. } => "DATA",
            Message::Ack { .. } => "ACK",
            Message::Resume { .. } => "RESUME",
            Message::Gap { .. } => "GAP",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_maps_to_a_reason_and_back() {
        for code in 0..=u16::MAX {
            assert_eq!(Reason::from_code(code).code(), code);
        }
    }

    #[test]
    fn channel_tags_round_trip_and_others_are_refused() {
        for channel in [ChannelKind::Main, ChannelKind::Feed] {
            assert_eq!(ChannelKind::from_tag(channel.tag()), Some(channel));
        }
        assert_eq!(ChannelKind::from_tag(2), None);
        assert_eq!(ChannelKind::from_tag(0xff), None);
    }

    #[test]
    fn token_debug_does_not_print_the_whole_token() {
        let token = Token([0xab; TOKEN_LEN]);
        assert_eq!(format!("{token:?}"), "Token(abab…)");
    }
}
