//! Not yet written.

use crate::{report::Section, scenarios::Config};

/// Runs scenarios 6, 7 and 8.
pub async fn run(_cfg: &Config) -> anyhow::Result<Vec<Section>> {
    anyhow::bail!("not written yet")
}
