//! One object into the share, on a pool worker: the thin I/O loop around the engine's
//! download machine ([`crate::engine::download`]), which decides every request and retry.
//! Here: the staging file, the HEAD and GET, streaming with the CRC (and MD5) computed on the
//! way, and the verified publish.

use std::io::Read;

use log::{info, warn};

use super::pool::{Job, JobOutcome};
use crate::cache::publish::{Expected, PublishError, Published, Staged};
use crate::cache::share_dir::{ShareDir, is_no_space};
use crate::cloud::retry::default_delay;
use crate::cloud::{CloudError, ObjectBody, ObjectStore};
use crate::daemon::Shutdown;
use crate::engine::download::{
    Download, GetResult, HeadResult, Outcome, PublishResult, Step, StreamResult,
};
use crate::engine::local::{LocalFile, classify};
use crate::format::hex_lower;

/// Stream one object into the share: staged, checked, published.
pub(super) fn download(
    store: &dyn ObjectStore,
    dir: &ShareDir,
    job: &Job,
    shutdown: &Shutdown,
    buf: &mut [u8],
    waits: &mut u32,
) -> JobOutcome {
    let key = job.meta.key.as_str();
    let (mut dl, mut step) = Download::new(job.meta.clone());
    let mut staged: Option<Staged> = None;
    let mut body: Option<ObjectBody> = None;
    let mut published: Option<Published> = None;
    loop {
        if shutdown.is_triggered() {
            return JobOutcome::Failed("stopped before the download finished".into());
        }
        step = match step {
            Step::Stage { meta, discard, why } => {
                if let Some(why) = why {
                    warn!("share download: {key:?}: {why}");
                }
                if let (true, Some(s)) = (discard, staged.take()) {
                    s.discard();
                }
                // Reopening without `discard` keeps what is staged for this version.
                drop(staged.take());
                let mut s =
                    match dir.begin(key, meta.etag.as_deref(), meta.last_modified, meta.size) {
                        Ok(s) => s,
                        Err(e) => return JobOutcome::Failed(format!("cannot stage {key:?}: {e}")),
                    };
                if discard && s.offset() > 0 {
                    // Left from an earlier attempt of this version: a bad copy is not resumed.
                    s.discard();
                    s = match dir.begin(key, meta.etag.as_deref(), meta.last_modified, meta.size) {
                        Ok(s) => s,
                        Err(e) => {
                            return JobOutcome::Failed(format!("cannot stage {key:?}: {e}"));
                        }
                    };
                }
                let offset = s.offset();
                if offset > 0 {
                    info!(
                        "share download: {key:?}: resuming at byte {offset} of {}",
                        meta.size
                    );
                }
                staged = Some(s);
                dl.staged(offset)
            }
            Step::Head => dl.headed(match store.head(key) {
                Ok(Some(h)) => HeadResult::Found(h),
                Ok(None) => HeadResult::NotFound,
                Err(e) => HeadResult::Failed(e.to_string()),
            }),
            Step::Get { offset, if_match } => {
                dl.got(match store.get(key, offset, if_match.as_deref()) {
                    Ok(b) => {
                        let answer = GetResult::Body {
                            offset: b.offset,
                            meta: b.meta.clone(),
                        };
                        body = Some(b);
                        answer
                    }
                    Err(CloudError::Service { status: 412, .. }) => GetResult::PreconditionFailed,
                    Err(e) if e.is_not_found() => GetResult::NotFound,
                    Err(e) => GetResult::Failed(e.to_string()),
                })
            }
            Step::Stream { md5, restage } => {
                if let Some(m) = restage {
                    if let Some(s) = staged.take() {
                        s.discard();
                    }
                    match dir.begin(key, m.etag.as_deref(), m.last_modified, m.size) {
                        Ok(s) if s.offset() == 0 => staged = Some(s),
                        Ok(s) => {
                            s.discard();
                            return JobOutcome::Failed(format!("cannot restage {key:?}"));
                        }
                        Err(e) => {
                            return JobOutcome::Failed(format!("cannot stage {key:?}: {e}"));
                        }
                    }
                }
                let (Some(s), Some(b)) = (staged.as_mut(), body.take()) else {
                    return JobOutcome::Failed(format!("{key:?}: nothing to stream (shell bug)"));
                };
                dl.streamed(stream(b, s, md5, buf))
            }
            Step::Wait { attempt, why } => {
                warn!("share download: {key:?}: {why}");
                *waits += 1;
                // Keep the staged bytes: the next round resumes with a ranged GET.
                drop(staged.take());
                shutdown.sleep(default_delay(attempt));
                dl.waited()
            }
            Step::Publish {
                size,
                crc64nvme,
                mtime,
            } => {
                let Some(s) = staged.take() else {
                    return JobOutcome::Failed(format!("{key:?}: nothing to publish (shell bug)"));
                };
                let expected = Expected { size, crc64nvme };
                if let Some(suffix) = &job.aside_suffix
                    && let Ok(Some(facts)) = dir.file_facts(&job.rel)
                    && classify(job.old.as_ref(), Some(facts)) == LocalFile::Changed
                {
                    // Written while the download ran: kept, never overwritten.
                    match dir.conflict_aside_as(&job.rel, suffix) {
                        Ok(aside) => warn!(
                            "share download: {key:?}: the local file changed during the download; kept as {}",
                            aside.display()
                        ),
                        Err(e) => {
                            return JobOutcome::Failed(format!(
                                "{key:?}: the local file changed during the download and cannot be moved aside: {e}"
                            ));
                        }
                    }
                }
                dl.published(
                    match s.publish_deferring_dir_sync(&expected, &job.rel, mtime) {
                        Ok(p) => {
                            published = Some(p);
                            PublishResult::Published
                        }
                        Err(PublishError::ChecksumMismatch { expected, actual }) => {
                            PublishResult::ChecksumMismatch { expected, actual }
                        }
                        Err(e) if e.is_no_space() => PublishResult::DiskFull,
                        Err(e) => PublishResult::Failed(e.to_string()),
                    },
                )
            }
            Step::Done(outcome) => {
                if let Some(s) = staged.take()
                    && !matches!(outcome, Outcome::Failed(_))
                {
                    // Gone or no space: the staged bytes are worth nothing (and take room).
                    s.discard();
                }
                return match outcome {
                    Outcome::Published { meta, had_crc } => match published.take() {
                        Some(p) => JobOutcome::Published {
                            meta,
                            crc64nvme: p.crc64nvme,
                            had_crc,
                            dir_to_sync: p.dir_to_sync,
                        },
                        None => JobOutcome::Failed(format!("{key:?}: no publish (shell bug)")),
                    },
                    Outcome::Gone => JobOutcome::Gone,
                    Outcome::Failed(why) => JobOutcome::Failed(why),
                    Outcome::NoSpace => {
                        JobOutcome::NoSpace(format!("no space left on {}", dir.root().display()))
                    }
                };
            }
        };
    }
}

/// Copy the body into the staged file, telling a broken body (network: resumable) from a
/// failed write (local disk: not retried).
fn stream(body: ObjectBody, staged: &mut Staged, want_md5: bool, buf: &mut [u8]) -> StreamResult {
    let mut md5 = want_md5.then(<md5::Md5 as md5::Digest>::new);
    let mut reader = body.body;
    loop {
        let n = match reader.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                return StreamResult::Interrupted {
                    at: staged.offset(),
                    why: e.to_string(),
                };
            }
        };
        if let Some(m) = md5.as_mut() {
            md5::Digest::update(m, &buf[..n]);
        }
        if let Err(e) = staged.write_all(&buf[..n]) {
            return StreamResult::DiskFailed {
                full: is_no_space(&e),
                why: e.to_string(),
            };
        }
    }
    StreamResult::Complete {
        md5: md5.map(|m| hex_lower(&md5::Digest::finalize(m))),
    }
}
