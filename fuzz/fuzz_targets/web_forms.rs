//! The shop's form handling, from arbitrary requests, against a model of the
//! carts.
//!
//! A few visitors get their sessions and CSRF tokens as a browser does (a
//! `GET /`); then arbitrary steps post forms to `/` (arbitrary fields or raw
//! bodies, content types, cookies and tokens: their own, another visitor's,
//! none, or made up) and fetch pages with arbitrary paths and queries, all
//! through the real `Router` in memory.
//!
//! Checked after every step:
//! - no reply is a server error or shows internal error text, and every reply
//!   carries the security headers;
//! - every visitor's cart, as their page shows it, is what the model says: a
//!   post changes a cart only when it was accepted (303), sent with that
//!   visitor's cookie and with that visitor's token in its body, and then only
//!   as one add, remove or checkout does;
//! - a well-formed form (the form content type, the visitor's own cookie and
//!   token, one action naming a catalog item) is accepted, with exactly the
//!   change it asks for.

#![no_main]

use std::collections::BTreeSet;

use arbitrary::Arbitrary;
use axum::http::{Request, StatusCode, header};
use libfuzzer_sys::fuzz_target;
use market_fuzz::{Reply, form_encode, percent_decode, runtime, send, shop};

/// How many visitors a run has.
const VISITORS: usize = 3;

/// At most this many steps per input.
const MAX_STEPS: usize = 24;

const ITEMS: &[&str] = &["basketball", "briefcase", "camera", "football"];

#[derive(Debug, Arbitrary)]
enum Step {
    Post {
        cookie: CookieChoice,
        content_type: ContentType,
        body: PostBody,
    },
    Get {
        cookie: CookieChoice,
        path: PathChoice,
        query: Option<String>,
    },
}

/// The `Cookie` header sent.
#[derive(Debug, Arbitrary)]
enum CookieChoice {
    None,
    /// A visitor's own, as their browser sends it.
    Visitor(u8),
    /// Two visitors' session cookies in one header.
    Both(u8, u8),
    /// A visitor's, with one byte changed.
    Garbled {
        visitor: u8,
        at: u8,
        byte: u8,
    },
    Raw(String),
}

#[derive(Debug, Arbitrary)]
enum ContentType {
    Form,
    FormUtf8,
    Json,
    Missing,
    Raw(String),
}

#[derive(Debug, Arbitrary)]
enum PostBody {
    /// Fields, encoded as a browser would.
    Fields(Vec<(Field, FieldValue)>),
    /// Bytes as they are.
    Raw(Vec<u8>),
    /// A body over the size limit.
    Huge { fill: u8, extra: u16 },
}

#[derive(Debug, Arbitrary)]
enum Field {
    Csrf,
    AddCart,
    RemoveCart,
    Checkout,
    Other(String),
}

#[derive(Debug, Arbitrary)]
enum FieldValue {
    Item(u8),
    /// The posting visitor's own token (the cookie's visitor, or the first).
    OwnToken,
    /// Another visitor's token.
    Token(u8),
    Text(String),
}

#[derive(Debug, Arbitrary)]
enum PathChoice {
    Root,
    Thing(String),
    ApiThing(String),
    Static(String),
    Raw(String),
}

/// One visitor, as the harness knows them.
struct Visitor {
    /// `market_session=...`, as the shop set it.
    cookie: String,
    csrf: String,
    /// What the model says is in their cart.
    cart: BTreeSet<String>,
}

fuzz_target!(|steps: Vec<Step>| {
    runtime().block_on(async {
        let shop = shop();
        let mut visitors = Vec::new();
        for _ in 0..VISITORS {
            let reply = send(&shop, get("/", None)).await;
            assert_eq!(reply.status, StatusCode::OK);
            visitors.push(Visitor {
                cookie: reply.set_cookie().expect("a new session"),
                csrf: reply.csrf().expect("a token"),
                cart: BTreeSet::new(),
            });
        }
        for step in steps.into_iter().take(MAX_STEPS) {
            match step {
                Step::Post {
                    cookie,
                    content_type,
                    body,
                } => post(&shop, &mut visitors, cookie, content_type, body).await,
                Step::Get {
                    cookie,
                    path,
                    query,
                } => {
                    let Some(cookie) = cookie_header(&visitors, &cookie) else {
                        continue;
                    };
                    let mut uri = match path {
                        PathChoice::Root => "/".to_owned(),
                        PathChoice::Thing(id) => format!("/thing/{id}"),
                        PathChoice::ApiThing(id) => format!("/api/things/{id}"),
                        PathChoice::Static(file) => format!("/static/{file}"),
                        PathChoice::Raw(path) => path,
                    };
                    if let Some(query) = query {
                        uri = format!("{uri}?{query}");
                    }
                    let Ok(request) = Request::get(uri).header_opt(cookie).body(Vec::new()) else {
                        continue;
                    };
                    send(&shop, request).await;
                }
            }
            // Every cart is as the model says.
            for visitor in &visitors {
                let reply = send(&shop, get("/", Some(&visitor.cookie))).await;
                assert_eq!(reply.status, StatusCode::OK);
                assert_eq!(reply.set_cookie(), None, "a visitor lost their session");
                assert_eq!(reply.csrf().as_ref(), Some(&visitor.csrf));
                assert_eq!(reply.cart(), visitor.cart, "a cart changed unexpectedly");
            }
        }
    });
});

async fn post(
    shop: &axum::Router,
    visitors: &mut [Visitor],
    cookie: CookieChoice,
    content_type: ContentType,
    body: PostBody,
) {
    // Whose session the cookie is, when it is exactly one visitor's own.
    let owner = match cookie {
        CookieChoice::Visitor(i) => Some(usize::from(i) % VISITORS),
        _ => None,
    };
    let Some(cookie_value) = cookie_header(visitors, &cookie) else {
        return;
    };
    let own_token = &visitors[owner.unwrap_or(0)].csrf;
    let mut well_formed = None;
    let bytes = match body {
        PostBody::Fields(fields) => {
            let fields: Vec<(String, String)> = fields
                .into_iter()
                .map(|(name, value)| {
                    let name = match name {
                        Field::Csrf => "csrf".to_owned(),
                        Field::AddCart => "addCart".to_owned(),
                        Field::RemoveCart => "removeCart".to_owned(),
                        Field::Checkout => "checkout".to_owned(),
                        Field::Other(name) => name,
                    };
                    let value = match value {
                        FieldValue::Item(i) => ITEMS[usize::from(i) % ITEMS.len()].to_owned(),
                        FieldValue::OwnToken => own_token.clone(),
                        FieldValue::Token(i) => visitors[usize::from(i) % VISITORS].csrf.clone(),
                        FieldValue::Text(text) => text,
                    };
                    (name, value)
                })
                .collect();
            well_formed = well_formed_action(&fields, own_token);
            fields
                .iter()
                .map(|(name, value)| format!("{}={}", form_encode(name), form_encode(value)))
                .collect::<Vec<_>>()
                .join("&")
                .into_bytes()
        }
        PostBody::Raw(bytes) => bytes,
        PostBody::Huge { fill, extra } => {
            let mut bytes = format!("csrf={own_token}&addCart=camera&x=").into_bytes();
            bytes.resize(market_web::app::MAX_BODY + 1 + usize::from(extra), fill);
            bytes
        }
    };
    let content_type = match content_type {
        ContentType::Form => Some("application/x-www-form-urlencoded".to_owned()),
        ContentType::FormUtf8 => {
            Some("application/x-www-form-urlencoded; charset=utf-8".to_owned())
        }
        ContentType::Json => Some("application/json".to_owned()),
        ContentType::Missing => None,
        ContentType::Raw(text) => Some(text),
    };
    let exact_form = content_type.as_deref() == Some("application/x-www-form-urlencoded");
    let mut request = Request::post("/").header_opt(cookie_value.clone());
    if let Some(content_type) = &content_type {
        request = request.header(header::CONTENT_TYPE, content_type.as_str());
    }
    let Ok(request) = request.body(bytes.clone()) else {
        return;
    };
    let reply: Reply = send(shop, request).await;
    if bytes.len() > market_web::app::MAX_BODY {
        // Refused whole (413, or 400 for a body that is no form at all):
        // nothing of it may have been applied.
        assert!(reply.status.is_client_error(), "{}", reply.status);
        return;
    }

    if let (Some(owner), true, Some(action)) = (owner, exact_form, &well_formed) {
        assert_eq!(
            reply.status,
            StatusCode::SEE_OTHER,
            "a well-formed form was refused: {}",
            reply.body
        );
        apply(&mut visitors[owner].cart, action);
        return;
    }
    if reply.status != StatusCode::SEE_OTHER {
        assert!(
            reply.status.is_client_error(),
            "a refused form got {}",
            reply.status
        );
        return;
    }
    // Accepted without the harness predicting it: find whose cart changed,
    // and check that the post had every right to change it.
    let decoded = percent_decode(&bytes, true);
    let cookies = percent_decode(
        cookie_value.as_deref().unwrap_or_default().as_bytes(),
        false,
    );
    for visitor in visitors.iter_mut() {
        let reply = send(shop, get("/", Some(&visitor.cookie))).await;
        let cart = reply.cart();
        if cart == visitor.cart {
            continue;
        }
        assert!(
            contains(&decoded, visitor.csrf.as_bytes()),
            "a post without the session's token changed its cart: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        // The value as a cookie parser reads it (`Set-Cookie` percent-encodes).
        let value = percent_decode(
            visitor
                .cookie
                .split_once('=')
                .expect("name=value")
                .1
                .as_bytes(),
            false,
        );
        assert!(
            contains(&cookies, &value),
            "a post without the session's cookie changed its cart: {cookie_value:?}"
        );
        let one_change = ITEMS.iter().any(|item| {
            let mut added = visitor.cart.clone();
            added.insert((*item).to_owned());
            let mut removed = visitor.cart.clone();
            removed.remove(*item);
            cart == added || cart == removed
        }) || cart.is_empty();
        assert!(one_change, "a post made more than one change");
        visitor.cart = cart;
    }
}

/// The action of a form that has the visitor's token once and exactly one
/// action naming a catalog item (or checkout), and nothing else.
fn well_formed_action(fields: &[(String, String)], own_token: &str) -> Option<(String, String)> {
    let (tokens, rest): (Vec<_>, Vec<_>) = fields.iter().partition(|(name, _)| name == "csrf");
    let [(_, token)] = tokens.as_slice() else {
        return None;
    };
    let [(name, value)] = rest.as_slice() else {
        return None;
    };
    let known = ITEMS.contains(&value.as_str());
    let ok = token == own_token
        && match name.as_str() {
            "addCart" | "removeCart" => known,
            "checkout" => true,
            _ => false,
        };
    ok.then(|| (name.clone(), value.clone()))
}

fn apply(cart: &mut BTreeSet<String>, (name, value): &(String, String)) {
    match name.as_str() {
        "addCart" => {
            cart.insert(value.clone());
        }
        "removeCart" => {
            cart.remove(value);
        }
        _ => cart.clear(),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The `Cookie` header for a choice; `None` when the choice cannot be sent
/// as a header, `Some(None)` for no header.
fn cookie_header(visitors: &[Visitor], choice: &CookieChoice) -> Option<Option<String>> {
    let visitor = |i: &u8| &visitors[usize::from(*i) % visitors.len()].cookie;
    let value = match choice {
        CookieChoice::None => return Some(None),
        CookieChoice::Visitor(i) => visitor(i).clone(),
        CookieChoice::Both(a, b) => format!("{}; {}", visitor(a), visitor(b)),
        CookieChoice::Garbled {
            visitor: i,
            at,
            byte,
        } => {
            let mut bytes = visitor(i).clone().into_bytes();
            let at = usize::from(*at) % bytes.len();
            bytes[at] = *byte;
            String::from_utf8(bytes).ok()?
        }
        CookieChoice::Raw(text) => text.clone(),
    };
    axum::http::HeaderValue::from_str(&value).ok()?;
    Some(Some(value))
}

fn get(uri: &str, cookie: Option<&str>) -> Request<Vec<u8>> {
    Request::get(uri)
        .header_opt(cookie.map(str::to_owned))
        .body(Vec::new())
        .expect("a request")
}

/// Adds a `Cookie` header when there is one.
trait HeaderOpt {
    fn header_opt(self, cookie: Option<String>) -> Self;
}

impl HeaderOpt for axum::http::request::Builder {
    fn header_opt(self, cookie: Option<String>) -> Self {
        match cookie {
            Some(cookie) => self.header(header::COOKIE, cookie),
            None => self,
        }
    }
}
