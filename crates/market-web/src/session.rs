//! Visitors' sessions: a signed cookie names a session kept in memory.
//!
//! The cookie holds only a random id, signed with the server's key, so a
//! visitor can neither forge another's id nor make one up that the server
//! would accept. Sessions idle for an hour are forgotten; the store is
//! bounded, so a flood of new visitors cannot exhaust memory.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum_extra::extract::cookie::{Cookie, SameSite, SignedCookieJar};

use crate::cart::{Cart, Message};

/// The session cookie's name.
pub(crate) const COOKIE: &str = "market_session";

/// What the shop remembers of one visitor.
#[derive(Debug)]
pub(crate) struct Session {
    /// Their cart.
    pub(crate) cart: Cart,
    /// The message to show on their next page, once.
    pub(crate) flash: Option<Message>,
    /// The token every form of theirs carries: a cross-site form cannot
    /// know it, so it cannot change their cart.
    pub(crate) csrf: String,
}

impl Session {
    fn new() -> Self {
        Self {
            cart: Cart::default(),
            flash: None,
            csrf: format!("{:032x}", rand::random::<u128>()),
        }
    }

    /// Whether a form's token is this session's, compared in constant time.
    pub(crate) fn csrf_matches(&self, given: &str) -> bool {
        use subtle::ConstantTimeEq as _;
        given.len() == self.csrf.len() && bool::from(given.as_bytes().ct_eq(self.csrf.as_bytes()))
    }
}

/// A session shared by the requests of one visitor.
pub(crate) type Shared = Arc<Mutex<Session>>;

/// Every live session, by id.
#[derive(Debug, Clone)]
pub(crate) struct Sessions {
    store: moka::sync::Cache<u128, Shared>,
}

impl Sessions {
    /// A store that forgets sessions idle for `idle` and keeps at most
    /// `capacity` of them.
    pub(crate) fn new(idle: Duration, capacity: u64) -> Self {
        Self {
            store: moka::sync::Cache::builder()
                .time_to_idle(idle)
                .max_capacity(capacity)
                .build(),
        }
    }

    /// The visitor's session, if their cookie names a live one.
    pub(crate) fn find(&self, jar: &SignedCookieJar) -> Option<Shared> {
        let id = jar.get(COOKIE)?;
        let id = u128::from_str_radix(id.value(), 16).ok()?;
        self.store.get(&id)
    }

    /// The visitor's session, or a new one with its cookie added to `jar`.
    pub(crate) fn find_or_create(&self, jar: SignedCookieJar) -> (SignedCookieJar, Shared) {
        if let Some(session) = self.find(&jar) {
            return (jar, session);
        }
        let id: u128 = rand::random();
        let session = Arc::new(Mutex::new(Session::new()));
        self.store.insert(id, session.clone());
        let cookie = Cookie::build((COOKIE, format!("{id:032x}")))
            .path("/")
            .http_only(true)
            .same_site(SameSite::Lax)
            .build();
        (jar.add(cookie), session)
    }
}

/// Locks a session; a panic elsewhere while it was locked leaves a cart that
/// is still a valid cart, so serving on is safe.
pub(crate) fn lock(session: &Shared) -> std::sync::MutexGuard<'_, Session> {
    session
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
