//! Starts the demo's processes, shows where they are, and stops them in order.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
pub(crate) use daemon::supervise::Child as Proc;
use daemon::supervise::Spawn;
pub(crate) use daemon::supervise::socket_addr;
use market_proto::registry::v1::{
    CreateConsumerRequest, CreateServiceRequest, CreateServiceResponse,
};
use registry_client::RegistryClient;

use crate::{DemoArgs, DemoService};

/// How long a process may take to be ready before the demo gives up.
pub(crate) const READY: Duration = Duration::from_secs(30);

/// How long a process may take to stop before it is killed.
const GRACE: Duration = Duration::from_secs(10);

/// What becomes of a process's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    /// Shown on stderr behind the process's name.
    Echo,
    /// Only kept, for errors; panics are still shown.
    Quiet,
}

/// Starts `market <args…>` under `name` through the one supervisor, in its
/// own process group (so that Ctrl-C reaches only the demo, which then stops
/// everything in order), with `RUST_LOG` set to `log`.
pub(crate) fn start(
    exe: &PathBuf,
    name: &str,
    args: &[String],
    shown: Output,
    log: &str,
) -> anyhow::Result<Proc> {
    let spawn = Spawn::new(name, exe)
        .args(args)
        .log(log)
        .own_process_group()
        .keep(256);
    match shown {
        Output::Echo => spawn.echo().label(format!("{name:>10} |")),
        Output::Quiet => spawn,
    }
    .spawn()
}

/// Asks `proc` to stop, and kills it when it has not within 10 s.
pub(crate) async fn stop(proc: &mut Proc) {
    if proc.stop(GRACE).await.is_none() {
        eprintln!("{} did not stop within {GRACE:?}; killed it", proc.name());
    }
}

/// Creates `service`'s entry in the registry: its tokens.
pub(crate) async fn create_service(
    registry: &RegistryClient,
    service: &DemoService,
) -> anyhow::Result<CreateServiceResponse> {
    Ok(registry
        .clone()
        .create_service(CreateServiceRequest {
            name: service.name().into(),
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot create the {} service", service.name()))?
        .into_inner())
}

/// Creates the shop's consumer, which reads every service of the demo, and
/// returns its token.
pub(crate) async fn create_shop_consumer(registry: &RegistryClient) -> anyhow::Result<String> {
    Ok(registry
        .clone()
        .create_consumer(CreateConsumerRequest {
            name: "market-web".into(),
            services: crate::SERVICES
                .iter()
                .map(|service| service.name().to_owned())
                .collect(),
            ..Default::default()
        })
        .await
        .context("cannot create the shop's consumer token")?
        .into_inner()
        .token)
}

/// Runs the demo until Ctrl-C or SIGTERM.
pub(crate) async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the market binary")?;
    let any = |addr: SocketAddr| {
        if args.any_ports {
            SocketAddr::from(([127, 0, 0, 1], 0))
        } else {
            addr
        }
    };
    // The registry's data dir lives as long as the demo.
    let data_dir = tempfile::Builder::new().prefix("market-demo-").tempdir()?;
    let mut procs: Vec<Proc> = Vec::new();
    let result = start_all(
        &exe,
        &args,
        data_dir.path(),
        [any(args.registry_listen), any(args.xds_listen)],
        any(args.listen),
        &mut procs,
    )
    .await;
    match result {
        Ok((banner, url)) => {
            println!("{banner}");
            // For a supervisor of the demo itself (the browser test); a
            // person at a terminal has the banner.
            if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                daemon::ready::announce(&daemon::ready::Event::listening("market", url));
            }
            daemon::shutdown_signal().await;
            println!(
                "\nStopping: the shop, then the services' instances (they deregister), then the registry."
            );
        }
        Err(error) => eprintln!("the demo could not start: {error:#}"),
    }
    // The shop first, then the instances, so that they deregister while the
    // registry still runs.
    for proc in procs.iter_mut().rev() {
        stop(proc).await;
    }
    println!("Stopped.");
    Ok(())
}

async fn start_all(
    exe: &PathBuf,
    args: &DemoArgs,
    data_dir: &std::path::Path,
    [registry_listen, xds_listen]: [SocketAddr; 2],
    listen: SocketAddr,
    procs: &mut Vec<Proc>,
) -> anyhow::Result<(String, String)> {
    let mut rows = Vec::new();
    let mut web_args = vec![
        "market-web".to_owned(),
        "--listen".to_owned(),
        listen.to_string(),
    ];
    let mut token = None;
    let mut registry_url = None;
    let mut xds_usage = None;
    if args.monolith {
        web_args.push("--monolith".to_owned());
    } else {
        let admin = registryd::auth::generate(registryd::auth::TokenKind::Admin);
        let mut registry_args = vec![
            "registryd".to_owned(),
            "--listen".to_owned(),
            registry_listen.to_string(),
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
            "--admin-token".to_owned(),
            admin.clone(),
            "--xds-listen".to_owned(),
            xds_listen.to_string(),
            // Python's grpcio fires an xDS route's timeout 1 to 2 s
            // early (grpc/grpc#40633): with the contract's 1 s every
            // call of the demo's Python users would fail at once, so
            // the demo's routes carry none; set a deadline per call.
            "--xds-timeout".to_owned(),
            "ratings=0s".to_owned(),
        ];
        registry_args.extend(args.log.to_args());
        let registry = start(exe, "registryd", &registry_args, Output::Echo, "info")?;
        let url = registry.listening("registryd", READY).await?;
        let xds = registry.listening("registryd-xds", READY).await?;
        rows.push(format!(
            "  {:<18} pid {:<8} {url}",
            "registryd",
            registry.pid()
        ));
        procs.push(registry);

        let registry = registry_client::connect(&url, &admin)?;
        for service in &crate::SERVICES {
            // The service's entry (what `dwc create-service ratings` did).
            let created = create_service(&registry, service).await?;
            for n in 1..=args.counts.of(service) {
                let mut instance_args = vec![
                    service.subcommand.to_owned(),
                    "--instance".to_owned(),
                    n.to_string(),
                    "--registry".to_owned(),
                    url.clone(),
                    "--token".to_owned(),
                    created.token.clone(),
                ];
                if args.any_ports {
                    instance_args.extend(["--listen".to_owned(), "127.0.0.1:0".to_owned()]);
                }
                instance_args.extend(args.log.to_args());
                let name = format!("{}-{n}", service.name());
                let instance = start(exe, &name, &instance_args, Output::Echo, "info")?;
                let address = instance.listening(&name, READY).await?;
                instance.registered(&name, READY).await?;
                rows.push(format!("  {name:<18} pid {:<8} {address}", instance.pid()));
                procs.push(instance);
            }
            if service.name() == ratings_server::SERVICE.name {
                token = Some(created.token);
            }
        }
        // The shop reads every service with one consumer token.
        let consumer = create_shop_consumer(&registry).await?;
        // Other languages read ratings over xDS, with the shop's token here.
        let bootstrap = data_dir.join("xds-bootstrap-ratings.json");
        let json = registry_client::xds_bootstrap("ratings", &xds, Some(&consumer), None)?;
        std::fs::write(&bootstrap, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("cannot write {}", bootstrap.display()))?;
        xds_usage = Some(format!(
            "\nFrom another language, over gRPC's xDS (the registry serves it at {xds}):\n  \
             GRPC_XDS_BOOTSTRAP={} and dial xds:///ratings, e.g. in Python:\n    \
             grpc.insecure_channel(\"xds:///ratings\"), with a deadline per call (timeout=1)\n",
            bootstrap.display()
        ));
        web_args.extend([
            "--registry".to_owned(),
            url.clone(),
            "--token".to_owned(),
            consumer,
        ]);
        web_args.extend(args.policy.to_args());
        registry_url = Some(url);
    }

    web_args.extend(args.log.to_args());
    let web = start(exe, "market-web", &web_args, Output::Echo, "info")?;
    let shop = web.listening("market-web", READY).await?;
    let addr = socket_addr(&shop)?;
    rows.push(format!(
        "  {:<18} pid {:<8} {shop}",
        "market-web",
        web.pid()
    ));
    procs.push(web);

    let mut banner = format!(
        "\nThe market is open: http://{addr}/\n\n{}\n",
        rows.join("\n")
    );
    if let (Some(token), Some(url)) = (token, registry_url) {
        let first = procs.get(1).filter(|p| p.name().starts_with("ratings-"));
        if let Some(first) = first {
            let pid = first.pid();
            banner.push_str(&format!(
                "\nThe walkthrough, with {name}:\n  pause it:   kill -STOP {pid}\n  resume it:  kill -CONT {pid}\n  stop it:    kill {pid}\n",
                name = first.name()
            ));
        }
        banner.push_str(&format!(
            "  start another instance:\n    cargo run --release --bin market -- ratings-server --instance {next} --registry {url} --token {token}\n",
            next = args.counts.of(&crate::SERVICES[0]) + 1
        ));
        banner.push_str(&format!("  breakers and cache: http://{addr}/status\n"));
    }
    if let Some(usage) = xds_usage {
        banner.push_str(&usage);
    }
    banner.push_str("\nCtrl-C stops everything.");
    Ok((banner, shop))
}
