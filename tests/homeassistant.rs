#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! Home Assistant discovery without Home Assistant running: every template we publish is
//! rendered by Home Assistant's own template engine (Python's Jinja2, attribute before item;
//! minijinja, item first, hides `value_json.items` and friends) against the payloads we publish,
//! for point names that trip Jinja; command templates and payloads go back through the
//! gateway's own command parser. Then the discovery life on a real mosquitto: re-publishing,
//! removal, ownership between gateways, the start-up scan and the persistent session, reloads,
//! mode switches. tests/ha_live.rs proves the same configs in a running Home Assistant.

mod common;

use common::WAIT;

use std::collections::BTreeMap;
use std::path::Path;

use common::gateway::{GatewayProcess, InProcess};
use common::home_assistant::{self, EVERY_COMPONENT, Render, discovery_topics, ours_on_broker};
use common::mosquitto::{Mosquitto, Subscriber, publish, retained, wait_retained};
use fieldbridge::config::Config;
use fieldbridge::device::command::{self, CommandKind};
use fieldbridge::ha::discovery::{self, Message};
use fieldbridge::model::Value;
use fieldbridge::payload;
use fieldbridge::topics::Topics;
use nix::sys::signal::Signal;
use serde_json::{Value as Json, json};

/// The gateway around `EVERY_COMPONENT`, in `mode`.
const GATEWAY: &str = r#"
[gateway]
id = "gw"
base_topic = "home"
[homeassistant]
mode = "MODE"
[buses.plc]
kind = "modbus-tcp"
address = "127.0.0.1:502"
[buses.usb]
kind = "serial"
port = "/dev/ttyACM0"
"#;

fn edge(mode: &str) -> Config {
    let text = GATEWAY.replace("MODE", mode) + EVERY_COMPONENT;
    fieldbridge::config::parse(&text, Path::new("edge.toml")).unwrap()
}

/// The device states we publish, by device, with what Home Assistant must show for each point
/// (Python's `str` of the value, `ON`/`OFF` for bools).
fn states() -> BTreeMap<&'static str, Vec<(&'static str, Value, &'static str)>> {
    BTreeMap::from([
        (
            "meter",
            vec![
                ("3phase", Value::Int(230), "230"),
                ("l1-power", Value::Float(123.4), "123.4"),
                ("values", Value::Int(7), "7"),
                ("items", Value::Int(8), "8"),
                ("keys", Value::Int(9), "9"),
                ("get", Value::Int(10), "10"),
                ("energy", Value::Float(1234.56), "1234.56"),
                ("phase", Value::Text("run".into()), "run"),
                ("serial", Value::Text("AB12".into()), "AB12"),
                ("alarm", Value::Bool(true), "ON"),
                ("update", Value::Bool(false), "OFF"),
                ("setpoint", Value::Float(50.0), "50.0"),
                ("level", Value::Int(250), "250"),
                ("pop", Value::Int(-5), "-5"),
                ("copy", Value::Bool(false), "OFF"),
                ("state", Value::Text("on".into()), "on"),
                ("program", Value::Text("say \"hi\"".into()), "say \"hi\""),
                ("broken", Value::Bool(true), "ON"),
            ],
        ),
        ("dead", vec![("temp", Value::Int(20), "20")]),
        (
            "weather",
            vec![
                ("temperature", Value::Float(21.5), "21.5"),
                ("humidity", Value::Int(40), "40"),
            ],
        ),
    ])
}

fn state_payload(values: &[(&str, Value, &str)], without: Option<&str>) -> String {
    payload::state(
        values
            .iter()
            .filter(|(p, _, _)| Some(*p) != without)
            .map(|(p, v, _)| (*p, v)),
        std::time::SystemTime::now(),
    )
}

/// Every entity config in a discovery message (device mode: the `cmps` entries, with the shared
/// availability; entity mode: the message itself).
fn entities(m: &Message) -> Vec<Json> {
    match m.payload.get("cmps") {
        Some(Json::Object(c)) => c
            .values()
            .map(|e| {
                let mut e = e.clone();
                for k in ["availability", "availability_mode"] {
                    if let (Some(v), None) = (m.payload.get(k), e.get(k)) {
                        e[k] = v.clone();
                    }
                }
                e
            })
            .collect(),
        _ => vec![m.payload.clone()],
    }
}

/// `fieldbridge:gw:{device}:{point}` → (device, point); `…:action:{a}` → (device, a).
fn owner_of(unique_id: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = unique_id.split(':').collect();
    match parts.as_slice() {
        ["fieldbridge", "gw", dev, point] if !dev.is_empty() => {
            Some((dev.to_string(), point.to_string()))
        }
        ["fieldbridge", "gw", dev, "action", a] => Some((dev.to_string(), a.to_string())),
        _ => None,
    }
}

/// Must-show 4: the templates of both modes, rendered the way Home Assistant renders them.
#[test]
fn every_template_we_publish_renders_in_home_assistants_engine_for_every_point_name() {
    let Some(venv) = home_assistant::venv("template rendering") else {
        return;
    };
    // The engine really is Home Assistant's: an attribute wins over a key, as minijinja's does
    // not.
    let probe = home_assistant::render(
        &venv,
        &[Render::State {
            template: "{{ value_json.items }}".into(),
            payload: r#"{"items": 1}"#.into(),
        }],
    );
    assert!(
        probe[0]
            .output
            .as_deref()
            .is_some_and(|o| o.starts_with("<built-in method items")),
        "{probe:?}"
    );

    let states = states();
    for mode in ["device", "entity"] {
        let config = edge(mode);
        let topics = Topics::new(&config);
        // What each rendering must give, in one batch for one Python process.
        let mut jobs: Vec<(String, Render, Option<String>)> = Vec::new();
        let mut commands: Vec<(String, String, String, Json)> = Vec::new();
        let mut checked = 0;
        let messages = discovery::all(&config, &topics);
        let payloads: Vec<(String, String, String)> = messages
            .iter()
            .flat_map(entities)
            .filter_map(|e| {
                let (dev, point) = owner_of(e["unique_id"].as_str()?)?;
                Some((dev, point, e.to_string()))
            })
            .collect();
        for (dev, point, e) in &payloads {
            let e: Json = serde_json::from_str(e).unwrap();
            let label = format!("{mode} {dev}.{point} ({})", e["name"]);
            let values = &states[dev.as_str()];
            if let Some(t) = e.get("value_template").and_then(Json::as_str) {
                let (_, _, shown) = values
                    .iter()
                    .find(|(p, _, _)| p == point)
                    .unwrap_or_else(|| panic!("{label}: no value for it"));
                let t = t.to_string();
                for (payload, want, what) in [
                    (state_payload(values, None), shown.to_string(), "its value"),
                    (
                        state_payload(values, Some(point)),
                        "None".into(),
                        "None when absent",
                    ),
                    (String::new(), "None".into(), "None for an empty payload"),
                ] {
                    jobs.push((
                        format!("{label}: {what}"),
                        Render::State {
                            template: t.clone(),
                            payload,
                        },
                        Some(want),
                    ));
                }
            }
            for a in e["availability"].as_array().unwrap() {
                let t = a["value_template"].as_str().unwrap().to_string();
                for (online, want) in [(true, "online"), (false, "offline")] {
                    let p = payload::availability(dev, online);
                    jobs.push((
                        format!("{label}: availability"),
                        Render::State {
                            template: t.clone(),
                            payload: p,
                        },
                        Some(want.into()),
                    ));
                }
            }
            if let Some(t) = e.get("command_template").and_then(Json::as_str) {
                let samples: Vec<Json> = match e.get("options") {
                    Some(Json::Array(o)) => o.clone(),
                    // A number: its limits and a value between, on its step, as Home
                    // Assistant sends them (an integral float as an int).
                    _ if e.get("min").is_some() => {
                        let (lo, hi) = (e["min"].as_f64().unwrap(), e["max"].as_f64().unwrap());
                        let step = e["step"].as_f64().unwrap();
                        let mid = lo + (((hi - lo) / 2.0) / step).round() * step;
                        [lo, hi, mid]
                            .iter()
                            .map(|v| {
                                if v.fract() == 0.0 && v.abs() < 9e15 {
                                    json!(*v as i64)
                                } else {
                                    json!(v)
                                }
                            })
                            .collect()
                    }
                    _ => vec![json!("1"), json!("on \"now\"")],
                };
                for v in samples {
                    commands.push((label.clone(), dev.clone(), t.to_string(), v));
                }
            }
            // Switches and buttons send these as they are.
            for key in ["payload_on", "payload_off", "payload_press"] {
                if e.get("command_topic").is_none() {
                    continue;
                }
                if let Some(p) = e.get(key).and_then(Json::as_str) {
                    let d = &config.devices[dev.as_str()];
                    command::parse(d, p.as_bytes())
                        .unwrap_or_else(|r| panic!("{label}: {key} {p}: {}", r.message));
                    checked += 1;
                }
            }
        }
        let first_command = jobs.len();
        for (label, _, t, v) in &commands {
            jobs.push((
                label.clone(),
                Render::Command {
                    template: t.clone(),
                    value: v.clone(),
                },
                None,
            ));
        }
        let renders: Vec<Render> = jobs.iter().map(|(_, r, _)| r.clone()).collect();
        let results = home_assistant::render(&venv, &renders);
        for (i, ((label, _, want), got)) in jobs.iter().zip(&results).enumerate() {
            assert!(got.error.is_none(), "{label}: {:?}", got.error);
            assert!(
                got.warnings.is_empty(),
                "{label}: Home Assistant would log {:?}",
                got.warnings
            );
            if let Some(want) = want {
                assert_eq!(got.output.as_deref(), Some(want.as_str()), "{label}");
            }
            if i >= first_command {
                // What Home Assistant sends: valid JSON the gateway accepts, carrying the value.
                let (_, dev, _, v) = &commands[i - first_command];
                let out = got.output.as_deref().unwrap();
                let d = &config.devices[dev.as_str()];
                let cmd = command::parse(d, out.as_bytes())
                    .unwrap_or_else(|r| panic!("{label}: sent {out}: {}", r.message));
                let sent = match cmd.kind {
                    CommandKind::Set(values) => json!(values[0].1.to_json()),
                    CommandKind::Send { text, .. } => json!(text),
                    CommandKind::Refresh => json!("refresh"),
                };
                let expected = match v {
                    Json::String(s) if dev == "weather" => json!(format!("LED {s}")),
                    other => other.clone(),
                };
                assert!(
                    sent == expected || sent.as_f64().is_some_and(|f| Some(f) == expected.as_f64()),
                    "{label}: {v} became {out}, which sets {sent}"
                );
            }
            checked += 1;
        }
        assert!(checked > 150, "{mode}: only {checked} checks");
    }
}

/// A gateway on mosquitto, with one Modbus TCP device nobody answers for (its bus counts errors
/// and timeouts in health) and the given `[homeassistant]` lines.
fn live_config(port: u16, id: &str, ha: &str, devices: &[(&str, &[&str])]) -> String {
    let mut c = format!(
        "[gateway]\nid = \"{id}\"\nbase_topic = \"t\"\nhealth_interval = \"1s\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nreconnect_min = \"100ms\"\n[history]\npath = \"{{dir}}/h.db\"\n[homeassistant]\n{ha}\n[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"127.0.0.1:1\"\ntimeout = \"100ms\"\n"
    );
    for (dev, points) in devices {
        c += &format!("[devices.{dev}]\nbus = \"plc\"\nunit = 1\n");
        for (i, p) in points.iter().enumerate() {
            c += &format!("[devices.{dev}.points.{p}]\nregister = \"holding:{i}\"\n");
        }
    }
    c
}

/// The gateway's own entities read its real health payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_health_entities_render_against_the_health_it_publishes() {
    let Some(venv) = home_assistant::venv("health templates") else {
        return;
    };
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/gateway/hg/health");
    // A Modbus server with no units: every poll times out, and health counts it.
    let silent = common::modbus::FakeModbus::new().serve_tcp().await;
    let text = live_config(broker.port, "hg", "", &[("d", &["a"])])
        .replace("127.0.0.1:1", &silent.to_string());
    let gw = InProcess::start(&text).await;
    // The second report has utilisation over a whole interval and the bus's first timeouts.
    let health = sub
        .wait_for(
            "t/gateway/hg/health",
            |p| p.contains("\"timeouts\":") && !p.contains("\"timeouts\":0"),
            WAIT,
        )
        .unwrap_or_else(|| {
            panic!(
                "no health with timeouts: {:?}",
                sub.on("t/gateway/hg/health")
            )
        })
        .payload;
    gw.stop().await;
    let h: Json = serde_json::from_str(&health).unwrap();
    let config =
        fieldbridge::config::parse(&text.replace("{dir}", "/tmp"), Path::new("c.toml")).unwrap();
    let topics = Topics::new(&config);
    let gateway = discovery::all(&config, &topics)
        .into_iter()
        .find(|m| m.topic == "homeassistant/device/hg/config")
        .unwrap();
    let mut jobs = Vec::new();
    let mut wants = Vec::new();
    for (key, e) in gateway.payload["cmps"].as_object().unwrap() {
        let t = e["value_template"].as_str().unwrap().to_string();
        let want = match key.as_str() {
            "connected-binary_sensor" => {
                jobs.push(Render::State {
                    template: t,
                    payload: payload::gateway_status("hg", true, "test-host"),
                });
                wants.push((key.clone(), "online".to_string()));
                continue;
            }
            "reconnects-sensor" => h["mqtt"]["reconnects"].to_string(),
            "dropped-sensor" => h["mqtt"]["dropped"].to_string(),
            "history_pending-sensor" => h["history"]["pending"].to_string(),
            "bus_plc_errors-sensor" => h["buses"]["plc"]["errors"].to_string(),
            "bus_plc_timeouts-sensor" => h["buses"]["plc"]["timeouts"].to_string(),
            "bus_plc_utilisation-sensor" => {
                format!(
                    "{:?}",
                    (h["buses"]["plc"]["utilisation"].as_f64().unwrap() * 100.0 * 10.0).round()
                        / 10.0
                )
            }
            other => panic!("unexpected gateway entity {other}"),
        };
        jobs.push(Render::State {
            template: t.clone(),
            payload: health.clone(),
        });
        wants.push((key.clone(), want));
        jobs.push(Render::State {
            template: t,
            payload: String::new(),
        });
        wants.push((format!("{key} on an empty payload"), "None".into()));
    }
    let got = home_assistant::render(&venv, &jobs);
    for ((what, want), r) in wants.iter().zip(&got) {
        assert!(r.error.is_none() && r.warnings.is_empty(), "{what}: {r:?}");
        assert_eq!(r.output.as_deref(), Some(want.as_str()), "{what}");
    }
    assert!(
        h["buses"]["plc"]["timeouts"].as_u64().unwrap() > 0,
        "{health}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_is_republished_when_home_assistant_comes_online_and_removed_for_points_that_left()
 {
    let broker = Mosquitto::start();
    let config = "homeassistant/device/hagw_d/config";
    let gw = InProcess::start(&live_config(broker.port, "hagw", "", &[("d", &["a", "b"])])).await;
    assert!(
        wait_retained(
            broker.port,
            config,
            |p| p.contains("fieldbridge:hagw:d:b"),
            WAIT
        )
        .is_some()
    );
    // Home Assistant restarts: its birth message brings every config again.
    let sub = Subscriber::connect(broker.port, "homeassistant/device/#");
    sub.clear();
    publish(broker.port, "homeassistant/status", "online", false);
    assert!(
        sub.wait_for(config, |p| p.contains("fieldbridge:hagw:d:a"), WAIT)
            .is_some(),
        "not re-published"
    );
    gw.stop().await;

    // Point b leaves; device e is new; in entity mode a config of its own for each entity.
    let gw = InProcess::start(&live_config(
        broker.port,
        "hagw",
        "mode = \"entity\"",
        &[("d", &["a"]), ("e", &["x"])],
    ))
    .await;
    let done = |ours: &BTreeMap<String, Json>| {
        !ours.contains_key(config)
            && ours.contains_key("homeassistant/sensor/hagw_d/a/config")
            && ours.contains_key("homeassistant/sensor/hagw_e/x/config")
            && !ours.keys().any(|t| t.ends_with("/b/config"))
    };
    common::until(
        WAIT,
        || done(&ours_on_broker(broker.port, "hagw")),
        || format!("{:?}", ours_on_broker(broker.port, "hagw").keys()),
    )
    .await;
    gw.stop().await;
}

/// Two gateways whose ids share a prefix on one broker: each keeps its configs through the
/// other's restarts (the node `garage_2_door` starts with `garage_`; ownership is read from the
/// payload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_removes_only_the_configs_it_published_itself() {
    let broker = Mosquitto::start();
    let garage_2 = live_config(broker.port, "garage_2", "", &[("door", &["open"])]);
    let garage = live_config(broker.port, "garage", "", &[("door", &["open"])]);
    let g2 = InProcess::start(&garage_2).await;
    let theirs = "homeassistant/device/garage_2_door/config";
    let before = wait_retained(
        broker.port,
        theirs,
        |p| p.contains("fieldbridge:garage_2"),
        WAIT,
    )
    .unwrap();
    let sub = Subscriber::connect(broker.port, "homeassistant/#");
    // Someone else's config, under a node that starts like ours too.
    publish(
        broker.port,
        "homeassistant/sensor/garage_x/t/config",
        r#"{"name":"other","unique_id":"x","state_topic":"x","device":{"identifiers":["other"]}}"#,
        true,
    );
    for _ in 0..3 {
        let g = InProcess::start(&garage).await;
        assert!(
            wait_retained(
                broker.port,
                "homeassistant/device/garage_door/config",
                |p| p.contains("fieldbridge:garage:door"),
                WAIT
            )
            .is_some()
        );
        g.stop().await;
    }
    let removed: Vec<String> = sub
        .seen()
        .into_iter()
        .filter(|m| m.payload.is_empty())
        .map(|m| m.topic)
        .collect();
    assert!(removed.is_empty(), "garage removed {removed:?}");
    assert_eq!(
        retained(broker.port, theirs).as_deref(),
        Some(before.as_str())
    );
    assert!(retained(broker.port, "homeassistant/sensor/garage_x/t/config").is_some());
    g2.stop().await;
}

/// The scan's subscriptions are QoS 0 and gone after it: while the gateway is away, its
/// persistent session queues none of the other integrations' configs (which would eat
/// mosquitto's `max_queued_messages`, the budget of queued commands).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_up_scan_leaves_nothing_queued_in_the_persistent_session() {
    let broker = Mosquitto::start();
    let text = live_config(broker.port, "scan", "", &[("d", &["a"])]);
    let gw = InProcess::start(&text).await;
    assert!(
        wait_retained(
            broker.port,
            "homeassistant/device/scan_d/config",
            |_| true,
            WAIT
        )
        .is_some()
    );
    // The scan is over: nothing is published before it ends, and its unsubscriptions go out
    // ahead of what it publishes, so the broker dropped them before it took the config above.
    gw.stop().await;
    for i in 0..20 {
        publish(
            broker.port,
            &format!("homeassistant/sensor/other_{i}/x/config"),
            "{\"name\":\"x\"}",
            true,
        );
        publish(
            broker.port,
            &format!("homeassistant/device/other_{i}/config"),
            "{}",
            false,
        );
    }
    // Resume the gateway's session as the gateway would (same client id, no clean start) and
    // see what the broker queued for it.
    let out = std::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args([
            "-i",
            "fieldbridge-scan",
            "-c",
            "-q",
            "1",
            "-t",
            "unrelated/topic",
            "-v",
            "-W",
            "2",
        ])
        .output()
        .unwrap();
    let queued = String::from_utf8_lossy(&out.stdout);
    assert!(
        !queued.contains("homeassistant/"),
        "queued for the gateway while it was away:\n{queued}"
    );
}

/// SIGHUP: discovery turned off removes every config; a moved device leaves no retained state
/// or availability at its old topics; a new prefix gets its `status` subscribed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_remove_configs_and_old_topics_and_follow_a_new_prefix() {
    let mut broker = Mosquitto::start();
    let fake = common::modbus::FakeModbus::new();
    fake.set_holding(1, 0, &[5]);
    let plc = fake.serve_tcp().await;
    let dir = tempfile::tempdir().unwrap();
    let port = broker.port;
    let text = |ha: &str, location: &str| {
        format!(
            "[gateway]\nid = \"rl\"\nbase_topic = \"t\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n[history]\npath = \"{}/h.db\"\n[homeassistant]\n{ha}\n[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"{plc}\"\n[devices.d]\nbus = \"plc\"\nunit = 1\npoll = \"200ms\"\nlocation = \"{location}\"\n[devices.d.points.v]\nregister = \"holding:0\"\n",
            port,
            dir.path().display()
        )
    };
    let mut gw = GatewayProcess::spawn(&text("", "lab"), &[]);
    assert!(
        wait_retained(
            broker.port,
            "t/lab/device/d/state",
            |p| p.contains("\"v\":5"),
            WAIT
        )
        .is_some(),
        "{}",
        gw.log()
    );
    assert!(
        wait_retained(
            broker.port,
            "homeassistant/device/rl_d/config",
            |_| true,
            WAIT
        )
        .is_some()
    );

    // The device moves to another location: its old retained topics are removed.
    std::fs::write(&gw.config_path, text("", "garage")).unwrap();
    gw.signal(Signal::SIGHUP);
    assert!(gw.wait_log("SIGHUP: config applied", WAIT), "{}", gw.log());
    assert!(
        wait_retained(
            broker.port,
            "t/garage/device/d/state",
            |p| p.contains("\"v\":5"),
            WAIT
        )
        .is_some()
    );
    for old in ["t/lab/device/d/state", "t/lab/device/d/availability"] {
        common::until(
            WAIT,
            || retained(broker.port, old).is_none(),
            || format!("{old} still retained"),
        )
        .await;
    }
    assert!(
        wait_retained(
            broker.port,
            "homeassistant/device/rl_d/config",
            |p| p.contains("t/garage/device/d/state"),
            WAIT
        )
        .is_some()
    );

    // Nor does the link's re-publish cache keep them: a broker restarted without its retained
    // messages gets the new topics back, not the old.
    broker.restart();
    assert!(
        wait_retained(
            broker.port,
            "t/garage/device/d/availability",
            |p| p.contains("online"),
            WAIT
        )
        .is_some(),
        "{}",
        gw.log()
    );
    assert!(
        wait_retained(
            broker.port,
            "homeassistant/device/rl_d/config",
            |_| true,
            WAIT
        )
        .is_some()
    );
    for old in ["t/lab/device/d/state", "t/lab/device/d/availability"] {
        assert_eq!(
            retained(broker.port, old),
            None,
            "{old} re-published from the cache"
        );
    }

    // A new prefix: configs move there, and its status re-publishes them.
    std::fs::write(&gw.config_path, text("prefix = \"ha2\"", "garage")).unwrap();
    gw.signal(Signal::SIGHUP);
    assert!(
        wait_retained(broker.port, "ha2/device/rl_d/config", |_| true, WAIT).is_some(),
        "{}",
        gw.log()
    );
    common::until(
        WAIT,
        || ours_on_broker(broker.port, "rl").is_empty(),
        || "configs left under the old prefix".into(),
    )
    .await;
    let sub = Subscriber::connect(broker.port, "ha2/#");
    sub.clear();
    publish(broker.port, "ha2/status", "online", false);
    assert!(
        sub.wait_for("ha2/device/rl_d/config", |p| !p.is_empty(), WAIT)
            .is_some(),
        "{}",
        gw.log()
    );

    // Discovery off: every config of ours goes.
    std::fs::write(
        &gw.config_path,
        text("prefix = \"ha2\"\ndiscovery = false", "garage"),
    )
    .unwrap();
    gw.signal(Signal::SIGHUP);
    common::until(
        WAIT,
        || {
            retained(broker.port, "ha2/device/rl_d/config").is_none()
                && retained(broker.port, "ha2/device/rl/config").is_none()
        },
        || format!("configs left with discovery off\n{}", gw.log()),
    )
    .await;
    assert!(gw.is_running());
}

/// Switching modes publishes Home Assistant's migration in order, and leaves only the new
/// mode's configs (tests/ha_live.rs shows Home Assistant keeping the entity ids).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_modes_migrates_in_order_and_leaves_no_orphan_configs() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "homeassistant/#");
    let devices: &[(&str, &[&str])] = &[("d", &["a", "b"])];
    let entity = live_config(broker.port, "mg", "mode = \"entity\"", devices);
    let device = live_config(broker.port, "mg", "", devices);
    for (round, (text, mode)) in [
        (&entity, "entity"),
        (&device, "device"),
        (&entity, "entity"),
    ]
    .into_iter()
    .enumerate()
    {
        sub.clear();
        let gw = InProcess::start(text).await;
        let want = discovery_topics(text);
        let topics = || -> Vec<String> { ours_on_broker(broker.port, "mg").into_keys().collect() };
        common::until(
            WAIT,
            || topics() == want,
            || format!("{mode}: on the broker {:?}, want {want:?}", topics()),
        )
        .await;
        let kind = |p: &str| {
            if p.is_empty() {
                "remove"
            } else if p.contains("migrate_discovery") {
                "migrate"
            } else if p.contains("mode-switch") {
                "placeholder"
            } else {
                "config"
            }
        };
        let order = |topic: &str| -> Vec<&'static str> {
            sub.seen()
                .iter()
                .filter(|m| m.topic == topic)
                .map(|m| kind(&m.payload))
                .collect()
        };
        let entity_a = "homeassistant/sensor/mg_d/a/config";
        let device_d = "homeassistant/device/mg_d/config";
        match round {
            0 => assert_eq!(order(entity_a), ["config"]),
            1 => {
                // Home Assistant's migration: migrate the entity configs, publish the device
                // config, remove the entity configs.
                assert_eq!(order(entity_a), ["migrate", "remove"]);
                assert_eq!(order(device_d), ["config"]);
                let seen = sub.seen();
                let at = |t: &str, k: &str| {
                    seen.iter()
                        .position(|m| m.topic == t && kind(&m.payload) == k)
                        .unwrap()
                };
                assert!(at(entity_a, "migrate") < at(device_d, "config"));
                assert!(at(device_d, "config") < at(entity_a, "remove"));
            }
            _ => {
                // The rollback: migrate, placeholder and removal of the device config, all
                // before the entity configs.
                assert_eq!(order(device_d), ["migrate", "placeholder", "remove"]);
                assert_eq!(order(entity_a), ["config"]);
                let seen = sub.seen();
                let removed = seen
                    .iter()
                    .position(|m| m.topic == device_d && m.payload.is_empty())
                    .unwrap();
                let published = seen.iter().position(|m| m.topic == entity_a).unwrap();
                assert!(removed < published);
            }
        }
        gw.stop().await;
    }
}
