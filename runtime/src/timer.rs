//! A machine's one timer, kept across loop iterations: re-armed only when
//! the machine's next deadline changes, instead of a new `Sleep` (and a new
//! timer-wheel entry) for every event the driver handles.

use std::pin::Pin;

use tokio::time::{Instant, Sleep};

/// Sleeps until `deadline`, or forever when there is none: for rare
/// deadlines, where a new `Sleep` each time costs nothing that matters.
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Fires at the deadline it was last [`set`](Timer::set) to.
#[derive(Debug)]
pub(crate) struct Timer {
    sleep: Pin<Box<Sleep>>,
    armed: Option<Instant>,
}

impl Timer {
    /// An unarmed timer.
    pub(crate) fn new() -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep_until(Instant::now())),
            armed: None,
        }
    }

    /// Arms the timer for `deadline`, or disarms it with `None`.
    pub(crate) fn set(&mut self, deadline: Option<Instant>) {
        if deadline != self.armed {
            if let Some(deadline) = deadline {
                self.sleep.as_mut().reset(deadline);
            }
            self.armed = deadline;
        }
    }

    /// Completes when the armed deadline passes (never, while unarmed), and
    /// disarms the timer.
    pub(crate) async fn fired(&mut self) {
        if self.armed.is_none() {
            return std::future::pending().await;
        }
        self.sleep.as_mut().await;
        self.armed = None;
    }
}
