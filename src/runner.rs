//! The commands: one full sync of every share, or the daemon that keeps them in step.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use log::{error, info, warn};

use crate::cloud::s3::{S3Client, S3Config};
use crate::cloud::sigv4::Credentials;
use crate::cloud::sqs::{SqsClient, SqsConfig};
use crate::cloud::{EventQueue, ObjectStore};
use crate::config::{Config, ConfigError, EXIT_CONFIG, EXIT_NOT_CONVERGED, ShareConfig};
use crate::service::Shutdown;
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

/// `sgw-agent run`: keep every share in step until SIGTERM/SIGINT.
pub fn run_daemon(cfg: &Config, creds: &Credentials, shutdown: &Shutdown) -> i32 {
    let silent: Arc<dyn ProgressSink> = Arc::new(crate::share::Silent);
    let mut shares = Vec::new();
    for share in &cfg.shares {
        let ctx = match share_context(cfg, share, creds, shutdown, Arc::clone(&silent)) {
            Ok(c) => c,
            Err(e) => {
                error!("{e}");
                return EXIT_CONFIG;
            }
        };
        let state_dir = ctx.state_dir.clone();
        match Share::open(ctx) {
            Ok(s) => shares.push(s),
            Err(e) => {
                // One broken share (its disk, its state) must not stop the others.
                error!("share {}: cannot open, not syncing it: {e}", share.name);
                let status = crate::status::ShareStatus {
                    state: crate::status::ShareState::Error,
                    last_error: Some(format!("cannot open: {e}")),
                    updated: crate::status::unix_now(),
                    ..crate::status::ShareStatus::new(&share.name)
                };
                let _ = crate::status::write_status(&state_dir, &status);
            }
        }
    }
    if shares.is_empty() {
        error!("no share could be opened");
        return EXIT_NOT_CONVERGED;
    }
    info!(
        "sgw-agent {} running with {} share(s)",
        env!("CARGO_PKG_VERSION"),
        shares.len()
    );
    let mut running = Vec::new();
    for mut share in shares {
        let idle = Arc::clone(&share.idle);
        let name = share.name().to_owned();
        let handle = std::thread::Builder::new()
            .name(format!("sgw-share-{name}"))
            .spawn(move || share.run())
            .expect("spawning a share thread");
        running.push((name, idle, handle));
    }
    while !shutdown.is_triggered() && running.iter().any(|(_, _, h)| !h.is_finished()) {
        std::thread::sleep(Duration::from_millis(200));
    }
    info!(
        "stopping: finishing in-flight work (at most {}s)",
        DRAIN_DEADLINE.as_secs()
    );
    let deadline = Instant::now() + DRAIN_DEADLINE;
    loop {
        let busy: Vec<&str> = running
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
    for (_, _, h) in running {
        if h.is_finished() {
            let _ = h.join();
        }
    }
    info!("stopped");
    0
}
