//! Debian's `wrk` against the page, as an independent check of our load
//! generator: the same page, the same visitor cookie, the same number of
//! connections, right after each other.

use std::time::Duration;

use anyhow::Context as _;

use crate::{
    loadgen,
    procs::Web,
    report::{Row, Section},
    scenarios::{Call, Config, caller, session_cookie},
};

/// Where Debian installs wrk.
const WRK: &str = "/usr/bin/wrk";

/// What wrk reports: latency quantiles in µs and requests a second.
#[derive(Debug, Default)]
struct WrkResult {
    p50: u64,
    p90: u64,
    p99: u64,
    max: u64,
    requests: u64,
    rate: f64,
}

/// Runs wrk and our closed loop against `web`'s page at concurrency 1 and
/// 16, and adds both to `section`.
pub(crate) async fn compare(
    cfg: &Config,
    section: &mut Section,
    web: &Web,
    page: &Call,
    duration: Duration,
) -> anyhow::Result<()> {
    if !std::path::Path::new(WRK).exists() {
        section.note("wrk is not installed (Debian package `wrk`; `tests/run.sh` installs it): its check was skipped.");
        return Ok(());
    }
    let cookie = session_cookie(web).await?;
    let secs = duration.as_secs().max(cfg.pick(3, 1));
    let mut rows = Vec::new();
    for connections in [1usize, 16] {
        let wrk = run_wrk(web, &cookie, connections, secs).await?;
        let ours = loadgen::closed_loop(connections, Duration::from_secs(secs), caller(page)).await;
        rows.push(Row {
            label: format!(
                "wrk, {connections} connection(s) (p90 {:.3} ms)",
                wrk.p90 as f64 / 1000.0
            ),
            p50: wrk.p50,
            p99: wrk.p99,
            p999: None,
            max: wrk.max,
            count: wrk.requests,
            errors: 0,
            throughput: Some(wrk.rate),
        });
        rows.push(Row::of(
            format!("our closed loop, {connections} caller(s)"),
            &ours,
        ));
        section.note(format!(
            "wrk vs our generator at {connections} connection(s): p50 {:.3} vs {:.3} ms, \
             throughput {:.0} vs {:.0} /s (ratio ours/wrk {:.2}).",
            wrk.p50 as f64 / 1000.0,
            ours.quantile_us(0.5) as f64 / 1000.0,
            wrk.rate,
            ours.throughput(),
            ours.throughput() / wrk.rate.max(1e-9)
        ));
    }
    section.tables.push((
        format!("wrk against the bypassed page, {secs} s each (wrk prints no p99.9)"),
        rows,
    ));
    Ok(())
}

async fn run_wrk(
    web: &Web,
    cookie: &str,
    connections: usize,
    secs: u64,
) -> anyhow::Result<WrkResult> {
    let output = tokio::process::Command::new(WRK)
        .arg("-t1")
        .arg(format!("-c{connections}"))
        .arg(format!("-d{secs}s"))
        .arg("--latency")
        .arg("-H")
        .arg(format!("Cookie: {cookie}"))
        .arg(format!("http://{}/", web.addr))
        .output()
        .await
        .context("cannot run wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(output.status.success(), "wrk failed: {text}");
    parse(&text).with_context(|| format!("cannot read wrk's output:\n{text}"))
}

/// Reads wrk's `--latency` output.
fn parse(text: &str) -> anyhow::Result<WrkResult> {
    let mut result = WrkResult::default();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", value] => result.p50 = micros(value)?,
            ["90%", value] => result.p90 = micros(value)?,
            ["99%", value] => result.p99 = micros(value)?,
            // `Latency  avg  stdev  max  +/-stdev`
            ["Latency", _, _, max, _] => result.max = micros(max)?,
            ["Requests/sec:", rate] => result.rate = rate.parse()?,
            [n, "requests", "in", ..] => result.requests = n.parse()?,
            _ => {}
        }
    }
    anyhow::ensure!(result.rate > 0.0, "no Requests/sec line");
    Ok(result)
}

/// `812.00us`, `1.23ms`, `2.00s` → µs.
fn micros(value: &str) -> anyhow::Result<u64> {
    let (number, scale) = if let Some(n) = value.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = value.strip_suffix("ms") {
        (n, 1_000.0)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1_000_000.0)
    } else if let Some(n) = value.strip_suffix('m') {
        (n, 60_000_000.0)
    } else {
        anyhow::bail!("no unit in {value:?}")
    };
    Ok((number.parse::<f64>()? * scale) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_latency_output() {
        let text = "Running 1s test @ http://127.0.0.1:1/\n  1 threads and 1 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   310.71us   45.04us   1.12ms   90.00%\n    Req/Sec     3.21k   120.00     3.30k    80.00%\n  Latency Distribution\n     50%  300.00us\n     75%  320.00us\n     90%  350.00us\n     99%  500.00us\n  3210 requests in 1.00s, 10.00MB read\nRequests/sec:   3209.87\nTransfer/sec:     10.00MB\n";
        let r = parse(text).unwrap();
        assert_eq!(
            (r.p50, r.p90, r.p99, r.max, r.requests),
            (300, 350, 500, 1120, 3210)
        );
        assert!((r.rate - 3209.87).abs() < 0.01);
    }
}
