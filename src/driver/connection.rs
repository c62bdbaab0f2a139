//! The task of one attached connection: it owns both streams' reads and writes and the
//! connection's datagrams, and drives the session machine with them.
//!
//! Every incoming frame and datagram is handed to the machine as it arrives (acknowledgements
//! and violations included), whatever the application does; a stream is only left unread while
//! its channel's delivery queue is full, which back-pressures that direction alone. Writes never
//! hold up reads: each stream's pending frames are flushed in their own `select!` branch, next
//! to the reads, so a peer that withholds flow-control credit slows our writes and nothing else.
//!
//! Waits, and what bounds them: the `select!` resolves on any read, write progress, datagram,
//! wake-up from the application, timer or the connection's end; the machine's timers (dead
//! path, acknowledgements, finished-stream grace, close linger) bound how long nothing happens.
//! On a server the dead-path check and the statistics sample are made for every session from
//! the accept loop's one timer (`SessionCore::check_link`), so they wake no connection task;
//! the task still samples whenever one of its own deadlines is due.
//! While lane messages wait for QUIC to take them, the task also looks again every
//! millisecond (QUIC says nothing when its datagram queue empties); it stops when none wait.
//! Both deadlines share one timer, armed at the earlier.

use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use tracing::debug;

use std::sync::Mutex;

use super::link::{DATAGRAM_BOOKKEEPING, Link, StreamError, StreamRecv, StreamSend};
use super::now;
use super::session::{Counters, InlineWrite, SessionCore, lock};
use super::stream::{FrameReader, FrameWriter, ReadFailure};
use crate::protocol::{
    ChannelKind, LinkEnd, PerChannel, Refused, SessionMachine, StreamEnd, Transmit,
};

/// Most bytes of frames taken from the machine for one write.
const BATCH_BYTES: usize = 64 * 1024;
/// Most frames taken from the machine for one write.
const BATCH_FRAMES: usize = 64;
/// Most further reads taken after one, while data is already there.
const READ_AHEAD: usize = 8;
/// Most ready datagrams taken in one round.
const DATAGRAM_BATCH: usize = 64;

/// One channel's stream on the attached connection.
pub(crate) struct ChannelStream<L: Link> {
    pub(crate) writer: FrameWriter<L::Send>,
    pub(crate) reader: FrameReader<L::Recv>,
}

impl<L: Link> ChannelStream<L> {
    /// A stream whose handshake is over, its reader now held to the session's frame limit.
    pub(crate) fn established(
        writer: FrameWriter<L::Send>,
        mut reader: FrameReader<L::Recv>,
        frame_limit: usize,
    ) -> Self {
        reader.set_limit(frame_limit);
        ChannelStream { writer, reader }
    }
}

/// A connection's two streams, as the handshake left them.
pub(crate) struct Streams<L: Link> {
    pub(crate) main: ChannelStream<L>,
    pub(crate) feed: ChannelStream<L>,
}

/// What the task must do in this round, read from the machine under its lock.
struct Plan {
    read: PerChannel<bool>,
    /// Writers with queued frames to flush.
    pending: PerChannel<bool>,
    datagrams: Vec<Bytes>,
    /// Lane messages that waited, to hand to QUIC now.
    lanes: Vec<Bytes>,
    timeout: Option<Instant>,
    /// When to look again whether QUIC can take a waiting lane message.
    lane_recheck: Option<Instant>,
}

/// Runs connection `generation` of `core` until the session no longer uses it; returns how it
/// ended for the session.
pub(crate) async fn run<L: Link>(
    core: &Arc<SessionCore>,
    generation: u64,
    link: L,
    streams: Box<Streams<L>>,
    priorities: (i32, i32),
) -> LinkEnd {
    let (writers, mut main_r, mut feed_r) = start(core, generation, streams, priorities);
    let handle = link.handle();
    let mut datagram = pin!(link.read_datagram());
    // One timer for the machine's deadline and the lane's recheck (while messages wait for
    // QUIC), armed at the earlier. A round woken by the recheck alone runs nothing but the
    // lane's hand-over: the statistics sample and the liveness check (a client's; a server's
    // are made from its accept loop) wait for `timer_at`.
    let mut timer = pin!(tokio::time::sleep_until(tokio::time::Instant::now()));
    let mut timer_at: Option<Instant> = None;
    let mut lane_timer_at: Option<Instant> = None;
    let mut armed_at: Option<Instant> = None;
    let mut ended_streams = PerChannel::both(false);
    // A finished stream's acknowledgement, which a graceful close waits for (bounded by the
    // close's linger: the machine's timer).
    let mut acknowledged: PerChannel<Option<Acknowledged>> = PerChannel::default();
    let mut feed_first = false;
    // Frames that arrived behind the handshake's last message are already buffered.
    for kind in [ChannelKind::Main, ChannelKind::Feed] {
        let reader = match kind {
            ChannelKind::Main => &mut main_r,
            ChannelKind::Feed => &mut feed_r,
        };
        if let Err(end) = on_read(core, generation, kind, Ok(()), reader) {
            *ended_streams.get_mut(kind) = true;
            if let Some(closed) = end {
                return end_with(
                    core,
                    generation,
                    &closed,
                    &mut main_r,
                    &mut feed_r,
                    &mut ended_streams,
                );
            }
        }
    }

    loop {
        // In a block: what the round plans is not kept across the wait below (nor in the
        // task's future for the session's life), only which streams to read and to flush.
        let (want_read, pending) = {
            // Datagrams already received go in first, so a flood on a stream cannot hold up the
            // acknowledgement datagrams behind it.
            let mut ready = Vec::new();
            while ready.len() < DATAGRAM_BATCH {
                match poll_now(datagram.as_mut()) {
                    Some(Ok(bytes)) => {
                        ready.push(bytes);
                        datagram.set(link.read_datagram());
                    }
                    Some(Err(closed)) => {
                        // The connection has ended (its datagrams all read): so has this task.
                        core.update(|m, now| {
                            for bytes in ready {
                                m.handle_datagram(generation, bytes, now);
                            }
                        });
                        return end_with(
                            core,
                            generation,
                            &closed,
                            &mut main_r,
                            &mut feed_r,
                            &mut ended_streams,
                        );
                    }
                    None => break,
                }
            }
            let due = timer_at.is_some_and(|t| t <= now());
            let sample = due.then(|| handle.sample());
            // What QUIC holds unsent, asked only while lane messages wait (the recheck is armed;
            // a message that has just started to wait arms it in this round and is looked at when
            // it fires), and before the session's lock: quinn's own lock is taken inside.
            let quic_datagrams = lane_timer_at
                .is_some()
                .then(|| (handle.datagram_queued(), handle.max_datagram_size()));
            // Lock order: the writers, then the session (as a send that writes at once takes them).
            let plan = {
                let mut streams = lock(&writers.streams);
                if due {
                    // An idle session holds no write queue: given back on the machine's timer
                    // (and a server's shared check) once a whole interval passed with nothing
                    // queued, not after every write.
                    streams.main.writer.release_idle();
                    streams.feed.writer.release_idle();
                }
                core.update(|m, now| {
                    for bytes in ready {
                        m.handle_datagram(generation, bytes, now);
                    }
                    if let Some(sample) = &sample {
                        m.handle_received(generation, sample.received_datagrams, now);
                        m.handle_timeout(now);
                    }
                    if !m.is_attached(generation) {
                        return None;
                    }
                    for kind in [ChannelKind::Main, ChannelKind::Feed] {
                        let slot = streams.get_mut(kind);
                        if !slot.writer.has_pending() && !slot.finishing && !slot.finished {
                            slot.finishing = fill(m, generation, kind, &mut slot.writer);
                        }
                        // Finished once everything queued before the end is written.
                        slot.finish_if_written();
                    }
                    let pending = PerChannel {
                        main: streams.main.writer.has_pending(),
                        feed: streams.feed.writer.has_pending(),
                    };
                    for kind in [ChannelKind::Main, ChannelKind::Feed] {
                        if let Some(ack) = streams.get_mut(kind).acknowledged.take() {
                            *acknowledged.get_mut(kind) = Some(ack);
                        }
                    }
                    let mut datagrams = Vec::new();
                    let mut lanes = Vec::new();
                    while let Some(d) = m.poll_datagram(generation) {
                        datagrams.push(d);
                    }
                    // Lane messages that waited for QUIC: the first when it holds nothing unsent,
                    // then the rest of that burst (counted as queued as they are handed over).
                    if let Some((mut queued, max)) = quic_datagrams {
                        while let Some(d) = m.poll_lane(generation, queued, max, now) {
                            queued =
                                queued.saturating_add(d.len().saturating_add(DATAGRAM_BOOKKEEPING));
                            lanes.push(d);
                        }
                    }
                    Some(Plan {
                        read: PerChannel {
                            main: !ended_streams.main
                                && wants_read(m, generation, ChannelKind::Main, &mut main_r),
                            feed: !ended_streams.feed
                                && wants_read(m, generation, ChannelKind::Feed, &mut feed_r),
                        },
                        pending,
                        datagrams,
                        lanes,
                        timeout: m.poll_timeout(),
                        lane_recheck: m.poll_lane_recheck(),
                    })
                })
            };
            if let Some(sample) = sample {
                core.sample(now(), generation, &sample);
                core.note_remote(generation, handle.remote_address());
            }
            let Some(plan) = plan else {
                return ended(core, generation);
            };
            for datagram in plan.datagrams {
                // Best effort: an acknowledgement datagram that does not go out is covered by the
                // next one and by the in-band acknowledgements.
                let _ = handle.send_datagram(datagram);
            }
            for datagram in plan.lanes {
                match handle.send_datagram(datagram) {
                    Ok(()) => Counters::bump(&core.counters.datagrams_sent, 1),
                    Err(_) => Counters::bump(&core.counters.datagrams_unsent, 1),
                }
            }
            timer_at = plan.timeout;
            lane_timer_at = plan.lane_recheck;
            let wake_at = match (timer_at, lane_timer_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if wake_at != armed_at {
                armed_at = wake_at;
                if let Some(t) = armed_at {
                    timer.as_mut().reset(t.into());
                }
            }
            (plan.read, plan.pending)
        };
        feed_first = !feed_first;

        tokio::select! {
            biased;
            () = core.connection_notified() => {}
            written = writers.flush(ChannelKind::Main), if pending.main => {
                on_written(core, generation, ChannelKind::Main, written);
            }
            written = writers.flush(ChannelKind::Feed), if pending.feed => {
                on_written(core, generation, ChannelKind::Feed, written);
            }
            (kind, read) = next_read(&mut main_r, &mut feed_r, want_read, feed_first) => {
                let reader = match kind {
                    ChannelKind::Main => &mut main_r,
                    ChannelKind::Feed => &mut feed_r,
                };
                match on_read(core, generation, kind, read, reader) {
                    Ok(Read::Drained { delivered }) => {
                        // Everything that arrived is taken in, so the receiver these frames
                        // woke (next on this worker) runs before this task's next round, and
                        // its reply leaves at once: it writes in its own task. (Not while
                        // more waits in the stream: reading it on is what keeps the peer's
                        // flow-control window open; nor when the frames woke no receiver, as
                        // the peer's acknowledgements do.)
                        if delivered {
                            tokio::task::yield_now().await;
                        }
                    }
                    Ok(Read::More) => {}
                    Err(end) => {
                        *ended_streams.get_mut(kind) = true;
                        if let Some(closed) = end {
                            return end_with(
                                core,
                                generation,
                                &closed,
                                &mut main_r,
                                &mut feed_r,
                                &mut ended_streams,
                            );
                        }
                    }
                }
            }
            received = &mut datagram => {
                match received {
                    Ok(bytes) => {
                        core.update(|m, now| m.handle_datagram(generation, bytes, now));
                        datagram.set(link.read_datagram());
                    }
                    Err(closed) => {
                        return end_with(
                            core,
                            generation,
                            &closed,
                            &mut main_r,
                            &mut feed_r,
                            &mut ended_streams,
                        );
                    }
                }
            }
            () = acknowledged_or_never(&mut acknowledged.main) => {
                acknowledged.main = None;
                core.update(|m, _| m.handle_finish_acknowledged(generation, ChannelKind::Main));
            }
            () = acknowledged_or_never(&mut acknowledged.feed) => {
                acknowledged.feed = None;
                core.update(|m, _| m.handle_finish_acknowledged(generation, ChannelKind::Feed));
            }
            () = &mut timer, if armed_at.is_some() => {}
        }
    }
}

/// Hands the connection's writers to the session (for sends that write at once) and returns
/// them with the readers. Not async, so that neither the streams' moved-from slots nor their
/// box outlive this call (in the connection task's future, for the session's life).
#[allow(clippy::type_complexity)]
#[expect(
    clippy::boxed_local,
    reason = "the box is freed here, not at the end of the connection task"
)]
fn start<L: Link>(
    core: &Arc<SessionCore>,
    generation: u64,
    streams: Box<Streams<L>>,
    priorities: (i32, i32),
) -> (
    Arc<Writers<L::Send>>,
    FrameReader<L::Recv>,
    FrameReader<L::Recv>,
) {
    let Streams {
        main: ChannelStream {
            writer: main_w,
            reader: main_r,
        },
        feed: ChannelStream {
            writer: feed_w,
            reader: feed_r,
        },
    } = *streams;
    main_w.set_priority(priorities.0);
    feed_w.set_priority(priorities.1);
    let writers = Arc::new(Writers {
        generation,
        streams: Mutex::new(PerChannel {
            main: Slot::new(main_w),
            feed: Slot::new(feed_w),
        }),
    });
    core.set_writers(generation, writers.clone());
    (writers, main_r, feed_r)
}

/// Waits for a finished stream's acknowledgement, or forever when there is none.
async fn acknowledged_or_never(acknowledged: &mut Option<Acknowledged>) {
    match acknowledged {
        Some(ack) => ack.await,
        None => std::future::pending().await,
    }
}

/// Both streams' writers, shared by the connection task and the application's sends: a send
/// whose writer is idle writes at once in the sender's task, without waking this one (one task
/// hop less per message). The lock is held only for polls that do not wait (the lock rule of
/// `super::session`): the task's flushes are polled through it, never awaited inside it.
struct Writers<W> {
    generation: u64,
    streams: Mutex<PerChannel<Slot<W>>>,
}

/// One stream's writer, and whether it is to be finished, or is.
struct Slot<W> {
    writer: FrameWriter<W>,
    /// To be finished once what is queued is written (the machine said so).
    finishing: bool,
    finished: bool,
    /// Resolves once the peer has received the finished stream whole; taken by the task.
    acknowledged: Option<Acknowledged>,
}

/// A finished stream's "the peer has it all" (see [`StreamSend::acknowledged`]).
type Acknowledged = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

impl<W: StreamSend> Slot<W> {
    fn new(writer: FrameWriter<W>) -> Self {
        Slot {
            writer,
            finishing: false,
            finished: false,
            acknowledged: None,
        }
    }

    fn finish_if_written(&mut self) {
        if self.finishing && !self.writer.has_pending() {
            self.writer.finish();
            self.finishing = false;
            self.finished = true;
            self.acknowledged = Some(Box::pin(self.writer.acknowledged()));
        }
    }
}

impl<W: StreamSend> Writers<W> {
    /// Flushes `kind`'s writer, taking the lock for each poll only.
    async fn flush(&self, kind: ChannelKind) -> Result<(), StreamError> {
        std::future::poll_fn(|cx| {
            let mut streams = lock(&self.streams);
            let slot = streams.get_mut(kind);
            let flush = std::pin::pin!(slot.writer.flush());
            flush.poll(cx)
        })
        .await
    }
}

impl<W: StreamSend> InlineWrite for Writers<W> {
    fn queue_and_write(
        &self,
        core: &SessionCore,
        kind: ChannelKind,
        queue: &mut dyn FnMut(&mut SessionMachine) -> Result<(), Refused>,
    ) -> Result<bool, Refused> {
        // Busy (the task is polling a writer, or its frames wait): it will take them itself.
        let mut streams = self.streams.try_lock().ok().filter(|streams| {
            let slot = streams.get(kind);
            !(slot.writer.has_pending() || slot.finishing || slot.finished)
        });
        let Some(slot) = streams.as_mut().map(|streams| streams.get_mut(kind)) else {
            drop(streams);
            core.update(|m, _| queue(m))?;
            return Ok(false);
        };
        let generation = self.generation;
        let writer = &mut slot.writer;
        let finishing = core.update(|m, _| {
            queue(m)?;
            Ok::<_, Refused>(fill(m, generation, kind, writer))
        })?;
        if finishing {
            // The stream is to be finished: the task does that once its frames are written.
            slot.finishing = true;
            return Ok(false);
        }
        let writer = &mut slot.writer;
        if !writer.has_pending() {
            return Ok(true);
        }
        // One poll, without waiting: what flow control does not take now stays queued for the
        // task, which the caller then wakes (its poll registers the task's waker again).
        let flushed = {
            let flush = std::pin::pin!(writer.flush());
            matches!(poll_now(flush), Some(Ok(())))
        };
        Ok(flushed && !writer.has_pending())
    }

    fn release_idle(&self) {
        if let Ok(mut streams) = self.streams.try_lock() {
            streams.main.writer.release_idle();
            streams.feed.writer.release_idle();
        }
    }
}

/// Ends the connection for the session after its transport ended (`closed`): takes in what
/// both streams still hold, then tells the machine, and returns how it ended for the session.
fn end_with<R: StreamRecv>(
    core: &SessionCore,
    generation: u64,
    closed: &crate::protocol::LinkClosed,
    main: &mut FrameReader<R>,
    feed: &mut FrameReader<R>,
    ended_streams: &mut PerChannel<bool>,
) -> LinkEnd {
    take_in_the_rest(core, generation, main, feed, ended_streams);
    core.update(|m, now| m.handle_link_closed(generation, closed, now));
    ended(core, generation)
}

/// Takes in what both streams received before the connection ended, a FIN included, without
/// waiting: the ending is told to the machine after it, so that a graceful close the peer made
/// just before (its FIN, then its close, PROTOCOL.md §3.3; a page's close always reads as a
/// transport ending) is seen as one, whichever of the stream and the ending this task noticed
/// first. Bounded: a stream holds at most its receive window, taken [`READ_AHEAD`] reads at a
/// time, and only while the channel has room, as in any round.
fn take_in_the_rest<R: StreamRecv>(
    core: &SessionCore,
    generation: u64,
    main: &mut FrameReader<R>,
    feed: &mut FrameReader<R>,
    ended_streams: &mut PerChannel<bool>,
) {
    for (kind, reader) in [(ChannelKind::Main, main), (ChannelKind::Feed, feed)] {
        loop {
            if *ended_streams.get(kind)
                || !core.update(|m, _| wants_read(m, generation, kind, reader))
            {
                break;
            }
            let Some(read) = poll_now(std::pin::pin!(reader.read_more())) else {
                break; // nothing more arrived
            };
            if on_read(core, generation, kind, read, reader).is_err() {
                // Finished, failed, or the connection's end: nothing more comes on it.
                *ended_streams.get_mut(kind) = true;
            }
        }
    }
}

/// How the connection ended for the session, once it is no longer attached.
fn ended(core: &SessionCore, generation: u64) -> LinkEnd {
    core.update(|m, _| m.link_end(generation))
        .unwrap_or(LinkEnd::Ended)
}

/// Takes frames for `kind` from the machine into `writer`, up to a batch. Returns whether the
/// stream is to be finished once they are written.
fn fill<W: StreamSend>(
    m: &mut SessionMachine,
    generation: u64,
    kind: ChannelKind,
    writer: &mut FrameWriter<W>,
) -> bool {
    for _ in 0..BATCH_FRAMES {
        if writer.pending_bytes() >= BATCH_BYTES {
            break;
        }
        match m.poll_transmit(generation, kind) {
            Some(Transmit::Frame(head, body)) => writer.queue(head, body),
            Some(Transmit::Finish) => return true,
            None => break,
        }
    }
    false
}

/// A write that failed: the peer stopped the stream (a client resumes, a server closes), or the
/// connection is gone (its end arrives through `closed`).
fn on_written(
    core: &SessionCore,
    generation: u64,
    kind: ChannelKind,
    written: Result<(), StreamError>,
) {
    match written {
        Ok(()) | Err(StreamError::Lost(_) | StreamError::Closed) => {}
        Err(StreamError::Failed(detail)) => {
            core.update(|m, now| {
                m.handle_stream_end(generation, kind, StreamEnd::Failed(detail), now);
            });
        }
        Err(StreamError::ZeroRttRejected) => {
            debug!(%kind, "write on a rejected 0-RTT stream after CONN_OK");
        }
    }
}

/// Whether `kind`'s stream is to be read now (see [`SessionMachine::wants_read`]); if so, sizes
/// the next read to the room the channel has.
fn wants_read<R: StreamRecv>(
    m: &mut SessionMachine,
    generation: u64,
    kind: ChannelKind,
    reader: &mut FrameReader<R>,
) -> bool {
    let buffered = reader.buffered_len();
    let wanted = m.wants_read(generation, kind, buffered);
    if wanted {
        reader.set_read_room(m.read_room(kind, buffered));
    }
    wanted
}

/// What a read left in its stream.
enum Read {
    /// Nothing more has arrived; `delivered` says whether the frames taken in woke the
    /// application's receiver (a message, not only acknowledgements).
    Drained { delivered: bool },
    /// More may be waiting (the read-ahead stopped at its limit or at the channel's).
    More,
}

/// After a read from `kind`'s stream, hands every whole frame now buffered to the machine.
/// `Err` when the stream is done: with `Some` when the whole connection is.
fn on_read<R: StreamRecv>(
    core: &SessionCore,
    generation: u64,
    kind: ChannelKind,
    read: Result<(), ReadFailure>,
    reader: &mut FrameReader<R>,
) -> Result<Read, Option<crate::protocol::LinkClosed>> {
    let failure = match read {
        Ok(()) => {
            let mut failure = None;
            let mut left = Read::More;
            core.update(|m, now| {
                for ahead in 0..=READ_AHEAD {
                    // Every whole frame in the buffer goes to the machine: none may wait there
                    // for more bytes to arrive (the last message of a burst would never leave).
                    loop {
                        match reader.buffered_frame() {
                            Ok(Some(body)) => m.handle_frame(generation, kind, body, now),
                            Ok(None) => break,
                            Err(e) => {
                                failure = Some(e);
                                return;
                            }
                        }
                    }
                    // Whatever else has arrived already, while the channel has room: one
                    // wake-up of the application for all of it. (A poll that finds nothing is
                    // left to the task's next read, which polls with its waker. A failure is
                    // kept: the stream reports it once, so it is handled here.)
                    if ahead == READ_AHEAD || !wants_read(m, generation, kind, reader) {
                        return;
                    }
                    match poll_now(std::pin::pin!(reader.read_more())) {
                        Some(Ok(())) => {}
                        Some(Err(e)) => {
                            failure = Some(e);
                            return;
                        }
                        None => {
                            left = Read::Drained {
                                delivered: m.receiver_woken(kind),
                            };
                            return;
                        }
                    }
                }
            });
            match failure {
                None => return Ok(left),
                Some(failure) => failure,
            }
        }
        Err(failure) => failure,
    };
    match failure {
        ReadFailure::Decode(e) => {
            core.update(|m, _| {
                m.handle_frame_error(generation, kind, e.reason(), &e.to_string());
            });
            Err(None)
        }
        ReadFailure::Finished => {
            core.update(|m, now| {
                m.handle_stream_end(generation, kind, StreamEnd::Finished, now);
            });
            Err(None)
        }
        ReadFailure::StreamEnded(detail) => {
            core.update(|m, now| {
                m.handle_stream_end(generation, kind, StreamEnd::Failed(detail), now);
            });
            Err(None)
        }
        ReadFailure::Connection(closed) => Err(Some(closed)),
        ReadFailure::ZeroRttRejected => Err(Some(crate::protocol::LinkClosed::Transport(
            "0-RTT data rejected after CONN_OK".into(),
        ))),
    }
}

/// The next bytes from whichever stream is wanted, taking turns so that neither starves the
/// other; pending forever if neither is wanted.
async fn next_read<R: StreamRecv>(
    main: &mut FrameReader<R>,
    feed: &mut FrameReader<R>,
    want: PerChannel<bool>,
    feed_first: bool,
) -> (ChannelKind, Result<(), ReadFailure>) {
    match (want.main, want.feed) {
        (false, false) => std::future::pending().await,
        (true, false) => (ChannelKind::Main, main.read_more().await),
        (false, true) => (ChannelKind::Feed, feed.read_more().await),
        (true, true) if feed_first => tokio::select! {
            biased;
            read = feed.read_more() => (ChannelKind::Feed, read),
            read = main.read_more() => (ChannelKind::Main, read),
        },
        (true, true) => tokio::select! {
            biased;
            read = main.read_more() => (ChannelKind::Main, read),
            read = feed.read_more() => (ChannelKind::Feed, read),
        },
    }
}

/// Polls `future` once without a waker of ours: its result if it is ready now. (The future is
/// polled again with the task's waker in the `select!` below, so no wake-up is lost.)
fn poll_now<F: std::future::Future>(future: std::pin::Pin<&mut F>) -> Option<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    match future.poll(&mut cx) {
        Poll::Ready(value) => Some(value),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::net::SocketAddr;
    use std::sync::Weak;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::config::TransportConfig;
    use crate::driver::link::{DatagramRefused, LinkHandle, PathSample};
    use crate::driver::session::{SessionOwner, SideHandle, session_config};
    use crate::error::Disconnect;
    use crate::events::SessionEvent;
    use crate::protocol::codec::encode_data;
    use crate::protocol::{
        AttachLink, FrameLimits, InboundRules, LinkClosed, PlayerId, Reason, Side, Token,
    };

    /// A connection that has already ended: its first `read_datagram` reports the end, and only
    /// from then on do its streams hand over what they hold (the peer's FINs arrived, but this
    /// task noticed the connection's end first).
    #[derive(Clone)]
    struct EndedLink {
        end_seen: Arc<AtomicBool>,
    }

    impl LinkHandle for EndedLink {
        fn close(&self, _: Reason, _: &str) {}
        fn send_datagram(&self, _: Bytes) -> Result<(), DatagramRefused> {
            Ok(())
        }
        fn datagram_queued(&self) -> usize {
            0
        }
        fn max_datagram_size(&self) -> Option<usize> {
            Some(1200)
        }
        fn remote_address(&self) -> SocketAddr {
            SocketAddr::from(([127, 0, 0, 1], 4433))
        }
        fn rtt(&self) -> std::time::Duration {
            Duration::from_millis(10)
        }
        fn sample(&self) -> PathSample {
            PathSample::default()
        }
    }

    impl Link for EndedLink {
        type Send = SinkStream;
        type Recv = FinishedStream;

        async fn read_datagram(&self) -> Result<Bytes, LinkClosed> {
            self.end_seen.store(true, Ordering::SeqCst);
            Err(LinkClosed::Transport("the peer's connection ended".into()))
        }

        async fn accept_bi(&self) -> Result<(SinkStream, FinishedStream), LinkClosed> {
            Err(LinkClosed::Transport("never asked".into()))
        }

        fn resume_proof(&self, _: &Token, _: PlayerId) -> Option<Token> {
            None
        }

        fn handle(&self) -> Arc<dyn LinkHandle> {
            Arc::new(self.clone())
        }
    }

    /// A send stream that takes every write.
    struct SinkStream;

    impl StreamSend for SinkStream {
        async fn write_chunks(&mut self, chunks: &mut [Bytes]) -> Result<(), StreamError> {
            chunks.iter_mut().for_each(|c| *c = Bytes::new());
            Ok(())
        }
        fn finish(&mut self) {}
        async fn stopped(&mut self) {}
        fn acknowledged(&self) -> impl Future<Output = ()> + Send + 'static {
            std::future::ready(())
        }
        fn set_priority(&self, _: i32) {}
    }

    /// A receive stream holding `chunks` and then its FIN, readable once `end_seen` is set.
    struct FinishedStream {
        chunks: VecDeque<Bytes>,
        end_seen: Arc<AtomicBool>,
    }

    impl StreamRecv for FinishedStream {
        async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, StreamError> {
            std::future::poll_fn(|cx| {
                if !self.end_seen.load(Ordering::SeqCst) {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                let chunk = self.chunks.pop_front().map(|mut chunk| {
                    if chunk.len() > max {
                        self.chunks.push_front(chunk.split_off(max));
                    }
                    chunk
                });
                Poll::Ready(Ok(chunk))
            })
            .await
        }
    }

    struct NoOwner;

    impl SessionOwner for NoOwner {
        fn record(&self, _: PlayerId, _: &SessionEvent) {}
        fn session_ended(&self, _: PlayerId, _: &Disconnect) {}
        fn confirmed(&self, _: PlayerId) {}
    }

    /// Proves: FINs read after the link's end is noticed still end the session NORMAL, not Lost.
    #[tokio::test]
    async fn fins_read_after_the_connections_end_still_end_the_session_normally() {
        let limits = FrameLimits::default();
        let config = session_config(
            Side::Server,
            &TransportConfig::default(),
            limits,
            Some(Duration::from_secs(15)),
        );
        let owner: Weak<dyn SessionOwner> = Weak::<NoOwner>::new();
        let core = SessionCore::new(PlayerId(7), config, SideHandle::Server { owner }, None);
        let end_seen = Arc::new(AtomicBool::new(false));
        let link = EndedLink {
            end_seen: end_seen.clone(),
        };
        let attach = AttachLink {
            peer_limits: limits,
            peer_next: (0, 0),
            rules: (InboundRules::data_only(), InboundRules::data_only()),
            datagrams: true,
        };
        let generation = core.attach(link.handle(), attach).unwrap().generation;
        let stream = |kind: ChannelKind, payload: &[u8]| {
            let limit = limits.get(kind);
            let recv = FinishedStream {
                chunks: VecDeque::from([encode_data(0, payload, limit).unwrap()]),
                end_seen: end_seen.clone(),
            };
            ChannelStream::<EndedLink>::established(
                FrameWriter::new(SinkStream),
                FrameReader::new(recv, limit),
                limit,
            )
        };
        let streams = Streams {
            main: stream(ChannelKind::Main, b"last words"),
            feed: stream(ChannelKind::Feed, b"last frame"),
        };

        let end = run(&core, generation, link, Box::new(streams), (0, 0)).await;

        assert!(matches!(end, LinkEnd::Ended), "got {end:?}");
        assert!(
            matches!(
                core.ended(),
                Some(Disconnect::ByPeer {
                    reason: Reason::Normal,
                    ..
                })
            ),
            "got {:?}",
            core.ended()
        );
        for (kind, payload) in [
            (ChannelKind::Main, &b"last words"[..]),
            (ChannelKind::Feed, &b"last frame"[..]),
        ] {
            let got = core.update(|m, _| m.recv(kind));
            assert!(
                matches!(&got, Some(Ok(bytes)) if bytes == payload),
                "{kind}: got {got:?}"
            );
        }
    }
}
