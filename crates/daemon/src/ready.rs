//! Readiness for machines: one JSON object per line on stdout.
//!
//! A daemon announces each step of its start-up that a supervisor may wait
//! for: the demo, the chaos driver, the test helpers and the benchmarks read
//! these lines, never the human log wording on stderr. Each line is an
//! object with a `ready` field naming the step:
//!
//! ```text
//! {"ready":"listening","service":"ratings","instance":"ratings-1","address":"http://127.0.0.1:8001"}
//! {"ready":"registered","service":"ratings","instance":"ratings-1"}
//! ```
//!
//! `address` is the URL to call the daemon at (`https://` with TLS).

use std::io::Write as _;

use serde::{Deserialize, Serialize};

/// One step of a daemon's start-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ready", rename_all = "snake_case")]
pub enum Event {
    /// The daemon, or one of its instances, accepts connections at
    /// `address`.
    Listening {
        /// The service, e.g. `ratings`, or the daemon's name (`registryd`).
        service: String,
        /// The instance's id; the daemon's name when it has no instances.
        instance: String,
        /// Where to call it: `http://127.0.0.1:8001`.
        address: String,
    },
    /// The instance is registered: consumers can find it.
    Registered {
        /// The service it registered with.
        service: String,
        /// The instance's id.
        instance: String,
    },
}

impl Event {
    /// A daemon without instances listens at `address`.
    pub fn listening(daemon: &str, address: impl Into<String>) -> Self {
        Self::Listening {
            service: daemon.to_owned(),
            instance: daemon.to_owned(),
            address: address.into(),
        }
    }
}

/// Prints `event` as one line on stdout.
pub fn announce(event: &Event) {
    // A line is written whole: the lock is held for the one write.
    let line = match serde_json::to_string(event) {
        Ok(line) => line,
        Err(error) => {
            tracing::error!(%error, "cannot encode a readiness line");
            return;
        }
    };
    let mut stdout = std::io::stdout().lock();
    // Nobody reading stdout is no error: a daemon runs without a supervisor.
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

/// The readiness event on `line`, if it is one.
pub fn parse(line: &str) -> Option<Event> {
    let line = line.trim();
    if !line.starts_with('{') {
        return None;
    }
    serde_json::from_str(line).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_one_json_object_a_line_and_read_back() {
        let event = Event::Listening {
            service: "ratings".into(),
            instance: "ratings-1".into(),
            address: "http://127.0.0.1:8001".into(),
        };
        let line = serde_json::to_string(&event).unwrap();
        assert_eq!(
            line,
            r#"{"ready":"listening","service":"ratings","instance":"ratings-1","address":"http://127.0.0.1:8001"}"#
        );
        assert_eq!(parse(&line), Some(event));
        assert_eq!(parse("INFO listening on port 8001"), None);
        assert_eq!(parse(r#"{"level":"info"}"#), None);
    }
}
