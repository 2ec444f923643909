//! The control endpoint's state in one SQLite file (`<data_dir>/control.db`): API keys,
//! gateways and their shares, express sync groups, group membership with each share's queue and
//! reported progress, tasks, and the nonces seen inside the replay window.
//!
//! Each API action is one transaction. The schema carries a version; a database written by a
//! newer `sgw-control` is refused rather than misread, an older one is migrated in place.
//!
//! Version 2 added the OMS sync tasks ([`crate::oms`]): `oms_tasks` (one row per task; the
//! source/destination AK/SK only while the task runs, sealed with the key file next to the
//! database), `oms_objects` (per task and key, the source version last copied: the base the
//! reconciliation compares with) and `oms_stats` (counters per task and five-minute slot).

use std::fmt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

/// The schema this build reads and writes.
pub const SCHEMA_VERSION: i64 = 2;

/// A database failure; the API answers `InternalError` and the log keeps this text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError(format!("database: {e}"))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    pub id: String,
    pub name: String,
    pub region: String,
    pub storage_bundle_id: String,
    pub created_at: i64,
    /// Last successful agent call, Unix seconds.
    pub last_seen: Option<i64>,
}

/// A share as its gateway registered it.
///
/// An *unbound* share (empty `bucket_region` and `bucket_name`) is never given a bucket in this
/// row: while it is in a group it uses the group's bucket, region and prefix, so leaving the
/// group (remove or delete) unbinds it with no further write, and a re-registration cannot
/// undo a binding made by an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub id: i64,
    pub gateway_id: String,
    pub name: String,
    pub bucket_region: String,
    pub bucket_name: String,
    pub bucket_prefix: String,
}

impl Share {
    /// `false` for a share registered without a bucket.
    pub fn is_bound(&self) -> bool {
        !self.bucket_name.is_empty()
    }
}

/// What an agent registers for one share (empty region and bucket: unbound).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareSpec {
    pub name: String,
    pub bucket_region: String,
    pub bucket_name: String,
    pub bucket_prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpressSync {
    pub id: String,
    pub name: String,
    pub description: String,
    pub bucket_region: String,
    pub bucket_name: String,
    pub bucket_prefix: String,
    pub topic_name: String,
    /// Provider handle of the topic (SNS topic ARN).
    pub topic_ref: String,
    /// Provider handle of the bucket notification rule (its Id).
    pub notification_ref: String,
    pub created_at: i64,
}

/// A share's place in a group: its queue and what the agent last reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub share_id: i64,
    pub sync_id: String,
    pub queue_name: String,
    pub queue_url: String,
    /// Provider handle of the queue (SQS queue ARN).
    pub queue_ref: String,
    /// Provider handle of the topic→queue subscription.
    pub subscription_ref: String,
    pub sync_progress: i64,
    pub state: String,
    pub reported_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub id: String,
    pub name: String,
    pub target_id: String,
    pub related_resource_id: String,
    pub state_code: String,
    pub message_key: String,
    pub progress: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One share's report from its agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressReport {
    pub share_name: String,
    pub sync_progress: i64,
    pub state: String,
}

/// A member with its share and gateway, as `DescribeExpressSyncShares` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub member: Member,
    pub share: Share,
    pub gateway: Gateway,
}

/// A share's assignment, as the agent receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub share: Share,
    pub member: Member,
    pub sync: ExpressSync,
}

pub struct Store {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS api_keys (
    access_key_id TEXT PRIMARY KEY,
    secret TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS gateways (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    region TEXT NOT NULL,
    storage_bundle_id TEXT NOT NULL,
    secret TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_seen INTEGER
);
CREATE TABLE IF NOT EXISTS shares (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    gateway_id TEXT NOT NULL REFERENCES gateways(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    bucket_region TEXT NOT NULL,
    bucket_name TEXT NOT NULL,
    bucket_prefix TEXT NOT NULL,
    UNIQUE (gateway_id, name)
);
CREATE TABLE IF NOT EXISTS express_syncs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    bucket_region TEXT NOT NULL,
    bucket_name TEXT NOT NULL,
    bucket_prefix TEXT NOT NULL,
    topic_name TEXT NOT NULL,
    topic_ref TEXT NOT NULL,
    notification_ref TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS members (
    share_id INTEGER PRIMARY KEY REFERENCES shares(id) ON DELETE RESTRICT,
    sync_id TEXT NOT NULL REFERENCES express_syncs(id) ON DELETE CASCADE,
    queue_name TEXT NOT NULL,
    queue_url TEXT NOT NULL,
    queue_ref TEXT NOT NULL,
    subscription_ref TEXT NOT NULL,
    sync_progress INTEGER NOT NULL,
    state TEXT NOT NULL,
    reported_at INTEGER
);
CREATE INDEX IF NOT EXISTS members_by_sync ON members(sync_id);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    target_id TEXT NOT NULL,
    related_resource_id TEXT NOT NULL,
    state_code TEXT NOT NULL,
    message_key TEXT NOT NULL,
    progress INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_by_target ON tasks(target_id, created_at);
CREATE TABLE IF NOT EXISTS nonces (
    nonce TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS nonces_by_expiry ON nonces(expires_at);
";

/// Added by schema version 2 (OMS sync tasks); also how a version-1 database is migrated.
const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS oms_tasks (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    sealed_credentials TEXT,
    create_time INTEGER NOT NULL,
    last_start_time INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS oms_tasks_by_project ON oms_tasks(project_id, create_time);
CREATE TABLE IF NOT EXISTS oms_objects (
    task_id TEXT NOT NULL REFERENCES oms_tasks(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT,
    last_modified INTEGER NOT NULL,
    crc64nvme INTEGER NOT NULL,
    PRIMARY KEY (task_id, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS oms_stats (
    task_id TEXT NOT NULL REFERENCES oms_tasks(id) ON DELETE CASCADE,
    slot INTEGER NOT NULL,
    request INTEGER NOT NULL DEFAULT 0,
    success INTEGER NOT NULL DEFAULT 0,
    failure INTEGER NOT NULL DEFAULT 0,
    skip INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (task_id, slot)
) WITHOUT ROWID;
";

fn gateway_from(row: &rusqlite::Row<'_>) -> rusqlite::Result<Gateway> {
    Ok(Gateway {
        id: row.get("id")?,
        name: row.get("name")?,
        region: row.get("region")?,
        storage_bundle_id: row.get("storage_bundle_id")?,
        created_at: row.get("created_at")?,
        last_seen: row.get("last_seen")?,
    })
}

fn share_from(row: &rusqlite::Row<'_>) -> rusqlite::Result<Share> {
    Ok(Share {
        id: row.get("share_id")?,
        gateway_id: row.get("gateway_id")?,
        name: row.get("share_name")?,
        bucket_region: row.get("share_bucket_region")?,
        bucket_name: row.get("share_bucket_name")?,
        bucket_prefix: row.get("share_bucket_prefix")?,
    })
}

fn sync_from(row: &rusqlite::Row<'_>) -> rusqlite::Result<ExpressSync> {
    Ok(ExpressSync {
        id: row.get("sync_id")?,
        name: row.get("sync_name")?,
        description: row.get("description")?,
        bucket_region: row.get("bucket_region")?,
        bucket_name: row.get("bucket_name")?,
        bucket_prefix: row.get("bucket_prefix")?,
        topic_name: row.get("topic_name")?,
        topic_ref: row.get("topic_ref")?,
        notification_ref: row.get("notification_ref")?,
        created_at: row.get("sync_created_at")?,
    })
}

fn member_from(row: &rusqlite::Row<'_>) -> rusqlite::Result<Member> {
    Ok(Member {
        share_id: row.get("share_id")?,
        sync_id: row.get("sync_id")?,
        queue_name: row.get("queue_name")?,
        queue_url: row.get("queue_url")?,
        queue_ref: row.get("queue_ref")?,
        subscription_ref: row.get("subscription_ref")?,
        sync_progress: row.get("sync_progress")?,
        state: row.get("state")?,
        reported_at: row.get("reported_at")?,
    })
}

fn task_from(row: &rusqlite::Row<'_>) -> rusqlite::Result<Task> {
    Ok(Task {
        id: row.get("id")?,
        name: row.get("name")?,
        target_id: row.get("target_id")?,
        related_resource_id: row.get("related_resource_id")?,
        state_code: row.get("state_code")?,
        message_key: row.get("message_key")?,
        progress: row.get("progress")?,
        created_at: row.get("created_at")?,
        updated_at: row.get("updated_at")?,
    })
}

const SYNC_COLUMNS: &str = "e.id AS sync_id, e.name AS sync_name, e.description, e.bucket_region, \
     e.bucket_name, e.bucket_prefix, e.topic_name, e.topic_ref, e.notification_ref, \
     e.created_at AS sync_created_at";
const SHARE_COLUMNS: &str = "s.id AS share_id, s.gateway_id, s.name AS share_name, \
     s.bucket_region AS share_bucket_region, s.bucket_name AS share_bucket_name, \
     s.bucket_prefix AS share_bucket_prefix";
const MEMBER_COLUMNS: &str = "m.share_id, m.sync_id, m.queue_name, m.queue_url, m.queue_ref, \
     m.subscription_ref, m.sync_progress, m.state, m.reported_at";

/// The initial state of a share that just joined a group.
pub const STATE_INIT: &str = "MNSFullSyncInit";

impl Store {
    /// Opens (creating if needed) `<dir>/control.db`.
    pub fn open_dir(dir: &Path) -> StoreResult<Store> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        Store::open(&dir.join("control.db"))
    }

    pub fn open(path: &Path) -> StoreResult<Store> {
        let conn = Connection::open(path)
            .map_err(|e| StoreError(format!("cannot open database {}: {e}", path.display())))?;
        restrict_permissions(path);
        Store::init(conn)
    }

    /// A private in-memory database (unit tests).
    pub fn open_in_memory() -> StoreResult<Store> {
        Store::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> StoreResult<Store> {
        // The CLI (`gateway add`) may write while the server runs: wait for the lock briefly.
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(SCHEMA_V2)?;
        let version: Option<i64> = conn
            .query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))
            .optional()?
            .flatten();
        match version {
            None => {
                conn.execute(
                    "INSERT INTO schema_version (version) VALUES (?1)",
                    [SCHEMA_VERSION],
                )?;
            }
            Some(v) if v == SCHEMA_VERSION => {}
            Some(1) => {
                // Version 1 lacked only the OMS tables, which SCHEMA_V2 just created.
                conn.execute(
                    "INSERT INTO schema_version (version) VALUES (?1)",
                    [SCHEMA_VERSION],
                )?;
                log::info!("database migrated from schema version 1 to {SCHEMA_VERSION}");
            }
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError(format!(
                    "the database has schema version {v}, written by a newer sgw-control; this build reads version {SCHEMA_VERSION}"
                )));
            }
            Some(v) => {
                return Err(StoreError(format!("unknown older schema version {v}")));
            }
        }
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (the transaction rolls back).
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    // --- API keys ---

    pub fn put_api_key(&self, access_key_id: &str, secret: &str, now: i64) -> StoreResult<()> {
        self.lock().execute(
            "INSERT INTO api_keys (access_key_id, secret, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (access_key_id) DO UPDATE SET secret = excluded.secret",
            params![access_key_id, secret, now],
        )?;
        Ok(())
    }

    pub fn api_secret(&self, access_key_id: &str) -> StoreResult<Option<String>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT secret FROM api_keys WHERE access_key_id = ?1",
                [access_key_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn api_key_ids(&self) -> StoreResult<Vec<String>> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT access_key_id FROM api_keys ORDER BY access_key_id")?;
        let ids = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(ids)
    }

    pub fn remove_api_key(&self, access_key_id: &str) -> StoreResult<bool> {
        Ok(self.lock().execute(
            "DELETE FROM api_keys WHERE access_key_id = ?1",
            [access_key_id],
        )? > 0)
    }

    // --- Nonces ---

    /// `Ok(false)` if `nonce` is already remembered. Expired nonces are pruned on the way.
    pub fn remember_nonce(&self, nonce: &str, expires_at: i64, now: i64) -> StoreResult<bool> {
        let conn = self.lock();
        conn.execute("DELETE FROM nonces WHERE expires_at < ?1", [now])?;
        let inserted = conn.execute(
            "INSERT INTO nonces (nonce, expires_at) VALUES (?1, ?2) ON CONFLICT (nonce) DO NOTHING",
            params![nonce, expires_at],
        )?;
        Ok(inserted == 1)
    }

    // --- Gateways and shares ---

    pub fn add_gateway(&self, gateway: &Gateway, secret: &str) -> StoreResult<()> {
        self.lock().execute(
            "INSERT INTO gateways (id, name, region, storage_bundle_id, secret, created_at, last_seen)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)",
            params![gateway.id, gateway.name, gateway.region, gateway.storage_bundle_id, secret, gateway.created_at],
        )?;
        Ok(())
    }

    pub fn gateway(&self, id: &str) -> StoreResult<Option<Gateway>> {
        Ok(self
            .lock()
            .query_row("SELECT * FROM gateways WHERE id = ?1", [id], gateway_from)
            .optional()?)
    }

    pub fn gateway_secret(&self, id: &str) -> StoreResult<Option<String>> {
        Ok(self
            .lock()
            .query_row("SELECT secret FROM gateways WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?)
    }

    pub fn gateways(&self) -> StoreResult<Vec<Gateway>> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT * FROM gateways ORDER BY created_at, id")?;
        let rows = stmt
            .query_map([], gateway_from)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Removes a gateway and its shares; refused (`Ok(false)`) while any share is in a group.
    pub fn remove_gateway(&self, id: &str) -> StoreResult<bool> {
        self.write(|tx| {
            let in_groups: i64 = tx.query_row(
                "SELECT COUNT(*) FROM members m JOIN shares s ON s.id = m.share_id WHERE s.gateway_id = ?1",
                [id],
                |r| r.get(0),
            )?;
            if in_groups > 0 {
                return Ok(false);
            }
            Ok(tx.execute("DELETE FROM gateways WHERE id = ?1", [id])? > 0)
        })
    }

    /// Records a registration: updates the gateway's name/region when given, upserts every
    /// listed share, and forgets unlisted shares that are in no group (a share still in a group
    /// stays until an operator removes it). Returns the shares now registered.
    pub fn register(
        &self,
        gateway_id: &str,
        name: Option<&str>,
        region: Option<&str>,
        shares: &[ShareSpec],
        now: i64,
    ) -> StoreResult<Vec<Share>> {
        self.write(|tx| {
            if let Some(name) = name {
                tx.execute("UPDATE gateways SET name = ?2 WHERE id = ?1", params![gateway_id, name])?;
            }
            if let Some(region) = region {
                tx.execute("UPDATE gateways SET region = ?2 WHERE id = ?1", params![gateway_id, region])?;
            }
            tx.execute("UPDATE gateways SET last_seen = ?2 WHERE id = ?1", params![gateway_id, now])?;
            for spec in shares {
                tx.execute(
                    "INSERT INTO shares (gateway_id, name, bucket_region, bucket_name, bucket_prefix)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (gateway_id, name) DO UPDATE SET bucket_region = excluded.bucket_region,
                         bucket_name = excluded.bucket_name, bucket_prefix = excluded.bucket_prefix",
                    params![gateway_id, spec.name, spec.bucket_region, spec.bucket_name, spec.bucket_prefix],
                )?;
            }
            let listed: Vec<&str> = shares.iter().map(|s| s.name.as_str()).collect();
            let existing = shares_of(tx, gateway_id)?;
            for share in existing.iter().filter(|s| !listed.contains(&s.name.as_str())) {
                tx.execute(
                    "DELETE FROM shares WHERE id = ?1 AND NOT EXISTS (SELECT 1 FROM members WHERE share_id = ?1)",
                    [share.id],
                )?;
            }
            shares_of(tx, gateway_id)
        })
    }

    pub fn shares_of_gateway(&self, gateway_id: &str) -> StoreResult<Vec<Share>> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        shares_of(&tx, gateway_id)
    }

    pub fn share(&self, gateway_id: &str, name: &str) -> StoreResult<Option<Share>> {
        Ok(self
            .lock()
            .query_row(
                &format!(
                    "SELECT {SHARE_COLUMNS} FROM shares s WHERE s.gateway_id = ?1 AND s.name = ?2"
                ),
                params![gateway_id, name],
                share_from,
            )
            .optional()?)
    }

    /// The group a share is in, if any.
    pub fn member_of_share(&self, share_id: i64) -> StoreResult<Option<Member>> {
        Ok(self
            .lock()
            .query_row(
                &format!("SELECT {MEMBER_COLUMNS} FROM members m WHERE m.share_id = ?1"),
                [share_id],
                member_from,
            )
            .optional()?)
    }

    /// Shares in no group that could join one on `bucket_region`/`bucket_name`: those bound to
    /// that bucket and every unbound one. What `IsExternal=true` lists.
    pub fn candidate_shares(
        &self,
        bucket_region: &str,
        bucket_name: &str,
    ) -> StoreResult<Vec<(Share, Gateway)>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {SHARE_COLUMNS}, g.* FROM shares s JOIN gateways g ON g.id = s.gateway_id
             WHERE ((s.bucket_region = ?1 AND s.bucket_name = ?2) OR s.bucket_name = '')
               AND NOT EXISTS (SELECT 1 FROM members m WHERE m.share_id = s.id)
             ORDER BY s.gateway_id, s.name"
        ))?;
        let rows = stmt
            .query_map(params![bucket_region, bucket_name], |r| {
                Ok((share_from(r)?, gateway_from(r)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Distinct (region, bucket, prefix) the shares are bound to, optionally filtered: a bound
    /// share's own, an unbound share's group's while it is in one (an unbound share in no
    /// group has no bucket to show).
    pub fn bucket_infos(
        &self,
        region: Option<&str>,
        bucket: Option<&str>,
    ) -> StoreResult<Vec<(String, String, String)>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT DISTINCT region, bucket, prefix FROM (
                 SELECT bucket_region AS region, bucket_name AS bucket, bucket_prefix AS prefix
                 FROM shares WHERE bucket_name <> ''
                 UNION ALL
                 SELECT e.bucket_region, e.bucket_name, e.bucket_prefix
                 FROM shares s JOIN members m ON m.share_id = s.id
                 JOIN express_syncs e ON e.id = m.sync_id
                 WHERE s.bucket_name = ''
             )
             WHERE (?1 IS NULL OR region = ?1) AND (?2 IS NULL OR bucket = ?2)
             ORDER BY region, bucket, prefix",
        )?;
        let rows = stmt
            .query_map(params![region, bucket], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    // --- Express sync groups ---

    /// Inserts a group; `Ok(false)` if the name is taken.
    pub fn insert_express_sync(&self, sync: &ExpressSync) -> StoreResult<bool> {
        let result = self.lock().execute(
            "INSERT INTO express_syncs (id, name, description, bucket_region, bucket_name, bucket_prefix,
                 topic_name, topic_ref, notification_ref, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                sync.id,
                sync.name,
                sync.description,
                sync.bucket_region,
                sync.bucket_name,
                sync.bucket_prefix,
                sync.topic_name,
                sync.topic_ref,
                sync.notification_ref,
                sync.created_at
            ],
        );
        match result {
            Ok(_) => Ok(true),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn express_sync(&self, id: &str) -> StoreResult<Option<ExpressSync>> {
        Ok(self
            .lock()
            .query_row(
                &format!("SELECT {SYNC_COLUMNS} FROM express_syncs e WHERE e.id = ?1"),
                [id],
                sync_from,
            )
            .optional()?)
    }

    pub fn express_sync_name_taken(&self, name: &str) -> StoreResult<bool> {
        let n: i64 = self.lock().query_row(
            "SELECT COUNT(*) FROM express_syncs WHERE name = ?1",
            [name],
            |r| r.get(0),
        )?;
        Ok(n > 0)
    }

    /// Groups, oldest first, optionally only those on `bucket` (and `prefix`).
    pub fn express_syncs(
        &self,
        bucket: Option<&str>,
        prefix: Option<&str>,
    ) -> StoreResult<Vec<ExpressSync>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {SYNC_COLUMNS} FROM express_syncs e
             WHERE (?1 IS NULL OR e.bucket_name = ?1) AND (?2 IS NULL OR e.bucket_prefix = ?2)
             ORDER BY e.created_at, e.id"
        ))?;
        let rows = stmt
            .query_map(params![bucket, prefix], sync_from)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn count_express_syncs(&self) -> StoreResult<i64> {
        Ok(self
            .lock()
            .query_row("SELECT COUNT(*) FROM express_syncs", [], |r| r.get(0))?)
    }

    /// Deletes a group with its memberships and records `task`, in one transaction.
    pub fn delete_express_sync(&self, id: &str, task: &Task) -> StoreResult<()> {
        self.write(|tx| {
            tx.execute("DELETE FROM members WHERE sync_id = ?1", [id])?;
            tx.execute("DELETE FROM express_syncs WHERE id = ?1", [id])?;
            insert_task(tx, task)
        })
    }

    pub fn members(&self, sync_id: &str) -> StoreResult<Vec<MemberView>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {MEMBER_COLUMNS}, {SHARE_COLUMNS}, g.* FROM members m
             JOIN shares s ON s.id = m.share_id JOIN gateways g ON g.id = s.gateway_id
             WHERE m.sync_id = ?1 ORDER BY s.gateway_id, s.name"
        ))?;
        let rows = stmt
            .query_map([sync_id], |r| {
                Ok(MemberView {
                    member: member_from(r)?,
                    share: share_from(r)?,
                    gateway: gateway_from(r)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Adds memberships and records `task`, in one transaction.
    pub fn add_members(&self, members: &[Member], task: &Task) -> StoreResult<()> {
        self.write(|tx| {
            for m in members {
                tx.execute(
                    "INSERT INTO members (share_id, sync_id, queue_name, queue_url, queue_ref, subscription_ref,
                         sync_progress, state, reported_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL)",
                    params![m.share_id, m.sync_id, m.queue_name, m.queue_url, m.queue_ref, m.subscription_ref, m.sync_progress, m.state],
                )?;
            }
            insert_task(tx, task)
        })
    }

    /// Removes memberships and records `task`, in one transaction.
    pub fn remove_members(&self, share_ids: &[i64], task: &Task) -> StoreResult<()> {
        self.write(|tx| {
            for id in share_ids {
                tx.execute("DELETE FROM members WHERE share_id = ?1", [id])?;
            }
            insert_task(tx, task)
        })
    }

    /// A gateway's shares that are in a group, with their queue and group.
    pub fn assignments(&self, gateway_id: &str) -> StoreResult<Vec<Assignment>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {MEMBER_COLUMNS}, {SHARE_COLUMNS}, {SYNC_COLUMNS} FROM members m
             JOIN shares s ON s.id = m.share_id JOIN express_syncs e ON e.id = m.sync_id
             WHERE s.gateway_id = ?1 ORDER BY s.name"
        ))?;
        let rows = stmt
            .query_map([gateway_id], |r| {
                Ok(Assignment {
                    member: member_from(r)?,
                    share: share_from(r)?,
                    sync: sync_from(r)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Applies reports to the gateway's shares that are in a group; returns the names applied.
    pub fn report_progress(
        &self,
        gateway_id: &str,
        reports: &[ProgressReport],
        now: i64,
    ) -> StoreResult<Vec<String>> {
        self.write(|tx| {
            tx.execute(
                "UPDATE gateways SET last_seen = ?2 WHERE id = ?1",
                params![gateway_id, now],
            )?;
            let mut applied = Vec::new();
            for r in reports {
                let n = tx.execute(
                    "UPDATE members SET sync_progress = ?3, state = ?4, reported_at = ?5
                     WHERE share_id = (SELECT id FROM shares WHERE gateway_id = ?1 AND name = ?2)",
                    params![gateway_id, r.share_name, r.sync_progress, r.state, now],
                )?;
                if n > 0 {
                    applied.push(r.share_name.clone());
                }
            }
            Ok(applied)
        })
    }

    /// Gateways in all, and those seen (polled) since `since`: for `/metrics`.
    pub fn gateway_counts(&self, since: i64) -> StoreResult<(i64, i64)> {
        Ok(self.lock().query_row(
            "SELECT COUNT(*), COALESCE(SUM(last_seen >= ?1), 0) FROM gateways",
            [since],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?)
    }

    pub fn touch_gateway(&self, gateway_id: &str, now: i64) -> StoreResult<()> {
        self.lock().execute(
            "UPDATE gateways SET last_seen = ?2 WHERE id = ?1",
            params![gateway_id, now],
        )?;
        Ok(())
    }

    // --- Tasks ---

    pub fn insert_task(&self, task: &Task) -> StoreResult<()> {
        self.write(|tx| insert_task(tx, task))
    }

    pub fn task(&self, id: &str) -> StoreResult<Option<Task>> {
        Ok(self
            .lock()
            .query_row("SELECT * FROM tasks WHERE id = ?1", [id], task_from)
            .optional()?)
    }

    /// Tasks of `target_id`, newest first: (total, page).
    pub fn tasks(
        &self,
        target_id: &str,
        task_id: Option<&str>,
        page: i64,
        size: i64,
    ) -> StoreResult<(i64, Vec<Task>)> {
        let conn = self.lock();
        let total: i64 = conn.query_row(
            "SELECT COUNT(*) FROM tasks WHERE target_id = ?1 AND (?2 IS NULL OR id = ?2)",
            params![target_id, task_id],
            |r| r.get(0),
        )?;
        let mut stmt = conn.prepare(
            "SELECT * FROM tasks WHERE target_id = ?1 AND (?2 IS NULL OR id = ?2)
             ORDER BY created_at DESC, id DESC LIMIT ?3 OFFSET ?4",
        )?;
        let offset = (page - 1).saturating_mul(size);
        let rows = stmt
            .query_map(params![target_id, task_id, size, offset], task_from)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok((total, rows))
    }
}

fn shares_of(tx: &Transaction<'_>, gateway_id: &str) -> StoreResult<Vec<Share>> {
    let mut stmt = tx.prepare(&format!(
        "SELECT {SHARE_COLUMNS} FROM shares s WHERE s.gateway_id = ?1 ORDER BY s.name"
    ))?;
    let rows = stmt
        .query_map([gateway_id], share_from)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

fn insert_task(tx: &Transaction<'_>, t: &Task) -> StoreResult<()> {
    tx.execute(
        "INSERT INTO tasks (id, name, target_id, related_resource_id, state_code, message_key, progress, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![t.id, t.name, t.target_id, t.related_resource_id, t.state_code, t.message_key, t.progress, t.created_at, t.updated_at],
    )?;
    Ok(())
}

/// The database holds secrets: owner-only on Unix.
pub(crate) fn restrict_permissions(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
            log::warn!("cannot make {} owner-only: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(id: &str) -> Gateway {
        Gateway {
            id: id.into(),
            name: format!("{id}-name"),
            region: "us-east-1".into(),
            storage_bundle_id: format!("sb-{id}"),
            created_at: 1,
            last_seen: None,
        }
    }

    fn spec(name: &str, bucket: &str) -> ShareSpec {
        ShareSpec {
            name: name.into(),
            bucket_region: "us-east-1".into(),
            bucket_name: bucket.into(),
            bucket_prefix: String::new(),
        }
    }

    fn sync(id: &str, name: &str) -> ExpressSync {
        ExpressSync {
            id: id.into(),
            name: name.into(),
            description: String::new(),
            bucket_region: "us-east-1".into(),
            bucket_name: "b1".into(),
            bucket_prefix: String::new(),
            topic_name: format!("topic-{id}"),
            topic_ref: format!("arn:{id}"),
            notification_ref: format!("rule-{id}"),
            created_at: 5,
        }
    }

    fn task(id: &str, target: &str, at: i64) -> Task {
        Task {
            id: id.into(),
            name: "t".into(),
            target_id: target.into(),
            related_resource_id: target.into(),
            state_code: "task.state.completed".into(),
            message_key: String::new(),
            progress: 100,
            created_at: at,
            updated_at: at,
        }
    }

    fn member(share_id: i64, sync_id: &str) -> Member {
        Member {
            share_id,
            sync_id: sync_id.into(),
            queue_name: format!("q{share_id}"),
            queue_url: format!("http://q/{share_id}"),
            queue_ref: format!("arn:q{share_id}"),
            subscription_ref: format!("sub{share_id}"),
            sync_progress: -1,
            state: STATE_INIT.into(),
            reported_at: None,
        }
    }

    #[test]
    fn state_survives_reopening_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open_dir(dir.path()).expect("open");
            store.put_api_key("AK", "SK", 1).expect("key");
            store
                .add_gateway(&gateway("gw-1"), "secret")
                .expect("gateway");
            assert!(
                store
                    .insert_express_sync(&sync("sync-1", "g1"))
                    .expect("insert")
            );
        }
        let store = Store::open_dir(dir.path()).expect("reopen");
        assert_eq!(store.api_secret("AK").expect("read"), Some("SK".into()));
        assert_eq!(
            store.gateway_secret("gw-1").expect("read"),
            Some("secret".into())
        );
        assert_eq!(
            store.express_sync("sync-1").expect("read").map(|s| s.name),
            Some("g1".into())
        );
    }

    #[test]
    fn a_version_1_database_is_migrated_to_version_2() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control.db");
        {
            let conn = Connection::open(&path).expect("open");
            conn.execute_batch(SCHEMA).expect("v1 schema");
            conn.execute("INSERT INTO schema_version (version) VALUES (1)", [])
                .expect("v1");
            conn.execute(
                "INSERT INTO api_keys (access_key_id, secret, created_at) VALUES ('K', 'S', 0)",
                [],
            )
            .expect("key");
        }
        let store = Store::open(&path).expect("migrated");
        assert_eq!(store.api_secret("K").expect("read"), Some("S".to_string()));
        let conn = store.lock();
        let version: i64 = conn
            .query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(version, 2);
        let tasks: i64 = conn
            .query_row("SELECT COUNT(*) FROM oms_tasks", [], |r| r.get(0))
            .expect("oms_tasks exists");
        assert_eq!(tasks, 0);
    }

    #[test]
    fn refuses_a_database_from_a_newer_build() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control.db");
        drop(Store::open(&path).expect("create"));
        let conn = Connection::open(&path).expect("raw open");
        conn.execute("INSERT INTO schema_version (version) VALUES (99)", [])
            .expect("bump");
        drop(conn);
        let err = Store::open(&path).err().expect("refused");
        assert!(err.0.contains("newer sgw-control"), "{err}");
    }

    #[test]
    fn names_are_unique_and_nonces_single_use() {
        let store = Store::open_in_memory().expect("open");
        assert!(
            store
                .insert_express_sync(&sync("sync-1", "g1"))
                .expect("insert")
        );
        assert!(
            !store
                .insert_express_sync(&sync("sync-2", "g1"))
                .expect("dup name")
        );
        assert!(store.remember_nonce("n", 100, 10).expect("first"));
        assert!(!store.remember_nonce("n", 100, 50).expect("replay"));
        // Once expired, it is pruned (the time window refuses the replay by then).
        assert!(store.remember_nonce("n", 300, 200).expect("after expiry"));
    }

    #[test]
    fn registration_keeps_shares_that_are_in_a_group() {
        let store = Store::open_in_memory().expect("open");
        store.add_gateway(&gateway("gw-1"), "s").expect("gateway");
        let shares = store
            .register(
                "gw-1",
                Some("edge"),
                None,
                &[spec("a", "b1"), spec("b", "b1")],
                9,
            )
            .expect("register");
        assert_eq!(shares.len(), 2);
        assert!(
            store
                .insert_express_sync(&sync("sync-1", "g1"))
                .expect("sync")
        );
        let a = store.share("gw-1", "a").expect("read").expect("share a");
        store
            .add_members(&[member(a.id, "sync-1")], &task("t-1", "sync-1", 1))
            .expect("add");
        // Re-register with neither share: `b` goes, `a` stays because it is in a group.
        let left = store
            .register("gw-1", None, None, &[], 10)
            .expect("register");
        assert_eq!(
            left.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            vec!["a"]
        );
        assert_eq!(
            store.gateway("gw-1").expect("read").map(|g| g.name),
            Some("edge".into())
        );
        assert!(
            !store
                .remove_gateway("gw-1")
                .expect("refused while in a group")
        );
        let applied = store
            .report_progress(
                "gw-1",
                &[
                    ProgressReport {
                        share_name: "a".into(),
                        sync_progress: 40,
                        state: "MNSFullSyncing".into(),
                    },
                    ProgressReport {
                        share_name: "zz".into(),
                        sync_progress: 1,
                        state: "MNSFullSyncing".into(),
                    },
                ],
                11,
            )
            .expect("report");
        assert_eq!(applied, vec!["a".to_string()]);
        let members = store.members("sync-1").expect("members");
        assert_eq!(members[0].member.sync_progress, 40);
        assert_eq!(members[0].member.state, "MNSFullSyncing");
        store
            .delete_express_sync("sync-1", &task("t-2", "sync-1", 2))
            .expect("delete");
        assert!(store.members("sync-1").expect("members").is_empty());
        assert!(store.remove_gateway("gw-1").expect("now allowed"));
    }

    fn unbound(name: &str) -> ShareSpec {
        ShareSpec {
            name: name.into(),
            bucket_region: String::new(),
            bucket_name: String::new(),
            bucket_prefix: String::new(),
        }
    }

    fn candidate_names(store: &Store, bucket: &str) -> Vec<String> {
        store
            .candidate_shares("us-east-1", bucket)
            .expect("candidates")
            .into_iter()
            .map(|(s, _)| s.name)
            .collect()
    }

    #[test]
    fn an_unbound_share_takes_its_groups_bucket_only_while_it_is_a_member() {
        let store = Store::open_in_memory().expect("open");
        store.add_gateway(&gateway("gw-1"), "s").expect("gateway");
        store
            .register(
                "gw-1",
                None,
                None,
                &[spec("on-b1", "b1"), spec("on-b2", "b2"), unbound("free")],
                1,
            )
            .expect("register");
        // Addable to a group on any bucket; a bound share only to its own bucket's.
        assert_eq!(candidate_names(&store, "b1"), vec!["free", "on-b1"]);
        assert_eq!(candidate_names(&store, "b2"), vec!["free", "on-b2"]);
        // No bucket of its own: nothing to show in the bucket list, no empty entry.
        let infos = |store: &Store| store.bucket_infos(None, None).expect("infos");
        let b = |bucket: &str, prefix: &str| {
            (
                "us-east-1".to_string(),
                bucket.to_string(),
                prefix.to_string(),
            )
        };
        assert_eq!(infos(&store), vec![b("b1", ""), b("b2", "")]);

        let group = ExpressSync {
            bucket_prefix: "photos/".into(),
            ..sync("sync-1", "g1")
        };
        assert!(store.insert_express_sync(&group).expect("sync"));
        let free = store.share("gw-1", "free").expect("read").expect("share");
        assert!(!free.is_bound());
        store
            .add_members(&[member(free.id, "sync-1")], &task("t-1", "sync-1", 1))
            .expect("add");
        assert_eq!(
            candidate_names(&store, "b2"),
            vec!["on-b2"],
            "a member is not addable"
        );
        assert_eq!(
            infos(&store),
            vec![b("b1", ""), b("b1", "photos/"), b("b2", "")],
            "bound by the group, it shows the group's bucket and prefix"
        );
        let assigned = store.assignments("gw-1").expect("assignments");
        assert_eq!(assigned.len(), 1);
        assert_eq!(
            (
                assigned[0].sync.bucket_name.as_str(),
                assigned[0].sync.bucket_prefix.as_str()
            ),
            ("b1", "photos/")
        );
        // The agent registering again (still without a bucket) changes nothing.
        store
            .register(
                "gw-1",
                None,
                None,
                &[spec("on-b1", "b1"), spec("on-b2", "b2"), unbound("free")],
                2,
            )
            .expect("re-register");
        assert_eq!(store.assignments("gw-1").expect("assignments").len(), 1);

        // Leaving the group unbinds it: addable to other buckets again, no bucket shown.
        store
            .remove_members(&[free.id], &task("t-2", "sync-1", 2))
            .expect("remove");
        assert_eq!(candidate_names(&store, "b2"), vec!["free", "on-b2"]);
        assert_eq!(infos(&store), vec![b("b1", ""), b("b2", "")]);
        // Deleting the group does the same.
        store
            .add_members(&[member(free.id, "sync-1")], &task("t-3", "sync-1", 3))
            .expect("add again");
        store
            .delete_express_sync("sync-1", &task("t-4", "sync-1", 4))
            .expect("delete");
        assert_eq!(candidate_names(&store, "b2"), vec!["free", "on-b2"]);
        assert_eq!(infos(&store), vec![b("b1", ""), b("b2", "")]);
        assert!(store.assignments("gw-1").expect("assignments").is_empty());
    }

    #[test]
    fn tasks_page_newest_first() {
        let store = Store::open_in_memory().expect("open");
        for i in 0..5 {
            store
                .insert_task(&task(&format!("t-{i}"), "sync-1", i))
                .expect("task");
        }
        let (total, page) = store.tasks("sync-1", None, 2, 2).expect("page");
        assert_eq!(total, 5);
        assert_eq!(
            page.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
            vec!["t-2", "t-1"]
        );
        let (total, one) = store.tasks("sync-1", Some("t-4"), 1, 10).expect("by id");
        assert_eq!((total, one.len()), (1, 1));
    }
}
