//! Both handshake state machines driven against each other and against scripted peers, with
//! virtual time and no sockets. Every message crosses the real codec.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::codec::{decode_frame, decode_message, encode_message};
use super::token::tests::CountingEntropy;
use super::*;

const LIFE: Duration = Duration::from_secs(5);
const DEADLINE: Duration = Duration::from_secs(10);
const RETRY: Duration = Duration::from_millis(500);
const LIMITS: FrameLimits = FrameLimits {
    main: 65536,
    feed: 32768,
};

fn wire(message: &Message) -> Message {
    let frame = encode_message(message).unwrap();
    let mut buf = BytesMut::from(&frame[..]);
    decode_message(
        decode_frame(&mut buf, HANDSHAKE_FRAME_LIMIT)
            .unwrap()
            .unwrap(),
    )
    .unwrap()
}

fn server(t0: Instant) -> ServerHandshake {
    ServerHandshake::new(ServerHandshakeConfig {
        deadline: t0 + DEADLINE,
        token_lifetime: LIFE,
        local_limits: LIMITS,
    })
}

fn client(t0: Instant, attempts: u8) -> ClientHandshake {
    ClientHandshake::new(ClientHandshakeConfig {
        deadline: t0 + DEADLINE,
        credentials: Bytes::from_static(b"ticket-42"),
        feed_init_timeout: RETRY,
        feed_init_attempts: attempts,
        local_limits: FrameLimits {
            main: 1000,
            feed: 2000,
        },
    })
}

fn client_sends(c: &mut ClientHandshake) -> Vec<(ChannelKind, Message)> {
    let mut out = Vec::new();
    while let Some(o) = c.poll_output() {
        match o {
            ClientOutput::Send(ch, m) => out.push((ch, wire(&m))),
            other => panic!("expected a send, got {other:?}"),
        }
    }
    out
}

fn server_outputs(s: &mut ServerHandshake) -> Vec<ServerOutput> {
    std::iter::from_fn(|| s.poll_output()).collect()
}

/// Feeds one message to the server and returns its single reply.
fn exchange(
    s: &mut ServerHandshake,
    e: &mut CountingEntropy,
    now: Instant,
    (ch, m): (ChannelKind, Message),
) -> Vec<ServerOutput> {
    s.handle_message(ch, m, now, e);
    server_outputs(s)
}

/// Runs a server to `ExpectFeedInit` and returns (player id, token A).
fn to_feed_init(
    s: &mut ServerHandshake,
    e: &mut CountingEntropy,
    t0: Instant,
) -> (PlayerId, Token) {
    let conn_init = Message::ConnInit {
        max_main_frame: 1000,
        max_feed_frame: 2000,
        credentials: Bytes::new(),
    };
    let out = exchange(s, e, t0, (ChannelKind::Main, conn_init));
    assert!(matches!(out[..], [ServerOutput::Authenticate { .. }]));
    s.accept(PlayerId(7), t0, e);
    match &server_outputs(s)[..] {
        [ServerOutput::Send(ChannelKind::Main, Message::ConnInitReply { player_id, token_a })] => {
            (*player_id, *token_a)
        }
        other => panic!("no CONN_INIT_REPLY: {other:?}"),
    }
}

/// Runs a server to `ExpectFinalAuth` and returns (player id, token A, token B).
fn to_final_auth(
    s: &mut ServerHandshake,
    e: &mut CountingEntropy,
    t0: Instant,
) -> (PlayerId, Token, Token) {
    let (player_id, token_a) = to_feed_init(s, e, t0);
    let out = exchange(
        s,
        e,
        t0,
        (ChannelKind::Feed, Message::FeedInit { player_id, token_a }),
    );
    match &out[..] {
        [ServerOutput::Send(ChannelKind::Feed, Message::FeedInitReply { token_b })] => {
            (player_id, token_a, *token_b)
        }
        other => panic!("no FEED_INIT_REPLY: {other:?}"),
    }
}

/// Asserts the outputs are exactly CONN_FAILED(reason) on `channel` then Close(reason).
fn assert_failed(out: &[ServerOutput], channel: ChannelKind, reason: Reason) {
    match out {
        [
            ServerOutput::Send(ch, Message::ConnFailed { reason: sent, .. }),
            ServerOutput::Close { reason: closed, .. },
        ] => {
            assert_eq!((*ch, *sent, *closed), (channel, reason, reason), "{out:?}");
        }
        other => panic!("expected CONN_FAILED {reason} then close, got {other:?}"),
    }
}

/// Ferries messages between a client and a server until both are done. `drop_feed_inits`
/// discards that many of the client's FEED_INIT messages (a server that ignores them).
/// Returns both outcomes and the virtual time at the end.
fn run(
    c: &mut ClientHandshake,
    s: &mut ServerHandshake,
    t0: Instant,
    mut drop_feed_inits: usize,
) -> (ClientOutput, Option<ServerEstablished>, Instant) {
    let mut e = CountingEntropy::default();
    let mut now = t0;
    let mut established = None;
    loop {
        let mut to_server = Vec::new();
        let mut client_done = None;
        while let Some(o) = c.poll_output() {
            match o {
                ClientOutput::Send(ch, m) => to_server.push((ch, wire(&m))),
                done => client_done = Some(done),
            }
        }
        if let Some(done) = client_done {
            return (done, established, now);
        }
        if to_server.is_empty() {
            now = c.poll_timeout().unwrap();
            c.handle_timeout(now);
            continue;
        }
        for (ch, m) in to_server {
            if matches!(m, Message::FeedInit { .. }) && drop_feed_inits > 0 {
                drop_feed_inits -= 1;
                continue;
            }
            s.handle_message(ch, m, now, &mut e);
            while let Some(o) = s.poll_output() {
                match o {
                    ServerOutput::Send(ch, m) => c.handle_message(ch, wire(&m), now),
                    ServerOutput::Authenticate { credentials } => {
                        assert_eq!(&credentials[..], b"ticket-42");
                        s.accept(PlayerId(42), now, &mut e);
                    }
                    ServerOutput::Established(est) => established = Some(est),
                    ServerOutput::Resume(request) => panic!("unexpected resume {request:?}"),
                    ServerOutput::Close { reason, message } => {
                        panic!("server closed: {reason} {message}")
                    }
                }
            }
        }
    }
}

#[test]
fn the_handshake_completes_and_both_sides_agree() {
    let t0 = Instant::now();
    let (mut c, mut s) = (client(t0, 3), server(t0));
    let (out, server_side, end) = run(&mut c, &mut s, t0, 0);
    let ClientOutput::Established(client_side) = out else {
        panic!("client failed: {out:?}")
    };
    let server_side = server_side.expect("server established");
    assert_eq!(client_side.player_id, PlayerId(42));
    assert_eq!(server_side.player_id, PlayerId(42));
    assert_eq!(client_side.peer_limits, LIMITS);
    assert_eq!(
        server_side.peer_limits,
        FrameLimits {
            main: 1000,
            feed: 2000
        }
    );
    assert_eq!(end, t0, "no timer fired on the happy path");
    assert!(c.is_done() && s.is_done());
    assert_eq!(c.poll_timeout(), None);
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn an_ignored_feed_init_is_retried_and_the_handshake_completes() {
    let t0 = Instant::now();
    let (mut c, mut s) = (client(t0, 3), server(t0));
    let (out, server_side, end) = run(&mut c, &mut s, t0, 1);
    assert!(matches!(out, ClientOutput::Established(_)), "{out:?}");
    assert!(server_side.is_some());
    assert_eq!(end, t0 + RETRY, "exactly one retry timer fired");
}

#[test]
fn when_every_feed_init_is_ignored_the_client_times_out_after_its_attempts() {
    let t0 = Instant::now();
    let (mut c, mut s) = (client(t0, 3), server(t0));
    let (out, server_side, end) = run(&mut c, &mut s, t0, usize::MAX);
    assert_eq!(
        out,
        ClientOutput::Failed(ClientFailure::TimedOut {
            step: HandshakeStep::FeedInit
        })
    );
    assert!(server_side.is_none());
    assert_eq!(
        end,
        t0 + RETRY * 3,
        "three attempts, each given its timeout"
    );
}

#[test]
fn a_late_reply_to_the_first_feed_init_is_answered_by_the_same_token_b() {
    let t0 = Instant::now();
    let mut e = CountingEntropy::default();
    let mut s = server(t0);
    let (player_id, token_a, token_b) = to_final_auth(&mut s, &mut e, t0);
    // The client timed out and sent FEED_INIT again before the reply reached it.
    let again = exchange(
        &mut s,
        &mut e,
        t0,
        (ChannelKind::Feed, Message::FeedInit { player_id, token_a }),
    );
    assert_eq!(
        again,
        vec![ServerOutput::Send(
            ChannelKind::Feed,
            Message::FeedInitReply { token_b }
        )]
    );
    let out = exchange(
        &mut s,
        &mut e,
        t0,
        (ChannelKind::Main, Message::FinalAuth { token_b }),
    );
    let [
        ServerOutput::Send(ChannelKind::Main, Message::ConnOk { .. }),
        ServerOutput::Established(est),
    ] = &out[..]
    else {
        panic!("not established: {out:?}")
    };
    // One more late retry on feed after CONN_OK is tolerated by the session rules.
    let mut feed = est.feed_rules.clone();
    assert_eq!(
        feed.classify(Message::FeedInit { player_id, token_a }),
        Inbound::Ignored
    );
}

#[test]
fn the_client_ignores_a_late_copy_of_feed_init_reply_after_conn_ok() {
    let t0 = Instant::now();
    let mut c = client(t0, 3);
    client_sends(&mut c);
    let token_a = Token([1; 16]);
    let token_b = Token([2; 16]);
    c.handle_message(
        ChannelKind::Main,
        Message::ConnInitReply {
            player_id: PlayerId(5),
            token_a,
        },
        t0,
    );
    client_sends(&mut c);
    c.handle_timeout(t0 + RETRY); // retry sent
    assert_eq!(client_sends(&mut c).len(), 1);
    c.handle_message(
        ChannelKind::Feed,
        Message::FeedInitReply { token_b },
        t0 + RETRY,
    );
    assert!(
        !c.wants_to_read(ChannelKind::Feed),
        "feed left unread after FINAL_AUTH"
    );
    assert_eq!(
        client_sends(&mut c),
        vec![(ChannelKind::Main, Message::FinalAuth { token_b })]
    );
    c.handle_message(
        ChannelKind::Main,
        Message::ConnOk {
            max_main_frame: 1000,
            max_feed_frame: 2000,
            credential: Token([0xcc; 16]),
            main_next: 0,
            feed_next: 0,
        },
        t0 + RETRY,
    );
    let Some(ClientOutput::Established(est)) = c.poll_output() else {
        panic!("not established")
    };
    let mut feed = est.feed_rules;
    assert_eq!(
        feed.classify(Message::FeedInitReply { token_b }),
        Inbound::Ignored
    );
    assert!(
        matches!(
            feed.classify(Message::FeedInitReply { token_b }),
            Inbound::Violation { .. }
        ),
        "only as many copies as retries"
    );
}

#[test]
fn wrong_token_a_is_invalid_token_on_feed() {
    let t0 = Instant::now();
    let (mut s, mut e) = (server(t0), CountingEntropy::default());
    let (player_id, _) = to_feed_init(&mut s, &mut e, t0);
    let out = exchange(
        &mut s,
        &mut e,
        t0,
        (
            ChannelKind::Feed,
            Message::FeedInit {
                player_id,
                token_a: Token([0xee; 16]),
            },
        ),
    );
    assert_failed(&out, ChannelKind::Feed, Reason::InvalidToken);
    assert!(s.is_done());
}

#[test]
fn token_a_with_another_player_id_is_player_mismatch() {
    let t0 = Instant::now();
    let (mut s, mut e) = (server(t0), CountingEntropy::default());
    let (player_id, token_a) = to_feed_init(&mut s, &mut e, t0);
    let other = PlayerId(player_id.0 + 1);
    let out = exchange(
        &mut s,
        &mut e,
        t0,
        (
            ChannelKind::Feed,
            Message::FeedInit {
                player_id: other,
                token_a,
            },
        ),
    );
    assert_failed(&out, ChannelKind::Feed, Reason::PlayerMismatch);
}

#[test]
fn expired_token_a_is_token_expired() {
    let t0 = Instant::now();
    let (mut s, mut e) = (server(t0), CountingEntropy::default());
    let (player_id, token_a) = to_feed_init(&mut s, &mut e, t0);
    let out = exchange(
        &mut s,
        &mut e,
        t0 + LIFE,
        (ChannelKind::Feed, Message::FeedInit { player_id, token_a }),
    );
    assert_failed(&out, ChannelKind::Feed, Reason::TokenExpired);
}

#[test]
fn wrong_and_expired_token_b_are_refused_on_main() {
    let t0 = Instant::now();
    for (token, at, reason) in [
        (None, t0, Reason::InvalidToken),
        (Some(()), t0 + LIFE, Reason::TokenExpired),
    ] {
        let (mut s, mut e) = (server(t0), CountingEntropy::default());
        let (_, token_a, token_b) = to_final_auth(&mut s, &mut e, t0);
        // A token A in place of token B is simply a wrong token.
        let presented = if token.is_some() { token_b } else { token_a };
        let out = exchange(
            &mut s,
            &mut e,
            at,
            (ChannelKind::Main, Message::FinalAuth { token_b: presented }),
        );
        assert_failed(&out, ChannelKind::Main, reason);
    }
}

#[test]
fn out_of_order_and_wrong_channel_messages_are_unexpected() {
    let t0 = Instant::now();
    let token = Token([3; 16]);
    let pid = PlayerId(1);
    // Feed init before CONN_INIT.
    let (mut s, mut e) = (server(t0), CountingEntropy::default());
    let out = exchange(
        &mut s,
        &mut e,
        t0,
        (
            ChannelKind::Feed,
            Message::FeedInit {
                player_id: pid,
                token_a: token,
            },
        ),
    );
    assert_failed(&out, ChannelKind::Feed, Reason::UnexpectedMessage);
    // CONN_INIT on feed.
    let (mut s, mut e) = (server(t0), CountingEntropy::default());
    let conn_init = Message::ConnInit {
        max_main_frame: 1000,
        max_feed_frame: 1000,
        credentials: Bytes::new(),
    };
    let out = exchange(&mut s, &mut e, t0, (ChannelKind::Feed, conn_init));
    assert_failed(&out, ChannelKind::Feed, Reason::UnexpectedMessage);
    // Final auth before feed init.
    let (mut s, mut e) = (server(t0), CountingEntropy::default());
    to_feed_init(&mut s, &mut e, t0);
    let out = exchange(
        &mut s,
        &mut e,
        t0,
        (ChannelKind::Main, Message::FinalAuth { token_b: token }),
    );
    assert_failed(&out, ChannelKind::Main, Reason::UnexpectedMessage);
    // FEED_INIT on main.
    let (mut s, mut e) = (server(t0), CountingEntropy::default());
    let (player_id, token_a) = to_feed_init(&mut s, &mut e, t0);
    let out = exchange(
        &mut s,
        &mut e,
        t0,
        (ChannelKind::Main, Message::FeedInit { player_id, token_a }),
    );
    assert_failed(&out, ChannelKind::Main, Reason::UnexpectedMessage);
    // DATA before CONN_OK.
    let (mut s, mut e) = (server(t0), CountingEntropy::default());
    to_final_auth(&mut s, &mut e, t0);
    let out = exchange(
        &mut s,
        &mut e,
        t0,
        (
            ChannelKind::Main,
            Message::Data {
                seq: 0,
                payload: Bytes::from_static(b"hi"),
            },
        ),
    );
    assert_failed(&out, ChannelKind::Main, Reason::UnexpectedMessage);
    // Anything while the authenticator is deciding.
    let (mut s, mut e) = (server(t0), CountingEntropy::default());
    let conn_init = Message::ConnInit {
        max_main_frame: 1000,
        max_feed_frame: 1000,
        credentials: Bytes::new(),
    };
    exchange(&mut s, &mut e, t0, (ChannelKind::Main, conn_init.clone()));
    let out = exchange(&mut s, &mut e, t0, (ChannelKind::Main, conn_init));
    assert_failed(&out, ChannelKind::Main, Reason::UnexpectedMessage);
}

#[test]
fn feed_init_retries_are_bounded() {
    let t0 = Instant::now();
    let (mut s, mut e) = (server(t0), CountingEntropy::default());
    let (player_id, token_a, _) = to_final_auth(&mut s, &mut e, t0);
    for _ in 1..MAX_FEED_INITS {
        let out = exchange(
            &mut s,
            &mut e,
            t0,
            (ChannelKind::Feed, Message::FeedInit { player_id, token_a }),
        );
        assert_eq!(out.len(), 1);
    }
    let out = exchange(
        &mut s,
        &mut e,
        t0,
        (ChannelKind::Feed, Message::FeedInit { player_id, token_a }),
    );
    assert_failed(&out, ChannelKind::Feed, Reason::UnexpectedMessage);
}

#[test]
fn a_repeated_feed_init_with_another_token_is_refused() {
    let t0 = Instant::now();
    let (mut s, mut e) = (server(t0), CountingEntropy::default());
    let (player_id, _, _) = to_final_auth(&mut s, &mut e, t0);
    let out = exchange(
        &mut s,
        &mut e,
        t0,
        (
            ChannelKind::Feed,
            Message::FeedInit {
                player_id,
                token_a: Token([9; 16]),
            },
        ),
    );
    assert_failed(&out, ChannelKind::Feed, Reason::InvalidToken);
}

#[test]
fn the_deadline_fails_the_server_handshake_at_any_step() {
    let t0 = Instant::now();
    for step in 0..3 {
        let (mut s, mut e) = (server(t0), CountingEntropy::default());
        match step {
            0 => {}
            1 => {
                to_feed_init(&mut s, &mut e, t0);
            }
            _ => {
                to_final_auth(&mut s, &mut e, t0);
            }
        }
        assert_eq!(s.poll_timeout(), Some(t0 + DEADLINE));
        s.handle_timeout(t0 + DEADLINE - Duration::from_millis(1));
        assert!(
            server_outputs(&mut s).is_empty(),
            "early timer call is harmless"
        );
        s.handle_timeout(t0 + DEADLINE);
        assert_failed(
            &server_outputs(&mut s),
            ChannelKind::Main,
            Reason::HandshakeTimeout,
        );
    }
}

#[test]
fn refusal_by_the_application_is_sent_on_main() {
    let t0 = Instant::now();
    let (mut s, mut e) = (server(t0), CountingEntropy::default());
    let conn_init = Message::ConnInit {
        max_main_frame: 1000,
        max_feed_frame: 1000,
        credentials: Bytes::new(),
    };
    exchange(&mut s, &mut e, t0, (ChannelKind::Main, conn_init));
    s.refuse(Reason::ServerFull, "server full", None);
    assert_failed(
        &server_outputs(&mut s),
        ChannelKind::Main,
        Reason::ServerFull,
    );
    // A late decision after the handshake ended changes nothing.
    s.accept(PlayerId(1), t0, &mut e);
    assert!(server_outputs(&mut s).is_empty());
}

#[test]
fn a_decision_nobody_asked_for_changes_nothing() {
    let t0 = Instant::now();
    let (mut s, mut e) = (server(t0), CountingEntropy::default());
    let resume = ResumeRequest {
        player_id: PlayerId(7),
        proof: Token([9; TOKEN_LEN]),
        main_next: 0,
        feed_next: 0,
    };
    let decide_out_of_turn = |s: &mut ServerHandshake, e: &mut CountingEntropy| {
        s.accept(PlayerId(99), t0, e);
        s.accept_resume(&resume, Token([1; TOKEN_LEN]), 5, 5);
        assert!(server_outputs(s).is_empty());
    };
    decide_out_of_turn(&mut s, &mut e);
    let (player_id, token_a) = to_feed_init(&mut s, &mut e, t0);
    decide_out_of_turn(&mut s, &mut e);
    // The handshake carries on from where it was.
    let out = exchange(
        &mut s,
        &mut e,
        t0,
        (ChannelKind::Feed, Message::FeedInit { player_id, token_a }),
    );
    assert!(matches!(
        out[..],
        [ServerOutput::Send(
            ChannelKind::Feed,
            Message::FeedInitReply { .. }
        )]
    ));
}

#[test]
fn no_randomness_is_an_internal_error() {
    struct NoEntropy;
    impl Entropy for NoEntropy {
        fn fill(&mut self, _: &mut [u8]) -> Result<(), EntropyError> {
            Err(EntropyError)
        }
    }
    let t0 = Instant::now();
    let mut s = server(t0);
    let conn_init = Message::ConnInit {
        max_main_frame: 1000,
        max_feed_frame: 1000,
        credentials: Bytes::new(),
    };
    s.handle_message(ChannelKind::Main, conn_init, t0, &mut NoEntropy);
    server_outputs(&mut s);
    s.accept(PlayerId(1), t0, &mut NoEntropy);
    assert_failed(
        &server_outputs(&mut s),
        ChannelKind::Main,
        Reason::InternalError,
    );
}

#[test]
fn the_client_surfaces_conn_failed_from_either_channel() {
    let t0 = Instant::now();
    for channel in [ChannelKind::Main, ChannelKind::Feed] {
        let mut c = client(t0, 3);
        client_sends(&mut c);
        c.handle_message(
            channel,
            codec::conn_failed(
                Reason::AuthRefused,
                "banned",
                Some(Duration::from_millis(1500)),
            ),
            t0,
        );
        assert_eq!(
            c.poll_output(),
            Some(ClientOutput::Failed(ClientFailure::Refused {
                reason: Reason::AuthRefused,
                message: "banned".into(),
                retry_after: Some(Duration::from_millis(1500)),
            }))
        );
        assert!(c.is_done());
    }
}

#[test]
fn the_client_treats_an_unexpected_server_message_as_a_violation() {
    let t0 = Instant::now();
    let mut c = client(t0, 3);
    client_sends(&mut c);
    c.handle_message(
        ChannelKind::Main,
        Message::ConnOk {
            max_main_frame: 1000,
            max_feed_frame: 1000,
            credential: Token([0xcc; 16]),
            main_next: 0,
            feed_next: 0,
        },
        t0,
    );
    let Some(ClientOutput::Failed(failure)) = c.poll_output() else {
        panic!("accepted CONN_OK before the handshake")
    };
    assert_eq!(failure.close_reason(), Reason::UnexpectedMessage);
}

#[test]
fn the_client_deadline_bounds_every_step() {
    let t0 = Instant::now();
    let mut c = client(t0, 3);
    client_sends(&mut c);
    assert_eq!(c.poll_timeout(), Some(t0 + DEADLINE));
    c.handle_timeout(t0 + DEADLINE);
    assert_eq!(
        c.poll_output(),
        Some(ClientOutput::Failed(ClientFailure::TimedOut {
            step: HandshakeStep::ConnInit
        }))
    );
}

#[test]
fn frame_limits_below_the_minimum_are_malformed_announcements() {
    let t0 = Instant::now();
    let (mut s, mut e) = (server(t0), CountingEntropy::default());
    let conn_init = Message::ConnInit {
        max_main_frame: MIN_FRAME_LIMIT - 1,
        max_feed_frame: 65536,
        credentials: Bytes::new(),
    };
    let out = exchange(&mut s, &mut e, t0, (ChannelKind::Main, conn_init));
    assert_failed(&out, ChannelKind::Main, Reason::MalformedMessage);

    let mut c = client(t0, 3);
    client_sends(&mut c);
    c.handle_message(
        ChannelKind::Main,
        Message::ConnInitReply {
            player_id: PlayerId(1),
            token_a: Token([1; 16]),
        },
        t0,
    );
    c.handle_message(
        ChannelKind::Feed,
        Message::FeedInitReply {
            token_b: Token([2; 16]),
        },
        t0,
    );
    client_sends(&mut c);
    c.handle_message(
        ChannelKind::Main,
        Message::ConnOk {
            max_main_frame: 65536,
            max_feed_frame: 0,
            credential: Token([0xcc; 16]),
            main_next: 0,
            feed_next: 0,
        },
        t0,
    );
    let Some(ClientOutput::Failed(failure)) = c.poll_output() else {
        panic!("accepted a CONN_OK announcing a zero limit")
    };
    assert_eq!(failure.close_reason(), Reason::MalformedMessage);
}

#[test]
fn conn_ok_carries_a_fresh_credential_and_starts_both_channels_at_zero() {
    let t0 = Instant::now();
    let (mut c, mut s) = (client(t0, 3), server(t0));
    let (out, server_side, _) = run(&mut c, &mut s, t0, 0);
    let ClientOutput::Established(client_side) = out else {
        panic!("client failed: {out:?}")
    };
    let server_side = server_side.unwrap();
    assert_eq!(client_side.credential, server_side.credential);
    assert_eq!((client_side.main_next, client_side.feed_next), (0, 0));
    assert_eq!(server_side.resumed, None);
}

#[test]
fn a_resume_is_answered_with_conn_ok_and_the_servers_positions() {
    let t0 = Instant::now();
    let ticket = ResumeTicket {
        player_id: PlayerId(8),
        proof: Token([5; 16]),
        main_next: 10,
        feed_next: 20,
    };
    let mut c = ClientHandshake::resume(
        ClientHandshakeConfig {
            deadline: t0 + DEADLINE,
            credentials: Bytes::new(),
            feed_init_timeout: RETRY,
            feed_init_attempts: 3,
            local_limits: LIMITS,
        },
        &ticket,
    );
    assert_eq!(c.step(), Some(HandshakeStep::Resume));
    let sent = client_sends(&mut c);
    let mut s = server(t0);
    let mut e = CountingEntropy::default();
    let [(ChannelKind::Main, resume)] = &sent[..] else {
        panic!("{sent:?}")
    };
    let out = exchange(&mut s, &mut e, t0, (ChannelKind::Main, resume.clone()));
    let [ServerOutput::Resume(request)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(
        (
            request.player_id,
            request.proof,
            request.main_next,
            request.feed_next
        ),
        (PlayerId(8), Token([5; 16]), 10, 20)
    );
    // Anything else while the credential is being checked is a violation.
    let next = Token([6; 16]);
    s.accept_resume(request, next, 3, 4);
    let out = server_outputs(&mut s);
    let [
        ServerOutput::Send(ChannelKind::Main, conn_ok),
        ServerOutput::Established(est),
    ] = &out[..]
    else {
        panic!("{out:?}")
    };
    assert_eq!(est.resumed, Some((10, 20)));
    assert_eq!(est.credential, next);
    c.handle_message(ChannelKind::Main, wire(conn_ok), t0);
    let Some(ClientOutput::Established(done)) = c.poll_output() else {
        panic!("client did not resume")
    };
    assert_eq!(
        (
            done.player_id,
            done.credential,
            done.main_next,
            done.feed_next
        ),
        (PlayerId(8), next, 3, 4)
    );
}

#[test]
fn a_refused_resume_fails_the_client_with_the_reason() {
    let t0 = Instant::now();
    let mut s = server(t0);
    let mut e = CountingEntropy::default();
    let resume = Message::Resume {
        player_id: PlayerId(1),
        proof: Token([1; 16]),
        max_main_frame: 65536,
        max_feed_frame: 65536,
        main_next: 0,
        feed_next: 0,
    };
    exchange(&mut s, &mut e, t0, (ChannelKind::Main, resume));
    s.refuse(Reason::UnknownSession, "unknown session", None);
    assert_failed(
        &server_outputs(&mut s),
        ChannelKind::Main,
        Reason::UnknownSession,
    );
}
