//! Property tests of the sans-IO engine against an in-memory world.
//!
//! The world: a bucket (key → content, Last-Modified) that is mutated by puts and deletes, each
//! emitting an S3 event (with a sequencer like AWS, or without one like moto); a queue that
//! delivers those events late, reordered, more than once, and (with faults) loses some; and
//! the agent's side: files at their final paths, staged downloads, and a state store whose
//! journal has a durable part and a volatile (not yet fsynced) part. A small "shell" in this
//! file plays the I/O role and asks the engine for every decision. Crashes can hit any step:
//! the volatile journal is lost, staged downloads are discarded, a file can be published
//! without its record.
//!
//! Properties:
//! 1. with no faults, once every event has been processed the share equals the bucket;
//! 2. with crashes and lost events, after restart + a full sync the share equals the bucket and
//!    no file the agent did not publish was ever deleted; late events afterwards keep it so;
//! 3. a second full sync right after a converged one transfers and deletes nothing;
//! 4. `FullSyncMerge` over sorted inputs yields exactly one action per key, in order, matching
//!    `plan_key`, never `Delete` for a key the listing has; disordered or duplicated input is an
//!    error that ends the merge.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use sgw_agent::engine::events::{
    EventDecision, HeadDecision, after_head, on_event, publish_completed, record_after_download,
};
use sgw_agent::engine::local::{BeforePublish, before_publish};
use sgw_agent::engine::plan::{FullSyncMerge, MergeError, Side, plan_key};
use sgw_agent::engine::{FileFacts, SyncAction};
use sgw_agent::model::{BucketEvent, ConsistencyCheck, EventKind, LocalRecord, ObjectMeta};

const PREFIX: &str = "share/";
/// Bucket keys the mutations touch; the last one is outside the share's prefix.
const KEYS: [&str; 5] = [
    "share/a",
    "share/b c",
    "share/dir/é",
    "share/z+1",
    "other/x",
];
/// Files a LAN user put into the share; the bucket never has these keys.
const USER_FILES: [&str; 2] = ["share/dir/user.doc", "share/notes.txt"];

// ---------------------------------------------------------------------------------------------
// Content: a small id stands for the bytes; size, ETag and CRC follow from it. Sizes collide on
// purpose (0 and 3 have the same size) so that size alone cannot tell versions apart.

fn size_of(content: u8) -> u64 {
    u64::from(content % 3) * 10
}

fn etag_of(content: u8) -> String {
    format!("{:032x}", 0xABCD_0000_u64 + u64::from(content))
}

fn crc_of(content: u8) -> u64 {
    0xC0FF_EE00 + u64::from(content)
}

// ---------------------------------------------------------------------------------------------
// The bucket.

#[derive(Clone, Copy, Debug)]
struct Object {
    content: u8,
    last_modified: i64,
}

#[derive(Debug, Default)]
struct Bucket {
    objects: BTreeMap<String, Object>,
    /// Seconds. Every mutation moves it on, so two versions never share a Last-Modified (the
    /// size_last_modified rule cannot tell same-second, same-size overwrites apart without
    /// ETags; that limit is covered by unit tests, not by convergence claims).
    clock: i64,
    next_sequencer: u64,
}

impl Bucket {
    fn meta(key: &str, object: Object, with_etag: bool, with_crc: bool) -> ObjectMeta {
        ObjectMeta {
            key: key.to_string(),
            size: size_of(object.content),
            etag: with_etag.then(|| etag_of(object.content)),
            last_modified: object.last_modified,
            crc64nvme: with_crc.then(|| crc_of(object.content)),
        }
    }

    fn head(&self, key: &str, with_crc: bool) -> Option<ObjectMeta> {
        self.objects
            .get(key)
            .map(|&object| Self::meta(key, object, true, with_crc))
    }

    /// ListObjectsV2 under `prefix`: byte order (BTreeMap<String> order), no CRCs.
    fn list(&self, prefix: &str, with_etags: bool) -> Vec<ObjectMeta> {
        self.objects
            .range(prefix.to_string()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, &object)| Self::meta(key, object, with_etags, false))
            .collect()
    }

    fn sequencer(&mut self, settings: &Settings) -> Option<String> {
        self.next_sequencer += 1;
        let n = self.next_sequencer;
        // Vary the length: a trailing digit on odd values still sorts correctly once the
        // shorter value is right-padded with '0'.
        settings.sequencers.then(|| {
            if n % 2 == 1 {
                format!("{n:016X}7")
            } else {
                format!("{n:016X}")
            }
        })
    }

    fn put(&mut self, key: &str, content: u8, settings: &Settings) -> BucketEvent {
        self.clock += 1;
        self.objects.insert(
            key.to_string(),
            Object {
                content,
                last_modified: self.clock,
            },
        );
        BucketEvent {
            bucket: "bkt".into(),
            key: key.to_string(),
            kind: EventKind::Created,
            event_name: "ObjectCreated:Put".into(),
            size: Some(size_of(content)),
            etag: Some(etag_of(content)),
            sequencer: self.sequencer(settings),
        }
    }

    /// AWS reports deletes of missing keys too; moto stays silent.
    fn delete(&mut self, key: &str, settings: &Settings) -> Option<BucketEvent> {
        self.clock += 1;
        let existed = self.objects.remove(key).is_some();
        (existed || settings.events_for_missing_deletes).then(|| BucketEvent {
            bucket: "bkt".into(),
            key: key.to_string(),
            kind: EventKind::Removed,
            event_name: "ObjectRemoved:Delete".into(),
            size: None,
            etag: None,
            sequencer: self.sequencer(settings),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The agent's disk and state store, and the shell that executes engine decisions.

#[derive(Clone, Copy, Debug)]
struct Settings {
    mode: ConsistencyCheck,
    sequencers: bool,
    listing_etags: bool,
    head_crc: bool,
    events_for_missing_deletes: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DiskFile {
    content: u8,
    size: u64,
    mtime: i64,
}

#[derive(Clone, Debug)]
enum JournalEntry {
    Put(LocalRecord),
    Remove(String),
}

#[derive(Debug)]
struct Crashed;

/// What a full sync did about one key, for property 3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    Nothing,
    Downloaded,
    Adopted,
    Deleted,
}

#[derive(Debug)]
struct Agent {
    settings: Settings,
    /// Files at their final paths in the share.
    files: BTreeMap<String, DiskFile>,
    /// Temp files of downloads in progress (never visible at a final path).
    staged: BTreeSet<String>,
    durable: BTreeMap<String, LocalRecord>,
    volatile: Vec<JournalEntry>,
    /// Durable publish intents: journalled (and fsynced) before the rename, superseded by the
    /// record. They let a restart recognise a file published just before a crash.
    intents: BTreeMap<String, ObjectMeta>,
    /// Crash when this many more crash points have been passed.
    crash_countdown: Option<u32>,
    /// Test bookkeeping, survives crashes: every key the agent ever published a file for.
    ever_published: BTreeSet<String>,
}

fn user_file(index: usize) -> DiskFile {
    let content = 100 + index as u8;
    DiskFile {
        content,
        size: 7 + index as u64,
        mtime: 3,
    }
}

impl Agent {
    fn new(settings: Settings) -> Self {
        let files = USER_FILES
            .iter()
            .enumerate()
            .map(|(i, key)| (key.to_string(), user_file(i)))
            .collect();
        Agent {
            settings,
            files,
            staged: BTreeSet::new(),
            durable: BTreeMap::new(),
            volatile: Vec::new(),
            intents: BTreeMap::new(),
            crash_countdown: None,
            ever_published: BTreeSet::new(),
        }
    }

    fn crash_point(&mut self) -> Result<(), Crashed> {
        match self.crash_countdown {
            Some(0) => {
                self.crash_countdown = None;
                Err(Crashed)
            }
            Some(n) => {
                self.crash_countdown = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// kill -9 and start again: unsynced journal entries are gone, temp files are cleaned up,
    /// published files stay.
    fn restart(&mut self) {
        self.volatile.clear();
        self.staged.clear();
        self.crash_countdown = None;
        for (key, intent) in std::mem::take(&mut self.intents) {
            if publish_completed(&intent, self.file_facts(&key)) {
                let Some(file) = self.files.get(&key).copied() else {
                    continue;
                };
                let old = self.durable.get(&key);
                let record = record_after_download(&intent, crc_of(file.content), None, old);
                self.durable.insert(key, record);
            }
        }
    }

    fn record(&self, key: &str) -> Option<LocalRecord> {
        for entry in self.volatile.iter().rev() {
            match entry {
                JournalEntry::Put(record) if record.key == key => return Some(record.clone()),
                JournalEntry::Remove(removed) if removed == key => return None,
                _ => {}
            }
        }
        self.durable.get(key).cloned()
    }

    fn records(&self) -> BTreeMap<String, LocalRecord> {
        let mut view = self.durable.clone();
        for entry in &self.volatile {
            match entry {
                JournalEntry::Put(record) => {
                    view.insert(record.key.clone(), record.clone());
                }
                JournalEntry::Remove(key) => {
                    view.remove(key);
                }
            }
        }
        view
    }

    /// fsync of the journal.
    fn flush(&mut self) -> Result<(), Crashed> {
        self.crash_point()?;
        let view = self.records();
        self.durable = view;
        for entry in self.volatile.drain(..) {
            if let JournalEntry::Put(record) = entry {
                self.intents.remove(&record.key);
            }
        }
        Ok(())
    }

    fn file_facts(&self, key: &str) -> Option<FileFacts> {
        self.files.get(key).map(|f| FileFacts {
            size: f.size,
            mtime: f.mtime,
        })
    }

    /// GET (If-Match the planned ETag), stream to a temp file, verify, publish, then journal.
    fn download(
        &mut self,
        bucket: &Bucket,
        planned: &ObjectMeta,
        sequencer: Option<&str>,
    ) -> Result<(), Crashed> {
        self.crash_point()?;
        self.staged.insert(planned.key.clone());
        self.crash_point()?; // part of the body written
        let object = bucket.objects.get(&planned.key).copied();
        let Some(object) = object else {
            // 404 between plan and GET: nothing to publish; a later event or sync settles it.
            self.staged.remove(&planned.key);
            return Ok(());
        };
        let got = Bucket::meta(&planned.key, object, true, self.settings.head_crc);
        if planned.etag.is_some() && planned.etag != got.etag {
            // If-Match failed (412): never mix versions; leave it to the newer event.
            self.staged.remove(&planned.key);
            return Ok(());
        }
        let local_crc = crc_of(object.content);
        assert!(
            got.crc64nvme.is_none_or(|crc| crc == local_crc),
            "verification failed"
        );
        self.crash_point()?; // complete and fsynced, not yet renamed
        self.intents.insert(planned.key.clone(), got.clone());
        self.crash_point()?; // intent durable, not yet renamed
        self.staged.remove(&planned.key);
        self.files.insert(
            planned.key.clone(),
            DiskFile {
                content: object.content,
                size: got.size,
                mtime: got.last_modified,
            },
        );
        self.ever_published.insert(planned.key.clone());
        self.crash_point()?; // published, no record yet
        let old = self.record(&planned.key);
        let record = record_after_download(&got, local_crc, sequencer, old.as_ref());
        self.volatile.push(JournalEntry::Put(record));
        Ok(())
    }

    fn adopt(
        &mut self,
        bucket: &Bucket,
        meta: &ObjectMeta,
        sequencer: Option<&str>,
    ) -> Result<(), Crashed> {
        let Some(file) = self.files.get(&meta.key).copied() else {
            return self.download(bucket, meta, sequencer);
        };
        // The shell hashes the file for the record; a known server CRC must agree.
        let local_crc = crc_of(file.content);
        if meta.crc64nvme.is_some_and(|crc| crc != local_crc) {
            return self.download(bucket, meta, sequencer);
        }
        self.crash_point()?;
        let old = self.record(&meta.key);
        let record = record_after_download(meta, local_crc, sequencer, old.as_ref());
        self.volatile.push(JournalEntry::Put(record));
        Ok(())
    }

    /// Remove a published file, then its record.
    fn delete(&mut self, record: &LocalRecord) -> Result<(), Crashed> {
        assert!(
            self.ever_published.contains(&record.key),
            "engine asked to delete {:?}, which the agent never published",
            record.key
        );
        assert!(
            !USER_FILES.contains(&record.key.as_str()),
            "user file deletion"
        );
        self.crash_point()?;
        self.files.remove(&record.key);
        self.crash_point()?;
        self.volatile.push(JournalEntry::Remove(record.key.clone()));
        Ok(())
    }

    fn apply_head_decision(
        &mut self,
        bucket: &Bucket,
        decision: HeadDecision,
        sequencer: Option<&str>,
    ) -> Result<Effect, Crashed> {
        match decision {
            HeadDecision::Nothing => Ok(Effect::Nothing),
            HeadDecision::Download(meta) => {
                self.download(bucket, &meta, sequencer)?;
                Ok(Effect::Downloaded)
            }
            HeadDecision::Delete(record) => {
                self.delete(&record)?;
                Ok(Effect::Deleted)
            }
            HeadDecision::Adopt(meta) => {
                self.adopt(bucket, &meta, sequencer)?;
                Ok(Effect::Adopted)
            }
        }
    }

    /// A recorded file can have gone missing (a crash between removing the file and its
    /// record): the shell checks the file before trusting "keep".
    fn record_file_intact(&self, record: &LocalRecord) -> bool {
        self.files
            .get(&record.key)
            .is_some_and(|f| f.size == record.size)
    }

    /// The event loop's handling of one queue message: decide, HEAD, act, fsync; the message
    /// is acknowledged by the caller only if this returns Ok.
    fn process_event(&mut self, bucket: &Bucket, event: &BucketEvent) -> Result<(), Crashed> {
        let record = self.record(&event.key);
        if let EventDecision::Ignore(_) = on_event(event, PREFIX, record.as_ref()) {
            return Ok(());
        }
        let head = bucket.head(&event.key, self.settings.head_crc);
        let file = if record.is_none() {
            self.file_facts(&event.key)
        } else {
            None
        };
        let decision = after_head(head.as_ref(), record.as_ref(), file, self.settings.mode);
        self.apply_head_decision(bucket, decision, event.sequencer.as_deref())?;
        self.flush()
    }

    /// A full sync: the streaming merge of the listing and the state store, executed in order.
    fn full_sync(&mut self, bucket: &Bucket) -> Result<Vec<(String, Effect)>, Crashed> {
        let listing = bucket.list(PREFIX, self.settings.listing_etags);
        let local: Vec<LocalRecord> = self.records().into_values().collect();
        let merge = FullSyncMerge::new(
            listing.into_iter().map(Ok::<_, Infallible>),
            local.into_iter().map(Ok::<_, Infallible>),
            self.settings.mode,
        );
        let mode = self.settings.mode;
        let mut effects = Vec::new();
        for action in merge {
            let action = match action {
                Ok(action) => action,
                Err(e) => panic!("merge over a sorted listing failed: {e:?}"),
            };
            let (key, effect) = match action {
                SyncAction::Keep(record) => {
                    let effect = if self.record_file_intact(&record) {
                        Effect::Nothing
                    } else {
                        let head = bucket.head(&record.key, self.settings.head_crc);
                        self.apply_head_decision(bucket, redownload(head, &record), None)?
                    };
                    (record.key, effect)
                }
                SyncAction::Download(meta, base) => {
                    let file = self.file_facts(&meta.key);
                    // The base tells the agent's own file (replaced) from one that may
                    // already be this version, published before a crash (adopted).
                    let effect = match before_publish(&meta, base.as_ref(), file, mode) {
                        BeforePublish::Adopt => self.apply_head_decision(
                            bucket,
                            HeadDecision::Adopt(meta.clone()),
                            None,
                        )?,
                        BeforePublish::Publish | BeforePublish::SetAside => {
                            self.download(bucket, &meta, None)?;
                            Effect::Downloaded
                        }
                    };
                    (meta.key, effect)
                }
                SyncAction::Verify(meta, record) => {
                    let head = bucket.head(&meta.key, self.settings.head_crc);
                    let decision = after_head(head.as_ref(), Some(&record), None, mode);
                    let decision = match decision {
                        HeadDecision::Nothing if !self.record_file_intact(&record) => {
                            redownload(head, &record)
                        }
                        other => other,
                    };
                    (meta.key, self.apply_head_decision(bucket, decision, None)?)
                }
                SyncAction::Delete(record) => {
                    self.delete(&record)?;
                    (record.key, Effect::Deleted)
                }
            };
            effects.push((key, effect));
            self.flush()?;
        }
        Ok(effects)
    }
}

fn redownload(head: Option<ObjectMeta>, record: &LocalRecord) -> HeadDecision {
    match head {
        Some(meta) => HeadDecision::Download(meta),
        None => HeadDecision::Delete(record.clone()),
    }
}

// ---------------------------------------------------------------------------------------------
// The scenario: mutations, deliveries and faults, in the order proptest generates them.

#[derive(Clone, Debug)]
enum Op {
    Put {
        key: usize,
        content: u8,
    },
    Delete {
        key: usize,
    },
    /// A delete of a key the bucket never had, at a user file's path.
    DeleteMissing {
        user: usize,
    },
    /// Deliver the in-flight event at `pick % len`: out of order by construction. With
    /// `again`, the queue redelivers it later too (at-least-once). With `crash_at`, the agent
    /// dies at that crash point while processing it.
    Deliver {
        pick: usize,
        again: bool,
        crash_at: Option<u32>,
    },
    /// The queue loses an event (retention expired, outage).
    Lose {
        pick: usize,
    },
    /// The agent is killed while idle, restarts, and maybe runs its startup full sync.
    Restart {
        full_sync: bool,
    },
}

fn op_strategy(faults: bool) -> BoxedStrategy<Op> {
    let base = prop_oneof![
        4 => (0..KEYS.len(), 0u8..6).prop_map(|(key, content)| Op::Put { key, content }),
        2 => (0..KEYS.len()).prop_map(|key| Op::Delete { key }),
        1 => (0..USER_FILES.len()).prop_map(|user| Op::DeleteMissing { user }),
        6 => (any::<usize>(), any::<bool>())
            .prop_map(|(pick, again)| Op::Deliver { pick, again, crash_at: None }),
    ];
    if !faults {
        return base.boxed();
    }
    prop_oneof![
        13 => base,
        3 => (any::<usize>(), any::<bool>(), 0u32..10)
            .prop_map(|(pick, again, crash)| Op::Deliver { pick, again, crash_at: Some(crash) }),
        1 => any::<usize>().prop_map(|pick| Op::Lose { pick }),
        1 => any::<bool>().prop_map(|full_sync| Op::Restart { full_sync }),
    ]
    .boxed()
}

fn settings_strategy() -> impl Strategy<Value = Settings> {
    (
        prop_oneof![
            Just(ConsistencyCheck::SizeLastModified),
            Just(ConsistencyCheck::Crc64),
            Just(ConsistencyCheck::Transmission),
        ],
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(mode, sequencers, listing_etags, head_crc, events_for_missing_deletes)| Settings {
                mode,
                sequencers,
                listing_etags,
                head_crc,
                events_for_missing_deletes,
            },
        )
}

struct World {
    bucket: Bucket,
    agent: Agent,
    in_flight: Vec<BucketEvent>,
}

impl World {
    fn new(settings: Settings) -> Self {
        World {
            bucket: Bucket::default(),
            agent: Agent::new(settings),
            in_flight: Vec::new(),
        }
    }

    fn crash_and_restart(&mut self, full_sync: bool) {
        self.agent.restart();
        if full_sync {
            // The startup reconcile; its own crashes are exercised by the final sync.
            self.agent.full_sync(&self.bucket).expect("no crash armed");
        }
    }

    fn apply(&mut self, op: &Op) {
        let settings = self.agent.settings;
        match *op {
            Op::Put { key, content } => {
                let event = self.bucket.put(KEYS[key], content, &settings);
                self.in_flight.push(event);
            }
            Op::Delete { key } => {
                if let Some(event) = self.bucket.delete(KEYS[key], &settings) {
                    self.in_flight.push(event);
                }
            }
            Op::DeleteMissing { user } => {
                if let Some(event) = self.bucket.delete(USER_FILES[user], &settings) {
                    self.in_flight.push(event);
                }
            }
            Op::Deliver {
                pick,
                again,
                crash_at,
            } => {
                if self.in_flight.is_empty() {
                    return;
                }
                let index = pick % self.in_flight.len();
                let event = self.in_flight[index].clone();
                self.agent.crash_countdown = crash_at;
                match self.agent.process_event(&self.bucket, &event) {
                    Ok(()) => {
                        self.agent.crash_countdown = None;
                        if !again {
                            self.in_flight.remove(index);
                        }
                    }
                    // Not acknowledged: the queue redelivers it after the visibility timeout.
                    Err(Crashed) => self.crash_and_restart(pick % 2 == 0),
                }
            }
            Op::Lose { pick } => {
                if !self.in_flight.is_empty() {
                    let index = pick % self.in_flight.len();
                    self.in_flight.remove(index);
                }
            }
            Op::Restart { full_sync } => self.crash_and_restart(full_sync),
        }
    }

    /// Deliver every event still in flight, in a scrambled order, without faults.
    fn drain(&mut self, seed: usize) {
        let mut step = seed;
        while !self.in_flight.is_empty() {
            step = step.wrapping_mul(31).wrapping_add(7);
            let event = self.in_flight.remove(step % self.in_flight.len());
            self.agent
                .process_event(&self.bucket, &event)
                .expect("no crash armed");
        }
    }

    /// The share mirrors the bucket's prefix; user files are untouched. With `records`, the
    /// state store also describes exactly the files it published.
    fn check_mirror(&self, records: bool) -> Result<(), TestCaseError> {
        let agent = &self.agent;
        for (key, object) in &self.bucket.objects {
            if !key.starts_with(PREFIX) {
                prop_assert!(
                    !agent.files.contains_key(key),
                    "{key} is outside the prefix"
                );
                continue;
            }
            let file = agent.files.get(key);
            prop_assert_eq!(
                file.map(|f| f.content),
                Some(object.content),
                "content of {}",
                key
            );
        }
        for (key, file) in &agent.files {
            if let Some(index) = USER_FILES.iter().position(|user| user == key) {
                prop_assert_eq!(*file, user_file(index), "user file {} changed", key);
            } else {
                prop_assert!(
                    self.bucket.objects.contains_key(key),
                    "{key} not in the bucket"
                );
            }
        }
        if records {
            let records = agent.records();
            let in_prefix = self
                .bucket
                .objects
                .iter()
                .filter(|(k, _)| k.starts_with(PREFIX));
            prop_assert_eq!(records.len(), in_prefix.clone().count());
            for (key, object) in in_prefix {
                let record = records.get(key);
                prop_assert!(record.is_some(), "no record for {key}");
                if let Some(record) = record {
                    prop_assert_eq!(record.size, size_of(object.content));
                    prop_assert_eq!(record.crc64nvme, crc_of(object.content));
                }
            }
        }
        Ok(())
    }
}

proptest! {
    // Default config: 256 cases, `PROPTEST_CASES` raises it for a soak run.

    /// Property 1: duplicated, delayed, reordered events alone bring the share to the bucket's
    /// final state (HEAD against the bucket at processing time).
    #[test]
    fn events_alone_converge(
        settings in settings_strategy(),
        ops in prop::collection::vec(op_strategy(false), 0..60),
        seed in any::<usize>(),
    ) {
        let mut world = World::new(settings);
        for op in &ops {
            world.apply(op);
        }
        world.drain(seed);
        world.check_mirror(true)?;
    }

    /// Properties 2 and 3: crashes anywhere and lost events; after restart and a full sync
    /// (which may itself crash once) the share equals the bucket, a second full sync changes
    /// nothing, and late events keep it equal.
    #[test]
    fn crashes_then_full_sync_converge(
        settings in settings_strategy(),
        ops in prop::collection::vec(op_strategy(true), 0..60),
        final_sync_crash in prop::option::of(0u32..40),
        seed in any::<usize>(),
    ) {
        let mut world = World::new(settings);
        for op in &ops {
            world.apply(op);
        }
        world.agent.crash_countdown = final_sync_crash;
        if world.agent.full_sync(&world.bucket).is_err() {
            world.agent.restart();
            world.agent.full_sync(&world.bucket).expect("no crash armed");
        }
        world.agent.crash_countdown = None;
        world.check_mirror(true)?;

        let effects = world.agent.full_sync(&world.bucket).expect("no crash armed");
        if settings.mode != ConsistencyCheck::Transmission {
            for (key, effect) in &effects {
                prop_assert_eq!(*effect, Effect::Nothing, "second full sync touched {}", key);
            }
        }
        world.check_mirror(true)?;

        world.drain(seed);
        world.check_mirror(true)?;
    }

    /// Property 3 for the plan itself: after a converged sync the merge says Keep for every key
    /// (size_last_modified), or Verify whose HEAD says Nothing (crc64).
    #[test]
    fn second_plan_after_convergence_keeps_everything(
        settings in settings_strategy().prop_filter("needs a comparing mode", |s| s.mode != ConsistencyCheck::Transmission),
        ops in prop::collection::vec(op_strategy(false), 0..40),
        seed in any::<usize>(),
    ) {
        let mut world = World::new(settings);
        for op in &ops {
            world.apply(op);
        }
        world.drain(seed);
        world.agent.full_sync(&world.bucket).expect("no crash armed");
        let listing = world.bucket.list(PREFIX, settings.listing_etags);
        let local: Vec<LocalRecord> = world.agent.records().into_values().collect();
        let merge = FullSyncMerge::new(
            listing.into_iter().map(Ok::<_, Infallible>),
            local.into_iter().map(Ok::<_, Infallible>),
            settings.mode,
        );
        for action in merge {
            match action {
                Ok(SyncAction::Keep(_)) => {}
                Ok(SyncAction::Verify(meta, record)) => {
                    prop_assert_eq!(settings.mode, ConsistencyCheck::Crc64);
                    let head = world.bucket.head(&meta.key, settings.head_crc);
                    prop_assert_eq!(
                        after_head(head.as_ref(), Some(&record), None, settings.mode),
                        HeadDecision::Nothing
                    );
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Property 4: the merge itself over arbitrary inputs.

type RemoteMap = BTreeMap<String, (u64, i64, Option<u8>, Option<u64>)>;
type LocalMap = BTreeMap<String, (u64, i64, Option<u8>, u64)>;

fn key_strategy() -> impl Strategy<Value = String> {
    "[aZ/é~]{0,3}"
}

fn remote_map() -> impl Strategy<Value = RemoteMap> {
    prop::collection::btree_map(
        key_strategy(),
        (
            0u64..3,
            0i64..3,
            prop::option::of(0u8..2),
            prop::option::of(0u64..2),
        ),
        0..12,
    )
}

fn local_map() -> impl Strategy<Value = LocalMap> {
    prop::collection::btree_map(
        key_strategy(),
        (0u64..3, 0i64..3, prop::option::of(0u8..2), 0u64..2),
        0..12,
    )
}

fn remote_items(map: &RemoteMap) -> Vec<ObjectMeta> {
    map.iter()
        .map(|(key, &(size, last_modified, etag, crc))| ObjectMeta {
            key: key.clone(),
            size,
            etag: etag.map(|e| format!("e{e}")),
            last_modified,
            crc64nvme: crc,
        })
        .collect()
}

fn local_items(map: &LocalMap) -> Vec<LocalRecord> {
    map.iter()
        .map(|(key, &(size, last_modified, etag, crc))| LocalRecord {
            key: key.clone(),
            size,
            etag: etag.map(|e| format!("e{e}")),
            last_modified,
            crc64nvme: crc,
            sequencer: None,
        })
        .collect()
}

fn mode_strategy() -> impl Strategy<Value = ConsistencyCheck> {
    prop_oneof![
        Just(ConsistencyCheck::SizeLastModified),
        Just(ConsistencyCheck::Crc64),
        Just(ConsistencyCheck::Transmission),
    ]
}

fn action_key(action: &SyncAction) -> &str {
    match action {
        SyncAction::Keep(record) | SyncAction::Delete(record) => &record.key,
        SyncAction::Download(meta, _) | SyncAction::Verify(meta, _) => &meta.key,
    }
}

type Outcome = Vec<Result<SyncAction, MergeError<String, String>>>;

fn run_merge(remote: Vec<ObjectMeta>, local: Vec<LocalRecord>, mode: ConsistencyCheck) -> Outcome {
    FullSyncMerge::new(
        remote.into_iter().map(Ok::<_, String>),
        local.into_iter().map(Ok::<_, String>),
        mode,
    )
    .collect()
}

/// Index of the first item whose key is not strictly greater than the one before.
fn first_disorder<T>(items: &[T], key: impl Fn(&T) -> &str) -> Option<usize> {
    (1..items.len()).find(|&i| key(&items[i]) <= key(&items[i - 1]))
}

/// Make a sorted list unsorted: swap two items with different keys, or repeat one.
fn disorder<T: Clone>(items: &mut Vec<T>, a: usize, b: usize, duplicate: bool) {
    let (a, b) = (a % items.len(), b % items.len());
    if duplicate || a == b {
        let copy = items[a].clone();
        items.insert(a + 1, copy);
    } else {
        items.swap(a, b);
    }
}

proptest! {
    // Default config: 256 cases, `PROPTEST_CASES` raises it for a soak run.

    #[test]
    fn merge_yields_one_planned_action_per_key_in_order(
        remote in remote_map(),
        local in local_map(),
        mode in mode_strategy(),
    ) {
        let remote_list = remote_items(&remote);
        let local_list = local_items(&local);
        let outcome = run_merge(remote_list.clone(), local_list.clone(), mode);
        let actions: Vec<SyncAction> = outcome.into_iter().map(|item| item.map_err(|e| e.to_string())).collect::<Result<_, _>>()
            .map_err(|e| TestCaseError::fail(format!("sorted input failed: {e}")))?;

        let union: BTreeSet<&str> = remote.keys().chain(local.keys()).map(String::as_str).collect();
        let keys: Vec<&str> = actions.iter().map(action_key).collect();
        prop_assert_eq!(keys, union.iter().copied().collect::<Vec<_>>());

        let remote_by_key: BTreeMap<&str, &ObjectMeta> = remote_list.iter().map(|m| (m.key.as_str(), m)).collect();
        let local_by_key: BTreeMap<&str, &LocalRecord> = local_list.iter().map(|r| (r.key.as_str(), r)).collect();
        for action in &actions {
            let key = action_key(action);
            let expected = plan_key(remote_by_key.get(key).copied(), local_by_key.get(key).copied(), mode);
            prop_assert_eq!(Some(action), expected.as_ref());
            if let SyncAction::Delete(record) = action {
                prop_assert!(!remote.contains_key(&record.key), "deleted listed key {}", record.key);
                prop_assert!(local.contains_key(&record.key));
            }
        }
    }

    #[test]
    fn disordered_listing_ends_the_merge_at_the_inversion(
        remote in remote_map().prop_filter("needs items", |m| !m.is_empty()),
        local in local_map(),
        (a, b, duplicate) in (any::<usize>(), any::<usize>(), any::<bool>()),
    ) {
        let mut remote_list = remote_items(&remote);
        disorder(&mut remote_list, a, b, duplicate);
        let bad_at = first_disorder(&remote_list, |m| m.key.as_str());
        prop_assume!(bad_at.is_some());
        let bad_at = bad_at.unwrap_or_default();
        let sorted_prefix: BTreeSet<&str> = remote_list[..bad_at].iter().map(|m| m.key.as_str()).collect();

        let outcome = run_merge(remote_list.clone(), local_items(&local), ConsistencyCheck::SizeLastModified);
        let last = outcome.last();
        let ends_with_order_error = matches!(
            last,
            Some(Err(MergeError::OutOfOrder { side: Side::Remote, .. } | MergeError::Duplicate { side: Side::Remote, .. }))
        );
        prop_assert!(ends_with_order_error, "last item {:?}", last);
        prop_assert_eq!(outcome.iter().filter(|item| item.is_err()).count(), 1);
        for item in &outcome {
            if let Ok(SyncAction::Delete(record)) = item {
                // Decided while the listing was still sorted: the key is not in that part.
                prop_assert!(!sorted_prefix.contains(record.key.as_str()));
            }
        }
    }

    #[test]
    fn disordered_local_state_never_deletes_a_listed_key(
        remote in remote_map(),
        local in local_map().prop_filter("needs items", |m| !m.is_empty()),
        (a, b, duplicate) in (any::<usize>(), any::<usize>(), any::<bool>()),
    ) {
        let mut local_list = local_items(&local);
        disorder(&mut local_list, a, b, duplicate);
        prop_assume!(first_disorder(&local_list, |r| r.key.as_str()).is_some());

        let outcome = run_merge(remote_items(&remote), local_list, ConsistencyCheck::SizeLastModified);
        let ends_with_order_error = matches!(
            outcome.last(),
            Some(Err(MergeError::OutOfOrder { side: Side::Local, .. } | MergeError::Duplicate { side: Side::Local, .. }))
        );
        prop_assert!(ends_with_order_error, "last item {:?}", outcome.last());
        prop_assert_eq!(outcome.iter().filter(|item| item.is_err()).count(), 1);
        for item in &outcome {
            if let Ok(SyncAction::Delete(record)) = item {
                prop_assert!(!remote.contains_key(&record.key), "deleted listed key {}", record.key);
            }
        }
    }

    #[test]
    fn input_errors_pass_through_and_end_the_merge(
        remote in remote_map(),
        local in local_map(),
        fail_remote_at in any::<usize>(),
    ) {
        let remote_list = remote_items(&remote);
        let cut = fail_remote_at % (remote_list.len() + 1);
        let listed_before_failure: BTreeSet<String> = remote_list[..cut].iter().map(|m| m.key.clone()).collect();
        let mut items: Vec<Result<ObjectMeta, String>> = remote_list.into_iter().take(cut).map(Ok).collect();
        items.push(Err("listing page 7 failed".into()));
        let outcome: Outcome = FullSyncMerge::new(
            items.into_iter(),
            local_items(&local).into_iter().map(Ok::<_, String>),
            ConsistencyCheck::SizeLastModified,
        )
        .collect();
        prop_assert_eq!(outcome.last(), Some(&Err(MergeError::Remote("listing page 7 failed".to_string()))));
        // A delete can only be for a key the listing had already passed without seeing it.
        let last_listed = listed_before_failure.iter().next_back();
        for item in &outcome {
            if let Ok(SyncAction::Delete(record)) = item {
                prop_assert!(!remote.contains_key(&record.key));
                prop_assert!(last_listed.is_some_and(|last| record.key < *last), "{} deleted past the listed part", record.key);
            }
        }
    }
}
