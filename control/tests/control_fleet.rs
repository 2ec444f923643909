//! What lets one sgw-control serve a fleet: an unchanged assignments poll is a bodiless 304,
//! `/metrics` counts what an operator alerts on, `/healthz` answers a load balancer.

#[path = "../../tests/common/mod.rs"]
mod common;
mod control_support;

use std::time::Duration;

use common::Peer;
use control_support::{Control, assert_ok, connect_from};
use serde_json::json;

/// Sends `request` with `Connection: close` and returns (status, head lower-cased, body).
fn exchange(c: &Control, request: &[u8]) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s = connect_from(None, &c.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// A signed assignments poll, optionally conditional.
fn poll(c: &Control, gw: &(String, String), etag: Option<&str>) -> (u16, Option<String>, String) {
    let raw = c.agent_request(gw, "GET", "/agent/v1/assignments", &json!(null));
    let mut text = String::from_utf8(raw).expect("ascii request");
    let extra = match etag {
        Some(e) => format!("Connection: close\r\nIf-None-Match: {e}\r\n\r\n"),
        None => "Connection: close\r\n\r\n".to_string(),
    };
    text.truncate(text.len() - 2);
    text.push_str(&extra);
    let (status, head, body) = exchange(c, text.as_bytes());
    let etag = head
        .lines()
        .find_map(|l| l.strip_prefix("etag:"))
        .map(|v| v.trim().to_string());
    (status, etag, body)
}

fn get(c: &Control, path: &str) -> (u16, String) {
    let (status, _, body) = exchange(
        c,
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            c.addr
        )
        .as_bytes(),
    );
    (status, body)
}

fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn an_unchanged_poll_is_a_304_and_metrics_count_it() {
    let peer = Peer::start();
    peer.make_bucket("photos");
    let c = Control::start(&peer);
    let gw = c.add_gateway("edge-01");
    c.register(&gw, &[("cam", "photos", "")]);

    let (status, etag, body) = poll(&c, &gw, None);
    assert_eq!(status, 200, "{body}");
    let etag = etag.expect("an ETag on the assignments");
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");

    // Same assignments: 304, no body.
    let (status, again, body) = poll(&c, &gw, Some(&etag));
    assert_eq!((status, body.as_str()), (304, ""));
    assert_eq!(again.as_deref(), Some(etag.as_str()));
    // A stale or foreign tag gets the full answer.
    let (status, _, body) = poll(&c, &gw, Some("\"0000\""));
    assert_eq!(status, 200);
    assert!(body.contains("\"assignments\""), "{body}");

    // The share joins a group: the next conditional poll brings the change.
    let created = c.sdk(
        "tea",
        "CreateExpressSync",
        json!({"Name": "g1", "BucketRegion": "us-east-1", "BucketName": "photos"}),
    );
    let sync_id = assert_ok(&created)["ExpressSyncId"]
        .as_str()
        .unwrap()
        .to_string();
    let shares = json!({gw.0.clone(): "cam"}).to_string();
    assert_ok(&c.sdk(
        "tea",
        "AddSharesToExpressSync",
        json!({"ExpressSyncId": sync_id, "GatewayShares": shares}),
    ));
    let (status, changed, body) = poll(&c, &gw, Some(&etag));
    assert_eq!(status, 200, "{body}");
    assert_ne!(changed.as_deref(), Some(etag.as_str()));
    assert!(body.contains(&sync_id), "{body}");

    // A forged poll is still refused before any ETag is compared.
    let forged = (gw.0.clone(), "wrong-secret".to_string());
    let (status, _, _) = poll(&c, &forged, Some(&etag));
    assert_eq!(status, 401);

    let (status, metrics) = get(&c, "/metrics");
    assert_eq!(status, 200);
    let polls = |code: &str| {
        sample(
            &metrics,
            &format!(
                "sgw_control_requests_total{{endpoint=\"agent\",action=\"assignments\",code=\"{code}\"}}"
            ),
        )
    };
    assert_eq!(polls("200"), Some(3.0), "{metrics}");
    assert_eq!(polls("304"), Some(1.0), "{metrics}");
    assert_eq!(polls("401"), Some(1.0), "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            "sgw_control_requests_total{endpoint=\"api\",action=\"CreateExpressSync\",code=\"200\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "sgw_control_gateways "),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "sgw_control_gateways_seen "),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "sgw_control_express_syncs "),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "sgw_control_provision_failures_total{operation=\"create_queue\"}"
        ),
        Some(0.0)
    );
    assert!(
        metrics.contains("sgw_control_request_duration_seconds_bucket{endpoint=\"agent\",action=\"assignments\",le=\"+Inf\"} 5"),
        "{metrics}"
    );
    // No secret or name leaks into the exposition.
    assert!(!metrics.contains(&gw.1) && !metrics.contains("photos") && !metrics.contains(&gw.0));

    let (status, body) = get(&c, "/healthz");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
}

#[test]
fn hostile_actions_do_not_grow_the_metric_series() {
    let peer = Peer::start();
    let c = Control::start(&peer);
    // Unsigned junk on every path, with made-up action names.
    for i in 0..50 {
        let _ = get(&c, &format!("/?Action=Evil{i}&Format=JSON"));
        let _ = get(&c, &format!("/agent/v1/nothing-{i}"));
        let _ = get(&c, &format!("/random/{i}"));
    }
    let (_, metrics) = get(&c, "/metrics");
    let series = metrics
        .lines()
        .filter(|l| l.starts_with("sgw_control_requests_total"))
        .count();
    assert!(series <= 6, "{series} series:\n{metrics}");
    assert!(
        !metrics.contains("Evil") && !metrics.contains("nothing-"),
        "{metrics}"
    );
}
