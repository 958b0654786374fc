//! The router's driver: accepts client connections, and — in a cluster —
//! member connections on a separate cluster listener, keeps the router's
//! outgoing links (to the replica manager, and to its primary while
//! following one), feeds every frame to a [`Router`], and carries out its
//! outputs.
//!
//! The two listeners never mix: the client listener decodes client frames
//! only, and the cluster listener hands a connection to the router only
//! once it has passed the membership handshake ([`cluster_link`]), and then
//! decodes follower frames only. Outgoing links run the handshake too.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use std::net::{IpAddr, SocketAddr};

use bytes::BytesMut;
use peerlink_core::ids::{ConnId, ReplicaId};
use peerlink_core::router::replication::Link;
use peerlink_core::router::secrets::SecretHash;
use peerlink_core::router::{Router, RouterInput, RouterOutput};
use peerlink_core::wire::cluster::{FollowerFrame, PrimaryFrame, RmReply, RmRequest};
use peerlink_core::wire::{
    decode_client_frame, decode_cluster_frame, ClientFrame, ErrorCode, FrameError, ServerFrame,
};
use peerlink_core::Machine;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::cluster_link::{self, Authenticated, ClusterAuth, HandshakeError};
use crate::connection::{self, Connection, Inbound, Outbound};
use crate::hashers::Hashers;
use crate::net::{Listener, Network};
use crate::now;
use crate::sources::SourceCounts;
use crate::storage::{Storage, StorageError, Written};
use crate::timer::Timer;

/// The `tracing` target of the event logged at every commit of a primary,
/// with fields `router`, `epoch`, `lsn`, `backups` (how many backups hold
/// it) and `min_backups`.
pub const COMMIT_TARGET: &str = "peerlink::commit";

/// The `tracing` target of the event logged when a router starts serving as
/// primary (`info`), with fields `router`, `epoch` and `lsn` (its state).
pub const ROLE_TARGET: &str = "peerlink::role";

/// The `tracing` target of the event logged when a primary sends a
/// follower a checkpoint.
pub const CHECKPOINT_TARGET: &str = "peerlink::checkpoint";

/// How many decoded frames may wait for the router before readers pause.
const INBOUND_QUEUE: usize = 4096;

/// How often the driver refreshes the gauges of [`Router::stats`] (a walk
/// over every peer).
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// The most queued client frames handled in a row before the driver looks
/// at its timers and other inputs again.
const INBOUND_BATCH: usize = 256;

/// How long the driver waits after a failed `accept` before the next.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The largest frame a follower accepts from its primary. Checkpoint parts
/// are about 256 KiB; the largest frames are changes: a group message of a
/// maximum-size body to a group of hundreds of thousands of members.
pub const MAX_REPLICATION_FRAME: usize = 64 << 20;

/// The most connections to the cluster listener at once, handshakes under
/// way included; more are closed at once. A cluster has a handful of
/// members, each with one or two connections.
pub const MAX_CLUSTER_CONNECTIONS: usize = 64;

/// A replicated router's cluster side: the listener members connect to, and
/// the credentials every cluster link proves itself with.
#[derive(Debug)]
pub struct ClusterPort<L> {
    /// The cluster listener.
    pub listener: L,
    /// The cluster key and a nonce source.
    pub auth: ClusterAuth,
}

/// What arrives on an accepted connection: a client's frame, or (on the
/// cluster listener) a follower's.
#[derive(Debug)]
enum FromAccepted {
    Client(ClientFrame),
    Follower(FollowerFrame),
}

fn decode_client(line: &[u8]) -> Result<FromAccepted, FrameError> {
    decode_client_frame(line).map(FromAccepted::Client)
}

fn decode_follower(line: &[u8]) -> Result<FromAccepted, FrameError> {
    decode_cluster_frame::<FollowerFrame>(line).map(FromAccepted::Follower)
}

/// A finished handshake on the cluster listener.
type Handshake<S> = (
    SocketAddr,
    Result<(Authenticated<S>, Option<ReplicaId>), HandshakeError>,
);

/// Where the driver stretches secrets (argon2id) the router asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hashing {
    /// On worker threads, one per core (at most 4), each reusing one
    /// buffer of the parameters' memory: the event loop never waits for
    /// one. Production.
    Workers,
    /// In the driver's own task, at once: deterministic, for the simulator,
    /// with cheap parameters.
    Inline,
}

/// Limits and settings the driver applies around the machine.
#[derive(Debug, Clone)]
pub struct RouterLimits {
    /// The largest frame accepted from a client, in bytes, newline included.
    pub max_frame_len: usize,
    /// The most connections at once; further ones are refused with an error
    /// frame and closed.
    pub max_connections: usize,
    /// The most client connections from one source address; more are
    /// refused with `busy`, so one source cannot take every place.
    pub max_per_source: usize,
    /// How long one outgoing connection attempt may take.
    pub connect_timeout: Duration,
    /// The most bytes waiting to be written to one client; a client that
    /// reads so slowly that more would wait is disconnected (its mailbox
    /// keeps what was not acknowledged). Default [`DEFAULT_MAX_QUEUED`].
    pub max_queued: usize,
    /// Where secrets are stretched.
    pub hashing: Hashing,
}

/// The default of [`RouterLimits::max_queued`]: 8 MiB, eight frames of the
/// default maximum size.
pub const DEFAULT_MAX_QUEUED: usize = 8 * 1024 * 1024;

impl RouterLimits {
    /// Limits for a link whose frames are `max_frame_len` at most each way.
    fn link(&self, max_frame_len: usize) -> connection::Limits {
        connection::Limits {
            max_frame_len,
            max_queued: self.max_queued.max(2 * max_frame_len),
        }
    }
}

/// A frame on an accepted connection: to a client, or to a follower.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum ToAccepted {
    Client(ServerFrame),
    Follower(PrimaryFrame),
}

/// What connection attempts report.
enum Attempt<S> {
    Connected(Authenticated<S>),
    Failed(String),
}

/// The driver's side of one outgoing link.
struct LinkConn<O> {
    attempt: u64,
    conn: Option<Connection<O>>,
}

impl<O> LinkConn<O> {
    fn new() -> Self {
        Self {
            attempt: 0,
            conn: None,
        }
    }
}

/// Runs `router` on connections accepted from `listener` — and, for a
/// replicated router, from `cluster`'s listener, and the links it asks for,
/// made over `net` — writing its records to `storage`, until `shutdown`
/// resolves. A failing `accept` (a connection reset, or running out of file
/// descriptors) is logged and retried after [`ACCEPT_BACKOFF`]; it never
/// stops the router. A failing storage does: every client is told
/// `storage_failed`, and the error is returned.
pub async fn run_router<N: Network>(
    net: N,
    mut router: Router,
    mut listener: N::Listener,
    cluster: Option<ClusterPort<N::Listener>>,
    limits: RouterLimits,
    mut storage: Storage,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StorageError> {
    let (mut cluster_listener, mut auth) = match cluster {
        Some(c) => (Some(c.listener), Some(c.auth)),
        None => (None, None),
    };
    let (handshakes_tx, mut handshakes) = mpsc::channel::<Handshake<N::Stream>>(16);
    let mut handshaking = 0usize;
    let (inbound_tx, mut inbound) = mpsc::channel::<(ConnId, Inbound<FromAccepted>)>(INBOUND_QUEUE);
    let (attempts_tx, mut attempts) = mpsc::channel::<(Link, u64, Attempt<N::Stream>)>(16);
    let (rm_tx, mut from_rm) = mpsc::channel::<(u64, Inbound<RmReply>)>(256);
    let (primary_tx, mut from_primary) = mpsc::channel::<(u64, Inbound<PrimaryFrame>)>(INBOUND_QUEUE);
    let mut conns = AcceptedConns::default();
    let mut rm_link: LinkConn<RmRequest> = LinkConn::new();
    let mut primary_link: LinkConn<FollowerFrame> = LinkConn::new();
    let mut next_conn = ConnId(0);
    let mut timer = Timer::new();
    let (hashed_tx, mut hashed) = mpsc::unbounded_channel::<(u64, SecretHash)>();
    let hashers = match limits.hashing {
        Hashing::Inline => None,
        Hashing::Workers => match Hashers::start(hashed_tx) {
            Ok(hashers) => Some(hashers),
            Err(error) => {
                tracing::error!(%error, "cannot start the threads that check secrets; registrations will not be answered");
                None
            }
        },
    };
    tokio::pin!(shutdown);
    // Gauges are refreshed at most once a STATS_INTERVAL, and only after
    // something happened: `stats_due` is when, once something did.
    let mut stats_due = Some(tokio::time::Instant::now());
    let mut counters = crate::metrics::RouterCounters::new();
    loop {
        while let Some(output) = router.poll_output() {
            stats_due.get_or_insert_with(|| tokio::time::Instant::now() + STATS_INTERVAL);
            counters.count(&output, router.is_serving());
            match output {
                RouterOutput::Persist { ticket, record } => storage.submit(ticket, record),
                RouterOutput::HashSecret(job) => match &hashers {
                    Some(hashers) => hashers.submit(job),
                    None if limits.hashing == Hashing::Inline => {
                        let hash = job.run();
                        router.handle(now(), RouterInput::SecretHashed { job: job.job, hash });
                    }
                    None => {}
                },
                RouterOutput::Send(conn, frame) => {
                    if let Some(c) = conns.get(&conn) {
                        c.conn.send(Outbound::Frame(ToAccepted::Client(frame)));
                    }
                }
                RouterOutput::Replicate(conn, frame) => {
                    if let PrimaryFrame::CheckpointStart { epoch, lsn } = &frame {
                        tracing::debug!(target: CHECKPOINT_TARGET, ?conn, epoch = epoch.0, lsn = lsn.0, "checkpoint");
                    }
                    if let Some(c) = conns.get(&conn) {
                        c.conn.send(Outbound::Frame(ToAccepted::Follower(frame)));
                    }
                }
                RouterOutput::Close(conn) => {
                    if let Some(c) = conns.remove(conn) {
                        tracing::debug!(?conn, "closing connection");
                        c.conn.send(Outbound::Close);
                    }
                }
                RouterOutput::Connect { link, attempt, addr } => {
                    match link {
                        Link::Rm => (rm_link.attempt, rm_link.conn) = (attempt, None),
                        Link::Primary => (primary_link.attempt, primary_link.conn) = (attempt, None),
                    }
                    tracing::debug!(?link, attempt, %addr, "connecting");
                    let (net, attempts_tx, timeout) =
                        (net.clone(), attempts_tx.clone(), limits.connect_timeout);
                    let connector = auth.as_mut().map(|a| a.connector(router.replica_id().cloned()));
                    tokio::task::spawn_local(async move {
                        let outcome = match tokio::time::timeout(timeout, net.connect(&addr)).await {
                            Ok(Ok(stream)) => match connector {
                                Some(connector) => match cluster_link::connect(stream, connector).await {
                                    Ok(authenticated) => Attempt::Connected(authenticated),
                                    Err(e) => Attempt::Failed(format!("handshake with {addr} failed: {e}")),
                                },
                                None => {
                                    Attempt::Failed("a standalone router has no cluster credentials".into())
                                }
                            },
                            Ok(Err(e)) => Attempt::Failed(format!("connect to {addr} failed: {e}")),
                            Err(_) => Attempt::Failed(format!("connect to {addr} timed out")),
                        };
                        let _ = attempts_tx.send((link, attempt, outcome)).await;
                    });
                }
                RouterOutput::DropLink(Link::Rm) => rm_link.conn = None,
                RouterOutput::DropLink(Link::Primary) => primary_link.conn = None,
                RouterOutput::ToRm(frame) => {
                    if let Some(c) = &rm_link.conn {
                        c.send(Outbound::Frame(frame));
                    }
                }
                RouterOutput::ToPrimary(frame) => {
                    if let Some(c) = &primary_link.conn {
                        c.send(Outbound::Frame(frame));
                    }
                }
                RouterOutput::Promoted { epoch, lsn } => {
                    let router = router.replica_id().map(ToString::to_string).unwrap_or_default();
                    tracing::info!(target: ROLE_TARGET, %router, epoch = epoch.0, lsn = lsn.0, "serving as primary");
                }
                RouterOutput::BelowMinBackups {
                    epoch,
                    backups,
                    min_backups,
                } => {
                    let router = router.replica_id().map(ToString::to_string).unwrap_or_default();
                    tracing::warn!(
                        %router, epoch = epoch.0, backups, min_backups,
                        "commits wait: the primary has fewer backups than the minimum; \
                         answers are held until a candidate catches up and becomes a backup"
                    );
                }
                RouterOutput::LeaseLost { epoch } => {
                    let router = router.replica_id().map(ToString::to_string).unwrap_or_default();
                    tracing::warn!(
                        %router, epoch = epoch.0,
                        "stopped serving: the replica manager is out of reach and a backup still hears it; \
                         clients are sent to the other routers"
                    );
                }
                RouterOutput::Resigning { epoch } => {
                    let router = router.replica_id().map(ToString::to_string).unwrap_or_default();
                    tracing::warn!(
                        %router, epoch = epoch.0,
                        "no backup has answered within the ack timeout: asking the replica manager \
                         to hand the primary role to a backup it still hears"
                    );
                }
                RouterOutput::Committed {
                    backups,
                    min_backups,
                    epoch,
                    lsn,
                } => {
                    let router = router.replica_id().map(ToString::to_string).unwrap_or_default();
                    tracing::trace!(
                        target: COMMIT_TARGET, %router, epoch = epoch.0, lsn = lsn.0,
                        backups = backups as u64, min_backups = min_backups as u64, "committed"
                    );
                }
            }
        }
        if stats_due.is_some_and(|due| tokio::time::Instant::now() >= due) {
            crate::metrics::router_stats(&router.stats());
            stats_due = None;
        }
        timer.set(router.poll_timeout().map(tokio::time::Instant::from_std));
        tokio::select! {
            biased;
            () = &mut shutdown => return Ok(()),
            () = timer.fired() => router.handle_timeout(now()),
            () = crate::timer::sleep_until(stats_due) => {}
            written = storage.next_report() => match written {
                Written::Durable(ticket) => router.handle(now(), RouterInput::Persisted { ticket }),
                Written::CheckpointWanted => router.handle(now(), RouterInput::CheckpointWanted),
                Written::Failed(error) => {
                    tracing::error!(%error, "stopping: the router cannot write to its disk");
                    let message = format!("the router stopped: it cannot write to its disk ({error}); \
                                           what it did not answer Sent was not stored");
                    for accepted in conns.by_id.values().filter(|a| a.source.is_some()) {
                        let frame = ServerFrame::Closing { code: ErrorCode::StorageFailed, message: message.clone() };
                        accepted.conn.send(Outbound::Frame(ToAccepted::Client(frame)));
                        accepted.conn.send(Outbound::Close);
                    }
                    // Let the writers flush the frames above.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return Err(error);
                }
            },
            Some((job, hash)) = hashed.recv() => router.handle(now(), RouterInput::SecretHashed { job, hash }),
            Some((link, attempt, outcome)) = attempts.recv() => {
                let current = match link {
                    Link::Rm => rm_link.attempt,
                    Link::Primary => primary_link.attempt,
                };
                if attempt != current {
                    continue;
                }
                let input = match outcome {
                    Attempt::Connected(Authenticated { stream, buffered }) => {
                        match link {
                            Link::Rm => {
                                let c = connection::spawn(stream, buffered, attempt, limits.link(limits.max_frame_len), decode_cluster_frame, rm_tx.clone());
                                rm_link.conn = Some(c);
                            }
                            Link::Primary => {
                                let c = connection::spawn(stream, buffered, attempt, limits.link(MAX_REPLICATION_FRAME), decode_cluster_frame, primary_tx.clone());
                                primary_link.conn = Some(c);
                            }
                        }
                        RouterInput::LinkUp { link, attempt }
                    }
                    Attempt::Failed(reason) => {
                        tracing::debug!(?link, %reason, "link attempt failed");
                        RouterInput::LinkDown { link, attempt }
                    }
                };
                router.handle(now(), input);
            }
            Some((attempt, event)) = from_rm.recv() => {
                if attempt != rm_link.attempt || rm_link.conn.is_none() {
                    continue;
                }
                match event {
                    Inbound::Frame(reply) => router.handle(now(), RouterInput::FromRm(reply)),
                    Inbound::Malformed(error) => tracing::warn!(%error, "bad frame from the replica manager"),
                    Inbound::Closed(reason) => {
                        tracing::debug!(%reason, "replica manager link lost");
                        rm_link.conn = None;
                        router.handle(now(), RouterInput::LinkDown { link: Link::Rm, attempt });
                    }
                }
            }
            Some((attempt, event)) = from_primary.recv() => {
                let now = now();
                primary_input(&mut router, &mut primary_link, now, attempt, event);
                // A follower applies what else has arrived before the driver
                // writes its (cumulative) acknowledgement.
                for _ in 1..INBOUND_BATCH {
                    let Ok((attempt, event)) = from_primary.try_recv() else {
                        break;
                    };
                    primary_input(&mut router, &mut primary_link, now, attempt, event);
                }
            }
            Some((conn, event)) = inbound.recv() => {
                let now = now();
                router.handle(now, accepted_input(&mut conns, conn, event));
                // Take what else has arrived without another trip through
                // `select!`; the budget keeps timers and accepts served.
                for _ in 1..INBOUND_BATCH {
                    let Ok((conn, event)) = inbound.try_recv() else {
                        break;
                    };
                    router.handle(now, accepted_input(&mut conns, conn, event));
                }
            }
            Some((addr, outcome)) = handshakes.recv() => {
                handshaking -= 1;
                match outcome {
                    Ok((Authenticated { stream, buffered }, id)) => {
                        next_conn = next_conn.next();
                        let conn = next_conn;
                        tracing::debug!(?conn, %addr, ?id, "cluster member connected");
                        // A follower may be sent the largest change while the
                        // window of checkpoint parts is in flight.
                        let member = connection::Limits {
                            max_frame_len: limits.max_frame_len,
                            max_queued: MAX_REPLICATION_FRAME + limits.max_queued,
                        };
                        let c = connection::spawn(stream, buffered, conn, member, decode_follower, inbound_tx.clone());
                        conns.insert(conn, Accepted { conn: c, source: None });
                        router.handle(now(), RouterInput::MemberConnected { conn, id });
                    }
                    Err(error) => tracing::warn!(%addr, %error, "refused a cluster connection"),
                }
            }
            accepted = accept_cluster(&mut cluster_listener) => {
                let (stream, addr) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                let Some(auth) = auth.as_mut() else { continue };
                if handshaking + conns.members >= MAX_CLUSTER_CONNECTIONS {
                    tracing::warn!(%addr, limit = MAX_CLUSTER_CONNECTIONS, "refusing a cluster connection: too many");
                    continue;
                }
                handshaking += 1;
                let (acceptor, handshakes_tx) = (auth.acceptor(), handshakes_tx.clone());
                tokio::task::spawn_local(async move {
                    let outcome = cluster_link::accept(stream, acceptor).await;
                    let _ = handshakes_tx.send((addr, outcome)).await;
                });
            }
            accepted = listener.accept() => {
                let (stream, addr) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                next_conn = next_conn.next();
                let conn = next_conn;
                let c = connection::spawn(stream, BytesMut::new(), conn, limits.link(limits.max_frame_len), decode_client, inbound_tx.clone());
                let refusal = if conns.clients() >= limits.max_connections {
                    Some(format!("the router has its maximum of {} connections", limits.max_connections))
                } else if conns.held_by(addr.ip()) >= limits.max_per_source {
                    Some(format!("{} connections from your address are the most one address may have", limits.max_per_source))
                } else {
                    None
                };
                if let Some(message) = refusal {
                    tracing::warn!(%addr, %message, "refusing connection");
                    c.send(Outbound::Frame(ToAccepted::Client(ServerFrame::Closing { code: ErrorCode::Busy, message })));
                    c.send(Outbound::Close);
                    continue;
                }
                tracing::debug!(?conn, %addr, "connection accepted");
                conns.insert(conn, Accepted { conn: c, source: Some(addr.ip()) });
                router.handle(now(), RouterInput::Connected { conn, source: addr.ip() });
            }
        }
    }
}

/// Hands the router what its primary link reported, unless it came from
/// an earlier attempt.
fn primary_input(
    router: &mut Router,
    link: &mut LinkConn<FollowerFrame>,
    now: std::time::Instant,
    attempt: u64,
    event: Inbound<PrimaryFrame>,
) {
    if attempt != link.attempt || link.conn.is_none() {
        return;
    }
    let reason = match event {
        Inbound::Frame(frame) => return router.handle(now, RouterInput::FromPrimary(frame)),
        // A router that is not (yet) primary answers with a client
        // redirect; either way, this stream is over.
        Inbound::Malformed(error) => format!("unexpected frame: {error}"),
        Inbound::Closed(reason) => reason,
    };
    tracing::debug!(%reason, "primary link lost");
    link.conn = None;
    let input = RouterInput::LinkDown {
        link: Link::Primary,
        attempt,
    };
    router.handle(now, input);
}

/// Waits for the next connection on the cluster listener, if there is one.
async fn accept_cluster<L: Listener>(listener: &mut Option<L>) -> std::io::Result<(L::Stream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// An accepted connection, and for a client connection its source address
/// (`None`: it came through the cluster listener).
struct Accepted {
    conn: Connection<ToAccepted>,
    source: Option<IpAddr>,
}

/// The accepted connections, with the counts that bound them.
#[derive(Default)]
struct AcceptedConns {
    by_id: BTreeMap<ConnId, Accepted>,
    /// How many came through the cluster listener.
    members: usize,
    /// How many client connections each source address holds.
    sources: SourceCounts,
}

impl AcceptedConns {
    fn get(&self, conn: &ConnId) -> Option<&Accepted> {
        self.by_id.get(conn)
    }

    /// How many client connections there are.
    fn clients(&self) -> usize {
        self.by_id.len() - self.members
    }

    /// How many client connections `source` holds.
    fn held_by(&self, source: IpAddr) -> usize {
        self.sources.held_by(source)
    }

    fn insert(&mut self, conn: ConnId, accepted: Accepted) {
        match accepted.source {
            Some(source) => self.sources.add(source),
            None => self.members += 1,
        }
        self.by_id.insert(conn, accepted);
    }

    fn remove(&mut self, conn: ConnId) -> Option<Accepted> {
        let accepted = self.by_id.remove(&conn)?;
        match accepted.source {
            Some(source) => self.sources.remove(source),
            None => self.members -= 1,
        }
        Some(accepted)
    }
}

/// The router's input for what an accepted connection reported; forgets
/// the connection when it ended.
fn accepted_input(conns: &mut AcceptedConns, conn: ConnId, event: Inbound<FromAccepted>) -> RouterInput {
    match event {
        Inbound::Frame(FromAccepted::Client(frame)) => RouterInput::Frame(conn, frame),
        Inbound::Frame(FromAccepted::Follower(frame)) => RouterInput::Follower(conn, frame),
        Inbound::Malformed(error) => {
            tracing::debug!(?conn, %error, "malformed frame");
            RouterInput::Malformed(conn, error)
        }
        Inbound::Closed(reason) => {
            tracing::debug!(?conn, %reason, "connection ended");
            conns.remove(conn);
            RouterInput::Disconnected(conn)
        }
    }
}
