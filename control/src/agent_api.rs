//! The agent-facing endpoints (see [`sgw_agent::control_client::protocol`]): registration, assignments, progress.

use super::actions::{plausible_region, valid_bucket_name, valid_prefix, valid_share_name};
use super::error::{ApiError, printable};
use super::router::ControlService;
use super::store::{ProgressReport, ShareSpec};
use sgw_agent::control_client::protocol::{
    AssignmentEntry, AssignmentsResponse, MAX_SHARES_PER_GATEWAY, ProgressRequest,
    ProgressResponse, RegisterRequest, RegisterResponse, RegisteredShare, SYNC_STATES,
};

fn bad_body(e: &serde_json::Error) -> ApiError {
    let mut why = e.to_string();
    why.truncate(200);
    ApiError::new(
        400,
        "InvalidBody",
        format!("The request body is not valid: {why}"),
    )
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(|e| {
        log::error!("encoding an agent answer: {e}");
        ApiError::internal_error()
    })
}

fn invalid(field: &str, why: String) -> ApiError {
    ApiError::new(400, "InvalidBody", format!("{field}: {why}"))
}

/// A bound share's bucket is checked as `CreateExpressSync` checks one; an unbound share
/// (neither region nor bucket) must not carry a prefix, since it takes its group's.
fn check_share_bucket(s: &RegisteredShare) -> Result<(), ApiError> {
    if !s.is_bound() {
        if !s.bucket_prefix.is_empty() {
            return Err(invalid(
                "shares[].bucket_prefix",
                format!(
                    "share {} has a prefix but no bucket; an unbound share takes its group's prefix",
                    printable(&s.name)
                ),
            ));
        }
        return Ok(());
    }
    if s.bucket_region.is_empty() || s.bucket_name.is_empty() {
        return Err(invalid(
            "shares[]",
            format!(
                "share {}: give both bucket_region and bucket_name, or neither",
                printable(&s.name)
            ),
        ));
    }
    if !plausible_region(&s.bucket_region) {
        return Err(invalid(
            "shares[].bucket_region",
            format!("{} is not a region id", printable(&s.bucket_region)),
        ));
    }
    if !valid_bucket_name(&s.bucket_name) {
        return Err(invalid(
            "shares[].bucket_name",
            format!("{} is not a valid bucket name", printable(&s.bucket_name)),
        ));
    }
    if !valid_prefix(&s.bucket_prefix) {
        return Err(invalid(
            "shares[].bucket_prefix",
            "at most 1024 bytes, no control characters, no leading '/'".into(),
        ));
    }
    Ok(())
}

impl ControlService {
    pub(crate) fn agent_register(
        &self,
        gateway_id: &str,
        body: &[u8],
        now: i64,
    ) -> Result<Vec<u8>, ApiError> {
        let req: RegisterRequest = serde_json::from_slice(body).map_err(|e| bad_body(&e))?;
        if req.shares.len() > MAX_SHARES_PER_GATEWAY {
            return Err(invalid(
                "shares",
                format!("at most {MAX_SHARES_PER_GATEWAY}"),
            ));
        }
        if let Some(name) = &req.gateway_name
            && (name.chars().count() > 128 || name.chars().any(char::is_control))
        {
            return Err(invalid(
                "gateway_name",
                "at most 128 characters, no control characters".into(),
            ));
        }
        if let Some(region) = &req.gateway_region
            && !plausible_region(region)
        {
            return Err(invalid(
                "gateway_region",
                format!("{} is not a region id", printable(region)),
            ));
        }
        let mut specs: Vec<ShareSpec> = Vec::with_capacity(req.shares.len());
        for s in &req.shares {
            if !valid_share_name(&s.name) {
                return Err(invalid(
                    "shares[].name",
                    format!(
                        "{} must be 1-128 of letters, digits, '.', '_', '-'",
                        printable(&s.name)
                    ),
                ));
            }
            if specs.iter().any(|x| x.name == s.name) {
                return Err(invalid(
                    "shares[].name",
                    format!("{} is listed twice", printable(&s.name)),
                ));
            }
            check_share_bucket(s)?;
            specs.push(ShareSpec {
                name: s.name.clone(),
                bucket_region: s.bucket_region.clone(),
                bucket_name: s.bucket_name.clone(),
                bucket_prefix: s.bucket_prefix.clone(),
            });
        }
        let shares = self.store.register(
            gateway_id,
            req.gateway_name.as_deref(),
            req.gateway_region.as_deref(),
            &specs,
            now,
        )?;
        log::info!("gateway {gateway_id} registered {} share(s)", specs.len());
        to_json(&RegisterResponse {
            gateway_id: gateway_id.to_string(),
            shares: shares.into_iter().map(|s| s.name).collect(),
            poll_interval_secs: self.settings.poll_interval_secs,
        })
    }

    pub(crate) fn agent_assignments(
        &self,
        gateway_id: &str,
        now: i64,
    ) -> Result<Vec<u8>, ApiError> {
        self.touch_gateway(gateway_id, now)?;
        let (endpoint, region) = self.provisioner.agent_endpoint();
        let assignments = self
            .store
            .assignments(gateway_id)?
            .into_iter()
            .map(|a| AssignmentEntry {
                share_name: a.share.name,
                express_sync_id: a.sync.id,
                express_sync_name: a.sync.name,
                bucket_region: a.sync.bucket_region,
                bucket_name: a.sync.bucket_name,
                bucket_prefix: a.sync.bucket_prefix,
                queue_name: a.member.queue_name,
                queue_url: a.member.queue_url,
                endpoint: endpoint.clone(),
                region: region.clone(),
                express_sync_state: a.member.state,
                sync_progress: a.member.sync_progress,
            })
            .collect();
        to_json(&AssignmentsResponse {
            gateway_id: gateway_id.to_string(),
            poll_interval_secs: self.settings.poll_interval_secs,
            assignments,
        })
    }

    pub(crate) fn agent_progress(
        &self,
        gateway_id: &str,
        body: &[u8],
        now: i64,
    ) -> Result<Vec<u8>, ApiError> {
        let req: ProgressRequest = serde_json::from_slice(body).map_err(|e| bad_body(&e))?;
        if req.shares.len() > MAX_SHARES_PER_GATEWAY {
            return Err(invalid(
                "shares",
                format!("at most {MAX_SHARES_PER_GATEWAY}"),
            ));
        }
        let mut reports = Vec::with_capacity(req.shares.len());
        for s in &req.shares {
            if !valid_share_name(&s.share_name) {
                return Err(invalid(
                    "shares[].share_name",
                    format!("{} is not a share name", printable(&s.share_name)),
                ));
            }
            if !(-2..=100).contains(&s.sync_progress) {
                return Err(invalid(
                    "shares[].sync_progress",
                    format!("{} is not in -2..=100", s.sync_progress),
                ));
            }
            if !SYNC_STATES.contains(&s.express_sync_state.as_str()) {
                return Err(invalid(
                    "shares[].express_sync_state",
                    format!(
                        "{} is not one of {}",
                        printable(&s.express_sync_state),
                        SYNC_STATES.join(", ")
                    ),
                ));
            }
            // A share in trouble for longer than its agent's alert_after_secs: said here too,
            // so the operator of the endpoint sees it without the box's journal.
            if let Some(alert) = &s.alert {
                log::error!(
                    "gateway {gateway_id} share {}: {}",
                    printable(&s.share_name),
                    alert
                        .chars()
                        .take(400)
                        .map(|c| if c.is_control() { ' ' } else { c })
                        .collect::<String>()
                );
            }
            reports.push(ProgressReport {
                share_name: s.share_name.clone(),
                sync_progress: s.sync_progress,
                state: s.express_sync_state.clone(),
            });
        }
        let applied = self.store.report_progress(gateway_id, &reports, now)?;
        let ignored = reports
            .iter()
            .map(|r| r.share_name.clone())
            .filter(|n| !applied.contains(n))
            .collect();
        to_json(&ProgressResponse { applied, ignored })
    }
}
