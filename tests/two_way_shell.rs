//! Two-way shares through the real share shell against the in-memory bucket and queue: local
//! files uploaded with their CRC, the echo of an upload ignored (no download, same inode and
//! mtime), a bucket change downloaded, a local edit uploaded over its base, a double edit kept
//! twice (conflict copy uploaded), deletes both ways, and a mirror share that never uploads.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};

use sgw_agent::cloud::memory::{MemoryBucket, MemoryQueue};
use sgw_agent::cloud::{
    CloudError, EventQueue, ListPage, ObjectBody, ObjectStore, PutCondition, PutResult,
    UploadedPart,
};
use sgw_agent::config::{ShareConfig, ShareMode, SyncSettings};
use sgw_agent::daemon::Shutdown;
use sgw_agent::model::ConsistencyCheck;
use sgw_agent::model::ObjectMeta;
use sgw_agent::shell::{Share, ShareContext, Silent};

struct World {
    _tmp: tempfile::TempDir,
    share_dir: PathBuf,
    state_dir: PathBuf,
    bucket: Arc<MemoryBucket>,
    queue: Arc<MemoryQueue>,
    share: Share,
}

fn world(mode: ShareMode) -> World {
    world_with(mode, None)
}

fn world_with(mode: ShareMode, store: Option<Arc<dyn ObjectStore>>) -> World {
    let tmp = tempfile::tempdir().expect("tmp");
    let share_dir = tmp.path().join("share");
    let state_dir = tmp.path().join("state");
    std::fs::create_dir_all(&share_dir).expect("mkdir");
    let bucket = Arc::new(MemoryBucket::new("bucket", 3));
    let queue = Arc::new(MemoryQueue::new());
    let store = store.unwrap_or_else(|| bucket.clone());
    let share = open_on(&share_dir, &state_dir, store, &queue, mode);
    World {
        _tmp: tmp,
        share_dir,
        state_dir,
        bucket,
        queue,
        share,
    }
}

fn open(
    share_dir: &Path,
    state_dir: &Path,
    bucket: &Arc<MemoryBucket>,
    queue: &Arc<MemoryQueue>,
    mode: ShareMode,
) -> Share {
    open_on(share_dir, state_dir, bucket.clone(), queue, mode)
}

fn open_on(
    share_dir: &Path,
    state_dir: &Path,
    store: Arc<dyn ObjectStore>,
    queue: &Arc<MemoryQueue>,
    mode: ShareMode,
) -> Share {
    let cfg = ShareConfig {
        name: "two".into(),
        path: share_dir.to_path_buf(),
        bucket: "bucket".into(),
        prefix: String::new(),
        endpoint: "memory".into(),
        region: "memory".into(),
        queue_url: Some("memory".into()),
        consistency_check: ConsistencyCheck::SizeLastModified,
        allow_http: false,
        ca_file: None,
        download_concurrency: 2,
        full_sync_interval_secs: 0,
        delete_limits: sgw_agent::engine::guard::DeleteLimits {
            max_percent: 100,
            max_count: 0,
        },
        allow_mass_delete: false,
        sync: SyncSettings {
            mode,
            settle_ms: 100,
            gateway: "gwA".into(),
            ..SyncSettings::default()
        },
    };
    let q: Arc<dyn EventQueue> = queue.clone();
    Share::open(ShareContext {
        cfg,
        state_dir: state_dir.to_path_buf(),
        store,
        queue: Some(q),
        shutdown: Shutdown::new(),
        progress: Arc::new(Silent),
    })
    .expect("open share")
}

impl World {
    /// A LAN client writes `name`; its mtime is set in the past so it has settled.
    fn write(&self, name: &str, bytes: &[u8]) {
        let path = self.share_dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, bytes).expect("write");
        let f = std::fs::File::options()
            .write(true)
            .open(&path)
            .expect("open");
        f.set_modified(SystemTime::now() - Duration::from_secs(10))
            .expect("mtime");
    }

    fn read(&self, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.share_dir.join(name)).ok()
    }

    fn sync(&mut self) {
        let r = self.share.full_sync().expect("full sync");
        assert!(r.converged(), "{r:?}");
    }

    /// Deliver what the bucket's writes announced (ours included) and apply it.
    fn deliver(&mut self, events: Vec<String>) {
        for e in events {
            self.queue.push(e);
        }
        let msgs = self.queue.receive(10, 0).expect("receive");
        if !msgs.is_empty() {
            let q = Arc::clone(&self.queue);
            self.share.apply_messages(&*q, msgs).expect("apply");
        }
    }

    fn local_names(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(&self.share_dir)
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != ".sgw")
            .collect();
        out.sort();
        out
    }
}

#[test]
fn local_files_go_up_once_and_their_echo_changes_nothing() {
    let mut w = world(ShareMode::TwoWay);
    w.write("a.txt", b"hello");
    w.write("d/b.txt", b"world");
    w.write("~$lock.docx", b"office lock file");
    w.sync();
    let contents = w.bucket.contents();
    assert_eq!(
        contents.get("a.txt").map(Vec::as_slice),
        Some(&b"hello"[..])
    );
    assert_eq!(
        contents.get("d/b.txt").map(Vec::as_slice),
        Some(&b"world"[..])
    );
    assert!(
        !contents.contains_key("~$lock.docx"),
        "ignored name uploaded"
    );
    assert!(!contents.keys().any(|k| k.starts_with(".sgw")));
    assert_eq!(w.share.status.uploads.done, 2);

    let meta = std::fs::metadata(w.share_dir.join("a.txt")).expect("stat");
    let echoes = w.bucket.take_written_events();
    assert_eq!(echoes.len(), 2);
    w.deliver(echoes);
    // A second full sync (a restart's) finds nothing to do either.
    w.sync();
    let after = std::fs::metadata(w.share_dir.join("a.txt")).expect("stat");
    assert_eq!(w.share.status.objects_downloaded, 0, "echo re-downloaded");
    assert_eq!(
        (meta.ino(), meta.mtime_nsec()),
        (after.ino(), after.mtime_nsec())
    );
    assert_eq!(w.share.status.uploads.done, 2, "uploaded twice");
    assert!(w.queue.is_empty());
}

#[test]
fn edits_flow_both_ways_and_a_double_edit_keeps_both() {
    let mut w = world(ShareMode::TwoWay);
    w.write("f", b"v1");
    w.sync();
    let _ = w.bucket.take_written_events();

    // Another site changes the object: downloaded over our unchanged (uploaded) file.
    let ev = w.bucket.put("f", b"v2 from B");
    w.deliver(vec![ev]);
    assert_eq!(w.read("f").as_deref(), Some(&b"v2 from B"[..]));
    assert_eq!(
        w.local_names(),
        vec!["f"],
        "no conflict copy for our own file"
    );

    // A local edit goes up over that base (If-Match).
    w.write("f", b"v3 local edit");
    w.sync();
    assert_eq!(
        w.bucket.contents().get("f").map(Vec::as_slice),
        Some(&b"v3 local edit"[..])
    );
    let _ = w.bucket.take_written_events();

    // Both sides change: the bucket's version takes the name, ours is kept and uploaded.
    w.write("f", b"v4 local");
    let ev = w.bucket.put("f", b"v4 remote!");
    w.deliver(vec![ev]);
    assert_eq!(w.read("f").as_deref(), Some(&b"v4 remote!"[..]));
    let names = w.local_names();
    let copy = names
        .iter()
        .find(|n| n.starts_with("f.sgw-conflict-gwA-"))
        .unwrap_or_else(|| panic!("no conflict copy in {names:?}"));
    assert_eq!(w.read(copy).as_deref(), Some(&b"v4 local"[..]));
    assert_eq!(w.share.status.uploads.conflicts, 1);
    // The copy is uploaded once its turn comes (a full sync, or the run loop's tick).
    w.sync();
    assert_eq!(
        w.bucket.contents().get(copy.as_str()).map(Vec::as_slice),
        Some(&b"v4 local"[..])
    );
}

#[test]
fn deletes_go_both_ways_but_never_take_a_changed_file() {
    let mut w = world(ShareMode::TwoWay);
    w.write("gone-here", b"1");
    w.write("gone-there", b"2");
    w.write("edited-here", b"3");
    w.sync();
    let _ = w.bucket.take_written_events();

    std::fs::remove_file(w.share_dir.join("gone-here")).expect("rm");
    w.sync();
    assert!(!w.bucket.contents().contains_key("gone-here"));

    let ev = w.bucket.delete("gone-there");
    w.deliver(vec![ev]);
    assert_eq!(w.read("gone-there"), None);

    // Deleted in the bucket, changed here: the change wins and goes back up.
    w.write("edited-here", b"3 but newer");
    let ev = w.bucket.delete("edited-here");
    w.deliver(vec![ev]);
    assert_eq!(w.read("edited-here").as_deref(), Some(&b"3 but newer"[..]));
    assert_eq!(
        w.bucket.contents().get("edited-here").map(Vec::as_slice),
        Some(&b"3 but newer"[..])
    );
}

#[test]
fn state_survives_a_restart_without_uploading_twice() {
    let mut w = world(ShareMode::TwoWay);
    w.write("x", b"once");
    w.sync();
    let _ = w.bucket.take_written_events();
    drop(std::mem::replace(
        &mut w.share,
        open(
            &w.share_dir.clone(),
            &w.state_dir.clone(),
            &w.bucket,
            &w.queue,
            ShareMode::TwoWay,
        ),
    ));
    w.sync();
    assert!(w.bucket.take_written_events().is_empty(), "uploaded again");
    assert_eq!(w.share.status.objects_downloaded, 0);
}

#[test]
fn a_mirror_share_never_uploads() {
    let mut w = world(ShareMode::Mirror);
    w.write("local-only", b"stays here");
    let ev = w.bucket.put("remote", b"comes down");
    w.sync();
    w.deliver(vec![ev]);
    assert!(!w.bucket.contents().contains_key("local-only"));
    assert!(w.bucket.take_written_events().is_empty());
    assert_eq!(w.read("remote").as_deref(), Some(&b"comes down"[..]));
    assert_eq!(w.share.status.unknown_local_files, 1);
}

/// The memory bucket, but part 2 of the first multipart upload fails once (a cut link).
struct FailsPartTwoOnce {
    inner: Arc<MemoryBucket>,
    failed: AtomicBool,
}

impl ObjectStore for FailsPartTwoOnce {
    fn list_page(&self, p: &str, c: Option<&str>) -> Result<ListPage, CloudError> {
        self.inner.list_page(p, c)
    }
    fn head(&self, k: &str) -> Result<Option<ObjectMeta>, CloudError> {
        self.inner.head(k)
    }
    fn get(&self, k: &str, o: u64, m: Option<&str>) -> Result<ObjectBody, CloudError> {
        self.inner.get(k, o, m)
    }
    fn put_object(
        &self,
        k: &str,
        b: &mut dyn Read,
        s: u64,
        c: u64,
        cond: &PutCondition,
    ) -> Result<PutResult, CloudError> {
        self.inner.put_object(k, b, s, c, cond)
    }
    fn create_multipart(&self, k: &str) -> Result<String, CloudError> {
        self.inner.create_multipart(k)
    }
    fn upload_part(
        &self,
        k: &str,
        id: &str,
        n: u32,
        b: &mut dyn Read,
        s: u64,
        c: u64,
    ) -> Result<String, CloudError> {
        if n == 2 && !self.failed.swap(true, Ordering::SeqCst) {
            return Err(CloudError::Transport("connection reset".into()));
        }
        self.inner.upload_part(k, id, n, b, s, c)
    }
    fn complete_multipart(
        &self,
        k: &str,
        id: &str,
        parts: &[UploadedPart],
        c: u64,
        cond: &PutCondition,
    ) -> Result<PutResult, CloudError> {
        self.inner.complete_multipart(k, id, parts, c, cond)
    }
    fn abort_multipart(&self, k: &str, id: &str) -> Result<(), CloudError> {
        self.inner.abort_multipart(k, id)
    }
}

#[test]
fn a_big_file_goes_up_in_parts_and_an_interrupted_upload_resumes() {
    let bucket = Arc::new(MemoryBucket::new("bucket", 3));
    let store = Arc::new(FailsPartTwoOnce {
        inner: Arc::clone(&bucket),
        failed: AtomicBool::new(false),
    });
    let mut w = world_with(ShareMode::TwoWay, Some(store));
    w.bucket = Arc::clone(&bucket);
    let big: Vec<u8> = (0..20 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    w.write("big.bin", &big);
    // The first attempt stops at part 2 and keeps its resume record.
    let _ = w.share.full_sync().expect("sync");
    assert!(
        !bucket.contents().contains_key("big.bin"),
        "published partial"
    );
    let uploads = w.state_dir.join("uploads");
    assert_eq!(std::fs::read_dir(&uploads).expect("resume dir").count(), 1);
    let calls_before = bucket.multipart_calls.load(Ordering::SeqCst);
    // A restart, then the next sync: same upload continued (no new CreateMultipartUpload).
    let state_dir = w.state_dir.clone();
    let share_dir = w.share_dir.clone();
    let store2: Arc<dyn ObjectStore> = Arc::new(FailsPartTwoOnce {
        inner: Arc::clone(&bucket),
        failed: AtomicBool::new(true),
    });
    drop(std::mem::replace(
        &mut w.share,
        open_on(&share_dir, &state_dir, store2, &w.queue, ShareMode::TwoWay),
    ));
    w.sync();
    assert_eq!(bucket.contents().get("big.bin"), Some(&big));
    // Parts 2 and 3 and the completion: three calls, no create.
    assert_eq!(
        bucket.multipart_calls.load(Ordering::SeqCst) - calls_before,
        3
    );
    assert_eq!(std::fs::read_dir(&uploads).expect("resume dir").count(), 0);
    let head = bucket.head("big.bin").expect("head").expect("object");
    assert_eq!(head.crc64nvme, Some(sgw_agent::cache::crc64::nvme(&big)));
}

/// The memory bucket, but reading the body of `key` makes a LAN client write the local file
/// (an edit that lands while the download runs).
struct EditsDuringDownload {
    inner: Arc<MemoryBucket>,
    key: String,
    path: PathBuf,
}

struct EditOnRead {
    inner: Box<dyn Read + Send>,
    path: Option<PathBuf>,
}

impl Read for EditOnRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(p) = self.path.take() {
            std::fs::write(p, b"edited during the download")?;
        }
        self.inner.read(buf)
    }
}

impl ObjectStore for EditsDuringDownload {
    fn list_page(&self, p: &str, c: Option<&str>) -> Result<ListPage, CloudError> {
        self.inner.list_page(p, c)
    }
    fn head(&self, k: &str) -> Result<Option<ObjectMeta>, CloudError> {
        self.inner.head(k)
    }
    fn get(&self, k: &str, o: u64, m: Option<&str>) -> Result<ObjectBody, CloudError> {
        let mut body = self.inner.get(k, o, m)?;
        if k == self.key {
            body.body = Box::new(EditOnRead {
                inner: body.body,
                path: Some(self.path.clone()),
            });
        }
        Ok(body)
    }
    fn put_object(
        &self,
        k: &str,
        b: &mut dyn Read,
        s: u64,
        c: u64,
        cond: &PutCondition,
    ) -> Result<PutResult, CloudError> {
        self.inner.put_object(k, b, s, c, cond)
    }
}

#[test]
fn a_local_edit_during_a_download_is_kept_and_uploaded() {
    let bucket = Arc::new(MemoryBucket::new("bucket", 3));
    bucket.put("f", b"v2 from the bucket");
    let tmp_share = tempfile::tempdir().expect("tmp");
    let store = Arc::new(EditsDuringDownload {
        inner: Arc::clone(&bucket),
        key: "f".into(),
        path: tmp_share.path().join("share/f"),
    });
    let mut w = world_with(ShareMode::TwoWay, Some(store));
    w.bucket = Arc::clone(&bucket);
    // The share lives where the store's hook writes.
    let share_dir = tmp_share.path().join("share");
    std::fs::create_dir_all(&share_dir).expect("mkdir");
    let state_dir = w.state_dir.clone();
    let store2: Arc<dyn ObjectStore> = Arc::new(EditsDuringDownload {
        inner: Arc::clone(&bucket),
        key: "f".into(),
        path: share_dir.join("f"),
    });
    drop(std::mem::replace(
        &mut w.share,
        open_on(&share_dir, &state_dir, store2, &w.queue, ShareMode::TwoWay),
    ));
    w.share_dir = share_dir;
    let _ = w.share.full_sync().expect("sync");
    assert_eq!(w.read("f").as_deref(), Some(&b"v2 from the bucket"[..]));
    let names = w.local_names();
    let copy = names
        .iter()
        .find(|n| n.starts_with("f.sgw-conflict-gwA-"))
        .unwrap_or_else(|| panic!("the edit was overwritten: {names:?}"))
        .clone();
    assert_eq!(
        w.read(&copy).as_deref(),
        Some(&b"edited during the download"[..])
    );
    // Once it has settled, the kept edit goes up under its conflict name.
    std::thread::sleep(Duration::from_millis(200));
    w.sync();
    assert_eq!(
        bucket.contents().get(copy.as_str()).map(Vec::as_slice),
        Some(&b"edited during the download"[..])
    );
}

// ----- the real shell under random interleavings ----------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    LocalWrite(usize),
    LocalDelete(usize),
    RemoteWrite(usize),
    RemoteDelete(usize),
    Sync,
    Events,
    Restart,
}

const KEYS: [&str; 2] = ["a", "d/b"];

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    let k = 0..KEYS.len();
    prop_oneof![
        3 => k.clone().prop_map(Op::LocalWrite),
        1 => k.clone().prop_map(Op::LocalDelete),
        3 => k.clone().prop_map(Op::RemoteWrite),
        1 => k.prop_map(Op::RemoteDelete),
        2 => Just(Op::Sync),
        2 => Just(Op::Events),
        1 => Just(Op::Restart),
    ]
}

/// Every file under the share (relative path -> bytes), without `.sgw`.
fn local_files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("ls").flatten() {
            let p = e.path();
            let rel = p
                .strip_prefix(dir)
                .expect("rel")
                .to_string_lossy()
                .into_owned();
            if rel == ".sgw" {
                continue;
            }
            if e.file_type().expect("type").is_dir() {
                stack.push(p);
            } else {
                out.insert(rel, std::fs::read(&p).expect("read"));
            }
        }
    }
    out
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// Users at this site and at another one write and delete; the agent syncs, applies
    /// events (its own echoes included) and restarts, in any order. Afterwards the share and
    /// the bucket hold the same files, and every version a user wrote and no user replaced
    /// or deleted is still there (under its name or a conflict name), on both sides.
    #[test]
    fn the_real_shell_converges_with_no_version_lost(
        ops in proptest::collection::vec(op(), 1..14)
    ) {
        let mut w = world(ShareMode::TwoWay);
        let mut n = 0u32;
        let mut written: Vec<Vec<u8>> = Vec::new();
        let mut replaced: Vec<Vec<u8>> = Vec::new();
        let mut pending_events: Vec<String> = Vec::new();
        for op in &ops {
            match *op {
                Op::LocalWrite(k) => {
                    n += 1;
                    let body = format!("local {n} of {}", KEYS[k]).into_bytes();
                    // What is at the path now (whoever put it there) is replaced by a user.
                    if let Some(old) = w.read(KEYS[k]) {
                        replaced.push(old);
                    }
                    w.write(KEYS[k], &body);
                    written.push(body);
                }
                Op::LocalDelete(k) => {
                    if let Some(old) = w.read(KEYS[k]) {
                        replaced.push(old);
                        std::fs::remove_file(w.share_dir.join(KEYS[k])).expect("rm");
                    }
                }
                Op::RemoteWrite(k) => {
                    n += 1;
                    let body = format!("remote {n} of {}", KEYS[k]).into_bytes();
                    if let Some(old) = w.bucket.contents().get(KEYS[k]) {
                        replaced.push(old.clone());
                    }
                    pending_events.push(w.bucket.put(KEYS[k], &body));
                    written.push(body);
                }
                Op::RemoteDelete(k) => {
                    if let Some(old) = w.bucket.contents().get(KEYS[k]) {
                        replaced.push(old.clone());
                        pending_events.push(w.bucket.delete(KEYS[k]));
                    }
                }
                Op::Sync => w.sync(),
                Op::Events => {
                    let mut evs = std::mem::take(&mut pending_events);
                    evs.extend(w.bucket.take_written_events());
                    w.deliver(evs);
                }
                Op::Restart => {
                    let (share_dir, state_dir) = (w.share_dir.clone(), w.state_dir.clone());
                    drop(std::mem::replace(
                        &mut w.share,
                        open(&share_dir, &state_dir, &w.bucket, &w.queue, ShareMode::TwoWay),
                    ));
                }
            }
        }
        // Quiet: whatever is queued arrives, and the agent reconciles until nothing moves.
        std::thread::sleep(Duration::from_millis(150));
        for _ in 0..4 {
            let mut evs = std::mem::take(&mut pending_events);
            evs.extend(w.bucket.take_written_events());
            w.deliver(evs);
            w.sync();
        }
        let local = local_files(&w.share_dir);
        let bucket = w.bucket.contents();
        proptest::prop_assert_eq!(&local, &bucket, "share and bucket differ");
        for v in &written {
            if replaced.contains(v) {
                continue;
            }
            proptest::prop_assert!(
                bucket.values().any(|b| b == v),
                "lost {:?}; bucket {:?}",
                String::from_utf8_lossy(v),
                bucket.keys().collect::<Vec<_>>()
            );
        }
    }
}
