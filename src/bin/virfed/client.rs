//! `virfed org`, `virfed signal`, `virfed matches`: requests to a node's client and admin
//! APIs with an organisation's or operator's certificate, and how a refusal is explained.

use std::io::BufRead;

use anyhow::Context;
use tokio_stream::StreamExt;
use virfed::client::{format_notice, format_party, format_signal, status_message};
use virfed::pb::admin as admin_pb;
use virfed::pb::client as pb;

use crate::args::{By, MatchesCommand, OrgCommand, Reason, SignalCommand};

/// Maps a gRPC status to an error a person can act on.
pub fn refused(status: tonic::Status) -> anyhow::Error {
    if matches!(status.code(), tonic::Code::Unknown | tonic::Code::Unavailable) {
        return anyhow::anyhow!(
            "{}\nhint: the node closed the connection. Is your client certificate expired, revoked or from another CA? Is the node running at that address? The node's log says which.",
            status_message(&status)
        );
    }
    anyhow::anyhow!(status_message(&status))
}

pub async fn org(cmd: OrgCommand) -> anyhow::Result<()> {
    match cmd {
        OrgCommand::Add { conn, id, name, domain, coordinator } => {
            let coordinator = coordinator.map(|c| admin_pb::Contact {
                name: c[0].clone(),
                role: c[1].clone(),
                phone: c[2].clone(),
                email: c[3].clone(),
            });
            let mut client = admin_pb::organisations_client::OrganisationsClient::new(conn.connect().await?);
            let org = client
                .add_organisation(admin_pb::Organisation { id, name, domain: domain.to_string(), coordinator })
                .await
                .map_err(refused)?
                .into_inner();
            println!("organisation {} ({}, {}) registered", org.id, org.name, org.domain);
        }
        OrgCommand::List { conn } => {
            let mut client = admin_pb::organisations_client::OrganisationsClient::new(conn.connect().await?);
            let list = client.list_organisations(admin_pb::ListOrganisationsRequest {}).await.map_err(refused)?;
            let mut out = String::new();
            for o in list.into_inner().organisations {
                let coordinator =
                    o.coordinator.map(|c| format!(" coordinator {} <{}>", c.name, c.email)).unwrap_or_default();
                out.push_str(&format!("{:<32} {:<16} {}{coordinator}\n", o.id, o.domain, o.name));
            }
            emit(&out)?;
        }
    }
    Ok(())
}

pub async fn signal(cmd: SignalCommand) -> anyhow::Result<()> {
    match cmd {
        SignalCommand::Register { conn, bsn, mut parents, dob, removal_date, name, role, phone, email } => {
            let bsn = match bsn {
                Some(b) => b,
                None => {
                    let mut line = String::new();
                    std::io::stdin().lock().read_line(&mut line).context("reading the BSN from standard input")?;
                    let mut words = line.split_whitespace().map(str::to_owned);
                    let child = words.next().unwrap_or_default();
                    parents.extend(words);
                    child
                }
            };
            let mut client = pb::signals_client::SignalsClient::new(conn.connect().await?);
            let resp = client
                .register_signal(pb::RegisterSignalRequest {
                    bsn,
                    date_of_birth: dob,
                    professional: Some(pb::Contact { name, role, phone, email }),
                    removal_date: removal_date.unwrap_or_default(),
                    parent_bsns: parents,
                })
                .await
                .map_err(refused)?
                .into_inner();
            let verb = if resp.created { "registered" } else { "already registered (unchanged)" };
            let signal = resp.signal.context("the node sent no signal")?;
            println!("{verb}: {}", format_signal(&signal));
            if resp.family_lookup == "pending" {
                println!("family matches: the parents are being looked up in the BRP; notices follow");
            }
        }
        SignalCommand::Withdraw { conn, id, reason, by } => {
            let reason = match reason {
                Reason::MadeInError => pb::WithdrawReason::MadeInError,
                Reason::ConcernResolved => pb::WithdrawReason::ConcernResolved,
            };
            let by = match by {
                By::Professional => pb::Withdrawer::Professional,
                By::Coordinator => pb::Withdrawer::Coordinator,
            };
            let mut client = pb::signals_client::SignalsClient::new(conn.connect().await?);
            let resp = client
                .withdraw_signal(pb::WithdrawSignalRequest {
                    signal_id: id.clone(),
                    reason: reason as i32,
                    withdrawn_by: by as i32,
                })
                .await
                .map_err(refused)?;
            println!("signal {id} withdrawn: {}", resp.into_inner().outcome);
        }
        SignalCommand::Show { conn, id } => {
            let mut client = pb::signals_client::SignalsClient::new(conn.connect().await?);
            let s = client.get_signal(pb::GetSignalRequest { signal_id: id }).await.map_err(refused)?;
            print!("{}", format_signal(&s.into_inner()));
        }
    }
    Ok(())
}

pub async fn matches(cmd: MatchesCommand) -> anyhow::Result<()> {
    match cmd {
        MatchesCommand::List { conn } => {
            let mut client = pb::signals_client::SignalsClient::new(conn.connect().await?);
            let list = client.list_matches(pb::ListMatchesRequest {}).await.map_err(refused)?.into_inner();
            let mut out = String::new();
            if list.matches.is_empty() {
                out.push_str("no active matches\n");
            }
            for m in list.matches {
                if !m.counterparts.is_empty() {
                    out.push_str(&format!("your signal {} matches:\n", m.signal_id));
                    for p in &m.counterparts {
                        out.push_str(&format_party(p));
                    }
                }
                if !m.family_counterparts.is_empty() {
                    out.push_str(&format!("your signal {} has a family match with:\n", m.signal_id));
                    for p in &m.family_counterparts {
                        out.push_str(&format_party(p));
                    }
                }
            }
            emit(&out)?;
        }
        MatchesCommand::Watch { conn, after } => {
            let mut client = pb::signals_client::SignalsClient::new(conn.connect().await?);
            let mut stream =
                client.watch(pb::WatchRequest { after_cursor: after }).await.map_err(refused)?.into_inner();
            eprintln!("watching for notices after cursor {after} (Ctrl-C to stop; resume with --after)");
            while let Some(notice) = stream.next().await {
                let notice = notice.map_err(refused)?;
                if !emit(&format_notice(&notice))? {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// Writes a command's output in one go. A reader that has stopped reading (`| head`,
/// `| grep -q`) is not an error: returns false, and the command ends quietly instead of
/// panicking on a broken pipe.
fn emit(text: &str) -> anyhow::Result<bool> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}
