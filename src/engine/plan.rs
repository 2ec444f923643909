//! A full sync as a streaming merge of the remote listing with the local state.
//!
//! Both inputs are sorted by key in UTF-8 byte order (S3's listing order, and `str`'s `Ord`), so
//! one pass that always advances the smaller key decides every key while holding one item from
//! each side: memory does not depend on the number of objects.
//!
//! # Safety of deletes (the shell's side of the contract)
//!
//! [`SyncAction::Delete`] is only produced for a key that has a [`LocalRecord`] (the agent
//! published it) and that the remote listing has *passed* without containing it: the listing is
//! sorted, so a key smaller than the listing's current key that was not seen is not in the
//! bucket. Because the merge streams, a `Delete` can be yielded before the listing has finished.
//! That is sound only under these rules, which the I/O shell must follow:
//!
//! - **Stop on the first `Err` item.** A listing error (network, throttling, a bad page) ends the
//!   merge: the merge yields the error and then `None`, and the shell must not go on to delete
//!   "whatever is left" of the local state. Everything yielded before the error was decided on
//!   a correctly ordered prefix of the listing, so the work already done stays valid; the next
//!   full sync starts again from the beginning.
//! - **The remote iterator must be the complete listing of the share's prefix**, page after
//!   page. A truncated listing that ends without an error (a lost continuation token treated as
//!   "done") would look like a bucket without the remaining keys; the listing code must turn
//!   such a case into an error item.
//! - **Order and duplicates are checked, not trusted.** A key that is not strictly greater than
//!   the previous key on its side ends the merge with [`MergeError::OutOfOrder`] or
//!   [`MergeError::Duplicate`]. A disordered *local* side can never cause a wrong delete (a
//!   delete depends only on what the listing has passed). A disordered *listing* is caught at
//!   its first inversion; deletes yielded before that point were decided on a listing that was
//!   sorted up to there. With O(1) memory no merge can prove the rest of a listing sorted before
//!   acting, so a server that returns keys shuffled over a long range could still cause deletes
//!   of keys it lists later; a shell that wants to exclude even that can defer the `Delete`
//!   actions until the merge has ended with `None` (the cost is memory per deleted key).

use std::cmp::Ordering;
use std::fmt;

use super::{Match, SyncAction};
use crate::model::{ConsistencyCheck, LocalRecord, ObjectMeta};

/// Does the local copy described by `local` match `remote` under `mode`?
///
/// - `SizeLastModified`: same size, local not older, and no differing ETags (when both have one).
/// - `Crc64`: different sizes settle it; otherwise the CRC decides when `remote` carries one,
///   and without one the answer is [`Match::NeedChecksum`] (listings never carry CRCs).
/// - `Transmission`: always [`Match::Different`].
pub fn compare(remote: &ObjectMeta, local: &LocalRecord, mode: ConsistencyCheck) -> Match {
    match mode {
        ConsistencyCheck::SizeLastModified => size_and_last_modified(remote, local),
        ConsistencyCheck::Crc64 => {
            if remote.size != local.size {
                return Match::Different;
            }
            match remote.crc64nvme {
                Some(crc) if crc == local.crc64nvme => Match::Same,
                Some(_) => Match::Different,
                None => Match::NeedChecksum,
            }
        }
        ConsistencyCheck::Transmission => Match::Different,
    }
}

/// The `size_last_modified` rule on its own; also the fallback when no CRC can be had.
pub(crate) fn size_and_last_modified(remote: &ObjectMeta, local: &LocalRecord) -> Match {
    let etags_differ = matches!((&remote.etag, &local.etag), (Some(r), Some(l)) if r != l);
    if remote.size == local.size && local.last_modified >= remote.last_modified && !etags_differ {
        Match::Same
    } else {
        Match::Different
    }
}

/// What a full sync does about one key, given what the listing and the state store say.
/// `None` only when neither side has the key.
pub fn plan_key(
    remote: Option<&ObjectMeta>,
    local: Option<&LocalRecord>,
    mode: ConsistencyCheck,
) -> Option<SyncAction> {
    match (remote, local) {
        (None, None) => None,
        (Some(remote), None) => Some(SyncAction::Download(remote.clone(), None)),
        (None, Some(local)) => Some(SyncAction::Delete(local.clone())),
        (Some(remote), Some(local)) => Some(match compare(remote, local, mode) {
            Match::Same => SyncAction::Keep(local.clone()),
            Match::Different => SyncAction::Download(remote.clone(), Some(local.clone())),
            Match::NeedChecksum => SyncAction::Verify(remote.clone(), local.clone()),
        }),
    }
}

/// Which input of the merge an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The bucket listing.
    Remote,
    /// The state store.
    Local,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Remote => "remote listing",
            Side::Local => "local state",
        })
    }
}

/// Why a full-sync merge stopped. Every variant ends the merge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MergeError<ER, EL> {
    /// The listing failed.
    Remote(ER),
    /// Reading the state store failed.
    Local(EL),
    /// `key` came after `previous` on `side` but sorts before it.
    OutOfOrder {
        side: Side,
        previous: String,
        key: String,
    },
    /// `key` appeared twice in a row on `side`.
    Duplicate { side: Side, key: String },
}

impl<ER: fmt::Display, EL: fmt::Display> fmt::Display for MergeError<ER, EL> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MergeError::Remote(e) => write!(f, "listing the bucket failed: {e}"),
            MergeError::Local(e) => write!(f, "reading the local state failed: {e}"),
            MergeError::OutOfOrder {
                side,
                previous,
                key,
            } => {
                write!(f, "{side} is not sorted: {key:?} came after {previous:?}")
            }
            MergeError::Duplicate { side, key } => write!(f, "{side} lists {key:?} twice"),
        }
    }
}

impl<ER, EL> std::error::Error for MergeError<ER, EL>
where
    ER: fmt::Display + fmt::Debug,
    EL: fmt::Display + fmt::Debug,
{
}

/// Checks that one side's keys strictly increase, holding only the last key seen.
#[derive(Debug)]
struct OrderGuard {
    side: Side,
    last: Option<String>,
}

impl OrderGuard {
    fn new(side: Side) -> Self {
        OrderGuard { side, last: None }
    }

    fn admit<ER, EL>(&mut self, key: &str) -> Result<(), MergeError<ER, EL>> {
        if let Some(last) = &mut self.last {
            match key.cmp(last.as_str()) {
                Ordering::Greater => {}
                Ordering::Equal => {
                    return Err(MergeError::Duplicate {
                        side: self.side,
                        key: key.to_string(),
                    });
                }
                Ordering::Less => {
                    return Err(MergeError::OutOfOrder {
                        side: self.side,
                        previous: last.clone(),
                        key: key.to_string(),
                    });
                }
            }
            // Reuse the buffer: one allocation per side for the whole merge in the common case.
            last.clear();
            last.push_str(key);
        } else {
            self.last = Some(key.to_string());
        }
        Ok(())
    }
}

/// The full-sync planner: an iterator of one [`SyncAction`] per key, in key order, over the
/// sorted remote listing `R` and the sorted local state `L`. See the module docs for the rules
/// the shell must follow; above all, stop at the first `Err`.
///
/// After an `Err` item the iterator is finished (it yields `None` from then on).
pub struct FullSyncMerge<R, L> {
    remote: R,
    local: L,
    mode: ConsistencyCheck,
    next_remote: Option<ObjectMeta>,
    next_local: Option<LocalRecord>,
    remote_exhausted: bool,
    local_exhausted: bool,
    remote_order: OrderGuard,
    local_order: OrderGuard,
    finished: bool,
}

impl<R, L> FullSyncMerge<R, L> {
    pub fn new(remote: R, local: L, mode: ConsistencyCheck) -> Self {
        FullSyncMerge {
            remote,
            local,
            mode,
            next_remote: None,
            next_local: None,
            remote_exhausted: false,
            local_exhausted: false,
            remote_order: OrderGuard::new(Side::Remote),
            local_order: OrderGuard::new(Side::Local),
            finished: false,
        }
    }

    /// True once the merge has ended, by running out of both inputs or by an error.
    pub fn is_finished(&self) -> bool {
        self.finished
    }
}

impl<R, L, ER, EL> FullSyncMerge<R, L>
where
    R: Iterator<Item = Result<ObjectMeta, ER>>,
    L: Iterator<Item = Result<LocalRecord, EL>>,
{
    /// Make sure each side has its next item peeked (unless exhausted).
    fn fill(&mut self) -> Result<(), MergeError<ER, EL>> {
        if self.next_remote.is_none() && !self.remote_exhausted {
            match self.remote.next() {
                None => self.remote_exhausted = true,
                Some(Err(e)) => return Err(MergeError::Remote(e)),
                Some(Ok(meta)) => {
                    self.remote_order.admit(&meta.key)?;
                    self.next_remote = Some(meta);
                }
            }
        }
        if self.next_local.is_none() && !self.local_exhausted {
            match self.local.next() {
                None => self.local_exhausted = true,
                Some(Err(e)) => return Err(MergeError::Local(e)),
                Some(Ok(record)) => {
                    self.local_order.admit(&record.key)?;
                    self.next_local = Some(record);
                }
            }
        }
        Ok(())
    }
}

impl<R, L, ER, EL> Iterator for FullSyncMerge<R, L>
where
    R: Iterator<Item = Result<ObjectMeta, ER>>,
    L: Iterator<Item = Result<LocalRecord, EL>>,
{
    type Item = Result<SyncAction, MergeError<ER, EL>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        if let Err(e) = self.fill() {
            self.finished = true;
            return Some(Err(e));
        }
        let order = match (&self.next_remote, &self.next_local) {
            (None, None) => {
                self.finished = true;
                return None;
            }
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(remote), Some(local)) => remote.key.cmp(&local.key),
        };
        // Take only the side(s) holding the smallest key; the other stays peeked.
        let (remote, local) = match order {
            Ordering::Less => (self.next_remote.take(), None),
            // The listing has passed this local key (or ended): only now may it be deleted.
            Ordering::Greater => (None, self.next_local.take()),
            Ordering::Equal => (self.next_remote.take(), self.next_local.take()),
        };
        // Both-None is ruled out above, so plan_key always has an answer here.
        plan_key(remote.as_ref(), local.as_ref(), self.mode).map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(key: &str, size: u64, etag: Option<&str>, last_modified: i64) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size,
            etag: etag.map(Into::into),
            last_modified,
            crc64nvme: None,
        }
    }

    fn record(
        key: &str,
        size: u64,
        etag: Option<&str>,
        last_modified: i64,
        crc: u64,
    ) -> LocalRecord {
        LocalRecord {
            key: key.into(),
            size,
            etag: etag.map(Into::into),
            last_modified,
            crc64nvme: crc,
            sequencer: None,
        }
    }

    use ConsistencyCheck::{Crc64, SizeLastModified, Transmission};

    #[test]
    fn size_last_modified_rule() {
        let local = record("k", 10, Some("e1"), 100, 7);
        assert_eq!(
            compare(&meta("k", 10, Some("e1"), 100), &local, SizeLastModified),
            Match::Same
        );
        // Local newer than remote is fine (mtime is set from the object's Last-Modified).
        assert_eq!(
            compare(&meta("k", 10, Some("e1"), 99), &local, SizeLastModified),
            Match::Same
        );
        assert_eq!(
            compare(&meta("k", 10, Some("e1"), 101), &local, SizeLastModified),
            Match::Different
        );
        assert_eq!(
            compare(&meta("k", 11, Some("e1"), 100), &local, SizeLastModified),
            Match::Different
        );
        // Same size and second but another ETag: overwritten within the same second.
        assert_eq!(
            compare(&meta("k", 10, Some("e2"), 100), &local, SizeLastModified),
            Match::Different
        );
        // A listing without ETags (s3s-fs) relies on size and time alone.
        assert_eq!(
            compare(&meta("k", 10, None, 100), &local, SizeLastModified),
            Match::Same
        );
        let no_etag_local = record("k", 10, None, 100, 7);
        assert_eq!(
            compare(
                &meta("k", 10, Some("e9"), 100),
                &no_etag_local,
                SizeLastModified
            ),
            Match::Same
        );
    }

    #[test]
    fn crc64_rule() {
        let local = record("k", 10, Some("e1"), 100, 7);
        let mut remote = meta("k", 10, Some("e1"), 100);
        assert_eq!(compare(&remote, &local, Crc64), Match::NeedChecksum);
        remote.crc64nvme = Some(7);
        // The CRC settles it even when time and ETag say otherwise (same bytes re-uploaded).
        remote.last_modified = 500;
        remote.etag = Some("other".into());
        assert_eq!(compare(&remote, &local, Crc64), Match::Same);
        remote.crc64nvme = Some(8);
        assert_eq!(compare(&remote, &local, Crc64), Match::Different);
        // A size change needs no checksum to be noticed.
        assert_eq!(
            compare(&meta("k", 11, Some("e1"), 100), &local, Crc64),
            Match::Different
        );
    }

    #[test]
    fn transmission_always_transfers() {
        let local = record("k", 10, Some("e1"), 100, 7);
        let mut remote = meta("k", 10, Some("e1"), 100);
        remote.crc64nvme = Some(7);
        assert_eq!(compare(&remote, &local, Transmission), Match::Different);
    }

    #[test]
    fn plan_key_covers_every_combination() {
        let remote = meta("k", 10, Some("e1"), 100);
        let local = record("k", 10, Some("e1"), 100, 7);
        assert_eq!(plan_key(None, None, SizeLastModified), None);
        assert_eq!(
            plan_key(Some(&remote), None, SizeLastModified),
            Some(SyncAction::Download(remote.clone(), None))
        );
        assert_eq!(
            plan_key(None, Some(&local), SizeLastModified),
            Some(SyncAction::Delete(local.clone()))
        );
        assert_eq!(
            plan_key(Some(&remote), Some(&local), SizeLastModified),
            Some(SyncAction::Keep(local.clone()))
        );
        assert_eq!(
            plan_key(Some(&remote), Some(&local), Crc64),
            Some(SyncAction::Verify(remote.clone(), local.clone()))
        );
        assert_eq!(
            plan_key(Some(&remote), Some(&local), Transmission),
            Some(SyncAction::Download(remote.clone(), Some(local.clone())))
        );
        // Issue 9, defects 1 and 2: a changed object keeps its base, so the shell knows the
        // file at the path is its own (same size and second, another ETag, included).
        let overwritten = meta("k", 10, Some("e2"), 100);
        assert_eq!(
            plan_key(Some(&overwritten), Some(&local), SizeLastModified),
            Some(SyncAction::Download(overwritten, Some(local.clone())))
        );
    }

    type TestMerge = FullSyncMerge<
        std::vec::IntoIter<Result<ObjectMeta, String>>,
        std::vec::IntoIter<Result<LocalRecord, String>>,
    >;

    fn merge(
        remote: Vec<Result<ObjectMeta, String>>,
        local: Vec<Result<LocalRecord, String>>,
    ) -> TestMerge {
        FullSyncMerge::new(remote.into_iter(), local.into_iter(), SizeLastModified)
    }

    fn summary(merge: TestMerge) -> Vec<String> {
        merge
            .map(|item| match item {
                Ok(SyncAction::Keep(r)) => format!("keep {}", r.key),
                Ok(SyncAction::Download(m, _)) => format!("download {}", m.key),
                Ok(SyncAction::Verify(m, _)) => format!("verify {}", m.key),
                Ok(SyncAction::Delete(r)) => format!("delete {}", r.key),
                Err(e) => format!("error: {e}"),
            })
            .collect()
    }

    #[test]
    fn merge_interleaves_both_sides_in_key_order() {
        let remote = vec![
            Ok(meta("a", 1, None, 1)),
            Ok(meta("c", 1, None, 1)),
            Ok(meta("d", 2, None, 1)),
            Ok(meta("f", 1, None, 1)),
        ];
        let local = vec![
            Ok(record("b", 1, None, 1, 0)),
            Ok(record("c", 1, None, 1, 0)),
            Ok(record("d", 1, None, 1, 0)),
            Ok(record("e", 1, None, 1, 0)),
            Ok(record("g", 1, None, 1, 0)),
        ];
        assert_eq!(
            summary(merge(remote, local)),
            [
                "download a",
                "delete b",
                "keep c",
                "download d",
                "delete e",
                "download f",
                "delete g"
            ]
        );
    }

    #[test]
    fn merge_uses_byte_order() {
        // 'Z' (0x5A) < 'a' (0x61) < 'é' (0xC3 0xA9): byte order, not locale order.
        let remote = vec![
            Ok(meta("Z", 1, None, 1)),
            Ok(meta("a", 1, None, 1)),
            Ok(meta("é", 1, None, 1)),
        ];
        assert_eq!(
            summary(merge(remote, vec![])),
            ["download Z", "download a", "download é"]
        );
    }

    #[test]
    fn empty_inputs() {
        assert!(summary(merge(vec![], vec![])).is_empty());
        assert_eq!(
            summary(merge(vec![], vec![Ok(record("x", 1, None, 1, 0))])),
            ["delete x"]
        );
    }

    #[test]
    fn remote_error_ends_the_merge_before_any_further_delete() {
        let remote = vec![
            Ok(meta("a", 1, None, 1)),
            Err("connection reset".to_string()),
            Ok(meta("z", 1, None, 1)),
        ];
        let local = vec![
            Ok(record("m", 1, None, 1, 0)),
            Ok(record("n", 1, None, 1, 0)),
        ];
        let mut merge = merge(remote, local);
        assert_eq!(
            summary_take(&mut merge, 10),
            [
                "download a",
                "error: listing the bucket failed: connection reset"
            ]
        );
        assert!(merge.is_finished());
        assert!(merge.next().is_none());
    }

    fn summary_take(merge: &mut TestMerge, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for item in merge.by_ref().take(n) {
            out.push(match item {
                Ok(SyncAction::Download(m, _)) => format!("download {}", m.key),
                Ok(SyncAction::Delete(r)) => format!("delete {}", r.key),
                Ok(other) => format!("{other:?}"),
                Err(e) => format!("error: {e}"),
            });
        }
        out
    }

    #[test]
    fn local_error_ends_the_merge() {
        let local = vec![
            Err("journal read failed".to_string()),
            Ok(record("n", 1, None, 1, 0)),
        ];
        assert_eq!(
            summary(merge(vec![Ok(meta("a", 1, None, 1))], local)),
            ["error: reading the local state failed: journal read failed"]
        );
    }

    #[test]
    fn out_of_order_listing_stops_the_merge_at_the_first_inversion() {
        let remote = vec![
            Ok(meta("a", 1, None, 1)),
            Ok(meta("c", 1, None, 1)),
            Ok(meta("b", 1, None, 1)),
            Ok(meta("d", 1, None, 1)),
        ];
        let local = vec![
            Ok(record("c", 1, None, 1, 0)),
            Ok(record("x", 1, None, 1, 0)),
        ];
        // Nothing after the inversion is acted on: "x" (absent from the listing) is not deleted
        // and "d" is not downloaded.
        assert_eq!(
            summary(merge(remote, local)),
            [
                "download a",
                "keep c",
                "error: remote listing is not sorted: \"b\" came after \"c\""
            ]
        );
    }

    #[test]
    fn a_delete_is_decided_only_once_the_listing_has_passed_the_key() {
        // The documented limit of streaming: a listing that says "c" before "b" has passed "b"
        // when "b" is decided. The inversion is still reported, so the shell stops right there.
        let remote = vec![Ok(meta("c", 1, None, 1)), Ok(meta("b", 1, None, 1))];
        let local = vec![
            Ok(record("b", 1, None, 1, 0)),
            Ok(record("c", 1, None, 1, 0)),
        ];
        assert_eq!(
            summary(merge(remote, local)),
            [
                "delete b",
                "keep c",
                "error: remote listing is not sorted: \"b\" came after \"c\""
            ]
        );
    }

    #[test]
    fn duplicates_are_errors_on_either_side() {
        let remote = vec![Ok(meta("a", 1, None, 1)), Ok(meta("a", 1, None, 1))];
        assert_eq!(
            summary(merge(remote, vec![])),
            ["download a", "error: remote listing lists \"a\" twice"]
        );
        let local = vec![
            Ok(record("a", 1, None, 1, 0)),
            Ok(record("a", 1, None, 1, 0)),
        ];
        assert_eq!(
            summary(merge(vec![], local)),
            ["delete a", "error: local state lists \"a\" twice"]
        );
    }

    #[test]
    fn out_of_order_local_state_is_an_error() {
        let remote = vec![Ok(meta("a", 1, None, 1)), Ok(meta("b", 1, None, 1))];
        let local = vec![
            Ok(record("b", 1, None, 1, 0)),
            Ok(record("a", 1, None, 1, 0)),
        ];
        let out = summary(merge(remote, local));
        assert!(
            !out.iter().any(|line| line.starts_with("delete")),
            "{out:?}"
        );
        assert_eq!(
            out.last().map(String::as_str),
            Some("error: local state is not sorted: \"a\" came after \"b\"")
        );
    }
}
