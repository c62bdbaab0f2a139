//! Virtual-time tests of the session machine: two machines joined by simulated streams with
//! flow-control windows, so that back-pressure, replays larger than a window, resumes, lost
//! acknowledgements and closes are all reached without sockets or a clock.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::*;
use crate::protocol::codec::decode_frame;

const MAIN: ChannelKind = ChannelKind::Main;

fn index(kind: ChannelKind) -> usize {
    match kind {
        ChannelKind::Main => 0,
        ChannelKind::Feed => 1,
    }
}
const FEED: ChannelKind = ChannelKind::Feed;

fn config(side: Side) -> SessionConfig {
    SessionConfig {
        side,
        replay_capacity: 64 * 1024,
        send_budget: 16 * 1024,
        receive_capacity: 16 * 1024,
        lane_capacity: 4 * 1024,
        dead_path_timeout: Duration::from_millis(1800),
        ack_delay: Duration::from_millis(100),
        finish_grace: Duration::from_secs(3),
        grace_period: (side == Side::Server).then_some(Duration::from_secs(15)),
        lane_max_age: None,
        lane_send_capacity: 1,
        local_limits: FrameLimits {
            main: 65536,
            feed: 65536,
        },
        shared_checks: false,
    }
}

/// One direction of one channel's stream: bytes written and not yet read, at most `window` of
/// them (the peer's flow-control window).
#[derive(Default)]
struct Pipe {
    bytes: BytesMut,
    finished: bool,
    fin_seen: bool,
}

/// A tiny deterministic generator for the randomised tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A client and a server machine over simulated connections.
struct Pair {
    client: SessionMachine,
    server: SessionMachine,
    /// The attached generations, or `None` between connections.
    links: Option<(u64, u64)>,
    /// [to server, to client] x [main, feed].
    pipes: [[Pipe; 2]; 2],
    window: usize,
    now: Instant,
    /// Datagrams in flight, and whether they are delivered.
    datagrams: bool,
    received: [u64; 2],
    closes: Vec<(bool, Reason)>,
}

fn limits() -> FrameLimits {
    FrameLimits {
        main: 65536,
        feed: 65536,
    }
}

fn attach_link(peer_next: (u64, u64)) -> AttachLink {
    AttachLink {
        peer_limits: limits(),
        peer_next,
        rules: (InboundRules::data_only(), InboundRules::data_only()),
        datagrams: true,
    }
}

impl Pair {
    fn new(window: usize) -> Pair {
        let now = Instant::now();
        let mut pair = Pair {
            client: SessionMachine::new(config(Side::Client), now),
            server: SessionMachine::new(config(Side::Server), now),
            links: None,
            pipes: Default::default(),
            window,
            now,
            datagrams: true,
            received: [0, 0],
            closes: Vec::new(),
        };
        pair.connect();
        pair
    }

    /// A new connection: the server attaches with the client's positions (from `RESUME`), the
    /// client with the server's (from `CONN_OK`).
    fn connect(&mut self) {
        self.pipes = Default::default();
        let client_next = (
            self.client.inbound_next(MAIN),
            self.client.inbound_next(FEED),
        );
        let server_next = (
            self.server.inbound_next(MAIN),
            self.server.inbound_next(FEED),
        );
        let s = self
            .server
            .attach(self.now, attach_link(client_next))
            .unwrap();
        let c = self
            .client
            .attach(self.now, attach_link(server_next))
            .unwrap();
        self.links = Some((c.generation, s.generation));
    }

    /// The connection dies (both sides notice); what was in flight is lost.
    fn lose_connection(&mut self) {
        if let Some((c, s)) = self.links.take() {
            let closed = LinkClosed::Transport("lost".into());
            self.client.handle_link_closed(c, &closed, self.now);
            self.server.handle_link_closed(s, &closed, self.now);
        }
        self.pipes = Default::default();
    }

    /// Moves everything that can move: frames while the windows allow and the readers want,
    /// datagrams, connection closes. Returns whether anything moved.
    fn pump(&mut self) -> bool {
        let Some((cg, sg)) = self.links else {
            return false;
        };
        let mut moved = false;
        for to_server in [true, false] {
            let (from, to, from_gen, to_gen) = if to_server {
                (&mut self.client, &mut self.server, cg, sg)
            } else {
                (&mut self.server, &mut self.client, sg, cg)
            };
            let direction = usize::from(!to_server);
            for kind in [MAIN, FEED] {
                let pipe = &mut self.pipes[direction][index(kind)];
                while pipe.bytes.len() < self.window && !pipe.finished {
                    match from.poll_transmit(from_gen, kind) {
                        Some(Transmit::Frame(head, body)) => {
                            pipe.bytes.extend_from_slice(&head);
                            pipe.bytes.extend_from_slice(&body);
                            moved = true;
                        }
                        Some(Transmit::Finish) => {
                            pipe.finished = true;
                            moved = true;
                        }
                        None => break,
                    }
                }
                while to.wants_read(to_gen, kind, 0) {
                    match decode_frame(&mut pipe.bytes, 1 << 20).unwrap() {
                        Some(body) => {
                            to.handle_frame(to_gen, kind, body, self.now);
                            self.received[usize::from(to_server)] += 1;
                            moved = true;
                        }
                        None => {
                            if pipe.finished && pipe.bytes.is_empty() && !pipe.fin_seen {
                                pipe.fin_seen = true;
                                to.handle_stream_end(to_gen, kind, StreamEnd::Finished, self.now);
                                // The transport acknowledges the stream's end to its sender.
                                from.handle_finish_acknowledged(from_gen, kind);
                                moved = true;
                            }
                            break;
                        }
                    }
                }
            }
            while let Some(datagram) = from.poll_datagram(from_gen) {
                if self.datagrams {
                    to.handle_datagram(to_gen, datagram, self.now);
                    self.received[usize::from(to_server)] += 1;
                }
                moved = true;
            }
        }
        for (is_client, machine) in [(true, &mut self.client), (false, &mut self.server)] {
            while let Some((_, reason, _)) = machine.poll_close() {
                self.closes.push((is_client, reason));
                moved = true;
            }
        }
        // A connection one side closed is closed for the other too.
        if let Some((cg, sg)) = self.links {
            let client_gone = !self.client.is_attached(cg);
            let server_gone = !self.server.is_attached(sg);
            if client_gone || server_gone {
                let closed = match self.closes.last() {
                    Some(&(_, reason)) => LinkClosed::Application {
                        code: u64::from(reason.code()),
                        reason: String::new(),
                    },
                    None => LinkClosed::Transport("closed".into()),
                };
                self.client.handle_link_closed(cg, &closed, self.now);
                self.server.handle_link_closed(sg, &closed, self.now);
                self.links = None;
                moved = true;
            }
        }
        moved
    }

    fn settle(&mut self) {
        for _ in 0..100_000 {
            if !self.pump() {
                return;
            }
        }
        panic!("never settled");
    }

    /// Advances virtual time by `by`, firing timers; the path is alive when `alive`.
    fn advance(&mut self, by: Duration, alive: bool) {
        let end = self.now + by;
        loop {
            self.settle();
            let next = [self.client.poll_timeout(), self.server.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= end => self.now = self.now.max(t),
                _ => break,
            }
            if let Some((cg, sg)) = self.links {
                if alive {
                    self.received[0] += 1;
                    self.received[1] += 1;
                }
                self.server.handle_received(sg, self.received[0], self.now);
                self.client.handle_received(cg, self.received[1], self.now);
            }
            self.client.handle_timeout(self.now);
            self.server.handle_timeout(self.now);
        }
        self.now = end;
        self.settle();
    }
}

fn payload(tag: u64, len: usize) -> Bytes {
    let mut bytes = vec![(tag % 251) as u8; len.max(8)];
    bytes[..8].copy_from_slice(&tag.to_be_bytes());
    Bytes::from(bytes)
}

fn tag_of(bytes: &Bytes) -> u64 {
    u64::from_be_bytes(bytes[..8].try_into().unwrap())
}

/// Receives everything ready on `kind`; returns the tags, panicking on anything else.
fn drain(machine: &mut SessionMachine, kind: ChannelKind) -> Vec<u64> {
    let mut tags = Vec::new();
    while let Some(Ok(bytes)) = machine.recv(kind) {
        tags.push(tag_of(&bytes));
    }
    tags
}

/// Proves: messages both ways on both channels arrive once and in order, and the replay buffers
/// drain through acknowledgements.
#[test]
fn messages_flow_both_ways_and_acknowledgements_empty_the_replay_buffers() {
    let mut pair = Pair::new(64 * 1024);
    for i in 0..100 {
        for kind in [MAIN, FEED] {
            pair.client.send(kind, payload(i, 100)).unwrap();
            pair.server.send(kind, payload(i, 100)).unwrap();
        }
    }
    pair.advance(Duration::from_millis(200), true);
    for kind in [MAIN, FEED] {
        assert_eq!(drain(&mut pair.server, kind), (0..100).collect::<Vec<_>>());
        assert_eq!(drain(&mut pair.client, kind), (0..100).collect::<Vec<_>>());
        assert_eq!(pair.client.replay_bytes(kind), 0, "{kind} acknowledged");
        assert_eq!(pair.server.replay_bytes(kind), 0, "{kind} acknowledged");
    }
}

/// Proves: acknowledgements are sent and processed though neither application reads: the
/// sender's replay buffer drains while the receiver's queue holds the messages.
#[test]
fn acknowledgements_do_not_wait_for_the_application_to_read() {
    let mut pair = Pair::new(64 * 1024);
    for i in 0..10 {
        pair.server.send(FEED, payload(i, 500)).unwrap();
    }
    pair.advance(Duration::from_millis(150), true);
    assert_eq!(pair.server.replay_bytes(FEED), 0);
    assert_eq!(pair.client.queued_bytes(FEED), 10 * 500);
}

/// Proves: a channel whose application never reads stops its stream at the receive capacity
/// (back-pressure on that direction only), while the other direction keeps flowing and its
/// acknowledgements still arrive, by datagram, past the unread stream data.
#[test]
fn an_unread_channel_back_pressures_one_direction_only() {
    let mut pair = Pair::new(32 * 1024);
    let mut sent_to_client = 0u64;
    let mut received_by_server = Vec::new();
    for round in 0..200u64 {
        // The client's application never reads feed; the server's reads everything.
        while pair
            .server
            .send(FEED, payload(sent_to_client, 1000))
            .is_ok()
        {
            sent_to_client += 1;
        }
        pair.client.send(FEED, payload(round, 1000)).unwrap();
        pair.advance(Duration::from_millis(20), true);
        received_by_server.extend(drain(&mut pair.server, FEED));
    }
    assert_eq!(received_by_server, (0..200).collect::<Vec<_>>());
    assert!(
        pair.client.replay_bytes(FEED) < 4 * 1000,
        "the client's sends are acknowledged: {} bytes kept",
        pair.client.replay_bytes(FEED)
    );
    // The server's sends stopped at the back-pressure: the client holds its capacity, the
    // stream its window, the server its budget.
    assert!(sent_to_client < 100, "{sent_to_client}");
    assert!(!pair.server.has_room(FEED, 1000));
    assert!(pair.client.queued_bytes(FEED) >= 16 * 1024);
}

/// Proves: the send budget refuses a send only while the connection has not taken what is
/// queued, always takes one message, and does not apply between connections (the replay
/// buffer drops its oldest instead); what is waiting to be written never counts more than the
/// replay buffer keeps (regression: found by the session machine fuzz target, the count went
/// stale while the replay buffer dropped its oldest between connections).
#[test]
fn the_send_budget_applies_only_with_a_connection() {
    let mut pair = Pair::new(1024);
    assert!(
        pair.server.send(MAIN, payload(0, 40 * 1024)).is_ok(),
        "one always fits"
    );
    assert_eq!(
        pair.server.send(MAIN, payload(1, 10)),
        Err(Refused::Full),
        "budget full"
    );
    pair.lose_connection();
    for i in 1..100 {
        assert!(pair.server.send(MAIN, payload(i, 1000)).is_ok());
        assert!(pair.server.unsent_bytes(MAIN) <= pair.server.replay_bytes(MAIN));
    }
    assert!(pair.server.replay_bytes(MAIN) <= 64 * 1024);
}

/// Proves: a message over the peer's limit is refused with the largest payload that fits, and
/// nothing is sent after the session ended.
#[test]
fn oversize_and_late_sends_are_refused() {
    let mut pair = Pair::new(1024);
    let Err(Refused::TooLarge { len, max }) = pair.client.send(MAIN, Bytes::from(vec![0; 70_000]))
    else {
        panic!("accepted")
    };
    assert_eq!(
        (len, max),
        (70_015, 65536),
        "the frame body and the peer's limit"
    );
    pair.client.close(Reason::Normal, "");
    assert!(matches!(
        pair.client.send(MAIN, payload(0, 10)),
        Err(Refused::Ended(Disconnect::Locally { .. }))
    ));
}

/// Proves: a resume where both sides' replays exceed the peer's flow-control window completes:
/// every message arrives once, in order, while both sides also keep sending.
#[test]
fn replays_larger_than_the_window_complete_both_ways() {
    let mut pair = Pair::new(8 * 1024);
    pair.datagrams = false;
    // Neither side reads while the connection lives, so nothing is acknowledged past the
    // receive capacity and each side keeps ~40 KiB for its replay.
    let mut sent = [0u64; 2];
    for _ in 0..40 {
        for (i, machine) in [&mut pair.client, &mut pair.server].into_iter().enumerate() {
            if machine.send(FEED, payload(sent[i], 1000)).is_ok() {
                sent[i] += 1;
            }
        }
        pair.settle();
    }
    pair.lose_connection();
    for (i, machine) in [&mut pair.client, &mut pair.server].into_iter().enumerate() {
        for _ in 0..20 {
            machine.send(FEED, payload(sent[i], 1000)).unwrap();
            sent[i] += 1;
        }
        assert!(
            machine.replay_bytes(FEED) > 3 * 8 * 1024,
            "a replay above the window"
        );
    }
    pair.connect();
    let mut got: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..200 {
        pair.advance(Duration::from_millis(10), true);
        got[0].extend(drain(&mut pair.client, FEED));
        got[1].extend(drain(&mut pair.server, FEED));
    }
    assert_eq!(
        got[0],
        (0..sent[1]).collect::<Vec<_>>(),
        "client received all"
    );
    assert_eq!(
        got[1],
        (0..sent[0]).collect::<Vec<_>>(),
        "server received all"
    );
}

/// Proves: when the `CONN_OK` of a resume is lost with its connection (the server attached and
/// started its replay, the client never did), the next resume replays from the client's real
/// position: nothing is lost or delivered twice.
#[test]
fn a_lost_conn_ok_then_another_resume_loses_and_duplicates_nothing() {
    let mut pair = Pair::new(64 * 1024);
    for i in 0..10 {
        pair.server.send(MAIN, payload(i, 100)).unwrap();
    }
    pair.lose_connection();
    // The server accepts a RESUME and attaches; its CONN_OK and replay die with the connection.
    let client_next = (
        pair.client.inbound_next(MAIN),
        pair.client.inbound_next(FEED),
    );
    let lost = pair
        .server
        .attach(pair.now, attach_link(client_next))
        .unwrap();
    for i in 10..15 {
        pair.server.send(MAIN, payload(i, 100)).unwrap();
    }
    while pair.server.poll_transmit(lost.generation, MAIN).is_some() {}
    pair.server
        .handle_link_closed(lost.generation, &LinkClosed::TimedOut, pair.now);
    pair.connect();
    pair.advance(Duration::from_millis(200), true);
    assert_eq!(drain(&mut pair.client, MAIN), (0..15).collect::<Vec<_>>());
}

/// Proves: a server's credential confirmation comes only from a frame of the resumed
/// connection, never from frames a superseded connection still delivers.
#[test]
fn confirmation_comes_only_from_the_new_connection() {
    let now = Instant::now();
    let mut server = SessionMachine::new(config(Side::Server), now);
    let old = server.attach(now, attach_link((0, 0))).unwrap().generation;
    assert!(server.detach(now, Reason::Superseded, "resumed"));
    assert_eq!(
        server.poll_close().map(|c| (c.0, c.1)),
        Some((old, Reason::Superseded))
    );
    server.expect_confirmation();
    let new = server.attach(now, attach_link((0, 0))).unwrap().generation;
    let ack = crate::protocol::codec::encode_message(&Message::Ack { next: 0 }).unwrap();
    let body = ack.slice(4..);
    server.handle_frame(old, MAIN, body.clone(), now);
    assert_eq!(server.poll_event(), None, "a frame of the old connection");
    server.handle_frame(new, FEED, body.clone(), now);
    assert_eq!(server.poll_event(), None, "feed does not confirm");
    server.handle_frame(new, MAIN, body, now);
    assert_eq!(server.poll_event(), Some(Event::Confirmed));
    assert_eq!(server.link_end(old), Some(LinkEnd::Superseded));
}

/// Proves: with the checks made from outside (a server's one timer for all its sessions), the
/// machine asks for no timer of its own while nothing else is due, a path that keeps receiving
/// is never abandoned, and a silent one is abandoned with `DEAD_PATH` at the first check at or
/// after the dead-path timeout.
#[test]
fn checks_made_from_outside_need_no_timer_and_abandon_a_silent_path() {
    let mut config = config(Side::Server);
    config.shared_checks = true;
    let interval = config.check_interval();
    let mut now = Instant::now();
    let mut server = SessionMachine::new(config, now);
    let generation = server.attach(now, attach_link((0, 0))).unwrap().generation;
    assert_eq!(server.poll_timeout(), None, "no timer for the checks");
    let mut received = 0;
    for _ in 0..40 {
        now += interval;
        received += 1;
        server.check_liveness(generation, received, now);
        assert!(server.is_attached(generation), "a live path is kept");
    }
    let silent_from = now;
    while server.is_attached(generation) {
        now += interval;
        server.check_liveness(generation, received, now);
    }
    let took = now - silent_from;
    assert!(took >= Duration::from_millis(1800), "{took:?}");
    assert!(took < Duration::from_millis(1800) + interval, "{took:?}");
    assert_eq!(server.poll_close().map(|c| c.1), Some(Reason::DeadPath));
    assert!(server.ended().is_none(), "the session waits for its client");
}

/// Proves: a path that carries nothing for the dead-path timeout is abandoned with
/// `DEAD_PATH` (between 1.8 s and 1.8 s + one check interval), the session continues, and on
/// the server it expires after the grace period.
#[test]
fn a_dead_path_is_abandoned_and_a_server_session_then_expires() {
    let mut pair = Pair::new(64 * 1024);
    let (cg, sg) = pair.links.unwrap();
    let started = pair.now;
    pair.advance(Duration::from_secs(1), true);
    assert!(pair.client.is_attached(cg));
    let silent_from = pair.now;
    while pair.client.is_attached(cg) {
        let next = pair.client.poll_timeout().unwrap();
        pair.now = next;
        pair.client.handle_timeout(pair.now);
        pair.server.handle_timeout(pair.now);
    }
    let took = pair.now - silent_from;
    assert!(
        took >= Duration::from_millis(1800) - Duration::from_millis(120),
        "{took:?}"
    );
    assert!(took <= Duration::from_millis(1800 + 113), "{took:?}");
    assert!(matches!(
        pair.client.poll_event(),
        Some(Event::Lost(Disconnect::Locally {
            reason: Reason::DeadPath,
            ..
        }))
    ));
    assert_eq!(
        pair.client.poll_close().map(|c| c.1),
        Some(Reason::DeadPath)
    );
    assert!(pair.client.ended().is_none());
    // The server notices too, then waits out its grace period.
    assert!(!pair.server.is_attached(sg));
    assert!(pair.server.ended().is_none());
    let expiry = pair.server.poll_timeout().unwrap();
    assert!(expiry - started >= Duration::from_secs(15));
    pair.server.handle_timeout(expiry);
    assert!(matches!(
        pair.server.ended(),
        Some(Disconnect::Locally {
            reason: Reason::SessionExpired,
            ..
        })
    ));
}

/// Proves: a graceful close delivers every message before the receiver sees the end, and
/// completes as soon as the peer has acknowledged them, well before the linger.
#[test]
fn a_graceful_close_delivers_everything_before_the_end() {
    let mut pair = Pair::new(16 * 1024);
    let mut sent = 0u64;
    while sent < 2000 {
        if pair.server.send(FEED, payload(sent, 300)).is_ok() {
            sent += 1;
        } else {
            pair.pump();
            // The client reads slowly: a few messages per step.
            for _ in 0..3 {
                let _ = pair.client.recv(FEED);
            }
        }
    }
    let got_before: u64 = 2000 - pair.client.queued_bytes(FEED) as u64 / 300;
    let closing_at = pair.now;
    pair.server
        .close_gracefully(pair.now, Reason::Normal, "bye", Duration::from_secs(2));
    let mut got = Vec::new();
    for _ in 0..100 {
        pair.advance(Duration::from_millis(5), true);
        got.extend(drain(&mut pair.client, FEED));
        if pair.server.ended().is_some() {
            break;
        }
    }
    assert!(pair.server.ended().is_some());
    assert!(pair.now - closing_at < Duration::from_secs(1), "no linger");
    loop {
        match pair.client.recv(FEED) {
            Some(Ok(bytes)) => got.push(tag_of(&bytes)),
            Some(Err(Received::Closed(Disconnect::ByPeer { reason, .. }))) => {
                assert_eq!(reason, Reason::Normal);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    let first = *got.first().unwrap();
    assert!(first <= got_before);
    assert_eq!(*got.last().unwrap(), 1999, "the tail arrived");
    assert!(got.windows(2).all(|w| w[1] == w[0] + 1), "in order, once");
}

/// Proves: a graceful close with nothing left to acknowledge still waits until the peer has
/// received both finished streams (what the last handshake message, written just before, rides
/// on), and ends as soon as it has.
#[test]
fn a_graceful_close_with_nothing_pending_waits_for_the_streams_to_arrive() {
    let mut pair = Pair::new(16 * 1024);
    pair.settle();
    let (_, server_gen) = pair.links.unwrap();
    pair.server
        .close_gracefully(pair.now, Reason::Normal, "kicked", Duration::from_secs(2));
    assert!(
        pair.server.ended().is_none(),
        "not before the streams arrived"
    );
    pair.server.handle_finish_acknowledged(server_gen, MAIN);
    assert!(pair.server.ended().is_none(), "both streams");
    pair.server.handle_finish_acknowledged(server_gen, FEED);
    assert!(pair.server.ended().is_some(), "at once after both");
}

/// Proves: a graceful close whose peer never reads ends at the linger, and sends are refused
/// from the moment it starts.
#[test]
fn a_graceful_close_towards_a_peer_that_never_reads_ends_at_the_linger() {
    let mut pair = Pair::new(4 * 1024);
    pair.datagrams = false;
    while pair.server.send(FEED, payload(0, 1000)).is_ok() {
        pair.settle();
    }
    pair.server
        .close_gracefully(pair.now, Reason::Normal, "", Duration::from_secs(2));
    assert!(matches!(
        pair.server.send(MAIN, payload(0, 1)),
        Err(Refused::Ended(_))
    ));
    pair.advance(Duration::from_millis(1990), true);
    assert!(pair.server.ended().is_none());
    pair.advance(Duration::from_millis(20), true);
    assert!(pair.server.ended().is_some());
}

/// Proves: out-of-order `DATA`, an `ACK` of what was never sent and a malformed datagram are
/// violations with their reasons, reported to the receiver of where they happened (after the
/// messages taken in before them) and as `Closed` to the others.
#[test]
fn violations_end_the_session_and_are_reported_where_they_happened() {
    let now = Instant::now();
    let frame = |message: Message| {
        crate::protocol::codec::encode_message(&message)
            .unwrap()
            .slice(4..)
    };
    let data = |seq| {
        frame(Message::Data {
            seq,
            payload: Bytes::from_static(b"12345678"),
        })
    };
    let mut m = SessionMachine::new(config(Side::Server), now);
    let g = m.attach(now, attach_link((0, 0))).unwrap().generation;
    m.handle_frame(g, FEED, data(0), now);
    m.handle_frame(g, FEED, data(2), now);
    assert!(matches!(
        m.ended(),
        Some(Disconnect::Locally {
            reason: Reason::SequenceError,
            ..
        })
    ));
    assert_eq!(
        m.poll_close().map(|c| (c.0, c.1)),
        Some((g, Reason::SequenceError))
    );
    assert!(matches!(m.recv(FEED), Some(Ok(_))), "taken in before");
    assert!(matches!(
        m.recv(FEED),
        Some(Err(Received::Violation {
            reason: Reason::SequenceError,
            ..
        }))
    ));
    assert!(matches!(m.recv(FEED), Some(Err(Received::Closed(_)))));
    assert!(matches!(m.recv(MAIN), Some(Err(Received::Closed(_)))));

    let mut m = SessionMachine::new(config(Side::Client), now);
    let g = m.attach(now, attach_link((0, 0))).unwrap().generation;
    m.handle_frame(g, MAIN, frame(Message::Ack { next: 1 }), now);
    assert!(matches!(
        m.recv(MAIN),
        Some(Err(Received::Violation {
            reason: Reason::SequenceError,
            ..
        }))
    ));

    let mut m = SessionMachine::new(config(Side::Client), now);
    let g = m.attach(now, attach_link((0, 0))).unwrap().generation;
    m.handle_datagram(g, Bytes::from_static(&[0x07]), now);
    assert!(matches!(
        m.lane_recv(),
        Some(Err(Received::Violation {
            reason: Reason::UnknownMessage,
            ..
        }))
    ));
    // An acknowledgement datagram past what was sent is a sequence error too.
    let mut m = SessionMachine::new(config(Side::Client), now);
    let g = m.attach(now, attach_link((0, 0))).unwrap().generation;
    m.handle_datagram(g, encode_ack_datagram(0, 5), now);
    assert!(matches!(
        m.ended(),
        Some(Disconnect::Locally {
            reason: Reason::SequenceError,
            ..
        })
    ));
}

/// Proves: a stream the peer finished without closing the connection ends the session as the
/// peer's normal close after the finish grace (closing the connection with NORMAL), not as a
/// violation; a reset stream makes a client resume and a server close.
#[test]
fn finished_and_failed_streams() {
    let now = Instant::now();
    let mut m = SessionMachine::new(config(Side::Server), now);
    let g = m.attach(now, attach_link((0, 0))).unwrap().generation;
    m.handle_stream_end(g, MAIN, StreamEnd::Finished, now);
    assert!(!m.wants_read(g, MAIN, 0));
    // The path stays alive (datagrams keep arriving) while the close does not come.
    for (i, ms) in (0..2999).step_by(100).chain([2999]).enumerate() {
        let t = now + Duration::from_millis(ms);
        m.handle_received(g, i as u64, t);
        m.handle_timeout(t);
    }
    assert!(m.ended().is_none());
    m.handle_received(g, 1000, now + Duration::from_secs(3));
    m.handle_timeout(now + Duration::from_secs(3));
    assert!(matches!(
        m.ended(),
        Some(Disconnect::ByPeer {
            reason: Reason::Normal,
            ..
        })
    ));
    assert!(matches!(m.poll_close(), Some((closed, Reason::Normal, _)) if closed == g));

    let mut client = SessionMachine::new(config(Side::Client), now);
    let g = client.attach(now, attach_link((0, 0))).unwrap().generation;
    client.handle_stream_end(g, FEED, StreamEnd::Failed("reset by peer".into()), now);
    assert!(client.ended().is_none());
    assert!(matches!(client.link_end(g), Some(LinkEnd::Lost(_))));
    assert_eq!(client.poll_close().map(|c| c.1), Some(Reason::Superseded));

    let mut server = SessionMachine::new(config(Side::Server), now);
    let g = server.attach(now, attach_link((0, 0))).unwrap().generation;
    server.handle_stream_end(g, FEED, StreamEnd::Failed("reset by peer".into()), now);
    assert!(matches!(
        server.recv(FEED),
        Some(Err(Received::Violation {
            reason: Reason::InvalidStream,
            ..
        }))
    ));
}

/// Proves: which connection endings keep the session (§9.4).
#[test]
fn which_endings_keep_the_session() {
    let app = |code: Reason| LinkClosed::Application {
        code: u64::from(code.code()),
        reason: String::new(),
    };
    assert!(app(Reason::Superseded).keeps_session());
    assert!(app(Reason::DeadPath).keeps_session());
    assert!(
        app(Reason::HandshakeTimeout).keeps_session(),
        "a client that gave up a resume attempt whose CONN_OK it never saw"
    );
    assert!(!app(Reason::Normal).keeps_session());
    assert!(!app(Reason::ServerShutdown).keeps_session());
    assert!(!app(Reason::Application(0x1234)).keeps_session());
    assert!(LinkClosed::TimedOut.keeps_session());
    assert!(LinkClosed::Reset.keeps_session());
    assert!(LinkClosed::Transport("x".into()).keeps_session());
    assert!(!LinkClosed::Locally.keeps_session());
    assert!(
        LinkClosed::Application {
            code: 1 << 20,
            reason: String::new()
        }
        .keeps_session(),
        "a code above 0xffff is a transport error"
    );
}

/// Proves: a replay position that claims messages never sent ends the session with
/// `SEQUENCE_ERROR`, and the replay buffer's overflow is reported as a `GAP` for exactly the
/// dropped messages.
#[test]
fn replay_positions_are_checked_and_overflow_is_a_gap() {
    let now = Instant::now();
    let mut m = SessionMachine::new(config(Side::Server), now);
    assert!(matches!(
        m.attach(now, attach_link((5, 0))),
        Err(Disconnect::Locally {
            reason: Reason::SequenceError,
            ..
        })
    ));

    let mut pair = Pair::new(64 * 1024);
    pair.lose_connection();
    for i in 0..100 {
        pair.server.send(FEED, payload(i, 1024)).unwrap();
    }
    pair.connect();
    pair.advance(Duration::from_millis(100), true);
    // 64 KiB of replay buffer keeps the newest 64 of the 100 messages.
    assert_eq!(pair.client.recv(FEED), Some(Err(Received::Gap(36))));
    let mut got = Vec::new();
    for _ in 0..20 {
        got.extend(drain(&mut pair.client, FEED));
        pair.advance(Duration::from_millis(10), true);
    }
    assert_eq!(got, (36..100).collect::<Vec<_>>());
    assert_eq!(pair.server.counts().messages_lost, 36);
}

/// Proves: lane datagrams are delivered newest-wins, and the lane queue drops its oldest
/// beyond its capacity.
#[test]
fn lane_datagrams_are_newest_wins_and_bounded() {
    let now = Instant::now();
    let mut m = SessionMachine::new(config(Side::Client), now);
    let g = m.attach(now, attach_link((0, 0))).unwrap().generation;
    let lane = |seq| crate::protocol::lane::encode_lane_datagram(seq, 0, &[seq as u8; 1000]);
    for seq in [1, 0, 2, 2, 3, 4, 5, 6] {
        m.handle_datagram(g, lane(seq), now);
    }
    let mut got = Vec::new();
    while let Some(Ok(payload)) = m.lane_recv() {
        got.push(payload[0]);
    }
    assert_eq!(
        got,
        vec![3, 4, 5, 6],
        "capacity 4 KiB keeps the newest four"
    );
    assert_eq!(m.counts().datagrams_stale, 2);
}

/// Proves: the machine decides a lane send: too large for the path, dropped without a
/// connection, sent at once, or left waiting (waking the connection task, whose timer it sets)
/// while QUIC holds an earlier message; and what waits is dropped and counted when the
/// connection is lost.
#[test]
fn a_lane_send_goes_now_waits_or_is_dropped_and_the_machine_says_which() {
    let now = Instant::now();
    let mut m = SessionMachine::new(config(Side::Client), now);
    assert_eq!(
        m.send_lane(b"snapshot", 0, Some(1200), now),
        Ok(LaneSend::NoConnection)
    );
    let g = m.attach(now, attach_link((0, 0))).unwrap().generation;
    m.take_wakes();
    assert!(matches!(
        m.send_lane(&[0; 1200], 0, Some(1200), now),
        Ok(LaneSend::TooLarge { max }) if max < 1200 && max > 1150
    ));
    let Ok(LaneSend::Send(first)) = m.send_lane(b"a", 0, Some(1200), now) else {
        panic!("the first message goes at once");
    };
    let later = now + Duration::from_millis(16);
    assert_eq!(
        m.send_lane(b"b", first.len() + 32, Some(1200), later),
        Ok(LaneSend::Waiting)
    );
    assert!(m.take_wakes().connection, "the connection task is woken");
    let recheck = later + crate::protocol::lane::LANE_RECHECK;
    assert_eq!(m.poll_lane_recheck(), Some(recheck));
    // QUIC has sent the first: the second goes, with the next sequence number.
    let second = m.poll_lane(g, 0, Some(1200), recheck).expect("handed over");
    let decoded = crate::protocol::lane::decode_lane_datagram(second).unwrap();
    assert_eq!((decoded.seq, &decoded.payload[..]), (1, &b"b"[..]));
    // One waits, then the connection is lost: dropped and counted.
    let _ = m.send_lane(b"c", 40, Some(1200), later + Duration::from_millis(16));
    m.detach(later, Reason::Normal, "test");
    assert_eq!(m.counts().datagrams_orphaned, 1);
    assert_eq!(m.poll_lane(g, 0, Some(1200), recheck), None);
}

/// Proves, over many random schedules: with sends both ways on both channels, applications
/// that read in bursts or pause, windows that fill, lost acknowledgement datagrams and lost
/// connections resumed, every message is received exactly once and in order, or counted in
/// a `GAP`.
#[test]
fn random_schedules_deliver_exactly_once_in_order_or_report_gaps() {
    for seed in 1..=300u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut pair = Pair::new(2048 + rng.below(16 * 1024) as usize);
        // [client sends, server sends] per channel: the next tag.
        let mut next_tag = [[0u64; 2]; 2];
        // What each side expects next, per channel.
        let mut expect = [[0u64; 2]; 2];
        for _ in 0..400 {
            pair.datagrams = rng.chance(70);
            for (side, machine) in [&mut pair.client, &mut pair.server].into_iter().enumerate() {
                for kind in [MAIN, FEED] {
                    for _ in 0..rng.below(4) {
                        let len = 8 + rng.below(3000) as usize;
                        let tag = next_tag[side][index(kind)];
                        if machine.send(kind, payload(tag, len)).is_ok() {
                            next_tag[side][index(kind)] += 1;
                        }
                    }
                }
            }
            pair.advance(Duration::from_millis(rng.below(50)), true);
            for (side, machine) in [&mut pair.client, &mut pair.server].into_iter().enumerate() {
                for kind in [MAIN, FEED] {
                    if rng.chance(30) {
                        continue;
                    }
                    for _ in 0..rng.below(20) {
                        match machine.recv(kind) {
                            Some(Ok(bytes)) => {
                                let want = &mut expect[side][index(kind)];
                                assert_eq!(tag_of(&bytes), *want, "seed {seed}");
                                *want += 1;
                            }
                            Some(Err(Received::Gap(missed))) => {
                                expect[side][index(kind)] += missed;
                            }
                            None => break,
                            Some(Err(other)) => panic!("seed {seed}: {other:?}"),
                        }
                    }
                }
            }
            if rng.chance(3) {
                pair.lose_connection();
                pair.connect();
            }
        }
        // Everything settles: both read all, nothing lost beyond the reported gaps.
        for _ in 0..200 {
            pair.advance(Duration::from_millis(20), true);
            for (side, machine) in [&mut pair.client, &mut pair.server].into_iter().enumerate() {
                for kind in [MAIN, FEED] {
                    loop {
                        match machine.recv(kind) {
                            Some(Ok(bytes)) => {
                                let want = &mut expect[side][index(kind)];
                                assert_eq!(tag_of(&bytes), *want, "seed {seed}");
                                *want += 1;
                            }
                            Some(Err(Received::Gap(missed))) => expect[side][index(kind)] += missed,
                            None => break,
                            Some(Err(other)) => panic!("seed {seed}: {other:?}"),
                        }
                    }
                }
            }
        }
        for kind in [MAIN, FEED] {
            assert_eq!(
                expect[0][index(kind)],
                next_tag[1][index(kind)],
                "seed {seed}: client got all of the server's {kind}"
            );
            assert_eq!(
                expect[1][index(kind)],
                next_tag[0][index(kind)],
                "seed {seed}: server got all of the client's {kind}"
            );
        }
        assert!(pair.client.ended().is_none() && pair.server.ended().is_none());
    }
}

/// Proves: a connection that ends without a close after the peer finished a stream (as a
/// browser's always does, PROTOCOL.md §14.6) ends the session at once as the peer's normal
/// close, where the same ending without a FIN keeps the session for a resume.
#[test]
fn a_connection_lost_after_the_peers_fin_ends_the_session_normally() {
    let now = Instant::now();
    let lost = LinkClosed::Transport("the browser closed its WebTransport connection".into());

    let mut m = SessionMachine::new(config(Side::Server), now);
    let g = m.attach(now, attach_link((0, 0))).unwrap().generation;
    m.handle_link_closed(g, &lost, now);
    assert!(m.ended().is_none(), "no FIN: kept for a resume");

    let mut m = SessionMachine::new(config(Side::Server), now);
    let g = m.attach(now, attach_link((0, 0))).unwrap().generation;
    m.handle_stream_end(g, FEED, StreamEnd::Finished, now);
    m.handle_stream_end(g, MAIN, StreamEnd::Finished, now);
    m.handle_link_closed(g, &lost, now + Duration::from_millis(1));
    assert!(matches!(
        m.ended(),
        Some(Disconnect::ByPeer {
            reason: Reason::Normal,
            ..
        })
    ));
    assert!(
        m.poll_close().is_none(),
        "the connection is gone: nothing to close"
    );

    // Both sides closing gracefully at once: this side's close completes as its own, on
    // either side.
    for side in [Side::Server, Side::Client] {
        let mut m = SessionMachine::new(config(side), now);
        let g = m.attach(now, attach_link((0, 0))).unwrap().generation;
        let reason = Reason::Application(0x1001);
        m.close_gracefully(now, reason, "round over", Duration::from_secs(2));
        m.handle_stream_end(g, MAIN, StreamEnd::Finished, now);
        m.handle_link_closed(g, &lost, now + Duration::from_millis(1));
        match m.ended() {
            Some(Disconnect::Locally { reason: r, .. }) => assert_eq!(*r, reason),
            other => panic!("{side:?}: expected this side's own close, got {other:?}"),
        }
    }
}
