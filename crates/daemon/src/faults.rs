//! Misbehaviour on purpose, to watch callers cope: the `--delay` and
//! `--fail-rate` flags every service binary takes, and what they do to a
//! call.

use std::time::Duration;

/// The fault-injection flags of a service binary.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct Faults {
    /// Added latency for every call, e.g. `50ms` (fault injection).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub delay: Duration,

    /// Fraction of calls, 0 to 1, answered UNAVAILABLE (fault injection).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub fail_rate: f64,
}

impl Faults {
    /// Waits out the delay, then fails the call with `UNAVAILABLE` at the
    /// fail rate.
    ///
    /// # Errors
    ///
    /// `UNAVAILABLE`, for the calls the fail rate picks.
    pub async fn inject(&self) -> Result<(), tonic::Status> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if self.fail_rate > 0.0 && rand::random::<f64>() < self.fail_rate {
            return Err(tonic::Status::unavailable(
                "failing on purpose (--fail-rate)",
            ));
        }
        Ok(())
    }
}

/// Parses a fraction from 0 to 1, as a `--fail-rate`.
fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|_| format!("{s} is not a number"))?;
    if !(0.0..=1.0).contains(&rate) {
        return Err(format!("{s} is not between 0 and 1"));
    }
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn faults_delay_and_fail() {
        let slow = Faults {
            delay: Duration::from_millis(50),
            fail_rate: 0.0,
        };
        let start = tokio::time::Instant::now();
        slow.inject().await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(50));

        let broken = Faults {
            delay: Duration::ZERO,
            fail_rate: 1.0,
        };
        let error = broken.inject().await.unwrap_err();
        assert_eq!(error.code(), tonic::Code::Unavailable);
        assert!(Faults::default().inject().await.is_ok());
    }

    #[test]
    fn rates_are_fractions() {
        assert_eq!(parse_rate("0.25"), Ok(0.25));
        assert!(parse_rate("1.5").unwrap_err().contains("between 0 and 1"));
        assert!(parse_rate("half").unwrap_err().contains("not a number"));
    }
}
