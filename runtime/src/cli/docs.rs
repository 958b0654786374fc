//! `peerlink completions` and `peerlink man`: shell completions and manual
//! pages, generated from the same command-line definition as `--help`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory};
use clap_complete::Shell;

/// Flags of `peerlink completions`.
#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for. Install, e.g. for bash:
    /// `peerlink completions bash > ~/.local/share/bash-completion/completions/peerlink`.
    shell: Shell,
}

/// Flags of `peerlink man`.
#[derive(Debug, Args)]
pub(crate) struct ManArgs {
    /// The directory to write `peerlink.1` and one page per subcommand
    /// (`peerlink-router.1`, ...) to; created if missing. Read them with
    /// `man -l DIR/peerlink.1`, or put them in a `man1` directory on your
    /// MANPATH.
    #[arg(long)]
    out: PathBuf,
}

/// Prints the completion script for `args.shell`.
pub(crate) fn completions<C: CommandFactory>(args: &CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut command = C::command();
    clap_complete::generate(args.shell, &mut command, "peerlink", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// Writes the manual pages.
pub(crate) fn man<C: CommandFactory>(args: &ManArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let command = C::command();
    clap_mangen::generate_to(command, &args.out)
        .with_context(|| format!("cannot write the pages to {}", args.out.display()))?;
    println!("manual pages written to {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}
