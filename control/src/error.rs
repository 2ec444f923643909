//! The API's errors: HTTP status, code and message exactly as the seed documents list them
//! (and, for the ones the seeds do not list, as the Alibaba Cloud API family words them).

use std::fmt;

/// One error answer: `{"RequestId","HostId","Code","Message"}` with this HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.to_string(),
            message: message.into(),
        }
    }

    // --- CreateExpressSync (seed 002) ---
    pub fn empty_express_sync_name() -> ApiError {
        ApiError::new(
            400,
            "EmptyExpressSyncName",
            "You must enter a valid name for the sync group.",
        )
    }
    pub fn empty_bucket_name() -> ApiError {
        ApiError::new(
            400,
            "EmptyBucketName",
            "You must enter a valid name for the bucket.",
        )
    }
    pub fn empty_bucket_region() -> ApiError {
        ApiError::new(
            400,
            "EmptyBucketRegion",
            "You must specify a valid region for the bucket.",
        )
    }
    pub fn invalid_express_sync_name() -> ApiError {
        ApiError::new(
            400,
            "InvalidExpressSyncName",
            "The specified name for the sync group is invalid. The name must be 1 to 128 characters \
             in length and can contain letters, digits, periods (.), underscores (_), and hyphens (-). \
             The name must start with a letter.",
        )
    }
    pub fn description_over_limit() -> ApiError {
        ApiError::new(
            400,
            "DescriptionOverLimit",
            "The length of the specified gateway description exceeds the maximum limit. The \
             description cannot exceed 255 characters.",
        )
    }
    pub fn duplicate_express_sync_name() -> ApiError {
        ApiError::new(
            400,
            "DuplicateExpressSyncName",
            "The specified name of the sync group already exists. Try again later after you specify \
             a valid parameter.",
        )
    }
    pub fn conflict_express_sync_config() -> ApiError {
        ApiError::new(
            400,
            "ConflictExpressSyncConfig",
            "The parameter you specified for the sync group is invalid. Try again later after you \
             specify a valid parameter.",
        )
    }
    pub fn notification_event_limit_exceed() -> ApiError {
        ApiError::new(
            400,
            "ExpressSyncNotificationEventLimitExceed",
            "The number of sync groups exceeds the maximum limit. If you want to add more sync \
             groups, we recommend that you submit a ticket to apply for the whitelist permission.",
        )
    }
    pub fn invalid_region_id() -> ApiError {
        ApiError::new(
            400,
            "InvalidRegionId",
            "The specified RegionId does not exist. You must specify a valid RegionId.",
        )
    }
    pub fn invalid_bucket_name() -> ApiError {
        ApiError::new(
            400,
            "InvalidBucketName",
            "The specified bucket name is invalid. You must enter a valid bucket name.",
        )
    }
    pub fn notification_event_conflict() -> ApiError {
        ApiError::new(
            400,
            "ExpressSyncNotificationEventConflict",
            "The express sync configuration of bucket and prefix conflicts with existing \
             notification events in MNS.",
        )
    }
    pub fn no_permission() -> ApiError {
        ApiError::new(
            403,
            "NoPermission",
            "Insufficient permissions. We recommend that you contact the administrator of the \
             Alibaba Cloud account to grant the required permissions to you.",
        )
    }
    pub fn internal_error() -> ApiError {
        ApiError::new(
            500,
            "InternalError",
            "Unexpected error. Try again later. If the error persists after several tries, we \
             recommend that you submit a ticket.",
        )
    }

    // --- AddSharesToExpressSync / DescribeExpressSyncShares (seeds 000, 001) ---
    pub fn empty_express_sync_id() -> ApiError {
        ApiError::new(
            400,
            "EmptyExpressSyncId",
            "You must specify a valid ID for the sync group.",
        )
    }
    pub fn express_sync_not_exist() -> ApiError {
        ApiError::new(
            400,
            "ExpressSyncNotExist",
            "The specified sync group does not exist. You must specify a valid parameter.",
        )
    }
    pub fn express_sync_in_operation() -> ApiError {
        ApiError::new(
            400,
            "ExpressSyncInOperation",
            "The sync group is busy. Try again later.",
        )
    }
    pub fn gateway_not_exist() -> ApiError {
        ApiError::new(
            400,
            "GatewayNotExist",
            "The specified gateway does not exist. You must specify a valid parameter.",
        )
    }

    // --- Not in the seeds: the API family's common errors ---
    pub fn missing_parameter(name: &str) -> ApiError {
        ApiError::new(
            400,
            "MissingParameter",
            format!(
                "The input parameter \"{name}\" that is mandatory for processing this request is not supplied."
            ),
        )
    }
    pub fn invalid_parameter(name: &str, why: &str) -> ApiError {
        ApiError::new(
            400,
            "InvalidParameter",
            format!("The specified parameter \"{name}\" is not valid: {why}"),
        )
    }
    pub fn share_not_exist(gateway_id: &str, share: &str) -> ApiError {
        ApiError::new(
            400,
            "ShareNotExist",
            format!(
                "The specified share does not exist. Gateway {} has no registered share named {}.",
                printable(gateway_id),
                printable(share)
            ),
        )
    }
    pub fn share_not_in_express_sync(gateway_id: &str, share: &str) -> ApiError {
        ApiError::new(
            400,
            "ShareNotInExpressSync",
            format!(
                "The share {} of gateway {} is not in the specified sync group.",
                printable(share),
                printable(gateway_id)
            ),
        )
    }
    pub fn task_not_exist() -> ApiError {
        ApiError::new(400, "TaskNotExist", "The specified task does not exist.")
    }
    pub fn invalid_action() -> ApiError {
        ApiError::new(
            404,
            "InvalidAction.NotFound",
            "Specified api is not found, please check your url and method.",
        )
    }
    pub fn invalid_version() -> ApiError {
        ApiError::new(
            400,
            "InvalidVersion",
            "Specified parameter Version is not valid; this endpoint serves 2018-05-11.",
        )
    }
    pub fn unsupported_format() -> ApiError {
        ApiError::new(
            400,
            "InvalidParameter.Format",
            "Specified parameter Format is not valid; use JSON or XML.",
        )
    }

    // --- Signature / authentication (the family's documented wording) ---
    pub fn incomplete_signature(detail: &str) -> ApiError {
        ApiError::new(
            400,
            "IncompleteSignature",
            format!("The request signature does not conform to Aliyun standards. {detail}"),
        )
    }
    pub fn signature_does_not_match(string_to_sign: &str) -> ApiError {
        // The RPC SDK compares the text after the colon with its own string to sign and then
        // tells the user their secret is wrong, so keep this exact shape.
        ApiError::new(
            400,
            "SignatureDoesNotMatch",
            format!(
                "Specified signature is not matched with our calculation. server string to sign is:{string_to_sign}"
            ),
        )
    }
    pub fn access_key_not_found() -> ApiError {
        ApiError::new(
            404,
            "InvalidAccessKeyId.NotFound",
            "Specified access key is not found.",
        )
    }
    pub fn timestamp_expired() -> ApiError {
        ApiError::new(
            400,
            "InvalidTimeStamp.Expired",
            "Specified time stamp or date value is expired.",
        )
    }
    pub fn timestamp_format() -> ApiError {
        ApiError::new(
            400,
            "InvalidTimeStamp.Format",
            "Specified time stamp or date value is not well formatted.",
        )
    }
    pub fn nonce_used() -> ApiError {
        ApiError::new(
            400,
            "SignatureNonceUsed",
            "Specified signature nonce was used already.",
        )
    }
    pub fn throttled() -> ApiError {
        ApiError::new(
            503,
            "ServiceUnavailable",
            "The request has failed due to a temporary failure of the server.",
        )
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

/// User text echoed in a message: at most 64 characters, control characters shown escaped,
/// so a hostile name cannot forge log lines or bloat answers.
pub fn printable(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i >= 64 {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    format!("\"{out}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_and_caps_user_text() {
        assert_eq!(printable("a\nb"), "\"a\\nb\"");
        let long = "x".repeat(500);
        let shown = printable(&long);
        assert!(shown.chars().count() < 70, "{shown}");
    }

    #[test]
    fn signature_message_keeps_the_sdk_parsable_shape() {
        let e = ApiError::signature_does_not_match("POST&%2F&A%3D1");
        assert_eq!(e.message.split(':').nth(1), Some("POST&%2F&A%3D1"));
    }
}
