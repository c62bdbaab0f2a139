//! Sessions that never stall, over real loopback QUIC through the network conditioner:
//! two-way saturation, channels one application never reads, replays larger than the peer's
//! flow-control window, graceful closes that deliver their tail (or end within the linger), and
//! outages longer than the replay buffer covers.

mod common;

use std::time::{Duration, Instant};

use common::within;
use quicfeed::conditioner::{Conditions, Loss, Relay};
use quicfeed::{
    Client, ClientConfig, Disconnect, Reason, RecvError, SendError, Server, ServerConfig, Session,
    SessionEvent, TransportConfig,
};

/// Liveness compressed for tests: a path is dead after 600 ms of silence.
fn fast() -> TransportConfig {
    let mut transport = TransportConfig::default();
    transport.keep_alive_interval = Duration::from_millis(100);
    transport.dead_path_timeout = Duration::from_millis(600);
    transport
}

/// A server behind a relay with `to_server` and `to_client` conditions, and one client; both
/// sides' transports shaped by `transport`.
async fn through_relay(
    to_server: Conditions,
    to_client: Conditions,
    transport: impl Fn(&mut TransportConfig),
) -> (Relay, Session, Session, Server) {
    common::init_tracing();
    let (identity, trust) = common::identity();
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), identity);
    transport(&mut config.transport);
    let server = Server::bind(config).await.unwrap();
    let relay = Relay::start_seeded(server.local_addr(), to_server, to_client, 11)
        .await
        .unwrap();
    let mut client_config = ClientConfig::new(relay.local_addr(), trust);
    transport(&mut client_config.transport);
    let client = within(Client::connect(&client_config)).await.unwrap();
    let session = within(server.accept()).await.unwrap();
    (relay, client, session, server)
}

/// Receives `(n, payload)` messages until `(u32::MAX, _)`, asserting each `n` is the next one
/// (after a gap, the next one after the messages it reports lost). Returns (messages received,
/// messages reported lost).
fn expect_in_order(
    rx: quicfeed::Receiver,
    per_message: Duration,
) -> tokio::task::JoinHandle<(u32, u64)> {
    tokio::spawn(async move {
        let (mut next, mut lost) = (0u32, 0u64);
        loop {
            match tokio::time::timeout(per_message, rx.recv::<(u32, Vec<u8>)>()).await {
                Ok(Ok((u32::MAX, _))) => return (next, lost),
                Ok(Ok((n, _))) => {
                    assert_eq!(n, next, "{} in order, exactly once", rx.kind());
                    next += 1;
                }
                Ok(Err(RecvError::Gap { missed })) => {
                    lost += missed;
                    next += u32::try_from(missed).unwrap();
                }
                Ok(Err(e)) => panic!("{} after {next}: {e}", rx.kind()),
                Err(_) => panic!("{}: nothing for {per_message:?} after {next}", rx.kind()),
            }
        }
    })
}

/// Proves: both sides sending unpaced 32 KiB messages on main and feed at once, through a link
/// that loses, duplicates and reorders packets, deliver every message exactly once and in
/// order, both ways, on both channels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_way_saturation_through_a_lossy_link_delivers_everything() {
    const N: u32 = 60;
    let rough = Conditions {
        latency: Duration::from_millis(2),
        jitter: Duration::from_millis(1),
        loss: Loss::Random(0.02),
        duplicate: 0.02,
        reorder: 0.02,
        ..Conditions::default()
    };
    let (relay, client, session, _server) = through_relay(rough.clone(), rough, |_| {}).await;
    let (_ch, client_main, client_feed) = client.into_parts();
    let (_sh, server_main, server_feed) = session.into_parts();
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for (ours, theirs) in [(client_main, server_main), (client_feed, server_feed)] {
        let (our_tx, our_rx) = ours.split();
        let (their_tx, their_rx) = theirs.split();
        for tx in [our_tx, their_tx] {
            senders.push(tokio::spawn(async move {
                let body = vec![0x5a; 32 * 1024];
                for i in 0..N {
                    tx.send(&(i, &body)).await.unwrap();
                }
                tx.send(&(u32::MAX, Vec::<u8>::new())).await.unwrap();
                tx
            }));
        }
        receivers.push(expect_in_order(their_rx, Duration::from_secs(20)));
        receivers.push(expect_in_order(our_rx, Duration::from_secs(20)));
    }
    let mut keep = Vec::new();
    for sender in senders {
        keep.push(
            tokio::time::timeout(Duration::from_secs(60), sender)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    for receiver in receivers {
        let (received, lost) = receiver.await.unwrap();
        assert_eq!((received, lost), (N, 0));
    }
    let stats = relay.stats();
    assert!(
        stats.to_server.lost > 0 && stats.to_client.lost > 0,
        "{stats:?}"
    );
}

/// Proves: while the client's application never reads feed and the server only sends on it,
/// the client still takes the messages in and acknowledges them (the server's replay buffer
/// holds only what is in flight, far below its capacity), the server is held back at its send
/// buffer (nothing blocks elsewhere: main keeps answering), dead-path detection still works
/// (an outage is resumed), and every message accepted is delivered once the client reads.
#[tokio::test]
async fn a_channel_nobody_reads_is_still_acknowledged_and_the_session_stays_alive() {
    let shape = |t: &mut TransportConfig| {
        *t = fast();
        t.stream_receive_window = 16 * 1024;
        t.receive_buffer = 8 * 1024;
        t.send_buffer = 8 * 1024;
        t.replay_buffer = 512 * 1024;
    };
    let (relay, client, session, _server) =
        through_relay(Conditions::default(), Conditions::default(), shape).await;
    let mut accepted = 0u32;
    let body = vec![1u8; 1000];
    let started = Instant::now();
    let mut was_blocked = false;
    let mut max_unacknowledged = 0;
    while started.elapsed() < Duration::from_secs(2) {
        match session.feed().try_send(&(accepted, &body)) {
            Ok(()) => accepted += 1,
            Err(SendError::Blocked) => {
                was_blocked = true;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("{e}"),
        }
        max_unacknowledged = max_unacknowledged.max(session.handle().buffers().feed.unacknowledged);
    }
    assert!(was_blocked, "the server was held back");
    // In flight at most: the client's 8 KiB queue is acknowledged; its 16 KiB stream window
    // and the server's 8 KiB send buffer are not yet.
    assert!(
        max_unacknowledged < 64 * 1024,
        "acknowledged without being read: at most {max_unacknowledged} bytes kept"
    );
    // Main still answers.
    session.main().send("ping").await.unwrap();
    assert_eq!(
        within(client.main().recv::<String>()).await.unwrap(),
        "ping"
    );
    // Dead-path detection still works: an outage is noticed and resumed.
    let mut events = client.handle().events();
    relay.blackhole(Duration::from_millis(1200));
    within(async { while !matches!(events.next().await, Some(SessionEvent::Resumed { .. })) {} })
        .await;
    // Everything accepted arrives, in order, once the client reads.
    session
        .feed()
        .send(&(u32::MAX, Vec::<u8>::new()))
        .await
        .unwrap();
    let (_, _, feed) = client.into_parts();
    let (_tx, rx) = feed.split();
    let (received, lost) = within(expect_in_order(rx, Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!((received, lost), (accepted, 0));
}

/// Proves: when both sides send on a channel that one application never reads, that side's
/// peer is held back on the ignored direction, while the other direction keeps flowing and its
/// acknowledgements still arrive (by datagram, past the unread stream data).
#[tokio::test]
async fn an_ignored_direction_holds_back_only_itself() {
    let shape = |t: &mut TransportConfig| {
        t.stream_receive_window = 16 * 1024;
        t.receive_buffer = 8 * 1024;
        t.send_buffer = 8 * 1024;
        t.replay_buffer = 512 * 1024;
    };
    let (_relay, client, session, _server) =
        through_relay(Conditions::default(), Conditions::default(), shape).await;
    // The client's application never reads feed; it only sends on it.
    let (client_handle, _client_main, client_feed) = client.into_parts();
    let (client_tx, _ignored) = client_feed.split();
    let client_sends = tokio::spawn(async move {
        let body = vec![2u8; 1000];
        for i in 0..1000u32 {
            client_tx.send(&(i, &body)).await.unwrap();
        }
        client_tx.send(&(u32::MAX, Vec::<u8>::new())).await.unwrap();
        client_tx
    });
    let mut server_sent = 0u32;
    let mut server_blocked = false;
    let mut received = 0u32;
    let body = vec![3u8; 1000];
    loop {
        match session.feed().try_send(&(server_sent, &body)) {
            Ok(()) => server_sent += 1,
            Err(SendError::Blocked) => server_blocked = true,
            Err(e) => panic!("{e}"),
        }
        match tokio::time::timeout(
            Duration::from_millis(2),
            session.feed().recv::<(u32, Vec<u8>)>(),
        )
        .await
        {
            Ok(Ok((u32::MAX, _))) => break,
            Ok(Ok((n, _))) => {
                assert_eq!(n, received);
                received += 1;
            }
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => {}
        }
    }
    assert_eq!(received, 1000, "the other direction kept flowing");
    assert!(server_blocked, "the ignored direction was held back");
    assert!(server_sent < 200, "{server_sent}");
    let _tx = within(client_sends).await.unwrap();
    // The client's messages were acknowledged although its own feed is never read.
    within(async {
        while client_handle.buffers().feed.unacknowledged > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Proves: a resume where each side's replay is many times the peer's flow-control window
/// completes: both replays are written as the windows open, while both sides read, and every
/// message arrives once, in order.
#[tokio::test]
async fn a_resume_with_replays_larger_than_the_window_completes() {
    let shape = |t: &mut TransportConfig| {
        *t = fast();
        t.stream_receive_window = 16 * 1024;
        t.receive_window = 32 * 1024;
        t.receive_buffer = 8 * 1024;
        t.replay_buffer = 512 * 1024;
        t.send_buffer = 256 * 1024;
    };
    let (relay, client, session, _server) =
        through_relay(Conditions::default(), Conditions::default(), shape).await;
    let (client_handle, _cm, client_feed) = client.into_parts();
    let (server_handle, _sm, server_feed) = session.into_parts();
    let (client_tx, client_rx) = client_feed.split();
    let (server_tx, server_rx) = server_feed.split();
    let mut events = client_handle.events();
    relay.blackhole(Duration::from_millis(1500));
    // 150 KiB each way while the path is dead: about ten windows.
    let body = vec![4u8; 1024];
    for i in 0..150u32 {
        client_tx.send(&(i, &body)).await.unwrap();
        server_tx.send(&(i, &body)).await.unwrap();
    }
    client_tx.send(&(u32::MAX, Vec::<u8>::new())).await.unwrap();
    server_tx.send(&(u32::MAX, Vec::<u8>::new())).await.unwrap();
    let at_server = expect_in_order(server_rx, Duration::from_secs(15));
    let at_client = expect_in_order(client_rx, Duration::from_secs(15));
    within(async { while !matches!(events.next().await, Some(SessionEvent::Resumed { .. })) {} })
        .await;
    assert_eq!(within(at_server).await.unwrap(), (150, 0));
    assert_eq!(within(at_client).await.unwrap(), (150, 0));
    for handle in [&client_handle, &server_handle] {
        assert!(
            handle.counters().messages_replayed > 16,
            "replayed {}",
            handle.counters().messages_replayed
        );
    }
}

/// Proves: `close_gracefully` while a send is blocked on a peer that stopped reading returns
/// within the linger, the blocked send fails with `Closed`, and the peer learns of the close.
#[tokio::test]
async fn close_gracefully_returns_within_the_linger_while_a_send_is_blocked() {
    let shape = |t: &mut TransportConfig| {
        t.stream_receive_window = 16 * 1024;
        t.receive_buffer = 8 * 1024;
        t.send_buffer = 8 * 1024;
    };
    let (_relay, client, session, _server) =
        through_relay(Conditions::default(), Conditions::default(), shape).await;
    let (handle, _main, feed) = session.into_parts();
    let (tx, _rx) = feed.split();
    // The client never reads: the sender soon waits for room.
    let sender = tokio::spawn(async move {
        let body = vec![5u8; 1000];
        loop {
            if let Err(e) = tx.send(&body).await {
                return e;
            }
        }
    });
    within(async {
        while handle.buffers().feed.unsent < 4 * 1024 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let started = Instant::now();
    handle.close_gracefully(Reason::Normal, "done").await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "returned after {took:?}");
    assert!(matches!(
        within(sender).await.unwrap(),
        SendError::Closed(_)
    ));
    assert!(matches!(
        within(client.closed()).await,
        Disconnect::ByPeer {
            reason: Reason::Normal,
            ..
        }
    ));
}

/// Proves: 2,000 messages sent and then `close_gracefully` all arrive before the receiver
/// reports the close, on a link with latency, either way round.
#[tokio::test]
async fn a_graceful_close_delivers_all_2000_messages_before_the_close() {
    for server_closes in [true, false] {
        let latency = Conditions::latency(Duration::from_millis(5));
        let (_relay, client, session, _server) =
            through_relay(latency.clone(), latency, |_| {}).await;
        let (closer, reader) = if server_closes {
            (session, client)
        } else {
            (client, session)
        };
        let (closer_handle, _closer_main, closer_feed) = closer.into_parts();
        let (tx, _closer_rx) = closer_feed.split();
        let (_reader_handle, _reader_main, reader_feed) = reader.into_parts();
        let (_reader_tx, rx) = reader_feed.split();
        // The reader reads as messages come; the close may reach its connection before the
        // reader has read them all.
        let reading = tokio::spawn(async move {
            let mut next = 0u32;
            loop {
                match within(rx.recv::<(u32, Vec<u8>)>()).await {
                    Ok((n, _)) => {
                        assert_eq!(n, next);
                        next += 1;
                    }
                    Err(RecvError::Closed(why)) => return (next, why),
                    Err(e) => panic!("{e}"),
                }
            }
        });
        let body = vec![6u8; 1000];
        for i in 0..2000u32 {
            tx.send(&(i, &body)).await.unwrap();
        }
        closer_handle.close_gracefully(Reason::Normal, "bye").await;
        let (next, why) = within(reading).await.unwrap();
        assert_eq!(next, 2000, "server closes: {server_closes}");
        assert_eq!(
            why,
            Disconnect::ByPeer {
                reason: Reason::Normal,
                message: "bye".into()
            }
        );
    }
}

/// Proves: both sides streaming 1 KB feed messages at 500 per second through a 3.5 s
/// blackhole: the client resumes, and each side receives every message exactly once and in
/// order, except those a `Gap` reports lost (the outage outlasts the 128 KiB replay buffer),
/// which are exactly the ones missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_blackhole_under_two_way_load_resumes_with_exact_gaps() {
    let (relay, client, session, _server) =
        through_relay(Conditions::default(), Conditions::default(), |_| {}).await;
    let (client_handle, _cm, client_feed) = client.into_parts();
    let (_sh, _sm, server_feed) = session.into_parts();
    let (client_tx, client_rx) = client_feed.split();
    let (server_tx, server_rx) = server_feed.split();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let stream = |tx: quicfeed::Sender, stop: tokio::sync::watch::Receiver<bool>| {
        tokio::spawn(async move {
            let body = vec![7u8; 1000];
            let mut ticker = tokio::time::interval(Duration::from_millis(2));
            let mut sent = 0u32;
            while !*stop.borrow() {
                ticker.tick().await;
                tx.send(&(sent, &body)).await.unwrap();
                sent += 1;
            }
            tx.send(&(u32::MAX, Vec::<u8>::new())).await.unwrap();
            (sent, tx)
        })
    };
    let senders = [stream(client_tx, stop.clone()), stream(server_tx, stop)];
    let receivers = [
        expect_in_order(server_rx, Duration::from_secs(20)),
        expect_in_order(client_rx, Duration::from_secs(20)),
    ];
    let mut events = client_handle.events();
    tokio::time::sleep(Duration::from_millis(500)).await;
    relay.blackhole(Duration::from_millis(3500));
    within(async {
        loop {
            if let Some(SessionEvent::Resumed { .. }) = events.next().await {
                return;
            }
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_tx.send(true).unwrap();
    let mut lost_total = 0;
    for (sender, receiver) in senders.into_iter().zip(receivers) {
        let (sent, _tx) = within(sender).await.unwrap();
        let (received, lost) = tokio::time::timeout(Duration::from_secs(30), receiver)
            .await
            .expect("everything in time")
            .unwrap();
        assert_eq!(received, sent, "every message accounted for");
        lost_total += lost;
    }
    assert!(
        lost_total > 0,
        "a 3.5 s outage at 500 KB/s outlasts the replay buffer"
    );
    assert_eq!(client_handle.counters().resumes, 1);
}

/// Proves: a bulk transfer (32 MiB as 32 KiB messages, one way, as fast as flow control
/// allows, with the default windows) completes: every message arrives, in order, the last one
/// included. (A regression test: a read-ahead once left the last whole frame of a burst in the
/// read buffer, waiting for bytes that never came.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_transfer_at_full_speed_completes() {
    const CHUNK: usize = 32 * 1024;
    const COUNT: u32 = 1024;
    let (server, config) = common::server_and_config().await;
    let client = within(Client::connect(&config)).await.unwrap();
    let side = within(server.accept()).await.unwrap();
    let (_handle, _main, feed) = client.into_parts();
    let (_tx, rx) = feed.split();
    let reader = tokio::spawn(async move {
        for i in 0..COUNT {
            let payload = within(rx.recv_bytes()).await.unwrap();
            assert_eq!(payload.len(), CHUNK);
            assert_eq!(u32::from_be_bytes(payload[..4].try_into().unwrap()), i);
        }
        rx
    });
    let mut payload = vec![7u8; CHUNK];
    for i in 0..COUNT {
        payload[..4].copy_from_slice(&i.to_be_bytes());
        within(side.feed().send_bytes(&payload)).await.unwrap();
    }
    let _rx = within(reader).await.unwrap();
}
