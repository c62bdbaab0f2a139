//! The server side of the three-step handshake, for one connection, without I/O.
//!
//! ```text
//!  ExpectConnInit --CONN_INIT(main)--> ExpectAuthDecision --accept()--> ExpectFeedInit
//!        (sends nothing)               (driver asks the app)   (sends CONN_INIT_REPLY on main)
//!
//!  ExpectFeedInit --FEED_INIT(feed)--> ExpectFinalAuth --FINAL_AUTH(main)--> Done
//!                  (sends FEED_INIT_REPLY)  |   ^        (sends CONN_OK, yields Established)
//!                                           +---+ repeated FEED_INIT: same FEED_INIT_REPLY again
//!
//!  ExpectConnInit --RESUME(main)--> ExpectResumeDecision --accept_resume()--> Done
//!                                  (driver checks the credential)  (sends CONN_OK)
//! ```
//!
//! Any other input, a bad token, `refuse()`, or the deadline sends `CONN_FAILED` and asks the
//! driver to close. The driver feeds in decoded messages, the application's decision and the
//! time; it drains [`ServerHandshake::poll_output`] after every call.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::codec::conn_failed;
use super::message::{ChannelKind, Message, PlayerId, Reason, Token};
use super::rules::{FrameLimits, InboundRules};
use super::token::{Entropy, IssuedToken, TokenError};

/// The most `FEED_INIT` messages a client may send on one connection (its first attempt and
/// retries). Beyond this the server fails the handshake with [`Reason::UnexpectedMessage`].
pub const MAX_FEED_INITS: u8 = 8;

/// Settings of one server handshake.
#[derive(Debug, Clone)]
pub struct ServerHandshakeConfig {
    /// When the whole handshake must be complete (QUIC handshake included; the driver computes
    /// it from when the connection attempt arrived).
    pub deadline: Instant,
    /// How long tokens A and B stay redeemable after they are issued.
    pub token_lifetime: Duration,
    /// The frame limits this server announces in `CONN_OK`.
    pub local_limits: FrameLimits,
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerOutput {
    /// Write this message on this channel.
    Send(ChannelKind, Message),
    /// Ask the application whether to admit this client (call [`ServerHandshake::accept`] or
    /// [`ServerHandshake::refuse`] with the answer).
    Authenticate {
        /// The credentials from `CONN_INIT`.
        credentials: Bytes,
    },
    /// A reconnection request: check the credential against the session (call
    /// [`ServerHandshake::accept_resume`] or [`ServerHandshake::refuse`]).
    Resume(ResumeRequest),
    /// The handshake completed: `CONN_OK` has been queued before this output.
    Established(ServerEstablished),
    /// Close the connection with this reason (any `CONN_FAILED` was queued before this output).
    Close {
        /// Why; also the QUIC application error code.
        reason: Reason,
        /// Detail for logs and the close frame.
        message: String,
    },
}

/// A `RESUME` as the server received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeRequest {
    /// The session's player ID.
    pub player_id: PlayerId,
    /// The presented proof of the session's credential, bound to this connection's keys: the
    /// driver checks it against the proof of each credential the session accepts.
    pub proof: Token,
    /// The next main message the client expects: the server replays from there.
    pub main_next: u64,
    /// The next feed message the client expects.
    pub feed_next: u64,
}

/// The outcome of a completed server handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEstablished {
    /// The player this connection belongs to.
    pub player_id: PlayerId,
    /// The frame limits the client announced in `CONN_INIT` or `RESUME`.
    pub peer_limits: FrameLimits,
    /// The credential sent in `CONN_OK`, for the client's next `RESUME`.
    pub credential: Token,
    /// `Some` when this connection resumed an existing session: where the client expects the
    /// server's replay to start, as `(main, feed)`.
    pub resumed: Option<(u64, u64)>,
    /// What the server still tolerates on main after `CONN_OK`.
    pub main_rules: InboundRules,
    /// What the server still tolerates on feed after `CONN_OK`.
    pub feed_rules: InboundRules,
}

#[derive(Debug)]
enum State {
    ExpectConnInit,
    ExpectAuthDecision(ExpectAuthDecision),
    ExpectResumeDecision(ExpectAuthDecision),
    ExpectFeedInit(ExpectFeedInit),
    ExpectFinalAuth(ExpectFinalAuth),
    Done,
}

#[derive(Debug)]
struct ExpectAuthDecision {
    peer_limits: FrameLimits,
}

#[derive(Debug)]
struct ExpectFeedInit {
    peer_limits: FrameLimits,
    player_id: PlayerId,
    token_a: IssuedToken,
}

#[derive(Debug)]
struct ExpectFinalAuth {
    peer_limits: FrameLimits,
    player_id: PlayerId,
    token_a: Token,
    token_b: IssuedToken,
    feed_inits: u8,
}

/// A failure: the reason, the channel the offending input came on, and detail.
struct Failure {
    channel: ChannelKind,
    reason: Reason,
    message: String,
    retry_after: Option<Duration>,
}

impl Failure {
    fn new(channel: ChannelKind, reason: Reason, message: impl Into<String>) -> Self {
        Failure {
            channel,
            reason,
            message: message.into(),
            retry_after: None,
        }
    }

    fn unexpected(channel: ChannelKind, message: &Message, state: &str) -> Self {
        Failure::new(
            channel,
            Reason::UnexpectedMessage,
            format!("{} on {channel} while {state}", message.name()),
        )
    }

    fn token(channel: ChannelKind, which: &str, err: TokenError) -> Self {
        let reason = match err {
            TokenError::Invalid => Reason::InvalidToken,
            TokenError::PlayerMismatch => Reason::PlayerMismatch,
            TokenError::Expired => Reason::TokenExpired,
        };
        Failure::new(channel, reason, format!("{which}: {err}"))
    }
}

/// The server side of one connection's handshake.
#[derive(Debug)]
pub struct ServerHandshake {
    state: State,
    config: ServerHandshakeConfig,
    outputs: VecDeque<ServerOutput>,
}

impl ServerHandshake {
    /// A handshake waiting for `CONN_INIT`.
    pub fn new(config: ServerHandshakeConfig) -> Self {
        ServerHandshake {
            state: State::ExpectConnInit,
            config,
            outputs: VecDeque::new(),
        }
    }

    /// Whether the handshake has finished, established or failed.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The next thing the driver must do, if any.
    pub fn poll_output(&mut self) -> Option<ServerOutput> {
        self.outputs.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.is_done()).then_some(self.config.deadline)
    }

    /// The clock reached `now`: fails the handshake if the deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.is_done() && now >= self.config.deadline {
            self.fail(Failure::new(
                ChannelKind::Main,
                Reason::HandshakeTimeout,
                "handshake not completed before the deadline",
            ));
        }
    }

    /// A protocol violation the driver found below the message level (bad framing, a bad
    /// stream, an undecodable message) on `channel`.
    pub fn handle_violation(&mut self, channel: ChannelKind, reason: Reason, message: String) {
        if !self.is_done() {
            self.fail(Failure::new(channel, reason, message));
        }
    }

    /// A message arrived on `channel`.
    pub fn handle_message(
        &mut self,
        channel: ChannelKind,
        message: Message,
        now: Instant,
        entropy: &mut dyn Entropy,
    ) {
        let state = std::mem::replace(&mut self.state, State::Done);
        let result = match state {
            State::ExpectConnInit => self.on_conn_init(channel, message),
            State::ExpectAuthDecision(_) => Err(Failure::unexpected(
                channel,
                &message,
                "authenticating CONN_INIT",
            )),
            State::ExpectResumeDecision(_) => {
                Err(Failure::unexpected(channel, &message, "checking RESUME"))
            }
            State::ExpectFeedInit(s) => self.on_feed_init(s, channel, message, now, entropy),
            State::ExpectFinalAuth(s) => self.on_final_auth(s, channel, message, now, entropy),
            State::Done => Ok(State::Done),
        };
        match result {
            Ok(next) => self.state = next,
            Err(failure) => self.fail(failure),
        }
    }

    /// The application admitted the client as `player_id`: issues token A.
    ///
    /// Does nothing unless the handshake is waiting for this decision
    /// ([`ServerOutput::Authenticate`] was the last thing it asked for).
    pub fn accept(&mut self, player_id: PlayerId, now: Instant, entropy: &mut dyn Entropy) {
        let s = match std::mem::replace(&mut self.state, State::Done) {
            State::ExpectAuthDecision(s) => s,
            // Not waiting for this decision: nothing changes.
            other => {
                self.state = other;
                return;
            }
        };
        match IssuedToken::issue(entropy, player_id, now, self.config.token_lifetime) {
            Ok(token_a) => {
                self.send(
                    ChannelKind::Main,
                    Message::ConnInitReply {
                        player_id,
                        token_a: token_a.token(),
                    },
                );
                self.state = State::ExpectFeedInit(ExpectFeedInit {
                    peer_limits: s.peer_limits,
                    player_id,
                    token_a,
                });
            }
            Err(e) => self.fail(Failure::new(
                ChannelKind::Main,
                Reason::InternalError,
                e.to_string(),
            )),
        }
    }

    /// The application (or the server's limits) refused the client, or its `RESUME`, with an
    /// optional hint of when to try again.
    pub fn refuse(&mut self, reason: Reason, message: &str, retry_after: Option<Duration>) {
        if matches!(
            self.state,
            State::ExpectAuthDecision(_) | State::ExpectResumeDecision(_)
        ) {
            let mut failure = Failure::new(ChannelKind::Main, reason, message);
            failure.retry_after = retry_after;
            self.fail(failure);
        }
    }

    /// The `RESUME`'s credential was valid for `player_id`'s session, whose next expected
    /// messages from the client are `main_next` and `feed_next`: issues the next credential
    /// and sends `CONN_OK`. `credential` is the one the caller already recorded as the
    /// session's next (see [`SessionRegistry::resume`](super::SessionRegistry::resume)).
    ///
    /// Does nothing unless the handshake is waiting for a resume decision.
    pub fn accept_resume(
        &mut self,
        request: &ResumeRequest,
        credential: Token,
        main_next: u64,
        feed_next: u64,
    ) {
        let s = match std::mem::replace(&mut self.state, State::Done) {
            State::ExpectResumeDecision(s) => s,
            // Not waiting for this decision: nothing changes.
            other => {
                self.state = other;
                return;
            }
        };
        self.send_conn_ok(credential, main_next, feed_next);
        self.outputs
            .push_back(ServerOutput::Established(ServerEstablished {
                player_id: request.player_id,
                peer_limits: s.peer_limits,
                credential,
                resumed: Some((request.main_next, request.feed_next)),
                main_rules: InboundRules::data_only(),
                feed_rules: InboundRules::data_only(),
            }));
    }

    fn on_conn_init(&mut self, channel: ChannelKind, message: Message) -> Result<State, Failure> {
        match (channel, message) {
            (
                ChannelKind::Main,
                Message::ConnInit {
                    max_main_frame,
                    max_feed_frame,
                    credentials,
                },
            ) => {
                let peer_limits =
                    FrameLimits::announced(max_main_frame, max_feed_frame, "CONN_INIT").map_err(
                        |e| Failure::new(ChannelKind::Main, Reason::MalformedMessage, e),
                    )?;
                self.outputs
                    .push_back(ServerOutput::Authenticate { credentials });
                Ok(State::ExpectAuthDecision(ExpectAuthDecision {
                    peer_limits,
                }))
            }
            (
                ChannelKind::Main,
                Message::Resume {
                    player_id,
                    proof,
                    max_main_frame,
                    max_feed_frame,
                    main_next,
                    feed_next,
                },
            ) => {
                let peer_limits = FrameLimits::announced(max_main_frame, max_feed_frame, "RESUME")
                    .map_err(|e| Failure::new(ChannelKind::Main, Reason::MalformedMessage, e))?;
                self.outputs.push_back(ServerOutput::Resume(ResumeRequest {
                    player_id,
                    proof,
                    main_next,
                    feed_next,
                }));
                Ok(State::ExpectResumeDecision(ExpectAuthDecision {
                    peer_limits,
                }))
            }
            (channel, other) => Err(Failure::unexpected(
                channel,
                &other,
                "waiting for CONN_INIT or RESUME on main",
            )),
        }
    }

    fn on_feed_init(
        &mut self,
        s: ExpectFeedInit,
        channel: ChannelKind,
        message: Message,
        now: Instant,
        entropy: &mut dyn Entropy,
    ) -> Result<State, Failure> {
        let (player_id, token_a) = match (channel, message) {
            (ChannelKind::Feed, Message::FeedInit { player_id, token_a }) => (player_id, token_a),
            (channel, other) => {
                return Err(Failure::unexpected(
                    channel,
                    &other,
                    "waiting for FEED_INIT on feed",
                ));
            }
        };
        s.token_a
            .redeem(&token_a, player_id, now)
            .map_err(|e| Failure::token(ChannelKind::Feed, "token A", e))?;
        let token_b = IssuedToken::issue(entropy, s.player_id, now, self.config.token_lifetime)
            .map_err(|e| Failure::new(ChannelKind::Feed, Reason::InternalError, e.to_string()))?;
        self.send(
            ChannelKind::Feed,
            Message::FeedInitReply {
                token_b: token_b.token(),
            },
        );
        Ok(State::ExpectFinalAuth(ExpectFinalAuth {
            peer_limits: s.peer_limits,
            player_id: s.player_id,
            token_a,
            token_b,
            feed_inits: 1,
        }))
    }

    fn on_final_auth(
        &mut self,
        mut s: ExpectFinalAuth,
        channel: ChannelKind,
        message: Message,
        now: Instant,
        entropy: &mut dyn Entropy,
    ) -> Result<State, Failure> {
        match (channel, message) {
            (ChannelKind::Feed, Message::FeedInit { player_id, token_a }) => {
                // A retry of FEED_INIT (the client timed out before our reply arrived). Token A
                // was redeemed in time already; a repeat with the same token and player gets
                // the same token B again and changes nothing else.
                if !super::rules::tokens_equal(&s.token_a, &token_a) {
                    return Err(Failure::new(
                        ChannelKind::Feed,
                        Reason::InvalidToken,
                        "token A: repeated FEED_INIT with another token",
                    ));
                }
                if player_id != s.player_id {
                    return Err(Failure::token(
                        ChannelKind::Feed,
                        "token A",
                        TokenError::PlayerMismatch,
                    ));
                }
                if s.feed_inits >= MAX_FEED_INITS {
                    return Err(Failure::new(
                        ChannelKind::Feed,
                        Reason::UnexpectedMessage,
                        format!("more than {MAX_FEED_INITS} FEED_INIT messages"),
                    ));
                }
                s.feed_inits = s.feed_inits.saturating_add(1);
                self.send(
                    ChannelKind::Feed,
                    Message::FeedInitReply {
                        token_b: s.token_b.token(),
                    },
                );
                Ok(State::ExpectFinalAuth(s))
            }
            (ChannelKind::Main, Message::FinalAuth { token_b }) => {
                s.token_b
                    .redeem(&token_b, s.player_id, now)
                    .map_err(|e| Failure::token(ChannelKind::Main, "token B", e))?;
                let credential = IssuedToken::issue(entropy, s.player_id, now, Duration::MAX)
                    .map_err(|e| {
                        Failure::new(ChannelKind::Main, Reason::InternalError, e.to_string())
                    })?
                    .token();
                self.send_conn_ok(credential, 0, 0);
                self.outputs
                    .push_back(ServerOutput::Established(ServerEstablished {
                        player_id: s.player_id,
                        peer_limits: s.peer_limits,
                        credential,
                        resumed: None,
                        main_rules: InboundRules::server_main(s.token_b.token()),
                        feed_rules: InboundRules::server_feed(
                            s.player_id,
                            s.token_a,
                            MAX_FEED_INITS.saturating_sub(s.feed_inits),
                        ),
                    }));
                Ok(State::Done)
            }
            (channel, other) => Err(Failure::unexpected(
                channel,
                &other,
                "waiting for FINAL_AUTH on main",
            )),
        }
    }

    fn send(&mut self, channel: ChannelKind, message: Message) {
        self.outputs.push_back(ServerOutput::Send(channel, message));
    }

    /// `CONN_OK` on main with this side's frame limits.
    fn send_conn_ok(&mut self, credential: Token, main_next: u64, feed_next: u64) {
        let limits = self.config.local_limits;
        self.send(
            ChannelKind::Main,
            Message::ConnOk {
                max_main_frame: limits.main,
                max_feed_frame: limits.feed,
                credential,
                main_next,
                feed_next,
            },
        );
    }

    fn fail(&mut self, failure: Failure) {
        self.state = State::Done;
        self.send(
            failure.channel,
            conn_failed(failure.reason, &failure.message, failure.retry_after),
        );
        self.outputs.push_back(ServerOutput::Close {
            reason: failure.reason,
            message: failure.message,
        });
    }
}
