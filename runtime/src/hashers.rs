//! The threads that stretch secrets (argon2id) for a production router
//! driver, so that its event loop never waits for one.
//!
//! A fixed set of workers, started with the driver, each with one
//! [`HashMemory`] it reuses for every job: memory stays at the workers'
//! count times the parameters' memory (19 MiB by default), where a thread
//! per job would leave each allocator arena holding its own copy.

use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};

use peerlink_core::router::secrets::{HashJob, HashMemory, SecretHash};
use tokio::sync::mpsc::UnboundedSender;

/// The most workers, whatever the core count.
const MAX_WORKERS: usize = 4;

/// Handle to the workers; they finish their current job and exit once it
/// is dropped.
#[derive(Debug)]
pub(crate) struct Hashers {
    jobs: mpsc::Sender<HashJob>,
}

impl Hashers {
    /// Starts one worker per core (at most [`MAX_WORKERS`]); each result is
    /// sent to `results` as `(job, hash)`.
    pub(crate) fn start(results: UnboundedSender<(u64, SecretHash)>) -> std::io::Result<Self> {
        let workers = std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .min(MAX_WORKERS);
        let (jobs, queue) = mpsc::channel::<HashJob>();
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..workers {
            let (queue, results) = (Arc::clone(&queue), results.clone());
            std::thread::Builder::new()
                .name(format!("peerlink-hash-{n}"))
                .spawn(move || work(&queue, &results))?;
        }
        Ok(Self { jobs })
    }

    /// Queues `job`.
    pub(crate) fn submit(&self, job: HashJob) {
        // The workers outlive this handle, so the queue is open.
        let _ = self.jobs.send(job);
    }
}

fn work(queue: &Mutex<Receiver<HashJob>>, results: &UnboundedSender<(u64, SecretHash)>) {
    let mut memory = HashMemory::default();
    loop {
        let job = match queue.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let hash = job.run_in(&mut memory);
        if results.send((job.job, hash)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use peerlink_core::ids::Secret;
    use peerlink_core::router::secrets::KdfParams;

    use super::*;

    #[test]
    fn every_job_comes_back_with_its_hash() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let hashers = Hashers::start(tx).unwrap();
        let jobs: Vec<HashJob> = (0..20)
            .map(|n| HashJob {
                job: n,
                params: KdfParams::CHEAPEST,
                salt: [n as u8; 16],
                secret: Secret::new(format!("s{n}")).unwrap(),
            })
            .collect();
        for job in &jobs {
            hashers.submit(job.clone());
        }
        let mut back: Vec<(u64, SecretHash)> = (0..20).map(|_| rx.blocking_recv().unwrap()).collect();
        back.sort_by_key(|(n, _)| *n);
        let expected: Vec<(u64, SecretHash)> = jobs.iter().map(|j| (j.job, j.run())).collect();
        assert_eq!(back, expected);
    }
}
