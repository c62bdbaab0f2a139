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

use std::time::Duration;

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
}
