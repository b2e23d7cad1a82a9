//! The `market-web` command line: parses options into a running shop.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, ValueEnum};
use ratings_client::{RatingsClient, contract_policy};
use registry_client::Registries;
use resilience::{Balance, Policy};

/// How long the shop waits for the registry at start before it serves anyway.
const SYNC_WAIT: Duration = Duration::from_secs(3);

/// The Datawire Market web app.
///
/// Without --registry (or with --monolith) it is the monolith: prices and
/// no ratings. With --registry and a token it finds the ratings instances
/// through the registry and shows each item's rating, calling them through a
/// stack that balances, times out, breaks circuits per instance, retries
/// elsewhere and falls back to the last good rating; and beside them a panel
/// from each other service the token may read (the recommendations
/// service's "You may also like"), left out when that service fails.
#[derive(Debug, Parser)]
#[command(name = "market-web", version)]
pub struct Cli {
    /// Address to serve HTTP on.
    #[arg(long, env = "MARKET_LISTEN", default_value = "127.0.0.1:5000")]
    pub listen: SocketAddr,

    /// The registry's address; several, comma-separated, fail over in order.
    #[arg(long, env = "REGISTRY_ADDR", value_delimiter = ',')]
    pub registry: Vec<String>,

    /// A token that may read `ratings` and the panels' services: a
    /// consumer's from `registryctl create-consumer market-web --services
    /// ratings,recommendations`. A token of `ratings` alone (its service or
    /// consumer token) shows the ratings without the panels.
    #[arg(long, env = "REGISTRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Leave this panel out (its service's name, e.g. recommendations);
    /// repeat or separate with commas.
    #[arg(long, value_name = "SERVICE", value_delimiter = ',', value_parser = parse_panel)]
    pub no_panel: Vec<&'static str>,

    /// Run as the monolith: no ratings, no calls.
    #[arg(long)]
    pub monolith: bool,

    /// Serve a cached rating younger than this without asking (0s: ask on
    /// every page, as the original did, and use the cache only as a fallback).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub fresh_for: Duration,

    /// The client policy, overriding the contract's.
    #[command(flatten)]
    pub policy: PolicyArgs,

    /// TLS for the calls to the registry and the ratings instances (the
    /// shop's own HTTP is plaintext; put it behind the TLS proxy or ingress
    /// that serves the site). --mtls has no effect here: the shop serves no
    /// gRPC, and always presents its certificate when asked.
    #[command(flatten)]
    pub tls: daemon::TlsArgs,

    /// How it writes its log lines.
    #[command(flatten)]
    pub log: daemon::LogArgs,
}

/// The ratings client's policy; each default comes from the ratings
/// contract. (The recommendations client follows its own contract.)
#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// Bound on one attempt, e.g. 1s [default: the contract's, 1s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Bound on a whole call with retries and hedges [default: 2s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub deadline: Option<Duration>,
    /// Consecutive failures that open an instance's breaker [default: 1].
    #[arg(long)]
    pub failure_limit: Option<u32>,
    /// How long a breaker stays open before one probe [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub retest_delay: Option<Duration>,
    /// The longest open period after failed probes [default: 5m].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_open: Option<Duration>,
    /// How to pick an instance [default: p2c].
    #[arg(long, value_enum)]
    pub balance: Option<BalanceArg>,
    /// Retries of a failed attempt on another instance, 0 or 1 [default: 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=1))]
    pub retries: Option<u32>,
    /// Race an attempt unanswered after this long with one on another
    /// instance, e.g. 50ms [default: off].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub hedge_after: Option<Duration>,
}

/// `--balance`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BalanceArg {
    /// Power of two choices over peak-EWMA load.
    P2c,
    /// Strict rotation over the instances sorted by address.
    RoundRobin,
}

impl PolicyArgs {
    /// The contract's policy with these overrides.
    pub fn policy(&self) -> anyhow::Result<Policy> {
        let mut policy = contract_policy();
        if let Some(timeout) = self.timeout {
            policy.timeout = timeout;
            // The deadline follows the timeout unless given.
            policy.deadline = policy.deadline.max(timeout * 2);
        }
        if let Some(deadline) = self.deadline {
            policy.deadline = deadline;
        }
        if let Some(limit) = self.failure_limit {
            policy.breaker.failure_limit = limit;
        }
        if let Some(delay) = self.retest_delay {
            policy.breaker.retest_delay = delay;
            policy.breaker.max_open = policy.breaker.max_open.max(delay);
        }
        if let Some(max_open) = self.max_open {
            policy.breaker.max_open = max_open;
        }
        if let Some(balance) = self.balance {
            policy.balance = match balance {
                BalanceArg::P2c => Balance::P2c,
                BalanceArg::RoundRobin => Balance::RoundRobin,
            };
        }
        if let Some(retries) = self.retries {
            policy.retries = retries;
        }
        if self.hedge_after.is_some() {
            policy.hedge_after = self.hedge_after;
        }
        policy.validate().context("invalid client policy")?;
        Ok(policy)
    }

    /// These options as command-line arguments, to pass them on.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut duration = |name: &str, value: Option<Duration>| {
            if let Some(value) = value {
                args.push(format!("--{name}={}", humantime::format_duration(value)));
            }
        };
        duration("timeout", self.timeout);
        duration("deadline", self.deadline);
        duration("retest-delay", self.retest_delay);
        duration("max-open", self.max_open);
        duration("hedge-after", self.hedge_after);
        if let Some(limit) = self.failure_limit {
            args.push(format!("--failure-limit={limit}"));
        }
        if let Some(retries) = self.retries {
            args.push(format!("--retries={retries}"));
        }
        if let Some(balance) = self.balance {
            let name = match balance {
                BalanceArg::P2c => "p2c",
                BalanceArg::RoundRobin => "round-robin",
            };
            args.push(format!("--balance={name}"));
        }
        args
    }
}

/// `--no-panel`: a panel the shop knows.
fn parse_panel(name: &str) -> Result<&'static str, String> {
    crate::panels::kind(name)
        .map(|kind| kind.service)
        .ok_or_else(|| {
            format!(
                "no panel is called {name:?}; the panels are: {}",
                crate::panels::names()
            )
        })
}

/// Whether the token may read `service`, as far as the registry says within
/// a second: a token of `ratings` alone, or a registry without the service,
/// means a shop without its panel (said once, here, rather than by a watch
/// refused forever). An unreachable registry is no answer: the panel comes
/// once it is reached.
async fn may_read(registries: &Registries, service: &str) -> bool {
    use market_proto::registry::v1::ResolveRequest;
    let (mut client, address) = registries.client();
    let request = ResolveRequest {
        service: service.to_owned(),
    };
    match tokio::time::timeout(Duration::from_secs(1), client.resolve(request)).await {
        Ok(Err(status))
            if matches!(
                status.code(),
                tonic::Code::PermissionDenied | tonic::Code::NotFound
            ) =>
        {
            tracing::info!(
                registry = %address,
                "no {service} panel: {} (a consumer token for ratings and {service} shows it)",
                status.message()
            );
            false
        }
        _ => true,
    }
}

/// Runs `market-web` as the command line says.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let policy = cli.policy.policy()?;
    let mut panels = Vec::new();
    let client = if cli.monolith || cli.registry.is_empty() {
        tracing::info!("running as the monolith: no ratings");
        None
    } else {
        let token = cli.token.as_deref().context(
            "no registry token: pass --token or set REGISTRY_TOKEN to the ratings service's token or consumer token",
        )?;
        let tls = cli.tls.load()?;
        // The shop serves no gRPC, so --mtls changes nothing here.
        let mode = if tls.is_some() { "on" } else { "off" };
        tracing::info!(tls = mode, "gRPC TLS to the registry and instances: {mode}");
        let registries =
            Registries::with_tls(&cli.registry, token, tls.as_ref().map(daemon::Tls::client))?;
        for kind in crate::panels::PANELS {
            if !cli.no_panel.contains(&kind.service) && may_read(&registries, kind.service).await {
                panels.push((kind.discover)(registries.clone())?);
            }
        }
        let client = RatingsClient::discover(registries, policy)?;
        // Serve once the registry has listed the instances, so the first page
        // has its ratings; but not later than this, since an unreachable
        // registry must not keep the shop closed.
        match tokio::time::timeout(SYNC_WAIT, client.synced()).await {
            Ok(()) => tracing::info!(
                instances = client.endpoints().len(),
                "found {} ratings instance(s)",
                client.endpoints().len()
            ),
            Err(_) => tracing::warn!(
                "the registry has not answered within {SYNC_WAIT:?}; serving without ratings until it does"
            ),
        }
        Some(client)
    };
    let state = crate::state_with(client, panels, cli.fresh_for);
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "market-web listening on http://{addr}");
    daemon::ready::announce(&daemon::ready::Event::listening(
        "market-web",
        format!("http://{addr}"),
    ));
    crate::serve(state, listener, daemon::shutdown_signal()).await?;
    tracing::info!("market-web stopped");
    Ok(())
}
