//! The feed datagram lane: unreliable feed messages carried in QUIC DATAGRAM frames
//! (PROTOCOL.md §13), and the acknowledgement datagrams that share them (§11.3). No I/O, no
//! clock: times are milliseconds passed in.
//!
//! A lane datagram is a lane byte, the sender's sequence number and send time (varints, §5.1),
//! then the application payload. The receiver keeps only what is newer than everything it has
//! delivered (**newest wins**: a late or duplicated datagram is dropped, never delivered out of
//! order), and optionally drops datagrams that spent longer than a maximum age in transit.
//!
//! Clocks are not synchronised, so the age of a datagram is measured as its transit time
//! (`arrival - send time`, offset included) minus the smallest transit seen recently: the extra
//! delay it suffered over the fastest recent datagram (queues, retransmission-free jitter, a
//! stalled sender), without the path's base one-way delay.
//!
//! The sending side ([`LaneOutbox`]) drops instead of delaying: QUIC sends datagrams as its
//! congestion control allows and cannot take one back once queued, so a lane message is handed
//! to QUIC only while QUIC holds nothing else unsent (or only the other messages of the same
//! instant, a tick's burst). While QUIC cannot send, messages wait here instead, where a newer
//! one supersedes the oldest beyond the outbox's capacity and one older than the maximum age is
//! dropped unsent.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{DecodeError, write_varint};

/// The lane byte of the feed lane, the only lane this version defines.
pub const LANE_FEED: u8 = 0x01;

/// The first byte of an acknowledgement datagram: cumulative `ACK`s of both channels on a path
/// that is always read, so that an acknowledgement never waits behind stream data the peer's
/// application has not read (PROTOCOL.md §11.3).
pub const LANE_ACK: u8 = 0x02;

/// Largest acknowledgement datagram: the byte and two 9-byte varints.
pub const ACK_DATAGRAM_MAX: usize = 1 + 9 + 9;

/// Largest lane header: the lane byte and two 9-byte varints.
pub const LANE_HEADER_MAX: usize = 1 + 9 + 9;

/// How long the smallest-transit baseline remembers a sample: between one and two of these.
pub const BASELINE_WINDOW_MS: u64 = 10_000;

/// A decoded lane datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneDatagram {
    /// The sender's sequence number on this lane (per session, from 0).
    pub seq: u64,
    /// The sender's clock when it sent the datagram: milliseconds since its session began.
    pub sent_ms: u64,
    /// The application payload.
    pub payload: Bytes,
}

/// The header of a lane datagram with `seq` sent at `sent_ms`, followed by `payload`: the bytes
/// of one QUIC datagram.
pub fn encode_lane_datagram(seq: u64, sent_ms: u64, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(LANE_HEADER_MAX.saturating_add(payload.len()));
    out.put_u8(LANE_FEED);
    put_varint(&mut out, seq);
    put_varint(&mut out, sent_ms);
    out.put_slice(payload);
    out.freeze()
}

/// Length of the header [`encode_lane_datagram`] writes for `seq` and `sent_ms`.
pub fn lane_header_len(seq: u64, sent_ms: u64) -> usize {
    1usize
        .saturating_add(varint_len(seq))
        .saturating_add(varint_len(sent_ms))
}

/// Decodes one received QUIC datagram. The payload is a view into `datagram` (no copy).
///
/// An empty datagram or a truncated or invalid varint is
/// [`Malformed`](DecodeError::Malformed); a lane byte other than [`LANE_FEED`] is
/// [`UnknownTag`](DecodeError::UnknownTag).
pub fn decode_lane_datagram(datagram: Bytes) -> Result<LaneDatagram, DecodeError> {
    let Some((&lane, rest)) = datagram.split_first() else {
        return Err(malformed("empty datagram"));
    };
    if lane != LANE_FEED {
        return Err(DecodeError::UnknownTag(u32::from(lane)));
    }
    let (seq, used_seq) = read_varint(rest).ok_or_else(|| malformed("sequence number"))?;
    let rest = rest.get(used_seq..).unwrap_or_default();
    let (sent_ms, used_time) = read_varint(rest).ok_or_else(|| malformed("send time"))?;
    let header = 1usize.saturating_add(used_seq).saturating_add(used_time);
    Ok(LaneDatagram {
        seq,
        sent_ms,
        payload: datagram.slice(header.min(datagram.len())..),
    })
}

/// Any datagram a peer may send: a lane message or an acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datagram {
    /// A feed lane message ([`LANE_FEED`]).
    Lane(LaneDatagram),
    /// Cumulative acknowledgements of both reliable channels ([`LANE_ACK`]): every `DATA` below
    /// `main_next` on main, and below `feed_next` on feed, has been taken in by the sender's
    /// session.
    Ack {
        /// The sender's next expected `DATA` on main.
        main_next: u64,
        /// The sender's next expected `DATA` on feed.
        feed_next: u64,
    },
}

/// The acknowledgement datagram for `main_next` and `feed_next`: `02`, then both as varints.
pub fn encode_ack_datagram(main_next: u64, feed_next: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(ACK_DATAGRAM_MAX);
    out.put_u8(LANE_ACK);
    put_varint(&mut out, main_next);
    put_varint(&mut out, feed_next);
    out.freeze()
}

/// Decodes one received QUIC datagram of either kind.
///
/// Empty, truncated or invalid varints, and bytes after an acknowledgement's second varint,
/// are [`Malformed`](DecodeError::Malformed); a first byte other than [`LANE_FEED`] and
/// [`LANE_ACK`] is [`UnknownTag`](DecodeError::UnknownTag).
pub fn decode_datagram(datagram: Bytes) -> Result<Datagram, DecodeError> {
    match datagram.first() {
        Some(&LANE_ACK) => {
            let rest = datagram.get(1..).unwrap_or_default();
            let (main_next, used_main) =
                read_varint(rest).ok_or_else(|| malformed_ack("main position"))?;
            let rest = rest.get(used_main..).unwrap_or_default();
            let (feed_next, used_feed) =
                read_varint(rest).ok_or_else(|| malformed_ack("feed position"))?;
            if rest.len() != used_feed {
                return Err(malformed_ack("bytes after the feed position"));
            }
            Ok(Datagram::Ack {
                main_next,
                feed_next,
            })
        }
        _ => decode_lane_datagram(datagram).map(Datagram::Lane),
    }
}

fn malformed_ack(detail: &str) -> DecodeError {
    DecodeError::Malformed {
        what: "acknowledgement datagram",
        detail: detail.to_owned(),
    }
}

fn malformed(detail: &str) -> DecodeError {
    DecodeError::Malformed {
        what: "lane datagram",
        detail: detail.to_owned(),
    }
}

fn varint_len(value: u64) -> usize {
    write_varint(value, &mut [0; 9])
}

fn put_varint(out: &mut BytesMut, value: u64) {
    let mut buf = [0; 9];
    let len = write_varint(value, &mut buf);
    out.put_slice(buf.get(..len).unwrap_or_default());
}

/// A varint (§5.1) at the start of `bytes`, decoded by bincode: its value and length.
fn read_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    bincode::decode_from_slice::<u64, _>(bytes, bincode::config::standard()).ok()
}

/// What became of an arriving lane datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneArrival {
    /// Newer than everything delivered so far: deliver it.
    Deliver,
    /// Not newer than the newest delivered (late, reordered or duplicated): dropped.
    Stale,
    /// Newer, but older than the maximum age by the time it arrived: dropped.
    TooOld {
        /// Its age: extra transit over the smallest recent transit, in milliseconds.
        age_ms: u64,
    },
}

/// The receiving side of a lane: newest wins, with an optional maximum age.
#[derive(Debug, Clone)]
pub struct LaneInbound {
    newest: Option<u64>,
    max_age: Option<Duration>,
    baseline: TransitBaseline,
}

impl LaneInbound {
    /// Nothing received yet; `max_age` of `None` delivers whatever is newest, however late.
    pub fn new(max_age: Option<Duration>) -> Self {
        LaneInbound {
            newest: None,
            max_age,
            baseline: TransitBaseline::default(),
        }
    }

    /// The newest sequence number seen (delivered or too old), if any.
    pub fn newest(&self) -> Option<u64> {
        self.newest
    }

    /// A datagram numbered `seq`, sent at the peer's `sent_ms`, arrived at the local `now_ms`
    /// (both clocks in milliseconds since some start of their own).
    pub fn arrive(&mut self, seq: u64, sent_ms: u64, now_ms: u64) -> LaneArrival {
        let transit = i128::from(now_ms).saturating_sub(i128::from(sent_ms));
        let baseline = self.baseline.sample(transit, now_ms);
        if self.newest.is_some_and(|newest| seq <= newest) {
            return LaneArrival::Stale;
        }
        self.newest = Some(seq);
        let age_ms = u64::try_from(transit.saturating_sub(baseline).max(0)).unwrap_or(u64::MAX);
        match self.max_age {
            Some(max) if u128::from(age_ms) > max.as_millis() => LaneArrival::TooOld { age_ms },
            _ => LaneArrival::Deliver,
        }
    }
}

/// Messages handed to QUIC within this of the previous hand-over join it while QUIC still holds
/// that one: the messages of one tick, sent back to back, go out together.
pub const LANE_BURST: Duration = Duration::from_millis(1);

/// How often a waiting lane message checks whether QUIC can take it: QUIC gives no signal when
/// its datagram queue empties, so the connection task looks this often while messages wait (and
/// only then: nothing waits while QUIC keeps up).
pub const LANE_RECHECK: Duration = Duration::from_millis(1);

/// What [`LaneOutbox::offer`] did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaneOffer {
    /// Hand it to QUIC now.
    Send(Bytes),
    /// It waits in the outbox; `superseded` older messages were dropped to make room (with a
    /// capacity of 0, the message itself).
    Queued {
        /// Messages dropped unsent (older ones, or this one when the capacity is 0).
        superseded: u64,
    },
}

/// The sending side of a lane: what QUIC cannot send yet, newest first in line, oldest
/// superseded, too-old dropped. Times are passed in.
#[derive(Debug, Clone)]
pub struct LaneOutbox {
    waiting: VecDeque<(Bytes, Instant)>,
    capacity: usize,
    max_age: Option<Duration>,
    /// When a message was last handed to QUIC (the burst rule).
    handed_at: Option<Instant>,
    superseded: u64,
    expired: u64,
}

impl LaneOutbox {
    /// An empty outbox keeping at most `capacity` waiting messages (0: none wait, a message QUIC
    /// cannot take now is dropped), each at most `max_age` (`None`: until QUIC takes it).
    pub fn new(capacity: usize, max_age: Option<Duration>) -> Self {
        LaneOutbox {
            waiting: VecDeque::new(),
            capacity,
            max_age,
            handed_at: None,
            superseded: 0,
            expired: 0,
        }
    }

    /// Whether QUIC can take a `len`-byte datagram at `now`, holding `quic_queued` bytes of
    /// datagrams unsent (0: none) with `max_datagram` the largest it sends: when it holds none,
    /// or only datagrams handed over in the same burst that still fit one packet with it.
    fn quic_free(&self, len: usize, quic_queued: usize, max_datagram: usize, now: Instant) -> bool {
        if quic_queued == 0 {
            return true;
        }
        let same_burst = self
            .handed_at
            .is_some_and(|at| now.saturating_duration_since(at) < LANE_BURST);
        same_burst && quic_queued.saturating_add(len) <= max_datagram
    }

    /// A new message, `datagram` (the whole lane datagram), sent at `now`: handed to QUIC at
    /// once if nothing waits and QUIC can take it, else queued behind the waiting ones.
    pub fn offer(
        &mut self,
        datagram: Bytes,
        quic_queued: usize,
        max_datagram: usize,
        now: Instant,
    ) -> LaneOffer {
        self.expire(now);
        if self.waiting.is_empty() && self.quic_free(datagram.len(), quic_queued, max_datagram, now)
        {
            self.handed_at = Some(now);
            return LaneOffer::Send(datagram);
        }
        if self.capacity == 0 {
            self.superseded = self.superseded.saturating_add(1);
            return LaneOffer::Queued { superseded: 1 };
        }
        let mut superseded: u64 = 0;
        while self.waiting.len() >= self.capacity {
            self.waiting.pop_front();
            superseded = superseded.saturating_add(1);
        }
        self.waiting.push_back((datagram, now));
        self.superseded = self.superseded.saturating_add(superseded);
        LaneOffer::Queued { superseded }
    }

    /// The next waiting message to hand to QUIC at `now`, if QUIC can take it; messages past
    /// the maximum age are dropped first.
    pub fn poll(&mut self, quic_queued: usize, max_datagram: usize, now: Instant) -> Option<Bytes> {
        self.expire(now);
        let len = self.waiting.front()?.0.len();
        if !self.quic_free(len, quic_queued, max_datagram, now) {
            return None;
        }
        self.handed_at = Some(now);
        self.waiting.pop_front().map(|(datagram, _)| datagram)
    }

    /// When the connection should next look whether QUIC can take a waiting message: soon
    /// while one waits, else never.
    pub fn recheck_at(&self, now: Instant) -> Option<Instant> {
        if self.waiting.is_empty() {
            return None;
        }
        now.checked_add(LANE_RECHECK)
    }

    /// Whether messages wait.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Drops every waiting message (the connection is gone: a lane message is worth sending
    /// only now); returns how many.
    pub fn clear(&mut self) -> u64 {
        let dropped = self.waiting.len() as u64;
        self.waiting.clear();
        self.handed_at = None;
        dropped
    }

    /// Messages dropped unsent so far because newer ones took their place.
    pub fn superseded(&self) -> u64 {
        self.superseded
    }

    /// Messages dropped unsent so far for waiting longer than the maximum age.
    pub fn expired(&self) -> u64 {
        self.expired
    }

    fn expire(&mut self, now: Instant) {
        let Some(max) = self.max_age else { return };
        while self
            .waiting
            .front()
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) > max)
        {
            self.waiting.pop_front();
            self.expired = self.expired.saturating_add(1);
        }
    }
}

/// The smallest transit time over the last one to two windows: the clock offset plus the
/// path's base one-way delay. Two buckets, so an old minimum (a faster path before a
/// migration, say) is forgotten after at most two windows.
#[derive(Debug, Clone, Default)]
struct TransitBaseline {
    /// (window start, smallest transit in it) for the current and the previous window.
    current: Option<(u64, i128)>,
    previous: Option<i128>,
}

impl TransitBaseline {
    /// Records a sample at `now_ms`; returns the baseline including it.
    fn sample(&mut self, transit: i128, now_ms: u64) -> i128 {
        match self.current {
            Some((start, min)) if now_ms.saturating_sub(start) < BASELINE_WINDOW_MS => {
                self.current = Some((start, min.min(transit)));
            }
            Some((start, min)) => {
                // One window on: the current becomes the previous. Two or more: both expire.
                let one_window =
                    now_ms.saturating_sub(start) < BASELINE_WINDOW_MS.saturating_mul(2);
                self.previous = one_window.then_some(min);
                self.current = Some((now_ms, transit));
            }
            None => self.current = Some((now_ms, transit)),
        }
        let current = self.current.map_or(transit, |(_, min)| min);
        self.previous
            .map_or(current, |previous| previous.min(current))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_round_trips_and_its_header_length_is_exact() {
        for (seq, sent_ms) in [(0, 0), (250, 251), (65_535, 65_536), (u64::MAX, 1 << 40)] {
            let bytes = encode_lane_datagram(seq, sent_ms, b"snapshot");
            assert_eq!(bytes.len(), lane_header_len(seq, sent_ms) + 8);
            let got = decode_lane_datagram(bytes).unwrap();
            assert_eq!((got.seq, got.sent_ms), (seq, sent_ms));
            assert_eq!(&got.payload[..], b"snapshot");
        }
    }

    #[test]
    fn the_wire_form_is_lane_byte_then_two_varints_then_payload() {
        let bytes = encode_lane_datagram(300, 7, &[0xaa, 0xbb]);
        assert_eq!(&bytes[..], [0x01, 0xfb, 0x2c, 0x01, 0x07, 0xaa, 0xbb]);
    }

    #[test]
    fn bad_datagrams_are_refused_with_a_reason() {
        use crate::protocol::Reason;
        let reason = |bytes: &[u8]| {
            decode_lane_datagram(Bytes::copy_from_slice(bytes))
                .unwrap_err()
                .reason()
        };
        assert_eq!(reason(&[]), Reason::MalformedMessage);
        assert_eq!(reason(&[0x02, 0, 0]), Reason::UnknownMessage);
        assert_eq!(reason(&[0x01]), Reason::MalformedMessage, "no sequence");
        assert_eq!(reason(&[0x01, 0]), Reason::MalformedMessage, "no time");
        assert_eq!(reason(&[0x01, 0xfb, 0x01]), Reason::MalformedMessage);
        assert_eq!(reason(&[0x01, 0xfe, 0]), Reason::MalformedMessage);
        // An empty payload is fine.
        assert!(decode_lane_datagram(Bytes::from_static(&[0x01, 3, 4])).is_ok());
    }

    #[test]
    fn acknowledgement_datagrams_round_trip_and_refuse_extra_bytes() {
        use crate::protocol::Reason;
        let bytes = encode_ack_datagram(300, 12);
        assert_eq!(&bytes[..], [0x02, 0xfb, 0x2c, 0x01, 0x0c]);
        assert_eq!(
            decode_datagram(bytes).unwrap(),
            Datagram::Ack {
                main_next: 300,
                feed_next: 12
            }
        );
        let reason = |bytes: &[u8]| {
            decode_datagram(Bytes::copy_from_slice(bytes))
                .unwrap_err()
                .reason()
        };
        assert_eq!(reason(&[0x02]), Reason::MalformedMessage);
        assert_eq!(reason(&[0x02, 1]), Reason::MalformedMessage);
        assert_eq!(reason(&[0x02, 1, 2, 3]), Reason::MalformedMessage);
        assert_eq!(reason(&[0x03, 1, 2]), Reason::UnknownMessage);
        assert!(matches!(
            decode_datagram(encode_lane_datagram(1, 2, b"x")).unwrap(),
            Datagram::Lane(_)
        ));
    }

    #[test]
    fn the_newest_wins() {
        let mut lane = LaneInbound::new(None);
        assert_eq!(lane.arrive(3, 0, 10), LaneArrival::Deliver);
        assert_eq!(lane.arrive(1, 0, 11), LaneArrival::Stale, "reordered");
        assert_eq!(lane.arrive(3, 0, 12), LaneArrival::Stale, "duplicated");
        assert_eq!(lane.arrive(7, 0, 13), LaneArrival::Deliver, "a gap is fine");
        assert_eq!(lane.newest(), Some(7));
    }

    #[test]
    fn age_is_extra_transit_over_the_fastest_recent_one() {
        // The peer's clock is 5 s ahead; the base one-way delay is 20 ms.
        let mut lane = LaneInbound::new(Some(Duration::from_millis(50)));
        let sent = |t: u64| t + 5_000;
        assert_eq!(lane.arrive(0, sent(0), 20), LaneArrival::Deliver);
        assert_eq!(
            lane.arrive(1, sent(100), 160),
            LaneArrival::Deliver,
            "40 ms late"
        );
        assert_eq!(
            lane.arrive(2, sent(200), 290),
            LaneArrival::TooOld { age_ms: 70 }
        );
        assert_eq!(lane.arrive(3, sent(300), 320), LaneArrival::Deliver);
    }

    #[test]
    fn a_slower_path_becomes_the_baseline_within_two_windows() {
        let mut lane = LaneInbound::new(Some(Duration::from_millis(50)));
        assert_eq!(lane.arrive(0, 0, 10), LaneArrival::Deliver);
        // The path's delay goes from 10 ms to 200 ms: too old at first ...
        let mut seq = 1;
        let mut t = 1_000;
        assert!(matches!(
            lane.arrive(seq, t, t + 200),
            LaneArrival::TooOld { .. }
        ));
        // ... and normal once the fast samples have expired.
        while t < 3 * BASELINE_WINDOW_MS {
            seq += 1;
            t += 500;
            lane.arrive(seq, t, t + 200);
        }
        assert_eq!(lane.arrive(seq + 1, t + 16, t + 216), LaneArrival::Deliver);
    }

    #[test]
    fn without_a_maximum_age_nothing_is_too_old() {
        let mut lane = LaneInbound::new(None);
        assert_eq!(lane.arrive(0, 0, 0), LaneArrival::Deliver);
        assert_eq!(lane.arrive(1, 0, 60_000), LaneArrival::Deliver);
    }

    // ----- the outbox -----

    const MAX: usize = 1200;

    fn msg(n: u8) -> Bytes {
        Bytes::from(vec![n; 200])
    }

    fn sent(offer: LaneOffer) -> Bytes {
        match offer {
            LaneOffer::Send(d) => d,
            other => panic!("expected to send at once, got {other:?}"),
        }
    }

    /// Proves: while QUIC holds nothing unsent, a message goes at once and nothing waits.
    #[test]
    fn a_message_goes_at_once_while_quic_keeps_up() {
        let t = Instant::now();
        let mut out = LaneOutbox::new(1, None);
        for i in 0..10u8 {
            let at = t + Duration::from_millis(16 * u64::from(i));
            assert_eq!(sent(out.offer(msg(i), 0, MAX, at)), msg(i));
            assert!(out.recheck_at(at).is_none());
        }
        assert_eq!((out.superseded(), out.expired()), (0, 0));
    }

    /// Proves: the messages of one tick (sent within the burst window) all go to QUIC while
    /// they fit one packet together, even though QUIC has not sent the first yet.
    #[test]
    fn a_ticks_burst_goes_together_up_to_one_packet() {
        let t = Instant::now();
        let mut out = LaneOutbox::new(4, None);
        let mut queued = 0;
        let mut handed = 0;
        for i in 0..6u8 {
            let at = t + Duration::from_micros(50 * u64::from(i));
            match out.offer(msg(i), queued, MAX, at) {
                LaneOffer::Send(d) => {
                    queued += d.len() + 32;
                    handed += 1;
                }
                LaneOffer::Queued { superseded } => {
                    // Five 200-byte messages (232 bytes each as QUIC counts) and a sixth would
                    // not fit 1,200 together: the sixth waits.
                    assert_eq!((i, superseded), (5, 0));
                }
            }
        }
        assert_eq!(handed, 5);
        assert!(!out.is_empty());
        // A later message (not the same burst) waits too, behind it.
        let later = t + Duration::from_millis(2);
        assert_eq!(
            out.offer(msg(6), queued, MAX, later),
            LaneOffer::Queued { superseded: 0 }
        );
    }

    /// Proves: while QUIC holds an unsent message from an earlier tick, a new one waits, a
    /// newer one supersedes it (capacity 1), and the newest goes once QUIC has sent its queue.
    #[test]
    fn while_quic_is_held_back_the_newest_waits_and_supersedes_the_older() {
        let t = Instant::now();
        let tick = Duration::from_millis(16);
        let mut out = LaneOutbox::new(1, None);
        sent(out.offer(msg(0), 0, MAX, t));
        // QUIC still holds message 0 a tick later: congestion control holds it back.
        assert_eq!(
            out.offer(msg(1), 232, MAX, t + tick),
            LaneOffer::Queued { superseded: 0 }
        );
        assert_eq!(out.recheck_at(t + tick), Some(t + tick + LANE_RECHECK));
        assert_eq!(out.poll(232, MAX, t + tick + LANE_RECHECK), None);
        assert_eq!(
            out.offer(msg(2), 232, MAX, t + tick * 2),
            LaneOffer::Queued { superseded: 1 }
        );
        // QUIC has sent message 0: the newest goes, the superseded one never does.
        assert_eq!(out.poll(0, MAX, t + tick * 2 + LANE_RECHECK), Some(msg(2)));
        assert_eq!(out.poll(0, MAX, t + tick * 3), None);
        assert!(out.recheck_at(t + tick * 3).is_none());
        assert_eq!(out.superseded(), 1);
    }

    /// Proves: a message that waited longer than the maximum age is never handed to QUIC.
    #[test]
    fn a_message_past_the_maximum_age_is_dropped_unsent() {
        let t = Instant::now();
        let mut out = LaneOutbox::new(2, Some(Duration::from_millis(20)));
        sent(out.offer(msg(0), 0, MAX, t));
        let later = t + Duration::from_millis(10);
        assert!(matches!(
            out.offer(msg(1), 232, MAX, later),
            LaneOffer::Queued { .. }
        ));
        // 25 ms after it was sent (waited 15 ms): still young enough.
        assert_eq!(
            out.poll(0, MAX, t + Duration::from_millis(25)),
            Some(msg(1))
        );
        sent(out.offer(msg(2), 0, MAX, t + Duration::from_millis(40)));
        assert!(matches!(
            out.offer(msg(3), 232, MAX, t + Duration::from_millis(50)),
            LaneOffer::Queued { .. }
        ));
        // It waited 21 ms: dropped, although QUIC is free now.
        assert_eq!(out.poll(0, MAX, t + Duration::from_millis(71)), None);
        assert_eq!(out.expired(), 1);
        assert!(out.is_empty());
    }

    /// Proves: with capacity 0 nothing waits: a message QUIC cannot take at once is dropped.
    #[test]
    fn with_no_capacity_a_message_quic_cannot_take_is_dropped() {
        let t = Instant::now();
        let mut out = LaneOutbox::new(0, None);
        sent(out.offer(msg(0), 0, MAX, t));
        let later = t + Duration::from_millis(16);
        assert_eq!(
            out.offer(msg(1), 232, MAX, later),
            LaneOffer::Queued { superseded: 1 }
        );
        assert!(out.is_empty());
        assert!(out.recheck_at(later).is_none());
    }

    /// Proves: clearing (the connection is lost) drops what waits and counts it.
    #[test]
    fn clearing_drops_what_waits() {
        let t = Instant::now();
        let mut out = LaneOutbox::new(3, None);
        sent(out.offer(msg(0), 0, MAX, t));
        for i in 1..=3u8 {
            let at = t + Duration::from_millis(16 * u64::from(i));
            assert!(matches!(
                out.offer(msg(i), 232, MAX, at),
                LaneOffer::Queued { .. }
            ));
        }
        assert_eq!(out.clear(), 3);
        assert!(out.is_empty());
        // The next message after a new connection goes at once (no burst carried over).
        sent(out.offer(msg(9), 0, MAX, t + Duration::from_secs(1)));
    }
}
