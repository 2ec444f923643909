//! One object into the share: staged, resumed after interruptions, checked (CRC-64, else the
//! MD5 ETag), published. Runs on a pool worker.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use log::{info, warn};

use super::pool::{Job, JobOutcome};
use super::{MAX_BODY_ATTEMPTS, MAX_CRC_ATTEMPTS};
use crate::cache::publish::{Expected, PublishError, ShareDir};
use crate::cloud::{CloudError, ObjectStore};
use crate::engine::local::is_md5_etag;
use crate::format::hex_lower;
use crate::model::ObjectMeta;
use crate::service::Shutdown;

/// Stream one object into the share: staged, CRC-checked, published. Runs on a worker.
pub(super) fn download(
    store: &dyn ObjectStore,
    dir: &ShareDir,
    job: &Job,
    shutdown: &Shutdown,
    buf: &mut [u8],
) -> JobOutcome {
    let key = &job.meta.key;
    let mut crc_failures = 0;
    let mut body_failures = 0;
    let mut meta = job.meta.clone();
    loop {
        if shutdown.is_triggered() {
            return JobOutcome::Failed("stopped before the download finished".into());
        }
        let mut staged = match dir.begin(key, meta.etag.as_deref(), meta.last_modified, meta.size) {
            Ok(s) => s,
            Err(e) => return JobOutcome::Failed(format!("cannot stage {key:?}: {e}")),
        };
        let offset = staged.offset();
        if offset > 0 {
            info!(
                "share download: {key:?}: resuming at byte {offset} of {}",
                meta.size
            );
        }
        // A resumed download must not mix two versions: pin the ETag, and take the
        // whole-object CRC from a HEAD (a ranged GET need not carry it).
        let mut expected_crc = None;
        if offset > 0 {
            match store.head(key) {
                Ok(Some(h)) if h.etag.is_some() && h.etag == meta.etag && h.size == meta.size => {
                    expected_crc = h.crc64nvme
                }
                Ok(Some(h)) => {
                    staged.discard();
                    meta = h;
                    continue;
                }
                Ok(None) => {
                    staged.discard();
                    return JobOutcome::Gone;
                }
                Err(e) => return JobOutcome::Failed(format!("HEAD {key:?}: {e}")),
            }
        }
        let if_match = if offset > 0 { meta.etag.clone() } else { None };
        let body = match store.get(key, offset, if_match.as_deref()) {
            Ok(b) => b,
            Err(CloudError::Service { status: 412, .. }) => {
                staged.discard();
                continue;
            }
            Err(e) if e.is_not_found() => {
                staged.discard();
                return JobOutcome::Gone;
            }
            Err(e) => return JobOutcome::Failed(format!("GET {key:?}: {e}")),
        };
        if body.offset != offset {
            // The server ignored the range: start over from byte 0 with what it sent.
            staged.discard();
            if body.offset != 0 {
                return JobOutcome::Failed(format!(
                    "GET {key:?}: unexpected range start {}",
                    body.offset
                ));
            }
            let m = &body.meta;
            staged = match dir.begin(key, m.etag.as_deref(), m.last_modified, m.size) {
                Ok(s) if s.offset() == 0 => s,
                Ok(s) => {
                    s.discard();
                    return JobOutcome::Failed(format!("cannot restage {key:?}"));
                }
                Err(e) => return JobOutcome::Failed(format!("cannot stage {key:?}: {e}")),
            };
        }
        let got = body.meta.clone();
        if offset == 0 {
            expected_crc = got.crc64nvme;
        }
        // No CRC-64 from the server: a single-part ETag is the MD5 of the bytes, so check
        // that instead of the size alone (only for a whole-object GET).
        let mut md5 = match (&expected_crc, &got.etag) {
            (None, Some(etag)) if offset == 0 && is_md5_etag(etag) => {
                Some(<md5::Md5 as md5::Digest>::new())
            }
            _ => None,
        };
        let mut reader = body.body;
        // Which side failed matters: the network is retried with a ranged GET, the local disk
        // is not (a full disk stays full for the next attempt too).
        let streamed: Result<(), Streaming> = (|| {
            loop {
                let n = reader.read(buf).map_err(Streaming::Body)?;
                if n == 0 {
                    return Ok(());
                }
                if let Some(m) = md5.as_mut() {
                    md5::Digest::update(m, &buf[..n]);
                }
                staged.write_all(&buf[..n]).map_err(Streaming::Disk)?;
            }
        })();
        if let Err(Streaming::Disk(e)) = streamed {
            staged.discard();
            return disk_failure(key, dir.root(), &e);
        }
        if let Err(Streaming::Body(e)) = streamed {
            body_failures += 1;
            if body_failures >= MAX_BODY_ATTEMPTS {
                return JobOutcome::Failed(format!("reading {key:?}: {e}"));
            }
            warn!(
                "share download: {key:?}: body interrupted at {} bytes ({e}); resuming",
                staged.offset()
            );
            // Keep the staged bytes: the next round resumes with a ranged GET.
            drop(staged);
            shutdown.sleep(Duration::from_millis(200 * u64::from(body_failures)));
            continue;
        }
        if let (Some(m), Some(etag)) = (md5, &got.etag) {
            let actual = hex_lower(&md5::Digest::finalize(m));
            if !actual.eq_ignore_ascii_case(etag) {
                staged.discard();
                crc_failures += 1;
                warn!(
                    "share download: {key:?}: MD5 {actual} does not match ETag {etag}; not published"
                );
                if crc_failures >= MAX_CRC_ATTEMPTS {
                    return JobOutcome::Failed(format!(
                        "{key:?} failed its MD5 (ETag) check {crc_failures} times"
                    ));
                }
                continue;
            }
        }
        let expected = Expected {
            size: got.size,
            crc64nvme: expected_crc,
        };
        let meta_for_record = ObjectMeta {
            crc64nvme: expected_crc,
            ..got.clone()
        };
        match staged.publish_deferring_dir_sync(&expected, &job.rel, got.last_modified) {
            Ok(p) => {
                return JobOutcome::Published {
                    meta: meta_for_record,
                    crc64nvme: p.crc64nvme,
                    had_crc: expected_crc.is_some(),
                    dir_to_sync: p.dir_to_sync,
                };
            }
            Err(PublishError::ChecksumMismatch { expected, actual }) => {
                crc_failures += 1;
                warn!(
                    "share download: {key:?}: CRC-64 mismatch (server {expected:016x}, received {actual:016x}); not published"
                );
                if crc_failures >= MAX_CRC_ATTEMPTS {
                    return JobOutcome::Failed(format!(
                        "{key:?} failed its CRC-64 check {crc_failures} times (server says {expected:016x}, bytes give {actual:016x})"
                    ));
                }
            }
            Err(PublishError::Io(e)) if e.kind() == std::io::ErrorKind::StorageFull => {
                return disk_failure(key, dir.root(), &e);
            }
            Err(e) => return JobOutcome::Failed(format!("publishing {key:?}: {e}")),
        }
    }
}

/// Where a download's bytes failed to move.
enum Streaming {
    Body(std::io::Error),
    Disk(std::io::Error),
}

/// A local write failed: not retried. A full disk gets its own outcome, so the share says so
/// once instead of once per object.
fn disk_failure(key: &str, root: &Path, e: &std::io::Error) -> JobOutcome {
    if e.kind() == std::io::ErrorKind::StorageFull {
        JobOutcome::NoSpace(format!("no space left on {}", root.display()))
    } else {
        JobOutcome::Failed(format!("writing {key:?} to {}: {e}", root.display()))
    }
}
