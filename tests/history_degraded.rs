#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! The history never stops the bridging (README "History"): a history that cannot be made or
//! opened at start, or whose disk fills up, leaves the gateway polling, publishing and
//! executing commands, says why in health and the log, and resumes when the file can be
//! written again.

mod common;

use common::json_of;

use common::WAIT;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::gateway::GatewayProcess;
use common::modbus::FakeModbus;
use common::mosquitto::{Mosquitto, Subscriber, publish};

fn config(port: u16, plc: &str, history: &Path) -> String {
    format!(
        "[gateway]\nid = \"hd\"\nbase_topic = \"t\"\nlocation = \"lab\"\nhealth_interval = \"1s\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nreconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n[history]\npath = \"{}\"\nflush = \"100ms\"\n[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"{plc}\"\n[devices.dev]\nbus = \"plc\"\nunit = 1\npoll = \"200ms\"\n[devices.dev.points.v]\nregister = \"holding:0\"\nwritable = true\n",
        history.display()
    )
}

/// The gateway bridges: a value reaches the broker, and a command is written and answered.
fn bridges(sub: &Subscriber, port: u16, fake: &FakeModbus, value: u16, id: &str) {
    fake.set_holding(1, 0, &[value]);
    assert!(
        sub.wait_for("t/lab/device/dev/state", |p| json_of(p)["v"] == value, WAIT)
            .is_some(),
        "no state with {value}"
    );
    publish(
        port,
        "t/lab/device/dev/command",
        &format!("{{\"id\": \"{id}\", \"v\": {}}}", value + 1),
        false,
    );
    let result = sub
        .wait_for(
            "t/lab/device/dev/command/result",
            |p| p.contains(&format!("\"{id}\"")),
            WAIT,
        )
        .map(|m| json_of(&m.payload))
        .expect("a command result");
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(
        fake.unit(1, |u| u.holdings.get(&0).copied()),
        Some(value + 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_folder_that_cannot_be_made_leaves_the_gateway_bridging() {
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    fake.set_holding(1, 0, &[1]);
    let plc = fake.serve_tcp().await.to_string();
    // A regular file where the folder should be: the folder cannot be made, by root either.
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("state");
    std::fs::write(&blocker, "not a folder").unwrap();
    let text = config(broker.port, &plc, &blocker.join("history.db"));
    let sub = Subscriber::connect(broker.port, "t/#");
    let mut gw = GatewayProcess::spawn(&text, &[]);
    bridges(&sub, broker.port, &fake, 5, "c1");
    assert!(gw.is_running(), "{}", gw.log());
    let health = sub
        .wait_for(
            "t/gateway/hd/health",
            |p| json_of(p)["history"].is_object(),
            WAIT,
        )
        .map(|m| json_of(&m.payload))
        .unwrap();
    assert_eq!(health["history"]["available"], false, "{health}");
    let why = health["history"]["unavailable"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("cannot create the folder"), "{health}");
    let log = gw.log();
    assert_eq!(
        log.matches("history unavailable").count(),
        1,
        "logged once:\n{log}"
    );
}

/// A tmpfs of `size` at `dir` (root only).
fn tmpfs(dir: &Path, size: &str) -> bool {
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_leaves_the_gateway_bridging_and_the_history_resumes_when_room_returns() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    if !nix::unistd::Uid::effective().is_root() || !tmpfs(&disk, "4m") {
        let why = "a full disk needs a tmpfs, which only root can mount";
        common::cannot_run(why);
        return;
    }
    let _unmount = Unmount(&disk);
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    fake.set_holding(1, 0, &[1]);
    let plc = fake.serve_tcp().await.to_string();
    // Full before the gateway starts: not even the file can be made.
    let filler = disk.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    let text = config(broker.port, &plc, &disk.join("history.db"));
    let sub = Subscriber::connect(broker.port, "t/#");
    let mut gw = GatewayProcess::spawn(&text, &[]);
    bridges(&sub, broker.port, &fake, 5, "c1");
    let health = sub
        .wait_for(
            "t/gateway/hd/health",
            |p| json_of(p)["history"]["available"] == false,
            WAIT,
        )
        .map(|m| json_of(&m.payload))
        .expect("health says the history is unavailable");
    assert!(
        health["history"]["unavailable"]
            .as_str()
            .is_some_and(|w| !w.is_empty()),
        "{health}"
    );
    // Room again: the file is made within the minute of retries, and written.
    std::fs::remove_file(&filler).unwrap();
    assert!(
        sub.wait_for(
            "t/gateway/hd/health",
            |p| json_of(p)["history"]["available"] == true,
            Duration::from_secs(90),
        )
        .is_some(),
        "the history did not come back:\n{}",
        gw.log()
    );
    bridges(&sub, broker.port, &fake, 9, "c2");
    assert!(
        sub.wait_for(
            "t/gateway/hd/health",
            |p| json_of(p)["history"]["rows"].as_u64() > Some(0),
            WAIT,
        )
        .is_some(),
        "nothing recorded after the room came back:\n{}",
        gw.log()
    );
    assert!(gw.is_running());
}
