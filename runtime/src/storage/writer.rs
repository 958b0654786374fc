//! Where a router's records are written: off the event loop, with group
//! commit. Records queue while a sync runs; the next sync covers them all,
//! and one report tells the router everything up to its last ticket is
//! durable. When the log has grown enough, a report asks the router for a
//! checkpoint.

use std::time::Duration;

use peerlink_core::router::Record;
use tokio::sync::mpsc;

use super::disk::Disk;
use super::store::{StorageError, Store};

/// The most records appended before a sync: bounds the wait of the first.
const MAX_BATCH: usize = 4096;

/// What the writer reports.
#[derive(Debug)]
pub enum Written {
    /// Every record up to this ticket is durable.
    Durable(u64),
    /// The log has grown past its threshold: the router should send a
    /// checkpoint ([`RouterInput::CheckpointWanted`]). Follows a
    /// `Durable` report.
    ///
    /// [`RouterInput::CheckpointWanted`]: peerlink_core::router::RouterInput::CheckpointWanted
    CheckpointWanted,
    /// The storage failed; nothing more will be written.
    Failed(StorageError),
}

/// A router's storage, running: where records go, and where reports come
/// back.
#[derive(Debug)]
pub struct Storage {
    records: mpsc::UnboundedSender<(u64, Record)>,
    reports: mpsc::UnboundedReceiver<Written>,
}

impl Storage {
    /// Runs `store` on a thread of its own, syncing with the real disk: the
    /// production writer.
    pub fn thread<D: Disk + Send + 'static>(mut store: Store<D>) -> std::io::Result<Self> {
        let (records, mut queue) = mpsc::unbounded_channel::<(u64, Record)>();
        let (report, reports) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("peerlink-storage".into())
            .spawn(move || {
                while let Some(first) = queue.blocking_recv() {
                    let outcome = write_batch(&mut store, first, &mut queue);
                    if !send_report(&mut store, &report, outcome) {
                        return;
                    }
                }
            })?;
        Ok(Self { records, reports })
    }

    /// Runs `store` as a task of the current `LocalSet`, each sync taking
    /// `sync_delay`: the simulator's writer, deterministic, and crashable
    /// with unsynced writes outstanding.
    pub fn task<D: Disk + 'static>(mut store: Store<D>, sync_delay: Duration) -> Self {
        let (records, mut queue) = mpsc::unbounded_channel::<(u64, Record)>();
        let (report, reports) = mpsc::unbounded_channel();
        tokio::task::spawn_local(async move {
            while let Some(first) = queue.recv().await {
                let mut last = first.0;
                if let Err(e) = append_all(&mut store, first, &mut queue, &mut last) {
                    let _ = report.send(Written::Failed(e));
                    return;
                }
                tokio::time::sleep(sync_delay).await;
                // What arrived while the sync was under way is appended, and
                // covered by it.
                let outcome = match queue.try_recv() {
                    Ok(next) => append_all(&mut store, next, &mut queue, &mut last),
                    Err(_) => Ok(()),
                }
                .and_then(|()| store.sync())
                .map_or_else(Written::Failed, |()| Written::Durable(last));
                if !send_report(&mut store, &report, outcome) {
                    return;
                }
            }
        });
        Self { records, reports }
    }

    /// Queues a record to write.
    pub fn submit(&self, ticket: u64, record: Record) {
        // A writer that stopped has reported why; the driver stops too.
        let _ = self.records.send((ticket, record));
    }

    /// The next report. Never resolves once the writer is gone.
    pub async fn next_report(&mut self) -> Written {
        match self.reports.recv().await {
            Some(written) => written,
            None => std::future::pending().await,
        }
    }
}

/// Appends `first` and what else is queued (up to [`MAX_BATCH`]), recording
/// the last ticket.
fn append_all<D: Disk>(
    store: &mut Store<D>,
    first: (u64, Record),
    queue: &mut mpsc::UnboundedReceiver<(u64, Record)>,
    last: &mut u64,
) -> Result<(), StorageError> {
    let (ticket, record) = first;
    store.append(record)?;
    *last = ticket;
    for _ in 1..MAX_BATCH {
        let Ok((ticket, record)) = queue.try_recv() else {
            break;
        };
        store.append(record)?;
        *last = ticket;
    }
    Ok(())
}

/// Reports `outcome`, and then whether the store wants a checkpoint.
/// Returns whether the writer goes on: not after a failure, nor once the
/// router is gone.
fn send_report<D: Disk>(
    store: &mut Store<D>,
    report: &mpsc::UnboundedSender<Written>,
    outcome: Written,
) -> bool {
    let failed = matches!(outcome, Written::Failed(_));
    if report.send(outcome).is_err() || failed {
        return false;
    }
    !store.wants_checkpoint() || report.send(Written::CheckpointWanted).is_ok()
}

fn write_batch<D: Disk>(
    store: &mut Store<D>,
    first: (u64, Record),
    queue: &mut mpsc::UnboundedReceiver<(u64, Record)>,
) -> Written {
    let mut last = first.0;
    append_all(store, first, queue, &mut last)
        .and_then(|()| store.sync())
        .map_or_else(Written::Failed, |()| Written::Durable(last))
}
