//! The server's long-lived secret, [`ServerSecret`], kept beside its certificate.
//!
//! QUIC lets a server that has lost a connection's state (it restarted) tell the client at once
//! with a *stateless reset*: a packet only the issuer of the connection's IDs can make, because
//! it carries a token derived from a key and the connection ID. A server whose keys are random
//! per process cannot: after a restart it neither recognises the connection IDs it issued (they
//! are keyed too) nor knows their tokens, so it drops the old clients' packets and they notice
//! only when their dead-path timeout runs out. With both keys derived from one secret that
//! survives the restart, an old client's next packet brings a reset back within a round trip.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use ring::hkdf;

use crate::certs::write_private;
use crate::error::{CertError, ConfigError};

/// Bytes in a [`ServerSecret`].
pub const SERVER_SECRET_LEN: usize = 32;

/// A server's long-lived secret: the key of its stateless resets and the key of its connection
/// IDs derive from it (HKDF-SHA256), so that a server restarted with the same secret answers
/// the packets of its old clients with a stateless reset, and they learn of the restart within
/// a round trip instead of after their dead-path timeout.
///
/// The keys also depend on the address the server is bound to, so two servers sharing one
/// secret file on different ports still have keys of their own: a secret shared by servers
/// with the *same* keys would let a packet of one server's connection, sent to the other, come
/// back as that connection's reset token (RFC 9000 §21.11). Do not share a secret between
/// instances behind one address (a load balancer), since their keys would then be the same.
///
/// Keep it beside the certificate ([`ServerSecret::load_or_generate`]), as private as the
/// certificate's key: whoever holds it can forge resets that close this server's connections.
/// Set it in [`ServerConfig::secret`](crate::ServerConfig::secret); without one, the server
/// draws random keys when it starts.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerSecret([u8; SERVER_SECRET_LEN]);

impl fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerSecret(..)")
    }
}

impl ServerSecret {
    /// A new random secret from the operating system's generator.
    pub fn generate() -> Result<Self, CertError> {
        let mut bytes = [0u8; SERVER_SECRET_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| CertError::Randomness("a server secret".into()))?;
        Ok(ServerSecret(bytes))
    }

    /// A secret of these bytes (from the application's own secret store).
    pub fn from_bytes(bytes: [u8; SERVER_SECRET_LEN]) -> Self {
        ServerSecret(bytes)
    }

    /// Loads the secret from `path`: one line of 64 hexadecimal digits.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, CertError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| CertError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|detail| CertError::Secret {
            path: path.to_owned(),
            detail,
        })
    }

    /// Loads the secret from `path`, or, when the file does not exist, generates one and
    /// writes it there (readable by its owner only). Returns the secret and whether it was
    /// generated. Two servers starting at once end up with the same secret: the file appears
    /// whole or not at all (written beside it, then linked into place only if still absent).
    pub fn load_or_generate(path: impl AsRef<Path>) -> Result<(Self, bool), CertError> {
        let path = path.as_ref();
        match std::fs::metadata(path) {
            Ok(_) => return Ok((Self::load(path)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(CertError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        let secret = Self::generate()?;
        // Staged beside the file (`write` creates the directory), then linked into place.
        let mut staged = path.as_os_str().to_owned();
        staged.push(format!(".{}.new", std::process::id()));
        let staged = std::path::PathBuf::from(staged);
        secret.write(&staged)?;
        let linked = std::fs::hard_link(&staged, path);
        let _ = std::fs::remove_file(&staged);
        match linked {
            Ok(()) => {
                tracing::info!(path = %path.display(), "generated a server secret");
                Ok((secret, true))
            }
            // Another process wrote it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok((Self::load(path)?, false))
            }
            Err(source) => Err(CertError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Writes the secret to `path` as one line of hexadecimal. On Unix a new file gets mode
    /// 0600; an existing file keeps its mode (and is overwritten).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<(), CertError> {
        let path = path.as_ref();
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CertError::Io { path, source }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let mut line: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        line.push('\n');
        write_private(path, line).map_err(io(path))
    }

    fn parse(text: &str) -> Result<Self, String> {
        let hex = text.trim();
        if hex.len() != 2 * SERVER_SECRET_LEN {
            return Err(format!(
                "a server secret is {} hexadecimal digits, this file holds {} characters",
                2 * SERVER_SECRET_LEN,
                hex.len()
            ));
        }
        let mut bytes = [0u8; SERVER_SECRET_LEN];
        for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks(2)) {
            let digits = std::str::from_utf8(pair)
                .ok()
                .filter(|d| d.bytes().all(|c| c.is_ascii_hexdigit()))
                .ok_or_else(|| {
                    format!(
                        "{:?} is not a hexadecimal byte",
                        String::from_utf8_lossy(pair)
                    )
                })?;
            *byte = u8::from_str_radix(digits, 16)
                .map_err(|_| format!("{digits:?} is not a hexadecimal byte"))?;
        }
        Ok(ServerSecret(bytes))
    }

    /// The key of the stateless reset tokens of a server bound to `bound`.
    pub(crate) fn reset_key(&self, bound: SocketAddr) -> Result<ring::hmac::Key, ConfigError> {
        let mut key = [0u8; 32];
        self.derive(b"quicfeed stateless reset", bound, &mut key)?;
        Ok(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key))
    }

    /// The key that tags the connection IDs of a server bound to `bound` (HMAC-SHA256), so that
    /// the server restarted with the same secret recognises the IDs it issued.
    pub(crate) fn connection_id_key(
        &self,
        bound: SocketAddr,
    ) -> Result<ring::hmac::Key, ConfigError> {
        let mut key = [0u8; 32];
        self.derive(b"quicfeed connection ids", bound, &mut key)?;
        Ok(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key))
    }

    /// Fills `out` with the HKDF-SHA256 expansion of the secret for `label` and the address
    /// `bound` (info: the label, a space, the address as text). HKDF fails only for more than
    /// 255 hash lengths; the keys are 32 bytes.
    fn derive(&self, label: &[u8], bound: SocketAddr, out: &mut [u8]) -> Result<(), ConfigError> {
        struct Len(usize);
        impl hkdf::KeyType for Len {
            fn len(&self) -> usize {
                self.0
            }
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"quicfeed/1 server secret").extract(&self.0);
        let address = bound.to_string();
        let info = [label, b" ", address.as_bytes()];
        prk.expand(&info, Len(out.len()))
            .and_then(|okm| okm.fill(out))
            .map_err(|_| ConfigError::Invalid("cannot derive keys from the server secret".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_written_loads_back_the_same_and_its_keys_are_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certs").join("secret.key");
        let (first, generated) = ServerSecret::load_or_generate(&path).unwrap();
        assert!(generated);
        let (again, generated) = ServerSecret::load_or_generate(&path).unwrap();
        assert!(!generated);
        assert_eq!(first, again);
        let bound: SocketAddr = "127.0.0.1:4433".parse().unwrap();
        let other = ServerSecret::generate().unwrap();
        let tag = |secret: &ServerSecret| {
            ring::hmac::sign(&secret.connection_id_key(bound).unwrap(), b"id")
                .as_ref()
                .to_vec()
        };
        assert_eq!(tag(&first), tag(&again));
        assert_ne!(tag(&first), tag(&other));
        // No staged file is left behind.
        let left = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
        assert_eq!(left, 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn the_derived_keys_match_their_definition() {
        // HKDF-SHA256, salt "quicfeed/1 server secret", info the label, a space and the bound
        // address; checked against an independent computation of the same expansion.
        let secret = ServerSecret::from_bytes([7u8; SERVER_SECRET_LEN]);
        let bound: SocketAddr = "127.0.0.1:4433".parse().unwrap();
        let prk = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"quicfeed/1 server secret"),
            &[7u8; SERVER_SECRET_LEN],
        );
        let prk = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, prk.as_ref());
        let block =
            |label: &str| ring::hmac::sign(&prk, format!("{label} 127.0.0.1:4433\x01").as_bytes());
        let id = b"a connection id";
        let tag = |key: &ring::hmac::Key| ring::hmac::sign(key, id).as_ref().to_vec();
        // Both keys: the expansion for their label, used as an HMAC-SHA256 key.
        let ids = block("quicfeed connection ids");
        let expected = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, ids.as_ref());
        assert_eq!(
            tag(&secret.connection_id_key(bound).unwrap()),
            tag(&expected)
        );
        let reset = block("quicfeed stateless reset");
        let expected = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset.as_ref());
        assert_eq!(tag(&secret.reset_key(bound).unwrap()), tag(&expected));
        // The labels and the address separate the keys.
        assert_ne!(reset.as_ref(), ids.as_ref());
        let elsewhere: SocketAddr = "127.0.0.1:4434".parse().unwrap();
        assert_ne!(
            tag(&secret.connection_id_key(bound).unwrap()),
            tag(&secret.connection_id_key(elsewhere).unwrap())
        );
    }

    #[test]
    fn a_malformed_secret_file_is_refused_with_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        std::fs::write(&path, "abc\n").unwrap();
        let err = ServerSecret::load(&path).unwrap_err().to_string();
        assert!(err.contains("64 hexadecimal digits"), "{err}");
        std::fs::write(&path, "zz".repeat(32)).unwrap();
        let err = ServerSecret::load(&path).unwrap_err().to_string();
        assert!(err.contains("not a hexadecimal byte"), "{err}");
        assert_eq!(
            format!("{:?}", ServerSecret::from_bytes([1; 32])),
            "ServerSecret(..)"
        );
    }
}
