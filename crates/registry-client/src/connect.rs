//! Channels to the registry and the token every call carries.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use market_proto::registry::v1::registry_client;
use tonic::{
    metadata::{AsciiMetadataValue, errors::InvalidMetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, ClientTlsConfig, Endpoint},
};

/// Why a client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No registry address was given.
    #[error("no registry address given; pass one like http://127.0.0.1:7000")]
    NoRegistry,
    /// A registry address does not parse.
    #[error("invalid registry address {address:?}: {why}; use http://host:port")]
    BadAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        why: String,
    },
    /// The token has characters that cannot go into a header.
    #[error("the token has characters that cannot be sent in a header: {0}")]
    BadToken(#[from] InvalidMetadataValue),
    /// A plaintext registry address while TLS is on.
    #[error("TLS is on but the registry address {0:?} is plaintext; use https://host:port")]
    PlaintextWithTls(String),
    /// An https registry address while TLS is off.
    #[error("the registry address {0:?} needs TLS; pass --tls-dir (or use http://)")]
    TlsWithoutConfig(String),
    /// The TLS settings do not apply to an address.
    #[error("cannot use TLS with the registry at {address:?}: {why}")]
    Tls {
        /// The address as given.
        address: String,
        /// What is wrong.
        why: String,
    },
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct BearerToken(AsciiMetadataValue);

impl BearerToken {
    /// Prepares a token for sending.
    pub fn new(token: &str) -> Result<Self, ConfigError> {
        let mut value: AsciiMetadataValue = format!("Bearer {}", token.trim()).parse()?;
        value.set_sensitive(true);
        Ok(Self(value))
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A registry client whose calls carry a token.
pub type RegistryClient = registry_client::RegistryClient<InterceptedService<Channel, BearerToken>>;

/// The registry replicas a client may use, tried in order: a failure moves
/// the client on to the next one.
///
/// The same TLS settings, if any, are meant for the instances the client
/// finds there: see [`Registries::tls`]. Its `Debug` shows neither the
/// token nor the TLS key.
#[derive(Clone)]
pub struct Registries {
    channels: Arc<[(String, Channel)]>,
    current: Arc<AtomicUsize>,
    token: BearerToken,
    tls: Option<ClientTlsConfig>,
}

impl std::fmt::Debug for Registries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addresses: Vec<&str> = self.channels.iter().map(|(a, _)| a.as_str()).collect();
        f.debug_struct("Registries")
            .field("addresses", &addresses)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// How long connecting to a registry replica may take, TCP and TLS each,
/// before the client moves on to the next one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

impl Registries {
    /// Parses addresses (`http://host:port`; `host:port` is taken as http) and
    /// prepares lazily connected plaintext channels to each.
    pub fn new<I, A>(addresses: I, token: &str) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = A>,
        A: AsRef<str>,
    {
        Self::with_tls(addresses, token, None)
    }

    /// Like [`Registries::new`], over TLS when `tls` is given: then every
    /// address must be `https://host:port` (`host:port` is taken as https).
    pub fn with_tls<I, A>(
        addresses: I,
        token: &str,
        tls: Option<ClientTlsConfig>,
    ) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = A>,
        A: AsRef<str>,
    {
        let default_scheme = if tls.is_some() { "https" } else { "http" };
        let channels = addresses
            .into_iter()
            .map(|address| {
                let address = address.as_ref().trim();
                let uri = if address.contains("://") {
                    address.to_owned()
                } else {
                    format!("{default_scheme}://{address}")
                };
                let mut endpoint =
                    Endpoint::from_shared(uri.clone()).map_err(|e| ConfigError::BadAddress {
                        address: address.to_owned(),
                        why: e.to_string(),
                    })?;
                let secure = endpoint.uri().scheme_str() == Some("https");
                match (&tls, secure) {
                    (Some(tls), true) => {
                        endpoint =
                            endpoint
                                .tls_config(tls.clone())
                                .map_err(|e| ConfigError::Tls {
                                    address: address.to_owned(),
                                    why: e.to_string(),
                                })?;
                    }
                    (Some(_), false) => return Err(ConfigError::PlaintextWithTls(uri)),
                    (None, true) => return Err(ConfigError::TlsWithoutConfig(uri)),
                    (None, false) => {}
                }
                let channel = endpoint
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(5))
                    .connect_lazy();
                Ok((uri, channel))
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        if channels.is_empty() {
            return Err(ConfigError::NoRegistry);
        }
        Ok(Self {
            channels: channels.into(),
            current: Arc::new(AtomicUsize::new(0)),
            token: BearerToken::new(token)?,
            tls,
        })
    }

    /// The TLS settings of these channels: `None` for plaintext. A process
    /// calls the instances it finds with the same settings.
    pub fn tls(&self) -> Option<&ClientTlsConfig> {
        self.tls.as_ref()
    }

    /// A client of the replica in use, and its address.
    pub fn client(&self) -> (RegistryClient, &str) {
        let index = self.current.load(Ordering::Relaxed) % self.channels.len();
        let (address, channel) = &self.channels[index];
        let client =
            registry_client::RegistryClient::with_interceptor(channel.clone(), self.token.clone());
        (client, address)
    }

    /// Moves on to the next replica after `address` failed; a no-op when
    /// another caller already moved on.
    pub fn failed(&self, address: &str) {
        let index = self.current.load(Ordering::Relaxed) % self.channels.len();
        if self.channels[index].0 == address && self.channels.len() > 1 {
            let _ = self.current.compare_exchange(
                index,
                (index + 1) % self.channels.len(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
}

/// Whether a failed call says the registry is unreachable or unwell, so that
/// trying another replica (or again later) may help.
pub(crate) fn is_unavailable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unknown
            | tonic::Code::Internal
    )
}

/// A client of the first registry at `address`, with `token` on every call.
pub fn connect(address: &str, token: &str) -> Result<RegistryClient, ConfigError> {
    Ok(Registries::new([address], token)?.client().0)
}
