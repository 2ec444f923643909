//! End-to-end with the control endpoint: an operator drives `sgw-control` with the official
//! SDK, a running `sgw-agent` that knows only the control endpoint, its gateway id/secret and
//! its share directories picks up the assignment, mirrors the bucket, follows its events and
//! reports progress; deleting the group removes the messaging from the peer.

mod common;
mod control_support;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::{Peer, agent_command, wait_for};
use control_support::{Control, assert_ok};
use serde_json::{Value, json};

fn read(p: &Path) -> Option<Vec<u8>> {
    std::fs::read(p).ok()
}

fn agent_config(
    dir: &Path,
    control: &Control,
    gw: &(String, String),
    share: &Path,
    bucket_line: &str,
) -> std::path::PathBuf {
    let cfg = dir.join("agent.toml");
    let secret_file = dir.join("gateway.secret");
    std::fs::write(&secret_file, format!("{}\n", gw.1)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "state_dir = {:?}\ncontrol_endpoint = \"http://{}\"\ncontrol_allow_http = true\ngateway_id = {:?}\ngateway_secret_file = {:?}\n\n[[share]]\nname = \"share1\"\npath = {:?}\n{bucket_line}",
            dir.join("state"),
            control.addr,
            gw.0,
            secret_file,
            share
        ),
    )
    .unwrap();
    cfg
}

fn shares_of(c: &Control, sync_id: &str) -> Vec<Value> {
    let r = c.sdk(
        "tea",
        "DescribeExpressSyncShares",
        json!({"ExpressSyncIds": sync_id, "IsExternal": false}),
    );
    assert_ok(&r)["Shares"]["Share"]
        .as_array()
        .cloned()
        .unwrap_or_default()
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
    let peer = Peer::start();
    peer.make_bucket("photos");
    peer.put_many("photos", "data/", 200, 2048);
    peer.put("photos", "elsewhere/not-mine.txt", "outside the prefix");
    let tmp = tempfile::tempdir().unwrap();
    let control_cfg = tmp.path().join("control.toml");
    std::fs::write(&control_cfg, "poll_interval_secs = 1\n").unwrap();
    let control = Control::start_in(
        &peer,
        &tmp.path().join("control-data"),
        &["-c", control_cfg.to_str().unwrap()],
    );
    let gw = control.add_gateway("edge-01");
    let share = tmp.path().join("share1");
    std::fs::create_dir_all(&share).unwrap();
    // The agent knows only the control endpoint, its gateway and the share directory.
    let cfg = agent_config(tmp.path(), &control, &gw, &share, "");

    let check = agent_command(&cfg).arg("check-config").output().unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let agent = agent_command(&cfg)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // The agent registers its share; the operator creates a group and adds the share.
    let created = control.sdk("tea", "CreateExpressSync", json!({"Name": "photos-sync", "BucketRegion": "us-east-1", "BucketName": "photos", "BucketPrefix": "data/"}));
    let sync_id = assert_ok(&created)["ExpressSyncId"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for(
        Duration::from_secs(20),
        "the agent to register its share",
        || {
            let r = control.sdk(
                "tea",
                "DescribeExpressSyncShares",
                json!({"ExpressSyncIds": sync_id, "IsExternal": true}),
            );
            assert_ok(&r)["Shares"]["Share"]
                .as_array()
                .is_some_and(|a| a.iter().any(|s| s["ShareName"] == "share1"))
        },
    );
    let gw_shares = json!({ gw.0.clone(): "share1" }).to_string();
    assert_ok(&control.sdk(
        "rpc",
        "AddSharesToExpressSync",
        json!({"ExpressSyncId": sync_id, "GatewayShares": gw_shares}),
    ));

    // Full sync of the prefix, then MNSHealthy / 100 in DescribeExpressSyncShares.
    wait_for(
        Duration::from_secs(60),
        "the full sync to reach the share",
        || std::fs::read_dir(&share).map(|d| d.count()).unwrap_or(0) >= 201,
    );
    wait_for(Duration::from_secs(30), "MNSHealthy and 100", || {
        shares_of(&control, &sync_id).iter().any(|s| {
            s["ShareName"] == "share1"
                && s["ExpressSyncState"] == "MNSHealthy"
                && s["SyncProgress"] == 100
        })
    });
    assert!(
        !share.join("elsewhere").exists() && !share.join("data").exists(),
        "paths are relative to the group's prefix"
    );

    // Events through the provisioned topic and queue.
    peer.put("photos", "data/live.txt", "through the group's queue");
    wait_for(Duration::from_secs(15), "an event to arrive", || {
        read(&share.join("live.txt")).as_deref() == Some(b"through the group's queue")
    });
    peer.delete("photos", "data/live.txt");
    wait_for(Duration::from_secs(15), "a delete to arrive", || {
        !share.join("live.txt").exists()
    });

    // Deleting the group removes the messaging from the peer and stops the share cleanly.
    assert_ok(&control.sdk(
        "tea",
        "DeleteExpressSync",
        json!({"ExpressSyncId": sync_id}),
    ));
    let state = control.cloud_state(&["photos"]);
    assert_eq!(state["topics"], json!([]), "{state}");
    assert_eq!(state["notifications"]["photos"], json!([]), "{state}");
    assert!(
        state["queues"].as_array().is_none_or(|q| q.is_empty()),
        "{state}"
    );
    let code = stop(agent);
    assert_eq!(code, 0);
    // The files stay: stopping a share never deletes the local copy.
    assert!(std::fs::read_dir(&share).unwrap().count() >= 200);
}

#[test]
fn an_unreachable_control_endpoint_never_stops_syncing() {
    let peer = Peer::start();
    peer.make_bucket("photos");
    let tmp = tempfile::tempdir().unwrap();
    let control_cfg = tmp.path().join("control.toml");
    std::fs::write(&control_cfg, "poll_interval_secs = 1\n").unwrap();
    let mut control = Control::start_in(
        &peer,
        &tmp.path().join("control-data"),
        &["-c", control_cfg.to_str().unwrap()],
    );
    let gw = control.add_gateway("edge-01");
    let share = tmp.path().join("share1");
    std::fs::create_dir_all(&share).unwrap();
    let cfg = agent_config(
        tmp.path(),
        &control,
        &gw,
        &share,
        "bucket = \"photos\"\nregion = \"us-east-1\"\n",
    );
    let agent = agent_command(&cfg)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let created = control.sdk(
        "tea",
        "CreateExpressSync",
        json!({"Name": "g1", "BucketRegion": "us-east-1", "BucketName": "photos"}),
    );
    let sync_id = assert_ok(&created)["ExpressSyncId"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for(Duration::from_secs(20), "registration", || {
        let r = control.sdk(
            "tea",
            "DescribeExpressSyncShares",
            json!({"ExpressSyncIds": sync_id, "IsExternal": true}),
        );
        assert_ok(&r)["Shares"]["Share"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    });
    assert_ok(&control.sdk("rpc", "AddSharesToExpressSync", json!({"ExpressSyncId": sync_id, "GatewayShares": json!({ gw.0.clone(): "share1" }).to_string()})));
    peer.put("photos", "first.txt", "1");
    wait_for(Duration::from_secs(30), "the first object", || {
        share.join("first.txt").exists()
    });

    // The control endpoint goes away; bucket changes still arrive.
    control.terminate();
    peer.put("photos", "second.txt", "2");
    wait_for(
        Duration::from_secs(15),
        "an event while the control endpoint is down",
        || share.join("second.txt").exists(),
    );
    // A restart of the agent without the control endpoint uses the last assignments: its
    // full sync brings in what changed while it was down.
    assert_eq!(stop(agent), 0);
    peer.put("photos", "third.txt", "3");
    let agent = agent_command(&cfg)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        Duration::from_secs(30),
        "sync after a restart without the control endpoint",
        || share.join("third.txt").exists(),
    );
    assert_eq!(stop(agent), 0);
}
