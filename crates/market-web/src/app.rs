//! The routes: the shop page and its form, the JSON API, and the operator's
//! pages (`/status`, `/healthz`, `/metrics`).

use std::{sync::Arc, time::Duration};

use askama::Template;
use axum::{
    Form, Json, Router,
    extract::{FromRef, Path, Query, State, rejection::FormRejection},
    http::{HeaderValue, StatusCode, Uri, header},
    response::{Html, IntoResponse, Redirect, Response},
    routing::get,
};
use axum_extra::extract::{SignedCookieJar, cookie::Key};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::{
    cart::Message,
    catalog::{self, CATALOG, Item},
    error::AppError,
    metrics::Metrics,
    panels::{self, Panel},
    ratings::{Ratings, Shown, human_age},
    session::{self, Sessions},
};

/// The largest form body accepted; the shop's forms are a few dozen bytes.
pub const MAX_BODY: usize = 4 * 1024;

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    ratings: Arc<Ratings>,
    panels: Arc<[Arc<dyn Panel>]>,
    sessions: Sessions,
    key: Key,
    metrics: Arc<Metrics>,
}

impl AppState {
    /// The state over a ratings source and the panels beside it, with a
    /// cookie-signing key.
    pub fn new(
        ratings: Arc<Ratings>,
        panels: Vec<Arc<dyn Panel>>,
        metrics: Arc<Metrics>,
        key: Key,
    ) -> Self {
        Self {
            ratings,
            panels: panels.into(),
            sessions: Sessions::new(Duration::from_secs(3600), 100_000),
            key,
            metrics,
        }
    }
}

impl FromRef<AppState> for Key {
    fn from_ref(state: &AppState) -> Key {
        state.key.clone()
    }
}

/// The web app, without a socket: tests call it with `oneshot`.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(index).post(change_cart))
        .route("/thing/{id}", get(thing))
        .route("/api/things", get(api_things))
        .route("/api/things/{id}", get(api_thing))
        .route("/status", get(status))
        .route("/api/status", get(api_status))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/static/{file}", get(asset))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(header_layer(
            header::CONTENT_SECURITY_POLICY,
            CONTENT_SECURITY_POLICY,
        ))
        .layer(header_layer(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(header_layer(header::X_FRAME_OPTIONS, "DENY"))
        .layer(header_layer(header::REFERRER_POLICY, "same-origin"))
        .with_state(state)
}

/// The shop needs no script at all, loads everything from itself, and may not
/// be framed: the policy says so to the browser.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'none'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn header_layer(
    name: header::HeaderName,
    value: &'static str,
) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value))
}

// === the shop page ===

#[derive(Debug, Deserialize)]
struct IndexQuery {
    json: Option<String>,
}

/// One item as the page shows it.
struct Card {
    id: &'static str,
    title: &'static str,
    blurb: &'static str,
    price: String,
    rating: Option<String>,
    freshness: String,
    /// Whether ratings are part of this shop (not the monolith).
    rated: bool,
    in_cart: bool,
}

#[derive(Template)]
#[template(path = "index.html")]
struct IndexPage {
    cards: Vec<Card>,
    cart: Vec<&'static Item>,
    total: String,
    message: Option<&'static str>,
    /// The session's CSRF token, for every form.
    csrf: String,
    /// The panels that answered, as HTML, in page order.
    panels: Vec<String>,
}

async fn index(
    State(state): State<AppState>,
    jar: SignedCookieJar,
    query: Result<Query<IndexQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, AppError> {
    let Query(query) = query.map_err(|e| AppError::BadRequest(format!("malformed query: {e}")))?;
    if query.json.is_some() {
        return Ok(
            Json(serde_json::json!({ "thingIDs": catalog::ids().collect::<Vec<_>>() }))
                .into_response(),
        );
    }
    let started = Instant::now();
    // Every visitor gets a session here, so that their forms carry its token.
    let (jar, session) = state.sessions.find_or_create(jar);
    let (cart, message, csrf) = {
        let mut session = session::lock(&session);
        (
            session.cart.clone(),
            session.flash.take().map(Message::text),
            session.csrf.clone(),
        )
    };
    let ids: Vec<&'static str> = catalog::ids().collect();
    let bought: Vec<&'static str> = cart.items().map(|item| item.id).collect();
    let page = panels::Page {
        items: &ids,
        cart: &bought,
    };
    // The four ratings and every panel, all at once.
    let (shown, panels) = tokio::join!(
        state.ratings.for_page(&ids),
        futures::future::join_all(
            state
                .panels
                .iter()
                .map(|panel| panel.render(page, &state.metrics))
        ),
    );

    let rated = state.ratings.client().is_some();
    let cards = CATALOG
        .iter()
        .zip(&shown)
        .map(|(item, shown)| Card {
            id: item.id,
            title: item.title,
            blurb: item.blurb,
            price: item.price.to_string(),
            rating: shown.rating().map(ToString::to_string),
            freshness: shown.freshness(),
            rated,
            in_cart: cart.contains(item.id),
        })
        .collect();
    let page = IndexPage {
        cards,
        total: cart.total().to_string(),
        cart: cart.items().collect(),
        message,
        csrf,
        panels: panels.into_iter().flatten().collect(),
    };
    let html = page.render()?;
    state.metrics.page(started.elapsed().as_secs_f64());
    Ok((jar, Html(html)).into_response())
}

/// Adds to, removes from, or checks out the visitor's cart, then redirects
/// to the page (so a reload does not post again).
async fn change_cart(
    State(state): State<AppState>,
    jar: SignedCookieJar,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Result<Response, AppError> {
    let Form(fields) = form.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AppError::TooLarge(format!(
                "the form is too large; at most {MAX_BODY} bytes are accepted"
            ))
        } else {
            AppError::BadRequest(form_problem(&e))
        }
    })?;
    let stale = || {
        AppError::Forbidden(
            "this form's csrf token is missing or not this session's (the session may have expired): reload the page and try again"
                .to_owned(),
        )
    };
    let session = state.sessions.find(&jar).ok_or_else(stale)?;
    let (tokens, fields): (Vec<_>, Vec<_>) =
        fields.into_iter().partition(|(name, _)| name == "csrf");
    let [(_, token)] = tokens.as_slice() else {
        return Err(stale());
    };
    let mut session = session::lock(&session);
    if !session.csrf_matches(token) {
        return Err(stale());
    }
    let action = parse_action(&fields)?;
    let message = match action {
        Action::Add(item) => session.cart.add(item),
        Action::Remove(item) => session.cart.remove(item),
        Action::Checkout => session.cart.checkout(),
    };
    session.flash = Some(message);
    drop(session);
    Ok((jar, Redirect::to("/")).into_response())
}

enum Action {
    Add(&'static Item),
    Remove(&'static Item),
    Checkout,
}

const ACCEPTED: &str = "send exactly one of addCart=<item id>, removeCart=<item id> or checkout";

fn parse_action(fields: &[(String, String)]) -> Result<Action, AppError> {
    let [(name, value)] = fields else {
        return Err(AppError::BadRequest(format!(
            "the form has {} fields besides csrf; {ACCEPTED}",
            fields.len()
        )));
    };
    let item = || {
        catalog::item(value).ok_or_else(|| {
            AppError::BadRequest(format!(
                "no such item: {value:?}; the items are {}",
                catalog::ids().collect::<Vec<_>>().join(", ")
            ))
        })
    };
    match name.as_str() {
        "addCart" => Ok(Action::Add(item()?)),
        "removeCart" => Ok(Action::Remove(item()?)),
        "checkout" => Ok(Action::Checkout),
        other => Err(AppError::BadRequest(format!(
            "unknown form field {other:?}; {ACCEPTED}"
        ))),
    }
}

fn form_problem(rejection: &FormRejection) -> String {
    match rejection {
        FormRejection::InvalidFormContentType(_) => {
            "the form must be sent as application/x-www-form-urlencoded".to_owned()
        }
        FormRejection::BytesRejection(_) => {
            format!("the form is too large or unreadable; at most {MAX_BODY} bytes are accepted")
        }
        other => format!("malformed form: {}", other.body_text()),
    }
}

// === JSON ===

/// The original's `/thing/<id>`: the item, or 404 `no such Thing: <id>`.
async fn thing(Path(id): Path<String>) -> Response {
    match catalog::item(&id) {
        Some(item) => Json(item).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no such Thing: {id}")).into_response(),
    }
}

#[derive(Serialize)]
struct ApiThing {
    id: &'static str,
    title: &'static str,
    blurb: &'static str,
    /// The price as the page shows it, e.g. `$19.99`.
    price: String,
    price_cents: u64,
    rating: Option<ApiRating>,
}

#[derive(Serialize)]
struct ApiRating {
    /// Tenths of a star.
    tenths: i32,
    /// `4.5/5`.
    display: String,
    /// Whether it was asked just now.
    live: bool,
    /// How old it is, when it came from the cache.
    age_seconds: Option<f64>,
    served_by: String,
}

fn api_thing_of(item: &'static Item, shown: &Shown) -> ApiThing {
    ApiThing {
        id: item.id,
        title: item.title,
        blurb: item.blurb,
        price: item.price.to_string(),
        price_cents: item.price.0,
        rating: shown.rating().map(|rating| ApiRating {
            tenths: rating.tenths,
            display: rating.to_string(),
            live: matches!(shown, Shown::Live(_)),
            age_seconds: shown.age().map(|age| age.as_secs_f64()),
            served_by: rating.served_by.clone(),
        }),
    }
}

async fn api_things(State(state): State<AppState>) -> Json<Vec<ApiThing>> {
    let ids: Vec<&'static str> = catalog::ids().collect();
    let shown = state.ratings.for_page(&ids).await;
    Json(
        CATALOG
            .iter()
            .zip(&shown)
            .map(|(item, shown)| api_thing_of(item, shown))
            .collect(),
    )
}

async fn api_thing(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ApiThing>, AppError> {
    let item = catalog::item(&id).ok_or(AppError::NoItemJson(id))?;
    let shown = if state.ratings.client().is_some() {
        state.ratings.lookup(item.id).await
    } else {
        Shown::Unknown
    };
    Ok(Json(api_thing_of(item, &shown)))
}

// === operators ===

#[derive(Serialize)]
struct InstanceRow {
    /// Whether an instance is registered at the address now; a breaker of an
    /// address that left is kept for when it comes back.
    listed: bool,
    instance: String,
    address: String,
    state: String,
    retest_in: String,
    ewma: String,
    in_flight: u32,
    calls: u64,
    failures: u64,
    /// Its last minutes, drawn.
    #[serde(skip)]
    chart: Option<String>,
}

impl InstanceRow {
    fn new(endpoint: resilience::EndpointSnapshot, listed: bool) -> Self {
        let breaker = endpoint.breaker;
        Self {
            listed,
            instance: endpoint.instance,
            address: endpoint.address,
            state: breaker.state.to_string(),
            retest_in: breaker
                .retest_in
                .map(|d| format!("{:.1} s", d.as_secs_f64()))
                .unwrap_or_default(),
            ewma: breaker
                .ewma
                .map(|d| format!("{:.2} ms", d.as_secs_f64() * 1000.0))
                .unwrap_or_default(),
            in_flight: breaker.in_flight,
            calls: breaker.calls,
            failures: breaker.failures,
            chart: None,
        }
    }
}

struct CachedRow {
    id: String,
    rating: String,
    served_by: String,
    age: String,
}

/// One service's instances on the status page.
#[derive(Serialize)]
struct ServiceSection {
    name: &'static str,
    summary: String,
    instances: Vec<InstanceRow>,
}

impl ServiceSection {
    fn new(
        name: &'static str,
        listed: Vec<resilience::EndpointSnapshot>,
        absent: Vec<resilience::EndpointSnapshot>,
        policy: &resilience::Policy,
    ) -> Self {
        let summary = format!(
            "{} {name} instance(s) known; timeout {:?}, breaker opens after {} failure(s) and retests after {:?}{}.",
            listed.len(),
            policy.timeout,
            policy.breaker.failure_limit,
            policy.breaker.retest_delay,
            policy
                .hedge_after
                .map(|after| format!(", hedged after {after:?}"))
                .unwrap_or_default(),
        );
        let instances = listed
            .into_iter()
            .map(|e| InstanceRow::new(e, true))
            .chain(absent.into_iter().map(|e| InstanceRow::new(e, false)))
            .collect();
        Self {
            name,
            summary,
            instances,
        }
    }
}

#[derive(Template)]
#[template(path = "status.html")]
struct StatusPage {
    summary: String,
    services: Vec<ServiceSection>,
    cached: Vec<CachedRow>,
    /// The page's last minutes, drawn.
    page_chart: String,
}

/// The services' sections, and the page's summary line.
fn service_sections(state: &AppState) -> (String, Vec<ServiceSection>) {
    let mut services = Vec::new();
    if let Some(client) = state.ratings.client() {
        services.push(ServiceSection::new(
            ratings_client::SERVICE,
            client.endpoints(),
            client.absent(),
            client.policy(),
        ));
    }
    for panel in state.panels.iter() {
        let client = panel.client();
        services.push(ServiceSection::new(
            panel.service(),
            client.endpoints(),
            client.absent(),
            client.policy(),
        ));
    }
    let summary = if services.is_empty() {
        "This is the monolith: it calls no service.".to_owned()
    } else {
        let names: Vec<&str> = services.iter().map(|s| s.name).collect();
        format!("The shop calls {}.", names.join(" and "))
    };
    (summary, services)
}

async fn status(State(state): State<AppState>) -> Result<Html<String>, AppError> {
    let (summary, mut services) = service_sections(&state);
    let history = state.metrics.history();
    for section in &mut services {
        for row in &mut section.instances {
            row.chart = history
                .instances
                .iter()
                .find(|h| h.service == section.name && h.address == row.address)
                .map(crate::svg::instance);
        }
    }
    let cached = state
        .ratings
        .cached()
        .into_iter()
        .map(|(id, cached)| CachedRow {
            id,
            rating: cached.rating.to_string(),
            served_by: cached.rating.served_by.clone(),
            age: human_age(cached.fetched_at.elapsed()),
        })
        .collect();
    let page = StatusPage {
        summary,
        services,
        cached,
        page_chart: crate::svg::page(&history.page),
    };
    Ok(Html(page.render()?))
}

/// `/status` as JSON: each service's instances and breakers now, and the
/// last five minutes in buckets.
async fn api_status(State(state): State<AppState>) -> Json<serde_json::Value> {
    let (summary, services) = service_sections(&state);
    Json(serde_json::json!({
        "summary": summary,
        "services": services,
        "history": state.metrics.history(),
    }))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

// === static files and the rest ===

static ASSETS: &[(&str, &str, &str)] = &[
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../static/style.css"),
    ),
    (
        "basketball.svg",
        "image/svg+xml",
        include_str!("../static/basketball.svg"),
    ),
    (
        "briefcase.svg",
        "image/svg+xml",
        include_str!("../static/briefcase.svg"),
    ),
    (
        "camera.svg",
        "image/svg+xml",
        include_str!("../static/camera.svg"),
    ),
    (
        "football.svg",
        "image/svg+xml",
        include_str!("../static/football.svg"),
    ),
];

async fn asset(Path(file): Path<String>, uri: Uri) -> Result<Response, AppError> {
    let (_, content_type, body) = ASSETS
        .iter()
        .find(|(name, _, _)| *name == file)
        .ok_or_else(|| AppError::NoPage(uri.path().to_owned()))?;
    Ok((
        [
            (header::CONTENT_TYPE, *content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        *body,
    )
        .into_response())
}

async fn not_found(uri: Uri) -> AppError {
    AppError::NoPage(uri.path().to_owned())
}

#[cfg(test)]
mod tests;
