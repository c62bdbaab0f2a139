//! `ClientHandshake` (new and resume) driven by arbitrary inputs: server messages on either
//! channel (echoing the tokens and player IDs the client sent, so late copies are recognised),
//! violations, time advancing and timeouts. After the handshake, messages go through the
//! `InboundRules` it handed over, as the driver does.
//!
//! Checks, after every step: nothing after `Established` or `Failed`, and at most one of them;
//! the first output is `CONN_INIT` or `RESUME` with the configured fields; at most the
//! configured number of `FEED_INIT`s (clamped to 1..=8), all identical; every message sent fits
//! a handshake frame and survives the codec; `poll_timeout` is `None` exactly when done and
//! never after the deadline; `step` and `wants_to_read` match the state; and, against a model
//! written from PROTOCOL.md §6.4, §6.6.4 and §8, the exact outputs of each input and the rules
//! handed over.
#![no_main]

use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use quicfeed::ChannelKind;
use quicfeed::protocol::{
    ClientEstablished, ClientFailure, ClientHandshake, ClientHandshakeConfig, ClientOutput,
    FrameLimits, HANDSHAKE_FRAME_LIMIT, HandshakeStep, Inbound, InboundRules, MAX_FEED_INITS,
    Message, PlayerId, Reason, ResumeTicket, Token,
};
use quicfeed_fuzz::{
    Chan, LimitPick, MAX_CREDENTIALS, MsgSpec, Pool, SeqPick, assert_sendable_in_handshake,
    assert_valid_limits, at_ms, through_wire,
};

#[derive(Arbitrary, Debug)]
struct Input {
    deadline_ms: u16,
    feed_init_timeout_ms: u16,
    feed_init_attempts: u8,
    credentials: Vec<u8>,
    local_main: u16,
    local_feed: u16,
    resume: Option<(u64, [u8; 16], SeqPick, SeqPick)>,
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
enum Step {
    Message(Chan, MsgSpec),
    Violation(u16, String),
    Advance(u16),
    Timeout,
    TimeoutAtPoll,
}

#[derive(Debug, Clone)]
enum Model {
    ConnInitReply,
    FeedInitReply {
        id: PlayerId,
        a: Token,
        sent: u8,
        retry_at: Instant,
    },
    ConnOk {
        id: PlayerId,
        /// `None` when resuming.
        b: Option<Token>,
        sent: u8,
    },
    /// Late `FEED_INIT_REPLY` copies still tolerated on feed.
    Established {
        late_replies: Option<(Token, u8)>,
    },
    Failed,
}

impl Model {
    fn step(&self) -> Option<HandshakeStep> {
        match self {
            Model::ConnInitReply => Some(HandshakeStep::ConnInit),
            Model::FeedInitReply { .. } => Some(HandshakeStep::FeedInit),
            Model::ConnOk { b: None, .. } => Some(HandshakeStep::Resume),
            Model::ConnOk { .. } => Some(HandshakeStep::FinalAuth),
            Model::Established { .. } | Model::Failed => None,
        }
    }
}

#[derive(Debug)]
enum Expect {
    Nothing,
    Send(ChannelKind, Message),
    Failed(ClientFailure),
    Established(ClientEstablished),
}

struct Harness {
    hs: ClientHandshake,
    pool: Pool,
    model: Model,
    now: Instant,
    deadline: Instant,
    retry: Duration,
    attempts: u8,
    /// The rules handed over in `Established`.
    rules: Option<(InboundRules, InboundRules)>,
    terminal: bool,
    feed_inits: Vec<Message>,
}

fn violation(reason: Reason) -> Expect {
    Expect::Failed(ClientFailure::ServerViolation {
        reason,
        message: String::new(),
    })
}

impl Harness {
    fn on_message(&mut self, ch: ChannelKind, msg: Message) -> Expect {
        use ChannelKind::{Feed, Main};
        if let Model::Established { late_replies } = &mut self.model {
            let want = match (ch, &msg) {
                (_, Message::Data { seq, payload }) => Inbound::Data {
                    seq: *seq,
                    payload: payload.clone(),
                },
                (_, Message::Ack { next }) => Inbound::Ack(*next),
                (_, Message::Gap { next }) => Inbound::Gap(*next),
                (Feed, Message::FeedInitReply { token_b }) => match late_replies {
                    Some((b, left)) if *left > 0 && b == token_b => {
                        *left -= 1;
                        Inbound::Ignored
                    }
                    _ => Inbound::Violation {
                        reason: Reason::UnexpectedMessage,
                        message: String::new(),
                    },
                },
                _ => Inbound::Violation {
                    reason: Reason::UnexpectedMessage,
                    message: String::new(),
                },
            };
            let (main, feed) = self.rules.as_mut().expect("rules handed over");
            let got = if ch == Main { main } else { feed }.classify(msg);
            match (&got, &want) {
                (Inbound::Violation { reason: a, .. }, Inbound::Violation { reason: b, .. }) => {
                    assert_eq!(a, b)
                }
                _ => assert_eq!(got, want),
            }
            return Expect::Nothing;
        }
        let msg = match through_wire(&msg, HANDSHAKE_FRAME_LIMIT) {
            Ok(msg) => msg,
            Err((reason, detail)) => return self.violation(reason, detail),
        };
        let expect = match (self.model.clone(), ch, &msg) {
            (Model::Failed, ..) => Expect::Nothing,
            (
                _,
                _,
                Message::ConnFailed {
                    reason,
                    message,
                    retry_after_ms,
                },
            ) => {
                self.model = Model::Failed;
                Expect::Failed(ClientFailure::Refused {
                    reason: *reason,
                    message: message.clone(),
                    retry_after: retry_after_ms
                        .map(|ms| std::time::Duration::from_millis(u64::from(ms))),
                })
            }
            (Model::ConnInitReply, Main, Message::ConnInitReply { player_id, token_a }) => {
                self.model = Model::FeedInitReply {
                    id: *player_id,
                    a: *token_a,
                    sent: 1,
                    retry_at: self.now + self.retry,
                };
                Expect::Send(
                    Feed,
                    Message::FeedInit {
                        player_id: *player_id,
                        token_a: *token_a,
                    },
                )
            }
            (Model::FeedInitReply { id, sent, .. }, Feed, Message::FeedInitReply { token_b }) => {
                self.model = Model::ConnOk {
                    id,
                    b: Some(*token_b),
                    sent,
                };
                Expect::Send(Main, Message::FinalAuth { token_b: *token_b })
            }
            (
                Model::ConnOk { id, b, sent },
                Main,
                Message::ConnOk {
                    max_main_frame,
                    max_feed_frame,
                    credential,
                    main_next,
                    feed_next,
                },
            ) => {
                self.model = Model::Failed;
                let peer_limits = FrameLimits {
                    main: *max_main_frame,
                    feed: *max_feed_frame,
                };
                if peer_limits.main < 256 || peer_limits.feed < 256 {
                    return self.expect_now(violation(Reason::MalformedMessage), &msg, ch);
                }
                if b.is_some() && (*main_next, *feed_next) != (0, 0) {
                    return self.expect_now(violation(Reason::SequenceError), &msg, ch);
                }
                let late_replies = b.map(|b| (b, sent - 1));
                self.model = Model::Established { late_replies };
                Expect::Established(ClientEstablished {
                    player_id: id,
                    peer_limits,
                    credential: *credential,
                    main_next: *main_next,
                    feed_next: *feed_next,
                    main_rules: InboundRules::data_only(),
                    feed_rules: match late_replies {
                        Some((b, left)) => InboundRules::client_feed(b, left),
                        None => InboundRules::data_only(),
                    },
                })
            }
            _ => {
                self.model = Model::Failed;
                violation(Reason::UnexpectedMessage)
            }
        };
        self.expect_now(expect, &msg, ch)
    }

    fn expect_now(&mut self, expect: Expect, msg: &Message, ch: ChannelKind) -> Expect {
        if matches!(expect, Expect::Failed(_)) {
            self.model = Model::Failed;
        }
        self.hs.handle_message(ch, msg.clone(), self.now);
        expect
    }

    fn violation(&mut self, reason: Reason, text: String) -> Expect {
        self.hs.handle_violation(reason, text);
        if matches!(self.model, Model::Failed | Model::Established { .. }) {
            return Expect::Nothing;
        }
        self.model = Model::Failed;
        violation(reason)
    }

    fn timeout(&mut self) -> Expect {
        self.hs.handle_timeout(self.now);
        let Some(step) = self.model.step() else {
            return Expect::Nothing;
        };
        if self.now >= self.deadline {
            self.model = Model::Failed;
            return Expect::Failed(ClientFailure::TimedOut { step });
        }
        let Model::FeedInitReply {
            id,
            a,
            sent,
            retry_at,
        } = &mut self.model
        else {
            return Expect::Nothing;
        };
        if self.now < *retry_at {
            return Expect::Nothing;
        }
        if *sent >= self.attempts {
            self.model = Model::Failed;
            return Expect::Failed(ClientFailure::TimedOut { step });
        }
        *sent += 1;
        *retry_at = self.now + self.retry;
        Expect::Send(
            ChannelKind::Feed,
            Message::FeedInit {
                player_id: *id,
                token_a: *a,
            },
        )
    }

    fn step(&mut self, step: &Step) -> Expect {
        match step {
            Step::Message(chan, spec) => {
                let msg = spec.build(&self.pool);
                self.on_message(chan.kind(), msg)
            }
            Step::Violation(code, text) => self.violation(Reason::from_code(*code), text.clone()),
            Step::Advance(ms) => {
                self.now += Duration::from_millis(u64::from(*ms));
                Expect::Nothing
            }
            Step::Timeout => self.timeout(),
            Step::TimeoutAtPoll => {
                if let Some(at) = self.hs.poll_timeout() {
                    self.now = self.now.max(at);
                }
                self.timeout()
            }
        }
    }

    fn check(&mut self, expect: Expect) {
        let outputs: Vec<ClientOutput> = std::iter::from_fn(|| self.hs.poll_output()).collect();
        for output in &outputs {
            assert!(
                !self.terminal,
                "output after the handshake ended: {output:?}"
            );
            match output {
                ClientOutput::Send(ch, message) => {
                    assert_sendable_in_handshake(message);
                    match message {
                        Message::FeedInit { player_id, token_a } => {
                            assert_eq!(*ch, ChannelKind::Feed);
                            if let Some(first) = self.feed_inits.first() {
                                assert_eq!(first, message, "every FEED_INIT is identical");
                            }
                            self.feed_inits.push(message.clone());
                            assert!(self.feed_inits.len() <= usize::from(self.attempts));
                            self.pool.id(*player_id);
                            self.pool.token(*token_a);
                        }
                        Message::FinalAuth { token_b } => self.pool.token(*token_b),
                        _ => {}
                    }
                }
                ClientOutput::Established(e) => {
                    assert_valid_limits(e.peer_limits);
                    self.pool.token(e.credential);
                    self.rules = Some((e.main_rules.clone(), e.feed_rules.clone()));
                    self.terminal = true;
                }
                ClientOutput::Failed(_) => self.terminal = true,
            }
        }
        match (expect, &outputs[..]) {
            (Expect::Nothing, []) => {}
            (Expect::Send(ch, m), [ClientOutput::Send(got_ch, got)]) => {
                assert_eq!((*got_ch, got), (ch, &m))
            }
            (Expect::Established(want), [ClientOutput::Established(got)]) => {
                assert_eq!(*got, want)
            }
            (
                Expect::Failed(ClientFailure::ServerViolation { reason, .. }),
                [ClientOutput::Failed(ClientFailure::ServerViolation { reason: got, .. })],
            ) => assert_eq!(*got, reason),
            (Expect::Failed(want), [ClientOutput::Failed(got)]) => {
                assert_eq!(*got, want);
                assert_eq!(
                    got.close_reason(),
                    match &want {
                        ClientFailure::Refused { reason, .. } => *reason,
                        ClientFailure::TimedOut { .. } => Reason::HandshakeTimeout,
                        ClientFailure::ServerViolation { reason, .. } => *reason,
                    }
                );
            }
            (expect, outputs) => panic!("expected {expect:?}, got {outputs:?}"),
        }
        let done = self.hs.is_done();
        assert_eq!(done, self.terminal, "done exactly when ended");
        assert_eq!(self.hs.step(), self.model.step());
        assert_eq!(self.hs.poll_timeout().is_none(), done);
        if let Some(at) = self.hs.poll_timeout() {
            assert!(at <= self.deadline, "a timer after the deadline");
        }
        let reads_feed = matches!(
            self.model,
            Model::ConnInitReply | Model::FeedInitReply { .. }
        );
        assert_eq!(self.hs.wants_to_read(ChannelKind::Main), !done);
        assert_eq!(self.hs.wants_to_read(ChannelKind::Feed), reads_feed);
    }
}

fuzz_target!(|input: Input| {
    let now = at_ms(0);
    let deadline = now + Duration::from_millis(u64::from(input.deadline_ms));
    let retry = Duration::from_millis(u64::from(input.feed_init_timeout_ms));
    let local = quicfeed_fuzz::limits(
        LimitPick::Valid(input.local_main),
        LimitPick::Valid(input.local_feed),
    );
    let credentials =
        Bytes::copy_from_slice(&input.credentials[..input.credentials.len().min(MAX_CREDENTIALS)]);
    let config = ClientHandshakeConfig {
        deadline,
        credentials: credentials.clone(),
        feed_init_timeout: retry,
        feed_init_attempts: input.feed_init_attempts,
        local_limits: local,
    };
    let mut pool = Pool::default();
    let (mut hs, model, first) = match input.resume {
        None => (
            ClientHandshake::new(config),
            Model::ConnInitReply,
            Message::ConnInit {
                max_main_frame: local.main,
                max_feed_frame: local.feed,
                credentials,
            },
        ),
        Some((id, credential, main_next, feed_next)) => {
            let ticket = ResumeTicket {
                player_id: PlayerId(id),
                proof: Token(credential),
                main_next: main_next.get(),
                feed_next: feed_next.get(),
            };
            pool.id(ticket.player_id);
            pool.token(ticket.proof);
            (
                ClientHandshake::resume(config, &ticket),
                Model::ConnOk {
                    id: ticket.player_id,
                    b: None,
                    sent: 0,
                },
                Message::Resume {
                    player_id: ticket.player_id,
                    proof: ticket.proof,
                    max_main_frame: local.main,
                    max_feed_frame: local.feed,
                    main_next: ticket.main_next,
                    feed_next: ticket.feed_next,
                },
            )
        }
    };
    assert_eq!(
        hs.poll_output(),
        Some(ClientOutput::Send(ChannelKind::Main, first.clone()))
    );
    assert_sendable_in_handshake(&first);
    let mut h = Harness {
        hs,
        pool,
        model,
        now,
        deadline,
        retry,
        attempts: input.feed_init_attempts.clamp(1, MAX_FEED_INITS),
        rules: None,
        terminal: false,
        feed_inits: Vec::new(),
    };
    h.check(Expect::Nothing);
    for step in input.steps.iter().take(256) {
        let expect = h.step(step);
        h.check(expect);
    }
});
