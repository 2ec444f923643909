//! `sgw-agent <command> --help` and `sgw-agent help <command>`: each command's own help, the
//! same text both ways, exit 0; an unknown command is a usage error (64).

use std::process::{Command, Output};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sgw-agent"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn every_command_has_its_own_help_both_ways() {
    for (command, first_line, mentions) in [
        ("run", "sgw-agent run — ", "ReadWritePaths="),
        ("sync", "sgw-agent sync — ", "--quiet"),
        ("status", "sgw-agent status — ", "--json"),
        (
            "check-config",
            "sgw-agent check-config — ",
            "sudo -u sgw-agent",
        ),
    ] {
        let a = agent(&[command, "--help"]);
        let b = agent(&["help", command]);
        let c = agent(&["-c", "/nonexistent.toml", command, "-h"]);
        for o in [&a, &b, &c] {
            assert_eq!(o.status.code(), Some(0), "{command}: {o:?}");
        }
        let text = stdout(&a);
        assert!(text.starts_with(first_line), "{command}: {text}");
        assert!(text.contains(mentions), "{command}: {text}");
        assert_eq!(text, stdout(&b), "{command}");
        assert_eq!(text, stdout(&c), "{command}");
    }
    let general = agent(&["--help"]);
    assert_eq!(general.status.code(), Some(0));
    assert!(stdout(&general).contains("help [COMMAND]"));
    assert_eq!(stdout(&agent(&["help"])), stdout(&general));
}

#[test]
fn help_for_an_unknown_command_is_a_usage_error() {
    for args in [
        &["help", "frobnicate"][..],
        &["frobnicate", "--help"],
        &["help", "run", "x"],
    ] {
        let o = agent(args);
        assert_eq!(o.status.code(), Some(64), "{args:?}: {o:?}");
        assert!(String::from_utf8_lossy(&o.stderr).starts_with("sgw-agent: "));
    }
}

#[test]
fn the_man_page_is_the_help_text_and_the_shipped_file_is_current() {
    let out = agent(&["help", "--man"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let page = stdout(&out);
    assert!(page.contains(".TH SGW\\-AGENT 1 "), "{page}");
    // Every command's help is in it (dashes escaped for roff).
    for command in ["run", "sync", "status", "check-config"] {
        let help = stdout(&agent(&["help", command]));
        let first = help.lines().nth(3).unwrap().replace('-', "\\-");
        assert!(
            page.contains(&first),
            "{command}: {first:?} not in the page"
        );
        assert!(page.contains(&format!(".SH COMMAND: {}", command.replace('-', "\\-"))));
    }
    // What the .deb installs (Cargo.toml assets) is this output: regenerate with
    // `cargo run -q -- help --man > systemd/sgw-agent.1`.
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/sgw-agent.1"),
    )
    .unwrap();
    assert!(
        shipped == page,
        "systemd/sgw-agent.1 is stale: cargo run -q -- help --man > systemd/sgw-agent.1"
    );
    let manifest = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"),
    )
    .unwrap();
    assert!(manifest.contains("[\"systemd/sgw-agent.1\", \"usr/share/man/man1/sgw-agent.1\""));
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/sgw-agent.service"),
    )
    .unwrap();
    assert!(unit.contains("Documentation=man:sgw-agent(1)"), "{unit}");
}
