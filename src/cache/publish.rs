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
//! # Never through a symlink
//!
//! LAN clients can change the share under the agent at any instant, including swapping a
//! directory for a symlink to somewhere else. So nothing here acts on a path inside the share
//! by name from `/`: [`ShareDir::open`] opens the share root once and keeps that descriptor,
//! and every operation resolves its directory from it, component by component, refusing
//! symlinks (`openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` in one call where the kernel has
//! it, else `openat(O_NOFOLLOW | O_DIRECTORY)` per component, creating missing ones with
//! `mkdirat`). Then it acts relative to the descriptor it resolved: staged files are created
//! with `openat(O_CREAT | O_EXCL | O_NOFOLLOW)` in the staging directory's descriptor, the
//! publish is `renameat(staging, name, target_dir, name)`, the directory fsync is on the
//! target's descriptor, removals are `unlinkat` in the parent's descriptor, and stats are
//! `fstatat(AT_SYMLINK_NOFOLLOW)`. A directory swapped after it was resolved does not matter:
//! the descriptor still names the directory that was checked, which is inside the share. A
//! symlink met on the way fails that one operation with an error naming it ("… is a symlink;
//! the agent never writes through one"); it is never fatal for the share.

use crate::cache::crc64::Crc64Nvme;
use crate::cache::journal;
use crate::cache::paths::RESERVED_TOP_LEVEL;
use crate::model::{FileFacts, LocalStat};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags, Stat};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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

/// At most this many directory descriptors wait for a deferred fsync (see
/// [`Staged::publish_deferring_dir_sync`]); past it a publish fsyncs its directory at once.
const MAX_PENDING_DIR_SYNCS: usize = 512;

/// Why a path is refused; each completes "`<path>` …".
const SYMLINK: &str = "is a symlink; the agent never writes through one";
const NOT_A_DIR: &str = "is not a directory";
const SWAPPING: &str = "keeps changing between a directory and something else; the agent never writes through a symlink";

/// Opening one directory on the way: never a symlink, never anything but a directory.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);
/// Opening a file to read it: not through a symlink, and no hang on a FIFO someone left there.
const READ_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY);
/// `openat2` resolution: stay below the share root, refuse every symlink on the way.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Cleared the first time the kernel says it has no `openat2` (before Linux 5.6, or a seccomp
/// filter that refuses it): from then on every walk goes component by component.
static HAVE_OPENAT2: AtomicBool = AtomicBool::new(true);

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

/// Whether `e` says the file system is full (`ENOSPC`) or a quota is exhausted (`EDQUOT`).
/// [`Staged::write_all`] keeps that kind ([`io::ErrorKind::StorageFull`] /
/// [`io::ErrorKind::QuotaExceeded`]) and names the share in the message, so a caller can tell
/// "no space left" from an interrupted transfer.
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// The share's root directory and the agent's staging area inside it.
///
/// Holds a descriptor of the root, opened once: every path inside the share is resolved from
/// it without following symlinks (see the module docs). Clones share the descriptor.
#[derive(Clone, Debug)]
pub struct ShareDir {
    root: PathBuf,
    root_fd: Arc<OwnedFd>,
    /// `<root>/.sgw/staging`, for messages; it is always reached through `root_fd`.
    staging: PathBuf,
    pending: Arc<Mutex<PendingSyncs>>,
}

/// Directories that received a deferred publish and await their fsync, by share-relative
/// path. The descriptor is the directory the rename went into, even if that path names
/// something else by now (a directory moved away and a symlink put in its place).
#[derive(Debug, Default)]
struct PendingSyncs {
    dirs: HashMap<PathBuf, Vec<PendingDir>>,
    count: usize,
}

#[derive(Debug)]
struct PendingDir {
    dev: u64,
    ino: u64,
    fd: OwnedFd,
}

/// One entry of a share directory, from [`ShareDir::read_dir`].
#[derive(Clone, Debug)]
pub struct ShareEntry {
    name: OsString,
    kind: EntryType,
}

/// What a directory entry is, without following a symlink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryType(FileType);

impl EntryType {
    pub fn is_dir(&self) -> bool {
        self.0 == FileType::Directory
    }
    pub fn is_file(&self) -> bool {
        self.0 == FileType::RegularFile
    }
    pub fn is_symlink(&self) -> bool {
        self.0 == FileType::Symlink
    }
}

impl ShareEntry {
    pub fn file_name(&self) -> OsString {
        self.name.clone()
    }
    /// Never fails (the type is known when the entry is read); a `Result` like
    /// [`std::fs::DirEntry::file_type`], so the two are used the same way.
    pub fn file_type(&self) -> io::Result<EntryType> {
        Ok(self.kind)
    }
}

/// The entries of one share directory (without `.` and `..`), read from its descriptor.
pub struct ShareEntries {
    dir: rustix::fs::Dir,
    fd: OwnedFd,
}

impl Iterator for ShareEntries {
    type Item = io::Result<ShareEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let entry = match self.dir.read()? {
                Ok(e) => e,
                Err(e) => return Some(Err(e.into())),
            };
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let kind = match entry.file_type() {
                // Some file systems do not fill in d_type.
                FileType::Unknown => {
                    match rustix::fs::statat(&self.fd, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW)
                    {
                        Ok(st) => FileType::from_raw_mode(st.st_mode),
                        // Gone since the directory was read.
                        Err(Errno::NOENT) => continue,
                        Err(e) => return Some(Err(e.into())),
                    }
                }
                known => known,
            };
            return Some(Ok(ShareEntry {
                name: OsString::from_vec(name.to_vec()),
                kind: EntryType(kind),
            }));
        }
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

/// Where a walk from the share root ended.
#[derive(Debug)]
enum Walk {
    /// Every component exists and is a plain directory: the last one's descriptor.
    Dir(OwnedFd),
    /// This component does not exist (only when not creating).
    Missing(PathBuf),
    /// This component is a symlink or not a directory; why.
    Unsafe(PathBuf, &'static str),
}

impl ShareDir {
    /// Open the share at `root` (an existing directory) and create `<root>/.sgw/staging/`.
    ///
    /// `root` itself is the operator's configuration and is opened as given (symlinks in it
    /// are followed); everything below it is resolved from this one descriptor.
    pub fn open(root: &Path) -> io::Result<ShareDir> {
        let share = Self::open_for_reading(root)?;
        // A symlink here would send staged data (and renames) elsewhere: the walk refuses it.
        share.staging_dir()?;
        Ok(share)
    }

    /// Open the share at `root` to look at it only (`sync --dry-run`): nothing is created.
    pub fn open_for_reading(root: &Path) -> io::Result<ShareDir> {
        let root_fd =
            match rustix::fs::open(root, DIR_FLAGS.difference(OFlags::NOFOLLOW), Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOTDIR) => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!("share root {} is not a directory", root.display()),
                    ));
                }
                Err(e) => return Err(e.into()),
            };
        let share = ShareDir {
            root: root.to_path_buf(),
            root_fd: Arc::new(root_fd),
            staging: root.join(RESERVED_TOP_LEVEL).join(STAGING_DIR),
            pending: Arc::default(),
        };
        Ok(share)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolve `rel` (a directory, relative to the root; empty = the root) from the root's
    /// descriptor without following any symlink. With `create`, make each missing directory
    /// and fsync it into its parent.
    fn walk(&self, rel: &Path, create: bool) -> io::Result<Walk> {
        self.walk_with(rel, create, HAVE_OPENAT2.load(Ordering::Relaxed))
    }

    /// [`Self::walk`], trying `openat2` first only if `try_openat2` (tests run both ways).
    fn walk_with(&self, rel: &Path, create: bool, try_openat2: bool) -> io::Result<Walk> {
        if rel.as_os_str().is_empty() {
            return Ok(Walk::Dir(self.root_fd.try_clone()?));
        }
        if try_openat2 {
            match rustix::fs::openat2(&*self.root_fd, rel, DIR_FLAGS, Mode::empty(), RESOLVE) {
                Ok(fd) => return Ok(Walk::Dir(fd)),
                Err(Errno::NOSYS | Errno::PERM) => HAVE_OPENAT2.store(false, Ordering::Relaxed),
                // Missing, a symlink, not a directory, a concurrent rename (EAGAIN), a path
                // too long for one call: the walk below decides, and names the component.
                Err(_) => {}
            }
        }
        let mut here: Option<OwnedFd> = None;
        let mut shown = self.root.clone();
        for component in rel.components() {
            let Component::Normal(name) = component else {
                return Ok(Walk::Unsafe(
                    rel.to_path_buf(),
                    "is not a plain relative path",
                ));
            };
            shown.push(name);
            let parent = match &here {
                Some(fd) => fd.as_fd(),
                None => self.root_fd.as_fd(),
            };
            let next = match open_component(parent, name, create)? {
                Step::Dir(fd) => fd,
                Step::Missing => return Ok(Walk::Missing(shown)),
                Step::Refused(reason) => return Ok(Walk::Unsafe(shown, reason)),
            };
            here = Some(next);
        }
        match here {
            Some(fd) => Ok(Walk::Dir(fd)),
            None => Ok(Walk::Dir(self.root_fd.try_clone()?)),
        }
    }

    /// [`Self::walk`] for an operation that needs the directory: anything but a directory is
    /// an error naming the component.
    fn dir_at(&self, rel: &Path, create: bool) -> io::Result<OwnedFd> {
        match self.walk(rel, create)? {
            Walk::Dir(fd) => Ok(fd),
            Walk::Missing(at) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} does not exist", at.display()),
            )),
            Walk::Unsafe(at, reason) => Err(refusal(&at, reason)),
        }
    }

    /// `<root>/.sgw/staging`, created if a LAN client removed it, resolved anew each time (a
    /// swapped `.sgw` is refused, not followed).
    fn staging_dir(&self) -> io::Result<OwnedFd> {
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

    /// Size and mtime of the regular file at `rel`, if there is one. Symlinks, directories
    /// and paths through a symlink or non-directory give `None`.
    pub fn file_facts(&self, rel: &Path) -> io::Result<Option<FileFacts>> {
        check_rel(rel, false).map_err(|reason| refusal(rel, reason))?;
        let Walk::Dir(dir) = self.walk(parent_of(rel), false)? else {
            return Ok(None);
        };
        match stat_at(dir.as_fd(), file_name(rel)?) {
            Ok(Some(st)) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {
                let (size, mtime) = size_and_mtime(&st);
                Ok(Some(FileFacts { size, mtime }))
            }
            Ok(_) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// [`Self::file_facts`] with nanoseconds and the inode (two-way shares tell an edit, or a
    /// replace by rename, from the file the agent uploaded).
    pub fn local_stat(&self, rel: &Path) -> io::Result<Option<LocalStat>> {
        check_rel(rel, false).map_err(|reason| refusal(rel, reason))?;
        let Walk::Dir(dir) = self.walk(parent_of(rel), false)? else {
            return Ok(None);
        };
        match stat_at(dir.as_fd(), file_name(rel)?) {
            Ok(Some(st)) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {
                Ok(Some(local_stat_of(&st)))
            }
            Ok(_) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Open the regular file at `rel` for reading (to checksum a local file), without
    /// following a symlink anywhere on the way. A symlink, a directory or anything else that
    /// is not a regular file is an error naming it.
    pub fn open_file_read(&self, rel: &Path) -> io::Result<File> {
        check_rel(rel, false).map_err(|reason| refusal(rel, reason))?;
        let dir = self.dir_at(parent_of(rel), false)?;
        open_regular(dir.as_fd(), file_name(rel)?, &self.root.join(rel))
    }

    /// The entries of the share directory `rel_dir` (empty = the root), without following a
    /// symlink to it or on the way. `.` and `..` are left out.
    pub fn read_dir(&self, rel_dir: &Path) -> io::Result<ShareEntries> {
        check_rel(rel_dir, true).map_err(|reason| refusal(rel_dir, reason))?;
        let fd = self.dir_at(rel_dir, false)?;
        let dir = rustix::fs::Dir::read_from(&fd)?;
        Ok(ShareEntries { dir, fd })
    }

    /// Remove the file (or symlink, never its target) at `rel`, durably, and then any parent
    /// directories this left empty, up to the root. A directory at `rel` is refused.
    /// Returns whether something was removed.
    pub fn remove_file(&self, rel: &Path) -> io::Result<bool> {
        check_rel(rel, false).map_err(|reason| refusal(rel, reason))?;
        let dir = match self.walk(parent_of(rel), false)? {
            Walk::Dir(fd) => fd,
            Walk::Missing(_) => return Ok(false),
            Walk::Unsafe(at, reason) => return Err(refusal(&at, reason)),
        };
        let name = file_name(rel)?;
        match stat_at(dir.as_fd(), name)? {
            Some(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    format!(
                        "{} is a directory, not a file",
                        self.root.join(rel).display()
                    ),
                ));
            }
            Some(_) => {}
            None => return Ok(false),
        }
        match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
            Ok(()) => {}
            Err(Errno::NOENT) => return Ok(false),
            // Replaced by a directory since the stat.
            Err(Errno::ISDIR) => {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    format!(
                        "{} is a directory, not a file",
                        self.root.join(rel).display()
                    ),
                ));
            }
            Err(e) => return Err(e.into()),
        }
        rustix::fs::fsync(&dir)?;
        let mut emptied = parent_of(rel);
        while !emptied.as_os_str().is_empty() {
            let Ok(Walk::Dir(parent)) = self.walk(parent_of(emptied), false) else {
                break;
            };
            let Some(name) = emptied.file_name() else {
                break;
            };
            // Fails on a non-empty directory, which is where pruning stops. (A symlink by
            // that name fails too: `unlinkat(AT_REMOVEDIR)` never follows one.)
            if rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR).is_err() {
                break;
            }
            rustix::fs::fsync(&parent)?;
            emptied = parent_of(emptied);
        }
        Ok(true)
    }

    /// Remove the directory at `rel` if it is empty (a folder marker deleted from the
    /// bucket), durably. Returns whether it was removed; a missing, non-empty or non-directory
    /// entry is left alone (`Ok(false)`), a symlink on the way is an error.
    pub fn remove_empty_dir(&self, rel: &Path) -> io::Result<bool> {
        check_rel(rel, false).map_err(|reason| refusal(rel, reason))?;
        let dir = match self.walk(parent_of(rel), false)? {
            Walk::Dir(fd) => fd,
            Walk::Missing(_) => return Ok(false),
            Walk::Unsafe(at, reason) => return Err(refusal(&at, reason)),
        };
        match rustix::fs::unlinkat(&dir, file_name(rel)?, AtFlags::REMOVEDIR) {
            Ok(()) => {
                rustix::fs::fsync(&dir)?;
                Ok(true)
            }
            Err(Errno::NOENT | Errno::NOTEMPTY | Errno::EXIST | Errno::NOTDIR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Create the directory at `rel` (a folder key) and any missing parents, durably.
    pub fn make_dir(&self, rel: &Path) -> Result<(), PublishError> {
        check_rel(rel, true).map_err(|reason| PublishError::UnsafePath {
            path: rel.to_path_buf(),
            reason,
        })?;
        match self.walk(rel, true)? {
            Walk::Dir(_) => Ok(()),
            Walk::Unsafe(path, reason) => Err(PublishError::UnsafePath { path, reason }),
            Walk::Missing(path) => Err(PublishError::UnsafePath {
                path,
                reason: "vanished while it was created",
            }),
        }
    }

    /// Move an unknown local file at `rel` out of the way, to
    /// `<name>.sgw-conflict-<unix secs>` (plus `-N` if that is taken) in the same directory.
    /// Returns the new relative path. The agent never silently destroys a file it did not
    /// write.
    pub fn conflict_aside(&self, rel: &Path) -> io::Result<PathBuf> {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.conflict_aside_as(rel, &format!(".sgw-conflict-{secs}"))
    }

    /// [`Self::conflict_aside`] under `<name><suffix>` (then `<suffix>-1`, … if taken).
    pub fn conflict_aside_as(&self, rel: &Path, base_suffix: &str) -> io::Result<PathBuf> {
        check_rel(rel, false).map_err(|reason| refusal(rel, reason))?;
        let dir = self.dir_at(parent_of(rel), false)?;
        let name = file_name(rel)?;
        let Some(st) = stat_at(dir.as_fd(), name)? else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} does not exist", rel.display()),
            ));
        };
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        for attempt in 0..1000u32 {
            let suffix = match attempt {
                0 => base_suffix.to_owned(),
                n => format!("{base_suffix}-{n}"),
            };
            let new_name = conflict_name(name, &suffix);
            // Both names are in the one directory resolved above: nothing can redirect them.
            if move_if_absent(dir.as_fd(), name, &new_name, is_dir)? {
                rustix::fs::fsync(&dir)?;
                return Ok(parent_of(rel).join(new_name));
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("no free conflict name for {}", rel.display()),
        ))
    }

    /// fsync the share directory `rel_dir` (relative to the root; empty = the root), making
    /// the renames [`Staged::publish_deferring_dir_sync`] did in it durable.
    ///
    /// It fsyncs the very directories those renames went into (their descriptors were kept),
    /// so a directory swapped for a symlink since is neither followed nor an error. With
    /// nothing pending for `rel_dir`, it resolves the path and fsyncs what it finds.
    pub fn sync_dir(&self, rel_dir: &Path) -> io::Result<()> {
        check_rel(rel_dir, true).map_err(|reason| refusal(rel_dir, reason))?;
        let pending = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let taken = p.dirs.remove(rel_dir).unwrap_or_default();
            p.count -= taken.len();
            taken
        };
        if pending.is_empty() {
            return rustix::fs::fsync(self.dir_at(rel_dir, false)?).map_err(Into::into);
        }
        for dir in pending {
            rustix::fs::fsync(&dir.fd)?;
        }
        Ok(())
    }

    /// Keep `dir` (the directory at `rel_dir` a deferred publish renamed into) for
    /// [`Self::sync_dir`]. Gives the descriptor back when too many are waiting already: the
    /// caller fsyncs it at once.
    fn defer_dir_sync(&self, rel_dir: &Path, dir: OwnedFd) -> io::Result<Option<OwnedFd>> {
        let st = rustix::fs::fstat(&dir)?;
        let (dev, ino) = dev_and_ino(&st);
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = p.dirs.get(rel_dir)
            && known.iter().any(|d| d.dev == dev && d.ino == ino)
        {
            return Ok(None);
        }
        if p.count >= MAX_PENDING_DIR_SYNCS {
            return Ok(Some(dir));
        }
        p.count += 1;
        p.dirs
            .entry(rel_dir.to_path_buf())
            .or_default()
            .push(PendingDir { dev, ino, fd: dir });
        Ok(None)
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

/// Create `name` in `dir` as a new, empty file of the agent's: whatever was there (an old
/// staged file, or a symlink or hard link someone planted) is unlinked first, and
/// `O_EXCL | O_NOFOLLOW` make sure the file written is the one just created.
fn create_new(dir: BorrowedFd<'_>, name: impl AsRef<Path>) -> io::Result<File> {
    let name = name.as_ref();
    unlink_if_present(dir, name)?;
    let flags = OFlags::WRONLY
        | OFlags::CREATE
        | OFlags::EXCL
        | OFlags::NOFOLLOW
        | OFlags::CLOEXEC
        | OFlags::NOCTTY;
    Ok(File::from(rustix::fs::openat(
        dir,
        name,
        flags,
        Mode::from_raw_mode(0o666),
    )?))
}

/// The staged data file `name`, opened for a resume, if it is a plain file of its own (one
/// link, not a symlink) holding at least `durable_len` bytes.
fn open_resumable(dir: BorrowedFd<'_>, name: &str, durable_len: u64) -> io::Result<Option<File>> {
    let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        // Missing, or a symlink, a directory or a FIFO someone put there: start afresh.
        Err(Errno::NOENT | Errno::LOOP | Errno::ISDIR | Errno::NXIO) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let st = rustix::fs::fstat(&fd)?;
    let (size, _) = size_and_mtime(&st);
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
        || link_count(&st) != 1
        || size < durable_len
    {
        return Ok(None);
    }
    Ok(Some(File::from(fd)))
}

/// Open the regular file `name` in `dir` for reading, never through a symlink. `shown` names
/// it in errors.
fn open_regular(dir: BorrowedFd<'_>, name: impl AsRef<Path>, shown: &Path) -> io::Result<File> {
    let fd = match rustix::fs::openat(dir, name.as_ref(), READ_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::LOOP) => return Err(refusal(shown, SYMLINK)),
        Err(e) => {
            let e = io::Error::from(e);
            return Err(io::Error::new(
                e.kind(),
                format!("{}: {e}", shown.display()),
            ));
        }
    };
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(refusal(shown, "is not a regular file"));
    }
    Ok(File::from(fd))
}

/// `fstatat(AT_SYMLINK_NOFOLLOW)`; `None` when nothing has that name.
fn stat_at(dir: BorrowedFd<'_>, name: impl AsRef<Path>) -> io::Result<Option<Stat>> {
    match rustix::fs::statat(dir, name.as_ref(), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn unlink_if_present(dir: BorrowedFd<'_>, name: impl AsRef<Path>) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name.as_ref(), AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Rename `from` to `to` inside `dir` unless `to` exists; whether it moved. Never replaces
/// anything: `renameat2(RENAME_NOREPLACE)`, or where the file system lacks it a hard link
/// (which fails if the name is taken) and unlink, and for directories there a check, then
/// rename.
fn move_if_absent(dir: BorrowedFd<'_>, from: &OsStr, to: &OsStr, is_dir: bool) -> io::Result<bool> {
    match rustix::fs::renameat_with(dir, from, dir, to, RenameFlags::NOREPLACE) {
        Ok(()) => return Ok(true),
        Err(Errno::EXIST) => return Ok(false),
        Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {}
        Err(e) => return Err(e.into()),
    }
    if !is_dir {
        // A hard link fails if the name is taken, so no other file is ever overwritten.
        match rustix::fs::linkat(dir, from, dir, to, AtFlags::empty()) {
            Ok(()) => {
                rustix::fs::unlinkat(dir, from, AtFlags::empty())?;
                return Ok(true);
            }
            Err(Errno::EXIST) => return Ok(false),
            // File systems without hard links: check, then rename.
            Err(_) => {}
        }
    }
    if stat_at(dir, to)?.is_some() {
        return Ok(false);
    }
    rustix::fs::renameat(dir, from, dir, to)?;
    Ok(true)
}

/// One step of a walk.
enum Step {
    Dir(OwnedFd),
    Missing,
    Refused(&'static str),
}

/// Open the directory `name` in `parent` (making it first with `create`), never a symlink.
fn open_component(parent: BorrowedFd<'_>, name: &OsStr, create: bool) -> io::Result<Step> {
    // `O_DIRECTORY | O_NOFOLLOW` gives ENOTDIR (or ELOOP) for a symlink and for a file alike:
    // the entry is asked which it was for the message. If it is a directory by then, it was
    // swapped in the meantime; try again, a few times.
    for _ in 0..3 {
        match rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => return Ok(Step::Dir(fd)),
            Err(Errno::NOENT) if create => {
                match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o777)) {
                    // The new entry must survive a crash like any other.
                    Ok(()) => rustix::fs::fsync(parent)?,
                    // Someone else made it meanwhile: the next open checks what it is.
                    Err(Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(Errno::NOENT) => return Ok(Step::Missing),
            Err(Errno::LOOP | Errno::NOTDIR) => match stat_at(parent, name)? {
                Some(st) => match FileType::from_raw_mode(st.st_mode) {
                    FileType::Symlink => return Ok(Step::Refused(SYMLINK)),
                    FileType::Directory => {}
                    _ => return Ok(Step::Refused(NOT_A_DIR)),
                },
                None if create => {}
                None => return Ok(Step::Missing),
            },
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Step::Refused(SWAPPING))
}

/// The error for a refused path: "`<path>` `<reason>`".
fn refusal(path: &Path, reason: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("refusing path: {} {reason}", shown(path)),
    )
}

fn shown(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        "\"\"".to_owned()
    } else {
        path.display().to_string()
    }
}

/// A share-relative path must be relative, plain (`Normal` components only) and stay out of
/// the agent's own directory. Only directories may be the root itself (`""`).
fn check_rel(rel: &Path, allow_root: bool) -> Result<(), &'static str> {
    let mut components = rel.components().peekable();
    if components.peek().is_none() && !allow_root {
        return Err("is empty, not a path");
    }
    for (index, component) in components.enumerate() {
        let Component::Normal(name) = component else {
            return Err("is not a plain relative path");
        };
        if index == 0 && name.eq_ignore_ascii_case(RESERVED_TOP_LEVEL) {
            return Err("is in the agent's reserved directory");
        }
    }
    Ok(())
}

fn parent_of(rel: &Path) -> &Path {
    rel.parent().unwrap_or(Path::new(""))
}

/// The last component of a checked, non-empty `rel`.
fn file_name(rel: &Path) -> io::Result<&OsStr> {
    rel.file_name()
        .ok_or_else(|| refusal(rel, "has no file name"))
}

// `struct stat` field types differ between architectures (u32 or u64 link counts, i32 or i64
// times on 32-bit ones): convert in one place.
#[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
fn size_and_mtime(st: &Stat) -> (u64, i64) {
    (
        u64::try_from(st.st_size).unwrap_or(0),
        i64::from(st.st_mtime),
    )
}

#[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
pub(crate) fn local_stat_of(st: &Stat) -> LocalStat {
    LocalStat {
        size: u64::try_from(st.st_size).unwrap_or(0),
        mtime_ns: i64::from(st.st_mtime)
            .saturating_mul(1_000_000_000)
            .saturating_add(st.st_mtime_nsec as i64),
        ino: st.st_ino as u64,
    }
}

#[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
fn dev_and_ino(st: &Stat) -> (u64, u64) {
    (st.st_dev as u64, st.st_ino as u64)
}

#[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
fn link_count(st: &Stat) -> u64 {
    st.st_nlink as u64
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
    use std::fs::{self, OpenOptions};
    use std::os::unix::fs::{MetadataExt, symlink};

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
