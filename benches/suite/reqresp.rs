//! Main request/response latency on loopback: quicfeed's main channel against a bare quinn
//! bidirectional-stream echo (the floor), TCP + TLS 1.3 with tokio-rustls, and renet.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use quicfeed::{Client, ClientConfig, ServerConfig};
use renet::DefaultChannel;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{Summary, Tls, identity, loopback, server};
use crate::plot::Series;
use crate::renet_side;
use crate::report::{Section, ms};

/// The request and the response: 64 bytes, a typical game command.
const SIZE: usize = 64;

/// One contestant: sends a request, awaits the echo, `count` times; the round-trip times.
enum Contestant {
    Quicfeed(Box<quicfeed::Session>),
    Quinn(quinn::SendStream, quinn::RecvStream),
    TcpTls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
    Renet(mpsc::Sender<usize>, mpsc::Receiver<Vec<Duration>>),
}

impl Contestant {
    async fn run(&mut self, count: usize) -> Vec<Duration> {
        let request = [7u8; SIZE];
        let mut samples = Vec::with_capacity(count);
        match self {
            Contestant::Quicfeed(session) => {
                for _ in 0..count {
                    let started = Instant::now();
                    session.main().send_bytes(&request).await.expect("send");
                    session.main().recv_bytes().await.expect("echo");
                    samples.push(started.elapsed());
                }
            }
            Contestant::Quinn(send, recv) => {
                let mut response = [0u8; SIZE];
                for _ in 0..count {
                    let started = Instant::now();
                    send.write_all(&request).await.expect("send");
                    recv.read_exact(&mut response).await.expect("echo");
                    samples.push(started.elapsed());
                }
            }
            Contestant::TcpTls(stream) => {
                let mut response = [0u8; SIZE];
                for _ in 0..count {
                    let started = Instant::now();
                    stream.write_all(&request).await.expect("send");
                    stream.flush().await.expect("flush");
                    stream.read_exact(&mut response).await.expect("echo");
                    samples.push(started.elapsed());
                }
            }
            Contestant::Renet(ask, answer) => {
                ask.send(count).expect("renet client thread");
                samples = tokio::task::block_in_place(|| answer.recv().expect("renet samples"));
            }
        }
        samples
    }
}

async fn quicfeed_pair() -> (Contestant, quicfeed::Server) {
    let (server, trust) = server(ServerConfig::new(loopback(), identity())).await;
    let client = Client::connect(&ClientConfig::new(server.local_addr(), trust))
        .await
        .expect("connect");
    let side = server.accept().await.expect("session");
    tokio::spawn(async move {
        while let Ok(bytes) = side.main().recv_bytes().await {
            if side.main().send_bytes(&bytes).await.is_err() {
                break;
            }
        }
    });
    (Contestant::Quicfeed(Box::new(client)), server)
}

async fn quinn_pair(tls: &Tls) -> (Contestant, quinn::Endpoint, quinn::Endpoint) {
    let server = tls.quinn_server();
    let client = tls.quinn_client();
    let addr = server.local_addr().expect("addr");
    let accepting = server.clone();
    tokio::spawn(async move {
        let conn = accepting
            .accept()
            .await
            .expect("incoming")
            .await
            .expect("conn");
        let (mut send, mut recv) = conn.accept_bi().await.expect("stream");
        let mut buffer = [0u8; SIZE];
        while recv.read_exact(&mut buffer).await.is_ok() {
            if send.write_all(&buffer).await.is_err() {
                break;
            }
        }
        drop(conn);
    });
    let conn = client
        .connect(addr, "localhost")
        .expect("connect")
        .await
        .expect("connection");
    let (send, recv) = conn.open_bi().await.expect("stream");
    (Contestant::Quinn(send, recv), server, client)
}

async fn tcp_tls_pair(tls: &Tls) -> Contestant {
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls.server_config(b"tcp")));
    let listener = tokio::net::TcpListener::bind(loopback())
        .await
        .expect("listen");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        tcp.set_nodelay(true).expect("nodelay");
        let mut stream = acceptor.accept(tcp).await.expect("tls");
        let mut buffer = [0u8; SIZE];
        while stream.read_exact(&mut buffer).await.is_ok() {
            if stream.write_all(&buffer).await.is_err() || stream.flush().await.is_err() {
                break;
            }
        }
    });
    let connector =
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls.client_config(b"tcp")));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    Contestant::TcpTls(Box::new(connector.connect(name, tcp).await.expect("tls")))
}

/// A renet client thread that runs `count` round trips on request.
fn renet_pair() -> (Contestant, renet_side::Server) {
    let server = renet_side::Server::start(renet_side::Role::Echo, 4);
    let addr = server.addr;
    let busy = server.busy.clone();
    let (ask_tx, ask_rx) = mpsc::channel::<usize>();
    let (answer_tx, answer_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("qf-renet-cli".into())
        .spawn(move || {
            let mut client = renet_side::Client::new(addr, 1);
            assert!(client.connect(Duration::from_secs(10)), "renet connects");
            loop {
                let count = match ask_rx.recv_timeout(Duration::from_millis(1)) {
                    Ok(count) => count,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        client.poll();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                };
                busy.store(true, Ordering::Relaxed);
                let mut samples = Vec::with_capacity(count);
                for _ in 0..count {
                    let started = Instant::now();
                    client
                        .client
                        .send_message(DefaultChannel::ReliableOrdered, vec![7u8; SIZE]);
                    client.poll();
                    loop {
                        std::thread::yield_now();
                        client.poll();
                        if client
                            .client
                            .receive_message(DefaultChannel::ReliableOrdered)
                            .is_some()
                        {
                            break;
                        }
                    }
                    samples.push(started.elapsed());
                }
                busy.store(false, Ordering::Relaxed);
                if answer_tx.send(samples).is_err() {
                    break;
                }
            }
        })
        .expect("renet client thread");
    (Contestant::Renet(ask_tx, answer_rx), server)
}

/// Runs the scenario: `count` round trips per contestant, in rounds that alternate between
/// them so that drift on a shared machine spreads over all of them.
pub(crate) async fn run(count: usize) -> (Section, Vec<Series>) {
    let tls = Tls::generate();
    let (quicfeed, _server) = quicfeed_pair().await;
    let (quinn, _quinn_server, _quinn_client) = quinn_pair(&tls).await;
    let tcp = tcp_tls_pair(&tls).await;
    let (renet, renet_server) = renet_pair();
    let mut contestants = [
        ("quicfeed main", quicfeed, Vec::new()),
        ("bare quinn stream echo", quinn, Vec::new()),
        ("TCP + TLS (tokio-rustls)", tcp, Vec::new()),
        ("renet 2 (netcode, polled in a loop)", renet, Vec::new()),
    ];
    // Warm up, then alternate in rounds.
    for (_, contestant, _) in &mut contestants {
        contestant.run(200).await;
    }
    let rounds = 10;
    for _ in 0..rounds {
        for (_, contestant, samples) in &mut contestants {
            samples.extend(contestant.run(count / rounds).await);
        }
    }
    renet_server.stop();

    let summaries: Vec<(&str, Summary)> = contestants
        .iter()
        .map(|(name, _, samples)| (*name, Summary::of_durations(samples)))
        .collect();
    let floor = summaries[1].1;
    let mut section = Section::new(
        "Main request/response latency (loopback)",
        &format!(
            "A 64-byte request and its 64-byte echo, one at a time, {count} per contestant in \
             {rounds} alternating rounds, after 200 warm-up round trips; client and server in one \
             process on loopback. quicfeed uses its main channel (framing, sequence numbers, \
             acknowledgements); the floor is a bare quinn bidirectional stream echoing fixed-size \
             messages; TCP + TLS 1.3 uses tokio-rustls with TCP_NODELAY; renet 2 uses its netcode \
             transport and a reliable ordered channel, both ends polled in a tight loop (its best \
             case: a game polling once per frame adds up to a frame)."
        ),
        &["contestant", "n", "p50", "p99", "p99.9", "p99 / bare quinn"],
    );
    for (name, s) in &summaries {
        section.row(vec![
            (*name).to_owned(),
            s.n.to_string(),
            ms(s.p50),
            ms(s.p99),
            ms(s.p999),
            format!("{:.2}x", s.p99 / floor.p99),
        ]);
    }
    let ours = summaries[0].1;
    let ratio = ours.p99 / floor.p99;
    section.target(
        "main request/response p99 vs bare quinn",
        format!("{ratio:.2}x ({} vs {})", ms(ours.p99), ms(floor.p99)),
        "<= 1.05x",
        ratio <= 1.05,
    );
    for (name, s) in &summaries[2..] {
        section.target(
            &format!("main request/response p99 below {name}"),
            format!("{} vs {}", ms(ours.p99), ms(s.p99)),
            "below",
            ours.p99 < s.p99,
        );
    }
    section.figures = json!(
        summaries
            .iter()
            .map(|(name, s)| json!({"contestant": name, "latency_ms": s}))
            .collect::<Vec<_>>()
    );
    let series = contestants
        .iter()
        .map(|(name, _, samples)| Series {
            name: (*name).to_owned(),
            samples_ms: samples.iter().map(|d| d.as_secs_f64() * 1e3).collect(),
        })
        .collect();
    (section, series)
}
