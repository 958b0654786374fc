//! Child `peerlink` processes started by `up` and `bench`.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A started child process, killed when dropped.
pub(super) struct Started {
    /// What it is called in messages (`rm`, `r1`, ...).
    pub(super) name: String,
    /// The process.
    pub(super) child: Child,
}

/// Starts `peerlink <flags>` and waits for its "listening" line. Every line
/// it logs is copied to this process's standard error prefixed with
/// `name`, so that the logs of several children can be told apart.
pub(super) async fn start(exe: &Path, name: &str, flags: &[&str]) -> anyhow::Result<Started> {
    let log_filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned());
    let mut child = Command::new(exe)
        .args(flags)
        .env("RUST_LOG", log_filter)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    let stderr = child.stderr.take().context("stderr is piped")?;
    let prefix = format!("{name:<3} | ");
    tokio::task::spawn_local(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("{prefix}{line}");
        }
    });
    let stdout = child.stdout.take().context("stdout is piped")?;
    let mut lines = BufReader::new(stdout).lines();
    let listening = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await? {
            if line.contains(" listening on ") {
                return anyhow::Ok(());
            }
        }
        bail!("it exited")
    })
    .await;
    match listening {
        Ok(Ok(())) => Ok(Started {
            name: name.to_owned(),
            child,
        }),
        Ok(Err(e)) => {
            Err(e).with_context(|| format!("{name} did not start (is its port free? try --base-port)"))
        }
        Err(_) => bail!("{name} did not start within 10 s"),
    }
}
