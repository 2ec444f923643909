//! A synthetic, read-only S3 bucket for the memory-scaling run of `benches/run.sh`.
//!
//! `synthetic_s3 --objects N [--size BYTES] [--port P]` serves one bucket (any name) of `N`
//! objects `d/0000000.bin`, `d/0000001.bin`, … whose bytes are made up from the key, with the
//! CRC-64/NVME, ETag and Last-Modified a real store would send. ListObjectsV2, HEAD and GET over
//! HTTP/1.1 keep-alive on 127.0.0.1; no signatures checked, nothing stored.
//!
//! Why: the memory target is about how the agent's RSS grows from 10k to 100k objects, and
//! neither benchmark peer holds 100k objects usefully here (s3s-fs walks the whole bucket for
//! every listing page; moto serves ~300 objects/s). This one costs no memory per object and is
//! never the bottleneck. Prints `listening on PORT` once ready.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};

use sgw_agent::cache::crc64;

const LAST_MODIFIED_HTTP: &str = "Tue, 14 Nov 2023 22:13:20 GMT";
const LAST_MODIFIED_ISO: &str = "2023-11-14T22:13:20.000Z";
const MAX_KEYS: usize = 1000;

#[derive(Clone, Copy)]
struct Bucket {
    objects: usize,
    size: usize,
}

fn key(i: usize) -> String {
    format!("d/{i:07}.bin")
}

/// Index of a key this bucket holds.
fn index_of(bucket: Bucket, key: &str) -> Option<usize> {
    let digits = key.strip_prefix("d/")?.strip_suffix(".bin")?;
    if digits.len() != 7 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let i: usize = digits.parse().ok()?;
    (i < bucket.objects).then_some(i)
}

fn body_of(bucket: Bucket, i: usize) -> Vec<u8> {
    let seed = key(i).into_bytes();
    seed.iter().copied().cycle().take(bucket.size).collect()
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

/// First index whose key sorts after `marker` (keys are fixed-width, so sorted by index).
fn first_after(bucket: Bucket, marker: &str) -> usize {
    let (mut lo, mut hi) = (0, bucket.objects);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if key(mid).as_str() <= marker {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

fn list(bucket: Bucket, name: &str, query: &str) -> String {
    let prefix = query_param(query, "prefix").unwrap_or_default();
    let max_keys = query_param(query, "max-keys")
        .and_then(|m| m.parse().ok())
        .unwrap_or(MAX_KEYS)
        .min(MAX_KEYS);
    let marker = query_param(query, "continuation-token")
        .or_else(|| query_param(query, "start-after"))
        .unwrap_or_default();
    let mut start = first_after(bucket, &marker);
    // Every key starts with "d/": a prefix either covers a range of them or none.
    if !prefix.is_empty() && !"d/".starts_with(prefix.as_str()) && !prefix.starts_with("d/") {
        start = bucket.objects;
    }
    let mut xml = String::with_capacity(200 * max_keys + 500);
    xml.push_str(&format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult \
         xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>{name}</Name><Prefix>{prefix}</Prefix>\
         <MaxKeys>{max_keys}</MaxKeys><EncodingType>url</EncodingType>"
    ));
    let mut count = 0;
    let mut last = None;
    let mut i = start;
    while i < bucket.objects && count < max_keys {
        let k = key(i);
        if k.starts_with(&prefix) {
            xml.push_str(&format!(
                "<Contents><Key>{k}</Key><LastModified>{LAST_MODIFIED_ISO}</LastModified>\
                 <ETag>&quot;{:032x}&quot;</ETag><Size>{}</Size><StorageClass>STANDARD</StorageClass></Contents>",
                i, bucket.size
            ));
            count += 1;
            last = Some(k);
        }
        i += 1;
    }
    let truncated = i < bucket.objects;
    xml.push_str(&format!(
        "<KeyCount>{count}</KeyCount><IsTruncated>{truncated}</IsTruncated>"
    ));
    if truncated && let Some(last) = last {
        xml.push_str(&format!(
            "<NextContinuationToken>{last}</NextContinuationToken>"
        ));
    }
    xml.push_str("</ListBucketResult>");
    xml
}

fn respond(
    out: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
    send_body: bool,
) -> std::io::Result<()> {
    let mut msg = format!("HTTP/1.1 {status}\r\n");
    for (k, v) in headers {
        msg.push_str(&format!("{k}: {v}\r\n"));
    }
    msg.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut bytes = msg.into_bytes();
    if send_body {
        bytes.extend_from_slice(body);
    }
    // One write: headers and body leave together.
    out.write_all(&bytes)
}

fn serve(stream: TcpStream, bucket: Bucket) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                content_length = v.trim().parse().unwrap_or(0);
            }
        }
        if content_length > 0 {
            let mut skip = vec![0u8; content_length.min(1 << 20)];
            std::io::Read::read_exact(&mut reader, &mut skip)?;
        }
        let mut parts = request_line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let path = percent_decode(path.trim_start_matches('/'));
        let (name, object) = path.split_once('/').unwrap_or((path.as_str(), ""));
        let xml = [("content-type", "application/xml".to_string())];
        match (method, object) {
            ("GET", "") => {
                let body = list(bucket, name, query);
                respond(&mut out, "200 OK", &xml, body.as_bytes(), true)?;
            }
            ("GET" | "HEAD", k) => match index_of(bucket, k) {
                Some(i) => {
                    let body = body_of(bucket, i);
                    let headers = [
                        ("etag", format!("\"{i:032x}\"")),
                        ("last-modified", LAST_MODIFIED_HTTP.to_string()),
                        (
                            "x-amz-checksum-crc64nvme",
                            crc64::nvme_to_header(crc64::nvme(&body)),
                        ),
                        ("x-amz-checksum-type", "FULL_OBJECT".to_string()),
                    ];
                    respond(&mut out, "200 OK", &headers, &body, method == "GET")?;
                }
                None => {
                    let body =
                        "<Error><Code>NoSuchKey</Code><Message>no such key</Message></Error>";
                    respond(
                        &mut out,
                        "404 Not Found",
                        &xml,
                        body.as_bytes(),
                        method == "GET",
                    )?;
                }
            },
            _ => {
                let body = "<Error><Code>NotImplemented</Code><Message>read-only</Message></Error>";
                respond(&mut out, "501 Not Implemented", &xml, body.as_bytes(), true)?;
            }
        }
    }
}

fn main() {
    let mut bucket = Bucket {
        objects: 0,
        size: 1024,
    };
    let mut port = 0u16;
    let mut objects_given = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        // `cargo bench` appends `--bench`; `cargo test --all-targets` passes nothing.
        if a == "--bench" {
            continue;
        }
        objects_given |= a == "--objects";
        let value = args.next();
        let parsed = value.as_deref().and_then(|v| v.parse::<usize>().ok());
        match (a.as_str(), parsed) {
            ("--objects", Some(n)) if n < 10_000_000 => bucket.objects = n,
            ("--size", Some(n)) if n <= 64 << 20 => bucket.size = n,
            ("--port", Some(p)) if p <= 65535 => port = p as u16,
            _ => {
                eprintln!("usage: synthetic_s3 --objects N [--size BYTES] [--port P]");
                std::process::exit(64);
            }
        }
    }
    if !objects_given {
        // Run as a test or a plain bench: there is nothing to serve, and a server that never
        // exits would hang the run.
        eprintln!("synthetic_s3: no --objects given; nothing to serve (benches/run.sh starts it)");
        return;
    }
    let listener = match TcpListener::bind(("127.0.0.1", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("synthetic_s3: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(port);
    println!("listening on {port}");
    let _ = std::io::stdout().flush();
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = serve(stream, bucket);
        });
    }
}
