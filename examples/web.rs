//! Browser players: a quicfeed server that serves native clients and web pages on one UDP port,
//! and a small web page that plays on it over WebTransport.
//!
//! ```text
//! cargo run --example web                 # then open http://127.0.0.1:8080 in Chromium or Chrome
//! cargo run --example web -- --help
//! ```
//!
//! The page (`examples/web/index.html`, using `web/quicfeed.js`) shows its player ID, the round
//! trip on main, the feed ticking and the lane's snapshots drawn on a canvas. Its "Drop the
//! connection" button gives up the WebTransport connection to watch the session resume on a new
//! one: same player ID, no message lost. The page pins the server's generated browser
//! certificate by the hashes it fetches from `/config.json` (development only: in production
//! serve a CA-issued certificate). Ctrl-C shuts the server down gracefully.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use common::http::{self, Response};
use quicfeed::certs::DEV_CERT_NAMES;
use quicfeed::{
    Identity, Prepared, Reason, RecvError, Server, ServerConfig, Session, WebTransportConfig,
};
use tokio::time::MissedTickBehavior;

#[derive(Parser)]
#[command(about = "quicfeed for browser players: a game server and a web page that plays on it")]
struct Args {
    /// UDP address of the game server (native clients and WebTransport).
    #[arg(long, default_value = "127.0.0.1:4433")]
    listen: SocketAddr,
    /// TCP address the page is served on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// Feed messages per second.
    #[arg(long, default_value_t = 10)]
    feed_hz: u32,
    /// Lane snapshots per second.
    #[arg(long, default_value_t = 30)]
    lane_hz: u32,
}

const PAGE: &str = include_str!("web/index.html");
const CLIENT: &str = include_str!("../web/quicfeed.js");

#[tokio::main]
async fn main() -> std::process::ExitCode {
    common::exit_code(run().await)
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    common::init_logging("info");
    let args = Args::parse();
    let http = tokio::net::TcpListener::bind(args.http)
        .await
        .map_err(|e| format!("cannot serve the page on {}: {e}", args.http))?;
    let http_addr = http.local_addr()?;

    let mut config =
        ServerConfig::new(args.listen, Identity::generate_self_signed(DEV_CERT_NAMES)?);
    let mut web = WebTransportConfig::default();
    // Only this page may open sessions (a browser names the page's origin in its request).
    web.allowed_origins = vec![
        format!("http://{http_addr}"),
        format!("http://localhost:{}", http_addr.port()),
    ];
    config.webtransport = Some(web);
    let server = Arc::new(Server::bind(config).await?);
    let game_addr = server.local_addr();

    eprintln!("game server on udp://{game_addr} (native clients and WebTransport)");
    for hash in server.browser_certificate_hashes() {
        eprintln!("browser certificate hash: {hash}");
    }
    eprintln!("open http://{http_addr} in Chromium or Chrome");

    let page = {
        let server = server.clone();
        tokio::spawn(http::serve(http, move |request| match request.route() {
            "/" | "/index.html" => Response::html(PAGE),
            "/quicfeed.js" => Response::javascript(CLIENT),
            "/config.json" => Response::json(page_config(&server, game_addr)),
            _ => Response::not_found(),
        }))
    };
    let ticker = tokio::spawn(tick(server.clone(), args.feed_hz, args.lane_hz));
    let acceptor = {
        let server = server.clone();
        tokio::spawn(async move {
            while let Some(session) = server.accept().await {
                let player = session.player_id();
                tracing::info!(%player, "browser player joined");
                tokio::spawn(async move {
                    let why = answer_pings(session).await;
                    tracing::info!(%player, reason = %why, "browser player left");
                });
            }
        })
    };

    tokio::signal::ctrl_c().await?;
    eprintln!("shutting down");
    ticker.abort();
    page.abort();
    server
        .shutdown(Reason::ServerShutdown, "server stopped by operator")
        .await;
    acceptor.await?;
    Ok(())
}

/// What the page needs to connect: the WebTransport URL (127.0.0.1, not localhost: Chromium
/// tries `[::1]` first for WebTransport) and the certificate hashes to pin, current and next.
fn page_config(server: &Server, game_addr: SocketAddr) -> String {
    let hashes: Vec<String> = server
        .browser_certificate_hashes()
        .iter()
        .map(|h| h.to_string())
        .collect();
    serde_json::json!({
        "url": format!("https://127.0.0.1:{}/quicfeed", game_addr.port()),
        "hashes": hashes,
    })
    .to_string()
}

/// The game loop: a feed message with the tick and player count at `feed_hz`, and a lane
/// snapshot of eight moving dots at `lane_hz`, each encoded once and sent to every session.
async fn tick(server: Arc<Server>, feed_hz: u32, lane_hz: u32) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / lane_hz.max(1));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let feed_every = u64::from((lane_hz / feed_hz.max(1)).max(1));
    let start = tokio::time::Instant::now();
    for tick in 0u64.. {
        ticker.tick().await;
        let t = start.elapsed().as_secs_f64();
        let dots: Vec<[f64; 2]> = (0..8)
            .map(|i| {
                let phase = t * 0.8 + f64::from(i) * std::f64::consts::TAU / 8.0;
                [
                    0.5 + 0.4 * phase.cos(),
                    0.5 + 0.4 * (2.0 * phase).sin() / 2.0,
                ]
            })
            .collect();
        let lane = serde_json::json!({ "tick": tick, "dots": dots }).to_string();
        server.broadcast_lane(&Prepared::from_bytes(lane.into_bytes()));
        if tick % feed_every == 0 {
            let feed = serde_json::json!({
                "tick": tick / feed_every,
                "players": server.session_count(),
            })
            .to_string();
            server.broadcast_feed(&Prepared::from_bytes(feed.into_bytes()));
        }
    }
}

/// Answers every JSON message on main with `{"pong": <the message>}` until the session ends;
/// returns why it ended.
async fn answer_pings(session: Session) -> quicfeed::Disconnect {
    loop {
        let request = match session.main().recv_bytes().await {
            Ok(bytes) => bytes,
            Err(RecvError::Decode(_)) => continue,
            Err(_) => break,
        };
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&request) else {
            tracing::warn!(player = %session.player_id(), "a message on main is not JSON");
            continue;
        };
        let reply = serde_json::json!({ "pong": value }).to_string();
        if session.main().send_bytes(reply.as_bytes()).await.is_err() {
            break;
        }
    }
    session.closed().await
}
