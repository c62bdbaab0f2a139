//! The quicfeed demo: a server and several clients in one process, on loopback.
//!
//! ```text
//! cargo run --release --example demo                       # 8 clients for 3 s
//! cargo run --release --example demo -- --clients 200 --sequential
//! cargo run --release --example demo -- --help
//! ```
//!
//! Each client completes the full handshake (CONN_INIT, FEED_INIT, FINAL_AUTH), sends pings on
//! main and times the replies, and receives the server's 60 Hz game snapshots on feed. At the
//! end it prints, per client, the player ID, the handshake time, the messages each way, and the
//! main round-trip p50/p99.
//!
//! Then two more clients show reconnection: one moves to a new socket three times (QUIC
//! migration), the other loses its path for 2.5 s, longer than the 2 s dead-path timeout,
//! behind the network conditioner, and resumes its session on a new connection. Both report
//! that no ping went unanswered and no snapshot was lost or reordered.
//!
//! Exits 0, or 1 if any client failed, a feed arrived out of order, or a message was lost.

mod common;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use common::{Request, Response, Snapshot, now_us};
use quicfeed::certs::DEV_CERT_NAMES;
use quicfeed::conditioner::{Conditions, Relay};
use quicfeed::{
    Client, ClientConfig, Identity, PlayerId, Reason, Server, ServerConfig, ServerSecret, Session,
    Trust,
};

#[derive(Parser, Clone)]
#[command(about = "quicfeed demo: one server and several clients on loopback")]
struct Args {
    /// Number of clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Seconds each client exchanges messages after connecting.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Feed snapshots per second (the game's tick rate).
    #[arg(long, default_value_t = 60)]
    tick_hz: u32,
    /// Pings per second each client sends on main.
    #[arg(long, default_value_t = 20)]
    ping_hz: u32,
    /// Connect clients one after another (handshake times without contention) instead of all
    /// at once.
    #[arg(long)]
    sequential: bool,
}

/// What one client measured.
struct Report {
    player: PlayerId,
    handshake: Duration,
    main_sent: u64,
    main_received: u64,
    feed_received: u64,
    feed_in_order: bool,
    rtts: Vec<Duration>,
    feed_ages_us: Vec<u64>,
}

#[tokio::main]
async fn main() -> ExitCode {
    common::init_logging("warn");
    let args = Args::parse();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<bool, Box<dyn std::error::Error>> {
    let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
    let (identity, generated) = Identity::load_or_generate(
        certs.join("cert.pem"),
        certs.join("key.pem"),
        DEV_CERT_NAMES,
    )?;
    if generated {
        println!("generated a development certificate in {}", certs.display());
    }
    let trust = Trust::Certificate(identity.certificate().clone());
    // Kept beside the certificate: a restarted server resets its old clients' connections.
    let (secret, _) = ServerSecret::load_or_generate(certs.join("secret.key"))?;
    let mut config = ServerConfig::new("127.0.0.1:0".parse()?, identity);
    config.secret = Some(secret);
    config.max_sessions = args.clients.max(1).saturating_add(2);
    // Every client connects from loopback at once, like players behind one NAT.
    config.max_pending_per_address = config.max_sessions;
    config.max_sessions_per_address = config.max_sessions;
    let server = Arc::new(Server::bind(config).await?);
    println!(
        "server on {} (certificate {})",
        server.local_addr(),
        server.fingerprint()
    );

    let acceptor = {
        let server = server.clone();
        let tick_hz = args.tick_hz;
        tokio::spawn(async move {
            while let Some(session) = server.accept().await {
                tokio::spawn(common::serve_session(session, tick_hz));
            }
        })
    };

    let client_config = ClientConfig::new(server.local_addr(), trust);
    println!(
        "{} clients connecting ({}), then {:.1} s of pings at {} Hz and feed at {} Hz\n",
        args.clients,
        if args.sequential {
            "one after another"
        } else {
            "all at once"
        },
        args.seconds,
        args.ping_hz,
        args.tick_hz
    );
    let mut sessions = Vec::with_capacity(args.clients);
    if args.sequential {
        for _ in 0..args.clients {
            sessions.push(tokio::spawn(connect(client_config.clone())).await?);
        }
    } else {
        let connecting: Vec<_> = (0..args.clients)
            .map(|_| tokio::spawn(connect(client_config.clone())))
            .collect();
        for task in connecting {
            sessions.push(task.await?);
        }
    }
    let mut runs = Vec::with_capacity(sessions.len());
    for connected in sessions {
        let (session, handshake) = connected?;
        runs.push(tokio::spawn(play(session, handshake, args.clone())));
    }
    let mut reports = Vec::with_capacity(runs.len());
    for run in runs {
        reports.push(run.await?.map_err(|e| e.to_string())?);
    }
    let all_good = print_reports(&mut reports, &args);
    let reconnection_good = showcase(&server, &client_config, &args).await?;
    server.shutdown(Reason::ServerShutdown, "demo over").await;
    acceptor.await?;
    let ok = all_good && reconnection_good;
    println!("\n{}", if ok { "demo OK" } else { "demo FAILED" });
    Ok(ok)
}

/// How a showcase client's network misbehaves.
enum Disruption {
    /// The client moves to a new local socket every 1.5 s, three times.
    Migrate,
    /// The client's path goes dark for 2.5 s, 1 s in.
    Outage(Relay),
}

/// Runs the two reconnection clients side by side and reports them.
async fn showcase(
    server: &Server,
    config: &ClientConfig,
    args: &Args,
) -> Result<bool, Box<dyn std::error::Error>> {
    println!("\nreconnection: one client migrates three times; one loses its path for 2.5 s");
    let mut args = args.clone();
    args.seconds = args.seconds.max(6.0);
    let relay = Relay::start(
        server.local_addr(),
        Conditions::default(),
        Conditions::default(),
    )
    .await?;
    let mut behind_relay = config.clone();
    behind_relay.server = relay.local_addr().into();
    let runs = [
        (config.clone(), Disruption::Migrate),
        (behind_relay, Disruption::Outage(relay)),
    ]
    .map(|(config, disruption)| {
        let args = args.clone();
        tokio::spawn(async move {
            let (session, handshake) = connect(config).await?;
            let handle = session.handle().clone();
            let mut events = handle.events();
            let disrupt = async {
                match &disruption {
                    Disruption::Migrate => {
                        for _ in 0..3 {
                            tokio::time::sleep(Duration::from_millis(1500)).await;
                            let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
                            handle.rebind(socket).await?;
                        }
                    }
                    Disruption::Outage(relay) => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        relay.blackhole(Duration::from_millis(2500));
                    }
                }
                Ok::<_, std::io::Error>(())
            };
            let (report, disrupted) = tokio::join!(play(session, handshake, args), disrupt);
            disrupted?;
            let mut resumed = None;
            while let Some(event) = events.next().await {
                if let quicfeed::SessionEvent::Resumed { .. } = event {
                    resumed = Some(event);
                }
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((
                report?,
                handle.counters(),
                resumed,
                matches!(disruption, Disruption::Migrate),
            ))
        })
    });
    let mut ok = true;
    for run in runs {
        let (mut report, counters, resumed, migrating) = run.await?.map_err(|e| e.to_string())?;
        report.rtts.sort();
        let answered = report.main_sent == report.main_received;
        let slowest = ms(report.rtts.last().copied());
        if migrating {
            println!(
                "  migration: {} moved {} times with no resume; {}/{} pings answered (slowest {slowest} ms), {} snapshots, in order: {}",
                report.player,
                counters.migrations,
                report.main_received,
                report.main_sent,
                report.feed_received,
                report.feed_in_order
            );
            ok &= counters.migrations == 3 && counters.resumes == 0;
        } else {
            match resumed {
                Some(quicfeed::SessionEvent::Resumed {
                    outage,
                    replayed,
                    lost,
                    ..
                }) => {
                    println!(
                        "  outage: {} resumed after {:.2} s with the same player ID; replayed {replayed}, lost {lost}; {}/{} pings answered (slowest {slowest} ms, during the outage), {} snapshots, in order: {}",
                        report.player,
                        outage.as_secs_f64(),
                        report.main_received,
                        report.main_sent,
                        report.feed_received,
                        report.feed_in_order
                    );
                    ok &= lost == 0;
                }
                _ => {
                    println!("  outage: {} did not resume", report.player);
                    ok = false;
                }
            }
        }
        ok &= answered && report.feed_in_order;
    }
    let counters = server.counters();
    println!(
        "  server saw {} migrations and {} resumes",
        counters.migrations, counters.resumes
    );
    Ok(ok)
}

async fn connect(config: ClientConfig) -> Result<(Session, Duration), quicfeed::ConnectError> {
    let started = Instant::now();
    let session = Client::connect(&config).await?;
    Ok((session, started.elapsed()))
}

/// One client's game: pings on main at `ping_hz`, reads feed, for `seconds`.
async fn play(
    session: Session,
    handshake: Duration,
    args: Args,
) -> Result<Report, Box<dyn std::error::Error + Send + Sync>> {
    let player = session.player_id();
    let (handle, main, feed) = session.into_parts();
    // Snapshots queued while other clients were still connecting say nothing about latency.
    let playing_since_us = now_us();
    let feed_task = tokio::spawn(async move {
        let (_, feed) = feed.split();
        let (mut received, mut in_order, mut ages) = (0u64, true, Vec::new());
        let mut next_tick = None;
        while let Ok(snapshot) = feed.recv::<Snapshot>().await {
            in_order &= next_tick.is_none_or(|next| snapshot.tick == next);
            next_tick = Some(snapshot.tick + 1);
            if snapshot.server_time_us >= playing_since_us {
                ages.push(now_us().saturating_sub(snapshot.server_time_us));
            }
            received += 1;
        }
        (received, in_order, ages)
    });

    let mut rtts = Vec::new();
    let (mut sent, mut replies) = (0u64, 0u64);
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / args.ping_hz.max(1));
    let end = Instant::now() + Duration::from_secs_f64(args.seconds);
    while Instant::now() < end {
        ticker.tick().await;
        let started = Instant::now();
        main.send(&Request::Ping { seq: sent }).await?;
        sent += 1;
        match main.recv::<Response>().await? {
            Response::Pong { seq } if seq + 1 == sent => {
                replies += 1;
                rtts.push(started.elapsed());
            }
            other => return Err(format!("unexpected reply {other:?}").into()),
        }
    }
    handle.close(Reason::Normal, "demo client done");
    let (feed_received, feed_in_order, feed_ages_us) = feed_task.await?;
    Ok(Report {
        player,
        handshake,
        main_sent: sent,
        main_received: replies,
        feed_received,
        feed_in_order,
        rtts,
        feed_ages_us,
    })
}

fn percentile<T: Copy + Ord>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied()
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.3}", d.as_secs_f64() * 1e3))
}

/// Prints the per-client table and the summary; returns whether every client did well.
fn print_reports(reports: &mut [Report], args: &Args) -> bool {
    reports.sort_by_key(|r| r.player);
    println!(
        "{:>10} {:>13} {:>9} {:>9} {:>9} {:>12} {:>12}",
        "player", "handshake ms", "main out", "main in", "feed in", "rtt p50 ms", "rtt p99 ms"
    );
    let mut ok = true;
    for r in reports.iter_mut() {
        r.rtts.sort();
        println!(
            "{:>10} {:>13.2} {:>9} {:>9} {:>9} {:>12} {:>12}{}",
            r.player.to_string(),
            r.handshake.as_secs_f64() * 1e3,
            r.main_sent,
            r.main_received,
            r.feed_received,
            ms(percentile(&r.rtts, 0.50)),
            ms(percentile(&r.rtts, 0.99)),
            if r.feed_in_order {
                ""
            } else {
                "  FEED OUT OF ORDER"
            }
        );
        ok &= r.feed_in_order && r.main_sent == r.main_received && r.feed_received > 0;
    }
    let mut handshakes: Vec<Duration> = reports.iter().map(|r| r.handshake).collect();
    handshakes.sort();
    let mut rtts: Vec<Duration> = reports
        .iter()
        .flat_map(|r| r.rtts.iter().copied())
        .collect();
    rtts.sort();
    let mut ages: Vec<u64> = reports
        .iter()
        .flat_map(|r| r.feed_ages_us.iter().copied())
        .collect();
    ages.sort();
    let feed_total: u64 = reports.iter().map(|r| r.feed_received).sum();
    let expected = (args.seconds * f64::from(args.tick_hz)) as u64 * reports.len() as u64;
    println!(
        "\nall {} clients: handshake p50 {} ms, p99 {} ms; main rtt p50 {} ms, p99 {} ms over {} pings",
        reports.len(),
        ms(percentile(&handshakes, 0.50)),
        ms(percentile(&handshakes, 0.99)),
        ms(percentile(&rtts, 0.50)),
        ms(percentile(&rtts, 0.99)),
        rtts.len()
    );
    println!(
        "feed: {feed_total} snapshots (at least {expected} expected), delivery p50 {} ms, p99 {} ms, all in order: {}",
        ms(percentile(&ages, 0.50).map(Duration::from_micros)),
        ms(percentile(&ages, 0.99).map(Duration::from_micros)),
        reports.iter().all(|r| r.feed_in_order)
    );
    ok
}
