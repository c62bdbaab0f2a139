//! Reconnection figures through the network conditioner at 20 ms RTT (10 ms each way).
//!
//! ```text
//! cargo bench --bench reconnect            # full: 100 migrations, 20 resumes each way
//! cargo bench --bench reconnect -- --quick # a few of each, for a smoke test
//! ```
//!
//! Prints: migrations survived out of 100 and the time to the first message after each
//! (a main round trip started right after the move); dead-path detection time (from the start
//! of a blackhole to `ConnectionLost`); resume time (from opening the new connection to
//! `CONN_OK`) with and without 0-RTT, in milliseconds and in RTT multiples. Times are figures
//! of this run on this machine; the RTT multiples are what carries over.

mod common;

use std::time::{Duration, Instant};

use common::{Rig, rig};
use quicfeed::conditioner::Conditions;
use quicfeed::{Client, ClientConfig, Session, SessionEvent};

const ONE_WAY: Duration = Duration::from_millis(10);

/// A connected client through the relay, and the server's side of its session, echoing main.
async fn pair(rig: &Rig, zero_rtt: bool) -> Session {
    let mut config = ClientConfig::new(rig.relay.local_addr(), rig.trust.clone());
    config.zero_rtt = zero_rtt;
    let client = Client::connect(&config).await.expect("connect");
    let mut server_side = rig.server.accept().await.expect("session");
    tokio::spawn(async move {
        while let Ok(bytes) = server_side.main().recv_bytes().await {
            if server_side.main().send_bytes(&bytes).await.is_err() {
                break;
            }
        }
    });
    client
}

async fn round_trip(session: &mut Session) -> Duration {
    let started = Instant::now();
    session.main().send_bytes(b"ping").await.expect("send");
    session.main().recv_bytes().await.expect("echo");
    started.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied().unwrap_or_default()
}

fn row(label: &str, samples: &mut [Duration], rtt: Duration) {
    samples.sort();
    let (p50, p99) = (percentile(samples, 0.5), percentile(samples, 0.99));
    println!(
        "| {label} | {} | {:.1} ms ({:.2} RTT) | {:.1} ms ({:.2} RTT) |",
        samples.len(),
        p50.as_secs_f64() * 1e3,
        p50.as_secs_f64() / rtt.as_secs_f64(),
        p99.as_secs_f64() * 1e3,
        p99.as_secs_f64() / rtt.as_secs_f64(),
    );
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (migrations, resumes, outages) = if quick { (10, 3, 1) } else { (100, 20, 5) };
    let rtt = ONE_WAY * 2;
    let rig = rig(Conditions::latency(ONE_WAY), 3).await;

    // Migrations: the client moves to a new socket; the relay sees a new client address, and
    // so does the server.
    let mut client = pair(&rig, true).await;
    round_trip(&mut client).await;
    let mut after_move = Vec::new();
    let before = client.handle().counters();
    for _ in 0..migrations {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("socket");
        client.handle().rebind(socket).await.expect("rebind");
        after_move.push(round_trip(&mut client).await);
    }
    let counters = client.handle().counters();
    let survived = migrations - (counters.connections_lost - before.connections_lost) as usize;

    // Dead-path detection: a blackhole, then the time until the client declares the path dead.
    let mut detection = Vec::new();
    for _ in 0..outages {
        let mut events = client.handle().events();
        round_trip(&mut client).await;
        let started = Instant::now();
        rig.relay.blackhole(Duration::from_secs(3));
        loop {
            match events.next().await {
                Some(SessionEvent::ConnectionLost { .. }) => break,
                Some(_) => continue,
                None => panic!("session ended"),
            }
        }
        detection.push(started.elapsed());
        rig.relay.end_blackhole();
        loop {
            if let Some(SessionEvent::Resumed { .. }) = events.next().await {
                break;
            }
        }
        round_trip(&mut client).await;
    }

    // Resumes on demand, with and without 0-RTT: the time of the successful attempt.
    let mut resume_times = [(true, Vec::new()), (false, Vec::new())];
    for (zero_rtt, samples) in &mut resume_times {
        let mut session = pair(&rig, *zero_rtt).await;
        round_trip(&mut session).await;
        for _ in 0..resumes {
            let mut events = session.handle().events();
            session.handle().reconnect().expect("reconnect");
            let (handshake, used_0rtt) = loop {
                if let Some(SessionEvent::Resumed {
                    handshake,
                    zero_rtt,
                    ..
                }) = events.next().await
                {
                    break (handshake, zero_rtt);
                }
            };
            assert_eq!(used_0rtt, *zero_rtt, "0-RTT as configured");
            samples.push(handshake);
            round_trip(&mut session).await;
        }
    }

    println!(
        "\nquicfeed reconnection through the conditioner, RTT {} ms\n",
        rtt.as_millis()
    );
    println!("migrations survived without a resume: {survived} of {migrations}\n");
    println!("| measure | n | p50 | p99 |");
    println!("|---|---|---|---|");
    row(
        "first message after a migration (main round trip)",
        &mut after_move,
        rtt,
    );
    row(
        "dead-path detection (blackhole start to ConnectionLost)",
        &mut detection,
        rtt,
    );
    let [(_, with), (_, without)] = &mut resume_times;
    row("resume, 0-RTT (new connection to CONN_OK)", with, rtt);
    row("resume, 1-RTT (new connection to CONN_OK)", without, rtt);
}
