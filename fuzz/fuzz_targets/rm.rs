//! The replica manager fed arbitrary requests from three router connections
//! and one tool connection, with time passing and persists acknowledged:
//! it never panics, epochs only grow, and every configuration it announces
//! names each router at most once and never below its own rules.
#![no_main]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use peerlink_core::ids::{ConnId, ReplicaId};
use peerlink_core::rm::{ReplicaManager, RmConfig, RmInput, RmOutput};
use peerlink_core::wire::cluster::{Configuration, RmReply, RmRequest};
use peerlink_core::wire::decode_as;
use peerlink_core::Machine;

fn check(config: &Configuration) {
    let mut seen = BTreeSet::new();
    for member in config
        .primary
        .iter()
        .chain(&config.backups)
        .chain(&config.candidates)
    {
        assert!(
            seen.insert(member.id.clone()),
            "{} twice in {config:?}",
            member.id
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let mut now = Instant::now();
    let mut rm = ReplicaManager::new(RmConfig::default(), Configuration::default(), now);
    for n in 0..4u64 {
        let id = (n < 3).then(|| ReplicaId::new(format!("r{n}")).expect("a valid name"));
        rm.handle(now, RmInput::Connected { conn: ConnId(n), id });
    }
    let mut epoch = rm.configuration().epoch;
    for line in data.split(|b| *b == b'\n') {
        let Some((&control, frame)) = line.split_first() else {
            continue;
        };
        let conn = ConnId(u64::from(control % 4));
        if control & 0x80 != 0 {
            now += Duration::from_millis(u64::from(control & 0x7f) * 20);
            rm.handle_timeout(now);
        }
        match decode_as::<RmRequest>(frame) {
            Ok(request) => rm.handle(now, RmInput::Request(conn, request)),
            Err(error) => rm.handle(now, RmInput::Malformed(conn, error)),
        }
        while let Some(output) = rm.poll_output() {
            match output {
                RmOutput::Persist(config) => {
                    assert!(config.epoch > epoch, "epoch {} after {epoch}", config.epoch);
                    epoch = config.epoch;
                    check(&config);
                    rm.handle(now, RmInput::Persisted(config.epoch));
                }
                RmOutput::Send(_, RmReply::Config { config } | RmReply::Heard { config, .. }) => {
                    check(&config)
                }
                RmOutput::Send(..) => {}
            }
        }
    }
});
