//! `sim`: sweep chaos scenarios over many seeds, or replay one seed with its
//! full trace.
//!
//! ```text
//! cargo run -p sim --release -- sweep --scenario all --seeds 100
//! cargo run -p sim --release -- replay --scenario primary_crash --seed 42
//! cargo run -p sim --release -- failovers --latency-ms 300 --seeds 100
//! ```

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use sim::failovers::{slow_run, SlowRun};
use sim::scenario::{replay_command, run_scenario, SCENARIOS};

/// Deterministic chaos testing of PeerLink on turmoil.
#[derive(Debug, Parser)]
#[command(name = "sim", version, about, long_about = None)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run scenarios over many seeds and report failures with their replay
    /// commands.
    Sweep {
        /// A scenario name, or `all`.
        #[arg(long, default_value = "all")]
        scenario: String,
        /// How many seeds per scenario.
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        /// The first seed.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Worker threads, each running whole simulations [default: the
        /// number of cores].
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// Count spurious failovers: runs with no fault but a slow network, in
    /// which every change of primary is a mistake of the failure detector.
    Failovers {
        /// The largest one-way message latency on every link.
        #[arg(long)]
        latency_ms: u64,
        /// The replica manager's failure timeout.
        #[arg(long, default_value_t = 500)]
        failure_timeout_ms: u64,
        /// How many seeds.
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        /// Worker threads [default: the number of cores].
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// Run one scenario with one seed and print its whole trace.
    Replay {
        /// The scenario.
        #[arg(long)]
        scenario: String,
        /// The seed.
        #[arg(long)]
        seed: u64,
    },
}

fn main() -> ExitCode {
    match Args::parse().command {
        Command::Sweep {
            scenario,
            seeds,
            from,
            jobs,
        } => sweep(&scenario, seeds, from, jobs),
        Command::Replay { scenario, seed } => replay(&scenario, seed),
        Command::Failovers {
            latency_ms,
            failure_timeout_ms,
            seeds,
            jobs,
        } => failovers(
            Duration::from_millis(latency_ms),
            Duration::from_millis(failure_timeout_ms),
            seeds,
            jobs,
        ),
    }
}

fn names(scenario: &str) -> Option<Vec<&'static str>> {
    if scenario == "all" {
        return Some(SCENARIOS.to_vec());
    }
    SCENARIOS.iter().find(|s| **s == scenario).map(|s| vec![*s])
}

// The sweep reports its real speed, so it reads the wall clock; the
// simulations it runs never do.
#[allow(clippy::disallowed_methods)]
fn sweep(scenario: &str, seeds: u64, from: u64, jobs: Option<usize>) -> ExitCode {
    let Some(names) = names(scenario) else {
        eprintln!("sim: no scenario is named {scenario:?}; choose one of {SCENARIOS:?} or all");
        return ExitCode::FAILURE;
    };
    let jobs = jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let mut failed_any = false;
    println!("scenario                   seeds  passed  failed  sim-s/wall-s  wall");
    for name in names {
        let next = AtomicU64::new(from);
        let failures: Mutex<Vec<(u64, String)>> = Mutex::new(Vec::new());
        let simulated = Mutex::new(Duration::ZERO);
        let started = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..jobs {
                scope.spawn(|| loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= from + seeds {
                        return;
                    }
                    let problem = match run_scenario(name, seed) {
                        Ok(outcome) => {
                            *simulated.lock().expect("not poisoned") += outcome.trace.simulated;
                            outcome.violations.first().map(ToString::to_string)
                        }
                        Err(e) => Some(format!("the run did not finish: {e}")),
                    };
                    if let Some(problem) = problem {
                        failures.lock().expect("not poisoned").push((seed, problem));
                    }
                });
            }
        });
        let wall = started.elapsed();
        let mut failures = failures.into_inner().expect("not poisoned");
        failures.sort();
        let simulated = simulated.into_inner().expect("not poisoned");
        println!(
            "{name:<26} {seeds:>5}  {:>6}  {:>6}  {:>12.1}  {:.0} s",
            seeds - failures.len() as u64,
            failures.len(),
            simulated.as_secs_f64() / wall.as_secs_f64(),
            wall.as_secs_f64()
        );
        for (seed, problem) in &failures {
            println!("  seed {seed}: {problem}");
            println!("    replay: {}", replay_command(name, *seed));
        }
        failed_any |= !failures.is_empty();
    }
    if failed_any {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn failovers(latency: Duration, failure_timeout: Duration, seeds: u64, jobs: Option<usize>) -> ExitCode {
    let jobs = jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let next = AtomicU64::new(0);
    let runs: Mutex<Vec<(u64, Result<SlowRun, String>)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= seeds {
                    return;
                }
                let run = slow_run(seed, latency, failure_timeout).map_err(|e| e.to_string());
                runs.lock().expect("not poisoned").push((seed, run));
            });
        }
    });
    let mut runs = runs.into_inner().expect("not poisoned");
    runs.sort_by_key(|(seed, _)| *seed);
    let (mut failovers, mut with_failover, mut violations, mut unfinished) = (0, 0, 0, 0);
    for (seed, run) in &runs {
        match run {
            Ok(run) => {
                failovers += run.failovers;
                with_failover += usize::from(run.failovers > 0);
                violations += run.violations;
                if let Some(first) = &run.first_violation {
                    println!("  seed {seed}: {} violation(s), first: {first}", run.violations);
                }
            }
            Err(e) => {
                unfinished += 1;
                println!("  seed {seed} did not finish: {e}");
            }
        }
    }
    println!(
        "latency <= {} ms, failure timeout {} ms: {seeds} runs, {failovers} spurious failovers, \
         {with_failover} runs with at least one, {violations} violations, {unfinished} unfinished",
        latency.as_millis(),
        failure_timeout.as_millis()
    );
    if violations + unfinished > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn replay(scenario: &str, seed: u64) -> ExitCode {
    let outcome = match run_scenario(scenario, seed) {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("sim: {scenario} seed {seed} did not finish: {e}");
            return ExitCode::FAILURE;
        }
    };
    for line in &outcome.trace.lines {
        println!("{line}");
    }
    println!(
        "{scenario} seed {seed}: {} simulated seconds, trace digest {:016x}, {} violation(s)",
        outcome.trace.simulated.as_secs_f64(),
        outcome.trace.digest(),
        outcome.violations.len()
    );
    for violation in &outcome.violations {
        println!("  {violation}");
    }
    if outcome.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
