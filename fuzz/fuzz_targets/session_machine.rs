//! Arbitrary operation sequences on the established session's machine
//! (`protocol::SessionMachine`): hostile frames and datagrams from the peer (raw bytes or any
//! message, on any channel, from the attached connection or a stale one), the application's
//! sends, receives, discards and closes, attaches with arbitrary positions, detaches, link
//! endings, stream ends and timers. Checked:
//!
//! - no panic, whatever arrives;
//! - what the application receives on each channel is strictly in order (each payload carries
//!   its sequence number; a `Gap` moves the expectation on), never a duplicate;
//! - the documented bounds hold after every step: kept (unacknowledged) bytes at most the
//!   replay capacity plus one message, unwritten bytes at most the kept ones, unread bytes at
//!   most the receive capacity plus one chunk plus one frame, the lane's queue at most its
//!   capacity plus one datagram;
//! - once the session has ended it stays ended, refuses sends, and every receive reports the
//!   end after what it had taken in;
//! - input for any connection but the attached one changes nothing that the application sees.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use quicfeed::protocol::codec::encode_message;
use quicfeed::protocol::lane::{encode_ack_datagram, encode_lane_datagram};
use quicfeed::protocol::{
    AttachLink, ChannelKind, FrameLimits, InboundRules, LaneSend, LinkClosed, Message, Reason,
    Received, SessionConfig, SessionMachine, Side, StreamEnd, Transmit,
};
use quicfeed_fuzz::{Chan, MsgSpec, Pool, SeqPick, at_ms};

const CAPACITY: usize = 4096;
const RECEIVE: usize = 2048;
const LANE: usize = 1024;
const FRAME: u32 = 1024;

#[derive(Arbitrary, Debug)]
enum Op {
    /// A frame on a channel: raw body bytes, or an encoded message.
    RawFrame {
        chan: Chan,
        stale: bool,
        body: Vec<u8>,
    },
    Frame {
        chan: Chan,
        stale: bool,
        message: MsgSpec,
    },
    /// `DATA` with the next expected number (so deliveries happen), or any number.
    NextData {
        chan: Chan,
        len: u8,
    },
    Ack {
        chan: Chan,
        next: SeqPick,
    },
    Datagram {
        stale: bool,
        bytes: Vec<u8>,
    },
    AckDatagram {
        main: SeqPick,
        feed: SeqPick,
    },
    LaneDatagram {
        seq: u64,
        sent_ms: u64,
        len: u8,
    },
    StreamEnd {
        chan: Chan,
        finished: bool,
    },
    Send {
        chan: Chan,
        len: u16,
    },
    Recv {
        chan: Chan,
        count: u8,
    },
    LaneRecv,
    /// A lane message the application sends, with QUIC holding `quic_queued` bytes unsent.
    LaneSend {
        len: u16,
        quic_queued: u16,
    },
    /// The connection task looks whether QUIC (holding `quic_queued` bytes) takes what waits.
    LanePoll {
        quic_queued: u16,
    },
    Discard {
        chan: Chan,
    },
    /// Write what the machine offers on a channel (to the void: the peer is a model).
    Transmit {
        chan: Chan,
        frames: u8,
    },
    Attach {
        main_next: SeqPick,
        feed_next: SeqPick,
        datagrams: bool,
    },
    Detach,
    LinkClosed {
        code: u16,
        kind: u8,
    },
    Received {
        count: u64,
    },
    /// The liveness check a server makes from its one timer.
    CheckLiveness {
        count: u64,
    },
    Advance {
        ms: u16,
    },
    Close,
    CloseGracefully {
        linger_ms: u16,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    server: bool,
    shared_checks: bool,
    ops: Vec<Op>,
}

fn config(side: Side, shared_checks: bool) -> SessionConfig {
    SessionConfig {
        side,
        replay_capacity: CAPACITY,
        send_budget: CAPACITY / 2,
        receive_capacity: RECEIVE,
        lane_capacity: LANE,
        dead_path_timeout: Duration::from_millis(1800),
        ack_delay: Duration::from_millis(100),
        finish_grace: Duration::from_secs(3),
        grace_period: (side == Side::Server).then_some(Duration::from_secs(15)),
        lane_max_age: Some(Duration::from_millis(50)),
        lane_send_capacity: 2,
        local_limits: FrameLimits {
            main: FRAME,
            feed: FRAME,
        },
        shared_checks,
    }
}

fn body(message: &Message) -> Option<Bytes> {
    encode_message(message).ok().map(|frame| frame.slice(4..))
}

fuzz_target!(|input: Input| {
    let side = if input.server {
        Side::Server
    } else {
        Side::Client
    };
    let mut now_ms = 0u64;
    let mut m = SessionMachine::new(config(side, input.shared_checks), at_ms(0));
    let pool = Pool::default();
    let limits = FrameLimits {
        main: FRAME,
        feed: FRAME,
    };
    let attach = |m: &mut SessionMachine, now_ms: u64, peer_next: (u64, u64), datagrams: bool| {
        m.attach(
            at_ms(now_ms),
            AttachLink {
                peer_limits: limits,
                peer_next,
                rules: (InboundRules::data_only(), InboundRules::data_only()),
                datagrams,
            },
        )
        .ok()
        .map(|a| a.generation)
    };
    let mut generation = attach(&mut m, 0, (0, 0), true);
    // The sequence number the peer would use next on each channel (a model of its sender),
    // and what the application expects next.
    let mut peer_next = [0u64; 2];
    let mut expect = [0u64; 2];
    // Once a raw frame has delivered a message on a channel, its payloads no longer carry the
    // numbers this model gave them: their order is then checked by the machine alone.
    let mut raw_delivered = [false; 2];
    let mut was_ended = false;
    for op in input.ops.iter().take(400) {
        let now = at_ms(now_ms);
        let current = generation.unwrap_or(0);
        let stale_gen = current.wrapping_add(7);
        let pick = |stale: bool| if stale { stale_gen } else { current };
        match op {
            // Like the driver, frames of the attached connection are read only while the
            // machine wants them (its receive bound relies on that).
            Op::RawFrame { chan, stale, body } => {
                if *stale || m.wants_read(current, chan.kind(), 0) {
                    let before = m.inbound_next(chan.kind());
                    m.handle_frame(pick(*stale), chan.kind(), Bytes::copy_from_slice(body), now);
                    if m.inbound_next(chan.kind()) != before {
                        raw_delivered[chan.kind() as usize] = true;
                    }
                }
            }
            Op::Frame {
                chan,
                stale,
                message,
            } => {
                if let Some(b) = body(&message.build(&pool)) {
                    if *stale || m.wants_read(current, chan.kind(), 0) {
                        let before = m.inbound_next(chan.kind());
                        m.handle_frame(pick(*stale), chan.kind(), b, now);
                        if m.inbound_next(chan.kind()) != before {
                            raw_delivered[chan.kind() as usize] = true;
                        }
                    }
                }
            }
            Op::NextData { chan, len } => {
                let i = chan.kind() as usize;
                let seq = peer_next[i];
                let mut payload = seq.to_be_bytes().to_vec();
                payload.resize(8 + usize::from(*len), 0);
                if let Some(b) = body(&Message::Data {
                    seq,
                    payload: Bytes::from(payload),
                }) {
                    if !m.wants_read(current, chan.kind(), 0) {
                        continue;
                    }
                    let before = m.inbound_next(chan.kind());
                    m.handle_frame(current, chan.kind(), b, now);
                    if m.inbound_next(chan.kind()) > before {
                        peer_next[i] += 1;
                    }
                }
            }
            Op::Ack { chan, next } => {
                if let Some(b) = body(&Message::Ack { next: next.get() }) {
                    m.handle_frame(current, chan.kind(), b, now);
                }
            }
            Op::Datagram { stale, bytes } => {
                m.handle_datagram(pick(*stale), Bytes::copy_from_slice(bytes), now);
            }
            Op::AckDatagram { main, feed } => {
                m.handle_datagram(current, encode_ack_datagram(main.get(), feed.get()), now);
            }
            Op::LaneDatagram { seq, sent_ms, len } => {
                let payload = vec![0u8; usize::from(*len)];
                m.handle_datagram(current, encode_lane_datagram(*seq, *sent_ms, &payload), now);
            }
            Op::StreamEnd { chan, finished } => {
                let end = if *finished {
                    StreamEnd::Finished
                } else {
                    StreamEnd::Failed("reset".into())
                };
                m.handle_stream_end(current, chan.kind(), end, now);
            }
            Op::Send { chan, len } => {
                let payload = Bytes::from(vec![1u8; usize::from(*len) % 2048]);
                if m.send(chan.kind(), payload).is_ok() {
                    assert!(m.ended().is_none(), "a send accepted after the end");
                }
            }
            Op::Recv { chan, count } => {
                let i = chan.kind() as usize;
                for _ in 0..*count {
                    match m.recv(chan.kind()) {
                        Some(Ok(payload)) if !raw_delivered[i] => {
                            let seq = payload
                                .get(..8)
                                .and_then(|head| <[u8; 8]>::try_from(head).ok())
                                .map(u64::from_be_bytes);
                            assert_eq!(seq, Some(expect[i]), "in order, exactly once");
                            expect[i] += 1;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(Received::Gap(missed))) => expect[i] += missed,
                        Some(Err(_)) => {
                            assert!(m.ended().is_some(), "an end reported before the end");
                            break;
                        }
                        None => break,
                    }
                }
            }
            Op::LaneRecv => {
                let _ = m.lane_recv();
            }
            Op::LaneSend { len, quic_queued } => {
                let payload = vec![3u8; usize::from(*len) % 1500];
                match m.send_lane(&payload, usize::from(*quic_queued), Some(1200), now) {
                    Ok(LaneSend::Send(datagram)) => {
                        assert!(
                            datagram.len() <= 1200,
                            "a lane datagram over the path's size"
                        )
                    }
                    Ok(LaneSend::TooLarge { max }) => assert!(max < payload.len().max(1)),
                    Ok(_) => {}
                    Err(_) => assert!(m.ended().is_some(), "a lane send refused before the end"),
                }
            }
            Op::LanePoll { quic_queued } => {
                let mut handed = 0;
                while let Some(datagram) =
                    m.poll_lane(current, usize::from(*quic_queued), Some(1200), now)
                {
                    assert!(
                        datagram.len() <= 1200,
                        "a lane datagram over the path's size"
                    );
                    handed += 1;
                    assert!(handed <= 2, "more handed over than may wait");
                }
                // Nothing waits without a recheck to hand it over.
                if m.poll_lane_recheck().is_none() {
                    assert!(
                        m.poll_lane(current, 0, Some(1200), now).is_none(),
                        "a lane message waits with no recheck set"
                    );
                }
            }
            Op::Discard { chan } => m.discard(chan.kind()),
            Op::Transmit { chan, frames } => {
                for _ in 0..*frames {
                    match m.poll_transmit(current, chan.kind()) {
                        Some(Transmit::Frame(head, _)) => assert!(!head.is_empty()),
                        Some(Transmit::Finish) | None => break,
                    }
                }
                while m.poll_datagram(current).is_some() {}
            }
            Op::Attach {
                main_next,
                feed_next,
                datagrams,
            } => {
                generation = attach(
                    &mut m,
                    now_ms,
                    (main_next.get(), feed_next.get()),
                    *datagrams,
                );
            }
            Op::Detach => {
                m.detach(now, Reason::Superseded, "fuzz");
            }
            Op::LinkClosed { code, kind } => {
                let closed = match kind % 5 {
                    0 => LinkClosed::Application {
                        code: u64::from(*code),
                        reason: String::new(),
                    },
                    1 => LinkClosed::TimedOut,
                    2 => LinkClosed::Reset,
                    3 => LinkClosed::Locally,
                    _ => LinkClosed::Transport("x".into()),
                };
                m.handle_link_closed(current, &closed, now);
            }
            Op::Received { count } => m.handle_received(current, *count, now),
            Op::CheckLiveness { count } => m.check_liveness(current, *count, now),
            Op::Advance { ms } => {
                now_ms += u64::from(*ms);
                m.handle_timeout(at_ms(now_ms));
            }
            Op::Close => m.close(Reason::Normal, "fuzz"),
            Op::CloseGracefully { linger_ms } => {
                m.close_gracefully(
                    now,
                    Reason::Normal,
                    "fuzz",
                    Duration::from_millis(u64::from(*linger_ms)),
                );
            }
        }
        while m.poll_close().is_some() {}
        while m.poll_event().is_some() {}
        let _ = m.take_wakes();
        for kind in [ChannelKind::Main, ChannelKind::Feed] {
            assert!(m.replay_bytes(kind) <= CAPACITY + 2048, "replay bound");
            assert!(
                m.unsent_bytes(kind) <= m.replay_bytes(kind),
                "unsent within kept"
            );
            assert!(
                m.queued_bytes(kind) <= RECEIVE + FRAME as usize,
                "receive bound"
            );
        }
        assert!(m.lane_queued_bytes() <= LANE + 300, "lane bound");
        if was_ended {
            assert!(m.ended().is_some(), "an ended session came back");
        }
        was_ended = m.ended().is_some();
    }
});
