//! A simulated disk for a router host, outliving the host's crashes.
//!
//! It keeps, for every file, what was written and what was synced, and for
//! the directory, the names as they are and as they were last synced. A
//! crash ([`SimDisk::crash`]) keeps only what was synced — the names of the
//! last directory sync, each file's synced bytes — plus, at random, a prefix
//! of each file's unsynced tail (the writes that happened to reach the
//! platter), whose last byte may be garbage (a torn sector). A disk can
//! also fail ([`SimDisk::set_failing`]): every write, sync, rename and
//! truncation is refused with "no space left", as a full disk does, while
//! reads go on working.
//!
//! This is a model of our own rather than turmoil's `unstable-fs`: the
//! storage code runs unchanged against it through the
//! [`Disk`] trait, its randomness is the scenario's seeded one (turmoil's
//! file system draws from an unseeded `rand::rng()` in places), and the
//! router's writer needs no threads here.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::rc::Rc;

use peerlink_runtime::storage::Disk;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Default, Clone)]
struct File {
    written: Vec<u8>,
    synced: Vec<u8>,
}

#[derive(Debug, Default)]
struct State {
    /// File contents, by file number.
    files: BTreeMap<u64, File>,
    next_file: u64,
    /// The directory as it is, and as last synced.
    names: BTreeMap<String, u64>,
    synced_names: BTreeMap<String, u64>,
    /// Every change is refused.
    failing: bool,
}

/// One host's disk; clones share it.
#[derive(Debug, Clone, Default)]
pub struct SimDisk(Rc<RefCell<State>>);

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{name}: no such file"))
}

impl State {
    /// Refuses a change while the disk is failing.
    fn writable(&self, name: &str) -> io::Result<()> {
        if self.failing {
            let message = format!("{name}: no space left on the simulated disk");
            return Err(io::Error::new(io::ErrorKind::StorageFull, message));
        }
        Ok(())
    }
}

impl SimDisk {
    /// The host crashed: what was not synced is lost, except a random
    /// prefix of each file's unsynced tail, possibly torn at its end.
    pub fn crash(&self, rng: &mut ChaCha8Rng) {
        let mut state = self.0.borrow_mut();
        state.names = state.synced_names.clone();
        let live: Vec<u64> = state.names.values().copied().collect();
        state.files.retain(|id, _| live.contains(id));
        for file in state.files.values_mut() {
            let mut kept = file.synced.clone();
            let tail = file.written.get(file.synced.len()..).unwrap_or_default();
            if !tail.is_empty() && file.written.starts_with(&file.synced) {
                let n = rng.random_range(0..=tail.len());
                kept.extend_from_slice(&tail[..n]);
                if n > 0 && rng.random_bool(0.3) {
                    let last = kept.len() - 1;
                    kept[last] ^= rng.random_range(1..=255u8);
                }
            }
            file.written = kept.clone();
            file.synced = kept;
        }
    }

    /// The disk is replaced by an empty one.
    pub fn wipe(&self) {
        *self.0.borrow_mut() = State::default();
    }

    /// From now on, refuses every change (`failing`), or takes them again.
    /// What was written and synced before stays as it was.
    pub fn set_failing(&self, failing: bool) {
        self.0.borrow_mut().failing = failing;
    }

    /// Whether the disk refuses changes.
    pub fn is_failing(&self) -> bool {
        self.0.borrow().failing
    }
}

impl Disk for SimDisk {
    fn list(&mut self) -> io::Result<Vec<String>> {
        Ok(self.0.borrow().names.keys().cloned().collect())
    }

    fn read(&mut self, name: &str) -> io::Result<Vec<u8>> {
        let state = self.0.borrow();
        let id = state.names.get(name).ok_or_else(|| not_found(name))?;
        Ok(state.files[id].written.clone())
    }

    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.0.borrow_mut();
        state.writable(name)?;
        let id = match state.names.get(name) {
            Some(id) => *id,
            None => {
                let id = state.next_file;
                state.next_file += 1;
                state.names.insert(name.to_owned(), id);
                state.files.insert(id, File::default());
                id
            }
        };
        let file = state.files.get_mut(&id).expect("named files exist");
        file.written.extend_from_slice(bytes);
        Ok(())
    }

    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        let mut state = self.0.borrow_mut();
        state.writable(name)?;
        let id = *state.names.get(name).ok_or_else(|| not_found(name))?;
        let file = state.files.get_mut(&id).expect("named files exist");
        file.written.truncate(len as usize);
        // A synced file cut shorter is unsynced from there on.
        file.synced.truncate(len as usize);
        Ok(())
    }

    fn sync(&mut self, name: &str) -> io::Result<()> {
        let mut state = self.0.borrow_mut();
        state.writable(name)?;
        let id = *state.names.get(name).ok_or_else(|| not_found(name))?;
        let file = state.files.get_mut(&id).expect("named files exist");
        file.synced = file.written.clone();
        Ok(())
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        let mut state = self.0.borrow_mut();
        state.writable(to)?;
        let id = state.names.remove(from).ok_or_else(|| not_found(from))?;
        state.names.insert(to.to_owned(), id);
        Ok(())
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        self.0.borrow_mut().names.remove(name);
        Ok(())
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        let mut state = self.0.borrow_mut();
        state.writable("the directory")?;
        state.synced_names = state.names.clone();
        // Files no name leads to any more are gone for good.
        let live: Vec<u64> = state.names.values().copied().collect();
        state.files.retain(|id, _| live.contains(id));
        Ok(())
    }

    fn describe(&self) -> String {
        "the simulated disk".into()
    }
}
