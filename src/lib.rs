//! The wire contract of the market: the gRPC types of the ratings service and of
//! the registry, generated at build time from the files under `proto/`.
//!
//! Everything that crosses a process boundary is defined here and nowhere else.
//! The daemons and libraries of the workspace convert these types into their own
//! domain types at their gRPC edges.

/// `market.ratings.v1`: the ratings service.
pub mod ratings {
    /// Version 1 of the ratings contract.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
        tonic::include_proto!("market.ratings.v1");
    }
}

/// `market.registry.v1`: the registry of services and their instances.
pub mod registry {
    /// Version 1 of the registry contract.
    pub mod v1 {
        #![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
        tonic::include_proto!("market.registry.v1");
    }
}

/// The encoded `FileDescriptorSet` of every `.proto` file, for gRPC server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("market_descriptor");
