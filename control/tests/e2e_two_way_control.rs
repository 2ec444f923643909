//! Two-way shares in one express sync group provisioned by `sgw-control` (issue 10): two
//! gateways, each running a real `sgw-agent` whose only cloud settings come from the control
//! endpoint, each with a `two_way` share; the group (topic, a queue per share, the bucket
//! notification) is created with the official SDK. A file saved at A appears at B, an edit at
//! B reaches A, a delete at A removes it at B, and A never downloads its own upload; the shares
//! stay visible with their documented fields in DescribeExpressSyncShares.

#[path = "../../tests/common/mod.rs"]
mod common;
mod control_support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::{Peer, agent_command, wait_for};
use control_support::{Control, assert_ok};
use serde_json::{Value, json};

struct Gateway {
    id: String,
    share: PathBuf,
    config: PathBuf,
}

fn gateway(tmp: &Path, control: &Control, name: &str) -> Gateway {
    let (id, secret) = control.add_gateway(name);
    let dir = tmp.join(name);
    let share = dir.join("projects");
    std::fs::create_dir_all(&share).unwrap();
    let secret_file = dir.join("gateway.secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\ncontrol_endpoint = \"http://{}\"\ncontrol_allow_http = true\n\
             gateway_id = {id:?}\ngateway_secret_file = {secret_file:?}\ngateway_name = {name:?}\n\n\
             [[share]]\nname = \"projects\"\npath = {share:?}\nmode = \"two_way\"\nsettle_ms = 1000\n",
            dir.join("state"),
            control.addr,
        ),
    )
    .unwrap();
    Gateway { id, share, config }
}

fn spawn(g: &Gateway) -> Child {
    agent_command(&g.config)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn stop(mut child: Child) -> i32 {
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap().code().unwrap_or(-1)
}

fn status(g: &Gateway) -> Value {
    let out = agent_command(&g.config)
        .args(["status", "--json"])
        .output()
        .unwrap();
    serde_json::from_slice::<Value>(&out.stdout).unwrap()[0].clone()
}

fn read(g: &Gateway, name: &str) -> Option<Vec<u8>> {
    std::fs::read(g.share.join(name)).ok()
}

#[test]
fn a_group_of_two_two_way_gateways_follows_itself() {
    let peer = Peer::start();
    peer.make_bucket("projects");
    let tmp = tempfile::tempdir().unwrap();
    let control_cfg = tmp.path().join("control.toml");
    std::fs::write(&control_cfg, "poll_interval_secs = 1\n").unwrap();
    let control = Control::start_in(
        &peer,
        &tmp.path().join("control-data"),
        &["-c", control_cfg.to_str().unwrap()],
    );
    let a = gateway(tmp.path(), &control, "branch-a");
    let b = gateway(tmp.path(), &control, "branch-b");
    let agent_a = spawn(&a);
    let agent_b = spawn(&b);

    let created = control.sdk(
        "tea",
        "CreateExpressSync",
        json!({"Name": "projects-sync", "BucketRegion": "us-east-1", "BucketName": "projects"}),
    );
    let sync_id = assert_ok(&created)["ExpressSyncId"]
        .as_str()
        .unwrap()
        .to_owned();
    let shares = |external: bool| -> Vec<Value> {
        let r = control.sdk(
            "tea",
            "DescribeExpressSyncShares",
            json!({"ExpressSyncIds": sync_id, "IsExternal": external}),
        );
        assert_ok(&r)["Shares"]["Share"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    wait_for(Duration::from_secs(30), "both agents to register", || {
        shares(true)
            .iter()
            .filter(|s| s["ShareName"] == "projects")
            .count()
            == 2
    });
    let gw_shares = json!({ a.id.clone(): "projects", b.id.clone(): "projects" }).to_string();
    assert_ok(&control.sdk(
        "rpc",
        "AddSharesToExpressSync",
        json!({"ExpressSyncId": sync_id, "GatewayShares": gw_shares}),
    ));
    wait_for(Duration::from_secs(60), "both shares MNSHealthy", || {
        let s = shares(false);
        s.len() == 2
            && s.iter().all(|s| {
                s["ExpressSyncState"] == "MNSHealthy"
                    && s["SyncProgress"] == 100
                    && s["MnsQueue"].is_string()
            })
    });

    // Saved at A: at B; A keeps its own upload (no download, same inode).
    std::fs::write(a.share.join("plan.txt"), b"from branch A").unwrap();
    wait_for(Duration::from_secs(30), "A's file at B", || {
        read(&b, "plan.txt").as_deref() == Some(&b"from branch A"[..])
    });
    let ino = std::fs::metadata(a.share.join("plan.txt")).unwrap().ino();
    // Edited at B: at A.
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(b.share.join("plan.txt"), b"edited at branch B").unwrap();
    wait_for(Duration::from_secs(30), "B's edit at A", || {
        read(&a, "plan.txt").as_deref() == Some(&b"edited at branch B"[..])
    });
    assert_ne!(
        std::fs::metadata(a.share.join("plan.txt")).unwrap().ino(),
        ino,
        "B's version was published at A"
    );
    assert_eq!(status(&b)["objects_downloaded"], 1, "{}", status(&b));
    // Deleted at A: gone at B and in the bucket.
    std::fs::remove_file(a.share.join("plan.txt")).unwrap();
    wait_for(Duration::from_secs(30), "A's delete at B", || {
        read(&b, "plan.txt").is_none()
    });
    assert!(peer.list("projects", "").is_empty());
    assert_eq!(status(&a)["uploads"]["done"], 1, "{}", status(&a));
    assert_eq!(status(&a)["uploads"]["remote_deletes"], 1, "{}", status(&a));

    assert_eq!(stop(agent_a), 0);
    assert_eq!(stop(agent_b), 0);
}
