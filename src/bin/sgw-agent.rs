//! `sgw-agent`: parse the command line, load the configuration, set up logging, and call into
//! the library. Nothing else lives here.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;

use sgw_agent::access;
use sgw_agent::config::{Config, DEFAULT_CONFIG_PATH, EXIT_CONFIG, EXIT_USAGE};
use sgw_agent::daemon::{
    AgentLock, LockHolder, Logger, Shutdown, effective_log_level, set_cli_log_level,
};
use sgw_agent::format::{human_bytes, thousands};
use sgw_agent::runner;
use sgw_agent::shell::dry_run::{DryRunReport, PlanSink, Planned};
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
    status          Whether the agent is running, and each share's state, progress
                    and counters (works whether or not the agent is running); exit 1
                    when a share is in error or queue_failure.
        --json      Print the same as JSON (times in RFC 3339).
    check-config    Validate the configuration and credentials, and that every share
                    and the state directory are writable by this user, then exit
                    (offline).
        --online    Also ask the buckets, queues and control endpoint: one OK/FAIL
                    line per check, exit 78 on any FAIL.
    help [COMMAND]  Print this help, or a command's (help --man: the man page).

OPTIONS:
    -c, --config PATH   Configuration file [default: /etc/sgw-agent/agent.toml]
    -q, --quiet         Log warnings and errors only; sync: no progress lines
    -n, --dry-run       sync: print what would be done, change nothing
    -v, --verbose       Log more: -v debug, -vv trace (wins over SGW_LOG and log_level)
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
    1   sync: not every share converged; status: a share is in error or
        queue_failure (or retrying after one, not healthy since)
    64  usage error (bad command line)
    75  another sgw-agent (run or sync) is using the state directory
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
    sgw-agent [-c PATH] [-q | -v] run

Checks everything check-config checks, then keeps every share in step: a full sync, then each
share's queue of bucket events, and a full reconcile every full_sync_interval_secs. Under
systemd (Type=notify) it reports READY=1 once every share's state is loaded and pings the
watchdog. SIGHUP re-reads the configuration (shares added, removed or changed without a
restart); SIGTERM or Ctrl-C finish in-flight downloads (at most 30 s) and exit 0.

While it runs it holds a lock on <state_dir>/agent.lock (status shows it running; a second
agent on the same state directory exits 75). Every file published and every file deleted is
logged at info (share, key, size). A share in error or queue_failure for longer than
alert_after_secs (default 900) is logged at err priority once an hour while it lasts, and
reported to the control endpoint when one is configured.

OPTIONS:
    -c, --config PATH   Configuration file [default: /etc/sgw-agent/agent.toml]
    -q, --quiet         Log warnings and errors only
    -v, --verbose       Log more: -v debug, -vv trace

EXIT CODES:
    0   stopped by a signal
    1   no share could be started, or a runtime failure
    75  another sgw-agent is using the state directory
    78  configuration or credentials error, or a share or the state directory that this user
        cannot write (under systemd: add it to ReadWritePaths=); not restarted by the unit
";

const HELP_SYNC: &str = "\
sgw-agent sync — one full sync of every share, then exit

USAGE:
    sgw-agent [-c PATH] [-q | -v] sync [--dry-run] [--allow-mass-delete SHARE]...

Lists each share's bucket (or prefix) once, downloads what is missing or different, removes
what the bucket deleted, and exits. Shares sync in parallel. Keys that can never be a safe
local path are skipped and reported, not failures. On stderr: a progress line per share every
second (objects and bytes done, rate, time left), and the log.

OPTIONS:
    -c, --config PATH   Configuration file [default: /etc/sgw-agent/agent.toml]
    -n, --dry-run       Print what the sync would do, one line each on stdout (download,
                        delete, adopt a file already there, keep a local file as a
                        conflict copy, skip, or refuse a mass delete) and a summary per
                        share; change nothing: no file, no state, no status (it reads the
                        bucket and the share; it may run beside a running agent)
    -q, --quiet         No progress lines; log warnings and errors only
    -v, --verbose       Log more: -v debug, -vv trace
        --allow-mass-delete SHARE
                        Let this run delete more of SHARE than its max_delete_percent and
                        max_delete allow. Without it, a listing that would delete more than
                        both (default: over 50 % of the share's files and over 100 of them)
                        deletes nothing and the share is in error: a wrong prefix, an emptied
                        bucket or another account's credentials look like that.

EXIT CODES:
    0   every share matches its bucket (--dry-run: every share's plan was printed)
    1   something could not be brought in line, or deletes were refused (the log says what);
        --dry-run: a share's bucket could not be listed
    75  another sgw-agent (run or sync) is using the state directory (not for --dry-run)
    78  configuration or credentials error, or an unwritable share or state directory
";

const HELP_STATUS: &str = "\
sgw-agent status — each share's state, progress and counters

USAGE:
    sgw-agent [-c PATH] status [--json]

First line: whether an agent is running (it holds a lock on <state_dir>/agent.lock; the pid
and the command are shown), or stopped. Then each share from <state_dir>/shares/<name>/
status.json, which the agent keeps current as it works: its state (not_synced, full_syncing,
healthy, queue_failure, error, stopped), progress and counters. Needs no credentials. A clean
stop leaves each share in `stopped`.

OPTIONS:
    -c, --config PATH   Configuration file [default: /etc/sgw-agent/agent.toml]
        --json          Print the same as a JSON array, one object per share, with \"agent\"
                        (\"running\", \"stopped\", or \"unknown\" for a user who cannot
                        read the state directory) and \"agent_pid\"; times (updated,
                        last_full_sync, error_since) in RFC 3339 UTC

EXIT CODES (for monitoring scripts):
    0   no share needs an operator (whether or not the agent is running)
    1   a share is in error or queue_failure, or retrying after one and not healthy since
    78  the configuration file is invalid
";

const HELP_CHECK_CONFIG: &str = "\
sgw-agent check-config — validate what the service needs, then exit

USAGE:
    sgw-agent [-c PATH] check-config [--online]

Checks the configuration file, the credentials (environment, systemd credential or
credentials_file, which must be 0600 of this user or 0640 root:<this user's group>), that every
share and the state directory are writable by this user (a file is created and removed; nothing
stays), and every share's endpoint and queue URL. Makes no network request (it says so).

With --online it also asks the services, one line per check, OK or FAIL with the reason:
the credentials are found; the state and share directories are writable by this user; the
control endpoint (when configured) answers and accepts the gateway id and secret (a signed
read of the assignments); each share's bucket can be listed (a 1-key list of its prefix);
each share's queue can be read without consuming anything (ReceiveMessage for one message
with WaitTimeSeconds=0 and VisibilityTimeout=0, never deleted: a message received is visible
again at once; its receive count grows by one). Under a control endpoint the buckets and
queues checked are the assigned ones.

Run it as the service's user: sudo -u sgw-agent sgw-agent check-config. Outside the unit it
cannot see what the unit adds (Environment=, LoadCredential=, the read-only sandbox without
ReadWritePaths=); `systemctl start sgw-agent` makes the same checks inside the unit and fails at
once (exit 78) on a problem.

OPTIONS:
    -c, --config PATH   Configuration file [default: /etc/sgw-agent/agent.toml]
        --online        Also check the credentials, buckets, queues and control endpoint
                        against the services

EXIT CODES:
    0   OK (the line names the user, the shares and where the credentials came from);
        --online: every check OK
    78  the problem, on one line, with the file, the key and the fix; --online: a check
        failed (its line says FAIL and why)
";

/// The man page, sgw-agent(1): the same help texts, set as roff (`sgw-agent help --man`;
/// systemd/sgw-agent.1 is its output, checked by tests/cli_help.rs, and the .deb installs it).
fn man_page() -> String {
    fn roff(text: &str) -> String {
        let mut out = String::new();
        for line in text.lines() {
            let line: String = line
                .replace('\\', "\\e")
                .replace('-', "\\-")
                .chars()
                .map(|c| {
                    if c.is_ascii() {
                        c.to_string()
                    } else {
                        format!("\\[u{:04X}]", u32::from(c))
                    }
                })
                .collect();
            // A line starting with . or ' would be a roff request.
            if line.starts_with('.') || line.starts_with('\'') {
                out.push_str("\\&");
            }
            out.push_str(&line);
            out.push('\n');
        }
        out
    }
    let mut page = format!(
        ".\\\" Generated by `sgw-agent help --man` from the --help texts; do not edit.\n\
         .TH SGW\\-AGENT 1 \"\" \"sgw-agent {}\" \"User Commands\"\n\
         .SH NAME\nsgw\\-agent \\- keep local share directories in step with their cloud buckets\n\
         .SH DESCRIPTION\n.nf\n",
        env!("CARGO_PKG_VERSION")
    );
    // The general help without its first line (the NAME section says it).
    page.push_str(&roff(HELP.split_once('\n').map_or(HELP, |(_, rest)| rest)));
    page.push_str(".fi\n");
    for (name, text) in [
        ("run", HELP_RUN),
        ("sync", HELP_SYNC),
        ("status", HELP_STATUS),
        ("check-config", HELP_CHECK_CONFIG),
    ] {
        page.push_str(&format!(".SH COMMAND: {}\n.nf\n", name.replace('-', "\\-")));
        page.push_str(&roff(text));
        page.push_str(".fi\n");
    }
    page.push_str(
        ".SH FILES\n.nf\n/etc/sgw\\-agent/agent.toml        the configuration\n\
         /usr/share/doc/sgw\\-agent/README.md  every key, the service, operations, troubleshooting\n\
         /var/lib/sgw\\-agent                 state_dir: per\\-share state, status.json, agent.lock\n.fi\n\
         .SH SEE ALSO\nsystemctl(1), journalctl(1), systemd.exec(5)\n",
    );
    page
}

#[derive(Clone, Copy)]
enum Command {
    Run,
    Sync,
    Status { json: bool },
    CheckConfig { online: bool },
}

impl Command {
    fn from_name(name: &str) -> Option<Command> {
        Some(match name {
            "run" => Command::Run,
            "sync" => Command::Sync,
            "status" => Command::Status { json: false },
            "check-config" => Command::CheckConfig { online: false },
            _ => return None,
        })
    }

    fn help(self) -> &'static str {
        match self {
            Command::Run => HELP_RUN,
            Command::Sync => HELP_SYNC,
            Command::Status { .. } => HELP_STATUS,
            Command::CheckConfig { .. } => HELP_CHECK_CONFIG,
        }
    }
}

struct Args {
    config: PathBuf,
    command: Command,
    quiet: bool,
    /// `-v` once: debug; twice: trace.
    verbose: u8,
    /// sync: shares whose mass-delete guard is lifted for this run.
    allow_mass_delete: Vec<String>,
    /// sync: show what would be done, do nothing.
    dry_run: bool,
}

fn parse_args() -> Result<Option<Args>, lexopt::Error> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let mut config = PathBuf::from(DEFAULT_CONFIG_PATH);
    let mut command = None;
    let mut json = false;
    let mut quiet = false;
    let mut verbose = 0u8;
    let mut allow_mass_delete = Vec::new();
    let mut dry_run = false;
    let mut online = false;
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
            Short('v') | Long("verbose") => verbose = verbose.saturating_add(1),
            Long("json") => json = true,
            Short('n') | Long("dry-run") => dry_run = true,
            Long("online") => online = true,
            Long("allow-mass-delete") => allow_mass_delete.push(parser.value()?.string()?),
            Value(v) if command.is_none() => {
                let v = v.string()?;
                if v == "help" {
                    // `sgw-agent help [COMMAND]`, `sgw-agent help --man`
                    let text = match parser.next()? {
                        None => HELP,
                        Some(Long("man")) => {
                            if let Some(extra) = parser.next()? {
                                return Err(extra.unexpected());
                            }
                            print!("{}", man_page());
                            return Ok(None);
                        }
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
        Some(Command::CheckConfig { .. }) => Command::CheckConfig { online },
        Some(c) if online => {
            let _ = c;
            return Err("--online goes with the check-config command".into());
        }
        Some(c) if dry_run && !matches!(c, Command::Sync) => {
            let _ = c;
            return Err("--dry-run goes with the sync command".into());
        }
        Some(c) => c,
        None => {
            return Err("missing command (run, sync, status or check-config); see --help".into());
        }
    };
    if quiet && verbose > 0 {
        return Err("-q/--quiet and -v/--verbose do not go together".into());
    }
    Ok(Some(Args {
        config,
        command,
        quiet,
        verbose,
        allow_mass_delete,
        dry_run,
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
    match (args.quiet, args.verbose) {
        (true, _) => set_cli_log_level(log::LevelFilter::Warn),
        (_, 1) => set_cli_log_level(log::LevelFilter::Debug),
        (_, 2..) => set_cli_log_level(log::LevelFilter::Trace),
        _ => {}
    }
    Logger::init(effective_log_level(cfg.log_level));
    log::debug!(
        "configuration {}: {} share(s), state_dir {}, log level {}",
        cfg.file.display(),
        cfg.shares.len(),
        cfg.state_dir.display(),
        log::max_level()
    );
    let code = match args.command {
        Command::Status { json } => status(&cfg, json),
        Command::CheckConfig { online: false } => check_config(&cfg),
        Command::CheckConfig { online: true } => check_online(&cfg),
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
            } else if args.dry_run {
                runner::dry_run(&cfg, &creds, &shutdown, &PrintPlan, &mut print_summary)
            } else {
                let progress: Arc<dyn ProgressSink> = if args.quiet {
                    Arc::new(Silent)
                } else {
                    Arc::new(StderrProgress::new())
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
        "{}: OK ({} share(s) and {} writable by user {}, credentials for key id {} from {}; offline: no bucket, queue or control endpoint was asked — check-config --online does)",
        cfg.file.display(),
        cfg.shares.len(),
        cfg.state_dir.display(),
        me.user,
        creds.access_key_id,
        source
    );
    0
}

/// `check-config --online`: one OK/FAIL line per check (stdout), exit 78 on any FAIL.
fn check_online(cfg: &Config) -> i32 {
    let lines = sgw_agent::check::online(cfg, &mut |l| println!("{l}"));
    let failed = lines.iter().filter(|l| !l.ok).count();
    println!(
        "{}: {} check(s), {failed} failed",
        cfg.file.display(),
        lines.len()
    );
    if failed > 0 { EXIT_CONFIG } else { 0 }
}

fn share_is_two_way(cfg: &Config, name: &str) -> bool {
    cfg.shares
        .iter()
        .any(|s| s.name == name && s.sync.two_way())
}

fn status(cfg: &Config, json: bool) -> i32 {
    // `None`: this user cannot tell (the state directory is 0750 for the service's user).
    let holder = match AgentLock::holder(&cfg.state_dir) {
        Ok(h) => Some(h),
        Err(e) => {
            eprintln!(
                "sgw-agent: cannot tell whether the agent runs: {}/{}: {e}",
                cfg.state_dir.display(),
                sgw_agent::daemon::LOCK_FILE
            );
            None
        }
    };
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
    // Monitoring scripts read the exit code: 1 when a share needs an operator.
    let code = if all.iter().any(ShareStatus::in_trouble) {
        1
    } else {
        0
    };
    let (agent, pid, command) = match &holder {
        Some(LockHolder::Running { pid, command }) => ("running", *pid, command.as_str()),
        Some(LockHolder::Stopped) => ("stopped", None, ""),
        None => ("unknown", None, ""),
    };
    if json {
        #[derive(serde::Serialize)]
        struct View<'a> {
            #[serde(flatten)]
            status: &'a ShareStatus,
            /// `running` while an agent (`run` or `sync`) holds the state directory.
            agent: &'a str,
            agent_pid: Option<u32>,
        }
        let views: Vec<View> = all
            .iter()
            .map(|status| View {
                status,
                agent,
                agent_pid: pid,
            })
            .collect();
        match serde_json::to_string_pretty(&views) {
            Ok(t) => println!("{t}"),
            Err(e) => {
                eprintln!("sgw-agent: {e}");
                return 1;
            }
        }
        return code;
    }
    match &holder {
        Some(LockHolder::Running { .. }) => println!(
            "agent: running ({}{}) on {}",
            pid.map_or("pid unknown".to_owned(), |p| format!("pid {p}")),
            if command.is_empty() {
                String::new()
            } else {
                format!(", sgw-agent {command}")
            },
            cfg.state_dir.display()
        ),
        Some(LockHolder::Stopped) => println!(
            "agent: stopped (no sgw-agent holds {})",
            cfg.state_dir.display()
        ),
        None => println!(
            "agent: unknown (this user cannot read {}; run status as root or the service's user)",
            cfg.state_dir.display()
        ),
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
        if let Some(since) = s.error_since {
            println!("  in trouble since: {}", utc_timestamp_of(since));
        }
    }
    code
}

/// `sync --dry-run` prints each decision on stdout, one line each.
struct PrintPlan;

impl PlanSink for PrintPlan {
    fn planned(&self, share: &str, what: &Planned) {
        let line = match what {
            Planned::Download { key, size } => format!("would download {key:?} ({size} bytes)"),
            Planned::Adopt { key, size } => format!(
                "would adopt {key:?} ({size} bytes): the file already there is this version"
            ),
            Planned::Conflict { key, path } => format!(
                "would keep the local file {} as a conflict copy (it is not the agent's or was changed locally), then download {key:?}",
                path.display()
            ),
            Planned::Delete { key, size } => format!("would delete {key:?} ({size} bytes)"),
            Planned::LeftInPlace { key } => {
                format!("would leave {key:?} in place: gone from the bucket but changed locally")
            }
            Planned::Skip { key, why } => format!("would skip key {key:?}: {why}"),
            Planned::RefuseDeletes { deletes, files } => format!(
                "would refuse to delete {} of {} files (mass-delete guard; see sync --help): nothing would be deleted",
                thousands(*deletes),
                thousands(*files)
            ),
        };
        println!("share {share}: {line}");
    }
}

fn print_summary(share: &str, r: &DryRunReport) {
    println!(
        "share {share}: dry run: {} to download ({}), {} to delete{}, {} to adopt, {} conflict cop{}, {} unchanged, {} skipped; nothing was changed",
        thousands(r.downloads),
        human_bytes(r.download_bytes),
        thousands(r.deletes),
        if r.refused_deletes > 0 {
            format!(" ({} refused by the guard)", thousands(r.refused_deletes))
        } else {
            String::new()
        },
        thousands(r.adoptions),
        thousands(r.conflicts),
        if r.conflicts == 1 { "y" } else { "ies" },
        thousands(r.unchanged),
        thousands(r.skipped)
    );
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
