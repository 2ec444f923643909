//! Two-way shares: what each local file looked like when the agent last agreed on it with the
//! bucket (after an upload, or once its bytes were proven to be the base).
//!
//! The base record ([`crate::cache::state`]) describes the *object*: after an upload its
//! Last-Modified is the server's clock, not the file's mtime, so the file cannot be recognised
//! from the record alone the way a downloaded file is (mtime = Last-Modified). This second
//! store, of the same proven kind (sorted snapshot + framed journal, bounded memory), keeps the
//! local side: size, nanosecond mtime, inode and CRC-64, tied to the base's ETag so that a
//! later download (a new base) makes it stale by itself. A crash between the base record and
//! this one costs at most one read of the file (its CRC proves it is the base).
//!
//! Records reuse [`LocalRecord`]'s encoding, so the store needs no new on-disk format:
//! `size` = the file's size, `etag` = the base's ETag, `last_modified` = mtime in nanoseconds,
//! `crc64nvme` = the file's CRC, `sequencer` = the inode in decimal.

use std::path::Path;

use crate::cache::state::{StateError, StateStore};
use crate::model::{LocalRecord, LocalStat, SeenFile};

/// The local side of each base, for one two-way share.
pub struct SeenStore {
    store: StateStore,
}

impl SeenStore {
    pub fn open(dir: &Path) -> Result<SeenStore, StateError> {
        Ok(SeenStore {
            store: StateStore::open(dir)?,
        })
    }

    pub fn get(&self, key: &str) -> Result<Option<SeenFile>, StateError> {
        Ok(self.store.get(key)?.and_then(from_record))
    }

    pub fn put(&mut self, seen: &SeenFile) -> Result<(), StateError> {
        self.store.put(LocalRecord {
            key: seen.key.clone(),
            size: seen.stat.size,
            etag: seen.base_etag.clone(),
            last_modified: seen.stat.mtime_ns,
            crc64nvme: seen.crc64nvme,
            sequencer: Some(seen.stat.ino.to_string()),
        })
    }

    pub fn remove(&mut self, key: &str) -> Result<(), StateError> {
        if self.store.get(key)?.is_some() {
            self.store.remove(key)?;
        }
        Ok(())
    }

    pub fn sync(&mut self) -> Result<(), StateError> {
        self.store.sync()
    }
}

fn from_record(r: LocalRecord) -> Option<SeenFile> {
    Some(SeenFile {
        stat: LocalStat {
            size: r.size,
            mtime_ns: r.last_modified,
            ino: r.sequencer.as_deref()?.parse().ok()?,
        },
        key: r.key,
        crc64nvme: r.crc64nvme,
        base_etag: r.etag,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_files_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        let seen = SeenFile {
            key: "a/b".into(),
            stat: LocalStat {
                size: 3,
                mtime_ns: 1_700_000_000_123_456_789,
                ino: 42,
            },
            crc64nvme: 7,
            base_etag: Some("e".into()),
        };
        {
            let mut s = SeenStore::open(dir.path()).expect("open");
            s.put(&seen).expect("put");
            s.sync().expect("sync");
        }
        let mut s = SeenStore::open(dir.path()).expect("reopen");
        assert_eq!(s.get("a/b").expect("get"), Some(seen));
        s.remove("a/b").expect("rm");
        s.remove("missing").expect("rm missing");
        assert_eq!(s.get("a/b").expect("get"), None);
    }
}
