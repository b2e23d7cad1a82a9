//! The typed client of the ratings service: `get("camera")` through the
//! resilient stack of the `resilience` crate, with the policy the ratings
//! contract declares.

use std::fmt;

use market_proto::ratings::v1::{
    GetRatingRequest, RATINGS_CLIENT_POLICY, ratings_client::RatingsClient as GrpcClient,
};
use registry_client::{Registries, WatchUpdate};
use resilience::{CallError, Client, EndpointSnapshot, Policy, PolicyError};
use tower::ServiceExt as _;

/// The service's name in the registry.
pub const SERVICE: &str = "ratings";

/// A rating, as the market shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rating {
    /// The item's id.
    pub thing_id: String,
    /// The rating in tenths of a star: 45 is 4.5 out of 5.
    pub tenths: i32,
    /// The instance that answered.
    pub served_by: String,
}

impl Rating {
    /// The rating in stars, `4.5`, as the original logged it.
    pub fn stars(&self) -> String {
        format!("{}.{}", self.tenths / 10, self.tenths % 10)
    }
}

impl fmt::Display for Rating {
    /// `4.5/5`, as the original showed it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}/5", self.tenths / 10, self.tenths % 10)
    }
}

/// The policy the ratings contract declares, completed with the stack's
/// defaults where the contract says nothing.
pub fn contract_policy() -> Policy {
    Policy::from_contract(&RATINGS_CLIENT_POLICY)
}

/// The one method the stack calls: `Ratings/Get` on an instance's channel.
async fn get(
    channel: tonic::transport::Channel,
    request: tonic::Request<GetRatingRequest>,
) -> Result<tonic::Response<market_proto::ratings::v1::Rating>, tonic::Status> {
    GrpcClient::new(channel).get(request).await
}

/// Asks the ratings service, resiliently.
#[derive(Clone)]
pub struct RatingsClient {
    client: Client<GetRatingRequest, market_proto::ratings::v1::Rating>,
}

impl fmt::Debug for RatingsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RatingsClient")
            .field("policy", self.client.policy())
            .finish_non_exhaustive()
    }
}

impl RatingsClient {
    /// A client that finds the ratings instances through the registry.
    /// Call it inside a Tokio runtime.
    pub fn discover(registries: Registries, policy: Policy) -> Result<Self, PolicyError> {
        let client = Client::builder(SERVICE, policy).discover(registries, get)?;
        Ok(Self { client })
    }

    /// A client whose instances come from `updates`.
    pub fn new(
        updates: impl futures::Stream<Item = WatchUpdate> + Send + 'static,
        policy: Policy,
    ) -> Result<Self, PolicyError> {
        let client = Client::builder(SERVICE, policy).build(updates, get)?;
        Ok(Self { client })
    }

    /// The rating of one item.
    pub async fn get(&self, thing_id: &str) -> Result<Rating, CallError> {
        let served = self
            .client
            .clone()
            .oneshot(GetRatingRequest {
                thing_id: thing_id.to_owned(),
            })
            .await?;
        Ok(Rating {
            thing_id: served.response.thing_id,
            tenths: served.response.rating,
            served_by: served.response.served_by,
        })
    }

    /// The resilient stack underneath, as a tower `Service` of `Get`
    /// requests, to wrap in layers of your own.
    pub fn service(&self) -> Client<GetRatingRequest, market_proto::ratings::v1::Rating> {
        self.client.clone()
    }

    /// Waits until the registry has listed the instances once.
    pub async fn synced(&self) {
        self.client.synced().await;
    }

    /// The instances listed now, with their breakers.
    pub fn endpoints(&self) -> Vec<EndpointSnapshot> {
        self.client.endpoints()
    }

    /// The breakers kept for addresses no instance is listed at now.
    pub fn absent(&self) -> Vec<EndpointSnapshot> {
        self.client.absent()
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        self.client.policy()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_contract_policy_is_the_original_one() {
        let policy = contract_policy();
        assert_eq!(policy.timeout, Duration::from_secs(1));
        assert_eq!(policy.deadline, Duration::from_secs(2));
        assert_eq!(policy.breaker.failure_limit, 1);
        assert_eq!(policy.breaker.retest_delay, Duration::from_secs(30));
        assert_eq!(policy.retries, 1);
        assert_eq!(policy.balance, resilience::Balance::P2c);
        policy.validate().unwrap();
    }

    #[test]
    fn ratings_read_as_the_original_showed_them() {
        let rating = |tenths| Rating {
            thing_id: "camera".into(),
            tenths,
            served_by: "ratings-1".into(),
        };
        assert_eq!(rating(45).to_string(), "4.5/5");
        assert_eq!(rating(21).to_string(), "2.1/5");
        assert_eq!(rating(50).to_string(), "5.0/5");
        assert_eq!(rating(45).stars(), "4.5");
    }
}
