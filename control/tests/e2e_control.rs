//! End-to-end with the control endpoint: an operator drives `sgw-control` with the official
//! SDK, a running `sgw-agent` that knows only the control endpoint, its gateway id/secret and
//! its share directories picks up the assignment, mirrors the bucket, follows its events and
//! reports progress; deleting the group removes the messaging from the peer.

#[path = "../../tests/common/mod.rs"]
mod common;
mod control_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::{Peer, agent_command, wait_for};
use control_support::{Control, assert_ok};
use serde_json::{Value, json};

/// A moto peer with bucket `photos`, a `sgw-control` polling every second, one gateway, and an
/// agent configuration for its share `share1`.
struct Rig {
    peer: Peer,
    control: Control,
    gateway_id: String,
    share: PathBuf,
    config: PathBuf,
    tmp: tempfile::TempDir,
}

fn rig(share_keys: &str) -> Rig {
    let peer = Peer::start();
    peer.make_bucket("photos");
    let tmp = tempfile::tempdir().unwrap();
    let control_cfg = tmp.path().join("control.toml");
    std::fs::write(&control_cfg, "poll_interval_secs = 1\n").unwrap();
    let control = Control::start_in(
        &peer,
        &tmp.path().join("control-data"),
        &["-c", control_cfg.to_str().unwrap()],
    );
    let (gateway_id, secret) = control.add_gateway("edge-01");
    let share = tmp.path().join("share1");
    std::fs::create_dir_all(&share).unwrap();
    let secret_file = tmp.path().join("gateway.secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = tmp.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\ncontrol_endpoint = \"http://{}\"\ncontrol_allow_http = true\ngateway_id = {gateway_id:?}\n\
             gateway_secret_file = {secret_file:?}\n\n[[share]]\nname = \"share1\"\npath = {share:?}\n{share_keys}",
            tmp.path().join("state"),
            control.addr,
        ),
    )
    .unwrap();
    Rig {
        peer,
        control,
        gateway_id,
        share,
        config,
        tmp,
    }
}

impl Rig {
    fn spawn_agent(&self) -> Child {
        agent_command(&self.config)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn create_group(&self, params: Value) -> String {
        let created = self.control.sdk("tea", "CreateExpressSync", params);
        assert_ok(&created)["ExpressSyncId"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn shares(&self, sync_id: &str, external: bool) -> Vec<Value> {
        let r = self.control.sdk(
            "tea",
            "DescribeExpressSyncShares",
            json!({"ExpressSyncIds": sync_id, "IsExternal": external}),
        );
        assert_ok(&r)["Shares"]["Share"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits for the agent to register `share1`, then adds it to the group (classic RPC SDK).
    fn add_share_once_registered(&self, sync_id: &str) {
        wait_for(
            Duration::from_secs(20),
            "the agent to register its share",
            || {
                self.shares(sync_id, true)
                    .iter()
                    .any(|s| s["ShareName"] == "share1")
            },
        );
        let gw_shares = json!({ self.gateway_id.clone(): "share1" }).to_string();
        assert_ok(&self.control.sdk(
            "rpc",
            "AddSharesToExpressSync",
            json!({"ExpressSyncId": sync_id, "GatewayShares": gw_shares}),
        ));
    }
}

fn read(p: &Path) -> Option<Vec<u8>> {
    std::fs::read(p).ok()
}

fn stop(mut child: Child) -> i32 {
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap().code().unwrap_or(-1)
}

#[test]
fn an_sdk_created_group_drives_a_running_agent_to_mns_healthy() {
    // The agent knows only the control endpoint, its gateway and the share directory.
    let r = rig("");
    r.peer.put_many("photos", "data/", 200, 2048);
    r.peer
        .put("photos", "elsewhere/not-mine.txt", "outside the prefix");
    let check = agent_command(&r.config)
        .arg("check-config")
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let agent = r.spawn_agent();

    let sync_id = r.create_group(json!({"Name": "photos-sync", "BucketRegion": "us-east-1", "BucketName": "photos", "BucketPrefix": "data/"}));
    r.add_share_once_registered(&sync_id);

    // Full sync of the prefix, then MNSHealthy / 100 in DescribeExpressSyncShares.
    wait_for(
        Duration::from_secs(60),
        "the full sync to reach the share",
        || std::fs::read_dir(&r.share).map(|d| d.count()).unwrap_or(0) >= 201,
    );
    wait_for(Duration::from_secs(30), "MNSHealthy and 100", || {
        r.shares(&sync_id, false).iter().any(|s| {
            s["ShareName"] == "share1"
                && s["ExpressSyncState"] == "MNSHealthy"
                && s["SyncProgress"] == 100
        })
    });
    assert!(
        !r.share.join("elsewhere").exists() && !r.share.join("data").exists(),
        "paths are relative to the group's prefix"
    );

    // Events through the provisioned topic and queue.
    r.peer
        .put("photos", "data/live.txt", "through the group's queue");
    wait_for(Duration::from_secs(15), "an event to arrive", || {
        read(&r.share.join("live.txt")).as_deref() == Some(b"through the group's queue")
    });
    r.peer.delete("photos", "data/live.txt");
    wait_for(Duration::from_secs(15), "a delete to arrive", || {
        !r.share.join("live.txt").exists()
    });

    // An agent whose assignments did not change polls with If-None-Match and gets 304s
    // (this rig polls every second).
    wait_for(
        Duration::from_secs(15),
        "unchanged polls answered 304",
        || {
            let (_, metrics) = r.control.raw(
                format!(
                    "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                    r.control.addr
                )
                .as_bytes(),
            );
            metrics.lines().any(|l| {
            l.starts_with(
                "sgw_control_requests_total{endpoint=\"agent\",action=\"assignments\",code=\"304\"}",
            )
        })
        },
    );

    // Deleting the group removes the messaging from the peer and stops the share cleanly.
    assert_ok(&r.control.sdk(
        "tea",
        "DeleteExpressSync",
        json!({"ExpressSyncId": sync_id}),
    ));
    let state = r.control.cloud_state(&["photos"]);
    assert_eq!(state["topics"], json!([]), "{state}");
    assert_eq!(state["notifications"]["photos"], json!([]), "{state}");
    assert!(
        state["queues"].as_array().is_none_or(|q| q.is_empty()),
        "{state}"
    );
    assert_eq!(stop(agent), 0);
    // The files stay: stopping a share never deletes the local copy.
    assert!(std::fs::read_dir(&r.share).unwrap().count() >= 200);
}

#[test]
fn an_unreachable_control_endpoint_never_stops_syncing() {
    let mut r = rig("bucket = \"photos\"\nregion = \"us-east-1\"\n");
    let agent = r.spawn_agent();
    let sync_id =
        r.create_group(json!({"Name": "g1", "BucketRegion": "us-east-1", "BucketName": "photos"}));
    r.add_share_once_registered(&sync_id);
    r.peer.put("photos", "first.txt", "1");
    wait_for(Duration::from_secs(30), "the first object", || {
        r.share.join("first.txt").exists()
    });

    // The control endpoint goes away; bucket changes still arrive.
    r.control.terminate();
    r.peer.put("photos", "second.txt", "2");
    wait_for(
        Duration::from_secs(15),
        "an event while the control endpoint is down",
        || r.share.join("second.txt").exists(),
    );
    // A restart of the agent without the control endpoint uses the last assignments: its
    // full sync brings in what changed while it was down.
    assert_eq!(stop(agent), 0);
    r.peer.put("photos", "third.txt", "3");
    let agent = r.spawn_agent();
    wait_for(
        Duration::from_secs(30),
        "sync after a restart without the control endpoint",
        || r.share.join("third.txt").exists(),
    );
    assert_eq!(stop(agent), 0);
    assert!(r.tmp.path().join("state/assignments.json").exists());
}

fn check_online(config: &Path) -> (Option<i32>, String) {
    let out = agent_command(config)
        .args(["check-config", "--online"])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn check_config_online_proves_the_gateway_secret_and_a_lasting_failure_reaches_the_control_log() {
    // Issue 15: the control endpoint is reachable and accepts the secret, or the line says not.
    let r = rig("");
    let (code, text) = check_online(&r.config);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with(&format!(
            "OK    control endpoint http://{}: reachable; gateway {} accepted",
            r.control.addr, r.gateway_id
        ))),
        "{text}"
    );
    assert!(text.contains("not in an express sync group yet"), "{text}");
    let wrong = r.tmp.path().join("wrong.toml");
    let with_wrong_secret = std::fs::read_to_string(&r.config)
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("gateway_secret_file") {
                "gateway_secret = \"not-the-secret\"".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&wrong, with_wrong_secret).unwrap();
    let (code, text) = check_online(&wrong);
    assert_eq!(code, Some(78), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL  control endpoint ")
                && l.contains("the gateway id or secret was not accepted")),
        "{text}"
    );

    // A share whose queue is gone stays in queue_failure: past alert_after_secs the agent
    // says so at err priority and in its progress report, which sgw-control logs.
    let config = std::fs::read_to_string(&r.config).unwrap();
    std::fs::write(&r.config, format!("alert_after_secs = 1\n{config}")).unwrap();
    let agent_log = r.tmp.path().join("agent.log");
    let agent = agent_command(&r.config)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&agent_log).unwrap())
        .spawn()
        .unwrap();
    let sync_id = r.create_group(
        json!({"Name": "g-alert", "BucketRegion": "us-east-1", "BucketName": "photos"}),
    );
    r.add_share_once_registered(&sync_id);
    let assignments = r.tmp.path().join("state/assignments.json");
    wait_for(Duration::from_secs(30), "the assignment", || {
        std::fs::read_to_string(&assignments).is_ok_and(|t| t.contains("queue_url"))
    });
    let a: Value = serde_json::from_str(&std::fs::read_to_string(&assignments).unwrap()).unwrap();
    let queue_url = a["assignments"][0]["queue_url"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, text) = check_online(&r.config);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("OK    share \"share1\": queue: "), "{text}");
    let deleted = std::process::Command::new(common::venv_python())
        .args([
            "-c",
            "import sys, boto3; boto3.client('sqs', endpoint_url=sys.argv[1], region_name='us-east-1').delete_queue(QueueUrl=sys.argv[2])",
            &r.peer.endpoint,
            &queue_url,
        ])
        .envs(common::aws_env())
        .status()
        .unwrap();
    assert!(deleted.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !r
        .control
        .log()
        .contains("share \"share1\": in queue_failure since ")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no alert in the control log:\n{}\nagent:\n{}",
            r.control.log(),
            std::fs::read_to_string(&agent_log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let agent_said = std::fs::read_to_string(&agent_log).unwrap();
    assert!(
        agent_said.contains("ERROR share share1: in queue_failure since "),
        "{agent_said}"
    );
    assert_eq!(stop(agent), 0);
    let (code, text) = check_online(&r.config);
    assert_eq!(code, Some(78), "{text}");
    assert!(text.contains("FAIL  share \"share1\": queue: "), "{text}");
}
