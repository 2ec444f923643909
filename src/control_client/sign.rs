//! How an agent signs its requests to the control endpoint, with its gateway id and secret:
//!
//! ```text
//! x-sgw-gateway-id: gw-…
//! x-sgw-date: 2026-11-21T05:22:09Z            (UTC, within ±15 min of the server)
//! x-sgw-nonce: <unique per request, ≤128 printable ASCII>
//! authorization: SGW-HMAC-SHA256 Signature=<hex HMAC-SHA256(secret, string_to_sign)>
//! string_to_sign = "SGW-HMAC-SHA256\n" METHOD "\n" PATH "\n" GATEWAY_ID "\n" DATE "\n"
//!                  NONCE "\n" hex(SHA-256(body))
//! ```
//!
//! The server (`sgw-control`) verifies with [`agent_string_to_sign`] and [`agent_signature`]
//! from here, so both sides use one definition.

use ring::hmac;

/// Authorization scheme name of agent requests.
pub const AGENT_SCHEME: &str = "SGW-HMAC-SHA256";

pub use crate::cloud::sigv4::sha256_hex;
pub use crate::format::hex_lower;
/// `YYYY-MM-DDTHH:MM:SSZ`, the date format of the signature.
pub use crate::time::utc_timestamp_of as format_iso8601;

/// The text an agent signs: scheme, method, path, gateway id, date, nonce, body hash, one per
/// line.
pub fn agent_string_to_sign(
    method: &str,
    path: &str,
    gateway_id: &str,
    date: &str,
    nonce: &str,
    body: &[u8],
) -> String {
    format!(
        "{AGENT_SCHEME}\n{method}\n{path}\n{gateway_id}\n{date}\n{nonce}\n{}",
        sha256_hex(body)
    )
}

/// Hex HMAC-SHA256 of [`agent_string_to_sign`] with the gateway secret.
pub fn agent_signature(secret: &str, string_to_sign: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hex_lower(hmac::sign(&key, string_to_sign.as_bytes()).as_ref())
}

/// Headers an agent adds to a request (`x-sgw-gateway-id`, `x-sgw-date`, `x-sgw-nonce`,
/// `authorization`). `nonce` must be unique per request (e.g. 16 random bytes in hex).
pub fn sign_agent_request(
    method: &str,
    path: &str,
    gateway_id: &str,
    secret: &str,
    unix_now: i64,
    nonce: &str,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    let date = format_iso8601(unix_now);
    let sts = agent_string_to_sign(method, path, gateway_id, &date, nonce, body);
    vec![
        ("x-sgw-gateway-id", gateway_id.to_string()),
        ("x-sgw-date", date),
        ("x-sgw-nonce", nonce.to_string()),
        (
            "authorization",
            format!("{AGENT_SCHEME} Signature={}", agent_signature(secret, &sts)),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_the_documented_string() {
        let headers = sign_agent_request("GET", "/agent/v1/x", "gw-1", "s", 0, "n1", b"");
        assert_eq!(
            headers[1],
            ("x-sgw-date", "1970-01-01T00:00:00Z".to_string())
        );
        let sts = agent_string_to_sign(
            "GET",
            "/agent/v1/x",
            "gw-1",
            "1970-01-01T00:00:00Z",
            "n1",
            b"",
        );
        assert!(sts.starts_with("SGW-HMAC-SHA256\nGET\n/agent/v1/x\ngw-1\n"));
        assert!(sts.ends_with(&sha256_hex(b"")));
        assert_eq!(
            headers[3].1,
            format!("SGW-HMAC-SHA256 Signature={}", agent_signature("s", &sts))
        );
        assert_eq!(format_iso8601(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
