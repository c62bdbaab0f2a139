//! A session that outlives its connections: the session machine behind one lock, the wake-ups
//! between the connection's task and the application's handles, events, counters and
//! statistics.
//!
//! ```text
//!   Sender::send ─┐                                  ┌─ Receiver::recv, Lane::recv
//!                 ▼                                  │
//!        SessionCore { Mutex<SessionMachine> + the current link's handle }
//!                 ▲        │ wake-ups (Notify), outside the lock
//!                 │        ▼
//!        the connection task (one per attached connection, super::connection):
//!        reads both streams and datagrams, writes both streams, runs the timers
//! ```
//!
//! A server's sessions are checked for liveness (and sampled for statistics) by the server's
//! accept loop, all from one timer, through [`SessionCore::check_link`]; a client's connection
//! task checks its session itself.
//!
//! **The lock rule.** The machine and the current link's handle sit behind one `std` mutex,
//! held only inside [`SessionCore::update`]: a few lines of pure state changes, never across an
//! `.await`, never while waking anyone or closing a connection (those happen after it is
//! released). An application call that must wait (a send with the budget full, a receive with
//! nothing queued) waits on a `Notify` registered before it looked at the machine, so no
//! wake-up between the look and the wait is lost. The connection task waits only in its
//! `select!` over reads, writes, datagrams, timers and its `Notify`; it never waits on the
//! application.
//!
//! One more `std` mutex sits on the data path: the connection's writers (`super::connection`),
//! which a send also polls so that its message reaches the stream without crossing a task when
//! the stream is idle (see [`InlineWrite`]). It too is held only for polls that return at once,
//! never across an `.await`; it is taken before the machine's (the only order), and by the
//! application and the liveness check only with `try_lock` (a busy writer is the task's to
//! serve).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Notify, broadcast};
use tracing::{debug, info};

use super::link::{CLOSE_LINGER, DatagramRefused, LinkHandle, PathSample, drain};
use super::now;
use crate::auth::UserData;
use crate::config::TransportConfig;
use crate::error::{Disconnect, RecvError, SendError};
use crate::events::{SessionCounters, SessionEvent};
use crate::protocol::lane::{LANE_HEADER_MAX, lane_header_len};
use crate::protocol::stats::{Sample, StatsWindow};
use crate::protocol::{
    AttachLink, Attached, ChannelKind, Event, FrameLimits, LaneSend, PerChannel, PlayerId, Reason,
    Received, Refused, SessionConfig, SessionMachine, Side, Token,
};
use crate::stats::{ChannelBuffers, SessionBuffers, SessionStats};

/// Capacity of a session's event channel; a subscriber that falls further behind skips events.
const EVENT_CAPACITY: usize = 16;

/// How long a receiver that saw the peer finish a channel waits for the connection to close.
const FINISH_GRACE: Duration = Duration::from_secs(3);

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The session machine's configuration from a server's or client's settings.
pub(crate) fn session_config(
    side: Side,
    transport: &TransportConfig,
    local_limits: FrameLimits,
    grace_period: Option<Duration>,
) -> SessionConfig {
    // What arrives is acknowledged only so that the sender can let its replay copy go: at 32
    // messages or 32 KiB (whichever first) on a busy channel, and within a quarter of the
    // dead-path timeout on a quiet one. Sooner would cost every session of a broadcasting
    // server a packet from its client, and a wake-up, several times a second for nothing.
    let ack_delay = transport
        .dead_path_timeout
        .checked_div(4)
        .unwrap_or_default()
        .max(Duration::from_millis(10));
    SessionConfig {
        side,
        replay_capacity: transport.replay_buffer,
        send_budget: transport.send_buffer.min(transport.replay_buffer),
        receive_capacity: transport.receive_buffer,
        lane_capacity: transport.datagram_receive_buffer,
        dead_path_timeout: transport.dead_path_timeout,
        ack_delay,
        finish_grace: FINISH_GRACE,
        grace_period,
        lane_max_age: transport.datagram_max_age,
        lane_send_capacity: transport.datagram_send_queue,
        local_limits,
        // A server checks all its sessions from one timer (its accept loop), so that an idle
        // or broadcast-only session's connection task is not woken to do it; a client's
        // connection task checks its one session.
        shared_checks: side == Side::Server,
    }
}

/// What a server-side session tells its server. (The server implements it; a session never
/// names the server's type, so nothing here depends on the server driver.)
pub(crate) trait SessionOwner: Send + Sync {
    /// Counts a session's event and passes it on to the server's subscribers.
    fn record(&self, player_id: PlayerId, event: &SessionEvent);
    /// The session ended: its slot is free.
    fn session_ended(&self, player_id: PlayerId, why: &Disconnect);
    /// The client confirmed the credential of its resume.
    fn confirmed(&self, player_id: PlayerId);
}

/// Which end of the session this is, and what that end needs.
pub(crate) enum SideHandle {
    /// A client: its endpoint (rebinding, draining the close). Boxed: an endpoint handle is
    /// 80 bytes, and every server-side session would otherwise hold as many.
    Client { endpoint: Box<quinn::Endpoint> },
    /// A server-side session: its server, to tell.
    Server { owner: Weak<dyn SessionOwner> },
}

struct State {
    machine: SessionMachine,
    /// The attached connection's generation and handle.
    link: Option<(u64, Arc<dyn LinkHandle>)>,
    /// The attached connection's writers, for sends that write at once.
    writers: Option<(u64, Arc<dyn InlineWrite>)>,
    /// The peer's address as last seen, to notice a migration.
    remote: Option<SocketAddr>,
}

/// A connection's writers, as the application's sends use them: write what the machine holds
/// for a channel now, if that can be done without waiting.
pub(crate) trait InlineWrite: Send + Sync {
    /// Runs `queue` (once) on the machine, then takes `kind`'s frames from it and writes them,
    /// without waiting: both under one lock of the session when the writer is free, `queue`
    /// alone when it is not. Returns what `queue` refused, or whether everything was written;
    /// if not, the connection's task must be woken to finish.
    fn queue_and_write(
        &self,
        core: &SessionCore,
        kind: ChannelKind,
        queue: &mut dyn FnMut(&mut SessionMachine) -> Result<(), Refused>,
    ) -> Result<bool, Refused>;
    /// Gives back idle writers' queue memory (skipped if the connection's task is using them).
    fn release_idle(&self);
}

impl crate::events::EndSignal for SessionCore {
    fn has_ended(&self) -> bool {
        self.ended.get().is_some()
    }

    fn status_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.status_changed.notified()
    }
}

/// Counts the driver keeps itself (the machine counts the rest).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) migrations: AtomicU64,
    pub(crate) resumes: AtomicU64,
    pub(crate) connect_0rtt: AtomicU64,
    pub(crate) resume_failures: AtomicU64,
    pub(crate) superseded: AtomicU64,
    pub(crate) datagrams_sent: AtomicU64,
    pub(crate) datagrams_unsent: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }
}

/// A session's shared state: what the connection task, the application's handles and the
/// server hold (see the module docs).
pub(crate) struct SessionCore {
    pub(crate) player_id: PlayerId,
    state: Mutex<State>,
    /// Wakes the connection task (one waiter: `notify_one` keeps a permit).
    wake_connection: Notify,
    wake_recv: PerChannel<Notify>,
    wake_lane: Notify,
    wake_room: PerChannel<Notify>,
    /// Woken (all waiters) when a connection is attached or lost and when the session ends.
    /// (A `Notify` and the value below rather than a watch channel, which costs 370 bytes.)
    status_changed: Notify,
    /// Why the session ended, once it has (set once, by `publish_end`).
    ended: std::sync::OnceLock<Disconnect>,
    /// Created on the first subscription: most sessions never have a subscriber.
    events: std::sync::OnceLock<broadcast::Sender<SessionEvent>>,
    pub(crate) counters: Counters,
    stats: Mutex<StatsWindow>,
    pub(crate) side: SideHandle,
    /// The client's credential for its next `RESUME`.
    credential: Mutex<Option<Token>>,
    /// What the server's authenticator attached to the session (server side only).
    pub(crate) user_data: Option<UserData>,
    /// The application's reference, once it has one (for finding the session by player ID
    /// without making a second reference whose drop would close it).
    app: Mutex<Weak<AppRef>>,
}

impl std::fmt::Debug for SessionCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCore")
            .field("player_id", &self.player_id)
            .finish_non_exhaustive()
    }
}

impl SessionCore {
    pub(crate) fn new(
        player_id: PlayerId,
        config: impl Into<Arc<SessionConfig>>,
        side: SideHandle,
        user_data: Option<UserData>,
    ) -> Arc<Self> {
        Arc::new(SessionCore {
            player_id,
            state: Mutex::new(State {
                machine: SessionMachine::new(config, now()),
                link: None,
                writers: None,
                remote: None,
            }),
            wake_connection: Notify::new(),
            wake_recv: PerChannel::default(),
            wake_lane: Notify::new(),
            wake_room: PerChannel::default(),
            status_changed: Notify::new(),
            ended: std::sync::OnceLock::new(),
            events: std::sync::OnceLock::new(),
            counters: Counters::default(),
            stats: Mutex::new(StatsWindow::new()),
            side,
            credential: Mutex::new(None),
            user_data,
            app: Mutex::new(Weak::new()),
        })
    }

    /// Records the application's reference to the session (when it is handed out).
    pub(crate) fn set_app(&self, app: &Arc<AppRef>) {
        *lock(&self.app) = Arc::downgrade(app);
    }

    /// The application's reference, if the session was handed out and is still referenced.
    pub(crate) fn app(&self) -> Option<Arc<AppRef>> {
        lock(&self.app).upgrade()
    }

    /// Runs `change` on the machine under the lock, then, with the lock released, closes the
    /// connections it gave up, wakes whoever its changes concern, and reports its events and
    /// its end. Every change to the session goes through here.
    pub(crate) fn update<R>(&self, change: impl FnOnce(&mut SessionMachine, Instant) -> R) -> R {
        let now = now();
        let mut closes = Vec::new();
        let mut events = Vec::new();
        let (result, wakes, ended) = {
            let mut state = lock(&self.state);
            let result = change(&mut state.machine, now);
            while let Some((generation, reason, message)) = state.machine.poll_close() {
                if let Some((_, handle)) = state.link.take_if(|(g, _)| *g == generation) {
                    closes.push((handle, reason, message));
                }
            }
            if state
                .link
                .as_ref()
                .is_some_and(|(g, _)| !state.machine.is_attached(*g))
            {
                // Detached without a close of ours: the transport already ended it.
                state.link = None;
            }
            if state
                .writers
                .as_ref()
                .is_some_and(|(g, _)| !state.machine.is_attached(*g))
            {
                state.writers = None;
            }
            while let Some(event) = state.machine.poll_event() {
                events.push(event);
            }
            let wakes = state.machine.take_wakes();
            let ended = wakes
                .state
                .then(|| state.machine.ended().cloned())
                .flatten();
            (result, wakes, ended)
        };
        for (handle, reason, message) in closes {
            handle.close(reason, &message);
        }
        if wakes.connection {
            self.wake_connection.notify_one();
        }
        for kind in [ChannelKind::Main, ChannelKind::Feed] {
            if *wakes.recv.get(kind) {
                self.wake_recv.get(kind).notify_waiters();
            }
            if *wakes.room.get(kind) {
                self.wake_room.get(kind).notify_waiters();
            }
        }
        if wakes.lane {
            self.wake_lane.notify_waiters();
        }
        if wakes.state {
            self.status_changed.notify_waiters();
        }
        for event in events {
            match event {
                Event::Lost(why) => self.emit(SessionEvent::ConnectionLost { why }),
                Event::Confirmed => {
                    if let Some(owner) = self.owner() {
                        owner.confirmed(self.player_id);
                    }
                }
            }
        }
        if let Some(why) = ended {
            self.publish_end(why);
        }
        result
    }

    /// Tells everyone, once, that the session ended.
    fn publish_end(&self, why: Disconnect) {
        if self.ended.set(why.clone()).is_ok() {
            self.status_changed.notify_waiters();
            info!(player_id = %self.player_id, %why, "session ended");
            if let Some(owner) = self.owner() {
                owner.session_ended(self.player_id, &why);
            }
        }
    }

    /// Waits on `notify` until `check` returns a value. The wait is registered before each
    /// look, so a wake-up between the look and the wait is not lost; cancel-safe whenever
    /// `check` is (it changes the machine only when it returns a value).
    pub(crate) async fn wait_for<T>(
        &self,
        notify: &Notify,
        mut check: impl FnMut(&mut SessionMachine, Instant) -> Option<T>,
    ) -> T {
        loop {
            let mut notified = pin!(notify.notified());
            notified.as_mut().enable();
            if let Some(value) = self.update(&mut check) {
                return value;
            }
            notified.await;
        }
    }

    /// The connection task's wake-up.
    pub(crate) fn connection_notified(&self) -> impl Future<Output = ()> + '_ {
        self.wake_connection.notified()
    }

    fn owner(&self) -> Option<Arc<dyn SessionOwner>> {
        match &self.side {
            SideHandle::Server { owner } => owner.upgrade(),
            SideHandle::Client { .. } => None,
        }
    }

    /// The client's endpoint; `None` on a server.
    pub(crate) fn endpoint(&self) -> Option<&quinn::Endpoint> {
        match &self.side {
            SideHandle::Client { endpoint } => Some(endpoint),
            SideHandle::Server { .. } => None,
        }
    }

    // ----- state -----

    /// Why the session ended, if it has.
    pub(crate) fn ended(&self) -> Option<Disconnect> {
        self.ended.get().cloned()
    }

    /// Resolves when a connection is attached or lost or the session ends, from the moment
    /// it is [enabled](tokio::sync::futures::Notified::enable) or first polled.
    pub(crate) fn status_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.status_changed.notified()
    }

    /// Waits until the session ends and says why.
    pub(crate) async fn wait_ended(&self) -> Disconnect {
        loop {
            let mut changed = pin!(self.status_changed());
            changed.as_mut().enable();
            if let Some(why) = self.ended() {
                return why;
            }
            changed.await;
        }
    }

    /// The attached connection's handle, if one is attached.
    pub(crate) fn link(&self) -> Option<Arc<dyn LinkHandle>> {
        lock(&self.state).link.as_ref().map(|(_, h)| h.clone())
    }

    /// The peer's current address, if connected.
    pub(crate) fn remote_address(&self) -> Option<SocketAddr> {
        self.link().map(|l| l.remote_address())
    }

    /// When the session lost its last connection, if it has none now.
    pub(crate) fn lost_at(&self) -> Option<Instant> {
        lock(&self.state).machine.lost_at()
    }

    /// The next message expected from the peer on `kind`.
    pub(crate) fn inbound_next(&self, kind: ChannelKind) -> u64 {
        lock(&self.state).machine.inbound_next(kind)
    }

    /// The credential for the next `RESUME` (client side).
    pub(crate) fn credential(&self) -> Option<Token> {
        *lock(&self.credential)
    }

    pub(crate) fn set_credential(&self, credential: Token) {
        *lock(&self.credential) = Some(credential);
    }

    /// The largest payload the peer accepts on `kind`.
    pub(crate) fn max_payload(&self, kind: ChannelKind) -> usize {
        lock(&self.state).machine.max_payload(kind)
    }

    // ----- events and statistics -----

    /// Subscribes to the session's events.
    pub(crate) fn subscribe_events(&self) -> broadcast::Receiver<SessionEvent> {
        self.events
            .get_or_init(|| broadcast::Sender::new(EVENT_CAPACITY))
            .subscribe()
    }

    pub(crate) fn emit(&self, event: SessionEvent) {
        if let Some(owner) = self.owner() {
            owner.record(self.player_id, &event);
        }
        if let Some(events) = self.events.get() {
            let _ = events.send(event);
        }
    }

    /// Counts of what happened to the session's connections so far.
    pub(crate) fn counters(&self) -> SessionCounters {
        let counts = lock(&self.state).machine.counts();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let c = &self.counters;
        SessionCounters {
            migrations: get(&c.migrations),
            connections_lost: counts.connections_lost,
            resumes: get(&c.resumes),
            connect_0rtt: get(&c.connect_0rtt),
            resume_failures: get(&c.resume_failures),
            superseded: get(&c.superseded),
            messages_replayed: counts.messages_replayed,
            messages_lost: counts.messages_lost,
            datagrams_sent: get(&c.datagrams_sent),
            datagrams_unsent: get(&c.datagrams_unsent).saturating_add(counts.datagrams_orphaned),
            datagrams_superseded: counts.datagrams_superseded,
            datagrams_expired: counts.datagrams_expired,
            datagrams_delivered: counts.datagrams_delivered,
            datagrams_stale: counts.datagrams_stale,
            datagrams_too_old: counts.datagrams_too_old,
        }
    }

    /// The liveness check and statistics sample of the attached connection, made from outside
    /// its task (a server's one timer for all its sessions, `SessionConfig::shared_checks`):
    /// samples the transport (outside the session's lock: quinn's own is taken inside), runs
    /// the dead-path rule, records the statistics, notices a migration and gives back idle
    /// writers' memory. Never waits.
    pub(crate) fn check_link(&self) {
        let (generation, handle, writers) = {
            let state = lock(&self.state);
            let Some((generation, handle)) = state.link.as_ref() else {
                return;
            };
            let writers = state.writers.as_ref().map(|(_, w)| w.clone());
            (*generation, handle.clone(), writers)
        };
        // Lock order: the writers before the session, never both here.
        if let Some(writers) = writers {
            writers.release_idle();
        }
        let path = handle.sample();
        let now = self.update(|m, now| {
            m.check_liveness(generation, path.received_datagrams, now);
            now
        });
        self.sample(now, generation, &path);
        self.note_remote(generation, handle.remote_address());
    }

    /// The peer of connection `generation` is at `remote` now: a change from the last address
    /// seen is a migration, counted and told.
    pub(crate) fn note_remote(&self, generation: u64, remote: SocketAddr) {
        let from = {
            let mut state = lock(&self.state);
            if state.link.as_ref().is_none_or(|(g, _)| *g != generation) {
                return;
            }
            match state.remote.replace(remote) {
                Some(from) if from != remote => from,
                _ => return,
            }
        };
        Counters::bump(&self.counters.migrations, 1);
        self.emit(SessionEvent::Migrated { from, to: remote });
    }

    /// Records a statistics sample of the connection of `generation`.
    pub(crate) fn sample(&self, now: Instant, generation: u64, path: &PathSample) {
        let counts = lock(&self.state).machine.counts();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let sample = Sample {
            connection: generation,
            rtt: path.rtt,
            cwnd: path.cwnd,
            sent_bytes: path.sent_bytes,
            received_bytes: path.received_bytes,
            sent_packets: path.sent_packets,
            lost_packets: path.lost_packets,
            sent_messages: counts
                .messages_sent
                .saturating_add(get(&self.counters.datagrams_sent)),
            received_messages: counts
                .messages_received
                .saturating_add(counts.datagrams_delivered),
        };
        lock(&self.stats).record(now, sample);
    }

    /// What the session holds in memory now.
    pub(crate) fn buffers(&self) -> SessionBuffers {
        let state = lock(&self.state);
        let m = &state.machine;
        let channel = |kind| ChannelBuffers {
            unsent: m.unsent_bytes(kind),
            unacknowledged: m.replay_bytes(kind),
            unread: m.queued_bytes(kind),
        };
        SessionBuffers {
            main: channel(ChannelKind::Main),
            feed: channel(ChannelKind::Feed),
            lane_unread: m.lane_queued_bytes(),
        }
    }

    /// The session's statistics now.
    pub(crate) fn stats(&self) -> SessionStats {
        let summary = lock(&self.stats).summary();
        SessionStats {
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
            counters: self.counters(),
        }
    }

    // ----- connections -----

    /// Makes `link` the session's connection, planning each channel's replay. On failure (the
    /// session ended, or the peer's position claims messages never sent) the new connection is
    /// closed with the reason.
    pub(crate) fn attach(
        &self,
        handle: Arc<dyn LinkHandle>,
        attach: AttachLink,
    ) -> Result<Attached, Disconnect> {
        let result = self.update(|m, now| m.attach(now, attach));
        match &result {
            Ok(attached) => {
                let mut state = lock(&self.state);
                if state.machine.is_attached(attached.generation) {
                    state.remote = Some(handle.remote_address());
                    state.link = Some((attached.generation, handle));
                } else {
                    drop(state);
                    handle.close(Reason::Normal, "session ended");
                }
            }
            Err(Disconnect::Locally { reason, message }) => handle.close(*reason, message),
            Err(_) => handle.close(Reason::Normal, "session ended"),
        }
        result
    }

    /// The connection task of `generation` shares its writers, for sends that write at once.
    pub(crate) fn set_writers(&self, generation: u64, writers: Arc<dyn InlineWrite>) {
        let mut state = lock(&self.state);
        if state.machine.is_attached(generation) {
            state.writers = Some((generation, writers));
        }
    }

    /// Runs `queue` (once) on the machine, then writes what `kind` holds at once if the
    /// connection's writer is idle (in the same lock of the session), else wakes the connection
    /// task to write it. Returns what `queue` refused.
    fn queue_then_write(
        &self,
        kind: ChannelKind,
        queue: &mut dyn FnMut(&mut SessionMachine) -> Result<(), Refused>,
    ) -> Result<(), Refused> {
        let writers = lock(&self.state).writers.as_ref().map(|(_, w)| w.clone());
        let written = match writers {
            Some(writers) => writers.queue_and_write(self, kind, queue)?,
            None => {
                self.update(|m, _| queue(m))?;
                false
            }
        };
        if !written {
            self.wake_connection.notify_one();
        }
        Ok(())
    }

    /// Gives up the attached connection without ending the session, closing it with `reason`.
    /// Returns whether there was one.
    pub(crate) fn detach(&self, reason: Reason, message: &str) -> bool {
        self.update(|m, now| m.detach(now, reason, message))
    }

    /// Server: the next attach resumes the session with a new credential to be confirmed.
    pub(crate) fn expect_confirmation(&self) {
        self.update(|m, _| m.expect_confirmation());
    }

    /// Sends an acknowledgement on main at once: the packet that shows a server a client's new
    /// path.
    pub(crate) fn poke(&self) {
        self.update(|m, now| m.ack_now(ChannelKind::Main, now));
    }

    /// Server: after the connection was lost, waits for the client to resume the session
    /// (another connection task takes over then), or for the grace period to end it.
    pub(crate) async fn await_resume(&self) {
        loop {
            let mut changed = pin!(self.status_changed());
            changed.as_mut().enable();
            let (attached, ended, timeout) = {
                let state = lock(&self.state);
                let m = &state.machine;
                (
                    m.attached().is_some(),
                    m.ended().is_some(),
                    m.poll_timeout(),
                )
            };
            if attached || ended {
                return;
            }
            let Some(timeout) = timeout else {
                // Nothing can end the wait but an attach or the end.
                changed.await;
                continue;
            };
            tokio::select! {
                biased;
                () = changed => {}
                () = tokio::time::sleep_until(timeout.into()) => {
                    self.update(|m, now| m.handle_timeout(now));
                }
            }
        }
    }

    // ----- ending -----

    /// Closes the session at once, from this side.
    pub(crate) fn close(&self, reason: Reason, message: &str) {
        self.update(|m, _| m.close(reason, message));
    }

    /// Ends the session with `why`, closing its connection with `reason`.
    pub(crate) fn end_with(&self, why: Disconnect, reason: Reason, message: &str) {
        self.update(|m, _| m.end_with(why, reason, message));
    }

    /// Closes the session once the peer has what was sent (at most [`CLOSE_LINGER`]), then, on
    /// a client, waits (at most as long again) for the close to go out.
    pub(crate) async fn close_gracefully(&self, reason: Reason, message: &str) {
        self.update(|m, now| m.close_gracefully(now, reason, message, CLOSE_LINGER));
        // The machine ends the session at the linger at the latest; the margin covers a
        // connection task that is slow to run its timer.
        let wait = self.wait_ended();
        let bound = CLOSE_LINGER.saturating_add(Duration::from_millis(500));
        if tokio::time::timeout(bound, wait).await.is_err() {
            self.close(reason, message);
        }
        if let Some(endpoint) = self.endpoint() {
            drain(endpoint).await;
        }
    }

    // ----- the application's data -----

    /// Sends `payload` on `kind`, waiting while its send budget is full. Cancel-safe: a
    /// cancelled send queued nothing.
    pub(crate) async fn send(&self, kind: ChannelKind, payload: Bytes) -> Result<(), SendError> {
        self.wait_for(self.wake_room.get(kind), |m, _| {
            match m.send(kind, payload.clone()) {
                Err(Refused::Full) => None,
                other => Some(other),
            }
        })
        .await
        .map_err(send_error)?;
        // Queued already: nothing left to refuse.
        self.queue_then_write(kind, &mut |_| Ok(())).unwrap_or(());
        Ok(())
    }

    /// Sends `payload` on `kind` if its budget has room now; [`SendError::Blocked`] otherwise.
    /// Queues it and writes it under one lock of the session when the stream is idle.
    pub(crate) fn try_send(&self, kind: ChannelKind, payload: Bytes) -> Result<(), SendError> {
        let mut payload = Some(payload);
        self.queue_then_write(kind, &mut |m| {
            m.send(kind, payload.take().unwrap_or_default()).map(drop)
        })
        .map_err(send_error)
    }

    /// The next message on `kind`. Cancel-safe.
    pub(crate) async fn recv(&self, kind: ChannelKind) -> Result<Bytes, RecvError> {
        self.wait_for(self.wake_recv.get(kind), |m, _| m.recv(kind))
            .await
            .map_err(recv_error)
    }

    /// The next message on `kind` if one is ready, without waiting.
    pub(crate) fn try_recv(&self, kind: ChannelKind) -> Option<Result<Bytes, RecvError>> {
        self.update(|m, _| m.recv(kind))
            .map(|r| r.map_err(recv_error))
    }

    /// Every message on `kind` ready now, under one lock: up to and including the first
    /// error.
    pub(crate) fn drain(&self, kind: ChannelKind) -> Vec<Result<Bytes, RecvError>> {
        let taken = self.update(|m, _| {
            let mut taken = Vec::new();
            while let Some(next) = m.recv(kind) {
                let failed = next.is_err();
                taken.push(next);
                if failed {
                    break;
                }
            }
            taken
        });
        taken.into_iter().map(|r| r.map_err(recv_error)).collect()
    }

    /// The application dropped `kind`'s receiving half.
    pub(crate) fn discard(&self, kind: ChannelKind) {
        self.update(|m, _| m.discard(kind));
    }

    /// Sends `payload` in one lane datagram on the current connection, without waiting
    /// (PROTOCOL.md §13). Between connections the message is dropped (and counted).
    pub(crate) fn send_lane(&self, payload: &[u8]) -> Result<(), SendError> {
        // The transport's state first, outside the session's lock (its own lock is taken
        // inside): the machine decides with it whether the message goes now or waits.
        let link = self.link();
        let (queued, max) = link
            .as_ref()
            .map_or((0, None), |l| (l.datagram_queued(), l.max_datagram_size()));
        let sent = self
            .update(|m, now| m.send_lane(payload, queued, max, now))
            .map_err(SendError::Closed)?;
        let too_large = |max: usize| SendError::TooLarge {
            len: payload.len(),
            max,
        };
        match (sent, link) {
            (LaneSend::Send(datagram), Some(link)) => match link.send_datagram(datagram) {
                Ok(()) => Counters::bump(&self.counters.datagrams_sent, 1),
                Err(DatagramRefused::TooLarge) => {
                    // The path's datagram size shrank between the two looks.
                    let max = link.max_datagram_size().unwrap_or(0);
                    return Err(too_large(max.saturating_sub(LANE_HEADER_MAX)));
                }
                // Lost meanwhile, or refused by the peer: like sending between connections.
                Err(DatagramRefused::Unavailable) => {
                    Counters::bump(&self.counters.datagrams_unsent, 1);
                }
            },
            (LaneSend::TooLarge { max }, _) => return Err(too_large(max)),
            // The connection task hands it over when QUIC can take it.
            (LaneSend::Waiting, _) => {}
            (LaneSend::NoConnection | LaneSend::Send(_), _) => {
                Counters::bump(&self.counters.datagrams_unsent, 1);
            }
        }
        Ok(())
    }

    /// The largest lane payload that fits one datagram now.
    pub(crate) fn lane_max_payload(&self) -> Option<usize> {
        let (link, seq, now_ms) = {
            let state = lock(&self.state);
            let link = state.link.as_ref().map(|(_, h)| h.clone());
            (
                link,
                state.machine.lane_peek(),
                state.machine.clock_ms(now()),
            )
        };
        link?
            .max_datagram_size()?
            .checked_sub(lane_header_len(seq, now_ms))
    }

    /// The next lane message. Cancel-safe.
    pub(crate) async fn recv_lane(&self) -> Result<Bytes, RecvError> {
        self.wait_for(&self.wake_lane, |m, _| m.lane_recv())
            .await
            .map_err(recv_error)
    }

    /// A lane message already received, if any (never the end).
    pub(crate) fn take_lane(&self) -> Option<Bytes> {
        self.update(|m, _| m.lane_take())
    }

    /// The next lane message if one is ready.
    pub(crate) fn try_recv_lane(&self) -> Option<Result<Bytes, RecvError>> {
        self.update(|m, _| m.lane_recv())
            .map(|r| r.map_err(recv_error))
    }
}

fn send_error(refused: Refused) -> SendError {
    match refused {
        Refused::Full => SendError::Blocked,
        Refused::TooLarge { len, max } => SendError::TooLarge { len, max },
        Refused::Ended(why) => SendError::Closed(why),
    }
}

fn recv_error(received: Received) -> RecvError {
    match received {
        Received::Gap(missed) => RecvError::Gap { missed },
        Received::Violation { reason, message } => {
            debug!(%reason, %message, "peer violated the protocol; closed");
            RecvError::Violation { reason, message }
        }
        Received::Closed(why) => RecvError::Closed(why),
    }
}

/// Keeps the session open while any application handle exists; the last one dropped closes it
/// gracefully.
#[derive(Debug)]
pub(crate) struct AppRef {
    pub(crate) core: Arc<SessionCore>,
    /// The runtime the session runs on, for the graceful close of a session dropped on a
    /// thread outside it (a game engine's).
    runtime: Option<tokio::runtime::Handle>,
}

impl AppRef {
    /// The application's reference to `core`; made inside the runtime the session runs on.
    pub(crate) fn new(core: Arc<SessionCore>) -> Self {
        AppRef {
            core,
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }
}

impl Drop for AppRef {
    fn drop(&mut self) {
        if self.core.ended().is_some() {
            return;
        }
        // The session's own runtime first: a runtime current here may be another, short-lived
        // one that never runs the close.
        let runtime = self
            .runtime
            .clone()
            .or_else(|| tokio::runtime::Handle::try_current().ok());
        let Some(runtime) = runtime else {
            // No runtime at all: nothing could deliver what is queued.
            return self.core.close(Reason::Normal, "");
        };
        let guard = CloseUnlessDone(Some(self.core.clone()));
        runtime.spawn(async move {
            let mut guard = guard;
            if let Some(core) = guard.0.clone() {
                core.close_gracefully(Reason::Normal, "").await;
            }
            guard.0 = None;
        });
    }
}

/// Closes the session at once if dropped before its graceful close finished: a runtime that
/// shuts down drops its tasks (or never runs one spawned on it afterwards).
struct CloseUnlessDone(Option<Arc<SessionCore>>);

impl Drop for CloseUnlessDone {
    fn drop(&mut self) {
        if let Some(core) = self.0.take() {
            core.close(Reason::Normal, "");
        }
    }
}

/// Logs one session's statistics every `every` until the session ends.
pub(crate) async fn log_stats(core: Weak<SessionCore>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(core) = core.upgrade() else { return };
        if core.ended().is_some() {
            return;
        }
        let s = core.stats();
        tracing::info!(
            target: "quicfeed::stats",
            player_id = %core.player_id,
            rtt_ms = s.rtt.map(|d| d.as_secs_f64() * 1000.0),
            rtt_p99_ms = s.rtt_p99.map(|d| d.as_secs_f64() * 1000.0),
            jitter_ms = s.jitter.as_secs_f64() * 1000.0,
            loss_percent = s.loss_rate * 100.0,
            sent_kbps = s.sent_bytes_per_s * 8.0 / 1000.0,
            received_kbps = s.received_bytes_per_s * 8.0 / 1000.0,
            cwnd = s.congestion_window,
            "session stats"
        );
    }
}
