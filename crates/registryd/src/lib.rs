//! `registryd`: the registry daemon that replaces the original's hosted
//! discovery service.
//!
//! A map of the crate:
//!
//! - [`model`]: the domain types (service names, addresses, TTLs, instances,
//!   changes), validated when built from untrusted input;
//! - [`auth`]: tokens, their hashes and who holds them;
//! - [`store`]: the [`Store`] trait and the embedded [`MemoryStore`];
//! - `api`: the gRPC service, which authenticates, validates and authorizes
//!   each call before the store sees it;
//! - [`serve`]: the server on a listener, with health and reflection;
//! - [`admin_token`]: the admin token's file in the data dir;
//! - [`xds`] (feature `xds`): the Aggregated Discovery Service for
//!   proxyless gRPC clients, on a listener of its own.
//!
//! [`cli`] is the command line (`src/main.rs` only calls it; the `market` demo
//! runs it too).

pub mod admin_token;
mod api;
pub mod auth;
pub mod cli;
pub mod model;
mod server;
pub mod store;
#[cfg(feature = "xds")]
pub mod xds;

pub use crate::{
    api::RegistryApi,
    server::{ServeConfig, ServeError, serve},
    store::{MemoryStore, MemoryStoreConfig, Store},
};

#[cfg(feature = "xds")]
pub use crate::server::serve_with_xds;
