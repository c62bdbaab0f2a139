//! Feed fan-out: one server sends a 200-byte message to every client at 60 Hz, for N = 100,
//! 500 and 1000 clients, all on this machine: quicfeed (`Server::broadcast_feed`), bare quinn
//! (one unidirectional stream per client, written in turn) and renet (a reliable ordered
//! channel, `broadcast_message`).
//!
//! The server runs in this process, on its own runtime (threads `qf-srv*`, or renet's
//! `qf-renet-srv`); the clients run in a child process (this same binary, re-run with the
//! hidden argument `--fanout-clients`, see [`child_role`]), so the server's CPU time, read per
//! thread, is the server's alone, and per client per tick it can be set against the baselines'.
//! The two processes still share the machine's cores, so client work still weighs on latency.
//!
//! For a count that does not move with the machine's load, `QUICFEED_BENCH_FANOUT` narrows
//! the scenario to one contestant, one N and a number of measured ticks
//! (`contestant:N:ticks`, say `quicfeed:10:300` or `bare quinn:10:900`); run under callgrind
//! (`--trace-children=no`, so the clients run at full speed), two runs' difference of
//! instructions over their difference of client-ticks is the server's cost per client-tick,
//! without its start-up (BENCHMARKS.md shows the commands).
//!
//! The clients' process speaks a line protocol on its standard streams: it prints
//! `connected K` once its clients are connected, waits for a line on stdin (or its end, or
//! its own deadline), prints its samples as one line of JSON ([`ClientReport`]) and exits.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quicfeed::{Client, ClientConfig, Prepared, ServerConfig, Trust};
use renet::DefaultChannel;
use rustls::pki_types::CertificateDer;
use serde_json::json;

use crate::common::{
    Summary, Tls, identity, loopback, now_us, runtime, server, thread_cpu_precise,
};
use crate::renet_side::{self, stamp_of, stamped};
use crate::report::{Section, ms};

const TICK: Duration = Duration::from_micros(16_667);
const SIZE: usize = 200;
/// The hidden argument that makes this binary the fan-out's clients' process.
const CHILD_ARG: &str = "--fanout-clients";
/// How long the clients' process may take to connect all its clients.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long it may take to report once told to stop.
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs one contestant at one N.
type Contestant = fn(usize, &Plan) -> Outcome;

/// One contestant's run at one N.
#[derive(Debug, serde::Serialize)]
struct Outcome {
    clients: usize,
    latency_ms: Summary,
    delivered: f64,
    server_cpu_per_tick_ms: f64,
    server_cpu_per_client_tick_us: f64,
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
    /// The sequence numbers of the measured ticks, as a half-open range.
    fn window(&self) -> (u64, u64) {
        (self.warm, self.warm + self.measured)
    }
    /// Every tick sent, warm-up included.
    fn total(&self) -> u64 {
        self.warm + self.measured
    }
}

/// A contestant's figures from the clients' report and the server's CPU time over `ticks`
/// measured ticks (`None`: not readable on this system).
fn outcome(
    clients: usize,
    plan: &Plan,
    report: &ClientReport,
    cpu: Option<Duration>,
    ticks: u64,
) -> Outcome {
    let expected = plan.measured as f64 * clients as f64;
    let cpu_s = cpu.map_or(f64::NAN, |cpu| cpu.as_secs_f64());
    let ticks = ticks.max(1) as f64;
    Outcome {
        clients,
        delivered: if report.connected < clients {
            f64::NAN
        } else {
            report.samples.len() as f64 / expected
        },
        latency_ms: Summary::of_us(&report.samples),
        server_cpu_per_tick_ms: cpu_s * 1e3 / ticks,
        server_cpu_per_client_tick_us: cpu_s * 1e6 / (ticks * clients.max(1) as f64),
    }
}

/// Sends a tick's message through `send` at 60 Hz for the plan's ticks; the server's CPU time
/// over the measured ticks: from just before the first measured tick's send to the next tick
/// after the last one (so the window holds whole ticks, the last one's transmission included).
async fn tick_loop<F, Fut>(plan: &Plan, mut send: F) -> Option<Duration>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cpu0 = None;
    for seq in 0..plan.total() {
        ticker.tick().await;
        if seq == plan.warm {
            cpu0 = thread_cpu_precise("qf-srv");
        }
        send(seq).await;
    }
    ticker.tick().await;
    let cpu1 = thread_cpu_precise("qf-srv");
    Some(cpu1?.saturating_sub(cpu0?))
}

/// What the clients' process reports when it ends: how many clients connected, and the
/// latencies (µs) of every message received in the measured window.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct ClientReport {
    connected: usize,
    samples: Vec<u32>,
}

/// The clients' process, seen from the server's side. Dropping it kills the process if it is
/// still running (so none is ever left behind, even when a run panics).
struct ClientsProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The process's stdout, line by line, read by a thread of its own.
    lines: mpsc::Receiver<String>,
}

impl ClientsProcess {
    /// Starts `clients` clients of `kind` (`quicfeed`, `quinn` or `renet`) against `server`,
    /// trusting `certificate` (DER; the QUIC contestants), in a child process.
    fn start(
        kind: &str,
        clients: usize,
        server: SocketAddr,
        certificate: Option<&[u8]>,
        plan: &Plan,
    ) -> ClientsProcess {
        let certificate = certificate.map_or_else(|| "-".to_owned(), hex);
        let mut child = Command::new(std::env::current_exe().expect("the bench's own path"))
            .arg(CHILD_ARG)
            .arg(kind)
            .arg(clients.to_string())
            .arg(server.to_string())
            .arg(certificate)
            .arg(plan.warm.to_string())
            .arg(plan.measured.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the fan-out clients' process");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("the clients' stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::Builder::new()
            .name("qf-fanout-pipe".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if sender.send(line).is_err() {
                        break;
                    }
                }
            })
            .expect("the clients' stdout reader");
        ClientsProcess {
            child,
            stdin,
            lines,
        }
    }

    /// Waits for the process to say its clients are connected; how many are.
    fn connected(&mut self) -> usize {
        let line = self
            .lines
            .recv_timeout(CONNECT_TIMEOUT)
            .expect("the fan-out clients' process never said it was connected");
        line.strip_prefix("connected ")
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("the fan-out clients' process said {line:?}"))
    }

    /// Tells the process to stop, and reads its report; the process then ends by itself (it
    /// is killed if it does not within a few seconds).
    fn finish(mut self) -> ClientReport {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "stop");
        }
        let line = self
            .lines
            .recv_timeout(REPORT_TIMEOUT)
            .expect("the fan-out clients' process never reported");
        let report = serde_json::from_str(&line).expect("the fan-out clients' report");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        report
    }
}

impl Drop for ClientsProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Bytes as lowercase hex (the certificate on the clients' command line).
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a [`hex`] string; `None` if it is not one.
fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// In the clients' process (this binary started with [`CHILD_ARG`] first): runs the clients
/// and returns the exit status; `None` in any other process. Called first thing in `main`.
///
/// Arguments: `KIND N SERVER_ADDR CERT_HEX WARM MEASURED` (`CERT_HEX` is `-` for renet).
pub(crate) fn child_role() -> Option<i32> {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some(CHILD_ARG) {
        return None;
    }
    let args: Vec<String> = args.collect();
    let parsed = match args.as_slice() {
        [kind, n, addr, certificate, warm, measured] => (|| {
            Some((
                kind.clone(),
                n.parse::<usize>().ok()?,
                addr.parse::<SocketAddr>().ok()?,
                match certificate.as_str() {
                    "-" => None,
                    h => Some(CertificateDer::from(unhex(h)?)),
                },
                Plan {
                    warm: warm.parse().ok()?,
                    measured: measured.parse().ok()?,
                },
            ))
        })(),
        _ => None,
    };
    let Some((kind, clients, addr, certificate, plan)) = parsed else {
        eprintln!("{CHILD_ARG}: expected KIND N SERVER_ADDR CERT_HEX WARM MEASURED, got {args:?}");
        return Some(2);
    };
    let stop = StopSignal::listen(&plan);
    let report = match (kind.as_str(), certificate) {
        ("quicfeed", Some(certificate)) => {
            quicfeed_clients(clients, addr, certificate, &plan, &stop)
        }
        ("quinn", Some(certificate)) => quinn_clients(clients, addr, certificate, &plan, &stop),
        ("renet", None) => renet_clients(clients, addr, &plan, &stop),
        _ => {
            eprintln!("{CHILD_ARG}: unknown kind {kind:?} (or a certificate missing)");
            return Some(2);
        }
    };
    let mut stdout = std::io::stdout().lock();
    let line = serde_json::to_string(&report).expect("the clients' report as JSON");
    let written = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
    // Sessions, tasks and sockets go with the process.
    Some(if written.is_ok() { 0 } else { 1 })
}

/// In the clients' process: tells it when to stop, on a line from the parent, the end of its
/// stdin (the parent is gone), or a deadline well past the plan's ticks, whichever is first.
struct StopSignal {
    stopped: Arc<AtomicBool>,
    signal: mpsc::Receiver<()>,
    deadline: Instant,
}

impl StopSignal {
    /// Starts listening on stdin.
    fn listen(plan: &Plan) -> StopSignal {
        let stopped = Arc::new(AtomicBool::new(false));
        let (sender, signal) = mpsc::channel();
        let flag = stopped.clone();
        std::thread::Builder::new()
            .name("qf-fanout-stdin".into())
            .spawn(move || {
                let mut line = String::new();
                let _ = std::io::stdin().lock().read_line(&mut line);
                flag.store(true, Ordering::SeqCst);
                let _ = sender.send(());
            })
            .expect("the stdin listener");
        StopSignal {
            stopped,
            signal,
            deadline: Instant::now()
                + CONNECT_TIMEOUT
                + TICK * plan.total() as u32
                + REPORT_TIMEOUT,
        }
    }

    /// Whether it is time to stop (for a polling loop).
    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst) || Instant::now() >= self.deadline
    }

    /// Blocks until it is time to stop.
    fn wait(&self) {
        let _ = self
            .signal
            .recv_timeout(self.deadline.saturating_duration_since(Instant::now()));
    }
}

/// In the clients' process: says on stdout that `count` clients are connected.
fn announce(count: usize) {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "connected {count}")
        .and_then(|()| stdout.flush())
        .expect("tell the server's process the clients are connected");
}

/// All samples of every client, merged.
fn collect(connected: usize, samples: &[Samples]) -> ClientReport {
    ClientReport {
        connected,
        samples: samples
            .iter()
            .flat_map(|s| s.lock().expect("samples").clone())
            .collect(),
    }
}

/// quicfeed's server, in this process; its clients in a child process.
fn quicfeed_run(clients: usize, plan: &Plan) -> Outcome {
    let server_rt = runtime("qf-srv", 2);
    let identity = identity();
    let certificate = identity.certificate().to_vec();
    let (server, _) = server_rt.block_on(server(ServerConfig::new(loopback(), identity)));
    let server = Arc::new(server);
    // Keep the server's sessions (dropping one ends it).
    let accepting = server_rt.spawn({
        let server = server.clone();
        async move {
            let mut accepted = Vec::new();
            while accepted.len() < clients {
                match server.accept().await {
                    Some(session) => accepted.push(session),
                    None => break,
                }
            }
            accepted
        }
    });
    let mut process = ClientsProcess::start(
        "quicfeed",
        clients,
        server.local_addr(),
        Some(&certificate),
        plan,
    );
    process.connected();
    let (accepted, cpu) = server_rt.block_on(async {
        let accepted = accepting.await.expect("sessions");
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
        (accepted, cpu)
    });
    let report = process.finish();
    drop(accepted);
    server_rt.shutdown_background();
    outcome(clients, plan, &report, cpu, plan.measured)
}

/// In the clients' process: `clients` quicfeed clients reading their feeds.
fn quicfeed_clients(
    clients: usize,
    addr: SocketAddr,
    certificate: CertificateDer<'static>,
    plan: &Plan,
    stop: &StopSignal,
) -> ClientReport {
    let client_rt = runtime("qf-cli", 2);
    let window = plan.window();
    let samples: Vec<Samples> = (0..clients).map(|_| Samples::default()).collect();
    // Connect in batches; each client reads its feed on the client runtime.
    let sessions = client_rt.block_on(async {
        let config = ClientConfig::new(addr, Trust::Certificate(certificate));
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
    announce(handles.len());
    stop.wait();
    let report = collect(handles.len(), &samples);
    drop(handles);
    client_rt.shutdown_background();
    report
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

/// The bare quinn server, in this process (one unidirectional stream per client, written in
/// turn each tick); its clients in a child process.
fn bare_quinn_run(clients: usize, plan: &Plan) -> Outcome {
    let server_rt = runtime("qf-srv", 2);
    let tls = Tls::generate();
    let endpoint = {
        let _guard = server_rt.enter();
        tls.quinn_server()
    };
    let addr = endpoint.local_addr().expect("addr");
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
    let mut process =
        ClientsProcess::start("quinn", clients, addr, Some(tls.certificate.as_ref()), plan);
    process.connected();
    let (streams, cpu) = server_rt.block_on(async {
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
        (streams, cpu)
    });
    let report = process.finish();
    drop(streams);
    server_rt.shutdown_background();
    outcome(clients, plan, &report, cpu, plan.measured)
}

/// A bare quinn client endpoint on loopback that trusts `certificate` only.
fn quinn_client(certificate: &CertificateDer<'static>) -> quinn::Endpoint {
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(Tls::trusting(certificate.clone()))
            .expect("quic client config");
    let mut endpoint = quinn::Endpoint::client(loopback()).expect("quinn client");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

/// In the clients' process: `clients` bare quinn clients, each reading its one stream.
fn quinn_clients(
    clients: usize,
    addr: SocketAddr,
    certificate: CertificateDer<'static>,
    plan: &Plan,
    stop: &StopSignal,
) -> ClientReport {
    let client_rt = runtime("qf-cli", 2);
    let window = plan.window();
    let samples: Vec<Samples> = (0..clients).map(|_| Samples::default()).collect();
    let connections = client_rt.block_on(async {
        let mut connections = Vec::new();
        for batch in samples.chunks(50) {
            let connects = batch.iter().map(|_| async {
                let endpoint = quinn_client(&certificate);
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
    announce(connections.len());
    stop.wait();
    let report = collect(connections.len(), &samples);
    drop(connections);
    client_rt.shutdown_background();
    report
}

/// The renet server, in this process (its own thread, `qf-renet-srv`); its clients in a child
/// process.
fn renet_run(clients: usize, plan: &Plan) -> Outcome {
    let server = renet_side::Server::start(
        renet_side::Role::Broadcast {
            tick: TICK,
            size: SIZE,
        },
        clients,
    );
    let mut process = ClientsProcess::start("renet", clients, server.addr, None, plan);
    process.connected();
    // The server's loop counts the ticks it has sent; the window is cut on whole ticks.
    let sent_at_least = |ticks: u64| {
        let deadline = Instant::now() + TICK * (ticks as u32 + 600);
        while server.sent.load(Ordering::SeqCst) < ticks && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(500));
        }
        server.sent.load(Ordering::SeqCst)
    };
    server.sending.store(true, Ordering::Relaxed);
    let first = sent_at_least(plan.warm);
    let cpu0 = thread_cpu_precise("qf-renet-srv");
    let last = sent_at_least(plan.total());
    let cpu1 = thread_cpu_precise("qf-renet-srv");
    server.sending.store(false, Ordering::Relaxed);
    let cpu = cpu1.zip(cpu0).map(|(b, a)| b.saturating_sub(a));
    std::thread::sleep(Duration::from_millis(500));
    let report = process.finish();
    server.stop();
    outcome(clients, plan, &report, cpu, last.saturating_sub(first))
}

/// In the clients' process: `clients` renet clients, all polled in turn by this thread, in a
/// loop (renet's best case for latency).
fn renet_clients(clients: usize, addr: SocketAddr, plan: &Plan, stop: &StopSignal) -> ClientReport {
    let window = plan.window();
    let samples = Samples::default();
    let mut all = renet_side::connect_many(addr, clients);
    let connected = all.iter().filter(|c| c.client.is_connected()).count();
    announce(connected);
    while !stop.stopped() {
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
    collect(connected, &[samples])
}

/// The scenario narrowed to one contestant, one N and a number of measured ticks, from
/// `QUICFEED_BENCH_FANOUT=contestant:N:ticks` (see the module's docs).
struct Narrowed {
    contestant: String,
    clients: usize,
    ticks: u64,
}

impl Narrowed {
    fn from_env() -> Option<Narrowed> {
        let value = std::env::var("QUICFEED_BENCH_FANOUT").ok()?;
        let mut parts = value.rsplitn(3, ':');
        let parsed = (|| {
            let ticks = parts.next()?.parse().ok().filter(|&t| t > 0)?;
            let clients = parts.next()?.parse().ok().filter(|&n| n > 0)?;
            let contestant = parts.next()?.to_owned();
            Some(Narrowed {
                contestant,
                clients,
                ticks,
            })
        })();
        if parsed.is_none() {
            eprintln!(
                "QUICFEED_BENCH_FANOUT={value:?} is not contestant:N:ticks \
                 (say quicfeed:10:300); running the whole scenario"
            );
        }
        parsed
    }
}

/// Microseconds with two decimals (server CPU per client per tick), or `n/a`.
fn us(value: f64) -> String {
    if value.is_nan() {
        "n/a".to_owned()
    } else {
        format!("{value:.2} µs")
    }
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
    let narrowed = Narrowed::from_env();
    let narrowed_counts = narrowed.as_ref().map(|n| [n.clients]);
    let counts: &[usize] = narrowed_counts.as_ref().map_or(counts, |c| c.as_slice());
    let plan = Plan {
        measured: narrowed.as_ref().map_or(plan.measured, |n| n.ticks),
        ..plan
    };
    let tick_ms = TICK.as_secs_f64() * 1e3;
    let mut section = Section::new(
        "Feed fan-out at 60 Hz x 200 B",
        &format!(
            "One server sends a 200-byte message to each of N clients every 16.7 ms: {} \
             measured ticks after {} warm-up ticks. The clients run in a separate process (this \
             bench re-run as the clients' side), so the server's process holds the server \
             alone; the two processes still share the machine's 2 cores. Latency: from the \
             server's send call to the client's receipt, on the wall clock both processes read. \
             Delivered: messages received in the measured window out of N x ticks. Server CPU: \
             time on a CPU of the server's threads (the kernel's per-thread count, user and \
             system) over the measured ticks, per tick and per client per tick (that time / \
             (N x ticks)). quicfeed: `Server::broadcast_feed` with one `Prepared` message \
             (reliable feed channel). Bare quinn: one unidirectional stream per client, written \
             in turn each tick (quinn's defaults). renet 2: `broadcast_message` on a reliable \
             ordered channel from a game loop (receive, broadcast, send, sleep to the next tick); \
             all clients are polled in turn by one thread, in a loop.",
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
            "server CPU / client-tick",
        ],
    );
    let contestants: [(&str, Contestant); 3] = [
        ("quicfeed", quicfeed_run),
        ("bare quinn", bare_quinn_run),
        ("renet 2", renet_run),
    ];
    let mut figures = Vec::new();
    let mut capacity = Vec::new();
    // Server CPU per client-tick (µs) by contestant, in the order of `counts`.
    let mut per_client_tick: Vec<(&str, Vec<f64>)> = Vec::new();
    for (name, run) in contestants {
        let mut largest = 0;
        let mut cpu = Vec::new();
        for &n in counts {
            if narrowed
                .as_ref()
                .is_some_and(|only| only.contestant != name)
            {
                cpu.push(f64::NAN);
                continue;
            }
            eprintln!("  fanout {name} N={n} (clients in a separate process)");
            let o = run(n, &plan);
            section.row(vec![
                name.to_owned(),
                n.to_string(),
                ms(o.latency_ms.p50),
                ms(o.latency_ms.p99),
                ms(o.latency_ms.p999),
                format!("{:.2} %", o.delivered * 100.0),
                ms(o.server_cpu_per_tick_ms),
                us(o.server_cpu_per_client_tick_us),
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
            cpu.push(o.server_cpu_per_client_tick_us);
            figures.push(json!({"contestant": name, "outcome": o}));
        }
        capacity.push((name, largest));
        per_client_tick.push((name, cpu));
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
    // quicfeed against bare quinn at each N (a figure that could not be read is a miss).
    for (k, &n) in counts.iter().enumerate() {
        let (quicfeed, quinn) = (per_client_tick[0].1[k], per_client_tick[1].1[k]);
        section.target(
            &format!("fan-out: server CPU per client-tick at N = {n}, quicfeed vs bare quinn"),
            format!("{} vs {}", us(quicfeed), us(quinn)),
            "<= bare quinn",
            quicfeed <= quinn,
        );
    }
    section.note(
        "Server CPU per client-tick, clients in a separate process: ".to_owned()
            + &per_client_tick
                .iter()
                .map(|(name, cpu)| {
                    let cells: Vec<String> = counts
                        .iter()
                        .zip(cpu)
                        .map(|(n, v)| format!("{} at N = {n}", us(*v)))
                        .collect();
                    format!("{name} {}", cells.join(", "))
                })
                .collect::<Vec<_>>()
                .join("; ")
            + ".",
    );
    section.figures = json!({
        "clients": "separate process",
        "runs": figures,
        "capacity": capacity,
    });
    section
}
