//! Unit cases for the reconciliation table, and a property test that plays one key's life —
//! local edits and deletes, bucket edits and deletes from another site, the agent's steps,
//! echoes, crashes between an upload and its record — against a model of the shell that
//! executes the actions with S3's conditional semantics. It checks what the promises say:
//! the agent destroys only the base version, an echo is a no-op, and the key converges with
//! no version lost.

use proptest::prelude::*;

use super::*;

fn obj(id: u32, lm: i64) -> ObjectMeta {
    ObjectMeta {
        key: "k".into(),
        size: u64::from(id % 3),
        etag: Some(format!("e{id}")),
        last_modified: lm,
        crc64nvme: Some(u64::from(id)),
    }
}

fn rec(id: u32, lm: i64) -> LocalRecord {
    LocalRecord {
        key: "k".into(),
        size: u64::from(id % 3),
        etag: Some(format!("e{id}")),
        last_modified: lm,
        crc64nvme: u64::from(id),
        sequencer: None,
    }
}

fn stat(id: u32, mtime_ns: i64, ino: u64) -> LocalStat {
    LocalStat {
        size: u64::from(id % 3),
        mtime_ns,
        ino,
    }
}

const S: i64 = 1_000_000_000;

#[test]
fn the_table() {
    let b1 = obj(1, 100);
    let b2 = obj(2, 200);
    let base = rec(1, 100);
    let at_base = stat(1, 100 * S, 7); // a downloaded file: mtime = Last-Modified
    let edited = stat(2, 150 * S + 5, 7);
    let r = Rules::default();
    let ask = |bucket, base, local, crc| {
        reconcile(
            &KeyState {
                bucket,
                base,
                seen: None,
                local,
                local_crc: crc,
            },
            r,
        )
    };
    assert_eq!(
        ask(Some(&b1), Some(&base), Some(at_base), None),
        Action::Nothing
    );
    assert_eq!(
        ask(Some(&b2), Some(&base), Some(at_base), None),
        Action::Download
    );
    assert_eq!(
        ask(Some(&b1), Some(&base), Some(edited), None),
        Action::Upload {
            if_match: Some("e1".into())
        }
    );
    assert_eq!(
        ask(Some(&b1), Some(&base), None, None),
        Action::DeleteRemote {
            if_match: Some("e1".into())
        }
    );
    assert_eq!(
        ask(None, Some(&base), Some(at_base), None),
        Action::DeleteLocal
    );
    assert_eq!(ask(None, Some(&base), None, None), Action::Forget);
    assert_eq!(
        ask(None, Some(&base), Some(edited), None),
        Action::Upload { if_match: None }
    );
    assert_eq!(ask(Some(&b2), Some(&base), None, None), Action::Download);
    // Both changed: sizes differ (2 % 3 vs 5 % 3 = 2 — same size): CRC needed, then decided.
    let edited5 = stat(5, 160 * S, 7);
    assert_eq!(
        ask(Some(&b2), Some(&base), Some(edited5), None),
        Action::NeedCrc
    );
    assert_eq!(
        ask(Some(&b2), Some(&base), Some(edited5), Some(5)),
        Action::Conflict
    );
    assert_eq!(
        ask(Some(&b2), Some(&base), Some(edited5), Some(2)),
        Action::RecordBase
    );
    // New on both sides.
    assert_eq!(
        ask(Some(&b2), None, Some(stat(5, 1, 1)), None),
        Action::NeedCrc
    );
    assert_eq!(
        ask(Some(&b2), None, Some(stat(4, 1, 1)), None),
        Action::Conflict
    );
    assert_eq!(
        ask(None, None, Some(at_base), None),
        Action::Upload { if_match: None }
    );
    assert_eq!(ask(Some(&b1), None, None, None), Action::Download);
    // Touched (mtime only): the CRC proves it is the base.
    let touched = stat(1, 300 * S, 7);
    assert_eq!(
        ask(Some(&b1), Some(&base), Some(touched), None),
        Action::NeedCrc
    );
    assert_eq!(
        ask(Some(&b1), Some(&base), Some(touched), Some(1)),
        Action::RecordLocal
    );
    // ignore_delete: the bucket's copy comes back instead.
    let keep = Rules {
        ignore_delete: true,
    };
    assert_eq!(
        reconcile(
            &KeyState {
                bucket: Some(&b1),
                base: Some(&base),
                ..Default::default()
            },
            keep
        ),
        Action::Download
    );
}

#[test]
fn the_echo_of_an_upload_is_nothing() {
    // After uploading id 2 (written at 150 s + 5 ns, inode 9), the record and the seen file
    // are the upload's; the object's Last-Modified is the server's, later than the mtime.
    let base = rec(2, 151);
    let seen = SeenFile {
        key: "k".into(),
        stat: stat(2, 150 * S + 5, 9),
        crc64nvme: 2,
        base_etag: Some("e2".into()),
    };
    let echo = obj(2, 151);
    let s = KeyState {
        bucket: Some(&echo),
        base: Some(&base),
        seen: Some(&seen),
        local: Some(seen.stat),
        local_crc: None,
    };
    assert_eq!(reconcile(&s, Rules::default()), Action::Nothing);
    // Replaced by rename (new inode), same size and mtime: no longer trusted by stat.
    let replaced = stat(2, 150 * S + 5, 10);
    let s = KeyState {
        local: Some(replaced),
        ..s
    };
    assert_eq!(reconcile(&s, Rules::default()), Action::NeedCrc);
    // A seen file of an older base is stale: the download fallback rule applies.
    let newer = rec(5, 400);
    let s = KeyState {
        bucket: Some(&echo),
        base: Some(&newer),
        seen: Some(&seen),
        local: Some(stat(5, 400 * S, 11)),
        local_crc: None,
    };
    // The file is the downloaded e5 (mtime = its Last-Modified); the bucket moved to e2.
    assert_eq!(reconcile(&s, Rules::default()), Action::Download);
}

// ----- the model ------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    LocalWrite,
    LocalDelete,
    BucketWrite,
    BucketDelete,
    /// The agent looks at the key (an event, the watcher, a full sync) and acts.
    Step,
    /// As `Step`, but a successful upload is cut off by kill -9 before its records.
    StepCrash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::LocalWrite),
        1 => Just(Op::LocalDelete),
        2 => Just(Op::BucketWrite),
        1 => Just(Op::BucketDelete),
        4 => Just(Op::Step),
        1 => Just(Op::StepCrash),
    ]
}

#[derive(Clone, Debug)]
struct LocalFile {
    id: u32,
    stat: LocalStat,
}

#[derive(Default, Debug)]
struct World {
    next_id: u32,
    clock: i64,
    next_ino: u64,
    bucket: Option<ObjectMeta>,
    local: Option<LocalFile>,
    base: Option<LocalRecord>,
    seen: Option<SeenFile>,
    /// Conflict copies: kept locally and uploaded under their own keys.
    copies: Vec<u32>,
    /// Every version written by a user, and whether a user destroyed it since.
    written: Vec<u32>,
    overwritten_by_user: Vec<u32>,
    rules: Rules,
}

fn content(meta: &ObjectMeta) -> u32 {
    meta.crc64nvme.expect("model objects carry CRCs") as u32
}

impl World {
    fn tick(&mut self) -> i64 {
        self.clock += 1;
        self.clock
    }

    fn new_id(&mut self) -> u32 {
        self.next_id += 1;
        self.written.push(self.next_id);
        self.next_id
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::LocalWrite => {
                if let Some(old) = &self.local {
                    self.overwritten_by_user.push(old.id);
                }
                let id = self.new_id();
                let t = self.tick();
                self.next_ino += 1;
                self.local = Some(LocalFile {
                    id,
                    stat: stat(id, t * S + 1, self.next_ino),
                });
            }
            Op::LocalDelete => {
                if let Some(old) = self.local.take() {
                    self.overwritten_by_user.push(old.id);
                }
            }
            Op::BucketWrite => {
                if let Some(old) = &self.bucket {
                    self.overwritten_by_user.push(content(old));
                }
                let id = self.new_id();
                let t = self.tick();
                self.bucket = Some(obj(id, t));
            }
            Op::BucketDelete => {
                if let Some(old) = self.bucket.take() {
                    self.overwritten_by_user.push(content(&old));
                }
            }
            Op::Step => {
                self.step(false)?;
            }
            Op::StepCrash => {
                self.step(true)?;
            }
        }
        Ok(())
    }

    fn state(&self, crc: Option<u64>) -> Action {
        reconcile(
            &KeyState {
                bucket: self.bucket.as_ref(),
                base: self.base.as_ref(),
                seen: self.seen.as_ref(),
                local: self.local.as_ref().map(|l| l.stat),
                local_crc: crc,
            },
            self.rules,
        )
    }

    fn base_id(&self) -> Option<u32> {
        self.base.as_ref().map(|b| b.crc64nvme as u32)
    }

    /// The agent replaces or removes the local file: only the base may be destroyed.
    fn destroy_local(&mut self) -> Result<(), TestCaseError> {
        if let Some(l) = &self.local {
            prop_assert_eq!(
                Some(l.id),
                self.base_id(),
                "agent destroyed a local version"
            );
        }
        Ok(())
    }

    fn download(&mut self) -> Result<(), TestCaseError> {
        self.destroy_local()?;
        let b = self.bucket.clone().expect("download needs an object");
        self.next_ino += 1;
        let id = content(&b);
        self.local = Some(LocalFile {
            id,
            stat: stat(id, b.last_modified * S, self.next_ino),
        });
        self.base = Some(rec(id, b.last_modified));
        Ok(())
    }

    /// Returns whether something was done (false: nothing to do).
    fn step(&mut self, crash: bool) -> Result<bool, TestCaseError> {
        let mut action = self.state(None);
        if action == Action::NeedCrc {
            let crc = self.local.as_ref().map(|l| u64::from(l.id));
            action = self.state(crc);
            prop_assert_ne!(&action, &Action::NeedCrc, "asked twice for a CRC");
        }
        match action {
            Action::Nothing => return Ok(false),
            Action::Download => self.download()?,
            Action::Upload { if_match } => {
                let l = self.local.clone().expect("upload needs a file");
                // S3's conditional PUT: a change the agent has not seen fails the request.
                let ok = match (&if_match, &self.bucket) {
                    (None, None) => true,
                    (Some(e), Some(b)) => b.etag.as_ref() == Some(e),
                    _ => false,
                };
                if !ok {
                    return Ok(true);
                }
                if let (Some(b), Some(base)) = (&self.bucket, self.base_id()) {
                    prop_assert_eq!(content(b), base, "upload overwrote an unseen version");
                }
                let t = self.tick();
                let uploaded = obj(l.id, t);
                self.bucket = Some(uploaded.clone());
                if crash {
                    return Ok(true);
                }
                self.base = Some(rec(l.id, t));
                self.seen = Some(SeenFile {
                    key: "k".into(),
                    stat: l.stat,
                    crc64nvme: u64::from(l.id),
                    base_etag: uploaded.etag.clone(),
                });
                // The upload's own event comes back: it must change nothing.
                prop_assert_eq!(self.state(None), Action::Nothing, "echo was not a no-op");
            }
            Action::DeleteLocal => {
                self.destroy_local()?;
                self.local = None;
                self.base = None;
            }
            Action::DeleteRemote { if_match } => {
                if let Some(b) = &self.bucket {
                    if b.etag != if_match {
                        return Ok(true);
                    }
                    prop_assert_eq!(Some(content(b)), self.base_id(), "deleted unseen version");
                }
                self.bucket = None;
                self.base = None;
            }
            Action::Forget => self.base = None,
            Action::RecordBase => {
                let b = self.bucket.clone().expect("object");
                self.base = Some(rec(content(&b), b.last_modified));
                let l = self.local.clone().expect("file");
                self.seen = Some(SeenFile {
                    key: "k".into(),
                    stat: l.stat,
                    crc64nvme: u64::from(l.id),
                    base_etag: b.etag.clone(),
                });
            }
            Action::RecordLocal => {
                let l = self.local.clone().expect("file");
                let base = self.base.clone().expect("base");
                self.seen = Some(SeenFile {
                    key: "k".into(),
                    stat: l.stat,
                    crc64nvme: u64::from(l.id),
                    base_etag: base.etag.clone(),
                });
            }
            Action::Conflict => {
                let l = self.local.take().expect("file");
                self.copies.push(l.id);
                self.download()?;
            }
            Action::NeedCrc => unreachable!(),
        }
        Ok(true)
    }

    fn converge(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..8 {
            if !self.step(false)? {
                break;
            }
        }
        prop_assert_eq!(self.state(None), Action::Nothing, "did not converge");
        let b = self.bucket.as_ref().map(content);
        let l = self.local.as_ref().map(|l| l.id);
        prop_assert_eq!(b, l, "sides differ after convergence");
        prop_assert_eq!(b, self.base_id(), "base is not what both hold");
        // No version lost: every version a user wrote and no user destroyed is somewhere.
        for v in &self.written {
            if self.overwritten_by_user.contains(v) {
                continue;
            }
            prop_assert!(
                b == Some(*v) || self.copies.contains(v),
                "version {} lost (bucket {:?}, copies {:?})",
                v,
                b,
                self.copies
            );
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn interleavings_converge_with_no_version_lost(
        ops in proptest::collection::vec(op(), 0..40),
        ignore_delete in any::<bool>(),
    ) {
        let mut w = World {
            rules: Rules { ignore_delete },
            ..World::default()
        };
        for op in &ops {
            w.apply(op)?;
        }
        w.converge()?;
    }
}
