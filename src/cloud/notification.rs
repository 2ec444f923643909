//! S3 bucket notification configuration: read the rules a bucket has, keep every foreign rule
//! byte for byte, add or remove ours, and tell whether two rules would fire for the same key.
//! `sgw-control` provisions an express sync group's rule through this; the agent never edits a
//! bucket's configuration.

use quick_xml::events::Event;
use quick_xml::reader::Reader;

use super::CloudError;
use super::http::{ADMIN_ANSWER_LIMIT, Call, SignedClient, send_and_read};
use super::retry::RetryPolicy;
use super::sigv4::Credentials;

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
pub(super) fn push_ref(
    text: &mut String,
    r: &quick_xml::events::BytesRef<'_>,
) -> Result<(), String> {
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
pub fn parse_notification_config(xml: &str) -> Result<Vec<NotificationRule>, CloudError> {
    let bad = |why: String| {
        CloudError::Transport(format!(
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

/// A rule `id` sending every create and remove event under `prefix` to the SNS topic.
pub fn topic_rule_xml(id: &str, topic_arn: &str, prefix: &str) -> String {
    let mut xml = format!(
        "<TopicConfiguration><Id>{}</Id><Topic>{}</Topic><Event>s3:ObjectCreated:*</Event><Event>s3:ObjectRemoved:*</Event>",
        xml_escape(id),
        xml_escape(topic_arn)
    );
    if !prefix.is_empty() {
        xml.push_str(&format!(
            "<Filter><S3Key><FilterRule><Name>prefix</Name><Value>{}</Value></FilterRule></S3Key></Filter>",
            xml_escape(prefix)
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

/// Reads and writes a bucket's notification configuration (`?notification`).
pub struct BucketNotifications {
    http: SignedClient,
    retry: RetryPolicy,
}

impl BucketNotifications {
    pub fn new(
        s3_endpoint: &str,
        allow_http: bool,
        credentials: Credentials,
        region: &str,
        retry: RetryPolicy,
    ) -> Result<BucketNotifications, String> {
        Ok(BucketNotifications {
            http: SignedClient::new(s3_endpoint, allow_http, credentials, region, "s3")?,
            retry,
        })
    }

    pub fn rules(&self, bucket: &str) -> Result<Vec<NotificationRule>, CloudError> {
        let path = format!("/{bucket}");
        let call = Call {
            method: "GET",
            path: &path,
            query: &[("notification", "")],
            headers: &[],
            body: &[],
            read_timeout: None,
        };
        let what = format!("S3 GetBucketNotificationConfiguration {bucket}");
        let bytes = send_and_read(&self.http, &self.retry, &what, &call, ADMIN_ANSWER_LIMIT)?;
        parse_notification_config(&String::from_utf8_lossy(&bytes))
    }

    /// Replaces the configuration with `rules` (raw elements, in order).
    pub fn put_rules(&self, bucket: &str, rules: &[String]) -> Result<(), CloudError> {
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
        let what = format!("S3 PutBucketNotificationConfiguration {bucket}");
        send_and_read(&self.http, &self.retry, &what, &call, ADMIN_ANSWER_LIMIT).map(drop)
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
        raws.push(topic_rule_xml(
            "sgw-express-sync-sync-1",
            "arn:topic",
            "data/",
        ));
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
        let evil = topic_rule_xml("id", "arn", "</Value></FilterRule><x>");
        let parsed = parse_notification_config(&notification_config_xml(&[evil])).expect("parses");
        assert_eq!(parsed[0].prefix, "</Value></FilterRule><x>");
    }
}
