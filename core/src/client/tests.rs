use std::time::Duration;

use super::*;
use crate::testing::{drain, epoch};

fn peer(s: &str) -> PeerId {
    PeerId::new(s).unwrap()
}

fn target(s: &str) -> Target {
    Target::new(s).unwrap()
}

struct Harness {
    client: Client,
    now: Instant,
}

impl Harness {
    /// A client that has connected (attempt 1) and been asked to register.
    fn connected() -> Self {
        let now = epoch();
        let config = ClientConfig::new(
            peer("alice"),
            Secret::new("s").unwrap(),
            vec!["r1".into(), "r2".into()],
        );
        let mut client = Client::new(config, 1, now);
        assert_eq!(client.poll_timeout(), Some(now));
        client.handle_timeout(now);
        assert_eq!(
            drain(&mut client),
            vec![ClientOutput::Connect {
                attempt: 1,
                router: "r1".into()
            }]
        );
        client.handle(now, ClientInput::Connected { attempt: 1 });
        client.handle(now, ClientInput::Command(Command::Register));
        Self { client, now }
    }

    fn input(&mut self, input: ClientInput) -> Vec<ClientOutput> {
        self.client.handle(self.now, input);
        drain(&mut self.client)
    }

    fn frame(&mut self, frame: ServerFrame) -> Vec<ClientOutput> {
        self.input(ClientInput::Frame(frame))
    }

    fn command(&mut self, command: Command) -> Vec<ClientOutput> {
        self.input(ClientInput::Command(command))
    }

    fn send(&mut self, to: &str, body: &str) -> Vec<ClientOutput> {
        self.command(Command::Send {
            to: target(to),
            body: body.into(),
        })
    }
}

/// The request ID of the last frame of the given kind among `outputs`.
fn req_of(outputs: &[ClientOutput]) -> ReqId {
    outputs
        .iter()
        .rev()
        .find_map(|o| match o {
            ClientOutput::Transmit(f) => f.req(),
            _ => None,
        })
        .expect("a request was transmitted")
}

fn events(outputs: &[ClientOutput]) -> Vec<ClientEvent> {
    outputs
        .iter()
        .filter_map(|o| match o {
            ClientOutput::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn sends(outputs: &[ClientOutput]) -> Vec<(ReqId, u64, String)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            ClientOutput::Transmit(ClientFrame::Send { req, seq, body, .. }) => {
                Some((*req, seq.0, body.clone()))
            }
            _ => None,
        })
        .collect()
}

fn register_reply(h: &mut Harness, outputs: &[ClientOutput], next_seq: u64) -> Vec<ClientOutput> {
    let req = req_of(outputs);
    h.frame(ServerFrame::Registered {
        req,
        peer: peer("alice"),
        next_seq: Seq(next_seq),
    })
}

#[test]
fn messages_wait_for_registration_and_continue_the_routers_sequence() {
    let mut h = Harness::connected();
    let register = drain(&mut h.client);
    assert!(matches!(
        register[..],
        [
            ClientOutput::Event(ClientEvent::Connected { .. }),
            ClientOutput::Transmit(ClientFrame::Register { .. })
        ]
    ));
    assert!(
        h.send("bob", "one").is_empty(),
        "nothing is sent before registration"
    );
    let out = register_reply(&mut h, &register, 7);
    assert_eq!(
        sends(&out)
            .iter()
            .map(|s| (s.1, s.2.as_str()))
            .collect::<Vec<_>>(),
        vec![(7, "one")]
    );
    assert_eq!(sends(&h.send("bob", "two"))[0].1, 8);
}

#[test]
fn sending_before_register_is_refused() {
    let now = epoch();
    let config = ClientConfig::new(peer("alice"), Secret::new("s").unwrap(), vec!["r".into()]);
    let mut client = Client::new(config, 1, now);
    client.handle(
        now,
        ClientInput::Command(Command::Send {
            to: target("bob"),
            body: "x".into(),
        }),
    );
    assert!(matches!(
        &events(&drain(&mut client))[..],
        [ClientEvent::Failed {
            id: None,
            code: ErrorCode::NotRegistered,
            ..
        }]
    ));
}

#[test]
fn the_outbox_is_resent_in_order_after_a_reconnect() {
    let mut h = Harness::connected();
    let register = drain(&mut h.client);
    register_reply(&mut h, &register, 1);
    let first = sends(&h.send("bob", "a"));
    h.send("bob", "b");
    h.frame(ServerFrame::Sent {
        req: first[0].0,
        seq: Seq(1),
        to: target("bob"),
    });

    let out = h.input(ClientInput::Disconnected {
        attempt: 1,
        reason: "test".into(),
    });
    assert!(matches!(&events(&out)[..], [ClientEvent::Disconnected { .. }]));
    let retry = h.client.poll_timeout().unwrap();
    assert!(
        retry > h.now && retry <= h.now + Duration::from_millis(200),
        "jittered first backoff"
    );
    h.now = retry;
    h.client.handle_timeout(h.now);
    assert_eq!(
        drain(&mut h.client),
        vec![ClientOutput::Connect {
            attempt: 2,
            router: "r2".into()
        }]
    );
    let out = h.input(ClientInput::Connected { attempt: 2 });
    let out = register_reply(&mut h, &out, 2);
    assert_eq!(
        sends(&out)
            .iter()
            .map(|s| (s.1, s.2.as_str()))
            .collect::<Vec<_>>(),
        vec![(2, "b")]
    );
}

#[test]
fn stale_connection_reports_are_ignored() {
    let mut h = Harness::connected();
    drain(&mut h.client);
    let out = h.input(ClientInput::Disconnected {
        attempt: 0,
        reason: "old".into(),
    });
    assert!(out.is_empty());
    assert!(matches!(h.client.link, Link::Up { .. }));
}

#[test]
fn received_messages_are_acknowledged_and_surfaced_once_in_order() {
    let mut h = Harness::connected();
    let register = drain(&mut h.client);
    register_reply(&mut h, &register, 1);
    let msg = |delivery, seq| ServerFrame::Message {
        delivery: DeliveryId(delivery),
        from: peer("bob"),
        seq: Seq(seq),
        to: target("alice"),
        body: format!("m{seq}"),
    };
    let out = h.frame(msg(1, 4));
    assert!(matches!(&events(&out)[..], [ClientEvent::Received { .. }]));
    assert!(out.contains(&ClientOutput::Transmit(ClientFrame::Ack {
        delivery: DeliveryId(1),
        through: None,
    })));
    let again = h.frame(msg(2, 4));
    assert!(
        events(&again).is_empty(),
        "a duplicate is acknowledged but not surfaced"
    );
    assert!(again.contains(&ClientOutput::Transmit(ClientFrame::Ack {
        delivery: DeliveryId(2),
        through: None,
    })));
}

#[test]
fn items_handled_before_the_driver_writes_share_one_acknowledgement() {
    let mut h = Harness::connected();
    let register = drain(&mut h.client);
    register_reply(&mut h, &register, 1);
    let msg = |delivery, seq| {
        ClientInput::Frame(ServerFrame::Message {
            delivery: DeliveryId(delivery),
            from: peer("bob"),
            seq: Seq(seq),
            to: target("alice"),
            body: format!("m{seq}"),
        })
    };
    let receipt = |delivery| {
        ClientInput::Frame(ServerFrame::Delivered {
            delivery: DeliveryId(delivery),
            seq: Seq(1),
            to: target("bob"),
            by: peer("bob"),
        })
    };
    let frames = |outputs: &[ClientOutput]| -> Vec<ClientFrame> {
        outputs
            .iter()
            .filter_map(|o| match o {
                ClientOutput::Transmit(f) => Some(f.clone()),
                _ => None,
            })
            .collect()
    };
    let ack = |delivery, through: Option<u64>| ClientFrame::Ack {
        delivery: DeliveryId(delivery),
        through: through.map(DeliveryId),
    };
    // Three items (a duplicate and a receipt among them) before the driver
    // takes the outputs: one frame for the three, and every event.
    for input in [msg(3, 1), msg(4, 1), receipt(6)] {
        h.client.handle(h.now, input);
    }
    let out = drain(&mut h.client);
    assert_eq!(frames(&out), vec![ack(3, Some(6))]);
    assert_eq!(events(&out).len(), 2, "the message once, and the receipt");
    // A frame of another kind in between ends the run.
    h.client.handle(h.now, msg(7, 2));
    h.client.handle(
        h.now,
        ClientInput::Command(Command::Send {
            to: target("bob"),
            body: "hi".into(),
        }),
    );
    h.client.handle(h.now, msg(8, 3));
    let out = drain(&mut h.client);
    let sent = frames(&out);
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert_eq!((&sent[0], &sent[2]), (&ack(7, None), &ack(8, None)));
    // What the driver has taken is never widened.
    let out = h.input(msg(9, 4));
    assert_eq!(frames(&out), vec![ack(9, None)]);
}

#[test]
fn a_receipt_before_the_sent_reply_reports_sent_first() {
    let mut h = Harness::connected();
    let register = drain(&mut h.client);
    register_reply(&mut h, &register, 1);
    let req = sends(&h.send("bob", "a"))[0].0;
    let receipt = ServerFrame::Delivered {
        delivery: DeliveryId(1),
        seq: Seq(1),
        to: target("bob"),
        by: peer("bob"),
    };
    let out = h.frame(receipt.clone());
    let id = MsgId {
        from: peer("alice"),
        seq: Seq(1),
    };
    assert_eq!(
        events(&out),
        vec![
            ClientEvent::Sent {
                id: id.clone(),
                to: target("bob")
            },
            ClientEvent::Delivered {
                id,
                to: target("bob"),
                by: peer("bob")
            },
        ]
    );
    assert!(events(&h.frame(ServerFrame::Sent {
        req,
        seq: Seq(1),
        to: target("bob")
    }))
    .is_empty());
    assert!(
        events(&h.frame(receipt)).is_empty(),
        "a repeated receipt is not reported again"
    );
    assert_eq!(h.client.outstanding(), 0);
}

#[test]
fn a_refused_message_fails_and_leaves_the_outbox() {
    let mut h = Harness::connected();
    let register = drain(&mut h.client);
    register_reply(&mut h, &register, 1);
    let req = sends(&h.send("nobody", "a"))[0].0;
    let out = h.frame(ServerFrame::Error {
        req: Some(req),
        code: ErrorCode::UnknownRecipient,
        message: "no".into(),
    });
    assert!(matches!(
        &events(&out)[..],
        [ClientEvent::Failed {
            id: Some(_),
            code: ErrorCode::UnknownRecipient,
            ..
        }]
    ));
    assert_eq!(h.client.outbox_len(), 0);
}

#[test]
fn a_wrong_secret_stops_registration_and_fails_waiting_messages() {
    let mut h = Harness::connected();
    let register = drain(&mut h.client);
    h.send("bob", "a");
    let req = req_of(&register);
    let out = h.frame(ServerFrame::Error {
        req: Some(req),
        code: ErrorCode::WrongSecret,
        message: "no".into(),
    });
    assert!(matches!(
        &events(&out)[..],
        [
            ClientEvent::RegisterFailed {
                code: ErrorCode::WrongSecret,
                ..
            },
            ClientEvent::Failed { id: None, .. }
        ]
    ));
    assert_eq!(h.client.outstanding(), 0);
}

#[test]
fn a_replaced_session_stops_the_client() {
    let mut h = Harness::connected();
    drain(&mut h.client);
    let out = h.frame(ServerFrame::Closing {
        code: ErrorCode::Replaced,
        message: "newer".into(),
    });
    assert!(out.contains(&ClientOutput::Disconnect));
    assert!(h.client.is_stopped());
    assert_eq!(h.client.poll_timeout(), None);
}

#[test]
fn an_idle_connection_is_pinged_and_an_unanswered_one_dropped() {
    let mut h = Harness::connected();
    let register = drain(&mut h.client);
    register_reply(&mut h, &register, 1);
    h.now += Duration::from_secs(10);
    assert_eq!(h.client.poll_timeout(), Some(h.now));
    h.client.handle_timeout(h.now);
    assert!(matches!(
        drain(&mut h.client)[..],
        [ClientOutput::Transmit(ClientFrame::Ping { .. })]
    ));
    h.now += Duration::from_secs(5);
    assert_eq!(
        h.client.poll_timeout(),
        Some(h.now),
        "the ping must be answered within 5 s"
    );
    h.client.handle_timeout(h.now);
    let out = drain(&mut h.client);
    assert_eq!(out[0], ClientOutput::Disconnect);
    assert!(matches!(&events(&out)[..], [ClientEvent::Disconnected { .. }]));
}

#[test]
fn a_redirect_sends_the_next_attempt_to_the_primary() {
    let mut h = Harness::connected();
    drain(&mut h.client);
    let out = h.frame(ServerFrame::Redirect {
        primary: Some("r9".into()),
    });
    assert_eq!(out[0], ClientOutput::Disconnect);
    h.now = h.client.poll_timeout().unwrap();
    h.client.handle_timeout(h.now);
    assert_eq!(
        drain(&mut h.client),
        vec![ClientOutput::Connect {
            attempt: 2,
            router: "r9".into()
        }]
    );
    let out = h.input(ClientInput::Connected { attempt: 2 });
    assert!(events(&out).contains(&ClientEvent::Connected { router: "r9".into() }));
}

#[test]
fn the_outbox_is_bounded() {
    let mut h = Harness::connected();
    h.client.config.outbox_limit = 2;
    h.send("bob", "1");
    h.send("bob", "2");
    let out = h.send("bob", "3");
    assert!(matches!(
        &events(&out)[..],
        [ClientEvent::Failed {
            code: ErrorCode::OutboxFull,
            ..
        }]
    ));
    assert_eq!(h.client.outbox_len(), 2);
}

#[test]
fn a_connection_silent_while_a_request_waits_is_dropped_after_a_second() {
    let mut h = Harness::connected();
    let register = drain(&mut h.client);
    register_reply(&mut h, &register, 1);
    h.now += Duration::from_secs(3);
    h.send("bob", "hi");
    // Pings come every 250 ms while the send waits.
    let mut pings = 0;
    for _ in 0..3 {
        h.now += Duration::from_millis(250);
        assert_eq!(h.client.poll_timeout(), Some(h.now));
        h.client.handle_timeout(h.now);
        let out = drain(&mut h.client);
        pings += out
            .iter()
            .filter(|o| matches!(o, ClientOutput::Transmit(ClientFrame::Ping { .. })))
            .count();
    }
    assert_eq!(pings, 3);
    // Nothing has arrived for a second since the send: the router is gone.
    h.now += Duration::from_millis(250);
    assert_eq!(h.client.poll_timeout(), Some(h.now));
    h.client.handle_timeout(h.now);
    let out = drain(&mut h.client);
    assert_eq!(out[0], ClientOutput::Disconnect, "{out:?}");
}

#[test]
fn an_answering_router_keeps_a_waiting_request_on_its_connection() {
    let mut h = Harness::connected();
    let register = drain(&mut h.client);
    register_reply(&mut h, &register, 1);
    h.send("bob", "hi");
    for _ in 0..12 {
        h.now += Duration::from_millis(250);
        h.client.handle_timeout(h.now);
        for out in drain(&mut h.client) {
            if let ClientOutput::Transmit(ClientFrame::Ping { req }) = out {
                h.frame(ServerFrame::Pong { req });
            }
            assert_ne!(out, ClientOutput::Disconnect, "dropped a live router");
        }
    }
}

#[test]
fn losing_a_router_reached_by_redirect_tries_the_one_after_it() {
    let config = ClientConfig::new(
        peer("alice"),
        Secret::new("s").unwrap(),
        vec!["r1".into(), "r2".into(), "r3".into()],
    );
    let now = epoch();
    let mut h = Harness {
        client: Client::new(config, 1, now),
        now,
    };
    h.client.handle_timeout(h.now);
    drain(&mut h.client);
    h.input(ClientInput::Connected { attempt: 1 });
    // r1 sends the client to the primary, r3.
    h.frame(ServerFrame::Redirect {
        primary: Some("r3".into()),
    });
    h.now = h.client.poll_timeout().unwrap();
    h.client.handle_timeout(h.now);
    drain(&mut h.client);
    h.input(ClientInput::Connected { attempt: 2 });
    // r3 dies: the next attempt goes to r1, not to r3 again.
    h.input(ClientInput::Disconnected {
        attempt: 2,
        reason: "reset".into(),
    });
    h.now = h.client.poll_timeout().unwrap();
    h.client.handle_timeout(h.now);
    assert_eq!(
        drain(&mut h.client),
        vec![ClientOutput::Connect {
            attempt: 3,
            router: "r1".into()
        }]
    );
}

fn watches(outputs: &[ClientOutput]) -> Vec<(ReqId, String)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            ClientOutput::Transmit(ClientFrame::Watch { req, peer }) => Some((*req, peer.to_string())),
            _ => None,
        })
        .collect()
}

/// Drops the current connection (attempt `attempt`) and connects again.
fn reconnect(h: &mut Harness, attempt: u64) -> Vec<ClientOutput> {
    h.input(ClientInput::Disconnected {
        attempt,
        reason: "test".into(),
    });
    h.now = h.client.poll_timeout().unwrap();
    h.client.handle_timeout(h.now);
    drain(&mut h.client);
    h.input(ClientInput::Connected { attempt: attempt + 1 })
}

#[test]
fn queries_wait_for_registration_and_are_answered_once() {
    let mut h = Harness::connected();
    let register = drain(&mut h.client);
    let query = Query::Who(target("bob"));
    assert!(
        h.command(Command::Query(query)).is_empty(),
        "nothing before registration"
    );
    let out = register_reply(&mut h, &register, 1);
    let req = req_of(&out);
    assert!(matches!(
        out.last(),
        Some(ClientOutput::Transmit(ClientFrame::Who { .. }))
    ));
    let answer = ServerFrame::WhoIs {
        req,
        name: target("bob"),
        entry: None,
    };
    assert_eq!(
        events(&h.frame(answer.clone())),
        vec![ClientEvent::Found {
            name: target("bob"),
            entry: None
        }]
    );
    assert!(events(&h.frame(answer)).is_empty(), "a stray repeat is ignored");
    assert_eq!(h.client.outstanding(), 0);
}

#[test]
fn a_refused_query_is_reported_and_a_refused_watch_forgotten() {
    let mut h = Harness::connected();
    let register = drain(&mut h.client);
    register_reply(&mut h, &register, 1);
    let out = h.command(Command::Query(Query::Watch(peer("ghost"))));
    let req = req_of(&out);
    let out = h.frame(ServerFrame::Error {
        req: Some(req),
        code: ErrorCode::UnknownRecipient,
        message: "no peer is named ghost".into(),
    });
    assert!(matches!(
        &events(&out)[..],
        [ClientEvent::QueryFailed {
            query: Query::Watch(_),
            code: ErrorCode::UnknownRecipient,
            ..
        }]
    ));
    let out = reconnect(&mut h, 1);
    let out = register_reply(&mut h, &out, 1);
    assert!(watches(&out).is_empty(), "a refused watch is not renewed");
    let fresh = ClientConfig::new(peer("x"), Secret::new("s").unwrap(), vec!["r".into()]);
    let mut idle = Client::new(fresh, 1, epoch());
    idle.handle(
        epoch(),
        ClientInput::Command(Command::Query(Query::Who(target("a")))),
    );
    assert!(matches!(
        &events(&drain(&mut idle))[..],
        [ClientEvent::QueryFailed {
            code: ErrorCode::NotRegistered,
            ..
        }]
    ));
}

#[test]
fn watches_are_renewed_after_every_registration_and_changes_reported_once() {
    let mut h = Harness::connected();
    let register = drain(&mut h.client);
    register_reply(&mut h, &register, 1);
    let out = h.command(Command::Query(Query::Watch(peer("bob"))));
    let req = req_of(&out);
    let presence = |req, online| ServerFrame::Presence {
        req,
        peer: peer("bob"),
        online,
    };
    let bob = |online| ClientEvent::Presence {
        peer: peer("bob"),
        online,
    };
    assert_eq!(events(&h.frame(presence(Some(req), true))), vec![bob(true)]);
    assert_eq!(events(&h.frame(presence(None, false))), vec![bob(false)]);
    assert!(
        events(&h.frame(presence(None, false))).is_empty(),
        "no change, no event"
    );
    // A new session: the watch is renewed and its answer corrects the state.
    let out = reconnect(&mut h, 1);
    let out = register_reply(&mut h, &out, 1);
    let renewed = watches(&out);
    assert_eq!(renewed.len(), 1, "{out:?}");
    assert_eq!(
        events(&h.frame(presence(Some(renewed[0].0), true))),
        vec![bob(true)]
    );
    let out = reconnect(&mut h, 2);
    let out = register_reply(&mut h, &out, 1);
    let renewed = watches(&out);
    assert!(
        events(&h.frame(presence(Some(renewed[0].0), true))).is_empty(),
        "the same state again is no news"
    );
    // Unwatched: not renewed, and late news about bob is dropped.
    let out = h.command(Command::Query(Query::Unwatch(peer("bob"))));
    let req = req_of(&out);
    assert_eq!(
        events(&h.frame(ServerFrame::Ok { req })),
        vec![ClientEvent::Unwatched { peer: peer("bob") }]
    );
    assert!(events(&h.frame(presence(None, false))).is_empty());
    let out = reconnect(&mut h, 3);
    assert!(watches(&register_reply(&mut h, &out, 1)).is_empty());
}

#[test]
fn a_watch_issued_before_registration_is_sent_once() {
    let mut h = Harness::connected();
    let register = drain(&mut h.client);
    h.command(Command::Query(Query::Watch(peer("bob"))));
    let out = register_reply(&mut h, &register, 1);
    assert_eq!(watches(&out).len(), 1, "{out:?}");
}

#[test]
fn failed_connection_attempts_are_reported_ever_more_rarely() {
    let now = epoch();
    let config = ClientConfig::new(peer("alice"), Secret::new("s").unwrap(), vec!["r1".into()]);
    let mut client = Client::new(config, 1, now);
    let mut reported = Vec::new();
    let mut at = now;
    for attempt in 1..=9 {
        at = client.poll_timeout().unwrap();
        client.handle_timeout(at);
        drain(&mut client);
        let reason = "connection refused".to_owned();
        client.handle(at, ClientInput::ConnectFailed { attempt, reason });
        for event in events(&drain(&mut client)) {
            match event {
                ClientEvent::Unreachable {
                    router,
                    attempts,
                    retry_in,
                    ..
                } => {
                    assert_eq!(router, "r1");
                    assert_eq!(Some(at + retry_in), client.poll_timeout());
                    reported.push(attempts);
                }
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(reported, vec![1, 2, 4, 8]);
    // A connection resets the count.
    client.handle_timeout(client.poll_timeout().unwrap());
    drain(&mut client);
    client.handle(at, ClientInput::Connected { attempt: 10 });
    client.handle(
        at,
        ClientInput::Disconnected {
            attempt: 10,
            reason: "x".into(),
        },
    );
    client.handle_timeout(client.poll_timeout().unwrap());
    drain(&mut client);
    client.handle(
        at,
        ClientInput::ConnectFailed {
            attempt: 11,
            reason: "refused".into(),
        },
    );
    assert!(matches!(
        &events(&drain(&mut client))[..],
        [ClientEvent::Unreachable { attempts: 1, .. }]
    ));
}

#[test]
fn a_second_register_is_answered() {
    let mut h = Harness::connected();
    let register = drain(&mut h.client);
    register_reply(&mut h, &register, 5);
    let out = h.command(Command::Register);
    assert_eq!(
        events(&out),
        vec![ClientEvent::Registered {
            peer: peer("alice"),
            next_seq: Seq(5)
        }]
    );
    assert!(
        !out.iter().any(|o| matches!(o, ClientOutput::Transmit(_))),
        "nothing sent"
    );
}

#[test]
fn group_requests_need_registration_and_are_answered() {
    let fresh = ClientConfig::new(peer("x"), Secret::new("s").unwrap(), vec!["r".into()]);
    let mut idle = Client::new(fresh, 1, epoch());
    let group = GroupName::new("g").unwrap();
    idle.handle(
        epoch(),
        ClientInput::Command(Command::Group(GroupOp::Join, group.clone())),
    );
    assert!(matches!(
        &events(&drain(&mut idle))[..],
        [ClientEvent::GroupFailed {
            code: ErrorCode::NotRegistered,
            ..
        }]
    ));
    let mut h = Harness::connected();
    let register = drain(&mut h.client);
    register_reply(&mut h, &register, 1);
    let out = h.command(Command::Group(GroupOp::Create, group.clone()));
    let req = req_of(&out);
    assert_eq!(
        events(&h.frame(ServerFrame::Ok { req })),
        vec![ClientEvent::GroupDone {
            op: GroupOp::Create,
            group
        }]
    );
}

#[test]
fn a_register_repeated_while_one_waits_sends_nothing_more() {
    let mut h = Harness::connected();
    drain(&mut h.client);
    let again = h.command(Command::Register);
    assert!(
        !again
            .iter()
            .any(|o| matches!(o, ClientOutput::Transmit(ClientFrame::Register { .. }))),
        "{again:?}"
    );
}
