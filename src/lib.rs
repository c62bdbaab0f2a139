//! # quicfeed
//!
//! A low-latency, secure client/server transport for online games over QUIC.
//!
//! Each player's session has two channels, `main` (control and request/response) and `feed`
//! (the game state stream), carried as two QUIC streams on one QUIC connection, so a slow feed
//! never holds up main and one congestion controller serves both. A three-step token handshake
//! binds both channels to the player before any application data flows:
//!
//! ```text
//!   client                                   server
//!     |  QUIC + TLS 1.3 handshake (ALPN quicfeed/1)   |
//!     |==============================================|
//!     |-- main: CONN_INIT [credentials] ------------>|  authenticator admits, assigns player ID
//!     |<- main: CONN_INIT_REPLY [player ID, token A] |
//!     |-- feed: FEED_INIT [player ID, token A] ----->|  (retried if no reply in time)
//!     |<- feed: FEED_INIT_REPLY [token B] -----------|
//!     |-- main: FINAL_AUTH [token B] --------------->|
//!     |<- main: CONN_OK -----------------------------|  session established
//!     |<=== main & feed: application messages ======>|
//! ```
//!
//! Any refusal is a `CONN_FAILED` with a [`Reason`], followed by a QUIC close carrying the same
//! code. `PROTOCOL.md` specifies the wire format byte for byte.
//!
//! A session outlives its connections. A client whose address changes keeps its connection by
//! QUIC migration; one whose connection is lost (nothing heard for the dead-path timeout) resumes
//! the session on a new connection with `RESUME`, which proves it holds the single-use
//! credential of the last `CONN_OK` with a value bound to the new connection's TLS keys.
//! Messages are numbered per channel and kept until the peer acknowledges them, so after a
//! resume each side replays what the other missed: every message arrives exactly once, in
//! order, or a gap is reported.
//!
//! ## Layout
//!
//! Dependencies run one way: facades → driver server and client → driver session and
//! connection → link and stream → protocol core. No module imports one above it.
//!
//! - `protocol`: the pure core (public but hidden from these docs and outside semver: it is there
//!   for the fuzz targets, the raw-peer tests and tools that speak the wire protocol; the types the
//!   API uses are re-exported at the top). Messages, framing codec, tokens, the client and server
//!   handshake (and resume) state machines, the session registry with its resume credentials,
//!   admission of connection attempts (Retry, caps, eviction of the oldest handshake), and
//!   `protocol::session`, the established session's machine: per channel the outbound queue with
//!   its replay buffer and send budget, the delivery queue, acknowledgements (in-band and by
//!   datagram), the replay plan of a new connection, the dead-path rule, the graceful close, the
//!   grace period, and which connection endings keep the session. Under it, `protocol::reliability`
//!   (sequence numbers, acknowledgements, replay buffers, gaps), `protocol::lane` (the datagram
//!   formats, the newest-wins receiver and the drop-not-delay outbox) and `protocol::stats` (RTT
//!   percentiles, jitter, loss and rates from samples). No I/O, no clock, no tokio or quinn: time
//!   is passed in, so it is tested with virtual time.
//! - `driver`: the thin async layer, the only code touching quinn. `link` is the connection as the
//!   session needs it (two streams, datagrams, its end), implemented for quinn, and in
//!   `webtransport` for a browser's WebTransport session (`wtransport`, on the same endpoint,
//!   chosen by ALPN); `stream` frames bytes on its streams; `congestion` is quinn's Cubic with a
//!   window floor; `session` holds a session's machine behind one lock (never held across an
//!   `.await`) with the wake-ups between it and the application, and states the lock rule;
//!   `connection` is the one task per attached connection that reads, writes and runs its
//!   timers (a send whose stream is idle writes at once in the sender's task, through the
//!   connection's writers, which sit behind a second lock taken before the session's); `client`
//!   resolves the server's name, races its addresses (RFC 8305), connects and resumes; `server`
//!   accepts, runs the handshakes, checks every session's liveness from one timer, and is the
//!   sessions' owner (they report to it through a trait, never naming it); `endpoint` builds
//!   quinn endpoints.
//! - [`Server`], [`Client`], [`Session`]: small facades over the driver; what applications use.
//!   [`Lane`] is a session's feed datagram lane; [`Prepared`] encodes a message once, and [`Group`]
//!   and the server's broadcasts send it to many sessions without waiting.
//! - Leaves: [`events`] (session and server events, [`SessionEvent`], and counters), [`stats`]
//!   (connection quality, [`SessionStats`], [`ServerStats`], and what a session buffers,
//!   [`SessionBuffers`]), [`ServerConfig`], [`ClientConfig`] (with [`ServerAddress`]),
//!   [`TransportConfig`] (configuration with documented defaults tuned for games), [`Identity`],
//!   [`ServerSecret`] (the server's long-lived secret its reset and connection-ID keys derive
//!   from), [`Trust`], [`Fingerprint`], [`KnownHosts`] (certificates, pinning, trust on first use),
//!   the [`Authenticator`] hook (and the [`UserData`] it attaches to a session), and the errors
//!   [`ServerError`], [`ConnectError`], [`SendError`], [`RecvError`], [`Disconnect`].
//! - `conditioner` (cargo feature `conditioner`, on by default): an in-process UDP relay that adds
//!   latency, jitter, loss, duplication, reordering, blackholes and NAT rebindings to a loopback
//!   link, for tests and benchmarks.
//! - Beside the library: `benches/suite/` measures quicfeed against the handshake's round-trip
//!   limit and against bare quinn, TCP + TLS and renet, side by side in one run (BENCHMARKS.md);
//!   `tests/simulation/` runs the whole stack, quinn included, between simulated sockets in virtual
//!   time, one seeded fault scenario after another, and checks every invariant.
//!
//! ## Example
//!
//! ```no_run
//! use quicfeed::{Client, ClientConfig, Identity, Server, ServerConfig, Trust};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let identity = Identity::generate_self_signed(&["localhost"])?;
//! let trust = Trust::Certificate(identity.certificate().clone());
//! let server = Server::bind(ServerConfig::new("127.0.0.1:0".parse()?, identity)).await?;
//! let addr = server.local_addr();
//!
//! let client = tokio::spawn(async move {
//!     let session = Client::connect(&ClientConfig::new(addr, trust)).await?;
//!     session.main().send("ready").await?;
//!     let tick: u64 = session.feed().recv().await?;
//!     Ok::<_, Box<dyn std::error::Error + Send + Sync>>(tick)
//! });
//!
//! let session = server.accept().await.expect("server running");
//! let hello: String = session.main().recv().await?;
//! session.feed().send(&42u64).await?;
//! # Ok(()) }
//! ```
// Nothing a peer can influence may panic, overflow or index out of bounds; the library logs
// through `tracing` and never prints. Unit tests may assert with unwrap and index freely.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::print_stdout,
    clippy::print_stderr
)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects
    )
)]

mod auth;
mod broadcast;
pub mod certs;
mod client;
#[cfg(feature = "conditioner")]
pub mod conditioner;
pub mod config;
mod driver;
mod error;
pub mod events;
mod fingerprint;
mod known_hosts;
mod lane;
mod prepared;
#[doc(hidden)]
pub mod protocol;
mod secret;
mod server;
mod session;
pub mod stats;

pub use auth::{AcceptAll, AuthDecision, AuthRequest, Authenticator, UserData};
pub use broadcast::{Broadcast, Group};
pub use certs::{Fingerprint, Identity, Trust};
pub use client::Client;
pub use config::{
    BrowserCertificate, ClientConfig, MAX_MIN_CONGESTION_WINDOW, ResumePolicy, ServerAddress,
    ServerConfig, TransportConfig, WebTransportConfig,
};
pub use error::{
    CertError, ConfigError, ConnectError, Disconnect, RecvError, SendError, ServerError,
};
pub use events::{Events, ServerCounters, ServerEvent, SessionCounters, SessionEvent};
pub use known_hosts::KnownHosts;
pub use lane::Lane;
pub use prepared::Prepared;
pub use protocol::{
    ALPN, ChannelKind, DecodeError, EncodeError, FrameLimits, HandshakeStep, PlayerId, Reason,
};
pub use secret::{SERVER_SECRET_LEN, ServerSecret};
pub use server::{Server, ServerEvents};
pub use session::{Channel, Drain, Receiver, Sender, Session, SessionHandle};
pub use stats::{ChannelBuffers, ServerStats, SessionBuffers, SessionStats};

/// The quinn crate quicfeed runs on, for custom sockets: implement [`quinn::AsyncUdpSocket`]
/// and give it to [`Server::bind_with_socket`] or [`Client::connect_with_socket`].
pub use quinn;

/// Re-exported for [`Trust::Certificate`] and [`Identity::new`].
pub use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The README's code blocks, compiled and run as doctests so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
