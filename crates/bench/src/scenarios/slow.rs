//! Not yet written.

use crate::{report::Section, scenarios::Config};

/// Runs the scenario.
pub async fn run(_cfg: &Config) -> anyhow::Result<Section> {
    anyhow::bail!("not written yet")
}
