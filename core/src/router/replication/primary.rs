//! The primary's side of replication: taking and giving up the role, the
//! commit point, the lease, and the follower streams it serves.

use std::time::Instant;

use super::{Link, LinkStatus, Outgoing, Replication, Role, Stream, CHECKPOINT_WINDOW};
use crate::ids::{ConnId, Epoch, Lsn, ReplicaId};
use crate::router::checkpoint::PART_BYTES;
use crate::router::{Router, RouterOutput};
use crate::wire::cluster::{FollowerFrame, PrimaryFrame};
use crate::wire::ServerFrame;

impl Router {
    /// Starts serving: nothing is committed until every backup has this
    /// router's state.
    pub(in crate::router) fn become_primary(&mut self, now: Instant) {
        let applied = self.outbox.applied;
        let durable = self.durable_lsn();
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
        self.outbox.committed = r.commit_point(durable, ignore_minimum).unwrap_or(Lsn(0));
        self.outbox
            .emit_now(RouterOutput::Promoted { epoch, lsn: applied });
        self.report_minimum();
    }

    /// Moves the commit point as far as this router's durable state, the
    /// followers' acknowledgements and the configuration's minimum allow.
    pub(in crate::router) fn commit_up_to(&mut self) {
        let ignore_minimum = self.commits_below_minimum();
        let durable = self.durable_lsn();
        let point = self
            .replication
            .as_ref()
            .and_then(|r| r.commit_point(durable, ignore_minimum));
        if let Some(point) = point {
            self.commit_to(point);
        }
    }

    /// Tells the driver, when the primary has too few backups to commit.
    pub(in crate::router) fn report_minimum(&mut self) {
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
    pub(in crate::router) fn commits_below_minimum(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        return self.config.bugs.commit_below_min_backups;
        #[cfg(not(feature = "planted-bugs"))]
        false
    }

    /// The primary lost its lease: it stops serving (clients are sent to
    /// try other routers) until the RM answers it again in this epoch.
    pub(in crate::router) fn suspend(&mut self) {
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
    pub(in crate::router) fn step_down(&mut self) {
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
        self.presence.clear();
        self.deadlines.clear();
        if let Some(r) = self.replication_mut() {
            r.streams.clear();
            r.log.clear();
            r.behind_since.clear();
        }
    }

    /// A follower's frame, on the primary. Only a connection that proved to
    /// be router `id` may follow as `id`, and only a backup or candidate of
    /// the primary's configuration may follow at all.
    pub(in crate::router) fn handle_follower(&mut self, now: Instant, conn: ConnId, frame: FollowerFrame) {
        let applied = self.outbox.applied;
        let Some(proven) = self.conns.get(&conn).and_then(|c| c.member.clone()) else {
            return;
        };
        let Some(r) = self.replication.as_mut() else {
            return self.refuse_follower(conn);
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
                let member =
                    r.configuration.is_backup(&id) || r.configuration.candidates.iter().any(|m| m.id == id);
                if epoch > r.epoch() || proven.as_ref() != Some(&id) || !member {
                    return self.refuse_follower(conn);
                }
                if let Some(c) = self.conns.get_mut(&conn) {
                    if let Some(deadline) = c.deadline.take() {
                        self.deadlines.remove(&(deadline, conn));
                    }
                }
                let r = self.replication.as_mut().expect("replicated");
                r.backup_heard.insert(id.clone(), now);
                let log_start = r.log.front().map_or(applied, |(l, _)| Lsn(l.0 - 1));
                // A follower whose state came from this primary's own stream
                // holds exactly this primary's changes up to `lsn`.
                let from_me = stream_epoch >= term && lsn >= log_start && lsn <= applied;
                let acked = if from_me { lsn } else { Lsn(0) };
                if let Some(old) = r.streams.insert(
                    id.clone(),
                    Stream {
                        conn,
                        acked,
                        started: now,
                        heard: now,
                        // Until it says otherwise, it may hear the RM.
                        rm_live: true,
                        checkpoint: None,
                    },
                ) {
                    if old.conn != conn {
                        self.conns.remove(&old.conn);
                        self.outbox.emit_now(RouterOutput::Close(old.conn));
                    }
                }
                let r = self.replication.as_mut().expect("replicated");
                if from_me {
                    r.replay_after(lsn, conn, &mut self.outbox);
                } else {
                    self.start_checkpoint(&id);
                }
                let r = self.replication.as_mut().expect("replicated");
                r.track_lag(now, applied);
                self.commit_up_to();
            }
            FollowerFrame::CheckpointReceived { parts, .. } => {
                let Some((id, stream)) = r.streams.iter_mut().find(|(_, s)| s.conn == conn) else {
                    return;
                };
                let id = id.clone();
                stream.heard = now;
                r.backup_heard.insert(id.clone(), now);
                if let Some(c) = stream.checkpoint.as_mut() {
                    c.received = c.received.max(parts.min(c.sent));
                }
                self.pump_checkpoint(&id);
            }
            FollowerFrame::Applied { lsn, rm_live, .. } => {
                let Some((id, stream)) = r.streams.iter_mut().find(|(_, s)| s.conn == conn) else {
                    return;
                };
                let id = id.clone();
                stream.heard = now;
                stream.rm_live = rm_live;
                r.backup_heard.insert(id.clone(), now);
                // Until a follower has applied its checkpoint, what it says
                // it applied is its old state's, not this primary's.
                if let Some(c) = &stream.checkpoint {
                    if !c.ended || lsn < c.lsn {
                        return;
                    }
                    stream.checkpoint = None;
                }
                if lsn > stream.acked {
                    stream.acked = lsn.min(applied);
                    r.behind_since.remove(&id);
                }
                r.track_lag(now, applied);
                self.commit_up_to();
                let r = self.replication.as_mut().expect("replicated");
                r.propose_caught_up(self.outbox.committed, false, &mut self.outbox);
            }
        }
    }

    /// Starts sending follower `id` the whole state, as of the last change
    /// applied, in parts.
    fn start_checkpoint(&mut self, id: &ReplicaId) {
        let lsn = self.outbox.applied;
        let parts = self.state.clone().into_parts(PART_BYTES);
        let Some(r) = self.replication.as_mut() else {
            return;
        };
        let epoch = r.epoch();
        let Some(stream) = r.streams.get_mut(id) else {
            return;
        };
        stream.acked = Lsn(0);
        stream.checkpoint = Some(Outgoing {
            lsn,
            parts,
            sent: 0,
            received: 0,
            ended: false,
        });
        let frame = PrimaryFrame::CheckpointStart { epoch, lsn };
        self.outbox.emit_now(RouterOutput::Replicate(stream.conn, frame));
        self.pump_checkpoint(id);
    }

    /// Sends follower `id` as many parts of its checkpoint as its window
    /// allows; after the last, the end and every change since — or, if the
    /// log no longer holds them all, a new checkpoint.
    fn pump_checkpoint(&mut self, id: &ReplicaId) {
        let applied = self.outbox.applied;
        let Some(r) = self.replication.as_mut() else {
            return;
        };
        let epoch = r.epoch();
        let Some(stream) = r.streams.get_mut(id) else {
            return;
        };
        let conn = stream.conn;
        let Some(c) = stream.checkpoint.as_mut().filter(|c| !c.ended) else {
            return;
        };
        while c.sent - c.received < CHECKPOINT_WINDOW {
            let Some(part) = c.parts.pop_front() else {
                break;
            };
            let frame = PrimaryFrame::CheckpointPart {
                epoch,
                n: c.sent,
                part,
            };
            c.sent += 1;
            self.outbox.emit_now(RouterOutput::Replicate(conn, frame));
        }
        if !c.parts.is_empty() {
            return;
        }
        let lsn = c.lsn;
        let log_start = r.log.front().map_or(applied, |(l, _)| Lsn(l.0 - 1));
        if lsn < log_start {
            // The changes since the checkpoint fell off the log while it
            // was sent: send one as of now instead.
            return self.start_checkpoint(id);
        }
        c.ended = true;
        let frame = PrimaryFrame::CheckpointEnd {
            epoch,
            lsn,
            parts: c.sent,
        };
        self.outbox.emit_now(RouterOutput::Replicate(conn, frame));
        r.replay_after(lsn, conn, &mut self.outbox);
    }

    pub(in crate::router) fn refuse_follower(&mut self, conn: ConnId) {
        let epoch = self.replication.as_ref().map_or(Epoch(0), Replication::epoch);
        self.forget(conn);
        self.outbox
            .emit_now(RouterOutput::Replicate(conn, PrimaryFrame::NotPrimary { epoch }));
        self.outbox.emit_now(RouterOutput::Close(conn));
    }
}
