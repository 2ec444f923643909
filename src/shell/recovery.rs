//! After a crash, and after each full sync: publish intents that never got their record, and
//! files in the share that neither the agent nor the bucket knows (reported, left alone).

use std::io::Read;
use std::path::{Path, PathBuf};

use log::info;

use super::{Share, ShareError};
use crate::cache::crc64::Crc64Nvme;
use crate::cache::paths::{KeyPath, key_to_relpath};
use crate::cache::share_dir::ShareDir;
use crate::daemon::Heartbeat;
use crate::engine::local::FileDigest;
use crate::format::hex_lower;
use crate::model::{LocalRecord, ObjectMeta};

impl Share {
    /// After a crash: files published whose records never reached the journal. A file still
    /// at its path with the intended size and Last-Modified is recorded (hashing it), so it is
    /// known as the agent's (and deleted when the bucket deletes it) without being downloaded
    /// again. (A GET that returned a newer version than the one intended leaves a file that
    /// does not match: it is treated like any local file the agent does not know.)
    pub(super) fn recover_intents(&mut self) -> Result<(), ShareError> {
        let intents = self.state.take_recovered_intents();
        if intents.is_empty() {
            return Ok(());
        }
        let mut recovered = 0;
        for intent in &intents {
            let known = self.state.get(&intent.key)?;
            let already = known
                .as_ref()
                .is_some_and(|r| r.etag == intent.etag && r.last_modified == intent.last_modified);
            if !already
                && let Ok(KeyPath::File(rel)) = key_to_relpath(&intent.key, &self.ctx.cfg.prefix)
                && let Ok(Some(facts)) = self.dir.file_facts(&rel)
                && facts.size == intent.size
                && crate::engine::events::publish_completed(
                    &ObjectMeta {
                        key: intent.key.clone(),
                        size: intent.size,
                        etag: intent.etag.clone(),
                        last_modified: intent.last_modified,
                        crc64nvme: None,
                    },
                    Some(facts),
                )
            {
                let crc = digest_of_file(&self.dir, &rel, false, &self.heartbeat)?.crc64nvme;
                self.state.put(LocalRecord {
                    key: intent.key.clone(),
                    size: facts.size,
                    etag: intent.etag.clone(),
                    last_modified: intent.last_modified,
                    crc64nvme: crc,
                    sequencer: known.and_then(|r| r.sequencer),
                })?;
                recovered += 1;
            }
        }
        // Durable records for the recovered ones; the rest of the intents are dropped.
        self.state.compact()?;
        info!(
            "share {}: {} download(s) were being published at an interruption; recorded {recovered} found complete",
            self.ctx.cfg.name,
            intents.len()
        );
        Ok(())
    }

    /// Count files in the share that neither the agent nor the bucket knows (left alone).
    pub(super) fn report_unknown_files(&mut self) {
        self.status.unknown_local_files = 0;
        self.status.unknown_examples.clear();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel_dir) = stack.pop() {
            self.heartbeat.beat();
            // Through the share's descriptors: a directory swapped for a symlink is not
            // followed, so no name from outside the share reaches the status file.
            let Ok(entries) = self.dir.read_dir(&rel_dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let rel = rel_dir.join(entry.file_name());
                if rel_dir.as_os_str().is_empty() && entry.file_name() == ".sgw" {
                    continue;
                }
                let Ok(ft) = entry.file_type() else { continue };
                if ft.is_dir() {
                    stack.push(rel);
                } else if ft.is_file() {
                    let Some(rel_str) = rel.to_str() else {
                        self.status.note_unknown(&rel.to_string_lossy());
                        continue;
                    };
                    let key = format!("{}{rel_str}", self.ctx.cfg.prefix);
                    if matches!(self.state.get(&key), Ok(None)) {
                        self.status.note_unknown(rel_str);
                    }
                }
            }
        }
        if self.status.unknown_local_files > 0 {
            info!(
                "share {}: {} local file(s) not in the bucket and not written by the agent (left alone), e.g. {:?}",
                self.ctx.cfg.name,
                self.status.unknown_local_files,
                self.status.unknown_examples.first()
            );
        }
    }
}

/// CRC-64/NVME (and, when asked, the MD5) of a local file (adoption, recovery); beats
/// `heartbeat` as it reads, since a big file on a slow card can take minutes.
/// The file is opened through the share's descriptors: never through a symlink, never a FIFO.
pub(super) fn digest_of_file(
    dir: &ShareDir,
    rel: &Path,
    want_md5: bool,
    heartbeat: &Heartbeat,
) -> std::io::Result<FileDigest> {
    let mut f = dir.open_file_read(rel)?;
    let mut crc = Crc64Nvme::new();
    let mut md5 = want_md5.then(<md5::Md5 as md5::Digest>::new);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(FileDigest {
                crc64nvme: crc.finish(),
                md5: md5.map(|m| hex_lower(&md5::Digest::finalize(m))),
            });
        }
        crc.update(&buf[..n]);
        if let Some(m) = md5.as_mut() {
            md5::Digest::update(m, &buf[..n]);
        }
        heartbeat.beat();
    }
}
