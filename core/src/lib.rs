//! PeerLink's pure core: the state machines and the wire protocol.
//!
//! Nothing in this crate performs I/O, reads a clock, spawns a thread or
//! draws unseeded randomness; `clippy.toml` enforces what it can of that.
//! Drivers (in `peerlink-runtime` for tokio, in `sim` for turmoil) own the
//! sockets and the clock and feed the machines through the one calling
//! contract documented on [`Machine`]:
//!
//! - [`router::Router`]: registrations, direct and group messages,
//!   mailboxes and receipts;
//! - [`rm::ReplicaManager`]: the one authority over which router is
//!   primary and which are backups;
//! - [`client::Client`]: a peer's connection, outbox and deduplication;
//! - [`wire`]: the newline-delimited JSON frames and their codec.
//!
//! [`testing`] holds an in-memory world that runs routers and clients
//! together without any I/O, for unit and property tests.

#[cfg(feature = "planted-bugs")]
pub mod bugs;
pub mod client;
pub mod cluster_auth;
pub mod ids;
pub mod machine;
pub mod rm;
pub mod router;
pub mod testing;
pub mod wire;

pub use machine::Machine;
