//! `virfed status`, `virfed coordinator`, `virfed participation`: the federation's health
//! for coordinators and the region's participation for its operators.

use std::path::Path;

use anyhow::Context;
use virfed::pb::admin as admin_pb;
use virfed::shutdown::Trigger;

use crate::args::ConnArgs;
use crate::client::refused;

/// `virfed status`: the sweep, printed; returns the exit code (0 healthy, 1 warnings,
/// 2 a node unreachable, 3 the sweep could not run).
pub async fn status(nodes: &[String], ca: &Path, cert: &Path, key: &Path) -> i32 {
    let tls =
        match virfed::pki::TlsMaterial::from_files(ca, cert, key, &[]).and_then(|m| virfed::pki::client_config(&m)) {
            Ok(tls) => tls,
            Err(e) => {
                eprintln!("error: {e}");
                return 3;
            }
        };
    let sweep = virfed::health::sweep::sweep(nodes, tls).await;
    print!("{}", virfed::health::sweep::render(&sweep));
    virfed::health::sweep::exit_code(&sweep)
}

/// `virfed coordinator`: the dashboard, until SIGINT or SIGTERM.
pub async fn coordinator(config: &Path) -> anyhow::Result<()> {
    let config = virfed::dashboard::CoordinatorConfig::load(config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    eprintln!("coordinator dashboard on http://{} ({} nodes)", listener.local_addr()?, config.nodes.len());
    let (stop, stopped) = Trigger::new();
    tokio::spawn(async move {
        crate::node::shutdown_signal().await;
        stop.trigger();
    });
    virfed::dashboard::run(config, listener, stopped).await?;
    Ok(())
}

/// `virfed participation`: the report as text, and optionally as CSV and HTML files.
pub async fn participation(
    conn: &ConnArgs,
    quiet_after_days: u32,
    csv: Option<&Path>,
    html: Option<&Path>,
) -> anyhow::Result<()> {
    let mut client = admin_pb::organisations_client::OrganisationsClient::new(conn.connect().await?);
    let report = client
        .get_participation(admin_pb::ParticipationRequest { quiet_after_days })
        .await
        .map_err(refused)?
        .into_inner();
    print!("{}", report.text);
    if let Some(path) = csv {
        std::fs::write(path, &report.csv).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("CSV written to {}", path.display());
    }
    if let Some(path) = html {
        std::fs::write(path, &report.html).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("HTML written to {}", path.display());
    }
    Ok(())
}
