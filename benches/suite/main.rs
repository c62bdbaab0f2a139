//! quicfeed's benchmark suite: quicfeed against the physical limit (round trips through the
//! network conditioner) and against its peers (bare quinn, TCP + TLS, renet), side by side in
//! one run. BENCHMARKS.md explains the method and holds the figures of a full run.
//!
//! ```text
//! cargo bench --bench suite                 # the full run (about 15 minutes)
//! cargo bench --bench suite -- --quick      # a smoke test (under a minute; CI runs it)
//! cargo bench --bench suite -- --only fanout,memory   # some scenarios only
//! ```
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
}

const USAGE: &str =
    "usage: cargo bench --bench suite [-- [--quick] [--only SCENARIO,...] [--out DIR]]
  --quick          a smoke test: every scenario briefly (under a minute)
  --only LIST      some scenarios only, comma-separated: connect, reqresp, fanout, staleness,
                   memory, bulk
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
    if let Some(code) = memory::child_role() {
        std::process::exit(code);
    }
    let options = options();
    let quick = options.quick;
    let wants = |name: &str| options.only.iter().any(|o| o == name);
    let started = std::time::Instant::now();
    let runtime = common::runtime("qf-bench", 2);
    let mut sections: Vec<Section> = Vec::new();
    let mut series = Vec::new();
    if wants("connect") {
        eprintln!("connect...");
        sections.extend(runtime.block_on(connect::run(quick)));
    }
    if wants("reqresp") {
        eprintln!("reqresp...");
        let (section, s) = runtime.block_on(reqresp::run(if quick { 2_000 } else { 50_000 }));
        sections.push(section);
        series = s;
    }
    if wants("fanout") {
        eprintln!("fanout...");
        sections.push(fanout::run(quick));
    }
    if wants("staleness") {
        eprintln!("staleness...");
        sections.push(runtime.block_on(staleness::run(quick)));
    }
    if wants("memory") {
        eprintln!("memory...");
        sections.push(runtime.block_on(memory::run(quick)));
    }
    if wants("bulk") {
        eprintln!("bulk...");
        sections.push(runtime.block_on(bulk::run(quick)));
    }
    let report = Report {
        mode: if quick { "quick" } else { "full" },
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
