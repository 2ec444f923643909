//! The agent over a WAN-like link: TLS to a private CA (`ca_file`), a round trip of tens of
//! milliseconds, and connections reset mid-body. A full sync must converge byte for byte,
//! and without the CA it must refuse the server and publish nothing.
//!
//! The link is `tests/peer/delay_proxy.py` in front of moto (the same proxy the `wan`
//! benchmark uses).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{Peer, agent_command, agent_config_toml, content_for_key, many_key, venv_python};

/// A running delay proxy (killed on drop) and its `https://127.0.0.1:PORT` endpoint.
struct Proxy {
    child: Child,
    endpoint: String,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_proxy(peer: &Peer, tls_dir: &Path, args: &[&str]) -> Proxy {
    let mut child = Command::new(venv_python())
        .arg(common::repo_root().join("tests/peer/delay_proxy.py"))
        .args(["--listen", "127.0.0.1:0", "--upstream"])
        .arg(format!("127.0.0.1:{}", peer.port))
        .arg("--tls-dir")
        .arg(tls_dir)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start delay_proxy.py");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("proxy output");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("proxy did not start: {line:?}"))
        .to_string();
    Proxy {
        child,
        endpoint: format!("https://{addr}"),
    }
}

fn config(dir: &Path, share: &Path, endpoint: &str, extra: &str) -> std::path::PathBuf {
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mut text = agent_config_toml(&state, share, "wan", "", endpoint, None);
    text = text.replace("allow_http = true\n", "");
    text.push_str(extra);
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_full_sync_over_tls_with_delay_and_resets_converges() {
    let peer = Peer::start();
    peer.make_bucket("wan");
    // Bodies larger than the proxy's reset point, so a reset cuts one mid-body.
    let count = 120;
    let size = 24 * 1024;
    peer.put_many("wan", "", count, size);
    let tmp = tempfile::tempdir().unwrap();
    let tls = tmp.path().join("tls");
    // The untrusted attempt gets a proxy of its own, so the resets all land in the real sync.
    let plain = start_proxy(&peer, &tls, &["--rtt-ms", "20"]);
    let share = tmp.path().join("share");
    std::fs::create_dir_all(&share).unwrap();

    // Without the CA, the private certificate is refused and nothing is published.
    let untrusted = config(&tmp.path().join("a"), &share, &plain.endpoint, "");
    let out = agent_command(&untrusted).args(["sync"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "an untrusted server was accepted: {stderr}"
    );
    assert!(
        stderr.to_ascii_lowercase().contains("certificate")
            || stderr.to_ascii_lowercase().contains("unknownissuer"),
        "the error does not say why: {stderr}"
    );
    let published: Vec<_> = std::fs::read_dir(&share)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name() != ".sgw")
        .collect();
    assert!(
        published.is_empty(),
        "published without trust: {published:?}"
    );

    // With `ca_file`, every object arrives intact through delay and resets.
    let proxy = start_proxy(
        &peer,
        &tls,
        // At most four resets: a download is resumed five times, so even four on one key
        // must not fail it (and the test is deterministic).
        &[
            "--rtt-ms",
            "20",
            "--reset-every",
            "3",
            "--max-resets",
            "4",
            "--reset-after-bytes",
            "8192",
        ],
    );
    let ca = tls.join("ca.pem");
    let trusted = config(
        &tmp.path().join("b"),
        &share,
        &proxy.endpoint,
        &format!("ca_file = {:?}\n", ca.to_string_lossy()),
    );
    let out = agent_command(&trusted).args(["sync"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sync failed: {stderr}");
    for i in 0..count {
        let key = many_key("", i);
        let got = std::fs::read(share.join(&key)).unwrap_or_default();
        assert!(
            got == content_for_key(&key, size),
            "{key} is missing or differs ({} bytes)",
            got.len()
        );
    }
    assert!(
        stderr.matches("body interrupted").count() >= 1,
        "no reset was injected, so the test proved nothing: {stderr}"
    );

    // A ca_file that is not a certificate is a configuration error naming the key.
    let junk = tmp.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let bad = config(
        &tmp.path().join("c"),
        &share,
        &proxy.endpoint,
        &format!("ca_file = {:?}\n", junk.to_string_lossy()),
    );
    let out = agent_command(&bad).args(["check-config"]).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ca_file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
