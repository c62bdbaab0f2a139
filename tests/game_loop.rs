//! The polling surface a fixed-step game loop uses: everything here runs on plain threads
//! outside the tokio runtime (as a game engine's systems do), and waits only by polling once a
//! "tick", bounded by a deadline.

mod common;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quicfeed::{
    AuthDecision, AuthRequest, ChannelKind, Client, ClientConfig, Disconnect, Prepared, Reason,
    Server, ServerConfig, Session, SessionEvent,
};
use serde::{Deserialize, Serialize};

/// One tick of the loops below.
const TICK: Duration = Duration::from_millis(2);

/// Polls `poll` once a tick until it returns something, for at most [`common::EVENT`].
fn poll_until<T>(what: &str, mut poll: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + common::EVENT;
    loop {
        if let Some(found) = poll() {
            return found;
        }
        assert!(Instant::now() < deadline, "{what} did not happen in time");
        thread::sleep(TICK);
    }
}

/// What the test's authenticator knows about a player.
#[derive(Debug, PartialEq)]
struct Account {
    name: String,
    team: u8,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Input {
    tick: u32,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A server whose authenticator admits `name:team` credentials, attaching an [`Account`].
fn bind(runtime: &tokio::runtime::Runtime) -> (Server, ClientConfig) {
    common::init_tracing();
    let (identity, trust) = common::identity();
    let config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), identity).authenticator(
        |request: AuthRequest| async move {
            let text = String::from_utf8_lossy(&request.credentials).into_owned();
            match text.split_once(':') {
                Some((name, team)) => AuthDecision::Accept.with_data(Account {
                    name: name.to_owned(),
                    team: team.parse().unwrap_or(0),
                }),
                None => AuthDecision::reject("name:team expected"),
            }
        },
    );
    let server = runtime.block_on(Server::bind(config)).unwrap();
    let client = ClientConfig::new(server.local_addr(), trust);
    (server, client)
}

fn connect(runtime: &tokio::runtime::Runtime, config: &ClientConfig, credentials: &str) -> Session {
    let mut config = config.clone();
    config.credentials = Bytes::copy_from_slice(credentials.as_bytes());
    runtime
        .block_on(common::within(Client::connect(&config)))
        .unwrap()
}

#[test]
fn a_game_loop_thread_accepts_reads_and_sends_without_the_runtime() {
    let runtime = runtime();
    let (server, config) = bind(&runtime);
    let alice = connect(&runtime, &config, "alice:2");
    let alice_id = alice.player_id();

    // The burst's end, told to the client: it reads none of the burst before, so the burst
    // fills every buffer on the way (a reader keeping pace would keep the sender's queue from
    // ever filling).
    let (burst_sent, burst_done) = tokio::sync::oneshot::channel();
    // The server's game loop: its own thread, no runtime context, a clone of the server.
    let game = thread::spawn({
        let server = server.clone();
        move || {
            assert!(
                tokio::runtime::Handle::try_current().is_err(),
                "the loop must run outside the runtime"
            );
            let session = poll_until("a session to accept", || server.try_accept());
            assert_eq!(session.player_id(), alice_id);
            assert_eq!(
                session.user_data::<Account>(),
                Some(&Account {
                    name: "alice".into(),
                    team: 2
                }),
                "the authenticator's data travels with the session"
            );
            assert!(
                session.user_data::<String>().is_none(),
                "typed: not a String"
            );
            // Reachable by player ID from anywhere, holding the same session.
            let found = server
                .session(alice_id)
                .expect("an accepted session is found");
            assert_eq!(found.player_id(), alice_id);
            assert_eq!(found.user_data::<Account>().map(|a| a.team), Some(2));

            // Read what the client sent, a tick at a time, until all five inputs are in.
            let mut inputs = Vec::new();
            while inputs.len() < 5 {
                inputs.extend(
                    poll_until("inputs", || {
                        let tick: Vec<_> = session.main().drain::<Input>().collect();
                        (!tick.is_empty()).then_some(tick)
                    })
                    .into_iter()
                    .map(Result::unwrap),
                );
            }
            assert_eq!(
                inputs,
                (0..5).map(|tick| Input { tick }).collect::<Vec<_>>()
            );
            // Nothing more has arrived: the drain is empty and returns at once.
            assert_eq!(session.main().drain_bytes().len(), 0);
            assert!(session.main().try_recv_bytes().is_none());

            // Reply without `.await`: on the channel, from a cloned sender, and by broadcast.
            session
                .main()
                .try_send(&format!("hello {}", session.player_id()))
                .unwrap();
            let sender = session.main().sender().clone();
            thread::spawn(move || sender.try_send(&"from another thread").unwrap())
                .join()
                .unwrap();
            // A player found by ID is sent to through its handle (what a game-engine plugin
            // does with the bytes it drains from its own queue each frame).
            found
                .sender(ChannelKind::Main)
                .try_send_prepared(&Prepared::from_bytes(Bytes::from_static(b"\x00")))
                .unwrap();
            let sent = server.broadcast_feed(&Prepared::new(&7u64).unwrap());
            assert_eq!((sent.sent, sent.failed.len()), (1, 0));
            assert!(session.main().max_payload_size() > 1000);
            // A full send buffer's worth, then the drop, off the runtime: the session closes
            // gracefully on the runtime the server runs on, after delivering all of it (a
            // close at once would discard what is still queued).
            let mut burst = 0u32;
            while session.feed().try_send(&vec![burst as u8; 1024]).is_ok() {
                burst += 1;
            }
            burst_sent.send(()).unwrap();
            burst
        }
    });

    let received = runtime.block_on(async {
        for tick in 0..5 {
            alice.main().send(&Input { tick }).await.unwrap();
        }
        let first: String = common::within(alice.main().recv()).await.unwrap();
        let second: String = common::within(alice.main().recv()).await.unwrap();
        assert_eq!(first, format!("hello {alice_id}"));
        assert_eq!(second, "from another thread");
        let by_id = common::within(alice.main().recv_bytes()).await.unwrap();
        assert_eq!(&by_id[..], b"\x00");
        let fed: u64 = common::within(alice.feed().recv()).await.unwrap();
        assert_eq!(fed, 7);
        // Everything the server queued before the drop, then the end.
        common::within(burst_done).await.unwrap();
        let mut received = 0u32;
        let end = loop {
            match common::within(alice.feed().recv::<Vec<u8>>()).await {
                Ok(chunk) => {
                    assert_eq!(chunk, vec![received as u8; 1024], "in order, whole");
                    received += 1;
                }
                Err(end) => break end,
            }
        };
        assert!(matches!(end, quicfeed::RecvError::Closed(_)), "{end}");
        // The graceful close of the dropped session, not an idle timeout.
        match common::within(alice.closed()).await {
            Disconnect::ByPeer { reason, .. } => assert_eq!(reason, Reason::Normal),
            other => panic!("expected the server's graceful close, got {other}"),
        }
        received
    });
    let burst = game.join().unwrap();
    assert!(
        burst >= 32,
        "a send buffer holds dozens of 1 KiB messages, not {burst}"
    );
    assert_eq!(
        received, burst,
        "everything queued before the drop was delivered"
    );
    assert!(
        server.session(alice_id).is_none(),
        "an ended session is not found"
    );
}

#[test]
fn a_client_game_loop_polls_its_lane_and_events_without_the_runtime() {
    let runtime = runtime();
    let (server, config) = bind(&runtime);
    let bob = Arc::new(connect(&runtime, &config, "bob:1"));
    let session = runtime
        .block_on(common::within(server.accept()))
        .expect("server running");
    let mut server_events = server.events();
    let mut events = bob.handle().events();

    // Ten snapshots sent before the loop looks: the loop sees only the newest.
    let lane = session.lane();
    for tick in 0..10u32 {
        lane.send(&tick).unwrap();
    }
    let client = thread::spawn({
        let bob = bob.clone();
        move || {
            let latest = poll_until("the tenth snapshot", || {
                match bob.lane().try_recv_latest::<u32>() {
                    Some(Ok(9)) => Some(9),
                    Some(Ok(_)) | None => None,
                    Some(Err(e)) => panic!("lane failed: {e}"),
                }
            });
            assert_eq!(latest, 9);
            assert!(bob.lane().try_recv::<u32>().is_none(), "nothing newer left");
            // A reconnect forced by the client shows up as events, read without waiting.
            bob.handle().reconnect().unwrap();
            let mut seen = Vec::new();
            poll_until("the resume", || {
                while let Some(event) = events.try_next() {
                    seen.push(event);
                }
                seen.iter()
                    .any(|e| matches!(e, SessionEvent::Resumed { .. }))
                    .then_some(())
            });
            assert!(
                seen.iter()
                    .any(|e| matches!(e, SessionEvent::ConnectionLost { .. })),
                "the lost connection came first: {seen:?}"
            );
        }
    });
    client.join().unwrap();
    // The server saw it too, and its events are read without waiting as well.
    let event = poll_until("the server's resume event", || {
        std::iter::from_fn(|| server_events.try_next())
            .find(|e| matches!(e.event, SessionEvent::Resumed { .. }))
    });
    assert_eq!(event.player_id, bob.player_id());
}

#[test]
fn concurrent_accepts_each_get_a_session_and_end_at_shutdown() {
    let runtime = runtime();
    let (server, config) = bind(&runtime);
    // Three accepts wait at once, on clones of the server; two clients connect.
    let mut waiting = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let server = server.clone();
        waiting.spawn_on(
            async move { server.accept().await.map(|s| s.player_id()) },
            runtime.handle(),
        );
    }
    let a = connect(&runtime, &config, "a:0");
    let b = connect(&runtime, &config, "b:0");
    runtime.block_on(async {
        // Each session goes to exactly one of the accepts.
        let mut accepted = Vec::new();
        for _ in 0..2 {
            let done = common::within(waiting.join_next()).await.unwrap().unwrap();
            accepted.push(done.expect("a session, not the end"));
        }
        accepted.sort();
        let mut expected = vec![a.player_id(), b.player_id()];
        expected.sort();
        assert_eq!(accepted, expected);
        assert!(server.try_accept().is_none(), "no third session");
        // The third accept still waits; the shutdown ends it with `None`.
        server.shutdown(Reason::ServerShutdown, "test over").await;
        let last = common::within(waiting.join_next()).await.unwrap().unwrap();
        assert_eq!(last, None);
        assert!(server.try_accept().is_none());
        assert!(common::within(server.accept()).await.is_none());
    });
    // Sessions the application no longer holds are not found.
    assert!(server.session(a.player_id()).is_none());
    assert!(server.session(b.player_id()).is_none());
}

/// Every handle a game engine's systems hold is `Send + Sync`.
#[test]
fn handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Server>();
    send_sync::<Session>();
    send_sync::<quicfeed::SessionHandle>();
    send_sync::<quicfeed::Channel>();
    send_sync::<quicfeed::Sender>();
    send_sync::<quicfeed::Receiver>();
    send_sync::<quicfeed::Lane>();
    send_sync::<quicfeed::Events>();
    send_sync::<quicfeed::ServerEvents>();
    send_sync::<quicfeed::Group>();
}
