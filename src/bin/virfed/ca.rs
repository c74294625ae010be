//! `virfed ca`: create a CA, issue, renew and revoke certificates.

use anyhow::Context;
use virfed::pki::{write_cert_pair, Ca, CertSpec, Identity};

use crate::args::{CaCommand, IssueCommand};

pub fn run(cmd: CaCommand) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Init { dir, name, days } => {
            Ca::init(&dir, &name, days)?;
            let crl = Ca::publish_crl(&dir, 30)?;
            println!("CA created in {} (ca.pem, ca.key mode 0600; empty CRL {})", dir.display(), crl.display());
        }
        CaCommand::Renew { dir, cert, out } => {
            let pem = std::fs::read_to_string(&cert).with_context(|| format!("reading {}", cert.display()))?;
            let ca = Ca::load(&dir)?;
            let issued = ca.renew(&pem, out.days)?;
            let stem = match out.stem {
                Some(s) => s,
                None => cert
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .map(|s| format!("{s}-renewed"))
                    .context("certificate file name")?,
            };
            let out_dir = out.out.unwrap_or_else(|| cert.parent().map(|p| p.to_path_buf()).unwrap_or_default());
            let (c, k) = write_cert_pair(&out_dir, &stem, &issued, out.force)?;
            println!("renewed: wrote {} and {} (mode 0600); move them over the old files", c.display(), k.display());
        }
        CaCommand::Revoke { dir, cert, days } => {
            let pem = std::fs::read_to_string(&cert).with_context(|| format!("reading {}", cert.display()))?;
            let crl = Ca::revoke(&dir, &pem, days)?;
            println!("revoked {}; CRL rewritten: {}", cert.display(), crl.display());
        }
        CaCommand::Issue(issue) => {
            let (dir, spec, default_stem, out) = match issue {
                IssueCommand::Client { dir, org, out } => {
                    let spec = CertSpec::client(Identity::Organisation(org.clone()), out.days);
                    (dir, spec, org, out)
                }
                IssueCommand::Operator { dir, name, out } => {
                    let spec = CertSpec::client(Identity::Operator(name.clone()), out.days);
                    (dir, spec, name, out)
                }
                IssueCommand::Node { dir, region, dns, out } => {
                    (dir, CertSpec::node(&region, dns, out.days), region, out)
                }
                IssueCommand::Coordinator { dir, name, out } => {
                    let spec = CertSpec::coordinator(&name, out.days);
                    (dir, spec, name, out)
                }
                IssueCommand::Server { dir, dns, out } => {
                    let stem = dns[0].replace(|c: char| !c.is_ascii_alphanumeric(), "-").to_lowercase();
                    (dir, CertSpec::server(dns, out.days), stem, out)
                }
                IssueCommand::ResyncTicket { dir, region, children, valid_days, out, force } => {
                    return resync_ticket(&dir, &region, children, valid_days, out, force);
                }
            };
            if let Some(identity) = &spec.identity {
                virfed::pki::validate_id(identity.name())?;
            }
            let ca = Ca::load(&dir)?;
            let issued = ca.issue(&spec)?;
            let out_dir = out.out.unwrap_or(dir);
            let stem = out.stem.unwrap_or(default_stem);
            let (cert, key) = write_cert_pair(&out_dir, &stem, &issued, out.force)?;
            println!("wrote {} and {} (mode 0600)", cert.display(), key.display());
        }
    }
    Ok(())
}

/// `virfed ca issue resync-ticket`: writes the ticket (a certificate, no key) to a file.
fn resync_ticket(
    dir: &std::path::Path,
    region: &str,
    children: u64,
    valid_days: u32,
    out: Option<std::path::PathBuf>,
    force: bool,
) -> anyhow::Result<()> {
    let ca = Ca::load(dir)?;
    let pem = ca.issue_resync_ticket(region, children, valid_days)?;
    let path = out.unwrap_or_else(|| dir.join(format!("resync-ticket-{region}.pem")));
    if path.exists() && !force {
        anyhow::bail!("{} exists; choose another --out or pass --force", path.display());
    }
    std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "wrote {}: region {region} may publish up to {children} children in bulk at each peer for {valid_days} days; on that node set [federation] resync_ticket = {:?}",
        path.display(),
        path.display().to_string()
    );
    Ok(())
}
