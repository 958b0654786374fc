//! One simulated peer: a real [`Client`] behind the production driver, on
//! its own connection, with its events handed to the bench.

use std::time::Duration;

use anyhow::{bail, Context};
use peerlink_core::client::{Client, ClientConfig, ClientEvent, Command};
use peerlink_core::ids::{PeerId, Secret};
use peerlink_core::wire::DEFAULT_MAX_FRAME_LEN;
use peerlink_runtime::client_driver::{run_client, ClientDriverConfig, Control};
use peerlink_runtime::tls::ProdNetwork;
use tokio::sync::mpsc;

/// How long registration may take.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected, registered peer.
pub(super) struct Peer {
    /// Its ID.
    pub(super) id: PeerId,
    /// The router it last connected to.
    pub(super) router: String,
    controls: mpsc::Sender<Control>,
    events: mpsc::UnboundedReceiver<ClientEvent>,
}

impl Peer {
    /// Starts a client for `id` on `routers`, over `net`, that takes up to
    /// `window` commands ahead of their answers, and registers it.
    pub(super) async fn register(
        net: &ProdNetwork,
        id: PeerId,
        secret: &Secret,
        routers: &[String],
        window: usize,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let mut config = ClientConfig::new(id.clone(), secret.clone(), routers.to_vec());
        config.outbox_limit = config.outbox_limit.max(window + 1);
        let outbox_limit = config.outbox_limit;
        let client = Client::new(config, seed, peerlink_runtime::now());
        let driver_config = ClientDriverConfig {
            connect_timeout: Duration::from_secs(5),
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
        };
        let (controls, controls_rx) = mpsc::channel(outbox_limit);
        let (events_tx, events) = mpsc::unbounded_channel();
        tokio::task::spawn_local(run_client(
            net.clone(),
            client,
            driver_config,
            controls_rx,
            events_tx,
            outbox_limit,
        ));
        let mut peer = Self {
            id,
            router: String::new(),
            controls,
            events,
        };
        peer.command(Command::Register).await?;
        let registered = tokio::time::timeout(REGISTER_TIMEOUT, async {
            loop {
                match peer.next_event().await {
                    Some(ClientEvent::Registered { .. }) => return Ok(()),
                    Some(ClientEvent::RegisterFailed { message, .. }) => bail!(message),
                    Some(_) => {}
                    None => bail!("the client stopped"),
                }
            }
        })
        .await;
        match registered {
            Ok(result) => result.with_context(|| format!("{} could not register", peer.id))?,
            Err(_) => bail!(
                "{} could not register within {} s",
                peer.id,
                REGISTER_TIMEOUT.as_secs()
            ),
        }
        Ok(peer)
    }

    /// Hands the client a command.
    pub(super) async fn command(&self, command: Command) -> anyhow::Result<()> {
        self.controls
            .send(Control::Command(command))
            .await
            .context("the client stopped")
    }

    /// The client's next event; `None` once it has stopped.
    pub(super) async fn next_event(&mut self) -> Option<ClientEvent> {
        let event = self.events.recv().await;
        if let Some(ClientEvent::Connected { router }) = &event {
            self.router.clone_from(router);
        }
        event
    }

    /// Disconnects: the client stops and its connection closes.
    pub(super) fn disconnect(self) {
        drop(self);
    }
}
