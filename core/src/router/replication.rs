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
//!   names it with its own incarnation: a router that restarted has lost its
//!   state and never serves, or ships, that empty state in a role it held
//!   before. A follower refuses a checkpoint behind its own state from the
//!   stream epoch it follows, so no replica's state moves backwards within
//!   an epoch.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Change, Outbox, Router, RouterOutput};
use crate::ids::{ConnId, Epoch, Lsn, ReplicaId};
use crate::wire::cluster::{Configuration, FollowerFrame, Member, PrimaryFrame, RmReply, RmRequest};
use crate::wire::ServerFrame;

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
    /// The address clients (and followers) reach this router at.
    pub addr: String,
    /// The replica manager's address.
    pub rm: String,
    /// A value unique to this process start, so the RM can tell a restart
    /// (which lost the in-memory state) from a reconnect.
    pub incarnation: u64,
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
}

impl ReplicationConfig {
    /// The documented defaults for the given identity and RM address.
    pub fn new(id: ReplicaId, addr: String, rm: String, incarnation: u64) -> Self {
        Self {
            id,
            addr,
            rm,
            incarnation,
            may_lead: true,
            heartbeat_interval: Duration::from_millis(100),
            ack_timeout: Duration::from_millis(1000),
            retry_interval: Duration::from_millis(100),
            max_log: 100_000,
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
}

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
    log: VecDeque<(Lsn, Change)>,
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
            log: VecDeque::new(),
            streams: BTreeMap::new(),
            pending_add: BTreeSet::new(),
            pending_removal: BTreeSet::new(),
            behind_since: BTreeMap::new(),
            promoted_at: Lsn(0),

            stream_epoch: Epoch(0),
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

    pub(super) fn is_primary(&self) -> bool {
        matches!(self.role, Role::Primary { .. })
    }

    fn epoch(&self) -> Epoch {
        self.configuration.epoch
    }

    pub(super) fn id(&self) -> &ReplicaId {
        &self.config.id
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

    /// Why commits wait, if they wait for the configuration rather than for
    /// acknowledgements: `(backups, min_backups)`.
    fn below_minimum(&self) -> Option<(usize, usize)> {
        let c = &self.configuration;
        (self.is_primary() && c.below_min_backups()).then_some((c.backups.len(), c.min_backups))
    }

    /// Logs a change just applied by the primary and ships it to every
    /// follower stream.
    pub(super) fn ship(&mut self, lsn: Lsn, change: Change, outbox: &mut Outbox) {
        if !self.is_primary() {
            return;
        }
        let epoch = self.epoch();
        for stream in self.streams.values() {
            let frame = PrimaryFrame::Entry {
                epoch,
                lsn,
                change: change.clone(),
            };
            outbox.emit_now(RouterOutput::Replicate(stream.conn, frame));
        }
        self.log.push_back((lsn, change));
        while self.log.len() > self.config.max_log {
            self.log.pop_front();
        }
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

impl Router {
    fn replication_mut(&mut self) -> Option<&mut Replication> {
        self.replication.as_mut()
    }

    /// Drops a link's connection and schedules a reconnect at `retry_at`.
    fn restart_link(&mut self, link: Link, retry_at: Instant) {
        let Some(r) = self.replication_mut() else {
            return;
        };
        let state = r.link_mut(link);
        if matches!(state.status, LinkStatus::Up | LinkStatus::Connecting) {
            self.outbox.emit_now(RouterOutput::DropLink(link));
        }
        if let Some(r) = self.replication_mut() {
            r.link_mut(link).status = LinkStatus::Down { retry_at };
        }
    }

    pub(super) fn handle_link_up(&mut self, now: Instant, link: Link, attempt: u64) {
        let applied = self.outbox.applied;
        let Some(r) = self.replication_mut() else {
            return;
        };
        let state = r.link_mut(link);
        if state.attempt != attempt || state.status != LinkStatus::Connecting {
            return;
        }
        state.status = LinkStatus::Up;
        state.heard = now;
        match link {
            Link::Rm => r.next_heartbeat = now,
            Link::Primary => {
                let frame = FollowerFrame::Follow {
                    id: r.config.id.clone(),
                    epoch: r.epoch(),
                    lsn: applied,
                    stream_epoch: r.stream_epoch,
                };
                self.outbox.emit_now(RouterOutput::ToPrimary(frame));
            }
        }
    }

    pub(super) fn handle_link_down(&mut self, now: Instant, link: Link, attempt: u64) {
        let Some(r) = self.replication_mut() else {
            return;
        };
        let retry_at = now + r.config.retry_interval;
        let state = r.link_mut(link);
        if state.attempt == attempt && matches!(state.status, LinkStatus::Connecting | LinkStatus::Up) {
            state.status = LinkStatus::Down { retry_at };
            // A removal request in flight may be lost with the link: ask again
            // later. Additions stay pending (and counted for commit) until a
            // newer configuration shows whether the RM made them.
            if link == Link::Rm {
                r.pending_removal.clear();
            }
        }
    }

    pub(super) fn handle_replication_timeout(&mut self, now: Instant) {
        let applied = self.outbox.applied;
        let Some(r) = self.replication.as_mut() else {
            return;
        };
        // At least the RM's failure timeout: on a slow network, where the
        // operator raised it, links are not given up sooner than the RM
        // would give up on a router.
        let ft = Duration::from_millis(r.configuration.failure_timeout_ms);
        let silence = (r.config.heartbeat_interval * SILENT_BEATS).max(ft);
        for link in [Link::Rm, Link::Primary] {
            let r = self.replication.as_mut().expect("replicated");
            if r.link_mut(link).is_silent(now, silence) {
                self.restart_link(link, now);
            }
        }
        let r = self.replication.as_mut().expect("replicated");
        for link in [Link::Rm, Link::Primary] {
            let addr = match link {
                Link::Rm => r.config.rm.clone(),
                Link::Primary => match &r.role {
                    Role::Follower { primary } => primary.addr.clone(),
                    _ => continue,
                },
            };
            let state = r.link_mut(link);
            if let LinkStatus::Down { retry_at } = state.status {
                if retry_at <= now {
                    state.attempt += 1;
                    state.status = LinkStatus::Connecting;
                    let attempt = state.attempt;
                    self.outbox
                        .emit_now(RouterOutput::Connect { link, attempt, addr });
                }
            }
        }
        let r = self.replication.as_mut().expect("replicated");
        if r.next_heartbeat <= now {
            r.next_heartbeat = now + r.config.heartbeat_interval;
            let epoch = r.epoch();
            for stream in r.streams.values() {
                let frame = PrimaryFrame::Alive { epoch, lsn: applied };
                self.outbox.emit_now(RouterOutput::Replicate(stream.conn, frame));
            }
            if r.rm.status == LinkStatus::Up {
                let beat = RmRequest::Heartbeat {
                    id: r.config.id.clone(),
                    addr: r.config.addr.clone(),
                    incarnation: r.config.incarnation,
                    epoch: r.epoch(),
                    lsn: applied,
                    may_lead: r.config.may_lead,
                    beat: r.number_beat(now),
                };
                self.outbox.emit_now(RouterOutput::ToRm(beat));
            }
        }
        if r.is_primary() && !r.lease_holds(now) && !self.ignores_lease() {
            return self.suspend();
        }
        let r = self.replication.as_mut().expect("replicated");
        if r.is_primary() && !r.resigned && r.lost_every_backup(now) && r.rm.status == LinkStatus::Up {
            r.resigned = true;
            let epoch = r.epoch();
            let request = RmRequest::Resign {
                id: r.config.id.clone(),
                epoch,
            };
            self.outbox.emit_now(RouterOutput::ToRm(request));
            self.outbox.emit_now(RouterOutput::Resigning { epoch });
        }
        let r = self.replication.as_mut().expect("replicated");
        if r.is_primary() {
            r.propose_caught_up(self.outbox.committed, true, &mut self.outbox);
            r.track_lag(now, applied);
            // A stream that has made no progress for a while may have lost a
            // frame without the follower noticing: restart it.
            let stalled: Vec<ConnId> = r
                .streams
                .iter()
                .filter(|(id, s)| r.stalled_at(id, s).is_some_and(|t| t <= now))
                .map(|(_, s)| s.conn)
                .collect();
            for conn in stalled {
                r.follower_gone(conn);
                self.conns.remove(&conn);
                self.outbox.emit_now(RouterOutput::Close(conn));
            }
            let r = self.replication.as_mut().expect("replicated");
            let stuck: Vec<ReplicaId> = r
                .behind_since
                .iter()
                .filter(|(id, since)| **since + r.ack_timeout() <= now && r.may_remove(id))
                .map(|(id, _)| id.clone())
                .collect();
            for backup in stuck {
                if !r.may_remove(&backup) {
                    break;
                }
                r.pending_removal.insert(backup.clone());
                let request = RmRequest::RemoveBackup {
                    id: r.config.id.clone(),
                    epoch: r.epoch(),
                    backup,
                };
                self.outbox.emit_now(RouterOutput::ToRm(request));
            }
        }
    }

    pub(super) fn handle_rm_reply(&mut self, now: Instant, reply: RmReply) {
        let Some(r) = self.replication.as_mut() else {
            return;
        };
        match reply {
            RmReply::Config { config } => {
                r.rm.heard = now;
                self.adopt(now, config, false);
            }
            RmReply::Heard { beat, config } => {
                r.rm.heard = now;
                r.heard_beat(beat);
                self.adopt(now, config, true);
            }
            RmReply::Error { .. } => {
                r.rm.heard = now;
                // A refused removal is asked again later. Additions stay
                // pending: the error may answer another request, and a
                // candidate counted for commit needlessly is merely slower.
                r.pending_removal.clear();
            }
            RmReply::Status { .. } => {}
        }
    }

    /// Adopts a configuration newer than the one known — or, with
    /// `renews` (an answer to a heartbeat) the same one again after this
    /// router lost its lease — and takes the role it gives this router.
    fn adopt(&mut self, now: Instant, config: Configuration, renews: bool) {
        let applied = self.outbox.applied;
        let Some(r) = self.replication_mut() else {
            return;
        };
        let resumes = renews && r.suspended && config.epoch == r.configuration.epoch;
        if config.epoch <= r.configuration.epoch && !resumes {
            return;
        }
        r.suspended = false;
        r.configuration = config;
        r.pending_add.clear();
        r.pending_removal.clear();
        let me = r.config.id.clone();
        let named_as_me = r
            .configuration
            .find(&me)
            .is_some_and(|m| m.incarnation == 0 || m.incarnation == r.config.incarnation);
        let keeps_role = named_as_me || self.restarted_primary_keeps_role();
        let Some(r) = self.replication_mut() else {
            return;
        };
        let role = if r.configuration.is_primary(&me) && !keeps_role {
            // Named primary for a life before this one: the state that role
            // needs is gone. Wait for the RM to withdraw it.
            Role::Waiting
        } else if r.configuration.is_primary(&me) {
            match r.role {
                Role::Primary { term } => Role::Primary { term },
                _ => Role::Primary { term: r.epoch() },
            }
        } else if r.configuration.find(&me).is_some() {
            match &r.configuration.primary {
                Some(primary) => Role::Follower {
                    primary: primary.clone(),
                },
                None => Role::Waiting,
            }
        } else {
            Role::Waiting
        };
        let old = std::mem::replace(&mut r.role, role.clone());
        let was_primary = matches!(old, Role::Primary { .. });
        match role {
            Role::Primary { .. } if !was_primary => self.become_primary(now),
            Role::Primary { .. } => {
                let r = self.replication.as_mut().expect("replicated");
                r.track_backups(now);
                r.track_lag(now, applied);
                self.commit_up_to(applied);
                self.report_minimum();
            }
            Role::Follower { primary } => {
                if was_primary {
                    self.step_down();
                }
                let keep_old_stream = self.accepts_old_epoch() && matches!(old, Role::Follower { .. });
                if old != (Role::Follower { primary }) && !keep_old_stream {
                    self.restart_link(Link::Primary, now);
                }
            }
            Role::Waiting => {
                if was_primary {
                    self.step_down();
                }
                if matches!(old, Role::Follower { .. }) {
                    self.outbox.emit_now(RouterOutput::DropLink(Link::Primary));
                }
                if let Some(r) = self.replication_mut() {
                    r.primary.status = LinkStatus::Off;
                }
            }
        }
    }

    /// Starts serving: nothing is committed until every backup has this
    /// router's state.
    fn become_primary(&mut self, now: Instant) {
        let applied = self.outbox.applied;
        if !self.accepts_old_epoch() {
            if matches!(
                self.replication.as_ref().map(|r| r.primary.status),
                Some(LinkStatus::Up | LinkStatus::Connecting)
            ) {
                self.outbox.emit_now(RouterOutput::DropLink(Link::Primary));
            }
            let r = self.replication.as_mut().expect("replicated");
            r.primary.status = LinkStatus::Off;
        }
        let r = self.replication.as_mut().expect("replicated");
        r.log.clear();
        r.streams.clear();
        r.behind_since.clear();
        r.backup_heard.clear();
        r.track_backups(now);
        r.track_lag(now, applied);
        r.promoted_at = applied;
        let epoch = r.epoch();
        // Everything applied so far becomes committed only once the backups
        // have it: reset the commit point rather than inherit a follower's.
        let ignore_minimum = self.commits_below_minimum();
        let r = self.replication.as_ref().expect("replicated");
        self.outbox.committed = r.commit_point(applied, ignore_minimum).unwrap_or(Lsn(0));
        self.outbox
            .emit_now(RouterOutput::Promoted { epoch, lsn: applied });
        self.report_minimum();
    }

    /// Moves the commit point as far as the followers' acknowledgements and
    /// the configuration's minimum allow.
    pub(super) fn commit_up_to(&mut self, applied: Lsn) {
        let ignore_minimum = self.commits_below_minimum();
        let point = self
            .replication
            .as_ref()
            .and_then(|r| r.commit_point(applied, ignore_minimum));
        if let Some(point) = point {
            self.commit_to(point);
        }
    }

    /// Tells the driver, when the primary has too few backups to commit.
    fn report_minimum(&mut self) {
        let Some(r) = self.replication.as_ref() else {
            return;
        };
        if let Some((backups, min_backups)) = r.below_minimum() {
            let epoch = r.epoch();
            self.outbox.emit_now(RouterOutput::BelowMinBackups {
                epoch,
                backups,
                min_backups,
            });
        }
    }

    /// Whether the planted bug `commit_below_min_backups` is on (never, in
    /// production builds).
    fn commits_below_minimum(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        return self.config.bugs.commit_below_min_backups;
        #[cfg(not(feature = "planted-bugs"))]
        false
    }

    /// The primary lost its lease: it stops serving (clients are sent to
    /// try other routers) until the RM answers it again in this epoch.
    fn suspend(&mut self) {
        let Some(r) = self.replication.as_mut() else {
            return;
        };
        r.role = Role::Waiting;
        r.suspended = true;
        let epoch = r.epoch();
        self.outbox.emit_now(RouterOutput::LeaseLost { epoch });
        self.step_down();
    }

    /// Stops serving: forgets clients and followers, and drops every output
    /// still waiting for a commit that will never come.
    fn step_down(&mut self) {
        let primary = self.replication.as_ref().and_then(Replication::successor);
        self.outbox.held.clear();
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        let followers: Vec<ConnId> = self
            .replication
            .as_ref()
            .map(|r| r.streams.values().map(|s| s.conn).collect())
            .unwrap_or_default();
        let epoch = self.replication.as_ref().map_or(Epoch(0), Replication::epoch);
        for conn in conns {
            if followers.contains(&conn) {
                let frame = PrimaryFrame::NotPrimary { epoch };
                self.outbox.emit_now(RouterOutput::Replicate(conn, frame));
            } else {
                let frame = ServerFrame::Redirect {
                    primary: primary.clone(),
                };
                self.outbox.emit_now(RouterOutput::Send(conn, frame));
            }
            self.outbox.emit_now(RouterOutput::Close(conn));
        }
        self.conns.clear();
        self.sessions.clear();
        self.deadlines.clear();
        if let Some(r) = self.replication_mut() {
            r.streams.clear();
            r.log.clear();
            r.behind_since.clear();
        }
    }

    /// A follower's frame, on the primary.
    pub(super) fn handle_follower(&mut self, now: Instant, conn: ConnId, frame: FollowerFrame) {
        let applied = self.outbox.applied;
        let Some(r) = self.replication.as_mut() else {
            return;
        };
        match frame {
            FollowerFrame::Follow {
                id,
                epoch,
                lsn,
                stream_epoch,
            } => {
                let Role::Primary { term } = r.role else {
                    return self.refuse_follower(conn);
                };
                if epoch > r.epoch() || !self.conns.contains_key(&conn) {
                    return self.refuse_follower(conn);
                }
                if let Some(c) = self.conns.get_mut(&conn) {
                    if let Some(deadline) = c.deadline.take() {
                        self.deadlines.remove(&(deadline, conn));
                    }
                }
                let r = self.replication.as_mut().expect("replicated");
                r.backup_heard.insert(id.clone(), now);
                let epoch = r.epoch();
                let log_start = r.log.front().map_or(applied, |(l, _)| Lsn(l.0 - 1));
                // A follower whose state came from this primary's own stream
                // holds exactly this primary's changes up to `lsn`.
                let from_me = stream_epoch >= term && lsn >= log_start && lsn <= applied;
                let acked = if from_me { lsn } else { Lsn(0) };
                if let Some(old) = r.streams.insert(
                    id,
                    Stream {
                        conn,
                        acked,
                        started: now,
                        heard: now,
                        // Until it says otherwise, it may hear the RM.
                        rm_live: true,
                    },
                ) {
                    if old.conn != conn {
                        self.conns.remove(&old.conn);
                        self.outbox.emit_now(RouterOutput::Close(old.conn));
                    }
                }
                let r = self.replication.as_mut().expect("replicated");
                if from_me {
                    for (l, change) in r.log.iter().filter(|(l, _)| *l > lsn) {
                        let frame = PrimaryFrame::Entry {
                            epoch,
                            lsn: *l,
                            change: change.clone(),
                        };
                        self.outbox.emit_now(RouterOutput::Replicate(conn, frame));
                    }
                } else {
                    let frame = PrimaryFrame::Checkpoint {
                        epoch,
                        lsn: applied,
                        state: self.state.clone(),
                    };
                    self.outbox.emit_now(RouterOutput::Replicate(conn, frame));
                }
                let r = self.replication.as_mut().expect("replicated");
                r.track_lag(now, applied);
                self.commit_up_to(applied);
            }
            FollowerFrame::Applied { lsn, rm_live, .. } => {
                let Some((id, stream)) = r.streams.iter_mut().find(|(_, s)| s.conn == conn) else {
                    return;
                };
                let id = id.clone();
                stream.heard = now;
                stream.rm_live = rm_live;
                r.backup_heard.insert(id.clone(), now);
                if lsn > stream.acked {
                    stream.acked = lsn.min(applied);
                    r.behind_since.remove(&id);
                }
                r.track_lag(now, applied);
                self.commit_up_to(applied);
                let r = self.replication.as_mut().expect("replicated");
                r.propose_caught_up(self.outbox.committed, false, &mut self.outbox);
            }
        }
    }

    fn refuse_follower(&mut self, conn: ConnId) {
        let epoch = self.replication.as_ref().map_or(Epoch(0), Replication::epoch);
        self.forget(conn);
        self.outbox
            .emit_now(RouterOutput::Replicate(conn, PrimaryFrame::NotPrimary { epoch }));
        self.outbox.emit_now(RouterOutput::Close(conn));
    }

    /// A primary's frame, on a follower.
    pub(super) fn handle_primary_frame(&mut self, now: Instant, frame: PrimaryFrame) {
        let old_epochs = self.accepts_old_epoch();
        let accepts_regression = self.restarted_primary_keeps_role();
        let Some(r) = self.replication.as_mut() else {
            return;
        };
        let following = matches!(r.role, Role::Follower { .. });
        if !(following || old_epochs) || r.primary.status != LinkStatus::Up {
            return;
        }
        r.primary.heard = now;
        let my_epoch = if old_epochs { Epoch(0) } else { r.epoch() };
        match frame {
            PrimaryFrame::Checkpoint { epoch, lsn, state } => {
                if epoch < my_epoch || !following {
                    return self.restart_link(Link::Primary, now);
                }
                let regresses = epoch == r.stream_epoch && lsn < self.outbox.applied;
                if regresses && !accepts_regression {
                    // Only a primary that lost its state offers less than it
                    // already shipped in the same epoch: refuse, and ask
                    // again later (by then the RM has withdrawn its role).
                    let retry_at = now + r.config.retry_interval;
                    return self.restart_link(Link::Primary, retry_at);
                }

                r.stream_epoch = epoch;
                self.state = state;
                self.outbox.applied = lsn;
                self.outbox.committed = lsn;
                self.acknowledge(now, epoch, lsn);
            }
            PrimaryFrame::Entry { epoch, lsn, change } => {
                if epoch < my_epoch {
                    return self.restart_link(Link::Primary, now);
                }
                if lsn <= self.outbox.applied {
                    return;
                }
                if lsn != self.outbox.applied.next() {
                    // A gap: resync from a checkpoint.
                    return self.restart_link(Link::Primary, now);
                }
                r.stream_epoch = epoch;
                self.state.apply(&change);
                self.outbox.applied = lsn;
                if following {
                    self.outbox.committed = lsn;
                }
                self.acknowledge(now, epoch, lsn);
            }
            PrimaryFrame::Alive { epoch, .. } => {
                if epoch < my_epoch {
                    return self.restart_link(Link::Primary, now);
                }
                let applied = self.outbox.applied;
                self.acknowledge(now, epoch, applied);
            }
            PrimaryFrame::NotPrimary { .. } => {
                let retry_at = now + r.config.retry_interval;
                self.restart_link(Link::Primary, retry_at);
            }
        }
    }

    /// Whether the planted bug `primary_ignores_lease` is on (never, in
    /// production builds).
    fn ignores_lease(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        return self.config.bugs.primary_ignores_lease;
        #[cfg(not(feature = "planted-bugs"))]
        false
    }

    /// Whether the planted bug `restarted_primary_keeps_role` is on (never,
    /// in production builds).
    fn restarted_primary_keeps_role(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        return self.config.bugs.restarted_primary_keeps_role;
        #[cfg(not(feature = "planted-bugs"))]
        false
    }

    /// Whether the planted bug `backup_accepts_old_epoch` is on (never, in
    /// production builds).
    fn accepts_old_epoch(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        return self.config.bugs.backup_accepts_old_epoch;
        #[cfg(not(feature = "planted-bugs"))]
        false
    }

    fn acknowledge(&mut self, now: Instant, epoch: Epoch, lsn: Lsn) {
        let rm_live = self.replication.as_ref().is_some_and(|r| r.rm_live(now));
        let frame = FollowerFrame::Applied { epoch, lsn, rm_live };
        // Acknowledgements are cumulative: one of the same epoch not yet
        // taken by the driver is superseded rather than followed.
        if let Some(RouterOutput::ToPrimary(last @ FollowerFrame::Applied { .. })) =
            self.outbox.ready.back_mut()
        {
            if matches!(last, FollowerFrame::Applied { epoch: e, .. } if *e == epoch) {
                *last = frame;
                return;
            }
        }
        self.outbox.emit_now(RouterOutput::ToPrimary(frame));
    }
}
