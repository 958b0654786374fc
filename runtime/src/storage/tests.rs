//! The store's format and recovery: round trips, torn tails at every byte,
//! flipped bits, truncation, checkpoints, and the files that must be whole.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use peerlink_core::ids::{Epoch, Lsn, PeerId, Seq, Target};
use peerlink_core::router::secrets::KdfParams;
use peerlink_core::router::{Change, Record, Recovered};

use super::{Disk, Opened, StorageError, Store};

/// A directory in memory; every write is durable at once (tests damage
/// the bytes by hand).
#[derive(Debug, Default, Clone)]
struct MemDisk {
    files: BTreeMap<String, Vec<u8>>,
}

impl Disk for MemDisk {
    fn list(&mut self) -> io::Result<Vec<String>> {
        Ok(self.files.keys().cloned().collect())
    }
    fn read(&mut self, name: &str) -> io::Result<Vec<u8>> {
        self.files
            .get(name)
            .cloned()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.files
            .entry(name.to_owned())
            .or_default()
            .extend_from_slice(bytes);
        Ok(())
    }
    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        self.files
            .entry(name.to_owned())
            .or_default()
            .truncate(len as usize);
        Ok(())
    }
    fn sync(&mut self, _: &str) -> io::Result<()> {
        Ok(())
    }
    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        let bytes = self.files.remove(from).ok_or(io::ErrorKind::NotFound)?;
        self.files.insert(to.to_owned(), bytes);
        Ok(())
    }
    fn remove(&mut self, name: &str) -> io::Result<()> {
        self.files.remove(name);
        Ok(())
    }
    fn sync_dir(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn describe(&self) -> String {
        "memory".into()
    }
}

fn peer(name: &str) -> PeerId {
    PeerId::new(name).unwrap()
}

/// Change `n` of a fixed history: two registrations, then messages from
/// alice to bob.
fn change(n: u64) -> Change {
    match n {
        1 | 2 => Change::Registered {
            peer: peer(if n == 1 { "alice" } else { "bob" }),
            salt: [n as u8; 16],
            kdf: KdfParams::CHEAPEST,
            secret_hash: [n as u8; 32],
        },
        _ => Change::Accepted {
            from: peer("alice"),
            seq: Seq(n - 2),
            to: Target::new("bob").unwrap(),
            recipients: vec![peer("bob")],
            body: Arc::from(format!("message {n}")),
        },
    }
}

fn record(n: u64) -> Record {
    Record::Change {
        epoch: Epoch(1),
        lsn: Lsn(n),
        change: change(n),
    }
}

/// The state after changes 1..=n.
fn expected(n: u64) -> Recovered {
    let mut r = Recovered::default();
    for k in 1..=n {
        r.apply(record(k)).expect("a consistent history");
    }
    r
}

fn open(disk: MemDisk, checkpoint_after: u64) -> Opened<MemDisk> {
    Store::open(disk, 42, checkpoint_after).expect("opens")
}

/// Appends the checkpoint the store asks for, as a router does: the state
/// after changes 1..=n.
fn answer(store: &mut Store<MemDisk>, n: u64) {
    if store.wants_checkpoint() {
        let Recovered { state, lsn, epoch } = expected(n);
        let state = Box::new(state);
        store.append(Record::Checkpoint { epoch, lsn, state }).unwrap();
    }
}

/// A disk holding changes 1..=n, synced; no checkpoint unless the log
/// passes `checkpoint_after`.
fn written(n: u64, checkpoint_after: u64) -> MemDisk {
    let mut store = open(MemDisk::default(), checkpoint_after).store;
    for k in 1..=n {
        store.append(record(k)).unwrap();
        store.sync().unwrap();
        answer(&mut store, k);
    }
    store.disk().clone()
}

const LOG: &str = "log-00000000000000000000";

#[test]
fn a_new_directory_gets_an_identity_and_an_empty_state() {
    let opened = open(MemDisk::default(), u64::MAX);
    assert!(opened.report.fresh);
    assert_eq!(opened.recovered, Recovered::default());
    assert_eq!(opened.store.state_id(), 42);
    let again = Store::open(opened.store.disk().clone(), 7, u64::MAX).unwrap();
    assert_eq!(again.store.state_id(), 42, "the identity is kept");
    assert!(!again.report.fresh);
}

#[test]
fn changes_round_trip() {
    let opened = open(written(20, u64::MAX), u64::MAX);
    assert_eq!(opened.recovered, expected(20));
    assert_eq!((opened.report.replayed, opened.report.dropped_bytes), (20, 0));
}

#[test]
fn a_log_cut_at_any_byte_recovers_every_whole_change_before_the_cut() {
    let disk = written(6, u64::MAX);
    let log = disk.files[LOG].clone();
    let mut whole = 0;
    for cut in 0..=log.len() {
        let mut torn = disk.clone();
        torn.files.get_mut(LOG).unwrap().truncate(cut);
        let opened = open(torn, u64::MAX);
        let n = opened.recovered.lsn.0;
        assert!(n >= whole, "cut at {cut}: recovered {n} after {whole}");
        whole = n;
        assert_eq!(opened.recovered, expected(n), "cut at {cut}");
        // What recovery cut stays cut: the store appends after it.
        let mut store = opened.store;
        store.append(record(n + 1)).unwrap();
        store.sync().unwrap();
        assert_eq!(
            open(store.disk().clone(), u64::MAX).recovered,
            expected(n + 1),
            "cut at {cut}"
        );
    }
    assert_eq!(whole, 6);
}

#[test]
fn a_flipped_bit_anywhere_in_the_log_loses_only_what_follows_it() {
    let disk = written(4, u64::MAX);
    let log = disk.files[LOG].clone();
    for byte in 0..log.len() {
        for bit in [0, 3, 7] {
            let mut damaged = disk.clone();
            damaged.files.get_mut(LOG).unwrap()[byte] ^= 1 << bit;
            let opened = open(damaged, u64::MAX);
            let n = opened.recovered.lsn.0;
            assert!(n < 4, "byte {byte} bit {bit}: the damaged change was served");
            assert_eq!(opened.recovered, expected(n), "byte {byte} bit {bit}");
            assert!(opened.report.dropped_bytes > 0);
        }
    }
}

/// A whole record — its checksum holds — is no torn tail, even when it
/// does not follow or cannot be read (a newer version wrote it): recovery
/// refuses the directory instead of cutting the log there.
#[test]
fn a_whole_record_that_does_not_follow_or_cannot_be_read_stops_the_router() {
    let mut store = open(MemDisk::default(), u64::MAX).store;
    for k in [1, 2, 4] {
        store.append(record(k)).unwrap();
    }
    store.sync().unwrap();
    let Err(error) = Store::open(store.disk().clone(), 42, u64::MAX) else {
        panic!("a log with a gap was opened");
    };
    assert!(matches!(error, StorageError::Damaged { .. }), "{error}");
    assert!(error.to_string().contains("after LSN 2 is numbered 4"), "{error}");

    let mut disk = written(2, u64::MAX);
    let unknown = br#"{"epoch":1,"lsn":3,"change":{"type":"renamed","peer":"alice"}}"#;
    super::format::put_frame(disk.files.get_mut(LOG).unwrap(), unknown);
    let Err(error) = Store::open(disk, 42, u64::MAX) else {
        panic!("a log with an unreadable record was opened");
    };
    assert!(
        error
            .to_string()
            .contains("after LSN 2 is whole but cannot be read"),
        "{error}"
    );

    // A known change with a field this version does not know (as a newer
    // version might write) is refused too, not read without the field.
    let mut disk = written(2, u64::MAX);
    let newer = br#"{"epoch":1,"lsn":3,"change":{"change":"acked","peer":"alice","delivery":1,"until":5}}"#;
    super::format::put_frame(disk.files.get_mut(LOG).unwrap(), newer);
    let Err(error) = Store::open(disk, 42, u64::MAX) else {
        panic!("a log with a field from a newer version was opened");
    };
    assert!(error.to_string().contains("unknown field `until`"), "{error}");
}

#[test]
fn checkpoints_bound_the_log_and_recovery_starts_from_the_newest() {
    let disk = written(60, 2_000);
    let checkpoints = disk.files.keys().filter(|n| n.starts_with("checkpoint-")).count();
    let logs = disk.files.keys().filter(|n| n.starts_with("log-")).count();
    assert_eq!(
        (checkpoints, logs),
        (1, 1),
        "older generations removed: {:?}",
        disk.files.keys()
    );
    let log_bytes = disk
        .files
        .iter()
        .find(|(n, _)| n.starts_with("log-"))
        .unwrap()
        .1
        .len();
    assert!(log_bytes < 2_000 + 200, "the log is {log_bytes} bytes");
    let opened = open(disk, 2_000);
    assert!(opened.report.checkpoint.is_some());
    assert_eq!(opened.recovered, expected(60));
}

#[test]
fn a_checkpoint_is_asked_for_once_per_threshold_and_covers_what_was_buffered() {
    let mut store = open(MemDisk::default(), 1_000).store;
    let mut k = 0;
    while !store.wants_checkpoint() {
        k += 1;
        assert!(k < 100, "1,000 bytes of log and no checkpoint wanted");
        store.append(record(k)).unwrap();
        store.sync().unwrap();
    }
    assert!(k > 1, "the threshold is in bytes of log");
    store.append(record(k + 1)).unwrap();
    store.sync().unwrap();
    assert!(!store.wants_checkpoint(), "asked once until a checkpoint comes");
    // Not synced: the checkpoint makes it durable with the rest.
    store.append(record(k + 2)).unwrap();
    let Recovered { state, lsn, epoch } = expected(k + 2);
    store
        .append(Record::Checkpoint {
            epoch,
            lsn,
            state: Box::new(state),
        })
        .unwrap();
    let files: Vec<_> = store.disk().files.keys().cloned().collect();
    assert_eq!(
        files,
        ["checkpoint-00000000000000000001", "identity"],
        "the log behind the checkpoint is gone"
    );
    let opened = open(store.disk().clone(), 1_000);
    assert_eq!(opened.recovered, expected(k + 2));
    assert_eq!(opened.report.checkpoint, Some((1, Lsn(k + 2))));
    let mut store = opened.store;
    assert!(!store.wants_checkpoint(), "the new log is empty");
}

#[test]
fn a_checkpoint_that_does_not_repeat_the_last_position_is_refused() {
    let mut store = open(MemDisk::default(), u64::MAX).store;
    for k in 1..=5 {
        store.append(record(k)).unwrap();
    }
    store.sync().unwrap();
    for (epoch, lsn) in [(Epoch(1), Lsn(4)), (Epoch(1), Lsn(6)), (Epoch(2), Lsn(5))] {
        let state = Box::new(expected(lsn.0.min(5)).state);
        let error = store
            .append(Record::Checkpoint { epoch, lsn, state })
            .unwrap_err();
        assert!(matches!(error, StorageError::Misplaced { .. }), "{error}");
    }
    assert!(
        !store.disk().files.keys().any(|n| n.starts_with("checkpoint")),
        "nothing written"
    );
    assert_eq!(open(store.disk().clone(), u64::MAX).recovered, expected(5));
}

#[test]
fn a_loaded_state_replaces_the_history_before_it() {
    let mut store = open(MemDisk::default(), u64::MAX).store;
    for k in 1..=5 {
        store.append(record(k)).unwrap();
    }
    let other = expected(3);
    store
        .append(Record::State {
            epoch: Epoch(2),
            lsn: Lsn(3),
            state: Box::new(other.state.clone()),
        })
        .unwrap();
    store
        .append(Record::Change {
            epoch: Epoch(2),
            lsn: Lsn(4),
            change: change(4),
        })
        .unwrap();
    store.sync().unwrap();
    let opened = open(store.disk().clone(), u64::MAX);
    let mut want = other;
    want.epoch = Epoch(2);
    want.apply(Record::Change {
        epoch: Epoch(2),
        lsn: Lsn(4),
        change: change(4),
    })
    .expect("a consistent history");
    assert_eq!(opened.recovered, want);
}

/// A checkpoint that lost part of the state (here: all of it) leaves a log
/// whose changes name peers it does not hold. Recovery must refuse the
/// directory rather than cut the log there (and start without what was
/// acknowledged) or panic.
#[test]
fn a_log_that_does_not_follow_from_its_checkpoint_stops_the_router() {
    let mut store = open(MemDisk::default(), u64::MAX).store;
    for k in 1..=2 {
        store.append(record(k)).unwrap();
    }
    let forgetful = Record::Checkpoint {
        epoch: Epoch(1),
        lsn: Lsn(2),
        state: Box::default(),
    };
    store.append(forgetful).unwrap();
    for k in 3..=5 {
        store.append(record(k)).unwrap();
    }
    store.sync().unwrap();
    let Err(error) = Store::open(store.disk().clone(), 42, u64::MAX) else {
        panic!("a log that names unregistered peers was replayed");
    };
    assert!(matches!(error, StorageError::Damaged { .. }), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("LSN 3") && text.contains("alice, who is not registered"),
        "{text}"
    );
}

#[test]
fn a_damaged_checkpoint_stops_the_router_instead_of_starting_with_less() {
    let disk = written(60, 2_000);
    let name = disk
        .files
        .keys()
        .find(|n| n.starts_with("checkpoint-"))
        .unwrap()
        .clone();
    let mut damaged = disk.clone();
    let bytes = damaged.files.get_mut(&name).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    let error = Store::open(damaged, 1, 2_000).unwrap_err();
    assert!(matches!(error, StorageError::Damaged { .. }), "{error}");
    let mut truncated = disk;
    truncated.files.get_mut(&name).unwrap().truncate(middle);
    assert!(matches!(
        Store::open(truncated, 1, 2_000).unwrap_err(),
        StorageError::Damaged { .. }
    ));
}

#[test]
fn data_without_an_identity_is_refused_and_leftovers_are_cleared() {
    let mut disk = written(3, u64::MAX);
    disk.files
        .insert("checkpoint-00000000000000000009.tmp".into(), vec![1, 2, 3]);
    let opened = open(disk.clone(), u64::MAX);
    assert!(!opened.store.disk().files.keys().any(|n| n.ends_with(".tmp")));
    disk.files.remove("identity");
    assert!(matches!(
        Store::open(disk, 1, u64::MAX).unwrap_err(),
        StorageError::NoIdentity { .. }
    ));
}

/// A disk shared with the test, which can make it refuse every change.
#[derive(Debug, Clone, Default)]
struct FlakyDisk {
    inner: std::sync::Arc<std::sync::Mutex<MemDisk>>,
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FlakyDisk {
    fn change(&self, name: &str, op: impl FnOnce(&mut MemDisk) -> io::Result<()>) -> io::Result<()> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("{name}: no space left"),
            ));
        }
        op(&mut self.inner.lock().unwrap())
    }
}

impl Disk for FlakyDisk {
    fn list(&mut self) -> io::Result<Vec<String>> {
        self.inner.lock().unwrap().list()
    }
    fn read(&mut self, name: &str) -> io::Result<Vec<u8>> {
        self.inner.lock().unwrap().read(name)
    }
    fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.change(name, |d| d.append(name, bytes))
    }
    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        self.change(name, |d| d.truncate(name, len))
    }
    fn sync(&mut self, name: &str) -> io::Result<()> {
        self.change(name, |d| d.sync(name))
    }
    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        self.change(to, |d| d.rename(from, to))
    }
    fn remove(&mut self, name: &str) -> io::Result<()> {
        self.change(name, |d| d.remove(name))
    }
    fn sync_dir(&mut self) -> io::Result<()> {
        self.change("the directory", MemDisk::sync_dir)
    }
    fn describe(&self) -> String {
        "a flaky disk".into()
    }
}

/// The production writer on a disk that fills up: it reports the failure
/// (never "durable" for what it could not write), then stops reporting,
/// and the disk holds exactly what was reported durable before.
#[tokio::test]
async fn the_writer_reports_a_failing_disk_and_claims_nothing_more() {
    use super::{Storage, Written};
    use std::time::Duration;

    let disk = FlakyDisk::default();
    let store = Store::open(disk.clone(), 42, u64::MAX).expect("opens").store;
    let mut storage = Storage::thread(store).expect("a thread");
    for n in 1..=2 {
        storage.submit(n, record(n));
    }
    loop {
        match storage.next_report().await {
            Written::Durable(2) => break,
            Written::Durable(_) => {}
            other => panic!("expected records 1 and 2 durable, got {other:?}"),
        }
    }
    disk.failing.store(true, std::sync::atomic::Ordering::SeqCst);
    storage.submit(3, record(3));
    match storage.next_report().await {
        Written::Failed(error) => assert!(error.to_string().contains("no space left"), "{error}"),
        other => panic!("a failed write was reported as {other:?}"),
    }
    storage.submit(4, record(4));
    let more = tokio::time::timeout(Duration::from_millis(300), storage.next_report()).await;
    assert!(more.is_err(), "the writer went on after a failure: {more:?}");
    disk.failing.store(false, std::sync::atomic::Ordering::SeqCst);
    let reopened = open(disk.inner.lock().unwrap().clone(), u64::MAX);
    assert_eq!(reopened.recovered, expected(2));
}
