//! The real router and client drivers over turmoil's simulated network.

use peerlink_core::client::ClientEvent;
use peerlink_core::testing::What;
use sim::checker::check;
use sim::scenario::direct_and_group;

const SEEDS: [u64; 4] = [1, 2, 3, 0xdead_beef];

#[test]
fn a_direct_and_a_group_message_are_delivered() {
    for seed in SEEDS {
        let trace = direct_and_group(seed).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let violations = check(&trace.history);
        assert!(
            violations.is_empty(),
            "seed {seed}: {violations:#?}\n{:#?}",
            trace.lines
        );
        let observed = |peer: &str| -> Vec<&ClientEvent> {
            trace
                .history
                .iter()
                .filter(|r| r.peer.as_str() == peer)
                .filter_map(|r| match &r.what {
                    What::Observed(e) => Some(e),
                    _ => None,
                })
                .collect()
        };
        let bodies: Vec<&str> = observed("bob")
            .into_iter()
            .filter_map(|e| match e {
                ClientEvent::Received { body, .. } => Some(body.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(bodies, vec!["direct hello", "group hello"], "seed {seed}");
        let alice = observed("alice");
        let sent = alice
            .iter()
            .filter(|e| matches!(e, ClientEvent::Sent { .. }))
            .count();
        let delivered = alice
            .iter()
            .filter(|e| matches!(e, ClientEvent::Delivered { .. }))
            .count();
        assert_eq!((sent, delivered), (2, 2), "seed {seed}");
    }
}

#[test]
fn the_same_seed_gives_an_identical_trace() {
    let first = direct_and_group(7).expect("first run");
    let second = direct_and_group(7).expect("second run");
    assert_eq!(first.lines, second.lines);
    assert_eq!(first.digest(), second.digest());
    assert!(
        first.lines.iter().any(|l| l.starts_with("log ")),
        "router logs are part of the trace"
    );
}

#[test]
fn different_seeds_give_different_traces() {
    let a = direct_and_group(7).expect("seed 7");
    let b = direct_and_group(8).expect("seed 8");
    assert_ne!(a.digest(), b.digest());
}
