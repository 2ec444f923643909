//! The API actions: the three seed actions exactly as documented, and the ones a user needs
//! around them, named and shaped as the SDK models show them. Every action validates all of
//! its input before it changes anything, and each change is one store transaction.

use serde_json::{Value, json};

use super::error::{ApiError, printable};
use super::params::Params;
use super::provision::{GroupHandles, GroupSpec, ProvisionError, QueueHandles};
use super::router::{ActionResult, ControlService, unix_now};
use super::store::{ExpressSync, Member, STATE_INIT, Share, Task};

/// Longest `BucketPrefix` (S3 keys are at most 1024 bytes).
pub const MAX_PREFIX_BYTES: usize = 1024;
/// Most (gateway, share) pairs in one `GatewayShares`.
pub const MAX_GATEWAY_SHARES: usize = 100;
/// Most ids in one `ExpressSyncIds`.
pub const MAX_EXPRESS_SYNC_IDS: usize = 100;

const TASK_COMPLETED: &str = "task.state.completed";
const TASK_FAILED: &str = "task.state.failed";

/// 1-128 of letters, digits, `.`, `_`, `-`, starting with a letter.
pub fn valid_express_sync_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 128
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Bucket names both S3 and OSS accept: 3-63 of `a-z 0-9 - .`, alphanumeric at both ends, no
/// `..`, not an IP address.
pub fn valid_bucket_name(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'.'))
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && !name.contains("..")
        && name.parse::<std::net::Ipv4Addr>().is_err()
}

/// Region ids look like `cn-hangzhou`, `us-east-1`: 1-64 of `a-z 0-9 -`.
pub fn plausible_region(region: &str) -> bool {
    (1..=64).contains(&region.len())
        && region
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

/// A bucket prefix we can put in a notification filter: at most 1024 bytes, no control
/// characters, not starting with `/`.
pub fn valid_prefix(prefix: &str) -> bool {
    prefix.len() <= MAX_PREFIX_BYTES
        && !prefix.starts_with('/')
        && !prefix.chars().any(char::is_control)
}

/// Share names: 1-128 of letters, digits, `.`, `_`, `-`.
pub fn valid_share_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// `true`/`True`/`false`/`False` (what the SDKs send for a boolean); absent = false.
fn parse_bool(p: &Params, name: &str) -> Result<bool, ApiError> {
    match p.get(name).map(str::trim) {
        None | Some("") => Ok(false),
        Some("true" | "True") => Ok(true),
        Some("false" | "False") => Ok(false),
        Some(_) => Err(ApiError::invalid_parameter(name, "expected true or false")),
    }
}

fn parse_int(
    p: &Params,
    name: &str,
    default: i64,
    range: std::ops::RangeInclusive<i64>,
) -> Result<i64, ApiError> {
    match p.non_empty(name) {
        None => Ok(default),
        Some(v) => match v.parse::<i64>() {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => Err(ApiError::invalid_parameter(
                name,
                &format!(
                    "expected an integer from {} to {}",
                    range.start(),
                    range.end()
                ),
            )),
        },
    }
}

/// The validated input of CreateExpressSync / ValidateExpressSyncConfig.
struct NewGroup {
    name: String,
    description: String,
    bucket_region: String,
    bucket_name: String,
    bucket_prefix: String,
}

/// `{"gw-1":"share1,share2"}` as (gateway id, share name) pairs, deduplicated, in order.
fn parse_gateway_shares(p: &Params) -> Result<Vec<(String, String)>, ApiError> {
    let raw = p
        .non_empty("GatewayShares")
        .ok_or_else(|| ApiError::missing_parameter("GatewayShares"))?;
    let shape = "expected a JSON object like {\"gw-1\":\"share1,share2\"}";
    let value: Value = serde_json::from_str(raw)
        .map_err(|_| ApiError::invalid_parameter("GatewayShares", shape))?;
    let Value::Object(map) = value else {
        return Err(ApiError::invalid_parameter("GatewayShares", shape));
    };
    if map.is_empty() {
        return Err(ApiError::invalid_parameter(
            "GatewayShares",
            "names no gateway",
        ));
    }
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (gateway_id, shares) in map {
        let Value::String(shares) = shares else {
            return Err(ApiError::invalid_parameter("GatewayShares", shape));
        };
        let names: Vec<&str> = shares
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if names.is_empty() {
            return Err(ApiError::invalid_parameter(
                "GatewayShares",
                "a gateway is given no share",
            ));
        }
        for name in names {
            if !valid_share_name(name) {
                return Err(ApiError::invalid_parameter(
                    "GatewayShares",
                    &format!(
                        "share name {} must be 1-128 of letters, digits, '.', '_', '-'",
                        printable(name)
                    ),
                ));
            }
            let pair = (gateway_id.clone(), name.to_string());
            if !pairs.contains(&pair) {
                pairs.push(pair);
            }
            if pairs.len() > MAX_GATEWAY_SHARES {
                return Err(ApiError::invalid_parameter(
                    "GatewayShares",
                    &format!("at most {MAX_GATEWAY_SHARES} shares at once"),
                ));
            }
        }
    }
    Ok(pairs)
}

fn map_provision_error(e: &ProvisionError) -> ApiError {
    log::warn!("provisioning: {e}");
    match e {
        ProvisionError::Conflict(_) => ApiError::notification_event_conflict(),
        ProvisionError::NoSuchBucket(_) => ApiError::invalid_bucket_name(),
        ProvisionError::Denied(_) => ApiError::no_permission(),
        ProvisionError::Failed(_) => ApiError::internal_error(),
    }
}

fn group_spec(sync: &ExpressSync) -> GroupSpec {
    GroupSpec {
        sync_id: sync.id.clone(),
        bucket_name: sync.bucket_name.clone(),
        bucket_prefix: sync.bucket_prefix.clone(),
        topic_name: sync.topic_name.clone(),
    }
}

fn queue_handles(m: &Member) -> QueueHandles {
    QueueHandles {
        queue_url: m.queue_url.clone(),
        queue_ref: m.queue_ref.clone(),
        subscription_ref: m.subscription_ref.clone(),
    }
}

impl ControlService {
    fn task(&self, name: &str, target: &str, failed: Option<&ApiError>) -> Task {
        let now = unix_now();
        Task {
            id: self.new_id("t-", 20),
            name: name.to_string(),
            target_id: target.to_string(),
            related_resource_id: target.to_string(),
            state_code: if failed.is_some() {
                TASK_FAILED
            } else {
                TASK_COMPLETED
            }
            .to_string(),
            message_key: failed.map(|e| e.code.clone()).unwrap_or_default(),
            progress: 100,
            created_at: now,
            updated_at: now,
        }
    }

    /// Every CreateExpressSync check that needs no provider call, in the documented order.
    fn check_new_group(&self, p: &Params) -> Result<NewGroup, ApiError> {
        let name = p.get("Name").unwrap_or_default();
        if name.trim().is_empty() {
            return Err(ApiError::empty_express_sync_name());
        }
        if !valid_express_sync_name(name) {
            return Err(ApiError::invalid_express_sync_name());
        }
        let description = p.get("Description").unwrap_or_default();
        if description.chars().count() > 255 {
            return Err(ApiError::description_over_limit());
        }
        if description
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\t'))
        {
            return Err(ApiError::invalid_parameter(
                "Description",
                "control characters are not allowed",
            ));
        }
        let bucket_region = p
            .non_empty("BucketRegion")
            .ok_or_else(ApiError::empty_bucket_region)?;
        let bucket_name = p
            .non_empty("BucketName")
            .ok_or_else(ApiError::empty_bucket_name)?;
        if !self.settings.regions.iter().any(|r| r == bucket_region) {
            return Err(ApiError::invalid_region_id());
        }
        if !valid_bucket_name(bucket_name) {
            return Err(ApiError::invalid_bucket_name());
        }
        let bucket_prefix = p.get("BucketPrefix").unwrap_or_default();
        if !valid_prefix(bucket_prefix) {
            return Err(ApiError::conflict_express_sync_config());
        }
        if self.store.express_sync_name_taken(name)? {
            return Err(ApiError::duplicate_express_sync_name());
        }
        if self.store.count_express_syncs()? >= self.settings.max_express_syncs {
            return Err(ApiError::notification_event_limit_exceed());
        }
        for other in self.store.express_syncs(Some(bucket_name), None)? {
            if other.bucket_region != bucket_region {
                continue;
            }
            if other.bucket_prefix == bucket_prefix {
                return Err(ApiError::conflict_express_sync_config());
            }
            if other.bucket_prefix.starts_with(bucket_prefix)
                || bucket_prefix.starts_with(&other.bucket_prefix)
            {
                return Err(ApiError::notification_event_conflict());
            }
        }
        Ok(NewGroup {
            name: name.to_string(),
            description: description.to_string(),
            bucket_region: bucket_region.to_string(),
            bucket_name: bucket_name.to_string(),
            bucket_prefix: bucket_prefix.to_string(),
        })
    }

    pub(crate) fn create_express_sync(&self, p: &Params) -> ActionResult {
        let _one_at_a_time = self.create_lock.lock().unwrap_or_else(|e| e.into_inner());
        let new = self.check_new_group(p)?;
        let id = self.new_id("sync-", 20);
        let spec = GroupSpec {
            sync_id: id.clone(),
            bucket_name: new.bucket_name.clone(),
            bucket_prefix: new.bucket_prefix.clone(),
            topic_name: format!("sgw-express-sync-topic-{id}"),
        };
        let handles = self
            .provisioner
            .create_group(&spec)
            .map_err(|e| map_provision_error(&e))?;
        let sync = ExpressSync {
            id: id.clone(),
            name: new.name,
            description: new.description,
            bucket_region: new.bucket_region,
            bucket_name: new.bucket_name,
            bucket_prefix: new.bucket_prefix,
            topic_name: spec.topic_name.clone(),
            topic_ref: handles.topic_ref.clone(),
            notification_ref: handles.notification_ref.clone(),
            created_at: unix_now(),
        };
        let stored = self.store.insert_express_sync(&sync);
        if !matches!(stored, Ok(true)) {
            // Not recorded, so it must not exist on the provider either.
            if let Err(e) = self.provisioner.delete_group(&spec, &handles) {
                log::error!(
                    "group {id} was not stored and its resources could not be removed: {e}"
                );
            }
            return Err(match stored {
                Ok(_) => ApiError::duplicate_express_sync_name(),
                Err(e) => e.into(),
            });
        }
        log::info!(
            "created express sync {id} {} on {}/{}",
            printable(&sync.name),
            sync.bucket_name,
            printable(&sync.bucket_prefix)
        );
        Ok(json!({ "ExpressSyncId": id }))
    }

    pub(crate) fn validate_express_sync_config(&self, p: &Params) -> ActionResult {
        match self.check_new_group(p) {
            Ok(_) => Ok(json!({ "IsValid": true, "ValidateMessage": "" })),
            Err(e) if e.status == 400 => Ok(
                json!({ "IsValid": false, "ValidateMessage": format!("{}: {}", e.code, e.message) }),
            ),
            Err(e) => Err(e),
        }
    }

    fn existing_group(&self, p: &Params) -> Result<ExpressSync, ApiError> {
        let id = p
            .non_empty("ExpressSyncId")
            .ok_or_else(ApiError::empty_express_sync_id)?;
        self.store
            .express_sync(id)?
            .ok_or_else(ApiError::express_sync_not_exist)
    }

    /// Looks up each (gateway, share); every one must exist.
    fn resolve_shares(&self, pairs: &[(String, String)]) -> Result<Vec<Share>, ApiError> {
        let mut shares = Vec::with_capacity(pairs.len());
        for (gateway_id, name) in pairs {
            if self.store.gateway(gateway_id)?.is_none() {
                return Err(ApiError::gateway_not_exist());
            }
            let share = self
                .store
                .share(gateway_id, name)?
                .ok_or_else(|| ApiError::share_not_exist(gateway_id, name))?;
            shares.push(share);
        }
        Ok(shares)
    }

    pub(crate) fn add_shares_to_express_sync(&self, p: &Params) -> ActionResult {
        let sync = self.existing_group(p)?;
        let pairs = parse_gateway_shares(p)?;
        let _busy = self.claim(&sync.id)?;
        let shares = self.resolve_shares(&pairs)?;
        let mut to_add: Vec<&Share> = Vec::new();
        let mut queue_names: Vec<String> = Vec::new();
        for share in &shares {
            // An unbound share takes this group's bucket by joining it (see `Share`).
            if share.is_bound()
                && (share.bucket_name != sync.bucket_name
                    || share.bucket_region != sync.bucket_region)
            {
                return Err(ApiError::conflict_express_sync_config());
            }
            match self.store.member_of_share(share.id)? {
                Some(m) if m.sync_id == sync.id => queue_names.push(m.queue_name),
                Some(_) => return Err(ApiError::conflict_express_sync_config()),
                None => to_add.push(share),
            }
        }
        let mut created: Vec<Member> = Vec::new();
        for share in to_add {
            let queue_name = format!("sgw-express-sync-queue-{}-{}", share.gateway_id, share.id);
            match self.provisioner.create_queue(&queue_name, &sync.topic_ref) {
                Ok(h) => {
                    queue_names.push(queue_name.clone());
                    created.push(Member {
                        share_id: share.id,
                        sync_id: sync.id.clone(),
                        queue_name,
                        queue_url: h.queue_url,
                        queue_ref: h.queue_ref,
                        subscription_ref: h.subscription_ref,
                        sync_progress: -1,
                        state: STATE_INIT.to_string(),
                        reported_at: None,
                    });
                }
                Err(e) => {
                    self.undo_queues(&created);
                    return Err(map_provision_error(&e));
                }
            }
        }
        let task = self.task("AddSharesToExpressSync", &sync.id, None);
        if let Err(e) = self.store.add_members(&created, &task) {
            self.undo_queues(&created);
            return Err(e.into());
        }
        log::info!("express sync {}: added {} share(s)", sync.id, created.len());
        let (endpoint, _region) = self.provisioner.agent_endpoint();
        Ok(json!({
            "TaskId": task.id,
            "MnsTopic": sync.topic_name,
            "MnsQueues": queue_names.join(","),
            "MnsFullSyncDelay": self.settings.poll_interval_secs,
            "MnsPublicEndpoint": endpoint,
            "MnsInnerEndpoint": endpoint,
        }))
    }

    fn undo_queues(&self, created: &[Member]) {
        for m in created {
            if let Err(e) = self.provisioner.delete_queue(&queue_handles(m)) {
                log::error!(
                    "could not remove queue {} after a failed add: {e}",
                    m.queue_name
                );
            }
        }
    }

    pub(crate) fn remove_shares_from_express_sync(&self, p: &Params) -> ActionResult {
        let sync = self.existing_group(p)?;
        let pairs = parse_gateway_shares(p)?;
        let _busy = self.claim(&sync.id)?;
        let shares = self.resolve_shares(&pairs)?;
        let mut members = Vec::new();
        for share in &shares {
            match self.store.member_of_share(share.id)? {
                Some(m) if m.sync_id == sync.id => members.push(m),
                _ => {
                    return Err(ApiError::share_not_in_express_sync(
                        &share.gateway_id,
                        &share.name,
                    ));
                }
            }
        }
        let (removed, failure) = self.remove_queues(&members);
        let task = self.task("RemoveSharesFromExpressSync", &sync.id, failure.as_ref());
        self.store.remove_members(&removed, &task)?;
        log::info!(
            "express sync {}: removed {} share(s)",
            sync.id,
            removed.len()
        );
        match failure {
            Some(e) => Err(e),
            None => Ok(json!({ "TaskId": task.id })),
        }
    }

    /// Deletes the members' queues; returns the share ids done and the first failure.
    fn remove_queues(&self, members: &[Member]) -> (Vec<i64>, Option<ApiError>) {
        let mut removed = Vec::new();
        for m in members {
            match self.provisioner.delete_queue(&queue_handles(m)) {
                Ok(()) => removed.push(m.share_id),
                Err(e) => return (removed, Some(map_provision_error(&e))),
            }
        }
        (removed, None)
    }

    pub(crate) fn delete_express_sync(&self, p: &Params) -> ActionResult {
        let sync = self.existing_group(p)?;
        let _busy = self.claim(&sync.id)?;
        let members: Vec<Member> = self
            .store
            .members(&sync.id)?
            .into_iter()
            .map(|v| v.member)
            .collect();
        let (removed, failure) = self.remove_queues(&members);
        let failure = failure.or_else(|| {
            let handles = GroupHandles {
                topic_ref: sync.topic_ref.clone(),
                notification_ref: sync.notification_ref.clone(),
            };
            self.provisioner
                .delete_group(&group_spec(&sync), &handles)
                .err()
                .map(|e| map_provision_error(&e))
        });
        let task = self.task("DeleteExpressSync", &sync.id, failure.as_ref());
        match failure {
            Some(e) => {
                // Keep the group so a retry finishes the job; forget only the queues that are gone.
                self.store.remove_members(&removed, &task)?;
                Err(e)
            }
            None => {
                self.store.delete_express_sync(&sync.id, &task)?;
                log::info!("deleted express sync {} {}", sync.id, printable(&sync.name));
                Ok(json!({ "TaskId": task.id }))
            }
        }
    }

    pub(crate) fn describe_express_sync_shares(&self, p: &Params) -> ActionResult {
        let raw = p
            .non_empty("ExpressSyncIds")
            .ok_or_else(ApiError::empty_express_sync_id)?;
        let ids: Vec<&str> = raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if ids.is_empty() {
            return Err(ApiError::empty_express_sync_id());
        }
        if ids.len() > MAX_EXPRESS_SYNC_IDS {
            return Err(ApiError::invalid_parameter(
                "ExpressSyncIds",
                &format!("at most {MAX_EXPRESS_SYNC_IDS} ids"),
            ));
        }
        let external = parse_bool(p, "IsExternal")?;
        let mut groups = Vec::new();
        for id in &ids {
            let sync = self
                .store
                .express_sync(id)?
                .ok_or_else(ApiError::express_sync_not_exist)?;
            if !groups.iter().any(|g: &ExpressSync| g.id == sync.id) {
                groups.push(sync);
            }
        }
        let mut entries = Vec::new();
        for sync in &groups {
            if external {
                for (share, gateway) in self
                    .store
                    .candidate_shares(&sync.bucket_region, &sync.bucket_name)?
                {
                    entries.push(json!({
                        "ExpressSyncId": sync.id,
                        "ExpressSyncState": "MNSNotEnabled",
                        "GatewayId": gateway.id,
                        "GatewayName": gateway.name,
                        "GatewayRegion": gateway.region,
                        "MnsQueue": "",
                        "ShareName": share.name,
                        "StorageBundleId": gateway.storage_bundle_id,
                        "SyncProgress": -1,
                    }));
                }
            } else {
                for v in self.store.members(&sync.id)? {
                    entries.push(json!({
                        "ExpressSyncId": sync.id,
                        "ExpressSyncState": v.member.state,
                        "GatewayId": v.gateway.id,
                        "GatewayName": v.gateway.name,
                        "GatewayRegion": v.gateway.region,
                        "MnsQueue": v.member.queue_name,
                        "ShareName": v.share.name,
                        "StorageBundleId": v.gateway.storage_bundle_id,
                        "SyncProgress": v.member.sync_progress,
                    }));
                }
            }
        }
        Ok(json!({ "Shares": { "Share": entries } }))
    }

    pub(crate) fn describe_express_syncs(&self, p: &Params) -> ActionResult {
        let bucket = p.non_empty("BucketName");
        let prefix = p.get("BucketPrefix").filter(|s| !s.is_empty());
        let list: Vec<Value> = self
            .store
            .express_syncs(bucket, prefix)?
            .into_iter()
            .map(|s| {
                json!({
                    "BucketName": s.bucket_name,
                    "BucketPrefix": s.bucket_prefix,
                    "BucketRegion": s.bucket_region,
                    "Description": s.description,
                    "ExpressSyncId": s.id,
                    "MnsTopic": s.topic_name,
                    "Name": s.name,
                })
            })
            .collect();
        Ok(json!({ "ExpressSyncs": { "ExpressSync": list } }))
    }

    pub(crate) fn describe_shares_bucket_info(&self, p: &Params) -> ActionResult {
        let region = p.non_empty("BucketRegion");
        let bucket = p.non_empty("BucketName");
        let infos: Vec<Value> = self
            .store
            .bucket_infos(region, bucket)?
            .into_iter()
            .map(|(r, b, pre)| json!({ "BucketRegion": r, "BucketName": b, "BucketPrefix": pre }))
            .collect();
        Ok(json!({ "BucketInfos": { "BucketInfo": infos } }))
    }

    pub(crate) fn describe_tasks(&self, p: &Params) -> ActionResult {
        let target = p
            .non_empty("TargetId")
            .ok_or_else(|| ApiError::missing_parameter("TargetId"))?;
        let task_id = p.non_empty("TaskId");
        let page = parse_int(p, "PageNumber", 1, 1..=100_000)?;
        let size = parse_int(p, "PageSize", 10, 1..=100)?;
        let (total, tasks) = self.store.tasks(target, task_id, page, size)?;
        let list: Vec<Value> = tasks
            .into_iter()
            .map(|t| {
                json!({
                    "CreatedTime": t.created_at,
                    "MessageKey": t.message_key,
                    "Name": t.name,
                    "Progress": t.progress,
                    "RelatedResourceId": t.related_resource_id,
                    "StateCode": t.state_code,
                    "TaskId": t.id,
                    "UpdatedTime": t.updated_at,
                })
            })
            .collect();
        Ok(json!({
            "Tasks": { "SimpleTask": list },
            "TotalCount": total,
            "PageNumber": page,
            "PageSize": size,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules_match_the_seed() {
        assert!(valid_express_sync_name("a"));
        assert!(valid_express_sync_name(&format!("a{}", "b".repeat(127))));
        assert!(!valid_express_sync_name(&format!("a{}", "b".repeat(128))));
        for bad in [
            "1abc",
            "-a",
            "a b",
            "a/b",
            "a'; DROP TABLE express_syncs;--",
            "名字",
            "a\n",
        ] {
            assert!(!valid_express_sync_name(bad), "{bad}");
        }
        assert!(valid_express_sync_name("alex-tb.v1_x"));
    }

    #[test]
    fn bucket_rules() {
        assert!(valid_bucket_name("sgw-test"));
        for bad in [
            "ab",
            "Upper",
            "-a-b",
            "a-b-",
            "a..b",
            "192.168.1.1",
            "a_b",
            &"a".repeat(64),
        ] {
            assert!(!valid_bucket_name(bad), "{bad}");
        }
    }

    #[test]
    fn gateway_shares_json_is_checked() {
        let parse = |v: &str| {
            let mut p = Params::new();
            p.insert("GatewayShares", v);
            parse_gateway_shares(&p)
        };
        assert_eq!(
            parse(r#"{"gw-1":"share1, share2,share1","gw-2":"weekly"}"#).expect("valid"),
            vec![
                ("gw-1".to_string(), "share1".to_string()),
                ("gw-1".to_string(), "share2".to_string()),
                ("gw-2".to_string(), "weekly".to_string())
            ]
        );
        for bad in [
            "{",
            "[]",
            "\"x\"",
            "{}",
            r#"{"gw-1":1}"#,
            r#"{"gw-1":["a"]}"#,
            r#"{"gw-1":" , "}"#,
            r#"{"gw-1":"a/../b"}"#,
        ] {
            assert_eq!(parse(bad).expect_err(bad).code, "InvalidParameter", "{bad}");
        }
        assert_eq!(parse("").expect_err("empty").code, "MissingParameter");
        let many: Vec<String> = (0..=MAX_GATEWAY_SHARES).map(|i| format!("s{i}")).collect();
        let big = format!("{{\"gw-1\":\"{}\"}}", many.join(","));
        assert_eq!(parse(&big).expect_err("too many").code, "InvalidParameter");
    }
}
