//! `peerlink router`: a standalone router.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use peerlink_core::router::{Router, RouterConfig};
use peerlink_core::wire::{DEFAULT_MAX_FRAME_LEN, FRAME_OVERHEAD};
use peerlink_runtime::net::{Network, TokioNetwork};
use peerlink_runtime::router_driver::{run_router, RouterLimits};

use super::shutdown;

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
    /// The largest frame accepted or sent, in bytes, newline included.
    #[arg(long, default_value_t = DEFAULT_MAX_FRAME_LEN as u64,
          value_parser = clap::value_parser!(u64).range(FRAME_OVERHEAD as u64 * 2..=64 * 1024 * 1024))]
    max_frame_bytes: u64,
    /// The most client connections at once; more are refused with `busy`.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_connections: u64,
    /// Seed for the salts of stored secrets (default: drawn from the OS).
    #[arg(long)]
    seed: Option<u64>,
}

fn parse_router_id(s: &str) -> Result<String, String> {
    peerlink_core::ids::PeerId::new(s)
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

/// Runs the router until Ctrl-C or SIGTERM.
pub(crate) async fn run(args: RouterArgs) -> anyhow::Result<ExitCode> {
    let listener = TokioNetwork
        .bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener
        .local_addr()
        .context("cannot read the listening address")?;
    let config = RouterConfig {
        idle_timeout: Duration::from_secs(args.idle_timeout),
        mailbox_limit: args.mailbox_limit as usize,
        max_frame_len: args.max_frame_bytes as usize,
        ..RouterConfig::default()
    };
    let limits = RouterLimits {
        max_frame_len: config.max_frame_len,
        max_connections: args.max_connections as usize,
    };
    let router = Router::new(config, args.seed.unwrap_or_else(rand::random));
    println!("router {} listening on {addr}", args.id);
    tracing::info!(id = %args.id, %addr, "router started");
    run_router(router, listener, limits, shutdown::signal()).await;
    tracing::info!(id = %args.id, "router stopped");
    Ok(ExitCode::SUCCESS)
}
