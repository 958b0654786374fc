//! Named simulation scenarios. Each builds a turmoil simulation from a seed,
//! runs the real router and client drivers in it, and returns the [`Trace`].

use std::future::Future;
use std::time::{Duration, UNIX_EPOCH};

use peerlink_core::client::{Client, ClientConfig, ClientEvent, Command, GroupOp};
use peerlink_core::ids::{GroupName, PeerId, Secret, Target};
use peerlink_core::router::{Router, RouterConfig};
use peerlink_core::testing::What;
use peerlink_core::wire::DEFAULT_MAX_FRAME_LEN;
use peerlink_runtime::client_driver::{run_client, ClientDriverConfig, ClientExit, Control};
use peerlink_runtime::net::Network;
use peerlink_runtime::router_driver::{run_router, RouterLimits};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::net::TurmoilNetwork;
use crate::trace::{LogCapture, Recorder};
use crate::Trace;

/// The port routers listen on inside the simulation.
const ROUTER_PORT: u16 = 8008;

/// An error that ended a simulation run.
pub type SimError = Box<dyn std::error::Error>;

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

/// A host function running a standalone router on `ROUTER_PORT`.
fn router_host(seed: u64) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = turmoil::Result>>> {
    move || {
        Box::pin(async move {
            let listener = TurmoilNetwork.bind(&format!("0.0.0.0:{ROUTER_PORT}")).await?;
            let router = Router::new(RouterConfig::default(), seed, peerlink_runtime::now());
            let limits = RouterLimits {
                max_frame_len: DEFAULT_MAX_FRAME_LEN,
                max_connections: 1_000,
                connect_timeout: Duration::from_secs(2),
            };
            run_router(TurmoilNetwork, router, listener, limits, std::future::pending()).await;
            Ok(())
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
        let outbox_limit = config.outbox_limit;
        let client = Client::new(config, seed, peerlink_runtime::now());
        let driver_config = ClientDriverConfig {
            connect_timeout: Duration::from_secs(2),
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
        };
        let (controls, controls_rx) = mpsc::channel(64);
        let (events_tx, events) = mpsc::unbounded_channel();
        let driver = tokio::task::spawn_local(run_client(
            TurmoilNetwork,
            client,
            driver_config,
            controls_rx,
            events_tx,
            outbox_limit,
        ));
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
