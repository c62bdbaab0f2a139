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
    /// Opens a QUIC connection to `config.server` from a new local socket, runs the three-step
    /// handshake, and returns the session once the server has answered `CONN_OK`.
    ///
    /// Fails with [`ConnectError::Refused`] when the server answers `CONN_FAILED`, with
    /// [`ConnectError::TimedOut`] when the handshake does not complete within
    /// `config.handshake_timeout` or every `FEED_INIT` attempt goes unanswered, and with
    /// [`ConnectError::Transport`] when the QUIC connection itself fails (unreachable server,
    /// untrusted certificate). Must be called inside a tokio runtime.
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
