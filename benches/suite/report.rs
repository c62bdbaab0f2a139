//! The report: sections of tables and targets, written as Markdown and as JSON.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

/// A target from the issue, its measured value, and whether it is met.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Target {
    pub(crate) name: String,
    pub(crate) measured: String,
    pub(crate) limit: String,
    pub(crate) met: bool,
    /// "met", "**missed**", or, over several rounds, "not separable on this machine (...)".
    pub(crate) verdict: String,
}

/// One scenario's results: a table (with its figures also as JSON) and the targets it checks.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Section {
    pub(crate) title: String,
    pub(crate) method: String,
    pub(crate) headers: Vec<String>,
    pub(crate) rows: Vec<Vec<String>>,
    pub(crate) figures: serde_json::Value,
    pub(crate) targets: Vec<Target>,
    pub(crate) notes: Vec<String>,
}

impl Section {
    pub(crate) fn new(title: &str, method: &str, headers: &[&str]) -> Section {
        Section {
            title: title.to_owned(),
            method: method.to_owned(),
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
            figures: serde_json::Value::Null,
            targets: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn target(&mut self, name: &str, measured: String, limit: &str, met: bool) {
        self.targets.push(Target {
            name: name.to_owned(),
            measured,
            limit: limit.to_owned(),
            met,
            verdict: if met { "met" } else { "**missed**" }.to_owned(),
        });
    }

    pub(crate) fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    fn markdown(&self, out: &mut String) {
        let _ = writeln!(out, "## {}\n\n{}\n", self.title, self.method);
        let _ = writeln!(out, "| {} |", self.headers.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(self.headers.len()));
        for row in &self.rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        out.push('\n');
        for note in &self.notes {
            let _ = writeln!(out, "{note}\n");
        }
    }
}

/// The whole run.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) mode: &'static str,
    /// How many rounds each scenario ran.
    pub(crate) rounds: usize,
    pub(crate) machine: String,
    pub(crate) sections: Vec<Section>,
}

impl Report {
    pub(crate) fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# quicfeed benchmark report ({} run, {} round{})\n\nMachine: {}\n",
            self.mode,
            self.rounds,
            if self.rounds == 1 { "" } else { "s" },
            self.machine
        );
        let _ = writeln!(
            out,
            "## Targets\n\n| target | measured | limit | verdict |\n|---|---|---|---|"
        );
        for target in self.sections.iter().flat_map(|s| &s.targets) {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                target.name, target.measured, target.limit, target.verdict
            );
        }
        out.push('\n');
        for section in &self.sections {
            section.markdown(&mut out);
        }
        out
    }

    /// Writes `report.md` and `report.json` into `dir`.
    pub(crate) fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join("report.json"), json)
    }
}

/// What this machine is: CPU model and count, from /proc (Linux), and the OS.
pub(crate) fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("{cpus} CPUs ({model}), {}", std::env::consts::OS)
}

/// Milliseconds with one decimal, or two below 10 ms.
pub(crate) fn ms(value: f64) -> String {
    if value.is_nan() {
        "n/a".to_owned()
    } else if value < 10.0 {
        format!("{value:.3} ms")
    } else {
        format!("{value:.1} ms")
    }
}
