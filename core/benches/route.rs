//! The ceiling the network layers should approach: how many direct
//! messages one standalone [`Router`] routes per second on one core, in
//! memory, with no I/O.
//!
//! Each message makes the full trip a real one makes: the sender's `send`,
//! the router's `sent` answer and `message` push, the recipient's `ack`, the
//! `delivered` receipt to the sender and the sender's `ack` of it. The first
//! figure feeds the router frames directly; the second also decodes every
//! client frame from its JSON line and encodes every server frame, as the
//! drivers do. The third feeds frames directly too, but every peer sends
//! one message before any is acknowledged, and each peer then acknowledges
//! what it was pushed with one range, as `peerlink client` does under load.
//!
//! Run with `cargo bench -p peerlink-core --bench route`.

// A benchmark measures wall-clock time; `core`'s ban on clocks is for the
// machines, which this only drives.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use peerlink_core::ids::{ConnId, DeliveryId, PeerId, ReqId, Secret, Seq, Target};
use peerlink_core::router::secrets::KdfParams;
use peerlink_core::router::{Router, RouterConfig, RouterInput, RouterOutput};
use peerlink_core::wire::{decode_client_frame, encode_frame, ClientFrame, ServerFrame};
use peerlink_core::Machine;

/// Peers, as in `peerlink bench dm`.
const PEERS: u64 = 64;
/// Message size, as in `peerlink bench dm`.
const BODY: usize = 128;
/// How long each measurement runs.
const RUN: Duration = Duration::from_secs(3);
/// Messages between clock reads.
const BATCH: u64 = 1_000;

/// Feeds frames to the router, with or without the codec in between.
struct Bench {
    router: Router,
    now: Instant,
    codec: bool,
    line: Vec<u8>,
    out: BytesMut,
}

impl Bench {
    fn new(codec: bool) -> Self {
        let now = Instant::now();
        let mut bench = Self {
            router: Router::new(
                RouterConfig {
                    kdf: KdfParams::CHEAPEST,
                    ..RouterConfig::default()
                },
                1,
                now,
            ),
            now,
            codec,
            line: Vec::new(),
            out: BytesMut::new(),
        };
        for p in 0..PEERS {
            let source = std::net::IpAddr::from([127, 0, 0, 1]);
            bench.router.handle(
                now,
                RouterInput::Connected {
                    conn: ConnId(p),
                    source,
                },
            );
            let frame = ClientFrame::Register {
                req: ReqId(1),
                peer: peer(p),
                secret: Secret::new("secret").expect("valid"),
            };
            bench.feed(p, frame, &mut Vec::new());
        }
        bench
    }

    /// Hands the router one frame from connection `conn`; collects the
    /// frames it writes to connections as `(conn, frame)`.
    fn feed(&mut self, conn: u64, frame: ClientFrame, written: &mut Vec<(u64, ServerFrame)>) {
        let frame = if self.codec {
            self.line.clear();
            serde_json::to_writer(&mut self.line, &frame).expect("serializes");
            decode_client_frame(&self.line).expect("decodes")
        } else {
            frame
        };
        self.router
            .handle(self.now, RouterInput::Frame(ConnId(conn), frame));
        while let Some(output) = self.router.poll_output() {
            match output {
                RouterOutput::Send(ConnId(c), frame) => {
                    if self.codec {
                        self.out.clear();
                        encode_frame(&frame, &mut self.out);
                    }
                    written.push((c, frame));
                }
                RouterOutput::HashSecret(job) => {
                    let hash = job.run();
                    let input = RouterInput::SecretHashed { job: job.job, hash };
                    self.router.handle(self.now, input);
                }
                // The machine alone: its storage is taken to write at once.
                RouterOutput::Persist { ticket, .. } => {
                    self.router.handle(self.now, RouterInput::Persisted { ticket });
                }
                _ => {}
            }
        }
    }

    /// Sends message number `n`, from peer `n % PEERS` to peer `to`; every
    /// peer's sequence numbers run on by one each [`PEERS`] messages.
    fn send(&mut self, n: u64, to: u64, body: &str, written: &mut Vec<(u64, ServerFrame)>) {
        let send = ClientFrame::Send {
            req: ReqId(n),
            seq: Seq(n / PEERS + 1),
            to: Target::from(peer(to)),
            body: body.to_owned(),
        };
        self.feed(n % PEERS, send, written);
    }

    /// Routes message number `n` all the way to the sender's receipt ack.
    fn route(&mut self, n: u64, body: &str, written: &mut Vec<(u64, ServerFrame)>) {
        let from = n % PEERS;
        self.send(n, (from + 1 + n % (PEERS - 1)) % PEERS, body, written);
        // Acknowledge every push (the message, then the receipt) until
        // nothing more is written.
        while let Some((conn, frame)) = written.pop() {
            let delivery = match frame {
                ServerFrame::Message { delivery, .. } | ServerFrame::Delivered { delivery, .. } => delivery,
                _ => continue,
            };
            self.feed(
                conn,
                ClientFrame::Ack {
                    delivery,
                    through: None,
                },
                written,
            );
        }
    }

    /// Routes messages `n..n + PEERS`, one from each peer, all sent before
    /// any is acknowledged; then each peer acknowledges what it was pushed
    /// with one range, until nothing more is written.
    fn route_run(&mut self, n: u64, body: &str, written: &mut Vec<(u64, ServerFrame)>) {
        for m in n..n + PEERS {
            let from = m % PEERS;
            self.send(m, (from + 1 + (m / PEERS) % (PEERS - 1)) % PEERS, body, written);
        }
        loop {
            let mut ranges: BTreeMap<u64, (DeliveryId, DeliveryId)> = BTreeMap::new();
            for (conn, frame) in written.drain(..) {
                if let ServerFrame::Message { delivery, .. } | ServerFrame::Delivered { delivery, .. } = frame
                {
                    let range = ranges.entry(conn).or_insert((delivery, delivery));
                    range.0 = range.0.min(delivery);
                    range.1 = range.1.max(delivery);
                }
            }
            if ranges.is_empty() {
                return;
            }
            for (conn, (first, last)) in ranges {
                let ack = ClientFrame::Ack {
                    delivery: first,
                    through: (last > first).then_some(last),
                };
                self.feed(conn, ack, written);
            }
        }
    }
}

fn peer(n: u64) -> PeerId {
    PeerId::new(format!("p{n}")).expect("valid")
}

/// One step of a measurement: routes messages from number `n` on and
/// returns how many.
type Step = fn(&mut Bench, u64, &str, &mut Vec<(u64, ServerFrame)>) -> u64;

/// Routes messages for [`RUN`], `step` at a time, and returns messages per
/// second.
fn measure(codec: bool, step: Step) -> f64 {
    let mut bench = Bench::new(codec);
    let body = "x".repeat(BODY);
    let mut written = Vec::new();
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < RUN {
        let batch_end = n + BATCH;
        while n < batch_end {
            n += step(&mut bench, n, &body, &mut written);
        }
    }
    assert!(
        bench.router.mailboxes_empty(),
        "every message was delivered and acknowledged"
    );
    n as f64 / started.elapsed().as_secs_f64()
}

/// One message, acknowledged item by item.
fn one(bench: &mut Bench, n: u64, body: &str, written: &mut Vec<(u64, ServerFrame)>) -> u64 {
    bench.route(n, body, written);
    1
}

/// One message from every peer, acknowledged in ranges.
fn run_of_peers(bench: &mut Bench, n: u64, body: &str, written: &mut Vec<(u64, ServerFrame)>) -> u64 {
    bench.route_run(n, body, written);
    PEERS
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: stay quick.
    if !std::env::args().any(|a| a == "--bench") {
        let mut bench = Bench::new(true);
        bench.route(0, "x", &mut Vec::new());
        bench.route_run(1, "x", &mut Vec::new());
        assert!(bench.router.mailboxes_empty());
        return;
    }
    let routed = measure(false, one);
    let with_codec = measure(true, one);
    let in_runs = measure(false, run_of_peers);
    println!(
        "core route: {routed:.0} messages/s (router only), {with_codec:.0} messages/s (router + JSON codec), {in_runs:.0} messages/s (router only, acknowledged in ranges)"
    );
    println!(
        "core_router_msgs_per_s={routed:.0} core_router_codec_msgs_per_s={with_codec:.0} core_router_ranges_msgs_per_s={in_runs:.0}"
    );
}
