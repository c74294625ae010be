//! `virfed audit verify`, `backup`, `restore`, `migrate`: a node's store and its backups.
//! The backup file protocol is `virfed::client::save_backup`; restoring and migrating are
//! the store's own (`virfed::store::backup`, `virfed::store::migrate`).

use std::path::Path;

use anyhow::bail;
use virfed::client::BackupFileError;
use virfed::config::Config;
use virfed::pb::admin as admin_pb;
use virfed::store::{Store, StoreOptions, SCHEMA_VERSION};

use crate::args::{AuditCommand, ConnArgs};
use crate::client::refused;

pub fn audit(cmd: AuditCommand) -> anyhow::Result<()> {
    let AuditCommand::Verify { config } = cmd;
    let config = Config::load(&config)?;
    let store = Store::open(&config.store_path(), &StoreOptions::default())?;
    match store.verify_audit()? {
        Ok(summary) => {
            println!("audit log intact: {} entries, head {}", summary.entries, hex::encode(summary.head_hash))
        }
        Err(broken) => bail!("audit log TAMPERED: {broken}"),
    }
    Ok(())
}

pub async fn backup(conn: &ConnArgs, out: &Path) -> anyhow::Result<()> {
    let mut client = admin_pb::organisations_client::OrganisationsClient::new(conn.connect().await?);
    let stream = client.backup(admin_pb::BackupRequest {}).await.map_err(refused)?.into_inner();
    let bytes = match virfed::client::save_backup(stream, out).await {
        Ok(bytes) => bytes,
        Err(BackupFileError::Node(status)) => return Err(refused(status)),
        Err(e) => return Err(e.into()),
    };
    println!("backup written to {} ({bytes} bytes); back up the node's key files separately", out.display());
    Ok(())
}

pub fn restore(config: &Path, from: &Path, replace: bool) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    let (summary, moved) = virfed::store::backup::restore(&config.store_path(), from, replace)?;
    if let Some(aside) = moved {
        println!("the previous store was moved to {}", aside.display());
    }
    println!(
        "restored {} entries ({} audit entries, chain verified) from a backup taken {}; on its next start the node asks its peers for a resync",
        summary.entries, summary.audit_entries, summary.created_at
    );
    Ok(())
}

pub fn migrate(config: &Path, dry_run: bool) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    let steps = virfed::store::migrate::plan(&config.store_path())?;
    if steps.is_empty() {
        println!("the store is at schema version {SCHEMA_VERSION}: nothing to do");
    }
    for step in &steps {
        let verb = if dry_run { "would migrate" } else { "migrating" };
        println!("{verb} schema {} -> {}: {} ({} entries)", step.from, step.to, step.what, step.entries);
    }
    if !dry_run && !steps.is_empty() {
        Store::open(&config.store_path(), &StoreOptions::default())?;
        println!("store migrated to schema version {SCHEMA_VERSION}");
    }
    Ok(())
}
