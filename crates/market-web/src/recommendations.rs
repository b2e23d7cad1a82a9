//! The "You may also like" panel: one call per page to the recommendations
//! service, for the items in the cart, or the page's items when the cart is
//! empty.
//!
//! Its fallback is not the ratings': a recommendation is a garnish, so when
//! the call fails the panel is left out. Nothing is cached, and nothing of
//! the page waits longer than the contract's deadline for it.

use market_proto::recommendations::v1::{
    RECOMMENDER_CLIENT_POLICY, RecommendRequest, Recommendations as Answer,
    recommender_client::RecommenderClient,
};
use registry_client::Registries;
use resilience::{Client, EndpointSnapshot, Policy, PolicyError};
use tower::ServiceExt as _;

use crate::{catalog, metrics::Metrics};

/// The service's name in the registry.
pub const SERVICE: &str = "recommendations";

/// The policy the recommendations contract declares, completed with the
/// stack's defaults where it says nothing.
pub fn contract_policy() -> Policy {
    Policy::from_contract(&RECOMMENDER_CLIENT_POLICY)
}

/// The one method the stack calls: `Recommender/Recommend`.
async fn recommend(
    channel: tonic::transport::Channel,
    request: tonic::Request<RecommendRequest>,
) -> Result<tonic::Response<Answer>, tonic::Status> {
    RecommenderClient::new(channel).recommend(request).await
}

/// One recommended item, as the panel shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suggestion {
    /// The item's id.
    pub id: String,
    /// Its title when the shop sells it; else its id in words
    /// (`memory-card`: "memory card").
    pub title: String,
    /// Whether the shop sells it (then the panel links to it).
    pub sold_here: bool,
}

/// What the panel shows: the suggestions and who made them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panel {
    /// Best first.
    pub suggestions: Vec<Suggestion>,
    /// The instance that answered.
    pub served_by: String,
}

/// The page's recommendations source: the client (none for the monolith,
/// or a shop run without recommendations).
#[derive(Clone)]
pub struct Recommendations {
    client: Option<Client<RecommendRequest, Answer>>,
}

impl std::fmt::Debug for Recommendations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recommendations")
            .field("policy", &self.client.as_ref().map(Client::policy))
            .finish()
    }
}

impl Recommendations {
    /// No panel, ever.
    pub fn none() -> Self {
        Self { client: None }
    }

    /// A source that finds the instances through the registry. Call it
    /// inside a Tokio runtime.
    pub fn discover(registries: Registries) -> Result<Self, PolicyError> {
        let client = Client::builder(SERVICE, contract_policy()).discover(registries, recommend)?;
        Ok(Self {
            client: Some(client),
        })
    }

    /// The client, when there is one.
    pub fn client(&self) -> Option<&Client<RecommendRequest, Answer>> {
        self.client.as_ref()
    }

    /// The instances listed now, with their breakers.
    pub fn endpoints(&self) -> Vec<EndpointSnapshot> {
        self.client
            .as_ref()
            .map(Client::endpoints)
            .unwrap_or_default()
    }

    /// The panel for a page showing `ids`, or `None` when it is left out:
    /// no client, the call failed, or nothing to recommend.
    pub async fn for_page(&self, ids: &[&str], metrics: &Metrics) -> Option<Panel> {
        let client = self.client.clone()?;
        let request = RecommendRequest {
            thing_ids: ids.iter().map(|id| (*id).to_owned()).collect(),
        };
        let answer = match client.oneshot(request).await {
            Ok(served) => served.response,
            Err(error) => {
                tracing::warn!(%error, "no recommendations: {error}");
                metrics.call(SERVICE, false);
                return None;
            }
        };
        metrics.call(SERVICE, true);
        tracing::info!(
            served_by = %answer.served_by,
            "RECOMMENDED {}",
            answer.thing_ids.join(",")
        );
        let suggestions: Vec<Suggestion> = answer.thing_ids.into_iter().map(suggestion).collect();
        (!suggestions.is_empty()).then_some(Panel {
            suggestions,
            served_by: answer.served_by,
        })
    }
}

fn suggestion(id: String) -> Suggestion {
    match catalog::item(&id) {
        Some(item) => Suggestion {
            title: item.title.to_owned(),
            sold_here: true,
            id,
        },
        None => Suggestion {
            title: id.replace('-', " "),
            sold_here: false,
            id,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_policy_is_the_recommendations_one() {
        let policy = contract_policy();
        assert_eq!(policy.timeout, std::time::Duration::from_millis(200));
        assert_eq!(policy.deadline, std::time::Duration::from_millis(300));
        assert_eq!(
            policy.hedge_after,
            Some(std::time::Duration::from_millis(50))
        );
        assert_eq!(policy.breaker.failure_limit, 3);
        assert_eq!(
            policy.breaker.retest_delay,
            std::time::Duration::from_secs(10)
        );
        assert_eq!(policy.balance, resilience::Balance::RoundRobin);
        policy.validate().unwrap();
        // It is not the ratings contract's.
        assert_ne!(policy.timeout, ratings_client::contract_policy().timeout);
    }

    #[test]
    fn suggestions_the_shop_sells_carry_its_title() {
        let camera = suggestion("camera".to_owned());
        assert!(camera.sold_here);
        assert_eq!(camera.title, catalog::item("camera").unwrap().title);
        let card = suggestion("memory-card".to_owned());
        assert!(!card.sold_here);
        assert_eq!(card.title, "memory card");
    }
}
