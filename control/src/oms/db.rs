//! The OMS tables of the store (schema version 2, see [`crate::store`]) and the sealing of the
//! source/destination AK/SK.
//!
//! **Credentials at rest.** A running task's four keys are kept in `oms_tasks.sealed_credentials`
//! as AES-256-GCM ciphertext (random 96-bit nonce, the task id as associated data) under a
//! 256-bit key in `<data_dir>/oms-credentials.key` (created on first use, mode 0600). A copy of
//! `control.db` alone (a backup, a support bundle) therefore holds no usable key; the key file
//! is kept out of it. Stop (and Delete) erase the ciphertext: a stopped task has forgotten
//! its keys and Start must carry them again, as the OMS API documents. That is also why a
//! restart of `sgw-control` can resume exactly the tasks that were running.

use std::fmt;
use std::io::Write;
use std::path::Path;

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError, StoreResult};
use sgw_agent::model::LocalRecord;

pub const STATUS_SYNCHRONIZING: &str = "SYNCHRONIZING";
pub const STATUS_STOPPED: &str = "STOPPED";

/// What a task is, without secrets (stored as JSON in `oms_tasks.spec`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub src_cloud_type: String,
    pub src_region: String,
    pub src_bucket: String,
    pub dst_region: String,
    pub dst_bucket: String,
    pub description: Option<String>,
    pub enable_metadata_migration: bool,
    pub enable_restore: bool,
    pub dst_storage_policy: String,
    pub app_id: Option<String>,
    pub object_overwrite_mode: String,
    pub consistency_check: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    pub id: String,
    pub project_id: String,
    pub spec: TaskSpec,
    pub status: String,
    /// Unix milliseconds, as the SDK's `SyncTaskInfo` documents.
    pub create_time: i64,
    pub last_start_time: i64,
}

/// The four keys of a running task.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskKeys {
    pub src_ak: String,
    pub src_sk: String,
    pub dst_ak: String,
    pub dst_sk: String,
}

impl fmt::Debug for TaskKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TaskKeys(<redacted>)")
    }
}

/// Counters of one statistics slot: request, success, failure, skip, size.
pub type Counters = [i64; 5];

/// AES-256-GCM under the data directory's key file.
pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl Sealer {
    pub fn open_dir(dir: &Path) -> Result<Sealer, String> {
        let path = dir.join("oms-credentials.key");
        let rng = SystemRandom::new();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                let mut b = vec![0u8; 32];
                rng.fill(&mut b)
                    .map_err(|_| "no system randomness".to_string())?;
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut f = options
                    .open(&path)
                    .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
                f.write_all(&b)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                b
            }
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        Sealer::from_key(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn from_key(bytes: &[u8]) -> Result<Sealer, String> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| "the key must be 32 bytes".to_string())?;
        Ok(Sealer {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        })
    }

    pub fn seal(&self, task_id: &str, keys: &TaskKeys) -> Result<String, String> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| "no system randomness".to_string())?;
        let mut data = serde_json::to_vec(keys).map_err(|e| e.to_string())?;
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(task_id.as_bytes()),
                &mut data,
            )
            .map_err(|_| "sealing failed".to_string())?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(base64::engine::general_purpose::STANDARD.encode(out))
    }

    pub fn unseal(&self, task_id: &str, sealed: &str) -> Result<TaskKeys, String> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| "not base64".to_string())?;
        if raw.len() < NONCE_LEN + 16 {
            return Err("too short".into());
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "bad nonce".to_string())?;
        let mut data = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(task_id.as_bytes()), &mut data)
            .map_err(|_| "cannot be opened with this data directory's key file".to_string())?;
        serde_json::from_slice(plain).map_err(|e| e.to_string())
    }
}

fn row_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<(TaskRow, Option<String>)> {
    let spec_text: String = r.get("spec")?;
    let spec: TaskSpec = serde_json::from_str(&spec_text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok((
        TaskRow {
            id: r.get("id")?,
            project_id: r.get("project_id")?,
            spec,
            status: r.get("status")?,
            create_time: r.get("create_time")?,
            last_start_time: r.get("last_start_time")?,
        },
        r.get("sealed_credentials")?,
    ))
}

fn to_json(spec: &TaskSpec) -> StoreResult<String> {
    serde_json::to_string(spec).map_err(|e| StoreError(e.to_string()))
}

impl Store {
    /// Inserts a running task unless the project already has `max` tasks (`Ok(false)`).
    pub fn oms_insert_task(&self, row: &TaskRow, sealed: &str, max: i64) -> StoreResult<bool> {
        let spec = to_json(&row.spec)?;
        self.write(|tx| {
            let count: i64 = tx.query_row(
                "SELECT COUNT(*) FROM oms_tasks WHERE project_id = ?1",
                [&row.project_id],
                |r| r.get(0),
            )?;
            if count >= max {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO oms_tasks (id, project_id, spec, status, sealed_credentials, \
                 create_time, last_start_time) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    row.id,
                    row.project_id,
                    spec,
                    row.status,
                    sealed,
                    row.create_time,
                    row.last_start_time
                ],
            )?;
            Ok(true)
        })
    }

    pub fn oms_task(&self, project_id: &str, id: &str) -> StoreResult<Option<TaskRow>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT * FROM oms_tasks WHERE project_id = ?1 AND id = ?2",
                [project_id, id],
                row_from,
            )
            .optional()?
            .map(|(row, _)| row))
    }

    /// (total matching, page), newest first.
    pub fn oms_tasks(
        &self,
        project_id: &str,
        status: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> StoreResult<(i64, Vec<TaskRow>)> {
        let conn = self.lock();
        let count: i64 = conn.query_row(
            "SELECT COUNT(*) FROM oms_tasks WHERE project_id = ?1 AND (?2 IS NULL OR status = ?2)",
            params![project_id, status],
            |r| r.get(0),
        )?;
        let mut stmt = conn.prepare(
            "SELECT * FROM oms_tasks WHERE project_id = ?1 AND (?2 IS NULL OR status = ?2) \
             ORDER BY create_time DESC, id DESC LIMIT ?3 OFFSET ?4",
        )?;
        let rows = stmt
            .query_map(params![project_id, status, limit, offset], row_from)?
            .map(|r| r.map(|(row, _)| row))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((count, rows))
    }

    /// Every running task with its sealed keys (resumed at start-up).
    pub fn oms_running_tasks(&self) -> StoreResult<Vec<(TaskRow, Option<String>)>> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT * FROM oms_tasks WHERE status = ?1 ORDER BY id")?;
        let rows = stmt
            .query_map([STATUS_SYNCHRONIZING], row_from)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn oms_set_running(&self, id: &str, sealed: &str, now_ms: i64) -> StoreResult<()> {
        self.lock().execute(
            "UPDATE oms_tasks SET status = ?2, sealed_credentials = ?3, last_start_time = ?4 \
             WHERE id = ?1",
            params![id, STATUS_SYNCHRONIZING, sealed, now_ms],
        )?;
        Ok(())
    }

    /// Stopped, and the keys forgotten.
    pub fn oms_set_stopped(&self, id: &str) -> StoreResult<()> {
        self.lock().execute(
            "UPDATE oms_tasks SET status = ?2, sealed_credentials = NULL WHERE id = ?1",
            params![id, STATUS_STOPPED],
        )?;
        Ok(())
    }

    pub fn oms_delete_task(&self, id: &str) -> StoreResult<()> {
        self.write(|tx| {
            tx.execute("DELETE FROM oms_objects WHERE task_id = ?1", [id])?;
            tx.execute("DELETE FROM oms_stats WHERE task_id = ?1", [id])?;
            tx.execute("DELETE FROM oms_tasks WHERE id = ?1", [id])?;
            Ok(())
        })
    }

    /// The base of every key the task has settled, in key (UTF-8 byte) order.
    pub fn oms_objects(&self, task_id: &str) -> StoreResult<Vec<LocalRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT key, size, etag, last_modified, crc64nvme FROM oms_objects \
             WHERE task_id = ?1 ORDER BY key",
        )?;
        let rows = stmt
            .query_map([task_id], |r| {
                let size: i64 = r.get(1)?;
                let crc: i64 = r.get(4)?;
                Ok(LocalRecord {
                    key: r.get(0)?,
                    size: u64::try_from(size).unwrap_or(0),
                    etag: r.get(2)?,
                    last_modified: r.get(3)?,
                    crc64nvme: u64::from_ne_bytes(crc.to_ne_bytes()),
                    sequencer: None,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The base of one key, if settled.
    pub fn oms_object(
        &self,
        task_id: &str,
        key: &str,
    ) -> StoreResult<Option<(u64, Option<String>, i64)>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT size, etag, last_modified FROM oms_objects WHERE task_id = ?1 AND key = ?2",
                [task_id, key],
                |r| {
                    let size: i64 = r.get(0)?;
                    Ok((u64::try_from(size).unwrap_or(0), r.get(1)?, r.get(2)?))
                },
            )
            .optional()?)
    }

    pub fn oms_put_object(&self, task_id: &str, r: &LocalRecord) -> StoreResult<()> {
        self.lock().execute(
            "INSERT INTO oms_objects (task_id, key, size, etag, last_modified, crc64nvme) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (task_id, key) DO UPDATE SET \
             size = excluded.size, etag = excluded.etag, last_modified = excluded.last_modified, \
             crc64nvme = excluded.crc64nvme",
            params![
                task_id,
                r.key,
                i64::try_from(r.size).unwrap_or(i64::MAX),
                r.etag,
                r.last_modified,
                i64::from_ne_bytes(r.crc64nvme.to_ne_bytes())
            ],
        )?;
        Ok(())
    }

    pub fn oms_remove_object(&self, task_id: &str, key: &str) -> StoreResult<()> {
        self.lock().execute(
            "DELETE FROM oms_objects WHERE task_id = ?1 AND key = ?2",
            [task_id, key],
        )?;
        Ok(())
    }

    pub fn oms_add_stats(&self, task_id: &str, slot: i64, add: Counters) -> StoreResult<()> {
        self.lock().execute(
            "INSERT INTO oms_stats (task_id, slot, request, success, failure, skip, size) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (task_id, slot) DO UPDATE SET \
             request = request + excluded.request, success = success + excluded.success, \
             failure = failure + excluded.failure, skip = skip + excluded.skip, \
             size = size + excluded.size",
            params![task_id, slot, add[0], add[1], add[2], add[3], add[4]],
        )?;
        Ok(())
    }

    /// Slots (Unix ms of their start) from `from` to `to` inclusive, in order.
    pub fn oms_stats(
        &self,
        task_id: &str,
        from: i64,
        to: i64,
    ) -> StoreResult<Vec<(i64, Counters)>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT slot, request, success, failure, skip, size FROM oms_stats \
             WHERE task_id = ?1 AND slot >= ?2 AND slot <= ?3 ORDER BY slot",
        )?;
        let rows = stmt
            .query_map(params![task_id, from, to], |r| {
                Ok((
                    r.get(0)?,
                    [r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?],
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TaskKeys {
        TaskKeys {
            src_ak: "sa".into(),
            src_sk: "source-secret".into(),
            dst_ak: "da".into(),
            dst_sk: "dest-secret".into(),
        }
    }

    #[test]
    fn sealed_keys_open_only_for_their_task_and_never_show() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Sealer::open_dir(dir.path()).expect("sealer");
        let sealed = s.seal("task-1", &keys()).expect("seal");
        assert!(!sealed.contains("secret"));
        assert_eq!(s.unseal("task-1", &sealed).expect("open"), keys());
        assert!(s.unseal("task-2", &sealed).is_err());
        // The same key file opens it again (a restart).
        let again = Sealer::open_dir(dir.path()).expect("reopen");
        assert_eq!(again.unseal("task-1", &sealed).expect("open"), keys());
        assert_eq!(format!("{:?}", keys()), "TaskKeys(<redacted>)");
        let other = tempfile::tempdir().expect("tempdir");
        assert!(
            Sealer::open_dir(other.path())
                .expect("other")
                .unseal("task-1", &sealed)
                .is_err()
        );
    }
}
