//! The bootstrap file of a proxyless gRPC client (gRFC A27) that reads a
//! service from the registry's xDS server (`registryd --xds-listen`).
//!
//! A client in any language with the file's path in `GRPC_XDS_BOOTSTRAP`
//! dials `xds:///SERVICE`; its token travels in the node's metadata as
//! `REGISTRY_TOKEN`, which the registry checks as it checks `Resolve`'s.

use std::path::{Path, PathBuf};

/// Why a bootstrap cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// No token to read the service with.
    #[error(
        "the bootstrap needs the token the client reads {0} with (a consumer token that may read {0}; `registryctl create-consumer NAME --services {0}` makes one)"
    )]
    NoToken(String),
    /// The xDS server's address is not `HOST:PORT`.
    #[error("the xDS server {0} is not HOST:PORT (e.g. 127.0.0.1:7001)")]
    Address(String),
    /// An `https://` server without the certificates to trust it.
    #[error(
        "the xDS server {0} speaks TLS: give the TLS folder with the ca.crt that signed its certificate"
    )]
    NeedsTls(String),
    /// The TLS folder lacks a file, or cannot be read.
    #[error("{0}")]
    TlsDir(String),
}

/// A bootstrap for clients of `service` reading with `token` from the xDS
/// server at `server` (`HOST:PORT`, or `http://`/`https://HOST:PORT`), over
/// TLS with `tls.crt`, `tls.key` and `ca.crt` from `tls_dir` when given
/// (channel credentials as gRFC A65 gives them).
///
/// # Errors
///
/// When the token is missing, the address is not `HOST:PORT`, an `https://`
/// server has no TLS folder, or the folder lacks a file.
pub fn xds_bootstrap(
    service: &str,
    server: &str,
    token: Option<&str>,
    tls_dir: Option<&Path>,
) -> Result<serde_json::Value, BootstrapError> {
    use std::hash::{BuildHasher as _, Hasher as _};
    let token = token
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| BootstrapError::NoToken(service.to_owned()))?;
    let (https, address) = match server.split_once("://") {
        Some(("http", rest)) => (false, rest),
        Some(("https", rest)) => (true, rest),
        Some(_) => return Err(BootstrapError::Address(server.to_owned())),
        None => (false, server),
    };
    let address = address.trim_end_matches('/');
    if address
        .rsplit_once(':')
        .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
    {
        return Err(BootstrapError::Address(server.to_owned()));
    }
    let credentials = match tls_dir {
        None if https => return Err(BootstrapError::NeedsTls(server.to_owned())),
        None => serde_json::json!([{ "type": "insecure" }]),
        Some(dir) => {
            let dir = std::fs::canonicalize(dir).map_err(|e| {
                BootstrapError::TlsDir(format!("cannot find the TLS folder {}: {e}", dir.display()))
            })?;
            let file = |name: &str| -> Result<String, BootstrapError> {
                let path: PathBuf = dir.join(name);
                if !path.is_file() {
                    return Err(BootstrapError::TlsDir(format!(
                        "{} is missing; the TLS folder needs tls.crt, tls.key and ca.crt (PEM)",
                        path.display()
                    )));
                }
                path.into_os_string().into_string().map_err(|p| {
                    BootstrapError::TlsDir(format!("{} is not UTF-8", p.to_string_lossy()))
                })
            };
            serde_json::json!([{
                "type": "tls",
                "config": {
                    "ca_certificate_file": file("ca.crt")?,
                    "certificate_file": file("tls.crt")?,
                    "private_key_file": file("tls.key")?,
                },
            }])
        }
    };
    // gRPC needs a node id; a random suffix tells two clients apart in the
    // registry's log.
    let suffix = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    Ok(serde_json::json!({
        "xds_servers": [{
            "server_uri": address,
            "channel_creds": credentials,
            "server_features": ["xds_v3"],
        }],
        // An empty locality: gRPC's bootstrap makes it optional, but Node's
        // grpc-js-xds refuses a node without one ("locality field missing
        // in node element").
        "node": {
            "id": format!("{service}-client-{suffix:016x}"),
            "locality": {},
            "metadata": { "REGISTRY_TOKEN": token },
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plaintext_bootstrap_names_the_server_and_carries_the_token() {
        let bootstrap =
            xds_bootstrap("ratings", "http://127.0.0.1:7001", Some("con_x"), None).unwrap();
        assert_eq!(bootstrap["xds_servers"][0]["server_uri"], "127.0.0.1:7001");
        assert_eq!(
            bootstrap["xds_servers"][0]["channel_creds"][0]["type"],
            "insecure"
        );
        assert_eq!(bootstrap["xds_servers"][0]["server_features"][0], "xds_v3");
        assert_eq!(bootstrap["node"]["metadata"]["REGISTRY_TOKEN"], "con_x");
        assert_eq!(bootstrap["node"]["locality"], serde_json::json!({}));
    }

    #[test]
    fn bad_settings_are_refused_precisely() {
        let refused = |server, token, tls: Option<&Path>| {
            xds_bootstrap("ratings", server, token, tls)
                .unwrap_err()
                .to_string()
        };
        assert!(refused("127.0.0.1:7001", None, None).contains("create-consumer"));
        assert!(refused("127.0.0.1", Some("t"), None).contains("HOST:PORT"));
        assert!(refused("ftp://127.0.0.1:1", Some("t"), None).contains("HOST:PORT"));
        assert!(refused("https://127.0.0.1:1", Some("t"), None).contains("ca.crt"));
        let empty = std::env::temp_dir();
        assert!(refused("https://127.0.0.1:1", Some("t"), Some(&empty)).contains("missing"));
    }
}
