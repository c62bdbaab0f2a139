//! Connection quality statistics from periodic samples of cumulative counters. No I/O: the
//! caller passes in each sample and its time.
//!
//! The driver samples every session's connection a few times a second (with its liveness
//! check). [`StatsWindow`] keeps, in a few hundred bytes:
//!
//! - the last [`RTT_SAMPLES`] smoothed RTT samples, for percentiles, two bytes each (see
//!   `RttCode`), and the smallest RTT ever;
//! - jitter: the mean deviation between consecutive RTT samples, smoothed with gain 1/16 as in
//!   RFC 3550;
//! - rates over the last one to two seconds (bytes and messages each way, packets lost out of
//!   packets sent), from two snapshots of the cumulative counters.
//!
//! Counters restart from zero on a new connection (a resume): a sample from another connection
//! than the previous one starts a new rate interval.

use std::time::{Duration, Instant};

/// How many RTT samples the percentiles cover (about seven seconds at the driver's pace).
pub const RTT_SAMPLES: usize = 64;

/// The shortest interval rates are computed over.
pub const RATE_INTERVAL: Duration = Duration::from_secs(1);

/// Cumulative counters of one connection at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// Which connection of the session the counters belong to.
    pub connection: u64,
    /// The smoothed RTT estimate.
    pub rtt: Duration,
    /// The congestion window, in bytes.
    pub cwnd: u64,
    /// UDP bytes sent and received.
    pub sent_bytes: u64,
    /// See `sent_bytes`.
    pub received_bytes: u64,
    /// Packets sent, and declared lost.
    pub sent_packets: u64,
    /// See `sent_packets`.
    pub lost_packets: u64,
    /// Application messages sent and delivered (all connections of the session).
    pub sent_messages: u64,
    /// See `sent_messages`.
    pub received_messages: u64,
}

/// Rates over the last interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    /// Bytes per second sent (UDP payload, headers of QUIC included).
    pub sent_bytes_per_s: f64,
    /// Bytes per second received.
    pub received_bytes_per_s: f64,
    /// Application messages per second sent.
    pub sent_messages_per_s: f64,
    /// Application messages per second received.
    pub received_messages_per_s: f64,
    /// Packets lost out of packets sent (0 when nothing was sent).
    pub loss_rate: f64,
}

/// What [`StatsWindow::summary`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    /// The latest smoothed RTT.
    pub rtt: Option<Duration>,
    /// The smallest RTT sampled in the session.
    pub min_rtt: Option<Duration>,
    /// The median of the recent RTT samples.
    pub rtt_p50: Option<Duration>,
    /// The 99th percentile of the recent RTT samples.
    pub rtt_p99: Option<Duration>,
    /// Smoothed mean deviation between consecutive RTT samples.
    pub jitter: Duration,
    /// The latest congestion window, in bytes.
    pub cwnd: u64,
    /// Rates over the last complete interval.
    pub rates: Rates,
}

/// The statistics state of one session.
#[derive(Debug, Clone)]
pub struct StatsWindow {
    /// RTT samples as [`RttCode`]s, a ring of [`RTT_SAMPLES`]: the first `rtt_count` are
    /// filled, and `next_rtt` is replaced next. Inline, two bytes a sample: every session has
    /// one, and a vector of microseconds would be 280 bytes once full.
    rtts: [RttCode; RTT_SAMPLES],
    rtt_count: u8,
    next_rtt: u8,
    min_rtt: Option<Duration>,
    jitter_us: f64,
    latest: Option<(Instant, Sample)>,
    /// Where the current rate interval began.
    interval_start: Option<(Instant, Sample)>,
    rates: Rates,
}

impl Default for StatsWindow {
    fn default() -> Self {
        StatsWindow::new()
    }
}

impl StatsWindow {
    /// No samples yet.
    pub fn new() -> Self {
        StatsWindow {
            rtts: [RttCode(0); RTT_SAMPLES],
            rtt_count: 0,
            next_rtt: 0,
            min_rtt: None,
            jitter_us: 0.0,
            latest: None,
            interval_start: None,
            rates: Rates::default(),
        }
    }

    /// Records a sample taken at `now`.
    pub fn record(&mut self, now: Instant, sample: Sample) {
        let rtt_us = u32::try_from(sample.rtt.as_micros()).unwrap_or(u32::MAX);
        if let Some((_, previous)) = self.latest {
            let previous_us = u32::try_from(previous.rtt.as_micros()).unwrap_or(u32::MAX);
            let deviation = f64::from(rtt_us.abs_diff(previous_us));
            self.jitter_us += (deviation - self.jitter_us) / 16.0;
        }
        if let Some(slot) = self.rtts.get_mut(usize::from(self.next_rtt)) {
            *slot = RttCode::from_micros(rtt_us);
        }
        self.next_rtt = self.next_rtt.wrapping_add(1) % RING;
        self.rtt_count = self.rtt_count.saturating_add(1).min(RING);
        if !sample.rtt.is_zero() {
            self.min_rtt = Some(self.min_rtt.map_or(sample.rtt, |m| m.min(sample.rtt)));
        }
        self.latest = Some((now, sample));
        match self.interval_start {
            Some((_, first)) if first.connection != sample.connection => {
                // A new connection: its counters start again from zero.
                self.interval_start = Some((now, sample));
            }
            Some((start, first)) => {
                let elapsed = now.saturating_duration_since(start);
                if elapsed >= RATE_INTERVAL {
                    self.rates = rates(&first, &sample, elapsed);
                    self.interval_start = Some((now, sample));
                }
            }
            None => self.interval_start = Some((now, sample)),
        }
    }

    /// The statistics so far.
    pub fn summary(&self) -> Summary {
        // The codes sort as the RTTs do.
        let mut ring = self.rtts;
        let sorted = ring
            .get_mut(..usize::from(self.rtt_count))
            .unwrap_or_default();
        sorted.sort_unstable();
        let percentile = |p: usize| -> Option<Duration> {
            let last = sorted.len().checked_sub(1)?;
            let index = last.saturating_mul(p).div_ceil(100);
            sorted
                .get(index)
                .map(|code| Duration::from_micros(u64::from(code.micros())))
        };
        Summary {
            rtt: self.latest.map(|(_, s)| s.rtt),
            min_rtt: self.min_rtt,
            rtt_p50: percentile(50),
            rtt_p99: percentile(99),
            jitter: Duration::from_micros(self.jitter_us as u64),
            cwnd: self.latest.map_or(0, |(_, s)| s.cwnd),
            rates: self.rates,
        }
    }
}

/// [`RTT_SAMPLES`] as the ring's index type.
const RING: u8 = {
    assert!(RTT_SAMPLES <= u8::MAX as usize);
    RTT_SAMPLES as u8
};

/// An RTT in two bytes, for the percentile ring: exact below 2,048 µs, and above that with
/// 11 significant bits (within 0.05 %), up to `u32::MAX` µs. Codes sort as the RTTs do.
///
/// Below 2,048 the code is the value. Above, a value with `b` bits (`b` from 12 to 32) keeps
/// its 11 leading bits: the code is `2048 + (b - 12) * 1024 + (those bits - 1024)`, and it
/// decodes to the middle of the values that share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct RttCode(u16);

impl RttCode {
    /// Values below this are kept exactly.
    const EXACT: u32 = 2048;

    fn from_micros(us: u32) -> RttCode {
        if us < Self::EXACT {
            // Fits: below 2^11.
            return RttCode(u16::try_from(us).unwrap_or(u16::MAX));
        }
        // `us` has 12 to 32 bits: drop all but the leading 11.
        let shift = 21_u32.saturating_sub(us.leading_zeros());
        let leading = us.checked_shr(shift).unwrap_or(0);
        let code = shift
            .saturating_sub(1)
            .saturating_mul(1024)
            .saturating_add(leading)
            .saturating_add(1024);
        RttCode(u16::try_from(code).unwrap_or(u16::MAX))
    }

    fn micros(self) -> u32 {
        let code = u32::from(self.0);
        if code < Self::EXACT {
            return code;
        }
        let above = code.saturating_sub(Self::EXACT);
        let shift = (above / 1024).saturating_add(1);
        let leading = (above % 1024).saturating_add(1024);
        let low = leading.checked_shl(shift).unwrap_or(u32::MAX);
        // The middle of the values that share the code.
        low.saturating_add(1_u32.checked_shl(shift.saturating_sub(1)).unwrap_or(0))
    }
}

fn rates(first: &Sample, last: &Sample, elapsed: Duration) -> Rates {
    let seconds = elapsed.as_secs_f64();
    let per_second = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds;
    let sent = last.sent_packets.saturating_sub(first.sent_packets);
    let lost = last.lost_packets.saturating_sub(first.lost_packets);
    Rates {
        sent_bytes_per_s: per_second(first.sent_bytes, last.sent_bytes),
        received_bytes_per_s: per_second(first.received_bytes, last.received_bytes),
        sent_messages_per_s: per_second(first.sent_messages, last.sent_messages),
        received_messages_per_s: per_second(first.received_messages, last.received_messages),
        loss_rate: if sent == 0 {
            0.0
        } else {
            (lost as f64 / sent as f64).min(1.0)
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn rtt_percentiles_minimum_and_jitter() {
        let t0 = Instant::now();
        let mut w = StatsWindow::new();
        assert_eq!(w.summary().rtt_p50, None);
        // 100 samples alternating 20 and 30 ms, then one of 90 ms.
        for i in 0..100u64 {
            let rtt = if i % 2 == 0 { ms(20) } else { ms(30) };
            w.record(
                t0 + ms(100 * i),
                Sample {
                    rtt,
                    ..Sample::default()
                },
            );
        }
        w.record(
            t0 + ms(10_000),
            Sample {
                rtt: ms(90),
                ..Sample::default()
            },
        );
        let s = w.summary();
        assert_eq!(s.rtt, Some(ms(90)));
        assert_eq!(s.min_rtt, Some(ms(20)));
        // Percentiles keep 11 significant bits (the middle of the values that share them):
        // 30,008 µs for 30 ms, 90,016 µs for 90 ms, within 0.05 %.
        assert_eq!(
            s.rtt_p50,
            Some(Duration::from_micros(30_008)),
            "the window holds the last 64"
        );
        assert_eq!(s.rtt_p99, Some(Duration::from_micros(90_016)));
        // Consecutive samples differ by 10 ms: jitter converges there, then the jump adds.
        assert!(s.jitter > ms(9) && s.jitter < ms(16), "{:?}", s.jitter);
    }

    #[test]
    fn rtt_codes_are_exact_below_2048_us_within_a_2048th_above_and_sort_as_rtts_do() {
        for us in 0..RttCode::EXACT {
            assert_eq!(RttCode::from_micros(us).micros(), us);
        }
        let mut previous = RttCode::from_micros(0);
        // Every power of two and its neighbours, and a spread of values between.
        let values = (11..32)
            .flat_map(|bit| {
                let p = 1_u32 << bit;
                [p - 1, p, p + 1, p + p / 3, p + p / 2 + 7]
            })
            .chain([u32::MAX - 1, u32::MAX]);
        for us in values {
            let code = RttCode::from_micros(us);
            assert!(code >= previous, "{us} µs sorts after the values below it");
            previous = code;
            let back = code.micros();
            let error = f64::from(back.abs_diff(us)) / f64::from(us);
            assert!(error <= 1.0 / 2048.0, "{us} µs came back as {back}");
        }
        assert_eq!(RttCode::from_micros(u32::MAX).0, 23_551, "the largest code");
    }

    #[test]
    fn rates_come_from_counter_deltas_over_at_least_a_second() {
        let t0 = Instant::now();
        let mut w = StatsWindow::new();
        let at = |sent_bytes, sent_packets, lost_packets, sent_messages| Sample {
            connection: 1,
            rtt: ms(20),
            sent_bytes,
            received_bytes: sent_bytes / 2,
            sent_packets,
            lost_packets,
            sent_messages,
            received_messages: sent_messages * 2,
            cwnd: 12_000,
        };
        w.record(t0, at(0, 0, 0, 0));
        w.record(t0 + ms(500), at(50_000, 50, 1, 30));
        assert_eq!(w.summary().rates, Rates::default(), "not a second yet");
        w.record(t0 + ms(2000), at(200_000, 200, 10, 120));
        let r = w.summary().rates;
        assert_eq!(r.sent_bytes_per_s, 100_000.0);
        assert_eq!(r.received_bytes_per_s, 50_000.0);
        assert_eq!(r.sent_messages_per_s, 60.0);
        assert_eq!(r.received_messages_per_s, 120.0);
        assert_eq!(r.loss_rate, 0.05);
        assert_eq!(w.summary().cwnd, 12_000);
    }

    #[test]
    fn a_new_connection_starts_a_new_interval() {
        let t0 = Instant::now();
        let mut w = StatsWindow::new();
        let on = |connection, sent_bytes| Sample {
            connection,
            sent_bytes,
            sent_packets: sent_bytes / 1000,
            ..Sample::default()
        };
        w.record(t0, on(1, 0));
        w.record(t0 + ms(1000), on(1, 500_000));
        // Counters restart on connection 2: no negative or huge rate.
        w.record(t0 + ms(1500), on(2, 1_000));
        assert_eq!(w.summary().rates.sent_bytes_per_s, 500_000.0);
        w.record(t0 + ms(2500), on(2, 101_000));
        assert_eq!(w.summary().rates.sent_bytes_per_s, 100_000.0);
    }
}
