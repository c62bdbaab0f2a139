//! The abuse tool: attacks a real quicfeed server on loopback while honest clients keep
//! connecting and exchanging messages, and measures what the attacks cost the server.
//!
//! ```text
//! cargo run --release --example abuse              # full size (20,000 half-open handshakes, ...)
//! cargo run --release --example abuse -- --quick   # a smaller run, about a minute
//! ```
//!
//! The server runs in a child process (this program, started again with `--serve`), so its
//! memory (`VmRSS`) and CPU time (`/proc/<pid>/stat`) are its own. Each attack runs while a
//! stream of honest clients connects (one every 20 ms), exchanges a few messages on main and
//! leaves; the report gives, per attack: the server's peak memory growth, its CPU time per
//! attacking connection, and the honest clients' success rate and connect p50/p99.
//!
//! Attacks:
//! - half-open handshakes: QUIC Initials whose answers never come back (the server's answers are
//!   dropped by a conditioner);
//! - stuck connections: QUIC completes, then nothing (no `CONN_INIT`), from many addresses;
//! - slow senders: `CONN_INIT` written one byte at a time;
//! - garbage: random UDP datagrams at the port, and random bytes on a stream;
//! - token replay: a token A from one connection shown on another;
//! - stream hogs: sessions that push data on feed as fast as flow control allows and flood the
//!   datagram lane, neither of which the server's application reads (the most memory one
//!   connection can pin);
//! - idle sessions: established sessions doing nothing (memory per idle session).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use quicfeed::conditioner::{Conditions, Loss, Relay};
use quicfeed::protocol::codec::{decode_frame, decode_message, encode_message};
use quicfeed::protocol::{ALPN, ChannelKind, Message, PlayerId, Token};
use quicfeed::{Client, ClientConfig, Identity, Reason, Server, ServerConfig, Session, Trust};

#[derive(Parser, Clone)]
#[command(about = "quicfeed abuse tool: attacks a server on loopback and measures the cost")]
struct Args {
    /// A smaller run (about a minute).
    #[arg(long)]
    quick: bool,
    /// Internal: run the server (the child process), writing its certificate to this file.
    #[arg(long, hide = true)]
    serve: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Errors are for people: their message, never a Debug dump.
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let Some(cert) = args.serve {
        return serve(cert).await;
    }
    attack(args.quick).await
}

/// The server under attack: the library's defaults, every one (`ServerConfig::new`); its
/// application echoes main and never reads feed or the lane (so data pushed there stays with
/// the connection).
async fn serve(cert_path: PathBuf) -> Result<(), Box<dyn std::error::Error>> {
    let identity = Identity::generate_self_signed(&["localhost"])?;
    let key_path = cert_path.with_extension("key");
    identity.write_pem_files(&cert_path, &key_path)?;
    let config = ServerConfig::new("127.0.0.1:0".parse()?, identity);
    let server = Server::bind(config).await?;
    println!("ADDR {}", server.local_addr());
    while let Some(session) = server.accept().await {
        tokio::spawn(async move {
            let (handle, main, feed) = session.into_parts();
            let (tx, rx) = main.split();
            while let Ok(bytes) = rx.recv_bytes().await {
                if tx.send_bytes(&bytes).await.is_err() {
                    break;
                }
            }
            drop((handle, feed));
        });
    }
    Ok(())
}

/// The child's memory and CPU time.
struct Probe {
    pid: u32,
    ticks_per_second: f64,
}

impl Probe {
    fn rss_kb(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }

    /// User plus system CPU time, in seconds.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // Fields after the command name (which may contain spaces) start after the last ')'.
        let after = stat.rsplit(')').next().unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
        (ticks(11) + ticks(12)) / self.ticks_per_second
    }
}

/// A running server child and how to reach it.
struct Target {
    child: Child,
    probe: Arc<Probe>,
    addr: SocketAddr,
    certificate: rustls::pki_types::CertificateDer<'static>,
    trust: Trust,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A temporary directory removed on drop.
    pub(crate) struct Dir(pub(crate) std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn start_target() -> Result<Target, Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("quicfeed-abuse-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cert_path = dir.join("cert.pem");
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--serve")
        .arg(&cert_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let addr: SocketAddr = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix("ADDR ").and_then(|a| a.parse().ok()))
    })
    .await?
    .ok_or("the server did not start")?;
    let trust = Trust::certificate_pem_file(&cert_path)?;
    let Trust::Certificate(certificate) = trust.clone() else {
        return Err("unexpected trust".into());
    };
    let probe = Arc::new(Probe {
        pid: child.id(),
        ticks_per_second: 100.0, // USER_HZ on Linux
    });
    Ok(Target {
        child,
        probe,
        addr,
        certificate,
        trust,
        _dir: tempdir::Dir(dir),
    })
}

/// Honest clients, one every 20 ms, each from its own address (players are not all behind one
/// NAT), each exchanging three messages on main.
struct Honest {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<HonestTally>,
}

/// What the honest clients saw: how many got through, their connect times, and why the others
/// failed (each distinct reason, with its count).
#[derive(Default)]
struct HonestTally {
    ok: u32,
    failed: u32,
    times: Vec<Duration>,
    failures: std::collections::BTreeMap<String, u32>,
}

fn honest_clients(target: &Target) -> Honest {
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, trust) = (target.addr, target.trust.clone());
    let task = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(20));
            let mut runs = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                ticker.tick().await;
                let mut config = ClientConfig::new(addr, trust.clone());
                config.bind = Some(SocketAddr::new(honest_ip(n), 0));
                n += 1;
                runs.push(tokio::spawn(async move {
                    let started = Instant::now();
                    let session = Client::connect(&config)
                        .await
                        .map_err(|e| format!("connect: {e}"))?;
                    let connected = started.elapsed();
                    for i in 0..3u32 {
                        session
                            .main()
                            .send(&i)
                            .await
                            .map_err(|e| format!("send: {e}"))?;
                        let echo: u32 = session
                            .main()
                            .recv()
                            .await
                            .map_err(|e| format!("receive: {e}"))?;
                        if echo != i {
                            return Err(format!("echo {echo} for {i}"));
                        }
                    }
                    session.close_gracefully(quicfeed::Reason::Normal, "").await;
                    Ok::<_, String>(connected)
                }));
            }
            let mut tally = HonestTally::default();
            for run in runs {
                match run.await {
                    Ok(Ok(t)) => {
                        tally.ok += 1;
                        tally.times.push(t);
                    }
                    Ok(Err(why)) => {
                        tally.failed += 1;
                        *tally.failures.entry(why).or_default() += 1;
                    }
                    Err(e) => {
                        tally.failed += 1;
                        *tally.failures.entry(format!("task: {e}")).or_default() += 1;
                    }
                }
            }
            tally.times.sort();
            tally
        }
    });
    Honest { stop, task }
}

/// The honest clients' addresses: loopback, apart from the attackers'.
fn honest_ip(n: u64) -> IpAddr {
    let n = n % 60_000;
    IpAddr::V4(Ipv4Addr::new(127, 3, (n / 250) as u8, (n % 250 + 2) as u8))
}

/// What one attack cost.
struct Figures {
    attack: String,
    attackers: u64,
    peak_growth_kb: u64,
    cpu_ms_per_attacker: f64,
    honest_ok: u32,
    honest_failed: u32,
    connect_p50: Duration,
    connect_p99: Duration,
    note: String,
}

/// Runs `attack` with honest clients alongside, sampling the server's memory.
async fn measure<F, Fut>(target: &Target, name: &str, attackers: u64, attack: F) -> Figures
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let probe = target.probe.clone();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = probe.rss_kb();
    let cpu_before = probe.cpu_seconds();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn({
        let (probe, sampling) = (probe.clone(), sampling.clone());
        async move {
            let mut peak = 0;
            while sampling.load(Ordering::Relaxed) {
                peak = peak.max(probe.rss_kb());
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            peak
        }
    });
    let honest = honest_clients(target);
    let note = attack().await;
    honest.stop.store(true, Ordering::Relaxed);
    let tally = honest.task.await.unwrap_or_default();
    let (honest_ok, honest_failed, times) = (tally.ok, tally.failed, tally.times);
    let mut note = note;
    for (why, count) in &tally.failures {
        note.push_str(&format!("; honest client failed ({count}x): {why}"));
    }
    sampling.store(false, Ordering::Relaxed);
    let peak = sampler.await.unwrap_or(baseline);
    let cpu = probe.cpu_seconds() - cpu_before;
    let pct = |p: f64| {
        times
            .get(((times.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or_default()
    };
    Figures {
        attack: name.into(),
        attackers,
        peak_growth_kb: peak.saturating_sub(baseline),
        cpu_ms_per_attacker: cpu * 1e3 / attackers.max(1) as f64,
        honest_ok,
        honest_failed,
        connect_p50: pct(0.5),
        connect_p99: pct(0.99),
        note,
    }
}

fn raw_client_config(
    certificate: &rustls::pki_types::CertificateDer<'static>,
) -> quinn::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let _ = roots.add(certificate.clone());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS");
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(8).try_into().expect("idle")));
    config.transport_config(Arc::new(transport));
    config
}

/// A raw QUIC connection from `local`, with nothing sent yet.
async fn raw_connection(target: &Target, local: IpAddr) -> Option<quinn::Connection> {
    let mut endpoint = quinn::Endpoint::client(SocketAddr::new(local, 0)).ok()?;
    endpoint.set_default_client_config(raw_client_config(&target.certificate));
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        endpoint.connect(target.addr, "localhost").ok()?,
    )
    .await
    .ok()?
    .ok()?;
    // The endpoint lives as long as the connection's driver needs it.
    std::mem::forget(endpoint);
    Some(conn)
}

/// The `n`th attacker address on loopback (127.1.x.y), so per-address limits see many sources.
fn attacker_ip(n: u64) -> IpAddr {
    let n = n % 60_000;
    IpAddr::V4(Ipv4Addr::new(127, 1, (n / 250) as u8, (n % 250 + 2) as u8))
}

fn frame(message: &Message) -> Bytes {
    encode_message(message).expect("encodable")
}

async fn read_message(recv: &mut quinn::RecvStream) -> Option<Message> {
    let mut buf = bytes::BytesMut::new();
    loop {
        if let Ok(Some(body)) = decode_frame(&mut buf, 1 << 16) {
            return decode_message(body).ok();
        }
        let chunk = recv.read_chunk(4096, true).await.ok()??;
        buf.extend_from_slice(&chunk.bytes);
    }
}

async fn attack(quick: bool) -> Result<(), Box<dyn std::error::Error>> {
    let scale = |full: u64, small: u64| if quick { small } else { full };
    let mut results = Vec::new();
    // A fresh server process for each attack, so that memory one attack freed (and the
    // allocator kept) does not hide what the next one costs.
    let mut target = start_target().await?;

    // 1. Half-open handshakes.
    let n = scale(20_000, 2_000);
    results.push(
        measure(&target, "half-open handshakes", n, || async {
            let relay = Relay::start(
                target.addr,
                Conditions::default(),
                Conditions {
                    loss: Loss::Random(1.0),
                    ..Conditions::default()
                },
            )
            .await
            .expect("relay");
            let mut endpoint =
                quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
            endpoint.set_default_client_config(raw_client_config(&target.certificate));
            let mut connecting = Vec::with_capacity(n as usize);
            let started = Instant::now();
            for _ in 0..n {
                if let Ok(c) = endpoint.connect(relay.local_addr(), "localhost") {
                    connecting.push(c);
                }
                if connecting.len() % 500 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            // Let the server see every Initial and its retransmissions.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let sent = relay.stats().to_server.delivered;
            drop(connecting);
            format!(
                "{sent} datagrams in {:.1} s",
                started.elapsed().as_secs_f64()
            )
        })
        .await,
    );

    restart(&mut target).await?;
    // 2. Stuck connections: QUIC completes, then nothing, from many addresses.
    let k = scale(2_000, 200);
    results.push(
        measure(&target, "stuck before CONN_INIT", k, || async {
            let mut tasks = Vec::new();
            for i in 0..k {
                let local = attacker_ip(i);
                let target = &target;
                tasks.push(async move { raw_connection(target, local).await });
            }
            let conns: Vec<_> = futures_join_all(tasks)
                .await
                .into_iter()
                .flatten()
                .collect();
            let established = conns.len();
            let (mut timed_out, mut evicted) = (0, 0);
            let started = Instant::now();
            for conn in &conns {
                if let quinn::ConnectionError::ApplicationClosed(close) = conn.closed().await {
                    let code = u16::try_from(close.error_code.into_inner()).ok();
                    match code.map(Reason::from_code) {
                        Some(Reason::HandshakeTimeout) => timed_out += 1,
                        Some(Reason::ServerBusy) => evicted += 1,
                        _ => {}
                    }
                }
            }
            format!(
                "{established} connected; all ended within {:.1} s: {timed_out} at the deadline \
                 (HANDSHAKE_TIMEOUT), {evicted} evicted for newer attempts (SERVER_BUSY)",
                started.elapsed().as_secs_f64()
            )
        })
        .await,
    );

    restart(&mut target).await?;
    // 3. Slow senders: CONN_INIT one byte every 300 ms.
    let s = scale(200, 50);
    results.push(
        measure(&target, "slow senders", s, || async {
            let mut tasks = Vec::new();
            for i in 0..s {
                let target = &target;
                tasks.push(async move {
                    let conn = raw_connection(target, attacker_ip(10_000 + i)).await?;
                    let (mut send, _recv) = conn.open_bi().await.ok()?;
                    let mut bytes = vec![ChannelKind::Main.tag()];
                    bytes.extend_from_slice(&frame(&Message::ConnInit {
                        max_main_frame: 65536,
                        max_feed_frame: 65536,
                        credentials: Bytes::from_static(&[7; 64]),
                    }));
                    for byte in bytes {
                        if send.write_all(&[byte]).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    match conn.closed().await {
                        quinn::ConnectionError::ApplicationClosed(c) => {
                            Some(c.error_code.into_inner())
                        }
                        _ => None,
                    }
                });
            }
            let codes = futures_join_all(tasks).await;
            let reaped = codes.iter().filter(|c| **c == Some(0x000a)).count();
            format!("{reaped} of {s} reaped with HANDSHAKE_TIMEOUT")
        })
        .await,
    );

    restart(&mut target).await?;
    // 4. Garbage: random datagrams at the port, and random bytes on streams.
    let g = scale(2_000, 500);
    results.push(
        measure(&target, "garbage", g, || async {
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("socket");
            let mut state = 0x2545_f491_4f6c_dd1du64;
            let mut random = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            for _ in 0..g {
                let len = 20 + (random() % 1200) as usize;
                let datagram: Vec<u8> = (0..len).map(|_| random() as u8).collect();
                let _ = socket.send_to(&datagram, target.addr).await;
            }
            let mut refused = 0;
            for i in 0..(g / 10) {
                let Some(conn) = raw_connection(&target, attacker_ip(20_000 + i)).await else {
                    continue;
                };
                let Ok((mut send, _recv)) = conn.open_bi().await else {
                    continue;
                };
                let garbage: Vec<u8> = (0..64).map(|_| random() as u8).collect();
                let _ = send.write_all(&[0]).await;
                let _ = send.write_all(&garbage).await;
                if let quinn::ConnectionError::ApplicationClosed(_) = conn.closed().await {
                    refused += 1;
                }
            }
            format!(
                "{g} random datagrams; {refused} of {} garbage streams closed with a reason",
                g / 10
            )
        })
        .await,
    );

    restart(&mut target).await?;
    // 5. Token replay across connections.
    let r = scale(200, 50);
    results.push(
        measure(&target, "token replay", r, || async {
            let mut refused = 0;
            for i in 0..r {
                let (Some(victim), Some(thief)) = (
                    raw_connection(&target, attacker_ip(30_000 + 2 * i)).await,
                    raw_connection(&target, attacker_ip(30_001 + 2 * i)).await,
                ) else {
                    continue;
                };
                let init = frame(&Message::ConnInit {
                    max_main_frame: 65536,
                    max_feed_frame: 65536,
                    credentials: Bytes::new(),
                });
                let stolen = async {
                    let (mut send, mut recv) = victim.open_bi().await.ok()?;
                    send.write_all(&[ChannelKind::Main.tag()]).await.ok()?;
                    send.write_all(&init).await.ok()?;
                    match read_message(&mut recv).await? {
                        Message::ConnInitReply { player_id, token_a } => {
                            Some((player_id, token_a, send, recv))
                        }
                        _ => None,
                    }
                };
                let Some((player_id, token_a, _vs, _vr)) = stolen.await else {
                    continue;
                };
                let replay = async {
                    let (mut send, mut recv) = thief.open_bi().await.ok()?;
                    send.write_all(&[ChannelKind::Main.tag()]).await.ok()?;
                    send.write_all(&init).await.ok()?;
                    read_message(&mut recv).await?;
                    let (mut fsend, mut frecv) = thief.open_bi().await.ok()?;
                    fsend.write_all(&[ChannelKind::Feed.tag()]).await.ok()?;
                    fsend
                        .write_all(&frame(&Message::FeedInit { player_id, token_a }))
                        .await
                        .ok()?;
                    read_message(&mut frecv).await
                };
                if let Some(Message::ConnFailed { .. }) = replay.await {
                    refused += 1;
                }
                victim.close(0u32.into(), b"");
                thief.close(0u32.into(), b"");
            }
            let _ = (PlayerId(0), Token([0; 16]));
            format!("{refused} of {r} replayed tokens refused")
        })
        .await,
    );

    restart(&mut target).await?;
    // 6. Stream hogs: sessions pushing on feed, which the application never reads.
    let h = scale(200, 50);
    let hog = measure(&target, "stream hogs (feed and lane never read)", h, || async {
        let mut sessions = Vec::new();
        for k in 0..h {
            // Each from its own address: one address holds at most 64 sessions by default.
            let mut config = ClientConfig::new(target.addr, target.trust.clone());
            config.bind = Some(SocketAddr::new(attacker_ip(40_000 + k), 0));
            if let Ok(session) = Client::connect(&config).await {
                sessions.push(session);
            }
        }
        let pushers: Vec<_> = sessions
            .into_iter()
            .map(|session: Session| {
                tokio::spawn(async move {
                    let chunk = vec![0xab_u8; 60_000];
                    // Datagrams on the lane too, as fast as they go: the server keeps what it
                    // has not read in a bounded buffer.
                    let lane = session.lane();
                    let datagram = vec![0xcd_u8; lane.max_payload_size().unwrap_or(1000)];
                    let flood_lane = async {
                        while lane.send_bytes(&datagram).is_ok() {
                            tokio::task::yield_now().await;
                        }
                    };
                    let fill_feed = async {
                        while session.feed().send_bytes(&chunk).await.is_ok() {}
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(4), async {
                        tokio::join!(flood_lane, fill_feed)
                    })
                    .await;
                    session
                })
            })
            .collect();
        let mut held = Vec::new();
        for p in pushers {
            if let Ok(s) = p.await {
                held.push(s);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let note = format!(
            "{} sessions pushing on feed until flow control stopped them, and flooding the lane",
            held.len()
        );
        drop(held);
        note
    })
    .await;
    let pinned_kb = hog.peak_growth_kb / h.max(1);
    results.push(hog);

    restart(&mut target).await?;
    // 7. Idle sessions: the marginal cost, from N to 2N sessions (fixed costs of a fresh
    // process, such as runtime threads and first allocations, cancel out); 2N within the
    // default cap of 1024 sessions, each from its own address.
    let i = scale(500, 200);
    let connect_idle = |from: u64, count: u64| {
        let target = &target;
        async move {
            let mut sessions = Vec::new();
            for k in from..from + count {
                let mut config = ClientConfig::new(target.addr, target.trust.clone());
                config.bind = Some(SocketAddr::new(attacker_ip(50_000 + k), 0));
                if let Ok(session) = Client::connect(&config).await {
                    sessions.push(session);
                }
            }
            sessions
        }
    };
    let first = connect_idle(0, i).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at_n = target.probe.rss_kb();
    let second = connect_idle(i, i).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at_2n = target.probe.rss_kb();
    // Per session actually added (a failed connect adds none).
    let idle_kb = at_2n.saturating_sub(at_n) / (second.len() as u64).max(1);
    let held = first.len() + second.len();
    drop((first, second));

    println!(
        "server: the library's defaults (ServerConfig::new: at most 1024 sessions, 64 per \
         address, 1024 handshakes in progress, 128 per address, Retry past 64)\n"
    );
    println!(
        "| attack | attackers | server peak memory growth | server CPU per attacker | honest clients ok | connect p50 | connect p99 | detail |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for f in &results {
        println!(
            "| {} | {} | {:.1} MB | {:.3} ms | {}/{} | {:.1} ms | {:.1} ms | {} |",
            f.attack,
            f.attackers,
            f.peak_growth_kb as f64 / 1024.0,
            f.cpu_ms_per_attacker,
            f.honest_ok,
            f.honest_ok + f.honest_failed,
            f.connect_p50.as_secs_f64() * 1e3,
            f.connect_p99.as_secs_f64() * 1e3,
            f.note
        );
    }
    println!("\nmost memory one connection pinned (stream hogs): {pinned_kb} kB");
    println!("memory per idle session: {idle_kb} kB (marginal, from {i} to {held} sessions)");
    let _ = target.child.kill();
    let _ = target.child.wait();
    Ok(())
}

/// Replaces the server process with a fresh one.
async fn restart(target: &mut Target) -> Result<(), Box<dyn std::error::Error>> {
    let _ = target.child.kill();
    let _ = target.child.wait();
    *target = start_target().await?;
    Ok(())
}

/// Awaits all futures concurrently (a small stand-in for `futures::future::join_all`).
async fn futures_join_all<T, F>(futures: Vec<F>) -> Vec<T>
where
    F: std::future::Future<Output = T>,
{
    let mut results: Vec<Option<T>> = Vec::new();
    // Polled together in this task (no 'static bound, unlike spawning).
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    results.resize_with(pinned.len(), || None);
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, fut) in results.iter_mut().zip(pinned.iter_mut()) {
            if slot.is_none() {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
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
    results.into_iter().flatten().collect()
}
