mod directory;

use std::time::Duration;

use std::net::IpAddr;

use super::*;
use crate::ids::{ConnId, DeliveryId, GroupName, PeerId, ReqId, Secret, Seq, Target};
use crate::router::secrets::{stretch, HashJob, KdfParams};
use crate::testing::{drain, epoch};
use crate::wire::{ClientFrame, ErrorCode, ServerFrame, FRAME_OVERHEAD};

/// A source address of its own for each connection, unless a test says
/// otherwise.
fn source_of(conn: u64) -> IpAddr {
    IpAddr::from([10, 0, (conn >> 8) as u8, conn as u8])
}

fn peer(s: &str) -> PeerId {
    PeerId::new(s).unwrap()
}

fn target(s: &str) -> Target {
    Target::new(s).unwrap()
}

fn group(s: &str) -> GroupName {
    GroupName::new(s).unwrap()
}

/// A router with helpers that feed it frames at a fixed time.
struct Harness {
    router: Router,
    now: Instant,
    req: u64,
    /// Whether records to persist are returned rather than reported
    /// durable at once.
    hold_persist: bool,
}

impl Harness {
    fn new() -> Self {
        Self::with(RouterConfig::default())
    }

    fn with(config: RouterConfig) -> Self {
        let config = RouterConfig {
            kdf: KdfParams::CHEAPEST,
            ..config
        };
        Self {
            router: Router::new(config, 7, epoch()),
            now: epoch(),
            req: 0,
            hold_persist: false,
        }
    }

    fn connect(&mut self, conn: u64) {
        self.connect_from(conn, source_of(conn));
    }

    /// Connects `conn` from `source`.
    fn connect_from(&mut self, conn: u64, source: IpAddr) {
        let input = RouterInput::Connected {
            conn: ConnId(conn),
            source,
        };
        self.router.handle(self.now, input);
    }

    /// Feeds a frame; returns the outputs, with every hash the router asks
    /// for computed and handed back at once.
    fn frame(&mut self, conn: u64, frame: ClientFrame) -> Vec<RouterOutput> {
        self.router
            .handle(self.now, RouterInput::Frame(ConnId(conn), frame));
        self.drain()
    }

    /// Drains the outputs, answering every hash job at once, and every
    /// record to persist at once unless `hold_persist` (then they are
    /// returned like other outputs).
    fn drain(&mut self) -> Vec<RouterOutput> {
        let mut out = Vec::new();
        let mut pending = drain(&mut self.router);
        while !pending.is_empty() {
            for output in pending {
                match output {
                    RouterOutput::HashSecret(job) => {
                        let hash = job.run();
                        self.router
                            .handle(self.now, RouterInput::SecretHashed { job: job.job, hash });
                    }
                    RouterOutput::Persist { ticket, .. } if !self.hold_persist => {
                        self.router.handle(self.now, RouterInput::Persisted { ticket });
                    }
                    other => out.push(other),
                }
            }
            pending = drain(&mut self.router);
        }
        out
    }

    fn next_req(&mut self) -> ReqId {
        self.req += 1;
        ReqId(self.req)
    }

    fn register(&mut self, conn: u64, name: &str, secret: &str) -> Vec<RouterOutput> {
        let req = self.next_req();
        let secret = Secret::new(secret).unwrap();
        self.frame(
            conn,
            ClientFrame::Register {
                req,
                peer: peer(name),
                secret,
            },
        )
    }

    /// Connects and registers `name` on `conn`, returning what was pushed.
    fn online(&mut self, conn: u64, name: &str) -> Vec<RouterOutput> {
        self.connect(conn);
        self.register(conn, name, &format!("{name}-secret"))
    }

    fn send(&mut self, conn: u64, seq: u64, to: &str, body: &str) -> Vec<RouterOutput> {
        let req = self.next_req();
        self.frame(
            conn,
            ClientFrame::Send {
                req,
                seq: Seq(seq),
                to: target(to),
                body: body.into(),
            },
        )
    }

    fn group_op(
        &mut self,
        conn: u64,
        op: fn(ReqId, GroupName) -> ClientFrame,
        name: &str,
    ) -> Vec<RouterOutput> {
        let req = self.next_req();
        self.frame(conn, op(req, group(name)))
    }
}

fn create(req: ReqId, group: GroupName) -> ClientFrame {
    ClientFrame::CreateGroup { req, group }
}

fn join(req: ReqId, group: GroupName) -> ClientFrame {
    ClientFrame::JoinGroup { req, group }
}

fn leave(req: ReqId, group: GroupName) -> ClientFrame {
    ClientFrame::LeaveGroup { req, group }
}

fn ack(delivery: DeliveryId) -> ClientFrame {
    ClientFrame::Ack {
        delivery,
        through: None,
    }
}

/// The error codes among `outputs`.
fn errors(outputs: &[RouterOutput]) -> Vec<ErrorCode> {
    outputs
        .iter()
        .filter_map(|o| match o {
            RouterOutput::Send(_, ServerFrame::Error { code, .. }) => Some(*code),
            _ => None,
        })
        .collect()
}

/// The `(delivery, from, seq, body)` of messages pushed to `conn`.
fn messages(outputs: &[RouterOutput], conn: u64) -> Vec<(DeliveryId, String, u64, String)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            RouterOutput::Send(
                c,
                ServerFrame::Message {
                    delivery,
                    from,
                    seq,
                    body,
                    ..
                },
            ) if *c == ConnId(conn) => Some((*delivery, from.to_string(), seq.0, body.clone())),
            _ => None,
        })
        .collect()
}

/// The `(delivery, seq, by)` of receipts pushed to `conn`.
fn receipts(outputs: &[RouterOutput], conn: u64) -> Vec<(DeliveryId, u64, String)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            RouterOutput::Send(
                c,
                ServerFrame::Delivered {
                    delivery, seq, by, ..
                },
            ) if *c == ConnId(conn) => Some((*delivery, seq.0, by.to_string())),
            _ => None,
        })
        .collect()
}

fn sent(outputs: &[RouterOutput]) -> Vec<u64> {
    outputs
        .iter()
        .filter_map(|o| match o {
            RouterOutput::Send(_, ServerFrame::Sent { seq, .. }) => Some(seq.0),
            _ => None,
        })
        .collect()
}

#[test]
fn first_registration_claims_the_id_and_later_ones_need_the_secret() {
    let mut h = Harness::new();
    h.connect(1);
    let out = h.register(1, "alice", "right");
    assert!(matches!(
        &out[..],
        [RouterOutput::Send(
            ConnId(1),
            ServerFrame::Registered { next_seq: Seq(1), .. }
        )]
    ));
    h.connect(2);
    assert_eq!(
        errors(&h.register(2, "alice", "wrong")),
        vec![ErrorCode::WrongSecret]
    );
    assert!(
        h.router.is_online(&peer("alice")),
        "a refused attempt leaves the session alone"
    );
    assert_eq!(h.router.peer_count(), 1);
}

#[test]
fn a_newer_session_replaces_the_older_one_which_is_told_why() {
    let mut h = Harness::new();
    h.online(1, "alice");
    h.connect(2);
    let out = h.register(2, "alice", "alice-secret");
    assert!(matches!(
        &out[..3],
        [
            RouterOutput::Send(
                ConnId(1),
                ServerFrame::Closing {
                    code: ErrorCode::Replaced,
                    ..
                }
            ),
            RouterOutput::Close(ConnId(1)),
            RouterOutput::Send(ConnId(2), ServerFrame::Registered { .. }),
        ]
    ));
    // The old connection is forgotten: its frames and its loss change nothing.
    assert!(h.send(1, 1, "alice", "x").is_empty());
    h.router.handle(h.now, RouterInput::Disconnected(ConnId(1)));
    assert!(h.router.is_online(&peer("alice")));
}

#[test]
fn a_connection_cannot_switch_peers() {
    let mut h = Harness::new();
    h.online(1, "alice");
    assert_eq!(
        errors(&h.register(1, "bob", "b")),
        vec![ErrorCode::AlreadyRegistered]
    );
}

#[test]
fn requests_before_registration_are_refused() {
    let mut h = Harness::new();
    h.connect(1);
    assert_eq!(errors(&h.send(1, 1, "bob", "hi")), vec![ErrorCode::NotRegistered]);
    assert_eq!(
        errors(&h.group_op(1, create, "g")),
        vec![ErrorCode::NotRegistered]
    );
}

#[test]
fn a_direct_message_is_sent_then_delivered() {
    let mut h = Harness::new();
    h.online(1, "alice");
    h.online(2, "bob");
    let out = h.send(1, 1, "bob", "hello");
    assert_eq!(sent(&out), vec![1]);
    let pushed = messages(&out, 2);
    assert_eq!(pushed.len(), 1);
    assert_eq!(
        (pushed[0].1.as_str(), pushed[0].2, pushed[0].3.as_str()),
        ("alice", 1, "hello")
    );
    assert!(
        receipts(&out, 1).is_empty(),
        "no Delivered before the recipient acknowledges"
    );

    let out = h.frame(2, ack(pushed[0].0));
    assert_eq!(
        receipts(&out, 1)
            .iter()
            .map(|r| (r.1, r.2.as_str()))
            .collect::<Vec<_>>(),
        vec![(1, "bob")]
    );
    assert_eq!(h.router.queued_messages(&peer("bob")), 0);
}

#[test]
fn nothing_that_depends_on_a_change_leaves_before_the_change_is_durable() {
    let mut h = Harness::new();
    h.online(1, "alice");
    h.online(2, "bob");
    h.hold_persist = true;
    let out = h.send(1, 1, "bob", "one");
    let out2 = h.send(1, 2, "bob", "two");
    let tickets: Vec<u64> = out
        .iter()
        .chain(&out2)
        .filter_map(|o| match o {
            RouterOutput::Persist { ticket, record } => {
                assert!(matches!(record, Record::Change { .. }));
                Some(*ticket)
            }
            _ => None,
        })
        .collect();
    assert_eq!(tickets.len(), 2, "one record per change: {out:?} {out2:?}");
    assert!(
        sent(&out).is_empty() && sent(&out2).is_empty(),
        "Sent before the change is durable"
    );
    assert!(
        messages(&out2, 2).is_empty(),
        "pushed before the change is durable"
    );
    // A ping depends on no change: it is answered at once.
    let pong = h.frame(1, ClientFrame::Ping { req: ReqId(99) });
    assert!(pong
        .iter()
        .any(|o| matches!(o, RouterOutput::Send(_, ServerFrame::Pong { .. }))));
    assert_eq!(h.router.durable_lsn(), h.router.committed_lsn());

    h.router
        .handle(h.now, RouterInput::Persisted { ticket: tickets[0] });
    let out = h.drain();
    assert_eq!(sent(&out), vec![1], "the first change alone is durable");
    assert_eq!(messages(&out, 2).len(), 1);
    h.router
        .handle(h.now, RouterInput::Persisted { ticket: tickets[1] });
    let out = h.drain();
    assert_eq!(sent(&out), vec![2]);
    assert_eq!(messages(&out, 2).len(), 1);
}

#[test]
fn a_wanted_checkpoint_is_the_state_after_every_record_and_durable_with_it() {
    let mut h = Harness::new();
    h.online(1, "alice");
    h.online(2, "bob");
    h.hold_persist = true;
    let out = h.send(1, 1, "bob", "one");
    let change_ticket = out
        .iter()
        .find_map(|o| match o {
            RouterOutput::Persist { ticket, .. } => Some(*ticket),
            _ => None,
        })
        .expect("the message's change");
    h.router.handle(h.now, RouterInput::CheckpointWanted);
    let out = h.drain();
    let [RouterOutput::Persist {
        ticket,
        record: Record::Checkpoint { epoch, lsn, state },
    }] = &out[..]
    else {
        panic!("one checkpoint record: {out:?}");
    };
    assert_eq!(*ticket, change_ticket + 1, "numbered after the change");
    assert_eq!((*epoch, *lsn), (Epoch(0), h.router.applied_lsn()));
    assert_eq!(**state, *h.router.state(), "the state after the change");
    assert!(sent(&out).is_empty());
    // Its report alone makes everything before it durable.
    h.router.handle(h.now, RouterInput::Persisted { ticket: *ticket });
    let out = h.drain();
    assert_eq!(sent(&out), vec![1]);
}

#[test]
fn an_offline_peer_gets_its_messages_in_order_and_the_sender_its_receipts_later() {
    let mut h = Harness::new();
    h.online(1, "alice");
    h.online(2, "bob");
    h.router.handle(h.now, RouterInput::Disconnected(ConnId(2)));
    for seq in 1..=3 {
        let out = h.send(1, seq, "bob", &format!("m{seq}"));
        assert_eq!(sent(&out), vec![seq]);
    }
    h.router.handle(h.now, RouterInput::Disconnected(ConnId(1)));
    assert_eq!(h.router.queued_messages(&peer("bob")), 3);

    let out = h.online(3, "bob");
    let pushed = messages(&out, 3);
    assert_eq!(
        pushed.iter().map(|m| m.3.as_str()).collect::<Vec<_>>(),
        vec!["m1", "m2", "m3"]
    );
    for m in &pushed {
        assert!(h.frame(3, ack(m.0)).is_empty(), "the sender is offline");
    }
    let out = h.online(4, "alice");
    assert_eq!(
        receipts(&out, 4).iter().map(|r| r.1).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
}

#[test]
fn a_resent_message_is_answered_again_but_stored_once() {
    let mut h = Harness::new();
    h.online(1, "alice");
    h.online(2, "bob");
    let first = h.send(1, 1, "bob", "once");
    let again = h.send(1, 1, "bob", "once");
    assert_eq!(sent(&again), vec![1]);
    assert_eq!(messages(&first, 2).len() + messages(&again, 2).len(), 1);
    assert_eq!(h.router.queued_messages(&peer("bob")), 1);
}

#[test]
fn a_resent_refused_message_is_refused_again() {
    let mut h = Harness::new();
    h.online(1, "alice");
    assert_eq!(
        errors(&h.send(1, 1, "nobody", "x")),
        vec![ErrorCode::UnknownRecipient]
    );
    h.online(2, "nobody");
    assert_eq!(
        errors(&h.send(1, 1, "nobody", "x")),
        vec![ErrorCode::UnknownRecipient]
    );
    assert_eq!(h.router.queued_messages(&peer("nobody")), 0);
    let out = h.online(3, "alice");
    assert!(matches!(
        out.last(),
        Some(RouterOutput::Send(
            ConnId(3),
            ServerFrame::Registered { next_seq: Seq(2), .. }
        ))
    ));
}

#[test]
fn sequence_numbers_are_checked() {
    let mut h = Harness::new();
    h.online(1, "alice");
    h.online(2, "bob");
    assert_eq!(errors(&h.send(1, 0, "bob", "x")), vec![ErrorCode::InvalidSeq]);
    assert_eq!(
        errors(&h.send(1, 2, "bob", "x")),
        vec![ErrorCode::InvalidSeq],
        "a gap is refused"
    );
    assert_eq!(
        errors(&h.send(1, 2, "bob", "x")),
        vec![ErrorCode::InvalidSeq],
        "and not recorded: it is refused again, never answered sent"
    );
    assert_eq!(sent(&h.send(1, 1, "bob", "x")), vec![1]);
    assert_eq!(sent(&h.send(1, 1, "bob", "x")), vec![1], "a duplicate");
    assert_eq!(errors(&h.send(1, 3, "bob", "x")), vec![ErrorCode::InvalidSeq]);
    assert_eq!(sent(&h.send(1, 2, "bob", "x")), vec![2]);
    assert_eq!(
        errors(&h.send(1, u64::MAX, "bob", "x")),
        vec![ErrorCode::InvalidSeq]
    );
    assert_eq!(h.router.queued_messages(&peer("bob")), 2);
    for seq in 3..=1100 {
        assert_eq!(sent(&h.send(1, seq, "bob", "x")), vec![seq]);
    }
    assert_eq!(
        errors(&h.send(1, 3, "bob", "x")),
        vec![ErrorCode::InvalidSeq],
        "too far behind to judge"
    );
    assert_eq!(sent(&h.send(1, 100, "bob", "x")), vec![100], "within the window");
}

#[test]
fn the_last_sequence_number_is_refused_so_next_seq_never_wraps() {
    let mut h = Harness::new();
    h.online(1, "alice");
    h.online(2, "bob");
    assert_eq!(
        errors(&h.send(1, u64::MAX, "bob", "x")),
        vec![ErrorCode::InvalidSeq]
    );
    let out = h.online(3, "alice");
    assert!(matches!(
        out.last(),
        Some(RouterOutput::Send(
            ConnId(3),
            ServerFrame::Registered { next_seq: Seq(1), .. }
        ))
    ));
}

/// The weight of a 100-byte message from alice to bob (or eve).
const WEIGHT: usize = crate::router::ITEM_OVERHEAD + 5 + 3 + 100;

#[test]
fn a_mailbox_is_bounded_in_bytes_and_gives_them_back_when_drained() {
    let small = crate::router::ITEM_OVERHEAD + 5 + 3 + 5;
    let mut h = Harness::with(RouterConfig {
        mailbox_bytes: 2 * WEIGHT + small,
        ..RouterConfig::default()
    });
    let body = "x".repeat(100);
    h.online(1, "alice");
    h.online(2, "bob");
    h.router.handle(h.now, RouterInput::Disconnected(ConnId(2)));
    assert_eq!(sent(&h.send(1, 1, "bob", &body)), vec![1]);
    assert_eq!(sent(&h.send(1, 2, "bob", &body)), vec![2]);
    assert_eq!(errors(&h.send(1, 3, "bob", &body)), vec![ErrorCode::MailboxFull]);
    // A smaller message still fits.
    assert_eq!(sent(&h.send(1, 4, "bob", "small")), vec![4]);
    assert_eq!(h.router.queued_bytes(&peer("bob")), 2 * WEIGHT + small);
    assert_eq!(h.router.stored_bytes(), h.router.queued_bytes(&peer("bob")));

    // Bob drains it; the receipts land in alice's mailbox, and go when she
    // acknowledges them.
    let out = h.online(3, "bob");
    let mut out_alice = Vec::new();
    for (delivery, ..) in messages(&out, 3) {
        out_alice.extend(h.frame(3, ack(delivery)));
    }
    assert_eq!(h.router.queued_bytes(&peer("bob")), 0);
    let receipt = crate::router::ITEM_OVERHEAD + 3 + 3;
    assert_eq!(
        h.router.queued_bytes(&peer("alice")),
        3 * receipt,
        "receipts are counted"
    );
    for (delivery, ..) in receipts(&out_alice, 1) {
        h.frame(1, ack(delivery));
    }
    assert_eq!(h.router.queued_bytes(&peer("alice")), 0);
    assert_eq!(h.router.stored_bytes(), 0, "every byte given back");
}

#[test]
fn all_mailboxes_together_are_bounded() {
    let mut h = Harness::with(RouterConfig {
        storage_bytes: 2 * WEIGHT + WEIGHT / 2,
        ..RouterConfig::default()
    });
    let body = "x".repeat(100);
    h.online(1, "alice");
    for (conn, name) in [(2, "bob"), (3, "eve")] {
        h.online(conn, name);
        h.router.handle(h.now, RouterInput::Disconnected(ConnId(conn)));
    }
    assert_eq!(sent(&h.send(1, 1, "bob", &body)), vec![1]);
    assert_eq!(sent(&h.send(1, 2, "eve", &body)), vec![2]);
    assert_eq!(errors(&h.send(1, 3, "bob", &body)), vec![ErrorCode::StorageFull]);
    assert_eq!(
        errors(&h.send(1, 3, "bob", &body)),
        vec![ErrorCode::StorageFull],
        "a resend gets the same answer"
    );
    assert!(h.router.stored_bytes() <= 2 * WEIGHT + WEIGHT / 2);
}

#[test]
fn a_message_that_fills_the_router_exactly_is_accepted() {
    let mut h = Harness::with(RouterConfig {
        storage_bytes: 2 * WEIGHT,
        ..RouterConfig::default()
    });
    let body = "x".repeat(100);
    h.online(1, "alice");
    h.online(2, "bob");
    h.router.handle(h.now, RouterInput::Disconnected(ConnId(2)));
    assert_eq!(sent(&h.send(1, 1, "bob", &body)), vec![1]);
    assert_eq!(
        sent(&h.send(1, 2, "bob", &body)),
        vec![2],
        "the limit is inclusive"
    );
    assert_eq!(h.router.stored_bytes(), 2 * WEIGHT);
    assert_eq!(errors(&h.send(1, 3, "bob", "x")), vec![ErrorCode::StorageFull]);
}

#[test]
fn a_full_mailbox_refuses_the_message_instead_of_dropping_one() {
    let mut h = Harness::with(RouterConfig {
        mailbox_limit: 2,
        ..RouterConfig::default()
    });
    h.online(1, "alice");
    h.online(2, "bob");
    h.router.handle(h.now, RouterInput::Disconnected(ConnId(2)));
    assert_eq!(sent(&h.send(1, 1, "bob", "a")), vec![1]);
    assert_eq!(sent(&h.send(1, 2, "bob", "b")), vec![2]);
    assert_eq!(errors(&h.send(1, 3, "bob", "c")), vec![ErrorCode::MailboxFull]);
    let out = h.online(3, "bob");
    assert_eq!(
        messages(&out, 3).iter().map(|m| m.3.as_str()).collect::<Vec<_>>(),
        vec!["a", "b"]
    );
}

#[test]
fn an_oversized_body_is_refused() {
    let mut h = Harness::with(RouterConfig {
        max_frame_len: FRAME_OVERHEAD + 10,
        ..RouterConfig::default()
    });
    h.online(1, "alice");
    h.online(2, "bob");
    assert_eq!(sent(&h.send(1, 1, "bob", "12345678")), vec![1]);
    assert_eq!(
        errors(&h.send(1, 2, "bob", "123456789")),
        vec![ErrorCode::BodyTooLarge]
    );
}

#[test]
fn group_messages_reach_the_members_at_accept_time_except_the_sender() {
    let mut h = Harness::new();
    h.online(1, "alice");
    h.online(2, "bob");
    h.online(3, "carol");
    assert!(errors(&h.group_op(1, create, "g")).is_empty());
    assert!(errors(&h.group_op(2, join, "g")).is_empty());
    let out = h.send(1, 1, "g", "to bob");
    assert_eq!(
        (
            messages(&out, 1).len(),
            messages(&out, 2).len(),
            messages(&out, 3).len()
        ),
        (0, 1, 0)
    );

    assert!(errors(&h.group_op(3, join, "g")).is_empty());
    assert!(errors(&h.group_op(2, leave, "g")).is_empty());
    let out = h.send(1, 2, "g", "to carol");
    assert_eq!((messages(&out, 2).len(), messages(&out, 3).len()), (0, 1));

    assert_eq!(errors(&h.send(2, 1, "g", "x")), vec![ErrorCode::NotAMember]);
}

#[test]
fn each_group_member_confirms_delivery_separately() {
    let mut h = Harness::new();
    h.online(1, "alice");
    h.online(2, "bob");
    h.online(3, "carol");
    h.group_op(1, create, "g");
    h.group_op(2, join, "g");
    h.group_op(3, join, "g");
    let out = h.send(1, 1, "g", "hi");
    let to_bob = messages(&out, 2)[0].0;
    let to_carol = messages(&out, 3)[0].0;
    let by_bob = h.frame(2, ack(to_bob));
    let by_carol = h.frame(3, ack(to_carol));
    assert_eq!(receipts(&by_bob, 1)[0].2, "bob");
    assert_eq!(receipts(&by_carol, 1)[0].2, "carol");
}

#[test]
fn peers_and_groups_share_one_namespace() {
    let mut h = Harness::new();
    h.online(1, "alice");
    assert_eq!(
        errors(&h.group_op(1, create, "alice")),
        vec![ErrorCode::NameTaken]
    );
    h.group_op(1, create, "g");
    h.connect(2);
    assert_eq!(errors(&h.register(2, "g", "s")), vec![ErrorCode::NameTaken]);
    h.online(3, "bob");
    assert_eq!(errors(&h.group_op(3, create, "g")), vec![ErrorCode::NameTaken]);
    assert!(
        errors(&h.group_op(1, create, "g")).is_empty(),
        "creating again is a no-op for the creator"
    );
    assert_eq!(
        errors(&h.group_op(3, join, "nope")),
        vec![ErrorCode::UnknownGroup]
    );
    assert_eq!(
        errors(&h.group_op(3, leave, "nope")),
        vec![ErrorCode::UnknownGroup]
    );
}

#[test]
fn join_and_leave_are_idempotent() {
    let mut h = Harness::new();
    h.online(1, "alice");
    h.online(2, "bob");
    h.group_op(1, create, "g");
    assert!(errors(&h.group_op(2, join, "g")).is_empty());
    assert!(errors(&h.group_op(2, join, "g")).is_empty());
    assert!(errors(&h.group_op(2, leave, "g")).is_empty());
    assert!(errors(&h.group_op(2, leave, "g")).is_empty());
    let out = h.send(1, 1, "g", "nobody else");
    assert!(messages(&out, 2).is_empty());
}

/// alice (connection 1) sends bob (connection 2) five messages, "1" to
/// "5", with a push window of 2: the harness, and the two pushed.
fn two_of_five_pushed_to_bob() -> (Harness, Vec<(DeliveryId, String, u64, String)>) {
    let mut h = Harness::with(RouterConfig {
        push_window: 2,
        ..RouterConfig::default()
    });
    h.online(1, "alice");
    h.online(2, "bob");
    let mut pushed = Vec::new();
    for seq in 1..=5 {
        pushed.extend(messages(&h.send(1, seq, "bob", &seq.to_string()), 2));
    }
    assert_eq!(pushed.len(), 2);
    (h, pushed)
}

#[test]
fn pushes_stay_within_the_window_until_acknowledged() {
    let (mut h, pushed) = two_of_five_pushed_to_bob();
    let more = messages(&h.frame(2, ack(pushed[0].0)), 2);
    assert_eq!(more.iter().map(|m| m.2).collect::<Vec<_>>(), vec![3]);
}

fn ack_range(delivery: DeliveryId, through: DeliveryId) -> ClientFrame {
    ClientFrame::Ack {
        delivery,
        through: Some(through),
    }
}

/// The changes among `outputs` that the router asks to persist.
fn persisted_changes(outputs: &[RouterOutput]) -> Vec<Change> {
    outputs
        .iter()
        .filter_map(|o| match o {
            RouterOutput::Persist {
                record: Record::Change { change, .. },
                ..
            } => Some(change.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_range_acknowledges_every_item_in_it_as_one_change() {
    let mut h = Harness::new();
    h.online(1, "alice");
    h.online(2, "bob");
    let mut pushed = Vec::new();
    for seq in 1..=3 {
        pushed.extend(messages(&h.send(1, seq, "bob", &seq.to_string()), 2));
    }
    let (first, last) = (pushed[0].0, pushed[2].0);
    h.hold_persist = true;
    let out = h.frame(2, ack_range(first, last));
    assert_eq!(
        persisted_changes(&out),
        vec![Change::Acked {
            peer: peer("bob"),
            delivery: first,
            through: Some(last),
        }]
    );
    h.hold_persist = false;
    for ticket in out.iter().filter_map(|o| match o {
        RouterOutput::Persist { ticket, .. } => Some(*ticket),
        _ => None,
    }) {
        h.router.handle(h.now, RouterInput::Persisted { ticket });
    }
    let out = h.drain();
    let seqs: Vec<u64> = receipts(&out, 1).iter().map(|r| r.1).collect();
    assert_eq!(seqs, vec![1, 2, 3], "a receipt for each, in order");
    assert!(h.router.state().peers[&peer("bob")].mailbox.is_empty());
}

#[test]
fn a_single_item_is_logged_without_a_range() {
    // The record stays the one a router from before ranges wrote.
    let mut h = Harness::new();
    h.online(1, "alice");
    h.online(2, "bob");
    let pushed = messages(&h.send(1, 1, "bob", "one"), 2);
    messages(&h.send(1, 2, "bob", "two"), 2);
    h.hold_persist = true;
    let out = h.frame(2, ack_range(pushed[0].0, pushed[0].0));
    assert_eq!(
        persisted_changes(&out),
        vec![Change::Acked {
            peer: peer("bob"),
            delivery: pushed[0].0,
            through: None,
        }]
    );
}

#[test]
fn a_range_does_not_reach_items_not_yet_pushed() {
    let (mut h, pushed) = two_of_five_pushed_to_bob();
    let unpushed = h.frame(2, ack(pushed[1].0.next()));
    assert!(
        persisted_changes(&unpushed).is_empty() && receipts(&unpushed, 1).is_empty(),
        "an item bob was not given is not acknowledged: {unpushed:?}"
    );
    let out = h.frame(2, ack_range(pushed[0].0, DeliveryId(u64::MAX)));
    let seqs: Vec<u64> = receipts(&out, 1).iter().map(|r| r.1).collect();
    assert_eq!(seqs, vec![1, 2], "only what bob was given is delivered");
    let more: Vec<u64> = messages(&out, 2).iter().map(|m| m.2).collect();
    assert_eq!(more, vec![3, 4], "the window refills");
    assert_eq!(h.router.state().peers[&peer("bob")].mailbox.len(), 3);
}

#[test]
fn a_range_that_ends_before_it_begins_is_refused() {
    let mut h = Harness::new();
    h.online(1, "alice");
    h.online(2, "bob");
    let pushed = messages(&h.send(1, 1, "bob", "one"), 2);
    let before = h.router.state().clone();
    let out = h.frame(2, ack_range(pushed[0].0.next(), pushed[0].0));
    assert_eq!(errors(&out), vec![ErrorCode::BadFrame]);
    assert!(persisted_changes(&out).is_empty());
    assert_eq!(h.router.state(), &before);
}

#[test]
fn a_dropped_connection_gets_unacknowledged_items_again() {
    let mut h = Harness::new();
    h.online(1, "alice");
    h.online(2, "bob");
    let first = messages(&h.send(1, 1, "bob", "a"), 2);
    messages(&h.send(1, 2, "bob", "b"), 2);
    h.frame(2, ack(first[0].0));
    h.router.handle(h.now, RouterInput::Disconnected(ConnId(2)));
    let again = messages(&h.online(3, "bob"), 3);
    assert_eq!(again.iter().map(|m| m.3.as_str()).collect::<Vec<_>>(), vec!["b"]);
}

#[test]
fn malformed_input_is_answered_and_changes_nothing() {
    let mut h = Harness::new();
    h.online(1, "alice");
    let error = crate::wire::decode_client_frame(b"garbage").unwrap_err();
    h.router.handle(h.now, RouterInput::Malformed(ConnId(1), error));
    let out = drain(&mut h.router);
    assert_eq!(errors(&out), vec![ErrorCode::BadJson]);
    assert!(h.router.is_online(&peer("alice")));
}

#[test]
fn a_silent_connection_is_timed_out() {
    let mut h = Harness::new();
    h.online(1, "alice");
    let deadline = h.router.poll_timeout().unwrap();
    assert_eq!(deadline, h.now + Duration::from_secs(60));
    h.router.handle_timeout(deadline - Duration::from_millis(1));
    assert!(drain(&mut h.router).is_empty());
    h.router.handle_timeout(deadline);
    let out = drain(&mut h.router);
    assert!(matches!(
        &out[..],
        [
            RouterOutput::Send(
                ConnId(1),
                ServerFrame::Closing {
                    code: ErrorCode::IdleTimeout,
                    ..
                }
            ),
            RouterOutput::Close(ConnId(1)),
        ]
    ));
    assert!(!h.router.is_online(&peer("alice")));
    assert_eq!(h.router.poll_timeout(), None);
}

#[test]
fn any_frame_keeps_a_connection_alive() {
    let mut h = Harness::new();
    h.online(1, "alice");
    h.now += Duration::from_secs(50);
    h.frame(1, ClientFrame::Ping { req: ReqId(99) });
    assert_eq!(h.router.poll_timeout(), Some(h.now + Duration::from_secs(60)));
}

#[test]
fn a_connection_id_reported_twice_never_stalls_the_idle_sweep() {
    // Found by the `router` fuzz target: a second `Connected` for a live ID
    // left a deadline no connection owned, and the sweep looped on it (with
    // that bug, this test never returns).
    let mut h = Harness::new();
    h.online(1, "alice");
    h.now += Duration::from_secs(1);
    h.connect(1);
    h.now += Duration::from_secs(3600);
    h.router.handle_timeout(h.now);
    let out: Vec<RouterOutput> = std::iter::from_fn(|| h.router.poll_output()).take(100).collect();
    assert!(out.len() < 10, "the sweep spun: {} outputs", out.len());
    assert!(h.router.poll_timeout().is_none_or(|t| t > h.now));
}

#[test]
fn wrong_secrets_for_one_id_back_off_exponentially() {
    let mut h = Harness::new();
    h.online(1, "alice");
    h.connect(2);
    assert_eq!(
        errors(&h.register(2, "alice", "guess-1")),
        vec![ErrorCode::WrongSecret]
    );
    // Within the wait, nothing is judged, not even the right secret.
    assert_eq!(
        errors(&h.register(2, "alice", "guess-2")),
        vec![ErrorCode::TooManyAttempts]
    );
    assert_eq!(
        errors(&h.register(2, "alice", "alice-secret")),
        vec![ErrorCode::TooManyAttempts]
    );
    // Each wrong secret in a row doubles the wait: 100, 200, 400 ms...
    let mut wait = crate::router::FIRST_GUESS_DELAY;
    for n in 3..=14 {
        h.now += wait - Duration::from_millis(1);
        assert_eq!(
            errors(&h.register(2, "alice", "guess")),
            vec![ErrorCode::TooManyAttempts],
            "try {n}"
        );
        h.now += Duration::from_millis(1);
        assert_eq!(
            errors(&h.register(2, "alice", &format!("guess-{n}"))),
            vec![ErrorCode::WrongSecret]
        );
        wait = (wait * 2).min(crate::router::MAX_GUESS_DELAY);
    }
    assert_eq!(wait, crate::router::MAX_GUESS_DELAY, "the wait is capped");
    // After the wait, the right secret is judged, and clears the count.
    h.now += wait;
    assert!(errors(&h.register(2, "alice", "alice-secret")).is_empty());
    h.connect(3);
    assert_eq!(
        errors(&h.register(3, "alice", "guess")),
        vec![ErrorCode::WrongSecret]
    );
    // Another ID is not affected.
    h.online(4, "bob");
}

#[test]
fn groups_per_peer_and_members_per_group_are_bounded() {
    let mut h = Harness::with(RouterConfig {
        max_groups_per_peer: 2,
        max_group_members: 2,
        ..RouterConfig::default()
    });
    for (conn, name) in [(1, "alice"), (2, "bob"), (3, "carol")] {
        h.online(conn, name);
    }
    assert!(errors(&h.group_op(1, create, "g1")).is_empty());
    assert!(errors(&h.group_op(1, create, "g2")).is_empty());
    assert_eq!(
        errors(&h.group_op(1, create, "g3")),
        vec![ErrorCode::TooManyGroups]
    );
    assert!(errors(&h.group_op(2, create, "b1")).is_empty());
    assert_eq!(errors(&h.group_op(1, join, "b1")), vec![ErrorCode::TooManyGroups]);
    // A group created counts even after its creator left: groups stay.
    assert!(errors(&h.group_op(1, leave, "g1")).is_empty());
    assert_eq!(errors(&h.group_op(1, join, "b1")), vec![ErrorCode::TooManyGroups]);
    // Rejoining one's own group is no new group.
    assert!(errors(&h.group_op(1, join, "g1")).is_empty());
    // b1 has bob; carol makes two; a third member is refused.
    assert!(errors(&h.group_op(3, join, "b1")).is_empty());
    h.online(4, "dave");
    assert_eq!(errors(&h.group_op(4, join, "b1")), vec![ErrorCode::GroupFull]);
    // A leave makes room, and gives the leaver's place back.
    assert!(errors(&h.group_op(3, leave, "b1")).is_empty());
    assert!(errors(&h.group_op(4, join, "b1")).is_empty());
}

// Registration waits for argon2id, which the driver computes: what happens
// between the request and the hash.

impl Harness {
    /// Feeds a `register` frame without answering hash jobs; returns the
    /// outputs and the jobs asked for.
    fn register_pending(&mut self, conn: u64, name: &str, secret: &str) -> (Vec<RouterOutput>, Vec<HashJob>) {
        let req = self.next_req();
        let frame = ClientFrame::Register {
            req,
            peer: peer(name),
            secret: Secret::new(secret).unwrap(),
        };
        self.router
            .handle(self.now, RouterInput::Frame(ConnId(conn), frame));
        self.drain_leaving_jobs()
    }

    /// Drains the outputs, persisting at once, and returns hash jobs
    /// unanswered.
    fn drain_leaving_jobs(&mut self) -> (Vec<RouterOutput>, Vec<HashJob>) {
        let mut out = Vec::new();
        loop {
            let batch = drain(&mut self.router);
            if batch.is_empty() {
                return split_jobs(out);
            }
            for output in batch {
                match output {
                    RouterOutput::Persist { ticket, .. } if !self.hold_persist => {
                        self.router.handle(self.now, RouterInput::Persisted { ticket });
                    }
                    other => out.push(other),
                }
            }
        }
    }

    /// Hands `job`'s hash back; returns the outputs and further jobs.
    fn finish(&mut self, job: &HashJob) -> (Vec<RouterOutput>, Vec<HashJob>) {
        let hash = job.run();
        self.router
            .handle(self.now, RouterInput::SecretHashed { job: job.job, hash });
        self.drain_leaving_jobs()
    }
}

fn split_jobs(outputs: Vec<RouterOutput>) -> (Vec<RouterOutput>, Vec<HashJob>) {
    let mut jobs = Vec::new();
    let rest = outputs
        .into_iter()
        .filter_map(|o| match o {
            RouterOutput::HashSecret(job) => {
                jobs.push(job);
                None
            }
            other => Some(other),
        })
        .collect();
    (rest, jobs)
}

fn registered_on(outputs: &[RouterOutput]) -> Vec<u64> {
    outputs
        .iter()
        .filter_map(|o| match o {
            RouterOutput::Send(ConnId(c), ServerFrame::Registered { .. }) => Some(*c),
            _ => None,
        })
        .collect()
}

#[test]
fn a_registration_is_answered_only_once_its_hash_is_back() {
    let mut h = Harness::new();
    h.connect(1);
    let (out, jobs) = h.register_pending(1, "alice", "s3cret");
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].params, KdfParams::CHEAPEST);
    assert_eq!(h.router.peer_count(), 0, "claimed before the hash");
    let (out, more) = h.finish(&jobs[0]);
    assert!(more.is_empty());
    assert_eq!(registered_on(&out), vec![1]);
    // The record keeps the hash with its salt and parameters: the same
    // secret, stretched again with them, matches it; another does not.
    let record = &h.router.state().peers[&peer("alice")];
    assert_eq!(record.kdf, KdfParams::CHEAPEST);
    assert_eq!(record.salt, jobs[0].salt);
    assert!(record.matches(&stretch(
        record.kdf,
        &record.salt,
        &Secret::new("s3cret").unwrap()
    )));
    assert!(!record.matches(&stretch(
        record.kdf,
        &record.salt,
        &Secret::new("s3cret!").unwrap()
    )));
    // An answer to no job changes nothing.
    h.router.handle(
        h.now,
        RouterInput::SecretHashed {
            job: 99,
            hash: [0; 32],
        },
    );
    assert!(drain(&mut h.router).is_empty());
}

#[test]
fn a_client_gone_before_its_hash_claims_nothing() {
    let mut h = Harness::new();
    h.connect(1);
    let (_, jobs) = h.register_pending(1, "alice", "s3cret");
    h.router.handle(h.now, RouterInput::Disconnected(ConnId(1)));
    let (out, _) = h.finish(&jobs[0]);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(h.router.peer_count(), 0);
    // The ID is still free for the next one.
    h.connect(2);
    assert_eq!(registered_on(&h.register(2, "alice", "other")), vec![2]);
}

#[test]
fn of_two_claims_of_a_free_id_the_second_must_prove_the_first_ones_secret() {
    let mut h = Harness::new();
    h.connect(1);
    h.connect(2);
    h.connect(3);
    let (_, first) = h.register_pending(1, "alice", "mine");
    // Queued behind the first: no hash asked for yet.
    let (out, second) = h.register_pending(2, "alice", "theirs");
    assert!(out.is_empty() && second.is_empty(), "{out:?} {second:?}");
    let (_, third) = h.register_pending(3, "alice", "mine");
    assert!(third.is_empty());
    let (out, next) = h.finish(&first[0]);
    assert_eq!(registered_on(&out), vec![1]);
    // The second is judged against the record the first made.
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].salt, first[0].salt);
    // It is wrong; the third, though right, falls in the back-off that
    // wrong guess started, and is refused without being hashed.
    let (out, next) = h.finish(&next[0]);
    assert_eq!(
        errors(&out),
        vec![ErrorCode::WrongSecret, ErrorCode::TooManyAttempts]
    );
    assert!(next.is_empty());
    assert_eq!(h.router.peer_count(), 1);
}

#[test]
fn guesses_at_one_id_are_judged_one_at_a_time_however_many_connections() {
    let mut h = Harness::new();
    h.online(1, "alice");
    for conn in 2..=5 {
        h.connect(conn);
    }
    let (_, jobs) = h.register_pending(2, "alice", "guess-2");
    assert_eq!(jobs.len(), 1);
    for conn in 3..=5 {
        let (out, more) = h.register_pending(conn, "alice", &format!("guess-{conn}"));
        assert!(
            out.is_empty() && more.is_empty(),
            "guess {conn} was judged in parallel"
        );
    }
    // The queue is full: a fifth guess is refused at once.
    h.connect(6);
    let (out, _) = h.register_pending(6, "alice", "guess-6");
    assert_eq!(errors(&out), vec![ErrorCode::TooManyAttempts]);
    // The first guess is wrong: the ones queued behind it fall in its
    // back-off and are refused without being hashed.
    let (out, more) = h.finish(&jobs[0]);
    assert!(more.is_empty(), "a guess was hashed within the back-off");
    let expected = [ErrorCode::WrongSecret]
        .into_iter()
        .chain([ErrorCode::TooManyAttempts; 3]);
    assert_eq!(errors(&out), expected.collect::<Vec<_>>());
}

#[test]
fn registrations_in_progress_are_bounded() {
    let mut h = Harness::new();
    let mut jobs = Vec::new();
    for i in 0..crate::router::MAX_REGISTRATIONS as u64 {
        h.connect(i);
        let (out, job) = h.register_pending(i, &format!("p{i}"), "s");
        assert!(out.is_empty());
        jobs.extend(job);
    }
    let extra = crate::router::MAX_REGISTRATIONS as u64;
    h.connect(extra);
    let (out, job) = h.register_pending(extra, "late", "s");
    assert_eq!(errors(&out), vec![ErrorCode::Busy]);
    assert!(job.is_empty());
    // Once one is judged, a place frees.
    h.finish(&jobs[0]);
    let (out, job) = h.register_pending(extra, "late", "s");
    assert!(out.is_empty() && job.len() == 1, "{out:?}");
}

// Per source address: wrong secrets across IDs.

/// Registers `n` peers `p0`, `p1`, ... on connections 1000 + i.
fn with_peers(h: &mut Harness, n: u64) {
    for i in 0..n {
        h.online(1000 + i, &format!("p{i}"));
    }
}

#[test]
fn one_source_guessing_across_ids_waits_once_past_its_grace() {
    let mut h = Harness::new();
    with_peers(&mut h, 12);
    let attacker = IpAddr::from([192, 0, 2, 1]);
    for i in 0..u64::from(crate::router::SOURCE_GRACE) {
        h.connect_from(i, attacker);
        let out = h.register(i, &format!("p{i}"), "guess");
        assert_eq!(errors(&out), vec![ErrorCode::WrongSecret], "guess {i}");
    }
    // One more is judged; from then on the source waits, whatever ID.
    let grace = u64::from(crate::router::SOURCE_GRACE);
    h.connect_from(grace, attacker);
    let out = h.register(grace, &format!("p{grace}"), "guess");
    assert_eq!(errors(&out), vec![ErrorCode::WrongSecret]);
    h.connect_from(50, attacker);
    let out = h.register(50, "p10", "p10-secret");
    assert_eq!(errors(&out), vec![ErrorCode::TooManyAttempts]);
    assert!(out.iter().any(|o| matches!(o,
        RouterOutput::Send(_, ServerFrame::Error { message, .. }) if message.contains("from your address"))));
    // Another source is not held up, even for the same ID.
    h.connect_from(51, IpAddr::from([192, 0, 2, 2]));
    assert_eq!(registered_on(&h.register(51, "p10", "p10-secret")), vec![51]);
    // After the wait the attacker's next attempt is judged; the right
    // secret clears its count.
    h.now += crate::router::FIRST_GUESS_DELAY;
    assert_eq!(registered_on(&h.register(50, "p11", "p11-secret")), vec![50]);
    h.connect_from(52, attacker);
    let out = h.register(52, "p0", "guess");
    assert_eq!(errors(&out), vec![ErrorCode::WrongSecret]);
    h.connect_from(53, attacker);
    let out = h.register(53, "p1", "p1-secret");
    assert!(errors(&out).is_empty(), "the count was not cleared: {out:?}");
}

#[test]
fn remembered_sources_are_bounded_and_forgotten_once_their_wait_is_long_over() {
    let mut h = Harness::with(RouterConfig {
        max_tracked_sources: 2,
        ..RouterConfig::default()
    });
    let per_source = u64::from(crate::router::SOURCE_GRACE) + 1;
    with_peers(&mut h, 3 * per_source);
    let sources = [1, 2, 3].map(|i| IpAddr::from([192, 0, 2, i]));
    // Two sources fill the table; a third is not tracked, so it never
    // waits for its own guesses (the per-ID waits still hold). Each guess
    // is at another ID, so no ID's wait gets in the way.
    for (i, source) in (0u64..).zip(sources) {
        h.connect_from(i, source);
        for k in 0..per_source {
            let out = h.register(i, &format!("p{}", i * per_source + k), "guess");
            assert_eq!(errors(&out), vec![ErrorCode::WrongSecret]);
        }
    }
    assert_eq!(h.router.source_guesses.len(), 2);
    assert!(!h.router.source_guesses.contains_key(&sources[2]));
    // Once the tracked ones' waits are long over, they make room.
    h.now += crate::router::MAX_GUESS_DELAY * 2;
    h.register(2, "p0", "guess");
    assert!(h.router.source_guesses.contains_key(&sources[2]));
    assert_eq!(h.router.source_guesses.len(), 1);
}

#[test]
fn stats_count_what_the_router_holds() {
    let mut h = Harness::new();
    h.online(1, "alice");
    h.online(2, "bob");
    h.group_op(1, create, "devs");
    h.router.handle(h.now, RouterInput::Disconnected(ConnId(2)));
    h.send(1, 1, "bob", "hello");
    h.send(1, 2, "bob", "again");
    let stats = h.router.stats();
    assert_eq!(stats.role, RouterRole::Standalone);
    assert_eq!((stats.peers, stats.groups, stats.sessions), (2, 1, 1));
    assert_eq!(stats.mailbox_messages, 2);
    assert_eq!(stats.mailbox_bytes, h.router.stored_bytes());
    assert!(stats.mailbox_bytes > 0);
    assert_eq!(stats.applied, stats.committed);
    assert_eq!(stats.applied, h.router.applied_lsn());
    assert!(stats.follower_lag.is_empty());
}
