//! `sgw-control`: the control endpoint. Parses the command line, sets up logging, and calls
//! into the `sgw_control` library.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sgw_control::router::{ControlService, unix_now};
use sgw_control::server::{
    self, ConfigError, ControlConfig, DEFAULT_CONFIG_PATH, EXIT_CONFIG, Overrides,
};
use sgw_control::store::Store;

const HELP: &str = "\
sgw-control — the control endpoint for sgw-agent appliances

It serves the Cloud Storage Gateway express-sync API (CreateExpressSync,
AddSharesToExpressSync, DescribeExpressSyncShares, …) to the official Alibaba Cloud
SDKs, provisions the bucket notification, topic and per-share queues on an S3/SNS/SQS
endpoint, and tells each registered agent which queue to follow.

USAGE:
    sgw-control [OPTIONS] [serve]           run the endpoint (default)
    sgw-control [OPTIONS] gateway add NAME [--region REGION]
                                            register a gateway; prints its id and secret
    sgw-control [OPTIONS] gateway list      list gateways
    sgw-control [OPTIONS] gateway remove ID remove a gateway (not while its shares are in a group)
    sgw-control [OPTIONS] key add [ID]      create an API access key; prints id and secret
    sgw-control [OPTIONS] key list          list API access key ids
    sgw-control [OPTIONS] key remove ID     delete an API access key

OPTIONS:
    -c, --config PATH          Configuration file [default: /etc/sgw-control/control.toml,
                               used only if it exists]
        --listen ADDR          Address to serve on, e.g. 127.0.0.1:8480 (port 0 = any free
                               port; the chosen address is printed on stdout)
        --data-dir DIR         Where the SQLite database lives
        --cloud-endpoint URL   One endpoint for S3, SNS and SQS (moto-like peers; an http://
                               URL given here counts as explicitly allowed) [default: the
                               [cloud] keys, else AWS's s3./sns./sqs.<region>.amazonaws.com]
        --cloud-region REGION  Signing region [default: AWS_REGION or us-east-1]
        --max-connections N    Open connections in all [default: 512]
        --max-connections-per-peer N
                               Open connections from one IP address [default: 64]; a
                               connection over either limit gets 503 at once and is closed
    -h, --help                 Print this help
    -V, --version              Print the version

ENVIRONMENT:
    SGW_ACCESS_KEY_ID, SGW_ACCESS_KEY_SECRET
                               Bootstrap API key, installed (or updated) at start-up
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN
                               Credentials for provisioning on the cloud endpoint
    SGW_LOG                    error, warn, info (default), debug

CONFIGURATION (control.toml):
    listen = \"127.0.0.1:8480\"
    data_dir = \"/var/lib/sgw-control\"
    workers = 8                  # requests handled at once (threads of the blocking pool)
    max_connections = 512        # open connections in all
    max_connections_per_peer = 64  # open connections from one IP address
    header_timeout_secs = 10     # a request head (and the next one on a kept-alive
                                 # connection) must be complete within this
    body_timeout_secs = 30       # a request body within this of its head (408 otherwise)
    idle_timeout_secs = 5        # a kept-alive connection with no request is closed
    shutdown_timeout_secs = 20   # SIGTERM: requests in progress get this long to finish
    max_express_syncs = 100      # group limit
    poll_interval_secs = 30      # how often agents poll (reported as MnsFullSyncDelay)
    [cloud]
    region = \"us-east-1\"      # signing region; on AWS also picks the endpoints
    # endpoint = \"http://127.0.0.1:5000\"  # one endpoint for S3, SNS and SQS (moto-like)
    # s3_endpoint = \"https://s3.us-east-1.amazonaws.com\"   # per-service overrides
    # sns_endpoint = \"https://sns.us-east-1.amazonaws.com\"   [default: endpoint, else
    # sqs_endpoint = \"https://sqs.us-east-1.amazonaws.com\"    AWS's for the region]
    allow_http = false           # needed for http:// endpoints in this file
    regions = [\"us-east-1\"]     # accepted BucketRegion values [default: [region]]
    [[oms.endpoints]]            # OMS sync tasks: where a cloud type's region is (repeatable)
    cloud_type = \"AWS\"           # a src_cloud_type value; \"HuaweiCloud\" for destinations
    region = \"us-east-1\"
    url = \"http://127.0.0.1:9000\" # S3-protocol endpoint [defaults: public AWS S3 and OBS]
    allow_http = false

EXIT STATUS:
    0 clean stop (SIGTERM/SIGINT), 1 runtime failure, 64 usage error, 78 configuration error

EXAMPLE:
    SGW_ACCESS_KEY_ID=ops SGW_ACCESS_KEY_SECRET=change-me \\
    AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… \\
        sgw-control --listen 127.0.0.1:8480 --data-dir /var/lib/sgw-control \\
                    --cloud-region us-east-1
    sgw-control --data-dir /var/lib/sgw-control gateway add edge-01 --region us-east-1
";

/// Exit status for a usage error (`EX_USAGE`; the unit's `RestartPreventExitStatus` has it).
const EXIT_USAGE: i32 = 64;

fn init_logging() {
    let level = match std::env::var("SGW_LOG")
        .unwrap_or_default()
        .to_ascii_lowercase()
        .as_str()
    {
        "error" => log::LevelFilter::Error,
        "warn" => log::LevelFilter::Warn,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        _ => log::LevelFilter::Info,
    };
    // The agent's logger: one line per event, syslog priorities under journald.
    sgw_agent::daemon::Logger::init(level);
}

enum Command {
    Serve,
    GatewayAdd {
        name: String,
        region: Option<String>,
    },
    GatewayList,
    GatewayRemove(String),
    KeyAdd(Option<String>),
    KeyList,
    KeyRemove(String),
}

struct Args {
    config: Option<PathBuf>,
    overrides: Overrides,
    command: Command,
}

/// A whole number given to a flag.
fn number(v: std::ffi::OsString) -> Result<i64, String> {
    v.to_str()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("expected a number, got {v:?}"))
}

fn parse_args() -> Result<Args, String> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let mut config = None;
    let mut overrides = Overrides::default();
    let mut words: Vec<String> = Vec::new();
    let mut region = None;
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        let text = |v: std::ffi::OsString| {
            v.into_string()
                .map_err(|_| "arguments must be UTF-8".to_string())
        };
        match arg {
            Short('c') | Long("config") => {
                config = Some(PathBuf::from(parser.value().map_err(|e| e.to_string())?))
            }
            Long("listen") => {
                overrides.listen = Some(text(parser.value().map_err(|e| e.to_string())?)?)
            }
            Long("data-dir") => {
                overrides.data_dir = Some(PathBuf::from(parser.value().map_err(|e| e.to_string())?))
            }
            Long("cloud-endpoint") => {
                overrides.cloud_endpoint = Some(text(parser.value().map_err(|e| e.to_string())?)?)
            }
            Long("cloud-region") => {
                overrides.cloud_region = Some(text(parser.value().map_err(|e| e.to_string())?)?)
            }
            Long("max-connections") => {
                overrides.max_connections =
                    Some(number(parser.value().map_err(|e| e.to_string())?)?)
            }
            Long("max-connections-per-peer") => {
                overrides.max_connections_per_peer =
                    Some(number(parser.value().map_err(|e| e.to_string())?)?)
            }
            Long("region") => region = Some(text(parser.value().map_err(|e| e.to_string())?)?),
            Short('h') | Long("help") => {
                print!("{HELP}");
                std::process::exit(0);
            }
            Short('V') | Long("version") => {
                println!("sgw-control {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            Value(v) => words.push(text(v)?),
            _ => return Err(arg.unexpected().to_string()),
        }
    }
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let command = match words.as_slice() {
        [] | ["serve"] => Command::Serve,
        ["gateway", "add", name] => Command::GatewayAdd {
            name: (*name).to_string(),
            region: region.take(),
        },
        ["gateway", "list"] => Command::GatewayList,
        ["gateway", "remove", id] => Command::GatewayRemove((*id).to_string()),
        ["key", "add"] => Command::KeyAdd(None),
        ["key", "add", id] => Command::KeyAdd(Some((*id).to_string())),
        ["key", "list"] => Command::KeyList,
        ["key", "remove", id] => Command::KeyRemove((*id).to_string()),
        other => {
            return Err(format!(
                "unknown command {:?} (see --help)",
                other.join(" ")
            ));
        }
    };
    if region.is_some() {
        return Err("--region belongs to `gateway add`".into());
    }
    Ok(Args {
        config,
        overrides,
        command,
    })
}

fn config_error(e: &ConfigError) -> i32 {
    eprintln!("sgw-control: configuration error: {e}");
    EXIT_CONFIG
}

/// The config file: `-c PATH` (must exist), else the default path if it exists.
fn config_path(args: &Args) -> Option<PathBuf> {
    args.config
        .clone()
        .or_else(|| Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.exists()))
}

/// Admin subcommands only need the data directory.
fn admin_data_dir(args: &Args) -> Result<PathBuf, ConfigError> {
    ControlConfig::load(config_path(args).as_deref(), &args.overrides).map(|c| c.data_dir)
}

fn admin(args: &Args) -> i32 {
    let dir = match admin_data_dir(args) {
        Ok(d) => d,
        Err(e) => return config_error(&e),
    };
    let store = match Store::open_dir(&dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sgw-control: {e}");
            return 1;
        }
    };
    let service = ControlService::new(
        store,
        Arc::new(sgw_control::provision::MemoryProvisioner::new()),
        sgw_control::router::Settings {
            regions: vec![],
            max_express_syncs: 0,
            poll_interval_secs: 0,
            host_id: String::new(),
        },
    );
    let result: Result<(), String> = match &args.command {
        Command::GatewayAdd { name, region } => {
            let region = region.clone().unwrap_or_else(|| "us-east-1".to_string());
            if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
                eprintln!(
                    "sgw-control: gateway name must be 1-128 characters without control characters"
                );
                return EXIT_USAGE;
            }
            service
                .add_gateway(name, &region)
                .map(|(g, secret)| {
                    println!("gateway_id = \"{}\"\ngateway_secret = \"{secret}\"", g.id);
                    eprintln!(
                        "Put these in the agent's configuration; the secret is not shown again."
                    );
                })
                .map_err(|e| e.to_string())
        }
        Command::GatewayList => service
            .store()
            .gateways()
            .map(|gs| {
                for g in gs {
                    let seen = g.last_seen.map_or_else(
                        || "never".to_string(),
                        |t| format!("{}s ago", unix_now() - t),
                    );
                    println!("{}\t{}\t{}\tlast seen {seen}", g.id, g.name, g.region);
                }
            })
            .map_err(|e| e.to_string()),
        Command::GatewayRemove(id) => match service.store().remove_gateway(id) {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!(
                "gateway {id} does not exist or has shares in an express sync group (remove them first)"
            )),
            Err(e) => Err(e.to_string()),
        },
        Command::KeyAdd(id) => {
            let id = id.clone().unwrap_or_else(|| service.new_access_key_id());
            if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
                eprintln!("sgw-control: key id must be 1-128 printable ASCII characters");
                return EXIT_USAGE;
            }
            let secret = service.new_secret();
            service
                .store()
                .put_api_key(&id, &secret, unix_now())
                .map(|()| {
                    println!("access_key_id = \"{id}\"\naccess_key_secret = \"{secret}\"");
                })
                .map_err(|e| e.to_string())
        }
        Command::KeyList => service
            .store()
            .api_key_ids()
            .map(|ids| ids.iter().for_each(|id| println!("{id}")))
            .map_err(|e| e.to_string()),
        Command::KeyRemove(id) => match service.store().remove_api_key(id) {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("no API key {id}")),
            Err(e) => Err(e.to_string()),
        },
        Command::Serve => Ok(()),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("sgw-control: {e}");
            1
        }
    }
}

fn serve(args: &Args) -> i32 {
    let config = match ControlConfig::load(config_path(args).as_deref(), &args.overrides) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let credentials = match server::aws_credentials_from_env() {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let bootstrap = match server::bootstrap_key_from_env() {
        Ok(b) => b,
        Err(e) => return config_error(&e),
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("sgw-control: cannot install signal handler: {e}");
            return 1;
        }
    }
    let running = match server::start(&config, credentials, bootstrap) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sgw-control: {e}");
            return 1;
        }
    };
    let addr = running.server.local_addr();
    log::info!(
        "serving on http://{addr} (data {}, provisioning in region {} on S3 {}, SNS {}, SQS {})",
        config.data_dir.display(),
        config.cloud_region,
        config.endpoints.s3,
        config.endpoints.sns,
        config.endpoints.sqs
    );
    // Scripts and tests read the bound address (port 0 picks one) from this line.
    println!("listening on http://{addr}");
    let _ = std::io::stdout().flush();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    log::info!("stopping: finishing requests in progress");
    running.server.shutdown();
    if let Some(oms) = running.service.oms() {
        // Running OMS tasks stop their threads (uploads in progress are aborted); they stay
        // SYNCHRONIZING and resume at the next start.
        oms.shutdown();
    }
    log::info!("stopped");
    0
}

fn main() {
    init_logging();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sgw-control: {e}");
            std::process::exit(EXIT_USAGE);
        }
    };
    let code = match args.command {
        Command::Serve => serve(&args),
        _ => admin(&args),
    };
    std::process::exit(code);
}
