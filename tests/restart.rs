//! A server killed and started again at the same address, on the simulated network in virtual
//! time (the real server, clients and quinn; see `tests/simulation/`): with the same
//! [`ServerSecret`], its old clients' next packets bring a stateless reset back, so each learns
//! of the restart within a round trip, all at once; without one, they notice only after the
//! dead-path timeout.

#![allow(unreachable_pub)]

#[path = "simulation/net.rs"]
#[allow(dead_code)]
mod net;
#[path = "simulation/rng.rs"]
#[allow(dead_code)]
mod rng;

use std::sync::Arc;
use std::time::Duration;

use quicfeed::{
    Client, ClientConfig, Disconnect, Identity, Reason, Server, ServerConfig, ServerSecret,
    Session, SessionEvent, TransportConfig, Trust,
};
use tokio::time::Instant;

use net::{Link, Net, SERVER};

/// One way: a 40 ms round trip.
const LATENCY: Duration = Duration::from_millis(20);
const RTT: Duration = Duration::from_millis(40);

fn link() -> Link {
    Link {
        latency: LATENCY,
        jitter: Duration::ZERO,
        loss: 0.0,
        burst: None,
        duplicate: 0.0,
    }
}

fn server_config(identity: &Identity, secret: Option<ServerSecret>) -> ServerConfig {
    let mut config = ServerConfig::new(SERVER, identity.clone());
    config.secret = secret;
    config
}

/// A server at the simulated server address that accepts every session and keeps it.
async fn start(net: &Arc<Net>, config: ServerConfig) -> Arc<Server> {
    let server = Arc::new(
        Server::bind_with_socket(config, net.server_socket())
            .await
            .unwrap(),
    );
    let accepting = server.clone();
    tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Some(session) = accepting.accept().await {
            kept.push(session);
        }
    });
    server
}

/// `n` clients with established sessions.
async fn clients(net: &Arc<Net>, identity: &Identity, n: usize) -> Vec<Session> {
    let trust = Trust::Certificate(identity.certificate().clone());
    let mut connecting = Vec::new();
    for id in 0..n {
        let config = ClientConfig::new(SERVER, trust.clone());
        let socket = net.client_socket(id, link());
        connecting.push(tokio::spawn(async move {
            Client::connect_with_socket(&config, socket).await.unwrap()
        }));
    }
    let mut sessions = Vec::new();
    for task in connecting {
        sessions.push(task.await.unwrap());
    }
    sessions
}

/// When, after `since`, each session reported its connection lost and how, and when and how
/// its session ended (or `None` if it had not by `until`).
struct Learned {
    lost: Duration,
    how: Disconnect,
    ended: Option<(Duration, Disconnect)>,
}

/// Every client sends one message at `since` (its first packet after the restart), then
/// waits for its connection to be reported lost and for its session to end, until `until`.
async fn after_the_restart(sessions: Vec<Session>, since: Instant, until: Instant) -> Vec<Learned> {
    let mut watching = Vec::new();
    for session in sessions {
        let mut events = session.handle().events();
        session.main().send(&"after the restart").await.unwrap();
        watching.push(tokio::spawn(async move {
            let mut lost = None;
            let ended = loop {
                let event = tokio::select! {
                    event = events.next() => event,
                    () = tokio::time::sleep_until(until) => break None,
                };
                match event {
                    Some(SessionEvent::ConnectionLost { why }) if lost.is_none() => {
                        lost = Some((since.elapsed(), why));
                    }
                    Some(_) => {}
                    None => break session.handle().ended().map(|why| (since.elapsed(), why)),
                }
            };
            let (lost, how) = lost.expect("the connection was reported lost");
            Learned { lost, how, ended }
        }));
    }
    let mut learned = Vec::new();
    for task in watching {
        learned.push(task.await.unwrap());
    }
    learned
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_restarted_server_with_the_same_secret_tells_200_old_clients_within_a_round_trip() {
    const CLIENTS: usize = 200;
    let identity = Identity::generate_self_signed(&["localhost"]).unwrap();
    let secret = ServerSecret::generate().unwrap();
    let net = Net::new(1);
    let first = start(&net, server_config(&identity, Some(secret.clone()))).await;
    let sessions = clients(&net, &identity, CLIENTS).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Killed: its socket goes dead, nothing more leaves it. Started again with the same
    // certificate and secret.
    let _second = start(&net, server_config(&identity, Some(secret))).await;
    let since = Instant::now();
    let learned = after_the_restart(sessions, since, since + Duration::from_secs(5)).await;
    drop(first);

    let slowest = learned.iter().map(|l| l.lost).max().unwrap();
    let slowest_end = learned
        .iter()
        .filter_map(|l| l.ended.as_ref().map(|(at, _)| *at))
        .max()
        .unwrap();
    eprintln!(
        "{CLIENTS} clients of a restarted server: the last learned of it {} ms after its \
         first packet (round trip {} ms); the last session ended {} ms after",
        slowest.as_millis(),
        RTT.as_millis(),
        slowest_end.as_millis()
    );
    for (id, l) in learned.iter().enumerate() {
        // A stateless reset: the answer to the client's first packet, one round trip later
        // (every client at once: resets are not rate-limited).
        assert_eq!(l.how, Disconnect::Reset, "client {id}");
        assert!(
            l.lost <= RTT + Duration::from_millis(5),
            "client {id} learned of the restart {:?} after its first packet",
            l.lost
        );
        // Its resume finds no session: the restarted server refuses it at once (a QUIC
        // handshake, a Retry when many arrive together, and RESUME: at most four round trips
        // after the reset).
        let (at, why) = l.ended.clone().expect("the session ended");
        assert!(
            matches!(
                why,
                Disconnect::ResumeFailed {
                    reason: Reason::UnknownSession,
                    ..
                }
            ),
            "client {id}: {why}"
        );
        assert!(
            at <= l.lost + RTT * 4 + Duration::from_millis(20),
            "client {id} ended {at:?} after"
        );
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_server_restarted_without_its_secret_is_noticed_only_at_the_dead_path_timeout() {
    let identity = Identity::generate_self_signed(&["localhost"]).unwrap();
    let net = Net::new(2);
    let first = start(&net, server_config(&identity, None)).await;
    let sessions = clients(&net, &identity, 5).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let _second = start(&net, server_config(&identity, None)).await;
    let since = Instant::now();
    let learned = after_the_restart(sessions, since, since + Duration::from_secs(20)).await;
    drop(first);

    // New keys: the restarted server does not recognise the old connection IDs and drops
    // their packets, so the clients find out only when nothing has come back for the
    // dead-path timeout (counted from the last packet before the restart, at most a keep-alive
    // interval earlier).
    let transport = TransportConfig::default();
    let noticed = transport.dead_path_timeout - transport.keep_alive_interval;
    for (id, l) in learned.iter().enumerate() {
        assert_ne!(l.how, Disconnect::Reset, "client {id}");
        assert!(l.lost >= noticed, "client {id} learned after {:?}", l.lost);
    }
}
