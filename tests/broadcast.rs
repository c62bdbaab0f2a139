//! Broadcast over loopback QUIC: one encode for any number of sessions, on the reliable feed
//! and on the lane, to everyone or to a group; ended sessions and oversize messages reported.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::within;
use quicfeed::{Client, ClientConfig, Group, Prepared, SendError, Server, Session};
use serde::{Serialize, Serializer};

/// A snapshot that counts how many times it is serialised.
struct Counted {
    encodes: Arc<AtomicUsize>,
    text: &'static str,
}

impl Serialize for Counted {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.encodes.fetch_add(1, Ordering::SeqCst);
        self.text.serialize(serializer)
    }
}

/// A server and `n` connected clients, with the server side of each session (by index).
async fn server_with_clients(n: usize) -> (Server, Vec<Session>, Vec<Session>) {
    let (server, config): (Server, ClientConfig) = common::server_and_config().await;
    let mut clients = Vec::new();
    let mut server_sides = Vec::new();
    for _ in 0..n {
        clients.push(within(Client::connect(&config)).await.unwrap());
        server_sides.push(within(server.accept()).await.unwrap());
    }
    (server, clients, server_sides)
}

/// Proves: a server-wide broadcast on the feed and on the lane reaches all N sessions, and the
/// value was serialised exactly once for all of it.
#[tokio::test]
async fn a_broadcast_reaches_every_session_with_one_encode() {
    const N: usize = 20;
    let (server, mut clients, _server_sides) = server_with_clients(N).await;
    let encodes = Arc::new(AtomicUsize::new(0));
    let snapshot = Prepared::new(&Counted {
        encodes: encodes.clone(),
        text: "tick 1",
    })
    .unwrap();

    let report = server.broadcast_feed(&snapshot);
    assert_eq!((report.sent, report.failed.len()), (N, 0));
    for client in &mut clients {
        let got: String = within(client.feed().recv()).await.unwrap();
        assert_eq!(got, "tick 1");
    }

    let mut lanes: Vec<_> = clients.iter().map(Session::lane).collect();
    let report = server.broadcast_lane(&snapshot);
    assert_eq!((report.sent, report.failed.len()), (N, 0));
    for lane in &mut lanes {
        let got: String = within(lane.recv()).await.unwrap();
        assert_eq!(got, "tick 1");
    }
    assert_eq!(
        encodes.load(Ordering::SeqCst),
        1,
        "encoded once for 2 x {N} sends"
    );
}

/// Proves: a group broadcast reaches its members only; a member whose session ended is reported
/// and can be pruned; a message over a member's frame limit is refused for it with `TooLarge`.
#[tokio::test]
async fn a_group_reaches_its_members_and_reports_the_rest() {
    let (server, mut clients, server_sides) = server_with_clients(6).await;
    let mut group = Group::new();
    for session in server_sides.iter().take(3) {
        assert!(group.insert(session.handle().clone()));
    }
    assert_eq!(group.len(), 3);

    let report = group.send_feed(&Prepared::new("for the group").unwrap());
    assert_eq!((report.sent, report.failed.len()), (3, 0));
    // Then everyone gets a marker: members see the group message first, the others only the
    // marker.
    server.broadcast_feed(&Prepared::new("marker").unwrap());
    for (i, client) in clients.iter_mut().enumerate() {
        let first: String = within(client.feed().recv()).await.unwrap();
        if i < 3 {
            assert_eq!(first, "for the group");
            let second: String = within(client.feed().recv()).await.unwrap();
            assert_eq!(second, "marker");
        } else {
            assert_eq!(first, "marker");
        }
    }

    // Too large for the peer's 64 KiB feed frames.
    let huge = Prepared::from_bytes(vec![0u8; 70_000]);
    let report = group.send_feed(&huge);
    assert_eq!(report.sent, 0);
    assert!(
        report
            .failed
            .iter()
            .all(|(_, e)| matches!(e, SendError::TooLarge { .. })),
        "{report:?}"
    );

    // A member leaves: reported, then pruned.
    let gone = server_sides[0].player_id();
    server_sides[0].close(quicfeed::Reason::Normal, "bye");
    let report = group.send_feed(&Prepared::new("after").unwrap());
    assert_eq!(report.sent, 2);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].0, gone);
    assert!(matches!(report.failed[0].1, SendError::Closed(_)));
    assert_eq!(group.remove_ended(), 1);
    assert!(!group.contains(gone));
}

/// Proves: `send_prepared` on a single session's channel and lane delivers the same bytes as
/// a plain send.
#[tokio::test]
async fn a_prepared_message_sends_like_a_plain_one() {
    let (_server, clients, server_sides) = server_with_clients(1).await;
    let message = Prepared::new(&(7u32, "seven")).unwrap();
    server_sides[0]
        .feed()
        .send_prepared(&message)
        .await
        .unwrap();
    let got: (u32, String) = within(clients[0].feed().recv()).await.unwrap();
    assert_eq!(got, (7, "seven".to_owned()));
    let lane = clients[0].lane();
    server_sides[0].lane().send_prepared(&message).unwrap();
    let got: (u32, String) = within(lane.recv()).await.unwrap();
    assert_eq!(got, (7, "seven".to_owned()));
}

/// Proves: a broadcast never waits for a member that stopped reading: at 60 Hz to 100
/// members, one of which never reads, the stalled member is reported `Blocked` (and gets
/// nothing more) once its buffers are full, while each of the other 99 receives every tick, in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_member_does_not_hold_up_a_60_hz_broadcast_to_the_others() {
    const READERS: usize = 99;
    const TICKS: u32 = 240;
    let (identity, trust) = common::identity();
    // Every member connects from loopback, like players behind one NAT.
    let mut config = quicfeed::ServerConfig::new("127.0.0.1:0".parse().unwrap(), identity);
    config.max_sessions_per_address = READERS + 1;
    let server = Arc::new(Server::bind(config).await.unwrap());
    // A client whose application never reads feed, with small buffers so that it fills soon.
    let mut small = ClientConfig::new(server.local_addr(), trust.clone());
    small.transport.receive_buffer = 2 * 1024;
    small.transport.stream_receive_window = 4 * 1024;
    small.transport.receive_window = 8 * 1024;
    let _stalled = within(Client::connect(&small)).await.unwrap();
    let stalled_side = within(server.accept()).await.unwrap();
    let config = ClientConfig::new(server.local_addr(), trust);
    let mut readers = Vec::new();
    let mut server_sides = vec![stalled_side];
    for _ in 0..READERS {
        let client = within(Client::connect(&config)).await.unwrap();
        server_sides.push(within(server.accept()).await.unwrap());
        readers.push(tokio::spawn(async move {
            for tick in 0..TICKS {
                let (got, _): (u32, Vec<u8>) = within(client.feed().recv()).await.unwrap();
                assert_eq!(got, tick, "every tick, in order");
            }
            client
        }));
    }
    // 500 bytes a tick: the stalled member's buffers (2 KiB and 4 KiB on its side, the
    // server's 64 KiB send buffer) fill within about 140 ticks; a reader would have to fall
    // over two seconds behind to be reported.
    let filler = vec![0x42u8; 500];
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1) / 60);
    let mut first_blocked = None;
    for tick in 0..TICKS {
        ticker.tick().await;
        let report = server.broadcast_feed(&Prepared::new(&(tick, &filler)).unwrap());
        assert_eq!(report.sent + report.failed.len(), READERS + 1);
        for (player, error) in &report.failed {
            assert_eq!(
                *player,
                server_sides[0].player_id(),
                "only the stalled one fails"
            );
            assert!(matches!(error, SendError::Blocked), "{error}");
            first_blocked.get_or_insert(tick);
        }
    }
    assert!(first_blocked.is_some(), "the stalled member was reported");
    for reader in readers {
        within(reader).await.unwrap();
    }
}
