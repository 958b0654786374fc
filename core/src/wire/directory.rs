//! The parts of directory and presence frames: what a lookup finds and what
//! a listing page holds, and the bounds on a page.
//!
//! Listings are sorted by name and paginated with a cursor: a page ends with
//! `next` when more entries follow, and the client asks for the next page
//! with `after` set to it. A cursor is a name, not a position, so a page
//! never repeats or skips an entry that existed before and after the
//! listing, whatever registrations happen between pages.

use serde::{Deserialize, Serialize};

use crate::ids::{GroupName, PeerId};

/// Entries in a page when the request names no `limit`.
pub const DEFAULT_PAGE: usize = 100;

/// The most entries in one page; a larger `limit` gets this many. A router
/// whose frame limit is small gives fewer, so that a page always fits in
/// one frame (see [`MAX_ENTRY_LEN`]).
pub const MAX_PAGE: usize = 1_000;

/// The most bytes one entry takes in a page frame: a name of at most 64
/// bytes, its fields and JSON punctuation.
pub const MAX_ENTRY_LEN: usize = 128;

/// What a lookup (`who`) found under a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Entry {
    /// A registered peer.
    Peer {
        /// Whether it has a session on the primary now.
        online: bool,
        /// For an offline peer, how long ago, in milliseconds of the
        /// primary's clock, its last session last sent a frame; absent when
        /// this primary has not seen it since it took the role.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_seen_ms_ago: Option<u64>,
    },
    /// A group.
    Group {
        /// The peer that created it.
        creator: PeerId,
        /// How many members it has.
        members: usize,
    },
}

/// A peer in a directory or member listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerEntry {
    /// The peer.
    pub id: PeerId,
    /// Whether it has a session on the primary now.
    pub online: bool,
}

/// A group in a group listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupEntry {
    /// The group.
    pub name: GroupName,
    /// How many members it has.
    pub members: usize,
}
