//! Connection quality statistics from periodic samples of cumulative counters. No I/O: the
//! caller passes in each sample and its time.
//!
//! The driver samples every session's connection a few times a second (with its liveness
//! check). [`StatsWindow`] keeps, in a few hundred bytes:
//!
//! - the last [`RTT_SAMPLES`] smoothed RTT samples, for percentiles, and the smallest RTT ever;
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
    /// RTT samples in microseconds, a ring of at most [`RTT_SAMPLES`].
    rtts: Vec<u32>,
    next_rtt: usize,
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
            rtts: Vec::new(),
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
        if self.rtts.len() < RTT_SAMPLES {
            self.rtts.push(rtt_us);
        } else if let Some(slot) = self.rtts.get_mut(self.next_rtt) {
            *slot = rtt_us;
        }
        self.next_rtt = self.next_rtt.wrapping_add(1) % RTT_SAMPLES;
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
        let mut sorted = self.rtts.clone();
        sorted.sort_unstable();
        let percentile = |p: usize| -> Option<Duration> {
            let last = sorted.len().checked_sub(1)?;
            let index = last.saturating_mul(p).div_ceil(100);
            sorted
                .get(index)
                .map(|us| Duration::from_micros(u64::from(*us)))
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
        assert_eq!(s.rtt_p50, Some(ms(30)), "the window holds the last 64");
        assert_eq!(s.rtt_p99, Some(ms(90)));
        // Consecutive samples differ by 10 ms: jitter converges there, then the jump adds.
        assert!(s.jitter > ms(9) && s.jitter < ms(16), "{:?}", s.jitter);
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
