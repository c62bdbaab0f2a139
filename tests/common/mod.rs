//! Shared test harness: a server running an echo application, a raw peer that speaks the wire
//! protocol byte by byte, and a scripted raw server for client-side tests.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quicfeed::protocol::codec::{self, HANDSHAKE_FRAME_LIMIT};
use quicfeed::protocol::{ALPN, ChannelKind, Message, PlayerId, Reason, Token};
use quicfeed::{
    CertificateDer, Client, ClientConfig, Identity, RecvError, Server, ServerConfig, Session, Trust,
};
use tokio::sync::mpsc;

/// Upper bound for any single awaited event; generous for loaded 2-core CI machines.
pub const EVENT: Duration = Duration::from_secs(10);

/// Awaits `f` for at most [`EVENT`].
pub async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(EVENT, f)
        .await
        .expect("event did not happen in time")
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "quicfeed=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A fresh self-signed identity and the trust that pins it.
pub fn identity() -> (Identity, Trust) {
    let identity = Identity::generate_self_signed(&["localhost"]).unwrap();
    let trust = Trust::Certificate(identity.certificate().clone());
    (identity, trust)
}

/// A server on loopback with default settings, and a client configuration that trusts it.
pub async fn server_and_config() -> (Server, ClientConfig) {
    init_tracing();
    let (identity, trust) = identity();
    let server = Server::bind(ServerConfig::new("127.0.0.1:0".parse().unwrap(), identity))
        .await
        .unwrap();
    let config = ClientConfig::new(server.local_addr(), trust);
    (server, config)
}

/// What the echo application on the server observed.
#[derive(Debug)]
pub enum AppEvent {
    /// A session was accepted.
    Accepted(PlayerId),
    /// A receive on `channel` failed with this error (the session's task then stops).
    RecvFailed(PlayerId, ChannelKind, RecvError),
}

/// A server on loopback whose application echoes every message back on the channel it came on.
pub struct Fixture {
    pub server: Arc<Server>,
    pub addr: SocketAddr,
    pub trust: Trust,
    pub certificate: CertificateDer<'static>,
    pub events: mpsc::UnboundedReceiver<AppEvent>,
}

impl Fixture {
    pub async fn start() -> Fixture {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut ServerConfig)) -> Fixture {
        init_tracing();
        let (identity, trust) = identity();
        let certificate = identity.certificate().clone();
        let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), identity);
        configure(&mut config);
        let server = Arc::new(Server::bind(config).await.unwrap());
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(echo_app(server.clone(), tx));
        Fixture {
            addr: server.local_addr(),
            server,
            trust,
            certificate,
            events,
        }
    }

    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::new(self.addr, self.trust.clone())
    }

    pub async fn connect(&self) -> Session {
        within(Client::connect(&self.client_config()))
            .await
            .unwrap()
    }

    pub async fn raw(&self) -> RawPeer {
        RawPeer::connect(self.addr, &self.certificate).await
    }

    /// The next receive failure the echo application saw on `channel`. Failures on the other
    /// channel, which the end of the same session also causes (in either order), are skipped.
    pub async fn failure_on(&mut self, channel: ChannelKind) -> (PlayerId, RecvError) {
        loop {
            match within(self.events.recv()).await.expect("echo app stopped") {
                AppEvent::RecvFailed(p, c, e) if c == channel => return (p, e),
                AppEvent::Accepted(_) | AppEvent::RecvFailed(..) => continue,
            }
        }
    }
}

async fn echo_app(server: Arc<Server>, events: mpsc::UnboundedSender<AppEvent>) {
    while let Some(session) = server.accept().await {
        let player = session.player_id();
        let _ = events.send(AppEvent::Accepted(player));
        let (handle, main, feed) = session.into_parts();
        for channel in [main, feed] {
            let events = events.clone();
            let handle = handle.clone();
            tokio::spawn(async move {
                let kind = channel.kind();
                let (tx, rx) = channel.split();
                loop {
                    match rx.recv_bytes().await {
                        Ok(payload) => {
                            if tx.send_bytes(&payload).await.is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            let _ = events.send(AppEvent::RecvFailed(player, kind, e));
                            break;
                        }
                    }
                }
                drop(handle);
            });
        }
    }
}

/// Sends `n` numbered messages on both channels and checks each echo comes back in order.
pub async fn assert_echoes(session: &mut Session, n: u32) {
    for i in 0..n {
        session.main().send(&("main", i)).await.unwrap();
        session.feed().send(&("feed", i)).await.unwrap();
    }
    for i in 0..n {
        let m: (String, u32) = within(session.main().recv()).await.unwrap();
        assert_eq!(m, ("main".to_owned(), i));
        let f: (String, u32) = within(session.feed().recv()).await.unwrap();
        assert_eq!(f, ("feed".to_owned(), i));
    }
}

/// The proof of `credential` for a `RESUME` of `player_id` on `conn` (PROTOCOL.md §7.2), as a
/// client written from the specification computes it.
pub fn resume_proof(conn: &quinn::Connection, credential: Token, player_id: PlayerId) -> Token {
    let mut proof = [0u8; 16];
    conn.export_keying_material(
        &mut proof,
        quicfeed::protocol::RESUME_PROOF_LABEL,
        &quicfeed::protocol::resume_proof_context(&credential, player_id),
    )
    .unwrap();
    Token(proof)
}

/// A quinn client configuration that trusts `certificate` and speaks quicfeed's ALPN.
pub fn raw_client_config(certificate: &CertificateDer<'static>) -> quinn::ClientConfig {
    rustls_client(certificate)
}

/// As [`raw_client_config`], with 0-RTT enabled: a second connection with the same
/// configuration can send early data on the ticket of the first.
pub fn raw_client_config_early_data(certificate: &CertificateDer<'static>) -> quinn::ClientConfig {
    rustls_client_with(certificate, true)
}

/// As [`raw_client_config`], offering `alpn` instead of quicfeed's (`b"h3"`: a browser's
/// connection, before its HTTP/3 setup).
pub fn raw_client_config_alpn(
    certificate: &CertificateDer<'static>,
    alpn: &[u8],
) -> quinn::ClientConfig {
    rustls_client_offering(certificate, false, alpn)
}

fn rustls_client(certificate: &CertificateDer<'static>) -> quinn::ClientConfig {
    rustls_client_with(certificate, false)
}

fn rustls_client_with(
    certificate: &CertificateDer<'static>,
    early_data: bool,
) -> quinn::ClientConfig {
    rustls_client_offering(certificate, early_data, ALPN)
}

fn rustls_client_offering(
    certificate: &CertificateDer<'static>,
    early_data: bool,
    alpn: &[u8],
) -> quinn::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certificate.clone()).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.enable_early_data = early_data;
    quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ))
}

/// A stream opened by the raw peer, with a read buffer.
pub struct RawStream {
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    buf: BytesMut,
}

impl RawStream {
    /// Writes bytes as they are.
    pub async fn write(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.unwrap();
    }

    /// Writes one encoded message.
    pub async fn send(&mut self, message: &Message) {
        self.write(&codec::encode_message(message).unwrap()).await;
    }

    /// Reads the next message other than an ACK (the peer's periodic acknowledgements only trim
    /// its replay buffer); `None` when the stream or the connection ends first.
    pub async fn recv(&mut self) -> Option<Message> {
        loop {
            if let Some(body) = codec::decode_frame(&mut self.buf, 1 << 20).unwrap() {
                match codec::decode_message(body).unwrap() {
                    Message::Ack { .. } => continue,
                    message => return Some(message),
                }
            }
            match within(self.recv.read_chunk(65536, true)).await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.bytes),
                _ => return None,
            }
        }
    }
}

/// A client that speaks the wire protocol directly, to misbehave on purpose.
pub struct RawPeer {
    pub conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
    pub main: Option<RawStream>,
    pub feed: Option<RawStream>,
    /// The resume credential from the last CONN_OK.
    pub credential: Option<Token>,
}

impl RawPeer {
    pub async fn connect(addr: SocketAddr, certificate: &CertificateDer<'static>) -> RawPeer {
        Self::connect_from("127.0.0.1".parse().unwrap(), addr, certificate).await
    }

    /// Connects from `local` (any 127.x.y.z address works on Linux loopback), to appear as a
    /// distinct source address.
    pub async fn connect_from(
        local: std::net::IpAddr,
        addr: SocketAddr,
        certificate: &CertificateDer<'static>,
    ) -> RawPeer {
        let mut endpoint = quinn::Endpoint::client(SocketAddr::new(local, 0)).unwrap();
        endpoint.set_default_client_config(rustls_client(certificate));
        Self::connect_with(endpoint, addr).await
    }

    /// Connects to `addr` with `endpoint`'s default configuration (one that keeps TLS tickets,
    /// say, shared with later connections).
    pub async fn connect_with(endpoint: quinn::Endpoint, addr: SocketAddr) -> RawPeer {
        let conn = within(endpoint.connect(addr, "localhost").unwrap())
            .await
            .unwrap();
        RawPeer {
            conn,
            _endpoint: endpoint,
            main: None,
            feed: None,
            credential: None,
        }
    }

    /// Opens a stream and writes `first` on it (a declaration byte, or anything else).
    pub async fn open_raw(&mut self, first: &[u8]) -> RawStream {
        let (send, recv) = self.conn.open_bi().await.unwrap();
        let mut stream = RawStream {
            send,
            recv,
            buf: BytesMut::new(),
        };
        stream.write(first).await;
        stream
    }

    /// The stream of `channel`, opened and declared on first use.
    pub async fn stream(&mut self, channel: ChannelKind) -> &mut RawStream {
        let opened = match channel {
            ChannelKind::Main => self.main.is_some(),
            ChannelKind::Feed => self.feed.is_some(),
        };
        if !opened {
            let stream = self.open_raw(&[channel.tag()]).await;
            match channel {
                ChannelKind::Main => self.main = Some(stream),
                ChannelKind::Feed => self.feed = Some(stream),
            }
        }
        match channel {
            ChannelKind::Main => self.main.as_mut().unwrap(),
            ChannelKind::Feed => self.feed.as_mut().unwrap(),
        }
    }

    pub async fn send(&mut self, channel: ChannelKind, message: &Message) {
        self.stream(channel).await.send(message).await;
    }

    pub async fn recv(&mut self, channel: ChannelKind) -> Option<Message> {
        self.stream(channel).await.recv().await
    }

    /// Sends CONN_INIT and returns the reply's player ID and token A.
    pub async fn conn_init(&mut self, credentials: &[u8]) -> (PlayerId, Token) {
        let init = Message::ConnInit {
            max_main_frame: 65536,
            max_feed_frame: 65536,
            credentials: Bytes::copy_from_slice(credentials),
        };
        self.send(ChannelKind::Main, &init).await;
        match self.recv(ChannelKind::Main).await {
            Some(Message::ConnInitReply { player_id, token_a }) => (player_id, token_a),
            other => panic!("expected CONN_INIT_REPLY, got {other:?}"),
        }
    }

    /// Sends FEED_INIT and returns token B.
    pub async fn feed_init(&mut self, player_id: PlayerId, token_a: Token) -> Token {
        self.send(ChannelKind::Feed, &Message::FeedInit { player_id, token_a })
            .await;
        match self.recv(ChannelKind::Feed).await {
            Some(Message::FeedInitReply { token_b }) => token_b,
            other => panic!("expected FEED_INIT_REPLY, got {other:?}"),
        }
    }

    /// Runs the whole handshake correctly; returns (player ID, token A, token B).
    pub async fn handshake(&mut self) -> (PlayerId, Token, Token) {
        let (player_id, token_a) = self.conn_init(b"").await;
        let token_b = self.feed_init(player_id, token_a).await;
        self.send(ChannelKind::Main, &Message::FinalAuth { token_b })
            .await;
        match self.recv(ChannelKind::Main).await {
            Some(Message::ConnOk { credential, .. }) => {
                self.credential = Some(credential);
                (player_id, token_a, token_b)
            }
            other => panic!("expected CONN_OK, got {other:?}"),
        }
    }

    /// Sends the resume flight (RESUME on main with the proof of `credential` on this
    /// connection, then the feed declaration) and returns the server's answer on main.
    pub async fn resume(&mut self, player_id: PlayerId, credential: Token) -> Option<Message> {
        let proof = resume_proof(&self.conn, credential, player_id);
        self.resume_with_proof(player_id, proof).await
    }

    /// Sends a resume flight whose `RESUME` presents `proof` as it is (a copied one, say).
    pub async fn resume_with_proof(
        &mut self,
        player_id: PlayerId,
        proof: Token,
    ) -> Option<Message> {
        let resume = Message::Resume {
            player_id,
            proof,
            max_main_frame: 65536,
            max_feed_frame: 65536,
            main_next: 0,
            feed_next: 0,
        };
        self.send(ChannelKind::Main, &resume).await;
        self.stream(ChannelKind::Feed).await;
        let answer = self.recv(ChannelKind::Main).await;
        if let Some(Message::ConnOk { credential, .. }) = &answer {
            self.credential = Some(*credential);
        }
        answer
    }

    /// The application close the server ended the connection with: (reason, message).
    pub async fn close_reason(&self) -> (Reason, String) {
        match within(self.conn.closed()).await {
            quinn::ConnectionError::ApplicationClosed(close) => (
                Reason::from_code(u16::try_from(close.error_code.into_inner()).unwrap()),
                String::from_utf8_lossy(&close.reason).into_owned(),
            ),
            other => panic!("connection ended without an application close: {other}"),
        }
    }

    /// Asserts the server answered CONN_FAILED(reason) on `channel` and then closed the
    /// connection with the same reason code.
    pub async fn expect_failed(&mut self, channel: ChannelKind, reason: Reason) {
        match self.recv(channel).await {
            Some(Message::ConnFailed { reason: got, .. }) => assert_eq!(got, reason),
            other => panic!("expected CONN_FAILED({reason}) on {channel}, got {other:?}"),
        }
        assert_eq!(self.close_reason().await.0, reason);
    }
}

/// A scripted server for client-side tests: TLS with ALPN, then the test drives the streams.
pub struct RawServer {
    pub endpoint: quinn::Endpoint,
    pub trust: Trust,
}

impl RawServer {
    pub fn start() -> RawServer {
        init_tracing();
        let (identity, trust) = identity();
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![identity.certificate().clone()],
            identity_key(&identity),
        )
        .unwrap();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
        let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        RawServer { endpoint, trust }
    }

    pub fn addr(&self) -> SocketAddr {
        self.endpoint.local_addr().unwrap()
    }

    /// Accepts one connection and its first (main) stream, and reads the declaration byte.
    pub async fn accept(&self) -> (quinn::Connection, RawStream) {
        let conn = within(self.endpoint.accept()).await.unwrap().await.unwrap();
        let main = accept_declared(&conn, ChannelKind::Main).await;
        (conn, main)
    }
}

/// Accepts the next stream and checks its declaration byte.
pub async fn accept_declared(conn: &quinn::Connection, channel: ChannelKind) -> RawStream {
    let (send, mut recv) = within(conn.accept_bi()).await.unwrap();
    let mut tag = [0u8; 1];
    recv.read_exact(&mut tag).await.unwrap();
    assert_eq!(tag[0], channel.tag());
    RawStream {
        send,
        recv,
        buf: BytesMut::new(),
    }
}

fn identity_key(identity: &Identity) -> quicfeed::PrivateKeyDer<'static> {
    // Round-trip through PEM files: the only public way to read an identity's key.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    identity.write_pem_files(&cert, &key).unwrap();
    use rustls::pki_types::pem::PemObject;
    quicfeed::PrivateKeyDer::from_pem_file(&key).unwrap()
}

/// The handshake frame limit, re-exported for oversize tests.
pub const HANDSHAKE_LIMIT: usize = HANDSHAKE_FRAME_LIMIT;
