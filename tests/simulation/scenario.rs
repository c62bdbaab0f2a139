//! A scenario drawn from a seed: the clients, their links and workloads, and the faults, each
//! at a virtual time. `Display` prints it, so a failure shows what happened.

use std::fmt;
use std::time::Duration;

use super::net::Link;
use super::rng::Rng;

/// When the faults stop: every reader reads from then on, and everything sent must arrive
/// within the liveness bound.
pub const FAULTS_END: Duration = Duration::from_secs(14);

/// What one side of a session sends and how its application reads.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Mean gap between sends on main and on feed (`None`: that channel stays quiet).
    pub main_every: Option<Duration>,
    pub feed_every: Option<Duration>,
    /// Lane datagrams, one per this.
    pub lane_every: Option<Duration>,
    /// Largest payload sent; most are far smaller.
    pub max_size: usize,
    /// Periods (start, length) when this side's application does not read main and feed.
    pub pauses: Vec<(Duration, Duration)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nothing gets through, either way, for this long.
    Blackhole(Duration),
    /// The client's NAT gives it a new public port.
    NatRebinding,
    /// The client moves its connection to a new socket.
    Migration,
    /// The client gives up its connection and resumes at once (the server supersedes the old).
    Reconnect,
    /// The client closes its session gracefully.
    Close,
    /// The client disappears: nothing of it reaches the network again.
    Vanish,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Blackhole(d) => write!(f, "blackhole for {} ms", d.as_millis()),
            Fault::NatRebinding => f.write_str("NAT rebinding"),
            Fault::Migration => f.write_str("migration to a new socket"),
            Fault::Reconnect => f.write_str("reconnect (supersede)"),
            Fault::Close => f.write_str("graceful close"),
            Fault::Vanish => f.write_str("vanishes"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClientPlan {
    pub id: usize,
    pub link: Link,
    pub join_at: Duration,
    pub client: Workload,
    pub server: Workload,
    /// (time, fault), in time order.
    pub faults: Vec<(Duration, Fault)>,
}

/// One outage of a client's path, as a resume sees it.
#[derive(Debug, Clone, Copy)]
pub struct Outage {
    /// When it starts.
    pub at: Duration,
    /// How long the path is dead (or a resume cut off), from its start to its end.
    pub length: Duration,
    /// How much of the resume budget is left when it ends.
    pub budget_left: Duration,
}

impl ClientPlan {
    /// The outages a resume must cover, each with how much of the resume budget is left once
    /// the path is back. Overlapping blackholes, and blackholes less than `merge` apart (too
    /// short a gap for a resume to be sure to complete in), count as one; so does a NAT
    /// rebinding, a migration or a reconnect less than `merge` from one. The budget starts when
    /// the client starts resuming: when it notices the dead path (`noticed` after the first
    /// blackhole starts), or at a reconnect if that comes first, provided the reconnect's own
    /// resume may still be under way when the path dies (it is at most `attempt` before it).
    pub fn outages(
        &self,
        merge: Duration,
        noticed: Duration,
        attempt: Duration,
        budget: Duration,
    ) -> Vec<Outage> {
        // (start, end, the first blackhole's start, reconnect times)
        let mut spans: Vec<(Duration, Duration, Option<Duration>, Vec<Duration>)> = self
            .faults
            .iter()
            .filter_map(|(at, f)| match f {
                Fault::Blackhole(d) => Some((*at, *at + *d, Some(*at), Vec::new())),
                // A new address or a new connection is no outage for a live connection, but it
                // ends a resume's QUIC handshake under way (QUIC does not migrate during a
                // handshake): next to an outage, it counts as part of it.
                Fault::NatRebinding | Fault::Migration => Some((*at, *at, None, Vec::new())),
                // A reconnect starts a resume at once.
                Fault::Reconnect => Some((*at, *at, None, vec![*at])),
                Fault::Close | Fault::Vanish => None,
            })
            .collect();
        spans.sort_by_key(|span| (span.0, span.1));
        let mut merged: Vec<(Duration, Duration, Option<Duration>, Vec<Duration>)> = Vec::new();
        for (start, end, blackhole, reconnects) in spans {
            match merged.last_mut() {
                Some((_, e, b, r)) if start <= *e + merge => {
                    *e = (*e).max(end);
                    *b = b.or(blackhole);
                    r.extend(reconnects);
                }
                _ => merged.push((start, end, blackhole, reconnects)),
            }
        }
        merged
            .into_iter()
            .filter_map(|(_, end, blackhole, reconnects)| {
                let dead = blackhole?;
                let resuming = reconnects
                    .into_iter()
                    .filter(|r| *r + attempt >= dead)
                    .fold(dead + noticed, Duration::min);
                Some(Outage {
                    at: dead,
                    length: end - dead,
                    budget_left: (resuming + budget).saturating_sub(end),
                })
            })
            .collect()
    }

    /// Whether the link loses packets often enough that a resume attempt may fail whole: a lost
    /// handshake packet inflates QUIC's first round-trip sample (an acknowledgement delayed by
    /// the peer's own retransmission timer counts in full during the handshake), so the probe
    /// that would resend a lost client Finished can come after the attempt's timeout.
    /// (Bursts count when they would lose 2 % or more of 100 packets a second.)
    pub fn lossy(&self) -> bool {
        let bursts = self
            .link
            .burst
            .map_or(0.0, |(p, mean)| p * 100.0 * mean.as_secs_f64());
        self.link.loss >= 0.02 || bursts >= 0.02
    }

    /// How long one message may take to arrive whole on this link, beyond the dead-path
    /// timeout: the largest either side sends, twice (a message cut off by a new connection is
    /// sent again from its start), at a floor rate the link sustains (8 KB/s on a lossy link:
    /// quinn's congestion control at 6 % loss and a 160 ms round trip carries several times
    /// that; 32 KB/s on a clean one).
    pub fn largest_message_time(&self) -> Duration {
        let largest = self.client.max_size.max(self.server.max_size) as f64;
        let floor = if self.lossy() { 8_000.0 } else { 32_000.0 };
        Duration::from_secs_f64(2.0 * largest / floor)
    }

    /// Whether this client's session is meant to end before the scenario does, and how.
    pub fn ending(&self) -> Option<Fault> {
        self.faults
            .iter()
            .map(|(_, f)| *f)
            .find(|f| matches!(f, Fault::Close | Fault::Vanish))
    }
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub seed: u64,
    pub clients: Vec<ClientPlan>,
}

fn workload(rng: &mut Rng, faults_end: Duration) -> Workload {
    let every =
        |rng: &mut Rng, quiet: u64| (!rng.chance(quiet as f64 / 100.0)).then(|| rng.millis(5, 200));
    let mut pauses = Vec::new();
    for _ in 0..rng.below(3) {
        let start = rng.millis(0, faults_end.as_millis() as u64 - 1000);
        // Some pauses are long: a reader that stops until the faults end.
        let length = if rng.chance(0.3) {
            faults_end.saturating_sub(start)
        } else {
            rng.millis(50, 3000)
        };
        pauses.push((start, length.min(faults_end.saturating_sub(start))));
    }
    pauses.sort();
    Workload {
        main_every: every(rng, 20),
        feed_every: every(rng, 10),
        lane_every: rng.chance(0.7).then(|| rng.millis(10, 100)),
        max_size: match rng.below(10) {
            0 => 60_000,
            1..=3 => 8_000,
            _ => 1_200,
        },
        pauses,
    }
}

impl Scenario {
    pub fn new(seed: u64) -> Scenario {
        let mut rng = Rng::new(seed);
        let count = rng.range(1, 3) as usize;
        let mut clients = Vec::new();
        for id in 0..count {
            let link = Link {
                latency: rng.millis(1, 80),
                jitter: rng.millis(0, 15),
                loss: match rng.below(4) {
                    0 => 0.0,
                    1 => 0.005,
                    2 => 0.02,
                    _ => 0.06,
                },
                burst: rng
                    .chance(0.4)
                    .then(|| (rng.unit() * 0.01, rng.millis(10, 120))),
                duplicate: if rng.chance(0.3) { 0.02 } else { 0.0 },
            };
            let join_at = rng.millis(0, 1000);
            let mut faults = Vec::new();
            for _ in 0..rng.below(5) {
                let at = join_at + rng.millis(500, FAULTS_END.as_millis() as u64 - 2000);
                let fault = match rng.below(20) {
                    0..=6 => Fault::Blackhole(match rng.below(4) {
                        // Ridden out by QUIC, or resumed: the dead-path timeout is 1.8 s.
                        0 => rng.millis(100, 1500),
                        1 | 2 => rng.millis(1900, 4000),
                        _ => rng.millis(4000, 7000),
                    }),
                    7..=9 => Fault::NatRebinding,
                    10..=12 => Fault::Migration,
                    13..=15 => Fault::Reconnect,
                    16 | 17 => Fault::Close,
                    _ => Fault::Vanish,
                };
                faults.push((at, fault));
            }
            faults.sort_by_key(|(at, _)| *at);
            // Nothing happens to a client after it closed or vanished.
            if let Some(end) = faults
                .iter()
                .position(|(_, f)| matches!(f, Fault::Close | Fault::Vanish))
            {
                faults.truncate(end + 1);
            }
            clients.push(ClientPlan {
                id,
                link,
                join_at,
                client: workload(&mut rng, FAULTS_END),
                server: workload(&mut rng, FAULTS_END),
                faults,
            });
        }
        Scenario { seed, clients }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn describe(w: &Workload) -> String {
    let every = |e: Option<Duration>| {
        e.map_or("quiet".to_owned(), |d| {
            format!("every ~{} ms", d.as_millis())
        })
    };
    let pauses: Vec<String> = w
        .pauses
        .iter()
        .map(|(at, len)| format!("{}+{} ms", ms(*at), len.as_millis()))
        .collect();
    format!(
        "main {}, feed {}, lane {}, sizes up to {} B, reading paused at [{}]",
        every(w.main_every),
        every(w.feed_every),
        every(w.lane_every),
        w.max_size,
        pauses.join(", ")
    )
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  scenario {}: {} client(s), faults end at {}",
            self.seed,
            self.clients.len(),
            ms(FAULTS_END)
        )?;
        for c in &self.clients {
            writeln!(
                f,
                "  client {}: joins at {}; link: {}",
                c.id,
                ms(c.join_at),
                c.link
            )?;
            writeln!(f, "    client side: {}", describe(&c.client))?;
            writeln!(f, "    server side: {}", describe(&c.server))?;
            for (at, fault) in &c.faults {
                writeln!(f, "    at {}: {fault}", ms(*at))?;
            }
        }
        Ok(())
    }
}
