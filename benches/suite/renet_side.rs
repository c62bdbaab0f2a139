//! The renet baseline: renet 2 with its netcode transport (UDP, unsecure mode: no connect-token
//! server, which only makes renet faster), the way a Rust game developer would set it up.
//!
//! renet is poll-driven: nothing moves unless the application calls `update` and
//! `send_packets`. A game calls them once per frame, which adds up to a frame to every
//! message; here both ends poll in a tight loop (yielding between passes), which is renet's
//! best case for latency. Its threads are named `qf-renet-*` so their CPU time can be counted.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use renet::{ConnectionConfig, DefaultChannel, RenetClient, RenetServer};
use renet_netcode::{
    ClientAuthentication, NetcodeClientTransport, NetcodeServerTransport, ServerAuthentication,
    ServerConfig,
};

const PROTOCOL_ID: u64 = 0x7175_6963_6665_6564;

fn wall_clock() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// What a renet server thread does with its clients.
#[derive(Clone, Copy)]
pub(crate) enum Role {
    /// Sends every reliable message back to its sender.
    Echo,
    /// A game server's loop: every `tick`, receive, broadcast a `size`-byte reliable message
    /// that starts with the sequence number and the send time (µs on the wall clock,
    /// `common::now_us`) while `sending` is set, send, and sleep until the next tick.
    Broadcast { tick: Duration, size: usize },
}

/// A renet server in its own thread.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    /// Set: poll without sleeping. Clear: poll once a millisecond (keeps connections alive
    /// without taking CPU from other contestants).
    pub(crate) busy: Arc<AtomicBool>,
    /// Broadcast role: send while set.
    pub(crate) sending: Arc<AtomicBool>,
    /// Broadcast role: the broadcasts sent so far, each counted once its packets have gone to
    /// the socket (so a reader can cut a window of whole ticks).
    pub(crate) sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl Server {
    pub(crate) fn start(role: Role, max_clients: usize) -> Server {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("renet socket");
        let addr = socket.local_addr().expect("renet addr");
        let config = ServerConfig {
            current_time: wall_clock(),
            max_clients,
            protocol_id: PROTOCOL_ID,
            public_addresses: vec![addr],
            authentication: ServerAuthentication::Unsecure,
        };
        let mut transport = NetcodeServerTransport::new(config, socket).expect("renet transport");
        let mut server = RenetServer::new(ConnectionConfig::default());
        let busy = Arc::new(AtomicBool::new(false));
        let sending = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let flags = (busy.clone(), sending.clone(), stop.clone(), sent.clone());
        let thread = std::thread::Builder::new()
            .name("qf-renet-srv".into())
            .spawn(move || {
                let (busy, sending, stop, sent) = flags;
                let mut last = Instant::now();
                let mut next_tick = Instant::now();
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    let elapsed = now - last;
                    last = now;
                    server.update(elapsed);
                    if transport.update(elapsed, &mut server).is_err() {
                        break;
                    }
                    match role {
                        Role::Echo => {
                            for client in server.clients_id() {
                                while let Some(message) =
                                    server.receive_message(client, DefaultChannel::ReliableOrdered)
                                {
                                    server.send_message(
                                        client,
                                        DefaultChannel::ReliableOrdered,
                                        message,
                                    );
                                }
                            }
                        }
                        Role::Broadcast { tick, size } => {
                            let broadcast = sending.load(Ordering::Relaxed);
                            if broadcast {
                                server.broadcast_message(
                                    DefaultChannel::ReliableOrdered,
                                    stamped(seq, size),
                                );
                                seq += 1;
                            }
                            transport.send_packets(&mut server);
                            if broadcast {
                                sent.store(seq, Ordering::SeqCst);
                            }
                            next_tick += tick;
                            std::thread::sleep(next_tick.saturating_duration_since(Instant::now()));
                            continue;
                        }
                    }
                    transport.send_packets(&mut server);
                    if busy.load(Ordering::Relaxed) {
                        std::thread::yield_now();
                    } else {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                seq
            })
            .expect("renet thread");
        Server {
            addr,
            busy,
            sending,
            sent,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the thread; the number of broadcasts it sent.
    pub(crate) fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A `size`-byte message: sequence number, send time (µs on the wall clock, which every process
/// on this machine reads alike: `common::now_us`), filler.
pub(crate) fn stamped(seq: u64, size: usize) -> Vec<u8> {
    let mut message = vec![7u8; size.max(16)];
    message[..8].copy_from_slice(&seq.to_le_bytes());
    message[8..16].copy_from_slice(&crate::common::now_us().to_le_bytes());
    message
}

/// The send time in a [`stamped`] message.
pub(crate) fn stamp_of(message: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(message.get(8..16)?.try_into().ok()?))
}

/// A renet client and its transport.
pub(crate) struct Client {
    pub(crate) client: RenetClient,
    pub(crate) transport: NetcodeClientTransport,
    last: Instant,
}

impl Client {
    /// Starts connecting to `server` as `id` (call [`Client::poll`] until connected).
    pub(crate) fn new(server: SocketAddr, id: u64) -> Client {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("renet client socket");
        let authentication = ClientAuthentication::Unsecure {
            protocol_id: PROTOCOL_ID,
            client_id: id,
            server_addr: server,
            user_data: None,
        };
        let transport =
            NetcodeClientTransport::new(wall_clock(), authentication, socket).expect("transport");
        Client {
            client: RenetClient::new(ConnectionConfig::default()),
            transport,
            last: Instant::now(),
        }
    }

    /// One pass: receive what arrived, then send what is queued.
    pub(crate) fn poll(&mut self) {
        let now = Instant::now();
        let elapsed = now - self.last;
        self.last = now;
        self.client.update(elapsed);
        let _ = self.transport.update(elapsed, &mut self.client);
        let _ = self.transport.send_packets(&mut self.client);
    }

    /// Polls until connected (or `within` passes).
    pub(crate) fn connect(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while !self.client.is_connected() && Instant::now() < deadline {
            self.poll();
            std::thread::sleep(Duration::from_micros(200));
        }
        self.client.is_connected()
    }
}

/// Connects `count` clients to `server` (all polled from the calling thread).
pub(crate) fn connect_many(server: SocketAddr, count: usize) -> Vec<Client> {
    let mut clients: Vec<Client> = (0..count)
        .map(|i| Client::new(server, 1 + i as u64))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && clients.iter().any(|c| !c.client.is_connected()) {
        for client in &mut clients {
            client.poll();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    clients
}
