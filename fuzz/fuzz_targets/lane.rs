//! Arbitrary bytes into the feed datagram lane's decoder, and arbitrary arrivals into its
//! newest-wins receiver (PROTOCOL.md §13), checked against a model.
//!
//! - `decode_lane_datagram`: no panic; a decoded datagram re-encodes to the same bytes when its
//!   varints were written the shortest way, and always to a datagram that decodes the same;
//!   the reason of each failure is the one §13.5 gives.
//! - `LaneInbound`: delivers strictly increasing numbers; `Stale` exactly when the number is not
//!   above the newest seen; `TooOld` only with a maximum age, and only above it; without one,
//!   every newer datagram is delivered.
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use quicfeed::protocol::Reason;
use quicfeed::protocol::lane::{
    LANE_FEED, LaneArrival, LaneInbound, decode_lane_datagram, encode_lane_datagram,
};

#[derive(Arbitrary, Debug)]
struct Arrival {
    seq: u64,
    sent_ms: u64,
    /// Local time advances by this much before the arrival.
    after_ms: u16,
}

#[derive(Arbitrary, Debug)]
struct Input {
    datagram: Vec<u8>,
    max_age_ms: Option<u16>,
    arrivals: Vec<Arrival>,
}

fuzz_target!(|input: Input| {
    let bytes = Bytes::from(input.datagram.clone());
    match decode_lane_datagram(bytes) {
        Ok(lane) => {
            assert_eq!(input.datagram.first(), Some(&LANE_FEED));
            let again = encode_lane_datagram(lane.seq, lane.sent_ms, &lane.payload);
            let redecoded = decode_lane_datagram(again.clone()).expect("re-encoded decodes");
            assert_eq!(redecoded, lane);
            assert!(again.len() <= input.datagram.len(), "shortest form");
            assert!(input.datagram.ends_with(&lane.payload));
        }
        Err(e) => match input.datagram.first() {
            Some(&LANE_FEED) | None => assert_eq!(e.reason(), Reason::MalformedMessage),
            Some(_) => assert_eq!(e.reason(), Reason::UnknownMessage),
        },
    }

    let max_age = input
        .max_age_ms
        .map(|ms| Duration::from_millis(u64::from(ms)));
    let mut lane = LaneInbound::new(max_age);
    let mut newest: Option<u64> = None;
    let mut last_delivered: Option<u64> = None;
    let mut now: u64 = 0;
    for arrival in input.arrivals.iter().take(256) {
        now = now.saturating_add(u64::from(arrival.after_ms));
        let got = lane.arrive(arrival.seq, arrival.sent_ms, now);
        let newer = newest.is_none_or(|n| arrival.seq > n);
        match got {
            LaneArrival::Stale => assert!(!newer, "{arrival:?} newer than {newest:?}"),
            LaneArrival::Deliver => {
                assert!(newer);
                assert!(last_delivered.is_none_or(|d| arrival.seq > d));
                last_delivered = Some(arrival.seq);
            }
            LaneArrival::TooOld { age_ms } => {
                assert!(newer);
                let max = max_age.expect("too old only with a maximum age");
                assert!(u128::from(age_ms) > max.as_millis());
            }
        }
        if newer {
            newest = Some(arrival.seq);
        }
        assert_eq!(lane.newest(), newest);
    }
});
