//! The S3 and SQS clients against a real peer (moto) over loopback: paging, key encoding,
//! checksums, ranges, preconditions, the queue round trip, and the plain-http guard. One
//! test uses a hand-made HTTP server to cut a body short.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{Peer, content_for_key, many_key};
use sgw_agent::cloud::s3::{S3Client, S3Config};
use sgw_agent::cloud::sigv4::Credentials;
use sgw_agent::cloud::sqs::{SqsClient, SqsConfig};
use sgw_agent::cloud::{CloudError, EventQueue, ObjectStore};

const S3_CRC: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_NVME);

fn credentials() -> Credentials {
    Credentials {
        access_key_id: "testing".into(),
        secret_access_key: "testing".into(),
        session_token: None,
    }
}

fn s3(endpoint: &str, bucket: &str) -> S3Client {
    S3Client::new(S3Config {
        endpoint: endpoint.into(),
        region: "us-east-1".into(),
        bucket: bucket.into(),
        credentials: credentials(),
        allow_http: true,
        max_attempts: 2,
    })
    .expect("valid S3 config")
}

fn sqs(queue_url: &str) -> SqsClient {
    SqsClient::new(SqsConfig {
        queue_url: queue_url.into(),
        region: "us-east-1".into(),
        credentials: credentials(),
        allow_http: true,
    })
    .expect("valid SQS config")
}

fn read_all(mut body: Box<dyn Read + Send>) -> Vec<u8> {
    let mut out = Vec::new();
    body.read_to_end(&mut out).expect("body reads completely");
    out
}

/// Keys that break naive encoders: space, plus, percent, unicode, tilde, nested and doubled
/// slashes, query and fragment characters.
const AWKWARD_KEYS: [&str; 9] = [
    "p/a b.txt",
    "p/a+b.txt",
    "p/100%.txt",
    "p/%41.txt",
    "p/ünï/çødé €.txt",
    "p/~tilde~",
    "p/deep/er/and/deeper/x",
    "p/q?x=1&y=2#frag",
    "p/日本語/ファイル",
];

#[test]
fn list_pages_over_a_thousand_keys_with_awkward_names_in_byte_order() {
    let peer = Peer::start();
    peer.make_bucket("list-bucket");
    assert_eq!(peer.put_many("list-bucket", "p/many/", 1003, 3), 1003);
    for key in AWKWARD_KEYS {
        peer.put("list-bucket", key, key.as_bytes());
    }
    peer.put("list-bucket", "other/outside-prefix", "x");

    let client = s3(&peer.endpoint, "list-bucket");
    let mut keys: Vec<String> = Vec::new();
    let mut pages = 0;
    let mut token: Option<String> = None;
    loop {
        let page = client.list_page("p/", token.as_deref()).expect("list page");
        pages += 1;
        assert!(page.objects.len() <= 1000);
        for object in &page.objects {
            let expected_size = AWKWARD_KEYS
                .iter()
                .find(|k| **k == object.key)
                .map_or(3, |k| k.len() as u64);
            assert_eq!(object.size, expected_size, "{}", object.key);
            assert!(object.etag.is_some(), "moto lists ETags");
            assert!(object.last_modified > 1_600_000_000);
            keys.push(object.key.clone());
        }
        match page.next {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    assert!(pages >= 2, "1012 keys need two pages of 1000");

    let expected: BTreeSet<String> = (0..1003)
        .map(|i| many_key("p/many/", i))
        .chain(AWKWARD_KEYS.iter().map(|k| k.to_string()))
        .collect();
    // Byte order across page boundaries too, and exactly the keys under the prefix.
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "keys not in byte order"
    );
    assert_eq!(keys, expected.into_iter().collect::<Vec<_>>());
}

#[test]
fn head_reports_size_etag_and_crc_only_when_stored() {
    let peer = Peer::start();
    peer.make_bucket("head-bucket");
    let body = content_for_key("with-crc", 5000);
    let put = peer.put("head-bucket", "dir/with crc+%.bin", &body);
    peer.ctl(&[
        "put",
        "head-bucket",
        "no-crc.txt",
        "--text",
        "plain",
        "--checksum",
        "none",
    ]);
    let client = s3(&peer.endpoint, "head-bucket");

    let meta = client
        .head("dir/with crc+%.bin")
        .expect("head")
        .expect("exists");
    assert_eq!(meta.key, "dir/with crc+%.bin");
    assert_eq!(meta.size, 5000);
    assert_eq!(meta.etag.as_deref(), put["etag"].as_str());
    assert_eq!(meta.crc64nvme, Some(S3_CRC.checksum(&body)));
    let age = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
        - meta.last_modified;
    assert!((-5..300).contains(&age), "Last-Modified {age} s ago");

    let plain = client.head("no-crc.txt").expect("head").expect("exists");
    assert_eq!(plain.size, 5);
    assert_eq!(
        plain.crc64nvme, None,
        "peer stored no CRC-64 for this object"
    );

    assert_eq!(
        client.head("missing/key").expect("404 is not an error"),
        None
    );
}

#[test]
fn get_full_ranged_and_conditional() {
    let peer = Peer::start();
    peer.make_bucket("get-bucket");
    let key = "ünï/a b+c%.bin";
    let body = content_for_key(key, 100_000);
    peer.put("get-bucket", key, &body);
    let client = s3(&peer.endpoint, "get-bucket");

    let full = client.get(key, 0, None).expect("get");
    assert_eq!(full.offset, 0);
    assert_eq!(full.meta.size, 100_000);
    assert_eq!(full.meta.crc64nvme, Some(S3_CRC.checksum(&body)));
    let etag = full.meta.etag.clone().expect("etag");
    assert_eq!(read_all(full.body), body);

    let ranged = client.get(key, 60_000, Some(&etag)).expect("ranged get");
    assert_eq!(ranged.offset, 60_000);
    assert_eq!(ranged.meta.size, 100_000, "size is the whole object's");
    assert_eq!(read_all(ranged.body), &body[60_000..]);

    match client.get(key, 10, Some("0123456789abcdef0123456789abcdef")) {
        Err(CloudError::Service { status: 412, .. }) => {}
        Err(e) => panic!("expected 412, got {e}"),
        Ok(_) => panic!("expected 412, got a body"),
    }

    let err = client
        .get("no/such key", 0, None)
        .err()
        .expect("missing key");
    assert!(err.is_not_found(), "{err}");
    assert!(!err.is_retryable());
}

#[test]
fn missing_bucket_is_a_permanent_service_error() {
    let peer = Peer::start();
    let err = s3(&peer.endpoint, "no-such-bucket")
        .list_page("", None)
        .expect_err("no bucket");
    match &err {
        CloudError::Service {
            status: 404, code, ..
        } => assert_eq!(code, "NoSuchBucket"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(!err.is_retryable());
}

#[test]
fn sqs_receive_extend_and_delete_round_trip() {
    let peer = Peer::start();
    peer.make_bucket("q-bucket");
    let (_topic, queue_url) = peer.wire_events("q-bucket", "", "roundtrip");
    peer.put("q-bucket", "one.txt", "1");
    peer.put("q-bucket", "two.txt", "2");
    let queue = sqs(&queue_url);

    // The test event plus one event per put.
    let mut messages = Vec::new();
    common::wait_for(Duration::from_secs(15), "three messages", || {
        messages.extend(queue.receive(10, 1).expect("receive"));
        messages.len() >= 3
    });
    assert_eq!(messages.len(), 3);
    assert!(messages.iter().all(|m| m.receive_count == 1));
    assert!(messages.iter().any(|m| m.body.contains("one.txt")));
    assert!(messages.iter().any(|m| m.body.contains("s3:TestEvent")));

    // Visibility 0 makes one message visible again at once; its count goes up.
    let first = messages[0].clone();
    queue
        .extend_visibility(&first.receipt_handle, 0)
        .expect("change visibility");
    let again = queue.receive(10, 2).expect("receive again");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, first.id);
    assert_eq!(again[0].receive_count, 2);
    // A long extension keeps the others hidden.
    queue
        .extend_visibility(&again[0].receipt_handle, 600)
        .expect("extend");

    let handles: Vec<String> = std::iter::once(again[0].receipt_handle.clone())
        .chain(messages[1..].iter().map(|m| m.receipt_handle.clone()))
        .collect();
    let failed = queue.delete_batch(&handles).expect("delete batch");
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(peer.queue_depth(&queue_url), 0);

    // An empty long poll waits about as long as asked and returns nothing.
    let started = Instant::now();
    assert!(queue.receive(10, 1).expect("empty receive").is_empty());
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(
        queue
            .delete_batch(&[])
            .expect("nothing to delete")
            .is_empty()
    );
}

#[test]
fn sqs_missing_queue_is_a_permanent_service_error() {
    let peer = Peer::start();
    let queue = sqs(&format!("{}/123456789012/does-not-exist", peer.endpoint));
    let err = queue.receive(1, 0).expect_err("no queue");
    match &err {
        CloudError::Service {
            status: 400, code, ..
        } => {
            assert!(
                code.contains("NonExistentQueue") || code.contains("QueueDoesNotExist"),
                "{code}"
            )
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(!err.is_retryable());
}

#[test]
fn plain_http_endpoint_refused_without_allow_http() {
    let peer = Peer::start();
    let err = S3Client::new(S3Config {
        endpoint: peer.endpoint.clone(),
        region: "us-east-1".into(),
        bucket: "b".into(),
        credentials: credentials(),
        allow_http: false,
        max_attempts: 1,
    })
    .err()
    .expect("refused");
    assert!(
        err.contains(&peer.endpoint) && err.contains("allow_http"),
        "{err}"
    );

    let err = SqsClient::new(SqsConfig {
        queue_url: format!("{}/123456789012/q", peer.endpoint),
        region: "us-east-1".into(),
        credentials: credentials(),
        allow_http: false,
    })
    .err()
    .expect("refused");
    assert!(
        err.contains(&peer.endpoint) && err.contains("allow_http"),
        "{err}"
    );
}

/// A server that announces 1000 bytes and sends 100: the reader must fail, not end early.
#[test]
fn truncated_body_is_a_read_error() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut request = [0u8; 4096];
        let _ = stream.read(&mut request);
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\
                    Last-Modified: Mon, 12 Oct 2009 17:50:30 GMT\r\nETag: \"abc\"\r\n\r\n";
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(&[7u8; 100]);
        // Dropping the stream closes the connection mid-body.
    });
    let object = s3(&endpoint, "b")
        .get("k", 0, None)
        .expect("headers arrive");
    assert_eq!(object.meta.size, 1000);
    let mut body = object.body;
    let mut got = Vec::new();
    let err = body
        .read_to_end(&mut got)
        .expect_err("short body must fail");
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
    assert!(got.len() <= 100);
    server.join().expect("server thread");
}

/// A moto that checks SigV4 (after its first `INITIAL_NO_AUTH_ACTION_COUNT` calls, used to
/// create an IAM user). The shared harness's peer accepts any signature, so this one is
/// started here; it is killed on drop.
struct CheckingPeer {
    endpoint: String,
    child: std::process::Child,
}

impl Drop for CheckingPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Python run in the peer venv: an IAM user allowed everything, a bucket with awkward keys,
/// a queue with one message. Prints the user's key pair and the queue URL as JSON.
const CHECKING_PEER_SETUP: &str = r#"
import json, sys, boto3
from botocore.config import Config
endpoint = sys.argv[1]
kw = dict(endpoint_url=endpoint, region_name="us-east-1")
iam = boto3.client("iam", aws_access_key_id="setup", aws_secret_access_key="setup", **kw)
iam.create_user(UserName="agent")
policy = iam.create_policy(PolicyName="all", PolicyDocument=json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
iam.attach_user_policy(UserName="agent", PolicyArn=policy["Policy"]["Arn"])
key = iam.create_access_key(UserName="agent")["AccessKey"]
creds = dict(aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
s3 = boto3.client("s3", config=Config(s3={"addressing_style": "path"}), **creds, **kw)
s3.create_bucket(Bucket="signed")
for k in json.loads(sys.argv[2]):
    s3.put_object(Bucket="signed", Key=k, Body=k.encode())
sqs = boto3.client("sqs", **creds, **kw)
url = sqs.create_queue(QueueName="signed")["QueueUrl"]
sqs.send_message(QueueUrl=url, MessageBody="hello")
print(json.dumps({"id": key["AccessKeyId"], "secret": key["SecretAccessKey"], "queue_url": url}))
"#;

fn start_checking_peer() -> CheckingPeer {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = std::process::Command::new(common::venv_dir().join("bin").join("moto_server"))
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        // Four IAM calls create the user; everything after them is checked.
        .env("INITIAL_NO_AUTH_ACTION_COUNT", "4")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start moto_server");
    let peer = CheckingPeer {
        endpoint: format!("http://127.0.0.1:{port}"),
        child,
    };
    common::wait_for(Duration::from_secs(15), "moto to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    peer
}

#[test]
fn signatures_are_accepted_by_a_peer_that_checks_them() {
    let peer = start_checking_peer();
    let keys = serde_json::to_string(&AWKWARD_KEYS).expect("json");
    let output = std::process::Command::new(common::venv_python())
        .args(["-c", CHECKING_PEER_SETUP, &peer.endpoint, &keys])
        .output()
        .expect("run setup");
    assert!(
        output.status.success(),
        "setup failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let setup: serde_json::Value = serde_json::from_slice(&output.stdout).expect("setup JSON");
    let good = Credentials {
        access_key_id: setup["id"].as_str().expect("id").into(),
        secret_access_key: setup["secret"].as_str().expect("secret").into(),
        session_token: None,
    };
    let client = |credentials: Credentials| {
        S3Client::new(S3Config {
            endpoint: peer.endpoint.clone(),
            region: "us-east-1".into(),
            bucket: "signed".into(),
            credentials,
            allow_http: true,
            max_attempts: 1,
        })
        .expect("config")
    };
    let store = client(good.clone());

    // Prefix and keys with every awkward character go through path, query and signature.
    let page = store
        .list_page("p/ünï/", None)
        .expect("signed list with unicode prefix");
    assert_eq!(page.objects.len(), 1);
    let page = store.list_page("p/", None).expect("signed list");
    assert_eq!(page.objects.len(), AWKWARD_KEYS.len());
    for key in AWKWARD_KEYS {
        let meta = store.head(key).expect("signed head").expect("exists");
        assert_eq!(meta.size, key.len() as u64, "{key}");
        let object = store
            .get(key, 2, meta.etag.as_deref())
            .expect("signed ranged get");
        assert_eq!(read_all(object.body), &key.as_bytes()[2..], "{key}");
    }

    let queue = SqsClient::new(SqsConfig {
        queue_url: setup["queue_url"].as_str().expect("queue url").into(),
        region: "us-east-1".into(),
        credentials: good.clone(),
        allow_http: true,
    })
    .expect("config");
    let messages = queue.receive(10, 1).expect("signed receive");
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].body, "hello");
    assert!(
        queue
            .delete_batch(&[messages[0].receipt_handle.clone()])
            .expect("signed delete")
            .is_empty()
    );

    // The same calls with a wrong secret are refused, and not retried.
    let wrong = Credentials {
        secret_access_key: "not-the-secret".into(),
        ..good
    };
    let bad_queue = SqsClient::new(SqsConfig {
        queue_url: setup["queue_url"].as_str().expect("queue url").into(),
        region: "us-east-1".into(),
        credentials: wrong.clone(),
        allow_http: true,
    })
    .expect("config");
    match bad_queue.receive(1, 0).expect_err("wrong secret") {
        CloudError::Service {
            status: 403, code, ..
        } => assert_eq!(code, "SignatureDoesNotMatch"),
        other => panic!("unexpected {other:?}"),
    }
    let err = client(wrong)
        .list_page("p/", None)
        .expect_err("wrong secret");
    match &err {
        CloudError::Service {
            status: 403, code, ..
        } => assert_eq!(code, "SignatureDoesNotMatch"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(!err.is_retryable());
}
