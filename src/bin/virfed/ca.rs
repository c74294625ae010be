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
