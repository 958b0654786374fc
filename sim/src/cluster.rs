//! A whole cluster in one simulation: the replica manager, three routers and
//! three clients, each a turmoil host running the production drivers over
//! [`TurmoilNetwork`], under a [`Plan`] of faults, followed by a heal phase
//! long enough for everything to drain.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::io;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use peerlink_core::client::{Client, ClientConfig, ClientEvent, Command, GroupOp, Query};
use peerlink_core::cluster_auth::ClusterKey;
use peerlink_core::ids::{GroupName, PeerId, ReplicaId, Secret, Target};
use peerlink_core::rm::{ReplicaManager, RmConfig};
use peerlink_core::router::replication::ReplicationConfig;
use peerlink_core::router::secrets::KdfParams;
use peerlink_core::router::{Router, RouterConfig};
use peerlink_core::testing::What;
use peerlink_core::wire::cluster::Configuration;
use peerlink_core::wire::DEFAULT_MAX_FRAME_LEN;
use peerlink_runtime::client_driver::{run_client, ClientDriverConfig, ClientExit, Control};
use peerlink_runtime::cluster_link::ClusterAuth;
use peerlink_runtime::net::Network;
use peerlink_runtime::rm_driver::{run_rm, ConfigStore};
use peerlink_runtime::router_driver::{run_router, ClusterPort, Hashing, RouterLimits, DEFAULT_MAX_QUEUED};
use peerlink_runtime::storage::{Storage, StorageError, Store};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing_subscriber::layer::SubscriberExt;

use crate::disk::SimDisk;
use crate::faults::{Effect, Injector, Plan, CLIENTS, RM, ROUTERS};
use crate::net::TurmoilNetwork;
use crate::observe::{Capture, Observed};
use crate::rogue::{self, RogueKey, ROGUE};
use crate::trace::{LogCapture, Recorder};
use crate::Trace;

/// The port routers listen on.
pub(crate) const ROUTER_PORT: u16 = 8008;
/// The port routers listen on for the other members of the cluster.
pub(crate) const CLUSTER_PORT: u16 = 8009;
/// The port the replica manager listens on.
pub(crate) const RM_PORT: u16 = 8007;
/// The group every client may join.
const GROUP: &str = "g";
/// In a presence run, the peer that comes and goes, watched by every client.
pub(crate) const ROAMER: &str = "roamer";

/// An error that ended a simulation run (a host failed, or the run did not
/// finish in its simulated time).
pub type SimError = Box<dyn std::error::Error>;

/// How a run goes.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Seeds the network, every machine and the workload.
    pub seed: u64,
    /// How long clients issue commands (faults strike within it).
    pub work: Duration,
    /// How long, after everything is healed, clients keep listening before
    /// they finish.
    pub drain: Duration,
    /// The faults.
    pub plan: Plan,
    /// Out of 100 client actions, how many join or leave the group.
    pub churn: u32,
    /// The largest message latency when no fault changes it.
    pub latency: Duration,
    /// Each router's mailbox limit.
    pub mailbox_limit: usize,
    /// The replica manager's failure timeout.
    pub failure_timeout: Duration,
    /// A rogue host attacking the cluster throughout, and the key it holds.
    pub rogue: Option<RogueKey>,
    /// Whether clients watch each other and a [`ROAMER`] that goes offline
    /// and comes back, and are judged on presence once quiet.
    pub presence: bool,
    /// Deliberate bugs to switch on in the RM and every router and client.
    #[cfg(feature = "planted-bugs")]
    pub bugs: peerlink_core::bugs::Bugs,
}

impl RunConfig {
    /// A run with `plan`, the default durations and workload.
    pub fn new(seed: u64, plan: Plan) -> Self {
        Self {
            seed,
            work: Duration::from_secs(16),
            drain: Duration::from_secs(15),
            plan,
            churn: 15,
            latency: Duration::from_millis(10),
            mailbox_limit: RouterConfig::default().mailbox_limit,
            failure_timeout: RmConfig::default().failure_timeout,
            rogue: None,
            presence: false,
            #[cfg(feature = "planted-bugs")]
            bugs: Default::default(),
        }
    }
}

/// The replica manager's "disk": survives crashes of its host.
#[derive(Debug, Clone, Default)]
struct MemoryStore(Rc<RefCell<Configuration>>);

impl ConfigStore for MemoryStore {
    fn load(&mut self) -> io::Result<Configuration> {
        Ok(self.0.borrow().clone())
    }

    fn save(&mut self, config: &Configuration) -> io::Result<()> {
        *self.0.borrow_mut() = config.clone();
        Ok(())
    }
}

/// The cluster key of the run with `seed`.
pub(crate) fn cluster_key(seed: u64) -> ClusterKey {
    let bytes: [u8; 32] = ChaCha8Rng::seed_from_u64(seed ^ 0x6b65_795f_6b65_795f).random();
    ClusterKey::new(bytes.to_vec()).expect("32 bytes make a key")
}

/// Credentials with `key` whose nonces come from `seed`.
pub(crate) fn cluster_auth(key: ClusterKey, seed: u64) -> ClusterAuth {
    ClusterAuth::new(key, ChaCha8Rng::seed_from_u64(seed).random())
}

/// How many bytes of log a simulated router writes before it asks for a
/// checkpoint: drawn at each start between 1 and 32 KiB, so that runs
/// cross several checkpoints, at points that vary from seed to seed (at the
/// earlier fixed 64 KiB, a run hardly ever reached one).
pub(crate) fn checkpoint_after(rng: &mut impl Rng) -> u64 {
    1024 * rng.random_range(1..=32)
}

/// A router started from what `disk` holds, with `config` and `seed`;
/// `fresh_id` names the storage if the disk is empty; the log is
/// checkpointed after `checkpoint_after` bytes. Returns the router and its
/// storage writer, whose syncs take `sync_delay`.
pub(crate) fn recover_router(
    disk: SimDisk,
    mut config: RouterConfig,
    seed: u64,
    fresh_id: u64,
    checkpoint_after: u64,
    sync_delay: Duration,
) -> Result<(Router, Storage), StorageError> {
    let opened = Store::open(disk, fresh_id, checkpoint_after)?;
    if let Some(replication) = &mut config.replication {
        replication.state_id = opened.store.state_id();
    }
    let router = Router::recover(config, seed, peerlink_runtime::now(), opened.recovered);
    Ok((router, Storage::task(opened.store, sync_delay)))
}

/// Runs `router` on [`ROUTER_PORT`] of the current host — and, for a
/// replicated router, its cluster listener on [`CLUSTER_PORT`] — writing to
/// `storage`, for ever.
pub(crate) async fn serve_router(
    router: Router,
    auth: Option<ClusterAuth>,
    storage: Storage,
) -> turmoil::Result {
    let listener = TurmoilNetwork.bind(&format!("0.0.0.0:{ROUTER_PORT}")).await?;
    let cluster = match auth {
        Some(auth) => {
            let listener = TurmoilNetwork.bind(&format!("0.0.0.0:{CLUSTER_PORT}")).await?;
            Some(ClusterPort { listener, auth })
        }
        None => None,
    };
    let limits = RouterLimits {
        max_frame_len: DEFAULT_MAX_FRAME_LEN,
        max_connections: 1_000,
        max_per_source: 1_000,
        connect_timeout: Duration::from_secs(1),
        max_queued: DEFAULT_MAX_QUEUED,
        hashing: Hashing::Inline,
    };
    run_router(
        TurmoilNetwork,
        router,
        listener,
        cluster,
        limits,
        storage,
        std::future::pending(),
    )
    .await?;
    Ok(())
}

/// Runs one simulation and returns its trace, with the routers' commits.
pub fn run(config: &RunConfig) -> Result<(Trace, Observed), SimError> {
    let logs = LogCapture::default();
    let observed = Observed::default();
    let filter = tracing_subscriber::EnvFilter::new(
        "warn,peerlink::commit=trace,peerlink::role=info,peerlink::config=info,peerlink::checkpoint=debug",
    );
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .without_time()
        .with_ansi(false)
        .with_env_filter(filter)
        .finish()
        .with(Capture(observed.clone()));
    let trace = tracing::subscriber::with_default(subscriber, || simulate(config, &observed, &logs))?;
    Ok((trace, observed))
}

fn simulate(config: &RunConfig, observed: &Observed, logs: &LogCapture) -> Result<Trace, SimError> {
    let work_end = Duration::from_secs(2) + config.work;
    let finish_at = work_end + config.drain;
    let mut sim = turmoil::Builder::new()
        .rng_seed(config.seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(1_800_000_000))
        .simulation_duration(finish_at + Duration::from_secs(60))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(config.latency)
        .build();
    let recorder = Recorder::default();

    let store = MemoryStore::default();
    let rm_config = RmConfig {
        #[cfg(feature = "planted-bugs")]
        bugs: config.bugs,
        ..RmConfig::new(config.failure_timeout, RmConfig::default().min_backups)
    };
    let key = cluster_key(config.seed);
    let rm_key = key.clone();
    let rm_starts = Rc::new(Cell::new(0u64));
    let rm_seed = config.seed;
    sim.host(RM, move || {
        let mut store = store.clone();
        let rm_config = rm_config.clone();
        rm_starts.set(rm_starts.get() + 1);
        let auth = cluster_auth(rm_key.clone(), rm_seed.wrapping_add(rm_starts.get()));
        async move {
            let restored = store.load()?;
            let listener = TurmoilNetwork.bind(&format!("0.0.0.0:{RM_PORT}")).await?;
            let rm = ReplicaManager::new(rm_config, restored, peerlink_runtime::now());
            run_rm(
                rm,
                listener,
                auth,
                store,
                DEFAULT_MAX_FRAME_LEN,
                std::future::pending(),
            )
            .await;
            Ok(())
        }
    });
    let disks: Vec<SimDisk> = ROUTERS.iter().map(|_| SimDisk::default()).collect();
    for (n, name) in ROUTERS.iter().enumerate() {
        let starts = Rc::new(Cell::new(0u64));
        let disk = disks[n].clone();
        let seed = config.seed;
        let mailbox_limit = config.mailbox_limit;
        #[cfg(feature = "planted-bugs")]
        let bugs = config.bugs;
        let key = key.clone();
        let observed = observed.clone();
        sim.host(*name, move || {
            starts.set(starts.get() + 1);
            let incarnation = starts.get();
            let router_seed = seed.wrapping_add(100 * (n as u64 + 1) + incarnation);
            let auth = cluster_auth(key.clone(), router_seed);
            let disk = disk.clone();
            let watched = disk.clone();
            let mut rng = ChaCha8Rng::seed_from_u64(router_seed);
            let fresh_id = rng.random::<u64>() | 1;
            let sync_delay = Duration::from_micros(rng.random_range(500..30_000));
            let checkpoint_after = checkpoint_after(&mut rng);
            let observed = observed.clone();
            async move {
                let id = ReplicaId::new(*name)?;
                let addr = format!("{name}:{ROUTER_PORT}");
                let cluster_addr = format!("{name}:{CLUSTER_PORT}");
                let rm = format!("{RM}:{RM_PORT}");
                let replication = ReplicationConfig::new(id, addr, cluster_addr, rm, incarnation);
                let router_config = RouterConfig {
                    replication: Some(replication),
                    mailbox_limit,
                    // Simulated routers register thousands of peers: the
                    // cheapest stretching, computed inline (deterministic).
                    kdf: KdfParams::CHEAPEST,
                    #[cfg(feature = "planted-bugs")]
                    bugs,
                    ..RouterConfig::default()
                };
                let started = recover_router(
                    disk,
                    router_config,
                    router_seed,
                    fresh_id,
                    checkpoint_after,
                    sync_delay,
                );
                let (router, storage) = match started {
                    Ok(started) => started,
                    // A failing disk cannot even be recovered from: the
                    // router exits, to be restarted when the disk heals.
                    Err(_) if watched.is_failing() => return Ok(()),
                    Err(error) => {
                        // The router exits, as the binary would; the run
                        // goes on without it and the checker reports it.
                        observed.unrecoverable(name, error.to_string());
                        return Ok(());
                    }
                };
                let served = serve_router(router, Some(auth), storage).await;
                if served.is_err() && watched.is_failing() {
                    // It stopped on its failing disk, as it must: nothing it
                    // could not store was acknowledged. Restarted when the
                    // disk heals.
                    return Ok(());
                }
                served
            }
        });
    }
    if let Some(which) = config.rogue {
        let (key, seed) = (key.clone(), config.seed ^ 0x726f_6775_6572_6f67);
        sim.host(ROGUE, move || rogue::run(which, key.clone(), seed));
    }
    if config.presence {
        let roamer = Roamer {
            #[cfg(feature = "planted-bugs")]
            bugs: config.bugs,
            seed: config.seed,
            work_end,
            finish_at,
            recorder: recorder.clone(),
        };
        sim.client(ROAMER, roamer.run());
    }
    for (i, name) in CLIENTS.iter().enumerate() {
        let workload = Workload {
            presence: config.presence,
            #[cfg(feature = "planted-bugs")]
            bugs: config.bugs,
            index: i,
            seed: config.seed,
            churn: config.churn,
            work_end,
            finish_at,
            recorder: recorder.clone(),
            refused_watches: RefCell::default(),
        };
        sim.client(*name, workload.run());
    }

    let mut injector = Injector::new(config.plan.clone(), config.latency);
    let mut disk_rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0x6469_736b);
    let mut healed = false;
    while !sim.step()? {
        let now = sim.elapsed();
        let sents = recorder.sent_count();
        let effects = if now >= work_end && !healed {
            healed = true;
            recorder.note(&format!("heal at {} ms", now.as_millis()));
            injector.heal()
        } else {
            injector.due(now, observed, sents)
        };
        for effect in effects {
            recorder.note(&format!("fault at {} ms: {effect:?}", now.as_millis()));
            effect.apply(&mut sim);
            let disk = |host: &str| ROUTERS.iter().position(|r| *r == host).map(|n| &disks[n]);
            match effect {
                Effect::Crash(host) => disk(host).into_iter().for_each(|d| d.crash(&mut disk_rng)),
                Effect::CrashWipingDisk(host) => disk(host).into_iter().for_each(SimDisk::wipe),
                Effect::DiskFails(host) => disk(host).into_iter().for_each(|d| d.set_failing(true)),
                Effect::DiskHeals(host) => disk(host).into_iter().for_each(|d| d.set_failing(false)),
                _ => {}
            }
        }
    }
    let mut trace = recorder.finish(logs);
    trace.simulated = sim.elapsed();
    Ok(trace)
}

/// A running client driver: its commands, its events, and its task.
pub(crate) type ClientHandles = (
    mpsc::Sender<Control>,
    mpsc::UnboundedReceiver<ClientEvent>,
    JoinHandle<ClientExit>,
);

/// Starts a client driver for peer `name` of the cluster on the current
/// host, its secret derived from the name, its machine seeded with `seed`.
fn spawn_client(
    name: &str,
    seed: u64,
    #[cfg(feature = "planted-bugs")] bugs: peerlink_core::bugs::Bugs,
) -> Result<ClientHandles, SimError> {
    let routers: Vec<String> = ROUTERS.iter().map(|r| format!("{r}:{ROUTER_PORT}")).collect();
    #[allow(unused_mut)]
    let mut client_config = ClientConfig::new(
        PeerId::new(name)?,
        Secret::new(format!("{name}-secret"))?,
        routers,
    );
    #[cfg(feature = "planted-bugs")]
    {
        client_config.bugs = bugs;
    }
    Ok(run_client_driver(client_config, seed, Duration::from_secs(1), 16))
}

/// Runs a client with `config` and `seed` under the production driver on
/// the current host, with `connect_timeout`, taking at most `queued`
/// commands ahead.
pub(crate) fn run_client_driver(
    config: ClientConfig,
    seed: u64,
    connect_timeout: Duration,
    queued: usize,
) -> ClientHandles {
    let outbox_limit = config.outbox_limit;
    let client = Client::new(config, seed, peerlink_runtime::now());
    let driver_config = ClientDriverConfig {
        connect_timeout,
        max_frame_len: DEFAULT_MAX_FRAME_LEN,
    };
    let (controls, controls_rx) = mpsc::channel(queued);
    let (events_tx, events) = mpsc::unbounded_channel();
    let driver = tokio::task::spawn_local(run_client(
        TurmoilNetwork,
        client,
        driver_config,
        controls_rx,
        events_tx,
        outbox_limit,
    ));
    (controls, events, driver)
}

/// The peer of a presence run that comes and goes: it registers, stays
/// online for a while, stops its client (going offline), waits, and starts
/// a new one, until the end of the workload; it ends online or offline,
/// whichever it was then.
struct Roamer {
    #[cfg(feature = "planted-bugs")]
    bugs: peerlink_core::bugs::Bugs,
    seed: u64,
    work_end: Duration,
    finish_at: Duration,
    recorder: Recorder,
}

impl Roamer {
    async fn run(self) -> turmoil::Result {
        let peer = PeerId::new(ROAMER)?;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x726f_616d_6572);
        let elapsed = || turmoil::sim_elapsed().unwrap_or_default();
        loop {
            let (controls, mut events, driver) = spawn_client(
                ROAMER,
                rng.random(),
                #[cfg(feature = "planted-bugs")]
                self.bugs,
            )?;
            self.recorder.record(&peer, What::Issued(Command::Register));
            controls.send(Control::Command(Command::Register)).await?;
            let stay = Duration::from_millis(rng.random_range(300..3_000));
            let last_stay = elapsed() + stay >= self.work_end;
            let until = if last_stay {
                self.finish_at
            } else {
                elapsed() + stay
            };
            loop {
                let left = until.saturating_sub(elapsed());
                if left.is_zero() {
                    break;
                }
                tokio::select! {
                    biased;
                    Some(event) = events.recv() => self.recorder.record(&peer, What::Observed(event)),
                    () = tokio::time::sleep(left) => {}
                }
            }
            if last_stay {
                controls
                    .send(Control::Finish {
                        within: Duration::from_secs(30),
                    })
                    .await?;
                while let Some(event) = events.recv().await {
                    self.recorder.record(&peer, What::Observed(event));
                }
                driver.await?;
                return Ok(());
            }
            // Offline: the client and its connection are gone at once.
            driver.abort();
            self.recorder.record(&peer, What::Offline);
            let away = Duration::from_millis(rng.random_range(300..3_000));
            tokio::time::sleep(away).await;
            if elapsed() >= self.work_end {
                return Ok(());
            }
        }
    }
}

/// One client's scripted behaviour: register, then issue random sends and
/// group changes until the end of the workload, then listen until the end
/// of the drain, then finish. In a presence run it also watches the other
/// clients and the [`ROAMER`], and marks the history `Quiet` a second
/// before it finishes.
struct Workload {
    presence: bool,
    #[cfg(feature = "planted-bugs")]
    bugs: peerlink_core::bugs::Bugs,
    index: usize,
    seed: u64,
    churn: u32,
    work_end: Duration,
    finish_at: Duration,
    recorder: Recorder,
    /// Watches refused, to issue again.
    refused_watches: RefCell<BTreeSet<PeerId>>,
}

impl Workload {
    async fn run(self) -> turmoil::Result {
        let name = CLIENTS[self.index];
        let peer = PeerId::new(name)?;
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(self.index as u64 + 1)),
        );
        let (controls, mut events, driver) = spawn_client(
            name,
            rng.random(),
            #[cfg(feature = "planted-bugs")]
            self.bugs,
        )?;
        let mut to_watch: BTreeSet<PeerId> = BTreeSet::new();
        if self.presence {
            for other in CLIENTS.iter().copied().filter(|c| *c != name).chain([ROAMER]) {
                to_watch.insert(PeerId::new(other)?);
            }
        }
        let member = Rc::new(RefCell::new(BTreeSet::<GroupName>::new()));
        let group = GroupName::new(GROUP)?;
        let issue = |command: Command| {
            self.recorder.record(&peer, What::Issued(command.clone()));
            Control::Command(command)
        };

        controls.send(issue(Command::Register)).await?;
        if self.index == 0 {
            controls
                .send(issue(Command::Group(GroupOp::Create, group.clone())))
                .await?;
        }
        let mut sent = 0u64;
        let elapsed = || turmoil::sim_elapsed().unwrap_or_default();
        loop {
            let pause = Duration::from_millis(rng.random_range(20..150));
            tokio::select! {
                biased;
                Some(event) = events.recv() => self.observe(&peer, &member, event),
                () = tokio::time::sleep(pause) => {
                    let now = elapsed();
                    if now >= self.work_end {
                        break;
                    }
                    // Others join only once the group surely exists, and
                    // watch once every peer surely is registered.
                    if now < Duration::from_secs(2) {
                        continue;
                    }
                    self.take_refused_watches(&mut to_watch);
                    if let Some(watched) = to_watch.pop_first() {
                        controls.send(issue(Command::Query(Query::Watch(watched)))).await?;
                        continue;
                    }
                    let roll = rng.random_range(0..100);
                    let command = if roll < self.churn {
                        let op = if member.borrow().contains(&group) { GroupOp::Leave } else { GroupOp::Join };
                        Command::Group(op, group.clone())
                    } else {
                        sent += 1;
                        let to = if rng.random_range(0..10) < 3 && member.borrow().contains(&group) {
                            Target::from(group.clone())
                        } else {
                            let others: Vec<&str> = CLIENTS.iter().copied().filter(|c| *c != name).collect();
                            Target::new(others[rng.random_range(0..others.len())])?
                        };
                        Command::Send { to, body: format!("{name}-{sent}") }
                    };
                    controls.send(issue(command)).await?;
                }
            }
        }
        // Listen until everything has had time to arrive, then finish.
        let quiet_at = self.finish_at.saturating_sub(Duration::from_secs(1));
        let mut quiet = !self.presence;
        loop {
            self.take_refused_watches(&mut to_watch);
            if let Some(watched) = to_watch.pop_first() {
                controls
                    .send(issue(Command::Query(Query::Watch(watched))))
                    .await?;
            }
            if !quiet && elapsed() >= quiet_at {
                quiet = true;
                self.recorder.record(&peer, What::Quiet);
            }
            let until = if quiet { self.finish_at } else { quiet_at };
            let left = until.saturating_sub(elapsed());
            if left.is_zero() {
                if quiet {
                    break;
                }
                continue;
            }
            tokio::select! {
                biased;
                Some(event) = events.recv() => self.observe(&peer, &member, event),
                () = tokio::time::sleep(left) => {}
            }
        }
        controls
            .send(Control::Finish {
                within: Duration::from_secs(30),
            })
            .await?;
        while let Some(event) = events.recv().await {
            self.observe(&peer, &member, event);
        }
        driver.await?;
        Ok(())
    }

    /// Moves the watches the router refused (the peer was not registered
    /// yet, say) back to those still to issue.
    fn take_refused_watches(&self, to_watch: &mut BTreeSet<PeerId>) {
        to_watch.append(&mut self.refused_watches.borrow_mut());
    }

    fn observe(&self, peer: &PeerId, member: &RefCell<BTreeSet<GroupName>>, event: ClientEvent) {
        if let ClientEvent::QueryFailed {
            query: Query::Watch(watched),
            ..
        } = &event
        {
            self.refused_watches.borrow_mut().insert(watched.clone());
        }
        if let ClientEvent::GroupDone { op, group } = &event {
            match op {
                GroupOp::Create | GroupOp::Join => member.borrow_mut().insert(group.clone()),
                GroupOp::Leave => member.borrow_mut().remove(group),
            };
        }
        self.recorder.record(peer, What::Observed(event));
    }
}
