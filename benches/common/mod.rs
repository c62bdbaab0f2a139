//! What the benches share: a server on loopback behind the network conditioner.

use quicfeed::conditioner::{Conditions, Relay};
use quicfeed::{Identity, Server, ServerConfig, Trust};

/// A server, a relay in front of it with `link` both ways, and the trust that pins the server.
pub(crate) struct Rig {
    pub(crate) server: Server,
    pub(crate) relay: Relay,
    pub(crate) trust: Trust,
}

/// Starts a [`Rig`]; the relay's randomness comes from `seed`.
pub(crate) async fn rig(link: Conditions, seed: u64) -> Rig {
    let identity = Identity::generate_self_signed(&["localhost"]).expect("certificate");
    let trust = Trust::Certificate(identity.certificate().clone());
    let server = Server::bind(ServerConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        identity,
    ))
    .await
    .expect("server");
    let relay = Relay::start_seeded(server.local_addr(), link.clone(), link, seed)
        .await
        .expect("relay");
    Rig {
        server,
        relay,
        trust,
    }
}
