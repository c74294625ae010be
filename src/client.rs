//! The CLI's side of the APIs: an mTLS connection to a node and human-readable output of
//! signals, matches and notices (shared by `virfed signal|matches|org` and the demo).

use std::fmt::Write as _;
use std::path::PathBuf;

use tonic::transport::Channel;

use crate::pb::client as pb;
use crate::pki::{client_config, connect, TlsMaterial};

/// Where and as whom to connect.
#[derive(Clone, Debug, clap::Args)]
pub struct ConnArgs {
    /// Node address, host:port.
    #[arg(long, env = "VIRFED_NODE", default_value = "127.0.0.1:7443")]
    pub node: String,
    /// Name in the node's server certificate; defaults to the host part of --node.
    #[arg(long, env = "VIRFED_SERVER_NAME")]
    pub server_name: Option<String>,
    /// CA certificate that issued the node's certificate (PEM).
    #[arg(long, env = "VIRFED_CA")]
    pub ca: PathBuf,
    /// Your client certificate (PEM): an organisation's, or an operator's for `org`.
    #[arg(long, env = "VIRFED_CERT")]
    pub cert: PathBuf,
    /// Your private key (PEM, mode 0600).
    #[arg(long, env = "VIRFED_KEY")]
    pub key: PathBuf,
}

impl ConnArgs {
    /// Connects now, so a bad certificate or a down node is reported before any work.
    pub async fn connect(&self) -> anyhow::Result<Channel> {
        let material = TlsMaterial::from_files(&self.ca, &self.cert, &self.key, &[])?;
        let config = client_config(&material)?;
        let host = self.node.rsplit_once(':').map(|(h, _)| h).unwrap_or(&self.node);
        let name = self.server_name.clone().unwrap_or_else(|| host.trim_matches(['[', ']']).to_string());
        Ok(connect(&self.node, &name, config).await?)
    }
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
