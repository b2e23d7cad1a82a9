//! The report: each scenario's figures, what each process cost, and each
//! target with its measured ratio and PASS or MISS, written as Markdown.

use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::Context as _;

use crate::{loadgen::Run, procs::Cost};

/// One row of a scenario's latency table.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// What was measured.
    pub(crate) label: String,
    /// Latency quantiles, µs: p50, p99, p99.9, max.
    pub(crate) p50: u64,
    /// p99, µs.
    pub(crate) p99: u64,
    /// p99.9, µs, when known (wrk does not print it).
    pub(crate) p999: Option<u64>,
    /// Max, µs.
    pub(crate) max: u64,
    /// Calls (or events) measured.
    pub(crate) count: u64,
    /// Failed calls.
    pub(crate) errors: u64,
    /// Calls a second, if that means something here.
    pub(crate) throughput: Option<f64>,
}

impl Row {
    /// A row from a load run.
    pub(crate) fn of(label: impl Into<String>, run: &Run) -> Self {
        Self {
            label: label.into(),
            p50: run.quantile_us(0.5),
            p99: run.quantile_us(0.99),
            p999: Some(run.quantile_us(0.999)),
            max: run.hist.max(),
            count: run.ok + run.errors,
            errors: run.errors,
            throughput: Some(run.throughput()),
        }
    }

    /// A row of latencies without a throughput (events, not calls).
    pub(crate) fn events(label: impl Into<String>, run: &Run) -> Self {
        Self {
            throughput: None,
            ..Self::of(label, run)
        }
    }
}

/// A target of the table, checked.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    /// The target, as the issue puts it.
    pub(crate) target: String,
    /// What was measured, e.g. `0.93× (9,120 vs 9,800 req/s)`.
    pub(crate) measured: String,
    /// Whether the target is met.
    pub(crate) pass: bool,
}

impl Check {
    /// `measured ≤ bound` (or `≥` with `at_least`), `measured` a ratio.
    pub(crate) fn ratio(
        target: impl Into<String>,
        ratio: f64,
        bound: f64,
        at_least: bool,
        detail: String,
    ) -> Self {
        let pass = if at_least {
            ratio >= bound
        } else {
            ratio <= bound
        };
        Self {
            target: target.into(),
            measured: format!("{ratio:.2}× ({detail})"),
            pass,
        }
    }

    /// A check whose measured value is stated as is.
    pub(crate) fn plain(
        target: impl Into<String>,
        measured: impl Into<String>,
        pass: bool,
    ) -> Self {
        Self {
            target: target.into(),
            measured: measured.into(),
            pass,
        }
    }
}

/// One scenario's part of the report.
#[derive(Debug, Clone, Default)]
pub(crate) struct Section {
    /// The scenario's number in the table.
    pub(crate) number: u8,
    /// Its title.
    pub(crate) title: String,
    /// How it was run, and what to know when reading it.
    pub(crate) notes: Vec<String>,
    /// The latency tables: a caption and its rows.
    pub(crate) tables: Vec<(String, Vec<Row>)>,
    /// What each process cost, per measured run.
    pub(crate) costs: Vec<(String, Vec<Cost>)>,
    /// The targets.
    pub(crate) checks: Vec<Check>,
    /// Chart files, relative to the report.
    pub(crate) charts: Vec<String>,
    /// How long the scenario took.
    pub(crate) took: Duration,
}

impl Section {
    /// An empty section.
    pub(crate) fn new(number: u8, title: impl Into<String>) -> Self {
        Self {
            number,
            title: title.into(),
            ..Self::default()
        }
    }

    /// Adds a note.
    pub(crate) fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }
}

/// The whole report.
#[derive(Debug)]
pub(crate) struct Report {
    /// `full` or `quick`.
    pub(crate) mode: &'static str,
    /// When the run started, in UTC.
    pub(crate) started: String,
    /// What the machine is.
    pub(crate) machine: String,
    /// The scenarios run.
    pub(crate) sections: Vec<Section>,
    /// How long the whole run took.
    pub(crate) took: Duration,
}

/// Microseconds as milliseconds with three decimals.
pub(crate) fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn kib_as_mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

impl Report {
    /// The report as Markdown.
    pub(crate) fn markdown(&self) -> String {
        let mut out = String::new();
        let passed = self
            .sections
            .iter()
            .flat_map(|s| &s.checks)
            .filter(|c| c.pass)
            .count();
        let total = self.sections.iter().flat_map(|s| &s.checks).count();
        let _ = writeln!(out, "# Benchmark report\n");
        let _ = writeln!(
            out,
            "Run `{}` started {} and took {:.0} s. Machine: {}.\n",
            if self.mode == "quick" {
                "cargo run --release -p bench -- --quick"
            } else {
                "cargo run --release -p bench"
            },
            self.started,
            self.took.as_secs_f64(),
            self.machine
        );
        let _ = writeln!(
            out,
            "Every process runs on this one machine, over loopback, the load generator included. \
             Ratios between figures of the same run are what the targets compare; absolute figures \
             are context only. Latencies are in milliseconds. CPU is the share of one core over the \
             measured interval (from `/proc/<pid>/stat`), RSS the resident memory at the end and \
             peak RSS the most the process ever had (`VmHWM`), both in MiB. \
             The daemons run with their per-call `info` logs off (see `procs.rs`).\n"
        );
        let _ = writeln!(out, "**Targets met: {passed} of {total}.**\n");
        let _ = writeln!(out, "| # | target | measured | |\n|---|---|---|---|");
        for section in &self.sections {
            for check in &section.checks {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} |",
                    section.number,
                    check.target,
                    check.measured,
                    if check.pass { "PASS" } else { "**MISS**" }
                );
            }
        }
        out.push('\n');
        for section in &self.sections {
            section.write(&mut out);
        }
        out
    }

    /// Writes `report.md` into `dir`.
    pub(crate) fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join("report.md");
        std::fs::write(&path, self.markdown())
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

impl Section {
    fn write(&self, out: &mut String) {
        let _ = writeln!(out, "## {}. {}\n", self.number, self.title);
        for note in &self.notes {
            let _ = writeln!(out, "- {note}");
        }
        let _ = writeln!(
            out,
            "- This scenario took {:.0} s.\n",
            self.took.as_secs_f64()
        );
        for (caption, rows) in &self.tables {
            let _ = writeln!(out, "{caption}\n");
            let _ = writeln!(
                out,
                "| | p50 | p99 | p99.9 | max | count | errors | throughput /s |\n|---|---|---|---|---|---|---|---|"
            );
            for row in rows {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    row.label,
                    ms(row.p50),
                    ms(row.p99),
                    row.p999.map_or_else(|| "–".to_owned(), ms),
                    ms(row.max),
                    row.count,
                    row.errors,
                    row.throughput
                        .map_or_else(|| "–".to_owned(), |t| format!("{t:.0}"))
                );
            }
            out.push('\n');
        }
        if !self.costs.is_empty() {
            let _ = writeln!(
                out,
                "| run | process | CPU % | RSS MiB | peak RSS MiB |\n|---|---|---|---|---|"
            );
            for (run, costs) in &self.costs {
                for cost in costs {
                    let _ = writeln!(
                        out,
                        "| {run} | {} | {:.0} | {} | {} |",
                        cost.name,
                        cost.cpu_pct,
                        kib_as_mib(cost.rss_kib),
                        kib_as_mib(cost.peak_rss_kib)
                    );
                }
            }
            out.push('\n');
        }
        if !self.checks.is_empty() {
            let _ = writeln!(out, "| target | measured | |\n|---|---|---|");
            for check in &self.checks {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} |",
                    check.target,
                    check.measured,
                    if check.pass { "PASS" } else { "**MISS**" }
                );
            }
            out.push('\n');
        }
        for chart in &self.charts {
            let _ = writeln!(out, "![{chart}]({chart})\n");
        }
    }
}

/// The machine in one line: CPU model, cores, memory, kernel.
pub(crate) fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map_or("unknown CPU", |(_, model)| model.trim())
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cores} cores available, {mem_gib:.0} GiB memory, Linux {}",
        kernel.trim()
    )
}
