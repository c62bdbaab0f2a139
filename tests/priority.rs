//! Channel priorities over a bandwidth-limited link (the conditioner's bottleneck): a saturated
//! feed builds a backlog, and main's round trips do not wait behind it.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::within;
use quicfeed::conditioner::{Conditions, Relay};
use quicfeed::{Client, ClientConfig, Server, ServerConfig, Session, TransportConfig};

/// A 1.6 Mbit/s link with 5 ms of latency each way and a 50 ms router queue.
fn narrow_link() -> Conditions {
    Conditions {
        latency: Duration::from_millis(5),
        bandwidth: Some(200_000),
        queue_limit: Duration::from_millis(50),
        ..Conditions::default()
    }
}

struct Measured {
    main_rtt_p50: Duration,
    main_rtt_max: Duration,
    feed_delay_p50: Duration,
}

/// The client saturates the feed towards the server (1 KiB messages, as fast as they are
/// taken) while it pings on main; the server echoes main and reads feed. Returns main's round
/// trips and the feed's one-way delays (send to receipt) during saturation.
async fn saturate(transport: TransportConfig) -> Measured {
    common::init_tracing();
    let (identity, trust) = common::identity();
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), identity);
    config.transport = transport.clone();
    let server = Server::bind(config).await.unwrap();
    let relay = Relay::start_seeded(server.local_addr(), narrow_link(), narrow_link(), 3)
        .await
        .unwrap();
    let mut client_config = ClientConfig::new(relay.local_addr(), trust);
    client_config.transport = transport;
    let client = within(Client::connect(&client_config)).await.unwrap();
    let server_side: Session = within(server.accept()).await.unwrap();
    let epoch = Instant::now();

    // Server: echo main, read feed and record each message's one-way delay.
    let (_server_handle, server_main, server_feed) = server_side.into_parts();
    let (echo_tx, echo_rx) = server_main.split();
    tokio::spawn(async move {
        while let Ok(ping) = echo_rx.recv_bytes().await {
            if echo_tx.send_bytes(&ping).await.is_err() {
                break;
            }
        }
    });
    let (_, feed_rx) = server_feed.split();
    let delays = Arc::new(Mutex::new(Vec::new()));
    let reader = tokio::spawn({
        let delays = delays.clone();
        async move {
            while let Ok((sent_us, _padding)) = feed_rx.recv::<(u64, Vec<u8>)>().await {
                let now_us = epoch.elapsed().as_micros() as u64;
                let delay = Duration::from_micros(now_us.saturating_sub(sent_us));
                delays.lock().unwrap().push(delay);
            }
        }
    });

    // Client: saturate the feed ...
    let (client_handle, client_main, client_feed) = client.into_parts();
    let (feed_tx, _feed_rx) = client_feed.split();
    let flood = tokio::spawn(async move {
        let padding = vec![0x5a_u8; 1024];
        loop {
            let sent_us = epoch.elapsed().as_micros() as u64;
            if feed_tx.send(&(sent_us, &padding)).await.is_err() {
                break;
            }
        }
    });
    // ... let the backlog build, then ping on main.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut rtts = Vec::new();
    for i in 0..20u32 {
        let started = Instant::now();
        client_main.send(&i).await.unwrap();
        let echoed: u32 = within(client_main.recv()).await.unwrap();
        assert_eq!(echoed, i);
        rtts.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Through a full router queue the close may well be lost: stop both ends' tasks here.
    client_handle.close(quicfeed::Reason::Normal, "done");
    flood.abort();
    reader.abort();
    let mut delays = std::mem::take(&mut *delays.lock().unwrap());
    rtts.sort();
    delays.sort();
    // Only the feed messages received once the backlog had built count.
    let late: Vec<Duration> = delays.split_off(delays.len() / 2);
    Measured {
        main_rtt_p50: rtts[rtts.len() / 2],
        main_rtt_max: *rtts.last().unwrap(),
        feed_delay_p50: late[late.len() / 2],
    }
}

/// Proves: with the default priorities (main above feed), a request on main overtakes a
/// saturated feed's backlog: main's round trips stay a small fraction of the feed's one-way
/// delay, measured in the same run on the same link. (What main still waits for is the router
/// queue the feed keeps full, which no endpoint scheduling can skip.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_does_not_wait_behind_a_saturated_feed() {
    let m = saturate(TransportConfig::default()).await;
    eprintln!(
        "main rtt p50 {:?} max {:?}; feed delay p50 {:?}",
        m.main_rtt_p50, m.main_rtt_max, m.feed_delay_p50
    );
    assert!(
        m.feed_delay_p50 > Duration::from_millis(300),
        "the feed is backed up: {:?}",
        m.feed_delay_p50
    );
    assert!(
        m.main_rtt_p50 * 4 < m.feed_delay_p50,
        "main rtt p50 {:?} vs feed delay p50 {:?}",
        m.main_rtt_p50,
        m.feed_delay_p50
    );
}
