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

use quick_xml::events::Event;
use quick_xml::reader::Reader;

use sgw_agent::cloud::CloudError;
use sgw_agent::cloud::http::{Call, SignedClient, read_capped};
use sgw_agent::cloud::retry::{RetryPolicy, retry};
use sgw_agent::cloud::sigv4::Credentials;

/// Id prefix of the bucket notification rules we own.
pub const RULE_ID_PREFIX: &str = "sgw-express-sync-";
/// Largest provider answer we read.
const ANSWER_LIMIT: usize = 1024 * 1024;

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
// Bucket notification configuration: keep other rules verbatim, find overlaps.

/// One top-level rule of a `NotificationConfiguration`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationRule {
    /// The element as it was sent (re-sent unchanged).
    pub raw: String,
    pub id: String,
    pub events: Vec<String>,
    pub prefix: String,
}

impl NotificationRule {
    /// Events in the categories we use (`ObjectCreated`, `ObjectRemoved`, or `s3:*`).
    fn touches_our_events(&self) -> bool {
        self.events.iter().any(|e| {
            let e = e.trim();
            e == "s3:*" || e.starts_with("s3:ObjectCreated:") || e.starts_with("s3:ObjectRemoved:")
        })
    }

    /// True if this rule and one for `prefix` would both fire for some key.
    pub fn overlaps(&self, prefix: &str) -> bool {
        self.touches_our_events()
            && (self.prefix.starts_with(prefix) || prefix.starts_with(&self.prefix))
    }
}

/// Text of an element so far, with entity references resolved (quick-xml reports them apart).
fn push_ref(text: &mut String, r: &quick_xml::events::BytesRef<'_>) -> Result<(), String> {
    match r.resolve_char_ref() {
        Ok(Some(c)) => text.push(c),
        Ok(None) => text.push_str(
            quick_xml::escape::resolve_predefined_entity(r)
                .ok_or_else(|| format!("unknown entity &{};", &**r))?,
        ),
        Err(e) => return Err(format!("bad character reference: {e}")),
    }
    Ok(())
}

/// Splits a `NotificationConfiguration` document into its rules.
pub fn parse_notification_config(xml: &str) -> Result<Vec<NotificationRule>, ProvisionError> {
    let bad = |why: String| {
        ProvisionError::Failed(format!(
            "unreadable bucket notification configuration: {why}"
        ))
    };
    let mut reader = Reader::from_str(xml);
    let mut rules = Vec::new();
    let mut path: Vec<String> = Vec::new();
    let mut start = 0usize;
    let mut current: Option<NotificationRule> = None;
    let mut filter_name = String::new();
    let mut text = String::new();
    loop {
        let before = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
        let event = reader.read_event().map_err(|e| bad(e.to_string()))?;
        match event {
            Event::Start(e) => {
                let name = e.local_name().as_ref().to_string();
                if path.len() == 1 {
                    start = before;
                    current = Some(NotificationRule {
                        raw: String::new(),
                        id: String::new(),
                        events: Vec::new(),
                        prefix: String::new(),
                    });
                }
                path.push(name);
                text.clear();
                if path.len() > 16 {
                    return Err(bad("nested too deeply".into()));
                }
            }
            Event::Empty(_) if path.len() == 1 => {
                let end = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
                let raw = xml
                    .get(before..end)
                    .ok_or_else(|| bad("bad offsets".into()))?;
                rules.push(NotificationRule {
                    raw: raw.trim().to_string(),
                    id: String::new(),
                    events: Vec::new(),
                    prefix: String::new(),
                });
            }
            Event::Text(t) => text.push_str(&t.xml10_content()),
            Event::CData(t) => text.push_str(&t.xml10_content()),
            Event::GeneralRef(r) => push_ref(&mut text, &r).map_err(bad)?,
            Event::End(_) => {
                let value = std::mem::take(&mut text);
                if let (Some(rule), Some(leaf)) = (current.as_mut(), path.last()) {
                    let in_filter_rule = path.iter().any(|p| p == "FilterRule");
                    match (path.len(), leaf.as_str()) {
                        (3, "Id") => rule.id = value.trim().to_string(),
                        (3, "Event") => rule.events.push(value.trim().to_string()),
                        (_, "Name") if in_filter_rule => {
                            filter_name = value.trim().to_ascii_lowercase()
                        }
                        (_, "Value") if in_filter_rule && filter_name == "prefix" => {
                            rule.prefix = value
                        }
                        _ => {}
                    }
                }
                path.pop();
                if path.len() == 1
                    && let Some(mut rule) = current.take()
                {
                    let end = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
                    rule.raw = xml
                        .get(start..end)
                        .ok_or_else(|| bad("bad offsets".into()))?
                        .trim()
                        .to_string();
                    rules.push(rule);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !path.is_empty() {
        return Err(bad("document ends inside an element".into()));
    }
    Ok(rules)
}

fn xml_escape(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

/// Our rule for `spec` pointing at `topic_arn`.
pub fn our_rule_xml(spec: &GroupSpec, topic_arn: &str) -> String {
    let mut xml = format!(
        "<TopicConfiguration><Id>{}</Id><Topic>{}</Topic><Event>s3:ObjectCreated:*</Event><Event>s3:ObjectRemoved:*</Event>",
        xml_escape(&spec.rule_id()),
        xml_escape(topic_arn)
    );
    if !spec.bucket_prefix.is_empty() {
        xml.push_str(&format!(
            "<Filter><S3Key><FilterRule><Name>prefix</Name><Value>{}</Value></FilterRule></S3Key></Filter>",
            xml_escape(&spec.bucket_prefix)
        ));
    }
    xml.push_str("</TopicConfiguration>");
    xml
}

/// A configuration document holding `rules` (raw) in order.
pub fn notification_config_xml(rules: &[String]) -> String {
    let mut xml = String::from(
        "<NotificationConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">",
    );
    for rule in rules {
        xml.push_str(rule);
    }
    xml.push_str("</NotificationConfiguration>");
    xml
}

// ---------------------------------------------------------------------------------------------
// AWS protocol (S3 + SNS + SQS), e.g. moto in tests.

pub struct AwsProvisioner {
    s3: SignedClient,
    sns: SignedClient,
    sqs: SignedClient,
    endpoint: String,
    region: String,
    retry: RetryPolicy,
    /// Bucket notification changes are read-modify-write: one at a time.
    notification_lock: Mutex<()>,
}

/// Text of the first `<wanted>` element (TopicArn, SubscriptionArn) in an SNS answer.
fn first_element_text(xml: &str, wanted: &str) -> Option<String> {
    let mut reader = Reader::from_str(xml);
    let mut inside = false;
    let mut text = String::new();
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) => {
                inside = e.local_name().as_ref() == wanted;
                text.clear();
            }
            Event::Text(t) if inside => text.push_str(&t.xml10_content()),
            Event::GeneralRef(r) if inside => push_ref(&mut text, &r).ok()?,
            Event::End(_) if inside => {
                return Some(text.trim().to_string()).filter(|t| !t.is_empty());
            }
            Event::Eof => return None,
            _ => {}
        }
    }
}

impl AwsProvisioner {
    pub fn new(
        endpoint: &str,
        region: &str,
        allow_http: bool,
        credentials: Credentials,
    ) -> Result<AwsProvisioner, String> {
        let client =
            |service| SignedClient::new(endpoint, allow_http, credentials.clone(), region, service);
        Ok(AwsProvisioner {
            s3: client("s3")?,
            sns: client("sns")?,
            sqs: client("sqs")?,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            region: region.to_string(),
            retry: RetryPolicy {
                max_attempts: 4,
                base: Duration::from_millis(200),
                cap: Duration::from_secs(3),
            },
            notification_lock: Mutex::new(()),
        })
    }

    fn send(
        &self,
        client: &SignedClient,
        what: &str,
        call: &Call<'_>,
    ) -> Result<Vec<u8>, CloudError> {
        retry(&self.retry, what, &|| false, || {
            let response = client.send(call)?;
            read_capped(response.into_body(), ANSWER_LIMIT, what)
        })
    }

    fn sns(&self, action: &str, params: &[(&str, &str)]) -> Result<String, CloudError> {
        let mut form = vec![("Action", action), ("Version", "2010-03-31")];
        form.extend_from_slice(params);
        let body = sgw_agent::cloud::sigv4::canonical_query(&form);
        let call = Call {
            method: "POST",
            path: "/",
            query: &[],
            headers: &[(
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )],
            body: body.as_bytes(),
            read_timeout: None,
        };
        let bytes = self.send(&self.sns, &format!("SNS {action}"), &call)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn sqs(&self, action: &str, body: &serde_json::Value) -> Result<serde_json::Value, CloudError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| CloudError::Transport(format!("encoding {action}: {e}")))?;
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
        let bytes = self.send(&self.sqs, &format!("SQS {action}"), &call)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| CloudError::Transport(format!("SQS {action}: bad JSON answer: {e}")))
    }

    fn notification_rules(&self, bucket: &str) -> Result<Vec<NotificationRule>, ProvisionError> {
        let path = format!("/{bucket}");
        let call = Call {
            method: "GET",
            path: &path,
            query: &[("notification", "")],
            headers: &[],
            body: &[],
            read_timeout: None,
        };
        let bytes = self.send(
            &self.s3,
            &format!("S3 GetBucketNotificationConfiguration {bucket}"),
            &call,
        )?;
        parse_notification_config(&String::from_utf8_lossy(&bytes))
    }

    fn put_notification_rules(&self, bucket: &str, rules: &[String]) -> Result<(), ProvisionError> {
        let path = format!("/{bucket}");
        let body = notification_config_xml(rules);
        let call = Call {
            method: "PUT",
            path: &path,
            query: &[("notification", "")],
            headers: &[("content-type", "application/xml")],
            body: body.as_bytes(),
            read_timeout: None,
        };
        self.send(
            &self.s3,
            &format!("S3 PutBucketNotificationConfiguration {bucket}"),
            &call,
        )?;
        Ok(())
    }

    fn delete_topic(&self, topic_arn: &str) -> Result<(), CloudError> {
        match self.sns("DeleteTopic", &[("TopicArn", topic_arn)]) {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
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
        self.sns(
            "SetTopicAttributes",
            &[
                ("TopicArn", topic_arn),
                ("AttributeName", "Policy"),
                ("AttributeValue", &policy),
            ],
        )?;
        let _guard = self
            .notification_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let existing = self.notification_rules(&spec.bucket_name)?;
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
        rules.push(our_rule_xml(spec, topic_arn));
        self.put_notification_rules(&spec.bucket_name, &rules)
    }

    fn create_queue_inner(
        &self,
        queue_url: &str,
        topic_ref: &str,
    ) -> Result<QueueHandles, ProvisionError> {
        let attrs = self.sqs(
            "GetQueueAttributes",
            &serde_json::json!({"QueueUrl": queue_url, "AttributeNames": ["QueueArn"]}),
        )?;
        let queue_arn = attrs["Attributes"]["QueueArn"]
            .as_str()
            .ok_or_else(|| ProvisionError::Failed(format!("no QueueArn for {queue_url}")))?
            .to_string();
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
        self.sqs(
            "SetQueueAttributes",
            &serde_json::json!({"QueueUrl": queue_url, "Attributes": {"Policy": policy}}),
        )?;
        let answer = self.sns(
            "Subscribe",
            &[
                ("TopicArn", topic_ref),
                ("Protocol", "sqs"),
                ("Endpoint", &queue_arn),
                ("Attributes.entry.1.key", "RawMessageDelivery"),
                ("Attributes.entry.1.value", "true"),
                ("ReturnSubscriptionArn", "true"),
            ],
        )?;
        let subscription_ref = first_element_text(&answer, "SubscriptionArn").ok_or_else(|| {
            ProvisionError::Failed("Subscribe returned no SubscriptionArn".into())
        })?;
        Ok(QueueHandles {
            queue_url: queue_url.to_string(),
            queue_ref: queue_arn,
            subscription_ref,
        })
    }

    fn delete_queue_url(&self, queue_url: &str) -> Result<(), CloudError> {
        match self.sqs("DeleteQueue", &serde_json::json!({"QueueUrl": queue_url})) {
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

impl Provisioner for AwsProvisioner {
    fn create_group(&self, spec: &GroupSpec) -> Result<GroupHandles, ProvisionError> {
        let answer = self.sns("CreateTopic", &[("Name", &spec.topic_name)])?;
        let topic_arn = first_element_text(&answer, "TopicArn")
            .ok_or_else(|| ProvisionError::Failed("CreateTopic returned no TopicArn".into()))?;
        if let Err(e) = self.create_group_inner(spec, &topic_arn) {
            // Leave nothing behind: the group does not exist.
            if let Err(cleanup) = self.delete_topic(&topic_arn) {
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
            let _guard = self
                .notification_lock
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match self.notification_rules(&spec.bucket_name) {
                Ok(existing) => {
                    if existing.iter().any(|r| r.id == handles.notification_ref) {
                        let rest: Vec<String> = existing
                            .into_iter()
                            .filter(|r| r.id != handles.notification_ref)
                            .map(|r| r.raw)
                            .collect();
                        self.put_notification_rules(&spec.bucket_name, &rest)?;
                    }
                }
                // The bucket is gone, and its rules with it.
                Err(ProvisionError::NoSuchBucket(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.delete_topic(&handles.topic_ref)?;
        Ok(())
    }

    fn create_queue(
        &self,
        queue_name: &str,
        topic_ref: &str,
    ) -> Result<QueueHandles, ProvisionError> {
        let created = self.sqs("CreateQueue", &serde_json::json!({"QueueName": queue_name}))?;
        let queue_url = created["QueueUrl"]
            .as_str()
            .ok_or_else(|| ProvisionError::Failed("CreateQueue returned no QueueUrl".into()))?
            .to_string();
        match self.create_queue_inner(&queue_url, topic_ref) {
            Ok(handles) => Ok(handles),
            Err(e) => {
                if let Err(cleanup) = self.delete_queue_url(&queue_url) {
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
            match self.sns(
                "Unsubscribe",
                &[("SubscriptionArn", &handles.subscription_ref)],
            ) {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.delete_queue_url(&handles.queue_url)?;
        Ok(())
    }

    fn agent_endpoint(&self) -> (String, String) {
        (self.endpoint.clone(), self.region.clone())
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

    const EXISTING: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<NotificationConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <QueueConfiguration><Id>theirs</Id><Queue>arn:aws:sqs:us-east-1:1:q</Queue>
    <Event>s3:ObjectCreated:Put</Event>
    <Filter><S3Key><FilterRule><Name>Prefix</Name><Value>logs/&amp;x</Value></FilterRule>
      <FilterRule><Name>suffix</Name><Value>.gz</Value></FilterRule></S3Key></Filter>
  </QueueConfiguration>
  <TopicConfiguration><Id>restore</Id><Topic>arn:t</Topic><Event>s3:ObjectRestore:*</Event></TopicConfiguration>
  <EventBridgeConfiguration/>
</NotificationConfiguration>"#;

    fn spec(prefix: &str) -> GroupSpec {
        GroupSpec {
            sync_id: "sync-1".into(),
            bucket_name: "b".into(),
            bucket_prefix: prefix.into(),
            topic_name: "t".into(),
        }
    }

    #[test]
    fn parses_rules_and_keeps_them_verbatim() {
        let rules = parse_notification_config(EXISTING).expect("parses");
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[0].id, "theirs");
        assert_eq!(rules[0].events, vec!["s3:ObjectCreated:Put"]);
        assert_eq!(rules[0].prefix, "logs/&x");
        assert!(
            rules[0].raw.starts_with("<QueueConfiguration>")
                && rules[0].raw.ends_with("</QueueConfiguration>")
        );
        assert_eq!(rules[2].raw, "<EventBridgeConfiguration/>");
        // Re-serialised with ours appended, every foreign rule reads back the same.
        let mut raws: Vec<String> = rules.iter().map(|r| r.raw.clone()).collect();
        raws.push(our_rule_xml(&spec("data/"), "arn:topic"));
        let again = parse_notification_config(&notification_config_xml(&raws)).expect("parses");
        assert_eq!(&again[..3], &rules[..]);
        assert_eq!(again[3].id, "sgw-express-sync-sync-1");
        assert_eq!(again[3].prefix, "data/");
        assert_eq!(
            again[3].events,
            vec!["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]
        );
    }

    #[test]
    fn overlap_needs_both_events_and_prefixes() {
        let rules = parse_notification_config(EXISTING).expect("parses");
        assert!(rules[0].overlaps("logs/"), "ours is a prefix of theirs");
        assert!(rules[0].overlaps(""), "whole bucket covers theirs");
        assert!(rules[0].overlaps("logs/&x/deeper"), "theirs covers ours");
        assert!(!rules[0].overlaps("data/"));
        assert!(!rules[1].overlaps(""), "restore events are not ours");
    }

    #[test]
    fn refuses_hostile_configuration_documents() {
        assert!(parse_notification_config("<a><b></a>").is_err());
        let deep = format!("{}{}", "<a>".repeat(40), "</a>".repeat(40));
        assert!(parse_notification_config(&deep).is_err());
        // Escapes in our own values cannot break out of the element.
        let evil = our_rule_xml(&spec("</Value></FilterRule><x>"), "arn");
        let parsed = parse_notification_config(&notification_config_xml(&[evil])).expect("parses");
        assert_eq!(parsed[0].prefix, "</Value></FilterRule><x>");
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
