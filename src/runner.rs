//! The commands: one full sync of every share, or the daemon that keeps them in step (and
//! applies configuration reloads).

use std::collections::BTreeMap;
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
use crate::service::{Notifier, ReloadRequest, Shutdown};
use crate::share::{ProgressSink, Share, ShareContext};

/// How long a stopping agent waits for in-flight downloads before it exits anyway (the state
/// store is crash-safe, so an exit past this point loses nothing that was completed).
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

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

/// `sgw-agent sync`: one full sync of every share, in parallel. Exit 0 when every share
/// converged.
pub fn sync_once(
    cfg: &Config,
    creds: &Credentials,
    shutdown: &Shutdown,
    progress: Arc<dyn ProgressSink>,
) -> i32 {
    let mut contexts = Vec::new();
    for share in &cfg.shares {
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

/// What one share of the daemon runs with: when any of it changes on a reload, the share is
/// restarted (a new endpoint, new credentials, a moved state directory all need new clients).
#[derive(Clone, PartialEq)]
struct ShareSpec {
    cfg: ShareConfig,
    state_dir: std::path::PathBuf,
    credentials: Credentials,
}

fn specs_of(cfg: &Config, creds: &Credentials) -> BTreeMap<String, ShareSpec> {
    cfg.shares
        .iter()
        .map(|s| {
            let spec = ShareSpec {
                cfg: s.clone(),
                state_dir: cfg.share_state_dir(s),
                credentials: creds.clone(),
            };
            (s.name.clone(), spec)
        })
        .collect()
}

/// Which shares a reload stops and which it starts (a changed share is in both).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    pub stop: Vec<String>,
    pub start: Vec<String>,
    pub unchanged: usize,
}

fn plan_reload<S: PartialEq>(
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

/// A share thread of the daemon, with its own stop flag so a reload can stop it alone.
struct RunningShare {
    spec: ShareSpec,
    stop: Shutdown,
    idle: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

/// A share whose clients are built and checked, waiting for its previous instance (same
/// name, same state directory) to finish before it opens its state.
struct PendingShare {
    spec: ShareSpec,
    ctx: ShareContext,
}

/// The `run` command's shares, changed at run time by reloads.
struct Daemon {
    cfg: Config,
    running: BTreeMap<String, RunningShare>,
    pending: BTreeMap<String, PendingShare>,
    /// Removed or replaced shares finishing their work: (name, its thread).
    stopping: Vec<(String, Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Daemon {
    fn spawn(&mut self, spec: ShareSpec, ctx: ShareContext) -> Result<(), String> {
        let name = spec.cfg.name.clone();
        let stop = ctx.shutdown.clone();
        let mut share = Share::open(ctx).map_err(|e| format!("share {name}: cannot open: {e}"))?;
        let idle = Arc::clone(&share.idle);
        let handle = std::thread::Builder::new()
            .name(format!("sgw-share-{name}"))
            .spawn(move || share.run())
            .map_err(|e| format!("share {name}: cannot start its thread: {e}"))?;
        self.running.insert(
            name,
            RunningShare {
                spec,
                stop,
                idle,
                handle,
            },
        );
        Ok(())
    }

    /// Start pending shares whose previous instance has finished.
    fn start_pending(&mut self) {
        let ready: Vec<String> = self
            .pending
            .keys()
            .filter(|name| !self.stopping.iter().any(|(n, _, _)| n == *name))
            .cloned()
            .collect();
        for name in ready {
            if let Some(p) = self.pending.remove(&name) {
                match self.spawn(p.spec, p.ctx) {
                    Ok(()) => info!("share {name}: started"),
                    Err(e) => error!("{e}; it stays stopped until the next reload or restart"),
                }
            }
        }
    }

    fn reap_stopping(&mut self) {
        self.stopping.retain(|(_, _, h)| !h.is_finished());
    }

    /// Re-read the configuration and apply the difference. All or nothing for configuration
    /// errors: every new or changed share's clients and directory are checked before any
    /// running share is touched, so a typo never takes a working share down.
    fn reload(&mut self) -> Result<String, ConfigError> {
        let cfg = Config::load(&self.cfg.file)?;
        let creds = cfg.credentials()?;
        let wanted = specs_of(&cfg, &creds);
        let current: BTreeMap<String, ShareSpec> = self
            .running
            .iter()
            .map(|(n, r)| (n.clone(), r.spec.clone()))
            .chain(
                self.pending
                    .iter()
                    .map(|(n, p)| (n.clone(), p.spec.clone())),
            )
            .collect();
        let plan = plan_reload(&current, &wanted);
        let silent: Arc<dyn ProgressSink> = Arc::new(crate::share::Silent);
        let mut contexts = Vec::new();
        for name in &plan.start {
            let spec = &wanted[name];
            let ctx = share_context(
                &cfg,
                &spec.cfg,
                &creds,
                &Shutdown::new(),
                Arc::clone(&silent),
            )?;
            contexts.push((spec.clone(), ctx));
        }
        for name in &plan.stop {
            if let Some(r) = self.running.remove(name) {
                info!("share {name}: stopping (removed or changed in the configuration)");
                r.stop.trigger();
                self.stopping.push((name.clone(), r.idle, r.handle));
            }
            self.pending.remove(name);
        }
        for (spec, ctx) in contexts {
            self.pending
                .insert(spec.cfg.name.clone(), PendingShare { spec, ctx });
        }
        crate::service::set_log_level(crate::service::effective_log_level(cfg.log_level));
        self.cfg = cfg;
        Ok(format!(
            "{} share(s) to start, {} to stop, {} unchanged",
            plan.start.len(),
            plan.stop.len(),
            plan.unchanged
        ))
    }

    fn status_line(&self) -> String {
        let mut line = format!("{} share(s) running", self.running.len());
        if !self.pending.is_empty() {
            line.push_str(&format!(", {} starting", self.pending.len()));
        }
        if !self.stopping.is_empty() {
            line.push_str(&format!(", {} stopping", self.stopping.len()));
        }
        line
    }
}

/// How often the daemon's main loop wakes: to feed the watchdog, act on signals, start and
/// reap shares.
const TICK: Duration = Duration::from_millis(200);

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
    let mut daemon = Daemon {
        cfg: cfg.clone(),
        running: BTreeMap::new(),
        pending: BTreeMap::new(),
        stopping: Vec::new(),
    };
    let silent: Arc<dyn ProgressSink> = Arc::new(crate::share::Silent);
    // Check every share before starting any: a bad configuration exits 78 with nothing started.
    let mut contexts = Vec::new();
    for spec in specs_of(cfg, creds).into_values() {
        match share_context(cfg, &spec.cfg, creds, &Shutdown::new(), Arc::clone(&silent)) {
            Ok(ctx) => contexts.push((spec, ctx)),
            Err(e) => {
                error!("{e}");
                return EXIT_CONFIG;
            }
        }
    }
    for (spec, ctx) in contexts {
        notifier.feed_watchdog();
        if let Err(e) = daemon.spawn(spec, ctx) {
            error!("{e}");
            stop_all(&mut daemon, &mut notifier);
            return EXIT_CONFIG;
        }
    }
    info!(
        "sgw-agent {} running with {} share(s)",
        env!("CARGO_PKG_VERSION"),
        daemon.running.len()
    );
    let mut last_status = daemon.status_line();
    notifier.ready(&last_status);
    let mut code = 0;
    while !shutdown.is_triggered() {
        notifier.feed_watchdog();
        if reload.take() {
            info!("SIGHUP: re-reading {}", daemon.cfg.file.display());
            notifier.reloading("re-reading the configuration");
            match daemon.reload() {
                Ok(summary) => info!("configuration reloaded: {summary}"),
                Err(e) => error!("reload refused, the previous configuration stays in force: {e}"),
            }
            daemon.reap_stopping();
            daemon.start_pending();
            last_status = daemon.status_line();
            notifier.ready(&last_status);
        }
        daemon.reap_stopping();
        if !daemon.pending.is_empty() {
            daemon.start_pending();
        }
        // STATUS= only when it changes: this loop runs five times a second.
        let status = daemon.status_line();
        if status != last_status {
            notifier.status(&status);
            last_status = status;
        }
        // A share thread ends only when told to; one that ended by itself died. Exit non-zero
        // so systemd (Restart=on-failure) starts a fresh agent rather than run without it.
        if let Some(name) = daemon
            .running
            .iter()
            .find(|(_, r)| r.handle.is_finished())
            .map(|(n, _)| n.clone())
        {
            error!("share {name}: its thread ended unexpectedly; stopping the agent");
            code = 1;
            break;
        }
        std::thread::sleep(TICK);
    }
    stop_all(&mut daemon, &mut notifier);
    code
}

/// Stop every share and wait for in-flight work (bounded by [`DRAIN_DEADLINE`]).
fn stop_all(daemon: &mut Daemon, notifier: &mut Notifier) {
    notifier.stopping("finishing in-flight work");
    info!(
        "stopping: finishing in-flight work (at most {}s)",
        DRAIN_DEADLINE.as_secs()
    );
    daemon.pending.clear();
    for (name, r) in std::mem::take(&mut daemon.running) {
        r.stop.trigger();
        daemon.stopping.push((name, r.idle, r.handle));
    }
    let deadline = Instant::now() + DRAIN_DEADLINE;
    loop {
        notifier.feed_watchdog();
        // A share idle in a long poll has nothing in flight: no need to wait for the poll.
        let busy: Vec<&str> = daemon
            .stopping
            .iter()
            .filter(|(_, idle, h)| !h.is_finished() && !idle.load(Ordering::SeqCst))
            .map(|(n, _, _)| n.as_str())
            .collect();
        if busy.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            warn!("stopping with work still in flight on {busy:?}; it resumes at the next start");
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for (_, _, h) in daemon.stopping.drain(..) {
        if h.is_finished() {
            let _ = h.join();
        }
    }
    info!("stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, u32)]) -> BTreeMap<String, u32> {
        entries.iter().map(|(n, v)| (n.to_string(), *v)).collect()
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
    fn new_credentials_restart_every_share() {
        let cfg = Config::parse(
            std::path::Path::new("agent.toml"),
            "state_dir = \"/var/lib/sgw\"\n\
             [[share]]\nname = \"a\"\npath = \"/srv/a\"\nbucket = \"bkt\"\n\
             endpoint = \"https://s3.example.com\"\nregion = \"r\"\n\
             [[share]]\nname = \"b\"\npath = \"/srv/b\"\nbucket = \"bkt\"\n\
             endpoint = \"https://s3.example.com\"\nregion = \"r\"\n",
        )
        .unwrap();
        let creds = |secret: &str| Credentials {
            access_key_id: "AKID".into(),
            secret_access_key: secret.into(),
            session_token: None,
        };
        let old = specs_of(&cfg, &creds("one"));
        let same = plan_reload(&old, &specs_of(&cfg, &creds("one")));
        assert_eq!((same.stop.len(), same.start.len()), (0, 0));
        let rotated = plan_reload(&old, &specs_of(&cfg, &creds("two")));
        assert_eq!(rotated.stop, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(rotated.start, vec!["a".to_string(), "b".to_string()]);
    }
}
