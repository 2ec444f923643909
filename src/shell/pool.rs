//! The download pool of one share: workers that only do I/O (one object each, see
//! [`super::download`]) behind bounded channels. How many run at once is the engine's
//! decision ([`Concurrency`]: grows while throughput grows, halves when the server pushes
//! back, never above `download_concurrency`); workers are started as the limit first needs
//! them, and those above a lowered limit finish their object and wait.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::JOB_BATCH;
use super::download::download;
use crate::cache::share_dir::ShareDir;
use crate::cloud::ObjectStore;
use crate::daemon::Shutdown;
use crate::engine::concurrency::Concurrency;
use crate::model::{LocalRecord, ObjectMeta};

/// Read buffer per worker. 64 KiB keeps a read per few packets on a fast link and lets 32
/// workers fit the memory target (each connection adds ureq's own buffers, see `cloud::http`).
const WORKER_BUFFER: usize = 64 * 1024;

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
    /// Retries the download waited for (transport failures, throttling, 5xx).
    pub(super) waits: u32,
}

/// What every worker shares.
struct Shared {
    jobs: Mutex<Receiver<Job>>,
    results: SyncSender<JobResult>,
    store: Arc<dyn ObjectStore>,
    dir: Arc<ShareDir>,
    shutdown: Shutdown,
    /// Workers with an index below this take jobs.
    allowed: AtomicUsize,
    closed: AtomicBool,
}

/// The download pool of one share.
pub(super) struct Pool {
    pub(super) jobs: Option<SyncSender<Job>>,
    pub(super) results: Receiver<JobResult>,
    pub(super) workers: Vec<JoinHandle<()>>,
    pub(super) in_flight: usize,
    shared: Arc<Shared>,
    concurrency: Concurrency,
    started: Instant,
}

/// Jobs handed over beyond the running ones: two per worker plus a whole batch, so handing
/// over a batch never waits for the workers to run dry.
fn queue_room(limit: usize) -> usize {
    limit * 2 + JOB_BATCH
}

impl Pool {
    /// A pool of at most `cap` workers (the share's `download_concurrency`).
    pub(super) fn start(
        cap: usize,
        store: Arc<dyn ObjectStore>,
        dir: Arc<ShareDir>,
        shutdown: Shutdown,
    ) -> Pool {
        let concurrency = Concurrency::new(cap);
        // Capacities equal the largest in-flight bound, so neither side ever blocks on a full
        // channel while the other waits for it.
        let capacity = queue_room(concurrency.cap());
        let (job_tx, job_rx) = sync_channel::<Job>(capacity);
        let (res_tx, res_rx) = sync_channel::<JobResult>(capacity);
        let shared = Arc::new(Shared {
            jobs: Mutex::new(job_rx),
            results: res_tx,
            store,
            dir,
            shutdown,
            allowed: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        });
        let mut pool = Pool {
            jobs: Some(job_tx),
            results: res_rx,
            workers: Vec::new(),
            in_flight: 0,
            shared,
            concurrency,
            started: Instant::now(),
        };
        pool.apply_limit();
        pool
    }

    /// Workers allowed to run now.
    pub(super) fn limit(&self) -> usize {
        self.concurrency.limit()
    }

    /// Starts workers up to the controller's limit and tells the others to wait.
    fn apply_limit(&mut self) {
        let limit = self.concurrency.limit();
        while self.workers.len() < limit {
            let i = self.workers.len();
            let shared = Arc::clone(&self.shared);
            let handle = std::thread::Builder::new()
                .name(format!("sgw-dl-{i}"))
                .spawn(move || worker(i, &shared))
                .expect("spawning a download worker");
            self.workers.push(handle);
        }
        self.shared.allowed.store(limit, Ordering::SeqCst);
    }

    pub(super) fn is_full(&self) -> bool {
        self.in_flight >= queue_room(self.concurrency.limit())
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
                // Were all allowed workers busy? Then more work was waiting than running.
                let saturated = self.in_flight > self.concurrency.limit();
                self.in_flight -= 1;
                if r.waits > 0 {
                    self.concurrency.on_backoff();
                } else {
                    let bytes = match &r.outcome {
                        JobOutcome::Published { meta, .. } => meta.size,
                        _ => 0,
                    };
                    self.concurrency
                        .on_done(self.started.elapsed(), bytes, saturated);
                }
                if self.concurrency.limit() != self.shared.allowed.load(Ordering::SeqCst) {
                    log::debug!(
                        "download concurrency {} -> {}",
                        self.shared.allowed.load(Ordering::SeqCst),
                        self.concurrency.limit()
                    );
                    self.apply_limit();
                }
                Some(r)
            }
            Err(_) => None,
        }
    }
}

/// One worker: waits while its index is above the limit, else takes the next job.
fn worker(index: usize, shared: &Shared) {
    // One read buffer per worker, not one per object (zeroing a buffer for every 4 KiB
    // object showed up in the profile).
    let mut buf = vec![0u8; WORKER_BUFFER];
    loop {
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        if index >= shared.allowed.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let job = match shared.jobs.lock() {
            Ok(rx) => rx.recv_timeout(Duration::from_millis(200)),
            Err(_) => return,
        };
        let job = match job {
            Ok(job) => job,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut waits = 0;
        let outcome = download(
            &*shared.store,
            &shared.dir,
            &job,
            &shared.shutdown,
            &mut buf,
            &mut waits,
        );
        let result = JobResult {
            ticket: job.ticket,
            job,
            outcome,
            waits,
        };
        if shared.results.send(result).is_err() {
            return;
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.jobs = None;
        self.shared.closed.store(true, Ordering::SeqCst);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
