//! The documented service path, the way systemd runs it, without systemd: the real
//! `systemd/sgw-agent.service` (its `ExecStart=` command line, `User=`/`Group=` and
//! `RestartPreventExitStatus=`), the real tmpfiles.d snippet (the credentials file's mode and
//! owner), and the real `sgw-agent` binary started with `setpriv` as an unprivileged uid/gid
//! standing in for the unit's user. A read-only share is a read-only bind mount in a private
//! mount namespace (`unshare -m`), which is what `ProtectSystem=strict` without
//! `ReadWritePaths=` gives the service.
//!
//! Needs root (setpriv to another user, chown, mount). Without it every test prints why it is
//! skipped. `SGW_TEST_AGENT_BIN` runs another build of the agent (to show a test fails on old
//! code).

mod common;

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{repo_root, wait_for};

const EXIT_CONFIG: i32 = 78;

fn unit_text() -> String {
    fs::read_to_string(repo_root().join("systemd/sgw-agent.service")).unwrap()
}

/// Every value of `key=` in the unit (last one wins for single-valued keys).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_owned())
        .collect()
}

fn unit_value(unit: &str, key: &str) -> String {
    unit_values(unit, key)
        .pop()
        .unwrap_or_else(|| panic!("the unit has no {key}="))
}

/// Why these tests cannot run here, if they cannot.
fn cannot_run() -> Option<String> {
    let uid = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|r| r.split_whitespace().nth(1).map(str::to_owned))
        })
        .unwrap_or_default();
    if uid != "0" {
        return Some(format!(
            "needs root (setpriv to another user, chown, bind mounts); running as uid {uid}"
        ));
    }
    let setpriv = Command::new("setpriv")
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    if !setpriv.is_ok_and(|s| s.success()) {
        return Some("no setpriv (util-linux)".into());
    }
    None
}

/// Says so on the real stderr: libtest captures `eprintln!`, so a skip would look like a pass.
fn skipped(why: &str) {
    use std::io::Write;
    let test = std::thread::current()
        .name()
        .unwrap_or("service_user")
        .to_owned();
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

macro_rules! skip_unless_root {
    () => {
        if let Some(why) = cannot_run() {
            skipped(&why);
            return;
        }
    };
}

/// A throwaway uid/gid (not in /etc/passwd) standing in for the unit's `User=`/`Group=`, a
/// configuration, a credentials file as the README and tmpfiles.d make it, a share and a
/// state directory owned by that user, and a copy of the agent any user may execute.
struct Rig {
    dir: tempfile::TempDir,
    uid: u32,
    gid: u32,
    bin: PathBuf,
    config: PathBuf,
    credentials: PathBuf,
    share: PathBuf,
    state: PathBuf,
}

impl Rig {
    fn new(seed: u32) -> Rig {
        let unit = unit_text();
        // What the rig stands in for: the unit's user and group, the sysusers user.
        assert_eq!(unit_value(&unit, "User"), "sgw-agent");
        assert_eq!(unit_value(&unit, "Group"), "sgw-agent");
        let id = 61000 + (std::process::id() % 1000) * 8 + seed;
        let (uid, gid) = (id, id);
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        // The binary may sit under a directory the test user cannot enter (/root/...).
        let bin = dir.path().join("sgw-agent");
        let source = std::env::var_os("SGW_TEST_AGENT_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(common::agent_bin);
        fs::copy(source, &bin).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();

        let share = dir.path().join("projects");
        fs::create_dir(&share).unwrap();
        chown(&share, Some(uid), Some(gid)).unwrap();
        // StateDirectory=sgw-agent, StateDirectoryMode=0750: the user's own.
        let state = dir.path().join("state");
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o750)).unwrap();
        chown(&state, Some(uid), Some(gid)).unwrap();

        let credentials = dir.path().join("credentials");
        fs::write(
            &credentials,
            "[default]\naws_access_key_id = AKIDTEST\naws_secret_access_key = s3cr3t\n",
        )
        .unwrap();
        let (mode, owner, group) = tmpfiles_credentials_entry();
        assert_eq!(
            (owner.as_str(), group.as_str()),
            ("root", "sgw-agent"),
            "tmpfiles.d keeps the credentials file root:<the unit's Group=>"
        );
        fs::set_permissions(&credentials, fs::Permissions::from_mode(mode)).unwrap();
        chown(&credentials, Some(0), Some(gid)).unwrap();

        let config = dir.path().join("agent.toml");
        let q = |p: &Path| toml::Value::String(p.to_string_lossy().into_owned()).to_string();
        fs::write(
            &config,
            format!(
                "state_dir = {}\ncredentials_file = {}\n\n[[share]]\nname = \"projects\"\n\
                 path = {}\nbucket = \"projects\"\nendpoint = \"http://127.0.0.1:9\"\n\
                 region = \"us-east-1\"\nallow_http = true\nfull_sync_interval_secs = 0\n",
                q(&state),
                q(&credentials),
                q(&share)
            ),
        )
        .unwrap();
        fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).unwrap();
        Rig {
            dir,
            uid,
            gid,
            bin,
            config,
            credentials,
            share,
            state,
        }
    }

    /// The unit's `ExecStart=` with our binary and configuration, `verb` in place of `run`.
    fn exec_start(&self, verb: &str) -> Vec<String> {
        let unit = unit_text();
        let exec = unit_value(&unit, "ExecStart");
        let mut args: Vec<String> = exec.split_whitespace().map(str::to_owned).collect();
        assert_eq!(args[0], "/usr/bin/sgw-agent", "{exec}");
        args[0] = self.bin.to_string_lossy().into_owned();
        let c = args
            .iter()
            .position(|a| a == "--config")
            .unwrap_or_else(|| panic!("ExecStart= names no --config: {exec}"));
        assert_eq!(args[c + 1], "/etc/sgw-agent/agent.toml");
        args[c + 1] = self.config.to_string_lossy().into_owned();
        assert_eq!(args.last().map(String::as_str), Some("run"), "{exec}");
        *args.last_mut().unwrap() = verb.to_owned();
        args
    }

    /// `setpriv` to the test user, with a clean environment (no AWS_* variables: the
    /// credentials come from the file, as in the unit). `wrap` goes in front (unshare …).
    fn command(&self, wrap: &[&str], verb: &str, env: &[(&str, &str)]) -> Command {
        let mut argv: Vec<String> = wrap.iter().map(|s| s.to_string()).collect();
        argv.extend([
            "setpriv".into(),
            format!("--reuid={}", self.uid),
            format!("--regid={}", self.gid),
            "--clear-groups".into(),
            "--".into(),
        ]);
        argv.extend(self.exec_start(verb));
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("SGW_LOG", "info")
            .envs(env.iter().copied())
            .current_dir("/");
        cmd
    }

    fn run(&self, wrap: &[&str], verb: &str, env: &[(&str, &str)]) -> Output {
        // The binary was copied a moment ago: a child forked by a parallel test in that
        // window holds its write descriptor until it execs, and exec then fails with
        // ETXTBSY ("Text file busy", exit 126 from setpriv). Not the agent's doing: retry.
        let mut out = self.command(wrap, verb, env).output().unwrap();
        for _ in 0..20 {
            if out.status.code() != Some(126)
                || !String::from_utf8_lossy(&out.stderr).contains("Text file busy")
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            out = self.command(wrap, verb, env).output().unwrap();
        }
        out
    }
}

/// `z /etc/sgw-agent/credentials MODE USER GROUP -` from systemd/sgw-agent.tmpfile.
fn tmpfiles_credentials_entry() -> (u32, String, String) {
    let text = fs::read_to_string(repo_root().join("systemd/sgw-agent.tmpfile")).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("/etc/sgw-agent/credentials") && !l.starts_with('#'))
        .expect("tmpfiles.d entry for /etc/sgw-agent/credentials");
    let f: Vec<&str> = line.split_whitespace().collect();
    (
        u32::from_str_radix(f[2], 8).unwrap(),
        f[3].to_owned(),
        f[4].to_owned(),
    )
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Can this machine give a process a private mount namespace with a read-only bind mount?
fn can_bind_ro(dir: &Path) -> bool {
    Command::new("unshare")
        .args(["-m", "sh", "-c", "mount --bind -o ro \"$1\" \"$1\"", "sh"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn the_unit_does_not_restart_on_a_configuration_error() {
    // No root needed: the unit text itself.
    let unit = unit_text();
    let prevent = unit_value(&unit, "RestartPreventExitStatus");
    assert!(
        prevent.split_whitespace().any(|c| c == "78"),
        "RestartPreventExitStatus={prevent} must hold 78"
    );
    assert!(
        !unit.contains("not built yet"),
        "stale text about sgw-control in the agent unit"
    );
}

#[test]
fn check_config_as_the_service_user_accepts_the_documented_credentials_file() {
    skip_unless_root!();
    let rig = Rig::new(0);
    let out = rig.run(&[], "check-config", &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("OK (1 share(s)")
            && stdout.contains(&format!("by user uid {}", rig.uid))
            && stdout.contains("key id AKIDTEST")
            && stdout.contains(&rig.credentials.to_string_lossy().into_owned()),
        "{all}"
    );
    assert!(
        !all.contains("s3cr3t"),
        "the secret must not be printed: {all}"
    );
    // The write check leaves nothing behind.
    assert_eq!(fs::read_dir(&rig.share).unwrap().count(), 0);
    assert_eq!(fs::read_dir(&rig.state).unwrap().count(), 0);
}

#[test]
fn run_as_the_service_user_starts_and_stops_cleanly() {
    skip_unless_root!();
    let rig = Rig::new(1);
    let mut child = rig
        .command(&[], "run", &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It got past every start-up check: the share's staging area and state exist, as its user.
    wait_for(Duration::from_secs(60), "the share opened by run", || {
        rig.share.join(".sgw/staging").is_dir() && rig.state.join("shares/projects").is_dir()
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "run exited early: {:?}",
        child.wait_with_output().map(|o| text(&o))
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(rig.share.join(".sgw")).unwrap().uid(), rig.uid);
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "run did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut log = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(!log.contains("s3cr3t"), "{log}");
}

#[test]
fn a_credentials_file_the_rule_refuses_names_the_fix() {
    skip_unless_root!();
    let rig = Rig::new(2);
    let fix = format!(
        "fix: chown root:gid {g} {p} && chmod 0640 {p}",
        g = rig.gid,
        p = rig.credentials.display()
    );
    // 0600 root:root: the service user cannot read it at all.
    chown(&rig.credentials, Some(0), Some(0)).unwrap();
    fs::set_permissions(&rig.credentials, fs::Permissions::from_mode(0o600)).unwrap();
    let out = rig.run(&[], "check-config", &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{all}");
    assert!(
        all.contains("cannot read it") && all.contains(&fix),
        "{all}"
    );
    // World-readable, even with the right owner and group.
    chown(&rig.credentials, Some(0), Some(rig.gid)).unwrap();
    fs::set_permissions(&rig.credentials, fs::Permissions::from_mode(0o644)).unwrap();
    let out = rig.run(&[], "check-config", &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{all}");
    assert!(
        all.contains("others can read") && all.contains(&fix),
        "{all}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).lines().count(),
        1,
        "one line: {all}"
    );
    // run refuses it the same way, before starting anything.
    let out = rig.run(&[], "run", &[]);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{}", text(&out));
    assert!(!rig.share.join(".sgw").exists());
}

#[test]
fn a_systemd_credential_replaces_the_file() {
    // LoadCredential=credentials:/etc/sgw-agent/credentials: systemd reads the file as root
    // and puts it into $CREDENTIALS_DIRECTORY, readable by the service only. The file may
    // then be 0600 root:root.
    skip_unless_root!();
    let rig = Rig::new(3);
    chown(&rig.credentials, Some(0), Some(0)).unwrap();
    fs::set_permissions(&rig.credentials, fs::Permissions::from_mode(0o600)).unwrap();
    let creds_dir = rig.dir.path().join("credentials.d");
    fs::create_dir(&creds_dir).unwrap();
    let loaded = creds_dir.join("credentials");
    fs::write(
        &loaded,
        "[default]\naws_access_key_id = AKIDLOADED\naws_secret_access_key = x\n",
    )
    .unwrap();
    fs::set_permissions(&loaded, fs::Permissions::from_mode(0o400)).unwrap();
    chown(&loaded, Some(rig.uid), Some(rig.gid)).unwrap();
    fs::set_permissions(&creds_dir, fs::Permissions::from_mode(0o500)).unwrap();
    chown(&creds_dir, Some(rig.uid), Some(rig.gid)).unwrap();
    let env = [("CREDENTIALS_DIRECTORY", creds_dir.to_str().unwrap())];
    let out = rig.run(&[], "check-config", &env);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains("key id AKIDLOADED") && all.contains("systemd credential"),
        "{all}"
    );
    // An empty credential (the SetCredential= fallback when the file is missing) falls back
    // to the file itself, which this user cannot read: refused as before.
    fs::set_permissions(&loaded, fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(&loaded, "").unwrap();
    let out = rig.run(&[], "check-config", &env);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{}", text(&out));
}

#[test]
fn a_read_only_share_is_a_configuration_error_naming_the_drop_in() {
    skip_unless_root!();
    let rig = Rig::new(4);
    if !can_bind_ro(&rig.share) {
        skipped(
            "the read-only bind mount case: unshare -m / mount --bind -o ro is not available \
             here; the unwritable-directory case below still runs",
        );
    } else {
        // ProtectSystem=strict without ReadWritePaths=: the share is a read-only mount, its
        // permission bits say "yours".
        let share = rig.share.to_string_lossy().into_owned();
        let wrap = [
            "unshare",
            "-m",
            "sh",
            "-c",
            "mount --bind -o ro \"$1\" \"$1\" && shift && exec \"$@\"",
            "sh",
            share.as_str(),
        ];
        let expected = format!(
            "share \"projects\": {share} is not writable by user uid {} (Read-only file system); \
             under systemd add it to ReadWritePaths= in a drop-in: systemctl edit sgw-agent → \
             [Service] ReadWritePaths={share}",
            rig.uid
        );
        for verb in ["check-config", "run", "sync"] {
            let out = rig.run(&wrap, verb, &[]);
            let all = text(&out);
            assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{verb}: {all}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains(&expected), "{verb}: {all}");
            assert_eq!(stderr.lines().count(), 1, "{verb}: one line: {all}");
        }
    }
    // A share the user does not own: same exit code, the chown that fixes it.
    chown(&rig.share, Some(0), Some(0)).unwrap();
    let out = rig.run(&[], "check-config", &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{all}");
    assert!(
        all.contains("(Permission denied)")
            && all.contains(&format!(
                "chown -R uid {u}:gid {u} {}",
                rig.share.display(),
                u = rig.uid
            )),
        "{all}"
    );
    // And a root-owned staging area left behind by `sudo sgw-agent sync`.
    chown(&rig.share, Some(rig.uid), Some(rig.gid)).unwrap();
    fs::create_dir_all(rig.share.join(".sgw/staging")).unwrap();
    let out = rig.run(&[], "check-config", &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{all}");
    assert!(all.contains("/.sgw is not writable"), "{all}");
}

#[test]
fn an_unwritable_state_directory_is_a_configuration_error() {
    skip_unless_root!();
    let rig = Rig::new(5);
    chown(&rig.state, Some(0), Some(0)).unwrap();
    let out = rig.run(&[], "check-config", &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{all}");
    assert!(
        all.contains("state_dir: ") && all.contains("is not writable by user uid"),
        "{all}"
    );
    // The share's own state left root's by `sudo sgw-agent sync`: named, with the fix.
    chown(&rig.state, Some(rig.uid), Some(rig.gid)).unwrap();
    fs::create_dir_all(rig.state.join("shares/projects")).unwrap();
    chown(rig.state.join("shares"), Some(rig.uid), Some(rig.gid)).unwrap();
    let out = rig.run(&[], "check-config", &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{all}");
    assert!(
        all.contains("share \"projects\": ") && all.contains("shares/projects is not writable"),
        "{all}"
    );
    // A share no longer configured keeps its old state; that is no reason to refuse.
    chown(
        rig.state.join("shares/projects"),
        Some(rig.uid),
        Some(rig.gid),
    )
    .unwrap();
    fs::create_dir(rig.state.join("shares/removed-long-ago")).unwrap();
    let out = rig.run(&[], "check-config", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
