//! quinn endpoints and their configuration, built from quicfeed's config structs.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, Runtime, VarInt};

use crate::certs::{BrowserTls, Identity, Refusals};
use crate::config::{ClientConfig, ServerConfig, TransportConfig};
use crate::driver::congestion::FlooredCubic;
use crate::driver::link::DATAGRAM_QUEUE;
use crate::error::{ConfigError, ConnectError, ServerError};

/// Bidirectional streams a client may open: main and feed.
pub(crate) const CLIENT_STREAMS: u32 = 2;

/// Bidirectional streams a browser opens: its HTTP/3 CONNECT stream, main and feed.
const BROWSER_BIDI_STREAMS: u32 = 3;

/// Unidirectional streams a browser opens: HTTP/3's control stream and QPACK's two.
const BROWSER_UNI_STREAMS: u32 = 3;

/// A socket given by the application instead of a bound UDP socket.
pub(crate) type AbstractSocket = Arc<dyn quinn::AsyncUdpSocket>;

/// A server endpoint: on `socket`, or on a UDP socket bound to `config.listen`.
pub(crate) fn server(
    config: &ServerConfig,
    token_key: &TokenKey,
    browsers: Option<&BrowserTls>,
    socket: Option<AbstractSocket>,
) -> Result<quinn::Endpoint, ServerError> {
    let server = server_config(config, &config.identity, token_key, browsers)?;
    let socket = match socket {
        Some(socket) => socket,
        None => {
            let socket =
                udp_socket(config.listen, config.transport.udp_buffer_size).map_err(|source| {
                    ServerError::Bind {
                        addr: config.listen,
                        source,
                    }
                })?;
            warn_if_capped(&socket, config.transport.udp_buffer_size);
            quinn::TokioRuntime.wrap_udp_socket(socket)?
        }
    };
    let bound = socket.local_addr()?;
    Ok(quinn::Endpoint::new_with_abstract_socket(
        server_endpoint_config(config, bound)?,
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?)
}

/// quinn's endpoint settings: its random seed, when one is configured.
fn endpoint_config(transport: &TransportConfig) -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    config.rng_seed(transport.rng_seed);
    config
}

/// A server's endpoint settings. Its connection IDs are always [`KeyedConnectionIds`]: never
/// quinn's default generator, whose IDs collide (see there).
///
/// With a configured secret, the stateless reset key and the connection ID generator's key
/// derive from it and from the address the server is bound to, so the same server restarted at
/// the same address recognises the connection IDs it issued before and resets their
/// connections; and every such packet gets its reset (no minimum interval), so when a thousand
/// clients come back at once each learns of the restart from its first packet instead of one
/// every 20 ms (quinn's default). The cost, weighed in SECURITY.md (row 17): a peer holding one
/// of this server's connection IDs can make it answer each packet with a reset, always smaller
/// than that packet. Without a secret, the connection ID key is random and quinn's reset
/// settings stand.
fn server_endpoint_config(
    config: &ServerConfig,
    bound: SocketAddr,
) -> Result<quinn::EndpointConfig, ServerError> {
    let mut endpoint = endpoint_config(&config.transport);
    if let Some(secret) = &config.secret {
        endpoint.min_reset_interval(std::time::Duration::ZERO);
        endpoint.reset_key(Arc::new(secret.reset_key(bound)?));
    }
    let key = connection_id_key(config.secret.as_ref(), bound)?;
    endpoint.cid_generator(move || {
        Box::new(KeyedConnectionIds::new(key.clone())) as Box<dyn quinn::ConnectionIdGenerator>
    });
    Ok(endpoint)
}

/// The key of a server's connection IDs: derived from its secret, or random without one.
fn connection_id_key(
    secret: Option<&crate::secret::ServerSecret>,
    bound: SocketAddr,
) -> Result<ring::hmac::Key, ServerError> {
    match secret {
        Some(secret) => Ok(secret.connection_id_key(bound)?),
        None => {
            ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
                .map_err(|_| {
                    ConfigError::Invalid("no randomness for the connection ID key".into()).into()
                })
        }
    }
}

/// Random bytes at the start of a keyed connection ID: 64 bits, so that the IDs one server
/// issues do not collide.
const CID_NONCE_LEN: usize = 8;

/// Bytes of the tag after them (40 bits, as quinn's hashed IDs have).
const CID_TAG_LEN: usize = 5;

/// The connection IDs of a server with a secret: 8 random bytes, then the first 5 bytes of
/// their HMAC-SHA256 under the server's key: derived from its secret, so that the server
/// restarted with the same secret recognises the IDs it issued before (and resets their
/// connections), or random without one.
///
/// Not quinn's `HashedConnectionIdGenerator`, its default: its IDs carry 3 random bytes, so a
/// server's IDs collide once it holds a few thousand (the birthday bound of 2^24). A Retry's
/// ID is not registered anywhere (it is stateless), and quinn-proto routes an Initial by the
/// established connections' IDs first: a client sent a Retry whose ID an established connection
/// also holds has its Initials dropped by that connection, silently, for as long as it lives,
/// and its connect fails with no answer. With 200 connections up and 136 Retries sent, about one
/// run in twenty had one such client.
struct KeyedConnectionIds {
    key: ring::hmac::Key,
    rng: ring::rand::SystemRandom,
    /// IDs issued so far: the nonce if the system has no randomness (never, in practice).
    issued: u64,
}

impl KeyedConnectionIds {
    fn new(key: ring::hmac::Key) -> Self {
        KeyedConnectionIds {
            key,
            rng: ring::rand::SystemRandom::new(),
            issued: 0,
        }
    }

    fn tag(&self, nonce: &[u8]) -> [u8; CID_TAG_LEN] {
        let mut tag = [0u8; CID_TAG_LEN];
        for (t, m) in tag
            .iter_mut()
            .zip(ring::hmac::sign(&self.key, nonce).as_ref())
        {
            *t = *m;
        }
        tag
    }
}

impl quinn::ConnectionIdGenerator for KeyedConnectionIds {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        self.issued = self.issued.wrapping_add(1);
        let mut nonce = [0u8; CID_NONCE_LEN];
        if ring::rand::SecureRandom::fill(&self.rng, &mut nonce).is_err() {
            nonce = self.issued.to_le_bytes();
        }
        let mut cid = [0u8; CID_NONCE_LEN + CID_TAG_LEN];
        let (head, tail) = cid.split_at_mut(CID_NONCE_LEN);
        head.copy_from_slice(&nonce);
        tail.copy_from_slice(&self.tag(&nonce));
        quinn::ConnectionId::new(&cid)
    }

    fn validate(&self, cid: &quinn::ConnectionId) -> Result<(), quinn_proto::InvalidCid> {
        if cid.len() != CID_NONCE_LEN + CID_TAG_LEN {
            return Err(quinn_proto::InvalidCid);
        }
        let (nonce, tag) = cid.split_at(CID_NONCE_LEN);
        if tag == self.tag(nonce).as_slice() {
            Ok(())
        } else {
            Err(quinn_proto::InvalidCid)
        }
    }

    fn cid_len(&self) -> usize {
        CID_NONCE_LEN + CID_TAG_LEN
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

/// The key that protects a server's Retry tokens: kept for the server's life, so that tokens
/// issued before a certificate rotation stay valid after it.
pub(crate) type TokenKey = Arc<dyn quinn::crypto::HandshakeTokenKey>;

/// A fresh random Retry token key.
pub(crate) fn token_key() -> Result<TokenKey, ServerError> {
    let mut secret = [0u8; 64];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| ConfigError::Invalid("no randomness for the Retry token key".into()))?;
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[]).extract(&secret);
    Ok(Arc::new(prk))
}

/// The quinn server configuration of `config`, presenting `identity` to native clients and, with
/// `browsers`, taking browsers' WebTransport connections too.
pub(crate) fn server_config(
    config: &ServerConfig,
    identity: &Identity,
    token_key: &TokenKey,
    browsers: Option<&BrowserTls>,
) -> Result<quinn::ServerConfig, ServerError> {
    let tls = identity.rustls_server_config(config.max_sessions.saturating_mul(4), browsers)?;
    let crypto =
        QuicServerConfig::try_from(tls).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    let mut server = quinn::ServerConfig::new(Arc::new(crypto), token_key.clone());
    let mut transport = transport(&config.transport, CLIENT_STREAMS)?;
    if browsers.is_some() {
        // Every connection is granted what a browser's needs before its ALPN is known: HTTP/3's
        // control and QPACK streams, and the CONNECT stream beside main and feed. A native
        // connection is given no more streams once its ALPN is known (`driver::server`), but
        // QUIC cannot take this first grant back: what a native client opens of it beyond main
        // and feed shares its connection's receive window, like its own streams.
        transport
            .max_concurrent_bidi_streams(VarInt::from_u32(BROWSER_BIDI_STREAMS))
            .max_concurrent_uni_streams(VarInt::from_u32(BROWSER_UNI_STREAMS));
    }
    server.transport_config(Arc::new(transport));
    server.migration(true);
    Ok(server)
}

/// A UDP socket bound to `addr` with kernel buffers of (up to) `buffer_size` bytes each way.
pub(crate) fn udp_socket(
    addr: SocketAddr,
    buffer_size: usize,
) -> std::io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if addr.is_ipv6() {
        // Accept IPv4 too on an unspecified IPv6 address, as std's bind does by default here.
        let _ = socket.set_only_v6(false);
    }
    // The kernel may grant less than asked (its maximum); that is not an error.
    let _ = socket.set_recv_buffer_size(buffer_size);
    let _ = socket.set_send_buffer_size(buffer_size);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Says so (in the log, at info) when the kernel granted a server's socket a smaller receive buffer than asked: the
/// kernel's cap (`net.core.rmem_max` on Linux, 208 KiB by default) then drops datagrams when
/// many clients connect at once.
fn warn_if_capped(socket: &std::net::UdpSocket, asked: usize) {
    let granted = socket2::SockRef::from(socket)
        .recv_buffer_size()
        .unwrap_or(0);
    // Linux reports twice what it grants (the doubling covers its bookkeeping).
    let granted = if cfg!(target_os = "linux") {
        granted / 2
    } else {
        granted
    };
    if granted < asked {
        tracing::info!(
            asked_kib = asked / 1024,
            granted_kib = granted / 1024,
            "the UDP receive buffer is smaller than asked: the kernel caps it (on Linux raise \
             net.core.rmem_max, e.g. `sysctl -w net.core.rmem_max={asked}`), or datagrams are \
             dropped when many clients connect at once"
        );
    }
}

/// A client endpoint, on `socket` or on a newly bound UDP socket, whose default client
/// configuration is `config`'s; and where its certificate verifier records why it refused a
/// certificate.
pub(crate) fn client(
    config: &ClientConfig,
    server: SocketAddr,
    socket: Option<AbstractSocket>,
) -> Result<(quinn::Endpoint, Refusals), ConnectError> {
    // The name and the server as configured: servers at different addresses that share a name
    // (the default `localhost` of development certificates) are different servers, and a server
    // named by host name is known by that name, whichever address it resolves to (so trust on
    // first use pins the name, as SSH does, and the addresses of one host share their 0-RTT
    // tickets).
    let host = format!("{}@{}", config.server_name, config.server);
    // Kept across connections made with this configuration (and its clones), for 0-RTT.
    let key = format!("{host} {} {:?}", config.zero_rtt, config.trust);
    let (tls, refusals) = config.tls_sessions.get_or_build(key, || {
        config.trust.rustls_client_config(config.zero_rtt, &host)
    })?;
    let crypto =
        QuicClientConfig::try_from(tls).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    // The server never opens streams.
    client.transport_config(Arc::new(transport(&config.transport, 0)?));
    let socket = match socket {
        Some(socket) => socket,
        None => {
            let bind = config.bind.unwrap_or(match server {
                SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
                SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
            });
            let socket = udp_socket(bind, config.transport.udp_buffer_size)
                .map_err(|source| ConnectError::Bind { addr: bind, source })?;
            quinn::TokioRuntime.wrap_udp_socket(socket)?
        }
    };
    let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
        endpoint_config(&config.transport),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    endpoint.set_default_client_config(client);
    Ok((endpoint, refusals))
}

fn transport(
    t: &TransportConfig,
    peer_bidi_streams: u32,
) -> Result<quinn::TransportConfig, ConfigError> {
    let idle = IdleTimeout::try_from(t.idle_timeout)
        .map_err(|_| ConfigError::Invalid("idle_timeout is too large".into()))?;
    let mut q = quinn::TransportConfig::default();
    q.max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(t.keep_alive_interval))
        .initial_rtt(t.initial_rtt)
        .stream_receive_window(VarInt::from_u32(t.stream_receive_window))
        .receive_window(VarInt::from_u32(t.receive_window))
        .send_window(t.send_window)
        .max_concurrent_bidi_streams(VarInt::from_u32(peer_bidi_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(
            (t.datagram_receive_buffer > 0).then_some(t.datagram_receive_buffer),
        )
        .datagram_send_buffer_size(DATAGRAM_QUEUE);
    if t.min_congestion_window > 0 {
        q.congestion_controller_factory(Arc::new(FlooredCubic::new(t.min_congestion_window)));
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn::ConnectionIdGenerator;

    fn generator() -> KeyedConnectionIds {
        KeyedConnectionIds::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"key"))
    }

    #[test]
    fn a_restarted_server_recognises_its_connection_ids_and_no_others() {
        let mut first = generator();
        let again = generator();
        let other = KeyedConnectionIds::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"x"));
        for _ in 0..100 {
            let cid = first.generate_cid();
            assert_eq!(cid.len(), first.cid_len());
            assert!(again.validate(&cid).is_ok());
            assert!(other.validate(&cid).is_err());
        }
    }

    /// quinn's hashed IDs (24 random bits) collide within a few thousand (about 300 pairs in a
    /// hundred thousand); a server's, with a secret or without, do not.
    #[test]
    fn a_hundred_thousand_connection_ids_are_all_different() {
        let bound = "127.0.0.1:4433".parse().unwrap();
        let secret = crate::secret::ServerSecret::from_bytes([7; 32]);
        for key in [None, Some(&secret)] {
            let mut generator = KeyedConnectionIds::new(connection_id_key(key, bound).unwrap());
            let mut seen = std::collections::HashSet::new();
            for _ in 0..100_000 {
                assert!(seen.insert(generator.generate_cid()));
            }
        }
    }
}
