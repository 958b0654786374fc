//! `peerlink rm`: the replica manager of a replicated cluster.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use peerlink_core::rm::{ReplicaManager, RmConfig};
use peerlink_core::wire::DEFAULT_MAX_FRAME_LEN;
use peerlink_runtime::net::{Listener, Network};
use peerlink_runtime::rm_driver::{run_rm, ConfigStore, FileStore};

use super::cluster_key::ClusterKeyArgs;
use super::tls_args::ServerTlsArgs;
use super::{secret, shutdown};

/// Flags of `peerlink rm`.
#[derive(Debug, Args)]
pub(crate) struct RmArgs {
    /// Address to listen on for routers (HOST:PORT).
    #[arg(long, default_value = "127.0.0.1:8007")]
    listen: String,
    /// Where the configuration is kept, so a restart never reuses an epoch
    /// [default: $XDG_DATA_HOME/peerlink/rm or ~/.local/share/peerlink/rm].
    #[arg(long, env = "PEERLINK_RM_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Promote a backup when the primary has been silent this many
    /// milliseconds. Every configuration carries it to the routers, which
    /// derive their primary lease (60 %) and their patience with silent
    /// links and lagging backups from it. On a slow network keep it above
    /// twice the worst round trip (docs/operations.md, "Slow networks").
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(50..=600_000))]
    failure_timeout_ms: u64,
    /// The fewest backups a primary needs to commit. With fewer, clients
    /// wait (nothing is acknowledged in a single copy) until a router has
    /// caught up and become a backup. 0 lets a lone primary acknowledge what
    /// its crash would lose.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=16))]
    min_backups: u64,
    /// Serve metrics (`GET /metrics`, Prometheus text format) and a health
    /// check (`GET /health`) over plain HTTP on this address (HOST:PORT).
    /// Off by default; keep it on a private interface.
    #[arg(long, value_name = "HOST:PORT")]
    admin_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    key: ClusterKeyArgs,
    #[command(flatten)]
    tls: ServerTlsArgs,
    #[command(flatten)]
    pub(crate) config: super::config::ConfigArgs,
}

/// Runs the replica manager until Ctrl-C or SIGTERM.
pub(crate) async fn run(args: RmArgs) -> anyhow::Result<ExitCode> {
    args.config.log();
    if let Some(addr) = args.admin_listen {
        super::admin::start(addr).await?;
    }
    let dir = match args.data_dir {
        Some(dir) => dir,
        None => secret::default_data_dir()?.join("rm"),
    };
    let mut store =
        FileStore::open(&dir).with_context(|| format!("cannot use {} for data", dir.display()))?;
    let restored = store.load().context("cannot load the saved configuration")?;
    let auth = args.key.auth()?;
    let listener = args
        .tls
        .network(&[&args.listen])?
        .bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener
        .local_addr()
        .context("cannot read the listening address")?;
    let min_backups = usize::try_from(args.min_backups).context("--min-backups is too large")?;
    let config = RmConfig::new(Duration::from_millis(args.failure_timeout_ms), min_backups);
    println!("rm listening on {addr}");
    tracing::info!(
        %addr, data = %dir.display(), epoch = %restored.epoch, min_backups = config.min_backups,
        "replica manager started"
    );
    let rm = ReplicaManager::new(config, restored, peerlink_runtime::now());
    run_rm(
        rm,
        listener,
        auth,
        store,
        DEFAULT_MAX_FRAME_LEN,
        shutdown::signal(),
    )
    .await;
    Ok(ExitCode::SUCCESS)
}
