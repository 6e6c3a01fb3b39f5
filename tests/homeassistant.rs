#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! Home Assistant discovery, checked field by field against what Home Assistant's MQTT
//! integration reads, with the templates rendered by a real Jinja engine (minijinja) against the
//! gateway's real state payload, and the command templates fed back through the gateway's own
//! command parser.

use std::path::Path;

use fieldbridge::config::Config;
use fieldbridge::device::command;
use fieldbridge::discovery::{self, Component};
use fieldbridge::model::Value;
use fieldbridge::payload;
use fieldbridge::topics::Topics;
use serde_json::{Value as Json, json};

fn config() -> Config {
    let text = r#"
[gateway]
id = "gw"
base_topic = "home"
[buses.plc]
kind = "modbus-tcp"
address = "127.0.0.1:502"
[devices.boiler]
bus = "plc"
unit = 1
location = "basement"
name = "Boiler"
manufacturer = "Acme"
model = "B-200"
[devices.boiler.points.temperature]
register = "input:0"
scale = 0.1
unit = "°C"
device_class = "temperature"
[devices.boiler.points.alarm]
register = "discrete:0"
[devices.boiler.points.setpoint]
register = "holding:10"
scale = 0.5
writable = true
min = 5
max = 80
[devices.boiler.points.pump]
register = "coil:0"
writable = true
[devices.boiler.points.state]
register = "coil:1"
writable = true
map = { 0 = "off", 1 = "on" }
[devices.boiler.points.mode]
register = "holding:11"
writable = true
map = { 0 = "auto", 1 = "heat", 2 = "cool" }
[devices.boiler.points.phase]
register = "input:1"
map = { 0 = "idle", 1 = "burning" }
[devices.boiler.points.serial]
register = "holding:20"
type = "string"
length = 4
"#;
    fieldbridge::config::parse(text, Path::new("t.toml")).unwrap()
}

fn state_payload() -> Json {
    let values = [
        ("temperature", Value::Float(21.5)),
        ("alarm", Value::Bool(true)),
        ("setpoint", Value::Float(55.5)),
        ("pump", Value::Bool(false)),
        ("state", Value::Text("on".into())),
        ("mode", Value::Text("heat".into())),
        ("phase", Value::Text("burning".into())),
        ("serial", Value::Text("AB12".into())),
    ];
    let body = payload::state(
        values.iter().map(|(k, v)| (*k, v)),
        std::time::SystemTime::now(),
    );
    serde_json::from_str(&body).unwrap()
}

fn render(template: &str, ctx: Json) -> String {
    let env = minijinja::Environment::new();
    let ctx: minijinja::Value = serde_json::from_value(ctx).unwrap();
    env.render_str(template, ctx).unwrap()
}

#[test]
fn every_point_has_the_fields_home_assistant_reads_and_its_value_template_yields_the_value() {
    let c = config();
    let t = Topics::new(&c);
    let state = state_payload();
    let expected = [
        ("temperature", Component::Sensor, "21.5"),
        ("alarm", Component::BinarySensor, "ON"),
        ("setpoint", Component::Number, "55.5"),
        ("pump", Component::Switch, "OFF"),
        ("state", Component::Switch, "on"),
        ("mode", Component::Select, "heat"),
        ("phase", Component::Sensor, "burning"),
        ("serial", Component::Sensor, "AB12"),
    ];
    let dev = &c.devices["boiler"];
    for (point, component, rendered) in expected {
        let p = &dev.points[point];
        assert_eq!(discovery::component(p), component, "{point}");
        let (topic, cfg) = discovery::point_config(&c, &t, "boiler", dev, point, p);
        assert_eq!(
            topic,
            format!(
                "homeassistant/{}/gw_boiler/{point}/config",
                component.name()
            )
        );
        assert_eq!(cfg["unique_id"], json!(format!("gw_boiler_{point}")));
        assert_eq!(
            cfg["state_topic"],
            json!("home/basement/device/boiler/state")
        );
        assert_eq!(cfg["availability_mode"], json!("all"));
        let avail = cfg["availability"].as_array().unwrap();
        assert_eq!(avail.len(), 2);
        assert_eq!(
            avail[0]["topic"],
            json!("home/basement/device/boiler/availability")
        );
        assert_eq!(avail[1]["topic"], json!("home/gateway/gw/status"));
        for a in avail {
            // The availability payloads are JSON: the template must give online/offline.
            let got = render(
                a["value_template"].as_str().unwrap(),
                json!({"value_json": {"device": "boiler", "status": "online"}}),
            );
            assert_eq!(got, "online");
        }
        assert_eq!(cfg["payload_available"], json!("online"));
        assert_eq!(
            cfg["device"]["identifiers"],
            json!(["fieldbridge_gw_boiler"])
        );
        assert_eq!(cfg["device"]["name"], json!("Boiler"));
        assert_eq!(cfg["device"]["manufacturer"], json!("Acme"));
        assert_eq!(cfg["device"]["model"], json!("B-200"));
        assert_eq!(cfg["device"]["via_device"], json!("fieldbridge_gw"));
        assert_eq!(cfg["origin"]["name"], json!("fieldbridge"));
        let value = render(
            cfg["value_template"].as_str().unwrap(),
            json!({ "value_json": state }),
        );
        assert_eq!(
            value, rendered,
            "{point}: value_template on the real state payload"
        );
        let writable = p.writable;
        assert_eq!(cfg.get("command_topic").is_some(), writable, "{point}");
        if writable {
            assert_eq!(
                cfg["command_topic"],
                json!("home/basement/device/boiler/command")
            );
        }
    }
}

/// What Home Assistant would send for each writable component, through the gateway's parser.
#[test]
fn command_templates_and_switch_payloads_give_commands_the_gateway_accepts() {
    let c = config();
    let t = Topics::new(&c);
    let dev = &c.devices["boiler"];
    let cfg =
        |point: &str| discovery::point_config(&c, &t, "boiler", dev, point, &dev.points[point]).1;
    let accept = |payload: &str, point: &str, value: Value| {
        let cmd = command::parse(dev, payload.as_bytes())
            .unwrap_or_else(|e| panic!("{payload}: {}", e.message));
        assert_eq!(
            cmd.kind,
            command::CommandKind::Set(vec![(point.into(), value)]),
            "{payload}"
        );
    };
    // number: HA renders the template with the number the user picked.
    let number = cfg("setpoint");
    assert_eq!(number["min"], json!(5.0));
    assert_eq!(number["max"], json!(80.0));
    assert_eq!(number["step"], json!(0.5));
    let sent = render(
        number["command_template"].as_str().unwrap(),
        json!({"value": 42.5}),
    );
    accept(&sent, "setpoint", Value::Float(42.5));
    // select: the chosen option.
    let select = cfg("mode");
    assert_eq!(select["options"], json!(["auto", "heat", "cool"]));
    let sent = render(
        select["command_template"].as_str().unwrap(),
        json!({"value": "cool"}),
    );
    accept(&sent, "mode", Value::Text("cool".into()));
    // switch: payload_on / payload_off as they are.
    let sw = cfg("pump");
    accept(
        sw["payload_on"].as_str().unwrap(),
        "pump",
        Value::Bool(true),
    );
    accept(
        sw["payload_off"].as_str().unwrap(),
        "pump",
        Value::Bool(false),
    );
    let labelled = cfg("state");
    accept(
        labelled["payload_on"].as_str().unwrap(),
        "state",
        Value::Text("on".into()),
    );
    assert_eq!(labelled["state_on"], json!("on"));
    assert_eq!(labelled["state_off"], json!("off"));
    // Read-only points take no commands.
    assert!(cfg("temperature").get("command_topic").is_none());
    assert!(cfg("phase").get("command_topic").is_none());
    assert_eq!(cfg("phase")["device_class"], json!("enum"));
}

mod common;

use common::gateway::InProcess;
use common::mosquitto::{Mosquitto, Subscriber, publish, retained, wait_retained};
use std::time::Duration;

fn live_config(port: u16, points: &[&str]) -> String {
    let mut c = format!(
        "[gateway]\nid = \"hagw\"\nbase_topic = \"t\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\n[history]\npath = \"{{dir}}/h.db\"\n[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"127.0.0.1:1\"\ntimeout = \"100ms\"\n[devices.d]\nbus = \"plc\"\nunit = 1\n"
    );
    for (i, p) in points.iter().enumerate() {
        c += &format!("[devices.d.points.{p}]\nregister = \"holding:{i}\"\n");
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_is_republished_when_home_assistant_comes_online_and_removed_for_points_that_left()
 {
    let broker = Mosquitto::start();
    let wait = Duration::from_secs(10);
    let a = "homeassistant/sensor/hagw_d/a/config";
    let b = "homeassistant/sensor/hagw_d/b/config";
    let gw = InProcess::start(&live_config(broker.port, &["a", "b"])).await;
    assert!(wait_retained(broker.port, b, |p| p.contains("hagw_d_b"), wait).is_some());
    // Home Assistant restarts: its birth message brings every config again.
    let sub = Subscriber::connect(broker.port, "homeassistant/sensor/#");
    sub.clear();
    publish(broker.port, "homeassistant/status", "online", false);
    assert!(
        sub.wait_for(a, |p| p.contains("hagw_d_a"), wait).is_some(),
        "not re-published"
    );
    gw.stop().await;

    // Point b leaves the config: its retained config is deleted, a's stays.
    let gw = InProcess::start(&live_config(broker.port, &["a"])).await;
    let deadline = std::time::Instant::now() + wait;
    while retained(broker.port, b).is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "discovery of b was not removed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(retained(broker.port, a).is_some());
    gw.stop().await;
}
