//! S3 event notification bodies (as SQS delivers them) → [`BucketEvent`]s.
//!
//! A queue message body is one of (protocols.md §B1, §B1.1):
//! - raw S3 event JSON, `{"Records":[…]}` (direct S3→SQS, or SNS with raw delivery);
//! - an SNS envelope, `{"Type":"Notification","Message":"<the S3 JSON as a string>",…}`;
//! - the S3 test event, `{"Event":"s3:TestEvent",…}` (raw or inside SNS);
//! - an SNS `SubscriptionConfirmation` / `UnsubscribeConfirmation`, which we do not act on.
//!
//! Everything here is a pure function of the body; no input makes it panic.

use std::fmt;

use serde_json::{Map, Value};

use crate::model::{BucketEvent, EventKind};

/// Largest body we parse. SQS caps messages at 256 KiB and S3 notifications at 64 KB, so
/// anything larger did not come from S3 and is not worth the memory.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// S3's object key limit (bytes, UTF-8). A longer decoded key cannot be a real object.
pub const MAX_KEY_BYTES: usize = 1024;

/// Longest `sequencer` we accept. AWS sends 18 hex digits; the bound only stops a hostile
/// message from planting a huge string in the state store.
pub const MAX_SEQUENCER_LEN: usize = 64;

/// The only `eventVersion` major we understand (§B1: require an equal major).
const SUPPORTED_MAJOR_VERSION: u64 = 2;

/// What a queue message turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParsedMessage {
    /// Bucket changes (possibly none, for `"Records": []`).
    Events(Vec<BucketEvent>),
    /// `s3:TestEvent`, sent once when notifications are configured: delete it.
    TestEvent,
    /// A well-formed message that is not for us; the string says why (for the log).
    Ignored(String),
}

/// Why a message body could not be understood.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventParseError {
    /// The body is larger than [`MAX_BODY_BYTES`].
    TooLarge { len: usize },
    /// Not JSON (or the SNS `Message` string is not JSON). Carries serde_json's description.
    InvalidJson {
        context: &'static str,
        detail: String,
    },
    /// Valid JSON that is not any message shape we know.
    UnknownShape(String),
    /// An SNS envelope whose `Message` is itself an SNS envelope: we unwrap one level only.
    NestedEnvelope,
    /// `eventVersion` missing, malformed or with a major version other than 2.
    UnsupportedVersion { record: usize, version: String },
    /// A field is missing or has the wrong type or an invalid value.
    BadField {
        record: usize,
        field: &'static str,
        detail: String,
    },
}

impl fmt::Display for EventParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventParseError::TooLarge { len } => {
                write!(
                    f,
                    "message body is {len} bytes, larger than the {MAX_BODY_BYTES}-byte limit"
                )
            }
            EventParseError::InvalidJson { context, detail } => {
                write!(f, "{context} is not valid JSON: {detail}")
            }
            EventParseError::UnknownShape(why) => {
                write!(f, "not an S3 event, test event or SNS envelope: {why}")
            }
            EventParseError::NestedEnvelope => {
                write!(
                    f,
                    "SNS envelope inside an SNS envelope; only one level is unwrapped"
                )
            }
            EventParseError::UnsupportedVersion { record, version } => write!(
                f,
                "Records[{record}]: eventVersion {version:?} is not supported (need major version \
                 {SUPPORTED_MAJOR_VERSION})"
            ),
            EventParseError::BadField {
                record,
                field,
                detail,
            } => {
                write!(f, "Records[{record}]: {field}: {detail}")
            }
        }
    }
}

impl std::error::Error for EventParseError {}

/// Parse one queue message body.
pub fn parse_message(body: &str) -> Result<ParsedMessage, EventParseError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(EventParseError::TooLarge { len: body.len() });
    }
    let value = parse_json(body, "message body")?;
    let top = as_object(&value, "message body")?;

    if let Some(kind) = top.get("Type") {
        let kind = kind
            .as_str()
            .ok_or_else(|| EventParseError::UnknownShape("\"Type\" is not a string".to_string()))?;
        return parse_sns(kind, top);
    }
    parse_s3_payload(top)
}

fn parse_json(text: &str, context: &'static str) -> Result<Value, EventParseError> {
    // serde_json limits nesting depth (128), so hostile deep nesting errors instead of
    // overflowing the stack.
    serde_json::from_str(text).map_err(|e| EventParseError::InvalidJson {
        context,
        detail: e.to_string(),
    })
}

fn as_object<'a>(value: &'a Value, what: &str) -> Result<&'a Map<String, Value>, EventParseError> {
    value
        .as_object()
        .ok_or_else(|| EventParseError::UnknownShape(format!("{what} is not a JSON object")))
}

/// An SNS envelope: unwrap `Notification` once, ignore the subscription handshakes.
fn parse_sns(kind: &str, envelope: &Map<String, Value>) -> Result<ParsedMessage, EventParseError> {
    match kind {
        "Notification" => {}
        // The queue's subscription is created by the control endpoint; confirming it is not
        // the agent's job.
        "SubscriptionConfirmation" | "UnsubscribeConfirmation" => {
            return Ok(ParsedMessage::Ignored(format!("SNS {kind} message")));
        }
        other => {
            return Ok(ParsedMessage::Ignored(format!(
                "SNS message of unknown Type {:?}",
                clip(other)
            )));
        }
    }
    let inner_text = envelope
        .get("Message")
        .ok_or_else(|| {
            EventParseError::UnknownShape("SNS Notification without \"Message\"".into())
        })?
        .as_str()
        .ok_or_else(|| {
            EventParseError::UnknownShape("SNS \"Message\" is not a string".to_string())
        })?;
    let inner = parse_json(inner_text, "SNS Message")?;
    let inner = as_object(&inner, "SNS Message")?;
    if inner.contains_key("Type") && !inner.contains_key("Records") {
        return Err(EventParseError::NestedEnvelope);
    }
    parse_s3_payload(inner)
}

/// The S3 part: `Records[]` or the test event.
fn parse_s3_payload(top: &Map<String, Value>) -> Result<ParsedMessage, EventParseError> {
    if let Some(records) = top.get("Records") {
        let records = records
            .as_array()
            .ok_or_else(|| EventParseError::UnknownShape("\"Records\" is not an array".into()))?;
        let events = records
            .iter()
            .enumerate()
            .map(|(index, record)| parse_record(index, record))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(ParsedMessage::Events(events));
    }
    if let Some(event) = top.get("Event") {
        return match event.as_str() {
            Some("s3:TestEvent") => Ok(ParsedMessage::TestEvent),
            Some(other) => Ok(ParsedMessage::Ignored(format!(
                "S3 message with Event {:?}",
                clip(other)
            ))),
            None => Err(EventParseError::UnknownShape(
                "\"Event\" is not a string".into(),
            )),
        };
    }
    Err(EventParseError::UnknownShape(
        "no \"Records\", \"Event\" or \"Type\" field".into(),
    ))
}

fn parse_record(index: usize, record: &Value) -> Result<BucketEvent, EventParseError> {
    let bad = |field: &'static str, detail: String| EventParseError::BadField {
        record: index,
        field,
        detail,
    };
    let record = record
        .as_object()
        .ok_or_else(|| bad("record", "not a JSON object".into()))?;

    let version = required_str(index, record, "eventVersion")?;
    check_event_version(index, version)?;

    let event_name = required_str(index, record, "eventName")?;
    let kind = if event_name.starts_with("ObjectCreated:") {
        EventKind::Created
    } else if event_name.starts_with("ObjectRemoved:") {
        EventKind::Removed
    } else {
        EventKind::Other
    };

    let s3 = required_object(index, record, "s3")?;
    let bucket = required_object(index, s3, "s3.bucket")?;
    let bucket_name = required_str(index, bucket, "s3.bucket.name")?;
    let object = required_object(index, s3, "s3.object")?;
    let raw_key = required_str(index, object, "s3.object.key")?;
    let key = decode_key(raw_key).map_err(|why| bad("s3.object.key", why))?;

    let size = match object.get("size") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            bad(
                "s3.object.size",
                format!("not a non-negative integer: {}", clip(&v.to_string())),
            )
        })?),
    };
    let etag = optional_str(index, object, "s3.object.eTag")?
        .map(|raw| raw.trim_matches('"').to_ascii_lowercase())
        .filter(|etag| !etag.is_empty());
    let sequencer = optional_str(index, object, "s3.object.sequencer")?
        .map(|raw| normalise_sequencer(raw).map_err(|why| bad("s3.object.sequencer", why)))
        .transpose()?;
    // versionId is optional and unused: the agent mirrors the current version, which HEAD tells.
    optional_str(index, object, "s3.object.versionId")?;

    Ok(BucketEvent {
        bucket: bucket_name.to_string(),
        key,
        kind,
        event_name: event_name.to_string(),
        size,
        etag,
        sequencer,
    })
}

/// `major.minor` (or a bare major), digits only; major must be 2. Any minor is accepted:
/// newer minors only add fields, which we ignore.
fn check_event_version(index: usize, version: &str) -> Result<(), EventParseError> {
    let unsupported = || EventParseError::UnsupportedVersion {
        record: index,
        version: clip(version),
    };
    let (major, minor) = match version.split_once('.') {
        Some((major, minor)) => (major, Some(minor)),
        None => (version, None),
    };
    let all_digits =
        |s: &str| !s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(major) || minor.is_some_and(|m| !all_digits(m)) {
        return Err(unsupported());
    }
    match major.parse::<u64>() {
        Ok(SUPPORTED_MAJOR_VERSION) => Ok(()),
        _ => Err(unsupported()),
    }
}

/// Form-URL decoding, in the order §B1 requires: `+` → space first, then percent-decode, then
/// insist on UTF-8 (so `%2B` survives as `+` and moto's `%2F` becomes `/`).
fn decode_key(raw: &str) -> Result<String, String> {
    let spaced = raw.replace('+', " ");
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(&spaced).collect();
    let key = String::from_utf8(bytes)
        .map_err(|_| "not valid UTF-8 after percent-decoding".to_string())?;
    if key.is_empty() {
        return Err("empty key".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "decoded key is {} bytes, over the {MAX_KEY_BYTES}-byte limit",
            key.len()
        ));
    }
    Ok(key)
}

/// Upper-case hex of bounded length. A non-hex sequencer would sort unpredictably and could
/// make every later event look stale, so it is refused rather than stored.
fn normalise_sequencer(raw: &str) -> Result<String, String> {
    if raw.is_empty() || raw.len() > MAX_SEQUENCER_LEN {
        return Err(format!(
            "length {} is not within 1..={MAX_SEQUENCER_LEN}",
            raw.len()
        ));
    }
    if !raw.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{:?} is not hexadecimal", clip(raw)));
    }
    Ok(raw.to_ascii_uppercase())
}

fn required_str<'a>(
    index: usize,
    map: &'a Map<String, Value>,
    field: &'static str,
) -> Result<&'a str, EventParseError> {
    optional_str(index, map, field)?.ok_or(EventParseError::BadField {
        record: index,
        field,
        detail: "missing".into(),
    })
}

/// `field` is a dotted path for messages; the lookup uses its last segment.
fn optional_str<'a>(
    index: usize,
    map: &'a Map<String, Value>,
    field: &'static str,
) -> Result<Option<&'a str>, EventParseError> {
    match map.get(last_segment(field)) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(EventParseError::BadField {
            record: index,
            field,
            detail: format!("expected a string, got {}", type_name(other)),
        }),
    }
}

fn required_object<'a>(
    index: usize,
    map: &'a Map<String, Value>,
    field: &'static str,
) -> Result<&'a Map<String, Value>, EventParseError> {
    match map.get(last_segment(field)) {
        Some(Value::Object(inner)) => Ok(inner),
        None | Some(Value::Null) => Err(EventParseError::BadField {
            record: index,
            field,
            detail: "missing".into(),
        }),
        Some(other) => Err(EventParseError::BadField {
            record: index,
            field,
            detail: format!("expected an object, got {}", type_name(other)),
        }),
    }
}

fn last_segment(field: &str) -> &str {
    field.rsplit('.').next().unwrap_or(field)
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Message-derived text quoted in errors and logs is kept short.
fn clip(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from the AWS documentation (protocols.md §B1).
    const AWS_DOC_EXAMPLE: &str = r#"{ "Records": [ {
      "eventVersion": "2.1",
      "eventSource": "aws:s3",
      "awsRegion": "us-west-2",
      "eventTime": "1970-01-01T00:00:00.000Z",
      "eventName": "ObjectCreated:Put",
      "userIdentity": { "principalId": "AIDAJDPLRKLG7UEXAMPLE" },
      "requestParameters": { "sourceIPAddress": "127.0.0.1" },
      "responseElements": { "x-amz-request-id": "C3D13FE58DE4C810",
                            "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD" },
      "s3": {
        "s3SchemaVersion": "1.0",
        "configurationId": "testConfigRule",
        "bucket": { "name": "mybucket", "ownerIdentity": { "principalId": "A3NL1KOZZKExample" },
                    "arn": "arn:aws:s3:::mybucket" },
        "object": { "key": "HappyFace.jpg", "size": 1024,
                    "eTag": "d41d8cd98f00b204e9800998ecf8427e",
                    "versionId": "096fKKXTRTtl3on89fVO.nfljtsv6qko",
                    "sequencer": "0055AED6DCD90281E5" }
      }
    } ] }"#;

    fn record_with(name: &str, object: &str) -> String {
        format!(
            r#"{{"Records":[{{"eventVersion":"2.1","eventName":"{name}",
               "s3":{{"bucket":{{"name":"b"}},"object":{object}}}}}]}}"#
        )
    }

    fn key_record(raw_key: &str) -> String {
        record_with("ObjectCreated:Put", &format!(r#"{{"key":"{raw_key}"}}"#))
    }

    fn sns_wrap(inner: &str) -> String {
        serde_json::json!({
            "Type": "Notification",
            "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
            "TopicArn": "arn:aws:sns:us-west-2:123456789012:MyTopic",
            "Subject": "Amazon S3 Notification",
            "Message": inner,
            "Timestamp": "2012-05-02T00:54:06.655Z",
            "SignatureVersion": "1",
            "Signature": "EXAMPLE",
            "SigningCertURL": "https://sns.us-west-2.amazonaws.com/x.pem",
            "UnsubscribeURL": "https://sns.us-west-2.amazonaws.com/?Action=Unsubscribe"
        })
        .to_string()
    }

    fn single_event(body: &str) -> BucketEvent {
        match parse_message(body) {
            Ok(ParsedMessage::Events(mut events)) if events.len() == 1 => events.remove(0),
            other => panic!("expected one event, got {other:?}"),
        }
    }

    fn error_text(body: &str) -> String {
        match parse_message(body) {
            Err(e) => e.to_string(),
            Ok(other) => panic!("expected an error, got {other:?}"),
        }
    }

    fn doc_example_event() -> BucketEvent {
        BucketEvent {
            bucket: "mybucket".into(),
            key: "HappyFace.jpg".into(),
            kind: EventKind::Created,
            event_name: "ObjectCreated:Put".into(),
            size: Some(1024),
            etag: Some("d41d8cd98f00b204e9800998ecf8427e".into()),
            sequencer: Some("0055AED6DCD90281E5".into()),
        }
    }

    #[test]
    fn aws_documentation_example_parses_field_by_field() {
        assert_eq!(single_event(AWS_DOC_EXAMPLE), doc_example_event());
    }

    #[test]
    fn sns_wrapped_event_equals_raw_event() {
        assert_eq!(
            single_event(&sns_wrap(AWS_DOC_EXAMPLE)),
            doc_example_event()
        );
    }

    #[test]
    fn test_event_raw_and_inside_sns() {
        let test_event = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"2014-10-13T15:57:02.089Z",
            "Bucket":"bucketname","RequestId":"5582815E1AEA5ADF","HostId":"8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE"}"#;
        assert_eq!(parse_message(test_event), Ok(ParsedMessage::TestEvent));
        assert_eq!(
            parse_message(&sns_wrap(test_event)),
            Ok(ParsedMessage::TestEvent)
        );
    }

    #[test]
    fn sns_subscription_confirmation_is_ignored_with_a_reason() {
        let body = r#"{"Type":"SubscriptionConfirmation","MessageId":"x","Token":"t",
            "TopicArn":"arn:aws:sns:us-east-1:1:t","Message":"You have chosen to subscribe...",
            "SubscribeURL":"https://sns.example/?Action=ConfirmSubscription"}"#;
        match parse_message(body) {
            Ok(ParsedMessage::Ignored(why)) => assert!(why.contains("SubscriptionConfirmation")),
            other => panic!("expected Ignored, got {other:?}"),
        }
    }

    #[test]
    fn nested_sns_envelope_is_refused() {
        let twice = sns_wrap(&sns_wrap(AWS_DOC_EXAMPLE));
        assert_eq!(parse_message(&twice), Err(EventParseError::NestedEnvelope));
    }

    #[test]
    fn moto_style_keys_decode_percent_encoded_slashes() {
        let event = single_event(&key_record("photos%2F2024%2Fcat.jpg"));
        assert_eq!(event.key, "photos/2024/cat.jpg");
    }

    #[test]
    fn plus_means_space_and_percent_2b_means_plus() {
        assert_eq!(
            single_event(&key_record("red+flower.jpg")).key,
            "red flower.jpg"
        );
        assert_eq!(single_event(&key_record("a%2Bb")).key, "a+b");
        assert_eq!(single_event(&key_record("a%2B+b%20c")).key, "a+ b c");
    }

    #[test]
    fn utf8_keys_decode() {
        assert_eq!(
            single_event(&key_record("caf%C3%A9%2F%E2%82%AC")).key,
            "café/€"
        );
    }

    #[test]
    fn invalid_utf8_after_decoding_is_an_error() {
        let text = error_text(&key_record("bad%FF%FEkey"));
        assert!(
            text.contains("s3.object.key") && text.contains("UTF-8"),
            "{text}"
        );
    }

    #[test]
    fn empty_and_oversized_keys_are_errors() {
        assert!(error_text(&key_record("")).contains("empty key"));
        let long = "a".repeat(MAX_KEY_BYTES + 1);
        assert!(error_text(&key_record(&long)).contains("limit"));
        // The limit is on the decoded key: 1024 bytes encoded as %61 is fine.
        let encoded_but_short = "%61".repeat(MAX_KEY_BYTES);
        assert_eq!(
            single_event(&key_record(&encoded_but_short)).key.len(),
            MAX_KEY_BYTES
        );
    }

    #[test]
    fn event_names_map_to_kinds() {
        let kind = |name: &str| single_event(&record_with(name, r#"{"key":"k"}"#)).kind;
        assert_eq!(
            kind("ObjectCreated:CompleteMultipartUpload"),
            EventKind::Created
        );
        assert_eq!(
            kind("ObjectRemoved:DeleteMarkerCreated"),
            EventKind::Removed
        );
        assert_eq!(kind("ObjectRestore:Completed"), EventKind::Other);
        // The `s3:` prefix belongs to configuration names, not to eventName.
        assert_eq!(kind("s3:ObjectCreated:Put"), EventKind::Other);
    }

    #[test]
    fn removed_event_without_size_or_etag_is_fine() {
        let event = single_event(&record_with(
            "ObjectRemoved:Delete",
            r#"{"key":"gone.txt","sequencer":"0055aed6dcd90281e6"}"#,
        ));
        assert_eq!(event.kind, EventKind::Removed);
        assert_eq!((event.size, event.etag), (None, None));
        assert_eq!(event.sequencer.as_deref(), Some("0055AED6DCD90281E6"));
    }

    #[test]
    fn quoted_etag_is_unquoted_and_lower_cased() {
        let event = single_event(&record_with(
            "ObjectCreated:Put",
            r#"{"key":"k","eTag":"\"ABC123-2\""}"#,
        ));
        assert_eq!(event.etag.as_deref(), Some("abc123-2"));
    }

    #[test]
    fn event_versions() {
        let with_version = |v: &str| {
            format!(
                r#"{{"Records":[{{"eventVersion":"{v}","eventName":"ObjectCreated:Put",
                   "s3":{{"bucket":{{"name":"b"}},"object":{{"key":"k"}}}}}}]}}"#
            )
        };
        for ok in ["2.0", "2.1", "2.3", "2.6", "2.10", "2"] {
            assert!(
                parse_message(&with_version(ok)).is_ok(),
                "{ok} should be accepted"
            );
        }
        for bad in [
            "1.0",
            "3.0",
            "",
            "2.",
            ".1",
            "x.1",
            "2.1.1",
            "-2.0",
            "02a",
            "99999999999999999999.0",
        ] {
            let text = error_text(&with_version(bad));
            assert!(text.contains("eventVersion"), "{bad}: {text}");
        }
        let missing = r#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"k"}}}]}"#;
        assert!(error_text(missing).contains("eventVersion: missing"));
        let number = r#"{"Records":[{"eventVersion":2.1,"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"k"}}}]}"#;
        assert!(error_text(number).contains("eventVersion: expected a string"));
    }

    #[test]
    fn empty_records_is_no_events() {
        assert_eq!(
            parse_message(r#"{"Records":[]}"#),
            Ok(ParsedMessage::Events(vec![]))
        );
    }

    #[test]
    fn several_records_keep_their_order() {
        let body = format!(
            r#"{{"Records":[{a},{b}]}}"#,
            a = r#"{"eventVersion":"2.1","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"one"}}}"#,
            b = r#"{"eventVersion":"2.1","eventName":"ObjectRemoved:Delete","s3":{"bucket":{"name":"b"},"object":{"key":"two"}}}"#,
        );
        match parse_message(&body) {
            Ok(ParsedMessage::Events(events)) => {
                let keys: Vec<_> = events.iter().map(|e| (e.key.as_str(), e.kind)).collect();
                assert_eq!(
                    keys,
                    [("one", EventKind::Created), ("two", EventKind::Removed)]
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_json_is_an_error_not_a_panic() {
        for cut in [1, 10, AWS_DOC_EXAMPLE.len() / 2, AWS_DOC_EXAMPLE.len() - 1] {
            let text = error_text(&AWS_DOC_EXAMPLE[..cut]);
            assert!(text.contains("not valid JSON"), "cut at {cut}: {text}");
        }
        assert!(error_text("").contains("not valid JSON"));
    }

    #[test]
    fn wrong_types_name_the_field() {
        let cases = [
            (
                r#"{"key":123}"#,
                "s3.object.key: expected a string, got a number",
            ),
            (
                r#"{"key":"k","size":"12"}"#,
                "s3.object.size: not a non-negative integer",
            ),
            (
                r#"{"key":"k","size":-1}"#,
                "s3.object.size: not a non-negative integer",
            ),
            (
                r#"{"key":"k","size":1.5}"#,
                "s3.object.size: not a non-negative integer",
            ),
            (
                r#"{"key":"k","eTag":["x"]}"#,
                "s3.object.eTag: expected a string, got an array",
            ),
            (
                r#"{"key":"k","sequencer":"XYZ"}"#,
                "s3.object.sequencer: \"XYZ\" is not hexadecimal",
            ),
            (
                r#"{"key":"k","sequencer":""}"#,
                "s3.object.sequencer: length 0",
            ),
            (
                r#""a string""#,
                "s3.object: expected an object, got a string",
            ),
        ];
        for (object, expected) in cases {
            let text = error_text(&record_with("ObjectCreated:Put", object));
            assert!(text.contains(expected), "{object}: {text}");
        }
        assert!(error_text(r#"{"Records":{}}"#).contains("\"Records\" is not an array"));
        assert!(
            error_text(r#"{"Records":[42]}"#).contains("Records[0]: record: not a JSON object")
        );
        assert!(
            error_text(r#"{"Type":"Notification","Message":{"Records":[]}}"#)
                .contains("not a string")
        );
        assert!(
            error_text(r#"{"Type":"Notification","Message":"{oops"}"#)
                .contains("SNS Message is not valid JSON")
        );
        assert!(error_text(r#"{"Type":7}"#).contains("\"Type\" is not a string"));
        assert!(error_text(r#"[1,2]"#).contains("not a JSON object"));
        assert!(error_text(r#"{"hello":"world"}"#).contains("no \"Records\""));
    }

    #[test]
    fn missing_bucket_or_key_is_an_error() {
        let no_bucket = r#"{"Records":[{"eventVersion":"2.1","eventName":"ObjectCreated:Put","s3":{"object":{"key":"k"}}}]}"#;
        assert!(error_text(no_bucket).contains("s3.bucket: missing"));
        assert!(
            error_text(&record_with("ObjectCreated:Put", "{}")).contains("s3.object.key: missing")
        );
    }

    #[test]
    fn one_bad_record_fails_the_whole_message_with_its_index() {
        let body = r#"{"Records":[
            {"eventVersion":"2.1","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"ok"}}},
            {"eventVersion":"2.1","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{}}}]}"#;
        assert!(error_text(body).starts_with("Records[1]:"));
    }

    #[test]
    fn huge_body_is_refused_before_parsing() {
        let padding = " ".repeat(MAX_BODY_BYTES);
        let body = format!("{AWS_DOC_EXAMPLE}{padding}");
        assert_eq!(
            parse_message(&body),
            Err(EventParseError::TooLarge { len: body.len() })
        );
        assert!(error_text(&body).contains("larger than"));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse_message(&deep[..MAX_BODY_BYTES.min(deep.len())]).is_err());
        let deep_in_key = format!(
            r#"{{"Records":[{{"x":{}1{}}}]}}"#,
            "[".repeat(50_000),
            "]".repeat(50_000)
        );
        assert!(parse_message(&deep_in_key).is_err());
    }

    #[test]
    fn unknown_fields_are_ignored_and_other_messages_reported() {
        let body = r#"{"Records":[{"eventVersion":"2.2","eventName":"ObjectCreated:Copy","glacierEventData":{},
            "s3":{"bucket":{"name":"b","extra":1},"object":{"key":"k","future":[1,2]}}}],"more":true}"#;
        assert_eq!(single_event(body).key, "k");
        match parse_message(r#"{"Event":"s3:SomethingElse"}"#) {
            Ok(ParsedMessage::Ignored(why)) => assert!(why.contains("s3:SomethingElse")),
            other => panic!("{other:?}"),
        }
    }

    /// What S3 does to a key in an event: `application/x-www-form-urlencoded`.
    fn form_encode(key: &str) -> String {
        percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC)
            .to_string()
            .replace("%20", "+")
    }

    proptest::proptest! {
        #[test]
        fn any_key_survives_form_encoding(key in "[ -~\u{80}-\u{10FFFF}]{1,200}") {
            let body = serde_json::json!({"Records": [{
                "eventVersion": "2.1", "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": "b"}, "object": {"key": form_encode(&key)}}
            }]})
            .to_string();
            proptest::prop_assert_eq!(single_event(&body).key, key);
        }

        #[test]
        fn arbitrary_bodies_never_panic(body in "\\PC{0,400}") {
            let _ = parse_message(&body);
        }

        #[test]
        fn corrupted_valid_bodies_never_panic(cut in 0usize..2000, byte in 0u8..128) {
            let mut body = sns_wrap(AWS_DOC_EXAMPLE).into_bytes();
            let at = cut % body.len();
            body[at] = byte;
            if let Ok(text) = String::from_utf8(body) {
                let _ = parse_message(&text);
            }
        }
    }
}
