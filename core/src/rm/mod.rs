//! The replica manager (RM): the one authority over the cluster's
//! [`Configuration`]. No consensus runs among routers; as in PacificA, the
//! RM alone decides who is primary, who is a backup, and who is catching up.
//!
//! Rules:
//! - Every connection has proven, before the RM hears of it, that it holds
//!   the cluster key, and which router it is (or that it is an operator's
//!   tool): [`RmInput::Connected`]. A request naming another router is
//!   refused with `unauthorized`; a tool may only ask for the status.
//!   Addresses are stored only when valid ([`check_addr`]).
//! - Routers heartbeat the RM; every heartbeat is answered with the current
//!   configuration ([`RmReply::Heard`], which renews the primary's lease),
//!   and every new configuration is pushed to every router connected.
//! - A new configuration is announced only after the driver has persisted
//!   it ([`RmOutput::Persist`], acknowledged by [`RmInput::Persisted`]), so
//!   a restarted RM never reuses an epoch. Every change bumps the epoch.
//! - The first router that may lead, in a cluster with no primary and no
//!   backups, becomes primary. Every other newcomer becomes a *candidate*:
//!   it follows the primary, and the primary asks to make it a backup once it
//!   has caught up ([`RmRequest::AddBackup`]).
//! - A backup is dropped only on the request of a primary whose epoch is
//!   current ([`RmRequest::RemoveBackup`]), and never the last one — or when
//!   it restarts without its state (a new incarnation with another
//!   [`Member::state_id`], or none). A router that restarts with its state
//!   (the same storage) holds everything it acknowledged, and keeps its
//!   place.
//! - When the primary misses heartbeats for [`RmConfig::failure_timeout`],
//!   or restarts, the RM promotes the backup with the highest LSN among
//!   those heard within half the failure timeout; only backups can be
//!   promoted, because only they hold every committed change. With no such
//!   backup, a silent primary keeps its role (it may only be cut off from
//!   the RM). Unheard backups, and an old primary that did not restart,
//!   stay backups while the new primary would otherwise be below
//!   `min_backups`: they hold every committed change, so a second death
//!   never leaves the cluster with no router that may be promoted.
//! - A primary that hears none of its backups asks to resign
//!   ([`RmRequest::Resign`]); the RM promotes a backup it hears, if any.
//! - A primary that restarted never keeps its role in the same epoch: it
//!   may have lost changes it shipped but had not made durable, which its
//!   backups hold. If it kept its state, it is a candidate for promotion
//!   like the backups it had (it holds every committed change), and the RM
//!   promotes the one with the highest LSN in a new epoch, so every follower
//!   resynchronises from the new primary. If it lost its state, and no
//!   backup can be promoted, the RM withdraws the role (no primary) and
//!   promotes the first backup of the configuration that checks in. Until
//!   then the cluster is unavailable, never wiped.
//! - Every configuration carries [`RmConfig::min_backups`]: the primary
//!   commits nothing while it has fewer backups (see
//!   [`Configuration::min_backups`]).

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::ids::{ConnId, Epoch, Lsn, ReplicaId};
use crate::machine::Machine;
use crate::wire::cluster::{check_addr, Configuration, Member, MemberStatus, RmReply, RmRequest};
use crate::wire::{ErrorCode, FrameError};

/// Tunables of a [`ReplicaManager`].
#[derive(Debug, Clone)]
pub struct RmConfig {
    /// A primary silent for this long is replaced. Default 500 ms: with the
    /// routers' 100 ms heartbeats, five lost in a row, and a promotion well
    /// within a second of the primary's death.
    pub failure_timeout: Duration,
    /// The fewest backups a primary needs to commit, written into every
    /// configuration. Default 1: no acknowledged change exists in a single
    /// copy. 0 lets a lone primary commit (a crash of it then loses what it
    /// acknowledged).
    pub min_backups: usize,
    /// Deliberate bugs (tests only).
    #[cfg(feature = "planted-bugs")]
    pub bugs: crate::bugs::Bugs,
}

impl RmConfig {
    /// The given settings, with no planted bugs.
    pub fn new(failure_timeout: Duration, min_backups: usize) -> Self {
        Self {
            failure_timeout,
            min_backups,
            #[cfg(feature = "planted-bugs")]
            bugs: crate::bugs::Bugs::default(),
        }
    }
}

impl Default for RmConfig {
    /// A 500 ms failure timeout and a minimum of one backup.
    fn default() -> Self {
        Self::new(Duration::from_millis(500), 1)
    }
}

/// What a [`ReplicaManager`] reacts to.
#[derive(Debug, Clone)]
pub enum RmInput {
    /// A connection passed the membership handshake as router `id`, or
    /// as an operator's tool (`peerlink status`) for `None`.
    Connected {
        /// The connection.
        conn: ConnId,
        /// The identity it proved.
        id: Option<ReplicaId>,
    },
    /// A request arrived.
    Request(ConnId, RmRequest),
    /// A line arrived that is not a valid request.
    Malformed(ConnId, FrameError),
    /// The connection is gone.
    Disconnected(ConnId),
    /// The configuration of `epoch` is durably stored.
    Persisted(Epoch),
}

/// What a [`ReplicaManager`] asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RmOutput {
    /// Write a reply to a connection.
    Send(ConnId, RmReply),
    /// Store this configuration durably, then report [`RmInput::Persisted`].
    /// Later requests supersede earlier ones.
    Persist(Configuration),
}

#[derive(Debug)]
struct MemberState {
    addr: String,
    cluster_addr: String,
    /// `None` until the first heartbeat after an RM restart.
    incarnation: Option<u64>,
    /// The identity of its storage (`None`: unknown, or none).
    state_id: Option<u64>,
    lsn: Lsn,
    last_heartbeat: Instant,
    heard: bool,
    conn: Option<ConnId>,
}

/// The replica manager state machine. See the module docs for its rules and
/// [`Machine`] for its calling contract.
#[derive(Debug)]
pub struct ReplicaManager {
    config: RmConfig,
    /// The configuration announced to routers (always persisted).
    current: Configuration,
    /// A newer configuration waiting to be persisted.
    proposed: Option<Configuration>,
    members: BTreeMap<ReplicaId, MemberState>,
    /// Every connection, with the identity it proved.
    conns: BTreeMap<ConnId, Option<ReplicaId>>,
    outputs: VecDeque<RmOutput>,
}

impl ReplicaManager {
    /// A replica manager starting from `restored`, the last configuration it
    /// persisted (or the empty one for a first start). Members of a restored
    /// configuration get a full failure timeout from `now` to check in.
    pub fn new(config: RmConfig, restored: Configuration, now: Instant) -> Self {
        let members = restored
            .primary
            .iter()
            .chain(&restored.backups)
            .chain(&restored.candidates)
            .map(|m| {
                let state = MemberState {
                    addr: m.addr.clone(),
                    cluster_addr: m.cluster_addr.clone(),
                    incarnation: Some(m.incarnation).filter(|i| *i != 0),
                    state_id: Some(m.state_id).filter(|s| *s != 0),
                    lsn: Lsn(0),
                    last_heartbeat: now,
                    heard: false,
                    conn: None,
                };
                (m.id.clone(), state)
            })
            .collect();
        let mut rm = Self {
            config,
            current: restored,
            proposed: None,
            members,
            conns: BTreeMap::new(),
            outputs: VecDeque::new(),
        };
        // An operator who restarts the RM with another minimum gets it at
        // once, under a new epoch like every change.
        let settings = (rm.config.min_backups, rm.failure_timeout_ms());
        if rm.current.epoch > Epoch(0) && (rm.current.min_backups, rm.current.failure_timeout_ms) != settings
        {
            let next = rm.next_configuration();
            rm.propose(next);
        }
        rm
    }

    /// The configuration announced to routers.
    pub fn configuration(&self) -> &Configuration {
        &self.current
    }

    /// The newest configuration, announced or waiting to be persisted.
    fn latest(&self) -> &Configuration {
        self.proposed.as_ref().unwrap_or(&self.current)
    }

    /// Proposes `next` (whose epoch must be one more than the latest's).
    fn propose(&mut self, next: Configuration) {
        debug_assert_eq!(next.epoch, self.latest().epoch.next());
        self.outputs.push_back(RmOutput::Persist(next.clone()));
        self.proposed = Some(next);
    }

    /// The latest configuration with its epoch bumped, for editing.
    fn next_configuration(&self) -> Configuration {
        let mut next = self.latest().clone();
        next.epoch = next.epoch.next();
        next.min_backups = self.config.min_backups;
        next.failure_timeout_ms = self.failure_timeout_ms();
        next
    }

    fn failure_timeout_ms(&self) -> u64 {
        u64::try_from(self.config.failure_timeout.as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether `id` heartbeated within the failure timeout (or the RM
    /// restarted less than that ago and has not yet heard from it).
    fn is_alive(&self, id: &ReplicaId, now: Instant) -> bool {
        self.members
            .get(id)
            .is_some_and(|m| m.last_heartbeat + self.config.failure_timeout > now)
    }

    /// Whether `id` may be promoted: really heard, within half the failure
    /// timeout, so a backup that died with the primary is not chosen in its
    /// place.
    fn is_promotable(&self, id: &ReplicaId, now: Instant) -> bool {
        self.members
            .get(id)
            .is_some_and(|m| m.heard && m.last_heartbeat + self.config.failure_timeout / 2 > now)
    }

    fn reply(&mut self, conn: ConnId, reply: RmReply) {
        self.outputs.push_back(RmOutput::Send(conn, reply));
    }

    /// Refuses a request that names a router other than the one the
    /// connection proved to be.
    fn check_identity(&self, conn: ConnId, request: &RmRequest) -> Result<(), String> {
        let named = match request {
            RmRequest::Heartbeat { id, .. }
            | RmRequest::AddBackup { id, .. }
            | RmRequest::RemoveBackup { id, .. }
            | RmRequest::Resign { id, .. } => id,
            RmRequest::Status { .. } => return Ok(()),
        };
        match self.conns.get(&conn) {
            Some(Some(proven)) if proven == named => Ok(()),
            Some(Some(proven)) => Err(format!("this connection is {proven}, not {named}")),
            _ => Err(format!(
                "this connection is an operator's tool, not router {named}"
            )),
        }
    }

    fn handle_request(&mut self, now: Instant, conn: ConnId, request: RmRequest) {
        if let Err(message) = self.check_identity(conn, &request) {
            let code = ErrorCode::Unauthorized;
            return self.reply(conn, RmReply::Error { code, message });
        }
        match request {
            RmRequest::Heartbeat {
                id,
                addr,
                cluster_addr,
                incarnation,
                state_id,
                epoch: _,
                lsn,
                may_lead,
                beat,
            } => {
                if let Err(message) = check_addr(&addr).and_then(|()| check_addr(&cluster_addr)) {
                    let code = ErrorCode::BadFrame;
                    return self.reply(conn, RmReply::Error { code, message });
                }
                let addrs = Addrs { addr, cluster_addr };
                let life = Life {
                    incarnation,
                    state_id,
                };
                self.handle_heartbeat(now, conn, id, addrs, life, lsn, may_lead);
                let config = self.current.clone();
                self.reply(conn, RmReply::Heard { beat, config });
            }
            RmRequest::AddBackup { id, epoch, backup } => {
                match self.check_primary(&id, epoch) {
                    Err((code, message)) => self.reply(conn, RmReply::Error { code, message }),
                    Ok(()) if self.latest().candidates.iter().any(|m| m.id == backup) => {
                        let mut next = self.next_configuration();
                        let position = next.candidates.iter().position(|m| m.id == backup);
                        let member = next.candidates.remove(position.expect("checked above"));
                        next.backups.push(member);
                        self.propose(next);
                    }
                    Ok(()) => {
                        let message = format!("{backup} is not a candidate");
                        let code = ErrorCode::BadFrame;
                        self.reply(conn, RmReply::Error { code, message });
                    }
                }
                self.reply_config(conn);
            }
            RmRequest::RemoveBackup { id, epoch, backup } => {
                match self.check_primary(&id, epoch) {
                    Err((code, message)) => self.reply(conn, RmReply::Error { code, message }),
                    Ok(()) if self.latest().is_backup(&backup) && self.latest().backups.len() > 1 => {
                        let mut next = self.next_configuration();
                        let position = next.backups.iter().position(|m| m.id == backup);
                        let member = next.backups.remove(position.expect("checked above"));
                        next.candidates.push(member);
                        self.propose(next);
                    }
                    Ok(()) => {}
                }
                self.reply_config(conn);
            }
            RmRequest::Resign { id, epoch } => {
                match self.check_primary(&id, epoch) {
                    Err((code, message)) => self.reply(conn, RmReply::Error { code, message }),
                    // Only if a backup the RM hears can take over; otherwise
                    // the primary stays, waiting for its backups.
                    Ok(()) => self.fail_over(now, OldPrimary::HoldsState),
                }
                self.reply_config(conn);
            }
            RmRequest::Status { req } => {
                let members = self
                    .members
                    .iter()
                    .map(|(id, m)| MemberStatus {
                        id: id.clone(),
                        addr: m.addr.clone(),
                        role: role_name(&self.current, id).to_owned(),
                        lsn: m.lsn,
                        last_heartbeat_ms: m
                            .heard
                            .then(|| now.saturating_duration_since(m.last_heartbeat).as_millis() as u64),
                    })
                    .collect();
                let config = self.current.clone();
                self.reply(conn, RmReply::Status { req, config, members });
            }
        }
    }

    /// Accepts a request only from the primary of the latest epoch; the
    /// refusal is the error to answer with.
    fn check_primary(&self, id: &ReplicaId, epoch: Epoch) -> Result<(), (ErrorCode, String)> {
        let latest = self.latest();
        if epoch != latest.epoch {
            let message = format!("epoch {epoch} is not the current one, {}", latest.epoch);
            return Err((ErrorCode::StaleEpoch, message));
        }
        if !latest.is_primary(id) {
            let message = format!("{id} is not the primary of epoch {epoch}");
            return Err((ErrorCode::NotPrimary, message));
        }
        Ok(())
    }

    fn reply_config(&mut self, conn: ConnId) {
        let config = self.current.clone();
        self.reply(conn, RmReply::Config { config });
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_heartbeat(
        &mut self,
        now: Instant,
        conn: ConnId,
        id: ReplicaId,
        addrs: Addrs,
        life: Life,
        lsn: Lsn,
        may_lead: bool,
    ) {
        let Life {
            incarnation,
            state_id,
        } = life;
        let known = self.members.get(&id);
        let restarted = known
            .and_then(|m| m.incarnation)
            .is_some_and(|known| known != incarnation);
        let kept_state = state_id != 0 && known.and_then(|m| m.state_id) == Some(state_id);
        let member = self.members.entry(id.clone()).or_insert_with(|| MemberState {
            addr: addrs.addr.clone(),
            cluster_addr: addrs.cluster_addr.clone(),
            incarnation: None,
            state_id: None,
            lsn,
            last_heartbeat: now,
            heard: true,
            conn: None,
        });
        member.addr.clone_from(&addrs.addr);
        member.cluster_addr.clone_from(&addrs.cluster_addr);
        member.incarnation = Some(incarnation);
        member.state_id = Some(state_id).filter(|s| *s != 0);
        member.lsn = lsn;
        member.last_heartbeat = now;
        member.heard = true;
        member.conn = Some(conn);

        let latest = self.latest();
        if restarted {
            self.handle_restart(now, &id, kept_state);
            if self.proposed.is_none() {
                // A restarted candidate keeps its place; the configuration
                // still records its new life, so a later restart is seen.
                let mut next = self.next_configuration();
                record_member(&mut next, &id, &life, &addrs);
                if next.find(&id).is_some() {
                    self.propose(next);
                }
            } else if let Some(proposed) = &mut self.proposed {
                record_member(proposed, &id, &life, &addrs);
            }
        } else if latest.primary.is_none() && latest.is_backup(&id) {
            // The role was withdrawn from a restarted primary: the first
            // backup that checks in takes it.
            self.fail_over(now, OldPrimary::LostState);
        } else if latest.find(&id).is_none() {
            let mut next = self.next_configuration();
            let member = Member {
                id,
                addr: addrs.addr,
                cluster_addr: addrs.cluster_addr,
                incarnation,
                state_id,
            };
            if next.primary.is_none() && next.backups.is_empty() && may_lead {
                next.primary = Some(member);
            } else {
                next.candidates.push(member);
            }
            self.propose(next);
        } else if self.proposed.is_none()
            && latest.find(&id).is_some_and(|m| {
                m.addr != addrs.addr || m.cluster_addr != addrs.cluster_addr || m.state_id != state_id
            })
        {
            // Its entry predates the cluster address or the storage
            // identity, or it moved.
            let mut next = self.next_configuration();
            record_member(&mut next, &id, &life, &addrs);
            self.propose(next);
        }
    }

    /// A member came back with a new incarnation, with its state
    /// (`kept_state`) or without it.
    fn handle_restart(&mut self, now: Instant, id: &ReplicaId, kept_state: bool) {
        let latest = self.latest();
        if latest.is_primary(id) && kept_state {
            if !self.restarted_primary_keeps_role() {
                self.fail_over(now, OldPrimary::Restarted);
            }
        } else if latest.is_primary(id) {
            self.fail_over(now, OldPrimary::LostState);
            if self.restarted_primary_keeps_role() {
                return;
            }
            if self.latest().is_primary(id) {
                // No backup to promote yet: withdraw the role rather than
                // let an empty router serve, or ship its emptiness.
                let mut next = self.next_configuration();
                next.candidates.extend(next.primary.take());
                self.propose(next);
            }
        } else if latest.is_backup(id) && !kept_state {
            let mut next = self.next_configuration();
            let position = next.backups.iter().position(|m| m.id == *id);
            let member = next.backups.remove(position.expect("checked above"));
            next.candidates.push(member);
            self.propose(next);
        }
    }

    /// Whether the planted bug `demote_unheard_backups` is on (never, in
    /// production builds).
    fn demotes_unheard_backups(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        return self.config.bugs.demote_unheard_backups;
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

    /// Replaces the primary with the promotable backup that has the highest
    /// LSN — or, when the primary restarted with its state, the one with the
    /// highest LSN among those backups and the primary itself, named again
    /// in a new epoch. Backups that are not alive become candidates — unless
    /// that would leave the new primary fewer backups than the minimum: then
    /// they stay backups, and so does the old primary if it still holds its
    /// state (it was silent or resigned, or restarted with it). Such a
    /// primary commits nothing until one of them has caught up, so keeping
    /// them costs nothing, and they hold every committed change: if the new
    /// primary dies too, one of them can be promoted. Otherwise the old
    /// primary becomes a candidate.
    fn fail_over(&mut self, now: Instant, old_primary: OldPrimary) {
        let latest = self.latest();
        let itself = latest
            .primary
            .iter()
            .filter(|_| old_primary == OldPrimary::Restarted);
        let chosen = latest
            .backups
            .iter()
            .chain(itself)
            .filter(|m| self.is_promotable(&m.id, now))
            .max_by_key(|m| {
                (
                    self.members.get(&m.id).map_or(Lsn(0), |s| s.lsn),
                    std::cmp::Reverse(m.id.clone()),
                )
            })
            .cloned();
        let Some(chosen) = chosen else {
            return;
        };
        let mut next = self.next_configuration();
        let old = next.primary.replace(chosen.clone()).filter(|m| m.id != chosen.id);
        let (alive, dead): (Vec<Member>, Vec<Member>) = next
            .backups
            .drain(..)
            .filter(|m| m.id != chosen.id)
            .partition(|m| self.is_alive(&m.id, now));
        next.backups = alive;
        if next.backups.len() < next.min_backups && !self.demotes_unheard_backups() {
            next.backups.extend(dead);
        } else {
            next.candidates.extend(dead);
        }
        let keep_old = next.backups.len() < next.min_backups
            && old_primary != OldPrimary::LostState
            && !self.demotes_unheard_backups();
        if keep_old {
            next.backups.extend(old);
        } else {
            next.candidates.extend(old);
        }
        next.candidates.retain(|m| m.id != chosen.id);
        self.propose(next);
    }

    fn broadcast(&mut self) {
        let conns: Vec<ConnId> = self.members.values().filter_map(|m| m.conn).collect();
        for conn in conns {
            self.reply_config(conn);
        }
    }
}

/// Whether the primary being replaced still holds its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OldPrimary {
    /// It fell silent, or resigned: its state is intact.
    HoldsState,
    /// It restarted with its state (the same storage): it may be promoted
    /// again, in a new epoch.
    Restarted,
    /// It restarted without its state (or is gone): whatever it held is
    /// lost.
    LostState,
}

/// One life of a router: its process, and the storage its state is on.
struct Life {
    incarnation: u64,
    state_id: u64,
}

/// The addresses a router announces.
struct Addrs {
    addr: String,
    cluster_addr: String,
}

/// Records in `config` that `id` now runs as `life` at `addrs`.
fn record_member(config: &mut Configuration, id: &ReplicaId, life: &Life, addrs: &Addrs) {
    let members = config
        .primary
        .iter_mut()
        .chain(&mut config.backups)
        .chain(&mut config.candidates);
    for member in members.filter(|m| m.id == *id) {
        member.incarnation = life.incarnation;
        member.state_id = life.state_id;
        member.addr.clone_from(&addrs.addr);
        member.cluster_addr.clone_from(&addrs.cluster_addr);
    }
}

/// The role of `id` in `config`, as `peerlink status` shows it.
fn role_name(config: &Configuration, id: &ReplicaId) -> &'static str {
    if config.is_primary(id) {
        "primary"
    } else if config.is_backup(id) {
        "backup"
    } else if config.candidates.iter().any(|m| m.id == *id) {
        "candidate"
    } else {
        "outside"
    }
}

impl Machine for ReplicaManager {
    type Input = RmInput;
    type Output = RmOutput;

    fn handle(&mut self, now: Instant, input: RmInput) {
        match input {
            RmInput::Connected { conn, id } => {
                self.conns.insert(conn, id);
            }
            RmInput::Request(conn, request) => {
                if self.conns.contains_key(&conn) {
                    self.handle_request(now, conn, request);
                }
            }
            RmInput::Malformed(conn, error) => {
                if self.conns.contains_key(&conn) {
                    let (code, message) = (error.code, error.message);
                    self.reply(conn, RmReply::Error { code, message });
                }
            }
            RmInput::Disconnected(conn) => {
                if let Some(Some(id)) = self.conns.remove(&conn) {
                    if let Some(m) = self.members.get_mut(&id).filter(|m| m.conn == Some(conn)) {
                        m.conn = None;
                    }
                }
            }
            RmInput::Persisted(epoch) => {
                if self.proposed.as_ref().is_some_and(|p| p.epoch == epoch) {
                    self.current = self.proposed.take().expect("checked above");
                    self.broadcast();
                }
            }
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_some_and(|t| t <= now) {
            self.fail_over(now, OldPrimary::HoldsState);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        // While a new configuration is being persisted, wait for it: it may
        // already replace the primary.
        if self.proposed.is_some() {
            return None;
        }
        let primary = self.current.primary.as_ref()?;
        let deadline = self.members.get(&primary.id)?.last_heartbeat + self.config.failure_timeout;
        // A failover needs a backup still promotable when the primary is
        // declared dead; without one, the next heartbeat re-arms the timer.
        let last_backup_promotable = self
            .current
            .backups
            .iter()
            .filter_map(|m| self.members.get(&m.id))
            .filter(|s| s.heard)
            .map(|s| s.last_heartbeat + self.config.failure_timeout / 2)
            .max()?;
        (last_backup_promotable > deadline).then_some(deadline)
    }

    fn poll_output(&mut self) -> Option<RmOutput> {
        self.outputs.pop_front()
    }
}
