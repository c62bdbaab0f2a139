//! Exactly-once, in-order delivery across connections: sequence numbers, acknowledgements,
//! bounded replay buffers and gaps, per channel and direction. No I/O.
//!
//! Within one QUIC connection a stream is already reliable and ordered. What it cannot do is
//! survive the connection: messages in flight, or received by QUIC but not yet by the
//! application, die with it. So each side numbers its messages ([`Outbound`]), keeps those the
//! peer has not acknowledged, and after a resume replays from the peer's next expected number;
//! the receiving side ([`Inbound`]) drops what it already delivered and acknowledges what its
//! session has taken in (whether or not the application has read it yet: the session's receive
//! queue outlives the connection, so an acknowledged message is never lost by a resume). A replay buffer is bounded: when it overflows, the oldest messages are
//! dropped and the replay starts with a `GAP` that says how many were lost, never silently.

use std::collections::VecDeque;

use bytes::Bytes;

/// The sending side of one channel direction: numbering and the replay buffer.
#[derive(Debug)]
pub struct Outbound {
    next_seq: u64,
    /// Unacknowledged messages, oldest first, with consecutive sequence numbers ending at
    /// `next_seq - 1`.
    unacked: VecDeque<(u64, Bytes)>,
    unacked_bytes: usize,
    capacity: usize,
    /// Every message below this has been acknowledged by the peer.
    acked_below: u64,
}

/// What to send a peer that resumed: an optional gap, then the messages it is missing.
#[derive(Debug)]
pub struct Replay<'a> {
    /// `Some(next)`: messages from the peer's position up to `next` were dropped from the
    /// buffer; send `GAP { next }` first.
    pub gap: Option<u64>,
    /// The messages to send again, in order.
    pub messages: std::collections::vec_deque::Iter<'a, (u64, Bytes)>,
}

/// A peer's acknowledgement or position that cannot be right: it claims messages that were
/// never sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("peer claims message {claimed} but only {sent} were sent")]
pub struct SequenceError {
    /// The position the peer claimed.
    pub claimed: u64,
    /// How many messages were sent.
    pub sent: u64,
}

impl Outbound {
    /// An empty sending side that keeps at most `capacity` bytes of unacknowledged payload
    /// (always at least the newest message).
    pub fn new(capacity: usize) -> Self {
        Outbound {
            next_seq: 0,
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            capacity,
            acked_below: 0,
        }
    }

    /// The sequence number the next message will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Bytes of payload kept for a replay.
    pub fn buffered_bytes(&self) -> usize {
        self.unacked_bytes
    }

    /// Messages kept for a replay.
    pub fn buffered_messages(&self) -> usize {
        self.unacked.len()
    }

    /// The sequence number of the oldest message kept (the next one's, if none is kept).
    pub fn first_kept(&self) -> u64 {
        self.unacked.front().map_or(self.next_seq, |(seq, _)| *seq)
    }

    /// The kept payload of message `seq`, if it is still kept.
    pub fn get(&self, seq: u64) -> Option<&Bytes> {
        let index = usize::try_from(seq.checked_sub(self.first_kept())?).ok()?;
        self.unacked.get(index).map(|(_, payload)| payload)
    }

    /// Numbers a message about to be sent and keeps its payload until acknowledged. If the
    /// buffer is then over capacity, the oldest messages are dropped (a later replay reports
    /// them as a gap).
    pub fn push(&mut self, payload: Bytes) -> u64 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        self.unacked_bytes = self.unacked_bytes.saturating_add(payload.len());
        self.unacked.push_back((seq, payload));
        while self.unacked_bytes > self.capacity && self.unacked.len() > 1 {
            if let Some((_, dropped)) = self.unacked.pop_front() {
                self.unacked_bytes = self.unacked_bytes.saturating_sub(dropped.len());
            }
        }
        seq
    }

    /// The peer has every message below `next`: forget them.
    pub fn ack(&mut self, next: u64) -> Result<(), SequenceError> {
        if next > self.next_seq {
            return Err(SequenceError {
                claimed: next,
                sent: self.next_seq,
            });
        }
        self.acked_below = self.acked_below.max(next);
        while self.unacked.front().is_some_and(|(seq, _)| *seq < next) {
            if let Some((_, done)) = self.unacked.pop_front() {
                self.unacked_bytes = self.unacked_bytes.saturating_sub(done.len());
            }
        }
        Ok(())
    }

    /// What to send a peer that resumed and expects `peer_next` next.
    pub fn replay(&mut self, peer_next: u64) -> Result<Replay<'_>, SequenceError> {
        self.ack(peer_next)?;
        let first_kept = self.first_kept();
        Ok(Replay {
            gap: (first_kept > peer_next).then_some(first_kept),
            messages: self.unacked.iter(),
        })
    }
}

/// What an arriving `DATA` means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next message: deliver it.
    Deliver,
    /// Already delivered (a replay overlapping what arrived before the resume): drop it.
    Duplicate,
}

/// The receiving side of one channel direction: what has been delivered, and when to
/// acknowledge it.
#[derive(Debug)]
pub struct Inbound {
    next: u64,
    unacked_messages: u32,
    unacked_bytes: usize,
}

impl Inbound {
    /// Acknowledge after this many delivered messages...
    pub const ACK_EVERY_MESSAGES: u32 = 32;
    /// ...or this many delivered bytes, whichever comes first (and on the session's timer).
    pub const ACK_EVERY_BYTES: usize = 32 * 1024;

    /// Nothing received yet.
    pub fn new() -> Self {
        Inbound {
            next: 0,
            unacked_messages: 0,
            unacked_bytes: 0,
        }
    }

    /// The sequence number expected next (every message below it has been delivered).
    pub fn next(&self) -> u64 {
        self.next
    }

    /// A `DATA` with sequence number `seq` and `len` payload bytes arrived.
    ///
    /// A number above the expected one is a [`SequenceError`]: on a reliable stream it can only
    /// follow a `GAP`. So is `u64::MAX`, which no sender reaches (PROTOCOL.md §11.1): after a
    /// `GAP { next: u64::MAX }` it would otherwise be delivered again and again.
    pub fn arrive(&mut self, seq: u64, len: usize) -> Result<Arrival, SequenceError> {
        if seq == u64::MAX {
            return Err(SequenceError {
                claimed: seq,
                sent: self.next,
            });
        }
        match seq.cmp(&self.next) {
            std::cmp::Ordering::Less => Ok(Arrival::Duplicate),
            std::cmp::Ordering::Equal => {
                self.next = self.next.saturating_add(1);
                self.unacked_messages = self.unacked_messages.saturating_add(1);
                self.unacked_bytes = self.unacked_bytes.saturating_add(len);
                Ok(Arrival::Deliver)
            }
            std::cmp::Ordering::Greater => Err(SequenceError {
                claimed: seq,
                sent: self.next,
            }),
        }
    }

    /// A `GAP { next }` arrived: returns how many messages were lost (0 if the gap only covers
    /// messages already delivered).
    pub fn gap(&mut self, next: u64) -> u64 {
        let missed = next.saturating_sub(self.next);
        self.next = self.next.max(next);
        missed
    }

    /// Whether enough has been delivered since the last acknowledgement to send one now.
    pub fn ack_due(&self) -> bool {
        self.unacked_messages >= Self::ACK_EVERY_MESSAGES
            || self.unacked_bytes >= Self::ACK_EVERY_BYTES
    }

    /// Whether anything was delivered since the last acknowledgement.
    pub fn has_unacked(&self) -> bool {
        self.unacked_messages > 0
    }

    /// An acknowledgement for everything delivered so far is being sent; returns its `next`.
    pub fn ack_sent(&mut self) -> u64 {
        self.unacked_messages = 0;
        self.unacked_bytes = 0;
        self.next
    }
}

impl Default for Inbound {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(n: usize) -> Bytes {
        Bytes::from(vec![0u8; n])
    }

    fn replayed(out: &mut Outbound, peer_next: u64) -> (Option<u64>, Vec<u64>) {
        let replay = out.replay(peer_next).unwrap();
        (replay.gap, replay.messages.map(|(seq, _)| *seq).collect())
    }

    #[test]
    fn messages_are_numbered_kept_until_acked_and_replayed_from_the_peer_position() {
        let mut out = Outbound::new(1 << 20);
        for _ in 0..10 {
            out.push(payload(10));
        }
        assert_eq!(out.next_seq(), 10);
        out.ack(4).unwrap();
        assert_eq!(out.buffered_messages(), 6);
        assert_eq!(replayed(&mut out, 7), (None, vec![7, 8, 9]));
        assert_eq!(out.buffered_bytes(), 30);
        assert_eq!(replayed(&mut out, 10), (None, vec![]));
        assert_eq!(out.first_kept(), 10);
        assert!(out.get(9).is_none());
        out.push(payload(3));
        assert_eq!(out.get(10).map(Bytes::len), Some(3));
        assert!(out.get(11).is_none());
    }

    #[test]
    fn an_overflowing_buffer_drops_the_oldest_and_the_replay_says_so() {
        let mut out = Outbound::new(100);
        for _ in 0..25 {
            out.push(payload(10));
        }
        assert_eq!(out.buffered_bytes(), 100);
        // The peer has 0..3; 3..15 were dropped; 15..25 are kept.
        assert_eq!(replayed(&mut out, 3), (Some(15), (15..25).collect()));
        // A single message larger than the whole buffer is still kept.
        out.push(payload(1000));
        assert_eq!(out.buffered_messages(), 1);
    }

    #[test]
    fn acknowledging_what_was_never_sent_is_an_error() {
        let mut out = Outbound::new(100);
        out.push(payload(1));
        assert_eq!(
            out.ack(2),
            Err(SequenceError {
                claimed: 2,
                sent: 1
            })
        );
        assert!(out.replay(5).is_err());
        assert_eq!(out.ack(1), Ok(()));
        assert_eq!(out.ack(0), Ok(()), "an older acknowledgement is harmless");
    }

    #[test]
    fn the_receiver_delivers_once_in_order_and_reports_gaps() {
        let mut inbound = Inbound::new();
        assert_eq!(inbound.arrive(0, 5), Ok(Arrival::Deliver));
        assert_eq!(inbound.arrive(1, 5), Ok(Arrival::Deliver));
        assert_eq!(inbound.arrive(0, 5), Ok(Arrival::Duplicate));
        assert!(inbound.arrive(3, 5).is_err(), "a hole without a GAP");
        assert_eq!(inbound.gap(5), 3);
        assert_eq!(inbound.arrive(5, 5), Ok(Arrival::Deliver));
        assert_eq!(inbound.gap(4), 0, "a gap behind us lost nothing");
        assert_eq!(inbound.next(), 6);
    }

    #[test]
    fn the_last_number_is_never_delivered_even_after_a_gap_to_it() {
        let mut inbound = Inbound::new();
        assert!(inbound.arrive(u64::MAX, 1).is_err());
        assert_eq!(inbound.gap(u64::MAX), u64::MAX);
        assert!(inbound.arrive(u64::MAX, 1).is_err());
        assert!(inbound.arrive(u64::MAX, 1).is_err());
        assert_eq!(inbound.arrive(u64::MAX - 1, 1), Ok(Arrival::Duplicate));
        assert_eq!(inbound.next(), u64::MAX);
    }

    #[test]
    fn acknowledgements_are_due_by_count_or_bytes() {
        let mut inbound = Inbound::new();
        for seq in 0..u64::from(Inbound::ACK_EVERY_MESSAGES) - 1 {
            inbound.arrive(seq, 1).unwrap();
        }
        assert!(!inbound.ack_due() && inbound.has_unacked());
        inbound.arrive(31, 1).unwrap();
        assert!(inbound.ack_due());
        assert_eq!(inbound.ack_sent(), 32);
        assert!(!inbound.has_unacked());
        inbound.arrive(32, Inbound::ACK_EVERY_BYTES).unwrap();
        assert!(inbound.ack_due());
    }
}
