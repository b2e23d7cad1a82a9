//! Scenario 1: unary `Get` through the full stack over three healthy
//! instances, against a direct tonic `Channel` to one instance and tonic's
//! `balance_channel` over the same three, in closed loop at several
//! concurrencies. A fourth caller, `balance_channel` sending the deadline the
//! stack sends, shows what the deadline costs. The callers are interleaved
//! (round r runs them in an order rotated by r) and the targets compare the
//! medians of the rounds. Then the full stack traced against untraced, each
//! in a caller process of its own.

use std::time::Instant;

use anyhow::Context as _;
use ratings_client::contract_policy;

use crate::{
    caller::Measured,
    charts,
    loadgen::{self, Runs},
    procs::{Cluster, Daemon, Meter, Metered},
    report::{Check, Row, Section},
    scenarios::{
        Call, Config, balance_channel_call, caller, contract_stack_call, direct_call, warm_up,
    },
};

/// The callers compared, in report order.
const VARIANTS: [&str; 4] = [
    "full stack (p2c)",
    "direct Channel (1 instance)",
    "balance_channel (3)",
    "balance_channel (3) + grpc-timeout",
];

/// Runs scenario 1.
pub(crate) async fn run(cfg: &Config) -> anyhow::Result<Section> {
    let started = Instant::now();
    let mut section = Section::new(
        1,
        "Unary Get: full stack vs direct Channel vs balance_channel",
    );
    let cluster = Cluster::start(3, |_| Vec::new()).await?;
    let calls: [Call; 4] = [
        contract_stack_call(&cluster.registry).await?,
        direct_call(&cluster).await?,
        balance_channel_call(&cluster, None)?,
        balance_channel_call(&cluster, Some(contract_policy().timeout))?,
    ];
    for call in &calls {
        warm_up(call, 200).await?;
    }
    let levels: Vec<usize> = cfg.pick(vec![1, 4, 16, 64], vec![1, 64]);
    let rounds = cfg.pick(5, 2);
    let duration = cfg.secs(2.0, 0.6);
    section.note(format!(
        "Closed loop at concurrency {levels:?}; {rounds} interleaved rounds of {:.1} s per caller and \
         concurrency; the client runs in the bench process, the three `ratings-server`s and \
         `registryd` are separate processes.",
        duration.as_secs_f64()
    ));
    section.note(
        "Latency rows add up every round; the target ratios use the medians of the rounds' \
         throughputs and p99s.",
    );

    let mut points: Vec<(String, Vec<(usize, f64)>)> = VARIANTS
        .iter()
        .map(|v| ((*v).to_owned(), Vec::new()))
        .collect();
    for &concurrency in &levels {
        let mut runs: [Runs; 4] = std::array::from_fn(|_| Runs::new());
        for round in 0..rounds {
            for k in 0..VARIANTS.len() {
                let v = (round + k) % VARIANTS.len();
                let mut procs: Vec<Metered> =
                    cluster.daemons().into_iter().map(Metered::of).collect();
                procs.push(Metered::this("client + load generator"));
                let meter = Meter::start(procs);
                let run = loadgen::closed_loop(concurrency, duration, caller(&calls[v])).await;
                if concurrency == *levels.last().unwrap_or(&1) && round == rounds - 1 {
                    section
                        .costs
                        .push((format!("{} c={concurrency}", VARIANTS[v]), meter.finish()));
                }
                runs[v].runs.push(run);
            }
        }
        let rows: Vec<Row> = VARIANTS
            .iter()
            .zip(&runs)
            .map(|(name, r)| {
                let mut row = Row::of(*name, &r.merged());
                row.throughput = Some(r.median(loadgen::Run::throughput));
                row
            })
            .collect();
        section.tables.push((
            format!("Concurrency {concurrency} (throughput: median of rounds)"),
            rows,
        ));
        for (v, r) in runs.iter().enumerate() {
            points[v]
                .1
                .push((concurrency, r.median(loadgen::Run::throughput)));
        }
        if concurrency == 1 || concurrency == 64 {
            checks(&mut section, concurrency, &runs);
            let (path, name) = cfg.chart(&format!("s1-latency-c{concurrency}.svg"));
            let merged: Vec<_> = runs.iter().map(Runs::merged).collect();
            let series: Vec<(String, &hdrhistogram::Histogram<u64>)> = VARIANTS
                .iter()
                .zip(&merged)
                .map(|(v, run)| ((*v).to_owned(), &run.hist))
                .collect();
            charts::latency_distribution(
                &path,
                &format!("Scenario 1: Get latency, concurrency {concurrency}"),
                &series,
            )?;
            section.charts.push(name);
        }
    }
    let (path, name) = cfg.chart("s1-throughput.svg");
    charts::throughput(
        &path,
        "Scenario 1: Get throughput vs concurrency (median of rounds)",
        &points,
    )?;
    section.charts.push(name);
    traced(cfg, &mut section, &cluster).await?;
    section.took = started.elapsed();
    Ok(section)
}

/// The callers of the traces comparison, in report order: traces off; on,
/// with every trace sampled out (`OTEL_TRACES_SAMPLER=always_off`: each
/// call's root span is made, where the sampler decides, and its context
/// goes out with the call, but nothing is recorded or exported, and the
/// stack makes no attempt span in a trace sampled out); and on and
/// exporting, every trace kept (as `OTEL_TRACES_SAMPLER` in the bench's
/// environment says, if set). The middle one shows what a trace sampled
/// out still costs.
const TRACED_VARIANTS: [&str; 3] = [
    "full stack, traces off",
    "full stack, traces on, none sampled",
    "full stack, traces exporting",
];

/// The environment of each of [`TRACED_VARIANTS`] (besides `--otlp-endpoint`,
/// which the last two have).
const TRACED_ENVS: [&[(&str, &str)]; 3] = [&[], &[("OTEL_TRACES_SAMPLER", "always_off")], &[]];

/// The full stack traced against untraced: each a `bench caller` process
/// of its own (see `caller`), alike but for `--otlp-endpoint`, exporting to
/// a receiver in the bench process (whose CPU is the machine's, as a
/// collector's on the same host would be).
async fn traced(cfg: &Config, section: &mut Section, cluster: &Cluster) -> anyhow::Result<()> {
    let receiver = test_support::Otlp::start().await;
    let endpoint = receiver.url();
    let levels: Vec<usize> = vec![1, 64];
    let rounds = cfg.pick(5, 2);
    let duration = cfg.secs(2.0, 0.6);
    section.note(format!(
        "Traces: the full stack in a process of its own (`bench caller`, the daemons' logging and \
         tracing), traces off against traces exporting over OTLP/gRPC (`--otlp-endpoint`, the \
         daemons' batched and bounded pipeline) to a `test_support::Otlp` receiver in the bench \
         process, and against traces on with every trace sampled out (`OTEL_TRACES_SAMPLER=\
         always_off`: each call's root span made, nothing exported); {rounds} interleaved rounds of {:.1} s at \
         concurrency {levels:?}, new processes each round. Rows give the medians of the rounds \
         (count and errors: their sums).",
        duration.as_secs_f64()
    ));
    let exe = std::env::current_exe().context("the bench's own executable")?;
    let exe = exe.to_string_lossy().into_owned();
    let mut traced_runs = Vec::new();
    for &concurrency in &levels {
        let mut measured: [Vec<Measured>; 3] = std::array::from_fn(|_| Vec::new());
        for round in 0..rounds {
            for k in 0..TRACED_VARIANTS.len() {
                let v = (round + k) % TRACED_VARIANTS.len();
                let mut args = vec![
                    "caller".to_owned(),
                    "--registry".to_owned(),
                    cluster.registry.url.clone(),
                    "--token".to_owned(),
                    cluster.registry.token.clone(),
                    "--concurrency".to_owned(),
                    concurrency.to_string(),
                    "--duration".to_owned(),
                    format!("{}ms", duration.as_millis()),
                ];
                if v > 0 {
                    args.extend(["--otlp-endpoint".to_owned(), endpoint.clone()]);
                }
                measured[v].push(
                    run_caller(&exe, TRACED_VARIANTS[v], &args, TRACED_ENVS[v], duration).await?,
                );
            }
        }
        traced_runs.extend(measured[2].iter().copied());
        let rows: Vec<Row> = TRACED_VARIANTS
            .iter()
            .zip(&measured)
            .map(|(name, runs)| caller_row(name, runs))
            .collect();
        let tput = |v: usize| median_of(&measured[v], |m| m.throughput);
        let cpu = |v: usize| median_of(&measured[v], |m| m.cpu);
        let (off, unsampled, on) = (tput(0), tput(1), tput(2));
        // The caller's CPU per call, µs: the medians of the rounds' own.
        let per_call = |v: usize| median_of(&measured[v], |m| m.cpu / m.throughput.max(1e-9) * 1e6);
        section.note(format!(
            "Traces, c={concurrency}: the caller used {:.0} % of a core with traces off, {:.0} % \
             with none sampled and {:.0} % exporting; its CPU per call was {:.1} µs, {:.1} µs and \
             {:.1} µs (medians of rounds). None sampled made {:.2}× the calls of traces off.",
            cpu(0) * 100.0,
            cpu(1) * 100.0,
            cpu(2) * 100.0,
            per_call(0),
            per_call(1),
            per_call(2),
            unsampled / off,
        ));
        section.tables.push((
            format!("Traces, concurrency {concurrency} (medians of rounds)"),
            rows,
        ));
        section.checks.push(Check::ratio(
            format!("c={concurrency}: traced throughput ≥ 0.90× untraced"),
            on / off,
            0.90,
            true,
            format!("{on:.0} vs {off:.0} req/s"),
        ));
    }
    let exported: u64 = traced_runs.iter().map(|m| m.spans_exported).sum();
    let dropped: u64 = traced_runs.iter().map(|m| m.spans_dropped).sum();
    let received = receiver.received();
    section.note(format!(
        "Traces: the traced callers exported {exported} spans (warm-up included) and dropped \
         {dropped} at their bound; the receiver got {received} in {} exports.",
        receiver.exports(),
    ));
    Ok(())
}

/// Starts one `bench caller` and waits for what it measured.
async fn run_caller(
    exe: &str,
    name: &str,
    args: &[String],
    envs: &[(&str, &str)],
    duration: std::time::Duration,
) -> anyhow::Result<Measured> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut caller = Daemon::spawn_with_env(format!("bench caller ({name})"), exe, &args, envs)?;
    let line = caller
        .wait_for_line_after(
            0,
            r#"{"caller":"#,
            duration + std::time::Duration::from_secs(30),
        )
        .await?;
    let value: serde_json::Value =
        serde_json::from_str(&line).with_context(|| format!("the caller printed {line:?}"))?;
    let measured: Measured = serde_json::from_value(value["caller"].clone())
        .with_context(|| format!("the caller printed {line:?}"))?;
    caller.wait_exit(std::time::Duration::from_secs(10)).await?;
    Ok(measured)
}

fn median_of(runs: &[Measured], f: impl Fn(&Measured) -> f64) -> f64 {
    let mut values: Vec<f64> = runs.iter().map(f).collect();
    loadgen::median(&mut values)
}

fn caller_row(name: &str, runs: &[Measured]) -> Row {
    Row {
        label: name.to_owned(),
        p50: median_of(runs, |m| m.p50_us as f64) as u64,
        p99: median_of(runs, |m| m.p99_us as f64) as u64,
        p999: Some(median_of(runs, |m| m.p999_us as f64) as u64),
        max: runs.iter().map(|m| m.max_us).max().unwrap_or_default(),
        count: runs.iter().map(|m| m.ok + m.errors).sum(),
        errors: runs.iter().map(|m| m.errors).sum(),
        throughput: Some(median_of(runs, |m| m.throughput)),
    }
}

/// The targets at one concurrency.
fn checks(section: &mut Section, concurrency: usize, runs: &[Runs; 4]) {
    let tput = |v: usize| runs[v].median(loadgen::Run::throughput);
    let p99 = |v: usize| runs[v].median(|r| r.quantile_us(0.99) as f64);
    let (stack, direct, balance, balance_deadline) = (tput(0), tput(1), tput(2), tput(3));
    section.note(format!(
        "c={concurrency}: the full stack makes {:.2}× the calls of `balance_channel` sending the \
         same `grpc-timeout` ({stack:.0} vs {balance_deadline:.0} req/s); that `balance_channel` \
         makes {:.2}× the calls of the plain one. Not a target: it shows what sending the \
         deadline costs (a timer per call on each side).",
        stack / balance_deadline,
        balance_deadline / balance,
    ));
    section.checks.push(Check::ratio(
        format!("c={concurrency}: throughput ≥ 0.90× direct Channel"),
        stack / direct,
        0.90,
        true,
        format!("{stack:.0} vs {direct:.0} req/s"),
    ));
    section.checks.push(Check::ratio(
        format!("c={concurrency}: throughput ≥ 1.0× balance_channel"),
        stack / balance,
        1.0,
        true,
        format!("{stack:.0} vs {balance:.0} req/s"),
    ));
    section.checks.push(Check::ratio(
        format!("c={concurrency}: p99 ≤ 1.15× direct Channel"),
        p99(0) / p99(1),
        1.15,
        false,
        format!("{:.3} vs {:.3} ms", p99(0) / 1000.0, p99(1) / 1000.0),
    ));
    let shares = runs[0].merged().shares();
    let listed: Vec<String> = (1..=3)
        .map(|i| format!("#{i} {:.1} %", shares.get(&i).copied().unwrap_or(0.0)))
        .collect();
    let pass = (1..=3).all(|i| (25.0..=42.0).contains(&shares.get(&i).copied().unwrap_or(0.0)));
    section.checks.push(Check::plain(
        format!("c={concurrency}: each healthy instance gets 25–42 % of calls"),
        listed.join(", "),
        pass,
    ));
}
