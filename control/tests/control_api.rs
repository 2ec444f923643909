//! The real `sgw-control` binary against moto, driven by the OFFICIAL Alibaba Cloud SDKs
//! (tea-openapi ACS3 and classic RPC): each seed action's success and documented errors,
//! hostile input that changes nothing, signatures, provisioning, restarts.

#[path = "../../tests/common/mod.rs"]
mod common;
mod control_support;

use std::time::Duration;

use common::Peer;
use control_support::{AK, Control, assert_error, assert_ok, now};
use serde_json::{Value, json};

fn create_params(name: &str, bucket: &str, prefix: &str) -> Value {
    json!({"Name": name, "BucketRegion": "us-east-1", "BucketName": bucket, "BucketPrefix": prefix})
}

fn group_count(c: &Control) -> usize {
    let r = c.sdk("tea", "DescribeExpressSyncs", json!({}));
    assert_ok(&r)["ExpressSyncs"]["ExpressSync"]
        .as_array()
        .map_or(0, Vec::len)
}

#[test]
fn express_sync_lifecycle_with_both_sdks_provisions_and_cleans_up() {
    let peer = Peer::start();
    peer.make_bucket("photos");
    let c = Control::start(&peer);
    let gw = c.add_gateway("edge-01");
    let reg = c.register(
        &gw,
        &[
            ("share1", "photos", "data/"),
            ("share2", "photos", ""),
            ("other", "elsewhere", ""),
        ],
    );
    assert_eq!(reg["shares"], json!(["other", "share1", "share2"]));

    // CreateExpressSync through tea (ACS3), answer exactly as documented.
    let created = c.sdk("tea", "CreateExpressSync", json!({"Name": "alex-tb.1", "Description": "Synchronization group <for> testing", "BucketRegion": "us-east-1", "BucketName": "photos", "BucketPrefix": "data/"}));
    let body = assert_ok(&created);
    assert_eq!(body["Message"], "successful");
    let sync_id = body["ExpressSyncId"]
        .as_str()
        .expect("ExpressSyncId")
        .to_string();
    assert!(
        sync_id.starts_with("sync-") && sync_id.len() == 25,
        "{sync_id}"
    );

    // Topic + notification rule exist on the peer.
    let state = c.cloud_state(&["photos"]);
    let topic = format!("arn:aws:sns:us-east-1:123456789012:sgw-express-sync-topic-{sync_id}");
    assert_eq!(state["topics"], json!([topic]));
    assert_eq!(
        state["notifications"]["photos"],
        json!([{"id": format!("sgw-express-sync-{sync_id}"), "target": topic, "events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"], "prefix": "data/"}])
    );

    let gw_shares = json!({ gw.0.clone(): "share1, share2" }).to_string();
    let results = c.sdk_batch(&[
        // Before adding: both shares can be added (IsExternal true, as the tea SDK sends it).
        (
            "tea",
            "DescribeExpressSyncShares",
            json!({"ExpressSyncIds": sync_id, "IsExternal": true}),
        ),
        // AddSharesToExpressSync through the classic RPC SDK.
        (
            "rpc",
            "AddSharesToExpressSync",
            json!({"ExpressSyncId": sync_id, "GatewayShares": gw_shares}),
        ),
        (
            "rpc",
            "DescribeExpressSyncShares",
            json!({"ExpressSyncIds": sync_id, "IsExternal": "False"}),
        ),
        (
            "rpc",
            "DescribeExpressSyncShares",
            json!({"ExpressSyncIds": format!("{sync_id},{sync_id}"), "IsExternal": "True"}),
        ),
    ]);
    let external = assert_ok(&results[0])["Shares"]["Share"]
        .as_array()
        .expect("shares")
        .clone();
    let names: Vec<&str> = external
        .iter()
        .filter_map(|s| s["ShareName"].as_str())
        .collect();
    assert_eq!(
        names,
        vec!["share1", "share2"],
        "only shares on the group's bucket: {external:?}"
    );
    let added = assert_ok(&results[1]);
    let task_id = added["TaskId"].as_str().expect("TaskId").to_string();
    assert!(task_id.starts_with("t-"));
    assert_eq!(
        added["MnsTopic"],
        json!(format!("sgw-express-sync-topic-{sync_id}"))
    );
    let queues: Vec<&str> = added["MnsQueues"]
        .as_str()
        .expect("MnsQueues")
        .split(',')
        .collect();
    assert_eq!(queues.len(), 2);
    assert!(
        queues
            .iter()
            .all(|q| q.starts_with(&format!("sgw-express-sync-queue-{}-", gw.0))),
        "{queues:?}"
    );
    assert_eq!(added["MnsFullSyncDelay"], json!(30));
    assert_eq!(added["MnsPublicEndpoint"], json!(peer.endpoint));
    let members = assert_ok(&results[2])["Shares"]["Share"]
        .as_array()
        .expect("shares")
        .clone();
    assert_eq!(members.len(), 2);
    for m in &members {
        assert_eq!(m["ExpressSyncId"], json!(sync_id));
        assert_eq!(m["ExpressSyncState"], json!("MNSFullSyncInit"));
        assert_eq!(m["SyncProgress"], json!(-1));
        assert_eq!(m["GatewayId"], json!(gw.0));
        assert_eq!(m["GatewayName"], json!("edge"));
        assert_eq!(m["GatewayRegion"], json!("us-east-1"));
        assert!(
            m["StorageBundleId"]
                .as_str()
                .is_some_and(|s| s.starts_with("sb-"))
        );
        assert!(queues.contains(&m["MnsQueue"].as_str().unwrap_or("")));
    }
    assert!(
        assert_ok(&results[3])["Shares"]["Share"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "members are no longer external"
    );

    // Queues subscribed with raw delivery; an object put under the prefix reaches each queue
    // as a plain S3 event.
    let state = c.cloud_state(&["photos"]);
    let subs = state["subscriptions"].as_array().expect("subscriptions");
    assert_eq!(subs.len(), 2, "{state}");
    assert!(
        subs.iter().all(|s| s["topic"] == json!(topic)
            && s["protocol"] == "sqs"
            && s["raw"] == json!(true)),
        "{state}"
    );
    let (_, assignments) = c.agent(&gw, "GET", "/agent/v1/assignments", &json!(null));
    let list = assignments["assignments"].as_array().expect("assignments");
    assert_eq!(list.len(), 2, "{assignments}");
    assert_eq!(list[0]["share_name"], "share1");
    assert_eq!(list[0]["bucket_name"], "photos");
    assert_eq!(list[0]["bucket_prefix"], "data/");
    assert_eq!(list[0]["endpoint"], json!(peer.endpoint));
    let queue_url = list[0]["queue_url"]
        .as_str()
        .expect("queue_url")
        .to_string();
    peer.put("photos", "data/a.txt", b"hello");
    peer.put("photos", "outside/b.txt", b"not ours");
    let mut keys = Vec::new();
    common::wait_for(
        Duration::from_secs(10),
        "the S3 event in the share's queue",
        || {
            for body in peer.receive(&queue_url, 30, true) {
                for rec in body["Records"].as_array().into_iter().flatten() {
                    // S3 event keys are form-URL-encoded (moto encodes `/` too).
                    let raw = rec["s3"]["object"]["key"].as_str().unwrap_or("");
                    keys.push(sgw_control::params::form_decode(raw).expect("encoded key"));
                }
            }
            !keys.is_empty()
        },
    );
    assert_eq!(
        keys,
        vec!["data/a.txt".to_string()],
        "raw S3 event, prefix-filtered"
    );

    // Progress reports show up in DescribeExpressSyncShares.
    let (status, applied) = c.agent(
        &gw,
        "POST",
        "/agent/v1/progress",
        &json!({"shares": [
            {"share_name": "share1", "sync_progress": 100, "express_sync_state": "MNSHealthy"},
            {"share_name": "share2", "sync_progress": 42, "express_sync_state": "MNSFullSyncing"},
            {"share_name": "other", "sync_progress": 5, "express_sync_state": "MNSFullSyncing"}]}),
    );
    assert_eq!(status, 200, "{applied}");
    assert_eq!(
        applied,
        json!({"applied": ["share1", "share2"], "ignored": ["other"]})
    );

    let results = c.sdk_batch(&[
        ("tea", "DescribeExpressSyncShares", json!({"ExpressSyncIds": sync_id, "IsExternal": false})),
        ("tea", "DescribeTasks", json!({"TargetId": sync_id, "TaskId": task_id})),
        ("tea", "DescribeSharesBucketInfoForExpressSync", json!({"BucketRegion": "us-east-1", "BucketName": "photos"})),
        ("tea", "DescribeExpressSyncs", json!({"BucketName": "photos"})),
        ("rpc", "RemoveSharesFromExpressSync", json!({"ExpressSyncId": sync_id, "GatewayShares": json!({gw.0.clone(): "share2"}).to_string()})),
    ]);
    let shares = assert_ok(&results[0])["Shares"]["Share"]
        .as_array()
        .expect("shares")
        .clone();
    let progress: Vec<(&str, &str, i64)> = shares
        .iter()
        .map(|s| {
            (
                s["ShareName"].as_str().unwrap_or(""),
                s["ExpressSyncState"].as_str().unwrap_or(""),
                s["SyncProgress"].as_i64().unwrap_or(-9),
            )
        })
        .collect();
    assert_eq!(
        progress,
        vec![
            ("share1", "MNSHealthy", 100),
            ("share2", "MNSFullSyncing", 42)
        ]
    );
    let tasks = assert_ok(&results[1]);
    assert_eq!(tasks["TotalCount"], json!(1));
    assert_eq!(tasks["Tasks"]["SimpleTask"][0]["TaskId"], json!(task_id));
    assert_eq!(
        tasks["Tasks"]["SimpleTask"][0]["StateCode"],
        json!("task.state.completed")
    );
    assert_eq!(
        assert_ok(&results[2])["BucketInfos"]["BucketInfo"],
        json!([{"BucketRegion": "us-east-1", "BucketName": "photos", "BucketPrefix": ""}, {"BucketRegion": "us-east-1", "BucketName": "photos", "BucketPrefix": "data/"}])
    );
    let groups = assert_ok(&results[3]);
    assert_eq!(
        groups["ExpressSyncs"]["ExpressSync"][0]["Description"],
        json!("Synchronization group <for> testing")
    );
    assert!(assert_ok(&results[4])["TaskId"].as_str().is_some());
    let state = c.cloud_state(&["photos"]);
    assert_eq!(
        state["queues"].as_array().map(Vec::len),
        Some(1),
        "share2's queue is gone: {state}"
    );
    assert_eq!(
        state["subscriptions"].as_array().map(Vec::len),
        Some(1),
        "{state}"
    );
    let (_, assignments) = c.agent(&gw, "GET", "/agent/v1/assignments", &json!(null));
    assert_eq!(
        assignments["assignments"].as_array().map(Vec::len),
        Some(1),
        "a removed share is no longer assigned"
    );

    // XML when asked (classic RPC `Format=XML`).
    let xml = c.sdk_raw_batch(&[json!({"sdk": "rpc", "action": "DescribeExpressSyncShares", "format": "XML", "params": {"ExpressSyncIds": sync_id}})]);
    let text = xml[0]["xml"].as_str().expect("xml");
    assert!(
        text.contains("<DescribeExpressSyncSharesResponse>")
            && text.contains("<Shares><Share>")
            && text.contains("<SyncProgress>100</SyncProgress>"),
        "{text}"
    );

    // Delete: everything goes from the peer.
    let deleted = c.sdk(
        "tea",
        "DeleteExpressSync",
        json!({"ExpressSyncId": sync_id}),
    );
    assert!(assert_ok(&deleted)["TaskId"].as_str().is_some());
    let state = c.cloud_state(&["photos"]);
    assert_eq!(state["topics"], json!([]), "{state}");
    assert_eq!(state["queues"], json!([]), "{state}");
    assert_eq!(state["subscriptions"], json!([]), "{state}");
    assert_eq!(state["notifications"]["photos"], json!([]), "{state}");
    assert_eq!(group_count(&c), 0);
    let gone = c.sdk(
        "rpc",
        "DescribeExpressSyncShares",
        json!({"ExpressSyncIds": sync_id}),
    );
    assert_error(&gone, 400, "ExpressSyncNotExist");
}

#[test]
fn create_express_sync_documented_errors_change_nothing() {
    let peer = Peer::start();
    peer.make_bucket("bk1");
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("control.toml");
    std::fs::write(&config, "max_express_syncs = 2\n[cloud]\nendpoint = \"https://replaced.invalid\"\nregions = [\"us-east-1\", \"cn-hangzhou\"]\n").expect("config");
    let config_arg = config.to_string_lossy().to_string();
    let c = Control::start_in(&peer, &tmp.path().join("data"), &["-c", &config_arg]);
    assert_ok(&c.sdk(
        "rpc",
        "CreateExpressSync",
        create_params("first", "bk1", "a/"),
    ));

    let long_name = format!("a{}", "b".repeat(128));
    let huge_name = "n".repeat(20_000);
    let cases: Vec<(&str, Value, u64, &str)> = vec![
        (
            "tea",
            json!({"BucketRegion": "us-east-1", "BucketName": "bk1"}),
            400,
            "EmptyExpressSyncName",
        ),
        (
            "rpc",
            json!({"Name": "", "BucketRegion": "us-east-1", "BucketName": "bk1"}),
            400,
            "EmptyExpressSyncName",
        ),
        (
            "tea",
            create_params("1starts-with-digit", "bk1", "x/"),
            400,
            "InvalidExpressSyncName",
        ),
        (
            "rpc",
            create_params("g'; DROP TABLE express_syncs;--", "bk1", "x/"),
            400,
            "InvalidExpressSyncName",
        ),
        (
            "tea",
            create_params("a b<script>", "bk1", "x/"),
            400,
            "InvalidExpressSyncName",
        ),
        (
            "tea",
            create_params(&long_name, "bk1", "x/"),
            400,
            "InvalidExpressSyncName",
        ),
        (
            "rpc",
            create_params(&huge_name, "bk1", "x/"),
            400,
            "InvalidExpressSyncName",
        ),
        (
            "tea",
            create_params("名字", "bk1", "x/"),
            400,
            "InvalidExpressSyncName",
        ),
        (
            "tea",
            json!({"Name": "g2", "Description": "d".repeat(256), "BucketRegion": "us-east-1", "BucketName": "bk1"}),
            400,
            "DescriptionOverLimit",
        ),
        (
            "rpc",
            json!({"Name": "g2", "BucketName": "bk1"}),
            400,
            "EmptyBucketRegion",
        ),
        (
            "tea",
            json!({"Name": "g2", "BucketRegion": "us-east-1"}),
            400,
            "EmptyBucketName",
        ),
        (
            "tea",
            json!({"Name": "g2", "BucketRegion": "mars-north-9", "BucketName": "bk1"}),
            400,
            "InvalidRegionId",
        ),
        (
            "rpc",
            json!({"Name": "g2", "BucketRegion": "us-east-1; rm -rf /", "BucketName": "bk1"}),
            400,
            "InvalidRegionId",
        ),
        (
            "tea",
            create_params("g2", "Bad_Bucket", ""),
            400,
            "InvalidBucketName",
        ),
        (
            "rpc",
            create_params("g2", "../etc", ""),
            400,
            "InvalidBucketName",
        ),
        (
            "tea",
            create_params("g2", "no-such-bucket", "z/"),
            400,
            "InvalidBucketName",
        ),
        (
            "tea",
            create_params("first", "bk1", "b/"),
            400,
            "DuplicateExpressSyncName",
        ),
        (
            "rpc",
            create_params("g2", "bk1", "a/"),
            400,
            "ConflictExpressSyncConfig",
        ),
        (
            "tea",
            create_params("g2", "bk1", "/abs"),
            400,
            "ConflictExpressSyncConfig",
        ),
        (
            "tea",
            create_params("g2", "bk1", "a/deeper/"),
            400,
            "ExpressSyncNotificationEventConflict",
        ),
        (
            "rpc",
            create_params("g2", "bk1", ""),
            400,
            "ExpressSyncNotificationEventConflict",
        ),
    ];
    let calls: Vec<(&str, &str, Value)> = cases
        .iter()
        .map(|(sdk, p, _, _)| (*sdk, "CreateExpressSync", p.clone()))
        .collect();
    let results = c.sdk_batch(&calls);
    for ((sdk, params, status, code), result) in cases.iter().zip(&results) {
        assert_eq!(result["code"], json!(code), "{sdk} {params}: {result}");
        assert_error(result, *status, code);
    }
    // The documented message, word for word, for one of them.
    assert_eq!(
        results[8]["message"],
        json!(
            "The length of the specified gateway description exceeds the maximum limit. The description cannot exceed 255 characters."
        )
    );

    // A rule someone else put on the bucket is respected, not overwritten.
    c.set_foreign_rule("bk1", "logs/");
    let clash = c.sdk(
        "tea",
        "CreateExpressSync",
        create_params("g3", "bk1", "logs/2024/"),
    );
    assert_error(&clash, 400, "ExpressSyncNotificationEventConflict");
    assert_eq!(group_count(&c), 1, "no failed create left a group");
    let state = c.cloud_state(&["bk1"]);
    assert_eq!(
        state["topics"].as_array().map(Vec::len),
        Some(1),
        "no failed create left a topic: {state}"
    );
    let ids: Vec<&str> = state["notifications"]["bk1"]
        .as_array()
        .expect("rules")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 2, "{state}");
    assert!(ids.contains(&"foreign-tool"), "{state}");

    // ValidateExpressSyncConfig reports the same checks without creating anything.
    let v = c.sdk_batch(&[
        (
            "tea",
            "ValidateExpressSyncConfig",
            create_params("g4", "bk1", "c/"),
        ),
        (
            "tea",
            "ValidateExpressSyncConfig",
            create_params("9bad", "bk1", "c/"),
        ),
    ]);
    assert_eq!(assert_ok(&v[0])["IsValid"], json!(true));
    assert_eq!(assert_ok(&v[1])["IsValid"], json!(false));
    assert!(
        v[1]["body"]["ValidateMessage"]
            .as_str()
            .is_some_and(|m| m.starts_with("InvalidExpressSyncName"))
    );

    // The group limit (2 in this config), then the region list from the file.
    assert_ok(&c.sdk("tea", "CreateExpressSync", json!({"Name": "second", "BucketRegion": "cn-hangzhou", "BucketName": "bk1", "BucketPrefix": "c/"})));
    let over = c.sdk(
        "tea",
        "CreateExpressSync",
        create_params("third", "bk1", "d/"),
    );
    assert_error(&over, 400, "ExpressSyncNotificationEventLimitExceed");
    assert_eq!(group_count(&c), 2);
}

#[test]
fn share_actions_documented_errors_and_hostile_input_change_nothing() {
    let peer = Peer::start();
    peer.make_bucket("bk1");
    peer.make_bucket("bk2");
    let c = Control::start(&peer);
    let gw = c.add_gateway("edge");
    c.register(&gw, &[("s1", "bk1", ""), ("s2", "bk2", "")]);
    let created = c.sdk("tea", "CreateExpressSync", create_params("g1", "bk1", ""));
    let id = assert_ok(&created)["ExpressSyncId"]
        .as_str()
        .expect("id")
        .to_string();
    let ok_shares = json!({gw.0.clone(): "s1"}).to_string();
    let cases: Vec<(&str, &str, Value, u64, &str)> = vec![
        (
            "tea",
            "AddSharesToExpressSync",
            json!({"GatewayShares": ok_shares}),
            400,
            "EmptyExpressSyncId",
        ),
        (
            "rpc",
            "AddSharesToExpressSync",
            json!({"ExpressSyncId": "  ", "GatewayShares": ok_shares}),
            400,
            "EmptyExpressSyncId",
        ),
        (
            "tea",
            "AddSharesToExpressSync",
            json!({"ExpressSyncId": "sync-nope", "GatewayShares": ok_shares}),
            400,
            "ExpressSyncNotExist",
        ),
        (
            "rpc",
            "AddSharesToExpressSync",
            json!({"ExpressSyncId": "sync-1' OR '1'='1", "GatewayShares": ok_shares}),
            400,
            "ExpressSyncNotExist",
        ),
        (
            "tea",
            "AddSharesToExpressSync",
            json!({"ExpressSyncId": id, "GatewayShares": "{\"gw-unknown\":\"s1\"}"}),
            400,
            "GatewayNotExist",
        ),
        (
            "tea",
            "AddSharesToExpressSync",
            json!({"ExpressSyncId": id}),
            400,
            "MissingParameter",
        ),
        (
            "rpc",
            "AddSharesToExpressSync",
            json!({"ExpressSyncId": id, "GatewayShares": "{not json"}),
            400,
            "InvalidParameter",
        ),
        (
            "tea",
            "AddSharesToExpressSync",
            json!({"ExpressSyncId": id, "GatewayShares": "[\"s1\"]"}),
            400,
            "InvalidParameter",
        ),
        (
            "tea",
            "AddSharesToExpressSync",
            json!({"ExpressSyncId": id, "GatewayShares": json!({gw.0.clone(): 5}).to_string()}),
            400,
            "InvalidParameter",
        ),
        (
            "rpc",
            "AddSharesToExpressSync",
            json!({"ExpressSyncId": id, "GatewayShares": json!({gw.0.clone(): "../../etc/passwd"}).to_string()}),
            400,
            "InvalidParameter",
        ),
        (
            "tea",
            "AddSharesToExpressSync",
            json!({"ExpressSyncId": id, "GatewayShares": json!({gw.0.clone(): "x".repeat(30_000)}).to_string()}),
            400,
            "InvalidParameter",
        ),
        (
            "tea",
            "AddSharesToExpressSync",
            json!({"ExpressSyncId": id, "GatewayShares": json!({gw.0.clone(): "s1,nope"}).to_string()}),
            400,
            "ShareNotExist",
        ),
        (
            "rpc",
            "AddSharesToExpressSync",
            json!({"ExpressSyncId": id, "GatewayShares": json!({gw.0.clone(): "s1,s2"}).to_string()}),
            400,
            "ConflictExpressSyncConfig",
        ),
        (
            "tea",
            "DescribeExpressSyncShares",
            json!({}),
            400,
            "EmptyExpressSyncId",
        ),
        (
            "rpc",
            "DescribeExpressSyncShares",
            json!({"ExpressSyncIds": " , ,"}),
            400,
            "EmptyExpressSyncId",
        ),
        (
            "tea",
            "DescribeExpressSyncShares",
            json!({"ExpressSyncIds": format!("{id},sync-missing")}),
            400,
            "ExpressSyncNotExist",
        ),
        (
            "rpc",
            "DescribeExpressSyncShares",
            json!({"ExpressSyncIds": id, "IsExternal": "maybe"}),
            400,
            "InvalidParameter",
        ),
        (
            "tea",
            "DescribeExpressSyncShares",
            json!({"ExpressSyncIds": id, "IsExternal": 1}),
            400,
            "InvalidParameter",
        ),
        (
            "rpc",
            "RemoveSharesFromExpressSync",
            json!({"ExpressSyncId": id, "GatewayShares": ok_shares}),
            400,
            "ShareNotInExpressSync",
        ),
        (
            "tea",
            "DeleteExpressSync",
            json!({}),
            400,
            "EmptyExpressSyncId",
        ),
        (
            "tea",
            "DeleteExpressSync",
            json!({"ExpressSyncId": "sync-nope"}),
            400,
            "ExpressSyncNotExist",
        ),
        ("rpc", "DescribeTasks", json!({}), 400, "MissingParameter"),
        (
            "tea",
            "DescribeTasks",
            json!({"TargetId": id, "PageSize": 1000}),
            400,
            "InvalidParameter",
        ),
    ];
    let calls: Vec<(&str, &str, Value)> = cases
        .iter()
        .map(|(sdk, a, p, _, _)| (*sdk, *a, p.clone()))
        .collect();
    let results = c.sdk_batch(&calls);
    for ((sdk, action, params, status, code), result) in cases.iter().zip(&results) {
        assert_eq!(
            result["code"],
            json!(code),
            "{sdk} {action} {params}: {result}"
        );
        assert_error(result, *status, code);
    }
    assert_eq!(
        results[2]["message"],
        json!("The specified sync group does not exist. You must specify a valid parameter.")
    );
    assert_eq!(
        results[4]["message"],
        json!("The specified gateway does not exist. You must specify a valid parameter.")
    );

    // Nothing changed: no member, no queue, no subscription.
    let shares = c.sdk(
        "tea",
        "DescribeExpressSyncShares",
        json!({"ExpressSyncIds": id}),
    );
    assert!(
        assert_ok(&shares)["Shares"]["Share"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{shares}"
    );
    let state = c.cloud_state(&["bk1"]);
    assert_eq!(state["queues"], json!([]), "{state}");
    assert_eq!(state["subscriptions"], json!([]), "{state}");

    // Hostile agent input is refused the same way.
    let (status, body) = c.agent(&gw, "POST", "/agent/v1/progress", &json!({"shares": [{"share_name": "s1", "sync_progress": 101, "express_sync_state": "MNSHealthy"}]}));
    assert_eq!(
        (status, body["Code"].as_str()),
        (400, Some("InvalidBody")),
        "{body}"
    );
    let (status, body) = c.agent(&gw, "POST", "/agent/v1/progress", &json!({"shares": [{"share_name": "s1", "sync_progress": 1, "express_sync_state": "Hacked"}]}));
    assert_eq!(
        (status, body["Code"].as_str()),
        (400, Some("InvalidBody")),
        "{body}"
    );
    let (status, body) = c.agent(
        &gw,
        "POST",
        "/agent/v1/register",
        &json!({"shares": "nope"}),
    );
    assert_eq!(
        (status, body["Code"].as_str()),
        (400, Some("InvalidBody")),
        "{body}"
    );
    let (status, body) = c.agent(
        &gw,
        "POST",
        "/agent/v1/register",
        &json!({"shares": [{"name": "../x", "bucket_region": "us-east-1", "bucket_name": "bk1"}]}),
    );
    assert_eq!(
        (status, body["Code"].as_str()),
        (400, Some("InvalidBody")),
        "{body}"
    );
    let forged = (gw.0.clone(), "not-the-secret".to_string());
    let (status, body) = c.agent(&forged, "GET", "/agent/v1/assignments", &json!(null));
    assert_eq!(
        (status, body["Code"].as_str()),
        (401, Some("InvalidGatewaySignature")),
        "{body}"
    );
}

#[test]
fn signatures_are_verified_with_replay_protection() {
    let peer = Peer::start();
    let c = Control::start(&peer);
    let results = c.sdk_raw_batch(&[
        json!({"sdk": "tea", "action": "DescribeExpressSyncs", "secret": "wrong"}),
        json!({"sdk": "rpc", "action": "DescribeExpressSyncs", "secret": "wrong"}),
        json!({"sdk": "tea", "action": "DescribeExpressSyncs", "ak": "nobody"}),
        json!({"sdk": "rpc", "action": "DescribeExpressSyncs", "ak": "nobody"}),
    ]);
    assert_error(&results[0], 400, "SignatureDoesNotMatch");
    // The RPC SDK recognises our string-to-sign and names the real problem.
    assert_error(&results[1], 400, "InvalidAccessKeySecret");
    assert_error(&results[2], 404, "InvalidAccessKeyId.NotFound");
    assert_error(&results[3], 404, "InvalidAccessKeyId.NotFound");

    // Unsigned: an error, never data.
    let (status, body) = c.raw(format!("POST /?Action=DescribeExpressSyncs&Version=2018-05-11 HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\r\n", c.addr).as_bytes());
    assert_eq!(status, 400);
    assert!(
        body.contains("\"Code\":\"IncompleteSignature\"") && !body.contains("ExpressSyncs"),
        "{body}"
    );

    // A correctly signed request works once; the same bytes again are a replay.
    let request = c.rpc_signed(
        "DescribeExpressSyncs",
        &[],
        now(),
        "nonce-1",
        control_support::SK,
    );
    let (status, body) = c.raw(&request);
    assert_eq!(status, 200, "{body}");
    let (status, body) = c.raw(&request);
    assert_eq!(status, 400);
    assert!(body.contains("SignatureNonceUsed"), "{body}");
    // Signed 20 minutes ago: outside the window.
    let stale = c.rpc_signed(
        "DescribeExpressSyncs",
        &[],
        now() - 20 * 60,
        "nonce-2",
        control_support::SK,
    );
    let (status, body) = c.raw(&stale);
    assert_eq!(status, 400);
    assert!(body.contains("InvalidTimeStamp.Expired"), "{body}");
    // An unknown action, properly signed.
    let unknown = c.rpc_signed("DropEverything", &[], now(), "nonce-3", control_support::SK);
    let (status, body) = c.raw(&unknown);
    assert_eq!(status, 404);
    assert!(body.contains("InvalidAction.NotFound"), "{body}");
    // Oversized requests are cut off before anything is parsed.
    let (status, _) = c.raw(
        format!(
            "POST /?Name={} HTTP/1.1\r\nHost: x\r\n\r\n",
            "a".repeat(70_000)
        )
        .as_bytes(),
    );
    assert_eq!(status, 431);
    assert!(
        c.log().contains(&format!("by {AK}: 200")),
        "the log names the caller"
    );
    assert!(
        !c.log().contains(control_support::SK),
        "the log never shows the secret"
    );
}

#[test]
fn state_survives_a_restart_and_sigterm_stops_cleanly() {
    let peer = Peer::start();
    peer.make_bucket("bk1");
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let mut c = Control::start_in(&peer, &data, &[]);
    let id = assert_ok(&c.sdk("tea", "CreateExpressSync", create_params("keep", "bk1", "")))["ExpressSyncId"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(c.terminate(), Some(0), "SIGTERM is a clean stop");
    assert!(c.log().contains("stopped"));
    let c2 = Control::start_in(&peer, &data, &[]);
    let list = c2.sdk("rpc", "DescribeExpressSyncs", json!({}));
    assert_eq!(
        assert_ok(&list)["ExpressSyncs"]["ExpressSync"][0]["ExpressSyncId"],
        json!(id)
    );
}

fn share_names(result: &Value) -> Vec<String> {
    assert_ok(result)["Shares"]["Share"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|s| s["ShareName"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn bucket_infos(result: &Value) -> Vec<(String, String)> {
    assert_ok(result)["BucketInfos"]["BucketInfo"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|b| {
                    (
                        b["BucketName"].as_str().unwrap_or("?").to_string(),
                        b["BucketPrefix"].as_str().unwrap_or("?").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Issue 3: an agent configured with only the control endpoint, its gateway id/secret and its
/// share directories gets bucket, prefix and queue from the group an operator adds it to.
#[test]
fn an_unbound_share_gets_bucket_prefix_and_queue_from_its_group() {
    let peer = Peer::start();
    peer.make_bucket("photos");
    peer.make_bucket("archive");
    let c = Control::start(&peer);
    let gw = c.add_gateway("edge-02");

    // Half a bucket is refused, like any other bad registration.
    let (status, body) = c.agent(
        &gw,
        "POST",
        "/agent/v1/register",
        &json!({"shares": [{"name": "free", "bucket_name": "photos"}]}),
    );
    assert_eq!(
        (status, body["Code"].as_str()),
        (400, Some("InvalidBody")),
        "{body}"
    );
    // `free` names no bucket at all; `cam` is bound to photos.
    let (status, body) = c.agent(
        &gw,
        "POST",
        "/agent/v1/register",
        &json!({"shares": [
            {"name": "free"},
            {"name": "cam", "bucket_region": "us-east-1", "bucket_name": "photos"},
        ]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["shares"], json!(["cam", "free"]));

    let created = c.sdk_batch(&[
        (
            "tea",
            "CreateExpressSync",
            create_params("on-photos", "photos", "data/"),
        ),
        (
            "rpc",
            "CreateExpressSync",
            create_params("on-archive", "archive", ""),
        ),
    ]);
    let on_photos = assert_ok(&created[0])["ExpressSyncId"]
        .as_str()
        .expect("id")
        .to_string();
    let on_archive = assert_ok(&created[1])["ExpressSyncId"]
        .as_str()
        .expect("id")
        .to_string();
    let free = json!({gw.0.clone(): "free"}).to_string();

    let r = c.sdk_batch(&[
        (
            "tea",
            "DescribeExpressSyncShares",
            json!({"ExpressSyncIds": on_photos, "IsExternal": true}),
        ),
        (
            "rpc",
            "DescribeExpressSyncShares",
            json!({"ExpressSyncIds": on_archive, "IsExternal": "True"}),
        ),
        ("tea", "DescribeSharesBucketInfoForExpressSync", json!({})),
        (
            "tea",
            "AddSharesToExpressSync",
            json!({"ExpressSyncId": on_photos, "GatewayShares": free}),
        ),
        (
            "rpc",
            "DescribeExpressSyncShares",
            json!({"ExpressSyncIds": on_photos, "IsExternal": "False"}),
        ),
        (
            "tea",
            "DescribeExpressSyncShares",
            json!({"ExpressSyncIds": on_archive, "IsExternal": true}),
        ),
        ("tea", "DescribeSharesBucketInfoForExpressSync", json!({})),
    ]);
    assert_eq!(share_names(&r[0]), vec!["cam", "free"]);
    assert_eq!(
        share_names(&r[1]),
        vec!["free"],
        "an unbound share can join a group on any bucket; cam cannot"
    );
    assert_eq!(
        bucket_infos(&r[2]),
        vec![("photos".to_string(), String::new())],
        "an unbound share has no bucket to list"
    );
    let added = assert_ok(&r[3]);
    let queue_name = added["MnsQueues"].as_str().expect("MnsQueues").to_string();
    assert!(
        queue_name.starts_with(&format!("sgw-express-sync-queue-{}-", gw.0)),
        "{added}"
    );
    assert_eq!(share_names(&r[4]), vec!["free"]);
    assert_eq!(
        r[4]["body"]["Shares"]["Share"][0]["MnsQueue"],
        json!(queue_name)
    );
    assert!(
        share_names(&r[5]).is_empty(),
        "a member is not addable elsewhere"
    );
    assert_eq!(
        bucket_infos(&r[6]),
        vec![
            ("photos".to_string(), String::new()),
            ("photos".to_string(), "data/".to_string())
        ],
        "bound by its group, the share shows the group's bucket and prefix"
    );

    // The agent learns everything from its assignments, and the queue really carries the
    // bucket's events under the group's prefix.
    let (status, assignments) = c.agent(&gw, "GET", "/agent/v1/assignments", &json!(null));
    assert_eq!(status, 200, "{assignments}");
    let list = assignments["assignments"].as_array().expect("assignments");
    assert_eq!(list.len(), 1, "{assignments}");
    let a = &list[0];
    assert_eq!(a["share_name"], "free");
    assert_eq!(a["express_sync_id"], json!(on_photos));
    assert_eq!(a["bucket_region"], "us-east-1");
    assert_eq!(a["bucket_name"], "photos");
    assert_eq!(a["bucket_prefix"], "data/");
    assert_eq!(a["queue_name"], json!(queue_name));
    assert_eq!(a["endpoint"], json!(peer.endpoint));
    assert_eq!(a["region"], "us-east-1");
    let queue_url = a["queue_url"].as_str().expect("queue_url").to_string();
    peer.put("photos", "data/new.txt", b"hello");
    let mut keys = Vec::new();
    common::wait_for(
        Duration::from_secs(10),
        "the S3 event in the unbound share's queue",
        || {
            for body in peer.receive(&queue_url, 30, true) {
                for rec in body["Records"].as_array().into_iter().flatten() {
                    let raw = rec["s3"]["object"]["key"].as_str().unwrap_or("");
                    keys.push(sgw_control::params::form_decode(raw).expect("encoded key"));
                }
            }
            !keys.is_empty()
        },
    );
    assert_eq!(keys, vec!["data/new.txt".to_string()]);

    // Removed, it is unbound again: no assignment, no queue, addable to the other bucket.
    let r = c.sdk_batch(&[
        (
            "rpc",
            "RemoveSharesFromExpressSync",
            json!({"ExpressSyncId": on_photos, "GatewayShares": free}),
        ),
        (
            "tea",
            "DescribeExpressSyncShares",
            json!({"ExpressSyncIds": on_archive, "IsExternal": true}),
        ),
        ("tea", "DescribeSharesBucketInfoForExpressSync", json!({})),
    ]);
    assert_ok(&r[0]);
    assert_eq!(share_names(&r[1]), vec!["free"]);
    assert_eq!(
        bucket_infos(&r[2]),
        vec![("photos".to_string(), String::new())]
    );
    let (_, assignments) = c.agent(&gw, "GET", "/agent/v1/assignments", &json!(null));
    assert_eq!(assignments["assignments"], json!([]), "{assignments}");
    assert_eq!(c.cloud_state(&["photos"])["queues"], json!([]));

    // Its next group decides its bucket; deleting that group unbinds it as well.
    assert_ok(&c.sdk(
        "tea",
        "AddSharesToExpressSync",
        json!({"ExpressSyncId": on_archive, "GatewayShares": free}),
    ));
    let (_, assignments) = c.agent(&gw, "GET", "/agent/v1/assignments", &json!(null));
    assert_eq!(assignments["assignments"][0]["bucket_name"], "archive");
    assert_eq!(assignments["assignments"][0]["bucket_prefix"], "");
    let r = c.sdk_batch(&[
        (
            "rpc",
            "DeleteExpressSync",
            json!({"ExpressSyncId": on_archive}),
        ),
        (
            "tea",
            "DescribeExpressSyncShares",
            json!({"ExpressSyncIds": on_photos, "IsExternal": true}),
        ),
    ]);
    assert_ok(&r[0]);
    assert_eq!(share_names(&r[1]), vec!["cam", "free"]);
    let (_, assignments) = c.agent(&gw, "GET", "/agent/v1/assignments", &json!(null));
    assert_eq!(assignments["assignments"], json!([]), "{assignments}");
}
