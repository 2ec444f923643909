//! Running as a service: shutdown and reload as inputs, signals, the systemd notification
//! protocol (`sd_notify`: READY, RELOADING, STOPPING, WATCHDOG), and logging for terminals
//! and journald.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// When a worker thread last showed progress. Share threads beat as they go; the daemon's
/// main loop stops feeding the systemd watchdog when one has not beaten for a long time, so a
/// wedged share (a hung disk, a deadlock) ends in a restart instead of silence.
#[derive(Clone, Debug)]
pub struct Heartbeat(Arc<AtomicU64>);

/// The clock heartbeats count from (monotonic; milliseconds fit an `AtomicU64` for ages).
fn heartbeat_epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Heartbeat {
    /// A heartbeat that has just beaten.
    pub fn new() -> Heartbeat {
        let h = Heartbeat(Arc::new(AtomicU64::new(0)));
        h.beat();
        h
    }

    pub fn beat(&self) {
        let now = u64::try_from(heartbeat_epoch().elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.store(now, Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        heartbeat_epoch()
            .elapsed()
            .saturating_sub(Duration::from_millis(self.0.load(Ordering::Relaxed)))
    }
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat::new()
    }
}

/// A cheap, clonable "please stop" flag. Loops check it between units of work; sleeps use
/// [`Shutdown::sleep`] so they end early when it is set.
#[derive(Clone, Debug, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    pub fn trigger(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// The underlying flag, for clients that check it between retries.
    pub fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.0)
    }

    pub fn is_triggered(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Sleep up to `d`; returns early (true) when shutdown is requested.
    pub fn sleep(&self, d: Duration) -> bool {
        let deadline = std::time::Instant::now() + d;
        loop {
            if self.is_triggered() {
                return true;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(100)));
        }
    }

    /// Set the flag on SIGTERM and SIGINT. (SIGHUP means "reload": see [`ReloadRequest`].)
    pub fn on_signals(&self) -> std::io::Result<()> {
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(sig, Arc::clone(&self.0))?;
        }
        Ok(())
    }
}

/// The lock file in `state_dir` that a running `run` or `sync` holds (`flock`, exclusive), so
/// `status` can tell whether an agent is at work and a second agent on the same state refuses
/// to start (one writer per state store). The file says who holds it: `PID COMMAND`. The
/// kernel drops the lock when the process ends, however it ends: a stale file means nothing.
pub const LOCK_FILE: &str = "agent.lock";

/// The held lock; dropping it (or exiting) releases it.
#[derive(Debug)]
pub struct AgentLock {
    _file: std::fs::File,
}

/// Who holds the state directory's lock, as `status` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockHolder {
    /// An agent holds it: its pid and command (`run` or `sync`), from the lock file.
    Running { pid: Option<u32>, command: String },
    /// Nobody holds it (or there is no lock file yet).
    Stopped,
}

fn read_holder(file: &mut std::fs::File) -> (Option<u32>, String) {
    use std::io::{Read, Seek};
    let mut text = String::new();
    let _ = file.rewind();
    let _ = file.take(256).read_to_string(&mut text);
    let mut words = text.split_whitespace();
    let pid = words.next().and_then(|p| p.parse().ok());
    (pid, words.next().unwrap_or("").to_owned())
}

impl AgentLock {
    /// Take the lock for `command`, creating `state_dir` as needed. `Err` names the holder
    /// when another agent has it.
    pub fn acquire(state_dir: &std::path::Path, command: &str) -> Result<AgentLock, String> {
        use rustix::fs::{FlockOperation, flock};
        use std::os::unix::fs::OpenOptionsExt;
        let path = state_dir.join(LOCK_FILE);
        std::fs::create_dir_all(state_dir)
            .map_err(|e| format!("cannot create {}: {e}", state_dir.display()))?;
        // Readable by all: `status` run by an operator reads who holds it.
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let (pid, cmd) = read_holder(&mut file);
                return Err(format!(
                    "another sgw-agent ({}{}) is using the state directory {}; stop it first \
                     (systemctl stop sgw-agent)",
                    pid.map_or("pid unknown".to_owned(), |p| format!("pid {p}")),
                    if cmd.is_empty() {
                        String::new()
                    } else {
                        format!(", {cmd}")
                    },
                    state_dir.display()
                ));
            }
            Err(e) => return Err(format!("cannot lock {}: {e}", path.display())),
        }
        let text = format!("{} {command}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| {
                use std::io::Write;
                file.write_all(text.as_bytes())
            })
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(AgentLock { _file: file })
    }

    /// Whether an agent holds `state_dir`'s lock. Opens the file read-only and never creates
    /// it, so it works for any user who can read the state directory.
    pub fn holder(state_dir: &std::path::Path) -> std::io::Result<LockHolder> {
        use rustix::fs::{FlockOperation, flock};
        let mut file = match std::fs::File::open(state_dir.join(LOCK_FILE)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LockHolder::Stopped),
            Err(e) => return Err(e),
        };
        match flock(&file, FlockOperation::NonBlockingLockShared) {
            Ok(()) => {
                let _ = flock(&file, FlockOperation::Unlock);
                Ok(LockHolder::Stopped)
            }
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let (pid, command) = read_holder(&mut file);
                Ok(LockHolder::Running { pid, command })
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// "Re-read the configuration", set by SIGHUP (`systemctl reload`) and taken by the daemon's
/// main loop.
#[derive(Clone, Debug, Default)]
pub struct ReloadRequest(Arc<AtomicBool>);

impl ReloadRequest {
    pub fn new() -> ReloadRequest {
        ReloadRequest::default()
    }

    /// Set the flag on SIGHUP. Until this is called SIGHUP keeps its default action (exit).
    pub fn on_sighup(&self) -> std::io::Result<()> {
        signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&self.0))?;
        Ok(())
    }

    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// True once per request (several SIGHUPs before a look coalesce into one reload).
    pub fn take(&self) -> bool {
        self.0.swap(false, Ordering::SeqCst)
    }
}

/// Where systemd listens for notifications (`NOTIFY_SOCKET`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyAddr {
    Path(PathBuf),
    /// Linux abstract namespace (`@name` in the variable), without the leading NUL.
    Abstract(Vec<u8>),
}

/// `sun_path` holds 108 bytes: a path needs room for its terminating NUL, an abstract name
/// for its leading one.
const SUN_PATH_LEN: usize = 108;

/// Parse `NOTIFY_SOCKET`: an absolute path or `@abstract-name`. Anything else (relative
/// paths, systemd 254's `vsock:` addresses, over-long names) is refused with a reason.
pub fn parse_notify_socket(value: &OsStr) -> Result<NotifyAddr, String> {
    let bytes = value.as_bytes();
    if bytes.contains(&0) {
        return Err("contains a NUL byte".into());
    }
    match bytes {
        [] => Err("is empty".into()),
        [b'/'] | [b'@'] => Err("names no socket".into()),
        [b'/', ..] if bytes.len() >= SUN_PATH_LEN => Err(format!(
            "is {} bytes; a socket path is at most {}",
            bytes.len(),
            SUN_PATH_LEN - 1
        )),
        [b'/', ..] => Ok(NotifyAddr::Path(PathBuf::from(value))),
        [b'@', name @ ..] if name.len() >= SUN_PATH_LEN => Err(format!(
            "names a {}-byte abstract socket; at most {}",
            name.len(),
            SUN_PATH_LEN - 1
        )),
        [b'@', name @ ..] => Ok(NotifyAddr::Abstract(name.to_vec())),
        _ => Err("is neither an absolute path nor an @abstract socket name".into()),
    }
}

/// The watchdog interval systemd expects pings within, from `WATCHDOG_USEC` and
/// `WATCHDOG_PID`: `None` when unset or meant for another process (a child of ours would
/// inherit the variables).
pub fn parse_watchdog(
    usec: Option<&str>,
    pid: Option<&str>,
    my_pid: u32,
) -> Result<Option<Duration>, String> {
    let Some(usec) = usec else {
        return Ok(None);
    };
    if let Some(pid) = pid {
        let pid: u32 = pid
            .parse()
            .map_err(|_| format!("WATCHDOG_PID={pid:?} is not a process id"))?;
        if pid != my_pid {
            return Ok(None);
        }
    }
    let usec: u64 = usec
        .parse()
        .map_err(|_| format!("WATCHDOG_USEC={usec:?} is not a number of microseconds"))?;
    if usec == 0 {
        return Err("WATCHDOG_USEC=0: a zero interval cannot be met".into());
    }
    Ok(Some(Duration::from_micros(usec)))
}

/// One `KEY=value` line for a notification: a newline inside `value` would start a forged
/// assignment, so it becomes a space.
fn notify_field(key: &str, value: &str) -> String {
    format!("{key}={}", value.replace(['\n', '\r'], " "))
}

/// Talks to systemd's notification socket (`Type=notify`). Every call is a no-op when the
/// agent was not started by systemd (no `NOTIFY_SOCKET`). Send errors are logged once and
/// never stop the agent: being unable to report is no reason to stop syncing.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
    last_ping: Option<Instant>,
    warned: AtomicBool,
}

impl Notifier {
    /// The notifier systemd asked for through the environment; disabled (with a warning)
    /// when the variables are malformed.
    pub fn from_env() -> Notifier {
        let mut notifier = Notifier::disabled();
        if let Some(value) = std::env::var_os("NOTIFY_SOCKET") {
            match parse_notify_socket(&value)
                .and_then(|a| Notifier::connect(&a).map_err(|e| format!("cannot use it: {e}")))
            {
                Ok(n) => notifier = n,
                Err(e) => log::warn!("NOTIFY_SOCKET={value:?} {e}; not notifying systemd"),
            }
        }
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        match parse_watchdog(usec.as_deref(), pid.as_deref(), std::process::id()) {
            Ok(w) => notifier.watchdog = w,
            Err(e) => log::warn!("{e}; not feeding the watchdog"),
        }
        notifier
    }

    pub fn disabled() -> Notifier {
        Notifier {
            target: None,
            watchdog: None,
            last_ping: None,
            warned: AtomicBool::new(false),
        }
    }

    /// A notifier that sends to `addr` (no watchdog until [`Notifier::with_watchdog`]).
    pub fn connect(addr: &NotifyAddr) -> std::io::Result<Notifier> {
        let socket_addr = match addr {
            NotifyAddr::Path(p) => SocketAddr::from_pathname(p)?,
            NotifyAddr::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)?
            }
        };
        let socket = UnixDatagram::unbound()?;
        // systemd reads promptly; a wedged manager must not wedge our main loop too.
        socket.set_write_timeout(Some(Duration::from_secs(2)))?;
        Ok(Notifier {
            target: Some((socket, socket_addr)),
            ..Notifier::disabled()
        })
    }

    pub fn with_watchdog(mut self, interval: Option<Duration>) -> Notifier {
        self.watchdog = interval;
        self
    }

    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Send one notification (newline-separated `KEY=value` lines).
    pub fn send(&self, message: &str) {
        let Some((socket, addr)) = &self.target else {
            return;
        };
        if let Err(e) = socket.send_to_addr(message.as_bytes(), addr)
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            log::warn!("cannot notify systemd: {e} (further failures are not logged)");
        }
    }

    /// Start-up (or a reload) is complete; `status` is shown by `systemctl status`.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\n{}", notify_field("STATUS", status)));
    }

    pub fn reloading(&self, status: &str) {
        self.send(&format!("RELOADING=1\n{}", notify_field("STATUS", status)));
    }

    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\n{}", notify_field("STATUS", status)));
    }

    pub fn status(&self, status: &str) {
        self.send(&notify_field("STATUS", status));
    }

    /// Ping the watchdog when half its interval has passed since the last ping. Call it from
    /// the loop whose progress proves the agent is alive, at least a few times per interval.
    pub fn feed_watchdog(&mut self) {
        let Some(interval) = self.watchdog else {
            return;
        };
        let due = self.last_ping.is_none_or(|t| t.elapsed() >= interval / 2);
        if due {
            self.send("WATCHDOG=1");
            self.last_ping = Some(Instant::now());
        }
    }
}

/// The level `-v`/`-q` asked for on the command line; it wins over `SGW_LOG` and the
/// configuration, also across reloads.
static CLI_LOG_LEVEL: OnceLock<log::LevelFilter> = OnceLock::new();

/// Record the command line's `-v`/`-q` level (once, at start).
pub fn set_cli_log_level(level: log::LevelFilter) {
    let _ = CLI_LOG_LEVEL.set(level);
}

/// The log level in force: `-v`/`-q`, else `SGW_LOG` when set to a valid level, else the
/// configured one.
pub fn effective_log_level(configured: log::LevelFilter) -> log::LevelFilter {
    if let Some(level) = CLI_LOG_LEVEL.get() {
        return *level;
    }
    std::env::var("SGW_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(configured)
}

/// Change the level of the running logger (a reload may change `log_level`).
pub fn set_log_level(level: log::LevelFilter) {
    log::set_max_level(level);
}

/// `JOURNAL_STREAM` is `DEVICE:INODE` of the stream systemd connected to our stdout/stderr.
pub fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.split_once(':')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(dev) || !digits(ino) {
        return None;
    }
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// True when stderr is the journal stream systemd gave us. The variable alone is not enough:
/// it is inherited by anything we start and survives `2>file`, so the device and inode are
/// compared with stderr's (systemd.exec(5) asks for exactly this check).
pub fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(parse_journal_stream) else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(meta) => meta.dev() == dev && meta.ino() == ino,
        // No /proc to check against: trust the variable, as systemd sets it only for us.
        Err(_) => true,
    }
}

/// A one-line-per-event logger. Under journald (`JOURNAL_STREAM` set) lines carry the syslog
/// priority prefix (`<3>` … `<7>`) and no timestamp (journald adds its own), so
/// `journalctl -p warning` works; elsewhere they carry a UTC timestamp and the level.
/// The level is the `log` crate's global maximum, so [`set_log_level`] changes it live.
pub struct Logger {
    journald: bool,
}

impl Logger {
    pub fn init(level: log::LevelFilter) {
        let logger = Logger {
            journald: stderr_is_journal(),
        };
        // A second init (tests) keeps the first logger: harmless.
        if log::set_boxed_logger(Box::new(logger)).is_ok() {
            log::set_max_level(level);
        }
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level() && metadata.target().starts_with("sgw")
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // One event, one line: a message with a newline in it (a hostile key, a server's
        // error text) must not forge a second log line.
        let msg = record.args().to_string().replace(['\n', '\r'], " ");
        let line = format_log_line(self.journald, record.level(), &msg);
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// One log line: `<prio>message` for journald (syslog priorities: err 3, warning 4, info 6,
/// debug 7), `TIMESTAMP LEVEL message` elsewhere.
pub fn format_log_line(journald: bool, level: log::Level, msg: &str) -> String {
    if journald {
        let prio = match level {
            log::Level::Error => 3,
            log::Level::Warn => 4,
            log::Level::Info => 6,
            log::Level::Debug | log::Level::Trace => 7,
        };
        format!("<{prio}>{msg}\n")
    } else {
        format!("{} {level:5} {msg}\n", crate::time::utc_timestamp())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_ages_until_it_beats_again() {
        let h = Heartbeat::new();
        let seen_by_the_main_loop = h.clone();
        std::thread::sleep(Duration::from_millis(30));
        assert!(seen_by_the_main_loop.age() >= Duration::from_millis(30));
        h.beat();
        assert!(seen_by_the_main_loop.age() < Duration::from_millis(30));
    }

    #[test]
    fn notify_socket_accepts_paths_and_abstract_names() {
        assert_eq!(
            parse_notify_socket(OsStr::new("/run/systemd/notify")),
            Ok(NotifyAddr::Path(PathBuf::from("/run/systemd/notify")))
        );
        assert_eq!(
            parse_notify_socket(OsStr::new("@/org/freedesktop/systemd1/notify/42")),
            Ok(NotifyAddr::Abstract(
                b"/org/freedesktop/systemd1/notify/42".to_vec()
            ))
        );
        let longest_path = format!("/{}", "p".repeat(SUN_PATH_LEN - 2));
        assert!(parse_notify_socket(OsStr::new(&longest_path)).is_ok());
    }

    #[test]
    fn notify_socket_refuses_what_cannot_be_a_unix_address() {
        let too_long_path = format!("/{}", "p".repeat(SUN_PATH_LEN - 1));
        let too_long_name = format!("@{}", "n".repeat(SUN_PATH_LEN));
        for bad in [
            "",
            "/",
            "@",
            "run/systemd/notify",
            "./notify",
            "vsock:2:1234",
            " /run/notify",
            "/run/no\0tify",
            "@abs\0tract",
            &too_long_path,
            &too_long_name,
        ] {
            assert!(
                parse_notify_socket(OsStr::new(bad)).is_err(),
                "accepted {bad:?}"
            );
        }
        // Not UTF-8 is fine for a path: it is bytes.
        let raw = OsStr::from_bytes(b"/run/\xff\xfe");
        assert!(parse_notify_socket(raw).is_ok());
    }

    #[test]
    fn watchdog_interval_is_ours_only_when_the_pid_matches() {
        assert_eq!(parse_watchdog(None, None, 7), Ok(None));
        assert_eq!(
            parse_watchdog(Some("30000000"), None, 7),
            Ok(Some(Duration::from_secs(30)))
        );
        assert_eq!(
            parse_watchdog(Some("30000000"), Some("7"), 7),
            Ok(Some(Duration::from_secs(30)))
        );
        // Inherited from a parent: not ours to feed.
        assert_eq!(parse_watchdog(Some("30000000"), Some("8"), 7), Ok(None));
    }

    #[test]
    fn watchdog_variables_that_make_no_sense_are_errors() {
        for (usec, pid) in [
            (Some("0"), None),
            (Some(""), None),
            (Some("-5"), None),
            (Some("3s"), None),
            (Some(" 30"), None),
            (Some("99999999999999999999999999"), None),
            (Some("30000000"), Some("")),
            (Some("30000000"), Some("-1")),
            (Some("30000000"), Some("seven")),
            (Some("30000000"), Some("99999999999999999999")),
        ] {
            assert!(
                parse_watchdog(usec, pid, 7).is_err(),
                "accepted {usec:?} {pid:?}"
            );
        }
    }

    #[test]
    fn journal_stream_is_device_colon_inode() {
        assert_eq!(parse_journal_stream("8:123456"), Some((8, 123456)));
        assert_eq!(parse_journal_stream("0:0"), Some((0, 0)));
        let huge = format!("{}:1", "9".repeat(40));
        for bad in [
            "", ":", "8:", ":5", "8", "8:5:1", "a:b", "-8:5", "8:+5", " 8:5", "8:5\n", &huge,
        ] {
            assert_eq!(parse_journal_stream(bad), None, "accepted {bad:?}");
        }
    }

    #[test]
    fn journald_lines_carry_syslog_priorities_and_no_timestamp() {
        assert_eq!(
            format_log_line(true, log::Level::Error, "disk full"),
            "<3>disk full\n"
        );
        assert_eq!(format_log_line(true, log::Level::Warn, "w"), "<4>w\n");
        assert_eq!(format_log_line(true, log::Level::Info, "i"), "<6>i\n");
        assert_eq!(format_log_line(true, log::Level::Debug, "d"), "<7>d\n");
        assert_eq!(format_log_line(true, log::Level::Trace, "t"), "<7>t\n");
        let terminal = format_log_line(false, log::Level::Warn, "slow peer");
        // `2026-11-21T05:06:52Z WARN  slow peer`
        assert!(terminal.ends_with(" WARN  slow peer\n"), "{terminal:?}");
        assert_eq!(terminal.find('Z'), Some(19), "{terminal:?}");
        assert!(!terminal.starts_with('<'));
    }

    #[test]
    fn notifications_reach_the_socket_and_cannot_be_forged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let notifier = Notifier::connect(&NotifyAddr::Path(path)).unwrap();
        assert!(notifier.is_enabled());
        let mut buf = [0u8; 512];
        let mut recv = || {
            let n = listener.recv(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        notifier.ready("2 share(s)");
        assert_eq!(recv(), "READY=1\nSTATUS=2 share(s)");
        notifier.reloading("re-reading\nREADY=1");
        assert_eq!(recv(), "RELOADING=1\nSTATUS=re-reading READY=1");
        notifier.stopping("bye");
        assert_eq!(recv(), "STOPPING=1\nSTATUS=bye");
    }

    #[test]
    fn abstract_socket_notifications_arrive() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("sgw-agent-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let env_value = format!("@{name}");
        let parsed = parse_notify_socket(OsStr::new(&env_value)).unwrap();
        let notifier = Notifier::connect(&parsed).unwrap();
        notifier.status("syncing");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=syncing");
    }

    #[test]
    fn watchdog_pings_at_half_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut notifier = Notifier::connect(&NotifyAddr::Path(path))
            .unwrap()
            .with_watchdog(Some(Duration::from_millis(400)));
        let pings = |l: &UnixDatagram| {
            let mut buf = [0u8; 64];
            let mut n = 0;
            while let Ok(len) = l.recv(&mut buf) {
                assert_eq!(&buf[..len], b"WATCHDOG=1");
                n += 1;
            }
            n
        };
        notifier.feed_watchdog();
        notifier.feed_watchdog();
        assert_eq!(
            pings(&listener),
            1,
            "the first feed pings, an immediate second does not"
        );
        std::thread::sleep(Duration::from_millis(250));
        notifier.feed_watchdog();
        assert_eq!(pings(&listener), 1, "past half the interval it pings again");
    }

    #[test]
    fn without_systemd_every_notification_is_a_no_op() {
        let mut n = Notifier::disabled().with_watchdog(Some(Duration::from_millis(1)));
        assert!(!n.is_enabled());
        n.ready("x");
        n.feed_watchdog();
    }

    #[test]
    fn reload_requests_coalesce() {
        let r = ReloadRequest::new();
        assert!(!r.take());
        r.request();
        r.clone().request();
        assert!(r.take());
        assert!(!r.take());
    }

    #[test]
    fn shutdown_interrupts_sleep() {
        let s = Shutdown::new();
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.sleep(Duration::from_secs(30)));
        s.trigger();
        assert!(t.join().unwrap());
    }
}
