//! Registration: claiming an ID, or proving the secret it was claimed with.
//!
//! Secrets are stretched with argon2id ([`secrets`](super::secrets)), which
//! the router asks its driver for. A registration therefore takes two
//! steps: [`Router::handle_register`] checks what it can at once and queues
//! the request; when its turn comes, the router asks for the hash
//! ([`RouterOutput::HashSecret`]); [`Router::handle_secret_hashed`] judges
//! the answer against the state *as it is then* — the connection may have
//! gone, or another registration may have claimed the ID meanwhile.
//!
//! Registrations for one ID are judged one at a time, in arrival order, so
//! the back-off after a wrong secret applies to every guess, however many
//! connections an attacker opens; at most [`MAX_QUEUED_PER_ID`] wait per
//! ID and [`MAX_REGISTRATIONS`] in all, further ones are refused at once.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::time::Instant;

use rand::RngCore;

use super::secrets::{HashJob, KdfParams, SecretHash};
use super::state::Change;
use super::{Guesses, Router, RouterOutput, Session, MAX_GUESS_DELAY, SOURCE_GRACE};
use crate::ids::{ConnId, DeliveryId, PeerId, ReqId, Secret};
use crate::wire::{ErrorCode, ServerFrame};

/// The most registrations of one ID waiting to be judged; more are refused
/// with `too_many_attempts`.
pub const MAX_QUEUED_PER_ID: usize = 4;

/// The most registrations waiting to be judged in all; more are refused
/// with `busy`.
pub const MAX_REGISTRATIONS: usize = 256;

/// One registration request, waiting for its turn or its hash.
#[derive(Debug)]
struct Request {
    conn: ConnId,
    /// Where the connection comes from.
    source: Option<IpAddr>,
    req: ReqId,
    secret: Secret,
    /// The hash under way, once it is this request's turn.
    job: Option<Job>,
}

/// What a request's hash is being computed with.
#[derive(Debug, Clone, Copy)]
struct Job {
    id: u64,
    salt: [u8; 16],
    params: KdfParams,
    /// Whether the ID was free when the job started: the hash is for a new
    /// record, not compared with one.
    fresh: bool,
}

/// Registrations in progress, per ID.
#[derive(Debug, Default)]
pub(super) struct Registrations {
    /// The front request of each queue is the one being hashed.
    queues: BTreeMap<PeerId, VecDeque<Request>>,
    /// Which ID each job in flight is for.
    jobs: BTreeMap<u64, PeerId>,
    next_job: u64,
    waiting: usize,
}

impl Router {
    /// Takes a `register` request: refuses it at once if it can, otherwise
    /// queues it behind other registrations of the same ID.
    pub(super) fn handle_register(
        &mut self,
        now: Instant,
        conn: ConnId,
        req: ReqId,
        peer: PeerId,
        secret: Secret,
    ) {
        let Some(current) = self.conns.get(&conn) else {
            return;
        };
        let source = current.source;
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
        if let Some(message) = self.backing_off(now, &peer, source) {
            self.error(conn, Some(req), ErrorCode::TooManyAttempts, message);
            return;
        }
        if self.registrations.waiting >= MAX_REGISTRATIONS {
            let message = format!("{MAX_REGISTRATIONS} registrations are being checked; try again shortly");
            self.error(conn, Some(req), ErrorCode::Busy, message);
            return;
        }
        let queue = self.registrations.queues.entry(peer.clone()).or_default();
        if queue.len() >= MAX_QUEUED_PER_ID {
            let message = format!("{MAX_QUEUED_PER_ID} registrations of {peer} are already being checked");
            self.error(conn, Some(req), ErrorCode::TooManyAttempts, message);
            return;
        }
        queue.push_back(Request {
            conn,
            source,
            req,
            secret,
            job: None,
        });
        self.registrations.waiting += 1;
        if queue.len() == 1 {
            self.start_next(now, &peer);
        }
    }

    /// Why `peer`, from `source`, may not be judged now, if it may not: the
    /// wait after the last wrong secret for that ID, or from that source,
    /// has not passed.
    fn backing_off(&self, now: Instant, peer: &PeerId, source: Option<IpAddr>) -> Option<String> {
        let waiting = |g: &Guesses| Some(g.next_allowed).filter(|t| *t > now);
        if let Some(wait) = self.guesses.get(peer).and_then(waiting) {
            return Some(format!(
                "too many wrong secrets for {peer}: try again in {} ms",
                (wait - now).as_millis()
            ));
        }
        let wait = source
            .and_then(|s| self.source_guesses.get(&s))
            .and_then(waiting)?;
        Some(format!(
            "too many wrong secrets from your address: try again in {} ms",
            (wait - now).as_millis()
        ))
    }

    /// Asks for the hash of the first request in `peer`'s queue that is
    /// still worth judging.
    fn start_next(&mut self, now: Instant, peer: &PeerId) {
        loop {
            let Some(front) = self.registrations.queues.get(peer).and_then(VecDeque::front) else {
                self.registrations.queues.remove(peer);
                return;
            };
            if front.job.is_some() {
                return;
            }
            let (conn, req, source) = (front.conn, front.req, front.source);
            if !self.conns.contains_key(&conn) {
                self.pop_request(peer);
                continue;
            }
            if let Some(message) = self.backing_off(now, peer, source) {
                self.pop_request(peer);
                self.error(conn, Some(req), ErrorCode::TooManyAttempts, message);
                continue;
            }
            let (salt, params, fresh) = match self.state.peers.get(peer) {
                Some(record) => (record.salt, record.kdf, false),
                None => {
                    let mut salt = [0u8; 16];
                    self.rng.fill_bytes(&mut salt);
                    (salt, self.config.kdf, true)
                }
            };
            let id = self.registrations.next_job;
            self.registrations.next_job += 1;
            self.registrations.jobs.insert(id, peer.clone());
            let front = self
                .registrations
                .queues
                .get_mut(peer)
                .and_then(VecDeque::front_mut)
                .expect("checked above");
            front.job = Some(Job {
                id,
                salt,
                params,
                fresh,
            });
            let secret = front.secret.clone();
            self.outbox.emit_now(RouterOutput::HashSecret(HashJob {
                job: id,
                params,
                salt,
                secret,
            }));
            return;
        }
    }

    fn pop_request(&mut self, peer: &PeerId) -> Option<Request> {
        let request = self.registrations.queues.get_mut(peer)?.pop_front()?;
        self.registrations.waiting -= 1;
        Some(request)
    }

    /// Judges the registration whose hash `job` is `hash`, then starts the
    /// next one of that ID.
    pub(super) fn handle_secret_hashed(&mut self, now: Instant, job: u64, hash: SecretHash) {
        let Some(peer) = self.registrations.jobs.remove(&job) else {
            return;
        };
        let Some(request) = self.pop_request(&peer) else {
            return;
        };
        let Some(done) = request.job.filter(|j| j.id == job) else {
            return;
        };
        let live = self.conns.contains_key(&request.conn);
        match self.state.peers.get(&peer) {
            Some(record) if !done.fresh && record.salt == done.salt && record.kdf == done.params => {
                if record.kdf.is_valid() && record.matches(&hash) {
                    self.guesses.remove(&peer);
                    if let Some(source) = request.source {
                        self.source_guesses.remove(&source);
                    }
                    if live {
                        self.registered(request.conn, request.req, &peer);
                    }
                } else {
                    self.wrong_secret(now, &peer, request.source);
                    if live {
                        let message = format!("{peer} is registered with another secret");
                        self.error(request.conn, Some(request.req), ErrorCode::WrongSecret, message);
                    }
                }
            }
            None if done.fresh => {
                if live {
                    self.apply(Change::Registered {
                        peer: peer.clone(),
                        salt: done.salt,
                        kdf: done.params,
                        secret_hash: hash,
                    });
                    self.registered(request.conn, request.req, &peer);
                }
            }
            // The ID changed hands while the hash was computed (claimed by
            // another registration, or the state was replaced): judge the
            // request again against the record as it is now.
            _ => {
                let queue = self.registrations.queues.entry(peer.clone()).or_default();
                queue.push_front(Request { job: None, ..request });
                self.registrations.waiting += 1;
            }
        }
        self.start_next(now, &peer);
    }

    /// Counts a wrong secret for `peer` from `source` and sets the waits
    /// before the next attempts.
    fn wrong_secret(&mut self, now: Instant, peer: &PeerId, source: Option<IpAddr>) {
        let failures = self.guesses.get(peer).map_or(0, |g| g.failures).saturating_add(1);
        self.guesses
            .insert(peer.clone(), Guesses::after(now, failures, 0));
        let Some(source) = source else { return };
        if !self.source_guesses.contains_key(&source)
            && self.source_guesses.len() >= self.config.max_tracked_sources
        {
            self.source_guesses
                .retain(|_, g| g.next_allowed + MAX_GUESS_DELAY > now);
            if self.source_guesses.len() >= self.config.max_tracked_sources {
                return;
            }
        }
        let failures = self
            .source_guesses
            .get(&source)
            .map_or(0, |g| g.failures)
            .saturating_add(1);
        self.source_guesses
            .insert(source, Guesses::after(now, failures, SOURCE_GRACE));
    }

    /// Binds `conn` to `peer`, whose secret it proved, replacing an older
    /// session, and answers.
    fn registered(&mut self, conn: ConnId, req: ReqId, peer: &PeerId) {
        if let Some(other) = self.session_peer(conn).filter(|p| p != peer) {
            let message = format!("this connection is registered as {other}");
            self.error(conn, Some(req), ErrorCode::AlreadyRegistered, message);
            return;
        }
        let already_online = self.sessions.contains_key(peer);
        if let Some(old) = self.sessions.get(peer).map(|s| s.conn).filter(|c| *c != conn) {
            // The peer stays online: its watchers hear of no change.
            self.sessions.remove(peer);
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
        let next_seq = self.state.peers[peer].last_seq.next();
        self.send(
            conn,
            ServerFrame::Registered {
                req,
                peer: peer.clone(),
                next_seq,
            },
        );
        if !already_online {
            self.presence_changed(peer, None);
        }
        self.push(peer);
    }
}
