//! Every route through `app().oneshot(…)`, without a socket.

use std::time::Duration;

use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

use crate::{app, state};

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn send(router: &axum::Router, request: Request<Body>) -> Reply {
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

fn get(path: &str, cookie: Option<&str>) -> Request<Body> {
    let mut request = Request::get(path);
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    request.body(Body::empty()).expect("a request")
}

fn post(body: &str, cookie: Option<&str>) -> Request<Body> {
    let mut request =
        Request::post("/").header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    request
        .body(Body::from(body.to_owned()))
        .expect("a request")
}

fn monolith() -> axum::Router {
    app(state(None, Duration::ZERO))
}

/// The visitor's session cookie (a new one when `cookie` is `None`) and the
/// CSRF token their page's forms carry, as a browser gets them.
async fn visit(router: &axum::Router, cookie: Option<&str>) -> (String, String) {
    let reply = send(router, get("/", cookie)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let cookie = match reply.headers.get(header::SET_COOKIE) {
        Some(set) => {
            let set = set.to_str().expect("ascii");
            assert!(
                set.contains("HttpOnly") && set.contains("SameSite=Lax"),
                "{set}"
            );
            set.split(';').next().expect("name=value").to_owned()
        }
        None => cookie.expect("a session already").to_owned(),
    };
    let token = reply
        .body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page's forms carry a csrf token")
        .to_owned();
    (cookie, token)
}

/// Posts a form as a browser would (with the page's token); returns the
/// session cookie to send next time.
async fn post_form(router: &axum::Router, body: &str, cookie: Option<&str>) -> String {
    let (cookie, token) = visit(router, cookie).await;
    let reply = send(router, post(&format!("csrf={token}&{body}"), Some(&cookie))).await;
    assert_eq!(
        reply.status,
        StatusCode::SEE_OTHER,
        "{body}: {}",
        reply.body
    );
    assert_eq!(reply.headers[header::LOCATION], "/");
    cookie
}

async fn page(router: &axum::Router, cookie: Option<&str>) -> String {
    let reply = send(router, get("/", cookie)).await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.body
}

#[tokio::test]
async fn the_shop_page_lists_the_catalog_in_id_order_with_prices() {
    let body = page(&monolith(), None).await;
    assert!(body.contains("Welcome to the Datawire Market!"));
    let positions: Vec<usize> = ["Basketball", "Briefcase", "Camera", "Football"]
        .iter()
        .map(|title| {
            body.find(&format!("<h2>{title}</h2>"))
                .unwrap_or_else(|| panic!("{title} shown"))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "sorted by id");
    for price in ["$19.99", "$49.99", "$99.99"] {
        assert!(body.contains(price), "{price}");
    }
    assert!(body.contains("Your Cart") && body.contains("Your cart is currently empty."));
    assert!(!body.contains("rating:"), "the monolith shows no ratings");
    assert!(body.contains("/static/camera.svg"));
}

#[tokio::test]
async fn add_remove_and_checkout_with_exact_totals() {
    let router = monolith();
    let cookie = post_form(&router, "addCart=camera", None).await;
    let body = page(&router, Some(&cookie)).await;
    assert!(body.contains("Item added successfully!"));
    assert!(body.contains("Total: $99.99"));
    // The message shows once.
    assert!(
        !page(&router, Some(&cookie))
            .await
            .contains("Item added successfully!")
    );

    post_form(&router, "addCart=basketball", Some(&cookie)).await;
    assert!(
        page(&router, Some(&cookie))
            .await
            .contains("Total: $119.98")
    );

    post_form(&router, "addCart=camera", Some(&cookie)).await;
    let body = page(&router, Some(&cookie)).await;
    assert!(
        body.contains("Item could not be added."),
        "an item is in the cart at most once"
    );
    assert!(body.contains("Total: $119.98"));

    post_form(&router, "removeCart=camera", Some(&cookie)).await;
    let body = page(&router, Some(&cookie)).await;
    assert!(body.contains("Item removed successfully!"));
    assert!(body.contains("Total: $19.99"));

    post_form(&router, "checkout=1", Some(&cookie)).await;
    let body = page(&router, Some(&cookie)).await;
    assert!(body.contains("Successfully checked out your items!"));
    assert!(body.contains("Your cart is currently empty."));
}

#[tokio::test]
async fn each_visitor_has_their_own_cart() {
    let router = monolith();
    let alice = post_form(&router, "addCart=camera", None).await;
    let bob = post_form(&router, "addCart=football", None).await;
    assert_ne!(alice, bob);
    let alice_page = page(&router, Some(&alice)).await;
    let bob_page = page(&router, Some(&bob)).await;
    assert!(alice_page.contains("Total: $99.99"));
    assert!(bob_page.contains("Total: $19.99"));
    assert!(
        page(&router, None)
            .await
            .contains("Your cart is currently empty.")
    );
}

#[tokio::test]
async fn a_forged_session_cookie_gets_no_cart() {
    let router = monolith();
    let cookie = post_form(&router, "addCart=camera", None).await;
    // Same id, signature changed; and a made-up id without a signature.
    let (name, value) = cookie.split_once('=').unwrap();
    let mut forged = value.to_owned();
    forged.replace_range(0..1, if forged.starts_with('A') { "B" } else { "A" });
    for bad in [
        format!("{name}={forged}"),
        format!("{name}=00000000000000000000000000000001"),
    ] {
        let body = page(&router, Some(&bad)).await;
        assert!(body.contains("Your cart is currently empty."), "{bad}");
    }
    // The real cart is untouched by the forgeries.
    assert!(
        !page(&router, Some(&cookie))
            .await
            .contains("Your cart is currently empty.")
    );
}

#[tokio::test]
async fn a_cookie_replayed_to_another_shop_process_gets_no_cart_and_cannot_post() {
    // A restarted shop signs with a new key: yesterday's cookie, or one
    // captured from another replica, names no session there.
    let before = monolith();
    let cookie = post_form(&before, "addCart=camera", None).await;
    let (_, old_token) = visit(&before, Some(&cookie)).await;
    let after = monolith();
    let reply = send(&after, get("/", Some(&cookie))).await;
    assert!(reply.body.contains("Your cart is currently empty."));
    assert!(
        reply.headers.contains_key(header::SET_COOKIE),
        "a new session is offered"
    );
    // Its old page's form is refused too, and changes nothing.
    let refused = send(
        &after,
        post(&format!("csrf={old_token}&addCart=football"), Some(&cookie)),
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert!(
        page(&after, Some(&cookie))
            .await
            .contains("Your cart is currently empty.")
    );
    assert!(
        !page(&before, Some(&cookie))
            .await
            .contains("Your cart is currently empty."),
        "the cart is still there on the shop that made it"
    );
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_leaves_the_cart_alone() {
    let router = monolith();
    let cookie = post_form(&router, "addCart=camera", None).await;
    let (_, token) = visit(&router, Some(&cookie)).await;
    let (other_cookie, other_token) = visit(&router, None).await;
    let with = |body: &str| post(&format!("csrf={token}&{body}"), Some(&cookie));
    let big = format!("addCart={}", "x".repeat(10_000));
    let cases: Vec<(&str, Request<Body>, StatusCode, &str)> = vec![
        (
            "no csrf token",
            post("addCart=football", Some(&cookie)),
            StatusCode::FORBIDDEN,
            "csrf token is missing",
        ),
        (
            "a wrong csrf token",
            post("csrf=0123&addCart=football", Some(&cookie)),
            StatusCode::FORBIDDEN,
            "reload the page",
        ),
        (
            "another visitor's csrf token",
            post(
                &format!("csrf={other_token}&addCart=football"),
                Some(&cookie),
            ),
            StatusCode::FORBIDDEN,
            "not this session",
        ),
        (
            "a token without its session",
            post(&format!("csrf={token}&addCart=football"), None),
            StatusCode::FORBIDDEN,
            "csrf token",
        ),
        (
            "unknown item",
            with("addCart=piano"),
            StatusCode::BAD_REQUEST,
            "no such item: &#34;piano&#34;",
        ),
        (
            "unknown item to remove",
            with("removeCart=piano"),
            StatusCode::BAD_REQUEST,
            "the items are basketball, briefcase, camera, football",
        ),
        (
            "two actions",
            with("addCart=camera&checkout=1"),
            StatusCode::BAD_REQUEST,
            "the form has 2 fields besides csrf",
        ),
        (
            "no action",
            with(""),
            StatusCode::BAD_REQUEST,
            "the form has 0 fields besides csrf",
        ),
        (
            "unknown field",
            with("buy=camera"),
            StatusCode::BAD_REQUEST,
            "unknown form field &#34;buy&#34;",
        ),
        (
            "a stray percent sign",
            with("addCart=%ZZ"),
            StatusCode::BAD_REQUEST,
            "no such item: &#34;%ZZ&#34;",
        ),
        (
            "oversized body",
            with(&big),
            StatusCode::PAYLOAD_TOO_LARGE,
            "at most 4096 bytes",
        ),
        (
            "JSON instead of a form",
            Request::post("/")
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::COOKIE, &cookie)
                .body(Body::from(r#"{"addCart":"camera"}"#))
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "application/x-www-form-urlencoded",
        ),
    ];
    for (what, request, status, says) in cases {
        let reply = send(&router, request).await;
        assert_eq!(reply.status, status, "{what}: {}", reply.body);
        assert!(reply.body.contains(says), "{what}: {}", reply.body);
        assert!(!reply.body.contains("panicked"), "{what}");
    }
    let body = page(&router, Some(&cookie)).await;
    assert!(body.contains("Total: $99.99"), "the cart is unchanged");
    assert!(
        page(&router, Some(&other_cookie))
            .await
            .contains("Your cart is currently empty.")
    );
}

#[tokio::test]
async fn pages_carry_security_headers() {
    let reply = send(&monolith(), get("/", None)).await;
    let csp = reply.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(
        csp.contains("script-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(reply.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(reply.headers[header::X_FRAME_OPTIONS], "DENY");
    assert!(!reply.body.contains("<script"), "no script on the page");
}

#[tokio::test]
async fn the_original_json_routes_and_the_api() {
    let router = monolith();
    let reply = send(&router, get("/?json=1", None)).await;
    assert_eq!(
        reply.body,
        r#"{"thingIDs":["basketball","briefcase","camera","football"]}"#
    );

    let reply = send(&router, get("/thing/camera", None)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let thing: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(thing["title"], "Camera");
    assert_eq!(thing["price"], 9999);

    let reply = send(&router, get("/thing/piano", None)).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::NOT_FOUND, "no such Thing: piano")
    );

    let reply = send(&router, get("/api/things", None)).await;
    let things: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(things.as_array().unwrap().len(), 4);
    assert_eq!(things[2]["price"], "$99.99");
    assert!(things[2]["rating"].is_null());

    let reply = send(&router, get("/api/things/football", None)).await;
    let thing: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(thing["price_cents"], 1999);

    let reply = send(&router, get("/api/things/piano", None)).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.headers[header::CONTENT_TYPE], "application/json");
    assert!(
        reply.body.contains("no such item: \\\"piano\\\""),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn operator_pages_assets_and_unknown_paths() {
    let router = monolith();
    let reply = send(&router, get("/healthz", None)).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "ok\n")
    );
    let reply = send(&router, get("/status", None)).await;
    assert!(reply.body.contains("This is the monolith"));
    page(&router, None).await;
    let reply = send(&router, get("/metrics", None)).await;
    assert!(
        reply.body.contains("market_page_seconds_count 1"),
        "{}",
        reply.body
    );
    let reply = send(&router, get("/static/style.css", None)).await;
    assert_eq!(
        reply.headers[header::CONTENT_TYPE],
        "text/css; charset=utf-8"
    );
    let reply = send(&router, get("/static/camera.svg", None)).await;
    assert!(reply.body.starts_with("<svg"));
    for path in ["/static/passwords.txt", "/nope"] {
        let reply = send(&router, get(path, None)).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert!(
            reply.body.contains(&format!("there is no page at {path}")),
            "{}",
            reply.body
        );
    }
}

/// A ratings server in this process and a client that knows only it.
async fn ratings_backend() -> (
    ratings_client::RatingsClient,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), ratings_server::ServeError>>,
) {
    use futures::StreamExt as _;
    use registry_client::{Instance, WatchUpdate};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ratings_server::serve(
        ratings_server::RatingsService::new("ratings-1", ratings_server::Faults::default()),
        listener,
        async move {
            let _ = stopped.await;
        },
    ));
    let updates = futures::stream::iter([
        WatchUpdate::Upsert(Instance {
            id: "ratings-1".into(),
            address,
            metadata: Default::default(),
            ttl: Duration::from_secs(30),
        }),
        WatchUpdate::Synced(1),
    ])
    .chain(futures::stream::pending());
    let client =
        ratings_client::RatingsClient::new(updates, ratings_client::contract_policy()).unwrap();
    client.synced().await;
    (client, stop, server)
}

#[tokio::test]
async fn ratings_are_live_then_cached_with_their_age_when_the_service_is_gone() {
    let (client, stop, server) = ratings_backend().await;
    let router = app(state(Some(client), Duration::ZERO));

    let body = page(&router, None).await;
    for rating in [
        "rating: 2.1/5",
        "rating: 3.5/5",
        "rating: 4.5/5",
        "rating: 2.2/5",
    ] {
        assert!(body.contains(rating), "{rating}");
    }
    assert!(body.contains("(live)"));

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    let body = page(&router, None).await;
    assert!(
        body.contains("rating: 4.5/5"),
        "the cached rating is still shown"
    );
    assert!(body.contains("(as of 0 s ago)"), "{body}");
    let reply = send(&router, get("/api/things/camera", None)).await;
    let thing: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(thing["rating"]["live"], false);
    assert_eq!(thing["rating"]["tenths"], 45);
}

#[tokio::test]
async fn with_fresh_for_a_young_rating_is_served_without_asking() {
    let (client, stop, server) = ratings_backend().await;
    let router = app(state(Some(client.clone()), Duration::from_secs(10)));

    let body = page(&router, None).await;
    assert_eq!(body.matches("(live)").count(), 4, "the first page asks");
    let calls = client.endpoints()[0].breaker.calls;
    assert_eq!(calls, 4);

    // The service is gone, and nobody asks it: the page comes from the cache.
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    for _ in 0..3 {
        let body = page(&router, None).await;
        assert_eq!(body.matches("(as of 0 s ago)").count(), 4, "{body}");
    }
    assert_eq!(
        client.endpoints()[0].breaker.calls,
        calls,
        "no call while fresh"
    );
    let metrics = send(&router, get("/metrics", None)).await.body;
    assert!(
        metrics.contains(r#"market_ratings_cache_total{cache="Hit"} 12"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"market_ratings_cache_total{cache="Miss"} 4"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_stale_rating_is_served_at_once_and_refreshed_once_in_the_background() {
    let (client, stop, server) = ratings_backend().await;
    let fresh_for = Duration::from_secs(1);
    let router = app(state(Some(client.clone()), fresh_for));
    page(&router, None).await;
    let calls = || client.endpoints()[0].breaker.calls;
    assert_eq!(calls(), 4);

    // Let the ratings age past `fresh_for`: there is no event to wait for.
    tokio::time::sleep(fresh_for + Duration::from_millis(100)).await;
    let pages = futures::future::join_all((0..5).map(|_| page(&router, None))).await;
    for body in &pages {
        assert_eq!(
            body.matches("rating: ").count(),
            4,
            "stale ratings are served at once"
        );
        assert_eq!(body.matches("(live)").count(), 0);
    }
    // One refresh per item, however many pages saw it stale.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while calls() < 8 {
        assert!(tokio::time::Instant::now() < deadline, "the refreshes ran");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    page(&router, None).await;
    assert_eq!(
        calls(),
        8,
        "the refreshed values are fresh again: no more calls"
    );

    // A failed refresh keeps the last good value.
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    tokio::time::sleep(fresh_for + Duration::from_millis(100)).await;
    for _ in 0..3 {
        let body = page(&router, None).await;
        assert!(body.contains("rating: 4.5/5"), "{body}");
    }
}
