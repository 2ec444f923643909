//! Where a task's buckets are: `src_cloud_type` + `src_region` (and `HuaweiCloud` +
//! `dst_region` for the destination) → an S3-protocol endpoint URL.
//!
//! Configured in `control.toml`, one table per endpoint, exactly these keys:
//!
//! ```toml
//! [[oms.endpoints]]
//! cloud_type = "AWS"                 # a src_cloud_type value; "HuaweiCloud" for destinations
//! region = "us-east-1"
//! url = "http://127.0.0.1:9000"
//! allow_http = true                  # default false: only https:// URLs
//! ```
//!
//! A configured entry wins. Without one, the public endpoints are the defaults:
//! `AWS` → `https://s3.{region}.amazonaws.com` (`https://s3.{region}.amazonaws.com.cn` for
//! `cn-*`), `HuaweiCloud` → `https://obs.{region}.myhuaweicloud.com` (OBS speaks the S3
//! protocol there). Every other cloud type needs a configured entry (its S3-compatible
//! endpoint: OSS, COS, KS3, BOS, Kodo, US3 and QingStor all have one); `Azure` has no S3
//! protocol and is refused.

use serde::Deserialize;

/// The `src_cloud_type` values the seed lists.
pub const CLOUD_TYPES: &[&str] = &[
    "AWS",
    "Azure",
    "Aliyun",
    "Tencent",
    "HuaweiCloud",
    "QingCloud",
    "KingsoftCloud",
    "Baidu",
    "Qiniu",
    "UCloud",
];

/// The cloud type of every destination (OMS synchronizes into Huawei Cloud OBS).
pub const DESTINATION_CLOUD: &str = "HuaweiCloud";

/// One `[[oms.endpoints]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointEntry {
    pub cloud_type: String,
    pub region: String,
    pub url: String,
    #[serde(default)]
    pub allow_http: bool,
}

/// A resolved endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub url: String,
    pub allow_http: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    pub entries: Vec<EndpointEntry>,
}

impl Endpoints {
    /// Checks the entries (as `control.toml` gives them); the error names what is wrong.
    pub fn new(entries: Vec<EndpointEntry>) -> Result<Endpoints, String> {
        for (i, e) in entries.iter().enumerate() {
            let at = format!("oms.endpoints[{i}]");
            if !CLOUD_TYPES.contains(&e.cloud_type.as_str()) {
                return Err(format!(
                    "{at}.cloud_type: one of {}, got {:?}",
                    CLOUD_TYPES.join(", "),
                    e.cloud_type
                ));
            }
            if e.cloud_type == "Azure" {
                return Err(format!(
                    "{at}.cloud_type: Azure Blob Storage has no S3 protocol endpoint"
                ));
            }
            if !plausible_region(&e.region) {
                return Err(format!(
                    "{at}.region: a region id like cn-north-4, got {:?}",
                    e.region
                ));
            }
            sgw_agent::cloud::http::Endpoint::parse(&e.url, e.allow_http)
                .map_err(|m| format!("{at}.url: {m}"))?;
            if entries[..i]
                .iter()
                .any(|o| o.cloud_type == e.cloud_type && o.region == e.region)
            {
                return Err(format!(
                    "{at}: {} {} is configured twice",
                    e.cloud_type, e.region
                ));
            }
        }
        Ok(Endpoints { entries })
    }

    /// The endpoint of `cloud_type` in `region`, or why there is none.
    pub fn resolve(&self, cloud_type: &str, region: &str) -> Result<Resolved, String> {
        if let Some(e) = self
            .entries
            .iter()
            .find(|e| e.cloud_type == cloud_type && e.region == region)
        {
            return Ok(Resolved {
                url: e.url.clone(),
                allow_http: e.allow_http,
            });
        }
        if !plausible_region(region) {
            return Err(format!("{region:?} is not a region id"));
        }
        let url = match cloud_type {
            "AWS" if region.starts_with("cn-") => {
                format!("https://s3.{region}.amazonaws.com.cn")
            }
            "AWS" => format!("https://s3.{region}.amazonaws.com"),
            "HuaweiCloud" => format!("https://obs.{region}.myhuaweicloud.com"),
            "Azure" => {
                return Err(
                    "Azure Blob Storage has no S3 protocol endpoint; synchronization \
                            from Azure is not supported by this endpoint"
                        .to_string(),
                );
            }
            other => {
                return Err(format!(
                    "no S3-protocol endpoint is configured for {other} region {region}: add an \
                     [[oms.endpoints]] entry (cloud_type, region, url) to sgw-control's \
                     configuration"
                ));
            }
        };
        Ok(Resolved {
            url,
            allow_http: false,
        })
    }
}

/// Lower-case letters, digits and hyphens, 2 to 64 characters, starting with a letter.
pub fn plausible_region(region: &str) -> bool {
    (2..=64).contains(&region.len())
        && region.starts_with(|c: char| c.is_ascii_lowercase())
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(cloud_type: &str, region: &str, url: &str, allow_http: bool) -> EndpointEntry {
        EndpointEntry {
            cloud_type: cloud_type.into(),
            region: region.into(),
            url: url.into(),
            allow_http,
        }
    }

    #[test]
    fn configured_entries_win_and_public_clouds_have_defaults() {
        let e = Endpoints::new(vec![entry(
            "AWS",
            "us-east-1",
            "http://127.0.0.1:9000",
            true,
        )])
        .expect("valid");
        assert_eq!(
            e.resolve("AWS", "us-east-1").expect("configured").url,
            "http://127.0.0.1:9000"
        );
        assert_eq!(
            e.resolve("AWS", "eu-west-1").expect("default").url,
            "https://s3.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            e.resolve("AWS", "cn-north-1").expect("default").url,
            "https://s3.cn-north-1.amazonaws.com.cn"
        );
        assert_eq!(
            e.resolve("HuaweiCloud", "cn-north-4").expect("default").url,
            "https://obs.cn-north-4.myhuaweicloud.com"
        );
        assert!(e.resolve("Aliyun", "cn-beijing").is_err());
        assert!(e.resolve("Azure", "eastus").is_err());
    }

    #[test]
    fn bad_entries_are_refused_with_the_key() {
        for (bad, key) in [
            (
                entry("Amazon", "us-east-1", "https://x", false),
                "cloud_type",
            ),
            (entry("AWS", "US East", "https://x", false), "region"),
            (entry("AWS", "us-east-1", "http://x", false), "url"),
            (entry("Azure", "eastus", "https://x", false), "cloud_type"),
        ] {
            let e = Endpoints::new(vec![bad]).expect_err(key);
            assert!(e.contains(key), "{e}");
        }
        let twice = vec![
            entry("AWS", "us-east-1", "https://a", false),
            entry("AWS", "us-east-1", "https://b", false),
        ];
        assert!(Endpoints::new(twice).is_err());
    }
}
