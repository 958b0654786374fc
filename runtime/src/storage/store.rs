//! A router's state on disk: a checkpoint, and a log of the changes since.
//!
//! Files (see `docs/storage.md`):
//! - `identity`: the storage's identity ([`Store::state_id`]), written once;
//! - `checkpoint-G`: the whole state as of some LSN, generation `G`;
//! - `log-G`: every change after that checkpoint's LSN, in order.
//!
//! Generation 0 has no checkpoint: it starts from the empty state. A
//! checkpoint is written to a temporary name, synced, renamed and the
//! directory synced, so a checkpoint is whole or absent; only then does the
//! next generation's log start, and the files of the generation before are
//! removed. Recovery takes the newest checkpoint and replays its log up to
//! the first damaged frame — the torn tail of a crash — and cuts the log
//! there. A whole frame that cannot be read or does not follow is refused,
//! never cut: the router stops with [`StorageError::Damaged`].

use std::fmt;
use std::io;

use peerlink_core::ids::{Epoch, Lsn};
use peerlink_core::router::checkpoint::{StateBuilder, StatePart, PART_BYTES};
use peerlink_core::router::{Change, Record, Recovered, State};
use serde::{Deserialize, Serialize};

use super::disk::Disk;
use super::format::{put_frame, Frames};

const IDENTITY: &str = "identity";
const IDENTITY_MAGIC: &[u8] = b"PEERLINK IDENTITY 1\n";
const LOG_MAGIC: &[u8] = b"PEERLINK LOG 1\n";
const CHECKPOINT_MAGIC: &[u8] = b"PEERLINK CHECKPOINT 1\n";

/// How many log bytes start a new checkpoint by default: 64 MiB.
pub const DEFAULT_CHECKPOINT_AFTER: u64 = 64 << 20;

/// How much of a checkpoint is buffered before it is written out.
const WRITE_CHUNK: usize = 4 << 20;

fn log_name(generation: u64) -> String {
    format!("log-{generation:020}")
}

fn checkpoint_name(generation: u64) -> String {
    format!("checkpoint-{generation:020}")
}

/// The generation a file of the store belongs to, and whether it is a
/// checkpoint.
fn parse_name(name: &str) -> Option<(u64, bool)> {
    if let Some(g) = name.strip_prefix("checkpoint-") {
        return g.parse().ok().map(|g| (g, true));
    }
    name.strip_prefix("log-")?.parse().ok().map(|g| (g, false))
}

/// Why a store cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An operation on a file failed.
    #[error("cannot {op} {file} in {dir}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        file: String,
        /// The directory.
        dir: String,
        /// The error.
        source: io::Error,
    },
    /// A file that must be whole is damaged.
    #[error(
        "{file} in {dir} is damaged ({reason}); refusing to start with less than was acknowledged. \
         Move the directory away to start this router empty: in a cluster it then copies \
         everything from the primary"
    )]
    Damaged {
        /// The file.
        file: String,
        /// The directory.
        dir: String,
        /// What is wrong.
        reason: String,
    },
    /// A checkpoint does not repeat the position of the record before it:
    /// the router's records and the storage disagree, and writing on would
    /// lose changes.
    #[error(
        "refusing a checkpoint at LSN {} (epoch {}) in {dir}: the last record written is LSN {} (epoch {})",
        checkpoint.1, checkpoint.0, last.1, last.0
    )]
    Misplaced {
        /// The directory.
        dir: String,
        /// The checkpoint's epoch and LSN.
        checkpoint: (Epoch, Lsn),
        /// The last record's epoch and LSN.
        last: (Epoch, Lsn),
    },
    /// The directory holds a router's files but no identity.
    #[error("{dir} holds router data but no identity file; refusing to use it")]
    NoIdentity {
        /// The directory.
        dir: String,
    },
}

/// What [`Store::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Whether the directory was empty (a new storage identity was made).
    pub fresh: bool,
    /// The checkpoint recovery started from: its generation and LSN.
    pub checkpoint: Option<(u64, Lsn)>,
    /// How many changes the log replayed after it.
    pub replayed: u64,
    /// How many bytes at the log's end were damaged or did not follow, and
    /// were cut.
    pub dropped_bytes: u64,
    /// The recovered position.
    pub lsn: Lsn,
    /// The epoch of the last record.
    pub epoch: Epoch,
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.fresh {
            return write!(f, "new, empty storage");
        }
        match self.checkpoint {
            Some((g, lsn)) => write!(f, "checkpoint {g} at LSN {lsn}")?,
            None => write!(f, "no checkpoint")?,
        }
        write!(
            f,
            ", {} changes replayed from the log: at LSN {} (epoch {})",
            self.replayed, self.lsn, self.epoch
        )?;
        if self.dropped_bytes > 0 {
            write!(
                f,
                "; {} damaged or torn bytes cut from the log's end",
                self.dropped_bytes
            )?;
        }
        Ok(())
    }
}

/// A log record.
#[derive(Serialize)]
struct EntryRef<'a> {
    epoch: Epoch,
    lsn: Lsn,
    change: &'a Change,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    epoch: Epoch,
    lsn: Lsn,
    change: Change,
}

/// A checkpoint's first frame.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointHeader {
    epoch: Epoch,
    lsn: Lsn,
    parts: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Identity {
    state_id: u64,
}

/// A store opened on a [`Disk`]: recovered, and ready to append.
#[derive(Debug)]
pub struct Store<D> {
    disk: D,
    state_id: u64,
    generation: u64,
    /// The epoch and LSN of the last record appended.
    position: (Epoch, Lsn),
    /// The current log's length, its header and `buffer` included (0: not
    /// created yet).
    log_len: u64,
    /// Log bytes appended and not yet handed to the disk: a batch reaches
    /// it in one write.
    buffer: Vec<u8>,
    /// Whether the current log's name is durable.
    log_named: bool,
    /// Appended since the last sync.
    dirty: bool,
    checkpoint_after: u64,
    /// Whether [`Store::wants_checkpoint`] said so since the last
    /// checkpoint.
    checkpoint_asked: bool,
}

/// A store, and the state it recovered.
#[derive(Debug)]
pub struct Opened<D> {
    /// The store, positioned after the recovered state.
    pub store: Store<D>,
    /// The state to start the router from.
    pub recovered: Recovered,
    /// What recovery found, for the log.
    pub report: RecoveryReport,
}

impl<D: Disk> Store<D> {
    /// Opens the store on `disk` and recovers its state. An empty directory
    /// becomes a new store with identity `new_state_id`. Once the log has
    /// grown by `checkpoint_after` bytes, [`Store::wants_checkpoint`] says
    /// so.
    pub fn open(mut disk: D, new_state_id: u64, checkpoint_after: u64) -> Result<Opened<D>, StorageError> {
        let dir = disk.describe();
        let io = |op: &'static str, file: &str| {
            let (file, dir) = (file.to_owned(), dir.clone());
            move |source| StorageError::Io {
                op,
                file,
                dir,
                source,
            }
        };
        let names = disk.list().map_err(io("list", "files"))?;
        for tmp in names.iter().filter(|n| n.ends_with(".tmp")) {
            disk.remove(tmp).map_err(io("remove", tmp))?;
        }
        let files: Vec<(u64, bool)> = names.iter().filter_map(|n| parse_name(n)).collect();
        let fresh = !names.iter().any(|n| n == IDENTITY);
        let state_id = if fresh {
            if !files.is_empty() {
                return Err(StorageError::NoIdentity { dir });
            }
            let mut bytes = IDENTITY_MAGIC.to_vec();
            let identity = Identity {
                state_id: new_state_id,
            };
            put_frame(&mut bytes, &serde_json::to_vec(&identity).expect("serializable"));
            write_whole(&mut disk, IDENTITY, &bytes)?;
            new_state_id
        } else {
            read_identity(&mut disk)?
        };
        let generation = files
            .iter()
            .filter(|(_, c)| *c)
            .map(|(g, _)| *g)
            .max()
            .unwrap_or(0);
        let mut recovered = if generation > 0 {
            read_checkpoint(&mut disk, generation)?
        } else {
            Recovered::default()
        };
        let checkpoint = (generation > 0).then_some((generation, recovered.lsn));
        let log = log_name(generation);
        let (mut replayed, mut log_len, mut dropped_bytes) = (0, 0, 0);
        if files.contains(&(generation, false)) {
            let bytes = disk.read(&log).map_err(io("read", &log))?;
            let mut good = 0;
            if bytes.starts_with(LOG_MAGIC) {
                good = LOG_MAGIC.len();
                let mut frames = Frames::new(&bytes, good);
                // A frame that fails its checksum is the torn tail of a
                // crash; a whole frame that cannot be read, or does not
                // follow, is not: cutting it would drop what it holds and
                // everything after it.
                while let Some(payload) = frames.next() {
                    let after = recovered.lsn;
                    let entry = serde_json::from_slice::<Entry>(payload).map_err(|e| {
                        let reason = format!(
                            "its record after LSN {after} is whole but cannot be read ({e}); \
                             was it written by a newer version of PeerLink?"
                        );
                        damaged(&disk, &log, reason)
                    })?;
                    if entry.lsn != after.next() {
                        let reason = format!("its record after LSN {after} is numbered {}", entry.lsn);
                        return Err(damaged(&disk, &log, reason));
                    }
                    let lsn = entry.lsn;
                    let record = Record::Change {
                        epoch: entry.epoch,
                        lsn,
                        change: entry.change,
                    };
                    if let Err(e) = recovered.apply(record) {
                        let reason = format!(
                            "its record at LSN {lsn} does not follow from the records before it: {e}"
                        );
                        return Err(damaged(&disk, &log, reason));
                    }
                    replayed += 1;
                    good = frames.offset();
                }
            }
            dropped_bytes = (bytes.len() - good) as u64;
            if dropped_bytes > 0 {
                disk.truncate(&log, good as u64).map_err(io("truncate", &log))?;
                disk.sync(&log).map_err(io("sync", &log))?;
            }
            log_len = good as u64;
        }
        for (g, is_checkpoint) in files.iter().filter(|(g, _)| *g < generation) {
            let name = if *is_checkpoint {
                checkpoint_name(*g)
            } else {
                log_name(*g)
            };
            disk.remove(&name).map_err(io("remove", &name))?;
        }
        let report = RecoveryReport {
            fresh,
            checkpoint,
            replayed,
            dropped_bytes,
            lsn: recovered.lsn,
            epoch: recovered.epoch,
        };
        let store = Store {
            disk,
            state_id,
            generation,
            position: (recovered.epoch, recovered.lsn),
            log_len,
            buffer: Vec::new(),
            log_named: log_len > 0,
            dirty: false,
            checkpoint_after,
            checkpoint_asked: false,
        };
        Ok(Opened {
            store,
            recovered,
            report,
        })
    }

    /// The identity of this storage, the same for as long as its directory
    /// lives.
    pub fn state_id(&self) -> u64 {
        self.state_id
    }

    /// The disk, for tests that inspect it.
    pub fn disk(&self) -> &D {
        &self.disk
    }

    fn io_error(&self, op: &'static str, file: &str) -> impl FnOnce(io::Error) -> StorageError {
        let (file, dir) = (file.to_owned(), self.disk.describe());
        move |source| StorageError::Io {
            op,
            file,
            dir,
            source,
        }
    }

    /// Writes `record` after every record before it. A change is durable
    /// after the next [`Store::sync`]; a state or a checkpoint is durable
    /// when this returns. A checkpoint must repeat the position of the
    /// record before it: one that does not is refused, and nothing is
    /// written.
    pub fn append(&mut self, record: Record) -> Result<(), StorageError> {
        match record {
            Record::Change { epoch, lsn, change } => {
                let before = self.buffer.len();
                if self.log_len == 0 {
                    self.buffer.extend_from_slice(LOG_MAGIC);
                }
                let entry = EntryRef {
                    epoch,
                    lsn,
                    change: &change,
                };
                put_frame(
                    &mut self.buffer,
                    &serde_json::to_vec(&entry).expect("serializable"),
                );
                self.log_len += (self.buffer.len() - before) as u64;
                self.dirty = true;
                self.position = (epoch, lsn);
                if self.buffer.len() >= WRITE_CHUNK {
                    self.write_buffer()?;
                }
            }
            Record::State { epoch, lsn, state } => {
                // The changes still buffered belong to the history it
                // replaces.
                self.buffer.clear();
                self.checkpoint(epoch, lsn, *state)?;
            }
            Record::Checkpoint { epoch, lsn, state } => {
                if (epoch, lsn) != self.position {
                    return Err(StorageError::Misplaced {
                        dir: self.disk.describe(),
                        checkpoint: (epoch, lsn),
                        last: self.position,
                    });
                }
                // The changes still buffered are in it.
                self.buffer.clear();
                self.checkpoint(epoch, lsn, *state)?;
            }
        }
        Ok(())
    }

    /// Makes every change appended so far durable: one sync for all of
    /// them.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        if self.dirty {
            self.write_buffer()?;
            let log = log_name(self.generation);
            self.disk.sync(&log).map_err(self.io_error("sync", &log))?;
            if !self.log_named {
                self.disk
                    .sync_dir()
                    .map_err(self.io_error("sync", "the directory"))?;
                self.log_named = true;
            }
            self.dirty = false;
        }
        Ok(())
    }

    /// Whether the log has grown past its threshold and a
    /// [`Record::Checkpoint`] should be appended, so the log behind it can
    /// go. Says so once per threshold crossed: again only after a
    /// checkpoint is written and the new log has grown as much.
    pub fn wants_checkpoint(&mut self) -> bool {
        let wanted = !self.checkpoint_asked && self.log_len >= self.checkpoint_after;
        self.checkpoint_asked |= wanted;
        wanted
    }

    /// Hands the buffered log bytes to the disk, in one write.
    fn write_buffer(&mut self) -> Result<(), StorageError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let log = log_name(self.generation);
        self.disk
            .append(&log, &self.buffer)
            .map_err(self.io_error("append to", &log))?;
        self.buffer.clear();
        Ok(())
    }

    /// Writes `state`, at `epoch` and `lsn`, as the next generation's
    /// checkpoint, starts that generation's log, and removes the generation
    /// before.
    fn checkpoint(&mut self, epoch: Epoch, lsn: Lsn, state: State) -> Result<(), StorageError> {
        let next = self.generation + 1;
        let name = checkpoint_name(next);
        let tmp = format!("{name}.tmp");
        self.disk.remove(&tmp).map_err(self.io_error("remove", &tmp))?;
        let parts = state.into_parts(PART_BYTES);
        let header = CheckpointHeader {
            epoch,
            lsn,
            parts: parts.len() as u64,
        };
        let mut bytes = CHECKPOINT_MAGIC.to_vec();
        put_frame(&mut bytes, &serde_json::to_vec(&header).expect("serializable"));
        for part in parts {
            put_frame(&mut bytes, &serde_json::to_vec(&part).expect("serializable"));
            if bytes.len() >= WRITE_CHUNK {
                self.disk
                    .append(&tmp, &bytes)
                    .map_err(self.io_error("write", &tmp))?;
                bytes.clear();
            }
        }
        self.disk
            .append(&tmp, &bytes)
            .map_err(self.io_error("write", &tmp))?;
        self.disk.sync(&tmp).map_err(self.io_error("sync", &tmp))?;
        self.disk
            .rename(&tmp, &name)
            .map_err(self.io_error("rename", &tmp))?;
        self.disk
            .sync_dir()
            .map_err(self.io_error("sync", "the directory"))?;
        let old = self.generation;
        self.generation = next;
        self.position = (epoch, lsn);
        self.log_len = 0;
        self.log_named = false;
        self.dirty = false;
        self.checkpoint_asked = false;
        for file in [log_name(old), checkpoint_name(old)] {
            self.disk.remove(&file).map_err(self.io_error("remove", &file))?;
        }
        crate::metrics::checkpoint_written();
        Ok(())
    }
}

/// Writes a small file whole: to a temporary name, synced, then renamed.
fn write_whole<D: Disk>(disk: &mut D, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
    let dir = disk.describe();
    let tmp = format!("{name}.tmp");
    let io = |op: &'static str| {
        let (file, dir) = (tmp.clone(), dir.clone());
        move |source| StorageError::Io {
            op,
            file,
            dir,
            source,
        }
    };
    disk.remove(&tmp).map_err(io("remove"))?;
    disk.append(&tmp, bytes).map_err(io("write"))?;
    disk.sync(&tmp).map_err(io("sync"))?;
    disk.rename(&tmp, name).map_err(io("rename"))?;
    disk.sync_dir().map_err(io("sync the directory of"))
}

fn damaged(disk: &impl Disk, file: &str, reason: impl Into<String>) -> StorageError {
    StorageError::Damaged {
        file: file.to_owned(),
        dir: disk.describe(),
        reason: reason.into(),
    }
}

fn read_identity<D: Disk>(disk: &mut D) -> Result<u64, StorageError> {
    let bytes = disk.read(IDENTITY).map_err(|source| StorageError::Io {
        op: "read",
        file: IDENTITY.into(),
        dir: disk.describe(),
        source,
    })?;
    let identity = bytes
        .strip_prefix(IDENTITY_MAGIC)
        .and_then(|rest| Frames::new(rest, 0).next())
        .and_then(|payload| serde_json::from_slice::<Identity>(payload).ok())
        .ok_or_else(|| damaged(disk, IDENTITY, "not a PeerLink identity file"))?;
    Ok(identity.state_id)
}

fn read_checkpoint<D: Disk>(disk: &mut D, generation: u64) -> Result<Recovered, StorageError> {
    let name = checkpoint_name(generation);
    let bytes = disk.read(&name).map_err(|source| StorageError::Io {
        op: "read",
        file: name.clone(),
        dir: disk.describe(),
        source,
    })?;
    let Some(rest) = bytes.strip_prefix(CHECKPOINT_MAGIC) else {
        return Err(damaged(disk, &name, "not a PeerLink checkpoint"));
    };
    let mut frames = Frames::new(rest, 0);
    let header: CheckpointHeader = frames
        .next()
        .and_then(|payload| serde_json::from_slice(payload).ok())
        .ok_or_else(|| damaged(disk, &name, "its header is unreadable"))?;
    let mut builder = StateBuilder::default();
    for n in 0..header.parts {
        let part: StatePart = frames
            .next()
            .and_then(|payload| serde_json::from_slice(payload).ok())
            .ok_or_else(|| damaged(disk, &name, format!("part {n} of {} is unreadable", header.parts)))?;
        builder
            .add(part)
            .map_err(|e| damaged(disk, &name, format!("part {n}: {e}")))?;
    }
    if !frames.at_end() {
        return Err(damaged(disk, &name, "bytes after its last part"));
    }
    let state = builder
        .finish()
        .map_err(|e| damaged(disk, &name, e.to_string()))?;
    Ok(Recovered {
        state,
        lsn: header.lsn,
        epoch: header.epoch,
    })
}
