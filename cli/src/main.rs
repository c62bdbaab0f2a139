//! `quicfeed`: run a server, talk to one interactively, make and inspect certificates.
//!
//! ```text
//! quicfeed gen-cert --out certs                     # a self-signed certificate and its key
//! quicfeed fingerprint certs/cert.pem               # the SHA-256 fingerprint clients pin
//! quicfeed server --listen 0.0.0.0:4433             # echoes main, ticks on feed
//! quicfeed client 10.0.0.5:4433 --fingerprint AB:CD:...   # lines typed go on main
//! quicfeed client 10.0.0.5:4433                     # trust on first use (known_hosts)
//! ```
//!
//! Progress goes to stdout, logs to stderr (`RUST_LOG` or `--verbose` for more). Ctrl-C stops a
//! server (closing every session with `ServerShutdown`) and a client (closing its session
//! normally, exit status 0) at once, without waiting for input.

use std::io::{BufRead as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use quicfeed::certs::DEV_CERT_NAMES;
use quicfeed::{
    Client, ClientConfig, Fingerprint, Identity, KnownHosts, Prepared, Reason, Server,
    ServerAddress, ServerConfig, ServerSecret, Session, SessionEvent, Trust,
};
use tokio::sync::mpsc;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

#[derive(Parser)]
#[command(
    name = "quicfeed",
    version,
    about = "quicfeed: game networking over QUIC"
)]
struct Cli {
    /// Log more (debug level) to stderr.
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a server: prints each player's main messages and echoes them back, sends a tick on
    /// every session's feed, and sends lines typed here to every session's feed.
    Server {
        /// UDP address to listen on.
        #[arg(long, default_value = "127.0.0.1:4433")]
        listen: SocketAddr,
        /// Certificate chain (PEM); generated with `--key` when both are missing.
        #[arg(long, default_value = "certs/cert.pem")]
        cert: PathBuf,
        /// Private key (PEM).
        #[arg(long, default_value = "certs/key.pem")]
        key: PathBuf,
        /// The server secret (generated when missing): kept across restarts, it lets the
        /// clients of a restarted server learn of the restart within a round trip.
        #[arg(long, default_value = "certs/secret.key")]
        secret: PathBuf,
        /// Feed ticks per second (0: none; at most 1000).
        #[arg(long, default_value_t = 1.0)]
        tick_hz: f64,
    },
    /// Connect to a server: lines typed go on main; main replies and feed messages are printed.
    /// End with Ctrl-D (after the replies to what was sent), or Ctrl-C (at once); either closes
    /// the session cleanly and exits with status 0.
    Client {
        /// The server: HOST:PORT (resolved, IPv4 or IPv6) or ADDRESS:PORT, e.g. localhost:4433,
        /// 192.0.2.10:4433, [::1]:4433.
        server: ServerAddress,
        /// The name the certificate must be for (and the `known_hosts` key, with the address).
        /// Default: the host name, or `localhost` for an address.
        #[arg(long)]
        name: Option<String>,
        /// Trust a certificate with this SHA-256 fingerprint (repeat to accept several, for a
        /// rotation).
        #[arg(long)]
        fingerprint: Vec<Fingerprint>,
        /// Trust exactly this certificate (PEM).
        #[arg(long, conflicts_with = "fingerprint")]
        cert: Option<PathBuf>,
        /// Trust on first use with this `known_hosts` file (the default trust, at
        /// `$QUICFEED_KNOWN_HOSTS` or `~/.config/quicfeed/known_hosts`).
        #[arg(long, conflicts_with_all = ["fingerprint", "cert"])]
        known_hosts: Option<PathBuf>,
        /// Do not authenticate the server at all (encrypted, but anyone can impersonate it).
        #[arg(long, conflicts_with_all = ["fingerprint", "cert", "known_hosts"])]
        insecure: bool,
    },
    /// Generate a self-signed certificate and key (ECDSA P-256) and print the fingerprint.
    GenCert {
        /// Directory for `cert.pem` and `key.pem`.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Names the certificate is for (default: localhost, 127.0.0.1, ::1).
        #[arg(long = "name")]
        names: Vec<String>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Print the SHA-256 fingerprint of a certificate (PEM), as clients pin it.
    Fingerprint {
        /// The certificate file.
        cert: PathBuf,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Server {
            listen,
            cert,
            key,
            secret,
            tick_hz,
        } => server(listen, &cert, &key, &secret, tick_hz).await,
        Command::Client {
            server,
            name,
            fingerprint,
            cert,
            known_hosts,
            insecure,
        } => {
            let trust = trust(fingerprint, cert, known_hosts, insecure);
            match trust {
                Ok(trust) => client(server, name, trust).await,
                Err(e) => Err(e),
            }
        }
        Command::GenCert { out, names, force } => gen_cert(&out, &names, force),
        Command::Fingerprint { cert } => Fingerprint::of_pem_file(&cert)
            .map(|fp| say(format!("{fp}")))
            .map_err(Into::into),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn init_logging(verbose: bool) {
    let default = if verbose { "debug" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Ctrl-C, listened for from the moment this is made: `tokio::signal::ctrl_c()` installs its
/// handler only when first awaited, so a Ctrl-C just after "listening on" could still kill the
/// process without its graceful shutdown.
struct Interrupt {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
    #[cfg(windows)]
    signal: tokio::signal::windows::CtrlC,
}

impl Interrupt {
    fn listen() -> std::io::Result<Interrupt> {
        #[cfg(unix)]
        let signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        #[cfg(windows)]
        let signal = tokio::signal::windows::ctrl_c()?;
        Ok(Interrupt { signal })
    }

    /// The next Ctrl-C.
    async fn recv(&mut self) {
        self.signal.recv().await;
    }
}

/// The lines typed on stdin, read on a thread of its own; the channel closes at the end of the
/// input. (Not `tokio::io::stdin()`: its blocking read sits in tokio's blocking pool, which
/// the runtime waits for at exit, so a Ctrl-C took effect only once Enter was pressed, and
/// that line was lost. This thread is abandoned at exit, its pending read with it.)
fn stdin_lines() -> std::io::Result<mpsc::Receiver<std::io::Result<String>>> {
    let (lines, receiver) = mpsc::channel(16);
    std::thread::Builder::new()
        .name("stdin".to_owned())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let failed = line.is_err();
                if lines.blocking_send(line).is_err() || failed {
                    break;
                }
            }
        })?;
    Ok(receiver)
}

/// A line of progress on stdout, flushed at once (so pipes see it).
fn say(line: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn gen_cert(out: &Path, names: &[String], force: bool) -> Result {
    let (cert, key) = (out.join("cert.pem"), out.join("key.pem"));
    if !force && (cert.exists() || key.exists()) {
        return Err(format!(
            "{} or {} exists; pass --force to overwrite",
            cert.display(),
            key.display()
        )
        .into());
    }
    let names: Vec<&str> = if names.is_empty() {
        DEV_CERT_NAMES.to_vec()
    } else {
        names.iter().map(String::as_str).collect()
    };
    std::fs::create_dir_all(out)?;
    let identity = Identity::generate_self_signed(&names)?;
    identity.write_pem_files(&cert, &key)?;
    say(format!(
        "wrote {} and {} for {}",
        cert.display(),
        key.display(),
        names.join(", ")
    ));
    say(format!("fingerprint {}", identity.fingerprint()));
    Ok(())
}

async fn server(
    listen: SocketAddr,
    cert: &Path,
    key: &Path,
    secret_path: &Path,
    tick_hz: f64,
) -> Result {
    if !(0.0..=1000.0).contains(&tick_hz) {
        return Err(format!("--tick-hz must be within 0..=1000, not {tick_hz}").into());
    }
    let (identity, generated) = Identity::load_or_generate(cert, key, DEV_CERT_NAMES)?;
    if generated {
        say(format!("generated a certificate in {}", cert.display()));
    }
    let (secret, generated) = ServerSecret::load_or_generate(secret_path)?;
    if generated {
        say(format!(
            "generated a server secret in {}",
            secret_path.display()
        ));
    }
    let mut config = ServerConfig::new(listen, identity);
    config.secret = Some(secret);
    let mut interrupt = Interrupt::listen()?;
    let server = Arc::new(Server::bind(config).await?);
    say(format!("listening on {}", server.local_addr()));
    say(format!("fingerprint {}", server.fingerprint()));

    let acceptor = tokio::spawn({
        let server = server.clone();
        async move {
            while let Some(session) = server.accept().await {
                tokio::spawn(serve(session));
            }
        }
    });
    if tick_hz > 0.0 {
        tokio::spawn(tick(server.clone(), Duration::from_secs_f64(1.0 / tick_hz)));
    }
    // Lines typed on the server go to every session's feed; a closed stdin just stops that.
    let mut lines = stdin_lines()?;
    tokio::spawn({
        let server = server.clone();
        async move {
            while let Some(Ok(line)) = lines.recv().await {
                match Prepared::new(&format!("server: {line}")) {
                    Ok(message) => {
                        let sent = server.broadcast_feed(&message);
                        say(format!("sent to {} players", sent.sent));
                    }
                    Err(e) => say(format!("cannot send: {e}")),
                }
            }
        }
    });
    interrupt.recv().await;
    say("shutting down");
    server
        .shutdown(Reason::ServerShutdown, "server stopped by operator")
        .await;
    acceptor.await?;
    Ok(())
}

/// One player: prints what it says on main and echoes it back.
async fn serve(session: Session) {
    let player = session.player_id();
    say(format!(
        "{player} joined from {}",
        session
            .remote_address()
            .map_or_else(|| "?".to_owned(), |a| a.to_string())
    ));
    loop {
        match session.main().recv::<String>().await {
            Ok(text) => {
                say(format!("[{player}] {text}"));
                if session.main().send(&format!("echo: {text}")).await.is_err() {
                    break;
                }
            }
            Err(quicfeed::RecvError::Decode(e)) => say(format!("[{player}] undecodable: {e}")),
            Err(quicfeed::RecvError::Gap { missed }) => {
                say(format!("[{player}] {missed} messages lost in an outage"))
            }
            Err(_) => break,
        }
    }
    say(format!("{player} left: {}", session.closed().await));
}

/// Sends `tick N` on every session's feed, encoded once per tick.
async fn tick(server: Arc<Server>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    for n in 0u64.. {
        ticker.tick().await;
        if let Ok(message) = Prepared::new(&format!("tick {n}")) {
            server.broadcast_feed(&message);
        }
    }
}

/// A receive error after which the channel carries on (a message of another type, messages
/// lost in an outage).
fn recoverable(error: &quicfeed::RecvError) -> bool {
    matches!(
        error,
        quicfeed::RecvError::Decode(_) | quicfeed::RecvError::Gap { .. }
    )
}

fn trust(
    fingerprints: Vec<Fingerprint>,
    cert: Option<PathBuf>,
    known_hosts: Option<PathBuf>,
    insecure: bool,
) -> Result<Trust> {
    if insecure {
        return Ok(Trust::DangerousAcceptAnyCertificate);
    }
    if let Some(cert) = cert {
        return Ok(Trust::certificate_pem_file(&cert)?);
    }
    match fingerprints.len() {
        0 => {}
        1 => return Ok(Trust::Fingerprint(fingerprints[0])),
        _ => return Ok(Trust::Fingerprints(fingerprints)),
    }
    let path = known_hosts
        .or_else(KnownHosts::default_path)
        .ok_or("no known_hosts file: pass --known-hosts, --fingerprint or --cert")?;
    Ok(Trust::KnownHosts(KnownHosts::new(path)))
}

async fn client(server: ServerAddress, name: Option<String>, trust: Trust) -> Result {
    // A clone shares what the connection's trust on first use records.
    let known_hosts = match &trust {
        Trust::KnownHosts(known) => Some(known.clone()),
        _ => None,
    };
    let mut config = ClientConfig::new(server.clone(), trust);
    if let Some(name) = name {
        config.server_name = name;
    }
    let mut interrupt = Interrupt::listen()?;
    let started = Instant::now();
    let session = tokio::select! {
        session = Client::connect(&config) => session,
        () = interrupt.recv() => return Err("interrupted while connecting".into()),
    };
    // Said even if the connection failed afterwards: the file has changed.
    if let Some(known) = &known_hosts {
        for (host, fingerprint) in known.newly_recorded() {
            say(format!(
                "trusted new server {host} with fingerprint {fingerprint} (recorded in {})",
                known.path().display()
            ));
        }
    }
    let session = session?;
    say(format!(
        "connected to {server} as {} in {:.1} ms; type lines to send on main, Ctrl-D or Ctrl-C \
         to quit",
        session.player_id(),
        started.elapsed().as_secs_f64() * 1e3
    ));
    let (handle, main, feed) = session.into_parts();
    let (to_main, from_main) = main.split();
    let (_, from_feed) = feed.split();

    tokio::spawn(async move {
        loop {
            match from_feed.recv::<String>().await {
                Ok(text) => say(format!("feed: {text}")),
                Err(e) if recoverable(&e) => say(format!("feed: ({e})")),
                Err(_) => break,
            }
        }
    });
    let replies = Arc::new(AtomicU64::new(0));
    tokio::spawn({
        let replies = replies.clone();
        async move {
            loop {
                match from_main.recv::<String>().await {
                    Ok(text) => {
                        say(format!("< {text}"));
                        replies.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) if recoverable(&e) => say(format!("< ({e})")),
                    Err(_) => break,
                }
            }
        }
    });
    tokio::spawn({
        let mut events = handle.events();
        async move {
            while let Some(event) = events.next().await {
                match event {
                    SessionEvent::Migrated { from, to } => say(format!("(moved {from} -> {to})")),
                    SessionEvent::ConnectionLost { why } => {
                        say(format!("(connection lost: {why}; resuming)"))
                    }
                    SessionEvent::Resumed { outage, .. } => {
                        say(format!("(resumed after {:.1} s)", outage.as_secs_f64()))
                    }
                    other => tracing::debug!(?other, "session event"),
                }
            }
        }
    });

    let mut sent = 0u64;
    let mut lines = stdin_lines()?;
    let interrupted = loop {
        tokio::select! {
            line = lines.recv() => match line {
                Some(Ok(line)) => tokio::select! {
                    // A send waits while the server is not taking messages: Ctrl-C still works.
                    done = to_main.send(&line) => {
                        done?;
                        sent += 1;
                    }
                    () = interrupt.recv() => break true,
                },
                Some(Err(e)) => return Err(format!("cannot read the input: {e}").into()),
                None => break false,
            },
            () = interrupt.recv() => break true,
            why = handle.closed() => return Err(format!("session ended: {why}").into()),
        }
    };
    if interrupted {
        say("interrupted: closing the session");
    } else {
        // End of input: wait (a little, or until Ctrl-C) for the replies still on their way.
        let deadline = Instant::now() + Duration::from_secs(5);
        let replied = async {
            while replies.load(Ordering::SeqCst) < sent && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::select! {
            () = replied => {}
            () = interrupt.recv() => {}
        }
    }
    let stats = handle.stats();
    say(format!(
        "bye: rtt {:.1} ms, {} sent, {} replies",
        stats.rtt.unwrap_or_default().as_secs_f64() * 1e3,
        sent,
        replies.load(Ordering::SeqCst)
    ));
    let why = if interrupted {
        "player quit with Ctrl-C"
    } else {
        "client done"
    };
    // Returns once the close has gone out, so the server sees the player leave now.
    handle.close_gracefully(Reason::Normal, why).await;
    Ok(())
}
