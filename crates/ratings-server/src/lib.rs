//! ratings-server
