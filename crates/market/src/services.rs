//! The services the demo and the chaos soak run: one entry each.
//!
//! An entry says how its instances run (`market SUBCOMMAND …`, the service's
//! own command line), and how many the demo starts. The demo creates the
//! service in the registry, starts its instances, and gives the shop one
//! consumer token for every service here; the chaos soak strikes them all.
//! A new service is one entry in [`SERVICES`] (and its crate in this crate's
//! manifest).

use clap::{CommandFactory, FromArgMatches};

/// The services, in the order the demo starts them. The first is the one the
/// walkthrough pauses and kills.
pub(crate) const SERVICES: [DemoService; 2] = [
    DemoService {
        service: &ratings_server::SERVICE,
        subcommand: "ratings-server",
        about: "Ratings instances (same options as `ratings-server`)",
        count_flag: "instances",
        default_count: 3,
        command: ratings_server::cli::Cli::command,
        run: |matches, runtime| {
            let cli = ratings_server::cli::Cli::from_arg_matches(matches)?;
            runtime.block_on(ratings_server::cli::run(cli))
        },
    },
    DemoService {
        service: &recommendations_server::SERVICE,
        subcommand: "recommendations-server",
        about: "Recommendations instances (same options as `recommendations-server`)",
        count_flag: "recommendations",
        default_count: 2,
        command: recommendations_server::Cli::command,
        run: |matches, runtime| {
            let cli = recommendations_server::Cli::from_arg_matches(matches)?;
            runtime.block_on(recommendations_server::run(cli))
        },
    },
];

/// A service the demo runs: its instances are `market SUBCOMMAND`.
pub(crate) struct DemoService {
    /// How its instances run.
    pub(crate) service: &'static daemon::Service,
    /// Its binary, as a subcommand of `market`.
    pub(crate) subcommand: &'static str,
    /// The subcommand's one-line help.
    pub(crate) about: &'static str,
    /// The flag of `market` and `market chaos` that says how many of its
    /// instances to start.
    pub(crate) count_flag: &'static str,
    /// How many by default.
    pub(crate) default_count: u16,
    /// Its command line.
    pub(crate) command: fn() -> clap::Command,
    /// Runs its instances as the parsed command line says.
    pub(crate) run: fn(&clap::ArgMatches, &tokio::runtime::Runtime) -> anyhow::Result<()>,
}

impl DemoService {
    /// Its name in the registry.
    pub(crate) fn name(&self) -> &'static str {
        self.service.name
    }

    /// The entry whose subcommand is `name`.
    pub(crate) fn by_subcommand(name: &str) -> Option<&'static Self> {
        SERVICES.iter().find(|service| service.subcommand == name)
    }

    /// `market SUBCOMMAND`'s command line.
    pub(crate) fn subcommand(&self) -> clap::Command {
        daemon::instances::with_service_help((self.command)(), self.service)
            .name(self.subcommand)
            .about(self.about)
    }

    /// The flag that counts its instances, `at_least` to `at_most`.
    pub(crate) fn count_arg(
        &self,
        at_least: u16,
        at_most: u16,
        help: fn(&str) -> String,
    ) -> clap::Arg {
        clap::Arg::new(self.count_flag)
            .long(self.count_flag)
            .value_name("N")
            .value_parser(clap::value_parser!(u16).range(i64::from(at_least)..=i64::from(at_most)))
            .help(format!(
                "{} [default: {}]",
                help(self.name()),
                self.default_count
            ))
    }
}

/// How many instances of each service to start.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counts(Vec<u16>);

impl Counts {
    /// The counts `matches` holds, from the flags of [`DemoService::count_arg`].
    pub(crate) fn from_matches(matches: &clap::ArgMatches) -> Self {
        Self(
            SERVICES
                .iter()
                .map(|service| {
                    matches
                        .get_one::<u16>(service.count_flag)
                        .copied()
                        .unwrap_or(service.default_count)
                })
                .collect(),
        )
    }

    /// How many of `service`'s instances to start.
    pub(crate) fn of(&self, service: &DemoService) -> u16 {
        SERVICES
            .iter()
            .position(|s| s.subcommand == service.subcommand)
            .and_then(|i| self.0.get(i).copied())
            .unwrap_or(service.default_count)
    }
}

/// Adds each service's count flag to `command`.
pub(crate) fn with_count_args(
    command: clap::Command,
    at_least: u16,
    at_most: u16,
    help: fn(&str) -> String,
) -> clap::Command {
    SERVICES.iter().fold(command, |command, service| {
        command.arg(service.count_arg(at_least, at_most, help))
    })
}
