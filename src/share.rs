//! The I/O shell for one share: it runs the engine's decisions against the bucket, the queue
//! and the cache disk.
//!
//! Threads: the share's own thread lists, plans, polls and owns the state store (single
//! writer); a fixed pool of `download_concurrency` workers streams objects into staged files and
//! publishes them. Jobs and results travel over bounded channels, so memory depends on the
//! concurrency, never on the bucket size.

use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};

use crate::cache::crc64::Crc64Nvme;
use crate::cache::paths::{KeyPath, key_to_relpath};
use crate::cache::publish::{Expected, PublishError, ShareDir};
use crate::cache::state::{PublishIntent, StateError, StateStore};
use crate::cloud::events::{ParsedMessage, parse_message};
use crate::cloud::{CloudError, EventQueue, ObjectStore, QueueMessage};
use crate::config::ShareConfig;
use crate::engine::events::{
    EventDecision, HeadDecision, after_head, on_event, record_after_download,
};
use crate::engine::local::{
    BeforePublish, FileDigest, LocalFile, adoption_proven, before_publish, classify, is_md5_etag,
};
use crate::engine::plan::{FullSyncMerge, MergeError};
use crate::engine::progress::{Progress, ProgressMeter};
use crate::engine::{FileFacts, SyncAction};
use crate::listing::SpooledListing;
use crate::model::{ConsistencyCheck, LocalRecord, ObjectMeta};
use crate::service::{Heartbeat, Shutdown};
use crate::status::{ShareState, ShareStatus, unix_now, write_status};

/// A message that keeps failing (unparseable, or its change cannot be applied) is removed
/// after this many receives; the next full reconcile repairs whatever it was about.
pub const MAX_RECEIVES: u32 = 5;
/// A checksum mismatch is retried this many times before the object is reported as failing.
const MAX_CRC_ATTEMPTS: u32 = 3;
/// Body read failures are resumed (ranged GET) this many times.
const MAX_BODY_ATTEMPTS: u32 = 5;
const LONG_POLL_SECS: u32 = 20;
/// Extend a batch's visibility when its work runs longer than this.
const VISIBILITY_EXTEND_AFTER: Duration = Duration::from_secs(20);
const VISIBILITY_EXTENSION_SECS: u32 = 120;
/// Journal fsync cadence during a full sync: records are durable at least this often.
const SYNC_EVERY_RECORDS: usize = 256;
/// Downloads whose intents share one journal sync before they go to the pool.
const JOB_BATCH: usize = 32;
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// The full sync's listing spool, in the share's state directory (unlinked while in use).
const LISTING_SPOOL: &str = "listing.spool";

/// Why a share stopped working.
#[derive(Debug)]
pub enum ShareError {
    Cloud(CloudError),
    State(StateError),
    Io(std::io::Error),
    /// The listing or the engine found something that must stop the sync (e.g. keys out of
    /// order): deleting on a wrong plan could destroy data.
    Plan(String),
    Stopped,
}

impl std::fmt::Display for ShareError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShareError::Cloud(e) => write!(f, "{e}"),
            ShareError::State(e) => write!(f, "state store: {e}"),
            ShareError::Io(e) => write!(f, "local disk: {e}"),
            ShareError::Plan(m) => write!(f, "{m}"),
            ShareError::Stopped => write!(f, "stopped"),
        }
    }
}

impl From<CloudError> for ShareError {
    fn from(e: CloudError) -> Self {
        ShareError::Cloud(e)
    }
}
impl From<StateError> for ShareError {
    fn from(e: StateError) -> Self {
        ShareError::State(e)
    }
}
impl From<std::io::Error> for ShareError {
    fn from(e: std::io::Error) -> Self {
        ShareError::Io(e)
    }
}

/// The outcome of one full sync.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    pub listed: u64,
    pub downloaded: u64,
    pub bytes_downloaded: u64,
    pub deleted: u64,
    pub kept: u64,
    pub adopted: u64,
    pub skipped: u64,
    pub failed: u64,
}

impl SyncReport {
    pub fn converged(&self) -> bool {
        self.failed == 0
    }
}

/// How progress is shown while a full sync runs (rustic style: a trait with a silent impl).
pub trait ProgressSink: Send + Sync {
    fn update(&self, share: &str, percent: i32, progress: &Progress);
}

/// Shows nothing (the daemon: progress goes to the status file).
pub struct Silent;
impl ProgressSink for Silent {
    fn update(&self, _: &str, _: i32, _: &Progress) {}
}

/// One line per update on stderr, for `sgw-agent sync` on a terminal or in a script.
pub struct StderrProgress;
impl ProgressSink for StderrProgress {
    fn update(&self, share: &str, percent: i32, p: &Progress) {
        eprintln!(
            "{share}: {percent:>3}%  {}/{} objects  {}/{}",
            p.done_objects,
            p.total_objects,
            human_bytes(p.done_bytes),
            human_bytes(p.total_bytes)
        );
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Everything a share needs from outside.
pub struct ShareContext {
    pub cfg: ShareConfig,
    pub state_dir: PathBuf,
    pub store: Arc<dyn ObjectStore>,
    pub queue: Option<Arc<dyn EventQueue>>,
    pub shutdown: Shutdown,
    pub progress: Arc<dyn ProgressSink>,
}

/// A download the worker pool performs.
struct Job {
    /// Index of the work item that asked for it (event batch bookkeeping).
    ticket: usize,
    meta: ObjectMeta,
    rel: PathBuf,
    sequencer: Option<String>,
    old: Option<LocalRecord>,
}

enum JobOutcome {
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

struct JobResult {
    ticket: usize,
    job: Job,
    outcome: JobOutcome,
}

/// The fixed download pool of one share.
struct Pool {
    jobs: Option<SyncSender<Job>>,
    results: Receiver<JobResult>,
    workers: Vec<JoinHandle<()>>,
    in_flight: usize,
    max_in_flight: usize,
}

impl Pool {
    fn start(
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

    fn is_full(&self) -> bool {
        self.in_flight >= self.max_in_flight
    }

    fn submit(&mut self, job: Job) {
        if let Some(tx) = &self.jobs {
            // Never blocks: in_flight < capacity is checked by the caller.
            if tx.send(job).is_ok() {
                self.in_flight += 1;
            }
        }
    }

    fn recv(&mut self, timeout: Duration) -> Option<JobResult> {
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

/// Stream one object into the share: staged, CRC-checked, published. Runs on a worker.
fn download(
    store: &dyn ObjectStore,
    dir: &ShareDir,
    job: &Job,
    shutdown: &Shutdown,
    buf: &mut [u8],
) -> JobOutcome {
    let key = &job.meta.key;
    let mut crc_failures = 0;
    let mut body_failures = 0;
    let mut meta = job.meta.clone();
    loop {
        if shutdown.is_triggered() {
            return JobOutcome::Failed("stopped before the download finished".into());
        }
        let mut staged = match dir.begin(key, meta.etag.as_deref(), meta.last_modified, meta.size) {
            Ok(s) => s,
            Err(e) => return JobOutcome::Failed(format!("cannot stage {key:?}: {e}")),
        };
        let offset = staged.offset();
        if offset > 0 {
            info!(
                "share download: {key:?}: resuming at byte {offset} of {}",
                meta.size
            );
        }
        // A resumed download must not mix two versions: pin the ETag, and take the
        // whole-object CRC from a HEAD (a ranged GET need not carry it).
        let mut expected_crc = None;
        if offset > 0 {
            match store.head(key) {
                Ok(Some(h)) if h.etag.is_some() && h.etag == meta.etag && h.size == meta.size => {
                    expected_crc = h.crc64nvme
                }
                Ok(Some(h)) => {
                    staged.discard();
                    meta = h;
                    continue;
                }
                Ok(None) => {
                    staged.discard();
                    return JobOutcome::Gone;
                }
                Err(e) => return JobOutcome::Failed(format!("HEAD {key:?}: {e}")),
            }
        }
        let if_match = if offset > 0 { meta.etag.clone() } else { None };
        let body = match store.get(key, offset, if_match.as_deref()) {
            Ok(b) => b,
            Err(CloudError::Service { status: 412, .. }) => {
                staged.discard();
                continue;
            }
            Err(e) if e.is_not_found() => {
                staged.discard();
                return JobOutcome::Gone;
            }
            Err(e) => return JobOutcome::Failed(format!("GET {key:?}: {e}")),
        };
        if body.offset != offset {
            // The server ignored the range: start over from byte 0 with what it sent.
            staged.discard();
            if body.offset != 0 {
                return JobOutcome::Failed(format!(
                    "GET {key:?}: unexpected range start {}",
                    body.offset
                ));
            }
            let m = &body.meta;
            staged = match dir.begin(key, m.etag.as_deref(), m.last_modified, m.size) {
                Ok(s) if s.offset() == 0 => s,
                Ok(s) => {
                    s.discard();
                    return JobOutcome::Failed(format!("cannot restage {key:?}"));
                }
                Err(e) => return JobOutcome::Failed(format!("cannot stage {key:?}: {e}")),
            };
        }
        let got = body.meta.clone();
        if offset == 0 {
            expected_crc = got.crc64nvme;
        }
        // No CRC-64 from the server: a single-part ETag is the MD5 of the bytes, so check
        // that instead of the size alone (only for a whole-object GET).
        let mut md5 = match (&expected_crc, &got.etag) {
            (None, Some(etag)) if offset == 0 && is_md5_etag(etag) => {
                Some(<md5::Md5 as md5::Digest>::new())
            }
            _ => None,
        };
        let mut reader = body.body;
        // Which side failed matters: the network is retried with a ranged GET, the local disk
        // is not (a full disk stays full for the next attempt too).
        let streamed: Result<(), Streaming> = (|| {
            loop {
                let n = reader.read(buf).map_err(Streaming::Body)?;
                if n == 0 {
                    return Ok(());
                }
                if let Some(m) = md5.as_mut() {
                    md5::Digest::update(m, &buf[..n]);
                }
                staged.write_all(&buf[..n]).map_err(Streaming::Disk)?;
            }
        })();
        if let Err(Streaming::Disk(e)) = streamed {
            staged.discard();
            return disk_failure(key, dir.root(), &e);
        }
        if let Err(Streaming::Body(e)) = streamed {
            body_failures += 1;
            if body_failures >= MAX_BODY_ATTEMPTS {
                return JobOutcome::Failed(format!("reading {key:?}: {e}"));
            }
            warn!(
                "share download: {key:?}: body interrupted at {} bytes ({e}); resuming",
                staged.offset()
            );
            // Keep the staged bytes: the next round resumes with a ranged GET.
            drop(staged);
            shutdown.sleep(Duration::from_millis(200 * u64::from(body_failures)));
            continue;
        }
        if let (Some(m), Some(etag)) = (md5, &got.etag) {
            let actual = hex_lower(&md5::Digest::finalize(m));
            if !actual.eq_ignore_ascii_case(etag) {
                staged.discard();
                crc_failures += 1;
                warn!(
                    "share download: {key:?}: MD5 {actual} does not match ETag {etag}; not published"
                );
                if crc_failures >= MAX_CRC_ATTEMPTS {
                    return JobOutcome::Failed(format!(
                        "{key:?} failed its MD5 (ETag) check {crc_failures} times"
                    ));
                }
                continue;
            }
        }
        let expected = Expected {
            size: got.size,
            crc64nvme: expected_crc,
        };
        let meta_for_record = ObjectMeta {
            crc64nvme: expected_crc,
            ..got.clone()
        };
        match staged.publish_deferring_dir_sync(&expected, &job.rel, got.last_modified) {
            Ok(p) => {
                return JobOutcome::Published {
                    meta: meta_for_record,
                    crc64nvme: p.crc64nvme,
                    had_crc: expected_crc.is_some(),
                    dir_to_sync: p.dir_to_sync,
                };
            }
            Err(PublishError::ChecksumMismatch { expected, actual }) => {
                crc_failures += 1;
                warn!(
                    "share download: {key:?}: CRC-64 mismatch (server {expected:016x}, received {actual:016x}); not published"
                );
                if crc_failures >= MAX_CRC_ATTEMPTS {
                    return JobOutcome::Failed(format!(
                        "{key:?} failed its CRC-64 check {crc_failures} times (server says {expected:016x}, bytes give {actual:016x})"
                    ));
                }
            }
            Err(PublishError::Io(e)) if e.kind() == std::io::ErrorKind::StorageFull => {
                return disk_failure(key, dir.root(), &e);
            }
            Err(e) => return JobOutcome::Failed(format!("publishing {key:?}: {e}")),
        }
    }
}

/// Where a download's bytes failed to move.
enum Streaming {
    Body(std::io::Error),
    Disk(std::io::Error),
}

/// A local write failed: not retried. A full disk gets its own outcome, so the share says so
/// once instead of once per object.
fn disk_failure(key: &str, root: &Path, e: &std::io::Error) -> JobOutcome {
    if e.kind() == std::io::ErrorKind::StorageFull {
        JobOutcome::NoSpace(format!("no space left on {}", root.display()))
    } else {
        JobOutcome::Failed(format!("writing {key:?} to {}: {e}", root.display()))
    }
}

/// One share at work.
pub struct Share {
    ctx: ShareContext,
    dir: Arc<ShareDir>,
    state: StateStore,
    pub status: ShareStatus,
    pool: Pool,
    status_written: Instant,
    unsynced_records: usize,
    last_state_sync: Instant,
    /// Set while the share thread waits in a long poll with nothing pending: the daemon may
    /// exit then without waiting for the poll to return.
    pub idle: Arc<AtomicBool>,
    /// Beaten whenever the share thread gets on with its work (the daemon watches it).
    pub heartbeat: Heartbeat,
    /// While a queue batch is applied: `batch_ok[i]` is false once any effect of message `i`
    /// failed. Empty during a full sync.
    batch_ok: Vec<bool>,
    /// A status change was not written yet (writes are rate-limited).
    status_stale: bool,
    /// Downloads decided but not handed to the pool yet: their publish intents go into the
    /// journal first, and one journal sync covers the whole batch (see [`Share::flush_jobs`]).
    pending_jobs: Vec<Job>,
    /// Directories with published renames not fsynced yet; synced (once each) before the
    /// records of those publishes become durable.
    dirs_to_sync: BTreeSet<PathBuf>,
    /// "No space left" was logged and no download has succeeded since: say it once.
    disk_full_reported: bool,
}

impl Share {
    pub fn open(ctx: ShareContext) -> Result<Share, ShareError> {
        let dir = Arc::new(ShareDir::open(&ctx.cfg.path).map_err(|e| {
            ShareError::Io(std::io::Error::new(
                e.kind(),
                format!("share directory {}: {e}", ctx.cfg.path.display()),
            ))
        })?);
        let state = StateStore::open(&ctx.state_dir)?;
        let mut status = match crate::status::read_status(&ctx.state_dir) {
            Ok(Some(s)) => ShareStatus {
                share: ctx.cfg.name.clone(),
                ..s
            },
            _ => ShareStatus::new(&ctx.cfg.name),
        };
        status.objects_local = state.len();
        // Counters are per run; the progress/state history is kept.
        status.objects_downloaded = 0;
        status.bytes_downloaded = 0;
        status.objects_deleted = 0;
        status.events_applied = 0;
        let pool = Pool::start(
            ctx.cfg.download_concurrency,
            Arc::clone(&ctx.store),
            Arc::clone(&dir),
            ctx.shutdown.clone(),
        );
        Ok(Share {
            ctx,
            dir,
            state,
            status,
            pool,
            status_written: Instant::now() - Duration::from_secs(60),
            unsynced_records: 0,
            last_state_sync: Instant::now(),
            idle: Arc::new(AtomicBool::new(false)),
            heartbeat: Heartbeat::new(),
            batch_ok: Vec::new(),
            status_stale: false,
            pending_jobs: Vec::new(),
            dirs_to_sync: BTreeSet::new(),
            disk_full_reported: false,
        })
        .and_then(|mut share| {
            share.recover_intents()?;
            // Nothing is in flight yet: partial downloads without a sidecar (small objects
            // cut off by a crash) and orphaned sidecars go; resumable ones stay.
            match share.dir.clean_staging(|_| true) {
                Ok(0) => {}
                Ok(n) => info!(
                    "share {}: removed {n} stale staging file(s)",
                    share.ctx.cfg.name
                ),
                Err(e) => warn!("share {}: cannot clean staging: {e}", share.ctx.cfg.name),
            }
            Ok(share)
        })
    }

    pub fn name(&self) -> &str {
        &self.ctx.cfg.name
    }

    fn write_status(&mut self, force: bool) {
        if !force && self.status_written.elapsed() < Duration::from_secs(1) {
            self.status_stale = true;
            return;
        }
        self.status_stale = false;
        self.status.updated = unix_now();
        self.status.objects_local = self.state.len();
        if let Err(e) = write_status(&self.ctx.state_dir, &self.status) {
            warn!("share {}: cannot write status: {e}", self.ctx.cfg.name);
        }
        self.status_written = Instant::now();
    }

    fn sync_state(&mut self, force: bool) -> Result<(), ShareError> {
        if self.unsynced_records > 0
            && (force
                || self.unsynced_records >= SYNC_EVERY_RECORDS
                || self.last_state_sync.elapsed() >= SYNC_EVERY)
        {
            // Renames first, then the records that say they happened.
            for dir in std::mem::take(&mut self.dirs_to_sync) {
                self.dir.sync_dir(&dir).map_err(|e| {
                    ShareError::Io(std::io::Error::new(
                        e.kind(),
                        format!("fsync of share directory {:?}: {e}", dir.display()),
                    ))
                })?;
            }
            self.state.sync()?;
            self.unsynced_records = 0;
            self.last_state_sync = Instant::now();
        }
        Ok(())
    }

    /// Hand the pending downloads to the pool once their intents are durable (one journal
    /// sync for the batch), waiting for room as needed.
    fn flush_jobs(
        &mut self,
        report: &mut SyncReport,
        progress: &mut Progress,
    ) -> Result<(), ShareError> {
        if self.pending_jobs.is_empty() {
            return Ok(());
        }
        // Every pending job journaled an intent, so there is something to sync.
        self.sync_state(true)?;
        for job in std::mem::take(&mut self.pending_jobs) {
            while self.pool.is_full() {
                self.collect_results(report, progress, Duration::from_millis(500))?;
            }
            self.pool.submit(job);
        }
        Ok(())
    }

    /// Downloads not finished yet, including those not handed to the pool.
    fn work_outstanding(&self) -> bool {
        self.pool.in_flight > 0 || !self.pending_jobs.is_empty()
    }

    /// Wait for every download (pending ones are flushed first).
    fn finish_downloads(
        &mut self,
        report: &mut SyncReport,
        progress: &mut Progress,
        wait: Duration,
    ) -> Result<(), ShareError> {
        self.flush_jobs(report, progress)?;
        self.collect_results(report, progress, wait)
    }

    /// After a crash: files published whose records never reached the journal. A file still
    /// at its path with the intended size and Last-Modified is recorded (hashing it), so it is
    /// known as the agent's (and deleted when the bucket deletes it) without being downloaded
    /// again. (A GET that returned a newer version than the one intended leaves a file that
    /// does not match: it is treated like any local file the agent does not know.)
    fn recover_intents(&mut self) -> Result<(), ShareError> {
        let intents = self.state.take_recovered_intents();
        if intents.is_empty() {
            return Ok(());
        }
        let mut recovered = 0;
        for intent in &intents {
            let known = self.state.get(&intent.key)?;
            let already = known
                .as_ref()
                .is_some_and(|r| r.etag == intent.etag && r.last_modified == intent.last_modified);
            if !already
                && let Ok(KeyPath::File(rel)) = key_to_relpath(&intent.key, &self.ctx.cfg.prefix)
                && let Ok(Some(facts)) = self.dir.file_facts(&rel)
                && facts.size == intent.size
                && crate::engine::events::publish_completed(
                    &ObjectMeta {
                        key: intent.key.clone(),
                        size: intent.size,
                        etag: intent.etag.clone(),
                        last_modified: intent.last_modified,
                        crc64nvme: None,
                    },
                    Some(facts),
                )
            {
                let crc = digest_of_file(&self.ctx.cfg.path.join(&rel), false, &self.heartbeat)?
                    .crc64nvme;
                self.state.put(LocalRecord {
                    key: intent.key.clone(),
                    size: facts.size,
                    etag: intent.etag.clone(),
                    last_modified: intent.last_modified,
                    crc64nvme: crc,
                    sequencer: known.and_then(|r| r.sequencer),
                })?;
                recovered += 1;
            }
        }
        // Durable records for the recovered ones; the rest of the intents are dropped.
        self.state.compact()?;
        info!(
            "share {}: {} download(s) were being published at an interruption; recorded {recovered} found complete",
            self.ctx.cfg.name,
            intents.len()
        );
        Ok(())
    }

    /// Bring the share in line with the bucket: list, compare, download, delete.
    pub fn full_sync(&mut self) -> Result<SyncReport, ShareError> {
        let name = self.ctx.cfg.name.clone();
        let started = Instant::now();
        self.status.state = ShareState::FullSyncing;
        self.status.last_error = None;
        self.status.failed_objects = 0;
        self.status.skipped_keys = 0;
        self.status.skipped_examples.clear();
        let mut meter = ProgressMeter::new();
        self.status.sync_progress = 0;
        self.write_status(true);
        info!(
            "share {name}: full sync started (bucket {}, prefix {:?})",
            self.ctx.cfg.bucket, self.ctx.cfg.prefix
        );

        // One listing, spooled (crate::listing): downloads start at once, and the totals for
        // SyncProgress arrive as soon as the listing is through (the meter never goes
        // backwards meanwhile).
        let spool_path = self.ctx.state_dir.join(LISTING_SPOOL);
        let (remote, counted) = SpooledListing::open(
            Arc::clone(&self.ctx.store),
            &self.ctx.cfg.prefix,
            &self.ctx.shutdown,
            &spool_path,
        )
        .map_err(|e| {
            ShareError::Io(std::io::Error::new(
                e.kind(),
                format!("listing spool {}: {e}", spool_path.display()),
            ))
        })?;
        let mut progress = Progress::default();
        let mut report = SyncReport::default();
        let mode = self.ctx.cfg.consistency_check;
        let local = self
            .state
            .iter_sorted()?
            .map(|r| r.map_err(ShareError::State));
        let merge = FullSyncMerge::new(remote, local, mode);
        let mut last_progress = Instant::now() - Duration::from_secs(60);
        let mut outcome: Result<(), ShareError> = Ok(());
        for action in merge {
            if self.ctx.shutdown.is_triggered() {
                outcome = Err(ShareError::Stopped);
                break;
            }
            if let Ok(totals) = counted.try_recv() {
                self.set_totals(&mut progress, totals);
            }
            let action = match action {
                Ok(a) => a,
                Err(e) => {
                    outcome = Err(match e {
                        MergeError::Remote(e) | MergeError::Local(e) => e,
                        other => ShareError::Plan(format!("full sync stopped: {other}")),
                    });
                    break;
                }
            };
            if let Err(e) = self.apply_sync_action(action, mode, &mut report, &mut progress) {
                outcome = Err(e);
                break;
            }
            self.collect_results(&mut report, &mut progress, Duration::ZERO)?;
            self.sync_state(false)?;
            if last_progress.elapsed() >= Duration::from_secs(1) {
                self.show_progress(&mut meter, &progress, false);
                last_progress = Instant::now();
            }
        }
        // Drain what is in flight even when stopping: finished downloads are kept.
        while self.work_outstanding() {
            if let Ok(totals) = counted.try_recv() {
                self.set_totals(&mut progress, totals);
            }
            self.finish_downloads(&mut report, &mut progress, Duration::from_millis(200))?;
            if last_progress.elapsed() >= Duration::from_secs(1) {
                self.show_progress(&mut meter, &progress, false);
                last_progress = Instant::now();
            }
        }
        self.sync_state(true)?;
        // A merge that ran to its end read the lister's end, which comes after the totals.
        if outcome.is_ok()
            && let Ok(totals) = counted.try_recv()
        {
            self.set_totals(&mut progress, totals);
        }
        if let Err(e) = outcome {
            self.status.state = if matches!(e, ShareError::Stopped) {
                ShareState::Stopped
            } else {
                ShareState::Error
            };
            self.status.last_error = Some(e.to_string());
            self.write_status(true);
            return Err(e);
        }
        self.report_unknown_files();
        let finished = report.converged();
        if finished {
            // Nothing is in flight and nothing failed: no staged download is worth keeping.
            match self.dir.clean_staging(|_| false) {
                Ok(0) => {}
                Ok(n) => debug!("share {name}: removed {n} leftover staging file(s)"),
                Err(e) => warn!("share {name}: cannot clean staging: {e}"),
            }
        }
        self.show_progress(&mut meter, &progress, finished);
        self.status.failed_objects = report.failed;
        if finished {
            self.status.state = ShareState::Healthy;
            self.status.last_full_sync = Some(unix_now());
        } else {
            self.status.state = ShareState::Error;
            // Keep the last reason: "no space left on …" says more than a count.
            let last = self.status.last_error.take();
            self.status.last_error = Some(match last {
                Some(why) => format!(
                    "{} object(s) could not be synced (last: {why}); see the log",
                    report.failed
                ),
                None => format!(
                    "{} object(s) could not be synced; see the log",
                    report.failed
                ),
            });
        }
        self.write_status(true);
        let secs = started.elapsed().as_secs_f64();
        info!(
            "share {name}: full sync {} in {secs:.1}s: {} listed, {} downloaded ({}), {} deleted, {} unchanged, {} adopted, {} skipped, {} failed",
            if finished { "done" } else { "incomplete" },
            report.listed,
            report.downloaded,
            human_bytes(report.bytes_downloaded),
            report.deleted,
            report.kept,
            report.adopted,
            report.skipped,
            report.failed
        );
        Ok(report)
    }

    /// The listing's totals (objects, bytes under the prefix), for SyncProgress and status.
    fn set_totals(&mut self, progress: &mut Progress, (objects, bytes): (u64, u64)) {
        progress.total_objects = objects;
        progress.total_bytes = bytes;
        self.status.objects_total = objects;
        self.status.bytes_total = bytes;
    }

    fn show_progress(&mut self, meter: &mut ProgressMeter, progress: &Progress, finished: bool) {
        let pct = meter.report(progress, finished);
        self.status.sync_progress = pct;
        self.ctx.progress.update(&self.ctx.cfg.name, pct, progress);
        self.write_status(finished);
    }

    fn apply_sync_action(
        &mut self,
        action: SyncAction,
        mode: ConsistencyCheck,
        report: &mut SyncReport,
        progress: &mut Progress,
    ) -> Result<(), ShareError> {
        match action {
            SyncAction::Keep(rec) => {
                report.listed += 1;
                // The record says we have it; make sure the file is still there (a crash
                // between removing a file and its record, or someone deleted it locally).
                let missing = matches!(
                    key_to_relpath(&rec.key, &self.ctx.cfg.prefix),
                    Ok(KeyPath::File(_))
                ) && self.facts_for_key(&rec.key).is_none();
                if missing {
                    match self.ctx.store.head(&rec.key)? {
                        Some(meta) => {
                            info!(
                                "share {}: {:?} is missing locally; fetching it again",
                                self.ctx.cfg.name, rec.key
                            );
                            self.fetch(meta, None, Some(rec), 0, report, progress)?;
                        }
                        None => {
                            progress.done_objects += 1;
                            self.state.remove(&rec.key)?;
                            self.unsynced_records += 1;
                        }
                    }
                } else {
                    report.kept += 1;
                    progress.done_objects += 1;
                    progress.done_bytes += rec.size;
                }
            }
            SyncAction::Download(meta, base) => {
                report.listed += 1;
                self.fetch(meta, None, base, 0, report, progress)?;
            }
            SyncAction::Verify(meta, rec) => {
                report.listed += 1;
                let head = self.ctx.store.head(&meta.key)?;
                let file = self.facts_for_key(&meta.key);
                match after_head(head.as_ref(), Some(&rec), file, mode) {
                    HeadDecision::Download(m) => {
                        self.fetch(m, None, Some(rec), 0, report, progress)?
                    }
                    HeadDecision::Delete(r) => {
                        progress.done_objects += 1;
                        self.delete_local(&r, report)?;
                    }
                    HeadDecision::Nothing | HeadDecision::Adopt(_) => {
                        report.kept += 1;
                        progress.done_objects += 1;
                        progress.done_bytes += meta.size;
                    }
                }
            }
            SyncAction::Delete(rec) => self.delete_local(&rec, report)?,
        }
        Ok(())
    }

    fn facts_for_key(&self, key: &str) -> Option<FileFacts> {
        match key_to_relpath(key, &self.ctx.cfg.prefix) {
            Ok(KeyPath::File(rel)) => self.dir.file_facts(&rel).ok().flatten(),
            _ => None,
        }
    }

    /// Download `meta` (or adopt/skip it). `ticket` ties the job to an event batch entry.
    fn fetch(
        &mut self,
        meta: ObjectMeta,
        sequencer: Option<String>,
        old: Option<LocalRecord>,
        ticket: usize,
        report: &mut SyncReport,
        progress: &mut Progress,
    ) -> Result<(), ShareError> {
        let name = self.ctx.cfg.name.clone();
        let rel = match key_to_relpath(&meta.key, &self.ctx.cfg.prefix) {
            Ok(KeyPath::File(rel)) => rel,
            Ok(KeyPath::Dir(rel)) => {
                match self.dir.make_dir(&rel) {
                    Ok(()) => {
                        let rec = record_after_download(
                            &meta,
                            Crc64Nvme::new().finish(),
                            sequencer.as_deref(),
                            old.as_ref(),
                        );
                        self.state.put(rec)?;
                        self.unsynced_records += 1;
                    }
                    Err(e) => {
                        warn!("share {name}: folder {:?}: {e}; skipped", meta.key);
                        self.status.note_skipped(&meta.key);
                        report.skipped += 1;
                    }
                }
                progress.done_objects += 1;
                return Ok(());
            }
            Err(why) => {
                warn!("share {name}: key {:?} skipped: {why}", meta.key);
                self.status.note_skipped(&meta.key);
                report.skipped += 1;
                progress.done_objects += 1;
                progress.done_bytes += meta.size;
                return Ok(());
            }
        };
        // What is at the path now? Our own unchanged file may be replaced; anything else is
        // either adopted (proven identical) or moved aside, never destroyed.
        if let Ok(Some(facts)) = self.dir.file_facts(&rel) {
            let decision = before_publish(
                &meta,
                old.as_ref(),
                Some(facts),
                self.ctx.cfg.consistency_check,
            );
            let adopted = decision == BeforePublish::Adopt
                && self.adopt(&meta, &rel, sequencer.as_deref(), old.as_ref())?;
            if adopted {
                report.adopted += 1;
                progress.done_objects += 1;
                progress.done_bytes += meta.size;
                return Ok(());
            }
            if decision != BeforePublish::Publish {
                match self.dir.conflict_aside(&rel) {
                    Ok(aside) => warn!(
                        "share {name}: local file {} differs from the bucket's {:?}; kept as {}",
                        rel.display(),
                        meta.key,
                        aside.display()
                    ),
                    Err(e) => {
                        warn!(
                            "share {name}: cannot move local file {} aside ({e}); {:?} not synced",
                            rel.display(),
                            meta.key
                        );
                        report.failed += 1;
                        return Ok(());
                    }
                }
            }
        }
        self.state.intend(PublishIntent {
            key: meta.key.clone(),
            size: meta.size,
            etag: meta.etag.clone(),
            last_modified: meta.last_modified,
        })?;
        self.unsynced_records += 1;
        self.pending_jobs.push(Job {
            ticket,
            meta,
            rel,
            sequencer,
            old,
        });
        // Group commit: flush a full batch, or at once while workers would otherwise idle.
        if self.pending_jobs.len() >= JOB_BATCH || self.pool.in_flight < self.pool.workers.len() {
            self.flush_jobs(report, progress)?;
        }
        Ok(())
    }

    /// Record the file at `rel` as `meta` without downloading it, if its content is proven to
    /// be that version ([`adoption_proven`]). A listing carries no CRC-64, so the key is HEADed
    /// for it first (adoption is rare: a file that already has the version's size and time).
    fn adopt(
        &mut self,
        meta: &ObjectMeta,
        rel: &Path,
        sequencer: Option<&str>,
        old: Option<&LocalRecord>,
    ) -> Result<bool, ShareError> {
        let mut meta = meta.clone();
        if meta.crc64nvme.is_none() {
            match self.ctx.store.head(&meta.key)? {
                Some(h) if h.etag == meta.etag && h.size == meta.size => {
                    meta.crc64nvme = h.crc64nvme
                }
                // Changed or gone since the listing: not this version, whatever the file is.
                _ => return Ok(false),
            }
        }
        let want_md5 = meta.crc64nvme.is_none() && meta.etag.as_deref().is_some_and(is_md5_etag);
        let digest = match digest_of_file(&self.ctx.cfg.path.join(rel), want_md5, &self.heartbeat) {
            Ok(d) => d,
            Err(e) => {
                warn!(
                    "share {}: cannot read {} to compare it with {:?}: {e}",
                    self.ctx.cfg.name,
                    rel.display(),
                    meta.key
                );
                return Ok(false);
            }
        };
        if !adoption_proven(&meta, &digest) {
            return Ok(false);
        }
        let rec = record_after_download(&meta, digest.crc64nvme, sequencer, old);
        self.state.put(rec)?;
        self.unsynced_records += 1;
        Ok(true)
    }

    /// Take finished downloads off the pool and record them (and, while a queue batch is
    /// applied, which messages' effects failed).
    fn collect_results(
        &mut self,
        report: &mut SyncReport,
        progress: &mut Progress,
        wait: Duration,
    ) -> Result<(), ShareError> {
        self.heartbeat.beat();
        let mut first = true;
        while let Some(r) = self.pool.recv(if first { wait } else { Duration::ZERO }) {
            first = false;
            let name = &self.ctx.cfg.name;
            let ok = match r.outcome {
                JobOutcome::Published {
                    meta,
                    crc64nvme,
                    had_crc,
                    dir_to_sync,
                } => {
                    if let Some(dir) = dir_to_sync {
                        self.dirs_to_sync.insert(dir);
                    }
                    self.disk_full_reported = false;
                    debug!(
                        "share {name}: published {:?} ({} bytes)",
                        meta.key, meta.size
                    );
                    if !had_crc {
                        self.status.verified_without_crc += 1;
                    }
                    report.downloaded += 1;
                    report.bytes_downloaded += meta.size;
                    progress.done_objects += 1;
                    progress.done_bytes += meta.size;
                    self.status.objects_downloaded += 1;
                    self.status.bytes_downloaded += meta.size;
                    let rec = record_after_download(
                        &meta,
                        crc64nvme,
                        r.job.sequencer.as_deref(),
                        r.job.old.as_ref(),
                    );
                    self.state.put(rec)?;
                    self.unsynced_records += 1;
                    true
                }
                JobOutcome::Gone => {
                    self.state.abandon_intent(&r.job.meta.key);
                    progress.done_objects += 1;
                    // The object went away: if we had it, drop it like a delete.
                    if let Some(old) = &r.job.old {
                        self.delete_local(&old.clone(), report)?;
                    }
                    true
                }
                JobOutcome::NoSpace(why) => {
                    self.state.abandon_intent(&r.job.meta.key);
                    if !self.disk_full_reported {
                        error!(
                            "share {name}: {why}; downloads fail until space is freed (the next full sync retries them)"
                        );
                        self.disk_full_reported = true;
                    }
                    debug!("share {name}: {:?} not downloaded: {why}", r.job.meta.key);
                    self.status.last_error = Some(why);
                    report.failed += 1;
                    progress.done_objects += 1;
                    false
                }
                JobOutcome::Failed(why) => {
                    self.state.abandon_intent(&r.job.meta.key);
                    error!("share {name}: {why}");
                    self.status.last_error = Some(why);
                    report.failed += 1;
                    progress.done_objects += 1;
                    false
                }
            };
            if let Some(slot) = self.batch_ok.get_mut(r.ticket) {
                *slot &= ok;
            }
        }
        Ok(())
    }

    /// Remove a file the agent published, unless someone changed it since.
    fn delete_local(
        &mut self,
        rec: &LocalRecord,
        report: &mut SyncReport,
    ) -> Result<(), ShareError> {
        let name = &self.ctx.cfg.name;
        match key_to_relpath(&rec.key, &self.ctx.cfg.prefix) {
            Ok(KeyPath::File(rel)) => match self.dir.file_facts(&rel) {
                Ok(Some(f)) if classify(Some(rec), Some(f)) == LocalFile::Changed => {
                    warn!(
                        "share {name}: {:?} was deleted from the bucket but changed locally; left in place",
                        rec.key
                    );
                    self.status.note_unknown(&rel.to_string_lossy());
                }
                Ok(_) => match self.dir.remove_file(&rel) {
                    Ok(_) => {
                        report.deleted += 1;
                        self.status.objects_deleted += 1;
                    }
                    Err(e) => {
                        warn!("share {name}: cannot remove {}: {e}", rel.display());
                        return Ok(());
                    }
                },
                Err(e) => {
                    warn!("share {name}: cannot inspect {}: {e}", rel.display());
                    return Ok(());
                }
            },
            Ok(KeyPath::Dir(rel)) => {
                // A folder marker: remove the directory only if it is empty.
                if !rel.as_os_str().is_empty() {
                    let _ = std::fs::remove_dir(self.ctx.cfg.path.join(&rel));
                }
                report.deleted += 1;
            }
            Err(_) => {}
        }
        self.state.remove(&rec.key)?;
        self.unsynced_records += 1;
        Ok(())
    }

    /// Count files in the share that neither the agent nor the bucket knows (left alone).
    fn report_unknown_files(&mut self) {
        self.status.unknown_local_files = 0;
        self.status.unknown_examples.clear();
        let root = self.ctx.cfg.path.clone();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel_dir) = stack.pop() {
            self.heartbeat.beat();
            let Ok(entries) = std::fs::read_dir(root.join(&rel_dir)) else {
                continue;
            };
            for entry in entries.flatten() {
                let rel = rel_dir.join(entry.file_name());
                if rel_dir.as_os_str().is_empty() && entry.file_name() == ".sgw" {
                    continue;
                }
                let Ok(ft) = entry.file_type() else { continue };
                if ft.is_dir() {
                    stack.push(rel);
                } else if ft.is_file() {
                    let Some(rel_str) = rel.to_str() else {
                        self.status.note_unknown(&rel.to_string_lossy());
                        continue;
                    };
                    let key = format!("{}{rel_str}", self.ctx.cfg.prefix);
                    if matches!(self.state.get(&key), Ok(None)) {
                        self.status.note_unknown(rel_str);
                    }
                }
            }
        }
        if self.status.unknown_local_files > 0 {
            info!(
                "share {}: {} local file(s) not in the bucket and not written by the agent (left alone), e.g. {:?}",
                self.ctx.cfg.name,
                self.status.unknown_local_files,
                self.status.unknown_examples.first()
            );
        }
    }

    /// Full sync, then follow the queue until shutdown. Never returns an error for a
    /// transient problem: those are retried, logged and shown in the status.
    pub fn run(&mut self) {
        let name = self.ctx.cfg.name.clone();
        let mut need_full_sync = true;
        let mut last_full = Instant::now();
        let mut queue_failing = false;
        let mut backoff = Duration::from_secs(1);
        while !self.ctx.shutdown.is_triggered() {
            self.heartbeat.beat();
            let interval = self.ctx.cfg.full_sync_interval_secs;
            if need_full_sync
                || (interval > 0 && last_full.elapsed() >= Duration::from_secs(interval))
            {
                match self.full_sync() {
                    Ok(_) => {
                        need_full_sync = false;
                        backoff = Duration::from_secs(1);
                    }
                    Err(ShareError::Stopped) => break,
                    Err(e) => {
                        error!(
                            "share {name}: full sync failed: {e}; retrying in {}s",
                            backoff.as_secs()
                        );
                        self.ctx.shutdown.sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(300));
                        continue;
                    }
                }
                last_full = Instant::now();
            }
            let Some(queue) = self.ctx.queue.clone() else {
                // No queue: sleep until the next periodic reconcile (or shutdown).
                self.idle.store(true, Ordering::SeqCst);
                let wait = if interval > 0 {
                    Duration::from_secs(interval).saturating_sub(last_full.elapsed())
                } else {
                    Duration::from_secs(3600)
                };
                self.ctx.shutdown.sleep(wait.max(Duration::from_secs(1)));
                self.idle.store(false, Ordering::SeqCst);
                continue;
            };
            // The status file must be current before we block: the daemon may exit during
            // the poll without waiting for this thread.
            if self.status_stale {
                self.write_status(true);
            }
            self.idle.store(true, Ordering::SeqCst);
            let received = queue.receive(10, LONG_POLL_SECS);
            self.idle.store(false, Ordering::SeqCst);
            self.heartbeat.beat();
            match received {
                Ok(msgs) => {
                    if queue_failing {
                        info!(
                            "share {name}: queue reachable again; reconciling what may have been missed"
                        );
                        queue_failing = false;
                        need_full_sync = true;
                        self.status.state = ShareState::Healthy;
                        self.write_status(true);
                    }
                    backoff = Duration::from_secs(1);
                    if !msgs.is_empty()
                        && let Err(e) = self.apply_messages(&*queue, msgs)
                    {
                        error!("share {name}: applying events failed: {e}");
                        self.status.last_error = Some(e.to_string());
                        need_full_sync = true;
                    }
                }
                Err(e) => {
                    if !queue_failing {
                        error!("share {name}: cannot read the queue: {e}; retrying with backoff");
                        queue_failing = true;
                    }
                    self.status.state = ShareState::QueueFailure;
                    self.status.last_error = Some(format!("queue: {e}"));
                    self.write_status(true);
                    self.idle.store(true, Ordering::SeqCst);
                    self.ctx.shutdown.sleep(backoff);
                    self.idle.store(false, Ordering::SeqCst);
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
        while self.work_outstanding() {
            let mut r = SyncReport::default();
            let mut p = Progress::default();
            if self
                .finish_downloads(&mut r, &mut p, Duration::from_millis(200))
                .is_err()
            {
                break;
            }
        }
        if let Err(e) = self.sync_state(true) {
            error!("share {name}: cannot make the state durable at shutdown: {e}");
        }
        self.write_status(true);
        info!("share {name}: stopped");
    }

    /// Apply one received batch; delete each message once its effects are durable.
    pub fn apply_messages(
        &mut self,
        queue: &dyn EventQueue,
        msgs: Vec<QueueMessage>,
    ) -> Result<(), ShareError> {
        let name = self.ctx.cfg.name.clone();
        let started = Instant::now();
        let mut extended = false;
        // batch_ok[i]: every effect of message i is done (or it needs no effect).
        self.batch_ok = vec![true; msgs.len()];
        let mut discard = vec![false; msgs.len()];
        // Events per key, in arrival order; the key's current state is checked once per batch.
        let mut by_key: Vec<(String, Vec<(usize, crate::model::BucketEvent)>)> = Vec::new();
        let mut key_index: HashMap<String, usize> = HashMap::new();
        for (i, m) in msgs.iter().enumerate() {
            match parse_message(&m.body) {
                Ok(ParsedMessage::Events(events)) => {
                    for ev in events {
                        let slot = *key_index.entry(ev.key.clone()).or_insert_with(|| {
                            by_key.push((ev.key.clone(), Vec::new()));
                            by_key.len() - 1
                        });
                        by_key[slot].1.push((i, ev));
                    }
                }
                Ok(ParsedMessage::TestEvent) => {
                    debug!("share {name}: s3:TestEvent received; removing it")
                }
                Ok(ParsedMessage::Ignored(why)) => {
                    debug!("share {name}: message {} ignored: {why}", m.id)
                }
                Err(e) => {
                    self.status.messages_discarded += u64::from(m.receive_count >= MAX_RECEIVES);
                    if m.receive_count >= MAX_RECEIVES {
                        warn!(
                            "share {name}: malformed message {} removed after {} receives: {e}",
                            m.id, m.receive_count
                        );
                        discard[i] = true;
                    } else {
                        warn!(
                            "share {name}: malformed message {} (receive {}): {e}",
                            m.id, m.receive_count
                        );
                        self.batch_ok[i] = false;
                    }
                }
            }
        }
        let mut report = SyncReport::default();
        let mut progress = Progress::default();
        let mode = self.ctx.cfg.consistency_check;
        for (key, events) in by_key {
            self.heartbeat.beat();
            let local = self.state.get(&key)?;
            let mut need_head = false;
            let mut sequencer: Option<String> = None;
            for (_, ev) in &events {
                if let EventDecision::Head = on_event(ev, &self.ctx.cfg.prefix, local.as_ref()) {
                    need_head = true;
                }
                if let Some(s) = &ev.sequencer
                    && sequencer
                        .as_ref()
                        .is_none_or(|cur| crate::cloud::events::sequencer_cmp(s, cur).is_gt())
                {
                    sequencer = Some(s.clone());
                }
            }
            if !need_head {
                continue;
            }
            // Tickets: the first message carrying this key stands for all of them.
            let tickets: Vec<usize> = events.iter().map(|(i, _)| *i).collect();
            let head = match self.ctx.store.head(&key) {
                Ok(h) => h,
                Err(e) => {
                    warn!("share {name}: HEAD {key:?} failed: {e}; will retry on redelivery");
                    for t in tickets {
                        self.batch_ok[t] = false;
                    }
                    continue;
                }
            };
            let file = self.facts_for_key(&key);
            self.status.events_applied += 1;
            match after_head(head.as_ref(), local.as_ref(), file, mode) {
                HeadDecision::Nothing => {}
                HeadDecision::Delete(rec) => {
                    // Keep the bucket totals roughly current between full counts.
                    self.status.objects_total = self.status.objects_total.saturating_sub(1);
                    self.status.bytes_total = self.status.bytes_total.saturating_sub(rec.size);
                    self.delete_local(&rec, &mut report)?
                }
                HeadDecision::Download(meta) | HeadDecision::Adopt(meta) => {
                    match &local {
                        None => self.status.objects_total += 1,
                        Some(old) => {
                            self.status.bytes_total =
                                self.status.bytes_total.saturating_sub(old.size)
                        }
                    }
                    self.status.bytes_total += meta.size;
                    // Adopt goes through fetch too: it re-checks the file and records it.
                    let before_failed = report.failed;
                    self.fetch(
                        meta,
                        sequencer,
                        local,
                        tickets[0],
                        &mut report,
                        &mut progress,
                    )?;
                    if report.failed > before_failed {
                        for t in &tickets {
                            self.batch_ok[*t] = false;
                        }
                    }
                    // Every message with this key shares the outcome of the one job.
                    if tickets.len() > 1 {
                        self.drain_batch(
                            &mut report,
                            &mut progress,
                            queue,
                            &msgs,
                            started,
                            &mut extended,
                        )?;
                        let all = tickets.iter().all(|t| self.batch_ok[*t]);
                        for t in tickets {
                            self.batch_ok[t] &= all;
                        }
                    }
                }
            }
        }
        self.drain_batch(
            &mut report,
            &mut progress,
            queue,
            &msgs,
            started,
            &mut extended,
        )?;
        self.sync_state(true)?;
        let ok = std::mem::take(&mut self.batch_ok);
        // Effects are durable: now the messages may go.
        let mut handles = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            if ok[i] || discard[i] || m.receive_count >= MAX_RECEIVES {
                if !ok[i] && !discard[i] {
                    warn!(
                        "share {name}: message {} failed {} times; removed, the next full reconcile repairs its keys",
                        m.id, m.receive_count
                    );
                    self.status.messages_discarded += 1;
                }
                handles.push(m.receipt_handle.clone());
            }
        }
        if !handles.is_empty() {
            match queue.delete_batch(&handles) {
                Ok(failed) => {
                    for (h, e) in failed {
                        // Not fatal: the message comes back and is applied again (idempotent).
                        warn!(
                            "share {name}: could not delete a message ({e}); it will be redelivered ({} chars handle)",
                            h.len()
                        );
                    }
                }
                Err(e) => warn!(
                    "share {name}: DeleteMessageBatch failed: {e}; messages will be redelivered"
                ),
            }
        }
        if report.failed == 0
            && self.status.state != ShareState::Healthy
            && self.status.state != ShareState::FullSyncing
        {
            self.status.state = ShareState::Healthy;
        }
        self.write_status(false);
        Ok(())
    }

    fn drain_batch(
        &mut self,
        report: &mut SyncReport,
        progress: &mut Progress,
        queue: &dyn EventQueue,
        msgs: &[QueueMessage],
        started: Instant,
        extended: &mut bool,
    ) -> Result<(), ShareError> {
        while self.work_outstanding() {
            self.finish_downloads(report, progress, Duration::from_millis(200))?;
            if !*extended && started.elapsed() >= VISIBILITY_EXTEND_AFTER {
                *extended = true;
                for m in msgs {
                    if let Err(e) =
                        queue.extend_visibility(&m.receipt_handle, VISIBILITY_EXTENSION_SECS)
                    {
                        warn!(
                            "share {}: cannot extend message visibility: {e}",
                            self.ctx.cfg.name
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

/// CRC-64/NVME (and, when asked, the MD5) of a local file (adoption, recovery); beats
/// `heartbeat` as it reads, since a big file on a slow card can take minutes.
fn digest_of_file(
    path: &Path,
    want_md5: bool,
    heartbeat: &Heartbeat,
) -> std::io::Result<FileDigest> {
    let mut f = std::fs::File::open(path)?;
    let mut crc = Crc64Nvme::new();
    let mut md5 = want_md5.then(<md5::Md5 as md5::Digest>::new);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(FileDigest {
                crc64nvme: crc.finish(),
                md5: md5.map(|m| hex_lower(&md5::Digest::finalize(m))),
            });
        }
        crc.update(&buf[..n]);
        if let Some(m) = md5.as_mut() {
            md5::Digest::update(m, &buf[..n]);
        }
        heartbeat.beat();
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
