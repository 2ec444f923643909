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
//! Paths are checked component by component with `symlink_metadata`: nothing here follows a
//! symlink or writes through a non-directory. (A LAN client racing to swap a directory for a
//! symlink between the check and the `rename` is not covered; that needs `openat`-style I/O.)

use crate::cache::crc64::Crc64Nvme;
use crate::cache::journal;
use crate::cache::paths::RESERVED_TOP_LEVEL;
use crate::model::FileFacts;
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A resumable download is fsynced and its sidecar updated after this many new bytes.
pub const CHECKPOINT_BYTES: u64 = 8 * 1024 * 1024;

const STAGING_DIR: &str = "staging";
const DATA_EXT: &str = "part";
const META_EXT: &str = "meta";
const TMP_EXT: &str = "tmp";
/// Frame kind tag for sidecars (they reuse the journal's framed, CRC-checked format).
const META_KIND: u16 = 0x5347;
const MAX_NAME_BYTES: usize = 255;

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
    /// durable until [`ShareDir::sync_dir`] (`None` after [`Staged::publish`]).
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
    /// directory (a symlink, a file), or is itself a directory.
    UnsafePath {
        path: PathBuf,
        reason: &'static str,
    },
    Io(io::Error),
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
                write!(f, "refusing path {}: {reason}", path.display())
            }
            PublishError::Io(e) => write!(f, "publish failed: {e}"),
        }
    }
}

impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PublishError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for PublishError {
    fn from(e: io::Error) -> Self {
        PublishError::Io(e)
    }
}

/// The share's root directory and the agent's staging area inside it.
#[derive(Clone, Debug)]
pub struct ShareDir {
    root: PathBuf,
    staging: PathBuf,
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
    root: PathBuf,
    data_path: PathBuf,
    meta_path: PathBuf,
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
    /// Open the share at `root` (an existing directory) and create `<root>/.sgw/staging/`.
    pub fn open(root: &Path) -> io::Result<ShareDir> {
        if !fs::metadata(root)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("share root {} is not a directory", root.display()),
            ));
        }
        let agent_dir = root.join(RESERVED_TOP_LEVEL);
        let staging = agent_dir.join(STAGING_DIR);
        for dir in [&agent_dir, &staging] {
            match fs::create_dir(dir) {
                Ok(()) => sync_parent(dir)?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            // A symlink here would send staged data (and renames) elsewhere.
            if !fs::symlink_metadata(dir)?.is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{} is not a plain directory", dir.display()),
                ));
            }
        }
        Ok(ShareDir {
            root: root.to_path_buf(),
            staging,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
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
        let stem = staging_stem(key);
        let data_path = self.staging.join(format!("{stem}.{DATA_EXT}"));
        let meta_path = self.staging.join(format!("{stem}.{META_EXT}"));
        let wanted = StagedMeta {
            key: key.to_owned(),
            etag: etag.map(str::to_owned),
            last_modified,
            durable_len: 0,
        };
        let resumable = etag.is_some() && size >= CHECKPOINT_BYTES;
        if resumable
            && let Some(found) = read_meta(&meta_path)
            && found.key == wanted.key
            && found.etag == wanted.etag
            && found.last_modified == wanted.last_modified
            && let Some(staged) = self.resume(&data_path, &meta_path, found)?
        {
            return Ok(staged);
        }
        if resumable {
            // Sidecar first: a data file is never left next to a sidecar that over-promises.
            write_meta(&meta_path, &wanted)?;
        } else if fs::symlink_metadata(&meta_path).is_ok() {
            // From an earlier, resumable version of this key: it must not vouch for this one.
            remove_if_present(&meta_path)?;
        }
        let file = File::create(&data_path)?;
        Ok(Staged {
            root: self.root.clone(),
            data_path,
            meta_path,
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
        data_path: &Path,
        meta_path: &Path,
        meta: StagedMeta,
    ) -> io::Result<Option<Staged>> {
        let mut file = match OpenOptions::new().read(true).write(true).open(data_path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if file.metadata()?.len() < meta.durable_len {
            return Ok(None);
        }
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
                return Ok(None);
            }
            crc.update(&buf[..n]);
            remaining -= n as u64;
        }
        file.seek(SeekFrom::Start(meta.durable_len))?;
        Ok(Some(Staged {
            root: self.root.clone(),
            data_path: data_path.to_path_buf(),
            meta_path: meta_path.to_path_buf(),
            out: BufWriter::with_capacity(64 * 1024, file),
            crc,
            len: meta.durable_len,
            meta,
            resumable: true,
            failed: false,
        }))
    }

    /// Size and mtime of the regular file at `rel`, if there is one. Symlinks, directories
    /// and paths through a symlink or non-directory give `None`.
    pub fn file_facts(&self, rel: &Path) -> io::Result<Option<FileFacts>> {
        check_rel(rel, false).map_err(|reason| invalid_path(rel, reason))?;
        if walk_dirs(&self.root, parent_of(rel), false)? != Walk::AllDirs {
            return Ok(None);
        }
        match fs::symlink_metadata(self.root.join(rel)) {
            Ok(m) if m.file_type().is_file() => Ok(Some(FileFacts {
                size: m.len(),
                mtime: m.mtime(),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Remove the file (or symlink, never its target) at `rel`, durably, and then any parent
    /// directories this left empty, up to the root. A directory at `rel` is refused.
    /// Returns whether something was removed.
    pub fn remove_file(&self, rel: &Path) -> io::Result<bool> {
        check_rel(rel, false).map_err(|reason| invalid_path(rel, reason))?;
        match walk_dirs(&self.root, parent_of(rel), false)? {
            Walk::AllDirs => {}
            Walk::Missing(_) => return Ok(false),
            Walk::Unsafe(at) => return Err(invalid_path(&at, NOT_A_PLAIN_DIR)),
        }
        let path = self.root.join(rel);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    format!("{} is a directory, not a file", path.display()),
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        }
        fs::remove_file(&path)?;
        sync_parent(&path)?;
        let mut dir = parent_of(rel);
        while !dir.as_os_str().is_empty() {
            // Fails on a non-empty directory, which is where pruning stops.
            if fs::remove_dir(self.root.join(dir)).is_err() {
                break;
            }
            sync_parent(&self.root.join(dir))?;
            dir = parent_of(dir);
        }
        Ok(true)
    }

    /// Create the directory at `rel` (a folder key) and any missing parents, durably.
    pub fn make_dir(&self, rel: &Path) -> Result<(), PublishError> {
        check_rel(rel, true).map_err(|reason| PublishError::UnsafePath {
            path: rel.to_path_buf(),
            reason,
        })?;
        match walk_dirs(&self.root, rel, true)? {
            Walk::AllDirs => Ok(()),
            Walk::Unsafe(at) | Walk::Missing(at) => Err(PublishError::UnsafePath {
                path: at,
                reason: NOT_A_PLAIN_DIR,
            }),
        }
    }

    /// Move an unknown local file at `rel` out of the way, to
    /// `<name>.sgw-conflict-<unix secs>` (plus `-N` if that is taken) in the same directory.
    /// Returns the new relative path. The agent never silently destroys a file it did not
    /// write.
    pub fn conflict_aside(&self, rel: &Path) -> io::Result<PathBuf> {
        check_rel(rel, false).map_err(|reason| invalid_path(rel, reason))?;
        match walk_dirs(&self.root, parent_of(rel), false)? {
            Walk::AllDirs => {}
            Walk::Missing(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} does not exist", rel.display()),
                ));
            }
            Walk::Unsafe(at) => return Err(invalid_path(&at, NOT_A_PLAIN_DIR)),
        }
        let from = self.root.join(rel);
        let is_dir = fs::symlink_metadata(&from)?.is_dir();
        let name = rel
            .file_name()
            .ok_or_else(|| invalid_path(rel, "no file name"))?;
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        for attempt in 0..1000u32 {
            let suffix = match attempt {
                0 => format!(".sgw-conflict-{secs}"),
                n => format!(".sgw-conflict-{secs}-{n}"),
            };
            let new_rel = parent_of(rel).join(conflict_name(name, &suffix));
            let to = self.root.join(&new_rel);
            // A hard link fails if the name is taken, so no other file is ever overwritten.
            let moved = if is_dir {
                rename_if_absent(&from, &to)?
            } else {
                match fs::hard_link(&from, &to) {
                    Ok(()) => {
                        fs::remove_file(&from)?;
                        true
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
                    // File systems without hard links: check, then rename.
                    Err(_) => rename_if_absent(&from, &to)?,
                }
            };
            if moved {
                sync_parent(&to)?;
                return Ok(new_rel);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("no free conflict name for {}", rel.display()),
        ))
    }

    /// fsync the share directory `rel_dir` (relative to the root; empty = the root), making
    /// the renames [`Staged::publish_deferring_dir_sync`] did in it durable.
    pub fn sync_dir(&self, rel_dir: &Path) -> io::Result<()> {
        check_rel(rel_dir, true).map_err(|reason| invalid_path(rel_dir, reason))?;
        File::open(self.root.join(rel_dir))?.sync_all()
    }

    /// Remove staged downloads whose key `keep` rejects, plus orphans and temporaries.
    /// Returns how many files were removed. Do not run it while downloads are in progress
    /// unless `keep` accepts their keys.
    pub fn clean_staging(&self, keep: impl Fn(&str) -> bool) -> io::Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.staging)? {
            let entry = entry?;
            let path = entry.path();
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            let drop_it = match ext {
                // A sidecar without its data file has nothing left to resume.
                META_EXT => {
                    !path.with_extension(DATA_EXT).exists()
                        || !read_meta(&path).is_some_and(|m| keep(&m.key))
                }
                DATA_EXT => {
                    let meta = path.with_extension(META_EXT);
                    !read_meta(&meta).is_some_and(|m| keep(&m.key))
                }
                _ => true,
            };
            if drop_it && entry.file_type()?.is_file() {
                match fs::remove_file(&path) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(removed)
    }
}

impl Staged {
    /// Append downloaded bytes.
    pub fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("an earlier write to this download failed"));
        }
        if let Err(e) = self.out.write_all(buf) {
            self.failed = true;
            return Err(e);
        }
        self.crc.update(buf);
        self.len += buf.len() as u64;
        if self.resumable && self.len - self.meta.durable_len >= CHECKPOINT_BYTES {
            self.checkpoint()?;
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
        write_meta(&self.meta_path, &self.meta)
    }

    /// Throw the download away (data and sidecar).
    pub fn discard(self) {
        let Staged {
            data_path,
            meta_path,
            out,
            ..
        } = self;
        // Nothing to flush into a file that is being removed.
        let (_file, _unflushed) = out.into_parts();
        for path in [&meta_path, &data_path] {
            if let Err(e) = fs::remove_file(path)
                && e.kind() != io::ErrorKind::NotFound
            {
                log::warn!("could not remove staged {}: {e}", path.display());
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
        let result = self.verify_and_move(expect, rel, mtime, sync_dir);
        match &result {
            // Nothing left to resume. A crash before this leaves a sidecar without data,
            // which `ShareDir::clean_staging` removes.
            Ok(_) => {
                if self.resumable
                    && let Err(e) = remove_if_present(&self.meta_path)
                {
                    log::warn!("could not remove {}: {e}", self.meta_path.display());
                }
            }
            Err(
                PublishError::SizeMismatch { .. }
                | PublishError::ChecksumMismatch { .. }
                | PublishError::UnsafePath { .. },
            ) => self.discard(),
            Err(PublishError::Io(_)) => {}
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

        let file = self.out.get_ref();
        file.set_modified(unix_to_system_time(mtime))?;
        file.sync_all()?;

        match walk_dirs(&self.root, parent_of(rel), true)? {
            Walk::AllDirs => {}
            Walk::Unsafe(at) | Walk::Missing(at) => {
                return Err(PublishError::UnsafePath {
                    path: at,
                    reason: NOT_A_PLAIN_DIR,
                });
            }
        }
        let dest = self.root.join(rel);
        match fs::symlink_metadata(&dest) {
            Ok(m) if m.is_dir() => {
                return Err(PublishError::UnsafePath {
                    path: rel.to_path_buf(),
                    reason: "destination is a directory",
                });
            }
            // A file or symlink there is replaced; `rename` never follows the old symlink.
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        fs::rename(&self.data_path, &dest)?;
        let dir_to_sync = if sync_dir {
            sync_parent(&dest)?;
            None
        } else {
            Some(parent_of(rel).to_path_buf())
        };
        Ok(Published {
            size: self.len,
            crc64nvme: actual,
            dir_to_sync,
        })
    }
}

const NOT_A_PLAIN_DIR: &str = "a path component is a symlink or not a directory";

/// Staging file stem for a key: collision-resistant, so two keys never share a staged file.
fn staging_stem(key: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn read_meta(path: &Path) -> Option<StagedMeta> {
    let mut meta = None;
    journal::read_journal(path, META_KIND, |m: StagedMeta| meta = Some(m)).ok()?;
    meta
}

/// Replace the sidecar atomically (temp + rename), so it is always whole or absent.
fn write_meta(path: &Path, meta: &StagedMeta) -> io::Result<()> {
    let mut bytes = journal::encode_header(META_KIND).to_vec();
    let mut frame = Vec::new();
    journal::encode_record(meta, &mut frame).map_err(io::Error::other)?;
    bytes.extend_from_slice(&frame);
    let tmp = path.with_extension(TMP_EXT);
    fs::write(&tmp, &bytes)?;
    fs::rename(&tmp, path)
}

fn invalid_path(rel: &Path, reason: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("refusing path {}: {reason}", rel.display()),
    )
}

/// A share-relative path must be relative, plain (`Normal` components only) and stay out of
/// the agent's own directory. Only directories may be the root itself (`""`).
fn check_rel(rel: &Path, allow_root: bool) -> Result<(), &'static str> {
    let mut components = rel.components().peekable();
    if components.peek().is_none() && !allow_root {
        return Err("empty path");
    }
    for (index, component) in components.enumerate() {
        let Component::Normal(name) = component else {
            return Err("not a plain relative path");
        };
        if index == 0 && name.eq_ignore_ascii_case(RESERVED_TOP_LEVEL) {
            return Err("the agent's reserved directory");
        }
    }
    Ok(())
}

fn parent_of(rel: &Path) -> &Path {
    rel.parent().unwrap_or(Path::new(""))
}

#[derive(Debug, PartialEq, Eq)]
enum Walk {
    /// Every component exists and is a plain directory.
    AllDirs,
    /// This component does not exist (only when not creating).
    Missing(PathBuf),
    /// This component is a symlink or not a directory.
    Unsafe(PathBuf),
}

/// Walk `root/rel` one component at a time without following symlinks; with `create`, make
/// each missing directory and fsync it into its parent.
fn walk_dirs(root: &Path, rel: &Path, create: bool) -> io::Result<Walk> {
    let mut current = root.to_path_buf();
    for component in rel.components() {
        current.push(component);
        match fs::symlink_metadata(&current) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => return Ok(Walk::Unsafe(current)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !create {
                    return Ok(Walk::Missing(current));
                }
            }
            Err(e) => return Err(e),
        }
        match fs::create_dir(&current) {
            Ok(()) => sync_parent(&current)?,
            // Someone else made it meanwhile: check what it is.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if !fs::symlink_metadata(&current)?.is_dir() {
                    return Ok(Walk::Unsafe(current));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Walk::AllDirs)
}

/// fsync the directory holding `path`, so a create, rename or unlink in it is durable.
fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    File::open(parent)?.sync_all()
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn rename_if_absent(from: &Path, to: &Path) -> io::Result<bool> {
    match fs::symlink_metadata(to) {
        Ok(_) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::rename(from, to)?;
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// `name + suffix`, shortening `name` (at a character boundary) to fit a 255-byte component.
fn conflict_name(name: &std::ffi::OsStr, suffix: &str) -> OsString {
    let name = name.to_string_lossy();
    let mut cut = MAX_NAME_BYTES.saturating_sub(suffix.len()).min(name.len());
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    OsString::from(format!("{}{suffix}", &name[..cut]))
}

fn unix_to_system_time(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    };
    t.unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::crc64::nvme;
    use std::os::unix::fs::symlink;

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
}
