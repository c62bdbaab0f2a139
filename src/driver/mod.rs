//! The thin async driver: the only code that touches quinn and tokio I/O.
//!
//! It moves bytes between quinn streams and the [`protocol`](crate::protocol) core's state
//! machines, runs timers the core asks for, and never decides anything the core can decide.

pub(crate) mod client;
pub(crate) mod endpoint;
pub(crate) mod link;
pub(crate) mod server;
pub(crate) mod stream;
