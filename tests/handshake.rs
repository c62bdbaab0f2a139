//! The handshake and both channels over real loopback QUIC, through the public API: happy
//! paths, 200 concurrent clients, the authenticator, the session limit, limits on message size,
//! closing and shutdown.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Fixture, assert_echoes, within};
use quicfeed::{
    AuthDecision, AuthRequest, Client, ConnectError, Disconnect, PlayerId, Reason, RecvError,
    SendError,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Snapshot {
    tick: u64,
    players: Vec<(u32, f32, f32)>,
}

/// Proves: after the handshake both sides see the same player ID, and typed and raw messages
/// travel both ways on both channels.
#[tokio::test]
async fn the_handshake_completes_and_both_channels_carry_messages_both_ways() {
    let (server, config) = common::server_and_config().await;
    let client = tokio::spawn(async move {
        let session = Client::connect(&config).await.unwrap();
        session.main().send("join").await.unwrap();
        session.feed().send_bytes(b"client feed").await.unwrap();
        let reply: String = within(session.main().recv()).await.unwrap();
        let snapshot: Snapshot = within(session.feed().recv()).await.unwrap();
        let raw = within(session.main().recv_bytes()).await.unwrap();
        (session.player_id(), reply, snapshot, raw)
    });
    let session = within(server.accept()).await.unwrap();
    let join: String = within(session.main().recv()).await.unwrap();
    let feed = within(session.feed().recv_bytes()).await.unwrap();
    assert_eq!((join.as_str(), &feed[..]), ("join", &b"client feed"[..]));
    let snapshot = Snapshot {
        tick: 9,
        players: vec![(1, 0.5, -3.0), (2, 10.0, 4.25)],
    };
    session.main().send(&"welcome".to_owned()).await.unwrap();
    session.feed().send(&snapshot).await.unwrap();
    session.main().send_bytes(&[0, 1, 2, 255]).await.unwrap();
    let (player_id, reply, got, raw) = within(client).await.unwrap();
    assert_eq!(player_id, session.player_id());
    assert_eq!(reply, "welcome");
    assert_eq!(got, snapshot);
    assert_eq!(&raw[..], &[0, 1, 2, 255]);
}

/// Proves: 200 clients handshaking at once all complete, each with a distinct player ID, and
/// the server accepts exactly those 200 sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_handshake_concurrently_with_distinct_ids() {
    // All 200 come from one address (loopback), like players behind one NAT.
    let fixture = Fixture::start_with(|config| {
        config.max_pending_per_address = 200;
        config.max_sessions_per_address = 200;
    })
    .await;
    let clients: Vec<_> = (0..200)
        .map(|_| {
            let config = fixture.client_config();
            tokio::spawn(async move {
                let session = Client::connect(&config).await.unwrap();
                session.main().send(&1u8).await.unwrap();
                let echo: u8 = within(session.main().recv()).await.unwrap();
                assert_eq!(echo, 1);
                session
            })
        })
        .collect();
    let mut ids = HashSet::new();
    let mut sessions = Vec::new();
    for client in clients {
        let session = within(client).await.unwrap();
        assert!(ids.insert(session.player_id()), "duplicate ID");
        sessions.push(session);
    }
    assert_eq!(ids.len(), 200);
    assert_eq!(fixture.server.session_count(), 200);
}

/// Proves: messages the server sends on feed the moment it accepts a session are all delivered,
/// in order, even though feed data can overtake CONN_OK on the wire.
#[tokio::test]
async fn feed_messages_sent_right_after_accept_arrive_in_order() {
    let (server, config) = common::server_and_config().await;
    let sender = tokio::spawn(async move {
        let session = within(server.accept()).await.unwrap();
        for tick in 0..500u64 {
            session.feed().send(&tick).await.unwrap();
        }
        // Keep the session open until the client has read everything.
        let done: String = within(session.main().recv()).await.unwrap();
        assert_eq!(done, "done");
    });
    let session = Client::connect(&config).await.unwrap();
    for expected in 0..500u64 {
        let tick: u64 = within(session.feed().recv()).await.unwrap();
        assert_eq!(tick, expected);
    }
    session.main().send("done").await.unwrap();
    within(sender).await.unwrap();
}

/// Proves: the authenticator sees the credentials and the client address, and its chosen player
/// ID is the one both sides use.
#[tokio::test]
async fn the_authenticator_sees_credentials_and_chooses_the_player_id() {
    let fixture = Fixture::start_with(|config| {
        *config = config
            .clone()
            .authenticator(|request: AuthRequest| async move {
                assert!(request.remote_address.ip().is_loopback());
                match &request.credentials[..] {
                    b"ticket-77" => AuthDecision::AcceptAs(PlayerId(77)),
                    _ => AuthDecision::reject("unknown ticket"),
                }
            });
    })
    .await;
    let mut config = fixture.client_config();
    config.credentials = bytes::Bytes::from_static(b"ticket-77");
    let mut session = within(Client::connect(&config)).await.unwrap();
    assert_eq!(session.player_id(), PlayerId(77));
    assert_echoes(&mut session, 3).await;

    // The same ID again while the first session lives: refused, not a second session.
    let err = within(Client::connect(&config)).await.unwrap_err();
    assert!(
        matches!(
            err,
            ConnectError::Refused {
                reason: Reason::PlayerIdInUse,
                ..
            }
        ),
        "{err}"
    );
}

/// Proves: an authenticator's refusal reaches the client's caller as a typed error with the
/// reason, the message and the hint of when to try again.
#[tokio::test]
async fn an_authenticator_refusal_is_a_typed_error_with_its_message() {
    let fixture = Fixture::start_with(|config| {
        *config = config.clone().authenticator(|_: AuthRequest| async {
            AuthDecision::Reject {
                reason: Reason::Application(0x1001),
                message: "banned until tomorrow".into(),
                retry_after: Some(Duration::from_secs(86_400)),
            }
        });
    })
    .await;
    let err = within(Client::connect(&fixture.client_config()))
        .await
        .unwrap_err();
    match err {
        ConnectError::Refused {
            reason,
            message,
            retry_after,
        } => {
            assert_eq!(reason, Reason::Application(0x1001));
            assert_eq!(message, "banned until tomorrow");
            assert_eq!(retry_after, Some(Duration::from_secs(86_400)));
        }
        other => panic!("expected a refusal, got {other}"),
    }
}

/// Proves: at the session limit new clients get SERVER_FULL with the server's hint of when to
/// try again, and a freed slot admits again.
#[tokio::test]
async fn the_session_limit_refuses_with_server_full_until_a_slot_frees() {
    let fixture = Fixture::start_with(|config| config.max_sessions = 2).await;
    let first = fixture.connect().await;
    let _second = fixture.connect().await;
    let err = within(Client::connect(&fixture.client_config()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ConnectError::Refused {
                reason: Reason::ServerFull,
                retry_after: Some(hint),
                ..
            } if hint == Duration::from_secs(2)
        ),
        "{err}"
    );
    first.close(Reason::Normal, "leaving");
    // The slot frees when the server sees the close; wait for that state change.
    within(async {
        while fixture.server.session_count() > 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let mut third = fixture.connect().await;
    assert_echoes(&mut third, 1).await;
}

/// Proves: a session closed by one side ends on the other with the same reason and message.
#[tokio::test]
async fn closing_a_session_reaches_the_peer_with_the_reason() {
    let (server, config) = common::server_and_config().await;
    let client = within(Client::connect(&config)).await.unwrap();
    let session = within(server.accept()).await.unwrap();
    client.close(Reason::Application(0x2000), "rage quit");
    let err = within(session.main().recv_bytes()).await.unwrap_err();
    let expected = Disconnect::ByPeer {
        reason: Reason::Application(0x2000),
        message: "rage quit".into(),
    };
    assert_eq!(err, RecvError::Closed(expected.clone()));
    assert_eq!(within(session.closed()).await, expected);
    assert!(matches!(
        within(client.closed()).await,
        Disconnect::Locally {
            reason: Reason::Application(0x2000),
            ..
        }
    ));
}

/// Proves: shutdown tells every connected client why, and accept() then returns None.
#[tokio::test]
async fn shutdown_reaches_every_client_with_the_reason() {
    let fixture = Fixture::start().await;
    let mut a = fixture.connect().await;
    let mut b = fixture.connect().await;
    assert_echoes(&mut a, 1).await;
    within(
        fixture
            .server
            .shutdown(Reason::ServerShutdown, "maintenance"),
    )
    .await;
    for session in [&mut a, &mut b] {
        let err = within(session.feed().recv_bytes()).await.unwrap_err();
        assert_eq!(
            err,
            RecvError::Closed(Disconnect::ByPeer {
                reason: Reason::ServerShutdown,
                message: "maintenance".into()
            })
        );
    }
    assert!(within(fixture.server.accept()).await.is_none());
    let refused = within(Client::connect(&fixture.client_config())).await;
    assert!(refused.is_err(), "a shut-down server accepts no one");
}

/// Proves: a message over the peer's announced frame limit is refused locally before anything
/// is sent, and the session carries on.
#[tokio::test]
async fn a_message_over_the_peer_limit_is_refused_before_sending() {
    let fixture = Fixture::start_with(|config| config.frame_limits.main = 1024).await;
    let session = fixture.connect().await;
    let err = session.main().send_bytes(&[7; 2000]).await.unwrap_err();
    assert!(
        matches!(err, SendError::TooLarge { max: 1024, .. }),
        "{err}"
    );
    session.main().send_bytes(&[7; 1000]).await.unwrap();
    assert_eq!(
        within(session.main().recv_bytes()).await.unwrap().len(),
        1000
    );
}

/// Proves: a payload that does not decode as the requested type is a decode error that
/// consumes the message and leaves the session usable.
#[tokio::test]
async fn a_payload_of_the_wrong_type_is_a_decode_error_and_the_session_continues() {
    let fixture = Fixture::start().await;
    let mut session = fixture.connect().await;
    session.main().send("not a number").await.unwrap();
    let err = within(session.main().recv::<Snapshot>()).await.unwrap_err();
    assert!(matches!(err, RecvError::Decode(_)), "{err}");
    assert_echoes(&mut session, 2).await;
}

/// Proves: dropping every part of a client session closes the connection, and the server side
/// sees it end.
#[tokio::test]
async fn dropping_a_session_closes_it() {
    let (server, config) = common::server_and_config().await;
    let client = within(Client::connect(&config)).await.unwrap();
    let session = within(server.accept()).await.unwrap();
    drop(client);
    assert!(matches!(
        within(session.closed()).await,
        Disconnect::ByPeer {
            reason: Reason::Normal,
            ..
        }
    ));
}

/// Proves: a session dropped or closed gracefully right after sending still delivers every
/// message, then ends on the peer with the reason (NORMAL for a drop).
#[tokio::test]
async fn messages_sent_before_a_graceful_close_or_a_drop_all_arrive() {
    let (server, config) = common::server_and_config().await;
    for graceful in [false, true] {
        let client = within(Client::connect(&config)).await.unwrap();
        let session = within(server.accept()).await.unwrap();
        for tick in 0..1000u64 {
            session.feed().send(&tick).await.unwrap();
        }
        session.main().send("last words").await.unwrap();
        if graceful {
            session
                .close_gracefully(Reason::Application(0x1234), "round over")
                .await;
        } else {
            drop(session);
        }
        let (_, main, feed) = client.into_parts();
        for tick in 0..1000u64 {
            assert_eq!(within(feed.recv::<u64>()).await.unwrap(), tick);
        }
        assert_eq!(within(main.recv::<String>()).await.unwrap(), "last words");
        let expected = if graceful {
            Disconnect::ByPeer {
                reason: Reason::Application(0x1234),
                message: "round over".into(),
            }
        } else {
            Disconnect::ByPeer {
                reason: Reason::Normal,
                message: Reason::Normal.describe().into(),
            }
        };
        assert_eq!(
            within(feed.recv_bytes()).await.unwrap_err(),
            RecvError::Closed(expected)
        );
    }
}

/// Proves: after shutdown, the server's own session handles report the shutdown reason, and
/// the client sees it as the peer's reason.
#[tokio::test]
async fn shutdown_is_reported_on_both_sides_of_a_session() {
    let (server, config) = common::server_and_config().await;
    let client = within(Client::connect(&config)).await.unwrap();
    let session = within(server.accept()).await.unwrap();
    within(server.shutdown(Reason::ServerShutdown, "patch day")).await;
    assert_eq!(
        within(session.closed()).await,
        Disconnect::Locally {
            reason: Reason::ServerShutdown,
            message: "patch day".into()
        }
    );
    assert_eq!(
        within(client.closed()).await,
        Disconnect::ByPeer {
            reason: Reason::ServerShutdown,
            message: "patch day".into()
        }
    );
}

/// Proves: dropping one half of a channel (a client that only receives on feed drops its feed
/// sender) changes nothing the peer can see: the session and both channels keep working.
#[tokio::test]
async fn dropping_one_half_of_a_channel_keeps_the_session() {
    let fixture = Fixture::start().await;
    let session = fixture.connect().await;
    let (handle, main, feed) = session.into_parts();
    let (feed_sender, _feed_receiver) = feed.split();
    drop(feed_sender);
    for i in 0..20u32 {
        main.send(&i).await.unwrap();
        assert_eq!(within(main.recv::<u32>()).await.unwrap(), i);
    }
    // The server's echo app still reads feed: no end of stream, no violation, no close.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), handle.closed())
            .await
            .is_err(),
        "the session stayed open"
    );
}

/// Proves: a session dropped while its peer is streaming to it ends on the peer as a normal
/// close, not as a protocol violation.
#[tokio::test]
async fn a_session_dropped_while_the_peer_streams_ends_normally_on_the_peer() {
    let (server, config) = common::server_and_config().await;
    let client = within(Client::connect(&config)).await.unwrap();
    let session = within(server.accept()).await.unwrap();
    let (handle, main, feed) = session.into_parts();
    let streamer = tokio::spawn(async move {
        let mut tick = 0u64;
        loop {
            if let Err(e) = feed.send(&tick).await {
                return e;
            }
            tick += 1;
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
    });
    let _: u64 = within(client.feed().recv()).await.unwrap();
    drop(client);
    let normal = Disconnect::ByPeer {
        reason: Reason::Normal,
        message: Reason::Normal.describe().into(),
    };
    assert_eq!(
        within(streamer).await.unwrap(),
        SendError::Closed(normal.clone())
    );
    assert_eq!(
        within(main.recv_bytes()).await.unwrap_err(),
        RecvError::Closed(normal.clone())
    );
    assert_eq!(within(handle.closed()).await, normal);
}

/// Proves: connecting again with the same configuration (which keeps the TLS session ticket of
/// the first connection) sends `CONN_INIT` in 0-RTT and the server accepts it; a fresh
/// configuration, or `zero_rtt` off, connects in 1-RTT. Each connection is a working session.
#[tokio::test]
async fn a_second_connect_with_the_same_configuration_goes_in_0rtt() {
    let (server, config) = common::server_and_config().await;
    let server = std::sync::Arc::new(server);
    let accepting = server.clone();
    tokio::spawn(async move {
        while let Some(session) = accepting.accept().await {
            tokio::spawn(async move {
                while let Ok(bytes) = session.main().recv_bytes().await {
                    let _ = session.main().send_bytes(&bytes).await;
                }
            });
        }
    });
    let mut first = within(Client::connect(&config)).await.unwrap();
    ping(&mut first).await;
    assert_eq!(first.handle().counters().connect_0rtt, 0, "no ticket yet");
    let first_id = first.player_id();
    first.close_gracefully(Reason::Normal, "done").await;

    let mut second = within(Client::connect(&config)).await.unwrap();
    ping(&mut second).await;
    assert_eq!(
        second.handle().counters().connect_0rtt,
        1,
        "CONN_INIT went in 0-RTT"
    );
    assert_ne!(second.player_id(), first_id);

    let mut without = config.clone();
    without.zero_rtt = false;
    let third = within(Client::connect(&without)).await.unwrap();
    assert_eq!(third.handle().counters().connect_0rtt, 0, "zero_rtt off");
}

/// One main round trip against a server that echoes main.
async fn ping(session: &mut quicfeed::Session) {
    session.main().send_bytes(b"ping").await.unwrap();
    assert_eq!(
        &within(session.main().recv_bytes()).await.unwrap()[..],
        b"ping"
    );
}
