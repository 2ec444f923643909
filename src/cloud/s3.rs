//! S3 (and S3-compatible stores) with path-style addressing: `{endpoint}/{bucket}/{key}`.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::prelude::*;
use quick_xml::events::Event;
use quick_xml::reader::Reader;
use ureq::http::HeaderMap;

use super::http::{Call, SignedClient, header_str, read_capped};
use super::retry::{RetryPolicy, retry};
use super::sigv4::Credentials;
use super::{CloudError, ListPage, ObjectBody, ObjectStore, PutCondition, PutResult, UploadedPart};
use crate::model::ObjectMeta;
use crate::time::parse_iso8601;

/// A listing page of 1000 keys is ~350 KiB; anything near this is not a listing.
pub const MAX_LIST_BODY: usize = 8 * 1024 * 1024;
const MAX_KEYS: &str = "1000";
/// Deeper XML than this is not a ListObjectsV2 answer.
const MAX_XML_DEPTH: usize = 32;
/// S3 keys are ≤ 1024 bytes; url-encoded that is ≤ 3 KiB. Tokens are shorter.
const MAX_FIELD_LEN: usize = 16 * 1024;

pub struct S3Config {
    /// `https://s3.eu-west-1.amazonaws.com`, `http://127.0.0.1:9000` (with `allow_http`), …
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub credentials: Credentials,
    pub allow_http: bool,
    /// Tries per call including the first (0 is taken as 1).
    pub max_attempts: u32,
}

pub struct S3Client {
    http: SignedClient,
    bucket: String,
    retry: RetryPolicy,
    stop: Option<Arc<AtomicBool>>,
}

impl S3Client {
    pub fn new(cfg: S3Config) -> Result<S3Client, String> {
        let bucket = cfg.bucket.trim();
        if bucket.is_empty() || bucket.contains('/') {
            return Err(format!("invalid bucket name {:?}", cfg.bucket));
        }
        let http = SignedClient::new(
            &cfg.endpoint,
            cfg.allow_http,
            cfg.credentials,
            &cfg.region,
            "s3",
        )?;
        Ok(S3Client {
            http,
            bucket: bucket.to_string(),
            retry: RetryPolicy::with_max_attempts(cfg.max_attempts),
            stop: None,
        })
    }

    /// Trust `roots` (a share's `ca_file`) instead of the built-in roots.
    pub fn trusting(mut self, roots: Option<&super::http::TrustedRoots>) -> S3Client {
        if let Some(r) = roots {
            self.http.trust(r);
        }
        self
    }

    /// Backoff sleeps end early once `flag` is set (graceful shutdown).
    pub fn with_stop_flag(mut self, flag: Arc<AtomicBool>) -> S3Client {
        self.stop = Some(flag);
        self
    }

    fn stop_requested(&self) -> bool {
        self.stop
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
    }

    fn object_path(&self, key: &str) -> String {
        format!("/{}/{}", self.bucket, key)
    }
}

impl S3Client {
    /// A one-key listing of `prefix`, as `check-config --online` proves the credentials can
    /// list the bucket: the number of keys it returned (0 or 1). Not retried.
    pub fn probe_list(&self, prefix: &str) -> Result<usize, CloudError> {
        self.list_page_of(prefix, None, "1", &RetryPolicy::with_max_attempts(1))
            .map(|page| page.objects.len())
    }

    fn list_page_of(
        &self,
        prefix: &str,
        continuation: Option<&str>,
        max_keys: &str,
        policy: &RetryPolicy,
    ) -> Result<ListPage, CloudError> {
        let mut query: Vec<(&str, &str)> = vec![
            ("list-type", "2"),
            ("max-keys", max_keys),
            ("encoding-type", "url"),
        ];
        if !prefix.is_empty() {
            query.push(("prefix", prefix));
        }
        if let Some(token) = continuation {
            query.push(("continuation-token", token));
        }
        let path = format!("/{}", self.bucket);
        let call = Call {
            method: "GET",
            path: &path,
            query: &query,
            headers: &[],
            body: &[],
            read_timeout: None,
        };
        let what = format!("S3 list {}/{prefix}", self.bucket);
        retry(policy, &what, &|| self.stop_requested(), || {
            let response = self.http.send(&call)?;
            let body = read_capped(response.into_body(), MAX_LIST_BODY, &what)?;
            parse_list_page(&body, prefix)
        })
    }
}

impl ObjectStore for S3Client {
    fn put_object(
        &self,
        key: &str,
        body: &mut dyn Read,
        size: u64,
        crc64nvme: u64,
        condition: &PutCondition,
    ) -> Result<PutResult, CloudError> {
        self.put_streamed(key, body, size, crc64nvme, condition)
    }

    fn delete_object(&self, key: &str, if_match: Option<&str>) -> Result<(), CloudError> {
        self.delete_key(key, if_match)
    }

    fn create_multipart(&self, key: &str) -> Result<String, CloudError> {
        self.multipart_create(key)
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
        self.multipart_part(key, upload_id, number, body, size, crc64nvme)
    }

    fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
        crc64nvme: u64,
        condition: &PutCondition,
    ) -> Result<PutResult, CloudError> {
        self.multipart_complete(key, upload_id, parts, crc64nvme, condition)
    }

    fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), CloudError> {
        self.multipart_abort(key, upload_id)
    }

    fn copy_object(&self, from: &str, to: &str, if_match: &str) -> Result<PutResult, CloudError> {
        self.copy_key(from, to, if_match)
    }

    fn list_page(&self, prefix: &str, continuation: Option<&str>) -> Result<ListPage, CloudError> {
        self.list_page_of(prefix, continuation, MAX_KEYS, &self.retry)
    }

    fn head(&self, key: &str) -> Result<Option<ObjectMeta>, CloudError> {
        let path = self.object_path(key);
        let headers = [("x-amz-checksum-mode", "ENABLED")];
        let call = Call {
            method: "HEAD",
            path: &path,
            query: &[],
            headers: &headers,
            body: &[],
            read_timeout: None,
        };
        let what = format!("S3 HEAD {}/{key}", self.bucket);
        let result = retry(&self.retry, &what, &|| self.stop_requested(), || {
            let response = self.http.send(&call)?;
            let headers = response.headers();
            let size = content_length(headers)
                .ok_or_else(|| malformed(&what, "no valid Content-Length"))?;
            object_meta(key, size, headers, true, &what)
        });
        match result {
            Ok(meta) => Ok(Some(meta)),
            Err(CloudError::Service { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn get(
        &self,
        key: &str,
        offset: u64,
        if_match: Option<&str>,
    ) -> Result<ObjectBody, CloudError> {
        let path = self.object_path(key);
        let range = format!("bytes={offset}-");
        let quoted_etag = if_match.map(quote_etag);
        let mut headers: Vec<(&str, &str)> = vec![("x-amz-checksum-mode", "ENABLED")];
        if offset > 0 {
            headers.push(("range", &range));
        }
        if let Some(etag) = &quoted_etag {
            headers.push(("if-match", etag));
        }
        let call = Call {
            method: "GET",
            path: &path,
            query: &[],
            headers: &headers,
            body: &[],
            read_timeout: None,
        };
        let what = format!("S3 GET {}/{key}", self.bucket);
        // Retried only until the headers are in: once the body streams, errors are the reader's.
        retry(&self.retry, &what, &|| self.stop_requested(), || {
            let response = self.http.send(&call)?;
            let status = response.status().as_u16();
            let (parts, body) = response.into_parts();
            let length = content_length(&parts.headers);
            let (start, body_len, size) = match status {
                200 => {
                    let len = length.ok_or_else(|| malformed(&what, "no valid Content-Length"))?;
                    (0, len, len)
                }
                206 => {
                    let value = header_str(&parts.headers, "content-range").unwrap_or("");
                    let (first, last, total) = parse_content_range(value)
                        .ok_or_else(|| malformed(&what, &format!("bad Content-Range {value:?}")))?;
                    if first != offset {
                        return Err(malformed(
                            &what,
                            &format!("asked for bytes from {offset}, got {value:?}"),
                        ));
                    }
                    let len = last - first + 1;
                    if length.is_some_and(|l| l != len) {
                        return Err(malformed(
                            &what,
                            "Content-Length disagrees with Content-Range",
                        ));
                    }
                    (first, len, total)
                }
                other => return Err(malformed(&what, &format!("unexpected status {other}"))),
            };
            // A ranged answer's checksum headers (if any) do not describe the bytes we get.
            let meta = object_meta(key, size, &parts.headers, status == 200, &what)?;
            let body = ExactLengthReader {
                inner: body.into_reader(),
                remaining: body_len,
                expected: body_len,
            };
            Ok(ObjectBody {
                meta,
                offset: start,
                body: Box::new(body),
            })
        })
    }
}

impl S3Client {
    /// Single-request PUT with the CRC-64/NVME declared (and, by a verifying server, checked).
    fn put_streamed(
        &self,
        key: &str,
        body: &mut dyn Read,
        size: u64,
        crc64nvme: u64,
        condition: &PutCondition,
    ) -> Result<PutResult, CloudError> {
        let path = self.object_path(key);
        let crc = BASE64_STANDARD.encode(crc64nvme.to_be_bytes());
        let quoted;
        let mut headers: Vec<(&str, &str)> = vec![
            ("x-amz-checksum-crc64nvme", &crc),
            ("x-amz-sdk-checksum-algorithm", "CRC64NVME"),
        ];
        match condition {
            PutCondition::IfMatch(etag) => {
                quoted = quote_etag(etag);
                headers.push(("if-match", &quoted));
            }
            PutCondition::IfAbsent => headers.push(("if-none-match", "*")),
        }
        let call = Call {
            method: "PUT",
            path: &path,
            query: &[],
            headers: &headers,
            body: &[],
            read_timeout: None,
        };
        let response = self.http.send_stream(&call, body, size)?;
        Ok(PutResult {
            etag: header_str(response.headers(), "etag").and_then(normalize_etag),
        })
    }
}

/// `<Tag>value</Tag>` in a small XML answer (upload ids, ETags), `&quot;` undone.
fn xml_field(body: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let (_, rest) = body.split_once(&open)?;
    let (value, _) = rest.split_once(&close)?;
    Some(value.replace("&quot;", "\"").replace("&#34;", "\""))
}

impl S3Client {
    fn multipart_create(&self, key: &str) -> Result<String, CloudError> {
        let path = self.object_path(key);
        let headers = [
            ("x-amz-checksum-algorithm", "CRC64NVME"),
            ("x-amz-checksum-type", "FULL_OBJECT"),
        ];
        let call = Call {
            method: "POST",
            path: &path,
            query: &[("uploads", "")],
            headers: &headers,
            body: &[],
            read_timeout: None,
        };
        let what = format!("S3 CreateMultipartUpload {}/{key}", self.bucket);
        retry(&self.retry, &what, &|| self.stop_requested(), || {
            let response = self.http.send(&call)?;
            let body = read_capped(response.into_body(), 64 * 1024, &what)?;
            xml_field(&String::from_utf8_lossy(&body), "UploadId")
                .filter(|id| !id.is_empty())
                .ok_or_else(|| malformed(&what, "no UploadId"))
        })
    }

    fn multipart_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: &mut dyn Read,
        size: u64,
        crc64nvme: u64,
    ) -> Result<String, CloudError> {
        let path = self.object_path(key);
        let crc = BASE64_STANDARD.encode(crc64nvme.to_be_bytes());
        let n = number.to_string();
        let headers = [
            ("x-amz-checksum-crc64nvme", crc.as_str()),
            ("x-amz-sdk-checksum-algorithm", "CRC64NVME"),
        ];
        let query = [("partNumber", n.as_str()), ("uploadId", upload_id)];
        let call = Call {
            method: "PUT",
            path: &path,
            query: &query,
            headers: &headers,
            body: &[],
            read_timeout: None,
        };
        let response = self.http.send_stream(&call, body, size)?;
        header_str(response.headers(), "etag")
            .and_then(normalize_etag)
            .ok_or_else(|| malformed("S3 UploadPart", "no ETag"))
    }

    fn multipart_complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
        crc64nvme: u64,
        condition: &PutCondition,
    ) -> Result<PutResult, CloudError> {
        let path = self.object_path(key);
        let mut xml = String::from("<CompleteMultipartUpload>");
        for p in parts {
            xml.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag><ChecksumCRC64NVME>{}</ChecksumCRC64NVME></Part>",
                p.number,
                quote_etag(&p.etag),
                BASE64_STANDARD.encode(p.crc64nvme.to_be_bytes())
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let crc = BASE64_STANDARD.encode(crc64nvme.to_be_bytes());
        let quoted;
        let mut headers: Vec<(&str, &str)> = vec![
            ("x-amz-checksum-crc64nvme", &crc),
            ("x-amz-checksum-type", "FULL_OBJECT"),
        ];
        match condition {
            PutCondition::IfMatch(etag) => {
                quoted = quote_etag(etag);
                headers.push(("if-match", &quoted));
            }
            PutCondition::IfAbsent => headers.push(("if-none-match", "*")),
        }
        let call = Call {
            method: "POST",
            path: &path,
            query: &[("uploadId", upload_id)],
            headers: &headers,
            body: xml.as_bytes(),
            read_timeout: Some(std::time::Duration::from_secs(300)),
        };
        let what = format!("S3 CompleteMultipartUpload {}/{key}", self.bucket);
        // Completing twice is harmless (S3 answers the same object), so it may be retried.
        retry(&self.retry, &what, &|| self.stop_requested(), || {
            let response = self.http.send(&call)?;
            let body = read_capped(response.into_body(), 64 * 1024, &what)?;
            let text = String::from_utf8_lossy(&body);
            // A 200 whose body is an <Error> is a failure (S3 may fail after it started
            // answering).
            if text.contains("<Error>") {
                return Err(super::http::service_error(500, None, &body));
            }
            Ok(PutResult {
                etag: xml_field(&text, "ETag").and_then(|e| normalize_etag(&e)),
            })
        })
    }

    fn multipart_abort(&self, key: &str, upload_id: &str) -> Result<(), CloudError> {
        let path = self.object_path(key);
        let call = Call {
            method: "DELETE",
            path: &path,
            query: &[("uploadId", upload_id)],
            headers: &[],
            body: &[],
            read_timeout: None,
        };
        match self.http.send(&call) {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl S3Client {
    fn delete_key(&self, key: &str, if_match: Option<&str>) -> Result<(), CloudError> {
        let path = self.object_path(key);
        let quoted = if_match.map(quote_etag);
        let headers: Vec<(&str, &str)> = quoted.iter().map(|e| ("if-match", e.as_str())).collect();
        let call = Call {
            method: "DELETE",
            path: &path,
            query: &[],
            headers: &headers,
            body: &[],
            read_timeout: None,
        };
        let what = format!("S3 DELETE {}/{key}", self.bucket);
        retry(&self.retry, &what, &|| self.stop_requested(), || {
            self.http.send(&call).map(drop)
        })
    }

    fn copy_key(&self, from: &str, to: &str, if_match: &str) -> Result<PutResult, CloudError> {
        let path = self.object_path(to);
        let source = crate::cloud::sigv4::encode_path(&self.object_path(from));
        let quoted = quote_etag(if_match);
        let headers = [
            ("x-amz-copy-source", source.as_str()),
            ("x-amz-copy-source-if-match", quoted.as_str()),
            ("x-amz-checksum-algorithm", "CRC64NVME"),
        ];
        let call = Call {
            method: "PUT",
            path: &path,
            query: &[],
            headers: &headers,
            body: &[],
            read_timeout: None,
        };
        let what = format!("S3 COPY {}/{from} -> {to}", self.bucket);
        retry(&self.retry, &what, &|| self.stop_requested(), || {
            let response = self.http.send(&call)?;
            let body = read_capped(response.into_body(), 64 * 1024, &what)?;
            let text = String::from_utf8_lossy(&body);
            // <CopyObjectResult><ETag>"…"</ETag>…: a 200 with an <Error> inside is a failure.
            if text.contains("<Error>") {
                return Err(super::http::service_error(500, None, &body));
            }
            let etag = text
                .split_once("<ETag>")
                .and_then(|(_, rest)| rest.split_once("</ETag>"))
                .map(|(e, _)| e.replace("&quot;", "\"").replace("&#34;", "\""))
                .and_then(|e| normalize_etag(&e));
            Ok(PutResult { etag })
        })
    }
}

fn malformed(what: &str, detail: &str) -> CloudError {
    CloudError::Transport(format!("{what}: malformed response: {detail}"))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    header_str(headers, "content-length").and_then(parse_decimal_u64)
}

/// Digits only (`u64::from_str` would also take a leading `+`).
fn parse_decimal_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `bytes 100-199/1000` → (100, 199, 1000).
fn parse_content_range(value: &str) -> Option<(u64, u64, u64)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last, total) = (
        parse_decimal_u64(first)?,
        parse_decimal_u64(last)?,
        parse_decimal_u64(total)?,
    );
    (first <= last && last < total).then_some((first, last, total))
}

/// ETag without quotes; hex ETags (optionally `-N` for multipart) lower-cased.
pub fn normalize_etag(raw: &str) -> Option<String> {
    let trimmed = raw.trim();
    let unquoted = trimmed
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(trimmed);
    if unquoted.is_empty() {
        return None;
    }
    let (hash, parts) = match unquoted.split_once('-') {
        Some((h, n)) => (h, Some(n)),
        None => (unquoted, None),
    };
    let hexlike = hash.bytes().all(|b| b.is_ascii_hexdigit())
        && parts.is_none_or(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    Some(if hexlike {
        unquoted.to_ascii_lowercase()
    } else {
        unquoted.to_string()
    })
}

fn quote_etag(etag: &str) -> String {
    let t = etag.trim();
    if t.len() >= 2 && t.starts_with('"') && t.ends_with('"') {
        t.to_string()
    } else {
        format!("\"{t}\"")
    }
}

/// The CRC-64/NVME of the whole object: only a `FULL_OBJECT` (or untyped) value that is
/// exactly 8 bytes of base64, read big-endian.
pub fn parse_crc64nvme(value: Option<&str>, checksum_type: Option<&str>) -> Option<u64> {
    if checksum_type.is_some_and(|t| !t.trim().eq_ignore_ascii_case("FULL_OBJECT")) {
        return None;
    }
    let bytes = BASE64_STANDARD.decode(value?.trim()).ok()?;
    let array: [u8; 8] = bytes.try_into().ok()?;
    Some(u64::from_be_bytes(array))
}

fn object_meta(
    key: &str,
    size: u64,
    headers: &HeaderMap,
    whole_object: bool,
    what: &str,
) -> Result<ObjectMeta, CloudError> {
    let last_modified = header_str(headers, "last-modified")
        .ok_or_else(|| malformed(what, "no Last-Modified"))
        .and_then(|v| {
            parse_http_date(v).ok_or_else(|| malformed(what, &format!("bad Last-Modified {v:?}")))
        })?;
    let crc64nvme = if whole_object {
        parse_crc64nvme(
            header_str(headers, "x-amz-checksum-crc64nvme"),
            header_str(headers, "x-amz-checksum-type"),
        )
    } else {
        None
    };
    Ok(ObjectMeta {
        key: key.to_string(),
        size,
        etag: header_str(headers, "etag").and_then(normalize_etag),
        last_modified,
        crc64nvme,
    })
}

fn parse_http_date(value: &str) -> Option<i64> {
    let time = httpdate::parse_http_date(value).ok()?;
    let secs = time.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(secs).ok()
}

/// `+` → space, then `%XX` → byte; the result must be UTF-8. S3 (and botocore's
/// `unquote_plus`) encode listing keys this way under `encoding-type=url`.
fn form_url_decode(encoded: &str) -> Option<String> {
    let plus_decoded = encoded.replace('+', " ");
    percent_encoding::percent_decode_str(&plus_decoded)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

#[derive(Default)]
struct RawEntry {
    key: Option<String>,
    size: Option<String>,
    etag: Option<String>,
    last_modified: Option<String>,
}

/// Parse a ListObjectsV2 body. Every key must start with `prefix` and keys must be strictly
/// increasing in byte order (the full-sync merge depends on it).
pub fn parse_list_page(body: &[u8], prefix: &str) -> Result<ListPage, CloudError> {
    let bad = |detail: String| {
        CloudError::Transport(format!("ListObjectsV2: malformed response: {detail}"))
    };
    let xml = std::str::from_utf8(body).map_err(|_| bad("not UTF-8".into()))?;
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut entries: Vec<RawEntry> = Vec::new();
    let mut is_truncated: Option<bool> = None;
    let mut next_token: Option<String> = None;
    let mut url_encoded = false;
    let mut saw_root = false;

    loop {
        let event = reader.read_event().map_err(|e| {
            bad(format!(
                "XML error at byte {}: {e}",
                reader.buffer_position()
            ))
        })?;
        match event {
            Event::Start(e) => {
                if stack.len() >= MAX_XML_DEPTH {
                    return Err(bad("XML nested too deep".into()));
                }
                let name = e.local_name().as_ref().to_string();
                if stack.is_empty() {
                    if name != "ListBucketResult" || saw_root {
                        return Err(bad(format!("unexpected root element <{name}>")));
                    }
                    saw_root = true;
                }
                if stack.len() == 1 && name == "Contents" {
                    entries.push(RawEntry::default());
                }
                stack.push(name);
                text.clear();
            }
            Event::Empty(e) => {
                if stack.is_empty() {
                    return Err(bad(format!(
                        "unexpected root element <{}/>",
                        e.local_name().as_ref()
                    )));
                }
                if stack.len() == 1 && e.local_name().as_ref() == "Contents" {
                    entries.push(RawEntry::default());
                }
            }
            Event::Text(t) => push_field_text(&mut text, &t.xml10_content()).map_err(bad)?,
            Event::CData(t) => push_field_text(&mut text, &t.xml10_content()).map_err(bad)?,
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    Ok(None) => quick_xml::escape::resolve_predefined_entity(&r)
                        .ok_or_else(|| bad(format!("unknown entity &{};", &*r)))?
                        .to_string(),
                    Err(e) => return Err(bad(format!("bad character reference: {e}"))),
                };
                push_field_text(&mut text, &resolved).map_err(bad)?;
            }
            Event::End(_) => {
                let value = std::mem::take(&mut text);
                let path: Vec<&str> = stack.iter().map(String::as_str).collect();
                match path.as_slice() {
                    ["ListBucketResult", "IsTruncated"] => {
                        is_truncated = Some(match value.trim() {
                            v if v.eq_ignore_ascii_case("true") => true,
                            v if v.eq_ignore_ascii_case("false") => false,
                            other => return Err(bad(format!("IsTruncated {other:?}"))),
                        });
                    }
                    ["ListBucketResult", "NextContinuationToken"] => next_token = Some(value),
                    ["ListBucketResult", "EncodingType"] => {
                        url_encoded = value.trim().eq_ignore_ascii_case("url")
                    }
                    ["ListBucketResult", "Contents", field] => {
                        // Contents was pushed when it opened, so there is a last entry.
                        if let Some(entry) = entries.last_mut() {
                            let slot = match *field {
                                "Key" => &mut entry.key,
                                "Size" => &mut entry.size,
                                "ETag" => &mut entry.etag,
                                "LastModified" => &mut entry.last_modified,
                                _ => &mut None,
                            };
                            *slot = Some(value);
                        }
                    }
                    _ => {}
                }
                stack.pop();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !saw_root || !stack.is_empty() {
        return Err(bad("not a complete ListBucketResult".into()));
    }

    let mut objects: Vec<ObjectMeta> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        let raw_key = entry
            .key
            .ok_or_else(|| bad(format!("entry {i} has no Key")))?;
        let key = if url_encoded {
            form_url_decode(&raw_key)
                .ok_or_else(|| bad(format!("Key {raw_key:?} is not valid url-encoded UTF-8")))?
        } else {
            raw_key
        };
        if key.is_empty() {
            return Err(bad(format!("entry {i} has an empty Key")));
        }
        if !key.starts_with(prefix) {
            return Err(bad(format!("Key {key:?} is outside prefix {prefix:?}")));
        }
        if let Some(previous) = objects.last()
            && previous.key.as_str() >= key.as_str()
        {
            return Err(bad(format!(
                "keys out of order: {:?} then {key:?}",
                previous.key
            )));
        }
        let size_text = entry
            .size
            .ok_or_else(|| bad(format!("Key {key:?} has no Size")))?;
        let size = parse_decimal_u64(size_text.trim())
            .ok_or_else(|| bad(format!("Key {key:?}: bad Size {size_text:?}")))?;
        let lm_text = entry
            .last_modified
            .ok_or_else(|| bad(format!("Key {key:?} has no LastModified")))?;
        let last_modified = parse_iso8601(&lm_text)
            .ok_or_else(|| bad(format!("Key {key:?}: bad LastModified {lm_text:?}")))?;
        objects.push(ObjectMeta {
            key,
            size,
            etag: entry.etag.as_deref().and_then(normalize_etag),
            last_modified,
            crc64nvme: None,
        });
    }

    let next = match is_truncated {
        Some(true) => match next_token {
            Some(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
            _ => {
                return Err(bad(
                    "IsTruncated is true but there is no NextContinuationToken".into(),
                ));
            }
        },
        Some(false) => None,
        None => return Err(bad("no IsTruncated".into())),
    };
    Ok(ListPage { objects, next })
}

fn push_field_text(text: &mut String, more: &str) -> Result<(), String> {
    if text.len() + more.len() > MAX_FIELD_LEN {
        return Err(format!("a field is longer than {MAX_FIELD_LEN} bytes"));
    }
    text.push_str(more);
    Ok(())
}

/// Passes the body through and turns "fewer bytes than announced" into an io error, so a cut
/// connection can never look like a complete (short) object.
struct ExactLengthReader<R> {
    inner: R,
    remaining: u64,
    expected: u64,
}

impl<R: Read> Read for ExactLengthReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.remaining == 0 {
            // Let the HTTP body see its own end: only then does ureq hand the connection back
            // to its pool (otherwise every GET pays a new TCP, and TLS, handshake).
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("object body is longer than its {} bytes", self.expected),
                )),
            };
        }
        let want = usize::try_from(self.remaining).map_or(buf.len(), |r| r.min(buf.len()));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "object body ended after {} of {} bytes",
                    self.expected - self.remaining,
                    self.expected
                ),
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ureq::http::HeaderValue;

    fn page(contents: &str, tail: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>p/</Prefix>{contents}{tail}</ListBucketResult>"#
        )
    }

    fn entry(key: &str, size: &str) -> String {
        format!(
            "<Contents><Key>{key}</Key><LastModified>2009-10-12T17:50:30.000Z</LastModified>\
             <ETag>&quot;FBA9DEDE5F27731C9771645A39863328&quot;</ETag><Size>{size}</Size>\
             <Owner><ID>x</ID></Owner><StorageClass>STANDARD</StorageClass></Contents>"
        )
    }

    const DONE: &str = "<IsTruncated>false</IsTruncated>";

    #[test]
    fn parses_a_page_with_url_encoded_keys() {
        let xml = page(
            &(entry("p/a%20b%2Bc%25d", "10") + &entry("p/dir/%C3%A9+x~", "0")),
            "<IsTruncated>true</IsTruncated><NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken><EncodingType>url</EncodingType>",
        );
        let parsed = parse_list_page(xml.as_bytes(), "p/").expect("valid page");
        let keys: Vec<&str> = parsed.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["p/a b+c%d", "p/dir/é x~"]);
        let first = &parsed.objects[0];
        assert_eq!(first.size, 10);
        assert_eq!(
            first.etag.as_deref(),
            Some("fba9dede5f27731c9771645a39863328")
        );
        assert_eq!(first.last_modified, 1_255_369_830);
        assert_eq!(first.crc64nvme, None);
        assert_eq!(
            parsed.next.as_deref(),
            Some("1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=")
        );
    }

    #[test]
    fn keys_are_taken_literally_without_encoding_type() {
        let xml = page(&entry("p/a%20b+c", "1"), DONE);
        let parsed = parse_list_page(xml.as_bytes(), "p/").expect("valid");
        assert_eq!(parsed.objects[0].key, "p/a%20b+c");
        assert_eq!(parsed.next, None);
    }

    #[test]
    fn empty_listing_and_missing_etag() {
        let parsed = parse_list_page(page("", DONE).as_bytes(), "p/").expect("valid");
        assert!(parsed.objects.is_empty());
        let xml = page(
            "<Contents><Key>p/k</Key><LastModified>2024-01-01T00:00:00Z</LastModified><Size>5</Size></Contents>",
            DONE,
        );
        let parsed = parse_list_page(xml.as_bytes(), "p/").expect("valid");
        assert_eq!(parsed.objects[0].etag, None);
        assert_eq!(parsed.objects[0].last_modified, 1_704_067_200);
    }

    #[test]
    fn rejects_out_of_order_duplicate_and_foreign_keys() {
        for (contents, why) in [
            (entry("p/b", "1") + &entry("p/a", "1"), "out of order"),
            (entry("p/a", "1") + &entry("p/a", "1"), "out of order"),
            (entry("q/a", "1"), "outside prefix"),
            // Byte order: 'Z' (0x5A) sorts before 'a' (0x61), and 'é' after both.
            (entry("p/é", "1") + &entry("p/a", "1"), "out of order"),
        ] {
            let err = parse_list_page(page(&contents, DONE).as_bytes(), "p/").expect_err(why);
            assert!(err.to_string().contains(why), "{err}");
        }
        let ok = entry("p/Z", "1") + &entry("p/a", "1") + &entry("p/é", "1");
        assert_eq!(
            parse_list_page(page(&ok, DONE).as_bytes(), "p/")
                .expect("byte order")
                .objects
                .len(),
            3
        );
    }

    #[test]
    fn rejects_wrong_and_hostile_bodies() {
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "not a complete"),
            ("<Error><Code>X</Code></Error>".into(), "root"),
            (page(&entry("p/a", "1"), ""), "no IsTruncated"),
            (
                page("", "<IsTruncated>true</IsTruncated>"),
                "NextContinuationToken",
            ),
            (page("", "<IsTruncated>maybe</IsTruncated>"), "IsTruncated"),
            (page(&entry("p/a", "-1"), DONE), "bad Size"),
            (page(&entry("p/a", "+1"), DONE), "bad Size"),
            (
                page(&entry("p/a", "18446744073709551616"), DONE),
                "bad Size",
            ),
            (page(&entry("", "1"), DONE), "empty Key"),
            (page("<Contents><Size>1</Size></Contents>", DONE), "no Key"),
            (page("<Contents/>", DONE), "no Key"),
            (
                page("<Contents><Key>p/a</Key><Size>1</Size></Contents>", DONE),
                "no LastModified",
            ),
            (
                page(
                    &entry("p/%FF", "1"),
                    &format!("{DONE}<EncodingType>url</EncodingType>"),
                ),
                "UTF-8",
            ),
            (page(&entry("p/&bogus;", "1"), DONE), "entity"),
            (
                page(&entry("p/a", "1"), DONE).replace("</ListBucketResult>", ""),
                "not a complete",
            ),
            (
                page(&entry("p/a", "1"), DONE).replace("</Key>", "</Kex>"),
                "XML",
            ),
            (format!("{}<ListBucketResult/>", page("", DONE)), "root"),
            (
                "<ListBucketResult>".to_string() + &"<x>".repeat(100),
                "deep",
            ),
            (
                page(&entry(&"k".repeat(MAX_FIELD_LEN + 1), "1"), DONE),
                "longer than",
            ),
        ];
        for (xml, why) in cases {
            let err = parse_list_page(xml.as_bytes(), "").expect_err(why);
            assert!(err.to_string().contains(why), "expected {why:?} in {err}");
            assert!(matches!(err, CloudError::Transport(_)));
        }
        assert!(parse_list_page(b"\xff\xfe<ListBucketResult>", "").is_err());
    }

    #[test]
    fn a_full_size_page_parses() {
        let contents: String = (0..1000)
            .map(|i| entry(&format!("p/{i:05}"), "1"))
            .collect();
        let xml = page(&contents, DONE);
        assert!(xml.len() < MAX_LIST_BODY);
        assert_eq!(
            parse_list_page(xml.as_bytes(), "p/")
                .expect("valid")
                .objects
                .len(),
            1000
        );
    }

    #[test]
    fn etag_normalization() {
        assert_eq!(
            normalize_etag("\"D41D8CD98F00B204E9800998ECF8427E\"").as_deref(),
            Some("d41d8cd98f00b204e9800998ecf8427e")
        );
        assert_eq!(
            normalize_etag("\"ABC123-12\"").as_deref(),
            Some("abc123-12")
        );
        assert_eq!(
            normalize_etag("W/\"Opaque\"").as_deref(),
            Some("W/\"Opaque\"")
        );
        assert_eq!(
            normalize_etag("Opaque-Value").as_deref(),
            Some("Opaque-Value")
        );
        assert_eq!(normalize_etag("\"\""), None);
        assert_eq!(normalize_etag("  "), None);
        assert_eq!(quote_etag("abc"), "\"abc\"");
        assert_eq!(quote_etag("\"abc\""), "\"abc\"");
    }

    #[test]
    fn crc64nvme_header_rules() {
        // CRC-64/NVME("123456789") = 0xAE8B14860A799888 (protocols.md §B3).
        assert_eq!(
            parse_crc64nvme(Some("rosUhgp5mIg="), None),
            Some(0xAE8B_1486_0A79_9888)
        );
        assert_eq!(
            parse_crc64nvme(Some("rosUhgp5mIg="), Some("FULL_OBJECT")),
            Some(0xAE8B_1486_0A79_9888)
        );
        assert_eq!(parse_crc64nvme(Some("AAAAAAAAAAA="), None), Some(0));
        assert_eq!(
            parse_crc64nvme(Some("rosUhgp5mIg="), Some("COMPOSITE")),
            None
        );
        assert_eq!(parse_crc64nvme(Some("rosUhgp5"), None), None, "6 bytes");
        assert_eq!(parse_crc64nvme(Some("rosUhgp5mIgA"), None), None, "9 bytes");
        assert_eq!(
            parse_crc64nvme(Some("rosUhgp5mIg=-3"), None),
            None,
            "composite suffix"
        );
        assert_eq!(parse_crc64nvme(Some("not base64!"), None), None);
        assert_eq!(parse_crc64nvme(None, Some("FULL_OBJECT")), None);
    }

    #[test]
    fn content_range_parsing() {
        assert_eq!(
            parse_content_range("bytes 100-199/1000"),
            Some((100, 199, 1000))
        );
        assert_eq!(parse_content_range("bytes 0-0/1"), Some((0, 0, 1)));
        for bad in [
            "",
            "bytes */1000",
            "bytes 100-199/*",
            "bytes 200-100/1000",
            "bytes 0-1000/1000",
            "items 0-1/2",
            "bytes -1-5/9",
            "bytes 1-+5/9",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn head_metadata_from_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "last-modified",
            HeaderValue::from_static("Mon, 12 Oct 2009 17:50:30 GMT"),
        );
        h.insert("etag", HeaderValue::from_static("\"ABCDEF\""));
        h.insert(
            "x-amz-checksum-crc64nvme",
            HeaderValue::from_static("rosUhgp5mIg="),
        );
        let meta = object_meta("k", 9, &h, true, "t").expect("valid");
        assert_eq!(
            meta,
            ObjectMeta {
                key: "k".into(),
                size: 9,
                etag: Some("abcdef".into()),
                last_modified: 1_255_369_830,
                crc64nvme: Some(0xAE8B_1486_0A79_9888)
            }
        );
        assert_eq!(
            object_meta("k", 9, &h, false, "t")
                .expect("valid")
                .crc64nvme,
            None
        );
        h.insert("x-amz-checksum-type", HeaderValue::from_static("COMPOSITE"));
        assert_eq!(
            object_meta("k", 9, &h, true, "t").expect("valid").crc64nvme,
            None
        );
        h.insert("last-modified", HeaderValue::from_static("yesterday"));
        assert!(object_meta("k", 9, &h, true, "t").is_err());
        h.remove("last-modified");
        assert!(object_meta("k", 9, &h, true, "t").is_err());
    }

    #[test]
    fn short_body_is_an_io_error() {
        let mut r = ExactLengthReader {
            inner: &b"12345"[..],
            remaining: 8,
            expected: 8,
        };
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).expect_err("short");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(out, b"12345");
        assert!(err.to_string().contains("5 of 8"));

        // Extra bytes past the announced length are never handed out, and are an error.
        let mut r = ExactLengthReader {
            inner: &b"123456789"[..],
            remaining: 4,
            expected: 4,
        };
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).expect_err("long");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(out, b"1234");
    }

    /// A reader that remembers whether it was asked past its end.
    struct EofWitness<'a> {
        data: &'a [u8],
        saw_eof: bool,
    }

    impl Read for EofWitness<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.data.read(buf)?;
            self.saw_eof |= n == 0 && !buf.is_empty();
            Ok(n)
        }
    }

    #[test]
    fn exact_body_is_read_to_its_end_so_the_connection_can_be_reused() {
        // ureq returns a connection to its pool only once the body reader has seen its end.
        let mut r = ExactLengthReader {
            inner: EofWitness {
                data: b"12345678",
                saw_eof: false,
            },
            remaining: 8,
            expected: 8,
        };
        let mut buf = [0u8; 8];
        assert_eq!(r.read(&mut buf).expect("body"), 8);
        assert!(!r.inner.saw_eof);
        assert_eq!(r.read(&mut buf).expect("end"), 0);
        assert!(r.inner.saw_eof);
    }

    #[test]
    fn bucket_and_endpoint_validation() {
        let cfg = |endpoint: &str, bucket: &str, allow_http: bool| S3Config {
            endpoint: endpoint.into(),
            region: "us-east-1".into(),
            bucket: bucket.into(),
            credentials: Credentials {
                access_key_id: "AK".into(),
                secret_access_key: "SK".into(),
                session_token: None,
            },
            allow_http,
            max_attempts: 3,
        };
        assert!(S3Client::new(cfg("https://s3.example", "b", false)).is_ok());
        assert!(S3Client::new(cfg("https://s3.example", "", false)).is_err());
        assert!(S3Client::new(cfg("https://s3.example", "a/b", false)).is_err());
        let err = S3Client::new(cfg("http://127.0.0.1:9", "b", false))
            .err()
            .expect("http refused");
        assert!(err.contains("http://127.0.0.1:9"));
    }
}
