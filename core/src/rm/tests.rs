use std::time::Duration;

use super::*;
use crate::testing::{drain, epoch};

fn id(s: &str) -> ReplicaId {
    ReplicaId::new(s).unwrap()
}

struct Harness {
    rm: ReplicaManager,
    now: Instant,
}

impl Harness {
    fn new() -> Self {
        let now = epoch();
        Self {
            rm: ReplicaManager::new(RmConfig::default(), Configuration::default(), now),
            now,
        }
    }

    /// Sends a heartbeat from router `name` on connection `conn`, persists
    /// whatever the RM asks to, and returns the configurations it sent.
    fn beat(&mut self, conn: u64, name: &str, incarnation: u64, lsn: u64, may_lead: bool) -> Vec<RmOutput> {
        self.beat_with_state(
            conn,
            name,
            Life {
                incarnation,
                state_id: 0,
            },
            lsn,
            may_lead,
        )
    }

    /// [`Harness::beat`] from a router whose state lives on storage
    /// `life.state_id`.
    fn beat_with_state(
        &mut self,
        conn: u64,
        name: &str,
        life: Life,
        lsn: u64,
        may_lead: bool,
    ) -> Vec<RmOutput> {
        let Life {
            incarnation,
            state_id,
        } = life;
        self.rm.handle(
            self.now,
            RmInput::Connected {
                conn: ConnId(conn),
                id: Some(id(name)),
            },
        );
        let request = RmRequest::Heartbeat {
            beat: 1,
            id: id(name),
            addr: format!("{name}:1"),
            cluster_addr: format!("{name}:2"),
            incarnation,
            state_id,
            epoch: Epoch(0),
            lsn: Lsn(lsn),
            may_lead,
        };
        self.request(conn, request)
    }

    fn request(&mut self, conn: u64, request: RmRequest) -> Vec<RmOutput> {
        self.rm.handle(self.now, RmInput::Request(ConnId(conn), request));
        self.settle()
    }

    /// Drains outputs, acknowledging every persist at once.
    fn settle(&mut self) -> Vec<RmOutput> {
        let mut all = Vec::new();
        loop {
            let out = drain(&mut self.rm);
            if out.is_empty() {
                return all;
            }
            for o in &out {
                if let RmOutput::Persist(config) = o {
                    self.rm.handle(self.now, RmInput::Persisted(config.epoch));
                }
            }
            all.extend(out);
        }
    }

    fn config(&self) -> &Configuration {
        self.rm.configuration()
    }

    fn names(members: &[Member]) -> Vec<&str> {
        members.iter().map(|m| m.id.as_str()).collect()
    }

    /// r1 primary, r2 and r3 backups, at the returned epoch.
    fn three_routers() -> Self {
        let mut h = Self::new();
        h.beat(1, "r1", 11, 0, true);
        h.beat(2, "r2", 22, 0, true);
        h.beat(3, "r3", 33, 0, true);
        for backup in ["r2", "r3"] {
            let epoch = h.config().epoch;
            h.request(
                1,
                RmRequest::AddBackup {
                    id: id("r1"),
                    epoch,
                    backup: id(backup),
                },
            );
        }
        assert_eq!(Self::names(&h.config().backups), vec!["r2", "r3"]);
        h
    }
}

#[test]
fn the_first_router_leads_and_a_configuration_is_announced_only_once_persisted() {
    let mut h = Harness::new();
    h.rm.handle(
        h.now,
        RmInput::Connected {
            conn: ConnId(1),
            id: Some(id("r1")),
        },
    );
    let request = RmRequest::Heartbeat {
        beat: 1,
        id: id("r1"),
        addr: "r1:1".into(),
        cluster_addr: "r1:2".into(),
        incarnation: 1,
        state_id: 0,
        epoch: Epoch(0),
        lsn: Lsn(0),
        may_lead: true,
    };
    h.rm.handle(h.now, RmInput::Request(ConnId(1), request));
    let out = drain(&mut h.rm);
    let proposed = match &out[0] {
        RmOutput::Persist(config) => config.clone(),
        other => panic!("expected a persist first, got {other:?}"),
    };
    assert_eq!(proposed.epoch, Epoch(1));
    assert!(proposed.is_primary(&id("r1")));
    assert!(
        matches!(&out[1], RmOutput::Send(_, RmReply::Heard { config, beat: 1 }) if config.epoch == Epoch(0)),
        "the unpersisted configuration is not announced: {out:?}"
    );
    h.rm.handle(h.now, RmInput::Persisted(Epoch(1)));
    let out = drain(&mut h.rm);
    assert!(
        matches!(&out[..], [RmOutput::Send(ConnId(1), RmReply::Config { config })] if config.epoch == Epoch(1))
    );
}

#[test]
fn newcomers_are_candidates_until_the_primary_adds_them() {
    let mut h = Harness::new();
    h.beat(1, "r1", 1, 0, true);
    h.beat(2, "r2", 2, 0, true);
    assert_eq!(Harness::names(&h.config().candidates), vec!["r2"]);
    let epoch = h.config().epoch;

    let out = h.request(
        2,
        RmRequest::AddBackup {
            id: id("r2"),
            epoch,
            backup: id("r2"),
        },
    );
    assert!(out.iter().any(|o| matches!(
        o,
        RmOutput::Send(
            _,
            RmReply::Error {
                code: ErrorCode::NotPrimary,
                ..
            }
        )
    )));
    let stale = Epoch(epoch.0 - 1);
    let out = h.request(
        1,
        RmRequest::AddBackup {
            id: id("r1"),
            epoch: stale,
            backup: id("r2"),
        },
    );
    assert!(out.iter().any(|o| matches!(
        o,
        RmOutput::Send(
            _,
            RmReply::Error {
                code: ErrorCode::StaleEpoch,
                ..
            }
        )
    )));
    assert_eq!(h.config().epoch, epoch);

    h.request(
        1,
        RmRequest::AddBackup {
            id: id("r1"),
            epoch,
            backup: id("r2"),
        },
    );
    assert_eq!(Harness::names(&h.config().backups), vec!["r2"]);
    assert!(h.config().candidates.is_empty());
    assert_eq!(h.config().epoch, epoch.next());
}

#[test]
fn a_router_that_may_not_lead_waits_as_a_candidate() {
    let mut h = Harness::new();
    h.beat(1, "r1", 1, 0, false);
    assert_eq!(h.config().primary, None);
    assert_eq!(Harness::names(&h.config().candidates), vec!["r1"]);
}

#[test]
fn a_silent_primary_is_replaced_by_the_most_up_to_date_live_backup() {
    let mut h = Harness::three_routers();
    let before = h.config().epoch;
    h.now += Duration::from_millis(300);
    h.beat(2, "r2", 22, 40, true);
    h.beat(3, "r3", 33, 42, true);
    let deadline = h.rm.poll_timeout().expect("a failover is armed");
    assert_eq!(deadline, epoch_of(&h) + Duration::from_millis(500));
    h.now = deadline;
    h.rm.handle_timeout(h.now);
    h.settle();
    let config = h.config();
    assert!(config.is_primary(&id("r3")), "r3 has the highest LSN: {config:?}");
    assert_eq!(Harness::names(&config.backups), vec!["r2"]);
    assert_eq!(Harness::names(&config.candidates), vec!["r1"]);
    assert_eq!(config.epoch, before.next());
}

#[test]
fn unheard_backups_stay_backups_while_the_new_primary_is_below_the_minimum() {
    // r1 (primary) and r2 fall silent; only r3 is heard, and takes over.
    let mut h = Harness::three_routers();
    h.now += Duration::from_millis(300);
    h.beat(3, "r3", 33, 42, true);
    h.now = h.rm.poll_timeout().expect("a failover is armed");
    h.rm.handle_timeout(h.now);
    h.settle();
    assert!(h.config().is_primary(&id("r3")));
    assert_eq!(
        Harness::names(&h.config().backups),
        vec!["r2"],
        "r2 holds every committed change, and r3 cannot commit without a backup"
    );
    // r3 dies and comes back empty; r2 is heard again and takes over, where
    // demoting it would have left no router that may be promoted.
    h.now += Duration::from_millis(100);
    h.beat(3, "r3", 34, 0, true);
    h.beat(2, "r2", 22, 40, true);
    let config = h.config();
    assert!(config.is_primary(&id("r2")), "{config:?}");
}

/// When the harness's routers first checked in.
fn epoch_of(h: &Harness) -> Instant {
    h.now - Duration::from_millis(300)
}

#[test]
fn with_no_live_backup_nothing_is_promoted_and_no_timer_spins() {
    let mut h = Harness::three_routers();
    h.now += Duration::from_secs(5);
    assert_eq!(
        h.rm.poll_timeout(),
        None,
        "every backup is as silent as the primary"
    );
    h.rm.handle_timeout(h.now);
    assert!(h.settle().is_empty());
    assert!(h.config().is_primary(&id("r1")));
}

#[test]
fn a_restarted_primary_is_replaced_at_once_and_rejoins_as_a_candidate() {
    let mut h = Harness::three_routers();
    h.beat(2, "r2", 22, 5, true);
    h.beat(3, "r3", 33, 5, true);
    h.beat(4, "r1", 99, 0, true);
    let config = h.config();
    assert!(config.is_primary(&id("r2")), "{config:?}");
    assert!(config.candidates.iter().any(|m| m.id == id("r1")));
}

#[test]
fn a_restarted_backup_drops_to_candidate() {
    let mut h = Harness::three_routers();
    h.beat(5, "r3", 77, 0, true);
    assert_eq!(Harness::names(&h.config().backups), vec!["r2"]);
    assert_eq!(Harness::names(&h.config().candidates), vec!["r3"]);
}

#[test]
fn only_the_current_primary_removes_a_backup() {
    let mut h = Harness::three_routers();
    let epoch = h.config().epoch;
    h.request(
        2,
        RmRequest::RemoveBackup {
            id: id("r2"),
            epoch,
            backup: id("r3"),
        },
    );
    assert_eq!(h.config().epoch, epoch);
    h.request(
        1,
        RmRequest::RemoveBackup {
            id: id("r1"),
            epoch: Epoch(1),
            backup: id("r3"),
        },
    );
    assert_eq!(h.config().epoch, epoch);
    h.request(
        1,
        RmRequest::RemoveBackup {
            id: id("r1"),
            epoch,
            backup: id("r3"),
        },
    );
    assert_eq!(Harness::names(&h.config().backups), vec!["r2"]);
    assert_eq!(h.config().epoch, epoch.next());
}

#[test]
fn a_restored_rm_keeps_its_configuration_and_gives_members_time() {
    let h = Harness::three_routers();
    let saved = h.config().clone();
    let now = h.now + Duration::from_secs(60);
    let mut rm = ReplicaManager::new(RmConfig::default(), saved.clone(), now);
    assert_eq!(rm.configuration(), &saved);
    assert_eq!(
        rm.poll_timeout(),
        None,
        "backups and primary share the same grace"
    );
    rm.handle(
        now,
        RmInput::Connected {
            conn: ConnId(1),
            id: Some(id("r2")),
        },
    );
    // A backup is promotable for half the failure timeout after it is
    // heard, so one heard 300 ms in covers the primary's deadline.
    rm.handle(
        now + Duration::from_millis(300),
        RmInput::Request(
            ConnId(1),
            RmRequest::Heartbeat {
                beat: 1,
                id: id("r2"),
                addr: "r2:1".into(),
                cluster_addr: "r2:2".into(),
                incarnation: 22,
                state_id: 0,
                epoch: saved.epoch,
                lsn: Lsn(9),
                may_lead: true,
            },
        ),
    );
    assert_eq!(rm.poll_timeout(), Some(now + Duration::from_millis(500)));
    let out = drain(&mut rm);
    assert!(
        !out.iter().any(|o| matches!(o, RmOutput::Persist(_))),
        "a member's first heartbeat after a restart is not a restart"
    );
}

#[test]
fn status_reports_every_member() {
    let mut h = Harness::three_routers();
    h.rm.handle(
        h.now,
        RmInput::Connected {
            conn: ConnId(9),
            id: None,
        },
    );
    let out = h.request(
        9,
        RmRequest::Status {
            req: crate::ids::ReqId(5),
        },
    );
    let Some(RmOutput::Send(_, RmReply::Status { members, .. })) = out.last() else {
        panic!("{out:?}")
    };
    let roles: Vec<(&str, &str)> = members.iter().map(|m| (m.id.as_str(), m.role.as_str())).collect();
    assert_eq!(roles, vec![("r1", "primary"), ("r2", "backup"), ("r3", "backup")]);
}

mod properties {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Beat {
            router: usize,
            lsn: u64,
            restarted: bool,
        },
        Add {
            by: usize,
            backup: usize,
            stale: bool,
        },
        Remove {
            by: usize,
            backup: usize,
            stale: bool,
        },
        Persist,
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (0..3usize, 0..50u64, prop::bool::weighted(0.1))
                .prop_map(|(router, lsn, restarted)| Op::Beat { router, lsn, restarted }),
            2 => (0..3usize, 0..3usize, any::<bool>()).prop_map(|(by, backup, stale)| Op::Add { by, backup, stale }),
            1 => (0..3usize, 0..3usize, any::<bool>()).prop_map(|(by, backup, stale)| Op::Remove { by, backup, stale }),
            3 => Just(Op::Persist),
            2 => (0..800u64).prop_map(Op::Advance),
        ]
    }

    fn names(config: &Configuration) -> Vec<ReplicaId> {
        config
            .primary
            .iter()
            .chain(&config.backups)
            .chain(&config.candidates)
            .map(|m| m.id.clone())
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Epochs only grow; a configuration is announced only once persisted;
        /// nobody holds two roles; a new primary was a backup of the
        /// configuration decided just before (or the cluster was empty).
        #[test]
        fn configurations_are_safe(ops in prop::collection::vec(op(), 0..150)) {
            let mut now = epoch();
            let mut rm = ReplicaManager::new(RmConfig::default(), Configuration::default(), now);
            let mut incarnations = [1u64, 2, 3];
            let mut unpersisted: Vec<Epoch> = Vec::new();
            let mut persisted: BTreeSet<Epoch> = BTreeSet::from([Epoch(0)]);
            let mut announced = rm.configuration().clone();
            // Every configuration the RM decided on, announced or not.
            let mut decided: BTreeMap<Epoch, Configuration> = BTreeMap::from([(Epoch(0), announced.clone())]);
            for n in 0..3u64 {
                rm.handle(now, RmInput::Connected { conn: ConnId(n), id: Some(id(&format!("r{n}"))) });
            }
            for op in ops {
                match op {
                    Op::Beat { router, lsn, restarted } => {
                        if restarted {
                            incarnations[router] += 10;
                        }
                        let request = RmRequest::Heartbeat {
                            beat: 1,
                            id: id(&format!("r{router}")),
                            addr: format!("r{router}:1"),
                            cluster_addr: format!("r{router}:2"),
                            incarnation: incarnations[router],
                            state_id: 0,
                            epoch: announced.epoch,
                            lsn: Lsn(lsn),
                            may_lead: true,
                        };
                        rm.handle(now, RmInput::Request(ConnId(router as u64), request));
                    }
                    Op::Add { by, backup, stale } | Op::Remove { by, backup, stale } => {
                        let epoch = if stale { Epoch(announced.epoch.0.saturating_sub(1)) } else { announced.epoch };
                        let (id_by, backup) = (id(&format!("r{by}")), id(&format!("r{backup}")));
                        let request = if matches!(op, Op::Add { .. }) {
                            RmRequest::AddBackup { id: id_by, epoch, backup }
                        } else {
                            RmRequest::RemoveBackup { id: id_by, epoch, backup }
                        };
                        rm.handle(now, RmInput::Request(ConnId(by as u64), request));
                    }
                    Op::Persist => {
                        if let Some(epoch) = unpersisted.pop() {
                            persisted.insert(epoch);
                            rm.handle(now, RmInput::Persisted(epoch));
                        }
                    }
                    Op::Advance(ms) => {
                        now += Duration::from_millis(ms);
                        if rm.poll_timeout().is_some_and(|t| t <= now) {
                            rm.handle_timeout(now);
                        }
                    }
                }
                for output in drain(&mut rm) {
                    match output {
                        RmOutput::Persist(config) => {
                            prop_assert!(config.epoch > announced.epoch);
                            let previous = &decided[&Epoch(config.epoch.0 - 1)];
                            let new_primary = config.primary.as_ref().map(|m| &m.id);
                            if new_primary != previous.primary.as_ref().map(|m| &m.id) {
                                if let Some(p) = new_primary {
                                    let bootstrap = previous.primary.is_none() && previous.backups.is_empty();
                                    prop_assert!(bootstrap || previous.is_backup(p),
                                        "{:?} promoted without being a backup of {:?}", p, previous);
                                }
                            }
                            unpersisted.push(config.epoch);
                            decided.insert(config.epoch, config);
                        }
                        RmOutput::Send(_, RmReply::Config { config } | RmReply::Heard { config, .. }) => {
                            prop_assert!(persisted.contains(&config.epoch), "announced unpersisted {:?}", config.epoch);
                            prop_assert!(config.epoch >= announced.epoch, "epoch went back");
                            let all = names(&config);
                            let unique: BTreeSet<&ReplicaId> = all.iter().collect();
                            prop_assert_eq!(unique.len(), all.len(), "a router holds two roles: {:?}", config);
                            announced = config;
                        }
                        RmOutput::Send(..) => {}
                    }
                }
            }
        }
    }
}

#[test]
fn the_last_backup_is_never_removed() {
    let mut h = Harness::three_routers();
    for backup in ["r2", "r3"] {
        let epoch = h.config().epoch;
        h.request(
            1,
            RmRequest::RemoveBackup {
                id: id("r1"),
                epoch,
                backup: id(backup),
            },
        );
    }
    assert_eq!(
        Harness::names(&h.config().backups),
        vec!["r3"],
        "r2 went, r3 stays"
    );
}

#[test]
fn a_primary_that_restarted_while_the_rm_was_down_is_replaced() {
    let h = Harness::three_routers();
    let saved = h.config().clone();
    let mut restarted = Harness {
        rm: ReplicaManager::new(RmConfig::default(), saved, h.now),
        now: h.now,
    };
    restarted.beat(2, "r2", 22, 5, true);
    restarted.beat(3, "r3", 33, 5, true);
    // r1 restarted (new incarnation, empty state) while the RM was down.
    restarted.beat(1, "r1", 99, 0, true);
    assert!(
        !restarted.config().is_primary(&id("r1")),
        "{:?}",
        restarted.config()
    );
}

#[test]
fn a_restarted_primary_with_no_backup_in_reach_loses_its_role_until_a_backup_checks_in() {
    let mut h = Harness::three_routers();
    // The backups are cut off from the RM; the primary restarts.
    h.now += Duration::from_secs(2);
    h.beat(1, "r1", 11, 9, true);
    let out = h.beat(4, "r1", 99, 0, true);
    let config = h.config().clone();
    assert_eq!(config.primary, None, "never left to serve empty: {config:?}");
    assert_eq!(
        Harness::names(&config.backups),
        vec!["r2", "r3"],
        "still promotable"
    );
    let r1 = config
        .candidates
        .iter()
        .find(|m| m.id == id("r1"))
        .expect("r1 is a candidate");
    assert_eq!(r1.incarnation, 99, "its new life is recorded");
    assert!(
        !out.iter().any(|o| matches!(
            o,
            RmOutput::Send(_, RmReply::Config { config } | RmReply::Heard { config, .. })
                if config.is_primary(&id("r1")) && config.find(&id("r1")).unwrap().incarnation == 99
        )),
        "r1 is never named primary in its new life: {out:?}"
    );
    // A backup checks in again: it takes the role at once.
    h.beat(3, "r3", 33, 9, true);
    assert!(h.config().is_primary(&id("r3")), "{:?}", h.config());
    assert!(!h.config().is_primary(&id("r1")));
}

#[test]
fn a_restarted_candidate_is_recorded_with_its_new_incarnation() {
    let mut h = Harness::new();
    h.beat(1, "r1", 11, 0, true);
    h.beat(2, "r2", 22, 0, true);
    h.beat(5, "r2", 23, 0, true);
    let r2 = h.config().find(&id("r2")).cloned().expect("r2 is known");
    assert_eq!(r2.incarnation, 23);
    assert_eq!(Harness::names(&h.config().candidates), vec!["r2"]);
}

#[test]
fn every_configuration_carries_the_minimum_and_a_restart_with_a_new_one_announces_it() {
    let mut h = Harness::three_routers();
    assert_eq!(h.config().min_backups, 1);
    let saved = h.config().clone();
    let config = RmConfig {
        min_backups: 2,
        ..RmConfig::default()
    };
    let mut rm = ReplicaManager::new(config, saved.clone(), h.now);
    let out = drain(&mut rm);
    let [RmOutput::Persist(next)] = out.as_slice() else {
        panic!("expected one persist, got {out:?}");
    };
    assert_eq!(next.min_backups, 2);
    assert_eq!(next.epoch, saved.epoch.next());
    h.rm = rm;
    h.rm.handle(h.now, RmInput::Persisted(next.epoch));
    assert_eq!(h.config().min_backups, 2);
}

#[test]
fn a_backup_not_heard_for_half_the_failure_timeout_is_not_promoted() {
    let mut h = Harness::three_routers();
    h.now += Duration::from_millis(200);
    h.beat(2, "r2", 22, 50, true);
    h.now += Duration::from_millis(200);
    h.beat(3, "r3", 33, 10, true);
    // r1 was last heard 400 ms ago, r2 200 ms ago, r3 just now.
    h.now += Duration::from_millis(100);
    h.rm.handle_timeout(h.now);
    h.settle();
    let config = h.config();
    assert!(
        config.is_primary(&id("r3")),
        "r2 has the higher LSN but was last heard 300 ms ago: {config:?}"
    );
}

#[test]
fn a_primary_that_resigns_is_replaced_by_a_backup_the_rm_hears() {
    let mut h = Harness::three_routers();
    h.now += Duration::from_millis(100);
    h.beat(2, "r2", 22, 7, true);
    h.beat(3, "r3", 33, 8, true);
    let epoch = h.config().epoch;
    h.request(1, RmRequest::Resign { id: id("r2"), epoch });
    assert!(h.config().is_primary(&id("r1")), "only the primary may resign");
    h.request(1, RmRequest::Resign { id: id("r1"), epoch });
    let config = h.config();
    assert!(config.is_primary(&id("r3")), "{config:?}");
    assert!(config.candidates.iter().any(|m| m.id == id("r1")));
}

#[test]
fn a_primary_resigning_with_no_backup_in_reach_stays() {
    let mut h = Harness::three_routers();
    h.now += Duration::from_secs(3);
    h.beat(1, "r1", 11, 9, true);
    let epoch = h.config().epoch;
    h.request(1, RmRequest::Resign { id: id("r1"), epoch });
    assert!(h.config().is_primary(&id("r1")), "{:?}", h.config());
}

/// What a connection that proved to be `proven` gets for `request`, and
/// whether the configuration changed.
fn answer_as(proven: Option<&str>, request: RmRequest) -> (Vec<RmOutput>, bool) {
    let mut h = Harness::three_routers();
    let before = h.config().clone();
    h.rm.handle(
        h.now,
        RmInput::Connected {
            conn: ConnId(9),
            id: proven.map(id),
        },
    );
    let out = h.request(9, request);
    let changed = *h.config() != before;
    (out, changed)
}

fn refused_with(out: &[RmOutput], code: ErrorCode) -> bool {
    out.iter()
        .any(|o| matches!(o, RmOutput::Send(ConnId(9), RmReply::Error { code: c, .. }) if *c == code))
}

#[test]
fn a_request_naming_another_router_is_refused_and_changes_nothing() {
    let epoch = Harness::three_routers().config().epoch;
    let forged = [
        RmRequest::Heartbeat {
            beat: 1,
            id: id("r1"),
            addr: "evil:1".into(),
            cluster_addr: "evil:2".into(),
            incarnation: 666,
            state_id: 0,
            epoch,
            lsn: Lsn(0),
            may_lead: true,
        },
        RmRequest::AddBackup {
            id: id("r1"),
            epoch,
            backup: id("r4"),
        },
        RmRequest::RemoveBackup {
            id: id("r1"),
            epoch,
            backup: id("r2"),
        },
        RmRequest::Resign { id: id("r1"), epoch },
    ];
    for proven in [Some("r2"), Some("evil"), None] {
        for request in forged.clone() {
            let (out, changed) = answer_as(proven, request.clone());
            assert!(
                refused_with(&out, ErrorCode::Unauthorized),
                "{proven:?} {request:?}: {out:?}"
            );
            assert!(!changed, "{proven:?} {request:?} changed the configuration");
        }
    }
    // The same heartbeat from the connection that proved to be r1 is a
    // restart, as before.
    let (out, changed) = answer_as(Some("r1"), forged[0].clone());
    assert!(!refused_with(&out, ErrorCode::Unauthorized));
    assert!(changed);
}

#[test]
fn an_operators_tool_may_ask_for_the_status() {
    let (out, changed) = answer_as(
        None,
        RmRequest::Status {
            req: crate::ids::ReqId(1),
        },
    );
    assert!(out
        .iter()
        .any(|o| matches!(o, RmOutput::Send(ConnId(9), RmReply::Status { .. }))));
    assert!(!changed);
}

#[test]
fn addresses_are_stored_only_when_valid() {
    let bomb = format!("{}:1", "a".repeat(600_000));
    for (addr, cluster_addr) in [
        (bomb.as_str(), "r4:2"),
        ("r4:1", bomb.as_str()),
        ("r4", "r4:2"),
        ("r4:0", "r4:2"),
        ("r4:1", "r4:65536"),
        ("r 4:1", "r4:2"),
        ("[zz]:1", "r4:2"),
        (":1", "r4:2"),
    ] {
        let request = RmRequest::Heartbeat {
            beat: 1,
            id: id("r4"),
            addr: addr.into(),
            cluster_addr: cluster_addr.into(),
            incarnation: 44,
            state_id: 0,
            epoch: Epoch(0),
            lsn: Lsn(0),
            may_lead: false,
        };
        let (out, changed) = answer_as(Some("r4"), request);
        assert!(refused_with(&out, ErrorCode::BadFrame), "{:.40}: {out:?}", addr);
        assert!(!changed);
    }
    for good in ["10.0.0.4:8008", "[::1]:8008", "router-4.example.com:8008", "r4:1"] {
        let request = RmRequest::Heartbeat {
            beat: 1,
            id: id("r4"),
            addr: good.into(),
            cluster_addr: good.into(),
            incarnation: 44,
            state_id: 0,
            epoch: Epoch(0),
            lsn: Lsn(0),
            may_lead: false,
        };
        let (out, changed) = answer_as(Some("r4"), request);
        assert!(!refused_with(&out, ErrorCode::BadFrame), "{good}: {out:?}");
        assert!(changed, "{good} joins as a candidate");
    }
}

#[test]
fn a_member_that_moved_is_recorded_at_its_new_addresses() {
    let mut h = Harness::three_routers();
    let request = RmRequest::Heartbeat {
        beat: 2,
        id: id("r2"),
        addr: "r2:1".into(),
        cluster_addr: "r2:7".into(),
        incarnation: 22,
        state_id: 0,
        epoch: h.config().epoch,
        lsn: Lsn(0),
        may_lead: true,
    };
    h.request(2, request);
    let r2 = h.config().find(&id("r2")).unwrap();
    assert_eq!(r2.cluster_addr, "r2:7");
    assert!(
        h.config().is_backup(&id("r2")),
        "same incarnation: still a backup"
    );
}

#[test]
fn a_resigning_primary_stays_a_backup_while_its_successor_is_below_the_minimum() {
    // r1 is primary with r3 as its only backup (r2 was dropped).
    let mut h = Harness::three_routers();
    let epoch = h.config().epoch;
    h.request(
        1,
        RmRequest::RemoveBackup {
            id: id("r1"),
            epoch,
            backup: id("r2"),
        },
    );
    assert_eq!(Harness::names(&h.config().backups), vec!["r3"]);
    // r1 hears no backup and resigns; the RM hears r3 and promotes it.
    h.now += Duration::from_millis(100);
    h.beat(3, "r3", 33, 40, true);
    let epoch = h.config().epoch;
    h.request(1, RmRequest::Resign { id: id("r1"), epoch });
    assert!(h.config().is_primary(&id("r3")));
    assert_eq!(
        Harness::names(&h.config().backups),
        vec!["r1"],
        "r1 holds everything committed, and r3 cannot commit without a backup"
    );
    // r3 dies and comes back empty; r1 takes over again.
    h.now += Duration::from_millis(100);
    h.beat(1, "r1", 11, 40, true);
    h.beat(3, "r3", 34, 0, true);
    assert!(h.config().is_primary(&id("r1")), "{:?}", h.config());
}

#[test]
fn a_restarted_primary_is_never_kept_as_a_backup() {
    // r1 is primary with r3 as its only backup: its successor will be below
    // the minimum, and still r1, empty, must not count as a copy.
    let mut h = Harness::three_routers();
    let epoch = h.config().epoch;
    h.request(
        1,
        RmRequest::RemoveBackup {
            id: id("r1"),
            epoch,
            backup: id("r2"),
        },
    );
    h.now += Duration::from_millis(100);
    h.beat(3, "r3", 33, 40, true);
    h.beat(1, "r1", 12, 0, true);
    assert!(h.config().is_primary(&id("r3")));
    let config = h.config();
    assert!(
        !config.is_primary(&id("r1")) && !config.is_backup(&id("r1")),
        "{config:?}"
    );
}

/// The life of router `n` of [`durable_routers`]: incarnation `restarts`,
/// and storage `n` unless `new_disk`.
fn life(n: u64, restarts: u64, new_disk: bool) -> Life {
    Life {
        incarnation: n * 10 + restarts,
        state_id: if new_disk { n * 1000 } else { n * 100 },
    }
}

/// r1 primary, r2 and r3 backups, each with its state on storage.
fn durable_routers() -> Harness {
    let mut h = Harness::new();
    for n in 1..=3 {
        h.beat_with_state(n, &format!("r{n}"), life(n, 0, false), 0, true);
    }
    for backup in ["r2", "r3"] {
        let epoch = h.config().epoch;
        let request = RmRequest::AddBackup {
            id: id("r1"),
            epoch,
            backup: id(backup),
        };
        h.request(1, request);
    }
    assert_eq!(Harness::names(&h.config().backups), vec!["r2", "r3"]);
    assert_eq!(h.config().find(&id("r2")).map(|m| m.state_id), Some(200));
    h
}

#[test]
fn a_primary_back_with_its_state_is_named_again_in_a_new_epoch_when_it_is_furthest() {
    let mut h = durable_routers();
    h.now += Duration::from_millis(100);
    h.beat_with_state(2, "r2", life(2, 0, false), 5, true);
    h.beat_with_state(3, "r3", life(3, 0, false), 5, true);
    let before = h.config().epoch;
    h.beat_with_state(1, "r1", life(1, 1, false), 9, true);
    let config = h.config();
    assert!(config.epoch > before, "a restarted primary never keeps its epoch");
    assert!(config.is_primary(&id("r1")));
    assert_eq!(
        config.primary.as_ref().map(|m| m.incarnation),
        Some(11),
        "named as its new life"
    );
    assert_eq!(Harness::names(&config.backups), vec!["r2", "r3"]);
}

#[test]
fn a_primary_back_with_its_state_yields_to_a_backup_that_is_further() {
    let mut h = durable_routers();
    h.now += Duration::from_millis(100);
    h.beat_with_state(2, "r2", life(2, 0, false), 12, true);
    h.beat_with_state(3, "r3", life(3, 0, false), 5, true);
    h.beat_with_state(1, "r1", life(1, 1, false), 9, true);
    let config = h.config();
    assert!(config.is_primary(&id("r2")));
    assert!(!config.is_backup(&id("r1")), "the minimum is met without it");
    assert_eq!(Harness::names(&config.backups), vec!["r3"]);
}

#[test]
fn a_backup_back_with_its_state_stays_a_backup_and_one_without_it_does_not() {
    let mut h = durable_routers();
    h.beat_with_state(2, "r2", life(2, 1, false), 3, true);
    assert!(h.config().is_backup(&id("r2")), "it holds all it acknowledged");
    assert_eq!(h.config().find(&id("r2")).map(|m| m.incarnation), Some(21));
    h.beat_with_state(3, "r3", life(3, 1, true), 0, true);
    assert!(
        !h.config().is_backup(&id("r3")),
        "its storage is not the one it had"
    );
    assert!(h.config().candidates.iter().any(|m| m.id == id("r3")));
}

#[test]
fn after_every_router_and_the_rm_restart_the_cluster_serves_again_with_its_members() {
    let h = durable_routers();
    let saved = h.config().clone();
    let mut h = Harness {
        rm: ReplicaManager::new(RmConfig::default(), saved.clone(), h.now),
        now: h.now,
    };
    h.now += Duration::from_millis(300);
    h.beat_with_state(3, "r3", life(3, 1, false), 7, true);
    h.beat_with_state(1, "r1", life(1, 1, false), 7, true);
    h.beat_with_state(2, "r2", life(2, 1, false), 7, true);
    let config = h.config();
    assert!(config.epoch > saved.epoch);
    let primary = config.primary.as_ref().expect("a primary");
    assert!(
        primary.incarnation % 10 == 1,
        "the primary is named as its new life: {primary:?}"
    );
    let mut members: Vec<&str> = Harness::names(&config.backups);
    members.push(primary.id.as_str());
    members.sort_unstable();
    assert_eq!(
        members,
        vec!["r1", "r2", "r3"],
        "nobody lost its place: {config:?}"
    );
}
