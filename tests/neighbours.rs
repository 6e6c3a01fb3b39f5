#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! Two gateways with one id on one broker (README "Two gateways, one id"): every Raspberry Pi
//! is called `raspberrypi`, so two left with the default meet. The second refuses to start
//! (78, naming the id, the other host and the fix) without taking the first's client id or
//! touching its Home Assistant configs.

mod common;

use common::json_of;

use common::WAIT;

use common::gateway::{GatewayProcess, config_text};
use common::mosquitto::{Mosquitto, Subscriber, retained, wait_retained};

#[test]
fn a_second_gateway_with_the_same_id_refuses_to_start_and_leaves_the_first_alone() {
    let broker = Mosquitto::start();
    let first_dir = tempfile::tempdir().unwrap();
    let text = config_text(first_dir.path(), broker.port, "twin", "").replace(
        "location = \"lab\"",
        "location = \"lab\"\nhealth_interval = \"1s\"",
    );
    let sub = Subscriber::connect(broker.port, "#");
    let first = GatewayProcess::spawn_in(first_dir, &text, &[]);
    let status = wait_retained(
        broker.port,
        "test/gateway/twin/status",
        |p| json_of(p)["status"] == "online",
        WAIT,
    )
    .unwrap_or_else(|| panic!("the first gateway is not online\n{}", first.log()));
    let first_host = json_of(&status)["host"].as_str().unwrap().to_string();
    assert!(!first_host.is_empty(), "{status}");
    let discovery = "homeassistant/device/twin_lamp/config";
    assert!(
        wait_retained(broker.port, discovery, |p| !p.is_empty(), WAIT).is_some(),
        "the first gateway published no discovery"
    );

    // The same config from another installation (another state directory).
    let second_dir = tempfile::tempdir().unwrap();
    let text = config_text(second_dir.path(), broker.port, "twin", "");
    let mut second = GatewayProcess::spawn_in(second_dir, &text, &[]);
    let exit = second.wait_exit(WAIT);
    let log = second.log();
    assert_eq!(exit.and_then(|s| s.code()), Some(78), "{log}");
    for words in [
        "gateway id \"twin\" is online on this broker from another installation",
        &format!("host \"{first_host}\""),
        "give this one its own `[gateway] id`",
    ] {
        assert!(log.contains(words), "no {words:?} in:\n{log}");
    }

    // The first kept its connection, its status and its discovery config.
    sub.clear();
    let health = sub
        .wait_for("test/gateway/twin/health", |_| true, WAIT)
        .map(|m| json_of(&m.payload))
        .expect("the first gateway's health");
    assert_eq!(health["mqtt"]["reconnects"], 0, "{health}");
    let status = retained(broker.port, "test/gateway/twin/status").unwrap_or_default();
    assert_eq!(json_of(&status)["status"], "online", "{status}");
    assert_eq!(json_of(&status)["host"], first_host.as_str(), "{status}");
    assert!(
        retained(broker.port, discovery).is_some_and(|p| !p.is_empty()),
        "the first gateway's discovery config was removed"
    );
    assert!(
        !sub.seen()
            .iter()
            .any(|m| m.topic == "test/gateway/twin/status" && m.payload.contains("offline")),
        "an offline status was published for the first gateway"
    );
    drop(first);
}

#[test]
fn the_same_installation_restarting_is_not_a_neighbour() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(dir.path(), broker.port, "solo", "");
    let mut gw = GatewayProcess::spawn_in(dir, &text, &[]);
    assert!(
        wait_retained(
            broker.port,
            "test/gateway/solo/status",
            |p| json_of(p)["status"] == "online",
            WAIT
        )
        .is_some()
    );
    // Killed, and started again at once: the retained status may still say online (the broker
    // has not noticed yet), but it is this installation's, and the gateway starts.
    gw.signal(nix::sys::signal::Signal::SIGKILL);
    gw.wait_exit(WAIT);
    let dir = std::mem::replace(&mut gw.dir, tempfile::tempdir().unwrap());
    let again = GatewayProcess::spawn_in(dir, &text, &[]);
    assert!(
        again.wait_log("mqtt connected", WAIT),
        "the same installation did not start again:\n{}",
        again.log()
    );
}
