//! quicfeed's benchmark suite: quicfeed against the physical limit (round trips through the
//! network conditioner) and against its peers (bare quinn, TCP + TLS, renet), side by side in
//! one run. BENCHMARKS.md explains the method and holds the figures of a full run.
//!
//! ```text
//! cargo bench --bench suite                 # the full run: three rounds (about 30 minutes)
//! cargo bench --bench suite -- --quick      # a smoke test: one round (about four minutes; CI runs it)
//! cargo bench --bench suite -- --only fanout,memory --rounds 5   # some scenarios, 5 rounds
//! ```
//!
//! Each round runs every chosen scenario, in an order that rotates from round to round (so no
//! scenario always runs first, or always after the heaviest); each figure is then the median of
//! the rounds with their range, a target met in some rounds only is reported as not separable on
//! this machine, and every round starts by measuring the path's own noise (see `rounds.rs` and
//! `common::path_noise`).
//!
//! Writes `report.md`, `report.json` and `latency.svg` into `target/bench-report/` (or the
//! directory after `--out`), and prints the Markdown. Nothing here asserts a speed: targets
//! are reported as met or not.
//!
//! Scenarios: `connect`, `reqresp`, `fanout`, `staleness`, `memory`, `bulk`.

mod bulk;
mod common;
mod connect;
mod fanout;
mod memory;
mod plot;
mod renet_side;
mod report;
mod reqresp;
mod rounds;
mod staleness;

use std::path::PathBuf;

use report::{Report, Section};

/// Counts heap bytes, for the memory scenario (the baselines pay the same small cost).
#[global_allocator]
static ALLOCATOR: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

const SCENARIOS: [&str; 6] = [
    "connect",
    "reqresp",
    "fanout",
    "staleness",
    "memory",
    "bulk",
];

struct Options {
    quick: bool,
    only: Vec<String>,
    out: PathBuf,
    /// `None`: three for a full run, one for a quick one.
    rounds: Option<usize>,
}

const USAGE: &str =
    "usage: cargo bench --bench suite [-- [--quick] [--only SCENARIO,...] [--out DIR]]
  --quick          a smoke test: every scenario briefly (about four minutes)
  --only LIST      some scenarios only, comma-separated: connect, reqresp, fanout, staleness,
                   memory, bulk
  --rounds N       rounds of every scenario (default 3, or 1 with --quick)
  --out DIR        where report.md, report.json and latency.svg go (default target/bench-report)";

/// Ends the run with `problem` and the usage, exit status 2 (as a command-line tool does).
fn usage_error(problem: &str) -> ! {
    eprintln!("error: {problem}\n{USAGE}");
    std::process::exit(2);
}

fn options() -> Options {
    let mut options = Options {
        quick: false,
        only: SCENARIOS.iter().map(|s| (*s).to_owned()).collect(),
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-report"),
        rounds: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--only" => {
                let Some(list) = args.next() else {
                    usage_error("--only needs a list of scenarios");
                };
                options.only = list.split(',').map(str::to_owned).collect();
                for name in &options.only {
                    if !SCENARIOS.contains(&name.as_str()) {
                        usage_error(&format!("unknown scenario {name:?}"));
                    }
                }
            }
            "--out" => match args.next() {
                Some(dir) => options.out = PathBuf::from(dir),
                None => usage_error("--out needs a directory"),
            },
            "--rounds" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) if n >= 1 => options.rounds = Some(n),
                _ => usage_error("--rounds needs a whole number, at least 1"),
            },
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            // `cargo bench` passes --bench to every bench target.
            "--bench" => {}
            other => usage_error(&format!("unknown argument {other:?}")),
        }
    }
    options
}

fn main() {
    // A child process of the fan-out scenario (its clients): before anything else.
    if let Some(code) = fanout::child_role() {
        std::process::exit(code);
    }
    if let Some(code) = memory::child_role() {
        std::process::exit(code);
    }
    rounds::self_test();
    let options = options();
    let quick = options.quick;
    let rounds = options.rounds.unwrap_or(if quick { 1 } else { 3 });
    let chosen: Vec<&str> = SCENARIOS
        .iter()
        .copied()
        .filter(|name| options.only.iter().any(|o| o == name))
        .collect();
    let started = std::time::Instant::now();
    let runtime = common::runtime("qf-bench", 2);
    // Per round: the path's noise, then each scenario's sections.
    let mut noise: Vec<Section> = Vec::new();
    let mut by_scenario: Vec<Vec<Vec<Section>>> = vec![Vec::new(); chosen.len()];
    let mut series = Vec::new();
    for round in 0..rounds {
        eprintln!("round {} of {rounds}: path noise...", round + 1);
        let pings = if quick { 200 } else { 2_000 };
        noise.push(runtime.block_on(common::path_noise(
            std::time::Duration::from_millis(10),
            pings,
            round as u64,
        )));
        for k in 0..chosen.len() {
            let index = (k + round) % chosen.len();
            let name = chosen[index];
            eprintln!("round {} of {rounds}: {name}...", round + 1);
            let sections = match name {
                "connect" => runtime.block_on(connect::run(quick)),
                "reqresp" => {
                    let (section, s) =
                        runtime.block_on(reqresp::run(if quick { 2_000 } else { 50_000 }));
                    series = s;
                    vec![section]
                }
                "fanout" => vec![fanout::run(quick)],
                "staleness" => vec![runtime.block_on(staleness::run(quick))],
                "memory" => vec![runtime.block_on(memory::run(quick))],
                "bulk" => vec![runtime.block_on(bulk::run(quick))],
                other => usage_error(&format!("unknown scenario {other:?}")),
            };
            by_scenario[index].push(sections);
        }
    }
    let noise = rounds::merge(noise);
    let noise_p99 = noise
        .rows
        .first()
        .and_then(|row| row.get(2))
        .cloned()
        .unwrap_or_default();
    let mut sections = vec![noise];
    for runs in by_scenario {
        let count = runs.first().map_or(0, Vec::len);
        for position in 0..count {
            let same: Vec<Section> = runs
                .iter()
                .filter_map(|run| run.get(position).cloned())
                .collect();
            let mut merged = rounds::merge(same);
            merged.note(format!(
                "The path's own noise in this run (the conditioner's round trip over its floor, \
                 first section): p99 {noise_p99}."
            ));
            sections.push(merged);
        }
    }
    let report = Report {
        mode: if quick { "quick" } else { "full" },
        rounds,
        machine: report::machine(),
        sections,
    };
    report.write(&options.out).expect("write the report");
    if !series.is_empty() {
        let svg = plot::svg(
            "Main request/response latency, loopback (log scale)",
            &series,
        );
        std::fs::write(options.out.join("latency.svg"), svg).expect("write the plot");
    }
    println!("{}", report.markdown());
    eprintln!(
        "report written to {} in {:.0} s",
        options.out.display(),
        started.elapsed().as_secs_f64()
    );
}
