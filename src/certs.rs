//! Certificates and TLS: the server's [`Identity`], SHA-256 [`Fingerprint`]s, and the client's
//! [`Trust`] modes.
//!
//! Games usually start on a self-signed certificate. [`Identity::load_or_generate`] creates one
//! with rcgen the first time (ECDSA P-256: small enough that the server's first flight fits in
//! QUIC's anti-amplification budget) and reuses it afterwards; clients then pin it, by file
//! ([`Trust::Certificate`]) or by fingerprint ([`Trust::Fingerprint`]). Production servers use a
//! CA-issued certificate and clients [`Trust::SystemRoots`] or [`Trust::CaCertificates`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

use crate::error::{CertError, ConfigError};
use crate::fingerprint::load_certificates;
pub use crate::fingerprint::{Fingerprint, FingerprintParseError};
use crate::known_hosts::KnownHosts;
use crate::protocol::ALPN;

/// The names a generated development certificate is valid for.
pub const DEV_CERT_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// A server's certificate chain and private key.
#[derive(Debug)]
pub struct Identity {
    end_entity: CertificateDer<'static>,
    intermediates: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            end_entity: self.end_entity.clone(),
            intermediates: self.intermediates.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// An identity from a certificate chain (end-entity first) and its private key.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, CertError> {
        let mut chain = chain.into_iter();
        let end_entity = chain.next().ok_or(CertError::NoCertificate {
            path: PathBuf::new(),
        })?;
        Ok(Identity {
            end_entity,
            intermediates: chain.collect(),
            key,
        })
    }

    /// A new self-signed ECDSA P-256 certificate for `names` (DNS names or IP addresses).
    pub fn generate_self_signed(names: &[&str]) -> Result<Self, CertError> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let certified = rcgen::generate_simple_self_signed(names)
            .map_err(|e| CertError::Generate(e.to_string()))?;
        let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
        Ok(Identity {
            end_entity: certified.cert.der().clone(),
            intermediates: Vec::new(),
            key: PrivateKeyDer::Pkcs8(key),
        })
    }

    /// Loads a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(
        cert_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
    ) -> Result<Self, CertError> {
        let cert_path = cert_path.as_ref();
        let key_path = key_path.as_ref();
        let chain = load_certificates(cert_path)?;
        let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| CertError::Pem {
            path: key_path.to_owned(),
            detail: e.to_string(),
        })?;
        Identity::new(chain, key).map_err(|_| CertError::NoCertificate {
            path: cert_path.to_owned(),
        })
    }

    /// Loads the identity from the two PEM files, or, when neither exists, generates a
    /// self-signed one for `names` and writes it there (the key readable by its owner only).
    /// Returns the identity and whether it was generated.
    ///
    /// If only one of the two files exists the call fails rather than overwrite it.
    pub fn load_or_generate(
        cert_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
        names: &[&str],
    ) -> Result<(Self, bool), CertError> {
        let (cert_path, key_path) = (cert_path.as_ref(), key_path.as_ref());
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Ok((Self::from_pem_files(cert_path, key_path)?, false)),
            (false, false) => {
                let identity = Self::generate_self_signed(names)?;
                identity.write_pem_files(cert_path, key_path)?;
                tracing::info!(
                    cert = %cert_path.display(),
                    fingerprint = %identity.fingerprint(),
                    "generated a self-signed development certificate"
                );
                Ok((identity, true))
            }
            (true, false) => Err(CertError::Incomplete {
                missing: key_path.to_owned(),
            }),
            (false, true) => Err(CertError::Incomplete {
                missing: cert_path.to_owned(),
            }),
        }
    }

    /// Writes the chain and the key as PEM files; the key file gets mode 0600 on Unix.
    pub fn write_pem_files(
        &self,
        cert_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
    ) -> Result<(), CertError> {
        let cert_path = cert_path.as_ref();
        let key_path = key_path.as_ref();
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CertError::Io { path, source }
        };
        for path in [cert_path, key_path] {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(io(dir))?;
            }
        }
        let cert_pem: String = self.chain().map(|c| pem("CERTIFICATE", c)).collect();
        std::fs::write(cert_path, cert_pem).map_err(io(cert_path))?;
        let key_label = match &self.key {
            PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
            PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
            _ => "PRIVATE KEY",
        };
        write_private(key_path, pem(key_label, self.key.secret_der())).map_err(io(key_path))
    }

    /// The end-entity certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.end_entity
    }

    /// The whole chain, end-entity first.
    pub fn chain(&self) -> impl Iterator<Item = &CertificateDer<'static>> {
        std::iter::once(&self.end_entity).chain(&self.intermediates)
    }

    /// The SHA-256 fingerprint of the end-entity certificate, which clients can pin.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self.certificate())
    }

    /// The TLS configuration of a server presenting this identity to native clients, and, with
    /// `browsers`, taking browsers' WebTransport connections (ALPN `h3`) too, with the
    /// certificate chosen for them.
    pub(crate) fn rustls_server_config(
        &self,
        session_cache_size: usize,
        browsers: Option<&BrowserTls>,
    ) -> Result<rustls::ServerConfig, ConfigError> {
        let native = Arc::new(self.certified_key()?);
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth();
        let mut config = match browsers {
            None => {
                builder.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(native)))
            }
            Some(browsers) => builder.with_cert_resolver(Arc::new(ByAlpn {
                native,
                browsers: browsers.clone(),
            })),
        };
        config.alpn_protocols = vec![ALPN.to_vec()];
        if browsers.is_some() {
            config.alpn_protocols.push(BROWSER_ALPN.to_vec());
        }
        // 0-RTT (a resume in one round trip). rustls accepts early data only with stateful
        // resumption, whose store hands each ticket out once: a replayed 0-RTT flight finds
        // its ticket gone. Sized so that every session can hold its tickets.
        config.max_early_data_size = u32::MAX;
        // One ticket per connection is enough (each resumed connection gets a fresh one), and
        // each is stored.
        config.send_tls13_tickets = 1;
        config.session_storage = Arc::new(SessionStore::new(session_cache_size.max(256)));
        Ok(config)
    }

    /// This identity as rustls signs with it.
    fn certified_key(&self) -> Result<rustls::sign::CertifiedKey, ConfigError> {
        Ok(rustls::sign::CertifiedKey::from_der(
            self.chain().cloned().collect(),
            self.key.clone_key(),
            &provider(),
        )?)
    }

    /// A new self-signed ECDSA P-256 certificate for `names` that browsers accept by its hash
    /// (`serverCertificateHashes`): valid from an hour before `now` until
    /// [`BROWSER_CERT_LIFETIME`] after it.
    pub fn generate_for_browsers(
        names: &[&str],
        now: std::time::SystemTime,
    ) -> Result<Self, CertError> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params =
            rcgen::CertificateParams::new(names).map_err(|e| CertError::Generate(e.to_string()))?;
        let from = now.checked_sub(BROWSER_CERT_BACKDATE).unwrap_or(now);
        let until = now.checked_add(BROWSER_CERT_LIFETIME).unwrap_or(now);
        params.not_before = from.into();
        params.not_after = until.into();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CertError::Generate(e.to_string()))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| CertError::Generate(e.to_string()))?;
        Ok(Identity {
            end_entity: cert.der().clone(),
            intermediates: Vec::new(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        })
    }
}

/// The ALPN protocol browsers offer for WebTransport (HTTP/3).
pub(crate) const BROWSER_ALPN: &[u8] = b"h3";

/// How long a certificate made for browsers is valid after it is made. Browsers take a
/// certificate by its hash only if it is valid for at most 14 days in all, backdating included.
pub const BROWSER_CERT_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(13 * 24 * 3600);

/// How long before it is made a certificate for browsers is valid from, for clients whose clock
/// runs behind.
pub const BROWSER_CERT_BACKDATE: std::time::Duration = std::time::Duration::from_secs(3600);

/// How long a generated browser certificate is the current one; the next one, made when it
/// took over, then takes over in turn. Each is published for two periods (as the next, then as
/// the current), 12 days in all, within its 13 days of validity.
pub const BROWSER_CERT_ROTATION: std::time::Duration =
    std::time::Duration::from_secs(6 * 24 * 3600);

/// The certificate a server shows browsers.
#[derive(Debug, Clone)]
pub(crate) enum BrowserTls {
    /// The server's own identity (CA-issued).
    Identity,
    /// Certificates the server makes and replaces itself.
    Generated(Arc<BrowserCertificates>),
}

/// Chooses the certificate by the ALPN protocol the client offers: the server's identity for
/// native clients (`quicfeed/1`, preferred when a client offers both, as the server's ALPN
/// order does), the browser certificate for `h3`.
#[derive(Debug)]
struct ByAlpn {
    native: Arc<rustls::sign::CertifiedKey>,
    browsers: BrowserTls,
}

impl rustls::server::ResolvesServerCert for ByAlpn {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let offers = |wanted: &[u8]| hello.alpn().is_some_and(|mut a| a.any(|p| p == wanted));
        match &self.browsers {
            BrowserTls::Generated(generated) if !offers(ALPN) && offers(BROWSER_ALPN) => {
                Some(generated.current())
            }
            _ => Some(self.native.clone()),
        }
    }
}

/// A generated browser certificate, ready to present.
#[derive(Debug, Clone)]
struct BrowserCert {
    key: Arc<rustls::sign::CertifiedKey>,
    fingerprint: Fingerprint,
    /// When it was made: it is valid until [`BROWSER_CERT_LIFETIME`] after.
    made: std::time::SystemTime,
}

impl BrowserCert {
    fn generate(names: &[String], now: std::time::SystemTime) -> Result<Self, CertError> {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let identity = Identity::generate_for_browsers(&names, now)?;
        let key = identity
            .certified_key()
            .map_err(|e| CertError::Generate(e.to_string()))?;
        Ok(BrowserCert {
            key: Arc::new(key),
            fingerprint: identity.fingerprint(),
            made: now,
        })
    }

    /// When it stops being valid.
    fn expires(&self) -> std::time::SystemTime {
        self.made
            .checked_add(BROWSER_CERT_LIFETIME)
            .unwrap_or(self.made)
    }

    /// The latest time it may stop being the current one: two rotation periods after it was
    /// made (one as the next, one as the current), within its validity.
    fn retire_by(&self) -> std::time::SystemTime {
        self.made
            .checked_add(BROWSER_CERT_ROTATION.saturating_mul(2))
            .unwrap_or(self.made)
    }
}

/// How soon a rotation that could not make a new certificate is tried again.
pub(crate) const BROWSER_CERT_RETRY: std::time::Duration = std::time::Duration::from_secs(3600);

/// The certificates a server makes for browsers ([`BrowserCertificate::Generated`]): the
/// current one, which it presents, and the next one, made in advance so that pages can pin
/// both; every [`BROWSER_CERT_ROTATION`] the next one takes over and a new next one is made.
///
/// [`BrowserCertificate::Generated`]: crate::config::BrowserCertificate::Generated
#[derive(Debug)]
pub(crate) struct BrowserCertificates {
    names: Vec<String>,
    /// Locked only to read or swap the pair (never across an `.await`).
    pair: std::sync::RwLock<BrowserPair>,
}

#[derive(Debug)]
struct BrowserPair {
    current: BrowserCert,
    next: BrowserCert,
    /// When `next` takes over.
    rotate_at: std::time::SystemTime,
}

impl BrowserCertificates {
    /// Makes the first two certificates for `names`, at `now`.
    pub(crate) fn generate(
        names: Vec<String>,
        now: std::time::SystemTime,
    ) -> Result<Self, CertError> {
        let pair = BrowserPair {
            current: BrowserCert::generate(&names, now)?,
            next: BrowserCert::generate(&names, now)?,
            rotate_at: BrowserPair::rotation_after(now),
        };
        Ok(BrowserCertificates {
            names,
            pair: std::sync::RwLock::new(pair),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BrowserPair> {
        self.pair
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The certificate presented now.
    fn current(&self) -> Arc<rustls::sign::CertifiedKey> {
        self.read().current.key.clone()
    }

    /// The SHA-256 hashes of the current and the next certificate, for
    /// `serverCertificateHashes`.
    pub(crate) fn hashes(&self) -> [Fingerprint; 2] {
        let pair = self.read();
        [pair.current.fingerprint, pair.next.fingerprint]
    }

    /// When the next certificate takes over (or a failed rotation is tried again).
    pub(crate) fn rotate_at(&self) -> std::time::SystemTime {
        self.read().rotate_at
    }

    /// When the certificate presented now stops being valid.
    pub(crate) fn current_expires(&self) -> std::time::SystemTime {
        self.read().current.expires()
    }

    /// If its time has come (at `now`), lets the next certificate take over and makes a new
    /// next one; returns whether it did. If the new one cannot be made, the next certificate
    /// takes over all the same if it was made later (so it stays valid longer) and stays
    /// published as the next one too, the error is returned, and the rotation is due again
    /// [`BROWSER_CERT_RETRY`] later.
    pub(crate) fn rotate_if_due(&self, now: std::time::SystemTime) -> Result<bool, CertError> {
        if now < self.rotate_at() {
            return Ok(false);
        }
        // Made before taking the lock: generating takes a while, and handshakes read the pair.
        let fresh = BrowserCert::generate(&self.names, now);
        let mut pair = self
            .pair
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match fresh {
            Ok(fresh) => {
                let old_next = std::mem::replace(&mut pair.next, fresh);
                pair.current = old_next;
                pair.rotate_at = BrowserPair::rotation_after(now).min(pair.current.retire_by());
                Ok(true)
            }
            Err(e) => {
                if pair.next.made > pair.current.made {
                    pair.current = pair.next.clone();
                }
                pair.rotate_at = now.checked_add(BROWSER_CERT_RETRY).unwrap_or(now);
                Err(e)
            }
        }
    }
}

impl BrowserPair {
    /// One rotation period after `now`.
    fn rotation_after(now: std::time::SystemTime) -> std::time::SystemTime {
        now.checked_add(BROWSER_CERT_ROTATION).unwrap_or(now)
    }
}

/// The server's store of TLS session tickets (stateful resumption, which 0-RTT needs): at most
/// `limit` of them, the oldest giving way, each handed out once. It grows with use, where
/// rustls's own memory cache allocates its whole table up front (25 MB for 100,000 sessions).
#[derive(Debug)]
struct SessionStore {
    limit: usize,
    inner: std::sync::Mutex<StoreInner>,
}

#[derive(Debug, Default)]
struct StoreInner {
    tickets: std::collections::HashMap<Vec<u8>, Vec<u8>>,
    /// Keys in the order they were stored; may still name tickets already taken (dropped when
    /// they reach the front, or when they outnumber the live ones two to one).
    order: std::collections::VecDeque<Vec<u8>>,
}

impl SessionStore {
    fn new(limit: usize) -> Self {
        SessionStore {
            limit,
            inner: std::sync::Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StoreInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl rustls::server::StoresServerSessions for SessionStore {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let mut inner = self.lock();
        let inner = &mut *inner;
        if inner.tickets.insert(key.clone(), value).is_none() {
            inner.order.push_back(key);
        }
        while inner.tickets.len() > self.limit {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            inner.tickets.remove(&oldest);
        }
        // Keys of taken tickets: compacted once they outnumber the live ones, so the order
        // stays within twice the limit (amortised: each compaction halves it at least).
        if inner.order.len() > inner.tickets.len().saturating_mul(2).max(64) {
            let tickets = &inner.tickets;
            inner.order.retain(|k| tickets.contains_key(k));
        }
        true
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.lock().tickets.get(key).cloned()
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.lock().tickets.remove(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3).saturating_mul(4));
    for chunk in der.chunks(3) {
        let [a, b, c] = [0, 1, 2].map(|i| chunk.get(i).copied().unwrap_or(0));
        let n = (u32::from(a) << 16) | (u32::from(b) << 8) | u32::from(c);
        let sextet = |shift: u32| {
            let index = usize::try_from((n >> shift) & 63).unwrap_or(0);
            char::from(ALPHABET.get(index).copied().unwrap_or(b'A'))
        };
        b64.push(sextet(18));
        b64.push(sextet(12));
        b64.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        b64.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

pub(crate) fn write_private(path: &Path, contents: String) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents.as_bytes())
}

/// How a client decides whether to trust the server's certificate.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Trust {
    /// Trust exactly this end-entity certificate (a pinned self-signed certificate). Names and
    /// validity dates are not checked: the pin is the trust.
    Certificate(CertificateDer<'static>),
    /// Trust exactly the end-entity certificate with this SHA-256 fingerprint.
    Fingerprint(Fingerprint),
    /// Trust any of these fingerprints: for certificate rotation, pin the current certificate
    /// and its successor, and the server can switch
    /// ([`Server::rotate_identity`](crate::Server::rotate_identity)) without breaking clients.
    Fingerprints(Vec<Fingerprint>),
    /// Trust on first use: the first certificate a server (`server_name@address:port`)
    /// presents, once it has proved it holds the key, is recorded in this `known_hosts` file
    /// and trusted; later connections must present the same one, otherwise they fail with an
    /// error that shows both fingerprints. See [`KnownHosts`].
    KnownHosts(KnownHosts),
    /// Verify the chain against these CA certificates and the server name, as browsers do.
    CaCertificates(Vec<CertificateDer<'static>>),
    /// Verify the chain against the operating system's trusted roots and the server name.
    SystemRoots,
    /// Accept any certificate. The connection is encrypted but **not authenticated**: anyone on
    /// the path can impersonate the server. For tests and debugging only.
    DangerousAcceptAnyCertificate,
}

impl Trust {
    /// Pins the end-entity certificate stored in a PEM file (e.g. `certs/cert.pem`).
    pub fn certificate_pem_file(path: impl AsRef<Path>) -> Result<Trust, CertError> {
        let path = path.as_ref();
        let chain = load_certificates(path)?;
        match chain.into_iter().next() {
            Some(first) => Ok(Trust::Certificate(first)),
            None => Err(CertError::NoCertificate {
                path: path.to_owned(),
            }),
        }
    }

    /// The rustls configuration for connecting to `host` (`server_name@address:port`, the key
    /// of a `known_hosts` file), and where its certificate verifier records why it refused a
    /// certificate.
    pub(crate) fn rustls_client_config(
        &self,
        zero_rtt: bool,
        host: &str,
    ) -> Result<(rustls::ClientConfig, Refusals), ConfigError> {
        let provider = provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let pinned = |pin: Pin| -> Arc<dyn ServerCertVerifier> {
            Arc::new(PinnedVerifier {
                pin,
                provider: provider.clone(),
            })
        };
        let authorities =
            |roots: rustls::RootCertStore| -> Result<Arc<dyn ServerCertVerifier>, ConfigError> {
                let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider.clone(),
                )
                .build()
                .map_err(|e| ConfigError::Invalid(format!("certificate authorities: {e}")))?;
                Ok(verifier)
            };
        let verifier = match self {
            Trust::Certificate(der) => pinned(Pin::Fingerprint(Fingerprint::of(der))),
            Trust::Fingerprint(fp) => pinned(Pin::Fingerprint(*fp)),
            Trust::Fingerprints(set) => {
                if set.is_empty() {
                    return Err(ConfigError::Invalid(
                        "Trust::Fingerprints holds no fingerprint".into(),
                    ));
                }
                pinned(Pin::AnyOf(set.clone()))
            }
            Trust::KnownHosts(known) => pinned(Pin::FirstUse {
                known: known.clone(),
                host: host.to_owned(),
            }),
            Trust::DangerousAcceptAnyCertificate => pinned(Pin::Any),
            Trust::CaCertificates(cas) => {
                let mut roots = rustls::RootCertStore::empty();
                let (added, _) = roots.add_parsable_certificates(cas.iter().cloned());
                if added == 0 {
                    return Err(ConfigError::Invalid(
                        "Trust::CaCertificates holds no usable CA certificate".into(),
                    ));
                }
                authorities(roots)?
            }
            Trust::SystemRoots => {
                let native = rustls_native_certs::load_native_certs();
                for error in &native.errors {
                    tracing::warn!(%error, "could not load some system root certificates");
                }
                let mut roots = rustls::RootCertStore::empty();
                roots.add_parsable_certificates(native.certs);
                if roots.is_empty() {
                    return Err(ConfigError::Invalid(
                        "no system root certificates found".into(),
                    ));
                }
                authorities(roots)?
            }
        };
        let refusals = Refusals::default();
        let mut config = builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Recording {
                inner: verifier,
                refusals: refusals.clone(),
            }))
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN.to_vec()];
        // Resumes, and new connections made with the same `ClientConfig`, go in 0-RTT when the
        // server gave this client a ticket.
        config.enable_early_data = zero_rtt;
        Ok((config, refusals))
    }
}

/// Why the certificate verifier behind one rustls configuration last refused a certificate, in
/// words: rustls hands quinn only a TLS alert, so without it a failed connect could not say what
/// was wrong or what to do.
#[derive(Clone, Default, Debug)]
pub(crate) struct Refusals(Arc<std::sync::Mutex<Option<String>>>);

impl Refusals {
    fn record(&self, why: String) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(why);
    }

    /// The last refusal, if one was recorded since the last call.
    pub(crate) fn take(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// A verifier that records, in words, why the one it wraps refused.
#[derive(Debug)]
struct Recording {
    inner: Arc<dyn ServerCertVerifier>,
    refusals: Refusals,
}

/// What a person needs to know of a certificate refusal, and what to do about it.
fn describe_refusal(error: &rustls::Error, server_name: &ServerName<'_>) -> String {
    match error {
        // quicfeed's own verifiers: their messages say what to do.
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => other.0.to_string(),
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => "it is not signed by a certificate authority this client trusts (a self-signed \
             development certificate must be pinned: Trust::Certificate, Trust::Fingerprint or \
             Trust::KnownHosts)"
            .to_owned(),
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName) => format!(
            "it is not valid for the name {} (set ClientConfig::server_name to a name the \
             certificate holds)",
            server_name.to_str()
        ),
        rustls::Error::InvalidCertificate(
            context @ CertificateError::NotValidForNameContext { .. },
        ) => format!("{context} (set ClientConfig::server_name to a name the certificate holds)"),
        rustls::Error::InvalidCertificate(
            expired @ (CertificateError::Expired | CertificateError::ExpiredContext { .. }),
        ) => format!("{expired}: the server needs a new certificate"),
        rustls::Error::InvalidCertificate(
            early @ (CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }),
        ) => format!("{early} (is this machine's clock right?)"),
        rustls::Error::InvalidCertificate(other) => other.to_string(),
        other => other.to_string(),
    }
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .inspect_err(|e| self.refusals.record(describe_refusal(e, server_name)))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .verify_tls13_signature(message, cert, dss)
            .inspect_err(|e| {
                self.refusals.record(format!(
                    "the server's handshake signature does not verify ({e}): it does not hold \
                     the certificate's key"
                ))
            })
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

/// The rustls configuration a [`ClientConfig`](crate::ClientConfig) and its clones share, so
/// that a new connection made with them can resume the TLS session of an earlier one and send
/// `CONN_INIT` in 0-RTT. rustls resumes a session only under the same certificate verifier
/// (the same `Arc`) as the connection that got its ticket, so the whole configuration, its
/// ticket store and its verifier, is kept; it is built again when the trust or the server
/// changes.
#[derive(Clone, Default)]
#[allow(clippy::type_complexity)]
pub(crate) struct TlsSessions(
    Arc<std::sync::Mutex<Option<(String, rustls::ClientConfig, Refusals)>>>,
);

impl TlsSessions {
    /// The configuration for `key` (what it was built from), built by `build` the first time,
    /// with its verifier's refusals.
    pub(crate) fn get_or_build(
        &self,
        key: String,
        build: impl FnOnce() -> Result<(rustls::ClientConfig, Refusals), ConfigError>,
    ) -> Result<(rustls::ClientConfig, Refusals), ConfigError> {
        let mut kept = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((built_for, config, refusals)) = kept.as_ref()
            && *built_for == key
        {
            return Ok((config.clone(), refusals.clone()));
        }
        let (config, refusals) = build()?;
        *kept = Some((key, config.clone(), refusals.clone()));
        Ok((config, refusals))
    }
}

impl std::fmt::Debug for TlsSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsSessions")
    }
}

/// The crypto provider every config is built with (ring only; see Cargo.toml).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[derive(Debug)]
enum Pin {
    Fingerprint(Fingerprint),
    AnyOf(Vec<Fingerprint>),
    /// Trust on first use of `host`, recorded in `known`.
    FirstUse {
        known: KnownHosts,
        host: String,
    },
    Any,
}

/// Accepts exactly the pinned end-entity certificate. Handshake signatures are still verified,
/// so the server must hold the pinned certificate's private key.
#[derive(Debug)]
struct PinnedVerifier {
    pin: Pin,
    provider: Arc<CryptoProvider>,
}

/// A pinned certificate did not match; carries the fingerprints for the error message.
#[derive(Debug, thiserror::Error)]
#[error(
    "server certificate {presented} does not match the pinned certificate {}",
    list(pinned)
)]
struct PinMismatch {
    presented: Fingerprint,
    pinned: Vec<Fingerprint>,
}

fn list(fingerprints: &[Fingerprint]) -> String {
    let all: Vec<String> = fingerprints.iter().map(ToString::to_string).collect();
    all.join(" or ")
}

/// A known host presented another certificate than the one recorded on first use.
#[derive(Debug, thiserror::Error)]
#[error(
    "the certificate of {host} has changed: {presented} presented, {recorded} recorded in {}; \
     if the change is expected, remove the line for {host} from that file",
    path.display()
)]
struct KnownHostChanged {
    host: String,
    recorded: Fingerprint,
    presented: Fingerprint,
    path: std::path::PathBuf,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = Fingerprint::of(end_entity);
        let refuse = |error: Arc<dyn std::error::Error + Send + Sync>| {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(error),
            )))
        };
        match &self.pin {
            Pin::Any => Ok(ServerCertVerified::assertion()),
            Pin::Fingerprint(pinned) if presented == *pinned => Ok(ServerCertVerified::assertion()),
            Pin::Fingerprint(pinned) => refuse(Arc::new(PinMismatch {
                presented,
                pinned: vec![*pinned],
            })),
            Pin::AnyOf(set) if set.contains(&presented) => Ok(ServerCertVerified::assertion()),
            Pin::AnyOf(set) => refuse(Arc::new(PinMismatch {
                presented,
                pinned: set.clone(),
            })),
            Pin::FirstUse { known, host } => match known.get(host) {
                Ok(Some(recorded)) if recorded == presented => Ok(ServerCertVerified::assertion()),
                Ok(Some(recorded)) => refuse(Arc::new(KnownHostChanged {
                    host: host.clone(),
                    recorded,
                    presented,
                    path: known.path().to_owned(),
                })),
                // Recorded only once the server proves it holds the key (CertificateVerify,
                // below): a certificate shown without its key must not be pinned.
                Ok(None) => Ok(ServerCertVerified::assertion()),
                Err(e) => refuse(Arc::new(e)),
            },
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let valid = rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )?;
        if let Pin::FirstUse { known, host } = &self.pin {
            let presented = Fingerprint::of(cert);
            let new = known
                .insert(host, presented)
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            if new {
                tracing::info!(
                    %host,
                    fingerprint = %presented,
                    path = %known.path().display(),
                    "trusted a new server on first use and recorded its certificate"
                );
            }
        }
        Ok(valid)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::StoresServerSessions;

    /// Proves: the ticket store hands each ticket out once, keeps at most its limit (the
    /// oldest giving way), and its bookkeeping stays bounded however many tickets are stored
    /// and taken.
    #[test]
    fn the_ticket_store_is_single_use_bounded_and_grows_with_use() {
        let store = SessionStore::new(3);
        let key = |n: u32| n.to_be_bytes().to_vec();
        for n in 0..4 {
            assert!(store.put(key(n), vec![n as u8]));
        }
        assert_eq!(store.get(&key(0)), None, "the oldest gave way");
        assert_eq!(store.get(&key(1)), Some(vec![1]));
        assert_eq!(store.take(&key(1)), Some(vec![1]));
        assert_eq!(store.take(&key(1)), None, "single use");
        assert_eq!(store.lock().tickets.len(), 2);
        for n in 10..100_000 {
            store.put(key(n), vec![0; 8]);
            store.take(&key(n));
        }
        let inner = store.lock();
        assert!(inner.tickets.len() <= 3);
        assert!(inner.order.len() <= 64, "{} keys kept", inner.order.len());
        assert!(store.can_cache());
    }

    #[test]
    fn generated_identities_round_trip_through_pem_files() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c/cert.pem"), dir.path().join("c/key.pem"));
        let (first, generated) = Identity::load_or_generate(&cert, &key, DEV_CERT_NAMES).unwrap();
        assert!(generated);
        let (again, generated) = Identity::load_or_generate(&cert, &key, DEV_CERT_NAMES).unwrap();
        assert!(!generated, "the second call loads what the first wrote");
        assert_eq!(first.fingerprint(), again.fingerprint());
        assert_eq!(first.key.secret_der(), again.key.secret_der());
        let pinned = Trust::certificate_pem_file(&cert).unwrap();
        assert!(matches!(pinned, Trust::Certificate(c) if c == *first.certificate()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_lone_certificate_file_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, "keep me").unwrap();
        assert!(matches!(
            Identity::load_or_generate(&cert, &key, DEV_CERT_NAMES),
            Err(CertError::Incomplete { .. })
        ));
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), "keep me");
    }

    #[test]
    fn fingerprints_print_and_parse_in_common_forms() {
        let fp = Identity::generate_self_signed(DEV_CERT_NAMES)
            .unwrap()
            .fingerprint();
        let shown = fp.to_string();
        assert_eq!(shown.len(), 32 * 3 - 1);
        assert_eq!(shown.parse::<Fingerprint>().unwrap(), fp);
        let plain: String = shown.chars().filter(|c| *c != ':').collect();
        assert_eq!(plain.to_lowercase().parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(
            format!("sha256:{plain}").parse::<Fingerprint>().unwrap(),
            fp
        );
        assert!("AB:CD".parse::<Fingerprint>().is_err());
        assert!("zz".repeat(32).parse::<Fingerprint>().is_err());
        assert!("+f".repeat(32).parse::<Fingerprint>().is_err(), "no signs");
    }

    #[test]
    fn generated_certificates_are_small_ecdsa() {
        let identity = Identity::generate_self_signed(DEV_CERT_NAMES).unwrap();
        let len = identity.certificate().len();
        assert!(len < 600, "certificate is {len} bytes");
    }

    #[test]
    fn pem_encoding_matches_the_standard_alphabet() {
        assert_eq!(
            pem("X", b"hello!?"),
            "-----BEGIN X-----\naGVsbG8hPw==\n-----END X-----\n"
        );
    }
    /// Proves: browser certificates rotate on time, the next one taking over and a new next
    /// one made; none is presented past two rotation periods after it was made, within its
    /// validity, even when a rotation comes late; and when a new one cannot be made, the next
    /// one takes over all the same and the rotation is tried again an hour later.
    #[test]
    fn browser_certificates_rotate_on_time_and_survive_a_failed_rotation() {
        let day = std::time::Duration::from_secs(24 * 3600);
        let t0 = std::time::SystemTime::UNIX_EPOCH + day * 20_000;
        let mut certs = BrowserCertificates::generate(vec!["localhost".into()], t0).unwrap();
        let [first, second] = certs.hashes();
        assert_ne!(first, second);
        assert_eq!(certs.rotate_at(), t0 + BROWSER_CERT_ROTATION);
        assert!(!certs.rotate_if_due(t0 + day).unwrap(), "not due yet");
        assert_eq!(certs.hashes(), [first, second]);

        // Due: the next takes over, a new next is made.
        let t1 = t0 + BROWSER_CERT_ROTATION;
        assert!(certs.rotate_if_due(t1).unwrap());
        let [current, third] = certs.hashes();
        assert_eq!(current, second);
        assert_ne!(third, second);
        // `second` was made at t0 with the first: it retires two periods after t0.
        assert_eq!(certs.rotate_at(), t0 + BROWSER_CERT_ROTATION * 2);
        assert_eq!(certs.current_expires(), t0 + BROWSER_CERT_LIFETIME);

        // A late rotation (a day late): `third`, made at t1, still retires by t1 + 12 days.
        let late = t0 + BROWSER_CERT_ROTATION * 2 + day;
        assert!(certs.rotate_if_due(late).unwrap());
        assert_eq!(certs.hashes()[0], third);
        assert_eq!(certs.rotate_at(), t1 + BROWSER_CERT_ROTATION * 2);
        assert!(certs.rotate_at() < certs.current_expires());

        // Names that cannot be put in a certificate: no new next one can be made.
        let fourth = certs.hashes()[1];
        certs.names = vec!["\u{e9}t\u{e9}".into()];
        let t3 = t1 + BROWSER_CERT_ROTATION * 2;
        assert!(certs.rotate_if_due(t3).is_err());
        assert_eq!(
            certs.hashes(),
            [fourth, fourth],
            "the next took over all the same"
        );
        assert_eq!(certs.rotate_at(), t3 + BROWSER_CERT_RETRY);
        // Again an hour later, still failing: the newest stays.
        assert!(certs.rotate_if_due(t3 + BROWSER_CERT_RETRY).is_err());
        assert_eq!(certs.hashes(), [fourth, fourth]);
        // Fixed: a new next one is made; the current one keeps its own retirement time.
        certs.names = vec!["localhost".into()];
        let t4 = t3 + BROWSER_CERT_RETRY * 2;
        assert!(certs.rotate_if_due(t4).unwrap());
        let [current, fifth] = certs.hashes();
        assert_eq!(current, fourth);
        assert_ne!(fifth, fourth);
        assert!(certs.rotate_at() <= t4 + BROWSER_CERT_ROTATION);
        assert!(certs.rotate_at() < certs.current_expires());
    }
}
