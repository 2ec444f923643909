//! Plain data shared by the engine, the cache and the cloud clients.
//!
//! Nothing here does I/O. Times are Unix seconds (UTC): S3 listings carry milliseconds and
//! HEAD carries seconds, so seconds is the precision both sides can agree on, and it is what
//! the agent writes as the local file's mtime.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

/// What the bucket says about one object (from a listing entry, a HEAD or a GET).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Full object key, decoded (UTF-8), including the share's prefix.
    pub key: String,
    pub size: u64,
    /// ETag without quotes, lower-case hex where the server sends hex. `None` when the
    /// server did not send one (s3s-fs listings).
    pub etag: Option<String>,
    /// Last-Modified, Unix seconds.
    pub last_modified: i64,
    /// CRC-64/NVME of the whole object when the server has one (`x-amz-checksum-crc64nvme`,
    /// FULL_OBJECT). Listings never carry it; HEAD/GET with checksum mode do.
    pub crc64nvme: Option<u64>,
}

/// What the agent knows about a file it published into the share. One record per key in the
/// state store; the record exists only once the file is durable at its final path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalRecord {
    /// Full object key (same as [`ObjectMeta::key`]).
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    /// The object's Last-Modified (Unix seconds); also the local file's mtime.
    pub last_modified: i64,
    /// CRC-64/NVME of the bytes written locally (always computed while streaming).
    pub crc64nvme: u64,
    /// Highest S3 event `sequencer` applied for this key, if events carried one.
    pub sequencer: Option<String>,
}

/// How the agent decides that a local file already matches its object. Names and meanings
/// follow the OMS `consistency_check` parameter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsistencyCheck {
    /// Same size and the local copy is not older than the object (plus: a differing ETag,
    /// when both sides have one, counts as a change).
    #[default]
    SizeLastModified,
    /// Compare CRC-64 when both sides have one (costs a HEAD per object on a full sync);
    /// otherwise fall back to size and last-modified.
    Crc64,
    /// No comparison: every full sync transfers every object again. Downloads are still
    /// verified before they are published.
    Transmission,
}

/// What an S3 event notification says happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// ObjectCreated:* (Put, Post, Copy, CompleteMultipartUpload, …).
    Created,
    /// ObjectRemoved:* (Delete, DeleteMarkerCreated).
    Removed,
    /// Anything else (ObjectRestore:*, ObjectTagging:*, …): the key may have changed; check it.
    Other,
}

/// One bucket change taken from a queue message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketEvent {
    pub bucket: String,
    /// Decoded key (form-URL-decoding already applied).
    pub key: String,
    pub kind: EventKind,
    /// Raw `eventName`, e.g. `ObjectCreated:Put`, for logs.
    pub event_name: String,
    pub size: Option<u64>,
    /// ETag without quotes, if the event carried one.
    pub etag: Option<String>,
    /// Upper-case hex `sequencer`, if the event carried one (AWS does, moto does not).
    pub sequencer: Option<String>,
}

/// Order two `sequencer` values of the same key: right-pad the shorter with `'0'`, then compare
/// (ASCII case-insensitively). `Greater` means `a` is the later event.
pub fn sequencer_cmp(a: &str, b: &str) -> Ordering {
    let len = a.len().max(b.len());
    padded_upper(a, len).cmp(padded_upper(b, len))
}

fn padded_upper(s: &str, len: usize) -> impl Iterator<Item = u8> + '_ {
    s.bytes()
        .map(|byte| byte.to_ascii_uppercase())
        .chain(std::iter::repeat(b'0'))
        .take(len)
}

/// Facts about a file found at a key's local path (what the cache disk reports, what the
/// engine compares with the base).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileFacts {
    pub size: u64,
    /// mtime, Unix seconds.
    pub mtime: i64,
}

/// The state of a file at a key's path, with the precision two-way shares need: nanosecond
/// mtime and the inode tell an edit (or a replace by rename) from the file the agent saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalStat {
    pub size: u64,
    /// mtime, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    pub ino: u64,
}

impl LocalStat {
    /// The mtime in whole seconds (what a downloaded file's mtime is set to).
    pub fn mtime_secs(&self) -> i64 {
        self.mtime_ns.div_euclid(1_000_000_000)
    }
}

/// Two-way shares: what the local file looked like when the agent last agreed with the bucket
/// on `base_etag` (after an upload, or a check of its bytes). Valid only while the base record
/// still has that ETag: a download that replaces the file makes it stale by itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenFile {
    pub key: String,
    pub stat: LocalStat,
    pub crc64nvme: u64,
    pub base_etag: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequencer_ordering_pads_and_ignores_case() {
        assert_eq!(
            sequencer_cmp("0055AED6DCD90281E5", "0055AED6DCD90281E6"),
            Ordering::Less
        );
        assert_eq!(
            sequencer_cmp("0055AED6DCD90281E5", "0055aed6dcd90281e5"),
            Ordering::Equal
        );
        // Right-padding: "AB" is "AB00" next to "AB01".
        assert_eq!(sequencer_cmp("AB", "AB01"), Ordering::Less);
        assert_eq!(sequencer_cmp("AB", "AB00"), Ordering::Equal);
        assert_eq!(sequencer_cmp("AC", "AB99"), Ordering::Greater);
        assert_eq!(sequencer_cmp("", ""), Ordering::Equal);
        assert_eq!(sequencer_cmp("1", ""), Ordering::Greater);
    }
}
