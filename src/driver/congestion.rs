//! Congestion control with a floor: quinn's Cubic, whose window never drops below a set size.
//!
//! A game's traffic is application-limited: a few hundred bytes a tick. Cubic grows its window
//! only while the sender fills it, so such a flow never regrows the window after a loss halves
//! it, and a few bursts leave it at the two-packet minimum of RFC 9002. There, one lost packet
//! still counted in flight blocks every later one until a probe timeout (tens of milliseconds):
//! lane datagrams, which are only worth sending now, wait behind it. The floor keeps the window
//! at least the size a new connection starts with, so a flow this small is never held back by
//! losses it did not cause, while a flow that fills its window is still controlled by Cubic
//! above the floor. See `TransportConfig::min_congestion_window`.

use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics, CubicConfig};
use quinn_proto::RttEstimator;

/// Builds a [`Floored`] Cubic controller for each connection.
#[derive(Debug)]
pub(crate) struct FlooredCubic {
    cubic: Arc<CubicConfig>,
    floor: u64,
}

impl FlooredCubic {
    /// Cubic with its defaults, never below `floor` bytes.
    pub(crate) fn new(floor: u64) -> Self {
        FlooredCubic {
            cubic: Arc::new(CubicConfig::default()),
            floor,
        }
    }
}

impl ControllerFactory for FlooredCubic {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Floored {
            inner: self.cubic.clone().build(now, current_mtu),
            floor: self.floor,
        })
    }
}

/// A controller whose window is the larger of its inner controller's and a floor.
struct Floored {
    inner: Box<dyn Controller>,
    floor: u64,
}

impl Controller for Floored {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.inner
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.inner.window().max(self.floor)
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut metrics = self.inner.metrics();
        metrics.congestion_window = self.window();
        metrics
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Floored {
            inner: self.inner.clone_box(),
            floor: self.floor,
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window().max(self.floor)
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}
