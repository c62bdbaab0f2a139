//! The real client against a scripted raw server: the FEED_INIT retry of the seed's second
//! diagram, bounded failure when every attempt is ignored, and refusals and violations from the
//! server side. Also the client's certificate trust modes against a real server.

mod common;

use std::time::{Duration, Instant};

use common::{Fixture, RawServer, accept_declared, assert_echoes, within};
use quicfeed::protocol::{ChannelKind, HandshakeStep, Message, PlayerId, Token};
use quicfeed::{Client, ClientConfig, ConnectError, Fingerprint, Reason, ServerAddress, Trust};

const RETRY: Duration = Duration::from_millis(200);

fn config(server: &RawServer) -> ClientConfig {
    let mut config = ClientConfig::new(server.addr(), server.trust.clone());
    config.feed_init_timeout = RETRY;
    config.feed_init_attempts = 3;
    config
}

/// Runs a raw server that answers CONN_INIT, then ignores the first `ignore` FEED_INITs and
/// answers the rest; returns how many FEED_INITs it saw before FINAL_AUTH (or the end).
async fn scripted_server(server: &RawServer, ignore: usize) -> usize {
    let (conn, mut main) = server.accept().await;
    assert!(matches!(main.recv().await, Some(Message::ConnInit { .. })));
    let token_a = Token([0xa0; 16]);
    let token_b = Token([0xb0; 16]);
    main.send(&Message::ConnInitReply {
        player_id: PlayerId(9),
        token_a,
    })
    .await;
    let mut feed = accept_declared(&conn, ChannelKind::Feed).await;
    let mut seen = 0;
    loop {
        tokio::select! {
            message = feed.recv() => match message {
                Some(Message::FeedInit { player_id, token_a: shown }) => {
                    assert_eq!((player_id, shown), (PlayerId(9), token_a), "retries repeat the same request");
                    seen += 1;
                    if seen > ignore {
                        feed.send(&Message::FeedInitReply { token_b }).await;
                    }
                }
                _ => return seen,
            },
            message = main.recv() => match message {
                Some(Message::FinalAuth { token_b: shown }) => {
                    assert_eq!(shown, token_b);
                    main.send(&Message::ConnOk { max_main_frame: 65536, max_feed_frame: 65536, credential: Token([0xcc; 16]), main_next: 0, feed_next: 0 }).await;
                    // Stay up until the client is done with us.
                    let _ = within(conn.closed()).await;
                    return seen;
                }
                _ => return seen,
            },
        }
    }
}

/// Proves: when the server ignores the first FEED_INIT, the client sends it again after its
/// timeout and the handshake completes.
#[tokio::test]
async fn an_ignored_feed_init_is_retried_and_the_handshake_completes() {
    let server = RawServer::start();
    let config = config(&server);
    let serving = tokio::spawn(async move { scripted_server(&server, 1).await });
    let started = Instant::now();
    let session = within(Client::connect(&config)).await.unwrap();
    assert!(
        started.elapsed() >= RETRY,
        "the retry waited for its timeout"
    );
    assert_eq!(session.player_id(), PlayerId(9));
    drop(session);
    assert_eq!(within(serving).await.unwrap(), 2, "one retry");
}

/// Proves: when every FEED_INIT is ignored, connect fails with a timeout error after exactly the
/// configured attempts, in bounded time.
#[tokio::test]
async fn when_every_feed_init_is_ignored_connect_times_out_in_bounded_time() {
    let server = RawServer::start();
    let config = config(&server);
    let serving = tokio::spawn(async move { scripted_server(&server, usize::MAX).await });
    let started = Instant::now();
    let err = within(Client::connect(&config)).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(
            err,
            ConnectError::TimedOut {
                step: HandshakeStep::FeedInit
            }
        ),
        "{err}"
    );
    assert!(
        elapsed >= RETRY * 3,
        "all three attempts got their time: {elapsed:?}"
    );
    assert!(
        elapsed < RETRY * 3 + Duration::from_secs(2),
        "bounded: {elapsed:?}"
    );
    assert_eq!(within(serving).await.unwrap(), 3, "three attempts in all");
}

/// Proves: CONN_FAILED from the server ends connect with the server's reason and message, and a
/// message out of place is reported as a server violation.
#[tokio::test]
async fn server_refusals_and_violations_are_typed_errors() {
    let server = RawServer::start();
    let config = config(&server);
    let client = tokio::spawn(async move { Client::connect(&config).await });
    let (_conn, mut main) = server.accept().await;
    main.recv().await;
    main.send(&Message::ConnFailed {
        reason: Reason::ServerFull,
        message: "try later".into(),
        retry_after_ms: Some(1500),
    })
    .await;
    let err = within(client).await.unwrap().unwrap_err();
    assert!(
        matches!(
            &err,
            ConnectError::Refused { reason: Reason::ServerFull, message, retry_after }
                if message == "try later" && *retry_after == Some(Duration::from_millis(1500))
        ),
        "{err}"
    );

    let config = self::config(&server);
    let client = tokio::spawn(async move { Client::connect(&config).await });
    let (conn, mut main) = server.accept().await;
    main.recv().await;
    main.send(&Message::ConnOk {
        max_main_frame: 1,
        max_feed_frame: 1,
        credential: Token([0xcc; 16]),
        main_next: 0,
        feed_next: 0,
    })
    .await;
    let err = within(client).await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            ConnectError::ServerViolation {
                reason: Reason::UnexpectedMessage,
                ..
            }
        ),
        "{err}"
    );
    let closed = within(conn.closed()).await;
    assert!(
        closed.to_string().contains("CONN_OK"),
        "the client says why it closed: {closed}"
    );
}

/// Proves: a server that does not answer within the handshake timeout fails connect with a
/// timeout naming the step.
#[tokio::test]
async fn a_silent_server_times_out_connect() {
    let server = RawServer::start();
    let mut config = config(&server);
    config.handshake_timeout = Duration::from_millis(500);
    let client = tokio::spawn(async move { Client::connect(&config).await });
    let (_conn, mut main) = server.accept().await;
    main.recv().await;
    let err = within(client).await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            ConnectError::TimedOut {
                step: HandshakeStep::ConnInit
            }
        ),
        "{err}"
    );
}

/// Proves: every trust mode connects to a server whose certificate it trusts.
#[tokio::test]
async fn every_trust_mode_accepts_the_right_certificate() {
    let fixture = Fixture::start().await;
    let certificate = fixture.certificate.clone();
    for trust in [
        Trust::Certificate(certificate.clone()),
        Trust::Fingerprint(Fingerprint::of(&certificate)),
        Trust::CaCertificates(vec![certificate.clone()]),
        Trust::DangerousAcceptAnyCertificate,
    ] {
        let label = format!("{trust:?}").chars().take(40).collect::<String>();
        let mut session = within(Client::connect(&ClientConfig::new(fixture.addr, trust)))
            .await
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_echoes(&mut session, 1).await;
    }
}

/// Proves: a pinned certificate or fingerprint that does not match fails the QUIC handshake,
/// and the error shows both fingerprints; a CA that did not sign the certificate fails too.
#[tokio::test]
async fn a_certificate_that_does_not_match_the_trust_is_refused() {
    let fixture = Fixture::start().await;
    let (other, _) = common::identity();
    let presented = Fingerprint::of(&fixture.certificate);
    for trust in [
        Trust::Certificate(other.certificate().clone()),
        Trust::Fingerprint(other.fingerprint()),
    ] {
        let err = within(Client::connect(&ClientConfig::new(fixture.addr, trust)))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ConnectError::Certificate { .. }), "{text}");
        assert!(text.contains(&presented.to_string()), "{text}");
        assert!(text.contains(&other.fingerprint().to_string()), "{text}");
        assert!(!text.contains("OtherError"), "{text}");
    }
    // A self-signed certificate under CA trust: the error says how to pin it instead.
    let trust = Trust::CaCertificates(vec![other.certificate().clone()]);
    let err = within(Client::connect(&ClientConfig::new(fixture.addr, trust)))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ConnectError::Certificate { .. }), "{text}");
    assert!(text.contains("certificate authority"), "{text}");
    assert!(text.contains("Trust::Certificate"), "{text}");
}

/// Proves: a client pointed at a port where nothing answers says so, naming the address and
/// what to check, instead of a bare timeout.
#[tokio::test]
async fn a_port_where_nothing_answers_is_reported_as_such() {
    // A socket that never answers (no ICMP either, so the wait is the whole timeout).
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let (identity, _) = common::identity();
    let mut config = ClientConfig::new(addr, Trust::Certificate(identity.certificate().clone()));
    config.handshake_timeout = Duration::from_millis(500);
    let err = within(Client::connect(&config)).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, ConnectError::NoAnswer { server, .. } if server == addr.to_string()),
        "{text}"
    );
    assert!(
        text.contains(&format!("nothing answered from {addr}")),
        "{text}"
    );
    assert!(text.contains("is the server running"), "{text}");
}

/// Proves: a server that cannot listen names the address and what to do.
#[tokio::test]
async fn a_taken_port_is_reported_with_its_address() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (identity, _) = common::identity();
    let Err(err) = quicfeed::Server::bind(quicfeed::ServerConfig::new(addr, identity)).await else {
        panic!("bound to a taken port");
    };
    let text = err.to_string();
    assert!(
        matches!(err, quicfeed::ServerError::Bind { addr: a, .. } if a == addr),
        "{text}"
    );
    assert!(text.contains(&format!("cannot listen on {addr}")), "{text}");
    assert!(text.contains("choose another address or port"), "{text}");
}

/// Proves: a client can name its server by host name and port (`localhost:PORT`, resolved when
/// connecting); the TLS server name follows from the host name.
#[tokio::test]
async fn a_server_named_by_host_and_port_is_found() {
    let fixture = Fixture::start().await;
    let port = fixture.addr.port();
    let server: ServerAddress = format!("localhost:{port}").parse().unwrap();
    assert_eq!(server.host_name(), Some("localhost"));
    let config = ClientConfig::new(server, fixture.trust.clone());
    assert_eq!(
        config.server_name, "localhost",
        "the TLS name follows the host"
    );
    let mut session = within(Client::connect(&config)).await.unwrap();
    assert_echoes(&mut session, 3).await;
    // The (host, port) form is the same server.
    let pair = ClientConfig::new(("localhost", port), fixture.trust.clone());
    assert_eq!(pair.server, config.server);
    // An address written as text is an address, not a name.
    let literal: ServerAddress = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(literal, ServerAddress::Addr(fixture.addr));
}

/// Proves: a server address that is not HOST:PORT is refused with what was expected, and a
/// name that does not resolve is reported as such, naming it.
#[tokio::test]
async fn a_bad_server_address_or_an_unknown_name_says_what_is_wrong() {
    for text in [
        "localhost",
        "localhost:port",
        ":4433",
        "local host:4433",
        "[::1]",
    ] {
        let err = text.parse::<ServerAddress>().unwrap_err().to_string();
        assert!(err.contains("expected HOST:PORT"), "{text}: {err}");
        assert!(err.contains(text), "{text}: {err}");
    }
    let (identity, trust) = common::identity();
    drop(identity);
    // A name with an empty label, which the system's resolver refuses itself, with no DNS
    // query: the test does not depend on the network's DNS (one that answers every name would
    // turn a merely unknown name into an address).
    let config = ClientConfig::new(("no-such-host..invalid", 4433), trust);
    let err = within(Client::connect(&config)).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ConnectError::Resolve { .. }), "{text}");
    assert!(
        text.contains("cannot find the server no-such-host..invalid:4433"),
        "{text}"
    );
}
