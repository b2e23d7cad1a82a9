//! The "You may also like" panel: one call per page to the recommendations
//! service, for the items in the cart, or the page's items when the cart is
//! empty.
//!
//! Its fallback is not the ratings': a recommendation is a garnish, so when
//! the call fails the panel is left out. Nothing is cached, and nothing of
//! the page waits longer than the contract's deadline for it.

use std::sync::Arc;

use askama::Template;
use futures::future::BoxFuture;
use market_proto::recommendations::v1::{
    RECOMMENDER_CLIENT_POLICY, RecommendRequest, Recommendations as Answer,
    recommender_client::RecommenderClient,
};
use registry_client::Registries;
use resilience::{Client, Policy, PolicyError};
use tower::ServiceExt as _;

use super::{Observed, Page, Panel, PanelKind};
use crate::{catalog, metrics::Metrics};

/// The service's name in the registry.
pub const SERVICE: &str = "recommendations";

/// The panel, for [`super::PANELS`].
pub const PANEL: PanelKind = PanelKind {
    service: SERVICE,
    discover: |registries| Ok(Arc::new(Recommendations::discover(registries)?)),
};

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
#[derive(Debug, Clone, PartialEq, Eq, Template)]
#[template(path = "panels/recommendations.html")]
pub struct Shown {
    /// Best first.
    pub suggestions: Vec<Suggestion>,
    /// The instance that answered.
    pub served_by: String,
}

/// The page's recommendations, through the client of their contract.
#[derive(Clone)]
pub struct Recommendations {
    client: Client<RecommendRequest, Answer>,
}

impl std::fmt::Debug for Recommendations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recommendations")
            .field("policy", self.client.policy())
            .finish()
    }
}

impl Recommendations {
    /// Finds the instances through the registry. Call it inside a Tokio
    /// runtime.
    pub fn discover(registries: Registries) -> Result<Self, PolicyError> {
        let client = Client::builder(SERVICE, contract_policy()).discover(registries, recommend)?;
        Ok(Self { client })
    }

    /// What the panel shows for a page showing `page.items` with
    /// `page.cart` in the cart: suggestions for the cart's items, or for the
    /// page's when the cart is empty. `None` when the call failed or there
    /// is nothing to recommend.
    pub async fn for_page(&self, page: Page<'_>, metrics: &Metrics) -> Option<Shown> {
        let request = request_for(page);
        let answer = match self.client.clone().oneshot(request).await {
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
        (!suggestions.is_empty()).then_some(Shown {
            suggestions,
            served_by: answer.served_by,
        })
    }
}

impl Panel for Recommendations {
    fn service(&self) -> &'static str {
        SERVICE
    }

    fn render<'a>(&'a self, page: Page<'a>, metrics: &'a Metrics) -> BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            let shown = self.for_page(page, metrics).await?;
            match shown.render() {
                Ok(html) => Some(html),
                Err(error) => {
                    tracing::error!(%error, "cannot render the recommendations panel");
                    None
                }
            }
        })
    }

    fn client(&self) -> &dyn Observed {
        &self.client
    }
}

/// The one request of a page: for the cart's items, or the page's when the
/// cart is empty.
fn request_for(page: Page<'_>) -> RecommendRequest {
    let basis = if page.cart.is_empty() {
        page.items
    } else {
        page.cart
    };
    RecommendRequest {
        thing_ids: basis.iter().map(|id| (*id).to_owned()).collect(),
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

    #[test]
    fn a_page_asks_for_its_cart_or_else_its_items() {
        let items = ["camera", "football", "basketball", "gloves"];
        let empty = request_for(Page {
            items: &items,
            cart: &[],
        });
        assert_eq!(empty.thing_ids, items);
        let cart = request_for(Page {
            items: &items,
            cart: &["camera", "basketball"],
        });
        assert_eq!(cart.thing_ids, ["camera", "basketball"]);
    }

    #[test]
    fn the_panel_links_what_the_shop_sells_and_names_who_answered() {
        let shown = Shown {
            suggestions: ["football", "tripod"]
                .map(|id| suggestion(id.to_owned()))
                .to_vec(),
            served_by: "recommendations-2".to_owned(),
        };
        let html = shown.render().unwrap();
        assert!(html.contains(r#"id="recommendations""#), "{html}");
        assert!(html.contains("You may also like"), "{html}");
        let football = catalog::item("football").unwrap().title;
        assert!(
            html.contains(&format!(r##"<a href="#item-football">{football}</a>"##)),
            "{html}"
        );
        assert!(
            html.contains("<li>tripod</li>"),
            "not sold here, not linked: {html}"
        );
        assert!(html.contains("recommended by recommendations-2"), "{html}");
    }
}
