//! Feed fan-out: one server sends a 200-byte message to every client at 60 Hz, for N = 100,
//! 500 and 1000 clients, all on this machine: quicfeed (`Server::broadcast_feed`), bare quinn
//! (one unidirectional stream per client, written in turn) and renet (a reliable ordered
//! channel, `broadcast_message`).
//!
//! The server runs on its own runtime (threads `qf-srv*`), the clients on another (`qf-cli*`),
//! so the server's CPU time can be read per thread. Both share the machine's cores, so client
//! work weighs on the figures of every contestant alike.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quicfeed::{Client, ClientConfig, Prepared, ServerConfig};
use renet::DefaultChannel;
use serde_json::json;

use crate::common::{Summary, Tls, identity, loopback, now_us, runtime, server, thread_cpu};
use crate::renet_side::{self, stamp_of, stamped};
use crate::report::{Section, ms};

const TICK: Duration = Duration::from_micros(16_667);
const SIZE: usize = 200;

/// Runs one contestant at one N.
type Contestant = fn(usize, &Plan) -> Outcome;

/// One contestant's run at one N.
#[derive(Debug, serde::Serialize)]
struct Outcome {
    clients: usize,
    latency_ms: Summary,
    delivered: f64,
    server_cpu_per_tick_ms: f64,
}

/// Latencies (µs) of the messages a client received with a sequence number in the measured
/// window.
type Samples = Arc<Mutex<Vec<u32>>>;

/// Records one received message.
fn record(samples: &Samples, message: &[u8], window: (u64, u64)) {
    let Some(seq) = message
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
    else {
        return;
    };
    if seq < window.0 || seq >= window.1 {
        return;
    }
    if let Some(sent) = stamp_of(message) {
        let latency = now_us().saturating_sub(sent).min(u64::from(u32::MAX)) as u32;
        samples.lock().expect("samples").push(latency);
    }
}

/// The measured window in ticks: after `warm` ticks, `measured` ticks.
struct Plan {
    warm: u64,
    measured: u64,
}

impl Plan {
    fn window(&self) -> (u64, u64) {
        (self.warm, self.warm + self.measured)
    }
    fn total(&self) -> u64 {
        self.warm + self.measured
    }
}

fn outcome(clients: usize, plan: &Plan, samples: &[Samples], cpu: Duration) -> Outcome {
    let all: Vec<u32> = samples
        .iter()
        .flat_map(|s| s.lock().expect("samples").clone())
        .collect();
    let expected = plan.measured as f64 * clients as f64;
    Outcome {
        clients,
        delivered: all.len() as f64 / expected,
        latency_ms: Summary::of_us(&all),
        server_cpu_per_tick_ms: cpu.as_secs_f64() * 1e3 / plan.total() as f64,
    }
}

/// Sends a tick's message through `send` at 60 Hz for the plan's ticks; the server CPU used.
async fn tick_loop<F, Fut>(plan: &Plan, mut send: F) -> Duration
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let cpu0 = thread_cpu("qf-srv").unwrap_or_default();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for seq in 0..plan.total() {
        ticker.tick().await;
        send(seq).await;
    }
    thread_cpu("qf-srv")
        .unwrap_or_default()
        .saturating_sub(cpu0)
}

fn quicfeed_run(clients: usize, plan: &Plan) -> Outcome {
    let server_rt = runtime("qf-srv", 2);
    let client_rt = runtime("qf-cli", 2);
    let (server, trust) = server_rt.block_on(server(ServerConfig::new(loopback(), identity())));
    let server = Arc::new(server);
    let addr = server.local_addr();
    let window = plan.window();
    let samples: Vec<Samples> = (0..clients).map(|_| Samples::default()).collect();
    // Connect in batches; each client reads its feed on the client runtime.
    let sessions = client_rt.block_on(async {
        let config = ClientConfig::new(addr, trust);
        let mut sessions = Vec::new();
        for batch in samples.chunks(50) {
            let connects = batch.iter().map(|_| Client::connect(&config));
            for session in futures_join(connects.collect()).await {
                sessions.push(session.expect("connect"));
            }
        }
        sessions
    });
    let mut handles = Vec::new();
    for (session, samples) in sessions.into_iter().zip(&samples) {
        let (handle, main, feed) = session.into_parts();
        handles.push((handle, main));
        let samples = samples.clone();
        client_rt.spawn(async move {
            let (_, feed) = feed.split();
            while let Ok(message) = feed.recv_bytes().await {
                record(&samples, &message, window);
            }
        });
    }
    let cpu = server_rt.block_on(async {
        // Keep the server's sessions (dropping one ends it).
        let mut accepted = Vec::new();
        while accepted.len() < clients {
            accepted.push(server.accept().await.expect("session"));
        }
        let cpu = tick_loop(plan, |seq| {
            let server = server.clone();
            async move {
                let message = Prepared::from_bytes(stamped(seq, SIZE));
                let report = server.broadcast_feed(&message);
                debug_assert!(report.failed.is_empty());
            }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(accepted);
        cpu
    });
    let outcome = outcome(clients, plan, &samples, cpu);
    drop(handles);
    client_rt.shutdown_background();
    server_rt.shutdown_background();
    outcome
}

/// Runs futures concurrently on the calling task; their outputs in order.
async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

fn bare_quinn_run(clients: usize, plan: &Plan) -> Outcome {
    let server_rt = runtime("qf-srv", 2);
    let client_rt = runtime("qf-cli", 2);
    let tls = Tls::generate();
    let endpoint = {
        let _guard = server_rt.enter();
        tls.quinn_server()
    };
    let addr = endpoint.local_addr().expect("addr");
    let window = plan.window();
    let samples: Vec<Samples> = (0..clients).map(|_| Samples::default()).collect();
    // The server opens one stream per client and writes a byte to make it visible.
    let streams = server_rt.spawn({
        let endpoint = endpoint.clone();
        async move {
            let mut streams = Vec::new();
            while streams.len() < clients {
                let conn = endpoint
                    .accept()
                    .await
                    .expect("incoming")
                    .await
                    .expect("conn");
                let mut stream = conn.open_uni().await.expect("stream");
                stream.write_all(&[0]).await.expect("declare");
                streams.push((conn, stream));
            }
            streams
        }
    });
    let connections = client_rt.block_on(async {
        let mut connections = Vec::new();
        for batch in samples.chunks(50) {
            let connects = batch.iter().map(|_| async {
                let endpoint = tls.quinn_client();
                let conn = endpoint
                    .connect(addr, "localhost")
                    .expect("connect")
                    .await
                    .expect("connection");
                (endpoint, conn)
            });
            connections.extend(futures_join(connects.collect()).await);
        }
        connections
    });
    for ((_, conn), samples) in connections.iter().zip(&samples) {
        let conn = conn.clone();
        let samples = samples.clone();
        client_rt.spawn(async move {
            let mut stream = conn.accept_uni().await.expect("stream");
            let mut declared = [0u8; 1];
            stream.read_exact(&mut declared).await.expect("declare");
            let mut message = [0u8; SIZE];
            while stream.read_exact(&mut message).await.is_ok() {
                record(&samples, &message, window);
            }
        });
    }
    let cpu = server_rt.block_on(async {
        let streams = Arc::new(tokio::sync::Mutex::new(streams.await.expect("streams")));
        let cpu = tick_loop(plan, |seq| {
            let streams = streams.clone();
            async move {
                let message = stamped(seq, SIZE);
                for (_, stream) in streams.lock().await.iter_mut() {
                    let _ = stream.write_all(&message).await;
                }
            }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        cpu
    });
    let outcome = outcome(clients, plan, &samples, cpu);
    drop(connections);
    client_rt.shutdown_background();
    server_rt.shutdown_background();
    outcome
}

fn renet_run(clients: usize, plan: &Plan) -> Outcome {
    let server = renet_side::Server::start(
        renet_side::Role::Broadcast {
            tick: TICK,
            size: SIZE,
        },
        clients,
    );
    let window = plan.window();
    let samples: Samples = Samples::default();
    let stop = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(AtomicU64::new(0));
    let reader = std::thread::Builder::new()
        .name("qf-renet-cli".into())
        .spawn({
            let (addr, samples, stop, connected) = (
                server.addr,
                samples.clone(),
                stop.clone(),
                connected.clone(),
            );
            move || {
                let mut all = renet_side::connect_many(addr, clients);
                connected.store(
                    all.iter().filter(|c| c.client.is_connected()).count() as u64,
                    Ordering::SeqCst,
                );
                while !stop.load(Ordering::Relaxed) {
                    for client in &mut all {
                        client.poll();
                        while let Some(message) = client
                            .client
                            .receive_message(DefaultChannel::ReliableOrdered)
                        {
                            record(&samples, &message, window);
                        }
                    }
                    std::thread::yield_now();
                }
            }
        })
        .expect("renet clients");
    while connected.load(Ordering::SeqCst) == 0 && !reader.is_finished() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let cpu0 = thread_cpu("qf-renet-srv").unwrap_or_default();
    let started = Instant::now();
    server.sending.store(true, Ordering::Relaxed);
    let total = TICK * plan.total() as u32;
    std::thread::sleep(total.saturating_sub(started.elapsed()));
    server.sending.store(false, Ordering::Relaxed);
    let cpu = thread_cpu("qf-renet-srv")
        .unwrap_or_default()
        .saturating_sub(cpu0);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    let sent = server.stop();
    let mut outcome = outcome(clients, plan, &[samples], cpu);
    // Count CPU per tick actually sent (the loop sleeps to each tick's time).
    if sent > 0 {
        outcome.server_cpu_per_tick_ms = cpu.as_secs_f64() * 1e3 / sent as f64;
    }
    if connected.load(Ordering::SeqCst) < clients as u64 {
        outcome.delivered = f64::NAN;
    }
    outcome
}

pub(crate) fn run(quick: bool) -> Section {
    let (counts, plan): (&[usize], Plan) = if quick {
        (
            &[50],
            Plan {
                warm: 30,
                measured: 60,
            },
        )
    } else {
        (
            &[100, 500, 1000],
            Plan {
                warm: 60,
                measured: 600,
            },
        )
    };
    let tick_ms = TICK.as_secs_f64() * 1e3;
    let mut section = Section::new(
        "Feed fan-out at 60 Hz x 200 B",
        &format!(
            "One server sends a 200-byte message to each of N clients every 16.7 ms: {} \
             measured ticks after {} warm-up ticks. Latency: from the server's send call to \
             the client's receipt (one clock, one process). Delivered: messages received in the \
             measured window out of N x ticks. Server CPU: user + system time of the server's \
             threads per tick. quicfeed: `Server::broadcast_feed` with one `Prepared` message \
             (reliable feed channel). Bare quinn: one unidirectional stream per client, written \
             in turn each tick (quinn's defaults). renet 2: `broadcast_message` on a reliable \
             ordered channel from a game loop (receive, broadcast, send, sleep to the next tick); \
             all clients are polled in turn by one thread, in a loop. Server and clients share the 2 cores.",
            plan.measured, plan.warm
        ),
        &[
            "contestant",
            "N",
            "p50",
            "p99",
            "p99.9",
            "delivered",
            "server CPU / tick",
        ],
    );
    let contestants: [(&str, Contestant); 3] = [
        ("quicfeed", quicfeed_run),
        ("bare quinn", bare_quinn_run),
        ("renet 2", renet_run),
    ];
    let mut figures = Vec::new();
    let mut capacity = Vec::new();
    for (name, run) in contestants {
        let mut largest = 0;
        for &n in counts {
            eprintln!("  fanout {name} N={n}");
            let o = run(n, &plan);
            section.row(vec![
                name.to_owned(),
                n.to_string(),
                ms(o.latency_ms.p50),
                ms(o.latency_ms.p99),
                ms(o.latency_ms.p999),
                format!("{:.2} %", o.delivered * 100.0),
                ms(o.server_cpu_per_tick_ms),
            ]);
            if o.latency_ms.p99 < tick_ms && o.delivered > 0.999 {
                largest = n;
            }
            if name == "quicfeed" && n == 1000 {
                section.target(
                    "fan-out: 1000 clients at 60 Hz, p99",
                    ms(o.latency_ms.p99),
                    "< 16.7 ms",
                    o.latency_ms.p99 < tick_ms,
                );
            }
            figures.push(json!({"contestant": name, "outcome": o}));
        }
        capacity.push((name, largest));
    }
    section.note(format!(
        "Largest N with p99 under one tick (16.7 ms) and everything delivered: {}.",
        capacity
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if !quick {
        section.target(
            "fan-out capacity vs bare quinn (largest N with p99 < tick)",
            format!("{} vs {}", capacity[0].1, capacity[1].1),
            ">= bare quinn",
            capacity[0].1 >= capacity[1].1,
        );
    }
    section.figures = json!({"runs": figures, "capacity": capacity});
    section
}
