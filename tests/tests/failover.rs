//! Failover with real processes: a replica manager, three routers and three
//! clients; the primary (or the replica manager) is killed with SIGKILL
//! while the clients talk.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use peerlink_tests::{registered, Cluster, Process, TempDir};

const CLIENTS: [&str; 3] = ["c1", "c2", "c3"];
const GROUP: &str = "all";
const ROUNDS: usize = 7;
const PER_ROUND: usize = 50;
/// The round during which the primary is killed.
const KILL_ROUND: usize = 2;

/// The router number of a router name (`r2` → 2).
fn index(name: &str) -> usize {
    name.trim_start_matches('r')
        .parse()
        .expect("routers are named r<N>")
}

/// The addressee of client `sender`'s `n`-th message: every fifth goes to
/// the group, the others to the next client.
fn target(sender: usize, n: usize) -> String {
    if n.is_multiple_of(5) {
        GROUP.to_owned()
    } else {
        CLIENTS[(sender + 1) % CLIENTS.len()].to_owned()
    }
}

/// Who must receive a message from `sender` to `to`.
fn recipients(sender: &str, to: &str) -> Vec<String> {
    if to == GROUP {
        CLIENTS
            .iter()
            .filter(|c| **c != sender)
            .map(|c| c.to_string())
            .collect()
    } else {
        vec![to.to_owned()]
    }
}

/// The words of an event line: `sent c1#4 to=c2` → ("sent", "c1#4", fields).
fn parse(line: &str) -> Option<(&str, &str, BTreeMap<&str, &str>)> {
    let head = line.split(": ").next()?;
    let mut words = head.split(' ');
    let kind = words.next()?;
    let id = words.next()?;
    let fields = words.filter_map(|w| w.split_once('=')).collect();
    Some((kind, id, fields))
}

#[test]
fn killing_the_primary_under_load_loses_nothing_that_was_sent() -> Result<()> {
    let mut cluster = Cluster::start(3)?;
    let first = cluster.status()?;
    let old_primary = first.primary().context("a primary")?;
    let dir = TempDir::new()?;
    let mut clients: Vec<Process> = CLIENTS
        .iter()
        .map(|id| registered(id, &cluster.router_list(), dir.path()))
        .collect::<Result<_>>()?;
    clients[0].send(&format!("CREATE_GROUP {GROUP}"))?;
    clients[0].expect(&format!("group create {GROUP}"))?;
    for client in &mut clients[1..] {
        client.send(&format!("JOIN_GROUP {GROUP}"))?;
        client.expect(&format!("group join {GROUP}"))?;
    }

    let mut killed_at = None;
    for round in 0..ROUNDS {
        for (sender, client) in clients.iter_mut().enumerate() {
            for k in 0..PER_ROUND {
                let n = round * PER_ROUND + k;
                client.send(&format!("SEND_MSG {} m{n}", target(sender, n)))?;
            }
        }
        if round == KILL_ROUND {
            cluster.kill_router(index(&old_primary));
            killed_at = Some(Instant::now());
        }
        for client in &mut clients {
            client.expect_count("sent ", (round + 1) * PER_ROUND)?;
        }
    }
    let killed_at = killed_at.expect("the primary was killed");
    let after = cluster.wait_for(|s| s.primary().is_some_and(|p| p != old_primary))?;

    let new_primary = after.primary().expect("checked");
    ensure!(after.epoch() > first.epoch(), "the epoch moved forward");

    // Every message reaches every recipient; every sender hears Delivered.
    let total = ROUNDS * PER_ROUND;
    let receipts_each = (0..total)
        .map(|n| recipients(CLIENTS[0], &target(0, n)).len())
        .sum::<usize>();
    for client in &mut clients {
        client.expect_count("delivered ", receipts_each)?;
    }

    let mut sent: BTreeMap<String, String> = BTreeMap::new();
    let mut received: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut delivered: BTreeSet<(String, String)> = BTreeSet::new();
    let mut last_seq: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (client, name) in clients.iter_mut().zip(CLIENTS) {
        for line in client.drain().to_vec() {
            let Some((kind, id, fields)) = parse(&line) else {
                continue;
            };
            match kind {
                "sent" => {
                    ensure!(
                        sent.insert(id.to_owned(), fields["to"].to_owned()).is_none(),
                        "Sent twice: {line}"
                    );
                }
                "received" => {
                    *received.entry((name.to_owned(), id.to_owned())).or_default() += 1;
                    let (from, seq) = id.split_once('#').context("ids are sender#seq")?;
                    let seq: u64 = seq.parse()?;
                    let last = last_seq.entry((from.to_owned(), name.to_owned())).or_default();
                    ensure!(seq > *last, "{name} received {id} after {from}#{last}");
                    *last = seq;
                }
                "delivered" => {
                    delivered.insert((id.to_owned(), fields["by"].to_owned()));
                }
                _ => {}
            }
        }
    }
    ensure!(
        sent.len() == CLIENTS.len() * total,
        "every message was Sent: {}",
        sent.len()
    );
    for (id, to) in &sent {
        let sender = id.split('#').next().unwrap_or_default();
        for recipient in recipients(sender, to) {
            let copies = received
                .get(&(recipient.clone(), id.clone()))
                .copied()
                .unwrap_or(0);
            ensure!(copies == 1, "{recipient} received {id} {copies} times");
            ensure!(
                delivered.contains(&(id.clone(), recipient.clone())),
                "no Delivered for {id} to {recipient}"
            );
        }
    }
    ensure!(
        received.values().all(|n| *n == 1),
        "a duplicate reached an application"
    );

    // Failover time: from the kill to the first Sent through the new primary.
    let new_addr = cluster.addrs[index(&new_primary) - 1].clone();
    let first_sent = clients
        .iter()
        .filter_map(|client| {
            let lines = client.seen();
            let at = client.seen_at();
            let connected = (0..lines.len())
                .find(|i| at[*i] >= killed_at && lines[*i] == format!("connected {new_addr}"))?;
            (connected..lines.len())
                .find(|i| lines[*i].starts_with("sent "))
                .map(|i| at[i])
        })
        .min()
        .context("a Sent through the new primary")?;
    println!(
        "failover: {} -> {}, kill to first Sent on the new primary: {} ms",
        old_primary,
        new_primary,
        first_sent.duration_since(killed_at).as_millis()
    );

    // The killed router comes back as a backup and catches up.
    cluster.restart_router(index(&old_primary))?;
    let caught_up = cluster.wait_for(|s| {
        s.backups().contains(&old_primary)
            && s.lsn(&old_primary).is_some()
            && s.lsn(&old_primary) == s.lsn(&new_primary)
    })?;
    println!(
        "{old_primary} rejoined as a backup at LSN {}",
        caught_up.lsn(&old_primary).unwrap_or_default()
    );
    Ok(())
}

#[test]
fn traffic_flows_without_the_replica_manager_and_failover_resumes_after_its_restart() -> Result<()> {
    let mut cluster = Cluster::start(3)?;
    let before = cluster.status()?;
    let primary = before.primary().context("a primary")?;
    let dir = TempDir::new()?;
    let mut alice = registered("alice", &cluster.router_list(), dir.path())?;
    let mut bob = registered("bob", &cluster.router_list(), dir.path())?;

    cluster.kill_rm();
    alice.send("SEND_MSG bob while the rm is down")?;
    alice.expect("sent alice#1 to=bob")?;
    bob.expect("received alice#1 from=alice to=bob: while the rm is down")?;
    alice.expect("delivered alice#1 to=bob by=bob")?;

    cluster.restart_rm()?;
    cluster.wait_for(|s| s.epoch() == before.epoch() && s.primary().as_ref() == Some(&primary))?;
    // Let every router check in with the restarted manager before the kill.
    cluster.wait_for(|s| {
        s.0["members"].as_array().is_some_and(|m| {
            m.iter()
                .all(|m| m["last_heartbeat_ms"].as_u64().is_some_and(|ms| ms < 300))
        })
    })?;
    cluster.kill_router(index(&primary));
    let after = cluster.wait_for(|s| s.primary().is_some_and(|p| p != primary))?;
    ensure!(
        after.epoch() > before.epoch(),
        "epoch {} after the restart is not above {}",
        after.epoch(),
        before.epoch()
    );

    alice.send("SEND_MSG bob after the failover")?;
    alice.expect("sent alice#2 to=bob")?;
    bob.expect("received alice#2 from=alice to=bob: after the failover")?;
    alice.expect("delivered alice#2 to=bob by=bob")?;
    Ok(())
}
