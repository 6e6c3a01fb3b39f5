#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! The unit file: what README "Signals and systemd" promises of it, `systemd-analyze verify`, and its exposure.
//! Under a booted systemd, from the installed package: tests/booted.rs.

mod common;

use std::path::Path;
use std::process::Command;

fn unit() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/fieldbridge.service"),
    )
    .unwrap()
}

/// The unit with ExecStart pointing at the built binary (verify insists that it exists).
fn unit_for_test(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("fieldbridge.service");
    std::fs::write(
        &path,
        unit().replace("/usr/bin/fieldbridge", env!("CARGO_BIN_EXE_fieldbridge")),
    )
    .unwrap();
    path
}

fn has_systemd_analyze() -> bool {
    Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
}

#[test]
fn the_unit_has_what_the_contract_asks() {
    let u = unit();
    for line in [
        "Type=notify",
        "ExecStart=/usr/bin/fieldbridge run -c /etc/fieldbridge/config.toml",
        "Restart=on-failure",
        "RestartPreventExitStatus=78",
        "WatchdogSec=30",
        "StartLimitIntervalSec=120",
        "StartLimitBurst=5",
        "ProtectSystem=strict",
        "StateDirectory=fieldbridge",
        "SupplementaryGroups=dialout",
        "User=fieldbridge",
        "DeviceAllow=char-ttyUSB rw",
        "DeviceAllow=char-ttySC rw",
    ] {
        assert!(u.lines().any(|l| l == line), "missing {line}");
    }
    // RestartPreventExitStatus= does not cover ExecStartPre=: a failing check there would be
    // restarted forever (systemd issue 11868). `run` checks the config itself.
    assert!(!u.lines().any(|l| l.starts_with("ExecStartPre=")));
    // Reload checks the file first, so a broken one fails `systemctl reload`, then signals.
    let reload: Vec<&str> = u.lines().filter(|l| l.starts_with("ExecReload=")).collect();
    assert_eq!(
        reload,
        [
            "ExecReload=/usr/bin/fieldbridge check --quiet -c /etc/fieldbridge/config.toml",
            "ExecReload=/bin/sh -c 'kill -HUP $$MAINPID'",
        ]
    );
    // The start limit belongs to [Unit] (systemd ignores it in [Service] with a warning).
    let unit_section = u.split("[Service]").next().unwrap();
    assert!(unit_section.contains("StartLimitBurst="));
    assert!(
        !u.lines().any(|l| l.trim() == "PrivateDevices=yes"),
        "would hide the serial ports"
    );
}

#[test]
fn systemd_analyze_verify_passes() {
    if !has_systemd_analyze() {
        common::cannot_run("systemd-analyze is not installed (Debian's systemd)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = unit_for_test(dir.path());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "verify failed:\n{stderr}");
    assert!(
        !stderr.contains("fieldbridge.service"),
        "verify warned about the unit:\n{stderr}"
    );
}

#[test]
fn exposure_is_2_5_or_lower_with_serial_ports_reachable() {
    if !has_systemd_analyze() {
        common::cannot_run("systemd-analyze is not installed (Debian's systemd)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = unit_for_test(dir.path());
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let level =
        common::exposure_level(&text).unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    eprintln!("systemd-analyze security exposure: {level}");
    assert!(level <= 2.5, "exposure {level}:\n{text}");
}
