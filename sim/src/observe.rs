//! What the simulation sees of the cluster from the outside: the events the
//! drivers log under PeerLink's `tracing` targets (commits, configurations,
//! checkpoints), captured as data while every log line also goes into the
//! trace.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use peerlink_core::ids::{Epoch, Lsn, ReplicaId};
use peerlink_runtime::rm_driver::CONFIG_TARGET;
use peerlink_runtime::router_driver::{CHECKPOINT_TARGET, COMMIT_TARGET, ROLE_TARGET};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

use crate::checker::{Commit, Step};

/// One cluster event, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterEvent {
    /// A router was promoted, or committed as primary.
    Commit(Commit),
    /// The replica manager saved a configuration with this primary.
    Config {
        /// The configuration's epoch.
        epoch: Epoch,
        /// Its primary, if any.
        primary: Option<String>,
    },
    /// A primary sent a follower a checkpoint.
    Checkpoint,
    /// A router could not start from what its disk holds.
    Unrecoverable {
        /// The router.
        router: String,
        /// Why.
        error: String,
    },
}

/// The events captured so far, shared between the capturing layer and the
/// fault injector.
#[derive(Debug, Clone, Default)]
pub struct Observed(Arc<Mutex<Vec<ClusterEvent>>>);

impl Observed {
    /// Every event captured so far.
    pub fn events(&self) -> Vec<ClusterEvent> {
        self.0.lock().expect("observer poisoned").clone()
    }

    /// Whether nothing was captured yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many events were captured so far.
    pub fn len(&self) -> usize {
        self.0.lock().expect("observer poisoned").len()
    }

    /// The event at `index`, if captured.
    pub fn get(&self, index: usize) -> Option<ClusterEvent> {
        self.0.lock().expect("observer poisoned").get(index).cloned()
    }

    /// Records that `router` could not start from its disk.
    pub fn unrecoverable(&self, router: &str, error: String) {
        let event = ClusterEvent::Unrecoverable {
            router: router.to_owned(),
            error,
        };
        self.0.lock().expect("observer poisoned").push(event);
    }

    /// The primary of the newest configuration saved, if any.
    pub fn primary(&self) -> Option<String> {
        self.events().into_iter().rev().find_map(|e| match e {
            ClusterEvent::Config { primary, .. } => Some(primary),
            _ => None,
        })?
    }
}

/// A `tracing` layer that turns PeerLink's structured events into
/// [`ClusterEvent`]s.
#[derive(Debug, Clone)]
pub struct Capture(pub Observed);

#[derive(Default)]
struct Fields {
    router: Option<String>,
    epoch: Option<u64>,
    lsn: Option<u64>,
    backups: Option<u64>,
    min_backups: Option<u64>,
    primary: Option<String>,
}

impl Visit for Fields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "epoch" => self.epoch = Some(value),
            "lsn" => self.lsn = Some(value),
            "backups" => self.backups = Some(value),
            "min_backups" => self.min_backups = Some(value),
            _ => {}
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "router" {
            self.router = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        let text = format!("{value:?}");
        match field.name() {
            "router" => self.router = Some(text),
            // `Some(r1)` or `None`.
            "primary" => {
                self.primary = text
                    .strip_prefix("Some(")
                    .and_then(|t| t.strip_suffix(')'))
                    .map(str::to_owned)
            }
            _ => {}
        }
    }
}

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let target = event.metadata().target();
        if ![COMMIT_TARGET, ROLE_TARGET, CONFIG_TARGET, CHECKPOINT_TARGET].contains(&target) {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let captured = if target == COMMIT_TARGET || target == ROLE_TARGET {
            // The commit checker judges what it captures here: an event it
            // cannot read must stop the run, not vanish from the trace.
            let (Some(router), Some(epoch), Some(lsn)) = (fields.router, fields.epoch, fields.lsn) else {
                panic!("a {target} event without router, epoch and lsn: {event:?}");
            };
            let router = ReplicaId::new(&router)
                .unwrap_or_else(|e| panic!("a {target} event names router {router:?}: {e}"));
            let step = if target == ROLE_TARGET {
                Step::Promoted
            } else {
                Step::Committed
            };
            let count = |n: Option<u64>| usize::try_from(n.unwrap_or_default()).unwrap_or(usize::MAX);
            ClusterEvent::Commit(Commit {
                router,
                step,
                epoch: Epoch(epoch),
                lsn: Lsn(lsn),
                backups: (count(fields.backups), count(fields.min_backups)),
            })
        } else if target == CONFIG_TARGET {
            ClusterEvent::Config {
                epoch: Epoch(fields.epoch.unwrap_or_default()),
                primary: fields.primary,
            }
        } else {
            ClusterEvent::Checkpoint
        };
        self.0 .0.lock().expect("observer poisoned").push(captured);
    }
}
