//! The thin async driver: the only code that touches quinn and tokio I/O.
//!
//! It moves bytes between quinn streams and the [`protocol`](crate::protocol) core's state
//! machines, runs timers the core asks for, and never decides anything the core can decide.

pub(crate) mod client;
pub(crate) mod congestion;
pub(crate) mod connection;
pub(crate) mod endpoint;
pub(crate) mod link;
pub(crate) mod server;
pub(crate) mod session;
pub(crate) mod stream;
pub(crate) mod webtransport;

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

/// The proof of `credential` for a `RESUME` of `player_id`'s session on `conn` (PROTOCOL.md
/// §7.2): the first 16 bytes of the connection's TLS exporter for the resume label and
/// context. `None` before the connection's TLS handshake has completed (there is no exporter
/// secret yet), which is why a `RESUME` never goes in 0-RTT.
pub(crate) fn resume_proof(
    conn: &quinn::Connection,
    credential: &crate::protocol::Token,
    player_id: crate::protocol::PlayerId,
) -> Option<crate::protocol::Token> {
    let mut proof = [0u8; crate::protocol::TOKEN_LEN];
    let context = crate::protocol::resume_proof_context(credential, player_id);
    conn.export_keying_material(&mut proof, crate::protocol::RESUME_PROOF_LABEL, &context)
        .ok()?;
    Some(crate::protocol::Token(proof))
}
