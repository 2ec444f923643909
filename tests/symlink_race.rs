//! Regression test for the symlink-swap race (issue 9, defect 4): while `sgw-agent sync` writes
//! under `<share>/data/`, a LAN client swaps `data/` for a symlink to a directory outside the
//! share and back, as fast as it can. Whatever instant the swap lands at, nothing may appear
//! outside the share: the agent walks from a descriptor of the share root and never follows a
//! symlink, so an object whose directory is a symlink at that moment fails (and is fetched by
//! the next sync), it never lands at the symlink's target.
//!
//! The swap is one `renameat2(RENAME_EXCHANGE)` of `data` (the real directory) with
//! `data.swap` (a symlink to the outside directory), so `data` always exists and the real
//! directory is always somewhere inside the share.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Peer, agent_command, agent_config_toml, content_for_key, many_key};
use rustix::fs::{CWD, RenameFlags, renameat_with};

const BUCKET: &str = "race";
const PREFIX: &str = "data/";
const OBJECTS: usize = 200;
const SIZE: usize = 512;
const REPETITIONS: usize = 5;
/// Keeps the test well under its time budget on a busy machine.
const TIME_BUDGET: Duration = Duration::from_secs(10);

/// Every entry below `dir` (files, directories, symlinks), as paths relative to it.
fn everything_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

struct Round {
    share: PathBuf,
    outside: PathBuf,
    swaps: u64,
    exit_ok: bool,
    log: String,
}

/// One sync of a fresh share with the swapper running the whole time.
fn race_once(peer: &Peer, tmp: &Path, n: usize) -> Round {
    let base = tmp.join(format!("round-{n}"));
    let share = base.join("share");
    let outside = base.join("outside");
    let state = base.join("state");
    std::fs::create_dir_all(share.join("data")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, share.join("data.swap")).unwrap();
    let config = base.join("agent.toml");
    std::fs::write(
        &config,
        agent_config_toml(&state, &share, BUCKET, "", &peer.endpoint, None),
    )
    .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let swapper = {
        let (stop, swaps) = (Arc::clone(&stop), Arc::clone(&swaps));
        let (a, b) = (share.join("data"), share.join("data.swap"));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                renameat_with(CWD, &a, CWD, &b, RenameFlags::EXCHANGE).expect("exchange");
                swaps.fetch_add(1, Ordering::Relaxed);
                // Let the agent run a little in each state.
                std::thread::yield_now();
            }
            // Leave the real directory at `data`.
            if std::fs::symlink_metadata(&a)
                .unwrap()
                .file_type()
                .is_symlink()
            {
                renameat_with(CWD, &a, CWD, &b, RenameFlags::EXCHANGE).expect("exchange");
            }
        })
    };
    let out = agent_command(&config)
        .args(["sync", "--quiet"])
        .output()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    Round {
        share,
        outside,
        swaps: swaps.load(Ordering::Relaxed),
        exit_ok: out.status.success(),
        log: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn swapping_a_directory_for_a_symlink_mid_sync_writes_nothing_outside_the_share() {
    let peer = Peer::start();
    peer.make_bucket(BUCKET);
    assert_eq!(peer.put_many(BUCKET, PREFIX, OBJECTS, SIZE), OBJECTS);
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut rounds = 0;
    while rounds < REPETITIONS && (rounds == 0 || started.elapsed() < TIME_BUDGET) {
        let r = race_once(&peer, tmp.path(), rounds);
        rounds += 1;
        let escaped = everything_under(&r.outside);
        assert!(
            escaped.is_empty(),
            "round {rounds}: {} entr(ies) written outside the share through the swapped \
             symlink ({} swaps), e.g. {:?}\nagent log:\n{}",
            escaped.len(),
            r.swaps,
            &escaped[..escaped.len().min(5)],
            r.log
        );
        assert!(r.swaps > 0, "the swapper never ran");
        eprintln!(
            "round {rounds}: {} swaps; {} object(s) refused at a symlink; first sync ok: {}",
            r.swaps,
            r.log
                .matches("is a symlink; the agent never writes through one")
                .count(),
            r.exit_ok
        );
        // Objects that met the symlink failed for this sync only: the next sync, with no one
        // swapping, fetches them into the real directory and the share converges.
        let share_cfg = r.share.parent().unwrap().join("agent.toml");
        let out = agent_command(&share_cfg)
            .args(["sync", "--quiet"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "round {rounds}: the sync after the race failed (first sync ok: {}):\n{}",
            r.exit_ok,
            String::from_utf8_lossy(&out.stderr)
        );
        for i in 0..OBJECTS {
            let key = many_key(PREFIX, i);
            let got = std::fs::read(r.share.join(&key))
                .unwrap_or_else(|e| panic!("round {rounds}: {key}: {e}"));
            assert_eq!(got, content_for_key(&key, SIZE), "round {rounds}: {key}");
        }
        assert!(everything_under(&r.outside).is_empty());
    }
    assert!(rounds >= 2, "only {rounds} round(s) fit in the time budget");
}
