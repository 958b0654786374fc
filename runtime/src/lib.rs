//! PeerLink's production drivers: they own the sockets and the clock and run
//! the pure machines of `peerlink-core` on tokio.
//!
//! Every driver is generic over [`net::Network`], so the crate `sim` runs the
//! very same code over turmoil's simulated network. Drivers spawn their
//! per-connection tasks with `spawn_local`: run them inside a
//! [`tokio::task::LocalSet`] on a current-thread runtime (as the `peerlink`
//! binary and turmoil both do).

pub mod certs;
pub mod client_driver;
pub mod cluster_link;
mod connection;
mod hashers;
mod metrics;
pub mod net;
pub mod rm_driver;
pub mod router_driver;
mod sources;
pub mod storage;
mod timer;
pub mod tls;

/// The current time, as the machines take it. Under turmoil this is the
/// simulated clock.
pub fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}
