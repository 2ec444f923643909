//! The real `sgw-control` binary driven by the OFFICIAL, unmodified Huawei Cloud OMS SDK
//! (`huaweicloudsdkoms`, tests/peer/oms_call.py) against moto with two buckets: tasks copy
//! byte-identical objects with matching CRC-64, keep up with later objects and events, stop,
//! start, delete, count; every validation rule and the five-task limit answer their codes;
//! signatures, stale dates and replays are refused; running tasks survive a restart.

#[path = "../../tests/common/mod.rs"]
mod common;
mod control_support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Peer;
use control_support::{AK, Control, SK};
use serde_json::{Value, json};

const PROJECT: &str = "0a1b2c3d4e5f";
const SRC_SK: &str = "source-secret-key-never-shown-1234";
const DST_SK: &str = "destination-secret-key-never-shown-5678";

fn config_file(dir: &Path, peer: &Peer) -> PathBuf {
    let path = dir.join("control.toml");
    std::fs::write(
        &path,
        format!(
            "[[oms.endpoints]]\ncloud_type = \"AWS\"\nregion = \"us-east-1\"\nurl = \"{0}\"\nallow_http = true\n\n\
             [[oms.endpoints]]\ncloud_type = \"HuaweiCloud\"\nregion = \"cn-north-4\"\nurl = \"{0}\"\nallow_http = true\n",
            peer.endpoint
        ),
    )
    .expect("write config");
    path
}

struct Oms {
    control: Control,
    dir: tempfile::TempDir,
}

impl Oms {
    fn start(peer: &Peer) -> Oms {
        let dir = tempfile::tempdir().expect("tempdir");
        let control = Oms::control(peer, dir.path());
        Oms { control, dir }
    }

    fn control(peer: &Peer, dir: &Path) -> Control {
        let config = config_file(dir, peer);
        Control::start_in(
            peer,
            &dir.join("data"),
            &["-c", config.to_str().expect("utf-8 path")],
        )
    }

    fn restart(&mut self, peer: &Peer) {
        assert_eq!(self.control.terminate(), Some(0), "{}", self.control.log());
        self.control = Oms::control(peer, self.dir.path());
    }

    /// Runs calls through oms_call.py; each is (action, params) with the bootstrap key.
    fn batch(&self, calls: &[(&str, Value)]) -> Vec<Value> {
        let calls: Vec<Value> = calls
            .iter()
            .map(|(a, p)| json!({"ak": AK, "sk": SK, "project": PROJECT, "action": a, "params": p}))
            .collect();
        self.raw_batch(calls)
    }

    fn raw_batch(&self, calls: Vec<Value>) -> Vec<Value> {
        let calls: Vec<Value> = calls
            .into_iter()
            .map(|mut c| {
                c["endpoint"] = json!(self.control.addr);
                c
            })
            .collect();
        let mut child = Command::new(common::venv_python())
            .arg(common::repo_root().join("tests/peer/oms_call.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run oms_call.py");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&serde_json::to_vec(&calls).expect("json"))
            .expect("write calls");
        let out = child.wait_with_output().expect("oms_call.py");
        assert!(
            out.status.success(),
            "oms_call.py failed: {}\ncontrol log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.control.log()
        );
        let results: Vec<Value> = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(results.len(), calls.len());
        results
    }

    fn call(&self, action: &str, params: Value) -> Value {
        self.batch(&[(action, params)]).remove(0)
    }

    fn ok(&self, action: &str, params: Value) -> Value {
        let r = self.call(action, params);
        assert_eq!(
            r["ok"],
            json!(true),
            "{action}: {r}\n{}",
            self.control.log()
        );
        r["body"].clone()
    }

    fn create(&self, src: &str, dst: &str, extra: Value) -> String {
        let mut p = create_params(src, dst);
        for (k, v) in extra.as_object().expect("object") {
            p[k] = v.clone();
        }
        let body = self.ok("CreateSyncTask", p);
        body["sync_task_id"].as_str().expect("id").to_string()
    }

    fn show(&self, id: &str) -> Value {
        self.ok("ShowSyncTask", json!({"sync_task_id": id}))
    }

    fn s3_head(&self, bucket: &str, key: &str) -> Value {
        self.raw_batch(vec![json!({"action": "S3Head", "params": {
            "endpoint_url": self.control.peer_endpoint, "bucket": bucket, "key": key}})])
            .remove(0)
    }
}

fn create_params(src: &str, dst: &str) -> Value {
    json!({
        "src_cloud_type": "AWS", "src_region": "us-east-1", "src_bucket": src,
        "src_ak": "src-ak", "src_sk": SRC_SK, "dst_ak": "dst-ak", "dst_sk": DST_SK,
        "dst_region": "cn-north-4", "dst_bucket": dst, "description": "nightly copy",
    })
}

#[track_caller]
fn assert_code(r: &Value, status: u64, code: &str) {
    assert_eq!(r["ok"], json!(false), "expected {code}: {r}");
    assert_eq!(
        (r["status"].clone(), r["code"].clone()),
        (json!(status), json!(code)),
        "{r}"
    );
    assert!(r["message"].as_str().is_some_and(|m| !m.is_empty()), "{r}");
}

fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn keys_of(peer: &Peer, bucket: &str) -> Vec<String> {
    peer.list(bucket, "").into_iter().map(|(k, _)| k).collect()
}

fn totals(o: &Oms, id: &str) -> [i64; 5] {
    let now = control_support::now() * 1000;
    let stats = o.ok(
        "ListSyncTaskStatistic",
        json!({"sync_task_id": id, "data_type": "REQUEST,SUCCESS,FAILURE,SKIP,SIZE",
               "start_time": now - 3_600_000, "end_time": now + 60_000}),
    );
    assert_eq!(stats["sync_task_id"], json!(id));
    assert_eq!(stats["statistic_time_type"], json!("FIVE_MINUTES"));
    let mut out = [0i64; 5];
    let datas = stats["statistic_datas"].as_array().expect("datas");
    assert_eq!(datas.len(), 5, "{stats}");
    for (i, name) in ["REQUEST", "SUCCESS", "FAILURE", "SKIP", "SIZE"]
        .iter()
        .enumerate()
    {
        let d = datas
            .iter()
            .find(|d| d["data_type"] == json!(name))
            .expect("type");
        out[i] = d["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|p| {
                assert!(
                    p["time_stamp"].as_i64().is_some_and(|t| t % 300_000 == 0),
                    "{p}"
                );
                p["statistic_num"].as_i64().expect("num")
            })
            .sum();
    }
    out
}

#[test]
fn a_task_copies_everything_keeps_up_stops_starts_and_counts() {
    let peer = Peer::start();
    peer.make_bucket("src");
    peer.make_bucket("dst");
    let small: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| {
            let key = format!("dir/{i:02} file ü.bin");
            (key.clone(), common::content_for_key(&key, 1000 + i * 517))
        })
        .collect();
    for (k, body) in &small {
        peer.put("src", k, body);
    }
    // Bigger than the multipart threshold (16 MiB): sent in 8 MiB parts.
    let big = common::content_for_key("big.bin", 20 * 1024 * 1024 + 333);
    peer.put("src", "big.bin", &big);
    // Already in the destination, same size and newer: skipped.
    peer.put("src", "same.txt", b"identical");
    std::thread::sleep(Duration::from_millis(1100));
    peer.put("dst", "same.txt", b"identical");
    let o = Oms::start(&peer);
    o.raw_batch(vec![json!({"action": "S3Put", "params": {
        "endpoint_url": peer.endpoint, "bucket": "src", "key": "meta.html", "body_text": "<p>hi</p>",
        "content_type": "text/html; charset=utf-8", "metadata": {"owner": "alice", "tier": "gold"}}})]);

    let id = o.create("src", "dst", json!({"enable_metadata_migration": true}));
    assert_eq!(id.len(), 32, "{id}");
    let expected = small.len() + 3;
    wait_until(Duration::from_secs(90), "the full pass", || {
        keys_of(&peer, "dst").len() == expected
    });
    for (k, body) in small.iter().chain([&("big.bin".to_string(), big.clone())]) {
        assert_eq!(&peer.get("dst", k), body, "{k}");
        let (s, d) = (peer.head("src", k), peer.head("dst", k));
        assert!(s["crc64nvme"].is_string(), "{s}");
        assert_eq!(s["crc64nvme"], d["crc64nvme"], "{k}: {s} {d}");
    }
    assert_eq!(
        peer.head("dst", "big.bin")["checksum_type"],
        json!("FULL_OBJECT")
    );
    let meta = o.s3_head("dst", "meta.html");
    assert_eq!(
        meta["content_type"],
        json!("text/html; charset=utf-8"),
        "{meta}"
    );
    assert_eq!(
        meta["metadata"],
        json!({"owner": "alice", "tier": "gold"}),
        "{meta}"
    );
    assert_eq!(
        meta["crc64nvme"],
        o.s3_head("src", "meta.html")["crc64nvme"]
    );

    // Show and List as the SDK parses them, without any secret.
    let shown = o.show(&id);
    assert_eq!(shown["status"], json!("SYNCHRONIZING"));
    assert_eq!(shown["src_bucket"], json!("src"));
    assert_eq!(shown["dst_region"], json!("cn-north-4"));
    assert_eq!(shown["consistency_check"], json!("size_last_modified"));
    assert_eq!(shown["dst_storage_policy"], json!("STANDARD"));
    assert_eq!(shown["enable_metadata_migration"], json!(true));
    assert!(
        shown["create_time"]
            .as_i64()
            .is_some_and(|t| t > 1_700_000_000_000)
    );
    let listed = o.ok("ListSyncTasks", json!({}));
    assert_eq!(listed["count"], json!(1));
    assert_eq!(listed["tasks"][0]["sync_task_id"], json!(id));
    for text in [shown.to_string(), listed.to_string()] {
        assert!(!text.contains(SRC_SK) && !text.contains(DST_SK) && !text.contains("src-ak"));
    }

    // Incremental: a new object by the periodic re-list, another by CreateSyncEvents.
    peer.put("src", "later.txt", b"added later");
    peer.put("src", "evt key+1.txt", b"named by an event");
    o.ok(
        "CreateSyncEvents",
        json!({"sync_task_id": id, "object_keys": ["evt%20key%2B1.txt", "missing.txt"]}),
    );
    wait_until(Duration::from_secs(30), "the incremental copies", || {
        let k = keys_of(&peer, "dst");
        k.contains(&"later.txt".to_string()) && k.contains(&"evt key+1.txt".to_string())
    });
    assert_eq!(peer.get("dst", "evt key+1.txt"), b"named by an event");

    // Statistics add up: every object once, "same.txt" skipped, "missing.txt" failed.
    let copied: i64 = small.iter().map(|(_, b)| b.len() as i64).sum::<i64>()
        + big.len() as i64
        + "<p>hi</p>".len() as i64
        + "added later".len() as i64
        + "named by an event".len() as i64;
    let mut t = [0; 5];
    wait_until(Duration::from_secs(20), "the statistics", || {
        t = totals(&o, &id);
        t[1] == expected as i64 + 1 && t[2] >= 1
    });
    assert_eq!(t[0], t[1] + t[2] + t[3], "{t:?}");
    assert_eq!(t[3], 1, "{t:?}");
    assert_eq!(t[4], copied, "{t:?}");
    let shown = o.show(&id);
    assert_eq!(shown["monthly_acceptance_request"], json!(t[0]));
    assert_eq!(shown["monthly_success_object"], json!(t[1]));
    assert_eq!(shown["monthly_size"], json!(t[4]));

    // Stop: nothing more is copied; the keys are forgotten, so Start must carry them.
    o.ok("StopSyncTask", json!({"sync_task_id": id}));
    assert_eq!(o.show(&id)["status"], json!("STOPPED"));
    // The same request signed in the same second would be a replay (APIGW.0304).
    std::thread::sleep(Duration::from_millis(1100));
    assert_code(
        &o.call("StopSyncTask", json!({"sync_task_id": id})),
        400,
        "OMS.0005",
    );
    assert_code(
        &o.call(
            "CreateSyncEvents",
            json!({"sync_task_id": id, "object_keys": ["later.txt"]}),
        ),
        400,
        "OMS.0005",
    );
    let stopped = o.ok("ListSyncTasks", json!({"status": "STOPPED"}));
    assert_eq!(stopped["count"], json!(1));
    assert_eq!(
        o.ok("ListSyncTasks", json!({"status": "SYNCHRONIZING"}))["count"],
        json!(0)
    );
    peer.put("src", "while-stopped.txt", b"waits for start");
    std::thread::sleep(Duration::from_secs(8));
    assert!(!keys_of(&peer, "dst").contains(&"while-stopped.txt".to_string()));
    assert_code(
        &o.call(
            "StartSyncTask",
            json!({"sync_task_id": id, "body": {"src_ak": "a", "src_sk": "b"}}),
        ),
        400,
        "OMS.0001",
    );
    let before_start = o.show(&id)["last_start_time"].as_i64().expect("time");
    std::thread::sleep(Duration::from_millis(1100));
    o.ok(
        "StartSyncTask",
        json!({"sync_task_id": id, "body": {"src_ak": "src-ak", "src_sk": SRC_SK, "dst_ak": "dst-ak", "dst_sk": DST_SK}}),
    );
    let shown = o.show(&id);
    assert_eq!(shown["status"], json!("SYNCHRONIZING"));
    assert!(shown["last_start_time"].as_i64().expect("time") > before_start);
    std::thread::sleep(Duration::from_millis(1100));
    assert_code(
        &o.call("StartSyncTask", json!({"sync_task_id": id, "body": {"src_ak": "src-ak", "src_sk": SRC_SK, "dst_ak": "dst-ak", "dst_sk": DST_SK}})),
        400,
        "OMS.0005",
    );
    wait_until(Duration::from_secs(30), "the copy after start", || {
        keys_of(&peer, "dst").contains(&"while-stopped.txt".to_string())
    });

    // Delete stops it and forgets it.
    o.ok("DeleteSyncTask", json!({"sync_task_id": id}));
    assert_code(
        &o.call("ShowSyncTask", json!({"sync_task_id": id})),
        404,
        "OMS.0004",
    );
    std::thread::sleep(Duration::from_millis(1100));
    assert_code(
        &o.call("DeleteSyncTask", json!({"sync_task_id": id})),
        404,
        "OMS.0004",
    );
    assert_eq!(o.ok("ListSyncTasks", json!({}))["count"], json!(0));
    peer.put("src", "after-delete.txt", b"never copied");
    std::thread::sleep(Duration::from_secs(7));
    assert!(!keys_of(&peer, "dst").contains(&"after-delete.txt".to_string()));

    let log = o.control.log();
    assert!(
        !log.contains(SRC_SK) && !log.contains(DST_SK),
        "a secret reached the log"
    );
}

#[test]
fn every_documented_rule_and_the_five_task_limit_answer_their_codes() {
    let peer = Peer::start();
    peer.make_bucket("src");
    peer.make_bucket("dst");
    let o = Oms::start(&peer);
    let with = |extra: Value| {
        let mut p = create_params("src", "dst");
        for (k, v) in extra.as_object().expect("object") {
            if v.is_null() {
                p.as_object_mut().expect("object").remove(k);
            } else {
                p[k] = v.clone();
            }
        }
        p
    };
    let long = |n: usize| "x".repeat(n);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"src_cloud_type": "Amazon"}), "OMS.0001"),
        (json!({"src_region": null}), "OMS.0001"),
        (json!({"src_region": long(101)}), "OMS.0001"),
        (json!({"src_bucket": null}), "OMS.0001"),
        (json!({"src_bucket": long(1025)}), "OMS.0001"),
        (json!({"src_ak": null}), "OMS.0001"),
        (json!({"src_ak": long(101)}), "OMS.0001"),
        (json!({"src_sk": long(101)}), "OMS.0001"),
        (json!({"dst_ak": null}), "OMS.0001"),
        (json!({"dst_sk": long(101)}), "OMS.0001"),
        (json!({"dst_region": null}), "OMS.0001"),
        (json!({"dst_bucket": null}), "OMS.0001"),
        (json!({"dst_bucket": "has/slash"}), "OMS.0001"),
        (json!({"description": long(256)}), "OMS.0001"),
        (json!({"description": "a<b"}), "OMS.0001"),
        (json!({"description": "a&b"}), "OMS.0001"),
        (json!({"description": "it's"}), "OMS.0001"),
        (json!({"description": "(x)"}), "OMS.0001"),
        (json!({"dst_storage_policy": "COLD"}), "OMS.0001"),
        (json!({"consistency_check": "md5"}), "OMS.0001"),
        (json!({"app_id": long(256)}), "OMS.0001"),
        (json!({"src_cloud_type": "Tencent"}), "OMS.0001"),
        (json!({"src_crypto_type": "AES"}), "OMS.0001"),
        (json!({"src_crypto_type": "KMS"}), "OMS.0002"),
        (json!({"dst_crypto_type": "KMS"}), "OMS.0002"),
        (
            json!({"dst_kms_key_id": "0123456789abcdef0123456789abcdef0123"}),
            "OMS.0002",
        ),
        (
            json!({"source_cdn": {"domain": "cdn.example.com", "protocol": "ftp"}}),
            "OMS.0001",
        ),
        (
            json!({"source_cdn": {"domain": "cdn.example.com", "protocol": "https", "authentication_type": "BASIC"}}),
            "OMS.0001",
        ),
        (
            json!({"source_cdn": {"domain": "cdn.example.com", "protocol": "https"}}),
            "OMS.0002",
        ),
        (
            json!({"src_cloud_type": "Aliyun", "src_region": "cn-beijing"}),
            "OMS.0002",
        ),
        (
            json!({"src_cloud_type": "Azure", "src_region": "eastus"}),
            "OMS.0002",
        ),
        (json!({"dst_region": "US East"}), "OMS.0002"),
        (
            json!({"dst_bucket": "src", "dst_region": "cn-north-4", "src_bucket": "src"}),
            "OMS.0001",
        ),
    ];
    let calls: Vec<(&str, Value)> = cases
        .iter()
        .map(|(extra, _)| ("CreateSyncTask", with(extra.clone())))
        .collect();
    let results = o.batch(&calls);
    for ((extra, code), r) in cases.iter().zip(&results) {
        assert_eq!(r["code"], json!(code), "{extra}: {r}");
        assert_eq!(r["status"], json!(400), "{extra}: {r}");
    }
    // What the typed models cannot send: raw, signed by the SDK's own signer.
    let raw = |body: Value| {
        json!({"ak": AK, "sk": SK, "project": PROJECT, "action": "Raw",
               "params": {"method": "POST", "path": format!("/v2/{PROJECT}/sync-tasks"), "body": body}})
    };
    let raw_cases: Vec<(Value, &str)> = vec![
        (with(json!({"enable_kms": true})), "OMS.0002"),
        (with(json!({"colour": "blue"})), "OMS.0001"),
        (with(json!({"enable_restore": "yes"})), "OMS.0001"),
        (with(json!({"src_bucket": 7})), "OMS.0001"),
        (
            with(json!({"object_overwrite_mode": "SOMETIMES"})),
            "OMS.0001",
        ),
        (json!(["not", "an", "object"]), "OMS.0001"),
    ];
    let results = o.raw_batch(raw_cases.iter().map(|(b, _)| raw(b.clone())).collect());
    for ((body, code), r) in raw_cases.iter().zip(&results) {
        assert_eq!(
            (r["status"].clone(), r["body"]["error_code"].clone()),
            (json!(400), json!(code)),
            "{body}: {r}"
        );
    }
    assert_eq!(
        o.ok("ListSyncTasks", json!({}))["count"],
        json!(0),
        "nothing was created"
    );

    // Seed rules that are accepted, with their enumerations and defaults.
    let a = o.create(
        "src",
        "dst",
        json!({"consistency_check": "crc64",
        "dst_storage_policy": "IA", "src_crypto_type": "DEFAULT", "description": long(255)}),
    );
    let shown = o.show(&a);
    assert_eq!(shown["consistency_check"], json!("crc64"));
    assert_eq!(shown["dst_storage_policy"], json!("IA"));
    assert_eq!(
        shown["object_overwrite_mode"],
        json!("SIZE_LAST_MODIFIED_COMPARISON_OVERWRITE")
    );
    let r = o
        .raw_batch(vec![raw(with(
            json!({"object_overwrite_mode": "NO_OVERWRITE",
        "consistency_check": "transmission", "enable_kms": false}),
        ))])
        .remove(0);
    assert_eq!(r["status"], json!(200), "{r}");
    for i in 0..3 {
        o.create("src", "dst", json!({"description": format!("copy {i}")}));
    }
    // The sixth of a tenant is refused; another tenant is not affected.
    assert_code(
        &o.call("CreateSyncTask", create_params("src", "dst")),
        400,
        "OMS.0003",
    );
    let other = o
        .raw_batch(vec![json!({"ak": AK, "sk": SK, "project": "other-project",
        "action": "CreateSyncTask", "params": create_params("src", "dst")})])
        .remove(0);
    assert_eq!(other["ok"], json!(true), "{other}");
    let page = o.ok("ListSyncTasks", json!({"limit": 2, "offset": 4}));
    assert_eq!(page["count"], json!(5));
    assert_eq!(page["tasks"].as_array().map(Vec::len), Some(1));
    // Query and path rules.
    assert_code(
        &o.call("ListSyncTasks", json!({"limit": 101})),
        400,
        "OMS.0001",
    );
    assert_code(
        &o.call("ListSyncTasks", json!({"limit": 0})),
        400,
        "OMS.0001",
    );
    assert_code(
        &o.call("ListSyncTasks", json!({"offset": -1})),
        400,
        "OMS.0001",
    );
    assert_code(
        &o.call("ListSyncTasks", json!({"status": "RUNNING"})),
        400,
        "OMS.0001",
    );
    assert_code(
        &o.call("ShowSyncTask", json!({"sync_task_id": "nope"})),
        404,
        "OMS.0004",
    );
    let now = control_support::now() * 1000;
    for (params, code) in [
        (
            json!({"sync_task_id": a, "data_type": "BYTES", "start_time": now - 1000, "end_time": now}),
            "OMS.0001",
        ),
        (
            json!({"sync_task_id": a, "data_type": "SIZE", "start_time": now, "end_time": now - 1000}),
            "OMS.0001",
        ),
        (
            json!({"sync_task_id": a, "data_type": "SIZE", "start_time": now - 40 * 86_400_000i64, "end_time": now}),
            "OMS.0001",
        ),
        (
            json!({"sync_task_id": "nope", "data_type": "SIZE", "start_time": now - 1000, "end_time": now}),
            "OMS.0004",
        ),
    ] {
        let r = o.call("ListSyncTaskStatistic", params.clone());
        assert_eq!(r["code"], json!(code), "{params}: {r}");
    }
    let hourly = o.ok(
        "ListSyncTaskStatistic",
        json!({"sync_task_id": a, "data_type": "REQUEST",
        "start_time": now - 7 * 86_400_000i64, "end_time": now}),
    );
    assert_eq!(hourly["statistic_time_type"], json!("ONE_HOUR"));
    for (keys, code) in [
        (json!([]), "OMS.0001"),
        (
            json!((0..11).map(|i| format!("k{i}")).collect::<Vec<_>>()),
            "OMS.0001",
        ),
        (json!([""]), "OMS.0001"),
    ] {
        let r = o.call(
            "CreateSyncEvents",
            json!({"sync_task_id": a, "object_keys": keys}),
        );
        assert_eq!(r["code"], json!(code), "{keys}: {r}");
    }
    let start_kms = o.call(
        "StartSyncTask",
        json!({"sync_task_id": a, "body": {
        "src_ak": "a", "src_sk": "b", "dst_ak": "c", "dst_sk": "d", "dst_crypto_type": "KMS"}}),
    );
    assert_code(&start_kms, 400, "OMS.0002");
}

#[test]
fn wrong_signatures_stale_dates_and_replays_are_refused() {
    let peer = Peer::start();
    peer.make_bucket("src");
    peer.make_bucket("dst");
    let o = Oms::start(&peer);
    let list_path = format!("/v2/{PROJECT}/sync-tasks");
    let date = |offset: i64| {
        let secs = control_support::now() + offset;
        sgw_control::oms::auth::format_sdk_date(secs)
    };
    let results = o.raw_batch(vec![
        json!({"ak": AK, "sk": "wrong-secret", "project": PROJECT, "action": "ListSyncTasks", "params": {}}),
        json!({"ak": "NOSUCHKEY", "sk": SK, "project": PROJECT, "action": "ListSyncTasks", "params": {}}),
        json!({"ak": AK, "sk": SK, "project": PROJECT, "action": "Raw", "params": {
            "method": "GET", "path": list_path, "headers": {"X-Sdk-Date": date(-16 * 60)}}}),
        json!({"ak": AK, "sk": SK, "project": PROJECT, "action": "Raw", "params": {
            "method": "GET", "path": list_path, "headers": {"X-Sdk-Date": date(16 * 60)}}}),
        json!({"ak": AK, "sk": SK, "project": PROJECT, "action": "Raw", "params": {
            "method": "GET", "path": list_path, "unsigned": true}}),
        json!({"ak": AK, "sk": SK, "project": PROJECT, "action": "Raw", "params": {
            "method": "GET", "path": list_path, "unsigned": true, "headers": {"X-Auth-Token": "MIIE..."}}}),
        // Signed for one tenant, sent to another.
        json!({"ak": AK, "sk": SK, "project": PROJECT, "action": "Raw", "params": {
            "method": "GET", "path": "/v2/other/sync-tasks"}}),
        // A state-changing request sent twice: the second is a replay.
        json!({"ak": AK, "sk": SK, "project": PROJECT, "action": "Raw", "params": {
            "method": "POST", "path": list_path, "body": create_params("src", "dst"),
            "headers": {"X-Sdk-Date": date(0)}, "repeat": 2}}),
        json!({"ak": AK, "sk": SK, "project": PROJECT, "action": "Raw", "params": {
            "method": "GET", "path": format!("/v2/{PROJECT}/nothing-here")}}),
    ]);
    assert_code(&results[0], 401, "APIGW.0301");
    assert_code(&results[1], 401, "APIGW.0301");
    let code = |r: &Value| (r["status"].clone(), r["body"]["error_code"].clone());
    assert_eq!(
        code(&results[2]),
        (json!(401), json!("APIGW.0303")),
        "{}",
        results[2]
    );
    assert_eq!(
        code(&results[3]),
        (json!(401), json!("APIGW.0303")),
        "{}",
        results[3]
    );
    assert_eq!(
        code(&results[4]),
        (json!(401), json!("APIGW.0305")),
        "{}",
        results[4]
    );
    assert_eq!(
        code(&results[5]),
        (json!(401), json!("APIGW.0305")),
        "{}",
        results[5]
    );
    assert_eq!(
        code(&results[6]),
        (json!(401), json!("APIGW.0301")),
        "{}",
        results[6]
    );
    let replayed = results[7].as_array().expect("two answers");
    assert_eq!(replayed[0]["status"], json!(200), "{}", results[7]);
    assert_eq!(
        code(&replayed[1]),
        (json!(401), json!("APIGW.0304")),
        "{}",
        results[7]
    );
    assert_eq!(
        code(&results[8]),
        (json!(404), json!("APIGW.0101")),
        "{}",
        results[8]
    );
    // Only the first of the two identical creates made a task.
    assert_eq!(o.ok("ListSyncTasks", json!({}))["count"], json!(1));
}

#[test]
fn a_restart_resumes_running_tasks_and_keeps_stopped_ones_stopped() {
    let peer = Peer::start();
    for b in ["src", "dst", "src2", "dst2"] {
        peer.make_bucket(b);
    }
    peer.put("src", "one.txt", b"first");
    let mut o = Oms::start(&peer);
    let running = o.create("src", "dst", json!({}));
    let stopped = o.create("src2", "dst2", json!({}));
    o.ok("StopSyncTask", json!({"sync_task_id": stopped}));
    wait_until(Duration::from_secs(30), "the first copy", || {
        keys_of(&peer, "dst") == vec!["one.txt".to_string()]
    });
    o.restart(&peer);
    assert_eq!(o.show(&running)["status"], json!("SYNCHRONIZING"));
    assert_eq!(o.show(&stopped)["status"], json!("STOPPED"));
    peer.put("src", "two.txt", b"after the restart");
    peer.put("src2", "x.txt", b"stays put");
    wait_until(
        Duration::from_secs(30),
        "the copy after the restart",
        || keys_of(&peer, "dst").len() == 2,
    );
    assert_eq!(peer.get("dst", "two.txt"), b"after the restart");
    // one.txt was settled before the restart: not copied (nor counted) again.
    let t = totals(&o, &running);
    assert_eq!((t[0], t[1]), (2, 2), "{t:?}");
    assert!(keys_of(&peer, "dst2").is_empty());
    // The keys are not in the database in clear (nor anywhere in its files).
    for entry in std::fs::read_dir(o.dir.path().join("data")).expect("data dir") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(SRC_SK) && !text.contains(DST_SK),
            "{} holds a secret",
            path.display()
        );
    }
}

#[test]
fn consistency_checks_overwrite_modes_storage_classes_and_archived_objects() {
    let peer = Peer::start();
    for b in ["src", "src-two", "dst-one", "dst-two", "dst-three"] {
        peer.make_bucket(b);
    }
    let o = Oms::start(&peer);
    let put = |bucket: &str, key: &str, text: &str, class: &str| {
        json!({"action": "S3Put", "params": {"endpoint_url": peer.endpoint, "bucket": bucket,
            "key": key, "body_text": text, "storage_class": class}})
    };
    o.raw_batch(vec![
        put("src", "a.txt", "new content", "STANDARD"),
        put("src", "cold.bin", "archived bytes", "GLACIER"),
        put("src-two", "a.txt", "new content", "STANDARD"),
        put("src-two", "cold.bin", "archived bytes", "GLACIER"),
    ]);
    std::thread::sleep(Duration::from_millis(1100));
    // Same size, newer, different bytes in every destination.
    o.raw_batch(vec![
        put("dst-one", "a.txt", "old content", "STANDARD"),
        put("dst-two", "a.txt", "old content", "STANDARD"),
        put("dst-three", "a.txt", "old content", "STANDARD"),
    ]);
    // size_last_modified (default): a.txt counts as the same; the archived object fails.
    let t1 = o.create("src", "dst-one", json!({"description": "size and time"}));
    // crc64: a.txt differs by CRC and is copied; enable_restore restores cold.bin, then copies it.
    let t2 = o.create(
        "src-two",
        "dst-two",
        json!({"consistency_check": "crc64", "enable_restore": true, "dst_storage_policy": "IA"}),
    );
    // NO_OVERWRITE (raw: not in the SDK's model) keeps a.txt whatever it holds.
    let r = o
        .raw_batch(vec![
            json!({"ak": AK, "sk": SK, "project": PROJECT, "action": "Raw",
        "params": {"method": "POST", "path": format!("/v2/{PROJECT}/sync-tasks"),
            "body": {"src_cloud_type": "AWS", "src_region": "us-east-1", "src_bucket": "src",
                "src_ak": "a", "src_sk": "b", "dst_ak": "c", "dst_sk": "d",
                "dst_region": "cn-north-4", "dst_bucket": "dst-three",
                "object_overwrite_mode": "NO_OVERWRITE"}}}),
        ])
        .remove(0);
    assert_eq!(r["status"], json!(200), "{r}");
    let t3 = r["body"]["sync_task_id"].as_str().expect("id").to_string();
    wait_until(Duration::from_secs(40), "the three tasks", || {
        keys_of(&peer, "dst-two").len() == 2 && totals(&o, &t1)[0] >= 2 && totals(&o, &t3)[0] >= 2
    });
    assert_eq!(peer.get("dst-one", "a.txt"), b"old content");
    assert_eq!(peer.get("dst-two", "a.txt"), b"new content");
    assert_eq!(peer.get("dst-three", "a.txt"), b"old content");
    assert_eq!(peer.get("dst-two", "cold.bin"), b"archived bytes");
    assert_eq!(
        o.s3_head("dst-two", "a.txt")["storage_class"],
        json!("STANDARD_IA")
    );
    assert_eq!(keys_of(&peer, "dst-one"), vec!["a.txt".to_string()]);
    assert_eq!(keys_of(&peer, "dst-three"), vec!["a.txt".to_string()]);
    let t = totals(&o, &t1);
    assert_eq!(
        (t[1], t[2], t[3]),
        (0, t[0] - 1, 1),
        "size_last_modified: {t:?}"
    );
    let t = totals(&o, &t2);
    assert_eq!((t[0], t[1], t[2], t[3]), (2, 2, 0, 0), "crc64: {t:?}");
    let t = totals(&o, &t3);
    assert_eq!((t[1], t[2], t[3]), (0, t[0] - 1, 1), "NO_OVERWRITE: {t:?}");
}

#[test]
fn stop_and_delete_end_a_full_pass_in_progress_within_seconds() {
    let peer = Peer::start();
    for b in ["src", "dst", "dst-two"] {
        peer.make_bucket(b);
    }
    assert_eq!(peer.put_many("src", "many/", 1500, 1024), 1500);
    let o = Oms::start(&peer);
    let count = |b: &str| keys_of(&peer, b).len();
    for (dst, how) in [("dst", "StopSyncTask"), ("dst-two", "DeleteSyncTask")] {
        let id = o.create("src", dst, json!({"description": format!("to {dst}")}));
        wait_until(Duration::from_secs(60), "the pass to start copying", || {
            count(dst) >= 20
        });
        let asked = Instant::now();
        o.ok(how, json!({"sync_task_id": id}));
        std::thread::sleep(Duration::from_secs(3));
        let settled = count(dst);
        assert!(settled < 1500, "{how} came too late to interrupt the pass");
        std::thread::sleep(Duration::from_secs(4));
        assert_eq!(
            count(dst),
            settled,
            "{how}: copies went on more than {:?} after it",
            asked.elapsed() - Duration::from_secs(4)
        );
    }
}
