//! The agent as systemd sees it: the real `sgw-agent run` binary with `NOTIFY_SOCKET`,
//! `WATCHDOG_USEC` and `JOURNAL_STREAM` set the way systemd sets them, a notification socket
//! of our own standing in for systemd, and a real S3 peer (moto) for the shares. What is
//! asserted is what systemd and an operator see: the notifications, the files in the shares
//! after a reload, the exit codes and the log lines.

mod common;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use common::{Peer, agent_command, wait_for};

/// Generous: under qemu-user (the aarch64 CI run) start-up is several times slower.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Our stand-in for systemd's notification socket: every datagram, in order.
struct NotifySocket {
    path: PathBuf,
    messages: Receiver<String>,
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                if tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
                {
                    break;
                }
            }
        });
        NotifySocket {
            path,
            messages: rx,
            seen: Vec::new(),
        }
    }

    /// The next message for which `want` holds; panics with everything seen after `timeout`.
    fn expect(&mut self, timeout: Duration, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.messages.recv_timeout(left) {
                Ok(m) => {
                    self.seen.push(m.clone());
                    if want(&m) {
                        return m;
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "no notification {what} within {timeout:?}; seen: {:?}",
                        self.seen
                    )
                }
            }
        }
    }

    /// Everything that arrives within `window`.
    fn drain(&mut self, window: Duration) -> Vec<String> {
        let deadline = Instant::now() + window;
        let mut got = Vec::new();
        while let Ok(m) = self
            .messages
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(m.clone());
            got.push(m);
        }
        got
    }
}

fn share_toml(name: &str, path: &Path, bucket: &str, endpoint: &str) -> String {
    let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
    format!(
        "\n[[share]]\nname = {}\npath = {}\nbucket = {}\nendpoint = {}\n\
         region = \"us-east-1\"\nallow_http = true\n",
        q(name),
        q(&path.to_string_lossy()),
        q(bucket),
        q(endpoint)
    )
}

fn config_toml(state: &Path, shares: &[String]) -> String {
    let q = toml::Value::String(state.to_string_lossy().into_owned()).to_string();
    format!("state_dir = {q}\n{}", shares.concat())
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

fn wait_exit(child: &mut Child, timeout: Duration) -> (ExitStatus, String) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(code) = child.try_wait().unwrap() {
            let mut log = String::new();
            if let Some(mut err) = child.stderr.take() {
                err.read_to_string(&mut log).unwrap();
            }
            return (code, log);
        }
        assert!(
            Instant::now() < deadline,
            "agent did not exit within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ready_watchdog_reload_and_stop_are_reported_and_reload_swaps_shares() {
    let peer = Peer::start();
    peer.make_bucket("one");
    peer.put("one", "a.txt", "from bucket one");
    peer.make_bucket("two");
    peer.put("two", "dir/b.txt", "from bucket two");

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (share_one, share_two) = (root.join("share-one"), root.join("share-two"));
    std::fs::create_dir_all(&share_one).unwrap();
    std::fs::create_dir_all(&share_two).unwrap();
    let state = root.join("state");
    let config = root.join("agent.toml");
    let one = share_toml("one", &share_one, "one", &peer.endpoint);
    let two = share_toml("two", &share_two, "two", &peer.endpoint);
    std::fs::write(&config, config_toml(&state, std::slice::from_ref(&one))).unwrap();

    let mut systemd = NotifySocket::bind(root);
    let mut agent = agent_command(&config)
        .arg("run")
        .env("NOTIFY_SOCKET", &systemd.path)
        .env("WATCHDOG_USEC", "1000000")
        .env_remove("WATCHDOG_PID")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let ready = systemd.expect(START_TIMEOUT, "READY=1", |m| m.contains("READY=1"));
    assert!(ready.contains("STATUS=1 share(s) running"), "{ready:?}");
    wait_for(START_TIMEOUT, "share one's full sync", || {
        std::fs::read(share_one.join("a.txt")).ok().as_deref() == Some(b"from bucket one")
    });
    // WatchdogSec=1s: a ping at least every half second.
    let window = systemd.drain(Duration::from_millis(2500));
    let pings = window.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(
        pings >= 3,
        "expected >= 3 watchdog pings in 2.5 s: {window:?}"
    );

    // Reload: share two added, share one removed, without a restart.
    std::fs::write(&config, config_toml(&state, std::slice::from_ref(&two))).unwrap();
    signal(&agent, "-HUP");
    systemd.expect(START_TIMEOUT, "RELOADING=1", |m| {
        m.starts_with("RELOADING=1")
    });
    let ready = systemd.expect(START_TIMEOUT, "READY=1 after the reload", |m| {
        m.starts_with("READY=1")
    });
    assert!(ready.contains("STATUS="), "{ready:?}");
    wait_for(START_TIMEOUT, "share two to sync after the reload", || {
        std::fs::read(share_two.join("dir/b.txt")).ok().as_deref() == Some(b"from bucket two")
    });
    assert!(
        agent.try_wait().unwrap().is_none(),
        "a reload is not a restart"
    );
    // A share removed from the configuration is left as it is on disk.
    assert!(share_one.join("a.txt").exists());

    // A broken configuration is refused; the agent keeps running what it had.
    std::fs::write(&config, "state_dir = [this is not toml").unwrap();
    signal(&agent, "-HUP");
    systemd.expect(START_TIMEOUT, "RELOADING=1 (bad config)", |m| {
        m.starts_with("RELOADING=1")
    });
    let ready = systemd.expect(START_TIMEOUT, "READY=1 after a refused reload", |m| {
        m.starts_with("READY=1")
    });
    assert!(ready.contains("1 share(s) running"), "{ready:?}");
    // Share one comes back: its missing file is restored by the new instance's full sync.
    std::fs::remove_file(share_one.join("a.txt")).unwrap();
    std::fs::write(&config, config_toml(&state, &[two.clone(), one.clone()])).unwrap();
    signal(&agent, "-HUP");
    systemd.expect(START_TIMEOUT, "RELOADING=1 (share one back)", |m| {
        m.starts_with("RELOADING=1")
    });
    systemd.expect(START_TIMEOUT, "READY=1 (share one back)", |m| {
        m.starts_with("READY=1")
    });
    wait_for(START_TIMEOUT, "share one to be restored", || {
        std::fs::read(share_one.join("a.txt")).ok().as_deref() == Some(b"from bucket one")
    });
    assert!(
        agent.try_wait().unwrap().is_none(),
        "a reload is not a restart"
    );

    signal(&agent, "-TERM");
    systemd.expect(START_TIMEOUT, "STOPPING=1", |m| m.starts_with("STOPPING=1"));
    let (code, log) = wait_exit(&mut agent, Duration::from_secs(60));
    assert!(code.success(), "SIGTERM must exit 0: {code}\n{log}");
    for expected in [
        "share one: stopping (",
        "share two: started",
        "reload refused, the previous configuration stays in force",
        "configuration reloaded: 1 share(s) to start, 0 to stop, 1 unchanged",
    ] {
        assert!(log.contains(expected), "log lacks {expected:?}:\n{log}");
    }
    // Not under journald: every line carries a timestamp, none a syslog priority.
    assert!(
        log.lines().all(|l| !l.starts_with('<')),
        "terminal log with priorities:\n{log}"
    );
}

/// A config whose share directory does not exist: `run` logs one error and exits 78.
fn broken_share_setup(root: &Path) -> PathBuf {
    let config = root.join("agent.toml");
    let share = share_toml(
        "gone",
        &root.join("no-such-dir"),
        "bucket",
        "http://127.0.0.1:9",
    );
    std::fs::write(&config, config_toml(&root.join("state"), &[share])).unwrap();
    config
}

/// Runs `sgw-agent run` with stderr into `log` and `JOURNAL_STREAM` set to `stream`.
fn run_with_stderr_file(config: &Path, log: &Path, stream: Option<String>) -> (i32, String) {
    let file = std::fs::File::create(log).unwrap();
    let mut cmd = agent_command(config);
    cmd.arg("run").stderr(file).stdout(Stdio::null());
    match stream {
        Some(s) => cmd.env("JOURNAL_STREAM", s),
        None => cmd.env_remove("JOURNAL_STREAM"),
    };
    let status = cmd.status().unwrap();
    (
        status.code().unwrap_or(-1),
        std::fs::read_to_string(log).unwrap(),
    )
}

#[test]
fn journald_format_only_when_stderr_is_the_journal_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let config = broken_share_setup(tmp.path());
    let log = tmp.path().join("stderr.log");
    std::fs::write(&log, "").unwrap();
    let meta = std::fs::metadata(&log).unwrap();

    // stderr is the stream JOURNAL_STREAM names: priority prefix, no timestamp.
    let matching = format!("{}:{}", meta.dev(), meta.ino());
    let (code, text) = run_with_stderr_file(&config, &log, Some(matching));
    assert_eq!(
        code, 78,
        "a share directory that does not exist is a config error"
    );
    let line = text.lines().next().unwrap_or_default();
    assert!(
        line.starts_with("<3>") && line.contains("no-such-dir"),
        "expected an err-priority journal line: {text:?}"
    );

    // Inherited variable, stderr elsewhere (`2>file`): the plain format.
    let other = format!("{}:{}", meta.dev(), meta.ino() + 1);
    let (code, text) = run_with_stderr_file(&config, &log, Some(other));
    assert_eq!(code, 78);
    let line = text.lines().next().unwrap_or_default();
    assert!(
        !line.starts_with('<') && line.contains(" ERROR ") && line.contains("no-such-dir"),
        "expected a timestamped terminal line: {text:?}"
    );

    // Garbage in the variable changes nothing either.
    let (code, text) = run_with_stderr_file(&config, &log, Some("not:a:stream".into()));
    assert_eq!(code, 78);
    assert!(!text.starts_with('<'), "{text:?}");
}

#[test]
fn a_bad_configuration_exits_78_without_reporting_ready() {
    let tmp = tempfile::tempdir().unwrap();
    let config = broken_share_setup(tmp.path());
    let mut systemd = NotifySocket::bind(tmp.path());
    let out = agent_command(&config)
        .arg("run")
        .env("NOTIFY_SOCKET", &systemd.path)
        .env("WATCHDOG_USEC", "1000000")
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap();
    // 78 is in the unit's RestartPreventExitStatus: systemd must not restart-loop on it.
    assert_eq!(out.status.code(), Some(78));
    let seen = systemd.drain(Duration::from_millis(300));
    assert!(
        !seen.iter().any(|m| m.contains("READY=1")),
        "READY sent for a configuration that cannot run: {seen:?}"
    );
}

#[test]
fn a_malformed_notify_socket_is_reported_and_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let config = broken_share_setup(tmp.path());
    let out = agent_command(&config)
        .arg("run")
        .env("NOTIFY_SOCKET", "relative/notify.sock")
        .env("WATCHDOG_USEC", "soon")
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    // It still gets as far as the real problem (the missing share directory).
    assert_eq!(out.status.code(), Some(78), "{log}");
    assert!(log.contains("NOTIFY_SOCKET"), "{log}");
    assert!(log.contains("WATCHDOG_USEC"), "{log}");
    assert!(log.contains("no-such-dir"), "{log}");
}
