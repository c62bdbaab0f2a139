//! Connection quality statistics, per session and server-wide.
//!
//! ```no_run
//! # async fn run(session: quicfeed::Session, server: quicfeed::Server) {
//! let stats = session.handle().stats();
//! if let (Some(rtt), Some(p99)) = (stats.rtt, stats.rtt_p99) {
//!     println!("rtt {rtt:?} (p99 {p99:?}), jitter {:?}, loss {:.1} %", stats.jitter, stats.loss_rate * 100.0);
//! }
//! let all = server.stats();
//! println!("{} sessions, {:.0} B/s out", all.sessions, all.sent_bytes_per_s);
//! # }
//! ```
//!
//! Statistics are sampled from QUIC with the session's liveness check (about nine times a
//! second by default); rates cover the last one to two seconds, RTT percentiles the last 64
//! samples (about seven seconds), each kept to within 0.05 % (exactly below 2 ms). [`TransportConfig::stats_log_interval`] also logs them
//! periodically through `tracing` (target `quicfeed::stats`).
//!
//! [`TransportConfig::stats_log_interval`]: crate::TransportConfig::stats_log_interval

use std::time::Duration;

use crate::events::{ServerCounters, SessionCounters};

/// One session's connection quality. RTT figures are `None` while the session has never had
/// a sample (just connected) .
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct SessionStats {
    /// QUIC's smoothed RTT estimate, at the last sample.
    pub rtt: Option<Duration>,
    /// The smallest RTT sampled in the session.
    pub min_rtt: Option<Duration>,
    /// Median of the recent RTT samples.
    pub rtt_p50: Option<Duration>,
    /// 99th percentile of the recent RTT samples.
    pub rtt_p99: Option<Duration>,
    /// Mean deviation between consecutive RTT samples (smoothed, as RFC 3550's jitter).
    pub jitter: Duration,
    /// Packets declared lost out of packets sent, over the last interval (0.0 to 1.0).
    pub loss_rate: f64,
    /// UDP bytes per second sent.
    pub sent_bytes_per_s: f64,
    /// UDP bytes per second received.
    pub received_bytes_per_s: f64,
    /// Application messages per second sent (channels and lane).
    pub sent_messages_per_s: f64,
    /// Application messages per second delivered (channels and lane).
    pub received_messages_per_s: f64,
    /// QUIC's congestion window, in bytes.
    pub congestion_window: u64,
    /// Migrations, lost connections, resumes, datagram counts.
    pub counters: SessionCounters,
}

/// What one channel of a session holds in memory right now, in payload bytes. SECURITY.md
/// gives the bounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelBuffers {
    /// Messages sent and not yet written to the connection. A send waits while this is at
    /// [`TransportConfig::send_buffer`](crate::TransportConfig::send_buffer); right after a
    /// resume it also holds the replay, so it is at most `unacknowledged`.
    pub unsent: usize,
    /// Messages kept for a replay: sent and not yet acknowledged by the peer's session (the
    /// unsent ones included). At most
    /// [`TransportConfig::replay_buffer`](crate::TransportConfig::replay_buffer) plus one
    /// message; the oldest give way beyond it.
    pub unacknowledged: usize,
    /// Messages received and not yet read by the application: at most
    /// [`TransportConfig::receive_buffer`](crate::TransportConfig::receive_buffer) plus one
    /// message (the channel's stream is not read beyond it).
    pub unread: usize,
}

/// What a session holds in memory right now: both channels, and the lane's unread datagrams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionBuffers {
    /// The main channel.
    pub main: ChannelBuffers,
    /// The feed channel.
    pub feed: ChannelBuffers,
    /// Lane payload bytes received and not yet read: at most
    /// [`TransportConfig::datagram_receive_buffer`](crate::TransportConfig::datagram_receive_buffer)
    /// plus one datagram.
    pub lane_unread: usize,
}

/// A server's statistics over its established sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Established sessions.
    pub sessions: usize,
    /// Median of the sessions' smoothed RTTs.
    pub rtt_p50: Option<Duration>,
    /// 99th percentile of the sessions' smoothed RTTs.
    pub rtt_p99: Option<Duration>,
    /// Packets lost out of packets sent, over all sessions (weighted by what each sent).
    pub loss_rate: f64,
    /// UDP bytes per second sent, all sessions.
    pub sent_bytes_per_s: f64,
    /// UDP bytes per second received, all sessions.
    pub received_bytes_per_s: f64,
    /// Application messages per second sent, all sessions.
    pub sent_messages_per_s: f64,
    /// Application messages per second delivered, all sessions.
    pub received_messages_per_s: f64,
    /// Counts since the server started.
    pub counters: ServerCounters,
}

impl ServerStats {
    /// Aggregates the sessions' statistics.
    pub(crate) fn over(sessions: &[SessionStats], counters: ServerCounters) -> ServerStats {
        let mut rtts: Vec<Duration> = sessions.iter().filter_map(|s| s.rtt).collect();
        rtts.sort_unstable();
        let percentile = |p: usize| {
            let last = rtts.len().checked_sub(1)?;
            rtts.get(last.saturating_mul(p).div_ceil(100)).copied()
        };
        // Folded from +0.0: `Iterator::sum` of no floats is -0.0, printed as "-0.0".
        let sum = |f: fn(&SessionStats) -> f64| sessions.iter().map(f).fold(0.0, |a, b| a + b);
        let sent = sum(|s| s.sent_bytes_per_s);
        let lost_weighted = sum(|s| s.loss_rate * s.sent_bytes_per_s);
        ServerStats {
            sessions: sessions.len(),
            rtt_p50: percentile(50),
            rtt_p99: percentile(99),
            loss_rate: if sent > 0.0 {
                lost_weighted / sent
            } else {
                0.0
            },
            sent_bytes_per_s: sent,
            received_bytes_per_s: sum(|s| s.received_bytes_per_s),
            sent_messages_per_s: sum(|s| s.sent_messages_per_s),
            received_messages_per_s: sum(|s| s.received_messages_per_s),
            counters,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_without_sessions_reports_zero_rates_not_minus_zero() {
        let stats = ServerStats::over(&[], ServerCounters::default());
        for rate in [
            stats.loss_rate,
            stats.sent_bytes_per_s,
            stats.received_bytes_per_s,
            stats.sent_messages_per_s,
            stats.received_messages_per_s,
        ] {
            assert_eq!(rate.to_bits(), 0.0f64.to_bits(), "{rate:?}");
            assert_eq!(format!("{rate:.1}"), "0.0");
        }
    }
}
