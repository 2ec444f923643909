//! The agent <-> control protocol: JSON bodies of the agent-facing endpoints, shared by the
//! agent's client and the `sgw-control` server (which depends on this crate). Requests are signed with
//! [`super::sign::sign_agent_request`].
//!
//! | Method | Path | Body | Answer |
//! |---|---|---|---|
//! | POST | [`REGISTER_PATH`] | [`RegisterRequest`] | [`RegisterResponse`] |
//! | GET  | [`ASSIGNMENTS_PATH`] | empty | [`AssignmentsResponse`] |
//! | POST | [`PROGRESS_PATH`] | [`ProgressRequest`] | [`ProgressResponse`] |
//!
//! Errors are `{"Code","Message","RequestId"}` with a 4xx/5xx status ([`AgentError`]).

use serde::{Deserialize, Serialize};

pub const REGISTER_PATH: &str = "/agent/v1/register";
pub const ASSIGNMENTS_PATH: &str = "/agent/v1/assignments";
pub const PROGRESS_PATH: &str = "/agent/v1/progress";

/// Most shares one gateway may register or report at once.
pub const MAX_SHARES_PER_GATEWAY: usize = 256;

/// The states a share reports (`ExpressSyncState` in `DescribeExpressSyncShares`).
pub const SYNC_STATES: &[&str] = &[
    "MNSFullSyncInit",
    "MNSFullSyncing",
    "MNSHealthy",
    "QueueFailure",
    "TopicFailure",
    "TopicAndQueueFailure",
    "MNSNotEnabled",
];

/// One share as the agent has it configured.
///
/// A share is either *bound* (`bucket_region` and `bucket_name` both given: it may only join a
/// group on that bucket) or *unbound* (both absent, `null` or empty: the agent knows only its
/// local directory). An unbound share takes the bucket, region and prefix of the group an
/// operator adds it to, and is unbound again when it is removed from that group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredShare {
    /// Share name, unique per gateway: 1-128 of `A-Z a-z 0-9 . _ -`.
    pub name: String,
    /// Empty for an unbound share.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub bucket_region: String,
    /// Empty for an unbound share.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub bucket_name: String,
    /// Only for a bound share; an unbound share gets its group's prefix.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub bucket_prefix: String,
}

impl RegisteredShare {
    /// A share that takes its bucket from the group it is added to.
    pub fn unbound(name: &str) -> RegisteredShare {
        RegisteredShare {
            name: name.to_string(),
            bucket_region: String::new(),
            bucket_name: String::new(),
            bucket_prefix: String::new(),
        }
    }

    /// `false` when the share leaves its bucket to the control endpoint.
    pub fn is_bound(&self) -> bool {
        !self.bucket_name.is_empty() || !self.bucket_region.is_empty()
    }
}

/// `null` reads as "not given", the same as an absent field.
fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// `POST /agent/v1/register`: the gateway's shares. Replaces the registered set (shares left
/// out are forgotten unless they are in an express sync group).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// Shown as `GatewayName`; unchanged when absent.
    #[serde(default)]
    pub gateway_name: Option<String>,
    /// Shown as `GatewayRegion`; unchanged when absent.
    #[serde(default)]
    pub gateway_region: Option<String>,
    pub shares: Vec<RegisteredShare>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub gateway_id: String,
    /// Names of the shares now registered.
    pub shares: Vec<String>,
    /// How often to fetch assignments and send progress.
    pub poll_interval_secs: u64,
}

/// One share the agent must sync: everything it needs besides its own credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentEntry {
    pub share_name: String,
    pub express_sync_id: String,
    pub express_sync_name: String,
    pub bucket_region: String,
    pub bucket_name: String,
    /// The group's prefix (events arrive only for keys under it).
    pub bucket_prefix: String,
    pub queue_name: String,
    /// Absolute SQS queue URL.
    pub queue_url: String,
    /// S3/SQS endpoint URL and signing region.
    pub endpoint: String,
    pub region: String,
    /// Last state the control endpoint has for this share.
    pub express_sync_state: String,
    pub sync_progress: i64,
}

/// `GET /agent/v1/assignments`: the gateway's shares that are in a group. A share missing here
/// must stop syncing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentsResponse {
    pub gateway_id: String,
    pub poll_interval_secs: u64,
    pub assignments: Vec<AssignmentEntry>,
}

/// One share's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareProgress {
    pub share_name: String,
    /// -1 before any full sync, 0..=100 during, 100 after (-2: not supported).
    pub sync_progress: i64,
    /// One of [`SYNC_STATES`].
    pub express_sync_state: String,
    /// Set while the share has been in `error` or `queue_failure` for longer than the agent's
    /// `alert_after_secs`: since when and why (`ExpressSyncState` has no error state). Absent
    /// otherwise; older peers ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<String>,
    /// Two-way shares: the upload side's health (absent for a mirror, and from older agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploads: Option<UploadHealth>,
}

/// A two-way share's uploads, as reported to the control endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UploadHealth {
    pub pending: u64,
    pub in_flight: u64,
    pub done: u64,
    pub bytes: u64,
    pub conflicts: u64,
    pub last_error: Option<String>,
}

/// `POST /agent/v1/progress`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressRequest {
    pub shares: Vec<ShareProgress>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressResponse {
    /// Shares whose report was stored (they are in a group).
    pub applied: Vec<String>,
    /// Shares not in any group (nothing to report on).
    pub ignored: Vec<String>,
}

/// Error body of every agent endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentError {
    pub code: String,
    pub message: String,
    pub request_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_health_is_optional_both_ways() {
        let old: ShareProgress = serde_json::from_str(
            r#"{"share_name":"s","sync_progress":100,"express_sync_state":"MNSHealthy"}"#,
        )
        .expect("a report without uploads");
        assert_eq!(old.uploads, None);
        let text = serde_json::to_string(&old).expect("json");
        assert!(!text.contains("uploads"), "{text}");
        let two_way = ShareProgress {
            uploads: Some(UploadHealth {
                done: 3,
                ..UploadHealth::default()
            }),
            ..old
        };
        let back: ShareProgress =
            serde_json::from_str(&serde_json::to_string(&two_way).expect("json")).expect("parse");
        assert_eq!(back, two_way);
    }

    fn parse(json: &str) -> Result<RegisteredShare, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn a_share_without_a_bucket_reads_as_unbound() {
        for json in [
            r#"{"name":"s"}"#,
            r#"{"name":"s","bucket_region":null,"bucket_name":null,"bucket_prefix":null}"#,
            r#"{"name":"s","bucket_region":"","bucket_name":"","bucket_prefix":""}"#,
        ] {
            let share = parse(json).expect(json);
            assert_eq!(share, RegisteredShare::unbound("s"), "{json}");
            assert!(!share.is_bound(), "{json}");
        }
        let bound =
            parse(r#"{"name":"s","bucket_region":"us-east-1","bucket_name":"b1"}"#).expect("bound");
        assert!(bound.is_bound());
        // Half a bucket still counts as bound, so the server checks (and refuses) it.
        assert!(
            parse(r#"{"name":"s","bucket_region":"us-east-1"}"#)
                .expect("half")
                .is_bound()
        );
        // What the agent sends for an unbound share reads back the same.
        let sent = serde_json::to_string(&RegisteredShare::unbound("s")).expect("json");
        assert_eq!(
            parse(&sent).expect("round trip"),
            RegisteredShare::unbound("s")
        );
    }

    #[test]
    fn wrong_types_are_errors_not_unbound_shares() {
        for json in [
            r#"{"name":"s","bucket_name":5}"#,
            r#"{"name":"s","bucket_name":["b1"]}"#,
            r#"{"name":"s","bucket_region":{"r":"us-east-1"}}"#,
            r#"{"name":"s","bucket_prefix":false}"#,
            r#"{"bucket_name":"b1"}"#,
            r#"{"name":null}"#,
        ] {
            assert!(parse(json).is_err(), "{json}");
        }
    }
}
