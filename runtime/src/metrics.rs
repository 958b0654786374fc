//! Metrics of routers and the replica manager, recorded through the
//! [`metrics`] facade. A process that serves them (`--admin-listen`)
//! installs a Prometheus recorder; without one — in the simulator and in
//! tests — every call here does nothing, so recording never changes what a
//! driver does.
//!
//! docs/operations.md lists every metric with its meaning.

use std::collections::BTreeMap;

use metrics::Counter;
use peerlink_core::router::{Change, Record, RouterOutput, RouterRole, RouterStats};
use peerlink_core::wire::cluster::{Configuration, PrimaryFrame};
use peerlink_core::wire::{ErrorCode, ServerFrame};

/// A router's counters, registered once when its driver starts, so that
/// counting an output on the hot path is an atomic add, not a registry
/// lookup.
pub(crate) struct RouterCounters {
    accepted: Counter,
    pushed: Counter,
    delivered: Counter,
    checkpoints_sent: Counter,
    commits: Counter,
    promotions: Counter,
    /// `peerlink_refused_total` per error code, registered at first use.
    refused: BTreeMap<ErrorCode, Counter>,
}

impl RouterCounters {
    /// Registers the counters with the installed recorder (none: no-ops).
    pub(crate) fn new() -> Self {
        Self {
            accepted: metrics::counter!("peerlink_messages_accepted_total"),
            pushed: metrics::counter!("peerlink_messages_pushed_total"),
            delivered: metrics::counter!("peerlink_messages_delivered_total"),
            checkpoints_sent: metrics::counter!("peerlink_checkpoints_sent_total"),
            commits: metrics::counter!("peerlink_commits_total"),
            promotions: metrics::counter!("peerlink_promotions_total"),
            refused: BTreeMap::new(),
        }
    }

    /// Counts what one router output says happened. `serving` is whether
    /// the router serves clients (a follower persists the primary's
    /// changes too, which must not count twice across the cluster).
    pub(crate) fn count(&mut self, output: &RouterOutput, serving: bool) {
        let counter = match output {
            RouterOutput::Persist {
                record:
                    Record::Change {
                        change: Change::Accepted { .. },
                        ..
                    },
                ..
            } if serving => &self.accepted,
            RouterOutput::Send(_, frame) => match frame {
                ServerFrame::Message { .. } => &self.pushed,
                ServerFrame::Delivered { .. } => &self.delivered,
                ServerFrame::Error { code, .. } | ServerFrame::Closing { code, .. } => self
                    .refused
                    .entry(*code)
                    .or_insert_with(|| metrics::counter!("peerlink_refused_total", "code" => code.as_str())),
                _ => return,
            },
            RouterOutput::Replicate(_, PrimaryFrame::CheckpointStart { .. }) => &self.checkpoints_sent,
            RouterOutput::Committed { .. } => &self.commits,
            RouterOutput::Promoted { .. } => &self.promotions,
            _ => return,
        };
        counter.increment(1);
    }
}

/// Sets the gauges from a snapshot of the router.
pub(crate) fn router_stats(stats: &RouterStats) {
    metrics::gauge!("peerlink_epoch").set(stats.epoch.0 as f64);
    metrics::gauge!("peerlink_applied_lsn").set(stats.applied.0 as f64);
    metrics::gauge!("peerlink_committed_lsn").set(stats.committed.0 as f64);
    metrics::gauge!("peerlink_peers").set(stats.peers as f64);
    metrics::gauge!("peerlink_groups").set(stats.groups as f64);
    metrics::gauge!("peerlink_sessions").set(stats.sessions as f64);
    metrics::gauge!("peerlink_mailbox_messages").set(stats.mailbox_messages as f64);
    metrics::gauge!("peerlink_mailbox_bytes").set(stats.mailbox_bytes as f64);
    metrics::gauge!("peerlink_watches").set(stats.watches as f64);
    for role in [
        RouterRole::Standalone,
        RouterRole::Primary,
        RouterRole::Follower,
        RouterRole::Waiting,
    ] {
        let value = if role == stats.role { 1.0 } else { 0.0 };
        metrics::gauge!("peerlink_role", "role" => role.as_str()).set(value);
    }
    for (follower, lag) in &stats.follower_lag {
        metrics::gauge!("peerlink_replication_lag", "follower" => follower.to_string()).set(*lag as f64);
    }
}

/// Counts a checkpoint written to disk.
pub(crate) fn checkpoint_written() {
    metrics::counter!("peerlink_checkpoints_written_total").increment(1);
}

/// Records a configuration the replica manager saved; `previous` is the
/// one before it.
pub(crate) fn rm_configuration(config: &Configuration, previous: Option<&Configuration>) {
    metrics::counter!("peerlink_rm_configurations_total").increment(1);
    metrics::gauge!("peerlink_rm_epoch").set(config.epoch.0 as f64);
    metrics::gauge!("peerlink_rm_backups").set(config.backups.len() as f64);
    metrics::gauge!("peerlink_rm_candidates").set(config.candidates.len() as f64);
    let primary = config.primary.as_ref().map(|m| &m.id);
    let before = previous.and_then(|c| c.primary.as_ref()).map(|m| &m.id);
    metrics::gauge!("peerlink_rm_has_primary").set(if primary.is_some() { 1.0 } else { 0.0 });
    if before.is_some() && primary.is_some() && primary != before {
        metrics::counter!("peerlink_rm_failovers_total").increment(1);
    }
}
