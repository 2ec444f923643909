//! One object's download as a sans-IO state machine (ureq-proto style): the shell performs
//! each [`Step`] (stage, HEAD, GET, stream, publish, wait) and reports what happened; the
//! machine decides what comes next, including every retry and its limit.
//!
//! The rules it encodes:
//! - A resumed download never mixes two versions: before a ranged GET the key is HEADed to pin
//!   its ETag and size (and to learn the whole-object CRC-64, which a ranged answer need not
//!   carry), and the GET carries `If-Match`. A changed version starts over from byte 0.
//! - A server that ignores the range (200 for a ranged GET) is followed: the staged bytes go,
//!   and the body it sent is streamed from byte 0.
//! - No CRC-64 from the server: a whole-object GET of a single-part object is checked against
//!   its MD5 ETag instead of the size alone.
//! - Failures are bounded: body interruptions are resumed [`MAX_BODY_ATTEMPTS`] times with a
//!   pause that grows (the shell's retry policy), checksum mismatches retried [`MAX_CHECK_ATTEMPTS`] times, version changes
//!   under the download followed [`MAX_RESTARTS`] times. A local write failure is never
//!   retried (a full disk stays full).

use super::local::is_md5_etag;
use crate::model::ObjectMeta;

/// Body read failures are resumed (ranged GET) this many times.
pub const MAX_BODY_ATTEMPTS: u32 = 5;
/// A checksum mismatch (CRC-64 or MD5 ETag) is retried this many times.
pub const MAX_CHECK_ATTEMPTS: u32 = 3;
/// The object changing under the download (HEAD or If-Match) is followed this many times.
pub const MAX_RESTARTS: u32 = 5;

/// What the shell does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Open the staging file for this version (resuming what is staged for it), discarding
    /// whatever is staged first when `discard` is set; then [`Download::staged`]. `why` (a
    /// retry's reason) is for the log.
    Stage {
        meta: ObjectMeta,
        discard: bool,
        why: Option<String>,
    },
    /// HEAD the key; then [`Download::headed`].
    Head,
    /// GET from `offset` (with `If-Match` when set); then [`Download::got`].
    Get {
        offset: u64,
        if_match: Option<String>,
    },
    /// Stream the body into the staged file, hashing it with MD5 as well when `md5` is set.
    /// With `restage`, the server ignored the range: discard the staged bytes and stage this
    /// version from byte 0 first. Then [`Download::streamed`].
    Stream {
        md5: bool,
        restage: Option<ObjectMeta>,
    },
    /// Keep the staged bytes, wait before retry number `attempt` (0-based; how long is the
    /// shell's one retry policy), then [`Download::waited`].
    Wait { attempt: u32, why: String },
    /// Verify size and CRC-64 (when known) and publish; then [`Download::published`].
    Publish {
        size: u64,
        crc64nvme: Option<u64>,
        mtime: i64,
    },
    /// Finished.
    Done(Outcome),
}

/// How a download ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Published; `meta` is the version published (with the CRC-64 it was checked against).
    Published {
        meta: ObjectMeta,
        had_crc: bool,
    },
    /// The object is gone from the bucket.
    Gone,
    Failed(String),
    /// The local disk is full.
    NoSpace,
}

/// What a HEAD said, as the machine needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeadResult {
    Found(ObjectMeta),
    NotFound,
    Failed(String),
}

/// What a GET said: the response's first byte and the version it serves, or why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GetResult {
    Body {
        offset: u64,
        meta: ObjectMeta,
    },
    /// 412: `If-Match` failed, the object changed.
    PreconditionFailed,
    NotFound,
    Failed(String),
}

/// What streaming the body did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamResult {
    /// The whole body is staged; `md5` when asked for.
    Complete { md5: Option<String> },
    /// The body broke off (network): the staged bytes are kept, `at` bytes in all.
    Interrupted { at: u64, why: String },
    /// Writing to the share failed; `full` for ENOSPC.
    DiskFailed { full: bool, why: String },
}

/// What the publish did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublishResult {
    Published,
    /// The bytes do not match the server's CRC-64 (the staged file is gone).
    ChecksumMismatch {
        expected: u64,
        actual: u64,
    },
    DiskFull,
    Failed(String),
}

/// One download in progress.
#[derive(Debug)]
pub struct Download {
    meta: ObjectMeta,
    /// Where the current attempt's GET starts.
    offset: u64,
    /// The whole-object CRC-64 for the current attempt.
    expected_crc: Option<u64>,
    /// The version the current GET serves.
    got: Option<ObjectMeta>,
    body_failures: u32,
    check_failures: u32,
    restarts: u32,
}

impl Download {
    /// Start downloading `meta` (the version the engine decided on).
    pub fn new(meta: ObjectMeta) -> (Download, Step) {
        let step = stage(&meta, false, None);
        let dl = Download {
            meta,
            offset: 0,
            expected_crc: None,
            got: None,
            body_failures: 0,
            check_failures: 0,
            restarts: 0,
        };
        (dl, step)
    }

    pub fn key(&self) -> &str {
        &self.meta.key
    }

    /// The staging file holds `offset` bytes of this version.
    pub fn staged(&mut self, offset: u64) -> Step {
        self.offset = offset;
        self.expected_crc = None;
        self.got = None;
        if offset > 0 {
            Step::Head
        } else {
            Step::Get {
                offset: 0,
                if_match: None,
            }
        }
    }

    pub fn headed(&mut self, head: HeadResult) -> Step {
        match head {
            HeadResult::Found(h)
                if h.etag.is_some() && h.etag == self.meta.etag && h.size == self.meta.size =>
            {
                self.expected_crc = h.crc64nvme;
                Step::Get {
                    offset: self.offset,
                    if_match: self.meta.etag.clone(),
                }
            }
            HeadResult::Found(h) => self.restart(Some(h), "the object changed; starting over"),
            HeadResult::NotFound => Step::Done(Outcome::Gone),
            HeadResult::Failed(why) => {
                Step::Done(Outcome::Failed(format!("HEAD {:?}: {why}", self.meta.key)))
            }
        }
    }

    pub fn got(&mut self, get: GetResult) -> Step {
        match get {
            GetResult::Body { offset, meta } => {
                let restage = if offset == self.offset {
                    None
                } else if offset == 0 {
                    // The server ignored the range: follow it from byte 0, with its version.
                    self.offset = 0;
                    self.meta = meta.clone();
                    Some(meta.clone())
                } else {
                    return Step::Done(Outcome::Failed(format!(
                        "GET {:?}: unexpected range start {offset}",
                        self.meta.key
                    )));
                };
                if self.offset == 0 {
                    self.expected_crc = meta.crc64nvme;
                }
                let md5 = self.offset == 0
                    && self.expected_crc.is_none()
                    && meta.etag.as_deref().is_some_and(is_md5_etag);
                self.got = Some(meta);
                Step::Stream { md5, restage }
            }
            GetResult::PreconditionFailed => {
                self.restart(None, "the object changed; starting over")
            }
            GetResult::NotFound => Step::Done(Outcome::Gone),
            GetResult::Failed(why) => {
                Step::Done(Outcome::Failed(format!("GET {:?}: {why}", self.meta.key)))
            }
        }
    }

    pub fn streamed(&mut self, result: StreamResult) -> Step {
        let key = &self.meta.key;
        match result {
            StreamResult::DiskFailed { full: true, .. } => Step::Done(Outcome::NoSpace),
            StreamResult::DiskFailed { full: false, why } => {
                Step::Done(Outcome::Failed(format!("writing {key:?}: {why}")))
            }
            StreamResult::Interrupted { at, why } => {
                self.body_failures += 1;
                if self.body_failures >= MAX_BODY_ATTEMPTS {
                    return Step::Done(Outcome::Failed(format!("reading {key:?}: {why}")));
                }
                Step::Wait {
                    attempt: self.body_failures - 1,
                    why: format!("body interrupted at {at} bytes ({why}); resuming"),
                }
            }
            StreamResult::Complete { md5 } => {
                let Some(got) = &self.got else {
                    return Step::Done(Outcome::Failed(format!(
                        "{key:?}: streamed without a GET (shell bug)"
                    )));
                };
                if let (Some(actual), Some(etag)) = (&md5, &got.etag)
                    && !actual.eq_ignore_ascii_case(etag)
                {
                    let why = format!("MD5 {actual} does not match ETag {etag}; not published");
                    return self.check_failed(why, "MD5 (ETag)");
                }
                Step::Publish {
                    size: got.size,
                    crc64nvme: self.expected_crc,
                    mtime: got.last_modified,
                }
            }
        }
    }

    /// After a [`Step::Wait`]: resume what is staged.
    pub fn waited(&mut self) -> Step {
        stage(&self.meta, false, None)
    }

    pub fn published(&mut self, result: PublishResult) -> Step {
        match result {
            PublishResult::Published => {
                let Some(got) = self.got.take() else {
                    return Step::Done(Outcome::Failed("published without a GET".into()));
                };
                Step::Done(Outcome::Published {
                    meta: ObjectMeta {
                        crc64nvme: self.expected_crc,
                        ..got
                    },
                    had_crc: self.expected_crc.is_some(),
                })
            }
            PublishResult::ChecksumMismatch { expected, actual } => self.check_failed(
                format!(
                    "CRC-64 mismatch (server {expected:016x}, received {actual:016x}); not published"
                ),
                "CRC-64",
            ),
            PublishResult::DiskFull => Step::Done(Outcome::NoSpace),
            PublishResult::Failed(why) => Step::Done(Outcome::Failed(format!(
                "publishing {:?}: {why}",
                self.meta.key
            ))),
        }
    }

    fn check_failed(&mut self, why: String, check: &str) -> Step {
        self.check_failures += 1;
        if self.check_failures >= MAX_CHECK_ATTEMPTS {
            return Step::Done(Outcome::Failed(format!(
                "{:?} failed its {check} check {} times (last: {why})",
                self.meta.key, self.check_failures
            )));
        }
        // A bad copy is never resumed from: start over from byte 0.
        stage(&self.meta, true, Some(why))
    }

    fn restart(&mut self, newer: Option<ObjectMeta>, why: &str) -> Step {
        self.restarts += 1;
        if self.restarts > MAX_RESTARTS {
            return Step::Done(Outcome::Failed(format!(
                "{:?} kept changing during its download ({} versions); the next sync tries again",
                self.meta.key, self.restarts
            )));
        }
        // A newer version from HEAD is followed; after a failed If-Match, a whole GET (the
        // staged bytes discarded) tells what the object is now.
        if let Some(newer) = newer {
            self.meta = newer;
        }
        stage(&self.meta, true, Some(why.to_string()))
    }
}

fn stage(meta: &ObjectMeta, discard: bool, why: Option<String>) -> Step {
    Step::Stage {
        meta: meta.clone(),
        discard,
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(etag: &str, size: u64, crc: Option<u64>) -> ObjectMeta {
        ObjectMeta {
            key: "k".into(),
            size,
            etag: Some(etag.into()),
            last_modified: 100,
            crc64nvme: crc,
        }
    }

    const MD5: &str = "0123456789abcdef0123456789abcdef";

    fn body(offset: u64, m: &ObjectMeta) -> GetResult {
        GetResult::Body {
            offset,
            meta: m.clone(),
        }
    }

    #[test]
    fn a_fresh_download_gets_streams_and_publishes_with_the_servers_crc() {
        let m = meta("e1", 10, Some(7));
        let (mut dl, step) = Download::new(m.clone());
        assert!(matches!(step, Step::Stage { discard: false, .. }));
        assert_eq!(
            dl.staged(0),
            Step::Get {
                offset: 0,
                if_match: None
            }
        );
        assert_eq!(
            dl.got(body(0, &m)),
            Step::Stream {
                md5: false,
                restage: None
            }
        );
        assert_eq!(
            dl.streamed(StreamResult::Complete { md5: None }),
            Step::Publish {
                size: 10,
                crc64nvme: Some(7),
                mtime: 100
            }
        );
        assert_eq!(
            dl.published(PublishResult::Published),
            Step::Done(Outcome::Published {
                meta: m,
                had_crc: true
            })
        );
    }

    #[test]
    fn a_resume_pins_the_version_with_head_and_if_match() {
        let m = meta("e1", 100, None);
        let (mut dl, _) = Download::new(m.clone());
        assert_eq!(dl.staged(40), Step::Head);
        // The HEAD carries the whole-object CRC the ranged answer lacks.
        let head = meta("e1", 100, Some(9));
        assert_eq!(
            dl.headed(HeadResult::Found(head)),
            Step::Get {
                offset: 40,
                if_match: Some("e1".into())
            }
        );
        // Ranged answers are never MD5-checked (the MD5 is of the whole object).
        assert_eq!(
            dl.got(body(40, &m)),
            Step::Stream {
                md5: false,
                restage: None
            }
        );
        assert_eq!(
            dl.streamed(StreamResult::Complete { md5: None }),
            Step::Publish {
                size: 100,
                crc64nvme: Some(9),
                mtime: 100
            }
        );
    }

    #[test]
    fn a_version_change_under_a_resume_starts_over_with_the_new_version() {
        let (mut dl, _) = Download::new(meta("e1", 100, None));
        assert_eq!(dl.staged(40), Step::Head);
        let newer = meta("e2", 120, None);
        assert!(matches!(
            dl.headed(HeadResult::Found(newer.clone())),
            Step::Stage { meta, discard: true, .. } if meta == newer
        ));
        // If-Match failing (412) also starts over, from byte 0.
        assert!(matches!(dl.staged(40), Step::Head));
        dl.headed(HeadResult::Found(newer.clone()));
        assert!(matches!(
            dl.got(GetResult::PreconditionFailed),
            Step::Stage { discard: true, .. }
        ));
        assert_eq!(dl.headed(HeadResult::NotFound), Step::Done(Outcome::Gone));
    }

    #[test]
    fn an_object_that_never_stops_changing_fails_instead_of_looping() {
        let (mut dl, _) = Download::new(meta("e0", 100, None));
        let mut last = Step::Head;
        for i in 1..=MAX_RESTARTS + 1 {
            dl.staged(40);
            last = dl.headed(HeadResult::Found(meta(&format!("e{i}"), 100, None)));
        }
        assert!(
            matches!(&last, Step::Done(Outcome::Failed(why)) if why.contains("kept changing")),
            "{last:?}"
        );
    }

    #[test]
    fn a_server_ignoring_the_range_is_followed_from_byte_zero() {
        let m = meta(MD5, 100, None);
        let (mut dl, _) = Download::new(m.clone());
        dl.staged(40);
        dl.headed(HeadResult::Found(m.clone()));
        assert_eq!(
            dl.got(body(0, &m)),
            Step::Stream {
                md5: true,
                restage: Some(m.clone())
            }
        );
        let (mut dl, _) = Download::new(m.clone());
        dl.staged(40);
        dl.headed(HeadResult::Found(m.clone()));
        assert!(matches!(
            dl.got(body(7, &m)),
            Step::Done(Outcome::Failed(why)) if why.contains("unexpected range start 7")
        ));
    }

    #[test]
    fn without_a_crc_the_md5_etag_is_checked_and_retried_a_bounded_number_of_times() {
        let m = meta(MD5, 10, None);
        let (mut dl, _) = Download::new(m.clone());
        for attempt in 1..=MAX_CHECK_ATTEMPTS {
            dl.staged(0);
            assert_eq!(
                dl.got(body(0, &m)),
                Step::Stream {
                    md5: true,
                    restage: None
                }
            );
            let step = dl.streamed(StreamResult::Complete {
                md5: Some("ffffffffffffffffffffffffffffffff".into()),
            });
            if attempt < MAX_CHECK_ATTEMPTS {
                assert!(
                    matches!(step, Step::Stage { discard: true, .. }),
                    "{step:?}"
                );
            } else {
                assert!(
                    matches!(&step, Step::Done(Outcome::Failed(w)) if w.contains("MD5 (ETag)")),
                    "{step:?}"
                );
            }
        }
        // The right MD5 (any case) publishes, counted as verified without a CRC.
        let (mut dl, _) = Download::new(m.clone());
        dl.staged(0);
        dl.got(body(0, &m));
        assert!(matches!(
            dl.streamed(StreamResult::Complete {
                md5: Some(MD5.to_uppercase())
            }),
            Step::Publish {
                crc64nvme: None,
                ..
            }
        ));
        assert_eq!(
            dl.published(PublishResult::Published),
            Step::Done(Outcome::Published {
                meta: m,
                had_crc: false
            })
        );
    }

    #[test]
    fn crc_mismatches_are_retried_then_fail() {
        let m = meta("e1-2", 10, Some(7));
        let (mut dl, _) = Download::new(m.clone());
        let mismatch = PublishResult::ChecksumMismatch {
            expected: 7,
            actual: 8,
        };
        for _ in 1..MAX_CHECK_ATTEMPTS {
            dl.staged(0);
            dl.got(body(0, &m));
            dl.streamed(StreamResult::Complete { md5: None });
            assert!(matches!(
                dl.published(mismatch.clone()),
                Step::Stage { discard: true, .. }
            ));
        }
        dl.staged(0);
        dl.got(body(0, &m));
        dl.streamed(StreamResult::Complete { md5: None });
        assert!(matches!(
            dl.published(mismatch),
            Step::Done(Outcome::Failed(w)) if w.contains("CRC-64 check 3 times")
        ));
    }

    #[test]
    fn interruptions_resume_with_growing_attempts_but_a_full_disk_is_final() {
        let m = meta("e1", 100, Some(1));
        let (mut dl, _) = Download::new(m.clone());
        let mut attempts = Vec::new();
        loop {
            dl.staged(0);
            dl.got(body(0, &m));
            match dl.streamed(StreamResult::Interrupted {
                at: 5,
                why: "reset".into(),
            }) {
                Step::Wait { attempt, .. } => {
                    attempts.push(attempt);
                    assert!(matches!(dl.waited(), Step::Stage { discard: false, .. }));
                }
                Step::Done(Outcome::Failed(w)) => {
                    assert!(w.contains("reset"));
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(attempts, (0..MAX_BODY_ATTEMPTS - 1).collect::<Vec<_>>());
        let (mut dl, _) = Download::new(m.clone());
        dl.staged(0);
        dl.got(body(0, &m));
        assert_eq!(
            dl.streamed(StreamResult::DiskFailed {
                full: true,
                why: "ENOSPC".into()
            }),
            Step::Done(Outcome::NoSpace)
        );
        assert_eq!(
            dl.published(PublishResult::DiskFull),
            Step::Done(Outcome::NoSpace)
        );
    }
}
