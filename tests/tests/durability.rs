//! Durability with real processes: whatever a sender saw as Sent survives
//! every process of the cluster being killed at once, and `peerlink up`
//! being stopped and started again.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use peerlink_tests::{client, registered, Cluster, Process, TempDir};

/// The sequence numbers of alice's messages that `alice` printed as Sent.
fn sent_seqs(alice: &Process) -> BTreeSet<u64> {
    alice
        .seen()
        .iter()
        .filter_map(|l| l.strip_prefix("sent alice#"))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Reads what `bob` receives until `wanted` have all arrived, then a little
/// longer; returns the sequence number of every message from alice, in
/// the order received.
fn receive_all(bob: &mut Process, wanted: &BTreeSet<u64>) -> Result<Vec<u64>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let received = |bob: &Process| -> Vec<u64> {
        bob.seen()
            .iter()
            .filter_map(|l| l.strip_prefix("received alice#"))
            .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .collect()
    };
    loop {
        let _ = bob.expect_with("a message", |l| l.starts_with("received alice#"));
        let got = received(bob);
        if wanted.iter().all(|s| got.contains(s)) {
            std::thread::sleep(Duration::from_millis(500));
            bob.drain();
            return Ok(received(bob));
        }
        ensure!(
            Instant::now() < deadline,
            "bob received {} of the {} messages alice saw Sent",
            got.len(),
            wanted.len()
        );
    }
}

/// Every message alice saw Sent arrived exactly once, and in order.
fn check_delivery(received: &[u64], sent: &BTreeSet<u64>) -> Result<()> {
    let unique: BTreeSet<u64> = received.iter().copied().collect();
    ensure!(unique.len() == received.len(), "duplicates among {received:?}");
    let missing: Vec<&u64> = sent.iter().filter(|s| !unique.contains(s)).collect();
    ensure!(missing.is_empty(), "lost messages alice saw Sent: {missing:?}");
    ensure!(
        received.windows(2).all(|w| w[0] < w[1]),
        "out of order: {received:?}"
    );
    Ok(())
}

#[test]
fn every_process_killed_at_once_comes_back_with_everything_acknowledged() -> Result<()> {
    let mut cluster = Cluster::start(3)?;
    let dir = TempDir::new()?;
    let routers = cluster.router_list();
    let mut alice = registered("alice", &routers, dir.path())?;
    let mut bob = registered("bob", &routers, dir.path())?;
    alice.send("CREATE_GROUP team")?;
    alice.expect("group create team")?;
    bob.send("JOIN_GROUP team")?;
    bob.expect("group join team")?;
    bob.kill();
    // Alice streams to offline bob; the power fails in the middle.
    for n in 0..400 {
        alice.send(&format!("SEND_MSG bob m{n}"))?;
    }
    alice.expect_count("sent ", 150)?;
    cluster.kill_rm();
    for i in 1..=3 {
        cluster.kill_router(i);
    }
    alice.kill();
    alice.drain();
    let sent = sent_seqs(&alice);
    eprintln!("alice saw {} messages Sent before the kill", sent.len());

    cluster.restart_rm()?;
    for i in 1..=3 {
        cluster.restart_router_in_place(i)?;
    }
    let status = cluster.wait_for(|s| s.primary().is_some())?;
    eprintln!("after the restart: {status:?}");

    // Registrations survived: another secret cannot claim alice.
    let other = TempDir::new()?;
    let mut mallory = client("alice", &routers, other.path())?;
    mallory.send("REGISTER")?;
    mallory.expect("register_failed code=wrong_secret")?;
    mallory.kill();

    let mut bob = registered("bob", &routers, dir.path())?;
    let received = receive_all(&mut bob, &sent)?;
    check_delivery(&received, &sent)?;
    // The group survived too.
    let mut alice = registered("alice", &routers, dir.path())?;
    alice.send("SEND_MSG team after the restart")?;
    bob.expect("received alice#")?;
    Ok(())
}

/// `peerlink up` with its state in `dir`, on ports from `base`.
fn up(dir: &str, base: u16) -> Result<Process> {
    let mut up = Process::start(
        "up",
        &["up", "--base-port", &base.to_string(), "--data-dir", dir],
        &[],
    )?;
    up.expect_with("the cluster up", |l| {
        l.starts_with("epoch ") && l.contains("backups r")
    })?;
    Ok(up)
}

#[test]
fn up_stopped_with_ctrl_c_and_started_again_keeps_everything() -> Result<()> {
    let base = 40_000 + (std::process::id() % 2_000) as u16 * 4;
    let data = TempDir::new()?;
    let dir = data.path().to_str().context("UTF-8 path")?.to_owned();
    let routers: Vec<String> = (1..=3).map(|n| format!("127.0.0.1:{}", base + n)).collect();
    let routers = routers.join(",");
    let clients = TempDir::new()?;

    let mut first = up(&dir, base)?;
    let mut alice = registered("alice", &routers, clients.path())?;
    let mut bob = registered("bob", &routers, clients.path())?;
    bob.kill();
    for n in 0..50 {
        alice.send(&format!("SEND_MSG bob m{n}"))?;
    }
    alice.expect_count("sent ", 50)?;
    alice.kill();
    let sent = sent_seqs(&alice);
    first.signal("INT")?;
    ensure!(first.wait()?, "up did not stop cleanly on Ctrl-C");

    let mut second = up(&dir, base)?;
    ensure!(
        second
            .seen()
            .iter()
            .any(|l| l.contains("resumed from the last run")),
        "up did not say it resumed: {:?}",
        second.seen()
    );
    let mut bob = registered("bob", &routers, clients.path())?;
    let received = receive_all(&mut bob, &sent)?;
    check_delivery(&received, &sent)?;
    ensure!(received.len() == 50, "bob got {} messages", received.len());
    second.signal("INT")?;
    second.wait()?;

    // --fresh starts empty: alice's registration is gone.
    let mut fresh = Process::start(
        "up",
        &[
            "up",
            "--base-port",
            &base.to_string(),
            "--data-dir",
            &dir,
            "--fresh",
        ],
        &[],
    )?;
    fresh.expect_with("the cluster up", |l| {
        l.starts_with("epoch ") && l.contains("backups r")
    })?;
    let other = TempDir::new()?;
    let mut newcomer = client("alice", &routers, other.path())?;
    newcomer.send("REGISTER")?;
    newcomer.expect("registered alice")?;
    fresh.signal("INT")?;
    fresh.wait()?;
    Ok(())
}

/// The sizes of a router's log files and how many checkpoints it holds.
fn log_and_checkpoints(dir: &std::path::Path) -> Result<(Vec<u64>, usize)> {
    let (mut logs, mut checkpoints) = (Vec::new(), 0);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("log-") {
            logs.push(entry.metadata()?.len());
        } else if name.starts_with("checkpoint-") && !name.ends_with(".tmp") {
            checkpoints += 1;
        }
    }
    Ok((logs, checkpoints))
}

/// Calls `probe` every 50 ms until it returns `Some` or `within` has
/// passed; returns its last answer.
fn poll<T>(within: Duration, mut probe: impl FnMut() -> Result<Option<T>>) -> Result<Option<T>> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = probe()? {
            return Ok(Some(found));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Registers `recipient` and takes it offline, then has `sender` send it
/// `n` messages and waits until every one is Sent; returns the sender.
fn queue_for_offline(
    addr: &str,
    dir: &std::path::Path,
    sender: &str,
    recipient: &str,
    n: usize,
) -> Result<Process> {
    let mut offline = registered(recipient, addr, dir)?;
    offline.kill();
    let mut sending = registered(sender, addr, dir)?;
    for k in 0..n {
        sending.send(&format!(
            "SEND_MSG {recipient} message number {k} to an offline peer"
        ))?;
    }
    sending.expect_count("sent ", n)?;
    Ok(sending)
}

#[test]
fn a_router_checkpoints_as_its_log_grows_and_recovers_from_the_checkpoint() -> Result<()> {
    const CHECKPOINT_BYTES: u64 = 4096;
    let bytes = CHECKPOINT_BYTES.to_string();
    let router = peerlink_tests::Router::start(&["--checkpoint-bytes", &bytes])?;
    let dir = TempDir::new()?;
    let mut alice = queue_for_offline(&router.addr, dir.path(), "alice", "bob", 150)?;
    let sent = sent_seqs(&alice);
    alice.kill();
    // The log only outgrows the threshold by what is appended while the
    // router's checkpoint is on its way; on a loaded machine one may still
    // be on its way when the last Sent arrives, so the disk gets a few
    // seconds to settle within the bound (it never does if nothing cuts
    // the log).
    let within = |logs: &[u64], checkpoints: usize| {
        checkpoints == 1 && logs.len() <= 1 && logs.iter().all(|&len| len < 2 * CHECKPOINT_BYTES)
    };
    let settled = poll(Duration::from_secs(10), || {
        let (logs, checkpoints) = log_and_checkpoints(router.data.path())?;
        Ok(within(&logs, checkpoints).then_some(()))
    })?;
    let (logs, checkpoints) = log_and_checkpoints(router.data.path())?;
    ensure!(
        settled.is_some() && within(&logs, checkpoints),
        "{checkpoints} checkpoints, log files of {logs:?} bytes with --checkpoint-bytes {CHECKPOINT_BYTES}"
    );

    let peerlink_tests::Router {
        mut process, data, ..
    } = router;
    process.kill();
    let data_dir = data.path().to_str().context("non-UTF-8 temp dir")?;
    let args = [
        "router",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data_dir,
        "--checkpoint-bytes",
        &bytes,
    ];
    let mut restarted = Process::start("router", &args, &[])?;
    let addr = peerlink_tests::listening_addr(&mut restarted)?;
    let mut bob = registered("bob", &addr, dir.path())?;
    let received = receive_all(&mut bob, &sent)?;
    check_delivery(&received, &sent)
}

/// Every file of `dir`, with its bytes.
fn files(dir: &std::path::Path) -> Result<std::collections::BTreeMap<String, Vec<u8>>> {
    let mut files = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        files.insert(name, std::fs::read(entry.path())?);
    }
    Ok(files)
}

/// A router whose checkpoint and log do not belong together — here the
/// log of another router, as a botched restore would leave them — refuses
/// to start, says which file and which record, and leaves every file as it
/// was: it neither cuts the log nor starts without what it acknowledged.
#[test]
fn a_router_refuses_a_log_that_does_not_follow_from_its_checkpoint() -> Result<()> {
    let dir = TempDir::new()?;
    let mut data = Vec::new();
    // The first router checkpoints every 4 KiB; the second never does, so
    // its only log starts at LSN 1.
    for (flags, sender, recipient) in [
        (["--checkpoint-bytes", "4096"], "alice", "bob"),
        (["--checkpoint-bytes", "1000000"], "carol", "dave"),
    ] {
        let router = peerlink_tests::Router::start(&flags)?;
        let mut sender_process = queue_for_offline(&router.addr, dir.path(), sender, recipient, 60)?;
        sender_process.kill();
        // The router's checkpoint is written in the background.
        if flags[1] == "4096" {
            let written = poll(peerlink_tests::WAIT, || {
                Ok((log_and_checkpoints(router.data.path())?.1 > 0).then_some(()))
            })?;
            ensure!(
                written.is_some(),
                "no checkpoint: {:?}",
                files(router.data.path())?.keys()
            );
        }
        let peerlink_tests::Router {
            mut process, data: d, ..
        } = router;
        process.kill();
        data.push(d);
    }
    let (first, second) = (data[0].path(), data[1].path());
    // The newest checkpoint, the one recovery starts from: a router killed
    // between a checkpoint's rename and the removal of the one before
    // leaves two (names sort by generation).
    let checkpoint = files(first)?
        .into_keys()
        .rfind(|n| n.starts_with("checkpoint-") && !n.ends_with(".tmp"))
        .context("the first router wrote no checkpoint")?;
    // The log of the checkpoint's generation (there may be none yet).
    let log = checkpoint.replace("checkpoint-", "log-");
    std::fs::copy(second.join("log-00000000000000000000"), first.join(log))?;
    let before = files(first)?;

    let data_dir = first.to_str().context("non-UTF-8 temp dir")?;
    let args = ["router", "--listen", "127.0.0.1:0", "--data-dir", data_dir];
    let mut router = peerlink_tests::command(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let Some(status) = poll(peerlink_tests::WAIT, || Ok(router.try_wait()?))? else {
        router.kill()?;
        anyhow::bail!("the router started on {:?}", before.keys());
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut router.stderr.take().context("stderr")?, &mut stderr)?;
    ensure!(!status.success(), "the router started: {stderr}");
    ensure!(
        stderr.contains("is damaged") && stderr.contains("is numbered 1") && stderr.contains("log-"),
        "unclear error: {stderr}"
    );
    ensure!(files(first)? == before, "the refused directory was changed");
    Ok(())
}
