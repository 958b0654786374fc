//! `peerlink up`: a whole local cluster on loopback, for trying PeerLink out.

use std::process::{ExitCode, Stdio};

use anyhow::{bail, Context};
use clap::Args;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::shutdown;

/// Flags of `peerlink up`.
#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// The first port to use; the router listens on it.
    #[arg(long, default_value_t = 8008, value_parser = clap::value_parser!(u16).range(1..))]
    base_port: u16,
}

/// Starts the cluster's processes, prints how to connect, and stops them all
/// on Ctrl-C or SIGTERM.
pub(crate) async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find the peerlink executable")?;
    let addr = format!("127.0.0.1:{}", args.base_port);
    let mut router = Command::new(&exe)
        .args(["router", "--id", "r1", "--listen", &addr])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the router")?;
    let pid = router.id().unwrap_or_default();
    wait_until_listening(&mut router)
        .await
        .with_context(|| format!("router r1 did not start on {addr} (is the port free? try --base-port)"))?;
    println!("PeerLink is up on loopback:");
    println!("  router r1  {addr}  pid {pid}");
    println!();
    println!("Connect peers from other terminals, for example:");
    println!("  peerlink client --id alice --router {addr}");
    println!("  peerlink client --id bob --router {addr}");
    println!("then type REGISTER, and SEND_MSG bob hello. Press Ctrl-C here to stop.");
    tokio::select! {
        biased;
        () = shutdown::signal() => {}
        status = router.wait() => {
            let status = status.context("cannot wait for the router")?;
            bail!("router r1 exited unexpectedly ({status})");
        }
    }
    let _ = router.kill().await;
    println!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Waits for a child router's "listening" line.
async fn wait_until_listening(child: &mut Child) -> anyhow::Result<()> {
    let stdout = child.stdout.take().context("router stdout is piped")?;
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await? {
        if line.contains(" listening on ") {
            return Ok(());
        }
    }
    bail!("the router exited")
}
