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
//!
//! What the authenticator learns about a player (its account, team, the matchmaker's ticket)
//! can travel with the session: attach it with [`AuthDecision::with_data`] and read it on the
//! server with [`Session::user_data`](crate::Session::user_data).
//!
//! ```
//! use quicfeed::{AuthDecision, AuthRequest};
//!
//! struct Account { name: String, team: u8 }
//!
//! let hook = |request: AuthRequest| async move {
//!     match std::str::from_utf8(&request.credentials) {
//!         Ok(name) if !name.is_empty() => AuthDecision::Accept
//!             .with_data(Account { name: name.to_owned(), team: (name.len() % 2) as u8 }),
//!         _ => AuthDecision::reject("sign in first"),
//!     }
//! };
//! # fn takes(_: impl quicfeed::Authenticator) {}
//! # takes(hook);
//! ```

use std::any::Any;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
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
    /// Admit the client (as `player`, or with the next free sequential ID when `None`) and keep
    /// `data` with its session, for the server to read with
    /// [`Session::user_data`](crate::Session::user_data). Made by [`with_data`](Self::with_data).
    AcceptWith {
        /// The player ID asked for, as in [`AcceptAs`](Self::AcceptAs).
        player: Option<PlayerId>,
        /// What the authenticator decided about the player.
        data: UserData,
    },
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

    /// Keeps `data` with the session this decision admits (see [`UserData`]): turns
    /// [`Accept`](Self::Accept) and [`AcceptAs`](Self::AcceptAs) into
    /// [`AcceptWith`](Self::AcceptWith), replaces the data of an `AcceptWith`, and leaves a
    /// refusal as it is.
    pub fn with_data<T: Any + Send + Sync>(self, data: T) -> Self {
        let player = match self {
            AuthDecision::Accept => None,
            AuthDecision::AcceptAs(player) => Some(player),
            AuthDecision::AcceptWith { player, .. } => player,
            refusal @ AuthDecision::Reject { .. } => return refusal,
        };
        AuthDecision::AcceptWith {
            player,
            data: UserData::new(data),
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

/// A typed value an [`Authenticator`] attaches to the session it admits (an account, a team,
/// a matchmaker's ticket), shared, never copied: read it with
/// [`Session::user_data`](crate::Session::user_data) or
/// [`SessionHandle::user_data`](crate::SessionHandle::user_data). It stays with the session
/// across migrations and resumes, and never goes to the client. Two `UserData` are equal when
/// they are the same value (not merely equal values).
#[derive(Clone)]
pub struct UserData(Arc<dyn Any + Send + Sync>);

impl UserData {
    /// Wraps `value`.
    pub fn new<T: Any + Send + Sync>(value: T) -> Self {
        UserData(Arc::new(value))
    }

    /// The value, if it is a `T`.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }
}

impl std::fmt::Debug for UserData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UserData(..)")
    }
}

impl PartialEq for UserData {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for UserData {}

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
