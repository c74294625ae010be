//! `virfed node`: load the configuration, bind, and serve until SIGINT or SIGTERM.

use std::path::Path;
use std::sync::Arc;

use virfed::config::Config;
use virfed::domain::SystemClock;
use virfed::server::Node;

pub async fn run(config: &Path) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    let node = Node::bind(config, Arc::new(SystemClock)).await?;
    node.run(shutdown_signal()).await?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
