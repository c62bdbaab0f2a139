//! The client driver: connects over quinn, runs [`ClientHandshake`] to a session, and keeps the
//! session alive across connections (the resume loop).

use std::future::pending;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tracing::{debug, info};

use super::connection::{self, ChannelStream, Streams};
use super::endpoint;
use super::link::{Link, StreamError, close, drain};
use super::now;
use super::session::{AppRef, Counters, SessionCore, SideHandle, session_config};
use super::stream::{FrameReader, FrameWriter, ReadFailure};
use crate::certs::Refusals;
use crate::config::{ClientConfig, ResumePolicy, ServerAddress};
use crate::error::{ConnectError, Disconnect};
use crate::events::SessionEvent;
use crate::protocol::codec::{decode_message, encode_message};
use crate::protocol::{
    AttachLink, ChannelKind, ClientEstablished, ClientFailure, ClientHandshake,
    ClientHandshakeConfig, ClientOutput, FrameLimits, HANDSHAKE_FRAME_LIMIT, HandshakeStep,
    LinkClosed, LinkEnd, Reason, ResumeTicket, Side,
};

/// One of the client's two streams during a handshake.
struct Stream {
    reader: FrameReader,
    writer: FrameWriter,
}

/// A connection whose handshake completed.
struct Handshaken {
    established: ClientEstablished,
    main: Stream,
    feed: Stream,
}

/// Why a handshake attempt failed.
enum HandshakeError {
    /// For the caller's error.
    Failed(ConnectError),
    /// The 0-RTT data was rejected: the same connection can try again in 1-RTT.
    ZeroRttRejected,
}

impl From<ConnectError> for HandshakeError {
    fn from(e: ConnectError) -> Self {
        HandshakeError::Failed(e)
    }
}

/// Everything a client session needs to open new connections to its server.
struct Resumer {
    endpoint: quinn::Endpoint,
    server: SocketAddr,
    server_name: String,
    handshake: ClientHandshakeConfig,
    policy: ResumePolicy,
    local_limits: FrameLimits,
    priorities: (i32, i32),
    jitter: Jitter,
}

/// Connects to `config.server` and completes the handshake: `CONN_INIT` goes in 0-RTT data
/// when the configuration holds a TLS session ticket from the server (PROTOCOL.md §12.4), and
/// again in 1-RTT on the same connection if the server rejects it.
pub(crate) async fn connect(
    config: &ClientConfig,
    socket: Option<endpoint::AbstractSocket>,
) -> Result<AppRef, ConnectError> {
    config.validate()?;
    let deadline = super::deadline_after(config.handshake_timeout);
    let candidates = resolve(&config.server, deadline).await?;
    let Opened {
        endpoint,
        refusals,
        server,
        conn,
        accepted,
    } = open_first(config, socket, &candidates, deadline).await?;
    let handshake = ClientHandshakeConfig {
        deadline,
        credentials: config.credentials.clone(),
        feed_init_timeout: config.feed_init_timeout,
        feed_init_attempts: config.feed_init_attempts,
        local_limits: config.frame_limits,
    };
    let result = handshake_once_more_in_1rtt(
        &conn,
        accepted.is_some(),
        || ClientHandshake::new(handshake.clone()),
        deadline,
        false,
    )
    .await;
    let done = match result {
        Ok(done) => done,
        Err(error) => {
            let error = match error {
                // A connection that went ahead in 0-RTT learns of a refused certificate here.
                HandshakeError::Failed(ConnectError::Transport(e)) => {
                    certificate_refusal(&e, &refusals).unwrap_or(ConnectError::Transport(e))
                }
                HandshakeError::Failed(e) => e,
                HandshakeError::ZeroRttRejected => ConnectError::TimedOut {
                    step: HandshakeStep::Quic,
                },
            };
            close_for(&conn, &error);
            return Err(error);
        }
    };
    let zero_rtt = was_accepted(accepted).await;
    let session = session_config(Side::Client, &config.transport, config.frame_limits, None);
    let resumer = Resumer {
        endpoint: endpoint.clone(),
        server,
        server_name: config.server_name.clone(),
        handshake,
        policy: config.resume.clone(),
        local_limits: config.frame_limits,
        priorities: (
            config.transport.main_priority,
            config.transport.feed_priority,
        ),
        jitter: Jitter::new(config.resume.jitter_seed),
    };
    let player_id = done.established.player_id;
    let core = SessionCore::new(
        player_id,
        session,
        SideHandle::Client {
            endpoint: Box::new(endpoint),
        },
        None,
    );
    if zero_rtt {
        Counters::bump(&core.counters.connect_0rtt, 1);
    }
    core.set_credential(done.established.credential);
    let (attach, streams) = attachment(&conn, done, config.frame_limits);
    let attached =
        core.attach(conn.handle(), attach)
            .map_err(|d| ConnectError::ServerViolation {
                reason: Reason::SequenceError,
                message: d.to_string(),
            })?;
    debug!(%player_id, "handshake complete");
    tokio::spawn(run_session(
        core.clone(),
        resumer,
        attached.generation,
        conn,
        streams,
    ));
    if let Some(every) = config.transport.stats_log_interval {
        tokio::spawn(super::session::log_stats(Arc::downgrade(&core), every));
    }
    Ok(AppRef::new(core))
}

/// Closes a failed handshake's connection with the reason the error calls for, so the server
/// learns why.
fn close_for(conn: &quinn::Connection, error: &ConnectError) {
    let reason = match error {
        ConnectError::Refused { reason, .. } | ConnectError::ServerViolation { reason, .. } => {
            Some(*reason)
        }
        ConnectError::TimedOut { .. } => Some(Reason::HandshakeTimeout),
        _ => None,
    };
    if let Some(reason) = reason {
        close(conn, reason, &error.to_string());
    }
}

/// A handshaken connection as the session machine needs it, and its streams for the
/// connection task (their readers switched to the session's frame limits).
fn attachment(
    conn: &quinn::Connection,
    done: Handshaken,
    local: FrameLimits,
) -> (AttachLink, Box<Streams<quinn::Connection>>) {
    let established = done.established;
    let stream = |stream: Stream, kind: ChannelKind| {
        ChannelStream::established(stream.writer, stream.reader, local.get(kind))
    };
    let attach = AttachLink {
        peer_limits: established.peer_limits,
        peer_next: (established.main_next, established.feed_next),
        rules: (established.main_rules, established.feed_rules),
        datagrams: conn.max_datagram_size().is_some_and(|max| max > 0),
    };
    let streams = Box::new(Streams {
        main: stream(done.main, ChannelKind::Main),
        feed: stream(done.feed, ChannelKind::Feed),
    });
    (attach, streams)
}

/// A client session's life after its first handshake: run the connection, resume when it is
/// lost, until the session ends.
async fn run_session(
    core: Arc<SessionCore>,
    mut resumer: Resumer,
    mut generation: u64,
    mut conn: quinn::Connection,
    mut streams: Box<Streams<quinn::Connection>>,
) {
    loop {
        match connection::run(&core, generation, conn, streams, resumer.priorities).await {
            LinkEnd::Ended => {
                drain(&resumer.endpoint).await;
                return;
            }
            LinkEnd::Lost(why) => {
                info!(player_id = %core.player_id, %why, "connection lost; resuming");
            }
            LinkEnd::Superseded => {
                info!(player_id = %core.player_id, "connection replaced; resuming");
            }
        }
        match resumer.resume(&core).await {
            Ok(resumed) => (generation, conn, streams) = resumed,
            // The application closed the session meanwhile: nothing failed.
            Err(_) if core.ended().is_some() => {
                drain(&resumer.endpoint).await;
                return;
            }
            Err((reason, message)) => {
                Counters::bump(&core.counters.resume_failures, 1);
                core.emit(SessionEvent::ResumeFailed {
                    reason,
                    message: message.clone(),
                });
                core.end_with(
                    Disconnect::ResumeFailed { reason, message },
                    Reason::Normal,
                    "",
                );
                drain(&resumer.endpoint).await;
                return;
            }
        }
    }
}

/// A successful resume attempt.
struct Resumed {
    generation: u64,
    conn: quinn::Connection,
    streams: Box<Streams<quinn::Connection>>,
    replayed: u64,
    lost: u64,
    handshake: Duration,
}

/// A resumed session's new connection: its generation, the connection and its streams.
type ResumedLink = (u64, quinn::Connection, Box<Streams<quinn::Connection>>);

/// How one resume attempt failed.
enum AttemptError {
    /// Final: the server refused (or the session ended meanwhile).
    Refused(Reason, String),
    /// Worth another attempt: the server was not reached, or did not answer in time.
    Retry(String),
}

impl Resumer {
    /// Resumes `core` on a new connection, retrying with exponential backoff and jitter within
    /// the budget. Returns the new connection, or the final reason.
    async fn resume(&mut self, core: &Arc<SessionCore>) -> Result<ResumedLink, (Reason, String)> {
        // The outage runs from the last packet heard on the lost connection.
        let started = core.lost_at().unwrap_or_else(now);
        let budget_end = super::deadline_after(self.policy.budget);
        let mut backoff = self.policy.initial_backoff;
        let mut attempts = 0u32;
        loop {
            if let Some(ended) = core.ended() {
                return Err((Reason::Normal, ended.to_string()));
            }
            attempts = attempts.saturating_add(1);
            let deadline = super::deadline_after(self.policy.attempt_timeout).min(budget_end);
            match self.attempt(core, deadline).await {
                Ok(Resumed {
                    generation,
                    conn,
                    streams,
                    replayed,
                    lost,
                    handshake,
                }) => {
                    let outage = now().saturating_duration_since(started);
                    Counters::bump(&core.counters.resumes, 1);
                    info!(player_id = %core.player_id, attempts, ?outage, replayed, lost, "session resumed");
                    core.emit(SessionEvent::Resumed {
                        outage,
                        replayed,
                        lost,
                        handshake,
                    });
                    return Ok((generation, conn, streams));
                }
                Err(AttemptError::Refused(reason, message)) => return Err((reason, message)),
                Err(AttemptError::Retry(why)) => {
                    debug!(player_id = %core.player_id, attempts, %why, "resume attempt failed");
                    let wait = self.jitter.scale(backoff);
                    if now().checked_add(wait).is_none_or(|t| t >= budget_end) {
                        return Err((
                            Reason::HandshakeTimeout,
                            format!(
                                "could not resume within {} s ({attempts} attempts; last: {why})",
                                self.policy.budget.as_secs_f32()
                            ),
                        ));
                    }
                    tokio::time::sleep(wait).await;
                    backoff = backoff.saturating_mul(2).min(self.policy.max_backoff);
                }
            }
        }
    }

    /// One resume attempt: a new connection, `RESUME` on main once its TLS handshake has
    /// completed (the proof of the credential is bound to the connection's keys, so it cannot
    /// go in 0-RTT), and the attachment on `CONN_OK`.
    async fn attempt(
        &self,
        core: &Arc<SessionCore>,
        deadline: Instant,
    ) -> Result<Resumed, AttemptError> {
        let started = now();
        let credential = core
            .credential()
            .ok_or_else(|| AttemptError::Refused(Reason::InternalError, "no credential".into()))?;
        let connecting = self
            .endpoint
            .connect(self.server, &self.server_name)
            .map_err(|e| AttemptError::Retry(e.to_string()))?;
        let (conn, _) = match open(connecting, false, deadline).await {
            Ok(opened) => opened,
            Err(Some(e)) => return Err(AttemptError::Retry(e.to_string())),
            Err(None) => return Err(AttemptError::Retry("QUIC handshake timed out".into())),
        };
        let proof = super::resume_proof(&conn, &credential, core.player_id)
            .ok_or_else(|| AttemptError::Retry("the TLS exporter gave no resume proof".into()))?;
        // The positions are read as late as possible: whatever arrives on the old connection
        // after this is a duplicate the receivers drop.
        let ticket = || ResumeTicket {
            player_id: core.player_id,
            proof,
            main_next: core.inbound_next(ChannelKind::Main),
            feed_next: core.inbound_next(ChannelKind::Feed),
        };
        let mut config = self.handshake.clone();
        config.deadline = deadline;
        let result = handshake_once_more_in_1rtt(
            &conn,
            false,
            || ClientHandshake::resume(config.clone(), &ticket()),
            deadline,
            true,
        )
        .await;
        let done = match result {
            Ok(done) => done,
            Err(HandshakeError::Failed(error)) => {
                close_for(&conn, &error);
                return Err(match error {
                    // A close a resume itself can cause, or a busy server making room, is worth
                    // another attempt.
                    ConnectError::Refused {
                        reason:
                            reason @ (Reason::DeadPath | Reason::Superseded | Reason::ServerBusy),
                        message,
                        ..
                    } => AttemptError::Retry(format!("{reason}: {message}")),
                    ConnectError::Refused {
                        reason, message, ..
                    } => AttemptError::Refused(reason, message),
                    ConnectError::ServerViolation { reason, message } => {
                        AttemptError::Refused(reason, message)
                    }
                    other => AttemptError::Retry(other.to_string()),
                });
            }
            Err(HandshakeError::ZeroRttRejected) => {
                close(&conn, Reason::HandshakeTimeout, "0-RTT rejected twice");
                return Err(AttemptError::Retry("0-RTT rejected".into()));
            }
        };
        core.set_credential(done.established.credential);
        let (attach, streams) = attachment(&conn, done, self.local_limits);
        // Attaching also queues an acknowledgement on main: it confirms to the server that
        // CONN_OK (and its new credential) arrived.
        let attached = core.attach(conn.handle(), attach).map_err(|d| match d {
            Disconnect::Locally { reason, message } => AttemptError::Refused(reason, message),
            other => AttemptError::Refused(Reason::Normal, other.to_string()),
        })?;
        Ok(Resumed {
            generation: attached.generation,
            conn,
            streams,
            replayed: attached.replayed,
            lost: attached.lost,
            handshake: now().saturating_duration_since(started),
        })
    }
}

/// The server's addresses: `server` itself, or what its host name resolves to (asked before
/// `deadline`, so a resolver that does not answer costs the connect's own time, not more), in
/// the resolver's order of preference (RFC 6724), IPv6 and IPv4 interleaved (RFC 8305 §4), so
/// that a broken family costs one attempt delay, not every address of it.
async fn resolve(
    server: &ServerAddress,
    deadline: Instant,
) -> Result<Vec<SocketAddr>, ConnectError> {
    let (name, port) = match server {
        ServerAddress::Addr(addr) => return Ok(vec![*addr]),
        ServerAddress::Host { name, port } => (name.as_str(), *port),
    };
    let failed = |source| ConnectError::Resolve {
        host: server.to_string(),
        source,
    };
    let found: Vec<SocketAddr> =
        match tokio::time::timeout_at(deadline.into(), tokio::net::lookup_host((name, port))).await
        {
            Ok(found) => found.map_err(failed)?.collect(),
            Err(_) => {
                return Err(failed(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the resolver did not answer within the handshake timeout",
                )));
            }
        };
    let mut ordered = interleave(&found);
    // Bounded: a resolver that answers with hundreds of addresses is not raced address by address.
    ordered.truncate(MAX_CANDIDATES);
    if ordered.is_empty() {
        return Err(failed(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the name has no address",
        )));
    }
    debug!(%server, candidates = ?ordered, "server resolved");
    Ok(ordered)
}

/// `found` with IPv6 and IPv4 alternating, starting with the family of the first, duplicates
/// dropped, each family in its own order.
fn interleave(found: &[SocketAddr]) -> Vec<SocketAddr> {
    let lead_v6 = found.first().is_some_and(SocketAddr::is_ipv6);
    let mut unique: Vec<SocketAddr> = Vec::with_capacity(found.len());
    for addr in found {
        if !unique.contains(addr) {
            unique.push(*addr);
        }
    }
    let (lead, other): (Vec<SocketAddr>, Vec<SocketAddr>) =
        unique.into_iter().partition(|a| a.is_ipv6() == lead_v6);
    let mut ordered = Vec::with_capacity(lead.len().saturating_add(other.len()));
    let (mut lead, mut other) = (lead.into_iter(), other.into_iter());
    loop {
        match (lead.next(), other.next()) {
            (None, None) => return ordered,
            (x, y) => ordered.extend(x.into_iter().chain(y)),
        }
    }
}

/// Whether a socket bound to `local` can reach `remote`: an IPv4 socket only IPv4 addresses, a
/// socket on a specific IPv6 address only IPv6 ones, a socket on the unspecified IPv6 address
/// both (it is dual-stack: see `endpoint::udp_socket`).
fn reaches(local: SocketAddr, remote: SocketAddr) -> bool {
    match local {
        SocketAddr::V4(_) => remote.is_ipv4(),
        SocketAddr::V6(v6) => v6.ip().is_unspecified() || remote.is_ipv6(),
    }
}

/// Most resolved addresses a connect tries.
const MAX_CANDIDATES: usize = 8;

/// How long a connect waits for one address's QUIC handshake before also trying the next
/// (RFC 8305's connection attempt delay).
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// A QUIC connection whose handshake completed (or went ahead in 0-RTT), and its endpoint.
struct Opened {
    endpoint: quinn::Endpoint,
    refusals: Refusals,
    server: SocketAddr,
    conn: quinn::Connection,
    accepted: Option<quinn::ZeroRttAccepted>,
}

/// Opens a QUIC connection to the first of `candidates` that answers: one at once, each next
/// one [`ATTEMPT_DELAY`] later (or as soon as the one before failed), each from an endpoint of
/// its own (the address families may differ); the first handshake to complete wins, and the
/// others are dropped, which closes them. While several addresses race, none goes ahead in
/// 0-RTT (a 0-RTT connection "opens" before the server has answered, which would end the race
/// on an address that may be dead). A certificate refusal ends the connect at once: every
/// address is the same server. Only addresses the local socket can reach are tried (with the
/// application's own socket, the first of them only).
async fn open_first(
    config: &ClientConfig,
    socket: Option<endpoint::AbstractSocket>,
    candidates: &[SocketAddr],
    deadline: Instant,
) -> Result<Opened, ConnectError> {
    let started = now();
    let local = match &socket {
        Some(socket) => Some(socket.local_addr()?),
        None => config.bind,
    };
    let reachable: Vec<SocketAddr> = candidates
        .iter()
        .copied()
        .filter(|remote| local.is_none_or(|local| reaches(local, *remote)))
        .collect();
    let tried: &[SocketAddr] = match (&socket, reachable.as_slice()) {
        (_, []) => candidates,
        (Some(_), [first, ..]) => std::slice::from_ref(first),
        (None, all) => all,
    };
    let no_answer = || ConnectError::NoAnswer {
        server: match config.server {
            ServerAddress::Addr(addr) => addr.to_string(),
            ServerAddress::Host { .. } => {
                let tried: Vec<_> = tried.iter().map(SocketAddr::to_string).collect();
                format!("{} ({})", config.server, tried.join(", "))
            }
        },
        waited: now().saturating_duration_since(started),
    };
    let Some((&first, rest)) = tried.split_first() else {
        return Err(no_answer());
    };
    let zero_rtt = config.zero_rtt && rest.is_empty();
    let mut attempts = tokio::task::JoinSet::new();
    let attempt = |server: SocketAddr, socket: Option<endpoint::AbstractSocket>| {
        let config = config.clone();
        async move { open_one(&config, server, socket, zero_rtt, deadline).await }
    };
    attempts.spawn(attempt(first, socket));
    let mut rest = rest.iter().copied();
    // The most telling failure so far: anything says more than "no answer".
    let mut failure: Option<ConnectError> = None;
    loop {
        // Neither wait lasts: every attempt ends by `deadline`, and the timer is bounded.
        let next_due = tokio::time::sleep(ATTEMPT_DELAY);
        tokio::select! {
            done = attempts.join_next() => {
                let failed = match done {
                    Some(Ok(Ok(opened))) => {
                        attempts.abort_all();
                        return Ok(opened);
                    }
                    Some(Ok(Err(e @ ConnectError::Certificate { .. }))) => return Err(e),
                    Some(Ok(Err(e))) => Some(e),
                    Some(Err(join)) => {
                        debug!(error = %join, "connection attempt task ended");
                        None
                    }
                    None => {
                        return Err(match failure {
                            Some(e) if !matches!(e, ConnectError::NoAnswer { .. }) => e,
                            _ => no_answer(),
                        });
                    }
                };
                if let Some(e) = failed
                    && failure.as_ref().is_none_or(|f| matches!(f, ConnectError::NoAnswer { .. }))
                {
                    failure = Some(e);
                }
                if let Some(server) = rest.next() {
                    attempts.spawn(attempt(server, None));
                }
            },
            () = next_due, if rest.len() > 0 => {
                if let Some(server) = rest.next() {
                    attempts.spawn(attempt(server, None));
                }
            }
        }
    }
}

/// Opens a QUIC connection to `server` from an endpoint of its own.
async fn open_one(
    config: &ClientConfig,
    server: SocketAddr,
    socket: Option<endpoint::AbstractSocket>,
    zero_rtt: bool,
    deadline: Instant,
) -> Result<Opened, ConnectError> {
    let started = now();
    let (endpoint, refusals) = endpoint::client(config, server, socket)?;
    let connecting = endpoint.connect(server, &config.server_name)?;
    match open(connecting, zero_rtt, deadline).await {
        Ok((conn, accepted)) => Ok(Opened {
            endpoint,
            refusals,
            server,
            conn,
            accepted,
        }),
        Err(None | Some(quinn::ConnectionError::TimedOut)) => Err(ConnectError::NoAnswer {
            server: server.to_string(),
            waited: now().saturating_duration_since(started),
        }),
        Err(Some(e)) => {
            Err(certificate_refusal(&e, &refusals).unwrap_or(ConnectError::Transport(e)))
        }
    }
}

/// Opens a connection: in 0-RTT when `zero_rtt` is set and the TLS configuration holds a
/// ticket for the server (then with the future that tells whether the server accepted the
/// early data), else by completing the QUIC handshake before `deadline`. The error is `None`
/// when the deadline passed.
async fn open(
    connecting: quinn::Connecting,
    zero_rtt: bool,
    deadline: Instant,
) -> Result<(quinn::Connection, Option<quinn::ZeroRttAccepted>), Option<quinn::ConnectionError>> {
    let connecting = if zero_rtt {
        match connecting.into_0rtt() {
            Ok((conn, accepted)) => return Ok((conn, Some(accepted))),
            Err(connecting) => connecting,
        }
    } else {
        connecting
    };
    match tokio::time::timeout_at(deadline.into(), connecting).await {
        Ok(Ok(conn)) => Ok((conn, None)),
        Ok(Err(e)) => Err(Some(e)),
        Err(_) => Err(None),
    }
}

/// The certificate error behind a QUIC handshake that this side ended with a TLS alert (a
/// `CRYPTO_ERROR`, 0x100 to 0x1ff), in the words of the verifier that refused.
fn certificate_refusal(
    error: &quinn::ConnectionError,
    refusals: &Refusals,
) -> Option<ConnectError> {
    match error {
        quinn::ConnectionError::TransportError(e)
            if (0x100..0x200).contains(&u64::from(e.code)) =>
        {
            refusals
                .take()
                .map(|problem| ConnectError::Certificate { problem })
        }
        _ => None,
    }
}

/// Runs the handshake `start` builds; if its first flight went in 0-RTT (`sent_early`) and the
/// server rejected it, runs a fresh one in 1-RTT on the same connection (PROTOCOL.md §12.4).
async fn handshake_once_more_in_1rtt(
    conn: &quinn::Connection,
    sent_early: bool,
    start: impl Fn() -> ClientHandshake,
    deadline: Instant,
    open_feed_early: bool,
) -> Result<Handshaken, HandshakeError> {
    match run_handshake(conn, start(), deadline, open_feed_early).await {
        Err(HandshakeError::ZeroRttRejected) if sent_early => {
            debug!("0-RTT rejected; the handshake goes again in 1-RTT");
            run_handshake(conn, start(), deadline, open_feed_early).await
        }
        other => other,
    }
}

/// Whether the server accepted the 0-RTT data. Called after `CONN_OK`, which comes after the
/// server's handshake flight, so the answer is known by then.
async fn was_accepted(accepted: Option<quinn::ZeroRttAccepted>) -> bool {
    match accepted {
        Some(accepted) => tokio::time::timeout(Duration::from_millis(100), accepted)
            .await
            .unwrap_or(false),
        None => false,
    }
}

/// The backoff's random factor: from the OS, or from a seed (reproducible simulations).
struct Jitter {
    state: Option<u64>,
}

impl Jitter {
    fn new(seed: Option<u64>) -> Self {
        // xorshift needs a non-zero state.
        Jitter {
            state: seed.map(|s| s | 1),
        }
    }

    /// `base` scaled by a random factor in 0.5..1.5, so that clients cut off together do not
    /// all come back at the same instant.
    fn scale(&mut self, base: Duration) -> Duration {
        let byte = match &mut self.state {
            Some(state) => {
                *state ^= *state << 13;
                *state ^= *state >> 7;
                *state ^= *state << 17;
                state.to_le_bytes()[0]
            }
            None => {
                let mut byte = [0u8; 1];
                let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut byte);
                byte[0]
            }
        };
        base.mul_f64(0.5 + f64::from(byte) / 255.0)
    }
}

/// Runs a client handshake (new or resume) on `conn` until it is established or fails. With
/// `open_feed_early` (a resume), the feed stream is opened right after the first message, so
/// the server can replay on it as soon as it answers.
async fn run_handshake(
    conn: &quinn::Connection,
    mut core: ClientHandshake,
    deadline: Instant,
    open_feed_early: bool,
) -> Result<Handshaken, HandshakeError> {
    let mut main: Option<Stream> = None;
    let mut feed: Option<Stream> = None;
    loop {
        while let Some(output) = core.poll_output() {
            match output {
                ClientOutput::Send(channel, message) => {
                    debug!(message = message.name(), %channel, "handshake: sending");
                    let frame = encode_message(&message).map_err(|e| {
                        ConnectError::Config(crate::error::ConfigError::Invalid(e.to_string()))
                    })?;
                    let step = core.step().unwrap_or(HandshakeStep::FinalAuth);
                    let slot = match channel {
                        ChannelKind::Main => &mut main,
                        ChannelKind::Feed => &mut feed,
                    };
                    write(conn, slot, channel, Some(frame), deadline, step).await?;
                    if open_feed_early && feed.is_none() {
                        write(conn, &mut feed, ChannelKind::Feed, None, deadline, step).await?;
                    }
                }
                ClientOutput::Established(established) => {
                    let (Some(main), Some(feed)) = (main, feed) else {
                        return Err(ConnectError::ServerViolation {
                            reason: Reason::UnexpectedMessage,
                            message: "CONN_OK before both channels were open".into(),
                        }
                        .into());
                    };
                    return Ok(Handshaken {
                        established,
                        main,
                        feed,
                    });
                }
                ClientOutput::Failed(failure) => {
                    return Err(match failure {
                        ClientFailure::Refused {
                            reason,
                            message,
                            retry_after,
                        } => ConnectError::Refused {
                            reason,
                            message,
                            retry_after,
                        },
                        ClientFailure::TimedOut { step } => ConnectError::TimedOut { step },
                        ClientFailure::ServerViolation { reason, message } => {
                            ConnectError::ServerViolation { reason, message }
                        }
                    }
                    .into());
                }
            }
        }

        let timer = core.poll_timeout().unwrap_or(deadline);
        let read_main = core.wants_to_read(ChannelKind::Main);
        let read_feed = core.wants_to_read(ChannelKind::Feed) && !open_feed_early;
        tokio::select! {
            biased;
            result = next_frame(&mut main), if read_main => {
                on_frame(conn, &mut core, ChannelKind::Main, result)?;
            }
            result = next_frame(&mut feed), if read_feed => {
                on_frame(conn, &mut core, ChannelKind::Feed, result)?;
            }
            _ = tokio::time::sleep_until(timer.into()) => core.handle_timeout(now()),
        }
    }
}

async fn next_frame(stream: &mut Option<Stream>) -> Result<Bytes, ReadFailure> {
    match stream {
        Some(s) => s.reader.next_frame().await,
        None => pending().await,
    }
}

/// Feeds a read result to the handshake. A lost connection ends it.
fn on_frame(
    conn: &quinn::Connection,
    core: &mut ClientHandshake,
    channel: ChannelKind,
    result: Result<Bytes, ReadFailure>,
) -> Result<(), HandshakeError> {
    match result {
        Ok(body) => match decode_message(body) {
            Ok(message) => {
                debug!(message = message.name(), %channel, "handshake: received");
                core.handle_message(channel, message, now());
            }
            Err(e) => core.handle_violation(e.reason(), format!("{channel}: {e}")),
        },
        Err(ReadFailure::Decode(e)) => core.handle_violation(e.reason(), format!("{channel}: {e}")),
        Err(ReadFailure::Finished) => core.handle_violation(
            Reason::InvalidStream,
            format!("{channel}: finished during the handshake"),
        ),
        Err(ReadFailure::StreamEnded(detail)) => {
            core.handle_violation(Reason::InvalidStream, format!("{channel}: {detail}"));
        }
        Err(ReadFailure::ZeroRttRejected) => return Err(HandshakeError::ZeroRttRejected),
        Err(ReadFailure::Connection(closed)) => {
            let step = core.step().unwrap_or(HandshakeStep::FinalAuth);
            return Err(lost(conn, &closed, step).into());
        }
    }
    Ok(())
}

/// The error for a connection lost mid-handshake at `step`: a server that closed with a reason
/// refused us (its `CONN_FAILED` may not have been read yet); a silent path timed out; anything
/// else, a plain close included, is a transport failure.
fn lost(conn: &quinn::Connection, closed: &LinkClosed, step: HandshakeStep) -> ConnectError {
    match closed.disconnect() {
        // A close carries no hint of when to try again; only CONN_FAILED does.
        Disconnect::ByPeer { reason, message } if reason != Reason::Normal => {
            ConnectError::Refused {
                reason,
                message,
                retry_after: None,
            }
        }
        Disconnect::TimedOut => ConnectError::TimedOut { step },
        _ => ConnectError::Transport(
            conn.close_reason()
                .unwrap_or(quinn::ConnectionError::LocallyClosed),
        ),
    }
}

/// Writes a handshake frame (or, with `None`, just the declaration) on `channel`, opening and
/// declaring its stream first if needed.
async fn write(
    conn: &quinn::Connection,
    slot: &mut Option<Stream>,
    channel: ChannelKind,
    frame: Option<Bytes>,
    deadline: Instant,
    step: HandshakeStep,
) -> Result<(), HandshakeError> {
    let write = async {
        match slot {
            Some(stream) => match frame {
                Some(frame) => stream.writer.write(frame).await,
                None => Ok(()),
            },
            None => {
                let (send, recv) = conn
                    .open_bi()
                    .await
                    .map_err(|e| StreamError::Lost(super::link::link_closed(&e)))?;
                let stream = slot.insert(Stream {
                    reader: FrameReader::new(recv, HANDSHAKE_FRAME_LIMIT),
                    writer: FrameWriter::new(send),
                });
                // The declaration byte and the first frame in one write.
                let frame = frame.unwrap_or_default();
                let mut first = BytesMut::with_capacity(frame.len().saturating_add(1));
                first.extend_from_slice(&[channel.tag()]);
                first.extend_from_slice(&frame);
                stream.writer.write(first.freeze()).await
            }
        }
    };
    match tokio::time::timeout_at(deadline.into(), write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(StreamError::Lost(closed))) => Err(lost(conn, &closed, step).into()),
        Ok(Err(StreamError::ZeroRttRejected)) => Err(HandshakeError::ZeroRttRejected),
        Ok(Err(StreamError::Failed(detail))) => Err(ConnectError::ServerViolation {
            reason: Reason::InvalidStream,
            message: format!("{channel}: {detail}"),
        }
        .into()),
        Ok(Err(StreamError::Closed)) => Err(ConnectError::ServerViolation {
            reason: Reason::InvalidStream,
            message: format!("{channel}: stream closed"),
        }
        .into()),
        Err(_) => Err(ConnectError::TimedOut { step }.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Identity, ServerConfig, Trust};

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn resolved_addresses_alternate_families_from_the_first() {
        let found = [
            addr("[::1]:1"),
            addr("[::2]:1"),
            addr("10.0.0.1:1"),
            addr("[::1]:1"),
            addr("10.0.0.2:1"),
            addr("10.0.0.3:1"),
        ];
        assert_eq!(
            interleave(&found),
            [
                addr("[::1]:1"),
                addr("10.0.0.1:1"),
                addr("[::2]:1"),
                addr("10.0.0.2:1"),
                addr("10.0.0.3:1"),
            ]
        );
        assert_eq!(interleave(&[addr("10.0.0.1:1")]), [addr("10.0.0.1:1")]);
        assert!(interleave(&[]).is_empty());
    }

    #[test]
    fn a_socket_reaches_only_the_addresses_of_its_family() {
        assert!(reaches(addr("0.0.0.0:0"), addr("10.0.0.1:1")));
        assert!(!reaches(addr("0.0.0.0:0"), addr("[::1]:1")));
        assert!(reaches(addr("[::]:0"), addr("10.0.0.1:1")), "dual-stack");
        assert!(reaches(addr("[::]:0"), addr("[::1]:1")));
        assert!(!reaches(addr("[::1]:0"), addr("127.0.0.1:1")));
    }

    #[tokio::test]
    async fn an_address_that_does_not_answer_gives_way_to_the_next() {
        let identity = Identity::generate_self_signed(&["localhost"]).unwrap();
        let trust = Trust::Certificate(identity.certificate().clone());
        // A bare QUIC server endpoint of this layer: it completes QUIC handshakes, which is all
        // the race looks at.
        let server_config = ServerConfig::new(addr("127.0.0.1:0"), identity);
        let key = endpoint::token_key().unwrap();
        let server = endpoint::server(&server_config, &key, None, None).unwrap();
        tokio::spawn({
            let server = server.clone();
            async move {
                while let Some(incoming) = server.accept().await {
                    tokio::spawn(async move {
                        let _ = incoming.await;
                    });
                }
            }
        });
        // Bound, so nothing tells the client it is not there: it just never answers.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let silent = silent.local_addr().unwrap();
        let live = server.local_addr().unwrap();
        let mut config = ClientConfig::new(live, trust);
        config.handshake_timeout = Duration::from_secs(10);
        let deadline = super::super::deadline_after(config.handshake_timeout);

        let opened = open_first(&config, None, &[silent, live], deadline)
            .await
            .unwrap();
        assert_eq!(opened.server, live, "the one that answered won");

        config.server = ServerAddress::Host {
            name: "game.test".into(),
            port: silent.port(),
        };
        let soon = super::super::deadline_after(Duration::from_millis(600));
        match open_first(&config, None, &[silent, silent], soon).await {
            Err(ConnectError::NoAnswer { server, .. }) => {
                assert_eq!(
                    server,
                    format!("game.test:{0} ({silent}, {silent})", silent.port())
                );
            }
            Err(other) => panic!("expected no answer, got {other}"),
            Ok(_) => panic!("expected no answer, got a connection"),
        }
    }
}
