//! Checks of the cluster's *state* as clients see it, independent of any
//! one message: what a router acknowledged about registrations and groups
//! must hold from then on. A router that restarted empty, or a replica whose
//! state moved backwards, breaks these even when no message is lost.
//!
//! Rules, each judged only from what clients observed:
//! - a peer that registered is never refused with `wrong_secret` (every
//!   simulated peer keeps its secret), and no peer's registration is ever
//!   answered with a `next_seq` at or below a sequence number it already saw
//!   answered — registered or Sent;
//! - a message to a peer whose registration was acknowledged before the send
//!   was issued is never refused with `unknown_recipient`;
//! - a group never becomes unknown while it has members (by acknowledged
//!   create, join and leave);
//! - a peer whose join was acknowledged, with no leave issued since, is
//!   never refused `not_a_member` when it sends to the group.

use std::collections::{BTreeMap, BTreeSet};

use peerlink_core::client::{ClientEvent, Command, GroupOp};
use peerlink_core::ids::{GroupName, PeerId, Seq, Target};
use peerlink_core::testing::{History, What};
use peerlink_core::wire::ErrorCode;

use super::Violation;

/// What one peer's send looked like when it was issued.
struct SendAtIssue {
    to: Target,
    /// The addressee was a peer whose registration had been acknowledged.
    to_registered: bool,
    /// The addressee was a group with members.
    to_live_group: bool,
    /// The sender was a member of the addressee group by an acknowledged
    /// join or create, and had issued no leave since.
    firm_member: bool,
}

/// Checks the state rules of the module docs over `history`.
pub(super) fn check_state(history: &History) -> Vec<Violation> {
    let mut v = Vec::new();
    let mut registered: BTreeSet<PeerId> = BTreeSet::new();
    // The lowest `next_seq` a peer may still be told.
    let mut seq_floor: BTreeMap<PeerId, Seq> = BTreeMap::new();
    let mut members: BTreeMap<GroupName, BTreeSet<PeerId>> = BTreeMap::new();
    let mut firm: BTreeSet<(GroupName, PeerId)> = BTreeSet::new();
    // Group commands not yet answered, with whether the group had members
    // (by acknowledged commands) when each was issued.
    let mut pending_groups: BTreeMap<PeerId, Vec<(GroupOp, GroupName, bool)>> = BTreeMap::new();
    let mut sends: BTreeMap<PeerId, Vec<SendAtIssue>> = BTreeMap::new();

    let mut lost = |peer: &PeerId, detail: String| {
        v.push(Violation::StateLost {
            peer: peer.clone(),
            detail,
        });
    };

    for record in history {
        let me = &record.peer;
        match &record.what {
            What::Issued(Command::Send { to, .. }) => {
                let group = GroupName::new(to.as_str()).ok();
                let at_issue = SendAtIssue {
                    to: to.clone(),
                    to_registered: registered.contains(to.as_str()),
                    to_live_group: group
                        .as_ref()
                        .is_some_and(|g| members.get(g).is_some_and(|m| !m.is_empty())),
                    firm_member: group.is_some_and(|g| firm.contains(&(g, me.clone()))),
                };
                sends.entry(me.clone()).or_default().push(at_issue);
            }
            What::Issued(Command::Group(op, group)) => {
                if *op == GroupOp::Leave {
                    firm.remove(&(group.clone(), me.clone()));
                }
                let live = members.get(group).is_some_and(|m| !m.is_empty());
                pending_groups
                    .entry(me.clone())
                    .or_default()
                    .push((*op, group.clone(), live));
            }
            What::Issued(Command::Register | Command::Query(_)) => {}
            What::Observed(ClientEvent::Registered { next_seq, .. }) => {
                let floor = seq_floor.entry(me.clone()).or_insert(Seq(1));
                if *next_seq < *floor {
                    lost(
                        me,
                        format!("registered with next_seq {next_seq}, below {floor} already seen"),
                    );
                }
                *floor = (*floor).max(*next_seq);
                registered.insert(me.clone());
            }
            What::Observed(ClientEvent::Sent { id, .. }) => {
                let floor = seq_floor.entry(me.clone()).or_insert(Seq(1));
                *floor = (*floor).max(id.seq.next());
            }
            What::Observed(ClientEvent::RegisterFailed { code, message }) => {
                if *code == ErrorCode::WrongSecret && registered.contains(me) {
                    lost(me, format!("its own secret was refused: {message}"));
                }
            }
            What::Observed(ClientEvent::Failed {
                id: Some(id), code, ..
            }) => {
                let Some(send) = sends
                    .get(me)
                    .and_then(|list| list.get((id.seq.0 as usize).wrapping_sub(1)))
                else {
                    continue;
                };
                let forgotten = match code {
                    ErrorCode::UnknownRecipient => send.to_registered || send.to_live_group,
                    ErrorCode::UnknownGroup => send.to_live_group,
                    ErrorCode::NotAMember => send.firm_member,
                    _ => false,
                };
                if forgotten {
                    lost(me, format!("{id} to {} was refused: {code}", send.to));
                }
            }
            What::Observed(ClientEvent::GroupDone { op, group }) => {
                take_pending(&mut pending_groups, me, *op, group);
                let set = members.entry(group.clone()).or_default();
                if *op == GroupOp::Leave {
                    set.remove(me);
                } else {
                    set.insert(me.clone());
                    let leave_pending = pending_groups
                        .get(me)
                        .is_some_and(|p| p.iter().any(|(o, g, _)| *o == GroupOp::Leave && g == group));
                    if !leave_pending {
                        firm.insert((group.clone(), me.clone()));
                    }
                }
            }
            What::Observed(ClientEvent::GroupFailed { op, group, code, .. }) => {
                // Judged by the group as it was when the command was issued:
                // the router may have refused it before a create it raced.
                let live = take_pending(&mut pending_groups, me, *op, group);
                if *code == ErrorCode::UnknownGroup && live {
                    lost(me, format!("{op:?} {group} was refused: the group is unknown"));
                }
            }
            What::Observed(_) | What::Offline | What::Quiet => {}
        }
    }
    v
}

/// Forgets the oldest pending group command of `peer` matching the answer;
/// returns whether the group had members when it was issued.
fn take_pending(
    pending: &mut BTreeMap<PeerId, Vec<(GroupOp, GroupName, bool)>>,
    peer: &PeerId,
    op: GroupOp,
    group: &GroupName,
) -> bool {
    let Some(list) = pending.get_mut(peer) else {
        return false;
    };
    let Some(i) = list.iter().position(|(o, g, _)| *o == op && g == group) else {
        return false;
    };
    list.remove(i).2
}

#[cfg(test)]
mod tests {
    use peerlink_core::ids::MsgId;
    use peerlink_core::testing::Record;

    use super::*;

    fn p(s: &str) -> PeerId {
        PeerId::new(s).unwrap()
    }

    fn at(peer: &str, what: What) -> Record {
        Record { peer: p(peer), what }
    }

    fn registered(peer: &str, next_seq: u64) -> Record {
        at(
            peer,
            What::Observed(ClientEvent::Registered {
                peer: p(peer),
                next_seq: Seq(next_seq),
            }),
        )
    }

    fn send(peer: &str, to: &str) -> Record {
        at(
            peer,
            What::Issued(Command::Send {
                to: Target::new(to).unwrap(),
                body: "x".into(),
            }),
        )
    }

    fn failed(peer: &str, seq: u64, to: &str, code: ErrorCode) -> Record {
        at(
            peer,
            What::Observed(ClientEvent::Failed {
                id: Some(MsgId {
                    from: p(peer),
                    seq: Seq(seq),
                }),
                to: Target::new(to).unwrap(),
                code,
                message: String::new(),
            }),
        )
    }

    fn group(peer: &str, op: GroupOp, g: &str, code: Option<ErrorCode>) -> Vec<Record> {
        let group = GroupName::new(g).unwrap();
        let answer = match code {
            None => ClientEvent::GroupDone {
                op,
                group: group.clone(),
            },
            Some(code) => ClientEvent::GroupFailed {
                op,
                group: group.clone(),
                code,
                message: String::new(),
            },
        };
        vec![
            at(peer, What::Issued(Command::Group(op, group))),
            at(peer, What::Observed(answer)),
        ]
    }

    #[test]
    fn a_consistent_history_passes() {
        let mut h = vec![registered("a", 1), registered("b", 1), send("a", "nobody")];
        h.push(failed("a", 1, "nobody", ErrorCode::UnknownRecipient));
        h.extend(group("a", GroupOp::Create, "g", None));
        h.extend(group("a", GroupOp::Leave, "g", None));
        h.extend(group("b", GroupOp::Join, "g", None));
        h.push(registered("a", 2));
        assert_eq!(check_state(&h), vec![]);
    }

    #[test]
    fn each_forgotten_state_is_reported() {
        let cases: Vec<(&str, Vec<Record>)> = vec![
            ("next_seq back", vec![registered("a", 5), registered("a", 1)]),
            (
                "next_seq below a Sent",
                vec![
                    registered("a", 1),
                    at(
                        "a",
                        What::Observed(ClientEvent::Sent {
                            id: MsgId {
                                from: p("a"),
                                seq: Seq(1),
                            },
                            to: Target::new("b").unwrap(),
                        }),
                    ),
                    registered("a", 1),
                ],
            ),
            (
                "own secret refused",
                vec![
                    registered("a", 1),
                    at(
                        "a",
                        What::Observed(ClientEvent::RegisterFailed {
                            code: ErrorCode::WrongSecret,
                            message: String::new(),
                        }),
                    ),
                ],
            ),
            (
                "registered peer unknown",
                vec![
                    registered("a", 1),
                    registered("b", 1),
                    send("a", "b"),
                    failed("a", 1, "b", ErrorCode::UnknownRecipient),
                ],
            ),
            (
                "live group unknown",
                [
                    vec![registered("a", 1), registered("b", 1)],
                    group("a", GroupOp::Create, "g", None),
                    group("b", GroupOp::Join, "g", Some(ErrorCode::UnknownGroup)),
                ]
                .concat(),
            ),
            (
                "acknowledged join forgotten",
                [
                    vec![registered("a", 1)],
                    group("a", GroupOp::Create, "g", None),
                    vec![send("a", "g"), failed("a", 1, "g", ErrorCode::NotAMember)],
                ]
                .concat(),
            ),
        ];
        for (name, history) in cases {
            let found = check_state(&history);
            assert_eq!(found.len(), 1, "{name}: {found:?}");
        }
    }

    #[test]
    fn a_join_issued_before_the_create_was_acknowledged_may_fail() {
        let g = GroupName::new("g").unwrap();
        let h = vec![
            registered("a", 1),
            registered("b", 1),
            at("b", What::Issued(Command::Group(GroupOp::Join, g.clone()))),
            at("a", What::Issued(Command::Group(GroupOp::Create, g.clone()))),
            at(
                "a",
                What::Observed(ClientEvent::GroupDone {
                    op: GroupOp::Create,
                    group: g.clone(),
                }),
            ),
            at(
                "b",
                What::Observed(ClientEvent::GroupFailed {
                    op: GroupOp::Join,
                    group: g,
                    code: ErrorCode::UnknownGroup,
                    message: String::new(),
                }),
            ),
        ];
        assert_eq!(check_state(&h), vec![]);
    }

    #[test]
    fn a_join_with_a_leave_in_flight_is_not_firm() {
        let mut h = vec![registered("a", 1)];
        h.extend(group("a", GroupOp::Create, "g", None));
        let g = GroupName::new("g").unwrap();
        h.push(at("a", What::Issued(Command::Group(GroupOp::Leave, g))));
        h.push(send("a", "g"));
        h.push(failed("a", 1, "g", ErrorCode::NotAMember));
        assert_eq!(check_state(&h), vec![]);
    }
}
