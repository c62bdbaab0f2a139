//! Rules for an established session's inbound messages, without I/O.
//!
//! After `CONN_OK` each channel carries `DATA`, `ACK` and `GAP` (see
//! [`reliability`](super::reliability)). Two handshake echoes may still arrive and are
//! legitimate, because main and feed are independent streams: a client's retried `FEED_INIT`
//! that the server reads after `FINAL_AUTH`, and the server's repeated `FEED_INIT_REPLY` that
//! answers it. [`InboundRules`] lets exactly those through (a bounded number of times) and turns
//! everything else into a violation with its [`Reason`].

use bytes::Bytes;
use subtle::ConstantTimeEq;

use super::message::{Message, PlayerId, Reason, Token};

/// The largest frame bodies an endpoint accepts, per channel, after `CONN_OK`. Each side
/// announces its own in the handshake; senders refuse to send frames over the peer's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Limit on main, in bytes.
    pub main: u32,
    /// Limit on feed, in bytes.
    pub feed: u32,
}

impl FrameLimits {
    /// Whether both limits are at least [`MIN_FRAME_LIMIT`](super::codec::MIN_FRAME_LIMIT).
    pub fn is_valid_announcement(&self) -> bool {
        self.main >= super::codec::MIN_FRAME_LIMIT && self.feed >= super::codec::MIN_FRAME_LIMIT
    }

    /// The limits a peer announced in `message` (named for the error), or why they are not
    /// acceptable ([`Reason::MalformedMessage`]: below the minimum).
    pub fn announced(main: u32, feed: u32, message: &str) -> Result<FrameLimits, String> {
        let limits = FrameLimits { main, feed };
        if limits.is_valid_announcement() {
            Ok(limits)
        } else {
            Err(format!(
                "{message} announces frame limits {main}/{feed}, below {}",
                super::codec::MIN_FRAME_LIMIT
            ))
        }
    }

    /// The limit for `channel`, as a `usize`.
    pub fn get(&self, channel: super::ChannelKind) -> usize {
        let limit = match channel {
            super::ChannelKind::Main => self.main,
            super::ChannelKind::Feed => self.feed,
        };
        usize::try_from(limit).unwrap_or(usize::MAX)
    }
}

/// What an inbound message on an established channel means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// An application payload, with its sequence number.
    Data {
        /// The message's sequence number.
        seq: u64,
        /// The application's bytes.
        payload: Bytes,
    },
    /// The peer has delivered every message we sent on this channel below `next`.
    Ack(u64),
    /// Messages below `next` the peer's replay buffer no longer held are lost.
    Gap(u64),
    /// A tolerated late handshake echo: drop it silently.
    Ignored,
    /// A protocol violation: close the connection with this reason.
    Violation {
        /// Why.
        reason: Reason,
        /// Detail for logs and the close frame.
        message: String,
    },
}

/// Classifies the messages arriving on one established channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundRules {
    echo: Echo,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Echo {
    /// Nothing but `DATA` is acceptable.
    None,
    /// Server main: token B was redeemed; presenting it again is `TOKEN_REUSED`.
    RedeemedTokenB(Token),
    /// Server feed: late retries of `FEED_INIT` with the redeemed token A.
    LateFeedInit {
        player_id: PlayerId,
        token_a: Token,
        left: u8,
    },
    /// Client feed: late copies of `FEED_INIT_REPLY` carrying token B.
    LateFeedInitReply { token_b: Token, left: u8 },
}

impl InboundRules {
    /// Only `DATA` is acceptable (client main).
    pub fn data_only() -> Self {
        InboundRules { echo: Echo::None }
    }

    /// Server main: `DATA`; a `FINAL_AUTH` with the redeemed token B is `TOKEN_REUSED`.
    pub fn server_main(token_b: Token) -> Self {
        InboundRules {
            echo: Echo::RedeemedTokenB(token_b),
        }
    }

    /// Server feed: `DATA`, and up to `left` late `FEED_INIT` retries with the redeemed token A.
    pub fn server_feed(player_id: PlayerId, token_a: Token, left: u8) -> Self {
        InboundRules {
            echo: Echo::LateFeedInit {
                player_id,
                token_a,
                left,
            },
        }
    }

    /// Client feed: `DATA`, and up to `left` late `FEED_INIT_REPLY` copies with token B.
    pub fn client_feed(token_b: Token, left: u8) -> Self {
        InboundRules {
            echo: Echo::LateFeedInitReply { token_b, left },
        }
    }

    /// Classifies one inbound message.
    pub fn classify(&mut self, message: Message) -> Inbound {
        let name = message.name();
        match (message, &mut self.echo) {
            (Message::Data { seq, payload }, _) => Inbound::Data { seq, payload },
            (Message::Ack { next }, _) => Inbound::Ack(next),
            (Message::Gap { next }, _) => Inbound::Gap(next),
            (Message::FinalAuth { token_b }, Echo::RedeemedTokenB(redeemed))
                if tokens_equal(&token_b, redeemed) =>
            {
                violation(Reason::TokenReused, "token B presented again after CONN_OK")
            }
            (
                Message::FeedInit { player_id, token_a },
                Echo::LateFeedInit {
                    player_id: expected,
                    token_a: redeemed,
                    left,
                },
            ) if *left > 0 && player_id == *expected && tokens_equal(&token_a, redeemed) => {
                *left = left.saturating_sub(1);
                Inbound::Ignored
            }
            (
                Message::FeedInitReply { token_b },
                Echo::LateFeedInitReply {
                    token_b: ours,
                    left,
                },
            ) if *left > 0 && tokens_equal(&token_b, ours) => {
                *left = left.saturating_sub(1);
                Inbound::Ignored
            }
            _ => violation(Reason::UnexpectedMessage, &format!("{name} after CONN_OK")),
        }
    }
}

fn violation(reason: Reason, message: &str) -> Inbound {
    Inbound::Violation {
        reason,
        message: message.to_owned(),
    }
}

/// Constant-time token equality.
pub(crate) fn tokens_equal(a: &Token, b: &Token) -> bool {
    bool::from(a.0.ct_eq(&b.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Token = Token([0xaa; 16]);
    const B: Token = Token([0xbb; 16]);

    #[test]
    fn data_passes_on_every_channel() {
        for mut rules in [
            InboundRules::data_only(),
            InboundRules::server_main(B),
            InboundRules::server_feed(PlayerId(1), A, 3),
            InboundRules::client_feed(B, 3),
        ] {
            let data = Message::Data {
                seq: 3,
                payload: Bytes::from_static(b"x"),
            };
            assert_eq!(
                rules.classify(data),
                Inbound::Data {
                    seq: 3,
                    payload: Bytes::from_static(b"x")
                }
            );
            assert_eq!(rules.classify(Message::Ack { next: 9 }), Inbound::Ack(9));
            assert_eq!(rules.classify(Message::Gap { next: 9 }), Inbound::Gap(9));
        }
    }

    #[test]
    fn final_auth_again_is_token_reused() {
        let mut rules = InboundRules::server_main(B);
        let Inbound::Violation { reason, .. } = rules.classify(Message::FinalAuth { token_b: B })
        else {
            panic!("accepted a reused token")
        };
        assert_eq!(reason, Reason::TokenReused);
        let Inbound::Violation { reason, .. } = rules.classify(Message::FinalAuth { token_b: A })
        else {
            panic!("accepted a FINAL_AUTH")
        };
        assert_eq!(reason, Reason::UnexpectedMessage);
    }

    #[test]
    fn late_feed_init_retries_are_ignored_a_bounded_number_of_times() {
        let mut rules = InboundRules::server_feed(PlayerId(4), A, 2);
        let retry = Message::FeedInit {
            player_id: PlayerId(4),
            token_a: A,
        };
        assert_eq!(rules.classify(retry.clone()), Inbound::Ignored);
        assert_eq!(rules.classify(retry.clone()), Inbound::Ignored);
        assert!(matches!(
            rules.classify(retry),
            Inbound::Violation {
                reason: Reason::UnexpectedMessage,
                ..
            }
        ));
        let mut rules = InboundRules::server_feed(PlayerId(4), A, 2);
        let other_player = Message::FeedInit {
            player_id: PlayerId(5),
            token_a: A,
        };
        assert!(matches!(
            rules.classify(other_player),
            Inbound::Violation { .. }
        ));
    }

    #[test]
    fn late_feed_init_replies_must_carry_our_token_b() {
        let mut rules = InboundRules::client_feed(B, 1);
        assert!(matches!(
            rules.classify(Message::FeedInitReply { token_b: A }),
            Inbound::Violation { .. }
        ));
        assert_eq!(
            rules.classify(Message::FeedInitReply { token_b: B }),
            Inbound::Ignored
        );
    }
}
