//! Discovery and presence: lookups (`who`), listings of peers, groups and a
//! group's members, and subscriptions to a peer's online state (`watch`).
//!
//! Lookups and listings read the replicated [`State`](super::State) and are
//! answered like every reply: after every change applied before them is
//! committed. Presence is soft state on the primary — which peers have a
//! session here, who watches whom, when a session last spoke — and is never
//! replicated: after a failover the new primary starts with nobody online
//! and nobody watching, and rebuilds both as clients register again (a
//! client re-sends its watches after every registration, and each `watch` is
//! answered with the peer's state at that moment).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{Router, RouterOutput};
use crate::ids::{ConnId, GroupName, NamePrefix, PeerId, ReqId, Target};
use crate::wire::directory::{Entry, GroupEntry, PeerEntry, DEFAULT_PAGE, MAX_ENTRY_LEN, MAX_PAGE};
use crate::wire::{ErrorCode, ServerFrame, FRAME_OVERHEAD};

/// Whether registered peers may list the peer directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Directory {
    /// `peers` lists registered IDs to any registered peer.
    Public,
    /// `peers` is refused with `directory_private`; a peer is found only by
    /// an ID already known (`who`, `watch`). The default: listing lets any
    /// registered peer enumerate every ID.
    #[default]
    Private,
}

/// Who watches whom, and when each peer's last session last spoke. Soft
/// state of the primary; see the module docs.
#[derive(Debug, Default)]
pub(super) struct Presence {
    /// Per watched peer, the connections watching it.
    watchers: BTreeMap<PeerId, BTreeSet<ConnId>>,
    /// Per connection, the peers it watches.
    watching: BTreeMap<ConnId, BTreeSet<PeerId>>,
    /// Per peer whose session ended, when that session last sent a frame.
    last_seen: BTreeMap<PeerId, Instant>,
}

impl Presence {
    /// Forgets everything: the router no longer serves.
    pub(super) fn clear(&mut self) {
        *self = Self::default();
    }

    /// How many watches live sessions hold.
    pub(super) fn watch_count(&self) -> usize {
        self.watching.values().map(BTreeSet::len).sum()
    }
}

/// The entries of one page and the cursor to the next, from `entries` in
/// name order, all after the cursor and matching the prefix.
fn page<T, K: Clone>(entries: impl Iterator<Item = (K, T)>, limit: usize) -> (Vec<T>, Option<K>) {
    let mut page = Vec::new();
    let mut last = None;
    for (key, entry) in entries {
        if page.len() == limit {
            return (page, last);
        }
        page.push(entry);
        last = Some(key);
    }
    (page, None)
}

/// The keys of `map` after `after` and starting with `prefix`, in order.
fn range_of<'a, K, V>(
    map: &'a BTreeMap<K, V>,
    prefix: Option<&'a NamePrefix>,
    after: Option<&'a str>,
) -> impl Iterator<Item = (&'a K, &'a V)>
where
    K: Ord + std::borrow::Borrow<str>,
{
    let prefix = prefix.map_or("", NamePrefix::as_str);
    let start = match after {
        Some(after) if after >= prefix => Bound::Excluded(after),
        _ => Bound::Included(prefix),
    };
    map.range::<str, _>((start, Bound::<&str>::Unbounded))
        .take_while(move |(k, _)| k.borrow().starts_with(prefix))
}

impl Router {
    /// How many entries a page asking for `limit` gets.
    fn page_len(&self, limit: Option<u32>) -> usize {
        let fits = self.config.max_frame_len.saturating_sub(FRAME_OVERHEAD) / MAX_ENTRY_LEN;
        let wanted = limit.map_or(DEFAULT_PAGE, |l| l as usize);
        wanted.clamp(1, MAX_PAGE).min(fits.max(1))
    }

    fn online(&self, peer: &PeerId) -> bool {
        self.sessions.contains_key(peer)
    }

    pub(super) fn handle_who(&mut self, now: Instant, conn: ConnId, req: ReqId, name: Target) {
        let entry = if self.state.peers.contains_key(name.as_str()) {
            let peer = name.as_peer();
            let online = self.online(&peer);
            let last_seen = self.presence.last_seen.get(&peer).filter(|_| !online);
            let last_seen_ms_ago = last_seen.map(|t| {
                let ago = now.saturating_duration_since(*t).as_millis();
                u64::try_from(ago).unwrap_or(u64::MAX)
            });
            Some(Entry::Peer {
                online,
                last_seen_ms_ago,
            })
        } else {
            self.state.groups.get(name.as_str()).map(|g| Entry::Group {
                creator: g.creator.clone(),
                members: g.members.len(),
            })
        };
        self.send(conn, ServerFrame::WhoIs { req, name, entry });
    }

    pub(super) fn handle_peers(
        &mut self,
        conn: ConnId,
        req: ReqId,
        prefix: Option<NamePrefix>,
        after: Option<PeerId>,
        limit: Option<u32>,
    ) {
        if self.config.directory == Directory::Private {
            let message = "the peer directory of this cluster is private: look a peer up by ID with \"who\"";
            self.error(conn, Some(req), ErrorCode::DirectoryPrivate, message.into());
            return;
        }
        let after = after.as_ref().map(PeerId::as_str);
        let entries = range_of(&self.state.peers, prefix.as_ref(), after).map(|(id, _)| {
            let entry = PeerEntry {
                id: id.clone(),
                online: self.online(id),
            };
            (id.clone(), entry)
        });
        let (peers, next) = page(entries, self.page_len(limit));
        self.send(conn, ServerFrame::PeerList { req, peers, next });
    }

    pub(super) fn handle_groups(
        &mut self,
        conn: ConnId,
        req: ReqId,
        prefix: Option<NamePrefix>,
        after: Option<GroupName>,
        limit: Option<u32>,
    ) {
        let after = after.as_ref().map(GroupName::as_str);
        let entries = range_of(&self.state.groups, prefix.as_ref(), after).map(|(name, g)| {
            let entry = GroupEntry {
                name: name.clone(),
                members: g.members.len(),
            };
            (name.clone(), entry)
        });
        let (groups, next) = page(entries, self.page_len(limit));
        self.send(conn, ServerFrame::GroupList { req, groups, next });
    }

    pub(super) fn handle_members(
        &mut self,
        conn: ConnId,
        me: &PeerId,
        req: ReqId,
        group: GroupName,
        after: Option<PeerId>,
        limit: Option<u32>,
    ) {
        let Some(g) = self.state.groups.get(&group) else {
            let message = format!("no group is named {group}");
            self.error(conn, Some(req), ErrorCode::UnknownGroup, message);
            return;
        };
        if !g.members.contains(me) {
            let message = format!("only members of group {group} may list its members");
            self.error(conn, Some(req), ErrorCode::NotAMember, message);
            return;
        }
        let start = after.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
        let entries = g.members.range::<PeerId, _>((start, Bound::Unbounded)).map(|id| {
            let entry = PeerEntry {
                id: id.clone(),
                online: self.online(id),
            };
            (id.clone(), entry)
        });
        let (members, next) = page(entries, self.page_len(limit));
        let frame = ServerFrame::MemberList {
            req,
            group,
            members,
            next,
        };
        self.send(conn, frame);
    }

    pub(super) fn handle_watch(&mut self, conn: ConnId, req: ReqId, peer: PeerId) {
        if !self.state.peers.contains_key(&peer) {
            let message = format!("no peer is named {peer}");
            self.error(conn, Some(req), ErrorCode::UnknownRecipient, message);
            return;
        }
        let watching = self.presence.watching.entry(conn).or_default();
        if !watching.contains(&peer) && watching.len() >= self.config.max_watches {
            let message = format!(
                "this session already watches {} peers, the most one session may",
                self.config.max_watches
            );
            self.error(conn, Some(req), ErrorCode::TooManyWatches, message);
            return;
        }
        watching.insert(peer.clone());
        self.presence
            .watchers
            .entry(peer.clone())
            .or_default()
            .insert(conn);
        let online = self.online(&peer);
        let frame = ServerFrame::Presence {
            req: Some(req),
            peer,
            online,
        };
        self.send(conn, frame);
    }

    pub(super) fn handle_unwatch(&mut self, conn: ConnId, req: ReqId, peer: PeerId) {
        self.unwatch(conn, &peer);
        self.send(conn, ServerFrame::Ok { req });
    }

    fn unwatch(&mut self, conn: ConnId, peer: &PeerId) {
        if let Some(watching) = self.presence.watching.get_mut(&conn) {
            watching.remove(peer);
            if watching.is_empty() {
                self.presence.watching.remove(&conn);
            }
        }
        if let Some(watchers) = self.presence.watchers.get_mut(peer) {
            watchers.remove(&conn);
            if watchers.is_empty() {
                self.presence.watchers.remove(peer);
            }
        }
    }

    /// Drops every watch of a connection that is gone.
    pub(super) fn drop_watches(&mut self, conn: ConnId) {
        let Some(watching) = self.presence.watching.remove(&conn) else {
            return;
        };
        for peer in watching {
            self.unwatch(conn, &peer);
        }
    }

    /// `peer`'s session started (`last_seen` is `None`) or ended, having
    /// last sent a frame at `last_seen`: tells its watchers.
    pub(super) fn presence_changed(&mut self, peer: &PeerId, last_seen: Option<Instant>) {
        let online = last_seen.is_none();
        match last_seen {
            Some(at) => self.presence.last_seen.insert(peer.clone(), at),
            None => self.presence.last_seen.remove(peer),
        };
        let watchers: Vec<ConnId> = self
            .presence
            .watchers
            .get(peer)
            .map(|w| w.iter().copied().collect())
            .unwrap_or_default();
        for conn in watchers {
            let frame = ServerFrame::Presence {
                req: None,
                peer: peer.clone(),
                online,
            };
            self.emit(RouterOutput::Send(conn, frame));
        }
    }

    /// Tells the other online members of `group` that `peer` joined or left.
    pub(super) fn membership_changed(&mut self, group: &GroupName, peer: &PeerId, joined: bool) {
        let Some(g) = self.state.groups.get(group) else {
            return;
        };
        let conns: Vec<ConnId> = g
            .members
            .iter()
            .filter(|m| *m != peer)
            .filter_map(|m| self.sessions.get(m).map(|s| s.conn))
            .collect();
        for conn in conns {
            let frame = ServerFrame::Membership {
                group: group.clone(),
                peer: peer.clone(),
                joined,
            };
            self.emit(RouterOutput::Send(conn, frame));
        }
    }
}
