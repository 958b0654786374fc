//! Discovery and presence against a model. Random sequences of connects,
//! registrations, disconnects, group creations, joins and leaves on one
//! standalone router; after every step, every page of the peer directory
//! (walked with random page sizes) and of every group's members equals the
//! model's, and a watcher that watches every peer has, as its last presence
//! news of each, whether that peer has a session now.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use peerlink_core::ids::{ConnId, GroupName, PeerId, ReqId, Secret};
use peerlink_core::router::directory::Directory;
use peerlink_core::router::secrets::KdfParams;
use peerlink_core::router::{Router, RouterConfig, RouterInput, RouterOutput};
use peerlink_core::testing::epoch;
use peerlink_core::wire::directory::PeerEntry;
use peerlink_core::wire::{ClientFrame, ServerFrame};
use peerlink_core::Machine;
use proptest::prelude::*;

const PEERS: [&str; 6] = ["a", "ab", "abc", "b", "ba", "c"];
const GROUPS: [&str; 2] = ["g", "ga"];
/// The watcher, connected throughout, which watches every registered peer.
const WATCHER: &str = "w";
const WATCHER_CONN: ConnId = ConnId(1);

#[derive(Debug, Clone)]
enum Step {
    /// The peer connects (on a new connection) and registers.
    Online(usize),
    /// The peer's connection drops.
    Offline(usize),
    /// The peer's connection is timed out for silence.
    Silent(usize),
    Create(usize, usize),
    Join(usize, usize),
    Leave(usize, usize),
}

fn step() -> impl Strategy<Value = Step> {
    let p = 0..PEERS.len();
    let g = 0..GROUPS.len();
    prop_oneof![
        3 => p.clone().prop_map(Step::Online),
        2 => p.clone().prop_map(Step::Offline),
        1 => p.clone().prop_map(Step::Silent),
        1 => (p.clone(), g.clone()).prop_map(|(p, g)| Step::Create(p, g)),
        3 => (p.clone(), g.clone()).prop_map(|(p, g)| Step::Join(p, g)),
        2 => (p, g).prop_map(|(p, g)| Step::Leave(p, g)),
    ]
}

/// What the router should hold, kept by the simplest means.
#[derive(Default)]
struct Model {
    registered: BTreeSet<String>,
    /// Peers with a session, and its connection.
    online: BTreeMap<String, ConnId>,
    groups: BTreeMap<String, BTreeSet<String>>,
    creators: BTreeMap<String, String>,
}

struct Test {
    router: Router,
    now: Instant,
    next_conn: u64,
    next_req: u64,
    model: Model,
    /// The last presence news the watcher had of each peer.
    seen: BTreeMap<String, bool>,
    /// Frames to each connection since the last look.
    inbox: BTreeMap<ConnId, Vec<ServerFrame>>,
}

impl Test {
    fn new() -> Self {
        let config = RouterConfig {
            directory: Directory::Public,
            kdf: KdfParams::CHEAPEST,
            ..RouterConfig::default()
        };
        let now = epoch();
        let mut test = Self {
            router: Router::new(config, 1, now),
            now,
            next_conn: 2,
            next_req: 0,
            model: Model::default(),
            seen: BTreeMap::new(),
            inbox: BTreeMap::new(),
        };
        test.connect_and_register(WATCHER_CONN, WATCHER);
        test
    }

    fn input(&mut self, input: RouterInput) {
        self.router.handle(self.now, input);
        self.settle();
    }

    /// Runs every hash and storage job, and files every frame sent.
    fn settle(&mut self) {
        while let Some(output) = self.router.poll_output() {
            match output {
                RouterOutput::HashSecret(job) => {
                    let hash = job.run();
                    self.router
                        .handle(self.now, RouterInput::SecretHashed { job: job.job, hash });
                }
                RouterOutput::Persist { ticket, .. } => {
                    self.router.handle(self.now, RouterInput::Persisted { ticket });
                }
                RouterOutput::Send(conn, frame) => {
                    if conn == WATCHER_CONN {
                        if let ServerFrame::Presence { peer, online, .. } = &frame {
                            self.seen.insert(peer.to_string(), *online);
                        }
                    }
                    self.inbox.entry(conn).or_default().push(frame);
                }
                _ => {}
            }
        }
    }

    fn req(&mut self) -> ReqId {
        self.next_req += 1;
        ReqId(self.next_req)
    }

    /// Sends a request on `conn` and returns the frames it got back.
    fn ask(&mut self, conn: ConnId, frame: ClientFrame) -> Vec<ServerFrame> {
        self.inbox.remove(&conn);
        self.input(RouterInput::Frame(conn, frame));
        self.inbox.remove(&conn).unwrap_or_default()
    }

    fn connect_and_register(&mut self, conn: ConnId, name: &str) {
        let source = IpAddr::from([10, 0, 0, conn.0 as u8]);
        self.input(RouterInput::Connected { conn, source });
        let req = self.req();
        let frame = ClientFrame::Register {
            req,
            peer: PeerId::new(name).unwrap(),
            secret: Secret::new("s").unwrap(),
        };
        self.ask(conn, frame);
    }

    fn apply(&mut self, step: &Step) {
        match *step {
            Step::Online(p) => {
                let conn = ConnId(self.next_conn);
                self.next_conn += 1;
                self.connect_and_register(conn, PEERS[p]);
                self.model.registered.insert(PEERS[p].into());
                self.model.online.insert(PEERS[p].into(), conn);
                let req = self.req();
                let peer = PeerId::new(PEERS[p]).unwrap();
                self.ask(WATCHER_CONN, ClientFrame::Watch { req, peer });
            }
            Step::Offline(p) => {
                if let Some(conn) = self.model.online.remove(PEERS[p]) {
                    self.input(RouterInput::Disconnected(conn));
                }
            }
            Step::Silent(p) => {
                // Everyone else speaks; the peer does not, for the timeout.
                self.now += RouterConfig::default().idle_timeout;
                let others: Vec<ConnId> = self
                    .model
                    .online
                    .iter()
                    .filter(|(name, _)| name.as_str() != PEERS[p])
                    .map(|(_, conn)| *conn)
                    .chain([WATCHER_CONN])
                    .collect();
                for conn in others {
                    let req = self.req();
                    self.ask(conn, ClientFrame::Ping { req });
                }
                self.now += Duration::from_millis(1);
                self.router.handle_timeout(self.now);
                self.settle();
                self.model.online.remove(PEERS[p]);
            }
            Step::Create(p, g) | Step::Join(p, g) | Step::Leave(p, g) => {
                let Some(&conn) = self.model.online.get(PEERS[p]) else {
                    return;
                };
                let req = self.req();
                let group = GroupName::new(GROUPS[g]).unwrap();
                let (frame, exists) = match step {
                    Step::Create(..) => (ClientFrame::CreateGroup { req, group }, false),
                    Step::Join(..) => (ClientFrame::JoinGroup { req, group }, true),
                    _ => (ClientFrame::LeaveGroup { req, group }, true),
                };
                let answer = self.ask(conn, frame);
                let ok = answer.iter().any(|f| matches!(f, ServerFrame::Ok { .. }));
                let creator = self.model.creators.get(GROUPS[g]);
                let exists_before = creator.is_some();
                let want = match (exists, creator) {
                    (true, creator) => creator.is_some(),
                    (false, None) => true,
                    (false, Some(creator)) => creator == PEERS[p],
                };
                assert_eq!(ok, want, "{step:?}: {answer:?}");
                if !ok {
                    return;
                }
                if !exists {
                    self.model.creators.insert(GROUPS[g].into(), PEERS[p].into());
                }
                let members = self.model.groups.entry(GROUPS[g].into()).or_default();
                match step {
                    Step::Leave(..) => members.remove(PEERS[p]),
                    Step::Join(..) => members.insert(PEERS[p].into()),
                    // Creating a group again changes nothing, even for a
                    // creator who left it.
                    _ if exists_before => false,
                    _ => members.insert(PEERS[p].into()),
                };
            }
        }
    }

    /// Walks the whole directory with pages of `page` entries.
    fn directory(&mut self, page: u32) -> Vec<PeerEntry> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let req = self.req();
            let frame = ClientFrame::Peers {
                req,
                prefix: None,
                after: after.clone(),
                limit: Some(page),
            };
            let answer = self.ask(WATCHER_CONN, frame);
            let [ServerFrame::PeerList { peers, next, .. }] = &answer[..] else {
                panic!("not a page: {answer:?}");
            };
            assert!(peers.len() <= page as usize);
            all.extend(peers.iter().cloned());
            match next {
                Some(next) => after = Some(next.clone()),
                None => return all,
            }
        }
    }

    /// Walks a group's members, asked by a member, with pages of `page`.
    fn members(&mut self, group: &str, conn: ConnId, page: u32) -> Vec<PeerEntry> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let req = self.req();
            let frame = ClientFrame::Members {
                req,
                group: GroupName::new(group).unwrap(),
                after: after.clone(),
                limit: Some(page),
            };
            let answer = self.ask(conn, frame);
            let [ServerFrame::MemberList { members, next, .. }] = &answer[..] else {
                panic!("not a page: {answer:?}");
            };
            all.extend(members.iter().cloned());
            match next {
                Some(next) => after = Some(next.clone()),
                None => return all,
            }
        }
    }

    fn expected(&self, names: impl IntoIterator<Item = String>) -> Vec<PeerEntry> {
        names
            .into_iter()
            .map(|name| PeerEntry {
                online: name == WATCHER || self.model.online.contains_key(&name),
                id: PeerId::new(name).unwrap(),
            })
            .collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn listings_match_the_model_and_presence_converges(
        steps in proptest::collection::vec(step(), 1..60),
        page in 1u32..5,
    ) {
        let mut t = Test::new();
        for step in &steps {
            t.apply(step);
            let mut names = t.model.registered.clone();
            names.insert(WATCHER.into());
            let want = t.expected(names);
            prop_assert_eq!(t.directory(page), want, "after {:?}", step);
            let groups: Vec<(String, BTreeSet<String>)> =
                t.model.groups.iter().map(|(g, m)| (g.clone(), m.clone())).collect();
            for (group, members) in groups {
                let Some(conn) = members.iter().find_map(|m| t.model.online.get(m).copied()) else {
                    continue;
                };
                let want = t.expected(members.iter().cloned());
                prop_assert_eq!(t.members(&group, conn, page), want, "group {} after {:?}", group, step);
            }
            // Quiet now: the watcher's last news of each peer is the truth.
            for peer in &t.model.registered {
                let online = t.model.online.contains_key(peer);
                prop_assert_eq!(t.seen.get(peer).copied(), Some(online), "presence of {} after {:?}", peer, step);
            }
        }
    }
}
