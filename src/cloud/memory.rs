//! In-memory doubles of the two cloud traits, for tests of the real share shell (issue 14:
//! the property tests drive [`crate::shell::Share`] itself, not a copy of it).
//!
//! - [`MemoryBucket`]: an [`ObjectStore`] with S3's semantics as the shell relies on them:
//!   byte-ordered paged listings without CRCs, HEAD and whole GETs with the CRC-64/NVME,
//!   ranged GETs (206, no CRC), `If-Match` (412), 404s. Each mutation returns the S3 event
//!   JSON that a notification would carry, with an AWS-style `sequencer` when asked.
//! - [`MemoryQueue`]: an [`EventQueue`] whose undeleted messages come back at the next receive
//!   with their receive count raised (visibility timeout zero), in any order the test pushes.
//! - [`Faulty`]: mountpoint-s3's failure-injecting client, for our trait: a schedule says which
//!   calls fail with a transport error, which bodies break off, which bodies come corrupted.
//!
//! Small and dependency-free so that it can be compiled into the library (integration tests
//! are separate crates); the release binary drops it as dead code.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use super::{
    CloudError, EventQueue, ListPage, ObjectBody, ObjectStore, PutCondition, PutResult,
    QueueMessage,
};
use crate::cache::crc64::nvme;
use crate::model::ObjectMeta;

#[derive(Clone, Debug)]
struct Object {
    bytes: Vec<u8>,
    etag: String,
    last_modified: i64,
    crc64nvme: u64,
}

/// A multipart upload in memory: its key and its parts by number.
type Upload = (String, BTreeMap<u32, Vec<u8>>);

/// A bucket in memory. Clock and sequencers move on with every mutation.
#[derive(Debug)]
pub struct MemoryBucket {
    name: String,
    objects: Mutex<BTreeMap<String, Object>>,
    clock: AtomicU64,
    sequence: AtomicU64,
    /// Keys per listing page (S3: 1000; small here so that paging is exercised).
    page: usize,
    /// Send `sequencer` in events, as AWS does (moto does not).
    pub sequencers: bool,
    /// ETags in listings (s3s-fs sends none).
    pub listing_etags: bool,
    /// CRC-64s in HEAD and whole GETs (objects uploaded without a checksum have none).
    pub crcs: bool,
    /// The events of writes made through the trait (the agent's uploads), for the test to
    /// deliver: [`MemoryBucket::take_written_events`].
    written: Mutex<Vec<String>>,
    /// Multipart uploads in progress: id -> (key, parts by number).
    uploads: Mutex<BTreeMap<String, Upload>>,
    /// Multipart requests (create, part, complete, abort) seen, for tests.
    pub multipart_calls: AtomicU64,
}

impl MemoryBucket {
    pub fn new(name: &str, page: usize) -> MemoryBucket {
        MemoryBucket {
            name: name.to_string(),
            objects: Mutex::new(BTreeMap::new()),
            clock: AtomicU64::new(1_700_000_000),
            sequence: AtomicU64::new(0),
            page: page.max(1),
            sequencers: true,
            listing_etags: true,
            crcs: true,
            written: Mutex::new(Vec::new()),
            uploads: Mutex::new(BTreeMap::new()),
            multipart_calls: AtomicU64::new(0),
        }
    }

    /// The events the agent's own writes caused, oldest first (then forgotten).
    pub fn take_written_events(&self) -> Vec<String> {
        std::mem::take(&mut *self.written.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn objects(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Object>> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tick(&self) -> (i64, u64) {
        let t = self.clock.fetch_add(1, Ordering::SeqCst) + 1;
        (t as i64, self.sequence.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// Store `bytes` at `key`; returns the `ObjectCreated:Put` event's JSON.
    pub fn put(&self, key: &str, bytes: &[u8]) -> String {
        let (now, seq) = self.tick();
        let object = Object {
            bytes: bytes.to_vec(),
            // Multipart-style (`-1`): not an MD5, so without a CRC only size and time are checked.
            etag: format!("{:016x}{seq:016x}-1", nvme(bytes)),
            last_modified: now,
            crc64nvme: nvme(bytes),
        };
        let event = self.event("ObjectCreated:Put", key, Some(&object), seq);
        self.objects().insert(key.to_string(), object);
        event
    }

    /// Remove `key`; returns the `ObjectRemoved:Delete` event's JSON (S3 sends one even for a
    /// key that did not exist).
    pub fn delete(&self, key: &str) -> String {
        let (_, seq) = self.tick();
        self.objects().remove(key);
        self.event("ObjectRemoved:Delete", key, None, seq)
    }

    /// Every key and its bytes.
    pub fn contents(&self) -> BTreeMap<String, Vec<u8>> {
        self.objects()
            .iter()
            .map(|(k, o)| (k.clone(), o.bytes.clone()))
            .collect()
    }

    fn meta(&self, key: &str, o: &Object, listing: bool, crc: bool) -> ObjectMeta {
        ObjectMeta {
            key: key.to_string(),
            size: o.bytes.len() as u64,
            etag: (!listing || self.listing_etags).then(|| o.etag.clone()),
            last_modified: o.last_modified,
            crc64nvme: (crc && self.crcs).then_some(o.crc64nvme),
        }
    }

    fn event(&self, name: &str, key: &str, object: Option<&Object>, seq: u64) -> String {
        let mut obj =
            serde_json::json!({ "key": utf8_percent_encode(key, NON_ALPHANUMERIC).to_string() });
        if let Some(o) = object {
            obj["size"] = o.bytes.len().into();
            obj["eTag"] = o.etag.clone().into();
        }
        if self.sequencers {
            obj["sequencer"] = format!("{seq:016X}").into();
        }
        serde_json::json!({ "Records": [{
            "eventVersion": "2.1",
            "eventSource": "aws:s3",
            "eventName": name,
            "s3": { "bucket": { "name": self.name }, "object": obj }
        }]})
        .to_string()
    }
}

impl ObjectStore for MemoryBucket {
    fn list_page(&self, prefix: &str, continuation: Option<&str>) -> Result<ListPage, CloudError> {
        let objects = self.objects();
        let start = continuation.unwrap_or(prefix).to_string();
        let mut page: Vec<ObjectMeta> = objects
            .range(start.clone()..)
            .filter(|(k, _)| continuation.is_none() || **k != start)
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(self.page + 1)
            .map(|(k, o)| self.meta(k, o, true, false))
            .collect();
        let next = if page.len() > self.page {
            page.pop();
            page.last().map(|m| m.key.clone())
        } else {
            None
        };
        Ok(ListPage {
            objects: page,
            next,
        })
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, CloudError> {
        Ok(self
            .objects()
            .get(key)
            .map(|o| self.meta(key, o, false, true)))
    }

    fn put_object(
        &self,
        key: &str,
        body: &mut dyn Read,
        size: u64,
        crc64nvme: u64,
        condition: &PutCondition,
    ) -> Result<PutResult, CloudError> {
        let mut bytes = Vec::new();
        body.take(size + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| CloudError::Transport(format!("upload body: {e}")))?;
        if bytes.len() as u64 != size {
            return Err(CloudError::Transport(
                "upload body of the wrong length".into(),
            ));
        }
        // A verifying server: the declared CRC must be the bytes'.
        if nvme(&bytes) != crc64nvme {
            return Err(service(400, "BadDigest"));
        }
        let ok = match (condition, self.objects().get(key)) {
            (PutCondition::IfAbsent, None) => true,
            (PutCondition::IfMatch(e), Some(o)) => *e == o.etag,
            _ => false,
        };
        if !ok {
            return Err(service(412, "PreconditionFailed"));
        }
        let event = self.put(key, &bytes);
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
        Ok(PutResult {
            etag: self.objects().get(key).map(|o| o.etag.clone()),
        })
    }

    fn create_multipart(&self, key: &str) -> Result<String, CloudError> {
        let n = self.multipart_calls.fetch_add(1, Ordering::SeqCst);
        let id = format!("upload-{n}");
        self.uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), (key.to_owned(), BTreeMap::new()));
        Ok(id)
    }

    fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: &mut dyn Read,
        size: u64,
        crc64nvme: u64,
    ) -> Result<String, CloudError> {
        self.multipart_calls.fetch_add(1, Ordering::SeqCst);
        let mut bytes = Vec::new();
        body.take(size + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| CloudError::Transport(format!("part body: {e}")))?;
        if bytes.len() as u64 != size {
            return Err(CloudError::Transport(
                "part body of the wrong length".into(),
            ));
        }
        if nvme(&bytes) != crc64nvme {
            return Err(service(400, "BadDigest"));
        }
        let mut uploads = self.uploads.lock().unwrap_or_else(|e| e.into_inner());
        match uploads.get_mut(upload_id) {
            Some((k, parts)) if k == key => {
                parts.insert(number, bytes);
                Ok(format!("part-{number}-{crc64nvme:016x}"))
            }
            _ => Err(service(404, "NoSuchUpload")),
        }
    }

    fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[super::UploadedPart],
        crc64nvme: u64,
        condition: &PutCondition,
    ) -> Result<PutResult, CloudError> {
        self.multipart_calls.fetch_add(1, Ordering::SeqCst);
        let Some((k, stored)) = self
            .uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(upload_id)
        else {
            return Err(service(404, "NoSuchUpload"));
        };
        let mut bytes = Vec::new();
        for p in parts {
            match stored.get(&p.number) {
                Some(b) if k == key => bytes.extend_from_slice(b),
                _ => return Err(service(400, "InvalidPart")),
            }
        }
        if nvme(&bytes) != crc64nvme {
            return Err(service(400, "BadDigest"));
        }
        let mut body = io::Cursor::new(bytes);
        let size = body.get_ref().len() as u64;
        self.put_object(key, &mut body, size, crc64nvme, condition)
    }

    fn abort_multipart(&self, _key: &str, upload_id: &str) -> Result<(), CloudError> {
        self.multipart_calls.fetch_add(1, Ordering::SeqCst);
        self.uploads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(upload_id);
        Ok(())
    }

    fn delete_object(&self, key: &str, if_match: Option<&str>) -> Result<(), CloudError> {
        if let Some(want) = if_match {
            match self.objects().get(key) {
                None => return Err(service(404, "NoSuchKey")),
                Some(o) if o.etag != want => return Err(service(412, "PreconditionFailed")),
                Some(_) => {}
            }
        }
        let event = self.delete(key);
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
        Ok(())
    }

    fn copy_object(&self, from: &str, to: &str, if_match: &str) -> Result<PutResult, CloudError> {
        let bytes = match self.objects().get(from) {
            Some(o) if o.etag == if_match => o.bytes.clone(),
            Some(_) => return Err(service(412, "PreconditionFailed")),
            None => return Err(service(404, "NoSuchKey")),
        };
        let event = self.put(to, &bytes);
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
        Ok(PutResult {
            etag: self.objects().get(to).map(|o| o.etag.clone()),
        })
    }

    fn get(
        &self,
        key: &str,
        offset: u64,
        if_match: Option<&str>,
    ) -> Result<ObjectBody, CloudError> {
        let objects = self.objects();
        let Some(o) = objects.get(key) else {
            return Err(service(404, "NoSuchKey"));
        };
        if if_match.is_some_and(|e| e != o.etag) {
            return Err(service(412, "PreconditionFailed"));
        }
        let from = (offset as usize).min(o.bytes.len());
        Ok(ObjectBody {
            // A ranged answer does not carry the whole object's CRC.
            meta: self.meta(key, o, false, offset == 0),
            offset,
            body: Box::new(io::Cursor::new(o.bytes[from..].to_vec())),
        })
    }
}

fn service(status: u16, code: &str) -> CloudError {
    CloudError::Service {
        status,
        code: code.to_string(),
        message: String::new(),
    }
}

#[derive(Debug)]
struct Queued {
    id: u64,
    body: String,
    receives: u32,
    /// Received and not deleted yet.
    out: bool,
}

/// A queue in memory: messages come back until deleted.
#[derive(Debug, Default)]
pub struct MemoryQueue {
    messages: Mutex<VecDeque<Queued>>,
    next_id: AtomicU64,
}

impl MemoryQueue {
    pub fn new() -> MemoryQueue {
        MemoryQueue::default()
    }

    fn messages(&self) -> std::sync::MutexGuard<'_, VecDeque<Queued>> {
        self.messages.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Append a message (the test decides order, duplicates and losses).
    pub fn push(&self, body: String) {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        self.messages().push_back(Queued {
            id,
            body,
            receives: 0,
            out: false,
        });
    }

    /// Messages not deleted yet.
    pub fn len(&self) -> usize {
        self.messages().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl EventQueue for MemoryQueue {
    fn receive(&self, max: u32, _wait_secs: u32) -> Result<Vec<QueueMessage>, CloudError> {
        let mut messages = self.messages();
        // Visibility timeout zero: whatever was received and not deleted is back.
        let mut out = Vec::new();
        for m in messages.iter_mut() {
            if out.len() >= max as usize {
                break;
            }
            m.receives += 1;
            m.out = true;
            out.push(QueueMessage {
                id: m.id.to_string(),
                receipt_handle: format!("{}#{}", m.id, m.receives),
                body: m.body.clone(),
                receive_count: m.receives,
            });
        }
        Ok(out)
    }

    fn delete_batch(
        &self,
        receipt_handles: &[String],
    ) -> Result<Vec<(String, CloudError)>, CloudError> {
        let mut messages = self.messages();
        for h in receipt_handles {
            let id = h.split('#').next().unwrap_or_default();
            messages.retain(|m| m.id.to_string() != id);
        }
        Ok(Vec::new())
    }

    fn extend_visibility(&self, _receipt_handle: &str, _secs: u32) -> Result<(), CloudError> {
        Ok(())
    }
}

/// What a [`Faulty`] store does to the `n`th call (counted over list, HEAD and GET).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer normally.
    None,
    /// Fail with a transport error.
    Transport,
    /// A GET whose body breaks off after this many bytes.
    Cut(u64),
    /// A GET whose body has one byte flipped (the CRC check must catch it).
    Corrupt,
}

/// An [`ObjectStore`] that injects faults from a schedule (call number -> fault) into an inner
/// store.
pub struct Faulty<S> {
    inner: S,
    schedule: Box<dyn Fn(u64) -> Fault + Send + Sync>,
    calls: AtomicU64,
}

impl<S: ObjectStore> Faulty<S> {
    pub fn new(inner: S, schedule: impl Fn(u64) -> Fault + Send + Sync + 'static) -> Faulty<S> {
        Faulty {
            inner,
            schedule: Box::new(schedule),
            calls: AtomicU64::new(0),
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn next(&self) -> Fault {
        (self.schedule)(self.calls.fetch_add(1, Ordering::SeqCst))
    }
}

fn injected() -> CloudError {
    CloudError::Transport("injected fault: connection reset".into())
}

impl<S: ObjectStore> ObjectStore for Faulty<S> {
    fn put_object(
        &self,
        key: &str,
        body: &mut dyn Read,
        size: u64,
        crc64nvme: u64,
        condition: &PutCondition,
    ) -> Result<PutResult, CloudError> {
        match self.next() {
            Fault::None => self.inner.put_object(key, body, size, crc64nvme, condition),
            _ => Err(injected()),
        }
    }

    fn delete_object(&self, key: &str, if_match: Option<&str>) -> Result<(), CloudError> {
        match self.next() {
            Fault::None => self.inner.delete_object(key, if_match),
            _ => Err(injected()),
        }
    }

    fn copy_object(&self, from: &str, to: &str, if_match: &str) -> Result<PutResult, CloudError> {
        match self.next() {
            Fault::None => self.inner.copy_object(from, to, if_match),
            _ => Err(injected()),
        }
    }

    fn create_multipart(&self, key: &str) -> Result<String, CloudError> {
        match self.next() {
            Fault::None => self.inner.create_multipart(key),
            _ => Err(injected()),
        }
    }

    fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: &mut dyn Read,
        size: u64,
        crc64nvme: u64,
    ) -> Result<String, CloudError> {
        match self.next() {
            Fault::None => self
                .inner
                .upload_part(key, upload_id, number, body, size, crc64nvme),
            _ => Err(injected()),
        }
    }

    fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[super::UploadedPart],
        crc64nvme: u64,
        condition: &PutCondition,
    ) -> Result<PutResult, CloudError> {
        match self.next() {
            Fault::None => self
                .inner
                .complete_multipart(key, upload_id, parts, crc64nvme, condition),
            _ => Err(injected()),
        }
    }

    fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), CloudError> {
        match self.next() {
            Fault::None => self.inner.abort_multipart(key, upload_id),
            _ => Err(injected()),
        }
    }

    fn list_page(&self, prefix: &str, continuation: Option<&str>) -> Result<ListPage, CloudError> {
        match self.next() {
            Fault::Transport => Err(injected()),
            _ => self.inner.list_page(prefix, continuation),
        }
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, CloudError> {
        match self.next() {
            Fault::Transport => Err(injected()),
            _ => self.inner.head(key),
        }
    }

    fn get(
        &self,
        key: &str,
        offset: u64,
        if_match: Option<&str>,
    ) -> Result<ObjectBody, CloudError> {
        let fault = self.next();
        if fault == Fault::Transport {
            return Err(injected());
        }
        let mut body = self.inner.get(key, offset, if_match)?;
        match fault {
            Fault::Cut(after) => body.body = Box::new(CutOff(body.body.take(after))),
            Fault::Corrupt => {
                let mut bytes = Vec::new();
                body.body
                    .read_to_end(&mut bytes)
                    .map_err(|e| CloudError::Transport(e.to_string()))?;
                if let Some(b) = bytes.first_mut() {
                    *b ^= 0x5a;
                }
                body.body = Box::new(io::Cursor::new(bytes));
            }
            Fault::None | Fault::Transport => {}
        }
        Ok(body)
    }
}

/// A body that fails once its inner reader is exhausted (a connection reset mid-body).
struct CutOff<R>(R);

impl<R: Read> Read for CutOff<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.read(buf)? {
            0 => Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "injected fault: body cut off",
            )),
            n => Ok(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_pages_in_byte_order_under_the_prefix() {
        let b = MemoryBucket::new("b", 2);
        for k in ["p/c", "p/a", "q/x", "p/b", "p/d", "o"] {
            b.put(k, k.as_bytes());
        }
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let page = b.list_page("p/", token.as_deref()).unwrap();
            assert!(page.objects.len() <= 2);
            assert!(page.objects.iter().all(|m| m.crc64nvme.is_none()));
            keys.extend(page.objects.into_iter().map(|m| m.key));
            match page.next {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        assert_eq!(keys, ["p/a", "p/b", "p/c", "p/d"]);
    }

    #[test]
    fn gets_honour_ranges_if_match_and_404() {
        let b = MemoryBucket::new("b", 10);
        b.put("k", b"hello world");
        let etag = b.head("k").unwrap().unwrap().etag.unwrap();
        let mut body = b.get("k", 6, Some(&etag)).unwrap();
        assert_eq!((body.offset, body.meta.crc64nvme), (6, None));
        let mut s = String::new();
        body.body.read_to_string(&mut s).unwrap();
        assert_eq!(s, "world");
        assert!(matches!(
            b.get("k", 0, Some("other")),
            Err(CloudError::Service { status: 412, .. })
        ));
        assert!(b.get("nope", 0, None).err().unwrap().is_not_found());
    }

    #[test]
    fn events_parse_as_the_share_reads_them() {
        let b = MemoryBucket::new("b", 10);
        let put = b.put("dir/a b+c%.txt", b"x");
        let parsed = crate::cloud::events::parse_message(&put).unwrap();
        let crate::cloud::events::ParsedMessage::Events(evs) = parsed else {
            panic!("{parsed:?}")
        };
        assert_eq!(evs[0].key, "dir/a b+c%.txt");
        assert!(evs[0].sequencer.is_some());
    }

    #[test]
    fn undeleted_messages_come_back_with_higher_receive_counts() {
        let q = MemoryQueue::new();
        q.push("one".into());
        q.push("two".into());
        let first = q.receive(10, 0).unwrap();
        assert_eq!(first.len(), 2);
        q.delete_batch(&[first[0].receipt_handle.clone()]).unwrap();
        let again = q.receive(10, 0).unwrap();
        assert_eq!((again.len(), again[0].body.as_str()), (1, "two"));
        assert_eq!(again[0].receive_count, 2);
    }

    #[test]
    fn faults_follow_the_schedule() {
        let b = Faulty::new(MemoryBucket::new("b", 10), |n| match n {
            0 => Fault::Transport,
            1 => Fault::Cut(3),
            2 => Fault::Corrupt,
            _ => Fault::None,
        });
        b.inner().put("k", b"abcdef");
        assert!(b.head("k").unwrap_err().is_retryable());
        let mut out = Vec::new();
        let err = b.get("k", 0, None).unwrap().body.read_to_end(&mut out);
        assert!(err.is_err() && out == b"abc");
        let mut out = Vec::new();
        b.get("k", 0, None)
            .unwrap()
            .body
            .read_to_end(&mut out)
            .unwrap();
        assert_ne!(out, b"abcdef");
        assert!(b.head("k").unwrap().is_some());
    }
}
