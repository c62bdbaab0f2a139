//! [`Server`]: bind, accept sessions, shut down.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::broadcast::Broadcast;
use crate::certs::{BrowserCertificates, BrowserTls, Fingerprint, Identity};
use crate::config::{BrowserCertificate, ServerConfig};
use crate::driver::session::AppRef;
use crate::driver::{endpoint, server as driver};
use crate::error::ServerError;
use crate::events::{ServerCounters, ServerEvent};
use crate::prepared::Prepared;
use crate::protocol::{PlayerId, Reason};
use crate::session::{Session, SessionHandle};
use crate::stats::ServerStats;

/// How long [`Server::shutdown`] waits for close frames to be acknowledged.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// A quicfeed server: accepts connections, runs the handshake for each, and yields a
/// [`Session`] per player that completed it.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use quicfeed::{Identity, Server, ServerConfig};
///
/// let identity = Identity::generate_self_signed(&["localhost"])?;
/// let server = Server::bind(ServerConfig::new("0.0.0.0:4433".parse()?, identity)).await?;
/// while let Some(session) = server.accept().await {
///     tokio::spawn(async move {
///         while let Ok(text) = session.main().recv::<String>().await {
///             let _ = session.main().send(&format!("echo: {text}")).await;
///         }
///     });
/// }
/// # Ok(()) }
/// ```
///
/// A `Server` is a handle: clones share the server, so any task or thread can accept, look up
/// a session ([`session`](Self::session)) or broadcast. It is `Send + Sync`, and everything
/// but [`bind`](Self::bind), [`accept`](Self::accept) and [`shutdown`](Self::shutdown) works
/// without `.await`, from any thread, inside the tokio runtime or not: a fixed-step game loop
/// polls [`try_accept`](Self::try_accept) and [`ServerEvents::try_next`] each tick. The server
/// shuts down when [`shutdown`](Self::shutdown) is called or its last clone is dropped (so a
/// clone kept inside the server's own authenticator would keep it running until `shutdown`).
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: quinn::Endpoint,
    shared: Arc<driver::ServerShared>,
    /// Sessions whose handshake completed, waiting for the application. The lock is held only
    /// to take one, never across an `.await`: waiting is on `shared.session_queued`.
    sessions: Mutex<mpsc::Receiver<AppRef>>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
    /// Set once a shutdown has drained: callers of `shutdown` after the first wait for it.
    shut_down: tokio::sync::OnceCell<()>,
    local_addr: SocketAddr,
    /// The certificate presented now; its lock also orders rotations.
    fingerprint: Mutex<Fingerprint>,
    token_key: endpoint::TokenKey,
    /// The certificate browsers are shown, when the server takes them.
    browsers: Option<BrowserTls>,
    /// Replaces generated browser certificates on time; stopped with the server.
    rotation: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.inner.local_addr)
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds the UDP socket and starts accepting connections. Must be called inside a tokio
    /// runtime. Logs the address and the certificate fingerprint clients can pin.
    pub async fn bind(config: ServerConfig) -> Result<Server, ServerError> {
        Self::start(config, None)
    }

    /// Starts a server on `socket` instead of a UDP socket bound to `config.listen` (which is
    /// then ignored): an in-memory network for a simulation or a test, a relay, or any
    /// transport that carries UDP-like datagrams (see [`quinn::AsyncUdpSocket`]). Otherwise as
    /// [`bind`](Self::bind); [`local_addr`](Self::local_addr) reports the socket's address.
    pub async fn bind_with_socket(
        config: ServerConfig,
        socket: Arc<dyn quinn::AsyncUdpSocket>,
    ) -> Result<Server, ServerError> {
        Self::start(config, Some(socket))
    }

    fn start(
        config: ServerConfig,
        socket: Option<Arc<dyn quinn::AsyncUdpSocket>>,
    ) -> Result<Server, ServerError> {
        config.validate()?;
        let token_key = endpoint::token_key()?;
        let browsers = match config.webtransport.as_ref().map(|web| &web.certificate) {
            None => None,
            Some(BrowserCertificate::Identity) => Some(BrowserTls::Identity),
            Some(BrowserCertificate::Generated { names }) => Some(BrowserTls::Generated(Arc::new(
                BrowserCertificates::generate(names.clone(), SystemTime::now())?,
            ))),
        };
        let endpoint = endpoint::server(&config, &token_key, browsers.as_ref(), socket)?;
        let local_addr = endpoint.local_addr()?;
        let fingerprint = config.identity.fingerprint();
        let shared = Arc::new(driver::ServerShared::new(config));
        let (tx, rx) = mpsc::channel(64);
        let accept_task = tokio::spawn(driver::accept_loop(endpoint.clone(), shared.clone(), tx));
        if let Some(every) = shared.config.transport.stats_log_interval {
            tokio::spawn(driver::log_server(Arc::downgrade(&shared), every));
        }
        tracing::info!(address = %local_addr, %fingerprint, "quicfeed server listening");
        let rotation = match &browsers {
            Some(BrowserTls::Generated(generated)) => {
                let [current, next] = generated.hashes();
                tracing::info!(
                    path = shared.config.webtransport.as_ref().map_or("", |w| w.path.as_str()),
                    %current,
                    %next,
                    "taking browsers over WebTransport; pages pin these certificate hashes"
                );
                Some(tokio::spawn(rotate_browser_certificates(generated.clone())))
            }
            _ => None,
        };
        Ok(Server {
            inner: Arc::new(Inner {
                endpoint,
                shared,
                sessions: Mutex::new(rx),
                accept_task: Mutex::new(Some(accept_task)),
                shut_down: tokio::sync::OnceCell::new(),
                local_addr,
                fingerprint: Mutex::new(fingerprint),
                token_key,
                browsers,
                rotation,
            }),
        })
    }

    /// The address the server listens on (with the actual port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The SHA-256 fingerprint of the certificate the server presents (the newest, after a
    /// [`rotate_identity`](Self::rotate_identity)).
    pub fn fingerprint(&self) -> Fingerprint {
        *self
            .inner
            .fingerprint
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Presents `identity` to new connections from now on; established sessions, and
    /// handshakes already under way, keep the certificate they started with. Clients that pin
    /// both the old and the new certificate
    /// ([`Trust::Fingerprints`](crate::certs::Trust::Fingerprints)) notice nothing; clients
    /// pinning only the old one are refused. Retry tokens stay valid (the server keeps its token
    /// key). Resumes after the rotation cannot use 0-RTT (their tickets came from the old
    /// configuration) and take one more round trip.
    pub fn rotate_identity(&self, identity: Identity) -> Result<(), ServerError> {
        let config = endpoint::server_config(
            &self.inner.shared.config,
            &identity,
            &self.inner.token_key,
            self.inner.browsers.as_ref(),
        )?;
        let fingerprint = identity.fingerprint();
        // Held across the switch, so concurrent rotations leave the reported fingerprint that
        // of the certificate actually presented.
        let mut current = self
            .inner
            .fingerprint
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.inner.endpoint.set_server_config(Some(config));
        *current = fingerprint;
        drop(current);
        tracing::info!(%fingerprint, "server certificate rotated");
        Ok(())
    }

    /// The SHA-256 hashes browsers pin to accept the server's generated certificate
    /// ([`BrowserCertificate::Generated`]): the current certificate's, then the next one's. A page
    /// passes both as `serverCertificateHashes` (algorithm `sha-256`, the hash's 32 bytes), and
    /// still connects after the next certificate takes over; fetch them again at least every
    /// [`BROWSER_CERT_ROTATION`](crate::certs::BROWSER_CERT_ROTATION). Empty when the server takes
    /// no browsers or shows them its CA-issued identity (browsers then check it themselves).
    pub fn browser_certificate_hashes(&self) -> Vec<Fingerprint> {
        match &self.inner.browsers {
            Some(BrowserTls::Generated(generated)) => generated.hashes().to_vec(),
            _ => Vec::new(),
        }
    }

    /// The next session whose handshake completed, or `None` once the server has shut down.
    ///
    /// Cancel-safe, and several tasks may accept at once (each session goes to one of them).
    /// Sessions queue (up to 64) until accepted; handshakes wait beyond that.
    pub async fn accept(&self) -> Option<Session> {
        let mut shutdown = self.inner.shared.shutdown.subscribe();
        loop {
            // Registered before looking, so a session queued in between is not missed.
            let mut queued = pin!(self.inner.shared.session_queued.notified());
            queued.as_mut().enable();
            match self.poll_queue() {
                Queue::Session(session) => return Some(session),
                Queue::Closed => return None,
                Queue::Empty => {}
            }
            // Neither wait lasts: a session queued wakes the first, a shutdown the second
            // (after which the queue reports closed).
            tokio::select! {
                () = &mut queued => {}
                changed = shutdown.changed() => if changed.is_err() { return None },
            }
        }
    }

    /// The next session whose handshake completed, if one is waiting, without waiting: `None`
    /// when there is none yet, or once the server has shut down. For a game loop that takes in
    /// new players once a tick; works from any thread.
    pub fn try_accept(&self) -> Option<Session> {
        match self.poll_queue() {
            Queue::Session(session) => Some(session),
            Queue::Empty | Queue::Closed => None,
        }
    }

    /// Takes a queued session, under the queue's lock (held for this call only).
    fn poll_queue(&self) -> Queue {
        if self.inner.shared.shutdown.borrow().is_some() {
            // A session still queued when shutdown began has been closed by it.
            return Queue::Closed;
        }
        let taken = self
            .inner
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .try_recv();
        match taken {
            Ok(session) => Queue::Session(Session::new(session)),
            Err(mpsc::error::TryRecvError::Empty) => Queue::Empty,
            Err(mpsc::error::TryRecvError::Disconnected) => Queue::Closed,
        }
    }

    /// A handle on the established session of `player`, if there is one and the application
    /// has accepted it (and not closed it or dropped every part of it): for reaching a player
    /// from anywhere in the game without passing its session around. Sessions waiting for
    /// their client to resume are found too. The handle keeps the session open while it is
    /// held, as every [`SessionHandle`] does.
    pub fn session(&self, player: PlayerId) -> Option<SessionHandle> {
        let core = self.inner.shared.established_session(player)?;
        core.app().map(SessionHandle::new)
    }

    /// Events of every session (migrations, lost connections, resumes), from now on. A
    /// subscriber that falls more than 1024 events behind skips the oldest.
    pub fn events(&self) -> ServerEvents {
        ServerEvents {
            events: self.inner.shared.subscribe_events(),
        }
    }

    /// Counts over every session since the server started.
    pub fn counters(&self) -> ServerCounters {
        self.inner.shared.counters()
    }

    /// Connection quality over the established sessions (see [`crate::stats`]).
    pub fn stats(&self) -> ServerStats {
        self.inner.shared.stats()
    }

    /// Queues `message` on the reliable feed channel of every established session, without
    /// waiting (see [`Group::send_feed`](crate::broadcast::Group::send_feed): a session whose
    /// peer is not keeping up is reported as
    /// [`SendError::Blocked`](crate::error::SendError::Blocked) and the others get the message
    /// at once); encoded once by [`Prepared`].
    pub fn broadcast_feed(&self, message: &Prepared) -> Broadcast {
        let sessions = self.inner.shared.established_sessions();
        crate::broadcast::send_feed_to(sessions.iter(), message)
    }

    /// Sends `message` on the datagram lane of every established session, without waiting
    /// (see [`Lane`](crate::lane::Lane)).
    pub fn broadcast_lane(&self, message: &Prepared) -> Broadcast {
        let sessions = self.inner.shared.established_sessions();
        crate::broadcast::send_lane_to(sessions.iter(), message)
    }

    /// Number of live sessions, counting handshakes from the admission of their `CONN_INIT`
    /// and sessions waiting for their client to resume.
    pub fn session_count(&self) -> usize {
        self.inner.shared.registry().len()
    }

    /// Shuts the server down: stops accepting connections, refuses handshakes in progress with
    /// `CONN_FAILED(reason)`, closes every session with `reason` and `message`, and waits for
    /// the closes to reach the clients: about 4 s at most (up to 2 s for connection tasks to
    /// finish, then up to 2 s for the endpoint to drain). [`accept`](Self::accept) then returns
    /// `None`. Calling it again, from any clone, waits for the first call's drain and does
    /// nothing more (the first reason wins).
    ///
    /// Sessions are closed at once: messages still in flight are discarded, as with any QUIC
    /// close. To be sure a final message arrives, close those sessions with
    /// [`Session::close_gracefully`] first.
    pub async fn shutdown(&self, reason: Reason, message: &str) {
        self.inner.shared.request_shutdown(reason, message);
        // One drain, however many clones call this at once: the others wait for it (at most
        // the same 4 s).
        self.inner
            .shut_down
            .get_or_init(|| self.drain(reason, message))
            .await;
    }

    /// Waits for the connection tasks, then closes the endpoint and waits for it to drain.
    async fn drain(&self, reason: Reason, message: &str) {
        let task = self
            .inner
            .accept_task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            // The loop closes the endpoint itself once every connection is closed; a task stuck
            // on an unresponsive client is cut short by closing the endpoint here.
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, task).await;
        }
        self.inner.endpoint.close(
            reason.code().into(),
            crate::driver::link::truncate(message).as_bytes(),
        );
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, self.inner.endpoint.wait_idle()).await;
        tracing::info!(address = %self.inner.local_addr, %reason, "quicfeed server shut down");
    }
}

/// What the accept queue had.
enum Queue {
    Session(Session),
    Empty,
    Closed,
}

impl Drop for Inner {
    /// Dropping the last clone of a server without [`shutdown`](Server::shutdown) starts the
    /// same shutdown with [`Reason::ServerShutdown`] in the background (in the tokio runtime,
    /// which must still be running), without waiting for it.
    fn drop(&mut self) {
        if let Some(rotation) = &self.rotation {
            rotation.abort();
        }
        self.shared
            .request_shutdown(Reason::ServerShutdown, "server dropped");
    }
}

/// Lets each generated browser certificate's successor take over when its time comes, for as
/// long as the server runs. Each wait lasts until the next rotation, or an hour at most, so a
/// clock that jumps is noticed within the hour (and a failed rotation is retried an hour on).
async fn rotate_browser_certificates(certificates: Arc<BrowserCertificates>) {
    // The clock may jump (a suspended machine): look at least this often.
    const RECHECK: Duration = Duration::from_secs(3600);
    // How long before its expiry a certificate that could not be replaced is an error.
    const EXPIRY_ALARM: Duration = Duration::from_secs(24 * 3600);
    loop {
        let wait = certificates
            .rotate_at()
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .min(RECHECK);
        tokio::time::sleep(wait).await;
        match certificates.rotate_if_due(SystemTime::now()) {
            Ok(false) => {}
            Ok(true) => {
                let [current, next] = certificates.hashes();
                tracing::info!(%current, %next, "browser certificate replaced; pages pin these hashes");
            }
            Err(e) => {
                let expires = certificates.current_expires();
                let left = expires
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                let hours = left.as_secs() / 3600;
                if left < EXPIRY_ALARM {
                    tracing::error!(error = %e, hours_left = hours, "cannot make a new browser certificate and the current one expires within a day: browsers will fail to connect then; trying again in an hour");
                } else {
                    tracing::warn!(error = %e, hours_left = hours, "cannot make a new browser certificate; the newest one is presented and pinned as current and next; trying again in an hour");
                }
            }
        }
    }
}

/// The events of a server's sessions. See [`Server::events`].
#[derive(Debug)]
pub struct ServerEvents {
    events: tokio::sync::broadcast::Receiver<ServerEvent>,
}

impl ServerEvents {
    /// The next event if one has happened, without waiting: `None` when there is none yet or
    /// the server is gone. Works from any thread; a game loop drains them once a tick.
    pub fn try_next(&mut self) -> Option<ServerEvent> {
        loop {
            match self.events.try_recv() {
                Ok(event) => return Some(event),
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    }

    /// The next event, or `None` once the server is gone.
    pub async fn next(&mut self) -> Option<ServerEvent> {
        loop {
            match self.events.recv().await {
                Ok(event) => return Some(event),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
