//! Server-side verification of the two Alibaba Cloud signature schemes the official SDKs use,
//! and of the agents' gateway signatures, all with replay protection.
//!
//! - **ACS3-HMAC-SHA256** (tea-openapi, `alibabacloud-sgw20180511`): canonical request =
//!   `METHOD \n PATH \n QUERY \n HEADERS \n SIGNED-HEADERS \n x-acs-content-sha256`, where QUERY is
//!   the decoded query sorted by name as `name=quote(value)` joined by `&`, HEADERS is
//!   `name:value\n` for each signed header (repeats sorted and joined by `,`); string to sign
//!   `ACS3-HMAC-SHA256 \n hex(sha256(canonical))`; signature `hex(hmac_sha256(secret, sts))`.
//! - **RPC HMAC-SHA1** (`aliyun-python-sdk-core`): string to sign
//!   `METHOD&%2F&enc(sorted enc(name)=enc(value) joined by &)` over every parameter but
//!   `Signature` (query and form body); signature `base64(hmac_sha1(secret + "&", sts))`.
//!
//! Both are matched to the SDKs' own signing code (read from the PyPI packages) and checked
//! against requests captured from them (tests below). A timestamp must be within
//! [`TIMESTAMP_WINDOW_SECS`] of the server clock and a nonce is accepted once.

use ring::hmac;

use super::error::ApiError;
use super::http_server::Request;
use super::params::{Params, percent_encode};

/// Requests signed more than this many seconds before or after the server's clock are refused.
pub const TIMESTAMP_WINDOW_SECS: i64 = 15 * 60;
/// Longest nonce, access key id or gateway id we look at.
const MAX_TOKEN_LEN: usize = 128;
/// The API version both SDKs send.
pub const API_VERSION: &str = "2018-05-11";

/// Where verification looks up secrets and remembers nonces (the SQLite store in the server,
/// a map in unit tests).
pub trait AuthStore {
    /// The secret of an API access key, if the key exists.
    fn api_secret(&self, access_key_id: &str) -> Result<Option<String>, ApiError>;
    /// The secret of a gateway, if the gateway exists.
    fn gateway_secret(&self, gateway_id: &str) -> Result<Option<String>, ApiError>;
    /// Records `nonce` until `expires_at` (Unix seconds). `Ok(false)` if it was already there.
    fn remember_nonce(&self, nonce: &str, expires_at: i64) -> Result<bool, ApiError>;
}

/// Which scheme a request was signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Acs3,
    Rpc,
}

/// A request whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub scheme: Scheme,
    pub access_key_id: String,
    pub action: String,
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ` (what both SDKs send) into Unix seconds: the agent's RFC 3339
/// parser, held to the one exact form a signature date may take.
pub fn parse_iso8601(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 20 || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    sgw_agent::time::parse_iso8601(text)
}

pub use sgw_agent::control_client::sign::format_iso8601;

fn check_token(value: &str, what: &str) -> Result<(), ApiError> {
    if value.is_empty()
        || value.len() > MAX_TOKEN_LEN
        || !value.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::incomplete_signature(&format!(
            "{what} is missing or malformed."
        )));
    }
    Ok(())
}

fn check_time(timestamp: &str, now: i64) -> Result<i64, ApiError> {
    let signed_at = parse_iso8601(timestamp).ok_or_else(ApiError::timestamp_format)?;
    if (now - signed_at).abs() > TIMESTAMP_WINDOW_SECS {
        return Err(ApiError::timestamp_expired());
    }
    Ok(signed_at)
}

fn remember(
    store: &dyn AuthStore,
    scope: &str,
    nonce: &str,
    signed_at: i64,
) -> Result<(), ApiError> {
    // A replay carries the same timestamp, so it is refused by the window once the nonce expires.
    let expires_at = signed_at + TIMESTAMP_WINDOW_SECS + 60;
    if store.remember_nonce(&format!("{scope}\n{nonce}"), expires_at)? {
        Ok(())
    } else {
        Err(ApiError::nonce_used())
    }
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 256 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

pub use sgw_agent::control_client::sign::{hex_lower, sha256_hex};

/// Verifies an API request signed by either SDK. `query` holds the query-string parameters,
/// `all` those plus any form-body parameters.
pub fn verify_api_request(
    req: &Request,
    query: &Params,
    all: &Params,
    now: i64,
    store: &dyn AuthStore,
) -> Result<Verified, ApiError> {
    match req.header("authorization") {
        Some(auth) if auth.starts_with("ACS3-") => verify_acs3(req, auth, query, now, store),
        Some(_) => Err(ApiError::incomplete_signature(
            "Unsupported Authorization scheme.",
        )),
        None if all.get("Signature").is_some() || all.get("AccessKeyId").is_some() => {
            verify_rpc(req, all, now, store)
        }
        None => Err(ApiError::incomplete_signature(
            "The request is not signed: send Authorization (ACS3-HMAC-SHA256) or Signature (HMAC-SHA1).",
        )),
    }
}

fn verify_acs3(
    req: &Request,
    authorization: &str,
    query: &Params,
    now: i64,
    store: &dyn AuthStore,
) -> Result<Verified, ApiError> {
    let Some(rest) = authorization.strip_prefix("ACS3-HMAC-SHA256 ") else {
        return Err(ApiError::incomplete_signature(
            "Only ACS3-HMAC-SHA256 is supported.",
        ));
    };
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (name, value) = part.trim().split_once('=').unwrap_or((part.trim(), ""));
        let slot = match name {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => {
                return Err(ApiError::incomplete_signature(
                    "Unknown Authorization field.",
                ));
            }
        };
        if slot.replace(value).is_some() {
            return Err(ApiError::incomplete_signature(
                "Repeated Authorization field.",
            ));
        }
    }
    let (Some(access_key_id), Some(signed_headers), Some(signature)) =
        (credential, signed_headers, signature)
    else {
        return Err(ApiError::incomplete_signature(
            "Authorization needs Credential, SignedHeaders and Signature.",
        ));
    };
    check_token(access_key_id, "Credential")?;
    let names: Vec<&str> = signed_headers.split(';').collect();
    if names.len() > 32
        || names.iter().any(|n| {
            n.is_empty()
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
    {
        return Err(ApiError::incomplete_signature(
            "SignedHeaders is malformed.",
        ));
    }
    for required in [
        "host",
        "x-acs-action",
        "x-acs-version",
        "x-acs-date",
        "x-acs-signature-nonce",
        "x-acs-content-sha256",
    ] {
        if !names.contains(&required) {
            return Err(ApiError::incomplete_signature(&format!(
                "Header {required} must be signed."
            )));
        }
    }
    let single = |name: &str| -> Result<&str, ApiError> {
        match req.header_values(name).as_slice() {
            [one] => Ok(one),
            _ => Err(ApiError::incomplete_signature(&format!(
                "Header {name} must be sent exactly once."
            ))),
        }
    };
    let date = single("x-acs-date")?;
    let nonce = single("x-acs-signature-nonce")?;
    let content_sha = single("x-acs-content-sha256")?;
    let action = single("x-acs-action")?;
    let version = single("x-acs-version")?;
    check_token(nonce, "x-acs-signature-nonce")?;
    let signed_at = check_time(date, now)?;
    if version != API_VERSION {
        return Err(ApiError::invalid_version());
    }

    let mut canonical = String::with_capacity(512);
    canonical.push_str(&req.method);
    canonical.push('\n');
    canonical.push_str(if req.path.is_empty() { "/" } else { &req.path });
    canonical.push('\n');
    let query_part: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{k}={}", percent_encode(v)))
        .collect();
    canonical.push_str(&query_part.join("&"));
    canonical.push('\n');
    for name in &names {
        let mut values: Vec<&str> = req.header_values(name);
        if values.is_empty() {
            return Err(ApiError::incomplete_signature(&format!(
                "Signed header {name} is missing."
            )));
        }
        values.sort_unstable();
        canonical.push_str(name);
        canonical.push(':');
        canonical.push_str(&values.join(","));
        canonical.push('\n');
    }
    canonical.push('\n');
    canonical.push_str(signed_headers);
    canonical.push('\n');
    canonical.push_str(content_sha);
    let string_to_sign = format!("ACS3-HMAC-SHA256\n{}", sha256_hex(canonical.as_bytes()));

    let secret = store
        .api_secret(access_key_id)?
        .ok_or_else(ApiError::access_key_not_found)?;
    let provided =
        hex_decode(signature).ok_or_else(|| ApiError::signature_does_not_match(&string_to_sign))?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hmac::verify(&key, string_to_sign.as_bytes(), &provided)
        .map_err(|_| ApiError::signature_does_not_match(&string_to_sign))?;
    // The body is covered only through this header, so it must be the body's real hash.
    if !content_sha.eq_ignore_ascii_case(&sha256_hex(&req.body)) {
        return Err(ApiError::signature_does_not_match(
            "x-acs-content-sha256 is not the SHA-256 of the body",
        ));
    }
    remember(store, &format!("acs3\n{access_key_id}"), nonce, signed_at)?;
    Ok(Verified {
        scheme: Scheme::Acs3,
        access_key_id: access_key_id.to_string(),
        action: action.to_string(),
    })
}

/// The RPC string to sign over `params` (which must not contain `Signature`).
pub fn rpc_string_to_sign(method: &str, params: &Params) -> String {
    let canonical: Vec<String> = params
        .iter()
        .filter(|(k, _)| *k != "Signature")
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect();
    format!("{method}&%2F&{}", percent_encode(&canonical.join("&")))
}

fn verify_rpc(
    req: &Request,
    all: &Params,
    now: i64,
    store: &dyn AuthStore,
) -> Result<Verified, ApiError> {
    let need = |name: &str| -> Result<&str, ApiError> {
        all.get(name).filter(|v| !v.is_empty()).ok_or_else(|| {
            ApiError::incomplete_signature(&format!("Parameter {name} is required."))
        })
    };
    let access_key_id = need("AccessKeyId")?;
    let signature = need("Signature")?;
    let method = need("SignatureMethod")?;
    let version = need("SignatureVersion")?;
    let nonce = need("SignatureNonce")?;
    let timestamp = need("Timestamp")?;
    check_token(access_key_id, "AccessKeyId")?;
    check_token(nonce, "SignatureNonce")?;
    if method != "HMAC-SHA1" || version != "1.0" {
        return Err(ApiError::incomplete_signature(
            "Use SignatureMethod=HMAC-SHA1 and SignatureVersion=1.0.",
        ));
    }
    let signed_at = check_time(timestamp, now)?;
    let string_to_sign = rpc_string_to_sign(&req.method, all);
    let secret = store
        .api_secret(access_key_id)?
        .ok_or_else(ApiError::access_key_not_found)?;
    use base64::Engine as _;
    let provided = base64::engine::general_purpose::STANDARD
        .decode(signature)
        .map_err(|_| ApiError::signature_does_not_match(&string_to_sign))?;
    let key = hmac::Key::new(
        hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        format!("{secret}&").as_bytes(),
    );
    hmac::verify(&key, string_to_sign.as_bytes(), &provided)
        .map_err(|_| ApiError::signature_does_not_match(&string_to_sign))?;
    match all.get("Version") {
        Some(API_VERSION) => {}
        _ => return Err(ApiError::invalid_version()),
    }
    let action = all.get("Action").unwrap_or_default();
    remember(store, &format!("rpc\n{access_key_id}"), nonce, signed_at)?;
    Ok(Verified {
        scheme: Scheme::Rpc,
        access_key_id: access_key_id.to_string(),
        action: action.to_string(),
    })
}

// ---------------------------------------------------------------------------------------------
// Agents: gateway id + secret.

// The agent side of this scheme (string to sign, signature, headers) lives in the agent
// crate, which both sides share.
pub use sgw_agent::control_client::sign::{
    AGENT_SCHEME, agent_signature, agent_string_to_sign, sign_agent_request,
};

/// Verifies an agent request; returns the gateway id.
pub fn verify_agent_request(
    req: &Request,
    now: i64,
    store: &dyn AuthStore,
) -> Result<String, ApiError> {
    let unauthorized = |why: &str| ApiError::new(401, "InvalidGatewaySignature", why.to_string());
    let gateway_id = req
        .header("x-sgw-gateway-id")
        .ok_or_else(|| unauthorized("x-sgw-gateway-id is missing."))?;
    let date = req
        .header("x-sgw-date")
        .ok_or_else(|| unauthorized("x-sgw-date is missing."))?;
    let nonce = req
        .header("x-sgw-nonce")
        .ok_or_else(|| unauthorized("x-sgw-nonce is missing."))?;
    let auth = req
        .header("authorization")
        .ok_or_else(|| unauthorized("Authorization is missing."))?;
    check_token(gateway_id, "x-sgw-gateway-id")
        .map_err(|_| unauthorized("x-sgw-gateway-id is malformed."))?;
    check_token(nonce, "x-sgw-nonce").map_err(|_| unauthorized("x-sgw-nonce is malformed."))?;
    let signed_at = check_time(date, now)?;
    let provided = auth
        .strip_prefix(AGENT_SCHEME)
        .and_then(|r| r.trim_start().strip_prefix("Signature="))
        .and_then(hex_decode)
        .ok_or_else(|| unauthorized("Authorization must be `SGW-HMAC-SHA256 Signature=<hex>`."))?;
    let secret = store.gateway_secret(gateway_id)?.ok_or_else(|| {
        ApiError::new(
            401,
            "GatewayNotExist",
            "The gateway is not known to this control endpoint.",
        )
    })?;
    let sts = agent_string_to_sign(&req.method, &req.path, gateway_id, date, nonce, &req.body);
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hmac::verify(&key, sts.as_bytes(), &provided)
        .map_err(|_| unauthorized("The signature does not match; check the gateway secret."))?;
    remember(store, &format!("agent\n{gateway_id}"), nonce, signed_at)?;
    Ok(gateway_id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashSet;

    struct MapStore {
        nonces: RefCell<HashSet<String>>,
    }
    impl MapStore {
        fn new() -> MapStore {
            MapStore {
                nonces: RefCell::new(HashSet::new()),
            }
        }
    }
    impl AuthStore for MapStore {
        fn api_secret(&self, ak: &str) -> Result<Option<String>, ApiError> {
            Ok((ak == "AK").then(|| "SK".to_string()))
        }
        fn gateway_secret(&self, gw: &str) -> Result<Option<String>, ApiError> {
            Ok((gw == "gw-1").then(|| "gwsecret".to_string()))
        }
        fn remember_nonce(&self, nonce: &str, _expires_at: i64) -> Result<bool, ApiError> {
            Ok(self.nonces.borrow_mut().insert(nonce.to_string()))
        }
    }

    fn req(method: &str, target: &str, headers: &[(&str, &str)]) -> Request {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Request {
            method: method.into(),
            path: path.into(),
            query: query.into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
                .collect(),
            body: Vec::new(),
            peer: None,
        }
    }

    fn params(q: &str) -> Params {
        let mut p = Params::new();
        p.add_encoded(q).expect("valid query");
        p
    }

    // Captured from alibabacloud-sgw20180511 1.0.1 / tea-openapi 0.4.6 with AK/SK.
    const ACS3_TARGET: &str =
        "/?BucketName=bk&BucketRegion=us-east-1&Description=h%C3%A9llo&Name=a+b%2Bc%2F%2A~";
    const ACS3_HEADERS: &[(&str, &str)] = &[
        ("host", "127.0.0.1:18555"),
        ("x-acs-version", "2018-05-11"),
        ("x-acs-action", "CreateExpressSync"),
        (
            "user-agent",
            "AlibabaCloud (Linux; x86_64) Python/3.11.7 Core/0.4.3 TeaDSL/2",
        ),
        ("x-acs-date", "2026-11-21T05:22:09Z"),
        ("x-acs-signature-nonce", "fd317177b4fe9c4ade8d51f86b6bed7c"),
        ("accept", "application/json"),
        (
            "x-acs-content-sha256",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ),
        ("x-acs-credentials-provider", "static_ak"),
        (
            "Authorization",
            "ACS3-HMAC-SHA256 Credential=AK,SignedHeaders=accept;host;user-agent;x-acs-action;x-acs-content-sha256;x-acs-credentials-provider;x-acs-date;x-acs-signature-nonce;x-acs-version,Signature=a1a667f73a8f89ed32328e9a14d68cab6fe153870bf132361e10006c0b0bff9f",
        ),
        ("Content-Length", "0"),
    ];
    const ACS3_NOW: i64 = 1_795_238_529; // 2026-11-21T05:22:09Z

    // Captured from aliyun-python-sdk-core 2.16.1 (RPC) with AK/SK.
    const RPC_TARGET: &str = "/?Name=a%20b%2Bc%2F%2A~&Description=h%C3%A9llo&Version=2018-05-11&Action=CreateExpressSync&Format=JSON&RegionId=cn-hangzhou&Timestamp=2026-11-21T05%3A22%3A09Z&SignatureMethod=HMAC-SHA1&SignatureType=&SignatureVersion=1.0&SignatureNonce=ad0da7330ecdc222fd7937edd205ea5c&AccessKeyId=AK&Signature=rT1qFgPmJ3FlhDtVBA8KekYZLcU%3D";

    #[test]
    fn iso8601_round_trips_and_refuses_nonsense() {
        assert_eq!(parse_iso8601("2026-11-21T05:22:09Z"), Some(ACS3_NOW));
        assert_eq!(format_iso8601(ACS3_NOW), "2026-11-21T05:22:09Z");
        for bad in [
            "",
            "2026-11-21 05:22:09Z",
            "2026-02-30T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "+026-11-21T05:22:09Z",
            "2026-11-21T05:22:09+00:00",
            "2026-11-21T25:00:00Z",
        ] {
            assert_eq!(parse_iso8601(bad), None, "{bad}");
        }
    }

    #[test]
    fn accepts_the_tea_sdk_request_once() {
        let r = req("POST", ACS3_TARGET, ACS3_HEADERS);
        let q = params(&r.query);
        let store = MapStore::new();
        let v = verify_api_request(&r, &q, &q, ACS3_NOW + 60, &store).expect("signature verifies");
        assert_eq!(v.scheme, Scheme::Acs3);
        assert_eq!(v.action, "CreateExpressSync");
        assert_eq!(v.access_key_id, "AK");
        let replay = verify_api_request(&r, &q, &q, ACS3_NOW + 61, &store).expect_err("replay");
        assert_eq!(replay.code, "SignatureNonceUsed");
    }

    #[test]
    fn refuses_tampered_tea_requests() {
        let store = MapStore::new();
        // A parameter changed after signing.
        let r = req("POST", &ACS3_TARGET.replace("bk", "bx"), ACS3_HEADERS);
        let q = params(&r.query);
        assert_eq!(
            verify_api_request(&r, &q, &q, ACS3_NOW, &store)
                .unwrap_err()
                .code,
            "SignatureDoesNotMatch"
        );
        // The action header swapped.
        let swapped: Vec<(&str, &str)> = ACS3_HEADERS
            .iter()
            .map(|&(n, v)| {
                if n == "x-acs-action" {
                    (n, "DeleteExpressSync")
                } else {
                    (n, v)
                }
            })
            .collect();
        let r = req("POST", ACS3_TARGET, &swapped);
        let q = params(&r.query);
        assert_eq!(
            verify_api_request(&r, &q, &q, ACS3_NOW, &store)
                .unwrap_err()
                .code,
            "SignatureDoesNotMatch"
        );
        // A body smuggled in under the empty-body hash.
        let mut r = req("POST", ACS3_TARGET, ACS3_HEADERS);
        r.body = b"Name=evil".to_vec();
        let q = params(&r.query);
        assert_eq!(
            verify_api_request(&r, &q, &q, ACS3_NOW, &store)
                .unwrap_err()
                .code,
            "SignatureDoesNotMatch"
        );
        // Outside the window, either side.
        let r = req("POST", ACS3_TARGET, ACS3_HEADERS);
        let q = params(&r.query);
        assert_eq!(
            verify_api_request(&r, &q, &q, ACS3_NOW + 16 * 60, &store)
                .unwrap_err()
                .code,
            "InvalidTimeStamp.Expired"
        );
        assert_eq!(
            verify_api_request(&r, &q, &q, ACS3_NOW - 16 * 60, &store)
                .unwrap_err()
                .code,
            "InvalidTimeStamp.Expired"
        );
        // Unknown key.
        let other: Vec<(&str, &str)> = ACS3_HEADERS
            .iter()
            .map(|&(n, v)| if n == "Authorization" { (n, "ACS3-HMAC-SHA256 Credential=NOPE,SignedHeaders=accept;host;user-agent;x-acs-action;x-acs-content-sha256;x-acs-credentials-provider;x-acs-date;x-acs-signature-nonce;x-acs-version,Signature=00") } else { (n, v) })
            .collect();
        let r = req("POST", ACS3_TARGET, &other);
        assert_eq!(
            verify_api_request(&r, &q, &q, ACS3_NOW, &store)
                .unwrap_err()
                .code,
            "InvalidAccessKeyId.NotFound"
        );
        // The nonce left out of the signed headers: refused before any key lookup.
        let unsigned: Vec<(&str, &str)> = ACS3_HEADERS
            .iter()
            .map(|&(n, v)| if n == "Authorization" { (n, "ACS3-HMAC-SHA256 Credential=AK,SignedHeaders=host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-version,Signature=00") } else { (n, v) })
            .collect();
        let r = req("POST", ACS3_TARGET, &unsigned);
        assert_eq!(
            verify_api_request(&r, &q, &q, ACS3_NOW, &store)
                .unwrap_err()
                .code,
            "IncompleteSignature"
        );
        for hostile in [
            "ACS3-HMAC-SHA256",
            "ACS3-HMAC-SHA256 Credential=AK",
            "ACS3-HMAC-SM3 Credential=AK,SignedHeaders=host,Signature=00",
            "ACS3-HMAC-SHA256 Credential=AK,Credential=AK,SignedHeaders=host,Signature=00",
            "Bearer x",
        ] {
            let h: Vec<(&str, &str)> = ACS3_HEADERS
                .iter()
                .map(|&(n, v)| {
                    if n == "Authorization" {
                        (n, hostile)
                    } else {
                        (n, v)
                    }
                })
                .collect();
            let r = req("POST", ACS3_TARGET, &h);
            assert_eq!(
                verify_api_request(&r, &q, &q, ACS3_NOW, &store)
                    .unwrap_err()
                    .code,
                "IncompleteSignature",
                "{hostile}"
            );
        }
    }

    #[test]
    fn accepts_the_rpc_sdk_request_once() {
        let r = req("POST", RPC_TARGET, &[("host", "127.0.0.1:18555")]);
        let q = params(&r.query);
        let store = MapStore::new();
        let v = verify_api_request(&r, &q, &q, ACS3_NOW, &store).expect("signature verifies");
        assert_eq!(v.scheme, Scheme::Rpc);
        assert_eq!(v.action, "CreateExpressSync");
        assert_eq!(
            verify_api_request(&r, &q, &q, ACS3_NOW, &store)
                .unwrap_err()
                .code,
            "SignatureNonceUsed"
        );
    }

    #[test]
    fn refuses_tampered_rpc_requests() {
        let store = MapStore::new();
        let cases = [
            (
                RPC_TARGET.replace("Name=a", "Name=b"),
                "SignatureDoesNotMatch",
            ),
            (
                RPC_TARGET.replace("AccessKeyId=AK", "AccessKeyId=ZZ"),
                "InvalidAccessKeyId.NotFound",
            ),
            (
                RPC_TARGET.replace("&Signature=rT1qFgPmJ3FlhDtVBA8KekYZLcU%3D", ""),
                "IncompleteSignature",
            ),
            (
                RPC_TARGET.replace("HMAC-SHA1", "HMAC-SHA256"),
                "IncompleteSignature",
            ),
            (
                RPC_TARGET.replace("2026-11-21T05%3A22%3A09Z", "2026-11-21T04%3A22%3A09Z"),
                "InvalidTimeStamp.Expired",
            ),
            (
                RPC_TARGET.replace("2026-11-21T05%3A22%3A09Z", "yesterday"),
                "InvalidTimeStamp.Format",
            ),
            (
                RPC_TARGET.replace("Signature=rT1q", "Signature=!!!"),
                "SignatureDoesNotMatch",
            ),
        ];
        for (target, code) in cases {
            let r = req("POST", &target, &[]);
            let q = params(&r.query);
            assert_eq!(
                verify_api_request(&r, &q, &q, ACS3_NOW, &store)
                    .unwrap_err()
                    .code,
                code,
                "{target}"
            );
        }
        // GET with the same parameters signs a different string.
        let r = req("GET", RPC_TARGET, &[]);
        let q = params(&r.query);
        let e = verify_api_request(&r, &q, &q, ACS3_NOW, &store).unwrap_err();
        assert_eq!(e.code, "SignatureDoesNotMatch");
        assert!(
            e.message
                .contains("server string to sign is:GET&%2F&AccessKeyId%3DAK"),
            "{}",
            e.message
        );
        let unsigned = req("POST", "/?Action=CreateExpressSync", &[]);
        let q = params(&unsigned.query);
        assert_eq!(
            verify_api_request(&unsigned, &q, &q, ACS3_NOW, &store)
                .unwrap_err()
                .code,
            "IncompleteSignature"
        );
    }

    #[test]
    fn agent_signatures_verify_once_and_only_with_the_secret() {
        let store = MapStore::new();
        let body = br#"{"shares":[]}"#;
        let make = |secret: &str, nonce: &str| {
            let headers = sign_agent_request(
                "POST",
                "/agent/v1/progress",
                "gw-1",
                secret,
                ACS3_NOW,
                nonce,
                body,
            );
            let mut r = req("POST", "/agent/v1/progress", &[]);
            r.headers = headers
                .into_iter()
                .map(|(n, v)| (n.to_string(), v))
                .collect();
            r.body = body.to_vec();
            r
        };
        assert_eq!(
            verify_agent_request(&make("gwsecret", "n1"), ACS3_NOW, &store),
            Ok("gw-1".to_string())
        );
        assert_eq!(
            verify_agent_request(&make("gwsecret", "n1"), ACS3_NOW, &store)
                .unwrap_err()
                .code,
            "SignatureNonceUsed"
        );
        assert_eq!(
            verify_agent_request(&make("wrong", "n2"), ACS3_NOW, &store)
                .unwrap_err()
                .code,
            "InvalidGatewaySignature"
        );
        let mut tampered = make("gwsecret", "n3");
        tampered.body = br#"{"shares":[1]}"#.to_vec();
        assert_eq!(
            verify_agent_request(&tampered, ACS3_NOW, &store)
                .unwrap_err()
                .code,
            "InvalidGatewaySignature"
        );
        assert_eq!(
            verify_agent_request(&make("gwsecret", "n4"), ACS3_NOW + 3600, &store)
                .unwrap_err()
                .code,
            "InvalidTimeStamp.Expired"
        );
        let mut moved = make("gwsecret", "n5");
        moved.path = "/agent/v1/register".into();
        assert_eq!(
            verify_agent_request(&moved, ACS3_NOW, &store)
                .unwrap_err()
                .code,
            "InvalidGatewaySignature"
        );
    }
}
