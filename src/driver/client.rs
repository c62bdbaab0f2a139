//! The client driver: connects over quinn, runs [`ClientHandshake`] to a session, and keeps the
//! session alive across connections (the resume loop).

use std::future::pending;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tracing::{debug, info};

use super::endpoint;
use super::link::{Closer, disconnect_from_peer};
use super::session::{Attach, Counters, Role, SessionCore, SessionParams, StreamPair, WatchEnd};
use super::stream::{FrameReader, FrameWriter, ReadFailure};
use crate::config::{ClientConfig, ResumePolicy};
use crate::error::{ConnectError, Disconnect};
use crate::events::SessionEvent;
use crate::protocol::codec::{decode_message, encode_message};
use crate::protocol::{
    ChannelKind, ClientEstablished, ClientFailure, ClientHandshake, ClientHandshakeConfig,
    ClientOutput, FrameLimits, HANDSHAKE_FRAME_LIMIT, HandshakeStep, Reason, ResumeTicket,
};
use crate::session::Session;

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
pub(crate) struct Resumer {
    endpoint: quinn::Endpoint,
    server: SocketAddr,
    server_name: String,
    handshake: ClientHandshakeConfig,
    policy: ResumePolicy,
    zero_rtt: bool,
}

impl Resumer {
    /// The client's endpoint (for rebinding it to a new socket).
    pub(crate) fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }
}

/// Connects to `config.server` and completes the handshake: `CONN_INIT` goes in 0-RTT data
/// when the configuration holds a TLS session ticket from the server (PROTOCOL.md §12.4), and
/// again in 1-RTT on the same connection if the server rejects it.
pub(crate) async fn connect(config: &ClientConfig) -> Result<Session, ConnectError> {
    config.validate()?;
    let deadline = super::deadline_after(config.handshake_timeout);
    let endpoint = endpoint::client(config)?;
    let connecting = endpoint.connect(config.server, &config.server_name)?;
    let (conn, accepted) = match open(connecting, config.zero_rtt, deadline).await {
        Ok(opened) => opened,
        Err(None | Some(quinn::ConnectionError::TimedOut)) => {
            return Err(ConnectError::TimedOut {
                step: HandshakeStep::Quic,
            });
        }
        Err(Some(e)) => return Err(ConnectError::Transport(e)),
    };
    let closer = Closer::new(conn.clone());
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
                HandshakeError::Failed(e) => e,
                HandshakeError::ZeroRttRejected => ConnectError::TimedOut {
                    step: HandshakeStep::Quic,
                },
            };
            close_for(&closer, &error);
            return Err(error);
        }
    };
    let zero_rtt = was_accepted(accepted).await;
    let params = SessionParams::new(&config.transport, config.frame_limits);
    let role = Role::Client(Box::new(Resumer {
        endpoint,
        server: config.server,
        server_name: config.server_name.clone(),
        handshake,
        policy: config.resume.clone(),
        zero_rtt: config.zero_rtt,
    }));
    let player_id = done.established.player_id;
    let core = SessionCore::new(player_id, params, role);
    if zero_rtt {
        Counters::bump(&core.counters.connect_0rtt, 1);
    }
    core.set_credential(done.established.credential);
    let attached = core
        .attach(attachment(conn, closer, done, config.frame_limits))
        .await
        .map_err(|d| ConnectError::ServerViolation {
            reason: Reason::SequenceError,
            message: d.to_string(),
        })?;
    debug!(%player_id, "handshake complete");
    tokio::spawn(run_session(core.clone(), attached.generation));
    if let Some(every) = config.transport.stats_log_interval {
        tokio::spawn(crate::stats::log_session(Arc::downgrade(&core), every));
    }
    Ok(Session::new(core))
}

/// Closes a failed handshake's connection with the reason the error calls for, so the server
/// learns why.
fn close_for(closer: &Closer, error: &ConnectError) {
    let reason = match error {
        ConnectError::Refused { reason, .. } | ConnectError::ServerViolation { reason, .. } => {
            Some(*reason)
        }
        ConnectError::TimedOut { .. } => Some(Reason::HandshakeTimeout),
        _ => None,
    };
    if let Some(reason) = reason {
        closer.close(reason, &error.to_string());
    }
}

fn attachment(
    conn: quinn::Connection,
    closer: Closer,
    done: Handshaken,
    local: FrameLimits,
) -> Attach {
    let pair = |stream: Stream, kind, rules| {
        StreamPair::new(stream.writer, stream.reader, rules, kind, local)
    };
    let established = done.established;
    Attach {
        conn,
        closer,
        main: pair(done.main, ChannelKind::Main, established.main_rules),
        feed: pair(done.feed, ChannelKind::Feed, established.feed_rules),
        peer_limits: established.peer_limits,
        peer_next: (established.main_next, established.feed_next),
    }
}

/// A client session's life after its first handshake: watch the connection, resume when it is
/// lost, until the session ends.
async fn run_session(core: Arc<SessionCore>, mut generation: u64) {
    loop {
        match core.watch(generation).await {
            WatchEnd::Ended | WatchEnd::Superseded => return,
            WatchEnd::Lost(why) => {
                info!(player_id = %core.player_id, %why, "connection lost; resuming");
                core.lost(generation, &why);
                let Role::Client(resumer) = &core.role else {
                    return;
                };
                match resumer.resume(&core).await {
                    Ok(next) => generation = next,
                    // The application closed the session meanwhile: nothing failed.
                    Err(_) if core.ended().is_some() => return,
                    Err((reason, message)) => {
                        Counters::bump(&core.counters.resume_failures, 1);
                        core.emit(SessionEvent::ResumeFailed {
                            reason,
                            message: message.clone(),
                        });
                        core.end(
                            Disconnect::ResumeFailed { reason, message },
                            Reason::Normal,
                            "",
                        );
                        super::link::drain(resumer.endpoint()).await;
                        return;
                    }
                }
            }
        }
    }
}

/// A successful resume attempt.
struct Resumed {
    generation: u64,
    replayed: u64,
    lost: u64,
    zero_rtt: bool,
    handshake: Duration,
}

/// How one resume attempt failed.
enum AttemptError {
    /// Final: the server refused (or the session ended meanwhile).
    Refused(Reason, String),
    /// Worth another attempt: the server was not reached, or did not answer in time.
    Retry(String),
}

impl Resumer {
    /// Resumes `core` on a new connection, retrying with exponential backoff and jitter within
    /// the budget. Returns the new attachment's generation, or the final reason.
    async fn resume(&self, core: &Arc<SessionCore>) -> Result<u64, (Reason, String)> {
        // The outage runs from the last packet heard on the lost connection.
        let started = core.lost_at().unwrap_or_else(Instant::now);
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
                    replayed,
                    lost,
                    zero_rtt,
                    handshake,
                }) => {
                    let outage = started.elapsed();
                    Counters::bump(&core.counters.resumes, 1);
                    if zero_rtt {
                        Counters::bump(&core.counters.resumes_0rtt, 1);
                    }
                    info!(player_id = %core.player_id, attempts, ?outage, replayed, lost, "session resumed");
                    core.emit(SessionEvent::Resumed {
                        outage,
                        replayed,
                        lost,
                        handshake,
                        zero_rtt,
                    });
                    return Ok(generation);
                }
                Err(AttemptError::Refused(reason, message)) => return Err((reason, message)),
                Err(AttemptError::Retry(why)) => {
                    debug!(player_id = %core.player_id, attempts, %why, "resume attempt failed");
                    let wait = jitter(backoff);
                    if Instant::now()
                        .checked_add(wait)
                        .is_none_or(|t| t >= budget_end)
                    {
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

    /// One resume attempt: a new connection (in 0-RTT when the TLS session allows), `RESUME`
    /// on main, and the attachment on `CONN_OK`.
    async fn attempt(
        &self,
        core: &Arc<SessionCore>,
        deadline: Instant,
    ) -> Result<Resumed, AttemptError> {
        let started = Instant::now();
        let credential = core
            .credential()
            .ok_or_else(|| AttemptError::Refused(Reason::InternalError, "no credential".into()))?;
        let connecting = self
            .endpoint
            .connect(self.server, &self.server_name)
            .map_err(|e| AttemptError::Retry(e.to_string()))?;
        let (conn, accepted) = match open(connecting, self.zero_rtt, deadline).await {
            Ok(opened) => opened,
            Err(Some(e)) => return Err(AttemptError::Retry(e.to_string())),
            Err(None) => return Err(AttemptError::Retry("QUIC handshake timed out".into())),
        };
        let closer = Closer::new(conn.clone());
        // The positions are read as late as possible: whatever arrives on the old connection
        // after this is a duplicate the receivers drop.
        let ticket = || ResumeTicket {
            player_id: core.player_id,
            credential,
            main_next: core.main.inbound_next(),
            feed_next: core.feed.inbound_next(),
        };
        let mut config = self.handshake.clone();
        config.deadline = deadline;
        let result = handshake_once_more_in_1rtt(
            &conn,
            accepted.is_some(),
            || ClientHandshake::resume(config.clone(), &ticket()),
            deadline,
            true,
        )
        .await;
        let done = match result {
            Ok(done) => done,
            Err(HandshakeError::Failed(error)) => {
                close_for(&closer, &error);
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
                closer.close(Reason::HandshakeTimeout, "0-RTT rejected twice");
                return Err(AttemptError::Retry("0-RTT rejected".into()));
            }
        };
        let zero_rtt = was_accepted(accepted).await;
        core.set_credential(done.established.credential);
        let attached = core
            .attach(attachment(conn, closer, done, core.params.local_limits))
            .await
            .map_err(|d| match d {
                Disconnect::Locally { reason, message } => AttemptError::Refused(reason, message),
                other => AttemptError::Refused(Reason::Normal, other.to_string()),
            })?;
        // Confirms to the server that CONN_OK (and its new credential) arrived.
        core.poke().await;
        Ok(Resumed {
            generation: attached.generation,
            replayed: attached.replayed,
            lost: attached.lost,
            zero_rtt,
            handshake: started.elapsed(),
        })
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

/// `base` scaled by a random factor in 0.5..1.5, so that clients cut off together do not all
/// come back at the same instant.
fn jitter(base: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut byte);
    base.mul_f64(0.5 + f64::from(byte[0]) / 255.0)
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
            result = next_frame(&mut main), if read_main => {
                on_frame(&mut core, ChannelKind::Main, result)?;
            }
            result = next_frame(&mut feed), if read_feed => {
                on_frame(&mut core, ChannelKind::Feed, result)?;
            }
            _ = tokio::time::sleep_until(timer.into()) => core.handle_timeout(Instant::now()),
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
    core: &mut ClientHandshake,
    channel: ChannelKind,
    result: Result<Bytes, ReadFailure>,
) -> Result<(), HandshakeError> {
    match result {
        Ok(body) => match decode_message(body) {
            Ok(message) => core.handle_message(channel, message, Instant::now()),
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
        Err(ReadFailure::Connection(e)) => {
            let step = core.step().unwrap_or(HandshakeStep::FinalAuth);
            return Err(lost(e, step).into());
        }
    }
    Ok(())
}

/// The error for a connection lost mid-handshake at `step`: a server that closed with a reason
/// refused us (its `CONN_FAILED` may not have been read yet); a silent path timed out; anything
/// else, a plain close included, is a transport failure.
fn lost(error: quinn::ConnectionError, step: HandshakeStep) -> ConnectError {
    match disconnect_from_peer(&error) {
        // A close carries no hint of when to try again; only CONN_FAILED does.
        Disconnect::ByPeer { reason, message } if reason != Reason::Normal => {
            ConnectError::Refused {
                reason,
                message,
                retry_after: None,
            }
        }
        Disconnect::TimedOut => ConnectError::TimedOut { step },
        _ => ConnectError::Transport(error),
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
                    .map_err(quinn::WriteError::ConnectionLost)?;
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
        Ok(Err(quinn::WriteError::ConnectionLost(e))) => Err(lost(e, step).into()),
        Ok(Err(quinn::WriteError::ZeroRttRejected)) => Err(HandshakeError::ZeroRttRejected),
        Ok(Err(e)) => Err(ConnectError::ServerViolation {
            reason: Reason::InvalidStream,
            message: format!("{channel}: {e}"),
        }
        .into()),
        Err(_) => Err(ConnectError::TimedOut { step }.into()),
    }
}
