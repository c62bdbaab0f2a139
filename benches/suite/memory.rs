//! Memory per idle session, server side and client side, counted on the heap (every byte
//! allocated and not yet freed) rather than read from RSS, whose allocator noise is larger than
//! the differences that matter here.
//!
//! The server runs in a child process (this same binary, re-run with an environment variable)
//! so that its heap is counted alone; the clients stay in this process, whose heap gives the
//! client side. Bare quinn with the same transport settings as quicfeed, holding the same two
//! open streams per connection, runs the same way as the baseline.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use quicfeed::{Client, ClientConfig, Identity, ServerConfig, TransportConfig, Trust};
use serde_json::json;

use crate::ALLOCATOR;
use crate::common::{Tls, loopback, runtime};
use crate::report::Section;

const ROLE_VAR: &str = "QUICFEED_BENCH_CHILD";
/// Sessions opened before the first measurement, so one-off costs (tables, caches, first
/// allocations of the runtime) are not counted per session.
const WARM: usize = 50;

/// How long sessions idle before they are counted: until what an idle session grows over
/// time has grown, on both sides of the comparison. Two things grow for seconds: quicfeed's
/// statistics ring (one RTT sample per liveness check, a sixteenth of the dead-path timeout,
/// for 64 samples: four dead-path timeouts), and quinn's queue of datagrams for each
/// connection, which takes its second block of 32 entries (6.7 kB) once 32 datagrams have
/// arrived, at about two per keep-alive interval when idle. Counted earlier, the figures depend
/// on how many connections have got that far.
fn settle() -> Duration {
    let t = TransportConfig::default();
    (t.dead_path_timeout * 4).max(t.keep_alive_interval * 40) + Duration::from_secs(1)
}

/// Live heap bytes in this process.
fn heap() -> i64 {
    let s = ALLOCATOR.stats();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64 + s.bytes_reallocated as i64
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The bare quinn transport: quicfeed's settings, so the difference is quicfeed's own state.
fn quinn_transport() -> quinn::TransportConfig {
    let t = TransportConfig::default();
    let mut q = quinn::TransportConfig::default();
    q.max_idle_timeout(Some(t.idle_timeout.try_into().expect("idle")))
        .keep_alive_interval(Some(t.keep_alive_interval))
        .initial_rtt(t.initial_rtt)
        .stream_receive_window(t.stream_receive_window.into())
        .receive_window(t.receive_window.into())
        .send_window(t.send_window)
        .max_concurrent_bidi_streams(2u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .datagram_receive_buffer_size(Some(t.datagram_receive_buffer))
        .datagram_send_buffer_size(64 * 1024);
    q
}

/// The size of each message of the bare quinn baseline's handshake (about quicfeed's).
const BARE_MESSAGE: usize = 48;

/// The server side of the bare quinn baseline's handshake: main, then feed, declared with a
/// message each and answered, then one more exchange on main. Returns both send halves and
/// receive halves held open.
async fn bare_exchange(
    conn: &quinn::Connection,
) -> Option<(
    (quinn::SendStream, quinn::RecvStream),
    (quinn::SendStream, quinn::RecvStream),
)> {
    let mut message = [0u8; 1 + BARE_MESSAGE];
    let (mut main, mut main_recv) = conn.accept_bi().await.ok()?;
    main_recv.read_exact(&mut message).await.ok()?;
    main.write_all(&message[1..]).await.ok()?;
    let (mut feed, mut feed_recv) = conn.accept_bi().await.ok()?;
    feed_recv.read_exact(&mut message).await.ok()?;
    feed.write_all(&message[1..]).await.ok()?;
    main_recv.read_exact(&mut message[1..]).await.ok()?;
    main.write_all(&message[1..]).await.ok()?;
    Some(((main, main_recv), (feed, feed_recv)))
}

/// In the child: serve, and answer each line on stdin with the heap, RSS and session count.
pub(crate) fn child_role() -> Option<i32> {
    let role = std::env::var(ROLE_VAR).ok()?;
    let rt = runtime("qf-mem-srv", 1);
    let held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let addr = rt.block_on(async {
        match role.as_str() {
            "quicfeed" | "quicfeed-browser" => {
                let identity = Identity::generate_self_signed(&["localhost"]).expect("cert");
                std::fs::write(
                    std::env::var("QUICFEED_BENCH_CERT").expect("cert path"),
                    identity.certificate().as_ref(),
                )
                .expect("write cert");
                let mut config = ServerConfig::new(loopback(), identity);
                config.max_sessions = 100_000;
                config.max_sessions_per_address = config.max_sessions;
                if role == "quicfeed-browser" {
                    config.webtransport = Some(quicfeed::WebTransportConfig::default());
                }
                let server = quicfeed::Server::bind(config).await.expect("server");
                let addr = server.local_addr();
                if role == "quicfeed-browser" {
                    // A browser pins the certificate's hash instead.
                    std::fs::write(
                        std::env::var("QUICFEED_BENCH_CERT").expect("cert path"),
                        server.browser_certificate_hashes()[0].0,
                    )
                    .expect("write hash");
                }
                let held = held.clone();
                tokio::spawn(async move {
                    let mut sessions = Vec::new();
                    while let Some(session) = server.accept().await {
                        sessions.push(session);
                        held.store(sessions.len(), std::sync::atomic::Ordering::SeqCst);
                    }
                });
                addr
            }
            _ => {
                let tls = Tls::generate();
                std::fs::write(
                    std::env::var("QUICFEED_BENCH_CERT").expect("cert path"),
                    tls.certificate.as_ref(),
                )
                .expect("write cert");
                let crypto =
                    quinn::crypto::rustls::QuicServerConfig::try_from(tls.server_config(b"bare"))
                        .expect("crypto");
                let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
                config.transport_config(Arc::new(quinn_transport()));
                let endpoint = quinn::Endpoint::server(config, loopback()).expect("endpoint");
                let addr = endpoint.local_addr().expect("addr");
                let held = held.clone();
                tokio::spawn(async move {
                    while let Some(incoming) = endpoint.accept().await {
                        let held = held.clone();
                        tokio::spawn(async move {
                            let Ok(conn) = incoming.await else { return };
                            let Some((main, feed)) = bare_exchange(&conn).await else {
                                return;
                            };
                            held.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            conn.closed().await;
                            drop((main, feed));
                        });
                    }
                });
                addr
            }
        }
    });
    println!("{addr}");
    let mut line = String::new();
    let stdin = std::io::stdin();
    while stdin
        .lock()
        .read_line(&mut line)
        .map(|n| n > 0)
        .unwrap_or(false)
    {
        line.clear();
        // Let the runtime settle before counting.
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(300)).await });
        println!(
            "{} {} {}",
            heap(),
            rss_kb(),
            held.load(std::sync::atomic::Ordering::SeqCst)
        );
    }
    Some(0)
}

struct ServerProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    addr: SocketAddr,
    certificate: Vec<u8>,
}

impl ServerProcess {
    fn start(role: &str) -> ServerProcess {
        let cert =
            std::env::temp_dir().join(format!("quicfeed-bench-{}-{role}.der", std::process::id()));
        let exe = std::env::current_exe().expect("current exe");
        // `QUICFEED_BENCH_WRAP=heaptrack` runs the server under a heap profiler (or any other
        // program that takes the command to run).
        let mut command = if let Ok(wrap) = std::env::var("QUICFEED_BENCH_WRAP") {
            let mut c = Command::new(wrap);
            c.arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let mut child = command
            .env(ROLE_VAR, role)
            .env("QUICFEED_BENCH_CERT", &cert)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("server process");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        let addr = loop {
            line.clear();
            stdout.read_line(&mut line).expect("address");
            if let Ok(addr) = line.trim().parse() {
                break addr;
            }
        };
        let certificate = std::fs::read(&cert).expect("certificate");
        let _ = std::fs::remove_file(&cert);
        ServerProcess {
            child,
            stdin,
            stdout,
            addr,
            certificate,
        }
    }

    /// (heap bytes, RSS kB, sessions held).
    fn measure(&mut self) -> (i64, u64, usize) {
        writeln!(self.stdin, "measure").expect("ask");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("answer");
        let mut fields = line
            .split_whitespace()
            .map(|f| f.parse::<i64>().expect("number"));
        let heap = fields.next().expect("heap");
        let rss = fields.next().expect("rss") as u64;
        let held = fields.next().expect("held") as usize;
        (heap, rss, held)
    }

    /// Measures once all `expected` sessions are held.
    fn measure_with(&mut self, expected: usize) -> (i64, u64) {
        for _ in 0..100 {
            let (heap, rss, held) = self.measure();
            if held >= expected {
                return (heap, rss);
            }
        }
        panic!("the server never held {expected} sessions");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A browser's session as a page holds it: a WebTransport session with main and feed open,
/// handshaken by a raw WebTransport client that speaks the wire protocol (PROTOCOL.md §14).
type BrowserSession = (
    wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client>,
    wtransport::Connection,
    [(wtransport::SendStream, wtransport::RecvStream); 2],
);

/// A bare quinn connection as the baseline holds it: its endpoint, the connection, and both
/// streams' halves.
type BareSession = (
    quinn::Endpoint,
    quinn::Connection,
    [(quinn::SendStream, quinn::RecvStream); 2],
);

/// Holds open client connections of either kind.
enum Held {
    Quicfeed(Vec<quicfeed::Session>),
    Browser(Vec<BrowserSession>),
    Quinn(Vec<BareSession>),
}

async fn open(server: &ServerProcess, count: usize, held: &mut Held) {
    let certificate = rustls::pki_types::CertificateDer::from(server.certificate.clone());
    for _ in 0..count {
        match held {
            Held::Quicfeed(sessions) => {
                let config =
                    ClientConfig::new(server.addr, Trust::Certificate(certificate.clone()));
                sessions.push(Client::connect(&config).await.expect("connect"));
            }
            Held::Browser(sessions) => {
                sessions.push(browser_session(server).await);
            }
            Held::Quinn(conns) => {
                let tls = crate::common::Tls::trusting(certificate.clone());
                let crypto =
                    quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("crypto");
                let mut config = quinn::ClientConfig::new(Arc::new(crypto));
                config.transport_config(Arc::new(quinn_transport()));
                let mut endpoint = quinn::Endpoint::client(loopback()).expect("endpoint");
                endpoint.set_default_client_config(config);
                let conn = endpoint
                    .connect(server.addr, "localhost")
                    .expect("connect")
                    .await
                    .expect("connection");
                // The handshake's traffic, as quicfeed's (three exchanges of small messages,
                // the second on feed), so that quinn's own buffers hold what they hold for a
                // quicfeed session.
                let mut reply = [0u8; BARE_MESSAGE];
                let (mut main, mut main_recv) = conn.open_bi().await.expect("main");
                main.write_all(&[0; 1 + BARE_MESSAGE])
                    .await
                    .expect("declare main");
                main_recv.read_exact(&mut reply).await.expect("reply");
                let (mut feed, mut feed_recv) = conn.open_bi().await.expect("feed");
                feed.write_all(&[1; 1 + BARE_MESSAGE])
                    .await
                    .expect("declare feed");
                feed_recv.read_exact(&mut reply).await.expect("reply");
                main.write_all(&[2; BARE_MESSAGE]).await.expect("third");
                main_recv.read_exact(&mut reply).await.expect("reply");
                conns.push((endpoint, conn, [(main, main_recv), (feed, feed_recv)]));
            }
        }
    }
}

/// Opens a browser's session on `server` and runs the three-step handshake on it.
async fn browser_session(server: &ServerProcess) -> BrowserSession {
    use bytes::BytesMut;
    use quicfeed::protocol::{ChannelKind, Message, codec};

    async fn send(stream: &mut wtransport::SendStream, message: &Message) {
        let frame = codec::encode_message(message).expect("encode");
        stream.write_all(&frame).await.expect("write");
    }
    async fn recv(stream: &mut wtransport::RecvStream) -> Message {
        let mut buf = BytesMut::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(body) = codec::decode_frame(&mut buf, 1 << 16).expect("frame") {
                return codec::decode_message(body).expect("message");
            }
            let n = stream.read(&mut chunk).await.expect("read").expect("open");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    let hash: [u8; 32] = server.certificate.as_slice().try_into().expect("hash");
    let config = wtransport::ClientConfig::builder()
        .with_bind_address(loopback())
        .with_server_certificate_hashes([wtransport::tls::Sha256Digest::new(hash)])
        .build();
    let endpoint = wtransport::Endpoint::client(config).expect("endpoint");
    let conn = endpoint
        .connect(format!("https://127.0.0.1:{}/quicfeed", server.addr.port()))
        .await
        .expect("WebTransport session");
    let open = async |kind: ChannelKind| {
        let (mut send, recv) = conn.open_bi().await.expect("open").await.expect("stream");
        send.write_all(&[kind.tag()]).await.expect("declare");
        (send, recv)
    };
    let (mut main_send, mut main_recv) = open(ChannelKind::Main).await;
    let (mut feed_send, mut feed_recv) = open(ChannelKind::Feed).await;
    send(
        &mut main_send,
        &Message::ConnInit {
            max_main_frame: 65536,
            max_feed_frame: 65536,
            credentials: bytes::Bytes::new(),
        },
    )
    .await;
    let Message::ConnInitReply { player_id, token_a } = recv(&mut main_recv).await else {
        panic!("expected CONN_INIT_REPLY");
    };
    send(&mut feed_send, &Message::FeedInit { player_id, token_a }).await;
    let Message::FeedInitReply { token_b } = recv(&mut feed_recv).await else {
        panic!("expected FEED_INIT_REPLY");
    };
    send(&mut main_send, &Message::FinalAuth { token_b }).await;
    let Message::ConnOk { .. } = recv(&mut main_recv).await else {
        panic!("expected CONN_OK");
    };
    (
        endpoint,
        conn,
        [(main_send, main_recv), (feed_send, feed_recv)],
    )
}

/// Per idle session, in bytes: (server heap, server RSS, client heap).
async fn per_session(kind: &str, count: usize) -> (f64, f64, f64) {
    let mut server = ServerProcess::start(kind);
    let mut held = match kind {
        "quicfeed" => Held::Quicfeed(Vec::new()),
        "quicfeed-browser" => Held::Browser(Vec::new()),
        _ => Held::Quinn(Vec::new()),
    };
    open(&server, WARM, &mut held).await;
    tokio::time::sleep(settle()).await;
    let (heap0, rss0) = server.measure_with(WARM);
    let client0 = heap();
    open(&server, count, &mut held).await;
    tokio::time::sleep(settle()).await;
    let client1 = heap();
    let (heap1, rss1) = server.measure_with(WARM + count);
    drop(held);
    let n = count as f64;
    (
        (heap1 - heap0) as f64 / n,
        (rss1 as f64 - rss0 as f64) * 1024.0 / n,
        (client1 - client0) as f64 / n,
    )
}

pub(crate) async fn run(quick: bool) -> Section {
    let count = if quick { 100 } else { 1000 };
    let ours = per_session("quicfeed", count).await;
    let bare = per_session("quinn", count).await;
    let browser = per_session("quicfeed-browser", count).await;
    let kb = |bytes: f64| format!("{:.1} kB", bytes / 1000.0);
    let mut section = Section::new(
        "Memory per idle session",
        &format!(
            "The server runs alone in a child process; {WARM} sessions are opened first, then \
             {count} more, and the growth of the server's live heap (bytes allocated and not \
             freed, counted by a global allocator) is divided by {count}. RSS growth is shown \
             too (it includes allocator slack). The client side is this process's heap growth \
             per client (each client has its own endpoint and UDP socket). The baseline is bare \
             quinn with quicfeed's transport settings, holding two open bidirectional streams \
             per connection. Sessions are idle (keep-alives only) and counted after {idle:.1} s \
             of it, once what idle sessions grow has grown (quicfeed's statistics ring of RTT \
             samples, quinn's queue of datagrams for each connection). Browser sessions \
             (WebTransport, on a server with it turned on) are opened by a raw WebTransport \
             client that runs the handshake as a page does; their client side is that \
             client's, not a browser's. The bare quinn baseline exchanges the handshake's \
             traffic too (three request/reply pairs of 48 bytes, the second on feed), so \
             that quinn's buffers hold what they hold after a quicfeed handshake.",
            idle = settle().as_secs_f64()
        ),
        &[
            "",
            "server heap / session",
            "server RSS / session",
            "client heap / client",
        ],
    );
    section.row(vec!["quicfeed".into(), kb(ours.0), kb(ours.1), kb(ours.2)]);
    section.row(vec![
        "bare quinn (same settings)".into(),
        kb(bare.0),
        kb(bare.1),
        kb(bare.2),
    ]);
    section.row(vec![
        "quicfeed's own share".into(),
        kb(ours.0 - bare.0),
        kb(ours.1 - bare.1),
        kb(ours.2 - bare.2),
    ]);
    section.row(vec![
        "quicfeed, browser sessions (WebTransport)".into(),
        kb(browser.0),
        kb(browser.1),
        kb(browser.2),
    ]);
    section.row(vec![
        "browser session / native session".into(),
        format!("{:.2}x", browser.0 / ours.0),
        format!("{:.2}x", browser.1 / ours.1),
        format!("{:.2}x", browser.2 / ours.2),
    ]);
    section.target(
        "memory per idle server-side session (heap) vs bare quinn",
        format!("{:.2}x ({} vs {})", ours.0 / bare.0, kb(ours.0), kb(bare.0)),
        "<= 1.10x",
        ours.0 <= bare.0 * 1.10,
    );
    section.figures = json!({
        "sessions": count,
        "quicfeed": {"server_heap_bytes": ours.0, "server_rss_bytes": ours.1, "client_heap_bytes": ours.2},
        "bare_quinn": {"server_heap_bytes": bare.0, "server_rss_bytes": bare.1, "client_heap_bytes": bare.2},
        "browser": {"server_heap_bytes": browser.0, "server_rss_bytes": browser.1, "client_heap_bytes": browser.2},
    });
    section
}
