//! quinn endpoints and their configuration, built from quicfeed's config structs.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, VarInt};

use crate::config::{ClientConfig, ServerConfig, TransportConfig};
use crate::error::{ConfigError, ConnectError, ServerError};

/// Bidirectional streams a client may open: main and feed.
const CLIENT_STREAMS: u32 = 2;

/// A bound server endpoint.
pub(crate) fn server(config: &ServerConfig) -> Result<quinn::Endpoint, ServerError> {
    let tls = config
        .identity
        .rustls_server_config(config.max_sessions.saturating_mul(4))?;
    let crypto =
        QuicServerConfig::try_from(tls).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport(&config.transport, CLIENT_STREAMS)?));
    server.migration(true);
    Ok(quinn::Endpoint::server(server, config.listen)?)
}

/// A bound client endpoint whose default client configuration is `config`'s.
pub(crate) fn client(config: &ClientConfig) -> Result<quinn::Endpoint, ConnectError> {
    let tls = config.trust.rustls_client_config(config.zero_rtt)?;
    let crypto =
        QuicClientConfig::try_from(tls).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    // The server never opens streams.
    client.transport_config(Arc::new(transport(&config.transport, 0)?));
    let bind = config.bind.unwrap_or(match config.server {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    });
    let mut endpoint = quinn::Endpoint::client(bind)?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
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
        .datagram_receive_buffer_size(None);
    Ok(q)
}
