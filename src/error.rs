//! Error types, one per operation. Each variant says whose fault it was: the configuration, the
//! network, the peer (a refusal or a violation), or the application (a value that does not fit).

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::protocol::{DecodeError, EncodeError, HandshakeStep, Reason};

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value out of range or inconsistent with another.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// rustls refused the certificate, key or protocol settings.
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// A certificate or key that could not be loaded, generated or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file is not valid PEM of the expected kind.
    #[error("{}: {detail}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// A certificate file holds no certificate.
    #[error("{}: no certificate found", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// Only one of the certificate and key files exists; generating would orphan the other.
    #[error("{} is missing while its pair exists; refusing to overwrite", missing.display())]
    Incomplete {
        /// The file that is missing.
        missing: PathBuf,
    },
    /// The operating system's random number generator failed while generating this.
    #[error("cannot generate {0}: the system's random number generator failed")]
    Randomness(String),
    /// rcgen failed to generate a certificate.
    #[error("certificate generation failed: {0}")]
    Generate(String),
    /// A server secret file is not one line of 64 hexadecimal digits.
    #[error(
        "{}: {detail} (restore the file, or delete it to generate a new secret; clients \
         connected under the old secret then notice the restart only at their dead-path \
         timeout)",
        path.display()
    )]
    Secret {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// A `known_hosts` file has a line that is not `host:port fingerprint`.
    #[error("{}: {detail}", path.display())]
    KnownHosts {
        /// The file.
        path: PathBuf,
        /// Which line, and what was wrong.
        detail: String,
    },
}

/// Starting a [`Server`](crate::Server) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The UDP socket could not be bound to the address to listen on.
    #[error(
        "cannot listen on {addr}: {source} (another program may hold that port: stop it, or \
         choose another address or port)"
    )]
    Bind {
        /// The address to listen on.
        addr: SocketAddr,
        /// What the operating system said.
        source: io::Error,
    },
    /// Setting up the socket or the QUIC endpoint failed.
    #[error("cannot start the server's socket: {0}")]
    Io(#[from] io::Error),
    /// The certificate for browsers could not be made.
    #[error(
        "cannot make the server's certificate for browsers: {0}; check the names in \
         WebTransportConfig::certificate (DNS names or IP addresses), or use \
         BrowserCertificate::Identity with a certificate from a CA browsers trust"
    )]
    BrowserCertificate(#[from] CertError),
}

/// [`Client::connect`](crate::Client::connect) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The client's UDP socket could not be bound to its local address
    /// ([`ClientConfig::bind`](crate::ClientConfig::bind), or any port).
    #[error("cannot bind the client's socket to {addr}: {source}")]
    Bind {
        /// The local address.
        addr: SocketAddr,
        /// What the operating system said.
        source: io::Error,
    },
    /// Setting up the socket or the QUIC endpoint failed.
    #[error("cannot start the client's socket: {0}")]
    Io(#[from] io::Error),
    /// quinn refused to start the connection (for example, an invalid server name).
    #[error("cannot start connection: {0}")]
    Start(#[from] quinn::ConnectError),
    /// No QUIC handshake with the server completed in time: nothing answered at that address
    /// and port, or every answer was lost.
    #[error(
        "nothing answered from {server} within {:.1} s (is the server running, at that address \
         and port? is UDP blocked on the way?)",
        waited.as_secs_f64()
    )]
    NoAnswer {
        /// The server as configured, with the addresses tried when it is a host name
        /// (`localhost:4433 ([::1]:4433, 127.0.0.1:4433)`).
        server: String,
        /// How long the client waited.
        waited: Duration,
    },
    /// The server's host name could not be resolved to an address.
    #[error("cannot find the server {host}: {source} (is the name right? is DNS reachable?)")]
    Resolve {
        /// The host name and port.
        host: String,
        /// What the resolver said.
        source: io::Error,
    },
    /// The server's certificate is not trusted: `problem` says why and what to do (a changed
    /// certificate under trust on first use names both fingerprints and the file to edit).
    #[error("the server's certificate was refused: {problem}")]
    Certificate {
        /// What was wrong, and what to do.
        problem: String,
    },
    /// The QUIC connection failed or was lost: protocol (ALPN) mismatch, a transport error,
    /// an idle timeout.
    #[error("connection failed: {0}")]
    Transport(quinn::ConnectionError),
    /// The server refused the handshake with `CONN_FAILED` (or closed with a reason).
    #[error("refused by server: {reason}: {message}")]
    Refused {
        /// The server's reason.
        reason: Reason,
        /// The server's detail text.
        message: String,
        /// The server's hint of when to try again, if it gave one (for example with
        /// [`Reason::ServerFull`], [`Reason::ServerBusy`], or an authenticator's temporary
        /// refusal).
        retry_after: Option<Duration>,
    },
    /// The handshake did not complete in time (deadline, or every `FEED_INIT` unanswered).
    #[error("handshake timed out {step}")]
    TimedOut {
        /// Where it stopped.
        step: HandshakeStep,
    },
    /// The server broke the protocol; the client closed the connection with `reason`.
    #[error("server violated the protocol: {reason}: {message}")]
    ServerViolation {
        /// The reason the client closed with.
        reason: Reason,
        /// Detail.
        message: String,
    },
}

pub use crate::protocol::Disconnect;

/// Sending a message failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The encoded message exceeds the peer's frame limit for this channel. Nothing was sent.
    #[error("message of {len} bytes exceeds the peer's limit of {max}")]
    TooLarge {
        /// Encoded frame body length.
        len: usize,
        /// The peer's limit.
        max: usize,
    },
    /// The value's `Serialize` implementation failed. Nothing was sent.
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The session has ended.
    #[error("session closed: {0}")]
    Closed(Disconnect),
    /// The channel's send budget is full: the peer is not taking messages as fast as they are
    /// sent (it stopped reading, or the path is slow). Nothing was sent. Returned by the calls
    /// that never wait (a broadcast, [`Sender::try_send`](crate::Sender::try_send)); `send`
    /// waits instead.
    #[error("the channel's send buffer is full: the peer is not keeping up; nothing was sent")]
    Blocked,
}

impl From<EncodeError> for SendError {
    fn from(e: EncodeError) -> Self {
        match e {
            EncodeError::TooLarge { len, max } => SendError::TooLarge { len, max },
            other => SendError::Encode(other.to_string()),
        }
    }
}

/// Receiving a message failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The session has ended.
    #[error("session closed: {0}")]
    Closed(Disconnect),
    /// A message arrived but does not decode as the requested type. The message is consumed and
    /// the session continues.
    #[error("cannot decode message: {0}")]
    Decode(DecodeError),
    /// The peer broke the protocol; this side closed the session with `reason`.
    #[error("peer violated the protocol: {reason}: {message}")]
    Violation {
        /// The reason this side closed with.
        reason: Reason,
        /// Detail.
        message: String,
    },
    /// After a resume, `missed` messages the peer sent on this channel could not be recovered
    /// (its replay buffer had overflowed during the outage). The next `recv` continues with the
    /// messages after them; resynchronise the application state if they mattered.
    #[error("{missed} messages lost while disconnected")]
    Gap {
        /// How many messages were lost.
        missed: u64,
    },
}
