//! Faults, when they strike, and how the simulation applies them.
//!
//! A [`Plan`] is a list of faults, each armed at a simulated time and fired
//! either then or at the next moment of a kind that is worst for the system
//! ([`Trigger`]): right after a client hears Sent, right after a failover,
//! during a checkpoint transfer. Every fault heals itself after its
//! duration, and the harness heals everything at the end of the workload.
//! Besides the network and the processes, a router's disk can fail: the
//! router must stop rather than acknowledge what it could not store.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::observe::{ClusterEvent, Observed};

/// The replica manager's host name.
pub const RM: &str = "rm";
/// The routers' host names.
pub const ROUTERS: [&str; 3] = ["r1", "r2", "r3"];
/// The client hosts' names.
pub const CLIENTS: [&str; 3] = ["c1", "c2", "c3"];

/// The host a fault is aimed at, resolved when the fault fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Victim {
    /// This host.
    Named(&'static str),
    /// Whichever router is primary when the fault fires.
    Primary,
    /// The `n`-th router (wrapping) that is not the primary.
    NotPrimary(usize),
}

/// What goes wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The host's process dies (its connections close), and restarts after
    /// `down`.
    Crash {
        /// The host (a router or the replica manager).
        host: Victim,
        /// How long it stays down.
        down: Duration,
    },
    /// The host (a router) dies, loses its disk, and restarts empty after
    /// `down`, as when a machine is replaced. Only one router at a time,
    /// with time to catch up in between (see [`CATCH_UP`]): losing more
    /// disks at once is beyond what replication promises to survive.
    CrashWipingDisk {
        /// The router.
        host: Victim,
        /// How long it stays down.
        down: Duration,
    },
    /// The host vanishes silently: partitioned from everyone, then crashed,
    /// restarted after `down`, and only then reconnected.
    SilentCrash {
        /// The host.
        host: Victim,
        /// How long it stays down.
        down: Duration,
    },
    /// Traffic between `a` and the hosts in `b` is dropped (in one
    /// direction only if `oneway`: from `a` to `b`), for `duration`.
    Partition {
        /// One side.
        a: Victim,
        /// The other side.
        b: Vec<Victim>,
        /// Only `a` → `b`.
        oneway: bool,
        /// How long.
        duration: Duration,
    },
    /// Traffic between `a` and `b` is held (delayed, not lost) for `duration`.
    Hold {
        /// One side.
        a: Victim,
        /// The other side.
        b: Vec<Victim>,
        /// How long.
        duration: Duration,
    },
    /// The host's (a router's) disk refuses every write and sync, as a
    /// full disk does, for `duration`: the router stops at its next write.
    /// Then the disk works again and the router is restarted, as an
    /// operator who freed space would.
    DiskFailure {
        /// The router.
        host: Victim,
        /// How long the disk fails.
        duration: Duration,
    },
    /// Every link's latency may reach `max` for `duration`.
    Latency {
        /// The new maximum latency.
        max: Duration,
        /// How long.
        duration: Duration,
    },
}

/// When an armed fault fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// As soon as it is armed.
    Now,
    /// Right after the next Sent any client hears.
    NextSent,
    /// Right after the next configuration with a different primary.
    NextFailover,
    /// Right after the next checkpoint a primary sends.
    NextCheckpoint,
}

/// One planned fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// When it is armed.
    pub at: Duration,
    /// What fires it once armed.
    pub trigger: Trigger,
    /// How long after the trigger it strikes.
    pub delay: Duration,
    /// What happens.
    pub action: Action,
}

/// A run's faults.
pub type Plan = Vec<Fault>;

/// A primitive change to the simulated world, applied between steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    Crash(&'static str),
    CrashWipingDisk(&'static str),
    Bounce(&'static str),
    Partition(&'static str, &'static str),
    Repair(&'static str, &'static str),
    PartitionOneway(&'static str, &'static str),
    RepairOneway(&'static str, &'static str),
    Hold(&'static str, &'static str),
    Release(&'static str, &'static str),
    Latency(Duration),
    DiskFails(&'static str),
    DiskHeals(&'static str),
}

/// What had been observed when a fault was armed: cluster events, Sent
/// events, and the primary.
type Armed = (usize, usize, Option<String>);

/// Turns planned faults into timed [`Effect`]s as the run unfolds.
#[derive(Debug)]
pub(crate) struct Injector {
    /// Faults not yet fired, with what had been observed when they were
    /// armed (`None` while not armed).
    pending: Vec<(Fault, Option<Armed>)>,
    /// Effects due at a time.
    timed: Vec<(Duration, Effect)>,
    crashed: BTreeSet<&'static str>,
    /// When each router last restarted.
    restarted: Vec<(&'static str, Duration)>,
    /// Routers whose disk was wiped and that have not restarted since.
    wiped: BTreeSet<&'static str>,
    /// Routers that restarted without their disk, and when.
    rebuilt: Vec<(&'static str, Duration)>,
    /// Routers whose disk fails.
    failing: BTreeSet<&'static str>,
    base_latency: Duration,
}

/// How long a router that restarted gets to catch up before another
/// router may lose its disk, and a router that lost its disk before another
/// one crashes at all: a router without its disk holds nothing until it has
/// copied the primary's state. Crashes that keep the disk strike any number
/// of routers at once.
const CATCH_UP: Duration = Duration::from_secs(3);

impl Injector {
    pub(crate) fn new(plan: Plan, base_latency: Duration) -> Self {
        Self {
            pending: plan.into_iter().map(|f| (f, None)).collect(),
            timed: Vec::new(),
            crashed: BTreeSet::new(),
            restarted: Vec::new(),
            wiped: BTreeSet::new(),
            rebuilt: Vec::new(),
            failing: BTreeSet::new(),
            base_latency,
        }
    }

    /// The effects due at `now`, given what has been observed so far and how
    /// many Sent events the clients have heard.
    pub(crate) fn due(&mut self, now: Duration, observed: &Observed, sents: usize) -> Vec<Effect> {
        let mut fire = Vec::new();
        let mut keep = Vec::new();
        for (fault, armed) in std::mem::take(&mut self.pending) {
            if fault.at > now {
                keep.push((fault, armed));
                continue;
            }
            let (events_then, sents_then, primary_then) = armed
                .clone()
                .unwrap_or_else(|| (observed.len(), sents, observed.primary()));
            let triggered = match fault.trigger {
                Trigger::Now => true,
                Trigger::NextSent => sents > sents_then,
                Trigger::NextFailover => (events_then..observed.len()).any(|i| {
                    matches!(observed.get(i), Some(ClusterEvent::Config { primary, .. }) if primary.is_some() && primary != primary_then)
                }),
                Trigger::NextCheckpoint => {
                    (events_then..observed.len()).any(|i| observed.get(i) == Some(ClusterEvent::Checkpoint))
                }
            };
            if triggered {
                fire.push(fault);
            } else {
                keep.push((fault, Some((events_then, sents_then, primary_then))));
            }
        }
        self.pending = keep;
        for fault in fire {
            self.schedule(now + fault.delay, &fault.action, observed);
        }
        let (now_due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.timed)
            .into_iter()
            .partition(|(t, _)| *t <= now);
        self.timed = later;
        now_due
            .into_iter()
            .map(|(_, e)| e)
            .filter(|effect| self.track(now, effect))
            .collect()
    }

    /// Effects that undo every fault still in force, for the heal phase.
    pub(crate) fn heal(&mut self) -> Vec<Effect> {
        self.pending.clear();
        self.timed.clear();
        let hosts: Vec<&'static str> = [RM].into_iter().chain(ROUTERS).chain(CLIENTS).collect();
        let mut effects: Vec<Effect> = std::mem::take(&mut self.failing)
            .into_iter()
            .map(Effect::DiskHeals)
            .collect();
        for (i, a) in hosts.iter().enumerate() {
            for b in &hosts[i + 1..] {
                effects.push(Effect::Release(a, b));
                effects.push(Effect::Repair(a, b));
            }
        }
        effects.extend(std::mem::take(&mut self.crashed).into_iter().map(Effect::Bounce));
        effects.push(Effect::Latency(self.base_latency));
        effects
    }

    /// Keeps the set of crashed hosts; drops effects that make no sense now
    /// (crashing a crashed host, restarting a running one), and router
    /// crashes beyond what the cluster promises to survive: a disk lost
    /// while another router is down or catching up, or any router crash
    /// while a router without its disk is down or catching up.
    fn track(&mut self, now: Duration, effect: &Effect) -> bool {
        let catching_up = |me: &str, restarted: &[(&'static str, Duration)]| {
            restarted.iter().any(|(h, at)| *h != me && now < *at + CATCH_UP)
        };
        match effect {
            Effect::CrashWipingDisk(host) => {
                let another_down = self.crashed.iter().any(|h| ROUTERS.contains(h) && h != host);
                if another_down || catching_up(host, &self.restarted) || !self.crashed.insert(host) {
                    return false;
                }
                self.wiped.insert(host);
                true
            }
            Effect::Crash(host) if ROUTERS.contains(host) => {
                let wiped_recently = self.wiped.iter().any(|w| w != host) || catching_up(host, &self.rebuilt);
                !wiped_recently && self.crashed.insert(host)
            }
            Effect::Crash(host) => self.crashed.insert(host),
            // The router stops by itself at its next write: down, as far as
            // the rules above go, until the restart after the disk heals.
            Effect::DiskFails(host) => self.crashed.insert(host) && self.failing.insert(host),
            // Whatever happened meanwhile, the restart that follows brings
            // the router back on its healed disk.
            Effect::DiskHeals(host) => {
                self.failing.remove(host);
                self.crashed.insert(host);
                true
            }
            Effect::Bounce(host) => {
                let was_down = self.crashed.remove(host);
                if was_down && ROUTERS.contains(host) {
                    self.restarted.push((host, now));
                }
                if self.wiped.remove(host) {
                    self.rebuilt.push((host, now));
                }
                was_down
            }
            _ => true,
        }
    }

    fn resolve(target: &Victim, observed: &Observed) -> Option<&'static str> {
        let primary = observed.primary();
        let primary = ROUTERS.iter().copied().find(|r| Some(*r) == primary.as_deref());
        match target {
            Victim::Named(host) => Some(host),
            Victim::Primary => primary,
            Victim::NotPrimary(n) => {
                let others: Vec<&'static str> =
                    ROUTERS.iter().copied().filter(|r| Some(*r) != primary).collect();
                others.get(n % others.len()).copied()
            }
        }
    }

    fn schedule(&mut self, at: Duration, action: &Action, observed: &Observed) {
        let tick = Duration::from_millis(10);
        let resolve_all = |targets: &[Victim]| -> Vec<&'static str> {
            targets
                .iter()
                .filter_map(|t| Self::resolve(t, observed))
                .collect()
        };
        match action {
            Action::Crash { host, down } => {
                if let Some(host) = Self::resolve(host, observed) {
                    self.timed.push((at, Effect::Crash(host)));
                    self.timed.push((at + *down, Effect::Bounce(host)));
                }
            }
            Action::CrashWipingDisk { host, down } => {
                if let Some(host) = Self::resolve(host, observed) {
                    self.timed.push((at, Effect::CrashWipingDisk(host)));
                    self.timed.push((at + *down, Effect::Bounce(host)));
                }
            }
            Action::SilentCrash { host, down } => {
                if let Some(host) = Self::resolve(host, observed) {
                    let everyone: Vec<&'static str> = [RM]
                        .into_iter()
                        .chain(ROUTERS)
                        .chain(CLIENTS)
                        .filter(|h| *h != host)
                        .collect();
                    for other in &everyone {
                        self.timed.push((at, Effect::Partition(host, other)));
                    }
                    self.timed.push((at + tick, Effect::Crash(host)));
                    self.timed.push((at + *down, Effect::Bounce(host)));
                    for other in &everyone {
                        self.timed.push((at + *down + tick, Effect::Repair(host, other)));
                    }
                }
            }
            Action::Partition {
                a,
                b,
                oneway,
                duration,
            } => {
                let Some(a) = Self::resolve(a, observed) else {
                    return;
                };
                for b in resolve_all(b).into_iter().filter(|b| *b != a) {
                    if *oneway {
                        self.timed.push((at, Effect::PartitionOneway(a, b)));
                        self.timed.push((at + *duration, Effect::RepairOneway(a, b)));
                    } else {
                        self.timed.push((at, Effect::Partition(a, b)));
                        self.timed.push((at + *duration, Effect::Repair(a, b)));
                    }
                }
            }
            Action::Hold { a, b, duration } => {
                let Some(a) = Self::resolve(a, observed) else {
                    return;
                };
                for b in resolve_all(b).into_iter().filter(|b| *b != a) {
                    self.timed.push((at, Effect::Hold(a, b)));
                    self.timed.push((at + *duration, Effect::Release(a, b)));
                }
            }
            Action::DiskFailure { host, duration } => {
                if let Some(host) = Self::resolve(host, observed) {
                    self.timed.push((at, Effect::DiskFails(host)));
                    self.timed.push((at + *duration, Effect::DiskHeals(host)));
                    self.timed.push((at + *duration, Effect::Bounce(host)));
                }
            }
            Action::Latency { max, duration } => {
                self.timed.push((at, Effect::Latency(*max)));
                self.timed
                    .push((at + *duration, Effect::Latency(self.base_latency)));
            }
        }
        // Keep effects in time order, stable for equal times.
        self.timed.sort_by_key(|(t, _)| *t);
    }
}

impl Effect {
    /// Applies the effect to the simulation.
    pub(crate) fn apply(&self, sim: &mut turmoil::Sim<'_>) {
        match *self {
            Effect::Crash(host) | Effect::CrashWipingDisk(host) => sim.crash(host),
            Effect::Bounce(host) => sim.bounce(host),
            Effect::Partition(a, b) => sim.partition(a, b),
            Effect::Repair(a, b) => sim.repair(a, b),
            Effect::PartitionOneway(a, b) => sim.partition_oneway(a, b),
            Effect::RepairOneway(a, b) => sim.repair_oneway(a, b),
            Effect::Hold(a, b) => sim.hold(a, b),
            Effect::Release(a, b) => sim.release(a, b),
            Effect::Latency(max) => sim.set_max_message_latency(max),
            // The harness flips the host's simulated disk.
            Effect::DiskFails(_) | Effect::DiskHeals(_) => {}
        }
    }
}
