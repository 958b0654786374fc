//! The router: registrations, direct and group messages, mailboxes, receipts,
//! and — in a cluster — passive replication to backups.
//!
//! A [`Router`] speaks to clients over connections that its driver numbers
//! with [`ConnId`]s. It validates each request, turns the valid ones into
//! [`Change`]s applied to its durable [`State`], and answers. Mailbox items
//! (messages and receipts) are pushed to a peer's live session at most
//! [`RouterConfig::push_window`] at a time, and forgotten only when the peer
//! acknowledges them, so a peer that is offline, or whose connection drops
//! mid-push, receives them in order when it registers again.
//!
//! Semantics, in brief (docs/protocol.md has the full story):
//! - the first registration of an ID claims it; later ones must present the
//!   same secret; a newer session replaces the older one, which is told why;
//! - a message `(sender, seq)` is accepted at most once; a resend gets the
//!   answer the first attempt got;
//! - a group message goes to the members at the moment it is accepted,
//!   except the sender; only members may send to a group;
//! - a message is refused with `mailbox_full` rather than stored when any
//!   recipient already holds [`RouterConfig::mailbox_limit`] messages.
//!
//! **Commit rule.** Every change gets the next [`Lsn`]. Nothing the router
//! says to a client — a reply, a pushed message, a receipt — leaves it until
//! every change applied before it is *committed*: on stable storage on this
//! router ([`durability`]) and on every backup of the current configuration
//! (see the [`replication`] module). A standalone router commits what its
//! own storage holds. So a client never hears Sent for a message that a
//! failover, or a crash of every router at once, could lose.

pub mod checkpoint;
mod clients;
pub mod directory;
pub mod durability;
mod registration;
pub mod replication;
pub mod secrets;
mod state;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::ids::{ConnId, DeliveryId, Epoch, Lsn, PeerId, ReplicaId};
use crate::machine::Machine;
use crate::wire::cluster::{FollowerFrame, PrimaryFrame, RmReply, RmRequest};
use crate::wire::{ClientFrame, FrameError, ServerFrame, DEFAULT_MAX_FRAME_LEN};
use directory::{Directory, Presence};
use durability::Durability;
pub use durability::{Record, Recovered};
use registration::Registrations;
pub use registration::{MAX_QUEUED_PER_ID, MAX_REGISTRATIONS};
use replication::{Link, Replication, ReplicationConfig};
use secrets::{HashJob, KdfParams, SecretHash};
pub use state::{Change, Inconsistent, State, ITEM_OVERHEAD};

/// Tunables of a [`Router`]. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// A client connection that sends nothing for this long is closed with
    /// `idle_timeout`. Default 60 s; clients ping every 10 s.
    pub idle_timeout: Duration,
    /// The most messages one peer's mailbox holds; a message that would
    /// exceed it is refused with `mailbox_full`. Default 10,000.
    pub mailbox_limit: usize,
    /// The most bytes one peer's mailbox holds, messages and receipts
    /// together, each weighed as its text plus [`ITEM_OVERHEAD`]; a message
    /// that would exceed it is refused with `mailbox_full`. Default 64 MiB.
    pub mailbox_bytes: usize,
    /// The most bytes all mailboxes together hold, weighed the same way; a
    /// message that would exceed it is refused with `storage_full`.
    /// Receipts, which cannot be refused, may pass it by what the messages
    /// already stored would turn into. Default 1 GiB.
    pub storage_bytes: usize,
    /// The most mailbox items pushed to a session and not yet acknowledged.
    /// Default 256.
    pub push_window: usize,
    /// The most groups one peer may create or belong to (a group it created
    /// counts even after it left); more are refused with
    /// `too_many_groups`. Default 1,000.
    pub max_groups_per_peer: usize,
    /// The most members one group may have; a join beyond is refused with
    /// `group_full`. Default 10,000.
    pub max_group_members: usize,
    /// The largest frame, in bytes, newline included. A message whose frame
    /// to a recipient would be larger is refused with `body_too_large`.
    /// Default [`DEFAULT_MAX_FRAME_LEN`].
    pub max_frame_len: usize,
    /// The most source addresses whose wrong secrets are remembered. When
    /// full, those whose wait ended [`MAX_GUESS_DELAY`] ago are forgotten;
    /// a new source that still finds no room is not tracked (the per-ID
    /// limit still holds for it). Default 65,536.
    pub max_tracked_sources: usize,
    /// Whether registered peers may list the peer directory. Default
    /// [`Directory::Private`]. Every router of a cluster should say the
    /// same: the primary's setting decides.
    pub directory: Directory,
    /// The most peers one session may watch; more are refused with
    /// `too_many_watches`. Default 1,000.
    pub max_watches: usize,
    /// How new registrations' secrets are stretched. Default
    /// [`KdfParams::DEFAULT`]; an invalid setting is replaced by it.
    pub kdf: KdfParams,
    /// Replication settings; `None` runs a standalone router.
    pub replication: Option<ReplicationConfig>,
    /// Deliberate bugs (tests only).
    #[cfg(feature = "planted-bugs")]
    pub bugs: crate::bugs::Bugs,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(60),
            mailbox_limit: 10_000,
            mailbox_bytes: 64 * 1024 * 1024,
            storage_bytes: 1024 * 1024 * 1024,
            max_groups_per_peer: 1_000,
            max_group_members: 10_000,
            push_window: 256,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_tracked_sources: 65_536,
            directory: Directory::Private,
            max_watches: 1_000,
            kdf: KdfParams::DEFAULT,
            replication: None,
            #[cfg(feature = "planted-bugs")]
            bugs: crate::bugs::Bugs::default(),
        }
    }
}

/// What a [`Router`] reacts to.
#[derive(Debug, Clone)]
pub enum RouterInput {
    /// A client connection was accepted; its frames will carry `conn`.
    Connected {
        /// The connection.
        conn: ConnId,
        /// The address it comes from, which registration limits count by.
        source: IpAddr,
    },
    /// A connection to the cluster listener passed the membership handshake
    /// ([`cluster_auth`](crate::cluster_auth)) as router `id`, or as an
    /// operator's tool for `None`; its frames will carry `conn`.
    MemberConnected {
        /// The connection.
        conn: ConnId,
        /// The identity it proved.
        id: Option<ReplicaId>,
    },
    /// A client's frame arrived on a client connection.
    Frame(ConnId, ClientFrame),
    /// A follower's frame arrived on a cluster connection.
    Follower(ConnId, FollowerFrame),
    /// A line arrived that is not a valid frame.
    Malformed(ConnId, FrameError),
    /// The accepted connection is gone (closed by the peer, or failed).
    Disconnected(ConnId),
    /// Attempt `attempt` of an outgoing link succeeded.
    LinkUp {
        /// Which link.
        link: Link,
        /// The attempt, as named by [`RouterOutput::Connect`].
        attempt: u64,
    },
    /// Attempt `attempt` of an outgoing link failed, or the link broke.
    LinkDown {
        /// Which link.
        link: Link,
        /// The attempt, as named by [`RouterOutput::Connect`].
        attempt: u64,
    },
    /// The replica manager sent a frame on the RM link.
    FromRm(RmReply),
    /// The primary sent a frame on the primary link.
    FromPrimary(PrimaryFrame),
    /// Every record asked for with [`RouterOutput::Persist`] up to and
    /// including `ticket` is on stable storage.
    Persisted {
        /// The newest ticket covered.
        ticket: u64,
    },
    /// The storage wants a checkpoint, to drop the records before it: the
    /// router answers with a [`RouterOutput::Persist`] of a
    /// [`Record::Checkpoint`] of its state after every record asked for so
    /// far. Costs a copy of the state (message bodies are shared).
    CheckpointWanted,
    /// The hash asked for with [`RouterOutput::HashSecret`] `job`.
    SecretHashed {
        /// The job, as named by the output.
        job: u64,
        /// [`HashJob::run`]'s result.
        hash: SecretHash,
    },
}

/// What a [`Router`] asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouterOutput {
    /// Write a frame to an accepted client connection.
    Send(ConnId, ServerFrame),
    /// Write a replication frame to an accepted follower connection.
    Replicate(ConnId, PrimaryFrame),
    /// Close an accepted connection once the frames queued for it are
    /// written. The router has already forgotten it; a later
    /// `Disconnected` for it is ignored.
    Close(ConnId),
    /// Drop the link's current connection, if any, and connect it to `addr`.
    /// Report the outcome with `LinkUp`/`LinkDown` and the same `attempt`;
    /// bound the attempt with a timeout.
    Connect {
        /// Which link.
        link: Link,
        /// Numbers this attempt.
        attempt: u64,
        /// Where to connect.
        addr: String,
    },
    /// Drop the link's connection without reporting it.
    DropLink(Link),
    /// Write a frame on the RM link.
    ToRm(RmRequest),
    /// Write a frame on the primary link.
    ToPrimary(FollowerFrame),
    /// Write `record` to stable storage after every record asked for
    /// before it, then report [`RouterInput::Persisted`] with `ticket` (or
    /// a later one). Tickets increase by one. Reports may be batched; a
    /// record never reported leaves what depends on it unanswered, so a
    /// driver that cannot write stops the router instead.
    Persist {
        /// Numbers the record.
        ticket: u64,
        /// What to write.
        record: Record,
    },
    /// Run the job (slow: off the event loop) and hand its result back with
    /// [`RouterInput::SecretHashed`]. A job never answered leaves that one
    /// registration, and those of the same ID after it, unanswered.
    HashSecret(HashJob),
    /// Informational: the router starts serving as primary of `epoch`, its
    /// state at `lsn`. Drivers log it; checkers use it to verify that a
    /// deposed primary commits nothing its successor lacks.
    Promoted {
        /// The new epoch.
        epoch: Epoch,
        /// The last change the router had applied.
        lsn: Lsn,
    },
    /// Informational: as primary of `epoch`, the router has `backups`
    /// backups, fewer than the configuration's `min_backups`, so it commits
    /// nothing and holds every answer until a candidate has caught up and
    /// become a backup. Drivers log it as a warning.
    BelowMinBackups {
        /// The router's epoch.
        epoch: Epoch,
        /// The backups it has.
        backups: usize,
        /// The fewest it needs.
        min_backups: usize,
    },
    /// Informational: the primary of `epoch` stopped serving because it
    /// lost its lease (it does not hear the RM, and a backup does). Drivers
    /// log it as a warning.
    LeaseLost {
        /// The router's epoch.
        epoch: Epoch,
    },
    /// Informational: the primary of `epoch` has heard none of its backups
    /// for the ack timeout and asked the RM to hand its role to a backup the
    /// RM still hears. Drivers log it as a warning.
    Resigning {
        /// The router's epoch.
        epoch: Epoch,
    },
    /// Informational: as primary of `epoch`, the router committed every
    /// change up to `lsn`. Drivers log it; checkers use it to verify that
    /// only one router commits in an epoch, and never with fewer copies
    /// than the minimum.
    Committed {
        /// How many backups of the configuration hold `lsn`.
        backups: usize,
        /// How many the configuration requires.
        min_backups: usize,
        /// The router's epoch.
        epoch: Epoch,
        /// The new commit point.
        lsn: Lsn,
    },
}

/// What a router is doing, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouterRole {
    /// No replica manager: it serves on its own.
    Standalone,
    /// The primary of its configuration: it serves.
    Primary,
    /// A backup or candidate, following the primary.
    Follower,
    /// In a cluster, with no role yet (or between roles).
    Waiting,
}

impl RouterRole {
    /// The role's name: `standalone`, `primary`, `follower` or `waiting`.
    pub fn as_str(self) -> &'static str {
        match self {
            RouterRole::Standalone => "standalone",
            RouterRole::Primary => "primary",
            RouterRole::Follower => "follower",
            RouterRole::Waiting => "waiting",
        }
    }
}

/// A snapshot of a router's counts and positions: see [`Router::stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterStats {
    /// What it is doing.
    pub role: RouterRole,
    /// The epoch of the configuration it knows (0 when standalone).
    pub epoch: Epoch,
    /// The last change applied.
    pub applied: Lsn,
    /// The last change committed.
    pub committed: Lsn,
    /// Registered peers.
    pub peers: usize,
    /// Groups.
    pub groups: usize,
    /// Live sessions (on a primary or standalone router).
    pub sessions: usize,
    /// Messages waiting in mailboxes.
    pub mailbox_messages: usize,
    /// The weight of every mailbox item, as counted against the storage
    /// budget.
    pub mailbox_bytes: usize,
    /// On a primary, each follower and how many changes it has yet to
    /// acknowledge.
    pub follower_lag: Vec<(ReplicaId, u64)>,
    /// Watches held by live sessions (one per watcher and watched peer).
    pub watches: usize,
}

#[derive(Debug)]
struct Conn {
    peer: Option<PeerId>,
    /// For a cluster connection, the identity it proved (`Some(None)`: an
    /// operator's tool); `None` for a client connection.
    member: Option<Option<ReplicaId>>,
    /// For a client connection, the address it comes from.
    source: Option<IpAddr>,
    /// When the connection times out for silence; `None` for follower
    /// connections, whose liveness replication itself tracks.
    deadline: Option<Instant>,
}

/// A registered peer's live session.
#[derive(Debug)]
struct Session {
    conn: ConnId,
    /// The first mailbox item not yet pushed on this session.
    next_push: DeliveryId,
    /// Items pushed on this session and not yet acknowledged.
    in_flight: usize,
}

/// Outputs, with those that must wait for a commit held back in order.
#[derive(Debug, Default)]
struct Outbox {
    ready: VecDeque<RouterOutput>,
    /// Outputs waiting until the LSN beside them is committed.
    held: VecDeque<(Lsn, RouterOutput)>,
    /// The last change applied to the state.
    applied: Lsn,
    /// The last change known replicated to every backup.
    committed: Lsn,
}

impl Outbox {
    /// Queues an output that depends on every change applied so far.
    fn emit(&mut self, output: RouterOutput) {
        if self.held.is_empty() && self.committed >= self.applied {
            self.ready.push_back(output);
        } else {
            self.held.push_back((self.applied, output));
        }
    }

    /// Queues an output that depends on no change (replication traffic).
    fn emit_now(&mut self, output: RouterOutput) {
        self.ready.push_back(output);
    }

    /// Records that every change up to `lsn` is committed, releasing what
    /// waited for it.
    fn commit(&mut self, lsn: Lsn) {
        self.committed = self.committed.max(lsn.min(self.applied));
        while self.held.front().is_some_and(|(l, _)| *l <= self.committed) {
            let (_, output) = self.held.pop_front().expect("checked above");
            self.ready.push_back(output);
        }
    }
}

/// The router state machine. See the module docs for its semantics and
/// [`Machine`] for its calling contract.
#[derive(Debug)]
pub struct Router {
    config: RouterConfig,
    rng: ChaCha8Rng,
    state: State,
    conns: BTreeMap<ConnId, Conn>,
    sessions: BTreeMap<PeerId, Session>,
    deadlines: BTreeSet<(Instant, ConnId)>,
    outbox: Outbox,
    replication: Option<Replication>,
    /// Per registered ID: wrong secrets in a row, and when the next attempt
    /// may be judged. Soft state: a failover forgets it.
    guesses: BTreeMap<PeerId, Guesses>,
    /// The same per source address, across IDs, at most
    /// [`RouterConfig::max_tracked_sources`] of them.
    source_guesses: BTreeMap<IpAddr, Guesses>,
    /// Registrations waiting for their secret's hash.
    registrations: Registrations,
    /// Records asked for, and what of the state is durable.
    durability: Durability,
    /// Watches and last-seen times: soft state of the primary.
    presence: Presence,
}

/// Wrong secrets presented for one ID, or from one source.
#[derive(Debug, Clone, Copy)]
struct Guesses {
    failures: u32,
    next_allowed: Instant,
}

impl Guesses {
    /// After `failures` wrong secrets in a row, of which the first `grace`
    /// cost nothing: the next attempt waits [`FIRST_GUESS_DELAY`] after the
    /// first that counts, doubling with each further one, up to
    /// [`MAX_GUESS_DELAY`].
    fn after(now: Instant, failures: u32, grace: u32) -> Self {
        let counted = failures.saturating_sub(grace);
        let delay = if counted == 0 {
            Duration::ZERO
        } else {
            FIRST_GUESS_DELAY
                .saturating_mul(1 << (counted - 1).min(16))
                .min(MAX_GUESS_DELAY)
        };
        Self {
            failures,
            next_allowed: now + delay,
        }
    }
}

/// The wait after the first wrong secret for an ID; each further one in a
/// row doubles it, up to [`MAX_GUESS_DELAY`].
pub const FIRST_GUESS_DELAY: Duration = Duration::from_millis(100);

/// The longest wait between two judged attempts at one ID's secret.
pub const MAX_GUESS_DELAY: Duration = Duration::from_secs(30);

/// Wrong secrets in a row one source address may present, across IDs,
/// before its registrations wait too: after the next, [`FIRST_GUESS_DELAY`],
/// doubling up to [`MAX_GUESS_DELAY`], as for one ID.
pub const SOURCE_GRACE: u32 = 8;

impl Router {
    /// A router with no peers and nothing on its storage. `seed` drives the
    /// salts it draws for secrets. With [`RouterConfig::replication`] set,
    /// it starts outside any configuration and connects to the replica
    /// manager at `now`.
    pub fn new(config: RouterConfig, seed: u64, now: Instant) -> Self {
        Self::recover(config, seed, now, Recovered::default())
    }

    /// A router starting from what its storage recovered: every change up to
    /// `recovered.lsn` is applied and durable. A replicated router takes
    /// no role from it; it reports its position to the replica manager
    /// like any router, and a primary ships it only once the replica
    /// manager names it primary of a new epoch.
    pub fn recover(mut config: RouterConfig, seed: u64, now: Instant, recovered: Recovered) -> Self {
        if !config.kdf.is_valid() {
            config.kdf = KdfParams::DEFAULT;
        }
        let mut replication = config.replication.take().map(|r| Replication::new(r, now));
        if let Some(r) = &mut replication {
            r.resume_stream(recovered.epoch);
        }
        let outbox = Outbox {
            applied: recovered.lsn,
            committed: recovered.lsn,
            ..Outbox::default()
        };
        Self {
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            state: recovered.state,
            conns: BTreeMap::new(),
            sessions: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            outbox,
            replication,
            guesses: BTreeMap::new(),
            source_guesses: BTreeMap::new(),
            registrations: Registrations::default(),
            durability: Durability::recovered(recovered.epoch, recovered.lsn),
            presence: Presence::default(),
        }
    }

    /// How many peers have registered.
    pub fn peer_count(&self) -> usize {
        self.state.peers.len()
    }

    /// How many messages wait in `peer`'s mailbox.
    pub fn queued_messages(&self, peer: &PeerId) -> usize {
        self.state.peers.get(peer).map_or(0, |r| r.queued_messages)
    }

    /// The weight of `peer`'s mailbox, as counted against
    /// [`RouterConfig::mailbox_bytes`].
    pub fn queued_bytes(&self, peer: &PeerId) -> usize {
        self.state.peers.get(peer).map_or(0, |r| r.queued_bytes)
    }

    /// The weight of all mailboxes, as counted against
    /// [`RouterConfig::storage_bytes`].
    pub fn stored_bytes(&self) -> usize {
        self.state.stored_bytes
    }

    /// Whether every mailbox is empty: every message and receipt has been
    /// acknowledged by its owner.
    pub fn mailboxes_empty(&self) -> bool {
        self.state.peers.values().all(|r| r.mailbox.is_empty())
    }

    /// Whether `peer` has a live session.
    pub fn is_online(&self, peer: &PeerId) -> bool {
        self.sessions.contains_key(peer)
    }

    /// The last change applied to the state.
    pub fn applied_lsn(&self) -> Lsn {
        self.outbox.applied
    }

    /// The last change known to be on this router's stable storage.
    pub fn durable_lsn(&self) -> Lsn {
        #[cfg(feature = "planted-bugs")]
        if self.config.bugs.commit_before_durable && self.is_serving() {
            return self.outbox.applied;
        }
        self.durability.durable().min(self.outbox.applied)
    }

    /// The last change known to be on every backup.
    pub fn committed_lsn(&self) -> Lsn {
        self.outbox.committed
    }

    /// This router's name in its cluster, if it is replicated.
    pub fn replica_id(&self) -> Option<&ReplicaId> {
        self.replication.as_ref().map(Replication::id)
    }

    /// Counts and positions for metrics: read-only, and O(peers), so a
    /// driver asks at most about once a second.
    pub fn stats(&self) -> RouterStats {
        let replication = self.replication.as_ref();
        let role = match replication {
            None => RouterRole::Standalone,
            Some(r) if r.is_primary() => RouterRole::Primary,
            Some(r) if r.is_following() => RouterRole::Follower,
            Some(_) => RouterRole::Waiting,
        };
        let applied = self.outbox.applied;
        RouterStats {
            role,
            epoch: replication.map_or(Epoch(0), Replication::known_epoch),
            applied,
            committed: self.outbox.committed,
            peers: self.state.peers.len(),
            groups: self.state.groups.len(),
            sessions: self.sessions.len(),
            mailbox_messages: self.state.peers.values().map(|r| r.queued_messages).sum(),
            mailbox_bytes: self.state.stored_bytes,
            follower_lag: replication
                .filter(|r| r.is_primary())
                .map(|r| {
                    r.follower_acks()
                        .into_iter()
                        .map(|(id, acked)| (id, applied.0.saturating_sub(acked.0)))
                        .collect()
                })
                .unwrap_or_default(),
            watches: self.presence.watch_count(),
        }
    }

    /// The durable state, for comparing replicas in tests.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Whether this router may serve clients now: it is standalone, or the
    /// primary of its configuration.
    pub fn is_serving(&self) -> bool {
        self.replication.as_ref().is_none_or(Replication::is_primary)
    }

    fn emit(&mut self, output: RouterOutput) {
        self.outbox.emit(output);
    }

    /// Applies a validated change: it gets the next LSN, goes to storage,
    /// to the log and to every follower, and commits once durable here and
    /// replicated.
    fn apply(&mut self, change: Change) {
        self.state.apply(&change);
        self.outbox.applied = self.outbox.applied.next();
        let lsn = self.outbox.applied;
        let epoch = self
            .replication
            .as_ref()
            .map_or(Epoch(0), Replication::stream_epoch);
        self.persist_change(epoch, lsn, change.clone());
        if let Some(replication) = &mut self.replication {
            replication.ship(lsn, change, &mut self.outbox);
            #[cfg(feature = "planted-bugs")]
            if self.config.bugs.sent_before_replication {
                return self.commit_to(lsn);
            }
        }
        self.commit_durable();
    }

    /// Asks the driver to make change `lsn` durable.
    fn persist_change(&mut self, epoch: Epoch, lsn: Lsn, change: Change) {
        let ticket = self.durability.change(epoch, lsn);
        let record = Record::Change { epoch, lsn, change };
        self.outbox.emit_now(RouterOutput::Persist { ticket, record });
    }

    /// Asks the driver to write the state as a checkpoint, after every
    /// record asked for before.
    fn persist_checkpoint(&mut self) {
        let (ticket, epoch, lsn) = self.durability.checkpoint();
        debug_assert_eq!(lsn, self.outbox.applied, "every applied change has its record");
        #[cfg_attr(not(feature = "planted-bugs"), allow(unused_mut))]
        let mut state = Box::new(self.state.clone());
        #[cfg(feature = "planted-bugs")]
        if self.config.bugs.checkpoint_forgets_state {
            state = Box::default();
        }
        let record = Record::Checkpoint { epoch, lsn, state };
        self.outbox.emit_now(RouterOutput::Persist { ticket, record });
    }

    /// Commits what the durable state and, in a cluster, the backups allow:
    /// a standalone router everything durable, a primary what
    /// [`Router::commit_up_to`] allows.
    fn commit_durable(&mut self) {
        match &self.replication {
            None => {
                let durable = self.durable_lsn();
                self.outbox.commit(durable);
            }
            Some(_) => self.commit_up_to(),
        }
    }

    /// The driver reports records durable up to `ticket`.
    fn handle_persisted(&mut self, now: Instant, ticket: u64) {
        if !self.durability.persisted(ticket) {
            return;
        }
        match self.replication.as_ref() {
            Some(r) if !r.is_primary() => self.acknowledge_durable(now),
            _ => self.commit_durable(),
        }
    }

    /// Moves a primary's commit point to `lsn` (if that is forward),
    /// releasing held outputs and reporting the commit.
    fn commit_to(&mut self, lsn: Lsn) {
        let before = self.outbox.committed;
        self.outbox.commit(lsn);
        let Some(epoch) = self.replication.as_ref().and_then(Replication::primary_epoch) else {
            return;
        };
        if self.outbox.committed > before {
            let lsn = self.outbox.committed;
            let (backups, min_backups) = self.replication.as_ref().map_or((0, 0), |r| r.copies(lsn));
            self.outbox.emit_now(RouterOutput::Committed {
                backups,
                min_backups,
                epoch,
                lsn,
            });
        }
    }
}

impl Machine for Router {
    type Input = RouterInput;
    type Output = RouterOutput;

    fn handle(&mut self, now: Instant, input: RouterInput) {
        match input {
            RouterInput::Connected { conn, source } => {
                // Drivers never reuse an ID; if one did, the old connection
                // is forgotten rather than left with a second deadline.
                self.forget(conn);
                if let Some(primary) = self.replication.as_ref().and_then(Replication::redirect) {
                    // Not the primary: point the client elsewhere. A follower
                    // reaching us gets the same answer, and ignores it.
                    self.outbox
                        .emit_now(RouterOutput::Send(conn, ServerFrame::Redirect { primary }));
                    self.outbox.emit_now(RouterOutput::Close(conn));
                    return;
                }
                let deadline = now + self.config.idle_timeout;
                self.conns.insert(
                    conn,
                    Conn {
                        peer: None,
                        member: None,
                        source: Some(source),
                        deadline: Some(deadline),
                    },
                );
                self.deadlines.insert((deadline, conn));
            }
            RouterInput::MemberConnected { conn, id } => {
                self.forget(conn);
                let deadline = now + self.config.idle_timeout;
                let member = Some(id);
                let c = Conn {
                    peer: None,
                    member,
                    source: None,
                    deadline: Some(deadline),
                };
                self.conns.insert(conn, c);
                self.deadlines.insert((deadline, conn));
            }
            RouterInput::Frame(conn, frame) => {
                if self.conns.get(&conn).is_none_or(|c| c.member.is_some()) {
                    return;
                }
                self.touch(conn, now);
                self.handle_frame(now, conn, frame);
            }
            RouterInput::Follower(conn, frame) => self.handle_follower(now, conn, frame),
            RouterInput::Malformed(conn, error) => {
                match self.conns.get(&conn) {
                    None => return,
                    // Members speak correctly: this one is broken.
                    Some(c) if c.member.is_some() => return self.refuse_follower(conn),
                    Some(_) => {}
                }
                self.touch(conn, now);
                self.send(conn, error.to_frame());
            }
            RouterInput::Disconnected(conn) => {
                self.forget(conn);
                if let Some(replication) = &mut self.replication {
                    replication.follower_gone(conn);
                }
            }
            RouterInput::LinkUp { link, attempt } => self.handle_link_up(now, link, attempt),
            RouterInput::LinkDown { link, attempt } => self.handle_link_down(now, link, attempt),
            RouterInput::FromRm(reply) => self.handle_rm_reply(now, reply),
            RouterInput::FromPrimary(frame) => self.handle_primary_frame(now, frame),
            RouterInput::SecretHashed { job, hash } => self.handle_secret_hashed(now, job, hash),
            RouterInput::Persisted { ticket } => self.handle_persisted(now, ticket),
            RouterInput::CheckpointWanted => self.persist_checkpoint(),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(deadline, conn)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            // Taken off first, so the sweep always moves on, even past an
            // entry its connection no longer owns.
            self.deadlines.remove(&(deadline, conn));
            if self.conns.get(&conn).and_then(|c| c.deadline) != Some(deadline) {
                continue;
            }
            let message = format!(
                "nothing received for {} s",
                self.config.idle_timeout.as_secs_f64()
            );
            self.close(conn, crate::wire::ErrorCode::IdleTimeout, message);
        }
        self.handle_replication_timeout(now);
    }

    fn poll_output(&mut self) -> Option<RouterOutput> {
        self.outbox.ready.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let idle = self.deadlines.first().map(|(deadline, _)| *deadline);
        let replication = self.replication.as_ref().and_then(Replication::poll_timeout);
        match (idle, replication) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
