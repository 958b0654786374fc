//! `peerlink`: run a PeerLink cluster, a client, or a benchmark.
//!
//! `peerlink up` starts a local cluster; `peerlink router` and `peerlink rm`
//! run its parts; `peerlink status` shows its configuration; `peerlink
//! client` is a peer, interactive on a terminal and line-oriented in
//! scripts; `peerlink bench` measures a cluster under load; `peerlink cert` issues
//! TLS certificates for routers on other machines; `peerlink completions`
//! and `peerlink man` generate shell completions and manual pages.
//! `peerlink --help` and `peerlink <command> --help` explain every flag.

mod cli;

/// jemalloc instead of glibc's allocator: routers and the load generator
/// allocate and free a few small buffers per frame on several threads, and
/// glibc's allocator took about 14 % of all CPU under `bench dm`; jemalloc
/// gives 14–25 % more deliveries/s there, for 4–8 MiB more per router
/// (`docs/benchmarks.md`, "jemalloc").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The command line: one subcommand.
#[derive(Debug, Parser)]
#[command(
    name = "peerlink",
    version,
    about = "PeerLink: a message router for peers that address each other by ID",
    long_about = None
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a local cluster on loopback and print how to connect to it.
    Up(cli::up::UpArgs),
    /// Run a router that peers connect to.
    Router(Box<cli::router::RouterArgs>),
    /// Run the replica manager, which decides which router is primary.
    Rm(cli::rm::RmArgs),
    /// Show the cluster's configuration as the replica manager knows it.
    Status(cli::status::StatusArgs),
    /// Connect to a router as a peer: register, send, join groups.
    Client(cli::client::ClientArgs),
    /// Measure a cluster under load: throughput, latency, losses, memory.
    Bench(cli::bench::BenchArgs),
    /// Issue a TLS certificate from the local authority for another machine.
    Cert(cli::cert::CertArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions(cli::docs::CompletionsArgs),
    /// Write manual pages for peerlink and every subcommand.
    Man(cli::docs::ManArgs),
}

fn main() -> ExitCode {
    let args = match cli::config::parse::<Args>(std::env::args_os().collect()) {
        Ok(cli::config::Parsed::Run(args)) => args,
        Ok(cli::config::Parsed::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => e.exit(),
    };
    let default_level = match args.command {
        Command::Router(_) | Command::Up(_) | Command::Rm(_) => "info",
        Command::Status(_) | Command::Cert(_) | Command::Completions(_) | Command::Man(_) => "warn",
        Command::Client(_) | Command::Bench(_) => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, and never with NO_COLOR
        // (https://no-color.org): logs redirected to files stay plain.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("peerlink: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&runtime, async move {
        match args.command {
            Command::Up(args) => cli::up::run(args).await,
            Command::Router(args) => cli::router::run(*args).await,
            Command::Rm(args) => cli::rm::run(args).await,
            Command::Status(args) => cli::status::run(args).await,
            Command::Client(args) => cli::client::run(args).await,
            Command::Bench(args) => cli::bench::run(args).await,
            Command::Cert(args) => cli::cert::run(args).await,
            Command::Completions(args) => cli::docs::completions::<Args>(&args),
            Command::Man(args) => cli::docs::man::<Args>(&args),
        }
    });
    // A read of standard input may still be blocked in a runtime thread;
    // waiting for it would keep a finished client alive.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("peerlink: {e:#}");
            ExitCode::FAILURE
        }
    }
}
