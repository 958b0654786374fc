//! Deliberate bugs, compiled in only with the `planted-bugs` feature and
//! switched on one at a time by the test that proves the history checker
//! catches each of them. Production builds do not contain this module.

/// Which deliberate bugs are active. All off by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bugs {
    /// The primary reports Sent as soon as it applies a change, without
    /// waiting for its backups.
    pub sent_before_replication: bool,

    /// The client hands every copy of a message to its application.
    pub recipient_keeps_duplicates: bool,
    /// The client's acknowledgement of an item also covers the item after
    /// it, which may still be on its way: a range that runs ahead of what
    /// the client has.
    pub client_acks_ahead: bool,
    /// The router reports Delivered as soon as it stores a message.
    pub delivered_on_enqueue: bool,
    /// A full mailbox drops its oldest message instead of refusing new ones.
    pub mailbox_drops_oldest: bool,
    /// Backups accept the stream of an older epoch: a follower stays on the
    /// stream it has when a newer configuration names another primary, and
    /// ignores epoch tags; a backup promoted to primary keeps applying and
    /// acknowledging its old primary's stream.
    pub backup_accepts_old_epoch: bool,
    /// A primary that restarted (and lost its state) keeps its role: the
    /// replica manager leaves it in place, the router serves with whatever
    /// incarnation the configuration names, and followers accept a
    /// checkpoint behind their own state.
    pub restarted_primary_keeps_role: bool,
    /// The primary commits without the minimum number of backups.
    pub commit_below_min_backups: bool,
    /// At a failover, the replica manager demotes unheard backups to
    /// candidates even when that leaves the new primary below the minimum:
    /// if the new primary then dies, no router is left that may be
    /// promoted, and the cluster stops for good.
    pub demote_unheard_backups: bool,
    /// A primary serves on without a lease: cut off from the RM while its
    /// backups still hear it, it goes on serving.
    pub primary_ignores_lease: bool,
    /// A follower acknowledges a change as soon as it applies it, before
    /// its storage reports it durable.
    pub ack_before_durable: bool,
    /// A primary or standalone router commits a change without waiting for
    /// its own storage to report it durable.
    pub commit_before_durable: bool,
    /// A router's disk checkpoint holds an empty state at the right
    /// position: what the log behind it held is forgotten at the next
    /// restart.
    pub checkpoint_forgets_state: bool,
}
