//! The bench's report: a block for people, then one `key=value` line for
//! scripts.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::load::{Check, Tally};

/// Everything a run measured.
#[derive(Debug)]
pub(super) struct Report {
    /// The run's setup, as `key=value` pairs.
    pub(super) setup: Vec<(&'static str, String)>,
    /// Peers under load.
    pub(super) peers: u64,
    /// Messages acknowledged Sent.
    pub(super) sent: u64,
    /// Messages refused.
    pub(super) failed: u64,
    /// Messages received (one per recipient).
    pub(super) deliveries: u64,
    /// From the start of the load to the last message received.
    pub(super) elapsed: Duration,
    /// Latency quantiles to Sent, in microseconds.
    pub(super) to_sent: Quantiles,
    /// Latency quantiles to Delivered, in microseconds.
    pub(super) to_delivered: Quantiles,
    /// What was lost or duplicated.
    pub(super) check: Check,
    /// The killed primary, and the time from the kill to the first Sent
    /// from another router.
    pub(super) failover: Option<(String, Option<Duration>)>,
    /// Messages that piled up for the offline peer, and the time from its
    /// return to its last message.
    pub(super) drain: Option<(u64, Option<Duration>)>,
    /// The largest peak resident set size of the routers, in bytes.
    pub(super) peak_rss: Option<u64>,
}

/// p50, p99, p99.9 and max of a latency histogram, in microseconds.
#[derive(Debug, Clone, Copy)]
pub(super) struct Quantiles {
    count: u64,
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

impl Quantiles {
    fn of(h: &Histogram<u64>) -> Self {
        Self {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }

    fn human(&self) -> String {
        if self.count == 0 {
            return "none".to_owned();
        }
        format!(
            "p50 {}  p99 {}  p99.9 {}  max {}",
            ms(self.p50),
            ms(self.p99),
            ms(self.p999),
            ms(self.max)
        )
    }

    fn pairs(&self, prefix: &str, out: &mut Vec<(String, String)>) {
        for (name, v) in [
            ("p50", self.p50),
            ("p99", self.p99),
            ("p999", self.p999),
            ("max", self.max),
        ] {
            out.push((format!("{prefix}_{name}_ms"), format!("{:.3}", v as f64 / 1000.0)));
        }
    }
}

fn ms(micros: u64) -> String {
    format!("{:.2} ms", micros as f64 / 1000.0)
}

impl Report {
    /// The figures of a finished load.
    pub(super) fn from_tally(tally: &Tally, peers: u64) -> Self {
        let elapsed = tally
            .last_received
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(tally.started));
        Self {
            setup: Vec::new(),
            peers,
            sent: tally.sent(),
            failed: tally.failed,
            deliveries: tally.deliveries,
            elapsed,
            to_sent: Quantiles::of(&tally.sent_latency),
            to_delivered: Quantiles::of(&tally.delivered_latency),
            check: tally.check(),
            failover: None,
            drain: None,
            peak_rss: None,
        }
    }

    /// Deliveries per second over the whole load.
    fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.deliveries as f64 / secs
        } else {
            0.0
        }
    }

    /// Prints the human block and the `key=value` line to standard output.
    pub(super) fn print(&self) {
        print!("{}", self.human());
        println!("{}", self.line());
    }

    fn human(&self) -> String {
        let mut s = String::new();
        let setup: Vec<String> = self.setup.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(s, "peerlink bench: {}, {} peers", setup.join(", "), self.peers);
        let _ = writeln!(
            s,
            "  sent          {} messages acknowledged Sent, {} refused",
            self.sent, self.failed
        );
        let _ = writeln!(
            s,
            "  deliveries    {} in {:.2} s = {:.0}/s",
            self.deliveries,
            self.elapsed.as_secs_f64(),
            self.rate()
        );
        let _ = writeln!(s, "  to Sent       {}", self.to_sent.human());
        let _ = writeln!(s, "  to Delivered  {}", self.to_delivered.human());
        let _ = writeln!(
            s,
            "  checked       {} deliveries expected: {} lost, {} duplicated, {} received but never acknowledged",
            self.check.expected, self.check.lost, self.check.duplicated, self.check.unacknowledged
        );
        if let Some((addr, first)) = &self.failover {
            let first = first.map_or("never".to_owned(), |d| {
                format!("{:.0} ms", d.as_secs_f64() * 1000.0)
            });
            let _ = writeln!(
                s,
                "  failover      killed the primary {addr}; first Sent from another router after {first}"
            );
        }
        if let Some((piled, drained)) = &self.drain {
            let drained = drained.map_or("never".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()));
            let _ = writeln!(
                s,
                "  drain         {piled} messages waited; back online to the last one received: {drained}"
            );
        }
        let rss = self
            .peak_rss
            .map_or("unknown (not started by bench)".to_owned(), |b| {
                format!("{:.1} MiB", mib(b))
            });
        let _ = writeln!(s, "  router RSS    peak {rss}");
        s
    }

    fn line(&self) -> String {
        let mut pairs: Vec<(String, String)> = self
            .setup
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        pairs.push(("peers".into(), self.peers.to_string()));
        pairs.push(("sent".into(), self.sent.to_string()));
        pairs.push(("failed".into(), self.failed.to_string()));
        pairs.push(("deliveries".into(), self.deliveries.to_string()));
        pairs.push(("elapsed_s".into(), format!("{:.3}", self.elapsed.as_secs_f64())));
        pairs.push(("deliveries_per_s".into(), format!("{:.0}", self.rate())));
        self.to_sent.pairs("sent", &mut pairs);
        self.to_delivered.pairs("delivered", &mut pairs);
        pairs.push(("lost".into(), self.check.lost.to_string()));
        pairs.push(("duplicated".into(), self.check.duplicated.to_string()));
        pairs.push(("unacknowledged".into(), self.check.unacknowledged.to_string()));
        if let Some((_, first)) = &self.failover {
            let v = first.map_or("none".to_owned(), |d| format!("{:.0}", d.as_secs_f64() * 1000.0));
            pairs.push(("failover_first_sent_ms".into(), v));
        }
        if let Some((piled, drained)) = &self.drain {
            pairs.push(("drain_messages".into(), piled.to_string()));
            let v = drained.map_or("none".to_owned(), |d| format!("{:.3}", d.as_secs_f64()));
            pairs.push(("drain_s".into(), v));
        }
        let rss = self
            .peak_rss
            .map_or("unknown".to_owned(), |b| format!("{:.1}", mib(b)));
        pairs.push(("router_peak_rss_mib".into(), rss));
        let pairs: Vec<String> = pairs.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        pairs.join(" ")
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
