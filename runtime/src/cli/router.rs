//! `peerlink router`: a standalone router.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use peerlink_core::ids::ReplicaId;
use peerlink_core::router::directory::Directory;
use peerlink_core::router::replication::ReplicationConfig;
use peerlink_core::router::{Router, RouterConfig};
use peerlink_core::wire::cluster::check_addr;
use peerlink_core::wire::{DEFAULT_MAX_FRAME_LEN, FRAME_OVERHEAD};
use peerlink_runtime::net::{Listener, Network};
use peerlink_runtime::router_driver::{run_router, ClusterPort, Hashing, RouterLimits, DEFAULT_MAX_QUEUED};
use peerlink_runtime::storage::{FileDisk, Storage, Store, DEFAULT_CHECKPOINT_AFTER};

use super::cluster_key::ClusterKeyArgs;
use super::tls_args::ServerTlsArgs;
use super::{secret, shutdown};

/// Flags of `peerlink router`.
#[derive(Debug, Args)]
pub(crate) struct RouterArgs {
    /// This router's name, shown in its logs.
    #[arg(long, default_value = "r1", value_parser = parse_router_id)]
    id: String,
    /// Address to listen on for peers (HOST:PORT; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8008")]
    listen: String,
    /// Close a connection that sends nothing for this many seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    idle_timeout: u64,
    /// The most messages one peer's mailbox holds; further messages to that
    /// peer are refused with `mailbox_full` (never silently dropped).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    mailbox_limit: u64,
    /// The most bytes one peer's mailbox holds, messages and receipts
    /// together (each weighed as its text plus 128 bytes); further messages
    /// to that peer are refused with `mailbox_full`.
    #[arg(long, default_value_t = 64 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..=1 << 40))]
    mailbox_bytes: u64,
    /// The most bytes all mailboxes together hold, weighed the same way;
    /// further messages are refused with `storage_full`.
    #[arg(long, default_value_t = 1024 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..=1 << 44))]
    storage_bytes: u64,
    /// The most groups one peer may create or belong to; more are refused
    /// with `too_many_groups`.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_groups_per_peer: u64,
    /// The most members one group may have; more joins are refused with
    /// `group_full`.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    max_group_members: u64,
    /// Whether registered peers may list every peer ID with PEERS
    /// (`public`), or only look up IDs they already know with WHO
    /// (`private`). A public directory lets any registered peer enumerate
    /// every ID. Every router of a cluster should say the same.
    #[arg(long, value_enum, default_value_t = DirectoryArg::Private)]
    pub(crate) directory: DirectoryArg,
    /// The most peers one session may watch (WATCH); more are refused with
    /// `too_many_watches`.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    max_watches: u64,
    /// The largest frame accepted or sent, in bytes, newline included.
    #[arg(long, default_value_t = DEFAULT_MAX_FRAME_LEN as u64,
          value_parser = clap::value_parser!(u64).range(FRAME_OVERHEAD as u64 * 2..=64 * 1024 * 1024))]
    max_frame_bytes: u64,
    /// The most bytes waiting to be written to one client. A client that
    /// reads so slowly that more would wait is disconnected; what it has not
    /// acknowledged stays in its mailbox. At least --max-frame-bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_QUEUED as u64,
          value_parser = clap::value_parser!(u64).range(1024..=1024 * 1024 * 1024))]
    max_queued_bytes: u64,
    /// The most client connections from one address at once; more are
    /// refused with `busy`, so that one source cannot take every place.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_connections_per_source: u64,
    /// The most client connections at once; more are refused with `busy`.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_connections: u64,
    /// Seed for the salts of stored secrets (default: drawn from the OS).
    #[arg(long)]
    seed: Option<u64>,
    /// Serve metrics (`GET /metrics`, Prometheus text format) and a health
    /// check (`GET /health`) over plain HTTP on this address (HOST:PORT).
    /// Off by default; keep it on a private interface.
    #[arg(long, value_name = "HOST:PORT")]
    admin_listen: Option<std::net::SocketAddr>,
    /// The replica manager's address (HOST:PORT). With it, this router joins
    /// a replicated cluster and the replica manager decides its role;
    /// without it, the router runs standalone.
    #[arg(long)]
    rm: Option<String>,
    /// Join only as a backup: never become the primary of an empty cluster.
    #[arg(long, requires = "rm")]
    backup: bool,
    /// The address clients should use to reach this router [default: the
    /// address it listens on].
    #[arg(long, requires = "rm")]
    advertise: Option<String>,
    /// Address to listen on for the other members of the cluster (HOST:PORT;
    /// port 0 picks a free one). It speaks only the cluster protocol, to
    /// holders of the cluster key; keep it off networks clients use
    /// [default: the host of --listen, port 0].
    #[arg(long, requires = "rm")]
    cluster_listen: Option<String>,
    /// The address other members should use to reach the cluster listener
    /// [default: the address it listens on; for a wildcard, the host of
    /// --advertise].
    #[arg(long, requires = "rm")]
    cluster_advertise: Option<String>,
    #[command(flatten)]
    key: ClusterKeyArgs,
    #[command(flatten)]
    tls: ServerTlsArgs,
    /// Where this router keeps its state (a log and checkpoints): it comes
    /// back with everything after a restart. One directory per router; a
    /// second process is refused it [default:
    /// $XDG_DATA_HOME/peerlink/router-ID or ~/.local/share/peerlink/router-ID].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Write a new checkpoint (and drop the log before it) once the log
    /// has grown by this many bytes; this bounds the disk a router uses to
    /// about twice its state plus this.
    #[arg(long, default_value_t = DEFAULT_CHECKPOINT_AFTER,
          value_parser = clap::value_parser!(u64).range(4096..=1 << 40))]
    checkpoint_bytes: u64,
    /// How often to heartbeat the replica manager, in milliseconds.
    #[arg(long, default_value_t = 100, requires = "rm",
          value_parser = clap::value_parser!(u64).range(10..=10_000))]
    heartbeat_ms: u64,
    /// Ask the replica manager to drop a backup that stays behind for this
    /// many milliseconds.
    #[arg(long, default_value_t = 1000, requires = "rm",
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    ack_timeout_ms: u64,
    #[command(flatten)]
    pub(crate) config: super::config::ConfigArgs,
}

fn parse_router_id(s: &str) -> Result<String, String> {
    peerlink_core::ids::PeerId::new(s)
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

/// Refuses to announce an address that others cannot connect to, or that
/// the replica manager would refuse.
fn check_advertised(
    advertised: &str,
    listen_flag: &str,
    listen: &str,
    advertise_flag: &str,
) -> anyhow::Result<()> {
    if advertised.starts_with("0.0.0.0:") || advertised.starts_with("[::]:") {
        bail!("{listen_flag} {listen} is a wildcard address: say where it is reached with {advertise_flag}");
    }
    check_addr(advertised).map_err(|e| anyhow::anyhow!("{advertise_flag}: {e}"))
}

/// Runs the router until Ctrl-C or SIGTERM.
pub(crate) async fn run(args: RouterArgs) -> anyhow::Result<ExitCode> {
    args.config.log();
    if let Some(addr) = args.admin_listen {
        super::admin::start(addr).await?;
    }
    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => secret::default_data_dir()?.join(format!("router-{}", args.id)),
    };
    let disk = FileDisk::open(&data_dir).with_context(|| format!("cannot use {}", data_dir.display()))?;
    let opened = Store::open(disk, rand::random::<u64>().max(1), args.checkpoint_bytes)?;
    tracing::info!(id = %args.id, dir = %data_dir.display(), "recovered: {}", opened.report);
    let state_id = opened.store.state_id();
    let reached_at: Vec<&str> = [
        Some(&args.listen),
        args.advertise.as_ref(),
        args.cluster_listen.as_ref(),
        args.cluster_advertise.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(String::as_str)
    .collect();
    let net = args.tls.network(&reached_at)?;
    let listener = net
        .bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener
        .local_addr()
        .context("cannot read the listening address")?;
    let mut cluster = None;
    let replication = match &args.rm {
        None => None,
        Some(rm) => {
            let advertise = args.advertise.clone().unwrap_or_else(|| addr.to_string());
            check_advertised(&advertise, "--listen", &args.listen, "--advertise")?;
            let cluster_listen = args
                .cluster_listen
                .clone()
                .unwrap_or_else(|| SocketAddr::new(addr.ip(), 0).to_string());
            let listener = net
                .bind(&cluster_listen)
                .await
                .with_context(|| format!("cannot listen on {cluster_listen}"))?;
            let cluster_addr = listener
                .local_addr()
                .context("cannot read the cluster listening address")?;
            // Listening on every address, the cluster port is reached at the
            // host clients use.
            let cluster_advertise = args.cluster_advertise.clone().unwrap_or_else(|| {
                if cluster_addr.ip().is_unspecified() {
                    let host = advertise
                        .rsplit_once(':')
                        .map_or(advertise.as_str(), |(host, _)| host);
                    format!("{host}:{}", cluster_addr.port())
                } else {
                    cluster_addr.to_string()
                }
            });
            check_advertised(
                &cluster_advertise,
                "--cluster-listen",
                &cluster_listen,
                "--cluster-advertise",
            )?;
            let auth = args.key.auth()?;
            cluster = Some((ClusterPort { listener, auth }, cluster_addr));
            let id = ReplicaId::new(args.id.clone()).context("invalid --id")?;
            let mut replication =
                ReplicationConfig::new(id, advertise, cluster_advertise, rm.clone(), rand::random());
            replication.may_lead = !args.backup;
            replication.state_id = state_id;
            replication.heartbeat_interval = Duration::from_millis(args.heartbeat_ms);
            replication.ack_timeout = Duration::from_millis(args.ack_timeout_ms);
            Some(replication)
        }
    };
    let config = RouterConfig {
        idle_timeout: Duration::from_secs(args.idle_timeout),
        mailbox_limit: args.mailbox_limit as usize,
        mailbox_bytes: usize::try_from(args.mailbox_bytes).context("--mailbox-bytes is too large")?,
        storage_bytes: usize::try_from(args.storage_bytes).context("--storage-bytes is too large")?,
        max_groups_per_peer: args.max_groups_per_peer as usize,
        max_group_members: args.max_group_members as usize,
        max_frame_len: args.max_frame_bytes as usize,
        directory: args.directory.into(),
        max_watches: args.max_watches as usize,
        replication,
        ..RouterConfig::default()
    };
    if args.max_queued_bytes < args.max_frame_bytes {
        bail!(
            "--max-queued-bytes {} is less than --max-frame-bytes {}: one frame would not fit",
            args.max_queued_bytes,
            args.max_frame_bytes
        );
    }
    let limits = RouterLimits {
        max_queued: args.max_queued_bytes as usize,
        max_frame_len: config.max_frame_len,
        max_connections: args.max_connections as usize,
        max_per_source: args.max_connections_per_source as usize,
        connect_timeout: Duration::from_secs(2),
        hashing: Hashing::Workers,
    };
    let router = Router::recover(
        config,
        args.seed.unwrap_or_else(rand::random),
        peerlink_runtime::now(),
        opened.recovered,
    );
    let storage = Storage::thread(opened.store).context("cannot start the storage thread")?;
    // The "listening on" line comes last: `up` and `bench` stop reading
    // the child's output once they have seen it.
    let cluster = cluster.map(|(port, cluster_addr)| {
        println!(
            "router {} listening for cluster members at {cluster_addr}",
            args.id
        );
        port
    });
    println!("router {} keeps its state in {}", args.id, data_dir.display());
    println!("router {} listening on {addr}", args.id);
    match &args.rm {
        Some(rm) => {
            tracing::info!(id = %args.id, %addr, %rm, "router started; the replica manager assigns its role")
        }
        None => tracing::info!(id = %args.id, %addr, "standalone router started"),
    }
    run_router(
        net,
        router,
        listener,
        cluster,
        limits,
        storage,
        shutdown::signal(),
    )
    .await?;
    tracing::info!(id = %args.id, "router stopped");
    Ok(ExitCode::SUCCESS)
}

/// The `--directory` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum DirectoryArg {
    /// Registered peers may list every peer ID (PEERS).
    Public,
    /// Peers are found only by an ID already known (WHO, WATCH).
    Private,
}

impl DirectoryArg {
    /// The flag's value as typed.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DirectoryArg::Public => "public",
            DirectoryArg::Private => "private",
        }
    }
}

impl From<DirectoryArg> for Directory {
    fn from(arg: DirectoryArg) -> Self {
        match arg {
            DirectoryArg::Public => Directory::Public,
            DirectoryArg::Private => Directory::Private,
        }
    }
}
