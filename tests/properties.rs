//! Property tests of the protocol core's codec and reliability layer (proptest).
//!
//! What they prove, for the generated inputs (1,000 to 2,000 cases per property, about 3 s in
//! all):
//!
//! - every [`Message`], all 11 variants with any field values, survives `encode_message`,
//!   `decode_frame` and `decode_message` unchanged, in a frame whose body starts with its tag;
//! - arbitrary bytes never make `decode_frame` or `decode_message` panic, and their errors carry
//!   the reasons PROTOCOL.md §4.3 and §5 give;
//! - a stream of frames split at arbitrary points decodes to the same messages;
//! - `Outbound` and `Inbound`, joined by a "connection" that loses whatever is in flight, then
//!   resumes with a replay from the receiver's position, deliver every message exactly once and
//!   in order with its own payload, or count it lost in a `GAP`, and lose nothing while the
//!   replay buffer holds everything.
//!
//! The fuzz targets in `fuzz/` check the same codec properties, and the state machines, much
//! longer; these run with `cargo test`.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use quicfeed::protocol::codec::{
    self, DecodeError, data_header, decode_frame, decode_message, encode_message,
};
use quicfeed::protocol::reliability::{Arrival, Inbound, Outbound};
use quicfeed::protocol::{
    HANDSHAKE_FRAME_LIMIT, Inbound as Classified, InboundRules, MAX_FRAME_LIMIT, Message, PlayerId,
    Reason, TOKEN_LEN, Token,
};

/// No regression files: a failure prints its minimal case, which belongs in a unit test.
fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

fn token() -> impl Strategy<Value = Token> {
    any::<[u8; TOKEN_LEN]>().prop_map(Token)
}

/// Reasons as a receiver decodes them: every code maps to exactly one reason.
fn reason() -> impl Strategy<Value = Reason> {
    any::<u16>().prop_map(Reason::from_code)
}

/// u64s dense around the varint boundaries (250/251, 2^16, 2^32) and the extremes.
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..=300u64,
        65_500..=65_600u64,
        (u64::from(u32::MAX) - 50)..=(u64::from(u32::MAX) + 50),
        (u64::MAX - 50)..=u64::MAX,
        any::<u64>(),
    ]
}

fn limit() -> impl Strategy<Value = u32> {
    prop_oneof![0..=70_000u32, Just(u32::MAX), any::<u32>()]
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

/// Any message: every variant, every field anywhere in its range.
fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (limit(), limit(), bytes(300)).prop_map(|(main, feed, credentials)| Message::ConnInit {
            max_main_frame: main,
            max_feed_frame: feed,
            credentials,
        }),
        (number(), token()).prop_map(|(id, token_a)| Message::ConnInitReply {
            player_id: PlayerId(id),
            token_a,
        }),
        (number(), token()).prop_map(|(id, token_a)| Message::FeedInit {
            player_id: PlayerId(id),
            token_a,
        }),
        token().prop_map(|token_b| Message::FeedInitReply { token_b }),
        token().prop_map(|token_b| Message::FinalAuth { token_b }),
        (limit(), limit(), token(), number(), number()).prop_map(
            |(main, feed, credential, main_next, feed_next)| Message::ConnOk {
                max_main_frame: main,
                max_feed_frame: feed,
                credential,
                main_next,
                feed_next,
            }
        ),
        (reason(), any::<String>()).prop_map(|(reason, message)| Message::ConnFailed {
            reason,
            message,
            retry_after_ms: None,
        }),
        (number(), bytes(600)).prop_map(|(seq, payload)| Message::Data { seq, payload }),
        number().prop_map(|next| Message::Ack { next }),
        (number(), token(), limit(), limit(), number(), number()).prop_map(
            |(id, credential, main, feed, main_next, feed_next)| Message::Resume {
                player_id: PlayerId(id),
                proof: credential,
                max_main_frame: main,
                max_feed_frame: feed,
                main_next,
                feed_next,
            }
        ),
        number().prop_map(|next| Message::Gap { next }),
    ]
}

/// Decodes every whole frame in `buf`; panics on a decoding error.
fn take_messages(buf: &mut BytesMut, out: &mut Vec<Message>) {
    while let Some(body) = decode_frame(buf, MAX_FRAME_LIMIT).expect("valid framing") {
        out.push(decode_message(body).expect("valid message"));
    }
}

/// The message generator yields all 11 variants (so the round-trip property covers them all).
#[test]
fn the_message_strategy_covers_every_variant() {
    let mut runner = TestRunner::deterministic();
    let strategy = message();
    let mut seen = [false; Message::TAG_COUNT as usize];
    for _ in 0..2000 {
        let m = strategy.new_tree(&mut runner).unwrap().current();
        seen[usize::from(m.tag())] = true;
    }
    assert_eq!(seen, [true; Message::TAG_COUNT as usize]);
}

proptest! {
    #![proptest_config(config(2048))]

    /// Every message round-trips through encode_message, decode_frame and decode_message.
    #[test]
    fn every_message_round_trips(message in message()) {
        let frame = encode_message(&message).unwrap();
        let mut buf = BytesMut::from(&frame[..]);
        let body = decode_frame(&mut buf, MAX_FRAME_LIMIT).unwrap().unwrap();
        prop_assert!(buf.is_empty());
        prop_assert_eq!(body.len() + 4, frame.len());
        prop_assert_eq!(body[0], message.tag(), "one tag byte first");
        prop_assert_eq!(decode_message(body).unwrap(), message);
    }

    /// Arbitrary bytes never panic the decoders, whose errors carry the specified reasons.
    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(
        tag in 0u8..14,
        tail in vec(any::<u8>(), 0..400),
        shape in 0u8..3,
        delta in -2i64..=2,
        limit in prop_oneof![0usize..600, Just(HANDSHAKE_FRAME_LIMIT), Just(MAX_FRAME_LIMIT), Just(usize::MAX)],
    ) {
        // Raw bytes; a body that starts with a plausible tag, to get past the first check; or
        // that body in a frame whose prefix is about right, to get past the framing.
        let mut input = match shape {
            0 => Vec::new(),
            1 => vec![tag],
            _ => {
                let len = (tail.len() as i64 + 1 + delta).max(0) as u32;
                let mut framed = len.to_be_bytes().to_vec();
                framed.push(tag);
                framed
            }
        };
        input.extend_from_slice(&tail);
        if let Err(e) = decode_message(Bytes::from(input.clone())) {
            prop_assert!(matches!(e.reason(), Reason::MalformedMessage | Reason::UnknownMessage));
        }
        let mut buf = BytesMut::from(&input[..]);
        loop {
            match decode_frame(&mut buf, limit) {
                Ok(Some(body)) => {
                    prop_assert!(!body.is_empty() && body.len() <= limit);
                    let _ = decode_message(body);
                }
                Ok(None) => break,
                Err(e @ DecodeError::FrameTooLarge { .. }) => {
                    prop_assert_eq!(e.reason(), Reason::FrameTooLarge);
                    break;
                }
                Err(e) => {
                    prop_assert_eq!(e, DecodeError::EmptyFrame);
                    break;
                }
            }
        }
    }

    /// A stream of frames split at arbitrary points decodes to the same messages.
    #[test]
    fn splitting_a_stream_anywhere_gives_the_same_messages(
        messages in vec(message(), 0..8),
        cuts in vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut wire = BytesMut::new();
        for m in &messages {
            wire.put_slice(&encode_message(m).unwrap());
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        points.push(wire.len());
        points.sort_unstable();
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut from = 0;
        for to in points {
            buf.put_slice(&wire[from..to]);
            from = to;
            take_messages(&mut buf, &mut decoded);
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decoded, messages);
    }
}

/// One step of the lossy-connection model.
#[derive(Debug, Clone)]
enum Step {
    /// The application sends a message of this many bytes.
    Send(usize),
    /// The connection carries up to this many frames to the receiver.
    Deliver(usize),
    /// The receiver sends an `ACK` for what it has delivered.
    Ack,
    /// The sender receives the oldest `ACK` in flight.
    DeliverAck,
    /// The connection dies: everything in flight, both ways, is lost.
    Lose,
    /// A new connection: the receiver's position travels in the resume (up to this many
    /// messages behind, never below its last `ACK`: a replay that overlaps what it has), and
    /// the sender replays from there.
    Resume(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0usize..1500).prop_map(Step::Send),
        4 => (0usize..6).prop_map(Step::Deliver),
        2 => Just(Step::Ack),
        2 => Just(Step::DeliverAck),
        1 => Just(Step::Lose),
        1 => (0u64..4).prop_map(Step::Resume),
    ]
}

/// The payload of message `seq`: its number, then filler, so a mix-up shows.
fn payload(seq: u64, len: usize) -> Bytes {
    let mut p = BytesMut::with_capacity(len);
    let tag = seq.to_le_bytes();
    for i in 0..len {
        p.put_u8(tag[i % 8] ^ (i as u8));
    }
    p.freeze()
}

/// A sender and a receiver joined by a connection carrying real frames.
struct Lossy {
    out: Outbound,
    inbound: Inbound,
    rules: InboundRules,
    /// Frames in flight to the receiver, and `ACK` frames in flight to the sender.
    to_receiver: BytesMut,
    to_sender: VecDeque<Bytes>,
    connected: bool,
    sent: u64,
    sent_bytes: usize,
    /// The length of every message sent, by sequence number.
    lengths: Vec<usize>,
    last_ack: u64,
    delivered: Vec<(u64, Bytes)>,
    /// Ranges reported lost by `GAP`s: [from, to).
    lost: Vec<(u64, u64)>,
}

impl Lossy {
    fn new(capacity: usize) -> Self {
        Lossy {
            out: Outbound::new(capacity),
            inbound: Inbound::new(),
            rules: InboundRules::data_only(),
            to_receiver: BytesMut::new(),
            to_sender: VecDeque::new(),
            connected: true,
            sent: 0,
            sent_bytes: 0,
            lengths: Vec::new(),
            last_ack: 0,
            delivered: Vec::new(),
            lost: Vec::new(),
        }
    }

    fn send_data(&mut self, seq: u64, body: &Bytes) {
        let header = data_header(seq, body.len(), MAX_FRAME_LIMIT).unwrap();
        self.to_receiver.put_slice(&header);
        self.to_receiver.put_slice(body);
    }

    fn run(&mut self, step: &Step) {
        match *step {
            Step::Send(len) => {
                let body = payload(self.sent, len);
                let seq = self.out.push(body.clone());
                assert_eq!(seq, self.sent);
                self.sent += 1;
                self.sent_bytes += len;
                self.lengths.push(len);
                if self.connected {
                    self.send_data(seq, &body);
                }
            }
            Step::Deliver(n) => {
                for _ in 0..n {
                    let Some(body) = decode_frame(&mut self.to_receiver, MAX_FRAME_LIMIT).unwrap()
                    else {
                        break;
                    };
                    match self.rules.classify(decode_message(body).unwrap()) {
                        Classified::Data { seq, payload } => {
                            match self.inbound.arrive(seq, payload.len()).unwrap() {
                                Arrival::Deliver => self.delivered.push((seq, payload)),
                                Arrival::Duplicate => {}
                            }
                        }
                        Classified::Gap(next) => {
                            let from = self.inbound.next();
                            let missed = self.inbound.gap(next);
                            assert_eq!(missed, next.saturating_sub(from));
                            if missed > 0 {
                                self.lost.push((from, next));
                            }
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
            Step::Ack => {
                if self.connected {
                    let next = self.inbound.ack_sent();
                    self.last_ack = next;
                    self.to_sender
                        .push_back(encode_message(&Message::Ack { next }).unwrap());
                }
            }
            Step::DeliverAck => {
                if let Some(frame) = self.to_sender.pop_front() {
                    let mut buf = BytesMut::from(&frame[..]);
                    let body = decode_frame(&mut buf, MAX_FRAME_LIMIT).unwrap().unwrap();
                    let Classified::Ack(next) = self.rules.classify(decode_message(body).unwrap())
                    else {
                        panic!("not an ACK")
                    };
                    self.out.ack(next).expect("an honest ACK is accepted");
                }
            }
            Step::Lose => {
                self.connected = false;
                self.to_receiver.clear();
                self.to_sender.clear();
            }
            Step::Resume(stale) => {
                self.to_receiver.clear();
                self.to_sender.clear();
                let next = self.inbound.next();
                let position = next.saturating_sub(stale).max(self.last_ack);
                let replay = self.out.replay(position).expect("an honest position");
                let gap = replay.gap;
                let messages: Vec<(u64, Bytes)> = replay.messages.cloned().collect();
                if let Some(gap) = gap {
                    assert!(gap > position);
                    self.to_receiver
                        .put_slice(&encode_message(&Message::Gap { next: gap }).unwrap());
                }
                for (seq, body) in &messages {
                    self.send_data(*seq, body);
                }
                self.connected = true;
            }
        }
    }

    /// Resumes, delivers everything, and checks exactly-once in-order delivery or counted loss.
    fn check_at_the_end(&mut self, capacity: usize) {
        self.run(&Step::Resume(0));
        self.run(&Step::Deliver(usize::MAX));
        assert_eq!(self.inbound.next(), self.sent, "the receiver caught up");
        let mut expected = 0u64;
        let mut lost = self.lost.iter().peekable();
        for (seq, body) in &self.delivered {
            while let Some(&&(from, to)) = lost.peek() {
                if from == expected && to <= *seq {
                    expected = to;
                    lost.next();
                } else {
                    break;
                }
            }
            assert_eq!(
                *seq, expected,
                "delivered in order, nothing skipped silently"
            );
            let len = self.lengths[*seq as usize];
            assert_eq!(
                *body,
                payload(*seq, len),
                "message {seq} carries its own payload"
            );
            expected += 1;
        }
        for &(from, to) in lost {
            assert_eq!(from, expected, "a gap starts where delivery stopped");
            expected = to;
        }
        assert_eq!(
            expected, self.sent,
            "every message delivered or counted lost"
        );
        let lost_count: u64 = self.lost.iter().map(|(f, t)| t - f).sum();
        assert_eq!(self.delivered.len() as u64 + lost_count, self.sent);
        if capacity >= self.sent_bytes {
            assert_eq!(
                lost_count, 0,
                "nothing lost while the buffer held everything"
            );
        }
    }
}

proptest! {
    #![proptest_config(config(1024))]

    /// Outbound and Inbound over a lossy connection with resumes deliver exactly once, in
    /// order, each message with its own payload, or count it lost in a GAP.
    #[test]
    fn exactly_once_in_order_delivery_or_a_counted_gap_across_resumes(
        capacity in prop_oneof![0usize..3000, 3000usize..50_000, Just(usize::MAX)],
        steps in vec(step(), 0..200),
    ) {
        let mut link = Lossy::new(capacity);
        for step in &steps {
            link.run(step);
            prop_assert!(
                link.out.buffered_bytes() <= capacity || link.out.buffered_messages() == 1,
                "replay buffer over capacity"
            );
        }
        link.check_at_the_end(capacity);
    }
}

/// `codec::conn_failed` always produces a message that fits a handshake frame.
#[test]
fn conn_failed_always_fits_a_handshake_frame() {
    let mut runner = TestRunner::new(config(256));
    runner
        .run(&(reason(), any::<String>()), |(reason, text)| {
            let long = text.repeat(20);
            let frame = encode_message(&codec::conn_failed(
                reason,
                &long,
                Some(std::time::Duration::MAX),
            ))
            .unwrap();
            prop_assert!(frame.len() - 4 <= HANDSHAKE_FRAME_LIMIT);
            Ok(())
        })
        .unwrap();
}
