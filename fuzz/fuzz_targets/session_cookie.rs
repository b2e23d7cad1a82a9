//! Forged and garbled session cookies, against the shop's real `Router`.
//!
//! Two visitors get genuine sessions (one with an item in its cart). Each
//! input then sends `GET /` with `Cookie` headers built from pieces: the
//! genuine cookies, copies of them with bytes changed or cut, a genuine
//! signature in front of another id, values signed with the server's key or
//! with another key, cookies of other names, and arbitrary text.
//!
//! The page tells which session served it (by its CSRF token). Checked:
//! - no reply is a server error or shows internal error text;
//! - a page served from an existing session was asked for with that
//!   session's genuine cookie value somewhere in the headers (after the
//!   percent-decoding a cookie parser may do), or with a value the server's
//!   own key signed that names that session's id; anything else gets a fresh
//!   session: a new cookie and an empty cart.

#![no_main]

use arbitrary::Arbitrary;
use axum::{
    http::{Request, StatusCode, header},
    response::IntoResponse as _,
};
use axum_extra::extract::{
    SignedCookieJar,
    cookie::{Cookie, Key},
};
use libfuzzer_sys::fuzz_target;
use market_fuzz::{COOKIE, key, percent_decode, runtime, send, shop};

/// At most this many `Cookie` headers, of at most this many pieces each.
const MAX_HEADERS: usize = 3;
const MAX_PIECES: usize = 6;

#[derive(Debug, Arbitrary)]
enum Piece {
    /// A visitor's genuine `market_session=<value>`.
    Genuine(u8),
    /// A genuine cookie with bytes of its value replaced.
    Changed {
        of: u8,
        edits: Vec<(u8, u8)>,
    },
    /// A genuine cookie cut short.
    Cut {
        of: u8,
        len: u8,
    },
    /// One visitor's signature in front of another's id, or a made-up id.
    Spliced {
        signature_of: u8,
        id: Option<u128>,
    },
    /// A value signed with the server's own key.
    Signed(String),
    /// A value signed with another key.
    OtherKey(String),
    /// A cookie of any name.
    Named {
        name: String,
        value: String,
    },
    Raw(String),
}

/// A genuine session, as the harness knows it.
struct Genuine {
    /// Its cookie's value (signature and id), percent-encoded as the
    /// `Set-Cookie` header carries it.
    value: String,
    /// Its id, as the cookie names it.
    id: u128,
    csrf: String,
}

fuzz_target!(|headers: Vec<Vec<Piece>>| {
    runtime().block_on(async {
        let shop = shop();
        let mut genuine = Vec::new();
        for add in [true, false] {
            let reply = send(&shop, get(&[])).await;
            let pair = reply.set_cookie().expect("a new session");
            let value = pair.split_once('=').expect("name=value").1.to_owned();
            let csrf = reply.csrf().expect("a token");
            if add {
                let request = Request::post("/")
                    .header(header::COOKIE, &pair)
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(format!("csrf={csrf}&addCart=camera").into_bytes())
                    .expect("a request");
                assert_eq!(send(&shop, request).await.status, StatusCode::SEE_OTHER);
            }
            // The signed value is the signature (base64) followed by the id.
            let id = value
                .get(value.len().saturating_sub(32)..)
                .and_then(|hex| u128::from_str_radix(hex, 16).ok())
                .expect("a signed hex id");
            genuine.push(Genuine { value, id, csrf });
        }

        let mut signed_ids = Vec::new();
        let mut sent = Vec::new();
        for pieces in headers.into_iter().take(MAX_HEADERS) {
            let header: Vec<String> = pieces
                .into_iter()
                .take(MAX_PIECES)
                .filter_map(|piece| piece_text(piece, &genuine, &mut signed_ids))
                .collect();
            sent.push(header.join("; "));
        }
        if sent
            .iter()
            .any(|h| axum::http::HeaderValue::from_str(h).is_err())
        {
            return;
        }

        let reply = send(&shop, get(&sent)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let csrf = reply.csrf().expect("a token");
        match genuine.iter().find(|g| g.csrf == csrf) {
            Some(session) => {
                assert_eq!(
                    reply.set_cookie(),
                    None,
                    "an existing session got a new cookie"
                );
                let decoded: Vec<Vec<u8>> = sent
                    .iter()
                    .map(|h| percent_decode(h.as_bytes(), false))
                    .collect();
                let value = percent_decode(session.value.as_bytes(), false);
                let presented = decoded
                    .iter()
                    .any(|h| h.windows(value.len()).any(|w| w == value));
                assert!(
                    presented || signed_ids.contains(&session.id),
                    "a session was served to a cookie that is not its own: {sent:?}"
                );
            }
            None => {
                let fresh = reply.set_cookie().expect("a fresh session sets its cookie");
                assert!(
                    genuine.iter().all(|g| !fresh.ends_with(&g.value)),
                    "a fresh session reused a cookie"
                );
                assert!(reply.cart().is_empty(), "a fresh session has items");
            }
        }
    });
});

/// The text of one piece of a `Cookie` header; `None` for a piece that
/// cannot be made.
fn piece_text(piece: Piece, genuine: &[Genuine], signed_ids: &mut Vec<u128>) -> Option<String> {
    let of = |i: u8| &genuine[usize::from(i) % genuine.len()];
    Some(match piece {
        Piece::Genuine(i) => format!("{COOKIE}={}", of(i).value),
        Piece::Changed { of: i, edits } => {
            let mut bytes = of(i).value.clone().into_bytes();
            for (at, byte) in edits {
                let at = usize::from(at) % bytes.len();
                bytes[at] = byte;
            }
            format!("{COOKIE}={}", String::from_utf8(bytes).ok()?)
        }
        Piece::Cut { of: i, len } => {
            let value = &of(i).value;
            format!("{COOKIE}={}", value.get(..usize::from(len) % value.len())?)
        }
        Piece::Spliced { signature_of, id } => {
            let value = &of(signature_of).value;
            let signature = &value[..value.len() - 32];
            let id = id.unwrap_or_else(|| of(signature_of.wrapping_add(1)).id);
            format!("{COOKIE}={signature}{id:032x}")
        }
        Piece::Signed(value) => {
            if let Ok(id) = u128::from_str_radix(&value, 16) {
                signed_ids.push(id);
            }
            sign(&key(), &value)?
        }
        Piece::OtherKey(value) => sign(&Key::from(&[9; 64]), &value)?,
        Piece::Named { name, value } => format!("{name}={value}"),
        Piece::Raw(text) => text,
    })
}

/// `market_session=<value signed with key>`, as a `Set-Cookie` would carry it.
fn sign(key: &Key, value: &str) -> Option<String> {
    let jar = SignedCookieJar::new(key.clone()).add(Cookie::new(COOKIE, value.to_owned()));
    let response = (jar, ()).into_response();
    let set = response.headers().get(header::SET_COOKIE)?.to_str().ok()?;
    Some(set.split(';').next()?.to_owned())
}

fn get(cookies: &[String]) -> Request<Vec<u8>> {
    let mut request = Request::get("/");
    for cookie in cookies {
        request = request.header(header::COOKIE, cookie.as_str());
    }
    request.body(Vec::new()).expect("a request")
}
