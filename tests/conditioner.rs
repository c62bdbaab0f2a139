//! The network conditioner between a real client and server: it adds the latency it is told
//! to, loses and duplicates packets without breaking QUIC's reliability, blackholes a link for a
//! period, and rebinds its upstream port so the server sees a new client address.

mod common;

use std::time::{Duration, Instant};

use common::within;
use quicfeed::conditioner::{Conditions, Loss, Relay};
use quicfeed::{Client, ClientConfig, Server, ServerConfig, Session};

async fn pair(to_server: Conditions, to_client: Conditions) -> (Relay, Session, Session) {
    common::init_tracing();
    let (identity, trust) = common::identity();
    let server = Server::bind(ServerConfig::new("127.0.0.1:0".parse().unwrap(), identity))
        .await
        .unwrap();
    let relay = Relay::start_seeded(server.local_addr(), to_server, to_client, 1)
        .await
        .unwrap();
    let config = ClientConfig::new(relay.local_addr(), trust);
    let client = tokio::spawn(async move { Client::connect(&config).await.unwrap() });
    let server_side = within(server.accept()).await.unwrap();
    let client = within(client).await.unwrap();
    // The server task ends here; its sessions live on.
    std::mem::forget(server);
    (relay, client, server_side)
}

async fn round_trip(client: &mut Session, server: &mut Session, n: u32) -> Duration {
    let started = Instant::now();
    for i in 0..n {
        client.main().send(&i).await.unwrap();
        let got: u32 = within(server.main().recv()).await.unwrap();
        assert_eq!(got, i);
        server.main().send(&got).await.unwrap();
        assert_eq!(within(client.main().recv::<u32>()).await.unwrap(), i);
    }
    started.elapsed() / n
}

/// Proves: a 20 ms one-way latency each way shows up as a round trip of at least 40 ms, both
/// in application timing and in QUIC's RTT estimate.
#[tokio::test]
async fn latency_is_added_in_each_direction() {
    let one_way = Duration::from_millis(20);
    let (_relay, mut client, mut server) =
        pair(Conditions::latency(one_way), Conditions::latency(one_way)).await;
    let rtt = round_trip(&mut client, &mut server, 5).await;
    assert!(rtt >= one_way * 2, "{rtt:?}");
    assert!(rtt < one_way * 2 + Duration::from_millis(60), "{rtt:?}");
    assert!(
        client.rtt().unwrap() >= one_way * 2 - Duration::from_millis(2),
        "{:?}",
        client.rtt()
    );
}

/// Proves: random and bursty loss, duplication and reordering are applied, and the reliable
/// channels still deliver every message exactly once and in order.
#[tokio::test]
async fn loss_duplication_and_reordering_do_not_break_reliable_channels() {
    let rough = Conditions {
        latency: Duration::from_millis(2),
        jitter: Duration::from_millis(2),
        loss: Loss::Random(0.05),
        duplicate: 0.05,
        reorder: 0.05,
        ..Conditions::default()
    };
    let bursty = Conditions {
        loss: Loss::bursty(0.05, 3.0),
        ..rough.clone()
    };
    let (relay, client, server) = pair(rough, bursty).await;
    // About one packet per message, so every impairment gets a fair sample.
    let filler = vec![7u8; 1000];
    let (client_feed_tx, client_feed_rx) = {
        let (_, _, feed) = client.into_parts();
        feed.split()
    };
    let sender = tokio::spawn(async move {
        for i in 0..1000u32 {
            client_feed_tx.send(&(i, &filler)).await.unwrap();
        }
        client_feed_tx
    });
    let receiver = tokio::spawn(async move {
        for i in 0..1000u32 {
            let (got, _): (u32, Vec<u8>) = within(client_feed_rx.recv()).await.unwrap();
            assert_eq!(got, i);
        }
        client_feed_rx
    });
    for i in 0..1000u32 {
        within(server.feed().send(&(i, vec![9u8; 1000])))
            .await
            .unwrap();
        let (got, _): (u32, Vec<u8>) = within(server.feed().recv()).await.unwrap();
        assert_eq!(got, i);
    }
    let _keep_open = (
        within(sender).await.unwrap(),
        within(receiver).await.unwrap(),
    );
    let stats = relay.stats();
    for direction in [stats.to_server, stats.to_client] {
        assert!(direction.lost > 0, "{stats:?}");
        assert!(direction.duplicated > 0, "{stats:?}");
        assert!(direction.reordered > 0, "{stats:?}");
    }
}

/// Proves: a blackhole drops everything both ways for its duration; messages sent during it
/// arrive after it ends.
#[tokio::test]
async fn a_blackhole_drops_everything_then_the_link_recovers() {
    let (relay, mut client, mut server) = pair(Conditions::default(), Conditions::default()).await;
    round_trip(&mut client, &mut server, 1).await;
    let outage = Duration::from_millis(400);
    relay.blackhole(outage);
    let started = Instant::now();
    client.main().send("during the outage").await.unwrap();
    let got: String = within(server.main().recv()).await.unwrap();
    assert_eq!(got, "during the outage");
    assert!(started.elapsed() >= outage, "{:?}", started.elapsed());
    assert!(relay.stats().to_server.blackholed > 0);
}

/// Proves: after a rebind the server sees the client at the relay's new upstream address, and
/// the session carries on.
#[tokio::test]
async fn a_rebind_changes_the_address_the_server_sees() {
    let (relay, mut client, mut server) = pair(Conditions::default(), Conditions::default()).await;
    round_trip(&mut client, &mut server, 1).await;
    let before = server.remote_address().unwrap();
    assert_eq!(relay.upstream_addrs(), vec![before]);
    let after = relay.rebind().await.unwrap();
    assert_eq!(after.len(), 1);
    assert_ne!(after[0], before);
    round_trip(&mut client, &mut server, 3).await;
    assert_eq!(server.remote_address(), Some(after[0]));
    assert_eq!(relay.stats().rebinds, 1);
}

/// Proves: a bandwidth limit paces packets at that rate (100 packets of 1,000 bytes at
/// 200 kB/s take about half a second to get through), and a burst larger than the queue is
/// dropped at the tail.
#[tokio::test]
async fn a_bottleneck_paces_packets_and_drops_what_overflows_its_queue() {
    use tokio::net::UdpSocket;
    let sink = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let paced = Conditions {
        bandwidth: Some(200_000),
        queue_limit: Duration::from_secs(10),
        ..Conditions::default()
    };
    let relay = Relay::start(sink.local_addr().unwrap(), paced, Conditions::default())
        .await
        .unwrap();
    let source = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let started = Instant::now();
    for _ in 0..100 {
        source
            .send_to(&[7; 1000], relay.local_addr())
            .await
            .unwrap();
    }
    let mut buf = [0; 2048];
    for _ in 0..100 {
        within(sink.recv_from(&mut buf)).await.unwrap();
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(450), "{took:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");

    // A 100 ms queue holds 20 such packets: a burst of 100 loses most of them.
    relay.set_conditions(
        Conditions {
            bandwidth: Some(200_000),
            queue_limit: Duration::from_millis(100),
            ..Conditions::default()
        },
        Conditions::default(),
    );
    for _ in 0..100 {
        source
            .send_to(&[7; 1000], relay.local_addr())
            .await
            .unwrap();
    }
    let dropped = within(async {
        loop {
            let stats = relay.stats().to_server;
            if stats.delivered + stats.queue_dropped >= 200 {
                return stats.queue_dropped;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!((70..=85).contains(&dropped), "{dropped} dropped");
}
