//! AWS Signature Version 4 (header form) for S3 and SQS.
//!
//! The HTTP layer builds the request path and query with [`encode_path`] and
//! [`canonical_query`], then signs exactly those strings: what is sent is what is signed, so
//! keys with spaces, `+`, `%` or unicode cannot drift between the two.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use ring::{digest, hmac};

use crate::format::hex_lower;
use crate::time::civil_from_days;

/// SHA-256 of the empty payload (GET, HEAD).
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Access key pair, optionally with an STS session token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

// Hand-written so the secret and the token can never reach a log line through `{:?}`.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Everything about a request that goes into its signature.
#[derive(Debug, Clone)]
pub struct RequestToSign<'a> {
    pub method: &'a str,
    /// `Host` header value as sent (with `:port` when the port is not the scheme's default).
    pub host: &'a str,
    /// Path exactly as sent on the request line (already encoded with [`encode_path`]).
    pub path: &'a str,
    /// Decoded query pairs; they are encoded and sorted here.
    pub query: &'a [(&'a str, &'a str)],
    /// Extra headers to sign (besides `host`, `x-amz-*` added by the signer). Any case.
    pub headers: &'a [(&'a str, &'a str)],
    /// Hex SHA-256 of the body, or `UNSIGNED-PAYLOAD`.
    pub payload_sha256: &'a str,
    pub region: &'a str,
    pub service: &'a str,
    pub time: SystemTime,
}

/// Headers the caller must add to the request (names lower-case).
pub type AddedHeaders = Vec<(&'static str, String)>;

/// RFC 3986 unreserved characters stay; every other byte becomes `%XX` (upper-case hex), as
/// SigV4 requires (the percent-encoding crate's output, with our set).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// The same, keeping `/` as the path's segment separator.
const PATH: &AsciiSet = &COMPONENT.remove(b'/');

fn encode_into(out: &mut String, input: &str, keep_slash: bool) {
    let set = if keep_slash { PATH } else { COMPONENT };
    out.extend(utf8_percent_encode(input, set));
}

/// Percent-encode one URI component (query name or value, or a path segment).
pub fn encode_component(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    encode_into(&mut out, input, false);
    out
}

/// Percent-encode a decoded path, keeping `/` as the segment separator. The result is both the
/// request-line path and (for S3) the canonical URI.
pub fn encode_path(decoded_path: &str) -> String {
    let mut out = String::with_capacity(decoded_path.len() + 1);
    if !decoded_path.starts_with('/') {
        out.push('/');
    }
    encode_into(&mut out, decoded_path, true);
    out
}

/// `name=value` pairs encoded, sorted by encoded name then value, joined with `&`. Also the
/// query string to send.
pub fn canonical_query(pairs: &[(&str, &str)]) -> String {
    let mut encoded: Vec<(String, String)> = pairs
        .iter()
        .map(|(name, value)| (encode_component(name), encode_component(value)))
        .collect();
    encoded.sort();
    let mut out = String::new();
    for (i, (name, value)) in encoded.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        out.push_str(value);
    }
    out
}

/// `Host` header value: the port is included only when it is not the scheme's default.
pub fn host_header(scheme: &str, host: &str, port: Option<u16>) -> String {
    let default_port = match scheme {
        "https" => Some(443),
        "http" => Some(80),
        _ => None,
    };
    match port {
        Some(p) if Some(p) != default_port => format!("{host}:{p}"),
        _ => host.to_string(),
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex_lower(digest::digest(&digest::SHA256, data).as_ref())
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
}

/// Header values are trimmed and inner runs of spaces collapsed, as SigV4 requires.
fn canonical_header_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for word in value.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// The canonical request and the sorted `SignedHeaders` list for `req` plus `amz_headers`.
fn canonical_request(req: &RequestToSign<'_>, amz_headers: &[(&str, String)]) -> (String, String) {
    let mut headers: Vec<(String, String)> = Vec::with_capacity(req.headers.len() + 4);
    headers.push(("host".to_string(), canonical_header_value(req.host)));
    for (name, value) in req.headers {
        let name = name.to_ascii_lowercase();
        if name != "host" {
            headers.push((name, canonical_header_value(value)));
        }
    }
    for (name, value) in amz_headers {
        headers.push((name.to_string(), canonical_header_value(value)));
    }
    headers.sort();
    // Repeated header names are joined with commas (they were sent as separate lines).
    let mut merged: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        match merged.last_mut() {
            Some((last, joined)) if *last == name => {
                joined.push(',');
                joined.push_str(&value);
            }
            _ => merged.push((name, value)),
        }
    }
    let signed_headers = merged
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(";");

    // S3 signs the path as sent; every other service signs it encoded once more.
    let canonical_uri = if req.service == "s3" {
        if req.path.is_empty() {
            "/".to_string()
        } else {
            req.path.to_string()
        }
    } else {
        encode_path(req.path)
    };

    let mut canonical = String::with_capacity(256);
    canonical.push_str(req.method);
    canonical.push('\n');
    canonical.push_str(&canonical_uri);
    canonical.push('\n');
    canonical.push_str(&canonical_query(req.query));
    canonical.push('\n');
    for (name, value) in &merged {
        canonical.push_str(name);
        canonical.push(':');
        canonical.push_str(value);
        canonical.push('\n');
    }
    canonical.push('\n');
    canonical.push_str(&signed_headers);
    canonical.push('\n');
    canonical.push_str(req.payload_sha256);
    (canonical, signed_headers)
}

/// Sign `req`: returns `authorization`, `x-amz-date`, and when they apply
/// `x-amz-content-sha256` (S3) and `x-amz-security-token`. Add all of them to the request.
pub fn sign(credentials: &Credentials, req: &RequestToSign<'_>) -> AddedHeaders {
    let (amz_date, date) = amz_date(req.time);
    let mut amz_headers: Vec<(&'static str, String)> = vec![("x-amz-date", amz_date.clone())];
    if req.service == "s3" {
        amz_headers.push(("x-amz-content-sha256", req.payload_sha256.to_string()));
    }
    if let Some(token) = &credentials.session_token {
        amz_headers.push(("x-amz-security-token", token.clone()));
    }

    let (canonical, signed_headers) = canonical_request(req, &amz_headers);
    let scope = format!("{date}/{}/{}/aws4_request", req.region, req.service);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    );

    let secret = format!("AWS4{}", credentials.secret_access_key);
    let k_date = hmac_sha256(secret.as_bytes(), date.as_bytes());
    let k_region = hmac_sha256(k_date.as_ref(), req.region.as_bytes());
    let k_service = hmac_sha256(k_region.as_ref(), req.service.as_bytes());
    let k_signing = hmac_sha256(k_service.as_ref(), b"aws4_request");
    let signature = hex_lower(hmac_sha256(k_signing.as_ref(), string_to_sign.as_bytes()).as_ref());

    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        credentials.access_key_id
    );
    let mut out = Vec::with_capacity(amz_headers.len() + 1);
    out.push(("authorization", authorization));
    out.extend(amz_headers);
    out
}

/// `(20130524T000000Z, 20130524)` for a time; times before 1970 are signed as they are.
pub fn amz_date(time: SystemTime) -> (String, String) {
    let unix_secs: i64 = match time.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => {
            let before = e.duration();
            // Round towards the past so a fractional second before the epoch is 1969-12-31T23:59:59.
            let whole = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
            -whole - i64::from(before.subsec_nanos() > 0)
        }
    };
    let days = unix_secs.div_euclid(86_400);
    let secs_of_day = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hh, mm, ss) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
    let date = format!("{year:04}{month:02}{day:02}");
    (format!("{date}T{hh:02}{mm:02}{ss:02}Z"), date)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn example_credentials() -> Credentials {
        Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }

    fn at(unix: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(unix)
    }

    // 2013-05-24T00:00:00Z
    const VECTOR_TIME: u64 = 1_369_353_600;

    fn vector_request<'a>(headers: &'a [(&'a str, &'a str)]) -> RequestToSign<'a> {
        RequestToSign {
            method: "GET",
            host: "examplebucket.s3.amazonaws.com",
            path: "/test.txt",
            query: &[],
            headers,
            payload_sha256: EMPTY_SHA256,
            region: "us-east-1",
            service: "s3",
            time: at(VECTOR_TIME),
        }
    }

    #[test]
    fn aws_get_object_vector() {
        let headers = [("Range", "bytes=0-9")];
        let req = vector_request(&headers);
        let amz = vec![
            ("x-amz-date", "20130524T000000Z".to_string()),
            ("x-amz-content-sha256", EMPTY_SHA256.to_string()),
        ];
        let (canonical, signed) = canonical_request(&req, &amz);
        assert_eq!(signed, "host;range;x-amz-content-sha256;x-amz-date");
        assert_eq!(
            sha256_hex(canonical.as_bytes()),
            "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
        );

        let added = sign(&example_credentials(), &req);
        let auth = &added
            .iter()
            .find(|(n, _)| *n == "authorization")
            .expect("auth")
            .1;
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        assert!(added.contains(&("x-amz-date", "20130524T000000Z".to_string())));
        assert!(added.contains(&("x-amz-content-sha256", EMPTY_SHA256.to_string())));
        assert!(!added.iter().any(|(n, _)| *n == "x-amz-security-token"));
    }

    #[test]
    fn session_token_is_added_and_signed() {
        let mut creds = example_credentials();
        creds.session_token = Some("TOKEN/+=".into());
        let req = vector_request(&[]);
        let added = sign(&creds, &req);
        assert!(added.contains(&("x-amz-security-token", "TOKEN/+=".to_string())));
        let auth = &added[0].1;
        assert!(
            auth.contains(
                "SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token,"
            )
        );
        // A different token must change the signature.
        creds.session_token = Some("OTHER".into());
        assert_ne!(sign(&creds, &req)[0].1, *auth);
    }

    #[test]
    fn sqs_has_no_content_sha256_header_and_signs_given_headers() {
        let headers = [
            ("Content-Type", "application/x-amz-json-1.0"),
            ("X-Amz-Target", "AmazonSQS.ReceiveMessage"),
        ];
        let req = RequestToSign {
            method: "POST",
            host: "127.0.0.1:5000",
            path: "/",
            query: &[],
            headers: &headers,
            payload_sha256: &sha256_hex(b"{}"),
            region: "us-east-1",
            service: "sqs",
            time: at(VECTOR_TIME),
        };
        let added = sign(&example_credentials(), &req);
        assert!(!added.iter().any(|(n, _)| *n == "x-amz-content-sha256"));
        assert!(added[0].1.contains("/us-east-1/sqs/aws4_request"));
        assert!(
            added[0]
                .1
                .contains("SignedHeaders=content-type;host;x-amz-date;x-amz-target,")
        );
    }

    #[test]
    fn credentials_debug_hides_secret_and_token() {
        let mut creds = example_credentials();
        creds.session_token = Some("SESSIONTOKENVALUE".into());
        let shown = format!("{creds:?}");
        assert!(shown.contains("AKIAIOSFODNN7EXAMPLE"));
        assert!(!shown.contains("wJalrXUtnFEMI"));
        assert!(!shown.contains("SESSIONTOKENVALUE"));
    }

    #[test]
    fn path_encoding_keeps_only_unreserved_and_slash() {
        assert_eq!(encode_path("/bkt/a b"), "/bkt/a%20b");
        assert_eq!(encode_path("/bkt/a+b"), "/bkt/a%2Bb");
        assert_eq!(encode_path("/bkt/100%"), "/bkt/100%25");
        assert_eq!(encode_path("/bkt/é€"), "/bkt/%C3%A9%E2%82%AC");
        assert_eq!(encode_path("/bkt/~a-b_c.d"), "/bkt/~a-b_c.d");
        assert_eq!(encode_path("/bkt/dir/sub//x"), "/bkt/dir/sub//x");
        assert_eq!(encode_path("/bkt/?#&="), "/bkt/%3F%23%26%3D");
        assert_eq!(encode_path("nolead"), "/nolead");
        // A component never keeps '/'.
        assert_eq!(encode_component("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn s3_path_is_not_double_encoded_but_other_services_are() {
        let path = encode_path("/bkt/a b");
        let mut req = vector_request(&[]);
        req.path = &path;
        let (s3, _) = canonical_request(&req, &[]);
        assert_eq!(s3.lines().nth(1), Some("/bkt/a%20b"));
        req.service = "sqs";
        let (other, _) = canonical_request(&req, &[]);
        assert_eq!(other.lines().nth(1), Some("/bkt/a%2520b"));
    }

    #[test]
    fn query_is_sorted_and_encoded() {
        let q = canonical_query(&[
            ("prefix", "a b+c/é"),
            ("list-type", "2"),
            (
                "continuation-token",
                "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=",
            ),
            ("encoding-type", "url"),
        ]);
        assert_eq!(
            q,
            "continuation-token=1ueGcxLPRx1Tr%2FXYExHnhbYLgveDs2J%2Fwm36Hy4vbOwM%3D&encoding-type=url&\
             list-type=2&prefix=a%20b%2Bc%2F%C3%A9"
        );
        assert_eq!(canonical_query(&[]), "");
        // Same name: ordered by value.
        assert_eq!(canonical_query(&[("a", "2"), ("a", "1")]), "a=1&a=2");
    }

    #[test]
    fn header_values_trimmed_and_collapsed() {
        assert_eq!(canonical_header_value("  a   b \t c  "), "a b c");
        let headers = [("X-Custom", " v1  "), ("x-custom", "v2")];
        let req = vector_request(&headers);
        let (canonical, signed) = canonical_request(&req, &[]);
        assert!(canonical.contains("\nx-custom:v1,v2\n"));
        assert_eq!(signed, "host;x-custom");
    }

    #[test]
    fn host_header_includes_only_non_default_port() {
        assert_eq!(host_header("https", "s3.example", Some(443)), "s3.example");
        assert_eq!(host_header("https", "s3.example", None), "s3.example");
        assert_eq!(host_header("http", "127.0.0.1", Some(80)), "127.0.0.1");
        assert_eq!(
            host_header("http", "127.0.0.1", Some(5000)),
            "127.0.0.1:5000"
        );
        assert_eq!(
            host_header("https", "s3.example", Some(80)),
            "s3.example:80"
        );
    }

    #[test]
    fn amz_date_formats() {
        assert_eq!(
            amz_date(at(VECTOR_TIME)),
            ("20130524T000000Z".into(), "20130524".into())
        );
        assert_eq!(
            amz_date(at(0)),
            ("19700101T000000Z".into(), "19700101".into())
        );
        // Leap day, end of day.
        assert_eq!(amz_date(at(951_868_799)).0, "20000229T235959Z");
        assert_eq!(amz_date(at(951_868_800)).0, "20000301T000000Z");
        // Subsecond part is dropped, not rounded.
        assert_eq!(
            amz_date(at(VECTOR_TIME) + Duration::from_millis(999)).0,
            "20130524T000000Z"
        );
        // Before the epoch.
        assert_eq!(
            amz_date(UNIX_EPOCH - Duration::from_secs(1)).0,
            "19691231T235959Z"
        );
        assert_eq!(
            amz_date(UNIX_EPOCH - Duration::from_millis(1)).0,
            "19691231T235959Z"
        );
    }
}
