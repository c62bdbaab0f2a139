//! Shared by the examples: the demo game's messages and its server-side session loop.
#![allow(dead_code)]

pub(crate) mod http;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quicfeed::{Disconnect, RecvError, Session};
use serde::{Deserialize, Serialize};
use tokio::time::MissedTickBehavior;

/// Client -> server requests on main.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Request {
    /// Answered with `Response::Pong` carrying the same sequence number.
    Ping { seq: u64 },
    /// Echoed back as `Response::Said`.
    Say(String),
}

/// Server -> client replies on main.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Response {
    Pong { seq: u64 },
    Said(String),
}

/// One entity of the game state.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Entity {
    pub(crate) id: u32,
    pub(crate) position: (f32, f32),
    pub(crate) velocity: (f32, f32),
}

/// The game state the server sends on feed every tick (about 180 bytes encoded).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    pub(crate) tick: u64,
    pub(crate) server_time_us: u64,
    pub(crate) entities: Vec<Entity>,
}

impl Snapshot {
    pub(crate) fn at(tick: u64) -> Snapshot {
        let t = tick as f32 / 60.0;
        Snapshot {
            tick,
            server_time_us: now_us(),
            entities: (0..8)
                .map(|id| Entity {
                    id,
                    position: ((t + id as f32).cos() * 10.0, (t + id as f32).sin() * 10.0),
                    velocity: (-(t + id as f32).sin(), (t + id as f32).cos()),
                })
                .collect(),
        }
    }
}

/// Microseconds since the Unix epoch.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Logs to stderr; `RUST_LOG` overrides the default level.
pub(crate) fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// The server side of one player's session: answers requests on main, and sends a snapshot on
/// feed at `tick_hz` until the session ends. Returns why it ended.
pub(crate) async fn serve_session(session: Session, tick_hz: u32) -> Disconnect {
    let player = session.player_id();
    let (handle, main, feed) = session.into_parts();
    let feed_task = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(1) / tick_hz.max(1));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut tick = 0u64;
        loop {
            ticker.tick().await;
            if feed.send(&Snapshot::at(tick)).await.is_err() {
                break;
            }
            tick += 1;
        }
    });
    loop {
        let reply = match main.recv::<Request>().await {
            Ok(Request::Ping { seq }) => Response::Pong { seq },
            Ok(Request::Say(text)) => {
                tracing::info!(%player, %text, "player says");
                Response::Said(text)
            }
            Err(RecvError::Decode(e)) => {
                tracing::warn!(%player, error = %e, "undecodable request");
                continue;
            }
            Err(_) => break,
        };
        if main.send(&reply).await.is_err() {
            break;
        }
    }
    feed_task.abort();
    handle.closed().await
}

/// The exit of an example's `main`: errors are for people, so their message, never a `Debug`
/// dump.
pub(crate) fn exit_code(result: Result<(), Box<dyn std::error::Error>>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
