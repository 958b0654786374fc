//! `peerlink up`: a whole local cluster on loopback — a replica manager and
//! three routers, as child processes — for trying PeerLink out.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use peerlink_core::cluster_auth::ClusterKey;
use peerlink_core::wire::cluster::{Configuration, RmReply};

use super::children::{start, Started};
use peerlink_runtime::tls::ProdNetwork;

use super::cluster_key::ClusterKeyArgs;
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
    #[command(flatten)]
    key: ClusterKeyArgs,
    #[command(flatten)]
    tls: ServerTlsArgs,
}

/// The directories `up` keeps its members' state in, under its data
/// directory: the only ones `--fresh` removes.
const MEMBER_DIRS: [&str; 4] = ["rm", "r1", "r2", "r3"];

/// Starts the cluster, prints how to connect, reports every configuration
/// change, and stops everything on Ctrl-C or SIGTERM.
pub(crate) async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
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
        ];
        flags.extend(tls_flags.iter().map(String::as_str));
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
    println!("  peerlink status --rm {rm_addr}{trust}");
    println!("then type REGISTER, and SEND_MSG bob hello. Try `kill -9` on the primary's pid:");
    println!("the clients carry on through the new primary. Ctrl-C here stops everything.");
    println!();
    let outcome = watch(&net, &rm_addr, &key, &mut children).await;
    for started in &mut children {
        let _ = started.child.kill().await;
    }
    outcome?;
    println!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Prints each new configuration until a signal arrives. A child that
/// exits is reported; the rest keep running, as a real cluster would.
async fn watch(
    net: &ProdNetwork,
    rm_addr: &str,
    key: &ClusterKey,
    children: &mut [Started],
) -> anyhow::Result<()> {
    let signal = shutdown::signal();
    tokio::pin!(signal);
    let mut shown: Option<Configuration> = None;
    let mut exited = vec![false; children.len()];
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            biased;
            () = &mut signal => return Ok(()),
            _ = tick.tick() => {}
        }
        for (started, gone) in children.iter_mut().zip(exited.iter_mut()) {
            if !*gone {
                if let Some(status) = started.child.try_wait()? {
                    *gone = true;
                    println!("{} exited ({status})", started.name);
                }
            }
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
