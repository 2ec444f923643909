//! Proves the real peer behaves the way the agent's integration tests rely on: raw SNS->SQS
//! delivery of S3 events, the prefix filter, the test event, CRC-64/NVME stored for normal
//! puts, the corrupt-object fixture, deterministic bulk content, and per-test isolation.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::{Peer, content_for_key, many_key};
use serde_json::Value;

const S3_CRC: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_NVME);

fn crc64nvme_b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(S3_CRC.checksum(data).to_be_bytes())
}

/// Drains the queue (deleting), returning every message body.
fn drain(peer: &Peer, queue_url: &str, expected: usize) -> Vec<Value> {
    let mut bodies = Vec::new();
    common::wait_for(Duration::from_secs(10), "all events to be received", || {
        bodies.extend(peer.receive(queue_url, 30, true));
        bodies.len() >= expected
    });
    bodies
}

#[test]
fn queue_gets_test_event_and_one_raw_event_per_change_under_prefix() {
    let peer = Peer::start();
    peer.make_bucket("smoke-bucket");
    let (topic_arn, queue_url) = peer.wire_events("smoke-bucket", "in/", "smoke");
    assert!(topic_arn.ends_with(":smoke"), "topic arn: {topic_arn}");

    peer.put("smoke-bucket", "in/a.txt", "alpha");
    peer.put("smoke-bucket", "in/sub dir/ü.txt", "unicode");
    peer.put("smoke-bucket", "out/ignored.txt", "outside the prefix");
    assert_eq!(peer.put_many("smoke-bucket", "in/many/", 3, 10), 3);
    peer.delete("smoke-bucket", "in/a.txt");

    // Test event + 2 puts + 3 bulk puts + 1 delete; nothing for out/.
    let expected = 1 + 2 + 3 + 1;
    common::wait_for(Duration::from_secs(10), "queue depth 7", || {
        peer.queue_depth(&queue_url) >= expected as u64
    });
    assert_eq!(peer.queue_depth(&queue_url), expected as u64);

    let bodies = drain(&peer, &queue_url, expected);
    assert_eq!(bodies.len(), expected, "bodies: {bodies:#?}");
    let test_events = bodies
        .iter()
        .filter(|b| b["Event"] == "s3:TestEvent" && b["Bucket"] == "smoke-bucket")
        .count();
    assert_eq!(test_events, 1, "bodies: {bodies:#?}");

    // Raw delivery: the body is the S3 event itself, not an SNS envelope around it.
    let mut seen: Vec<(String, String)> = bodies
        .iter()
        .filter(|b| b.get("Records").is_some())
        .map(|b| {
            assert!(b.get("Type").is_none(), "SNS envelope, not raw: {b}");
            let record = &b["Records"][0];
            let name = record["eventName"].as_str().unwrap_or_default().to_owned();
            let key = record["s3"]["object"]["key"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            (name, key)
        })
        .collect();
    seen.sort();
    // moto form-encodes keys (space as +) and, unlike AWS, encodes / as %2F too.
    let mut wanted: Vec<(String, String)> = vec![
        ("ObjectCreated:Put".into(), "in%2Fa.txt".into()),
        (
            "ObjectCreated:Put".into(),
            "in%2Fsub+dir%2F%C3%BC.txt".into(),
        ),
        ("ObjectCreated:Put".into(), "in%2Fmany%2F000000.bin".into()),
        ("ObjectCreated:Put".into(), "in%2Fmany%2F000001.bin".into()),
        ("ObjectCreated:Put".into(), "in%2Fmany%2F000002.bin".into()),
        ("ObjectRemoved:Delete".into(), "in%2Fa.txt".into()),
    ];
    wanted.sort();
    assert_eq!(seen, wanted);
    assert_eq!(peer.queue_depth(&queue_url), 0);
}

#[test]
fn normal_puts_carry_crc64nvme_and_bulk_content_follows_the_key() {
    let peer = Peer::start();
    peer.make_bucket("crc-bucket");

    let put = peer.put("crc-bucket", "hello", "hello world!");
    // Reference vector from protocols.md: CRC-64/NVME("hello world!") = 0xD9160D1FA8E418E3.
    assert_eq!(put["crc64nvme"], "2RYNH6jkGOM=");
    assert_eq!(
        peer.head("crc-bucket", "hello")["crc64nvme"],
        "2RYNH6jkGOM="
    );

    assert_eq!(peer.put_many("crc-bucket", "bulk/", 5, 1000), 5);
    let listed = peer.list("crc-bucket", "bulk/");
    let keys: Vec<String> = (0..5).map(|i| many_key("bulk/", i)).collect();
    assert_eq!(
        listed,
        keys.iter().map(|k| (k.clone(), 1000)).collect::<Vec<_>>()
    );
    for key in &keys {
        let expected = content_for_key(key, 1000);
        assert_eq!(peer.get("crc-bucket", key), expected, "body of {key}");
        assert_eq!(
            peer.head("crc-bucket", key)["crc64nvme"],
            crc64nvme_b64(&expected).as_str(),
            "stored CRC of {key}"
        );
    }
}

#[test]
fn corrupt_fixture_serves_intact_body_with_wrong_crc64nvme() {
    let peer = Peer::start();
    peer.make_bucket("bad-bucket");
    let out = peer.put_corrupt("bad-bucket", "dir/bad.txt", "corrupt me");

    let true_crc = crc64nvme_b64(b"corrupt me");
    assert_eq!(out["true_crc64nvme"], true_crc.as_str());
    let head = peer.head("bad-bucket", "dir/bad.txt");
    assert_eq!(head["crc64nvme"], out["stored_crc64nvme"]);
    assert_ne!(head["crc64nvme"], true_crc.as_str());
    assert_eq!(peer.get("bad-bucket", "dir/bad.txt"), b"corrupt me");
}

#[test]
fn peers_are_isolated_and_stop_on_drop() {
    let first = Peer::start();
    let second = Peer::start();
    assert_ne!(first.port, second.port);
    first.make_bucket("only-in-first");
    first.put("only-in-first", "k", "v");
    assert_eq!(first.list("only-in-first", ""), vec![("k".to_owned(), 1)]);

    second.make_bucket("only-in-first");
    assert!(second.list("only-in-first", "").is_empty());

    first.reset();
    first.make_bucket("after-reset");
    assert!(first.list("after-reset", "").is_empty());

    let port = second.port;
    drop(second);
    let refused = std::net::TcpStream::connect_timeout(
        &([127, 0, 0, 1], port).into(),
        Duration::from_secs(1),
    )
    .is_err();
    assert!(refused, "moto on port {port} still answers after drop");
}
