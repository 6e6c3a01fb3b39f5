#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! The PostgreSQL password of history forwarding (README "Central history"): never in the URL,
//! however encoded; a warning at every start when it would go to another host unverified.

mod common;

use common::WAIT;

use common::gateway::{BIN, GatewayProcess, config_text};
use common::mosquitto::Mosquitto;

#[test]
fn a_password_to_another_host_without_verify_full_is_warned_about_with_the_fix() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    // TEST-NET-1: nothing answers; the warning comes before any connection.
    let text = config_text(dir.path(), broker.port, "fw", "")
        + "[history.forward]\nurl = \"postgres://gw@192.0.2.1/home\"\n";
    let gw = GatewayProcess::spawn_in(dir, &text, &[("FIELDBRIDGE_FORWARD_PASSWORD", "s3cret")]);
    assert!(
        gw.wait_log("the PostgreSQL password goes to 192.0.2.1", WAIT),
        "{}",
        gw.log()
    );
    let log = gw.log();
    assert!(log.contains("sslmode = \"verify-full\""), "{log}");
    assert!(!log.contains("s3cret"), "the password was logged");

    // To this machine, or verified: no warning.
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), broker.port, "fw2", "")
        + "[history.forward]\nurl = \"postgres://gw@127.0.0.1:1/home\"\n";
    let gw = GatewayProcess::spawn_in(dir, &text, &[("FIELDBRIDGE_FORWARD_PASSWORD", "s3cret")]);
    assert!(gw.wait_log("fieldbridge started", WAIT), "{}", gw.log());
    assert!(!gw.log().contains("password goes to"), "{}", gw.log());
}

#[test]
fn a_password_in_the_url_is_refused_however_it_is_encoded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        "[history.forward]\nurl = \"postgres://gw@db.lan/home?pass%77ord=s3cret\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "-c"])
        .arg(&path)
        .env_remove("FIELDBRIDGE_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"password\" does not go in the URL; use password_file"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
}
