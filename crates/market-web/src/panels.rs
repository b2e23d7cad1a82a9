//! Panels: the parts of the page that other services make, beside the
//! ratings.
//!
//! A panel is one call to one service per page, through the resilient
//! client its contract declares, run at the same time as the ratings and
//! under the same page deadline. A panel that fails is left out of the page;
//! the ratings and every other panel are shown all the same.
//!
//! Adding a panel for a new service takes its module here (a [`Panel`] and a
//! [`PanelKind`]), its template under `templates/panels/`, and one entry in
//! [`PANELS`]. The shop then discovers the service, shows the panel, lists its
//! instances on `/status` and counts its calls in `/metrics`, and
//! `market-web --no-panel NAME` leaves it out.

pub mod recommendations;

use std::sync::Arc;

use futures::future::BoxFuture;
use registry_client::Registries;
use resilience::{EndpointSnapshot, Policy};

use crate::metrics::Metrics;

/// The panels the shop can show, in page order.
pub const PANELS: &[PanelKind] = &[recommendations::PANEL];

/// A panel the shop knows: its service, and how to build it.
pub struct PanelKind {
    /// The service it calls, as registered; also the panel's name on the
    /// command line and the `id` of its element on the page.
    pub service: &'static str,
    /// Builds the panel over the registry (inside a Tokio runtime).
    pub discover: fn(Registries) -> Result<Arc<dyn Panel>, resilience::PolicyError>,
}

impl std::fmt::Debug for PanelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PanelKind")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

/// The panel of `service`, when the shop knows one.
pub fn kind(service: &str) -> Option<&'static PanelKind> {
    PANELS.iter().find(|kind| kind.service == service)
}

/// The names [`kind`] accepts, for error messages.
pub fn names() -> String {
    PANELS
        .iter()
        .map(|kind| kind.service)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a panel knows of the page it is on.
#[derive(Debug, Clone, Copy)]
pub struct Page<'a> {
    /// The items the page shows, in order.
    pub items: &'a [&'static str],
    /// The items in the visitor's cart, in order.
    pub cart: &'a [&'static str],
}

/// One service's part of the page.
pub trait Panel: Send + Sync + 'static {
    /// The service it calls.
    fn service(&self) -> &'static str;

    /// The panel's HTML for `page` (an element whose `id` is the service's
    /// name, headed by an `h2`), or `None` to leave it out: the call
    /// failed, or there is nothing to show. It counts its call in
    /// `metrics` ([`Metrics::call`]); the page bounds how long it may take.
    fn render<'a>(&'a self, page: Page<'a>, metrics: &'a Metrics) -> BoxFuture<'a, Option<String>>;

    /// Its client, for `/status` and `/metrics`.
    fn client(&self) -> &dyn Observed;
}

/// What `/status` and `/metrics` read of a client.
pub trait Observed: Send + Sync {
    /// The instances listed now, with their breakers.
    fn endpoints(&self) -> Vec<EndpointSnapshot>;
    /// The breakers kept for addresses not listed now.
    fn absent(&self) -> Vec<EndpointSnapshot>;
    /// The policy it calls with.
    fn policy(&self) -> &Policy;
}

impl<Req, Resp> Observed for resilience::Client<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    fn endpoints(&self) -> Vec<EndpointSnapshot> {
        resilience::Client::endpoints(self)
    }

    fn absent(&self) -> Vec<EndpointSnapshot> {
        resilience::Client::absent(self)
    }

    fn policy(&self) -> &Policy {
        resilience::Client::policy(self)
    }
}
