//! The client side of the three-step handshake, without I/O.
//!
//! ```text
//!  start: sends CONN_INIT on main
//!  ExpectConnInitReply --CONN_INIT_REPLY(main)--> ExpectFeedInitReply (sends FEED_INIT on feed)
//!  ExpectFeedInitReply --FEED_INIT_REPLY(feed)--> ExpectConnOk        (sends FINAL_AUTH on main)
//!        |  no reply within feed_init_timeout: FEED_INIT again, up to feed_init_attempts
//!  ExpectConnOk        --CONN_OK(main)---------> Done (yields Established)
//!
//!  resume: sends RESUME on main, then ExpectConnOk as above
//! ```
//!
//! `CONN_FAILED` on either channel, any other message, or the deadline ends it with a
//! [`ClientFailure`].

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::message::{ChannelKind, Message, PlayerId, Reason, Token};
use super::rules::{FrameLimits, InboundRules};
use super::server::MAX_FEED_INITS;

/// Settings of one client handshake.
#[derive(Debug, Clone)]
pub struct ClientHandshakeConfig {
    /// When the whole handshake must be complete.
    pub deadline: Instant,
    /// Credentials sent in `CONN_INIT` for the server's authenticator.
    pub credentials: Bytes,
    /// How long to wait for `FEED_INIT_REPLY` before sending `FEED_INIT` again.
    pub feed_init_timeout: Duration,
    /// How many `FEED_INIT` messages to send in all (first attempt included), clamped to
    /// `1..=`[`MAX_FEED_INITS`].
    pub feed_init_attempts: u8,
    /// The frame limits this client announces in `CONN_INIT`.
    pub local_limits: FrameLimits,
}

/// A step of the handshake, used to say where it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeStep {
    /// The QUIC (TLS) handshake.
    Quic,
    /// Waiting for the reply to `CONN_INIT`.
    ConnInit,
    /// Waiting for the reply to `FEED_INIT`.
    FeedInit,
    /// Waiting for the reply to `FINAL_AUTH`.
    FinalAuth,
    /// Waiting for the reply to `RESUME`.
    Resume,
}

impl fmt::Display for HandshakeStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HandshakeStep::Quic => "in the QUIC handshake",
            HandshakeStep::ConnInit => "waiting for the CONN_INIT reply",
            HandshakeStep::FeedInit => "waiting for the FEED_INIT reply",
            HandshakeStep::FinalAuth => "waiting for CONN_OK",
            HandshakeStep::Resume => "waiting for the RESUME reply",
        })
    }
}

/// Why a client handshake ended without a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFailure {
    /// The server answered `CONN_FAILED`.
    Refused {
        /// The server's reason.
        reason: Reason,
        /// The server's detail text.
        message: String,
        /// The server's hint of when to try again.
        retry_after: Option<Duration>,
    },
    /// The deadline passed, or every `FEED_INIT` attempt went unanswered.
    TimedOut {
        /// Where the handshake was.
        step: HandshakeStep,
    },
    /// The server sent something the protocol does not allow.
    ServerViolation {
        /// The reason the client closes with.
        reason: Reason,
        /// Detail.
        message: String,
    },
}

impl ClientFailure {
    /// The reason the client closes the connection with.
    pub fn close_reason(&self) -> Reason {
        match self {
            // The server closes after CONN_FAILED; the client just echoes its reason.
            ClientFailure::Refused { reason, .. } => *reason,
            ClientFailure::TimedOut { .. } => Reason::HandshakeTimeout,
            ClientFailure::ServerViolation { reason, .. } => *reason,
        }
    }
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOutput {
    /// Write this message on this channel (open the feed stream first if it is not open).
    Send(ChannelKind, Message),
    /// The handshake completed.
    Established(ClientEstablished),
    /// The handshake failed: close the connection with [`ClientFailure::close_reason`].
    Failed(ClientFailure),
}

/// What a client needs to resume a session on a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeTicket {
    /// The session's player ID.
    pub player_id: PlayerId,
    /// The proof of the credential from the last `CONN_OK`, computed on the new connection
    /// ([`resume_proof_context`](crate::protocol::resume_proof_context)).
    pub proof: Token,
    /// The next main message the client expects from the server.
    pub main_next: u64,
    /// The next feed message the client expects from the server.
    pub feed_next: u64,
}

/// The outcome of a completed client handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientEstablished {
    /// The player ID the server assigned.
    pub player_id: PlayerId,
    /// The frame limits the server announced in `CONN_OK`.
    pub peer_limits: FrameLimits,
    /// The credential for the next `RESUME`.
    pub credential: Token,
    /// The next main message the server expects: the client replays from there.
    pub main_next: u64,
    /// The next feed message the server expects.
    pub feed_next: u64,
    /// What the client still tolerates on main after `CONN_OK`.
    pub main_rules: InboundRules,
    /// What the client still tolerates on feed after `CONN_OK`.
    pub feed_rules: InboundRules,
}

#[derive(Debug)]
enum State {
    ExpectConnInitReply,
    ExpectFeedInitReply(ExpectFeedInitReply),
    ExpectConnOk(ExpectConnOk),
    Done,
}

#[derive(Debug)]
struct ExpectFeedInitReply {
    player_id: PlayerId,
    token_a: Token,
    sent: u8,
    retry_at: Instant,
}

#[derive(Debug)]
struct ExpectConnOk {
    player_id: PlayerId,
    /// `None` when resuming: there was no token B, hence no late `FEED_INIT_REPLY`.
    token_b: Option<Token>,
    feed_inits_sent: u8,
}

/// The client side of the handshake.
#[derive(Debug)]
pub struct ClientHandshake {
    state: State,
    config: ClientHandshakeConfig,
    outputs: VecDeque<ClientOutput>,
}

impl ClientHandshake {
    /// Starts a handshake: `CONN_INIT` is the first output.
    pub fn new(mut config: ClientHandshakeConfig) -> Self {
        config.feed_init_attempts = config.feed_init_attempts.clamp(1, MAX_FEED_INITS);
        let conn_init = Message::ConnInit {
            max_main_frame: config.local_limits.main,
            max_feed_frame: config.local_limits.feed,
            credentials: config.credentials.clone(),
        };
        ClientHandshake {
            state: State::ExpectConnInitReply,
            config,
            outputs: VecDeque::from([ClientOutput::Send(ChannelKind::Main, conn_init)]),
        }
    }

    /// Whether the handshake has finished, established or failed.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Starts a resume on a new connection: `RESUME` is the first output.
    pub fn resume(mut config: ClientHandshakeConfig, ticket: &ResumeTicket) -> Self {
        config.feed_init_attempts = config.feed_init_attempts.clamp(1, MAX_FEED_INITS);
        let resume = Message::Resume {
            player_id: ticket.player_id,
            proof: ticket.proof,
            max_main_frame: config.local_limits.main,
            max_feed_frame: config.local_limits.feed,
            main_next: ticket.main_next,
            feed_next: ticket.feed_next,
        };
        ClientHandshake {
            state: State::ExpectConnOk(ExpectConnOk {
                player_id: ticket.player_id,
                token_b: None,
                feed_inits_sent: 0,
            }),
            config,
            outputs: VecDeque::from([ClientOutput::Send(ChannelKind::Main, resume)]),
        }
    }

    /// The step the handshake is waiting on.
    pub fn step(&self) -> Option<HandshakeStep> {
        match &self.state {
            State::ExpectConnInitReply => Some(HandshakeStep::ConnInit),
            State::ExpectFeedInitReply(_) => Some(HandshakeStep::FeedInit),
            State::ExpectConnOk(s) if s.token_b.is_none() => Some(HandshakeStep::Resume),
            State::ExpectConnOk(_) => Some(HandshakeStep::FinalAuth),
            State::Done => None,
        }
    }

    /// Whether the driver should read `channel` now. After `FINAL_AUTH` the feed is left
    /// unread, so that `DATA` the server sends right after `CONN_OK` waits for the application.
    pub fn wants_to_read(&self, channel: ChannelKind) -> bool {
        !matches!(
            (&self.state, channel),
            (State::Done, _) | (State::ExpectConnOk(_), ChannelKind::Feed)
        )
    }

    /// The next thing the driver must do, if any.
    pub fn poll_output(&mut self) -> Option<ClientOutput> {
        self.outputs.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Done => None,
            State::ExpectFeedInitReply(s) => Some(s.retry_at.min(self.config.deadline)),
            _ => Some(self.config.deadline),
        }
    }

    /// The clock reached `now`: retries `FEED_INIT` or fails on the deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(step) = self.step() else { return };
        if now >= self.config.deadline {
            return self.finish(ClientOutput::Failed(ClientFailure::TimedOut { step }));
        }
        let State::ExpectFeedInitReply(s) = &mut self.state else {
            return;
        };
        if now < s.retry_at {
            return;
        }
        if s.sent >= self.config.feed_init_attempts {
            return self.finish(ClientOutput::Failed(ClientFailure::TimedOut { step }));
        }
        s.sent = s.sent.saturating_add(1);
        s.retry_at = now
            .checked_add(self.config.feed_init_timeout)
            .unwrap_or(self.config.deadline);
        let retry = Message::FeedInit {
            player_id: s.player_id,
            token_a: s.token_a,
        };
        tracing::debug!(
            attempt = s.sent,
            "no FEED_INIT reply in time; sending it again"
        );
        self.outputs
            .push_back(ClientOutput::Send(ChannelKind::Feed, retry));
    }

    /// A protocol violation the driver found below the message level on `channel`.
    pub fn handle_violation(&mut self, reason: Reason, message: String) {
        if !self.is_done() {
            self.finish(ClientOutput::Failed(ClientFailure::ServerViolation {
                reason,
                message,
            }));
        }
    }

    /// A message arrived from the server on `channel`.
    pub fn handle_message(&mut self, channel: ChannelKind, message: Message, now: Instant) {
        if let Message::ConnFailed {
            reason,
            message,
            retry_after_ms,
        } = message
        {
            if !self.is_done() {
                self.finish(ClientOutput::Failed(ClientFailure::Refused {
                    reason,
                    message,
                    retry_after: retry_after_ms.map(|ms| Duration::from_millis(u64::from(ms))),
                }));
            }
            return;
        }
        let state = std::mem::replace(&mut self.state, State::Done);
        let next = match (state, channel, message) {
            (
                State::ExpectConnInitReply,
                ChannelKind::Main,
                Message::ConnInitReply { player_id, token_a },
            ) => {
                self.outputs.push_back(ClientOutput::Send(
                    ChannelKind::Feed,
                    Message::FeedInit { player_id, token_a },
                ));
                State::ExpectFeedInitReply(ExpectFeedInitReply {
                    player_id,
                    token_a,
                    sent: 1,
                    retry_at: now
                        .checked_add(self.config.feed_init_timeout)
                        .unwrap_or(self.config.deadline),
                })
            }
            (
                State::ExpectFeedInitReply(s),
                ChannelKind::Feed,
                Message::FeedInitReply { token_b },
            ) => {
                self.outputs.push_back(ClientOutput::Send(
                    ChannelKind::Main,
                    Message::FinalAuth { token_b },
                ));
                State::ExpectConnOk(ExpectConnOk {
                    player_id: s.player_id,
                    token_b: Some(token_b),
                    feed_inits_sent: s.sent,
                })
            }
            (
                State::ExpectConnOk(s),
                ChannelKind::Main,
                Message::ConnOk {
                    max_main_frame,
                    max_feed_frame,
                    credential,
                    main_next,
                    feed_next,
                },
            ) => {
                let peer_limits =
                    match FrameLimits::announced(max_main_frame, max_feed_frame, "CONN_OK") {
                        Ok(limits) => limits,
                        Err(message) => {
                            return self.finish(ClientOutput::Failed(
                                ClientFailure::ServerViolation {
                                    reason: Reason::MalformedMessage,
                                    message,
                                },
                            ));
                        }
                    };
                if s.token_b.is_some() && (main_next, feed_next) != (0, 0) {
                    return self.finish(ClientOutput::Failed(ClientFailure::ServerViolation {
                        reason: Reason::SequenceError,
                        message: format!(
                            "CONN_OK of a new session expects messages {main_next}/{feed_next}, not 0"
                        ),
                    }));
                }
                // Each FEED_INIT beyond the first may still draw a copy of FEED_INIT_REPLY.
                let feed_rules = match s.token_b {
                    Some(token_b) => {
                        InboundRules::client_feed(token_b, s.feed_inits_sent.saturating_sub(1))
                    }
                    None => InboundRules::data_only(),
                };
                self.finish(ClientOutput::Established(ClientEstablished {
                    player_id: s.player_id,
                    peer_limits,
                    credential,
                    main_next,
                    feed_next,
                    main_rules: InboundRules::data_only(),
                    feed_rules,
                }));
                return;
            }
            (state, channel, message) => {
                let waiting = match state {
                    State::ExpectConnInitReply => "CONN_INIT_REPLY on main",
                    State::ExpectFeedInitReply(_) => "FEED_INIT_REPLY on feed",
                    State::ExpectConnOk(_) => "CONN_OK on main",
                    State::Done => return,
                };
                return self.finish(ClientOutput::Failed(ClientFailure::ServerViolation {
                    reason: Reason::UnexpectedMessage,
                    message: format!(
                        "{} on {channel} while waiting for {waiting}",
                        message.name()
                    ),
                }));
            }
        };
        self.state = next;
    }

    fn finish(&mut self, output: ClientOutput) {
        self.state = State::Done;
        self.outputs.push_back(output);
    }
}
