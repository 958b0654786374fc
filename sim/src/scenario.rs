//! Named simulation scenarios. Each builds a turmoil simulation from a seed,
//! runs the real router and client drivers in it, and returns the [`Trace`].

use std::future::Future;
use std::time::{Duration, UNIX_EPOCH};

use peerlink_core::client::{ClientConfig, ClientEvent, Command, GroupOp};
use peerlink_core::ids::{GroupName, PeerId, Secret, Target};
use peerlink_core::router::RouterConfig;
use peerlink_core::testing::What;
use peerlink_runtime::client_driver::{ClientExit, Control};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::checker::{self, Violation};
use crate::cluster::{self, RunConfig, ROUTER_PORT};
use crate::disk::SimDisk;
use crate::faults::{Action, Fault, Plan, Trigger, Victim, CLIENTS, RM, ROUTERS};
use crate::rogue::RogueKey;
use crate::trace::{LogCapture, Recorder};
use crate::Trace;

pub use crate::cluster::SimError;

/// Runs a simulation with a log capture installed, and returns its trace.
fn simulate(seed: u64, build: impl FnOnce(&mut turmoil::Sim<'_>, &Recorder)) -> Result<Trace, SimError> {
    let logs = LogCapture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .without_time()
        .with_ansi(false)
        .with_env_filter("peerlink_runtime=debug")
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let mut sim = turmoil::Builder::new()
            .rng_seed(seed)
            .epoch(UNIX_EPOCH + Duration::from_secs(1_800_000_000))
            .simulation_duration(Duration::from_secs(120))
            .build();
        let recorder = Recorder::default();
        build(&mut sim, &recorder);
        sim.run()?;
        Ok(recorder.finish(&logs))
    })
}

/// A host function running a standalone router on `ROUTER_PORT`, its state
/// on a disk that outlives the host's crashes.
fn router_host(seed: u64) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = turmoil::Result>>> {
    let disk = SimDisk::default();
    move || {
        let disk = disk.clone();
        Box::pin(async move {
            let sync = Duration::from_millis(1);
            let checkpoint_after = cluster::checkpoint_after(&mut ChaCha8Rng::seed_from_u64(seed));
            let (router, storage) =
                cluster::recover_router(disk, RouterConfig::default(), seed, 1, checkpoint_after, sync)?;
            cluster::serve_router(router, None, storage).await
        })
    }
}

/// A client driver running inside a simulated host, with every command it
/// is given and every event it reports recorded.
struct SimPeer {
    peer: PeerId,
    controls: mpsc::Sender<Control>,
    events: mpsc::UnboundedReceiver<ClientEvent>,
    driver: JoinHandle<ClientExit>,
    recorder: Recorder,
}

impl SimPeer {
    fn start(name: &str, seed: u64, routers: Vec<String>, recorder: &Recorder) -> Self {
        let peer = PeerId::new(name).expect("scenario peer names are valid");
        let secret = Secret::new(format!("{name}-secret")).expect("valid secret");
        let config = ClientConfig::new(peer.clone(), secret, routers);
        let (controls, events, driver) = cluster::run_client_driver(config, seed, Duration::from_secs(2), 64);
        Self {
            peer,
            controls,
            events,
            driver,
            recorder: recorder.clone(),
        }
    }

    async fn command(&mut self, command: Command) {
        self.recorder.record(&self.peer, What::Issued(command.clone()));
        self.controls
            .send(Control::Command(command))
            .await
            .expect("the driver runs until finished");
    }

    /// Waits for an event for which `wanted` holds, recording every event.
    async fn until(&mut self, wanted: impl Fn(&ClientEvent) -> bool) -> ClientEvent {
        loop {
            let event = self.events.recv().await.expect("the driver runs until finished");
            self.recorder.record(&self.peer, What::Observed(event.clone()));
            if wanted(&event) {
                return event;
            }
        }
    }

    /// Ends input, waits for the driver to finish, recording the last events.
    async fn finish(mut self) -> ClientExit {
        let within = Duration::from_secs(30);
        self.controls
            .send(Control::Finish { within })
            .await
            .expect("the driver runs until finished");
        while let Some(event) = self.events.recv().await {
            self.recorder.record(&self.peer, What::Observed(event));
        }
        self.driver.await.expect("the driver does not panic")
    }
}

fn group(name: &str) -> GroupName {
    GroupName::new(name).expect("valid group name")
}

fn target(name: &str) -> Target {
    Target::new(name).expect("valid target")
}

/// One router, two peers. `alice` creates group `g`, `bob` joins it, and
/// `alice` sends `bob` a direct message and a group message; both must be
/// Sent, received by `bob`, and reported Delivered to `alice`.
pub fn direct_and_group(seed: u64) -> Result<Trace, SimError> {
    simulate(seed, |sim, recorder| {
        sim.host("router", router_host(seed));
        let routers = vec![format!("router:{ROUTER_PORT}")];
        let (created_tx, created) = oneshot::channel::<()>();
        let (joined_tx, joined) = oneshot::channel::<()>();
        let (done_tx, done) = oneshot::channel::<()>();

        let (bob_recorder, bob_routers) = (recorder.clone(), routers.clone());
        sim.client("bob", async move {
            let mut bob = SimPeer::start("bob", seed.wrapping_add(1), bob_routers, &bob_recorder);
            bob.command(Command::Register).await;
            bob.until(|e| matches!(e, ClientEvent::Registered { .. })).await;
            created.await?;
            bob.command(Command::Group(GroupOp::Join, group("g"))).await;
            bob.until(|e| matches!(e, ClientEvent::GroupDone { .. })).await;
            joined_tx.send(()).map_err(|()| "alice is gone")?;
            for _ in 0..2 {
                bob.until(|e| matches!(e, ClientEvent::Received { .. })).await;
            }
            done.await?;
            bob.finish().await;
            Ok(())
        });

        let alice_recorder = recorder.clone();
        sim.client("alice", async move {
            let mut alice = SimPeer::start("alice", seed.wrapping_add(2), routers, &alice_recorder);
            alice.command(Command::Register).await;
            alice.until(|e| matches!(e, ClientEvent::Registered { .. })).await;
            alice.command(Command::Group(GroupOp::Create, group("g"))).await;
            alice.until(|e| matches!(e, ClientEvent::GroupDone { .. })).await;
            created_tx.send(()).map_err(|()| "bob is gone")?;
            joined.await?;
            let direct = Command::Send {
                to: target("bob"),
                body: "direct hello".into(),
            };
            alice.command(direct).await;
            let grouped = Command::Send {
                to: target("g"),
                body: "group hello".into(),
            };
            alice.command(grouped).await;
            for _ in 0..2 {
                alice.until(|e| matches!(e, ClientEvent::Delivered { .. })).await;
            }
            done_tx.send(()).map_err(|()| "bob is gone")?;
            alice.finish().await;
            Ok(())
        });
    })
}

/// The named chaos scenarios, in the order `sweep --scenario all` runs them.
pub const SCENARIOS: [&str; 20] = [
    "primary_crash",
    "silent_primary_crash",
    "primary_cut_from_rm",
    "primary_cut_from_backups",
    "backup_crash",
    "rm_crash",
    "client_offline_failover",
    "group_churn_failover",
    "split_brain",
    "mix",
    "restart_while_backups_cut_from_rm",
    "slow_network_primary_crash",
    "rolling_restarts",
    "paused_primary",
    "rogue_during_failover",
    "new_primary_dies_while_others_unheard",
    "whole_cluster_crash",
    "rolling_crashes",
    "presence_failover",
    "failing_disks",
];

/// What one scenario run found.
#[derive(Debug)]
pub struct Outcome {
    /// Everything that happened.
    pub trace: Trace,
    /// The broken invariants, if any.
    pub violations: Vec<Violation>,
}

/// The configuration of scenario `name` for `seed`, or `None` if no
/// scenario has that name.
pub fn config(name: &str, seed: u64) -> Option<RunConfig> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ fnv(name));
    let secs = |rng: &mut ChaCha8Rng, lo: u64, hi: u64| {
        Duration::from_millis(rng.random_range(lo * 1000..hi * 1000))
    };
    let mut config = RunConfig::new(seed, Plan::new());
    let fault = |at, trigger, delay, action| Fault {
        at,
        trigger,
        delay,
        action,
    };
    let plan = &mut config.plan;
    match name {
        "rogue_during_failover" => {
            // A non-member attacks every port throughout (see below); the
            // primary crashes as in `primary_crash`, right after a Sent.
            let down = secs(&mut rng, 1, 4);
            let action = Action::Crash {
                host: Victim::Primary,
                down,
            };
            plan.push(fault(
                secs(&mut rng, 4, 10),
                Trigger::NextSent,
                Duration::ZERO,
                action,
            ));
        }
        "primary_crash" => {
            // Half the time, right after a client hears Sent.
            let trigger = sent_or_now(&mut rng, 0.5);
            let delay = Duration::from_millis(rng.random_range(0..5));
            let down = secs(&mut rng, 1, 4);
            plan.push(fault(
                secs(&mut rng, 4, 10),
                trigger,
                delay,
                Action::Crash {
                    host: Victim::Primary,
                    down,
                },
            ));
        }
        "silent_primary_crash" => {
            let down = secs(&mut rng, 2, 5);
            let action = Action::SilentCrash {
                host: Victim::Primary,
                down,
            };
            plan.push(fault(secs(&mut rng, 4, 10), Trigger::Now, Duration::ZERO, action));
        }
        "primary_cut_from_rm" => {
            let duration = secs(&mut rng, 2, 6);
            let action = Action::Partition {
                a: Victim::Primary,
                b: vec![Victim::Named(RM)],
                oneway: false,
                duration,
            };
            plan.push(fault(secs(&mut rng, 4, 10), Trigger::Now, Duration::ZERO, action));
        }
        "split_brain" => {
            // A backup loses the RM first, so the RM promotes the other one
            // with no live backup; a client loses the old primary and moves
            // to the new one, while the old primary keeps the others.
            let at = secs(&mut rng, 4, 8);
            let duration = secs(&mut rng, 6, 10);
            let backup = Victim::NotPrimary(rng.random_range(0..2));
            let client = Victim::Named(CLIENTS[rng.random_range(0..CLIENTS.len())]);
            let cuts = [
                (at - Duration::from_millis(500), backup, Victim::Named(RM)),
                (at, Victim::Primary, Victim::Named(RM)),
                (at, Victim::Primary, client),
            ];
            for (at, a, b) in cuts {
                let action = Action::Partition {
                    a,
                    b: vec![b],
                    oneway: false,
                    duration,
                };
                plan.push(fault(at, Trigger::Now, Duration::ZERO, action));
            }
        }
        "primary_cut_from_backups" => {
            let duration = secs(&mut rng, 2, 6);
            let action = Action::Partition {
                a: Victim::Primary,
                b: vec![Victim::NotPrimary(0), Victim::NotPrimary(1)],
                oneway: false,
                duration,
            };
            plan.push(fault(secs(&mut rng, 4, 10), Trigger::Now, Duration::ZERO, action));
        }
        "backup_crash" => {
            let backup = Victim::NotPrimary(rng.random_range(0..2));
            let first = secs(&mut rng, 3, 7);
            let down = secs(&mut rng, 1, 3);
            let action = Action::Crash {
                host: backup.clone(),
                down,
            };
            plan.push(fault(first, Trigger::Now, Duration::ZERO, action));
            // When it comes back it loads a checkpoint: crash it again then.
            let action = Action::Crash { host: backup, down };
            let delay = Duration::from_millis(rng.random_range(0..20));
            plan.push(fault(first + down, Trigger::NextCheckpoint, delay, action));
        }
        "rm_crash" => {
            let at = secs(&mut rng, 3, 7);
            let down = secs(&mut rng, 2, 5);
            plan.push(fault(
                at,
                Trigger::Now,
                Duration::ZERO,
                Action::Crash {
                    host: Victim::Named(RM),
                    down,
                },
            ));
            let later = at + down + secs(&mut rng, 1, 3);
            let primary_down = secs(&mut rng, 1, 3);
            let action = Action::Crash {
                host: Victim::Primary,
                down: primary_down,
            };
            plan.push(fault(later, Trigger::Now, Duration::ZERO, action));
        }
        "client_offline_failover" => {
            let offline_at = secs(&mut rng, 3, 6);
            let action = Action::Partition {
                a: Victim::Named(CLIENTS[2]),
                b: ROUTERS.iter().map(|r| Victim::Named(r)).collect(),
                oneway: false,
                duration: config.work,
            };
            plan.push(fault(offline_at, Trigger::Now, Duration::ZERO, action));
            let down = secs(&mut rng, 1, 3);
            let crash = Action::Crash {
                host: Victim::Primary,
                down,
            };
            plan.push(fault(
                offline_at + secs(&mut rng, 2, 5),
                Trigger::Now,
                Duration::ZERO,
                crash,
            ));
        }
        "group_churn_failover" => {
            config.churn = 40;
            let down = secs(&mut rng, 1, 4);
            let action = Action::Crash {
                host: Victim::Primary,
                down,
            };
            plan.push(fault(
                secs(&mut rng, 4, 12),
                Trigger::NextSent,
                Duration::ZERO,
                action,
            ));
        }
        "mix" => {
            for _ in 0..rng.random_range(4..9) {
                let at = secs(&mut rng, 3, 16);
                let short = secs(&mut rng, 1, 4);
                let trigger = match rng.random_range(0..6) {
                    0 => Trigger::NextSent,
                    1 => Trigger::NextFailover,
                    2 => Trigger::NextCheckpoint,
                    _ => Trigger::Now,
                };
                let delay = Duration::from_millis(rng.random_range(0..300));
                let host = match rng.random_range(0..4) {
                    0 => Victim::Primary,
                    1 => Victim::NotPrimary(rng.random_range(0..2)),
                    2 => Victim::Named(RM),
                    _ => Victim::Named(ROUTERS[rng.random_range(0..3)]),
                };
                let others = |rng: &mut ChaCha8Rng| -> Vec<Victim> {
                    let all: Vec<&'static str> = [RM].into_iter().chain(ROUTERS).chain(CLIENTS).collect();
                    let n = rng.random_range(1..4);
                    (0..n)
                        .map(|_| Victim::Named(all[rng.random_range(0..all.len())]))
                        .collect()
                };
                let action = match rng.random_range(0..7) {
                    0 => Action::Crash { host, down: short },
                    6 => Action::CrashWipingDisk { host, down: short },
                    1 => Action::SilentCrash { host, down: short },
                    2 => Action::Partition {
                        a: host,
                        b: others(&mut rng),
                        oneway: rng.random_bool(0.5),
                        duration: short,
                    },
                    3 => Action::Hold {
                        a: host,
                        b: others(&mut rng),
                        duration: short,
                    },
                    4 => Action::Latency {
                        max: Duration::from_millis(rng.random_range(50..400)),
                        duration: short,
                    },
                    _ => Action::Partition {
                        a: Victim::Named(CLIENTS[rng.random_range(0..3)]),
                        b: ROUTERS.iter().map(|r| Victim::Named(r)).collect(),
                        oneway: false,
                        duration: short,
                    },
                };
                plan.push(fault(at, trigger, delay, action));
            }
        }
        "restart_while_backups_cut_from_rm" => {
            // Both backups lose the RM but keep the primary; the primary then
            // crashes and comes back at once, with its disk or (half the
            // seeds) empty. The RM hears only it.
            let at = secs(&mut rng, 4, 8);
            let duration = secs(&mut rng, 3, 6);
            let action = Action::Partition {
                a: Victim::Named(RM),
                b: vec![Victim::NotPrimary(0), Victim::NotPrimary(1)],
                oneway: false,
                duration,
            };
            plan.push(fault(at, Trigger::Now, Duration::ZERO, action));
            let down = Duration::from_millis(rng.random_range(100..700));
            let trigger = sent_or_now(&mut rng, 0.5);
            let host = Victim::Primary;
            let crash = if rng.random_bool(0.5) {
                Action::CrashWipingDisk { host, down }
            } else {
                Action::Crash { host, down }
            };
            let after = Duration::from_millis(rng.random_range(600..1500));
            plan.push(fault(at + after, trigger, Duration::ZERO, crash));
        }
        "whole_cluster_crash" => {
            // Power fails: the RM and every router die at the same instant,
            // right after a Sent (or at a random moment), losing what their
            // disks had not synced and maybe tearing the last write; they
            // come back one by one. Sometimes it happens twice.
            for _ in 0..rng.random_range(1..3) {
                let at = secs(&mut rng, 3, 12);
                let trigger = sent_or_now(&mut rng, 0.7);
                for host in [RM].into_iter().chain(ROUTERS) {
                    let down = Duration::from_millis(rng.random_range(100..3_000));
                    let action = Action::Crash {
                        host: Victim::Named(host),
                        down,
                    };
                    plan.push(fault(at, trigger, Duration::ZERO, action));
                }
            }
        }
        "presence_failover" => {
            // Clients watch each other and a peer that keeps going offline
            // and coming back, while the primary crashes, and later crashes
            // again or is cut from the RM: presence is soft state of the
            // primary, rebuilt after each failover.
            config.presence = true;
            let down = secs(&mut rng, 1, 4);
            let crash = Action::Crash {
                host: Victim::Primary,
                down,
            };
            plan.push(fault(secs(&mut rng, 3, 9), Trigger::Now, Duration::ZERO, crash));
            // Late in the work, so that for many seeds the watches renewed
            // after it are the last news watchers get.
            let late = if rng.random_bool(0.5) {
                Action::Partition {
                    a: Victim::Primary,
                    b: vec![Victim::Named(RM)],
                    oneway: false,
                    duration: secs(&mut rng, 2, 5),
                }
            } else {
                Action::Crash {
                    host: Victim::Primary,
                    down: secs(&mut rng, 1, 3),
                }
            };
            plan.push(fault(secs(&mut rng, 12, 17), Trigger::Now, Duration::ZERO, late));
        }
        "failing_disks" => {
            // The primary's disk fills up (half the time right after a
            // Sent): it must stop rather than acknowledge what it cannot
            // store, and a backup takes over. Space is freed 1-4 s later
            // and the router is restarted. Half the time another router's
            // disk (or the same one's) fills up later too.
            let trigger = sent_or_now(&mut rng, 0.5);
            let at = secs(&mut rng, 3, 8);
            let duration = secs(&mut rng, 1, 4);
            let host = Victim::Primary;
            plan.push(fault(
                at,
                trigger,
                Duration::ZERO,
                Action::DiskFailure { host, duration },
            ));
            if rng.random_bool(0.5) {
                let later = at + duration + secs(&mut rng, 1, 4);
                let host = Victim::Named(ROUTERS[rng.random_range(0..ROUTERS.len())]);
                let duration = secs(&mut rng, 1, 3);
                plan.push(fault(
                    later,
                    Trigger::Now,
                    Duration::ZERO,
                    Action::DiskFailure { host, duration },
                ));
            }
        }
        "rolling_crashes" => {
            // Routers crash one after another with no pause to catch up:
            // each goes down while the one before may still be down or
            // copying from the primary.
            let mut at = secs(&mut rng, 3, 5);
            for _ in 0..rng.random_range(3..7) {
                let host = match rng.random_range(0..3) {
                    0 => Victim::Primary,
                    1 => Victim::NotPrimary(rng.random_range(0..2)),
                    _ => Victim::Named(ROUTERS[rng.random_range(0..3)]),
                };
                let down = Duration::from_millis(rng.random_range(100..2_000));
                let trigger = sent_or_now(&mut rng, 0.5);
                plan.push(fault(at, trigger, Duration::ZERO, Action::Crash { host, down }));
                at += Duration::from_millis(rng.random_range(0..1_200));
            }
        }
        "slow_network_primary_crash" => {
            // Latency up to 900 ms on every link (spurious failovers
            // included), and the primary crashes in the middle of it.
            let at = secs(&mut rng, 3, 6);
            let max = Duration::from_millis([100, 300, 900][rng.random_range(0..3)]);
            let duration = secs(&mut rng, 6, 10);
            plan.push(fault(
                at,
                Trigger::Now,
                Duration::ZERO,
                Action::Latency { max, duration },
            ));
            let down = secs(&mut rng, 1, 3);
            let crash = Action::Crash {
                host: Victim::Primary,
                down,
            };
            plan.push(fault(
                at + secs(&mut rng, 1, 4),
                Trigger::NextSent,
                Duration::ZERO,
                crash,
            ));
        }
        "rolling_restarts" => {
            // Every router restarts in turn, as an operator upgrading them
            // would; the primary's turn may come at any point.
            let mut at = secs(&mut rng, 3, 5);
            for router in ROUTERS {
                let down = Duration::from_millis(rng.random_range(200..1500));
                let action = Action::Crash {
                    host: Victim::Named(router),
                    down,
                };
                plan.push(fault(at, Trigger::Now, Duration::ZERO, action));
                at += down + secs(&mut rng, 1, 3);
            }
        }
        "paused_primary" => {
            // The primary's process is paused: everything it sends or is
            // sent is held, then released after the RM has replaced it.
            let at = secs(&mut rng, 4, 8);
            let duration = secs(&mut rng, 1, 4);
            let others = [RM]
                .into_iter()
                .chain(ROUTERS)
                .chain(CLIENTS)
                .map(Victim::Named)
                .collect();
            let action = Action::Hold {
                a: Victim::Primary,
                b: others,
                duration,
            };
            plan.push(fault(at, Trigger::NextSent, Duration::ZERO, action));
        }
        "new_primary_dies_while_others_unheard" => {
            // The RM stops hearing the primary and one backup (their
            // traffic with it is held, not lost) and promotes the other
            // backup, whose machine then dies for good (it comes back with
            // an empty disk) before anyone has caught up with it: only a
            // backup of the old configuration can take over.
            let at = secs(&mut rng, 4, 8);
            let held = Action::Hold {
                a: Victim::Named(RM),
                b: vec![Victim::Primary, Victim::NotPrimary(0)],
                duration: secs(&mut rng, 2, 4),
            };
            plan.push(fault(at, Trigger::NextSent, Duration::ZERO, held));
            let crash = Action::CrashWipingDisk {
                host: Victim::Primary,
                down: secs(&mut rng, 1, 4),
            };
            let after = Duration::from_millis(rng.random_range(900..1_500));
            plan.push(fault(at + after, Trigger::Now, Duration::ZERO, crash));
        }
        _ => return None,
    }
    if name == "rogue_during_failover" {
        config.rogue = Some(RogueKey::Own);
    }
    Some(config)
}

/// Runs scenario `name` with `seed` and checks every invariant.
pub fn run_scenario(name: &str, seed: u64) -> Result<Outcome, SimError> {
    let config = config(name, seed).ok_or_else(|| format!("no scenario is named {name:?}"))?;
    let (trace, observed) = cluster::run(&config)?;
    let mut violations = checker::check(&trace.history);
    violations.extend(checker::check_cluster(&observed.events()));
    Ok(Outcome { trace, violations })
}

/// The command that replays scenario `name` with `seed`, with its trace.
pub fn replay_command(name: &str, seed: u64) -> String {
    format!("cargo run -p sim --release -- replay --scenario {name} --seed {seed}")
}

/// Right after the next Sent with probability `p`, else at once.
fn sent_or_now(rng: &mut ChaCha8Rng, p: f64) -> Trigger {
    if rng.random_bool(p) {
        Trigger::NextSent
    } else {
        Trigger::Now
    }
}

/// FNV-1a of a name, to give every scenario its own random stream.
fn fnv(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
