//! The CLI's side of the APIs: an mTLS connection to a node, the backup file a download
//! is saved to, and human-readable output of signals, matches and notices (shared by
//! `virfed signal|matches|org` and the demo).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::pb::admin as admin_pb;
use crate::pb::client as pb;
use crate::pki::{client_config, connect, PkiError, TlsMaterial};

/// Connects to the node at `node` (host:port) now, so a bad certificate or a down node is
/// reported before any work. `server_name` defaults to the host part of `node`.
pub async fn connect_node(
    node: &str,
    server_name: Option<&str>,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Channel, PkiError> {
    let material = TlsMaterial::from_files(ca, cert, key, &[])?;
    let config = client_config(&material)?;
    let host = node.rsplit_once(':').map(|(h, _)| h).unwrap_or(node);
    let name = server_name.map(str::to_owned).unwrap_or_else(|| host.trim_matches(['[', ']']).to_string());
    connect(node, &name, config).await
}

/// Why a downloaded backup could not be saved.
#[derive(Debug, thiserror::Error)]
pub enum BackupFileError {
    #[error("creating {}", path.display())]
    Create { path: PathBuf, source: std::io::Error },
    #[error("{} exists; choose another file name (the backup is kept in {})", out.display(), partial.display())]
    Exists { out: PathBuf, partial: PathBuf },
    /// The node ended the stream with an error.
    #[error("{}", status_message(.0))]
    Node(tonic::Status),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Saves a backup stream to `out`, never over an existing file: the chunks go to
/// `<out>.partial` (created new, mode 0600), which is synced and only then renamed to
/// `out`, so `out` is always a complete backup. Returns the bytes written.
pub async fn save_backup(
    mut stream: tonic::Streaming<admin_pb::BackupChunk>,
    out: &Path,
) -> Result<usize, BackupFileError> {
    use tokio::io::AsyncWriteExt;
    let partial = out.with_extension("partial");
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file =
        options.open(&partial).await.map_err(|source| BackupFileError::Create { path: partial.clone(), source })?;
    let mut bytes = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(BackupFileError::Node)?;
        bytes += chunk.data.len();
        file.write_all(&chunk.data).await?;
    }
    file.sync_all().await?;
    if out.exists() {
        return Err(BackupFileError::Exists { out: out.to_owned(), partial });
    }
    std::fs::rename(&partial, out)?;
    Ok(bytes)
}

/// A gRPC status as a sentence for a person.
pub fn status_message(status: &tonic::Status) -> String {
    format!("the node refused the request ({:?}): {}", status.code(), status.message())
}

fn contact_line(c: &Option<pb::Contact>) -> String {
    match c {
        Some(c) => format!("{} ({}), {}, {}", c.name, c.role, c.phone, c.email),
        None => "-".into(),
    }
}

/// One party, as a few indented lines.
pub fn format_party(p: &pb::Party) -> String {
    let region = if p.region_id.is_empty() { String::new() } else { format!(" [region {}]", p.region_id) };
    let mut out = format!(
        "    {} ({}, {}){region}\n      professional: {}\n",
        p.organisation_name,
        p.organisation_id,
        p.organisation_domain,
        contact_line(&p.professional)
    );
    if p.coordinator.is_some() {
        let _ = writeln!(out, "      coordinator:  {}", contact_line(&p.coordinator));
    }
    out
}

/// A notice as a short block of text.
pub fn format_notice(n: &pb::Notice) -> String {
    let kind = match pb::NoticeKind::try_from(n.kind) {
        Ok(pb::NoticeKind::MatchCreated) => "MATCH",
        Ok(pb::NoticeKind::MatchEnded) => "MATCH ENDED",
        Ok(pb::NoticeKind::History) => "HISTORY",
        _ => "NOTICE",
    };
    let to = match pb::Addressee::try_from(n.addressee) {
        Ok(pb::Addressee::Professional) => "professional",
        Ok(pb::Addressee::Coordinator) => "coordinator",
        Ok(pb::Addressee::MatchOfficer) => "match officer",
        _ => "?",
    };
    let about = if n.signal_id.is_empty() {
        format!("signals {}", n.signal_ids.join(", "))
    } else {
        format!("your signal {}", n.signal_id)
    };
    let kind = if n.family { format!("FAMILY {kind}") } else { kind.to_owned() };
    let mut out = format!("#{} {kind} for the {to}, {about}; counterparts:\n", n.cursor);
    for p in &n.counterparts {
        out.push_str(&format_party(p));
    }
    out
}

/// A signal as a few lines.
pub fn format_signal(s: &pb::SignalView) -> String {
    let mut out = format!(
        "signal {}\n  organisation: {}\n  professional: {}\n  registered:   {}\n  removal date: {}\n  state:        {}\n",
        s.signal_id,
        s.organisation_id,
        contact_line(&s.professional),
        s.registered_at,
        s.removal_date,
        s.state
    );
    if !s.archived_on.is_empty() {
        let _ = writeln!(out, "  archived on:  {}", s.archived_on);
    }
    out
}
