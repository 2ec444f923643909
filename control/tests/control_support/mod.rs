//! Shared by the `control_*` tests: start the real `sgw-control` binary against a moto peer,
//! drive it with the official SDKs (tests/peer/sdk_call.py), sign agent and raw requests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::common::{self, Peer};

pub const AK: &str = "test-ak";
pub const SK: &str = "test-secret-0123456789";

pub fn control_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sgw-control"))
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A running `sgw-control` (killed on drop) with its own data directory.
pub struct Control {
    pub child: Child,
    /// `127.0.0.1:PORT`
    pub addr: String,
    pub data_dir: PathBuf,
    pub stderr_path: PathBuf,
    pub peer_endpoint: String,
    _tmp: Option<tempfile::TempDir>,
}

impl Control {
    pub fn start(peer: &Peer) -> Control {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        let mut c = Control::start_in(peer, &data, &[]);
        c._tmp = Some(tmp);
        c
    }

    /// Starts on `data_dir` with extra arguments (e.g. `-c file`).
    pub fn start_in(peer: &Peer, data_dir: &Path, extra: &[&str]) -> Control {
        let stderr_path = common::peer_log_dir().join(format!(
            "sgw-control-{}-{}.log",
            std::process::id(),
            peer.port
        ));
        let stderr = std::fs::File::create(&stderr_path).expect("log file");
        let mut child = Command::new(control_bin())
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args([
                "--cloud-endpoint",
                &peer.endpoint,
                "--cloud-region",
                "us-east-1",
            ])
            .args(extra)
            .envs(common::aws_env())
            .env("SGW_ACCESS_KEY_ID", AK)
            .env("SGW_ACCESS_KEY_SECRET", SK)
            .env("SGW_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start sgw-control");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read stdout");
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| {
                panic!(
                    "sgw-control did not start: {line:?}\n{}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                )
            })
            .to_string();
        Control {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            stderr_path,
            peer_endpoint: peer.endpoint.clone(),
            _tmp: None,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Runs a batch of SDK calls; each is `(sdk, action, params)` with the bootstrap key.
    pub fn sdk_batch(&self, calls: &[(&str, &str, Value)]) -> Vec<Value> {
        let calls: Vec<Value> = calls
            .iter()
            .map(|(sdk, action, params)| {
                json!({"sdk": sdk, "endpoint": self.addr, "ak": AK, "secret": SK, "action": action, "params": params})
            })
            .collect();
        self.sdk_raw_batch(&calls)
    }

    /// Full control over each call (`ak`, `secret`, `format` ...); `endpoint` is filled in.
    pub fn sdk_raw_batch(&self, calls: &[Value]) -> Vec<Value> {
        let calls: Vec<Value> = calls
            .iter()
            .map(|c| {
                let mut c = c.clone();
                c["endpoint"] = json!(self.addr);
                if c.get("ak").is_none() {
                    c["ak"] = json!(AK);
                }
                if c.get("secret").is_none() {
                    c["secret"] = json!(SK);
                }
                c
            })
            .collect();
        let mut child = Command::new(common::venv_python())
            .arg(common::repo_root().join("tests/peer/sdk_call.py"))
            .arg("--batch")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run sdk_call.py");
        let input = serde_json::to_vec(&calls).expect("json");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&input)
            .expect("write calls");
        let out = child.wait_with_output().expect("sdk_call.py output");
        assert!(
            out.status.success(),
            "sdk_call.py failed: {}\ncontrol log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        let results: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "sdk_call.py printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        assert_eq!(results.len(), calls.len());
        results
    }

    pub fn sdk(&self, sdk: &str, action: &str, params: Value) -> Value {
        self.sdk_batch(&[(sdk, action, params)]).remove(0)
    }

    /// Runs an admin subcommand on this data directory.
    pub fn admin(&self, args: &[&str]) -> std::process::Output {
        Command::new(control_bin())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .output()
            .expect("run sgw-control admin command")
    }

    /// `gateway add NAME` -> (id, secret).
    pub fn add_gateway(&self, name: &str) -> (String, String) {
        let out = self.admin(&["gateway", "add", name, "--region", "us-east-1"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let table: toml::Table = toml::from_str(&text).expect("gateway add prints TOML");
        (
            table["gateway_id"].as_str().expect("id").to_string(),
            table["gateway_secret"]
                .as_str()
                .expect("secret")
                .to_string(),
        )
    }

    /// One signed agent request -> (status, JSON body).
    pub fn agent(
        &self,
        gateway: &(String, String),
        method: &str,
        path: &str,
        body: &Value,
    ) -> (u16, Value) {
        let raw = self.agent_request(gateway, method, path, body);
        let (status, text) = self.raw(&raw);
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// The bytes of one signed agent request (a fresh nonce each call).
    pub fn agent_request(
        &self,
        gateway: &(String, String),
        method: &str,
        path: &str,
        body: &Value,
    ) -> Vec<u8> {
        let body = if method == "GET" {
            Vec::new()
        } else {
            serde_json::to_vec(body).expect("json")
        };
        let nonce = format!("{:x}", rand_u64());
        let headers = sgw_control::auth::sign_agent_request(
            method,
            path,
            &gateway.0,
            &gateway.1,
            now(),
            &nonce,
            &body,
        );
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut raw = head.into_bytes();
        raw.extend_from_slice(&body);
        raw
    }

    pub fn register(&self, gateway: &(String, String), shares: &[(&str, &str, &str)]) -> Value {
        let shares: Vec<Value> = shares
            .iter()
            .map(|(name, bucket, prefix)| {
                json!({"name": name, "bucket_region": "us-east-1", "bucket_name": bucket, "bucket_prefix": prefix})
            })
            .collect();
        let (status, body) = self.agent(
            gateway,
            "POST",
            "/agent/v1/register",
            &json!({"gateway_name": "edge", "gateway_region": "us-east-1", "shares": shares}),
        );
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Sends raw bytes; returns (status, body).
    pub fn raw(&self, request: &[u8]) -> (u16, String) {
        self.raw_from(None, request, Duration::from_secs(30))
            .unwrap_or((0, String::new()))
    }

    /// Sends raw bytes from source address `from` (any loopback address, e.g. 127.0.0.2, to be
    /// another peer) and reads one response, waiting at most `timeout` in all. Returns the
    /// error when no complete status line arrived in time.
    pub fn raw_from(
        &self,
        from: Option<std::net::IpAddr>,
        request: &[u8],
        timeout: Duration,
    ) -> std::io::Result<(u16, String)> {
        let mut s = connect_from(from, &self.addr)?;
        read_response(&mut s, request, timeout)
    }
    /// An RPC request signed the way aliyun-python-sdk-core does it (for replay tests).
    pub fn rpc_signed(
        &self,
        action: &str,
        params: &[(&str, &str)],
        timestamp: i64,
        nonce: &str,
        secret: &str,
    ) -> Vec<u8> {
        use sgw_control::params::{Params, percent_encode};
        let mut p = Params::new();
        for (k, v) in params {
            p.insert(k, v);
        }
        let ts = sgw_control::auth::format_iso8601(timestamp);
        for (k, v) in [
            ("Action", action),
            ("Version", "2018-05-11"),
            ("Format", "JSON"),
            ("AccessKeyId", AK),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureVersion", "1.0"),
            ("SignatureNonce", nonce),
            ("Timestamp", ts.as_str()),
        ] {
            p.insert(k, v);
        }
        let sts = sgw_control::auth::rpc_string_to_sign("POST", &p);
        let key = ring::hmac::Key::new(
            ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            format!("{secret}&").as_bytes(),
        );
        use base64::Engine as _;
        let sig = base64::engine::general_purpose::STANDARD
            .encode(ring::hmac::sign(&key, sts.as_bytes()).as_ref());
        p.insert("Signature", &sig);
        let query: Vec<String> = p
            .iter()
            .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
            .collect();
        format!(
            "POST /?{} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
            query.join("&"),
            self.addr
        )
        .into_bytes()
    }

    /// What is provisioned on the peer (tests/peer/sdk_cloud_state.py).
    pub fn cloud_state(&self, buckets: &[&str]) -> Value {
        let out = Command::new(common::venv_python())
            .arg(common::repo_root().join("tests/peer/sdk_cloud_state.py"))
            .args(["--endpoint", &self.peer_endpoint])
            .args(buckets)
            .envs(common::aws_env())
            .output()
            .expect("sdk_cloud_state.py");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    }

    pub fn set_foreign_rule(&self, bucket: &str, prefix: &str) {
        let out = Command::new(common::venv_python())
            .arg(common::repo_root().join("tests/peer/sdk_cloud_state.py"))
            .args([
                "--endpoint",
                &self.peer_endpoint,
                "--set-foreign-rule",
                bucket,
                prefix,
            ])
            .envs(common::aws_env())
            .output()
            .expect("sdk_cloud_state.py");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "sgw-control did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A connection to `addr` from source address `from` (port chosen by the kernel).
pub fn connect_from(from: Option<std::net::IpAddr>, addr: &str) -> std::io::Result<TcpStream> {
    let target: std::net::SocketAddr = addr.parse().expect("control address");
    let Some(from) = from else {
        return TcpStream::connect_timeout(&target, Duration::from_secs(5));
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(target),
        socket2::Type::STREAM,
        None,
    )?;
    socket.bind(&std::net::SocketAddr::new(from, 0).into())?;
    socket.connect_timeout(&target.into(), Duration::from_secs(5))?;
    Ok(socket.into())
}

/// Writes `request` and reads one HTTP/1.1 response (up to its `Content-Length`, or to EOF
/// without one) within `timeout`: (status, body). A keep-alive connection is not waited on.
pub fn read_response(
    s: &mut TcpStream,
    request: &[u8],
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let deadline = Instant::now() + timeout;
    // A server may answer (413, 431) and close before taking the whole request.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = find(&out, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|n| out.len() >= end + 4 + n) {
                break;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no complete response within {timeout:?}"),
            ));
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if out.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("no status line: {text:?}"),
            )
        })?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("rng");
    u64::from_le_bytes(b)
}

/// Asserts an SDK result is the documented error.
#[track_caller]
pub fn assert_error(result: &Value, status: u64, code: &str) {
    assert_eq!(result["ok"], json!(false), "expected {code}, got {result}");
    assert_eq!(result["code"], json!(code), "{result}");
    assert_eq!(result["status"], json!(status), "{result}");
}

#[track_caller]
pub fn assert_ok(result: &Value) -> &Value {
    assert_eq!(result["ok"], json!(true), "{result}");
    assert_eq!(result["body"]["Success"], json!(true), "{result}");
    assert_eq!(result["body"]["Code"], json!("200"), "{result}");
    assert!(
        result["body"]["RequestId"]
            .as_str()
            .is_some_and(|r| r.len() == 36),
        "{result}"
    );
    &result["body"]
}
