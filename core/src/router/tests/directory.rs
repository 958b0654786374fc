//! Lookups, listings, members and presence.

use super::*;
use crate::router::directory::Directory;
use crate::wire::directory::{Entry, GroupEntry, PeerEntry, DEFAULT_PAGE, MAX_PAGE};

fn public() -> Harness {
    Harness::with(RouterConfig {
        directory: Directory::Public,
        ..RouterConfig::default()
    })
}

/// The frames sent to `conn` among `outputs`.
fn to(outputs: &[RouterOutput], conn: u64) -> Vec<ServerFrame> {
    outputs
        .iter()
        .filter_map(|o| match o {
            RouterOutput::Send(c, frame) if *c == ConnId(conn) => Some(frame.clone()),
            _ => None,
        })
        .collect()
}

/// The one frame answering a request on `conn`.
fn answer(outputs: &[RouterOutput], conn: u64) -> ServerFrame {
    let frames = to(outputs, conn);
    assert_eq!(frames.len(), 1, "{frames:?}");
    frames.into_iter().next().unwrap()
}

impl Harness {
    fn who(&mut self, conn: u64, name: &str) -> Option<Entry> {
        let req = self.next_req();
        let out = self.frame(
            conn,
            ClientFrame::Who {
                req,
                name: target(name),
            },
        );
        match answer(&out, conn) {
            ServerFrame::WhoIs { req: r, entry, .. } if r == req => entry,
            other => panic!("{other:?}"),
        }
    }

    /// One page of peers: names with their online state, and `next`.
    fn peers(
        &mut self,
        conn: u64,
        prefix: Option<&str>,
        after: Option<&str>,
        limit: Option<u32>,
    ) -> ServerFrame {
        let req = self.next_req();
        let frame = ClientFrame::Peers {
            req,
            prefix: prefix.map(|p| crate::ids::NamePrefix::new(p).unwrap()),
            after: after.map(peer),
            limit,
        };
        let out = self.frame(conn, frame);
        answer(&out, conn)
    }

    fn watch(&mut self, conn: u64, name: &str) -> Vec<RouterOutput> {
        let req = self.next_req();
        self.frame(
            conn,
            ClientFrame::Watch {
                req,
                peer: peer(name),
            },
        )
    }
}

fn names(page: &ServerFrame) -> (Vec<String>, Option<String>) {
    match page {
        ServerFrame::PeerList { peers, next, .. } => (
            peers.iter().map(|p| p.id.to_string()).collect(),
            next.as_ref().map(ToString::to_string),
        ),
        ServerFrame::GroupList { groups, next, .. } => (
            groups.iter().map(|g| g.name.to_string()).collect(),
            next.as_ref().map(ToString::to_string),
        ),
        ServerFrame::MemberList { members, next, .. } => (
            members.iter().map(|p| p.id.to_string()).collect(),
            next.as_ref().map(ToString::to_string),
        ),
        other => panic!("not a page: {other:?}"),
    }
}

fn presence(outputs: &[RouterOutput], conn: u64) -> Vec<(String, bool)> {
    to(outputs, conn)
        .into_iter()
        .filter_map(|f| match f {
            ServerFrame::Presence { peer, online, .. } => Some((peer.to_string(), online)),
            _ => None,
        })
        .collect()
}

#[test]
fn who_tells_peers_groups_and_unknown_names_apart() {
    let mut h = Harness::new();
    h.online(1, "alice");
    h.online(2, "bob");
    h.group_op(1, create, "devs");
    h.group_op(2, join, "devs");
    assert_eq!(
        h.who(1, "bob"),
        Some(Entry::Peer {
            online: true,
            last_seen_ms_ago: None
        })
    );
    assert_eq!(
        h.who(1, "devs"),
        Some(Entry::Group {
            creator: peer("alice"),
            members: 2
        })
    );
    assert_eq!(h.who(1, "nobody"), None);
    h.now += Duration::from_millis(1_500);
    h.frame(2, ClientFrame::Ping { req: ReqId(99) });
    h.router.handle(h.now, RouterInput::Disconnected(ConnId(2)));
    h.now += Duration::from_millis(2_000);
    assert_eq!(
        h.who(1, "bob"),
        Some(Entry::Peer {
            online: false,
            last_seen_ms_ago: Some(2_000)
        }),
        "last seen counts from bob's last frame"
    );
}

#[test]
fn lookups_need_a_registered_session() {
    let mut h = public();
    h.online(1, "alice");
    h.connect(2);
    for frame in [
        ClientFrame::Who {
            req: ReqId(1),
            name: target("alice"),
        },
        ClientFrame::Peers {
            req: ReqId(2),
            prefix: None,
            after: None,
            limit: None,
        },
        ClientFrame::Watch {
            req: ReqId(3),
            peer: peer("alice"),
        },
    ] {
        assert_eq!(errors(&h.frame(2, frame)), vec![ErrorCode::NotRegistered]);
    }
}

#[test]
fn a_private_directory_refuses_listing_but_answers_lookups() {
    let mut h = Harness::new();
    h.online(1, "alice");
    let req = h.next_req();
    let out = h.frame(
        1,
        ClientFrame::Peers {
            req,
            prefix: None,
            after: None,
            limit: None,
        },
    );
    assert_eq!(errors(&out), vec![ErrorCode::DirectoryPrivate]);
    assert!(h.who(1, "alice").is_some());
    let req = h.next_req();
    let groups = h.frame(
        1,
        ClientFrame::Groups {
            req,
            prefix: None,
            after: None,
            limit: None,
        },
    );
    assert!(matches!(answer(&groups, 1), ServerFrame::GroupList { .. }));
}

#[test]
fn peers_are_listed_sorted_by_prefix_a_page_at_a_time() {
    let mut h = public();
    for (conn, name) in [
        (1, "carol"),
        (2, "al"),
        (3, "alice"),
        (4, "bal"),
        (5, "al.b"),
        (6, "alma"),
    ] {
        h.online(conn, name);
    }
    h.router.handle(h.now, RouterInput::Disconnected(ConnId(6)));
    let all = h.peers(1, None, None, None);
    assert_eq!(
        names(&all),
        (
            vec!["al", "al.b", "alice", "alma", "bal", "carol"]
                .into_iter()
                .map(String::from)
                .collect(),
            None
        )
    );
    let ServerFrame::PeerList { peers, .. } = &all else {
        unreachable!()
    };
    assert!(peers.contains(&PeerEntry {
        id: peer("alma"),
        online: false
    }));
    // Pages of two under prefix "al", following the cursor.
    let first = h.peers(1, Some("al"), None, Some(2));
    assert_eq!(
        names(&first),
        (vec!["al".into(), "al.b".into()], Some("al.b".into()))
    );
    let second = h.peers(1, Some("al"), Some("al.b"), Some(2));
    assert_eq!(
        names(&second),
        (vec!["alice".into(), "alma".into()], None),
        "bal is not under al"
    );
    // A cursor before the prefix starts at the prefix; one past it ends.
    assert_eq!(names(&h.peers(1, Some("b"), Some("a"), None)).0, vec!["bal"]);
    assert_eq!(
        names(&h.peers(1, Some("al"), Some("am"), None)).0,
        Vec::<String>::new()
    );
    assert_eq!(names(&h.peers(1, Some("zz"), None, None)), (vec![], None));
    // An exact page: no cursor when nothing follows.
    assert_eq!(
        names(&h.peers(1, Some("c"), None, Some(1))),
        (vec!["carol".into()], None)
    );
}

#[test]
fn page_sizes_are_bounded_and_fit_a_frame() {
    let mut h = public();
    h.online(1, "a0");
    let mut joins = 0;
    for n in 1..=(MAX_PAGE as u64 + 5) {
        let name = format!("p{n:05}");
        h.connect(1000 + n);
        h.register(1000 + n, &name, "s");
        joins += 1;
    }
    assert_eq!(joins, MAX_PAGE + 5);
    assert_eq!(names(&h.peers(1, None, None, None)).0.len(), DEFAULT_PAGE);
    assert_eq!(names(&h.peers(1, None, None, Some(u32::MAX))).0.len(), MAX_PAGE);
    assert_eq!(
        names(&h.peers(1, None, None, Some(0))).0.len(),
        1,
        "0 asks for the least"
    );
    // A router with small frames gives pages that fit them.
    let mut small = Harness::with(RouterConfig {
        directory: Directory::Public,
        max_frame_len: 4_096,
        ..RouterConfig::default()
    });
    small.online(1, "a0");
    for n in 1..=200 {
        small.connect(1000 + n);
        small.register(1000 + n, &format!("{}{n:05}", "x".repeat(58)), "s");
    }
    let page = small.peers(1, None, None, Some(1_000));
    let mut buf = bytes::BytesMut::new();
    crate::wire::encode_frame(&page, &mut buf);
    assert!(buf.len() <= 4_096, "a page of {} bytes", buf.len());
    assert!(names(&page).0.len() > 1);
}

#[test]
fn groups_are_listed_with_their_sizes() {
    let mut h = Harness::new();
    h.online(1, "alice");
    h.online(2, "bob");
    for g in ["ops", "devs", "dev-null"] {
        h.group_op(1, create, g);
    }
    h.group_op(2, join, "devs");
    let req = h.next_req();
    let out = h.frame(
        2,
        ClientFrame::Groups {
            req,
            prefix: Some(crate::ids::NamePrefix::new("dev").unwrap()),
            after: None,
            limit: None,
        },
    );
    let ServerFrame::GroupList { groups, next, .. } = answer(&out, 2) else {
        panic!()
    };
    assert_eq!(
        groups,
        vec![
            GroupEntry {
                name: group("dev-null"),
                members: 1
            },
            GroupEntry {
                name: group("devs"),
                members: 2
            },
        ]
    );
    assert_eq!(next, None);
}

#[test]
fn only_members_list_members() {
    let mut h = Harness::new();
    for (conn, name) in [(1, "alice"), (2, "bob"), (3, "carol"), (4, "dave")] {
        h.online(conn, name);
    }
    h.group_op(1, create, "devs");
    h.group_op(2, join, "devs");
    h.group_op(4, join, "devs");
    h.router.handle(h.now, RouterInput::Disconnected(ConnId(4)));
    let members = |h: &mut Harness, conn: u64, name: &str, after: Option<&str>, limit: Option<u32>| {
        let req = h.next_req();
        let frame = ClientFrame::Members {
            req,
            group: group(name),
            after: after.map(peer),
            limit,
        };
        h.frame(conn, frame)
    };
    let out = members(&mut h, 2, "devs", None, None);
    let ServerFrame::MemberList { members: list, .. } = answer(&out, 2) else {
        panic!()
    };
    let online: Vec<(String, bool)> = list.iter().map(|p| (p.id.to_string(), p.online)).collect();
    assert_eq!(
        online,
        vec![
            ("alice".into(), true),
            ("bob".into(), true),
            ("dave".into(), false)
        ]
    );
    let out = members(&mut h, 2, "devs", Some("alice"), Some(1));
    assert_eq!(names(&answer(&out, 2)), (vec!["bob".into()], Some("bob".into())));
    assert_eq!(
        errors(&members(&mut h, 3, "devs", None, None)),
        vec![ErrorCode::NotAMember]
    );
    assert_eq!(
        errors(&members(&mut h, 3, "nope", None, None)),
        vec![ErrorCode::UnknownGroup]
    );
    h.group_op(2, leave, "devs");
    assert_eq!(
        errors(&members(&mut h, 2, "devs", None, None)),
        vec![ErrorCode::NotAMember]
    );
}

#[test]
fn a_watch_is_answered_with_the_state_now_then_every_change() {
    let mut h = Harness::new();
    h.online(1, "alice");
    h.online(2, "bob");
    assert_eq!(presence(&h.watch(1, "bob"), 1), vec![("bob".into(), true)]);
    let out = h.frame(2, ClientFrame::Ping { req: ReqId(50) });
    assert!(presence(&out, 1).is_empty(), "a frame is not a change");
    h.router.handle(h.now, RouterInput::Disconnected(ConnId(2)));
    assert_eq!(presence(&h.drain(), 1), vec![("bob".into(), false)]);
    assert_eq!(presence(&h.online(3, "bob"), 1), vec![("bob".into(), true)]);
    // A newer session replacing bob's is no change.
    let out = h.online(4, "bob");
    assert!(presence(&out, 1).is_empty(), "{out:?}");
    // A session timed out for silence is a change.
    h.now += RouterConfig::default().idle_timeout;
    h.frame(1, ClientFrame::Ping { req: ReqId(51) });
    h.router.handle_timeout(h.now);
    assert_eq!(presence(&h.drain(), 1), vec![("bob".into(), false)]);
    // Unwatched: no more news.
    let req = h.next_req();
    let out = h.frame(
        1,
        ClientFrame::Unwatch {
            req,
            peer: peer("bob"),
        },
    );
    assert_eq!(answer(&out, 1), ServerFrame::Ok { req });
    assert!(presence(&h.online(5, "bob"), 1).is_empty());
}

#[test]
fn watches_end_with_the_watching_connection_and_are_bounded() {
    let mut h = Harness::with(RouterConfig {
        max_watches: 2,
        ..RouterConfig::default()
    });
    for (conn, name) in [(1, "alice"), (2, "bob"), (3, "carol"), (4, "dave")] {
        h.online(conn, name);
    }
    h.watch(1, "bob");
    h.watch(1, "carol");
    assert_eq!(
        presence(&h.watch(1, "carol"), 1),
        vec![("carol".into(), true)],
        "again: no new slot"
    );
    assert_eq!(errors(&h.watch(1, "dave")), vec![ErrorCode::TooManyWatches]);
    assert_eq!(errors(&h.watch(1, "nobody")), vec![ErrorCode::UnknownRecipient]);
    assert_eq!(h.router.stats().watches, 2);
    // alice's connection ends, and its watches with it; a new session of
    // hers watches nothing yet.
    h.router.handle(h.now, RouterInput::Disconnected(ConnId(1)));
    assert_eq!(h.router.stats().watches, 0);
    h.online(5, "alice");
    h.router.handle(h.now, RouterInput::Disconnected(ConnId(2)));
    let out = h.drain();
    assert!(presence(&out, 5).is_empty());
    assert!(
        to(&out, 1).is_empty(),
        "news for a connection that is gone: {out:?}"
    );
    assert_eq!(presence(&h.watch(5, "dave"), 5), vec![("dave".into(), true)]);
}

#[test]
fn members_online_hear_of_joins_and_leaves() {
    let mut h = Harness::new();
    for (conn, name) in [(1, "alice"), (2, "bob"), (3, "carol")] {
        h.online(conn, name);
    }
    h.group_op(1, create, "devs");
    h.group_op(3, join, "devs");
    let out = h.group_op(2, join, "devs");
    let membership = |out: &[RouterOutput], conn: u64| -> Vec<(String, bool)> {
        to(out, conn)
            .into_iter()
            .filter_map(|f| match f {
                ServerFrame::Membership { peer, joined, .. } => Some((peer.to_string(), joined)),
                _ => None,
            })
            .collect()
    };
    assert_eq!(membership(&out, 1), vec![("bob".into(), true)]);
    assert_eq!(membership(&out, 3), vec![("bob".into(), true)]);
    assert!(membership(&out, 2).is_empty(), "the joiner gets its ok only");
    assert!(
        membership(&h.group_op(2, join, "devs"), 1).is_empty(),
        "a repeated join changes nothing"
    );
    h.router.handle(h.now, RouterInput::Disconnected(ConnId(3)));
    let out = h.group_op(2, leave, "devs");
    assert_eq!(membership(&out, 1), vec![("bob".into(), false)]);
}
