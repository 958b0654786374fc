//! A checker of PeerLink's client-visible invariants over a [`History`].
//!
//! It reads only what clients were asked and what they reported, and knows
//! nothing of the router's code. It assumes the history was recorded in a
//! fresh world where each peer's client ran without restarting, so that a
//! peer's k-th `Send` command is its message with sequence number k; and that
//! groups change membership only through `Create` (by a peer not yet in the
//! group), `Join` and `Leave`. Call it after the world was healed and drained
//! (see `World::heal_and_drain`): it treats anything still missing as lost.
//! The `cluster` module judges what the routers report of themselves
//! instead: commits, promotions and restarts that failed.

mod cluster;
mod presence;
mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use peerlink_core::client::{ClientEvent, Command, GroupOp};
use peerlink_core::ids::{Epoch, GroupName, Lsn, MsgId, PeerId, ReplicaId, Seq, Target};
use peerlink_core::testing::{History, What};

pub use cluster::{check_cluster, check_commits, Commit, Step};

/// A broken invariant, naming the message and peer concerned.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Violation {
    /// A message reported Sent never reached a recipient it had to reach.
    Lost {
        /// The message.
        id: MsgId,
        /// The recipient that lacks it.
        recipient: PeerId,
    },
    /// A recipient's application was handed the same message twice.
    Duplicated {
        /// The message.
        id: MsgId,
        /// The recipient.
        recipient: PeerId,
    },
    /// A recipient got a sender's messages out of send order.
    Reordered {
        /// The message that arrived too late.
        id: MsgId,
        /// The recipient.
        recipient: PeerId,
        /// The later message that arrived before it.
        after: Seq,
    },
    /// A recipient got a message nobody sent, or sent with other content.
    Phantom {
        /// The message.
        id: MsgId,
        /// The recipient.
        recipient: PeerId,
    },
    /// A message reached a peer that was not among its recipients.
    WrongRecipient {
        /// The message.
        id: MsgId,
        /// The peer that should not have it.
        recipient: PeerId,
    },
    /// Delivered was reported for a recipient that had not received it.
    DeliveredWithoutReceipt {
        /// The message.
        id: MsgId,
        /// The recipient named in the report.
        by: PeerId,
    },
    /// A recipient received the message but the sender never heard of it.
    DeliveryNotReported {
        /// The message.
        id: MsgId,
        /// The recipient.
        by: PeerId,
    },
    /// A message's reported state repeated or went backwards.
    StateRegressed {
        /// The message.
        id: MsgId,
        /// What happened.
        detail: String,
    },
    /// Two routers committed in the same epoch.
    TwoCommitters {
        /// The epoch.
        epoch: Epoch,
        /// The routers that reported commits in it.
        routers: Vec<ReplicaId>,
    },
    /// A deposed primary committed changes its successor did not have.
    DeposedCommit {
        /// The deposed primary.
        router: ReplicaId,
        /// Its epoch.
        epoch: Epoch,
        /// The commit point it reached.
        lsn: Lsn,
        /// The router promoted in its place.
        successor: ReplicaId,
        /// The successor's epoch.
        successor_epoch: Epoch,
        /// The successor's state when promoted.
        successor_lsn: Lsn,
    },
    /// A primary committed a change that fewer backups than the minimum
    /// hold: one more crash could lose what it acknowledged.
    CommittedBelowMinimum {
        /// The primary.
        router: ReplicaId,
        /// Its epoch.
        epoch: Epoch,
        /// The commit point.
        lsn: Lsn,
        /// How many backups held it.
        backups: usize,
        /// How many the configuration required.
        min_backups: usize,
    },
    /// A router forgot acknowledged state: a registration, a sequence
    /// number, a group or a membership (see the `state` module's rules).
    StateLost {
        /// The peer that saw it.
        peer: PeerId,
        /// What it saw.
        detail: String,
    },
    /// Once the world was quiet, a watcher's last presence news of a peer
    /// it watches was wrong, or it had none.
    PresenceWrong {
        /// The watcher.
        watcher: PeerId,
        /// The peer watched.
        peer: PeerId,
        /// The last news it had: online or not, or none at all.
        last: Option<bool>,
        /// Whether the peer was online.
        truth: bool,
    },
    /// A command was never answered.
    Unanswered {
        /// The peer that issued it.
        peer: PeerId,
        /// The command.
        command: String,
    },
    /// A router could not start from its own disk. The simulated disk only
    /// loses what was not synced and tears the last write, which recovery
    /// must survive: refusing means what the router wrote does not add up.
    Unrecoverable {
        /// The router.
        router: String,
        /// Why it refused.
        error: String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Lost { id, recipient } => write!(f, "lost: {id} never reached {recipient}"),
            Violation::Duplicated { id, recipient } => {
                write!(f, "duplicated: {recipient} received {id} twice")
            }
            Violation::Reordered { id, recipient, after } => {
                write!(f, "reordered: {recipient} received {id} after seq {after}")
            }
            Violation::Phantom { id, recipient } => {
                write!(f, "phantom: {recipient} received {id}, never sent so")
            }
            Violation::WrongRecipient { id, recipient } => {
                write!(f, "wrong recipient: {recipient} received {id}")
            }
            Violation::DeliveredWithoutReceipt { id, by } => {
                write!(f, "delivered without receipt: {id} reported delivered to {by}")
            }
            Violation::DeliveryNotReported { id, by } => {
                write!(
                    f,
                    "delivery not reported: {by} received {id}, sender never saw Delivered"
                )
            }
            Violation::StateRegressed { id, detail } => write!(f, "state regressed for {id}: {detail}"),
            Violation::TwoCommitters { epoch, routers } => {
                write!(f, "two committers: {routers:?} all committed in epoch {epoch}")
            }
            Violation::DeposedCommit {
                router,
                epoch,
                lsn,
                successor,
                successor_epoch,
                successor_lsn,
            } => write!(
                f,
                "deposed commit: {router} committed up to {lsn} in epoch {epoch} after {successor} was \
                 promoted in epoch {successor_epoch} with its state at {successor_lsn}"
            ),
            Violation::CommittedBelowMinimum {
                router,
                epoch,
                lsn,
                backups,
                min_backups,
            } => write!(
                f,
                "committed below the minimum: {router} committed up to {lsn} in epoch {epoch} with {backups} backup(s), fewer than {min_backups}"
            ),
            Violation::StateLost { peer, detail } => write!(f, "state lost: {peer}: {detail}"),
            Violation::Unanswered { peer, command } => write!(f, "unanswered: {peer} issued {command}"),
            Violation::Unrecoverable { router, error } => {
                write!(f, "unrecoverable: {router} could not start from its disk: {error}")
            }
            Violation::PresenceWrong {
                watcher,
                peer,
                last,
                truth,
            } => write!(
                f,
                "presence wrong: once quiet, {watcher}'s last news of {peer} was {}, but {peer} was {}",
                match last {
                    Some(true) => "online",
                    Some(false) => "offline",
                    None => "none",
                },
                if *truth { "online" } else { "offline" }
            ),
        }
    }
}

/// A message as its sender issued it.
struct Issued {
    index: usize,
    to: Target,
    body: String,
}

/// One membership change of one peer in one group, as issued and answered.
struct MembershipOp {
    joins: bool,
    issued: usize,
    acked: Option<usize>,
}

/// Checks every invariant over `history`; returns the violations found,
/// sorted, without repeats.
pub fn check(history: &History) -> Vec<Violation> {
    let mut v = BTreeSet::new();
    let peers: BTreeSet<PeerId> = history.iter().map(|r| r.peer.clone()).collect();

    let mut issued: BTreeMap<PeerId, Vec<Issued>> = BTreeMap::new();
    let mut group_cmds: BTreeMap<PeerId, Vec<(usize, GroupOp, GroupName)>> = BTreeMap::new();
    let mut group_answers: BTreeMap<PeerId, Vec<(usize, GroupOp, GroupName, bool)>> = BTreeMap::new();
    let mut sent: BTreeMap<MsgId, usize> = BTreeMap::new();
    let mut failed: BTreeSet<MsgId> = BTreeSet::new();
    let mut received: BTreeMap<(PeerId, MsgId), usize> = BTreeMap::new();
    let mut newest: BTreeMap<(PeerId, PeerId), Seq> = BTreeMap::new();
    let mut delivered: BTreeSet<(MsgId, PeerId)> = BTreeSet::new();

    for (index, record) in history.iter().enumerate() {
        let me = &record.peer;
        match &record.what {
            What::Issued(Command::Send { to, body }) => issued.entry(me.clone()).or_default().push(Issued {
                index,
                to: to.clone(),
                body: body.clone(),
            }),
            What::Issued(Command::Group(op, group)) => {
                group_cmds
                    .entry(me.clone())
                    .or_default()
                    .push((index, *op, group.clone()));
            }
            What::Issued(Command::Register | Command::Query(_)) => {}
            What::Observed(ClientEvent::Sent { id, .. }) => {
                if sent.insert(id.clone(), index).is_some() {
                    let detail = "Sent reported twice".into();
                    v.insert(Violation::StateRegressed {
                        id: id.clone(),
                        detail,
                    });
                }
            }
            What::Observed(ClientEvent::Failed { id: Some(id), .. }) => {
                failed.insert(id.clone());
            }
            What::Observed(ClientEvent::Received { id, to, body }) => {
                let original = issued
                    .get(&id.from)
                    .and_then(|list| list.get((id.seq.0 as usize).wrapping_sub(1)));
                if !original.is_some_and(|o| o.to == *to && o.body == *body) {
                    v.insert(Violation::Phantom {
                        id: id.clone(),
                        recipient: me.clone(),
                    });
                }
                if received.insert((me.clone(), id.clone()), index).is_some() {
                    v.insert(Violation::Duplicated {
                        id: id.clone(),
                        recipient: me.clone(),
                    });
                }
                let last = newest.entry((id.from.clone(), me.clone())).or_insert(Seq(0));
                if id.seq < *last {
                    v.insert(Violation::Reordered {
                        id: id.clone(),
                        recipient: me.clone(),
                        after: *last,
                    });
                }
                *last = (*last).max(id.seq);
            }
            What::Observed(ClientEvent::Delivered { id, by, .. }) => {
                if !received.contains_key(&(by.clone(), id.clone())) {
                    v.insert(Violation::DeliveredWithoutReceipt {
                        id: id.clone(),
                        by: by.clone(),
                    });
                }
                if !sent.contains_key(id) {
                    let detail = format!("Delivered to {by} before Sent");
                    v.insert(Violation::StateRegressed {
                        id: id.clone(),
                        detail,
                    });
                }
                if !delivered.insert((id.clone(), by.clone())) {
                    let detail = format!("Delivered to {by} reported twice");
                    v.insert(Violation::StateRegressed {
                        id: id.clone(),
                        detail,
                    });
                }
            }
            What::Observed(ClientEvent::GroupDone { op, group }) => {
                group_answers
                    .entry(me.clone())
                    .or_default()
                    .push((index, *op, group.clone(), true));
            }
            What::Observed(ClientEvent::GroupFailed { op, group, .. }) => {
                group_answers
                    .entry(me.clone())
                    .or_default()
                    .push((index, *op, group.clone(), false));
            }
            What::Observed(_) | What::Offline | What::Quiet => {}
        }
    }

    // Every command is answered; a group answer matches its command.
    let mut membership: BTreeMap<(GroupName, PeerId), Vec<MembershipOp>> = BTreeMap::new();
    for (peer, cmds) in &group_cmds {
        let answers = group_answers.remove(peer).unwrap_or_default();
        for (i, (issued_at, op, group)) in cmds.iter().enumerate() {
            let answer = answers.get(i).filter(|a| a.1 == *op && a.2 == *group);
            let Some((acked_at, _, _, ok)) = answer else {
                let command = format!("{op:?} {group}");
                v.insert(Violation::Unanswered {
                    peer: peer.clone(),
                    command,
                });
                continue;
            };
            if *ok {
                membership
                    .entry((group.clone(), peer.clone()))
                    .or_default()
                    .push(MembershipOp {
                        joins: *op != GroupOp::Leave,
                        issued: *issued_at,
                        acked: Some(*acked_at),
                    });
            }
        }
    }
    for (peer, list) in &issued {
        for (k, message) in list.iter().enumerate() {
            let id = MsgId {
                from: peer.clone(),
                seq: Seq(k as u64 + 1),
            };
            let Some(&sent_at) = sent.get(&id) else {
                if !failed.contains(&id) {
                    let command = format!("Send {id} to {}", message.to);
                    v.insert(Violation::Unanswered {
                        peer: peer.clone(),
                        command,
                    });
                }
                continue;
            };
            for recipient in &peers {
                let got = received.contains_key(&(recipient.clone(), id.clone()));
                let (must, may) = if message.to.as_str() == recipient.as_str() {
                    (true, true)
                } else if peers.contains(message.to.as_str()) || recipient == peer {
                    (false, false)
                } else {
                    let ops = membership
                        .get(&(message.to.as_group(), recipient.clone()))
                        .map_or(&[][..], Vec::as_slice);
                    member_bounds(ops, message.index, sent_at)
                };
                if must && !got {
                    v.insert(Violation::Lost {
                        id: id.clone(),
                        recipient: recipient.clone(),
                    });
                }
                if got && !may {
                    v.insert(Violation::WrongRecipient {
                        id: id.clone(),
                        recipient: recipient.clone(),
                    });
                }
                if got && !delivered.contains(&(id.clone(), recipient.clone())) {
                    v.insert(Violation::DeliveryNotReported {
                        id: id.clone(),
                        by: recipient.clone(),
                    });
                }
            }
        }
    }
    for (recipient, id) in received.keys() {
        if failed.contains(id) {
            v.insert(Violation::Phantom {
                id: id.clone(),
                recipient: recipient.clone(),
            });
        }
    }
    v.extend(state::check_state(history));
    v.extend(presence::check_presence(history));
    v.into_iter().collect()
}

/// Whether a peer with membership history `ops` must, and may, receive a
/// group message issued at `issued` and reported Sent at `sent`: the router
/// accepted it somewhere in between.
fn member_bounds(ops: &[MembershipOp], issued: usize, sent: usize) -> (bool, bool) {
    let settled = ops.iter().rposition(|op| op.acked.is_some_and(|a| a < issued));
    let member_before = settled.is_some_and(|i| ops[i].joins);
    let later = &ops[settled.map_or(0, |i| i + 1)..];
    let changes_in_window = later
        .iter()
        .any(|op| op.issued < sent && op.joins != member_before);
    let must = member_before && !changes_in_window;
    let may = member_before || changes_in_window;
    (must, may)
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerlink_core::testing::Record;

    fn p(s: &str) -> PeerId {
        PeerId::new(s).unwrap()
    }

    fn id(from: &str, seq: u64) -> MsgId {
        MsgId {
            from: p(from),
            seq: Seq(seq),
        }
    }

    fn issue(peer: &str, to: &str, body: &str) -> Record {
        Record {
            peer: p(peer),
            what: What::Issued(Command::Send {
                to: Target::new(to).unwrap(),
                body: body.into(),
            }),
        }
    }

    fn event(peer: &str, e: ClientEvent) -> Record {
        Record {
            peer: p(peer),
            what: What::Observed(e),
        }
    }

    fn sent(from: &str, seq: u64, to: &str) -> Record {
        event(
            from,
            ClientEvent::Sent {
                id: id(from, seq),
                to: Target::new(to).unwrap(),
            },
        )
    }

    fn recv(at: &str, from: &str, seq: u64, to: &str, body: &str) -> Record {
        event(
            at,
            ClientEvent::Received {
                id: id(from, seq),
                to: Target::new(to).unwrap(),
                body: body.into(),
            },
        )
    }

    fn delivered(from: &str, seq: u64, to: &str, by: &str) -> Record {
        event(
            from,
            ClientEvent::Delivered {
                id: id(from, seq),
                to: Target::new(to).unwrap(),
                by: p(by),
            },
        )
    }

    fn group(peer: &str, op: GroupOp, g: &str, done: bool) -> Vec<Record> {
        let g = GroupName::new(g).unwrap();
        let answer = if done {
            ClientEvent::GroupDone { op, group: g.clone() }
        } else {
            ClientEvent::GroupFailed {
                op,
                group: g.clone(),
                code: peerlink_core::wire::ErrorCode::UnknownGroup,
                message: String::new(),
            }
        };
        vec![
            Record {
                peer: p(peer),
                what: What::Issued(Command::Group(op, g)),
            },
            event(peer, answer),
        ]
    }

    #[test]
    fn a_clean_history_passes() {
        let h = vec![
            issue("a", "b", "x"),
            sent("a", 1, "b"),
            recv("b", "a", 1, "b", "x"),
            delivered("a", 1, "b", "b"),
        ];
        assert_eq!(check(&h), vec![]);
    }

    #[test]
    fn each_violation_is_caught() {
        let lost = vec![
            issue("a", "b", "x"),
            sent("a", 1, "b"),
            event(
                "b",
                ClientEvent::Registered {
                    peer: p("b"),
                    next_seq: Seq(1),
                },
            ),
        ];
        assert_eq!(
            check(&lost),
            vec![Violation::Lost {
                id: id("a", 1),
                recipient: p("b")
            }]
        );

        let dup = vec![
            issue("a", "b", "x"),
            sent("a", 1, "b"),
            recv("b", "a", 1, "b", "x"),
            recv("b", "a", 1, "b", "x"),
            delivered("a", 1, "b", "b"),
        ];
        assert_eq!(
            check(&dup),
            vec![Violation::Duplicated {
                id: id("a", 1),
                recipient: p("b")
            }]
        );

        let reordered = vec![
            issue("a", "b", "x"),
            issue("a", "b", "y"),
            sent("a", 1, "b"),
            sent("a", 2, "b"),
            recv("b", "a", 2, "b", "y"),
            recv("b", "a", 1, "b", "x"),
            delivered("a", 1, "b", "b"),
            delivered("a", 2, "b", "b"),
        ];
        assert_eq!(
            check(&reordered),
            vec![Violation::Reordered {
                id: id("a", 1),
                recipient: p("b"),
                after: Seq(2)
            }]
        );

        let phantom = vec![
            issue("a", "b", "x"),
            sent("a", 1, "b"),
            recv("b", "a", 1, "b", "forged"),
            delivered("a", 1, "b", "b"),
        ];
        assert_eq!(
            check(&phantom),
            vec![Violation::Phantom {
                id: id("a", 1),
                recipient: p("b")
            }]
        );

        let early = vec![
            issue("a", "b", "x"),
            sent("a", 1, "b"),
            delivered("a", 1, "b", "b"),
            recv("b", "a", 1, "b", "x"),
        ];
        assert_eq!(
            check(&early),
            vec![Violation::DeliveredWithoutReceipt {
                id: id("a", 1),
                by: p("b")
            }]
        );

        let unreported = vec![
            issue("a", "b", "x"),
            sent("a", 1, "b"),
            recv("b", "a", 1, "b", "x"),
        ];
        assert_eq!(
            check(&unreported),
            vec![Violation::DeliveryNotReported {
                id: id("a", 1),
                by: p("b")
            }]
        );

        let twice = vec![
            issue("a", "b", "x"),
            sent("a", 1, "b"),
            sent("a", 1, "b"),
            recv("b", "a", 1, "b", "x"),
            delivered("a", 1, "b", "b"),
        ];
        assert!(matches!(&check(&twice)[..], [Violation::StateRegressed { .. }]));

        let unanswered = vec![issue("a", "b", "x")];
        assert!(matches!(&check(&unanswered)[..], [Violation::Unanswered { .. }]));

        let misdirected = vec![
            issue("a", "b", "x"),
            sent("a", 1, "b"),
            recv("b", "a", 1, "b", "x"),
            recv("c", "a", 1, "b", "x"),
            delivered("a", 1, "b", "b"),
            delivered("a", 1, "b", "c"),
        ];
        assert_eq!(
            check(&misdirected),
            vec![Violation::WrongRecipient {
                id: id("a", 1),
                recipient: p("c")
            }]
        );
    }

    #[test]
    fn group_members_are_judged_by_membership_at_accept_time() {
        let mut h = Vec::new();
        h.extend(group("a", GroupOp::Create, "g", true));
        h.extend(group("b", GroupOp::Join, "g", true));
        h.extend(group("c", GroupOp::Join, "g", true));
        h.extend(group("c", GroupOp::Leave, "g", true));
        h.push(issue("a", "g", "x"));
        // d joins while the message is in flight: it may or may not get it.
        h.extend(group("d", GroupOp::Join, "g", true));
        h.push(sent("a", 1, "g"));
        h.push(recv("b", "a", 1, "g", "x"));
        h.push(delivered("a", 1, "g", "b"));
        assert_eq!(check(&h), vec![]);

        let mut wrong = h.clone();
        wrong.push(recv("c", "a", 1, "g", "x"));
        wrong.push(delivered("a", 1, "g", "c"));
        assert_eq!(
            check(&wrong),
            vec![Violation::WrongRecipient {
                id: id("a", 1),
                recipient: p("c")
            }]
        );

        let mut missing = h[..h.len() - 2].to_vec();
        missing.push(event(
            "x",
            ClientEvent::Registered {
                peer: p("x"),
                next_seq: Seq(1),
            },
        ));
        assert_eq!(
            check(&missing),
            vec![Violation::Lost {
                id: id("a", 1),
                recipient: p("b")
            }]
        );
    }

    #[test]
    fn a_refused_message_must_reach_nobody() {
        let h = vec![
            issue("a", "b", "x"),
            event(
                "a",
                ClientEvent::Failed {
                    id: Some(id("a", 1)),
                    to: Target::new("b").unwrap(),
                    code: peerlink_core::wire::ErrorCode::MailboxFull,
                    message: String::new(),
                },
            ),
            recv("b", "a", 1, "b", "x"),
        ];
        assert_eq!(
            check(&h),
            vec![Violation::Phantom {
                id: id("a", 1),
                recipient: p("b")
            }]
        );
    }
}
