//! A network conditioner: an in-process UDP relay that makes a loopback link behave like a real
//! one, for tests, benchmarks and games under development.
//!
//! ```text
//!   client  <-->  Relay::local_addr()  [bandwidth, delay, jitter, loss,    <-->  server
//!                                        duplication, reordering, blackholes;
//!                                        per direction]
//!                        one upstream socket per client: `rebind()` swaps it for a new port,
//!                        which the server sees as a NAT rebinding of that client
//! ```
//!
//! The kernel's `tc netem` is not always available (containers, CI); this relay needs nothing
//! but a UDP socket. Point the client at [`Relay::local_addr`] instead of the server:
//!
//! ```no_run
//! # async fn run(server: std::net::SocketAddr) -> std::io::Result<()> {
//! use std::time::Duration;
//! use quicfeed::conditioner::{Conditions, Loss, Relay};
//!
//! let wan = Conditions {
//!     latency: Duration::from_millis(10),
//!     jitter: Duration::from_millis(2),
//!     loss: Loss::GilbertElliott { enter_bad: 0.01, leave_bad: 0.5, loss_in_bad: 1.0 },
//!     ..Conditions::default()
//! };
//! let relay = Relay::start(server, wan.clone(), wan).await?;
//! let client_target = relay.local_addr(); // connect the client here
//! relay.blackhole(Duration::from_secs(1)); // a one-second outage, both ways
//! relay.rebind().await?; // the server now sees the client at a new port
//! # Ok(()) }
//! ```
//!
//! Randomness comes from a seeded generator ([`Relay::start_seeded`]), so a run can be repeated.

use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Largest UDP payload the relay forwards.
const MAX_DATAGRAM: usize = 65_535;

/// How packets are lost on one direction of the link.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Loss {
    /// No loss.
    #[default]
    None,
    /// Each packet is lost independently with this probability (0.0..=1.0).
    Random(f64),
    /// Bursty loss: the Gilbert-Elliott two-state model. In the good state nothing is lost; each
    /// packet moves the link to the bad state with probability `enter_bad`, and back with
    /// `leave_bad`; in the bad state a packet is lost with probability `loss_in_bad`. The mean
    /// loss rate is `loss_in_bad * enter_bad / (enter_bad + leave_bad)`, the mean burst length
    /// `1 / leave_bad` packets.
    GilbertElliott {
        /// Probability, per packet in the good state, of entering the bad state.
        enter_bad: f64,
        /// Probability, per packet in the bad state, of returning to the good state.
        leave_bad: f64,
        /// Probability of losing a packet while in the bad state.
        loss_in_bad: f64,
    },
}

impl Loss {
    /// Gilbert-Elliott parameters for a mean loss `rate` in bursts of `mean_burst` packets, all
    /// lost while the burst lasts.
    pub fn bursty(rate: f64, mean_burst: f64) -> Loss {
        let leave_bad = 1.0 / mean_burst.max(1.0);
        let rate = rate.clamp(0.0, 0.999);
        Loss::GilbertElliott {
            enter_bad: leave_bad * rate / (1.0 - rate),
            leave_bad,
            loss_in_bad: 1.0,
        }
    }
}

/// The impairments of one direction of the link.
#[derive(Debug, Clone, PartialEq)]
pub struct Conditions {
    /// Fixed one-way delay added to every packet.
    pub latency: Duration,
    /// Extra delay, uniform in `0..=jitter`, added to every packet. Packets keep their order
    /// unless `reorder` says otherwise.
    pub jitter: Duration,
    /// How packets are lost.
    pub loss: Loss,
    /// Probability that a packet is delivered twice.
    pub duplicate: f64,
    /// Probability that a packet is held back by `reorder_delay` beyond its turn, so later
    /// packets overtake it.
    pub reorder: f64,
    /// How long a reordered packet is held back.
    pub reorder_delay: Duration,
    /// A bottleneck of this many bytes per second, with a first-in first-out queue in front
    /// of it (before the latency); `None`: unlimited.
    pub bandwidth: Option<u64>,
    /// The bottleneck queue's size, as the longest a packet may wait in it: a packet that would
    /// wait longer is dropped (drop-tail, as a router does). Only with `bandwidth`.
    pub queue_limit: Duration,
}

impl Default for Conditions {
    /// A perfect link: no delay, loss, duplication or reordering.
    fn default() -> Self {
        Conditions {
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: Loss::None,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(5),
            bandwidth: None,
            queue_limit: Duration::from_millis(100),
        }
    }
}

impl Conditions {
    /// A link with this one-way latency and nothing else.
    pub fn latency(latency: Duration) -> Self {
        Conditions {
            latency,
            ..Conditions::default()
        }
    }
}

/// Packet counts of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Packets received by the relay.
    pub received: u64,
    /// Packets delivered (duplicates included).
    pub delivered: u64,
    /// Packets lost to the loss model.
    pub lost: u64,
    /// Packets dropped by a blackhole.
    pub blackholed: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Packets held back for reordering.
    pub reordered: u64,
    /// Packets dropped because the bottleneck queue was full.
    pub queue_dropped: u64,
    /// Packets the relay itself delivered 1 ms or more after their time (its timers and this
    /// machine's scheduling, not the conditions): the relay's own noise.
    pub late_1ms: u64,
    /// Packets the relay delivered 5 ms or more after their time.
    pub late_5ms: u64,
    /// The latest the relay delivered a packet after its time.
    pub late_max: Duration,
}

/// Packet counts of both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Client to server.
    pub to_server: DirectionStats,
    /// Server to client.
    pub to_client: DirectionStats,
    /// How many times [`Relay::rebind`] moved the upstream sockets.
    pub rebinds: u64,
}

/// A running relay. Dropping it stops it.
#[derive(Debug)]
pub struct Relay {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
    /// What the last recording kept, once stopped.
    replay_store: Mutex<Vec<Vec<u8>>>,
}

#[derive(Debug)]
struct Shared {
    server: SocketAddr,
    downstream: Arc<UdpSocket>,
    to_server: Direction,
    to_client: Direction,
    /// Client address -> its upstream mapping.
    mappings: Mutex<HashMap<SocketAddr, Mapping>>,
    blackhole_until: Mutex<Option<Instant>>,
    /// Client-to-server datagrams kept for [`Relay::replay_recorded`], while recording.
    recorded: Mutex<Option<Vec<Vec<u8>>>>,
    rebinds: AtomicU64,
    /// Sends delivered packets to the schedulers.
    schedule_to_server: mpsc::UnboundedSender<Scheduled>,
    schedule_to_client: mpsc::UnboundedSender<Scheduled>,
}

/// One client's upstream socket, and the task reading the server's replies from it.
#[derive(Debug)]
struct Mapping {
    socket: Arc<UdpSocket>,
    reader: JoinHandle<()>,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[derive(Debug)]
struct Direction {
    conditions: Mutex<Conditions>,
    state: Mutex<DirectionState>,
    stats: Mutex<DirectionStats>,
}

#[derive(Debug)]
struct DirectionState {
    rng: SplitMix64,
    in_bad_state: bool,
    /// Delivery time of the last in-order packet, so jitter never reorders by itself.
    last_delivery: Instant,
    /// When the bottleneck finishes sending what is queued.
    link_free: Instant,
}

/// A packet waiting for its delivery time.
#[derive(Debug)]
struct Scheduled {
    at: Instant,
    order: u64,
    /// Client address: the destination (to client) or the mapping to send through (to server).
    client: SocketAddr,
    payload: Vec<u8>,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed, so the `BinaryHeap` pops the earliest packet first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Relay {
    /// Starts a relay on loopback in front of `server`, with a random seed.
    pub async fn start(
        server: SocketAddr,
        to_server: Conditions,
        to_client: Conditions,
    ) -> io::Result<Relay> {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos() & u128::from(u64::MAX)).unwrap_or(0))
            .unwrap_or(0);
        Self::start_seeded(server, to_server, to_client, seed).await
    }

    /// Starts a relay whose random choices follow `seed`.
    pub async fn start_seeded(
        server: SocketAddr,
        to_server: Conditions,
        to_client: Conditions,
        seed: u64,
    ) -> io::Result<Relay> {
        let downstream = Arc::new(relay_socket(loopback_for(server))?);
        let local_addr = downstream.local_addr()?;
        let (tx_server, rx_server) = mpsc::unbounded_channel();
        let (tx_client, rx_client) = mpsc::unbounded_channel();
        let now = Instant::now();
        let direction = |conditions: Conditions, seed: u64| Direction {
            conditions: Mutex::new(conditions),
            state: Mutex::new(DirectionState {
                rng: SplitMix64(seed),
                in_bad_state: false,
                last_delivery: now,
                link_free: now,
            }),
            stats: Mutex::new(DirectionStats::default()),
        };
        let shared = Arc::new(Shared {
            server,
            downstream,
            to_server: direction(to_server, seed),
            to_client: direction(to_client, seed ^ 0x9e37_79b9_7f4a_7c15),
            mappings: Mutex::new(HashMap::new()),
            blackhole_until: Mutex::new(None),
            recorded: Mutex::new(None),
            rebinds: AtomicU64::new(0),
            schedule_to_server: tx_server,
            schedule_to_client: tx_client,
        });
        let tasks = vec![
            tokio::spawn(read_clients(shared.clone())),
            tokio::spawn(deliver(shared.clone(), rx_server, Towards::Server)),
            tokio::spawn(deliver(shared.clone(), rx_client, Towards::Client)),
        ];
        Ok(Relay {
            shared,
            local_addr,
            tasks,
            replay_store: Mutex::new(Vec::new()),
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Changes the impairments of both directions; packets already in flight keep theirs.
    pub fn set_conditions(&self, to_server: Conditions, to_client: Conditions) {
        *lock(&self.shared.to_server.conditions) = to_server;
        *lock(&self.shared.to_client.conditions) = to_client;
    }

    /// Drops every packet, both ways, for `duration` from now (an outage). A new call replaces
    /// the previous one.
    pub fn blackhole(&self, duration: Duration) {
        *lock(&self.shared.blackhole_until) = Instant::now().checked_add(duration);
    }

    /// Ends a blackhole early.
    pub fn end_blackhole(&self) {
        *lock(&self.shared.blackhole_until) = None;
    }

    /// Moves every client's upstream traffic to a new local port, as a NAT does when its
    /// mapping expires: the server sees the client's packets come from a new address, and its
    /// packets to the old address are lost. Returns the new upstream addresses.
    pub async fn rebind(&self) -> io::Result<Vec<SocketAddr>> {
        let clients: Vec<SocketAddr> = lock(&self.shared.mappings).keys().copied().collect();
        let mut addresses = Vec::with_capacity(clients.len());
        for client in clients {
            let mapping = new_mapping(&self.shared, client).await?;
            addresses.push(mapping.socket.local_addr()?);
            lock(&self.shared.mappings).insert(client, mapping);
        }
        self.shared.rebinds.fetch_add(1, Ordering::Relaxed);
        Ok(addresses)
    }

    /// Starts (or, with `false`, stops) keeping a copy of every datagram clients send, as an
    /// attacker on the path would. Starting clears what was kept.
    pub fn record(&self, on: bool) {
        let mut recorded = lock(&self.shared.recorded);
        if on {
            *recorded = Some(Vec::new());
        } else if let Some(kept) = recorded.take() {
            *lock(&self.replay_store) = kept;
        }
    }

    /// Sends every recorded client datagram to the server again, in order, from a new socket
    /// (a different address than the client's): a replay attack. Returns how many were sent.
    pub async fn replay_recorded(&self) -> io::Result<usize> {
        let datagrams: Vec<Vec<u8>> = {
            let recording = lock(&self.shared.recorded).clone();
            recording.unwrap_or_else(|| lock(&self.replay_store).clone())
        };
        let socket = relay_socket(loopback_for(self.shared.server))?;
        for datagram in &datagrams {
            socket.send_to(datagram, self.shared.server).await?;
        }
        Ok(datagrams.len())
    }

    /// The upstream addresses the server currently sees, one per client.
    pub fn upstream_addrs(&self) -> Vec<SocketAddr> {
        lock(&self.shared.mappings)
            .values()
            .filter_map(|m| m.socket.local_addr().ok())
            .collect()
    }

    /// Packet counts so far.
    pub fn stats(&self) -> RelayStats {
        RelayStats {
            to_server: *lock(&self.shared.to_server.stats),
            to_client: *lock(&self.shared.to_client.stats),
            rebinds: self.shared.rebinds.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        lock(&self.shared.mappings).clear();
    }
}

/// A relay socket with 4 MiB kernel buffers: bursts (a congestion window's worth, a bottleneck's
/// queue) must not overflow the relay itself.
fn relay_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = crate::driver::endpoint::udp_socket(addr, 4 * 1024 * 1024)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

fn loopback_for(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
    }
}

#[derive(Debug, Clone, Copy)]
enum Towards {
    Server,
    Client,
}

/// Reads client packets from the downstream socket and schedules them towards the server.
async fn read_clients(shared: Arc<Shared>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let Ok((len, client)) = shared.downstream.recv_from(&mut buf).await else {
            continue;
        };
        let known = lock(&shared.mappings).contains_key(&client);
        if !known {
            match new_mapping(&shared, client).await {
                Ok(mapping) => {
                    lock(&shared.mappings).insert(client, mapping);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "conditioner: cannot open an upstream socket");
                    continue;
                }
            }
        }
        let payload = buf.get(..len).unwrap_or_default().to_vec();
        if let Some(recording) = lock(&shared.recorded).as_mut() {
            recording.push(payload.clone());
        }
        impair(&shared, Towards::Server, client, payload);
    }
}

/// Opens a new upstream socket for `client` and starts reading the server's packets from it.
async fn new_mapping(shared: &Arc<Shared>, client: SocketAddr) -> io::Result<Mapping> {
    let socket = Arc::new(relay_socket(loopback_for(shared.server))?);
    let reader = tokio::spawn({
        let (shared, socket) = (shared.clone(), socket.clone());
        async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                if from == shared.server {
                    let payload = buf.get(..len).unwrap_or_default().to_vec();
                    impair(&shared, Towards::Client, client, payload);
                }
            }
        }
    });
    Ok(Mapping { socket, reader })
}

/// Applies one direction's impairments to a packet and schedules what survives.
fn impair(shared: &Shared, towards: Towards, client: SocketAddr, payload: Vec<u8>) {
    let (direction, schedule) = match towards {
        Towards::Server => (&shared.to_server, &shared.schedule_to_server),
        Towards::Client => (&shared.to_client, &shared.schedule_to_client),
    };
    let now = Instant::now();
    let conditions = lock(&direction.conditions).clone();
    let mut stats = lock(&direction.stats);
    stats.received = stats.received.saturating_add(1);
    if lock(&shared.blackhole_until).is_some_and(|until| now < until) {
        stats.blackholed = stats.blackholed.saturating_add(1);
        return;
    }
    let mut state = lock(&direction.state);
    let lost = match conditions.loss {
        Loss::None => false,
        Loss::Random(p) => state.rng.chance(p),
        Loss::GilbertElliott {
            enter_bad,
            leave_bad,
            loss_in_bad,
        } => {
            let flip = if state.in_bad_state {
                leave_bad
            } else {
                enter_bad
            };
            if state.rng.chance(flip) {
                state.in_bad_state = !state.in_bad_state;
            }
            state.in_bad_state && state.rng.chance(loss_in_bad)
        }
    };
    if lost {
        stats.lost = stats.lost.saturating_add(1);
        return;
    }
    // The bottleneck: the packet leaves once everything ahead of it has, then takes its own
    // transmission time.
    let mut departure = now;
    if let Some(rate) = conditions.bandwidth.filter(|r| *r > 0) {
        let start = state.link_free.max(now);
        if start.saturating_duration_since(now) > conditions.queue_limit {
            stats.queue_dropped = stats.queue_dropped.saturating_add(1);
            return;
        }
        let seconds = (payload.len() as f64) / (rate as f64);
        departure = start
            .checked_add(Duration::from_secs_f64(seconds))
            .unwrap_or(start);
        state.link_free = departure;
    }
    let jitter = state.rng.up_to(conditions.jitter);
    let mut at = departure
        .checked_add(conditions.latency.saturating_add(jitter))
        .unwrap_or(departure);
    if state.rng.chance(conditions.reorder) {
        stats.reordered = stats.reordered.saturating_add(1);
        at = at.checked_add(conditions.reorder_delay).unwrap_or(at);
    } else {
        // Jitter alone keeps the order, as on a real path through one queue.
        at = at.max(state.last_delivery);
        state.last_delivery = at;
    }
    let copies = if state.rng.chance(conditions.duplicate) {
        stats.duplicated = stats.duplicated.saturating_add(1);
        2
    } else {
        1
    };
    let order = state.rng.next();
    drop(state);
    for _ in 0..copies {
        stats.delivered = stats.delivered.saturating_add(1);
        let _ = schedule.send(Scheduled {
            at,
            order,
            client,
            payload: payload.clone(),
        });
    }
}

/// Delivers scheduled packets of one direction at their time.
async fn deliver(
    shared: Arc<Shared>,
    mut incoming: mpsc::UnboundedReceiver<Scheduled>,
    towards: Towards,
) {
    let mut queue: BinaryHeap<Scheduled> = BinaryHeap::new();
    loop {
        let next_at = queue.peek().map(|p| p.at);
        tokio::select! {
            packet = incoming.recv() => match packet {
                Some(packet) => queue.push(packet),
                None => return,
            },
            _ = async {
                match next_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                let now = Instant::now();
                while queue.peek().is_some_and(|p| p.at <= now) {
                    let Some(packet) = queue.pop() else { break };
                    record_lateness(&shared, towards, now.saturating_duration_since(packet.at));
                    send(&shared, towards, packet).await;
                }
            }
        }
    }
}

/// Counts how late the relay delivers a packet, in the stats of the direction `towards`.
fn record_lateness(shared: &Shared, towards: Towards, late: Duration) {
    if late < Duration::from_millis(1) {
        return;
    }
    let direction = match towards {
        Towards::Server => &shared.to_server,
        Towards::Client => &shared.to_client,
    };
    let mut stats = lock(&direction.stats);
    stats.late_1ms = stats.late_1ms.saturating_add(1);
    if late >= Duration::from_millis(5) {
        stats.late_5ms = stats.late_5ms.saturating_add(1);
    }
    stats.late_max = stats.late_max.max(late);
}

async fn send(shared: &Shared, towards: Towards, packet: Scheduled) {
    match towards {
        Towards::Client => {
            let _ = shared
                .downstream
                .send_to(&packet.payload, packet.client)
                .await;
        }
        Towards::Server => {
            // Through the client's mapping as it is now: after a rebind, the new port.
            let socket = lock(&shared.mappings)
                .get(&packet.client)
                .map(|m| m.socket.clone());
            if let Some(socket) = socket {
                let _ = socket.send_to(&packet.payload, shared.server).await;
            }
        }
    }
}

/// A small, fast, seedable generator (SplitMix64); statistical quality is ample for impairments.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform float in `0.0..1.0`.
    fn unit(&mut self) -> f64 {
        // 53 random bits, exactly representable.
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, probability: f64) -> bool {
        probability > 0.0 && self.unit() < probability
    }

    fn up_to(&mut self, max: Duration) -> Duration {
        if max.is_zero() {
            return Duration::ZERO;
        }
        max.mul_f64(self.unit())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursty_loss_has_the_requested_mean_rate() {
        let Loss::GilbertElliott {
            enter_bad,
            leave_bad,
            loss_in_bad,
        } = Loss::bursty(0.02, 4.0)
        else {
            panic!()
        };
        let mean = loss_in_bad * enter_bad / (enter_bad + leave_bad);
        assert!((mean - 0.02).abs() < 1e-9);
        assert!((1.0 / leave_bad - 4.0).abs() < 1e-9);
    }

    #[test]
    fn the_generator_is_uniform_enough_and_repeatable() {
        let mut a = SplitMix64(7);
        let hits = (0..100_000).filter(|_| a.chance(0.1)).count();
        assert!((9_000..11_000).contains(&hits), "{hits}");
        let (mut b, mut c) = (SplitMix64(42), SplitMix64(42));
        assert!((0..1000).all(|_| b.next() == c.next()));
    }
}
