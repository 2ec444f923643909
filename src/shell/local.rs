//! The effects on the cache disk: fetch a version (or adopt the file already there, or set a
//! local change aside first), record what was published, delete what the bucket deleted.
//! Whose file is at a path is the engine's call ([`crate::engine::local`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};

use super::pool::{Job, JobOutcome};
use super::recovery::digest_of_file;
use super::{DISK_FULL_REPEAT, JOB_BATCH, Share, ShareError, SyncReport};
use crate::cache::crc64::Crc64Nvme;
use crate::cache::paths::{KeyPath, key_to_relpath};
use crate::cache::share_dir::ShareDir;
use crate::cache::state::PublishIntent;
use crate::cloud::ObjectStore;
use crate::daemon::Heartbeat;
use crate::engine::FileFacts;
use crate::engine::events::record_after_download;
use crate::engine::local::{
    BeforePublish, LocalFile, adoption_proven, before_publish, classify, is_md5_etag,
};
use crate::engine::progress::Progress;
use crate::model::{ConsistencyCheck, LocalRecord, ObjectMeta};

/// Is the file at `rel` proven to be `meta`'s version ([`adoption_proven`])? Reads only: the
/// key is HEADed for its CRC-64 when the listing had none, and the file is read for its
/// digest. The version (with its CRC-64) and the file's CRC-64 when it is; the full sync's
/// adoption and `sync --dry-run` both ask this.
pub(super) fn prove_adoption(
    store: &dyn ObjectStore,
    dir: &ShareDir,
    meta: &ObjectMeta,
    rel: &Path,
    heartbeat: &Heartbeat,
    share: &str,
) -> Result<Option<(ObjectMeta, u64)>, ShareError> {
    let mut meta = meta.clone();
    if meta.crc64nvme.is_none() {
        match store.head(&meta.key)? {
            Some(h) if h.etag == meta.etag && h.size == meta.size => meta.crc64nvme = h.crc64nvme,
            // Changed or gone since the listing: not this version, whatever the file is.
            _ => return Ok(None),
        }
    }
    let want_md5 = meta.crc64nvme.is_none() && meta.etag.as_deref().is_some_and(is_md5_etag);
    let digest = match digest_of_file(dir, rel, want_md5, heartbeat) {
        Ok(d) => d,
        Err(e) => {
            warn!(
                "share {share}: cannot read {} to compare it with {:?}: {e}",
                rel.display(),
                meta.key
            );
            return Ok(None);
        }
    };
    if !adoption_proven(&meta, &digest) {
        return Ok(None);
    }
    Ok(Some((meta, digest.crc64nvme)))
}

/// Where a version would go and what stands in its way: the decision [`Share::fetch`] acts on
/// and `sync --dry-run` reports ([`super::dry_run`]). Reads only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PublishPlan {
    /// A folder marker: the directory at this path.
    Folder(PathBuf),
    /// The key can never be a safe local path (why).
    Skip(String),
    /// A file at `rel`; `before` is what to do with the file already there (`None`: nothing
    /// is there).
    File {
        rel: PathBuf,
        before: Option<BeforePublish>,
    },
}

pub(super) fn plan_publish(
    dir: &ShareDir,
    prefix: &str,
    meta: &ObjectMeta,
    base: Option<&LocalRecord>,
    mode: ConsistencyCheck,
) -> PublishPlan {
    match key_to_relpath(&meta.key, prefix) {
        Ok(KeyPath::Dir(rel)) => PublishPlan::Folder(rel),
        Err(why) => PublishPlan::Skip(why.to_string()),
        Ok(KeyPath::File(rel)) => {
            let before = dir
                .file_facts(&rel)
                .ok()
                .flatten()
                .map(|facts| before_publish(meta, base, Some(facts), mode));
            PublishPlan::File { rel, before }
        }
    }
}

impl Share {
    pub(super) fn facts_for_key(&self, key: &str) -> Option<FileFacts> {
        match key_to_relpath(key, &self.ctx.cfg.prefix) {
            Ok(KeyPath::File(rel)) => self.dir.file_facts(&rel).ok().flatten(),
            _ => None,
        }
    }

    /// Download `meta` (or adopt/skip it). `ticket` ties the job to an event batch entry.
    pub(super) fn fetch(
        &mut self,
        meta: ObjectMeta,
        sequencer: Option<String>,
        old: Option<LocalRecord>,
        ticket: usize,
        report: &mut SyncReport,
        progress: &mut Progress,
    ) -> Result<(), ShareError> {
        let name = self.ctx.cfg.name.clone();
        let plan = plan_publish(
            &self.dir,
            &self.ctx.cfg.prefix,
            &meta,
            old.as_ref(),
            self.ctx.cfg.consistency_check,
        );
        let (rel, before) = match plan {
            PublishPlan::File { rel, before } => (rel, before),
            PublishPlan::Folder(rel) => {
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
            PublishPlan::Skip(why) => {
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
        if let Some(decision) = before {
            let adopted = decision == BeforePublish::Adopt
                && self.adopt(&meta, &rel, sequencer.as_deref(), old.as_ref())?;
            if adopted {
                info!(
                    "share {name}: adopted {:?} ({} bytes): the file already there is this version",
                    meta.key, meta.size
                );
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
        let aside_suffix = self.two_way().then(|| self.conflict_suffix());
        self.pending_jobs.push(Job {
            ticket,
            meta,
            rel,
            sequencer,
            old,
            aside_suffix,
        });
        // Group commit: flush a full batch, or at once while workers would otherwise idle.
        if self.pending_jobs.len() >= JOB_BATCH || self.pool.in_flight < self.pool.limit() {
            self.flush_jobs(report, progress)?;
        }
        Ok(())
    }

    /// Record the file at `rel` as `meta` without downloading it, if its content is proven to
    /// be that version ([`adoption_proven`]). A listing carries no CRC-64, so the key is HEADed
    /// for it first (adoption is rare: a file that already has the version's size and time).
    pub(super) fn adopt(
        &mut self,
        meta: &ObjectMeta,
        rel: &Path,
        sequencer: Option<&str>,
        old: Option<&LocalRecord>,
    ) -> Result<bool, ShareError> {
        let Some((meta, crc64nvme)) = prove_adoption(
            &*self.ctx.store,
            &self.dir,
            meta,
            rel,
            &self.heartbeat,
            &self.ctx.cfg.name,
        )?
        else {
            return Ok(false);
        };
        let rec = record_after_download(&meta, crc64nvme, sequencer, old);
        self.state.put(rec)?;
        self.unsynced_records += 1;
        Ok(true)
    }

    /// Take finished downloads off the pool and record them (and, while a queue batch is
    /// applied, which messages' effects failed).
    pub(super) fn collect_results(
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
                    info!(
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
                    if self
                        .disk_full_reported
                        .is_none_or(|t| t.elapsed() >= DISK_FULL_REPEAT)
                    {
                        error!(
                            "share {name}: {why}; downloads fail until space is freed (the next full sync retries them)"
                        );
                        self.disk_full_reported = Some(Instant::now());
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
            if !ok {
                self.batch.fail_key(r.ticket);
            }
        }
        Ok(())
    }

    /// Remove a file the agent published, unless someone changed it since.
    pub(super) fn delete_local(
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
                        info!("share {name}: deleted {:?} ({} bytes)", rec.key, rec.size);
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
                    let _ = self.dir.remove_empty_dir(&rel);
                }
                report.deleted += 1;
            }
            Err(_) => {}
        }
        self.state.remove(&rec.key)?;
        self.unsynced_records += 1;
        Ok(())
    }
}
