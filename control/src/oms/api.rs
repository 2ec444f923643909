//! The OMS actions: routing, validation (every rule of the seed's Tables 3 and 4, plus the
//! SDK model's fields), answers shaped as the SDK's models parse them.
//!
//! Decisions where the seed is silent:
//! - Unknown body fields are refused (`OMS.0001`), so a misspelt or newer option is never
//!   silently ignored. `enable_kms` (the seed's sample; not in SDK 3.1.219's model) is known:
//!   `false` is accepted, `true` is `OMS.0002`.
//! - `object_overwrite_mode` (in `SyncTaskInfo`, not in 3.1.219's `CreateSyncTaskReq`) is
//!   accepted in the body: `NO_OVERWRITE`, `SIZE_LAST_MODIFIED_COMPARISON_OVERWRITE` (default),
//!   `CRC64_COMPARISON_OVERWRITE`, `FULL_OVERWRITE`.
//! - `consistency_check=transmission`: per the seed it only changes anything for sources whose
//!   size is unknown; every S3 object states its size, so it checks size and last-modified.
//! - Regions and buckets: the seed's maximum lengths, and non-empty (they are mandatory and an
//!   empty one names nothing). Buckets must also be S3-addressable (no `/`, no spaces).
//! - `app_id` is required when `src_cloud_type` is `Tencent` (the seed says mandatory).
//! - The source and the destination may not be the same bucket on the same endpoint.
//! - ListSyncTasks: `limit` 1..=100 (default 10), `offset` ≥ 0 (default 0), newest first;
//!   `count` is the number of matching tasks, not the page size.
//! - ListSyncTaskStatistic: `data_type` (one or more of REQUEST, SUCCESS, FAILURE, SKIP, SIZE,
//!   comma-separated), `start_time` ≤ `end_time`, Unix milliseconds (values below 10^11 are
//!   taken as seconds), at most 31 days apart. Spans up to one day are answered in
//!   `FIVE_MINUTES` slots, longer ones in `ONE_HOUR` slots; only slots with activity are listed.
//! - Start of a running task, Stop of a stopped one and events for a stopped one are
//!   `OMS.0005`; Delete stops a running task first.

use serde_json::{Map, Value, json};

use super::db::{STATUS_STOPPED, STATUS_SYNCHRONIZING, TaskKeys, TaskRow, TaskSpec};
use super::endpoints::{CLOUD_TYPES, DESTINATION_CLOUD};
use super::{MAX_TASKS_PER_PROJECT, OmsError, OmsService, SLOT_MS, auth, locked};
use crate::auth::AuthStore;
use crate::error::ApiError;
use crate::http_server::{Request, Response};

const CONSISTENCY_CHECKS: &[&str] = &["size_last_modified", "crc64", "transmission"];
const STORAGE_POLICIES: &[&str] = &[
    "STANDARD",
    "IA",
    "ARCHIVE",
    "DEEP_ARCHIVE",
    "SRC_STORAGE_MAPPING",
];
const OVERWRITE_MODES: &[&str] = &[
    "NO_OVERWRITE",
    "SIZE_LAST_MODIFIED_COMPARISON_OVERWRITE",
    "CRC64_COMPARISON_OVERWRITE",
    "FULL_OVERWRITE",
];
const CDN_AUTH_TYPES: &[&str] = &[
    "NONE",
    "QINIU_PRIVATE_AUTHENTICATION",
    "ALIYUN_OSS_A",
    "ALIYUN_OSS_B",
    "ALIYUN_OSS_C",
    "KSYUN_PRIVATE_AUTHENTICATION",
    "AZURE_SAS_TOKEN",
    "TENCENT_COS_A",
    "TENCENT_COS_B",
    "TENCENT_COS_C",
    "TENCENT_COS_D",
];
const CRYPTO_TYPES: &[&str] = &["DEFAULT", "KMS"];
const DATA_TYPES: &[&str] = &["REQUEST", "SUCCESS", "FAILURE", "SKIP", "SIZE"];
const MAX_EVENT_KEYS: usize = 10;
const MAX_STAT_SPAN_MS: i64 = 31 * 24 * 3600 * 1000;

struct StoreAuth<'a>(&'a crate::store::Store);

impl AuthStore for StoreAuth<'_> {
    fn api_secret(&self, access_key_id: &str) -> Result<Option<String>, ApiError> {
        self.0.api_secret(access_key_id).map_err(ApiError::from)
    }
    fn gateway_secret(&self, _: &str) -> Result<Option<String>, ApiError> {
        Ok(None)
    }
    fn remember_nonce(&self, nonce: &str, expires_at: i64) -> Result<bool, ApiError> {
        self.0
            .remember_nonce(nonce, expires_at, crate::router::unix_now())
            .map_err(ApiError::from)
    }
}

fn now_ms() -> i64 {
    crate::router::unix_now().saturating_mul(1000)
}

pub fn handle(s: &OmsService, req: &Request) -> Response {
    let mut id = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&s.rng, &mut id);
    let request_id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let result = route(s, req);
    let (status, body) = match result {
        Ok(body) => (200, body),
        Err(e) => {
            log::info!(
                "OMS {} {} -> {} {} ({request_id})",
                req.method,
                req.path,
                e.status,
                e.code
            );
            (
                e.status,
                json!({"error_code": e.code, "error_msg": e.message, "request_id": request_id}),
            )
        }
    };
    Response::json(status, serde_json::to_vec(&body).unwrap_or_default())
}

fn no_such_api() -> OmsError {
    OmsError::new(
        404,
        "APIGW.0101",
        "The API does not exist or has not been published.",
    )
}

fn route(s: &OmsService, req: &Request) -> Result<Value, OmsError> {
    let rest = req.path.strip_prefix("/v2/").ok_or_else(no_such_api)?;
    let segments: Vec<&str> = rest.split('/').collect();
    let project = auth::unquote(segments[0]).ok_or_else(no_such_api)?;
    if segments.len() < 2 || segments[1] != "sync-tasks" {
        return Err(no_such_api());
    }
    if project.is_empty() || project.len() > 1024 || project.chars().any(char::is_control) {
        return Err(OmsError::invalid(
            "project_id must be 1 to 1024 characters.",
        ));
    }
    let task_id = segments
        .get(2)
        .map(|t| auth::unquote(t).unwrap_or_default());
    let action = segments.get(3).copied();
    let method = req.method.as_str();
    let known = matches!(
        (method, task_id.is_some(), action, segments.len()),
        ("POST" | "GET", false, None, 2)
            | ("GET" | "DELETE", true, None, 3)
            | ("POST", true, Some("stop" | "start" | "events"), 4)
            | ("GET", true, Some("statistics"), 4)
    );
    if !known {
        return Err(no_such_api());
    }
    let who = auth::verify(
        req,
        &project,
        crate::router::unix_now(),
        &StoreAuth(&s.store),
    )?;
    let out = match (method, task_id.as_deref(), action) {
        ("POST", None, None) => create(s, &project, &req.body),
        ("GET", None, None) => list(s, &project, &req.query),
        ("GET", Some(id), None) => show(s, &project, id),
        ("DELETE", Some(id), None) => delete(s, &project, id),
        ("POST", Some(id), Some("stop")) => stop(s, &project, id),
        ("POST", Some(id), Some("start")) => start(s, &project, id, &req.body),
        ("POST", Some(id), Some("events")) => events(s, &project, id, &req.body),
        ("GET", Some(id), Some("statistics")) => statistics(s, &project, id, &req.query),
        _ => Err(no_such_api()),
    };
    if out.is_ok() {
        log::info!("OMS {method} {} by {who}: 200", req.path);
    }
    out
}

/// A JSON object body, read field by field; [`Body::finish`] refuses what was not read.
struct Body {
    map: Map<String, Value>,
    seen: Vec<&'static str>,
}

impl Body {
    fn parse(bytes: &[u8]) -> Result<Body, OmsError> {
        let value: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Object(Map::new())
        } else {
            serde_json::from_slice(bytes)
                .map_err(|e| OmsError::invalid(format!("The body is not valid JSON: {e}")))?
        };
        match value {
            Value::Object(map) => Ok(Body {
                map,
                seen: Vec::new(),
            }),
            _ => Err(OmsError::invalid("The body must be a JSON object.")),
        }
    }

    fn take(&mut self, name: &'static str) -> Option<&Value> {
        self.seen.push(name);
        self.map.get(name).filter(|v| !v.is_null())
    }

    fn string(
        &mut self,
        name: &'static str,
        max: usize,
        required: bool,
    ) -> Result<Option<String>, OmsError> {
        match self.take(name) {
            None if required => Err(OmsError::invalid(format!("{name} is mandatory."))),
            None => Ok(None),
            Some(Value::String(v)) => {
                if v.chars().count() > max {
                    return Err(OmsError::invalid(format!(
                        "{name} must be at most {max} characters."
                    )));
                }
                if required && v.trim().is_empty() {
                    return Err(OmsError::invalid(format!("{name} must not be empty.")));
                }
                Ok(Some(v.clone()))
            }
            Some(_) => Err(OmsError::invalid(format!("{name} must be a string."))),
        }
    }

    fn choice(
        &mut self,
        name: &'static str,
        values: &[&str],
        default: &str,
    ) -> Result<String, OmsError> {
        match self.string(name, 128, false)? {
            None => Ok(default.to_string()),
            Some(v) if values.contains(&v.as_str()) => Ok(v),
            Some(v) => Err(OmsError::invalid(format!(
                "{name} must be one of {}, got {v:?}.",
                values.join(", ")
            ))),
        }
    }

    fn boolean(&mut self, name: &'static str) -> Result<bool, OmsError> {
        match self.take(name) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(OmsError::invalid(format!("{name} must be true or false."))),
        }
    }

    fn finish(self) -> Result<(), OmsError> {
        match self.map.keys().find(|k| !self.seen.contains(&k.as_str())) {
            Some(k) => Err(OmsError::invalid(format!(
                "Unknown field {k:?} in the request body."
            ))),
            None => Ok(()),
        }
    }
}

fn check_bucket(name: &str, value: &str) -> Result<(), OmsError> {
    let ok = value.len() <= 255
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(OmsError::invalid(format!(
            "{name} is not a valid bucket name (letters, digits, '.', '-', '_')."
        )))
    }
}

/// `*_crypto_type` must be DEFAULT and `*_kms_key_id` absent: KMS is not supported.
fn no_kms(body: &mut Body, crypto: &'static str, key_id: &'static str) -> Result<(), OmsError> {
    if body.choice(crypto, CRYPTO_TYPES, "DEFAULT")? == "KMS" {
        return Err(OmsError::unsupported(format!(
            "{crypto}=KMS: keys encrypted with KMS are not supported by this endpoint; use DEFAULT."
        )));
    }
    if let Some(id) = body.string(key_id, 36, false)?
        && !id.is_empty()
    {
        return Err(OmsError::unsupported(format!(
            "{key_id}: KMS is not supported by this endpoint."
        )));
    }
    Ok(())
}

fn keys_from(body: &mut Body) -> Result<TaskKeys, OmsError> {
    Ok(TaskKeys {
        src_ak: body.string("src_ak", 100, true)?.unwrap_or_default(),
        src_sk: body.string("src_sk", 100, true)?.unwrap_or_default(),
        dst_ak: body.string("dst_ak", 100, true)?.unwrap_or_default(),
        dst_sk: body.string("dst_sk", 100, true)?.unwrap_or_default(),
    })
}

fn source_cdn(body: &mut Body) -> Result<(), OmsError> {
    let Some(value) = body.take("source_cdn").cloned() else {
        return Ok(());
    };
    let Value::Object(map) = value else {
        return Err(OmsError::invalid("source_cdn must be an object."));
    };
    let mut cdn = Body {
        map,
        seen: Vec::new(),
    };
    cdn.string("authentication_key", 255, false)?;
    let auth_type = cdn.choice("authentication_type", CDN_AUTH_TYPES, "NONE")?;
    let _ = auth_type;
    cdn.string("domain", 1024, true)
        .map_err(|e| OmsError::invalid(format!("source_cdn.{}", e.message)))?;
    match cdn.string("protocol", 8, true)? {
        Some(p) if p == "http" || p == "https" => {}
        _ => {
            return Err(OmsError::invalid(
                "source_cdn.protocol must be http or https.",
            ));
        }
    }
    no_kms(&mut cdn, "crypto_type", "kms_key_id")?;
    cdn.finish()
        .map_err(|e| OmsError::invalid(format!("source_cdn: {}", e.message)))?;
    Err(OmsError::unsupported(
        "source_cdn: synchronization from a CDN domain is not supported by this endpoint; \
         synchronize from the bucket itself.",
    ))
}

fn create(s: &OmsService, project: &str, bytes: &[u8]) -> Result<Value, OmsError> {
    let mut b = Body::parse(bytes)?;
    let src_cloud_type = b.choice("src_cloud_type", CLOUD_TYPES, "Aliyun")?;
    let src_region = b.string("src_region", 100, true)?.unwrap_or_default();
    let src_bucket = b.string("src_bucket", 1024, true)?.unwrap_or_default();
    check_bucket("src_bucket", &src_bucket)?;
    let keys = keys_from(&mut b)?;
    let dst_region = b.string("dst_region", 100, true)?.unwrap_or_default();
    let dst_bucket = b.string("dst_bucket", 1024, true)?.unwrap_or_default();
    check_bucket("dst_bucket", &dst_bucket)?;
    let description = b.string("description", 255, false)?;
    if let Some(d) = &description
        && d.contains(['<', '>', '(', ')', '"', '\'', '&'])
    {
        return Err(OmsError::invalid(
            "description must not contain any of <>()\"'&.",
        ));
    }
    let enable_metadata_migration = b.boolean("enable_metadata_migration")?;
    let enable_restore = b.boolean("enable_restore")?;
    let dst_storage_policy = b.choice("dst_storage_policy", STORAGE_POLICIES, "STANDARD")?;
    let app_id = b.string("app_id", 255, false)?.filter(|a| !a.is_empty());
    if src_cloud_type == "Tencent" && app_id.is_none() {
        return Err(OmsError::invalid(
            "app_id is mandatory when src_cloud_type is Tencent.",
        ));
    }
    let consistency_check = b.choice(
        "consistency_check",
        CONSISTENCY_CHECKS,
        "size_last_modified",
    )?;
    let object_overwrite_mode = b.choice(
        "object_overwrite_mode",
        OVERWRITE_MODES,
        "SIZE_LAST_MODIFIED_COMPARISON_OVERWRITE",
    )?;
    no_kms(&mut b, "src_crypto_type", "src_kms_key_id")?;
    no_kms(&mut b, "dst_crypto_type", "dst_kms_key_id")?;
    if b.boolean("enable_kms")? {
        return Err(OmsError::unsupported(
            "enable_kms: KMS encryption of the destination is not supported by this endpoint.",
        ));
    }
    source_cdn(&mut b)?;
    b.finish()?;

    let source = s
        .endpoints
        .resolve(&src_cloud_type, &src_region)
        .map_err(|e| OmsError::unsupported(format!("src_region: {e}")))?;
    let destination = s
        .endpoints
        .resolve(DESTINATION_CLOUD, &dst_region)
        .map_err(|e| OmsError::unsupported(format!("dst_region: {e}")))?;
    let spec = TaskSpec {
        src_cloud_type,
        src_region,
        src_bucket,
        dst_region,
        dst_bucket,
        description,
        enable_metadata_migration,
        enable_restore,
        dst_storage_policy,
        app_id,
        object_overwrite_mode,
        consistency_check,
    };
    if source.url == destination.url && super::task::source_bucket_name(&spec) == spec.dst_bucket {
        return Err(OmsError::invalid(
            "The source and the destination are the same bucket.",
        ));
    }
    let _guard = locked(&s.changes);
    let now = now_ms();
    let row = TaskRow {
        id: s.new_task_id(),
        project_id: project.to_string(),
        spec,
        status: STATUS_SYNCHRONIZING.to_string(),
        create_time: now,
        last_start_time: now,
    };
    let sealed = s.sealer.seal(&row.id, &keys).map_err(|e| {
        log::error!("OMS: {e}");
        OmsError::internal()
    })?;
    if !s
        .store
        .oms_insert_task(&row, &sealed, MAX_TASKS_PER_PROJECT)?
    {
        return Err(OmsError::new(
            400,
            "OMS.0003",
            "A tenant can create a maximum of five synchronization tasks; delete one first.",
        ));
    }
    if let Err(e) = s.launch(&row, keys) {
        log::error!("OMS task {}: cannot start: {e}", row.id);
        s.store.oms_delete_task(&row.id)?;
        return Err(OmsError::internal());
    }
    log::info!("OMS task {} created in project {project}", row.id);
    Ok(json!({"sync_task_id": row.id}))
}

fn info(row: &TaskRow) -> Value {
    let spec = &row.spec;
    let mut v = json!({
        "sync_task_id": row.id,
        "src_cloud_type": spec.src_cloud_type,
        "src_region": spec.src_region,
        "src_bucket": spec.src_bucket,
        "create_time": row.create_time,
        "last_start_time": row.last_start_time,
        "dst_bucket": spec.dst_bucket,
        "dst_region": spec.dst_region,
        "description": spec.description.clone().unwrap_or_default(),
        "status": row.status,
        "enable_metadata_migration": spec.enable_metadata_migration,
        "enable_restore": spec.enable_restore,
        "object_overwrite_mode": spec.object_overwrite_mode,
        "dst_storage_policy": spec.dst_storage_policy,
        "consistency_check": spec.consistency_check,
    });
    if let Some(app) = &spec.app_id {
        v["app_id"] = json!(app);
    }
    v
}

fn task(s: &OmsService, project: &str, id: &str) -> Result<TaskRow, OmsError> {
    s.store
        .oms_task(project, id)?
        .ok_or_else(OmsError::not_found)
}

fn query(text: &str) -> Result<Vec<(String, String)>, OmsError> {
    auth::query_pairs(text).ok_or_else(|| OmsError::invalid("The query string is not valid UTF-8."))
}

fn single<'a>(pairs: &'a [(String, String)], name: &str) -> Result<Option<&'a str>, OmsError> {
    let mut found = pairs.iter().filter(|(k, _)| k == name);
    let first = found.next().map(|(_, v)| v.as_str());
    if found.next().is_some() {
        return Err(OmsError::invalid(format!(
            "{name} is given more than once."
        )));
    }
    Ok(first)
}

fn integer(pairs: &[(String, String)], name: &str) -> Result<Option<i64>, OmsError> {
    match single(pairs, name)? {
        None => Ok(None),
        Some(v) => v
            .parse::<i64>()
            .map(Some)
            .map_err(|_| OmsError::invalid(format!("{name} must be an integer."))),
    }
}

fn list(s: &OmsService, project: &str, q: &str) -> Result<Value, OmsError> {
    let pairs = query(q)?;
    if let Some((k, _)) = pairs
        .iter()
        .find(|(k, _)| !matches!(k.as_str(), "limit" | "offset" | "status"))
    {
        return Err(OmsError::invalid(format!("Unknown query parameter {k:?}.")));
    }
    let limit = integer(&pairs, "limit")?.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return Err(OmsError::invalid("limit must be from 1 to 100."));
    }
    let offset = integer(&pairs, "offset")?.unwrap_or(0);
    if offset < 0 {
        return Err(OmsError::invalid("offset must be 0 or more."));
    }
    let status = single(&pairs, "status")?;
    if let Some(st) = status
        && st != STATUS_SYNCHRONIZING
        && st != STATUS_STOPPED
    {
        return Err(OmsError::invalid(
            "status must be SYNCHRONIZING or STOPPED.",
        ));
    }
    let (count, rows) = s.store.oms_tasks(project, status, limit, offset)?;
    Ok(json!({"tasks": rows.iter().map(info).collect::<Vec<_>>(), "count": count}))
}

/// Unix ms of the first instant of the current UTC month.
fn month_start_ms() -> i64 {
    let days = crate::router::unix_now().div_euclid(86_400);
    let (y, m, _) = sgw_agent::time::civil_from_days(days);
    sgw_agent::time::days_from_civil(y, m, 1) * 86_400_000
}

fn show(s: &OmsService, project: &str, id: &str) -> Result<Value, OmsError> {
    let row = task(s, project, id)?;
    let mut totals = [0i64; 5];
    for (_, c) in s.store.oms_stats(&row.id, month_start_ms(), i64::MAX)? {
        for (t, x) in totals.iter_mut().zip(c) {
            *t += x;
        }
    }
    let mut v = info(&row);
    v["monthly_acceptance_request"] = json!(totals[0]);
    v["monthly_success_object"] = json!(totals[1]);
    v["monthly_failure_object"] = json!(totals[2]);
    v["monthly_skip_object"] = json!(totals[3]);
    v["monthly_size"] = json!(totals[4]);
    Ok(v)
}

fn stop(s: &OmsService, project: &str, id: &str) -> Result<Value, OmsError> {
    let _guard = locked(&s.changes);
    let row = task(s, project, id)?;
    if row.status == STATUS_STOPPED {
        return Err(OmsError::state(
            "The synchronization task is already STOPPED.",
        ));
    }
    s.halt(&row.id);
    s.store.oms_set_stopped(&row.id)?;
    log::info!("OMS task {} stopped; its keys are forgotten", row.id);
    Ok(json!({}))
}

fn start(s: &OmsService, project: &str, id: &str, bytes: &[u8]) -> Result<Value, OmsError> {
    let mut b = Body::parse(bytes)?;
    let keys = keys_from(&mut b)?;
    no_kms(&mut b, "src_crypto_type", "src_kms_key_id")?;
    no_kms(&mut b, "dst_crypto_type", "dst_kms_key_id")?;
    no_kms(&mut b, "source_cdn_crypto_type", "source_cdn_kms_key_id")?;
    if b.string("source_cdn_authentication_key", 255, false)?
        .is_some_and(|k| !k.is_empty())
    {
        return Err(OmsError::unsupported(
            "source_cdn_authentication_key: this task has no CDN source (CDN sources are not supported).",
        ));
    }
    b.finish()?;
    let _guard = locked(&s.changes);
    let row = task(s, project, id)?;
    if row.status == STATUS_SYNCHRONIZING {
        return Err(OmsError::state(
            "The synchronization task is already SYNCHRONIZING.",
        ));
    }
    let sealed = s.sealer.seal(&row.id, &keys).map_err(|e| {
        log::error!("OMS: {e}");
        OmsError::internal()
    })?;
    let now = now_ms();
    s.store.oms_set_running(&row.id, &sealed, now)?;
    let mut running = row.clone();
    running.status = STATUS_SYNCHRONIZING.to_string();
    running.last_start_time = now;
    if let Err(e) = s.launch(&running, keys) {
        log::error!("OMS task {}: cannot start: {e}", row.id);
        s.store.oms_set_stopped(&row.id)?;
        return Err(OmsError::unsupported(e));
    }
    log::info!("OMS task {} started", row.id);
    Ok(json!({}))
}

fn delete(s: &OmsService, project: &str, id: &str) -> Result<Value, OmsError> {
    let _guard = locked(&s.changes);
    let row = task(s, project, id)?;
    s.halt(&row.id);
    s.store.oms_delete_task(&row.id)?;
    log::info!("OMS task {} deleted", row.id);
    Ok(json!({}))
}

fn events(s: &OmsService, project: &str, id: &str, bytes: &[u8]) -> Result<Value, OmsError> {
    let mut b = Body::parse(bytes)?;
    let keys = match b.take("object_keys") {
        Some(Value::Array(items)) => items.clone(),
        Some(_) => return Err(OmsError::invalid("object_keys must be a list of strings.")),
        None => return Err(OmsError::invalid("object_keys is mandatory.")),
    };
    b.finish()?;
    if keys.is_empty() || keys.len() > MAX_EVENT_KEYS {
        return Err(OmsError::invalid(format!(
            "object_keys must hold 1 to {MAX_EVENT_KEYS} keys."
        )));
    }
    let mut decoded = Vec::with_capacity(keys.len());
    for k in &keys {
        let Value::String(text) = k else {
            return Err(OmsError::invalid("object_keys must be a list of strings."));
        };
        let key = auth::unquote(text)
            .ok_or_else(|| OmsError::invalid("Each object key must be URL-encoded UTF-8."))?;
        if key.is_empty() || key.len() > 1024 {
            return Err(OmsError::invalid(
                "Each object key must be 1 to 1024 bytes once decoded.",
            ));
        }
        decoded.push(key);
    }
    let row = task(s, project, id)?;
    let running = locked(&s.running);
    match running.get(&row.id) {
        Some(r) if row.status == STATUS_SYNCHRONIZING => {
            let _ = r.events.send(decoded);
            Ok(json!({}))
        }
        _ => Err(OmsError::state(
            "The synchronization task is not SYNCHRONIZING; start it first.",
        )),
    }
}

fn statistics(s: &OmsService, project: &str, id: &str, q: &str) -> Result<Value, OmsError> {
    let pairs = query(q)?;
    if let Some((k, _)) = pairs
        .iter()
        .find(|(k, _)| !matches!(k.as_str(), "data_type" | "start_time" | "end_time"))
    {
        return Err(OmsError::invalid(format!("Unknown query parameter {k:?}.")));
    }
    let types_text = single(&pairs, "data_type")?
        .filter(|t| !t.is_empty())
        .ok_or_else(|| OmsError::invalid("data_type is mandatory."))?;
    let mut types = Vec::new();
    for t in types_text.split(',') {
        let Some(i) = DATA_TYPES.iter().position(|d| *d == t.trim()) else {
            return Err(OmsError::invalid(format!(
                "data_type must be one or more of {}, got {t:?}.",
                DATA_TYPES.join(",")
            )));
        };
        if !types.contains(&i) {
            types.push(i);
        }
    }
    let ms = |v: i64| {
        if v < 100_000_000_000 {
            v.saturating_mul(1000)
        } else {
            v
        }
    };
    let start = integer(&pairs, "start_time")?
        .map(ms)
        .ok_or_else(|| OmsError::invalid("start_time is mandatory."))?;
    let end = integer(&pairs, "end_time")?
        .map(ms)
        .ok_or_else(|| OmsError::invalid("end_time is mandatory."))?;
    if start < 0 || end < start {
        return Err(OmsError::invalid("start_time must be at most end_time."));
    }
    if end - start > MAX_STAT_SPAN_MS {
        return Err(OmsError::invalid(
            "start_time and end_time may be at most 31 days apart.",
        ));
    }
    let row = task(s, project, id)?;
    let (step, kind) = if end - start <= 86_400_000 {
        (SLOT_MS, "FIVE_MINUTES")
    } else {
        (3_600_000, "ONE_HOUR")
    };
    let first_slot = start - start.rem_euclid(SLOT_MS);
    let mut grouped: Vec<(i64, [i64; 5])> = Vec::new();
    for (slot, c) in s.store.oms_stats(&row.id, first_slot, end)? {
        let at = slot - slot.rem_euclid(step);
        match grouped.last_mut() {
            Some((t, acc)) if *t == at => {
                for (a, x) in acc.iter_mut().zip(c) {
                    *a += x;
                }
            }
            _ => grouped.push((at, c)),
        }
    }
    let datas: Vec<Value> = types
        .iter()
        .map(|&i| {
            json!({
                "data_type": DATA_TYPES[i],
                "data": grouped.iter().map(|(t, c)| json!({"time_stamp": t, "statistic_num": c[i]})).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(json!({
        "sync_task_id": row.id,
        "statistic_time_type": kind,
        "statistic_datas": datas,
    }))
}
