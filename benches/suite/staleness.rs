//! Feed staleness under loss: the reliable feed stream against the feed datagram lane, side by
//! side on one connection through the network conditioner (20 ms RTT, 10 ms each way).
//!
//! The server sends a 200-byte snapshot at 60 Hz, the same one on the feed stream and on the
//! lane (so both see the same packet losses). The client records when each arrives:
//!
//! - delivery: the share of snapshots delivered (the stream delivers all, late; the lane drops
//!   lost ones);
//! - one-way delay of delivered snapshots, p50 and p99;
//! - **staleness**: the age of the newest snapshot the client holds, sampled every millisecond
//!   (what a game renders from), p50 / p99 / max, against the one-way floor of 10 ms.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use quicfeed::conditioner::{Conditions, Loss};
use quicfeed::{Client, ClientConfig};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::time::Instant;

use crate::common::{Rig, percentile, rig};
use crate::report::{Section, ms};

const ONE_WAY: Duration = Duration::from_millis(10);
const TICK: Duration = Duration::from_micros(16_667);

#[derive(Serialize, Deserialize)]
struct Snapshot {
    seq: u64,
    /// Microseconds since the run's epoch when the server sent it.
    sent_us: u64,
    entities: Vec<u8>,
}

/// When each snapshot (by sequence number) arrived, in microseconds since the epoch.
type Arrivals = Arc<Mutex<Vec<(u64, u64, u64)>>>;

struct Figures {
    delivered: f64,
    delay_p50: f64,
    delay_p99: f64,
    stale_p50: f64,
    stale_p99: f64,
    stale_max: f64,
}

/// Figures from the arrivals `(seq, sent_us, arrived_us)` of `sent` snapshots sent between
/// `from_us` and `to_us`.
fn figures(arrivals: &[(u64, u64, u64)], sent: u64, from_us: u64, to_us: u64) -> Figures {
    let mut delays: Vec<f64> = arrivals
        .iter()
        .map(|(_, s, a)| (a - s) as f64 / 1000.0)
        .collect();
    delays.sort_by(f64::total_cmp);
    // Staleness: at each millisecond, the age of the newest snapshot received so far.
    let mut by_arrival = arrivals.to_vec();
    by_arrival.sort_by_key(|(_, _, a)| *a);
    let mut stale = Vec::new();
    let mut next = 0;
    let mut newest: Option<(u64, u64)> = None;
    let mut t = from_us;
    while t < to_us {
        while next < by_arrival.len() && by_arrival[next].2 <= t {
            let (seq, sent_us, _) = by_arrival[next];
            if newest.is_none_or(|(s, _)| seq > s) {
                newest = Some((seq, sent_us));
            }
            next += 1;
        }
        if let Some((_, sent_us)) = newest {
            stale.push((t - sent_us) as f64 / 1000.0);
        }
        t += 1000;
    }
    stale.sort_by(f64::total_cmp);
    Figures {
        delivered: arrivals.len() as f64 / sent as f64,
        delay_p50: percentile(&delays, 0.5),
        delay_p99: percentile(&delays, 0.99),
        stale_p50: percentile(&stale, 0.5),
        stale_p99: percentile(&stale, 0.99),
        stale_max: stale.last().copied().unwrap_or(f64::NAN),
    }
}

/// What the relay added itself in the server-to-client direction: the share of delivered
/// packets it delivered 5 ms or more past their time, and its worst.
struct RelayNoise {
    late_5ms: f64,
    late_max_ms: f64,
    /// The server's congestion window, sampled every tick: smallest and median, in bytes.
    cwnd_min: u64,
    cwnd_p50: u64,
}

async fn measure(loss: Loss, seconds: u64, seed: u64) -> (Figures, Figures, RelayNoise) {
    let link = Conditions {
        latency: ONE_WAY,
        loss,
        ..Conditions::default()
    };
    let Rig {
        server,
        relay,
        trust,
    } = rig(link, seed).await;
    let client = Client::connect(&ClientConfig::new(relay.local_addr(), trust))
        .await
        .expect("connect");
    let server_side = server.accept().await.expect("session");
    let epoch = Instant::now();
    let now_us = move || epoch.elapsed().as_micros() as u64;

    let (stream_arrivals, lane_arrivals): (Arrivals, Arrivals) = Default::default();
    let client_lane = client.lane();
    let lane_reader = tokio::spawn({
        let arrivals = lane_arrivals.clone();
        async move {
            while let Ok(s) = client_lane.recv::<Snapshot>().await {
                arrivals
                    .lock()
                    .expect("lock")
                    .push((s.seq, s.sent_us, now_us()));
            }
        }
    });
    let (client_handle, _client_main, feed) = client.into_parts();
    let stream_reader = tokio::spawn({
        let arrivals = stream_arrivals.clone();
        async move {
            let (_, feed) = feed.split();
            while let Ok(s) = feed.recv::<Snapshot>().await {
                arrivals
                    .lock()
                    .expect("lock")
                    .push((s.seq, s.sent_us, now_us()));
            }
        }
    });

    let (handle, _main, feed) = server_side.into_parts();
    let (feed_tx, _) = feed.split();
    let lane = handle.lane();
    let mut ticker = tokio::time::interval(TICK);
    let start_us = now_us();
    let total = seconds * 60;
    let mut cwnd = Vec::with_capacity(total as usize);
    for seq in 0..total {
        ticker.tick().await;
        cwnd.push(handle.stats().congestion_window);
        let snapshot = Snapshot {
            seq,
            sent_us: now_us(),
            entities: vec![7; 180],
        };
        lane.send(&snapshot).expect("lane send");
        feed_tx.send(&snapshot).await.expect("feed send");
    }
    let end_us = now_us();
    // Let the stream's retransmissions land.
    tokio::time::sleep(Duration::from_secs(1)).await;
    lane_reader.abort();
    stream_reader.abort();
    drop(client_handle);
    let to_client = relay.stats().to_client;
    // The first ticks come before the first statistics sample.
    cwnd.retain(|c| *c > 0);
    cwnd.sort_unstable();
    let noise = RelayNoise {
        cwnd_min: cwnd.first().copied().unwrap_or(0),
        cwnd_p50: cwnd.get(cwnd.len() / 2).copied().unwrap_or(0),
        late_5ms: to_client.late_5ms as f64 / to_client.delivered.max(1) as f64,
        late_max_ms: to_client.late_max.as_secs_f64() * 1e3,
    };
    let stream = stream_arrivals.lock().expect("lock").clone();
    let lane = lane_arrivals.lock().expect("lock").clone();
    (
        figures(&stream, total, start_us + 100_000, end_us),
        figures(&lane, total, start_us + 100_000, end_us),
        noise,
    )
}

pub(crate) async fn run(quick: bool) -> Section {
    let seconds = if quick { 2 } else { 20 };
    let floor = ONE_WAY.as_secs_f64() * 1e3;
    let patterns: Vec<(&str, Loss)> = if quick {
        vec![("2 % bursty (mean burst 3)", Loss::bursty(0.02, 3.0))]
    } else {
        vec![
            ("none", Loss::None),
            ("2 % random", Loss::Random(0.02)),
            ("2 % bursty (mean burst 3)", Loss::bursty(0.02, 3.0)),
            ("5 % random", Loss::Random(0.05)),
        ]
    };
    let mut section = Section::new(
        "Feed staleness under loss (20 ms RTT)",
        &format!(
            "A 200-byte snapshot at 60 Hz for {seconds} s per loss pattern, the same one on the \
             reliable feed stream and on the feed datagram lane of one connection (both see the \
             same losses), through the conditioner at 10 ms each way: the one-way floor is \
             {floor:.0} ms. Delay: send to delivery of each delivered snapshot. Staleness: the \
             age of the newest snapshot the client holds, sampled every millisecond (it includes \
             the 16.7 ms tick). Relay late: the share of the relay's server-to-client packets \
             it delivered itself 5 ms or more past their time (its timers and this machine's \
             scheduling), and its worst: delays within that noise are the machine's, not the \
             transport's. Cwnd: the server's congestion window, sampled every tick."
        ),
        &[
            "loss",
            "feed",
            "delivered",
            "delay p50",
            "delay p99",
            "p99 over floor",
            "staleness p50",
            "staleness p99",
            "staleness max",
            "relay late ≥ 5 ms (max)",
            "cwnd p50 (min)",
        ],
    );
    let mut figures = Vec::new();
    let mut no_loss_lane_p99 = None;
    for (i, (name, loss)) in patterns.into_iter().enumerate() {
        let (stream, lane, noise) = measure(loss, seconds, 11 + i as u64).await;
        let relay_late = format!(
            "{:.2} % ({:.1} ms)",
            noise.late_5ms * 100.0,
            noise.late_max_ms
        );
        let cwnd = format!(
            "{:.1} kB ({:.1})",
            noise.cwnd_p50 as f64 / 1e3,
            noise.cwnd_min as f64 / 1e3
        );
        for (which, f) in [("reliable stream", &stream), ("datagram lane", &lane)] {
            section.row(vec![
                name.to_owned(),
                which.to_owned(),
                format!("{:.1} %", f.delivered * 100.0),
                ms(f.delay_p50),
                ms(f.delay_p99),
                format!("+{:.1} ms", f.delay_p99 - floor),
                ms(f.stale_p50),
                ms(f.stale_p99),
                ms(f.stale_max),
                relay_late.clone(),
                cwnd.clone(),
            ]);
            figures.push(json!({
                "loss": name, "feed": which, "delivered": f.delivered,
                "delay_p50_ms": f.delay_p50, "delay_p99_ms": f.delay_p99,
                "staleness_p50_ms": f.stale_p50, "staleness_p99_ms": f.stale_p99,
                "staleness_max_ms": f.stale_max,
                "relay_late_5ms_share": noise.late_5ms, "relay_late_max_ms": noise.late_max_ms,
                "cwnd_p50_bytes": noise.cwnd_p50, "cwnd_min_bytes": noise.cwnd_min,
            }));
        }
        if name.starts_with("2 % bursty") {
            section.target(
                "datagram-lane feed p99 under 2 % (bursty) loss",
                format!(
                    "{} (floor + {:.1} ms)",
                    ms(lane.delay_p99),
                    lane.delay_p99 - floor
                ),
                "<= floor + 5 ms",
                lane.delay_p99 <= floor + 5.0,
            );
            // The same figure against this round's no-loss lane: what the losses add, with
            // the machine's own noise (in both) cancelled out.
            if let Some(base) = no_loss_lane_p99 {
                let added = lane.delay_p99 - base;
                section.target(
                    "datagram-lane p99 under 2 % (bursty) loss over the same round's no-loss p99",
                    format!("{added:+.1} ms"),
                    "<= +5 ms",
                    added <= 5.0,
                );
            }
        }
        if name == "none" {
            no_loss_lane_p99 = Some(lane.delay_p99);
        }
    }
    section.figures = json!({"one_way_floor_ms": floor, "rows": figures});
    section
}
