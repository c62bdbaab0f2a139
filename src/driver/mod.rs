//! The thin async driver: the only code that touches quinn and tokio I/O.
//!
//! It moves bytes between quinn streams and the [`protocol`](crate::protocol) core's state
//! machines, runs timers the core asks for, and never decides anything the core can decide.

pub(crate) mod client;
pub(crate) mod endpoint;
pub(crate) mod link;
pub(crate) mod server;
pub(crate) mod session;
pub(crate) mod stream;

use std::time::{Duration, Instant};

/// The instant `timeout` from now. A timeout too long to represent (say `Duration::MAX`, meant
/// as "no timeout") is a year from now, never an instant in the past.
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    let now = Instant::now();
    now.checked_add(timeout.min(YEAR)).unwrap_or(now)
}
