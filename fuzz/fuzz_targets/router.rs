//! A standalone router fed arbitrary frame sequences on a few connections,
//! with connects, disconnects and time passing in between: it never
//! panics, and every answer it writes is a frame that decodes. A reconnect
//! gets a new connection ID, as drivers give; now and then an ID is
//! reported connected again while live, which no driver does but the
//! router must survive.
#![no_main]

use std::time::{Duration, Instant};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use peerlink_core::ids::ConnId;
use peerlink_core::router::secrets::KdfParams;
use peerlink_core::router::{Router, RouterConfig, RouterInput, RouterOutput};
use peerlink_core::wire::{decode_client_frame, decode_server_frame, encode_frame};
use peerlink_core::Machine;

/// Two source addresses, so that per-source limits come into play.
fn source(conn: ConnId) -> std::net::IpAddr {
    std::net::IpAddr::from([10, 0, 0, (conn.0 % 2) as u8])
}

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut now = start;
    let config = RouterConfig {
        mailbox_limit: 8,
        mailbox_bytes: 4096,
        storage_bytes: 16_384,
        push_window: 4,
        kdf: KdfParams::CHEAPEST,
        ..RouterConfig::default()
    };
    let mut router = Router::new(config, 7, now);
    // The current connection in each of three slots.
    let mut slots = [ConnId(1), ConnId(2), ConnId(3)];
    let mut next = 3;
    for conn in slots {
        router.handle(now, RouterInput::Connected { conn, source: source(conn) });
    }
    // Each line: a control byte (which connection, and what else happens)
    // then the frame.
    for line in data.split(|b| *b == b'\n') {
        let Some((&control, frame)) = line.split_first() else {
            continue;
        };
        let slot = usize::from(control % 3);
        match control / 3 % 8 {
            0 => router.handle(now, RouterInput::Disconnected(slots[slot])),
            1 => {
                router.handle(now, RouterInput::Disconnected(slots[slot]));
                next += 1;
                slots[slot] = ConnId(next);
                router.handle(now, RouterInput::Connected { conn: slots[slot], source: source(slots[slot]) });
            }
            3 => router.handle(now, RouterInput::Connected { conn: slots[slot], source: source(slots[slot]) }),
            2 => {
                now += Duration::from_millis(u64::from(control) * 100);
                router.handle_timeout(now);
            }
            _ => {}
        }
        let conn = slots[slot];
        let input = match decode_client_frame(frame) {
            Ok(frame) => RouterInput::Frame(conn, frame),
            Err(error) => RouterInput::Malformed(conn, error),
        };
        router.handle(now, input);
        while let Some(output) = router.poll_output() {
            match output {
                RouterOutput::Send(_, frame) => {
                    let mut out = BytesMut::new();
                    encode_frame(&frame, &mut out);
                    decode_server_frame(&out[..out.len() - 1]).expect("the router writes frames that decode");
                }
                RouterOutput::HashSecret(job) => {
                    let hash = job.run();
                    router.handle(now, RouterInput::SecretHashed { job: job.job, hash });
                }
                _ => {}
            }
        }
    }
});
