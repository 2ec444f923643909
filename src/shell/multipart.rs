//! Two-way shares: big files go up in parts (S3 multipart upload) with a FULL_OBJECT
//! CRC-64/NVME, and an upload cut off by a crash resumes where it stopped.
//!
//! The same rule as a single PUT: the bytes sent are the bytes verified. The whole file's CRC
//! and each part's CRC are computed first; every part travels with its CRC (a verifying server
//! refuses other bytes) and its last piece is held back until the part's CRC and the file's
//! stat check out; the object only exists once CompleteMultipartUpload names the parts and the
//! whole CRC, which is sent only after a last stat check. A file that changed on the way makes
//! the agent abort the upload: the bucket keeps the previous version, never a mix.
//!
//! Resume: after each part, `<state_dir>/uploads/<key hash>.json` records the upload id, the
//! file's identity (size, ns mtime, inode, CRC) and the parts done (written to a temporary
//! name, fsynced, renamed). After `kill -9` and a restart the file is still different from its
//! base, so it is uploaded again: if it is still the same version, the recorded upload is
//! continued from its next part and completed once — one object, not two. Otherwise the old
//! upload is aborted.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use log::{info, warn};
use serde::{Deserialize, Serialize};

use super::upload::{Uploaded, Verified, stat_of};
use crate::cache::crc64::{Crc64Nvme, nvme};
use crate::cache::share_dir::ShareDir;
use crate::cloud::{CloudError, ObjectStore, PutCondition, UploadedPart};
use crate::daemon::{Heartbeat, Shutdown};
use crate::format::hex_lower;
use crate::model::{LocalRecord, LocalStat, SeenFile};
use crate::time::unix_now;

/// Files of at least this size are uploaded in parts.
pub const MULTIPART_THRESHOLD: u64 = 16 * 1024 * 1024;
/// Part size (S3: at least 5 MiB except the last, at most 10,000 parts).
pub const PART_SIZE: u64 = 8 * 1024 * 1024;
const MAX_PARTS: u64 = 10_000;
const READ_BUF: usize = 256 * 1024;

/// The resume record of one multipart upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Resume {
    key: String,
    upload_id: String,
    size: u64,
    mtime_ns: i64,
    ino: u64,
    crc64nvme: u64,
    part_size: u64,
    parts: Vec<UploadedPart>,
}

fn part_size_for(size: u64) -> u64 {
    let min = size.div_ceil(MAX_PARTS).div_ceil(1024 * 1024) * 1024 * 1024;
    PART_SIZE.max(min)
}

fn resume_path(state_dir: &Path, key: &str) -> PathBuf {
    state_dir.join("uploads").join(format!(
        "{}.json",
        hex_lower(&nvme(key.as_bytes()).to_be_bytes())
    ))
}

fn read_resume(path: &Path) -> Option<Resume> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

fn write_resume(path: &Path, r: &Resume) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(r).map_err(io::Error::other)?)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

/// Everything one multipart upload needs from the share.
pub(super) struct Job<'a> {
    pub store: &'a dyn ObjectStore,
    pub dir: &'a ShareDir,
    pub state_dir: &'a Path,
    pub key: &'a str,
    pub rel: &'a Path,
    pub stat: LocalStat,
    pub condition: &'a PutCondition,
    pub heartbeat: &'a Heartbeat,
    pub shutdown: &'a Shutdown,
}

/// Upload the file in parts (resuming a recorded upload of the same version).
pub(super) fn upload_multipart(job: &Job<'_>) -> Uploaded {
    let Job {
        store,
        dir,
        state_dir,
        key,
        rel,
        stat,
        condition,
        ..
    } = *job;
    let mut f = match dir.open_file_read(rel) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Uploaded::Changed,
        Err(e) => return Uploaded::Failed(format!("cannot open {}: {e}", rel.display())),
    };
    if stat_of(&f).ok() != Some(stat) {
        return Uploaded::Changed;
    }
    let part_size = part_size_for(stat.size);
    // Pass 1: the whole file's CRC and each part's.
    let mut whole = Crc64Nvme::new();
    let mut part_crcs = Vec::new();
    let mut buf = vec![0u8; READ_BUF];
    let mut offset = 0u64;
    while offset < stat.size {
        let len = part_size.min(stat.size - offset);
        let mut part = Crc64Nvme::new();
        let mut left = len;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            match f.read(&mut buf[..want]) {
                Ok(0) => return Uploaded::Changed,
                Ok(n) => {
                    part.update(&buf[..n]);
                    whole.update(&buf[..n]);
                    left -= n as u64;
                }
                Err(e) => return Uploaded::Failed(format!("cannot read {}: {e}", rel.display())),
            }
            job.heartbeat.beat();
        }
        part_crcs.push(part.finish());
        offset += len;
    }
    let crc = whole.finish();
    if stat_of(&f).ok() != Some(stat) {
        return Uploaded::Changed;
    }
    let path = resume_path(state_dir, key);
    let wanted = |r: &Resume| {
        r.key == key
            && r.size == stat.size
            && r.mtime_ns == stat.mtime_ns
            && r.ino == stat.ino
            && r.crc64nvme == crc
            && r.part_size == part_size
    };
    let mut resume = match read_resume(&path) {
        Some(r) if wanted(&r) => {
            info!(
                "upload {key:?}: resuming multipart upload at part {} of {}",
                r.parts.len() + 1,
                part_crcs.len()
            );
            r
        }
        other => {
            if let Some(old) = other {
                // Another version's upload: its parts are worth nothing now.
                let _ = store.abort_multipart(&old.key, &old.upload_id);
            }
            let upload_id = match store.create_multipart(key) {
                Ok(id) => id,
                Err(e) => return Uploaded::Failed(e.to_string()),
            };
            Resume {
                key: key.to_owned(),
                upload_id,
                size: stat.size,
                mtime_ns: stat.mtime_ns,
                ino: stat.ino,
                crc64nvme: crc,
                part_size,
                parts: Vec::new(),
            }
        }
    };
    if let Err(e) = write_resume(&path, &resume) {
        return Uploaded::Failed(format!("cannot record the upload of {key:?}: {e}"));
    }
    let abandon = |resume: &Resume| {
        let _ = store.abort_multipart(key, &resume.upload_id);
        let _ = fs::remove_file(&path);
    };
    for (i, part_crc) in part_crcs.iter().enumerate().skip(resume.parts.len()) {
        if job.shutdown.is_triggered() {
            return Uploaded::Failed("stopped; the upload resumes after the restart".into());
        }
        let start = i as u64 * part_size;
        let len = part_size.min(stat.size - start);
        let file = match f.try_clone().and_then(|mut c| {
            c.seek(SeekFrom::Start(start))?;
            Ok(c)
        }) {
            Ok(c) => c,
            Err(e) => return Uploaded::Failed(format!("cannot read {}: {e}", rel.display())),
        };
        let mut body = Verified::new(file, len, *part_crc, stat);
        let number = i as u32 + 1;
        let result = store.upload_part(key, &resume.upload_id, number, &mut body, len, *part_crc);
        job.heartbeat.beat();
        if body.changed {
            abandon(&resume);
            return Uploaded::Changed;
        }
        match result {
            Ok(etag) => resume.parts.push(UploadedPart {
                number,
                etag,
                crc64nvme: *part_crc,
            }),
            Err(e) if e.is_not_found() => {
                // The upload is gone (expired or aborted elsewhere): start over next time.
                let _ = fs::remove_file(&path);
                return Uploaded::Failed(format!("{key:?}: multipart upload lost: {e}"));
            }
            Err(e) => return Uploaded::Failed(e.to_string()),
        }
        if let Err(e) = write_resume(&path, &resume) {
            return Uploaded::Failed(format!("cannot record the upload of {key:?}: {e}"));
        }
    }
    if f.seek(SeekFrom::Start(0)).is_err() || stat_of(&f).ok() != Some(stat) {
        abandon(&resume);
        return Uploaded::Changed;
    }
    match store.complete_multipart(key, &resume.upload_id, &resume.parts, crc, condition) {
        Ok(put) => {
            let _ = fs::remove_file(&path);
            Uploaded::Done {
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
            }
        }
        Err(CloudError::Service { status: 412, .. }) => {
            abandon(&resume);
            Uploaded::Precondition
        }
        Err(e) => {
            warn!("upload {key:?}: completing the multipart upload failed: {e}");
            Uploaded::Failed(e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_stay_within_s3_limits() {
        assert_eq!(part_size_for(64 * 1024 * 1024), PART_SIZE);
        let huge = 5 * 1024 * 1024 * 1024 * 1024u64;
        let p = part_size_for(huge);
        assert!(huge.div_ceil(p) <= MAX_PARTS && p.is_multiple_of(1024 * 1024));
    }
}
