//! Proof that the checker catches real bugs: each test switches on one
//! deliberate bug (feature `planted-bugs`) and asserts that some seed within
//! a small budget makes the checker report the violation that bug causes.
//! Run with `cargo test -p sim --features planted-bugs --test planted`.

use std::time::Duration;

use peerlink_core::bugs::Bugs;
use sim::checker::{self, Violation};
use sim::cluster::{self, RunConfig};
use sim::faults::{Action, Fault, Trigger, Victim, CLIENTS, ROUTERS};
use sim::scenario;

/// How many seeds each bug gets to show itself.
const BUDGET: u64 = 6;

/// Runs `config` for each seed in the budget until the checker reports a
/// violation `expected` accepts; returns the seed.
fn caught(bugs: Bugs, config: impl Fn(u64) -> RunConfig, expected: impl Fn(&Violation) -> bool) -> u64 {
    let mut seen = Vec::new();
    for seed in 1..=BUDGET {
        let mut run = config(seed);
        run.bugs = bugs;
        let (trace, observed) = cluster::run(&run).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let mut violations = checker::check(&trace.history);
        violations.extend(checker::check_cluster(&observed.events()));
        if violations.iter().any(&expected) {
            return seed;
        }
        seen.push((seed, violations));
    }
    panic!("the checker missed the bug in {BUDGET} seeds; it reported: {seen:#?}");
}

fn named(name: &'static str) -> impl Fn(u64) -> RunConfig {
    move |seed| scenario::config(name, seed).expect("a known scenario")
}

/// A recipient is offline; the primary is cut off from its backups and then
/// vanishes: the backup promoted in its place has only what was replicated.
fn cut_then_vanish(seed: u64) -> RunConfig {
    let mut run = RunConfig::new(seed, Vec::new());
    let offline = Action::Partition {
        a: Victim::Named(CLIENTS[2]),
        b: ROUTERS.iter().map(|r| Victim::Named(r)).collect(),
        oneway: false,
        duration: Duration::from_secs(10),
    };
    run.plan.push(Fault {
        at: Duration::from_secs(3),
        trigger: Trigger::Now,
        delay: Duration::ZERO,
        action: offline,
    });
    let cut = Action::Partition {
        a: Victim::Primary,
        b: vec![Victim::NotPrimary(0), Victim::NotPrimary(1)],
        oneway: false,
        duration: Duration::from_secs(6),
    };
    run.plan.push(Fault {
        at: Duration::from_secs(4),
        trigger: Trigger::Now,
        delay: Duration::ZERO,
        action: cut,
    });
    let vanish = Action::SilentCrash {
        host: Victim::Primary,
        down: Duration::from_secs(3),
    };
    run.plan.push(Fault {
        at: Duration::from_secs(6),
        trigger: Trigger::Now,
        delay: Duration::ZERO,
        action: vanish,
    });
    run
}

/// The lease alone keeps a deposed primary from serving in `split_brain`
/// (it is cut off from the RM while its backups hear it), so this bug is
/// planted with the lease switched off as well: the epoch fence is then the
/// only one left.
#[test]
fn a_backup_accepting_an_old_epoch_is_caught() {
    let bugs = Bugs {
        backup_accepts_old_epoch: true,
        primary_ignores_lease: true,
        ..Bugs::default()
    };
    caught(bugs, named("split_brain"), |v| {
        matches!(v, Violation::DeposedCommit { .. })
    });
}

#[test]
fn acknowledging_sent_before_replication_loses_messages() {
    let bugs = Bugs {
        sent_before_replication: true,
        ..Bugs::default()
    };
    caught(bugs, cut_then_vanish, |v| matches!(v, Violation::Lost { .. }));
}

#[test]
fn a_recipient_that_does_not_deduplicate_is_caught() {
    let bugs = Bugs {
        recipient_keeps_duplicates: true,
        ..Bugs::default()
    };
    // Crashes one after another redeliver the most: acknowledgements lost
    // with a primary are redelivered by its successor.
    caught(bugs, named("rolling_crashes"), |v| {
        matches!(v, Violation::Duplicated { .. })
    });
}

#[test]
fn an_acknowledgement_that_runs_ahead_of_the_client_is_caught() {
    let bugs = Bugs {
        client_acks_ahead: true,
        ..Bugs::default()
    };
    // The item after the one received is often still on the wire when the
    // router takes the range: its sender hears Delivered before the
    // recipient has it (and a crash in between loses it).
    caught(bugs, named("rolling_crashes"), |v| {
        matches!(v, Violation::DeliveredWithoutReceipt { .. })
    });
}

#[test]
fn delivered_on_router_enqueue_is_caught() {
    let bugs = Bugs {
        delivered_on_enqueue: true,
        ..Bugs::default()
    };
    caught(bugs, named("client_offline_failover"), |v| {
        matches!(v, Violation::DeliveredWithoutReceipt { .. })
    });
}

#[test]
fn a_mailbox_that_drops_its_oldest_message_is_caught() {
    let small_mailboxes = |seed| {
        let mut run = scenario::config("client_offline_failover", seed).expect("a known scenario");
        run.mailbox_limit = 5;
        run
    };
    let bugs = Bugs {
        mailbox_drops_oldest: true,
        ..Bugs::default()
    };
    caught(bugs, small_mailboxes, |v| matches!(v, Violation::Lost { .. }));
}

#[test]
fn a_restarted_primary_keeping_its_role_is_caught() {
    let bugs = Bugs {
        restarted_primary_keeps_role: true,
        ..Bugs::default()
    };
    caught(bugs, named("restart_while_backups_cut_from_rm"), |v| {
        matches!(v, Violation::StateLost { .. } | Violation::Lost { .. })
    });
}

/// Both backups of r1 (the first primary: it checks in first) restart
/// without their disks, one at a time, and neither can reach r1 to catch
/// up: r1 is left with no backup while the clients keep sending.
fn backups_restart_out_of_reach(seed: u64) -> RunConfig {
    let mut run = RunConfig::new(seed, Vec::new());
    let cut_from_r1 = |host| Action::Partition {
        a: Victim::Named(host),
        b: vec![Victim::Named("r1")],
        oneway: false,
        duration: Duration::from_secs(4),
    };
    let restart = |host| Action::CrashWipingDisk {
        host: Victim::Named(host),
        down: Duration::from_millis(500),
    };
    let faults = [
        (2_500, restart("r2")),
        (2_900, cut_from_r1("r2")),
        (6_100, restart("r3")),
        (6_500, cut_from_r1("r3")),
    ];
    for (ms, action) in faults {
        run.plan.push(Fault {
            at: Duration::from_millis(ms),
            trigger: Trigger::Now,
            delay: Duration::ZERO,
            action,
        });
    }
    run
}

/// The checker reads every commit's backing (how many backups hold it)
/// from the routers' trace, so a primary that commits alone is caught even
/// when no crash follows to lose what it acknowledged.
#[test]
fn committing_below_the_minimum_of_backups_is_caught() {
    let bugs = Bugs {
        commit_below_min_backups: true,
        ..Bugs::default()
    };
    caught(bugs, backups_restart_out_of_reach, |v| {
        matches!(v, Violation::CommittedBelowMinimum { .. })
    });
}

#[test]
fn acknowledging_before_the_disk_has_it_loses_messages_in_a_power_failure() {
    let bugs = Bugs {
        ack_before_durable: true,
        commit_before_durable: true,
        ..Bugs::default()
    };
    caught(bugs, named("whole_cluster_crash"), |v| {
        matches!(v, Violation::Lost { .. } | Violation::StateLost { .. })
    });
}

#[test]
fn backups_acknowledging_before_their_disk_has_it_is_caught() {
    let bugs = Bugs {
        ack_before_durable: true,
        ..Bugs::default()
    };
    caught(bugs, named("whole_cluster_crash"), |v| {
        matches!(v, Violation::Lost { .. } | Violation::StateLost { .. })
    });
}

/// A disk checkpoint that forgets the state it stands for (all of it, at
/// the right position): a router that restarts from it either refuses its
/// own disk, because the log after it names peers it lacks, or starts
/// without what was acknowledged.
#[test]
fn a_checkpoint_that_forgets_the_state_is_caught() {
    let bugs = Bugs {
        checkpoint_forgets_state: true,
        ..Bugs::default()
    };
    for scenario in ["rolling_crashes", "whole_cluster_crash"] {
        caught(bugs, named(scenario), |v| {
            matches!(
                v,
                Violation::Unrecoverable { .. } | Violation::Lost { .. } | Violation::StateLost { .. }
            )
        });
    }
}

#[test]
fn without_bugs_the_same_runs_are_clean() {
    let mut small_mailboxes = scenario::config("client_offline_failover", 1).expect("a known scenario");
    small_mailboxes.mailbox_limit = 5;
    for run in [
        small_mailboxes,
        cut_then_vanish(1),
        backups_restart_out_of_reach(1),
    ] {
        let (trace, observed) = cluster::run(&run).expect("runs");
        let mut violations = checker::check(&trace.history);
        violations.extend(checker::check_cluster(&observed.events()));
        assert!(violations.is_empty(), "seed {}: {violations:#?}", run.seed);
    }
}

/// The rogue of `rogue_during_failover` with the cluster's own key (a
/// stolen key): its forged acknowledgements let the primary count a copy no
/// backup has, and its forged heartbeats take roles away; the checker sees
/// the damage. With a key of its own (the scenario as swept) it sees none.
#[test]
fn a_rogue_with_the_stolen_cluster_key_does_damage() {
    let stolen = |seed| {
        let mut run = scenario::config("rogue_during_failover", seed).expect("a known scenario");
        run.rogue = Some(sim::rogue::RogueKey::Stolen);
        run
    };
    caught(Bugs::default(), stolen, |v| {
        matches!(
            v,
            Violation::Lost { .. } | Violation::StateLost { .. } | Violation::TwoCommitters { .. }
        )
    });
}

/// The RM demotes the unheard primary's backups when it promotes the one it
/// hears; that one dies, and no router is left that may be promoted: the
/// cluster never answers again.
#[test]
fn demoting_unheard_backups_can_stop_the_cluster_for_good() {
    let bugs = Bugs {
        demote_unheard_backups: true,
        ..Bugs::default()
    };
    caught(bugs, named("new_primary_dies_while_others_unheard"), |v| {
        matches!(v, Violation::Unanswered { .. })
    });
}
