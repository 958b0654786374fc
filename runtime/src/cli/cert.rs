//! `peerlink cert`: a certificate from the local authority for a router or
//! replica manager on another machine, so that a cluster spread over
//! machines is set up with files from one place.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use peerlink_runtime::certs::write_private;

use super::tls_args::local_ca;

/// Flags of `peerlink cert`.
#[derive(Debug, Args)]
#[command(after_help = "\
Writes ca.pem, cert.pem and key.pem into --out. Copy the folder to the machine and start it with
  peerlink router --tls-ca DIR/ca.pem --tls-cert DIR/cert.pem --tls-key DIR/key.pem ...
Clients on other machines need only ca.pem: peerlink client --tls-ca ca.pem ...
Keep key.pem secret: whoever holds it can pose as that host (docs/security.md).")]
pub(crate) struct CertArgs {
    /// A DNS name or IP address the certificate is for (the host others
    /// dial); repeat for several.
    #[arg(long = "host", required = true, value_name = "HOST")]
    hosts: Vec<String>,
    /// A new folder to write the files into.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// Issues the certificate and writes the files.
pub(crate) async fn run(args: CertArgs) -> anyhow::Result<ExitCode> {
    for host in &args.hosts {
        let ip = host.parse::<std::net::IpAddr>().is_ok();
        let dns = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !ip && !dns {
            bail!("--host {host:?} is neither an IP address nor a DNS name");
        }
    }
    if args.out.exists() {
        bail!(
            "{} exists: give a new folder, so that no key is overwritten",
            args.out.display()
        );
    }
    let ca = local_ca()?;
    let (cert, key) = ca
        .issue_pem(&args.hosts)
        .context("the local certificate authority cannot issue a certificate")?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let write = |name: &str, text: &str, private: bool| {
        let path = args.out.join(name);
        let written = if private {
            write_private(&path, text)
        } else {
            std::fs::write(&path, text)
        };
        written.with_context(|| format!("cannot write {}", path.display()))
    };
    write("ca.pem", ca.pem(), false)?;
    write("cert.pem", &cert, false)?;
    write("key.pem", &key, true)?;
    println!(
        "wrote {}/{{ca.pem,cert.pem,key.pem}} for {}",
        args.out.display(),
        args.hosts.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}
