//! Closing a QUIC connection with a reason, understanding why one ended, and finishing streams
//! gracefully.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use quinn::{ConnectionError, VarInt};

use super::stream::FrameWriter;
use crate::error::Disconnect;
use crate::protocol::{MAX_FAILURE_MESSAGE, Reason};

/// How long a closing session waits for the peer to acknowledge what was sent last.
pub(crate) const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Closes a connection with a reason and remembers the reason (the first close wins, as in
/// QUIC), so that the side that closed can report it.
#[derive(Debug, Clone)]
pub(crate) struct Closer {
    conn: quinn::Connection,
    record: Arc<OnceLock<(Reason, String)>>,
}

impl Closer {
    pub(crate) fn new(conn: quinn::Connection) -> Self {
        Closer {
            conn,
            record: Arc::new(OnceLock::new()),
        }
    }

    /// Closes the connection with `reason` as the QUIC application error code.
    pub(crate) fn close(&self, reason: Reason, message: &str) {
        let message = truncate(message);
        if self.record.set((reason, message.to_owned())).is_ok() {
            self.conn
                .close(VarInt::from(reason.code()), message.as_bytes());
        }
    }
}

/// Why a connection ended, as the peer (or the network) ended it.
pub(crate) fn disconnect_from_peer(error: &ConnectionError) -> Disconnect {
    match error {
        ConnectionError::ApplicationClosed(close) => {
            match u16::try_from(close.error_code.into_inner()) {
                Ok(code) => {
                    let reason = Reason::from_code(code);
                    let message = String::from_utf8_lossy(&close.reason).into_owned();
                    Disconnect::ByPeer {
                        reason,
                        message: if message.is_empty() {
                            reason.describe().to_owned()
                        } else {
                            message
                        },
                    }
                }
                Err(_) => Disconnect::Transport(error.to_string()),
            }
        }
        ConnectionError::TimedOut => Disconnect::TimedOut,
        ConnectionError::Reset => Disconnect::Reset,
        ConnectionError::LocallyClosed => Disconnect::Locally {
            reason: Reason::Normal,
            message: String::new(),
        },
        other => Disconnect::Transport(other.to_string()),
    }
}

/// Cuts a close message to the protocol's limit at a character boundary.
pub(crate) fn truncate(message: &str) -> &str {
    crate::protocol::codec::truncate_utf8(message, MAX_FAILURE_MESSAGE)
}

/// Lets a client's endpoint send its close and drain, for at most [`CLOSE_LINGER`]. (A server's
/// endpoint is shared by every connection; it drains in `Server::shutdown`.)
pub(crate) async fn drain(endpoint: &quinn::Endpoint) {
    let _ = tokio::time::timeout(CLOSE_LINGER, endpoint.wait_idle()).await;
}

/// Flushes and finishes every writer, then waits until the peer has acknowledged all of them,
/// for at most `linger` in all.
pub(crate) async fn finish_all(writers: impl IntoIterator<Item = FrameWriter>, linger: Duration) {
    let mut writers: Vec<FrameWriter> = writers.into_iter().collect();
    let _ = tokio::time::timeout(linger, async {
        for writer in &mut writers {
            let _ = writer.flush().await;
            writer.finish();
        }
        for writer in &mut writers {
            writer.acknowledged().await;
        }
    })
    .await;
}
