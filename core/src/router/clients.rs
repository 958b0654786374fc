//! Handling of client requests: registration, messages, groups, acks, and
//! pushing mailbox items to live sessions.

use std::sync::Arc;
use std::time::Instant;

use super::state::{message_weight, Change, Item};

use super::{Router, RouterOutput};
use crate::ids::{ConnId, DeliveryId, GroupName, PeerId, ReqId, Seq, Target};
use crate::wire::{json_string_len, ClientFrame, ErrorCode, ServerFrame, FRAME_OVERHEAD, MAX_IN_FLIGHT};

impl Router {
    pub(super) fn send(&mut self, conn: ConnId, frame: ServerFrame) {
        self.emit(RouterOutput::Send(conn, frame));
    }

    pub(super) fn error(&mut self, conn: ConnId, req: Option<ReqId>, code: ErrorCode, message: String) {
        self.send(conn, ServerFrame::Error { req, code, message });
    }

    pub(super) fn touch(&mut self, conn: ConnId, now: Instant) {
        let deadline = now + self.config.idle_timeout;
        if let Some(c) = self.conns.get_mut(&conn) {
            if let Some(old) = c.deadline.replace(deadline) {
                self.deadlines.remove(&(old, conn));
                self.deadlines.insert((deadline, conn));
            } else {
                c.deadline = None;
            }
        }
    }

    /// Forgets a connection, its watches and, if it carried one, its
    /// session, telling the session's watchers.
    pub(super) fn forget(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(deadline) = c.deadline {
            self.deadlines.remove(&(deadline, conn));
        }
        self.drop_watches(conn);
        if let Some(peer) = c.peer {
            if self.sessions.get(&peer).is_some_and(|s| s.conn == conn) {
                self.sessions.remove(&peer);
                // The deadline is the last frame's time plus the idle timeout.
                if let Some(deadline) = c.deadline {
                    let last_frame = deadline.checked_sub(self.config.idle_timeout).unwrap_or(deadline);
                    self.presence_changed(&peer, Some(last_frame));
                }
            }
        }
    }

    /// Tells a connection why, then closes it.
    pub(super) fn close(&mut self, conn: ConnId, code: ErrorCode, message: String) {
        self.send(conn, ServerFrame::Closing { code, message });
        self.emit(RouterOutput::Close(conn));
        self.forget(conn);
    }

    pub(super) fn session_peer(&self, conn: ConnId) -> Option<PeerId> {
        self.conns.get(&conn).and_then(|c| c.peer.clone())
    }

    pub(super) fn handle_frame(&mut self, now: Instant, conn: ConnId, frame: ClientFrame) {
        match frame {
            ClientFrame::Register { req, peer, secret } => {
                return self.handle_register(now, conn, req, peer, secret)
            }
            // A pong depends on no change: it goes out at once, even while
            // answers wait for a commit, so a client can tell a live router
            // from a paused one.
            ClientFrame::Ping { req } => {
                return self
                    .outbox
                    .emit_now(RouterOutput::Send(conn, ServerFrame::Pong { req }))
            }
            _ => {}
        }
        let Some(me) = self.session_peer(conn) else {
            let req = frame.req();
            self.error(
                conn,
                req,
                ErrorCode::NotRegistered,
                "register first: send a \"register\" frame".into(),
            );
            return;
        };
        match frame {
            ClientFrame::Register { .. } | ClientFrame::Ping { .. } => unreachable!("handled above"),
            ClientFrame::Send { req, seq, to, body } => self.handle_send(conn, me, req, seq, to, body),
            ClientFrame::CreateGroup { req, group } => self.handle_create(conn, me, req, group),
            ClientFrame::JoinGroup { req, group } => self.handle_membership(conn, me, req, group, true),
            ClientFrame::LeaveGroup { req, group } => self.handle_membership(conn, me, req, group, false),
            ClientFrame::Ack { delivery, through } => self.handle_ack(conn, me, delivery, through),
            ClientFrame::Who { req, name } => self.handle_who(now, conn, req, name),
            ClientFrame::Peers {
                req,
                prefix,
                after,
                limit,
            } => self.handle_peers(conn, req, prefix, after, limit),
            ClientFrame::Groups {
                req,
                prefix,
                after,
                limit,
            } => self.handle_groups(conn, req, prefix, after, limit),
            ClientFrame::Members {
                req,
                group,
                after,
                limit,
            } => self.handle_members(conn, &me, req, group, after, limit),
            ClientFrame::Watch { req, peer } => self.handle_watch(conn, req, peer),
            ClientFrame::Unwatch { req, peer } => self.handle_unwatch(conn, req, peer),
        }
    }

    fn handle_send(&mut self, conn: ConnId, me: PeerId, req: ReqId, seq: Seq, to: Target, body: String) {
        let record = &self.state.peers[&me];
        if seq == Seq(0) {
            let message = "sequence numbers start at 1".into();
            self.error(conn, Some(req), ErrorCode::InvalidSeq, message);
            return;
        }
        if seq == Seq(u64::MAX) {
            let message = format!("sequence numbers must stay below {}", u64::MAX);
            self.error(conn, Some(req), ErrorCode::InvalidSeq, message);
            return;
        }
        // Every seq up to `last_seq` was accepted or refused, never skipped,
        // so one at or below it that was not refused was accepted.
        let expected = record.last_seq.next();
        if seq > expected {
            let message = format!("message {me}#{seq} skips ahead: the next sequence number is {expected}");
            self.error(conn, Some(req), ErrorCode::InvalidSeq, message);
            return;
        }
        if seq <= record.last_seq {
            if let Some(code) = record.rejected.get(&seq).copied() {
                let message = format!("message {me}#{seq} was refused: {code}");
                self.error(conn, Some(req), code, message);
            } else if seq.0 + MAX_IN_FLIGHT <= record.last_seq.0 {
                let message = format!(
                    "message {me}#{seq} is more than {MAX_IN_FLIGHT} behind the newest, {}",
                    record.last_seq
                );
                self.error(conn, Some(req), ErrorCode::InvalidSeq, message);
            } else {
                self.send(conn, ServerFrame::Sent { req, seq, to });
            }
            return;
        }
        match self.recipients(&me, &to, &body) {
            Ok(recipients) => {
                self.apply(Change::Accepted {
                    from: me.clone(),
                    seq,
                    to: to.clone(),
                    recipients: recipients.clone(),
                    body: Arc::from(body),
                });
                #[cfg(feature = "planted-bugs")]
                self.planted_after_accept(&me, seq, &to, &recipients);
                self.send(conn, ServerFrame::Sent { req, seq, to });
                for recipient in &recipients {
                    self.push(recipient);
                }
            }
            Err((code, message)) => {
                self.apply(Change::Rejected { from: me, seq, code });
                self.error(conn, Some(req), code, message);
            }
        }
    }

    /// Who a message from `me` to `to` goes to, or why it cannot be accepted.
    fn recipients(&self, me: &PeerId, to: &Target, body: &str) -> Result<Vec<PeerId>, (ErrorCode, String)> {
        let limit = self.config.max_frame_len.saturating_sub(FRAME_OVERHEAD);
        if json_string_len(body) > limit {
            let message = format!("the body must fit in {limit} bytes as a JSON string");
            return Err((ErrorCode::BodyTooLarge, message));
        }
        let recipients = if self.state.peers.contains_key(to.as_str()) {
            vec![to.as_peer()]
        } else if let Some(group) = self.state.groups.get(to.as_str()) {
            if !group.members.contains(me) {
                return Err((
                    ErrorCode::NotAMember,
                    format!("{me} is not a member of group {to}"),
                ));
            }
            group.members.iter().filter(|m| *m != me).cloned().collect()
        } else {
            return Err((
                ErrorCode::UnknownRecipient,
                format!("no peer or group is named {to}"),
            ));
        };
        let weight = message_weight(me, to, body);
        for recipient in &recipients {
            #[cfg(feature = "planted-bugs")]
            if self.config.bugs.mailbox_drops_oldest {
                break;
            }
            let record = &self.state.peers[recipient];
            if record.queued_messages >= self.config.mailbox_limit {
                let message = format!(
                    "the mailbox of {recipient} is full ({} messages)",
                    self.config.mailbox_limit
                );
                return Err((ErrorCode::MailboxFull, message));
            }
            if record.queued_bytes + weight > self.config.mailbox_bytes {
                let message = format!(
                    "the mailbox of {recipient} is full ({} of its {} bytes used)",
                    record.queued_bytes, self.config.mailbox_bytes
                );
                return Err((ErrorCode::MailboxFull, message));
            }
        }
        let total = weight.saturating_mul(recipients.len());
        if self.state.stored_bytes.saturating_add(total) > self.config.storage_bytes {
            let message = format!(
                "the router's mailboxes are full ({} of {} bytes used)",
                self.state.stored_bytes, self.config.storage_bytes
            );
            return Err((ErrorCode::StorageFull, message));
        }
        Ok(recipients)
    }

    fn handle_create(&mut self, conn: ConnId, me: PeerId, req: ReqId, group: GroupName) {
        if let Some(existing) = self.state.groups.get(&group) {
            if existing.creator != me {
                let message = format!("group {group} already exists");
                self.error(conn, Some(req), ErrorCode::NameTaken, message);
                return;
            }
        } else if self.state.peers.contains_key(group.as_str()) {
            let message = format!("{group} is the ID of a peer");
            self.error(conn, Some(req), ErrorCode::NameTaken, message);
            return;
        } else if let Err(message) = self.check_groups_of(&me) {
            self.error(conn, Some(req), ErrorCode::TooManyGroups, message);
            return;
        } else {
            self.apply(Change::GroupCreated { group, creator: me });
        }
        self.send(conn, ServerFrame::Ok { req });
    }

    /// Refuses a peer that already belongs to (or created) the most groups
    /// one peer may have.
    fn check_groups_of(&self, peer: &PeerId) -> Result<(), String> {
        let count = self.state.groups_of.get(peer).copied().unwrap_or(0);
        if count >= self.config.max_groups_per_peer {
            return Err(format!(
                "{peer} already created or belongs to {count} groups, the most one peer may have"
            ));
        }
        Ok(())
    }

    /// Joins (`join`) or leaves a group; both are idempotent.
    fn handle_membership(&mut self, conn: ConnId, me: PeerId, req: ReqId, group: GroupName, join: bool) {
        let Some(existing) = self.state.groups.get(&group) else {
            let message = format!("no group is named {group}");
            self.error(conn, Some(req), ErrorCode::UnknownGroup, message);
            return;
        };
        match (join, existing.members.contains(&me)) {
            (true, false) => {
                if existing.members.len() >= self.config.max_group_members {
                    let message = format!(
                        "group {group} has {} members, the most a group may have",
                        existing.members.len()
                    );
                    self.error(conn, Some(req), ErrorCode::GroupFull, message);
                    return;
                }
                if existing.creator != me {
                    if let Err(message) = self.check_groups_of(&me) {
                        self.error(conn, Some(req), ErrorCode::TooManyGroups, message);
                        return;
                    }
                }
                self.apply(Change::Joined {
                    group: group.clone(),
                    peer: me.clone(),
                });
                self.membership_changed(&group, &me, true);
            }
            (false, true) => {
                self.apply(Change::Left {
                    group: group.clone(),
                    peer: me.clone(),
                });
                self.membership_changed(&group, &me, false);
            }
            _ => {}
        }
        self.send(conn, ServerFrame::Ok { req });
    }

    /// Acknowledges `delivery`, or every item from `delivery` to `through`,
    /// of those pushed to `me`'s session and still in its mailbox, as one
    /// change. Acknowledging what is gone already is not an error: acks are
    /// idempotent.
    fn handle_ack(&mut self, conn: ConnId, me: PeerId, delivery: DeliveryId, through: Option<DeliveryId>) {
        let last = through.unwrap_or(delivery);
        if last < delivery {
            let message = format!("ack range ends at delivery {last}, before its first, {delivery}");
            self.error(conn, None, ErrorCode::BadFrame, message);
            return;
        }
        let Some(session) = self.sessions.get(&me) else {
            return;
        };
        let record = &self.state.peers[&me];
        let mut acked = record
            .mailbox
            .range(delivery..=last)
            .take_while(|(d, _)| **d < session.next_push);
        let Some((&first, item)) = acked.next() else {
            return;
        };
        let mut count = 1;
        let mut end = first;
        let mut senders: Vec<PeerId> = Vec::new();
        let mut note_sender = |item: &Item| {
            if let Item::Message { from, .. } = item {
                if !senders.contains(from) {
                    senders.push(from.clone());
                }
            }
        };
        note_sender(item);
        for (&d, item) in acked {
            count += 1;
            end = d;
            note_sender(item);
        }
        self.apply(Change::Acked {
            peer: me.clone(),
            delivery: first,
            through: (end > first).then_some(end),
        });
        if let Some(session) = self.sessions.get_mut(&me) {
            session.in_flight = session.in_flight.saturating_sub(count);
        }
        self.push(&me);
        for sender in &senders {
            self.push(sender);
        }
    }

    /// Planted bugs that act right after a message is accepted.
    #[cfg(feature = "planted-bugs")]
    fn planted_after_accept(&mut self, from: &PeerId, seq: Seq, to: &Target, recipients: &[PeerId]) {
        let bugs = self.config.bugs;
        let sender = self.sessions.get(from).map(|s| s.conn);
        for recipient in recipients {
            if let (true, Some(conn)) = (bugs.delivered_on_enqueue, sender) {
                let frame = ServerFrame::Delivered {
                    delivery: DeliveryId(u64::MAX),
                    seq,
                    to: to.clone(),
                    by: recipient.clone(),
                };
                self.send(conn, frame);
            }
            if bugs.mailbox_drops_oldest {
                self.state
                    .planted_drop_oldest(recipient, self.config.mailbox_limit);
            }
        }
    }

    /// Pushes mailbox items to `peer`'s session, up to the push window.
    pub(super) fn push(&mut self, peer: &PeerId) {
        let Some(session) = self.sessions.get_mut(peer) else {
            return;
        };
        let record = &self.state.peers[peer];
        for (delivery, item) in record.mailbox.range(session.next_push..) {
            if session.in_flight >= self.config.push_window {
                break;
            }
            let frame = match item {
                Item::Message { from, seq, to, body } => ServerFrame::Message {
                    delivery: *delivery,
                    from: from.clone(),
                    seq: *seq,
                    to: to.clone(),
                    body: body.to_string(),
                },
                Item::Receipt { seq, to, by } => ServerFrame::Delivered {
                    delivery: *delivery,
                    seq: *seq,
                    to: to.clone(),
                    by: by.clone(),
                },
            };
            self.outbox.emit(RouterOutput::Send(session.conn, frame));
            session.in_flight += 1;
            session.next_push = delivery.next();
        }
    }
}
