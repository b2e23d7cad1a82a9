//! The recommendations microservice: "customers who bought these also
//! bought", from a fixed purchase history. All but the answer is the
//! toolkit's: `daemon::run_instances` serves, registers and drains each
//! instance as [`SERVICE`] says, and `daemon::Faults` misbehaves on demand.

use market_proto::recommendations::v1::{self as pb, recommender_server::RecommenderServer};
use tonic::{Request, Response, Status};

/// How often each pair of items was bought together.
const BOUGHT_TOGETHER: [(&str, &str, u32); 10] = [
    ("basketball", "football", 8),
    ("basketball", "ball-pump", 6),
    ("basketball", "sneakers", 4),
    ("football", "ball-pump", 5),
    ("football", "shin-guards", 4),
    ("camera", "tripod", 9),
    ("camera", "memory-card", 7),
    ("camera", "briefcase", 3),
    ("briefcase", "notebook", 6),
    ("briefcase", "umbrella", 2),
];

/// The most items one answer recommends.
pub const MAX_RECOMMENDED: usize = 3;

/// The most items one request may name.
pub const MAX_ASKED: usize = 64;

/// The items most often bought together with `asked`, best first (ties by
/// id), none of `asked` among them, at most [`MAX_RECOMMENDED`].
pub fn recommend(asked: &[String]) -> Vec<String> {
    let mut scores = std::collections::BTreeMap::<&str, u32>::new();
    for &(a, b, count) in &BOUGHT_TOGETHER {
        for (have, other) in [(a, b), (b, a)] {
            if asked.iter().any(|id| id == have) && !asked.iter().any(|id| id == other) {
                *scores.entry(other).or_default() += count;
            }
        }
    }
    let mut ranked: Vec<(&str, u32)> = scores.into_iter().collect();
    // A stable sort: equal scores stay in id order.
    ranked.sort_by_key(|&(_, score)| std::cmp::Reverse(score));
    ranked
        .into_iter()
        .take(MAX_RECOMMENDED)
        .map(|(id, _)| id.to_owned())
        .collect()
}

/// What is wrong with `asked`, if anything.
fn check(asked: &[String]) -> Result<(), Status> {
    if asked.is_empty() {
        return Err(Status::invalid_argument(
            "thing_ids is empty; give the items to recommend for, such as [\"camera\"]",
        ));
    }
    if asked.len() > MAX_ASKED {
        return Err(Status::invalid_argument(format!(
            "thing_ids holds {} ids; at most {MAX_ASKED} are accepted",
            asked.len()
        )));
    }
    let item_id = |id: &str| {
        (1..=63).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    match asked.iter().find(|id| !item_id(id)) {
        Some(bad) => Err(Status::invalid_argument(format!(
            "thing_ids holds {bad:?}; item ids are 1 to 63 lowercase letters, digits and '-'"
        ))),
        None => Ok(()),
    }
}

/// The recommendations service of one instance.
#[derive(Debug, Clone)]
pub struct RecommendationsService {
    instance_id: String,
    faults: daemon::Faults,
}

#[tonic::async_trait]
impl pb::recommender_server::Recommender for RecommendationsService {
    async fn recommend(
        &self,
        request: Request<pb::RecommendRequest>,
    ) -> Result<Response<pb::Recommendations>, Status> {
        let asked = request.into_inner().thing_ids;
        self.faults.inject().await?;
        check(&asked)?;
        let thing_ids = recommend(&asked);
        tracing::info!("RECOMMEND {} => {}", asked.join(","), thing_ids.join(","));
        Ok(Response::new(pb::Recommendations {
            thing_ids,
            served_by: self.instance_id.clone(),
        }))
    }
}

/// The service as its instances run: registered as `recommendations`,
/// instance N on port 8100+N, with the toolkit's limits for a service.
pub const SERVICE: daemon::Service = daemon::Service {
    name: "recommendations",
    base_port: 8100,
    limits: daemon::Limits::SERVICE,
    descriptor_sets: &[market_proto::FILE_DESCRIPTOR_SET],
};

/// The largest request accepted, in bytes: 64 ids of 63 bytes, framed.
const MAX_MESSAGE: usize = 8 * 1024;

/// The recommendations service: instance N listens on 8100+N and registers
/// as `recommendations`; at shutdown it deregisters, then drains.
#[derive(Debug, clap::Parser)]
#[command(name = "recommendations-server", version)]
pub struct Cli {
    /// Which instances to run, where, and how they register.
    #[command(flatten)]
    pub instances: daemon::InstanceArgs,

    /// Misbehaviour on purpose: `--delay`, `--fail-rate`.
    #[command(flatten)]
    pub faults: daemon::Faults,
}

/// Runs the instances as the command line says, until SIGINT or SIGTERM.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    daemon::run_instances(&SERVICE, cli.instances, |id| {
        let (instance_id, faults) = (id.to_owned(), cli.faults);
        let service = RecommendationsService {
            instance_id,
            faults,
        };
        RecommenderServer::new(service).max_decoding_message_size(MAX_MESSAGE)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|id| (*id).to_owned()).collect()
    }

    #[test]
    fn recommends_what_was_bought_together_best_first_without_what_was_asked() {
        assert_eq!(
            recommend(&ids(&["camera"])),
            ["tripod", "memory-card", "briefcase"]
        );
        // football 8 + ball-pump 6+5 ...: scores add up over the asked items.
        assert_eq!(
            recommend(&ids(&["basketball", "football"])),
            ["ball-pump", "shin-guards", "sneakers"]
        );
        assert_eq!(
            recommend(&ids(&["basketball", "briefcase", "camera", "football"])),
            ["ball-pump", "tripod", "memory-card"]
        );
        assert!(recommend(&ids(&["piano"])).is_empty());
    }

    #[test]
    fn bad_requests_are_refused_precisely() {
        let message = |asked: &[&str]| check(&ids(asked)).unwrap_err().message().to_owned();
        assert!(message(&[]).contains("empty"));
        assert!(message(&["Camera!"]).contains("lowercase"));
        let many: Vec<String> = (0..65).map(|i| format!("item-{i}")).collect();
        let refused = check(&many).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(
            refused.message().contains("at most 64"),
            "{}",
            refused.message()
        );
        assert!(check(&ids(&["piano"])).is_ok());
    }
}
