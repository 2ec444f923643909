//! The per-share record of what the agent published, in bounded memory.
//!
//! Two files in the store's directory:
//!
//! - `snapshot`: every record, sorted by key, in fixed 64 KiB blocks of framed postcard
//!   records (a record never spans blocks, a zero length ends a block early). Lookups
//!   binary-search the blocks by their first key: O(log n) small reads, O(1) memory.
//! - `journal`: the puts and removes since that snapshot, replayed into an in-memory delta
//!   (`BTreeMap`, bounded by the compaction threshold plus what is appended between two syncs)
//!   when the store opens.
//!
//! Compaction stream-merges snapshot and delta into `snapshot.tmp`, fsyncs it and renames it
//! over `snapshot`, then swaps in an empty journal the same way. The journal is synced first,
//! so a crash between the two renames leaves the new snapshot with the whole old journal,
//! whose replay on top of it changes nothing: every operation is an absolute put or remove.
//!
//! The journal also carries publish intents ([`StateStore::intend`]): before a download may be
//! renamed into the share, its key and version are in the journal for good, so after a crash
//! between that rename and the record the file is still known as the agent's
//! ([`StateStore::take_recovered_intents`]). One journal fsync covers a whole batch of intents
//! (and the records that finished meanwhile), instead of a sidecar file per object. Intents
//! still pending are carried into the fresh journal at compaction.

use crate::cache::journal::{self, FRAME_CRC, FRAME_HEADER_LEN, JournalError, JournalWriter};
use crate::model::LocalRecord;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::btree_map;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Compact once the in-memory delta holds more keys than this.
pub const DEFAULT_COMPACT_THRESHOLD: usize = 8192;
/// Snapshot block size; also bounds one record.
pub const BLOCK_SIZE: usize = 64 * 1024;
/// Largest encoded record: it must fit one snapshot block with its frame header.
pub const MAX_RECORD_BYTES: usize = BLOCK_SIZE - FRAME_HEADER_LEN;

const JOURNAL_KIND: u16 = 1;
const SNAPSHOT_KIND: u16 = 2;
const SNAPSHOT_HEADER_LEN: u64 = 32;
const SNAPSHOT_FILE: &str = "snapshot";
const JOURNAL_FILE: &str = "journal";
const TMP_SUFFIX: &str = ".tmp";
/// The journal is also compacted once it holds this many times the threshold in operations,
/// so rewriting the same few keys cannot grow it (or the replay on open) without bound.
const JOURNAL_OPS_FACTOR: u64 = 4;

#[derive(Debug)]
pub enum StateError {
    Io {
        path: PathBuf,
        source: io::Error,
    },
    Journal(JournalError),
    /// The snapshot is damaged. It is only ever replaced whole, so this is not a torn write.
    Corrupt {
        path: PathBuf,
        detail: String,
    },
    /// A record too big to store (an absurd ETag or sequencer).
    RecordTooLarge {
        key: String,
        bytes: usize,
    },
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::Io { path, source } => write!(f, "state {}: {source}", path.display()),
            StateError::Journal(e) => write!(f, "state {e}"),
            StateError::Corrupt { path, detail } => write!(
                f,
                "state snapshot {} is damaged ({detail}); move the state directory aside and \
                 restart to rebuild it with a full sync",
                path.display()
            ),
            StateError::RecordTooLarge { key, bytes } => write!(
                f,
                "state record for key {key:?} is {bytes} bytes (limit {MAX_RECORD_BYTES})"
            ),
        }
    }
}

impl std::error::Error for StateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StateError::Io { source, .. } => Some(source),
            StateError::Journal(e) => Some(e),
            _ => None,
        }
    }
}

impl From<JournalError> for StateError {
    fn from(e: JournalError) -> Self {
        StateError::Journal(e)
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, detail: impl Into<String>) -> StateError {
    StateError::Corrupt {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// One journal entry: absolute, so replaying it twice is harmless. New variants go last
/// (postcard encodes the variant index).
#[derive(Debug, Serialize, Deserialize)]
enum JournalOp {
    Put(LocalRecord),
    Remove(String),
    Intent(PublishIntent),
}

/// "This version of this key may be renamed into the share": journaled before the rename,
/// resolved by the key's next put or remove.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishIntent {
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    /// Also the mtime the published file gets.
    pub last_modified: i64,
}

/// The records of one share: sorted snapshot on disk + recent changes in memory.
pub struct StateStore {
    dir: PathBuf,
    snapshot: Snapshot,
    journal: JournalWriter<JournalOp>,
    /// Changes since the snapshot; `None` = removed.
    delta: BTreeMap<String, Option<LocalRecord>>,
    journal_ops: u64,
    len: u64,
    threshold: usize,
    /// Intents of downloads in flight (bounded by the download queue), rewritten into the
    /// new journal at compaction.
    intents: HashMap<String, PublishIntent>,
    /// Intents found unresolved in the journal at open (the agent stopped between a publish
    /// and its record).
    recovered: Vec<PublishIntent>,
}

impl StateStore {
    /// Open the store in `dir` (created if missing), replaying the journal and cutting off a
    /// torn tail.
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        Self::open_with_threshold(dir, DEFAULT_COMPACT_THRESHOLD)
    }

    /// [`Self::open`] with another compaction threshold (delta keys). Tests use small ones.
    pub fn open_with_threshold(dir: &Path, threshold: usize) -> Result<StateStore, StateError> {
        let threshold = threshold.max(1);
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        for name in [SNAPSHOT_FILE, JOURNAL_FILE] {
            let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
            match fs::remove_file(&tmp) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&tmp)(e)),
            }
        }
        let Replayed {
            snapshot,
            delta,
            journal_ops,
            unresolved,
            valid_len,
            len,
        } = replay(dir)?;
        let journal_path = dir.join(JOURNAL_FILE);
        let journal = match valid_len {
            Some(valid_len) => JournalWriter::open_append(&journal_path, JOURNAL_KIND, valid_len)?,
            None => new_journal(dir, &[])?,
        };
        let mut recovered: Vec<PublishIntent> = unresolved.into_values().collect();
        recovered.sort_by(|a, b| a.key.cmp(&b.key));

        let mut store = StateStore {
            dir: dir.to_path_buf(),
            snapshot,
            journal,
            delta,
            journal_ops,
            len,
            threshold,
            intents: HashMap::new(),
            recovered,
        };
        // Not compacted yet when intents were recovered: compaction would drop them before
        // the caller has looked at them.
        if store.recovered.is_empty() {
            store.compact_if_due()?;
        }
        Ok(store)
    }

    /// The record for `key`, if the agent published it.
    pub fn get(&self, key: &str) -> Result<Option<LocalRecord>, StateError> {
        match self.delta.get(key) {
            Some(value) => Ok(value.clone()),
            None => self.snapshot.get(key),
        }
    }

    /// Record a published file. Buffered: durable after the next [`Self::sync`].
    pub fn put(&mut self, rec: LocalRecord) -> Result<(), StateError> {
        refuse_oversized(&rec, &rec.key)?;
        let existed = self.exists(&rec.key)?;
        self.intents.remove(&rec.key);
        let op = JournalOp::Put(rec);
        self.journal.append(&op)?;
        if let JournalOp::Put(rec) = op {
            self.delta.insert(rec.key.clone(), Some(rec));
        }
        self.journal_ops += 1;
        if !existed {
            self.len += 1;
        }
        Ok(())
    }

    /// Forget a key (its file was removed). Buffered: durable after the next [`Self::sync`].
    pub fn remove(&mut self, key: &str) -> Result<(), StateError> {
        self.intents.remove(key);
        if !self.exists(key)? {
            return Ok(());
        }
        self.journal.append(&JournalOp::Remove(key.to_owned()))?;
        self.delta.insert(key.to_owned(), None);
        self.journal_ops += 1;
        self.len -= 1;
        Ok(())
    }

    /// Journal that `intent`'s version may be published at its key's path. Buffered like a
    /// put: the caller [`Self::sync`]s before the rename may happen. Resolved by the key's
    /// next put or remove, or dropped from memory by [`Self::abandon_intent`].
    pub fn intend(&mut self, intent: PublishIntent) -> Result<(), StateError> {
        refuse_oversized(&intent, &intent.key)?;
        let op = JournalOp::Intent(intent);
        self.journal.append(&op)?;
        if let JournalOp::Intent(intent) = op {
            self.intents.insert(intent.key.clone(), intent);
        }
        self.journal_ops += 1;
        Ok(())
    }

    /// The download behind an intent ended without a publish (failed, or the object went
    /// away): it need not survive the next compaction. A crash before then makes the caller
    /// check the file once more, which finds nothing to recover.
    pub fn abandon_intent(&mut self, key: &str) {
        self.intents.remove(key);
    }

    /// Intents left unresolved by an earlier run, each to be checked against the file at its
    /// path. Call once after opening; [`Self::compact`] afterwards forgets the ones the
    /// caller did not resolve with a put.
    pub fn take_recovered_intents(&mut self) -> Vec<PublishIntent> {
        std::mem::take(&mut self.recovered)
    }

    /// Make every put and remove so far durable (and compact when due).
    ///
    /// Nothing appended reaches the disk before this call (the journal buffers up to 1 MiB,
    /// and compaction happens only here): a caller that must make other things durable
    /// first (the renames a record describes) does so before calling it.
    pub fn sync(&mut self) -> Result<(), StateError> {
        self.journal.sync()?;
        self.compact_if_due()
    }

    /// Number of records.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keys changed since the last compaction (what the store holds in memory).
    pub fn delta_len(&self) -> usize {
        self.delta.len()
    }

    /// All records in key byte order. The iterator owns a copy of the (bounded) delta and its
    /// own handle on the snapshot, so the store may be changed, even compacted, meanwhile;
    /// the iterator keeps showing the state as of this call.
    pub fn iter_sorted(&self) -> Result<SortedRecords, StateError> {
        Ok(SortedRecords {
            merge: Merge::new(self.snapshot.cursor(), self.delta.clone().into_iter()),
        })
    }

    /// Rewrite the snapshot with the delta merged in and start an empty journal.
    pub fn compact(&mut self) -> Result<(), StateError> {
        // Everything the new snapshot holds must be in the journal for good first (see the
        // module docs: the old journal may be replayed on top of the new snapshot).
        self.journal.sync()?;
        let tmp = self.dir.join(format!("{SNAPSHOT_FILE}{TMP_SUFFIX}"));
        let final_path = self.dir.join(SNAPSHOT_FILE);
        let mut writer = SnapshotWriter::create(&tmp)?;
        let delta = self.delta.iter().map(|(k, v)| (k.clone(), v.clone()));
        let mut merge = Merge::new(self.snapshot.cursor(), delta);
        while let Some(rec) = merge.next_record()? {
            writer.add(&rec)?;
        }
        let written = writer.finish()?;
        fs::rename(&tmp, &final_path).map_err(io_err(&final_path))?;
        sync_dir(&self.dir)?;
        self.snapshot = Snapshot::open(&final_path)?;
        // Downloads in flight keep their intents: the fresh journal starts with them.
        let pending: Vec<&PublishIntent> = self.intents.values().collect();
        self.journal = new_journal(&self.dir, &pending)?;
        self.delta.clear();
        self.journal_ops = pending.len() as u64;
        self.recovered.clear();
        if written != self.len {
            log::warn!(
                "state {}: counted {} records, snapshot has {written}; using the snapshot",
                self.dir.display(),
                self.len
            );
            self.len = written;
        }
        Ok(())
    }

    fn compact_if_due(&mut self) -> Result<(), StateError> {
        let ops_limit = self.threshold as u64 * JOURNAL_OPS_FACTOR;
        if self.delta.len() > self.threshold || self.journal_ops > ops_limit {
            self.compact()?;
        }
        Ok(())
    }

    fn exists(&self, key: &str) -> Result<bool, StateError> {
        match self.delta.get(key) {
            Some(value) => Ok(value.is_some()),
            None => Ok(self.snapshot.get(key)?.is_some()),
        }
    }
}

/// A record or intent must fit one snapshot block (and one journal frame).
fn refuse_oversized<T: Serialize>(value: &T, key: &str) -> Result<(), StateError> {
    let bytes = postcard::to_stdvec(value).map_or(usize::MAX, |b| b.len());
    if bytes > MAX_RECORD_BYTES {
        return Err(StateError::RecordTooLarge {
            key: key.chars().take(200).collect(),
            bytes,
        });
    }
    Ok(())
}

/// Create a journal holding `intents` under a temporary name, make it durable and rename it
/// into place, so a journal with a torn header (or without the pending intents) never exists.
/// The snapshot and the journal replayed on top of it, read only.
struct Replayed {
    snapshot: Snapshot,
    delta: BTreeMap<String, Option<LocalRecord>>,
    journal_ops: u64,
    unresolved: HashMap<String, PublishIntent>,
    /// Length of the journal's valid part; `None` when there is no journal.
    valid_len: Option<u64>,
    len: u64,
}

fn replay(dir: &Path) -> Result<Replayed, StateError> {
    let snapshot = Snapshot::open(&dir.join(SNAPSHOT_FILE))?;
    let journal_path = dir.join(JOURNAL_FILE);
    let mut delta = BTreeMap::new();
    let mut journal_ops = 0u64;
    let mut unresolved: HashMap<String, PublishIntent> = HashMap::new();
    let valid_len = if journal_path.exists() {
        let recovery = journal::read_journal(&journal_path, JOURNAL_KIND, |op: JournalOp| {
            journal_ops += 1;
            match op {
                JournalOp::Put(rec) => {
                    unresolved.remove(&rec.key);
                    delta.insert(rec.key.clone(), Some(rec));
                }
                JournalOp::Remove(key) => {
                    unresolved.remove(&key);
                    delta.insert(key, None);
                }
                JournalOp::Intent(intent) => {
                    unresolved.insert(intent.key.clone(), intent);
                }
            }
        })?;
        if recovery.dropped_bytes > 0 {
            log::warn!(
                "state journal {}: dropped a torn tail of {} bytes after {} records",
                journal_path.display(),
                recovery.dropped_bytes,
                recovery.records
            );
        }
        Some(recovery.valid_len)
    } else {
        None
    };
    // The count is the snapshot's plus what the delta changed about it.
    let mut len = snapshot.records;
    for (key, value) in &delta {
        let in_snapshot = snapshot.get(key)?.is_some();
        match (in_snapshot, value.is_some()) {
            (false, true) => len += 1,
            (true, false) => len = len.saturating_sub(1),
            _ => {}
        }
    }
    Ok(Replayed {
        snapshot,
        delta,
        journal_ops,
        unresolved,
        valid_len,
        len,
    })
}

/// The records of one share as they are on disk, for `sync --dry-run`: opened without
/// creating, cleaning or appending anything (a running agent may keep writing meanwhile).
pub struct StateView {
    snapshot: Snapshot,
    delta: BTreeMap<String, Option<LocalRecord>>,
    len: u64,
}

impl StateView {
    /// The state in `dir`; empty when the share never synced.
    pub fn open(dir: &Path) -> Result<StateView, StateError> {
        if !dir.exists() {
            return Ok(StateView {
                snapshot: Snapshot::open(&dir.join(SNAPSHOT_FILE))?,
                delta: BTreeMap::new(),
                len: 0,
            });
        }
        let r = replay(dir)?;
        Ok(StateView {
            snapshot: r.snapshot,
            delta: r.delta,
            len: r.len,
        })
    }

    pub fn get(&self, key: &str) -> Result<Option<LocalRecord>, StateError> {
        match self.delta.get(key) {
            Some(value) => Ok(value.clone()),
            None => self.snapshot.get(key),
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter_sorted(&self) -> Result<SortedRecords, StateError> {
        Ok(SortedRecords {
            merge: Merge::new(self.snapshot.cursor(), self.delta.clone().into_iter()),
        })
    }
}

fn new_journal(
    dir: &Path,
    intents: &[&PublishIntent],
) -> Result<JournalWriter<JournalOp>, StateError> {
    let tmp = dir.join(format!("{JOURNAL_FILE}{TMP_SUFFIX}"));
    let path = dir.join(JOURNAL_FILE);
    let mut writer = JournalWriter::<JournalOp>::create(&tmp, JOURNAL_KIND)?;
    if !intents.is_empty() {
        for intent in intents {
            writer.append(&JournalOp::Intent((*intent).clone()))?;
        }
        writer.sync()?;
    }
    drop(writer);
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    sync_dir(dir)?;
    let len = fs::metadata(&path).map_err(io_err(&path))?.len();
    Ok(JournalWriter::open_append(&path, JOURNAL_KIND, len)?)
}

fn sync_dir(dir: &Path) -> Result<(), StateError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// The sorted on-disk snapshot (possibly absent = empty).
struct Snapshot {
    path: PathBuf,
    file: Option<Arc<File>>,
    blocks: u64,
    records: u64,
    cache: RefCell<Option<CachedBlock>>,
}

impl Snapshot {
    fn open(path: &Path) -> Result<Snapshot, StateError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Snapshot {
                    path: path.to_path_buf(),
                    file: None,
                    blocks: 0,
                    records: 0,
                    cache: RefCell::new(None),
                });
            }
            Err(e) => return Err(io_err(path)(e)),
        };
        let file_len = file.metadata().map_err(io_err(path))?.len();
        let mut header = [0u8; SNAPSHOT_HEADER_LEN as usize];
        if file_len < SNAPSHOT_HEADER_LEN {
            return Err(corrupt(path, "shorter than its header"));
        }
        file.read_exact_at(&mut header, 0).map_err(io_err(path))?;
        journal::check_header(path, &header, SNAPSHOT_KIND)?;
        let records = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
        let blocks = u64::from_le_bytes(header[16..24].try_into().unwrap_or_default());
        let crc = u32::from_le_bytes(header[24..28].try_into().unwrap_or_default());
        if FRAME_CRC.checksum(&header[..24]) != crc {
            return Err(corrupt(path, "header checksum mismatch"));
        }
        let expected_len = blocks
            .checked_mul(BLOCK_SIZE as u64)
            .and_then(|b| b.checked_add(SNAPSHOT_HEADER_LEN));
        if expected_len != Some(file_len) {
            return Err(corrupt(
                path,
                format!("{file_len} bytes, header promises {blocks} blocks"),
            ));
        }
        Ok(Snapshot {
            path: path.to_path_buf(),
            file: Some(Arc::new(file)),
            blocks,
            records,
            cache: RefCell::new(None),
        })
    }

    fn cursor(&self) -> SnapshotCursor {
        SnapshotCursor {
            path: self.path.clone(),
            file: self.file.clone(),
            blocks: self.blocks,
            next_block: 0,
            buf: Vec::new(),
            pos: 0,
            last_key: None,
        }
    }

    fn read_at(&self, file: &File, buf: &mut [u8], offset: u64) -> Result<(), StateError> {
        file.read_exact_at(buf, offset).map_err(io_err(&self.path))
    }

    /// The key of the first record of block `index` (every block has at least one).
    fn first_key(&self, file: &File, index: u64) -> Result<String, StateError> {
        let offset = block_offset(index);
        let mut head = [0u8; FRAME_HEADER_LEN];
        self.read_at(file, &mut head, offset)?;
        let (len, crc) =
            journal::parse_frame_header(&head).ok_or_else(|| corrupt(&self.path, "short block"))?;
        if len == 0 || len > MAX_RECORD_BYTES {
            return Err(corrupt(&self.path, format!("block {index} starts badly")));
        }
        let mut payload = vec![0u8; len];
        self.read_at(file, &mut payload, offset + FRAME_HEADER_LEN as u64)?;
        Ok(decode_record(&self.path, &payload, crc)?.key)
    }

    fn get(&self, key: &str) -> Result<Option<LocalRecord>, StateError> {
        let Some(file) = &self.file else {
            return Ok(None);
        };
        let mut cache = self.cache.borrow_mut();
        let cached = cache.as_ref().is_some_and(|c| c.covers(key));
        if !cached {
            // Count the blocks whose first key is <= key; the key can only be in the last.
            let (mut lo, mut hi) = (0u64, self.blocks);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if self.first_key(file, mid)?.as_str() <= key {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            let Some(index) = lo.checked_sub(1) else {
                return Ok(None);
            };
            *cache = Some(self.load_block(file, index)?);
        }
        let Some(block) = cache.as_ref() else {
            return Ok(None);
        };
        block.find(&self.path, key)
    }

    /// Read block `index` and check every record's CRC once, so lookups in it can compare
    /// keys without decoding each record.
    fn load_block(&self, file: &File, index: u64) -> Result<CachedBlock, StateError> {
        let mut bytes = vec![0u8; BLOCK_SIZE];
        self.read_at(file, &mut bytes, block_offset(index))?;
        let mut pos = 0;
        let mut first = None;
        while let Some((payload, crc)) = next_frame(&self.path, &bytes, &mut pos)? {
            if FRAME_CRC.checksum(payload) != crc {
                return Err(corrupt(&self.path, "record checksum mismatch"));
            }
            if first.is_none() {
                first = Some(decode_record(&self.path, payload, crc)?.key);
            }
        }
        let lower = first.ok_or_else(|| corrupt(&self.path, format!("block {index} is empty")))?;
        let upper = match index + 1 < self.blocks {
            true => Some(self.first_key(file, index + 1)?),
            false => None,
        };
        Ok(CachedBlock {
            bytes,
            lower,
            upper,
        })
    }
}

/// The last snapshot block a lookup read. Lookups come in key order during a full sync, so
/// one 64 KiB block answers most of them without any read.
struct CachedBlock {
    bytes: Vec<u8>,
    /// First key in the block.
    lower: String,
    /// First key of the next block (`None`: last block).
    upper: Option<String>,
}

impl CachedBlock {
    fn covers(&self, key: &str) -> bool {
        self.lower.as_str() <= key && self.upper.as_deref().is_none_or(|upper| key < upper)
    }

    fn find(&self, path: &Path, key: &str) -> Result<Option<LocalRecord>, StateError> {
        let mut pos = 0;
        while let Some((payload, crc)) = next_frame(path, &self.bytes, &mut pos)? {
            let found = record_key(payload).ok_or_else(|| corrupt(path, "undecodable key"))?;
            match found.cmp(key.as_bytes()) {
                std::cmp::Ordering::Less => continue,
                std::cmp::Ordering::Equal => return decode_record(path, payload, crc).map(Some),
                std::cmp::Ordering::Greater => break,
            }
        }
        Ok(None)
    }
}

/// The key bytes of an encoded [`LocalRecord`] without decoding it: postcard writes the first
/// field (`key`, a string) as a LEB128 length and then the bytes.
fn record_key(payload: &[u8]) -> Option<&[u8]> {
    let mut len = 0u64;
    for (i, byte) in payload.iter().enumerate().take(10) {
        len |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let start = i + 1;
            let end = start.checked_add(usize::try_from(len).ok()?)?;
            return payload.get(start..end);
        }
    }
    None
}

fn block_offset(index: u64) -> u64 {
    SNAPSHOT_HEADER_LEN + index * BLOCK_SIZE as u64
}

fn decode_record(path: &Path, payload: &[u8], crc: u32) -> Result<LocalRecord, StateError> {
    if FRAME_CRC.checksum(payload) != crc {
        return Err(corrupt(path, "record checksum mismatch"));
    }
    postcard::from_bytes(payload).map_err(|e| corrupt(path, format!("undecodable record: {e}")))
}

/// The next frame of a block at `*pos` as `(payload, crc)`, or `None` where the block ends.
fn next_frame<'a>(
    path: &Path,
    block: &'a [u8],
    pos: &mut usize,
) -> Result<Option<(&'a [u8], u32)>, StateError> {
    let Some((len, crc)) = block.get(*pos..).and_then(journal::parse_frame_header) else {
        return Ok(None);
    };
    if len == 0 {
        return Ok(None);
    }
    let start = *pos + FRAME_HEADER_LEN;
    let payload = start
        .checked_add(len)
        .and_then(|end| block.get(start..end))
        .ok_or_else(|| corrupt(path, "record runs past its block"))?;
    *pos = start + len;
    Ok(Some((payload, crc)))
}

/// The next record of a block at `*pos`, or `None` where the block ends.
fn parse_next(
    path: &Path,
    block: &[u8],
    pos: &mut usize,
) -> Result<Option<LocalRecord>, StateError> {
    match next_frame(path, block, pos)? {
        Some((payload, crc)) => decode_record(path, payload, crc).map(Some),
        None => Ok(None),
    }
}

/// Reads a snapshot front to back, one block in memory.
struct SnapshotCursor {
    path: PathBuf,
    file: Option<Arc<File>>,
    blocks: u64,
    next_block: u64,
    buf: Vec<u8>,
    pos: usize,
    /// To catch a snapshot that is not sorted (which would break lookups).
    last_key: Option<String>,
}

impl SnapshotCursor {
    fn next_record(&mut self) -> Result<Option<LocalRecord>, StateError> {
        loop {
            if !self.buf.is_empty()
                && let Some(rec) = parse_next(&self.path, &self.buf, &mut self.pos)?
            {
                if let Some(last) = &mut self.last_key {
                    if last.as_str() >= rec.key.as_str() {
                        return Err(corrupt(&self.path, "records out of order"));
                    }
                    last.clear();
                    last.push_str(&rec.key);
                } else {
                    self.last_key = Some(rec.key.clone());
                }
                return Ok(Some(rec));
            }
            let Some(file) = &self.file else {
                return Ok(None);
            };
            if self.next_block >= self.blocks {
                self.buf = Vec::new();
                return Ok(None);
            }
            self.buf.resize(BLOCK_SIZE, 0);
            file.read_exact_at(&mut self.buf, block_offset(self.next_block))
                .map_err(io_err(&self.path))?;
            self.next_block += 1;
            self.pos = 0;
        }
    }
}

/// Merges the sorted snapshot with a sorted delta; the delta wins on equal keys.
struct Merge<I: Iterator<Item = (String, Option<LocalRecord>)>> {
    snapshot: SnapshotCursor,
    snapshot_next: Option<LocalRecord>,
    delta: std::iter::Peekable<I>,
}

impl<I: Iterator<Item = (String, Option<LocalRecord>)>> Merge<I> {
    fn new(snapshot: SnapshotCursor, delta: I) -> Self {
        Merge {
            snapshot,
            snapshot_next: None,
            delta: delta.peekable(),
        }
    }

    fn next_record(&mut self) -> Result<Option<LocalRecord>, StateError> {
        loop {
            if self.snapshot_next.is_none() {
                self.snapshot_next = self.snapshot.next_record()?;
            }
            let take_delta = match (&self.snapshot_next, self.delta.peek()) {
                (None, None) => return Ok(None),
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(s), Some((k, _))) => {
                    if s.key.as_str() == k.as_str() {
                        // Superseded by the delta.
                        self.snapshot_next = None;
                        true
                    } else {
                        k.as_str() < s.key.as_str()
                    }
                }
            };
            if take_delta {
                if let Some((_, Some(rec))) = self.delta.next() {
                    return Ok(Some(rec));
                }
                // A removal: nothing to yield.
            } else {
                return Ok(self.snapshot_next.take());
            }
        }
    }
}

/// Every record of a [`StateStore`], in key byte order, as of [`StateStore::iter_sorted`].
pub struct SortedRecords {
    merge: Merge<btree_map::IntoIter<String, Option<LocalRecord>>>,
}

impl Iterator for SortedRecords {
    type Item = Result<LocalRecord, StateError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.merge.next_record() {
            Ok(Some(rec)) => Some(Ok(rec)),
            Ok(None) => None,
            Err(e) => {
                // Stop after an error rather than skip records silently.
                self.merge.snapshot.file = None;
                self.merge.snapshot.buf = Vec::new();
                self.merge.delta = BTreeMap::new().into_iter().peekable();
                Some(Err(e))
            }
        }
    }
}

/// Writes a new snapshot: records in key order, packed into fixed blocks.
struct SnapshotWriter {
    path: PathBuf,
    out: BufWriter<File>,
    block_used: usize,
    blocks: u64,
    records: u64,
    frame: Vec<u8>,
}

impl SnapshotWriter {
    fn create(path: &Path) -> Result<Self, StateError> {
        let file = File::create(path).map_err(io_err(path))?;
        let mut out = BufWriter::with_capacity(BLOCK_SIZE, file);
        // Placeholder; the real header is written once the counts are known.
        out.write_all(&[0u8; SNAPSHOT_HEADER_LEN as usize])
            .map_err(io_err(path))?;
        Ok(SnapshotWriter {
            path: path.to_path_buf(),
            out,
            block_used: 0,
            blocks: 0,
            records: 0,
            frame: Vec::new(),
        })
    }

    fn add(&mut self, rec: &LocalRecord) -> Result<(), StateError> {
        journal::encode_record(rec, &mut self.frame)?;
        if self.frame.len() > BLOCK_SIZE {
            return Err(StateError::RecordTooLarge {
                key: rec.key.chars().take(200).collect(),
                bytes: self.frame.len() - FRAME_HEADER_LEN,
            });
        }
        if self.block_used + self.frame.len() > BLOCK_SIZE {
            self.close_block()?;
        }
        self.out
            .write_all(&self.frame)
            .map_err(io_err(&self.path))?;
        self.block_used += self.frame.len();
        self.records += 1;
        Ok(())
    }

    fn close_block(&mut self) -> Result<(), StateError> {
        let padding = vec![0u8; BLOCK_SIZE - self.block_used];
        self.out.write_all(&padding).map_err(io_err(&self.path))?;
        self.blocks += 1;
        self.block_used = 0;
        Ok(())
    }

    /// Pad the last block, write the header, fsync. Returns the record count.
    fn finish(mut self) -> Result<u64, StateError> {
        if self.block_used > 0 {
            self.close_block()?;
        }
        let mut header = [0u8; SNAPSHOT_HEADER_LEN as usize];
        header[..8].copy_from_slice(&journal::encode_header(SNAPSHOT_KIND));
        header[8..16].copy_from_slice(&self.records.to_le_bytes());
        header[16..24].copy_from_slice(&self.blocks.to_le_bytes());
        let crc = FRAME_CRC.checksum(&header[..24]);
        header[24..28].copy_from_slice(&crc.to_le_bytes());
        let file = self
            .out
            .into_inner()
            .map_err(|e| io_err(&self.path)(e.into_error()))?;
        file.write_all_at(&header, 0).map_err(io_err(&self.path))?;
        file.sync_all().map_err(io_err(&self.path))?;
        Ok(self.records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(key: &str, version: u64) -> LocalRecord {
        LocalRecord {
            key: key.to_owned(),
            size: version * 10,
            etag: Some(format!("etag-{version}")),
            last_modified: 1_700_000_000 + version as i64,
            crc64nvme: version.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            sequencer: version.is_multiple_of(2).then(|| format!("{version:016X}")),
        }
    }

    fn intent(key: &str, version: u64) -> PublishIntent {
        let r = rec(key, version);
        PublishIntent {
            key: r.key,
            size: r.size,
            etag: r.etag,
            last_modified: r.last_modified,
        }
    }

    #[test]
    fn unresolved_intents_are_recovered_after_a_crash() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let mut store = StateStore::open(dir.path()).expect("open");
            store.put(rec("old", 1)).expect("put");
            for key in ["a", "b", "c", "old"] {
                store.intend(intent(key, 2)).expect("intend");
            }
            store.put(rec("a", 2)).expect("put resolves a");
            store.remove("old").expect("remove resolves old");
            store.abandon_intent("c");
            store.sync().expect("sync");
            // Dropped without another sync: as if the agent died here.
        }
        let mut store = StateStore::open(dir.path()).expect("reopen");
        // "c" was abandoned only in memory: after a crash it is checked once more.
        let keys: Vec<String> = store
            .take_recovered_intents()
            .into_iter()
            .map(|i| i.key)
            .collect();
        assert_eq!(keys, ["b", "c"]);
        assert!(store.take_recovered_intents().is_empty());
        assert_eq!(store.get("a").expect("get"), Some(rec("a", 2)));
        // Compaction forgets what the caller did not resolve.
        store.compact().expect("compact");
        drop(store);
        let mut store = StateStore::open(dir.path()).expect("reopen");
        assert!(store.take_recovered_intents().is_empty());
    }

    #[test]
    fn compaction_keeps_the_intents_of_downloads_in_flight() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let mut store = StateStore::open_with_threshold(dir.path(), 4).expect("open");
            store.intend(intent("in-flight", 1)).expect("intend");
            store.intend(intent("failed", 1)).expect("intend");
            store.abandon_intent("failed");
            // Enough puts to compact (threshold 4) while the download is still running.
            for i in 0..10 {
                store.put(rec(&format!("k{i:02}"), 1)).expect("put");
                store.sync().expect("sync");
            }
            assert!(store.delta_len() < 10, "compacted meanwhile");
        }
        let mut store = StateStore::open_with_threshold(dir.path(), 4).expect("reopen");
        assert_eq!(store.take_recovered_intents(), vec![intent("in-flight", 1)]);
        assert_eq!(store.len(), 10);
    }

    /// The share fsyncs the directories of published renames and only then calls `sync`: no
    /// record may reach the journal file, or be folded into a snapshot, before that call.
    #[test]
    fn nothing_reaches_the_disk_before_sync() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut store = StateStore::open_with_threshold(dir.path(), 2).expect("open");
        let journal_len = || {
            fs::metadata(dir.path().join(JOURNAL_FILE))
                .expect("journal")
                .len()
        };
        let empty = journal_len();
        for i in 0..5 {
            store.put(rec(&format!("k{i}"), 1)).expect("put");
        }
        store.intend(intent("k9", 1)).expect("intend");
        store.remove("k0").expect("remove");
        assert_eq!(journal_len(), empty, "appends stay in memory until sync");
        assert!(
            !dir.path().join(SNAPSHOT_FILE).exists(),
            "no compaction before sync"
        );
        assert_eq!(store.delta_len(), 5);
        store.sync().expect("sync");
        // Past the threshold: compacted now, with the pending intent carried over.
        assert!(dir.path().join(SNAPSHOT_FILE).exists());
        assert!(journal_len() > empty);
        drop(store);
        let mut store = StateStore::open_with_threshold(dir.path(), 2).expect("reopen");
        assert_eq!(store.len(), 4);
        assert_eq!(store.take_recovered_intents(), vec![intent("k9", 1)]);
    }

    #[test]
    fn an_oversized_intent_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut store = StateStore::open(dir.path()).expect("open");
        let mut big = intent("k", 1);
        big.etag = Some("e".repeat(MAX_RECORD_BYTES));
        assert!(matches!(
            store.intend(big),
            Err(StateError::RecordTooLarge { .. })
        ));
    }

    type Model = BTreeMap<String, LocalRecord>;

    fn contents(store: &StateStore) -> Model {
        store
            .iter_sorted()
            .expect("iter")
            .map(|r| {
                let r = r.expect("record");
                (r.key.clone(), r)
            })
            .collect()
    }

    fn assert_matches(store: &StateStore, model: &Model, probe_keys: &[String]) {
        let got: Vec<LocalRecord> = store
            .iter_sorted()
            .expect("iter")
            .collect::<Result<_, _>>()
            .expect("records");
        let want: Vec<LocalRecord> = model.values().cloned().collect();
        assert_eq!(got, want);
        assert_eq!(store.len(), model.len() as u64);
        for key in probe_keys {
            assert_eq!(
                store.get(key).expect("get"),
                model.get(key).cloned(),
                "{key}"
            );
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Put(u8, u64),
        Remove(u8),
        Sync,
        Reopen,
        Compact,
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (any::<u8>(), 0u64..1_000_000).prop_map(|(k, v)| Op::Put(k % 40, v)),
            3 => any::<u8>().prop_map(|k| Op::Remove(k % 40)),
            1 => Just(Op::Sync),
            1 => Just(Op::Reopen),
            1 => Just(Op::Compact),
        ]
    }

    /// Keys of varied length and shared prefixes, so byte order and block packing matter.
    fn key_name(k: u8) -> String {
        format!("dir{}/{}{}", k % 3, "x".repeat(usize::from(k % 5) * 40), k)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn behaves_like_a_btreemap_across_compactions_and_reopens(
            ops in proptest::collection::vec(op_strategy(), 1..150),
            threshold in 1usize..12,
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut store = StateStore::open_with_threshold(dir.path(), threshold).expect("open");
            let mut model = Model::new();
            let probe: Vec<String> = (0..40).map(key_name).chain(["".into(), "zzz".into()]).collect();
            // Compaction happens in sync: the delta holds at most the threshold plus what was
            // changed since (the changed keys are distinct at most once each).
            let mut since_sync = 0usize;
            for op in ops {
                since_sync += 1;
                if matches!(op, Op::Sync | Op::Compact | Op::Reopen) {
                    since_sync = 0;
                }
                match op {
                    Op::Put(k, v) => {
                        let r = rec(&key_name(k), v);
                        model.insert(r.key.clone(), r.clone());
                        store.put(r).expect("put");
                    }
                    Op::Remove(k) => {
                        model.remove(&key_name(k));
                        store.remove(&key_name(k)).expect("remove");
                    }
                    Op::Sync => store.sync().expect("sync"),
                    Op::Compact => store.compact().expect("compact"),
                    Op::Reopen => {
                        store.sync().expect("sync");
                        drop(store);
                        store = StateStore::open_with_threshold(dir.path(), threshold)
                            .expect("reopen");
                    }
                }
                prop_assert!(store.delta_len() <= threshold + since_sync);
                prop_assert_eq!(store.len(), model.len() as u64);
            }
            assert_matches(&store, &model, &probe);
        }

        /// Copy the directory at random points (what `kill -9` leaves: the journal up to what
        /// was written, possibly mid-frame) and cut the copy's journal anywhere after the last
        /// sync: the reopened state is a prefix of the operations that includes every
        /// operation before the last sync.
        #[test]
        fn crash_copies_recover_a_prefix_that_includes_the_last_sync(
            ops in proptest::collection::vec(op_strategy(), 1..80),
            crash_points in proptest::collection::vec(any::<u16>(), 1..6),
            cuts in proptest::collection::vec(any::<u64>(), 6),
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let threshold = 6;
            let mut store = StateStore::open_with_threshold(dir.path(), threshold).expect("open");
            let mut model = Model::new();
            // history[i] = the state after i operations.
            let mut history = vec![model.clone()];
            let mut durable = 0usize;
            let mut durable_journal_len = journal::HEADER_LEN as u64;
            let crash_at: Vec<usize> =
                crash_points.iter().map(|c| usize::from(*c) % ops.len()).collect();
            for (i, op) in ops.iter().enumerate() {
                match op {
                    Op::Put(k, v) => {
                        let r = rec(&key_name(*k), *v);
                        model.insert(r.key.clone(), r.clone());
                        store.put(r).expect("put");
                    }
                    Op::Remove(k) => {
                        model.remove(&key_name(*k));
                        store.remove(&key_name(*k)).expect("remove");
                    }
                    Op::Sync | Op::Reopen => store.sync().expect("sync"),
                    Op::Compact => store.compact().expect("compact"),
                }
                history.push(model.clone());
                if matches!(op, Op::Sync | Op::Reopen | Op::Compact) || store.delta_len() == 0 {
                    // Synced or just compacted: everything so far is on disk.
                    durable = i + 1;
                    durable_journal_len =
                        fs::metadata(dir.path().join(JOURNAL_FILE)).expect("meta").len();
                }
                for (n, _) in crash_at.iter().enumerate().filter(|(_, c)| **c == i) {
                    let copy = tempfile::tempdir().expect("tempdir");
                    for name in [SNAPSHOT_FILE, JOURNAL_FILE] {
                        if dir.path().join(name).exists() {
                            fs::copy(dir.path().join(name), copy.path().join(name)).expect("copy");
                        }
                    }
                    let journal_path = copy.path().join(JOURNAL_FILE);
                    let len = fs::metadata(&journal_path).expect("meta").len();
                    let cut = durable_journal_len + cuts[n] % (len - durable_journal_len + 1);
                    fs::OpenOptions::new()
                        .write(true)
                        .open(&journal_path)
                        .and_then(|f| f.set_len(cut))
                        .expect("truncate");
                    let recovered = StateStore::open_with_threshold(copy.path(), threshold)
                        .expect("reopen after crash");
                    let state = contents(&recovered);
                    prop_assert_eq!(recovered.len(), state.len() as u64);
                    let prefix = (durable..=i + 1).find(|&p| history[p] == state);
                    prop_assert!(
                        prefix.is_some(),
                        "state after crash at op {} is no prefix >= {}", i, durable
                    );
                }
            }
        }
    }

    proptest! {
        #[test]
        fn record_key_reads_the_key_postcard_wrote(
            key in ".{0,300}",
            etag in proptest::option::of(".{0,40}"),
            size in any::<u64>(),
        ) {
            let mut r = rec(&key, 1);
            r.etag = etag;
            r.size = size;
            let bytes = postcard::to_stdvec(&r).expect("encode");
            prop_assert_eq!(record_key(&bytes), Some(key.as_bytes()));
        }

        #[test]
        fn record_key_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Some(key) = record_key(&bytes) {
                prop_assert!(key.len() < bytes.len());
            }
        }
    }

    #[test]
    fn crash_between_snapshot_rename_and_journal_swap_recovers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = StateStore::open_with_threshold(dir.path(), 1000).expect("open");
        let mut model = Model::new();
        for i in 0..50u64 {
            let r = rec(&format!("k{:03}", i % 20), i);
            model.insert(r.key.clone(), r.clone());
            store.put(r).expect("put");
        }
        store.remove("k005").expect("remove");
        model.remove("k005");
        store.sync().expect("sync");
        let old_journal = fs::read(dir.path().join(JOURNAL_FILE)).expect("read");
        store.compact().expect("compact");
        drop(store);
        // The new snapshot is in place but the old journal was never replaced.
        fs::write(dir.path().join(JOURNAL_FILE), &old_journal).expect("write");
        let store = StateStore::open_with_threshold(dir.path(), 1000).expect("reopen");
        assert_matches(&store, &model, &["k005".into(), "k019".into()]);
        // Leftover temporaries from a crash mid-compaction are ignored and cleaned.
        drop(store);
        fs::write(dir.path().join("snapshot.tmp"), b"half a snapshot").expect("write");
        fs::write(dir.path().join("journal.tmp"), b"SG").expect("write");
        let store = StateStore::open_with_threshold(dir.path(), 1000).expect("reopen");
        assert_matches(&store, &model, &[]);
        assert!(!dir.path().join("snapshot.tmp").exists());
    }

    #[test]
    fn iteration_is_a_stable_view_while_the_store_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = StateStore::open_with_threshold(dir.path(), 3).expect("open");
        for i in 0..10 {
            store.put(rec(&format!("k{i}"), 1)).expect("put");
        }
        let mut iter = store.iter_sorted().expect("iter");
        let first = iter.next().expect("some").expect("ok");
        assert_eq!(first.key, "k0");
        // Changes and compactions during iteration do not disturb it.
        for i in 0..10 {
            store.remove(&format!("k{i}")).expect("remove");
        }
        store.put(rec("k05", 2)).expect("put");
        store.compact().expect("compact");
        let rest: Vec<String> = iter.map(|r| r.expect("ok").key).collect();
        assert_eq!(rest, ["k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9"]);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn hundred_thousand_records_with_bounded_delta() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = StateStore::open(dir.path()).expect("open");
        let n = 100_000u64;
        // A full sync records keys in listing (= key) order; events then touch keys anywhere.
        // The share syncs at least every 256 records; compaction happens in those syncs.
        let bound = DEFAULT_COMPACT_THRESHOLD + 256;
        for k in 0..n {
            store
                .put(rec(&format!("photos/{k:08}.jpg"), k))
                .expect("put");
            if k % 256 == 255 {
                store.sync().expect("sync");
            }
            assert!(store.delta_len() <= bound);
        }
        for i in 0..10_000 {
            let k = (i * 7919) % n;
            store
                .put(rec(&format!("photos/{k:08}.jpg"), k))
                .expect("put");
            if i % 256 == 255 {
                store.sync().expect("sync");
            }
            assert!(store.delta_len() <= bound);
        }
        store.sync().expect("sync");
        assert_eq!(store.len(), n);
        let mut count = 0u64;
        let mut last = String::new();
        for r in store.iter_sorted().expect("iter") {
            let r = r.expect("record");
            assert!(r.key > last, "{} after {}", r.key, last);
            last = r.key;
            count += 1;
        }
        assert_eq!(count, n);
        for k in [0, 1, 4242, n - 1] {
            let key = format!("photos/{k:08}.jpg");
            assert_eq!(store.get(&key).expect("get"), Some(rec(&key, k)));
        }
        assert_eq!(store.get("photos/x").expect("get"), None);
        drop(store);
        let store = StateStore::open(dir.path()).expect("reopen");
        assert_eq!(store.len(), n);
    }

    #[test]
    fn rewriting_the_same_key_does_not_grow_the_journal_forever() {
        let dir = tempfile::tempdir().expect("tempdir");
        let threshold = 8;
        let mut store = StateStore::open_with_threshold(dir.path(), threshold).expect("open");
        for v in 0..1000 {
            store.put(rec("hot", v)).expect("put");
        }
        store.sync().expect("sync");
        let journal_len = fs::metadata(dir.path().join(JOURNAL_FILE))
            .expect("m")
            .len();
        let one_op = journal_len / (store.journal_ops.max(1));
        assert!(store.journal_ops <= threshold as u64 * JOURNAL_OPS_FACTOR);
        assert!(journal_len <= (threshold as u64 * JOURNAL_OPS_FACTOR + 1) * (one_op + 1));
        assert_eq!(store.get("hot").expect("get"), Some(rec("hot", 999)));
    }

    #[test]
    fn oversized_records_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = StateStore::open(dir.path()).expect("open");
        let mut big = rec("k", 1);
        big.etag = Some("e".repeat(MAX_RECORD_BYTES));
        let err = store.put(big).expect_err("too large");
        assert!(matches!(err, StateError::RecordTooLarge { .. }), "{err}");
        assert_eq!(store.len(), 0);
        // The largest acceptable record still fits a snapshot block.
        let mut fits = rec("k", 1);
        let base = postcard::to_stdvec(&fits).expect("ser").len();
        fits.etag = Some("e".repeat(MAX_RECORD_BYTES - base - 2));
        let size = postcard::to_stdvec(&fits).expect("ser").len();
        assert!(size <= MAX_RECORD_BYTES, "{size}");
        store.put(fits.clone()).expect("put");
        store.compact().expect("compact");
        assert_eq!(store.get("k").expect("get"), Some(fits));
    }

    #[test]
    fn damaged_files_are_errors_not_silent_resets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = StateStore::open_with_threshold(dir.path(), 2).expect("open");
        for i in 0..10 {
            store.put(rec(&format!("k{i}"), i)).expect("put");
        }
        store.compact().expect("compact");
        drop(store);
        let snap = dir.path().join(SNAPSHOT_FILE);
        let good = fs::read(&snap).expect("read");

        // A flipped byte inside a record.
        let mut bad = good.clone();
        bad[SNAPSHOT_HEADER_LEN as usize + 12] ^= 0x40;
        fs::write(&snap, &bad).expect("write");
        let store = StateStore::open(dir.path()).expect("header still fine");
        let err = store.get("k0").expect_err("damaged record");
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
        assert!(store.iter_sorted().expect("iter").any(|r| r.is_err()));
        drop(store);

        // A truncated snapshot or a damaged header refuses to open.
        fs::write(&snap, &good[..good.len() - 1]).expect("write");
        assert!(matches!(
            StateStore::open(dir.path()),
            Err(StateError::Corrupt { .. })
        ));
        let mut bad = good.clone();
        bad[9] ^= 1; // record count
        fs::write(&snap, &bad).expect("write");
        assert!(StateStore::open(dir.path()).is_err());
        fs::write(&snap, &good).expect("write");

        // A journal from a newer agent is refused, and left as it was.
        let journal_path = dir.path().join(JOURNAL_FILE);
        let mut j = fs::read(&journal_path).expect("read");
        j[4] = 9;
        fs::write(&journal_path, &j).expect("write");
        let err = StateStore::open(dir.path()).err().expect("newer journal");
        assert!(err.to_string().contains("version 9"), "{err}");
        assert_eq!(fs::read(&journal_path).expect("read"), j);
    }
}
