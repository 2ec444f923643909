//! Real-peer test harness shared by the integration tests (`mod common;`).
//!
//! Each test starts its own [`Peer`] (a `moto_server` on a free loopback port, killed on drop)
//! and drives it through `tests/peer/peerctl.py`, so tests can run in parallel threads.
//! The venv comes from `scripts/setup-peer.sh`; `SGW_TEST_VENV` points at another one.

// Each integration test is its own crate and uses only part of this module.
#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a fresh moto_server may take to answer (it is ready in ~0.5 s when idle).
const PEER_START_TIMEOUT: Duration = Duration::from_secs(15);

/// Credentials and region moto accepts; pass to the agent under test with `Command::envs`.
pub fn aws_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ]
}

/// The workspace root (this module is shared by the agent's tests and, via `#[path]`, by the
/// control crate's tests in `control/tests/`).
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if manifest.join("tests").join("peer").is_dir() {
        manifest
    } else {
        manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
    }
}

/// The peer venv: `SGW_TEST_VENV` if set, else `<repo>/.venv`.
pub fn venv_dir() -> PathBuf {
    match std::env::var_os("SGW_TEST_VENV") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => repo_root().join(".venv"),
    }
}

/// Python of the peer venv; panics with the fix when the venv is missing.
pub fn venv_python() -> PathBuf {
    let python = venv_dir().join("bin").join("python");
    if !python.exists() {
        panic!(
            "no test venv: run scripts/setup-peer.sh (looked for {})",
            python.display()
        );
    }
    python
}

pub fn peerctl_script() -> PathBuf {
    repo_root().join("tests").join("peer").join("peerctl.py")
}

/// The agent binary built by cargo for this test run: cargo names it for the agent's own
/// tests; the control crate's tests find it next to their own executable in the shared target
/// directory (`cargo test --workspace` builds it).
pub fn agent_bin() -> PathBuf {
    workspace_bin(option_env!("CARGO_BIN_EXE_sgw-agent"), "sgw-agent")
}

/// A binary of this workspace: `from_cargo` when cargo set it for this test crate, else
/// `<target>/<profile>/<name>` beside the running test (`<target>/<profile>/deps/<test>`).
pub fn workspace_bin(from_cargo: Option<&str>, name: &str) -> PathBuf {
    if let Some(path) = from_cargo {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(name))
        .expect("target directory");
    assert!(
        path.exists(),
        "{} is not built: run `cargo test --workspace` (or `cargo build -p {name}` first)",
        path.display()
    );
    path
}

/// `<target>/peer-logs`, created on first use (honours a custom target dir).
pub fn peer_log_dir() -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| repo_root().join("target"));
    let dir = target.join("peer-logs");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// Key of object `index` written by [`Peer::put_many`] (mirrors `many_key` in peerctl.py).
pub fn many_key(prefix: &str, index: usize) -> String {
    format!("{prefix}{index:06}.bin")
}

/// Body peerctl writes for `key` in `put-many`: SHA-256 of the key, repeated, cut to `size`.
pub fn content_for_key(key: &str, size: usize) -> Vec<u8> {
    let seed = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    seed.as_ref().iter().copied().cycle().take(size).collect()
}

/// Polls `done` every 50 ms until it returns true; panics naming `what` after `timeout`.
pub fn wait_for(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Agent config TOML for one share, following the CLI contract (`sgw-agent -c CONFIG ...`).
pub fn agent_config_toml(
    state_dir: &Path,
    share_path: &Path,
    bucket: &str,
    prefix: &str,
    endpoint: &str,
    queue_url: Option<&str>,
) -> String {
    let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let mut toml = format!(
        "state_dir = {}\n\n[[share]]\nname = \"test\"\npath = {}\nbucket = {}\nprefix = {}\n\
         endpoint = {}\nregion = \"us-east-1\"\nallow_http = true\n",
        q(&state_dir.to_string_lossy()),
        q(&share_path.to_string_lossy()),
        q(bucket),
        q(prefix),
        q(endpoint),
    );
    if let Some(url) = queue_url {
        toml.push_str(&format!("queue_url = {}\n", q(url)));
    }
    toml
}

/// A `Command` for the agent with `-c config` and the peer's credentials set.
pub fn agent_command(config: &Path) -> Command {
    let mut cmd = Command::new(agent_bin());
    cmd.arg("-c").arg(config).envs(aws_env());
    cmd
}

/// One private moto_server (S3 + SNS + SQS) on a free loopback port; killed on drop.
pub struct Peer {
    pub endpoint: String,
    pub port: u16,
    pub log_path: PathBuf,
    child: Child,
}

/// Distinguishes log files of peers started by one test process.
static PEER_SEQ: AtomicUsize = AtomicUsize::new(0);

fn free_loopback_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap_or_else(|e| panic!("cannot bind a loopback port: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("no local address: {e}"))
        .port()
}

/// True once `GET /moto-api/` answers with HTTP 200.
fn moto_answers(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

impl Peer {
    /// Starts moto_server and waits until it answers. Retries on a fresh port if the chosen
    /// one was taken between probing and binding (another test may race us for it).
    pub fn start() -> Peer {
        let mut last_error = String::new();
        for _attempt in 0..3 {
            match Self::try_start() {
                Ok(peer) => return peer,
                Err(e) => last_error = e,
            }
        }
        panic!("moto_server did not start: {last_error}");
    }

    fn try_start() -> Result<Peer, String> {
        let moto = venv_dir().join("bin").join("moto_server");
        if !moto.exists() {
            panic!(
                "no test venv: run scripts/setup-peer.sh (looked for {})",
                moto.display()
            );
        }
        let port = free_loopback_port();
        let seq = PEER_SEQ.fetch_add(1, Ordering::Relaxed);
        let log_path = peer_log_dir().join(format!("moto-{}-{seq}-{port}.log", std::process::id()));
        let log = File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("cannot clone log handle: {e}"))?;
        let child = Command::new(&moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", moto.display()))?;
        // From here on Drop kills the child, whatever happens.
        let mut peer = Peer {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            log_path,
            child,
        };
        let deadline = Instant::now() + PEER_START_TIMEOUT;
        loop {
            if moto_answers(port) {
                return Ok(peer);
            }
            if let Ok(Some(status)) = peer.child.try_wait() {
                return Err(format!(
                    "exited with {status} on port {port}; log {}:\n{}",
                    peer.log_path.display(),
                    log_tail(&peer.log_path)
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no answer on port {port} within {PEER_START_TIMEOUT:?}; log {}:\n{}",
                    peer.log_path.display(),
                    log_tail(&peer.log_path)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `peerctl.py --endpoint <this peer> ARGS...`; panics with its stderr on failure.
    pub fn ctl(&self, args: &[&str]) -> Value {
        let output = Command::new(venv_python())
            .arg(peerctl_script())
            .arg("--endpoint")
            .arg(&self.endpoint)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run peerctl.py: {e}"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            panic!(
                "peerctl {args:?} failed ({}):\n{stderr}\npeer log: {}",
                output.status,
                self.log_path.display()
            );
        }
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "peerctl {args:?} printed no JSON ({e}): {}\n{stderr}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    pub fn make_bucket(&self, name: &str) {
        self.ctl(&["make-bucket", name]);
    }

    /// Normal put with a CRC-64/NVME checksum (as real S3 stores for every new object).
    /// Returns peerctl's JSON: key, size, etag, crc64nvme.
    pub fn put(&self, bucket: &str, key: &str, body: impl AsRef<[u8]>) -> Value {
        let mut file = tempfile::NamedTempFile::new()
            .unwrap_or_else(|e| panic!("cannot create a temp file: {e}"));
        file.write_all(body.as_ref())
            .unwrap_or_else(|e| panic!("cannot write a temp file: {e}"));
        let path = file.path().to_string_lossy().into_owned();
        self.ctl(&["put", bucket, key, "--data-file", &path])
    }

    /// Puts `count` objects of `size` bytes named [`many_key`]`(prefix, i)` with bodies
    /// [`content_for_key`]; returns the count peerctl reports.
    pub fn put_many(&self, bucket: &str, prefix: &str, count: usize, size: usize) -> usize {
        let (count, size) = (count.to_string(), size.to_string());
        let out = self.ctl(&[
            "put-many", bucket, "--count", &count, "--size", &size, "--prefix", prefix,
        ]);
        out["count"]
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or_else(|| panic!("put-many printed no count: {out}"))
    }

    /// Stores `text` with a wrong `x-amz-checksum-crc64nvme` (verified stored by peerctl).
    /// Returns JSON with `stored_crc64nvme` and `true_crc64nvme`.
    pub fn put_corrupt(&self, bucket: &str, key: &str, text: &str) -> Value {
        self.ctl(&["put-corrupt", bucket, key, "--text", text])
    }

    /// Deletes each key with its own DeleteObject (one event each).
    pub fn delete_many(&self, bucket: &str, keys: &[String]) -> usize {
        let mut file = tempfile::NamedTempFile::new()
            .unwrap_or_else(|e| panic!("cannot create a temp file: {e}"));
        file.write_all(keys.join("\n").as_bytes())
            .unwrap_or_else(|e| panic!("cannot write a temp file: {e}"));
        let path = file.path().to_string_lossy().into_owned();
        let out = self.ctl(&["delete-many", bucket, "--keys-file", &path]);
        out["deleted"].as_u64().unwrap_or(0) as usize
    }

    pub fn delete(&self, bucket: &str, key: &str) {
        self.ctl(&["delete", bucket, key]);
    }

    /// SNS topic + SQS queue named `name`, raw delivery, bucket notification for
    /// ObjectCreated:* / ObjectRemoved:* under `prefix`. Returns `(topic_arn, queue_url)`.
    /// The s3:TestEvent stays in the queue.
    pub fn wire_events(&self, bucket: &str, prefix: &str, name: &str) -> (String, String) {
        self.wire_events_with_visibility(bucket, prefix, name, 30)
    }

    /// Like [`Peer::wire_events`] with the queue's VisibilityTimeout set (redelivery tests).
    pub fn wire_events_with_visibility(
        &self,
        bucket: &str,
        prefix: &str,
        name: &str,
        secs: u32,
    ) -> (String, String) {
        let secs = secs.to_string();
        let out = self.ctl(&[
            "wire-events",
            bucket,
            "--prefix",
            prefix,
            "--name",
            name,
            "--visibility",
            &secs,
        ]);
        match (out["topic_arn"].as_str(), out["queue_url"].as_str()) {
            (Some(topic), Some(queue)) => (topic.to_owned(), queue.to_owned()),
            _ => panic!("wire-events printed no topic_arn/queue_url: {out}"),
        }
    }

    /// Sends a raw message body to a queue.
    pub fn send(&self, queue_url: &str, body: &str) {
        self.ctl(&["send", queue_url, "--body", body]);
    }

    /// Visible + in-flight messages in the queue.
    pub fn queue_depth(&self, queue_url: &str) -> u64 {
        let out = self.ctl(&["queue-depth", queue_url]);
        out["depth"]
            .as_u64()
            .unwrap_or_else(|| panic!("queue-depth printed no depth: {out}"))
    }

    /// Receives up to 10 messages (bodies parsed as JSON when they are), leaving them in the
    /// queue unless `delete`; they become visible again after `visibility_secs`.
    pub fn receive(&self, queue_url: &str, visibility_secs: u32, delete: bool) -> Vec<Value> {
        let visibility = visibility_secs.to_string();
        let mut args = vec!["receive", queue_url, "--visibility", &visibility];
        if delete {
            args.push("--delete");
        }
        let out = self.ctl(&args);
        match out["messages"].as_array() {
            Some(messages) => messages.iter().map(|m| m["body"].clone()).collect(),
            None => panic!("receive printed no messages: {out}"),
        }
    }

    /// HEAD with checksum mode: JSON with size, etag, crc64nvme (null when none stored).
    pub fn head(&self, bucket: &str, key: &str) -> Value {
        self.ctl(&["head", bucket, key])
    }

    /// The object's body as the peer serves it.
    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
        let out = dir.path().join("body");
        self.ctl(&["get", bucket, key, "--out", &out.to_string_lossy()]);
        fs::read(&out).unwrap_or_else(|e| panic!("cannot read {}: {e}", out.display()))
    }

    /// Keys of the bucket under `prefix`, in listing order, with sizes.
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<(String, u64)> {
        let out = self.ctl(&["list", bucket, "--prefix", prefix]);
        let Some(objects) = out["objects"].as_array() else {
            panic!("list printed no objects: {out}");
        };
        objects
            .iter()
            .map(|o| match (o["key"].as_str(), o["size"].as_u64()) {
                (Some(key), Some(size)) => (key.to_owned(), size),
                _ => panic!("list printed a bad object: {o}"),
            })
            .collect()
    }

    /// Compares `dir` with `bucket`/`prefix` (see `compare-dir` in peerctl.py). JSON with
    /// `match` (bool), counts, and up to 20 `missing`/`different`/`extra` entries. The share's
    /// top-level `.sgw` is ignored.
    pub fn compare_dir(&self, bucket: &str, prefix: &str, dir: &Path) -> Value {
        let dir = dir.to_string_lossy();
        self.ctl(&["compare-dir", bucket, &dir, "--prefix", prefix])
    }

    /// Wipes all buckets, topics and queues (`POST /moto-api/reset`).
    pub fn reset(&self) {
        self.ctl(&["reset"]);
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
