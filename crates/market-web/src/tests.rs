//! The server's limits: each one, passed, gets its clear answer rather than
//! a hang or unbounded memory.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode},
    routing::get,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::{Notify, Semaphore},
};
use tower::ServiceExt as _;

use super::*;

fn request() -> Request<Body> {
    Request::get("/").body(Body::empty()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_request_that_takes_too_long_gets_408() {
    let slow = Router::new().route(
        "/",
        get(|| async {
            tokio::time::sleep(REQUEST_TIMEOUT * 6).await;
            "too late"
        }),
    );
    let started = tokio::time::Instant::now();
    let response = limited(slow).oneshot(request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(started.elapsed(), REQUEST_TIMEOUT);
}

#[tokio::test]
async fn requests_beyond_the_concurrency_limit_get_503_at_once() {
    let gate = Arc::new(Semaphore::new(0));
    let inside = Arc::new(AtomicUsize::new(0));
    let entered = Arc::new(Notify::new());
    let app = {
        let (gate, inside, entered) = (gate.clone(), inside.clone(), entered.clone());
        Router::new().route(
            "/",
            get(move || async move {
                inside.fetch_add(1, Ordering::SeqCst);
                entered.notify_one();
                gate.acquire().await.unwrap().forget();
                "served"
            }),
        )
    };
    let service = limited(app);

    // Every slot taken by a request waiting inside the app.
    let mut running = tokio::task::JoinSet::new();
    for _ in 0..MAX_CONCURRENT_REQUESTS {
        running.spawn(service.clone().oneshot(request()));
    }
    while inside.load(Ordering::SeqCst) < MAX_CONCURRENT_REQUESTS {
        entered.notified().await;
    }

    // Answered at once: a request that waited for a slot would time out.
    let refused = tokio::time::timeout(Duration::from_secs(5), service.clone().oneshot(request()))
        .await
        .expect("refused at once, not queued")
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body = axum::body::to_bytes(Body::new(refused.into_body()), 1024)
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&body).contains("too many requests at once"),
        "{body:?}"
    );

    // Once they finish, every waiting one was served and slots are free.
    gate.add_permits(MAX_CONCURRENT_REQUESTS + 1);
    while let Some(done) = running.join_next().await {
        assert_eq!(done.unwrap().unwrap().status(), StatusCode::OK);
    }
    let again = service.oneshot(request()).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
}

/// The monolith on a loopback port; it stops when the sender is dropped.
async fn monolith_server() -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(state(None, Duration::ZERO), listener, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// Sends `head` and reads until the server closes: the status line.
async fn exchange(addr: SocketAddr, head: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    String::from_utf8_lossy(&response)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn oversized_request_heads_get_431() {
    let (addr, _stop) = monolith_server().await;
    let fine = "GET / HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n";
    assert_eq!(exchange(addr, fine).await, "HTTP/1.1 200 OK");

    let long = format!(
        "GET / HTTP/1.1\r\nHost: shop\r\nX-Long: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(MAX_HEADER_BYTES)
    );
    assert_eq!(
        exchange(addr, &long).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );

    let many: String = (0..=MAX_HEADERS)
        .map(|i| format!("X-Header-{i}: {i}\r\n"))
        .collect();
    let many = format!("GET / HTTP/1.1\r\nHost: shop\r\n{many}Connection: close\r\n\r\n");
    assert_eq!(
        exchange(addr, &many).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_finishes_its_request_head_is_disconnected() {
    let (addr, _stop) = monolith_server().await;
    let started = tokio::time::Instant::now();
    // The head never ends: the server closes the connection when its time
    // to read it is over, instead of holding it forever.
    let status = exchange(addr, "GET / HTTP/1.1\r\nHost: shop\r\n").await;
    assert!(
        started.elapsed() >= HEADER_READ_TIMEOUT,
        "closed after {:?}",
        started.elapsed()
    );
    assert!(
        status.is_empty() || status.starts_with("HTTP/1.1 408"),
        "{status:?}"
    );
}
