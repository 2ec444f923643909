//! [`Share`]: one share at work. Opening (with crash recovery), the run loop (a full sync,
//! then the queue, with backoff and periodic reconciles), and the order in which state and
//! status become durable.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use log::{error, info, warn};

use super::pool::{Job, Pool};
use super::two_way::TwoWay;
use super::watch::Watcher;
use super::{LONG_POLL_SECS, SYNC_EVERY, SYNC_EVERY_RECORDS, ShareContext, ShareError, SyncReport};
use crate::cache::share_dir::ShareDir;
use crate::cache::state::StateStore;
use crate::cloud::retry::Backoff;
use crate::daemon::Heartbeat;
use crate::engine::batch::Batch;
use crate::engine::progress::Progress;
use crate::status::{ShareState, ShareStatus, write_status};
use crate::time::unix_now;

/// One share at work.
pub struct Share {
    pub(super) ctx: ShareContext,
    pub(super) dir: Arc<ShareDir>,
    pub(super) state: StateStore,
    pub status: ShareStatus,
    pub(super) pool: Pool,
    pub(super) status_written: Instant,
    pub(super) unsynced_records: usize,
    pub(super) last_state_sync: Instant,
    /// Set while the share thread waits in a long poll with nothing pending: the daemon may
    /// exit then without waiting for the poll to return.
    pub idle: Arc<AtomicBool>,
    /// Beaten whenever the share thread gets on with its work (the daemon watches it).
    pub heartbeat: Heartbeat,
    /// While a queue batch is applied: its bookkeeping, where pool jobs report failures (their
    /// ticket is the key's index in it). Empty during a full sync.
    pub(super) batch: Batch,
    /// A status change was not written yet (writes are rate-limited).
    pub(super) status_stale: bool,
    /// Downloads decided but not handed to the pool yet: their publish intents go into the
    /// journal first, and one journal sync covers the whole batch (see [`Share::flush_jobs`]).
    pub(super) pending_jobs: Vec<Job>,
    /// Directories with published renames not fsynced yet; synced (once each) before the
    /// records of those publishes become durable.
    pub(super) dirs_to_sync: BTreeSet<PathBuf>,
    /// When "no space left" was last logged: while the disk stays full it is said again at
    /// most every [`super::DISK_FULL_REPEAT`], not once per object.
    pub(super) disk_full_reported: Option<Instant>,
    /// Two-way shares only: the local side of each base, pending local changes, the watcher.
    pub(super) two_way: Option<TwoWay>,
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
        let two_way = if ctx.cfg.sync.two_way() {
            Some(TwoWay::open(&ctx.state_dir)?)
        } else {
            None
        };
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
            batch: Batch::new(),
            status_stale: false,
            pending_jobs: Vec::new(),
            dirs_to_sync: BTreeSet::new(),
            disk_full_reported: None,
            two_way,
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

    pub(super) fn write_status(&mut self, force: bool) {
        if !force && self.status_written.elapsed() < Duration::from_secs(1) {
            self.status_stale = true;
            return;
        }
        self.status_stale = false;
        self.status.updated = unix_now();
        self.status.track_trouble(self.status.updated);
        self.status.objects_local = self.state.len();
        if let Err(e) = write_status(&self.ctx.state_dir, &self.status) {
            warn!("share {}: cannot write status: {e}", self.ctx.cfg.name);
        }
        self.status_written = Instant::now();
    }

    pub(super) fn sync_state(&mut self, force: bool) -> Result<(), ShareError> {
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
            if let Some(tw) = self.two_way.as_mut() {
                tw.seen.sync()?;
            }
            self.unsynced_records = 0;
            self.last_state_sync = Instant::now();
        }
        Ok(())
    }

    /// Hand the pending downloads to the pool once their intents are durable (one journal
    /// sync for the batch), waiting for room as needed.
    pub(super) fn flush_jobs(
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
    pub(super) fn work_outstanding(&self) -> bool {
        self.pool.in_flight > 0 || !self.pending_jobs.is_empty()
    }

    /// Wait for every download (pending ones are flushed first).
    pub(super) fn finish_downloads(
        &mut self,
        report: &mut SyncReport,
        progress: &mut Progress,
        wait: Duration,
    ) -> Result<(), ShareError> {
        self.flush_jobs(report, progress)?;
        self.collect_results(report, progress, wait)
    }

    /// Full sync, then follow the queue until shutdown. Never returns an error for a
    /// transient problem: those are retried, logged and shown in the status.
    pub fn run(&mut self) {
        let name = self.ctx.cfg.name.clone();
        let mut need_full_sync = true;
        let mut last_full = Instant::now();
        let mut queue_failing = false;
        let mut last_poll = Instant::now();
        // Full-sync failures back off up to 5 minutes, queue failures up to 1 (the queue is
        // cheap to ask, and a reachable queue again means events are waiting).
        let mut sync_backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        let mut queue_backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        // Two-way: watch before the first full sync, so nothing written meanwhile is missed.
        if let Some(tw) = self.two_way.as_mut() {
            match Watcher::start(&self.ctx.cfg.path) {
                Ok(w) => tw.watcher = Some(w),
                Err(e) => warn!(
                    "share {name}: cannot watch the share ({e}); local changes are found by the periodic full sync only"
                ),
            }
        }
        while !self.ctx.shutdown.is_triggered() {
            self.heartbeat.beat();
            let interval = self.ctx.cfg.full_sync_interval_secs;
            if need_full_sync
                || (interval > 0 && last_full.elapsed() >= Duration::from_secs(interval))
            {
                match self.full_sync() {
                    Ok(_) => {
                        need_full_sync = false;
                        sync_backoff.reset();
                    }
                    Err(ShareError::Stopped) => break,
                    Err(e) => {
                        let wait = sync_backoff.next_delay();
                        error!(
                            "share {name}: full sync failed: {e}; retrying in {:.1}s",
                            wait.as_secs_f64()
                        );
                        self.ctx.shutdown.sleep(wait);
                        continue;
                    }
                }
                last_full = Instant::now();
            }
            match self.two_way_tick() {
                Ok(false) => {}
                Ok(true) => {
                    need_full_sync = true;
                    continue;
                }
                Err(ShareError::Stopped) => break,
                Err(e) => {
                    error!("share {name}: local changes: {e}");
                    self.status.uploads.last_error = Some(e.to_string());
                    need_full_sync = true;
                    self.ctx.shutdown.sleep(sync_backoff.next_delay());
                    continue;
                }
            }
            let two_way_wait = self.two_way_wait();
            let Some(queue) = self.ctx.queue.clone() else {
                // No queue: sleep until the next periodic reconcile (or shutdown).
                self.idle.store(true, Ordering::SeqCst);
                let wait = if interval > 0 {
                    Duration::from_secs(interval).saturating_sub(last_full.elapsed())
                } else {
                    Duration::from_secs(3600)
                };
                let wait = two_way_wait.map_or(wait, |w| w.min(wait));
                self.ctx
                    .shutdown
                    .sleep(wait.max(Duration::from_millis(if self.two_way() {
                        100
                    } else {
                        1000
                    })));
                self.idle.store(false, Ordering::SeqCst);
                continue;
            };
            // The status file must be current before we block: the daemon may exit during
            // the poll without waiting for this thread.
            if self.status_stale {
                self.write_status(true);
            }
            // A local change due in less than a second (SQS waits in whole seconds): wait
            // for it instead of polling, unless the queue was not asked for 2 s.
            if let Some(w) = two_way_wait
                && w < Duration::from_secs(1)
                && last_poll.elapsed() < Duration::from_secs(2)
            {
                self.ctx.shutdown.sleep(w.max(Duration::from_millis(10)));
                continue;
            }
            last_poll = Instant::now();
            self.idle.store(true, Ordering::SeqCst);
            // A two-way share polls no longer than its next local change is due.
            let wait_secs = two_way_wait.map_or(LONG_POLL_SECS, |w| {
                (w.as_millis().div_ceil(1000) as u32).clamp(1, LONG_POLL_SECS)
            });
            let received = queue.receive(10, wait_secs);
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
                    queue_backoff.reset();
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
                    self.ctx.shutdown.sleep(queue_backoff.next_delay());
                    self.idle.store(false, Ordering::SeqCst);
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
        // `status` shows `stopped` after a stop; `error_since` and the last error stay.
        self.status.state = ShareState::Stopped;
        self.write_status(true);
        info!("share {name}: stopped");
    }
}
