//! `peerlink bench`: puts a workload on a cluster — one it starts on
//! loopback, or one already running — and reports throughput, latency to
//! Sent and to Delivered, messages lost and duplicated (checked against what
//! every recipient received), and the routers' peak memory.

mod cluster;
mod load;
mod peer;
mod report;

use std::cell::RefCell;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use peerlink_core::client::{ClientEvent, Command, GroupOp};
use peerlink_core::ids::{GroupName, PeerId, Secret, Target};
use peerlink_runtime::tls::ProdNetwork;
use tokio::sync::watch;
use tokio::time::Instant;

use cluster::Cluster;
use load::{SendPlan, Tally, Targets, Until};
use peer::Peer;
use report::Report;

use super::tls_args::ServerTlsArgs;

/// The workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Workload {
    /// Every peer sends to uniformly random other peers.
    Dm,
    /// Every member of one group sends to the group.
    Group,
    /// One peer is offline while messages pile up for it; then it returns.
    Drain,
    /// The `dm` load while the primary is killed with SIGKILL.
    Failover,
}

/// The clusters `bench` can start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Spawn {
    /// One router, no replication.
    Standalone,
    /// A replica manager, a primary and `--backups` backups.
    Replicated,
}

/// Flags of `peerlink bench`.
#[derive(Debug, Args)]
#[command(
    after_help = "Prints a human-readable report and then one line of key=value pairs. \
    Exits with status 1 if any acknowledged message was lost or duplicated. \
    Example: peerlink bench dm --spawn replicated --backups 1"
)]
pub(crate) struct BenchArgs {
    /// What to run.
    #[arg(value_enum)]
    workload: Workload,
    /// Load a running cluster at these router addresses instead of starting one.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["spawn", "backups"],
          value_parser = super::client::parse_router)]
    router: Vec<String>,
    /// The cluster to start on loopback (when --router is not given).
    #[arg(long, value_enum, default_value_t = Spawn::Standalone)]
    spawn: Spawn,
    /// Backups of the started replicated cluster [default: 1; 2 for
    /// failover, which needs one left after the kill].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=4))]
    backups: Option<u16>,
    /// The first port of the started cluster (the replica manager's, when
    /// replicated; the routers take the next ones).
    #[arg(long, default_value_t = 18_007, value_parser = clap::value_parser!(u16).range(1..=65_530))]
    base_port: u16,
    /// Peers, each with its own connection (dm, failover).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(2..=10_000))]
    peers: u64,
    /// Messages each sender sends; without it, senders send for --duration.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    messages: Option<u64>,
    /// How long senders send, in seconds, when --messages is not given.
    #[arg(long, default_value_t = 10.0, value_parser = positive_seconds)]
    duration: f64,
    /// Message size in bytes.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    size: u64,
    /// The most messages a sender has issued and not yet seen acknowledged Sent.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1_000))]
    window: u64,
    /// Members of the group (group).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(2..=1_000))]
    group_size: u64,
    /// Messages that pile up for the offline peer (drain).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    drain_messages: u64,
    /// Seconds into the load at which the primary is killed (failover).
    #[arg(long, default_value_t = 3.0, value_parser = positive_seconds)]
    kill_after: f64,
    /// How long, in seconds, to wait after the load for every message to be
    /// received and reported Delivered before counting the rest as lost.
    #[arg(long, default_value_t = 30.0, value_parser = positive_seconds)]
    settle_timeout: f64,
    /// Print a progress line to standard error every second while the
    /// load runs: messages sent, delivered and refused so far, and the rate
    /// of the last second.
    #[arg(long)]
    progress: bool,
    #[command(flatten)]
    tls: ServerTlsArgs,
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds between 0 and 86400")),
    }
}

/// How many backups a replicated cluster gets: `--backups`, or 1 (2 for
/// `failover`, so that a backup remains after the kill).
fn backups(args: &BenchArgs) -> u16 {
    let default = if args.workload == Workload::Failover { 2 } else { 1 };
    args.backups.unwrap_or(default)
}

/// Runs the benchmark and prints its report.
pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let mailbox_limit = match args.workload {
        Workload::Drain => args.drain_messages.max(10_000),
        _ => 10_000,
    };
    let mut cluster = if !args.router.is_empty() {
        if args.workload == Workload::Failover {
            bail!("failover kills the primary, so it needs a cluster bench starts: use --spawn replicated");
        }
        Cluster::external(args.router.clone(), args.tls.trust.network()?)
    } else {
        let exe = std::env::current_exe().context("cannot find the peerlink executable")?;
        match args.spawn {
            Spawn::Standalone if args.workload == Workload::Failover => {
                bail!("failover needs a replicated cluster: use --spawn replicated")
            }
            Spawn::Standalone if args.backups.is_some() => {
                bail!("--backups applies to a replicated cluster: add --spawn replicated")
            }
            Spawn::Standalone => Cluster::standalone(&exe, &args.tls, args.base_port, mailbox_limit).await?,
            Spawn::Replicated => {
                let backups = backups(&args);
                if args.workload == Workload::Failover && backups < 2 {
                    bail!(
                        "failover needs --backups 2 or more: the replica manager lets a primary commit \
                         only with a backup (--min-backups 1), so one must remain after the kill"
                    );
                }
                Cluster::replicated(&exe, &args.tls, args.base_port, backups, mailbox_limit).await?
            }
        }
    };
    let mut report = match args.workload {
        Workload::Dm | Workload::Failover => dm(&args, &mut cluster).await?,
        Workload::Group => group(&args, &cluster).await?,
        Workload::Drain => drain(&args, &cluster).await?,
    };
    report.peak_rss = cluster.peak_router_rss();
    report.setup = setup(&args, &cluster);
    cluster.stop().await;
    report.print();
    Ok(if report.check.lost == 0 && report.check.duplicated == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The `key=value` pairs that describe the run's setup.
fn setup(args: &BenchArgs, cluster: &Cluster) -> Vec<(&'static str, String)> {
    let workload = args.workload.to_possible_value().map(|v| v.get_name().to_owned());
    let spawn = if !args.router.is_empty() {
        "external".to_owned()
    } else if cluster.is_replicated() {
        "replicated".to_owned()
    } else {
        "standalone".to_owned()
    };
    let backups = if cluster.is_replicated() { backups(args) } else { 0 };
    vec![
        ("workload", workload.unwrap_or_default()),
        ("spawn", spawn),
        ("backups", backups.to_string()),
        ("size", args.size.to_string()),
        ("window", args.window.to_string()),
        (
            "tls",
            if cluster.net().is_tls() { "on" } else { "off" }.to_owned(),
        ),
    ]
}

/// A name no earlier run used, so that messages left from one run in a
/// long-lived cluster's mailboxes cannot count in another.
fn run_prefix() -> String {
    format!("bench-{:08x}", rand::random::<u32>())
}

fn secret() -> Secret {
    Secret::new("peerlink-bench").expect("a valid secret")
}

/// Registers `n` peers, one connection each.
async fn register_all(
    net: &ProdNetwork,
    prefix: &str,
    n: u64,
    routers: &[String],
    window: usize,
) -> anyhow::Result<Vec<Peer>> {
    let mut peers = Vec::new();
    for i in 0..n {
        let id = PeerId::new(format!("{prefix}-{i}"))?;
        peers.push(Peer::register(net, id, &secret(), routers, window, i).await?);
    }
    Ok(peers)
}

/// A stop signal raised after `--duration`, unless `--messages` bounds the
/// load (then it never rises).
fn stop_after(args: &BenchArgs) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    if args.messages.is_none() {
        let duration = Duration::from_secs_f64(args.duration);
        tokio::task::spawn_local(async move {
            tokio::time::sleep(duration).await;
            let _ = tx.send(true);
        });
    }
    rx
}

fn ids_of(peers: &[Peer]) -> Vec<PeerId> {
    peers.iter().map(|p| p.id.clone()).collect()
}

fn body(size: u64) -> String {
    "x".repeat(size as usize)
}

/// `dm`, and `failover` (the same load with the primary killed).
async fn dm(args: &BenchArgs, cluster: &mut Cluster) -> anyhow::Result<Report> {
    let prefix = run_prefix();
    let window = args.window as usize;
    let peers = register_all(cluster.net(), &prefix, args.peers, &cluster.addrs(), window).await?;
    let ids = Rc::new(peers.iter().map(|p| p.id.clone()).collect::<Vec<_>>());
    let plan = SendPlan {
        targets: Targets::RandomPeer(ids),
        body: body(args.size),
        window,
        messages: args.messages,
    };
    let tally = Rc::new(RefCell::new(Tally::new(&ids_of(&peers))));
    let peers = peers.into_iter().map(|p| (p, Some(plan.clone()))).collect();
    let stop = stop_after(args);
    let settle = Duration::from_secs_f64(args.settle_timeout);
    let load = load::run(peers, tally.clone(), stop, Until::Settled, settle, args.progress);
    let mut killed = None;
    if args.workload == Workload::Failover {
        let kill = async {
            tokio::time::sleep(Duration::from_secs_f64(args.kill_after)).await;
            let (index, addr) = cluster.primary().await?;
            tally.borrow_mut().fail_over_from(addr.clone());
            cluster.kill(index)?;
            anyhow::Ok(addr)
        };
        let (_, addr) = tokio::join!(load, kill);
        killed = Some(addr?);
    } else {
        load.await;
    }
    let tally = tally.borrow();
    let mut report = Report::from_tally(&tally, args.peers);
    if let Some(addr) = killed {
        let started = tally.failover_started().context("the failover was timed")?;
        report.failover = Some((addr, tally.first_sent_elsewhere.map(|t| t - started)));
    }
    Ok(report)
}

/// `group`: every member of one group sends to it.
async fn group(args: &BenchArgs, cluster: &Cluster) -> anyhow::Result<Report> {
    let prefix = run_prefix();
    let window = args.window as usize;
    let mut peers = register_all(cluster.net(), &prefix, args.group_size, &cluster.addrs(), window).await?;
    let group = GroupName::new(format!("{prefix}-g"))?;
    for (i, peer) in peers.iter_mut().enumerate() {
        let op = if i == 0 { GroupOp::Create } else { GroupOp::Join };
        peer.command(Command::Group(op, group.clone())).await?;
        loop {
            match peer.next_event().await {
                Some(ClientEvent::GroupDone { .. }) => break,
                Some(ClientEvent::GroupFailed { message, .. }) => bail!("{} cannot join: {message}", peer.id),
                Some(_) => {}
                None => bail!("{}'s client stopped", peer.id),
            }
        }
    }
    let members = Rc::new(peers.iter().map(|p| p.id.clone()).collect::<Vec<_>>());
    let plan = SendPlan {
        targets: Targets::Fixed(Target::from(group), members),
        body: body(args.size),
        window,
        messages: args.messages,
    };
    let tally = Rc::new(RefCell::new(Tally::new(&ids_of(&peers))));
    let peers = peers.into_iter().map(|p| (p, Some(plan.clone()))).collect();
    let settle = Duration::from_secs_f64(args.settle_timeout);
    load::run(
        peers,
        tally.clone(),
        stop_after(args),
        Until::Settled,
        settle,
        args.progress,
    )
    .await;
    let tally = tally.borrow();
    Ok(Report::from_tally(&tally, args.group_size))
}

/// `drain`: messages pile up for an offline peer, which then returns.
async fn drain(args: &BenchArgs, cluster: &Cluster) -> anyhow::Result<Report> {
    let prefix = run_prefix();
    let window = args.window as usize;
    let routers = cluster.addrs();
    let mut peers = register_all(cluster.net(), &prefix, 2, &routers, window).await?;
    let recipient = peers.pop().context("two peers")?;
    let sender = peers.pop().context("two peers")?;
    let (recipient_id, sender_id) = (recipient.id.clone(), sender.id.clone());
    recipient.disconnect();
    let plan = SendPlan {
        targets: Targets::Fixed(
            Target::from(recipient_id.clone()),
            Rc::new(vec![recipient_id.clone()]),
        ),
        body: body(args.size),
        window,
        messages: Some(args.drain_messages),
    };
    let tally = Rc::new(RefCell::new(Tally::new(&[
        sender_id.clone(),
        recipient_id.clone(),
    ])));
    let (_stop_tx, stop) = watch::channel(false);
    let settle = Duration::from_secs_f64(args.settle_timeout);
    load::run(
        vec![(sender, Some(plan))],
        tally.clone(),
        stop.clone(),
        Until::Sent,
        settle,
        args.progress,
    )
    .await;
    let piled_up = tally.borrow().check().expected;
    let back = Instant::now();
    let recipient = Peer::register(cluster.net(), recipient_id, &secret(), &routers, window, 1).await?;
    let sender = Peer::register(cluster.net(), sender_id, &secret(), &routers, window, 0).await?;
    let peers = vec![(recipient, None), (sender, None)];
    load::run(peers, tally.clone(), stop, Until::Settled, settle, args.progress).await;
    let tally = tally.borrow();
    let mut report = Report::from_tally(&tally, 2);
    let drained = tally.last_received.map(|t| t - back);
    report.drain = Some((piled_up, drained));
    Ok(report)
}
