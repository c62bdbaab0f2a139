//! A `ClientHandshake` and a `ServerHandshake` driven against each other, as the drivers do,
//! over four in-order queues (two channels, two directions), with an arbitrary interleaving of
//! deliveries, time advancing, timeouts, and the authenticator's decision; new sessions and
//! resumes (checked against a `SessionRegistry`, as the server's driver does).
//!
//! Checks:
//! - when both sides are established, they agree: player ID, credential, each other's frame
//!   limits, the positions of a resume;
//! - the client is never established unless the server is;
//! - after both are established, everything still in flight (late `FEED_INIT` retries, late
//!   `FEED_INIT_REPLY` copies) is accepted by the rules each side handed over: never a
//!   violation;
//! - no deadlock: once the authenticator has answered and every queue is drained, with no more
//!   time passing, each side is established or has failed;
//! - a server failure reaches the client as its `CONN_FAILED` reason when the client reads
//!   that channel.
#![no_main]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use quicfeed::ChannelKind;
use quicfeed::protocol::{
    ClientEstablished, ClientFailure, ClientHandshake, ClientHandshakeConfig, ClientOutput,
    FrameLimits, HANDSHAKE_FRAME_LIMIT, Inbound, InboundRules, Message, PlayerId, Reason,
    ResumeTicket, ServerEstablished, ServerHandshake, ServerHandshakeConfig, ServerOutput,
    SessionRegistry, Token, random_token,
};
use quicfeed_fuzz::{Chan, DetEntropy, LimitPick, at_ms, limits, through_wire};

#[derive(Arbitrary, Debug)]
struct Input {
    server_deadline_ms: u16,
    client_deadline_ms: u16,
    lifetime_ms: u16,
    feed_init_timeout_ms: u16,
    feed_init_attempts: u8,
    server_limits: (u16, u16),
    client_limits: (u16, u16),
    max_sessions: u8,
    /// `Some`: resume the established session of player 42; `true` presents its credential.
    resume: Option<(bool, u64, u64, u64, u64)>,
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
enum Step {
    ToServer(Chan),
    ToClient(Chan),
    Advance(u16),
    ServerTimeout,
    ClientTimeout,
    Authenticate(Option<u8>),
    Reject(u16),
}

const RESUMED: PlayerId = PlayerId(42);
const CREDENTIAL: Token = Token([0x42; 16]);

#[derive(Debug, PartialEq)]
enum Side<E> {
    Handshaking,
    Established(E),
    Failed(Reason),
}

struct Pair {
    server: ServerHandshake,
    client: ClientHandshake,
    entropy: DetEntropy,
    registry: SessionRegistry<(u64, u64)>,
    now: Instant,
    /// Messages in flight: [client->server main, feed], [server->client main, feed].
    to_server: [VecDeque<Message>; 2],
    to_client: [VecDeque<Message>; 2],
    server_side: Side<ServerEstablished>,
    client_side: Side<ClientEstablished>,
    pending_auth: bool,
    /// The channel and reason of the server's `CONN_FAILED`.
    server_failure: Option<(ChannelKind, Reason)>,
    server_rules: Option<[InboundRules; 2]>,
    client_rules: Option<[InboundRules; 2]>,
    client_limits: FrameLimits,
    server_limits: FrameLimits,
    resume_positions: (u64, u64),
}

fn index(ch: ChannelKind) -> usize {
    match ch {
        ChannelKind::Main => 0,
        ChannelKind::Feed => 1,
    }
}

impl Pair {
    /// Whether the connection is still open: nobody has closed it.
    fn open(&self) -> bool {
        !matches!(self.server_side, Side::Failed(_)) && !matches!(self.client_side, Side::Failed(_))
    }

    fn drain_server(&mut self) {
        while let Some(output) = self.server.poll_output() {
            match output {
                ServerOutput::Send(ch, message) => {
                    if let Message::ConnFailed { reason, .. } = &message {
                        self.server_failure = Some((ch, *reason));
                    }
                    self.to_client[index(ch)].push_back(message);
                }
                ServerOutput::Authenticate { .. } => self.pending_auth = true,
                ServerOutput::Resume(request) => {
                    // As the server's driver does (decide_resume).
                    let next = random_token(&mut self.entropy).expect("entropy");
                    let decision = self
                        .registry
                        .resume(request.player_id, |c| *c == request.proof, next)
                        .copied();
                    match decision {
                        Ok(_) => {
                            let (main_next, feed_next) = self.resume_positions;
                            self.server
                                .accept_resume(&request, next, main_next, feed_next);
                        }
                        Err(reason) => self.server.refuse(reason, reason.describe(), None),
                    }
                }
                ServerOutput::Established(e) => {
                    assert_eq!(self.server_side, Side::Handshaking);
                    assert_eq!(e.peer_limits, self.client_limits);
                    self.server_rules = Some([e.main_rules.clone(), e.feed_rules.clone()]);
                    self.server_side = Side::Established(e);
                }
                ServerOutput::Close { reason, .. } => {
                    assert_eq!(self.server_side, Side::Handshaking);
                    self.server_side = Side::Failed(reason);
                }
            }
        }
    }

    fn drain_client(&mut self) {
        while let Some(output) = self.client.poll_output() {
            match output {
                ClientOutput::Send(ch, message) => self.to_server[index(ch)].push_back(message),
                ClientOutput::Established(e) => {
                    assert_eq!(self.client_side, Side::Handshaking);
                    let Side::Established(s) = &self.server_side else {
                        panic!("client established, server {:?}", self.server_side)
                    };
                    assert_eq!(e.player_id, s.player_id, "same player");
                    assert_eq!(e.credential, s.credential, "same credential");
                    assert_eq!(e.peer_limits, self.server_limits);
                    match s.resumed {
                        None => assert_eq!((e.main_next, e.feed_next), (0, 0)),
                        Some(_) => {
                            assert_eq!((e.main_next, e.feed_next), self.resume_positions)
                        }
                    }
                    self.client_rules = Some([e.main_rules.clone(), e.feed_rules.clone()]);
                    self.client_side = Side::Established(e);
                }
                ClientOutput::Failed(failure) => {
                    assert_eq!(self.client_side, Side::Handshaking);
                    if let ClientFailure::Refused { reason, .. } = &failure {
                        let (_, sent) = self.server_failure.expect("refused by the server");
                        assert_eq!(*reason, sent);
                    }
                    self.client_side = Side::Failed(failure.close_reason());
                }
            }
        }
    }

    /// Delivers the next message of `ch` to the server; false if there was none to deliver.
    fn deliver_to_server(&mut self, ch: ChannelKind) -> bool {
        if !self.open() {
            return false;
        }
        let Some(message) = self.to_server[index(ch)].pop_front() else {
            return false;
        };
        if let Some(rules) = &mut self.server_rules {
            let got = rules[index(ch)].classify(message.clone());
            assert!(
                matches!(
                    got,
                    Inbound::Ignored | Inbound::Data { .. } | Inbound::Ack(_)
                ),
                "server refused {message:?} on {ch} after CONN_OK: {got:?}"
            );
            return true;
        }
        match through_wire(&message, HANDSHAKE_FRAME_LIMIT) {
            Ok(m) => self
                .server
                .handle_message(ch, m, self.now, &mut self.entropy),
            Err((reason, _)) => panic!("the client sent an oversize {reason} frame"),
        }
        self.drain_server();
        true
    }

    /// Delivers the next message of `ch` to the client, if its driver reads `ch` now.
    fn deliver_to_client(&mut self, ch: ChannelKind) -> bool {
        let established = self.client_rules.is_some();
        if !established && !self.client.wants_to_read(ch) {
            return false;
        }
        // A CONN_FAILED written before the close still arrives (the server lingers).
        let closed_by_client = matches!(self.client_side, Side::Failed(_));
        if closed_by_client {
            return false;
        }
        let Some(message) = self.to_client[index(ch)].pop_front() else {
            return false;
        };
        if let Some(rules) = &mut self.client_rules {
            let got = rules[index(ch)].classify(message.clone());
            assert!(
                matches!(
                    got,
                    Inbound::Ignored | Inbound::Data { .. } | Inbound::Ack(_)
                ),
                "client refused {message:?} on {ch} after CONN_OK: {got:?}"
            );
            return true;
        }
        match through_wire(&message, HANDSHAKE_FRAME_LIMIT) {
            Ok(m) => self.client.handle_message(ch, m, self.now),
            Err((reason, _)) => panic!("the server sent an oversize {reason} frame"),
        }
        self.drain_client();
        true
    }

    fn decide(&mut self, requested: Option<PlayerId>, reject: Option<Reason>) {
        if !std::mem::take(&mut self.pending_auth) || !self.open() {
            return;
        }
        match reject {
            Some(reason) => self.server.refuse(reason, "refused", None),
            None => match self.registry.admit(requested) {
                Ok(id) => self.server.accept(id, self.now, &mut self.entropy),
                Err(reason) => self.server.refuse(reason, reason.describe(), None),
            },
        }
        self.drain_server();
    }
}

fuzz_target!(|input: Input| {
    let t0 = at_ms(0);
    let server_limits = limits(
        LimitPick::Valid(input.server_limits.0),
        LimitPick::Valid(input.server_limits.1),
    );
    let client_limits = limits(
        LimitPick::Valid(input.client_limits.0),
        LimitPick::Valid(input.client_limits.1),
    );
    let server = ServerHandshake::new(ServerHandshakeConfig {
        deadline: t0 + Duration::from_millis(u64::from(input.server_deadline_ms)),
        token_lifetime: Duration::from_millis(u64::from(input.lifetime_ms)),
        local_limits: server_limits,
    });
    let config = ClientHandshakeConfig {
        deadline: t0 + Duration::from_millis(u64::from(input.client_deadline_ms)),
        credentials: Bytes::from_static(b"ticket"),
        feed_init_timeout: Duration::from_millis(u64::from(input.feed_init_timeout_ms)),
        feed_init_attempts: input.feed_init_attempts,
        local_limits: client_limits,
    };
    let mut registry = SessionRegistry::new(usize::from(input.max_sessions % 4));
    let mut resume_positions = (0, 0);
    let client = match input.resume {
        None => ClientHandshake::new(config),
        Some((right, client_main, client_feed, server_main, server_feed)) => {
            let mut bigger = SessionRegistry::new(usize::from(input.max_sessions % 4) + 1);
            bigger.admit(Some(RESUMED)).expect("room for the session");
            bigger.establish(RESUMED, CREDENTIAL, (0, 0));
            registry = bigger;
            resume_positions = (server_main, server_feed);
            let ticket = ResumeTicket {
                player_id: RESUMED,
                proof: if right { CREDENTIAL } else { Token([7; 16]) },
                main_next: client_main,
                feed_next: client_feed,
            };
            ClientHandshake::resume(config, &ticket)
        }
    };
    let mut pair = Pair {
        server,
        client,
        entropy: DetEntropy::default(),
        registry,
        now: t0,
        to_server: [VecDeque::new(), VecDeque::new()],
        to_client: [VecDeque::new(), VecDeque::new()],
        server_side: Side::Handshaking,
        client_side: Side::Handshaking,
        pending_auth: false,
        server_failure: None,
        server_rules: None,
        client_rules: None,
        client_limits,
        server_limits,
        resume_positions,
    };
    pair.drain_client();

    for step in input.steps.iter().take(256) {
        match step {
            Step::ToServer(ch) => {
                pair.deliver_to_server(ch.kind());
            }
            Step::ToClient(ch) => {
                pair.deliver_to_client(ch.kind());
            }
            Step::Advance(ms) => pair.now += Duration::from_millis(u64::from(*ms)),
            Step::ServerTimeout => {
                if pair.open() {
                    pair.server.handle_timeout(pair.now);
                    pair.drain_server();
                }
            }
            Step::ClientTimeout => {
                if pair.open() {
                    if let Some(at) = pair.client.poll_timeout() {
                        pair.now = pair.now.max(at);
                    }
                    pair.client.handle_timeout(pair.now);
                    pair.drain_client();
                }
            }
            Step::Authenticate(id) => {
                let id = id.map(|n| PlayerId(u64::from(n % 4)));
                pair.decide(id, None)
            }
            Step::Reject(code) => pair.decide(None, Some(Reason::from_code(*code))),
        }
    }

    // Let the handshake finish with no more time passing: the authenticator admits, and every
    // message in flight is delivered.
    pair.decide(None, None);
    loop {
        let mut moved = false;
        for ch in [ChannelKind::Main, ChannelKind::Feed] {
            while pair.deliver_to_server(ch) {
                moved = true;
            }
            while pair.deliver_to_client(ch) {
                moved = true;
            }
        }
        pair.decide(None, None);
        if !moved {
            break;
        }
    }
    let server_done = pair.server.is_done();
    let client_done = pair.client.is_done();
    if pair.open() {
        assert!(
            server_done && client_done,
            "deadlock: server {:?} (done {server_done}), client step {:?}, queues {:?} {:?}",
            pair.server_side,
            pair.client.step(),
            pair.to_server,
            pair.to_client
        );
    }
    if let (Side::Failed(_), Side::Handshaking) = (&pair.server_side, &pair.client_side) {
        // The client has not read the CONN_FAILED: it can only be on feed, which it does not
        // read while waiting for CONN_OK; the connection close ends it.
        let (ch, _) = pair.server_failure.expect("a failure sends CONN_FAILED");
        assert_eq!(ch, ChannelKind::Feed);
        assert!(!pair.client.wants_to_read(ChannelKind::Feed));
    }
});
