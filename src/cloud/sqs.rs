//! SQS over the AWS JSON 1.0 protocol: `POST /` to the queue URL's origin with
//! `X-Amz-Target: AmazonSQS.<Action>`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::http::{Call, LONG_POLL_SLACK, SignedClient, read_capped};
use super::retry::{RetryPolicy, retry};
use super::sigv4::Credentials;
use super::{CloudError, EventQueue, QueueMessage};

/// 10 messages of up to 256 KiB each plus the JSON envelope and escaping.
pub const MAX_RECEIVE_BODY: usize = 4 * 1024 * 1024;
/// Answers to delete/visibility calls are small.
const MAX_SMALL_BODY: usize = 256 * 1024;
/// SQS limits: batch size, long-poll wait, visibility timeout (12 h).
pub const MAX_BATCH: usize = 10;
pub const MAX_WAIT_SECS: u32 = 20;
pub const MAX_VISIBILITY_SECS: u32 = 43_200;

pub struct SqsConfig {
    /// `https://sqs.eu-west-1.amazonaws.com/123456789012/share-a`
    pub queue_url: String,
    pub region: String,
    pub credentials: Credentials,
    pub allow_http: bool,
}

pub struct SqsClient {
    http: SignedClient,
    queue_url: String,
    retry: RetryPolicy,
    stop: Option<Arc<AtomicBool>>,
}

impl SqsClient {
    pub fn new(cfg: SqsConfig) -> Result<SqsClient, String> {
        let queue_url = cfg.queue_url.trim().to_string();
        // Requests go to the origin; the queue is named by `QueueUrl` in the body.
        let origin_end = queue_url
            .find("://")
            .map(|i| i + 3)
            .and_then(|start| queue_url[start..].find('/').map(|j| start + j))
            .unwrap_or(queue_url.len());
        let origin = &queue_url[..origin_end];
        let http = SignedClient::new(origin, cfg.allow_http, cfg.credentials, &cfg.region, "sqs")
            .map_err(|e| format!("queue URL {queue_url:?}: {e}"))?;
        if queue_url[origin_end..].trim_matches('/').is_empty() {
            return Err(format!(
                "queue URL {queue_url:?} has no queue path (expected …/ACCOUNT/QUEUE)"
            ));
        }
        Ok(SqsClient {
            http,
            queue_url,
            retry: RetryPolicy::default(),
            stop: None,
        })
    }

    /// Trust `roots` (a share's `ca_file`) instead of the built-in roots.
    pub fn trusting(mut self, roots: Option<&super::http::TrustedRoots>) -> SqsClient {
        if let Some(r) = roots {
            self.http.trust(r);
        }
        self
    }

    /// Backoff sleeps end early once `flag` is set (graceful shutdown).
    pub fn with_stop_flag(mut self, flag: Arc<AtomicBool>) -> SqsClient {
        self.stop = Some(flag);
        self
    }

    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> SqsClient {
        self.retry = policy;
        self
    }

    fn stop_requested(&self) -> bool {
        self.stop
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
    }

    /// One JSON call with retries; returns the response body.
    fn call(
        &self,
        action: &str,
        body: &serde_json::Value,
        read_timeout: Option<Duration>,
        limit: usize,
    ) -> Result<Vec<u8>, CloudError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| CloudError::Transport(format!("encoding {action}: {e}")))?;
        let target = format!("AmazonSQS.{action}");
        let headers = [
            ("content-type", "application/x-amz-json-1.0"),
            ("x-amz-target", target.as_str()),
        ];
        let call = Call {
            method: "POST",
            path: "/",
            query: &[],
            headers: &headers,
            body: &body,
            read_timeout,
        };
        let what = format!("SQS {action} {}", self.queue_url);
        retry(&self.retry, &what, &|| self.stop_requested(), || {
            let response = self.http.send(&call)?;
            read_capped(response.into_body(), limit, &what)
        })
    }
}

#[derive(Deserialize)]
struct ReceiveResponse {
    #[serde(rename = "Messages", default)]
    messages: Option<Vec<WireMessage>>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(rename = "MessageId")]
    message_id: String,
    #[serde(rename = "ReceiptHandle")]
    receipt_handle: String,
    #[serde(rename = "Body", default)]
    body: String,
    #[serde(rename = "Attributes", default)]
    attributes: HashMap<String, String>,
}

#[derive(Deserialize)]
struct DeleteBatchResponse {
    #[serde(rename = "Successful", default)]
    successful: Vec<BatchOk>,
    #[serde(rename = "Failed", default)]
    failed: Vec<BatchFailed>,
}

#[derive(Deserialize)]
struct BatchOk {
    #[serde(rename = "Id")]
    id: String,
}

#[derive(Deserialize)]
struct BatchFailed {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "SenderFault", default)]
    sender_fault: bool,
    #[serde(rename = "Code", default)]
    code: String,
    #[serde(rename = "Message", default)]
    message: String,
}

fn malformed(action: &str, detail: impl std::fmt::Display) -> CloudError {
    CloudError::Transport(format!("SQS {action}: malformed response: {detail}"))
}

/// Decode a JSON object answer (serde would also build a struct from a JSON array).
fn parse_object<T: serde::de::DeserializeOwned>(
    action: &str,
    body: &[u8],
) -> Result<T, CloudError> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(malformed(action, "not a JSON object"));
    }
    serde_json::from_slice(body).map_err(|e| malformed(action, e))
}

/// Parse a ReceiveMessage answer; a missing, null or empty `Messages` means none arrived.
pub fn parse_receive(body: &[u8]) -> Result<Vec<QueueMessage>, CloudError> {
    let parsed: ReceiveResponse = parse_object("ReceiveMessage", body)?;
    parsed
        .messages
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            if m.message_id.is_empty() || m.receipt_handle.is_empty() {
                return Err(malformed(
                    "ReceiveMessage",
                    "message without MessageId or ReceiptHandle",
                ));
            }
            let receive_count = match m.attributes.get("ApproximateReceiveCount") {
                // Not every server knows the attribute; a missing count means first delivery.
                None => 1,
                Some(v) => v.trim().parse::<u32>().map_err(|_| {
                    malformed("ReceiveMessage", format!("ApproximateReceiveCount {v:?}"))
                })?,
            };
            Ok(QueueMessage {
                id: m.message_id,
                receipt_handle: m.receipt_handle,
                body: m.body,
                receive_count,
            })
        })
        .collect()
}

/// Match a DeleteMessageBatch answer to the handles sent as `m0..`. Entries the server named
/// in neither list are reported as failed: an unconfirmed delete must not count as done.
fn parse_delete_batch(
    body: &[u8],
    handles: &[String],
) -> Result<Vec<(String, CloudError)>, CloudError> {
    let parsed: DeleteBatchResponse = parse_object("DeleteMessageBatch", body)?;
    let index_of = |id: &str| {
        id.strip_prefix('m')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|i| *i < handles.len())
    };
    let mut settled = vec![false; handles.len()];
    let mut failures = Vec::new();
    for ok in &parsed.successful {
        if let Some(i) = index_of(&ok.id) {
            settled[i] = true;
        }
    }
    for failed in parsed.failed {
        let Some(i) = index_of(&failed.id) else {
            continue;
        };
        if settled[i] && failures.iter().any(|(h, _)| *h == handles[i]) {
            continue;
        }
        settled[i] = true;
        // Sender faults (bad handle) are permanent; server faults are worth another try.
        let status = if failed.sender_fault { 400 } else { 500 };
        failures.push((
            handles[i].clone(),
            CloudError::Service {
                status,
                code: failed.code,
                message: failed.message,
            },
        ));
    }
    for (i, done) in settled.iter().enumerate() {
        if !done {
            failures.push((
                handles[i].clone(),
                malformed("DeleteMessageBatch", format!("entry m{i} not acknowledged")),
            ));
        }
    }
    Ok(failures)
}

impl SqsClient {
    /// Prove the queue can be read without consuming anything (`check-config --online`):
    /// ReceiveMessage for at most one message with `WaitTimeSeconds=0` and
    /// `VisibilityTimeout=0`, never deleted, so a message received is visible again at once
    /// (its ApproximateReceiveCount grows by one). The number received (0 or 1).
    pub fn probe_receive(&self) -> Result<usize, CloudError> {
        let body = json!({
            "QueueUrl": self.queue_url,
            "MaxNumberOfMessages": 1,
            "WaitTimeSeconds": 0,
            "VisibilityTimeout": 0,
        });
        let response = self.call("ReceiveMessage", &body, None, MAX_RECEIVE_BODY)?;
        parse_receive(&response).map(|m| m.len())
    }
}

impl EventQueue for SqsClient {
    fn receive(&self, max: u32, wait_secs: u32) -> Result<Vec<QueueMessage>, CloudError> {
        let max = max.clamp(1, MAX_BATCH as u32);
        let wait = wait_secs.min(MAX_WAIT_SECS);
        // Both names: the current one and the deprecated one older servers (moto) know.
        let body = json!({
            "QueueUrl": self.queue_url,
            "MaxNumberOfMessages": max,
            "WaitTimeSeconds": wait,
            "MessageSystemAttributeNames": ["ApproximateReceiveCount"],
            "AttributeNames": ["ApproximateReceiveCount"],
        });
        let read_timeout = Duration::from_secs(u64::from(wait)) + LONG_POLL_SLACK;
        let response = self.call(
            "ReceiveMessage",
            &body,
            Some(read_timeout),
            MAX_RECEIVE_BODY,
        )?;
        parse_receive(&response)
    }

    fn delete_batch(
        &self,
        receipt_handles: &[String],
    ) -> Result<Vec<(String, CloudError)>, CloudError> {
        let mut failures = Vec::new();
        for chunk in receipt_handles.chunks(MAX_BATCH) {
            let entries: Vec<serde_json::Value> = chunk
                .iter()
                .enumerate()
                .map(|(i, handle)| json!({ "Id": format!("m{i}"), "ReceiptHandle": handle }))
                .collect();
            let body = json!({ "QueueUrl": self.queue_url, "Entries": entries });
            let response = self.call("DeleteMessageBatch", &body, None, MAX_SMALL_BODY)?;
            failures.extend(parse_delete_batch(&response, chunk)?);
        }
        Ok(failures)
    }

    fn extend_visibility(&self, receipt_handle: &str, secs: u32) -> Result<(), CloudError> {
        let body = json!({
            "QueueUrl": self.queue_url,
            "ReceiptHandle": receipt_handle,
            "VisibilityTimeout": secs.min(MAX_VISIBILITY_SECS),
        });
        self.call("ChangeMessageVisibility", &body, None, MAX_SMALL_BODY)
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            access_key_id: "AK".into(),
            secret_access_key: "SK".into(),
            session_token: None,
        }
    }

    fn cfg(url: &str, allow_http: bool) -> SqsConfig {
        SqsConfig {
            queue_url: url.into(),
            region: "us-east-1".into(),
            credentials: creds(),
            allow_http,
        }
    }

    #[test]
    fn queue_url_validation() {
        let client = SqsClient::new(cfg(
            "https://sqs.us-east-1.amazonaws.com/123456789012/share-a",
            false,
        ))
        .expect("valid");
        assert_eq!(
            client.http.endpoint().origin(),
            "https://sqs.us-east-1.amazonaws.com"
        );
        assert_eq!(client.http.endpoint().base_path, "");
        let err = SqsClient::new(cfg("http://127.0.0.1:5000/123456789012/q", false))
            .err()
            .expect("http refused");
        assert!(
            err.contains("http://127.0.0.1:5000/123456789012/q") && err.contains("allow_http"),
            "{err}"
        );
        assert!(SqsClient::new(cfg("http://127.0.0.1:5000/123456789012/q", true)).is_ok());
        assert!(SqsClient::new(cfg("https://sqs.example", false)).is_err());
        assert!(SqsClient::new(cfg("https://sqs.example/", false)).is_err());
        assert!(SqsClient::new(cfg("sqs.example/1/q", false)).is_err());
    }

    #[test]
    fn receive_parses_messages_and_counts() {
        let body = br#"{"Messages":[
            {"MessageId":"id-1","ReceiptHandle":"rh+/=1","MD5OfBody":"x","Body":"{\"Records\":[]}","Attributes":{"ApproximateReceiveCount":"3","SentTimestamp":"1"}},
            {"MessageId":"id-2","ReceiptHandle":"rh2","Body":"b"}]}"#;
        let msgs = parse_receive(body).expect("valid");
        assert_eq!(
            msgs,
            vec![
                QueueMessage {
                    id: "id-1".into(),
                    receipt_handle: "rh+/=1".into(),
                    body: "{\"Records\":[]}".into(),
                    receive_count: 3
                },
                QueueMessage {
                    id: "id-2".into(),
                    receipt_handle: "rh2".into(),
                    body: "b".into(),
                    receive_count: 1
                },
            ]
        );
    }

    #[test]
    fn receive_without_messages_is_empty() {
        for body in [
            &br#"{}"#[..],
            br#"{"Messages":[]}"#,
            br#"{"Messages":null}"#,
        ] {
            assert_eq!(parse_receive(body).expect("valid"), vec![]);
        }
    }

    #[test]
    fn receive_rejects_malformed_answers() {
        for body in [
            &b""[..],
            b"not json",
            b"[]",
            br#"{"Messages":{}}"#,
            br#"{"Messages":[{"ReceiptHandle":"r"}]}"#,
            br#"{"Messages":[{"MessageId":"","ReceiptHandle":"r"}]}"#,
            br#"{"Messages":[{"MessageId":"i","ReceiptHandle":"r","Attributes":{"ApproximateReceiveCount":"-1"}}]}"#,
            br#"{"Messages":[{"MessageId":"i","ReceiptHandle":"r","Attributes":{"ApproximateReceiveCount":7}}]}"#,
            br#"{"Messages":[{"MessageId":"i","ReceiptHandle":"r","Body":"#,
        ] {
            let err = parse_receive(body).expect_err("malformed");
            assert!(matches!(err, CloudError::Transport(_)), "{err}");
        }
    }

    #[test]
    fn delete_batch_reports_failures_and_unacknowledged_entries() {
        let handles: Vec<String> = ["h0", "h1", "h2", "h3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let body = br#"{"Successful":[{"Id":"m0"},{"Id":"m3"},{"Id":"bogus"},{"Id":"m99"}],
            "Failed":[{"Id":"m1","SenderFault":true,"Code":"ReceiptHandleIsInvalid","Message":"bad handle"}]}"#;
        let failures = parse_delete_batch(body, &handles).expect("valid");
        assert_eq!(failures.len(), 2);
        assert_eq!(failures[0].0, "h1");
        assert_eq!(
            failures[0].1,
            CloudError::Service {
                status: 400,
                code: "ReceiptHandleIsInvalid".into(),
                message: "bad handle".into()
            }
        );
        assert!(!failures[0].1.is_retryable());
        assert_eq!(failures[1].0, "h2");
        assert!(matches!(failures[1].1, CloudError::Transport(_)));

        let body =
            br#"{"Failed":[{"Id":"m0","SenderFault":false,"Code":"InternalError","Message":""}]}"#;
        let failures = parse_delete_batch(body, &handles[..1]).expect("valid");
        assert!(failures[0].1.is_retryable());

        assert!(
            parse_delete_batch(br#"{"Successful":[{"Id":"m0"}]}"#, &handles[..1])
                .expect("valid")
                .is_empty()
        );
        assert!(parse_delete_batch(b"<xml/>", &handles).is_err());
        assert!(parse_delete_batch(b"[[],[]]", &handles).is_err());
    }
}
