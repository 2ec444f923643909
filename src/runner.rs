//! The commands: one full sync of every share, or the daemon that keeps them in step.
//!
//! The daemon keeps a [`ShareSet`]: one thread per share, each with its own stop flag, so a
//! share can be started or stopped while the others keep working (assignments from the
//! control endpoint, configuration reloads). With a `control_endpoint`, the main loop registers
//! the gateway, polls its assignments and reports each share's progress; an unreachable
//! control endpoint never stops syncing (the last assignments are kept on disk).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{error, info, warn};

use crate::cloud::http::TrustedRoots;
use crate::cloud::s3::{S3Client, S3Config};
use crate::cloud::sigv4::Credentials;
use crate::cloud::sqs::{SqsClient, SqsConfig};
use crate::cloud::{EventQueue, ObjectStore};
use crate::config::{
    Config, ConfigError, EXIT_CONFIG, EXIT_LOCKED, EXIT_NOT_CONVERGED, ShareConfig,
};
use crate::control_client::client::{ControlClient, Polled};
use crate::control_client::protocol::{
    AssignmentEntry, AssignmentsResponse, ProgressRequest, RegisterRequest, RegisteredShare,
    ShareProgress, UploadHealth,
};
use crate::daemon::{AgentLock, Heartbeat, Notifier, ReloadRequest, Shutdown};
use crate::shell::{ProgressSink, Share, ShareContext};
use crate::status::{ShareState, ShareStatus, read_status, write_status};
use crate::time::{unix_now, utc_timestamp_of};

/// How long a stopping agent waits for in-flight downloads before it exits anyway (the state
/// store is crash-safe, so an exit past this point loses nothing that was completed).
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(30);
/// Poll interval for assignments until the control endpoint names one.
const DEFAULT_CONTROL_POLL: Duration = Duration::from_secs(30);
/// How often share progress is checked and, when it changed, reported.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// The roots a share's clients trust instead of the built-in ones (`ca_file`), if any.
pub fn share_roots(share: &ShareConfig) -> Result<Option<TrustedRoots>, String> {
    share.ca_file.as_deref().map(TrustedRoots::load).transpose()
}

/// The S3 client of a share (its bucket, endpoint and region, trusting its `ca_file`).
pub fn s3_client(share: &ShareConfig, creds: &Credentials) -> Result<S3Client, String> {
    let roots = share_roots(share)?;
    Ok(S3Client::new(S3Config {
        endpoint: share.endpoint.clone(),
        region: share.region.clone(),
        bucket: share.bucket.clone(),
        credentials: creds.clone(),
        allow_http: share.allow_http,
        max_attempts: 6,
    })?
    .trusting(roots.as_ref()))
}

/// The SQS client of a share's queue.
pub fn sqs_client(
    share: &ShareConfig,
    queue_url: &str,
    creds: &Credentials,
) -> Result<SqsClient, String> {
    let roots = share_roots(share)?;
    Ok(SqsClient::new(SqsConfig {
        queue_url: queue_url.to_owned(),
        region: share.region.clone(),
        credentials: creds.clone(),
        allow_http: share.allow_http,
    })?
    .trusting(roots.as_ref()))
}

/// Build the clients of one share, checking nothing on disk but that its directory exists.
/// Errors here are configuration errors.
pub fn share_clients(
    cfg: &Config,
    share: &ShareConfig,
    creds: &Credentials,
    shutdown: &Shutdown,
    progress: Arc<dyn ProgressSink>,
) -> Result<ShareContext, ConfigError> {
    let at = |key: &str, problem: String| ConfigError {
        file: cfg.file.clone(),
        key: format!("share {:?}: {key}", share.name),
        problem,
    };
    if share.bucket.is_empty() || share.endpoint.is_empty() {
        return Err(at("bucket", "no bucket assigned yet (the control endpoint assigns it when the share joins an express sync group)".into()));
    }
    // A bad ca_file is named as such, before the clients that use it are built.
    share_roots(share).map_err(|e| at("ca_file", e))?;
    let store: Arc<dyn ObjectStore> = Arc::new(
        s3_client(share, creds)
            .map_err(|e| at("endpoint", e))?
            .with_stop_flag(shutdown.flag()),
    );
    let queue: Option<Arc<dyn EventQueue>> = match &share.queue_url {
        Some(url) => Some(Arc::new(
            sqs_client(share, url, creds)
                .map_err(|e| at("queue_url", e))?
                .with_stop_flag(shutdown.flag()),
        )),
        None => None,
    };
    if !share.path.is_dir() {
        return Err(at(
            "path",
            format!("{} is not an existing directory", share.path.display()),
        ));
    }
    Ok(ShareContext {
        cfg: share.clone(),
        state_dir: cfg.share_state_dir(share),
        store,
        queue,
        shutdown: shutdown.clone(),
        progress,
    })
}

/// Build the clients of one share and check that this user can write its directory. Errors
/// here are configuration errors.
pub fn share_context(
    cfg: &Config,
    share: &ShareConfig,
    creds: &Credentials,
    shutdown: &Shutdown,
    progress: Arc<dyn ProgressSink>,
) -> Result<ShareContext, ConfigError> {
    let ctx = share_clients(cfg, share, creds, shutdown, progress)?;
    // A share the service cannot write (no ReadWritePaths=, wrong owner) is a configuration
    // error: exit 78, which the unit does not restart, instead of failing every download.
    crate::access::check_share_dir(&share.path, &crate::access::Identity::current()).map_err(
        |problem| ConfigError {
            file: cfg.file.clone(),
            key: format!("share {:?}", share.name),
            problem,
        },
    )?;
    Ok(ctx)
}

/// The shares to run: from the configuration, or — under a control endpoint — the configured
/// shares the control endpoint assigned, with their bucket, prefix, queue and endpoint.
pub fn effective_shares(
    cfg: &Config,
    assignments: Option<&AssignmentsResponse>,
) -> Vec<ShareConfig> {
    let Some(control) = &cfg.control else {
        return cfg.shares.clone();
    };
    let Some(a) = assignments else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in &a.assignments {
        match cfg.shares.iter().find(|s| s.name == entry.share_name) {
            Some(local) => out.push(assigned_share(local, entry, control.allow_http)),
            None => warn!(
                "control assigns share {:?}, which this agent's configuration does not have; ignored",
                entry.share_name
            ),
        }
    }
    out
}

fn assigned_share(local: &ShareConfig, a: &AssignmentEntry, allow_http: bool) -> ShareConfig {
    ShareConfig {
        bucket: a.bucket_name.clone(),
        prefix: a.bucket_prefix.clone(),
        endpoint: a.endpoint.trim_end_matches('/').to_owned(),
        region: a.region.clone(),
        queue_url: (!a.queue_url.is_empty()).then(|| a.queue_url.clone()),
        allow_http: local.allow_http || allow_http,
        ..local.clone()
    }
}

/// `sgw-agent sync`: one full sync of every share, in parallel. Exit 0 when every share
/// converged.
pub fn sync_once(
    cfg: &Config,
    creds: &Credentials,
    shutdown: &Shutdown,
    progress: Arc<dyn ProgressSink>,
) -> i32 {
    // As for `run`: unwritable directories are a configuration error before anything starts.
    if let Err(e) = crate::access::check_config_dirs(cfg) {
        error!("{e}");
        return EXIT_CONFIG;
    }
    let _lock = match AgentLock::acquire(&cfg.state_dir, "sync") {
        Ok(l) => l,
        Err(e) => {
            error!("{e}");
            return EXIT_LOCKED;
        }
    };
    let shares = effective_shares(cfg, current_assignments(cfg, true).as_ref());
    if cfg.control.is_some() && shares.is_empty() {
        info!("no share of this gateway is assigned to an express sync group: nothing to sync");
    }
    let contexts = match contexts_of(&shares, |share| {
        share_context(cfg, share, creds, shutdown, Arc::clone(&progress))
    }) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let handles: Vec<_> = contexts
        .into_iter()
        .map(|ctx| {
            let name = ctx.cfg.name.clone();
            std::thread::Builder::new()
                .name(format!("sgw-share-{name}"))
                .spawn(move || -> bool {
                    let mut share = match Share::open(ctx) {
                        Ok(s) => s,
                        Err(e) => {
                            error!("share {name}: cannot open: {e}");
                            return false;
                        }
                    };
                    match share.full_sync() {
                        Ok(r) => r.converged(),
                        Err(e) => {
                            error!("share {name}: full sync failed: {e}");
                            false
                        }
                    }
                })
                .expect("spawning a share thread")
        })
        .collect();
    let mut all_ok = true;
    for h in handles {
        all_ok &= h.join().unwrap_or(false);
    }
    if all_ok { 0 } else { EXIT_NOT_CONVERGED }
}

/// The assignments from the control endpoint (kept on disk when `keep`), else the last ones
/// kept; `None` without a control endpoint.
fn current_assignments(cfg: &Config, keep: bool) -> Option<AssignmentsResponse> {
    let control = cfg.control.as_ref()?;
    match ControlClient::new(control).assignments() {
        Ok(a) => {
            if keep {
                save_assignments(cfg, &a);
            }
            Some(a)
        }
        Err(e) => {
            warn!("control endpoint unavailable ({e}); using the last known assignments");
            load_assignments(cfg)
        }
    }
}

/// One context per share, or the exit code of the first configuration error (logged).
fn contexts_of(
    shares: &[ShareConfig],
    mut build: impl FnMut(&ShareConfig) -> Result<ShareContext, ConfigError>,
) -> Result<Vec<ShareContext>, i32> {
    shares
        .iter()
        .map(|share| {
            build(share).map_err(|e| {
                error!("{e}");
                EXIT_CONFIG
            })
        })
        .collect()
}

/// `sgw-agent sync --dry-run`: every share's full-sync decisions, sent to `sink`; nothing
/// is written (no lock, no state, no status, no file; assignments are fetched, not kept).
/// Exit 0 when every share could be planned, 1 when one could not (the log says why).
pub fn dry_run(
    cfg: &Config,
    creds: &Credentials,
    shutdown: &Shutdown,
    sink: &dyn crate::shell::dry_run::PlanSink,
    summary: &mut dyn FnMut(&str, &crate::shell::dry_run::DryRunReport),
) -> i32 {
    let shares = effective_shares(cfg, current_assignments(cfg, false).as_ref());
    let silent: Arc<dyn ProgressSink> = Arc::new(crate::shell::Silent);
    let contexts = match contexts_of(&shares, |share| {
        share_clients(cfg, share, creds, shutdown, Arc::clone(&silent))
    }) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut code = 0;
    for ctx in &contexts {
        match crate::shell::dry_run::dry_run(ctx, sink) {
            Ok(report) => summary(&ctx.cfg.name, &report),
            Err(e) => {
                error!("share {}: cannot plan a full sync: {e}", ctx.cfg.name);
                code = EXIT_NOT_CONVERGED;
            }
        }
    }
    code
}

struct Running {
    cfg: ShareConfig,
    state_dir: PathBuf,
    /// Rotated credentials restart the share (its clients sign with them).
    creds: Credentials,
    shutdown: Shutdown,
    idle: Arc<AtomicBool>,
    heartbeat: Heartbeat,
    handle: JoinHandle<()>,
}

impl Running {
    /// Finished, or parked in a long poll with nothing pending.
    fn quiet(&self) -> bool {
        self.handle.is_finished() || self.idle.load(Ordering::SeqCst)
    }
}

/// The shares currently running, each on its own thread with its own stop flag.
pub struct ShareSet {
    running: BTreeMap<String, Running>,
    /// Stopped shares whose threads may still be finishing a long poll; a share of the same
    /// name is not started again until its old thread is gone (one writer per state store).
    stopping: Vec<(String, JoinHandle<()>)>,
    /// Shares that could not start, and when that was last tried.
    failed: BTreeMap<String, Instant>,
    /// Shares in trouble past `alert_after_secs`, and when that was last logged at `err`.
    alerted: BTreeMap<String, Instant>,
}

impl Default for ShareSet {
    fn default() -> Self {
        Self::new()
    }
}

impl ShareSet {
    pub fn new() -> ShareSet {
        ShareSet {
            running: BTreeMap::new(),
            stopping: Vec::new(),
            failed: BTreeMap::new(),
            alerted: BTreeMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    pub fn names(&self) -> Vec<String> {
        self.running.keys().cloned().collect()
    }

    /// Build every share of `desired` that would start, without starting anything: a
    /// configuration error in one share must not take the working ones down (reload is all or
    /// nothing).
    pub fn check(
        &self,
        cfg: &Config,
        creds: &Credentials,
        desired: &[ShareConfig],
    ) -> Result<(), ConfigError> {
        let silent: Arc<dyn ProgressSink> = Arc::new(crate::shell::Silent);
        for share in desired {
            if !self
                .running
                .get(&share.name)
                .is_some_and(|r| r.cfg == *share && r.creds == *creds)
            {
                share_context(cfg, share, creds, &Shutdown::new(), Arc::clone(&silent))?;
            }
        }
        Ok(())
    }

    /// Make the running set equal `desired`: stop shares no longer wanted (or whose
    /// configuration or credentials changed), start new ones. Returns the plan it carried out.
    pub fn apply(
        &mut self,
        cfg: &Config,
        creds: &Credentials,
        desired: &[ShareConfig],
    ) -> ReloadPlan {
        self.stopping.retain(|(_, h)| !h.is_finished());
        let current: BTreeMap<String, (ShareConfig, Credentials)> = self
            .running
            .iter()
            .map(|(n, r)| (n.clone(), (r.cfg.clone(), r.creds.clone())))
            .collect();
        let wanted: BTreeMap<String, (ShareConfig, Credentials)> = desired
            .iter()
            .map(|s| (s.name.clone(), (s.clone(), creds.clone())))
            .collect();
        let plan = plan_reload(&current, &wanted);
        for name in &plan.stop {
            if let Some(r) = self.running.remove(name) {
                info!("share {name}: stopping (no longer assigned or its configuration changed)");
                r.shutdown.trigger();
                self.stopping.push((name.clone(), r.handle));
            }
        }
        // Also retries shares that could not start (or waited for their old thread) earlier.
        for share in desired {
            if self.running.contains_key(&share.name)
                || self.stopping.iter().any(|(n, _)| n == &share.name)
            {
                // Running, or its old thread is still in a long poll: started on a later round.
                continue;
            }
            if let Some(at) = self.failed.get(&share.name)
                && at.elapsed() < START_RETRY
            {
                continue;
            }
            if self.start(cfg, creds, share) {
                self.failed.remove(&share.name);
            } else {
                self.failed.insert(share.name.clone(), Instant::now());
            }
        }
        plan
    }

    /// A share whose thread ended although nobody stopped it (it died).
    pub fn died(&self) -> Option<String> {
        self.running
            .iter()
            .find(|(_, r)| r.handle.is_finished())
            .map(|(n, _)| n.clone())
    }

    /// Running shares whose thread has not shown progress for `limit` (name, time since).
    /// A share parked on purpose (long poll, waiting for its next reconcile) is not stuck.
    pub fn stalled(&self, limit: Duration) -> Vec<(String, Duration)> {
        self.running
            .iter()
            .filter(|(_, r)| !r.quiet())
            .map(|(n, r)| (n.clone(), r.heartbeat.age()))
            .filter(|(_, age)| *age >= limit)
            .collect()
    }

    /// For `systemctl status`.
    pub fn status_line(&self) -> String {
        let mut line = format!("{} share(s) running", self.running.len());
        if !self.stopping.is_empty() {
            line.push_str(&format!(", {} stopping", self.stopping.len()));
        }
        if !self.failed.is_empty() {
            line.push_str(&format!(", {} failed to start", self.failed.len()));
        }
        line
    }

    fn start(&mut self, cfg: &Config, creds: &Credentials, share: &ShareConfig) -> bool {
        let shutdown = Shutdown::new();
        let silent: Arc<dyn ProgressSink> = Arc::new(crate::shell::Silent);
        let ctx = match share_context(cfg, share, creds, &shutdown, silent) {
            Ok(c) => c,
            Err(e) => {
                error!("{e}");
                return false;
            }
        };
        let state_dir = ctx.state_dir.clone();
        match Share::open(ctx) {
            Ok(mut s) => {
                let idle = Arc::clone(&s.idle);
                let heartbeat = s.heartbeat.clone();
                let handle = std::thread::Builder::new()
                    .name(format!("sgw-share-{}", share.name))
                    .spawn(move || s.run())
                    .expect("spawning a share thread");
                info!(
                    "share {}: started (bucket {}, prefix {:?})",
                    share.name, share.bucket, share.prefix
                );
                self.running.insert(
                    share.name.clone(),
                    Running {
                        cfg: share.clone(),
                        state_dir: state_dir.clone(),
                        creds: creds.clone(),
                        shutdown,
                        idle,
                        heartbeat,
                        handle,
                    },
                );
                true
            }
            Err(e) => {
                // One broken share (its disk, its state) must not stop the others.
                error!("share {}: cannot open, not syncing it: {e}", share.name);
                let status = ShareStatus {
                    state: ShareState::Error,
                    last_error: Some(format!("cannot open: {e}")),
                    updated: unix_now(),
                    ..ShareStatus::new(&share.name)
                };
                let _ = write_status(&state_dir, &status);
                false
            }
        }
    }

    /// Stop everything; wait for in-flight work up to `deadline`.
    pub fn stop_all(self, deadline: Duration, notifier: &mut Notifier) {
        notifier.stopping("finishing in-flight work");
        for r in self.running.values() {
            r.shutdown.trigger();
        }
        let until = Instant::now() + deadline;
        loop {
            let busy: Vec<&str> = self
                .running
                .iter()
                .filter(|(_, r)| !r.quiet())
                .map(|(n, _)| n.as_str())
                .collect();
            if busy.is_empty() {
                break;
            }
            if Instant::now() >= until {
                warn!(
                    "stopping with work still in flight on {busy:?}; it resumes at the next start"
                );
                break;
            }
            notifier.feed_watchdog();
            std::thread::sleep(Duration::from_millis(100));
        }
        // Idle threads wake within a moment and record their own stop; give them that.
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until && self.running.values().any(|r| !r.handle.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        for (_, r) in self.running {
            if r.handle.is_finished() {
                let _ = r.handle.join();
            } else {
                // Still in a long poll: the process exits before it returns, so the stop is
                // written here (`status` shows `stopped` after a stop).
                mark_stopped(&r.cfg, &r.state_dir);
            }
        }
    }

    /// Log, at `err` priority and at most once an hour per share, every running share that
    /// has been in `error` or `queue_failure` for longer than `alert_after_secs` (journald
    /// based alerting watches `journalctl -p err`).
    pub fn log_alerts(&mut self, cfg: &Config, now: i64) {
        self.alerted
            .retain(|name, _| self.running.contains_key(name));
        for r in self.running.values() {
            let Ok(Some(status)) = read_status(&cfg.share_state_dir(&r.cfg)) else {
                continue;
            };
            if status.error_since.is_none() {
                // Recovered: its next trouble is news at once.
                self.alerted.remove(&r.cfg.name);
                continue;
            }
            let Some(alert) = alert_text(&status, cfg.alert_after_secs, now) else {
                continue;
            };
            let due = self
                .alerted
                .get(&r.cfg.name)
                .is_none_or(|t| t.elapsed() >= ALERT_REPEAT);
            if due {
                let secs = now.saturating_sub(status.error_since.unwrap_or(now));
                error!(
                    "share {}: {alert} (for {}; said again hourly while it lasts)",
                    r.cfg.name,
                    crate::format::duration_words(secs)
                );
                self.alerted.insert(r.cfg.name.clone(), Instant::now());
            }
        }
    }

    /// Progress of every running share, as the control endpoint wants it.
    fn progress_report(&self, cfg: &Config) -> ProgressRequest {
        let shares = self
            .running
            .values()
            .map(|r| {
                let status = read_status(&cfg.share_state_dir(&r.cfg))
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| ShareStatus::new(&r.cfg.name));
                let (state, progress) = express_sync_state(&status);
                let u = &status.uploads;
                ShareProgress {
                    share_name: r.cfg.name.clone(),
                    sync_progress: progress,
                    express_sync_state: state.to_owned(),
                    alert: alert_text(&status, cfg.alert_after_secs, unix_now()),
                    uploads: r.cfg.sync.two_way().then(|| UploadHealth {
                        pending: u.pending,
                        in_flight: u.in_flight,
                        done: u.done,
                        bytes: u.bytes,
                        conflicts: u.conflicts,
                        last_error: u.last_error.clone(),
                    }),
                }
            })
            .collect();
        ProgressRequest { shares }
    }
}

/// How often the daemon looks for shares in trouble, and how often one still in trouble is
/// logged again.
const ALERT_CHECK_EVERY: Duration = Duration::from_secs(1);
const ALERT_REPEAT: Duration = Duration::from_secs(3600);

/// "in error since 2026-…Z: why", when `s` has been in `error` or `queue_failure` (retries
/// in between included) for at least `after_secs`. Constant while the trouble lasts, so the
/// progress report carrying it changes (and is sent) once.
pub fn alert_text(s: &ShareStatus, after_secs: u64, now: i64) -> Option<String> {
    let since = s.error_since?;
    let secs = now.saturating_sub(since);
    if secs < i64::try_from(after_secs).unwrap_or(i64::MAX) {
        return None;
    }
    let state = if s.in_trouble_now() {
        s.state.as_str()
    } else {
        "error (retrying)"
    };
    Some(format!(
        "in {state} since {}: {}",
        utc_timestamp_of(since),
        s.last_error.as_deref().unwrap_or("see the log")
    ))
}

/// Record that the share stopped, keeping everything else its status says.
fn mark_stopped(share: &ShareConfig, state_dir: &std::path::Path) {
    let mut status = read_status(state_dir)
        .ok()
        .flatten()
        .unwrap_or_else(|| ShareStatus::new(&share.name));
    status.state = ShareState::Stopped;
    status.updated = unix_now();
    if let Err(e) = write_status(state_dir, &status) {
        warn!("share {}: cannot record the stop: {e}", share.name);
    }
}

/// Map a share's status onto the control API's `ExpressSyncState` and `SyncProgress`.
pub fn express_sync_state(s: &ShareStatus) -> (&'static str, i64) {
    let progress = i64::from(s.sync_progress.clamp(-1, 100));
    match s.state {
        ShareState::NotSynced => ("MNSFullSyncInit", -1),
        ShareState::FullSyncing => ("MNSFullSyncing", progress.max(0)),
        ShareState::Healthy => ("MNSHealthy", 100),
        ShareState::QueueFailure => ("QueueFailure", progress),
        // An incomplete full sync is still "syncing" from the cloud's point of view; the
        // agent retries it, and its own status says why.
        ShareState::Error | ShareState::Stopped => {
            if s.last_full_sync.is_some() && progress == 100 {
                ("MNSHealthy", 100)
            } else {
                ("MNSFullSyncing", progress.clamp(0, 99))
            }
        }
    }
}

fn assignments_path(cfg: &Config) -> PathBuf {
    cfg.state_dir.join("assignments.json")
}

/// Keep the last assignments so a restart without the control endpoint still syncs.
fn save_assignments(cfg: &Config, a: &AssignmentsResponse) {
    let path = assignments_path(cfg);
    let tmp = path.with_extension("json.tmp");
    let result = std::fs::create_dir_all(&cfg.state_dir)
        .and_then(|()| serde_json::to_vec_pretty(a).map_err(std::io::Error::other))
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = result {
        warn!("cannot keep the assignments in {}: {e}", path.display());
    }
}

fn load_assignments(cfg: &Config) -> Option<AssignmentsResponse> {
    let bytes = std::fs::read(assignments_path(cfg)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn register_request(cfg: &Config) -> RegisterRequest {
    let control = cfg.control.as_ref();
    RegisterRequest {
        gateway_name: control.and_then(|c| c.gateway_name.clone()),
        gateway_region: None,
        shares: cfg
            .shares
            .iter()
            .map(|s| RegisteredShare {
                name: s.name.clone(),
                bucket_region: s.region.clone(),
                bucket_name: s.bucket.clone(),
                bucket_prefix: s.prefix.clone(),
            })
            .collect(),
    }
}

/// Which shares a change of configuration or assignments stops and which it starts (a
/// changed share is in both).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    pub stop: Vec<String>,
    pub start: Vec<String>,
    pub unchanged: usize,
}

pub fn plan_reload<S: PartialEq>(
    current: &BTreeMap<String, S>,
    wanted: &BTreeMap<String, S>,
) -> ReloadPlan {
    let mut plan = ReloadPlan::default();
    for (name, spec) in current {
        match wanted.get(name) {
            Some(w) if w == spec => plan.unchanged += 1,
            _ => plan.stop.push(name.clone()),
        }
    }
    for (name, spec) in wanted {
        if current.get(name) != Some(spec) {
            plan.start.push(name.clone());
        }
    }
    plan
}

/// A share thread that has not shown progress for this long is taken as stuck. Far above its
/// longest legitimate wait (a request retried with timeouts: about five minutes), so a slow
/// network or card never restarts a working agent.
const SHARE_STALL_LIMIT: Duration = Duration::from_secs(15 * 60);

/// Poll granularity of the daemon's main loop (watchdog, reload, control).
const TICK: Duration = Duration::from_millis(200);
/// A share that could not start (its disk not mounted yet, …) is tried again this often.
const START_RETRY: Duration = Duration::from_secs(60);

/// `sgw-agent run`: keep every share in step until SIGTERM/SIGINT. SIGHUP re-reads the
/// configuration: shares added, removed or changed are started and stopped without a restart.
/// Under systemd (`Type=notify`) it reports READY once every share's state is loaded, RELOADING
/// and STOPPING, and feeds the watchdog from this loop.
pub fn run_daemon(cfg: &Config, creds: &Credentials, shutdown: &Shutdown) -> i32 {
    let mut notifier = Notifier::from_env();
    let reload = ReloadRequest::new();
    if let Err(e) = reload.on_sighup() {
        error!("cannot install the SIGHUP (reload) handler: {e}");
        return 1;
    }
    let mut cfg = cfg.clone();
    let mut creds = creds.clone();
    let mut set = ShareSet::new();
    let mut control = cfg.control.as_ref().map(ControlLoop::new);
    let mut assignments = control.as_ref().and_then(|_| load_assignments(&cfg));
    let mut desired = effective_shares(&cfg, assignments.as_ref());
    // Before anything starts: a share or state directory the service cannot write (a missing
    // ReadWritePaths=) is exit 78, not a restart loop of failing syncs. Every configured share,
    // also those the control endpoint has not assigned yet.
    if let Err(e) = crate::access::check_config_dirs(&cfg) {
        error!("{e}");
        return EXIT_CONFIG;
    }
    // Held until the process ends: `status` sees it, and a second agent refuses to start.
    let _lock = match AgentLock::acquire(&cfg.state_dir, "run") {
        Ok(l) => l,
        Err(e) => {
            error!("{e}");
            return EXIT_LOCKED;
        }
    };
    // Check every share before starting any: a bad configuration exits 78 with nothing started.
    if let Err(e) = set.check(&cfg, &creds, &desired) {
        error!("{e}");
        return EXIT_CONFIG;
    }
    set.apply(&cfg, &creds, &desired);
    if cfg.control.is_none() && set.is_empty() {
        error!("no share could be started");
        return EXIT_NOT_CONVERGED;
    }
    match &cfg.control {
        Some(c) => info!(
            "sgw-agent {} running as gateway {} of {}",
            env!("CARGO_PKG_VERSION"),
            c.gateway_id,
            c.endpoint
        ),
        None => info!(
            "sgw-agent {} running with {} share(s)",
            env!("CARGO_PKG_VERSION"),
            set.len()
        ),
    }
    let mut last_status = set.status_line();
    notifier.ready(&last_status);
    let mut code = 0;
    let mut reported_stall = false;
    let mut last_alert_check = Instant::now();
    while !shutdown.is_triggered() {
        // A stuck share thread stops the watchdog pings: systemd then restarts the agent.
        let stalled = set.stalled(SHARE_STALL_LIMIT);
        if stalled.is_empty() {
            notifier.feed_watchdog();
            reported_stall = false;
        } else if !reported_stall {
            reported_stall = true;
            for (name, age) in &stalled {
                error!(
                    "share {name}: no progress for {}s; {}",
                    age.as_secs(),
                    if notifier.watchdog_interval().is_some() {
                        "no longer feeding the systemd watchdog, so systemd restarts the agent"
                    } else {
                        "restart the agent (no systemd watchdog is configured to do it)"
                    }
                );
            }
        }
        if reload.take() {
            info!("SIGHUP: re-reading {}", cfg.file.display());
            notifier.reloading("re-reading the configuration");
            let reloaded = Config::load(&cfg.file).and_then(|new| {
                let new_creds = new.credentials()?;
                let desired = effective_shares(&new, assignments.as_ref());
                set.check(&new, &new_creds, &desired)?;
                Ok((new, new_creds, desired))
            });
            match reloaded {
                Ok((new, new_creds, wanted)) => {
                    let plan = set.apply(&new, &new_creds, &wanted);
                    desired = wanted;
                    info!(
                        "configuration reloaded: {} share(s) to start, {} to stop, {} unchanged",
                        plan.start.len(),
                        plan.stop.len(),
                        plan.unchanged
                    );
                    crate::daemon::set_log_level(crate::daemon::effective_log_level(new.log_level));
                    if new.control != cfg.control {
                        control = new.control.as_ref().map(ControlLoop::new);
                    } else if let Some(c) = control.as_mut() {
                        // The shares may have changed: register them again.
                        c.registered = false;
                        c.next_poll = Instant::now();
                    }
                    cfg = new;
                    creds = new_creds;
                }
                Err(e) => error!("reload refused, the previous configuration stays in force: {e}"),
            }
            last_status = set.status_line();
            notifier.ready(&last_status);
        }
        if let Some(c) = control.as_mut()
            && let Some(a) = c.tick(&cfg, &set)
        {
            if assignments.as_ref() != Some(&a) {
                save_assignments(&cfg, &a);
                desired = effective_shares(&cfg, Some(&a));
            }
            assignments = Some(a);
        }
        // Starts new assignments, stops withdrawn ones, retries shares that failed to start.
        set.apply(&cfg, &creds, &desired);
        if last_alert_check.elapsed() >= ALERT_CHECK_EVERY {
            last_alert_check = Instant::now();
            set.log_alerts(&cfg, unix_now());
        }
        // STATUS= only when it changes: this loop runs five times a second.
        let status = set.status_line();
        if status != last_status {
            notifier.status(&status);
            last_status = status;
        }
        // A share thread ends only when told to; one that ended by itself died. Exit non-zero
        // so systemd (Restart=on-failure) starts a fresh agent rather than run without it.
        if let Some(name) = set.died() {
            error!("share {name}: its thread ended unexpectedly; stopping the agent");
            code = 1;
            break;
        }
        std::thread::sleep(TICK);
    }
    info!(
        "stopping: finishing in-flight work (at most {}s)",
        DRAIN_DEADLINE.as_secs()
    );
    set.stop_all(DRAIN_DEADLINE, &mut notifier);
    info!("stopped");
    code
}

/// The daemon's conversation with the control endpoint: register, poll assignments, report
/// progress as it changes. Never blocks syncing: failures are logged once and retried.
struct ControlLoop {
    client: ControlClient,
    registered: bool,
    down: bool,
    poll: Duration,
    next_poll: Instant,
    /// The ETag of the assignments last polled: an unchanged poll is a bodiless 304.
    etag: Option<String>,
    last_report: Option<ProgressRequest>,
    last_report_check: Instant,
}

/// `base` stretched or shrunk by up to ±20 % at random, so a fleet that started together
/// (a power cut across a region, an endpoint restart) does not keep polling in step.
fn jittered(base: Duration) -> Duration {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 2];
    let r = if ring::rand::SystemRandom::new().fill(&mut b).is_ok() {
        u16::from_le_bytes(b)
    } else {
        u16::MAX / 2
    };
    // 0.8 + 0.4 * r / 65535
    base.mul_f64(0.8 + 0.4 * f64::from(r) / f64::from(u16::MAX))
}

impl ControlLoop {
    fn new(settings: &crate::config::ControlSettings) -> ControlLoop {
        ControlLoop {
            client: ControlClient::new(settings),
            registered: false,
            down: false,
            poll: DEFAULT_CONTROL_POLL,
            // The first poll within a second, spread so restarts do not arrive together.
            next_poll: Instant::now() + jittered(Duration::from_millis(500)),
            etag: None,
            last_report: None,
            last_report_check: Instant::now(),
        }
    }

    /// One step; returns fresh assignments when a poll brought them.
    fn tick(&mut self, cfg: &Config, set: &ShareSet) -> Option<AssignmentsResponse> {
        let mut fresh = None;
        if Instant::now() >= self.next_poll {
            let result = (|| {
                if !self.registered {
                    let r = self.client.register(&register_request(cfg))?;
                    info!(
                        "registered gateway {} with {} share(s)",
                        r.gateway_id,
                        r.shares.len()
                    );
                    self.registered = true;
                }
                self.client.assignments_since(self.etag.as_deref())
            })();
            match result {
                Ok(polled) => {
                    if self.down {
                        info!("control endpoint reachable again");
                        self.down = false;
                    }
                    if let Polled::Changed(a, etag) = polled {
                        self.poll = Duration::from_secs(a.poll_interval_secs.clamp(1, 3600));
                        self.etag = etag;
                        fresh = Some(a);
                    }
                }
                Err(e) => {
                    if !self.down {
                        warn!(
                            "control endpoint: {e}; shares keep syncing, retrying every {}s",
                            self.poll.min(DEFAULT_CONTROL_POLL).as_secs()
                        );
                        self.down = true;
                    }
                }
            }
            self.next_poll = Instant::now()
                + jittered(if self.down {
                    self.poll.min(DEFAULT_CONTROL_POLL)
                } else {
                    self.poll
                });
        }
        // Progress goes out as it changes (not only at each poll), so an operator watching
        // DescribeExpressSyncShares sees it move.
        if !self.down
            && self.registered
            && self.last_report_check.elapsed() >= PROGRESS_EVERY
            && !set.is_empty()
        {
            self.last_report_check = Instant::now();
            let report = set.progress_report(cfg);
            if self.last_report.as_ref() != Some(&report) {
                match self.client.progress(&report) {
                    Ok(_) => self.last_report = Some(report),
                    Err(e) => warn!("control endpoint: progress report failed: {e}"),
                }
            }
        }
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, u32)]) -> BTreeMap<String, u32> {
        entries.iter().map(|(n, v)| (n.to_string(), *v)).collect()
    }

    #[test]
    fn a_share_stuck_on_its_server_is_reported_stalled_and_stops_at_once() {
        // Accepts connections (the kernel completes the handshake) and never answers: the
        // share thread waits for its listing.
        let blackhole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = blackhole.local_addr().expect("addr").port();
        let dir = tempfile::tempdir().expect("tmp");
        let share_dir = dir.path().join("share");
        std::fs::create_dir(&share_dir).expect("mkdir");
        let file = dir.path().join("agent.toml");
        let text = format!(
            "state_dir = \"{}\"\n[[share]]\nname = \"stuck\"\npath = \"{}\"\nbucket = \"silent-bucket\"\n\
             endpoint = \"http://127.0.0.1:{port}\"\nregion = \"us-east-1\"\nallow_http = true\n",
            dir.path().join("state").display(),
            share_dir.display()
        );
        let cfg = Config::parse(&file, &text).expect("config");
        let creds = Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "not-a-secret".into(),
            session_token: None,
        };
        let mut set = ShareSet::new();
        set.apply(&cfg, &creds, &effective_shares(&cfg, None));
        assert_eq!(set.len(), 1);
        std::thread::sleep(Duration::from_millis(1500));
        let stalled = set.stalled(Duration::from_secs(1));
        assert_eq!(stalled.len(), 1, "{stalled:?}");
        assert_eq!(stalled[0].0, "stuck");
        assert!(stalled[0].1 >= Duration::from_secs(1));
        assert!(set.stalled(SHARE_STALL_LIMIT).is_empty());
        // A stop does not wait for the silent server.
        let started = Instant::now();
        set.stop_all(Duration::from_secs(10), &mut Notifier::from_env());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn reload_starts_added_stops_removed_and_restarts_changed_shares() {
        let current = map(&[("docs", 1), ("photos", 1), ("video", 1)]);
        let wanted = map(&[("docs", 1), ("photos", 2), ("music", 1)]);
        let plan = plan_reload(&current, &wanted);
        assert_eq!(plan.stop, vec!["photos".to_string(), "video".to_string()]);
        assert_eq!(plan.start, vec!["music".to_string(), "photos".to_string()]);
        assert_eq!(plan.unchanged, 1);
    }

    #[test]
    fn reload_of_the_same_configuration_touches_nothing() {
        let current = map(&[("docs", 1), ("photos", 1)]);
        assert_eq!(
            plan_reload(&current, &current.clone()),
            ReloadPlan {
                stop: vec![],
                start: vec![],
                unchanged: 2
            }
        );
    }

    #[test]
    fn an_alert_needs_lasting_trouble_and_stays_the_same_text_while_it_lasts() {
        let mut s = ShareStatus::new("a");
        s.state = ShareState::Error;
        s.last_error = Some("disk on fire".into());
        s.track_trouble(1_000);
        assert_eq!(s.error_since, Some(1_000));
        assert_eq!(alert_text(&s, 60, 1_059), None, "not yet");
        let at_60 = alert_text(&s, 60, 1_060).unwrap();
        assert_eq!(at_60, "in error since 1970-01-01T00:16:40Z: disk on fire");
        assert_eq!(alert_text(&s, 60, 5_000).as_deref(), Some(at_60.as_str()));
        // A retry passes through full_syncing: still the same trouble.
        s.state = ShareState::FullSyncing;
        s.track_trouble(2_000);
        assert_eq!(s.error_since, Some(1_000));
        assert!(
            alert_text(&s, 60, 2_000)
                .unwrap()
                .starts_with("in error (retrying) since")
        );
        assert!(s.in_trouble() && !s.in_trouble_now());
        // Healthy ends it.
        s.state = ShareState::Healthy;
        s.track_trouble(3_000);
        assert_eq!(s.error_since, None);
        assert_eq!(alert_text(&s, 60, 9_000), None);
        assert!(!s.in_trouble());
    }

    #[test]
    fn express_sync_states_follow_the_share_status() {
        let mut s = ShareStatus::new("a");
        assert_eq!(express_sync_state(&s), ("MNSFullSyncInit", -1));
        s.state = ShareState::FullSyncing;
        s.sync_progress = 42;
        assert_eq!(express_sync_state(&s), ("MNSFullSyncing", 42));
        s.state = ShareState::Healthy;
        s.sync_progress = 100;
        assert_eq!(express_sync_state(&s), ("MNSHealthy", 100));
        s.state = ShareState::QueueFailure;
        assert_eq!(express_sync_state(&s).0, "QueueFailure");
        s.state = ShareState::Error;
        s.sync_progress = 57;
        assert_eq!(express_sync_state(&s), ("MNSFullSyncing", 57));
    }

    #[test]
    fn assignments_fill_in_bucket_queue_and_endpoint_of_configured_shares_only() {
        let cfg = Config::parse(
            std::path::Path::new("agent.toml"),
            "state_dir = \"/var/lib/sgw\"\ncontrol_endpoint = \"https://control\"\ngateway_id = \"gw-1\"\ngateway_secret = \"s\"\n\
             [[share]]\nname = \"a\"\npath = \"/srv/a\"\nconsistency_check = \"crc64\"\n",
        )
        .unwrap();
        assert!(
            effective_shares(&cfg, None).is_empty(),
            "nothing runs before an assignment"
        );
        let entry = |name: &str| AssignmentEntry {
            share_name: name.into(),
            express_sync_id: "sync-1".into(),
            express_sync_name: "g".into(),
            bucket_region: "us-east-1".into(),
            bucket_name: "photos".into(),
            bucket_prefix: "data/".into(),
            queue_name: "q".into(),
            queue_url: "https://sqs/q".into(),
            endpoint: "https://s3/".into(),
            region: "us-east-1".into(),
            express_sync_state: "MNSFullSyncInit".into(),
            sync_progress: -1,
        };
        let a = AssignmentsResponse {
            gateway_id: "gw-1".into(),
            poll_interval_secs: 30,
            assignments: vec![entry("a"), entry("unknown")],
        };
        let shares = effective_shares(&cfg, Some(&a));
        assert_eq!(
            shares.len(),
            1,
            "an assignment for a share this agent lacks is ignored"
        );
        let s = &shares[0];
        assert_eq!(
            (s.bucket.as_str(), s.prefix.as_str(), s.endpoint.as_str()),
            ("photos", "data/", "https://s3")
        );
        assert_eq!(s.queue_url.as_deref(), Some("https://sqs/q"));
        assert_eq!(
            s.consistency_check,
            crate::model::ConsistencyCheck::Crc64,
            "local settings stay"
        );
        assert_eq!(s.path, PathBuf::from("/srv/a"));
    }
}
