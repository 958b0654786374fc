//! Test support: an in-memory [`World`] that runs a router and clients with
//! no I/O, and the [`History`] of what each client was asked and observed
//! (which the checker in the `sim` crate judges).

mod world;

use std::time::Instant;

pub use world::{History, Record, What, World};

use crate::machine::Machine;

/// An arbitrary fixed origin for test time. Machines only compare instants,
/// so any origin works; this is the one place tests read the clock.
#[allow(clippy::disallowed_methods)]
pub fn epoch() -> Instant {
    Instant::now()
}

/// Drains every queued output of a machine.
pub fn drain<M: Machine>(machine: &mut M) -> Vec<M::Output> {
    std::iter::from_fn(|| machine.poll_output()).collect()
}
