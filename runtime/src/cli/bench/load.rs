//! The load: peers sending with a bounded window while the bench records
//! when each message was issued, acknowledged Sent, reported Delivered and
//! received — and checks at the end that every Sent message reached every
//! recipient exactly once.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use hdrhistogram::Histogram;
use peerlink_core::client::{ClientEvent, Command};
use peerlink_core::ids::{PeerId, Target};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::time::Instant;

use super::peer::Peer;

/// What one sender sends.
#[derive(Debug, Clone)]
pub(super) struct SendPlan {
    /// Where each message goes.
    pub(super) targets: Targets,
    /// The message text.
    pub(super) body: String,
    /// The most messages issued and not yet acknowledged Sent.
    pub(super) window: usize,
    /// How many messages, or `None` to send until the load stops.
    pub(super) messages: Option<u64>,
}

/// How a sender picks addressees.
#[derive(Debug, Clone)]
pub(super) enum Targets {
    /// A uniformly random other peer of this list, each time.
    RandomPeer(Rc<Vec<PeerId>>),
    /// Always the same addressee, received by these peers.
    Fixed(Target, Rc<Vec<PeerId>>),
}

/// Who must receive a message, by peer index.
#[derive(Debug, Clone)]
enum Recipients {
    One(u32),
    Many(Rc<Vec<u32>>),
}

impl Recipients {
    fn as_slice(&self) -> &[u32] {
        match self {
            Recipients::One(p) => std::slice::from_ref(p),
            Recipients::Many(ps) => ps,
        }
    }
}

/// Which peers received a message, once per delivery.
#[derive(Debug, Default)]
enum ReceivedBy {
    #[default]
    Nobody,
    One(u32),
    Many(Vec<u32>),
}

impl ReceivedBy {
    fn push(&mut self, peer: u32) {
        *self = match std::mem::take(self) {
            ReceivedBy::Nobody => ReceivedBy::One(peer),
            ReceivedBy::One(first) => ReceivedBy::Many(vec![first, peer]),
            ReceivedBy::Many(mut all) => {
                all.push(peer);
                ReceivedBy::Many(all)
            }
        };
    }

    fn count(&self, peer: u32) -> u64 {
        match self {
            ReceivedBy::Nobody => 0,
            ReceivedBy::One(p) => u64::from(*p == peer),
            ReceivedBy::Many(all) => all.iter().filter(|p| **p == peer).count() as u64,
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, ReceivedBy::Nobody)
    }
}

/// What happened to one message.
#[derive(Debug, Default)]
struct Record {
    /// When it was issued and who must receive it, once it is Sent.
    sent: Option<(Instant, Recipients)>,
    received: ReceivedBy,
}

/// Every message's record, by sender index and then sequence number (a
/// run's peers are fresh, so their sequences are dense from 1).
#[derive(Debug)]
struct Ledger {
    index: HashMap<PeerId, u32>,
    records: Vec<Vec<Record>>,
}

impl Ledger {
    fn record(&mut self, from: u32, seq: u64) -> &mut Record {
        let by_seq = &mut self.records[from as usize];
        let at = usize::try_from(seq).expect("a sequence number fits in memory");
        if by_seq.len() <= at {
            by_seq.resize_with(at + 1, Record::default);
        }
        &mut by_seq[at]
    }

    fn get(&self, from: u32, seq: u64) -> Option<&Record> {
        self.records.get(from as usize)?.get(usize::try_from(seq).ok()?)
    }
}

/// Everything recorded about the load, shared by the peers' tasks.
#[derive(Debug)]
pub(super) struct Tally {
    /// When the load started.
    pub(super) started: Instant,
    /// Issue → Sent, in microseconds.
    pub(super) sent_latency: Histogram<u64>,
    /// Issue → Delivered (per recipient), in microseconds.
    pub(super) delivered_latency: Histogram<u64>,
    ledger: Ledger,
    /// Messages acknowledged Sent.
    sent: u64,
    /// Deliveries those messages owe (one per recipient).
    expected: u64,
    /// Messages the router refused.
    pub(super) failed: u64,
    /// Deliveries (one per message per recipient).
    pub(super) deliveries: u64,
    /// Delivered reports.
    pub(super) delivered: u64,
    /// When the last message was received.
    pub(super) last_received: Option<Instant>,
    /// The first Sent heard from a router other than `avoid` after
    /// `avoid_since` (the failover measurement).
    pub(super) first_sent_elsewhere: Option<Instant>,
    avoid: Option<(String, Instant)>,
    issuing: usize,
    in_flight: usize,
}

/// The verdict on a finished load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Check {
    /// Deliveries expected: one per Sent message per recipient.
    pub(super) expected: u64,
    /// Expected deliveries that never happened.
    pub(super) lost: u64,
    /// Deliveries beyond the first of the same message to the same peer.
    pub(super) duplicated: u64,
    /// Received messages that were never acknowledged Sent.
    pub(super) unacknowledged: u64,
}

impl Tally {
    /// An empty tally for a load among `peers`; the load starts now.
    pub(super) fn new(peers: &[PeerId]) -> Self {
        // Microseconds, from 1 µs to an hour, to 3 significant figures.
        let histogram = || Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
        let index = peers.iter().zip(0..).map(|(p, i)| (p.clone(), i)).collect();
        Self {
            started: Instant::now(),
            sent_latency: histogram(),
            delivered_latency: histogram(),
            ledger: Ledger {
                index,
                records: peers.iter().map(|_| Vec::new()).collect(),
            },
            sent: 0,
            expected: 0,
            failed: 0,
            deliveries: 0,
            delivered: 0,
            last_received: None,
            first_sent_elsewhere: None,
            avoid: None,
            issuing: 0,
            in_flight: 0,
        }
    }

    /// Starts timing a failover away from the router at `addr`.
    pub(super) fn fail_over_from(&mut self, addr: String) {
        self.avoid = Some((addr, Instant::now()));
    }

    /// When the failover measurement started.
    pub(super) fn failover_started(&self) -> Option<Instant> {
        self.avoid.as_ref().map(|(_, at)| *at)
    }

    /// Whether every sender has stopped issuing and every message has been
    /// answered — and, for [`Until::Settled`], received and reported
    /// Delivered.
    fn reached(&self, until: Until) -> bool {
        let answered = self.issuing == 0 && self.in_flight == 0;
        match until {
            Until::Sent => answered,
            Until::Settled => answered && self.deliveries >= self.expected && self.delivered >= self.expected,
        }
    }

    /// How many messages were acknowledged Sent.
    pub(super) fn sent(&self) -> u64 {
        self.sent
    }

    /// The index of a peer of the load.
    fn index_of(&self, peer: &PeerId) -> Option<u32> {
        self.ledger.index.get(peer).copied()
    }

    /// Compares what was Sent with what was received.
    pub(super) fn check(&self) -> Check {
        let mut check = Check {
            expected: 0,
            lost: 0,
            duplicated: 0,
            unacknowledged: 0,
        };
        for record in self.ledger.records.iter().flatten() {
            let Some((_, recipients)) = &record.sent else {
                check.unacknowledged += u64::from(!record.received.is_empty());
                continue;
            };
            for peer in recipients.as_slice() {
                check.expected += 1;
                match record.received.count(*peer) {
                    0 => check.lost += 1,
                    n => check.duplicated += n - 1,
                }
            }
        }
        check
    }
}

/// When a load is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Until {
    /// Every message has been answered (Sent or refused).
    Sent,
    /// Every message has also been received and reported Delivered.
    Settled,
}

/// Runs `peers`, each sending by its plan (or only receiving, with `None`),
/// until `stop` says so or every plan is done, and then until `until` is
/// reached or `drain` runs out. The peers disconnect when it returns.
pub(super) async fn run(
    peers: Vec<(Peer, Option<SendPlan>)>,
    tally: Rc<RefCell<Tally>>,
    stop: watch::Receiver<bool>,
    until: Until,
    drain: Duration,
    progress: bool,
) {
    tally.borrow_mut().issuing = peers.iter().filter(|(_, plan)| plan.is_some()).count();
    let (done_tx, done) = watch::channel(false);
    let reporter = progress.then(|| tokio::task::spawn_local(report_progress(tally.clone(), done.clone())));
    let mut tasks = Vec::new();
    for (n, (peer, plan)) in peers.into_iter().enumerate() {
        let task = drive(peer, plan, tally.clone(), stop.clone(), done.clone(), n as u64);
        tasks.push(tokio::task::spawn_local(task));
    }
    while !*stop.borrow() && tally.borrow().issuing > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let deadline = Instant::now() + drain;
    while !tally.borrow().reached(until) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = done_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    if let Some(reporter) = reporter {
        let _ = reporter.await;
    }
}

/// Prints a progress line to standard error every second until `done`: on
/// a terminal one line redrawn in place, otherwise a line each second.
async fn report_progress(tally: Rc<RefCell<Tally>>, mut done: watch::Receiver<bool>) {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last_sent = tally.borrow().sent;
    loop {
        tokio::select! {
            biased;
            _ = done.changed() => break,
            _ = tick.tick() => {}
        }
        let t = tally.borrow();
        let line = format!(
            "[{:>5.1} s] sent {}, delivered {}, refused {}: {} sent/s",
            t.started.elapsed().as_secs_f64(),
            t.sent,
            t.delivered,
            t.failed,
            t.sent - last_sent
        );
        last_sent = t.sent;
        if terminal {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }
    if terminal {
        eprintln!();
    }
}

/// One peer's task: issues its plan's messages within the window, and
/// records every event its client reports.
async fn drive(
    mut peer: Peer,
    plan: Option<SendPlan>,
    tally: Rc<RefCell<Tally>>,
    mut stop: watch::Receiver<bool>,
    mut done: watch::Receiver<bool>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let Some(me) = tally.borrow().index_of(&peer.id) else {
        return;
    };
    // Issued and not yet answered, oldest first, with the addressee's
    // index. Answers come in issue order per addressee (a message can be
    // reported Sent early, when its receipt overtakes a Sent lost in a
    // failover).
    let mut issued_at: VecDeque<(Instant, u32, Recipients)> = VecDeque::new();
    // A fixed addressee's index, and its recipients: for a group, its
    // members but the sender.
    let fixed = plan.as_ref().and_then(|p| match &p.targets {
        Targets::Fixed(to, members) => {
            let t = tally.borrow();
            let to = t.index_of(&PeerId::new(to.as_str()).ok()?).unwrap_or(u32::MAX);
            let others = members
                .iter()
                .filter_map(|m| t.index_of(m))
                .filter(|i| *i != me)
                .collect();
            Some((to, Recipients::Many(Rc::new(others))))
        }
        Targets::RandomPeer(_) => None,
    });
    let mut issued: u64 = 0;
    let mut issuing = plan.is_some();
    loop {
        if let Some(plan) = plan.as_ref().filter(|_| issuing) {
            let more = |issued: u64| plan.messages.is_none_or(|k| issued < k) && !*stop.borrow();
            while issued_at.len() < plan.window && more(issued) {
                let (to, index, recipients) = match (&plan.targets, &fixed) {
                    (Targets::RandomPeer(peers), _) => loop {
                        let i = rng.random_range(0..peers.len());
                        let index = u32::try_from(i).expect("peers fit in u32");
                        if index != me || peers.len() == 1 {
                            break (Target::from(peers[i].clone()), index, Recipients::One(index));
                        }
                    },
                    (Targets::Fixed(to, _), Some((index, recipients))) => {
                        (to.clone(), *index, recipients.clone())
                    }
                    (Targets::Fixed(..), None) => unreachable!("computed above for fixed targets"),
                };
                let body = plan.body.clone();
                if peer.command(Command::Send { to, body }).await.is_err() {
                    break;
                }
                issued_at.push_back((Instant::now(), index, recipients));
                tally.borrow_mut().in_flight += 1;
                issued += 1;
            }
            if !more(issued) {
                issuing = false;
                tally.borrow_mut().issuing -= 1;
            }
        }
        let event = tokio::select! {
            biased;
            _ = done.wait_for(|d| *d) => return,
            Ok(()) = stop.changed(), if issuing => continue,
            event = peer.next_event() => event,
        };
        let Some(event) = event else {
            return;
        };
        let now = Instant::now();
        let mut t = tally.borrow_mut();
        match event {
            ClientEvent::Sent { id, to } => {
                let addressee = addressee_index(&t, &to, &fixed);
                let Some((at, _, recipients)) = take_oldest(&mut issued_at, addressee) else {
                    continue;
                };
                t.in_flight -= 1;
                t.sent += 1;
                t.expected += recipients.as_slice().len() as u64;
                t.sent_latency.saturating_record(micros(now - at));
                t.ledger.record(me, id.seq.0).sent = Some((at, recipients));
                if let Some((avoid, since)) = &t.avoid {
                    if t.first_sent_elsewhere.is_none() && peer.router != *avoid && now > *since {
                        t.first_sent_elsewhere = Some(now);
                    }
                }
            }
            ClientEvent::Failed { to, .. } => {
                let addressee = addressee_index(&t, &to, &fixed);
                if take_oldest(&mut issued_at, addressee).is_some() {
                    t.in_flight -= 1;
                    t.failed += 1;
                }
            }
            ClientEvent::Delivered { id, .. } => {
                t.delivered += 1;
                if let Some((at, _)) = t.ledger.get(me, id.seq.0).and_then(|r| r.sent.as_ref()) {
                    let latency = micros(now - *at);
                    t.delivered_latency.saturating_record(latency);
                }
            }
            ClientEvent::Received { id, .. } => {
                t.deliveries += 1;
                t.last_received = Some(now);
                if let Some(from) = t.index_of(&id.from) {
                    t.ledger.record(from, id.seq.0).received.push(me);
                }
            }
            _ => {}
        }
    }
}

/// The index of the addressee of a Sent or Failed report.
fn addressee_index(tally: &Tally, to: &Target, fixed: &Option<(u32, Recipients)>) -> u32 {
    match fixed {
        Some((index, _)) => *index,
        None => PeerId::new(to.as_str())
            .ok()
            .and_then(|p| tally.index_of(&p))
            .unwrap_or(u32::MAX),
    }
}

/// Removes and returns the oldest unanswered message to `addressee`.
fn take_oldest<T>(issued: &mut VecDeque<(Instant, u32, T)>, addressee: u32) -> Option<(Instant, u32, T)> {
    let position = issued.iter().position(|(_, a, _)| *a == addressee)?;
    issued.remove(position)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
