//! Wire protocols, one module per protocol, behind two small traits (plus the administrative
//! calls `sgw-control` provisions with: [`sns`], [`sqs_admin`], [`notification`]).
//!
//! [`ObjectStore`] is the bucket (S3 today, OSS later) and [`EventQueue`] is the per-share queue
//! (SQS today, MNS later). Errors separate "the service said no" from "the transport failed" so
//! the retry policy ([`retry`]) and the status report can tell them apart. [`memory`] holds
//! in-memory doubles of both traits, with a failure-injecting wrapper, for tests of the shell.

pub mod events;
pub mod http;
pub mod memory;
pub mod notification;
pub mod retry;
pub mod s3;
pub mod sigv4;
pub mod sns;
pub mod sqs;
pub mod sqs_admin;

use std::fmt;
use std::io::Read;

use crate::model::ObjectMeta;

/// Why a cloud call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudError {
    /// The service answered with an error status. `code` is the service's error code
    /// (`NoSuchKey`, `AWS.SimpleQueueService.NonExistentQueue`, …) or empty if it sent none.
    Service {
        status: u16,
        code: String,
        message: String,
    },
    /// No usable answer: connect/read/TLS failure, timeout, truncated or unparseable body.
    Transport(String),
}

impl CloudError {
    /// Worth trying again: transport failures, 5xx, throttling (429, 503, `SlowDown`,
    /// `Throttling*`, `RequestTimeout`). Every other 4xx is permanent.
    pub fn is_retryable(&self) -> bool {
        match self {
            CloudError::Transport(_) => true,
            CloudError::Service { status, code, .. } => {
                *status >= 500
                    || *status == 429
                    || *status == 408
                    || code == "SlowDown"
                    || code == "RequestTimeout"
                    || code == "RequestTimeTooSkewed"
                    || code.starts_with("Throttl")
                    || code.contains("RequestThrottled")
            }
        }
    }

    /// HTTP 404 or a `NoSuch*` code.
    pub fn is_not_found(&self) -> bool {
        matches!(self, CloudError::Service { status: 404, .. })
            || matches!(self, CloudError::Service { code, .. } if code.starts_with("NoSuch"))
    }
}

impl fmt::Display for CloudError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloudError::Service {
                status,
                code,
                message,
            } if code.is_empty() => {
                write!(f, "service error: HTTP {status}: {message}")
            }
            CloudError::Service {
                status,
                code,
                message,
            } => {
                write!(f, "service error: HTTP {status} {code}: {message}")
            }
            CloudError::Transport(m) => write!(f, "transport error: {m}"),
        }
    }
}

impl std::error::Error for CloudError {}

/// One page of a ListObjectsV2 listing, keys in the service's (UTF-8 byte) order.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub objects: Vec<ObjectMeta>,
    /// `NextContinuationToken` when the listing is truncated.
    pub next: Option<String>,
}

/// A GET in progress: the object's metadata from the response headers, and its body.
pub struct ObjectBody {
    pub meta: ObjectMeta,
    /// First byte of `body` within the object (0 unless a ranged GET was answered with 206).
    pub offset: u64,
    pub body: Box<dyn Read + Send>,
}

/// A bucket, as the sync path needs it.
pub trait ObjectStore: Send + Sync {
    /// One page of keys under `prefix`, starting after the page that returned `continuation`.
    fn list_page(&self, prefix: &str, continuation: Option<&str>) -> Result<ListPage, CloudError>;
    /// Current state of `key`, with its CRC-64 when the server has one; `Ok(None)` on 404.
    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, CloudError>;
    /// Stream the object from byte `offset`. With `if_match`, the server must refuse (412)
    /// if the object's ETag changed: a resumed download never mixes two versions.
    fn get(&self, key: &str, offset: u64, if_match: Option<&str>)
    -> Result<ObjectBody, CloudError>;

    /// Upload exactly `size` bytes from `body` as `key`, declaring their CRC-64/NVME
    /// (`x-amz-checksum-crc64nvme`: a verifying server refuses other bytes). One attempt, no
    /// retry (the body cannot be rewound; the caller reads the file again). A failed
    /// [`PutCondition`] is HTTP 412. Stores that cannot write (the default) say so.
    fn put_object(
        &self,
        key: &str,
        body: &mut dyn Read,
        size: u64,
        crc64nvme: u64,
        condition: &PutCondition,
    ) -> Result<PutResult, CloudError> {
        let _ = (body, size, crc64nvme, condition);
        Err(read_only(key))
    }

    /// Delete `key` (deleting a missing key succeeds, as on S3). With `if_match`, only if the
    /// object still has that ETag (HTTP 412 otherwise; a missing key is 404): a version the
    /// agent has not seen is never deleted.
    fn delete_object(&self, key: &str, if_match: Option<&str>) -> Result<(), CloudError> {
        let _ = if_match;
        Err(read_only(key))
    }

    /// Start a multipart upload whose parts carry CRC-64/NVME checksums and whose object gets
    /// a FULL_OBJECT CRC-64/NVME. Returns the upload id.
    fn create_multipart(&self, key: &str) -> Result<String, CloudError> {
        Err(read_only(key))
    }

    /// Upload part `number` (1-based) of exactly `size` bytes with its CRC-64/NVME. One
    /// attempt (the caller re-reads the file to retry). Returns the part's ETag.
    fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: &mut dyn Read,
        size: u64,
        crc64nvme: u64,
    ) -> Result<String, CloudError> {
        let _ = (upload_id, number, body, size, crc64nvme);
        Err(read_only(key))
    }

    /// Complete the upload from `parts` (number, ETag, CRC), declaring the whole object's
    /// CRC-64/NVME; `condition` as for [`ObjectStore::put_object`].
    fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
        crc64nvme: u64,
        condition: &PutCondition,
    ) -> Result<PutResult, CloudError> {
        let _ = (upload_id, parts, crc64nvme, condition);
        Err(read_only(key))
    }

    /// Abandon a multipart upload (its parts are discarded). A missing upload is not an error.
    fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), CloudError> {
        let _ = upload_id;
        Err(read_only(key))
    }

    /// Server-side copy of `from` (which must still have ETag `if_match`) to `to`, which must
    /// not exist yet. A rename of a big file does not send its bytes again.
    fn copy_object(&self, from: &str, to: &str, if_match: &str) -> Result<PutResult, CloudError> {
        let _ = (to, if_match);
        Err(read_only(from))
    }
}

/// The condition an upload puts on the key's current object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutCondition {
    /// `If-Match`: the object must still have this ETag (an update of the base).
    IfMatch(String),
    /// `If-None-Match: *`: the key must not exist (a new file).
    IfAbsent,
}

/// One part of a multipart upload, as CompleteMultipartUpload lists it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UploadedPart {
    pub number: u32,
    pub etag: String,
    pub crc64nvme: u64,
}

/// What the store said about an object it just wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutResult {
    pub etag: Option<String>,
}

fn read_only(key: &str) -> CloudError {
    CloudError::Service {
        status: 0,
        code: "NotImplemented".into(),
        message: format!("{key}: this store is read-only here"),
    }
}

/// One received queue message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueMessage {
    pub id: String,
    pub receipt_handle: String,
    pub body: String,
    /// `ApproximateReceiveCount` (1 on first delivery).
    pub receive_count: u32,
}

/// A share's event queue.
pub trait EventQueue: Send + Sync {
    /// Long-poll for up to `max` (≤ 10) messages, waiting up to `wait_secs` (≤ 20).
    fn receive(&self, max: u32, wait_secs: u32) -> Result<Vec<QueueMessage>, CloudError>;
    /// Delete messages by receipt handle (≤ 10). Returns the handles that failed, with why.
    fn delete_batch(
        &self,
        receipt_handles: &[String],
    ) -> Result<Vec<(String, CloudError)>, CloudError>;
    /// Keep a message invisible for `secs` more seconds (long downloads).
    fn extend_visibility(&self, receipt_handle: &str, secs: u32) -> Result<(), CloudError>;
}
