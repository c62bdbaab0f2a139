//! A session's QUIC connection: closing with a reason, and why it ended.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use quinn::{ConnectionError, VarInt};

use crate::error::Disconnect;
use crate::protocol::{MAX_FAILURE_MESSAGE, Reason};

/// A shared handle to a session's connection. When the last handle is dropped the connection
/// is closed with [`Reason::Normal`].
#[derive(Debug, Clone)]
pub(crate) struct Link {
    inner: Arc<LinkInner>,
}

#[derive(Debug)]
struct LinkInner {
    conn: quinn::Connection,
    /// A client's own endpoint, kept alive as long as its session.
    _endpoint: Option<quinn::Endpoint>,
    /// The reason this side closed with, reported as [`Disconnect::Locally`].
    local_close: OnceLock<(Reason, String)>,
}

impl Drop for LinkInner {
    fn drop(&mut self) {
        close(&self.conn, &self.local_close, Reason::Normal, "");
    }
}

impl Link {
    pub(crate) fn new(conn: quinn::Connection, endpoint: Option<quinn::Endpoint>) -> Self {
        Link {
            inner: Arc::new(LinkInner {
                conn,
                _endpoint: endpoint,
                local_close: OnceLock::new(),
            }),
        }
    }

    pub(crate) fn connection(&self) -> &quinn::Connection {
        &self.inner.conn
    }

    pub(crate) fn remote_address(&self) -> SocketAddr {
        self.inner.conn.remote_address()
    }

    pub(crate) fn rtt(&self) -> Duration {
        self.inner.conn.rtt()
    }

    /// Closes the connection with `reason` as the QUIC application error code.
    pub(crate) fn close(&self, reason: Reason, message: &str) {
        close(&self.inner.conn, &self.inner.local_close, reason, message);
    }

    /// Waits for the connection to end and says why.
    pub(crate) async fn closed(&self) -> Disconnect {
        let error = self.inner.conn.closed().await;
        self.disconnect(&error)
    }

    /// Why the connection ended, from quinn's error.
    pub(crate) fn disconnect(&self, error: &ConnectionError) -> Disconnect {
        match error {
            ConnectionError::LocallyClosed => {
                let (reason, message) = self
                    .inner
                    .local_close
                    .get()
                    .cloned()
                    .unwrap_or((Reason::Normal, String::new()));
                Disconnect::Locally { reason, message }
            }
            other => disconnect_from_peer(other),
        }
    }
}

/// Closes `conn` with `reason`, remembering it in `record` (first close wins, as in QUIC).
fn close(
    conn: &quinn::Connection,
    record: &OnceLock<(Reason, String)>,
    reason: Reason,
    message: &str,
) {
    let message = truncate(message);
    if record.set((reason, message.to_owned())).is_ok() {
        conn.close(VarInt::from(reason.code()), message.as_bytes());
    }
}

/// Why a connection ended, for errors that do not depend on what this side did.
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
    let mut end = message.len().min(MAX_FAILURE_MESSAGE);
    while !message.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    message.get(..end).unwrap_or_default()
}
