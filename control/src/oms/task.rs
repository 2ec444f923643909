//! A running sync task: the agent's reconciliation with a bucket as the sink.
//!
//! One coordinator thread per running task, plus a bounded pool of copy workers during a pass.
//! A **pass** streams the source listing and merges it with the task's base records
//! (`oms_objects`: the source version last settled per key) through the agent's
//! [`FullSyncMerge`] — the same sorted, O(1)-per-key merge the agent's full sync uses:
//!
//! - `Keep` (the source has not changed since it was settled): nothing, unless the destination
//!   listing (walked in the same key order) no longer has the object at that size — then it is
//!   copied again;
//! - `Download` (new or changed at the source): a candidate, decided against the destination
//!   object (from the destination listing, no HEAD needed) by `object_overwrite_mode` and
//!   `consistency_check`: absent → copy; `NO_OVERWRITE` → skip; `FULL_OVERWRITE` → copy;
//!   `crc64` / `CRC64_COMPARISON_OVERWRITE` → HEAD both, equal CRC-64 → skip (no CRC on either
//!   side: size/last-modified); otherwise same size and destination not older → skip;
//! - `Delete` (gone from the source): the base record is dropped; the destination keeps its
//!   copy (a sync task never deletes in the destination).
//!
//! The first pass is the full synchronization; after it, passes repeat every
//! `relist_interval` (incremental: only new or changed keys cost more than a listing entry),
//! and keys named by `CreateSyncEvents` are synchronized at once, also in the middle of a pass.
//!
//! **A copy** streams: objects up to `multipart_threshold` are read into one buffer of at most
//! that size and sent in one PUT; larger ones go part by part (FULL_OBJECT CRC-64/NVME
//! multipart, two `part_size` buffers: the next part is read while the previous one uploads).
//! Memory is bounded by workers × 16 MiB (defaults), not by object size. The
//! CRC-64/NVME of the bytes read is compared with the source's `x-amz-checksum-crc64nvme` (when
//! the source has one) before the object becomes visible, is sent with the PUT (or the
//! Complete) so the destination checks it, and is compared again with what the destination
//! confirms: the PUT answer's `x-amz-checksum-crc64nvme`, or else (and after every multipart
//! upload) a HEAD. Content-Type is always copied; with `enable_metadata_migration` also
//! `x-amz-meta-*`, Cache-Control, Content-Disposition, Content-Encoding, Content-Language and
//! Expires. An archived source object (`InvalidObjectState`) is restored (RestoreObject, one
//! day) when `enable_restore` and copied by a later pass once readable; without it, it counts as
//! a FAILURE with that reason.
//!
//! **Statistics**: each decided object counts one REQUEST and exactly one of SUCCESS, FAILURE
//! or SKIP; SIZE adds the bytes of each SUCCESS. A failed object is not settled, so the next
//! pass tries it again (and counts it again).

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sgw_agent::cache::crc64;
use sgw_agent::cloud::sigv4::Credentials;
use sgw_agent::cloud::{CloudError, ListPage};
use sgw_agent::engine::SyncAction;
use sgw_agent::engine::plan::FullSyncMerge;
use sgw_agent::model::{ConsistencyCheck, LocalRecord, ObjectMeta};

use super::bucket::Bucket;
use super::db::{Counters, TaskKeys, TaskRow, TaskSpec};
use super::endpoints::Resolved;
use crate::store::Store;

/// How tasks run (see the module docs).
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub relist_interval: Duration,
    pub workers: usize,
    pub multipart_threshold: u64,
    pub part_size: usize,
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings {
            relist_interval: Duration::from_secs(5),
            workers: 4,
            multipart_threshold: 16 * 1024 * 1024,
            part_size: 8 * 1024 * 1024,
        }
    }
}

/// A running task, as the service holds it.
pub struct Running {
    pub stop: Arc<AtomicBool>,
    pub events: Sender<Vec<String>>,
    pub thread: JoinHandle<()>,
}

/// Everything the task thread needs.
pub struct Launch {
    pub row: TaskRow,
    pub keys: TaskKeys,
    pub source: Resolved,
    pub destination: Resolved,
}

/// The bucket a task reads: Tencent COS names buckets `name-appid`.
pub fn source_bucket_name(spec: &TaskSpec) -> String {
    match &spec.app_id {
        Some(app)
            if spec.src_cloud_type == "Tencent"
                && !spec.src_bucket.ends_with(&format!("-{app}")) =>
        {
            format!("{}-{app}", spec.src_bucket)
        }
        _ => spec.src_bucket.clone(),
    }
}

pub fn spawn(store: Arc<Store>, settings: RunSettings, launch: Launch) -> Result<Running, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let spec = &launch.row.spec;
    let source = Bucket::new(
        &launch.source,
        &spec.src_region,
        &source_bucket_name(spec),
        Credentials {
            access_key_id: launch.keys.src_ak.clone(),
            secret_access_key: launch.keys.src_sk.clone(),
            session_token: None,
        },
        Arc::clone(&stop),
    )?;
    let destination = Bucket::new(
        &launch.destination,
        &spec.dst_region,
        &spec.dst_bucket,
        Credentials {
            access_key_id: launch.keys.dst_ak.clone(),
            secret_access_key: launch.keys.dst_sk.clone(),
            session_token: None,
        },
        Arc::clone(&stop),
    )?;
    let (tx, rx) = std::sync::mpsc::channel();
    let task = TaskRun {
        id: launch.row.id.clone(),
        spec: launch.row.spec.clone(),
        store,
        settings,
        source,
        destination,
        stop: Arc::clone(&stop),
        in_flight: Mutex::new(HashSet::new()),
    };
    let thread = std::thread::Builder::new()
        .name(format!("oms-{}", launch.row.id))
        .spawn(move || task.run(&rx))
        .map_err(|e| format!("cannot start the task thread: {e}"))?;
    Ok(Running {
        stop,
        events: tx,
        thread,
    })
}

/// Where the destination stands on a key.
enum Dest {
    Known(Option<ObjectMeta>),
    Unknown,
}

struct Job {
    source: ObjectMeta,
    destination: Dest,
    /// Settled, but gone from the destination: copy again even though the base matches.
    recopy: bool,
}

enum Outcome {
    Success {
        bytes: u64,
    },
    Skip,
    Failure(String),
    /// Not decided yet (an archived object being restored).
    Pending(String),
}

struct TaskRun {
    id: String,
    spec: TaskSpec,
    store: Arc<Store>,
    settings: RunSettings,
    source: Bucket,
    destination: Bucket,
    stop: Arc<AtomicBool>,
    /// Keys a worker is on: an event and a pass naming the same key do it once.
    in_flight: Mutex<HashSet<String>>,
}

/// A bucket listing as an iterator of keys in order (stops after the first error).
struct Listing<'a> {
    bucket: &'a Bucket,
    page: std::vec::IntoIter<ObjectMeta>,
    next: Option<String>,
    done: bool,
}

impl<'a> Listing<'a> {
    fn new(bucket: &'a Bucket) -> Self {
        Listing {
            bucket,
            page: Vec::new().into_iter(),
            next: None,
            done: false,
        }
    }
}

impl Iterator for Listing<'_> {
    type Item = Result<ObjectMeta, CloudError>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(m) = self.page.next() {
                return Some(Ok(m));
            }
            if self.done {
                return None;
            }
            match self.bucket.list_page(self.next.as_deref()) {
                Ok(ListPage { objects, next }) => {
                    self.done = next.is_none();
                    self.next = next;
                    self.page = objects.into_iter();
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Walks the destination listing forward to answer "what is at `key`" for ascending keys.
struct DestCursor<'a> {
    listing: Listing<'a>,
    current: Option<ObjectMeta>,
    failed: bool,
}

impl DestCursor<'_> {
    fn at(&mut self, key: &str) -> Dest {
        if self.failed {
            return Dest::Unknown;
        }
        loop {
            match &self.current {
                Some(m) if m.key.as_str() >= key => {
                    return Dest::Known((m.key == key).then(|| m.clone()));
                }
                _ => {}
            }
            match self.listing.next() {
                None => {
                    self.current = None;
                    return Dest::Known(None);
                }
                Some(Ok(m)) => self.current = Some(m),
                Some(Err(e)) => {
                    log::warn!("listing the destination failed ({e}); falling back to HEAD");
                    self.failed = true;
                    return Dest::Unknown;
                }
            }
        }
    }
}

fn slot_now() -> i64 {
    let ms = crate::router::unix_now().saturating_mul(1000);
    ms - ms.rem_euclid(super::SLOT_MS)
}

impl TaskRun {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn run(&self, events: &Receiver<Vec<String>>) {
        log::info!(
            "OMS task {} running: {}/{} -> {}/{}",
            self.id,
            self.spec.src_region,
            self.spec.src_bucket,
            self.spec.dst_region,
            self.spec.dst_bucket
        );
        while !self.stopped() {
            let started = Instant::now();
            self.pass(events);
            log::debug!("OMS task {}: pass took {:?}", self.id, started.elapsed());
            let deadline = Instant::now() + self.settings.relist_interval;
            while !self.stopped() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match events.recv_timeout(left.min(Duration::from_millis(250))) {
                    Ok(keys) => self.sync_keys_inline(&keys),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        }
        log::info!("OMS task {} stopped", self.id);
    }

    fn pass(&self, events: &Receiver<Vec<String>>) {
        let records = match self.store.oms_objects(&self.id) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("OMS task {}: {e}", self.id);
                return;
            }
        };
        let merge = FullSyncMerge::new(
            Listing::new(&self.source),
            records.into_iter().map(Ok::<_, Infallible>),
            ConsistencyCheck::SizeLastModified,
        );
        let mut dest = DestCursor {
            listing: Listing::new(&self.destination),
            current: None,
            failed: false,
        };
        let workers = self.settings.workers.max(1);
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(workers * 2);
        let rx = Mutex::new(rx);
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    loop {
                        let job = {
                            let guard = rx.lock().unwrap_or_else(|p| p.into_inner());
                            guard.recv()
                        };
                        let Ok(job) = job else { return };
                        if !self.stopped() {
                            self.work(job);
                        }
                    }
                });
            }
            for action in merge {
                if self.stopped() {
                    break;
                }
                self.forward_events(events, &tx);
                let job = match action {
                    Err(e) => {
                        log::warn!("OMS task {}: pass ended early: {e}", self.id);
                        break;
                    }
                    Ok(SyncAction::Keep(record)) => match dest.at(&record.key) {
                        Dest::Known(Some(d)) if d.size == record.size => None,
                        Dest::Unknown => None,
                        Dest::Known(_) => Some(Job {
                            source: meta_of(&record),
                            destination: Dest::Known(None),
                            recopy: true,
                        }),
                    },
                    Ok(SyncAction::Download(meta, _) | SyncAction::Verify(meta, _)) => {
                        let d = dest.at(&meta.key);
                        Some(Job {
                            source: meta,
                            destination: d,
                            recopy: false,
                        })
                    }
                    Ok(SyncAction::Delete(record)) => {
                        if let Err(e) = self.store.oms_remove_object(&self.id, &record.key) {
                            log::warn!("OMS task {}: {e}", self.id);
                        }
                        None
                    }
                };
                if let Some(job) = job
                    && send_unless_stopped(&tx, job, &self.stop).is_err()
                {
                    break;
                }
            }
            self.forward_events(events, &tx);
            drop(tx);
        });
    }

    /// Keys from CreateSyncEvents during a pass go to the workers at once.
    fn forward_events(&self, events: &Receiver<Vec<String>>, tx: &SyncSender<Job>) {
        loop {
            match events.try_recv() {
                Ok(keys) => {
                    for key in keys {
                        if let Some(job) = self.event_job(&key) {
                            let _ = send_unless_stopped(tx, job, &self.stop);
                        }
                    }
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            }
        }
    }

    fn sync_keys_inline(&self, keys: &[String]) {
        for key in keys {
            if self.stopped() {
                return;
            }
            if let Some(job) = self.event_job(key) {
                self.work(job);
            }
        }
    }

    /// A job for a key named by an event (`None` when it is settled as a failure right away).
    fn event_job(&self, key: &str) -> Option<Job> {
        match self.source.head(key) {
            Ok(Some(meta)) => Some(Job {
                source: meta,
                destination: Dest::Unknown,
                recopy: false,
            }),
            Ok(None) => {
                self.count(
                    &Outcome::Failure("no such object in the source bucket".into()),
                    key,
                );
                None
            }
            Err(e) => {
                self.count(
                    &Outcome::Failure(format!("HEAD on the source failed: {e}")),
                    key,
                );
                None
            }
        }
    }

    fn count(&self, outcome: &Outcome, key: &str) {
        let add: Counters = match outcome {
            Outcome::Success { bytes } => [1, 1, 0, 0, i64::try_from(*bytes).unwrap_or(i64::MAX)],
            Outcome::Skip => [1, 0, 0, 1, 0],
            Outcome::Failure(why) => {
                log::warn!("OMS task {}: {key:?} failed: {why}", self.id);
                [1, 0, 1, 0, 0]
            }
            Outcome::Pending(why) => {
                log::info!("OMS task {}: {key:?}: {why}", self.id);
                return;
            }
        };
        if let Err(e) = self.store.oms_add_stats(&self.id, slot_now(), add) {
            log::warn!("OMS task {}: statistics not recorded: {e}", self.id);
        }
    }

    fn settle(&self, meta: &ObjectMeta, crc: Option<u64>) {
        let record = LocalRecord {
            key: meta.key.clone(),
            size: meta.size,
            etag: meta.etag.clone(),
            last_modified: meta.last_modified,
            crc64nvme: crc.unwrap_or(0),
            sequencer: None,
        };
        if let Err(e) = self.store.oms_put_object(&self.id, &record) {
            log::warn!("OMS task {}: {e}", self.id);
        }
    }

    fn work(&self, job: Job) {
        let key = job.source.key.clone();
        if !self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone())
        {
            return;
        }
        self.work_on(job);
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }

    fn work_on(&self, job: Job) {
        let key = job.source.key.clone();
        // Settled already at this very version (by an event, or the pass before): nothing to do.
        match self.store.oms_object(&self.id, &key) {
            Ok(Some((size, etag, last_modified)))
                if size == job.source.size
                    && last_modified == job.source.last_modified
                    && (etag.is_none() || job.source.etag.is_none() || etag == job.source.etag)
                    && !job.recopy =>
            {
                return;
            }
            _ => {}
        }
        let outcome = match self.decide(&job) {
            Err(why) => Outcome::Failure(why),
            Ok(Some(crc)) => {
                self.settle(&job.source, crc);
                Outcome::Skip
            }
            Ok(None) => match self.copy(&key) {
                Ok((meta, crc, bytes)) => {
                    self.settle(&meta, Some(crc));
                    Outcome::Success { bytes }
                }
                Err(o) => o,
            },
        };
        self.count(&outcome, &key);
    }

    /// `Ok(Some(crc))`: skip (the destination already has it); `Ok(None)`: copy.
    fn decide(&self, job: &Job) -> Result<Option<Option<u64>>, String> {
        let key = &job.source.key;
        let existing = match &job.destination {
            Dest::Known(d) => d.clone(),
            Dest::Unknown => self
                .destination
                .head(key)
                .map_err(|e| format!("HEAD on the destination failed: {e}"))?,
        };
        let Some(d) = existing else { return Ok(None) };
        let crc_mode = self.spec.consistency_check == "crc64"
            || self.spec.object_overwrite_mode == "CRC64_COMPARISON_OVERWRITE";
        match self.spec.object_overwrite_mode.as_str() {
            "NO_OVERWRITE" => return Ok(Some(d.crc64nvme)),
            "FULL_OVERWRITE" => return Ok(None),
            _ => {}
        }
        if crc_mode {
            let src = match job.source.crc64nvme {
                Some(c) => Some(c),
                None => self
                    .source
                    .head(key)
                    .map_err(|e| format!("HEAD on the source failed: {e}"))?
                    .and_then(|m| m.crc64nvme),
            };
            let dst = match d.crc64nvme {
                Some(c) => Some(c),
                None => self
                    .destination
                    .head(key)
                    .map_err(|e| format!("HEAD on the destination failed: {e}"))?
                    .and_then(|m| m.crc64nvme),
            };
            if let (Some(s), Some(t)) = (src, dst) {
                return Ok((s == t && d.size == job.source.size).then_some(Some(s)));
            }
        }
        // size_last_modified (also the crc64 fallback, and what transmission means for
        // objects whose size the source states, which every S3 object's is).
        let same = d.size == job.source.size && d.last_modified >= job.source.last_modified;
        Ok(same.then_some(d.crc64nvme))
    }

    fn copy_headers(
        &self,
        content_type: Option<&str>,
        metadata: &[(String, String)],
        class: Option<&str>,
    ) -> Vec<(String, String)> {
        let mut h = Vec::new();
        if let Some(ct) = content_type {
            h.push(("content-type".to_string(), ct.to_string()));
        }
        if self.spec.enable_metadata_migration {
            h.extend(metadata.iter().cloned());
        }
        let storage = match self.spec.dst_storage_policy.as_str() {
            "IA" => Some("STANDARD_IA"),
            "ARCHIVE" => Some("GLACIER"),
            "DEEP_ARCHIVE" => Some("DEEP_ARCHIVE"),
            "SRC_STORAGE_MAPPING" => match class {
                Some("STANDARD_IA" | "ONEZONE_IA" | "WARM") => Some("STANDARD_IA"),
                Some("GLACIER" | "GLACIER_IR" | "COLD") => Some("GLACIER"),
                Some("DEEP_ARCHIVE") => Some("DEEP_ARCHIVE"),
                _ => None,
            },
            _ => None,
        };
        if let Some(s) = storage {
            h.push(("x-amz-storage-class".to_string(), s.to_string()));
        }
        h
    }

    /// GET from the source, PUT (or multipart) to the destination, CRC-64 checked three times.
    fn copy(&self, key: &str) -> Result<(ObjectMeta, u64, u64), Outcome> {
        let mut download = match self.source.get(key) {
            Ok(d) => d,
            Err(CloudError::Service { code, .. }) if code == "InvalidObjectState" => {
                if self.spec.enable_restore {
                    return Err(match self.source.restore(key) {
                        Ok(()) => Outcome::Pending(
                            "archived at the source: restore requested, copied by a later pass once readable".into(),
                        ),
                        Err(CloudError::Service { code, .. }) if code == "RestoreAlreadyInProgress" => {
                            Outcome::Pending("archived at the source: restore in progress".into())
                        }
                        Err(e) => Outcome::Failure(format!("archived at the source and the restore failed: {e}")),
                    });
                }
                return Err(Outcome::Failure(
                    "archived at the source and enable_restore is false".into(),
                ));
            }
            Err(e) if e.is_not_found() => {
                return Err(Outcome::Failure("gone from the source bucket".into()));
            }
            Err(e) => return Err(Outcome::Failure(format!("GET on the source failed: {e}"))),
        };
        let headers = self.copy_headers(
            download.content_type.as_deref(),
            &download.metadata,
            download.storage_class.as_deref(),
        );
        let size = download.meta.size;
        let fail = |what: String| Outcome::Failure(what);
        let crc = if size <= self.settings.multipart_threshold {
            let mut buffer = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            std::io::Read::read_to_end(&mut download.body, &mut buffer)
                .map_err(|e| fail(format!("reading the source object: {e}")))?;
            if buffer.len() as u64 != size {
                return Err(fail("the source object was cut short".into()));
            }
            let crc = crc64::nvme(&buffer);
            if let Some(expected) = download.meta.crc64nvme
                && expected != crc
            {
                return Err(fail(format!(
                    "the bytes read do not match the source's CRC-64/NVME ({crc:016x} != {expected:016x})"
                )));
            }
            if self.stopped() {
                return Err(Outcome::Pending("the task was stopped".into()));
            }
            let confirmed = self
                .destination
                .put(key, &buffer, crc, &headers)
                .map_err(|e| fail(format!("PUT to the destination failed: {e}")))?;
            match confirmed {
                // The destination checked our CRC and says so: no HEAD needed.
                Some(c) if c == crc => return Ok((download.meta, crc, size)),
                Some(_) => {
                    return Err(fail(
                        "the destination confirmed a different CRC-64/NVME".into(),
                    ));
                }
                None => {}
            }
            crc
        } else {
            self.destination
                .put_multipart(
                    key,
                    &mut download.body,
                    size,
                    self.settings.part_size,
                    download.meta.crc64nvme,
                    &headers,
                )
                .map_err(|e| fail(format!("multipart upload to the destination failed: {e}")))?
        };
        match self.destination.head(key) {
            Ok(Some(h)) if h.size != size => {
                return Err(fail(format!(
                    "the destination holds {} bytes, not {size}",
                    h.size
                )));
            }
            Ok(Some(h)) if h.crc64nvme.is_some_and(|c| c != crc) => {
                return Err(fail(
                    "the destination's CRC-64/NVME differs from the source's".into(),
                ));
            }
            Ok(Some(_)) => {}
            Ok(None) => return Err(fail("the destination object vanished after the PUT".into())),
            Err(e) => return Err(fail(format!("HEAD on the destination failed: {e}"))),
        }
        Ok((download.meta, crc, size))
    }
}

fn meta_of(record: &LocalRecord) -> ObjectMeta {
    ObjectMeta {
        key: record.key.clone(),
        size: record.size,
        etag: record.etag.clone(),
        last_modified: record.last_modified,
        crc64nvme: None,
    }
}

/// Sends unless the task stops first (the workers may be busy; never block a stop).
fn send_unless_stopped(tx: &SyncSender<Job>, mut job: Job, stop: &AtomicBool) -> Result<(), ()> {
    loop {
        match tx.try_send(job) {
            Ok(()) => return Ok(()),
            Err(std::sync::mpsc::TrySendError::Full(j)) => {
                if stop.load(Ordering::Relaxed) {
                    return Err(());
                }
                job = j;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return Err(()),
        }
    }
}
