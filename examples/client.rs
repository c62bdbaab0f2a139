//! A quicfeed game client: connects, pings on main, and reads the feed.
//!
//! ```text
//! cargo run --example client                                        # 127.0.0.1:4433, pins certs/cert.pem
//! cargo run --example client -- --server 10.0.0.5:4433 --fingerprint AB:CD:...
//! cargo run --example client -- --pings 20 --say "hello"
//! ```
//!
//! Trust: `--fingerprint` pins the SHA-256 fingerprint the server prints at start; otherwise
//! `--cert` pins the certificate file (the default works when server and client share this
//! checkout).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use common::{Request, Response, Snapshot};
use quicfeed::{Client, ClientConfig, Fingerprint, Reason, ServerAddress, Trust};

#[derive(Parser)]
#[command(about = "quicfeed example game client")]
struct Args {
    /// The server: HOST:PORT or ADDRESS:PORT (localhost:4433, 192.0.2.10:4433, [::1]:4433).
    #[arg(long, default_value = "127.0.0.1:4433")]
    server: ServerAddress,
    /// Pin this certificate file (PEM).
    #[arg(long, default_value = "certs/cert.pem")]
    cert: PathBuf,
    /// Pin this SHA-256 certificate fingerprint instead of a file.
    #[arg(long)]
    fingerprint: Option<Fingerprint>,
    /// Pings to send on main, one every 200 ms.
    #[arg(long, default_value_t = 10)]
    pings: u64,
    /// A line to say on main before pinging.
    #[arg(long)]
    say: Option<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    common::exit_code(run().await)
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    common::init_logging("warn");
    let args = Args::parse();
    let trust = match args.fingerprint {
        Some(fingerprint) => Trust::Fingerprint(fingerprint),
        None => Trust::certificate_pem_file(&args.cert)?,
    };
    let started = Instant::now();
    let session = Client::connect(&ClientConfig::new(args.server.clone(), trust)).await?;
    println!(
        "connected to {} as {} in {:.1} ms",
        args.server,
        session.player_id(),
        started.elapsed().as_secs_f64() * 1e3
    );
    let (handle, main, feed) = session.into_parts();

    let feed_reader = tokio::spawn(async move {
        let (_, feed) = feed.split();
        let mut received = 0u64;
        while let Ok(snapshot) = feed.recv::<Snapshot>().await {
            if received.is_multiple_of(60) {
                println!(
                    "feed: tick {} with {} entities",
                    snapshot.tick,
                    snapshot.entities.len()
                );
            }
            received += 1;
        }
        received
    });

    if let Some(text) = args.say {
        main.send(&Request::Say(text)).await?;
        if let Response::Said(echo) = main.recv().await? {
            println!("server echoed: {echo}");
        }
    }
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    for seq in 0..args.pings {
        ticker.tick().await;
        let sent = Instant::now();
        main.send(&Request::Ping { seq }).await?;
        match main.recv::<Response>().await? {
            Response::Pong { seq: got } if got == seq => println!(
                "pong {seq}: {:.2} ms (QUIC RTT estimate {:.2} ms)",
                sent.elapsed().as_secs_f64() * 1e3,
                handle.rtt().unwrap_or_default().as_secs_f64() * 1e3
            ),
            other => println!("unexpected reply: {other:?}"),
        }
    }
    handle.close(Reason::Normal, "client done");
    let snapshots = feed_reader.await?;
    // Returns once the close has gone out, so the server sees it rather than a timeout.
    handle.closed().await;
    println!("received {snapshots} feed snapshots; bye");
    Ok(())
}
