//! A quicfeed game server for two terminals or two machines.
//!
//! ```text
//! cargo run --example server                                   # 127.0.0.1:4433, certs/
//! cargo run --example server -- --listen 0.0.0.0:4433          # reachable from other machines
//! cargo run --example server -- --cert my.pem --key my-key.pem # your own certificate
//! ```
//!
//! On first run it generates a self-signed certificate in `certs/` and prints its fingerprint,
//! which clients on other machines pass as `--fingerprint`. It answers pings on main and sends a
//! game snapshot on feed at `--tick-hz`. Ctrl-C shuts it down gracefully.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use quicfeed::certs::DEV_CERT_NAMES;
use quicfeed::{Identity, Reason, Server, ServerConfig, ServerSecret};

#[derive(Parser)]
#[command(about = "quicfeed example game server")]
struct Args {
    /// UDP address to listen on.
    #[arg(long, default_value = "127.0.0.1:4433")]
    listen: SocketAddr,
    /// Certificate chain (PEM). Generated with --key when both are missing.
    #[arg(long, default_value = "certs/cert.pem")]
    cert: PathBuf,
    /// Private key (PEM).
    #[arg(long, default_value = "certs/key.pem")]
    key: PathBuf,
    /// The server secret (generated when missing): kept across restarts, it lets the clients
    /// of a restarted server learn of the restart within a round trip.
    #[arg(long, default_value = "certs/secret.key")]
    secret: PathBuf,
    /// Feed snapshots per second.
    #[arg(long, default_value_t = 60)]
    tick_hz: u32,
    /// Most concurrent sessions.
    #[arg(long, default_value_t = 1024)]
    max_sessions: usize,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    common::exit_code(run().await)
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    common::init_logging("info");
    let args = Args::parse();
    let (identity, generated) = Identity::load_or_generate(&args.cert, &args.key, DEV_CERT_NAMES)?;
    if generated {
        eprintln!(
            "generated a development certificate in {}",
            args.cert.display()
        );
    }
    let (secret, _) = ServerSecret::load_or_generate(&args.secret)?;
    let mut config = ServerConfig::new(args.listen, identity);
    config.secret = Some(secret);
    config.max_sessions = args.max_sessions;
    let server = std::sync::Arc::new(Server::bind(config).await?);
    eprintln!("listening on {}", server.local_addr());
    eprintln!("certificate fingerprint: {}", server.fingerprint());
    eprintln!(
        "connect with: cargo run --example client -- --server {} --fingerprint {}",
        server.local_addr(),
        server.fingerprint()
    );

    let acceptor = {
        let server = server.clone();
        tokio::spawn(async move {
            while let Some(session) = server.accept().await {
                let (player, remote) = (session.player_id(), session.remote_address());
                tracing::info!(%player, ?remote, "player joined");
                tokio::spawn(async move {
                    let why = common::serve_session(session, args.tick_hz).await;
                    tracing::info!(%player, reason = %why, "player left");
                });
            }
        })
    };
    tokio::signal::ctrl_c().await?;
    eprintln!("shutting down");
    server
        .shutdown(Reason::ServerShutdown, "server stopped by operator")
        .await;
    acceptor.await?;
    Ok(())
}
