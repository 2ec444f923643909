//! What an operator runs on the box (issue 15, "what operators expect"): `status` telling a
//! running agent from a stopped one and exiting non-zero for a share in trouble, the alert
//! line at `err` priority, the per-file log lines and `-q`/`-v`. The real binary against a real
//! moto peer; nothing of the agent's I/O is mocked.

mod common;

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Peer, agent_command, agent_config_toml, wait_for};
use serde_json::Value;

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    share: PathBuf,
    config: PathBuf,
}

fn setup_with(peer: &Peer, bucket: &str, queue_url: Option<&str>, extra_top: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let share = root.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let config = root.join("agent.toml");
    let text = agent_config_toml(
        &root.join("state"),
        &share,
        bucket,
        "",
        &peer.endpoint,
        queue_url,
    );
    std::fs::write(&config, format!("{extra_top}{text}")).unwrap();
    Setup {
        _tmp: tmp,
        root,
        share,
        config,
    }
}

fn run_agent(s: &Setup, args: &[&str]) -> Output {
    agent_command(&s.config).args(args).output().unwrap()
}

fn status_json(s: &Setup) -> (Option<i32>, Value) {
    let out = run_agent(s, &["status", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}: {out:?}"));
    (out.status.code(), v[0].clone())
}

fn spawn_run(s: &Setup, stderr: Stdio, envs: &[(&str, String)]) -> Child {
    let mut cmd = agent_command(&s.config);
    cmd.arg("run").stdout(Stdio::null()).stderr(stderr);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(code) = child.try_wait().unwrap() {
            return code;
        }
        assert!(Instant::now() < deadline, "no exit within 40 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn is_rfc3339_utc(v: &Value) -> bool {
    let Some(t) = v.as_str() else { return false };
    let b = t.as_bytes();
    b.len() == 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z'
}

#[test]
fn status_tells_a_running_agent_from_a_stopped_one_and_a_second_agent_is_refused() {
    let peer = Peer::start();
    peer.make_bucket("ops");
    peer.put("ops", "a.txt", "alpha");
    let s = setup_with(&peer, "ops", None, "");

    // Never ran: stopped, nothing in trouble, exit 0.
    let out = run_agent(&s, &["status"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("agent: stopped"), "{text}");

    let mut agent = spawn_run(&s, Stdio::null(), &[]);
    wait_for(Duration::from_secs(30), "the first full sync", || {
        status_json(&s).1["state"] == "healthy"
    });
    let (code, st) = status_json(&s);
    assert_eq!(code, Some(0), "{st}");
    assert_eq!(st["agent"], "running", "{st}");
    assert_eq!(
        st["agent_pid"].as_u64(),
        Some(u64::from(agent.id())),
        "{st}"
    );
    for key in ["updated", "last_full_sync"] {
        assert!(is_rfc3339_utc(&st[key]), "{key} is not RFC 3339: {st}");
    }
    let text = String::from_utf8_lossy(&run_agent(&s, &["status"]).stdout).into_owned();
    assert!(
        text.starts_with(&format!(
            "agent: running (pid {}, sgw-agent run)",
            agent.id()
        )),
        "{text}"
    );

    // A second agent on the same state directory: refused, naming the first (and a sync too).
    for verb in ["run", "sync"] {
        let second = run_agent(&s, &[verb]);
        assert_eq!(second.status.code(), Some(75), "{verb}: {second:?}");
        let log = String::from_utf8_lossy(&second.stderr);
        assert!(
            log.contains(&format!("another sgw-agent (pid {}, run)", agent.id())),
            "{verb}: {log}"
        );
    }

    assert!(terminate(&mut agent).success());
    let (code, st) = status_json(&s);
    assert_eq!(code, Some(0), "{st}");
    assert_eq!(st["agent"], "stopped", "{st}");
    assert_eq!(st["state"], "stopped", "a clean stop shows `stopped`: {st}");
    assert!(st["agent_pid"].is_null(), "{st}");
    // The lock went with the process: a sync may run now.
    assert_eq!(run_agent(&s, &["sync", "-q"]).status.code(), Some(0));
}

/// stderr as a file that the agent takes for its journal stream (systemd.exec(5): the device
/// and inode of stderr match `JOURNAL_STREAM`), so lines carry syslog priorities.
fn journal_file(dir: &Path) -> (File, PathBuf, String) {
    let path = dir.join("journal.log");
    let file = File::create(&path).unwrap();
    let meta = file.metadata().unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    (file, path, stream)
}

#[test]
fn a_share_in_error_past_alert_after_is_logged_at_err_once_and_status_exits_1() {
    let peer = Peer::start();
    // No such bucket: every full sync fails, the share is in error and retries.
    let s = setup_with(&peer, "never-made", None, "alert_after_secs = 1\n");
    let (file, log_path, stream) = journal_file(&s.root);
    let mut agent = spawn_run(&s, Stdio::from(file), &[("JOURNAL_STREAM", stream)]);
    wait_for(Duration::from_secs(30), "the share to be in error", || {
        status_json(&s).1["state"] == "error"
    });
    let (code, st) = status_json(&s);
    assert_eq!(code, Some(1), "a share in error: status exits 1: {st}");
    assert!(is_rfc3339_utc(&st["error_since"]), "{st}");
    let text = run_agent(&s, &["status"]);
    assert_eq!(text.status.code(), Some(1));
    // Long enough for several retries (1 s, 2 s, 4 s backoff) and alert checks.
    std::thread::sleep(Duration::from_secs(6));
    assert!(terminate(&mut agent).success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    let alerts: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("<3>share test: in error"))
        .collect();
    assert_eq!(
        alerts.len(),
        1,
        "one err-priority alert (then hourly), whatever the retries:\n{log}"
    );
    assert!(alerts[0].contains(" since "), "{}", alerts[0]);
    assert!(
        log.lines().any(|l| l.starts_with("<6>")),
        "info lines carry priority 6:\n{log}"
    );
    // Still not healthy after the stop: status keeps saying so.
    let (code, st) = status_json(&s);
    assert_eq!(code, Some(1), "{st}");
}

#[test]
fn every_published_and_deleted_file_is_logged_at_info_and_q_and_v_set_the_level() {
    let peer = Peer::start();
    peer.make_bucket("logs");
    peer.put("logs", "docs/a.txt", "alpha");
    peer.put("logs", "b.bin", vec![7u8; 1234]);
    let s = setup_with(&peer, "logs", None, "");
    let out = run_agent(&s, &["sync", "-q"]);
    assert!(out.status.success(), "{out:?}");
    let quiet = String::from_utf8_lossy(&out.stderr);
    assert!(
        !quiet.contains(" INFO "),
        "-q: warnings and errors only:\n{quiet}"
    );

    // Fresh state: everything is published again, one line each.
    std::fs::remove_dir_all(s.root.join("state")).unwrap();
    std::fs::remove_dir_all(&s.share).unwrap();
    std::fs::create_dir(&s.share).unwrap();
    let out = run_agent(&s, &["sync"]);
    assert!(out.status.success(), "{out:?}");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("INFO  share test: published \"docs/a.txt\" (5 bytes)"),
        "{log}"
    );
    assert!(
        log.contains("INFO  share test: published \"b.bin\" (1234 bytes)"),
        "{log}"
    );
    assert!(!log.contains("DEBUG"), "{log}");

    peer.delete("logs", "b.bin");
    let out = run_agent(&s, &["sync", "-v"]);
    assert!(out.status.success(), "{out:?}");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("INFO  share test: deleted \"b.bin\" (1234 bytes)"),
        "{log}"
    );
    assert!(log.contains("DEBUG"), "-v logs at debug:\n{log}");
    let both = run_agent(&s, &["sync", "-q", "-v"]);
    assert_eq!(both.status.code(), Some(64));
}

#[test]
fn a_batch_of_many_events_gets_a_summary_line() {
    let peer = Peer::start();
    peer.make_bucket("batch");
    let (_topic, queue) = peer.wire_events("batch", "", "batch-share");
    // Queued before the agent starts: the first receive takes them as one batch.
    for i in 0..8 {
        peer.put("batch", &format!("f{i}.txt"), format!("file {i}"));
    }
    let s = setup_with(&peer, "batch", Some(&queue), "");
    let log_path = s.root.join("agent.log");
    let mut agent = spawn_run(&s, Stdio::from(File::create(&log_path).unwrap()), &[]);
    wait_for(Duration::from_secs(30), "the queue to drain", || {
        peer.queue_depth(&queue) == 0
    });
    wait_for(Duration::from_secs(10), "the summary line", || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains("share test: batch of ")
    });
    assert!(terminate(&mut agent).success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("share test: batch of "))
        .unwrap();
    assert!(line.contains(" message(s) in "), "{line}");
    assert!(line.contains("failed"), "{line}");
    assert!(s.share.join("f7.txt").exists());
}

/// Every file under `dir` with its bytes and modification time (the agent's own included).
fn tree(dir: &Path) -> std::collections::BTreeMap<String, (Vec<u8>, i64)> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            if meta.is_dir() {
                out.insert(format!("{rel}/"), (Vec::new(), meta.mtime()));
                stack.push(p);
            } else {
                out.insert(rel, (std::fs::read(&p).unwrap(), meta.mtime()));
            }
        }
    }
    out
}

#[test]
fn dry_run_reports_each_decision_of_the_sync_and_changes_nothing() {
    let peer = Peer::start();
    peer.make_bucket("plan");
    peer.put("plan", "kept.txt", "unchanged");
    peer.put("plan", "gone.txt", "deleted from the bucket");
    let s = setup_with(&peer, "plan", None, "");
    assert!(run_agent(&s, &["sync", "-q"]).status.success());

    peer.delete("plan", "gone.txt");
    peer.put("plan", "new.txt", "new in the bucket");
    peer.put("plan", "mine.txt", "the bucket's version");
    peer.put("plan", "same.txt", "copied in by hand");
    // Someone's own file where the bucket has a key: kept as a conflict copy.
    std::fs::write(s.share.join("mine.txt"), "a local edit").unwrap();
    // The object's bytes and time, copied by hand: adopted, not downloaded.
    std::fs::write(s.share.join("same.txt"), "copied in by hand").unwrap();
    let lm = peer.head("plan", "same.txt")["last_modified"]
        .as_i64()
        .unwrap();
    File::options()
        .write(true)
        .open(s.share.join("same.txt"))
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(lm as u64))
        .unwrap();

    let before = tree(&s.root);
    let out = run_agent(&s, &["sync", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let plan = String::from_utf8_lossy(&out.stdout);
    for line in [
        "share test: would download \"new.txt\" (17 bytes)",
        "share test: would delete \"gone.txt\" (23 bytes)",
        "share test: would adopt \"same.txt\" (17 bytes)",
        "share test: would keep the local file mine.txt as a conflict copy",
        "share test: would download \"mine.txt\" (20 bytes)",
        "share test: dry run: 2 to download (37 B), 1 to delete, 1 to adopt, 1 conflict copy, 1 unchanged, 0 skipped; nothing was changed",
    ] {
        assert!(plan.contains(line), "missing {line:?} in:\n{plan}");
    }
    assert!(
        !plan.contains("kept.txt"),
        "unchanged files are only counted:\n{plan}"
    );
    assert_eq!(tree(&s.root), before, "a dry run touches nothing");

    // The real sync does what the dry run said.
    let out = run_agent(&s, &["sync"]);
    assert!(out.status.success(), "{out:?}");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("adopted \"same.txt\""), "{log}");
    assert!(!s.share.join("gone.txt").exists());
    assert_eq!(
        std::fs::read(s.share.join("new.txt")).unwrap(),
        b"new in the bucket"
    );
    assert_eq!(
        std::fs::read(s.share.join("mine.txt")).unwrap(),
        b"the bucket's version"
    );
    let copies: Vec<_> = std::fs::read_dir(&s.share)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("mine.txt") && n != "mine.txt")
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    // Nothing left to do: the dry run says so.
    let plan = run_agent(&s, &["sync", "--dry-run"]);
    assert!(
        String::from_utf8_lossy(&plan.stdout).contains(
            "dry run: 0 to download (0 B), 0 to delete, 0 to adopt, 0 conflict copies, 4 unchanged"
        ),
        "{plan:?}"
    );
}

#[test]
fn dry_run_says_when_the_guard_would_refuse_a_mass_delete() {
    let peer = Peer::start();
    peer.make_bucket("wipe");
    let n = peer.put_many("wipe", "", 120, 16);
    let s = setup_with(&peer, "wipe", None, "");
    assert!(run_agent(&s, &["sync", "-q"]).status.success());
    let keys: Vec<String> = (0..n).map(|i| common::many_key("", i)).collect();
    peer.delete_many("wipe", &keys);
    let out = run_agent(&s, &["sync", "--dry-run"]);
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains("would refuse to delete 120 of 120 files (mass-delete guard"),
        "{plan}"
    );
    assert!(!plan.contains("would delete \""), "{plan}");
    let out = run_agent(&s, &["sync", "--dry-run", "--allow-mass-delete", "test"]);
    let plan = String::from_utf8_lossy(&out.stdout);
    assert_eq!(plan.matches("would delete \"").count(), 120, "{plan}");
    assert_eq!(
        std::fs::read_dir(&s.share).unwrap().count(),
        121,
        "120 files + .sgw"
    );
}

#[test]
fn sync_progress_shows_rate_and_time_left_and_never_starts_at_0_of_0() {
    let peer = Peer::start();
    peer.make_bucket("progress");
    peer.put_many("progress", "", 600, 64 * 1024);
    let s = setup_with(&peer, "progress", None, "");
    let out = run_agent(&s, &["sync"]);
    assert!(out.status.success(), "{out:?}");
    let log = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with("test: ")).collect();
    assert!(lines.len() >= 2, "{log}");
    assert!(!lines[0].contains("0/0 objects"), "{}", lines[0]);
    let last = lines.last().unwrap();
    assert!(
        last.starts_with("test: 100%  600 objects  37.5 MiB  done in ") && last.ends_with("/s"),
        "{last}"
    );
    let middle = &lines[..lines.len() - 1];
    for l in middle {
        // Before anything is settled there is no rate to tell the time left from.
        assert!(
            l.contains("listing the bucket")
                || l.starts_with("test:   0%  0/600 objects")
                || (l.contains("/600 objects") && l.contains("/s  ETA ")),
            "{l}"
        );
    }
    assert!(
        middle.iter().any(|l| l.contains(" ETA ")),
        "a sync of several seconds shows its ETA:\n{log}"
    );
    let quiet = run_agent(&s, &["sync", "-q"]);
    assert!(
        !String::from_utf8_lossy(&quiet.stderr).contains("test: "),
        "{quiet:?}"
    );
}

#[test]
fn check_config_online_gives_one_ok_or_fail_line_per_check_and_consumes_nothing() {
    let peer = Peer::start();
    peer.make_bucket("online");
    peer.put("online", "a.txt", "alpha");
    let (_topic, queue) = peer.wire_events("online", "", "online-share");
    // Wiring sends s3:TestEvent; one more message of our own, to see nothing is consumed.
    peer.send(&queue, "{\"not\":\"an event\"}");
    let depth = peer.queue_depth(&queue);
    assert!(depth >= 1);
    let s = setup_with(&peer, "online", Some(&queue), "");

    let offline = run_agent(&s, &["check-config"]);
    assert_eq!(offline.status.code(), Some(0), "{offline:?}");
    assert!(
        String::from_utf8_lossy(&offline.stdout)
            .contains("offline: no bucket, queue or control endpoint was asked"),
        "{offline:?}"
    );

    let out = run_agent(&s, &["check-config", "--online"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    for start in [
        "OK    credentials: key id testing from ",
        "OK    state_dir: ",
        "OK    share \"test\": path: ",
        "OK    share \"test\": bucket online: listable with these credentials (prefix \"\", a 1-key list returned 1)",
        "OK    share \"test\": queue: ",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(start)),
            "no line starting {start:?}:\n{text}"
        );
    }
    assert!(text.contains("nothing consumed"), "{text}");
    assert_eq!(peer.queue_depth(&queue), depth, "no message consumed");

    // A wrong bucket and a queue that does not exist: a FAIL line each, exit 78.
    let bad_queue = format!("{}/123456789012/no-such-queue", peer.endpoint);
    let bad = setup_with(&peer, "no-such-bucket", Some(&bad_queue), "");
    let out = run_agent(&bad, &["check-config", "--online"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(78), "{text}");
    let fail_bucket = text
        .lines()
        .find(|l| l.starts_with("FAIL  share \"test\": bucket no-such-bucket: "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(fail_bucket.contains("NoSuchBucket"), "{fail_bucket}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL  share \"test\": queue: ") && l.contains("no-such-queue")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("OK    state_dir")),
        "{text}"
    );
    assert!(text.ends_with("check(s), 2 failed\n"), "{text}");
}

#[test]
fn check_config_online_fails_for_an_unreachable_control_endpoint() {
    // Nobody listens on this port (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tmp = tempfile::tempdir().unwrap();
    let share = tmp.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let config = tmp.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\ncontrol_endpoint = \"http://127.0.0.1:{port}\"\ncontrol_allow_http = true\n\
             gateway_id = \"gw-test\"\ngateway_secret = \"s3cr3t\"\n[[share]]\nname = \"test\"\npath = \"{}\"\n",
            tmp.path().join("state").display(),
            share.display()
        ),
    )
    .unwrap();
    let out = agent_command(&config)
        .args(["check-config", "--online"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(78), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with(&format!(
            "FAIL  control endpoint http://127.0.0.1:{port}: not reachable"
        ))),
        "{text}"
    );
    assert!(!text.contains("s3cr3t"), "no secret in the output");
}

#[test]
fn status_says_unknown_to_a_user_who_cannot_read_the_state_directory() {
    use std::os::unix::fs::PermissionsExt;
    if !is_root() {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"SKIPPED status_says_unknown_to_a_user_who_cannot_read_the_state_directory: needs root (setpriv)\n",
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(state.join("agent.lock"), "1 run\n").unwrap();
    let share = tmp.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let config = tmp.path().join("agent.toml");
    std::fs::write(
        &config,
        agent_config_toml(&state, &share, "b-1", "", "http://127.0.0.1:9", None),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(common::agent_bin())
        .arg("-c")
        .arg(&config)
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("agent: unknown (this user cannot read "),
        "{out:?}"
    );
    let json = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(common::agent_bin())
        .arg("-c")
        .arg(&config)
        .args(["status", "--json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v[0]["agent"], "unknown", "{v}");
}

/// This process runs as root (the owner of /proc/self).
fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}
