//! `sync --dry-run`: the full sync's decisions, sent to a [`PlanSink`] instead of carried out.
//!
//! The decisions are the same calls as in [`super::full_sync`]: the listing merged with the
//! state ([`FullSyncMerge`]), [`after_head`] for what the listing cannot settle,
//! [`plan_publish`] (the path and the engine's `before_publish`) and [`prove_adoption`] for
//! the file already at a path, [`classify`] for a delete, [`is_mass_delete`] for the guard. What differs is the effect:
//! nothing is written — the share is opened without creating `.sgw/`, the state is read
//! without replaying into a writer ([`StateView`]), the listing and delete spools live in the
//! temporary directory (unlinked at once), and no record, status or file changes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::deletes::DeleteSpool;
use super::listing::SpooledListing;
use super::local::{PublishPlan, plan_publish, prove_adoption};
use super::{ShareContext, ShareError};
use crate::cache::paths::{KeyPath, key_to_relpath};
use crate::cache::share_dir::ShareDir;
use crate::cache::state::StateView;
use crate::daemon::Heartbeat;
use crate::engine::SyncAction;
use crate::engine::events::{HeadDecision, after_head};
use crate::engine::guard::is_mass_delete;
use crate::engine::local::{BeforePublish, LocalFile, classify};
use crate::engine::plan::{FullSyncMerge, MergeError};
use crate::model::{LocalRecord, ObjectMeta};

/// One decision of a full sync, as a dry run reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Planned {
    /// Fetched from the bucket (new, changed, or missing locally).
    Download { key: String, size: u64 },
    /// The file already there is proven to be this version: recorded, not downloaded.
    Adopt { key: String, size: u64 },
    /// A local file that is not the agent's (or was changed locally) is at the key's path: it
    /// is kept under a conflict name, then the object is downloaded.
    Conflict { key: String, path: PathBuf },
    /// The bucket no longer has it: the agent's file is removed.
    Delete { key: String, size: u64 },
    /// The bucket no longer has it, but the file was changed locally: left in place.
    LeftInPlace { key: String },
    /// The key cannot be a safe local path: skipped, as the sync would.
    Skip { key: String, why: String },
    /// The mass-delete guard would refuse these deletes (none would be done).
    RefuseDeletes { deletes: u64, files: u64 },
}

/// Where a dry run's decisions go.
pub trait PlanSink {
    fn planned(&self, share: &str, what: &Planned);
}

/// Counts of a dry run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DryRunReport {
    pub downloads: u64,
    pub download_bytes: u64,
    pub adoptions: u64,
    pub conflicts: u64,
    pub deletes: u64,
    pub left_in_place: u64,
    pub skipped: u64,
    pub unchanged: u64,
    /// Deletes the guard would refuse (0 when it would not).
    pub refused_deletes: u64,
}

struct Planner<'a> {
    ctx: &'a ShareContext,
    dir: ShareDir,
    sink: &'a dyn PlanSink,
    report: DryRunReport,
    heartbeat: Heartbeat,
}

impl Planner<'_> {
    fn emit(&mut self, what: Planned) {
        match &what {
            Planned::Download { size, .. } => {
                self.report.downloads += 1;
                self.report.download_bytes += size;
            }
            Planned::Adopt { .. } => self.report.adoptions += 1,
            Planned::Conflict { .. } => self.report.conflicts += 1,
            Planned::Delete { .. } => self.report.deletes += 1,
            Planned::LeftInPlace { .. } => self.report.left_in_place += 1,
            Planned::Skip { .. } => self.report.skipped += 1,
            Planned::RefuseDeletes { deletes, .. } => self.report.refused_deletes = *deletes,
        }
        self.sink.planned(&self.ctx.cfg.name, &what);
    }

    fn rel(&self, key: &str) -> Result<KeyPath, String> {
        key_to_relpath(key, &self.ctx.cfg.prefix).map_err(|e| e.to_string())
    }

    fn facts(&self, rel: &Path) -> Option<crate::engine::FileFacts> {
        self.dir.file_facts(rel).ok().flatten()
    }

    /// What [`super::Share::fetch`] would do with `meta`: the same [`plan_publish`].
    fn fetch(&mut self, meta: ObjectMeta, base: Option<LocalRecord>) -> Result<(), ShareError> {
        let plan = plan_publish(
            &self.dir,
            &self.ctx.cfg.prefix,
            &meta,
            base.as_ref(),
            self.ctx.cfg.consistency_check,
        );
        match plan {
            // A folder marker: a directory, nothing to download.
            PublishPlan::Folder(_) => {}
            PublishPlan::Skip(why) => self.emit(Planned::Skip { key: meta.key, why }),
            PublishPlan::File {
                before: None | Some(BeforePublish::Publish),
                ..
            } => self.emit(Planned::Download {
                key: meta.key,
                size: meta.size,
            }),
            PublishPlan::File {
                rel,
                before: Some(BeforePublish::Adopt),
            } if prove_adoption(
                &*self.ctx.store,
                &self.dir,
                &meta,
                &rel,
                &self.heartbeat,
                &self.ctx.cfg.name,
            )?
            .is_some() =>
            {
                self.emit(Planned::Adopt {
                    key: meta.key,
                    size: meta.size,
                })
            }
            PublishPlan::File { rel, .. } => {
                self.emit(Planned::Conflict {
                    key: meta.key.clone(),
                    path: rel,
                });
                self.emit(Planned::Download {
                    key: meta.key,
                    size: meta.size,
                });
            }
        }
        Ok(())
    }

    fn action(&mut self, action: SyncAction, deletes: &mut DeleteSpool) -> Result<(), ShareError> {
        let mode = self.ctx.cfg.consistency_check;
        match action {
            SyncAction::Keep(rec) => {
                let missing = match self.rel(&rec.key) {
                    Ok(KeyPath::File(rel)) => self.facts(&rel).is_none(),
                    _ => false,
                };
                if !missing {
                    self.report.unchanged += 1;
                } else if let Some(meta) = self.ctx.store.head(&rec.key)? {
                    self.fetch(meta, Some(rec))?;
                }
                // Missing and gone from the bucket: only the record is forgotten.
            }
            SyncAction::Download(meta, base) => self.fetch(meta, base)?,
            SyncAction::Verify(meta, rec) => {
                let head = self.ctx.store.head(&meta.key)?;
                let file = match self.rel(&meta.key) {
                    Ok(KeyPath::File(rel)) => self.facts(&rel),
                    _ => None,
                };
                match after_head(head.as_ref(), Some(&rec), file, mode) {
                    HeadDecision::Download(m) => self.fetch(m, Some(rec))?,
                    HeadDecision::Delete(r) => deletes.push(&r.key)?,
                    HeadDecision::Nothing | HeadDecision::Adopt(_) => self.report.unchanged += 1,
                }
            }
            SyncAction::Delete(rec) => deletes.push(&rec.key)?,
        }
        Ok(())
    }
}

fn temp_spool(what: &str, share: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "sgw-dry-run-{}-{share}-{what}.spool",
        std::process::id()
    ))
}

/// Plan one full sync of `ctx`'s share and send each decision to `sink`. Changes nothing.
pub fn dry_run(ctx: &ShareContext, sink: &dyn PlanSink) -> Result<DryRunReport, ShareError> {
    let name = &ctx.cfg.name;
    let dir = ShareDir::open_for_reading(&ctx.cfg.path)?;
    let state = StateView::open(&ctx.state_dir)?;
    let files_before = state.len();
    let (remote, _totals) = SpooledListing::open(
        Arc::clone(&ctx.store),
        &ctx.cfg.prefix,
        &ctx.shutdown,
        &temp_spool("listing", name),
    )?;
    let mut deletes = DeleteSpool::create(&temp_spool("deletes", name))?;
    let local = state.iter_sorted()?.map(|r| r.map_err(ShareError::State));
    let mut planner = Planner {
        ctx,
        dir,
        sink,
        report: DryRunReport::default(),
        heartbeat: Heartbeat::new(),
    };
    for action in FullSyncMerge::new(remote, local, ctx.cfg.consistency_check) {
        if ctx.shutdown.is_triggered() {
            return Err(ShareError::Stopped);
        }
        let action = action.map_err(|e| match e {
            MergeError::Remote(e) | MergeError::Local(e) => e,
            other => ShareError::Plan(format!("full sync stopped: {other}")),
        })?;
        planner.action(action, &mut deletes)?;
    }
    let n = deletes.len();
    if n > 0 && !ctx.cfg.allow_mass_delete && is_mass_delete(n, files_before, ctx.cfg.delete_limits)
    {
        planner.emit(Planned::RefuseDeletes {
            deletes: n,
            files: files_before,
        });
        return Ok(planner.report);
    }
    for key in deletes.into_keys()? {
        let key = key?;
        let Some(rec) = state.get(&key)? else {
            continue;
        };
        let file = match planner.rel(&rec.key) {
            Ok(KeyPath::File(rel)) => planner.facts(&rel),
            _ => None,
        };
        if classify(Some(&rec), file) == LocalFile::Changed {
            planner.emit(Planned::LeftInPlace { key: rec.key });
        } else {
            planner.emit(Planned::Delete {
                key: rec.key,
                size: rec.size,
            });
        }
    }
    Ok(planner.report)
}
