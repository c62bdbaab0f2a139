//! SHA-256 certificate [`Fingerprint`]s, and reading certificates from PEM files: what both
//! the certificate trust modes ([`crate::certs`]) and trust on first use
//! ([`crate::KnownHosts`]) need.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::error::CertError;

/// The SHA-256 digest of a DER certificate.
///
/// Displayed as 32 colon-separated uppercase hex bytes (`AB:CD:…`), the form browsers and
/// `openssl x509 -fingerprint -sha256` print. Parsed from that form, from plain hex, and with an
/// optional `sha256:` prefix.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of `certificate`.
    pub fn of(certificate: &CertificateDer<'_>) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, certificate.as_ref());
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Fingerprint(out)
    }

    /// The fingerprint of the first (end-entity) certificate in a PEM file.
    pub fn of_pem_file(path: impl AsRef<Path>) -> Result<Self, CertError> {
        let path = path.as_ref();
        let chain = load_certificates(path)?;
        chain
            .first()
            .map(Fingerprint::of)
            .ok_or_else(|| CertError::NoCertificate {
                path: path.to_owned(),
            })
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// A string that is not a SHA-256 fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a SHA-256 fingerprint (expected 32 hex bytes, optionally colon-separated): {0:?}")]
pub struct FingerprintParseError(pub String);

impl FromStr for Fingerprint {
    type Err = FingerprintParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || FingerprintParseError(s.to_owned());
        let trimmed = s.trim();
        let hex_part = trimmed
            .strip_prefix("sha256:")
            .or_else(|| trimmed.strip_prefix("SHA256:"))
            .unwrap_or(trimmed);
        let digits: Vec<u8> = hex_part
            .bytes()
            .filter(|b| !matches!(b, b':' | b' '))
            .collect();
        if digits.len() != 64 {
            return Err(err());
        }
        let mut out = [0u8; 32];
        if !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(err());
        }
        for (byte, pair) in out.iter_mut().zip(digits.chunks(2)) {
            let text = std::str::from_utf8(pair).map_err(|_| err())?;
            *byte = u8::from_str_radix(text, 16).map_err(|_| err())?;
        }
        Ok(Fingerprint(out))
    }
}

/// The certificates of a PEM file, end-entity first; at least one.
pub(crate) fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| CertError::Pem {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}
