//! The ratings microservice: serves the rating of each catalog item over gRPC.
//!
//! [`RatingsService`] answers `market.ratings.v1.Ratings/Get` from a fixed
//! table, as the original did, and can be told to misbehave ([`Faults`]) for
//! demos and tests. [`SERVICE`] says how its instances run: the binary hands
//! it to `daemon::run_instances`, which serves each instance with gRPC health
//! and reflection, registers it and heartbeats, and deregisters it before it
//! drains. [`serve`] runs one unregistered instance inside another program.

pub mod cli;

use std::future::Future;

use market_proto::ratings::v1::{self as pb, ratings_server::RatingsServer};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

/// The ratings served, in tenths of a star, by item id.
pub const RATINGS: [(&str, i32); 4] = [
    ("basketball", 21),
    ("briefcase", 35),
    ("camera", 45),
    ("football", 22),
];

pub use daemon::Faults;

/// The ratings service of one instance.
#[derive(Debug, Clone)]
pub struct RatingsService {
    /// This instance's id, sent back in every answer as `served_by`.
    instance_id: String,
    faults: Faults,
}

impl RatingsService {
    /// A service that answers as `instance_id`.
    pub fn new(instance_id: impl Into<String>, faults: Faults) -> Self {
        Self {
            instance_id: instance_id.into(),
            faults,
        }
    }
}

/// Whether `id` has the shape of an item id: 1 to 63 lowercase letters,
/// digits and `-`.
fn is_item_id(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[tonic::async_trait]
impl pb::ratings_server::Ratings for RatingsService {
    async fn get(
        &self,
        request: Request<pb::GetRatingRequest>,
    ) -> Result<Response<pb::Rating>, Status> {
        let thing_id = request.into_inner().thing_id;
        if let Err(status) = self.faults.inject().await {
            tracing::info!(instance = %self.instance_id, thing = %thing_id, "GET {thing_id} => failing on purpose (--fail-rate)");
            return Err(status);
        }
        if thing_id.is_empty() {
            return Err(Status::invalid_argument(
                "thing_id is empty; give an item id such as \"camera\"",
            ));
        }
        if !is_item_id(&thing_id) {
            return Err(Status::invalid_argument(format!(
                "thing_id {thing_id:?} is malformed; item ids are 1 to 63 lowercase letters, digits and '-'"
            )));
        }
        let Some(&(_, rating)) = RATINGS.iter().find(|(id, _)| *id == thing_id) else {
            tracing::info!(instance = %self.instance_id, thing = %thing_id, "GET {thing_id} => not found");
            let known: Vec<&str> = RATINGS.iter().map(|(id, _)| *id).collect();
            return Err(Status::not_found(format!(
                "no rating for {thing_id:?}; rated items are {}",
                known.join(", ")
            )));
        };
        tracing::info!(instance = %self.instance_id, thing = %thing_id, rating, "GET {thing_id} => {rating}");
        Ok(Response::new(pb::Rating {
            thing_id,
            rating,
            served_by: self.instance_id.clone(),
        }))
    }
}

/// The largest request accepted, in bytes (an item id is at most 63).
pub const MAX_MESSAGE: usize = 4 * 1024;

/// The ratings service as its instances run: registered as `ratings`,
/// instance N on port 8000+N, with the toolkit's limits for a service.
pub const SERVICE: daemon::Service = daemon::Service {
    name: "ratings",
    base_port: 8000,
    limits: daemon::Limits::SERVICE,
    descriptor_sets: &[market_proto::FILE_DESCRIPTOR_SET],
};

/// Why the server stopped with an error.
pub use daemon::ServeError;

/// Serves `service` on `listener`, unregistered and in plaintext, until
/// `shutdown` resolves, then lets the calls in flight finish: an instance
/// inside another program (a test, a benchmark).
pub async fn serve(
    service: RatingsService,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let serving = daemon::Serving {
        tls: None,
        limits: SERVICE.limits,
        descriptor_sets: SERVICE.descriptor_sets,
    };
    let service = RatingsServer::new(service).max_decoding_message_size(MAX_MESSAGE);
    daemon::serve_grpc(service, listener, serving, shutdown, || {}).await
}

#[cfg(test)]
mod tests {
    use pb::ratings_server::Ratings as _;

    use super::*;

    async fn get(service: &RatingsService, id: &str) -> Result<pb::Rating, Status> {
        service
            .get(Request::new(pb::GetRatingRequest {
                thing_id: id.into(),
            }))
            .await
            .map(Response::into_inner)
    }

    #[tokio::test]
    async fn serves_the_catalog_ratings() {
        let service = RatingsService::new("ratings-1", Faults::default());
        let rating = get(&service, "camera").await.unwrap();
        assert_eq!((rating.thing_id.as_str(), rating.rating), ("camera", 45));
        assert_eq!(rating.served_by, "ratings-1");
        assert_eq!(get(&service, "basketball").await.unwrap().rating, 21);
    }

    #[tokio::test]
    async fn bad_ids_are_refused_precisely() {
        let service = RatingsService::new("ratings-1", Faults::default());
        let err = get(&service, "").await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("empty"), "{}", err.message());
        let err = get(&service, "Camera!").await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("malformed"), "{}", err.message());
        let err = get(&service, "piano").await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert!(err.message().contains("camera"), "{}", err.message());
    }
}
