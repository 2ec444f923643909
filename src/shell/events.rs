//! One received batch of queue messages: parsed, grouped by key, each key HEADed once and its
//! change applied; a message is deleted only once its effects are durable.

use std::time::{Duration, Instant};

use log::{debug, info, warn};

use super::{Share, ShareError, SyncReport, VISIBILITY_EXTEND_AFTER, VISIBILITY_EXTENSION_SECS};
use crate::cloud::events::{ParsedMessage, parse_message};
use crate::cloud::{EventQueue, QueueMessage};
use crate::engine::batch::{Batch, Fate};
use crate::engine::events::{HeadDecision, after_head};
use crate::engine::progress::Progress;
use crate::format::human_bytes;
use crate::status::ShareState;

/// A batch of at least this many messages gets a summary line besides its per-file lines.
const BATCH_SUMMARY_MIN: usize = 5;

impl Share {
    /// Apply one received batch; delete each message once its effects are durable. The
    /// bookkeeping (grouping, sequencers, which message may go) is the engine's [`Batch`].
    pub fn apply_messages(
        &mut self,
        queue: &dyn EventQueue,
        msgs: Vec<QueueMessage>,
    ) -> Result<(), ShareError> {
        let name = self.ctx.cfg.name.clone();
        let started = Instant::now();
        let mut extended = false;
        let mut batch = Batch::new();
        for m in &msgs {
            let events = match parse_message(&m.body) {
                Ok(ParsedMessage::Events(events)) => events,
                Ok(ParsedMessage::TestEvent) => {
                    debug!("share {name}: s3:TestEvent received; removing it");
                    Vec::new()
                }
                Ok(ParsedMessage::Ignored(why)) => {
                    debug!("share {name}: message {} ignored: {why}", m.id);
                    Vec::new()
                }
                Err(e) => {
                    match batch.add_malformed(m.receive_count) {
                        Fate::DiscardMalformed => warn!(
                            "share {name}: malformed message {} removed after {} receives: {e}",
                            m.id, m.receive_count
                        ),
                        _ => warn!(
                            "share {name}: malformed message {} (receive {}): {e}",
                            m.id, m.receive_count
                        ),
                    }
                    continue;
                }
            };
            batch.add(m.receive_count, events);
        }
        // Pool jobs of this batch carry their key's index; their failures land in the batch.
        self.batch = batch;
        let mut report = SyncReport::default();
        let mut progress = Progress::default();
        let mode = self.ctx.cfg.consistency_check;
        for ki in 0..self.batch.keys().len() {
            self.heartbeat.beat();
            let key = self.batch.keys()[ki].key.clone();
            let local = self.state.get(&key)?;
            if !self.batch.keys()[ki].needs_head(&self.ctx.cfg.prefix, local.as_ref()) {
                continue;
            }
            let sequencer = self.batch.keys()[ki].sequencer.clone();
            let head = match self.ctx.store.head(&key) {
                Ok(h) => h,
                Err(e) => {
                    warn!("share {name}: HEAD {key:?} failed: {e}; will retry on redelivery");
                    self.batch.fail_key(ki);
                    continue;
                }
            };
            self.status.events_applied += 1;
            if self.two_way() {
                // One reconciliation for every direction: our own upload's echo finds
                // bucket == base == local and does nothing.
                let before_failed = report.failed;
                match self.reconcile_key(&key, Some(head), None, &mut report, &mut progress) {
                    Ok(()) if report.failed == before_failed => {}
                    Ok(()) => self.batch.fail_key(ki),
                    Err(ShareError::Cloud(e)) => {
                        warn!("share {name}: {key:?}: {e}; will retry on redelivery");
                        self.batch.fail_key(ki);
                    }
                    Err(e) => return Err(e),
                }
                continue;
            }
            let file = self.facts_for_key(&key);
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
                    self.fetch(meta, sequencer, local, ki, &mut report, &mut progress)?;
                    if report.failed > before_failed {
                        self.batch.fail_key(ki);
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
        let batch = std::mem::take(&mut self.batch);
        // Effects are durable: now the messages may go.
        let mut handles = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            let fate = batch.fate(i);
            match fate {
                Fate::GiveUp => warn!(
                    "share {name}: message {} failed {} times; removed, the next full reconcile repairs its keys",
                    m.id, m.receive_count
                ),
                Fate::Done | Fate::Redeliver | Fate::DiscardMalformed => {}
            }
            if matches!(fate, Fate::GiveUp | Fate::DiscardMalformed) {
                self.status.messages_discarded += 1;
            }
            if fate.deletes() {
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
        // Each file has its own line; a big batch also gets one line for the whole of it.
        if msgs.len() >= BATCH_SUMMARY_MIN {
            info!(
                "share {name}: batch of {} message(s) in {:.1}s: {} published ({}), {} deleted, {} adopted, {} skipped, {} failed",
                msgs.len(),
                started.elapsed().as_secs_f64(),
                report.downloaded,
                human_bytes(report.bytes_downloaded),
                report.deleted,
                report.adopted,
                report.skipped,
                report.failed
            );
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

    pub(super) fn drain_batch(
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
