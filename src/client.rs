//! [`Client`]: connect to a server and complete the handshake.

use crate::config::ClientConfig;
use crate::driver::client as driver;
use crate::error::ConnectError;
use crate::session::Session;

/// Connects to quicfeed servers.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use quicfeed::{Client, ClientConfig, Trust};
///
/// let trust = Trust::certificate_pem_file("certs/cert.pem")?;
/// let session = Client::connect(&ClientConfig::new(("localhost", 4433), trust)).await?;
/// session.main().send("hello").await?;
/// let reply: String = session.main().recv().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Client;

impl Client {
    /// Resolves `config.server` if it is a host name, opens a QUIC connection to it from a new
    /// local socket (racing its addresses, see [`ClientConfig::server`]), runs the three-step
    /// handshake, and returns the session once the server has answered `CONN_OK`. Everything,
    /// the name lookup included, happens within `config.handshake_timeout`.
    ///
    /// Fails with [`ConnectError::Resolve`] when the name does not resolve,
    /// [`ConnectError::NoAnswer`] when no QUIC handshake completes in time (nothing listening,
    /// UDP blocked), [`ConnectError::Certificate`] when the server's certificate is not trusted
    /// (with the reason and what to do), [`ConnectError::Refused`] when the server answers
    /// `CONN_FAILED`, [`ConnectError::TimedOut`] when the quicfeed handshake after QUIC's does
    /// not complete in time or every `FEED_INIT` attempt goes unanswered, and
    /// [`ConnectError::Transport`] when the QUIC connection fails otherwise. Must be called
    /// inside a tokio runtime.
    pub async fn connect(config: &ClientConfig) -> Result<Session, ConnectError> {
        driver::connect(config, None).await.map(Session::new)
    }

    /// Like [`connect`](Self::connect), from `socket` instead of a newly bound UDP socket
    /// (`config.bind` is then ignored): an in-memory network for a simulation or a test, a
    /// relay, or any transport that carries UDP-like datagrams (see
    /// [`quinn::AsyncUdpSocket`]). The session keeps using the socket for its resumes.
    pub async fn connect_with_socket(
        config: &ClientConfig,
        socket: std::sync::Arc<dyn quinn::AsyncUdpSocket>,
    ) -> Result<Session, ConnectError> {
        driver::connect(config, Some(socket))
            .await
            .map(Session::new)
    }
}
