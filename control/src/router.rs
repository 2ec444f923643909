//! The control service: routes each request to the API (signed by an access key) or to the
//! agent endpoints (signed by a gateway), and holds what every action shares.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};

use super::auth::{self, AuthStore};
use super::error::ApiError;
use super::http_server::{Request, Response};
use super::metrics::{CountingProvisioner, Gauges, Metrics, Route, SEEN_WINDOW};
use super::params::{ParamError, Params};
use super::provision::Provisioner;
use super::render::{self, Format};
use super::store::{Gateway, Store, StoreError};
use sgw_agent::control_client::protocol::{self, AgentError};

/// Settings the actions need.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Accepted `BucketRegion` values.
    pub regions: Vec<String>,
    /// Most express sync groups (`ExpressSyncNotificationEventLimitExceed` beyond).
    pub max_express_syncs: i64,
    /// How often agents poll; also reported as `MnsFullSyncDelay`.
    pub poll_interval_secs: u64,
    /// `HostId` in error answers.
    pub host_id: String,
}

pub struct ControlService {
    pub(crate) store: Store,
    pub(crate) provisioner: Arc<dyn Provisioner>,
    pub(crate) settings: Settings,
    /// Groups with an action in progress (`ExpressSyncInOperation` for a second one).
    busy: Mutex<HashSet<String>>,
    /// Creates run one at a time: name, count and overlap checks see each other's results.
    pub(crate) create_lock: Mutex<()>,
    rng: SystemRandom,
    pub(crate) metrics: Arc<Metrics>,
    /// When each gateway's `last_seen` was last written: a poll writes it at most once a
    /// [`TOUCH_EVERY`], so an idle fleet's polls are reads.
    touched: Mutex<std::collections::HashMap<String, i64>>,
    /// The OMS sync-task API under `/v2/` ([`crate::oms`]), once the server has set it up.
    oms: std::sync::OnceLock<Arc<crate::oms::OmsService>>,
}

/// How stale a gateway's `last_seen` may get before a poll writes it again.
pub(crate) const TOUCH_EVERY: i64 = 60;

/// The API actions, as metric labels (anything else is `other`).
const API_ACTIONS: [&str; 9] = [
    "CreateExpressSync",
    "ValidateExpressSyncConfig",
    "AddSharesToExpressSync",
    "RemoveSharesFromExpressSync",
    "DescribeExpressSyncShares",
    "DescribeExpressSyncs",
    "DeleteExpressSync",
    "DescribeSharesBucketInfoForExpressSync",
    "DescribeTasks",
];

fn api_label(action: &str) -> &'static str {
    API_ACTIONS
        .iter()
        .find(|a| **a == action)
        .copied()
        .unwrap_or("other")
}

/// A strong ETag for an answer: the first 16 bytes of its SHA-256, quoted.
fn etag_of(body: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    format!(
        "\"{}\"",
        sgw_agent::format::hex_lower(&digest.as_ref()[..16])
    )
}

/// `If-None-Match` names `etag` (or `*`).
fn not_modified(req: &Request, etag: &str) -> bool {
    req.header("if-none-match").is_some_and(|v| {
        v.split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == etag || t == "*")
    })
}

/// Holds a group busy until dropped.
pub(crate) struct BusyGuard<'a> {
    service: &'a ControlService,
    id: String,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.service.busy_set().remove(&self.id);
    }
}

pub use sgw_agent::time::unix_now;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        log::error!("{e}");
        ApiError::internal_error()
    }
}

impl From<ParamError> for ApiError {
    fn from(e: ParamError) -> ApiError {
        match &e {
            ParamError::Duplicate(name) => {
                ApiError::invalid_parameter(name, "given more than once")
            }
            ParamError::Malformed(_) | ParamError::TooMany => {
                ApiError::new(400, "InvalidParameter", e.to_string())
            }
        }
    }
}

/// Adapts the store to what signature verification needs.
struct StoreAuth<'a> {
    store: &'a Store,
    now: i64,
}

impl AuthStore for StoreAuth<'_> {
    fn api_secret(&self, access_key_id: &str) -> Result<Option<String>, ApiError> {
        Ok(self.store.api_secret(access_key_id)?)
    }
    fn gateway_secret(&self, gateway_id: &str) -> Result<Option<String>, ApiError> {
        Ok(self.store.gateway_secret(gateway_id)?)
    }
    fn remember_nonce(&self, nonce: &str, expires_at: i64) -> Result<bool, ApiError> {
        Ok(self.store.remember_nonce(nonce, expires_at, self.now)?)
    }
}

/// A successful action: its extra response fields.
pub(crate) type ActionResult = Result<serde_json::Value, ApiError>;

impl ControlService {
    pub fn new(
        store: Store,
        provisioner: Arc<dyn Provisioner>,
        settings: Settings,
    ) -> ControlService {
        let metrics = Arc::new(Metrics::default());
        ControlService {
            store,
            provisioner: Arc::new(CountingProvisioner {
                inner: provisioner,
                metrics: Arc::clone(&metrics),
            }),
            settings,
            busy: Mutex::new(HashSet::new()),
            create_lock: Mutex::new(()),
            rng: SystemRandom::new(),
            metrics,
            touched: Mutex::new(std::collections::HashMap::new()),
            oms: std::sync::OnceLock::new(),
        }
    }

    /// Serves the OMS sync-task API with `oms` (once; later calls are ignored).
    pub fn set_oms(&self, oms: Arc<crate::oms::OmsService>) {
        let _ = self.oms.set(oms);
    }

    /// The OMS service, once set.
    pub fn oms(&self) -> Option<&Arc<crate::oms::OmsService>> {
        self.oms.get()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn busy_set(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.busy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks group `id` busy, or fails with `ExpressSyncInOperation`.
    pub(crate) fn claim(&self, id: &str) -> Result<BusyGuard<'_>, ApiError> {
        if self.busy_set().insert(id.to_string()) {
            Ok(BusyGuard {
                service: self,
                id: id.to_string(),
            })
        } else {
            Err(ApiError::express_sync_in_operation())
        }
    }

    /// `prefix` + `len` random lower-case letters and digits.
    pub(crate) fn new_id(&self, prefix: &str, len: usize) -> String {
        const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let mut bytes = vec![0u8; len];
        if self.rng.fill(&mut bytes).is_err() {
            // The system RNG does not fail on Linux; fall back to time so we never panic.
            let seed = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = (seed >> (i % 16 * 8)) as u8 ^ (i as u8).wrapping_mul(31);
            }
        }
        let mut id = String::from(prefix);
        // 252 = 7 * 36: reject-free mapping is close enough; the ids only need to be unique.
        id.extend(
            bytes
                .iter()
                .map(|b| char::from(ALPHABET[usize::from(*b) % 36])),
        );
        id
    }

    /// Upper-case hex request id in the family's 8-4-4-4-12 shape.
    pub(crate) fn new_request_id(&self) -> String {
        let mut b = [0u8; 16];
        let _ = self.rng.fill(&mut b);
        let hex: String = b.iter().map(|x| format!("{x:02X}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }

    /// A new API access key id (`LTAI` + 20 characters, shaped like the family's ids).
    pub fn new_access_key_id(&self) -> String {
        self.new_id("LTAI", 20)
    }

    /// A new 40-character secret (about 206 bits).
    pub fn new_secret(&self) -> String {
        self.new_id("", 40)
    }

    /// A fresh gateway: id, cluster id and secret. Stored; the secret is shown only here.
    pub fn add_gateway(&self, name: &str, region: &str) -> Result<(Gateway, String), StoreError> {
        let gateway = Gateway {
            id: self.new_id("gw-", 20),
            name: name.to_string(),
            region: region.to_string(),
            storage_bundle_id: self.new_id("sb-", 20),
            created_at: unix_now(),
            last_seen: None,
        };
        let secret = self.new_secret();
        self.store.add_gateway(&gateway, &secret)?;
        Ok((gateway, secret))
    }

    /// Writes the gateway's `last_seen`, unless this process wrote it less than
    /// [`TOUCH_EVERY`] ago.
    pub(crate) fn touch_gateway(&self, gateway_id: &str, now: i64) -> Result<(), StoreError> {
        {
            let touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
            if touched
                .get(gateway_id)
                .is_some_and(|at| now - at < TOUCH_EVERY)
            {
                return Ok(());
            }
        }
        self.store.touch_gateway(gateway_id, now)?;
        self.touched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(gateway_id.to_string(), now);
        Ok(())
    }

    fn metrics_text(&self) -> Response {
        let since = unix_now() - i64::try_from(SEEN_WINDOW.as_secs()).unwrap_or(600);
        let gauges = match (
            self.store.gateway_counts(since),
            self.store.count_express_syncs(),
        ) {
            (Ok((gateways, gateways_seen)), Ok(express_syncs)) => Some(Gauges {
                gateways,
                gateways_seen,
                express_syncs,
            }),
            (Err(e), _) | (_, Err(e)) => {
                log::error!("metrics: reading the store: {e}");
                None
            }
        };
        Response::new(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            self.metrics.render(gauges.as_ref()),
        )
    }

    /// Healthy when the store answers: a load balancer takes a replica whose database is
    /// gone out of rotation.
    fn healthz(&self) -> Response {
        match self.store.count_express_syncs() {
            Ok(_) => Response::json(200, r#"{"status":"ok"}"#),
            Err(e) => {
                log::error!("health check: the store does not answer: {e}");
                Response::json(503, r#"{"status":"store unavailable"}"#)
            }
        }
    }

    /// Entry point for every request.
    pub fn handle(&self, req: Request) -> Response {
        let started = Instant::now();
        let path = req.path.clone();
        let mut route: Route = ("other", "other");
        let response = match path.as_str() {
            "/" => self.handle_api(&req, &mut route),
            "/health" | "/healthz" if req.method == "GET" => {
                route = ("other", "healthz");
                self.healthz()
            }
            "/metrics" if req.method == "GET" => {
                route = ("other", "metrics");
                self.metrics_text()
            }
            p if p.starts_with("/agent/") => self.handle_agent(&req, &mut route),
            p if p.starts_with("/v2/") && self.oms.get().is_some() => {
                route = ("oms", "sync-tasks");
                self.oms
                    .get()
                    .map_or_else(|| Response::json(404, "{}"), |o| o.handle(&req))
            }
            _ => {
                let e = ApiError::new(
                    404,
                    "NotFound",
                    "No such path. The API is at / and the agent API under /agent/v1/.",
                );
                render::error(
                    Format::Json,
                    &self.new_request_id(),
                    &self.settings.host_id,
                    &e,
                )
            }
        };
        self.metrics
            .observe(route, response.status, started.elapsed());
        log::debug!(
            "{} {} -> {} in {:?}",
            req.method,
            path,
            response.status,
            started.elapsed()
        );
        response
    }

    fn handle_api(&self, req: &Request, route: &mut Route) -> Response {
        *route = ("api", "other");
        let request_id = self.new_request_id();
        let now = unix_now();
        let mut query = Params::new();
        let mut all = Params::new();
        let parsed = query.add_encoded(&req.query).and_then(|()| {
            all = query.clone();
            let is_form = req.header("content-type").is_some_and(|ct| {
                ct.to_ascii_lowercase()
                    .starts_with("application/x-www-form-urlencoded")
            });
            if is_form && !req.body.is_empty() {
                let body = std::str::from_utf8(&req.body)
                    .map_err(|_| ParamError::Malformed("body".into()))?;
                all.add_encoded(body)?;
            }
            Ok(())
        });
        let format = Format::from_param(all.get("Format"));
        let reply_error = |e: &ApiError, action: &str, who: &str| {
            log::info!(
                "API {action} by {who}: {} {} ({request_id})",
                e.status,
                e.code
            );
            render::error(
                format.unwrap_or(Format::Json),
                &request_id,
                &self.settings.host_id,
                e,
            )
        };
        if let Err(e) = parsed {
            return reply_error(&e.into(), "?", "?");
        }
        if !matches!(req.method.as_str(), "POST" | "GET") {
            return reply_error(
                &ApiError::new(405, "UnsupportedHTTPMethod", "Use POST or GET."),
                "?",
                "?",
            );
        }
        let auth_store = StoreAuth {
            store: &self.store,
            now,
        };
        let verified = match auth::verify_api_request(req, &query, &all, now, &auth_store) {
            Ok(v) => v,
            Err(e) => return reply_error(&e, all.get("Action").unwrap_or("?"), "unauthenticated"),
        };
        let Some(format) = format else {
            return reply_error(
                &ApiError::unsupported_format(),
                &verified.action,
                &verified.access_key_id,
            );
        };
        let action = verified.action.as_str();
        *route = ("api", api_label(action));
        let result = self.dispatch(action, &all);
        match result {
            Ok(fields) => {
                log::info!(
                    "API {action} by {}: 200 ({request_id})",
                    verified.access_key_id
                );
                render::success(format, action, &request_id, fields)
            }
            Err(e) => reply_error(&e, action, &verified.access_key_id),
        }
    }

    fn dispatch(&self, action: &str, p: &Params) -> ActionResult {
        match action {
            "CreateExpressSync" => self.create_express_sync(p),
            "ValidateExpressSyncConfig" => self.validate_express_sync_config(p),
            "AddSharesToExpressSync" => self.add_shares_to_express_sync(p),
            "RemoveSharesFromExpressSync" => self.remove_shares_from_express_sync(p),
            "DescribeExpressSyncShares" => self.describe_express_sync_shares(p),
            "DescribeExpressSyncs" => self.describe_express_syncs(p),
            "DeleteExpressSync" => self.delete_express_sync(p),
            "DescribeSharesBucketInfoForExpressSync" => self.describe_shares_bucket_info(p),
            "DescribeTasks" => self.describe_tasks(p),
            _ => Err(ApiError::invalid_action()),
        }
    }

    fn handle_agent(&self, req: &Request, route: &mut Route) -> Response {
        *route = (
            "agent",
            match req.path.as_str() {
                protocol::REGISTER_PATH => "register",
                protocol::ASSIGNMENTS_PATH => "assignments",
                protocol::PROGRESS_PATH => "progress",
                _ => "other",
            },
        );
        let request_id = self.new_request_id();
        let now = unix_now();
        let auth_store = StoreAuth {
            store: &self.store,
            now,
        };
        let result = auth::verify_agent_request(req, now, &auth_store).and_then(|gateway_id| {
            let out = match (req.method.as_str(), req.path.as_str()) {
                ("POST", protocol::REGISTER_PATH) => {
                    self.agent_register(&gateway_id, &req.body, now)
                }
                ("GET" | "POST", protocol::ASSIGNMENTS_PATH) => {
                    self.agent_assignments(&gateway_id, now)
                }
                ("POST", protocol::PROGRESS_PATH) => {
                    self.agent_progress(&gateway_id, &req.body, now)
                }
                _ => Err(ApiError::new(404, "NotFound", "No such agent endpoint.")),
            };
            let who = gateway_id;
            match &out {
                Ok(_) => log::debug!("agent {} {} by {who}: 200", req.method, req.path),
                Err(e) => log::info!(
                    "agent {} {} by {who}: {} {}",
                    req.method,
                    req.path,
                    e.status,
                    e.code
                ),
            }
            out
        });
        match result {
            // An idle fleet's polls cost a few bytes each way: the agent sends back the ETag
            // of the assignments it holds.
            Ok(body) if req.path == protocol::ASSIGNMENTS_PATH => {
                let etag = etag_of(&body);
                if not_modified(req, &etag) {
                    Response::new(304, "application/json;charset=utf-8", Vec::new())
                        .with_header("etag", etag)
                } else {
                    Response::json(200, body).with_header("etag", etag)
                }
            }
            Ok(body) => Response::json(200, body),
            Err(e) => {
                let body = AgentError {
                    code: e.code,
                    message: e.message,
                    request_id,
                };
                Response::json(e.status, serde_json::to_vec(&body).unwrap_or_default())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{format_iso8601, rpc_string_to_sign};
    use crate::params::percent_encode;
    use crate::provision::{MemoryProvisioner, ProvisionError};
    use crate::store::ShareSpec;
    use std::time::Duration;

    fn service(p: Arc<MemoryProvisioner>) -> ControlService {
        let store = Store::open_in_memory().expect("store");
        store.put_api_key("AK", "SK", 0).expect("key");
        ControlService::new(
            store,
            p,
            Settings {
                regions: vec!["us-east-1".into()],
                max_express_syncs: 10,
                poll_interval_secs: 30,
                host_id: "test".into(),
            },
        )
    }

    /// An RPC-signed request, as the classic SDK sends it.
    fn call(s: &ControlService, action: &str, params: &[(&str, &str)]) -> serde_json::Value {
        let mut p = Params::new();
        for (k, v) in params {
            p.insert(k, v);
        }
        let nonce = s.new_id("n", 16);
        let ts = format_iso8601(unix_now());
        for (k, v) in [
            ("Action", action),
            ("Version", "2018-05-11"),
            ("AccessKeyId", "AK"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureVersion", "1.0"),
            ("SignatureNonce", nonce.as_str()),
            ("Timestamp", ts.as_str()),
        ] {
            p.insert(k, v);
        }
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"SK&");
        use base64::Engine as _;
        let sig = base64::engine::general_purpose::STANDARD
            .encode(ring::hmac::sign(&key, rpc_string_to_sign("POST", &p).as_bytes()).as_ref());
        p.insert("Signature", &sig);
        let query: Vec<String> = p
            .iter()
            .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
            .collect();
        let response = s.handle(Request {
            method: "POST".into(),
            path: "/".into(),
            query: query.join("&"),
            headers: vec![],
            body: vec![],
            peer: None,
        });
        serde_json::from_slice(&response.body).expect("json answer")
    }

    fn setup(p: &Arc<MemoryProvisioner>) -> (Arc<ControlService>, String, String) {
        let s = Arc::new(service(Arc::clone(p)));
        let (gw, _secret) = s.add_gateway("edge", "us-east-1").expect("gateway");
        let spec = |n: &str| ShareSpec {
            name: n.into(),
            bucket_region: "us-east-1".into(),
            bucket_name: "bk1".into(),
            bucket_prefix: String::new(),
        };
        s.store()
            .register(&gw.id, None, None, &[spec("a"), spec("b")], 1)
            .expect("register");
        let created = call(
            &s,
            "CreateExpressSync",
            &[
                ("Name", "g"),
                ("BucketRegion", "us-east-1"),
                ("BucketName", "bk1"),
            ],
        );
        let id = created["ExpressSyncId"]
            .as_str()
            .expect("created")
            .to_string();
        (s, gw.id, id)
    }

    #[test]
    fn a_busy_group_answers_in_operation() {
        let p = Arc::new(MemoryProvisioner::new());
        let (s, gw, id) = setup(&p);
        p.state.lock().expect("lock").delay = Some(Duration::from_millis(600));
        let shares = format!("{{\"{gw}\":\"a\"}}");
        let slow = {
            let (s, id, shares) = (Arc::clone(&s), id.clone(), shares.clone());
            std::thread::spawn(move || {
                call(
                    &s,
                    "AddSharesToExpressSync",
                    &[("ExpressSyncId", &id), ("GatewayShares", &shares)],
                )
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        let second = call(&s, "DeleteExpressSync", &[("ExpressSyncId", &id)]);
        assert_eq!(second["Code"], "ExpressSyncInOperation", "{second}");
        let first = slow.join().expect("thread");
        assert_eq!(first["Success"], true, "{first}");
        // Once the first is done the group is free again.
        p.state.lock().expect("lock").delay = None;
        let deleted = call(&s, "DeleteExpressSync", &[("ExpressSyncId", &id)]);
        assert_eq!(deleted["Success"], true, "{deleted}");
        let state = p.snapshot();
        assert!(
            state.queues.is_empty() && state.topics.is_empty(),
            "{state:?}"
        );
    }

    fn register(
        s: &ControlService,
        gw: &str,
        body: serde_json::Value,
    ) -> Result<Vec<String>, String> {
        let body = serde_json::to_vec(&body).expect("json");
        match s.agent_register(gw, &body, unix_now()) {
            Ok(out) => {
                let r: protocol::RegisterResponse = serde_json::from_slice(&out).expect("answer");
                Ok(r.shares)
            }
            Err(e) => Err(format!("{} {}", e.code, e.message)),
        }
    }

    fn assignments(s: &ControlService, gw: &str) -> Vec<protocol::AssignmentEntry> {
        let out = s.agent_assignments(gw, unix_now()).expect("assignments");
        serde_json::from_slice::<protocol::AssignmentsResponse>(&out)
            .expect("answer")
            .assignments
    }

    fn external_names(s: &ControlService, id: &str) -> Vec<String> {
        let r = call(
            s,
            "DescribeExpressSyncShares",
            &[("ExpressSyncIds", id), ("IsExternal", "true")],
        );
        r["Shares"]["Share"]
            .as_array()
            .expect("shares")
            .iter()
            .filter_map(|x| x["ShareName"].as_str().map(String::from))
            .collect()
    }

    #[test]
    fn an_unbound_share_joins_any_group_and_is_unbound_when_it_leaves() {
        let p = Arc::new(MemoryProvisioner::new());
        let (s, gw, on_bk1) = setup(&p);
        // The agent knows only its share names: absent, null and empty all mean "no bucket".
        let shares = register(
            &s,
            &gw,
            serde_json::json!({"shares": [
                {"name": "a", "bucket_region": "us-east-1", "bucket_name": "bk1"},
                {"name": "u"},
                {"name": "v", "bucket_region": null, "bucket_name": null, "bucket_prefix": null},
                {"name": "w", "bucket_region": "", "bucket_name": "", "bucket_prefix": ""},
            ]}),
        )
        .expect("unbound shares register");
        assert_eq!(shares, vec!["a", "u", "v", "w"]);
        let on_bk2 = call(
            &s,
            "CreateExpressSync",
            &[
                ("Name", "g2"),
                ("BucketRegion", "us-east-1"),
                ("BucketName", "bk2"),
                ("BucketPrefix", "in/"),
            ],
        )["ExpressSyncId"]
            .as_str()
            .expect("created")
            .to_string();
        assert_eq!(external_names(&s, &on_bk1), vec!["a", "u", "v", "w"]);
        assert_eq!(external_names(&s, &on_bk2), vec!["u", "v", "w"]);

        // Joining bk2's group binds `u` to bk2/in/; `a` is bound to bk1 and stays refused.
        let add = |id: &str, names: &str| {
            let shares = format!("{{\"{gw}\":\"{names}\"}}");
            call(
                &s,
                "AddSharesToExpressSync",
                &[("ExpressSyncId", id), ("GatewayShares", &shares)],
            )
        };
        let refused = add(&on_bk2, "u,a");
        assert_eq!(refused["Code"], "ConflictExpressSyncConfig", "{refused}");
        assert!(
            assignments(&s, &gw).is_empty(),
            "a refused add binds nothing"
        );
        let added = add(&on_bk2, "u");
        assert_eq!(added["Success"], true, "{added}");
        let got = assignments(&s, &gw);
        assert_eq!(got.len(), 1);
        assert_eq!(
            (
                got[0].share_name.as_str(),
                got[0].bucket_name.as_str(),
                got[0].bucket_prefix.as_str(),
                got[0].express_sync_id.as_str()
            ),
            ("u", "bk2", "in/", on_bk2.as_str())
        );
        assert!(!got[0].queue_url.is_empty());
        // While a member it is nobody's candidate, and cannot join a second group.
        assert_eq!(external_names(&s, &on_bk1), vec!["a", "v", "w"]);
        let twice = add(&on_bk1, "u");
        assert_eq!(twice["Code"], "ConflictExpressSyncConfig", "{twice}");

        // Removed, it is unbound again and can join the group on the other bucket.
        let shares = format!("{{\"{gw}\":\"u\"}}");
        let removed = call(
            &s,
            "RemoveSharesFromExpressSync",
            &[("ExpressSyncId", &on_bk2), ("GatewayShares", &shares)],
        );
        assert_eq!(removed["Success"], true, "{removed}");
        assert!(assignments(&s, &gw).is_empty());
        assert_eq!(external_names(&s, &on_bk1), vec!["a", "u", "v", "w"]);
        assert_eq!(add(&on_bk1, "u")["Success"], true);
        assert_eq!(assignments(&s, &gw)[0].bucket_name, "bk1");
        // Deleting that group unbinds it too.
        let deleted = call(&s, "DeleteExpressSync", &[("ExpressSyncId", &on_bk1)]);
        assert_eq!(deleted["Success"], true, "{deleted}");
        assert_eq!(external_names(&s, &on_bk2), vec!["u", "v", "w"]);
        assert!(p.snapshot().queues.is_empty());
    }

    #[test]
    fn a_half_given_bucket_is_refused_and_changes_nothing() {
        let p = Arc::new(MemoryProvisioner::new());
        let (s, gw, _id) = setup(&p);
        let before = s.store().shares_of_gateway(&gw).expect("shares");
        let long_prefix = "p".repeat(2000);
        for (share, why) in [
            (
                serde_json::json!({"name": "x", "bucket_name": "bk1"}),
                "bucket without region",
            ),
            (
                serde_json::json!({"name": "x", "bucket_region": "us-east-1"}),
                "region without bucket",
            ),
            (
                serde_json::json!({"name": "x", "bucket_region": "us-east-1", "bucket_name": ""}),
                "empty bucket",
            ),
            (
                serde_json::json!({"name": "x", "bucket_prefix": "photos/"}),
                "prefix without bucket",
            ),
            (
                serde_json::json!({"name": "x", "bucket_prefix": long_prefix}),
                "oversized prefix without bucket",
            ),
            (
                serde_json::json!({"name": "x", "bucket_region": "us-east-1", "bucket_name": "Bad_Bucket"}),
                "bad bucket",
            ),
            (
                serde_json::json!({"name": "x", "bucket_region": "us east 1", "bucket_name": "bk1"}),
                "bad region",
            ),
            (
                serde_json::json!({"name": "x", "bucket_region": "us-east-1", "bucket_name": "   "}),
                "blank bucket",
            ),
            (
                serde_json::json!({"name": "x", "bucket_region": 7, "bucket_name": "bk1"}),
                "region of the wrong type",
            ),
            (
                serde_json::json!({"name": "x", "bucket_name": ["bk1"]}),
                "bucket of the wrong type",
            ),
        ] {
            let body = serde_json::json!({"shares": [share]});
            let err = register(&s, &gw, body).expect_err(why);
            assert!(err.starts_with("InvalidBody "), "{why}: {err}");
        }
        assert_eq!(s.store().shares_of_gateway(&gw).expect("shares"), before);
    }

    #[test]
    fn a_failed_provisioning_leaves_no_member_and_no_queue() {
        let p = Arc::new(MemoryProvisioner::new());
        let (s, gw, id) = setup(&p);
        p.state.lock().expect("lock").fail_with = Some(ProvisionError::Failed("peer down".into()));
        let shares = format!("{{\"{gw}\":\"a,b\"}}");
        let r = call(
            &s,
            "AddSharesToExpressSync",
            &[("ExpressSyncId", &id), ("GatewayShares", &shares)],
        );
        assert_eq!(r["Code"], "InternalError", "{r}");
        assert!(s.store().members(&id).expect("members").is_empty());
        let denied = ProvisionError::Denied("403".into());
        p.state.lock().expect("lock").fail_with = Some(denied);
        let r = call(
            &s,
            "CreateExpressSync",
            &[
                ("Name", "g2"),
                ("BucketRegion", "us-east-1"),
                ("BucketName", "bk2"),
            ],
        );
        assert_eq!(r["Code"], "NoPermission", "{r}");
        assert_eq!(s.store().count_express_syncs().expect("count"), 1);
        p.state.lock().expect("lock").fail_with = None;
        let r = call(
            &s,
            "AddSharesToExpressSync",
            &[("ExpressSyncId", &id), ("GatewayShares", &shares)],
        );
        assert_eq!(r["Success"], true, "{r}");
        // Adding the same shares again is idempotent: same queues, nothing new provisioned.
        let again = call(
            &s,
            "AddSharesToExpressSync",
            &[("ExpressSyncId", &id), ("GatewayShares", &shares)],
        );
        assert_eq!(again["MnsQueues"], r["MnsQueues"]);
        assert_eq!(p.snapshot().queues.len(), 2);
    }
}
