//! SNS administration (query protocol, XML answers): the topic behind an express sync group
//! and the subscriptions of its queues. Used by `sgw-control`'s provisioning; the agent itself
//! never talks to SNS (it reads the queue).

use quick_xml::events::Event;
use quick_xml::reader::Reader;

use super::CloudError;
use super::http::{ADMIN_ANSWER_LIMIT, Call, SignedClient, send_and_read};
use super::notification::push_ref;
use super::retry::RetryPolicy;
use super::sigv4::{self, Credentials};

const API_VERSION: &str = "2010-03-31";

pub struct SnsAdmin {
    http: SignedClient,
    retry: RetryPolicy,
}

impl SnsAdmin {
    pub fn new(
        endpoint: &str,
        allow_http: bool,
        credentials: Credentials,
        region: &str,
        retry: RetryPolicy,
    ) -> Result<SnsAdmin, String> {
        Ok(SnsAdmin {
            http: SignedClient::new(endpoint, allow_http, credentials, region, "sns")?,
            retry,
        })
    }

    fn call(&self, action: &str, params: &[(&str, &str)]) -> Result<String, CloudError> {
        let mut form = vec![("Action", action), ("Version", API_VERSION)];
        form.extend_from_slice(params);
        let body = sigv4::canonical_query(&form);
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
        let what = format!("SNS {action}");
        let bytes = send_and_read(&self.http, &self.retry, &what, &call, ADMIN_ANSWER_LIMIT)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Creates (or, SNS being idempotent on the name, finds) the topic; returns its ARN.
    pub fn create_topic(&self, name: &str) -> Result<String, CloudError> {
        let answer = self.call("CreateTopic", &[("Name", name)])?;
        first_element_text(&answer, "TopicArn")
            .ok_or_else(|| CloudError::Transport("SNS CreateTopic: no TopicArn in answer".into()))
    }

    pub fn set_topic_attribute(
        &self,
        topic_arn: &str,
        name: &str,
        value: &str,
    ) -> Result<(), CloudError> {
        self.call(
            "SetTopicAttributes",
            &[
                ("TopicArn", topic_arn),
                ("AttributeName", name),
                ("AttributeValue", value),
            ],
        )
        .map(drop)
    }

    /// Deletes the topic; one already gone is fine.
    pub fn delete_topic(&self, topic_arn: &str) -> Result<(), CloudError> {
        match self.call("DeleteTopic", &[("TopicArn", topic_arn)]) {
            Err(e) if !e.is_not_found() => Err(e),
            _ => Ok(()),
        }
    }

    /// Subscribes an SQS queue with raw delivery (the queue then receives the plain event
    /// JSON, not an SNS envelope); returns the subscription ARN.
    pub fn subscribe_queue_raw(
        &self,
        topic_arn: &str,
        queue_arn: &str,
    ) -> Result<String, CloudError> {
        let answer = self.call(
            "Subscribe",
            &[
                ("TopicArn", topic_arn),
                ("Protocol", "sqs"),
                ("Endpoint", queue_arn),
                ("Attributes.entry.1.key", "RawMessageDelivery"),
                ("Attributes.entry.1.value", "true"),
                ("ReturnSubscriptionArn", "true"),
            ],
        )?;
        first_element_text(&answer, "SubscriptionArn").ok_or_else(|| {
            CloudError::Transport("SNS Subscribe: no SubscriptionArn in answer".into())
        })
    }

    /// Removes a subscription; one already gone is fine.
    pub fn unsubscribe(&self, subscription_arn: &str) -> Result<(), CloudError> {
        match self.call("Unsubscribe", &[("SubscriptionArn", subscription_arn)]) {
            Err(e) if !e.is_not_found() => Err(e),
            _ => Ok(()),
        }
    }
}

/// Text of the first `<wanted>` element (TopicArn, SubscriptionArn) in an SNS answer.
pub fn first_element_text(xml: &str, wanted: &str) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_arn_and_resolves_entities() {
        let xml = "<CreateTopicResponse><CreateTopicResult><TopicArn>arn:aws:sns:us-east-1:1:a&amp;b</TopicArn></CreateTopicResult></CreateTopicResponse>";
        assert_eq!(
            first_element_text(xml, "TopicArn").as_deref(),
            Some("arn:aws:sns:us-east-1:1:a&b")
        );
        assert_eq!(first_element_text(xml, "SubscriptionArn"), None);
        assert_eq!(
            first_element_text("<a><TopicArn> </TopicArn></a>", "TopicArn"),
            None
        );
        assert_eq!(first_element_text("<a><TopicArn>x", "TopicArn"), None);
    }
}
