//! WebTransport sessions (browser players) as links: the same two streams and datagrams as a
//! native connection, inside an HTTP/3 session on the same quinn endpoint.
//!
//! `wtransport` runs the HTTP/3 side (settings, the extended CONNECT, the session's stream and
//! datagram headers) on the quinn connection whose ALPN is `h3`; quicfeed then sees two
//! bidirectional streams and datagrams, exactly as on a native connection (PROTOCOL.md §14).
//! Every stream operation goes to the quinn stream under the WebTransport one, whose header
//! `wtransport` has already read or written, so framing, flow control and priorities are quinn's
//! own, as on a native connection.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;

use super::link::{
    DatagramRefused, Link, LinkHandle, PathSample, StreamError, StreamRecv, StreamSend,
    link_closed, truncate,
};
use super::session::lock;
use crate::config::WebTransportConfig;
use crate::protocol::{LinkClosed, PlayerId, Reason, Token, codec, webtransport_resume_proof};

/// The ALPN protocol of HTTP/3, which browsers offer for WebTransport.
pub(crate) use crate::certs::BROWSER_ALPN as ALPN;

/// Why a browser's WebTransport session was not opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SetupError {
    /// The QUIC connection or its HTTP/3 setup failed.
    #[error("HTTP/3 setup failed: {0}")]
    Http3(#[from] wtransport::error::ConnectionError),
    /// The CONNECT request named a path this server does not serve (answered 404).
    #[error("CONNECT for {0:?}, which is not the WebTransport path (answered 404)")]
    Path(String),
    /// The page's origin is not allowed (answered 403).
    #[error("CONNECT from origin {0:?}, which is not allowed (answered 403)")]
    Origin(Option<String>),
}

/// Runs the HTTP/3 side of a browser's connection up to its WebTransport session: settings, then
/// the extended CONNECT, answered 200 if its path and origin are the configured ones. Not
/// bounded here: the caller's handshake deadline bounds it.
pub(crate) async fn accept(
    connecting: quinn::Connecting,
    config: &WebTransportConfig,
) -> Result<WebTransportLink, SetupError> {
    let request =
        wtransport::endpoint::IncomingSessionFuture::with_quic_connecting(connecting).await?;
    if request.path() != config.path {
        let path = request.path().to_owned();
        request.not_found().await;
        return Err(SetupError::Path(path));
    }
    if !config.allows_origin(request.origin()) {
        let origin = request.origin().map(str::to_owned);
        request.forbidden().await;
        return Err(SetupError::Origin(origin));
    }
    Ok(WebTransportLink::new(request.accept().await?))
}

/// A WebTransport session as the session machine's link.
#[derive(Clone)]
pub(crate) struct WebTransportLink {
    session: wtransport::Connection,
    /// Whether this side closed the connection (through [`LinkHandle::close`]): a close this
    /// side did not ask for was `wtransport`'s answer to the browser ending the session.
    closed_here: Arc<AtomicBool>,
    /// The runtime the farewell of [`LinkHandle::close`] runs on (a close may come from any
    /// thread); `None` outside one, and then the close is sent without a farewell.
    runtime: Option<tokio::runtime::Handle>,
    /// The farewell in progress, once this side has closed.
    farewell: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// The stream halves let go of before the close (see [`Held`]).
    held: Arc<Held>,
}

/// Stream halves the session let go of while its connection is open, kept until this side's
/// close has been made. Dropping a quinn stream half finishes it (sending) or stops it
/// (receiving), and a page reads a stopped or reset stream as the server giving up the
/// connection (PROTOCOL.md §3.3): it would resume, and be told `UNKNOWN_SESSION`, before the
/// farewell that says why the session ended (§14.6) reached it. The session lets its streams go
/// as soon as it ends, while the farewell is still on its way; so they wait here, and are
/// dropped only after the close (when dropping them sends nothing). If the connection ends
/// without a close from this side, they go with the link's last handle.
#[derive(Default)]
struct Held(Mutex<HeldHalves>);

#[derive(Default)]
struct HeldHalves {
    /// This side's close has been made: a half let go of from now on is dropped at once.
    released: bool,
    halves: Vec<Half>,
}

/// A stream half kept by [`Held`]: held for its drop, never read again.
#[expect(dead_code, reason = "the halves are kept only to be dropped later")]
enum Half {
    Send(wtransport::SendStream),
    Recv(wtransport::RecvStream),
}

impl Held {
    /// Keeps `half` until the close, or drops it now (outside the lock) if that was made.
    fn keep(&self, half: Half) {
        let mut held = lock(&self.0);
        if !held.released {
            held.halves.push(half);
        }
    }

    /// The close has been made: drops what was kept (outside the lock).
    fn release(&self) {
        let halves = {
            let mut held = lock(&self.0);
            held.released = true;
            std::mem::take(&mut held.halves)
        };
        drop(halves);
    }
}

/// How long a close waits for the page to acknowledge its farewell stream before the QUIC
/// close, which would discard it (PROTOCOL.md §14.6).
pub(crate) const FAREWELL_LINGER: Duration = Duration::from_secs(1);

impl WebTransportLink {
    pub(crate) fn new(session: wtransport::Connection) -> Self {
        WebTransportLink {
            session,
            closed_here: Arc::new(AtomicBool::new(false)),
            runtime: tokio::runtime::Handle::try_current().ok(),
            farewell: Arc::new(Mutex::new(None)),
            held: Arc::default(),
        }
    }

    /// Waits until this side's close, if it made one, has gone out: its farewell acknowledged
    /// or [`FAREWELL_LINGER`] passed. The connection's task awaits this last, so a server's
    /// drain (which waits for those tasks) does not cut the farewell short.
    pub(crate) async fn farewell_sent(&self) {
        let task = lock(&self.farewell).take();
        match task {
            // The task bounds itself by FAREWELL_LINGER; a failure in it is no concern here.
            Some(task) => {
                let _ = task.await;
            }
            // A close can come after the connection's task has ended (a session's closes are
            // made once its lock is released, possibly in another task): wait for the
            // connection's end, as long as a farewell can take. At once if it has ended.
            None => {
                let _ = tokio::time::timeout(FAREWELL_LINGER, self.quic().closed()).await;
            }
        }
    }

    fn quic(&self) -> &quinn::Connection {
        self.session.quic_connection()
    }

    /// How the connection ended, in the protocol core's terms.
    fn ended(&self) -> LinkClosed {
        let closed = match self.quic().close_reason() {
            Some(error) => link_closed(&error),
            None => LinkClosed::Transport("the WebTransport session ended".into()),
        };
        browser_terms(closed, &self.closed_here)
    }
}

/// A connection's ending as it counts for a browser's session. A browser cannot choose a QUIC
/// close code (its closes carry HTTP/3 codes), so no close from it is a quicfeed reason: it is a
/// transport ending, which keeps the session for a resume (PROTOCOL.md §14.6); a page that means
/// to end its session finishes its streams first (§9.3). Nor is a close this side did not ask
/// for: `wtransport` closes the connection itself when the page closes its WebTransport session.
fn browser_terms(closed: LinkClosed, closed_here: &AtomicBool) -> LinkClosed {
    match closed {
        LinkClosed::Application { code, .. } => LinkClosed::Transport(format!(
            "the browser closed its WebTransport connection (HTTP/3 code 0x{code:x})"
        )),
        LinkClosed::Locally if !closed_here.load(Ordering::Acquire) => {
            LinkClosed::Transport("the browser ended its WebTransport session".into())
        }
        other => other,
    }
}

/// A stream error with its connection ending in [`browser_terms`].
fn stream_terms(error: StreamError, closed_here: &AtomicBool) -> StreamError {
    match error {
        StreamError::Lost(closed) => StreamError::Lost(browser_terms(closed, closed_here)),
        other => other,
    }
}

/// The sending half of a browser's stream. `stream` is `None` only once dropped: its drop hands
/// the stream to the link's [`Held`].
pub(crate) struct WebTransportSend {
    stream: Option<wtransport::SendStream>,
    closed_here: Arc<AtomicBool>,
    held: Arc<Held>,
}

/// The receiving half of a browser's stream (`stream` as in [`WebTransportSend`]).
pub(crate) struct WebTransportRecv {
    stream: Option<wtransport::RecvStream>,
    closed_here: Arc<AtomicBool>,
    held: Arc<Held>,
}

impl Drop for WebTransportSend {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            self.held.keep(Half::Send(stream));
        }
    }
}

impl Drop for WebTransportRecv {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            self.held.keep(Half::Recv(stream));
        }
    }
}

/// A close to make: made when this is dropped, so a farewell task that is cancelled (its
/// runtime shutting down) still closes the connection.
struct Closing {
    session: wtransport::Connection,
    code: wtransport::VarInt,
    message: String,
    held: Arc<Held>,
}

impl Closing {
    fn new(link: &WebTransportLink, reason: Reason, message: &str) -> Self {
        Closing {
            session: link.session.clone(),
            code: wtransport::VarInt::from_u32(u32::from(reason.code())),
            message: truncate(message).to_owned(),
            held: link.held.clone(),
        }
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        self.session.close(self.code, self.message.as_bytes());
        self.held.release();
    }
}

impl LinkHandle for WebTransportLink {
    /// A page cannot read a QUIC close code, so the close is said first as a `CONN_FAILED` on a
    /// unidirectional stream of its own (the farewell), then made, once the page has it or after
    /// [`FAREWELL_LINGER`], with the code as on a native connection (PROTOCOL.md §14.6).
    fn close(&self, reason: Reason, message: &str) {
        // The flag and the stored task change together, under the lock: a later close, or
        // [`farewell_sent`](Self::farewell_sent), sees both or neither.
        let mut farewell = lock(&self.farewell);
        if self.closed_here.swap(true, Ordering::AcqRel) {
            return; // the first close wins
        }
        let closing = Closing::new(self, reason, message);
        let frame = codec::encode_message(&codec::conn_failed(reason, &closing.message, None));
        let (Some(runtime), Ok(frame)) = (&self.runtime, frame) else {
            return drop(closing);
        };
        *farewell = Some(runtime.spawn(async move {
            let said = async {
                let mut stream = closing.session.open_uni().await.ok()?.await.ok()?;
                stream.write_all(&frame).await.ok()?;
                // Resolves once the page has acknowledged the whole stream.
                stream.finish().await.ok()
            };
            let _ = tokio::time::timeout(FAREWELL_LINGER, said).await;
            // `closing` closes the connection as it goes, here or if the task is cancelled.
        }));
    }

    fn close_at_once(&self, reason: Reason, message: &str) {
        let _farewell = lock(&self.farewell);
        if !self.closed_here.swap(true, Ordering::AcqRel) {
            drop(Closing::new(self, reason, message));
        }
    }

    fn send_datagram(&self, datagram: Bytes) -> Result<(), DatagramRefused> {
        self.session.send_datagram(&datagram).map_err(|e| match e {
            wtransport::error::SendDatagramError::TooLarge => DatagramRefused::TooLarge,
            _ => DatagramRefused::Unavailable,
        })
    }

    fn datagram_queued(&self) -> usize {
        LinkHandle::datagram_queued(self.quic())
    }

    fn max_datagram_size(&self) -> Option<usize> {
        // Less the session's prefix on each datagram.
        self.session.max_datagram_size()
    }

    fn remote_address(&self) -> SocketAddr {
        self.quic().remote_address()
    }

    fn rtt(&self) -> Duration {
        self.quic().rtt()
    }

    fn sample(&self) -> PathSample {
        LinkHandle::sample(self.quic())
    }
}

impl Link for WebTransportLink {
    type Send = WebTransportSend;
    type Recv = WebTransportRecv;

    async fn read_datagram(&self) -> Result<Bytes, LinkClosed> {
        match self.session.receive_datagram().await {
            Ok(datagram) => Ok(datagram.payload()),
            Err(_) => Err(self.ended()),
        }
    }

    async fn accept_bi(&self) -> Result<(Self::Send, Self::Recv), LinkClosed> {
        match self.session.accept_bi().await {
            Ok((send, recv)) => Ok((
                WebTransportSend {
                    stream: Some(send),
                    closed_here: self.closed_here.clone(),
                    held: self.held.clone(),
                },
                WebTransportRecv {
                    stream: Some(recv),
                    closed_here: self.closed_here.clone(),
                    held: self.held.clone(),
                },
            )),
            Err(_) => Err(self.ended()),
        }
    }

    fn resume_proof(&self, credential: &Token, player_id: PlayerId) -> Option<Token> {
        Some(webtransport_resume_proof(credential, player_id))
    }

    fn handle(&self) -> Arc<dyn LinkHandle> {
        Arc::new(self.clone())
    }
}

impl StreamSend for WebTransportSend {
    async fn write_chunks(&mut self, chunks: &mut [Bytes]) -> Result<(), StreamError> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(StreamError::Closed);
        };
        StreamSend::write_chunks(stream.quic_stream_mut(), chunks)
            .await
            .map_err(|e| stream_terms(e, &self.closed_here))
    }

    fn finish(&mut self) {
        if let Some(stream) = self.stream.as_mut() {
            StreamSend::finish(stream.quic_stream_mut());
        }
    }

    fn stopped(&mut self) -> impl Future<Output = ()> + Send {
        if_some(
            self.stream
                .as_mut()
                .map(|stream| StreamSend::stopped(stream.quic_stream_mut())),
        )
    }

    fn acknowledged(&self) -> impl Future<Output = ()> + Send + 'static {
        if_some(
            self.stream
                .as_ref()
                .map(|stream| StreamSend::acknowledged(stream.quic_stream())),
        )
    }

    fn set_priority(&self, priority: i32) {
        if let Some(stream) = self.stream.as_ref() {
            StreamSend::set_priority(stream.quic_stream(), priority);
        }
    }
}

/// Awaits `future`, if there is one (a half's stream is gone only once the half is dropped).
async fn if_some(future: Option<impl Future<Output = ()>>) {
    if let Some(future) = future {
        future.await;
    }
}

impl StreamRecv for WebTransportRecv {
    async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, StreamError> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(StreamError::Closed);
        };
        StreamRecv::read_chunk(stream.quic_stream_mut(), max)
            .await
            .map_err(|e| stream_terms(e, &self.closed_here))
    }
}
