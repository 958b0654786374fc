//! Passive replication: a router's role in its cluster, its links to the
//! replica manager and to its primary, log shipping and the commit point.
//!
//! - Every router heartbeats the replica manager (RM) and adopts each newer
//!   [`Configuration`] it hears. Its role follows from it: **primary**
//!   (serves clients, ships its log), **follower** (a backup or candidate:
//!   applies what its primary ships), or **waiting** (outside the
//!   configuration). Non-primaries answer clients with a redirect.
//! - A follower connects to its primary and sends `follow`; the primary
//!   answers with a checkpoint of its whole state — or, if the follower's
//!   state already came from this primary and the log still holds what it
//!   lacks, with those log entries — then ships every new change as it is
//!   applied, pipelined, one frame per change. The follower applies changes
//!   strictly in LSN order and acknowledges what it has applied; a stream
//!   never carries a change before the checkpoint it follows from.
//! - Fencing: a follower refuses checkpoints and entries tagged with an
//!   epoch older than the newest it knows, so a deposed primary cannot get
//!   a change acknowledged — and so cannot commit — once the backups have
//!   heard of the new epoch. A follower that sees a gap resyncs.
//! - The commit point is the lowest LSN acknowledged by every backup of the
//!   configuration (and by candidates the primary has asked to promote),
//!   and does not move at all while the configuration has fewer than
//!   [`Configuration::min_backups`] backups: the primary then holds every
//!   answer until a candidate has caught up and become a backup.
//!   A backup that stays behind for [`ReplicationConfig::ack_timeout`] is
//!   reported to the RM for removal — unless it is the last one, which may
//!   be all that holds the committed state. A candidate that has caught up —
//!   holds every change this primary committed and every change it held
//!   when it was promoted — is proposed as a backup.
//! - A router takes the role of primary only from a configuration that
//!   names it with its own incarnation: a router that restarted never
//!   serves, or ships, its state in a role it held before the restart (it
//!   may have lost changes its backups hold; the RM names it again, if at
//!   all, in a new epoch). A follower refuses a checkpoint behind its own
//!   state from the stream epoch it follows, so no replica's state moves
//!   backwards within an epoch.

mod cluster;
mod follower;
mod log;
mod primary;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use log::Log;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::checkpoint::{StateBuilder, StatePart};
use super::{Change, Outbox, RouterOutput};
use crate::ids::{ConnId, Epoch, Lsn, ReplicaId};
use crate::wire::cluster::{Configuration, Member, PrimaryFrame, RmRequest};

/// How many heartbeat intervals an up link may stay silent before it is
/// presumed dead and reconnected.
const SILENT_BEATS: u32 = 5;

/// An outgoing connection a router keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Link {
    /// To the replica manager.
    Rm,
    /// To the primary (while following one).
    Primary,
}

/// Replication settings of a router.
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    /// This router's name.
    pub id: ReplicaId,
    /// The address clients reach this router at.
    pub addr: String,
    /// The address of this router's cluster listener, where followers
    /// reach it.
    pub cluster_addr: String,
    /// The replica manager's address.
    pub rm: String,
    /// A value unique to this process start, so the RM can tell a restart
    /// from a reconnect.
    pub incarnation: u64,
    /// The identity of the storage the router's state lives on, the same
    /// across restarts as long as the storage is (0: the state does not
    /// outlive the process). The RM tells a router that restarted with its
    /// state from one that came back without it by this value.
    pub state_id: u64,
    /// Whether this router may become the primary of an empty cluster
    /// (`false` for `peerlink router --backup`).
    pub may_lead: bool,
    /// How often the router heartbeats the RM. Default 100 ms.
    pub heartbeat_interval: Duration,
    /// A backup that stays behind this long is reported to the RM for
    /// removal. Default 1 s: longer than a follower needs to find a new
    /// primary after a failover and load its checkpoint.
    pub ack_timeout: Duration,
    /// How long to wait before reconnecting a broken link. Default 100 ms.
    pub retry_interval: Duration,
    /// How many recent changes the primary keeps for followers that
    /// reconnect; older gaps are filled with a checkpoint. Default 100,000.
    pub max_log: usize,
    /// How many bytes of recent changes the primary keeps, weighed like
    /// mailbox items; the log keeps whichever of the two limits is
    /// smaller. Default 64 MiB.
    pub max_log_bytes: usize,
}

impl ReplicationConfig {
    /// The documented defaults for the given identity, addresses (for
    /// clients, and for other members) and RM address.
    pub fn new(id: ReplicaId, addr: String, cluster_addr: String, rm: String, incarnation: u64) -> Self {
        Self {
            id,
            addr,
            cluster_addr,
            rm,
            incarnation,
            state_id: 0,
            may_lead: true,
            heartbeat_interval: Duration::from_millis(100),
            ack_timeout: Duration::from_millis(1000),
            retry_interval: Duration::from_millis(100),
            max_log: 100_000,
            max_log_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    /// Outside the configuration, or following nobody yet.
    Waiting,
    /// Serving; primary continuously since epoch `term`.
    Primary { term: Epoch },
    /// Following `primary`.
    Follower { primary: Member },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkStatus {
    /// Not wanted.
    Off,
    /// Wanted; the next attempt is due at `retry_at`.
    Down {
        retry_at: Instant,
    },
    Connecting,
    Up,
}

#[derive(Debug)]
struct LinkState {
    attempt: u64,
    status: LinkStatus,
    /// When something last arrived on the link (or it came up).
    heard: Instant,
}

impl LinkState {
    /// Whether an up link has been silent so long that it is presumed dead
    /// (a partition leaves a TCP stream open but silent).
    fn is_silent(&self, now: Instant, limit: Duration) -> bool {
        self.status == LinkStatus::Up && self.heard + limit <= now
    }
}

#[derive(Debug)]
struct Stream {
    conn: ConnId,
    acked: Lsn,
    started: Instant,
    /// When the follower last acknowledged, and whether it then heard the RM.
    heard: Instant,
    rm_live: bool,
    /// The checkpoint it is being sent, until it acknowledges having
    /// applied it.
    checkpoint: Option<Outgoing>,
}

/// A checkpoint on its way to a follower.
#[derive(Debug)]
struct Outgoing {
    /// The last change the state includes.
    lsn: Lsn,
    /// The parts not yet sent.
    parts: VecDeque<StatePart>,
    /// Parts sent, and parts the follower said it received.
    sent: u64,
    received: u64,
    /// Every part, the end, and the changes since `lsn` have been sent:
    /// new changes go out as to any follower.
    ended: bool,
}

/// A checkpoint a follower is receiving.
#[derive(Debug)]
struct Incoming {
    epoch: Epoch,
    lsn: Lsn,
    builder: StateBuilder,
}

/// The most checkpoint parts sent to a follower and not yet reported
/// received: about 2 MiB in flight per follower.
pub const CHECKPOINT_WINDOW: u64 = 8;

/// How many unanswered heartbeats a router remembers the send time of.
const BEATS_KEPT: usize = 64;

/// A router's replication state. See the module docs.
#[derive(Debug)]
pub(super) struct Replication {
    config: ReplicationConfig,
    configuration: Configuration,
    role: Role,
    rm: LinkState,
    primary: LinkState,
    next_heartbeat: Instant,
    /// Primary: recent changes, oldest first.
    log: Log,
    /// Primary: the follower streams, by follower.
    streams: BTreeMap<ReplicaId, Stream>,
    /// Primary: candidates it asked the RM to make backups; they count
    /// for commit from then on.
    pending_add: BTreeSet<ReplicaId>,
    /// Primary: backups it asked the RM to remove.
    pending_removal: BTreeSet<ReplicaId>,
    /// Primary: since when each lagging backup has made no progress.
    behind_since: BTreeMap<ReplicaId, Instant>,
    /// Primary: the last change applied when it was promoted. Changes up to
    /// it may have been committed by an earlier primary, so a candidate is
    /// caught up only once it has them.
    promoted_at: Lsn,

    /// Follower: the epoch of the primary frames the state came from.
    stream_epoch: Epoch,
    /// Follower: the checkpoint being received on the current primary link.
    incoming: Option<Incoming>,

    /// Heartbeats sent and not yet answered: their numbers and send times.
    beats: VecDeque<(u64, Instant)>,
    next_beat: u64,
    /// The send time of the newest heartbeat the RM answered.
    rm_lease_from: Option<Instant>,
    /// Primary: when each backup of the configuration last acknowledged
    /// (or when this router became primary, or the backup was added).
    backup_heard: BTreeMap<ReplicaId, Instant>,
    /// Primary: it asked the RM to resign in the current epoch.
    resigned: bool,
    /// The primary of the current epoch lost its lease and stopped serving;
    /// it resumes when the RM answers it again in the same epoch.
    suspended: bool,
}

impl Replication {
    pub(super) fn new(config: ReplicationConfig, now: Instant) -> Self {
        let log = Log::new(config.max_log, config.max_log_bytes);
        Self {
            config,
            configuration: Configuration::default(),
            role: Role::Waiting,
            rm: LinkState {
                attempt: 0,
                status: LinkStatus::Down { retry_at: now },
                heard: now,
            },
            primary: LinkState {
                attempt: 0,
                status: LinkStatus::Off,
                heard: now,
            },
            next_heartbeat: now,
            log,
            streams: BTreeMap::new(),
            pending_add: BTreeSet::new(),
            pending_removal: BTreeSet::new(),
            behind_since: BTreeMap::new(),
            promoted_at: Lsn(0),

            stream_epoch: Epoch(0),
            incoming: None,
            beats: VecDeque::new(),
            next_beat: 0,
            rm_lease_from: None,
            suspended: false,
            backup_heard: BTreeMap::new(),
            resigned: false,
        }
    }

    /// Starts tracking, from `now`, the backups of a configuration just
    /// adopted as primary.
    fn track_backups(&mut self, now: Instant) {
        let backups: Vec<ReplicaId> = self.configuration.backups.iter().map(|m| m.id.clone()).collect();
        self.backup_heard.retain(|id, _| backups.contains(id));
        for id in backups {
            self.backup_heard.entry(id).or_insert(now);
        }
        self.resigned = false;
    }

    /// How long a backup may lag or be silent before the primary acts: the
    /// router's own setting, or the RM's failure timeout if that is longer
    /// (an operator who raised it for a slow network raised both).
    fn ack_timeout(&self) -> Duration {
        let ft = Duration::from_millis(self.configuration.failure_timeout_ms);
        self.config.ack_timeout.max(ft)
    }

    /// Whether every backup of the configuration has been silent for the
    /// ack timeout: the primary is cut off from all of them.
    fn lost_every_backup(&self, now: Instant) -> bool {
        !self.configuration.backups.is_empty()
            && self.configuration.backups.iter().all(|b| {
                self.backup_heard
                    .get(&b.id)
                    .is_none_or(|t| *t + self.ack_timeout() <= now)
            })
    }

    /// Whether this router hears the RM: the RM answered a heartbeat sent
    /// less than a lease ago.
    fn rm_live(&self, now: Instant) -> bool {
        self.rm_lease_from
            .is_some_and(|t| t + self.configuration.lease() > now)
    }

    /// Whether the primary may go on serving: it hears the RM, or no backup
    /// of its configuration does (each acknowledged within the lease that it
    /// does not) — the RM promotes only routers it hears, so it cannot
    /// replace this one. A primary cut off from the RM whose backups still
    /// hear it stops before the RM may promote one of them.
    fn lease_holds(&self, now: Instant) -> bool {
        let lease = self.configuration.lease();
        self.rm_live(now)
            || self.configuration.backups.iter().all(|b| {
                self.streams
                    .get(&b.id)
                    .is_some_and(|s| !s.rm_live && s.heard + lease > now)
            })
    }

    /// Numbers a heartbeat about to be sent and remembers when it left.
    fn number_beat(&mut self, now: Instant) -> u64 {
        self.next_beat += 1;
        self.beats.push_back((self.next_beat, now));
        while self.beats.len() > BEATS_KEPT {
            self.beats.pop_front();
        }
        self.next_beat
    }

    /// The RM answered heartbeat `beat`: the lease runs from its send time.
    fn heard_beat(&mut self, beat: u64) {
        while let Some(&(b, sent)) = self.beats.front() {
            if b > beat {
                break;
            }
            self.beats.pop_front();
            if b == beat {
                self.rm_lease_from = Some(self.rm_lease_from.map_or(sent, |t| t.max(sent)));
            }
        }
    }

    /// Continues from a state recovered from storage, whose last record
    /// came from the stream of `epoch`.
    pub(super) fn resume_stream(&mut self, epoch: Epoch) {
        self.stream_epoch = epoch;
    }

    /// The epoch a change applied now belongs to: the primary's own, or
    /// that of the stream a follower's state came from.
    pub(super) fn stream_epoch(&self) -> Epoch {
        if self.is_primary() {
            self.epoch()
        } else {
            self.stream_epoch
        }
    }

    pub(super) fn is_primary(&self) -> bool {
        matches!(self.role, Role::Primary { .. })
    }

    fn epoch(&self) -> Epoch {
        self.configuration.epoch
    }

    pub(super) fn id(&self) -> &ReplicaId {
        &self.config.id
    }

    /// The epoch of the configuration this router knows.
    pub(super) fn known_epoch(&self) -> Epoch {
        self.epoch()
    }

    /// Whether this router follows a primary.
    pub(super) fn is_following(&self) -> bool {
        matches!(self.role, Role::Follower { .. })
    }

    /// On a primary, each follower and the last change it acknowledged.
    pub(super) fn follower_acks(&self) -> Vec<(ReplicaId, Lsn)> {
        self.streams.iter().map(|(id, s)| (id.clone(), s.acked)).collect()
    }

    /// The epoch, while primary.
    pub(super) fn primary_epoch(&self) -> Option<Epoch> {
        self.is_primary().then(|| self.epoch())
    }

    /// `None` when serving; otherwise the redirect to give clients: the
    /// primary, only while this router follows it on a live link (right
    /// after a primary dies, the configuration still names it), else none,
    /// and the client tries its other routers.
    pub(super) fn redirect(&self) -> Option<Option<String>> {
        match &self.role {
            Role::Primary { .. } => None,
            Role::Follower { primary } if self.primary.status == LinkStatus::Up => {
                Some(Some(primary.addr.clone()))
            }
            _ => Some(None),
        }
    }

    /// The primary of the configuration just adopted, if it is another
    /// router: where a router that steps down sends its clients.
    fn successor(&self) -> Option<String> {
        self.configuration
            .primary
            .as_ref()
            .filter(|p| p.id != self.config.id)
            .map(|p| p.addr.clone())
    }

    /// The backups (and promised candidates) every commit must reach.
    fn required(&self) -> impl Iterator<Item = &ReplicaId> {
        let me = &self.config.id;
        self.configuration
            .backups
            .iter()
            .map(|m| &m.id)
            .chain(&self.pending_add)
            .filter(move |id| *id != me)
    }

    fn acked(&self, id: &ReplicaId) -> Lsn {
        self.streams.get(id).map_or(Lsn(0), |s| s.acked)
    }

    /// The highest LSN every required follower has, capped at `applied`;
    /// `None` while the configuration has fewer backups than its minimum,
    /// when nothing may commit (unless the planted bug `ignore_minimum`).
    pub(super) fn commit_point(&self, applied: Lsn, ignore_minimum: bool) -> Option<Lsn> {
        if self.configuration.below_min_backups() && !ignore_minimum {
            return None;
        }
        Some(self.required().map(|id| self.acked(id)).fold(applied, Lsn::min))
    }

    /// How many backups of the configuration hold `lsn`, and how many the
    /// configuration requires: what a commit of `lsn` rests on.
    pub(in crate::router) fn copies(&self, lsn: Lsn) -> (usize, usize) {
        let me = &self.config.id;
        let c = &self.configuration;
        let copies = c
            .backups
            .iter()
            .filter(|m| m.id != *me && self.acked(&m.id) >= lsn)
            .count();
        (copies, c.min_backups)
    }

    /// Why commits wait, if they wait for the configuration rather than for
    /// acknowledgements: `(backups, min_backups)`.
    fn below_minimum(&self) -> Option<(usize, usize)> {
        let c = &self.configuration;
        (self.is_primary() && c.below_min_backups()).then_some((c.backups.len(), c.min_backups))
    }

    /// Sends follower connection `conn` every change in the log after
    /// `lsn`, in order.
    fn replay_after(&self, lsn: Lsn, conn: ConnId, outbox: &mut Outbox) {
        let epoch = self.epoch();
        for (l, change) in self.log.iter().filter(|(l, _)| *l > lsn) {
            let frame = PrimaryFrame::Entry {
                epoch,
                lsn: *l,
                change: change.clone(),
            };
            outbox.emit_now(RouterOutput::Replicate(conn, frame));
        }
    }

    /// Logs a change just applied by the primary and ships it to every
    /// follower stream.
    pub(super) fn ship(&mut self, lsn: Lsn, change: Change, outbox: &mut Outbox) {
        if !self.is_primary() {
            return;
        }
        let epoch = self.epoch();
        // A follower loading a checkpoint gets the changes after it from
        // the log once every part is out.
        let live = self
            .streams
            .values()
            .filter(|s| s.checkpoint.as_ref().is_none_or(|c| c.ended));
        for stream in live {
            let frame = PrimaryFrame::Entry {
                epoch,
                lsn,
                change: change.clone(),
            };
            outbox.emit_now(RouterOutput::Replicate(stream.conn, frame));
        }
        self.log.push(lsn, change);
    }

    /// Keeps `behind_since` current: a required follower behind `applied`
    /// is lagging since now, unless it already was.
    fn track_lag(&mut self, now: Instant, applied: Lsn) {
        let mut tracked: Vec<ReplicaId> = self.required().cloned().collect();
        tracked.extend(self.streams.keys().cloned());
        self.behind_since.retain(|id, _| tracked.contains(id));
        for id in tracked {
            if self.acked(&id) >= applied {
                self.behind_since.remove(&id);
            } else {
                self.behind_since.entry(id).or_insert(now);
            }
        }
    }

    /// Asks the RM to make backups of the candidates that have caught up with
    /// `committed`; from the request on, they count for commit. With
    /// `again`, repeats the request for candidates already asked for, in case
    /// it was lost.
    fn propose_caught_up(&mut self, committed: Lsn, again: bool, outbox: &mut Outbox) {
        if self.rm.status != LinkStatus::Up {
            return;
        }
        let committed = committed.max(self.promoted_at);
        let caught_up: Vec<ReplicaId> = self
            .configuration
            .candidates
            .iter()
            .map(|m| m.id.clone())
            .filter(|id| {
                self.streams.contains_key(id)
                    && self.acked(id) >= committed
                    && (again || !self.pending_add.contains(id))
            })
            .collect();
        for backup in caught_up {
            self.pending_add.insert(backup.clone());
            let request = RmRequest::AddBackup {
                id: self.config.id.clone(),
                epoch: self.epoch(),
                backup,
            };
            outbox.emit_now(RouterOutput::ToRm(request));
        }
    }

    /// Whether the primary may ask the RM to drop backup `id`. Never the
    /// last one: with the primary alone, its loss would lose everything
    /// acknowledged, so commits wait instead.
    fn may_remove(&self, id: &ReplicaId) -> bool {
        self.configuration.is_backup(id)
            && !self.pending_removal.contains(id)
            && self.configuration.backups.len() > self.pending_removal.len() + 1
    }

    /// When a lagging stream counts as stalled: half the ack timeout after
    /// both its start and its last progress.
    fn stalled_at(&self, id: &ReplicaId, stream: &Stream) -> Option<Instant> {
        let since = self.behind_since.get(id)?;
        Some((*since).max(stream.started) + self.ack_timeout() / 2)
    }

    /// A follower's connection is gone.
    pub(super) fn follower_gone(&mut self, conn: ConnId) {
        self.streams.retain(|_, s| s.conn != conn);
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        let link = |l: &LinkState| match l.status {
            LinkStatus::Down { retry_at } => Some(retry_at),
            _ => None,
        };
        let removal = self
            .behind_since
            .iter()
            .filter(|(id, _)| self.may_remove(id))
            .map(|(_, since)| *since + self.ack_timeout())
            .chain(self.streams.iter().filter_map(|(id, s)| self.stalled_at(id, s)))
            .min();
        // Only a follower reconnects to a primary.
        let primary = link(&self.primary).filter(|_| matches!(self.role, Role::Follower { .. }));
        [Some(self.next_heartbeat), link(&self.rm), primary, removal]
            .into_iter()
            .flatten()
            .min()
    }

    fn link_mut(&mut self, link: Link) -> &mut LinkState {
        match link {
            Link::Rm => &mut self.rm,
            Link::Primary => &mut self.primary,
        }
    }
}
