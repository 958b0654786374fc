//! Frames between the members of a replicated cluster: routers and the
//! replica manager (RM), and a primary and the routers that follow it.
//!
//! They use the same newline-delimited JSON codec as client frames, on
//! cluster ports only: the replica manager's port, and each router's cluster
//! listener. A connection to either speaks the membership handshake of
//! [`cluster_auth`](crate::cluster_auth) before any of these frames; the
//! client port never accepts them.

use serde::{Deserialize, Serialize};

use crate::ids::{Epoch, Lsn, ReplicaId, ReqId};
use crate::router::checkpoint::StatePart;
use crate::router::Change;
use crate::wire::tagged::tagged_serde;
use crate::wire::ErrorCode;

/// The longest address a member may announce, in bytes (a DNS name of
/// 253 bytes, a colon and a port).
pub const MAX_ADDR_LEN: usize = 260;

/// Checks that `addr` is `host:port`, as a member announces it: a port from
/// 1 to 65535 after the last colon, and a host of at most 253 bytes that is
/// an IP address (IPv6 in brackets) or a DNS name (letters, digits, `.`,
/// `-`, `_`). The replica manager stores and forwards only such addresses.
pub fn check_addr(addr: &str) -> Result<(), String> {
    let shown = || {
        addr.chars()
            .take(40)
            .collect::<String>()
            .escape_debug()
            .to_string()
    };
    if addr.len() > MAX_ADDR_LEN {
        return Err(format!(
            "address of {} bytes is longer than {MAX_ADDR_LEN}",
            addr.len()
        ));
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("address \"{}\" is not HOST:PORT", shown()));
    };
    if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
        return Err(format!("address \"{}\" has no port from 1 to 65535", shown()));
    }
    let bracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    let valid_host = match bracketed {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host.len() <= 253
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        }
    };
    if !valid_host {
        return Err(format!("address \"{}\" has no valid host", shown()));
    }
    Ok(())
}

/// A router as the cluster knows it: its name and its two addresses.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Member {
    /// The router's name.
    pub id: ReplicaId,
    /// Where clients reach it, `host:port`.
    pub addr: String,
    /// Where other members reach its cluster listener, `host:port`: a
    /// follower streams from its primary there. Empty in a configuration
    /// saved before it existed, until the router's next heartbeat.
    #[serde(default)]
    pub cluster_addr: String,
    /// The router process this entry was made for (0: not recorded). The
    /// replica manager persists it, so even after its own restart it knows
    /// a router that restarted — and lost its state — from one that did not.
    #[serde(default)]
    pub incarnation: u64,
    /// The identity of the storage the router's state lives on (0: not
    /// recorded, or a router whose state does not outlive its process).
    /// A router that restarts with the same storage kept its state.
    #[serde(default)]
    pub state_id: u64,
}

/// Who serves and who follows, as decided by the replica manager.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Configuration {
    /// The configuration's number; every change bumps it.
    pub epoch: Epoch,
    /// The router that serves clients and commits, if any.
    pub primary: Option<Member>,
    /// Routers that hold every committed change: the primary commits only
    /// once all of them have a change, and only they can be promoted.
    pub backups: Vec<Member>,
    /// Routers catching up from the primary before they become backups.
    pub candidates: Vec<Member>,
    /// The fewest backups the primary needs to commit anything: with fewer,
    /// it holds every answer that depends on a change (Sent, group results,
    /// registrations) until a candidate has caught up and become a backup.
    /// Set by the replica manager; a configuration saved before this field
    /// existed reads as 1.
    #[serde(default = "one")]
    pub min_backups: usize,
    /// The replica manager's failure timeout, in milliseconds: it may
    /// replace a primary it has not heard for this long. Routers derive
    /// their primary lease from it ([`Configuration::lease`]), so the RM and
    /// the routers agree on one setting.
    #[serde(default = "default_failure_timeout_ms")]
    pub failure_timeout_ms: u64,
}

fn one() -> usize {
    1
}

fn default_failure_timeout_ms() -> u64 {
    500
}

impl Configuration {
    /// The member named `id`, wherever it is in the configuration.
    pub fn find(&self, id: &ReplicaId) -> Option<&Member> {
        self.primary
            .iter()
            .chain(&self.backups)
            .chain(&self.candidates)
            .find(|m| m.id == *id)
    }

    /// Whether `id` is the primary.
    pub fn is_primary(&self, id: &ReplicaId) -> bool {
        self.primary.as_ref().is_some_and(|p| p.id == *id)
    }

    /// Whether `id` is a backup.
    pub fn is_backup(&self, id: &ReplicaId) -> bool {
        self.backups.iter().any(|m| m.id == *id)
    }

    /// How long a primary may serve after the send time of the last
    /// heartbeat the RM answered: 60 % of the failure timeout, so that a
    /// primary cut off from the RM stops serving before the RM may promote
    /// another router.
    pub fn lease(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.failure_timeout_ms * 3 / 5)
    }

    /// Whether the primary has fewer backups than [`Self::min_backups`], and
    /// so may commit nothing.
    pub fn below_min_backups(&self) -> bool {
        self.backups.len() < self.min_backups
    }
}

/// A frame to the replica manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "snake_case", deny_unknown_fields)]
pub enum RmRequest {
    /// A router is alive, and reports where it stands.
    Heartbeat {
        /// The router's name.
        id: ReplicaId,
        /// Its client address (see [`check_addr`]).
        addr: String,
        /// Its cluster listener's address (see [`check_addr`]).
        cluster_addr: String,
        /// Random per process start: a new value means the router restarted.
        incarnation: u64,
        /// The identity of the storage its state lives on (see
        /// [`Member::state_id`]): the same after a restart means the router
        /// recovered its state; 0 or another value means it lost it.
        #[serde(default)]
        state_id: u64,
        /// The newest epoch the router knows.
        epoch: Epoch,
        /// The last change on the router's stable storage.
        lsn: Lsn,
        /// Whether it may be made primary of an empty cluster.
        may_lead: bool,
        /// Numbers the heartbeat; the RM echoes it in [`RmReply::Heard`], so
        /// the router knows when the heartbeat that was answered left.
        #[serde(default)]
        beat: u64,
    },
    /// The primary of `epoch` asks to make a caught-up candidate a backup.
    AddBackup {
        /// The primary's name.
        id: ReplicaId,
        /// The primary's epoch, which must still be current.
        epoch: Epoch,
        /// The candidate.
        backup: ReplicaId,
    },
    /// The primary of `epoch` asks to drop a backup that stopped
    /// acknowledging.
    RemoveBackup {
        /// The primary's name.
        id: ReplicaId,
        /// The primary's epoch, which must still be current.
        epoch: Epoch,
        /// The backup.
        backup: ReplicaId,
    },
    /// The primary of `epoch` has heard no backup for its ack timeout and
    /// asks the RM to hand its role to one the RM still hears.
    Resign {
        /// The primary's name.
        id: ReplicaId,
        /// The primary's epoch, which must still be current.
        epoch: Epoch,
    },
    /// Asks for the configuration and every member's state (`peerlink status`).
    Status {
        /// Echoed in the reply.
        req: ReqId,
    },
}

tagged_serde!(
    RmRequest,
    tag = "type",
    expecting = "internally tagged enum RmRequest"
);

/// A member's state as the replica manager last heard it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// The router's name.
    pub id: ReplicaId,
    /// Its client address.
    pub addr: String,
    /// `primary`, `backup`, `candidate`, or `outside` the configuration.
    pub role: String,
    /// The last change it reported applied.
    pub lsn: Lsn,
    /// Milliseconds since its last heartbeat, if one arrived since the RM started.
    pub last_heartbeat_ms: Option<u64>,
}

/// A frame from the replica manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "snake_case", deny_unknown_fields)]
pub enum RmReply {
    /// The current configuration (the answer to every request but a
    /// heartbeat, and pushed to every router when it changes).
    Config {
        /// The configuration.
        config: Configuration,
    },
    /// The answer to heartbeat `beat`: the current configuration. It renews
    /// the lease of the primary it names, from the heartbeat's send time.
    Heard {
        /// The heartbeat answered.
        beat: u64,
        /// The configuration.
        config: Configuration,
    },
    /// The answer to `status`.
    Status {
        /// The request answered.
        req: ReqId,
        /// The configuration.
        config: Configuration,
        /// Every router the RM has heard of.
        members: Vec<MemberStatus>,
    },
    /// A request was refused.
    Error {
        /// Stable machine-readable reason.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
}

tagged_serde!(
    RmReply,
    tag = "type",
    expecting = "internally tagged enum RmReply"
);

/// A frame from a follower (backup or candidate) to its primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "snake_case", deny_unknown_fields)]
pub enum FollowerFrame {
    /// Starts (or restarts) a replication stream: the primary answers with a
    /// checkpoint, then every change after it.
    Follow {
        /// The follower's name.
        id: ReplicaId,
        /// The newest epoch the follower knows.
        epoch: Epoch,
        /// The last change the follower has applied.
        lsn: Lsn,
        /// The epoch of the primary frames its state came from (0 if none):
        /// a primary that has served since then can continue from its log
        /// instead of sending a checkpoint.
        stream_epoch: Epoch,
    },
    /// The follower has received the first `parts` parts of the
    /// checkpoint under way: the primary sends more as these come.
    CheckpointReceived {
        /// The epoch of the stream.
        epoch: Epoch,
        /// Parts received so far.
        parts: u64,
    },
    /// The follower has applied every change up to `lsn`.
    Applied {
        /// The epoch of the stream.
        epoch: Epoch,
        /// The last change applied.
        lsn: Lsn,
        /// Whether the follower hears the replica manager (answered a
        /// heartbeat within the lease). A primary that does not hear the RM
        /// keeps serving only while no backup does: then the RM, which
        /// promotes only routers it hears, cannot replace it.
        #[serde(default)]
        rm_live: bool,
    },
}

tagged_serde!(
    FollowerFrame,
    tag = "type",
    expecting = "internally tagged enum FollowerFrame"
);

/// A frame from a primary to a follower.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "snake_case", deny_unknown_fields)]
pub enum PrimaryFrame {
    /// The primary's whole state as of `lsn` follows, in parts, then
    /// [`PrimaryFrame::CheckpointEnd`]; the follower answers each part with
    /// [`FollowerFrame::CheckpointReceived`], and applies nothing until the
    /// end.
    CheckpointStart {
        /// The primary's epoch.
        epoch: Epoch,
        /// The last change the state includes.
        lsn: Lsn,
    },
    /// The next part of the state (about
    /// [`PART_BYTES`](crate::router::checkpoint::PART_BYTES)).
    CheckpointPart {
        /// The primary's epoch.
        epoch: Epoch,
        /// Numbers the parts of one checkpoint from 0: a follower takes
        /// them strictly in order.
        n: u64,
        /// The part.
        part: StatePart,
    },
    /// Every part has been sent: the follower loads the state as of `lsn`
    /// if it has all `parts` of them.
    CheckpointEnd {
        /// The primary's epoch.
        epoch: Epoch,
        /// As in the start.
        lsn: Lsn,
        /// How many parts the checkpoint has.
        parts: u64,
    },
    /// One change, following the one before it.
    Entry {
        /// The primary's epoch.
        epoch: Epoch,
        /// The change's position.
        lsn: Lsn,
        /// The change.
        change: Change,
    },
    /// Sent every heartbeat interval, so a follower can tell a quiet stream
    /// from a dead one; the follower answers with `applied`.
    Alive {
        /// The primary's epoch.
        epoch: Epoch,
        /// The primary's last applied change.
        lsn: Lsn,
    },
    /// The router is not (or no longer) the primary of an epoch this new.
    NotPrimary {
        /// The newest epoch the router knows.
        epoch: Epoch,
    },
}

tagged_serde!(
    PrimaryFrame,
    tag = "type",
    expecting = "internally tagged enum PrimaryFrame"
);
