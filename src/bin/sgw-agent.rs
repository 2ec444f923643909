//! `sgw-agent`: parse the command line, load the configuration, set up logging, and call into
//! the library. Nothing else lives here.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;

use sgw_agent::access;
use sgw_agent::config::{Config, DEFAULT_CONFIG_PATH, EXIT_CONFIG, EXIT_USAGE};
use sgw_agent::daemon::{Logger, Shutdown};
use sgw_agent::format::human_bytes;
use sgw_agent::runner;
use sgw_agent::shell::{ProgressSink, Silent};
use sgw_agent::time::utc_timestamp_of;

// Beside this file, not in src/bin/ (where Cargo would take it for another binary).
#[path = "sgw-agent/progress.rs"]
mod progress;
use progress::StderrProgress;
use sgw_agent::status::{ShareStatus, read_status};

const HELP: &str = "\
sgw-agent — keep local share directories in step with their cloud buckets

USAGE:
    sgw-agent [-c PATH] <COMMAND> [OPTIONS]
    sgw-agent <COMMAND> --help | sgw-agent help <COMMAND>

COMMANDS:
    run             Keep every share in step: a full sync, then follow each share's
                    queue of bucket events. This is what the systemd service runs.
                    Stops cleanly on SIGTERM or Ctrl-C.
    sync            Run one full sync of every share and exit: 0 when every share
                    matches its bucket, 1 when something could not be brought in
                    line (the log says what). Keys that can never be a safe local
                    path are skipped and reported, not failures.
    status          Show each share's state, progress and counters (from the state
                    directory; works whether or not the agent is running).
        --json      Print the same as JSON.
    check-config    Validate the configuration and credentials, and that every share
                    and the state directory are writable by this user, then exit.
    help [COMMAND]  Print this help, or a command's.

OPTIONS:
    -c, --config PATH   Configuration file [default: /etc/sgw-agent/agent.toml]
    -q, --quiet         sync: no progress lines on stderr
        --allow-mass-delete SHARE
                        sync: let this run delete more than the share's
                        max_delete_percent / max_delete allow (the guard
                        refuses by default: see the README)
    -h, --help          Print this help
    -V, --version       Print the version

ENVIRONMENT:
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN
                        Credentials (else the credentials_file of the configuration,
                        whose [AWS_PROFILE or default] section is used).
    CREDENTIALS_DIRECTORY
                        Set by systemd (LoadCredential=): a credential named like the
                        credentials_file (e.g. \"credentials\") is read instead of the file.
    SGW_LOG             Log level override: error, warn, info, debug, trace.

EXIT CODES:
    0   success
    1   sync finished but not every share converged
    64  usage error (bad command line)
    78  configuration or credentials error (systemd: RestartPreventExitStatus=78)

A minimal configuration:

    state_dir = \"/var/lib/sgw-agent\"

    [[share]]
    name = \"photos\"
    path = \"/srv/shares/photos\"
    bucket = \"acme-photos\"
    endpoint = \"https://s3.eu-west-1.amazonaws.com\"
    region = \"eu-west-1\"
    queue_url = \"https://sqs.eu-west-1.amazonaws.com/123456789012/photos\"

See the README for every key.
";

const HELP_RUN: &str = "\
sgw-agent run — the daemon (what the systemd service runs)

USAGE:
    sgw-agent [-c PATH] run

Checks everything check-config checks, then keeps every share in step: a full sync, then each
share's queue of bucket events, and a full reconcile every full_sync_interval_secs. Under
systemd (Type=notify) it reports READY=1 once every share's state is loaded and pings the
watchdog. SIGHUP re-reads the configuration (shares added, removed or changed without a
restart); SIGTERM or Ctrl-C finish in-flight downloads (at most 30 s) and exit 0.

OPTIONS:
    -c, --config PATH   Configuration file [default: /etc/sgw-agent/agent.toml]

EXIT CODES:
    0   stopped by a signal
    1   no share could be started, or a runtime failure
    78  configuration or credentials error, or a share or the state directory that this user
        cannot write (under systemd: add it to ReadWritePaths=); not restarted by the unit
";

const HELP_SYNC: &str = "\
sgw-agent sync — one full sync of every share, then exit

USAGE:
    sgw-agent [-c PATH] sync [--quiet] [--allow-mass-delete SHARE]...

Lists each share's bucket (or prefix) once, downloads what is missing or different, removes
what the bucket deleted, and exits. Shares sync in parallel. Keys that can never be a safe
local path are skipped and reported, not failures.

OPTIONS:
    -c, --config PATH   Configuration file [default: /etc/sgw-agent/agent.toml]
    -q, --quiet         No progress lines on stderr
        --allow-mass-delete SHARE
                        Let this run delete more of SHARE than its max_delete_percent and
                        max_delete allow. Without it, a listing that would delete more than
                        both (default: over 50 % of the share's files and over 100 of them)
                        deletes nothing and the share is in error: a wrong prefix, an emptied
                        bucket or another account's credentials look like that.

EXIT CODES:
    0   every share matches its bucket
    1   something could not be brought in line, or deletes were refused (the log says what)
    78  configuration or credentials error, or an unwritable share or state directory
";

const HELP_STATUS: &str = "\
sgw-agent status — each share's state, progress and counters

USAGE:
    sgw-agent [-c PATH] status [--json]

Reads <state_dir>/shares/<name>/status.json, which the agent keeps current as it works, so it
works whether or not the daemon runs, and needs no credentials.

OPTIONS:
    -c, --config PATH   Configuration file [default: /etc/sgw-agent/agent.toml]
        --json          Print the same fields as JSON

EXIT CODES:
    0   printed
    78  the configuration file is invalid
";

const HELP_CHECK_CONFIG: &str = "\
sgw-agent check-config — validate what the service needs, then exit

USAGE:
    sgw-agent [-c PATH] check-config

Checks the configuration file, the credentials (environment, systemd credential or
credentials_file, which must be 0600 of this user or 0640 root:<this user's group>), that every
share and the state directory are writable by this user (a file is created and removed; nothing
stays), and every share's endpoint and queue URL. Makes no network request.

Run it as the service's user: sudo -u sgw-agent sgw-agent check-config. Outside the unit it
cannot see what the unit adds (Environment=, LoadCredential=, the read-only sandbox without
ReadWritePaths=); `systemctl start sgw-agent` makes the same checks inside the unit and fails at
once (exit 78) on a problem.

OPTIONS:
    -c, --config PATH   Configuration file [default: /etc/sgw-agent/agent.toml]

EXIT CODES:
    0   OK (the line names the user, the shares and where the credentials came from)
    78  the problem, on one line, with the file, the key and the fix
";

#[derive(Clone, Copy)]
enum Command {
    Run,
    Sync,
    Status { json: bool },
    CheckConfig,
}

impl Command {
    fn from_name(name: &str) -> Option<Command> {
        Some(match name {
            "run" => Command::Run,
            "sync" => Command::Sync,
            "status" => Command::Status { json: false },
            "check-config" => Command::CheckConfig,
            _ => return None,
        })
    }

    fn help(self) -> &'static str {
        match self {
            Command::Run => HELP_RUN,
            Command::Sync => HELP_SYNC,
            Command::Status { .. } => HELP_STATUS,
            Command::CheckConfig => HELP_CHECK_CONFIG,
        }
    }
}

struct Args {
    config: PathBuf,
    command: Command,
    quiet: bool,
    /// sync: shares whose mass-delete guard is lifted for this run.
    allow_mass_delete: Vec<String>,
}

fn parse_args() -> Result<Option<Args>, lexopt::Error> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let mut config = PathBuf::from(DEFAULT_CONFIG_PATH);
    let mut command = None;
    let mut json = false;
    let mut quiet = false;
    let mut allow_mass_delete = Vec::new();
    let mut help = false;
    while let Some(arg) = parser.next()? {
        match arg {
            Short('c') | Long("config") => config = parser.value()?.into(),
            // `sgw-agent <command> --help` prints that command's help (below).
            Short('h') | Long("help") => help = true,
            Short('V') | Long("version") => {
                println!("sgw-agent {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            Short('q') | Long("quiet") => quiet = true,
            Long("json") => json = true,
            Long("allow-mass-delete") => allow_mass_delete.push(parser.value()?.string()?),
            Value(v) if command.is_none() => {
                let v = v.string()?;
                if v == "help" {
                    // `sgw-agent help [COMMAND]`
                    let text = match parser.next()? {
                        None => HELP,
                        Some(Value(name)) => {
                            let name = name.string()?;
                            Command::from_name(&name)
                                .ok_or_else(|| {
                                    format!(
                                        "no help for {name:?} (commands: run, sync, status, check-config)"
                                    )
                                })?
                                .help()
                        }
                        Some(other) => return Err(other.unexpected()),
                    };
                    if let Some(extra) = parser.next()? {
                        return Err(extra.unexpected());
                    }
                    print!("{text}");
                    return Ok(None);
                }
                command = Some(Command::from_name(&v).ok_or_else(|| {
                    format!(
                        "unknown command {v:?} (expected run, sync, status, check-config or help)"
                    )
                })?);
            }
            _ => return Err(arg.unexpected()),
        }
    }
    if help {
        print!("{}", command.map_or(HELP, Command::help));
        return Ok(None);
    }
    let command = match command {
        Some(Command::Status { .. }) => Command::Status { json },
        Some(c) if json => {
            let _ = c;
            return Err("--json goes with the status command".into());
        }
        Some(c) if !allow_mass_delete.is_empty() && !matches!(c, Command::Sync) => {
            let _ = c;
            return Err("--allow-mass-delete goes with the sync command".into());
        }
        Some(c) => c,
        None => {
            return Err("missing command (run, sync, status or check-config); see --help".into());
        }
    };
    Ok(Some(Args {
        config,
        command,
        quiet,
        allow_mass_delete,
    }))
}

fn main() {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return,
        Err(e) => {
            eprintln!("sgw-agent: {e}");
            std::process::exit(EXIT_USAGE);
        }
    };
    let mut cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sgw-agent: configuration error: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    for name in &args.allow_mass_delete {
        match cfg.shares.iter_mut().find(|s| &s.name == name) {
            Some(share) => share.allow_mass_delete = true,
            None => {
                eprintln!(
                    "sgw-agent: --allow-mass-delete: no share named {name:?} in the configuration"
                );
                std::process::exit(EXIT_USAGE);
            }
        }
    }
    let level = std::env::var("SGW_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(cfg.log_level);
    Logger::init(level);
    let code = match args.command {
        Command::Status { json } => status(&cfg, json),
        Command::CheckConfig => check_config(&cfg),
        Command::Run | Command::Sync => {
            let creds = match cfg.credentials() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("sgw-agent: configuration error: {e}");
                    std::process::exit(EXIT_CONFIG);
                }
            };
            let shutdown = Shutdown::new();
            if let Err(e) = shutdown.on_signals() {
                eprintln!("sgw-agent: cannot install signal handlers: {e}");
                std::process::exit(1);
            }
            if matches!(args.command, Command::Run) {
                runner::run_daemon(&cfg, &creds, &shutdown)
            } else {
                let progress: Arc<dyn ProgressSink> = if args.quiet {
                    Arc::new(Silent)
                } else {
                    Arc::new(StderrProgress)
                };
                runner::sync_once(&cfg, &creds, &shutdown, progress)
            }
        }
    };
    std::process::exit(code);
}

/// `check-config`: what `run` checks before it starts, without starting anything: the file,
/// the credentials, every share and state directory writable by this user, every share's
/// endpoint and queue URL. Exit 0 or 78 with one line naming what to fix.
fn check_config(cfg: &Config) -> i32 {
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("sgw-agent: configuration error: {e}");
        EXIT_CONFIG
    };
    let (creds, source) = match cfg.credentials_with_source() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    if let Err(e) = access::check_config_dirs(cfg) {
        return fail(&e);
    }
    let shutdown = Shutdown::new();
    for share in &cfg.shares {
        // Under a control endpoint the bucket comes from it: only the path is ours (checked
        // above).
        if cfg.control.is_none()
            && let Err(e) = runner::share_context(cfg, share, &creds, &shutdown, Arc::new(Silent))
        {
            return fail(&e);
        }
    }
    let me = access::Identity::current();
    println!(
        "{}: OK ({} share(s) and {} writable by user {}, credentials for key id {} from {})",
        cfg.file.display(),
        cfg.shares.len(),
        cfg.state_dir.display(),
        me.user,
        creds.access_key_id,
        source
    );
    0
}

fn share_is_two_way(cfg: &Config, name: &str) -> bool {
    cfg.shares
        .iter()
        .any(|s| s.name == name && s.sync.two_way())
}

fn status(cfg: &Config, json: bool) -> i32 {
    let mut all = Vec::new();
    for share in &cfg.shares {
        let s = match read_status(&cfg.share_state_dir(share)) {
            Ok(Some(s)) => s,
            Ok(None) => ShareStatus::new(&share.name),
            Err(e) => {
                eprintln!("sgw-agent: share {}: unreadable status: {e}", share.name);
                ShareStatus {
                    last_error: Some(format!("unreadable status file: {e}")),
                    ..ShareStatus::new(&share.name)
                }
            }
        };
        all.push(s);
    }
    if json {
        match serde_json::to_string_pretty(&all) {
            Ok(t) => println!("{t}"),
            Err(e) => {
                eprintln!("sgw-agent: {e}");
                return 1;
            }
        }
        return 0;
    }
    for s in &all {
        let progress = if s.sync_progress < 0 {
            "never synced".to_owned()
        } else {
            format!("{}%", s.sync_progress)
        };
        println!("{}  {}  {}", s.share, s.state.as_str(), progress);
        println!(
            "  objects:        {} local / {} in bucket ({})",
            s.objects_local,
            s.objects_total,
            human_bytes(s.bytes_total)
        );
        println!(
            "  this run:       {} downloaded ({}), {} deleted, {} events applied",
            s.objects_downloaded,
            human_bytes(s.bytes_downloaded),
            s.objects_deleted,
            s.events_applied
        );
        println!(
            "  skipped keys:   {}{}",
            s.skipped_keys,
            examples(&s.skipped_examples)
        );
        println!(
            "  unknown files:  {}{}",
            s.unknown_local_files,
            examples(&s.unknown_examples)
        );
        if share_is_two_way(cfg, &s.share) {
            let u = &s.uploads;
            println!(
                "  uploads:        {} pending, {} in flight, {} done ({}), {} deleted in bucket, {} conflict(s)",
                u.pending,
                u.in_flight,
                u.done,
                human_bytes(u.bytes),
                u.remote_deletes,
                u.conflicts
            );
            if let Some(e) = &u.last_error {
                println!("  upload error:   {e}");
            }
        }
        if s.verified_without_crc > 0 {
            println!(
                "  no CRC-64:      {} object(s) had no server CRC-64 (checked by MD5 ETag or size)",
                s.verified_without_crc
            );
        }
        if s.failed_objects > 0 {
            println!(
                "  failed:         {} object(s) in the last full sync",
                s.failed_objects
            );
        }
        if s.messages_discarded > 0 {
            println!(
                "  discarded:      {} queue message(s) that could not be applied",
                s.messages_discarded
            );
        }
        println!(
            "  last full sync: {}",
            s.last_full_sync
                .map(utc_timestamp_of)
                .unwrap_or_else(|| "never".into())
        );
        println!(
            "  updated:        {}",
            if s.updated > 0 {
                utc_timestamp_of(s.updated)
            } else {
                "never".into()
            }
        );
        println!(
            "  last error:     {}",
            s.last_error.as_deref().unwrap_or("-")
        );
    }
    0
}

fn examples(list: &[String]) -> String {
    if list.is_empty() {
        String::new()
    } else {
        format!(
            "  e.g. {}",
            list.iter()
                .take(3)
                .map(|k| format!("{k:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}
