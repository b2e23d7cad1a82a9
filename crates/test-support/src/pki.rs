//! A certificate authority made at test time, issuing folders laid out as
//! the daemons' `--tls-dir` expects (`tls.crt`, `tls.key`, `ca.crt`).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A test certificate authority whose files live in a temporary folder.
pub struct Pki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Pki {
    /// A new authority named `name`.
    ///
    /// # Panics
    ///
    /// When a certificate cannot be made or written.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("a CA key");
        let ca_pem = params.self_signed(&key).expect("a CA certificate").pem();
        Self {
            dir: tempfile::tempdir().expect("a temp dir"),
            issuer: Issuer::new(params, key),
            ca_pem,
        }
    }

    /// Issues a certificate for `name`, valid for `localhost` and 127.0.0.1
    /// as a server and as a client, and writes it with its key and this
    /// authority's certificate into a new folder, which it returns.
    ///
    /// # Panics
    ///
    /// When a certificate cannot be made or written.
    pub fn issue(&self, name: &str) -> PathBuf {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("a key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("a signed certificate");
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).expect("a folder for the certificate");
        write(&dir, "tls.crt", &cert.pem());
        write(&dir, "tls.key", &key.serialize_pem());
        write(&dir, "ca.crt", &self.ca_pem);
        dir
    }

    /// This authority's certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("write {name}: {e}"));
}
