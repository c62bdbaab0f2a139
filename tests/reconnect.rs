//! Reconnection over real loopback QUIC, mostly through the network conditioner: client
//! migrations and NAT rebindings keep the connection; outages shorter than the dead-path
//! timeout are ridden out; longer ones are resumed on a new connection with the same player,
//! in 0-RTT, with every message delivered exactly once and in order (or a reported gap);
//! resumes are refused when they must be, and a stale connection is superseded.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Fixture, RawServer, accept_declared, within};
use quicfeed::conditioner::{Conditions, Relay};
use quicfeed::protocol::{ChannelKind, Message, PlayerId, Token};
use quicfeed::{
    Channel, Client, ClientConfig, Disconnect, Reason, RecvError, Server, ServerConfig, Session,
    SessionEvent, TransportConfig,
};

/// Fast liveness for tests: a connection is declared dead after 600 ms of silence.
fn fast_transport() -> TransportConfig {
    let mut transport = TransportConfig::default();
    transport.keep_alive_interval = Duration::from_millis(100);
    transport.dead_path_timeout = Duration::from_millis(600);
    transport
}

struct Setup {
    server: Server,
    relay: Option<Relay>,
    client: Session,
    session: Session,
}

/// A server, optionally a relay in front of it, and one connected client.
async fn setup(
    through_relay: bool,
    configure_server: impl FnOnce(&mut ServerConfig),
    configure_client: impl FnOnce(&mut ClientConfig),
) -> Setup {
    common::init_tracing();
    let (identity, trust) = common::identity();
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), identity);
    config.transport = fast_transport();
    configure_server(&mut config);
    let server = Server::bind(config).await.unwrap();
    let relay = if through_relay {
        let perfect = Conditions::default();
        Some(
            Relay::start_seeded(server.local_addr(), perfect.clone(), perfect, 7)
                .await
                .unwrap(),
        )
    } else {
        None
    };
    let target = relay
        .as_ref()
        .map_or(server.local_addr(), Relay::local_addr);
    let mut client_config = ClientConfig::new(target, trust);
    client_config.transport = fast_transport();
    configure_client(&mut client_config);
    let client = within(Client::connect(&client_config)).await.unwrap();
    let session = within(server.accept()).await.unwrap();
    Setup {
        server,
        relay,
        client,
        session,
    }
}

/// Sends `0..` at a steady pace until told to stop, then a final `u32::MAX`; returns the count.
fn stream_numbers(
    channel: quicfeed::Sender,
    every: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<u32> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        let mut sent = 0u32;
        while !*stop.borrow() {
            ticker.tick().await;
            channel.send(&sent).await.unwrap();
            sent += 1;
        }
        channel.send(&u32::MAX).await.unwrap();
        sent
    })
}

/// Receives numbers until `u32::MAX`, asserting each is the next one: nothing lost, nothing
/// duplicated, nothing reordered. Returns the count.
fn expect_numbers(channel: quicfeed::Receiver) -> tokio::task::JoinHandle<u32> {
    tokio::spawn(async move {
        let mut next = 0u32;
        loop {
            let n: u32 = tokio::time::timeout(Duration::from_secs(20), channel.recv())
                .await
                .expect("a message in time")
                .unwrap_or_else(|e| panic!("{:?} after {next}", e));
            if n == u32::MAX {
                return next;
            }
            assert_eq!(n, next, "{:?}", channel.kind());
            next += 1;
        }
    })
}

/// Runs numbered streams both ways on both channels while `during` runs, then checks every
/// message arrived exactly once and in order. Returns the number of messages checked.
async fn both_ways_on_both_channels<F: std::future::Future>(
    client: Session,
    session: Session,
    every: Duration,
    during: F,
) -> (u32, quicfeed::SessionHandle, quicfeed::SessionHandle) {
    let (client_handle, client_main, client_feed) = client.into_parts();
    let (server_handle, server_main, server_feed) = session.into_parts();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let split = |c: Channel| c.split();
    let (cm_tx, cm_rx) = split(client_main);
    let (cf_tx, cf_rx) = split(client_feed);
    let (sm_tx, sm_rx) = split(server_main);
    let (sf_tx, sf_rx) = split(server_feed);
    let senders = [
        stream_numbers(cm_tx, every, stop.clone()),
        stream_numbers(cf_tx, every, stop.clone()),
        stream_numbers(sm_tx, every, stop.clone()),
        stream_numbers(sf_tx, every, stop.clone()),
    ];
    // Each receiver is paired with the sender on the other side of the same channel.
    let receivers = [
        expect_numbers(sm_rx),
        expect_numbers(sf_rx),
        expect_numbers(cm_rx),
        expect_numbers(cf_rx),
    ];
    during.await;
    stop_tx.send(true).unwrap();
    let mut total = 0;
    for (sender, receiver) in senders.into_iter().zip(receivers) {
        let sent = within(sender).await.unwrap();
        let received = tokio::time::timeout(Duration::from_secs(30), receiver)
            .await
            .expect("all messages in time")
            .unwrap();
        assert_eq!(sent, received, "every message exactly once");
        total += sent;
    }
    (total, client_handle, server_handle)
}

/// Waits for a server event matching `pick`.
async fn server_event<T>(
    events: &mut quicfeed::ServerEvents,
    mut pick: impl FnMut(&SessionEvent) -> Option<T>,
) -> T {
    within(async {
        loop {
            let event = events.next().await.expect("server running");
            if let Some(found) = pick(&event.event) {
                return found;
            }
        }
    })
    .await
}

/// Proves: 100 client migrations while both channels stream both ways lose, duplicate and
/// reorder nothing, and the server sees each new address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_migrations_while_streaming_lose_nothing() {
    let Setup {
        server,
        client,
        session,
        ..
    } = setup(false, |_| {}, |_| {}).await;
    let handle = client.handle().clone();
    let mut events = server.events();
    let migrate = async {
        for _ in 0..100 {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let new: SocketAddr = socket.local_addr().unwrap();
            handle.rebind(socket).await.unwrap();
            let seen = server_event(&mut events, |e| match e {
                SessionEvent::Migrated { to, .. } if *to == new => Some(*to),
                _ => None,
            })
            .await;
            assert_eq!(seen, new);
        }
    };
    let (checked, client, session) =
        both_ways_on_both_channels(client, session, Duration::from_millis(2), migrate).await;
    assert!(checked > 1000, "{checked} messages checked");
    assert_eq!(client.counters().migrations, 100);
    assert_eq!(session.counters().migrations, 100);
    assert_eq!(client.counters().resumes, 0, "migrated, never resumed");
    assert_eq!(
        session.remote_address(),
        Some(handle.local_address().unwrap())
    );
}

/// Proves: a NAT rebinding in the middle of the feed, towards a client that only receives,
/// keeps the feed flowing on the same connection.
#[tokio::test]
async fn a_nat_rebinding_mid_feed_keeps_a_receive_only_client_flowing() {
    let Setup {
        server,
        relay,
        client,
        session,
    } = setup(true, |_| {}, |_| {}).await;
    let relay = relay.unwrap();
    let mut events = server.events();
    let (_server_handle, _server_main, server_feed) = session.into_parts();
    let (feed_tx, _feed_rx) = server_feed.split();
    let (client_handle, _client_main, client_feed) = client.into_parts();
    let (_client_feed_tx, client_feed_rx) = client_feed.split();
    let ticks = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(10));
        for tick in 0..300u32 {
            ticker.tick().await;
            feed_tx.send(&tick).await.unwrap();
        }
    });
    for tick in 0..300u32 {
        if tick == 50 {
            let new = relay.rebind().await.unwrap();
            let seen = server_event(&mut events, |e| match e {
                SessionEvent::Migrated { to, .. } => Some(*to),
                _ => None,
            })
            .await;
            assert_eq!(vec![seen], new, "the server follows the new address");
        }
        let got: u32 = within(client_feed_rx.recv()).await.unwrap();
        assert_eq!(got, tick);
    }
    within(ticks).await.unwrap();
    assert_eq!(
        client_handle.counters().resumes,
        0,
        "the connection survived"
    );
    assert_eq!(client_handle.counters().connections_lost, 0);
}

/// Proves: a blackhole shorter than the dead-path timeout is ridden out by the same
/// connection, and what was sent during it arrives.
#[tokio::test]
async fn a_blackhole_shorter_than_the_dead_path_timeout_keeps_the_connection() {
    let Setup {
        relay,
        client,
        session,
        server: _server,
    } = setup(true, |_| {}, |_| {}).await;
    let relay = relay.unwrap();
    let outage = async {
        relay.blackhole(Duration::from_millis(300));
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let (_, client, session) =
        both_ways_on_both_channels(client, session, Duration::from_millis(5), outage).await;
    assert!(relay.stats().to_server.blackholed > 0);
    assert_eq!(client.counters().connections_lost, 0);
    assert_eq!(session.counters().resumes, 0);
}

/// Proves: a blackhole longer than the dead-path timeout makes the client resume on a new
/// connection, with the same player ID, and every message either side sent during
/// the outage arrives exactly once, in order.
#[tokio::test]
async fn a_longer_blackhole_resumes_the_same_session_and_loses_nothing() {
    let Setup {
        server,
        relay,
        client,
        session,
    } = setup(true, |_| {}, |_| {}).await;
    let relay = relay.unwrap();
    let player = client.player_id();
    let mut client_events = client.handle().events();
    let mut server_events = server.events();
    let outage = async {
        relay.blackhole(Duration::from_millis(1500));
        tokio::time::sleep(Duration::from_millis(2500)).await;
    };
    let (checked, client, session) =
        both_ways_on_both_channels(client, session, Duration::from_millis(5), outage).await;
    assert!(checked > 400, "{checked} messages checked");
    // The client saw the loss, then the resume.
    let lost = within(client_events.next()).await.unwrap();
    assert!(
        matches!(lost, SessionEvent::ConnectionLost { .. }),
        "{lost:?}"
    );
    let resumed = within(client_events.next()).await.unwrap();
    let SessionEvent::Resumed { outage, lost, .. } = resumed else {
        panic!("{resumed:?}")
    };
    assert!(outage >= Duration::from_millis(500), "{outage:?}");
    assert_eq!(lost, 0);
    server_event(&mut server_events, |e| {
        matches!(e, SessionEvent::Resumed { .. }).then_some(())
    })
    .await;
    assert_eq!(client.player_id(), player);
    assert_eq!(session.player_id(), player);
    assert_eq!(client.counters().resumes, 1);
    assert_eq!(server.counters().resumes, 1);
    assert_eq!(server.session_count(), 1, "still one session");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), server.accept())
            .await
            .is_err(),
        "a resume is not a new session"
    );
}

/// Proves: when an outage outlasts the replay buffer, the receiver is told how many messages
/// were lost (a gap), then gets every later message in order; nothing is lost silently.
#[tokio::test]
async fn an_overflowing_replay_buffer_is_reported_as_a_gap() {
    let Setup {
        server: _server,
        relay,
        client,
        session,
    } = setup(true, |s| s.transport.replay_buffer = 4096, |_| {}).await;
    let relay = relay.unwrap();
    relay.blackhole(Duration::from_millis(1500));
    // 500 x 100 bytes during the outage: far more than 4 KiB.
    for i in 0..500u32 {
        session.feed().send(&(i, vec![0u8; 96])).await.unwrap();
    }
    let mut received = Vec::new();
    let mut missed = 0;
    while received.last() != Some(&499) {
        match tokio::time::timeout(
            Duration::from_secs(20),
            client.feed().recv::<(u32, Vec<u8>)>(),
        )
        .await
        .expect("in time")
        {
            Ok((i, _)) => received.push(i),
            Err(RecvError::Gap { missed: n }) => {
                assert_eq!(missed, 0, "one gap");
                missed = n;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(missed > 0, "the overflow was reported");
    assert_eq!(
        received.len() as u64 + missed,
        500,
        "each message delivered or counted"
    );
    assert!(
        received.windows(2).all(|w| w[1] == w[0] + 1),
        "in order after the gap"
    );
    assert!(session.handle().counters().messages_lost > 0);
}

/// Proves: a client that comes back after the server's grace period is refused with
/// UNKNOWN_SESSION; it then ends the session and says so.
#[tokio::test]
async fn a_resume_after_the_grace_period_is_refused() {
    let Setup {
        server,
        relay,
        client,
        session,
    } = setup(
        true,
        |s| s.grace_period = Duration::from_millis(300),
        |_| {},
    )
    .await;
    let relay = relay.unwrap();
    let mut events = client.handle().events();
    relay.blackhole(Duration::from_millis(1500));
    let expired = within(session.closed()).await;
    assert!(
        matches!(
            expired,
            Disconnect::Locally {
                reason: Reason::SessionExpired,
                ..
            }
        ),
        "{expired}"
    );
    let ended = within(client.closed()).await;
    assert!(
        matches!(
            ended,
            Disconnect::ResumeFailed {
                reason: Reason::UnknownSession,
                ..
            }
        ),
        "{ended}"
    );
    let mut saw_failure = false;
    while let Some(event) = events.next().await {
        saw_failure |= matches!(
            event,
            SessionEvent::ResumeFailed {
                reason: Reason::UnknownSession,
                ..
            }
        );
    }
    assert!(saw_failure);
    assert_eq!(server.counters().sessions_expired, 1);
    assert_eq!(server.session_count(), 0, "the slot is free");
}

/// Proves: a shutdown ends a session that lost its connection and waits for a resume at
/// once, with the shutdown's reason, rather than at the end of its grace period; the shutdown
/// returns and the slot is free.
#[tokio::test]
async fn a_shutdown_ends_a_session_waiting_for_its_resume() {
    let Setup {
        server,
        relay,
        client,
        session,
    } = setup(
        true,
        // Far longer than the test's bound on every wait: only the shutdown can end it.
        |s| s.grace_period = Duration::from_secs(600),
        |_| {},
    )
    .await;
    let relay = relay.unwrap();
    let mut server_events = server.events();
    // Longer than the test: the client cannot come back.
    relay.blackhole(Duration::from_secs(600));
    server_event(&mut server_events, |e| {
        matches!(e, SessionEvent::ConnectionLost { .. }).then_some(())
    })
    .await;
    within(server.shutdown(Reason::ServerShutdown, "patch day")).await;
    assert_eq!(
        within(session.closed()).await,
        Disconnect::Locally {
            reason: Reason::ServerShutdown,
            message: "patch day".into()
        }
    );
    assert_eq!(server.session_count(), 0, "the slot is free");
    assert!(within(server.accept()).await.is_none());
    drop(client);
}

/// Proves: when the server cannot be reached, the client retries within its resume budget,
/// then closes both channels with a timeout reason.
#[tokio::test]
async fn an_unreachable_server_ends_the_session_after_the_resume_budget() {
    let Setup {
        server: _server,
        relay,
        client,
        ..
    } = setup(
        true,
        |_| {},
        |c| c.resume.budget = Duration::from_millis(1500),
    )
    .await;
    let relay = relay.unwrap();
    relay.blackhole(Duration::from_secs(60));
    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(10), client.main().recv_bytes())
        .await
        .expect("gave up in time")
        .unwrap_err();
    let RecvError::Closed(Disconnect::ResumeFailed { reason, .. }) = &err else {
        panic!("{err}")
    };
    assert_eq!(*reason, Reason::HandshakeTimeout);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "tried for the budget: {took:?}"
    );
    assert!(client.handle().counters().resume_failures >= 1);
    assert!(matches!(
        client.main().send(&1u8).await,
        Err(quicfeed::SendError::Closed(Disconnect::ResumeFailed { .. }))
    ));
}

/// Proves: a valid reconnection request supersedes a connection still open for the same
/// session, atomically; the replaced credential is refused as reused, a wrong one as
/// invalid, an unknown player as an unknown session.
#[tokio::test]
async fn a_resume_supersedes_a_stale_connection_and_credentials_are_single_use() {
    let fixture = Fixture::start().await;
    let mut events = fixture.server.events();
    let mut first = fixture.raw().await;
    let (player_id, ..) = first.handshake().await;
    let credential = first.credential.unwrap();

    let mut second = fixture.raw().await;
    let answer = second.resume(player_id, credential).await;
    let Some(Message::ConnOk {
        credential: next,
        main_next: 0,
        feed_next: 0,
        ..
    }) = answer
    else {
        panic!("{answer:?}")
    };
    assert_ne!(next, credential, "rotated");
    assert_eq!(first.close_reason().await.0, Reason::Superseded);
    server_event(&mut events, |e| {
        matches!(e, SessionEvent::Superseded).then_some(())
    })
    .await;
    assert_eq!(fixture.server.counters().superseded, 1);
    // The session carries on over the second connection: the echo app answers there.
    let data = Message::Data {
        seq: 0,
        payload: bytes::Bytes::from_static(b"still here"),
    };
    second.send(ChannelKind::Main, &data).await;
    assert_eq!(second.recv(ChannelKind::Main).await, Some(data));

    // Another player's session, to present its credential under the wrong ID.
    let mut other = fixture.raw().await;
    let (other_id, ..) = other.handshake().await;
    for (presented, player, reason) in [
        (credential, player_id, Reason::TokenReused),
        (Token([0x77; 16]), player_id, Reason::InvalidToken),
        (other.credential.unwrap(), player_id, Reason::InvalidToken),
        (next, other_id, Reason::InvalidToken),
        (next, PlayerId(player_id.0 + 100), Reason::UnknownSession),
    ] {
        let mut raw = fixture.raw().await;
        match raw.resume(player, presented).await {
            Some(Message::ConnFailed { reason: got, .. }) => assert_eq!(got, reason),
            other => panic!("expected CONN_FAILED({reason}), got {other:?}"),
        }
        assert_eq!(raw.close_reason().await.0, reason);
    }
    assert_eq!(fixture.server.counters().resumes_refused, 5);
    // Nothing refused changed the session: it is still carried by the second connection.
    let data = Message::Data {
        seq: 1,
        payload: bytes::Bytes::from_static(b"unchanged"),
    };
    second.send(ChannelKind::Main, &data).await;
    assert_eq!(second.recv(ChannelKind::Main).await, Some(data));
    assert_eq!(fixture.server.counters().superseded, 1);
}

/// Proves: when the feed stream alone fails, the client drops both channels and resumes the
/// session on a new connection with its player ID and credential.
#[tokio::test]
async fn a_failed_feed_stream_makes_the_client_resume_on_a_new_connection() {
    let (delivered, feed_next) = resume_after_a_feed_reset(0).await;
    assert_eq!((delivered, feed_next), (0, 0));
}

/// Proves: a reset that arrives right behind a burst of messages (so that the client's
/// read-ahead meets it) is not lost: the client still resumes, and asks for exactly the
/// messages it has not delivered (regression: a reset met by a read-ahead was dropped, and the
/// stream's next read looked like a graceful finish).
#[tokio::test]
async fn a_feed_reset_right_behind_a_burst_still_makes_the_client_resume() {
    let (delivered, feed_next) = resume_after_a_feed_reset(50).await;
    assert_eq!(
        feed_next, delivered,
        "the resume asks for what was not delivered"
    );
    assert!(delivered <= 50);
}

/// A scripted server sends `burst` feed messages then resets the feed stream; returns how many
/// the client delivered and the `feed_next` of its RESUME on the new connection.
async fn resume_after_a_feed_reset(burst: u64) -> (u64, u64) {
    let server = RawServer::start();
    let mut config = ClientConfig::new(server.addr(), server.trust.clone());
    config.transport = fast_transport();
    let credential = Token([0xc0; 16]);
    let serving = async {
        let (conn, mut main) = server.accept().await;
        assert!(matches!(main.recv().await, Some(Message::ConnInit { .. })));
        let token_a = Token([0xa0; 16]);
        main.send(&Message::ConnInitReply {
            player_id: PlayerId(9),
            token_a,
        })
        .await;
        let mut feed = accept_declared(&conn, ChannelKind::Feed).await;
        assert!(matches!(feed.recv().await, Some(Message::FeedInit { .. })));
        let token_b = Token([0xb0; 16]);
        feed.send(&Message::FeedInitReply { token_b }).await;
        assert!(matches!(main.recv().await, Some(Message::FinalAuth { .. })));
        main.send(&Message::ConnOk {
            max_main_frame: 65536,
            max_feed_frame: 65536,
            credential,
            main_next: 0,
            feed_next: 0,
        })
        .await;
        for seq in 0..burst {
            feed.send(&Message::Data {
                seq,
                payload: vec![seq as u8; 100].into(),
            })
            .await;
        }
        // Then the feed stream fails while the connection lives.
        feed.send.reset(0u32.into()).unwrap();
        // The client comes back on a new connection with a RESUME.
        let (conn2, mut main2) = server.accept().await;
        let resume = main2.recv().await.map(|message| (conn2, message));
        (conn, resume)
    };
    // The client reads its feed, as a game client does; that is where the failure shows.
    let client = async {
        let session = within(Client::connect(&config)).await.unwrap();
        let mut delivered = 0u64;
        while let Ok(Ok(bytes)) =
            tokio::time::timeout(Duration::from_secs(5), session.feed().recv_bytes()).await
        {
            assert_eq!(bytes.as_ref(), &[delivered as u8; 100][..], "in order");
            delivered += 1;
        }
        (session, delivered)
    };
    let ((client, delivered), (_first, resume)) = tokio::join!(client, serving);
    let Some((
        conn2,
        Message::Resume {
            player_id,
            proof,
            feed_next,
            ..
        },
    )) = resume
    else {
        panic!("expected a RESUME, got {resume:?}")
    };
    assert_eq!(player_id, PlayerId(9));
    assert_eq!(
        proof,
        common::resume_proof(&conn2, credential, player_id),
        "the credential's proof on the new connection"
    );
    assert_ne!(proof, credential, "not the credential itself");
    drop(client);
    (delivered, feed_next)
}

/// A scripted server's side of a full first handshake; returns the connection and its streams.
async fn raw_establish(
    server: &RawServer,
    credential: Token,
) -> (quinn::Connection, common::RawStream, common::RawStream) {
    let (conn, mut main) = server.accept().await;
    assert!(matches!(main.recv().await, Some(Message::ConnInit { .. })));
    let token_a = Token([0xa0; 16]);
    main.send(&Message::ConnInitReply {
        player_id: PlayerId(9),
        token_a,
    })
    .await;
    let mut feed = accept_declared(&conn, ChannelKind::Feed).await;
    assert!(matches!(feed.recv().await, Some(Message::FeedInit { .. })));
    feed.send(&Message::FeedInitReply {
        token_b: Token([0xb0; 16]),
    })
    .await;
    assert!(matches!(main.recv().await, Some(Message::FinalAuth { .. })));
    main.send(&Message::ConnOk {
        max_main_frame: 65536,
        max_feed_frame: 65536,
        credential,
        main_next: 0,
        feed_next: 0,
    })
    .await;
    (conn, main, feed)
}

/// Proves: when the server never answers the reconnection request, the client keeps retrying
/// (with backoff) until its budget runs out, then gives up and closes both channels.
#[tokio::test]
async fn a_server_that_never_answers_the_reconnection_is_given_up_within_the_budget() {
    let server = RawServer::start();
    let mut config = ClientConfig::new(server.addr(), server.trust.clone());
    config.transport = fast_transport();
    config.resume.budget = Duration::from_millis(2000);
    config.resume.attempt_timeout = Duration::from_millis(400);
    let credential = Token([0xc1; 16]);
    let connected = tokio::sync::Notify::new();
    let serving = async {
        let (conn, _main, _feed) = raw_establish(&server, credential).await;
        connected.notified().await;
        // The connection is lost (resumably) ...
        conn.close(Reason::DeadPath.code().into(), b"gone");
        // ... and every reconnection request is heard but never answered.
        let mut requests = 0;
        let mut held = Vec::new();
        while let Ok(Some(incoming)) =
            tokio::time::timeout(Duration::from_secs(3), server.endpoint.accept()).await
        {
            let Ok(conn) = incoming.await else { continue };
            let mut main = accept_declared(&conn, ChannelKind::Main).await;
            if let Some(Message::Resume {
                player_id, proof, ..
            }) = main.recv().await
            {
                assert_eq!(proof, common::resume_proof(&conn, credential, player_id));
                requests += 1;
            }
            held.push((conn, main));
        }
        requests
    };
    let client = async {
        let session = within(Client::connect(&config)).await.unwrap();
        connected.notify_one();
        let started = Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(10), session.main().recv_bytes())
            .await
            .expect("gave up in time")
            .unwrap_err();
        (err, started.elapsed(), session)
    };
    let ((err, took, session), requests) = tokio::join!(client, serving);
    assert!(
        matches!(
            err,
            RecvError::Closed(Disconnect::ResumeFailed {
                reason: Reason::HandshakeTimeout,
                ..
            })
        ),
        "{err}"
    );
    assert!(requests >= 2, "retried: {requests} requests");
    assert!(
        took < Duration::from_millis(2000 + 1500),
        "within the budget: {took:?}"
    );
    assert!(
        session.feed().send(&1u8).await.is_err(),
        "both channels closed"
    );
}

/// Proves: a genuine reconnection, recorded and sent again from another address by someone on
/// the path after it succeeded, changes nothing: the session stays on the client's connection.
#[tokio::test]
async fn a_replayed_reconnection_changes_nothing() {
    let Setup {
        server,
        relay,
        client,
        session,
    } = setup(true, |_| {}, |_| {}).await;
    let relay = relay.unwrap();
    let mut events = client.handle().events();
    relay.record(true);
    client.handle().reconnect().unwrap();
    within(async {
        loop {
            if let Some(SessionEvent::Resumed { .. }) = events.next().await {
                return;
            }
        }
    })
    .await;
    relay.record(false);
    let counters = server.counters();
    let replayed = relay.replay_recorded().await.unwrap();
    assert!(replayed > 0);
    // Nothing should happen; give the server ample time to (not) act on the replay.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = server.counters();
    assert_eq!(after.resumes, counters.resumes, "no second resume");
    assert_eq!(
        after.superseded, 0,
        "the genuine connection was not replaced"
    );
    assert!(client.handle().is_connected());
    client.main().send("still mine").await.unwrap();
    let got: String = within(session.main().recv()).await.unwrap();
    assert_eq!(got, "still mine");
    session.main().send("yes").await.unwrap();
    assert_eq!(within(client.main().recv::<String>()).await.unwrap(), "yes");
}

/// Proves: a `RESUME` proof is bound to the connection it was made on. The right proof
/// resumes; the same proof copied onto another connection, and the credential itself in place
/// of a proof, are refused with `INVALID_TOKEN`, and neither consumes the credential.
#[tokio::test]
async fn a_resume_proof_copied_to_another_connection_is_refused() {
    let fixture = Fixture::start().await;
    let mut owner = fixture.raw().await;
    let (player_id, _, _) = owner.handshake().await;
    let credential = owner.credential.unwrap();
    // A proof made on one connection (as a log or a memory dump of it would show) ...
    let mut first = fixture.raw().await;
    let seen = common::resume_proof(&first.conn, credential, player_id);
    assert_ne!(seen, credential);
    // ... is useless on another one,
    let mut thief = fixture.raw().await;
    match thief.resume_with_proof(player_id, seen).await {
        Some(Message::ConnFailed { reason, .. }) => assert_eq!(reason, Reason::InvalidToken),
        other => panic!("expected CONN_FAILED(INVALID_TOKEN), got {other:?}"),
    }
    // and so is the credential itself in place of a proof.
    let mut bearer = fixture.raw().await;
    match bearer.resume_with_proof(player_id, credential).await {
        Some(Message::ConnFailed { reason, .. }) => assert_eq!(reason, Reason::InvalidToken),
        other => panic!("expected CONN_FAILED(INVALID_TOKEN), got {other:?}"),
    }
    assert!(
        owner.conn.close_reason().is_none(),
        "the owner was not superseded"
    );
    assert_eq!(fixture.server.counters().superseded, 0);
    // On the connection it was made for, the proof resumes the session.
    assert!(
        matches!(
            first.resume_with_proof(player_id, seen).await,
            Some(Message::ConnOk { .. })
        ),
        "the right proof on its own connection"
    );
}

/// Proves: a resume flight sent in 0-RTT, captured on the path and replayed from another
/// address before anything else reaches the server, changes nothing. The server acts on a
/// `RESUME` only once its connection's TLS handshake has completed, which a replay never
/// does: the replayed handshake just times out, no credential is checked or consumed, the
/// live connection is not superseded, and the genuine client then resumes.
#[tokio::test]
async fn a_replayed_0rtt_resume_arriving_first_changes_nothing() {
    let fixture = Fixture::start_with(|c| c.handshake_timeout = Duration::from_millis(1500)).await;
    // The session's owner, a client written from the specification, keeps TLS tickets.
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(common::raw_client_config_early_data(&fixture.certificate));
    let mut owner = common::RawPeer::connect_with(endpoint.clone(), fixture.addr).await;
    let (player_id, _, _) = owner.handshake().await;
    let credential = owner.credential.unwrap();
    // A second connection, in 0-RTT on the first one's ticket, through a path that an
    // attacker records and that delivers nothing: the resume flight goes in 0-RTT (what an
    // older client did), with the credential in place of a proof.
    let perfect = Conditions::default();
    let relay = Relay::start(fixture.addr, perfect.clone(), perfect)
        .await
        .unwrap();
    relay.blackhole(Duration::from_secs(60));
    relay.record(true);
    let connecting = endpoint.connect(relay.local_addr(), "localhost").unwrap();
    let Ok((early, _)) = connecting.into_0rtt() else {
        panic!("no ticket for 0-RTT")
    };
    let resume = Message::Resume {
        player_id,
        proof: credential,
        max_main_frame: 65536,
        max_feed_frame: 65536,
        main_next: 0,
        feed_next: 0,
    };
    let (mut main, _main_recv) = early.open_bi().await.unwrap();
    main.write_all(&[0x00]).await.unwrap();
    main.write_all(&quicfeed::protocol::codec::encode_message(&resume).unwrap())
        .await
        .unwrap();
    let (mut feed, _feed_recv) = early.open_bi().await.unwrap();
    feed.write_all(&[0x01]).await.unwrap();
    // Wait until the first flight (Initial and 0-RTT) has gone out into the blackhole.
    within(async {
        while relay.stats().to_server.blackholed < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    relay.record(false);
    drop((main, feed, early));
    let before = fixture.server.counters();
    assert!(relay.replay_recorded().await.unwrap() >= 2);
    // The server takes the replayed attempt on, then gives up on it at its deadline.
    within(async {
        while fixture.server.counters().handshakes_in_progress == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        while fixture.server.counters().handshakes_in_progress > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let after = fixture.server.counters();
    assert_eq!(after.resumes, before.resumes, "no resume");
    assert_eq!(
        after.resumes_refused, before.resumes_refused,
        "not even checked"
    );
    assert_eq!(after.superseded, 0, "the live connection stays");
    // The owner's connection still works ...
    assert!(owner.conn.close_reason().is_none());
    let ping = Message::Data {
        seq: 0,
        payload: bytes::Bytes::from_static(b"still mine"),
    };
    owner.send(ChannelKind::Main, &ping).await;
    assert!(matches!(
        owner.recv(ChannelKind::Main).await,
        Some(Message::Data { seq: 0, .. })
    ));
    // ... and its genuine resume, on a new connection with the proof, succeeds.
    let mut genuine = common::RawPeer::connect_with(endpoint, fixture.addr).await;
    assert!(matches!(
        genuine.resume(player_id, credential).await,
        Some(Message::ConnOk { .. })
    ));
    assert_eq!(fixture.server.counters().resumes, before.resumes + 1);
}
