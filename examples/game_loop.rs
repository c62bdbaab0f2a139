//! A fixed-step game on quicfeed's polling API: a 60 Hz server loop and a 60 Hz loop per
//! client, each on a plain thread of its own, with no tasks of their own and no `.await`.
//!
//! ```text
//! cargo run --release --example game_loop                  # 3 clients for 3 s
//! cargo run --release --example game_loop -- --clients 8 --seconds 10
//! ```
//!
//! The tokio runtime only carries the network (and runs `bind` and `connect`). Each server
//! tick takes in new players (`try_accept`), applies every input that arrived
//! (`drain`), moves the players, and sends one snapshot to everyone on the datagram lane
//! (`broadcast_lane`) and, once a second, the scores on the reliable feed
//! (`broadcast_feed`). Each client tick sends its input on main (`try_send`) and reads the
//! newest snapshot (`try_recv_latest`). A snapshot says which input of each player it
//! includes, so a client measures the time from pressing a key to seeing its effect.
//!
//! Exits 0, or 1 if a client saw no snapshot or none of its inputs took effect.

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use quicfeed::{
    AuthDecision, AuthRequest, Client, ClientConfig, Identity, PlayerId, Prepared, Reason,
    RecvError, Server, ServerConfig, Session, SessionEvent, Trust,
};
use serde::{Deserialize, Serialize};
use tokio::runtime::{Handle, Runtime};

/// The fixed step of both loops.
const TICK: Duration = Duration::from_micros(16_667);

#[derive(Parser)]
#[command(about = "quicfeed game loop: a 60 Hz server and clients on the polling API")]
struct Args {
    /// Number of clients, each with its own 60 Hz loop.
    #[arg(long, default_value_t = 3)]
    clients: usize,
    /// Seconds the clients play.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
}

/// Client -> server on main, once a tick: which way the player steers.
#[derive(Debug, Serialize, Deserialize)]
struct Input {
    /// The client's tick number, echoed in snapshots once applied.
    seq: u32,
    direction: (i8, i8),
}

/// Server -> every client on the lane, once a tick.
#[derive(Debug, Serialize, Deserialize)]
struct Snapshot {
    tick: u64,
    players: Vec<PlayerState>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct PlayerState {
    id: u64,
    position: (f32, f32),
    /// The newest input of this player the server has applied.
    applied: u32,
}

/// Server -> every client on the reliable feed, once a second.
#[derive(Debug, Serialize, Deserialize)]
struct Scores {
    second: u64,
    /// Distance travelled per player, in the game's units.
    travelled: Vec<(u64, f32)>,
}

/// What the authenticator decided about a player, kept with its session.
struct Profile {
    name: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the network runtime: {e}")),
    };
    match run(&runtime, &args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => fail(&e),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

fn run(runtime: &Runtime, args: &Args) -> Result<bool, String> {
    let identity = Identity::generate_self_signed(&["localhost"]).map_err(|e| e.to_string())?;
    let trust = Trust::Certificate(identity.certificate().clone());
    let config = ServerConfig::new(([127, 0, 0, 1], 0).into(), identity).authenticator(
        |request: AuthRequest| async move {
            match String::from_utf8(request.credentials.to_vec()) {
                Ok(name) if !name.is_empty() => AuthDecision::Accept.with_data(Profile { name }),
                _ => AuthDecision::reject("send your name as credentials"),
            }
        },
    );
    let server = runtime
        .block_on(Server::bind(config))
        .map_err(|e| e.to_string())?;
    println!("server on {}, 60 Hz", server.local_addr());

    let play_for = Duration::from_secs_f64(args.seconds.max(0.5));
    let server_thread = thread::spawn({
        let server = server.clone();
        // The server runs a little longer than the clients play, so it sees them leave.
        move || server_loop(&server, play_for + Duration::from_secs(1))
    });
    let clients: Vec<_> = (0..args.clients)
        .map(|n| {
            let mut config = ClientConfig::new(server.local_addr(), trust.clone());
            let names = ["ada", "bo", "cy", "dee", "eli", "fay", "gus", "hal"];
            let name = names.get(n % names.len()).copied().unwrap_or("guest");
            config.credentials = Bytes::from(format!("{name}{}", n / names.len()));
            let network = runtime.handle().clone();
            thread::spawn(move || client_loop(&network, &config, play_for))
        })
        .collect();

    let mut ok = true;
    for (n, client) in clients.into_iter().enumerate() {
        match client.join() {
            Ok(Ok(report)) => {
                ok &= report.snapshots > 0 && report.applied > 0;
                println!("{report}");
            }
            Ok(Err(e)) => {
                ok = false;
                println!("client {n}: {e}");
            }
            Err(_) => {
                ok = false;
                println!("client {n}: its thread panicked");
            }
        }
    }
    match server_thread.join() {
        Ok(report) => println!("{report}"),
        Err(_) => return Err("the server loop panicked".into()),
    }
    runtime.block_on(server.shutdown(Reason::ServerShutdown, "game over"));
    Ok(ok)
}

/// Sleeps until `next`, then moves it one tick on (skipping ticks that are long gone, so a
/// stall does not make the loop race to catch up). Returns whether the tick started late.
fn wait_for_tick(next: &mut Instant) -> bool {
    let now = Instant::now();
    let late = now > *next + TICK / 2;
    if let Some(rest) = next.checked_duration_since(now) {
        thread::sleep(rest);
    }
    *next += TICK;
    if late {
        *next = Instant::now() + TICK;
    }
    late
}

/// One player as the server's game sees it.
struct Player {
    session: Session,
    position: (f32, f32),
    direction: (i8, i8),
    applied: u32,
    travelled: f32,
}

struct ServerReport {
    ticks: u64,
    late: u64,
    joined: usize,
    inputs: u64,
    busiest_tick: Duration,
}

impl std::fmt::Display for ServerReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "server: {} ticks ({} late), {} players joined, {} inputs applied, busiest tick {:.2} ms",
            self.ticks,
            self.late,
            self.joined,
            self.inputs,
            self.busiest_tick.as_secs_f64() * 1e3
        )
    }
}

fn server_loop(server: &Server, run_for: Duration) -> ServerReport {
    let mut players: BTreeMap<PlayerId, Player> = BTreeMap::new();
    let mut events = server.events();
    let mut report = ServerReport {
        ticks: 0,
        late: 0,
        joined: 0,
        inputs: 0,
        busiest_tick: Duration::ZERO,
    };
    let end = Instant::now() + run_for;
    let mut next = Instant::now();
    while Instant::now() < end {
        report.late += u64::from(wait_for_tick(&mut next));
        let started = Instant::now();
        report.ticks += 1;

        // New players.
        while let Some(session) = server.try_accept() {
            let name = session
                .user_data::<Profile>()
                .map_or("?", |p| p.name.as_str());
            println!("{} joined as {}", name, session.player_id());
            report.joined += 1;
            players.insert(
                session.player_id(),
                Player {
                    session,
                    position: (0.0, 0.0),
                    direction: (0, 0),
                    applied: 0,
                    travelled: 0.0,
                },
            );
        }
        // What happened to their connections.
        while let Some(event) = events.try_next() {
            if let SessionEvent::Resumed { outage, .. } = event.event {
                println!(
                    "{} resumed after {:.1} s",
                    event.player_id,
                    outage.as_secs_f64()
                );
            }
        }
        // Inputs, then the step.
        players.retain(|id, player| {
            for input in player.session.main().drain::<Input>() {
                match input {
                    Ok(input) => {
                        player.direction = input.direction;
                        player.applied = input.seq;
                        report.inputs += 1;
                    }
                    Err(RecvError::Closed(why)) => {
                        println!("{id} left: {why}");
                        return false;
                    }
                    Err(e) => println!("{id}: {e}"),
                }
            }
            let step = (
                f32::from(player.direction.0) / 60.0,
                f32::from(player.direction.1) / 60.0,
            );
            player.position.0 += step.0;
            player.position.1 += step.1;
            player.travelled += step.0.hypot(step.1);
            true
        });
        // Everyone's state, to everyone, on the lane; scores once a second on the feed.
        let snapshot = Snapshot {
            tick: report.ticks,
            players: players
                .iter()
                .map(|(id, p)| PlayerState {
                    id: id.0,
                    position: p.position,
                    applied: p.applied,
                })
                .collect(),
        };
        if let Ok(snapshot) = Prepared::new(&snapshot) {
            server.broadcast_lane(&snapshot);
        }
        if report.ticks.is_multiple_of(60) {
            let scores = Scores {
                second: report.ticks / 60,
                travelled: players.iter().map(|(id, p)| (id.0, p.travelled)).collect(),
            };
            if let Ok(scores) = Prepared::new(&scores) {
                server.broadcast_feed(&scores);
            }
        }
        report.busiest_tick = report.busiest_tick.max(started.elapsed());
    }
    report
}

struct ClientReport {
    player: PlayerId,
    ticks: u64,
    snapshots: u64,
    scores: u64,
    applied: u64,
    /// Input to snapshot showing it, per applied input.
    delays: Vec<Duration>,
}

impl std::fmt::Display for ClientReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut delays = self.delays.clone();
        delays.sort();
        let at = |q: f64| {
            let i = ((delays.len() as f64 - 1.0) * q).round() as usize;
            delays.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
        };
        write!(
            f,
            "{}: {} ticks, {} snapshots, {} score updates, {} inputs seen applied, input to screen p50 {:.1} ms p99 {:.1} ms",
            self.player,
            self.ticks,
            self.snapshots,
            self.scores,
            self.applied,
            at(0.5),
            at(0.99)
        )
    }
}

fn client_loop(
    network: &Handle,
    config: &ClientConfig,
    play_for: Duration,
) -> Result<ClientReport, String> {
    let session = network
        .block_on(Client::connect(config))
        .map_err(|e| e.to_string())?;
    let player = session.player_id();
    let mut report = ClientReport {
        player,
        ticks: 0,
        snapshots: 0,
        scores: 0,
        applied: 0,
        delays: Vec::new(),
    };
    let lane = session.lane();
    let mut sent_at: HashMap<u32, Instant> = HashMap::new();
    let mut newest_applied = 0u32;
    let end = Instant::now() + play_for;
    let mut next = Instant::now();
    let mut seq = 0u32;
    while Instant::now() < end {
        wait_for_tick(&mut next);
        report.ticks += 1;
        // Steer in a slow circle: a new direction every half second.
        seq += 1;
        let phase = (seq / 30) % 4;
        let direction = [(1, 0), (0, 1), (-1, 0), (0, -1)][phase as usize];
        match session.main().try_send(&Input { seq, direction }) {
            Ok(()) => {
                sent_at.insert(seq, Instant::now());
            }
            Err(e) => println!("{player}: input not sent: {e}"),
        }
        // The newest snapshot only: older ones are history.
        match lane.try_recv_latest::<Snapshot>() {
            Some(Ok(snapshot)) => {
                report.snapshots += 1;
                if let Some(me) = snapshot.players.iter().find(|p| p.id == player.0)
                    && me.applied > newest_applied
                {
                    newest_applied = me.applied;
                    report.applied += 1;
                    if let Some(at) = sent_at.remove(&me.applied) {
                        report.delays.push(at.elapsed());
                    }
                    sent_at.retain(|&s, _| s > me.applied);
                }
            }
            Some(Err(e)) => return Err(format!("{player}: lane failed: {e}")),
            None => {}
        }
        for scores in session.feed().drain::<Scores>() {
            match scores {
                Ok(_) => report.scores += 1,
                Err(e) => return Err(format!("{player}: feed failed: {e}")),
            }
        }
    }
    network.block_on(session.close_gracefully(Reason::Normal, "done playing"));
    Ok(report)
}
