//! The subcommands of the `peerlink` binary.

mod admin;
pub(crate) mod bench;
pub(crate) mod cert;
mod children;
pub(crate) mod client;
mod cluster_key;
mod commands;
pub(crate) mod config;
pub(crate) mod docs;
mod output;
mod prompt;
pub(crate) mod rm;
pub(crate) mod router;
mod secret;
mod shutdown;
pub(crate) mod status;
mod tls_args;
pub(crate) mod up;
