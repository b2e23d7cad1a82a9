//! TLS for every gRPC listener and client of a process, from one folder.
//!
//! The folder is laid out as a Kubernetes TLS secret (and cert-manager's
//! certificates) are: `tls.crt` (this process's certificate chain, PEM),
//! `tls.key` (its private key, PEM) and `ca.crt` (the certificate authority
//! that signed the peers, PEM). With `--tls-dir` a process serves gRPC over
//! TLS with its certificate, and trusts only `ca.crt` when it calls others,
//! presenting its own certificate in case they ask for one. With `--mtls` its
//! listener also demands a client certificate signed by `ca.crt`.
//!
//! Off by default: on loopback the demo needs none of it.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The longest a TLS handshake may take before the connection is dropped, so
/// that a peer that opens connections and never finishes them cannot hold
/// them.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS options every gRPC binary of the market takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Speak gRPC over TLS, with the certificate `tls.crt`, the key `tls.key`
    /// and the authority `ca.crt` found in DIR (the layout of a Kubernetes
    /// TLS secret). Off by default.
    #[arg(long, env = "MARKET_TLS_DIR", value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,

    /// Mutual TLS: refuse gRPC clients without a certificate signed by
    /// `ca.crt`. Needs --tls-dir.
    #[arg(
        long,
        env = "MARKET_MTLS",
        requires = "tls_dir",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    pub mtls: bool,
}

/// Why the TLS folder cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file is missing or unreadable.
    #[error("cannot read {path}: {source}; --tls-dir needs tls.crt, tls.key and ca.crt (PEM)")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A file holds no usable PEM block of the expected kind.
    #[error("{path} holds no usable PEM {kind}{why}")]
    NotPem {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        kind: &'static str,
        /// What the parser said, if anything.
        why: String,
    },
}

/// A process's TLS settings, loaded from `--tls-dir`. Its `Debug` shows
/// no key.
#[derive(Clone)]
pub struct Tls {
    identity: Identity,
    ca: Certificate,
    mutual: bool,
}

impl TlsArgs {
    /// The settings these options ask for: `None` when TLS is off.
    pub fn load(&self) -> Result<Option<Tls>, TlsError> {
        self.tls_dir
            .as_deref()
            .map(|dir| Tls::from_dir(dir, self.mtls))
            .transpose()
    }
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("mutual", &self.mutual)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads `tls.crt`, `tls.key` and `ca.crt` from `dir`; with `mutual`, a
    /// listener demands client certificates.
    pub fn from_dir(dir: &Path, mutual: bool) -> Result<Self, TlsError> {
        let cert = read_certificates(&dir.join("tls.crt"))?;
        let key = read_key(&dir.join("tls.key"))?;
        let ca = read_certificates(&dir.join("ca.crt"))?;
        Ok(Self {
            identity: Identity::from_pem(cert, key),
            ca: Certificate::from_pem(ca),
            mutual,
        })
    }

    /// Whether listeners demand client certificates.
    pub fn is_mutual(&self) -> bool {
        self.mutual
    }

    /// A listener's settings: this process's certificate and, with mutual
    /// TLS, the authority its clients' certificates must chain to.
    pub fn server(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new()
            .identity(self.identity.clone())
            .timeout(HANDSHAKE_TIMEOUT);
        if self.mutual {
            config.client_ca_root(self.ca.clone())
        } else {
            config
        }
    }

    /// A client's settings: trust only `ca.crt`, and present this process's
    /// certificate when a server asks for one.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .timeout(HANDSHAKE_TIMEOUT)
    }
}

/// How a process with these settings speaks gRPC, for its log.
pub fn describe(tls: Option<&Tls>) -> &'static str {
    match tls {
        None => "off",
        Some(tls) if tls.is_mutual() => "mutual (client certificates required)",
        Some(_) => "on",
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads a PEM file of certificates, checking that it holds at least one
/// that decodes, so that a wrong or damaged file is named at start rather
/// than failing every handshake later.
fn read_certificates(path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = read(path)?;
    let not_pem = |why: String| TlsError::NotPem {
        path: path.to_owned(),
        kind: "certificate",
        why,
    };
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| not_pem(format!(": {error}")))?;
    if certificates.is_empty() {
        return Err(not_pem(String::new()));
    }
    Ok(pem)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1; not encrypted).
fn read_key(path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|error| TlsError::NotPem {
        path: path.to_owned(),
        kind: "private key (unencrypted PKCS#8, PKCS#1 or SEC1)",
        why: format!(": {error}"),
    })?;
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn loads_a_folder_made_like_a_tls_secret() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let dir = write_dir(&[
            ("tls.crt", &cert.pem()),
            ("tls.key", &key.serialize_pem()),
            ("ca.crt", &cert.pem()),
        ]);
        let args = TlsArgs {
            tls_dir: Some(dir.path().to_owned()),
            mtls: true,
        };
        let tls = args.load().unwrap().expect("TLS is on");
        assert!(tls.is_mutual());
        let shown = format!("{tls:?}");
        assert!(
            !shown.contains("PRIVATE") && !shown.contains("key"),
            "{shown}"
        );
        assert!(TlsArgs::default().load().unwrap().is_none());
    }

    #[test]
    fn a_missing_or_wrong_file_is_named() {
        let dir = write_dir(&[("tls.crt", "not pem"), ("ca.crt", "")]);
        let error = Tls::from_dir(dir.path(), false).unwrap_err().to_string();
        assert!(
            error.contains("tls.crt") && error.contains("no usable PEM certificate"),
            "{error}"
        );
        let damaged = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let dir = write_dir(&[("tls.crt", damaged)]);
        let error = Tls::from_dir(dir.path(), false).unwrap_err().to_string();
        assert!(error.contains("no usable PEM certificate: "), "{error}");

        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let dir = write_dir(&[("tls.crt", &cert.pem()), ("ca.crt", &cert.pem())]);
        let error = Tls::from_dir(dir.path(), false).unwrap_err().to_string();
        assert!(
            error.contains("tls.key") && error.contains("needs tls.crt, tls.key and ca.crt"),
            "{error}"
        );
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        std::fs::write(dir.path().join("tls.key"), encrypted).unwrap();
        let error = Tls::from_dir(dir.path(), false).unwrap_err().to_string();
        assert!(error.contains("(unencrypted PKCS#8"), "{error}");
    }
}
