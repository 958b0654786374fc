//! The router's side of the cluster: its links to the replica manager and
//! to its primary, the heartbeat timer, and the roles it takes from each
//! configuration the replica manager sends.

use std::time::{Duration, Instant};

use super::{Link, LinkStatus, Replication, Role, SILENT_BEATS};
use crate::ids::{ConnId, ReplicaId};
use crate::router::{Router, RouterOutput};
use crate::wire::cluster::{Configuration, FollowerFrame, PrimaryFrame, RmReply, RmRequest};

impl Router {
    pub(in crate::router) fn replication_mut(&mut self) -> Option<&mut Replication> {
        self.replication.as_mut()
    }

    /// Drops a link's connection and schedules a reconnect at `retry_at`.
    pub(in crate::router) fn restart_link(&mut self, link: Link, retry_at: Instant) {
        let Some(r) = self.replication_mut() else {
            return;
        };
        if link == Link::Primary {
            r.incoming = None;
        }
        let state = r.link_mut(link);
        if matches!(state.status, LinkStatus::Up | LinkStatus::Connecting) {
            self.outbox.emit_now(RouterOutput::DropLink(link));
        }
        if let Some(r) = self.replication_mut() {
            r.link_mut(link).status = LinkStatus::Down { retry_at };
        }
    }

    pub(in crate::router) fn handle_link_up(&mut self, now: Instant, link: Link, attempt: u64) {
        // A follower resumes from what it could not lose, so the primary
        // counts no copy that is not durable.
        let durable = self.durable_lsn();
        let Some(r) = self.replication_mut() else {
            return;
        };
        let state = r.link_mut(link);
        if state.attempt != attempt || state.status != LinkStatus::Connecting {
            return;
        }
        state.status = LinkStatus::Up;
        state.heard = now;
        if link == Link::Primary {
            r.incoming = None;
        }
        match link {
            Link::Rm => r.next_heartbeat = now,
            Link::Primary => {
                let frame = FollowerFrame::Follow {
                    id: r.config.id.clone(),
                    epoch: r.epoch(),
                    lsn: durable,
                    stream_epoch: r.stream_epoch,
                };
                self.outbox.emit_now(RouterOutput::ToPrimary(frame));
            }
        }
    }

    pub(in crate::router) fn handle_link_down(&mut self, now: Instant, link: Link, attempt: u64) {
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

    pub(in crate::router) fn handle_replication_timeout(&mut self, now: Instant) {
        let applied = self.outbox.applied;
        let durable = self.durable_lsn();
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
                    Role::Follower { primary } => primary.cluster_addr.clone(),
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
                    cluster_addr: r.config.cluster_addr.clone(),
                    incarnation: r.config.incarnation,
                    state_id: r.config.state_id,
                    epoch: r.epoch(),
                    lsn: durable,
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

    pub(in crate::router) fn handle_rm_reply(&mut self, now: Instant, reply: RmReply) {
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
                // An answer that took longer than the lease renews nothing:
                // a suspended primary resumes only with a lease that holds,
                // or on a slow network it would flap between the two.
                let renews = r.rm_live(now);
                self.adopt(now, config, renews);
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
    pub(in crate::router) fn adopt(&mut self, now: Instant, config: Configuration, renews: bool) {
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
                self.commit_up_to();
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

    /// Whether the planted bug `primary_ignores_lease` is on (never, in
    /// production builds).
    pub(in crate::router) fn ignores_lease(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        return self.config.bugs.primary_ignores_lease;
        #[cfg(not(feature = "planted-bugs"))]
        false
    }

    /// Whether the planted bug `restarted_primary_keeps_role` is on (never,
    /// in production builds).
    pub(in crate::router) fn restarted_primary_keeps_role(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        return self.config.bugs.restarted_primary_keeps_role;
        #[cfg(not(feature = "planted-bugs"))]
        false
    }

    /// Whether the planted bug `backup_accepts_old_epoch` is on (never, in
    /// production builds).
    pub(in crate::router) fn accepts_old_epoch(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        return self.config.bugs.backup_accepts_old_epoch;
        #[cfg(not(feature = "planted-bugs"))]
        false
    }
}
