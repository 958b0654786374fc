//! The TLS flags every command shares, and the [`ProdNetwork`] they make.
//!
//! With no flag, every link is TLS with certificates of the local authority
//! in `DATA_DIR/tls` (created on first use): every `peerlink` process of
//! one user on one machine trusts the others with no setup. Across machines
//! an operator passes `--tls-ca` (and, to processes that listen,
//! `--tls-cert` and `--tls-key`). Plain TCP needs `--insecure`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use peerlink_runtime::certs::{client_config, load_pem_pair, server_config, LocalCa};
use peerlink_runtime::tls::ProdNetwork;

use super::secret;

/// The folder of the local authority, under the data directory.
const LOCAL_CA_DIR: &str = "tls";

/// How a process that only connects (`client`, `status`) protects its
/// links.
#[derive(Debug, Clone, Args)]
pub(crate) struct TlsArgs {
    /// Trust only servers whose certificate this authority signed (PEM)
    /// [default: the local authority in DATA_DIR/tls, created on first use]
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub(crate) tls_ca: Option<PathBuf>,
    /// Plain TCP, no TLS: anyone on the network path can read and change
    /// every message. Every process of the cluster and its clients must
    /// agree.
    #[arg(long)]
    pub(crate) insecure: bool,
}

/// How a process that listens (`router`, `rm`, `up`, `bench`) protects its
/// links.
#[derive(Debug, Clone, Args)]
pub(crate) struct ServerTlsArgs {
    #[command(flatten)]
    pub(crate) trust: TlsArgs,
    /// This process's certificate chain (PEM), for the host names and
    /// addresses others dial. Needs --tls-key and --tls-ca
    /// [default: one issued at start by the local authority for localhost,
    /// 127.0.0.1, ::1 and the hosts this process listens on and advertises]
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "tls_ca"], conflicts_with = "insecure")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
}

/// The local authority of this user, created if missing.
pub(crate) fn local_ca() -> anyhow::Result<LocalCa> {
    let dir = secret::default_data_dir()?.join(LOCAL_CA_DIR);
    LocalCa::load_or_create(&dir)
        .with_context(|| format!("cannot use the local certificate authority in {}", dir.display()))
}

fn warn_insecure() {
    tracing::warn!(
        "--insecure: links are plain TCP; anyone on the network path can read and change every message"
    );
}

impl TlsArgs {
    /// The network of a process that only connects.
    pub(crate) fn network(&self) -> anyhow::Result<ProdNetwork> {
        if self.insecure {
            warn_insecure();
            return Ok(ProdNetwork::insecure());
        }
        Ok(ProdNetwork::tls(self.client_config()?, None))
    }

    fn client_config(&self) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
        let (pem, origin) = match &self.tls_ca {
            Some(path) => (
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read --tls-ca {}", path.display()))?,
                path.display().to_string(),
            ),
            None => {
                let ca = local_ca()?;
                (ca.pem().to_owned(), "the local certificate authority".to_owned())
            }
        };
        client_config(&pem).with_context(|| format!("unusable certificate authority in {origin}"))
    }

    /// The flags that give a child process the same trust.
    pub(crate) fn forwarded(&self) -> anyhow::Result<Vec<String>> {
        let mut flags = Vec::new();
        if self.insecure {
            flags.push("--insecure".to_owned());
        }
        if let Some(path) = &self.tls_ca {
            flags.push("--tls-ca".to_owned());
            flags.push(utf8(path)?);
        }
        Ok(flags)
    }
}

impl ServerTlsArgs {
    /// The network of a process that listens at, and is reached by,
    /// `addrs` (`host:port`; wildcard hosts are skipped).
    pub(crate) fn network(&self, addrs: &[&str]) -> anyhow::Result<ProdNetwork> {
        if self.trust.insecure {
            warn_insecure();
            return Ok(ProdNetwork::insecure());
        }
        let client = self.trust.client_config()?;
        let (chain, key) = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => load_pem_pair(cert, key).with_context(|| {
                format!(
                    "cannot use --tls-cert {} with --tls-key {}",
                    cert.display(),
                    key.display()
                )
            })?,
            _ => local_ca()?
                .issue(&certificate_hosts(addrs))
                .context("the local certificate authority cannot issue a certificate")?,
        };
        let server = server_config(chain, key).context("unusable certificate or key")?;
        Ok(ProdNetwork::tls(client, Some(server)))
    }

    /// The flags that give a child process the same certificates.
    pub(crate) fn forwarded(&self) -> anyhow::Result<Vec<String>> {
        let mut flags = self.trust.forwarded()?;
        for (flag, path) in [("--tls-cert", &self.tls_cert), ("--tls-key", &self.tls_key)] {
            if let Some(path) = path {
                flags.push(flag.to_owned());
                flags.push(utf8(path)?);
            }
        }
        Ok(flags)
    }
}

fn utf8(path: &std::path::Path) -> anyhow::Result<String> {
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// The names a certificate from the local authority carries: the loopback
/// names, and the host of every address in `addrs` that is not a wildcard.
fn certificate_hosts(addrs: &[&str]) -> Vec<String> {
    let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(str::to_owned).to_vec();
    for addr in addrs {
        let host = addr.rsplit_once(':').map_or(*addr, |(host, _)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let wildcard = host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified());
        if !host.is_empty() && !wildcard && !hosts.iter().any(|h| h == host) {
            hosts.push(host.to_owned());
        }
    }
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_name_loopback_and_every_advertised_host_but_wildcards() {
        assert_eq!(
            certificate_hosts(&[
                "0.0.0.0:8008",
                "[::]:1",
                "10.0.0.5:8008",
                "node.example:9",
                "127.0.0.1:0",
                "[fd00::1]:7"
            ]),
            [
                "localhost",
                "127.0.0.1",
                "::1",
                "10.0.0.5",
                "node.example",
                "fd00::1"
            ]
        );
    }
}
