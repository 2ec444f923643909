//! The agent <-> control protocol: JSON bodies of the agent-facing endpoints, shared by the
//! server here and the agent's client. Requests are signed with
//! [`super::auth::sign_agent_request`].
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredShare {
    /// Share name, unique per gateway: 1-128 of `A-Z a-z 0-9 . _ -`.
    pub name: String,
    pub bucket_region: String,
    pub bucket_name: String,
    #[serde(default)]
    pub bucket_prefix: String,
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
