//! Handshake tokens: issued from a CSPRNG, redeemed once, in constant time.
//!
//! A token lives only inside the handshake state of the connection that issued it (see
//! [`ServerHandshake`](super::ServerHandshake)). That is what binds it to the connection: a
//! token shown on any other connection is compared against that connection's own token and
//! refused as [`Reason::InvalidToken`](super::Reason::InvalidToken).

use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

use super::message::{PlayerId, TOKEN_LEN, Token};

/// A source of cryptographically secure random bytes.
///
/// The protocol core draws all its randomness through this trait, so state-machine tests can
/// run with a deterministic source while the driver uses [`SystemEntropy`].
pub trait Entropy {
    /// Fills `dest` with random bytes, or fails if no randomness is available.
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyError>;
}

/// The operating system's CSPRNG (through `ring`).
#[derive(Debug)]
pub struct SystemEntropy(ring::rand::SystemRandom);

impl SystemEntropy {
    /// A handle to the system CSPRNG.
    pub fn new() -> Self {
        SystemEntropy(ring::rand::SystemRandom::new())
    }
}

impl Default for SystemEntropy {
    fn default() -> Self {
        Self::new()
    }
}

impl Entropy for SystemEntropy {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyError> {
        ring::rand::SecureRandom::fill(&self.0, dest).map_err(|_| EntropyError)
    }
}

/// The TLS exporter label of a resume proof (PROTOCOL.md §7.2; RFC 8446 §7.5).
pub const RESUME_PROOF_LABEL: &[u8] = b"EXPORTER-quicfeed-resume";

/// Length of the exporter context of a resume proof: the credential, then the player ID.
pub const RESUME_PROOF_CONTEXT_LEN: usize = TOKEN_LEN + 8;

/// The exporter context of a resume proof: the session's credential (16 bytes), then its player
/// ID (u64, big-endian). The proof is the first 16 bytes the connection's TLS exporter gives
/// for [`RESUME_PROOF_LABEL`] and this context: a value only the holder of the credential can
/// compute, and only for that connection (its exporter secret is the connection's own), so a
/// proof seen in a log or a memory dump is useless on any other connection and reveals nothing
/// of the credential. Both sides compute it; the server for each credential it accepts.
pub fn resume_proof_context(
    credential: &Token,
    player_id: PlayerId,
) -> [u8; RESUME_PROOF_CONTEXT_LEN] {
    let mut context = [0u8; RESUME_PROOF_CONTEXT_LEN];
    let (head, tail) = context.split_at_mut(TOKEN_LEN);
    head.copy_from_slice(&credential.0);
    tail.copy_from_slice(&player_id.0.to_be_bytes());
    context
}

/// The message a WebTransport resume proof authenticates, before the player ID.
pub const WEBTRANSPORT_PROOF_LABEL: &[u8] = b"quicfeed-resume-webtransport";

/// The proof of `credential` for a `RESUME` of `player_id`'s session on a WebTransport session
/// (PROTOCOL.md §14.5): the first 16 bytes of HMAC-SHA256 keyed with the credential over
/// [`WEBTRANSPORT_PROOF_LABEL`] and the player ID (u64, big-endian).
///
/// A page cannot read its connection's TLS exporter, so this proof is not bound to the
/// connection the way [`resume_proof_context`]'s is. It needs no binding for replay: the
/// server reads nothing on a WebTransport session before the QUIC handshake is complete (its
/// HTTP/3 setup waits for it), so a `RESUME` there is always 1-RTT data, which cannot be replayed
/// onto another connection, whatever the client sends as 0-RTT; and the credential is single
/// use. It still keeps the credential itself off the
/// wire, and a proof for one transport is no good on the other.
pub fn webtransport_resume_proof(credential: &Token, player_id: PlayerId) -> Token {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &credential.0);
    let mut context = ring::hmac::Context::with_key(&key);
    context.update(WEBTRANSPORT_PROOF_LABEL);
    context.update(&player_id.0.to_be_bytes());
    let tag = context.sign();
    let mut proof = [0u8; TOKEN_LEN];
    for (out, byte) in proof.iter_mut().zip(tag.as_ref()) {
        *out = *byte;
    }
    Token(proof)
}

/// A fresh random token (for example, a resume credential).
pub fn random_token(entropy: &mut dyn Entropy) -> Result<Token, EntropyError> {
    let mut bytes = [0u8; TOKEN_LEN];
    entropy.fill(&mut bytes)?;
    Ok(Token(bytes))
}

/// The randomness source failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no randomness available")]
pub struct EntropyError;

/// Why a presented token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The bytes do not match the issued token.
    #[error("invalid token")]
    Invalid,
    /// The token matches, but was issued to another player.
    #[error("token issued to another player")]
    PlayerMismatch,
    /// The token matches, but its lifetime has passed.
    #[error("token expired")]
    Expired,
}

/// A token the server has issued and not yet seen redeemed.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    token: Token,
    player_id: PlayerId,
    expires_at: Instant,
}

impl IssuedToken {
    /// Draws a fresh token for `player_id`, valid for `lifetime` from `now`.
    pub fn issue(
        entropy: &mut dyn Entropy,
        player_id: PlayerId,
        now: Instant,
        lifetime: Duration,
    ) -> Result<Self, EntropyError> {
        let mut bytes = [0u8; TOKEN_LEN];
        entropy.fill(&mut bytes)?;
        Ok(IssuedToken {
            token: Token(bytes),
            player_id,
            // A lifetime too long to represent simply never expires.
            expires_at: now.checked_add(lifetime).unwrap_or(far_future(now)),
        })
    }

    /// The token's bytes, to send to the client.
    pub fn token(&self) -> Token {
        self.token
    }

    /// Checks a presented token.
    ///
    /// The bytes are compared in constant time first; only a matching token is then checked
    /// against the player ID and the expiry, so a wrong token reveals nothing else.
    pub fn redeem(
        &self,
        presented: &Token,
        player_id: PlayerId,
        now: Instant,
    ) -> Result<(), TokenError> {
        if !bool::from(self.token.0.ct_eq(&presented.0)) {
            return Err(TokenError::Invalid);
        }
        if self.player_id != player_id {
            return Err(TokenError::PlayerMismatch);
        }
        if now >= self.expires_at {
            return Err(TokenError::Expired);
        }
        Ok(())
    }

    /// Whether `presented` is this token (constant time), whatever its player or expiry.
    pub fn matches(&self, presented: &Token) -> bool {
        bool::from(self.token.0.ct_eq(&presented.0))
    }
}

/// An instant far enough ahead to stand for "never", without overflowing.
fn far_future(now: Instant) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    now.checked_add(YEAR).unwrap_or(now)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic entropy for tests: a counter spread over the buffer.
    #[derive(Debug, Default)]
    pub(crate) struct CountingEntropy(pub u8);

    impl Entropy for CountingEntropy {
        fn fill(&mut self, dest: &mut [u8]) -> Result<(), EntropyError> {
            self.0 = self.0.wrapping_add(1);
            dest.fill(self.0);
            Ok(())
        }
    }

    #[test]
    fn system_entropy_gives_distinct_tokens() {
        let now = Instant::now();
        let mut e = SystemEntropy::new();
        let a = IssuedToken::issue(&mut e, PlayerId(1), now, Duration::from_secs(1)).unwrap();
        let b = IssuedToken::issue(&mut e, PlayerId(1), now, Duration::from_secs(1)).unwrap();
        assert_ne!(a.token(), b.token());
    }

    #[test]
    fn redeem_checks_bytes_then_player_then_expiry() {
        let now = Instant::now();
        let life = Duration::from_secs(5);
        let issued = IssuedToken::issue(&mut CountingEntropy(0), PlayerId(9), now, life).unwrap();
        let good = issued.token();
        assert_eq!(issued.redeem(&good, PlayerId(9), now), Ok(()));
        assert_eq!(
            issued.redeem(&Token([0; 16]), PlayerId(9), now),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            issued.redeem(&good, PlayerId(8), now),
            Err(TokenError::PlayerMismatch)
        );
        assert_eq!(
            issued.redeem(&good, PlayerId(9), now + life),
            Err(TokenError::Expired)
        );
        // A wrong token that is also late is reported as wrong, not as expired.
        assert_eq!(
            issued.redeem(&Token([0; 16]), PlayerId(9), now + life),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn an_unrepresentable_lifetime_does_not_overflow() {
        let now = Instant::now();
        let issued =
            IssuedToken::issue(&mut CountingEntropy(0), PlayerId(1), now, Duration::MAX).unwrap();
        assert_eq!(issued.redeem(&issued.token(), PlayerId(1), now), Ok(()));
    }
}
