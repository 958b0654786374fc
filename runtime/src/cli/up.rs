//! `peerlink up`: a whole local cluster on loopback — a replica manager and
//! three routers, as child processes — for trying PeerLink out.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use peerlink_core::cluster_auth::ClusterKey;
use peerlink_core::wire::cluster::{Configuration, RmReply};

use super::children::{start, Started};
use peerlink_runtime::tls::ProdNetwork;

use super::cluster_key::ClusterKeyArgs;
use super::router::DirectoryArg;
use super::tls_args::ServerTlsArgs;
use super::{secret, shutdown, status};

/// How many routers `up` starts.
const ROUTERS: u16 = 3;

/// Flags of `peerlink up`.
#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// The first of four consecutive ports: the replica manager listens on
    /// it, routers r1, r2 and r3 on the next three.
    #[arg(long, default_value_t = 8007, value_parser = clap::value_parser!(u16).range(1..=65_532))]
    base_port: u16,
    /// The fewest backups the primary needs to commit (see `peerlink rm
    /// --help`). With three routers, 1 survives any one router's loss.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=2))]
    min_backups: u64,
    /// Where the cluster keeps its state: one directory each for the
    /// replica manager (`rm`) and the routers (`r1`, `r2`, `r3`). Kept when
    /// `up` stops, so the next `up` comes back with every registration,
    /// group and message [default: $XDG_DATA_HOME/peerlink/up-BASE_PORT or
    /// ~/.local/share/peerlink/up-BASE_PORT].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Start empty: remove the state a previous `up` left in the data
    /// directory (its `rm`, `r1`, `r2` and `r3` directories) first.
    #[arg(long)]
    fresh: bool,
    /// Leave a child that crashes stopped (and print the command that
    /// restarts it) instead of restarting it. By default a crashed router
    /// or replica manager is restarted with its data after 0.5 s, doubling
    /// up to 30 s while it keeps crashing within 30 s of its start.
    #[arg(long)]
    no_restart: bool,
    /// Whether peers may list the peer directory (PEERS): `public` or
    /// `private` (see `peerlink router --help`).
    #[arg(long, value_enum, default_value_t = DirectoryArg::Private)]
    directory: DirectoryArg,
    #[command(flatten)]
    key: ClusterKeyArgs,
    #[command(flatten)]
    tls: ServerTlsArgs,
    #[command(flatten)]
    pub(crate) config: super::config::ConfigArgs,
}

/// The directories `up` keeps its members' state in, under its data
/// directory: the only ones `--fresh` removes.
const MEMBER_DIRS: [&str; 4] = ["rm", "r1", "r2", "r3"];

/// Starts the cluster, prints how to connect, reports every configuration
/// change, and stops everything on Ctrl-C or SIGTERM.
pub(crate) async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    args.config.log();
    let exe = std::env::current_exe().context("cannot find the peerlink executable")?;
    let root = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => secret::default_data_dir()?.join(format!("up-{}", args.base_port)),
    };
    if args.fresh {
        for name in MEMBER_DIRS {
            let dir = root.join(name);
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("cannot remove {}", dir.display()));
                }
                _ => {}
            }
        }
    }
    let resumed = MEMBER_DIRS.iter().any(|name| root.join(name).exists());
    let root_text = root.to_str().context("the data directory's path is not UTF-8")?;
    let rm_addr = format!("127.0.0.1:{}", args.base_port);
    let data_dir = format!("{root_text}/rm");
    let data_dir = data_dir.as_str();
    let min_backups = args.min_backups.to_string();
    let key_path = args.key.path()?;
    let key = args.key.load()?;
    let key_path = key_path.to_str().context("the cluster key's path is not UTF-8")?;
    let tls_flags = args.tls.forwarded()?;
    let net = args.tls.trust.network()?;
    let mut rm_flags = vec![
        "rm",
        "--listen",
        &rm_addr,
        "--data-dir",
        data_dir,
        "--min-backups",
        &min_backups,
        "--cluster-key",
        key_path,
    ];
    rm_flags.extend(tls_flags.iter().map(String::as_str));
    let mut commands: Vec<Vec<String>> = vec![rm_flags.iter().map(|f| (*f).to_owned()).collect()];
    let mut children = vec![start(&exe, "rm", &rm_flags).await?];
    let mut addrs = Vec::new();
    for n in 1..=ROUTERS {
        let id = format!("r{n}");
        let addr = format!("127.0.0.1:{}", args.base_port + n);
        let dir = format!("{root_text}/{id}");
        let mut flags = vec![
            "router",
            "--id",
            &id,
            "--listen",
            &addr,
            "--rm",
            &rm_addr,
            "--cluster-key",
            key_path,
            "--data-dir",
            &dir,
            "--directory",
            args.directory.as_str(),
        ];
        flags.extend(tls_flags.iter().map(String::as_str));
        commands.push(flags.iter().map(|f| (*f).to_owned()).collect());
        children.push(start(&exe, &id, &flags).await?);
        addrs.push(addr);
    }
    println!("PeerLink is up on loopback:");
    for started in &children {
        let pid = started.child.id().unwrap_or_default();
        println!("  {:<3} pid {pid}", started.name);
    }
    println!("  replica manager {rm_addr}; routers {}", addrs.join(", "));
    if resumed {
        println!("  state: {root_text} (resumed from the last run; --fresh starts empty)");
    } else {
        println!("  state: {root_text} (kept when up stops; the next up resumes it)");
    }
    println!("  each child's log lines on standard error start with its name");
    println!();
    println!("Connect peers from other terminals, for example:");
    // Clients need the same trust as the cluster: the flags, if any.
    let trust = args.tls.trust.forwarded()?;
    let trust = if trust.is_empty() {
        String::new()
    } else {
        format!(" {}", trust.join(" "))
    };
    for id in ["alice", "bob"] {
        println!("  peerlink client --id {id} --router {}{trust}", addrs.join(","));
    }
    println!("and see the cluster with:");
    println!(
        "  peerlink status --rm {rm_addr} --routers {}{trust}",
        addrs.join(",")
    );
    println!("then type REGISTER, and SEND_MSG bob hello. Try `kill -9` on the primary's pid:");
    if args.no_restart {
        println!("the clients carry on through the new primary. Ctrl-C here stops everything.");
    } else {
        println!("the clients carry on through the new primary, and up restarts the killed router,");
        println!("which comes back with its state. Ctrl-C here stops everything.");
    }
    println!();
    let supervision = Supervision {
        exe,
        restart: !args.no_restart,
    };
    let mut children: Vec<Supervised> = children.into_iter().zip(commands).map(Supervised::new).collect();
    let outcome = watch(&net, &rm_addr, &key, &mut children, &supervision).await;
    for supervised in &mut children {
        if let Some(started) = &mut supervised.running {
            let _ = started.child.kill().await;
        }
    }
    outcome?;
    println!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// How `up` treats a child that exits.
struct Supervision {
    exe: PathBuf,
    /// Whether crashed children are restarted.
    restart: bool,
}

/// A child `up` started: its command, and its current process if it runs.
struct Supervised {
    name: String,
    flags: Vec<String>,
    running: Option<Started>,
    started_at: Instant,
    /// Crashes in a row, each within [`STABLE`] of its start.
    quick_crashes: u32,
    /// When to restart it, once it has crashed.
    restart_at: Option<Instant>,
}

/// A child that ran this long before crashing is restarted after the
/// first back-off again.
const STABLE: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Supervised {
    fn new((started, flags): (Started, Vec<String>)) -> Self {
        Self {
            name: started.name.clone(),
            flags,
            running: Some(started),
            started_at: Instant::now(),
            quick_crashes: 0,
            restart_at: None,
        }
    }

    /// Counts one more quick crash; the wait before the next restart: the
    /// first back-off, doubling with each, up to the most.
    fn next_backoff(&mut self) -> Duration {
        self.quick_crashes += 1;
        FIRST_BACKOFF
            .saturating_mul(1 << (self.quick_crashes - 1).min(10))
            .min(MAX_BACKOFF)
    }

    /// Notices an exit; decides whether and when to restart.
    fn check(&mut self, supervision: &Supervision) -> anyhow::Result<()> {
        let Some(started) = &mut self.running else {
            return Ok(());
        };
        let Some(status) = started.child.try_wait()? else {
            return Ok(());
        };
        self.running = None;
        let command = format!("peerlink {}", self.flags.join(" "));
        if status.success() {
            // It was stopped on purpose (Ctrl-C reaches every child too).
            println!(
                "{} exited ({status}); not restarted: it stopped cleanly",
                self.name
            );
            return Ok(());
        }
        if !supervision.restart {
            println!(
                "{} exited ({status}); not restarted (--no-restart). Restart it with:",
                self.name
            );
            println!("  {command}");
            return Ok(());
        }
        if self.started_at.elapsed() >= STABLE {
            self.quick_crashes = 0;
        }
        let backoff = self.next_backoff();
        println!(
            "{} exited ({status}); restarting it in {:.1} s with its data",
            self.name,
            backoff.as_secs_f64()
        );
        self.restart_at = Some(Instant::now() + backoff);
        Ok(())
    }

    /// Restarts the child if its back-off is over.
    async fn restart_if_due(&mut self, supervision: &Supervision) {
        if self.restart_at.is_none_or(|t| t > Instant::now()) {
            return;
        }
        self.restart_at = None;
        let flags: Vec<&str> = self.flags.iter().map(String::as_str).collect();
        self.started_at = Instant::now();
        match start(&supervision.exe, &self.name, &flags).await {
            Ok(started) => {
                let pid = started.child.id().unwrap_or_default();
                println!("{} restarted (pid {pid})", self.name);
                self.running = Some(started);
            }
            Err(error) => {
                let backoff = self.next_backoff();
                println!(
                    "{} did not restart ({error:#}); trying again in {:.1} s",
                    self.name,
                    backoff.as_secs_f64()
                );
                self.restart_at = Some(Instant::now() + backoff);
            }
        }
    }
}

/// Prints each new configuration until a signal arrives. A child that
/// crashes is reported, and restarted unless `--no-restart`; the rest keep
/// running, as a real cluster would.
async fn watch(
    net: &ProdNetwork,
    rm_addr: &str,
    key: &ClusterKey,
    children: &mut [Supervised],
    supervision: &Supervision,
) -> anyhow::Result<()> {
    let signal = shutdown::signal();
    tokio::pin!(signal);
    let mut shown: Option<Configuration> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            biased;
            () = &mut signal => return Ok(()),
            _ = tick.tick() => {}
        }
        for child in children.iter_mut() {
            child.check(supervision)?;
            child.restart_if_due(supervision).await;
        }
        let Ok(RmReply::Status { config, .. }) = status::query(net, rm_addr, key).await else {
            continue;
        };
        if shown.as_ref() == Some(&config) {
            continue;
        }
        let names = |members: &[peerlink_core::wire::cluster::Member]| -> String {
            let list: Vec<String> = members.iter().map(|m| m.id.to_string()).collect();
            if list.is_empty() {
                "none".to_owned()
            } else {
                list.join(", ")
            }
        };
        match &config.primary {
            Some(primary) => println!(
                "epoch {}: primary {} ({}); backups {}; catching up {}",
                config.epoch,
                primary.id,
                primary.addr,
                names(&config.backups),
                names(&config.candidates)
            ),
            None => println!("epoch {}: no primary yet", config.epoch),
        }
        shown = Some(config);
    }
}
