//! Property test: random registers, sends, group changes, disconnects,
//! partial deliveries and delays over one router and several clients in the
//! in-memory world; after healing and draining, the history must satisfy
//! every invariant the checker knows.

use std::time::Duration;

use peerlink_core::client::{Command, GroupOp};
use peerlink_core::ids::{GroupName, PeerId, Target};
use peerlink_core::router::RouterConfig;
use peerlink_core::testing::{epoch, World};
use proptest::prelude::*;
use sim::checker::check;

const PEERS: [&str; 4] = ["ann", "bob", "cat", "dan"];
const GROUPS: [&str; 2] = ["g1", "g2"];

#[derive(Debug, Clone)]
enum Op {
    /// Sends from peer `from` to target `to` (a peer, a group, or nobody).
    Send {
        from: usize,
        to: usize,
    },
    Join {
        peer: usize,
        group: usize,
    },
    Leave {
        peer: usize,
        group: usize,
    },
    /// Breaks a connection, losing its frames in flight.
    Cut {
        peer: usize,
    },
    Offline {
        peer: usize,
    },
    Online {
        peer: usize,
    },
    DeliverUp {
        peer: usize,
        n: usize,
    },
    DeliverDown {
        peer: usize,
        n: usize,
    },
    Settle,
    Advance {
        millis: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let peer = 0..PEERS.len();
    let group = 0..GROUPS.len();
    prop_oneof![
        6 => (peer.clone(), 0..PEERS.len() + GROUPS.len() + 1).prop_map(|(from, to)| Op::Send { from, to }),
        2 => (peer.clone(), group.clone()).prop_map(|(peer, group)| Op::Join { peer, group }),
        2 => (peer.clone(), group).prop_map(|(peer, group)| Op::Leave { peer, group }),
        1 => peer.clone().prop_map(|peer| Op::Cut { peer }),
        1 => peer.clone().prop_map(|peer| Op::Offline { peer }),
        1 => peer.clone().prop_map(|peer| Op::Online { peer }),
        3 => (peer.clone(), 1..4usize).prop_map(|(peer, n)| Op::DeliverUp { peer, n }),
        3 => (peer, 1..4usize).prop_map(|(peer, n)| Op::DeliverDown { peer, n }),
        1 => Just(Op::Settle),
        1 => (0..40_000u64).prop_map(|millis| Op::Advance { millis }),
    ]
}

fn target(index: usize) -> Target {
    let names: Vec<&str> = PEERS
        .iter()
        .chain(GROUPS.iter())
        .copied()
        .chain(["nobody"])
        .collect();
    Target::new(names[index]).unwrap()
}

/// Builds a world where every peer registered and each group was created by
/// one peer, then plays `ops` on it, heals it and drains it.
fn play(seed: u64, ops: &[Op], mailbox_limit: usize) -> World {
    let config = RouterConfig {
        mailbox_limit,
        push_window: 3,
        ..RouterConfig::default()
    };
    let mut world = World::new(seed, &PEERS, config, epoch());
    let peers: Vec<PeerId> = world.peers();
    for peer in &peers {
        world.command(peer, Command::Register);
    }
    world.settle();
    for (i, group) in GROUPS.iter().enumerate() {
        world.command(
            &peers[i],
            Command::Group(GroupOp::Create, GroupName::new(*group).unwrap()),
        );
    }
    world.settle();
    for (n, op) in ops.iter().enumerate() {
        match *op {
            Op::Send { from, to } => {
                let body = format!("m{n}");
                world.command(&peers[from], Command::Send { to: target(to), body });
            }
            Op::Join { peer, group } => {
                let group = GroupName::new(GROUPS[group]).unwrap();
                world.command(&peers[peer], Command::Group(GroupOp::Join, group));
            }
            Op::Leave { peer, group } => {
                let group = GroupName::new(GROUPS[group]).unwrap();
                world.command(&peers[peer], Command::Group(GroupOp::Leave, group));
            }
            Op::Cut { peer } => world.cut(&peers[peer]),
            Op::Offline { peer } => world.set_reachable(&peers[peer], false),
            Op::Online { peer } => world.set_reachable(&peers[peer], true),
            Op::DeliverUp { peer, n } => {
                world.deliver_up(&peers[peer], n);
            }
            Op::DeliverDown { peer, n } => {
                world.deliver_down(&peers[peer], n);
            }
            Op::Settle => world.settle(),
            Op::Advance { millis } => world.advance(Duration::from_millis(millis)),
        }
    }
    world.heal_and_drain();
    world
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_history_satisfies_the_invariants(seed in any::<u64>(), ops in prop::collection::vec(op(), 0..80)) {
        let world = play(seed, &ops, 10_000);
        let violations = check(world.history());
        prop_assert!(violations.is_empty(), "violations: {:#?}", violations);
    }

    #[test]
    fn small_mailboxes_refuse_instead_of_losing(seed in any::<u64>(), ops in prop::collection::vec(op(), 0..80)) {
        let world = play(seed, &ops, 2);
        let violations = check(world.history());
        prop_assert!(violations.is_empty(), "violations: {:#?}", violations);
    }
}

#[test]
fn the_same_seed_gives_the_same_history() {
    let ops: Vec<Op> = (0..40)
        .map(|i| match i % 5 {
            0 => Op::Send {
                from: i % 4,
                to: (i * 7) % 7,
            },
            1 => Op::Join {
                peer: i % 4,
                group: i % 2,
            },
            2 => Op::Cut { peer: (i / 5) % 4 },
            3 => Op::Advance { millis: 150 },
            _ => Op::DeliverUp { peer: i % 4, n: 2 },
        })
        .collect();
    let a = play(42, &ops, 10_000);
    let b = play(42, &ops, 10_000);
    assert_eq!(a.history(), b.history());
    assert!(check(a.history()).is_empty());
    assert!(a.history().len() > 40, "the scenario did something");
}
