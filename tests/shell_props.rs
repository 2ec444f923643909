//! Property tests of the real share shell ([`sgw_agent::shell::Share`]) against in-memory
//! doubles of the bucket and the queue ([`sgw_agent::cloud::memory`]), with faults injected.
//!
//! The world: a bucket mutated by puts and deletes, each emitting an S3 event (with or without
//! a sequencer); a network that delivers those events late, reordered, more than once, and
//! (with faults) loses some; a store that fails calls, cuts bodies off and corrupts them; and
//! restarts that drop the share with whatever its journal had not made durable. The share is
//! the real one, on a real directory (tmpfs where there is one): the same code that runs in the
//! daemon, driven through `full_sync` and `apply_messages`.
//!
//! Properties:
//! 1. with no faults, once every event has been processed the share equals the bucket;
//! 2. with faults, lost events and restarts, after a fault-free full sync the share equals the
//!    bucket, files a LAN user put there are untouched, and nothing was set aside as a conflict
//!    copy (nobody edited the agent's files); late events afterwards keep it so;
//! 3. a second full sync right after a converged one downloads and deletes nothing.
//!
//! What this cannot do is stop the process between two system calls: `kill -9` at any instant
//! is proven against the real binary in `tests/e2e_sync.rs` and `tests/cache_crash.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use sgw_agent::cloud::memory::{Fault, Faulty, MemoryBucket, MemoryQueue};
use sgw_agent::cloud::{EventQueue, ObjectStore};
use sgw_agent::config::ShareConfig;
use sgw_agent::daemon::Shutdown;
use sgw_agent::model::ConsistencyCheck;
use sgw_agent::shell::{Share, ShareContext, Silent};

const PREFIX: &str = "share/";
/// Bucket keys the mutations touch; the last one is outside the share's prefix.
const KEYS: [&str; 5] = [
    "share/a",
    "share/b c",
    "share/dir/é",
    "share/z+1",
    "other/x",
];
/// Files a LAN user put into the share; the bucket never has these keys.
const USER_FILES: [&str; 2] = ["dir/user.doc", "notes.txt"];

/// A small id stands for the bytes. Sizes collide on purpose (0 and 3 have the same size), so
/// size alone cannot tell versions apart.
fn content(id: u8) -> Vec<u8> {
    vec![b'a' + id; usize::from(id % 3) * 10]
}

#[derive(Clone, Copy, Debug)]
struct Settings {
    mode: ConsistencyCheck,
    sequencers: bool,
    listing_etags: bool,
    crcs: bool,
    concurrency: usize,
    page: usize,
}

fn settings_strategy() -> impl Strategy<Value = Settings> {
    (
        prop_oneof![
            Just(ConsistencyCheck::SizeLastModified),
            Just(ConsistencyCheck::Crc64),
            Just(ConsistencyCheck::Transmission),
        ],
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        1usize..=3,
        1usize..=3,
    )
        .prop_map(
            |(mode, sequencers, listing_etags, crcs, concurrency, page)| Settings {
                mode,
                sequencers,
                listing_etags,
                crcs,
                concurrency,
                page,
            },
        )
}

#[derive(Clone, Debug)]
enum Op {
    Put {
        key: usize,
        content: u8,
    },
    Delete {
        key: usize,
    },
    /// Deliver the event at `pick` of those in flight; with `again`, keep it in flight too
    /// (delivered twice).
    Deliver {
        pick: usize,
        again: bool,
    },
    /// Receive from the queue and apply what came.
    Poll,
    /// Lose the event at `pick` (faults only).
    Lose {
        pick: usize,
    },
    /// The store fails `percent` % of calls from now on (faults only).
    Faults {
        percent: u32,
    },
    /// Drop the share, losing what its journal had not synced, and open it again; with
    /// `full_sync`, the start-up reconcile runs (it may fail under faults).
    Restart {
        full_sync: bool,
    },
    FullSync,
}

fn op_strategy(faults: bool) -> BoxedStrategy<Op> {
    let key = 0..KEYS.len();
    let base = prop_oneof![
        3 => (key.clone(), 0u8..6).prop_map(|(key, content)| Op::Put { key, content }),
        1 => key.prop_map(|key| Op::Delete { key }),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(pick, again)| Op::Deliver { pick, again }),
        2 => Just(Op::Poll),
        1 => Just(Op::FullSync),
    ];
    if !faults {
        return base.boxed();
    }
    prop_oneof![
        8 => base,
        1 => any::<usize>().prop_map(|pick| Op::Lose { pick }),
        1 => prop_oneof![Just(0u32), Just(20), Just(50)].prop_map(|percent| Op::Faults { percent }),
        1 => any::<bool>().prop_map(|full_sync| Op::Restart { full_sync }),
    ]
    .boxed()
}

/// A deterministic fault for call `n` at `percent`: transport errors, cut and corrupt bodies.
/// Corruption only where the server has CRC-64s: without a checksum a flipped byte of the same
/// size cannot be told from the object (the README says so), and TLS is what guards it then.
fn fault_for(n: u64, percent: u32, corrupt: bool) -> Fault {
    let h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) % 100;
    if h >= u64::from(percent) {
        return Fault::None;
    }
    match h % 3 {
        0 => Fault::Transport,
        2 if corrupt => Fault::Corrupt,
        _ => Fault::Cut(h % 7),
    }
}

struct World {
    _tmp: tempfile::TempDir,
    share_dir: PathBuf,
    state_dir: PathBuf,
    settings: Settings,
    bucket: Arc<Faulty<MemoryBucket>>,
    fault_percent: Arc<AtomicU32>,
    queue: Arc<MemoryQueue>,
    in_flight: Vec<String>,
    share: Option<Share>,
}

fn scratch() -> tempfile::TempDir {
    // tmpfs where there is one: the share fsyncs every file, and a disk makes that slow.
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(t) = tempfile::tempdir_in(shm)
    {
        return t;
    }
    tempfile::tempdir().expect("a temp dir")
}

impl World {
    fn new(settings: Settings) -> World {
        let tmp = scratch();
        let share_dir = tmp.path().join("share");
        let state_dir = tmp.path().join("state");
        std::fs::create_dir_all(share_dir.join("dir")).unwrap();
        for (i, f) in USER_FILES.iter().enumerate() {
            std::fs::write(share_dir.join(f), format!("user file {i}")).unwrap();
        }
        let fault_percent = Arc::new(AtomicU32::new(0));
        let percent = Arc::clone(&fault_percent);
        let mut inner = MemoryBucket::new("bucket", settings.page);
        inner.sequencers = settings.sequencers;
        inner.listing_etags = settings.listing_etags;
        inner.crcs = settings.crcs;
        let corrupt = settings.crcs;
        let bucket = Arc::new(Faulty::new(inner, move |n| {
            fault_for(n, percent.load(Ordering::SeqCst), corrupt)
        }));
        let mut world = World {
            _tmp: tmp,
            share_dir,
            state_dir,
            settings,
            bucket,
            fault_percent,
            queue: Arc::new(MemoryQueue::new()),
            in_flight: Vec::new(),
            share: None,
        };
        world.open();
        world
    }

    fn open(&mut self) {
        let cfg = ShareConfig {
            name: "prop".into(),
            path: self.share_dir.clone(),
            bucket: "bucket".into(),
            prefix: PREFIX.into(),
            endpoint: "memory".into(),
            region: "memory".into(),
            queue_url: Some("memory".into()),
            consistency_check: self.settings.mode,
            allow_http: false,
            ca_file: None,
            download_concurrency: self.settings.concurrency,
            full_sync_interval_secs: 0,
            // Deleting most of five keys is normal here.
            delete_limits: sgw_agent::engine::guard::DeleteLimits {
                max_percent: 100,
                max_count: 0,
            },
            allow_mass_delete: false,
            sync: Default::default(),
        };
        let store: Arc<dyn ObjectStore> = self.bucket.clone();
        let queue: Arc<dyn EventQueue> = self.queue.clone();
        let ctx = ShareContext {
            cfg,
            state_dir: self.state_dir.clone(),
            store,
            queue: Some(queue),
            shutdown: Shutdown::new(),
            progress: Arc::new(Silent),
        };
        self.share = Some(Share::open(ctx).expect("the share opens"));
    }

    fn share(&mut self) -> &mut Share {
        self.share.as_mut().expect("open")
    }

    fn poll(&mut self) {
        let msgs = self.queue.receive(10, 0).expect("memory queue");
        if !msgs.is_empty() {
            // A failure here is the share's to report; the messages come back.
            let queue = Arc::clone(&self.queue);
            let _ = self.share().apply_messages(&*queue, msgs);
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Put { key, content: c } => {
                let ev = self.bucket.inner().put(KEYS[key], &content(c));
                self.in_flight.push(ev);
            }
            Op::Delete { key } => {
                let ev = self.bucket.inner().delete(KEYS[key]);
                self.in_flight.push(ev);
            }
            Op::Deliver { pick, again } => {
                if !self.in_flight.is_empty() {
                    let i = pick % self.in_flight.len();
                    let ev = if again {
                        self.in_flight[i].clone()
                    } else {
                        self.in_flight.remove(i)
                    };
                    self.queue.push(ev);
                }
            }
            Op::Poll => self.poll(),
            Op::Lose { pick } => {
                if !self.in_flight.is_empty() {
                    let i = pick % self.in_flight.len();
                    self.in_flight.remove(i);
                }
            }
            Op::Faults { percent } => self.fault_percent.store(percent, Ordering::SeqCst),
            Op::Restart { full_sync } => {
                self.share = None;
                self.open();
                if full_sync {
                    let _ = self.share().full_sync();
                }
            }
            Op::FullSync => {
                let _ = self.share().full_sync();
            }
        }
    }

    /// Deliver every event still in flight, in a scrambled order, and poll until the queue is
    /// empty (bounded: a message that keeps failing is dropped after its fifth receive).
    fn drain(&mut self, seed: usize) {
        let mut step = seed;
        while !self.in_flight.is_empty() {
            step = step.wrapping_mul(31).wrapping_add(7);
            let ev = self.in_flight.remove(step % self.in_flight.len());
            self.queue.push(ev);
        }
        for _ in 0..50 {
            if self.queue.is_empty() {
                return;
            }
            self.poll();
        }
        panic!("the queue never emptied: {} left", self.queue.len());
    }

    /// The share's files (relative path -> bytes), without the agent's `.sgw`.
    fn files(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![self.share_dir.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(&self.share_dir).unwrap();
                if rel == Path::new(".sgw") {
                    continue;
                }
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.insert(
                        rel.to_string_lossy().into_owned(),
                        std::fs::read(&p).unwrap(),
                    );
                }
            }
        }
        out
    }

    fn check_mirror(&self) -> Result<(), TestCaseError> {
        let mut expected: BTreeMap<String, Vec<u8>> = self
            .bucket
            .inner()
            .contents()
            .into_iter()
            .filter_map(|(k, v)| k.strip_prefix(PREFIX).map(|rel| (rel.to_string(), v)))
            .collect();
        for (i, f) in USER_FILES.iter().enumerate() {
            expected.insert(f.to_string(), format!("user file {i}").into_bytes());
        }
        let files = self.files();
        let conflicts: Vec<_> = files
            .keys()
            .filter(|k| k.contains(".sgw-conflict"))
            .collect();
        prop_assert!(
            conflicts.is_empty(),
            "conflict copies of the agent's own files: {conflicts:?}"
        );
        prop_assert_eq!(files, expected);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Property 1: duplicated, delayed, reordered events alone bring the share to the bucket.
    #[test]
    fn events_alone_converge(
        settings in settings_strategy(),
        ops in prop::collection::vec(op_strategy(false), 0..40),
        seed in any::<usize>(),
    ) {
        let mut world = World::new(settings);
        for op in ops.iter().filter(|op| !matches!(op, Op::FullSync)) {
            world.apply(op);
        }
        world.drain(seed);
        world.check_mirror()?;
    }

    /// Properties 2 and 3: faults, lost events and restarts; a fault-free full sync converges,
    /// a second one changes nothing, late events keep it so.
    #[test]
    fn faults_then_full_sync_converge(
        settings in settings_strategy(),
        ops in prop::collection::vec(op_strategy(true), 0..40),
        seed in any::<usize>(),
    ) {
        let mut world = World::new(settings);
        for op in &ops {
            world.apply(op);
        }
        world.fault_percent.store(0, Ordering::SeqCst);
        world.share = None;
        world.open();
        let first = world.share().full_sync().expect("a fault-free full sync");
        prop_assert!(first.converged(), "{first:?}");
        world.check_mirror()?;

        let second = world.share().full_sync().expect("a fault-free full sync");
        if settings.mode != ConsistencyCheck::Transmission {
            prop_assert_eq!((second.downloaded, second.deleted, second.adopted), (0, 0, 0), "{:?}", second);
        }
        world.check_mirror()?;

        world.drain(seed);
        world.check_mirror()?;
    }
}
