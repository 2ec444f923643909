//! Huawei Cloud OMS synchronization tasks (seed 003), served so that the official
//! `huaweicloudsdkoms` (3.1.x, with `huaweicloudsdkcore`) works against `sgw-control`
//! unmodified, and run here: bucket → bucket, with the agent's reconciliation engine.
//!
//! | action | request | answer |
//! |---|---|---|
//! | CreateSyncTask | `POST /v2/{project_id}/sync-tasks` | `{"sync_task_id"}` |
//! | ListSyncTasks | `GET /v2/{project_id}/sync-tasks?limit&offset&status` | `{"tasks": [SyncTaskInfo], "count"}` |
//! | ShowSyncTask | `GET …/sync-tasks/{sync_task_id}` | SyncTaskInfo + `monthly_*` |
//! | StopSyncTask | `POST …/{id}/stop` | `{}` |
//! | StartSyncTask | `POST …/{id}/start` (src/dst AK/SK again) | `{}` |
//! | DeleteSyncTask | `DELETE …/{id}` | `{}` |
//! | CreateSyncEvents | `POST …/{id}/events` `{"object_keys": [≤ 10 URL-encoded keys]}` | `{}` |
//! | ListSyncTaskStatistic | `GET …/{id}/statistics?data_type&start_time&end_time` | `{"sync_task_id", "statistic_time_type", "statistic_datas"}` |
//!
//! Tenants and keys: the SDK's AK/SK are this endpoint's API access keys (the store the
//! Alibaba-protocol actions use: the `SGW_ACCESS_KEY_ID`/`SGW_ACCESS_KEY_SECRET` bootstrap key
//! or `sgw-control key add`); the `project_id` of the path is the tenant, and every task
//! belongs to exactly one. Any API key may act for any project (this endpoint has no IAM).
//! Signatures: [`auth`]. Validation, limits and answers: [`api`]. Where buckets are:
//! [`endpoints`]. The work: [`task`]. Tables and sealed credentials: [`db`].
//!
//! Errors are `{"error_code", "error_msg", "request_id"}`, which the SDK turns into
//! `ClientRequestException(status_code, error_code, error_msg)`:
//!
//! | status | error_code | when |
//! |---|---|---|
//! | 400 | `OMS.0001` | a body field or query parameter breaks a documented rule (the message names it) |
//! | 400 | `OMS.0002` | a documented feature this endpoint cannot honour: KMS (`*_crypto_type=KMS`, `*_kms_key_id`, `enable_kms=true`), `source_cdn`, Azure, a cloud/region with no S3 endpoint |
//! | 400 | `OMS.0003` | the project already has five synchronization tasks |
//! | 404 | `OMS.0004` | no such task in this project |
//! | 400 | `OMS.0005` | the task is not in a state that allows it (start a running task, stop a stopped one, events for a stopped one) |
//! | 500 | `OMS.0000` | internal error (details in the log) |
//! | 401 | `APIGW.0301` | wrong or unknown AK/SK signature, malformed `Authorization` |
//! | 401 | `APIGW.0303` | `X-Sdk-Date` missing, malformed or more than 15 minutes off |
//! | 401 | `APIGW.0304` | a state-changing request replayed |
//! | 401 | `APIGW.0305` | not signed with AK/SK (`X-Auth-Token` alone is not accepted) |
//! | 404 | `APIGW.0101` | no such API (path or method) |

pub mod api;
pub mod auth;
pub mod bucket;
pub mod db;
pub mod endpoints;
pub mod task;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use ring::rand::{SecureRandom, SystemRandom};

use crate::http_server::{Request, Response};
use crate::store::Store;
use db::Sealer;
use endpoints::Endpoints;
use task::{RunSettings, Running};

/// Most tasks per project, as the seed says.
pub const MAX_TASKS_PER_PROJECT: i64 = 5;
/// Statistics are kept per five minutes (`FIVE_MINUTES`).
pub const SLOT_MS: i64 = 5 * 60 * 1000;

/// One error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OmsError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl OmsError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> OmsError {
        OmsError {
            status,
            code: code.to_string(),
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> OmsError {
        OmsError::new(400, "OMS.0001", message)
    }
    pub fn unsupported(message: impl Into<String>) -> OmsError {
        OmsError::new(400, "OMS.0002", message)
    }
    pub fn not_found() -> OmsError {
        OmsError::new(
            404,
            "OMS.0004",
            "The synchronization task does not exist in this project.",
        )
    }
    pub fn state(message: impl Into<String>) -> OmsError {
        OmsError::new(400, "OMS.0005", message)
    }
    pub fn internal() -> OmsError {
        OmsError::new(500, "OMS.0000", "Internal error; see the sgw-control log.")
    }
    pub fn signature(message: &str) -> OmsError {
        OmsError::new(401, "APIGW.0301", message)
    }
    pub fn date(message: &str) -> OmsError {
        OmsError::new(401, "APIGW.0303", message)
    }
}

impl From<crate::store::StoreError> for OmsError {
    fn from(e: crate::store::StoreError) -> OmsError {
        log::error!("OMS: {e}");
        OmsError::internal()
    }
}

/// The OMS service inside `sgw-control`.
pub struct OmsService {
    store: Arc<Store>,
    sealer: Sealer,
    endpoints: Endpoints,
    settings: RunSettings,
    running: Mutex<HashMap<String, Running>>,
    /// Threads of stopped tasks that may still be finishing their current object.
    stopping: Mutex<HashMap<String, JoinHandle<()>>>,
    /// Create, start, stop and delete run one at a time.
    changes: Mutex<()>,
    rng: SystemRandom,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl OmsService {
    /// Opens its own connection to `<data_dir>/control.db` and the key file next to it.
    pub fn open(
        data_dir: &Path,
        endpoints: Endpoints,
        settings: RunSettings,
    ) -> Result<OmsService, String> {
        let store = Store::open_dir(data_dir).map_err(|e| e.to_string())?;
        let sealer = Sealer::open_dir(data_dir)?;
        Ok(OmsService {
            store: Arc::new(store),
            sealer,
            endpoints,
            settings,
            running: Mutex::new(HashMap::new()),
            stopping: Mutex::new(HashMap::new()),
            changes: Mutex::new(()),
            rng: SystemRandom::new(),
        })
    }

    /// Starts again every task that was running when `sgw-control` last stopped.
    pub fn resume(&self) {
        let rows = match self.store.oms_running_tasks() {
            Ok(r) => r,
            Err(e) => {
                log::error!("OMS: cannot read the tasks to resume: {e}");
                return;
            }
        };
        for (row, sealed) in rows {
            let keys = sealed
                .ok_or_else(|| "no stored keys".to_string())
                .and_then(|s| self.sealer.unseal(&row.id, &s));
            match keys.and_then(|keys| self.launch(&row, keys)) {
                Ok(()) => log::info!("OMS task {} resumed", row.id),
                Err(e) => log::error!(
                    "OMS task {} cannot be resumed ({e}); it stays SYNCHRONIZING: stop and \
                     start it with its keys",
                    row.id
                ),
            }
        }
    }

    fn launch(&self, row: &db::TaskRow, keys: db::TaskKeys) -> Result<(), String> {
        let source = self
            .endpoints
            .resolve(&row.spec.src_cloud_type, &row.spec.src_region)?;
        let destination = self
            .endpoints
            .resolve(endpoints::DESTINATION_CLOUD, &row.spec.dst_region)?;
        if let Some(old) = locked(&self.stopping).remove(&row.id) {
            let _ = old.join();
        }
        let running = task::spawn(
            Arc::clone(&self.store),
            self.settings.clone(),
            task::Launch {
                row: row.clone(),
                keys,
                source,
                destination,
            },
        )?;
        locked(&self.running).insert(row.id.clone(), running);
        Ok(())
    }

    /// Signals the task's thread to stop (it finishes within seconds).
    fn halt(&self, id: &str) {
        if let Some(r) = locked(&self.running).remove(id) {
            r.stop.store(true, std::sync::atomic::Ordering::Relaxed);
            locked(&self.stopping).insert(id.to_string(), r.thread);
        }
    }

    /// Stops every thread (process shutdown); the tasks stay SYNCHRONIZING and resume.
    pub fn shutdown(&self) {
        let ids: Vec<String> = locked(&self.running).keys().cloned().collect();
        for id in &ids {
            self.halt(id);
        }
        let threads: Vec<_> = locked(&self.stopping).drain().collect();
        for (_, t) in threads {
            let _ = t.join();
        }
    }

    fn new_task_id(&self) -> String {
        let mut b = [0u8; 16];
        let _ = self.rng.fill(&mut b);
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    pub fn handle(&self, req: &Request) -> Response {
        api::handle(self, req)
    }
}
