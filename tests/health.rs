#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! The health topic's counters follow what happens: timeouts on a bus, rejected commands, a
//! broker restart.

mod common;

use common::json_of;

use std::time::Duration;

use common::gateway::GatewayProcess;
use common::modbus::FakeModbus;
use common::mosquitto::{Mosquitto, Subscriber, publish};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_counts_timeouts_rejected_commands_and_reconnects() {
    let mut broker = Mosquitto::start();
    let fake = FakeModbus::new();
    fake.set_holding(1, 0, &[5]);
    fake.unit(2, |u| u.silent = true);
    let addr = fake.serve_tcp().await;
    let cfg = format!(
        "[gateway]\nid = \"h\"\nbase_topic = \"t\"\nlocation = \"lab\"\nhealth_interval = \"500ms\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nreconnect_min = \"100ms\"\nreconnect_max = \"500ms\"\n[history]\npath = \"{{dir}}/h.db\"\n[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"{addr}\"\ntimeout = \"100ms\"\nretries = 0\n[devices.ok]\nbus = \"plc\"\nunit = 1\npoll = \"200ms\"\n[devices.ok.points.v]\nregister = \"holding:0\"\nwritable = true\n[devices.dead]\nbus = \"plc\"\nunit = 2\npoll = \"200ms\"\noffline_retry = \"200ms\"\n[devices.dead.points.v]\nregister = \"holding:0\"\n",
        broker.port
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg.replace("{dir}", &dir.path().display().to_string());
    let gw = GatewayProcess::spawn(&cfg, &[]);
    let topic = "t/gateway/h/health";
    let sub = Subscriber::connect(broker.port, topic);
    let wait = Duration::from_secs(10);
    let h = sub
        .wait_for(
            topic,
            |p| json_of(p)["buses"]["plc"]["timeouts"].as_u64() >= Some(3),
            wait,
        )
        .unwrap_or_else(|| panic!("no timeouts counted; log:\n{}", gw.log()));
    let v = json_of(&h.payload);
    assert!(
        v["buses"]["plc"]["transactions"].as_u64().unwrap() >= 4,
        "{v}"
    );
    assert_eq!(v["mqtt"]["connected"], json!(true));
    assert_eq!(v["version"], json!(env!("CARGO_PKG_VERSION")));
    for i in 0..3 {
        publish(
            broker.port,
            "t/lab/device/ok/command",
            &format!(r#"{{"id": "{i}", "nope": 1}}"#),
            false,
        );
    }
    assert!(
        sub.wait_for(
            topic,
            |p| json_of(p)["commands"]["rejected"] == json!(3),
            wait
        )
        .is_some(),
        "rejected commands not counted"
    );
    broker.restart();
    let sub = Subscriber::connect(broker.port, topic);
    let h = sub
        .wait_for(
            topic,
            |p| json_of(p)["mqtt"]["reconnects"].as_u64() >= Some(1),
            wait,
        )
        .unwrap_or_else(|| panic!("reconnect not counted; log:\n{}", gw.log()));
    assert_eq!(json_of(&h.payload)["commands"]["rejected"], json!(3));
}
