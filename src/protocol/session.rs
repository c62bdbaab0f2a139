//! The established session, without I/O: what both sides keep per session across its
//! connections, and every decision about it.
//!
//! [`SessionMachine`] holds, per channel, the outbound queue with its replay buffer and send
//! budget, the inbound delivery queue, acknowledgement scheduling, and the connection currently
//! attached. It follows the handshake machines' shape: `handle_*` for what happened (a frame, a
//! datagram, a closed connection, a timer), `poll_*` for what the driver must do next (frames to
//! write, datagrams to send, connections to close, when to call back), and plain methods for the
//! application (`send`, `recv`, `close`). Time is always passed in.
//!
//! The rules it owns, so that virtual-time tests reach them:
//!
//! - **Acknowledgements on arrival** (PROTOCOL.md §11.3): a `DATA` is acknowledged once the
//!   session has taken it into its delivery queue, whether or not the application has read it;
//!   the queue belongs to the session, so an acknowledged message survives a resume. Incoming
//!   `ACK`s are processed as they arrive, on every channel. Acknowledgements go in-band and, when
//!   the peer accepts datagrams, also as an acknowledgement datagram, which no unread stream
//!   data can hold up.
//! - **Back-pressure**: a channel reads its stream only while its delivery queue is below the
//!   receive capacity; a send waits only while the channel's unwritten bytes are at the send
//!   budget (never while the session has no connection: the replay buffer then drops its
//!   oldest messages, and the next replay reports them with a `GAP`).
//! - **Replay plan** (§11.5) when a connection is attached, written like any other frames: a
//!   replay larger than the peer's flow-control window goes out as the window opens, while the
//!   same connection keeps reading.
//! - **Dead path** (§12.1), the **finished-stream grace** (§3.3), the **graceful close** (§9.3:
//!   everything written, both streams finished, every message acknowledged by the peer or the
//!   linger over), the server's **grace period** (§12.6), and **which connection endings keep
//!   the session** (§9.4).
//! - **Generations**: each attached connection gets a number; input from any other is ignored,
//!   so a superseded connection's late frames can neither deliver nor confirm anything.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::codec::{self, DataHeader, decode_message, max_data_payload};
use super::lane::{
    Datagram, LaneArrival, LaneInbound, LaneOffer, LaneOutbox, decode_datagram,
    encode_ack_datagram, encode_lane_datagram, lane_header_len,
};
use super::message::{ChannelKind, Message, PerChannel, Reason};
use super::reliability::{Arrival, Inbound, Outbound};
use super::rules::{FrameLimits, Inbound as Classified, InboundRules};

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Disconnect {
    /// The peer closed the session with this reason (for a client, e.g.
    /// [`Reason::ServerShutdown`]).
    #[error("closed by peer: {reason}: {message}")]
    ByPeer {
        /// The peer's reason.
        reason: Reason,
        /// The peer's detail text.
        message: String,
    },
    /// This side closed the session, by [`Session::close`](crate::Session::close) or because
    /// it detected a protocol violation.
    #[error("closed locally: {reason}: {message}")]
    Locally {
        /// The reason given.
        reason: Reason,
        /// The detail given.
        message: String,
    },
    /// Nothing was heard from the peer for the idle timeout: the path or the peer died.
    #[error("timed out")]
    TimedOut,
    /// The peer no longer knows the connection (typically a server restart): a QUIC stateless
    /// reset.
    #[error("reset by the peer: it no longer knows this connection (a restart, typically)")]
    Reset,
    /// A QUIC-level error.
    #[error("transport error: {0}")]
    Transport(String),
    /// A client could not resume the session after losing its connection: the server refused
    /// (`reason`), or could not be reached within the resume budget
    /// ([`Reason::HandshakeTimeout`]).
    #[error("resume failed: {reason}: {message}")]
    ResumeFailed {
        /// Why.
        reason: Reason,
        /// Detail.
        message: String,
    },
}

/// How a connection ended, as its transport reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkClosed {
    /// The peer sent an application close with this error code and reason phrase.
    Application {
        /// The error code (a quicfeed reason code when it fits 16 bits).
        code: u64,
        /// The reason phrase.
        reason: String,
    },
    /// Nothing was heard for the idle timeout.
    TimedOut,
    /// A stateless reset: the peer no longer knows the connection.
    Reset,
    /// This side closed it.
    Locally,
    /// Any other transport failure.
    Transport(String),
}

impl std::fmt::Display for LinkClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkClosed::Application { code, reason } if reason.is_empty() => {
                write!(f, "closed by the peer with code {code:#x}")
            }
            LinkClosed::Application { code, reason } => {
                write!(f, "closed by the peer with code {code:#x}: {reason}")
            }
            LinkClosed::TimedOut => f.write_str("timed out"),
            LinkClosed::Reset => f.write_str("reset by the peer"),
            LinkClosed::Locally => f.write_str("closed by this side"),
            LinkClosed::Transport(detail) => write!(f, "transport error: {detail}"),
        }
    }
}

impl LinkClosed {
    /// Why the session would end if this ending ended it (PROTOCOL.md §9.4).
    pub fn disconnect(&self) -> Disconnect {
        match self {
            LinkClosed::Application { code, reason } => match u16::try_from(*code) {
                Ok(code) => {
                    let reason_code = Reason::from_code(code);
                    Disconnect::ByPeer {
                        reason: reason_code,
                        message: if reason.is_empty() {
                            reason_code.describe().to_owned()
                        } else {
                            reason.clone()
                        },
                    }
                }
                Err(_) => {
                    Disconnect::Transport(format!("application close with code {code}: {reason}"))
                }
            },
            LinkClosed::TimedOut => Disconnect::TimedOut,
            LinkClosed::Reset => Disconnect::Reset,
            LinkClosed::Locally => Disconnect::Locally {
                reason: Reason::Normal,
                message: String::new(),
            },
            LinkClosed::Transport(detail) => Disconnect::Transport(detail.clone()),
        }
    }

    /// Whether the session survives this ending, to be resumed on a new connection (§9.4): the
    /// closes that resuming itself causes (`SUPERSEDED`, `DEAD_PATH`, and `HANDSHAKE_TIMEOUT`:
    /// a client that gave up a resume attempt before its `CONN_OK` arrived, while the server
    /// had already attached the connection) and every transport-level ending do; any other
    /// close with a reason ends it.
    pub fn keeps_session(&self) -> bool {
        match self.disconnect() {
            Disconnect::ByPeer { reason, .. } => matches!(
                reason,
                Reason::Superseded | Reason::DeadPath | Reason::HandshakeTimeout
            ),
            Disconnect::Locally { .. } | Disconnect::ResumeFailed { .. } => false,
            Disconnect::TimedOut | Disconnect::Reset | Disconnect::Transport(_) => true,
        }
    }
}

/// Which end of the session a machine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client: it resumes lost connections; a stream the server resets or stops makes it
    /// resume too.
    Client,
    /// The server: it waits for the client for the grace period; a stream the client resets or
    /// stops is a violation.
    Server,
}

/// What shapes a session: per-channel buffers, timeouts, limits.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Which end this is.
    pub side: Side,
    /// Bytes of unacknowledged payload kept per channel for a replay (always at least the newest
    /// message).
    pub replay_capacity: usize,
    /// Bytes of a channel's messages that may wait to be written to its stream; a send waits
    /// beyond it (at least one message is always accepted). At most `replay_capacity`.
    pub send_budget: usize,
    /// Bytes of received messages a channel holds for the application; its stream is not read
    /// beyond it (at least one message is always taken in).
    pub receive_capacity: usize,
    /// Bytes of received lane messages held for the application; the oldest are dropped beyond
    /// it.
    pub lane_capacity: usize,
    /// Nothing received for this long: the connection is abandoned (§12.1).
    pub dead_path_timeout: Duration,
    /// Longest wait before acknowledging what arrived (sooner after 32 messages or 32 KiB).
    pub ack_delay: Duration,
    /// How long a channel whose stream the peer finished waits for the connection to close
    /// before that is a violation (§3.3).
    pub finish_grace: Duration,
    /// Server: how long a session without a connection waits for its client (§12.6).
    pub grace_period: Option<Duration>,
    /// Lane datagrams older than this (extra transit) are dropped on arrival (§13.4), and lane
    /// messages that waited longer than this to be sent are dropped unsent (§13.3).
    pub lane_max_age: Option<Duration>,
    /// Lane messages that may wait to be sent while QUIC cannot take them; a newer one
    /// supersedes the oldest beyond it (0: none wait, §13.3).
    pub lane_send_capacity: usize,
    /// This side's frame limits (what it announced).
    pub local_limits: FrameLimits,
    /// The liveness check is made from outside, by [`check_liveness`](SessionMachine::check_liveness)
    /// every [`check_interval`](Self::check_interval) (a server checks all its sessions from one
    /// timer): [`poll_timeout`](SessionMachine::poll_timeout) then leaves it out.
    pub shared_checks: bool,
}

impl SessionConfig {
    /// How often liveness is checked: a sixteenth of the dead-path timeout, at least 10 ms.
    pub fn check_interval(&self) -> Duration {
        self.dead_path_timeout
            .checked_div(16)
            .unwrap_or_default()
            .max(Duration::from_millis(10))
    }
}

/// A newly handshaken connection, as the session machine needs it.
#[derive(Debug, Clone)]
pub struct AttachLink {
    /// The frame limits the peer announced on this connection.
    pub peer_limits: FrameLimits,
    /// Where the peer expects each channel's replay to start (`main`, `feed`).
    pub peer_next: (u64, u64),
    /// What each channel still tolerates after `CONN_OK` (`main`, `feed`).
    pub rules: (InboundRules, InboundRules),
    /// Whether the peer accepts datagrams (lane messages and acknowledgement datagrams).
    pub datagrams: bool,
}

/// A connection attached to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attached {
    /// The connection's generation: its input is passed back with it.
    pub generation: u64,
    /// Messages to be sent again to the peer (it had not acknowledged them).
    pub replayed: u64,
    /// Messages the peer missed that the replay buffer no longer held (sent as a `GAP`).
    pub lost: u64,
}

/// How a channel's stream ended while its connection lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// The peer finished it (FIN): a graceful close is under way.
    Finished,
    /// The peer reset it, or stopped it (a write failed), with this detail.
    Failed(String),
}

/// The head of a frame to write: it reads as its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// A `DATA` frame's header, held inline: the writer copies it out (no allocation per
    /// message).
    Data(DataHeader),
    /// A whole control frame (`ACK`, `GAP`, ...), encoded.
    Control(Bytes),
}

impl std::ops::Deref for Head {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Head::Data(header) => header.as_slice(),
            Head::Control(frame) => frame,
        }
    }
}

/// One thing the driver writes on a channel's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// A frame, as a head (a `DATA` header, or a whole control frame) and a body (a kept
    /// payload, shared with the replay buffer; may be empty).
    Frame(Head, Bytes),
    /// Finish the stream (FIN): everything this side will send on it has been polled.
    Finish,
}

/// What the session does with an attached connection's ending, as the driver sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEnd {
    /// The session ended.
    Ended,
    /// The connection is gone, the session continues: a client resumes, a server waits.
    Lost(Disconnect),
    /// A newer connection took over (a server that accepted a `RESUME`).
    Superseded,
}

/// Something that happened to the session, for the application's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The attached connection was lost; the session continues.
    Lost(Disconnect),
    /// Server: the client showed, on the resumed connection, that it received the new
    /// credential (a frame on main).
    Confirmed,
}

/// Why the application's receive did not return a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Messages the peer could not replay were lost (reported once).
    Gap(u64),
    /// The peer broke the protocol on this channel (or lane); the session ended with `reason`.
    Violation {
        /// The reason the session was closed with.
        reason: Reason,
        /// Detail.
        message: String,
    },
    /// The session ended, and every message it had taken in has been received.
    Closed(Disconnect),
}

/// Why a send was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The channel's send budget is full: wait for its stream to take what is queued.
    Full,
    /// The message exceeds the peer's frame limit for the channel.
    TooLarge {
        /// The frame body the message makes (with the largest sequence number header).
        len: usize,
        /// The peer's frame limit on the channel.
        max: usize,
    },
    /// The session has ended (or is closing gracefully).
    Ended(Disconnect),
}

/// Whom wake-ups are for, gathered while the machine changes and taken by the driver after.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Wakes {
    /// The connection's task: something to write, read or close.
    pub connection: bool,
    /// The receivers of main and feed: something to receive.
    pub recv: PerChannel<bool>,
    /// The lane's receivers.
    pub lane: bool,
    /// The senders of main and feed: room in the send budget.
    pub room: PerChannel<bool>,
    /// Watchers of the session's state: a connection attached or detached, or the end.
    pub state: bool,
}

/// What the machine counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counts {
    /// Messages accepted for sending on the reliable channels.
    pub messages_sent: u64,
    /// Messages taken in on the reliable channels (delivered in order, once).
    pub messages_received: u64,
    /// Messages sent again after resumes.
    pub messages_replayed: u64,
    /// Messages that could not be sent again (replay buffer overflow).
    pub messages_lost: u64,
    /// Lane datagrams delivered.
    pub datagrams_delivered: u64,
    /// Lane datagrams dropped as not newer than one delivered.
    pub datagrams_stale: u64,
    /// Lane datagrams dropped for their age.
    pub datagrams_too_old: u64,
    /// Lane messages dropped unsent, superseded by newer ones while QUIC could not send.
    pub datagrams_superseded: u64,
    /// Lane messages dropped unsent for waiting longer than the maximum age.
    pub datagrams_expired: u64,
    /// Lane messages dropped unsent because the connection was lost while they waited.
    pub datagrams_orphaned: u64,
    /// Connections lost (the session continued).
    pub connections_lost: u64,
}

/// What became of a lane message the application sent ([`SessionMachine::send_lane`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaneSend {
    /// Hand this datagram to QUIC now.
    Send(Bytes),
    /// It waits for QUIC to take it (the connection task, woken, hands it over; or a newer
    /// message or its age drops it).
    Waiting,
    /// The session has no connection now: dropped (a lane message is only worth sending now).
    NoConnection,
    /// Too large for one datagram on this path: `max` is the largest payload that fits (0 if
    /// the peer takes no datagrams).
    TooLarge {
        /// The largest payload that fits one datagram now.
        max: usize,
    },
}

/// Where a violation was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Channel(ChannelKind),
    Lane,
}

#[derive(Debug)]
enum Delivery {
    Message(Bytes),
    Gap(u64),
}

/// One channel, both directions.
#[derive(Debug)]
struct Channel {
    out: Outbound,
    /// The first message not yet handed to the current connection's stream.
    written: u64,
    /// Payload bytes of the kept messages from `written` on.
    unsent: usize,
    /// A `GAP` to write before the next `DATA`.
    gap: Option<u64>,
    /// The peer's frame limit on this channel (its latest announcement).
    peer_max: usize,
    inbound: Inbound,
    rules: InboundRules,
    queue: VecDeque<Delivery>,
    queued: usize,
    /// The application dropped its receiving half: deliveries are discarded (still
    /// acknowledged).
    discard: bool,
    /// An in-band `ACK` is due on the current connection.
    ack_frame: bool,
    /// Since when that `ACK` waits to be written: if it waits longer than the acknowledgement
    /// delay (the stream is blocked, most likely because the peer does not read it), an
    /// acknowledgement datagram goes instead.
    ack_frame_since: Option<Instant>,
    /// When the acknowledgement of what arrived is due, if anything is unacknowledged.
    ack_at: Option<Instant>,
    /// When the peer finished its stream on the current connection.
    peer_finished: Option<Instant>,
    /// This side finished its stream on the current connection.
    finished: bool,
    /// Reading the stream is paused for room in the queue, with this many bytes of a partial
    /// frame read.
    paused: Option<usize>,
    /// A violation on this channel was already reported to its receiver.
    violation_reported: bool,
}

impl Channel {
    fn new(capacity: usize) -> Self {
        Channel {
            out: Outbound::new(capacity),
            written: 0,
            unsent: 0,
            gap: None,
            peer_max: 0,
            inbound: Inbound::new(),
            rules: InboundRules::data_only(),
            queue: VecDeque::new(),
            queued: 0,
            discard: false,
            ack_frame: false,
            ack_frame_since: None,
            ack_at: None,
            peer_finished: None,
            finished: false,
            paused: None,
            violation_reported: false,
        }
    }

    /// Everything this side sent on the channel has been acknowledged by the peer.
    fn all_acknowledged(&self) -> bool {
        self.out.buffered_messages() == 0
    }

    /// Everything kept has been handed to the stream.
    fn all_written(&self) -> bool {
        self.gap.is_none() && self.written >= self.out.next_seq()
    }
}

/// The connection currently attached.
#[derive(Debug)]
struct Link {
    generation: u64,
    datagrams: bool,
    last_heard: Instant,
    /// The transport's received-datagram count at the last sample.
    rx_seen: Option<u64>,
    next_check: Instant,
    /// Per channel, whether the peer has received our finished stream whole (transport-level
    /// acknowledgement of everything up to its end): what a graceful close waits for, after the
    /// peer's own acknowledgements, so that nothing written before the close (a `CONN_OK` the
    /// peer has not yet read, say) is lost to the close.
    finish_acknowledged: PerChannel<bool>,
}

#[derive(Debug)]
struct Closing {
    reason: Reason,
    message: String,
    deadline: Instant,
}

/// What the machine counts of the reliable channels and the connections (the lane counts its
/// own, in [`Lane`]).
#[derive(Debug, Clone, Copy, Default)]
struct ReliableCounts {
    messages_sent: u64,
    messages_received: u64,
    messages_replayed: u64,
    messages_lost: u64,
    connections_lost: u64,
}

/// What the lane's receiver counts, and the messages its outbox lost with a connection (the
/// outbox counts the rest).
#[derive(Debug, Clone, Copy, Default)]
struct LaneCounts {
    delivered: u64,
    stale: u64,
    too_old: u64,
    orphaned: u64,
}

/// The lane's state on one session (§13).
#[derive(Debug)]
struct Lane {
    /// The sequence number of the next message sent.
    next: u64,
    inbound: LaneInbound,
    /// Messages received and not yet read, oldest first, and their bytes.
    queue: VecDeque<Bytes>,
    queued: usize,
    outbox: LaneOutbox,
    /// When the connection task should look again whether QUIC can take a waiting message.
    recheck: Option<Instant>,
    counts: LaneCounts,
}

impl Lane {
    fn new(config: &SessionConfig) -> Box<Lane> {
        Box::new(Lane {
            next: 0,
            inbound: LaneInbound::new(config.lane_max_age),
            queue: VecDeque::new(),
            queued: 0,
            outbox: LaneOutbox::new(config.lane_send_capacity, config.lane_max_age),
            recheck: None,
            counts: LaneCounts::default(),
        })
    }
}

/// The established session's state machine (see the [module docs](self)).
#[derive(Debug)]
pub struct SessionMachine {
    /// Shared: a server's sessions all have the same.
    config: Arc<SessionConfig>,
    epoch: Instant,
    channels: PerChannel<Channel>,
    /// Made at the lane's first use (a message sent or received on it): a session that never
    /// uses the lane holds none of its state.
    lane: Option<Box<Lane>>,
    lane_violation_reported: bool,
    /// An acknowledgement datagram is due.
    ack_datagram: bool,
    link: Option<Link>,
    /// Bumped by every attach and detach.
    generation: u64,
    /// How the last detached connection ended, by generation.
    detached: Option<Box<(u64, LinkEnd)>>,
    /// When the session last heard from a connection it has since lost (cleared on attach).
    lost_at: Option<Instant>,
    /// Server: when the session expires without a connection.
    expires_at: Option<Instant>,
    /// Server: a resume issued a credential the client has not confirmed yet.
    unconfirmed: bool,
    // Boxed, as `detached`: most sessions never have one, and every session would otherwise
    // hold their room.
    closing: Option<Box<Closing>>,
    end: Option<Box<Disconnect>>,
    violation: Option<Box<(Source, Reason, String)>>,
    /// Connections to close: (generation, reason, message).
    closes: Vec<(u64, Reason, String)>,
    events: VecDeque<Event>,
    wakes: Wakes,
    counts: ReliableCounts,
}

const KINDS: [ChannelKind; 2] = [ChannelKind::Main, ChannelKind::Feed];

impl SessionMachine {
    /// A session with no connection yet, started at `now` (the lane's clock starts here).
    /// A server shares one configuration among its sessions (`Arc<SessionConfig>`); a
    /// `SessionConfig` of its own works too.
    pub fn new(config: impl Into<Arc<SessionConfig>>, now: Instant) -> Self {
        let config = config.into();
        let capacity = config.replay_capacity;
        SessionMachine {
            epoch: now,
            channels: PerChannel {
                main: Channel::new(capacity),
                feed: Channel::new(capacity),
            },
            lane: None,
            lane_violation_reported: false,
            ack_datagram: false,
            link: None,
            generation: 0,
            detached: None,
            lost_at: None,
            expires_at: None,
            unconfirmed: false,
            closing: None,
            end: None,
            violation: None,
            closes: Vec::new(),
            events: VecDeque::new(),
            wakes: Wakes::default(),
            counts: ReliableCounts::default(),
            config,
        }
    }

    fn channel(&self, kind: ChannelKind) -> &Channel {
        self.channels.get(kind)
    }

    fn channel_mut(&mut self, kind: ChannelKind) -> &mut Channel {
        self.channels.get_mut(kind)
    }

    // ----- getters -----

    /// Which end this is.
    pub fn side(&self) -> Side {
        self.config.side
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Bumped by every attach and detach: a watcher of "a new connection" compares it.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The generation of the attached connection, if one is attached.
    pub fn attached(&self) -> Option<u64> {
        self.link.as_ref().map(|l| l.generation)
    }

    /// Whether connection `generation` is the attached one.
    pub fn is_attached(&self, generation: u64) -> bool {
        self.attached() == Some(generation)
    }

    /// Why the session ended, if it has.
    pub fn ended(&self) -> Option<&Disconnect> {
        self.end.as_deref()
    }

    /// Whether a graceful close is under way.
    pub fn is_closing(&self) -> bool {
        self.closing.is_some()
    }

    /// When the session lost its last connection (the last time anything was heard on it), if
    /// it has none now.
    pub fn lost_at(&self) -> Option<Instant> {
        self.link.is_none().then_some(self.lost_at).flatten()
    }

    /// The next `DATA` expected from the peer on `kind` (every earlier one is taken in).
    pub fn inbound_next(&self, kind: ChannelKind) -> u64 {
        self.channel(kind).inbound.next()
    }

    /// The largest payload the peer accepts in one message on `kind`.
    pub fn max_payload(&self, kind: ChannelKind) -> usize {
        max_data_payload(self.channel(kind).peer_max)
    }

    /// Bytes kept for a replay on `kind` (sent, not yet acknowledged).
    pub fn replay_bytes(&self, kind: ChannelKind) -> usize {
        self.channel(kind).out.buffered_bytes()
    }

    /// Bytes of `kind`'s messages waiting to be written to its stream.
    pub fn unsent_bytes(&self, kind: ChannelKind) -> usize {
        self.channel(kind).unsent
    }

    /// Bytes of received messages on `kind` the application has not read.
    pub fn queued_bytes(&self, kind: ChannelKind) -> usize {
        self.channel(kind).queued
    }

    /// Bytes of received lane messages the application has not read.
    pub fn lane_queued_bytes(&self) -> usize {
        self.lane.as_ref().map_or(0, |lane| lane.queued)
    }

    /// What the machine counted.
    pub fn counts(&self) -> Counts {
        let ReliableCounts {
            messages_sent,
            messages_received,
            messages_replayed,
            messages_lost,
            connections_lost,
        } = self.counts;
        let mut counts = Counts {
            messages_sent,
            messages_received,
            messages_replayed,
            messages_lost,
            connections_lost,
            ..Counts::default()
        };
        if let Some(lane) = &self.lane {
            counts.datagrams_delivered = lane.counts.delivered;
            counts.datagrams_stale = lane.counts.stale;
            counts.datagrams_too_old = lane.counts.too_old;
            counts.datagrams_orphaned = lane.counts.orphaned;
            counts.datagrams_superseded = lane.outbox.superseded();
            counts.datagrams_expired = lane.outbox.expired();
        }
        counts
    }

    /// How connection `generation` ended for the session, once it is no longer attached.
    pub fn link_end(&self, generation: u64) -> Option<LinkEnd> {
        if self.is_attached(generation) {
            return None;
        }
        if self.end.is_some() {
            return Some(LinkEnd::Ended);
        }
        Some(match self.detached.as_deref() {
            Some((detached, end)) if *detached == generation => end.clone(),
            // Replaced before its own ending was recorded: a newer connection took over.
            _ => LinkEnd::Superseded,
        })
    }

    /// Milliseconds since the session began, on this side's clock (the lane's send times).
    pub fn clock_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    // ----- driver outputs -----

    /// Whether the application's receiver of `kind` is to be woken (a message was delivered,
    /// or the channel ended), since the last [`take_wakes`](Self::take_wakes).
    pub fn receiver_woken(&self, kind: ChannelKind) -> bool {
        *self.wakes.recv.get(kind)
    }

    /// Whom to wake, since the last call.
    pub fn take_wakes(&mut self) -> Wakes {
        std::mem::take(&mut self.wakes)
    }

    /// A connection to close now: its generation, the reason code and the reason phrase.
    pub fn poll_close(&mut self) -> Option<(u64, Reason, String)> {
        self.closes.pop()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.end.is_some() {
            return None;
        }
        let Some(link) = &self.link else {
            return self.expires_at;
        };
        let mut next = (!self.config.shared_checks).then_some(link.next_check);
        let mut earliest = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for channel in self.channels.iter() {
            for t in [
                channel.ack_at,
                channel
                    .ack_frame_since
                    .and_then(|t| t.checked_add(self.config.ack_delay)),
                channel
                    .peer_finished
                    .and_then(|t| t.checked_add(self.config.finish_grace)),
            ]
            .into_iter()
            .flatten()
            {
                earliest(t);
            }
        }
        if let Some(closing) = &self.closing {
            earliest(closing.deadline);
        }
        next
    }

    /// Whether connection `generation`'s stream for `kind` should be read now, with `buffered`
    /// bytes of an incomplete frame already read from it: the channel's delivery queue and that
    /// partial frame are below the receive capacity (or the queue is empty, so that a frame
    /// larger than the capacity can complete; or the channel discards), and the peer has not
    /// finished the stream. When it says no, a receive that makes room wakes the connection.
    pub fn wants_read(&mut self, generation: u64, kind: ChannelKind, buffered: usize) -> bool {
        let attached = self.is_attached(generation);
        let capacity = self.config.receive_capacity;
        let channel = self.channel_mut(kind);
        if !attached || channel.peer_finished.is_some() {
            return false;
        }
        let room = channel.discard
            || channel.queued == 0
            || channel.queued.saturating_add(buffered) < capacity;
        channel.paused = (!room).then_some(buffered);
        room
    }

    /// How many more bytes `kind`'s stream may bring in now, with `buffered` bytes of an
    /// incomplete frame already read, before the channel holds its receive capacity: the
    /// driver sizes its reads to it (never below its smallest read), so that a channel holds
    /// at most its capacity, or one frame, plus one smallest read.
    pub fn read_room(&self, kind: ChannelKind, buffered: usize) -> usize {
        let channel = self.channel(kind);
        self.config
            .receive_capacity
            .saturating_sub(channel.queued.saturating_add(buffered))
    }

    /// The next thing to write on connection `generation`'s stream for `kind`: a pending `GAP`,
    /// an acknowledgement, the next unwritten `DATA`, or, when closing gracefully and everything
    /// is written, the stream's end. Polled frames count as written.
    pub fn poll_transmit(&mut self, generation: u64, kind: ChannelKind) -> Option<Transmit> {
        if !self.is_attached(generation) {
            return None;
        }
        let closing = self.closing.is_some();
        let channel = self.channel_mut(kind);
        if channel.finished {
            return None;
        }
        if let Some(next) = channel.gap.take() {
            return Some(control_frame(&Message::Gap { next }));
        }
        if channel.ack_frame {
            channel.ack_frame = false;
            channel.ack_frame_since = None;
            let next = channel.inbound.next();
            return Some(control_frame(&Message::Ack { next }));
        }
        let seq = channel.written;
        if let Some(payload) = channel.out.get(seq).cloned() {
            return match codec::data_header(seq, payload.len(), channel.peer_max) {
                Ok(header) => {
                    channel.written = seq.saturating_add(1);
                    channel.unsent = channel.unsent.saturating_sub(payload.len());
                    *self.wakes.room.get_mut(kind) = true;
                    Some(Transmit::Frame(Head::Data(header), payload))
                }
                Err(e) => {
                    // A message kept across a resume that the peer's new, lower limit refuses.
                    let message = format!("{kind}: message {seq} kept for a replay: {e}");
                    self.close_locally(Reason::FrameTooLarge, &message);
                    None
                }
            };
        }
        if closing && channel.all_written() {
            channel.finished = true;
            return Some(Transmit::Finish);
        }
        None
    }

    /// The next datagram to send on connection `generation` (an acknowledgement datagram).
    pub fn poll_datagram(&mut self, generation: u64) -> Option<Bytes> {
        let link = self.link.as_ref().filter(|l| l.generation == generation)?;
        if !self.ack_datagram || !link.datagrams {
            return None;
        }
        self.ack_datagram = false;
        Some(encode_ack_datagram(
            self.channels.main.inbound.next(),
            self.channels.feed.inbound.next(),
        ))
    }

    // ----- connections -----

    /// Makes `link` the session's connection at `now`: plans each channel's replay from where
    /// the peer stands (a `GAP` first if the replay buffer lost some of it) and returns its
    /// generation. A connection still attached is closed as superseded. A position that claims
    /// messages never sent ends the session with `SEQUENCE_ERROR`.
    pub fn attach(&mut self, now: Instant, link: AttachLink) -> Result<Attached, Disconnect> {
        if let Some(ended) = self.end.as_deref() {
            return Err(ended.clone());
        }
        if self.link.is_some() {
            self.detach(
                now,
                Reason::Superseded,
                "superseded by a resumed connection",
            );
        }
        self.generation = self.generation.saturating_add(1);
        let generation = self.generation;
        let (main_rules, feed_rules) = link.rules;
        let (mut replayed, mut lost) = (0u64, 0u64);
        for (kind, peer_next, rules) in [
            (ChannelKind::Main, link.peer_next.0, main_rules),
            (ChannelKind::Feed, link.peer_next.1, feed_rules),
        ] {
            let peer_max = link.peer_limits.get(kind).min(codec::MAX_FRAME_LIMIT);
            let channel = self.channel_mut(kind);
            channel.peer_max = peer_max;
            let gap = match channel.out.replay(peer_next) {
                Ok(replay) => replay.gap,
                Err(e) => {
                    // The new connection is not attached: the caller closes it with this.
                    let why = Disconnect::Locally {
                        reason: Reason::SequenceError,
                        message: format!("{kind}: replay position: {e}"),
                    };
                    self.finish(why.clone(), None);
                    return Err(why);
                }
            };
            if let Some(next) = gap {
                lost = lost.saturating_add(next.saturating_sub(peer_next));
            }
            replayed = replayed.saturating_add(channel.out.buffered_messages() as u64);
            channel.gap = gap;
            channel.written = channel.out.first_kept();
            channel.unsent = channel.out.buffered_bytes();
            if testing::skipping_first_replayed() && gap.is_none() {
                // A fault injected on purpose (the simulator's self-test): an off-by-one replay
                // that silently leaves out the first message the peer is missing.
                if let Some(first) = channel.out.get(channel.written).map(Bytes::len) {
                    channel.written = channel.written.saturating_add(1);
                    channel.unsent = channel.unsent.saturating_sub(first);
                }
            }
            channel.rules = rules;
            channel.peer_finished = None;
            channel.finished = false;
            channel.ack_frame = channel.inbound.has_unacked();
            channel.ack_frame_since = channel.ack_frame.then_some(now);
            channel.ack_at = None;
        }
        if self.config.side == Side::Client {
            // The client's first frame on the new connection: it tells the server CONN_OK (and
            // its credential) arrived, and gives it the path at once.
            self.channels.main.ack_frame = true;
            self.channels.main.ack_frame_since = Some(now);
        }
        self.link = Some(Link {
            generation,
            datagrams: link.datagrams,
            last_heard: now,
            rx_seen: None,
            next_check: now.checked_add(self.config.check_interval()).unwrap_or(now),
            finish_acknowledged: PerChannel::both(false),
        });
        self.lost_at = None;
        self.expires_at = None;
        self.detached = None;
        self.counts.messages_replayed = self.counts.messages_replayed.saturating_add(replayed);
        self.counts.messages_lost = self.counts.messages_lost.saturating_add(lost);
        self.wakes.connection = true;
        self.wakes.state = true;
        self.wakes.room = PerChannel::both(true);
        Ok(Attached {
            generation,
            replayed,
            lost,
        })
    }

    /// Server: the resumed connection about to be attached carries a credential the client has
    /// not confirmed yet; its first frame on main confirms it ([`Event::Confirmed`]).
    pub fn expect_confirmation(&mut self) {
        self.unconfirmed = true;
    }

    /// Gives up the attached connection without ending the session, closing it with `reason`:
    /// a server that accepted a `RESUME` (`SUPERSEDED`), or a client that resumes on a new
    /// connection (its application asked, or a stream failed). Returns whether one was
    /// attached.
    pub fn detach(&mut self, now: Instant, reason: Reason, message: &str) -> bool {
        let Some(generation) = self.attached() else {
            return false;
        };
        let end = match (self.config.side, reason) {
            (Side::Server, Reason::Superseded) => LinkEnd::Superseded,
            _ => LinkEnd::Lost(Disconnect::Locally {
                reason,
                message: message.to_owned(),
            }),
        };
        let phrase = codec::truncate_utf8(message, codec::MAX_FAILURE_MESSAGE).to_owned();
        self.closes.push((generation, reason, phrase));
        self.lose_link(now, end);
        true
    }

    /// Connection `generation` ended as its transport reports: the session continues without
    /// it, or ends (§9.4). Ignored if that connection is no longer attached.
    pub fn handle_link_closed(&mut self, generation: u64, closed: &LinkClosed, now: Instant) {
        if !self.is_attached(generation) || self.end.is_some() {
            return;
        }
        let disconnect = closed.disconnect();
        let finished = [ChannelKind::Main, ChannelKind::Feed]
            .into_iter()
            .find(|&kind| self.channel(kind).peer_finished.is_some());
        // (Not while this side's own graceful close is under way: that ends as its own close.)
        let transport_ending = closed.keeps_session()
            && !matches!(closed, LinkClosed::Application { .. })
            && self.closing.is_none();
        if let (true, Some(kind)) = (transport_ending, finished) {
            // The peer had finished a stream to close gracefully, and its connection ended
            // without a close (PROTOCOL.md §3.3): the session is over, as the peer asked, as
            // when its close does not follow within the finish grace. (A browser's close is
            // always such an ending, §14.6: a page that finished its streams and closed ends
            // normally.) A close that keeps the session, `SUPERSEDED` say, still keeps it.
            let message = format!("{kind} finished, then the connection ended ({disconnect})");
            self.finish(
                Disconnect::ByPeer {
                    reason: Reason::Normal,
                    message,
                },
                None,
            );
        } else if closed.keeps_session() {
            self.lose_link(now, LinkEnd::Lost(disconnect));
        } else if self.closing.is_some()
            && matches!(
                disconnect,
                Disconnect::ByPeer {
                    reason: Reason::Normal,
                    ..
                }
            )
        {
            // The peer closed normally while this side's graceful close was under way: that
            // completes it (the connection is closed already).
            self.complete_close(false);
        } else {
            self.finish(disconnect, None);
        }
    }

    /// Records the loss of the attached connection.
    fn lose_link(&mut self, now: Instant, end: LinkEnd) {
        let Some(link) = self.link.take() else {
            return;
        };
        self.generation = self.generation.saturating_add(1);
        self.lost_at.get_or_insert(link.last_heard);
        if let LinkEnd::Lost(why) = &end {
            self.counts.connections_lost = self.counts.connections_lost.saturating_add(1);
            self.events.push_back(Event::Lost(why.clone()));
        }
        self.detached = Some(Box::new((link.generation, end)));
        for channel in self.channels.iter_mut() {
            channel.ack_frame = false;
            channel.ack_frame_since = None;
            channel.peer_finished = None;
            channel.finished = false;
            channel.gap = None;
        }
        self.ack_datagram = false;
        if let Some(lane) = &mut self.lane {
            let orphaned = lane.outbox.clear();
            lane.counts.orphaned = lane.counts.orphaned.saturating_add(orphaned);
            lane.recheck = None;
        }
        if let Some(grace) = self.config.grace_period {
            self.expires_at = now.checked_add(grace);
        }
        self.wakes.connection = true;
        self.wakes.state = true;
        self.wakes.room = PerChannel::both(true);
        // A graceful close without a connection: nothing more can be delivered.
        self.complete_close(false);
    }

    // ----- input from the attached connection -----

    /// A liveness sample of connection `generation`: the transport's count of received
    /// datagrams. A change means the path is alive.
    pub fn handle_received(&mut self, generation: u64, rx_datagrams: u64, now: Instant) {
        if let Some(link) = self.link.as_mut().filter(|l| l.generation == generation)
            && link.rx_seen != Some(rx_datagrams)
        {
            link.rx_seen = Some(rx_datagrams);
            link.last_heard = now;
        }
    }

    /// The liveness check of connection `generation`, made now from outside (see
    /// [`SessionConfig::shared_checks`]): `rx_datagrams` is the transport's count of received
    /// datagrams, sampled just before. Applies the dead-path rule at once, and whatever else is
    /// due, as [`handle_timeout`](Self::handle_timeout) does.
    pub fn check_liveness(&mut self, generation: u64, rx_datagrams: u64, now: Instant) {
        self.handle_received(generation, rx_datagrams, now);
        if let Some(link) = self.link.as_mut().filter(|l| l.generation == generation) {
            link.next_check = link.next_check.min(now);
            self.handle_timeout(now);
        }
    }

    /// A frame body read from connection `generation`'s stream for `kind`.
    pub fn handle_frame(&mut self, generation: u64, kind: ChannelKind, body: Bytes, now: Instant) {
        if !self.is_attached(generation) || self.end.is_some() {
            return;
        }
        if kind == ChannelKind::Main && self.unconfirmed {
            self.unconfirmed = false;
            self.events.push_back(Event::Confirmed);
        }
        let message = match decode_message(body) {
            Ok(message) => message,
            Err(e) => return self.violation(Source::Channel(kind), e.reason(), &e.to_string()),
        };
        let classified = self.channel_mut(kind).rules.classify(message);
        match classified {
            Classified::Data { seq, payload } => self.on_data(kind, seq, payload, now),
            Classified::Ack(next) => self.on_ack(kind, next),
            Classified::Gap(next) => {
                let channel = self.channel_mut(kind);
                let missed = channel.inbound.gap(next);
                if missed > 0 {
                    if !channel.discard {
                        channel.queue.push_back(Delivery::Gap(missed));
                        *self.wakes.recv.get_mut(kind) = true;
                    }
                    self.schedule_ack(kind, now);
                }
            }
            Classified::Ignored => {}
            Classified::Violation { reason, message } => {
                self.violation(Source::Channel(kind), reason, &message);
            }
        }
    }

    /// A frame that could not be read from `kind`'s stream (too large, empty).
    pub fn handle_frame_error(
        &mut self,
        generation: u64,
        kind: ChannelKind,
        reason: Reason,
        detail: &str,
    ) {
        if self.is_attached(generation) && self.end.is_none() {
            self.violation(Source::Channel(kind), reason, detail);
        }
    }

    fn on_data(&mut self, kind: ChannelKind, seq: u64, payload: Bytes, now: Instant) {
        let channel = self.channel_mut(kind);
        match channel.inbound.arrive(seq, payload.len()) {
            Ok(Arrival::Deliver) => {
                if !channel.discard {
                    channel.queued = channel.queued.saturating_add(payload.len());
                    channel.queue.push_back(Delivery::Message(payload));
                    *self.wakes.recv.get_mut(kind) = true;
                }
                self.counts.messages_received = self.counts.messages_received.saturating_add(1);
                self.schedule_ack(kind, now);
            }
            Ok(Arrival::Duplicate) => {}
            Err(e) => self.violation(Source::Channel(kind), Reason::SequenceError, &e.to_string()),
        }
    }

    fn on_ack(&mut self, kind: ChannelKind, next: u64) {
        let written = self.channel(kind).written;
        if next > written {
            // Messages queued but not yet written on any connection cannot have been received.
            let message = format!(
                "peer acknowledges messages below {next}, but only those below {written} were sent"
            );
            return self.violation(Source::Channel(kind), Reason::SequenceError, &message);
        }
        let result = self.channel_mut(kind).out.ack(next);
        match result {
            Ok(()) => self.complete_close_if_done(),
            Err(e) => self.violation(Source::Channel(kind), Reason::SequenceError, &e.to_string()),
        }
    }

    /// What arrived on `kind` is to be acknowledged: now, if enough has arrived since the last
    /// acknowledgement, else within the acknowledgement delay.
    fn schedule_ack(&mut self, kind: ChannelKind, now: Instant) {
        let delay = self.config.ack_delay;
        let channel = self.channel_mut(kind);
        if channel.inbound.ack_due() {
            self.ack_now(kind, now);
        } else if channel.ack_at.is_none() {
            channel.ack_at = Some(now.checked_add(delay).unwrap_or(now));
        }
    }

    /// Acknowledges what `kind` has taken in, at once, in-band (even if nothing is new: after a
    /// client moved to a new socket, this is the packet that shows the server the new path).
    /// If the previous in-band `ACK` has not been written yet (the stream is blocked), an
    /// acknowledgement datagram goes too, which nothing on the stream can hold up.
    pub fn ack_now(&mut self, kind: ChannelKind, now: Instant) {
        let channel = self.channel_mut(kind);
        channel.inbound.ack_sent();
        channel.ack_at = None;
        if channel.ack_frame {
            self.ack_datagram = true;
        } else {
            channel.ack_frame = true;
            channel.ack_frame_since = Some(now);
        }
        self.wakes.connection = true;
    }

    /// Connection `generation`'s stream for `kind` ended while the connection lives.
    pub fn handle_stream_end(
        &mut self,
        generation: u64,
        kind: ChannelKind,
        end: StreamEnd,
        now: Instant,
    ) {
        if !self.is_attached(generation) || self.end.is_some() {
            return;
        }
        match end {
            StreamEnd::Finished => {
                // A graceful close: acknowledge everything at once (by datagram too, so the
                // closing peer need not wait for our stream), then wait for the close.
                self.channel_mut(kind).peer_finished = Some(now);
                self.ack_now(kind, now);
                self.ack_datagram = true;
            }
            StreamEnd::Failed(detail) => match self.config.side {
                Side::Client => {
                    let message = format!("{kind} stream failed ({detail})");
                    self.detach(now, Reason::Superseded, &message);
                }
                Side::Server => {
                    self.violation(Source::Channel(kind), Reason::InvalidStream, &detail);
                }
            },
        }
    }

    /// A datagram received on connection `generation`: a lane message (newest wins) or an
    /// acknowledgement datagram.
    pub fn handle_datagram(&mut self, generation: u64, datagram: Bytes, now: Instant) {
        if !self.is_attached(generation) || self.end.is_some() {
            return;
        }
        match decode_datagram(datagram) {
            Ok(Datagram::Lane(lane)) => {
                let now_ms = self.clock_ms(now);
                let config = &self.config;
                let state = self.lane.get_or_insert_with(|| Lane::new(config));
                match state.inbound.arrive(lane.seq, lane.sent_ms, now_ms) {
                    LaneArrival::Deliver => {
                        state.counts.delivered = state.counts.delivered.saturating_add(1);
                        state.queued = state.queued.saturating_add(lane.payload.len());
                        state.queue.push_back(lane.payload);
                        while state.queued > config.lane_capacity && state.queue.len() > 1 {
                            if let Some(dropped) = state.queue.pop_front() {
                                state.queued = state.queued.saturating_sub(dropped.len());
                            }
                        }
                        self.wakes.lane = true;
                    }
                    LaneArrival::Stale => {
                        state.counts.stale = state.counts.stale.saturating_add(1);
                    }
                    LaneArrival::TooOld { .. } => {
                        state.counts.too_old = state.counts.too_old.saturating_add(1);
                    }
                }
            }
            Ok(Datagram::Ack {
                main_next,
                feed_next,
            }) => {
                self.on_ack(ChannelKind::Main, main_next);
                if self.end.is_none() {
                    self.on_ack(ChannelKind::Feed, feed_next);
                }
            }
            Err(e) => self.violation(Source::Lane, e.reason(), &e.to_string()),
        }
    }

    /// Timers: acknowledgements due, the dead-path rule, the finished-stream grace, the end of
    /// a graceful close's linger, a server session's expiry. Call it at
    /// [`poll_timeout`](Self::poll_timeout), after [`handle_received`](Self::handle_received)
    /// with a fresh sample.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.end.is_some() {
            return;
        }
        let Some(link) = self.link.as_mut() else {
            if self.expires_at.is_some_and(|t| t <= now) {
                let grace = self.config.grace_period.unwrap_or_default();
                let message = format!(
                    "the client did not come back within {} s",
                    grace.as_secs_f32()
                );
                self.finish(
                    Disconnect::Locally {
                        reason: Reason::SessionExpired,
                        message,
                    },
                    None,
                );
            }
            return;
        };
        let mut dead = false;
        if link.next_check <= now {
            link.next_check = now.checked_add(self.config.check_interval()).unwrap_or(now);
            dead = now.saturating_duration_since(link.last_heard) >= self.config.dead_path_timeout;
        }
        if dead {
            let message = format!(
                "nothing received for {} ms",
                self.config.dead_path_timeout.as_millis()
            );
            self.detach(now, Reason::DeadPath, &message);
            return;
        }
        for kind in KINDS {
            let delay = self.config.ack_delay;
            let channel = self.channel_mut(kind);
            if channel
                .ack_frame_since
                .and_then(|t| t.checked_add(delay))
                .is_some_and(|t| t <= now)
            {
                // The in-band ACK is stuck behind unwritten data: say it by datagram, again
                // every delay while it stays stuck.
                channel.ack_frame_since = Some(now);
                self.ack_datagram = true;
                self.wakes.connection = true;
            }
            let channel = self.channel(kind);
            if channel.ack_at.is_some_and(|t| t <= now) {
                self.ack_now(kind, now);
            }
            let grace = self.config.finish_grace;
            let channel = self.channel(kind);
            if channel
                .peer_finished
                .and_then(|t| t.checked_add(grace))
                .is_some_and(|t| t <= now)
            {
                // The peer finished the stream to close gracefully, but its close has not
                // arrived: lost (QUIC sends it once), or held up behind acknowledgements this
                // side cannot give while its application does not read. Either way the
                // session is over, as the peer asked: it ends as the peer's normal close.
                let message = format!(
                    "{kind} finished, and the close did not follow within {} ms",
                    grace.as_millis()
                );
                self.finish(
                    Disconnect::ByPeer {
                        reason: Reason::Normal,
                        message: message.clone(),
                    },
                    Some((Reason::Normal, message)),
                );
                return;
            }
        }
        if self.closing.as_ref().is_some_and(|c| c.deadline <= now) {
            self.complete_close(true);
        }
    }

    // ----- the application -----

    /// Queues `payload` on `kind`: numbered, kept for a replay, for the driver to write (it
    /// polls [`poll_transmit`](Self::poll_transmit) next: this wakes no one). Refused when the
    /// send budget is full (the caller waits for
    /// [`Wakes::room`]), the payload exceeds the peer's limit, or the session has ended or is
    /// closing. Without a connection the budget does not apply: the message is kept, and the
    /// oldest kept messages give way beyond the replay capacity (reported with a `GAP`).
    pub fn send(&mut self, kind: ChannelKind, payload: Bytes) -> Result<u64, Refused> {
        if let Some(ended) = self.end.as_deref() {
            return Err(Refused::Ended(ended.clone()));
        }
        if let Some(closing) = &self.closing {
            return Err(Refused::Ended(Disconnect::Locally {
                reason: closing.reason,
                message: closing.message.clone(),
            }));
        }
        let attached = self.link.is_some();
        let budget = self.config.send_budget;
        let channel = self.channel_mut(kind);
        let len = payload.len();
        if let Err(codec::EncodeError::TooLarge { len, max }) =
            codec::check_data_size(len, channel.peer_max)
        {
            return Err(Refused::TooLarge { len, max });
        }
        if attached && channel.unsent > 0 && channel.unsent.saturating_add(len) > budget {
            return Err(Refused::Full);
        }
        let seq = channel.out.push(payload);
        if attached {
            channel.unsent = channel.unsent.saturating_add(len);
            let first = channel.out.first_kept();
            if first > channel.written {
                // Never with a send budget within the replay capacity; should it happen, the
                // peer is told, never left waiting for what is gone.
                channel.gap = Some(first);
                channel.written = first;
                channel.unsent = channel.out.buffered_bytes();
            }
        } else {
            // Between connections everything kept waits for the next one's replay, and the
            // replay buffer may have just dropped its oldest to take this.
            channel.unsent = channel.out.buffered_bytes();
        }
        self.counts.messages_sent = self.counts.messages_sent.saturating_add(1);
        Ok(seq)
    }

    /// Whether a send of `len` bytes on `kind` would be accepted now by the budget.
    pub fn has_room(&self, kind: ChannelKind, len: usize) -> bool {
        let channel = self.channel(kind);
        self.link.is_none()
            || channel.unsent == 0
            || channel.unsent.saturating_add(len) <= self.config.send_budget
    }

    /// The next message on `kind` for the application, or why there is none (`None`: wait for
    /// [`Wakes::recv`]). Messages taken in before the session ended are all returned before
    /// its end is.
    pub fn recv(&mut self, kind: ChannelKind) -> Option<Result<Bytes, Received>> {
        let capacity = self.config.receive_capacity;
        let channel = self.channel_mut(kind);
        if let Some(delivery) = channel.queue.pop_front() {
            return Some(match delivery {
                Delivery::Message(payload) => {
                    channel.queued = channel.queued.saturating_sub(payload.len());
                    if let Some(buffered) = channel.paused
                        && (channel.queued == 0
                            || channel.queued.saturating_add(buffered) < capacity)
                    {
                        // The connection's task stopped reading this stream: it may go on.
                        channel.paused = None;
                        self.wakes.connection = true;
                    }
                    Ok(payload)
                }
                Delivery::Gap(missed) => Err(Received::Gap(missed)),
            });
        }
        let end = self.end.as_deref()?.clone();
        if let Some((Source::Channel(source), reason, message)) = self.violation.as_deref().cloned()
        {
            let channel = self.channel_mut(kind);
            if source == kind && !channel.violation_reported {
                channel.violation_reported = true;
                return Some(Err(Received::Violation { reason, message }));
            }
        }
        Some(Err(Received::Closed(end)))
    }

    /// The application dropped `kind`'s receiving half: what arrives there from now on is
    /// acknowledged and discarded.
    pub fn discard(&mut self, kind: ChannelKind) {
        let channel = self.channel_mut(kind);
        channel.discard = true;
        channel.queue.clear();
        channel.queued = 0;
        channel.paused = None;
        self.wakes.connection = true;
    }

    /// A lane message the application sends at `now` (§13.3): stamped and framed, then handed
    /// to QUIC at once if it can take it (`quic_queued` bytes of datagrams unsent in it, the
    /// largest datagram `max_datagram` bytes; `None` if the peer takes none), else left to
    /// wait in the outbox, where it supersedes the oldest waiting beyond its capacity.
    pub fn send_lane(
        &mut self,
        payload: &[u8],
        quic_queued: usize,
        max_datagram: Option<usize>,
        now: Instant,
    ) -> Result<LaneSend, Disconnect> {
        if let Some(ended) = self.end.as_deref() {
            return Err(ended.clone());
        }
        let Some(link) = &self.link else {
            return Ok(LaneSend::NoConnection);
        };
        let max = max_datagram.filter(|_| link.datagrams).unwrap_or(0);
        let (seq, sent_ms) = (self.lane_peek(), self.clock_ms(now));
        let header = lane_header_len(seq, sent_ms);
        if header.saturating_add(payload.len()) > max {
            return Ok(LaneSend::TooLarge {
                max: max.saturating_sub(header),
            });
        }
        let config = &self.config;
        let lane = self.lane.get_or_insert_with(|| Lane::new(config));
        lane.next = lane.next.saturating_add(1);
        let datagram = encode_lane_datagram(seq, sent_ms, payload);
        let offer = lane.outbox.offer(datagram, quic_queued, max, now);
        lane.recheck = lane.outbox.recheck_at(now);
        Ok(match offer {
            LaneOffer::Send(datagram) => LaneSend::Send(datagram),
            LaneOffer::Queued { .. } => {
                // The connection task arms its recheck.
                self.wakes.connection = true;
                LaneSend::Waiting
            }
        })
    }

    /// When the connection should look again whether QUIC can take a waiting lane message
    /// ([`poll_lane`](Self::poll_lane)): soon while one waits, else never. Separate from
    /// [`poll_timeout`](Self::poll_timeout): nothing but the lane is due then.
    pub fn poll_lane_recheck(&self) -> Option<Instant> {
        self.lane.as_ref().and_then(|lane| lane.recheck)
    }

    /// A waiting lane message to hand to QUIC on connection `generation` at `now`, if QUIC can
    /// take it now (`quic_queued` and `max_datagram` as for [`send_lane`](Self::send_lane));
    /// waiting messages past the maximum age are dropped first.
    pub fn poll_lane(
        &mut self,
        generation: u64,
        quic_queued: usize,
        max_datagram: Option<usize>,
        now: Instant,
    ) -> Option<Bytes> {
        if !self.is_attached(generation) {
            return None;
        }
        let lane = self.lane.as_mut().filter(|lane| !lane.outbox.is_empty())?;
        let datagram = lane
            .outbox
            .poll(quic_queued, max_datagram.unwrap_or(0), now);
        lane.recheck = lane.outbox.recheck_at(now);
        datagram
    }

    /// The next lane sequence number (not consumed).
    pub fn lane_peek(&self) -> u64 {
        self.lane.as_ref().map_or(0, |lane| lane.next)
    }

    /// A lane message already received, if any (never the end).
    pub fn lane_take(&mut self) -> Option<Bytes> {
        let lane = self.lane.as_mut()?;
        let payload = lane.queue.pop_front()?;
        lane.queued = lane.queued.saturating_sub(payload.len());
        Some(payload)
    }

    /// The next lane message for the application, like [`recv`](Self::recv).
    pub fn lane_recv(&mut self) -> Option<Result<Bytes, Received>> {
        if let Some(payload) = self.lane_take() {
            return Some(Ok(payload));
        }
        let end = self.end.as_deref()?.clone();
        if let Some((Source::Lane, reason, message)) = self.violation.as_deref()
            && !self.lane_violation_reported
        {
            self.lane_violation_reported = true;
            return Some(Err(Received::Violation {
                reason: *reason,
                message: message.clone(),
            }));
        }
        Some(Err(Received::Closed(end)))
    }

    /// Closes the session at once with `reason`: the connection, if any, is closed with it.
    pub fn close(&mut self, reason: Reason, message: &str) {
        self.close_locally(reason, message);
    }

    /// Ends the session with `disconnect`, closing the connection (if any) with `reason` and
    /// `message` (a shutdown, a failed resume).
    pub fn end_with(&mut self, disconnect: Disconnect, reason: Reason, message: &str) {
        self.finish(disconnect, Some((reason, message.to_owned())));
    }

    /// Closes the session once the peer has what was sent: no more sends; everything queued is
    /// written, both streams finished, and the connection closed with `reason` once the peer
    /// has acknowledged every message, or at `now + linger`. Without a connection the session
    /// ends at once (nothing can be delivered).
    pub fn close_gracefully(
        &mut self,
        now: Instant,
        reason: Reason,
        message: &str,
        linger: Duration,
    ) {
        if self.end.is_some() || self.closing.is_some() {
            return;
        }
        let message = codec::truncate_utf8(message, codec::MAX_FAILURE_MESSAGE).to_owned();
        if self.link.is_none() {
            self.finish(Disconnect::Locally { reason, message }, None);
            return;
        }
        self.closing = Some(Box::new(Closing {
            reason,
            message,
            deadline: now.checked_add(linger).unwrap_or(now),
        }));
        self.wakes.connection = true;
        self.wakes.room = PerChannel::both(true);
        self.complete_close_if_done();
    }

    /// The transport reports that the peer has received `kind`'s finished stream whole, on the
    /// connection `generation`.
    pub fn handle_finish_acknowledged(&mut self, generation: u64, kind: ChannelKind) {
        if let Some(link) = self.link.as_mut().filter(|l| l.generation == generation) {
            *link.finish_acknowledged.get_mut(kind) = true;
            self.complete_close_if_done();
        }
    }

    fn complete_close_if_done(&mut self) {
        let finished = self
            .link
            .as_ref()
            .is_none_or(|l| l.finish_acknowledged.main && l.finish_acknowledged.feed);
        if self.closing.is_some()
            && finished
            && self
                .channels
                .iter()
                .all(|c| c.all_written() && c.all_acknowledged())
        {
            self.complete_close(true);
        }
    }

    /// Ends a graceful close under way as this side's close, closing the connection with its
    /// reason if `close_link` (not when the connection is gone already).
    fn complete_close(&mut self, close_link: bool) {
        if let Some(closing) = self.closing.take() {
            let close = close_link.then(|| (closing.reason, closing.message.clone()));
            self.finish(
                Disconnect::Locally {
                    reason: closing.reason,
                    message: closing.message,
                },
                close,
            );
        }
    }

    // ----- endings -----

    fn close_locally(&mut self, reason: Reason, message: &str) {
        let message = codec::truncate_utf8(message, codec::MAX_FAILURE_MESSAGE).to_owned();
        self.finish(
            Disconnect::Locally {
                reason,
                message: message.clone(),
            },
            Some((reason, message)),
        );
    }

    fn violation(&mut self, source: Source, reason: Reason, message: &str) {
        let message = match source {
            Source::Channel(kind) => format!("{kind}: {message}"),
            Source::Lane => format!("feed datagram: {message}"),
        };
        self.violation = Some(Box::new((source, reason, message.clone())));
        self.close_locally(reason, &message);
    }

    /// Ends the session (the first end wins), closing the attached connection with `close`.
    fn finish(&mut self, disconnect: Disconnect, close: Option<(Reason, String)>) {
        if self.end.is_some() {
            return;
        }
        self.end = Some(Box::new(disconnect));
        self.closing = None;
        self.expires_at = None;
        if let Some(link) = self.link.take() {
            self.generation = self.generation.saturating_add(1);
            if let Some((reason, message)) = close {
                self.closes.push((link.generation, reason, message));
            }
        }
        self.wake_all();
    }

    fn wake_all(&mut self) {
        self.wakes = Wakes {
            connection: true,
            recv: PerChannel::both(true),
            lane: true,
            room: PerChannel::both(true),
            state: true,
        };
    }
}

/// A whole control frame (`ACK`, `GAP`) as a head with an empty body. Both are a tag and one
/// varint, which always encode.
fn control_frame(message: &Message) -> Transmit {
    Transmit::Frame(
        Head::Control(codec::encode_message(message).unwrap_or_default()),
        Bytes::new(),
    )
}

/// Faults injected on purpose, for the simulator's self-test (it must catch them): never turn
/// one on anywhere else.
#[doc(hidden)]
pub mod testing {
    use std::sync::atomic::{AtomicBool, Ordering};

    static SKIP_FIRST_REPLAYED: AtomicBool = AtomicBool::new(false);

    /// Breaks the replay rule (PROTOCOL.md §11.5): a new connection's replay silently leaves
    /// out the first message the peer is missing, as an off-by-one bug would.
    pub fn skip_first_replayed(on: bool) {
        SKIP_FIRST_REPLAYED.store(on, Ordering::Relaxed);
    }

    pub(super) fn skipping_first_replayed() -> bool {
        SKIP_FIRST_REPLAYED.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
