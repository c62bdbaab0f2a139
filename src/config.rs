//! Configuration of servers and clients. Plain structs with public fields and documented
//! defaults, tuned for real-time games; [`ServerConfig::new`] and [`ClientConfig::new`] fill in
//! the defaults, then set what you need:
//!
//! ```
//! # use std::time::Duration;
//! # use quicfeed::{ClientConfig, Trust};
//! let mut config = ClientConfig::new(("game.example.com", 4433), Trust::SystemRoots);
//! config.handshake_timeout = Duration::from_secs(5);
//! config.transport.idle_timeout = Duration::from_secs(5);
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::auth::{AcceptAll, Authenticator, DynAuthenticator};
use crate::certs::{Identity, Trust};
use crate::error::ConfigError;
use crate::protocol::{FrameLimits, MAX_FEED_INITS, MAX_FRAME_LIMIT, MIN_FRAME_LIMIT};
use crate::secret::ServerSecret;

/// Default frame limit on each channel: 64 KiB.
pub const DEFAULT_MAX_FRAME: u32 = 64 * 1024;

impl Default for FrameLimits {
    /// [`DEFAULT_MAX_FRAME`] on both channels.
    fn default() -> Self {
        FrameLimits {
            main: DEFAULT_MAX_FRAME,
            feed: DEFAULT_MAX_FRAME,
        }
    }
}

/// QUIC transport settings shared by servers and clients.
///
/// [`TransportConfig::default`] holds a server's defaults; [`ClientConfig::new`] starts from
/// them with a client's larger receive windows (see `stream_receive_window`).
///
/// The stream limits are not configurable: a server allows exactly the two bidirectional
/// streams the protocol uses, a client none, and neither allows unidirectional streams.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TransportConfig {
    /// How often to send a QUIC PING when nothing else is sent, so a live path always carries
    /// packets. Default 500 ms. At most a third of `dead_path_timeout`.
    pub keep_alive_interval: Duration,
    /// When nothing at all has been received for this long, the connection is declared dead:
    /// a client abandons it and resumes the session on a new connection, a server starts the
    /// session's grace period. Default 1.8 s: checked every sixteenth of it, a dead path is
    /// declared less than 2 s after the last packet. A shorter outage is ridden out by QUIC itself (the
    /// connection survives); lower it for faster recovery, raise it for links with long
    /// stalls.
    pub dead_path_timeout: Duration,
    /// Close the connection when nothing has been heard for this long. Default 10 s (quinn's own
    /// default is 30 s). The effective value is the smaller of the two peers'.
    pub idle_timeout: Duration,
    /// RTT assumed before the first sample. Default 100 ms (quinn: 333 ms): one lost handshake
    /// packet then costs about 300 ms instead of about 1 s.
    pub initial_rtt: Duration,
    /// Bytes the peer may send on one stream ahead of the application reading. Default 128 KiB
    /// on a server ([`ServerConfig::new`]), 1.25 MiB on a client ([`ClientConfig::new`]; about
    /// quinn's own default).
    pub stream_receive_window: u32,
    /// Bytes the peer may send on the whole connection ahead of the application reading.
    /// Default 192 KiB on a server, 2.5 MiB on a client (quinn: unbounded). What one connection
    /// can pin on the receiving side is about this, plus per channel the larger of
    /// `receive_buffer` and the frame limit and one 16 KiB read, plus the lane's
    /// `datagram_receive_buffer`: about 420 KiB per connection on a server with the defaults
    /// (SECURITY.md). A client has one connection, to a server it authenticated, so its
    /// windows are sized for speed instead: with a server's windows a client's bulk feed reaches
    /// about 0.75x of bare quinn's throughput on loopback, with these 0.93x (BENCHMARKS.md).
    pub receive_window: u32,
    /// Bytes of this side's messages QUIC may hold unacknowledged (in flight or waiting to be
    /// sent); a write to QUIC waits beyond it, and so does QUIC for the peer's flow control. Default
    /// 2 MiB: a bulk transfer on the feed (a map download, say) then reaches 0.93x to 1.0x of
    /// bare quinn's throughput on loopback, against about 0.8x at 256 KiB (BENCHMARKS.md). It is
    /// also the most of this side's sent data that a peer can make it hold by not
    /// acknowledging, beside the replay buffer (SECURITY.md); a game's snapshots never come
    /// near it.
    pub send_window: u64,
    /// Size requested for the UDP socket's kernel receive and send buffers. Default 4 MiB
    /// (Linux grants up to `net.core.rmem_max` / `wmem_max`). The usual 208 KiB default drops
    /// datagrams as soon as a few hundred clients connect at once, and each drop costs a
    /// retransmission timeout.
    pub udp_buffer_size: usize,
    /// Bytes of sent messages kept per channel until the peer acknowledges them, to replay
    /// after a resume. Default 128 KiB (ten seconds of a 60 Hz feed of 200-byte snapshots; the
    /// buffer shares its memory with QUIC's send buffer). When an outage lasts longer than this covers, the
    /// oldest messages are dropped and the peer's receiver reports a
    /// [`RecvError::Gap`](crate::RecvError::Gap). An idle session keeps nothing.
    pub replay_buffer: usize,
    /// Bytes of a channel's messages that may wait to be written to the connection; a `send`
    /// waits beyond it (one message is always taken, whatever its size). Default 64 KiB. This
    /// is the back-pressure point: a peer that does not keep up makes `send` wait here, and
    /// broadcasts report it as [`SendError::Blocked`](crate::SendError::Blocked). Capped at
    /// `replay_buffer` (the waiting messages are kept for a replay too).
    pub send_buffer: usize,
    /// Bytes of received messages a channel holds for the application to read; the channel's
    /// stream is not read beyond it, which holds the peer back on that channel alone.
    /// Default 64 KiB. Messages are taken in and acknowledged whether or not the application
    /// reads, up to this; QUIC's stream window holds what comes after. With a frame being
    /// reassembled, a channel holds at most the larger of this and its frame limit, plus one
    /// 16 KiB read.
    pub receive_buffer: usize,
    /// Bytes of received feed datagrams ([`Lane`](crate::Lane)) kept until the application
    /// reads them; when full, the oldest are dropped. Default 64 KiB (over 300 snapshots of
    /// 200 bytes). 0 refuses datagrams: the peer's lane then cannot send, and acknowledgements
    /// travel in-band only.
    pub datagram_receive_buffer: usize,
    /// Lane messages ([`Lane`](crate::Lane)) that may wait to be sent while QUIC's congestion
    /// control holds the connection back; a newer one supersedes the oldest waiting beyond
    /// this. Default 1: only the newest waits (a game that sends one snapshot per tick); set it
    /// to the number of lane messages one tick sends. 0: a message QUIC cannot take at once is
    /// dropped. Messages go to QUIC only while it holds nothing else unsent (or only the rest
    /// of the same burst), so a message never waits behind older ones there; see PROTOCOL.md
    /// §13.3.
    pub datagram_send_queue: usize,
    /// The most a lane message may be late. On sending, a message that waited longer than this
    /// for QUIC to take it is dropped unsent. On receiving, one read later than this behind the
    /// fastest recent one (transit and time waiting to be read) is dropped instead of
    /// delivered (the age excludes the path's base one-way delay, since clocks are not
    /// synchronised; see PROTOCOL.md §13). Default `None`: send and deliver the newest, however
    /// late.
    pub datagram_max_age: Option<Duration>,
    /// The smallest congestion window, in bytes: QUIC's congestion control (Cubic) never
    /// holds the connection to less in flight than this. Default 14,720 bytes, the window a new
    /// connection starts with (ten packets). A game's traffic is application-limited, so
    /// after a burst of losses Cubic would otherwise leave its window near the two-packet
    /// minimum for good, and one lost packet then holds every later one, lane datagrams
    /// included, until a probe timeout. Above the floor Cubic governs as usual (a bulk
    /// transfer still backs off to the floor). 0 restores RFC 9002's two-packet minimum. At
    /// most [`MAX_MIN_CONGESTION_WINDOW`].
    pub min_congestion_window: u64,
    /// The send priority of the main channel's stream against the feed's. QUIC sends queued
    /// data of a higher-priority stream first, so with the default (main 1, feed 0) a request on
    /// main never waits behind a feed backlog. Equal values share the connection round-robin,
    /// packet by packet. (Lane datagrams go ahead of both streams.)
    pub main_priority: i32,
    /// The send priority of the feed channel's stream. Default 0 (see `main_priority`).
    pub feed_priority: i32,
    /// Seed for quinn's own random choices (skipped packet numbers and its connections' other
    /// draws; connection IDs stay random): `None`, the default, draws it from the operating
    /// system. A seed makes a simulation on a custom socket
    /// ([`Server::bind_with_socket`](crate::Server::bind_with_socket)) replay the same way.
    /// WARNING: predictable choices help someone who knows the seed; never set it in production.
    pub rng_seed: Option<[u8; 32]>,
    /// Log connection statistics ([`crate::stats`]) through `tracing` at `info` level, target
    /// `quicfeed::stats`, this often: a server logs its server-wide figures, a client its
    /// session's. Default `None` (no logging; the figures are always readable through the API).
    pub stats_log_interval: Option<Duration>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            keep_alive_interval: Duration::from_millis(500),
            dead_path_timeout: Duration::from_millis(1800),
            idle_timeout: Duration::from_secs(10),
            initial_rtt: Duration::from_millis(100),
            stream_receive_window: 128 * 1024,
            receive_window: 192 * 1024,
            send_window: 2 * 1024 * 1024,
            udp_buffer_size: 4 * 1024 * 1024,
            replay_buffer: 128 * 1024,
            send_buffer: 64 * 1024,
            receive_buffer: 64 * 1024,
            datagram_receive_buffer: 64 * 1024,
            datagram_send_queue: 1,
            datagram_max_age: None,
            min_congestion_window: 14_720,
            main_priority: 1,
            feed_priority: 0,
            stats_log_interval: None,
            rng_seed: None,
        }
    }
}

/// The largest [`TransportConfig::min_congestion_window`] accepted: 64 packets, a floor that
/// still leaves congestion control something to govern on any path a game runs on.
pub const MAX_MIN_CONGESTION_WINDOW: u64 = 64 * 1472;

impl TransportConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.stats_log_interval.is_some_and(|d| d.is_zero()) {
            return Err(invalid("stats_log_interval must be non-zero"));
        }
        if self.keep_alive_interval.is_zero() || self.keep_alive_interval >= self.idle_timeout {
            return Err(invalid(format!(
                "keep_alive_interval ({:?}) must be non-zero and below idle_timeout ({:?})",
                self.keep_alive_interval, self.idle_timeout
            )));
        }
        let third = self.dead_path_timeout.checked_div(3).unwrap_or_default();
        if self.dead_path_timeout.is_zero() || self.keep_alive_interval > third {
            return Err(invalid(format!(
                "keep_alive_interval ({:?}) must be at most a third of dead_path_timeout ({:?})",
                self.keep_alive_interval, self.dead_path_timeout
            )));
        }
        if self.idle_timeout.as_millis() > u128::from(u32::MAX) {
            return Err(invalid("idle_timeout is too large"));
        }
        if self.stream_receive_window == 0 || self.receive_window == 0 || self.send_window == 0 {
            return Err(invalid("flow-control windows must be non-zero"));
        }
        if self.min_congestion_window > MAX_MIN_CONGESTION_WINDOW {
            return Err(invalid(format!(
                "min_congestion_window ({} bytes) must be at most {MAX_MIN_CONGESTION_WINDOW} \
                 bytes: a larger floor would switch congestion control off",
                self.min_congestion_window
            )));
        }
        if self.send_buffer == 0 || self.receive_buffer == 0 || self.replay_buffer == 0 {
            return Err(invalid(
                "send_buffer, receive_buffer and replay_buffer must be non-zero",
            ));
        }
        Ok(())
    }
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

fn validate_limits(limits: &FrameLimits) -> Result<(), ConfigError> {
    let max = u32::try_from(MAX_FRAME_LIMIT).unwrap_or(u32::MAX);
    for (name, value) in [("main", limits.main), ("feed", limits.feed)] {
        if !(MIN_FRAME_LIMIT..=max).contains(&value) {
            return Err(invalid(format!(
                "frame limit on {name} ({value}) must be within {MIN_FRAME_LIMIT}..={max}"
            )));
        }
    }
    Ok(())
}

/// Settings of a [`Server`](crate::Server).
#[derive(Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// UDP address to listen on. Use port 0 to let the OS choose (see
    /// [`Server::local_addr`](crate::Server::local_addr)).
    pub listen: SocketAddr,
    /// The certificate chain and key presented to clients.
    pub identity: Identity,
    /// The secret the keys of stateless resets and connection IDs derive from. Keep one beside
    /// the certificate ([`ServerSecret::load_or_generate`]) and a restarted server answers its
    /// old clients' next packets with a stateless reset: they learn of the restart within a
    /// round trip and resume (the restarted server refuses with `UNKNOWN_SESSION`, so they
    /// connect again). Default `None`: random keys for each [`Server`](crate::Server), and old
    /// clients notice a restart only after their dead-path timeout.
    pub secret: Option<ServerSecret>,
    /// Time from a connection attempt's first packet to `CONN_OK`, covering the QUIC handshake
    /// and the three token steps; a connection that has not finished by then gets
    /// `CONN_FAILED(HANDSHAKE_TIMEOUT)` and is closed. Default 5 s: four round trips take well
    /// under a second even on a bad mobile link, and a connection that stalls holds its place
    /// among the handshakes in progress for no longer.
    pub handshake_timeout: Duration,
    /// How long tokens A and B stay valid after being issued. Default 5 s: a handshake needs
    /// them for about one round trip each.
    pub token_lifetime: Duration,
    /// Most connections in their handshake (QUIC and token steps, before `CONN_OK`) at once.
    /// At the cap, an attempt from a validated address (one that answered a Retry) is taken on
    /// and the **oldest** handshake in progress, if older than `min_evictable_age`, is closed
    /// with [`Reason::ServerBusy`](crate::Reason::ServerBusy): honest handshakes take a few
    /// round trips, so the oldest are those that stall, and stalled connections cannot keep
    /// honest clients out until their deadline. An unvalidated attempt at the cap is dropped (only
    /// possible with `retry_threshold` above this cap). Also the most connections abandoned in
    /// a browser's setup the server lets stay open before it refuses new browsers (see
    /// SECURITY.md, Known limits). Default 1024.
    pub max_pending_handshakes: usize,
    /// How long a handshake must have been in progress before a new attempt may evict it at the
    /// `max_pending_handshakes` cap; attempts that find only younger handshakes are dropped
    /// (the client retries after its probe timeout). Default 1 s: longer than honest
    /// handshakes take on most links, far shorter than `handshake_timeout`.
    pub min_evictable_age: Duration,
    /// Most connections in their handshake from one source address (an IPv4 address, or an
    /// IPv6 /64), so that one host cannot take all the places. Default 128. Raise it if very
    /// many players behind one NAT connect at the same moment.
    pub max_pending_per_address: usize,
    /// From this many handshakes in progress on, an attempt from an address QUIC has not
    /// validated gets a stateless Retry first: spoofed or silent sources then cost no state.
    /// Default 64; 0 retries every attempt (one more round trip for every client).
    pub retry_threshold: usize,
    /// How long a session whose connection was lost is kept for the client to resume it, with
    /// its player ID, slot and unacknowledged messages. Default 15 s (a little longer than a
    /// client's default resume budget).
    pub grace_period: Duration,
    /// Most sessions; further `CONN_INIT`s get `CONN_FAILED(SERVER_FULL)`. Default 1024.
    ///
    /// A connection counts from the moment its `CONN_INIT` is admitted, so handshakes past that
    /// step count too. Connections that have not sent `CONN_INIT` yet do not: they are bounded
    /// by `max_pending_handshakes` and `handshake_timeout`.
    pub max_sessions: usize,
    /// Most sessions one source address (an IPv4 address, or an IPv6 /64) may hold; further
    /// `CONN_INIT`s from it get `CONN_FAILED(ADDRESS_FULL)` with the `busy_retry_after` hint,
    /// while other addresses still get in. Default 64: a LAN party or a household behind one NAT
    /// fits; raise it for players behind a carrier-grade NAT, or for a load test that opens many
    /// sessions from one machine. It counts handshakes past `CONN_INIT` and sessions waiting in
    /// their grace period, like `max_sessions`; a resume is never refused for it (the session
    /// then counts under its new address).
    pub max_sessions_per_address: usize,
    /// The hint of when to try again sent with `SERVER_FULL` and `ADDRESS_FULL` refusals
    /// ([`ConnectError::Refused::retry_after`](crate::ConnectError::Refused)). Default 2 s;
    /// `None` sends no hint. (An evicted handshake, `SERVER_BUSY`, is closed without
    /// `CONN_FAILED`, so without a hint.)
    pub busy_retry_after: Option<Duration>,
    /// Largest frame bodies accepted from clients after `CONN_OK`. Default 64 KiB each.
    pub frame_limits: FrameLimits,
    /// QUIC settings.
    pub transport: TransportConfig,
    /// Browser players over WebTransport on the same UDP port, beside native clients. Default
    /// `None`: native clients only (ALPN `quicfeed/1`).
    pub webtransport: Option<WebTransportConfig>,
    pub(crate) authenticator: Arc<dyn DynAuthenticator>,
}

/// How a server takes browser players: WebTransport sessions (HTTP/3 extended CONNECT, ALPN
/// `h3`) on its UDP port, told apart from native connections by their ALPN. Inside a session,
/// main and feed are two WebTransport streams and the lane is WebTransport datagrams, with the
/// same handshake, limits and resume as native connections (PROTOCOL.md §14).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WebTransportConfig {
    /// The path a page opens its session on (`https://host:port/quicfeed`); CONNECT requests
    /// for other paths are answered 404. Default `/quicfeed`.
    pub path: String,
    /// The origins (`scheme://host[:port]`, as browsers send them) whose pages may open
    /// sessions; a request from any other origin, or with none, is answered 403. Default empty:
    /// every origin, and requests without one, for development. List your game's origins in
    /// production: otherwise any web page can open sessions from its visitors' browsers.
    pub allowed_origins: Vec<String>,
    /// The certificate browsers are shown. Default
    /// [`BrowserCertificate::Generated`] for the development names.
    pub certificate: BrowserCertificate,
}

impl Default for WebTransportConfig {
    fn default() -> Self {
        WebTransportConfig {
            path: "/quicfeed".into(),
            allowed_origins: Vec::new(),
            certificate: BrowserCertificate::Generated {
                names: crate::certs::DEV_CERT_NAMES
                    .iter()
                    .map(|n| (*n).to_owned())
                    .collect(),
            },
        }
    }
}

impl WebTransportConfig {
    /// Whether a CONNECT request from `origin` may open a session.
    pub(crate) fn allows_origin(&self, origin: Option<&str>) -> bool {
        self.allowed_origins.is_empty()
            || origin.is_some_and(|origin| self.allowed_origins.iter().any(|o| o == origin))
    }
}

/// The certificate a server shows browsers ([`WebTransportConfig::certificate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrowserCertificate {
    /// Self-signed ECDSA P-256 certificates for these names (DNS names or IP addresses), which
    /// the server generates and replaces on its own: each is valid for 13 days (and an hour
    /// before it was made, for clocks running behind), the most browsers take with
    /// `serverCertificateHashes`, and a new one takes over every 6 days. A page pins the hashes
    /// [`Server::browser_certificate_hashes`](crate::Server::browser_certificate_hashes) gives
    /// (the current certificate's and the next one's, so a page loaded before a change still
    /// connects after it). For development, and for games without a domain name.
    Generated {
        /// The names the certificates are for.
        names: Vec<String>,
    },
    /// The server's own [`identity`](ServerConfig::identity): a certificate from a CA that
    /// browsers trust, which they check like any web site's (no hashes to pin).
    Identity,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("fingerprint", &self.identity.fingerprint())
            .field("handshake_timeout", &self.handshake_timeout)
            .field("token_lifetime", &self.token_lifetime)
            .field("grace_period", &self.grace_period)
            .field("max_sessions", &self.max_sessions)
            .field("max_sessions_per_address", &self.max_sessions_per_address)
            .field("frame_limits", &self.frame_limits)
            .field("transport", &self.transport)
            .field("webtransport", &self.webtransport)
            .finish_non_exhaustive()
    }
}

impl ServerConfig {
    /// A configuration with every default, listening on `listen` with `identity`; every client
    /// is admitted ([`AcceptAll`]) with a sequential player ID.
    pub fn new(listen: SocketAddr, identity: Identity) -> Self {
        ServerConfig {
            listen,
            identity,
            secret: None,
            handshake_timeout: Duration::from_secs(5),
            token_lifetime: Duration::from_secs(5),
            grace_period: Duration::from_secs(15),
            busy_retry_after: Some(Duration::from_secs(2)),
            max_pending_handshakes: 1024,
            min_evictable_age: Duration::from_secs(1),
            max_pending_per_address: 128,
            retry_threshold: 64,
            max_sessions: 1024,
            max_sessions_per_address: 64,
            frame_limits: FrameLimits::default(),
            transport: TransportConfig::default(),
            webtransport: None,
            authenticator: Arc::new(AcceptAll),
        }
    }

    /// Sets the hook that admits or refuses each `CONN_INIT` and may choose the player ID.
    pub fn authenticator(mut self, authenticator: impl Authenticator) -> Self {
        self.authenticator = Arc::new(authenticator);
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.transport.validate()?;
        validate_limits(&self.frame_limits)?;
        if self.handshake_timeout.is_zero() || self.token_lifetime.is_zero() {
            return Err(invalid(
                "handshake_timeout and token_lifetime must be non-zero",
            ));
        }
        if self.grace_period.is_zero() {
            return Err(invalid("grace_period must be non-zero"));
        }
        if self.max_pending_handshakes == 0 || self.max_pending_per_address == 0 {
            return Err(invalid(
                "max_pending_handshakes and max_pending_per_address must be at least 1",
            ));
        }
        if self.max_sessions == 0 || self.max_sessions_per_address == 0 {
            return Err(invalid(
                "max_sessions and max_sessions_per_address must be at least 1",
            ));
        }
        if let Some(web) = &self.webtransport {
            if !web.path.starts_with('/') {
                return Err(invalid(
                    "webtransport.path must start with '/' (for example \"/quicfeed\")",
                ));
            }
            if let BrowserCertificate::Generated { names } = &web.certificate
                && names.is_empty()
            {
                return Err(invalid(
                    "webtransport.certificate needs at least one name to generate certificates for",
                ));
            }
        }
        Ok(())
    }
}

/// Where a client finds its server: an address, or a host name and a port, resolved (IPv4 or
/// IPv6) each time the client connects.
///
/// ```
/// use quicfeed::config::ServerAddress;
///
/// let by_name: ServerAddress = "game.example.com:4433".parse()?;
/// let by_address: ServerAddress = "127.0.0.1:4433".parse()?;
/// let v6: ServerAddress = "[::1]:4433".parse()?;
/// assert_eq!(by_name.host_name(), Some("game.example.com"));
/// assert_eq!(by_address.host_name(), None);
/// # let _ = v6;
/// # Ok::<(), quicfeed::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerAddress {
    /// A socket address, used as it is.
    Addr(SocketAddr),
    /// A host name and port, resolved by the system's resolver when connecting.
    Host {
        /// The host name (`localhost`, `game.example.com`).
        name: String,
        /// The UDP port.
        port: u16,
    },
}

impl ServerAddress {
    /// The host name, if this is one (not an address).
    pub fn host_name(&self) -> Option<&str> {
        match self {
            ServerAddress::Addr(_) => None,
            ServerAddress::Host { name, .. } => Some(name),
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            ServerAddress::Addr(addr) => addr.port(),
            ServerAddress::Host { port, .. } => *port,
        }
    }
}

impl std::fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerAddress::Addr(addr) => addr.fmt(f),
            ServerAddress::Host { name, port } => write!(f, "{name}:{port}"),
        }
    }
}

impl std::str::FromStr for ServerAddress {
    type Err = ConfigError;

    /// Parses `HOST:PORT`, `IPV4:PORT` or `[IPV6]:PORT`.
    fn from_str(text: &str) -> Result<Self, ConfigError> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(ServerAddress::Addr(addr));
        }
        let wrong = || {
            ConfigError::Invalid(format!(
                "server address {text:?}: expected HOST:PORT, IPV4:PORT or [IPV6]:PORT (for \
                 example localhost:4433)"
            ))
        };
        let (name, port) = text.rsplit_once(':').ok_or_else(wrong)?;
        let port = port.parse().map_err(|_| wrong())?;
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        let labels_valid = name
            .strip_suffix('.')
            .unwrap_or(name)
            .split('.')
            .all(|label| !label.is_empty() && label.len() <= 63 && label.chars().all(valid));
        if name.len() > 253 || !labels_valid {
            return Err(wrong());
        }
        Ok(ServerAddress::Host {
            name: name.to_owned(),
            port,
        })
    }
}

impl From<SocketAddr> for ServerAddress {
    fn from(addr: SocketAddr) -> Self {
        ServerAddress::Addr(addr)
    }
}

impl From<(std::net::IpAddr, u16)> for ServerAddress {
    fn from(addr: (std::net::IpAddr, u16)) -> Self {
        ServerAddress::Addr(addr.into())
    }
}

impl From<(&str, u16)> for ServerAddress {
    /// A host name (or an address written as text) and a port.
    fn from((name, port): (&str, u16)) -> Self {
        match name.parse::<std::net::IpAddr>() {
            Ok(ip) => ServerAddress::Addr((ip, port).into()),
            Err(_) => ServerAddress::Host {
                name: name.to_owned(),
                port,
            },
        }
    }
}

impl From<(String, u16)> for ServerAddress {
    fn from((name, port): (String, u16)) -> Self {
        ServerAddress::from((name.as_str(), port))
    }
}

/// Settings of a [`Client`](crate::Client) connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The server: an address, or a host name and port resolved when connecting (when it
    /// resolves to several addresses, they are tried as in RFC 8305: the first at once, the
    /// next 250 ms later if no QUIC handshake has completed yet, and so on; the first to
    /// complete wins). A resume goes to the address that won.
    pub server: ServerAddress,
    /// The name sent in TLS SNI and checked against the certificate under
    /// [`Trust::CaCertificates`] and [`Trust::SystemRoots`]. [`ClientConfig::new`] sets it to
    /// the host name of `server`, or `"localhost"` (the name of development certificates) for
    /// an address; changing `server` afterwards does not change it.
    pub server_name: String,
    /// How the server's certificate is verified.
    pub trust: Trust,
    /// Credentials sent in `CONN_INIT` for the server's authenticator (e.g. a matchmaker
    /// ticket). Default empty. At most about 4 000 bytes (the handshake frame limit).
    pub credentials: Bytes,
    /// Local UDP address to bind. Default: the unspecified address of the server's family, on
    /// a port the OS chooses.
    pub bind: Option<SocketAddr>,
    /// Time from the first packet to `CONN_OK`, QUIC handshake included. Default 10 s.
    pub handshake_timeout: Duration,
    /// How long to wait for the `FEED_INIT` reply before sending `FEED_INIT` again. Default 1 s.
    pub feed_init_timeout: Duration,
    /// How many `FEED_INIT` messages to send before giving up (first attempt included).
    /// Default 3; at most 8 (the server refuses more).
    pub feed_init_attempts: u8,
    /// Largest frame bodies accepted from the server after `CONN_OK`. Default 64 KiB each.
    pub frame_limits: FrameLimits,
    /// How to resume the session when its connection is lost.
    pub resume: ResumePolicy,
    /// Send `CONN_INIT` in 0-RTT data when the client holds a TLS session ticket from the
    /// server: a new connection then reaches `CONN_OK` in three round trips instead of four.
    /// The tickets are kept by this configuration and shared by its clones, so connecting
    /// again with the same configuration (after a previous connection to the server) uses
    /// 0-RTT. Default `true`. A resume never uses 0-RTT: its proof of the credential is bound
    /// to the new connection's TLS keys, which exist only once its handshake has completed
    /// (PROTOCOL.md §12.4).
    ///
    /// A replay of the 0-RTT data starts nothing that outlives its handshake: the server
    /// accepts each ticket once (PROTOCOL.md §2.1), and a replayed connection never completes.
    /// Note that `credentials` then travel in 0-RTT data, which is encrypted with keys from the
    /// earlier TLS session rather than fresh ones (RFC 8446 §2.3); turn this off if they must
    /// not.
    pub zero_rtt: bool,
    /// QUIC settings.
    pub transport: TransportConfig,
    /// The TLS session tickets, shared by clones.
    pub(crate) tls_sessions: crate::certs::TlsSessions,
}

/// How a client resumes its session after losing the connection: attempts with exponential
/// backoff and jitter, within a total budget.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ResumePolicy {
    /// Total time to keep trying before giving up and ending the session. Default 10 s (keep
    /// it below the server's `grace_period`, 15 s by default).
    pub budget: Duration,
    /// Time one attempt may take, QUIC handshake included. Default 2 s.
    pub attempt_timeout: Duration,
    /// Wait after the first failed attempt; doubled after each one. Default 100 ms. Each wait
    /// is then scaled by a random factor in 0.5..1.5, so that clients cut off together do not
    /// all come back at once.
    pub initial_backoff: Duration,
    /// Longest wait between attempts, before the random factor. Default 1 s.
    pub max_backoff: Duration,
    /// Where the random factor comes from: `None` (the default) draws it from the operating
    /// system; `Some(seed)` from a generator seeded with it, so that a test or a simulation
    /// replays the same waits. Keep `None` in production: seeded clients that were cut off
    /// together come back together.
    pub jitter_seed: Option<u64>,
}

impl Default for ResumePolicy {
    fn default() -> Self {
        ResumePolicy {
            budget: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(2),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            jitter_seed: None,
        }
    }
}

/// A client's default stream receive window (see [`TransportConfig::stream_receive_window`]).
const CLIENT_STREAM_RECEIVE_WINDOW: u32 = 1280 * 1024;

/// A client's default connection receive window: both streams' windows.
const CLIENT_RECEIVE_WINDOW: u32 = 2 * CLIENT_STREAM_RECEIVE_WINDOW;

impl ClientConfig {
    /// A configuration with every default, for the server at `server`: a [`SocketAddr`], a
    /// parsed [`ServerAddress`], or a `(host, port)` pair such as `("localhost", 4433)`.
    pub fn new(server: impl Into<ServerAddress>, trust: Trust) -> Self {
        let server = server.into();
        ClientConfig {
            server_name: server.host_name().unwrap_or("localhost").to_owned(),
            server,
            trust,
            credentials: Bytes::new(),
            bind: None,
            handshake_timeout: Duration::from_secs(10),
            feed_init_timeout: Duration::from_secs(1),
            feed_init_attempts: 3,
            frame_limits: FrameLimits::default(),
            resume: ResumePolicy::default(),
            zero_rtt: true,
            transport: TransportConfig {
                stream_receive_window: CLIENT_STREAM_RECEIVE_WINDOW,
                receive_window: CLIENT_RECEIVE_WINDOW,
                ..TransportConfig::default()
            },
            tls_sessions: crate::certs::TlsSessions::default(),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.transport.validate()?;
        validate_limits(&self.frame_limits)?;
        if self.resume.attempt_timeout.is_zero() || self.resume.initial_backoff.is_zero() {
            return Err(invalid(
                "resume.attempt_timeout and resume.initial_backoff must be non-zero",
            ));
        }
        if self.handshake_timeout.is_zero() || self.feed_init_timeout.is_zero() {
            return Err(invalid(
                "handshake_timeout and feed_init_timeout must be non-zero",
            ));
        }
        if !(1..=MAX_FEED_INITS).contains(&self.feed_init_attempts) {
            return Err(invalid(format!(
                "feed_init_attempts must be within 1..={MAX_FEED_INITS}"
            )));
        }
        let credentials_max = crate::protocol::HANDSHAKE_FRAME_LIMIT.saturating_sub(32);
        if self.credentials.len() > credentials_max {
            return Err(invalid(format!(
                "credentials are {} bytes; at most {credentials_max} fit in CONN_INIT",
                self.credentials.len()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_keep_alive_is_below_idle() {
        let identity = Identity::generate_self_signed(&["localhost"]).unwrap();
        let server = ServerConfig::new("127.0.0.1:0".parse().unwrap(), identity);
        server.validate().unwrap();
        let client = ClientConfig::new(SocketAddr::from(([127, 0, 0, 1], 1)), Trust::SystemRoots);
        client.validate().unwrap();
        assert!(server.transport.keep_alive_interval < server.transport.idle_timeout);
    }

    #[test]
    fn a_servers_receive_windows_stay_bounded_and_a_clients_are_sized_for_speed() {
        let identity = Identity::generate_self_signed(&["localhost"]).unwrap();
        let server = ServerConfig::new("127.0.0.1:0".parse().unwrap(), identity).transport;
        // SECURITY.md row 4's bound per connection is computed from these.
        assert_eq!(server.stream_receive_window, 128 * 1024);
        assert_eq!(server.receive_window, 192 * 1024);
        let client =
            ClientConfig::new(SocketAddr::from(([127, 0, 0, 1], 1)), Trust::SystemRoots).transport;
        assert_eq!(client.stream_receive_window, 1280 * 1024);
        // Both channels' streams can fill their windows at once.
        assert_eq!(client.receive_window, 2 * client.stream_receive_window);
        // Everything else is the same on both sides.
        assert_eq!(client.send_window, server.send_window);
        assert_eq!(client.dead_path_timeout, server.dead_path_timeout);
    }

    #[test]
    fn inconsistent_values_are_refused() {
        let mut client =
            ClientConfig::new(SocketAddr::from(([127, 0, 0, 1], 1)), Trust::SystemRoots);
        client.transport.keep_alive_interval = client.transport.idle_timeout;
        assert!(client.validate().is_err());
        let mut client =
            ClientConfig::new(SocketAddr::from(([127, 0, 0, 1], 1)), Trust::SystemRoots);
        client.feed_init_attempts = 9;
        assert!(client.validate().is_err());
        let mut client =
            ClientConfig::new(SocketAddr::from(([127, 0, 0, 1], 1)), Trust::SystemRoots);
        client.frame_limits.feed = 10;
        assert!(client.validate().is_err());
        let mut client =
            ClientConfig::new(SocketAddr::from(([127, 0, 0, 1], 1)), Trust::SystemRoots);
        client.credentials = Bytes::from(vec![0; 5000]);
        assert!(client.validate().is_err());
        let mut client =
            ClientConfig::new(SocketAddr::from(([127, 0, 0, 1], 1)), Trust::SystemRoots);
        client.transport.min_congestion_window = MAX_MIN_CONGESTION_WINDOW + 1;
        assert!(client.validate().is_err());
        client.transport.min_congestion_window = 0;
        client.validate().unwrap();
    }
}
