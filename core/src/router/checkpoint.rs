//! A state in pieces: what a primary streams to a follower that must load
//! its whole state, one bounded [`StatePart`] per frame.
//!
//! [`State::into_parts`] cuts a state into parts of about
//! [`PART_BYTES`] each (a part holds at least one entry, so the largest is
//! one entry over); a [`StateBuilder`] puts the parts back together in
//! order and yields the very same state. Totals the state keeps (bytes
//! stored, groups per peer) are recomputed from the pieces rather than
//! trusted from the wire.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::state::{Group, Item, PeerRecord, State};
use crate::ids::{DeliveryId, GroupName, PeerId};

/// About how many bytes of state one part carries (by the weights mailbox
/// budgets use), so that a frame stays far below every frame limit.
pub const PART_BYTES: usize = 256 * 1024;

/// One piece of a state, in the order [`State::into_parts`] makes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StatePart(Part);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "part", rename_all = "snake_case", deny_unknown_fields)]
enum Part {
    /// Registered peers, each without its mailbox's items.
    Peers { peers: Vec<(PeerId, PeerRecord)> },
    /// Items of one peer's mailbox, in order, after those sent before.
    Items {
        peer: PeerId,
        items: Vec<(DeliveryId, Item)>,
    },
    /// Groups.
    Groups { groups: Vec<(GroupName, Group)> },
}

/// What a peer record weighs in a part, its mailbox aside.
fn record_weight(peer: &PeerId, record: &PeerRecord) -> usize {
    128 + peer.as_str().len() + 16 * record.rejected.len()
}

fn group_weight(name: &GroupName, group: &Group) -> usize {
    64 + name.as_str().len() + group.members.iter().map(|m| 8 + m.as_str().len()).sum::<usize>()
}

/// Fills parts of about `budget` weight from `entries`, at least one entry
/// each.
fn cut<T>(entries: impl IntoIterator<Item = T>, budget: usize, weigh: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut parts = Vec::new();
    let mut current = Vec::new();
    let mut weight = 0;
    for entry in entries {
        let w = weigh(&entry);
        if !current.is_empty() && weight + w > budget {
            parts.push(std::mem::take(&mut current));
            weight = 0;
        }
        weight += w;
        current.push(entry);
    }
    if !current.is_empty() {
        parts.push(current);
    }
    parts
}

impl State {
    /// The state in parts of about `budget` bytes each: the peers (without
    /// their mailboxes' items), every mailbox's items, then the groups.
    /// Message bodies are shared, not copied.
    pub fn into_parts(self, budget: usize) -> VecDeque<StatePart> {
        let mut parts = VecDeque::new();
        let mut mailboxes = Vec::new();
        let mut peers = Vec::with_capacity(self.peers.len());
        for (peer, mut record) in self.peers {
            let items = std::mem::take(&mut record.mailbox);
            if !items.is_empty() {
                mailboxes.push((peer.clone(), items));
            }
            peers.push((peer, record));
        }
        for chunk in cut(peers, budget, |(p, r)| record_weight(p, r)) {
            parts.push_back(StatePart(Part::Peers { peers: chunk }));
        }
        for (peer, items) in mailboxes {
            for chunk in cut(items, budget, |(_, item)| item.weight()) {
                parts.push_back(StatePart(Part::Items {
                    peer: peer.clone(),
                    items: chunk,
                }));
            }
        }
        for chunk in cut(self.groups, budget, |(n, g)| group_weight(n, g)) {
            parts.push_back(StatePart(Part::Groups { groups: chunk }));
        }
        parts
    }
}

/// Why a sequence of parts does not make a state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartError {
    /// Items for a peer no earlier part registered.
    #[error("mailbox items for {0}, who is not registered")]
    UnknownPeer(PeerId),
    /// An entry that an earlier part already carried, or items out of
    /// order.
    #[error("a part repeats or reorders what an earlier part carried")]
    Repeated,
    /// The mailboxes do not add up to the counts their records carry.
    #[error("the mailbox of {0} does not match its counts")]
    Inconsistent(PeerId),
}

/// Puts a state back together from its parts, in order.
#[derive(Debug, Default)]
pub struct StateBuilder {
    state: State,
    parts: u64,
}

impl StateBuilder {
    /// How many parts it has taken.
    pub fn parts(&self) -> u64 {
        self.parts
    }

    /// Takes the next part.
    pub fn add(&mut self, part: StatePart) -> Result<(), PartError> {
        match part.0 {
            Part::Peers { peers } => {
                for (peer, record) in peers {
                    if !record.mailbox.is_empty() || self.state.peers.insert(peer, record).is_some() {
                        return Err(PartError::Repeated);
                    }
                }
            }
            Part::Items { peer, items } => {
                let record = self
                    .state
                    .peers
                    .get_mut(&peer)
                    .ok_or_else(|| PartError::UnknownPeer(peer.clone()))?;
                for (delivery, item) in items {
                    if record
                        .mailbox
                        .last_key_value()
                        .is_some_and(|(d, _)| *d >= delivery)
                    {
                        return Err(PartError::Repeated);
                    }
                    record.mailbox.insert(delivery, item);
                }
            }
            Part::Groups { groups } => {
                for (name, group) in groups {
                    if self.state.groups.insert(name, group).is_some() {
                        return Err(PartError::Repeated);
                    }
                }
            }
        }
        self.parts += 1;
        Ok(())
    }

    /// The state, once every part is in; its totals recomputed and each
    /// mailbox checked against its record's counts.
    pub fn finish(self) -> Result<State, PartError> {
        let mut state = self.state;
        let mut stored = 0;
        for (peer, record) in &state.peers {
            let bytes: usize = record.mailbox.values().map(Item::weight).sum();
            let messages = record
                .mailbox
                .values()
                .filter(|i| matches!(i, Item::Message { .. }))
                .count();
            if bytes != record.queued_bytes || messages != record.queued_messages {
                return Err(PartError::Inconsistent(peer.clone()));
            }
            stored += bytes;
        }
        state.stored_bytes = stored;
        let mut groups_of: BTreeMap<PeerId, usize> = BTreeMap::new();
        for group in state.groups.values() {
            let mut counted: Vec<&PeerId> = group.members.iter().collect();
            if !group.members.contains(&group.creator) {
                counted.push(&group.creator);
            }
            for peer in counted {
                *groups_of.entry(peer.clone()).or_default() += 1;
            }
        }
        state.groups_of = groups_of;
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ids::{Seq, Target};
    use crate::router::secrets::KdfParams;
    use crate::router::Change;

    fn peer(s: &str) -> PeerId {
        PeerId::new(s).unwrap()
    }

    /// A state with 30 peers, mailboxes of up to 40 messages (some turned
    /// into receipts), and groups of every size up to 10.
    fn sample() -> State {
        let mut state = State::default();
        let names: Vec<PeerId> = (0..30).map(|i| peer(&format!("p{i}"))).collect();
        for name in &names {
            state.apply(&Change::Registered {
                peer: name.clone(),
                salt: [1; 16],
                kdf: KdfParams::CHEAPEST,
                secret_hash: [2; 32],
            });
        }
        for (i, from) in names.iter().enumerate() {
            for seq in 1..=(i as u64 + 10) {
                let to = &names[(i + seq as usize) % names.len()];
                state.apply(&Change::Accepted {
                    from: from.clone(),
                    seq: Seq(seq),
                    to: Target::new(to.as_str()).unwrap(),
                    recipients: vec![to.clone()],
                    body: Arc::from("x".repeat(100 * seq as usize)),
                });
            }
        }
        for name in names.iter().step_by(3) {
            state.apply(&Change::Acked {
                peer: name.clone(),
                delivery: DeliveryId(1),
                through: None,
            });
        }
        for g in 0..10 {
            let group = GroupName::new(format!("g{g}")).unwrap();
            state.apply(&Change::GroupCreated {
                group: group.clone(),
                creator: names[g].clone(),
            });
            for member in names.iter().skip(g).take(g) {
                state.apply(&Change::Joined {
                    group: group.clone(),
                    peer: member.clone(),
                });
            }
            if g % 2 == 0 {
                // A creator that left still counts the group as its own.
                state.apply(&Change::Left {
                    group,
                    peer: names[g].clone(),
                });
            }
        }
        state
    }

    fn rebuild(parts: impl IntoIterator<Item = StatePart>) -> Result<State, PartError> {
        let mut builder = StateBuilder::default();
        for part in parts {
            builder.add(part)?;
        }
        builder.finish()
    }

    #[test]
    fn a_state_cut_in_parts_of_any_size_comes_back_the_same() {
        let state = sample();
        for budget in [1, 500, 4096, PART_BYTES, usize::MAX] {
            let parts = state.clone().into_parts(budget);
            assert_eq!(rebuild(parts.clone()).unwrap(), state, "budget {budget}");
            // Each part keeps to its budget, give or take its last entry
            // (the largest here is under 4 kB), and survives the wire.
            for part in &parts {
                let json = serde_json::to_string(part).unwrap();
                if budget < usize::MAX {
                    assert!(
                        json.len() <= 2 * budget.max(4096) + 8192,
                        "{} bytes for {budget}",
                        json.len()
                    );
                }
                assert_eq!(&serde_json::from_str::<StatePart>(&json).unwrap(), part);
            }
        }
        assert!(state.clone().into_parts(4096).len() > 20);
        assert_eq!(
            rebuild(State::default().into_parts(PART_BYTES)).unwrap(),
            State::default()
        );
    }

    #[test]
    fn missing_repeated_or_reordered_parts_are_refused() {
        let state = sample();
        let parts: Vec<StatePart> = state.into_parts(2048).into();
        let items_at = parts
            .iter()
            .position(|p| matches!(p.0, Part::Items { .. }))
            .unwrap();
        // A mailbox part missing: its counts do not add up.
        let mut missing = parts.clone();
        missing.remove(items_at);
        assert!(matches!(rebuild(missing), Err(PartError::Inconsistent(_))));
        // A part twice.
        let mut twice = parts.clone();
        twice.insert(items_at, parts[items_at].clone());
        assert_eq!(rebuild(twice), Err(PartError::Repeated));
        let mut twice = parts.clone();
        twice.insert(1, parts[0].clone());
        assert_eq!(rebuild(twice), Err(PartError::Repeated));
        // Items before their peer.
        let mut early = parts.clone();
        let items = early.remove(items_at);
        early.insert(0, items);
        assert!(matches!(rebuild(early), Err(PartError::UnknownPeer(_))));
    }
}
