//! Replication between a primary and one backup, driven by hand: client
//! traffic on the primary while the replication stream drops, duplicates and
//! reorders frames. Properties: the primary never reports Sent for a message
//! the backup does not hold, and once the stream heals the backup's state
//! equals the primary's. Plus: frames from an older epoch are refused.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use peerlink_core::ids::{ConnId, DeliveryId, Epoch, Lsn, PeerId, ReplicaId, ReqId, Secret, Seq, Target};
use peerlink_core::router::replication::{Link, ReplicationConfig};
use peerlink_core::router::secrets::KdfParams;
use peerlink_core::router::{Record, Recovered, Router, RouterConfig, RouterInput, RouterOutput};
use peerlink_core::testing::epoch;
use peerlink_core::wire::cluster::{Configuration, FollowerFrame, Member, PrimaryFrame, RmReply, RmRequest};
use peerlink_core::wire::{ClientFrame, ServerFrame};
use peerlink_core::Machine;
use proptest::prelude::*;

const PEERS: [&str; 3] = ["a", "b", "c"];

fn member(id: &str) -> Member {
    Member {
        id: ReplicaId::new(id).unwrap(),
        addr: format!("{id}:1"),
        cluster_addr: format!("{id}:2"),
        incarnation: 1,
        state_id: 0,
    }
}

fn router(id: &str, now: Instant) -> Router {
    router_with_log(id, now, 100_000)
}

/// A router whose replication log keeps at most `max_log` changes.
fn router_with_log(id: &str, now: Instant, max_log: usize) -> Router {
    recovered_router(id, now, max_log, Recovered::default())
}

/// A router started from what its storage recovered.
fn recovered_router(id: &str, now: Instant, max_log: usize, recovered: Recovered) -> Router {
    let mut replication = ReplicationConfig::new(
        ReplicaId::new(id).unwrap(),
        format!("{id}:1"),
        format!("{id}:2"),
        "rm:1".into(),
        1,
    );
    replication.max_log = max_log;
    let config = RouterConfig {
        replication: Some(replication),
        kdf: KdfParams::CHEAPEST,
        ..RouterConfig::default()
    };
    Router::recover(config, 3, now, recovered)
}

/// A router's storage: records written, and what a sync has made durable.
/// A crash loses what was written since the last sync.
#[derive(Debug, Default)]
struct ModelDisk {
    written: Vec<(u64, Record)>,
    durable: Recovered,
}

impl ModelDisk {
    /// Makes everything written durable; the ticket to report, if any.
    fn sync(&mut self) -> Option<u64> {
        let last = self.written.last().map(|(t, _)| *t);
        for (_, record) in self.written.drain(..) {
            self.durable.apply(record).expect("a consistent history");
        }
        last
    }
}

fn configuration(epoch: u64) -> Configuration {
    Configuration {
        epoch: Epoch(epoch),
        primary: Some(member("p")),
        backups: vec![member("f")],
        candidates: vec![],
        min_backups: 1,
        failure_timeout_ms: 500,
    }
}

/// A primary `p`, a backup `f`, the replication stream between them, and
/// client connections on the primary (conn 100 + i for peer i).
struct Pair {
    now: Instant,
    p: Router,
    f: Router,
    /// In flight from the primary to the follower.
    to_f: VecDeque<PrimaryFrame>,
    /// In flight from the follower to the primary.
    to_p: VecDeque<FollowerFrame>,
    /// The follower's current connection on the primary, and its attempt.
    f_conn: Option<ConnId>,
    f_attempt: u64,
    next_conn: u64,
    next_seq: BTreeMap<usize, u64>,
    /// Mailbox items pushed to each client and not yet acknowledged.
    unacked: BTreeMap<usize, VecDeque<DeliveryId>>,
    /// Sent replies seen, per peer.
    sent: BTreeMap<usize, Vec<Seq>>,
    answers: usize,
    sends: usize,
    violations: Vec<String>,
    /// Whether the RM answers the primary's heartbeats, and the follower's.
    p_hears_rm: bool,
    f_hears_rm: bool,
    /// Requests the primary sent the RM other than heartbeats.
    to_rm: Vec<RmRequest>,
    /// Each router's storage.
    p_disk: ModelDisk,
    f_disk: ModelDisk,
    /// Whether storage syncs as soon as anything is written (otherwise
    /// only on [`Pair::sync`]).
    auto_sync: bool,
}

impl Pair {
    fn new() -> Self {
        Self::with_log(100_000)
    }

    /// A pair whose primary's log keeps at most `max_log` changes.
    fn with_log(max_log: usize) -> Self {
        let now = epoch();
        let mut pair = Self {
            now,
            p: router_with_log("p", now, max_log),
            f: router("f", now),
            to_f: VecDeque::new(),
            to_p: VecDeque::new(),
            f_conn: None,
            f_attempt: 0,
            next_conn: 0,
            next_seq: BTreeMap::new(),
            unacked: BTreeMap::new(),
            sent: BTreeMap::new(),
            answers: 0,
            sends: 0,
            violations: Vec::new(),
            p_hears_rm: true,
            f_hears_rm: false,
            to_rm: Vec::new(),
            p_disk: ModelDisk::default(),
            f_disk: ModelDisk::default(),
            auto_sync: true,
        };
        // The primary learns its role from the RM's answer to a heartbeat,
        // which also starts its lease: one tick connects, one heartbeats.
        pair.tick(Duration::ZERO);
        pair.tick(Duration::ZERO);
        pair.f.handle(
            now,
            RouterInput::FromRm(RmReply::Config {
                config: configuration(2),
            }),
        );
        pair.tick(Duration::ZERO);
        for (i, name) in PEERS.iter().enumerate() {
            let conn = ConnId(100 + i as u64);
            pair.p.handle(
                now,
                RouterInput::Connected {
                    conn,
                    source: IpAddr::from([127, 0, 0, 1]),
                },
            );
            let frame = ClientFrame::Register {
                req: ReqId(1),
                peer: PeerId::new(*name).unwrap(),
                secret: Secret::new("s").unwrap(),
            };
            pair.p.handle(now, RouterInput::Frame(conn, frame));
            pair.pump();
        }
        pair
    }

    fn client_of(conn: ConnId) -> Option<usize> {
        (conn.0 >= 100).then(|| (conn.0 - 100) as usize)
    }

    fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some(output) = self.p.poll_output() {
                moved = true;
                match output {
                    RouterOutput::Persist { ticket, record } => self.p_disk.written.push((ticket, record)),
                    RouterOutput::HashSecret(job) => {
                        let hash = job.run();
                        self.p
                            .handle(self.now, RouterInput::SecretHashed { job: job.job, hash });
                    }
                    RouterOutput::Send(conn, frame) => self.client_receives(conn, frame),
                    RouterOutput::Replicate(conn, frame) => {
                        if Some(conn) == self.f_conn {
                            self.to_f.push_back(frame);
                        }
                    }
                    RouterOutput::Close(conn) => {
                        if Some(conn) == self.f_conn {
                            self.break_stream();
                        }
                    }
                    RouterOutput::Connect { link, attempt, .. } => {
                        self.p.handle(self.now, RouterInput::LinkUp { link, attempt });
                    }
                    RouterOutput::ToRm(RmRequest::Heartbeat { beat, .. }) if self.p_hears_rm => {
                        // The RM answers, renewing the primary's lease.
                        let config = configuration(2);
                        self.p
                            .handle(self.now, RouterInput::FromRm(RmReply::Heard { beat, config }));
                    }
                    RouterOutput::ToRm(request @ RmRequest::Heartbeat { .. }) if !self.p_hears_rm => {
                        self.to_rm.push(request);
                    }
                    RouterOutput::ToRm(
                        request @ (RmRequest::Resign { .. } | RmRequest::RemoveBackup { .. }),
                    ) => {
                        self.to_rm.push(request);
                    }
                    RouterOutput::DropLink(_)
                    | RouterOutput::ToRm(_)
                    | RouterOutput::ToPrimary(_)
                    | RouterOutput::Committed { .. }
                    | RouterOutput::BelowMinBackups { .. }
                    | RouterOutput::LeaseLost { .. }
                    | RouterOutput::Resigning { .. }
                    | RouterOutput::Promoted { .. } => {}
                }
            }
            while let Some(output) = self.f.poll_output() {
                moved = true;
                match output {
                    RouterOutput::Persist { ticket, record } => self.f_disk.written.push((ticket, record)),
                    RouterOutput::ToPrimary(frame) if self.f_conn.is_some() => self.to_p.push_back(frame),
                    RouterOutput::Connect {
                        link: Link::Primary,
                        attempt,
                        ..
                    } => {
                        self.drop_stream();
                        self.next_conn += 1;
                        let conn = ConnId(self.next_conn);
                        self.f_conn = Some(conn);
                        self.f_attempt = attempt;
                        let id = Some(ReplicaId::new("f").unwrap());
                        self.p.handle(self.now, RouterInput::MemberConnected { conn, id });
                        self.f.handle(
                            self.now,
                            RouterInput::LinkUp {
                                link: Link::Primary,
                                attempt,
                            },
                        );
                    }
                    RouterOutput::Connect {
                        link: Link::Rm,
                        attempt,
                        ..
                    } => {
                        self.f.handle(
                            self.now,
                            RouterInput::LinkUp {
                                link: Link::Rm,
                                attempt,
                            },
                        );
                    }
                    RouterOutput::DropLink(Link::Primary) => self.drop_stream(),
                    RouterOutput::ToRm(RmRequest::Heartbeat { beat, .. }) if self.f_hears_rm => {
                        let config = configuration(2);
                        self.f
                            .handle(self.now, RouterInput::FromRm(RmReply::Heard { beat, config }));
                    }
                    _ => {}
                }
            }
            if self.auto_sync {
                for (router, disk) in [(&mut self.p, &mut self.p_disk), (&mut self.f, &mut self.f_disk)] {
                    if let Some(ticket) = disk.sync() {
                        router.handle(self.now, RouterInput::Persisted { ticket });
                        moved = true;
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// The network breaks the stream: both ends notice.
    fn break_stream(&mut self) {
        if self.f_conn.is_some() {
            self.drop_stream();
            let (link, attempt) = (Link::Primary, self.f_attempt);
            self.f.handle(self.now, RouterInput::LinkDown { link, attempt });
            self.pump();
        }
    }

    /// The stream is closed by one end: what was in flight is lost.
    fn drop_stream(&mut self) {
        if let Some(conn) = self.f_conn.take() {
            self.to_f.clear();
            self.to_p.clear();
            self.p.handle(self.now, RouterInput::Disconnected(conn));
        }
    }

    fn client_receives(&mut self, conn: ConnId, frame: ServerFrame) {
        let Some(client) = Self::client_of(conn) else {
            return;
        };
        match frame {
            ServerFrame::Sent { seq, .. } => {
                self.answers += 1;
                let peer = PeerId::new(PEERS[client]).unwrap();
                for (who, disk) in [("backup", &self.f_disk), ("primary", &self.p_disk)] {
                    let held = disk.durable.state.last_seq(&peer).unwrap_or(Seq(0));
                    if held < seq {
                        self.violations.push(format!(
                            "Sent {}#{} while the {who}'s storage holds only up to {}",
                            PEERS[client], seq, held
                        ));
                    }
                }
                self.sent.entry(client).or_default().push(seq);
            }
            ServerFrame::Error { req: Some(_), .. } => self.answers += 1,
            ServerFrame::Message { delivery, .. } | ServerFrame::Delivered { delivery, .. } => {
                self.unacked.entry(client).or_default().push_back(delivery);
            }
            _ => {}
        }
    }

    fn send(&mut self, from: usize, to: usize) {
        let seq = self.next_seq.get(&from).copied().unwrap_or(0) + 1;
        self.send_body(from, to, format!("m{seq}"));
    }

    fn send_body(&mut self, from: usize, to: usize, body: String) {
        let seq = self.next_seq.entry(from).or_insert(0);
        *seq += 1;
        let frame = ClientFrame::Send {
            req: ReqId(*seq + 1),
            seq: Seq(*seq),
            to: Target::new(PEERS[to % PEERS.len()]).unwrap(),
            body,
        };
        self.sends += 1;
        self.p
            .handle(self.now, RouterInput::Frame(ConnId(100 + from as u64), frame));
        self.pump();
    }

    fn ack(&mut self, client: usize) {
        if let Some(delivery) = self.unacked.get_mut(&client).and_then(VecDeque::pop_front) {
            let frame = ClientFrame::Ack {
                delivery,
                through: None,
            };
            self.p
                .handle(self.now, RouterInput::Frame(ConnId(100 + client as u64), frame));
            self.pump();
        }
    }

    fn deliver_to_f(&mut self, n: usize) {
        for _ in 0..n {
            let Some(frame) = self.to_f.pop_front() else {
                return;
            };
            self.f.handle(self.now, RouterInput::FromPrimary(frame));
            self.pump();
        }
    }

    fn deliver_to_p(&mut self, n: usize) {
        for _ in 0..n {
            let (Some(frame), Some(conn)) = (self.to_p.pop_front(), self.f_conn) else {
                return;
            };
            self.p.handle(self.now, RouterInput::Follower(conn, frame));
            self.pump();
        }
    }

    /// Lets `by` pass as drivers would: waking both routers at every
    /// deadline they ask for on the way, not only at the end.
    fn tick(&mut self, by: Duration) {
        let until = self.now + by;
        loop {
            let next = [self.p.poll_timeout(), self.f.poll_timeout()]
                .into_iter()
                .flatten()
                .filter(|t| *t > self.now)
                .min()
                .map_or(until, |t| t.min(until));
            self.now = next;
            self.p.handle_timeout(self.now);
            self.f.handle_timeout(self.now);
            self.pump();
            if self.now >= until {
                return;
            }
        }
    }

    /// The primary's storage, or the follower's, syncs what was written.
    fn sync(&mut self, primary: bool) {
        let (router, disk) = if primary {
            (&mut self.p, &mut self.p_disk)
        } else {
            (&mut self.f, &mut self.f_disk)
        };
        if let Some(ticket) = disk.sync() {
            router.handle(self.now, RouterInput::Persisted { ticket });
            self.pump();
        }
    }

    /// The follower crashes, losing what its storage had not synced, and
    /// starts again from what it recovers.
    fn crash_follower(&mut self) {
        self.drop_stream();
        self.f_disk.written.clear();
        let recovered = self.f_disk.durable.clone();
        self.f = recovered_router("f", self.now, 100_000, recovered);
        self.f.handle(
            self.now,
            RouterInput::FromRm(RmReply::Config {
                config: configuration(2),
            }),
        );
        self.pump();
    }

    /// Delivers everything, letting links reconnect, until both agree.
    fn heal(&mut self) {
        for _ in 0..1_000 {
            self.sync(true);
            self.sync(false);
            self.deliver_to_f(usize::MAX);
            self.deliver_to_p(usize::MAX);
            let quiet = self.to_f.is_empty() && self.to_p.is_empty();
            if quiet
                && self.f.applied_lsn() == self.p.applied_lsn()
                && self.p.committed_lsn() == self.p.applied_lsn()
            {
                return;
            }
            self.tick(Duration::from_millis(50));
        }
        panic!(
            "the pair did not converge: primary at {:?} (committed {:?}), follower at {:?}",
            self.p.applied_lsn(),
            self.p.committed_lsn(),
            self.f.applied_lsn()
        );
    }
}

#[derive(Debug, Clone)]
enum Op {
    Send { from: usize, to: usize },
    Ack { client: usize },
    DeliverToFollower(usize),
    DeliverToPrimary(usize),
    Drop(usize),
    Duplicate(usize),
    Swap(usize),
    Break,
    Tick(u64),
    Sync { primary: bool },
    CrashFollower,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..PEERS.len(), 0..PEERS.len()).prop_map(|(from, to)| Op::Send { from, to }),
        3 => (0..PEERS.len()).prop_map(|client| Op::Ack { client }),
        4 => (1..5usize).prop_map(Op::DeliverToFollower),
        4 => (1..5usize).prop_map(Op::DeliverToPrimary),
        1 => (0..8usize).prop_map(Op::Drop),
        1 => (0..8usize).prop_map(Op::Duplicate),
        1 => (0..8usize).prop_map(Op::Swap),
        1 => Just(Op::Break),
        1 => (0..400u64).prop_map(Op::Tick),
        4 => any::<bool>().prop_map(|primary| Op::Sync { primary }),
        1 => Just(Op::CrashFollower),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_faulty_stream_never_lets_sent_outrun_the_backup(ops in prop::collection::vec(op(), 0..120)) {
        let mut pair = Pair::new();
        pair.auto_sync = false;
        for op in ops {
            match op {
                Op::Send { from, to } => pair.send(from, to),
                Op::Ack { client } => pair.ack(client),
                Op::DeliverToFollower(n) => pair.deliver_to_f(n),
                Op::DeliverToPrimary(n) => pair.deliver_to_p(n),
                Op::Drop(k) => {
                    if k < pair.to_f.len() {
                        pair.to_f.remove(k);
                    }
                }
                Op::Duplicate(k) => {
                    if let Some(frame) = pair.to_f.get(k).cloned() {
                        pair.to_f.insert(k, frame);
                    }
                }
                Op::Swap(k) => {
                    if k + 1 < pair.to_f.len() {
                        pair.to_f.swap(k, k + 1);
                    }
                }
                Op::Break => pair.break_stream(),
                Op::Tick(ms) => pair.tick(Duration::from_millis(ms)),
                Op::Sync { primary } => pair.sync(primary),
                Op::CrashFollower => pair.crash_follower(),
            }
        }
        pair.heal();
        prop_assert!(pair.violations.is_empty(), "{:#?}", pair.violations);
        prop_assert_eq!(pair.f.state(), pair.p.state());
        prop_assert_eq!(pair.answers, pair.sends, "every send was answered once the stream healed");
        for seqs in pair.sent.values() {
            prop_assert!(seqs.windows(2).all(|w| w[0] < w[1]), "Sent replies in order: {:?}", seqs);
        }
    }
}

#[test]
fn entries_and_checkpoints_from_an_older_epoch_are_refused() {
    let mut pair = Pair::new();
    pair.heal();
    pair.send(0, 1);
    pair.heal();
    let before = pair.f.state().clone();
    let applied = pair.f.applied_lsn();
    // The follower learns of epoch 3; the deposed primary still speaks epoch 2.
    let newer = Configuration {
        epoch: Epoch(3),
        ..configuration(3)
    };
    pair.f
        .handle(pair.now, RouterInput::FromRm(RmReply::Config { config: newer }));
    pair.pump();
    let stale_entry = PrimaryFrame::Entry {
        epoch: Epoch(2),
        lsn: applied.next(),
        change: peerlink_core::router::Change::Left {
            group: peerlink_core::ids::GroupName::new("g").unwrap(),
            peer: PeerId::new("a").unwrap(),
        },
    };
    for frames in [vec![stale_entry], empty_checkpoint(Epoch(2))] {
        for frame in frames {
            pair.f.handle(pair.now, RouterInput::FromPrimary(frame));
            pair.pump();
            assert_eq!(pair.f.state(), &before, "a stale frame changed the follower");
            assert_eq!(pair.f.applied_lsn(), applied);
        }
    }
}

/// A primary (a buggy one, or anyone with the cluster key) ships a change
/// that does not follow from the follower's state. The follower must not
/// apply it — nor crash on it — but drop the stream and resync.
#[test]
fn an_entry_that_does_not_follow_from_the_state_makes_the_follower_resync() {
    let mut pair = Pair::new();
    pair.heal();
    pair.send(0, 1);
    pair.heal();
    pair.send(1, 0);
    let Some(PrimaryFrame::Entry { epoch, lsn, .. }) = pair.to_f.pop_front() else {
        panic!("the primary shipped the change");
    };
    let before = pair.f.state().clone();
    let applied = pair.f.applied_lsn();
    let conn = pair.f_conn;
    let bogus = PrimaryFrame::Entry {
        epoch,
        lsn,
        change: peerlink_core::router::Change::Acked {
            peer: PeerId::new("nobody").unwrap(),
            delivery: peerlink_core::ids::DeliveryId(1),
            through: None,
        },
    };
    pair.f.handle(pair.now, RouterInput::FromPrimary(bogus));
    pair.pump();
    assert_eq!(pair.f.state(), &before, "the follower applied it");
    assert_eq!(pair.f.applied_lsn(), applied);
    assert!(pair.f_conn != conn, "the follower kept the stream");
    pair.heal();
    assert_eq!(pair.f.state(), pair.p.state(), "the follower resynced");
}

#[test]
fn a_primary_without_its_backups_acknowledgement_reports_nothing() {
    let mut pair = Pair::new();
    pair.heal();
    pair.send(0, 1);
    assert_eq!(pair.answers, 0, "no Sent before the backup acknowledges");
    pair.deliver_to_f(usize::MAX);
    assert_eq!(
        pair.answers, 0,
        "the backup applied it, but the primary has not heard"
    );
    pair.deliver_to_p(usize::MAX);
    assert_eq!(pair.answers, 1);
    assert!(pair.violations.is_empty());
}

#[test]
fn a_primary_whose_only_backup_lags_waits_without_spinning() {
    let mut pair = Pair::new();
    pair.heal();
    pair.send(0, 1);
    for _ in 0..50 {
        // Nothing ever gets through: the backup stays behind for good.
        pair.to_f.clear();
        pair.to_p.clear();
        pair.tick(Duration::from_millis(100));
        // Whatever is due now is done in a few calls; then the next wake-up
        // lies ahead, instead of a deadline that stays in the past.
        for _ in 0..3 {
            if pair.p.poll_timeout().is_some_and(|t| t <= pair.now) {
                pair.tick(Duration::ZERO);
            }
        }
        let next = pair.p.poll_timeout().expect("heartbeats keep a timer");
        assert!(
            next > pair.now,
            "the primary keeps asking to be woken at once: {next:?}"
        );
    }
    assert_eq!(pair.answers, 0, "nothing is committed without the backup");
}

#[test]
fn a_follower_acknowledges_a_batch_of_entries_once() {
    let mut pair = Pair::new();
    pair.heal();
    for n in 0..3 {
        pair.send(0, 1 + n % 2);
    }
    assert!(pair.to_f.len() >= 3, "the primary shipped one entry per change");
    let last = match pair.to_f.back() {
        Some(PrimaryFrame::Entry { lsn, .. }) => *lsn,
        other => panic!("expected an entry, got {other:?}"),
    };
    // The driver hands over every queued frame before it takes outputs.
    while let Some(frame) = pair.to_f.pop_front() {
        pair.f.handle(pair.now, RouterInput::FromPrimary(frame));
    }
    let acks = |out: &[RouterOutput]| -> Vec<Lsn> {
        out.iter()
            .filter_map(|output| match output {
                RouterOutput::ToPrimary(FollowerFrame::Applied { lsn, .. }) => Some(*lsn),
                _ => None,
            })
            .collect()
    };
    let out: Vec<RouterOutput> = std::iter::from_fn(|| pair.f.poll_output()).collect();
    assert!(acks(&out).is_empty(), "acknowledged before durable: {out:?}");
    let tickets: Vec<u64> = out
        .iter()
        .filter_map(|o| match o {
            RouterOutput::Persist { ticket, .. } => Some(*ticket),
            _ => None,
        })
        .collect();
    assert_eq!(tickets.len(), 3, "one record per entry");
    // One sync covers the batch (group commit): one acknowledgement.
    let ticket = *tickets.last().unwrap();
    pair.f.handle(pair.now, RouterInput::Persisted { ticket });
    let out: Vec<RouterOutput> = std::iter::from_fn(|| pair.f.poll_output()).collect();
    assert_eq!(
        acks(&out),
        vec![last],
        "one cumulative acknowledgement for the batch"
    );
}

/// Epoch `epoch` with `f` demoted to a candidate: `p` has no backup.
fn without_backups(epoch: u64, min_backups: usize) -> Configuration {
    Configuration {
        backups: vec![],
        candidates: vec![member("f")],
        min_backups,
        ..configuration(epoch)
    }
}

fn adopt(router: &mut Router, now: Instant, config: Configuration) -> Vec<RouterOutput> {
    router.handle(now, RouterInput::FromRm(RmReply::Config { config }));
    std::iter::from_fn(|| router.poll_output()).collect()
}

#[test]
fn a_primary_below_its_minimum_commits_nothing_until_a_backup_returns() {
    let mut pair = Pair::new();
    pair.heal();
    let out = adopt(&mut pair.p, pair.now, without_backups(3, 1));
    assert!(
        out.iter().any(|o| matches!(
            o,
            RouterOutput::BelowMinBackups {
                backups: 0,
                min_backups: 1,
                ..
            }
        )),
        "the primary says why commits wait: {out:?}"
    );
    pair.f.handle(
        pair.now,
        RouterInput::FromRm(RmReply::Config {
            config: without_backups(3, 1),
        }),
    );
    pair.pump();
    pair.send(0, 1);
    for _ in 0..20 {
        pair.deliver_to_f(usize::MAX);
        pair.deliver_to_p(usize::MAX);
        pair.tick(Duration::from_millis(50));
    }
    assert_eq!(pair.f.applied_lsn(), pair.p.applied_lsn(), "the candidate has it");
    assert_eq!(pair.answers, 0, "but a candidate does not count: no Sent");
    assert!(pair.p.committed_lsn() < pair.p.applied_lsn());

    // The RM makes the candidate a backup again: the answer goes out.
    let back = Configuration {
        epoch: Epoch(4),
        ..configuration(4)
    };
    pair.p.handle(
        pair.now,
        RouterInput::FromRm(RmReply::Config { config: back.clone() }),
    );
    pair.f
        .handle(pair.now, RouterInput::FromRm(RmReply::Config { config: back }));
    pair.pump();
    pair.heal();
    assert_eq!(pair.answers, 1);
    assert!(pair.violations.is_empty(), "{:?}", pair.violations);
}

#[test]
fn a_minimum_of_zero_lets_a_lone_primary_commit() {
    let mut pair = Pair::new();
    pair.heal();
    adopt(&mut pair.p, pair.now, without_backups(3, 0));
    pair.drop_stream();
    pair.send(0, 1);
    assert_eq!(pair.answers, 1, "min_backups 0: the operator chose a single copy");
}

#[test]
fn a_router_named_primary_for_an_earlier_life_does_not_serve() {
    let now = epoch();
    let replication = ReplicationConfig::new(
        ReplicaId::new("p").unwrap(),
        "p:1".into(),
        "p:2".into(),
        "rm:1".into(),
        2,
    );
    let config = RouterConfig {
        replication: Some(replication),
        kdf: KdfParams::CHEAPEST,
        ..RouterConfig::default()
    };
    let mut restarted = Router::new(config, 3, now);
    // The configuration still names `p` with incarnation 1: the process
    // that held the state.
    let out = adopt(&mut restarted, now, configuration(2));
    assert!(!restarted.is_serving(), "a restarted router kept the role");
    assert!(
        !out.iter().any(|o| matches!(o, RouterOutput::Promoted { .. })),
        "{out:?}"
    );
    restarted.handle(
        now,
        RouterInput::Connected {
            conn: ConnId(7),
            source: IpAddr::from([127, 0, 0, 1]),
        },
    );
    let out: Vec<RouterOutput> = std::iter::from_fn(|| restarted.poll_output()).collect();
    assert!(
        out.iter()
            .any(|o| matches!(o, RouterOutput::Send(ConnId(7), ServerFrame::Redirect { .. }))),
        "clients are sent away: {out:?}"
    );
}

#[test]
fn a_follower_refuses_a_checkpoint_behind_its_own_state_in_the_same_epoch() {
    let mut pair = Pair::new();
    pair.heal();
    pair.send(0, 1);
    pair.heal();
    let before = pair.f.state().clone();
    let applied = pair.f.applied_lsn();
    assert!(applied > Lsn(0));
    // What a primary that restarted empty would ship in the same epoch.
    for frame in empty_checkpoint(Epoch(2)) {
        pair.f.handle(pair.now, RouterInput::FromPrimary(frame));
        pair.pump();
    }
    assert_eq!(pair.f.state(), &before, "the follower's state moved backwards");
    assert_eq!(pair.f.applied_lsn(), applied);
}

#[test]
fn a_primary_cut_from_the_rm_stops_serving_within_its_lease_when_a_backup_hears_the_rm() {
    let mut pair = Pair::new();
    pair.f_hears_rm = true;
    pair.heal();
    pair.tick(Duration::from_millis(200));
    assert!(pair.p.is_serving());
    pair.p_hears_rm = false;
    let cut_at = pair.now;
    let mut stopped = None;
    for _ in 0..100 {
        pair.tick(Duration::from_millis(10));
        if !pair.p.is_serving() {
            stopped = Some(pair.now - cut_at);
            break;
        }
    }
    let stopped = stopped.expect("the primary kept serving without a lease");
    // The lease is 300 ms from the last answered heartbeat (sent up to
    // 100 ms before the cut); the RM may promote 500 ms after it last heard.
    assert!(
        stopped <= Duration::from_millis(400),
        "stopped only after {stopped:?}"
    );
    // The RM answers again, in the same epoch: it serves again.
    pair.p_hears_rm = true;
    pair.tick(Duration::from_millis(200));
    assert!(pair.p.is_serving(), "the primary did not resume");
}

#[test]
fn a_primary_that_stops_serving_forgets_its_watches() {
    let mut pair = Pair::new();
    pair.f_hears_rm = true;
    pair.heal();
    pair.tick(Duration::from_millis(200));
    let watch = ClientFrame::Watch {
        req: ReqId(900),
        peer: PeerId::new(PEERS[1]).unwrap(),
    };
    pair.p.handle(pair.now, RouterInput::Frame(ConnId(100), watch));
    pair.pump();
    assert_eq!(pair.p.stats().watches, 1);
    pair.p_hears_rm = false;
    for _ in 0..100 {
        pair.tick(Duration::from_millis(10));
        if !pair.p.is_serving() {
            break;
        }
    }
    assert!(!pair.p.is_serving(), "the primary kept serving without a lease");
    assert_eq!(
        pair.p.stats().watches,
        0,
        "a router that does not serve keeps watches"
    );
}

#[test]
fn a_primary_whose_backups_do_not_hear_the_rm_either_keeps_serving() {
    let mut pair = Pair::new();
    pair.heal();
    // The RM is down for everyone: nobody can be promoted, so the data path
    // keeps running.
    pair.p_hears_rm = false;
    for _ in 0..30 {
        pair.tick(Duration::from_millis(100));
        pair.heal();
        assert!(pair.p.is_serving(), "stopped serving with the RM down");
    }
    pair.send(0, 1);
    pair.heal();
    assert_eq!(pair.answers, 1);
}

#[test]
fn a_ping_is_answered_at_once_while_answers_wait_for_a_commit() {
    let mut pair = Pair::new();
    pair.heal();
    pair.send(0, 1);
    assert_eq!(pair.answers, 0, "the Sent waits for the backup");
    pair.p.handle(
        pair.now,
        RouterInput::Frame(ConnId(100), ClientFrame::Ping { req: ReqId(77) }),
    );
    let out: Vec<RouterOutput> = std::iter::from_fn(|| pair.p.poll_output()).collect();
    assert!(
        out.iter().any(|o| matches!(
            o,
            RouterOutput::Send(ConnId(100), ServerFrame::Pong { req: ReqId(77) })
        )),
        "{out:?}"
    );
}

#[test]
fn a_primary_that_hears_no_backup_for_the_ack_timeout_asks_to_resign() {
    let mut pair = Pair::new();
    pair.heal();
    let mut resigned_after = None;
    for step in 1..=30 {
        // Nothing from the backup gets through any more.
        pair.to_f.clear();
        pair.to_p.clear();
        pair.tick(Duration::from_millis(100));
        if pair.to_rm.iter().any(|r| matches!(r, RmRequest::Resign { .. })) {
            resigned_after = Some(step * 100);
            break;
        }
    }
    let after = resigned_after.expect("the primary never asked to resign");
    assert!(
        (1000..=1200).contains(&after),
        "asked after {after} ms; the ack timeout is 1 s"
    );
    assert!(
        !pair
            .to_rm
            .iter()
            .any(|r| matches!(r, RmRequest::RemoveBackup { .. })),
        "the last backup is never removed: {:?}",
        pair.to_rm
    );
}

#[test]
fn a_suspended_primary_does_not_resume_on_an_answer_older_than_its_lease() {
    let mut pair = Pair::new();
    pair.f_hears_rm = true;
    pair.heal();
    pair.p_hears_rm = false;
    pair.tick(Duration::from_millis(600));
    assert!(!pair.p.is_serving(), "the lease ran out");
    // A heartbeat is sent now, and its answer arrives 400 ms later: past the
    // 300 ms lease it would start.
    pair.to_rm.clear();
    pair.tick(Duration::from_millis(100));
    let beat = pair.to_rm.iter().rev().find_map(|r| match r {
        RmRequest::Heartbeat { beat, .. } => Some(*beat),
        _ => None,
    });
    let beat = beat.expect("the primary heartbeats");
    pair.now += Duration::from_millis(400);
    let config = configuration(2);
    pair.p
        .handle(pair.now, RouterInput::FromRm(RmReply::Heard { beat, config }));
    pair.pump();
    assert!(!pair.p.is_serving(), "resumed on a stale lease");
}

/// What the primary answers a connection that proved to be `proven` (a
/// cluster connection) or is a client connection (`None`), when it asks to
/// follow as `follower`.
fn follow_as(proven: Option<Option<&str>>, follower: &str) -> Vec<RouterOutput> {
    let mut pair = Pair::new();
    pair.heal();
    assert!(pair.p.is_serving());
    let conn = ConnId(500);
    match proven {
        Some(id) => {
            let id = id.map(|s| ReplicaId::new(s).unwrap());
            pair.p.handle(pair.now, RouterInput::MemberConnected { conn, id });
        }
        None => pair.p.handle(
            pair.now,
            RouterInput::Connected {
                conn,
                source: IpAddr::from([127, 0, 0, 1]),
            },
        ),
    }
    let _ = std::iter::from_fn(|| pair.p.poll_output()).count();
    let frame = FollowerFrame::Follow {
        id: ReplicaId::new(follower).unwrap(),
        epoch: Epoch(2),
        lsn: Lsn(0),
        stream_epoch: Epoch(0),
    };
    pair.p.handle(pair.now, RouterInput::Follower(conn, frame));
    std::iter::from_fn(|| pair.p.poll_output()).collect()
}

/// The frames of a checkpoint of an empty state, as of LSN 0, in `epoch`.
fn empty_checkpoint(epoch: Epoch) -> Vec<PrimaryFrame> {
    vec![
        PrimaryFrame::CheckpointStart { epoch, lsn: Lsn(0) },
        PrimaryFrame::CheckpointEnd {
            epoch,
            lsn: Lsn(0),
            parts: 0,
        },
    ]
}

fn streams_state(out: &[RouterOutput]) -> bool {
    out.iter().any(|o| {
        matches!(
            o,
            RouterOutput::Replicate(
                ConnId(500),
                PrimaryFrame::CheckpointStart { .. } | PrimaryFrame::Entry { .. }
            )
        )
    })
}

#[test]
fn only_a_member_that_proved_its_identity_may_follow() {
    let out = follow_as(Some(Some("f")), "f");
    assert!(streams_state(&out), "the backup itself: {out:?}");
    for (proven, follower) in [
        (None, "f"),            // a client connection
        (Some(None), "f"),      // an operator's tool
        (Some(Some("g")), "f"), // another identity
        (Some(Some("g")), "g"), // not in the configuration
        (Some(Some("p")), "p"), // the primary itself
    ] {
        let out = follow_as(proven, follower);
        assert!(!streams_state(&out), "{proven:?} as {follower}: {out:?}");
    }
}

#[test]
fn a_large_checkpoint_goes_in_parts_a_window_at_a_time() {
    let mut pair = Pair::new();
    pair.heal();
    // About 3 MiB waits for c, who never acknowledges: a dozen parts.
    for _ in 0..60 {
        pair.send_body(0, 2, "x".repeat(50_000));
        pair.heal();
    }
    // The follower comes back empty (a new process), so it needs the
    // whole state.
    pair.break_stream();
    pair.f = router("f", pair.now);
    pair.f.handle(
        pair.now,
        RouterInput::FromRm(RmReply::Config {
            config: configuration(2),
        }),
    );
    let mut most_in_flight = 0;
    let mut parts_seen = 0;
    for _ in 0..1_000 {
        pair.tick(Duration::from_millis(10));
        let sent = pair
            .to_f
            .iter()
            .filter(|f| matches!(f, PrimaryFrame::CheckpointPart { .. }))
            .count();
        most_in_flight = most_in_flight.max(sent);
        parts_seen += sent;
        pair.deliver_to_f(usize::MAX);
        pair.deliver_to_p(usize::MAX);
        if pair.f.applied_lsn() == pair.p.applied_lsn() && pair.to_f.is_empty() {
            break;
        }
    }
    assert_eq!(pair.f.state(), pair.p.state(), "the follower's state differs");
    assert!(parts_seen > 10, "only {parts_seen} parts");
    assert!(
        most_in_flight as u64 <= peerlink_core::router::replication::CHECKPOINT_WINDOW,
        "{most_in_flight} parts in flight at once"
    );
    assert!(pair.violations.is_empty(), "{:?}", pair.violations);
}

#[test]
fn changes_that_fall_off_the_log_during_a_checkpoint_start_another() {
    let mut pair = Pair::with_log(5);
    pair.heal();
    for _ in 0..40 {
        pair.send_body(0, 2, "x".repeat(50_000));
        pair.heal();
    }
    pair.break_stream();
    pair.f = router("f", pair.now);
    pair.f.handle(
        pair.now,
        RouterInput::FromRm(RmReply::Config {
            config: configuration(2),
        }),
    );
    // The checkpoint starts; ten changes happen before its first window is
    // taken, more than the log keeps.
    for _ in 0..1_000 {
        if pair
            .to_f
            .iter()
            .any(|f| matches!(f, PrimaryFrame::CheckpointStart { .. }))
        {
            break;
        }
        pair.deliver_to_p(usize::MAX);
        pair.tick(Duration::from_millis(10));
    }
    assert!(!pair.to_f.is_empty(), "the follower never reconnected");
    for _ in 0..10 {
        pair.send(1, 0);
    }
    let (mut starts, mut follows) = (0, 0);
    for _ in 0..1_000 {
        starts += pair
            .to_f
            .iter()
            .filter(|f| matches!(f, PrimaryFrame::CheckpointStart { .. }))
            .count();
        follows += pair
            .to_p
            .iter()
            .filter(|f| matches!(f, FollowerFrame::Follow { .. }))
            .count();
        pair.deliver_to_f(usize::MAX);
        pair.deliver_to_p(usize::MAX);
        if pair.f.applied_lsn() == pair.p.applied_lsn() && pair.to_f.is_empty() {
            break;
        }
        pair.tick(Duration::from_millis(10));
    }
    assert_eq!(starts, 2, "the lost changes did not start a second checkpoint");
    assert_eq!(follows, 0, "the follower had to reconnect");
    assert_eq!(pair.f.state(), pair.p.state());
    assert!(pair.violations.is_empty(), "{:?}", pair.violations);
}

#[test]
fn a_checkpoint_whose_epoch_ends_midway_is_not_loaded() {
    let mut pair = Pair::new();
    pair.heal();
    pair.send(0, 1);
    pair.heal();
    let before = pair.f.state().clone();
    let applied = pair.f.applied_lsn();
    let lsn = Lsn(applied.0 + 5);
    let start = PrimaryFrame::CheckpointStart { epoch: Epoch(2), lsn };
    pair.f.handle(pair.now, RouterInput::FromPrimary(start));
    pair.pump();
    // Epoch 3 begins while the parts are on their way.
    let newer = Configuration {
        epoch: Epoch(3),
        ..configuration(3)
    };
    pair.f
        .handle(pair.now, RouterInput::FromRm(RmReply::Config { config: newer }));
    pair.pump();
    let end = PrimaryFrame::CheckpointEnd {
        epoch: Epoch(2),
        lsn,
        parts: 0,
    };
    pair.f.handle(pair.now, RouterInput::FromPrimary(end));
    pair.pump();
    assert_eq!(
        pair.f.state(),
        &before,
        "a checkpoint of an ended epoch was loaded"
    );
    assert_eq!(pair.f.applied_lsn(), applied);
}
