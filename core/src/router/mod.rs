//! The router: registrations, direct and group messages, mailboxes, receipts.
//!
//! A [`Router`] speaks to clients over connections that its driver numbers
//! with [`ConnId`]s. It validates each request, turns the valid ones into
//! [`state::Change`]s applied to its durable state, and answers. Mailbox items
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

mod state;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::ids::{ConnId, DeliveryId, GroupName, PeerId, ReqId, Secret, Seq, Target};
use crate::machine::Machine;
use crate::wire::{
    json_string_len, ClientFrame, ErrorCode, FrameError, ServerFrame, DEFAULT_MAX_FRAME_LEN, FRAME_OVERHEAD,
    MAX_IN_FLIGHT,
};
use state::{hash_secret, Item};
pub use state::{Change, State};

/// Tunables of a [`Router`]. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// A connection that sends nothing for this long is closed with
    /// `idle_timeout`. Default 60 s; clients ping every 10 s.
    pub idle_timeout: Duration,
    /// The most messages one peer's mailbox holds; a message that would
    /// exceed it is refused with `mailbox_full`. Default 10,000.
    pub mailbox_limit: usize,
    /// The most mailbox items pushed to a session and not yet acknowledged.
    /// Default 256.
    pub push_window: usize,
    /// The largest frame, in bytes, newline included. A message whose frame
    /// to a recipient would be larger is refused with `body_too_large`.
    /// Default [`DEFAULT_MAX_FRAME_LEN`].
    pub max_frame_len: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(60),
            mailbox_limit: 10_000,
            push_window: 256,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
        }
    }
}

/// What a [`Router`] reacts to.
#[derive(Debug, Clone)]
pub enum RouterInput {
    /// A client connected; its frames will carry this ID.
    Connected(ConnId),
    /// A well-formed frame arrived on a connection.
    Frame(ConnId, ClientFrame),
    /// A line arrived that is not a valid frame.
    Malformed(ConnId, FrameError),
    /// The connection is gone (closed by the peer, or failed).
    Disconnected(ConnId),
}

/// What a [`Router`] asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouterOutput {
    /// Write a frame to a connection.
    Send(ConnId, ServerFrame),
    /// Close a connection once the frames queued for it are written. The
    /// router has already forgotten it; a later `Disconnected` for it is
    /// ignored.
    Close(ConnId),
}

#[derive(Debug)]
struct Conn {
    peer: Option<PeerId>,
    deadline: Instant,
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
    outputs: VecDeque<RouterOutput>,
}

impl Router {
    /// A router with no peers. `seed` drives the salts it draws for secrets.
    pub fn new(config: RouterConfig, seed: u64) -> Self {
        Self {
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            state: State::default(),
            conns: BTreeMap::new(),
            sessions: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            outputs: VecDeque::new(),
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

    /// Whether every mailbox is empty: every message and receipt has been
    /// acknowledged by its owner.
    pub fn mailboxes_empty(&self) -> bool {
        self.state.peers.values().all(|r| r.mailbox.is_empty())
    }

    /// Whether `peer` has a live session.
    pub fn is_online(&self, peer: &PeerId) -> bool {
        self.sessions.contains_key(peer)
    }

    fn send(&mut self, conn: ConnId, frame: ServerFrame) {
        self.outputs.push_back(RouterOutput::Send(conn, frame));
    }

    fn error(&mut self, conn: ConnId, req: Option<ReqId>, code: ErrorCode, message: String) {
        self.send(conn, ServerFrame::Error { req, code, message });
    }

    fn apply(&mut self, change: Change) {
        self.state.apply(&change);
    }

    fn touch(&mut self, conn: ConnId, now: Instant) {
        let deadline = now + self.config.idle_timeout;
        if let Some(c) = self.conns.get_mut(&conn) {
            self.deadlines.remove(&(c.deadline, conn));
            c.deadline = deadline;
            self.deadlines.insert((deadline, conn));
        }
    }

    /// Forgets a connection and, if it carried one, its session.
    fn forget(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.deadlines.remove(&(c.deadline, conn));
        if let Some(peer) = c.peer {
            if self.sessions.get(&peer).is_some_and(|s| s.conn == conn) {
                self.sessions.remove(&peer);
            }
        }
    }

    /// Tells a connection why, then closes it.
    fn close(&mut self, conn: ConnId, code: ErrorCode, message: String) {
        self.send(conn, ServerFrame::Closing { code, message });
        self.outputs.push_back(RouterOutput::Close(conn));
        self.forget(conn);
    }

    fn session_peer(&self, conn: ConnId) -> Option<PeerId> {
        self.conns.get(&conn).and_then(|c| c.peer.clone())
    }

    fn handle_frame(&mut self, conn: ConnId, frame: ClientFrame) {
        match frame {
            ClientFrame::Register { req, peer, secret } => {
                return self.handle_register(conn, req, peer, secret)
            }
            ClientFrame::Ping { req } => return self.send(conn, ServerFrame::Pong { req }),
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
            ClientFrame::JoinGroup { req, group } => self.handle_join(conn, me, req, group),
            ClientFrame::LeaveGroup { req, group } => self.handle_leave(conn, me, req, group),
            ClientFrame::Ack { delivery } => self.handle_ack(me, delivery),
        }
    }

    fn handle_register(&mut self, conn: ConnId, req: ReqId, peer: PeerId, secret: Secret) {
        let Some(current) = self.conns.get(&conn) else {
            return;
        };
        if let Some(other) = current.peer.as_ref().filter(|p| **p != peer) {
            let message = format!("this connection is registered as {other}");
            self.error(conn, Some(req), ErrorCode::AlreadyRegistered, message);
            return;
        }
        if self.state.groups.contains_key(peer.as_str()) {
            let message = format!("{peer} is the name of a group");
            self.error(conn, Some(req), ErrorCode::NameTaken, message);
            return;
        }
        match self.state.peers.get(&peer) {
            Some(record) if !record.verify(&secret) => {
                let message = format!("{peer} is registered with another secret");
                self.error(conn, Some(req), ErrorCode::WrongSecret, message);
                return;
            }
            Some(_) => {}
            None => {
                let mut salt = [0u8; 16];
                self.rng.fill_bytes(&mut salt);
                let secret_hash = hash_secret(&salt, &secret);
                self.apply(Change::Registered {
                    peer: peer.clone(),
                    salt,
                    secret_hash,
                });
            }
        }
        if let Some(old) = self.sessions.get(&peer).map(|s| s.conn).filter(|c| *c != conn) {
            let message = format!("a newer session registered as {peer}");
            self.close(old, ErrorCode::Replaced, message);
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.peer = Some(peer.clone());
        }
        self.sessions.entry(peer.clone()).or_insert(Session {
            conn,
            next_push: DeliveryId(0),
            in_flight: 0,
        });
        let next_seq = self.state.peers[&peer].last_seq.next();
        self.send(
            conn,
            ServerFrame::Registered {
                req,
                peer: peer.clone(),
                next_seq,
            },
        );
        self.push(&peer);
    }

    fn handle_send(&mut self, conn: ConnId, me: PeerId, req: ReqId, seq: Seq, to: Target, body: String) {
        let record = &self.state.peers[&me];
        if seq == Seq(0) {
            let message = "sequence numbers start at 1".into();
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
                    from: me,
                    seq,
                    to: to.clone(),
                    recipients: recipients.clone(),
                    body: Arc::from(body),
                });
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
        for recipient in &recipients {
            if self.state.peers[recipient].queued_messages >= self.config.mailbox_limit {
                let message = format!(
                    "the mailbox of {recipient} is full ({} messages)",
                    self.config.mailbox_limit
                );
                return Err((ErrorCode::MailboxFull, message));
            }
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
        } else {
            self.apply(Change::GroupCreated { group, creator: me });
        }
        self.send(conn, ServerFrame::Ok { req });
    }

    fn handle_join(&mut self, conn: ConnId, me: PeerId, req: ReqId, group: GroupName) {
        let Some(existing) = self.state.groups.get(&group) else {
            self.error(
                conn,
                Some(req),
                ErrorCode::UnknownGroup,
                format!("no group is named {group}"),
            );
            return;
        };
        if !existing.members.contains(&me) {
            self.apply(Change::Joined { group, peer: me });
        }
        self.send(conn, ServerFrame::Ok { req });
    }

    fn handle_leave(&mut self, conn: ConnId, me: PeerId, req: ReqId, group: GroupName) {
        let Some(existing) = self.state.groups.get(&group) else {
            self.error(
                conn,
                Some(req),
                ErrorCode::UnknownGroup,
                format!("no group is named {group}"),
            );
            return;
        };
        if existing.members.contains(&me) {
            self.apply(Change::Left { group, peer: me });
        }
        self.send(conn, ServerFrame::Ok { req });
    }

    fn handle_ack(&mut self, me: PeerId, delivery: DeliveryId) {
        let record = &self.state.peers[&me];
        let Some(item) = record.mailbox.get(&delivery) else {
            return; // Already acknowledged: acks are idempotent.
        };
        let sender = match item {
            Item::Message { from, .. } => Some(from.clone()),
            Item::Receipt { .. } => None,
        };
        self.apply(Change::Acked {
            peer: me.clone(),
            delivery,
        });
        if let Some(session) = self.sessions.get_mut(&me) {
            if delivery < session.next_push {
                session.in_flight = session.in_flight.saturating_sub(1);
            }
        }
        self.push(&me);
        if let Some(sender) = sender {
            self.push(&sender);
        }
    }

    /// Pushes mailbox items to `peer`'s session, up to the push window.
    fn push(&mut self, peer: &PeerId) {
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
            self.outputs.push_back(RouterOutput::Send(session.conn, frame));
            session.in_flight += 1;
            session.next_push = delivery.next();
        }
    }
}

impl Machine for Router {
    type Input = RouterInput;
    type Output = RouterOutput;

    fn handle(&mut self, now: Instant, input: RouterInput) {
        match input {
            RouterInput::Connected(conn) => {
                let deadline = now + self.config.idle_timeout;
                self.conns.insert(conn, Conn { peer: None, deadline });
                self.deadlines.insert((deadline, conn));
            }
            RouterInput::Frame(conn, frame) => {
                if !self.conns.contains_key(&conn) {
                    return;
                }
                self.touch(conn, now);
                self.handle_frame(conn, frame);
            }
            RouterInput::Malformed(conn, error) => {
                if !self.conns.contains_key(&conn) {
                    return;
                }
                self.touch(conn, now);
                self.send(conn, error.to_frame());
            }
            RouterInput::Disconnected(conn) => self.forget(conn),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(deadline, conn)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            let message = format!(
                "nothing received for {} s",
                self.config.idle_timeout.as_secs_f64()
            );
            self.close(conn, ErrorCode::IdleTimeout, message);
        }
    }

    fn poll_output(&mut self) -> Option<RouterOutput> {
        self.outputs.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|(deadline, _)| *deadline)
    }
}
