//! The server driver: accepts connections and runs each one's handshake over quinn.
//!
//! One task per connection. It drives [`ServerHandshake`] (deciding nothing itself), hands
//! the established [`Session`] to the application, then waits for the connection to end to
//! free the player's slot.

use std::future::pending;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::link::{Closer, Link, truncate};
use super::stream::{FrameReader, FrameWriter, ReadFailure};
use crate::auth::{AuthDecision, AuthRequest, PendingDecision};
use crate::config::ServerConfig;
use crate::protocol::codec::{decode_message, encode_message};
use crate::protocol::{
    ChannelKind, HANDSHAKE_FRAME_LIMIT, Message, PlayerId, Reason, ServerEstablished,
    ServerHandshake, ServerHandshakeConfig, ServerOutput, SessionRegistry, SystemEntropy,
};
use crate::session::{ChannelParts, Session};

/// Longest wait for the client to acknowledge a `CONN_FAILED` before closing anyway.
const FAIL_LINGER: Duration = Duration::from_millis(500);

/// A shutdown request: the reason every connection is closed with.
#[derive(Debug, Clone)]
pub(crate) struct Shutdown {
    pub(crate) reason: Reason,
    pub(crate) message: String,
}

/// State shared by the accept loop, the connection tasks and the [`Server`](crate::Server).
pub(crate) struct ServerShared {
    pub(crate) config: ServerConfig,
    registry: Mutex<SessionRegistry>,
    pub(crate) shutdown: watch::Sender<Option<Shutdown>>,
}

impl ServerShared {
    pub(crate) fn new(config: ServerConfig) -> Self {
        let registry = Mutex::new(SessionRegistry::new(config.max_sessions));
        ServerShared {
            config,
            registry,
            shutdown: watch::Sender::new(None),
        }
    }

    /// The registry; a panic elsewhere while holding the lock does not make it unusable.
    pub(crate) fn registry(&self) -> MutexGuard<'_, SessionRegistry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Keeps a player's registry slot while the connection lives.
struct Slot {
    shared: Arc<ServerShared>,
    player_id: PlayerId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.registry().release(self.player_id);
    }
}

/// Accepts connections until shutdown, then waits for every connection task to end.
pub(crate) async fn accept_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<ServerShared>,
    sessions: mpsc::Sender<Session>,
) {
    let mut tasks = JoinSet::new();
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    tasks.spawn(serve(incoming, shared.clone(), sessions.clone()));
                }
                None => break,
            },
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done {
                    warn!(error = %e, "a connection task failed");
                }
            }
            _ = shutdown_signal(&mut shutdown) => break,
        }
    }
    drop(sessions);
    while tasks.join_next().await.is_some() {}
    // Every connection has been closed with the shutdown's reason; refuse whatever comes next.
    let reason = shared
        .shutdown
        .borrow()
        .clone()
        .map_or(Reason::ServerShutdown, |s| s.reason);
    endpoint.close(reason.code().into(), reason.describe().as_bytes());
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

/// One connection, from its first packet to its end.
async fn serve(
    incoming: quinn::Incoming,
    shared: Arc<ServerShared>,
    sessions: mpsc::Sender<Session>,
) {
    let remote = incoming.remote_address();
    let deadline = super::deadline_after(shared.config.handshake_timeout);
    let mut shutdown = shared.shutdown.subscribe();
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(e) => return debug!(%remote, error = %e, "connection attempt refused"),
    };
    let conn = tokio::select! {
        result = tokio::time::timeout_at(deadline.into(), connecting) => match result {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return debug!(%remote, error = %e, "QUIC handshake failed"),
            Err(_) => return debug!(%remote, "QUIC handshake timed out"),
        },
        _ = shutdown_signal(&mut shutdown) => return,
    };
    let Some((established, main, feed, slot)) =
        handshake(&conn, &shared, remote, deadline, &mut shutdown).await
    else {
        return;
    };
    let player_id = established.player_id;
    let limits = shared.config.frame_limits;
    let closer = Closer::new(conn.clone());
    let session = Session::new(
        Link::new(closer.clone(), None),
        player_id,
        ChannelParts::new(
            ChannelKind::Main,
            main.writer,
            main.reader,
            established.main_rules,
            limits,
            established.peer_limits,
        ),
        ChannelParts::new(
            ChannelKind::Feed,
            feed.writer,
            feed.reader,
            established.feed_rules,
            limits,
            established.peer_limits,
        ),
    );
    info!(%player_id, %remote, "session established");
    tokio::select! {
        sent = sessions.send(session) => if sent.is_err() {
            // The server is gone; `session` was dropped with the failed send, closing it.
            return;
        },
        s = shutdown_signal(&mut shutdown) => return closer.close(s.reason, &s.message),
    }
    tokio::select! {
        why = closer.closed() => debug!(%player_id, %remote, reason = %why, "session ended"),
        s = shutdown_signal(&mut shutdown) => closer.close(s.reason, &s.message),
    }
    drop(slot);
}

fn close(conn: &quinn::Connection, reason: Reason, message: &str) {
    conn.close(reason.code().into(), truncate(message).as_bytes());
}

/// A client stream during the handshake: its channel once declared, and both halves.
struct Stream {
    channel: Option<ChannelKind>,
    reader: FrameReader,
    writer: FrameWriter,
}

/// What a stream produced.
enum Item {
    Tag(u8),
    Frame(Bytes),
}

async fn next_item(
    stream: &mut Option<Stream>,
) -> (Option<ChannelKind>, Result<Item, ReadFailure>) {
    match stream {
        Some(s) => match s.channel {
            None => (None, s.reader.read_tag().await.map(Item::Tag)),
            Some(channel) => (Some(channel), s.reader.next_frame().await.map(Item::Frame)),
        },
        None => pending().await,
    }
}

fn find(streams: &mut [Option<Stream>; 2], channel: ChannelKind) -> Option<&mut Stream> {
    streams
        .iter_mut()
        .flatten()
        .find(|s| s.channel == Some(channel))
}

/// Runs the token handshake on an established QUIC connection. On success returns the outcome,
/// the main and feed streams, and the player's registry slot; on failure the connection has
/// been closed with the reason.
async fn handshake(
    conn: &quinn::Connection,
    shared: &Arc<ServerShared>,
    remote: SocketAddr,
    deadline: Instant,
    shutdown: &mut watch::Receiver<Option<Shutdown>>,
) -> Option<(ServerEstablished, Stream, Stream, Slot)> {
    let config = &shared.config;
    let mut core = ServerHandshake::new(ServerHandshakeConfig {
        deadline,
        token_lifetime: config.token_lifetime,
        local_limits: config.frame_limits,
    });
    let mut entropy = SystemEntropy::new();
    let mut streams: [Option<Stream>; 2] = [None, None];
    let mut auth: Option<PendingDecision<'_>> = None;
    let mut slot: Option<Slot> = None;
    let mut failed_on: Option<ChannelKind> = None;

    loop {
        while let Some(output) = core.poll_output() {
            match output {
                ServerOutput::Send(channel, message) => {
                    let written = send(&mut streams, channel, &message, deadline).await;
                    match (&message, written) {
                        (Message::ConnFailed { .. }, written) => failed_on = written.ok(),
                        (_, Ok(_)) => {}
                        // A reply that cannot be written (a stopped stream, a client that
                        // withholds flow-control credit) ends the handshake: nothing after it,
                        // CONN_OK least of all, may go out on a half-written stream.
                        (_, Err(reason)) => {
                            debug!(%remote, %reason, message = message.name(), "handshake reply not written");
                            close(conn, reason, reason.describe());
                            return None;
                        }
                    }
                }
                ServerOutput::Authenticate { credentials } => {
                    if shared.registry().is_full() {
                        core.refuse(Reason::ServerFull, "server full");
                    } else {
                        let request = AuthRequest {
                            credentials,
                            remote_address: remote,
                        };
                        auth = Some(config.authenticator.authenticate_boxed(request));
                    }
                }
                ServerOutput::Established(established) => {
                    let [a, b] = streams;
                    let (mut main, mut feed) = (None, None);
                    for s in [a, b].into_iter().flatten() {
                        match s.channel {
                            Some(ChannelKind::Main) => main = Some(s),
                            Some(ChannelKind::Feed) => feed = Some(s),
                            None => {}
                        }
                    }
                    return match (main, feed, slot) {
                        (Some(main), Some(feed), Some(slot)) => {
                            Some((established, main, feed, slot))
                        }
                        _ => {
                            warn!(%remote, "handshake completed without both streams and a slot");
                            close(conn, Reason::InternalError, "internal error");
                            None
                        }
                    };
                }
                ServerOutput::Close { reason, message } => {
                    debug!(%remote, %reason, %message, "handshake failed");
                    if let Some(stream) = failed_on.and_then(|c| find(&mut streams, c)) {
                        stream.writer.finish_and_linger(FAIL_LINGER).await;
                    }
                    close(conn, reason, &message);
                    return None;
                }
            }
        }

        let timer = core.poll_timeout().unwrap_or(deadline);
        let has_free_slot = streams.iter().any(Option::is_none);
        let [first, second] = &mut streams;
        tokio::select! {
            s = shutdown_signal(shutdown) => {
                core.handle_violation(ChannelKind::Main, s.reason, s.message);
            }
            decision = async {
                match auth.as_mut() {
                    Some(decision) => decision.await,
                    None => pending().await,
                }
            }, if auth.is_some() => {
                auth = None;
                let requested = match decision {
                    AuthDecision::Accept => Ok(None),
                    AuthDecision::AcceptAs(id) => Ok(Some(id)),
                    // NORMAL is not a refusal; an authenticator that says so means AUTH_REFUSED.
                    AuthDecision::Reject { reason: Reason::Normal, message } => Err((Reason::AuthRefused, message)),
                    AuthDecision::Reject { reason, message } => Err((reason, message)),
                };
                match requested.map(|id| shared.registry().admit(id)) {
                    Ok(Ok(player_id)) => {
                        slot = Some(Slot { shared: shared.clone(), player_id });
                        core.accept(player_id, Instant::now(), &mut entropy);
                    }
                    Ok(Err(reason)) => core.refuse(reason, reason.describe()),
                    Err((reason, message)) => core.refuse(reason, &message),
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
                    return None;
                }
            },
            (channel, item) = next_item(first) => {
                if !on_item(&mut core, &mut streams, 0, channel, item, &mut entropy) {
                    return None;
                }
            }
            (channel, item) = next_item(second) => {
                if !on_item(&mut core, &mut streams, 1, channel, item, &mut entropy) {
                    return None;
                }
            }
            _ = tokio::time::sleep_until(timer.into()) => core.handle_timeout(Instant::now()),
        }
    }
}

/// Acts on one stream item. Returns `false` when the connection is gone.
fn on_item(
    core: &mut ServerHandshake,
    streams: &mut [Option<Stream>; 2],
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
            Ok(message) => core.handle_message(on, message, Instant::now(), entropy),
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
    }
    true
}

/// Writes a handshake message on `channel`, or on main when that channel has no stream yet.
/// Returns the channel written on, or the reason to close with when the write cannot be done:
/// no stream to write on, a stopped or reset stream, or a write that cannot complete by the
/// deadline (a client that withholds flow-control credit).
async fn send(
    streams: &mut [Option<Stream>; 2],
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
    let until = deadline.max(Instant::now().checked_add(FAIL_LINGER).unwrap_or(deadline));
    match tokio::time::timeout_at(until.into(), stream.writer.write(frame)).await {
        Ok(Ok(())) => Ok(target),
        Ok(Err(_)) => Err(Reason::InvalidStream),
        Err(_) => Err(Reason::HandshakeTimeout),
    }
}
