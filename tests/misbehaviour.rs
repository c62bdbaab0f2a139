//! Every handshake failure path, driven by a raw peer that writes the wire protocol directly.
//! Each test asserts the `CONN_FAILED` reason (and the close code that follows) and that a
//! healthy session on the same server carries on untouched.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Fixture, HANDSHAKE_LIMIT, RawPeer, assert_echoes, within};
use quicfeed::protocol::{ChannelKind, Message, PlayerId, Token};
use quicfeed::{AuthDecision, AuthRequest, Reason, RecvError, Session};

const MAIN: ChannelKind = ChannelKind::Main;
const FEED: ChannelKind = ChannelKind::Feed;

/// A server with one healthy client session already exchanging messages.
async fn with_healthy(configure: impl FnOnce(&mut quicfeed::ServerConfig)) -> (Fixture, Session) {
    let fixture = Fixture::start_with(configure).await;
    let mut healthy = fixture.connect().await;
    assert_echoes(&mut healthy, 2).await;
    (fixture, healthy)
}

async fn still_healthy(healthy: &mut Session) {
    assert_echoes(healthy, 5).await;
}

/// Proves: a wrong token A gets CONN_FAILED(INVALID_TOKEN) on feed.
#[tokio::test]
async fn wrong_token_a_is_invalid_token() {
    let (fixture, mut healthy) = with_healthy(|_| {}).await;
    let mut raw = fixture.raw().await;
    let (player_id, _) = raw.conn_init(b"").await;
    let wrong = Token([0x5a; 16]);
    raw.send(
        FEED,
        &Message::FeedInit {
            player_id,
            token_a: wrong,
        },
    )
    .await;
    raw.expect_failed(FEED, Reason::InvalidToken).await;
    still_healthy(&mut healthy).await;
}

/// Proves: token A shown with another player's ID gets CONN_FAILED(PLAYER_MISMATCH).
#[tokio::test]
async fn token_a_with_another_player_id_is_player_mismatch() {
    let (fixture, mut healthy) = with_healthy(|_| {}).await;
    let mut raw = fixture.raw().await;
    let (player_id, token_a) = raw.conn_init(b"").await;
    let other = PlayerId(player_id.0 + 1000);
    raw.send(
        FEED,
        &Message::FeedInit {
            player_id: other,
            token_a,
        },
    )
    .await;
    raw.expect_failed(FEED, Reason::PlayerMismatch).await;
    still_healthy(&mut healthy).await;
}

/// Proves: a wrong token B gets CONN_FAILED(INVALID_TOKEN) on main.
#[tokio::test]
async fn wrong_token_b_is_invalid_token() {
    let (fixture, mut healthy) = with_healthy(|_| {}).await;
    let mut raw = fixture.raw().await;
    let (player_id, token_a) = raw.conn_init(b"").await;
    raw.feed_init(player_id, token_a).await;
    raw.send(MAIN, &Message::FinalAuth { token_b: token_a })
        .await;
    raw.expect_failed(MAIN, Reason::InvalidToken).await;
    still_healthy(&mut healthy).await;
}

const SHORT_LIFE: Duration = Duration::from_millis(200);

/// Proves: token A presented after its lifetime gets CONN_FAILED(TOKEN_EXPIRED).
#[tokio::test]
async fn expired_token_a_is_token_expired() {
    let (fixture, mut healthy) = with_healthy(|c| c.token_lifetime = SHORT_LIFE).await;
    let mut raw = fixture.raw().await;
    let (player_id, token_a) = raw.conn_init(b"").await;
    // The condition under test is time passing.
    tokio::time::sleep(SHORT_LIFE * 2).await;
    raw.send(FEED, &Message::FeedInit { player_id, token_a })
        .await;
    raw.expect_failed(FEED, Reason::TokenExpired).await;
    still_healthy(&mut healthy).await;
}

/// Proves: token B presented after its lifetime gets CONN_FAILED(TOKEN_EXPIRED).
#[tokio::test]
async fn expired_token_b_is_token_expired() {
    let (fixture, mut healthy) = with_healthy(|c| c.token_lifetime = SHORT_LIFE).await;
    let mut raw = fixture.raw().await;
    let (player_id, token_a) = raw.conn_init(b"").await;
    let token_b = raw.feed_init(player_id, token_a).await;
    tokio::time::sleep(SHORT_LIFE * 2).await;
    raw.send(MAIN, &Message::FinalAuth { token_b }).await;
    raw.expect_failed(MAIN, Reason::TokenExpired).await;
    still_healthy(&mut healthy).await;
}

/// Proves: token B used a second time (after CONN_OK) closes the session with TOKEN_REUSED.
#[tokio::test]
async fn a_token_used_twice_is_token_reused() {
    let (mut fixture, mut healthy) = with_healthy(|_| {}).await;
    let mut raw = fixture.raw().await;
    let (player_id, _, token_b) = raw.handshake().await;
    raw.send(MAIN, &Message::FinalAuth { token_b }).await;
    assert_eq!(raw.close_reason().await.0, Reason::TokenReused);
    let (player, err) = fixture.failure_on(MAIN).await;
    assert_eq!(player, player_id);
    assert!(
        matches!(
            err,
            RecvError::Violation {
                reason: Reason::TokenReused,
                ..
            }
        ),
        "{err}"
    );
    still_healthy(&mut healthy).await;
}

/// Proves: a repeated FEED_INIT (the seed's retry) is answered with the same token B, and a
/// late one after CONN_OK is ignored rather than treated as an attack.
#[tokio::test]
async fn a_repeated_feed_init_is_handled_safely() {
    let (fixture, mut healthy) = with_healthy(|_| {}).await;
    let mut raw = fixture.raw().await;
    let (player_id, token_a) = raw.conn_init(b"").await;
    let first = raw.feed_init(player_id, token_a).await;
    let second = raw.feed_init(player_id, token_a).await;
    assert_eq!(first, second, "a retry gets the same token B");
    raw.send(MAIN, &Message::FinalAuth { token_b: first }).await;
    assert!(matches!(raw.recv(MAIN).await, Some(Message::ConnOk { .. })));
    raw.send(FEED, &Message::FeedInit { player_id, token_a })
        .await;
    raw.send(
        FEED,
        &Message::Data {
            seq: 0,
            payload: Bytes::from_static(b"after"),
        },
    )
    .await;
    assert_eq!(
        raw.recv(FEED).await,
        Some(Message::Data {
            seq: 0,
            payload: Bytes::from_static(b"after")
        }),
        "the late retry was skipped and the session works"
    );
    still_healthy(&mut healthy).await;
}

/// Proves: a token issued on one connection is refused on another, whichever player ID comes
/// with it.
#[tokio::test]
async fn a_token_from_another_connection_is_invalid_token() {
    let (fixture, mut healthy) = with_healthy(|_| {}).await;
    let mut victim = fixture.raw().await;
    let (victim_id, victim_token) = victim.conn_init(b"").await;
    for player_id in [victim_id, PlayerId(0)] {
        let mut thief = fixture.raw().await;
        let (thief_id, _) = thief.conn_init(b"").await;
        let shown_as = if player_id == PlayerId(0) {
            thief_id
        } else {
            player_id
        };
        thief
            .send(
                FEED,
                &Message::FeedInit {
                    player_id: shown_as,
                    token_a: victim_token,
                },
            )
            .await;
        thief.expect_failed(FEED, Reason::InvalidToken).await;
    }
    // The victim's own handshake is unaffected.
    let token_b = victim.feed_init(victim_id, victim_token).await;
    victim.send(MAIN, &Message::FinalAuth { token_b }).await;
    assert!(matches!(
        victim.recv(MAIN).await,
        Some(Message::ConnOk { .. })
    ));
    still_healthy(&mut healthy).await;
}

/// Proves: FINAL_AUTH before FEED_INIT gets CONN_FAILED(UNEXPECTED_MESSAGE) on main.
#[tokio::test]
async fn final_auth_before_feed_init_is_unexpected() {
    let (fixture, mut healthy) = with_healthy(|_| {}).await;
    let mut raw = fixture.raw().await;
    raw.conn_init(b"").await;
    raw.send(
        MAIN,
        &Message::FinalAuth {
            token_b: Token([1; 16]),
        },
    )
    .await;
    raw.expect_failed(MAIN, Reason::UnexpectedMessage).await;
    still_healthy(&mut healthy).await;
}

/// Proves: FEED_INIT before CONN_INIT gets CONN_FAILED(UNEXPECTED_MESSAGE) on feed.
#[tokio::test]
async fn feed_init_before_conn_init_is_unexpected() {
    let (fixture, mut healthy) = with_healthy(|_| {}).await;
    let mut raw = fixture.raw().await;
    let message = Message::FeedInit {
        player_id: PlayerId(1),
        token_a: Token([2; 16]),
    };
    raw.send(FEED, &message).await;
    raw.expect_failed(FEED, Reason::UnexpectedMessage).await;
    still_healthy(&mut healthy).await;
}

/// Proves: a frame with an undefined message tag gets CONN_FAILED(UNKNOWN_MESSAGE).
#[tokio::test]
async fn an_unknown_message_type_is_unknown_message() {
    let (fixture, mut healthy) = with_healthy(|_| {}).await;
    let mut raw = fixture.raw().await;
    raw.stream(MAIN)
        .await
        .write(&[0, 0, 0, 3, 0x2a, 0, 0])
        .await;
    raw.expect_failed(MAIN, Reason::UnknownMessage).await;
    still_healthy(&mut healthy).await;
}

/// Proves: a frame longer than the handshake limit is refused from its length prefix alone
/// with CONN_FAILED(FRAME_TOO_LARGE), without the server waiting for the body.
#[tokio::test]
async fn a_frame_over_the_size_limit_is_frame_too_large() {
    let (fixture, mut healthy) = with_healthy(|_| {}).await;
    let mut raw = fixture.raw().await;
    let len = u32::try_from(HANDSHAKE_LIMIT + 1).unwrap();
    raw.stream(MAIN).await.write(&len.to_be_bytes()).await;
    raw.expect_failed(MAIN, Reason::FrameTooLarge).await;
    // A 4 GiB claim is refused just the same.
    let mut raw = fixture.raw().await;
    raw.stream(MAIN).await.write(&[0xff; 4]).await;
    raw.expect_failed(MAIN, Reason::FrameTooLarge).await;
    still_healthy(&mut healthy).await;
}

/// Proves: garbage in a frame is MALFORMED_MESSAGE, and garbage instead of a channel
/// declaration is INVALID_STREAM (answered with a close only: no channel exists to answer on).
#[tokio::test]
async fn garbage_bytes_are_refused() {
    let (fixture, mut healthy) = with_healthy(|_| {}).await;
    let mut raw = fixture.raw().await;
    raw.stream(MAIN)
        .await
        .write(&[0, 0, 0, 5, 0, 0xff, 0xfe, 0xfd, 0xfc])
        .await;
    raw.expect_failed(MAIN, Reason::MalformedMessage).await;

    let mut raw = fixture.raw().await;
    let _stream = raw.open_raw(b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(raw.close_reason().await.0, Reason::InvalidStream);

    // A second main stream: the existing main stream gets the CONN_FAILED.
    let mut raw = fixture.raw().await;
    raw.stream(MAIN).await;
    let _second = raw.open_raw(&[MAIN.tag()]).await;
    raw.expect_failed(MAIN, Reason::InvalidStream).await;
    still_healthy(&mut healthy).await;
}

/// Proves: a connection that never sends CONN_INIT is closed by the handshake deadline, with
/// CONN_FAILED(HANDSHAKE_TIMEOUT) on main when main exists and a close alone when it does not.
#[tokio::test]
async fn a_client_that_never_sends_conn_init_is_closed_at_the_deadline() {
    let deadline = Duration::from_millis(500);
    let (fixture, mut healthy) = with_healthy(|c| c.handshake_timeout = deadline).await;
    let silent = fixture.raw().await;
    let mut declared = fixture.raw().await;
    declared.stream(MAIN).await;
    let started = std::time::Instant::now();
    assert_eq!(silent.close_reason().await.0, Reason::HandshakeTimeout);
    declared.expect_failed(MAIN, Reason::HandshakeTimeout).await;
    assert!(
        started.elapsed() < deadline * 4,
        "closed promptly at the deadline"
    );
    still_healthy(&mut healthy).await;
}

/// Proves: an authenticator refusal is CONN_FAILED(AUTH_REFUSED) on main with its message.
#[tokio::test]
async fn an_authenticator_refusal_is_auth_refused() {
    let (fixture, mut healthy) = with_healthy(|c| {
        *c = c.clone().authenticator(|request: AuthRequest| async move {
            if request.credentials.is_empty() {
                AuthDecision::Accept
            } else {
                AuthDecision::reject("bad ticket")
            }
        });
    })
    .await;
    let mut raw = fixture.raw().await;
    let init = Message::ConnInit {
        max_main_frame: 65536,
        max_feed_frame: 65536,
        credentials: Bytes::from_static(b"forged"),
    };
    raw.send(MAIN, &init).await;
    assert_eq!(
        raw.recv(MAIN).await,
        Some(Message::ConnFailed {
            reason: Reason::AuthRefused,
            message: "bad ticket".into(),
            retry_after_ms: None,
        })
    );
    assert_eq!(
        raw.close_reason().await,
        (Reason::AuthRefused, "bad ticket".into())
    );
    still_healthy(&mut healthy).await;
}

/// Proves: at the session limit CONN_INIT gets CONN_FAILED(SERVER_FULL).
#[tokio::test]
async fn a_full_server_answers_server_full() {
    let (fixture, mut healthy) = with_healthy(|c| c.max_sessions = 1).await;
    let mut raw = fixture.raw().await;
    let init = Message::ConnInit {
        max_main_frame: 65536,
        max_feed_frame: 65536,
        credentials: Bytes::new(),
    };
    raw.send(MAIN, &init).await;
    raw.expect_failed(MAIN, Reason::ServerFull).await;
    still_healthy(&mut healthy).await;
}

/// Proves: DATA before CONN_OK is UNEXPECTED_MESSAGE, and after CONN_OK a malformed frame or a
/// stray handshake message closes that session only.
#[tokio::test]
async fn protocol_violations_close_only_the_offending_session() {
    let (mut fixture, mut healthy) = with_healthy(|_| {}).await;
    let mut early = fixture.raw().await;
    early
        .send(
            MAIN,
            &Message::Data {
                seq: 0,
                payload: Bytes::from_static(b"too soon"),
            },
        )
        .await;
    early.expect_failed(MAIN, Reason::UnexpectedMessage).await;

    let mut garbage = fixture.raw().await;
    let (garbage_id, ..) = garbage.handshake().await;
    garbage
        .stream(FEED)
        .await
        .write(&[0, 0, 0, 2, 0xff, 0xff])
        .await;
    assert_eq!(garbage.close_reason().await.0, Reason::MalformedMessage);
    let (player, err) = fixture.failure_on(FEED).await;
    assert_eq!(player, garbage_id);
    assert!(matches!(
        err,
        RecvError::Violation {
            reason: Reason::MalformedMessage,
            ..
        }
    ));

    let mut stray = fixture.raw().await;
    stray.handshake().await;
    let conn_init = Message::ConnInit {
        max_main_frame: 1,
        max_feed_frame: 1,
        credentials: Bytes::new(),
    };
    stray.send(MAIN, &conn_init).await;
    assert_eq!(stray.close_reason().await.0, Reason::UnexpectedMessage);
    still_healthy(&mut healthy).await;
}

/// Proves: many misbehaving connections at once leave a streaming healthy session untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_misbehaving_peers_does_not_disturb_a_healthy_session() {
    let (fixture, mut healthy) = with_healthy(|_| {}).await;
    let attackers: Vec<_> = (0..40u8)
        .map(|i| {
            let addr = fixture.addr;
            let cert = fixture.certificate.clone();
            tokio::spawn(async move {
                let mut raw = RawPeer::connect(addr, &cert).await;
                match i % 4 {
                    0 => raw.stream(MAIN).await.write(&[0xff; 64]).await,
                    1 => {
                        let (player_id, _) = raw.conn_init(b"").await;
                        let token_a = Token([i; 16]);
                        raw.send(FEED, &Message::FeedInit { player_id, token_a })
                            .await;
                    }
                    2 => {
                        raw.handshake().await;
                        raw.stream(MAIN).await.write(&[0, 0, 0, 1, 9]).await;
                    }
                    _ => raw.open_raw(&[7, 7, 7]).await.write(&[1]).await,
                }
                raw.close_reason().await.0
            })
        })
        .collect();
    // Keep the healthy session streaming while the attack runs.
    assert_echoes(&mut healthy, 200).await;
    for attacker in attackers {
        let reason = within(attacker).await.unwrap();
        assert_ne!(reason, Reason::Normal);
    }
    still_healthy(&mut healthy).await;
}
