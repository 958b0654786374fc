//! A router's state on stable storage: the file format ([`format`]), the
//! checkpoint-and-log store with its recovery ([`store`]), the few file
//! operations it needs ([`disk`]), and the writer that runs it off the
//! event loop with group commit ([`writer`]). `docs/storage.md` describes
//! the files and the fsync policy.

pub mod disk;
pub mod format;
pub mod store;
pub mod writer;

pub use disk::{Disk, FileDisk};
pub use store::{Opened, RecoveryReport, StorageError, Store, DEFAULT_CHECKPOINT_AFTER};
pub use writer::{Storage, Written};

#[cfg(test)]
mod tests;
