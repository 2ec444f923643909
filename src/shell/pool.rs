//! The fixed download pool of one share: workers that only do I/O (one object each, see
//! [`super::download`]) behind bounded channels.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use super::JOB_BATCH;
use super::download::download;
use crate::cache::publish::ShareDir;
use crate::cloud::ObjectStore;
use crate::daemon::Shutdown;
use crate::model::{LocalRecord, ObjectMeta};

/// A download the worker pool performs.
pub(super) struct Job {
    /// The key's index in the event batch that asked for it (unused in a full sync).
    pub(super) ticket: usize,
    pub(super) meta: ObjectMeta,
    pub(super) rel: PathBuf,
    pub(super) sequencer: Option<String>,
    pub(super) old: Option<LocalRecord>,
    /// Two-way shares: a file found at the path at publish time that is not `old` (written
    /// while the download ran) is moved to `<name><suffix>` first, never overwritten.
    pub(super) aside_suffix: Option<String>,
}

pub(super) enum JobOutcome {
    Published {
        meta: ObjectMeta,
        crc64nvme: u64,
        had_crc: bool,
        /// Share directory to fsync before the record may become durable.
        dir_to_sync: Option<PathBuf>,
    },
    /// The object disappeared between the decision and the GET.
    Gone,
    Failed(String),
    /// The share's file system is full (the message names it).
    NoSpace(String),
}

pub(super) struct JobResult {
    pub(super) ticket: usize,
    pub(super) job: Job,
    pub(super) outcome: JobOutcome,
}

/// The fixed download pool of one share.
pub(super) struct Pool {
    pub(super) jobs: Option<SyncSender<Job>>,
    pub(super) results: Receiver<JobResult>,
    pub(super) workers: Vec<JoinHandle<()>>,
    pub(super) in_flight: usize,
    pub(super) max_in_flight: usize,
}

impl Pool {
    pub(super) fn start(
        n: usize,
        store: Arc<dyn ObjectStore>,
        dir: Arc<ShareDir>,
        shutdown: Shutdown,
    ) -> Pool {
        // Room for a whole batch of jobs on top of two per worker, so handing over a batch
        // never waits for the workers to run dry.
        let max_in_flight = n * 2 + JOB_BATCH;
        // Capacities equal the in-flight bound, so neither side ever blocks on a full channel
        // while the other waits for it.
        let (job_tx, job_rx) = sync_channel::<Job>(max_in_flight);
        let (res_tx, res_rx) = sync_channel::<JobResult>(max_in_flight);
        let job_rx = Arc::new(std::sync::Mutex::new(job_rx));
        let workers = (0..n)
            .map(|i| {
                let (job_rx, res_tx) = (Arc::clone(&job_rx), res_tx.clone());
                let (store, dir, shutdown) =
                    (Arc::clone(&store), Arc::clone(&dir), shutdown.clone());
                std::thread::Builder::new()
                    .name(format!("sgw-dl-{i}"))
                    .spawn(move || {
                        // One read buffer per worker, not one per object (zeroing
                        // 256 KiB for every 4 KiB object showed up in the profile).
                        let mut buf = vec![0u8; 256 * 1024];
                        loop {
                            let job = match job_rx.lock() {
                                Ok(rx) => rx.recv(),
                                Err(_) => return,
                            };
                            let Ok(job) = job else { return };
                            let outcome = download(&*store, &dir, &job, &shutdown, &mut buf);
                            if res_tx
                                .send(JobResult {
                                    ticket: job.ticket,
                                    job,
                                    outcome,
                                })
                                .is_err()
                            {
                                return;
                            }
                        }
                    })
                    .expect("spawning a download worker")
            })
            .collect();
        Pool {
            jobs: Some(job_tx),
            results: res_rx,
            workers,
            in_flight: 0,
            max_in_flight,
        }
    }

    pub(super) fn is_full(&self) -> bool {
        self.in_flight >= self.max_in_flight
    }

    pub(super) fn submit(&mut self, job: Job) {
        if let Some(tx) = &self.jobs {
            // Never blocks: in_flight < capacity is checked by the caller.
            if tx.send(job).is_ok() {
                self.in_flight += 1;
            }
        }
    }

    pub(super) fn recv(&mut self, timeout: Duration) -> Option<JobResult> {
        if self.in_flight == 0 {
            return None;
        }
        match self.results.recv_timeout(timeout) {
            Ok(r) => {
                self.in_flight -= 1;
                Some(r)
            }
            Err(_) => None,
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
