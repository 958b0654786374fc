//! Safety with real processes: a primary that restarts without its disk
//! while the replica manager cannot hear its backups must not serve — or
//! ship — its empty state; once the backups are back, one is promoted with
//! everything that was acknowledged before.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use peerlink_tests::{client, registered, Cluster, Process, TempDir};

const MESSAGES: usize = 20;

/// The router number of a router name (`r2` → 2).
fn index(name: &str) -> usize {
    name.trim_start_matches('r')
        .parse()
        .expect("routers are named r<N>")
}

/// Waits for alice's messages m0 .. m{n-1} to reach `bob`, in order.
fn receives_in_order(bob: &mut Process, n: usize) -> Result<()> {
    for k in 0..n {
        let line = bob.expect("received alice#")?;
        ensure!(line.ends_with(&format!(": m{k}")), "lost or out of order: {line}");
    }
    Ok(())
}

/// Checks, after a pause for stragglers, that `bob` received exactly `n`
/// messages from alice: none twice.
fn received_exactly(bob: &mut Process, n: usize) -> Result<()> {
    std::thread::sleep(Duration::from_millis(300));
    let from_alice = bob
        .drain()
        .iter()
        .filter(|l| l.starts_with("received alice#"))
        .count();
    ensure!(
        from_alice == n,
        "bob got {from_alice} messages from alice, not {n}"
    );
    Ok(())
}

#[test]
fn a_primary_restarted_without_its_disk_while_its_backups_are_unheard_never_serves_empty() -> Result<()> {
    let mut cluster = Cluster::start(3)?;
    let first = cluster.status()?;
    let primary = first.primary().context("a primary")?;
    let backups: Vec<usize> = first.backups().iter().map(|b| index(b)).collect();
    let dir = TempDir::new()?;
    let routers = cluster.router_list();
    let mut alice = registered("alice", &routers, dir.path())?;
    let mut bob = registered("bob", &routers, dir.path())?;
    alice.send("CREATE_GROUP team")?;
    alice.expect("group create team")?;
    bob.send("JOIN_GROUP team")?;
    bob.expect("group join team")?;
    // Bob goes offline: his mail waits in the replicated mailbox.
    bob.kill();
    for n in 0..MESSAGES {
        alice.send(&format!("SEND_MSG bob m{n}"))?;
    }
    alice.expect_count("sent ", MESSAGES)?;

    // The RM stops hearing both backups; the primary dies and is restarted
    // at once, on its address, with an empty disk.
    for b in &backups {
        cluster.router(*b)?.signal("STOP")?;
    }
    std::thread::sleep(Duration::from_millis(800));
    cluster.kill_router(index(&primary));
    cluster.wipe_router(index(&primary))?;
    cluster.restart_router_in_place(index(&primary))?;

    // It must not serve: no registration succeeds, no role is held.
    let withdrawn = cluster.wait_for(|s| s.primary().is_none())?;
    ensure!(
        withdrawn.epoch() > first.epoch(),
        "the role was withdrawn under a new epoch"
    );
    let restarted_addr = cluster.addrs[index(&primary) - 1].clone();
    let other = TempDir::new()?;
    let mut mallory = client("alice", &restarted_addr, other.path())?;
    mallory.send("REGISTER")?;
    let claimed = mallory.expect_with("a registration", |l| l.starts_with("registered "));
    ensure!(
        claimed.is_err(),
        "the restarted router let a new secret claim alice: {claimed:?}"
    );
    mallory.kill();

    // The backups come back: one of them is promoted, with all the state.
    let resumed_at = Instant::now();
    for b in &backups {
        cluster.router(*b)?.signal("CONT")?;
    }
    let after = cluster.wait_for(|s| s.primary().is_some_and(|p| p != primary))?;
    let new_primary = after.primary().expect("checked");
    ensure!(
        backups.contains(&index(&new_primary)),
        "{new_primary} was not a backup"
    );
    eprintln!(
        "promoted {new_primary} {} ms after the backups resumed",
        resumed_at.elapsed().as_millis()
    );

    let mut bob = registered("bob", &routers, dir.path())?;
    receives_in_order(&mut bob, MESSAGES)?;
    // Registrations and the group survived: bob's secret still works (he
    // registered above) and the group still delivers.
    bob.send("SEND_MSG team hello team")?;
    bob.expect("sent bob#")?;
    alice.expect("received bob#")?;
    received_exactly(&mut bob, MESSAGES)?;
    Ok(())
}

#[test]
fn two_quick_deaths_make_the_cluster_wait_and_a_restart_brings_it_back() -> Result<()> {
    let mut cluster = Cluster::start(3)?;
    let first = cluster.status()?;
    let primary = index(&first.primary().context("a primary")?);
    let backups: Vec<usize> = first.backups().iter().map(|b| index(b)).collect();
    let dir = TempDir::new()?;
    let routers = cluster.router_list();
    let mut alice = registered("alice", &routers, dir.path())?;
    let mut bob = registered("bob", &routers, dir.path())?;
    bob.kill();
    for n in 0..MESSAGES {
        alice.send(&format!("SEND_MSG bob m{n}"))?;
    }
    alice.expect_count("sent ", MESSAGES)?;

    // The primary and a backup die 300 ms apart.
    cluster.kill_router(primary);
    std::thread::sleep(Duration::from_millis(300));
    cluster.kill_router(backups[0]);

    // One copy is left: the cluster takes messages but acknowledges none.
    for n in MESSAGES..2 * MESSAGES {
        alice.send(&format!("SEND_MSG bob m{n}"))?;
    }
    std::thread::sleep(Duration::from_secs(3));
    let sent = alice.drain().iter().filter(|l| l.starts_with("sent ")).count();
    ensure!(
        sent == MESSAGES,
        "{} messages were acknowledged with a single copy",
        sent - MESSAGES
    );
    let waiting = cluster.status()?;
    ensure!(
        waiting.primary().is_some_and(|p| index(&p) == backups[1]),
        "the surviving backup is primary: {waiting:?}"
    );
    let status = peerlink_tests::command(&["status", "--rm", &cluster.rm_addr]).output()?;
    let status = String::from_utf8_lossy(&status.stdout);
    ensure!(
        status.contains("commits wait:"),
        "status does not say why commits wait:\n{status}"
    );

    // One of the dead comes back: it catches up, becomes a backup, and the
    // held answers go out.
    let restarted_at = Instant::now();
    cluster.restart_router(primary)?;
    alice.expect_count("sent ", 2 * MESSAGES)?;
    let resumed = restarted_at.elapsed();
    eprintln!(
        "acknowledgements resumed {} ms after the restart",
        resumed.as_millis()
    );
    // The issue allows 2 s from the end of the catch-up; this counts the
    // catch-up too.
    ensure!(
        resumed < Duration::from_secs(2),
        "service took {resumed:?} to resume after the restart"
    );

    let mut bob = registered("bob", &cluster.router_list(), dir.path())?;
    receives_in_order(&mut bob, 2 * MESSAGES)?;
    received_exactly(&mut bob, 2 * MESSAGES)?;
    Ok(())
}
