//! Spurious failovers: a run with no fault at all but a slow network, in
//! which every change of primary is one the failure detector got wrong.

use std::time::Duration;

use crate::checker;
use crate::cluster::{self, RunConfig, SimError};
use crate::faults::Plan;
use crate::observe::ClusterEvent;

/// What one fault-free run on a slow network saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlowRun {
    /// How many times the primary changed after the first one was chosen.
    pub failovers: usize,
    /// How many invariants broke (there should be none).
    pub violations: usize,
    /// The first of them, if any.
    pub first_violation: Option<String>,
}

/// Runs `seed` with message latency up to `latency` on every link and the
/// replica manager's failure timeout set to `failure_timeout`, and counts
/// the changes of primary.
pub fn slow_run(seed: u64, latency: Duration, failure_timeout: Duration) -> Result<SlowRun, SimError> {
    let mut config = RunConfig::new(seed, Plan::new());
    config.latency = latency;
    config.failure_timeout = failure_timeout;
    let (trace, observed) = cluster::run(&config)?;
    let mut primaries = observed.events().into_iter().filter_map(|e| match e {
        ClusterEvent::Config { primary, .. } => Some(primary),
        _ => None,
    });
    let mut current = primaries.find(Option::is_some).flatten();
    let mut failovers = 0;
    for primary in primaries {
        if primary != current {
            failovers += usize::from(primary.is_some());
            current = primary;
        }
    }
    let mut violations = checker::check(&trace.history);
    violations.extend(checker::check_cluster(&observed.events()));
    Ok(SlowRun {
        failovers,
        violations: violations.len(),
        first_violation: violations.first().map(ToString::to_string),
    })
}
