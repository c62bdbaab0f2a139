//! The thin async driver: the only code that touches quinn and tokio I/O.
//!
//! It moves bytes between quinn streams and the [`protocol`](crate::protocol) core's state
//! machines, runs timers the core asks for, and never decides anything the core can decide.

pub(crate) mod client;
pub(crate) mod connection;
pub(crate) mod endpoint;
pub(crate) mod link;
pub(crate) mod server;
pub(crate) mod session;
pub(crate) mod stream;

use std::time::{Duration, Instant};

/// The instant now, from tokio's clock: every timer and timestamp of the library comes from
/// here, so a paused runtime (virtual time in tests and the simulator) drives them all.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The instant `timeout` from now. A timeout too long to represent (say `Duration::MAX`, meant
/// as "no timeout") is a year from now, never an instant in the past.
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    let now = now();
    now.checked_add(timeout.min(YEAR)).unwrap_or(now)
}
