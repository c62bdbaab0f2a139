//! Browser players' transport, on loopback: WebTransport sessions on the same UDP port as
//! native clients, driven by a raw WebTransport peer (wtransport's client) that speaks the wire
//! protocol from PROTOCOL.md §14. The real-browser cases are in `tests/browser.rs`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{Fixture, within};
use quicfeed::protocol::codec;
use quicfeed::protocol::lane::{Datagram, decode_datagram, encode_lane_datagram};
use quicfeed::protocol::{
    ChannelKind, Message, PlayerId, Reason, Token, webtransport_resume_proof,
};
use quicfeed::{BrowserCertificate, Fingerprint, Server, ServerConfig, WebTransportConfig};

/// A stream of a WebTransport session, with a read buffer.
struct WtStream {
    send: wtransport::SendStream,
    recv: wtransport::RecvStream,
    buf: BytesMut,
}

impl WtStream {
    async fn send(&mut self, message: &Message) {
        let frame = codec::encode_message(message).unwrap();
        within(self.send.write_all(&frame)).await.unwrap();
    }

    /// The next message other than an ACK; `None` once the stream or the session ends.
    async fn recv(&mut self) -> Option<Message> {
        let mut chunk = vec![0u8; 65536];
        loop {
            if let Some(body) = codec::decode_frame(&mut self.buf, 1 << 20).unwrap() {
                match codec::decode_message(body).unwrap() {
                    Message::Ack { .. } => continue,
                    message => return Some(message),
                }
            }
            match within(self.recv.read(&mut chunk)).await {
                Ok(Some(n)) => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }
}

/// A WebTransport client speaking the wire protocol directly, as a page does.
struct WtPeer {
    conn: wtransport::Connection,
    _endpoint: wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client>,
    main: WtStream,
    feed: WtStream,
}

/// A WebTransport client endpoint that accepts the server's certificate by the hashes it
/// publishes, under the rules browsers apply (ECDSA P-256, at most 14 days).
fn endpoint(
    hashes: &[Fingerprint],
) -> wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client> {
    let config = wtransport::ClientConfig::builder()
        .with_bind_default()
        .with_server_certificate_hashes(
            hashes
                .iter()
                .map(|h| wtransport::tls::Sha256Digest::new(h.0)),
        )
        .build();
    wtransport::Endpoint::client(config).unwrap()
}

/// Opens a WebTransport session at `url` (with `origin`, if given).
async fn session(
    server: &quicfeed::Server,
    path: &str,
    origin: Option<&str>,
) -> Result<
    (
        wtransport::Connection,
        wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client>,
    ),
    wtransport::error::ConnectingError,
> {
    let endpoint = endpoint(&server.browser_certificate_hashes());
    let url = format!("https://127.0.0.1:{}{path}", server.local_addr().port());
    let mut options = wtransport::endpoint::ConnectOptions::builder(url);
    if let Some(origin) = origin {
        options = options.add_header("origin", origin);
    }
    let conn = within(endpoint.connect(options.build())).await?;
    Ok((conn, endpoint))
}

impl WtPeer {
    /// A session on the default path with both streams opened and declared.
    async fn connect(server: &quicfeed::Server) -> WtPeer {
        let (conn, endpoint) = session(server, "/quicfeed", None).await.unwrap();
        let main = Self::open(&conn, ChannelKind::Main).await;
        let feed = Self::open(&conn, ChannelKind::Feed).await;
        WtPeer {
            conn,
            _endpoint: endpoint,
            main,
            feed,
        }
    }

    async fn open(conn: &wtransport::Connection, channel: ChannelKind) -> WtStream {
        let (mut send, recv) = within(async { conn.open_bi().await.unwrap().await.unwrap() }).await;
        within(send.write_all(&[channel.tag()])).await.unwrap();
        WtStream {
            send,
            recv,
            buf: BytesMut::new(),
        }
    }

    /// The three-step handshake; returns the player ID and the resume credential.
    async fn handshake(&mut self) -> (PlayerId, Token) {
        self.main
            .send(&Message::ConnInit {
                max_main_frame: 65536,
                max_feed_frame: 65536,
                credentials: Bytes::from_static(b"browser"),
            })
            .await;
        let Some(Message::ConnInitReply { player_id, token_a }) = self.main.recv().await else {
            panic!("expected CONN_INIT_REPLY");
        };
        self.feed
            .send(&Message::FeedInit { player_id, token_a })
            .await;
        let Some(Message::FeedInitReply { token_b }) = self.feed.recv().await else {
            panic!("expected FEED_INIT_REPLY");
        };
        self.main.send(&Message::FinalAuth { token_b }).await;
        match self.main.recv().await {
            Some(Message::ConnOk { credential, .. }) => (player_id, credential),
            other => panic!("expected CONN_OK, got {other:?}"),
        }
    }

    /// The resume flight with `proof`; returns the server's answer on main.
    async fn resume(
        &mut self,
        player_id: PlayerId,
        proof: Token,
        next: (u64, u64),
    ) -> Option<Message> {
        self.main
            .send(&Message::Resume {
                player_id,
                proof,
                max_main_frame: 65536,
                max_feed_frame: 65536,
                main_next: next.0,
                feed_next: next.1,
            })
            .await;
        self.main.recv().await
    }
}

/// The server's handle of `player_id`'s session, once the server has it (its `CONN_OK` may
/// reach the peer before the server's application has the session).
async fn established_session(fixture: &Fixture, player_id: PlayerId) -> quicfeed::SessionHandle {
    within(async {
        loop {
            if let Some(handle) = fixture.server.session(player_id) {
                return handle;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}

async fn webtransport_fixture() -> Fixture {
    Fixture::start_with(|config| config.webtransport = Some(WebTransportConfig::default())).await
}

#[tokio::test]
async fn a_browser_session_and_a_native_client_share_one_port() {
    let fixture = webtransport_fixture().await;
    let mut peer = WtPeer::connect(&fixture.server).await;
    let (player_id, _) = peer.handshake().await;

    // Both channels, both ways: the echo application answers each message on its channel.
    peer.main
        .send(&Message::Data {
            seq: 0,
            payload: Bytes::from_static(b"ping"),
        })
        .await;
    peer.feed
        .send(&Message::Data {
            seq: 0,
            payload: Bytes::from_static(b"tick"),
        })
        .await;
    match peer.main.recv().await {
        Some(Message::Data { seq: 0, payload }) => assert_eq!(payload, "ping"),
        other => panic!("expected the main echo, got {other:?}"),
    }
    match peer.feed.recv().await {
        Some(Message::Data { seq: 0, payload }) => assert_eq!(payload, "tick"),
        other => panic!("expected the feed echo, got {other:?}"),
    }

    // A native client on the same port, with the server's own (long-lived) certificate.
    let mut native = fixture.connect().await;
    assert_ne!(native.player_id(), player_id);
    common::assert_echoes(&mut native, 3).await;
}

#[tokio::test]
async fn lane_messages_travel_as_webtransport_datagrams() {
    common::init_tracing();
    let (identity, _) = common::identity();
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), identity);
    config.webtransport = Some(WebTransportConfig::default());
    let server = Server::bind(config).await.unwrap();
    let mut peer = WtPeer::connect(&server).await;
    let (player_id, _) = peer.handshake().await;
    let session = within(server.accept()).await.unwrap();
    assert_eq!(session.player_id(), player_id);

    // Page to server.
    peer.conn
        .send_datagram(encode_lane_datagram(1, 0, b"input"))
        .unwrap();
    assert_eq!(within(session.lane().recv_bytes()).await.unwrap(), "input");

    // Server to page.
    session.lane().send_bytes(b"snapshot").unwrap();
    let payload = within(async {
        loop {
            let datagram = peer.conn.receive_datagram().await.unwrap();
            if let Ok(Datagram::Lane(lane)) = decode_datagram(datagram.payload()) {
                return lane.payload;
            }
        }
    })
    .await;
    assert_eq!(payload, "snapshot");
}

#[tokio::test]
async fn a_browser_resumes_its_session_on_a_new_webtransport_session() {
    let fixture = webtransport_fixture().await;
    let mut first = WtPeer::connect(&fixture.server).await;
    let (player_id, credential) = first.handshake().await;
    first
        .main
        .send(&Message::Data {
            seq: 0,
            payload: Bytes::from_static(b"one"),
        })
        .await;
    assert!(matches!(
        first.main.recv().await,
        Some(Message::Data { seq: 0, .. })
    ));
    // The page's connection is gone without a word (as when a tab loses its network).
    first.conn.close(wtransport::VarInt::from_u32(0), b"");
    drop(first);

    let mut second = WtPeer::connect(&fixture.server).await;
    let proof = webtransport_resume_proof(&credential, player_id);
    match second.resume(player_id, proof, (1, 0)).await {
        Some(Message::ConnOk { .. }) => {}
        other => panic!("expected CONN_OK for the resume, got {other:?}"),
    }
    // The same session: main goes on from where it was.
    second
        .main
        .send(&Message::Data {
            seq: 1,
            payload: Bytes::from_static(b"two"),
        })
        .await;
    match second.main.recv().await {
        Some(Message::Data { seq: 1, payload }) => assert_eq!(payload, "two"),
        other => panic!("expected the echo of the second message, got {other:?}"),
    }
}

#[tokio::test]
async fn a_resume_proof_made_for_another_credential_is_refused() {
    let fixture = webtransport_fixture().await;
    let mut first = WtPeer::connect(&fixture.server).await;
    let (player_id, _) = first.handshake().await;
    first.conn.close(wtransport::VarInt::from_u32(0), b"");
    drop(first);
    let mut second = WtPeer::connect(&fixture.server).await;
    let wrong = webtransport_resume_proof(&Token([7; 16]), player_id);
    match second.resume(player_id, wrong, (0, 0)).await {
        Some(Message::ConnFailed { reason, .. }) => assert_eq!(reason, Reason::InvalidToken),
        other => panic!("expected CONN_FAILED(INVALID_TOKEN), got {other:?}"),
    }
}

#[tokio::test]
async fn other_paths_and_origins_are_refused() {
    let fixture = Fixture::start_with(|config| {
        let mut web = WebTransportConfig::default();
        web.allowed_origins = vec!["http://127.0.0.1:8080".into()];
        config.webtransport = Some(web);
    })
    .await;
    assert!(
        session(&fixture.server, "/elsewhere", Some("http://127.0.0.1:8080"))
            .await
            .is_err()
    );
    assert!(
        session(&fixture.server, "/quicfeed", Some("https://evil.example"))
            .await
            .is_err()
    );
    assert!(session(&fixture.server, "/quicfeed", None).await.is_err());
    assert!(
        session(&fixture.server, "/quicfeed", Some("http://127.0.0.1:8080"))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_server_without_webtransport_refuses_browsers() {
    let fixture = Fixture::start().await;
    assert!(fixture.server.browser_certificate_hashes().is_empty());
    let endpoint = endpoint(&[]);
    let url = format!("https://127.0.0.1:{}/quicfeed", fixture.addr.port());
    let attempt = tokio::time::timeout(Duration::from_secs(10), endpoint.connect(url)).await;
    assert!(matches!(attempt, Ok(Err(_))), "the h3 ALPN must be refused");
}

#[tokio::test]
async fn a_server_close_reaches_the_page_as_a_farewell_before_the_close_and_its_streams_stay_open()
{
    let fixture = webtransport_fixture().await;
    let mut peer = WtPeer::connect(&fixture.server).await;
    let (player_id, _) = peer.handshake().await;
    let handle = established_session(&fixture, player_id).await;
    handle.close(Reason::ServerShutdown, "maintenance");

    // A page cannot read the QUIC close code: the reason comes first, on a stream of its own.
    let mut farewell = within(peer.conn.accept_uni()).await.unwrap();
    let mut frame = BytesMut::new();
    let mut chunk = [0u8; 512];
    while let Some(n) = within(farewell.read(&mut chunk)).await.unwrap() {
        frame.extend_from_slice(&chunk[..n]);
    }
    let body = codec::decode_frame(&mut frame, 4096).unwrap().unwrap();
    match codec::decode_message(body).unwrap() {
        Message::ConnFailed {
            reason, message, ..
        } => {
            assert_eq!(reason, Reason::ServerShutdown);
            assert_eq!(message, "maintenance");
        }
        other => panic!("expected CONN_FAILED as the farewell, got {other:?}"),
    }
    assert!(frame.is_empty(), "the farewell is one frame");
    // Nothing before it told the page to resume: a page reads a stopped stream as the server
    // giving up the connection (and its resume would find no session). The session's end must
    // not stop its streams while the farewell is on its way; they go with the close.
    for (channel, stream) in [("main", &mut peer.main), ("feed", &mut peer.feed)] {
        let written = within(stream.send.write_all(b"\0")).await;
        assert!(
            !matches!(
                written,
                Err(wtransport::error::StreamWriteError::Stopped(_))
            ),
            "the server stopped {channel} before its close: {written:?}"
        );
    }
    // Then the close itself, as on a native connection.
    match within(peer.conn.closed()).await {
        wtransport::error::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(
                close.code().into_inner(),
                u64::from(Reason::ServerShutdown.code())
            );
        }
        other => panic!("expected the server's close, got {other}"),
    }
}

/// A browser-like connection (ALPN `h3`) that opens an HTTP/3 unidirectional stream, sends the
/// first byte of its two-byte type and nothing more, and never sends SETTINGS: its setup can
/// only fail at the deadline, and the stream it holds keeps wtransport reading. An error if
/// the server closed the connection first.
async fn abandoned_setup(
    fixture: &Fixture,
) -> Result<(quinn::Endpoint, quinn::Connection), quinn::ConnectionError> {
    let mut config = common::raw_client_config_alpn(&fixture.certificate, b"h3");
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_millis(200)));
    config.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    let conn = within(endpoint.connect(fixture.addr, "localhost").unwrap()).await?;
    let mut stream = within(conn.open_uni()).await?;
    if within(stream.write_all(&[0x40])).await.is_err() {
        return Err(within(conn.closed()).await);
    }
    // Kept open: a dropped stream would be finished.
    std::mem::forget(stream);
    Ok((endpoint, conn))
}

#[tokio::test]
async fn browser_connections_abandoned_mid_setup_are_bounded() {
    let fixture = Fixture::start_with(|config| {
        let mut web = WebTransportConfig::default();
        web.certificate = BrowserCertificate::Identity;
        config.webtransport = Some(web);
        config.handshake_timeout = Duration::from_millis(300);
        config.max_pending_handshakes = 2;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(abandoned_setup(&fixture).await.unwrap());
    }

    // Once the server has given up their setups (at their deadline), it holds more connections
    // it cannot close than handshakes may be in progress: the next browser is refused at once,
    // within its QUIC handshake (so as a transport-level APPLICATION_ERROR without the reason).
    let refusal = within(async {
        loop {
            match abandoned_setup(&fixture).await {
                Err(refused) => return refused,
                // Not yet: this one joins the held ones until its own deadline.
                Ok(probe) => held.push(probe),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    match refusal {
        quinn::ConnectionError::ConnectionClosed(close) => {
            assert_eq!(
                close.error_code,
                quinn::TransportErrorCode::APPLICATION_ERROR
            );
        }
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, Reason::ServerBusy.code().into());
        }
        other => panic!("expected a refusal, got {other}"),
    }
    assert!(fixture.server.counters().browsers_refused >= 1);
    // Native players are not affected.
    let mut native = fixture.connect().await;
    common::assert_echoes(&mut native, 3).await;
    drop(held);
}

#[tokio::test]
async fn a_page_that_finishes_its_streams_and_closes_ends_its_session_normally() {
    let fixture = webtransport_fixture().await;
    let mut events = fixture.server.events();
    let mut peer = WtPeer::connect(&fixture.server).await;
    let (player_id, _) = peer.handshake().await;
    let handle = established_session(&fixture, player_id).await;
    // As web/quicfeed.js closes gracefully: both streams finished and acknowledged by QUIC,
    // then the WebTransport session closed at once (with a code the server cannot read as a
    // quicfeed reason). The server's task may notice the connection's end before it has read
    // the FINs (a loaded machine): it takes in what the streams hold first. (Without waiting
    // for the acknowledgement, QUIC's close would discard the unsent FINs.)
    for stream in [&mut peer.main, &mut peer.feed] {
        within(stream.send.finish()).await.unwrap();
    }
    peer.conn.close(wtransport::VarInt::from_u32(0), b"");

    let ended = within(handle.closed()).await;
    assert!(
        matches!(
            ended,
            quicfeed::Disconnect::ByPeer {
                reason: Reason::Normal,
                ..
            }
        ),
        "{ended}"
    );
    while let Some(event) = events.try_next() {
        assert!(
            !matches!(event.event, quicfeed::SessionEvent::ConnectionLost { .. }),
            "the page's close was taken as a loss"
        );
    }
    assert_eq!(fixture.server.counters().sessions_expired, 0);
}
