//! Presence converges: once the world is healed and quiet, every watcher's
//! last presence news of each peer it watches says whether that peer is
//! online.
//!
//! The truth comes from the history: a peer is online from each `Register`
//! it issues until it goes `Offline`. A watcher is judged at its `Quiet`
//! mark, on the news it observed before it; a watcher with no such mark is
//! not judged (its run never became quiet).

use std::collections::BTreeMap;

use peerlink_core::client::{ClientEvent, Command, Query};
use peerlink_core::ids::PeerId;
use peerlink_core::testing::{History, What};

use super::Violation;

/// Checks presence convergence over `history`.
pub(super) fn check_presence(history: &History) -> Vec<Violation> {
    let mut violations = Vec::new();
    // Per peer, online or not, as its own records say.
    let mut online: BTreeMap<PeerId, bool> = BTreeMap::new();
    // Per watcher, the peers it watches and the last news of each.
    let mut news: BTreeMap<PeerId, BTreeMap<PeerId, Option<bool>>> = BTreeMap::new();
    for record in history {
        let me = &record.peer;
        match &record.what {
            What::Issued(Command::Register) => {
                online.insert(me.clone(), true);
            }
            What::Offline => {
                online.insert(me.clone(), false);
            }
            What::Issued(Command::Query(Query::Watch(peer))) => {
                news.entry(me.clone())
                    .or_default()
                    .entry(peer.clone())
                    .or_insert(None);
            }
            What::Issued(Command::Query(Query::Unwatch(peer))) => {
                if let Some(watched) = news.get_mut(me) {
                    watched.remove(peer);
                }
            }
            What::Observed(ClientEvent::Presence { peer, online }) => {
                if let Some(last) = news.get_mut(me).and_then(|w| w.get_mut(peer)) {
                    *last = Some(*online);
                }
            }
            What::Quiet => {
                for (peer, last) in news.get(me).into_iter().flatten() {
                    let truth = online.get(peer).copied().unwrap_or(false);
                    if *last != Some(truth) {
                        violations.push(Violation::PresenceWrong {
                            watcher: me.clone(),
                            peer: peer.clone(),
                            last: *last,
                            truth,
                        });
                    }
                }
            }
            _ => {}
        }
    }
    violations
}
