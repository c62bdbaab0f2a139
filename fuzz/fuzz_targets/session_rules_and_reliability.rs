//! Arbitrary operation sequences on the established-session pieces of the protocol core, each
//! checked against a small model written from PROTOCOL.md §6.3-6.6, §7.2, §11 and §2.4:
//!
//! - `InboundRules` (the four kinds): `DATA`, `ACK`, `GAP` pass through unchanged; late echoes
//!   are ignored exactly as often as allowed; everything else is a violation with the right
//!   reason.
//! - `Outbound`: numbering; buffered bytes never above capacity except for a single message, and
//!   equal to the sum of the kept payloads; `ack` refuses exactly the positions never sent;
//!   `replay` returns exactly the kept messages from the peer's position, consecutive, after a
//!   `GAP` exactly when some were dropped.
//! - `Inbound`: delivers strictly increasing sequence numbers, drops duplicates, refuses holes
//!   and the number `u64::MAX`, counts gaps; acknowledgement bookkeeping.
//! - A coupled `Outbound` -> `Inbound` link with loss of the connection and resumes: every
//!   message is delivered exactly once, in order, or counted lost by a `GAP`.
//! - `SessionRegistry`: admission, IDs, the session limit, single-use resume credentials with
//!   the confirmation window, release.
//! - `Admission`: retry, drop, accept and evict decisions (only validated attempts evict, only
//!   at the cap, always the oldest), per-address counts (IPv4, IPv6 /64, IPv4-mapped), and
//!   finishing a place twice or after its eviction changes nothing.
#![no_main]

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use quicfeed::protocol::reliability::{Arrival, Inbound, Outbound, SequenceError};
use quicfeed::protocol::{
    Admission, AdmissionLimits, Admit, Inbound as Classified, InboundRules, Message, Place,
    PlayerId, Reason, SessionRegistry, Token,
};
use quicfeed_fuzz::{IdPick, MsgSpec, Pool, SeqPick, TokenPick};

static ZEROS: [u8; 1 << 16] = [0; 1 << 16];

/// A position: relative to a reference (the sender's next number, the receiver's next), or
/// absolute.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Pos {
    Rel(i8),
    Abs(SeqPick),
}

impl Pos {
    fn get(self, reference: u64) -> u64 {
        match self {
            Pos::Rel(d) => reference.saturating_add_signed(i64::from(d)),
            Pos::Abs(s) => s.get(),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum IpPick {
    V4(u8),
    V4Raw(u32),
    V6(u8, u8),
    V6Raw(u128),
    Mapped(u8),
}

impl IpPick {
    fn get(self) -> IpAddr {
        match self {
            IpPick::V4(h) => IpAddr::V4(Ipv4Addr::new(10, 0, 0, h % 8)),
            IpPick::V4Raw(v) => IpAddr::V4(Ipv4Addr::from(v)),
            IpPick::V6(p, h) => IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                0,
                u16::from(p % 4),
                0,
                0,
                u16::from(h),
                1,
            )),
            IpPick::V6Raw(v) => IpAddr::V6(Ipv6Addr::from(v)),
            IpPick::Mapped(h) => IpAddr::V6(Ipv4Addr::new(10, 0, 0, h % 8).to_ipv6_mapped()),
        }
    }
}

/// The key a handshake is counted under, computed independently of the library.
fn address_key(ip: IpAddr) -> (u8, u64) {
    match ip {
        IpAddr::V4(v4) => (4, u64::from(u32::from(v4))),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if s[..5] == [0; 5] && s[5] == 0xffff {
                (4, u64::from(s[6]) << 16 | u64::from(s[7]))
            } else {
                (6, (u128::from(v6) >> 64) as u64)
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Classify(u8, MsgSpec),
    Push(u16),
    Ack(Pos),
    Replay(Pos),
    Arrive(Pos, u16),
    Gap(Pos),
    AckSent,
    LinkPush(u16),
    LinkDeliver(u8),
    LinkAck,
    LinkDeliverAck,
    LinkLose,
    LinkResume(u8),
    Admit(Option<IdPick>),
    Establish(IdPick, TokenPick),
    Resume(IdPick, TokenPick, TokenPick),
    Confirm(IdPick),
    Release(IdPick),
    Get(IdPick),
    /// An attempt, after this many milliseconds.
    Consider(IpPick, bool, u8),
    Finished(u16),
}

#[derive(Arbitrary, Debug)]
struct Input {
    capacity: u16,
    link_capacity: u16,
    max_sessions: u8,
    max_pending: u8,
    max_per_address: u8,
    retry_threshold: u8,
    server_feed_left: u8,
    client_feed_left: u8,
    ops: Vec<Op>,
}

const A: Token = Token([0xaa; 16]);
const B: Token = Token([0xbb; 16]);
const ID: PlayerId = PlayerId(7);

/// The rules' model: (kind, echoes left).
struct RulesModel {
    rules: [InboundRules; 4],
    left: [u8; 4],
}

impl RulesModel {
    fn classify(&mut self, which: usize, msg: Message) {
        let want = match (&msg, which) {
            (Message::Data { seq, payload }, _) => Classified::Data {
                seq: *seq,
                payload: payload.clone(),
            },
            (Message::Ack { next }, _) => Classified::Ack(*next),
            (Message::Gap { next }, _) => Classified::Gap(*next),
            (Message::FinalAuth { token_b }, 1) if *token_b == B => violation(Reason::TokenReused),
            (Message::FeedInit { player_id, token_a }, 2)
                if *player_id == ID && *token_a == A && self.left[2] > 0 =>
            {
                self.left[2] -= 1;
                Classified::Ignored
            }
            (Message::FeedInitReply { token_b }, 3) if *token_b == B && self.left[3] > 0 => {
                self.left[3] -= 1;
                Classified::Ignored
            }
            _ => violation(Reason::UnexpectedMessage),
        };
        let got = self.rules[which].classify(msg);
        match (&got, &want) {
            (Classified::Violation { reason: a, .. }, Classified::Violation { reason: b, .. }) => {
                assert_eq!(a, b)
            }
            _ => assert_eq!(got, want),
        }
    }
}

fn violation(reason: Reason) -> Classified {
    Classified::Violation {
        reason,
        message: String::new(),
    }
}

/// A replay: the gap, then the messages.
type Replayed = (Option<u64>, Vec<(u64, Bytes)>);

/// `Outbound` and its model.
struct Sender {
    out: Outbound,
    kept: VecDeque<(u64, usize)>,
    next: u64,
    capacity: usize,
}

impl Sender {
    fn new(capacity: usize) -> Self {
        Sender {
            out: Outbound::new(capacity),
            kept: VecDeque::new(),
            next: 0,
            capacity,
        }
    }

    fn push(&mut self, len: usize) -> (u64, Bytes) {
        let payload = Bytes::from_static(&ZEROS[..len]);
        let seq = self.out.push(payload.clone());
        assert_eq!(seq, self.next);
        self.next += 1;
        self.kept.push_back((seq, len));
        while self.kept.iter().map(|k| k.1).sum::<usize>() > self.capacity && self.kept.len() > 1 {
            self.kept.pop_front();
        }
        self.check();
        (seq, payload)
    }

    fn ack(&mut self, next: u64) {
        let got = self.out.ack(next);
        if next > self.next {
            assert_eq!(
                got,
                Err(SequenceError {
                    claimed: next,
                    sent: self.next
                })
            );
        } else {
            assert_eq!(got, Ok(()));
            self.kept.retain(|k| k.0 >= next);
        }
        self.check();
    }

    /// Replays from `peer_next`: (gap, messages), checked against the model.
    fn replay(&mut self, peer_next: u64) -> Option<Replayed> {
        let result = match self.out.replay(peer_next) {
            Err(e) => {
                assert!(
                    peer_next > self.next,
                    "replay refused from {peer_next}: {e}"
                );
                assert_eq!(
                    e,
                    SequenceError {
                        claimed: peer_next,
                        sent: self.next
                    }
                );
                None
            }
            Ok(replay) => {
                assert!(peer_next <= self.next, "replay from beyond what was sent");
                let messages: Vec<(u64, Bytes)> = replay.messages.cloned().collect();
                Some((replay.gap, messages))
            }
        };
        if let Some((gap, messages)) = &result {
            self.kept.retain(|k| k.0 >= peer_next);
            let want: Vec<(u64, usize)> = self.kept.iter().copied().collect();
            let got: Vec<(u64, usize)> = messages.iter().map(|(s, p)| (*s, p.len())).collect();
            assert_eq!(got, want, "replay returns exactly the kept messages");
            let first = want.first().map_or(self.next, |k| k.0);
            assert_eq!(*gap, (first > peer_next).then_some(first), "gap");
        }
        self.check();
        result
    }

    fn check(&self) {
        let bytes: usize = self.kept.iter().map(|k| k.1).sum();
        assert_eq!(self.out.buffered_bytes(), bytes);
        assert_eq!(self.out.buffered_messages(), self.kept.len());
        assert_eq!(self.out.next_seq(), self.next);
        assert!(
            bytes <= self.capacity || self.kept.len() == 1,
            "{bytes} bytes kept in {} messages over capacity {}",
            self.kept.len(),
            self.capacity
        );
        for (i, (seq, _)) in self.kept.iter().enumerate() {
            assert_eq!(
                *seq,
                self.next - (self.kept.len() - i) as u64,
                "consecutive"
            );
        }
    }
}

/// `Inbound` and its model.
struct Receiver {
    inbound: Inbound,
    next: u64,
    last_delivered: Option<u64>,
    unacked_messages: u32,
    unacked_bytes: usize,
    lost: u64,
}

impl Receiver {
    fn new() -> Self {
        Receiver {
            inbound: Inbound::new(),
            next: 0,
            last_delivered: None,
            unacked_messages: 0,
            unacked_bytes: 0,
            lost: 0,
        }
    }

    fn arrive(&mut self, seq: u64, len: usize) -> Result<Arrival, SequenceError> {
        let got = self.inbound.arrive(seq, len);
        let refused = Err(SequenceError {
            claimed: seq,
            sent: self.next,
        });
        match seq.cmp(&self.next) {
            // No sender reaches the last number (PROTOCOL.md §11.1-11.2): always a violation,
            // even right after a GAP to it.
            _ if seq == u64::MAX => assert_eq!(got, refused),
            std::cmp::Ordering::Less => assert_eq!(got, Ok(Arrival::Duplicate)),
            std::cmp::Ordering::Equal => {
                assert_eq!(got, Ok(Arrival::Deliver));
                if let Some(last) = self.last_delivered {
                    assert!(seq > last, "delivered {seq} after {last}");
                }
                self.last_delivered = Some(seq);
                self.next = seq + 1;
                self.unacked_messages = self.unacked_messages.saturating_add(1);
                self.unacked_bytes = self.unacked_bytes.saturating_add(len);
            }
            std::cmp::Ordering::Greater => assert_eq!(got, refused),
        }
        self.check();
        got
    }

    fn gap(&mut self, next: u64) -> u64 {
        let missed = self.inbound.gap(next);
        assert_eq!(missed, next.saturating_sub(self.next));
        self.next = self.next.max(next);
        self.lost += missed;
        self.check();
        missed
    }

    fn ack_sent(&mut self) -> u64 {
        assert_eq!(self.inbound.has_unacked(), self.unacked_messages > 0);
        let next = self.inbound.ack_sent();
        assert_eq!(next, self.next);
        self.unacked_messages = 0;
        self.unacked_bytes = 0;
        self.check();
        next
    }

    fn check(&self) {
        assert_eq!(self.inbound.next(), self.next);
        assert_eq!(self.inbound.has_unacked(), self.unacked_messages > 0);
        assert_eq!(
            self.inbound.ack_due(),
            self.unacked_messages >= Inbound::ACK_EVERY_MESSAGES
                || self.unacked_bytes >= Inbound::ACK_EVERY_BYTES
        );
    }
}

/// An `Outbound` feeding an `Inbound` over a connection that can be lost and resumed.
struct Link {
    tx: Sender,
    rx: Receiver,
    /// Frames in flight to the receiver: `Ok((seq, len))` is `DATA`, `Err(next)` is `GAP`.
    to_rx: VecDeque<Result<(u64, usize), u64>>,
    /// `ACK`s in flight to the sender.
    to_tx: VecDeque<u64>,
    connected: bool,
    delivered: Vec<u64>,
    sent: u64,
    /// The last `ACK` the receiver sent (a resume position is never below it).
    last_ack: u64,
    /// Payload bytes pushed in all.
    total_bytes: usize,
}

impl Link {
    fn deliver(&mut self, n: usize) {
        for _ in 0..n {
            let Some(frame) = self.to_rx.pop_front() else {
                return;
            };
            match frame {
                Ok((seq, len)) => {
                    let arrival = self.rx.arrive(seq, len).expect("in order on one stream");
                    if arrival == Arrival::Deliver {
                        self.delivered.push(seq);
                    }
                }
                Err(next) => {
                    self.rx.gap(next);
                }
            }
        }
    }

    /// A new connection: the receiver's position is sent in the resume (at most `stale` behind,
    /// never below its last acknowledgement), and the sender replays from there.
    fn resume(&mut self, stale: u8) {
        self.to_rx.clear();
        self.to_tx.clear();
        let next = self.rx.next;
        let position = next
            .saturating_sub(u64::from(stale))
            .max(self.last_ack.min(next));
        let (gap, messages) = self
            .tx
            .replay(position)
            .expect("an honest position is never refused");
        if let Some(gap) = gap {
            self.to_rx.push_back(Err(gap));
        }
        for (seq, payload) in messages {
            self.to_rx.push_back(Ok((seq, payload.len())));
        }
        self.connected = true;
    }

    /// Resumes, delivers everything, and checks exactly-once in-order delivery or counted loss.
    fn finish(&mut self) {
        self.resume(0);
        let n = self.to_rx.len();
        self.deliver(n);
        assert_eq!(self.rx.next, self.sent, "the receiver caught up");
        assert!(self.delivered.windows(2).all(|w| w[0] < w[1]), "in order");
        assert_eq!(
            self.delivered.len() as u64 + self.rx.lost,
            self.sent,
            "every message delivered once or counted lost"
        );
        if self.tx.capacity >= self.total_bytes {
            assert_eq!(self.rx.lost, 0, "nothing lost while everything fitted");
        }
    }
}

/// The registry's model.
#[derive(Debug)]
struct Sess {
    current: Token,
    previous: Option<Token>,
    confirmed: bool,
    value: u32,
}

struct Registry {
    reg: SessionRegistry<u32>,
    max: usize,
    next_id: u64,
    entries: BTreeMap<PlayerId, Option<Sess>>,
    pool: Pool,
    values: u32,
}

impl Registry {
    fn check(&self) {
        assert_eq!(self.reg.len(), self.entries.len());
        assert_eq!(self.reg.is_empty(), self.entries.is_empty());
        assert_eq!(self.reg.is_full(), self.entries.len() >= self.max);
        assert!(self.entries.len() <= self.max);
    }

    fn run(&mut self, op: &Op) {
        match op {
            Op::Admit(requested) => {
                let requested = requested.map(|p| p.get(&self.pool));
                let got = self.reg.admit(requested);
                let want = if self.entries.len() >= self.max {
                    Err(Reason::ServerFull)
                } else {
                    match requested {
                        Some(id) if self.entries.contains_key(&id) => Err(Reason::PlayerIdInUse),
                        Some(id) => Ok(id),
                        None => loop {
                            let id = PlayerId(self.next_id);
                            self.next_id += 1;
                            if !self.entries.contains_key(&id) {
                                break Ok(id);
                            }
                        },
                    }
                };
                assert_eq!(got, want);
                if let Ok(id) = got {
                    self.entries.insert(id, None);
                    self.pool.id(id);
                }
            }
            Op::Establish(id, credential) => {
                let (id, credential) = (id.get(&self.pool), credential.get(&self.pool));
                self.values += 1;
                let got = self.reg.establish(id, credential, self.values);
                let entry = self.entries.get_mut(&id);
                assert_eq!(got, entry.is_some());
                if let Some(entry) = entry {
                    *entry = Some(Sess {
                        current: credential,
                        previous: None,
                        confirmed: true,
                        value: self.values,
                    });
                    self.pool.token(credential);
                }
            }
            Op::Resume(id, presented, next) => {
                let id = id.get(&self.pool);
                let (presented, next) = (presented.get(&self.pool), next.get(&self.pool));
                let got = self.reg.resume(id, |c| *c == presented, next).copied();
                let want = match self.entries.get_mut(&id).and_then(Option::as_mut) {
                    None => Err(Reason::UnknownSession),
                    Some(s) => {
                        let is_previous = s.previous == Some(presented);
                        if s.current == presented || (is_previous && !s.confirmed) {
                            s.previous = Some(presented);
                            s.current = next;
                            s.confirmed = false;
                            Ok(s.value)
                        } else if is_previous {
                            Err(Reason::TokenReused)
                        } else {
                            Err(Reason::InvalidToken)
                        }
                    }
                };
                assert_eq!(got, want);
                self.pool.token(next);
            }
            Op::Confirm(id) => {
                let id = id.get(&self.pool);
                self.reg.confirm(id);
                if let Some(Some(s)) = self.entries.get_mut(&id) {
                    s.confirmed = true;
                }
            }
            Op::Release(id) => {
                let id = id.get(&self.pool);
                let got = self.reg.release(id);
                let want = self.entries.remove(&id).flatten().map(|s| s.value);
                assert_eq!(got, want);
            }
            Op::Get(id) => {
                let id = id.get(&self.pool);
                let want = self
                    .entries
                    .get(&id)
                    .and_then(Option::as_ref)
                    .map(|s| s.value);
                assert_eq!(self.reg.get(id).copied(), want);
            }
            _ => unreachable!(),
        }
        self.check();
    }
}

/// The admission model.
struct AdmissionModel {
    admission: Admission,
    limits: AdmissionLimits,
    /// Handshakes in progress, oldest first: (place, address, start).
    places: VecDeque<(Place, (u8, u64), Instant)>,
    /// Virtual time.
    now: Instant,
    /// Every place ever given, evicted and finished ones included (for `Finished`).
    given: Vec<Place>,
}

impl AdmissionModel {
    fn count(&self, key: (u8, u64)) -> usize {
        self.places.iter().filter(|(_, k, _)| *k == key).count()
    }

    /// Whether the oldest handshake may be evicted now.
    fn oldest_evictable(&self) -> bool {
        self.places.front().is_some_and(|(_, _, started)| {
            self.now.saturating_duration_since(*started) >= self.limits.min_evictable_age
        })
    }

    fn consider(&mut self, ip: IpAddr, validated: bool) {
        let got = self.admission.consider(ip, validated, self.now);
        let key = address_key(ip);
        let pending = self.places.len();
        let (place, evicted) = match got {
            Admit::Accept(place) => (place, None),
            Admit::AcceptEvicting { place, evicted } => (place, Some(evicted)),
            other => {
                let want = if !validated && pending >= self.limits.retry_threshold {
                    Admit::Retry
                } else if self.count(key) >= self.limits.max_pending_per_address {
                    Admit::DropAddressBusy
                } else {
                    Admit::DropOverloaded
                };
                assert_eq!(other, want, "{ip}");
                assert!(
                    want != Admit::DropOverloaded
                        || pending >= self.limits.max_pending
                            && (!validated || !self.oldest_evictable()),
                    "dropped although a place was free or could be taken"
                );
                return self.check();
            }
        };
        assert!(validated || pending < self.limits.retry_threshold, "{ip}");
        assert!(
            self.count(key) < self.limits.max_pending_per_address,
            "{ip}"
        );
        // Places are new and increasing.
        assert!(self.given.last().is_none_or(|last| place > *last));
        match evicted {
            Some(evicted) => {
                assert!(validated, "an unvalidated attempt evicted {evicted:?}");
                assert_eq!(pending, self.limits.max_pending, "evicted below the cap");
                assert!(self.oldest_evictable(), "evicted a handshake too young");
                let oldest = self.places.pop_front().map(|(p, _, _)| p);
                assert_eq!(Some(evicted), oldest, "the oldest is evicted");
            }
            None => assert!(pending < self.limits.max_pending, "accepted over the cap"),
        }
        self.places.push_back((place, key, self.now));
        self.given.push(place);
        self.check();
    }

    fn finished(&mut self, pick: u16) {
        let Some(place) = self
            .given
            .get(usize::from(pick) % self.given.len().max(1))
            .copied()
        else {
            return;
        };
        self.admission.finished(place);
        self.places.retain(|(p, _, _)| *p != place);
        self.check();
    }

    fn check(&self) {
        assert_eq!(self.admission.pending(), self.places.len());
        assert!(self.places.len() <= self.limits.max_pending);
        for (_, key, _) in &self.places {
            assert!(self.count(*key) <= self.limits.max_pending_per_address);
        }
    }
}

fuzz_target!(|input: Input| {
    let mut rules_pool = Pool::default();
    rules_pool.token(A);
    rules_pool.token(B);
    rules_pool.id(ID);
    let mut rules = RulesModel {
        rules: [
            InboundRules::data_only(),
            InboundRules::server_main(B),
            InboundRules::server_feed(ID, A, input.server_feed_left % 10),
            InboundRules::client_feed(B, input.client_feed_left % 10),
        ],
        left: [
            0,
            0,
            input.server_feed_left % 10,
            input.client_feed_left % 10,
        ],
    };
    let mut sender = Sender::new(usize::from(input.capacity));
    let mut receiver = Receiver::new();
    let mut link = Link {
        tx: Sender::new(usize::from(input.link_capacity)),
        rx: Receiver::new(),
        to_rx: VecDeque::new(),
        to_tx: VecDeque::new(),
        connected: true,
        delivered: Vec::new(),
        sent: 0,
        last_ack: 0,
        total_bytes: 0,
    };
    let max_sessions = usize::from(input.max_sessions % 16);
    let mut registry = Registry {
        reg: SessionRegistry::new(max_sessions),
        max: max_sessions,
        next_id: 1,
        entries: BTreeMap::new(),
        pool: Pool::default(),
        values: 0,
    };
    let limits = AdmissionLimits {
        max_pending: usize::from(input.max_pending % 16),
        max_pending_per_address: usize::from(input.max_per_address % 8),
        retry_threshold: usize::from(input.retry_threshold % 16),
        min_evictable_age: Duration::from_millis(u64::from(input.retry_threshold % 4) * 100),
    };
    let mut admission = AdmissionModel {
        admission: Admission::new(limits),
        limits,
        places: VecDeque::new(),
        given: Vec::new(),
        now: Instant::now(),
    };

    for op in input.ops.iter().take(512) {
        match op {
            Op::Classify(which, spec) => {
                rules.classify(usize::from(*which % 4), spec.build(&rules_pool))
            }
            Op::Push(len) => {
                sender.push(usize::from(*len));
            }
            Op::Ack(pos) => {
                let next = pos.get(sender.next);
                sender.ack(next);
            }
            Op::Replay(pos) => {
                let next = pos.get(sender.next);
                sender.replay(next);
            }
            Op::Arrive(pos, len) => {
                let seq = pos.get(receiver.next);
                let _ = receiver.arrive(seq, usize::from(*len));
            }
            Op::Gap(pos) => {
                let next = pos.get(receiver.next);
                receiver.gap(next);
            }
            Op::AckSent => {
                receiver.ack_sent();
            }
            Op::LinkPush(len) => {
                let len = usize::from(*len % 4096);
                let (seq, _) = link.tx.push(len);
                link.sent += 1;
                link.total_bytes += len;
                if link.connected {
                    link.to_rx.push_back(Ok((seq, len)));
                }
            }
            Op::LinkDeliver(n) => link.deliver(usize::from(*n % 16)),
            Op::LinkAck => {
                if link.connected {
                    let next = link.rx.ack_sent();
                    link.last_ack = next;
                    link.to_tx.push_back(next);
                }
            }
            Op::LinkDeliverAck => {
                if let Some(next) = link.to_tx.pop_front() {
                    link.tx.ack(next);
                    assert!(next <= link.tx.next, "an honest ACK is accepted");
                }
            }
            Op::LinkLose => {
                link.connected = false;
                link.to_rx.clear();
                link.to_tx.clear();
            }
            Op::LinkResume(stale) => link.resume(*stale),
            Op::Admit(_)
            | Op::Establish(..)
            | Op::Resume(..)
            | Op::Confirm(_)
            | Op::Release(_)
            | Op::Get(_) => registry.run(op),
            Op::Consider(ip, validated, after_ms) => {
                admission.now += Duration::from_millis(u64::from(*after_ms));
                admission.consider(ip.get(), *validated)
            }
            Op::Finished(pick) => admission.finished(*pick),
        }
    }
    link.finish();
});
