//! Smoke tests of every `quicfeed` command, run as a user would (a real process on loopback).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_quicfeed");

fn quicfeed(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `gen-cert` into `dir`; returns the fingerprint it printed.
fn gen_cert(dir: &Path) -> String {
    let out = quicfeed(&["gen-cert", "--out", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    stdout(&out)
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint "))
        .expect("a fingerprint line")
        .to_owned()
}

/// A running `quicfeed server`, killed on drop, and its stdout lines.
struct RunningServer {
    child: Child,
    lines: mpsc::Receiver<String>,
    addr: String,
}

impl RunningServer {
    fn start(certs: &Path) -> RunningServer {
        let mut child = Command::new(BIN)
            .args([
                "server",
                "--listen",
                "127.0.0.1:0",
                "--cert",
                certs.join("cert.pem").to_str().unwrap(),
                "--key",
                certs.join("key.pem").to_str().unwrap(),
                "--secret",
                certs.join("secret.key").to_str().unwrap(),
                "--tick-hz",
                "20",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = RunningServer {
            child,
            lines,
            addr: String::new(),
        };
        let listening = server.wait_for("listening on ");
        server.addr = listening.trim_start_matches("listening on ").to_owned();
        server
    }

    /// The next stdout line starting with `prefix` (within 20 s).
    fn wait_for(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        panic!("the server never printed {prefix:?}");
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `quicfeed client` with `input` on stdin; its output once it exits (within 30 s).
fn client(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(BIN)
        .arg("client")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    // Keep stdin open a moment so some feed ticks arrive, then end the input.
    std::thread::sleep(Duration::from_millis(300));
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the client did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Proves: `gen-cert` writes a certificate and key and prints a fingerprint, which
/// `fingerprint` reproduces from the file; a second `gen-cert` refuses to overwrite.
#[test]
fn gen_cert_and_fingerprint_agree() {
    let dir = tempfile::tempdir().unwrap();
    let printed = gen_cert(dir.path());
    assert!(dir.path().join("key.pem").exists());
    let out = quicfeed(&["fingerprint", dir.path().join("cert.pem").to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out).trim(), printed);
    assert_eq!(printed.split(':').count(), 32);
    let again = quicfeed(&["gen-cert", "--out", dir.path().to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
}

/// Proves: `server` prints where it listens and its fingerprint; a `client` naming it by host
/// and port (`localhost:PORT`) and pinning that fingerprint sends the lines typed on main,
/// prints the server's echoes and the feed's ticks, and exits cleanly at the end of its input;
/// the server prints the player's lines.
#[test]
fn a_client_talks_to_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let fingerprint = gen_cert(dir.path());
    let server = RunningServer::start(dir.path());
    let printed = server.wait_for("fingerprint ");
    assert_eq!(printed, format!("fingerprint {fingerprint}"));

    // Named by host and port, as a player types it.
    let by_name = server.addr.replace("127.0.0.1", "localhost");
    let out = client(
        &[&by_name, "--fingerprint", &fingerprint],
        "hello\nsecond line\n",
    );
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("connected to "), "{text}");
    assert!(text.contains("< echo: hello"), "{text}");
    assert!(text.contains("< echo: second line"), "{text}");
    assert!(text.contains("feed: tick "), "{text}");
    assert!(text.contains("bye: "), "{text}");
    assert!(server.wait_for("[").contains("hello"));
}

/// Proves: the client's default trust is trust on first use (recorded in the `known_hosts`
/// file it is given, and said on stdout the first time only), and a wrong pinned fingerprint
/// fails with both fingerprints shown and a non-zero exit status.
#[test]
fn a_client_trusts_on_first_use_and_refuses_a_wrong_pin() {
    let dir = tempfile::tempdir().unwrap();
    let fingerprint = gen_cert(dir.path());
    let server = RunningServer::start(dir.path());
    let known = dir.path().join("known_hosts");

    let out = client(
        &[&server.addr, "--known-hosts", known.to_str().unwrap()],
        "hi\n",
    );
    assert!(out.status.success(), "{out:?}");
    let recorded = std::fs::read_to_string(&known).unwrap();
    assert!(recorded.contains(&fingerprint), "{recorded}");
    let notice = format!(
        "trusted new server localhost@{} with fingerprint {fingerprint} (recorded in {})",
        server.addr,
        known.display()
    );
    assert!(stdout(&out).contains(&notice), "{}", stdout(&out));

    let out = client(
        &[&server.addr, "--known-hosts", known.to_str().unwrap()],
        "hi again\n",
    );
    assert!(out.status.success(), "{out:?}");
    assert!(!stdout(&out).contains("trusted new server"), "{out:?}");
    assert_eq!(std::fs::read_to_string(&known).unwrap(), recorded);

    let wrong = "AA:".repeat(31) + "AA";
    let out = client(&[&server.addr, "--fingerprint", &wrong], "hi\n");
    assert!(!out.status.success());
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(errors.contains(&fingerprint), "{errors}");
    assert!(errors.contains(&wrong), "{errors}");
}

/// A process started with stdin piped and never written (kept open, as at a terminal), its
/// stdout lines on a channel; killed on drop.
struct Interactive {
    child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Interactive {
    fn start(args: &[&str]) -> Interactive {
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Interactive {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next stdout line starting with `prefix` (within [`EVENT`]).
    async fn wait_for(&mut self, prefix: &str) -> String {
        let found = tokio::time::timeout(EVENT, async {
            while let Some(line) = self.lines.recv().await {
                self.seen.push(line.clone());
                if line.starts_with(prefix) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!("never printed {prefix:?}; printed {:?}", self.seen),
        }
    }

    /// Sends SIGINT, as Ctrl-C at a terminal does.
    fn interrupt(&self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-INT", &pid]).status().unwrap();
        assert!(status.success(), "kill -INT {pid}: {status}");
    }

    /// The exit status, once the process has exited (within [`EVENT`]); the rest of its stdout
    /// is then in `seen`.
    async fn exited(&mut self) -> std::process::ExitStatus {
        let status = tokio::time::timeout(EVENT, async {
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("did not exit; printed {:?}", self.seen));
        while let Some(line) = self.lines.recv().await {
            self.seen.push(line);
        }
        status
    }
}

impl Drop for Interactive {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bound for one awaited event: generous for a loaded 2-core machine, and below the 10 s idle
/// timeout and the server's 15 s grace period that a session ends by when nobody closes it.
const EVENT: Duration = Duration::from_secs(10);

/// Proves: Ctrl-C stops `quicfeed server` at once, with its stdin open and never written (no
/// Enter needed), exit status 0; a connected player's session ends with the server's close
/// (`ServerShutdown`), not a timeout.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_shuts_the_server_down_at_once() {
    use quicfeed::{Client, ClientConfig, Disconnect, Fingerprint, Reason, Trust};

    let dir = tempfile::tempdir().unwrap();
    let path = |file: &str| dir.path().join(file).to_str().unwrap().to_owned();
    let mut server = Interactive::start(&[
        "server",
        "--listen",
        "127.0.0.1:0",
        "--cert",
        &path("cert.pem"),
        "--key",
        &path("key.pem"),
        "--secret",
        &path("secret.key"),
        "--tick-hz",
        "0",
    ]);
    let addr = server.wait_for("listening on ").await["listening on ".len()..].to_owned();
    let fingerprint: Fingerprint = server.wait_for("fingerprint ").await["fingerprint ".len()..]
        .parse()
        .unwrap();
    let config = ClientConfig::new(
        addr.parse::<std::net::SocketAddr>().unwrap(),
        Trust::Fingerprint(fingerprint),
    );
    let session = tokio::time::timeout(EVENT, Client::connect(&config))
        .await
        .unwrap()
        .unwrap();
    server
        .wait_for(&format!("{} joined", session.player_id()))
        .await;

    server.interrupt();
    let status = server.exited().await;
    assert!(status.success(), "{status}; printed {:?}", server.seen);
    assert!(
        server.seen.iter().any(|l| l == "shutting down"),
        "{:?}",
        server.seen
    );
    let why = tokio::time::timeout(EVENT, session.closed()).await.unwrap();
    assert!(
        matches!(
            why,
            Disconnect::ByPeer {
                reason: Reason::ServerShutdown,
                ..
            }
        ),
        "{why}"
    );
}

/// Proves: Ctrl-C in `quicfeed client` (stdin open, nothing typed) closes its session cleanly
/// and exits with status 0: the server sees the player leave with `Normal` at once, not at a
/// timeout; the client says so in a line for a person.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_closes_the_client_session_cleanly() {
    use quicfeed::{Disconnect, Identity, Reason, Server, ServerConfig};

    let identity = Identity::generate_self_signed(&["localhost"]).unwrap();
    let fingerprint = identity.fingerprint().to_string();
    let server = Server::bind(ServerConfig::new("127.0.0.1:0".parse().unwrap(), identity))
        .await
        .unwrap();
    let addr = server.local_addr().to_string();
    let mut client = Interactive::start(&["client", &addr, "--fingerprint", &fingerprint]);
    let session = tokio::time::timeout(EVENT, server.accept())
        .await
        .unwrap()
        .unwrap();
    client.wait_for("connected to ").await;

    client.interrupt();
    let status = client.exited().await;
    assert!(status.success(), "{status}; printed {:?}", client.seen);
    let why = tokio::time::timeout(EVENT, session.closed()).await.unwrap();
    assert!(
        matches!(
            why,
            Disconnect::ByPeer {
                reason: Reason::Normal,
                ..
            }
        ),
        "{why}"
    );
    assert!(
        client.seen.iter().any(|l| l.starts_with("interrupted")),
        "{:?}",
        client.seen
    );
    assert!(
        client.seen.iter().any(|l| l.starts_with("bye: ")),
        "{:?}",
        client.seen
    );
}
