//! The production store on the simulated disk: whatever crashes strike
//! between writes and syncs — losing unsynced bytes, tearing the last
//! write, forgetting names not yet synced — reopening recovers a state that
//! is exactly a prefix of what was written, and never less than what the
//! last completed sync made durable.

use std::sync::Arc;

use peerlink_core::ids::{Epoch, Lsn, PeerId, Seq, Target};
use peerlink_core::router::secrets::KdfParams;
use peerlink_core::router::{Change, Record, Recovered};
use peerlink_runtime::storage::Store;
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sim::disk::SimDisk;

fn peer(name: &str) -> PeerId {
    PeerId::new(name).unwrap()
}

/// Change `n` of a fixed history: two registrations, then messages.
fn change(n: u64, size: usize) -> Change {
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
            body: Arc::from("x".repeat(size)),
        },
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Append this many changes of this body size.
    Append(u8, usize),
    Sync,
    Crash(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1..20u8, 0..3_000usize).prop_map(|(n, size)| Op::Append(n, size)),
        3 => Just(Op::Sync),
        1 => any::<u64>().prop_map(Op::Crash),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn recovery_after_any_crash_keeps_every_synced_change_and_nothing_torn(
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let disk = SimDisk::default();
        // A small threshold, so that checkpoints come and go under crashes.
        let checkpoint_after = 8 * 1024;
        let mut store = Store::open(disk.clone(), 9, checkpoint_after).unwrap().store;
        let mut written = Recovered::default();
        let mut sizes = vec![0];
        let mut synced = Lsn(0);
        for op in ops {
            match op {
                Op::Append(n, size) => {
                    for _ in 0..n {
                        let lsn = written.lsn.next();
                        sizes.push(size);
                        let record = Record::Change { epoch: Epoch(1), lsn, change: change(lsn.0, size) };
                        written.apply(record.clone()).expect("a consistent history");
                        store.append(record).unwrap();
                    }
                }
                Op::Sync => {
                    store.sync().unwrap();
                    synced = written.lsn;
                    if store.wants_checkpoint() {
                        let Recovered { epoch, lsn, state } = written.clone();
                        store.append(Record::Checkpoint { epoch, lsn, state: Box::new(state) }).unwrap();
                    }
                }
                Op::Crash(seed) => {
                    drop(store);
                    disk.crash(&mut ChaCha8Rng::seed_from_u64(seed));
                    let opened = Store::open(disk.clone(), 10, checkpoint_after).unwrap();
                    let got = opened.recovered;
                    prop_assert!(got.lsn >= synced, "synced up to {synced}, recovered {}", got.lsn);
                    prop_assert_eq!(opened.store.state_id(), 9, "the identity survives");
                    // Exactly the prefix up to what was recovered.
                    let mut prefix = Recovered::default();
                    for k in 1..=got.lsn.0 {
                        let record = Record::Change { epoch: Epoch(1), lsn: Lsn(k), change: change(k, sizes[k as usize]) };
                        prefix.apply(record).expect("a consistent history");
                    }
                    prop_assert_eq!(&got, &prefix);
                    written = got;
                    sizes.truncate(written.lsn.0 as usize + 1);
                    synced = written.lsn;
                    store = opened.store;
                }
            }
        }
    }
}

/// A router whose disk fills up stops at its next write — its clients are
/// told `storage_failed` — and another router takes over, with nothing
/// acknowledged lost (the checker's verdict).
#[test]
fn a_failing_disk_stops_its_router_and_another_takes_over() {
    for seed in 1..=3 {
        let outcome = sim::scenario::run_scenario("failing_disks", seed).expect("the run finishes");
        assert!(
            outcome.violations.is_empty(),
            "seed {seed}: {:?}",
            outcome.violations
        );
        let lines = &outcome.trace.lines;
        let told = lines
            .iter()
            .filter(|l| l.contains("Disconnected") && l.contains("storage_failed"))
            .count();
        assert!(told > 0, "seed {seed}: no client was told storage_failed");
        let primaries: std::collections::BTreeSet<&str> = lines
            .iter()
            .filter_map(|l| l.split("serving as primary router=").nth(1))
            .filter_map(|rest| rest.split_whitespace().next())
            .collect();
        assert!(
            primaries.len() > 1,
            "seed {seed}: no other router took over: {primaries:?}"
        );
    }
}
