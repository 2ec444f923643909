//! The one place that talks HTTP: endpoint parsing, the `ureq` agent and its timeouts,
//! signed requests, and the mapping of error responses to [`CloudError`].

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use quick_xml::events::Event;
use quick_xml::reader::Reader;
use ureq::http::{self, HeaderMap, Response, Uri};

use super::CloudError;
use super::sigv4::{self, Credentials, RequestToSign};

/// Connecting (TCP + TLS handshake) gives up after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// No single read may stall longer than this: a dead peer mid-body fails within ~30 s.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Long polls are held by the server for `wait` seconds; allow this much on top.
pub const LONG_POLL_SLACK: Duration = Duration::from_secs(10);
/// Error bodies are only read for their code and message.
pub const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// Longest service message kept in a [`CloudError`] (they end up in logs and status files).
const MAX_ERROR_MESSAGE: usize = 512;

/// Where a client sends its requests, from a configured URL such as `https://s3.example:9000`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `https` or `http`.
    pub scheme: String,
    /// Host name or IP literal (IPv6 in brackets), as it appears in the URL.
    pub host: String,
    pub port: Option<u16>,
    /// Decoded path prefix without a trailing `/` (empty for most endpoints).
    pub base_path: String,
}

impl Endpoint {
    /// Parse `url`. `http://` is refused unless `allow_http`; user info, query and fragment
    /// are refused. Errors name the URL (with any user info masked) so a config error is clear.
    pub fn parse(url: &str, allow_http: bool) -> Result<Endpoint, String> {
        let shown = redact_userinfo(url);
        let uri: Uri = url
            .trim()
            .parse()
            .map_err(|e| format!("invalid endpoint URL {shown:?}: {e}"))?;
        let scheme = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("https") => "https",
            Some(s) if s.eq_ignore_ascii_case("http") => {
                if !allow_http {
                    return Err(format!(
                        "endpoint {shown:?} uses plain http://; use https:// or set allow_http = true \
                         to send credentials and data unencrypted"
                    ));
                }
                "http"
            }
            Some(other) => return Err(format!("endpoint {shown:?}: unsupported scheme {other:?}")),
            None => {
                return Err(format!(
                    "endpoint {shown:?} has no scheme (expected https://host)"
                ));
            }
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("endpoint {shown:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "endpoint {shown:?} must not contain user info; put credentials in the credentials file"
            ));
        }
        if authority.host().is_empty() {
            return Err(format!("endpoint {shown:?} has no host"));
        }
        // `http` accepts any digits after the colon; a port that does not fit must not
        // silently become the default one.
        let has_port_text = authority.as_str().len() > authority.host().len();
        if has_port_text && !matches!(uri.port_u16(), Some(p) if p > 0) {
            return Err(format!("endpoint {shown:?} has an invalid port"));
        }
        if uri.query().is_some() || url.contains('#') {
            return Err(format!(
                "endpoint {shown:?} must not have a query or fragment"
            ));
        }
        let decoded_path = percent_encoding::percent_decode_str(uri.path())
            .decode_utf8()
            .map_err(|_| format!("endpoint {shown:?}: path is not UTF-8"))?;
        Ok(Endpoint {
            scheme: scheme.to_string(),
            host: authority.host().to_string(),
            port: uri.port_u16(),
            base_path: decoded_path.trim_end_matches('/').to_string(),
        })
    }

    /// `Host` header value (port only when it is not the scheme's default).
    pub fn host_header(&self) -> String {
        sigv4::host_header(&self.scheme, &self.host, self.port)
    }

    /// `scheme://host[:port]`, for messages and request URLs.
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme, self.host_header())
    }
}

fn redact_userinfo(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}://***@{}", &url[..scheme_end], &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// The agent every client uses: explicit timeouts, no redirects (a signed request must not
/// wander to another host), no compression (the CRC is over the raw bytes), `TCP_NODELAY`, and
/// connections kept alive over a TCP transport that acknowledges at once (see
/// [`quick_ack`]): keep-alive peers that do not set `TCP_NODELAY` otherwise stall ~40 ms per
/// small response. Errors are returned as responses.
/// Root certificates to trust instead of the built-in (Mozilla) ones: a share's `ca_file`,
/// for a server behind a private CA.
#[derive(Clone, Debug)]
pub struct TrustedRoots(Arc<Vec<ureq::tls::Certificate<'static>>>);

impl TrustedRoots {
    /// Every certificate in the PEM file at `path` (at least one).
    pub fn load(path: &std::path::Path) -> Result<TrustedRoots, String> {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut certs = Vec::new();
        for item in ureq::tls::parse_pem(&pem) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
                Ok(_) => {}
                Err(e) => return Err(format!("{}: not a PEM file: {e}", path.display())),
            }
        }
        if certs.is_empty() {
            return Err(format!("{}: no CERTIFICATE in it", path.display()));
        }
        Ok(TrustedRoots(Arc::new(certs)))
    }
}

pub fn build_agent() -> ureq::Agent {
    build_agent_trusting(None)
}

/// [`build_agent`], trusting `roots` instead of the built-in roots when given.
pub fn build_agent_trusting(roots: Option<&TrustedRoots>) -> ureq::Agent {
    let tls = match roots {
        Some(r) => ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(Arc::clone(&r.0)))
            .build(),
        None => ureq::tls::TlsConfig::default(),
    };
    let config = ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .https_only(false)
        .no_delay(true)
        .max_redirects(0)
        .accept_encoding("identity")
        .user_agent(concat!("sgw-agent/", env!("CARGO_PKG_VERSION")))
        .timeout_resolve(Some(CONNECT_TIMEOUT))
        .timeout_connect(Some(CONNECT_TIMEOUT))
        // Per-write, not a total: a large upload may take long, a stalled one may not.
        .timeout_send_request(Some(READ_TIMEOUT))
        .timeout_per_read(Some(READ_TIMEOUT))
        .timeout_per_write(Some(READ_TIMEOUT))
        // Keep a connection per download worker (ureq keeps 3 per host by default, so a pool
        // of 4+ workers plus the listing closed and reopened connections all the time).
        .max_idle_connections(MAX_IDLE_CONNECTIONS)
        .max_idle_connections_per_host(MAX_IDLE_CONNECTIONS)
        // ureq's default is 128 KiB each way per connection; with tens of connections in
        // flight on a long link that alone would be most of the memory target. A response
        // head still fits (at most 64 KiB), and requests are small or streamed.
        .input_buffer_size(INPUT_BUFFER)
        .output_buffer_size(OUTPUT_BUFFER)
        .build();
    use ureq::unversioned::transport::{ConnectProxyConnector, Connector, RustlsConnector};
    // ureq's default chain minus the parts this build has no feature for (SOCKS, native-tls),
    // with our TCP transport in place of its own.
    let connector =
        ().chain(ConnectProxyConnector::default())
            .chain(quick_ack::QuickAckTcpConnector)
            .chain(RustlsConnector::default());
    ureq::Agent::with_parts(config, connector, CachingResolver::default())
}

/// Per-connection read buffer (also the largest response head ureq accepts).
const INPUT_BUFFER: usize = 64 * 1024;
/// Per-connection write buffer.
const OUTPUT_BUFFER: usize = 16 * 1024;
/// Idle connections kept per agent: the largest download concurrency plus the listing's.
const MAX_IDLE_CONNECTIONS: usize = 72;
/// How long a resolved address is reused without asking the resolver again.
const RESOLVE_TTL: Duration = Duration::from_secs(30);
/// Hosts remembered per agent (an agent talks to one endpoint; proxies add one).
const RESOLVE_CACHE_HOSTS: usize = 8;

/// ureq resolves the host before every request, even one that then reuses a pooled
/// connection, and with a resolve timeout set it does so on a new thread: a thread spawn
/// (and, for a host name, a DNS query) per GET. IP literals need no lookup at all, and names
/// are remembered for [`RESOLVE_TTL`].
#[derive(Debug, Default)]
struct CachingResolver {
    inner: ureq::unversioned::resolver::DefaultResolver,
    cache: std::sync::Mutex<Vec<(String, std::time::Instant, ResolvedAddrs)>>,
}

type ResolvedAddrs = ureq::unversioned::resolver::ResolvedSocketAddrs;

impl ureq::unversioned::resolver::Resolver for CachingResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ResolvedAddrs, ureq::Error> {
        use ureq::unversioned::resolver::DefaultResolver;
        let key = match (uri.scheme(), uri.authority()) {
            (Some(scheme), Some(authority)) => DefaultResolver::host_and_port(scheme, authority),
            _ => None,
        };
        let Some(key) = key else {
            return self.inner.resolve(uri, config, timeout);
        };
        if let Ok(addr) = key.parse::<std::net::SocketAddr>() {
            let mut one = self.empty();
            one.push(addr);
            return Ok(one);
        }
        if let Ok(cache) = self.cache.lock()
            && let Some((_, _, addrs)) = cache
                .iter()
                .find(|(host, at, _)| *host == key && at.elapsed() < RESOLVE_TTL)
        {
            return Ok(addrs.clone());
        }
        let addrs = self.inner.resolve(uri, config, timeout)?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|(host, at, _)| *host != key && at.elapsed() < RESOLVE_TTL);
            if cache.len() < RESOLVE_CACHE_HOSTS {
                cache.push((key, std::time::Instant::now(), addrs.clone()));
            }
        }
        Ok(addrs)
    }
}

/// A plain TCP transport for ureq that sets `TCP_QUICKACK` after every send and receive.
///
/// Why: many S3-compatible servers (hyper-based ones such as garage and s3s-fs among them)
/// write a response's headers and its body separately without `TCP_NODELAY`. On a reused
/// connection Linux delays the ACK for the headers (the client looks interactive), and Nagle
/// holds the body until that ACK comes: ~40 ms lost per small GET (measured: 1000 GETs of 4 KiB
/// took 7-8 s instead of <1 s). Acknowledging at once removes the stall and keeps the
/// connection reuse that TLS endpoints need. Elsewhere (not Linux) the option does not exist
/// and the transport is a plain one.
mod quick_ack {
    use std::io::{self, Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::sync::{Arc, Weak};
    use std::time::{Duration, Instant};

    use ureq::unversioned::transport::{
        Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, ShutdownHandle,
        Transport,
    };
    use ureq::{Error, Timeout};

    #[derive(Debug, Default)]
    pub struct QuickAckTcpConnector;

    impl<In: Transport> Connector<In> for QuickAckTcpConnector {
        type Out = Either<In, QuickAckTransport>;

        fn connect(
            &self,
            details: &ConnectionDetails,
            chained: Option<In>,
        ) -> Result<Option<Self::Out>, Error> {
            if let Some(previous) = chained {
                // A proxy tunnel is already open: use it as it is.
                return Ok(Some(Either::A(previous)));
            }
            let config = details.config;
            let stream = connect_any(details.addrs.iter().copied(), details.timeout)?;
            if config.no_delay() {
                stream.set_nodelay(true)?;
            }
            let stream = Arc::new(stream);
            let handle: Weak<dyn ShutdownHandle> = Arc::downgrade(&stream) as _;
            (details.register_shutdown)(handle)?;
            Ok(Some(Either::B(QuickAckTransport {
                stream,
                buffers: LazyBuffers::new(config.input_buffer_size(), config.output_buffer_size()),
                read_timeout: None,
                write_timeout: None,
                ack_next_read: false,
            })))
        }
    }

    /// Try each resolved address in turn, sharing the connect budget among those left.
    fn connect_any(
        addrs: impl ExactSizeIterator<Item = SocketAddr>,
        timeout: NextTimeout,
    ) -> Result<TcpStream, Error> {
        let started = Instant::now();
        let budget = timeout.not_zero().map(|d| *d);
        let mut left = addrs.len();
        let mut last_error = None;
        for addr in addrs {
            let result = match budget {
                Some(total) => {
                    let remaining = total.saturating_sub(started.elapsed());
                    if remaining.is_zero() {
                        return Err(Error::Timeout(Timeout::Connect));
                    }
                    let share = (remaining / left.max(1) as u32).max(Duration::from_millis(10));
                    TcpStream::connect_timeout(&addr, share)
                }
                None => TcpStream::connect(addr),
            };
            left -= 1;
            match result {
                Ok(stream) => return Ok(stream),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    last_error = Some(Error::Timeout(Timeout::Connect))
                }
                Err(e) => last_error = Some(Error::Io(e)),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            Error::Io(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "no address to connect to",
            ))
        }))
    }

    pub struct QuickAckTransport {
        /// Shared (weakly) with the agent's shutdown handle, which may close it from another
        /// thread while a read blocks.
        stream: Arc<TcpStream>,
        buffers: LazyBuffers,
        /// The socket's current timeouts, so they are only set when they change.
        read_timeout: Option<Duration>,
        write_timeout: Option<Duration>,
        /// A request went out and its answer has not been read yet.
        ack_next_read: bool,
    }

    impl std::fmt::Debug for QuickAckTransport {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("QuickAckTransport")
                .field("peer", &self.stream.peer_addr().ok())
                .finish()
        }
    }

    /// Ask the kernel to acknowledge received data now rather than after its delayed-ACK
    /// timer. Best effort: a failure only brings back the stall this avoids.
    fn quick_ack(stream: &TcpStream) {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            let _ = socket2::SockRef::from(stream).set_tcp_quickack(true);
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let _ = stream;
    }

    /// The timeout for the next operation, or the error if its budget is already spent.
    fn next(timeout: NextTimeout) -> Result<Option<Duration>, Error> {
        if timeout.after.is_zero() {
            return Err(Error::Timeout(timeout.reason));
        }
        Ok(timeout.not_zero().map(|d| *d))
    }

    impl Transport for QuickAckTransport {
        fn buffers(&mut self) -> &mut dyn Buffers {
            &mut self.buffers
        }

        fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
            let timeout = timeout.for_write();
            let limit = next(timeout)?;
            if limit != self.write_timeout {
                self.stream.set_write_timeout(limit)?;
                self.write_timeout = limit;
            }
            let output = &self.buffers.output()[..amount];
            match (&*self.stream).write_all(output) {
                Ok(()) => {}
                Err(e) if is_timeout(&e) => return Err(Error::Timeout(timeout.reason)),
                Err(e) => return Err(e.into()),
            }
            // The answer is coming: make sure its first segments are acknowledged at once.
            quick_ack(&self.stream);
            self.ack_next_read = true;
            Ok(())
        }

        fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
            let timeout = timeout.for_read();
            let limit = next(timeout)?;
            if limit != self.read_timeout {
                self.stream.set_read_timeout(limit)?;
                self.read_timeout = limit;
            }
            let started = Instant::now();
            let input = self.buffers.input_append_buf();
            let amount = loop {
                match (&*self.stream).read(input) {
                    Ok(n) => break n,
                    // A signal (SO_RCVTIMEO reads are not restarted on Linux): go on with what
                    // is left of the budget.
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                        if let Some(limit) = limit {
                            let left = limit.saturating_sub(started.elapsed());
                            if left.is_zero() {
                                return Err(Error::Timeout(timeout.reason));
                            }
                            self.stream.set_read_timeout(Some(left))?;
                            self.read_timeout = Some(left);
                        }
                    }
                    Err(e) if is_timeout(&e) => return Err(Error::Timeout(timeout.reason)),
                    Err(e) => return Err(e.into()),
                }
            };
            // Once more after the first data of an answer (its headers): the body's first
            // segment may be waiting on exactly that ACK. Bulk reads after it need no help.
            if amount > 0 && self.ack_next_read {
                quick_ack(&self.stream);
                self.ack_next_read = false;
            }
            self.buffers.input_appended(amount);
            Ok(amount > 0)
        }

        fn is_open(&mut self) -> bool {
            // A pooled connection is usable if nothing (not even EOF) is waiting on it.
            let stream = &*self.stream;
            if stream.set_nonblocking(true).is_err() {
                return false;
            }
            let mut probe = [0u8; 1];
            let idle = matches!(
                (&*stream).read(&mut probe),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            );
            stream.set_nonblocking(false).is_ok() && idle
        }
    }

    fn is_timeout(e: &io::Error) -> bool {
        matches!(
            e.kind(),
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
        )
    }
}

/// Largest administrative answer (SNS, SQS admin, bucket configuration) read into memory.
pub const ADMIN_ANSWER_LIMIT: usize = 1024 * 1024;

/// Sends `call` under `policy` (4xx permanent, the rest retried) and reads the whole answer,
/// at most `limit` bytes. For small administrative calls; object bodies stream instead.
pub fn send_and_read(
    client: &SignedClient,
    policy: &super::retry::RetryPolicy,
    what: &str,
    call: &Call<'_>,
    limit: usize,
) -> Result<Vec<u8>, CloudError> {
    super::retry::retry(policy, what, &|| false, || {
        let response = client.send(call)?;
        read_capped(response.into_body(), limit, what)
    })
}

/// One request as a client describes it; [`SignedClient::send`] encodes, signs and sends it.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub method: &'a str,
    /// Decoded path below the endpoint's base path, starting with `/`.
    pub path: &'a str,
    /// Decoded query pairs.
    pub query: &'a [(&'a str, &'a str)],
    /// Headers to sign and send (in addition to `host` and the signer's `x-amz-*`).
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
    /// Per-read timeout for this call instead of [`READ_TIMEOUT`] (long polls).
    pub read_timeout: Option<Duration>,
}

/// An agent bound to one endpoint and one set of credentials.
pub struct SignedClient {
    agent: ureq::Agent,
    endpoint: Endpoint,
    credentials: Credentials,
    region: String,
    service: &'static str,
}

impl SignedClient {
    pub fn new(
        endpoint: &str,
        allow_http: bool,
        credentials: Credentials,
        region: &str,
        service: &'static str,
    ) -> Result<SignedClient, String> {
        let endpoint = Endpoint::parse(endpoint, allow_http)?;
        if region.trim().is_empty() {
            return Err("region must not be empty".to_string());
        }
        if credentials.access_key_id.is_empty() || credentials.secret_access_key.is_empty() {
            return Err("access key id and secret access key must not be empty".to_string());
        }
        Ok(SignedClient {
            agent: build_agent(),
            endpoint,
            credentials,
            region: region.to_string(),
            service,
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Trust `roots` instead of the built-in roots (a fresh connection pool).
    pub fn trust(&mut self, roots: &TrustedRoots) {
        self.agent = build_agent_trusting(Some(roots));
    }

    /// Send `call`. A 2xx response is returned with its body unread; any other status becomes
    /// [`CloudError::Service`] (reading at most [`ERROR_BODY_LIMIT`] of its body).
    pub fn send(&self, call: &Call<'_>) -> Result<Response<ureq::Body>, CloudError> {
        let payload_hash = if call.body.is_empty() {
            sigv4::EMPTY_SHA256.to_string()
        } else {
            sigv4::sha256_hex(call.body)
        };
        self.send_with(call, &payload_hash, None)
    }

    /// [`Self::send`] with a streamed body of exactly `len` bytes (an upload), signed as
    /// `UNSIGNED-PAYLOAD` (the body's integrity travels in its `x-amz-checksum-*` header). If
    /// `body` fails before its last byte, the request is cut off and the server never gets a
    /// complete body: that is how an upload whose file changed is abandoned.
    pub fn send_stream(
        &self,
        call: &Call<'_>,
        body: &mut dyn Read,
        len: u64,
    ) -> Result<Response<ureq::Body>, CloudError> {
        self.send_with(call, "UNSIGNED-PAYLOAD", Some((body, len)))
    }

    fn send_with(
        &self,
        call: &Call<'_>,
        payload_hash: &str,
        stream: Option<(&mut dyn Read, u64)>,
    ) -> Result<Response<ureq::Body>, CloudError> {
        let full_path = format!("{}{}", self.endpoint.base_path, call.path);
        let encoded_path = sigv4::encode_path(&full_path);
        let query = sigv4::canonical_query(call.query);
        let host = self.endpoint.host_header();
        let signed = sigv4::sign(
            &self.credentials,
            &RequestToSign {
                method: call.method,
                host: &host,
                path: &encoded_path,
                query: call.query,
                headers: call.headers,
                payload_sha256: payload_hash,
                region: &self.region,
                service: self.service,
                time: SystemTime::now(),
            },
        );

        let mut url = format!("{}{}", self.endpoint.origin(), encoded_path);
        if !query.is_empty() {
            url.push('?');
            url.push_str(&query);
        }
        // Named without the query: messages stay short and never carry tokens.
        let what = format!("{} {}{}", call.method, self.endpoint.origin(), encoded_path);

        let mut builder = http::Request::builder()
            .method(call.method)
            .uri(&url)
            .header("host", &host);
        for (name, value) in call.headers {
            builder = builder.header(*name, *value);
        }
        for (name, value) in &signed {
            builder = builder.header(*name, value.as_str());
        }
        let read_timeout = call.read_timeout.unwrap_or(READ_TIMEOUT);
        let result = if let Some((reader, len)) = stream {
            builder
                .header("content-length", len.to_string())
                .body(ureq::SendBody::from_reader(reader))
                .map_err(|e| build_error(&what, &e))
                .and_then(|req| self.run(req, read_timeout, &what))
        } else if call.body.is_empty() && !matches!(call.method, "POST" | "PUT") {
            builder
                .body(())
                .map_err(|e| build_error(&what, &e))
                .and_then(|req| self.run(req, read_timeout, &what))
        } else {
            // A POST or PUT always says how long it is, `Content-Length: 0` included: S3
            // servers answer a body-less CreateMultipartUpload without it with 411
            // (s3s-fs does; moto lets it pass).
            builder
                .body(call.body)
                .map_err(|e| build_error(&what, &e))
                .and_then(|req| self.run(req, read_timeout, &what))
        };
        let response = result?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(response);
        }
        let (parts, body) = response.into_parts();
        let mut error_body = Vec::new();
        if call.method != "HEAD" {
            // A failure here only loses the details; the status still tells what happened.
            let _ = body
                .into_reader()
                .take(ERROR_BODY_LIMIT as u64)
                .read_to_end(&mut error_body);
        }
        Err(service_error(
            status,
            query_error_code(&parts.headers).as_deref(),
            &error_body,
        ))
    }

    fn run<B: ureq::AsSendBody>(
        &self,
        request: http::Request<B>,
        read_timeout: Duration,
        what: &str,
    ) -> Result<Response<ureq::Body>, CloudError> {
        let request = self
            .agent
            .configure_request(request)
            .timeout_per_read(Some(read_timeout))
            .build();
        self.agent
            .run(request)
            .map_err(|e| transport_error(what, &e))
    }
}

/// A request that could not even be built (bad header value, …): retrying cannot help, so it
/// is reported as a service error with status 0 (which is not retryable).
fn build_error(what: &str, e: &http::Error) -> CloudError {
    CloudError::Service {
        status: 0,
        code: "InvalidRequest".into(),
        message: format!("{what}: {e}"),
    }
}

/// `ureq` errors name the failure (io, TLS, timeout), never our headers, so they are safe to log.
pub fn transport_error(what: &str, e: &ureq::Error) -> CloudError {
    match e {
        ureq::Error::Http(_) | ureq::Error::BadUri(_) => CloudError::Service {
            status: 0,
            code: "InvalidRequest".into(),
            message: format!("{what}: {e}"),
        },
        _ => CloudError::Transport(format!("{what}: {e}")),
    }
}

/// Read a whole (small) body, failing if it is larger than `limit` bytes or is cut short.
pub fn read_capped(body: ureq::Body, limit: usize, what: &str) -> Result<Vec<u8>, CloudError> {
    let mut out = Vec::new();
    body.into_reader()
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| CloudError::Transport(format!("{what}: reading response body: {e}")))?;
    if out.len() > limit {
        return Err(CloudError::Transport(format!(
            "{what}: response body larger than {limit} bytes"
        )));
    }
    Ok(out)
}

/// First value of `name` as text, if present and valid.
pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The code from `x-amzn-query-error: AWS.SimpleQueueService.NonExistentQueue;Sender`.
fn query_error_code(headers: &HeaderMap) -> Option<String> {
    let value = header_str(headers, "x-amzn-query-error")?;
    let code = value.split(';').next().unwrap_or("").trim();
    (!code.is_empty()).then(|| code.to_string())
}

/// Build the [`CloudError::Service`] for an error response: code and message from an S3/SQS
/// XML `<Error>`, an AWS JSON `__type`/`message`, or the `x-amzn-query-error` header (which
/// wins: it carries the long-standing SQS code names); failing all that, from the status.
pub fn service_error(status: u16, query_error_code: Option<&str>, body: &[u8]) -> CloudError {
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim_start();
    let (body_code, body_message) = if trimmed.starts_with('<') {
        parse_xml_error(trimmed)
    } else if trimmed.starts_with('{') {
        parse_json_error(trimmed)
    } else {
        (None, None)
    };
    let code = query_error_code
        .map(str::to_string)
        .or(body_code)
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| default_code(status).to_string());
    let message = body_message.filter(|m| !m.is_empty()).unwrap_or_else(|| {
        if trimmed.is_empty() || trimmed.starts_with('<') || trimmed.starts_with('{') {
            reason(status).to_string()
        } else {
            // Unknown format (a proxy's page): a short piece of it tells the operator most.
            trimmed.chars().take(200).collect()
        }
    });
    CloudError::Service {
        status,
        code: clean(&code, 128),
        message: clean(&message, MAX_ERROR_MESSAGE),
    }
}

/// Keep messages on one line, printable and bounded.
fn clean(text: &str, max_chars: usize) -> String {
    text.chars()
        .take(max_chars)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

/// `Code` and `Message` of the first `<Error>` element, at any depth (`<ErrorResponse>` wraps it
/// in SQS's query protocol). A field counts only once its closing tag is seen, so a cut-off
/// body does not yield half a code.
fn parse_xml_error(xml: &str) -> (Option<String>, Option<String>) {
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut code: Option<String> = None;
    let mut message: Option<String> = None;
    let in_error_field = |stack: &[String]| {
        let n = stack.len();
        n >= 2 && stack[n - 2] == "Error" && (stack[n - 1] == "Code" || stack[n - 1] == "Message")
    };
    while let Ok(event) = reader.read_event() {
        match event {
            Event::Start(e) => {
                if stack.len() >= 16 {
                    break;
                }
                stack.push(e.local_name().as_ref().to_string());
                text.clear();
            }
            Event::End(_) => {
                if in_error_field(&stack) {
                    let value = std::mem::take(&mut text).trim().to_string();
                    match stack.last().map(String::as_str) {
                        Some("Code") => code = Some(value),
                        _ => message = Some(value),
                    }
                }
                if stack.pop().as_deref() == Some("Error") && (code.is_some() || message.is_some())
                {
                    break;
                }
            }
            Event::Text(t) if in_error_field(&stack) => push_bounded(&mut text, &t.xml10_content()),
            Event::CData(t) if in_error_field(&stack) => {
                push_bounded(&mut text, &t.xml10_content())
            }
            Event::GeneralRef(r) if in_error_field(&stack) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    _ => quick_xml::escape::resolve_predefined_entity(&r)
                        .unwrap_or("")
                        .to_string(),
                };
                push_bounded(&mut text, &resolved);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    (code, message)
}

fn push_bounded(text: &mut String, more: &str) {
    if text.len() < ERROR_BODY_LIMIT {
        text.push_str(more);
    }
}

fn parse_json_error(json: &str) -> (Option<String>, Option<String>) {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(json) else {
        return (None, None);
    };
    let text = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| map.get(*n).and_then(|v| v.as_str()).map(str::to_string))
    };
    let code = text(&["__type", "code", "Code"]).map(|t| {
        // `com.amazonaws.sqs#QueueDoesNotExist` (sometimes followed by `:http://…`).
        let after_hash = t.rsplit('#').next().unwrap_or(&t);
        after_hash
            .split(':')
            .next()
            .unwrap_or(after_hash)
            .to_string()
    });
    (code, text(&["message", "Message"]))
}

/// What AWS SDKs call an error that came without a body (HEAD, proxies).
fn default_code(status: u16) -> &'static str {
    match status {
        301 => "PermanentRedirect",
        304 => "NotModified",
        307 => "TemporaryRedirect",
        400 => "BadRequest",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        412 => "PreconditionFailed",
        416 => "InvalidRange",
        429 => "TooManyRequests",
        500 => "InternalError",
        501 => "NotImplemented",
        502 => "BadGateway",
        503 => "ServiceUnavailable",
        504 => "GatewayTimeout",
        _ => "",
    }
}

fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("no error details")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(status: u16, code: &str, message: &str) -> CloudError {
        CloudError::Service {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    #[test]
    fn endpoint_https_with_port_and_path() {
        let e = Endpoint::parse("https://s3.example.com:9000/gw/", false).expect("valid");
        assert_eq!(e.scheme, "https");
        assert_eq!(e.host, "s3.example.com");
        assert_eq!(e.port, Some(9000));
        assert_eq!(e.base_path, "/gw");
        assert_eq!(e.host_header(), "s3.example.com:9000");
        assert_eq!(e.origin(), "https://s3.example.com:9000");

        let e = Endpoint::parse("https://s3.amazonaws.com", false).expect("valid");
        assert_eq!(
            (e.port, e.base_path.as_str(), e.host_header().as_str()),
            (None, "", "s3.amazonaws.com")
        );
        let e = Endpoint::parse("HTTPS://s3.amazonaws.com:443", false).expect("valid");
        assert_eq!(e.host_header(), "s3.amazonaws.com");
    }

    #[test]
    fn endpoint_ipv6_literal_keeps_brackets_in_host_header() {
        let e = Endpoint::parse("http://[::1]:5000", true).expect("valid");
        assert_eq!(e.host_header(), "[::1]:5000");
    }

    #[test]
    fn plain_http_refused_unless_allowed_and_error_names_url() {
        let err = Endpoint::parse("http://127.0.0.1:5000", false).expect_err("must refuse");
        assert!(err.contains("http://127.0.0.1:5000"), "{err}");
        assert!(err.contains("allow_http"), "{err}");
        assert!(Endpoint::parse("http://127.0.0.1:5000", true).is_ok());
    }

    #[test]
    fn endpoint_rejects_bad_urls_without_echoing_userinfo() {
        let err = Endpoint::parse("https://AKID:SECRETVALUE@s3.example.com", false)
            .expect_err("userinfo");
        assert!(!err.contains("SECRETVALUE"), "{err}");
        assert!(err.contains("s3.example.com"), "{err}");
        for bad in [
            "",
            "s3.example.com",
            "ftp://x",
            "https://",
            "https://h/?a=b",
            "https://h/#f",
            "https://h:99999",
            "https://h:",
            "https://h:0",
            "https://h:x",
            "https://h h",
        ] {
            assert!(Endpoint::parse(bad, true).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn s3_xml_error_body() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message><Key>a&amp;b</Key><RequestId>1</RequestId></Error>"#;
        let err = service_error(404, None, body);
        assert_eq!(
            err,
            service(404, "NoSuchKey", "The specified key does not exist.")
        );
        assert!(err.is_not_found());
        assert!(!err.is_retryable());
    }

    #[test]
    fn xml_error_entities_and_cdata_are_resolved() {
        let body = b"<Error><Code>SlowDown</Code><Message>a &lt;b&gt; &#x41;<![CDATA[<c>]]></Message></Error>";
        let err = service_error(503, None, body);
        assert_eq!(err, service(503, "SlowDown", "a <b> A<c>"));
        assert!(err.is_retryable());
    }

    #[test]
    fn sqs_query_xml_error_body() {
        let body = b"<ErrorResponse><Error><Type>Sender</Type><Code>AWS.SimpleQueueService.NonExistentQueue</Code>\
<Message>The specified queue does not exist.</Message></Error><RequestId>x</RequestId></ErrorResponse>";
        assert_eq!(
            service_error(400, None, body),
            service(
                400,
                "AWS.SimpleQueueService.NonExistentQueue",
                "The specified queue does not exist."
            )
        );
    }

    #[test]
    fn sqs_json_error_body_and_query_error_header() {
        let body = br#"{"__type":"com.amazonaws.sqs#QueueDoesNotExist","message":"The specified queue does not exist."}"#;
        assert_eq!(
            service_error(400, None, body),
            service(
                400,
                "QueueDoesNotExist",
                "The specified queue does not exist."
            )
        );
        // The header's code wins.
        assert_eq!(
            service_error(400, Some("AWS.SimpleQueueService.NonExistentQueue"), body),
            service(
                400,
                "AWS.SimpleQueueService.NonExistentQueue",
                "The specified queue does not exist."
            )
        );
        let body = br#"{"__type":"ThrottlingException:http://internal.amazon.com/","Message":"Rate exceeded"}"#;
        let err = service_error(400, None, body);
        assert_eq!(err, service(400, "ThrottlingException", "Rate exceeded"));
        assert!(err.is_retryable());
    }

    #[test]
    fn bodiless_errors_use_status() {
        assert_eq!(
            service_error(404, None, b""),
            service(404, "NotFound", "Not Found")
        );
        assert_eq!(
            service_error(412, None, b""),
            service(412, "PreconditionFailed", "Precondition Failed")
        );
        assert_eq!(
            service_error(403, None, b"  "),
            service(403, "Forbidden", "Forbidden")
        );
        assert!(service_error(503, None, b"").is_retryable());
        assert_eq!(
            service_error(599, None, b""),
            service(599, "", "no error details")
        );
    }

    #[test]
    fn hostile_error_bodies_do_not_break_mapping() {
        // Malformed XML, wrong nesting, JSON of the wrong shape, binary junk, a proxy's HTML.
        let cases: [&[u8]; 8] = [
            b"<Error><Code>Bad",
            b"<Error><Code>A</Wrong></Error>",
            b"<Other><Code>NotMine</Code></Other>",
            b"[1,2,3]",
            br#"{"__type": 5, "message": null}"#,
            b"\xff\xfe\x00binary",
            b"<html><body>502 Bad Gateway</body></html>",
            b"{",
        ];
        for body in cases {
            let err = service_error(502, None, body);
            let CloudError::Service {
                status,
                code,
                message,
            } = &err
            else {
                panic!("not a service error")
            };
            assert_eq!(*status, 502);
            assert_eq!(code, "BadGateway", "{body:?}");
            assert!(!message.is_empty() && !message.contains('\0'));
        }
        // Plain text of an unknown format is kept (short) for the operator.
        let err = service_error(502, None, b"upstream connect error\nreset");
        assert_eq!(
            err,
            service(502, "BadGateway", "upstream connect error reset")
        );
    }

    #[test]
    fn oversized_and_deep_error_bodies_are_bounded() {
        let mut big = b"<Error><Code>X</Code><Message>".to_vec();
        big.extend(std::iter::repeat_n(b'm', 100_000));
        big.extend(b"</Message></Error>");
        let CloudError::Service { message, .. } = service_error(500, None, &big) else {
            panic!()
        };
        assert_eq!(message.chars().count(), MAX_ERROR_MESSAGE);

        let deep = "<a>".repeat(10_000) + "<Error><Code>Deep</Code></Error>";
        let CloudError::Service { code, .. } = service_error(500, None, deep.as_bytes()) else {
            panic!()
        };
        assert_eq!(code, "InternalError");
    }

    /// A keep-alive HTTP server that answers every request with headers and body in two
    /// separate writes, without `TCP_NODELAY`: the pattern of hyper-based S3 servers.
    /// Returns its port and a counter of accepted connections.
    fn two_write_server(
        body_len: usize,
        close_after: Option<usize>,
    ) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::Write;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let accepted = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = std::sync::Arc::clone(&accepted);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                counter.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut served = 0;
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let Ok(n) = conn.read(&mut buf) else { return };
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&buf[..n]);
                        while let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                            request.drain(..end + 4);
                            served += 1;
                            let close = close_after == Some(served);
                            let head = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {body_len}\r\n{}\r\n",
                                if close { "connection: close\r\n" } else { "" }
                            );
                            if conn.write_all(head.as_bytes()).is_err()
                                || conn.write_all(&vec![b'x'; body_len]).is_err()
                            {
                                return;
                            }
                            if close {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (port, accepted)
    }

    fn test_client(port: u16) -> SignedClient {
        SignedClient::new(
            &format!("http://127.0.0.1:{port}"),
            true,
            Credentials {
                access_key_id: "AK".into(),
                secret_access_key: "SK".into(),
                session_token: None,
            },
            "us-east-1",
            "s3",
        )
        .expect("client")
    }

    fn get(client: &SignedClient) -> usize {
        let call = Call {
            method: "GET",
            path: "/b/k",
            query: &[],
            headers: &[],
            body: &[],
            read_timeout: None,
        };
        let response = client.send(&call).expect("response");
        read_capped(response.into_body(), 1 << 20, "GET")
            .expect("body")
            .len()
    }

    #[test]
    fn small_responses_on_a_reused_connection_do_not_wait_for_delayed_acks() {
        // Without TCP_QUICKACK each of these waits for Linux's delayed-ACK timer (>= 40 ms),
        // because the server's Nagle holds the body until the headers are acknowledged.
        let (port, accepted) = two_write_server(4096, None);
        let client = test_client(port);
        assert_eq!(get(&client), 4096);
        let requests = 20;
        let started = std::time::Instant::now();
        for _ in 0..requests {
            assert_eq!(get(&client), 4096);
        }
        let elapsed = started.elapsed();
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "every request must reuse the one connection"
        );
        // 20 stalls would take >= 800 ms; a busy machine still does 20 loopback GETs in far
        // less than half of that.
        if cfg!(any(target_os = "linux", target_os = "android")) {
            assert!(
                elapsed < Duration::from_millis(400),
                "{requests} GETs took {elapsed:?}: delayed-ACK stall"
            );
        }
    }

    #[test]
    fn a_bodyless_post_says_content_length_zero() {
        // s3s-fs (and S3) answer 411 to a CreateMultipartUpload without Content-Length.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            use std::io::{BufRead, BufReader, Write};
            let (stream, _) = listener.accept().expect("accept");
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut head = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).expect("read");
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                head.push_str(&line.to_ascii_lowercase());
            }
            let mut out = stream;
            out.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .expect("answer");
            head
        });
        let client = test_client(port);
        let call = Call {
            method: "POST",
            path: "/b/k",
            query: &[("uploads", "")],
            headers: &[],
            body: &[],
            read_timeout: None,
        };
        client.send(&call).expect("answered");
        let head = server.join().expect("server");
        assert!(head.contains("content-length: 0\r\n"), "{head}");
    }

    #[test]
    fn a_connection_the_server_closed_is_replaced() {
        // The server closes after every second answer; the pool must not hand out the dead one.
        let (port, accepted) = two_write_server(100, Some(2));
        let client = test_client(port);
        for _ in 0..6 {
            assert_eq!(get(&client), 100);
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[test]
    fn resolver_takes_ip_literals_as_they_are_and_remembers_names() {
        use ureq::unversioned::resolver::Resolver;
        let resolver = CachingResolver::default();
        let config = ureq::config::Config::default();
        let timeout = ureq::unversioned::transport::NextTimeout::default();
        let resolve = |url: &str| {
            let uri: Uri = url.parse().expect("uri");
            resolver
                .resolve(&uri, &config, timeout)
                .map(|a| a.iter().copied().collect::<Vec<_>>())
        };
        assert_eq!(
            resolve("http://127.0.0.1:9000/b/k").expect("v4"),
            vec!["127.0.0.1:9000".parse().expect("addr")]
        );
        assert_eq!(
            resolve("https://[::1]/b").expect("v6"),
            vec!["[::1]:443".parse().expect("addr")]
        );
        assert!(resolver.cache.lock().expect("lock").is_empty());
        let first = resolve("http://localhost:9000/").expect("localhost");
        assert!(!first.is_empty());
        assert_eq!(
            resolve("http://localhost:9000/other").expect("cached"),
            first
        );
        assert_eq!(resolver.cache.lock().expect("lock").len(), 1);
        assert!(resolve("http://no-such-host.invalid/").is_err());
        assert_eq!(resolver.cache.lock().expect("lock").len(), 1);
    }

    #[test]
    fn redaction_helper() {
        assert_eq!(redact_userinfo("https://a:b@h/p@x"), "https://***@h/p@x");
        assert_eq!(redact_userinfo("https://h/p@x"), "https://h/p@x");
        assert_eq!(redact_userinfo("nonsense"), "nonsense");
    }
}
