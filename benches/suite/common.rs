//! What the scenarios share: percentiles, a server behind the conditioner, TLS material for the
//! baselines, a clock every process of the run can read, and CPU time per thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use quicfeed::conditioner::{Conditions, Relay};
use quicfeed::{Identity, Server, ServerConfig, Trust};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Microseconds on the wall clock (since the Unix epoch). Every process on this machine reads
/// the same clock, so a time stamped in one process (the fan-out's server) can be subtracted
/// from a time read in another (its clients' process); `Instant` cannot be sent across
/// processes. Only differences of a few milliseconds are taken, so a step of the clock (NTP)
/// during a run would show as one outlier, and a difference below zero is taken as zero.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Percentiles of a set of samples, in milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(crate) struct Summary {
    pub(crate) n: usize,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) max: f64,
}

impl Summary {
    /// From samples in milliseconds (sorted here).
    pub(crate) fn of_ms(samples: &mut [f64]) -> Summary {
        samples.sort_by(f64::total_cmp);
        Summary {
            n: samples.len(),
            p50: percentile(samples, 0.5),
            p99: percentile(samples, 0.99),
            p999: percentile(samples, 0.999),
            max: samples.last().copied().unwrap_or(f64::NAN),
        }
    }

    pub(crate) fn of_durations(samples: &[Duration]) -> Summary {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        Summary::of_ms(&mut ms)
    }

    /// From samples in microseconds.
    pub(crate) fn of_us(samples: &[u32]) -> Summary {
        let mut ms: Vec<f64> = samples.iter().map(|&us| f64::from(us) / 1e3).collect();
        Summary::of_ms(&mut ms)
    }
}

/// The nearest-rank percentile `p` (0..=1) of sorted samples; NaN when there are none.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A quicfeed server on loopback, a relay in front of it with `link` both ways, and the trust
/// that pins the server.
pub(crate) struct Rig {
    pub(crate) server: Server,
    pub(crate) relay: Relay,
    pub(crate) trust: Trust,
}

/// Starts a [`Rig`]; the relay's randomness comes from `seed`.
pub(crate) async fn rig(link: Conditions, seed: u64) -> Rig {
    let (server, trust) = server(ServerConfig::new(loopback(), identity())).await;
    let relay = Relay::start_seeded(server.local_addr(), link.clone(), link, seed)
        .await
        .expect("relay");
    Rig {
        server,
        relay,
        trust,
    }
}

/// A quicfeed server with `config`, and the trust that pins it.
pub(crate) async fn server(mut config: ServerConfig) -> (Server, Trust) {
    // Every client of a benchmark runs on this machine, so all come from one address.
    config.max_sessions_per_address = config.max_sessions;
    let trust = Trust::Certificate(config_certificate(&config));
    (Server::bind(config).await.expect("server"), trust)
}

fn config_certificate(config: &ServerConfig) -> CertificateDer<'static> {
    config.identity.certificate().clone()
}

pub(crate) fn identity() -> Identity {
    Identity::generate_self_signed(&["localhost"]).expect("certificate")
}

pub(crate) fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("address")
}

/// A self-signed certificate for the baselines (the same kind quicfeed generates: ECDSA P-256).
pub(crate) struct Tls {
    pub(crate) certificate: CertificateDer<'static>,
    key: Vec<u8>,
}

impl Tls {
    pub(crate) fn generate() -> Tls {
        let generated =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
        Tls {
            certificate: generated.cert.der().clone(),
            key: generated.signing_key.serialize_der(),
        }
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A TLS 1.3 server configuration with `alpn`.
    pub(crate) fn server_config(&self, alpn: &[u8]) -> rustls::ServerConfig {
        let mut config = rustls::ServerConfig::builder_with_provider(Tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![self.certificate.clone()], self.key())
            .expect("server config");
        config.alpn_protocols = vec![alpn.to_vec()];
        config
    }

    /// A TLS 1.3 client configuration that trusts this certificate only.
    pub(crate) fn client_config(&self, alpn: &[u8]) -> rustls::ClientConfig {
        let mut config = Tls::trusting(self.certificate.clone());
        config.alpn_protocols = vec![alpn.to_vec()];
        config
    }

    /// A TLS 1.3 client configuration that trusts `certificate` only, with the ALPN of the bare
    /// quinn baseline.
    pub(crate) fn trusting(certificate: CertificateDer<'static>) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certificate).expect("root");
        let mut config = rustls::ClientConfig::builder_with_provider(Tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"bare".to_vec()];
        config
    }

    /// A bare quinn server endpoint on loopback (default transport settings).
    pub(crate) fn quinn_server(&self) -> quinn::Endpoint {
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(self.server_config(b"bare"))
            .expect("quic server config");
        let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        quinn::Endpoint::server(config, loopback()).expect("quinn server")
    }

    /// A bare quinn client endpoint on loopback that trusts this certificate.
    pub(crate) fn quinn_client(&self) -> quinn::Endpoint {
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(self.client_config(b"bare"))
            .expect("quic client config");
        let mut endpoint = quinn::Endpoint::client(loopback()).expect("quinn client");
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        endpoint
    }
}

/// The /proc directories of this process's threads whose name starts with `prefix` (Linux).
/// `None` where /proc is not readable.
fn named_threads(prefix: &str) -> Option<Vec<std::path::PathBuf>> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let path = task.ok()?.path();
        let Ok(name) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if name.starts_with(prefix) {
            found.push(path);
        }
    }
    Some(found)
}

/// CPU time (user + system) used so far by this process's threads whose name starts with
/// `prefix`, from /proc (Linux). `None` where /proc is not readable.
pub(crate) fn thread_cpu(prefix: &str) -> Option<Duration> {
    let ticks_per_second = 100.0; // USER_HZ, 100 on every Linux configuration in use.
    let mut total = 0u64;
    for path in named_threads(prefix)? {
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        // Fields after the command name (which ends with the last ')'): utime is the 12th and
        // stime the 13th of them.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        total += fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    }
    Some(Duration::from_secs_f64(total as f64 / ticks_per_second))
}

/// Like [`thread_cpu`], to the nanosecond: the time on a CPU the scheduler keeps per thread
/// (`/proc/self/task/*/schedstat`, user and system alike), so a short window is not rounded
/// to 10 ms ticks. Falls back to [`thread_cpu`] where schedstat is not readable.
pub(crate) fn thread_cpu_precise(prefix: &str) -> Option<Duration> {
    let precise = || -> Option<Duration> {
        let mut total = 0u64;
        for path in named_threads(prefix)? {
            // The first field: nanoseconds spent on a CPU.
            let stat = std::fs::read_to_string(path.join("schedstat")).ok()?;
            total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
        }
        Some(Duration::from_nanos(total))
    };
    precise().or_else(|| thread_cpu(prefix))
}

/// A tokio runtime whose threads are named `name` (so [`thread_cpu`] can count them).
pub(crate) fn runtime(name: &str, workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The path's own noise: UDP pings through a relay with `link` each way (no loss) to an echo
/// socket, on this machine now. Its round trip over the floor is what the machine adds to every
/// delay a scenario measures through the conditioner (the relay's scheduling, the other
/// process's load), so a delay within it of another cannot be told apart.
pub(crate) async fn path_noise(
    one_way: Duration,
    pings: usize,
    seed: u64,
) -> crate::report::Section {
    let echo = tokio::net::UdpSocket::bind(loopback())
        .await
        .expect("echo socket");
    let echo_addr = echo.local_addr().expect("echo address");
    let echoing = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..n], from).await;
        }
    });
    let link = Conditions::latency(one_way);
    let relay = Relay::start_seeded(echo_addr, link.clone(), link, seed)
        .await
        .expect("relay");
    let socket = tokio::net::UdpSocket::bind(loopback())
        .await
        .expect("ping socket");
    let mut over = Vec::with_capacity(pings);
    let mut buf = [0u8; 64];
    let floor = 2.0 * one_way.as_secs_f64() * 1e3;
    for n in 0..pings as u64 {
        let sent = Instant::now();
        socket
            .send_to(&n.to_be_bytes(), relay.local_addr())
            .await
            .expect("ping");
        // A ping lost or late beyond a second counts as a second.
        let rtt = match tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                let (len, _) = socket.recv_from(&mut buf).await.expect("pong");
                if len == 8 && buf[..8] == n.to_be_bytes() {
                    return sent.elapsed();
                }
            }
        })
        .await
        {
            Ok(rtt) => rtt,
            Err(_) => Duration::from_secs(1),
        };
        over.push(rtt.as_secs_f64() * 1e3 - floor);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    echoing.abort();
    let summary = Summary::of_ms(&mut over);
    let mut section = crate::report::Section::new(
        "Path noise (the conditioner's own delay)",
        &format!(
            "{pings} UDP pings, one every 5 ms, through the conditioner at {} ms each way (no \
             loss) to an echo socket: the round trip over its {floor:.0} ms floor. Delays below \
             that differ by less than this are not separable on this machine.",
            one_way.as_millis()
        ),
        &[
            "pings",
            "over floor p50",
            "over floor p99",
            "over floor max",
        ],
    );
    section.row(vec![
        pings.to_string(),
        crate::report::ms(summary.p50),
        crate::report::ms(summary.p99),
        crate::report::ms(summary.max),
    ]);
    section.figures = serde_json::json!({"floor_ms": floor, "over_floor": summary});
    section
}
