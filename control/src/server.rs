//! `sgw-control`'s configuration (`control.toml` plus command-line overrides) and start-up:
//! open the store, install the bootstrap API key, build the provisioner, serve.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::http_server::{Handler, Limits, Server};
use super::provision::{AwsProvisioner, Provisioner, ServiceEndpoints};
use super::router::{ControlService, Settings, unix_now};
use super::store::Store;
use sgw_agent::cloud::sigv4::Credentials;

/// Exit status for a configuration error (`EX_CONFIG`).
pub const EXIT_CONFIG: i32 = 78;
pub const DEFAULT_CONFIG_PATH: &str = "/etc/sgw-control/control.toml";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8480";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/sgw-control";

/// A configuration problem: which file (or "command line" / "environment"), which key, what
/// was expected. The agent's type, so both programs word configuration errors alike.
pub use sgw_agent::config::ConfigError;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    data_dir: Option<String>,
    workers: Option<i64>,
    max_connections: Option<i64>,
    max_connections_per_peer: Option<i64>,
    header_timeout_secs: Option<i64>,
    body_timeout_secs: Option<i64>,
    idle_timeout_secs: Option<i64>,
    shutdown_timeout_secs: Option<i64>,
    max_express_syncs: Option<i64>,
    poll_interval_secs: Option<i64>,
    cloud: Option<RawCloud>,
    oms: Option<RawOms>,
}

/// `[oms]`: only `[[oms.endpoints]]` tables (see [`crate::oms::endpoints`]).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOms {
    endpoints: Option<Vec<crate::oms::endpoints::EndpointEntry>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCloud {
    endpoint: Option<String>,
    s3_endpoint: Option<String>,
    sns_endpoint: Option<String>,
    sqs_endpoint: Option<String>,
    region: Option<String>,
    allow_http: Option<bool>,
    regions: Option<Vec<String>>,
}

/// Command-line values that win over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub cloud_endpoint: Option<String>,
    pub cloud_region: Option<String>,
    pub max_connections: Option<i64>,
    pub max_connections_per_peer: Option<i64>,
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    pub listen: String,
    pub data_dir: PathBuf,
    /// The HTTP server's limits (`workers`, connections, timeouts); see [`super::http_server`].
    pub limits: Limits,
    pub max_express_syncs: i64,
    pub poll_interval_secs: u64,
    /// Where S3, SNS and SQS are reached (one URL each; the same for moto-like peers).
    pub endpoints: ServiceEndpoints,
    pub cloud_region: String,
    pub allow_http: bool,
    /// Accepted `BucketRegion` values.
    pub regions: Vec<String>,
    /// Where OMS sync tasks find their buckets (`[[oms.endpoints]]`, checked).
    pub oms_endpoints: crate::oms::endpoints::Endpoints,
}

impl ControlConfig {
    /// Reads `file` (if given) and applies `overrides`. Without a file, everything comes from
    /// the defaults and the overrides; the cloud endpoint must be set one way or the other.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<ControlConfig, ConfigError> {
        let shown = file.map_or_else(|| "command line".to_string(), |p| p.display().to_string());
        let err = |key: &str, expected: String| ConfigError {
            file: PathBuf::from(&shown),
            key: key.to_string(),
            problem: expected,
        };
        let raw: RawConfig = match file {
            None => RawConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| err("(file)", format!("a readable TOML file ({e})")))?;
                toml::from_str(&text).map_err(|e| {
                    let (key, what) = describe_toml_error(&text, &e);
                    err(&key, what)
                })?
            }
        };
        let cloud = raw.cloud.unwrap_or_default();
        let oms_endpoints = crate::oms::endpoints::Endpoints::new(
            raw.oms.and_then(|o| o.endpoints).unwrap_or_default(),
        )
        .map_err(|e| {
            let (key, problem) = e.split_once(": ").unwrap_or(("oms.endpoints", e.as_str()));
            err(key, problem.to_string())
        })?;

        let listen = overrides
            .listen
            .clone()
            .or(raw.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        if listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(err(
                "listen",
                format!("an address like 127.0.0.1:8480, got {listen:?}"),
            ));
        }
        let data_dir = overrides
            .data_dir
            .clone()
            .or(raw.data_dir.map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        if data_dir.as_os_str().is_empty() {
            return Err(err("data_dir", "a directory path".into()));
        }
        let defaults = Limits::default();
        let number = |key: &str,
                      value: Option<i64>,
                      range: std::ops::RangeInclusive<i64>,
                      default: usize| {
            match value {
                None => Ok(default),
                Some(n) if range.contains(&n) => Ok(usize::try_from(n).unwrap_or(default)),
                Some(n) => Err(err(
                    key,
                    format!(
                        "a number from {} to {}, got {n}",
                        range.start(),
                        range.end()
                    ),
                )),
            }
        };
        let secs = |key: &str,
                    value: Option<i64>,
                    range: std::ops::RangeInclusive<i64>,
                    default: Duration| {
            match value {
                None => Ok(default),
                Some(n) if range.contains(&n) => Ok(Duration::from_secs(n.unsigned_abs())),
                Some(n) => Err(err(
                    key,
                    format!("seconds from {} to {}, got {n}", range.start(), range.end()),
                )),
            }
        };
        let workers = number("workers", raw.workers, 1..=256, defaults.workers)?;
        let max_connections = number(
            "max_connections",
            overrides.max_connections.or(raw.max_connections),
            1..=65_536,
            defaults.max_connections,
        )?;
        let max_connections_per_peer = number(
            "max_connections_per_peer",
            overrides
                .max_connections_per_peer
                .or(raw.max_connections_per_peer),
            1..=65_536,
            defaults.max_connections_per_peer.min(max_connections),
        )?;
        if max_connections_per_peer > max_connections {
            return Err(err(
                "max_connections_per_peer",
                format!(
                    "at most max_connections ({max_connections}), got {max_connections_per_peer}"
                ),
            ));
        }
        let limits = Limits {
            header_timeout: secs(
                "header_timeout_secs",
                raw.header_timeout_secs,
                1..=300,
                defaults.header_timeout,
            )?,
            body_timeout: secs(
                "body_timeout_secs",
                raw.body_timeout_secs,
                1..=600,
                defaults.body_timeout,
            )?,
            idle_timeout: secs(
                "idle_timeout_secs",
                raw.idle_timeout_secs,
                1..=3600,
                defaults.idle_timeout,
            )?,
            shutdown_timeout: secs(
                "shutdown_timeout_secs",
                raw.shutdown_timeout_secs,
                1..=600,
                defaults.shutdown_timeout,
            )?,
            max_connections,
            max_connections_per_peer,
            workers,
        };
        let max_express_syncs = match raw.max_express_syncs {
            None => 100,
            Some(n @ 1..=100_000) => n,
            Some(n) => {
                return Err(err(
                    "max_express_syncs",
                    format!("a number from 1 to 100000, got {n}"),
                ));
            }
        };
        let poll_interval_secs = match raw.poll_interval_secs {
            None => 30,
            Some(n @ 1..=3600) => u64::try_from(n).unwrap_or(30),
            Some(n) => {
                return Err(err(
                    "poll_interval_secs",
                    format!("seconds from 1 to 3600, got {n}"),
                ));
            }
        };

        let cloud_region = overrides
            .cloud_region
            .clone()
            .or(cloud.region)
            .or_else(|| std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty()))
            .unwrap_or_else(|| "us-east-1".to_string());
        if !super::actions::plausible_region(&cloud_region) {
            return Err(err(
                "cloud.region",
                format!("a region id like us-east-1, got {cloud_region:?}"),
            ));
        }
        // Per service: the command line's one endpoint, else `<service>_endpoint`, else
        // `endpoint`, else AWS's public endpoint for the region. An http:// endpoint typed on
        // the command line is the operator's explicit choice; in the file it needs
        // `allow_http = true` next to it.
        let endpoint_from_cli = overrides.cloud_endpoint.is_some();
        let allow_http = cloud.allow_http.unwrap_or(false) || endpoint_from_cli;
        let derived = ServiceEndpoints::aws(&cloud_region);
        let pick = |own: Option<String>, own_key: &str, default: String| {
            let (url, key) = match (&overrides.cloud_endpoint, own, &cloud.endpoint) {
                (Some(cli), _, _) => (cli.clone(), "--cloud-endpoint".to_string()),
                (None, Some(own), _) => (own, format!("cloud.{own_key}")),
                (None, None, Some(shared)) => (shared.clone(), "cloud.endpoint".to_string()),
                (None, None, None) => return Ok(default),
            };
            sgw_agent::cloud::http::Endpoint::parse(&url, allow_http).map_err(|e| err(&key, e))?;
            Ok(url)
        };
        let endpoints = ServiceEndpoints {
            s3: pick(cloud.s3_endpoint, "s3_endpoint", derived.s3)?,
            sns: pick(cloud.sns_endpoint, "sns_endpoint", derived.sns)?,
            sqs: pick(cloud.sqs_endpoint, "sqs_endpoint", derived.sqs)?,
        };
        let regions = cloud.regions.unwrap_or_else(|| vec![cloud_region.clone()]);
        if regions.is_empty() || regions.iter().any(|r| !super::actions::plausible_region(r)) {
            return Err(err(
                "cloud.regions",
                "a non-empty list of region ids like [\"us-east-1\"]".into(),
            ));
        }
        Ok(ControlConfig {
            listen,
            data_dir,
            limits,
            max_express_syncs,
            poll_interval_secs,
            endpoints,
            cloud_region,
            allow_http,
            regions,
            oms_endpoints,
        })
    }
}

/// `(key, expected)` from a TOML error, naming the line's key when the parser does not.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> (String, String) {
    let message = e.message().to_string();
    let key = e
        .span()
        .and_then(|span| {
            let line_start = text[..span.start.min(text.len())]
                .rfind('\n')
                .map_or(0, |i| i + 1);
            let line = text[line_start..].lines().next().unwrap_or("");
            line.split('=').next().map(|k| k.trim().to_string())
        })
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| "(syntax)".to_string());
    (key, message)
}

/// Provisioning credentials from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` /
/// `AWS_SESSION_TOKEN`.
pub fn aws_credentials_from_env() -> Result<Credentials, ConfigError> {
    let get = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Credentials {
            access_key_id,
            secret_access_key,
            session_token: get("AWS_SESSION_TOKEN"),
        }),
        _ => Err(ConfigError {
            file: PathBuf::from("environment"),
            key: "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY".into(),
            problem: "credentials for the cloud endpoint (provisioning topics, queues and bucket notifications)".into(),
        }),
    }
}

/// The bootstrap API key from `SGW_ACCESS_KEY_ID` / `SGW_ACCESS_KEY_SECRET`, if both are set.
pub fn bootstrap_key_from_env() -> Result<Option<(String, String)>, ConfigError> {
    let get = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (get("SGW_ACCESS_KEY_ID"), get("SGW_ACCESS_KEY_SECRET")) {
        (Some(id), Some(secret)) => {
            if id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError {
                    file: PathBuf::from("environment"),
                    key: "SGW_ACCESS_KEY_ID".into(),
                    problem: "at most 128 printable ASCII characters".into(),
                });
            }
            Ok(Some((id, secret)))
        }
        (None, None) => Ok(None),
        _ => Err(ConfigError {
            file: PathBuf::from("environment"),
            key: "SGW_ACCESS_KEY_ID / SGW_ACCESS_KEY_SECRET".into(),
            problem: "both set (the bootstrap API key) or neither".into(),
        }),
    }
}

/// A running control endpoint.
pub struct Running {
    pub server: Server,
    pub service: Arc<ControlService>,
}

/// Opens the store in `config.data_dir` and builds the service over `provisioner`.
pub fn build_service(
    config: &ControlConfig,
    provisioner: Arc<dyn Provisioner>,
) -> Result<ControlService, String> {
    let store = Store::open_dir(&config.data_dir).map_err(|e| e.to_string())?;
    let settings = Settings {
        regions: config.regions.clone(),
        max_express_syncs: config.max_express_syncs,
        poll_interval_secs: config.poll_interval_secs,
        host_id: config.listen.clone(),
    };
    Ok(ControlService::new(store, provisioner, settings))
}

/// Everything `sgw-control serve` does before waiting for a signal.
pub fn start(
    config: &ControlConfig,
    credentials: Credentials,
    bootstrap: Option<(String, String)>,
) -> Result<Running, String> {
    let provisioner = AwsProvisioner::new(
        &config.endpoints,
        &config.cloud_region,
        config.allow_http,
        credentials,
    )?;
    let service = Arc::new(build_service(config, Arc::new(provisioner))?);
    if let Some((id, secret)) = bootstrap {
        service
            .store()
            .put_api_key(&id, &secret, unix_now())
            .map_err(|e| format!("cannot store the bootstrap API key: {e}"))?;
        log::info!("bootstrap API key {id} installed from SGW_ACCESS_KEY_ID");
    }
    let oms = crate::oms::OmsService::open(
        &config.data_dir,
        config.oms_endpoints.clone(),
        crate::oms::task::RunSettings::default(),
    )
    .map_err(|e| format!("cannot set up the OMS sync tasks: {e}"))?;
    let oms = Arc::new(oms);
    oms.resume();
    service.set_oms(oms);
    let handler_service = Arc::clone(&service);
    let handler: Arc<Handler> = Arc::new(move |req| handler_service.handle(req));
    let server = Server::start(&config.listen, config.limits.clone(), handler)
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    Ok(Running { server, service })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, o: &Overrides) -> Result<ControlConfig, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control.toml");
        std::fs::write(&path, text).expect("write");
        ControlConfig::load(Some(&path), o)
    }

    #[test]
    fn command_line_wins_over_the_file() {
        let o = Overrides {
            listen: Some("127.0.0.1:0".into()),
            data_dir: Some("/tmp/x".into()),
            cloud_endpoint: Some("http://127.0.0.1:5000".into()),
            cloud_region: Some("eu-west-1".into()),
            max_connections: Some(100),
            ..Overrides::default()
        };
        let c = load("listen = \"0.0.0.0:1\"\ndata_dir = \"/a\"\n[cloud]\nendpoint = \"https://s3.example\"\n", &o).expect("valid");
        assert_eq!(c.listen, "127.0.0.1:0");
        assert_eq!(c.limits.max_connections, 100);
        assert_eq!(c.limits.max_connections_per_peer, 64);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(
            c.endpoints,
            ServiceEndpoints::single("http://127.0.0.1:5000")
        );
        assert_eq!(c.regions, vec!["eu-west-1".to_string()]);
        assert!(c.allow_http);
    }

    #[test]
    fn errors_name_the_key_and_what_was_expected() {
        let none = Overrides::default();
        let e = load(
            "listen = \"nowhere\"\n[cloud]\nendpoint = \"https://x\"\n",
            &none,
        )
        .expect_err("bad listen");
        assert_eq!(e.key, "listen");
        let e =
            load("[cloud]\nendpoint = \"http://x\"\n", &none).expect_err("http needs allow_http");
        assert_eq!(e.key, "cloud.endpoint");
        assert!(e.problem.contains("allow_http"), "{e}");
        load(
            "[cloud]\nendpoint = \"http://x\"\nallow_http = true\n",
            &none,
        )
        .expect("explicit http");
        let e =
            load("workers = 0\n[cloud]\nendpoint = \"https://x\"\n", &none).expect_err("workers");
        assert_eq!(e.key, "workers");
        let e = load("colour = \"blue\"\n", &none).expect_err("unknown key");
        assert_eq!(e.key, "colour");
        let e = load("listen = [\n", &none).expect_err("syntax");
        assert!(!e.problem.is_empty());
        let e = ControlConfig::load(Some(Path::new("/nonexistent/control.toml")), &none)
            .expect_err("missing file");
        assert_eq!(e.file, Path::new("/nonexistent/control.toml"));
    }

    #[test]
    fn oms_endpoints_take_exactly_their_four_keys() {
        let none = Overrides::default();
        let base = "[cloud]\nendpoint = \"https://x\"\n";
        let c = load(
            &format!(
                "{base}[[oms.endpoints]]\ncloud_type = \"AWS\"\nregion = \"us-east-1\"\n\
                 url = \"http://127.0.0.1:9000\"\nallow_http = true\n\
                 [[oms.endpoints]]\ncloud_type = \"HuaweiCloud\"\nregion = \"cn-north-4\"\n\
                 url = \"https://obs.example\"\n"
            ),
            &none,
        )
        .expect("valid");
        let e = &c.oms_endpoints;
        assert_eq!(e.entries.len(), 2);
        assert_eq!(
            e.resolve("AWS", "us-east-1").expect("configured").url,
            "http://127.0.0.1:9000"
        );
        assert!(
            !e.resolve("HuaweiCloud", "cn-north-4")
                .expect("configured")
                .allow_http
        );
        assert_eq!(
            e.resolve("HuaweiCloud", "ap-southeast-1")
                .expect("default")
                .url,
            "https://obs.ap-southeast-1.myhuaweicloud.com"
        );
        let defaults = load(base, &none).expect("no [oms]");
        assert!(defaults.oms_endpoints.entries.is_empty());
        for (text, key) in [
            (
                "[[oms.endpoints]]\ncloud_type = \"AWS\"\nregion = \"us-east-1\"\nurl = \"http://x\"\n",
                "oms.endpoints[0].url",
            ),
            (
                "[[oms.endpoints]]\ncloud_type = \"S3\"\nregion = \"us-east-1\"\nurl = \"https://x\"\n",
                "oms.endpoints[0].cloud_type",
            ),
            (
                "[[oms.endpoints]]\ncloud_type = \"AWS\"\nregion = \"us-east-1\"\nurl = \"https://x\"\nbucket = \"b\"\n",
                "bucket",
            ),
            ("[oms]\nworkers = 3\n", "workers"),
        ] {
            let e = load(&format!("{base}{text}"), &none).expect_err(text);
            assert!(e.key.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn limits_come_from_the_file_with_defaults_and_ranges() {
        let none = Overrides::default();
        let c = load("[cloud]\nendpoint = \"https://x\"\n", &none).expect("defaults");
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.limits.header_timeout, Duration::from_secs(10));
        let c = load(
            "workers = 4\nmax_connections = 20\nmax_connections_per_peer = 5\nheader_timeout_secs = 3\n\
             body_timeout_secs = 4\nidle_timeout_secs = 6\nshutdown_timeout_secs = 7\n\
             [cloud]\nendpoint = \"https://x\"\n",
            &none,
        )
        .expect("valid");
        assert_eq!(
            c.limits,
            Limits {
                header_timeout: Duration::from_secs(3),
                body_timeout: Duration::from_secs(4),
                idle_timeout: Duration::from_secs(6),
                max_connections: 20,
                max_connections_per_peer: 5,
                shutdown_timeout: Duration::from_secs(7),
                workers: 4,
            }
        );
        // A small total limit lowers the per-peer default with it.
        let c = load(
            "max_connections = 10\n[cloud]\nendpoint = \"https://x\"\n",
            &none,
        )
        .expect("valid");
        assert_eq!(c.limits.max_connections_per_peer, 10);
        for (text, key) in [
            ("max_connections = 0\n", "max_connections"),
            (
                "max_connections = 4\nmax_connections_per_peer = 5\n",
                "max_connections_per_peer",
            ),
            ("header_timeout_secs = 0\n", "header_timeout_secs"),
            ("body_timeout_secs = 601\n", "body_timeout_secs"),
            ("idle_timeout_secs = -1\n", "idle_timeout_secs"),
            ("shutdown_timeout_secs = 0\n", "shutdown_timeout_secs"),
        ] {
            let e =
                load(&format!("{text}[cloud]\nendpoint = \"https://x\"\n"), &none).expect_err(text);
            assert_eq!(e.key, key, "{text}");
        }
    }

    #[test]
    fn endpoints_follow_aws_per_service_unless_overridden() {
        let none = Overrides::default();
        let c = load("[cloud]\nregion = \"eu-west-1\"\n", &none).expect("AWS by default");
        assert_eq!(c.endpoints, ServiceEndpoints::aws("eu-west-1"));
        assert_eq!(c.endpoints.sqs, "https://sqs.eu-west-1.amazonaws.com");
        let c = load(
            "[cloud]\nendpoint = \"https://one.example\"\nsqs_endpoint = \"https://q.example\"\n",
            &none,
        )
        .expect("shared + override");
        assert_eq!(c.endpoints.s3, "https://one.example");
        assert_eq!(c.endpoints.sns, "https://one.example");
        assert_eq!(c.endpoints.sqs, "https://q.example");
        let e = load("[cloud]\nsns_endpoint = \"http://x\"\n", &none).expect_err("http");
        assert_eq!(e.key, "cloud.sns_endpoint");
        let cli = Overrides {
            cloud_endpoint: Some("http://127.0.0.1:9".into()),
            ..Overrides::default()
        };
        let c = load("[cloud]\ns3_endpoint = \"https://s3.example\"\n", &cli).expect("cli wins");
        assert_eq!(c.endpoints, ServiceEndpoints::single("http://127.0.0.1:9"));
    }
}
