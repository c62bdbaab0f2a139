//! The server's authentication hook: admit or refuse each `CONN_INIT`, and choose the player ID.
//!
//! ```
//! use quicfeed::{AuthDecision, AuthRequest, PlayerId};
//!
//! // Admit clients whose ticket is "let-me-in", as player 1000 + ticket length; refuse others.
//! let hook = |request: AuthRequest| async move {
//!     if &request.credentials[..] == b"let-me-in" {
//!         AuthDecision::AcceptAs(PlayerId(1000 + request.credentials.len() as u64))
//!     } else {
//!         AuthDecision::reject("unknown ticket")
//!     }
//! };
//! # fn takes(_: impl quicfeed::Authenticator) {}
//! # takes(hook);
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

use crate::protocol::{PlayerId, Reason};

/// What the server knows about a client when it asks the [`Authenticator`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AuthRequest {
    /// The credentials from `CONN_INIT` (empty when the client sent none).
    pub credentials: Bytes,
    /// The client's UDP address.
    pub remote_address: SocketAddr,
}

/// The [`Authenticator`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthDecision {
    /// Admit the client with the next free sequential player ID.
    Accept,
    /// Admit the client as this player. If the ID has a live session the client is refused
    /// with [`Reason::PlayerIdInUse`].
    AcceptAs(PlayerId),
    /// Refuse: the client gets `CONN_FAILED` with this reason and message.
    Reject {
        /// Usually [`Reason::AuthRefused`], or an application code
        /// ([`Reason::Application`]).
        reason: Reason,
        /// Shown to the client; at most 256 bytes are sent.
        message: String,
        /// A hint for the client of when to try again (a temporary ban, a full match);
        /// `None` for no hint.
        retry_after: Option<Duration>,
    },
}

impl AuthDecision {
    /// Refuses with [`Reason::AuthRefused`] and `message`.
    pub fn reject(message: impl Into<String>) -> Self {
        AuthDecision::Reject {
            reason: Reason::AuthRefused,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Adds a hint of when the client may try again to a refusal (no effect on an
    /// acceptance).
    pub fn retry_after(self, after: Duration) -> Self {
        match self {
            AuthDecision::Reject {
                reason, message, ..
            } => AuthDecision::Reject {
                reason,
                message,
                retry_after: Some(after),
            },
            accept => accept,
        }
    }
}

/// Decides whether a client may open a session, and as which player.
///
/// Called once per `CONN_INIT`, before any token is issued; the time it takes counts against the
/// server's handshake timeout. It may await (e.g. ask a matchmaker). Implemented for async
/// closures `Fn(AuthRequest) -> impl Future<Output = AuthDecision>`.
pub trait Authenticator: Send + Sync + 'static {
    /// Admits or refuses one client.
    fn authenticate(&self, request: AuthRequest) -> impl Future<Output = AuthDecision> + Send;
}

impl<F, Fut> Authenticator for F
where
    F: Fn(AuthRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = AuthDecision> + Send,
{
    fn authenticate(&self, request: AuthRequest) -> impl Future<Output = AuthDecision> + Send {
        self(request)
    }
}

/// The default authenticator: admits everyone with a sequential player ID.
#[derive(Debug, Clone, Copy, Default)]
pub struct AcceptAll;

impl Authenticator for AcceptAll {
    async fn authenticate(&self, _request: AuthRequest) -> AuthDecision {
        AuthDecision::Accept
    }
}

/// A boxed decision in progress.
pub(crate) type PendingDecision<'a> = Pin<Box<dyn Future<Output = AuthDecision> + Send + 'a>>;

/// Object-safe form of [`Authenticator`], so a config can hold any of them.
pub(crate) trait DynAuthenticator: Send + Sync + 'static {
    fn authenticate_boxed(&self, request: AuthRequest) -> PendingDecision<'_>;
}

impl<A: Authenticator> DynAuthenticator for A {
    fn authenticate_boxed(&self, request: AuthRequest) -> PendingDecision<'_> {
        Box::pin(self.authenticate(request))
    }
}
