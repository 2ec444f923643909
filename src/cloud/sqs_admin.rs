//! SQS administration (JSON protocol): creating a share's queue, reading its ARN, setting its
//! access policy, deleting it. Used by `sgw-control`'s provisioning; the agent's own queue
//! client (receive, delete) is [`super::sqs`].

use super::CloudError;
use super::http::{ADMIN_ANSWER_LIMIT, Call, SignedClient, send_and_read};
use super::retry::RetryPolicy;
use super::sigv4::Credentials;

pub struct SqsAdmin {
    http: SignedClient,
    retry: RetryPolicy,
}

impl SqsAdmin {
    pub fn new(
        endpoint: &str,
        allow_http: bool,
        credentials: Credentials,
        region: &str,
        retry: RetryPolicy,
    ) -> Result<SqsAdmin, String> {
        Ok(SqsAdmin {
            http: SignedClient::new(endpoint, allow_http, credentials, region, "sqs")?,
            retry,
        })
    }

    fn call(
        &self,
        action: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, CloudError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| CloudError::Transport(format!("encoding SQS {action}: {e}")))?;
        let target = format!("AmazonSQS.{action}");
        let call = Call {
            method: "POST",
            path: "/",
            query: &[],
            headers: &[
                ("content-type", "application/x-amz-json-1.0"),
                ("x-amz-target", &target),
            ],
            body: &body,
            read_timeout: None,
        };
        let what = format!("SQS {action}");
        let bytes = send_and_read(&self.http, &self.retry, &what, &call, ADMIN_ANSWER_LIMIT)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| CloudError::Transport(format!("SQS {action}: bad JSON answer: {e}")))
    }

    /// Creates (or finds, same name and attributes) the queue; returns its URL.
    pub fn create_queue(&self, name: &str) -> Result<String, CloudError> {
        let created = self.call("CreateQueue", &serde_json::json!({"QueueName": name}))?;
        created["QueueUrl"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| CloudError::Transport("SQS CreateQueue: no QueueUrl in answer".into()))
    }

    pub fn queue_arn(&self, queue_url: &str) -> Result<String, CloudError> {
        let attrs = self.call(
            "GetQueueAttributes",
            &serde_json::json!({"QueueUrl": queue_url, "AttributeNames": ["QueueArn"]}),
        )?;
        attrs["Attributes"]["QueueArn"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| CloudError::Transport(format!("SQS: no QueueArn for {queue_url}")))
    }

    pub fn set_policy(&self, queue_url: &str, policy: &str) -> Result<(), CloudError> {
        self.call(
            "SetQueueAttributes",
            &serde_json::json!({"QueueUrl": queue_url, "Attributes": {"Policy": policy}}),
        )
        .map(drop)
    }

    /// Deletes the queue; one already gone is fine.
    pub fn delete_queue(&self, queue_url: &str) -> Result<(), CloudError> {
        match self.call("DeleteQueue", &serde_json::json!({"QueueUrl": queue_url})) {
            Ok(_) => Ok(()),
            Err(e)
                if e.is_not_found()
                    || matches!(&e, CloudError::Service { code, .. } if code.contains("NonExistentQueue")) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}
