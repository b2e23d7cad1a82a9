//! The registry's domain types, each validated when it is built from untrusted
//! input, so the store only ever sees well-formed values.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::Ipv6Addr,
    str::FromStr,
    time::Duration,
};

/// Why a request field was refused. Each message names the field, what was wrong
/// and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidArgument {
    /// The service name is not a DNS label.
    #[error(
        "invalid service name {0:?}: use 1 to 63 lowercase letters, digits and '-', not starting or ending with '-'"
    )]
    ServiceName(String),
    /// The consumer name is not a DNS label.
    #[error(
        "invalid consumer name {0:?}: use 1 to 63 lowercase letters, digits and '-', not starting or ending with '-' (for example market-web)"
    )]
    ConsumerName(String),
    /// A consumer was asked for without any service to read.
    #[error(
        "no services given: a consumer reads 1 to {max} services of the catalog, name them in `services`",
        max = ConsumerName::MAX_SERVICES
    )]
    NoServices,
    /// A consumer was asked for with more services than one may read.
    #[error(
        "{0} services given: a consumer reads at most {max}; name fewer, or split them over several consumers",
        max = ConsumerName::MAX_SERVICES
    )]
    TooManyServices(usize),
    /// The instance id has characters or a length that are not accepted.
    #[error("invalid instance id {0:?}: use 1 to 128 letters, digits, '.', '_' or '-'")]
    InstanceId(String),
    /// The address is not `host:port` or `http(s)://host:port`.
    #[error(
        "invalid address {address:?}: {why}; use host:port, http://host:port or https://host:port"
    )]
    Address {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The TTL is outside the accepted range.
    #[error("invalid ttl_seconds {0}: use 1 to 300 seconds")]
    Ttl(u32),
    /// The metadata breaks one of its bounds.
    #[error("invalid metadata: {0}")]
    Metadata(String),
    /// A provided token is too short, too long or not printable.
    #[error(
        "invalid {0}: use 32 to 256 printable ASCII characters without spaces, or leave it empty"
    )]
    Token(&'static str),
    /// The service token and the consumer token provided are the same.
    #[error(
        "token and consumer_token are the same: give each its own, or leave either empty to get a new one"
    )]
    SameTokens,
    /// Neither a lease nor an instance was named.
    #[error("name the instance to deregister: give lease_id, or service and instance_id")]
    DeregisterTarget,
}

/// A service's name: a DNS label, `[a-z0-9-]{1,63}`, not starting or ending with `-`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName(String);

impl ServiceName {
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ServiceName {
    type Err = InvalidArgument;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = (1..=63).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidArgument::ServiceName(s.to_owned()))
        }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A named consumer's name, a DNS label as a service's name is (for example
/// `market-web`). It names the caller for the operator; the consumer's token
/// is what grants.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConsumerName(String);

impl ConsumerName {
    /// The most services one consumer may read.
    pub const MAX_SERVICES: usize = 64;

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ConsumerName {
    type Err = InvalidArgument;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // The same rule as a service's name, so that a consumer may be named
        // after the service that reads.
        match s.parse::<ServiceName>() {
            Ok(_) => Ok(Self(s.to_owned())),
            Err(_) => Err(InvalidArgument::ConsumerName(s.to_owned())),
        }
    }
}

impl fmt::Display for ConsumerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The services a named consumer asks to read: 1 to
/// [`ConsumerName::MAX_SERVICES`] valid service names, a name given twice
/// counted once.
pub fn consumer_services<I>(names: I) -> Result<BTreeSet<ServiceName>, InvalidArgument>
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    let services = names
        .into_iter()
        .map(|name| name.as_ref().parse::<ServiceName>())
        .collect::<Result<BTreeSet<_>, _>>()?;
    match services.len() {
        0 => Err(InvalidArgument::NoServices),
        n if n > ConsumerName::MAX_SERVICES => Err(InvalidArgument::TooManyServices(n)),
        _ => Ok(services),
    }
}

/// An instance's id, unique within its service: `[A-Za-z0-9._-]{1,128}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId(String);

impl InstanceId {
    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A fresh random id for an instance that did not choose one.
    pub fn random(service: &ServiceName) -> Self {
        Self(format!("{service}-{:08x}", rand::random::<u32>()))
    }
}

impl FromStr for InstanceId {
    type Err = InvalidArgument;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = (1..=128).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidArgument::InstanceId(s.to_owned()))
        }
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where an instance is reached, normalized to `http://host:port` or
/// `https://host:port`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address(String);

impl Address {
    /// The normalized address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Address {
    type Err = InvalidArgument;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why| InvalidArgument::Address {
            address: s.to_owned(),
            why,
        };
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        let (scheme, rest) = match s.split_once("://") {
            Some((scheme @ ("http" | "https"), rest)) => (scheme, rest),
            Some(_) => return Err(bad("the scheme is neither http nor https")),
            None => ("http", s),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad("it has a path, query or user part"));
        }
        let authority: http::uri::Authority = rest.parse().map_err(|_| bad("it does not parse"))?;
        let host = authority.host();
        if host.is_empty() {
            return Err(bad("the host is missing"));
        }
        // `http` checks only that brackets match; inside them must be an
        // IPv6 address.
        if let Some(literal) = host.strip_prefix('[')
            && literal
                .strip_suffix(']')
                .is_none_or(|ip| ip.parse::<Ipv6Addr>().is_err())
        {
            return Err(bad("the host in brackets is not an IPv6 address"));
        }
        // `http` reads the port as Rust reads a `u16`, sign included: only
        // digits are a port, and the number is written back without leading
        // zeros, so that one endpoint has one address.
        let Some(port) = authority.port() else {
            return Err(bad("the port is missing or not from 1 to 65535"));
        };
        if !port.as_str().bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("the port is not a number"));
        }
        match port.as_u16() {
            0 => Err(bad("port 0 is not reachable")),
            port => Ok(Self(format!("{scheme}://{host}:{port}"))),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A lease's time to live: 1 to 300 seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ttl(u32);

impl Ttl {
    /// The shortest TTL accepted.
    pub const MIN_SECONDS: u32 = 1;
    /// The longest TTL accepted.
    pub const MAX_SECONDS: u32 = 300;

    /// Checks a TTL in seconds.
    pub fn from_secs(secs: u32) -> Result<Self, InvalidArgument> {
        if (Self::MIN_SECONDS..=Self::MAX_SECONDS).contains(&secs) {
            Ok(Self(secs))
        } else {
            Err(InvalidArgument::Ttl(secs))
        }
    }

    /// The TTL in seconds.
    pub fn as_secs(self) -> u32 {
        self.0
    }

    /// The TTL as a duration.
    pub fn duration(self) -> Duration {
        Duration::from_secs(u64::from(self.0))
    }
}

/// An instance's labels, bounded in count and size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata(BTreeMap<String, String>);

impl Metadata {
    /// At most this many entries.
    pub const MAX_ENTRIES: usize = 16;
    /// Keys are at most this long.
    pub const MAX_KEY_LEN: usize = 63;
    /// Values are at most this long, in bytes.
    pub const MAX_VALUE_LEN: usize = 256;
    /// Keys and values together are at most this many bytes.
    pub const MAX_TOTAL: usize = 4096;

    /// Checks labels against the bounds.
    pub fn new(
        entries: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, InvalidArgument> {
        let map: BTreeMap<String, String> = entries.into_iter().collect();
        if map.len() > Self::MAX_ENTRIES {
            return Err(InvalidArgument::Metadata(format!(
                "{} entries, at most {} are accepted",
                map.len(),
                Self::MAX_ENTRIES
            )));
        }
        let mut total = 0;
        for (key, value) in &map {
            let key_ok = (1..=Self::MAX_KEY_LEN).contains(&key.len())
                && key.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                });
            if !key_ok {
                return Err(InvalidArgument::Metadata(format!(
                    "key {key:?} is not accepted: use 1 to {} of a-z, 0-9, '.', '_', '-'",
                    Self::MAX_KEY_LEN
                )));
            }
            if value.len() > Self::MAX_VALUE_LEN {
                return Err(InvalidArgument::Metadata(format!(
                    "the value of {key:?} is {} bytes, at most {} are accepted",
                    value.len(),
                    Self::MAX_VALUE_LEN
                )));
            }
            total += key.len() + value.len();
        }
        if total > Self::MAX_TOTAL {
            return Err(InvalidArgument::Metadata(format!(
                "{total} bytes in all, at most {} are accepted",
                Self::MAX_TOTAL
            )));
        }
        Ok(Self(map))
    }

    /// The labels, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }
}

/// The id of a lease, which keeps one instance registered while it is renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseId(pub u64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// A point in the registry's history. Every change gets the next revision, so a
/// watcher that remembers the last revision it saw can resume from it.
pub type Revision = u64;

/// A live instance of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The service it belongs to.
    pub service: ServiceName,
    /// Its id within the service.
    pub id: InstanceId,
    /// Where to reach it.
    pub address: Address,
    /// Its labels.
    pub metadata: Metadata,
    /// The lease that keeps it registered.
    pub lease: LeaseId,
    /// The lease's time to live.
    pub ttl: Ttl,
    /// The revision at which it was registered.
    pub revision: Revision,
}

/// What a registering instance asks for.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The service to join.
    pub service: ServiceName,
    /// The id it chose, or `None` for one made up by the registry.
    pub id: Option<InstanceId>,
    /// Where to reach it.
    pub address: Address,
    /// Its labels.
    pub metadata: Metadata,
    /// How long its lease lives without a heartbeat.
    pub ttl: Ttl,
}

/// Why an instance left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovalReason {
    /// It deregistered, or an operator removed it.
    Deregistered,
    /// Its lease expired.
    Expired,
    /// Its service was deleted.
    ServiceDeleted,
}

/// One change to a service's set of instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// An instance became live, or registered again (an upsert).
    Added(Instance),
    /// An instance is gone.
    Removed(Instance, RemovalReason),
}

impl Change {
    /// The instance the change is about.
    pub fn instance(&self) -> &Instance {
        match self {
            Change::Added(instance) | Change::Removed(instance, _) => instance,
        }
    }
}

/// A change with its place in history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The revision of the change.
    pub revision: Revision,
    /// The change.
    pub change: Change,
}

/// A service in the catalog, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Its name.
    pub name: ServiceName,
    /// When it was created, in seconds since the Unix epoch.
    pub created_at_unix: i64,
    /// How many instances are live.
    pub live_instances: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_dns_labels() {
        for good in ["ratings", "a", "r2-d2", &"x".repeat(63)] {
            assert!(good.parse::<ServiceName>().is_ok(), "{good}");
        }
        for bad in [
            "",
            "Ratings",
            "-ratings",
            "ratings-",
            "rat_ings",
            "r.s",
            &"x".repeat(64),
        ] {
            assert_eq!(
                bad.parse::<ServiceName>(),
                Err(InvalidArgument::ServiceName(bad.to_owned()))
            );
        }
    }

    #[test]
    fn consumer_names_are_dns_labels() {
        for good in ["market-web", "a", &"x".repeat(63)] {
            assert_eq!(
                good.parse::<ConsumerName>().map(|n| n.0),
                Ok(good.to_owned())
            );
        }
        for bad in ["", "Market", "-web", "web-", "market_web", &"x".repeat(64)] {
            let refused = bad.parse::<ConsumerName>();
            assert_eq!(refused, Err(InvalidArgument::ConsumerName(bad.to_owned())));
            let message = refused.unwrap_err().to_string();
            assert!(message.starts_with("invalid consumer name"), "{message}");
        }
    }

    #[test]
    fn consumer_services_are_one_to_sixty_four_distinct_names() {
        let services = consumer_services(["reviews", "ratings", "reviews"]).unwrap();
        let names: Vec<&str> = services.iter().map(ServiceName::as_str).collect();
        assert_eq!(names, ["ratings", "reviews"], "sorted, each once");

        assert_eq!(
            consumer_services(Vec::<String>::new()),
            Err(InvalidArgument::NoServices)
        );
        assert!(
            InvalidArgument::NoServices
                .to_string()
                .contains("1 to 64 services")
        );
        let max: Vec<String> = (0..64).map(|i| format!("s{i}")).collect();
        assert_eq!(consumer_services(&max).map(|s| s.len()), Ok(64));
        let too_many: Vec<String> = (0..65).map(|i| format!("s{i}")).collect();
        let refused = consumer_services(&too_many);
        assert_eq!(refused, Err(InvalidArgument::TooManyServices(65)));
        assert!(
            refused.unwrap_err().to_string().contains("at most 64"),
            "says what is accepted"
        );
        // 65 names, 64 of them distinct: duplicates count once.
        let mut repeated = max;
        repeated.push("s0".to_owned());
        assert_eq!(consumer_services(&repeated).map(|s| s.len()), Ok(64));
        assert_eq!(
            consumer_services(["ratings", "Bad"]),
            Err(InvalidArgument::ServiceName("Bad".to_owned()))
        );
    }

    #[test]
    fn addresses_are_normalized() {
        let cases = [
            ("127.0.0.1:8001", "http://127.0.0.1:8001"),
            ("http://127.0.0.1:8001", "http://127.0.0.1:8001"),
            ("http://127.0.0.1:8001/", "http://127.0.0.1:8001"),
            ("https://ratings.example:443", "https://ratings.example:443"),
            ("[::1]:8001", "http://[::1]:8001"),
            // Found by the `registry_requests` fuzz target: the port was kept
            // as written (`:029933`), so one endpoint had many addresses.
            ("127.0.0.1:08001", "http://127.0.0.1:8001"),
            ("127.0.0.1:000080", "http://127.0.0.1:80"),
        ];
        for (given, normalized) in cases {
            assert_eq!(
                given.parse::<Address>().map(|a| a.0),
                Ok(normalized.to_owned())
            );
        }
        for bad in [
            "",
            "127.0.0.1",
            "ftp://127.0.0.1:21",
            "http://127.0.0.1:8001/path",
            "127.0.0.1:0",
            "127.0.0.1:99999",
            "user@host:80",
            ":80",
            // Seen while writing that target's address check: `http` reads a
            // port as a `u16`, sign included, and checks only that brackets
            // match.
            "127.0.0.1:+8001",
            "[]:80",
            "[ratings]:80",
        ] {
            assert!(bad.parse::<Address>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn ttl_bounds() {
        assert!(Ttl::from_secs(0).is_err());
        assert!(Ttl::from_secs(1).is_ok());
        assert!(Ttl::from_secs(300).is_ok());
        assert_eq!(Ttl::from_secs(301), Err(InvalidArgument::Ttl(301)));
    }

    #[test]
    fn metadata_bounds() {
        let many = (0..17).map(|i| (format!("k{i}"), String::new()));
        assert!(Metadata::new(many).is_err());
        assert!(Metadata::new([("Zone".into(), "a".into())]).is_err());
        assert!(Metadata::new([("zone".into(), "a".repeat(257))]).is_err());
        let big = (0..16).map(|i| (format!("k{i}"), "v".repeat(256)));
        assert!(Metadata::new(big).is_err(), "4 KiB in all is the bound");
        assert!(Metadata::new([("zone".into(), "eu-1".into())]).is_ok());
    }
}
