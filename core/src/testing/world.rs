//! An in-memory world: one router, several clients, and links between them
//! whose in-flight frames a test delivers, drops or delays at will.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::client::{Client, ClientConfig, ClientEvent, ClientInput, ClientOutput, Command};
use crate::ids::{ConnId, PeerId, Secret};
use crate::machine::Machine;
use crate::router::secrets::KdfParams;
use crate::router::{Router, RouterConfig, RouterInput, RouterOutput};
use crate::wire::{ClientFrame, ServerFrame};

/// One thing that happened at one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// The application issued a command.
    Issued(Command),
    /// The client reported an event.
    Observed(ClientEvent),
    /// The application stopped its client: the peer is offline on purpose
    /// until it issues `Register` again (with a new client).
    Offline,
    /// The world has been healed and quiet for a while: what this peer has
    /// observed so far should agree with the truth (presence, for one).
    Quiet,
}

/// One entry of a [`History`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The peer it happened at.
    pub peer: PeerId,
    /// What happened.
    pub what: What,
}

/// Everything every client was asked and observed, in the one order the
/// world saw it.
pub type History = Vec<Record>;

#[derive(Debug)]
struct Slot {
    client: Client,
    reachable: bool,
    /// The current connection: the client's attempt number and the router's ID.
    link: Option<(u64, ConnId)>,
    /// Frames in flight from the client to the router.
    up: VecDeque<ClientFrame>,
    /// Frames in flight from the router to the client.
    down: VecDeque<ServerFrame>,
}

/// A router and clients joined by lossy in-memory links.
///
/// Frames stay in flight until [`deliver_up`](World::deliver_up),
/// [`deliver_down`](World::deliver_down) or [`settle`](World::settle) moves
/// them; [`cut`](World::cut) loses them, as a broken TCP connection would.
#[derive(Debug)]
pub struct World {
    now: Instant,
    router: Router,
    slots: BTreeMap<PeerId, Slot>,
    owners: BTreeMap<ConnId, PeerId>,
    next_conn: u64,
    history: History,
}

impl World {
    /// A world with one router and a client per name, all reachable. Every
    /// machine is seeded from `seed`. The router stretches secrets with
    /// [`KdfParams::CHEAPEST`], whatever `router` says, and gets each hash
    /// as soon as it asks.
    pub fn new(seed: u64, names: &[&str], router: RouterConfig, start: Instant) -> Self {
        let slots = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let peer = PeerId::new(*name).expect("test peer names are valid");
                let secret = Secret::new(format!("{name}-secret")).expect("valid secret");
                let config = ClientConfig::new(peer.clone(), secret, vec!["router".into()]);
                let slot = Slot {
                    client: Client::new(config, seed.wrapping_add(i as u64 + 1), start),
                    reachable: true,
                    link: None,
                    up: VecDeque::new(),
                    down: VecDeque::new(),
                };
                (peer, slot)
            })
            .collect();
        let mut world = Self {
            now: start,
            // Secrets are stretched with the cheapest argon2 setting: the
            // world registers peers thousands of times.
            router: Router::new(
                RouterConfig {
                    kdf: KdfParams::CHEAPEST,
                    ..router
                },
                seed,
                start,
            ),
            slots,
            owners: BTreeMap::new(),
            next_conn: 0,
            history: History::new(),
        };
        world.advance(Duration::ZERO);
        world
    }

    /// What every client was asked and observed so far.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The router, for inspection.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The peers, in name order.
    pub fn peers(&self) -> Vec<PeerId> {
        self.slots.keys().cloned().collect()
    }

    /// Issues a command at `peer`'s client.
    pub fn command(&mut self, peer: &PeerId, command: Command) {
        self.history.push(Record {
            peer: peer.clone(),
            what: What::Issued(command.clone()),
        });
        self.client_input(peer, ClientInput::Command(command));
    }

    /// Breaks `peer`'s connection, losing every frame in flight on it.
    pub fn cut(&mut self, peer: &PeerId) {
        let slot = self.slots.get_mut(peer).expect("known peer");
        let Some((attempt, conn)) = slot.link.take() else {
            return;
        };
        slot.up.clear();
        slot.down.clear();
        self.owners.remove(&conn);
        self.router.handle(self.now, RouterInput::Disconnected(conn));
        self.client_input(
            peer,
            ClientInput::Disconnected {
                attempt,
                reason: "cut".into(),
            },
        );
    }

    /// Makes `peer` unable (or able again) to connect. Going unreachable
    /// also cuts its connection.
    pub fn set_reachable(&mut self, peer: &PeerId, reachable: bool) {
        self.slots.get_mut(peer).expect("known peer").reachable = reachable;
        if !reachable {
            self.cut(peer);
        }
    }

    /// Delivers up to `n` frames from `peer` to the router. Returns how many.
    pub fn deliver_up(&mut self, peer: &PeerId, n: usize) -> usize {
        for delivered in 0..n {
            let slot = self.slots.get_mut(peer).expect("known peer");
            let (Some((_, conn)), Some(frame)) = (slot.link, slot.up.pop_front()) else {
                return delivered;
            };
            self.router.handle(self.now, RouterInput::Frame(conn, frame));
            self.pump_router();
        }
        n
    }

    /// Delivers up to `n` frames from the router to `peer`. Returns how many.
    pub fn deliver_down(&mut self, peer: &PeerId, n: usize) -> usize {
        for delivered in 0..n {
            let slot = self.slots.get_mut(peer).expect("known peer");
            let Some(frame) = slot.down.pop_front() else {
                return delivered;
            };
            self.client_input(peer, ClientInput::Frame(frame));
        }
        n
    }

    /// Delivers every frame in flight, in both directions, until none is left.
    pub fn settle(&mut self) {
        loop {
            let mut moved = 0;
            for peer in self.peers() {
                moved += self.deliver_up(&peer, usize::MAX);
                moved += self.deliver_down(&peer, usize::MAX);
            }
            if moved == 0 {
                return;
            }
        }
    }

    /// Moves time forward by `by`, firing every timer that falls due.
    pub fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        loop {
            let next = self
                .slots
                .values()
                .filter_map(|s| s.client.poll_timeout())
                .chain(self.router.poll_timeout())
                .filter(|t| *t <= until)
                .min();
            let Some(next) = next else {
                break;
            };
            self.now = self.now.max(next);
            self.router.handle_timeout(self.now);
            self.pump_router();
            for peer in self.peers() {
                let due = self.slots[&peer]
                    .client
                    .poll_timeout()
                    .is_some_and(|t| t <= self.now);
                if due {
                    self.slots
                        .get_mut(&peer)
                        .expect("known peer")
                        .client
                        .handle_timeout(self.now);
                    self.pump_client(&peer);
                }
            }
        }
        self.now = until;
    }

    /// Makes every peer reachable and runs the world until every client that
    /// was asked to register is registered and has no unanswered command,
    /// no frame is in flight, and every mailbox is empty.
    ///
    /// # Panics
    /// If that does not happen within an hour of simulated time.
    pub fn heal_and_drain(&mut self) {
        for slot in self.slots.values_mut() {
            slot.reachable = true;
        }
        for _ in 0..36_000 {
            self.settle();
            if self.is_quiet() {
                return;
            }
            self.advance(Duration::from_millis(100));
        }
        panic!("the world did not drain: {:#?}", self.slots);
    }

    fn is_quiet(&self) -> bool {
        self.slots
            .values()
            .all(|s| s.client.outstanding() == 0 && s.up.is_empty() && s.down.is_empty())
            && self.router.mailboxes_empty()
    }

    fn client_input(&mut self, peer: &PeerId, input: ClientInput) {
        let slot = self.slots.get_mut(peer).expect("known peer");
        slot.client.handle(self.now, input);
        self.pump_client(peer);
    }

    fn pump_client(&mut self, peer: &PeerId) {
        loop {
            let slot = self.slots.get_mut(peer).expect("known peer");
            let Some(output) = slot.client.poll_output() else {
                return;
            };
            match output {
                ClientOutput::Connect { attempt, .. } => {
                    self.drop_link(peer);
                    let slot = self.slots.get_mut(peer).expect("known peer");
                    let input = if slot.reachable {
                        self.next_conn += 1;
                        let conn = ConnId(self.next_conn);
                        slot.link = Some((attempt, conn));
                        self.owners.insert(conn, peer.clone());
                        let source = std::net::IpAddr::from([127, 0, 0, 1]);
                        self.router
                            .handle(self.now, RouterInput::Connected { conn, source });
                        self.pump_router();
                        ClientInput::Connected { attempt }
                    } else {
                        let reason = "unreachable".into();
                        ClientInput::ConnectFailed { attempt, reason }
                    };
                    let slot = self.slots.get_mut(peer).expect("known peer");
                    slot.client.handle(self.now, input);
                }
                ClientOutput::Disconnect => self.drop_link(peer),
                ClientOutput::Transmit(frame) => {
                    if slot.link.is_some() {
                        slot.up.push_back(frame);
                    }
                }
                ClientOutput::Event(event) => self.history.push(Record {
                    peer: peer.clone(),
                    what: What::Observed(event),
                }),
            }
        }
    }

    /// Closes `peer`'s connection from its side: the router sees it go.
    fn drop_link(&mut self, peer: &PeerId) {
        let slot = self.slots.get_mut(peer).expect("known peer");
        if let Some((_, conn)) = slot.link.take() {
            slot.up.clear();
            slot.down.clear();
            self.owners.remove(&conn);
            self.router.handle(self.now, RouterInput::Disconnected(conn));
            self.pump_router();
        }
    }

    fn pump_router(&mut self) {
        while let Some(output) = self.router.poll_output() {
            match output {
                RouterOutput::Send(conn, frame) => {
                    if let Some(peer) = self.owners.get(&conn) {
                        let slot = self.slots.get_mut(peer).expect("known peer");
                        slot.down.push_back(frame);
                    }
                }
                // Hashed at once: the world's router never waits for it.
                RouterOutput::HashSecret(job) => {
                    let hash = job.run();
                    let input = RouterInput::SecretHashed { job: job.job, hash };
                    self.router.handle(self.now, input);
                }
                // Written at once: the world's storage never fails.
                RouterOutput::Persist { ticket, .. } => {
                    self.router.handle(self.now, RouterInput::Persisted { ticket });
                }
                RouterOutput::Replicate(..)
                | RouterOutput::Connect { .. }
                | RouterOutput::DropLink(_)
                | RouterOutput::ToRm(_)
                | RouterOutput::ToPrimary(_)
                | RouterOutput::Committed { .. }
                | RouterOutput::BelowMinBackups { .. }
                | RouterOutput::LeaseLost { .. }
                | RouterOutput::Resigning { .. }
                | RouterOutput::Promoted { .. } => unreachable!("the world runs a standalone router"),
                RouterOutput::Close(conn) => {
                    // The client reads the frames already sent, then sees the close.
                    let Some(peer) = self.owners.remove(&conn) else {
                        continue;
                    };
                    let slot = self.slots.get_mut(&peer).expect("known peer");
                    let Some((attempt, _)) = slot.link.take() else {
                        continue;
                    };
                    slot.up.clear();
                    let frames: Vec<ServerFrame> = slot.down.drain(..).collect();
                    for frame in frames {
                        self.client_input(&peer, ClientInput::Frame(frame));
                    }
                    let reason = "closed by the router".into();
                    self.client_input(&peer, ClientInput::Disconnected { attempt, reason });
                }
            }
        }
    }
}
