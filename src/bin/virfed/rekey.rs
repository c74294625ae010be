//! `virfed rekey`: rotate a stopped node's blinding key. The crash-safe steps are
//! [`virfed::federation::rekey::rekey`]; this prints what it did.

use std::path::Path;

use anyhow::bail;
use virfed::config::Config;

pub async fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    if config.federation.is_none() {
        bail!("{} has no [federation] section: there is nothing to re-key", path.display());
    }
    let done = virfed::federation::rekey::rekey(&config).await?;
    println!(
        "re-keyed: {} children and {} peer index entries; {} items queued for {} peers; start the node to send them",
        done.children, done.entries, done.queued, done.peers
    );
    Ok(())
}
