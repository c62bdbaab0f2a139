//! The feed datagram lane over real QUIC: newest-wins delivery under loss, duplication and
//! reordering (through the conditioner), the size limit, the maximum age, resumes, and a peer
//! sending malformed datagrams.

mod common;

use std::time::Duration;

use common::{RawPeer, within};
use quicfeed::conditioner::{Conditions, Loss, Relay};
use quicfeed::{
    Client, ClientConfig, Reason, RecvError, SendError, Server, ServerConfig, Session, SessionEvent,
};

/// A server, a relay in front of it with `conditions` both ways, and a connected pair of
/// sessions (client, server side).
async fn through_relay(
    conditions: Conditions,
    configure: impl Fn(&mut quicfeed::TransportConfig),
) -> (Server, Relay, Session, Session) {
    common::init_tracing();
    let (identity, trust) = common::identity();
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), identity);
    configure(&mut config.transport);
    let server = Server::bind(config).await.unwrap();
    let relay = Relay::start_seeded(server.local_addr(), conditions.clone(), conditions, 11)
        .await
        .unwrap();
    let mut client_config = ClientConfig::new(relay.local_addr(), trust);
    configure(&mut client_config.transport);
    let client = within(Client::connect(&client_config)).await.unwrap();
    let session = within(server.accept()).await.unwrap();
    (server, relay, client, session)
}

/// Sends `count` numbered snapshots on the client's lane, one every `every`, then a marker
/// (`u64::MAX`) until the server sees it; returns what the server's lane delivered, in order.
async fn send_and_collect(
    client: &Session,
    server_side: &Session,
    count: u64,
    every: Duration,
) -> Vec<u64> {
    let sender = client.lane();
    let receiver = server_side.lane();
    let collect = tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            let n: u64 = receiver.recv().await.unwrap();
            if n == u64::MAX {
                return got;
            }
            got.push(n);
        }
    });
    let mut tick = tokio::time::interval(every);
    for n in 0..count {
        tick.tick().await;
        sender.send(&n).unwrap();
    }
    // The marker may be lost too: repeat it until the collector has it.
    let marker = async {
        loop {
            sender.send(&u64::MAX).unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        got = collect => got.unwrap(),
        _ = marker => unreachable!(),
    }
}

/// Proves: under 10 % loss, duplication and reordering, the lane delivers only messages newer
/// than everything before them (strictly increasing), drops the rest (counted as stale), and
/// loses some without holding up the later ones.
#[tokio::test]
async fn the_newest_wins_under_loss_duplication_and_reordering() {
    let conditions = Conditions {
        latency: Duration::from_millis(10),
        loss: Loss::Random(0.10),
        duplicate: 0.10,
        reorder: 0.20,
        reorder_delay: Duration::from_millis(15),
        ..Conditions::default()
    };
    let (_server, _relay, client, server_side) = through_relay(conditions, |_| {}).await;
    let got = within(send_and_collect(
        &client,
        &server_side,
        400,
        Duration::from_millis(2),
    ))
    .await;

    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing: {got:?}"
    );
    let counters = server_side.handle().counters();
    assert!(got.len() > 200, "most arrive: {}", got.len());
    assert!(got.len() < 400, "some are lost or dropped: {}", got.len());
    assert!(
        counters.datagrams_stale > 0,
        "duplicates and late ones are dropped: {counters:?}"
    );
    assert_eq!(
        counters.datagrams_delivered,
        got.len() as u64 + 1,
        "and the marker"
    );
    assert!(
        *got.last().unwrap() >= 390,
        "the newest get through: {:?}",
        got.last()
    );
}

/// Proves: a message over one datagram is refused with its size and the limit, nothing is sent;
/// a message of exactly the limit arrives.
#[tokio::test]
async fn an_oversize_message_is_refused_and_one_at_the_limit_arrives() {
    let (_server, _relay, client, server_side) = through_relay(Conditions::default(), |_| {}).await;
    let lane = client.lane();
    let max = lane.max_payload_size().unwrap();
    assert!((1000..1500).contains(&max), "about one packet: {max}");
    match lane.send_bytes(&vec![7; max + 1]) {
        Err(SendError::TooLarge { len, max: limit }) => {
            assert_eq!(len, max + 1);
            assert!(limit <= max, "{limit} vs {max}");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(client.handle().counters().datagrams_sent, 0);
    lane.send_bytes(&vec![9; max]).unwrap();
    let got = within(server_side.lane().recv_bytes()).await.unwrap();
    assert_eq!(got.len(), max);
    assert!(got.iter().all(|b| *b == 9));
}

/// Proves: with a maximum age, messages delayed beyond it (a latency spike) are dropped and
/// counted, and delivery resumes once the delay is gone.
#[tokio::test]
async fn messages_older_than_the_maximum_age_are_dropped() {
    let (_server, relay, client, server_side) = through_relay(Conditions::default(), |t| {
        t.datagram_max_age = Some(Duration::from_millis(100));
    })
    .await;
    let sender = client.lane();
    let receiver = server_side.lane();
    // A baseline of fast deliveries.
    for n in 0..20u64 {
        sender.send(&n).unwrap();
        assert_eq!(within(receiver.recv::<u64>()).await.unwrap(), n);
    }
    // A 300 ms spike towards the server: what is sent meanwhile arrives 300 ms late.
    let slow = Conditions::latency(Duration::from_millis(300));
    relay.set_conditions(slow, Conditions::default());
    for n in 20..30u64 {
        sender.send(&n).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    relay.set_conditions(Conditions::default(), Conditions::default());
    // Let the delayed ones land, then send a fresh one: the receiver drops the ten late ones
    // on its way to it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    sender.send(&99u64).unwrap();
    assert_eq!(within(receiver.recv::<u64>()).await.unwrap(), 99);
    let counters = server_side.handle().counters();
    assert_eq!(counters.datagrams_too_old, 10, "{counters:?}");
    assert_eq!(counters.datagrams_delivered, 21, "{counters:?}");
}

/// Proves: the lane keeps working across a resume on a new connection, its numbering carries
/// on (nothing from the new connection is taken as stale), and `recv_latest` skips to the
/// newest of what is queued.
#[tokio::test]
async fn the_lane_carries_on_after_a_resume() {
    let (_server, _relay, client, server_side) = through_relay(Conditions::default(), |_| {}).await;
    let sender = client.lane();
    let receiver = server_side.lane();
    for n in 0..5u64 {
        sender.send(&n).unwrap();
        assert_eq!(within(receiver.recv::<u64>()).await.unwrap(), n);
    }
    let mut events = client.handle().events();
    client.handle().reconnect().unwrap();
    within(async {
        loop {
            if let Some(SessionEvent::Resumed { .. }) = events.next().await {
                return;
            }
        }
    })
    .await;
    for n in 5..10u64 {
        sender.send(&n).unwrap();
    }
    // All five are queued long before this (loopback).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let latest: u64 = within(receiver.recv_latest()).await.unwrap();
    assert_eq!(latest, 9, "skips to the newest queued");
    assert_eq!(server_side.handle().counters().datagrams_stale, 0);
    assert_eq!(client.handle().counters().resumes, 1);
}

/// Proves: a malformed datagram (an unknown lane) from a peer closes its session with
/// `UNKNOWN_MESSAGE`, reported to the application reading the lane and to the peer.
#[tokio::test]
async fn a_datagram_on_an_unknown_lane_closes_the_session() {
    common::init_tracing();
    let (identity, _) = common::identity();
    let certificate = identity.certificate().clone();
    let server = Server::bind(ServerConfig::new("127.0.0.1:0".parse().unwrap(), identity))
        .await
        .unwrap();
    let mut peer = RawPeer::connect(server.local_addr(), &certificate).await;
    peer.handshake().await;
    let session = within(server.accept()).await.unwrap();
    let lane = session.lane();
    peer.conn
        .send_datagram(bytes::Bytes::from_static(&[0x07, 0x00, 0x00]))
        .unwrap();
    match within(lane.recv_bytes()).await {
        Err(RecvError::Violation { reason, .. }) => assert_eq!(reason, Reason::UnknownMessage),
        other => panic!("expected a violation, got {other:?}"),
    }
    assert_eq!(peer.close_reason().await.0, Reason::UnknownMessage);
}

/// Sends 1,000-byte lane messages from the client at 200 a second for `seconds` through a
/// 50 kB/s bottleneck (four times less than offered), with the client's lane queue set to
/// `queue`; returns the client's counters and the one-way delay of every delivered message.
async fn through_a_bottleneck(
    queue: usize,
    seconds: u64,
) -> (quicfeed::SessionCounters, Vec<Duration>) {
    let conditions = Conditions {
        latency: Duration::from_millis(10),
        bandwidth: Some(50_000),
        queue_limit: Duration::from_millis(100),
        ..Conditions::default()
    };
    let (_server, _relay, client, server_side) = through_relay(conditions, |t| {
        t.datagram_send_queue = queue;
    })
    .await;
    let epoch = std::time::Instant::now();
    let sender = client.lane();
    let receiver = server_side.lane();
    let delays = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let collect = tokio::spawn({
        let delays = delays.clone();
        async move {
            while let Ok(bytes) = receiver.recv_bytes().await {
                let sent_us = u64::from_le_bytes(bytes[..8].try_into().unwrap());
                let now_us = epoch.elapsed().as_micros() as u64;
                let delay = Duration::from_micros(now_us.saturating_sub(sent_us));
                delays.lock().unwrap().push(delay);
            }
        }
    });
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    for _ in 0..seconds * 200 {
        tick.tick().await;
        let mut message = vec![0u8; 1000];
        let sent_us = epoch.elapsed().as_micros() as u64;
        message[..8].copy_from_slice(&sent_us.to_le_bytes());
        sender.send_bytes(&message).unwrap();
    }
    // What is still on its way lands within the bottleneck's queue and a round trip or two.
    tokio::time::sleep(Duration::from_secs(2)).await;
    collect.abort();
    let counters = client.handle().counters();
    let delays = delays.lock().unwrap().clone();
    (counters, delays)
}

/// Proves: on a path that cannot carry what the lane offers, lane messages are dropped at the
/// sender (superseded by newer ones) instead of queueing behind congestion control, so what is
/// delivered stays fresh: no delivered message is later than the bottleneck's own queue and a
/// few round trips. The control, a queue that keeps everything, shows the delay that drop,
/// don't delay avoids: there messages wait for seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_congested_path_drops_lane_messages_instead_of_delaying_them() {
    let (counters, delays) = through_a_bottleneck(1, 3).await;
    let worst = delays.iter().max().copied().unwrap_or_default();
    assert!(
        counters.datagrams_superseded > 100,
        "the lane offered four times what the path carries: {counters:?}"
    );
    assert!(delays.len() > 100, "{} delivered", delays.len());
    assert!(
        worst < Duration::from_millis(600),
        "a delivered message was {worst:?} late"
    );

    let (counters, delays) = through_a_bottleneck(100_000, 3).await;
    let worst = delays.iter().max().copied().unwrap_or_default();
    assert_eq!(counters.datagrams_superseded, 0, "{counters:?}");
    assert!(
        worst > Duration::from_millis(1200),
        "keeping every message, the worst delay should grow past a second: {worst:?}"
    );
}

/// The smallest congestion window the server's session reported while it sent a 200-byte lane
/// message and feed message every 5 ms for two seconds through 10 % random loss, with
/// `min_congestion_window` set to `floor`.
async fn smallest_window_under_loss(floor: u64) -> u64 {
    let conditions = Conditions {
        latency: Duration::from_millis(5),
        loss: Loss::Random(0.10),
        ..Conditions::default()
    };
    let (_server, _relay, _client, server_side) = through_relay(conditions, |t| {
        t.min_congestion_window = floor;
    })
    .await;
    let lane = server_side.lane();
    let feed = server_side.feed();
    let mut smallest = u64::MAX;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    for _ in 0..400 {
        tick.tick().await;
        lane.send_bytes(&[7; 200]).unwrap();
        feed.send_bytes(&[7; 200]).await.unwrap();
        let window = server_side.handle().stats().congestion_window;
        if window > 0 {
            smallest = smallest.min(window);
        }
    }
    smallest
}

/// Proves: congestion control keeps the window at its floor however many packets are lost
/// (the game's flow is application-limited, so Cubic alone would stay near two packets after
/// the losses, which the control run shows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_congestion_window_never_falls_below_its_floor() {
    let floor = quicfeed::TransportConfig::default().min_congestion_window;
    assert_eq!(floor, 14_720);
    let floored = smallest_window_under_loss(floor).await;
    assert!(floored >= floor, "the window fell to {floored} bytes");
    let unfloored = smallest_window_under_loss(0).await;
    assert!(
        unfloored < floor,
        "without the floor, 10 % loss should shrink the window below {floor}: {unfloored}"
    );
}
