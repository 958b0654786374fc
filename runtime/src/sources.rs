//! Connections counted per source address, so that drivers can bound what
//! one address may hold.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// How many connections each source address holds.
#[derive(Debug, Default)]
pub(crate) struct SourceCounts(BTreeMap<IpAddr, usize>);

impl SourceCounts {
    /// How many connections `source` holds.
    pub(crate) fn held_by(&self, source: IpAddr) -> usize {
        self.0.get(&source).copied().unwrap_or(0)
    }

    /// Counts one more connection from `source`.
    pub(crate) fn add(&mut self, source: IpAddr) {
        *self.0.entry(source).or_default() += 1;
    }

    /// Counts one connection from `source` fewer.
    pub(crate) fn remove(&mut self, source: IpAddr) {
        if let Some(count) = self.0.get_mut(&source) {
            *count -= 1;
            if *count == 0 {
                self.0.remove(&source);
            }
        }
    }
}
