//! The ratings the page shows: asked of the ratings service for every page,
//! all four at once, with the last good answer kept as a fallback.
//!
//! With `fresh_for` zero (the default, as in the original) every render asks,
//! and the cache is used only when a lookup fails or misses the deadline.
//! With `fresh_for` above zero, a value younger than that is served as it is;
//! an older one is served at once while one background refresh runs (callers
//! asking for the same item meanwhile do not start another), and a failed
//! refresh leaves the last good value in place.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use ratings_client::{Rating, RatingsClient};
use tokio::time::Instant;

use crate::metrics::{Lookup, Metrics};

/// A rating with when it was fetched.
#[derive(Debug, Clone)]
pub struct Cached {
    /// The rating.
    pub rating: Rating,
    /// When the ratings service gave it.
    pub fetched_at: Instant,
}

/// What the page shows for one item.
#[derive(Debug, Clone)]
pub enum Shown {
    /// Asked just now.
    Live(Rating),
    /// From the cache, this old.
    Cached(Rating, Duration),
    /// Never known.
    Unknown,
}

impl Shown {
    /// The rating, if any.
    pub fn rating(&self) -> Option<&Rating> {
        match self {
            Shown::Live(rating) | Shown::Cached(rating, _) => Some(rating),
            Shown::Unknown => None,
        }
    }

    /// How old the rating is, if it came from the cache.
    pub fn age(&self) -> Option<Duration> {
        match self {
            Shown::Cached(_, age) => Some(*age),
            _ => None,
        }
    }

    /// "live", "as of 12 s ago", "as of 2 min ago", or "" when unknown.
    pub fn freshness(&self) -> String {
        match self {
            Shown::Live(_) => "live".to_owned(),
            Shown::Cached(_, age) => format!("as of {} ago", human_age(*age)),
            Shown::Unknown => String::new(),
        }
    }
}

/// "12 s", "2 min", "3 h".
pub fn human_age(age: Duration) -> String {
    let secs = age.as_secs();
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min", secs / 60),
        _ => format!("{} h", secs / 3600),
    }
}

/// The ratings source of the page: the client (none for the monolith) and
/// the last good answers.
#[derive(Debug)]
pub struct Ratings {
    client: Option<RatingsClient>,
    cache: moka::sync::Cache<String, Cached>,
    fresh_for: Duration,
    /// Items with a background refresh under way.
    refreshing: Mutex<HashSet<String>>,
    metrics: Arc<Metrics>,
}

impl Ratings {
    /// A source over `client`; `None` is the monolith, which has no ratings.
    pub fn new(
        client: Option<RatingsClient>,
        fresh_for: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            client,
            cache: moka::sync::Cache::builder().max_capacity(10_000).build(),
            fresh_for,
            refreshing: Mutex::new(HashSet::new()),
            metrics,
        })
    }

    /// The client, if this is not the monolith.
    pub fn client(&self) -> Option<&RatingsClient> {
        self.client.as_ref()
    }

    /// The ratings of `ids`, all asked at once.
    pub async fn for_page(self: &Arc<Self>, ids: &[&'static str]) -> Vec<Shown> {
        if self.client.is_none() {
            return ids.iter().map(|_| Shown::Unknown).collect();
        }
        let start = Instant::now();
        let shown = futures::future::join_all(ids.iter().map(|id| self.lookup(id))).await;
        tracing::info!(
            elapsed_ms = start.elapsed().as_millis() as u64,
            "WAITED {}ms",
            start.elapsed().as_millis()
        );
        shown
    }

    /// The cache's entries with their age, sorted by id.
    pub fn cached(&self) -> Vec<(String, Cached)> {
        let mut entries: Vec<(String, Cached)> = self
            .cache
            .iter()
            .map(|(id, c)| ((*id).clone(), c))
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries
    }

    /// One item's rating, as the policy above says.
    pub async fn lookup(self: &Arc<Self>, id: &str) -> Shown {
        let cached = self.cache.get(id);
        if !self.fresh_for.is_zero()
            && let Some(cached) = &cached
        {
            let age = cached.fetched_at.elapsed();
            if age < self.fresh_for {
                self.metrics.lookup(Lookup::Hit);
                return Shown::Cached(cached.rating.clone(), age);
            }
            self.metrics.lookup(Lookup::Stale);
            self.refresh_in_background(id);
            return Shown::Cached(cached.rating.clone(), age);
        }
        self.metrics.lookup(Lookup::Miss);
        match self.ask(id).await {
            Some(rating) => Shown::Live(rating),
            None => match cached {
                Some(cached) => {
                    self.metrics.fallback();
                    Shown::Cached(cached.rating, cached.fetched_at.elapsed())
                }
                None => Shown::Unknown,
            },
        }
    }

    /// Asks the ratings service; keeps a good answer.
    async fn ask(&self, id: &str) -> Option<Rating> {
        let client = self.client.as_ref()?;
        tracing::info!(thing = %id, "ASK for {id}");
        match client.get(id).await {
            Ok(rating) => {
                tracing::info!(thing = %id, rating = %rating, served_by = %rating.served_by, "GOT {id}: {}", rating.stars());
                self.metrics.call(ratings_client::SERVICE, true);
                self.cache.insert(
                    id.to_owned(),
                    Cached {
                        rating: rating.clone(),
                        fetched_at: Instant::now(),
                    },
                );
                Some(rating)
            }
            Err(error) => {
                tracing::warn!(thing = %id, %error, "BAD {id}: {error}");
                self.metrics.call(ratings_client::SERVICE, false);
                None
            }
        }
    }

    fn refresh_in_background(self: &Arc<Self>, id: &str) {
        let first = self
            .refreshing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(id.to_owned());
        if !first {
            return;
        }
        let guard = Refreshing {
            ratings: self.clone(),
            id: id.to_owned(),
        };
        tokio::spawn(async move {
            guard.ratings.ask(&guard.id).await;
        });
    }
}

/// Marks an item as being refreshed; the mark goes when the refresh ends,
/// however it ends (a panic or an aborted task included).
struct Refreshing {
    ratings: Arc<Ratings>,
    id: String,
}

impl Drop for Refreshing {
    fn drop(&mut self) {
        self.ratings
            .refreshing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&self.id);
    }
}
