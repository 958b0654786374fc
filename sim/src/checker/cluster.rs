//! Checks of what the cluster did, seen from outside the routers: the
//! commits and promotions each router logs, and the restarts that failed.

use std::collections::{BTreeMap, BTreeSet};

use peerlink_core::ids::{Epoch, Lsn, ReplicaId};

use super::Violation;
use crate::observe::ClusterEvent;

/// What a router reported about its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// It started serving as primary of `epoch`, its state at `lsn`.
    Promoted,
    /// As primary of `epoch`, it committed up to `lsn`.
    Committed,
}

/// One step of a router's own replication trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// The router.
    pub router: ReplicaId,
    /// What it did.
    pub step: Step,
    /// Its epoch.
    pub epoch: Epoch,
    /// Its state's LSN (promotion) or new commit point (commit).
    pub lsn: Lsn,
    /// For a commit: how many backups held it, and how many the
    /// configuration required (0 and 0 for a promotion).
    pub backups: (usize, usize),
}

/// Judges what the cluster did, as seen from outside the routers: their
/// commits (see [`check_commits`]) and their restarts (a router that cannot
/// recover from its own disk).
pub fn check_cluster(events: &[ClusterEvent]) -> Vec<Violation> {
    let commits: Vec<Commit> = events
        .iter()
        .filter_map(|e| match e {
            ClusterEvent::Commit(c) => Some(c.clone()),
            _ => None,
        })
        .collect();
    let mut violations = check_commits(&commits);
    for event in events {
        if let ClusterEvent::Unrecoverable { router, error } = event {
            violations.push(Violation::Unrecoverable {
                router: router.clone(),
                error: error.clone(),
            });
        }
    }
    violations
}

/// Checks the routers' own replication trace, in the order it happened: at
/// most one router commits in any epoch; epochs never go backwards at any
/// router; once a router has committed in an epoch, no other router commits
/// in an older one; and once a router is promoted in an epoch with its
/// state at LSN `l`, no other router commits past `l` in an older epoch (a
/// deposed primary commits nothing its successor lacks); and every commit
/// rests on at least the configuration's minimum of backups.
pub fn check_commits(commits: &[Commit]) -> Vec<Violation> {
    let mut by_epoch: BTreeMap<Epoch, BTreeSet<ReplicaId>> = BTreeMap::new();
    let mut last: BTreeMap<ReplicaId, Epoch> = BTreeMap::new();
    let mut newest: Option<(Epoch, ReplicaId)> = None;
    let mut promotions: Vec<&Commit> = Vec::new();
    let mut violations = Vec::new();
    for commit in commits {
        if commit.step == Step::Promoted {
            promotions.push(commit);
            continue;
        }
        let (backups, min_backups) = commit.backups;
        if backups < min_backups {
            violations.push(Violation::CommittedBelowMinimum {
                router: commit.router.clone(),
                epoch: commit.epoch,
                lsn: commit.lsn,
                backups,
                min_backups,
            });
        }
        let successor = promotions
            .iter()
            .find(|p| p.router != commit.router && p.epoch > commit.epoch && p.lsn < commit.lsn);
        if let Some(successor) = successor {
            violations.push(Violation::DeposedCommit {
                router: commit.router.clone(),
                epoch: commit.epoch,
                lsn: commit.lsn,
                successor: successor.router.clone(),
                successor_epoch: successor.epoch,
                successor_lsn: successor.lsn,
            });
        }
        match &newest {
            Some((epoch, router)) if commit.epoch < *epoch && commit.router != *router => {
                violations.push(Violation::TwoCommitters {
                    epoch: commit.epoch,
                    routers: vec![commit.router.clone(), router.clone()],
                });
            }
            Some((epoch, _)) if commit.epoch <= *epoch => {}
            _ => newest = Some((commit.epoch, commit.router.clone())),
        }
        by_epoch
            .entry(commit.epoch)
            .or_default()
            .insert(commit.router.clone());
        let previous = last.entry(commit.router.clone()).or_insert(commit.epoch);
        if commit.epoch < *previous {
            violations.push(Violation::TwoCommitters {
                epoch: commit.epoch,
                routers: vec![commit.router.clone()],
            });
        }
        *previous = commit.epoch;
    }
    for (epoch, routers) in by_epoch {
        if routers.len() > 1 {
            violations.push(Violation::TwoCommitters {
                epoch,
                routers: routers.into_iter().collect(),
            });
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(router: &str, step: Step, epoch: u64, lsn: u64) -> Commit {
        Commit {
            router: ReplicaId::new(router).unwrap(),
            step,
            epoch: Epoch(epoch),
            lsn: Lsn(lsn),
            backups: if step == Step::Committed { (1, 1) } else { (0, 0) },
        }
    }

    #[test]
    fn a_commit_with_fewer_backups_than_the_minimum_is_reported() {
        let mut lone = step("r1", Step::Committed, 5, 10);
        assert!(check_commits(&[lone.clone()]).is_empty());
        lone.backups = (0, 1);
        assert!(matches!(
            check_commits(&[lone]).as_slice(),
            [Violation::CommittedBelowMinimum {
                backups: 0,
                min_backups: 1,
                ..
            }]
        ));
    }

    #[test]
    fn a_deposed_primary_may_finish_only_what_its_successor_has() {
        let trace = [
            step("r1", Step::Committed, 5, 10),
            step("r2", Step::Promoted, 6, 12),
            step("r1", Step::Committed, 5, 12),
            step("r2", Step::Committed, 6, 14),
        ];
        assert_eq!(check_commits(&trace), Vec::new());
    }

    #[test]
    fn a_deposed_primary_committing_past_its_successor_is_reported() {
        let trace = [
            step("r1", Step::Committed, 5, 10),
            step("r2", Step::Promoted, 6, 12),
            step("r1", Step::Committed, 5, 13),
        ];
        let violations = check_commits(&trace);
        assert!(
            matches!(
                &violations[..],
                [Violation::DeposedCommit {
                    lsn: Lsn(13),
                    successor_lsn: Lsn(12),
                    ..
                }]
            ),
            "{violations:?}"
        );
    }

    #[test]
    fn two_routers_committing_in_one_epoch_are_reported() {
        let trace = [
            step("r1", Step::Committed, 5, 10),
            step("r2", Step::Committed, 5, 11),
        ];
        let violations = check_commits(&trace);
        assert!(
            matches!(&violations[..], [Violation::TwoCommitters { .. }]),
            "{violations:?}"
        );
    }

    #[test]
    fn a_router_that_cannot_recover_is_reported() {
        let events = [
            ClusterEvent::Commit(step("r1", Step::Committed, 5, 10)),
            ClusterEvent::Unrecoverable {
                router: "r2".into(),
                error: "log damaged".into(),
            },
        ];
        assert_eq!(
            check_cluster(&events),
            vec![Violation::Unrecoverable {
                router: "r2".into(),
                error: "log damaged".into()
            }]
        );
    }
}
