//! A session's QUIC connection: closing with a reason, and why it ended.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use super::stream::{FrameReader, FrameWriter};

use quinn::{ConnectionError, VarInt};

use crate::error::Disconnect;
use crate::protocol::{MAX_FAILURE_MESSAGE, Reason};

/// How long a closing session waits for the peer to acknowledge what was sent last.
pub(crate) const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// A shared handle to a session's connection.
///
/// Every part of a session holds one. A part that is dropped while the session lives parks its
/// stream here, untouched, so the peer sees nothing; when the last handle goes, the session
/// closes gracefully: parked send streams are finished, the peer's acknowledgement awaited (at
/// most [`CLOSE_LINGER`]), then the connection is closed with [`Reason::Normal`].
#[derive(Debug, Clone)]
pub(crate) struct Link {
    inner: Arc<LinkInner>,
}

#[derive(Debug)]
struct LinkInner {
    closer: Closer,
    /// A client's own endpoint, kept alive as long as its session.
    endpoint: Option<quinn::Endpoint>,
    parked: Mutex<Parked>,
}

/// Stream halves whose owners were dropped while the session lived.
#[derive(Debug, Default)]
struct Parked {
    writers: Vec<FrameWriter>,
    readers: Vec<FrameReader>,
}

impl Drop for LinkInner {
    fn drop(&mut self) {
        let parked = std::mem::take(
            self.parked
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let closer = self.closer.clone();
        let runtime = tokio::runtime::Handle::try_current();
        match runtime {
            Ok(runtime) if !parked.writers.is_empty() && !closer.is_closed() => {
                let endpoint = self.endpoint.take();
                runtime.spawn(async move {
                    finish_all(parked.writers, CLOSE_LINGER).await;
                    closer.close(Reason::Normal, "");
                    // Dropping readers before the close would send STOP_SENDING to the peer.
                    drop(parked.readers);
                    drain(endpoint.as_ref()).await;
                });
            }
            _ => closer.close(Reason::Normal, ""),
        }
    }
}

/// Lets a client's endpoint send its close and drain, for at most [`CLOSE_LINGER`]. (A server's
/// endpoint is shared by every connection; it drains in `Server::shutdown`.)
async fn drain(endpoint: Option<&quinn::Endpoint>) {
    if let Some(endpoint) = endpoint {
        let _ = tokio::time::timeout(CLOSE_LINGER, endpoint.wait_idle()).await;
    }
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

impl Link {
    /// A link over `closer`'s connection; `endpoint` is a client's own, kept alive with it.
    pub(crate) fn new(closer: Closer, endpoint: Option<quinn::Endpoint>) -> Self {
        Link {
            inner: Arc::new(LinkInner {
                closer,
                endpoint,
                parked: Mutex::new(Parked::default()),
            }),
        }
    }

    /// Keeps a send stream whose owner was dropped until the session ends.
    pub(crate) fn park_writer(&self, writer: FrameWriter) {
        self.parked().writers.push(writer);
    }

    /// Keeps a receive stream whose owner was dropped until the session ends.
    pub(crate) fn park_reader(&self, reader: FrameReader) {
        self.parked().readers.push(reader);
    }

    fn parked(&self) -> std::sync::MutexGuard<'_, Parked> {
        self.inner
            .parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn connection(&self) -> &quinn::Connection {
        &self.inner.closer.conn
    }

    pub(crate) fn remote_address(&self) -> SocketAddr {
        self.connection().remote_address()
    }

    pub(crate) fn rtt(&self) -> Duration {
        self.connection().rtt()
    }

    /// Closes the connection with `reason` as the QUIC application error code.
    pub(crate) fn close(&self, reason: Reason, message: &str) {
        self.inner.closer.close(reason, message);
    }

    /// Waits for the connection to end and says why. On a client that closed it, also waits
    /// (at most [`CLOSE_LINGER`]) until the close has gone out, so that a program may exit
    /// right after.
    pub(crate) async fn closed(&self) -> Disconnect {
        let why = self.inner.closer.closed().await;
        if matches!(why, Disconnect::Locally { .. }) {
            drain(self.inner.endpoint.as_ref()).await;
        }
        why
    }

    /// Why the connection ended, from quinn's error.
    pub(crate) fn disconnect(&self, error: &ConnectionError) -> Disconnect {
        self.inner.closer.disconnect(error)
    }
}

/// Closes a connection with a reason and remembers the reason, without keeping the session
/// alive: the server's connection task holds one to close a session on shutdown.
#[derive(Debug, Clone)]
pub(crate) struct Closer {
    conn: quinn::Connection,
    /// The reason this side closed with, reported as [`Disconnect::Locally`]. The first close
    /// wins, as in QUIC.
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

    /// Waits for the connection to end and says why.
    pub(crate) async fn closed(&self) -> Disconnect {
        let error = self.conn.closed().await;
        self.disconnect(&error)
    }

    /// Whether the connection has ended, or this side has closed it.
    pub(crate) fn is_closed(&self) -> bool {
        self.record.get().is_some() || self.conn.close_reason().is_some()
    }

    fn disconnect(&self, error: &ConnectionError) -> Disconnect {
        match error {
            ConnectionError::LocallyClosed => {
                let (reason, message) = self
                    .record
                    .get()
                    .cloned()
                    .unwrap_or((Reason::Normal, String::new()));
                Disconnect::Locally { reason, message }
            }
            other => disconnect_from_peer(other),
        }
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
    crate::protocol::codec::truncate_utf8(message, MAX_FAILURE_MESSAGE)
}
