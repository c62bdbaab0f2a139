//! Connect and reconnect times through the network conditioner, in milliseconds and in round
//! trips: the physical limit of the handshake is a count of round trips (PROTOCOL.md §2 and
//! §12): 4 RTT cold (the QUIC handshake, then three dependent token steps), 3 RTT when the
//! client holds a TLS session ticket and sends `CONN_INIT` in 0-RTT; a resume is 2 RTT, 1 RTT
//! in 0-RTT.

use std::time::{Duration, Instant};

use quicfeed::conditioner::Conditions;
use quicfeed::{Client, ClientConfig, Session, SessionEvent};
use serde_json::json;

use quicfeed::conditioner::Relay;

use crate::common::{Rig, Summary, Tls, loopback, rig};
use crate::report::{Section, ms};

/// Accepts every session and echoes its main channel.
fn serve(server: quicfeed::Server) {
    tokio::spawn(async move {
        while let Some(session) = server.accept().await {
            tokio::spawn(async move {
                while let Ok(bytes) = session.main().recv_bytes().await {
                    if session.main().send_bytes(&bytes).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}

async fn round_trip(session: &mut Session) -> Duration {
    let started = Instant::now();
    session.main().send_bytes(b"ping").await.expect("send");
    session.main().recv_bytes().await.expect("echo");
    started.elapsed()
}

async fn next_resume(events: &mut quicfeed::Events) -> Duration {
    loop {
        match events.next().await {
            Some(SessionEvent::Resumed { handshake, .. }) => return handshake,
            Some(_) => continue,
            None => panic!("the session ended"),
        }
    }
}

/// The conditioner's real round trip: a UDP ping through a relay with the same delay, to a
/// UDP echo on loopback (the relay's timers add a little to the nominal delay).
async fn path_rtt(one_way: Duration, count: usize) -> Vec<Duration> {
    let echo = tokio::net::UdpSocket::bind(loopback()).await.expect("echo");
    let echo_addr = echo.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buffer = [0u8; 64];
        while let Ok((n, from)) = echo.recv_from(&mut buffer).await {
            let _ = echo.send_to(&buffer[..n], from).await;
        }
    });
    let link = Conditions::latency(one_way);
    let relay = Relay::start_seeded(echo_addr, link.clone(), link, 1)
        .await
        .expect("relay");
    let socket = tokio::net::UdpSocket::bind(loopback())
        .await
        .expect("socket");
    let mut samples = Vec::new();
    let mut buffer = [0u8; 64];
    for _ in 0..count.max(10) {
        let started = Instant::now();
        socket
            .send_to(b"ping", relay.local_addr())
            .await
            .expect("ping");
        socket.recv_from(&mut buffer).await.expect("pong");
        samples.push(started.elapsed());
    }
    samples
}

/// A bare quinn handshake (quinn's defaults) through a relay with the same delay: what the
/// QUIC layer alone costs.
async fn bare_quinn_handshake(one_way: Duration, count: usize) -> Vec<Duration> {
    let tls = Tls::generate();
    let server = tls.quinn_server();
    let accepting = server.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    conn.closed().await;
                }
            });
        }
    });
    let link = Conditions::latency(one_way);
    let relay = Relay::start_seeded(server.local_addr().expect("addr"), link.clone(), link, 2)
        .await
        .expect("relay");
    let mut samples = Vec::new();
    for _ in 0..count {
        let client = tls.quinn_client();
        let started = Instant::now();
        let conn = client
            .connect(relay.local_addr(), "localhost")
            .expect("connect")
            .await
            .expect("connection");
        samples.push(started.elapsed());
        conn.close(0u32.into(), b"");
        client.wait_idle().await;
    }
    samples
}

struct Measured {
    path: Vec<Duration>,
    quinn: Vec<Duration>,
    cold: Vec<Duration>,
    cold_0rtt: Vec<Duration>,
    cold_0rtt_used: usize,
    resume: Vec<Duration>,
    migration: Vec<Duration>,
    migrations_survived: usize,
}

async fn measure(one_way: Duration, count: usize) -> Measured {
    let Rig {
        server,
        relay,
        trust,
    } = rig(Conditions::latency(one_way), 5).await;
    serve(server);
    let fresh = |zero_rtt: bool| {
        let mut config = ClientConfig::new(relay.local_addr(), trust.clone());
        config.zero_rtt = zero_rtt;
        config
    };
    // Cold: a new client configuration each time (no TLS session ticket).
    let mut cold = Vec::new();
    for _ in 0..count {
        let config = fresh(false);
        let started = Instant::now();
        let session = Client::connect(&config).await.expect("connect");
        cold.push(started.elapsed());
        session
            .close_gracefully(quicfeed::Reason::Normal, "bye")
            .await;
    }
    // Cold with 0-RTT: one configuration, reused, holds the ticket of the previous connection.
    let mut cold_0rtt = Vec::new();
    let mut cold_0rtt_used = 0;
    let config = fresh(true);
    Client::connect(&config)
        .await
        .expect("connect")
        .close_gracefully(quicfeed::Reason::Normal, "bye")
        .await;
    for _ in 0..count {
        let started = Instant::now();
        let session = Client::connect(&config).await.expect("connect");
        cold_0rtt.push(started.elapsed());
        cold_0rtt_used += usize::from(session.handle().counters().connect_0rtt > 0);
        session
            .close_gracefully(quicfeed::Reason::Normal, "bye")
            .await;
    }
    // Resumes on demand (never in 0-RTT: the proof needs the new connection's keys): the
    // successful attempt's handshake time.
    let mut resume = Vec::new();
    let mut session = Client::connect(&fresh(true)).await.expect("connect");
    round_trip(&mut session).await;
    for _ in 0..count {
        let mut events = session.handle().events();
        session.handle().reconnect().expect("reconnect");
        resume.push(next_resume(&mut events).await);
        round_trip(&mut session).await;
    }
    // Migrations: the client moves to a new socket (a new address for the relay and the
    // server); the first main round trip after the move.
    let mut session = Client::connect(&fresh(true)).await.expect("connect");
    round_trip(&mut session).await;
    let before = session.handle().counters();
    let mut migration = Vec::new();
    for _ in 0..count {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("socket");
        session.handle().rebind(socket).await.expect("rebind");
        migration.push(round_trip(&mut session).await);
    }
    let lost = session.handle().counters().connections_lost - before.connections_lost;
    Measured {
        path: path_rtt(one_way, count).await,
        quinn: bare_quinn_handshake(one_way, count).await,
        cold,
        cold_0rtt,
        cold_0rtt_used,
        resume,
        migration,
        migrations_survived: count - lost as usize,
    }
}

pub(crate) async fn run(quick: bool) -> Vec<Section> {
    let (rtts, count): (&[u64], usize) = if quick { (&[20], 3) } else { (&[20, 50], 40) };
    let mut sections = Vec::new();
    for &rtt_ms in rtts {
        let rtt = Duration::from_millis(rtt_ms);
        let m = measure(rtt / 2, count).await;
        let path = Summary::of_durations(&m.path).p50;
        let mut section = Section::new(
            &format!("Connect and reconnect at {rtt_ms} ms RTT"),
            &format!(
                "Through the in-process network conditioner at {} ms each way, {count} of each, \
                 on one machine. Cold: `Client::connect` with a new configuration (no TLS ticket) \
                 until it returns after `CONN_OK`. Cold with 0-RTT: the same configuration \
                 reused, so the client holds a ticket from its previous connection and sends \
                 `CONN_INIT` in 0-RTT ({} of {count} connects used it). Resume: \
                 `SessionHandle::reconnect`, from opening the new connection to `CONN_OK` (the \
                 QUIC handshake, then `RESUME` with its key-bound proof: two round trips). \
                 Migration: the client moves to a new UDP socket; the first main round trip \
                 after the move ({} of {count} migrations kept the connection). The limit is \
                 the handshake's round-trip count. RTT multiples are of the path's measured \
                 round trip, {path:.2} ms (p50 of a UDP ping through the same conditioner: its \
                 timers add to the nominal {rtt_ms} ms), and each target allows that many round \
                 trips plus 2 ms.",
                rtt_ms / 2,
                m.cold_0rtt_used,
                m.migrations_survived
            ),
            &["measure", "limit", "p50", "p50 in RTT", "p99", "p99 in RTT"],
        );
        let rows = [
            ("path round trip (UDP ping)", 1.0, &m.path, "path"),
            (
                "bare quinn QUIC handshake",
                1.0,
                &m.quinn,
                "bare_quinn_handshake",
            ),
            ("cold connect", 4.0, &m.cold, "cold"),
            ("cold connect, 0-RTT", 3.0, &m.cold_0rtt, "cold_0rtt"),
            ("resume", 2.0, &m.resume, "resume"),
            (
                "first message after a migration",
                1.0,
                &m.migration,
                "migration",
            ),
        ];
        let mut figures = serde_json::Map::new();
        let rtt_f = path;
        for (name, limit, samples, key) in rows {
            let s = Summary::of_durations(samples);
            section.row(vec![
                name.to_owned(),
                format!("{limit:.0} RTT"),
                ms(s.p50),
                format!("{:.2}", s.p50 / rtt_f),
                ms(s.p99),
                format!("{:.2}", s.p99 / rtt_f),
            ]);
            figures.insert(
                key.to_owned(),
                json!({"ms": s, "p50_rtt": s.p50 / rtt_f, "p99_rtt": s.p99 / rtt_f}),
            );
            if matches!(key, "cold" | "cold_0rtt" | "resume") {
                let bound = limit * rtt_f + 2.0;
                section.target(
                    &format!("{name} at {rtt_ms} ms RTT (p50)"),
                    format!("{} ({:.2} RTT)", ms(s.p50), s.p50 / rtt_f),
                    &format!("<= {limit:.0} RTT + 2 ms = {bound:.1} ms"),
                    s.p50 <= bound,
                );
            }
        }
        figures.insert("nominal_rtt_ms".into(), json!(rtt_ms));
        figures.insert("path_rtt_ms".into(), json!(path));
        figures.insert("cold_0rtt_used".into(), json!(m.cold_0rtt_used));
        figures.insert("migrations_survived".into(), json!(m.migrations_survived));
        section.figures = serde_json::Value::Object(figures);
        sections.push(section);
    }
    sections
}
