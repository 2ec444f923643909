//! `check-config --online`: what the service needs, asked of the real services. One line per
//! check, OK or FAIL with the reason:
//!
//! - the credentials are found (environment, systemd credential or `credentials_file`);
//! - the state directory and every share directory are writable by this user (a file is
//!   created and removed; see [`crate::access`]);
//! - with a control endpoint: it answers, and accepts the gateway id and secret (a signed
//!   `GET /agent/v1/assignments`, which changes nothing there);
//! - for every share (under a control endpoint: every assigned share): a one-key listing of
//!   its bucket and prefix, and its queue read without consuming anything
//!   ([`SqsClient::probe_receive`]: `VisibilityTimeout=0`, `WaitTimeSeconds=0`, no delete).
//!
//! [`SqsClient::probe_receive`]: crate::cloud::sqs::SqsClient::probe_receive

use crate::access::{Identity, check_share_dir, check_state_dir};
use crate::cloud::CloudError;
use crate::config::Config;
use crate::control_client::client::ControlClient;
use crate::runner::{effective_shares, s3_client, sqs_client};

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckLine {
    pub ok: bool,
    /// What was checked, e.g. `share "photos": bucket`.
    pub what: String,
    /// What was found, or why it failed and what to do.
    pub detail: String,
}

impl std::fmt::Display for CheckLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = if self.ok { "OK  " } else { "FAIL" };
        write!(f, "{mark}  {}: {}", self.what, self.detail)
    }
}

fn line(ok: bool, what: impl Into<String>, detail: impl Into<String>) -> CheckLine {
    CheckLine {
        ok,
        what: what.into(),
        detail: detail.into(),
    }
}

/// What a refusal of the control endpoint means for the operator.
fn control_problem(e: &CloudError) -> String {
    match e {
        CloudError::Service {
            status,
            code,
            message,
        } if *status == 401 || *status == 403 => {
            format!(
                "the gateway id or secret was not accepted ({status} {code}: {message}); check gateway_id and gateway_secret(_file) against `sgw-control gateway add`"
            )
        }
        CloudError::Service { .. } => format!("answered with an error: {e}"),
        _ => format!("not reachable: {e}"),
    }
}

/// Run every check; `emit` gets each line as it is known (the network checks take a moment).
pub fn online(cfg: &Config, emit: &mut dyn FnMut(&CheckLine)) -> Vec<CheckLine> {
    let mut lines = Vec::new();
    let mut push = |l: CheckLine, lines: &mut Vec<CheckLine>| {
        emit(&l);
        lines.push(l);
    };
    let me = Identity::current();
    let creds = match cfg.credentials_with_source() {
        Ok((c, source)) => {
            push(
                line(
                    true,
                    "credentials",
                    format!("key id {} from {source}", c.access_key_id),
                ),
                &mut lines,
            );
            Some(c)
        }
        Err(e) => {
            push(line(false, "credentials", e.to_string()), &mut lines);
            None
        }
    };
    push(
        match check_state_dir(&cfg.state_dir, &me) {
            Ok(()) => line(
                true,
                "state_dir",
                format!("{} writable by user {}", cfg.state_dir.display(), me.user),
            ),
            Err(p) => line(false, "state_dir", p),
        },
        &mut lines,
    );
    for share in &cfg.shares {
        let what = format!("share {:?}: path", share.name);
        push(
            match check_share_dir(&share.path, &me) {
                Ok(()) => line(
                    true,
                    what,
                    format!("{} writable by user {}", share.path.display(), me.user),
                ),
                Err(p) => line(false, what, p),
            },
            &mut lines,
        );
    }
    let assignments = match &cfg.control {
        None => None,
        Some(control) => {
            let what = format!("control endpoint {}", control.endpoint);
            match ControlClient::new(control).assignments() {
                Ok(a) => {
                    push(
                        line(
                            true,
                            what,
                            format!(
                                "reachable; gateway {} accepted, {} share(s) assigned",
                                control.gateway_id,
                                a.assignments.len()
                            ),
                        ),
                        &mut lines,
                    );
                    Some(a)
                }
                Err(e) => {
                    push(line(false, what, control_problem(&e)), &mut lines);
                    None
                }
            }
        }
    };
    let Some(creds) = creds else {
        return lines;
    };
    if cfg.control.is_some() && assignments.is_none() {
        return lines;
    }
    let shares = effective_shares(cfg, assignments.as_ref());
    if let Some(a) = &assignments {
        for share in &cfg.shares {
            if !a.assignments.iter().any(|e| e.share_name == share.name) {
                push(
                    line(
                        true,
                        format!("share {:?}: bucket", share.name),
                        "not in an express sync group yet: nothing to check",
                    ),
                    &mut lines,
                );
            }
        }
    }
    for share in &shares {
        let what = format!("share {:?}: bucket {}", share.name, share.bucket);
        let result = s3_client(share, &creds)
            .map_err(|e| format!("endpoint {}: {e}", share.endpoint))
            .and_then(|c| c.probe_list(&share.prefix).map_err(|e| e.to_string()));
        push(
            match result {
                Ok(n) => line(
                    true,
                    what,
                    format!(
                        "listable with these credentials (prefix {:?}, a 1-key list returned {n})",
                        share.prefix
                    ),
                ),
                Err(e) => line(false, what, e),
            },
            &mut lines,
        );
        let Some(url) = &share.queue_url else {
            continue;
        };
        let what = format!("share {:?}: queue", share.name);
        let result = sqs_client(share, url, &creds)
            .and_then(|c| c.probe_receive().map_err(|e| e.to_string()));
        push(
            match result {
                Ok(_) => line(
                    true,
                    what,
                    format!(
                        "{url} readable (ReceiveMessage with VisibilityTimeout=0: nothing consumed)"
                    ),
                ),
                Err(e) => line(false, what, format!("{url}: {e}")),
            },
            &mut lines,
        );
    }
    lines
}
