//! `kill -9` the publisher at random instants and check what a LAN client and the next start
//! of the agent would find.
//!
//! The test binary runs itself as the child (switched by an environment variable). The child
//! publishes files in a loop through `ShareDir` + `StateStore` the way the agent does: write an
//! intent, stage, publish, record, sync; remove = forget the record, sync, delete the file.
//! Every file's bytes are derived from its key and version (written into its first bytes), so
//! the parent can tell exactly what each file must contain.

use sgw_agent::cache::crc64;
use sgw_agent::cache::paths::{KeyPath, key_to_relpath};
use sgw_agent::cache::publish::{CHECKPOINT_BYTES, Expected, PublishError};
use sgw_agent::cache::share_dir::ShareDir;
use sgw_agent::cache::state::StateStore;
use sgw_agent::model::LocalRecord;
use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const CHILD_ENV: &str = "SGW_CACHE_CRASH_CHILD_DIR";
const CHILD_TEST: &str = "child_publishes_until_killed";
/// Over one checkpoint, so a kill can leave a resumable staged file.
const BIG_KEY: &str = "big/video.bin";
const KEYS: &[&str] = &[
    "a.bin",
    "dir/b.bin",
    "dir/sub/c.bin",
    "dir/sub/d.bin",
    "space name.txt",
    "deep/x/y/z/e.bin",
    "été/f.bin",
    BIG_KEY,
];
/// Small, so compactions (and kills during them) happen often.
const COMPACT_THRESHOLD: usize = 3;
const ROUNDS: usize = 8;
const INTENT_FILE: &str = "intent";

struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Rng((nanos ^ u64::from(std::process::id()).rotate_left(32)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The exact bytes of `key` at `version`: a readable header, then a deterministic pattern.
fn content(key: &str, version: u64) -> Vec<u8> {
    let header = format!("{key}|{version}|");
    let seed = crc64::nvme(header.as_bytes()) | 1;
    let body = if key == BIG_KEY {
        CHECKPOINT_BYTES + seed % (1 << 20)
    } else {
        seed % 150_000
    };
    let total = header.len() + body as usize;
    let mut out = Vec::with_capacity(total + 8);
    out.extend_from_slice(header.as_bytes());
    let mut rng = Rng(seed);
    while out.len() < total {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(total);
    out
}

/// The key and version a file's header claims.
fn parse_header(bytes: &[u8]) -> Option<(String, u64)> {
    let text = bytes.get(..bytes.len().min(400))?;
    let mut parts = text.splitn(3, |b| *b == b'|');
    let key = std::str::from_utf8(parts.next()?).ok()?.to_owned();
    let version = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    parts.next()?;
    Some((key, version))
}

fn rel_of(key: &str) -> PathBuf {
    match key_to_relpath(key, "") {
        Ok(KeyPath::File(p)) => p,
        other => panic!("test key {key:?} maps to {other:?}"),
    }
}

fn last_modified(version: u64) -> i64 {
    1_600_000_000 + (version % 100_000_000) as i64
}

fn etag(version: u64) -> String {
    format!("v{version}")
}

fn version_of(rec: &LocalRecord) -> u64 {
    rec.etag
        .as_deref()
        .and_then(|e| e.strip_prefix('v'))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("record with foreign etag: {rec:?}"))
}

fn read_intent(state_dir: &Path) -> Option<(String, u64)> {
    let text = fs::read_to_string(state_dir.join(INTENT_FILE)).ok()?;
    let (key, version) = text.rsplit_once('|')?;
    Some((key.to_owned(), version.parse().ok()?))
}

fn write_intent(state_dir: &Path, key: &str, version: u64) {
    let tmp = state_dir.join("intent.tmp");
    fs::write(&tmp, format!("{key}|{version}")).expect("write intent");
    fs::rename(&tmp, state_dir.join(INTENT_FILE)).expect("rename intent");
}

/// Publish `key` at `version` and record it, the agent's order: file durable, then record.
/// Resumes a staged download of the same version if a previous run left one.
fn publish_and_record(share: &ShareDir, store: &mut StateStore, key: &str, version: u64) {
    let data = content(key, version);
    let lm = last_modified(version);
    let tag = etag(version);
    let mut staged = share
        .begin(key, Some(&tag), lm, data.len() as u64)
        .expect("begin");
    let offset = usize::try_from(staged.offset()).expect("offset");
    assert!(offset <= data.len(), "resumed past the end");
    for chunk in data[offset..].chunks(16 * 1024) {
        staged.write_all(chunk).expect("write");
    }
    let expect = Expected {
        size: data.len() as u64,
        crc64nvme: Some(crc64::nvme(&data)),
    };
    let published = staged.publish(&expect, &rel_of(key), lm).expect("publish");
    store
        .put(LocalRecord {
            key: key.to_owned(),
            size: published.size,
            etag: Some(tag),
            last_modified: lm,
            crc64nvme: published.crc64nvme,
            sequencer: None,
        })
        .expect("put");
    store.sync().expect("sync");
}

/// What the agent does on start: finish the publish that was in flight, if its record lags.
fn recover(root: &Path, state_dir: &Path) -> (ShareDir, StateStore) {
    let share = ShareDir::open(root).expect("open share");
    let mut store =
        StateStore::open_with_threshold(state_dir, COMPACT_THRESHOLD).expect("open store");
    if let Some((key, version)) = read_intent(state_dir) {
        let recorded = store.get(&key).expect("get").map(|r| version_of(&r));
        if recorded != Some(version) {
            publish_and_record(&share, &mut store, &key, version);
        }
    }
    (share, store)
}

fn child_loop(dir: &Path) -> ! {
    let root = dir.join("share");
    let state_dir = dir.join("state");
    let (share, mut store) = recover(&root, &state_dir);
    let mut rng = Rng::seeded();
    loop {
        let key = KEYS[rng.below(KEYS.len() as u64) as usize];
        match rng.below(8) {
            0 => {
                // Forget first, then delete: a record never points at a missing file.
                if store.get(key).expect("get").is_some() {
                    store.remove(key).expect("remove");
                    store.sync().expect("sync");
                }
                share.remove_file(&rel_of(key)).expect("remove file");
            }
            1 => {
                // A corrupted download must be refused and leave no trace.
                let version = unique_version();
                let mut data = content(key, version);
                let expect = Expected {
                    size: data.len() as u64,
                    crc64nvme: Some(crc64::nvme(&data)),
                };
                let flip = rng.below(data.len() as u64) as usize;
                data[flip] ^= 0x20;
                let mut staged = share.begin(key, None, 0, data.len() as u64).expect("begin");
                staged.write_all(&data).expect("write");
                match staged.publish(&expect, &rel_of(key), 0) {
                    Err(PublishError::ChecksumMismatch { .. }) => {}
                    other => panic!("corrupt download was not refused: {other:?}"),
                }
            }
            _ => {
                let version = unique_version();
                write_intent(&state_dir, key, version);
                publish_and_record(&share, &mut store, key, version);
            }
        }
    }
}

fn unique_version() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .expect("clock")
}

/// The child's entry point; a no-op in a normal test run.
#[test]
fn child_publishes_until_killed() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child_loop(Path::new(&dir));
    }
}

/// What one look at the share and the store found.
struct Findings {
    versions: BTreeSet<(String, u64)>,
    lagging_records: Vec<String>,
}

fn check_share_and_store(root: &Path, state_dir: &Path) -> Findings {
    let known: BTreeSet<PathBuf> = KEYS.iter().map(|k| rel_of(k)).collect();
    let mut versions = BTreeSet::new();

    // 1. Every file at a final path is exactly some version of its own key.
    let mut pending = vec![PathBuf::new()];
    while let Some(rel_dir) = pending.pop() {
        for entry in fs::read_dir(root.join(&rel_dir)).expect("read_dir") {
            let entry = entry.expect("entry");
            let rel = rel_dir.join(entry.file_name());
            let kind = entry.file_type().expect("file type");
            if rel == Path::new(".sgw") {
                continue;
            }
            if kind.is_dir() {
                pending.push(rel);
                continue;
            }
            assert!(kind.is_file(), "unexpected {kind:?} at {}", rel.display());
            assert!(
                known.contains(&rel),
                "a file that no key maps to (staging leftover?): {}",
                rel.display()
            );
            let bytes = fs::read(root.join(&rel)).expect("read");
            let (key, version) = parse_header(&bytes)
                .unwrap_or_else(|| panic!("{} has no valid header", rel.display()));
            assert_eq!(rel_of(&key), rel, "file holds another key's data");
            assert!(
                bytes == content(&key, version),
                "{} is not exactly version {version} ({} bytes)",
                rel.display(),
                bytes.len()
            );
            versions.insert((key, version));
        }
    }

    // 2. Every record points at a file with the recorded size, CRC and mtime, except the one
    //    publish in flight at the kill (file renamed, record not yet written).
    let store = StateStore::open_with_threshold(state_dir, COMPACT_THRESHOLD).expect("open");
    let intent = read_intent(state_dir);
    let mut lagging_records = Vec::new();
    let mut count = 0u64;
    for rec in store.iter_sorted().expect("iter") {
        let rec = rec.expect("record");
        count += 1;
        let path = root.join(rel_of(&rec.key));
        let bytes =
            fs::read(&path).unwrap_or_else(|e| panic!("record for {} but no file: {e}", rec.key));
        let crc = crc64::nvme(&bytes);
        if crc == rec.crc64nvme {
            assert_eq!(bytes.len() as u64, rec.size);
            let mtime = fs::metadata(&path)
                .expect("meta")
                .modified()
                .expect("mtime");
            let mtime = mtime.duration_since(UNIX_EPOCH).expect("epoch").as_secs();
            assert_eq!(mtime as i64, rec.last_modified, "{}", rec.key);
            continue;
        }
        let (_, file_version) = parse_header(&bytes).expect("header");
        assert_eq!(
            intent,
            Some((rec.key.clone(), file_version)),
            "record for {} (v{}) does not match its file (v{file_version}), \
             and that was not the publish in flight",
            rec.key,
            version_of(&rec)
        );
        lagging_records.push(rec.key.clone());
    }
    assert_eq!(count, store.len());
    assert!(lagging_records.len() <= 1);
    Findings {
        versions,
        lagging_records,
    }
}

#[test]
fn kill_9_at_random_instants_never_exposes_a_wrong_file() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("share");
    let state_dir = dir.path().join("state");
    fs::create_dir(&root).expect("mkdir");
    fs::create_dir(&state_dir).expect("mkdir");
    let exe = std::env::current_exe().expect("current_exe");
    let mut rng = Rng::seeded();
    let mut seen = BTreeSet::new();

    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let run_for = Duration::from_millis(200 + rng.below(600));
        let started = Instant::now();
        while started.elapsed() < run_for {
            if child.try_wait().expect("try_wait").is_some() {
                let mut err = String::new();
                if let Some(mut stderr) = child.stderr.take() {
                    let _ = stderr.read_to_string(&mut err);
                }
                panic!("child exited on its own in round {round}:\n{err}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        child.kill().expect("kill -9"); // SIGKILL on Unix
        child.wait().expect("wait");

        let findings = check_share_and_store(&root, &state_dir);
        eprintln!(
            "round {round}: {} files, lagging {:?}, staging {:?}",
            findings.versions.len(),
            findings.lagging_records,
            fs::read_dir(root.join(".sgw/staging"))
                .map(|d| d.count())
                .ok()
        );
        seen.extend(findings.versions);
    }

    // Restart once more and let recovery finish the publish in flight: everything converges.
    drop(recover(&root, &state_dir));
    let findings = check_share_and_store(&root, &state_dir);
    assert!(
        findings.lagging_records.is_empty(),
        "{:?}",
        findings.lagging_records
    );
    seen.extend(findings.versions);
    assert!(
        seen.len() >= ROUNDS,
        "the child published too little to prove anything: {seen:?}"
    );
}
