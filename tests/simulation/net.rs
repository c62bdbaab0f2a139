//! An in-memory network in virtual time: sockets that quinn drives like UDP sockets, links with
//! latency, jitter, random and bursty loss, duplication and blackholes, and a NAT per client
//! whose public port can change (a rebinding). Every random choice comes from the scenario's
//! seed; delivery times are tokio instants, so a paused runtime runs it all in virtual time.

use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use quicfeed::quinn::udp::{RecvMeta, Transmit};
use quicfeed::quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::rng::Rng;

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn trace_packets() -> bool {
    std::env::var_os("QUICFEED_SIM_NET_TRACE").is_some()
}

/// The server's address.
pub const SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 4433);

/// How one client's link behaves, both directions alike.
#[derive(Debug, Clone)]
pub struct Link {
    pub latency: Duration,
    pub jitter: Duration,
    /// Probability a packet is lost outside a burst.
    pub loss: f64,
    /// Probability a packet starts a loss burst, and the bursts' mean length.
    pub burst: Option<(f64, Duration)>,
    pub duplicate: f64,
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "latency {} ms, jitter {} ms, loss {:.1} %",
            self.latency.as_millis(),
            self.jitter.as_millis(),
            self.loss * 100.0
        )?;
        if let Some((p, len)) = self.burst {
            write!(
                f,
                ", bursts {:.1} % of mean {} ms",
                p * 100.0,
                len.as_millis()
            )?;
        }
        write!(f, ", duplication {:.1} %", self.duplicate * 100.0)
    }
}

struct Packet {
    at: Instant,
    order: u64,
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
}

impl PartialEq for Packet {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Packet {}
impl PartialOrd for Packet {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Packet {
    /// Earliest first in a max-heap.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

/// One client's place on the network.
struct ClientLink {
    link: Link,
    /// The client's current private socket address, and the public one the server sees.
    private: SocketAddr,
    public: SocketAddr,
    blackhole_until: Option<Instant>,
    /// The end of the loss burst under way.
    burst_until: Option<Instant>,
}

struct Inbox {
    packets: VecDeque<(SocketAddr, Vec<u8>)>,
    waker: Option<Waker>,
}

struct Inner {
    rng: Rng,
    clients: BTreeMap<usize, ClientLink>,
    inboxes: BTreeMap<SocketAddr, Arc<Mutex<Inbox>>>,
    queue: BinaryHeap<Packet>,
    order: u64,
    next_port: u16,
    pub delivered: u64,
    pub dropped: u64,
}

/// The network shared by the server's and the clients' sockets.
pub struct Net {
    inner: Mutex<Inner>,
    wake_pump: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Net {
    pub fn new(seed: u64) -> Arc<Net> {
        let net = Arc::new(Net {
            inner: Mutex::new(Inner {
                rng: Rng::new(seed ^ 0x6e65_7477_6f72_6b00),
                clients: BTreeMap::new(),
                inboxes: BTreeMap::new(),
                queue: BinaryHeap::new(),
                order: 0,
                next_port: 20000,
                delivered: 0,
                dropped: 0,
            }),
            wake_pump: Notify::new(),
        });
        tokio::spawn(pump(net.clone()));
        net
    }

    /// A socket at the server's address. A later call replaces it: the earlier socket then
    /// neither receives nor sends (a server killed, and started again at the same address).
    pub fn server_socket(self: &Arc<Self>) -> Arc<dyn AsyncUdpSocket> {
        self.socket(SERVER)
    }

    /// A new socket for client `id` (its first, or one it moves to), on `link`.
    pub fn client_socket(self: &Arc<Self>, id: usize, link: Link) -> Arc<dyn AsyncUdpSocket> {
        let (private, _) = {
            let mut inner = lock(&self.inner);
            let port = inner.next_port;
            inner.next_port = inner.next_port.wrapping_add(1);
            let private = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, id as u8, 1)), port);
            let public = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 168, id as u8, 1)), port);
            let entry = inner.clients.entry(id).or_insert(ClientLink {
                link,
                private,
                public,
                blackhole_until: None,
                burst_until: None,
            });
            entry.private = private;
            entry.public = public;
            (private, public)
        };
        self.socket(private)
    }

    fn socket(self: &Arc<Self>, addr: SocketAddr) -> Arc<dyn AsyncUdpSocket> {
        let inbox = Arc::new(Mutex::new(Inbox {
            packets: VecDeque::new(),
            waker: None,
        }));
        lock(&self.inner).inboxes.insert(addr, inbox.clone());
        Arc::new(SimSocket {
            addr,
            inbox,
            net: self.clone(),
        })
    }

    /// Drops everything to and from client `id` for `duration`.
    pub fn blackhole(&self, id: usize, duration: Duration) {
        if let Some(client) = lock(&self.inner).clients.get_mut(&id) {
            client.blackhole_until = Some(Instant::now() + duration);
        }
    }

    /// The client's NAT gives it a new public port: the server sees a new address, and packets
    /// to the old one go nowhere.
    pub fn rebind_nat(&self, id: usize) {
        let mut inner = lock(&self.inner);
        let port = inner.next_port;
        inner.next_port = inner.next_port.wrapping_add(1);
        if let Some(client) = inner.clients.get_mut(&id) {
            client.public.set_port(port);
        }
    }

    /// Packets delivered and dropped so far.
    pub fn counts(&self) -> (u64, u64) {
        let inner = lock(&self.inner);
        (inner.delivered, inner.dropped)
    }

    /// Routes a datagram sent from `from` to `to` through the link it crosses.
    fn send(&self, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        let now = Instant::now();
        let mut guard = lock(&self.inner);
        let inner = &mut *guard;
        // Which client's link: the sender's (towards the server) or the receiver's.
        let (client_id, src, dst) = if to == SERVER {
            let Some((id, client)) = inner.clients.iter().find(|(_, c)| c.private == from) else {
                return; // an old socket the client moved away from
            };
            (*id, client.public, SERVER)
        } else {
            let Some((id, client)) = inner.clients.iter().find(|(_, c)| c.public == to) else {
                inner.dropped += 1;
                return; // a public address the NAT no longer maps
            };
            (*id, SERVER, client.private)
        };
        let Some(client) = inner.clients.get_mut(&client_id) else {
            return;
        };
        if client.blackhole_until.is_some_and(|t| now < t) {
            inner.dropped += 1;
            return;
        }
        let link = client.link.clone();
        // Bursts are time-correlated (a congested queue, a radio fade): once one starts,
        // everything is lost until it ends.
        let lost = if client.burst_until.is_some_and(|t| now < t) {
            true
        } else if let Some((_, mean)) = link.burst.filter(|(p, _)| inner.rng.chance(*p)) {
            let length = Duration::from_secs_f64(mean.as_secs_f64() * 2.0 * inner.rng.unit());
            client.burst_until = Some(now + length);
            true
        } else {
            inner.rng.chance(link.loss)
        };
        if trace_packets() {
            eprintln!(
                "{:>9.3} net client {client_id} {src} -> {dst} {} bytes{}",
                now.duration_since(*START.get_or_init(Instant::now))
                    .as_secs_f64(),
                bytes.len(),
                if lost { " LOST" } else { "" },
            );
        }
        if lost {
            inner.dropped += 1;
            return;
        }
        let copies = if inner.rng.chance(link.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let jitter = inner.rng.duration(link.jitter);
            let at = now + link.latency + jitter;
            inner.order += 1;
            inner.queue.push(Packet {
                at,
                order: inner.order,
                from: src,
                to: dst,
                bytes: bytes.to_vec(),
            });
        }
        drop(guard);
        self.wake_pump.notify_one();
    }
}

/// Delivers queued packets when their time comes.
async fn pump(net: Arc<Net>) {
    loop {
        let next = {
            let mut inner = lock(&net.inner);
            let now = Instant::now();
            while inner.queue.peek().is_some_and(|p| p.at <= now) {
                let Some(packet) = inner.queue.pop() else {
                    break;
                };
                match inner.inboxes.get(&packet.to).cloned() {
                    Some(inbox) => {
                        inner.delivered += 1;
                        let mut inbox = lock(&inbox);
                        inbox.packets.push_back((packet.from, packet.bytes));
                        if let Some(waker) = inbox.waker.take() {
                            waker.wake();
                        }
                    }
                    None => inner.dropped += 1,
                }
            }
            inner.queue.peek().map(|p| p.at)
        };
        let notified = net.wake_pump.notified();
        match next {
            Some(at) => {
                tokio::select! {
                    biased;
                    () = notified => {}
                    () = tokio::time::sleep_until(at) => {}
                }
            }
            None => notified.await,
        }
        if Arc::strong_count(&net) == 1 {
            return;
        }
    }
}

/// A socket on the simulated network.
struct SimSocket {
    addr: SocketAddr,
    inbox: Arc<Mutex<Inbox>>,
    net: Arc<Net>,
}

impl fmt::Debug for SimSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SimSocket({})", self.addr)
    }
}

#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for SimSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let replaced = lock(&self.net.inner)
            .inboxes
            .get(&self.addr)
            .is_none_or(|current| !Arc::ptr_eq(current, &self.inbox));
        if replaced {
            return Ok(()); // a killed server's socket
        }
        match transmit.segment_size {
            Some(size) if size > 0 => {
                for segment in transmit.contents.chunks(size) {
                    self.net.send(self.addr, transmit.destination, segment);
                }
            }
            _ => self
                .net
                .send(self.addr, transmit.destination, transmit.contents),
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut inbox = lock(&self.inbox);
        let mut n = 0;
        for (buf, meta) in bufs.iter_mut().zip(meta.iter_mut()) {
            let Some((from, bytes)) = inbox.packets.pop_front() else {
                break;
            };
            let len = bytes.len().min(buf.len());
            buf[..len].copy_from_slice(&bytes[..len]);
            *meta = RecvMeta::default();
            meta.addr = from;
            meta.len = len;
            meta.stride = len;
            meta.dst_ip = Some(self.addr.ip());
            n += 1;
        }
        if n > 0 {
            return Poll::Ready(Ok(n));
        }
        inbox.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }

    fn may_fragment(&self) -> bool {
        false
    }
}
