//! One side of a sync task: an S3-protocol bucket, through the agent's signed blocking client
//! (`sgw_agent::cloud`). Listing reuses the agent's `S3Client` (and its strict page parser);
//! GET, PUT, multipart and restore are built here on the same `SignedClient`, because a copy
//! needs the response headers (content type, user metadata, storage class) the agent's `get`
//! does not keep.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sgw_agent::cache::crc64;
use sgw_agent::cloud::http::{Call, SignedClient, header_str, read_capped};
use sgw_agent::cloud::s3::{S3Client, S3Config, normalize_etag, parse_crc64nvme};
use sgw_agent::cloud::sigv4::Credentials;
use sgw_agent::cloud::{CloudError, ListPage, ObjectStore};
use sgw_agent::model::ObjectMeta;

use super::endpoints::Resolved;

/// Headers copied from source to destination with `enable_metadata_migration` (Content-Type is
/// always copied, as the seed says).
const STANDARD_METADATA: &[&str] = &[
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "expires",
];

pub struct Bucket {
    http: SignedClient,
    lister: S3Client,
    pub name: String,
    stop: Arc<AtomicBool>,
}

/// A GET in progress.
pub struct Download {
    pub meta: ObjectMeta,
    pub content_type: Option<String>,
    /// `x-amz-meta-*` and the standard metadata headers, as sent.
    pub metadata: Vec<(String, String)>,
    pub storage_class: Option<String>,
    pub body: Box<dyn Read + Send>,
}

impl Bucket {
    pub fn new(
        endpoint: &Resolved,
        region: &str,
        bucket: &str,
        credentials: Credentials,
        stop: Arc<AtomicBool>,
    ) -> Result<Bucket, String> {
        let http = SignedClient::new(
            &endpoint.url,
            endpoint.allow_http,
            credentials.clone(),
            region,
            "s3",
        )?;
        let lister = S3Client::new(S3Config {
            endpoint: endpoint.url.clone(),
            region: region.to_string(),
            bucket: bucket.to_string(),
            credentials,
            allow_http: endpoint.allow_http,
            max_attempts: 3,
        })?
        .with_stop_flag(Arc::clone(&stop));
        Ok(Bucket {
            http,
            lister,
            name: bucket.to_string(),
            stop,
        })
    }

    fn path(&self, key: &str) -> String {
        format!("/{}/{key}", self.name)
    }

    pub fn list_page(&self, continuation: Option<&str>) -> Result<ListPage, CloudError> {
        self.lister.list_page("", continuation)
    }

    /// HEAD with checksum mode (`Ok(None)` on 404).
    pub fn head(&self, key: &str) -> Result<Option<ObjectMeta>, CloudError> {
        self.lister.head(key)
    }

    pub fn get(&self, key: &str) -> Result<Download, CloudError> {
        let path = self.path(key);
        let call = Call {
            method: "GET",
            path: &path,
            query: &[],
            headers: &[("x-amz-checksum-mode", "ENABLED")],
            body: &[],
            read_timeout: None,
        };
        let response = self.http.send(&call)?;
        let (parts, body) = response.into_parts();
        let h = &parts.headers;
        let bad = |what: &str| CloudError::Transport(format!("GET {}/{key}: {what}", self.name));
        let size: u64 = header_str(h, "content-length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("no valid Content-Length"))?;
        let last_modified = header_str(h, "last-modified")
            .and_then(httpdate_secs)
            .ok_or_else(|| bad("no valid Last-Modified"))?;
        let mut metadata = Vec::new();
        for (name, value) in h.iter() {
            let name = name.as_str();
            if (name.starts_with("x-amz-meta-") || STANDARD_METADATA.contains(&name))
                && let Ok(v) = value.to_str()
            {
                metadata.push((name.to_string(), v.to_string()));
            }
        }
        Ok(Download {
            meta: ObjectMeta {
                key: key.to_string(),
                size,
                etag: header_str(h, "etag").and_then(normalize_etag),
                last_modified,
                crc64nvme: parse_crc64nvme(
                    header_str(h, "x-amz-checksum-crc64nvme"),
                    header_str(h, "x-amz-checksum-type"),
                ),
            },
            content_type: header_str(h, "content-type").map(str::to_string),
            metadata,
            storage_class: header_str(h, "x-amz-storage-class").map(str::to_string),
            body: Box::new(body.into_reader().take(size)),
        })
    }

    /// One PUT of `body` (whose CRC-64/NVME is `crc`): the destination checks the checksum
    /// (S3 refuses a mismatch with `BadDigest`). Returns the CRC-64/NVME the answer confirms,
    /// if it carries one.
    pub fn put(
        &self,
        key: &str,
        body: &[u8],
        crc: u64,
        headers: &[(String, String)],
    ) -> Result<Option<u64>, CloudError> {
        let path = self.path(key);
        let crc_b64 = crc64::nvme_to_header(crc);
        let mut all: Vec<(&str, &str)> = vec![
            ("x-amz-checksum-crc64nvme", &crc_b64),
            ("x-amz-sdk-checksum-algorithm", "CRC64NVME"),
        ];
        all.extend(headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        let call = Call {
            method: "PUT",
            path: &path,
            query: &[],
            headers: &all,
            body,
            read_timeout: None,
        };
        let response = self.http.send(&call)?;
        Ok(parse_crc64nvme(
            header_str(response.headers(), "x-amz-checksum-crc64nvme"),
            None,
        ))
    }

    /// Multipart upload of `source` (exactly `size` bytes) in `part_size` parts, with a
    /// FULL_OBJECT CRC-64/NVME: each part carries its own, Complete carries the whole object's,
    /// which must equal `expected_crc` when the source had one. Returns the CRC of the bytes
    /// sent. Aborted (nothing visible) on any error or a stop.
    pub fn put_multipart(
        &self,
        key: &str,
        source: &mut (dyn Read + Send),
        size: u64,
        part_size: usize,
        expected_crc: Option<u64>,
        headers: &[(String, String)],
    ) -> Result<u64, CloudError> {
        let path = self.path(key);
        let mut create_headers: Vec<(&str, &str)> = vec![
            ("x-amz-checksum-algorithm", "CRC64NVME"),
            ("x-amz-checksum-type", "FULL_OBJECT"),
        ];
        create_headers.extend(headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        let response = self.http.send(&Call {
            method: "POST",
            path: &path,
            query: &[("uploads", "")],
            headers: &create_headers,
            body: &[],
            read_timeout: None,
        })?;
        let body = read_capped(response.into_body(), 64 * 1024, "CreateMultipartUpload")?;
        let upload_id = xml_field(&body, "UploadId").ok_or_else(|| {
            CloudError::Transport("CreateMultipartUpload: no UploadId in the answer".into())
        })?;
        let result = self.upload_parts(&path, &upload_id, source, size, part_size, expected_crc);
        if result.is_err() {
            let _ = self.http.send(&Call {
                method: "DELETE",
                path: &path,
                query: &[("uploadId", &upload_id)],
                headers: &[],
                body: &[],
                read_timeout: None,
            });
        }
        result
    }

    fn upload_parts(
        &self,
        path: &str,
        upload_id: &str,
        source: &mut (dyn Read + Send),
        size: u64,
        part_size: usize,
        expected_crc: Option<u64>,
    ) -> Result<u64, CloudError> {
        // One part is read (and checksummed) while the one before it uploads: two buffers of
        // `part_size` per upload, handed back and forth.
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<(Vec<u8>, usize, u64)>(1);
        let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        for _ in 0..2 {
            let _ = empty_tx.send(vec![0u8; part_size]);
        }
        let stop = &self.stop;
        let (whole, parts) = std::thread::scope(|scope| {
            let reader = scope.spawn(move || -> Result<u64, CloudError> {
                let mut whole = crc64::Crc64Nvme::new();
                let mut done: u64 = 0;
                while done < size {
                    if stop.load(Ordering::Relaxed) {
                        return Err(CloudError::Transport("the task was stopped".into()));
                    }
                    let Ok(mut buffer) = empty_rx.recv() else {
                        return Err(CloudError::Transport("upload ended".into()));
                    };
                    let want =
                        usize::try_from((size - done).min(part_size as u64)).unwrap_or(part_size);
                    source.read_exact(&mut buffer[..want]).map_err(|e| {
                        CloudError::Transport(format!("reading the source object: {e}"))
                    })?;
                    whole.update(&buffer[..want]);
                    let part_crc = crc64::nvme(&buffer[..want]);
                    done += want as u64;
                    if full_tx.send((buffer, want, part_crc)).is_err() {
                        return Err(CloudError::Transport("upload ended".into()));
                    }
                }
                Ok(whole.finish())
            });
            let mut parts = String::new();
            let mut number = 0u32;
            let mut failure = None;
            for (buffer, want, part_crc) in full_rx.iter() {
                number += 1;
                let part_crc = crc64::nvme_to_header(part_crc);
                let number_text = number.to_string();
                let sent = self.http.send(&Call {
                    method: "PUT",
                    path,
                    query: &[("partNumber", &number_text), ("uploadId", upload_id)],
                    headers: &[("x-amz-checksum-crc64nvme", &part_crc)],
                    body: &buffer[..want],
                    read_timeout: None,
                });
                match sent {
                    Ok(response) => {
                        let etag = header_str(response.headers(), "etag")
                            .unwrap_or_default()
                            .to_string();
                        parts.push_str(&format!(
                            "<Part><PartNumber>{number}</PartNumber><ETag>{}</ETag><ChecksumCRC64NVME>{part_crc}</ChecksumCRC64NVME></Part>",
                            xml_escape(&etag)
                        ));
                        let _ = empty_tx.send(buffer);
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            // Dropping our ends unblocks a reader that is waiting for a buffer.
            drop(empty_tx);
            drop(full_rx);
            let read = reader
                .join()
                .unwrap_or_else(|_| Err(CloudError::Transport("the reader panicked".into())));
            match failure {
                Some(e) => Err(e),
                None => read.map(|crc| (crc, parts)),
            }
        })?;
        let crc = whole;
        if let Some(expected) = expected_crc
            && expected != crc
        {
            return Err(CloudError::Transport(format!(
                "the bytes read do not match the source's CRC-64/NVME ({crc:016x} != {expected:016x})"
            )));
        }
        let body = format!("<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>");
        let crc_b64 = crc64::nvme_to_header(crc);
        let response = self.http.send(&Call {
            method: "POST",
            path,
            query: &[("uploadId", upload_id)],
            headers: &[
                ("x-amz-checksum-crc64nvme", &crc_b64),
                ("x-amz-checksum-type", "FULL_OBJECT"),
            ],
            body: body.as_bytes(),
            read_timeout: Some(std::time::Duration::from_secs(120)),
        })?;
        // S3 can answer 200 with an <Error> body for Complete.
        let answer = read_capped(response.into_body(), 64 * 1024, "CompleteMultipartUpload")?;
        if xml_field(&answer, "Code").is_some() && xml_field(&answer, "Location").is_none() {
            return Err(CloudError::Transport(format!(
                "CompleteMultipartUpload failed: {}",
                String::from_utf8_lossy(&answer)
            )));
        }
        Ok(crc)
    }

    /// Asks for a temporary copy of an archived object (RestoreObject, one day).
    pub fn restore(&self, key: &str) -> Result<(), CloudError> {
        let path = self.path(key);
        let body = b"<RestoreRequest><Days>1</Days></RestoreRequest>";
        self.http
            .send(&Call {
                method: "POST",
                path: &path,
                query: &[("restore", "")],
                headers: &[],
                body,
                read_timeout: None,
            })
            .map(drop)
    }
}

fn httpdate_secs(value: &str) -> Option<i64> {
    let t = httpdate::parse_http_date(value).ok()?;
    i64::try_from(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs()).ok()
}

/// The text of the first `<name>…</name>` in a small XML answer.
fn xml_field(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let open = format!("<{name}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find(&format!("</{name}>"))? + start;
    Some(
        text[start..end]
            .replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_fields_are_found_and_unescaped() {
        let body = b"<InitiateMultipartUploadResult><UploadId>a&amp;b</UploadId></InitiateMultipartUploadResult>";
        assert_eq!(xml_field(body, "UploadId").as_deref(), Some("a&b"));
        assert_eq!(xml_field(body, "Key"), None);
    }
}
