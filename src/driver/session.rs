//! A session that outlives its connections: the state both sides keep per session, how a new
//! connection is attached (replaying what the peer missed), and how a connection is watched
//! (liveness, migration, loss).
//!
//! ```text
//!   Sender ──▶ ChannelCore.out ──(current writer)──▶ QUIC stream ──▶ peer
//!                 │ Outbound: numbering + replay buffer (trimmed by the peer's ACKs)
//!   Receiver ◀── ChannelCore.slot ◀──(current reader, swapped on resume)── peer
//!                 │ Inbound: dedup + acknowledgements
//!   SessionCore: the current connection (one at a time), generation, end, events, counters
//! ```
//!
//! The application's handles hold an `Arc<SessionCore>` and never a connection, so a resume
//! swaps the streams underneath them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{broadcast, watch};
use tracing::{debug, info};

use super::link::{Closer, disconnect_from_peer};
use super::stream::{FrameReader, FrameWriter};
use crate::error::Disconnect;
use crate::error::SendError;
use crate::events::{SessionCounters, SessionEvent};
use crate::protocol::codec::{self, data_header, encode_message};
use crate::protocol::lane::{LaneInbound, encode_lane_datagram, lane_header_len};
use crate::protocol::reliability::{Inbound, Outbound};
use crate::protocol::stats::{Sample, StatsWindow};
use crate::protocol::{ChannelKind, FrameLimits, InboundRules, Message, PlayerId, Reason, Token};

/// Capacity of a session's event channel; a subscriber that falls further behind skips events.
const EVENT_CAPACITY: usize = 16;

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Settings that shape a session, from the server's or client's config.
#[derive(Debug, Clone)]
pub(crate) struct SessionParams {
    /// Bytes of unacknowledged payload kept per channel and direction for a replay.
    pub(crate) replay_capacity: usize,
    /// Nothing received for this long: the connection is abandoned.
    pub(crate) dead_path_timeout: Duration,
    /// The frame limits this side announced (its receive limits).
    pub(crate) local_limits: FrameLimits,
    /// Feed datagrams later than this behind the fastest recent one are dropped.
    pub(crate) datagram_max_age: Option<Duration>,
    /// Send priorities of the main and feed streams.
    pub(crate) priorities: (i32, i32),
}

impl SessionParams {
    pub(crate) fn new(
        transport: &crate::config::TransportConfig,
        local_limits: FrameLimits,
    ) -> Self {
        SessionParams {
            replay_capacity: transport.replay_buffer,
            dead_path_timeout: transport.dead_path_timeout,
            local_limits,
            datagram_max_age: transport.datagram_max_age,
            priorities: (transport.main_priority, transport.feed_priority),
        }
    }
}

/// One stream's pair of halves and the rules for what may still arrive on it.
pub(crate) struct StreamPair {
    pub(crate) writer: FrameWriter,
    pub(crate) reader: FrameReader,
    pub(crate) rules: InboundRules,
}

impl StreamPair {
    /// A handshaken stream of channel `kind`, its reader switched from the handshake's frame
    /// limit to the session's (`local`).
    pub(crate) fn new(
        writer: FrameWriter,
        mut reader: FrameReader,
        rules: InboundRules,
        kind: ChannelKind,
        local: FrameLimits,
    ) -> Self {
        reader.set_limit(local.get(kind));
        StreamPair {
            writer,
            reader,
            rules,
        }
    }
}

/// A freshly handshaken connection to attach to a session.
pub(crate) struct Attach {
    pub(crate) conn: quinn::Connection,
    pub(crate) closer: Closer,
    pub(crate) main: StreamPair,
    pub(crate) feed: StreamPair,
    pub(crate) peer_limits: FrameLimits,
    /// Where the peer expects our replay to start, per channel.
    pub(crate) peer_next: (u64, u64),
}

/// A connection attached to a session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attached {
    /// The attachment's generation, for [`SessionCore::watch`].
    pub(crate) generation: u64,
    /// Messages replayed to the peer.
    pub(crate) replayed: u64,
    /// Messages the peer missed that the replay buffer no longer held.
    pub(crate) lost: u64,
}

/// How watching a connection ended.
#[derive(Debug)]
pub(crate) enum WatchEnd {
    /// A newer connection took over the session.
    Superseded,
    /// The session ended.
    Ended,
    /// The connection is gone but the session may resume.
    Lost(Disconnect),
}

/// The sending side of a channel: numbering, replay buffer, and the current stream.
pub(crate) struct OutState {
    pub(crate) outbound: Outbound,
    pub(crate) writer: Option<FrameWriter>,
    /// The peer's frame limit on this channel.
    pub(crate) peer_max: usize,
}

/// One channel of a session, shared by its application halves and the session.
pub(crate) struct ChannelCore {
    pub(crate) out: tokio::sync::Mutex<OutState>,
    pub(crate) inbound: Mutex<Inbound>,
    /// The newest reader attached, waiting for the receiving half to take it.
    slot: Mutex<Option<(FrameReader, InboundRules)>>,
    /// Bumped when a reader is put in the slot.
    slot_generation: watch::Sender<u64>,
}

impl ChannelCore {
    fn new(params: &SessionParams) -> Self {
        ChannelCore {
            out: tokio::sync::Mutex::new(OutState {
                outbound: Outbound::new(params.replay_capacity),
                writer: None,
                peer_max: 0,
            }),
            inbound: Mutex::new(Inbound::new()),
            slot: Mutex::new(None),
            slot_generation: watch::Sender::new(0),
        }
    }

    /// Watches for newly attached readers.
    pub(crate) fn subscribe_readers(&self) -> watch::Receiver<u64> {
        self.slot_generation.subscribe()
    }

    /// Takes the newest attached reader, if one is waiting.
    pub(crate) fn take_reader(&self) -> Option<(FrameReader, InboundRules)> {
        lock(&self.slot).take()
    }

    /// The next message expected from the peer.
    pub(crate) fn inbound_next(&self) -> u64 {
        lock(&self.inbound).next()
    }

    /// Sends an acknowledgement of everything delivered, if the channel's sending side is free
    /// right now (an acknowledgement is never worth waiting for: a later one covers it).
    pub(crate) async fn try_ack(&self) {
        let Ok(mut out) = self.out.try_lock() else {
            return;
        };
        let Some(writer) = out.writer.as_mut() else {
            return;
        };
        let next = {
            let mut inbound = lock(&self.inbound);
            if !inbound.has_unacked() {
                return;
            }
            inbound.ack_sent()
        };
        if let Ok(frame) = encode_message(&Message::Ack { next }) {
            if writer.write(frame).await.is_err() {
                out.writer = None;
            }
        }
    }
}

/// Who is on the other end, for what a session does when its connection is lost.
pub(crate) enum Role {
    /// This is the client: it resumes.
    Client(Box<super::client::Resumer>),
    /// This is the server: it waits for the client, then lets the session expire.
    Server(ServerSide),
}

/// What a server-side session needs from its server.
pub(crate) struct ServerSide {
    pub(crate) server: Weak<super::server::ServerShared>,
}

struct ConnState {
    current: Option<Current>,
    /// Why the last connection was detached without a replacement.
    detached: Option<(Reason, String)>,
    generation: u64,
    /// When the session last lost its connection, taken as the last time anything was heard
    /// on it (cleared when one is attached).
    lost_at: Option<Instant>,
    /// When the watcher last saw a packet arrive on the current connection.
    last_heard: Option<Instant>,
    /// The credential for the next `RESUME` (kept by a client).
    credential: Option<Token>,
}

struct Current {
    conn: quinn::Connection,
    closer: Closer,
    generation: u64,
}

/// The feed datagram lane of a session: numbering and clock for what it sends, newest-wins
/// state for what it receives. Datagrams belong to no connection in particular: the numbering
/// continues across resumes, so a datagram from an old connection never wins over a newer one.
pub(crate) struct LaneCore {
    /// Time zero of the session's send times.
    pub(crate) epoch: Instant,
    pub(crate) next_seq: AtomicU64,
    pub(crate) inbound: Mutex<LaneInbound>,
}

impl LaneCore {
    /// Milliseconds since the session began, on this side's clock.
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl SessionCore {
    /// Records a statistics sample of the connection of `generation`.
    fn sample(&self, now: Instant, generation: u64, quic: &quinn::ConnectionStats) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let c = &self.counters;
        let sample = Sample {
            connection: generation,
            rtt: quic.path.rtt,
            cwnd: quic.path.cwnd,
            sent_bytes: quic.udp_tx.bytes,
            received_bytes: quic.udp_rx.bytes,
            sent_packets: quic.path.sent_packets,
            lost_packets: quic.path.lost_packets,
            sent_messages: get(&c.messages_sent).saturating_add(get(&c.datagrams_sent)),
            received_messages: get(&c.messages_received)
                .saturating_add(get(&c.datagrams_delivered)),
        };
        lock(&self.stats).record(now, sample);
    }

    /// The session's statistics now.
    pub(crate) fn stats(&self) -> crate::stats::SessionStats {
        let summary = lock(&self.stats).summary();
        crate::stats::SessionStats {
            rtt: summary.rtt,
            min_rtt: summary.min_rtt,
            rtt_p50: summary.rtt_p50,
            rtt_p99: summary.rtt_p99,
            jitter: summary.jitter,
            loss_rate: summary.rates.loss_rate,
            sent_bytes_per_s: summary.rates.sent_bytes_per_s,
            received_bytes_per_s: summary.rates.received_bytes_per_s,
            sent_messages_per_s: summary.rates.sent_messages_per_s,
            received_messages_per_s: summary.rates.received_messages_per_s,
            congestion_window: summary.cwnd,
            counters: self.counters.snapshot(),
        }
    }

    /// Sends a message on a reliable channel: numbered, kept for a replay, queued on the
    /// current stream (waiting for flow control); see [`send_payload`].
    pub(crate) async fn send(&self, kind: ChannelKind, payload: Outgoing) -> Result<(), SendError> {
        if let Some(ended) = self.ended() {
            return Err(SendError::Closed(ended));
        }
        let mut out = self.channel(kind).out.lock().await;
        let failed = send_payload(&mut out, payload)
            .await
            .map_err(crate::session::encode_error)?;
        drop(out);
        Counters::bump(&self.counters.messages_sent, 1);
        if let Some(detail) = failed {
            self.stream_failed(kind, &detail);
        }
        Ok(())
    }

    /// Sends `payload` in one lane datagram on the current connection, without waiting (PROTOCOL.md
    /// §13). Between connections the message is dropped (and counted), not an error.
    pub(crate) fn send_lane(&self, payload: &[u8]) -> Result<(), SendError> {
        if let Some(ended) = self.ended() {
            return Err(SendError::Closed(ended));
        }
        let Some(conn) = self.connection() else {
            Counters::bump(&self.counters.datagrams_unsent, 1);
            return Ok(());
        };
        let sent_ms = self.lane.now_ms();
        let seq = self.lane.next_seq.fetch_add(1, Ordering::Relaxed);
        let header = lane_header_len(seq, sent_ms);
        let too_large = |max: usize| SendError::TooLarge {
            len: payload.len(),
            max: max.saturating_sub(header),
        };
        let max = conn.max_datagram_size().unwrap_or(0);
        if header.saturating_add(payload.len()) > max {
            return Err(too_large(max));
        }
        match conn.send_datagram(encode_lane_datagram(seq, sent_ms, payload)) {
            Ok(()) => Counters::bump(&self.counters.datagrams_sent, 1),
            Err(quinn::SendDatagramError::TooLarge) => {
                return Err(too_large(conn.max_datagram_size().unwrap_or(0)));
            }
            // Lost meanwhile, or refused by the peer: like sending between connections.
            Err(_) => Counters::bump(&self.counters.datagrams_unsent, 1),
        }
        Ok(())
    }
}

/// Per-session counters, updated from any task.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) migrations: AtomicU64,
    pub(crate) connections_lost: AtomicU64,
    pub(crate) resumes: AtomicU64,
    pub(crate) resumes_0rtt: AtomicU64,
    pub(crate) connect_0rtt: AtomicU64,
    pub(crate) resume_failures: AtomicU64,
    pub(crate) superseded: AtomicU64,
    pub(crate) messages_replayed: AtomicU64,
    pub(crate) messages_lost: AtomicU64,
    pub(crate) datagrams_sent: AtomicU64,
    pub(crate) datagrams_unsent: AtomicU64,
    pub(crate) datagrams_delivered: AtomicU64,
    pub(crate) datagrams_stale: AtomicU64,
    pub(crate) datagrams_too_old: AtomicU64,
    /// Messages sent and delivered on the reliable channels (for the statistics' rates).
    pub(crate) messages_sent: AtomicU64,
    pub(crate) messages_received: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> SessionCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SessionCounters {
            migrations: get(&self.migrations),
            connections_lost: get(&self.connections_lost),
            resumes: get(&self.resumes),
            resumes_0rtt: get(&self.resumes_0rtt),
            connect_0rtt: get(&self.connect_0rtt),
            resume_failures: get(&self.resume_failures),
            superseded: get(&self.superseded),
            messages_replayed: get(&self.messages_replayed),
            messages_lost: get(&self.messages_lost),
            datagrams_sent: get(&self.datagrams_sent),
            datagrams_unsent: get(&self.datagrams_unsent),
            datagrams_delivered: get(&self.datagrams_delivered),
            datagrams_stale: get(&self.datagrams_stale),
            datagrams_too_old: get(&self.datagrams_too_old),
        }
    }
}

/// Everything one session is, across its connections.
pub(crate) struct SessionCore {
    pub(crate) player_id: PlayerId,
    pub(crate) params: SessionParams,
    pub(crate) role: Role,
    pub(crate) main: ChannelCore,
    pub(crate) feed: ChannelCore,
    /// The feed's datagram lane.
    pub(crate) lane: LaneCore,
    conn: Mutex<ConnState>,
    /// The attachment generation, for watchers of "a new connection took over".
    attached: watch::Sender<u64>,
    /// Wakes connection watchers when the connection is attached or detached.
    connection_changed: tokio::sync::Notify,
    ended: watch::Sender<Option<Disconnect>>,
    /// Created on the first subscription: most sessions never have a subscriber.
    events: std::sync::OnceLock<broadcast::Sender<SessionEvent>>,
    pub(crate) counters: Counters,
    /// Connection quality samples (see [`crate::stats`]).
    stats: Mutex<StatsWindow>,
    /// Server: a resume replaced the credential and the client has not yet shown (by a message
    /// on the resumed connection) that it got the new one.
    unconfirmed: std::sync::atomic::AtomicBool,
}

impl SessionCore {
    pub(crate) fn new(player_id: PlayerId, params: SessionParams, role: Role) -> Arc<Self> {
        Arc::new(SessionCore {
            player_id,
            main: ChannelCore::new(&params),
            feed: ChannelCore::new(&params),
            lane: LaneCore {
                epoch: Instant::now(),
                next_seq: AtomicU64::new(0),
                inbound: Mutex::new(LaneInbound::new(params.datagram_max_age)),
            },
            params,
            role,
            conn: Mutex::new(ConnState {
                current: None,
                detached: None,
                generation: 0,
                lost_at: None,
                last_heard: None,
                credential: None,
            }),
            attached: watch::Sender::new(0),
            connection_changed: tokio::sync::Notify::new(),
            ended: watch::Sender::new(None),
            events: std::sync::OnceLock::new(),
            counters: Counters::default(),
            stats: Mutex::new(StatsWindow::new()),
            unconfirmed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub(crate) fn channel(&self, kind: ChannelKind) -> &ChannelCore {
        match kind {
            ChannelKind::Main => &self.main,
            ChannelKind::Feed => &self.feed,
        }
    }

    /// Why the session ended, if it has.
    pub(crate) fn ended(&self) -> Option<Disconnect> {
        self.ended.borrow().clone()
    }

    /// Watches the attachment generation: it changes whenever a connection is attached or
    /// detached.
    pub(crate) fn subscribe_attached(&self) -> watch::Receiver<u64> {
        self.attached.subscribe()
    }

    /// Watches for the end of the session.
    pub(crate) fn subscribe_end(&self) -> watch::Receiver<Option<Disconnect>> {
        self.ended.subscribe()
    }

    /// Subscribes to the session's events.
    pub(crate) fn subscribe_events(&self) -> broadcast::Receiver<SessionEvent> {
        self.events
            .get_or_init(|| broadcast::Sender::new(EVENT_CAPACITY))
            .subscribe()
    }

    pub(crate) fn emit(&self, event: SessionEvent) {
        if let Role::Server(side) = &self.role {
            if let Some(server) = side.server.upgrade() {
                server.record(self.player_id, &event);
            }
        }
        if let Some(events) = self.events.get() {
            let _ = events.send(event);
        }
    }

    /// Server: records that a resume issued a credential the client has not confirmed yet.
    pub(crate) fn expect_confirmation(&self) {
        self.unconfirmed.store(true, Ordering::Release);
    }

    /// Server: a message arrived on main from the client; if a resume's credential was waiting
    /// for confirmation, it is confirmed now.
    pub(crate) fn confirm(&self) {
        if self.unconfirmed.swap(false, Ordering::AcqRel) {
            if let Role::Server(side) = &self.role {
                if let Some(server) = side.server.upgrade() {
                    server.registry().confirm(self.player_id);
                }
            }
        }
    }

    /// The credential for the next `RESUME` (client side).
    pub(crate) fn credential(&self) -> Option<Token> {
        lock(&self.conn).credential
    }

    pub(crate) fn set_credential(&self, credential: Token) {
        lock(&self.conn).credential = Some(credential);
    }

    /// The latest connection generation (bumped by every attach and detach).
    pub(crate) fn current_generation(&self) -> u64 {
        lock(&self.conn).generation
    }

    /// When the session lost its last connection, if it has none now.
    pub(crate) fn lost_at(&self) -> Option<Instant> {
        let state = lock(&self.conn);
        if state.current.is_some() {
            None
        } else {
            state.lost_at
        }
    }

    /// The current connection, if any.
    pub(crate) fn connection(&self) -> Option<quinn::Connection> {
        lock(&self.conn).current.as_ref().map(|c| c.conn.clone())
    }

    /// Closes the current connection (if any) with `reason` without ending the session: a
    /// server's resume superseding it, or a client abandoning a dead path. Returns whether
    /// there was one.
    pub(crate) fn detach(&self, reason: Reason, message: &str) -> bool {
        let old = {
            let mut state = lock(&self.conn);
            state.generation = state.generation.saturating_add(1);
            let since = state.last_heard.unwrap_or_else(Instant::now);
            state.lost_at.get_or_insert(since);
            state.detached = Some((reason, message.to_owned()));
            state.current.take()
        };
        self.connection_changed.notify_waiters();
        match old {
            Some(old) => {
                old.closer.close(reason, message);
                true
            }
            None => false,
        }
    }

    /// Makes `attach` the session's connection: replays what the peer is missing on each
    /// channel, installs the new streams, and returns the attachment's generation. Any
    /// previous connection is closed as [`Reason::Superseded`].
    pub(crate) async fn attach(self: &Arc<Self>, attach: Attach) -> Result<Attached, Disconnect> {
        if let Some(ended) = self.ended() {
            attach.closer.close(Reason::Normal, "session ended");
            return Err(ended);
        }
        let generation = {
            let mut state = lock(&self.conn);
            state.generation = state.generation.saturating_add(1);
            state.lost_at = None;
            state.last_heard = Some(Instant::now());
            let generation = state.generation;
            let replaced = state.current.replace(Current {
                conn: attach.conn.clone(),
                closer: attach.closer.clone(),
                generation,
            });
            if let Some(old) = replaced {
                old.closer
                    .close(Reason::Superseded, "superseded by a resumed connection");
            }
            state.generation
        };
        self.attached.send_replace(generation);
        self.connection_changed.notify_waiters();
        let (mut replayed_total, mut lost_total) = (0u64, 0u64);
        let (main_priority, feed_priority) = self.params.priorities;
        let channels = [
            (
                ChannelKind::Main,
                attach.main,
                attach.peer_next.0,
                main_priority,
            ),
            (
                ChannelKind::Feed,
                attach.feed,
                attach.peer_next.1,
                feed_priority,
            ),
        ];
        for (kind, pair, peer_next, priority) in channels {
            let channel = self.channel(kind);
            let mut out = channel.out.lock().await;
            out.peer_max = attach.peer_limits.get(kind).min(codec::MAX_FRAME_LIMIT);
            let mut writer = pair.writer;
            writer.set_priority(priority);
            match replay(&mut out, &mut writer, peer_next).await {
                Ok((replayed, lost)) => {
                    Counters::bump(&self.counters.messages_replayed, replayed);
                    Counters::bump(&self.counters.messages_lost, lost);
                    replayed_total = replayed_total.saturating_add(replayed);
                    lost_total = lost_total.saturating_add(lost);
                    out.writer = Some(writer);
                }
                Err(ReplayError::Sequence(message)) => {
                    drop(out);
                    let reason = Reason::SequenceError;
                    self.close(reason, &message);
                    return Err(Disconnect::Locally { reason, message });
                }
                Err(ReplayError::TooLarge(message)) => {
                    drop(out);
                    let reason = Reason::FrameTooLarge;
                    self.close(reason, &message);
                    return Err(Disconnect::Locally { reason, message });
                }
                // The new connection died already; its watcher will see that.
                Err(ReplayError::Write) => out.writer = None,
            }
            drop(out);
            *lock(&channel.slot) = Some((pair.reader, pair.rules));
            channel
                .slot_generation
                .send_modify(|g| *g = g.wrapping_add(1));
        }
        Ok(Attached {
            generation,
            replayed: replayed_total,
            lost: lost_total,
        })
    }

    /// Ends the session for good with `disconnect`, closing its connection with `reason` (the
    /// first end wins). Wakes every handle; on a server, frees the player's slot.
    pub(crate) fn end(&self, disconnect: Disconnect, reason: Reason, message: &str) {
        let first = self.ended.send_if_modified(|current| {
            current.is_none() && {
                *current = Some(disconnect.clone());
                true
            }
        });
        if !first {
            return;
        }
        if let Some(current) = lock(&self.conn).current.take() {
            current.closer.close(reason, message);
        }
        info!(player_id = %self.player_id, why = %disconnect, "session ended");
        if let Role::Server(side) = &self.role {
            if let Some(server) = side.server.upgrade() {
                server.session_ended(self.player_id, &disconnect);
            }
        }
    }

    /// A channel's stream failed on this connection (the peer stopped or reset it) while the
    /// connection lives. A client abandons the connection and resumes the session on a new one;
    /// for a server, it is the client breaking the protocol.
    pub(crate) fn stream_failed(&self, kind: ChannelKind, detail: &str) {
        let message = format!("{kind} stream failed ({detail})");
        match &self.role {
            Role::Client(_) => {
                debug!(player_id = %self.player_id, %message, "resuming on a new connection");
                self.detach(Reason::Superseded, &message);
            }
            Role::Server(_) => self.close(Reason::InvalidStream, &message),
        }
    }

    /// Closes the session at once, from this side.
    pub(crate) fn close(&self, reason: Reason, message: &str) {
        let message = super::link::truncate(message);
        self.end(
            Disconnect::Locally {
                reason,
                message: message.to_owned(),
            },
            reason,
            message,
        );
    }

    /// Watches connection `generation` until it is lost, superseded, or the session ends:
    /// liveness (the dead-path timeout), the peer's address (migrations), and periodic
    /// acknowledgements.
    pub(crate) async fn watch(self: &Arc<Self>, generation: u64) -> WatchEnd {
        let Some(conn) = self.current_if(generation) else {
            // Detached or replaced before the watch began.
            return self.replaced(generation).unwrap_or(WatchEnd::Superseded);
        };
        let tick = self
            .params
            .dead_path_timeout
            .checked_div(16)
            .unwrap_or_default()
            .max(Duration::from_millis(10));
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ended = self.subscribe_end();
        let mut last_rx = (conn.stats().udp_rx.datagrams, Instant::now());
        let mut remote = conn.remote_address();
        loop {
            let changed = self.connection_changed.notified();
            if let Some(end) = self.replaced(generation) {
                return end;
            }
            tokio::select! {
                _ = changed => {
                    if let Some(end) = self.replaced(generation) {
                        return end;
                    }
                }
                error = conn.closed() => {
                    if self.ended().is_some() {
                        return WatchEnd::Ended;
                    }
                    if let Some(end) = self.replaced(generation) {
                        return end;
                    }
                    let why = self.classify_close(&error);
                    return match why {
                        Some(lost) => WatchEnd::Lost(lost),
                        None => {
                            let disconnect = disconnect_from_peer(&error);
                            self.end(disconnect, Reason::Normal, "");
                            WatchEnd::Ended
                        }
                    };
                }
                _ = ended.changed() => return WatchEnd::Ended,
                _ = ticker.tick() => {
                    if let Some(end) = self.replaced(generation) {
                        return end;
                    }
                    let now = Instant::now();
                    let quic = conn.stats();
                    self.sample(now, generation, &quic);
                    let received = quic.udp_rx.datagrams;
                    if received != last_rx.0 {
                        last_rx = (received, now);
                        lock(&self.conn).last_heard = Some(now);
                    } else if now.saturating_duration_since(last_rx.1) >= self.params.dead_path_timeout {
                        let message = format!(
                            "nothing received for {} ms",
                            self.params.dead_path_timeout.as_millis()
                        );
                        debug!(player_id = %self.player_id, %message, "dead path");
                        self.detach(Reason::DeadPath, &message);
                        return WatchEnd::Lost(Disconnect::Locally { reason: Reason::DeadPath, message });
                    }
                    let now_remote = conn.remote_address();
                    if now_remote != remote {
                        Counters::bump(&self.counters.migrations, 1);
                        self.emit(SessionEvent::Migrated { from: remote, to: now_remote });
                        remote = now_remote;
                    }
                    self.main.try_ack().await;
                    self.feed.try_ack().await;
                }
            }
        }
    }

    /// The connection of `generation`, if it is still the current one.
    fn current_if(&self, generation: u64) -> Option<quinn::Connection> {
        lock(&self.conn)
            .current
            .as_ref()
            .filter(|c| c.generation == generation)
            .map(|c| c.conn.clone())
    }

    /// What became of connection `generation` once it is no longer current: replaced by a
    /// newer one, or detached. A client detaches to resume (the connection is lost); a server
    /// detaches only to supersede.
    fn replaced(&self, generation: u64) -> Option<WatchEnd> {
        let state = lock(&self.conn);
        match &state.current {
            Some(current) if current.generation == generation => None,
            Some(_) => Some(WatchEnd::Superseded),
            None => Some(match (&self.role, &state.detached) {
                (Role::Client(_), Some((reason, message))) => WatchEnd::Lost(Disconnect::Locally {
                    reason: *reason,
                    message: message.clone(),
                }),
                _ => WatchEnd::Superseded,
            }),
        }
    }

    /// Whether a connection that ended this way may be resumed (`Some`, with why it was lost)
    /// or ends the session (`None`): a close with a reason is final, except the two a resume
    /// itself causes (a superseded or abandoned dead connection).
    fn classify_close(&self, error: &quinn::ConnectionError) -> Option<Disconnect> {
        match disconnect_from_peer(error) {
            Disconnect::ByPeer { reason, message }
                if matches!(reason, Reason::Superseded | Reason::DeadPath) =>
            {
                Some(Disconnect::ByPeer { reason, message })
            }
            Disconnect::ByPeer { .. } | Disconnect::Locally { .. } => None,
            lost => Some(lost),
        }
    }

    /// The connection was lost: record it, and clear it if it is still the current one.
    pub(crate) fn lost(&self, generation: u64, why: &Disconnect) {
        {
            let mut state = lock(&self.conn);
            if state
                .current
                .as_ref()
                .is_some_and(|c| c.generation == generation)
            {
                state.current = None;
            }
            let since = state.last_heard.unwrap_or_else(Instant::now);
            state.lost_at.get_or_insert(since);
        }
        Counters::bump(&self.counters.connections_lost, 1);
        self.emit(SessionEvent::ConnectionLost { why: why.clone() });
    }

    /// Waits until a new connection is attached after `generation`, or the session ends,
    /// for at most `timeout`. Returns whether one was attached.
    pub(crate) async fn wait_attached(&self, generation: u64, timeout: Duration) -> bool {
        let mut attached = self.attached.subscribe();
        let mut ended = self.subscribe_end();
        let wait = async {
            loop {
                if *attached.borrow_and_update() > generation {
                    return true;
                }
                if ended.borrow_and_update().is_some() {
                    return false;
                }
                tokio::select! {
                    r = attached.changed() => if r.is_err() { return false },
                    r = ended.changed() => if r.is_err() { return false },
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
    }

    /// A packet on the current connection right away (an acknowledgement on main), so that a
    /// server learns a client's new path without waiting for the next keep-alive; also how a
    /// resumed client confirms it received `CONN_OK`.
    pub(crate) async fn poke(&self) {
        let mut out = self.main.out.lock().await;
        let next = self.main.inbound_next();
        if let (Some(writer), Ok(frame)) =
            (out.writer.as_mut(), encode_message(&Message::Ack { next }))
        {
            if writer.write(frame).await.is_err() {
                out.writer = None;
            }
        }
    }

    /// The peer's current address, if connected.
    pub(crate) fn remote_address(&self) -> Option<SocketAddr> {
        self.connection().map(|c| c.remote_address())
    }

    /// Runs a server-side session after its connection was lost: waits for a resume, at most
    /// the grace period, then ends the session as expired.
    pub(crate) async fn await_resume(self: &Arc<Self>, generation: u64, grace: Duration) {
        if self.wait_attached(generation, grace).await || self.ended().is_some() {
            return;
        }
        let message = format!(
            "the client did not come back within {} s",
            grace.as_secs_f32()
        );
        self.end(
            Disconnect::Locally {
                reason: Reason::SessionExpired,
                message: message.clone(),
            },
            Reason::SessionExpired,
            &message,
        );
    }
}

/// Why a replay could not be done.
enum ReplayError {
    /// The peer claims messages that were never sent.
    Sequence(String),
    /// A kept message is larger than the peer's (lowered) frame limit.
    TooLarge(String),
    /// The new stream failed.
    Write,
}

/// Writes what the peer is missing on a new stream: a `GAP` if the replay buffer lost some of
/// it, then the kept messages from `peer_next` on. Returns (messages replayed, messages lost).
async fn replay(
    out: &mut OutState,
    writer: &mut FrameWriter,
    peer_next: u64,
) -> Result<(u64, u64), ReplayError> {
    let peer_max = out.peer_max;
    let replay = out
        .outbound
        .replay(peer_next)
        .map_err(|e| ReplayError::Sequence(e.to_string()))?;
    let mut lost = 0;
    if let Some(next) = replay.gap {
        lost = next.saturating_sub(peer_next);
        let frame = encode_message(&Message::Gap { next }).map_err(|_| ReplayError::Write)?;
        writer.write(frame).await.map_err(|_| ReplayError::Write)?;
    }
    let mut replayed = 0u64;
    for (seq, payload) in replay.messages {
        let header = data_header(*seq, payload.len(), peer_max)
            .map_err(|e| ReplayError::TooLarge(format!("message {seq} kept for a replay: {e}")))?;
        writer
            .write_parts(header, payload.clone())
            .await
            .map_err(|_| ReplayError::Write)?;
        replayed = replayed.saturating_add(1);
    }
    Ok((replayed, lost))
}

/// A `DATA` frame for `payload` (kept for a replay) with the channel's next sequence number,
/// written on the current stream if there is one.
///
/// Cancel-safe: the message is numbered, kept and queued on the stream together, with no await
/// in between, or not at all. A cancelled call leaves it queued; it goes out first at the next
/// write, or in the replay on the next connection.
pub(crate) async fn send_payload(
    out: &mut OutState,
    payload: Outgoing,
) -> Result<Option<String>, codec::EncodeError> {
    match &payload {
        Outgoing::Owned(owned) => owned.check_size(out.peer_max)?,
        Outgoing::Shared(shared) => codec::check_data_size(shared.len(), out.peer_max)?,
    }
    // Whatever a cancelled call left queued goes first; nothing of this message is committed
    // yet, so a cancellation here loses nothing.
    if let Some(writer) = out.writer.as_mut() {
        if writer.flush().await.is_err() {
            out.writer = None;
        }
    }
    let seq = out.outbound.next_seq();
    // An owned payload gets its header written in front of it (one buffer); a shared one (a
    // broadcast) gets a header of its own and is sent, and kept, without a copy.
    let (head, body, kept) = match payload {
        Outgoing::Owned(owned) => {
            let (frame, kept) = owned.into_frame(seq, out.peer_max)?;
            (frame, Bytes::new(), kept)
        }
        Outgoing::Shared(shared) => {
            let header = codec::data_header(seq, shared.len(), out.peer_max)?;
            (header, shared.clone(), shared)
        }
    };
    out.outbound.push(kept);
    if let Some(writer) = out.writer.as_mut() {
        writer.queue(head, body);
        if let Err(error) = writer.flush().await {
            // The message stays in the replay buffer either way.
            out.writer = None;
            return Ok(stream_failure(error));
        }
    }
    Ok(None)
}

/// A message to send on a channel.
pub(crate) enum Outgoing {
    /// Encoded for this send alone, with room for its header.
    Owned(codec::Payload),
    /// Encoded once and shared between sessions (a broadcast).
    Shared(Bytes),
}

/// A write error that means the stream (not the whole connection) failed: the peer stopped it.
/// The caller reports it to the session ([`SessionCore::stream_failed`]).
fn stream_failure(error: quinn::WriteError) -> Option<String> {
    match error {
        quinn::WriteError::ConnectionLost(_) => None,
        other => Some(other.to_string()),
    }
}
