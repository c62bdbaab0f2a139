//! Trust on first use: a file of the certificate fingerprint each server presented the first
//! time, like SSH's `known_hosts`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::CertError;
use crate::fingerprint::Fingerprint;

/// A `known_hosts` file: one line per server, `name@address:port fingerprint` (the name the
/// certificate is checked for, and the server's address), in the order they were first seen.
/// Blank lines and lines starting with `#` are ignored.
///
/// [`Trust::KnownHosts`](crate::Trust::KnownHosts) consults it on every connection: a server
/// not in the file is trusted and recorded; one in the file must present the same certificate,
/// otherwise the connection fails with an error that shows both fingerprints. To accept a
/// server's new certificate, remove its line ([`KnownHosts::remove`], or a text editor).
///
/// A new server is trusted without asking, so tell the user: the library logs each one it
/// records (`tracing`, at info level), and [`KnownHosts::newly_recorded`] lists them for a
/// program to show, for example after [`Client::connect`](crate::Client::connect):
///
/// ```no_run
/// # async fn run(server: std::net::SocketAddr) -> Result<(), quicfeed::ConnectError> {
/// use quicfeed::{Client, ClientConfig, KnownHosts, Trust};
///
/// let known = KnownHosts::new("known_hosts");
/// let _session = Client::connect(&ClientConfig::new(server, Trust::KnownHosts(known.clone()))).await?;
/// for (host, fingerprint) in known.newly_recorded() {
///     println!("trusted new server {host} with fingerprint {fingerprint}");
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct KnownHosts {
    path: PathBuf,
    /// The hosts recorded through this value and its clones (a [`Trust`](crate::Trust) holds a
    /// clone), oldest first.
    recorded: Arc<Mutex<Vec<(String, Fingerprint)>>>,
}

/// Shows the file only: what was recorded changes as clients connect, and a client's TLS
/// configuration (with its 0-RTT tickets) is kept per trust as it prints.
impl std::fmt::Debug for KnownHosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnownHosts")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Two values are equal when they name the same file (whatever each has recorded).
impl PartialEq for KnownHosts {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
    }
}

impl Eq for KnownHosts {}

impl KnownHosts {
    /// The file at `path` (created on the first server recorded).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        KnownHosts {
            path: path.into(),
            recorded: Arc::default(),
        }
    }

    /// The servers this value, or a clone of it, has recorded since it was made (by
    /// [`insert`](Self::insert), which trust on first use calls once a new server has proved
    /// it holds its certificate's key), as `(name@address:port, fingerprint)`, oldest first.
    /// Empty when every server was already in the file. Clones share the list, so keep a clone
    /// of the value put in [`Trust::KnownHosts`](crate::Trust::KnownHosts) to ask it after
    /// connecting.
    pub fn newly_recorded(&self) -> Vec<(String, Fingerprint)> {
        self.recorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The usual place: `$QUICFEED_KNOWN_HOSTS` if set, otherwise
    /// `$HOME/.config/quicfeed/known_hosts`; `None` without either variable.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(path) = std::env::var_os("QUICFEED_KNOWN_HOSTS") {
            return Some(PathBuf::from(path));
        }
        let home = std::env::var_os("HOME")?;
        Some(PathBuf::from(home).join(".config/quicfeed/known_hosts"))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every recorded server and its fingerprint, in file order. A missing file is empty.
    pub fn entries(&self) -> Result<Vec<(String, Fingerprint)>, CertError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(self.io_error(source)),
        };
        let mut entries = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(host), Some(fingerprint), None) = (words.next(), words.next(), words.next())
            else {
                return Err(self.malformed(number, line));
            };
            let fingerprint = fingerprint
                .parse()
                .map_err(|_| self.malformed(number, line))?;
            entries.push((host.to_owned(), fingerprint));
        }
        Ok(entries)
    }

    /// The fingerprint recorded for `host` (`name@address:port`), if any.
    pub fn get(&self, host: &str) -> Result<Option<Fingerprint>, CertError> {
        Ok(self
            .entries()?
            .into_iter()
            .find(|(known, _)| known == host)
            .map(|(_, fingerprint)| fingerprint))
    }

    /// Records `fingerprint` for `host`, creating the file (and its directory) if needed, and
    /// returns whether it was new (then it is also listed by
    /// [`newly_recorded`](Self::newly_recorded)). A host already in the file keeps its first
    /// line; remove it first to replace it.
    pub fn insert(&self, host: &str, fingerprint: Fingerprint) -> Result<bool, CertError> {
        if self.get(host)?.is_some() {
            return Ok(false);
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|source| self.io_error(source))?;
        }
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|source| self.io_error(source))?;
        // One write per line: concurrent clients never interleave within a line.
        file.write_all(format!("{host} {fingerprint}\n").as_bytes())
            .map_err(|source| self.io_error(source))?;
        self.recorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((host.to_owned(), fingerprint));
        Ok(true)
    }

    /// Forgets `host`; returns whether it was recorded.
    pub fn remove(&self, host: &str) -> Result<bool, CertError> {
        let entries = self.entries()?;
        if !entries.iter().any(|(known, _)| known == host) {
            return Ok(false);
        }
        let text: String = entries
            .iter()
            .filter(|(known, _)| known != host)
            .map(|(known, fingerprint)| format!("{known} {fingerprint}\n"))
            .collect();
        // Written aside and renamed over the file: a reader never sees it half written (where a
        // missing line would mean "trust whatever is presented").
        let mut aside = self.path.clone().into_os_string();
        aside.push(".tmp");
        let aside = PathBuf::from(aside);
        fs::write(&aside, text).map_err(|source| self.io_error(source))?;
        fs::rename(&aside, &self.path).map_err(|source| self.io_error(source))?;
        Ok(true)
    }

    fn io_error(&self, source: std::io::Error) -> CertError {
        CertError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn malformed(&self, number: usize, line: &str) -> CertError {
        CertError::KnownHosts {
            path: self.path.clone(),
            detail: format!(
                "line {}: expected `name@address:port fingerprint`, got {line:?}",
                number.saturating_add(1)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_recorded_once_found_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let known = KnownHosts::new(dir.path().join("sub/known_hosts"));
        assert_eq!(known.get("a:1").unwrap(), None);
        let (fa, fb) = (Fingerprint([1; 32]), Fingerprint([2; 32]));
        assert!(known.insert("a:1", fa).unwrap());
        assert!(known.insert("b:2", fb).unwrap());
        assert!(!known.insert("a:1", fb).unwrap());
        assert_eq!(known.get("a:1").unwrap(), Some(fa), "the first stays");
        assert_eq!(known.get("b:2").unwrap(), Some(fb));
        assert!(known.remove("a:1").unwrap());
        assert!(!known.remove("a:1").unwrap());
        assert_eq!(known.entries().unwrap(), vec![("b:2".to_owned(), fb)]);
    }

    #[test]
    fn new_hosts_are_listed_by_every_clone_and_known_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        let fp = Fingerprint([3; 32]);
        KnownHosts::new(&path).insert("old:1", fp).unwrap();
        let known = KnownHosts::new(&path);
        let clone = known.clone();
        assert!(!clone.insert("old:1", fp).unwrap());
        assert_eq!(known.newly_recorded(), vec![], "already in the file");
        assert!(clone.insert("new:2", fp).unwrap());
        assert_eq!(known.newly_recorded(), vec![("new:2".to_owned(), fp)]);
        assert_eq!(known, clone);
        assert_eq!(
            KnownHosts::new(&path).newly_recorded(),
            vec![],
            "another value, its own list"
        );
    }

    #[test]
    fn comments_are_skipped_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        let fp = Fingerprint([0xab; 32]);
        fs::write(&path, format!("# servers\n\nhost:9 {fp}\n")).unwrap();
        let known = KnownHosts::new(&path);
        assert_eq!(known.get("host:9").unwrap(), Some(fp));
        fs::write(&path, "host:9 not-a-fingerprint\n").unwrap();
        let err = known.get("host:9").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
