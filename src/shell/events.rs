//! One received batch of queue messages: parsed, grouped by key, each key HEADed once and its
//! change applied; a message is deleted only once its effects are durable.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use log::{debug, warn};

use super::{
    MAX_RECEIVES, Share, ShareError, SyncReport, VISIBILITY_EXTEND_AFTER, VISIBILITY_EXTENSION_SECS,
};
use crate::cloud::events::{ParsedMessage, parse_message};
use crate::cloud::{EventQueue, QueueMessage};
use crate::engine::events::{EventDecision, HeadDecision, after_head, on_event};
use crate::engine::progress::Progress;
use crate::status::ShareState;

impl Share {
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
