//! PeerLink's deterministic simulation testbed.
//!
//! The production drivers of `peerlink-runtime`, with the real codec, run
//! over turmoil's simulated network and clock ([`net::TurmoilNetwork`]).
//! Every run is identified by a seed and replays exactly from it: the
//! simulated network draws from turmoil's seeded RNG, every machine gets a
//! seed derived from it, and builds use `--cfg tokio_unstable` so turmoil
//! seeds each host's tokio runtime too (see `.cargo/config.toml`).
//!
//! [`scenario`] holds the scenarios; each returns the [`Trace`] of what
//! happened, which tests compare across runs and judge with [`checker`].

pub mod checker;
pub mod cluster;
pub mod disk;
pub mod failovers;
pub mod faults;
pub mod net;
pub mod observe;
pub mod rogue;
pub mod scenario;
mod trace;

pub use trace::Trace;
