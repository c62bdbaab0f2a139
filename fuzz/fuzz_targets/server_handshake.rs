//! `ServerHandshake` driven by arbitrary inputs: messages on either channel (built from the
//! tokens and player IDs the server issued, so every state is reached), violations, time
//! advancing and timeouts, the application's decisions, and entropy failures. After the
//! handshake, the same messages go through the `InboundRules` it handed over, as the driver
//! does.
//!
//! Checks, after every step, on the drained outputs:
//! - generic: nothing after `Close` or `Established`; at most one `Established`; `CONN_FAILED` is
//!   immediately followed by `Close` with the same reason, and every `Close` by one; `CONN_OK`
//!   comes right before `Established` with the same credential; every message sent fits a
//!   handshake frame and survives the codec; `poll_timeout` is `None` exactly when done;
//! - against a model written from PROTOCOL.md §6.3, §6.6.3 and §7.1: the exact outputs of each
//!   input (which reason, on which channel, which token), and the rules handed over; a decision
//!   nobody asked for (`accept`, `accept_resume`, `refuse` out of turn) changes nothing.
#![no_main]

use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use quicfeed::ChannelKind;
use quicfeed::protocol::{
    FrameLimits, HANDSHAKE_FRAME_LIMIT, Inbound, InboundRules, MAX_FAILURE_MESSAGE, MAX_FEED_INITS,
    Message, PlayerId, Reason, ResumeRequest, ServerEstablished, ServerHandshake,
    ServerHandshakeConfig, ServerOutput, Token,
};
use quicfeed_fuzz::{
    Chan, DetEntropy, IdPick, LimitPick, MsgSpec, Pool, SeqPick, TokenPick,
    assert_sendable_in_handshake, at_ms, through_wire,
};

#[derive(Arbitrary, Debug)]
struct Input {
    deadline_ms: u16,
    lifetime_ms: u16,
    local_main: u16,
    local_feed: u16,
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
enum Step {
    Message(Chan, MsgSpec),
    Violation(Chan, u16, String),
    Advance(u16),
    Timeout,
    TimeoutAtDeadline,
    Accept(IdPick),
    Refuse(u16, String),
    AcceptResume(TokenPick, SeqPick, SeqPick),
    EntropyFails,
}

/// The model's view of the handshake, from the specification.
#[derive(Debug, Clone)]
enum Model {
    ExpectConnInit,
    AuthDecision {
        peer: FrameLimits,
    },
    ResumeDecision {
        peer: FrameLimits,
        request: ResumeRequest,
    },
    FeedInit {
        peer: FrameLimits,
        id: PlayerId,
        a: Option<Token>,
        a_expires: Instant,
    },
    FinalAuth {
        peer: FrameLimits,
        id: PlayerId,
        a: Token,
        b: Option<Token>,
        b_expires: Instant,
        feed_inits: u8,
    },
    /// Established: the rules the model expects on each channel, as echo allowances.
    Established {
        main: MainEcho,
        feed: FeedEcho,
    },
    Failed,
}

#[derive(Debug, Clone, Copy)]
enum MainEcho {
    None,
    RedeemedB(Token),
}

#[derive(Debug, Clone, Copy)]
enum FeedEcho {
    None,
    LateFeedInit { id: PlayerId, a: Token, left: u8 },
}

/// What one input must produce.
#[derive(Debug)]
enum Expect {
    Nothing,
    Fail(ChannelKind, Reason),
    Authenticate(Bytes),
    Resume(ResumeRequest),
    ConnInitReply(PlayerId),
    /// `FEED_INIT_REPLY` with a fresh token (None) or the same one again.
    FeedInitReply(Option<Token>),
    ConnOk {
        established: ServerEstablished,
        main_next: u64,
        feed_next: u64,
    },
    /// A message classified by the established rules.
    Classified(Inbound),
}

struct Harness {
    hs: ServerHandshake,
    entropy: DetEntropy,
    pool: Pool,
    model: Model,
    now: Instant,
    deadline: Instant,
    lifetime: Duration,
    local: FrameLimits,
    /// The rules handed over in `Established` (driven like the driver does).
    rules: Option<(InboundRules, InboundRules)>,
    terminal: bool,
    established: u32,
}

fn expect_fail(ch: ChannelKind, reason: Reason) -> (Expect, Model) {
    (Expect::Fail(ch, reason), Model::Failed)
}

impl Harness {
    fn expect_message(&mut self, ch: ChannelKind, msg: &Message) -> (Expect, Model) {
        use ChannelKind::{Feed, Main};
        let model = self.model.clone();
        let fresh_token_fails = self.entropy.fail_next;
        match (model, ch, msg) {
            (Model::Failed, ..) => (Expect::Nothing, Model::Failed),
            (Model::Established { main, mut feed }, ch, msg) => {
                let result = match (ch, msg) {
                    (_, Message::Data { seq, payload }) => Inbound::Data {
                        seq: *seq,
                        payload: payload.clone(),
                    },
                    (_, Message::Ack { next }) => Inbound::Ack(*next),
                    (_, Message::Gap { next }) => Inbound::Gap(*next),
                    (Main, Message::FinalAuth { token_b }) if matches!(main, MainEcho::RedeemedB(b) if b == *token_b) => {
                        violation(Reason::TokenReused)
                    }
                    (Feed, Message::FeedInit { player_id, token_a }) => match &mut feed {
                        FeedEcho::LateFeedInit { id, a, left }
                            if *left > 0 && id == player_id && a == token_a =>
                        {
                            *left -= 1;
                            Inbound::Ignored
                        }
                        _ => violation(Reason::UnexpectedMessage),
                    },
                    _ => violation(Reason::UnexpectedMessage),
                };
                // A violation ends the connection in the driver; the model keeps classifying
                // (the rules have no terminal state).
                (
                    Expect::Classified(result),
                    Model::Established { main, feed },
                )
            }
            (
                Model::ExpectConnInit,
                Main,
                Message::ConnInit {
                    max_main_frame,
                    max_feed_frame,
                    credentials,
                },
            ) => {
                let peer = FrameLimits {
                    main: *max_main_frame,
                    feed: *max_feed_frame,
                };
                if peer.main < 256 || peer.feed < 256 {
                    return expect_fail(Main, Reason::MalformedMessage);
                }
                (
                    Expect::Authenticate(credentials.clone()),
                    Model::AuthDecision { peer },
                )
            }
            (
                Model::ExpectConnInit,
                Main,
                Message::Resume {
                    player_id,
                    proof,
                    max_main_frame,
                    max_feed_frame,
                    main_next,
                    feed_next,
                },
            ) => {
                let peer = FrameLimits {
                    main: *max_main_frame,
                    feed: *max_feed_frame,
                };
                if peer.main < 256 || peer.feed < 256 {
                    return expect_fail(Main, Reason::MalformedMessage);
                }
                let request = ResumeRequest {
                    player_id: *player_id,
                    proof: *proof,
                    main_next: *main_next,
                    feed_next: *feed_next,
                };
                (
                    Expect::Resume(request.clone()),
                    Model::ResumeDecision { peer, request },
                )
            }
            (
                Model::FeedInit {
                    peer,
                    id,
                    a,
                    a_expires,
                },
                Feed,
                Message::FeedInit { player_id, token_a },
            ) => {
                let a = a.expect("token A issued");
                if *token_a != a {
                    return expect_fail(Feed, Reason::InvalidToken);
                }
                if *player_id != id {
                    return expect_fail(Feed, Reason::PlayerMismatch);
                }
                if self.now >= a_expires {
                    return expect_fail(Feed, Reason::TokenExpired);
                }
                if fresh_token_fails {
                    return expect_fail(Feed, Reason::InternalError);
                }
                (
                    Expect::FeedInitReply(None),
                    Model::FinalAuth {
                        peer,
                        id,
                        a,
                        b: None,
                        b_expires: self.now.checked_add(self.lifetime).unwrap(),
                        feed_inits: 1,
                    },
                )
            }
            (
                Model::FinalAuth {
                    peer,
                    id,
                    a,
                    b,
                    b_expires,
                    feed_inits,
                },
                Feed,
                Message::FeedInit { player_id, token_a },
            ) => {
                if *token_a != a {
                    return expect_fail(Feed, Reason::InvalidToken);
                }
                if *player_id != id {
                    return expect_fail(Feed, Reason::PlayerMismatch);
                }
                if feed_inits >= MAX_FEED_INITS {
                    return expect_fail(Feed, Reason::UnexpectedMessage);
                }
                (
                    Expect::FeedInitReply(b),
                    Model::FinalAuth {
                        peer,
                        id,
                        a,
                        b,
                        b_expires,
                        feed_inits: feed_inits + 1,
                    },
                )
            }
            (
                Model::FinalAuth {
                    peer,
                    id,
                    a,
                    b,
                    b_expires,
                    feed_inits,
                },
                Main,
                Message::FinalAuth { token_b },
            ) => {
                let b = b.expect("token B issued");
                if *token_b != b {
                    return expect_fail(Main, Reason::InvalidToken);
                }
                if self.now >= b_expires {
                    return expect_fail(Main, Reason::TokenExpired);
                }
                if fresh_token_fails {
                    return expect_fail(Main, Reason::InternalError);
                }
                let left = MAX_FEED_INITS - feed_inits;
                (
                    Expect::ConnOk {
                        established: ServerEstablished {
                            player_id: id,
                            peer_limits: peer,
                            credential: Token([0; 16]), // checked against the entropy's draw
                            resumed: None,
                            main_rules: InboundRules::server_main(b),
                            feed_rules: InboundRules::server_feed(id, a, left),
                        },
                        main_next: 0,
                        feed_next: 0,
                    },
                    Model::Established {
                        main: MainEcho::RedeemedB(b),
                        feed: FeedEcho::LateFeedInit { id, a, left },
                    },
                )
            }
            (_, ch, _) => expect_fail(ch, Reason::UnexpectedMessage),
        }
    }

    /// Runs one step and returns what the model expects of it.
    fn step(&mut self, step: &Step) -> Expect {
        match step {
            Step::Message(chan, spec) => {
                let ch = chan.kind();
                let msg = spec.build(&self.pool);
                if self.rules.is_some() {
                    // Established: the driver reads with the session limits and classifies.
                    let (expect, model) = self.expect_message(ch, &msg);
                    self.model = model;
                    let (main, feed) = self.rules.as_mut().unwrap();
                    let rules = if ch == ChannelKind::Main { main } else { feed };
                    let got = rules.classify(msg);
                    let Expect::Classified(want) = expect else {
                        unreachable!()
                    };
                    assert_inbound_eq(&got, &want);
                    return Expect::Nothing;
                }
                match through_wire(&msg, HANDSHAKE_FRAME_LIMIT) {
                    Ok(msg) => {
                        let (expect, model) = self.expect_message(ch, &msg);
                        self.model = model;
                        self.hs.handle_message(ch, msg, self.now, &mut self.entropy);
                        expect
                    }
                    Err((reason, detail)) => self.violation(ch, reason, detail),
                }
            }
            Step::Violation(chan, code, text) => {
                self.violation(chan.kind(), Reason::from_code(*code), text.clone())
            }
            Step::Advance(ms) => {
                self.now += Duration::from_millis(u64::from(*ms));
                Expect::Nothing
            }
            Step::Timeout => self.timeout(),
            Step::TimeoutAtDeadline => {
                if let Some(at) = self.hs.poll_timeout() {
                    assert_eq!(at, self.deadline, "the server's only timer is its deadline");
                    self.now = self.now.max(at);
                }
                self.timeout()
            }
            Step::Accept(id) => {
                let id = id.get(&self.pool);
                // A decision nobody asked for changes nothing.
                let Model::AuthDecision { peer, .. } = self.model.clone() else {
                    self.hs.accept(id, self.now, &mut self.entropy);
                    return Expect::Nothing;
                };
                if self.entropy.fail_next {
                    self.model = Model::Failed;
                    self.hs.accept(id, self.now, &mut self.entropy);
                    return Expect::Fail(ChannelKind::Main, Reason::InternalError);
                }
                self.model = Model::FeedInit {
                    peer,
                    id,
                    a: None,
                    a_expires: self.now.checked_add(self.lifetime).unwrap(),
                };
                self.hs.accept(id, self.now, &mut self.entropy);
                Expect::ConnInitReply(id)
            }
            Step::Refuse(code, text) => {
                let reason = Reason::from_code(*code);
                self.hs.refuse(reason, text, None);
                match self.model {
                    Model::AuthDecision { .. } | Model::ResumeDecision { .. } => {
                        self.model = Model::Failed;
                        Expect::Fail(ChannelKind::Main, reason)
                    }
                    _ => Expect::Nothing,
                }
            }
            Step::AcceptResume(credential, main_next, feed_next) => {
                let credential = credential.get(&self.pool);
                let (main_next, feed_next) = (main_next.get(), feed_next.get());
                let Model::ResumeDecision { peer, request } = self.model.clone() else {
                    // Out of turn: nothing happens, even with a made-up request.
                    let request = ResumeRequest {
                        player_id: PlayerId(main_next),
                        proof: credential,
                        main_next,
                        feed_next,
                    };
                    self.hs
                        .accept_resume(&request, credential, main_next, feed_next);
                    return Expect::Nothing;
                };
                self.hs
                    .accept_resume(&request, credential, main_next, feed_next);
                self.model = Model::Established {
                    main: MainEcho::None,
                    feed: FeedEcho::None,
                };
                Expect::ConnOk {
                    established: ServerEstablished {
                        player_id: request.player_id,
                        peer_limits: peer,
                        credential,
                        resumed: Some((request.main_next, request.feed_next)),
                        main_rules: InboundRules::data_only(),
                        feed_rules: InboundRules::data_only(),
                    },
                    main_next,
                    feed_next,
                }
            }
            Step::EntropyFails => {
                self.entropy.fail_next = true;
                Expect::Nothing
            }
        }
    }

    fn violation(&mut self, ch: ChannelKind, reason: Reason, text: String) -> Expect {
        self.hs.handle_violation(ch, reason, text);
        match self.model {
            Model::Failed | Model::Established { .. } => Expect::Nothing,
            _ => {
                self.model = Model::Failed;
                Expect::Fail(ch, reason)
            }
        }
    }

    fn timeout(&mut self) -> Expect {
        self.hs.handle_timeout(self.now);
        match self.model {
            Model::Failed | Model::Established { .. } => Expect::Nothing,
            _ if self.now >= self.deadline => {
                self.model = Model::Failed;
                Expect::Fail(ChannelKind::Main, Reason::HandshakeTimeout)
            }
            _ => Expect::Nothing,
        }
    }

    /// Drains the outputs, checks the generic invariants and the model's expectation.
    fn check(&mut self, expect: Expect) {
        let outputs: Vec<ServerOutput> = std::iter::from_fn(|| self.hs.poll_output()).collect();
        for (i, output) in outputs.iter().enumerate() {
            assert!(
                !self.terminal,
                "output after the handshake ended: {output:?}"
            );
            let next = outputs.get(i + 1);
            let prev = i.checked_sub(1).map(|p| &outputs[p]);
            match output {
                ServerOutput::Send(_, message) => {
                    assert_sendable_in_handshake(message);
                    match message {
                        Message::ConnFailed {
                            reason, message, ..
                        } => {
                            assert!(message.len() <= MAX_FAILURE_MESSAGE);
                            assert!(
                                matches!(next, Some(ServerOutput::Close { reason: r, .. }) if r == reason),
                                "CONN_FAILED not followed by its Close: {outputs:?}"
                            );
                        }
                        Message::ConnOk { credential, .. } => assert!(
                            matches!(next, Some(ServerOutput::Established(e)) if e.credential == *credential),
                            "CONN_OK not followed by Established: {outputs:?}"
                        ),
                        _ => {}
                    }
                }
                ServerOutput::Close { reason, .. } => {
                    assert!(
                        matches!(prev, Some(ServerOutput::Send(_, Message::ConnFailed { reason: r, .. })) if r == reason),
                        "Close without CONN_FAILED: {outputs:?}"
                    );
                    self.terminal = true;
                }
                ServerOutput::Established(e) => {
                    assert!(e.peer_limits.is_valid_announcement());
                    self.established += 1;
                    assert_eq!(self.established, 1, "established twice");
                    self.terminal = true;
                }
                ServerOutput::Authenticate { .. } | ServerOutput::Resume(_) => {}
            }
        }
        // Learn what the server issued, for the fuzzer to present again.
        for output in &outputs {
            match output {
                ServerOutput::Send(_, Message::ConnInitReply { player_id, token_a }) => {
                    self.pool.id(*player_id);
                    self.pool.token(*token_a);
                }
                ServerOutput::Send(_, Message::FeedInitReply { token_b }) => {
                    self.pool.token(*token_b)
                }
                ServerOutput::Send(_, Message::ConnOk { credential, .. }) => {
                    self.pool.token(*credential)
                }
                ServerOutput::Resume(r) => self.pool.id(r.player_id),
                _ => {}
            }
        }

        match (expect, &outputs[..]) {
            (Expect::Nothing | Expect::Classified(_), []) => {}
            (
                Expect::Fail(ch, reason),
                [
                    ServerOutput::Send(sent_on, Message::ConnFailed { reason: sent, .. }),
                    ServerOutput::Close { .. },
                ],
            ) => assert_eq!((*sent_on, *sent), (ch, reason), "{outputs:?}"),
            (Expect::Authenticate(c), [ServerOutput::Authenticate { credentials }]) => {
                assert_eq!(*credentials, c)
            }
            (Expect::Resume(want), [ServerOutput::Resume(got)]) => assert_eq!(*got, want),
            (
                Expect::ConnInitReply(id),
                [
                    ServerOutput::Send(
                        ChannelKind::Main,
                        Message::ConnInitReply { player_id, token_a },
                    ),
                ],
            ) => {
                assert_eq!(*player_id, id);
                assert_eq!(Some(*token_a), self.entropy.last, "token A is a fresh draw");
                if let Model::FeedInit { a, .. } = &mut self.model {
                    *a = Some(*token_a);
                }
            }
            (
                Expect::FeedInitReply(same),
                [ServerOutput::Send(ChannelKind::Feed, Message::FeedInitReply { token_b })],
            ) => {
                match same {
                    Some(b) => assert_eq!(*token_b, b, "a retry gets the same token B"),
                    None => assert_eq!(Some(*token_b), self.entropy.last, "token B is fresh"),
                }
                if let Model::FinalAuth { b, .. } = &mut self.model {
                    *b = Some(*token_b);
                }
            }
            (
                Expect::ConnOk {
                    mut established,
                    main_next,
                    feed_next,
                },
                [
                    ServerOutput::Send(
                        ChannelKind::Main,
                        Message::ConnOk {
                            max_main_frame,
                            max_feed_frame,
                            credential,
                            main_next: mn,
                            feed_next: fnext,
                        },
                    ),
                    ServerOutput::Established(got),
                ],
            ) => {
                assert_eq!(
                    FrameLimits {
                        main: *max_main_frame,
                        feed: *max_feed_frame
                    },
                    self.local
                );
                assert_eq!((*mn, *fnext), (main_next, feed_next));
                if established.resumed.is_none() {
                    assert_eq!(Some(*credential), self.entropy.last, "credential is fresh");
                    established.credential = *credential;
                }
                assert_eq!(*got, established);
                self.rules = Some((got.main_rules.clone(), got.feed_rules.clone()));
            }
            (expect, outputs) => panic!("expected {expect:?}, got {outputs:?}"),
        }
        assert_eq!(self.hs.poll_timeout().is_none(), self.hs.is_done());
        assert_eq!(self.hs.is_done(), self.terminal, "done exactly when ended");
    }
}

fn violation(reason: Reason) -> Inbound {
    Inbound::Violation {
        reason,
        message: String::new(),
    }
}

/// Compares classifications, ignoring the detail text of violations.
fn assert_inbound_eq(got: &Inbound, want: &Inbound) {
    match (got, want) {
        (Inbound::Violation { reason: a, .. }, Inbound::Violation { reason: b, .. }) => {
            assert_eq!(a, b)
        }
        _ => assert_eq!(got, want),
    }
}

fuzz_target!(|input: Input| {
    let now = at_ms(0);
    let deadline = now + Duration::from_millis(u64::from(input.deadline_ms));
    let lifetime = Duration::from_millis(u64::from(input.lifetime_ms));
    let local = quicfeed_fuzz::limits(
        LimitPick::Valid(input.local_main),
        LimitPick::Valid(input.local_feed),
    );
    let mut h = Harness {
        hs: ServerHandshake::new(ServerHandshakeConfig {
            deadline,
            token_lifetime: lifetime,
            local_limits: local,
        }),
        entropy: DetEntropy::default(),
        pool: Pool::default(),
        model: Model::ExpectConnInit,
        now,
        deadline,
        lifetime,
        local,
        rules: None,
        terminal: false,
        established: 0,
    };
    assert_eq!(h.hs.poll_timeout(), Some(deadline));
    for step in input.steps.iter().take(256) {
        let expect = h.step(step);
        h.check(expect);
    }
});
