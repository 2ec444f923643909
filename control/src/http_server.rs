//! The HTTP/1.1 server: hyper on a tokio runtime, with hard limits on everything a client
//! controls.
//!
//! Why hyper and not our own parser any more: the hand-written server read each request on one
//! of a fixed pool of blocking worker threads, so a few connections that send one byte every
//! couple of seconds held every worker and took the endpoint off the air. On tokio a connection
//! that is slow or idle costs a small task, never a thread; hyper is a maintained, fuzzed
//! HTTP/1.1 implementation whose limits (head size, header count, head deadline) are settings,
//! so we keep only the policy here.
//!
//! # Limits ([`Limits`], `control.toml` keys in brackets)
//!
//! - **Request head**: at most [`MAX_HEAD_BYTES`] and [`MAX_HEADERS`] headers (431 otherwise),
//!   complete within `header_timeout` [`header_timeout_secs`, 10 s] of the connection opening or
//!   of the previous response (hyper's header-read timer): a slow or silent client is
//!   disconnected then, and an idle keep-alive connection too.
//! - **Request body**: at most [`MAX_BODY_BYTES`] (413, checked against `Content-Length` before
//!   reading and while reading a chunked body), complete within `body_timeout`
//!   [`body_timeout_secs`, 30 s] of the head (408 otherwise).
//! - **Keep-alive**: a connection with no request in progress is closed after `idle_timeout`
//!   [`idle_timeout_secs`, 5 s] (or the header timeout, whichever is shorter).
//! - **Connections**: at most `max_connections` [`max_connections`, 512] in total and
//!   `max_connections_per_peer` [`max_connections_per_peer`, 64] from one IP address. A
//!   connection over either limit is answered at once with `503` (`Retry-After: 1`,
//!   `Connection: close`) without reading its request, and closed.
//! - **Handlers** run on tokio's blocking pool (`spawn_blocking`), at most `workers` at once
//!   [`workers`, 8]: they use SQLite and call the cloud, and must never stall the reactor. A
//!   handler that panics costs its request (500), not the server — where panics unwind: the
//!   workspace's release profile has `panic = "abort"` (for the agent's size), so a release
//!   `sgw-control` exits on a panic and systemd restarts it.
//! - **Shutdown** ([`Server::shutdown`]): stop accepting, let requests in progress finish and
//!   close idle connections, for at most `shutdown_timeout` [`shutdown_timeout_secs`, 20 s,
//!   below the unit's `TimeoutStopSec=30s`].
//!
//! Every response carries `Cache-Control: no-store` and `X-Content-Type-Options: nosniff`;
//! responses to requests we refuse while reading them also `Connection: close`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// Longest request line plus headers we read.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// More headers than this is not a client we serve.
pub const MAX_HEADERS: usize = 64;
/// Largest body accepted (API parameters and agent reports are small).
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// How often a connection being closed checks whether its last request is done.
const CLOSE_POLL: Duration = Duration::from_millis(100);
/// Refusals are logged at warn level at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// How long a closed connection reads off what its client still sends.
const LINGER: Duration = Duration::from_millis(200);
/// Refusals (503 to a connection over a limit) being written at once; past this a connection
/// over a limit is closed without an answer.
const MAX_REFUSALS: usize = 64;

/// The server's limits; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    pub shutdown_timeout: Duration,
    /// Handlers running at once (the blocking pool's size).
    pub workers: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(5),
            max_connections: 512,
            max_connections_per_peer: 64,
            shutdown_timeout: Duration::from_secs(20),
            workers: 8,
        }
    }
}

/// One request, its body read in full.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path as sent, still percent-encoded, without the query.
    pub path: String,
    /// Query string as sent (after `?`), still encoded; empty when absent.
    pub query: String,
    /// Header names lower-cased, values trimmed; repeats kept in arrival order.
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
    /// Further headers (`etag`, …); names lower-case, values printable ASCII.
    pub headers: Vec<(&'static str, String)>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response::new(status, "application/json;charset=utf-8", body)
    }

    fn plain(status: u16, text: &str) -> Response {
        Response::new(status, "text/plain;charset=utf-8", format!("{text}\n"))
    }
}

/// What the server calls for each request (on the blocking pool).
pub type Handler = dyn Fn(Request) -> Response + Send + Sync;

/// A running server. [`Server::shutdown`] (or drop) stops it: no new connections, requests in
/// progress finish (within the shutdown timeout).
pub struct Server {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port) and serves on a runtime of its own.
    ///
    /// The runtime is multi-threaded with two I/O threads: the reactor only moves bytes and
    /// parses heads, and two keep accepting and answering when one is busy with a large
    /// response; the handlers' work is on the blocking pool, `limits.workers` threads at most.
    pub fn start(addr: &str, limits: Limits, handler: Arc<Handler>) -> io::Result<Server> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(limits.workers.max(1))
            .thread_name("sgw-control-io")
            .enable_io()
            .enable_time()
            .build()?;
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let listener = {
            let _guard = runtime.enter();
            TcpListener::from_std(listener)?
        };
        let shared = Arc::new(Shared {
            connections: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            refusals: Arc::new(Semaphore::new(MAX_REFUSALS)),
            per_peer: Mutex::new(HashMap::new()),
            handlers: Arc::new(Semaphore::new(limits.workers.max(1))),
            last_warned: Mutex::new(None),
            limits,
            handler,
        });
        let (stop, stop_rx) = watch::channel(false);
        runtime.spawn(accept_loop(listener, Arc::clone(&shared), stop_rx));
        Ok(Server {
            local_addr,
            stop,
            shared,
            runtime: Some(runtime),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, closes idle connections, lets requests in progress finish (at most the
    /// shutdown timeout), then stops the runtime.
    pub fn shutdown(mut self) {
        self.stop_and_drain();
    }

    fn stop_and_drain(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        let _ = self.stop.send(true);
        let all = u32::try_from(self.shared.limits.max_connections.max(1)).unwrap_or(u32::MAX);
        let connections = Arc::clone(&self.shared.connections);
        let deadline = self.shared.limits.shutdown_timeout;
        let drained = runtime.block_on(async move {
            // Every open connection holds a permit; all of them back means all are closed.
            tokio::time::timeout(deadline, connections.acquire_many(all))
                .await
                .is_ok()
        });
        if !drained {
            log::warn!(
                "shutdown: connections still open after {}s; closing them",
                deadline.as_secs()
            );
        }
        runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_and_drain();
    }
}

struct Shared {
    limits: Limits,
    handler: Arc<Handler>,
    /// One permit per open connection.
    connections: Arc<Semaphore>,
    /// Open connections per peer address.
    per_peer: Mutex<HashMap<IpAddr, usize>>,
    refusals: Arc<Semaphore>,
    /// One permit per running handler.
    handlers: Arc<Semaphore>,
    /// When a refusal was last logged at warn level (a flood must not flood the journal).
    last_warned: Mutex<Option<Instant>>,
}

impl Shared {
    /// True at most once per [`WARN_EVERY`].
    fn may_warn(&self) -> bool {
        let Ok(mut last) = self.last_warned.lock() else {
            return false;
        };
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// A connection's place in both limits, given back on drop.
struct Admitted {
    _permit: OwnedSemaphorePermit,
    peer: IpAddr,
    shared: Arc<Shared>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Ok(mut map) = self.shared.per_peer.lock()
            && let Some(n) = map.get_mut(&self.peer)
        {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Total,
    PerPeer,
}

fn admit(shared: &Arc<Shared>, peer: IpAddr) -> Result<Admitted, Refusal> {
    let permit = Arc::clone(&shared.connections)
        .try_acquire_owned()
        .map_err(|_| Refusal::Total)?;
    let mut map = shared.per_peer.lock().map_err(|_| Refusal::Total)?;
    let open = map.entry(peer).or_insert(0);
    if *open >= shared.limits.max_connections_per_peer {
        return Err(Refusal::PerPeer);
    }
    *open += 1;
    drop(map);
    Ok(Admitted {
        _permit: permit,
        peer,
        shared: Arc::clone(shared),
    })
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match admit(&shared, peer.ip()) {
            Ok(admitted) => {
                tokio::spawn(serve_connection(
                    stream,
                    peer,
                    admitted,
                    Arc::clone(&shared),
                    stop.clone(),
                ));
            }
            Err(why) => refuse(stream, peer, why, &shared),
        }
    }
    log::debug!("no longer accepting connections");
}

/// Answers 503 without reading the request, then closes; bounded in number and time.
fn refuse(stream: TcpStream, peer: SocketAddr, why: Refusal, shared: &Shared) {
    let text = match why {
        Refusal::Total => {
            if shared.may_warn() {
                log::warn!(
                    "busy: {} connections open (max_connections); refusing {peer} and others",
                    shared.limits.max_connections
                );
            }
            "server busy, retry later\n"
        }
        Refusal::PerPeer => {
            if shared.may_warn() {
                log::warn!(
                    "{}: {} connections open from this address (max_connections_per_peer); \
                     refusing more",
                    peer.ip(),
                    shared.limits.max_connections_per_peer
                );
            }
            "too many connections from your address, retry later\n"
        }
    };
    let Ok(slot) = Arc::clone(&shared.refusals).try_acquire_owned() else {
        return; // dropping the stream closes it
    };
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain;charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\nRetry-After: 1\r\nCache-Control: no-store\r\n\
         X-Content-Type-Options: nosniff\r\n\r\n{text}",
        text.len()
    );
    tokio::spawn(async move {
        let mut stream = stream;
        let quick = Duration::from_secs(1);
        if tokio::time::timeout(quick, stream.write_all(answer.as_bytes()))
            .await
            .is_ok_and(|r| r.is_ok())
        {
            let _ = stream.shutdown().await;
            // Take what the client sent so the close is a FIN, not a reset that could destroy
            // the answer before the client reads it.
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_millis(200), async {
                for _ in 0..4 {
                    match stream.read(&mut sink).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
        }
        drop(slot);
    });
}

/// Per connection: requests in progress and when the last one ended.
struct Activity {
    in_flight: AtomicUsize,
    last_done: Mutex<Instant>,
}

impl Activity {
    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Busy(Arc::clone(self))
    }

    /// When the connection counts as idle for `after`, or `None` while a request runs.
    fn idle_at(&self, after: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        self.last_done.lock().ok().map(|t| *t + after)
    }
}

/// A request in progress on its connection.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        if let Ok(mut t) = self.0.last_done.lock() {
            *t = Instant::now();
        }
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves one connection, then lingers briefly so our last answer is not destroyed by a reset.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    admitted: Admitted,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    // A second descriptor of the socket outlives hyper's: when hyper stops reading early (a
    // head over the limit: 431) and drops its end, closing with unread input would make the
    // kernel send a reset, and the client could lose the answer. With `spare` we close the way
    // the old server did: shut down our side, read off what the client still sends (briefly).
    let (stream, spare) = match stream.into_std().and_then(|s| {
        let spare = s.try_clone()?;
        Ok((TcpStream::from_std(s)?, spare))
    }) {
        Ok(pair) => pair,
        Err(e) => {
            log::debug!("{peer}: {e}");
            return;
        }
    };
    run_connection(stream, peer, &shared, stop).await;
    if let Ok(mut spare) = TcpStream::from_std(spare) {
        let _ = spare.shutdown().await;
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(LINGER, async {
            for _ in 0..(MAX_HEAD_BYTES / sink.len() + 4) {
                match spare.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
    drop(admitted);
}

async fn run_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let limits = shared.limits.clone();
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        last_done: Mutex::new(Instant::now()),
    });
    let service = {
        let shared = Arc::clone(shared);
        let activity = Arc::clone(&activity);
        service_fn(move |req| {
            let busy = activity.begin();
            let shared = Arc::clone(&shared);
            async move {
                let response = handle(req, peer, &shared).await;
                drop(busy);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(CappedReads(stream)), service);
    let mut connection = std::pin::pin!(connection);
    let timer = tokio::time::sleep(limits.idle_timeout);
    let mut timer = std::pin::pin!(timer);
    // Set once we asked the connection to close (stopping, or idle): from then on it is dropped
    // as soon as no request is in progress and its last answer had a moment to go out, even if
    // the client never closes its side.
    let mut closing = false;
    if *stop.borrow() {
        connection.as_mut().graceful_shutdown();
        closing = true;
    }
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    log::debug!("{peer}: connection ended: {e}");
                }
                break;
            }
            _ = stop.changed(), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
                timer.as_mut().reset(tokio::time::Instant::now() + CLOSE_POLL);
            }
            () = timer.as_mut() => {
                let now = Instant::now();
                if closing {
                    if activity.idle_at(CLOSE_POLL * 2).is_some_and(|at| at <= now) {
                        log::debug!("{peer}: closed");
                        break;
                    }
                    timer.as_mut().reset(tokio::time::Instant::now() + CLOSE_POLL);
                    continue;
                }
                match activity.idle_at(limits.idle_timeout) {
                    Some(at) if at <= now => {
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                        timer.as_mut().reset(tokio::time::Instant::now() + CLOSE_POLL);
                    }
                    Some(at) => timer.as_mut().reset(at.into()),
                    None => timer.as_mut().reset(tokio::time::Instant::now() + limits.idle_timeout),
                }
            }
        }
    }
}

/// Hands hyper at most [`READ_CHUNK`] bytes per read. hyper checks its buffer against
/// `max_buf_size` between reads, so a head that arrives in one large read could end past the
/// limit and be parsed (a 70 kB query then got `414`, not our `431`); in small reads the head
/// limit holds to within one chunk.
struct CappedReads(TcpStream);

/// Largest single read handed to hyper.
const READ_CHUNK: usize = 8 * 1024;

impl tokio::io::AsyncRead for CappedReads {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let room = buf.remaining().min(READ_CHUNK);
        let mut chunk = tokio::io::ReadBuf::new(buf.initialize_unfilled_to(room));
        let polled = std::pin::Pin::new(&mut self.0).poll_read(cx, &mut chunk);
        let n = chunk.filled().len();
        buf.advance(n);
        polled
    }
}

impl tokio::io::AsyncWrite for CappedReads {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// Reads the body within the limits, runs the handler on the blocking pool, builds the
/// response.
async fn handle(
    req: hyper::Request<Incoming>,
    peer: SocketAddr,
    shared: &Shared,
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    if let Err(why) = check_head(&parts) {
        return to_hyper(Response::plain(400, why), true);
    }
    // hyper stops reading a head at `max_buf_size`, but a head that arrives in one read may
    // end a little past it; count exactly (request line plus `name: value\r\n` per header).
    let head_bytes = parts.method.as_str().len()
        + parts.uri.to_string().len()
        + 12
        + parts
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if head_bytes > MAX_HEAD_BYTES {
        return to_hyper(Response::plain(431, "request header too large"), true);
    }
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return to_hyper(Response::plain(413, "request body too large"), true);
    }
    let collected = tokio::time::timeout(
        shared.limits.body_timeout,
        Limited::new(body, MAX_BODY_BYTES).collect(),
    )
    .await;
    let body = match collected {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return to_hyper(Response::plain(413, "request body too large"), true);
        }
        Ok(Err(e)) => {
            log::debug!("{peer}: reading the body: {e}");
            return to_hyper(Response::plain(400, "malformed request body"), true);
        }
        Err(_) => {
            log::debug!("{peer}: body not complete in time");
            return to_hyper(Response::plain(408, "request body timed out"), true);
        }
    };
    let mut headers = Vec::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        let Ok(value) = std::str::from_utf8(value.as_bytes()) else {
            return to_hyper(Response::plain(400, "header is not UTF-8"), true);
        };
        headers.push((name.as_str().to_string(), value.trim().to_string()));
    }
    let request = Request {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers,
        body: body.to_vec(),
        peer: Some(peer),
    };
    // At most `workers` handlers at once; waiting here costs a task, not a thread.
    let Ok(_slot) = Arc::clone(&shared.handlers).acquire_owned().await else {
        return to_hyper(Response::plain(503, "server stopping"), true);
    };
    let handler = Arc::clone(&shared.handler);
    let response = match tokio::task::spawn_blocking(move || handler(request)).await {
        Ok(response) => response,
        Err(_) => {
            log::error!("handler panicked; answered 500");
            Response::json(
                500,
                r#"{"Code":"InternalError","Message":"The request processing has failed due to some unknown error."}"#,
            )
        }
    };
    to_hyper(response, false)
}

/// What hyper accepts but we do not: an absolute or `*` target, a lower-case method.
fn check_head(parts: &hyper::http::request::Parts) -> Result<(), &'static str> {
    if parts.uri.scheme().is_some()
        || parts.uri.authority().is_some()
        || !parts.uri.path().starts_with('/')
    {
        return Err("request target must be a path");
    }
    let method = parts.method.as_str();
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err("malformed method");
    }
    Ok(())
}

fn to_hyper(response: Response, close: bool) -> hyper::Response<Full<Bytes>> {
    let mut out = hyper::Response::new(Full::new(Bytes::from(response.body)));
    *out.status_mut() = hyper::StatusCode::from_u16(response.status)
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = out.headers_mut();
    for (name, value) in &response.headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(*name, value);
        }
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(response.content_type),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn start(limits: Limits, handler: Arc<Handler>) -> Server {
        Server::start("127.0.0.1:0", limits, handler).expect("bind")
    }

    fn echo() -> Arc<Handler> {
        Arc::new(|req: Request| {
            Response::json(
                200,
                format!(
                    "{{\"path\":\"{}\",\"query\":\"{}\",\"x\":{:?},\"len\":{}}}",
                    req.path,
                    req.query,
                    req.header_values("x-acs-date"),
                    req.body.len()
                ),
            )
        })
    }

    /// Writes `raw`, reads until the server closes (or 5 s pass).
    fn talk(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let _ = s.write_all(raw);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).to_string()
    }

    #[test]
    fn answers_keeps_alive_and_refuses_what_it_must() {
        let server = start(Limits::default(), echo());
        let addr = server.local_addr();
        // Two requests on one connection; the second says close.
        let ok = talk(
            addr,
            b"POST /?Action=X&Name=a+b HTTP/1.1\r\nHost: a\r\nX-Acs-Date: 2024\r\n\
              x-acs-date:  dup \r\nContent-Length: 3\r\n\r\nabc\
              GET /agent/v1/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        );
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("cache-control: no-store"), "{ok}");
        assert!(
            ok.contains(r#"{"path":"/","query":"Action=X&Name=a+b","x":["2024", "dup"],"len":3}"#),
            "{ok}"
        );
        assert!(
            ok.ends_with(r#"{"path":"/agent/v1/x","query":"","x":[],"len":0}"#),
            "{ok}"
        );

        let big = talk(
            addr,
            format!(
                "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                MAX_BODY_BYTES * 4
            )
            .as_bytes(),
        );
        assert!(big.starts_with("HTTP/1.1 413"), "{big}");
        assert!(big.ends_with("request body too large\n"), "{big}");
        let chunked_big = format!(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            MAX_BODY_BYTES + 1,
            "a".repeat(MAX_BODY_BYTES + 1)
        );
        assert!(talk(addr, chunked_big.as_bytes()).starts_with("HTTP/1.1 413"));
        let huge_head = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        let answer = talk(addr, huge_head.as_bytes());
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
        let long_query = format!(
            "POST /?Name={} HTTP/1.1\r\nHost: x\r\n\r\n",
            "a".repeat(70_000)
        );
        let answer = talk(addr, long_query.as_bytes());
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
        let many: String = (0..=MAX_HEADERS).map(|i| format!("H{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        let answer = talk(addr, many.as_bytes());
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
        for bad in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            b"get / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: v\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        ] {
            let answer = talk(addr, bad);
            assert!(
                answer.starts_with("HTTP/1.1 400"),
                "{:?}: {answer}",
                String::from_utf8_lossy(bad)
            );
        }
        server.shutdown();
    }

    #[test]
    fn slow_bodies_get_408_and_idle_connections_are_closed() {
        let limits = Limits {
            body_timeout: Duration::from_millis(500),
            idle_timeout: Duration::from_millis(500),
            ..Limits::default()
        };
        let server = start(limits, echo());
        let addr = server.local_addr();
        let started = Instant::now();
        let slow = talk(addr, b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nab");
        assert!(slow.starts_with("HTTP/1.1 408"), "{slow}");
        assert!(started.elapsed() < Duration::from_secs(3));
        // One request, then silence: closed after the idle timeout, not the read timeout.
        let started = Instant::now();
        let once = talk(addr, b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(once.starts_with("HTTP/1.1 200"), "{once}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        server.shutdown();
    }

    #[test]
    fn a_panicking_handler_costs_one_request() {
        let handler: Arc<Handler> = Arc::new(|req: Request| {
            assert!(req.path != "/boom", "boom");
            Response::json(200, "{}")
        });
        let server = start(Limits::default(), handler);
        let addr = server.local_addr();
        let boom = talk(addr, b"GET /boom HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(boom.starts_with("HTTP/1.1 500"), "{boom}");
        assert!(boom.contains("InternalError"), "{boom}");
        let fine = talk(addr, b"GET /fine HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(fine.starts_with("HTTP/1.1 200"), "{fine}");
        server.shutdown();
    }

    #[test]
    fn connections_are_bounded_in_total_and_per_peer() {
        let limits = Limits {
            max_connections: 3,
            max_connections_per_peer: 2,
            ..Limits::default()
        };
        let server = start(limits, echo());
        let addr = server.local_addr();
        let hold = |n: usize| -> Vec<std::net::TcpStream> {
            (0..n)
                .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
                .collect()
        };
        let held = hold(2);
        std::thread::sleep(Duration::from_millis(200));
        let third = talk(addr, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(third.starts_with("HTTP/1.1 503"), "{third}");
        assert!(
            third.contains("too many connections from your address"),
            "{third}"
        );
        drop(held);
        // Given back once the server sees them close (bounded wait).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let again = talk(addr, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
            if again.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(Instant::now() < deadline, "still refused: {again}");
            std::thread::sleep(Duration::from_millis(100));
        }
        server.shutdown();
    }

    #[test]
    fn shutdown_lets_the_request_in_progress_finish() {
        let handler: Arc<Handler> = Arc::new(|_req: Request| {
            std::thread::sleep(Duration::from_millis(700));
            Response::json(200, r#"{"slow":true}"#)
        });
        let server = start(Limits::default(), handler);
        let addr = server.local_addr();
        let client =
            std::thread::spawn(move || talk(addr, b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n"));
        // An idle connection does not hold the shutdown up.
        let _idle = std::net::TcpStream::connect(addr).expect("connect");
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        server.shutdown();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let answer = client.join().expect("client");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with(r#"{"slow":true}"#), "{answer}");
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "still accepting"
        );
    }
}
