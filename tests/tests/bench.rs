//! `peerlink bench` against a running router and against a cluster it
//! starts itself, with the primary killed: it runs, checks every delivery,
//! and says so in its `key=value` line.

use anyhow::{Context, Result};
use peerlink_tests::{Process, Router};

/// The value of `key` in the `key=value` line `line`.
fn value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

/// Runs `peerlink bench args` to its end; returns its exit status and the
/// `key=value` line.
fn bench(args: &[&str]) -> Result<(bool, String)> {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    let mut process = Process::start("bench", &all, &[])?;
    let succeeded = process.wait()?;
    let line = process.seen().last().cloned().unwrap_or_default();
    Ok((succeeded, line))
}

#[test]
fn dm_against_a_running_router_checks_every_delivery() -> Result<()> {
    let router = Router::start(&[])?;
    let (succeeded, line) = bench(&["dm", "--router", &router.addr, "--peers", "4", "--duration", "1"])?;
    assert!(succeeded, "bench failed: {line}");
    let deliveries: u64 = value(&line, "deliveries").context("deliveries")?.parse()?;
    assert!(deliveries > 0, "{line}");
    assert_eq!(value(&line, "sent"), value(&line, "deliveries"), "{line}");
    assert_eq!(value(&line, "lost"), Some("0"), "{line}");
    assert_eq!(value(&line, "duplicated"), Some("0"), "{line}");
    assert_eq!(value(&line, "spawn"), Some("external"), "{line}");
    Ok(())
}

#[test]
fn failover_on_a_cluster_bench_starts_loses_nothing() -> Result<()> {
    let args = [
        "failover",
        "--spawn",
        "replicated",
        "--backups",
        "2",
        "--base-port",
        "28007",
        "--peers",
        "4",
        "--duration",
        "3",
        "--kill-after",
        "1",
    ];
    let (succeeded, line) = bench(&args)?;
    assert!(succeeded, "bench failed: {line}");
    let first_sent: u64 = value(&line, "failover_first_sent_ms")
        .context("failover_first_sent_ms")?
        .parse()
        .with_context(|| format!("no Sent after the kill: {line}"))?;
    assert!(first_sent < 5_000, "{line}");
    assert_eq!(value(&line, "lost"), Some("0"), "{line}");
    let rss: f64 = value(&line, "router_peak_rss_mib").context("rss")?.parse()?;
    assert!(rss > 0.0, "{line}");
    Ok(())
}

#[test]
fn contradictory_flags_are_refused() -> Result<()> {
    for args in [
        &["failover"][..],
        &["dm", "--backups", "2"],
        &["dm", "--peers", "1"],
        &["failover", "--spawn", "replicated", "--backups", "1"],
    ] {
        let (succeeded, line) = bench(args)?;
        assert!(!succeeded, "bench {args:?} ran: {line}");
    }
    Ok(())
}

#[test]
fn progress_lines_report_the_load_while_it_runs() -> Result<()> {
    let router = Router::start(&[])?;
    let output = peerlink_tests::command(&[
        "bench",
        "dm",
        "--router",
        &router.addr,
        "--peers",
        "2",
        "--duration",
        "2.5",
        "--progress",
    ])
    .output()?;
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(" sent/s")).collect();
    assert!(lines.len() >= 2, "{stderr}");
    assert!(
        lines[0].starts_with('[') && lines[0].contains("sent "),
        "{stderr}"
    );
    Ok(())
}
