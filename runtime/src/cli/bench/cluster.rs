//! The cluster `bench` loads: one it starts on loopback (a standalone
//! router, or a replica manager with a primary and backups, as child
//! processes), or one already running.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use peerlink_core::cluster_auth::ClusterKey;
use peerlink_core::wire::cluster::RmReply;

use peerlink_runtime::tls::ProdNetwork;

use super::super::children::{start, Started};
use super::super::status;
use super::super::tls_args::ServerTlsArgs;

/// How long a started cluster may take to form.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// A router of the cluster.
pub(super) struct RouterProcess {
    /// Its address.
    pub(super) addr: String,
    /// The process, when `bench` started it.
    process: Option<Started>,
    /// Its peak resident set size (bytes), read just before it was killed.
    peak_rss_at_kill: Option<u64>,
}

/// The cluster under load.
pub(super) struct Cluster {
    routers: Vec<RouterProcess>,
    /// The replica manager's address and process, and the cluster's key.
    rm: Option<(String, Started, ClusterKey)>,
    scratch: Option<PathBuf>,
    /// How the bench's peers (and its status queries) connect.
    net: ProdNetwork,
}

impl Cluster {
    /// A cluster already running at `addrs`, reached over `net`; `bench`
    /// neither starts nor kills it, and cannot read its memory use.
    pub(super) fn external(addrs: Vec<String>, net: ProdNetwork) -> Self {
        let routers = addrs
            .into_iter()
            .map(|addr| RouterProcess {
                addr,
                process: None,
                peak_rss_at_kill: None,
            })
            .collect();
        Self {
            routers,
            rm: None,
            scratch: None,
            net,
        }
    }

    /// How the bench's peers connect to the cluster.
    pub(super) fn net(&self) -> &ProdNetwork {
        &self.net
    }

    /// Starts one router without replication on `base_port`, with the TLS
    /// settings of `tls`.
    pub(super) async fn standalone(
        exe: &Path,
        tls: &ServerTlsArgs,
        base_port: u16,
        mailbox_limit: u64,
    ) -> anyhow::Result<Self> {
        let addr = format!("127.0.0.1:{base_port}");
        let limit = mailbox_limit.to_string();
        let scratch = scratch_dir()?;
        let dir = scratch.join("r1");
        let dir = dir.to_str().context("the temporary directory is not UTF-8")?;
        let mut flags = vec![
            "router",
            "--id",
            "r1",
            "--listen",
            &addr,
            "--mailbox-limit",
            &limit,
            "--data-dir",
            dir,
        ];
        let tls_flags = tls.forwarded()?;
        flags.extend(tls_flags.iter().map(String::as_str));
        let process = start(exe, "r1", &flags).await?;
        Ok(Self {
            routers: vec![RouterProcess {
                addr,
                process: Some(process),
                peak_rss_at_kill: None,
            }],
            rm: None,
            scratch: Some(scratch),
            net: tls.trust.network()?,
        })
    }

    /// Starts a replica manager on `base_port` and `1 + backups` routers on
    /// the ports after it, all with the TLS settings of `tls`, and waits
    /// until the first is primary and every other one a backup.
    pub(super) async fn replicated(
        exe: &Path,
        tls: &ServerTlsArgs,
        base_port: u16,
        backups: u16,
        mailbox_limit: u64,
    ) -> anyhow::Result<Self> {
        let scratch = scratch_dir()?;
        let rm_addr = format!("127.0.0.1:{base_port}");
        let data_dir = scratch.join("rm");
        let data_dir = data_dir
            .to_str()
            .context("the temporary directory is not UTF-8")?;
        // A cluster of its own, with a key of its own.
        let key = ClusterKey::new(rand::random::<[u8; 32]>().to_vec()).expect("32 bytes make a key");
        let key_path = scratch.join("cluster.key");
        std::fs::write(&key_path, key.to_hex())
            .with_context(|| format!("cannot write {}", key_path.display()))?;
        let key_path = key_path
            .to_str()
            .context("the temporary directory is not UTF-8")?
            .to_owned();
        let tls_flags = tls.forwarded()?;
        let mut rm_flags = vec![
            "rm",
            "--listen",
            &rm_addr,
            "--data-dir",
            data_dir,
            "--cluster-key",
            &key_path,
        ];
        rm_flags.extend(tls_flags.iter().map(String::as_str));
        let rm = start(exe, "rm", &rm_flags).await?;
        let mut cluster = Self {
            routers: Vec::new(),
            rm: Some((rm_addr.clone(), rm, key)),
            scratch: Some(scratch.clone()),
            net: tls.trust.network()?,
        };
        let cluster_scratch = scratch;
        let limit = mailbox_limit.to_string();
        for n in 1..=1 + backups {
            let id = format!("r{n}");
            let addr = format!("127.0.0.1:{}", base_port + n);
            let dir = cluster_scratch.join(&id);
            let dir = dir.to_str().context("the temporary directory is not UTF-8")?;
            let mut flags = vec![
                "router",
                "--data-dir",
                dir,
                "--id",
                &id,
                "--listen",
                &addr,
                "--rm",
                &rm_addr,
                "--mailbox-limit",
                &limit,
                "--cluster-key",
                &key_path,
            ];
            flags.extend(tls_flags.iter().map(String::as_str));
            let process = start(exe, &id, &flags).await?;
            cluster.routers.push(RouterProcess {
                addr,
                process: Some(process),
                peak_rss_at_kill: None,
            });
            if n == 1 {
                cluster.wait_for(0).await?;
            }
        }
        cluster.wait_for(usize::from(backups)).await?;
        Ok(cluster)
    }

    /// Waits until the replica manager reports a primary and `backups`
    /// backups.
    async fn wait_for(&self, backups: usize) -> anyhow::Result<()> {
        let Some((rm_addr, _, key)) = &self.rm else {
            return Ok(());
        };
        let deadline = tokio::time::Instant::now() + FORM_TIMEOUT;
        loop {
            if let Ok(RmReply::Status { config, .. }) = status::query(&self.net, rm_addr, key).await {
                if config.primary.is_some() && config.backups.len() == backups {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "the cluster did not form within {} s (a primary and {backups} backups)",
                    FORM_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every router's address, in the order they were started (or given).
    pub(super) fn addrs(&self) -> Vec<String> {
        self.routers.iter().map(|r| r.addr.clone()).collect()
    }

    /// Whether `bench` started this cluster with a replica manager.
    pub(super) fn is_replicated(&self) -> bool {
        self.rm.is_some()
    }

    /// The primary's index and address, as the replica manager reports it.
    pub(super) async fn primary(&self) -> anyhow::Result<(usize, String)> {
        let (rm_addr, _, key) = self.rm.as_ref().context("this cluster has no replica manager")?;
        let RmReply::Status { config, .. } = status::query(&self.net, rm_addr, key).await? else {
            bail!("the replica manager answered something other than its status");
        };
        let primary = config.primary.context("the cluster has no primary")?;
        let index = self
            .routers
            .iter()
            .position(|r| r.addr == primary.addr)
            .with_context(|| format!("the primary {} is not a router bench started", primary.addr))?;
        Ok((index, primary.addr))
    }

    /// Kills router `index` with SIGKILL, recording its peak memory first.
    pub(super) fn kill(&mut self, index: usize) -> anyhow::Result<()> {
        let router = &mut self.routers[index];
        let process = router
            .process
            .as_mut()
            .context("bench did not start this router")?;
        router.peak_rss_at_kill = process.child.id().and_then(peak_rss);
        process.child.start_kill().context("cannot kill the primary")?;
        Ok(())
    }

    /// The largest peak resident set size of any router `bench` started, in
    /// bytes; `None` for a cluster it did not start (or off Linux).
    pub(super) fn peak_router_rss(&self) -> Option<u64> {
        self.routers
            .iter()
            .filter_map(|r| {
                let live = r.process.as_ref()?.child.id().and_then(peak_rss);
                live.into_iter().chain(r.peak_rss_at_kill).max()
            })
            .max()
    }
}

impl Cluster {
    /// Kills every process `bench` started and waits until each is gone,
    /// so that its ports are free for whatever runs next.
    pub(super) async fn stop(&mut self) {
        let processes = self
            .routers
            .iter_mut()
            .filter_map(|r| r.process.as_mut())
            .chain(self.rm.as_mut().map(|(_, rm, _)| rm));
        for started in processes {
            let _ = started.child.kill().await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The children are killed as their handles drop; then the scratch.
        self.routers.clear();
        self.rm = None;
        if let Some(scratch) = &self.scratch {
            let _ = std::fs::remove_dir_all(scratch);
        }
    }
}

/// A process's peak resident set size in bytes (`VmHWM`), from Linux's
/// `/proc`.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A new, empty directory for one benchmark run's members, removed with the
/// cluster.
fn scratch_dir() -> anyhow::Result<PathBuf> {
    let scratch = std::env::temp_dir().join(format!("peerlink-bench-{}", std::process::id()));
    // A run killed earlier may have left one with the same process ID.
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).with_context(|| format!("cannot create {}", scratch.display()))?;
    Ok(scratch)
}
