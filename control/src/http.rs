//! A small HTTP/1.1 server on `std`: one request per connection, a fixed worker pool, and hard
//! limits on everything a client controls (header bytes, header count, body size, time).
//!
//! Why hand-rolled: the control endpoint answers a handful of small signed requests; a few
//! hundred lines we fully control beat a framework whose limits we would have to audit. Every
//! response carries `Connection: close`, so clients (the SDKs' connection pools included) never
//! reuse a socket we are about to drop.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Longest request line plus headers we read.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// More headers than this is not a client we serve.
pub const MAX_HEADERS: usize = 64;
/// Largest body accepted (API parameters and agent reports are small).
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// A single read or write may stall this long.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole request must arrive within this (slow-loris guard).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(30);
/// Connections waiting for a worker; past this the accept loop answers 503 at once.
pub const BACKLOG: usize = 64;

/// One parsed request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path as sent, still percent-encoded, without the query.
    pub path: String,
    /// Query string as sent (after `?`), still encoded; empty when absent.
    pub query: String,
    /// Header names lower-cased, values trimmed, in arrival order (repeats kept).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: Option<SocketAddr>,
}

impl Request {
    /// First value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (lower-case), in arrival order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A response to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
        }
    }

    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response::new(status, "application/json;charset=utf-8", body)
    }

    fn plain(status: u16, text: &str) -> Response {
        Response::new(status, "text/plain;charset=utf-8", format!("{text}\n"))
    }
}

/// Why a request could not be read; each maps to the status we answer with (if any).
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The peer went away or stalled: nothing to answer.
    Closed,
    BadRequest(&'static str),
    HeadTooLarge,
    BodyTooLarge,
    LengthRequired,
    NotImplemented(&'static str),
}

impl ReadError {
    fn response(&self) -> Option<Response> {
        match self {
            ReadError::Closed => None,
            ReadError::BadRequest(why) => Some(Response::plain(400, why)),
            ReadError::HeadTooLarge => Some(Response::plain(431, "request header too large")),
            ReadError::BodyTooLarge => Some(Response::plain(413, "request body too large")),
            ReadError::LengthRequired => Some(Response::plain(411, "Content-Length required")),
            ReadError::NotImplemented(why) => Some(Response::plain(501, why)),
        }
    }
}

/// Reads one line (up to `\n`) into `line`, counting against `budget`.
fn read_line_bounded<R: BufRead>(
    reader: &mut R,
    line: &mut Vec<u8>,
    budget: &mut usize,
    deadline: Instant,
) -> Result<(), ReadError> {
    line.clear();
    loop {
        if Instant::now() > deadline {
            return Err(ReadError::Closed);
        }
        let available = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(ReadError::Closed),
        };
        if available.is_empty() {
            return Err(ReadError::Closed);
        }
        let (chunk, found) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..=i], true),
            None => (available, false),
        };
        if chunk.len() > *budget {
            return Err(ReadError::HeadTooLarge);
        }
        *budget -= chunk.len();
        line.extend_from_slice(chunk);
        let used = chunk.len();
        reader.consume(used);
        if found {
            while matches!(line.last(), Some(b'\n' | b'\r')) {
                line.pop();
            }
            return Ok(());
        }
    }
}

/// Reads one request from `stream` within the limits above.
pub fn read_request<R: Read>(stream: R, peer: Option<SocketAddr>) -> Result<Request, ReadError> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut reader = BufReader::with_capacity(8 * 1024, stream);
    let mut budget = MAX_HEAD_BYTES;
    let mut line = Vec::new();
    read_line_bounded(&mut reader, &mut line, &mut budget, deadline)?;
    let request_line = std::str::from_utf8(&line)
        .map_err(|_| ReadError::BadRequest("request line is not UTF-8"))?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::BadRequest("malformed request line"));
    };
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return Err(ReadError::BadRequest("unsupported HTTP version"));
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ReadError::BadRequest("malformed method"));
    }
    if !target.starts_with('/') {
        return Err(ReadError::BadRequest("request target must be a path"));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.to_string(), String::new()),
    };
    let method = method.to_string();

    let mut headers: Vec<(String, String)> = Vec::new();
    loop {
        read_line_bounded(&mut reader, &mut line, &mut budget, deadline)?;
        if line.is_empty() {
            break;
        }
        if headers.len() >= MAX_HEADERS {
            return Err(ReadError::HeadTooLarge);
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            return Err(ReadError::BadRequest("obsolete header folding"));
        }
        let text =
            std::str::from_utf8(&line).map_err(|_| ReadError::BadRequest("header is not UTF-8"))?;
        let Some((name, value)) = text.split_once(':') else {
            return Err(ReadError::BadRequest("header without a colon"));
        };
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(ReadError::BadRequest("malformed header name"));
        }
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(ReadError::BadRequest("control character in a header value"));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }

    if headers.iter().any(|(n, _)| n == "transfer-encoding") {
        return Err(ReadError::NotImplemented(
            "Transfer-Encoding is not supported; send Content-Length",
        ));
    }
    let lengths: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n == "content-length")
        .map(|(_, v)| v.as_str())
        .collect();
    let length = match lengths.as_slice() {
        // No length means no body (the SDKs always send `Content-Length: 0` on an empty POST).
        [] => 0,
        [one] => {
            if one.is_empty() || !one.bytes().all(|b| b.is_ascii_digit()) || one.len() > 12 {
                return Err(ReadError::BadRequest("malformed Content-Length"));
            }
            one.parse::<usize>()
                .map_err(|_| ReadError::BadRequest("malformed Content-Length"))?
        }
        _ => return Err(ReadError::BadRequest("repeated Content-Length")),
    };
    if length > MAX_BODY_BYTES {
        return Err(ReadError::BodyTooLarge);
    }
    let mut body = vec![0u8; length];
    let mut filled = 0;
    while filled < length {
        if Instant::now() > deadline {
            return Err(ReadError::Closed);
        }
        match reader.read(&mut body[filled..]) {
            Ok(0) => return Err(ReadError::Closed),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(ReadError::Closed),
        }
    }
    Ok(Request {
        method,
        path,
        query,
        headers,
        body,
        peer,
    })
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Writes `response` with `Connection: close`.
pub fn write_response<W: Write>(mut out: W, response: &Response) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    out.write_all(head.as_bytes())?;
    out.write_all(&response.body)?;
    out.flush()
}

/// What the server calls for each request.
pub type Handler = dyn Fn(Request) -> Response + Send + Sync;

/// A running server: the accept loop and its workers. [`Server::shutdown`] (or drop) stops it:
/// no new connections, requests in progress finish.
pub struct Server {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept_thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port) and starts `workers` worker threads.
    pub fn start(addr: &str, workers: usize, handler: Arc<Handler>) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        let local_addr = listener.local_addr()?;
        // Non-blocking accept so the loop notices a stop request within one poll interval.
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::sync_channel::<TcpStream>(BACKLOG);
        let rx = Arc::new(Mutex::new(rx));
        let mut worker_handles = Vec::new();
        for index in 0..workers.max(1) {
            let rx = Arc::clone(&rx);
            let handler = Arc::clone(&handler);
            let handle = thread::Builder::new()
                .name(format!("http-worker-{index}"))
                .spawn(move || worker_loop(&rx, &*handler))?;
            worker_handles.push(handle);
        }
        let accept_stop = Arc::clone(&stop);
        let accept_thread = thread::Builder::new()
            .name("http-accept".into())
            .spawn(move || accept_loop(&listener, tx, &accept_stop, worker_handles))?;
        Ok(Server {
            local_addr,
            stop,
            accept_thread: Some(accept_thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets the workers finish what they hold, and waits for them.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.accept_thread.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn accept_loop(
    listener: &TcpListener,
    tx: SyncSender<TcpStream>,
    stop: &AtomicBool,
    workers: Vec<JoinHandle<()>>,
) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => {
                if stream.set_nonblocking(false).is_err() {
                    continue;
                }
                let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
                let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
                let _ = stream.set_nodelay(true);
                match tx.try_send(stream) {
                    Ok(()) => {}
                    Err(TrySendError::Full(stream)) => {
                        log::warn!("busy: {BACKLOG} connections waiting; refusing {peer}");
                        let _ = write_response(
                            &stream,
                            &Response::plain(503, "server busy, retry later"),
                        );
                    }
                    Err(TrySendError::Disconnected(_)) => break,
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(25));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("accept failed: {e}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
    // Closing the queue ends each worker once the connections already accepted are answered.
    drop(tx);
    for worker in workers {
        let _ = worker.join();
    }
}

fn worker_loop(rx: &Mutex<Receiver<TcpStream>>, handler: &Handler) {
    loop {
        let next = match rx.lock() {
            Ok(guard) => guard.recv(),
            Err(_) => return,
        };
        let Ok(stream) = next else { return };
        serve_connection(stream, handler);
    }
}

fn serve_connection(stream: TcpStream, handler: &Handler) {
    let peer = stream.peer_addr().ok();
    let response = match read_request(&stream, peer) {
        Ok(request) => {
            // A panic in a handler must cost one request, not a worker.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(request))) {
                Ok(response) => Some(response),
                Err(_) => {
                    log::error!("handler panicked; answered 500");
                    Some(Response::json(
                        500,
                        r#"{"Code":"InternalError","Message":"The request processing has failed due to some unknown error."}"#,
                    ))
                }
            }
        }
        Err(e) => e.response(),
    };
    if let Some(response) = response {
        let _ = write_response(&stream, &response);
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
    // Drain briefly so the client sees our response rather than a reset.
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 1024];
    let mut reader = &stream;
    for _ in 0..16 {
        match reader.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Request, ReadError> {
        read_request(raw, None)
    }

    #[test]
    fn parses_a_signed_sdk_request() {
        let raw = b"POST /?Action=X&Name=a+b HTTP/1.1\r\nHost: 127.0.0.1:9\r\nX-Acs-Date: 2024\r\n\
                    x-acs-date:  dup \r\nContent-Length: 3\r\n\r\nabc";
        let req = parse(raw).expect("valid request");
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/");
        assert_eq!(req.query, "Action=X&Name=a+b");
        assert_eq!(req.header("host"), Some("127.0.0.1:9"));
        assert_eq!(req.header_values("x-acs-date"), vec!["2024", "dup"]);
        assert_eq!(req.body, b"abc");
    }

    #[test]
    fn refuses_oversized_and_malformed_requests() {
        let huge_header = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        assert_eq!(
            parse(huge_header.as_bytes()).err(),
            Some(ReadError::HeadTooLarge)
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("H{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse(many.as_bytes()).err(), Some(ReadError::HeadTooLarge));
        let big_body = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        assert_eq!(
            parse(big_body.as_bytes()).err(),
            Some(ReadError::BodyTooLarge)
        );
        let overflow = b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n";
        assert!(matches!(parse(overflow), Err(ReadError::BadRequest(_))));
        let negative = b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n";
        assert!(matches!(parse(negative), Err(ReadError::BadRequest(_))));
        let twice = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
        assert!(matches!(parse(twice), Err(ReadError::BadRequest(_))));
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert!(matches!(parse(chunked), Err(ReadError::NotImplemented(_))));
        assert!(matches!(
            parse(b"GARBAGE\r\n\r\n"),
            Err(ReadError::BadRequest(_))
        ));
        assert!(matches!(
            parse(b"GET http://x/ HTTP/1.1\r\n\r\n"),
            Err(ReadError::BadRequest(_))
        ));
        assert!(matches!(
            parse(b"GET / HTTP/2\r\n\r\n"),
            Err(ReadError::BadRequest(_))
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nBad Name: v\r\n\r\n"),
            Err(ReadError::BadRequest(_))
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n"),
            Err(ReadError::BadRequest(_))
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n\xff: v\r\n\r\n"),
            Err(ReadError::BadRequest(_))
        ));
        // Truncated: the body never arrives.
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab").err(),
            Some(ReadError::Closed)
        );
        assert_eq!(parse(b"").err(), Some(ReadError::Closed));
    }

    #[test]
    fn server_answers_and_refuses_over_the_socket() {
        let handler: Arc<Handler> =
            Arc::new(|req: Request| Response::json(200, format!("{{\"path\":\"{}\"}}", req.path)));
        let server = Server::start("127.0.0.1:0", 2, handler).expect("bind");
        let addr = server.local_addr();
        let talk = |raw: &[u8]| -> String {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(raw).expect("write");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out
        };
        let ok = talk(b"GET /agent/v1/x HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Connection: close"), "{ok}");
        assert!(ok.ends_with("{\"path\":\"/agent/v1/x\"}"), "{ok}");
        let big = talk(
            format!(
                "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                MAX_BODY_BYTES * 4
            )
            .as_bytes(),
        );
        assert!(big.starts_with("HTTP/1.1 413"), "{big}");
        server.shutdown();
    }
}
