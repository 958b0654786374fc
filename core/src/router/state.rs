//! The router's durable state and the changes that move it.
//!
//! Everything a router must not forget — registrations, groups, mailboxes,
//! per-sender sequence numbers — lives in [`State`], and [`State::apply`] is
//! the only way to change it. The router validates a request first and then
//! applies a [`Change`], so the same sequence of changes always rebuilds the
//! same state: that is what a log shipped to backups replays.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::secrets::{KdfParams, SecretHash};
use crate::ids::{DeliveryId, GroupName, PeerId, Seq, Target};
use crate::wire::tagged::tagged_serde;
use crate::wire::{ErrorCode, MAX_IN_FLIGHT};

/// What one mailbox item costs on top of its text: the entry, its key
/// and its fixed fields, rounded up. Budgets count items at this weight, so
/// that even empty messages and receipts fill a mailbox.
pub const ITEM_OVERHEAD: usize = 128;

/// An item waiting in a peer's mailbox until the peer acknowledges it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Item {
    /// A message addressed to the mailbox's owner (directly or via a group).
    Message {
        from: PeerId,
        seq: Seq,
        to: Target,
        body: Arc<str>,
    },
    /// A receipt for a message the mailbox's owner sent: `by` has it.
    Receipt { seq: Seq, to: Target, by: PeerId },
}

impl Item {
    /// What the item counts against a mailbox's byte budget.
    pub(crate) fn weight(&self) -> usize {
        match self {
            Item::Message { from, to, body, .. } => message_weight(from, to, body),
            Item::Receipt { to, by, .. } => ITEM_OVERHEAD + to.as_str().len() + by.as_str().len(),
        }
    }
}

/// What a message from `from` to `to` with `body` weighs in each
/// recipient's mailbox.
pub(crate) fn message_weight(from: &PeerId, to: &Target, body: &str) -> usize {
    ITEM_OVERHEAD + from.as_str().len() + to.as_str().len() + body.len()
}

/// A registered peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PeerRecord {
    /// The salt its secret was stretched with.
    pub(crate) salt: [u8; 16],
    /// The parameters its secret was stretched with.
    pub(crate) kdf: KdfParams,
    secret_hash: SecretHash,
    /// The highest sequence number accepted or rejected from this peer.
    pub(crate) last_seq: Seq,
    /// Recent rejections, so a resent rejected message is refused again
    /// rather than reported Sent. Holds at most [`MAX_IN_FLIGHT`] entries.
    #[serde(with = "pairs")]
    pub(crate) rejected: BTreeMap<Seq, ErrorCode>,
    /// Messages and receipts not yet acknowledged, in the order stored.
    #[serde(with = "pairs")]
    pub(crate) mailbox: BTreeMap<DeliveryId, Item>,
    next_delivery: DeliveryId,
    /// How many of the mailbox items are messages (receipts are not counted
    /// against the mailbox limit).
    pub(crate) queued_messages: usize,
    /// The weight of every item in the mailbox, receipts included.
    pub(crate) queued_bytes: usize,
}

impl PeerRecord {
    /// Whether `hash`, a secret stretched with this record's salt and
    /// parameters, is the one this peer registered with; compared in
    /// constant time.
    pub(crate) fn matches(&self, hash: &SecretHash) -> bool {
        hash.ct_eq(&self.secret_hash).into()
    }

    /// Stores `item`; returns its weight.
    fn store(&mut self, item: Item) -> usize {
        if matches!(item, Item::Message { .. }) {
            self.queued_messages += 1;
        }
        let weight = item.weight();
        self.queued_bytes += weight;
        self.next_delivery = self.next_delivery.next();
        self.mailbox.insert(self.next_delivery, item);
        weight
    }
}

/// A group and its members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Group {
    pub(crate) creator: PeerId,
    pub(crate) members: BTreeSet<PeerId>,
}

/// One change to the router's state: what the primary's log holds and
/// ships to its backups. Changes are produced only for requests that have
/// been validated, so applying one cannot fail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    /// A new peer claims its ID.
    Registered {
        /// The peer.
        peer: PeerId,
        /// The salt drawn for its secret.
        salt: [u8; 16],
        /// The argon2id parameters its secret was stretched with.
        kdf: KdfParams,
        /// argon2id of the secret with that salt and those parameters.
        secret_hash: SecretHash,
    },
    /// A message is accepted and stored in each recipient's mailbox.
    Accepted {
        /// The sender.
        from: PeerId,
        /// The sender's sequence number.
        seq: Seq,
        /// The addressee as sent.
        to: Target,
        /// The peers it goes to.
        recipients: Vec<PeerId>,
        /// The text.
        body: Arc<str>,
    },
    /// A message is refused for good; resending it gets the same answer.
    Rejected {
        /// The sender.
        from: PeerId,
        /// The sender's sequence number.
        seq: Seq,
        /// Why.
        code: ErrorCode,
    },
    /// `peer` acknowledged a mailbox item, or with `through` every item of
    /// its mailbox from `delivery` to `through`; each message turns into a
    /// receipt in its sender's mailbox, in delivery order.
    Acked {
        /// The mailbox's owner.
        peer: PeerId,
        /// The (first) item; it is in the mailbox.
        delivery: DeliveryId,
        /// The last item of a range, if there is more than one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        through: Option<DeliveryId>,
    },
    /// A group is created with its creator as the only member.
    GroupCreated {
        /// The group.
        group: GroupName,
        /// Its creator and first member.
        creator: PeerId,
    },
    /// `peer` joins `group`.
    Joined {
        /// The group.
        group: GroupName,
        /// The new member.
        peer: PeerId,
    },
    /// `peer` leaves `group`.
    Left {
        /// The group.
        group: GroupName,
        /// The member leaving.
        peer: PeerId,
    },
}

tagged_serde!(
    Change,
    tag = "change",
    expecting = "internally tagged enum Change"
);

/// The router's durable state: registrations, groups and mailboxes. See the
/// module docs. Its fields are private; a checkpoint carries it whole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub(crate) peers: BTreeMap<PeerId, PeerRecord>,
    pub(crate) groups: BTreeMap<GroupName, Group>,
    /// The weight of every mailbox item of every peer.
    pub(crate) stored_bytes: usize,
    /// Per peer, how many groups it created or belongs to (a group it
    /// created counts even after it left: groups are never deleted).
    pub(crate) groups_of: BTreeMap<PeerId, usize>,
}

/// A change that does not follow from the state it was to be applied to:
/// it names a peer that is not registered, registers one twice,
/// acknowledges an item that is not in the mailbox, or creates a group
/// that exists. The records it came from do not belong together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Inconsistent(String);

impl State {
    /// The highest sequence number accepted or refused from `peer`, if it
    /// is registered.
    pub fn last_seq(&self, peer: &PeerId) -> Option<Seq> {
        self.peers.get(peer).map(|r| r.last_seq)
    }

    /// Applies `change` if it follows from this state; otherwise leaves the
    /// state as it was and says why. For changes this router did not
    /// validate itself: those its storage or its primary hands it.
    pub fn apply_checked(&mut self, change: &Change) -> Result<(), Inconsistent> {
        self.check(change)?;
        self.apply(change);
        Ok(())
    }

    /// Whether [`State::apply`] may be given `change`.
    fn check(&self, change: &Change) -> Result<(), Inconsistent> {
        let registered = |peer: &PeerId| {
            self.peers
                .get(peer)
                .ok_or_else(|| Inconsistent(format!("it names {peer}, who is not registered")))
        };
        match change {
            Change::Registered { peer, .. } => {
                if self.peers.contains_key(peer) {
                    return Err(Inconsistent(format!(
                        "it registers {peer}, who is registered already"
                    )));
                }
            }
            Change::Accepted { from, recipients, .. } => {
                registered(from)?;
                for recipient in recipients {
                    registered(recipient)?;
                }
            }
            Change::Rejected { from, .. } => {
                registered(from)?;
            }
            Change::Acked {
                peer,
                delivery,
                through,
            } => {
                if !registered(peer)?.mailbox.contains_key(delivery) {
                    return Err(Inconsistent(format!(
                        "it acknowledges delivery {delivery} to {peer}, which is not in the mailbox"
                    )));
                }
                if through.is_some_and(|through| through < *delivery) {
                    return Err(Inconsistent(format!(
                        "it acknowledges a range of {peer}'s mailbox that ends before it begins"
                    )));
                }
            }
            Change::GroupCreated { group, .. } => {
                if self.groups.contains_key(group) {
                    return Err(Inconsistent(format!("it creates {group}, which exists already")));
                }
            }
            Change::Joined { .. } | Change::Left { .. } => {}
        }
        Ok(())
    }

    /// Applies one validated change.
    pub(crate) fn apply(&mut self, change: &Change) {
        match change {
            Change::Registered {
                peer,
                salt,
                kdf,
                secret_hash,
            } => {
                debug_assert!(!self.peers.contains_key(peer));
                self.peers.insert(
                    peer.clone(),
                    PeerRecord {
                        salt: *salt,
                        kdf: *kdf,
                        secret_hash: *secret_hash,
                        last_seq: Seq(0),
                        rejected: BTreeMap::new(),
                        mailbox: BTreeMap::new(),
                        next_delivery: DeliveryId(0),
                        queued_messages: 0,
                        queued_bytes: 0,
                    },
                );
            }
            Change::Accepted {
                from,
                seq,
                to,
                recipients,
                body,
            } => {
                self.advance_seq(from, *seq);
                for recipient in recipients {
                    let record = self.peer_mut(recipient);
                    let weight = record.store(Item::Message {
                        from: from.clone(),
                        seq: *seq,
                        to: to.clone(),
                        body: Arc::clone(body),
                    });
                    self.stored_bytes += weight;
                }
            }
            Change::Rejected { from, seq, code } => {
                self.advance_seq(from, *seq);
                let record = self.peer_mut(from);
                record.rejected.insert(*seq, *code);
                while record.rejected.len() as u64 > MAX_IN_FLIGHT {
                    record.rejected.pop_first();
                }
            }
            Change::Acked {
                peer,
                delivery,
                through,
            } => {
                debug_assert!(
                    self.peers
                        .get(peer)
                        .is_some_and(|r| r.mailbox.contains_key(delivery)),
                    "acked an item that is not in the mailbox"
                );
                let last = through.unwrap_or(*delivery);
                let mut next = *delivery;
                loop {
                    let record = self
                        .peers
                        .get_mut(peer)
                        .expect("changes only name registered peers");
                    let Some(&key) = record.mailbox.range(next..=last).next().map(|(key, _)| key) else {
                        break;
                    };
                    let item = record.mailbox.remove(&key).expect("the key was just found");
                    let weight = item.weight();
                    record.queued_bytes -= weight;
                    self.stored_bytes -= weight;
                    if let Item::Message { from, seq, to, .. } = item {
                        record.queued_messages -= 1;
                        if let Some(sender) = self.peers.get_mut(&from) {
                            self.stored_bytes += sender.store(Item::Receipt {
                                seq,
                                to,
                                by: peer.clone(),
                            });
                        }
                    }
                    if key >= last {
                        break;
                    }
                    next = key.next();
                }
            }
            Change::GroupCreated { group, creator } => {
                debug_assert!(!self.groups.contains_key(group));
                self.groups.insert(
                    group.clone(),
                    Group {
                        creator: creator.clone(),
                        members: BTreeSet::from([creator.clone()]),
                    },
                );
                *self.groups_of.entry(creator.clone()).or_default() += 1;
            }
            Change::Joined { group, peer } => {
                if let Some(g) = self.groups.get_mut(group) {
                    if g.members.insert(peer.clone()) && g.creator != *peer {
                        *self.groups_of.entry(peer.clone()).or_default() += 1;
                    }
                }
            }
            Change::Left { group, peer } => {
                if let Some(g) = self.groups.get_mut(group) {
                    if g.members.remove(peer) && g.creator != *peer {
                        if let Some(count) = self.groups_of.get_mut(peer) {
                            *count -= 1;
                            if *count == 0 {
                                self.groups_of.remove(peer);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Planted bug: forget the oldest messages of a mailbox over `limit`.
    #[cfg(feature = "planted-bugs")]
    pub(crate) fn planted_drop_oldest(&mut self, peer: &PeerId, limit: usize) {
        let record = self.peers.get_mut(peer).expect("a registered peer");
        while record.queued_messages > limit {
            let oldest = record
                .mailbox
                .iter()
                .find(|(_, item)| matches!(item, Item::Message { .. }))
                .map(|(d, _)| *d);
            let Some(oldest) = oldest else { break };
            if let Some(item) = record.mailbox.remove(&oldest) {
                record.queued_bytes -= item.weight();
                self.stored_bytes -= item.weight();
            }
            record.queued_messages -= 1;
        }
    }

    fn advance_seq(&mut self, from: &PeerId, seq: Seq) {
        let record = self.peer_mut(from);
        record.last_seq = record.last_seq.max(seq);
    }

    fn peer_mut(&mut self, peer: &PeerId) -> &mut PeerRecord {
        self.peers
            .get_mut(peer)
            .expect("changes only name registered peers")
    }
}

/// Serializes a map with numeric keys as a list of pairs: JSON object keys
/// are strings, which numeric newtypes do not read back.
mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S, K, V>(map: &BTreeMap<K, V>, serializer: S) -> Result<S::Ok, S::Error>
    where
        S: Serializer,
        K: Serialize,
        V: Serialize,
    {
        serializer.collect_seq(map.iter())
    }

    pub(super) fn deserialize<'de, D, K, V>(deserializer: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        D: Deserializer<'de>,
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(deserializer)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(s: &str) -> PeerId {
        PeerId::new(s).unwrap()
    }

    fn registered(name: &str) -> Change {
        Change::Registered {
            peer: peer(name),
            salt: [7; 16],
            kdf: KdfParams::CHEAPEST,
            secret_hash: [9; 32],
        }
    }

    fn message(from: &str, seq: u64, to: &str) -> Change {
        Change::Accepted {
            from: peer(from),
            seq: Seq(seq),
            to: Target::new(to).unwrap(),
            recipients: vec![peer(to)],
            body: Arc::from("m"),
        }
    }

    /// Every change that does not follow from the state is refused and
    /// leaves it as it was; those that do are applied.
    #[test]
    fn a_change_that_does_not_follow_from_the_state_is_refused() {
        let mut state = State::default();
        for change in [registered("a"), registered("b"), message("a", 1, "b")] {
            state.apply_checked(&change).expect("follows");
        }
        let g = GroupName::new("g").unwrap();
        state
            .apply_checked(&Change::GroupCreated {
                group: g.clone(),
                creator: peer("a"),
            })
            .expect("follows");
        let mut to_stranger = message("a", 2, "b");
        if let Change::Accepted { recipients, .. } = &mut to_stranger {
            recipients.push(peer("c"));
        }
        let refused = [
            (registered("a"), "a, who is registered already"),
            (message("c", 1, "a"), "c, who is not registered"),
            (to_stranger, "c, who is not registered"),
            (
                Change::Rejected {
                    from: peer("c"),
                    seq: Seq(1),
                    code: ErrorCode::MailboxFull,
                },
                "c, who is not registered",
            ),
            (
                Change::Acked {
                    peer: peer("c"),
                    delivery: DeliveryId(1),
                    through: None,
                },
                "c, who is not registered",
            ),
            (
                Change::Acked {
                    peer: peer("b"),
                    delivery: DeliveryId(2),
                    through: None,
                },
                "delivery 2 to b, which is not in the mailbox",
            ),
            (
                Change::Acked {
                    peer: peer("b"),
                    delivery: DeliveryId(1),
                    through: Some(DeliveryId(0)),
                },
                "a range of b's mailbox that ends before it begins",
            ),
            (
                Change::GroupCreated {
                    group: g,
                    creator: peer("b"),
                },
                "g, which exists already",
            ),
        ];
        for (change, why) in refused {
            let before = state.clone();
            let error = state.apply_checked(&change).expect_err("refused");
            assert!(error.to_string().contains(why), "{change:?}: {error}");
            assert_eq!(state, before, "{change:?} moved the state");
        }
        let acked = Change::Acked {
            peer: peer("b"),
            delivery: DeliveryId(1),
            through: None,
        };
        state.apply_checked(&acked).expect("follows");
        assert_eq!(state.peers[&peer("b")].queued_messages, 0);
    }

    #[test]
    fn a_range_acknowledgement_is_its_items_acknowledged_one_by_one() {
        // b's mailbox: messages from a, c and b itself, a receipt, and a
        // gap where an item was acknowledged already.
        let mut state = State::default();
        for name in ["a", "b", "c"] {
            state.apply(&registered(name));
        }
        for (from, seq) in [("a", 1), ("c", 1), ("b", 1), ("a", 2), ("c", 2), ("a", 3)] {
            state.apply(&message(from, seq, "b"));
        }
        state.apply(&message("b", 2, "a"));
        state.apply(&Change::Acked {
            peer: peer("a"),
            delivery: DeliveryId(1),
            through: None,
        });
        state.apply(&Change::Acked {
            peer: peer("b"),
            delivery: DeliveryId(4),
            through: None,
        });
        let b = &state.peers[&peer("b")];
        let items: Vec<DeliveryId> = b.mailbox.keys().copied().collect();
        assert_eq!(items.len(), 6, "five messages and a receipt: {items:?}");

        let (first, last) = (items[1], items[4]);
        let mut of_one = state.clone();
        let range_of_one = Change::Acked {
            peer: peer("b"),
            delivery: first,
            through: Some(first),
        };
        of_one
            .apply_checked(&range_of_one)
            .expect("a range of one item follows");
        let mut single = state.clone();
        single.apply(&Change::Acked {
            peer: peer("b"),
            delivery: first,
            through: None,
        });
        assert_eq!(of_one, single);
        let mut one_by_one = state.clone();
        for delivery in &items[1..=4] {
            one_by_one.apply(&Change::Acked {
                peer: peer("b"),
                delivery: *delivery,
                through: None,
            });
        }
        let range = Change::Acked {
            peer: peer("b"),
            delivery: first,
            through: Some(last),
        };
        state.apply_checked(&range).expect("follows");
        assert_eq!(state, one_by_one);
        let left: Vec<DeliveryId> = state.peers[&peer("b")].mailbox.keys().copied().collect();
        assert_eq!(
            left.len(),
            3,
            "the two outside the range and b's own receipt: {left:?}"
        );
        assert_eq!(left[..2], [items[0], items[5]]);
    }

    #[test]
    fn a_peer_counts_the_groups_it_created_or_belongs_to() {
        let mut state = State::default();
        for name in ["a", "b"] {
            state.apply(&registered(name));
        }
        let g = |name: &str| GroupName::new(name).unwrap();
        let counts = |state: &State| -> Vec<(String, usize)> {
            state
                .groups_of
                .iter()
                .map(|(peer, n)| (peer.to_string(), *n))
                .collect()
        };
        let change = |state: &mut State, join: bool, group: &str, who: &str| {
            let (group, peer) = (g(group), peer(who));
            state.apply(&if join {
                Change::Joined { group, peer }
            } else {
                Change::Left { group, peer }
            });
        };
        for group in ["g1", "g2"] {
            state.apply(&Change::GroupCreated {
                group: g(group),
                creator: peer("a"),
            });
        }
        change(&mut state, true, "g1", "a");
        change(&mut state, true, "g1", "b");
        change(&mut state, true, "g1", "b");
        change(&mut state, true, "g2", "b");
        assert_eq!(
            counts(&state),
            [("a".into(), 2), ("b".into(), 2)],
            "joining twice counts once"
        );
        change(&mut state, false, "g1", "b");
        change(&mut state, false, "g1", "a");
        assert_eq!(
            counts(&state),
            [("a".into(), 2), ("b".into(), 1)],
            "a creator that leaves still counts the group it created"
        );
        change(&mut state, false, "g2", "b");
        change(&mut state, true, "g1", "a");
        assert_eq!(
            counts(&state),
            [("a".into(), 2)],
            "a creator that comes back is not counted twice"
        );
    }

    #[test]
    fn only_the_newest_refusals_of_a_peer_are_remembered() {
        let mut state = State::default();
        state.apply(&registered("a"));
        for seq in 1..=MAX_IN_FLIGHT + 2 {
            state.apply(&Change::Rejected {
                from: peer("a"),
                seq: Seq(seq),
                code: ErrorCode::MailboxFull,
            });
        }
        let rejected = &state.peers[&peer("a")].rejected;
        assert_eq!(rejected.len() as u64, MAX_IN_FLIGHT);
        assert_eq!(rejected.keys().next(), Some(&Seq(3)), "the oldest are forgotten");
    }

    #[test]
    fn an_acknowledgement_logged_before_ranges_still_reads() {
        let line = r#"{"change":"acked","peer":"b","delivery":5}"#;
        assert_eq!(
            serde_json::from_str::<Change>(line).unwrap(),
            Change::Acked {
                peer: peer("b"),
                delivery: DeliveryId(5),
                through: None,
            }
        );
    }

    #[test]
    fn a_change_with_a_field_this_version_does_not_know_is_refused() {
        // Ignoring it could misread the change, as a reader from before
        // ranges would read a range as its first item alone.
        let line = r#"{"change":"acked","peer":"b","delivery":5,"until":9}"#;
        let error = serde_json::from_str::<Change>(line).unwrap_err();
        assert!(error.to_string().contains("unknown field `until`"), "{error}");
    }

    #[test]
    fn a_checkpoint_survives_the_wire() {
        let mut state = State::default();
        for name in ["a", "b"] {
            state.apply(&Change::Registered {
                peer: peer(name),
                salt: [7; 16],
                kdf: KdfParams::CHEAPEST,
                secret_hash: [9; 32],
            });
        }
        state.apply(&Change::GroupCreated {
            group: GroupName::new("g").unwrap(),
            creator: peer("a"),
        });
        for seq in 1..=3 {
            state.apply(&Change::Accepted {
                from: peer("a"),
                seq: Seq(seq),
                to: Target::new("b").unwrap(),
                recipients: vec![peer("b")],
                body: Arc::from(format!("m{seq}")),
            });
        }
        state.apply(&Change::Acked {
            peer: peer("b"),
            delivery: DeliveryId(1),
            through: None,
        });
        state.apply(&Change::Rejected {
            from: peer("a"),
            seq: Seq(4),
            code: ErrorCode::MailboxFull,
        });
        let text = serde_json::to_string(&state).unwrap();
        let back: State = serde_json::from_str(&text).unwrap();
        assert_eq!(back, state);
        assert_eq!(back.peers[&peer("b")].mailbox.len(), 2);
        assert_eq!(back.peers[&peer("a")].mailbox.len(), 1, "the receipt");
    }
}
