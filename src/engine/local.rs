//! The sink side of one key: whose is the file at its path, and what may happen to it?
//!
//! `../shared/DESIGN.md`: "A file that equals its base is the agent's own and may be replaced;
//! only a file that differs from its base is a local change." The *base* is the state store's
//! record of the version the agent last published at that key. Every path that is about to
//! replace or remove a local file (the full sync, the event path, a delete from the bucket)
//! asks these functions, so the rule lives in one place.

use super::FileFacts;
use super::events::publish_completed;
use crate::model::{ConsistencyCheck, LocalRecord, ObjectMeta};

/// What the file at a key's path is, measured against the base.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalFile {
    /// No regular file at the path.
    Absent,
    /// The file the agent published, untouched (size and mtime are the record's).
    Base,
    /// Anything else: a file the agent never published at this key, or one changed since.
    Changed,
}

/// Classify the file at a key's path (`file`) against the base (`base`).
///
/// The agent sets each published file's mtime to the object's Last-Modified, so an untouched
/// file has exactly the record's size and mtime; an edit changes one or both (a same-size edit
/// within the same second as the object's Last-Modified is the one case this cannot see).
pub fn classify(base: Option<&LocalRecord>, file: Option<FileFacts>) -> LocalFile {
    match (base, file) {
        (_, None) => LocalFile::Absent,
        (Some(base), Some(f)) if f.size == base.size && f.mtime == base.last_modified => {
            LocalFile::Base
        }
        (_, Some(_)) => LocalFile::Changed,
    }
}

/// What to do with the file at a key's path before `meta` is published there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BeforePublish {
    /// Nothing is there, or it is the agent's own unchanged file: publish over it.
    Publish,
    /// Not the base, but it has this version's size and Last-Modified (published before a
    /// crash, or copied with its times): record it without downloading once its content is
    /// proven ([`adoption_proven`]); if it is not, treat it as [`BeforePublish::SetAside`].
    Adopt,
    /// Someone's file, or a local change to the agent's: keep it under a conflict name, then
    /// publish. Never destroyed.
    SetAside,
}

/// Decide [`BeforePublish`] for `meta` given the base and the file at the path.
pub fn before_publish(
    meta: &ObjectMeta,
    base: Option<&LocalRecord>,
    file: Option<FileFacts>,
    mode: ConsistencyCheck,
) -> BeforePublish {
    match classify(base, file) {
        LocalFile::Absent | LocalFile::Base => BeforePublish::Publish,
        LocalFile::Changed
            if mode != ConsistencyCheck::Transmission && publish_completed(meta, file) =>
        {
            BeforePublish::Adopt
        }
        LocalFile::Changed => BeforePublish::SetAside,
    }
}

/// What the shell measured over a file it considers adopting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileDigest {
    pub crc64nvme: u64,
    /// Lower-case hex MD5, computed only when the object's ETag is a plain MD5.
    pub md5: Option<String>,
}

/// Is the file's content proven to be `meta`'s? The CRC-64 decides when the server has one; a
/// plain MD5 ETag decides next. A server that offers neither cannot be asked: the file's size
/// and Last-Modified (already equal, or [`before_publish`] would not have said `Adopt`) stand.
/// Stale bytes with the right size and second must not pass as the new version while any
/// checksum can tell them apart.
pub fn adoption_proven(meta: &ObjectMeta, digest: &FileDigest) -> bool {
    if let Some(crc) = meta.crc64nvme {
        return crc == digest.crc64nvme;
    }
    match (&meta.etag, &digest.md5) {
        (Some(etag), Some(md5)) => etag.eq_ignore_ascii_case(md5),
        (Some(etag), None) if is_md5_etag(etag) => false,
        _ => true,
    }
}

/// A 32-hex-digit ETag (no `-N` multipart suffix) is the MD5 of the object's bytes on S3 for
/// single-part uploads without SSE-KMS.
pub fn is_md5_etag(etag: &str) -> bool {
    etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConsistencyCheck::{Crc64, SizeLastModified, Transmission};

    fn base(size: u64, last_modified: i64) -> LocalRecord {
        LocalRecord {
            key: "k".into(),
            size,
            etag: Some("e0".into()),
            last_modified,
            crc64nvme: 1,
            sequencer: None,
        }
    }

    fn meta(size: u64, last_modified: i64) -> ObjectMeta {
        ObjectMeta {
            key: "k".into(),
            size,
            etag: Some("e1".into()),
            last_modified,
            crc64nvme: None,
        }
    }

    fn file(size: u64, mtime: i64) -> Option<FileFacts> {
        Some(FileFacts { size, mtime })
    }

    #[test]
    fn a_file_equal_to_its_base_is_the_agents_own() {
        let b = base(10, 100);
        assert_eq!(classify(Some(&b), file(10, 100)), LocalFile::Base);
        assert_eq!(classify(Some(&b), file(11, 100)), LocalFile::Changed);
        assert_eq!(classify(Some(&b), file(10, 101)), LocalFile::Changed);
        assert_eq!(classify(Some(&b), None), LocalFile::Absent);
        assert_eq!(classify(None, file(10, 100)), LocalFile::Changed);
        assert_eq!(classify(None, None), LocalFile::Absent);
    }

    #[test]
    fn the_agents_own_file_is_replaced_whatever_the_new_version_looks_like() {
        // Issue 9, defect 1: a new version (other size, later time) over the untouched base.
        let b = base(10, 100);
        for m in [meta(20, 200), meta(10, 100), meta(10, 200)] {
            for mode in [SizeLastModified, Crc64, Transmission] {
                assert_eq!(
                    before_publish(&m, Some(&b), file(10, 100), mode),
                    BeforePublish::Publish
                );
            }
        }
        assert_eq!(
            before_publish(&meta(20, 200), Some(&b), None, SizeLastModified),
            BeforePublish::Publish
        );
    }

    #[test]
    fn a_changed_or_foreign_file_is_set_aside_unless_it_already_is_the_version() {
        let b = base(10, 100);
        let m = meta(20, 200);
        // A LAN edit of the agent's file.
        assert_eq!(
            before_publish(&m, Some(&b), file(12, 150), SizeLastModified),
            BeforePublish::SetAside
        );
        // A file nobody recorded.
        assert_eq!(
            before_publish(&m, None, file(12, 150), SizeLastModified),
            BeforePublish::SetAside
        );
        // Already this version (published before a crash): adopt, after the content check.
        assert_eq!(
            before_publish(&m, None, file(20, 200), SizeLastModified),
            BeforePublish::Adopt
        );
        assert_eq!(
            before_publish(&m, Some(&b), file(20, 200), Crc64),
            BeforePublish::Adopt
        );
        // transmission never trusts what is on disk.
        assert_eq!(
            before_publish(&m, None, file(20, 200), Transmission),
            BeforePublish::SetAside
        );
    }

    #[test]
    fn adoption_needs_a_matching_checksum_when_one_can_be_had() {
        let digest = |crc, md5: Option<&str>| FileDigest {
            crc64nvme: crc,
            md5: md5.map(Into::into),
        };
        let mut m = meta(20, 200);
        m.crc64nvme = Some(7);
        assert!(adoption_proven(&m, &digest(7, None)));
        assert!(!adoption_proven(&m, &digest(8, None)));
        // Issue 9, defect 2: same size and second, other bytes: the MD5 ETag tells them apart.
        m.crc64nvme = None;
        m.etag = Some("0123456789abcdef0123456789ABCDEF".into());
        assert!(adoption_proven(
            &m,
            &digest(0, Some("0123456789abcdef0123456789abcdef"))
        ));
        assert!(!adoption_proven(
            &m,
            &digest(0, Some("fedcba98765432100123456789abcdef"))
        ));
        assert!(!adoption_proven(&m, &digest(0, None)), "MD5 not measured");
        // Multipart ETags and servers without ETags: size and time stand.
        m.etag = Some("0123456789abcdef0123456789abcdef-3".into());
        assert!(adoption_proven(&m, &digest(0, None)));
        m.etag = None;
        assert!(adoption_proven(&m, &digest(0, None)));
    }
}
