//! Bucket events are hints; the key's current state (HEAD) is the truth.
//!
//! Events arrive at least once, late and out of order, and some servers (moto) send no
//! `sequencer`. So an event only decides whether the key is worth a HEAD ([`on_event`]); what
//! to do is decided from the HEAD result and the local state ([`after_head`]). Applying the same
//! event twice, or an old one after a new one, then converges to the bucket's current state.

use std::cmp::Ordering;

use super::plan::{compare, size_and_last_modified};
use super::{FileFacts, Match};
use crate::model::{
    BucketEvent, ConsistencyCheck, EventKind, LocalRecord, ObjectMeta, sequencer_cmp,
};

/// What to do with one event before touching the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventDecision {
    /// Nothing to do; the reason is for the debug log.
    Ignore(&'static str),
    /// Ask the bucket for the key's current state, then call [`after_head`].
    Head,
}

/// Decide whether `ev` can change anything for a share mirroring `prefix`, given the state
/// store's record for the key (`local`).
pub fn on_event(ev: &BucketEvent, prefix: &str, local: Option<&LocalRecord>) -> EventDecision {
    if !ev.key.starts_with(prefix) {
        return EventDecision::Ignore("key is outside the share's prefix");
    }
    if let Some(local) = local {
        // Only the same key's sequencers are comparable; the record is this key's by contract.
        if let (Some(event_seq), Some(applied_seq)) = (&ev.sequencer, &local.sequencer)
            && sequencer_cmp(event_seq, applied_seq) != Ordering::Greater
        {
            return EventDecision::Ignore("event is not newer than the one already applied");
        }
        let same_version = matches!((&ev.etag, &local.etag), (Some(e), Some(l)) if e == l)
            && ev.size == Some(local.size);
        if ev.kind == EventKind::Created && same_version {
            return EventDecision::Ignore("local copy already has this ETag and size");
        }
    }
    EventDecision::Head
}

/// What to do once the key's current state is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeadDecision {
    /// The local copy is current, or there is nothing of ours to remove.
    Nothing,
    /// Fetch this version (GET with If-Match on its ETag), verify, publish, record.
    Download(ObjectMeta),
    /// The object is gone: remove the file the agent published, then its record.
    Delete(LocalRecord),
    /// A file at the key's path already is this version (published before a crash, before its
    /// record was written): record it without downloading. The shell computes the file's
    /// CRC-64 for the record and, when `meta.crc64nvme` is known, downloads instead if the two
    /// differ.
    Adopt(ObjectMeta),
}

/// Decide from the key's current state (`head`: `None` means 404), the state store's record
/// (`local`) and, when there is no record, what sits at the key's local path (`file`).
///
/// Never deletes a file without a record: a file the agent did not publish is not its to
/// remove.
pub fn after_head(
    head: Option<&ObjectMeta>,
    local: Option<&LocalRecord>,
    file: Option<FileFacts>,
    mode: ConsistencyCheck,
) -> HeadDecision {
    match (head, local) {
        (None, Some(local)) => HeadDecision::Delete(local.clone()),
        (None, None) => HeadDecision::Nothing,
        (Some(head), Some(local)) => {
            let verdict = match compare(head, local, mode) {
                // The HEAD carried no CRC, so the checksum cannot be had: size+time decides.
                Match::NeedChecksum => size_and_last_modified(head, local),
                other => other,
            };
            match verdict {
                Match::Same => HeadDecision::Nothing,
                Match::Different | Match::NeedChecksum => HeadDecision::Download(head.clone()),
            }
        }
        (Some(head), None) => {
            if publish_completed(head, file) && mode != ConsistencyCheck::Transmission {
                HeadDecision::Adopt(head.clone())
            } else {
                HeadDecision::Download(head.clone())
            }
        }
    }
}

/// After a restart: did the publish of `intent` reach the key's final path?
///
/// A crash between the rename and the journal write leaves a published file with no record.
/// If the bucket then deletes the key, nothing would ever remove that file (without a record
/// it looks like a user's file). So the shell journals the object's metadata durably as a
/// publish intent *before* the rename, and on restart calls this for each intent left over:
/// `true` (the file has the intent's size and its mtime is the intent's Last-Modified, which
/// the agent sets) means the file is the agent's, and the shell writes its record with
/// [`record_after_download`] (hashing the file); `false` means the rename never happened and
/// the intent is dropped.
pub fn publish_completed(intent: &ObjectMeta, file: Option<FileFacts>) -> bool {
    file.is_some_and(|file| file.size == intent.size && file.mtime == intent.last_modified)
}

/// The state-store record for a file just published (downloaded or adopted) from `meta`.
/// `crc64nvme` is what was computed over the local bytes. The sequencer kept is the greater of
/// the event's and the old record's, so a late event can never lower it.
pub fn record_after_download(
    meta: &ObjectMeta,
    crc64nvme: u64,
    sequencer: Option<&str>,
    old: Option<&LocalRecord>,
) -> LocalRecord {
    let old_sequencer = old.and_then(|old| old.sequencer.as_deref());
    let sequencer = match (sequencer, old_sequencer) {
        (Some(new), Some(old)) if sequencer_cmp(new, old) == Ordering::Greater => Some(new),
        (Some(_), Some(old)) => Some(old),
        (new, old) => new.or(old),
    };
    LocalRecord {
        key: meta.key.clone(),
        size: meta.size,
        etag: meta.etag.clone(),
        last_modified: meta.last_modified,
        crc64nvme,
        sequencer: sequencer.map(str::to_ascii_uppercase),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConsistencyCheck::{Crc64, SizeLastModified, Transmission};

    fn event(
        key: &str,
        kind: EventKind,
        etag: Option<&str>,
        size: Option<u64>,
        seq: Option<&str>,
    ) -> BucketEvent {
        BucketEvent {
            bucket: "b".into(),
            key: key.into(),
            kind,
            event_name: "test".into(),
            size,
            etag: etag.map(Into::into),
            sequencer: seq.map(Into::into),
        }
    }

    fn record(key: &str, etag: &str, size: u64, seq: Option<&str>) -> LocalRecord {
        LocalRecord {
            key: key.into(),
            size,
            etag: Some(etag.into()),
            last_modified: 100,
            crc64nvme: 42,
            sequencer: seq.map(Into::into),
        }
    }

    fn head(key: &str, etag: &str, size: u64, last_modified: i64, crc: Option<u64>) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size,
            etag: Some(etag.into()),
            last_modified,
            crc64nvme: crc,
        }
    }

    #[test]
    fn events_outside_the_prefix_are_ignored() {
        let ev = event("other/k", EventKind::Created, None, None, None);
        assert!(matches!(
            on_event(&ev, "share/", None),
            EventDecision::Ignore(_)
        ));
        // A prefix without a trailing slash is a plain string prefix, as in S3 listings.
        assert_eq!(on_event(&ev, "oth", None), EventDecision::Head);
        assert_eq!(on_event(&ev, "", None), EventDecision::Head);
    }

    #[test]
    fn stale_and_duplicate_sequencers_are_ignored() {
        let local = record("k", "e1", 5, Some("0055AED6DCD90281E5"));
        let dup = event(
            "k",
            EventKind::Removed,
            None,
            None,
            Some("0055AED6DCD90281E5"),
        );
        let old = event(
            "k",
            EventKind::Removed,
            None,
            None,
            Some("0055AED6DCD90281E4"),
        );
        let new = event(
            "k",
            EventKind::Removed,
            None,
            None,
            Some("0055AED6DCD90281E6"),
        );
        let padded_equal = event(
            "k",
            EventKind::Removed,
            None,
            None,
            Some("0055aed6dcd90281e500"),
        );
        assert!(matches!(
            on_event(&dup, "", Some(&local)),
            EventDecision::Ignore(_)
        ));
        assert!(matches!(
            on_event(&old, "", Some(&local)),
            EventDecision::Ignore(_)
        ));
        assert!(matches!(
            on_event(&padded_equal, "", Some(&local)),
            EventDecision::Ignore(_)
        ));
        assert_eq!(on_event(&new, "", Some(&local)), EventDecision::Head);
        // Without a sequencer on either side the event cannot be ordered: HEAD.
        let unordered = event("k", EventKind::Removed, None, None, None);
        assert_eq!(on_event(&unordered, "", Some(&local)), EventDecision::Head);
        let no_local_seq = record("k", "e1", 5, None);
        assert_eq!(on_event(&old, "", Some(&no_local_seq)), EventDecision::Head);
    }

    #[test]
    fn created_event_for_the_version_we_have_is_ignored() {
        let local = record("k", "e1", 5, None);
        let same = event("k", EventKind::Created, Some("e1"), Some(5), None);
        assert!(matches!(
            on_event(&same, "", Some(&local)),
            EventDecision::Ignore(_)
        ));
        for different in [
            event("k", EventKind::Created, Some("e2"), Some(5), None),
            event("k", EventKind::Created, Some("e1"), Some(6), None),
            event("k", EventKind::Created, None, Some(5), None),
            event("k", EventKind::Created, Some("e1"), None, None),
            // A removal naming the ETag we have still needs a HEAD.
            event("k", EventKind::Removed, Some("e1"), Some(5), None),
            event("k", EventKind::Other, Some("e1"), Some(5), None),
        ] {
            assert_eq!(
                on_event(&different, "", Some(&local)),
                EventDecision::Head,
                "{different:?}"
            );
        }
        assert_eq!(on_event(&same, "", None), EventDecision::Head);
    }

    #[test]
    fn after_head_without_an_object() {
        let local = record("k", "e1", 5, None);
        assert_eq!(
            after_head(None, Some(&local), None, SizeLastModified),
            HeadDecision::Delete(local.clone())
        );
        assert_eq!(
            after_head(None, None, None, SizeLastModified),
            HeadDecision::Nothing
        );
        // A file nobody recorded is never deleted, whatever it looks like.
        let user_file = Some(FileFacts {
            size: 5,
            mtime: 100,
        });
        assert_eq!(
            after_head(None, None, user_file, SizeLastModified),
            HeadDecision::Nothing
        );
    }

    #[test]
    fn after_head_with_an_object_and_a_record() {
        let local = record("k", "e1", 5, None);
        let same = head("k", "e1", 5, 100, None);
        let newer = head("k", "e2", 5, 101, None);
        assert_eq!(
            after_head(Some(&same), Some(&local), None, SizeLastModified),
            HeadDecision::Nothing
        );
        assert_eq!(
            after_head(Some(&newer), Some(&local), None, SizeLastModified),
            HeadDecision::Download(newer.clone())
        );
        // crc64 mode, HEAD without a CRC: falls back to size + last-modified.
        assert_eq!(
            after_head(Some(&same), Some(&local), None, Crc64),
            HeadDecision::Nothing
        );
        assert_eq!(
            after_head(Some(&newer), Some(&local), None, Crc64),
            HeadDecision::Download(newer.clone())
        );
        // crc64 mode with a CRC: the CRC decides.
        let same_crc_newer = head("k", "e2", 5, 101, Some(42));
        let other_crc_same_time = head("k", "e1", 5, 100, Some(43));
        assert_eq!(
            after_head(Some(&same_crc_newer), Some(&local), None, Crc64),
            HeadDecision::Nothing
        );
        assert_eq!(
            after_head(Some(&other_crc_same_time), Some(&local), None, Crc64),
            HeadDecision::Download(other_crc_same_time.clone())
        );
        assert_eq!(
            after_head(Some(&same), Some(&local), None, Transmission),
            HeadDecision::Download(same.clone())
        );
    }

    #[test]
    fn after_head_adopts_a_file_published_before_a_crash() {
        let meta = head("k", "e1", 5, 100, None);
        let published = Some(FileFacts {
            size: 5,
            mtime: 100,
        });
        assert_eq!(
            after_head(Some(&meta), None, published, SizeLastModified),
            HeadDecision::Adopt(meta.clone())
        );
        assert_eq!(
            after_head(Some(&meta), None, published, Crc64),
            HeadDecision::Adopt(meta.clone())
        );
        assert_eq!(
            after_head(Some(&meta), None, published, Transmission),
            HeadDecision::Download(meta.clone())
        );
        for other in [
            FileFacts {
                size: 6,
                mtime: 100,
            },
            FileFacts { size: 5, mtime: 99 },
            FileFacts {
                size: 5,
                mtime: 101,
            },
        ] {
            assert_eq!(
                after_head(Some(&meta), None, Some(other), SizeLastModified),
                HeadDecision::Download(meta.clone())
            );
        }
        assert_eq!(
            after_head(Some(&meta), None, None, SizeLastModified),
            HeadDecision::Download(meta)
        );
    }

    #[test]
    fn publish_completed_needs_size_and_mtime_of_the_intent() {
        let intent = head("k", "e1", 5, 100, None);
        assert!(publish_completed(
            &intent,
            Some(FileFacts {
                size: 5,
                mtime: 100
            })
        ));
        assert!(!publish_completed(
            &intent,
            Some(FileFacts { size: 5, mtime: 99 })
        ));
        assert!(!publish_completed(
            &intent,
            Some(FileFacts {
                size: 4,
                mtime: 100
            })
        ));
        assert!(!publish_completed(&intent, None));
    }

    #[test]
    fn record_after_download_keeps_the_greater_sequencer() {
        let meta = head("k", "e2", 9, 200, Some(7));
        let old = record("k", "e1", 5, Some("00A0"));
        let rec = record_after_download(&meta, 7, Some("00a1"), Some(&old));
        assert_eq!(rec.sequencer.as_deref(), Some("00A1"));
        assert_eq!(
            (
                rec.key.as_str(),
                rec.size,
                rec.etag.as_deref(),
                rec.last_modified,
                rec.crc64nvme
            ),
            ("k", 9, Some("e2"), 200, 7)
        );
        assert_eq!(
            record_after_download(&meta, 7, Some("009F"), Some(&old))
                .sequencer
                .as_deref(),
            Some("00A0")
        );
        assert_eq!(
            record_after_download(&meta, 7, None, Some(&old))
                .sequencer
                .as_deref(),
            Some("00A0")
        );
        assert_eq!(
            record_after_download(&meta, 7, Some("01"), None)
                .sequencer
                .as_deref(),
            Some("01")
        );
        assert_eq!(record_after_download(&meta, 7, None, None).sequencer, None);
    }
}
