//! Regression: "sixteen slow clients take sgw-control off the air". Connections that dribble
//! one byte every 2 s (more of them than the old server had request workers) must not keep an
//! honest, signed agent request from being answered promptly; the real binary on 127.0.0.1
//! port 0, slow clients from other loopback source addresses (127.0.0.0/8 is all local).
//!
//! Every loop here is bounded by a count and a deadline.

#[path = "../../tests/common/mod.rs"]
mod common;
mod control_support;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Peer;
use control_support::{Control, connect_from};
use serde_json::json;

/// How long an honest request may take while the slow clients are connected.
const PROMPT: Duration = Duration::from_secs(2);
/// Each slow client sends its next byte after this.
const DRIBBLE: Duration = Duration::from_secs(2);

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// `count` connections that each send one byte of a request head every [`DRIBBLE`], spread
/// over source addresses 127.0.0.2.. (`per_source` each) so that no single peer is over its
/// own limit, for `rounds` rounds or until `stop`. Returns how many connections were opened.
fn slow_clients(
    control: &Control,
    count: usize,
    per_source: usize,
    rounds: usize,
    stop: &AtomicBool,
) -> usize {
    let head = b"GET /health HTTP/1.1\r\nHost: slow\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut conns: Vec<TcpStream> = (0..count)
        .filter_map(|i| {
            let source = ip(2 + u8::try_from(i / per_source).expect("few sources"));
            connect_from(Some(source), &control.addr).ok()
        })
        .collect();
    let opened = conns.len();
    let deadline = Instant::now() + DRIBBLE * u32::try_from(rounds + 1).expect("rounds");
    for round in 0..rounds.min(head.len()) {
        for c in &mut conns {
            // A refused or cut-off connection just stops dribbling.
            let _ = c.write_all(&head[round..=round]);
        }
        let wake = Instant::now() + DRIBBLE;
        while Instant::now() < wake && Instant::now() < deadline {
            if stop.load(Ordering::SeqCst) {
                return opened;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    opened
}

/// While `count` slow clients are connected, three honest signed requests from 127.0.0.1 are
/// each answered 200 within [`PROMPT`].
fn honest_requests_are_answered_while_slow_clients_dribble(count: usize, per_source: usize) {
    let peer = Peer::start();
    let control = Control::start(&peer);
    let gateway = control.add_gateway("edge-slow");
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let dribbler = scope.spawn(|| slow_clients(&control, count, per_source, 5, &stop));
        // Let every slow connection be accepted and start its head.
        std::thread::sleep(Duration::from_millis(1500));
        let mut outcomes = Vec::new();
        for _ in 0..3 {
            let request =
                control.agent_request(&gateway, "GET", "/agent/v1/assignments", &json!(null));
            let started = Instant::now();
            let answer = control.raw_from(Some(ip(1)), &request, PROMPT + Duration::from_secs(3));
            outcomes.push((answer, started.elapsed()));
            std::thread::sleep(Duration::from_millis(500));
        }
        stop.store(true, Ordering::SeqCst);
        let opened = dribbler.join().expect("dribbler");
        assert_eq!(opened, count, "every slow connection was opened");
        for (answer, took) in &outcomes {
            match answer {
                Ok((status, body)) => {
                    assert_eq!(*status, 200, "honest request refused: {body}");
                    assert!(
                        *took <= PROMPT,
                        "honest request took {took:?} with {count} slow clients"
                    );
                }
                Err(e) => panic!(
                    "honest request not answered within {:?} with {count} slow clients: {e}\n{}",
                    PROMPT + Duration::from_secs(3),
                    control.log()
                ),
            }
        }
    });
}

#[test]
fn sixteen_slow_clients_do_not_take_the_endpoint_off_the_air() {
    honest_requests_are_answered_while_slow_clients_dribble(16, 16);
}

#[test]
fn sixty_four_slow_clients_do_not_take_the_endpoint_off_the_air() {
    honest_requests_are_answered_while_slow_clients_dribble(64, 16);
}

/// One address over its connection limit is refused at once (503) while another address is
/// still served, and gets its connections back when it closes some.
#[test]
fn a_peer_over_its_connection_limit_is_refused_while_others_are_served() {
    let peer = Peer::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("control.toml");
    std::fs::write(
        &config,
        "max_connections_per_peer = 4\nidle_timeout_secs = 60\n",
    )
    .expect("config");
    let control = Control::start_in(
        &peer,
        &tmp.path().join("data"),
        &["-c", config.to_str().expect("utf-8 path")],
    );
    let gateway = control.add_gateway("edge-limits");
    let hostile = ip(2);
    let held: Vec<TcpStream> = (0..4)
        .map(|_| connect_from(Some(hostile), &control.addr).expect("connect"))
        .collect();
    // Until the server has accepted all four, a fifth may still get in: bounded wait.
    let request =
        |c: &Control| c.agent_request(&gateway, "GET", "/agent/v1/assignments", &json!(null));
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused = loop {
        let started = Instant::now();
        let answer = control.raw_from(Some(hostile), &request(&control), PROMPT);
        if let Ok((503, body)) = &answer {
            assert!(
                started.elapsed() <= PROMPT,
                "refused only after {:?}",
                started.elapsed()
            );
            break body.clone();
        }
        assert!(
            Instant::now() < deadline,
            "fifth connection from {hostile} not refused: {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        refused.contains("too many connections from your address"),
        "{refused}"
    );

    // Another address is served meanwhile, promptly.
    let started = Instant::now();
    let (status, body) = control
        .raw_from(Some(ip(1)), &request(&control), PROMPT)
        .expect("honest peer answered");
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() <= PROMPT);

    // Closing its connections gives the address its place back (bounded wait).
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match control.raw_from(Some(hostile), &request(&control), PROMPT) {
            Ok((200, _)) => break,
            other => assert!(
                Instant::now() < deadline,
                "{hostile} still refused: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A head that never completes is cut off at the header deadline: the connection is closed by
/// the server, it does not stay open for as long as the client keeps dribbling.
#[test]
fn a_dribbled_head_is_cut_off_at_the_header_deadline() {
    let peer = Peer::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("control.toml");
    std::fs::write(&config, "header_timeout_secs = 2\n").expect("config");
    let control = Control::start_in(
        &peer,
        &tmp.path().join("data"),
        &["-c", config.to_str().expect("utf-8 path")],
    );
    let mut slow = connect_from(Some(ip(3)), &control.addr).expect("connect");
    slow.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let started = Instant::now();
    let head = b"GET /health HTTP/1.1\r\nHost: slow\r\n";
    let mut closed = false;
    for byte in head.iter().take(20) {
        if slow.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        match std::io::Read::read(&mut slow, &mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
        if started.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    let took = started.elapsed();
    assert!(closed, "a dribbled head was still open after {took:?}");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "closed after {took:?}, header_timeout_secs = 2"
    );
}
