//! The protocol core: messages, codec, tokens, and the handshake and session state machines.
//!
//! **Unstable.** This module is public for the fuzz targets, the tests that speak the wire
//! protocol byte by byte, and tools that do the same; it is hidden from the crate's docs and
//! may change in any release. Applications use the crate's top level, which re-exports the
//! types its API needs ([`PlayerId`], [`Reason`], [`ChannelKind`], [`FrameLimits`], ...).
//!
//! Nothing in this module performs I/O, spawns tasks or reads a clock: inputs are decoded
//! messages and `now: Instant` arguments, outputs are values the caller acts on. It imports
//! neither tokio nor quinn, so every rule of `PROTOCOL.md` can be tested with virtual time and
//! no sockets, and a driver for another runtime could reuse it unchanged.

mod admission;
mod client;
pub mod codec;
pub mod lane;
mod message;
mod registry;
pub mod reliability;
mod rules;
mod server;
pub mod session;
pub mod stats;
mod token;

pub use admission::{Admission, AdmissionLimits, Admit, Place};
pub use client::{
    ClientEstablished, ClientFailure, ClientHandshake, ClientHandshakeConfig, ClientOutput,
    HandshakeStep, ResumeTicket,
};
pub use codec::{
    DataHeader, DecodeError, EncodeError, HANDSHAKE_FRAME_LIMIT, MAX_FAILURE_MESSAGE,
    MAX_FRAME_LIMIT, MIN_FRAME_LIMIT,
};
pub use message::{ChannelKind, Message, PerChannel, PlayerId, Reason, TOKEN_LEN, Token};
pub use registry::SessionRegistry;
pub(crate) use rules::tokens_equal;
pub use rules::{FrameLimits, Inbound, InboundRules};
pub use server::{
    MAX_FEED_INITS, ResumeRequest, ServerEstablished, ServerHandshake, ServerHandshakeConfig,
    ServerOutput,
};
pub use session::{
    AttachLink, Attached, Counts, Disconnect, Event, Head, LaneSend, LinkClosed, LinkEnd, Received,
    Refused, SessionConfig, SessionMachine, Side, StreamEnd, Transmit, Wakes,
};
pub use token::{
    Entropy, EntropyError, IssuedToken, RESUME_PROOF_CONTEXT_LEN, RESUME_PROOF_LABEL,
    SystemEntropy, TokenError, WEBTRANSPORT_PROOF_LABEL, random_token, resume_proof_context,
    webtransport_resume_proof,
};

/// The ALPN protocol identifier of this protocol version.
pub const ALPN: &[u8] = b"quicfeed/1";

#[cfg(test)]
mod handshake_tests;
