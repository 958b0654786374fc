//! The peer's side: a [`Client`] keeps one connection to a router, registers,
//! numbers and sends messages, and turns the router's frames into
//! [`ClientEvent`]s for the application.
//!
//! Guarantees, across reconnects:
//! - every message and group request stays queued, in the order issued,
//!   until the router answers it; after a reconnect the queue is sent again
//!   in order, and the router's deduplication by `(sender, seq)` makes the
//!   resend harmless;
//! - a message is numbered only once the first registration tells the client
//!   where its sequence continues, so a restarted client never reuses a
//!   number the router has seen;
//! - [`ClientEvent::Received`] is emitted at most once per message ID, and
//!   only in per-sender order; [`ClientEvent::Sent`] and
//!   [`ClientEvent::Delivered`] at most once per message (and recipient), and
//!   Sent always before Delivered.
//!
//! The client reconnects by itself, trying its routers in turn with seeded,
//! jittered exponential backoff, and treats a connection that has been
//! silent for [`ClientConfig::dead_after`] as dead (it pings every
//! [`ClientConfig::ping_interval`] so a healthy one never is). While a
//! request waits for its answer it checks much sooner: it pings every
//! [`ClientConfig::busy_ping_interval`] (routers answer pings at once, even
//! while answers wait for a commit) and gives up on a connection silent for
//! [`ClientConfig::busy_dead_after`] — a paused or cut-off router costs its
//! clients about a second, not the whole request timeout.

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::ids::{DeliveryId, GroupName, MsgId, NamePrefix, PeerId, ReqId, Secret, Seq, Target};
use crate::machine::Machine;
use crate::wire::directory::{Entry, GroupEntry, PeerEntry};
use crate::wire::{ClientFrame, ErrorCode, FrameError, ServerFrame, MAX_IN_FLIGHT};

/// Tunables of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The peer ID to register as.
    pub peer: PeerId,
    /// The peer's secret.
    pub secret: Secret,
    /// Router addresses, tried in turn. Must not be empty.
    pub routers: Vec<String>,
    /// How often an idle connection is pinged. Default 10 s.
    pub ping_interval: Duration,
    /// A connection on which nothing arrives for this long is dropped and
    /// replaced. Default 30 s.
    pub dead_after: Duration,
    /// While a request is unanswered, how often the connection is pinged.
    /// Default 250 ms.
    pub busy_ping_interval: Duration,
    /// While a request is unanswered, a connection on which nothing arrives
    /// for this long (counted from the request at the earliest) is dropped
    /// and replaced. Default 1 s.
    pub busy_dead_after: Duration,
    /// A connection on which a request stays unanswered for this long is
    /// dropped and replaced, so a client stuck on a router that can no
    /// longer commit (a deposed primary) moves on. Default 5 s.
    pub request_timeout: Duration,
    /// The first reconnect delay, doubled after each failure. Default 50 ms.
    pub reconnect_min: Duration,
    /// The longest reconnect delay. Default 250 ms, so a client finds a new
    /// primary soon after a failover.
    pub reconnect_max: Duration,
    /// The most messages waiting for their Sent. Further sends are refused
    /// with `outbox_full`. At most [`MAX_IN_FLIGHT`], the default.
    pub outbox_limit: usize,
    /// Deliberate bugs (tests only).
    #[cfg(feature = "planted-bugs")]
    pub bugs: crate::bugs::Bugs,
}

impl ClientConfig {
    /// The documented defaults for `peer`, `secret` and `routers`.
    pub fn new(peer: PeerId, secret: Secret, routers: Vec<String>) -> Self {
        Self {
            peer,
            secret,
            routers,
            ping_interval: Duration::from_secs(10),
            dead_after: Duration::from_secs(30),
            busy_ping_interval: Duration::from_millis(250),
            busy_dead_after: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_millis(250),
            outbox_limit: MAX_IN_FLIGHT as usize,
            #[cfg(feature = "planted-bugs")]
            bugs: crate::bugs::Bugs::default(),
        }
    }
}

/// A group request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupOp {
    /// Create the group, with this peer as its first member.
    Create,
    /// Join the group.
    Join,
    /// Leave the group.
    Leave,
}

/// A question about peers and groups, or a change of what this peer
/// watches. Queries are queued and resent after a reconnect like every
/// request; they change no replicated state, so a resend is harmless.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// Look a name up: [`ClientEvent::Found`].
    Who(Target),
    /// A page of the peer directory: [`ClientEvent::PeerPage`].
    Peers {
        /// Only IDs starting with it.
        prefix: Option<NamePrefix>,
        /// Only IDs after it (the previous page's `next`).
        after: Option<PeerId>,
        /// The most entries wanted; the router bounds it.
        limit: Option<u32>,
    },
    /// A page of the group listing: [`ClientEvent::GroupPage`].
    Groups {
        /// Only names starting with it.
        prefix: Option<NamePrefix>,
        /// Only names after it (the previous page's `next`).
        after: Option<GroupName>,
        /// The most entries wanted; the router bounds it.
        limit: Option<u32>,
    },
    /// A page of a group's members: [`ClientEvent::MemberPage`].
    Members {
        /// The group, which this peer must belong to.
        group: GroupName,
        /// Only IDs after it (the previous page's `next`).
        after: Option<PeerId>,
        /// The most entries wanted; the router bounds it.
        limit: Option<u32>,
    },
    /// Watch a peer's online state, now and after every reconnect:
    /// [`ClientEvent::Presence`] with its state, then at each change.
    Watch(PeerId),
    /// Stop watching a peer: [`ClientEvent::Unwatched`].
    Unwatch(PeerId),
}

/// What the application asks the client to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Register (and keep re-registering after reconnects).
    Register,
    /// Send a message to a peer or group.
    Send {
        /// The addressee.
        to: Target,
        /// The message text.
        body: String,
    },
    /// Create, join or leave a group.
    Group(GroupOp, GroupName),
    /// Ask about peers and groups, or watch a peer.
    Query(Query),
}

/// What a [`Client`] reacts to.
#[derive(Debug, Clone)]
pub enum ClientInput {
    /// A command from the application.
    Command(Command),
    /// Connection attempt `attempt` succeeded.
    Connected {
        /// The attempt, as named by [`ClientOutput::Connect`].
        attempt: u64,
    },
    /// Connection attempt `attempt` failed.
    ConnectFailed {
        /// The attempt, as named by [`ClientOutput::Connect`].
        attempt: u64,
        /// Why, for the application.
        reason: String,
    },
    /// The connection from attempt `attempt` is gone.
    Disconnected {
        /// The attempt, as named by [`ClientOutput::Connect`].
        attempt: u64,
        /// Why, for the application.
        reason: String,
    },
    /// A frame arrived on the current connection.
    Frame(ServerFrame),
    /// A line arrived on the current connection that is not a valid frame.
    Malformed(FrameError),
}

/// What a [`Client`] asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOutput {
    /// Drop any current connection and connect to `router`. Report the
    /// outcome, and later the connection's loss, with the same `attempt`.
    Connect {
        /// Numbers this attempt.
        attempt: u64,
        /// The router's address, one of [`ClientConfig::routers`].
        router: String,
    },
    /// Drop the current connection without reporting it.
    Disconnect,
    /// Write a frame to the current connection.
    Transmit(ClientFrame),
    /// Tell the application something.
    Event(ClientEvent),
}

/// What the application is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Connected to a router.
    Connected {
        /// Its address.
        router: String,
    },
    /// The connection was lost; the client will reconnect by itself.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// No router could be reached: the `attempts`-th connection attempt in
    /// a row failed. Reported after 1, 2, 4, 8, ... failures in a row, so a
    /// long outage is reported ever more rarely. The client keeps trying.
    Unreachable {
        /// The router last tried.
        router: String,
        /// Failed attempts in a row.
        attempts: u32,
        /// Why the last one failed.
        reason: String,
        /// When the next attempt starts.
        retry_in: Duration,
    },
    /// Registered.
    Registered {
        /// This peer.
        peer: PeerId,
        /// One more than the highest sequence number the router had seen
        /// from this peer when it registered.
        next_seq: Seq,
    },
    /// Registration was refused; the client stops trying.
    RegisterFailed {
        /// Why, machine-readable.
        code: ErrorCode,
        /// Why, for a person.
        message: String,
    },
    /// The router accepted the message.
    Sent {
        /// The message.
        id: MsgId,
        /// Its addressee.
        to: Target,
    },
    /// Recipient `by` has the message.
    Delivered {
        /// The message.
        id: MsgId,
        /// Its addressee (`by`, or a group `by` is in).
        to: Target,
        /// The recipient that acknowledged it.
        by: PeerId,
    },
    /// The message was refused and will not be delivered.
    Failed {
        /// The message, if it had been numbered.
        id: Option<MsgId>,
        /// Its addressee.
        to: Target,
        /// Why, machine-readable.
        code: ErrorCode,
        /// Why, for a person.
        message: String,
    },
    /// A message for the application, seen for the first time.
    Received {
        /// The message.
        id: MsgId,
        /// Its addressee: this peer, or a group.
        to: Target,
        /// The text.
        body: String,
    },
    /// A group request succeeded.
    GroupDone {
        /// Which request.
        op: GroupOp,
        /// The group.
        group: GroupName,
    },
    /// A group request was refused.
    GroupFailed {
        /// Which request.
        op: GroupOp,
        /// The group.
        group: GroupName,
        /// Why, machine-readable.
        code: ErrorCode,
        /// Why, for a person.
        message: String,
    },
    /// The answer to [`Query::Who`].
    Found {
        /// The name looked up.
        name: Target,
        /// What it is; `None` when it is neither a peer nor a group.
        entry: Option<Entry>,
    },
    /// The answer to [`Query::Peers`].
    PeerPage {
        /// The peers, sorted by ID.
        peers: Vec<PeerEntry>,
        /// When more follow, the `after` of the next page.
        next: Option<PeerId>,
    },
    /// The answer to [`Query::Groups`].
    GroupPage {
        /// The groups, sorted by name.
        groups: Vec<GroupEntry>,
        /// When more follow, the `after` of the next page.
        next: Option<GroupName>,
    },
    /// The answer to [`Query::Members`].
    MemberPage {
        /// The group.
        group: GroupName,
        /// Its members, sorted by ID.
        members: Vec<PeerEntry>,
        /// When more follow, the `after` of the next page.
        next: Option<PeerId>,
    },
    /// A watched peer's state: the answer to [`Query::Watch`], or a change.
    /// Reported only when it differs from the last one reported for that
    /// peer (a reconnect re-watches, and may find a change missed).
    Presence {
        /// The watched peer.
        peer: PeerId,
        /// Whether it has a session on the primary.
        online: bool,
    },
    /// The answer to [`Query::Unwatch`].
    Unwatched {
        /// The peer no longer watched.
        peer: PeerId,
    },
    /// Another peer joined or left a group this peer is in (told only while
    /// this peer is connected; `Members` lists the group at any time).
    Membership {
        /// The group.
        group: GroupName,
        /// The peer that joined or left.
        peer: PeerId,
        /// True for a join.
        joined: bool,
    },
    /// A query was refused.
    QueryFailed {
        /// The query.
        query: Query,
        /// Why, machine-readable.
        code: ErrorCode,
        /// Why, for a person.
        message: String,
    },
    /// The router reported an error not tied to a request of ours.
    Error {
        /// Why, machine-readable.
        code: ErrorCode,
        /// Why, for a person.
        message: String,
    },
    /// The router ended the session for good (a newer session replaced it).
    /// The client stops.
    Closed {
        /// Why, machine-readable.
        code: ErrorCode,
        /// Why, for a person.
        message: String,
    },
}

/// An operation queued until the router answers it.
#[derive(Debug, Clone)]
enum Op {
    Message {
        /// Assigned at the first registration.
        seq: Option<Seq>,
        to: Target,
        body: String,
    },
    Group(GroupOp, GroupName),
    Query(Query),
}

/// What a request in flight on the current connection was for.
#[derive(Debug, Clone, Copy)]
enum Pending {
    Register,
    Op(u64),
    Ping,
}

#[derive(Debug)]
enum Link {
    /// No connection; the next attempt is due at `retry_at`.
    Idle { retry_at: Instant },
    /// Waiting for the outcome of an attempt.
    Connecting,
    /// Connected.
    Up {
        registered: bool,
        last_rx: Instant,
        /// When an idle connection is pinged next.
        next_ping: Instant,
        /// When the last ping was sent (or the connection came up).
        last_ping: Instant,
    },
    /// Replaced by a newer session: the client does nothing more.
    Stopped,
}

/// The client state machine. See the module docs for its guarantees and
/// [`Machine`] for its calling contract.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    rng: ChaCha8Rng,
    link: Link,
    attempt: u64,
    router_index: usize,
    /// Where a router redirected us; the next attempt goes there.
    redirect: Option<String>,
    /// The address of the current (or last) connection attempt.
    current_router: String,
    failures: u32,
    /// Connection attempts that failed in a row.
    connect_failures: u32,
    wants_register: bool,
    registered_once: bool,
    next_seq: Seq,
    next_req: ReqId,
    /// Operations in the order issued, keyed by a local counter.
    queue: BTreeMap<u64, Op>,
    next_op: u64,
    queued_messages: usize,
    /// Requests in flight on the current connection, with when they were sent.
    pending: BTreeMap<ReqId, (Pending, Instant)>,
    /// The highest sequence number received from each sender.
    received: BTreeMap<PeerId, Seq>,
    /// The highest sequence number each recipient has confirmed.
    delivered: BTreeMap<PeerId, Seq>,
    /// The peers watched, re-watched after every registration.
    watching: BTreeSet<PeerId>,
    /// The last online state reported for each watched peer.
    presence: BTreeMap<PeerId, bool>,
    outputs: VecDeque<ClientOutput>,
}

impl Client {
    /// A client that will connect to its first router at once. `seed`
    /// drives the reconnect jitter.
    ///
    /// # Panics
    /// If `config.routers` is empty or `config.outbox_limit` exceeds
    /// [`MAX_IN_FLIGHT`]: both are programming errors of the caller.
    pub fn new(config: ClientConfig, seed: u64, now: Instant) -> Self {
        assert!(!config.routers.is_empty(), "a client needs at least one router");
        assert!(config.outbox_limit as u64 <= MAX_IN_FLIGHT);
        Self {
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            link: Link::Idle { retry_at: now },
            attempt: 0,
            router_index: 0,
            redirect: None,
            current_router: String::new(),
            failures: 0,
            connect_failures: 0,
            wants_register: false,
            registered_once: false,
            next_seq: Seq(1),
            next_req: ReqId(0),
            queue: BTreeMap::new(),
            next_op: 0,
            queued_messages: 0,
            pending: BTreeMap::new(),
            received: BTreeMap::new(),
            delivered: BTreeMap::new(),
            watching: BTreeSet::new(),
            presence: BTreeMap::new(),
            outputs: VecDeque::new(),
        }
    }

    /// The peer this client registers as.
    pub fn peer(&self) -> &PeerId {
        &self.config.peer
    }

    /// How many messages wait for their Sent (or failure).
    pub fn outbox_len(&self) -> usize {
        self.queued_messages
    }

    /// How many commands the router has not answered yet: queued messages
    /// and group requests, plus a registration in progress.
    pub fn outstanding(&self) -> usize {
        let registering = self.wants_register && !self.is_registered() && !self.is_stopped();
        self.queue.len() + usize::from(registering)
    }

    /// Whether the current connection is registered.
    pub fn is_registered(&self) -> bool {
        matches!(self.link, Link::Up { registered: true, .. })
    }

    /// Whether the router ended this client's session for good.
    pub fn is_stopped(&self) -> bool {
        matches!(self.link, Link::Stopped)
    }

    fn emit(&mut self, event: ClientEvent) {
        self.outputs.push_back(ClientOutput::Event(event));
    }

    fn transmit(&mut self, frame: ClientFrame) {
        self.outputs.push_back(ClientOutput::Transmit(frame));
    }

    /// Acknowledges a mailbox item. Items arrive in delivery order and each
    /// is acknowledged, so when the last frame waiting for the driver is an
    /// acknowledgement (events in between go to the application, not the
    /// router) it is widened to cover this item too: one frame, and one
    /// change on the router, for a run of items.
    fn acknowledge(&mut self, delivery: DeliveryId) {
        #[cfg(feature = "planted-bugs")]
        if self.config.bugs.client_acks_ahead {
            self.transmit(ClientFrame::Ack {
                delivery,
                through: Some(delivery.next()),
            });
            return;
        }
        let last_frame = self
            .outputs
            .iter_mut()
            .rev()
            .find(|output| !matches!(output, ClientOutput::Event(_)));
        if let Some(ClientOutput::Transmit(ClientFrame::Ack {
            delivery: first,
            through,
        })) = last_frame
        {
            if delivery > through.unwrap_or(*first) {
                *through = Some(delivery);
                return;
            }
        }
        self.transmit(ClientFrame::Ack {
            delivery,
            through: None,
        });
    }

    fn request(&mut self, now: Instant, pending: Pending) -> ReqId {
        self.next_req = self.next_req.next();
        self.pending.insert(self.next_req, (pending, now));
        self.next_req
    }

    /// When the oldest unanswered request other than a ping was sent: while
    /// there is one, the connection is watched closely.
    fn oldest_busy(&self) -> Option<Instant> {
        self.pending
            .values()
            .filter(|(p, _)| !matches!(p, Pending::Ping))
            .map(|(_, sent)| *sent)
            .min()
    }

    /// When the next ping is due: on the idle schedule, or sooner while a
    /// request waits.
    fn ping_due(&self, next_ping: Instant, last_ping: Instant) -> Instant {
        match self.oldest_busy() {
            Some(sent) => next_ping.min(last_ping.max(sent) + self.config.busy_ping_interval),
            None => next_ping,
        }
    }

    /// When the current connection counts as dead for silence.
    fn silence_deadline(&self, last_rx: Instant) -> Instant {
        let idle = last_rx + self.config.dead_after;
        match self.oldest_busy() {
            Some(sent) => idle.min(last_rx.max(sent) + self.config.busy_dead_after),
            None => idle,
        }
    }

    /// Takes the request `req` out of the pending set.
    fn answered(&mut self, req: ReqId) -> Option<Pending> {
        self.pending.remove(&req).map(|(p, _)| p)
    }

    /// When the oldest unanswered request was sent.
    fn oldest_request(&self) -> Option<Instant> {
        self.pending.first_key_value().map(|(_, (_, sent))| *sent)
    }

    fn handle_command(&mut self, now: Instant, command: Command) {
        match command {
            Command::Register => {
                if let (true, true) = (self.wants_register, self.is_registered()) {
                    // Registered already: say so rather than nothing.
                    let peer = self.config.peer.clone();
                    let next_seq = self.next_seq;
                    self.emit(ClientEvent::Registered { peer, next_seq });
                    return;
                }
                self.wants_register = true;
                let waiting = self.pending.values().any(|(p, _)| matches!(p, Pending::Register));
                if matches!(
                    self.link,
                    Link::Up {
                        registered: false,
                        ..
                    }
                ) && !waiting
                {
                    self.send_register(now);
                }
            }
            Command::Send { to, body } => {
                if !self.wants_register {
                    let message = "register first (REGISTER)".to_owned();
                    let code = ErrorCode::NotRegistered;
                    self.emit(ClientEvent::Failed {
                        id: None,
                        to,
                        code,
                        message,
                    });
                    return;
                }
                if self.queued_messages >= self.config.outbox_limit {
                    let message = format!("{} messages already wait for Sent", self.queued_messages);
                    let code = ErrorCode::OutboxFull;
                    self.emit(ClientEvent::Failed {
                        id: None,
                        to,
                        code,
                        message,
                    });
                    return;
                }
                let seq = self.registered_once.then(|| self.take_seq());
                self.queued_messages += 1;
                self.enqueue(now, Op::Message { seq, to, body });
            }
            Command::Group(op, group) => {
                if !self.wants_register {
                    let message = "register first (REGISTER)".to_owned();
                    let code = ErrorCode::NotRegistered;
                    self.emit(ClientEvent::GroupFailed {
                        op,
                        group,
                        code,
                        message,
                    });
                    return;
                }
                self.enqueue(now, Op::Group(op, group));
            }
            Command::Query(query) => {
                if !self.wants_register {
                    let message = "register first (REGISTER)".to_owned();
                    let code = ErrorCode::NotRegistered;
                    self.emit(ClientEvent::QueryFailed { query, code, message });
                    return;
                }
                match &query {
                    Query::Watch(peer) => {
                        self.watching.insert(peer.clone());
                        self.presence.remove(peer);
                    }
                    Query::Unwatch(peer) => {
                        self.watching.remove(peer);
                        self.presence.remove(peer);
                    }
                    _ => {}
                }
                self.enqueue(now, Op::Query(query));
            }
        }
    }

    fn take_seq(&mut self) -> Seq {
        let seq = self.next_seq;
        self.next_seq = seq.next();
        seq
    }

    fn enqueue(&mut self, now: Instant, op: Op) {
        let id = self.next_op;
        self.next_op += 1;
        self.queue.insert(id, op);
        if self.is_registered() {
            self.transmit_op(now, id);
        }
    }

    fn transmit_op(&mut self, now: Instant, id: u64) {
        let req = self.request(now, Pending::Op(id));
        let frame = match &self.queue[&id] {
            Op::Message { seq, to, body } => ClientFrame::Send {
                req,
                seq: seq.expect("messages are numbered before they are sent"),
                to: to.clone(),
                body: body.clone(),
            },
            Op::Group(op, group) => {
                let group = group.clone();
                match op {
                    GroupOp::Create => ClientFrame::CreateGroup { req, group },
                    GroupOp::Join => ClientFrame::JoinGroup { req, group },
                    GroupOp::Leave => ClientFrame::LeaveGroup { req, group },
                }
            }
            Op::Query(query) => query_frame(req, query.clone()),
        };
        self.transmit(frame);
    }

    fn send_register(&mut self, now: Instant) {
        let req = self.request(now, Pending::Register);
        self.transmit(ClientFrame::Register {
            req,
            peer: self.config.peer.clone(),
            secret: self.config.secret.clone(),
        });
    }

    fn connect(&mut self) {
        self.attempt += 1;
        self.link = Link::Connecting;
        let router = match self.redirect.take() {
            Some(primary) => primary,
            None => self.config.routers[self.router_index].clone(),
        };
        self.current_router = router.clone();
        self.outputs.push_back(ClientOutput::Connect {
            attempt: self.attempt,
            router,
        });
    }

    /// Leaves the current connection (or attempt) and schedules the next.
    fn lose_link(&mut self, now: Instant, reason: String) {
        if matches!(self.link, Link::Up { .. }) {
            self.emit(ClientEvent::Disconnected { reason });
        }
        self.pending.clear();
        self.failures = self.failures.saturating_add(1);
        // Next, the router after the one just left: after a redirect that
        // one is not where the list index points, and trying it again first
        // would wait out a connect timeout on a dead router.
        let left = self.config.routers.iter().position(|r| *r == self.current_router);
        self.router_index = (left.unwrap_or(self.router_index) + 1) % self.config.routers.len();
        let ceiling = self
            .config
            .reconnect_min
            .saturating_mul(1u32 << self.failures.min(16))
            .min(self.config.reconnect_max);
        let delay = ceiling.mul_f64(self.rng.random_range(0.5..=1.0));
        self.link = Link::Idle {
            retry_at: now + delay,
        };
    }

    fn handle_frame(&mut self, now: Instant, frame: ServerFrame) {
        if let Link::Up { last_rx, .. } = &mut self.link {
            *last_rx = now;
        }
        match frame {
            ServerFrame::Registered { req, peer, next_seq } => self.on_registered(now, req, peer, next_seq),
            ServerFrame::Sent { req, .. } => {
                if let Some(Pending::Op(id)) = self.answered(req) {
                    self.complete_message(id);
                }
            }
            ServerFrame::Ok { req } => match self.answered_op(req) {
                Some(Op::Group(op, group)) => self.emit(ClientEvent::GroupDone { op, group }),
                Some(Op::Query(Query::Unwatch(peer))) => self.emit(ClientEvent::Unwatched { peer }),
                _ => {}
            },
            ServerFrame::WhoIs { req, name, entry } => {
                if self.answered_op(req).is_some() {
                    self.emit(ClientEvent::Found { name, entry });
                }
            }
            ServerFrame::PeerList { req, peers, next } => {
                if self.answered_op(req).is_some() {
                    self.emit(ClientEvent::PeerPage { peers, next });
                }
            }
            ServerFrame::GroupList { req, groups, next } => {
                if self.answered_op(req).is_some() {
                    self.emit(ClientEvent::GroupPage { groups, next });
                }
            }
            ServerFrame::MemberList {
                req,
                group,
                members,
                next,
            } => {
                if self.answered_op(req).is_some() {
                    self.emit(ClientEvent::MemberPage { group, members, next });
                }
            }
            ServerFrame::Presence { req, peer, online } => {
                if let Some(req) = req {
                    self.answered_op(req);
                }
                if self.watching.contains(&peer) && self.presence.insert(peer.clone(), online) != Some(online)
                {
                    self.emit(ClientEvent::Presence { peer, online });
                }
            }
            ServerFrame::Membership { group, peer, joined } => {
                self.emit(ClientEvent::Membership { group, peer, joined });
            }
            ServerFrame::Pong { req } => {
                self.answered(req);
            }
            ServerFrame::Redirect { primary } => {
                self.outputs.push_back(ClientOutput::Disconnect);
                let reason = match &primary {
                    Some(primary) => format!("redirected to the primary at {primary}"),
                    None => "redirected: this router is not the primary".to_owned(),
                };
                let known = primary.is_some();
                self.redirect = primary;
                self.lose_link(now, reason);
                if known {
                    // Being pointed at the primary is progress, not a failure.
                    self.failures = self.failures.saturating_sub(1);
                }
            }
            ServerFrame::Error { req, code, message } => self.on_error(req, code, message),
            ServerFrame::Message {
                delivery,
                from,
                seq,
                to,
                body,
            } => self.on_message(delivery, from, seq, to, body),
            ServerFrame::Delivered {
                delivery,
                seq,
                to,
                by,
            } => self.on_receipt(delivery, seq, to, by),
            ServerFrame::Closing { code, message } => {
                if code == ErrorCode::Replaced {
                    self.pending.clear();
                    self.link = Link::Stopped;
                    self.outputs.push_back(ClientOutput::Disconnect);
                    self.emit(ClientEvent::Closed { code, message });
                } else {
                    self.outputs.push_back(ClientOutput::Disconnect);
                    self.lose_link(now, format!("router closed the connection: {code}: {message}"));
                }
            }
        }
    }

    fn on_registered(&mut self, now: Instant, req: ReqId, peer: PeerId, next_seq: Seq) {
        if !matches!(self.answered(req), Some(Pending::Register)) {
            return;
        }
        let Link::Up { registered, .. } = &mut self.link else {
            return;
        };
        *registered = true;
        self.failures = 0;
        self.next_seq = self.next_seq.max(next_seq);
        if !self.registered_once {
            self.registered_once = true;
            let ids: Vec<u64> = self.queue.keys().copied().collect();
            for id in ids {
                if matches!(self.queue[&id], Op::Message { seq: None, .. }) {
                    let next = self.take_seq();
                    if let Some(Op::Message { seq, .. }) = self.queue.get_mut(&id) {
                        *seq = Some(next);
                    }
                }
            }
        }
        self.emit(ClientEvent::Registered { peer, next_seq });
        let ids: Vec<u64> = self.queue.keys().copied().collect();
        for id in ids {
            self.transmit_op(now, id);
        }
        // Watches live in the router's session: a new session needs them
        // again, and its answers correct whatever changed meanwhile.
        let queued: BTreeSet<PeerId> = self
            .queue
            .values()
            .filter_map(|op| match op {
                Op::Query(Query::Watch(p)) => Some(p.clone()),
                _ => None,
            })
            .collect();
        let rewatch: Vec<PeerId> = self.watching.difference(&queued).cloned().collect();
        for peer in rewatch {
            self.enqueue(now, Op::Query(Query::Watch(peer)));
        }
    }

    /// Takes the operation that request `req` carried out of the pending set
    /// and the queue.
    fn answered_op(&mut self, req: ReqId) -> Option<Op> {
        match self.answered(req) {
            Some(Pending::Op(id)) => self.queue.remove(&id),
            _ => None,
        }
    }

    /// Removes a message from the queue and reports it Sent.
    fn complete_message(&mut self, id: u64) {
        if let Some(Op::Message {
            seq: Some(seq), to, ..
        }) = self.queue.remove(&id)
        {
            self.queued_messages -= 1;
            let id = MsgId {
                from: self.config.peer.clone(),
                seq,
            };
            self.emit(ClientEvent::Sent { id, to });
        }
    }

    fn on_error(&mut self, req: Option<ReqId>, code: ErrorCode, message: String) {
        let pending = req.and_then(|r| self.answered(r));
        match pending {
            Some(Pending::Register) => {
                self.wants_register = false;
                self.emit(ClientEvent::RegisterFailed {
                    code,
                    message: message.clone(),
                });
                if !self.registered_once {
                    let ids: Vec<u64> = self.queue.keys().copied().collect();
                    for id in ids {
                        self.fail_op(id, code, &message);
                    }
                }
            }
            Some(Pending::Op(id)) => self.fail_op(id, code, &message),
            Some(Pending::Ping) | None => self.emit(ClientEvent::Error { code, message }),
        }
    }

    fn fail_op(&mut self, id: u64, code: ErrorCode, message: &str) {
        let message = message.to_owned();
        match self.queue.remove(&id) {
            Some(Op::Message { seq, to, .. }) => {
                self.queued_messages -= 1;
                let id = seq.map(|seq| MsgId {
                    from: self.config.peer.clone(),
                    seq,
                });
                self.emit(ClientEvent::Failed {
                    id,
                    to,
                    code,
                    message,
                });
            }
            Some(Op::Group(op, group)) => {
                self.emit(ClientEvent::GroupFailed {
                    op,
                    group,
                    code,
                    message,
                });
            }
            Some(Op::Query(query)) => {
                if let Query::Watch(peer) = &query {
                    self.watching.remove(peer);
                    self.presence.remove(peer);
                }
                self.emit(ClientEvent::QueryFailed { query, code, message });
            }
            None => {}
        }
    }

    fn on_message(&mut self, delivery: DeliveryId, from: PeerId, seq: Seq, to: Target, body: String) {
        let newest = self.received.get(&from).copied().unwrap_or(Seq(0));
        #[allow(unused_mut)]
        let mut fresh = seq > newest;
        #[cfg(feature = "planted-bugs")]
        if self.config.bugs.recipient_keeps_duplicates {
            fresh = true;
        }
        if fresh {
            self.received.insert(from.clone(), seq);
            let id = MsgId { from, seq };
            self.emit(ClientEvent::Received { id, to, body });
        }
        self.acknowledge(delivery);
    }

    fn on_receipt(&mut self, delivery: DeliveryId, seq: Seq, to: Target, by: PeerId) {
        let newest = self.delivered.get(&by).copied().unwrap_or(Seq(0));
        if seq > newest {
            self.delivered.insert(by.clone(), seq);
            let queued = self
                .queue
                .iter()
                .find(|(_, op)| matches!(op, Op::Message { seq: Some(s), .. } if *s == seq))
                .map(|(id, _)| *id);
            if let Some(id) = queued {
                self.complete_message(id);
            }
            let id = MsgId {
                from: self.config.peer.clone(),
                seq,
            };
            self.emit(ClientEvent::Delivered { id, to, by });
        }
        self.acknowledge(delivery);
    }
}

/// The frame that asks `query` as request `req`.
fn query_frame(req: ReqId, query: Query) -> ClientFrame {
    match query {
        Query::Who(name) => ClientFrame::Who { req, name },
        Query::Peers { prefix, after, limit } => ClientFrame::Peers {
            req,
            prefix,
            after,
            limit,
        },
        Query::Groups { prefix, after, limit } => ClientFrame::Groups {
            req,
            prefix,
            after,
            limit,
        },
        Query::Members { group, after, limit } => ClientFrame::Members {
            req,
            group,
            after,
            limit,
        },
        Query::Watch(peer) => ClientFrame::Watch { req, peer },
        Query::Unwatch(peer) => ClientFrame::Unwatch { req, peer },
    }
}

impl Machine for Client {
    type Input = ClientInput;
    type Output = ClientOutput;

    fn handle(&mut self, now: Instant, input: ClientInput) {
        match input {
            ClientInput::Command(command) => self.handle_command(now, command),
            ClientInput::Connected { attempt } => {
                if attempt != self.attempt || !matches!(self.link, Link::Connecting) {
                    return;
                }
                self.connect_failures = 0;
                self.link = Link::Up {
                    registered: false,
                    last_rx: now,
                    next_ping: now + self.config.ping_interval,
                    last_ping: now,
                };
                let router = self.current_router.clone();
                self.emit(ClientEvent::Connected { router });
                if self.wants_register {
                    self.send_register(now);
                }
            }
            ClientInput::ConnectFailed { attempt, reason } => {
                if attempt == self.attempt && matches!(self.link, Link::Connecting) {
                    self.connect_failures = self.connect_failures.saturating_add(1);
                    let router = self.current_router.clone();
                    self.lose_link(now, reason.clone());
                    let attempts = self.connect_failures;
                    if let (true, Link::Idle { retry_at }) = (attempts.is_power_of_two(), &self.link) {
                        let retry_in = retry_at.saturating_duration_since(now);
                        self.emit(ClientEvent::Unreachable {
                            router,
                            attempts,
                            reason,
                            retry_in,
                        });
                    }
                }
            }
            ClientInput::Disconnected { attempt, reason } => {
                if attempt == self.attempt && matches!(self.link, Link::Connecting | Link::Up { .. }) {
                    self.lose_link(now, reason);
                }
            }
            ClientInput::Frame(frame) => {
                if matches!(self.link, Link::Up { .. }) {
                    self.handle_frame(now, frame);
                }
            }
            ClientInput::Malformed(error) => self.emit(ClientEvent::Error {
                code: error.code,
                message: error.message,
            }),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        let stuck = self
            .oldest_request()
            .is_some_and(|t| t + self.config.request_timeout <= now);
        let silent_since = match self.link {
            Link::Up { last_rx, .. } if self.silence_deadline(last_rx) <= now => Some(last_rx),
            _ => None,
        };
        let ping_due = match self.link {
            Link::Up {
                next_ping, last_ping, ..
            } => self.ping_due(next_ping, last_ping) <= now,
            _ => false,
        };
        match &mut self.link {
            Link::Idle { retry_at } if *retry_at <= now => self.connect(),
            Link::Up { .. } if silent_since.is_some() => {
                let silence = now.saturating_duration_since(silent_since.unwrap_or(now));
                self.outputs.push_back(ClientOutput::Disconnect);
                let silence = silence.as_secs_f64();
                self.lose_link(now, format!("no answer from the router for {silence:.1} s"));
            }
            Link::Up { .. } if stuck => {
                let waited = self.config.request_timeout.as_secs_f64();
                self.outputs.push_back(ClientOutput::Disconnect);
                self.lose_link(now, format!("a request went unanswered for {waited} s"));
            }
            Link::Up {
                next_ping, last_ping, ..
            } if ping_due => {
                *last_ping = now;
                *next_ping = (*next_ping).max(now + self.config.ping_interval);
                let req = self.request(now, Pending::Ping);
                self.transmit(ClientFrame::Ping { req });
            }
            _ => {}
        }
    }

    fn poll_output(&mut self) -> Option<ClientOutput> {
        self.outputs.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match &self.link {
            Link::Idle { retry_at } => Some(*retry_at),
            Link::Up {
                last_rx,
                next_ping,
                last_ping,
                ..
            } => {
                let silence = self.silence_deadline(*last_rx);
                let stuck = self.oldest_request().map(|t| t + self.config.request_timeout);
                let ping = self.ping_due(*next_ping, *last_ping);
                Some(silence.min(ping).min(stuck.unwrap_or(silence)))
            }
            Link::Connecting | Link::Stopped => None,
        }
    }
}
