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
use peerlink_core::ids::{MsgId, PeerId, Target};
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

/// Who must receive a message.
#[derive(Debug, Clone)]
enum Recipients {
    One(PeerId),
    Many(Rc<Vec<PeerId>>),
}

impl Recipients {
    fn as_slice(&self) -> &[PeerId] {
        match self {
            Recipients::One(p) => std::slice::from_ref(p),
            Recipients::Many(ps) => ps,
        }
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
    /// Every message acknowledged Sent: when it was issued, and who must
    /// receive it.
    sent: HashMap<MsgId, (Instant, Recipients)>,
    /// How many times each recipient's application got each message.
    received: HashMap<(MsgId, PeerId), u32>,
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
    /// An empty tally; the load starts now.
    pub(super) fn new() -> Self {
        // Microseconds, from 1 µs to an hour, to 3 significant figures.
        let histogram = || Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
        Self {
            started: Instant::now(),
            sent_latency: histogram(),
            delivered_latency: histogram(),
            sent: HashMap::new(),
            received: HashMap::new(),
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
            Until::Settled => {
                let expected: u64 = self.sent.values().map(|(_, to)| to.as_slice().len() as u64).sum();
                answered && self.deliveries >= expected && self.delivered >= expected
            }
        }
    }

    /// How many messages were acknowledged Sent.
    pub(super) fn sent(&self) -> u64 {
        self.sent.len() as u64
    }

    /// Compares what was Sent with what was received.
    pub(super) fn check(&self) -> Check {
        let mut check = Check {
            expected: 0,
            lost: 0,
            duplicated: 0,
            unacknowledged: 0,
        };
        for (id, (_, recipients)) in &self.sent {
            for peer in recipients.as_slice() {
                check.expected += 1;
                match self.received.get(&(id.clone(), peer.clone())) {
                    None => check.lost += 1,
                    Some(n) => check.duplicated += u64::from(n - 1),
                }
            }
        }
        check.unacknowledged = self
            .received
            .keys()
            .filter(|(id, _)| !self.sent.contains_key(id))
            .count() as u64;
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
) {
    tally.borrow_mut().issuing = peers.iter().filter(|(_, plan)| plan.is_some()).count();
    let (done_tx, done) = watch::channel(false);
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
    // Issued and not yet answered, oldest first. Answers come in issue
    // order per addressee (a message can be reported Sent early, when its
    // receipt overtakes a Sent lost in a failover).
    let mut issued_at: VecDeque<(Instant, Target, Recipients)> = VecDeque::new();
    // A group's recipients are its members but the sender.
    let others = plan.as_ref().and_then(|p| match &p.targets {
        Targets::Fixed(_, members) => Some(Recipients::Many(Rc::new(
            members.iter().filter(|m| **m != peer.id).cloned().collect(),
        ))),
        Targets::RandomPeer(_) => None,
    });
    let mut issued: u64 = 0;
    let mut issuing = plan.is_some();
    loop {
        if let Some(plan) = plan.as_ref().filter(|_| issuing) {
            let more = |issued: u64| plan.messages.is_none_or(|k| issued < k) && !*stop.borrow();
            while issued_at.len() < plan.window && more(issued) {
                let (to, recipients) = match (&plan.targets, &others) {
                    (Targets::RandomPeer(peers), _) => loop {
                        let to = &peers[rng.random_range(0..peers.len())];
                        if *to != peer.id || peers.len() == 1 {
                            break (Target::from(to.clone()), Recipients::One(to.clone()));
                        }
                    },
                    (Targets::Fixed(to, _), Some(others)) => (to.clone(), others.clone()),
                    (Targets::Fixed(..), None) => unreachable!("computed above for fixed targets"),
                };
                let body = plan.body.clone();
                let command = Command::Send { to: to.clone(), body };
                if peer.command(command).await.is_err() {
                    break;
                }
                issued_at.push_back((Instant::now(), to, recipients));
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
                let Some((at, _, recipients)) = take_oldest(&mut issued_at, &to) else {
                    continue;
                };
                t.in_flight -= 1;
                t.sent_latency.saturating_record(micros(now - at));
                t.sent.insert(id, (at, recipients));
                if let Some((avoid, since)) = &t.avoid {
                    if t.first_sent_elsewhere.is_none() && peer.router != *avoid && now > *since {
                        t.first_sent_elsewhere = Some(now);
                    }
                }
            }
            ClientEvent::Failed { to, .. } if take_oldest(&mut issued_at, &to).is_some() => {
                t.in_flight -= 1;
                t.failed += 1;
            }
            ClientEvent::Delivered { id, .. } => {
                t.delivered += 1;
                if let Some((at, _)) = t.sent.get(&id) {
                    let latency = micros(now - *at);
                    t.delivered_latency.saturating_record(latency);
                }
            }
            ClientEvent::Received { id, .. } => {
                t.deliveries += 1;
                t.last_received = Some(now);
                *t.received.entry((id, peer.id.clone())).or_insert(0) += 1;
            }
            _ => {}
        }
    }
}

/// Removes and returns the oldest unanswered message to `to`.
fn take_oldest<T>(issued: &mut VecDeque<(Instant, Target, T)>, to: &Target) -> Option<(Instant, Target, T)> {
    let position = issued.iter().position(|(_, t, _)| t == to)?;
    issued.remove(position)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
