//! Tokens: how they are made, stored and checked.
//!
//! A token is 32 bytes from the operating system's CSPRNG, written as hex behind
//! a prefix that tells a person which kind they hold (`adm_`, `svc_`, `con_`).
//! A named consumer's token (from `CreateConsumer`) has the consumer prefix too:
//! it also only reads. The registry keeps only the SHA-256 of service and
//! consumer tokens: a stolen catalog file does not let anyone register. Tokens carry 256 bits of entropy,
//! so a fast hash is enough; no password hashing is needed.

use std::{collections::BTreeSet, fmt, str::FromStr};

use rand::{TryRngCore as _, rngs::OsRng};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::model::{ConsumerName, ServiceName};

/// The SHA-256 of a token. Comparisons run in constant time.
#[derive(Clone, Copy, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// Hashes a token as presented by a caller.
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }
}

impl PartialEq for TokenHash {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl std::hash::Hash for TokenHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only a prefix, so that logs cannot be used to match hashes.
        write!(f, "TokenHash({}…)", hex::encode(&self.0[..4]))
    }
}

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl FromStr for TokenHash {
    type Err = hex::FromHexError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0; 32];
        hex::decode_to_slice(s, &mut bytes)?;
        Ok(Self(bytes))
    }
}

/// The kinds of token, each with its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// May do everything.
    Admin,
    /// May register, renew and remove instances of one service, and read it.
    Service,
    /// May only read: one service (a service's consumer token), or the
    /// services a named consumer names.
    Consumer,
}

impl TokenKind {
    fn prefix(self) -> &'static str {
        match self {
            TokenKind::Admin => "adm_",
            TokenKind::Service => "svc_",
            TokenKind::Consumer => "con_",
        }
    }
}

/// Makes a new token of a kind from the operating system's CSPRNG.
///
/// # Panics
///
/// When the operating system cannot supply random bytes, which leaves no safe
/// way to go on.
pub fn generate(kind: TokenKind) -> String {
    let mut bytes = [0u8; 32];
    #[allow(clippy::expect_used)]
    OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random source failed");
    format!("{}{}", kind.prefix(), hex::encode(bytes))
}

/// What a service or consumer token grants, as stored in the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The service the token belongs to.
    pub service: ServiceName,
    /// Service or consumer.
    pub kind: TokenKind,
}

/// A named consumer, as stored in the catalog: one read-only token for
/// several services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    /// Who reads, for the operator (and for the messages it gets).
    pub name: ConsumerName,
    /// The services its token may read. A name stays here when its service
    /// is deleted, so that a service created again under it is readable.
    pub services: BTreeSet<ServiceName>,
}

impl Consumer {
    /// The services it reads, as `a, b, c`, for messages.
    pub fn services_list(&self) -> String {
        self.services
            .iter()
            .map(ServiceName::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Who is calling, once the token was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The holder of the admin token.
    Admin,
    /// The holder of a service's or consumer's token.
    Granted(Grant),
    /// The holder of a named consumer's token.
    Consumer(Consumer),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct_and_prefixed() {
        let a = generate(TokenKind::Service);
        let b = generate(TokenKind::Service);
        assert_ne!(a, b);
        assert!(a.starts_with("svc_") && a.len() == 4 + 64);
        assert!(generate(TokenKind::Consumer).starts_with("con_"));
    }

    #[test]
    fn hashes_round_trip_through_hex() {
        let hash = TokenHash::of("svc_example");
        let parsed: TokenHash = hash.to_string().parse().unwrap();
        assert_eq!(parsed, hash);
        assert_ne!(TokenHash::of("svc_other"), hash);
        assert!(!format!("{hash:?}").contains(&hash.to_string()));
    }
}
