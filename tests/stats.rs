//! Connection statistics through the conditioner: they follow the link (RTT with its latency,
//! loss rate with induced loss), count throughput, aggregate server-wide, and are logged
//! periodically when asked.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::within;
use quicfeed::conditioner::{Conditions, Loss, Relay};
use quicfeed::{Client, ClientConfig, Server, ServerConfig, Session};
use tracing_subscriber::layer::{Context, SubscriberExt};

/// Counts `tracing` events with target `quicfeed::stats`.
struct CountStats(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountStats {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() == "quicfeed::stats" {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Streams up to 200 messages a second on the client's feed for `how_long`; the server reads
/// them. Returns the rate actually sent (a loaded machine sends fewer), in messages a second.
async fn stream_for(client: &mut Session, server_side: &mut Session, how_long: Duration) -> f64 {
    let padding = vec![1u8; 200];
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let start = tokio::time::Instant::now();
    let end = start + how_long;
    let mut sent = 0u32;
    while tokio::time::Instant::now() < end {
        tick.tick().await;
        client.feed().send(&(sent, &padding)).await.unwrap();
        sent += 1;
        // Keep the server's receiver drained (it acknowledges as it reads).
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::ZERO, server_side.feed().recv::<(u32, Vec<u8>)>()).await
        {
        }
    }
    f64::from(sent) / start.elapsed().as_secs_f64()
}

/// Proves: on a 40 ms RTT link the RTT figures sit at or above 40 ms and the loss rate near
/// zero; with 5 % random loss added the loss rate rises to match; throughput and message rates
/// count the stream (what the client sent, up to 200 messages/s); the server aggregates its session; and a stats log
/// interval emits `quicfeed::stats` events on both sides.
#[tokio::test]
async fn statistics_follow_the_link() {
    let logged = Arc::new(AtomicUsize::new(0));
    let subscriber = tracing_subscriber::registry().with(CountStats(logged.clone()));
    let _guard = tracing::subscriber::set_default(subscriber);

    let (identity, trust) = common::identity();
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), identity);
    config.transport.stats_log_interval = Some(Duration::from_millis(200));
    let server = Server::bind(config).await.unwrap();
    let link = Conditions::latency(Duration::from_millis(20));
    let relay = Relay::start_seeded(server.local_addr(), link.clone(), link.clone(), 5)
        .await
        .unwrap();
    let mut client_config = ClientConfig::new(relay.local_addr(), trust);
    client_config.transport.stats_log_interval = Some(Duration::from_millis(200));
    let mut client = within(Client::connect(&client_config)).await.unwrap();
    let mut server_side = within(server.accept()).await.unwrap();

    let rate = stream_for(&mut client, &mut server_side, Duration::from_secs(2)).await;
    let clean = client.handle().stats();
    // The statistics' rates cover the last one to two seconds of the stream.
    let near = |measured: f64| (rate * 0.6..=rate * 1.4).contains(&measured);
    let rtt = clean.rtt.unwrap();
    assert!(rtt >= Duration::from_millis(40), "{clean:?}");
    assert!(rtt < Duration::from_millis(150), "{clean:?}");
    assert!(
        clean.min_rtt.unwrap() >= Duration::from_millis(39),
        "{clean:?}"
    );
    assert!(
        clean.rtt_p50.unwrap() >= Duration::from_millis(40),
        "{clean:?}"
    );
    assert!(
        clean.rtt_p99.unwrap() >= clean.rtt_p50.unwrap(),
        "{clean:?}"
    );
    assert!(clean.loss_rate < 0.01, "{clean:?}");
    assert!(
        near(clean.sent_messages_per_s),
        "sent {rate:.0}/s: {clean:?}"
    );
    assert!(
        clean.sent_bytes_per_s > rate * 200.0 * 0.6,
        "at least the payload: {clean:?}"
    );
    assert!(clean.congestion_window > 0, "{clean:?}");
    let server_view = server_side.handle().stats();
    assert!(
        near(server_view.received_messages_per_s),
        "sent {rate:.0}/s: {server_view:?}"
    );

    let lossy = Conditions {
        loss: Loss::Random(0.05),
        ..link.clone()
    };
    relay.set_conditions(lossy.clone(), lossy);
    let lossy_rate = stream_for(&mut client, &mut server_side, Duration::from_secs(3)).await;
    let lossy = client.handle().stats();
    assert!(
        (0.01..0.2).contains(&lossy.loss_rate),
        "5 % induced: {lossy:?}"
    );

    eprintln!("clean link: {clean:?}\nwith 5 % loss: {lossy:?}");
    let all = server.stats();
    let one = server_side.handle().stats();
    assert_eq!(all.sessions, 1);
    // One session: the server-wide figures are that session's (sampled a moment apart).
    assert!(all.received_messages_per_s > 0.0, "{all:?}");
    assert!(
        (all.received_messages_per_s - one.received_messages_per_s).abs()
            <= one.received_messages_per_s * 0.3 + 1.0,
        "sent {lossy_rate:.0}/s: {all:?} against {one:?}"
    );
    assert!(all.rtt_p50.unwrap() >= Duration::from_millis(40), "{all:?}");
    assert!(
        logged.load(Ordering::SeqCst) >= 10,
        "server and client logged every 200 ms over 5 s: {}",
        logged.load(Ordering::SeqCst)
    );
}
