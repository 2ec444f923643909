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

use crate::cloud::s3::{S3Client, S3Config};
use crate::cloud::sigv4::Credentials;
use crate::cloud::sqs::{SqsClient, SqsConfig};
use crate::cloud::{EventQueue, ObjectStore};
use crate::config::{Config, ConfigError, EXIT_CONFIG, EXIT_NOT_CONVERGED, ShareConfig};
use crate::control::client::ControlClient;
use crate::control::protocol::{
    AssignmentEntry, AssignmentsResponse, ProgressRequest, RegisterRequest, RegisteredShare,
    ShareProgress,
};
use crate::service::Shutdown;
use crate::share::{ProgressSink, Share, ShareContext};
use crate::status::{ShareState, ShareStatus, read_status, unix_now, write_status};

/// How long a stopping agent waits for in-flight downloads before it exits anyway (the state
/// store is crash-safe, so an exit past this point loses nothing that was completed).
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(30);
/// Poll interval for assignments until the control endpoint names one.
const DEFAULT_CONTROL_POLL: Duration = Duration::from_secs(30);
/// How often share progress is checked and, when it changed, reported.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Build the clients of one share. Errors here are configuration errors.
pub fn share_context(
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
    let store: Arc<dyn ObjectStore> = Arc::new(
        S3Client::new(S3Config {
            endpoint: share.endpoint.clone(),
            region: share.region.clone(),
            bucket: share.bucket.clone(),
            credentials: creds.clone(),
            allow_http: share.allow_http,
            max_attempts: 6,
        })
        .map_err(|e| at("endpoint", e))?
        .with_stop_flag(shutdown.flag()),
    );
    let queue: Option<Arc<dyn EventQueue>> = match &share.queue_url {
        Some(url) => Some(Arc::new(
            SqsClient::new(SqsConfig {
                queue_url: url.clone(),
                region: share.region.clone(),
                credentials: creds.clone(),
                allow_http: share.allow_http,
            })
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
    let assignments = match &cfg.control {
        Some(control) => {
            let client = ControlClient::new(control);
            match client.assignments() {
                Ok(a) => {
                    save_assignments(cfg, &a);
                    Some(a)
                }
                Err(e) => {
                    warn!("control endpoint unavailable ({e}); using the last known assignments");
                    load_assignments(cfg)
                }
            }
        }
        None => None,
    };
    let shares = effective_shares(cfg, assignments.as_ref());
    if cfg.control.is_some() && shares.is_empty() {
        info!("no share of this gateway is assigned to an express sync group: nothing to sync");
    }
    let mut contexts = Vec::new();
    for share in &shares {
        match share_context(cfg, share, creds, shutdown, Arc::clone(&progress)) {
            Ok(c) => contexts.push(c),
            Err(e) => {
                error!("{e}");
                return EXIT_CONFIG;
            }
        }
    }
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

struct Running {
    cfg: ShareConfig,
    shutdown: Shutdown,
    idle: Arc<AtomicBool>,
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

    /// Make the running set equal `desired`: stop shares no longer wanted (or whose
    /// configuration changed), start new ones. Returns false if a share could not start.
    pub fn apply(&mut self, cfg: &Config, creds: &Credentials, desired: &[ShareConfig]) -> bool {
        self.stopping.retain(|(_, h)| !h.is_finished());
        let unwanted: Vec<String> = self
            .running
            .iter()
            .filter(|(name, r)| !desired.iter().any(|d| &d.name == *name && *d == r.cfg))
            .map(|(n, _)| n.clone())
            .collect();
        for name in unwanted {
            if let Some(r) = self.running.remove(&name) {
                info!("share {name}: stopping (no longer assigned or its configuration changed)");
                r.shutdown.trigger();
                self.stopping.push((name, r.handle));
            }
        }
        let mut ok = true;
        for share in desired {
            if self.running.contains_key(&share.name) {
                continue;
            }
            if self.stopping.iter().any(|(n, _)| n == &share.name) {
                // Its old thread is still in a long poll: start it on a later round.
                continue;
            }
            ok &= self.start(cfg, creds, share);
        }
        ok
    }

    fn start(&mut self, cfg: &Config, creds: &Credentials, share: &ShareConfig) -> bool {
        let shutdown = Shutdown::new();
        let silent: Arc<dyn ProgressSink> = Arc::new(crate::share::Silent);
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
                        shutdown,
                        idle,
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
    pub fn stop_all(self, deadline: Duration) {
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
            std::thread::sleep(Duration::from_millis(100));
        }
        for (_, r) in self.running {
            if r.handle.is_finished() {
                let _ = r.handle.join();
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
                ShareProgress {
                    share_name: r.cfg.name.clone(),
                    sync_progress: progress,
                    express_sync_state: state.to_owned(),
                }
            })
            .collect();
        ProgressRequest { shares }
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

/// `sgw-agent run`: keep every share in step until SIGTERM/SIGINT.
pub fn run_daemon(cfg: &Config, creds: &Credentials, shutdown: &Shutdown) -> i32 {
    let mut set = ShareSet::new();
    match &cfg.control {
        None => {
            set.apply(cfg, creds, &cfg.shares);
            if set.is_empty() {
                error!("no share could be started");
                return EXIT_NOT_CONVERGED;
            }
            info!(
                "sgw-agent {} running with {} share(s)",
                env!("CARGO_PKG_VERSION"),
                set.len()
            );
            while !shutdown.is_triggered() {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Some(control) => {
            info!(
                "sgw-agent {} running as gateway {} of {}",
                env!("CARGO_PKG_VERSION"),
                control.gateway_id,
                control.endpoint
            );
            let client = ControlClient::new(control);
            if let Some(cached) = load_assignments(cfg) {
                set.apply(cfg, creds, &effective_shares(cfg, Some(&cached)));
            }
            let mut registered = false;
            let mut control_down = false;
            let mut poll = DEFAULT_CONTROL_POLL;
            let mut next = Instant::now();
            let mut last_report: Option<ProgressRequest> = None;
            let mut last_report_check = Instant::now();
            while !shutdown.is_triggered() {
                if Instant::now() >= next {
                    let result = (|| {
                        if !registered {
                            let r = client.register(&register_request(cfg))?;
                            info!(
                                "registered gateway {} with {} share(s)",
                                r.gateway_id,
                                r.shares.len()
                            );
                            registered = true;
                        }
                        let a = client.assignments()?;
                        save_assignments(cfg, &a);
                        poll = Duration::from_secs(a.poll_interval_secs.clamp(1, 3600));
                        set.apply(cfg, creds, &effective_shares(cfg, Some(&a)));
                        Ok::<(), crate::cloud::CloudError>(())
                    })();
                    match result {
                        Ok(()) if control_down => {
                            info!("control endpoint reachable again");
                            control_down = false;
                        }
                        Ok(()) => {}
                        Err(e) if !control_down => {
                            warn!(
                                "control endpoint: {e}; shares keep syncing, retrying every {}s",
                                poll.as_secs()
                            );
                            control_down = true;
                        }
                        Err(_) => {}
                    }
                    next = Instant::now()
                        + if control_down {
                            poll.min(DEFAULT_CONTROL_POLL)
                        } else {
                            poll
                        };
                }
                // Progress goes out as it changes (not only at each poll), so an operator
                // watching DescribeExpressSyncShares sees it move.
                if !control_down
                    && registered
                    && last_report_check.elapsed() >= PROGRESS_EVERY
                    && !set.is_empty()
                {
                    last_report_check = Instant::now();
                    let report = set.progress_report(cfg);
                    if last_report.as_ref() != Some(&report) {
                        match client.progress(&report) {
                            Ok(_) => last_report = Some(report),
                            Err(e) => warn!("control endpoint: progress report failed: {e}"),
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    info!(
        "stopping: finishing in-flight work (at most {}s)",
        DRAIN_DEADLINE.as_secs()
    );
    set.stop_all(DRAIN_DEADLINE);
    info!("stopped");
    0
}
