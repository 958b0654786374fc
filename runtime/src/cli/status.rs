//! `peerlink status`: what the replica manager knows of the cluster — or,
//! when it cannot be reached, what each router says of itself.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use peerlink_core::cluster_auth::{ClusterKey, Connector, Nonce};
use peerlink_core::ids::ReqId;
use peerlink_core::wire::cluster::{MemberStatus, RmReply, RmRequest};
use peerlink_core::wire::{decode_as, encode_frame, LineDecoder, ServerFrame, DEFAULT_MAX_FRAME_LEN};
use peerlink_runtime::cluster_link::{self, Authenticated};
use peerlink_runtime::net::Network;
use peerlink_runtime::tls::ProdNetwork;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::cluster_key::ClusterKeyArgs;
use super::shutdown;
use super::tls_args::TlsArgs;

/// Flags of `peerlink status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The replica manager's address (HOST:PORT).
    #[arg(long, default_value = "127.0.0.1:8007")]
    rm: String,
    /// Print the replica manager's answer as one JSON object.
    #[arg(long)]
    json: bool,
    /// Ask again every SECS seconds until Ctrl-C (on a terminal the screen
    /// is redrawn; otherwise each answer follows the last). An unreachable
    /// replica manager is reported and asked again, not fatal.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    watch: Option<u64>,
    /// The routers' client addresses (HOST:PORT,...). When the replica
    /// manager cannot be reached, each router is asked directly whether it
    /// is up and whether it serves clients (the primary) or sends them to
    /// the primary it names.
    #[arg(long, value_delimiter = ',', value_parser = super::client::parse_router)]
    routers: Vec<String>,
    #[command(flatten)]
    key: ClusterKeyArgs,
    #[command(flatten)]
    tls: TlsArgs,
}

/// Asks the replica manager for the cluster's status, once, over `net`,
/// proving with `key` that the asker belongs to the cluster.
pub(crate) async fn query(net: &ProdNetwork, rm: &str, key: &ClusterKey) -> anyhow::Result<RmReply> {
    let exchange = async {
        let stream = net
            .connect(rm)
            .await
            .with_context(|| format!("cannot reach the replica manager at {rm}"))?;
        let connector = Connector::new(key.clone(), None, Nonce(rand::random()));
        let Authenticated {
            mut stream,
            mut buffered,
        } = cluster_link::connect(stream, connector)
            .await
            .with_context(|| format!("the replica manager at {rm} refused this cluster key"))?;
        let mut out = bytes::BytesMut::new();
        encode_frame(&RmRequest::Status { req: ReqId(1) }, &mut out);
        stream.write_all(&out).await?;
        let mut decoder = LineDecoder::new(DEFAULT_MAX_FRAME_LEN);
        let line = loop {
            if let Some(line) = decoder.decode(&mut buffered) {
                break line?;
            }
            if stream.read_buf(&mut buffered).await? == 0 {
                bail!("the replica manager at {rm} closed the connection");
            }
        };
        let reply: RmReply = decode_as(&line)?;
        anyhow::Ok(reply)
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .with_context(|| format!("the replica manager at {rm} did not answer within 5 s"))?
}

/// Prints the status table, once or every `--watch` seconds.
pub(crate) async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let (net, key) = (args.tls.network()?, args.key.load()?);
    let Some(every) = args.watch else {
        return match query(&net, &args.rm, &key).await {
            Ok(reply) => show(&args, reply),
            Err(error) if !args.routers.is_empty() => {
                show_routers(&args, &error, &probe_all(&net, &args.routers).await)?;
                Ok(ExitCode::FAILURE)
            }
            Err(error) => Err(error),
        };
    };
    let redraw = std::io::IsTerminal::is_terminal(&std::io::stdout()) && !args.json;
    let signal = shutdown::signal();
    tokio::pin!(signal);
    let mut tick = tokio::time::interval(Duration::from_secs(every));
    loop {
        tokio::select! {
            biased;
            () = &mut signal => return Ok(ExitCode::SUCCESS),
            _ = tick.tick() => {}
        }
        if redraw {
            // Clear the screen and go home.
            print!("\x1b[2J\x1b[H");
        }
        match query(&net, &args.rm, &key).await {
            Ok(reply) => {
                show(&args, reply)?;
            }
            Err(error) if !args.routers.is_empty() => {
                show_routers(&args, &error, &probe_all(&net, &args.routers).await)?;
                if !args.json {
                    println!("asking again in {every} s");
                }
            }
            Err(error) => println!("{error:#}; asking again in {every} s"),
        }
        if !redraw && !args.json {
            println!();
        }
    }
}

/// Prints one answer of the replica manager.
fn show(args: &StatusArgs, reply: RmReply) -> anyhow::Result<ExitCode> {
    if args.json {
        println!("{}", serde_json::to_string(&reply)?);
        return Ok(ExitCode::SUCCESS);
    }
    let RmReply::Status { config, members, .. } = reply else {
        bail!("unexpected answer from the replica manager: {reply:?}");
    };
    let primary_lsn = members
        .iter()
        .find(|m| m.role == "primary")
        .map_or(0, |m| m.lsn.0);
    println!("epoch {}", config.epoch);
    if config.primary.is_some() && config.below_min_backups() {
        println!(
            "commits wait: {} backup(s), fewer than the minimum of {}; clients are held until a \
             candidate catches up and becomes a backup",
            config.backups.len(),
            config.min_backups
        );
    } else if config.primary.is_none() && !config.backups.is_empty() {
        println!("no primary: waiting for a backup to check in and be promoted");
    }
    // A backup the RM has not heard for its failure timeout is most likely
    // down, and every commit waits for its acknowledgement.
    for backup in &config.backups {
        let heard = members
            .iter()
            .find(|m| m.id == backup.id)
            .and_then(|m| m.last_heartbeat_ms);
        match heard {
            Some(ms) if ms <= config.failure_timeout_ms => {}
            Some(ms) => println!(
                "commits wait: backup {} has not been heard for {ms} ms; they resume when it is back \
                 or a candidate has caught up to replace it",
                backup.id
            ),
            None => println!(
                "commits wait: backup {} has not been heard since the replica manager started",
                backup.id
            ),
        }
    }
    println!(
        "{:<8} {:<10} {:<6} {:<22} {:>10} {:>8} {:>12}",
        "router", "role", "state", "address", "lsn", "lag", "heard"
    );
    for MemberStatus {
        id,
        addr,
        role,
        lsn,
        last_heartbeat_ms,
    } in &members
    {
        let heard = last_heartbeat_ms.map_or("never".to_owned(), |ms| format!("{ms} ms ago"));
        // The RM's own verdict: silent for its failure timeout is down.
        let state = match last_heartbeat_ms {
            Some(ms) if *ms <= config.failure_timeout_ms => "up",
            _ => "down",
        };
        let lag = primary_lsn.saturating_sub(lsn.0);
        println!(
            "{:<8} {:<10} {:<6} {:<22} {:>10} {:>8} {:>12}",
            id, role, state, addr, lsn.0, lag, heard
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// What a router said when asked directly.
#[derive(Debug, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Probe {
    /// It answered a ping: it serves clients (the primary, or standalone).
    Serving,
    /// It sent clients elsewhere: not the primary.
    Redirects {
        /// The primary it named, if it knows one.
        primary: Option<String>,
    },
    /// It could not be reached, or did not answer.
    Unreachable {
        /// Why.
        reason: String,
    },
}

/// How long one router has to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks every router at once.
async fn probe_all(net: &ProdNetwork, routers: &[String]) -> Vec<(String, Probe)> {
    let probes: Vec<_> = routers
        .iter()
        .map(|addr| {
            let (net, addr) = (net.clone(), addr.clone());
            tokio::task::spawn_local(async move { asked(&net, addr).await })
        })
        .collect();
    let mut results = Vec::new();
    for (addr, probe) in routers.iter().zip(probes) {
        let probe = probe.await.unwrap_or_else(|e| Probe::Unreachable {
            reason: format!("the probe failed: {e}"),
        });
        results.push((addr.clone(), probe));
    }
    results
}

/// One router's answer, within [`PROBE_TIMEOUT`].
async fn asked(net: &ProdNetwork, addr: String) -> Probe {
    match tokio::time::timeout(PROBE_TIMEOUT, probe(net, &addr)).await {
        Ok(Ok(probe)) => probe,
        Ok(Err(error)) => Probe::Unreachable {
            reason: format!("{error:#}"),
        },
        Err(_) => Probe::Unreachable {
            reason: format!("no answer within {} s", PROBE_TIMEOUT.as_secs()),
        },
    }
}

/// Connects to a router's client port as a client would and pings it: the
/// primary answers `pong`; any other router answers `redirect`.
async fn probe(net: &ProdNetwork, addr: &str) -> anyhow::Result<Probe> {
    let mut stream = net.connect(addr).await.context("cannot connect")?;
    let mut out = bytes::BytesMut::new();
    encode_frame(
        &peerlink_core::wire::ClientFrame::Ping { req: ReqId(1) },
        &mut out,
    );
    stream.write_all(&out).await?;
    let mut buffered = bytes::BytesMut::new();
    let mut decoder = LineDecoder::new(DEFAULT_MAX_FRAME_LEN);
    let line = loop {
        if let Some(line) = decoder.decode(&mut buffered) {
            break line?;
        }
        if stream.read_buf(&mut buffered).await? == 0 {
            bail!("closed the connection without answering");
        }
    };
    Ok(match decode_as::<ServerFrame>(&line)? {
        ServerFrame::Pong { .. } => Probe::Serving,
        ServerFrame::Redirect { primary } => Probe::Redirects { primary },
        ServerFrame::Closing { code, message } => Probe::Unreachable {
            reason: format!("refused: {code}: {message}"),
        },
        other => bail!("answered {other:?}"),
    })
}

/// Prints what the routers said, after why the replica manager was not
/// asked.
fn show_routers(
    args: &StatusArgs,
    rm_error: &anyhow::Error,
    probes: &[(String, Probe)],
) -> anyhow::Result<()> {
    if args.json {
        let routers: Vec<serde_json::Value> = probes
            .iter()
            .map(|(addr, probe)| {
                let mut value = serde_json::to_value(probe).unwrap_or_default();
                value["addr"] = serde_json::Value::String(addr.clone());
                value
            })
            .collect();
        let value = serde_json::json!({"rm_error": format!("{rm_error:#}"), "routers": routers});
        println!("{value}");
        return Ok(());
    }
    println!("{rm_error:#}; the routers, asked directly:");
    println!("{:<22} {:<12} detail", "address", "state");
    for (addr, probe) in probes {
        let (state, detail) = match probe {
            Probe::Serving => (
                "up",
                "serves clients: the primary (or a standalone router)".to_owned(),
            ),
            Probe::Redirects { primary: Some(p) } => ("up", format!("not the primary; sends clients to {p}")),
            Probe::Redirects { primary: None } => ("up", "not the primary, and knows none".to_owned()),
            Probe::Unreachable { reason } => ("unreachable", reason.clone()),
        };
        println!("{addr:<22} {state:<12} {detail}");
    }
    Ok(())
}
