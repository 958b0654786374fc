//! The named chaos scenarios, each over a fixed list of seeds: the real
//! drivers under crashes, silent crashes, partitions, holds and latency,
//! healed and drained, then judged by the history checker. A failure prints
//! the command that replays it.

use sim::scenario::{replay_command, run_scenario};

/// The seeds every scenario runs with in `cargo test`. `sweep` runs many more.
const SEEDS: [u64; 3] = [1, 2, 3];

fn scenario(name: &str) {
    for seed in SEEDS {
        let outcome = run_scenario(name, seed).unwrap_or_else(|e| {
            panic!(
                "{name} seed {seed} did not finish: {e}\nreplay: {}",
                replay_command(name, seed)
            )
        });
        assert!(
            outcome.violations.is_empty(),
            "{name} seed {seed}: {} violation(s):\n{}\nreplay: {}",
            outcome.violations.len(),
            outcome
                .violations
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
            replay_command(name, seed)
        );
    }
}

#[test]
fn new_primary_dies_while_others_unheard() {
    scenario("new_primary_dies_while_others_unheard");
}

#[test]
fn rogue_during_failover() {
    scenario("rogue_during_failover");
}

#[test]
fn primary_crash() {
    scenario("primary_crash");
}

#[test]
fn silent_primary_crash() {
    scenario("silent_primary_crash");
}

#[test]
fn primary_cut_from_rm() {
    scenario("primary_cut_from_rm");
}

#[test]
fn split_brain() {
    scenario("split_brain");
}

#[test]
fn primary_cut_from_backups() {
    scenario("primary_cut_from_backups");
}

#[test]
fn backup_crash() {
    scenario("backup_crash");
}

#[test]
fn rm_crash() {
    scenario("rm_crash");
}

#[test]
fn client_offline_failover() {
    scenario("client_offline_failover");
}

#[test]
fn group_churn_failover() {
    scenario("group_churn_failover");
}

#[test]
fn mix() {
    scenario("mix");
}

#[test]
fn the_same_seed_gives_a_byte_identical_trace() {
    let first = run_scenario("mix", 7).expect("first run");
    let second = run_scenario("mix", 7).expect("second run");
    assert_eq!(first.trace.lines, second.trace.lines);
    assert_eq!(first.trace.digest(), second.trace.digest());
    assert!(
        first.trace.lines.iter().any(|l| l.starts_with("fault at")),
        "faults are part of the trace"
    );
}

#[test]
fn two_seeds_give_different_traces() {
    let a = run_scenario("mix", 7).expect("seed 7");
    let b = run_scenario("mix", 8).expect("seed 8");
    assert_ne!(a.trace.digest(), b.trace.digest());
}

#[test]
fn restart_while_backups_cut_from_rm() {
    scenario("restart_while_backups_cut_from_rm");
}

#[test]
fn slow_network_primary_crash() {
    scenario("slow_network_primary_crash");
}

#[test]
fn rolling_restarts() {
    scenario("rolling_restarts");
}

#[test]
fn paused_primary() {
    scenario("paused_primary");
}

#[test]
fn presence_failover() {
    scenario("presence_failover");
}

#[test]
fn failing_disks() {
    scenario("failing_disks");
}
