//! The server driver: accepts connections and runs each one's handshake over quinn, then the
//! session it belongs to.
//!
//! Two tasks per connection, one after the other, both in the accept loop's set. The opening
//! drives [`ServerHandshake`] (deciding nothing itself): a new session is handed to the
//! application, a resume is attached to its existing session. The session's life then runs in a
//! task of its own, which holds only what it needs (the opening's state is gone with its task):
//! the connection task for as long as the connection is the session's, and, if it is lost, the
//! wait for the client's return until the grace period ends.
//!
//! A shutdown is a request on a watch channel, which the accept loop and the openings see, and
//! a close of every established session, which ends their tasks as any close does (see
//! [`ServerShared::request_shutdown`]).

use std::collections::HashMap;
use std::future::pending;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::VarInt;
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::connection::{self, ChannelStream, Streams};
use super::endpoint::CLIENT_STREAMS;
use super::link::Link;
use super::now;
use super::session::{
    AppRef, Counters as SessionCounters, SessionCore, SessionOwner, SideHandle, lock,
};
use super::stream::{FrameReader, FrameWriter, ReadFailure};
use super::webtransport;
use crate::auth::{AuthDecision, AuthRequest, PendingDecision, UserData};
use crate::config::ServerConfig;
use crate::error::Disconnect;
use crate::events::{ServerCounters, ServerEvent, SessionEvent};
use crate::protocol::codec::{decode_message, encode_message};
use crate::protocol::{
    Admission, AdmissionLimits, Admit, AttachLink, ChannelKind, HANDSHAKE_FRAME_LIMIT, LinkEnd,
    Message, Place, PlayerId, Reason, ResumeRequest, ServerEstablished, ServerHandshake,
    ServerHandshakeConfig, ServerOutput, SessionConfig, SessionRegistry, Side, SystemEntropy,
    Token, random_token, tokens_equal,
};

/// Longest wait for the client to acknowledge a `CONN_FAILED` before closing anyway.
const FAIL_LINGER: Duration = Duration::from_millis(500);

/// Capacity of the server-wide event channel.
const EVENT_CAPACITY: usize = 1024;

/// A shutdown request: the reason every connection is closed with.
#[derive(Debug, Clone)]
pub(crate) struct Shutdown {
    pub(crate) reason: Reason,
    pub(crate) message: String,
}

/// Server-wide counters.
#[derive(Debug, Default)]
struct Counters {
    sessions_established: AtomicU64,
    sessions_ended: AtomicU64,
    sessions_expired: AtomicU64,
    migrations: AtomicU64,
    connections_lost: AtomicU64,
    resumes: AtomicU64,
    resumes_refused: AtomicU64,
    superseded: AtomicU64,
    retries_sent: AtomicU64,
    attempts_dropped: AtomicU64,
    handshakes_evicted: AtomicU64,
    browsers_refused: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// State shared by the accept loop, the connection tasks, the sessions and the
/// [`Server`](crate::Server).
pub(crate) struct ServerShared {
    pub(crate) config: ServerConfig,
    /// Every session's configuration (from `config`), shared.
    session_config: Arc<SessionConfig>,
    registry: Mutex<SessionRegistry<Arc<SessionCore>>>,
    pending: Mutex<Pending>,
    pub(crate) shutdown: watch::Sender<Option<Shutdown>>,
    events: broadcast::Sender<ServerEvent>,
    counters: Counters,
    /// Woken whenever a session is queued for the application to accept.
    pub(crate) session_queued: Notify,
    /// Connections quinn still holds that no connection task serves, as the accept loop last
    /// counted them: browser setups that failed while the browser held an HTTP/3 stream open
    /// (see [`open`]), and connections still draining after their close.
    untracked_connections: AtomicUsize,
    /// Connection tasks that hold no connection: their session lost it and waits for a resume.
    waiting_for_resume: AtomicUsize,
}

impl ServerShared {
    pub(crate) fn new(config: ServerConfig) -> Self {
        let registry = Mutex::new(
            SessionRegistry::new(config.max_sessions)
                .per_address_limit(config.max_sessions_per_address),
        );
        let pending = Mutex::new(Pending {
            admission: Admission::new(AdmissionLimits {
                max_pending: config.max_pending_handshakes,
                max_pending_per_address: config.max_pending_per_address,
                retry_threshold: config.retry_threshold,
                min_evictable_age: config.min_evictable_age,
            }),
            evictors: HashMap::new(),
        });
        let session_config = Arc::new(super::session::session_config(
            Side::Server,
            &config.transport,
            config.frame_limits,
            Some(config.grace_period),
        ));
        ServerShared {
            config,
            session_config,
            registry,
            pending,
            shutdown: watch::Sender::new(None),
            events: broadcast::Sender::new(EVENT_CAPACITY),
            counters: Counters::default(),
            session_queued: Notify::new(),
            untracked_connections: AtomicUsize::new(0),
            waiting_for_resume: AtomicUsize::new(0),
        }
    }

    /// The registry; a panic elsewhere while holding the lock does not make it unusable.
    pub(crate) fn registry(&self) -> MutexGuard<'_, SessionRegistry<Arc<SessionCore>>> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Statistics over the established sessions.
    pub(crate) fn stats(&self) -> crate::stats::ServerStats {
        let sessions: Vec<_> = self
            .established_sessions()
            .iter()
            .map(|core| core.stats())
            .collect();
        crate::stats::ServerStats::over(&sessions, self.counters())
    }

    /// The established session of `player`, if there is one now.
    pub(crate) fn established_session(&self, player: PlayerId) -> Option<Arc<SessionCore>> {
        let core = self.registry().get(player)?.clone();
        core.ended().is_none().then_some(core)
    }

    /// Asks for a shutdown with `reason` (the first request wins) and closes every
    /// established session with it: their connection tasks and grace periods end as the
    /// sessions do. A session established after this sweep sees the request when its
    /// handshake hands it over (see [`establish`]), so none is left open.
    pub(crate) fn request_shutdown(&self, reason: Reason, message: &str) {
        let requested = self.shutdown.send_if_modified(|current| {
            current.is_none() && {
                *current = Some(Shutdown {
                    reason,
                    message: message.to_owned(),
                });
                true
            }
        });
        if requested {
            // The list is taken under the registry's lock and closed outside it: a session
            // that ends gives its place back through that lock.
            for core in self.established_sessions() {
                core.close(reason, message);
            }
        }
    }

    /// The established sessions right now (the registry's lock is not held afterwards).
    pub(crate) fn established_sessions(&self) -> Vec<Arc<SessionCore>> {
        let registry = self.registry();
        // Sized up front: a filtered iterator gives `collect` no length, and the list is made
        // for every broadcast and every liveness round.
        let mut sessions = Vec::with_capacity(registry.len());
        sessions.extend(registry.established().map(|(_, core)| core.clone()));
        sessions
    }

    pub(crate) fn subscribe_events(&self) -> broadcast::Receiver<ServerEvent> {
        self.events.subscribe()
    }

    pub(crate) fn counters(&self) -> ServerCounters {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServerCounters {
            sessions_established: get(&c.sessions_established),
            sessions_ended: get(&c.sessions_ended),
            sessions_expired: get(&c.sessions_expired),
            migrations: get(&c.migrations),
            connections_lost: get(&c.connections_lost),
            resumes: get(&c.resumes),
            resumes_refused: get(&c.resumes_refused),
            superseded: get(&c.superseded),
            retries_sent: get(&c.retries_sent),
            attempts_dropped: get(&c.attempts_dropped),
            handshakes_evicted: get(&c.handshakes_evicted),
            browsers_refused: get(&c.browsers_refused),
            handshakes_in_progress: u64::try_from(lock(&self.pending).admission.pending())
                .unwrap_or(u64::MAX),
        }
    }

    fn session_config(&self) -> Arc<SessionConfig> {
        self.session_config.clone()
    }
}

impl SessionOwner for ServerShared {
    fn record(&self, player_id: PlayerId, event: &SessionEvent) {
        let counters = &self.counters;
        match event {
            SessionEvent::Migrated { .. } => bump(&counters.migrations),
            SessionEvent::ConnectionLost { .. } => bump(&counters.connections_lost),
            SessionEvent::Resumed { .. } => bump(&counters.resumes),
            SessionEvent::Superseded => bump(&counters.superseded),
            _ => {}
        }
        let _ = self.events.send(ServerEvent {
            player_id,
            event: event.clone(),
        });
    }

    fn session_ended(&self, player_id: PlayerId, why: &Disconnect) {
        self.registry().release(player_id);
        bump(&self.counters.sessions_ended);
        if matches!(
            why,
            Disconnect::Locally {
                reason: Reason::SessionExpired,
                ..
            }
        ) {
            bump(&self.counters.sessions_expired);
        }
    }

    fn confirmed(&self, player_id: PlayerId) {
        self.registry().confirm(player_id);
    }
}

/// The handshakes in progress: the admission's account of them, and how to end each one early.
struct Pending {
    admission: Admission,
    /// Fired to end a handshake that was evicted to make room (see [`Admit::AcceptEvicting`]).
    evictors: HashMap<Place, oneshot::Sender<()>>,
}

/// An accepted connection attempt's place among the handshakes in progress; given back when its
/// handshake ends, whichever way.
struct PendingTicket {
    shared: Arc<ServerShared>,
    place: Place,
}

impl Drop for PendingTicket {
    fn drop(&mut self) {
        let mut pending = lock(&self.shared.pending);
        pending.admission.finished(self.place);
        pending.evictors.remove(&self.place);
    }
}

/// Holds a player's registry slot during its first handshake; the session takes it over once
/// established ([`Slot::keep`]), otherwise dropping the slot frees it.
struct Slot {
    shared: Arc<ServerShared>,
    player_id: PlayerId,
    kept: bool,
    /// What the authenticator attached to the session.
    data: Option<UserData>,
}

impl Slot {
    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.kept {
            self.shared.registry().release(self.player_id);
        }
    }
}

/// Accepts connections until shutdown, then waits for every connection task to end.
pub(crate) async fn accept_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<ServerShared>,
    sessions: mpsc::Sender<AppRef>,
) {
    let mut tasks = JoinSet::new();
    let mut shutdown = shared.shutdown.subscribe();
    // One timer for every session's liveness check and statistics sample (PROTOCOL.md §12.1):
    // a session's connection task then wakes only for its own work, not several times a second
    // to look at a counter. A round costs about a microsecond per session and never waits.
    let mut checks = tokio::time::interval(shared.session_config.check_interval());
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Biased, so that runs replay in the same order (simulations); finished tasks and the
        // shutdown go first, so a flood of attempts cannot hold either up.
        tokio::select! {
            biased;
            _ = shutdown_signal(&mut shutdown) => break,
            _ = checks.tick() => {
                for core in shared.established_sessions() {
                    core.check_link();
                }
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                on_task_end(&mut tasks, &shared, done);
            }
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    // Every task holds one connection, except those whose session waits for a
                    // resume (and, for an instant, one not yet accepted): what quinn holds
                    // beyond them, no task can close.
                    let holding = tasks.len().saturating_sub(
                        shared.waiting_for_resume.load(Ordering::Relaxed),
                    );
                    let untracked = endpoint.open_connections().saturating_sub(holding);
                    shared.untracked_connections.store(untracked, Ordering::Relaxed);
                    match admit(&shared, &incoming) {
                        Ok((ticket, evicted)) => {
                            // Boxed: the task's future keeps its arguments' slots for as long
                            // as it lives (the whole session), and an `Incoming` is 384 bytes.
                            let incoming = Box::new(incoming);
                            tasks.spawn(open(incoming, ticket, evicted, shared.clone(), sessions.clone()));
                        }
                        Err(refusal) => refuse_politely(&shared, incoming, refusal),
                    }
                }
                None => break,
            },
        }
    }
    drop(sessions);
    // Sessions opened from here on start their life too: one opened after a shutdown was
    // closed by it and ends at once (a browser's still says its farewell).
    while let Some(done) = tasks.join_next().await {
        on_task_end(&mut tasks, &shared, done);
    }
    // Every sender of the queue is gone: accepts waiting for a session see it closed (an
    // endpoint that failed ends the loop without a shutdown to wake them).
    shared.session_queued.notify_waiters();
    // Every connection has been closed with the shutdown's reason; refuse whatever comes next.
    let reason = shared
        .shutdown
        .borrow()
        .clone()
        .map_or(Reason::ServerShutdown, |s| s.reason);
    endpoint.close(reason.code().into(), reason.describe().as_bytes());
}

/// How an attempt the admission does not take on is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// A stateless Retry: the client proves its address, then tries again.
    Retry,
    /// Its packet is dropped: the client tries again after its probe timeout.
    Drop,
}

/// Decides about a new connection attempt (see [`Admission`]): `Ok` takes it on, with its
/// place and what tells its task that the place was taken back; `Err` says how to refuse it.
/// At the cap, this evicts the oldest handshake in progress.
fn admit(
    shared: &Arc<ServerShared>,
    incoming: &quinn::Incoming,
) -> Result<(PendingTicket, oneshot::Receiver<()>), Refusal> {
    let ip = incoming.remote_address().ip();
    let validated = incoming.remote_address_validated() || !incoming.may_retry();
    let mut pending = lock(&shared.pending);
    let place = match pending.admission.consider(ip, validated, now()) {
        Admit::Accept(place) => place,
        Admit::AcceptEvicting { place, evicted } => {
            if let Some(evict) = pending.evictors.remove(&evicted) {
                // The task may have ended on its own meanwhile; then there is nothing to end.
                let _ = evict.send(());
            }
            bump(&shared.counters.handshakes_evicted);
            place
        }
        Admit::Retry => return Err(Refusal::Retry),
        Admit::DropOverloaded | Admit::DropAddressBusy => return Err(Refusal::Drop),
    };
    let (evict, evicted) = oneshot::channel();
    pending.evictors.insert(place, evict);
    let ticket = PendingTicket {
        shared: shared.clone(),
        place,
    };
    Ok((ticket, evicted))
}

/// Refuses an attempt as [`admit`] decided: deciding again here, from a count of handshakes
/// that may have changed since, could turn the admission's Retry into a drop.
fn refuse_politely(shared: &ServerShared, incoming: quinn::Incoming, refusal: Refusal) {
    if refusal == Refusal::Retry {
        // `retry` hands the attempt back if QUIC cannot retry it after all.
        match incoming.retry() {
            Ok(()) => return bump(&shared.counters.retries_sent),
            Err(e) => e.into_incoming().ignore(),
        }
    } else {
        // Dropping an `Incoming` would refuse it: ignore it instead.
        incoming.ignore();
    }
    bump(&shared.counters.attempts_dropped);
}

/// Resolves when shutdown is requested (never, if the server is gone without asking).
async fn shutdown_signal(rx: &mut watch::Receiver<Option<Shutdown>>) -> Shutdown {
    loop {
        if let Some(shutdown) = rx.borrow_and_update().clone() {
            return shutdown;
        }
        if rx.changed().await.is_err() {
            return pending().await;
        }
    }
}

/// A connection task's end: an opening that handed over a session starts the session's life
/// in a task of its own.
///
/// Two tasks, so that a session's task holds no more than its life needs: an async function
/// keeps a slot for everything alive across one of its waits, and the opening (QUIC, a
/// browser's HTTP/3 setup, the token handshake) holds far more than the connection task.
fn on_task_end(
    tasks: &mut JoinSet<Option<Opened>>,
    shared: &Arc<ServerShared>,
    done: Result<Option<Opened>, tokio::task::JoinError>,
) {
    match done {
        Ok(None) => {}
        Ok(Some(Opened::Native(attached))) => {
            tasks.spawn(live(shared.clone(), attached));
        }
        Ok(Some(Opened::Browser(attached))) => {
            tasks.spawn(live_browser(shared.clone(), attached));
        }
        Ok(Some(Opened::Waiting { core })) => {
            tasks.spawn(wait_for_resume(shared.clone(), core));
        }
        Err(e) => warn!(error = %e, "a connection task failed"),
    }
}

/// A connection's session once the opening phase is done.
enum Opened {
    Native(Attached<quinn::Connection>),
    /// Boxed: a browser's link is larger than a native connection's.
    Browser(Box<Attached<webtransport::WebTransportLink>>),
    /// A resume that failed after the old connection was detached: the session waits for its
    /// client, with no connection.
    Waiting {
        core: Arc<SessionCore>,
    },
}

/// A session attached to its connection, and what its connection task needs.
struct Attached<L: Link> {
    core: Arc<SessionCore>,
    generation: u64,
    conn: L,
    streams: Box<Streams<L>>,
    priorities: (i32, i32),
}

/// A connection's opening (a task of its own), from its first packet to its session attached
/// or waiting for a resume; `None` if the connection ended in it (refused, failed, evicted,
/// shut down), each way logged.
async fn open(
    incoming: Box<quinn::Incoming>,
    ticket: PendingTicket,
    evicted: oneshot::Receiver<()>,
    shared: Arc<ServerShared>,
    sessions: mpsc::Sender<AppRef>,
) -> Option<Opened> {
    let shared = &shared;
    let remote = incoming.remote_address();
    let mut attempt = Attempt {
        remote,
        deadline: super::deadline_after(shared.config.handshake_timeout),
        shutdown: shared.shutdown.subscribe(),
        evicted: Some(evicted),
        ticket,
    };
    let mut connecting = match (*incoming).accept() {
        Ok(connecting) => connecting,
        Err(e) => {
            debug!(%remote, error = %e, "connection attempt refused");
            return None;
        }
    };
    let browser = match shared.config.webtransport {
        None => false,
        Some(_) => match negotiated_alpn(&mut connecting, &mut attempt).await {
            Ok(alpn) => alpn.as_deref() == Some(webtransport::ALPN),
            Err(why) => {
                debug!(%remote, "connection attempt ended: {why}");
                return None;
            }
        },
    };
    if browser {
        // A browser setup that fails (its deadline, a refused path or origin, an eviction)
        // drops wtransport's setup, which gives no handle to close the connection with: while
        // the browser holds an HTTP/3 stream open without its header, wtransport's reader of
        // that stream keeps the connection alive. Those connections are bounded here: past
        // as many as handshakes may be in progress, new browsers are refused at once.
        let abandoned = shared.untracked_connections.load(Ordering::Relaxed);
        if !lock(&shared.pending).admission.admits_browser(abandoned) {
            bump(&shared.counters.browsers_refused);
            debug!(%remote, "browser refused: too many abandoned connections are still open");
            if let Ok((conn, _)) = connecting.into_0rtt() {
                conn.close(
                    Reason::ServerBusy.code().into(),
                    b"too many abandoned browser connections are still open; try again later",
                );
            }
            return None;
        }
        // Boxed: a browser's setup and link are larger than a native connection's, and every
        // native connection's opening would otherwise be as large.
        let link = Box::pin(open_webtransport(connecting, &mut attempt, shared)).await?;
        let farewell = link.clone();
        let opened = Box::pin(establish(link, None, attempt, shared, sessions)).await;
        return match opened {
            Established::Attached(attached) => Some(Opened::Browser(Box::new(attached))),
            // Whatever closed the refused resume's connection said its farewell first.
            Established::Waiting { core } => {
                farewell.farewell_sent().await;
                Some(Opened::Waiting { core })
            }
            Established::Failed => {
                farewell.farewell_sent().await;
                None
            }
        };
    }
    // Answer in 0.5-RTT: a resume sent in 0-RTT then costs the client one round trip. (quinn
    // always allows this on a server.) The handshake deadline below also bounds the QUIC
    // handshake: a client that never completes it sends nothing the handshake can read.
    let Ok((conn, tls_complete)) = connecting.into_0rtt() else {
        debug!(%remote, "0.5-RTT refused");
        return None;
    };
    if shared.config.webtransport.is_some() {
        // The endpoint grants every connection the streams HTTP/3 needs. QUIC cannot take a
        // grant back: a native client may still open that first grant (3 bidirectional, 3
        // unidirectional streams), but is given no more; what it opens beyond main and feed
        // shares its connection's receive window, like its own streams.
        conn.set_max_concurrent_bi_streams(VarInt::from_u32(CLIENT_STREAMS));
        conn.set_max_concurrent_uni_streams(VarInt::from_u32(0));
    }
    match establish(conn, Some(tls_complete), attempt, shared, sessions).await {
        Established::Attached(attached) => Some(Opened::Native(attached)),
        Established::Waiting { core } => Some(Opened::Waiting { core }),
        Established::Failed => None,
    }
}

/// A connection attempt's place and limits, from its first packet until its handshake ends.
pub(crate) struct Attempt {
    pub(crate) remote: SocketAddr,
    /// When the whole handshake (QUIC, HTTP/3 for a browser, and the token steps) must be done.
    pub(crate) deadline: Instant,
    pub(crate) shutdown: watch::Receiver<Option<Shutdown>>,
    /// Resolves if the server needs the attempt's place for a newer one; `None` once resolved.
    pub(crate) evicted: Option<oneshot::Receiver<()>>,
    /// Its place among the handshakes in progress, given back when dropped.
    ticket: PendingTicket,
}

impl Attempt {
    /// Resolves when a shutdown or an eviction ends the attempt (pending while neither does).
    pub(crate) async fn ended(&mut self) {
        loop {
            tokio::select! {
                biased;
                _ = shutdown_signal(&mut self.shutdown) => return,
                fired = optional(self.evicted.as_mut()), if self.evicted.is_some() => {
                    self.evicted = None;
                    // An error means the sender is gone without firing: nothing ends.
                    if fired.is_ok() {
                        return;
                    }
                }
            }
        }
    }
}

/// A browser's WebTransport session on `connecting`, once its HTTP/3 setup and its CONNECT
/// (path and origin checked) are done; `None` if it failed, was refused, or the attempt ended
/// first (its deadline, a shutdown, an eviction). A refused or abandoned connection is left
/// to quinn to close once wtransport drops its handles (see [`open`] for when it cannot).
async fn open_webtransport(
    connecting: quinn::Connecting,
    attempt: &mut Attempt,
    shared: &ServerShared,
) -> Option<webtransport::WebTransportLink> {
    let config = shared.config.webtransport.as_ref()?;
    let remote = attempt.remote;
    let setup = tokio::time::timeout_at(
        attempt.deadline.into(),
        webtransport::accept(connecting, config),
    );
    tokio::select! {
        biased;
        () = attempt.ended() => {
            debug!(%remote, "WebTransport setup ended by a shutdown or an eviction");
            None
        }
        opened = setup => match opened {
            Ok(Ok(link)) => Some(link),
            Ok(Err(e)) => {
                debug!(%remote, error = %e, "WebTransport session not opened");
                None
            }
            Err(_) => {
                debug!(%remote, "WebTransport setup not done by the handshake deadline");
                None
            }
        }
    }
}

/// The ALPN protocol the client and the server agreed on (`None` if the client offered none),
/// once the server has read the client's first flight (at once, in practice); an error says
/// why the attempt ended first: the connection failed, its deadline passed, a shutdown or an
/// eviction.
async fn negotiated_alpn(
    connecting: &mut quinn::Connecting,
    attempt: &mut Attempt,
) -> Result<Option<Vec<u8>>, &'static str> {
    let read = tokio::time::timeout_at(attempt.deadline.into(), connecting.handshake_data());
    let data = tokio::select! {
        biased;
        () = attempt.ended() => return Err("ended by a shutdown or an eviction"),
        data = read => match data {
            Ok(Ok(data)) => data,
            Ok(Err(_)) => return Err("the connection failed before its first flight was read"),
            Err(_) => return Err("no first flight by the handshake deadline"),
        },
    };
    Ok(data
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()
        .and_then(|data| data.protocol))
}

/// How the token handshake on a connection ended.
enum Established<L: Link> {
    /// The session (new or resumed) is attached to the connection.
    Attached(Attached<L>),
    /// A resume failed after the old connection was detached.
    Waiting { core: Arc<SessionCore> },
    /// The handshake failed, or the session ended before it was attached.
    Failed,
}

/// A connection whose transport is up (native, or a browser's WebTransport session), through
/// its token handshake to its session attached.
async fn establish<L: Link>(
    conn: L,
    tls_complete: Option<quinn::ZeroRttAccepted>,
    attempt: Attempt,
    shared: &Arc<ServerShared>,
    sessions: mpsc::Sender<AppRef>,
) -> Established<L> {
    let Attempt {
        remote,
        deadline,
        mut shutdown,
        evicted,
        ticket,
    } = attempt;
    let ends = HandshakeEnds {
        deadline,
        shutdown: &mut shutdown,
        evicted,
        tls_complete,
    };
    let outcome = handshake(&conn, shared, remote, ends).await;
    // The handshake is over, whichever way: its place among those in progress is free.
    drop(ticket);
    let priorities = (
        shared.config.transport.main_priority,
        shared.config.transport.feed_priority,
    );
    let (core, generation, streams) = match outcome {
        Outcome::New {
            established,
            main,
            feed,
            slot,
        } => {
            let player_id = established.player_id;
            let owner: std::sync::Weak<dyn SessionOwner> = Arc::downgrade(shared) as _;
            let core = SessionCore::new(
                player_id,
                shared.session_config(),
                SideHandle::Server { owner },
                slot.data.clone(),
            );
            if !shared
                .registry()
                .establish(player_id, established.credential, core.clone())
            {
                conn.close(Reason::InternalError, "session slot lost");
                return Established::Failed;
            }
            slot.keep();
            let (attach, streams) = attachment(shared, &conn, &established, main, feed);
            let Ok(attached) = core.attach(conn.handle(), attach) else {
                return Established::Failed;
            };
            bump(&shared.counters.sessions_established);
            info!(%player_id, %remote, "session established");
            tokio::select! {
                // The shutdown first: a shutdown's sweep of the established sessions (see
                // `ServerShared::request_shutdown`) that came before this session's
                // registration did not see it, but its request is seen here.
                biased;
                s = shutdown_signal(&mut shutdown) => {
                    core.close(s.reason, &s.message);
                    return Established::Failed;
                }
                sent = sessions.send(AppRef::new(core.clone())) => if sent.is_err() {
                    // The server is gone; the session was dropped with the failed send.
                    return Established::Failed;
                } else {
                    shared.session_queued.notify_waiters();
                },
            }
            (core, attached.generation, streams)
        }
        Outcome::Resumed {
            established,
            main,
            feed,
            core,
            lost_at,
        } => {
            core.expect_confirmation();
            let (attach, streams) = attachment(shared, &conn, &established, main, feed);
            let Ok(attached) = core.attach(conn.handle(), attach) else {
                return Established::Failed;
            };
            let outage = lost_at.map_or(Duration::ZERO, |t| now().saturating_duration_since(t));
            SessionCounters::bump(&core.counters.resumes, 1);
            info!(player_id = %core.player_id, %remote, ?outage, "session resumed");
            core.emit(SessionEvent::Resumed {
                outage,
                replayed: attached.replayed,
                lost: attached.lost,
                handshake: Duration::ZERO,
            });
            (core, attached.generation, streams)
        }
        Outcome::ResumeAborted { core } => {
            // The old connection was already detached: the session now waits for the client.
            return Established::Waiting { core };
        }
        Outcome::Failed => return Established::Failed,
    };
    Established::Attached(Attached {
        core,
        generation,
        conn,
        streams,
        priorities,
    })
}

/// A browser's session on its WebTransport session: as [`live`], then the farewell is waited
/// for (the close that ended it is said first as a `CONN_FAILED`, PROTOCOL.md §14.6).
async fn live_browser(
    shared: Arc<ServerShared>,
    attached: Box<Attached<webtransport::WebTransportLink>>,
) -> Option<Opened> {
    let farewell = attached.conn.clone();
    live(shared, *attached).await;
    farewell.farewell_sent().await;
    None
}

/// A session's life on its connection (a task of its own): the connection task, then, if the
/// connection was lost, the grace period for a resume. A shutdown ends it by closing the
/// session (`ServerShared::request_shutdown`), as any close does.
async fn live<L: Link>(shared: Arc<ServerShared>, attached: Attached<L>) -> Option<Opened> {
    let Attached {
        core,
        generation,
        conn,
        streams,
        priorities,
    } = attached;
    // Matched in a statement of its own: how the connection ended is not kept across the
    // grace period's wait, where its slot would sit beside the connection task's.
    let lost = match connection::run(&core, generation, conn, streams, priorities).await {
        LinkEnd::Lost(why) => {
            debug!(player_id = %core.player_id, %why, "connection lost; waiting for a resume");
            true
        }
        LinkEnd::Ended | LinkEnd::Superseded => false,
    };
    if lost {
        // Boxed: the grace period's wait is needed only after a loss, and the task's future
        // would otherwise hold its slot beside the connection task's for the whole session.
        Box::pin(grace(&shared, &core)).await;
    }
    None
}

/// A session whose resume failed after its old connection was detached (a task of its own):
/// its grace period.
async fn wait_for_resume(shared: Arc<ServerShared>, core: Arc<SessionCore>) -> Option<Opened> {
    grace(&shared, &core).await;
    None
}

/// Waits, at most the grace period, for a lost session's client to resume it; the session
/// machine ends it then (or a close, a shutdown's among them).
async fn grace(shared: &ServerShared, core: &Arc<SessionCore>) {
    /// Counts the task among those that hold no connection while it waits.
    struct Waiting<'a>(&'a AtomicUsize);
    impl Drop for Waiting<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    shared.waiting_for_resume.fetch_add(1, Ordering::Relaxed);
    let _waiting = Waiting(&shared.waiting_for_resume);
    core.await_resume().await;
}

/// A handshaken connection as the session machine needs it, and its streams for the
/// connection task (their readers switched to the session's frame limits).
fn attachment<L: Link>(
    shared: &ServerShared,
    conn: &L,
    established: &ServerEstablished,
    main: Stream<L>,
    feed: Stream<L>,
) -> (AttachLink, Box<Streams<L>>) {
    let local = shared.config.frame_limits;
    let stream = |stream: Stream<L>, kind: ChannelKind| {
        ChannelStream::established(stream.writer, stream.reader, local.get(kind))
    };
    let attach = AttachLink {
        peer_limits: established.peer_limits,
        peer_next: established.resumed.unwrap_or((0, 0)),
        rules: (
            established.main_rules.clone(),
            established.feed_rules.clone(),
        ),
        datagrams: conn.max_datagram_size().is_some_and(|max| max > 0),
    };
    let streams = Box::new(Streams {
        main: stream(main, ChannelKind::Main),
        feed: stream(feed, ChannelKind::Feed),
    });
    (attach, streams)
}

/// A client stream during the handshake: its channel once declared, and both halves.
struct Stream<L: Link> {
    channel: Option<ChannelKind>,
    reader: FrameReader<L::Recv>,
    writer: FrameWriter<L::Send>,
}

/// What a stream produced.
enum Item {
    Tag(u8),
    Frame(Bytes),
}

async fn next_item<L: Link>(
    stream: &mut Option<Stream<L>>,
) -> (Option<ChannelKind>, Result<Item, ReadFailure>) {
    match stream {
        Some(s) => match s.channel {
            None => (None, s.reader.read_tag().await.map(Item::Tag)),
            Some(channel) => (Some(channel), s.reader.next_frame().await.map(Item::Frame)),
        },
        None => pending().await,
    }
}

fn find<L: Link>(
    streams: &mut [Option<Stream<L>>; 2],
    channel: ChannelKind,
) -> Option<&mut Stream<L>> {
    streams
        .iter_mut()
        .flatten()
        .find(|s| s.channel == Some(channel))
}

/// How a connection's handshake ended.
enum Outcome<L: Link> {
    /// A new session, whose registry slot `slot` holds.
    New {
        established: ServerEstablished,
        main: Stream<L>,
        feed: Stream<L>,
        slot: Slot,
    },
    /// An existing session resumed; `lost_at` is when it lost its previous connection (`None`
    /// if that one was still open and has just been superseded).
    Resumed {
        established: ServerEstablished,
        main: Stream<L>,
        feed: Stream<L>,
        core: Arc<SessionCore>,
        lost_at: Option<Instant>,
    },
    /// A resume was accepted, superseding a live connection, but this connection then failed:
    /// the session has no connection and must wait for the client.
    ResumeAborted { core: Arc<SessionCore> },
    /// Nothing came of it; the connection has been closed with the reason.
    Failed,
}

/// What can end a handshake from outside: its deadline, a shutdown, or an eviction (the server
/// needed its place for a newer attempt).
struct HandshakeEnds<'a> {
    deadline: Instant,
    shutdown: &'a mut watch::Receiver<Option<Shutdown>>,
    /// Resolves if the handshake is evicted; `None` once it has resolved.
    evicted: Option<oneshot::Receiver<()>>,
    /// Resolves when the connection's TLS handshake has completed (the client's Finished
    /// arrived); `None` once it has. Until then what the client sent came in 0-RTT and may be a
    /// replay.
    tls_complete: Option<quinn::ZeroRttAccepted>,
}

/// Runs the token handshake, or a resume, on an established QUIC connection. On failure the
/// connection has been closed with the reason.
async fn handshake<L: Link>(
    conn: &L,
    shared: &Arc<ServerShared>,
    remote: SocketAddr,
    ends: HandshakeEnds<'_>,
) -> Outcome<L> {
    let HandshakeEnds {
        deadline,
        shutdown,
        mut evicted,
        mut tls_complete,
    } = ends;
    let config = &shared.config;
    let mut core = ServerHandshake::new(ServerHandshakeConfig {
        deadline,
        token_lifetime: config.token_lifetime,
        local_limits: config.frame_limits,
    });
    let mut entropy = SystemEntropy::new();
    let mut streams: [Option<Stream<L>>; 2] = [None, None];
    let mut auth: Option<PendingDecision<'_>> = None;
    let mut slot: Option<Slot> = None;
    let mut resumed: Option<(Arc<SessionCore>, Option<Instant>, bool)> = None;
    let mut failed_on: Option<ChannelKind> = None;
    // A RESUME read before the TLS handshake completed waits here for it (PROTOCOL.md §12.4):
    // its proof needs the connection's exporter, and a replayed 0-RTT flight never completes.
    let mut waiting_resume: Option<ResumeRequest> = None;
    // What a failure after this point leaves behind: a resumed session that superseded a live
    // connection has none left.
    let failed = |resumed: Option<(Arc<SessionCore>, Option<Instant>, bool)>| -> Outcome<L> {
        match resumed {
            Some((core, _, true)) => Outcome::ResumeAborted { core },
            _ => Outcome::Failed,
        }
    };

    loop {
        while let Some(output) = core.poll_output() {
            match output {
                ServerOutput::Send(channel, message) => {
                    debug!(%remote, message = message.name(), %channel, "handshake: sending");
                    if matches!(message, Message::ConnFailed { .. }) {
                        // The handshake cannot succeed any more: its player ID is free at once,
                        // not after the refusal has been written and has lingered (a client
                        // that retries at once would be refused with PLAYER_ID_IN_USE).
                        slot = None;
                    }
                    let written = send(&mut streams, channel, &message, deadline).await;
                    match (&message, written) {
                        (Message::ConnFailed { .. }, written) => failed_on = written.ok(),
                        (_, Ok(_)) => {}
                        // A reply that cannot be written (a stopped stream, a client that
                        // withholds flow-control credit) ends the handshake: nothing after it,
                        // CONN_OK least of all, may go out on a half-written stream.
                        (_, Err(reason)) => {
                            debug!(%remote, %reason, message = message.name(), "handshake reply not written");
                            conn.close(reason, reason.describe());
                            return failed(resumed);
                        }
                    }
                }
                ServerOutput::Authenticate { credentials } => {
                    let (full, address_full) = {
                        let registry = shared.registry();
                        (registry.is_full(), registry.is_address_full(remote.ip()))
                    };
                    if full {
                        core.refuse(Reason::ServerFull, "server full", config.busy_retry_after);
                    } else if address_full {
                        core.refuse(
                            Reason::AddressFull,
                            &address_full_message(config.max_sessions_per_address),
                            config.busy_retry_after,
                        );
                    } else {
                        let request = AuthRequest {
                            credentials,
                            remote_address: remote,
                        };
                        auth = Some(config.authenticator.authenticate_boxed(request));
                    }
                }
                ServerOutput::Resume(request) => {
                    if tls_complete.is_some() {
                        waiting_resume = Some(request);
                    } else {
                        resumed =
                            decide_resume(shared, &mut core, &request, conn, remote, &mut entropy);
                    }
                }
                ServerOutput::Established(established) => {
                    if established.resumed.is_some()
                        && !await_feed(conn, &mut streams, deadline).await
                    {
                        conn.close(Reason::InvalidStream, "feed stream not opened after RESUME");
                        return failed(resumed);
                    }
                    let [a, b] = streams;
                    let (mut main, mut feed) = (None, None);
                    for s in [a, b].into_iter().flatten() {
                        match s.channel {
                            Some(ChannelKind::Main) => main = Some(s),
                            Some(ChannelKind::Feed) => feed = Some(s),
                            None => {}
                        }
                    }
                    return match (main, feed, slot, resumed) {
                        (Some(main), Some(feed), _, Some((core, lost_at, _))) => Outcome::Resumed {
                            established,
                            main,
                            feed,
                            core,
                            lost_at,
                        },
                        (Some(main), Some(feed), Some(slot), None) => Outcome::New {
                            established,
                            main,
                            feed,
                            slot,
                        },
                        (_, _, _, resumed) => {
                            warn!(%remote, "handshake completed without both streams and a slot");
                            conn.close(Reason::InternalError, "internal error");
                            failed(resumed)
                        }
                    };
                }
                ServerOutput::Close { reason, message } => {
                    debug!(%remote, %reason, %message, "handshake failed");
                    let received = match failed_on.and_then(|c| find(&mut streams, c)) {
                        Some(stream) => stream.writer.finish_and_linger(FAIL_LINGER).await,
                        None => false,
                    };
                    if received {
                        // The client has the refusal: the close repeats its code, no more.
                        conn.close_at_once(reason, &message);
                    } else {
                        conn.close(reason, &message);
                    }
                    return failed(resumed);
                }
            }
        }

        let timer = core.poll_timeout().unwrap_or(deadline);
        let has_free_slot = streams.iter().any(Option::is_none);
        let [first, second] = &mut streams;
        // Biased: when several inputs are ready, they are handled in a fixed order, streams in
        // the order they were opened, so a duplicate declaration is always the later stream's.
        tokio::select! {
            biased;
            s = shutdown_signal(shutdown) => {
                core.handle_violation(ChannelKind::Main, s.reason, s.message);
            }
            fired = optional(evicted.as_mut()), if evicted.is_some() => {
                evicted = None;
                // An error means the sender is gone without firing: nothing to do. An evicted
                // handshake gets no more of the server's time: closed at once, without the
                // CONN_FAILED and its wait for an acknowledgement (which a client withholding
                // flow control could stretch to the deadline, its place already given away).
                if fired.is_ok() {
                    debug!(%remote, "handshake evicted to make room for a newer attempt");
                    conn.close_at_once(Reason::ServerBusy, "too many handshakes in progress; try again");
                    return failed(resumed);
                }
            }
            _ = optional(tls_complete.as_mut()), if tls_complete.is_some() => {
                tls_complete = None;
                if let Some(request) = waiting_resume.take() {
                    resumed = decide_resume(shared, &mut core, &request, conn, remote, &mut entropy);
                }
            }
            decision = optional(auth.as_mut()), if auth.is_some() => {
                auth = None;
                let mut data = None;
                let requested = match decision {
                    AuthDecision::Accept => Ok(None),
                    AuthDecision::AcceptAs(id) => Ok(Some(id)),
                    AuthDecision::AcceptWith { player, data: attached } => {
                        data = Some(attached);
                        Ok(player)
                    }
                    // NORMAL is not a refusal; an authenticator that says so means AUTH_REFUSED.
                    AuthDecision::Reject { reason: Reason::Normal, message, retry_after } => {
                        Err((Reason::AuthRefused, message, retry_after))
                    }
                    AuthDecision::Reject { reason, message, retry_after } => Err((reason, message, retry_after)),
                };
                match requested.map(|id| shared.registry().admit_from(id, remote.ip())) {
                    Ok(Ok(player_id)) => {
                        slot = Some(Slot { shared: shared.clone(), player_id, kept: false, data });
                        core.accept(player_id, now(), &mut entropy);
                    }
                    Ok(Err(Reason::AddressFull)) => core.refuse(
                        Reason::AddressFull,
                        &address_full_message(config.max_sessions_per_address),
                        config.busy_retry_after,
                    ),
                    Ok(Err(reason)) => {
                        let hint = (reason == Reason::ServerFull).then_some(config.busy_retry_after).flatten();
                        core.refuse(reason, reason.describe(), hint);
                    }
                    Err((reason, message, retry_after)) => core.refuse(reason, &message, retry_after),
                }
            }
            accepted = conn.accept_bi(), if has_free_slot => match accepted {
                Ok((send, recv)) => {
                    let stream = Stream {
                        channel: None,
                        reader: FrameReader::new(recv, HANDSHAKE_FRAME_LIMIT),
                        writer: FrameWriter::new(send),
                    };
                    if let Some(free) = streams.iter_mut().find(|s| s.is_none()) {
                        *free = Some(stream);
                    }
                }
                Err(e) => {
                    debug!(%remote, error = %e, "connection lost during handshake");
                    return failed(resumed);
                }
            },
            (channel, item) = next_item(first) => {
                if !on_item(&mut core, &mut streams, 0, channel, item, &mut entropy) {
                    return failed(resumed);
                }
            }
            (channel, item) = next_item(second) => {
                if !on_item(&mut core, &mut streams, 1, channel, item, &mut entropy) {
                    return failed(resumed);
                }
            }
            _ = tokio::time::sleep_until(timer.into()) => core.handle_timeout(now()),
        }
    }
}

/// Waits for `future` if there is one, else forever (a `select!` branch that is off).
async fn optional<F: Future + Unpin>(future: Option<&mut F>) -> F::Output {
    match future {
        Some(future) => future.await,
        None => pending().await,
    }
}

/// The detail of an `ADDRESS_FULL` refusal.
fn address_full_message(limit: usize) -> String {
    format!(
        "this address already holds {limit} sessions, the most the server allows one address; try again when one ends"
    )
}

/// Checks a `RESUME` against the registry. If it is valid: replaces the session's credential,
/// supersedes its connection if it still has one, and tells the handshake to answer `CONN_OK`
/// with where the server's receivers stand. Returns the session, when it lost its previous
/// connection, and whether a live connection was superseded.
fn decide_resume<L: Link>(
    shared: &ServerShared,
    handshake: &mut ServerHandshake,
    request: &ResumeRequest,
    conn: &L,
    remote: SocketAddr,
    entropy: &mut SystemEntropy,
) -> Option<(Arc<SessionCore>, Option<Instant>, bool)> {
    let next = match random_token(entropy) {
        Ok(token) => token,
        Err(e) => {
            handshake.refuse(Reason::InternalError, &e.to_string(), None);
            return None;
        }
    };
    let found = {
        let mut registry = shared.registry();
        // The request proves a credential if its proof is the one this link makes for that
        // credential (from the connection's TLS exporter, or for a browser the HMAC of
        // PROTOCOL.md §14.5), compared in constant time.
        let proves = |credential: &Token| {
            conn.resume_proof(credential, request.player_id)
                .is_some_and(|expected| tokens_equal(&expected, &request.proof))
        };
        let found = registry
            .resume(request.player_id, proves, next)
            .map(Arc::clone);
        if found.is_ok() {
            registry.moved(request.player_id, remote.ip());
        }
        found
    };
    match found {
        Ok(session) => {
            let lost_at = session.lost_at();
            let superseded =
                session.detach(Reason::Superseded, "superseded by a resumed connection");
            if superseded {
                SessionCounters::bump(&session.counters.superseded, 1);
                session.emit(SessionEvent::Superseded);
            }
            // Read after the old connection is detached: whatever it still delivers is ignored
            // (the client replays it).
            let (main_next, feed_next) = (
                session.inbound_next(ChannelKind::Main),
                session.inbound_next(ChannelKind::Feed),
            );
            handshake.accept_resume(request, next, main_next, feed_next);
            Some((session, lost_at, superseded))
        }
        Err(reason) => {
            bump(&shared.counters.resumes_refused);
            debug!(player_id = %request.player_id, %reason, "resume refused");
            let message = match reason {
                Reason::UnknownSession => {
                    "no such session here (it expired, or the server restarted): connect again as a \
                     new session"
                }
                other => other.describe(),
            };
            handshake.refuse(reason, message, None);
            None
        }
    }
}

/// After `CONN_OK` on a resumed connection, waits (until `deadline`) for the client's feed
/// stream, which it opens right after main. Returns whether it was declared.
async fn await_feed<L: Link>(
    conn: &L,
    streams: &mut [Option<Stream<L>>; 2],
    deadline: Instant,
) -> bool {
    let wait = async {
        loop {
            if find(streams, ChannelKind::Feed).is_some() {
                return true;
            }
            let has_free_slot = streams.iter().any(Option::is_none);
            let [first, second] = &mut *streams;
            tokio::select! {
                biased;
                accepted = conn.accept_bi(), if has_free_slot => match accepted {
                    Ok((send, recv)) => {
                        if let Some(free) = streams.iter_mut().find(|s| s.is_none()) {
                            *free = Some(Stream {
                                channel: None,
                                reader: FrameReader::new(recv, HANDSHAKE_FRAME_LIMIT),
                                writer: FrameWriter::new(send),
                            });
                        }
                    }
                    Err(_) => return false,
                },
                tag = next_tag(first) => if !declare(&mut streams[0], tag) { return false },
                tag = next_tag(second) => if !declare(&mut streams[1], tag) { return false },
            }
        }
    };
    tokio::time::timeout_at(deadline.into(), wait)
        .await
        .unwrap_or(false)
}

/// The declaration byte of a stream not yet declared (pending forever otherwise).
async fn next_tag<L: Link>(stream: &mut Option<Stream<L>>) -> Result<u8, ReadFailure> {
    match stream {
        Some(s) if s.channel.is_none() => s.reader.read_tag().await,
        _ => pending().await,
    }
}

/// Records a stream's declaration after a resume: only feed may be declared now.
fn declare<L: Link>(stream: &mut Option<Stream<L>>, tag: Result<u8, ReadFailure>) -> bool {
    match (stream, tag.ok().and_then(ChannelKind::from_tag)) {
        (Some(s), Some(ChannelKind::Feed)) => {
            s.channel = Some(ChannelKind::Feed);
            true
        }
        _ => false,
    }
}

/// Acts on one stream item. Returns `false` when the connection is gone.
fn on_item<L: Link>(
    core: &mut ServerHandshake,
    streams: &mut [Option<Stream<L>>; 2],
    index: usize,
    channel: Option<ChannelKind>,
    item: Result<Item, ReadFailure>,
    entropy: &mut SystemEntropy,
) -> bool {
    let on = channel.unwrap_or(ChannelKind::Main);
    match item {
        Ok(Item::Tag(tag)) => match ChannelKind::from_tag(tag) {
            None => core.handle_violation(
                ChannelKind::Main,
                Reason::InvalidStream,
                format!("stream declares unknown channel 0x{tag:02x}"),
            ),
            Some(kind) if find(streams, kind).is_some() => core.handle_violation(
                kind,
                Reason::InvalidStream,
                format!("{kind} channel declared twice"),
            ),
            Some(kind) => {
                if let Some(Some(stream)) = streams.get_mut(index) {
                    stream.channel = Some(kind);
                }
            }
        },
        Ok(Item::Frame(body)) => match decode_message(body) {
            Ok(message) => {
                debug!(message = message.name(), channel = %on, "handshake: received");
                core.handle_message(on, message, now(), entropy);
            }
            Err(e) => core.handle_violation(on, e.reason(), e.to_string()),
        },
        Err(ReadFailure::Decode(e)) => core.handle_violation(on, e.reason(), e.to_string()),
        Err(ReadFailure::Finished) => {
            core.handle_violation(
                on,
                Reason::InvalidStream,
                format!("{on}: finished during the handshake"),
            );
        }
        Err(ReadFailure::StreamEnded(detail)) => {
            core.handle_violation(on, Reason::InvalidStream, format!("{on}: {detail}"));
        }
        Err(ReadFailure::Connection(e)) => {
            debug!(error = %e, "connection lost during handshake");
            return false;
        }
        // A server does not send 0-RTT data; nothing to retry.
        Err(ReadFailure::ZeroRttRejected) => return false,
    }
    true
}

/// Writes a handshake message on `channel`, or on main when that channel has no stream yet.
/// Returns the channel written on, or the reason to close with when the write cannot be done:
/// no stream to write on, a stopped or reset stream, or a write that cannot complete by the
/// deadline (a client that withholds flow-control credit).
async fn send<L: Link>(
    streams: &mut [Option<Stream<L>>; 2],
    channel: ChannelKind,
    message: &Message,
    deadline: Instant,
) -> Result<ChannelKind, Reason> {
    let frame = encode_message(message).map_err(|e| {
        warn!(error = %e, message = message.name(), "cannot encode a handshake message");
        Reason::InternalError
    })?;
    let target = if find(streams, channel).is_some() {
        channel
    } else {
        ChannelKind::Main
    };
    let stream = find(streams, target).ok_or(Reason::InvalidStream)?;
    let until = deadline.max(now().checked_add(FAIL_LINGER).unwrap_or(deadline));
    match tokio::time::timeout_at(until.into(), stream.writer.write(frame)).await {
        Ok(Ok(())) => Ok(target),
        Ok(Err(_)) => Err(Reason::InvalidStream),
        Err(_) => Err(Reason::HandshakeTimeout),
    }
}

/// Logs a server's statistics every `every` while it runs.
pub(crate) async fn log_server(shared: std::sync::Weak<ServerShared>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.shutdown.borrow().is_some() {
            return;
        }
        let s = shared.stats();
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
        tracing::info!(
            target: "quicfeed::stats",
            sessions = s.sessions,
            rtt_p50_ms = ms(s.rtt_p50),
            rtt_p99_ms = ms(s.rtt_p99),
            loss_percent = s.loss_rate * 100.0,
            sent_kbps = s.sent_bytes_per_s * 8.0 / 1000.0,
            received_kbps = s.received_bytes_per_s * 8.0 / 1000.0,
            sent_messages_per_s = s.sent_messages_per_s,
            received_messages_per_s = s.received_messages_per_s,
            handshakes_in_progress = s.counters.handshakes_in_progress,
            "server stats"
        );
    }
}
