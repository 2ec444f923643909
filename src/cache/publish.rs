//! Staged downloads that become visible only complete, verified and durable.
//!
//! A download is written to `<root>/.sgw/staging/<hash>.part` (same file system as the share,
//! so the final `rename` is atomic). [`Staged::publish`] checks size and CRC-64, fsyncs, sets
//! the mtime, renames into place and fsyncs the directory: a reader of the share sees the old
//! file or the complete new one, never a partial or unverified one, whatever instant the agent
//! dies at. (That the rename may happen at all is journaled by the caller beforehand: see
//! `StateStore::intend`.)
//!
//! Objects of at least [`CHECKPOINT_BYTES`] with an ETag are resumable: a small `<hash>.meta`
//! sidecar names the key and version, and every [`CHECKPOINT_BYTES`] the data file is fsynced
//! and then the sidecar records that length. Resuming after a restart trusts only bytes the
//! sidecar vouches for: a power cut can leave zeros or garbage past the last fsync; those bytes
//! are cut off and fetched again, so a resumed file is right even when the server has no
//! checksum to verify. Smaller objects have nothing worth resuming and get no sidecar: one file
//! created per object, which matters for small-file throughput (inode allocation dominates).
//!
//!
//! Every path inside the share is reached through [`ShareDir`] (in `share_dir.rs`), which
//! resolves it beneath the share root's descriptor and never follows a symlink; this module
//! is the staging and publishing built on it.

use super::share_dir::*;
use crate::cache::crc64::Crc64Nvme;
use crate::cache::journal;
use crate::cache::paths::RESERVED_TOP_LEVEL;
use rustix::fs::{AtFlags, FileType};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A resumable download is fsynced and its sidecar updated after this many new bytes.
pub const CHECKPOINT_BYTES: u64 = 8 * 1024 * 1024;

pub(super) const STAGING_DIR: &str = "staging";
const DATA_EXT: &str = "part";
const META_EXT: &str = "meta";
const TMP_EXT: &str = "tmp";
/// Frame kind tag for sidecars (they reuse the journal's framed, CRC-checked format).
const META_KIND: u16 = 0x5347;
pub(super) const MAX_NAME_BYTES: usize = 255;

/// At most this many directory descriptors wait for a deferred fsync (see
/// [`Staged::publish_deferring_dir_sync`]); past it a publish fsyncs its directory at once.
pub(super) const MAX_PENDING_DIR_SYNCS: usize = 512;

/// What the object is supposed to be; checked before anything becomes visible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    pub size: u64,
    /// CRC-64/NVME from the server, when it sent one.
    pub crc64nvme: Option<u64>,
}

/// What was published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    pub size: u64,
    /// CRC-64/NVME of the bytes now at the final path.
    pub crc64nvme: u64,
    /// After [`Staged::publish_deferring_dir_sync`]: the directory whose new entry is not
    /// durable until [`ShareDir::sync_dir`] (`None` after [`Staged::publish`], or when the
    /// directory was fsynced at once because too many were waiting).
    pub dir_to_sync: Option<PathBuf>,
}

#[derive(Debug)]
pub enum PublishError {
    /// The download has another length than the object. The staged file is discarded.
    SizeMismatch {
        expected: u64,
        actual: u64,
    },
    /// The bytes do not match the server's CRC. The staged file is discarded.
    ChecksumMismatch {
        expected: u64,
        actual: u64,
    },
    /// The destination would leave the share or cross something that is not a plain
    /// directory (a symlink, a file), or is itself a directory. `path` is the offending
    /// component (as far as the walk got) and `reason` completes "`path` …".
    UnsafePath {
        path: PathBuf,
        reason: &'static str,
    },
    /// The file system of the share is full (`ENOSPC`) or the agent's quota is used up
    /// (`EDQUOT`). Not a transport problem: retrying at once will not help. A resumable
    /// download keeps its staged bytes; a small one is discarded to give the space back.
    NoSpace {
        path: PathBuf,
        source: io::Error,
    },
    Io(io::Error),
}

impl PublishError {
    /// Whether this is the share's disk (or quota) being full; see [`is_no_space`].
    pub fn is_no_space(&self) -> bool {
        matches!(self, PublishError::NoSpace { .. })
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::SizeMismatch { expected, actual } => write!(
                f,
                "downloaded {actual} bytes but the object has {expected}; download discarded"
            ),
            PublishError::ChecksumMismatch { expected, actual } => write!(
                f,
                "CRC-64/NVME mismatch: server says {expected:#018x}, downloaded bytes give \
                 {actual:#018x}; download discarded"
            ),
            PublishError::UnsafePath { path, reason } => {
                write!(f, "refusing path: {} {reason}", shown(path))
            }
            PublishError::NoSpace { path, source } => {
                write!(f, "no space left on {}: {source}", path.display())
            }
            PublishError::Io(e) => write!(f, "publish failed: {e}"),
        }
    }
}

impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PublishError::Io(e) | PublishError::NoSpace { source: e, .. } => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for PublishError {
    fn from(e: io::Error) -> Self {
        PublishError::Io(e)
    }
}

impl From<Errno> for PublishError {
    fn from(e: Errno) -> Self {
        PublishError::Io(e.into())
    }
}
/// The sidecar of a staged download.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct StagedMeta {
    key: String,
    etag: Option<String>,
    last_modified: i64,
    /// Bytes of the data file known to be on stable storage.
    durable_len: u64,
}

/// A download in progress. Dropping it keeps the staged bytes for a later resume.
pub struct Staged {
    share: ShareDir,
    /// The staging directory, as resolved when the download began.
    staging_fd: OwnedFd,
    data_name: String,
    meta_name: String,
    out: BufWriter<File>,
    crc: Crc64Nvme,
    len: u64,
    meta: StagedMeta,
    /// Only a version with an ETag can be recognised again, so only it checkpoints.
    resumable: bool,
    /// A failed write leaves the file in an unknown state: refuse to publish it.
    failed: bool,
}

impl ShareDir {
    /// `<root>/.sgw/staging`, created if a LAN client removed it, resolved anew each time (a
    /// swapped `.sgw` is refused, not followed).
    pub(super) fn staging_dir(&self) -> io::Result<OwnedFd> {
        self.dir_at(&Path::new(RESERVED_TOP_LEVEL).join(STAGING_DIR), true)
    }

    /// Start (or resume) the download of one object version of `size` bytes.
    ///
    /// Resumes when a staged file exists for the same key, the same ETag (`Some`) and the
    /// same Last-Modified; [`Staged::offset`] then says where to continue (a Range GET).
    /// Only objects of at least [`CHECKPOINT_BYTES`] are resumable.
    pub fn begin(
        &self,
        key: &str,
        etag: Option<&str>,
        last_modified: i64,
        size: u64,
    ) -> io::Result<Staged> {
        let staging_fd = self.staging_dir()?;
        let stem = staging_stem(key);
        let data_name = format!("{stem}.{DATA_EXT}");
        let meta_name = format!("{stem}.{META_EXT}");
        let wanted = StagedMeta {
            key: key.to_owned(),
            etag: etag.map(str::to_owned),
            last_modified,
            durable_len: 0,
        };
        let resumable = etag.is_some() && size >= CHECKPOINT_BYTES;
        if resumable
            && let Some(found) = self.read_meta(staging_fd.as_fd(), &meta_name)
            && found.key == wanted.key
            && found.etag == wanted.etag
            && found.last_modified == wanted.last_modified
            && let Some(file) = open_resumable(staging_fd.as_fd(), &data_name, found.durable_len)?
        {
            return self.resume(staging_fd, data_name, meta_name, file, found);
        }
        if resumable {
            // Sidecar first: a data file is never left next to a sidecar that over-promises.
            write_meta(staging_fd.as_fd(), &meta_name, &wanted)?;
        } else {
            // From an earlier, resumable version of this key: it must not vouch for this one.
            unlink_if_present(staging_fd.as_fd(), &meta_name)?;
        }
        let file = create_new(staging_fd.as_fd(), &data_name)?;
        Ok(Staged {
            share: self.clone(),
            staging_fd,
            data_name,
            meta_name,
            out: BufWriter::with_capacity(64 * 1024, file),
            crc: Crc64Nvme::new(),
            len: 0,
            meta: wanted,
            resumable,
            failed: false,
        })
    }

    fn resume(
        &self,
        staging_fd: OwnedFd,
        data_name: String,
        meta_name: String,
        mut file: File,
        meta: StagedMeta,
    ) -> io::Result<Staged> {
        // Bytes past the last checkpoint may be garbage after a power cut: drop them.
        file.set_len(meta.durable_len)?;
        let mut crc = Crc64Nvme::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut remaining = meta.durable_len;
        while remaining > 0 {
            let want = buf
                .len()
                .min(usize::try_from(remaining).unwrap_or(usize::MAX));
            let n = file.read(&mut buf[..want])?;
            if n == 0 {
                // Shorter than its fstat said a moment ago: start over.
                drop(file);
                let file = create_new(staging_fd.as_fd(), &data_name)?;
                let fresh = StagedMeta {
                    durable_len: 0,
                    ..meta
                };
                write_meta(staging_fd.as_fd(), &meta_name, &fresh)?;
                return Ok(Staged {
                    share: self.clone(),
                    staging_fd,
                    data_name,
                    meta_name,
                    out: BufWriter::with_capacity(64 * 1024, file),
                    crc: Crc64Nvme::new(),
                    len: 0,
                    meta: fresh,
                    resumable: true,
                    failed: false,
                });
            }
            crc.update(&buf[..n]);
            remaining -= n as u64;
        }
        file.seek(SeekFrom::Start(meta.durable_len))?;
        Ok(Staged {
            share: self.clone(),
            staging_fd,
            data_name,
            meta_name,
            out: BufWriter::with_capacity(64 * 1024, file),
            crc,
            len: meta.durable_len,
            meta,
            resumable: true,
            failed: false,
        })
    }

    fn read_meta(&self, staging: BorrowedFd<'_>, name: &str) -> Option<StagedMeta> {
        let file = open_regular(staging, name, &self.staging.join(name)).ok()?;
        let mut meta = None;
        journal::read_journal_file(
            file,
            &self.staging.join(name),
            META_KIND,
            |m: StagedMeta| meta = Some(m),
        )
        .ok()?;
        meta
    }

    /// Remove staged downloads whose key `keep` rejects, plus orphans and temporaries.
    /// Returns how many files were removed. Do not run it while downloads are in progress
    /// unless `keep` accepts their keys.
    pub fn clean_staging(&self, keep: impl Fn(&str) -> bool) -> io::Result<usize> {
        let staging = self.staging_dir()?;
        let mut removed = 0;
        for entry in rustix::fs::Dir::read_from(&staging)? {
            let entry = entry?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            let path = Path::new(name);
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            let drop_it = match ext {
                // A sidecar without its data file has nothing left to resume.
                META_EXT => {
                    !matches!(
                        stat_at(staging.as_fd(), format!("{stem}.{DATA_EXT}")),
                        Ok(Some(_))
                    ) || !self
                        .read_meta(staging.as_fd(), &format!("{stem}.{META_EXT}"))
                        .is_some_and(|m| keep(&m.key))
                }
                DATA_EXT => !self
                    .read_meta(staging.as_fd(), &format!("{stem}.{META_EXT}"))
                    .is_some_and(|m| keep(&m.key)),
                _ => true,
            };
            let is_file = match entry.file_type() {
                FileType::Unknown => stat_at(staging.as_fd(), name)?
                    .is_some_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile),
                t => t == FileType::RegularFile,
            };
            if drop_it && is_file {
                match rustix::fs::unlinkat(&staging, name, AtFlags::empty()) {
                    Ok(()) => removed += 1,
                    Err(Errno::NOENT) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(removed)
    }
}

impl Staged {
    /// Append downloaded bytes.
    ///
    /// A full disk or exhausted quota comes back with its kind kept
    /// ([`io::ErrorKind::StorageFull`] / [`io::ErrorKind::QuotaExceeded`], see
    /// [`is_no_space`]) and a message naming the share.
    pub fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("an earlier write to this download failed"));
        }
        if let Err(e) = self.out.write_all(buf) {
            self.failed = true;
            return Err(self.share.name_no_space(e));
        }
        self.crc.update(buf);
        self.len += buf.len() as u64;
        if self.resumable && self.len - self.meta.durable_len >= CHECKPOINT_BYTES {
            self.checkpoint().map_err(|e| self.share.name_no_space(e))?;
        }
        Ok(())
    }

    /// Bytes staged so far: where a resumed download continues.
    pub fn offset(&self) -> u64 {
        self.len
    }

    pub fn key(&self) -> &str {
        &self.meta.key
    }

    /// Make the bytes so far durable and let the sidecar vouch for them.
    fn checkpoint(&mut self) -> io::Result<()> {
        let result = self
            .out
            .flush()
            .and_then(|()| self.out.get_ref().sync_data());
        if let Err(e) = result {
            self.failed = true;
            return Err(e);
        }
        self.meta.durable_len = self.len;
        write_meta(self.staging_fd.as_fd(), &self.meta_name, &self.meta)
    }

    /// Throw the download away (data and sidecar).
    pub fn discard(self) {
        let Staged {
            share,
            staging_fd,
            data_name,
            meta_name,
            out,
            ..
        } = self;
        // Nothing to flush into a file that is being removed.
        let (_file, _unflushed) = out.into_parts();
        for name in [&meta_name, &data_name] {
            if let Err(e) = unlink_if_present(staging_fd.as_fd(), name) {
                log::warn!(
                    "could not remove staged {}: {e}",
                    share.staging.join(name).display()
                );
            }
        }
    }

    /// Verify and move the download to `rel` inside the share, with mtime `mtime` (Unix
    /// seconds). On a size or checksum mismatch, or a path that is refused, the staged file is
    /// discarded, so a retry starts clean; after an I/O error it is kept for a resume.
    pub fn publish(
        self,
        expect: &Expected,
        rel: &Path,
        mtime: i64,
    ) -> Result<Published, PublishError> {
        self.publish_with(expect, rel, mtime, true)
    }

    /// [`Self::publish`], except that the directory is not fsynced: the caller collects
    /// [`Published::dir_to_sync`] and calls [`ShareDir::sync_dir`] once per directory before
    /// it records the publish as durable. (The file's own data is fsynced before the rename
    /// either way, so the path never shows a partial file.) Many small files in one directory
    /// then cost one directory fsync per batch instead of one each.
    pub fn publish_deferring_dir_sync(
        self,
        expect: &Expected,
        rel: &Path,
        mtime: i64,
    ) -> Result<Published, PublishError> {
        self.publish_with(expect, rel, mtime, false)
    }

    fn publish_with(
        mut self,
        expect: &Expected,
        rel: &Path,
        mtime: i64,
        sync_dir: bool,
    ) -> Result<Published, PublishError> {
        let result = match self.verify_and_move(expect, rel, mtime, sync_dir) {
            Err(PublishError::Io(e)) if is_no_space(&e) => Err(PublishError::NoSpace {
                path: self.share.root.clone(),
                source: e,
            }),
            other => other,
        };
        match &result {
            // Nothing left to resume. A crash before this leaves a sidecar without data,
            // which `ShareDir::clean_staging` removes.
            Ok(_) => {
                if self.resumable
                    && let Err(e) = unlink_if_present(self.staging_fd.as_fd(), &self.meta_name)
                {
                    log::warn!(
                        "could not remove {}: {e}",
                        self.share.staging.join(&self.meta_name).display()
                    );
                }
            }
            Err(
                PublishError::SizeMismatch { .. }
                | PublishError::ChecksumMismatch { .. }
                | PublishError::UnsafePath { .. },
            ) => self.discard(),
            // A small download has nothing worth resuming: give the space back at once.
            Err(PublishError::NoSpace { .. }) if !self.resumable => self.discard(),
            Err(PublishError::NoSpace { .. } | PublishError::Io(_)) => {}
        }
        result
    }

    fn verify_and_move(
        &mut self,
        expect: &Expected,
        rel: &Path,
        mtime: i64,
        sync_dir: bool,
    ) -> Result<Published, PublishError> {
        if self.failed {
            return Err(PublishError::Io(io::Error::other(
                "an earlier write to this download failed",
            )));
        }
        self.out.flush()?;
        if self.len != expect.size {
            return Err(PublishError::SizeMismatch {
                expected: expect.size,
                actual: self.len,
            });
        }
        let actual = self.crc.finish();
        if let Some(expected) = expect.crc64nvme
            && expected != actual
        {
            return Err(PublishError::ChecksumMismatch { expected, actual });
        }
        check_rel(rel, false).map_err(|reason| PublishError::UnsafePath {
            path: rel.to_path_buf(),
            reason,
        })?;
        let name = file_name(rel)?;

        let file = self.out.get_ref();
        file.set_modified(unix_to_system_time(mtime))?;
        file.sync_all()?;

        // The directory the file goes into, resolved from the share root without following a
        // symlink; the rename and the fsync below act on this descriptor, so swapping a
        // directory on the way for a symlink now changes nothing.
        let dir = match self.share.walk(parent_of(rel), true)? {
            Walk::Dir(fd) => fd,
            Walk::Unsafe(path, reason) => return Err(PublishError::UnsafePath { path, reason }),
            Walk::Missing(path) => {
                return Err(PublishError::UnsafePath {
                    path,
                    reason: "vanished while it was created",
                });
            }
        };
        let dest_is_dir = PublishError::UnsafePath {
            path: self.share.root.join(rel),
            reason: "is a directory",
        };
        match stat_at(dir.as_fd(), name)? {
            Some(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                return Err(dest_is_dir);
            }
            // A file or symlink there is replaced; `rename` never follows the old symlink.
            _ => {}
        }
        match rustix::fs::renameat(&self.staging_fd, self.data_name.as_str(), &dir, name) {
            Ok(()) => {}
            // Made a directory since the stat.
            Err(Errno::ISDIR | Errno::NOTEMPTY | Errno::EXIST) => return Err(dest_is_dir),
            Err(e) => return Err(e.into()),
        }
        let dir_to_sync = if sync_dir {
            rustix::fs::fsync(&dir)?;
            None
        } else {
            match self.share.defer_dir_sync(parent_of(rel), dir)? {
                None => Some(parent_of(rel).to_path_buf()),
                Some(dir) => {
                    rustix::fs::fsync(&dir)?;
                    None
                }
            }
        };
        Ok(Published {
            size: self.len,
            crc64nvme: actual,
            dir_to_sync,
        })
    }
}

impl ShareDir {
    /// A full disk or quota keeps its kind and gets the share named in the message.
    fn name_no_space(&self, e: io::Error) -> io::Error {
        if is_no_space(&e) {
            io::Error::new(
                e.kind(),
                format!("no space left on {}: {e}", self.root.display()),
            )
        } else {
            e
        }
    }
}

/// Staging file stem for a key: collision-resistant, so two keys never share a staged file.
fn staging_stem(key: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Replace the sidecar atomically (temp + rename), so it is always whole or absent.
fn write_meta(staging: BorrowedFd<'_>, name: &str, meta: &StagedMeta) -> io::Result<()> {
    let mut bytes = journal::encode_header(META_KIND).to_vec();
    let mut frame = Vec::new();
    journal::encode_record(meta, &mut frame).map_err(io::Error::other)?;
    bytes.extend_from_slice(&frame);
    let tmp = Path::new(name).with_extension(TMP_EXT);
    let mut file = create_new(staging, &tmp)?;
    file.write_all(&bytes)?;
    drop(file);
    rustix::fs::renameat(staging, &tmp, staging, name).map_err(Into::into)
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::crc64::nvme;
    use crate::model::FileFacts;
    use rustix::fs::RenameFlags;
    use std::fs::{self, OpenOptions};
    use std::os::unix::fs::{MetadataExt, symlink};
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    /// Big enough to be resumable.
    const BIG: u64 = CHECKPOINT_BYTES;

    fn share() -> (tempfile::TempDir, ShareDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let share = ShareDir::open(dir.path()).expect("open");
        (dir, share)
    }

    fn expected(data: &[u8]) -> Expected {
        Expected {
            size: data.len() as u64,
            crc64nvme: Some(nvme(data)),
        }
    }

    /// Write the way a download does: in 64 KiB pieces, so checkpoints land on 8 MiB.
    fn write_chunks(s: &mut Staged, data: &[u8]) {
        for chunk in data.chunks(64 * 1024) {
            s.write_all(chunk).expect("write");
        }
    }

    fn staged_files(share: &ShareDir) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&share.staging)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn open_requires_an_existing_directory_and_creates_staging() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(ShareDir::open(&dir.path().join("missing")).is_err());
        let file = dir.path().join("f");
        fs::write(&file, b"x").expect("write");
        assert!(ShareDir::open(&file).is_err());
        ShareDir::open(dir.path()).expect("open");
        assert!(dir.path().join(".sgw/staging").is_dir());
        // Opening twice is fine.
        ShareDir::open(dir.path()).expect("reopen");
    }

    #[test]
    fn open_refuses_a_symlinked_agent_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let elsewhere = tempfile::tempdir().expect("tempdir");
        symlink(elsewhere.path(), dir.path().join(".sgw")).expect("symlink");
        assert!(ShareDir::open(dir.path()).is_err());
    }

    #[test]
    fn publish_makes_a_verified_file_with_mtime_and_cleans_staging() {
        let (dir, share) = share();
        let data = b"hello world!".repeat(1000);
        let mut s = share
            .begin("k/a.txt", Some("e1"), 1_700_000_000, 1)
            .expect("begin");
        assert_eq!(s.offset(), 0);
        for chunk in data.chunks(777) {
            s.write_all(chunk).expect("write");
        }
        // Nothing visible before publish.
        assert!(!dir.path().join("sub/a.txt").exists());
        let p = s
            .publish(
                &expected(&data),
                Path::new("sub/deeper/a.txt"),
                1_700_000_000,
            )
            .expect("publish");
        assert_eq!(p.size, data.len() as u64);
        assert_eq!(p.crc64nvme, nvme(&data));
        let dest = dir.path().join("sub/deeper/a.txt");
        assert_eq!(fs::read(&dest).expect("read"), data);
        assert_eq!(fs::metadata(&dest).expect("meta").mtime(), 1_700_000_000);
        // A small object leaves nothing behind in staging.
        assert!(
            staged_files(&share).is_empty(),
            "{:?}",
            staged_files(&share)
        );
        assert_eq!(
            share
                .file_facts(Path::new("sub/deeper/a.txt"))
                .expect("facts"),
            Some(FileFacts {
                size: data.len() as u64,
                mtime: 1_700_000_000
            })
        );
    }

    #[test]
    fn publish_overwrites_an_existing_file_and_handles_empty_and_old_mtimes() {
        let (dir, share) = share();
        fs::write(dir.path().join("f"), b"old").expect("write");
        let s = share.begin("f", None, 0, 1).expect("begin");
        s.publish(&expected(b""), Path::new("f"), -86_400)
            .expect("publish");
        assert_eq!(fs::read(dir.path().join("f")).expect("read"), b"");
        assert_eq!(
            fs::metadata(dir.path().join("f")).expect("m").mtime(),
            -86_400
        );
    }

    #[test]
    fn checksum_mismatch_discards_and_hides_everything() {
        let (dir, share) = share();
        fs::write(dir.path().join("f"), b"previous").expect("write");
        let mut s = share.begin("f", Some("e"), 5, 1).expect("begin");
        s.write_all(b"corrupt!").expect("write");
        let err = s
            .publish(&expected(b"intended"), Path::new("f"), 5)
            .expect_err("mismatch");
        assert!(matches!(
            err,
            PublishError::ChecksumMismatch { expected, actual }
                if expected == nvme(b"intended") && actual == nvme(b"corrupt!")
        ));
        assert!(err.to_string().contains("CRC-64"));
        assert_eq!(fs::read(dir.path().join("f")).expect("read"), b"previous");
        assert!(staged_files(&share).is_empty());
        // The retry starts clean rather than resuming the bad bytes.
        let s = share.begin("f", Some("e"), 5, 1).expect("begin");
        assert_eq!(s.offset(), 0);
    }

    #[test]
    fn size_mismatch_discards() {
        let (dir, share) = share();
        let mut s = share.begin("f", None, 5, 1).expect("begin");
        s.write_all(b"abc").expect("write");
        let err = s
            .publish(
                &Expected {
                    size: 4,
                    crc64nvme: None,
                },
                Path::new("f"),
                5,
            )
            .expect_err("short");
        assert!(matches!(
            err,
            PublishError::SizeMismatch {
                expected: 4,
                actual: 3
            }
        ));
        assert!(!dir.path().join("f").exists());
        assert!(staged_files(&share).is_empty());
    }

    #[test]
    fn publish_without_server_crc_still_reports_the_local_crc() {
        let (_dir, share) = share();
        let mut s = share.begin("f", None, 5, 1).expect("begin");
        s.write_all(b"123456789").expect("write");
        let p = s
            .publish(
                &Expected {
                    size: 9,
                    crc64nvme: None,
                },
                Path::new("f"),
                5,
            )
            .expect("publish");
        assert_eq!(p.crc64nvme, 0xAE8B14860A799888);
    }

    #[test]
    fn resume_needs_same_key_etag_and_last_modified() {
        let (_dir, share) = share();
        let data: Vec<u8> = (0..(CHECKPOINT_BYTES + 5000))
            .map(|i| (i % 251) as u8)
            .collect();
        let checkpointed = CHECKPOINT_BYTES as usize;
        {
            let mut s = share.begin("big", Some("e1"), 10, BIG).expect("begin");
            write_chunks(&mut s, &data[..checkpointed + 1234]);
            // Dropped without publish: as if the agent died here.
        }
        // Another version or no ETag: start over.
        assert_eq!(
            share.begin("big", Some("e2"), 10, BIG).expect("b").offset(),
            0
        );
        {
            let mut s = share.begin("big", Some("e1"), 10, BIG).expect("begin");
            write_chunks(&mut s, &data[..checkpointed + 1234]);
        }
        assert_eq!(
            share.begin("big", Some("e1"), 11, BIG).expect("b").offset(),
            0
        );
        {
            let mut s = share.begin("big", Some("e1"), 10, BIG).expect("begin");
            write_chunks(&mut s, &data[..checkpointed + 1234]);
        }
        assert_eq!(share.begin("big", None, 10, BIG).expect("b").offset(), 0);
        {
            let mut s = share.begin("big", Some("e1"), 10, BIG).expect("begin");
            write_chunks(&mut s, &data[..checkpointed + 1234]);
        }
        // Same version: continue from the last checkpoint; the CRC covers the old bytes.
        let mut s = share.begin("big", Some("e1"), 10, BIG).expect("begin");
        assert_eq!(s.offset(), CHECKPOINT_BYTES);
        s.write_all(&data[checkpointed..]).expect("write");
        let p = s
            .publish(&expected(&data), Path::new("big"), 10)
            .expect("publish resumed");
        assert_eq!(p.crc64nvme, nvme(&data));
    }

    #[test]
    fn resume_ignores_garbage_past_the_checkpoint() {
        let (_dir, share) = share();
        let data: Vec<u8> = (0..(CHECKPOINT_BYTES + 10))
            .map(|i| (i % 7) as u8)
            .collect();
        {
            let mut s = share.begin("k", Some("e"), 1, BIG).expect("begin");
            s.write_all(&data[..CHECKPOINT_BYTES as usize])
                .expect("write");
        }
        // A power cut left zeros beyond what was fsynced.
        let data_file = share
            .staging
            .join(format!("{}.{DATA_EXT}", staging_stem("k")));
        let mut f = OpenOptions::new()
            .append(true)
            .open(&data_file)
            .expect("open");
        f.write_all(&[0u8; 4096]).expect("write");
        drop(f);
        let mut s = share.begin("k", Some("e"), 1, BIG).expect("begin");
        assert_eq!(s.offset(), CHECKPOINT_BYTES);
        s.write_all(&data[CHECKPOINT_BYTES as usize..])
            .expect("write");
        s.publish(&expected(&data), Path::new("k"), 1)
            .expect("publish");
    }

    #[test]
    fn a_damaged_sidecar_means_a_fresh_start() {
        let (_dir, share) = share();
        let data = vec![3u8; CHECKPOINT_BYTES as usize];
        {
            let mut s = share.begin("k", Some("e"), 1, BIG).expect("begin");
            s.write_all(&data).expect("write");
        }
        let meta = share
            .staging
            .join(format!("{}.{META_EXT}", staging_stem("k")));
        let mut bytes = fs::read(&meta).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&meta, &bytes).expect("write");
        assert_eq!(
            share.begin("k", Some("e"), 1, BIG).expect("begin").offset(),
            0
        );
    }

    #[test]
    fn discard_removes_staged_data() {
        let (_dir, share) = share();
        let mut s = share.begin("k", Some("e"), 1, BIG).expect("begin");
        s.write_all(b"abc").expect("write");
        s.discard();
        assert!(staged_files(&share).is_empty());
    }

    #[test]
    fn publish_refuses_symlinked_or_file_parents_and_directory_targets() {
        let (dir, share) = share();
        let outside = tempfile::tempdir().expect("tempdir");
        symlink(outside.path(), dir.path().join("link")).expect("symlink");
        fs::write(dir.path().join("plain"), b"x").expect("write");
        fs::create_dir(dir.path().join("adir")).expect("mkdir");

        for (rel, needle) in [
            ("link/f", "link"),
            ("link/deeper/f", "link"),
            ("plain/f", "plain"),
            ("adir", "adir"),
            ("../escape", "escape"),
            ("/abs", "abs"),
            (".sgw/staging/x", ".sgw"),
        ] {
            let mut s = share.begin(rel, None, 1, 1).expect("begin");
            s.write_all(b"data").expect("write");
            let err = s
                .publish(&expected(b"data"), Path::new(rel), 1)
                .expect_err(rel);
            assert!(
                matches!(&err, PublishError::UnsafePath { path, .. }
                    if path.to_string_lossy().contains(needle)),
                "{rel}: {err}"
            );
        }
        assert_eq!(fs::read_dir(outside.path()).expect("rd").count(), 0);
        // A refused path will not become acceptable by retrying: nothing is kept staged.
        assert!(
            staged_files(&share).is_empty(),
            "{:?}",
            staged_files(&share)
        );
        assert!(dir.path().join("adir").is_dir());
        assert_eq!(fs::read(dir.path().join("plain")).expect("read"), b"x");
    }

    #[test]
    fn publish_replaces_a_symlink_without_writing_through_it() {
        let (dir, share) = share();
        let outside = tempfile::tempdir().expect("tempdir");
        let target = outside.path().join("victim");
        fs::write(&target, b"precious").expect("write");
        symlink(&target, dir.path().join("f")).expect("symlink");
        let mut s = share.begin("f", None, 1, 1).expect("begin");
        s.write_all(b"new").expect("write");
        s.publish(&expected(b"new"), Path::new("f"), 1)
            .expect("publish");
        assert_eq!(fs::read(&target).expect("read"), b"precious");
        assert!(
            fs::symlink_metadata(dir.path().join("f"))
                .expect("m")
                .is_file()
        );
    }

    #[test]
    fn file_facts_sees_only_regular_files_inside_the_share() {
        let (dir, share) = share();
        let outside = tempfile::tempdir().expect("tempdir");
        fs::write(outside.path().join("f"), b"outside").expect("write");
        symlink(outside.path(), dir.path().join("link")).expect("symlink");
        symlink(outside.path().join("f"), dir.path().join("flink")).expect("symlink");
        fs::create_dir(dir.path().join("d")).expect("mkdir");
        for rel in ["link/f", "flink", "d", "missing", "missing/f"] {
            assert_eq!(share.file_facts(Path::new(rel)).expect(rel), None, "{rel}");
        }
        assert!(share.file_facts(Path::new("../x")).is_err());
        assert!(share.file_facts(Path::new("")).is_err());
    }

    #[test]
    fn remove_file_prunes_empty_parents_but_not_the_root_or_busy_dirs() {
        let (dir, share) = share();
        for rel in ["a/b/c/f1", "a/keep"] {
            let mut s = share.begin(rel, None, 1, 1).expect("begin");
            s.write_all(b"x").expect("write");
            s.publish(&expected(b"x"), Path::new(rel), 1)
                .expect("publish");
        }
        assert!(share.remove_file(Path::new("a/b/c/f1")).expect("remove"));
        assert!(!dir.path().join("a/b").exists());
        assert!(dir.path().join("a/keep").is_file());
        assert!(!share.remove_file(Path::new("a/b/c/f1")).expect("again"));
        assert!(share.remove_file(Path::new("a/keep")).expect("remove"));
        assert!(!dir.path().join("a").exists());
        assert!(dir.path().is_dir());
        assert!(dir.path().join(".sgw/staging").is_dir());
    }

    #[test]
    fn remove_file_refuses_directories_and_never_follows_symlinks() {
        let (dir, share) = share();
        let outside = tempfile::tempdir().expect("tempdir");
        fs::write(outside.path().join("f"), b"outside").expect("write");
        symlink(outside.path(), dir.path().join("link")).expect("symlink");
        symlink(outside.path().join("f"), dir.path().join("flink")).expect("symlink");
        fs::create_dir(dir.path().join("d")).expect("mkdir");
        assert!(share.remove_file(Path::new("d")).is_err());
        assert!(share.remove_file(Path::new("link/f")).is_err());
        // The symlink itself goes; its target stays.
        assert!(share.remove_file(Path::new("flink")).expect("remove"));
        assert!(outside.path().join("f").is_file());
        assert!(share.remove_file(Path::new(".sgw/staging")).is_err());
    }

    #[test]
    fn make_dir_creates_nested_dirs_and_refuses_symlinks() {
        let (dir, share) = share();
        share.make_dir(Path::new("x/y/z")).expect("mkdir");
        assert!(dir.path().join("x/y/z").is_dir());
        share.make_dir(Path::new("x/y/z")).expect("again");
        share.make_dir(Path::new("")).expect("root");
        let outside = tempfile::tempdir().expect("tempdir");
        symlink(outside.path(), dir.path().join("link")).expect("symlink");
        assert!(matches!(
            share.make_dir(Path::new("link/sub")),
            Err(PublishError::UnsafePath { .. })
        ));
        fs::write(dir.path().join("file"), b"x").expect("write");
        assert!(matches!(
            share.make_dir(Path::new("file")),
            Err(PublishError::UnsafePath { .. })
        ));
        assert_eq!(fs::read_dir(outside.path()).expect("rd").count(), 0);
    }

    #[test]
    fn conflict_aside_keeps_every_unknown_file() {
        let (dir, share) = share();
        fs::create_dir(dir.path().join("d")).expect("mkdir");
        fs::write(dir.path().join("d/f"), b"first").expect("write");
        let a = share.conflict_aside(Path::new("d/f")).expect("aside");
        assert!(a.starts_with("d"));
        assert!(
            a.to_string_lossy().contains("f.sgw-conflict-"),
            "{}",
            a.display()
        );
        fs::write(dir.path().join("d/f"), b"second").expect("write");
        let b = share.conflict_aside(Path::new("d/f")).expect("aside");
        assert_ne!(a, b);
        assert_eq!(fs::read(dir.path().join(&a)).expect("read"), b"first");
        assert_eq!(fs::read(dir.path().join(&b)).expect("read"), b"second");
        assert!(!dir.path().join("d/f").exists());
        assert!(share.conflict_aside(Path::new("d/missing")).is_err());
    }

    #[test]
    fn conflict_names_fit_a_component() {
        let long = "é".repeat(127);
        let name = conflict_name(std::ffi::OsStr::new(&long), ".sgw-conflict-1700000000-12");
        assert!(name.len() <= MAX_NAME_BYTES);
        assert!(name.to_string_lossy().ends_with("-12"));
    }

    #[test]
    fn clean_staging_keeps_only_what_is_asked() {
        let (_dir, share) = share();
        for key in ["keep", "drop"] {
            let mut s = share.begin(key, Some("e"), 1, BIG).expect("begin");
            s.write_all(b"abc").expect("write");
        }
        fs::write(share.staging.join("junk.tmp"), b"x").expect("write");
        fs::write(share.staging.join("orphan.part"), b"x").expect("write");
        // A small download cut off by a crash (no sidecar), and a sidecar whose data file was
        // already published (a crash between the rename and the sidecar's removal).
        let mut small = share.begin("small", Some("e"), 1, 3).expect("begin");
        small.write_all(b"abc").expect("write");
        drop(small);
        let mut done = share.begin("done", Some("e"), 1, BIG).expect("begin");
        done.write_all(b"abc").expect("write");
        drop(done);
        fs::remove_file(
            share
                .staging
                .join(format!("{}.{DATA_EXT}", staging_stem("done"))),
        )
        .expect("as if renamed");
        let removed = share.clean_staging(|k| k != "drop").expect("clean");
        assert_eq!(removed, 6, "{:?}", staged_files(&share));
        assert_eq!(staged_files(&share).len(), 2);
        assert_eq!(
            share.begin("keep", Some("e"), 1, BIG).expect("b").key(),
            "keep"
        );
    }

    #[test]
    fn a_deferred_publish_names_the_directory_to_sync() {
        let (dir, share) = share();
        let data = b"deferred".to_vec();
        let mut s = share.begin("a/b/c", None, 1, 8).expect("begin");
        s.write_all(&data).expect("write");
        let p = s
            .publish_deferring_dir_sync(&expected(&data), Path::new("a/b/c"), 1)
            .expect("publish");
        // Visible and complete at once; only the directory entry awaits its fsync.
        assert_eq!(fs::read(dir.path().join("a/b/c")).expect("read"), data);
        assert_eq!(p.dir_to_sync.as_deref(), Some(Path::new("a/b")));
        share.sync_dir(Path::new("a/b")).expect("sync dir");
        share
            .sync_dir(Path::new(""))
            .expect("the root is a directory too");
        // The immediate variant syncs itself.
        let mut s = share.begin("d", None, 1, 8).expect("begin");
        s.write_all(&data).expect("write");
        let p = s
            .publish(&expected(&data), Path::new("d"), 1)
            .expect("publish");
        assert_eq!(p.dir_to_sync, None);
        for bad in ["../x", "/etc", ".sgw", "a/../../x"] {
            assert!(share.sync_dir(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn small_objects_get_no_sidecar_and_do_not_resume() {
        let (_dir, share) = share();
        let data = b"small object".to_vec();
        {
            let mut s = share
                .begin("k", Some("e"), 1, data.len() as u64)
                .expect("begin");
            s.write_all(&data[..5]).expect("write");
            assert_eq!(
                staged_files(&share),
                vec![format!("{}.{DATA_EXT}", staging_stem("k"))]
            );
        }
        let mut s = share
            .begin("k", Some("e"), 1, data.len() as u64)
            .expect("begin");
        assert_eq!(s.offset(), 0, "nothing to resume below CHECKPOINT_BYTES");
        s.write_all(&data).expect("write");
        s.publish(&expected(&data), Path::new("k"), 1)
            .expect("publish");
        assert!(staged_files(&share).is_empty());
    }

    #[test]
    fn a_small_version_drops_the_sidecar_of_a_big_one() {
        let (_dir, share) = share();
        {
            let mut s = share.begin("k", Some("e1"), 1, BIG).expect("begin");
            s.write_all(&vec![1u8; CHECKPOINT_BYTES as usize])
                .expect("write");
        }
        assert_eq!(staged_files(&share).len(), 2, "data + sidecar");
        let data = b"now small".to_vec();
        let mut s = share
            .begin("k", Some("e2"), 2, data.len() as u64)
            .expect("begin");
        assert_eq!(s.offset(), 0);
        assert_eq!(staged_files(&share).len(), 1, "the old sidecar is gone");
        s.write_all(&data).expect("write");
        s.publish(&expected(&data), Path::new("k"), 2)
            .expect("publish");
        assert!(staged_files(&share).is_empty());
        // And a resumable one that is published leaves no sidecar either.
        let big = vec![2u8; CHECKPOINT_BYTES as usize + 1];
        let mut s = share.begin("b", Some("e"), 1, BIG).expect("begin");
        write_chunks(&mut s, &big);
        s.publish(&expected(&big), Path::new("b"), 1)
            .expect("publish");
        assert!(
            staged_files(&share).is_empty(),
            "{:?}",
            staged_files(&share)
        );
    }

    /// Everything below `dir`, symlinks included (not followed).
    fn entries_under(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).expect("read_dir") {
                let e = e.expect("entry");
                out.push(e.path());
                if e.file_type().expect("type").is_dir() {
                    stack.push(e.path());
                }
            }
        }
        out.sort();
        out
    }

    fn publish_bytes(share: &ShareDir, rel: &str, data: &[u8]) -> Result<Published, PublishError> {
        let mut s = share.begin(rel, None, 1, data.len() as u64).expect("begin");
        s.write_all(data).expect("write");
        s.publish(&expected(data), Path::new(rel), 1)
    }

    /// A share at `<tmp>/share`, with `<tmp>` (the share root's parent) and an `outside`
    /// directory next to it to aim symlinks at.
    fn nested_share() -> (tempfile::TempDir, PathBuf, PathBuf, ShareDir) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("share");
        let outside = tmp.path().join("outside");
        fs::create_dir(&root).expect("mkdir");
        fs::create_dir(&outside).expect("mkdir");
        let share = ShareDir::open(&root).expect("open");
        (tmp, root, outside, share)
    }

    #[test]
    fn symlinks_anywhere_on_the_way_are_refused_and_named() {
        let (tmp, root, outside, share) = nested_share();
        fs::create_dir_all(root.join("a/b")).expect("mkdir");
        // An intermediate directory, one deeper down, the root's parent, the root itself.
        symlink(&outside, root.join("a/link")).expect("symlink");
        symlink(&outside, root.join("a/b/deep")).expect("symlink");
        symlink("..", root.join("up")).expect("symlink");
        symlink(".", root.join("self")).expect("symlink");
        symlink(tmp.path(), root.join("parent")).expect("symlink");
        for (rel, at) in [
            ("a/link/f", "a/link"),
            ("a/link/x/y/f", "a/link"),
            ("a/b/deep/f", "a/b/deep"),
            ("up/f", "up"),
            ("up/share/f", "up"),
            ("self/f", "self"),
            ("parent/outside/f", "parent"),
        ] {
            let err = publish_bytes(&share, rel, b"data").expect_err(rel);
            match &err {
                PublishError::UnsafePath { path, reason } => {
                    assert_eq!(path, &root.join(at), "{rel}");
                    assert_eq!(*reason, SYMLINK, "{rel}");
                }
                other => panic!("{rel}: {other}"),
            }
            let msg = err.to_string();
            assert!(
                msg.contains(&format!(
                    "{} is a symlink; the agent never writes through one",
                    root.join(at).display()
                )),
                "{msg}"
            );
            assert!(share.make_dir(&Path::new(rel).join("d")).is_err(), "{rel}");
            assert_eq!(share.file_facts(Path::new(rel)).expect(rel), None, "{rel}");
            assert!(share.open_file_read(Path::new(rel)).is_err(), "{rel}");
            assert!(share.remove_file(Path::new(rel)).is_err(), "{rel}");
            assert!(share.remove_empty_dir(Path::new(rel)).is_err(), "{rel}");
            assert!(share.conflict_aside(Path::new(rel)).is_err(), "{rel}");
            assert!(share.read_dir(Path::new(rel)).is_err(), "{rel}");
            assert!(share.sync_dir(parent_of(Path::new(rel))).is_err(), "{rel}");
        }
        assert!(entries_under(&outside).is_empty());
        let mut beside: Vec<_> = fs::read_dir(tmp.path())
            .expect("rd")
            .map(|e| e.expect("e").file_name())
            .collect();
        beside.sort();
        assert_eq!(
            beside,
            ["outside", "share"],
            "nothing new next to the share"
        );
        assert!(
            staged_files(&share).is_empty(),
            "{:?}",
            staged_files(&share)
        );
    }

    #[test]
    fn a_symlink_as_the_final_component_is_never_followed() {
        let (_tmp, root, outside, share) = nested_share();
        fs::write(outside.join("victim"), b"precious").expect("write");
        symlink(&outside, root.join("dirlink")).expect("symlink");
        symlink(outside.join("victim"), root.join("filelink")).expect("symlink");
        // A folder key at a symlink to a directory is not "already there".
        assert!(matches!(
            share.make_dir(Path::new("dirlink")),
            Err(PublishError::UnsafePath {
                reason: SYMLINK,
                ..
            })
        ));
        assert!(share.read_dir(Path::new("dirlink")).is_err());
        assert!(share.sync_dir(Path::new("dirlink")).is_err());
        assert!(!share.remove_empty_dir(Path::new("dirlink")).expect("rmdir"));
        let err = share
            .open_file_read(Path::new("filelink"))
            .expect_err("read through a symlink");
        assert!(err.to_string().contains("is a symlink"), "{err}");
        // Moving a symlink aside moves the link, not its target.
        let aside = share.conflict_aside(Path::new("filelink")).expect("aside");
        assert!(
            fs::symlink_metadata(root.join(&aside))
                .expect("m")
                .is_symlink()
        );
        assert_eq!(fs::read(outside.join("victim")).expect("read"), b"precious");
        assert!(root.join("dirlink").is_symlink());
        assert_eq!(entries_under(&outside), [outside.join("victim")]);
    }

    #[test]
    fn a_symlinked_staging_dir_is_refused_even_after_open() {
        let (_tmp, root, outside, share) = nested_share();
        fs::remove_dir(root.join(".sgw/staging")).expect("rmdir");
        symlink(&outside, root.join(".sgw/staging")).expect("symlink");
        let err = share.begin("k", None, 1, 1).err().expect("begin refused");
        assert!(err.to_string().contains("is a symlink"), "{err}");
        assert!(share.clean_staging(|_| false).is_err());
        assert!(ShareDir::open(&root).is_err());
        // The same with `.sgw` itself swapped.
        fs::remove_file(root.join(".sgw/staging")).expect("rm");
        fs::rename(root.join(".sgw"), root.join("moved")).expect("mv");
        symlink(&outside, root.join(".sgw")).expect("symlink");
        assert!(share.begin("k", None, 1, 1).is_err());
        assert!(entries_under(&outside).is_empty());
        // Removed outright, it is made again.
        fs::remove_file(root.join(".sgw")).expect("rm");
        publish_bytes(&share, "f", b"x").expect("publish");
        assert!(root.join(".sgw/staging").is_dir());
    }

    #[test]
    fn a_directory_swapped_after_a_deferred_publish_is_synced_not_followed() {
        let (_tmp, root, outside, share) = nested_share();
        let mut s = share.begin("d/f", None, 1, 1).expect("begin");
        s.write_all(b"x").expect("write");
        let p = s
            .publish_deferring_dir_sync(&expected(b"x"), Path::new("d/f"), 1)
            .expect("publish");
        assert_eq!(p.dir_to_sync.as_deref(), Some(Path::new("d")));
        fs::rename(root.join("d"), root.join("d-moved")).expect("mv");
        symlink(&outside, root.join("d")).expect("symlink");
        // The directory the rename went into is fsynced through the kept descriptor.
        share.sync_dir(Path::new("d")).expect("sync");
        // Nothing pending any more: now the path is resolved, and refused.
        assert!(share.sync_dir(Path::new("d")).is_err());
        assert_eq!(fs::read(root.join("d-moved/f")).expect("read"), b"x");
        assert!(entries_under(&outside).is_empty());
    }

    #[test]
    fn deferred_syncs_keep_one_descriptor_per_directory_and_are_bounded() {
        let (_tmp, _root, _outside, share) = nested_share();
        for i in 0..5 {
            let rel = format!("same/f{i}");
            let mut s = share.begin(&rel, None, 1, 1).expect("begin");
            s.write_all(b"x").expect("write");
            s.publish_deferring_dir_sync(&expected(b"x"), Path::new(&rel), 1)
                .expect("publish");
        }
        assert_eq!(share.pending.lock().expect("lock").count, 1);
        share.pending.lock().expect("lock").count = MAX_PENDING_DIR_SYNCS;
        let mut s = share.begin("other/f", None, 1, 1).expect("begin");
        s.write_all(b"x").expect("write");
        let p = s
            .publish_deferring_dir_sync(&expected(b"x"), Path::new("other/f"), 1)
            .expect("publish");
        assert_eq!(p.dir_to_sync, None, "too many waiting: synced at once");
        share.pending.lock().expect("lock").count = 1;
        share.sync_dir(Path::new("same")).expect("sync");
        assert_eq!(share.pending.lock().expect("lock").count, 0);
    }

    #[test]
    fn a_planted_hard_link_or_symlink_in_staging_is_not_written_through() {
        let (_tmp, root, outside, share) = nested_share();
        fs::write(root.join("user.txt"), b"the user's").expect("write");
        fs::write(outside.join("victim"), b"precious").expect("write");
        let stem = staging_stem("k");
        let staging = root.join(".sgw/staging");
        fs::hard_link(
            root.join("user.txt"),
            staging.join(format!("{stem}.{DATA_EXT}")),
        )
        .expect("link");
        symlink(
            outside.join("victim"),
            staging.join(format!("{stem}.{META_EXT}")),
        )
        .expect("symlink");
        symlink(
            outside.join("victim"),
            staging.join(format!("{stem}.{TMP_EXT}")),
        )
        .expect("symlink");
        let data = vec![9u8; CHECKPOINT_BYTES as usize];
        let mut s = share.begin("k", Some("e"), 1, BIG).expect("begin");
        assert_eq!(s.offset(), 0);
        write_chunks(&mut s, &data);
        s.publish(&expected(&data), Path::new("k"), 1)
            .expect("publish");
        assert_eq!(
            fs::read(root.join("user.txt")).expect("read"),
            b"the user's"
        );
        assert_eq!(fs::read(outside.join("victim")).expect("read"), b"precious");
        assert_eq!(fs::read(root.join("k")).expect("read"), data);
    }

    #[test]
    fn reading_never_hangs_on_a_fifo_or_follows_a_link() {
        let (_tmp, root, _outside, share) = nested_share();
        let made = std::process::Command::new("mkfifo")
            .arg(root.join("fifo"))
            .status()
            .is_ok_and(|s| s.success());
        if made {
            let err = share.open_file_read(Path::new("fifo")).expect_err("fifo");
            assert!(err.to_string().contains("not a regular file"), "{err}");
            assert_eq!(share.file_facts(Path::new("fifo")).expect("facts"), None);
        }
        fs::create_dir(root.join("d")).expect("mkdir");
        fs::write(root.join("d/f"), b"abc").expect("write");
        let mut text = String::new();
        share
            .open_file_read(Path::new("d/f"))
            .expect("open")
            .read_to_string(&mut text)
            .expect("read");
        assert_eq!(text, "abc");
        assert!(share.open_file_read(Path::new("d")).is_err());
        assert!(share.open_file_read(Path::new(".sgw/staging/x")).is_err());
    }

    #[test]
    fn read_dir_lists_without_following() {
        let (_tmp, root, outside, share) = nested_share();
        fs::write(outside.join("secret"), b"x").expect("write");
        fs::create_dir(root.join("d")).expect("mkdir");
        fs::write(root.join("f"), b"x").expect("write");
        symlink(&outside, root.join("l")).expect("symlink");
        let mut got: Vec<(String, bool, bool, bool)> = share
            .read_dir(Path::new(""))
            .expect("read_dir")
            .map(|e| {
                let e = e.expect("entry");
                let t = e.file_type().expect("type");
                (
                    e.file_name().to_string_lossy().into_owned(),
                    t.is_dir(),
                    t.is_file(),
                    t.is_symlink(),
                )
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                (".sgw".to_owned(), true, false, false),
                ("d".to_owned(), true, false, false),
                ("f".to_owned(), false, true, false),
                ("l".to_owned(), false, false, true),
            ]
        );
        assert!(share.read_dir(Path::new("l")).is_err());
        assert!(share.read_dir(Path::new("f")).is_err());
        assert!(share.read_dir(Path::new(".sgw")).is_err());
    }

    #[test]
    fn remove_empty_dir_removes_only_empty_directories() {
        let (_tmp, root, _outside, share) = nested_share();
        fs::create_dir_all(root.join("a/empty")).expect("mkdir");
        fs::write(root.join("a/file"), b"x").expect("write");
        assert!(share.remove_empty_dir(Path::new("a/empty")).expect("rmdir"));
        assert!(!root.join("a/empty").exists());
        assert!(!share.remove_empty_dir(Path::new("a")).expect("busy"));
        assert!(!share.remove_empty_dir(Path::new("a/file")).expect("a file"));
        assert!(
            !share
                .remove_empty_dir(Path::new("a/missing"))
                .expect("missing")
        );
        assert!(
            !share
                .remove_empty_dir(Path::new("no/such"))
                .expect("missing")
        );
        assert!(share.remove_empty_dir(Path::new("")).is_err());
        assert!(share.remove_empty_dir(Path::new(".sgw")).is_err());
        assert!(root.join("a/file").is_file());
    }

    #[test]
    fn both_walks_agree() {
        let (_tmp, root, outside, share) = nested_share();
        fs::create_dir_all(root.join("a/b")).expect("mkdir");
        fs::write(root.join("a/file"), b"x").expect("write");
        symlink(&outside, root.join("a/link")).expect("symlink");
        let long = vec!["c".repeat(200); 30].join("/");
        for (rel, want) in [
            ("a/b", "dir"),
            ("a", "dir"),
            ("a/missing/x", "missing:a/missing"),
            ("a/link", "unsafe:a/link"),
            ("a/link/x", "unsafe:a/link"),
            ("a/file", "unsafe:a/file"),
            ("a/file/x", "unsafe:a/file"),
        ] {
            for openat2 in [true, false] {
                let got = match share.walk_with(Path::new(rel), false, openat2).expect(rel) {
                    Walk::Dir(_) => "dir".to_owned(),
                    Walk::Missing(p) => format!(
                        "missing:{}",
                        p.strip_prefix(&root).expect("under root").display()
                    ),
                    Walk::Unsafe(p, _) => format!(
                        "unsafe:{}",
                        p.strip_prefix(&root).expect("under root").display()
                    ),
                };
                assert_eq!(got, want, "{rel} (openat2 first: {openat2})");
            }
        }
        // Creating, and a path longer than one openat2 call takes.
        for openat2 in [true, false] {
            let rel = Path::new(if openat2 { "new1" } else { "new2" }).join(&long);
            assert!(matches!(
                share.walk_with(&rel, true, openat2).expect("create"),
                Walk::Dir(_)
            ));
            assert!(matches!(
                share.walk_with(&rel, false, openat2).expect("again"),
                Walk::Dir(_)
            ));
        }
        assert!(entries_under(&outside).is_empty());
    }

    #[test]
    fn publishing_while_a_directory_is_swapped_in_a_loop_stays_inside() {
        use std::sync::atomic::AtomicBool;
        let (_tmp, root, outside, share) = nested_share();
        fs::create_dir(root.join("data")).expect("mkdir");
        // Keeps `data` from being pruned as empty by the removals below.
        fs::write(root.join("data/keep"), b"").expect("write");
        symlink(&outside, root.join("data.swap")).expect("symlink");
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = {
            let stop = Arc::clone(&stop);
            let (a, b) = (root.join("data"), root.join("data.swap"));
            std::thread::spawn(move || {
                let mut swaps = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    rustix::fs::renameat_with(
                        rustix::fs::CWD,
                        &a,
                        rustix::fs::CWD,
                        &b,
                        RenameFlags::EXCHANGE,
                    )
                    .expect("exchange");
                    swaps += 1;
                }
                swaps
            })
        };
        let (mut published, mut refused) = (0, 0);
        for i in 0..400 {
            let rel = format!("data/sub{}/f{i}", i % 3);
            match publish_bytes(&share, &rel, b"data") {
                Ok(_) => published += 1,
                Err(PublishError::UnsafePath { reason, .. })
                    if reason == SYMLINK || reason == SWAPPING =>
                {
                    refused += 1
                }
                Err(e) => panic!("{rel}: {e}"),
            }
            let _ = share.file_facts(Path::new(&rel));
            let _ = share.remove_file(Path::new(&format!("data/sub{}/f{}", i % 3, i / 2)));
        }
        stop.store(true, Ordering::Relaxed);
        let swaps = swapper.join().expect("swapper");
        assert!(swaps > 0);
        assert_eq!(published + refused, 400);
        assert!(
            entries_under(&outside).is_empty(),
            "written outside: {:?}",
            entries_under(&outside)
        );
    }

    #[test]
    fn no_space_is_told_apart_and_names_the_share() {
        let (_tmp, root, _outside, share) = nested_share();
        for raw in [28 /* ENOSPC */, 122 /* EDQUOT */] {
            let e = share.name_no_space(io::Error::from_raw_os_error(raw));
            assert!(is_no_space(&e), "{e}");
            assert!(
                e.to_string()
                    .contains(&format!("no space left on {}", root.display())),
                "{e}"
            );
        }
        let other = share.name_no_space(io::Error::from(io::ErrorKind::ConnectionReset));
        assert!(!is_no_space(&other));
        let err = PublishError::NoSpace {
            path: root.clone(),
            source: io::Error::from_raw_os_error(28),
        };
        assert!(err.is_no_space());
        assert!(err.to_string().starts_with("no space left on"), "{err}");
        assert!(!PublishError::Io(io::Error::other("x")).is_no_space());
    }
}
