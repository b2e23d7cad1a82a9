//! What the fuzz targets share: the shop built the way its tests build it,
//! a way to send it one request, and the checks every reply must pass.
//!
//! The targets themselves are under `fuzz_targets/`; `README.md` says what
//! each one checks and how to run it.

use std::{collections::BTreeSet, time::Duration};

use axum::{
    Router,
    body::Body,
    http::{HeaderMap, Request, StatusCode, header},
};
use axum_extra::extract::cookie::Key;
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

/// The session cookie's name, as the shop sets it.
pub const COOKIE: &str = "market_session";

/// The cookie-signing key of every run, so that a crash replays exactly.
pub fn key() -> Key {
    Key::from(&[7; 64])
}

/// The shop without ratings (the monolith), with [`key`] as its key.
pub fn shop() -> Router {
    let metrics = market_web::metrics::Metrics::new(None);
    let ratings = market_web::ratings::Ratings::new(None, Duration::ZERO, metrics.clone());
    market_web::app(market_web::AppState::new(ratings, metrics, key()))
}

/// A reply, read in full.
#[derive(Debug)]
pub struct Reply {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body, decoded lossily.
    pub body: String,
}

impl Reply {
    /// The session cookie the reply sets, as `name=value`.
    pub fn set_cookie(&self) -> Option<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.split(';').next())
            .find(|pair| pair.starts_with(&format!("{COOKIE}=")))
            .map(str::to_owned)
    }

    /// The CSRF token the page's forms carry.
    pub fn csrf(&self) -> Option<String> {
        let rest = self.body.split("name=\"csrf\" value=\"").nth(1)?;
        Some(rest.split('"').next()?.to_owned())
    }

    /// The ids of the items in the page's cart.
    pub fn cart(&self) -> BTreeSet<String> {
        self.body
            .split("<li><img src=\"/static/")
            .skip(1)
            .filter_map(|rest| rest.split(".svg\"").next())
            .map(str::to_owned)
            .collect()
    }
}

/// Sends one request to the shop and checks what every reply must satisfy:
/// no server error, the security headers, and no internal error text.
pub async fn send(shop: &Router, request: Request<Vec<u8>>) -> Reply {
    // What the request itself says, as the shop may quote it back.
    let mut sent = percent_decode(request.uri().to_string().as_bytes(), true);
    for value in request.headers().values() {
        sent.extend(percent_decode(value.as_bytes(), true));
    }
    sent.extend(percent_decode(request.body(), true));
    let response = shop
        .clone()
        .oneshot(request.map(Body::from))
        .await
        .expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("the body of an in-memory response")
        .to_bytes();
    let reply = Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    };
    check(&reply, &String::from_utf8_lossy(&sent));
    reply
}

/// Text that would mean an internal failure leaked into a reply.
const INTERNAL: &[&str] = &[
    "panicked",
    "internal error",
    "askama",
    "RUST_BACKTRACE",
    ".rs:",
];

fn check(reply: &Reply, sent: &str) {
    assert!(
        !reply.status.is_server_error(),
        "a server error: {} {}",
        reply.status,
        reply.body
    );
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        assert_eq!(
            reply.headers.get(&name).and_then(|v| v.to_str().ok()),
            Some(value),
            "{name} missing from a {} reply",
            reply.status
        );
    }
    assert!(
        reply.headers.contains_key(header::CONTENT_SECURITY_POLICY),
        "no CSP on a {} reply",
        reply.status
    );
    // Text the request carried may come back quoted in a refusal.
    for text in INTERNAL.iter().filter(|text| !sent.contains(*text)) {
        assert!(
            !reply.body.contains(text),
            "a {} reply shows internal text {text:?}: {}",
            reply.status,
            reply.body
        );
    }
    let html = reply
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    assert!(
        !(html && reply.body.to_ascii_lowercase().contains("<script")),
        "a page carries a script (unescaped input?): {}",
        reply.body
    );
}

/// Decodes `%XX` escapes (and `+` as a space when `plus` is set), leaving
/// malformed escapes as they are: the most a server could read into the bytes.
pub fn percent_decode(bytes: &[u8], plus: bool) -> Vec<u8> {
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(u8::try_from(hi * 16 + lo).expect("two hex digits"));
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Percent-encodes everything but unreserved characters, as a browser
/// encodes a form.
pub fn form_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'*') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A single-threaded runtime, as each input gets a fresh one.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode(b"a%41+b", true), b"aA b");
        assert_eq!(percent_decode(b"a%4", false), b"a%4");
        assert_eq!(percent_decode(b"%zz%", false), b"%zz%");
        assert_eq!(form_encode("a b&c"), "a%20b%26c");
    }
}
