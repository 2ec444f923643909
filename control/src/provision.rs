//! Messaging resources behind each express sync group, behind one small trait so the
//! Alibaba protocol (OSS notification rules + MNS topics/queues) can come later and unit tests
//! can use [`MemoryProvisioner`].
//!
//! AWS protocol ([`AwsProvisioner`]): per group one SNS topic (policy: the bucket may publish)
//! and one bucket notification rule (`s3:ObjectCreated:*`, `s3:ObjectRemoved:*`, prefix filter)
//! pointing at it; per share one SQS queue (policy: the topic may send) subscribed to the topic
//! with `RawMessageDelivery=true`, so the queue receives the plain S3 event JSON. Other rules
//! on the bucket are kept byte for byte; a rule whose events and prefix overlap ours is a
//! conflict, never overwritten.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use sgw_agent::cloud::CloudError;
use sgw_agent::cloud::notification::{BucketNotifications, topic_rule_xml};
use sgw_agent::cloud::retry::RetryPolicy;
use sgw_agent::cloud::sigv4::Credentials;
use sgw_agent::cloud::sns::SnsAdmin;
use sgw_agent::cloud::sqs_admin::SqsAdmin;

/// Id prefix of the bucket notification rules we own.
pub const RULE_ID_PREFIX: &str = "sgw-express-sync-";

/// What a group needs on the provider side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    pub sync_id: String,
    pub bucket_name: String,
    pub bucket_prefix: String,
    pub topic_name: String,
}

impl GroupSpec {
    /// Id of the group's bucket notification rule.
    pub fn rule_id(&self) -> String {
        format!("{RULE_ID_PREFIX}{}", self.sync_id)
    }
}

/// Provider handles of a group's resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupHandles {
    /// SNS topic ARN.
    pub topic_ref: String,
    /// Notification rule Id.
    pub notification_ref: String,
}

/// Provider handles of a share's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueHandles {
    pub queue_url: String,
    /// SQS queue ARN.
    pub queue_ref: String,
    /// Subscription ARN.
    pub subscription_ref: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProvisionError {
    /// Another notification rule on the bucket overlaps ours.
    Conflict(String),
    NoSuchBucket(String),
    /// The provider refused our credentials' permissions.
    Denied(String),
    /// Anything else (transport, 5xx, unexpected answers).
    Failed(String),
}

impl fmt::Display for ProvisionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProvisionError::Conflict(m) => write!(f, "notification rules overlap: {m}"),
            ProvisionError::NoSuchBucket(m) => write!(f, "no such bucket: {m}"),
            ProvisionError::Denied(m) => write!(f, "permission denied: {m}"),
            ProvisionError::Failed(m) => write!(f, "provisioning failed: {m}"),
        }
    }
}

impl std::error::Error for ProvisionError {}

impl From<CloudError> for ProvisionError {
    fn from(e: CloudError) -> ProvisionError {
        match &e {
            CloudError::Service { code, .. } if code == "NoSuchBucket" => {
                ProvisionError::NoSuchBucket(e.to_string())
            }
            CloudError::Service { status: 403, .. } => ProvisionError::Denied(e.to_string()),
            CloudError::Service { code, .. }
                if code == "AccessDenied" || code == "AuthorizationError" =>
            {
                ProvisionError::Denied(e.to_string())
            }
            CloudError::Service { code, message, .. }
                if code == "InvalidArgument"
                    && message.to_ascii_lowercase().contains("overlap") =>
            {
                ProvisionError::Conflict(e.to_string())
            }
            _ => ProvisionError::Failed(e.to_string()),
        }
    }
}

/// The provider side of express sync.
pub trait Provisioner: Send + Sync {
    /// Topic + bucket notification rule. Fails with [`ProvisionError::Conflict`] when another
    /// rule on the bucket overlaps, and leaves nothing behind on failure.
    fn create_group(&self, spec: &GroupSpec) -> Result<GroupHandles, ProvisionError>;
    /// Removes the rule and the topic; resources already gone are fine.
    fn delete_group(&self, spec: &GroupSpec, handles: &GroupHandles) -> Result<(), ProvisionError>;
    /// A share's queue, subscribed to the group's topic with raw delivery.
    fn create_queue(
        &self,
        queue_name: &str,
        topic_ref: &str,
    ) -> Result<QueueHandles, ProvisionError>;
    /// Unsubscribes and deletes the queue; resources already gone are fine.
    fn delete_queue(&self, handles: &QueueHandles) -> Result<(), ProvisionError>;
    /// The endpoint URL and region agents use for the bucket and the queues.
    fn agent_endpoint(&self) -> (String, String);
}

// ---------------------------------------------------------------------------------------------
// AWS protocol (S3 + SNS + SQS), e.g. moto in tests. The wire protocols are in
// `sgw_agent::cloud` (`sns`, `sqs_admin`, `notification`); this is only the choreography.

/// Where each AWS-protocol service is reached. On AWS they are three hosts
/// (`s3.<region>.amazonaws.com`, `sns.…`, `sqs.…`); a moto-like peer serves all three on one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEndpoints {
    pub s3: String,
    pub sns: String,
    pub sqs: String,
}

impl ServiceEndpoints {
    /// One endpoint for every service (moto, LocalStack-style peers).
    pub fn single(url: &str) -> ServiceEndpoints {
        ServiceEndpoints {
            s3: url.to_string(),
            sns: url.to_string(),
            sqs: url.to_string(),
        }
    }

    /// AWS's public endpoints for `region` (the `amazonaws.com.cn` partition for `cn-*`).
    pub fn aws(region: &str) -> ServiceEndpoints {
        let domain = if region.starts_with("cn-") {
            "amazonaws.com.cn"
        } else {
            "amazonaws.com"
        };
        let url = |service: &str| format!("https://{service}.{region}.{domain}");
        ServiceEndpoints {
            s3: url("s3"),
            sns: url("sns"),
            sqs: url("sqs"),
        }
    }
}

pub struct AwsProvisioner {
    sns: SnsAdmin,
    sqs: SqsAdmin,
    notifications: BucketNotifications,
    s3_endpoint: String,
    region: String,
    /// Bucket notification changes are read-modify-write: one at a time.
    notification_lock: Mutex<()>,
}

impl AwsProvisioner {
    pub fn new(
        endpoints: &ServiceEndpoints,
        region: &str,
        allow_http: bool,
        credentials: Credentials,
    ) -> Result<AwsProvisioner, String> {
        let retry = RetryPolicy {
            max_attempts: 4,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(3),
        };
        let at = |key: &str, e: String| format!("{key} {e}");
        Ok(AwsProvisioner {
            sns: SnsAdmin::new(
                &endpoints.sns,
                allow_http,
                credentials.clone(),
                region,
                retry,
            )
            .map_err(|e| at("SNS endpoint:", e))?,
            sqs: SqsAdmin::new(
                &endpoints.sqs,
                allow_http,
                credentials.clone(),
                region,
                retry,
            )
            .map_err(|e| at("SQS endpoint:", e))?,
            notifications: BucketNotifications::new(
                &endpoints.s3,
                allow_http,
                credentials,
                region,
                retry,
            )
            .map_err(|e| at("S3 endpoint:", e))?,
            s3_endpoint: endpoints.s3.trim_end_matches('/').to_string(),
            region: region.to_string(),
            notification_lock: Mutex::new(()),
        })
    }

    fn lock_notifications(&self) -> std::sync::MutexGuard<'_, ()> {
        self.notification_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn create_group_inner(&self, spec: &GroupSpec, topic_arn: &str) -> Result<(), ProvisionError> {
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "sgw-bucket-publish",
                "Effect": "Allow",
                "Principal": {"Service": "s3.amazonaws.com"},
                "Action": "SNS:Publish",
                "Resource": topic_arn,
                "Condition": {"ArnLike": {"aws:SourceArn": format!("arn:aws:s3:::{}", spec.bucket_name)}}
            }]
        })
        .to_string();
        self.sns.set_topic_attribute(topic_arn, "Policy", &policy)?;
        let _guard = self.lock_notifications();
        let existing = self.notifications.rules(&spec.bucket_name)?;
        let rule_id = spec.rule_id();
        if let Some(other) = existing
            .iter()
            .find(|r| r.id != rule_id && r.overlaps(&spec.bucket_prefix))
        {
            return Err(ProvisionError::Conflict(format!(
                "rule {:?} (prefix {:?}) on bucket {}",
                other.id, other.prefix, spec.bucket_name
            )));
        }
        let mut rules: Vec<String> = existing
            .into_iter()
            .filter(|r| r.id != rule_id)
            .map(|r| r.raw)
            .collect();
        rules.push(topic_rule_xml(&rule_id, topic_arn, &spec.bucket_prefix));
        Ok(self.notifications.put_rules(&spec.bucket_name, &rules)?)
    }

    fn create_queue_inner(
        &self,
        queue_url: &str,
        topic_ref: &str,
    ) -> Result<QueueHandles, ProvisionError> {
        let queue_arn = self.sqs.queue_arn(queue_url)?;
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "sgw-topic-send",
                "Effect": "Allow",
                "Principal": {"Service": "sns.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": topic_ref}}
            }]
        })
        .to_string();
        self.sqs.set_policy(queue_url, &policy)?;
        let subscription_ref = self.sns.subscribe_queue_raw(topic_ref, &queue_arn)?;
        Ok(QueueHandles {
            queue_url: queue_url.to_string(),
            queue_ref: queue_arn,
            subscription_ref,
        })
    }
}

impl Provisioner for AwsProvisioner {
    fn create_group(&self, spec: &GroupSpec) -> Result<GroupHandles, ProvisionError> {
        let topic_arn = self.sns.create_topic(&spec.topic_name)?;
        if let Err(e) = self.create_group_inner(spec, &topic_arn) {
            // Leave nothing behind: the group does not exist.
            if let Err(cleanup) = self.sns.delete_topic(&topic_arn) {
                log::warn!("could not delete topic {topic_arn} after a failed create: {cleanup}");
            }
            return Err(e);
        }
        Ok(GroupHandles {
            topic_ref: topic_arn,
            notification_ref: spec.rule_id(),
        })
    }

    fn delete_group(&self, spec: &GroupSpec, handles: &GroupHandles) -> Result<(), ProvisionError> {
        {
            let _guard = self.lock_notifications();
            match self
                .notifications
                .rules(&spec.bucket_name)
                .map_err(ProvisionError::from)
            {
                Ok(existing) => {
                    if existing.iter().any(|r| r.id == handles.notification_ref) {
                        let rest: Vec<String> = existing
                            .into_iter()
                            .filter(|r| r.id != handles.notification_ref)
                            .map(|r| r.raw)
                            .collect();
                        self.notifications.put_rules(&spec.bucket_name, &rest)?;
                    }
                }
                // The bucket is gone, and its rules with it.
                Err(ProvisionError::NoSuchBucket(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.sns.delete_topic(&handles.topic_ref)?;
        Ok(())
    }

    fn create_queue(
        &self,
        queue_name: &str,
        topic_ref: &str,
    ) -> Result<QueueHandles, ProvisionError> {
        let queue_url = self.sqs.create_queue(queue_name)?;
        match self.create_queue_inner(&queue_url, topic_ref) {
            Ok(handles) => Ok(handles),
            Err(e) => {
                if let Err(cleanup) = self.sqs.delete_queue(&queue_url) {
                    log::warn!(
                        "could not delete queue {queue_url} after a failed create: {cleanup}"
                    );
                }
                Err(e)
            }
        }
    }

    fn delete_queue(&self, handles: &QueueHandles) -> Result<(), ProvisionError> {
        if !handles.subscription_ref.is_empty() {
            self.sns.unsubscribe(&handles.subscription_ref)?;
        }
        self.sqs.delete_queue(&handles.queue_url)?;
        Ok(())
    }

    fn agent_endpoint(&self) -> (String, String) {
        (self.s3_endpoint.clone(), self.region.clone())
    }
}

// ---------------------------------------------------------------------------------------------
// In-memory double for unit tests.

/// Records what exists; can be told to fail or to block the next call (for busy-group tests).
#[derive(Default)]
pub struct MemoryProvisioner {
    pub state: Mutex<MemoryState>,
}

#[derive(Debug, Default, Clone)]
pub struct MemoryState {
    /// topic ref -> (bucket, prefix)
    pub topics: BTreeMap<String, (String, String)>,
    /// queue url -> topic ref
    pub queues: BTreeMap<String, String>,
    /// Rules set on buckets by someone else: bucket -> prefixes.
    pub foreign_rules: HashMap<String, Vec<String>>,
    /// Buckets that exist (empty = every bucket exists).
    pub buckets: Vec<String>,
    /// Fail every call with this error.
    pub fail_with: Option<ProvisionError>,
    /// Sleep this long inside create_queue (to hold a group busy).
    pub delay: Option<Duration>,
    pub calls: Vec<String>,
}

impl MemoryProvisioner {
    pub fn new() -> MemoryProvisioner {
        MemoryProvisioner::default()
    }

    pub fn snapshot(&self) -> MemoryState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut MemoryState) -> Result<T, ProvisionError>,
    ) -> Result<T, ProvisionError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = state.fail_with.clone() {
            return Err(e);
        }
        f(&mut state)
    }
}

impl Provisioner for MemoryProvisioner {
    fn create_group(&self, spec: &GroupSpec) -> Result<GroupHandles, ProvisionError> {
        self.with(|s| {
            s.calls.push(format!("create_group {}", spec.sync_id));
            if !s.buckets.is_empty() && !s.buckets.contains(&spec.bucket_name) {
                return Err(ProvisionError::NoSuchBucket(spec.bucket_name.clone()));
            }
            let foreign = s
                .foreign_rules
                .get(&spec.bucket_name)
                .cloned()
                .unwrap_or_default();
            let ours = s
                .topics
                .values()
                .filter(|(b, _)| *b == spec.bucket_name)
                .map(|(_, p)| p.clone());
            for prefix in foreign.into_iter().chain(ours) {
                if prefix.starts_with(&spec.bucket_prefix)
                    || spec.bucket_prefix.starts_with(&prefix)
                {
                    return Err(ProvisionError::Conflict(prefix));
                }
            }
            let topic_ref = format!("arn:mem:topic:{}", spec.topic_name);
            s.topics.insert(
                topic_ref.clone(),
                (spec.bucket_name.clone(), spec.bucket_prefix.clone()),
            );
            Ok(GroupHandles {
                topic_ref,
                notification_ref: spec.rule_id(),
            })
        })
    }

    fn delete_group(&self, spec: &GroupSpec, handles: &GroupHandles) -> Result<(), ProvisionError> {
        self.with(|s| {
            s.calls.push(format!("delete_group {}", spec.sync_id));
            s.topics.remove(&handles.topic_ref);
            Ok(())
        })
    }

    fn create_queue(
        &self,
        queue_name: &str,
        topic_ref: &str,
    ) -> Result<QueueHandles, ProvisionError> {
        let delay = self.with(|s| Ok(s.delay))?;
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        self.with(|s| {
            s.calls.push(format!("create_queue {queue_name}"));
            let queue_url = format!("http://mem/queue/{queue_name}");
            s.queues.insert(queue_url.clone(), topic_ref.to_string());
            Ok(QueueHandles {
                queue_ref: format!("arn:mem:queue:{queue_name}"),
                subscription_ref: format!("arn:mem:sub:{queue_name}"),
                queue_url,
            })
        })
    }

    fn delete_queue(&self, handles: &QueueHandles) -> Result<(), ProvisionError> {
        self.with(|s| {
            s.calls.push(format!("delete_queue {}", handles.queue_url));
            s.queues.remove(&handles.queue_url);
            Ok(())
        })
    }

    fn agent_endpoint(&self) -> (String, String) {
        ("http://mem".into(), "us-east-1".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(prefix: &str) -> GroupSpec {
        GroupSpec {
            sync_id: "sync-1".into(),
            bucket_name: "b".into(),
            bucket_prefix: prefix.into(),
            topic_name: "t".into(),
        }
    }

    #[test]
    fn aws_endpoints_are_per_service_and_per_partition() {
        let e = ServiceEndpoints::aws("eu-west-1");
        assert_eq!(e.s3, "https://s3.eu-west-1.amazonaws.com");
        assert_eq!(e.sns, "https://sns.eu-west-1.amazonaws.com");
        assert_eq!(e.sqs, "https://sqs.eu-west-1.amazonaws.com");
        assert_eq!(
            ServiceEndpoints::aws("cn-north-1").sqs,
            "https://sqs.cn-north-1.amazonaws.com.cn"
        );
        assert_eq!(
            ServiceEndpoints::single("http://127.0.0.1:5000").sns,
            "http://127.0.0.1:5000"
        );
    }

    #[test]
    fn memory_double_detects_overlap() {
        let p = MemoryProvisioner::new();
        p.create_group(&spec("a/")).expect("first");
        let mut other = spec("a/b/");
        other.sync_id = "sync-2".into();
        assert!(matches!(
            p.create_group(&other),
            Err(ProvisionError::Conflict(_))
        ));
    }
}
