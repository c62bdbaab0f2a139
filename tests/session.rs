//! An established session's lifecycle over loopback QUIC: cancellation of send and receive,
//! a client that closes and exits, streams reset or finished by a peer after `CONN_OK`, and a
//! server dropped without shutdown.

mod common;

use std::time::{Duration, Instant};

use common::{Fixture, within};
use quicfeed::protocol::ChannelKind;
use quicfeed::{
    Client, ClientConfig, Disconnect, Reason, RecvError, Server, ServerConfig, Session, Trust,
};

async fn connected() -> (Server, Session, Session) {
    let (server, config) = common::server_and_config().await;
    let client = within(Client::connect(&config)).await.unwrap();
    let session = within(server.accept()).await.unwrap();
    (server, client, session)
}

/// Proves: sends cancelled part-way (a tick loop's timeout firing while flow control blocks)
/// never cut a message short: every message the peer receives is whole, in order, and the
/// channel keeps working.
#[tokio::test]
async fn a_cancelled_send_never_corrupts_the_channel() {
    let (_server, client, session) = connected().await;
    let mut attempted = 0u32;
    // The client is not reading yet, so flow control soon blocks and the timeout cancels sends.
    let mut cancelled = 0;
    while cancelled < 5 {
        let message = (attempted, vec![attempted as u8; 60_000]);
        attempted += 1;
        let send = session.feed().send(&message);
        if tokio::time::timeout(Duration::from_millis(5), send)
            .await
            .is_err()
        {
            cancelled += 1;
        }
    }
    // The client starts reading now, so the channel drains and the last send completes.
    let reader = tokio::spawn(async move {
        // A cancelled message may or may not arrive (it is written later), but never in pieces.
        let mut last = None;
        loop {
            let (i, body): (u32, Vec<u8>) = within(client.feed().recv()).await.unwrap();
            if i == u32::MAX {
                return (last, client);
            }
            assert!(
                body.iter().all(|b| *b == i as u8) && body.len() == 60_000,
                "message {i} is whole"
            );
            assert!(last.is_none_or(|l| i > l), "in order");
            last = Some(i);
        }
    });
    within(session.feed().send(&(u32::MAX, Vec::<u8>::new())))
        .await
        .unwrap();
    let (last, _client) = within(reader).await.unwrap();
    assert!(last.is_some());
}

/// Proves: `recv` inside `select!` with a branch that keeps winning loses no message and never
/// splits one.
#[tokio::test]
async fn recv_is_cancel_safe_inside_select() {
    let (_server, client, session) = connected().await;
    let (_handle, _main, feed) = session.into_parts();
    let (tx, _rx) = feed.split();
    let sender = tokio::spawn(async move {
        for i in 0..2000u32 {
            tx.send(&(i, vec![1u8; 2000])).await.unwrap();
        }
        tx
    });
    let mut ticker = tokio::time::interval(Duration::from_micros(50));
    let (mut next, mut interrupted) = (0u32, 0u32);
    while next < 2000 {
        tokio::select! {
            message = client.feed().recv::<(u32, Vec<u8>)>() => {
                let (i, body) = message.unwrap();
                assert_eq!((i, body.len()), (next, 2000));
                next += 1;
            }
            _ = ticker.tick() => interrupted += 1,
        }
    }
    assert!(interrupted > 0, "the other branch did fire");
    let _keep = within(sender).await.unwrap();
}

/// Proves: a client that closes and lets its runtime end right away still tells the server
/// why, whether it closes gracefully or closes and awaits `closed()`.
#[tokio::test]
async fn a_client_that_closes_and_exits_is_seen_closing_with_its_reason() {
    let (server, config) = common::server_and_config().await;
    for graceful in [true, false] {
        let config = config.clone();
        let client = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let session = Client::connect(&config).await.unwrap();
                if graceful {
                    session
                        .close_gracefully(Reason::Application(0x1001), "bye")
                        .await;
                } else {
                    session.close(Reason::Application(0x1001), "bye");
                    session.closed().await;
                }
            });
            // The runtime, and with it the client's endpoint, is gone here.
        });
        let session = within(server.accept()).await.unwrap();
        let started = Instant::now();
        assert_eq!(
            within(session.closed()).await,
            Disconnect::ByPeer {
                reason: Reason::Application(0x1001),
                message: "bye".into()
            },
            "graceful: {graceful}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "not an idle timeout"
        );
        client.join().unwrap();
    }
}

/// Proves: a peer that resets a channel's stream after CONN_OK gets its session closed with
/// INVALID_STREAM, and the server application is told.
#[tokio::test]
async fn a_stream_reset_after_conn_ok_is_invalid_stream() {
    let mut fixture = Fixture::start().await;
    let mut raw = fixture.raw().await;
    raw.handshake().await;
    raw.stream(ChannelKind::Feed)
        .await
        .send
        .reset(0u32.into())
        .unwrap();
    assert_eq!(raw.close_reason().await.0, Reason::InvalidStream);
    let (_, err) = fixture.failure_on(ChannelKind::Feed).await;
    assert!(
        matches!(
            err,
            RecvError::Violation {
                reason: Reason::InvalidStream,
                ..
            }
        ),
        "{err}"
    );
}

/// Proves: a peer that finishes a channel's stream after CONN_OK (a graceful close) but whose
/// connection close never comes is closed with NORMAL once the grace (3 s) has passed: a lost
/// close is not a protocol violation.
#[tokio::test]
async fn a_finished_stream_without_a_close_is_closed_normally_after_the_grace() {
    let fixture = Fixture::start().await;
    let mut raw = fixture.raw().await;
    raw.handshake().await;
    let started = Instant::now();
    raw.stream(ChannelKind::Main).await.send.finish().unwrap();
    assert_eq!(raw.close_reason().await.0, Reason::Normal);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(3),
        "waited for the close first: {waited:?}"
    );
}

/// Proves: dropping the server object closes its sessions with SERVER_SHUTDOWN.
#[tokio::test]
async fn dropping_the_server_closes_sessions_with_server_shutdown() {
    let (server, client, server_side) = connected().await;
    drop(server);
    assert_eq!(
        within(client.main().recv_bytes()).await.unwrap_err(),
        RecvError::Closed(Disconnect::ByPeer {
            reason: Reason::ServerShutdown,
            message: "server dropped".into()
        })
    );
    assert_eq!(
        within(server_side.closed()).await,
        Disconnect::Locally {
            reason: Reason::ServerShutdown,
            message: "server dropped".into()
        }
    );
}

/// Proves: a pinned trust for a certificate file works end to end with `Trust::certificate_pem_file`.
#[tokio::test]
async fn a_pinned_certificate_file_connects() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (identity, _) = quicfeed::Identity::load_or_generate(&cert, &key, &["localhost"]).unwrap();
    let server = Server::bind(ServerConfig::new("127.0.0.1:0".parse().unwrap(), identity))
        .await
        .unwrap();
    let trust = Trust::certificate_pem_file(&cert).unwrap();
    let client = within(Client::connect(&ClientConfig::new(
        server.local_addr(),
        trust,
    )))
    .await;
    assert!(client.is_ok(), "{:?}", client.err());
}

/// Proves: a server that drops (so closes gracefully) a session the moment it accepts it does
/// not race its own `CONN_OK`: the client always gets its session, which then ends
/// with the server's reason, never a failed connect. Twenty times, since the race is a matter of
/// packets: the close waits until the client has received both streams whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_closed_as_soon_as_accepted_still_reaches_the_client() {
    let (server, config) = common::server_and_config().await;
    let server = std::sync::Arc::new(server);
    let kicker = tokio::spawn({
        let server = server.clone();
        async move {
            // Dropping the session closes it gracefully (with `Normal`), in the background.
            while let Some(session) = server.accept().await {
                drop(session);
            }
        }
    });
    for _ in 0..20 {
        let session = within(quicfeed::Client::connect(&config))
            .await
            .expect("the session reaches the client before its close");
        match within(session.closed()).await {
            quicfeed::Disconnect::ByPeer { reason, .. } => {
                assert_eq!(reason, quicfeed::Reason::Normal);
            }
            other => panic!("expected the server's close, got {other}"),
        }
    }
    kicker.abort();
}
