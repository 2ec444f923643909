//! The `sgw-control` command line: help, configuration errors (exit 78 naming file and key),
//! and the admin subcommands.

use std::process::Command;

fn control() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sgw-control"));
    c.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("SGW_ACCESS_KEY_ID")
        .env_remove("SGW_ACCESS_KEY_SECRET");
    c
}

#[test]
fn help_explains_the_contract() {
    let out = control().arg("--help").output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--listen",
        "--data-dir",
        "--cloud-endpoint",
        "--cloud-region",
        "SGW_ACCESS_KEY_ID",
        "AWS_ACCESS_KEY_ID",
        "gateway add",
        "78",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}");
    }
}

#[test]
fn configuration_errors_exit_78_with_file_key_and_expectation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("control.toml");
    std::fs::write(
        &file,
        "listen = \"not an address\"\n[cloud]\nendpoint = \"https://s3.example\"\n",
    )
    .expect("write");
    let out = control()
        .arg("-c")
        .arg(&file)
        .env("AWS_ACCESS_KEY_ID", "a")
        .env("AWS_SECRET_ACCESS_KEY", "b")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&file.display().to_string())
            && err.contains("listen")
            && err.contains("127.0.0.1:8480"),
        "{err}"
    );

    // No credentials for provisioning.
    let out = control()
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("d"))
        .args(["--cloud-endpoint", "http://127.0.0.1:9"])
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("AWS_ACCESS_KEY_ID"));

    // Half a bootstrap key.
    let out = control()
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("d"))
        .args(["--cloud-endpoint", "http://127.0.0.1:9"])
        .env("AWS_ACCESS_KEY_ID", "a")
        .env("AWS_SECRET_ACCESS_KEY", "b")
        .env("SGW_ACCESS_KEY_ID", "only-the-id")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SGW_ACCESS_KEY_SECRET"));
}

/// Usage errors exit 64 (`EX_USAGE`), which systemd/sgw-control.service lists in
/// `RestartPreventExitStatus` next to 78: a typo in the unit must not restart in a loop.
#[test]
fn usage_errors_exit_64_naming_the_problem() {
    for (args, needle) in [
        (&["frobnicate"][..], "unknown command"),
        (&["bogus"][..], "unknown command"),
        (&["--no-such-flag"][..], "--no-such-flag"),
        (&["--listen"][..], "--listen"),
        (
            &["gateway", "list", "--region", "us-east-1"][..],
            "--region",
        ),
    ] {
        let out = control().args(args).output().expect("run");
        assert_eq!(out.status.code(), Some(64), "sgw-control {args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "sgw-control {args:?}: {stderr}");
    }
    let out = control().arg("--help").output().expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("64 usage error"), "{help}");
}

#[test]
fn gateways_and_keys_are_managed_from_the_command_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        control()
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .output()
            .expect("run")
    };
    let added = run(&["gateway", "add", "edge-01", "--region", "cn-hangzhou"]);
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let table: toml::Table =
        toml::from_str(&String::from_utf8_lossy(&added.stdout)).expect("TOML output");
    let id = table["gateway_id"].as_str().expect("id").to_string();
    assert!(id.starts_with("gw-"));
    assert!(
        table["gateway_secret"]
            .as_str()
            .is_some_and(|s| s.len() == 40)
    );
    let listed = String::from_utf8_lossy(&run(&["gateway", "list"]).stdout).to_string();
    assert!(
        listed.contains(&id) && listed.contains("edge-01") && listed.contains("cn-hangzhou"),
        "{listed}"
    );
    assert!(run(&["gateway", "remove", &id]).status.success());
    assert!(
        !run(&["gateway", "remove", &id]).status.success(),
        "already gone"
    );

    let key = run(&["key", "add", "ops-team"]);
    assert!(key.status.success());
    assert!(String::from_utf8_lossy(&key.stdout).contains("access_key_id = \"ops-team\""));
    assert_eq!(
        String::from_utf8_lossy(&run(&["key", "list"]).stdout).trim(),
        "ops-team"
    );
    assert!(run(&["key", "remove", "ops-team"]).status.success());
    assert_eq!(run(&["gateway", "add", ""]).status.code(), Some(64));
}

/// The keys serde expects, from the "unknown field" error of a probe key in `section`.
fn known_keys(dir: &std::path::Path, example: &str, section: Option<&str>) -> Vec<String> {
    let probe = match section {
        None => format!("sgw_probe_key = 1\n{example}"),
        Some(s) => example.replace(&format!("[{s}]\n"), &format!("[{s}]\nsgw_probe_key = 1\n")),
    };
    let file = dir.join("probe.toml");
    std::fs::write(&file, probe).unwrap();
    let out = control()
        .args(["-c", file.to_str().unwrap(), "--data-dir"])
        .arg(dir.join("data"))
        .args(["gateway", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let expected = err
        .split_once("expected one of ")
        .unwrap_or_else(|| panic!("{err}"))
        .1;
    expected
        .split(',')
        .map(|k| k.trim().trim_matches('`').to_owned())
        .filter(|k| !k.is_empty())
        .collect()
}

#[test]
fn the_sample_control_toml_parses_and_documents_every_key() {
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/control.toml.example"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ok = control()
        .args(["-c", "../systemd/control.toml.example", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["gateway", "list"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    for (section, keys) in [
        (None, known_keys(dir.path(), &example, None)),
        (
            Some("cloud"),
            known_keys(dir.path(), &example, Some("cloud")),
        ),
    ] {
        assert!(keys.len() >= 4, "{keys:?}");
        for key in keys {
            let documented = if key == "cloud" {
                example.contains("\n[cloud]\n")
            } else if key == "oms" {
                example.contains("[[oms.endpoints]]")
            } else {
                // Set, or shown commented out with its example value.
                example.lines().any(|l| {
                    l.starts_with(&format!("{key} = ")) || l.starts_with(&format!("# {key} = "))
                })
            };
            assert!(
                documented,
                "{section:?}.{key} is not in systemd/control.toml.example"
            );
        }
    }
}
