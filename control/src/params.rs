//! Request parameters: `application/x-www-form-urlencoded` decoding of the query string and
//! form bodies, and the percent-encodings both Alibaba signature schemes are computed over.

use std::collections::BTreeMap;

/// Most parameters one request may carry (the widest action takes 8).
pub const MAX_PARAMS: usize = 64;

/// Decoded parameters, unique by name, sorted by name (what both signature schemes need).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(BTreeMap<String, String>);

/// Why the parameters could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamError {
    /// Bad `%XX`, or bytes that are not UTF-8 after decoding.
    Malformed(String),
    /// The same name twice: ambiguous, so refused rather than guessed.
    Duplicate(String),
    TooMany,
}

impl std::fmt::Display for ParamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamError::Malformed(what) => write!(f, "malformed parameter encoding in {what}"),
            ParamError::Duplicate(name) => write!(f, "parameter {name} is given more than once"),
            ParamError::TooMany => write!(f, "more than {MAX_PARAMS} parameters"),
        }
    }
}

impl Params {
    pub fn new() -> Params {
        Params::default()
    }

    /// Adds every pair of an encoded `a=1&b=2` string (query or form body).
    pub fn add_encoded(&mut self, encoded: &str) -> Result<(), ParamError> {
        for pair in encoded.split('&') {
            if pair.is_empty() {
                continue;
            }
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = form_decode(name)?;
            let value = form_decode(value)?;
            if self.0.contains_key(&name) {
                return Err(ParamError::Duplicate(name));
            }
            if self.0.len() >= MAX_PARAMS {
                return Err(ParamError::TooMany);
            }
            self.0.insert(name, value);
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The value, trimmed; `None` when absent or blank.
    pub fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).map(str::trim).filter(|v| !v.is_empty())
    }

    /// Pairs in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn insert(&mut self, name: &str, value: &str) {
        self.0.insert(name.to_string(), value.to_string());
    }
}

/// `+` is a space, `%XX` a byte; the result must be UTF-8.
pub fn form_decode(input: &str) -> Result<String, ParamError> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|b| hex_value(*b));
                let lo = bytes.get(i + 2).and_then(|b| hex_value(*b));
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                    _ => return Err(ParamError::Malformed(shorten(input))),
                }
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ParamError::Malformed(shorten(input)))
}

fn shorten(input: &str) -> String {
    let mut s: String = input.chars().take(40).collect();
    if s.len() < input.len() {
        s.push('…');
    }
    s
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 percent-encoding (unreserved `A-Za-z0-9-_.~` kept, upper-case hex): Python's
/// `quote(v, safe='~')`, and the SDKs' "pop standard" form of `urlencode`. The same set as
/// SigV4's, so it is the agent's (the percent-encoding crate with that set).
pub use sgw_agent::cloud::sigv4::encode_component as percent_encode;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_what_the_sdks_send() {
        let mut p = Params::new();
        // tea-openapi (urlencode: `+` for space) and the RPC SDK (`%20`) side by side.
        p.add_encoded("Name=a+b%2Bc%2F%2A~&Description=h%C3%A9llo&Empty=&Flag")
            .expect("valid");
        assert_eq!(p.get("Name"), Some("a b+c/*~"));
        assert_eq!(p.get("Description"), Some("héllo"));
        assert_eq!(p.get("Empty"), Some(""));
        assert_eq!(p.get("Flag"), Some(""));
        assert_eq!(p.non_empty("Empty"), None);
        let names: Vec<&str> = p.iter().map(|(k, _)| k).collect();
        assert_eq!(names, vec!["Description", "Empty", "Flag", "Name"]);
    }

    #[test]
    fn refuses_hostile_encodings() {
        for bad in ["a=%", "a=%4", "a=%zz", "a=%C3", "a=%FF%FE", "%=1"] {
            assert!(
                matches!(
                    Params::new().add_encoded(bad),
                    Err(ParamError::Malformed(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(
            Params::new().add_encoded("a=1&b=2&a=3"),
            Err(ParamError::Duplicate("a".into()))
        );
        let many: Vec<String> = (0..=MAX_PARAMS).map(|i| format!("p{i}=v")).collect();
        assert_eq!(
            Params::new().add_encoded(&many.join("&")),
            Err(ParamError::TooMany)
        );
    }

    #[test]
    fn percent_encode_matches_python_quote() {
        assert_eq!(percent_encode("a b+c/*~é"), "a%20b%2Bc%2F%2A~%C3%A9");
        assert_eq!(
            percent_encode("2024-01-01T00:00:00Z"),
            "2024-01-01T00%3A00%3A00Z"
        );
    }

    proptest! {
        #[test]
        fn encode_then_decode_round_trips(s in "\\PC{0,40}") {
            prop_assert_eq!(form_decode(&percent_encode(&s)).expect("decodes"), s);
        }
    }
}
