//! What a simulation run leaves behind: the clients' history and a textual
//! trace of every event and log line, in simulated time.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use peerlink_core::ids::PeerId;
use peerlink_core::testing::{History, Record, What};

/// The outcome of one simulation run.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// What every client was asked and observed, in simulated order.
    pub history: History,
    /// One line per history record and per log line, with simulated times.
    pub lines: Vec<String>,
    /// How much simulated time the run took.
    pub simulated: std::time::Duration,
}

impl Trace {
    /// A stable 64-bit digest of the trace lines (FNV-1a), for comparing runs.
    pub fn digest(&self) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self.lines.iter().flat_map(|l| l.bytes().chain([b'\n'])) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash
    }
}

/// The shared recorder that client hosts append to during a run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Recorder {
    trace: Rc<RefCell<Trace>>,
    sents: Rc<Cell<usize>>,
}

impl Recorder {
    /// How many Sent events clients have reported so far.
    pub(crate) fn sent_count(&self) -> usize {
        self.sents.get()
    }

    /// Appends a line that is not a history record (a fault, the heal).
    pub(crate) fn note(&self, line: &str) {
        self.trace.borrow_mut().lines.push(line.to_owned());
    }

    /// Appends a record, stamped with the simulated time.
    pub(crate) fn record(&self, peer: &PeerId, what: What) {
        if matches!(
            what,
            What::Observed(peerlink_core::client::ClientEvent::Sent { .. })
        ) {
            self.sents.set(self.sents.get() + 1);
        }
        let elapsed = turmoil::sim_elapsed().unwrap_or_default();
        let mut trace = self.trace.borrow_mut();
        trace
            .lines
            .push(format!("{:>10.3}ms {peer} {what:?}", elapsed.as_secs_f64() * 1e3));
        trace.history.push(Record {
            peer: peer.clone(),
            what,
        });
    }

    /// Takes the trace out, merging in the captured log lines.
    pub(crate) fn finish(&self, logs: &LogCapture) -> Trace {
        let mut trace = self.trace.borrow().clone();
        let text = logs.0.lock().expect("log capture poisoned").clone();
        trace
            .lines
            .extend(String::from_utf8_lossy(&text).lines().map(|l| format!("log {l}")));
        trace
    }
}

/// A `tracing` writer that keeps every log line in memory.
#[derive(Debug, Clone, Default)]
pub(crate) struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("log capture poisoned")
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
