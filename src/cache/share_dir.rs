//! The share directory as the agent touches it: every path resolved beneath one descriptor of
//! the share root, never through a symlink. Publishing staged downloads ([`super::publish`])
//! and every other read, stat, removal, move aside and directory fsync go through here.
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

use crate::model::{FileFacts, LocalStat};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags, Stat};
use rustix::io::Errno;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::publish::{MAX_NAME_BYTES, MAX_PENDING_DIR_SYNCS, PublishError, STAGING_DIR};
use crate::cache::paths::RESERVED_TOP_LEVEL;

/// Why a path is refused; each completes "`<path>` …".
pub(super) const SYMLINK: &str = "is a symlink; the agent never writes through one";
pub(super) const NOT_A_DIR: &str = "is not a directory";
pub(super) const SWAPPING: &str = "keeps changing between a directory and something else; the agent never writes through a symlink";

/// Opening one directory on the way: never a symlink, never anything but a directory.
pub(super) const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);
/// Opening a file to read it: not through a symlink, and no hang on a FIFO someone left there.
pub(super) const READ_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY);
/// `openat2` resolution: stay below the share root, refuse every symlink on the way.
pub(super) const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Cleared the first time the kernel says it has no `openat2` (before Linux 5.6, or a seccomp
/// filter that refuses it): from then on every walk goes component by component.
pub(super) static HAVE_OPENAT2: AtomicBool = AtomicBool::new(true);

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
    pub(super) root: PathBuf,
    pub(super) root_fd: Arc<OwnedFd>,
    /// `<root>/.sgw/staging`, for messages; it is always reached through `root_fd`.
    pub(super) staging: PathBuf,
    pub(super) pending: Arc<Mutex<PendingSyncs>>,
}

/// Directories that received a deferred publish and await their fsync, by share-relative
/// path. The descriptor is the directory the rename went into, even if that path names
/// something else by now (a directory moved away and a symlink put in its place).
#[derive(Debug, Default)]
pub(super) struct PendingSyncs {
    pub(super) dirs: HashMap<PathBuf, Vec<PendingDir>>,
    pub(super) count: usize,
}

#[derive(Debug)]
pub(super) struct PendingDir {
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

/// Where a walk from the share root ended.
#[derive(Debug)]
pub(super) enum Walk {
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
    pub(super) fn walk(&self, rel: &Path, create: bool) -> io::Result<Walk> {
        self.walk_with(rel, create, HAVE_OPENAT2.load(Ordering::Relaxed))
    }

    /// [`Self::walk`], trying `openat2` first only if `try_openat2` (tests run both ways).
    pub(super) fn walk_with(
        &self,
        rel: &Path,
        create: bool,
        try_openat2: bool,
    ) -> io::Result<Walk> {
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
    pub(super) fn dir_at(&self, rel: &Path, create: bool) -> io::Result<OwnedFd> {
        match self.walk(rel, create)? {
            Walk::Dir(fd) => Ok(fd),
            Walk::Missing(at) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} does not exist", at.display()),
            )),
            Walk::Unsafe(at, reason) => Err(refusal(&at, reason)),
        }
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
    pub(super) fn defer_dir_sync(
        &self,
        rel_dir: &Path,
        dir: OwnedFd,
    ) -> io::Result<Option<OwnedFd>> {
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
}

/// Create `name` in `dir` as a new, empty file of the agent's: whatever was there (an old
/// staged file, or a symlink or hard link someone planted) is unlinked first, and
/// `O_EXCL | O_NOFOLLOW` make sure the file written is the one just created.
pub(super) fn create_new(dir: BorrowedFd<'_>, name: impl AsRef<Path>) -> io::Result<File> {
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
pub(super) fn open_resumable(
    dir: BorrowedFd<'_>,
    name: &str,
    durable_len: u64,
) -> io::Result<Option<File>> {
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
pub(super) fn open_regular(
    dir: BorrowedFd<'_>,
    name: impl AsRef<Path>,
    shown: &Path,
) -> io::Result<File> {
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
pub(super) fn stat_at(dir: BorrowedFd<'_>, name: impl AsRef<Path>) -> io::Result<Option<Stat>> {
    match rustix::fs::statat(dir, name.as_ref(), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn unlink_if_present(dir: BorrowedFd<'_>, name: impl AsRef<Path>) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name.as_ref(), AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Rename `from` to `to` inside `dir` unless `to` exists; whether it moved. Never replaces
/// anything: `renameat2(RENAME_NOREPLACE)`, or where the file system lacks it a hard link
/// (which fails if the name is taken) and unlink, and for directories there a check, then
/// rename.
pub(super) fn move_if_absent(
    dir: BorrowedFd<'_>,
    from: &OsStr,
    to: &OsStr,
    is_dir: bool,
) -> io::Result<bool> {
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
pub(super) enum Step {
    Dir(OwnedFd),
    Missing,
    Refused(&'static str),
}

/// Open the directory `name` in `parent` (making it first with `create`), never a symlink.
pub(super) fn open_component(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    create: bool,
) -> io::Result<Step> {
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
pub(super) fn refusal(path: &Path, reason: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("refusing path: {} {reason}", shown(path)),
    )
}

pub(super) fn shown(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        "\"\"".to_owned()
    } else {
        path.display().to_string()
    }
}

/// A share-relative path must be relative, plain (`Normal` components only) and stay out of
/// the agent's own directory. Only directories may be the root itself (`""`).
pub(super) fn check_rel(rel: &Path, allow_root: bool) -> Result<(), &'static str> {
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

pub(super) fn parent_of(rel: &Path) -> &Path {
    rel.parent().unwrap_or(Path::new(""))
}

/// The last component of a checked, non-empty `rel`.
pub(super) fn file_name(rel: &Path) -> io::Result<&OsStr> {
    rel.file_name()
        .ok_or_else(|| refusal(rel, "has no file name"))
}

// `struct stat` field types differ between architectures (u32 or u64 link counts, i32 or i64
// times on 32-bit ones): convert in one place.
#[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
pub(super) fn size_and_mtime(st: &Stat) -> (u64, i64) {
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
pub(super) fn dev_and_ino(st: &Stat) -> (u64, u64) {
    (st.st_dev as u64, st.st_ino as u64)
}

#[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
pub(super) fn link_count(st: &Stat) -> u64 {
    st.st_nlink as u64
}

/// `name + suffix`, shortening `name` (at a character boundary) to fit a 255-byte component.
pub(super) fn conflict_name(name: &std::ffi::OsStr, suffix: &str) -> OsString {
    let name = name.to_string_lossy();
    let mut cut = MAX_NAME_BYTES.saturating_sub(suffix.len()).min(name.len());
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    OsString::from(format!("{}{suffix}", &name[..cut]))
}

pub(super) fn unix_to_system_time(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    };
    t.unwrap_or(UNIX_EPOCH)
}
