//! One full sync: the spooled listing merged with the state store (the engine's
//! [`FullSyncMerge`]), each key's action carried out, SyncProgress reported.

use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};

use super::deletes::DeleteSpool;
use super::listing::SpooledListing;
use super::{DELETE_SPOOL, LISTING_SPOOL, Share, ShareError, SyncReport};
use crate::cache::paths::{KeyPath, key_to_relpath};
use crate::engine::SyncAction;
use crate::engine::events::{HeadDecision, after_head};
use crate::engine::guard::is_mass_delete;
use crate::engine::plan::{FullSyncMerge, MergeError};
use crate::engine::progress::{Progress, ProgressMeter};
use crate::format::{human_bytes, thousands};
use crate::model::{ConsistencyCheck, ObjectMeta};
use crate::status::ShareState;
use crate::time::unix_now;

impl Share {
    /// Bring the share in line with the bucket: list, compare, download, delete.
    pub fn full_sync(&mut self) -> Result<SyncReport, ShareError> {
        let name = self.ctx.cfg.name.clone();
        let started = Instant::now();
        self.status.state = ShareState::FullSyncing;
        self.status.last_error = None;
        self.status.failed_objects = 0;
        self.status.skipped_keys = 0;
        self.status.skipped_examples.clear();
        let uploads_before = (self.status.uploads.done, self.status.uploads.remote_deletes);
        let mut meter = ProgressMeter::new();
        self.status.sync_progress = 0;
        self.write_status(true);
        info!(
            "share {name}: full sync started (bucket {}, prefix {:?})",
            self.ctx.cfg.bucket, self.ctx.cfg.prefix
        );

        // One listing, spooled (shell::listing): downloads start at once, and the totals for
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
        // Deletes wait until the merge has ended cleanly, and until the guard has counted them.
        let files_before = self.state.len();
        let delete_path = self.ctx.state_dir.join(DELETE_SPOOL);
        let mut deletes = DeleteSpool::create(&delete_path).map_err(|e| {
            ShareError::Io(std::io::Error::new(
                e.kind(),
                format!("delete spool {}: {e}", delete_path.display()),
            ))
        })?;
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
            if let Err(e) =
                self.apply_sync_action(action, mode, &mut report, &mut progress, &mut deletes)
            {
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
        self.apply_deletes(deletes, files_before, &mut report)?;
        if self.two_way() {
            // Files new since the last sync (no base, not in the listing): uploaded.
            self.scan_new_local_files(&mut report, &mut progress)?;
            while self.work_outstanding() {
                self.finish_downloads(&mut report, &mut progress, Duration::from_millis(200))?;
            }
            self.sync_state(true)?;
        } else {
            self.report_unknown_files();
        }
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
            // Everything fit: a full disk later is news again.
            self.disk_full_reported = None;
        } else {
            self.status.state = ShareState::Error;
            // Keep the last reason: "no space left on …" says more than a count.
            let last = self.status.last_error.take();
            self.status.last_error = Some(match last {
                Some(why) if report.failed == 0 => why,
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
        if self.two_way() {
            info!(
                "share {name}: two-way: {} uploaded, {} deleted in the bucket, {} upload(s) waiting",
                self.status.uploads.done - uploads_before.0,
                self.status.uploads.remote_deletes - uploads_before.1,
                self.two_way.as_ref().map_or(0, |tw| tw.pending.len())
            );
        }
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
    pub(super) fn set_totals(&mut self, progress: &mut Progress, (objects, bytes): (u64, u64)) {
        progress.total_objects = objects;
        progress.total_bytes = bytes;
        self.status.objects_total = objects;
        self.status.bytes_total = bytes;
    }

    pub(super) fn show_progress(
        &mut self,
        meter: &mut ProgressMeter,
        progress: &Progress,
        finished: bool,
    ) {
        let pct = meter.report(progress, finished);
        self.status.sync_progress = pct;
        self.ctx.progress.update(&self.ctx.cfg.name, pct, progress);
        self.write_status(finished);
    }

    pub(super) fn apply_sync_action(
        &mut self,
        action: SyncAction,
        mode: ConsistencyCheck,
        report: &mut SyncReport,
        progress: &mut Progress,
        deletes: &mut DeleteSpool,
    ) -> Result<(), ShareError> {
        if self.two_way() {
            let (key, bucket) = match action {
                SyncAction::Keep(rec) => {
                    let meta = ObjectMeta {
                        key: rec.key.clone(),
                        size: rec.size,
                        etag: rec.etag.clone(),
                        last_modified: rec.last_modified,
                        crc64nvme: Some(rec.crc64nvme),
                    };
                    (rec.key, Some(Some(meta)))
                }
                SyncAction::Download(meta, _) => (meta.key.clone(), Some(Some(meta))),
                SyncAction::Verify(meta, _) => (meta.key, None),
                SyncAction::Delete(rec) => (rec.key, Some(None)),
            };
            report.listed += 1;
            progress.done_objects += 1;
            return self.reconcile_key(&key, bucket, Some(deletes), report, progress);
        }
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
                        deletes.push(&r.key)?;
                    }
                    HeadDecision::Nothing | HeadDecision::Adopt(_) => {
                        report.kept += 1;
                        progress.done_objects += 1;
                        progress.done_bytes += meta.size;
                    }
                }
            }
            SyncAction::Delete(rec) => deletes.push(&rec.key)?,
        }
        Ok(())
    }

    /// Carry out the held-back deletes, unless they are a mass delete (and the operator has
    /// not allowed one for this run): then nothing is deleted and the share is in error.
    fn apply_deletes(
        &mut self,
        deletes: DeleteSpool,
        files_before: u64,
        report: &mut SyncReport,
    ) -> Result<(), ShareError> {
        let n = deletes.len();
        if n == 0 {
            return Ok(());
        }
        let name = &self.ctx.cfg.name;
        if !self.ctx.cfg.allow_mass_delete
            && is_mass_delete(n, files_before, self.ctx.cfg.delete_limits)
        {
            let why = format!(
                "the bucket listing would delete {} of {} files; refusing — check the bucket, prefix and credentials, then run `sgw-agent sync --allow-mass-delete {name}`",
                thousands(n),
                thousands(files_before)
            );
            error!("share {name}: {why}");
            self.status.last_error = Some(why);
            report.refused_deletes = n;
            return Ok(());
        }
        for key in deletes.into_keys()? {
            let key = key?;
            if self.two_way() {
                // Decided again against the key's state now (HEAD): either side's delete.
                let mut progress = Progress::default();
                self.reconcile_key(&key, None, None, report, &mut progress)?;
                self.heartbeat.beat();
                continue;
            }
            // The record is read again: it is the truth, not what the merge saw.
            if let Some(rec) = self.state.get(&key)? {
                self.delete_local(&rec, report)?;
            }
            self.heartbeat.beat();
        }
        self.sync_state(true)
    }
}
