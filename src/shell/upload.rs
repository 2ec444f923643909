//! Two-way shares: one upload, single PUT or (big files) [`super::multipart`]. It sends the
//! bytes it verified and nothing else: the file's CRC-64 is computed first (it travels in
//! `x-amz-checksum-crc64nvme`), then the file is streamed, and the last piece is held back
//! until the stream's CRC and the file's stat prove it is still that one version. If not, the
//! body fails before it is complete, the server never stores it, and the key is tried again
//! once the file has settled. Conditions on the base's ETag (`If-Match`, `If-None-Match: *`)
//! make an upload fail rather than overwrite a change the agent has not seen. After an upload
//! the base and the seen file are the upload's, so its echo from the queue is a no-op.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use log::{info, warn};

use super::multipart::{self, MULTIPART_THRESHOLD, upload_multipart};
use super::{Share, ShareError};
use crate::cache::crc64::Crc64Nvme;
use crate::cache::share_dir::ShareDir;
use crate::cloud::{CloudError, PutCondition};
use crate::model::{LocalRecord, LocalStat, SeenFile};
use crate::time::unix_now;

/// Largest object (S3's limit).
const MAX_OBJECT: u64 = 5 * 1024 * 1024 * 1024 * 1024;
const READ_BUF: usize = 256 * 1024;

/// How one upload ended.
pub(super) enum Uploaded {
    Done {
        rec: LocalRecord,
        seen: SeenFile,
    },
    /// The file changed while it was read: nothing was stored; try again once it settles.
    Changed,
    /// The object changed under the agent (412): look at the key again.
    Precondition,
    Failed(String),
}

impl Share {
    pub(super) fn upload(
        &mut self,
        key: &str,
        rel: &Path,
        stat: LocalStat,
        condition: &PutCondition,
    ) -> Result<(), ShareError> {
        let name = self.ctx.cfg.name.clone();
        if stat.size > MAX_OBJECT {
            let why = format!(
                "{key:?} is {} bytes, more than the 5 TiB an object may have",
                stat.size
            );
            warn!("share {name}: {why}");
            self.status.uploads.last_error = Some(why);
            return Ok(());
        }
        self.status.uploads.in_flight = 1;
        self.write_status(false);
        let started = Instant::now();
        let outcome = if stat.size >= MULTIPART_THRESHOLD {
            upload_multipart(&multipart::Job {
                store: &*self.ctx.store,
                dir: &self.dir,
                state_dir: &self.ctx.state_dir,
                key,
                rel,
                stat,
                condition,
                heartbeat: &self.heartbeat,
                shutdown: &self.ctx.shutdown,
            })
        } else {
            upload_file(&*self.ctx.store, &self.dir, key, rel, stat, condition)
        };
        self.status.uploads.in_flight = 0;
        self.heartbeat.beat();
        match outcome {
            Uploaded::Done { rec, seen } => {
                info!(
                    "share {name}: uploaded {key:?} ({} bytes, {:.2}s)",
                    rec.size,
                    started.elapsed().as_secs_f64()
                );
                self.status.uploads.done += 1;
                self.status.uploads.bytes += rec.size;
                self.state.put(rec)?;
                if let Some(tw) = self.two_way.as_mut() {
                    tw.seen.put(&seen)?;
                }
                self.unsynced_records += 1;
            }
            Uploaded::Changed => {
                info!(
                    "share {name}: {key:?} changed while it was read; uploading it once it settles"
                );
                self.defer(key, self.settle());
            }
            Uploaded::Precondition => {
                info!(
                    "share {name}: {key:?} changed in the bucket during the upload; looking again"
                );
                self.defer(key, Duration::ZERO);
            }
            Uploaded::Failed(why) => {
                warn!("share {name}: upload of {key:?} failed: {why}; retrying later");
                self.status.uploads.last_error = Some(why);
                self.defer(key, self.settle().max(Duration::from_secs(5)));
            }
        }
        self.write_status(false);
        Ok(())
    }
}

/// CRC-64/NVME of a local file.
pub(super) fn crc_of(dir: &ShareDir, rel: &Path) -> io::Result<u64> {
    let mut f = dir.open_file_read(rel)?;
    let mut crc = Crc64Nvme::new();
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(crc.finish());
        }
        crc.update(&buf[..n]);
    }
}

pub(super) fn stat_of(f: &std::fs::File) -> io::Result<LocalStat> {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata()?;
    Ok(LocalStat {
        size: m.size(),
        mtime_ns: m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
        ino: m.ino(),
    })
}

/// Upload the file at `rel` if it is still `stat`: CRC first, then the streamed body with
/// its last byte held back until the bytes sent are proven to be that one version.
fn upload_file(
    store: &dyn crate::cloud::ObjectStore,
    dir: &ShareDir,
    key: &str,
    rel: &Path,
    stat: LocalStat,
    condition: &PutCondition,
) -> Uploaded {
    let mut f = match dir.open_file_read(rel) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Uploaded::Changed,
        Err(e) => return Uploaded::Failed(format!("cannot open {}: {e}", rel.display())),
    };
    let before = match stat_of(&f) {
        Ok(s) => s,
        Err(e) => return Uploaded::Failed(format!("cannot stat {}: {e}", rel.display())),
    };
    if before != stat {
        return Uploaded::Changed;
    }
    let mut crc = Crc64Nvme::new();
    let mut buf = vec![0u8; READ_BUF];
    let mut total = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                crc.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) => return Uploaded::Failed(format!("cannot read {}: {e}", rel.display())),
        }
    }
    let crc = crc.finish();
    if total != stat.size || stat_of(&f).ok() != Some(stat) {
        return Uploaded::Changed;
    }
    if let Err(e) = f.seek(SeekFrom::Start(0)) {
        return Uploaded::Failed(format!("cannot rewind {}: {e}", rel.display()));
    }
    let mut body = Verified::new(f, stat.size, crc, stat);
    let result = store.put_object(key, &mut body, stat.size, crc, condition);
    if body.changed {
        return Uploaded::Changed;
    }
    match result {
        Ok(put) => Uploaded::Done {
            rec: LocalRecord {
                key: key.to_owned(),
                size: stat.size,
                etag: put.etag.clone(),
                last_modified: unix_now(),
                crc64nvme: crc,
                sequencer: None,
            },
            seen: SeenFile {
                key: key.to_owned(),
                stat,
                crc64nvme: crc,
                base_etag: put.etag,
            },
        },
        Err(CloudError::Service { status: 412, .. }) => Uploaded::Precondition,
        // If-Match on a key that is gone.
        Err(e) if e.is_not_found() => Uploaded::Precondition,
        Err(e) => Uploaded::Failed(e.to_string()),
    }
}

/// The upload body: the file's bytes, with the last read held until they check out.
pub(super) struct Verified {
    file: std::fs::File,
    remaining: u64,
    crc: Crc64Nvme,
    expected: u64,
    stat: LocalStat,
    /// Set when the body failed because the file is no longer the version being sent.
    pub changed: bool,
}

impl Verified {
    /// `len` bytes from the file's current offset, which must have CRC `expected`, and the
    /// file must still be `stat` once they are read.
    pub fn new(file: std::fs::File, len: u64, expected: u64, stat: LocalStat) -> Verified {
        Verified {
            file,
            remaining: len,
            crc: Crc64Nvme::new(),
            expected,
            stat,
            changed: false,
        }
    }
}

impl Read for Verified {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let last = want as u64 == self.remaining;
        // The final piece is read whole, so it can be checked before any of it is sent.
        let mut got = 0;
        while got < want {
            let n = self.file.read(&mut buf[got..want])?;
            if n == 0 {
                break;
            }
            got += n;
            if !last {
                break;
            }
        }
        if got == 0 {
            self.changed = true;
            return Err(io::Error::other("file shrank during the upload"));
        }
        self.crc.update(&buf[..got]);
        self.remaining -= got as u64;
        if self.remaining == 0 {
            let ok =
                self.crc.finish() == self.expected && stat_of(&self.file).ok() == Some(self.stat);
            if !ok {
                self.changed = true;
                return Err(io::Error::other(
                    "file changed during the upload; request cut off before its last byte",
                ));
            }
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::{ListPage, ObjectBody, ObjectStore, PutResult};
    use crate::model::ObjectMeta;
    use std::path::PathBuf;
    use std::sync::Mutex;

    /// A store whose PUT edits the file (same size, other bytes) halfway through the body.
    struct EditsMidUpload {
        path: PathBuf,
        received: Mutex<Option<Result<usize, String>>>,
    }

    impl ObjectStore for EditsMidUpload {
        fn list_page(&self, _: &str, _: Option<&str>) -> Result<ListPage, CloudError> {
            Ok(ListPage::default())
        }
        fn head(&self, _: &str) -> Result<Option<ObjectMeta>, CloudError> {
            Ok(None)
        }
        fn get(&self, _: &str, _: u64, _: Option<&str>) -> Result<ObjectBody, CloudError> {
            Err(CloudError::Transport("no".into()))
        }
        fn put_object(
            &self,
            _: &str,
            body: &mut dyn Read,
            size: u64,
            _: u64,
            _: &PutCondition,
        ) -> Result<PutResult, CloudError> {
            let mut got = vec![0u8; size as usize / 2];
            body.read_exact(&mut got).expect("first half");
            let mut edited = vec![b'x'; size as usize];
            edited[0] = b'!';
            std::fs::write(&self.path, &edited).expect("edit");
            let mut rest = Vec::new();
            let r = body
                .read_to_end(&mut rest)
                .map(|_| got.len() + rest.len())
                .map_err(|e| e.to_string());
            *self.received.lock().expect("lock") = Some(r);
            Err(CloudError::Transport("body failed".into()))
        }
    }

    #[test]
    fn a_file_edited_during_its_upload_is_never_sent_whole() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = ShareDir::open(tmp.path()).expect("share");
        let path = tmp.path().join("f");
        std::fs::write(&path, vec![b'a'; 3 * READ_BUF + 17]).expect("write");
        let stat = dir.local_stat(Path::new("f")).expect("stat").expect("file");
        let store = EditsMidUpload {
            path,
            received: Mutex::new(None),
        };
        let out = upload_file(
            &store,
            &dir,
            "f",
            Path::new("f"),
            stat,
            &PutCondition::IfAbsent,
        );
        assert!(matches!(out, Uploaded::Changed));
        let received = store
            .received
            .lock()
            .expect("lock")
            .clone()
            .expect("put ran");
        assert!(
            received.is_err(),
            "the body must fail before its end: {received:?}"
        );
    }
}
