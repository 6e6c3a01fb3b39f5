#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! A real Home Assistant (2025.4.4 from PyPI, its own venv), set up as a new user would: the
//! MQTT integration through its config-flow API, against the test's own mosquitto, all in a
//! private network namespace (Home Assistant opens mDNS sockets). One Home Assistant serves
//! three scenarios, one after the other:
//!
//! 1. A config with every component and the point names that trip Jinja: every entity appears
//!    under its device (via the gateway's), shows the simulator's value; Home Assistant's
//!    services drive every writable entity and button; a failing point is unknown, a dead
//!    device unavailable.
//! 2. Gateways `garage` and `garage_2` on one broker, `garage` restarted three times, the MQTT
//!    entry reloaded: both keep all their entities.
//! 3. Switching `mode` entity → device (SIGHUP) and back (restart) keeps the entity ids and
//!    leaves no orphan config on the broker.
//!
//! Throughout, Home Assistant's log must hold no warning or error about our entities, and the
//! device class tables we check configs against must be this Home Assistant's.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::gateway::{GatewayProcess, InProcess};
use common::home_assistant::{
    self, EVERY_COMPONENT, HomeAssistant, discovery_topics, ours_on_broker,
};
use common::modbus::FakeModbus;
use common::mosquitto::{Mosquitto, Subscriber};
use common::pty::SocatPair;
use common::sunspec;
use fieldbridge::ha::discovery;
use fieldbridge::topics::Topics;
use nix::sys::signal::Signal;
use serde_json::{Value as Json, json};
use tokio::runtime::Runtime;

/// Set inside the network namespace.
const NETNS_ENV: &str = "FIELDBRIDGE_HA_NETNS";
const NAME: &str =
    "a_real_home_assistant_shows_and_drives_every_entity_through_restarts_and_mode_switches";
/// Home Assistant's own start and reloads take longer than one event.
const HA_WAIT: Duration = Duration::from_secs(60);

#[test]
fn a_real_home_assistant_shows_and_drives_every_entity_through_restarts_and_mode_switches() {
    let Some(venv) = home_assistant::venv("the real Home Assistant test") else {
        return;
    };
    if std::env::var_os(NETNS_ENV).is_none() {
        // Run this very test again in a network namespace of its own, with only a loopback.
        let started = Instant::now();
        let out = Command::new("unshare")
            .args([
                "--net",
                "--",
                "sh",
                "-c",
                "ip link set lo up && exec \"$0\" \"$@\"",
            ])
            .arg(std::env::current_exe().unwrap())
            .args([NAME, "--exact", "--nocapture", "--test-threads", "1"])
            .env(NETNS_ENV, "1")
            .output()
            .expect("run unshare (util-linux)");
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("1 passed"),
            "in its network namespace (unshare --net needs root) the test said:\n{text}"
        );
        eprintln!(
            "real Home Assistant test passed in {:.0} s:\n{}",
            started.elapsed().as_secs_f64(),
            text.lines()
                .filter(|l| l.starts_with("ha-live: ") || l.contains("home assistant"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let broker = Mosquitto::start();
    let ha = HomeAssistant::start(&venv, broker.port);
    tables_are_this_home_assistants(&venv);
    every_component_shows_its_value_and_takes_commands(&rt, &ha, &broker);
    note("scenario 1 done");
    two_gateways_keep_their_entities_through_restarts(&rt, &ha, &broker);
    note("scenario 2 done");
    switching_modes_keeps_entity_ids_and_leaves_no_orphans(&ha, &broker);
    note("scenario 3 done");
    let (ours, other) = ha.problems(&["hagw", "garage", "modes", "meter", "weather", "sensor.pv_"]);
    for line in &other {
        note(&format!("unrelated log line: {line}"));
    }
    assert!(
        ours.is_empty(),
        "Home Assistant logged about our entities:\n{}",
        ours.join("\n")
    );
}

fn note(s: &str) {
    eprintln!("ha-live: {s}");
}

/// src/ha/classes.rs is what scripts/ha-classes.py makes from this Home Assistant.
fn tables_are_this_home_assistants(venv: &std::path::Path) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(venv.join("bin/python"))
        .arg(root.join("scripts/ha-classes.py"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed = std::fs::read_to_string(root.join("src/ha/classes.rs")).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout) == committed,
        "src/ha/classes.rs is not what scripts/ha-classes.py makes from Home Assistant {}; regenerate it",
        home_assistant::VERSION
    );
}

/// Waits for `entity`'s state to satisfy `pred`, naming what it saw on failure.
fn expect(ha: &HomeAssistant, entity: &str, what: &str, pred: impl Fn(&str) -> bool) {
    if let Err(last) = ha.wait_state(entity, pred, HA_WAIT) {
        panic!("{entity}: expected {what}, Home Assistant shows {last:?}");
    }
}

fn same_number(want: f64) -> impl Fn(&str) -> bool {
    move |s| s.parse::<f64>().is_ok_and(|v| (v - want).abs() < 1e-6)
}

/// The entity ids our discovery suggests (`default_entity_id`), by unique id.
fn entity_ids(config_text: &str) -> BTreeMap<String, String> {
    let text = config_text.replace("{dir}", "/tmp");
    let config = fieldbridge::config::parse(&text, std::path::Path::new("c.toml")).unwrap();
    let mut out = BTreeMap::new();
    for m in discovery::all(&config, &Topics::new(&config)) {
        let entities: Vec<Json> = match m.payload.get("cmps") {
            Some(Json::Object(c)) => c.values().cloned().collect(),
            _ => vec![m.payload.clone()],
        };
        for e in entities {
            out.insert(
                e["unique_id"].as_str().unwrap().to_string(),
                e["default_entity_id"].as_str().unwrap().to_string(),
            );
        }
    }
    out
}

fn gateway_config(mqtt: u16, id: &str, ha: &str, buses: &str, devices: &str) -> String {
    format!(
        "[gateway]\nid = \"{id}\"\nbase_topic = \"t\"\nhealth_interval = \"2s\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{mqtt}\"\nreconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n[history]\npath = \"{{dir}}/h.db\"\n[homeassistant]\n{ha}\n{buses}\n{devices}"
    )
}

/// The weather station at the other end of a serial cable: a JSON line every half second,
/// `OK` to `LED` commands; what it received is kept.
fn weather_station(rt: &Runtime, cable: &SocatPair) -> Arc<Mutex<Vec<String>>> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let received = Arc::new(Mutex::new(Vec::new()));
    let seen = received.clone();
    let port = rt.block_on(async { cable.device() });
    rt.spawn(async move {
        let (rd, mut wr) = tokio::io::split(port);
        let mut lines = BufReader::new(rd).lines();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if wr.write_all(b"{\"temp\": 21.5, \"hum\": 40}\n").await.is_err() {
                        return;
                    }
                }
                line = lines.next_line() => match line {
                    Ok(Some(l)) => {
                        if l.starts_with("LED") && wr.write_all(b"OK\n").await.is_err() {
                            return;
                        }
                        seen.lock().unwrap().push(l);
                    }
                    _ => return,
                },
            }
        }
    });
    received
}

fn every_component_shows_its_value_and_takes_commands(
    rt: &Runtime,
    ha: &HomeAssistant,
    broker: &Mosquitto,
) {
    let fake = FakeModbus::new();
    fake.set_input(1, 0, &[230, 1234, 7, 8, 9, 10, 0x0001, 0xE240, 1]);
    fake.set_holding(1, 10, &[100, 250, 0xFFFB, 1]);
    fake.set_holding(1, 30, &[0x4142, 0x3132]);
    fake.unit(1, |u| {
        u.coils.insert(1, true);
        u.discretes.insert(0, true);
        // Reading coil 40 is refused: "illegal data address".
        u.missing.insert(40);
    });
    // A SunSpec inverter with its MPPT inputs, a meter and a battery: integer models with
    // scale factors, and "not implemented" values.
    sunspec::load(
        &fake,
        9,
        &[
            sunspec::common_model(66),
            sunspec::inverter_103(),
            sunspec::mppt_160(),
            sunspec::meter_203(),
            sunspec::battery_802(),
        ],
    );
    let plc = rt.block_on(fake.serve_tcp());
    let dir = tempfile::tempdir().unwrap();
    let cable = SocatPair::new(dir.path());
    let received = weather_station(rt, &cable);
    let buses = format!(
        "[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"{plc}\"\ntimeout = \"300ms\"\nretries = 0\n[buses.usb]\nkind = \"serial\"\nport = \"{}\"\nformat = \"json\"\n",
        cable.path_str()
    );
    let devices = format!(
        "{EVERY_COMPONENT}\n[devices.pv]\nbus = \"plc\"\nunit = 9\nprofile = \"sunspec\"\n"
    );
    let text = gateway_config(broker.port, "hagw", "", &buses, &devices);
    let results = Subscriber::connect(broker.port, "t/+/device/+/command/result");
    let gw = rt.block_on(InProcess::start(&text));

    let ids = entity_ids(&text);
    assert!(ids.len() >= 30, "{ids:?}");
    let gateway_device = "binary_sensor.fieldbridge_hagw_connected";
    expect(ha, gateway_device, "on", |s| s == "on");
    let via = ha.template(&format!("{{{{ device_id('{gateway_device}') }}}}"));
    for (uid, eid) in &ids {
        expect(ha, eid, "to exist", |_| true);
        // Under the right device, which hangs off the gateway's.
        let device = uid.rsplit_once(':').unwrap().0;
        let device = device.strip_suffix(":action").unwrap_or(device);
        let got = ha.template(&format!(
            "{{{{ device_attr(device_id('{eid}'), 'identifiers') | map('last') | join(',') }}}}|{{{{ device_attr(device_id('{eid}'), 'via_device_id') }}}}"
        ));
        let (identifiers, via_device) = got.split_once('|').unwrap();
        if device.ends_with(':') {
            // The gateway's own entities.
            assert_eq!(identifiers, "fieldbridge:hagw", "{eid}");
        } else {
            assert_eq!(identifiers, device, "{eid}");
            assert_eq!(via_device, via, "{eid} is not via the gateway's device");
        }
    }
    note(&format!("{} entities under their devices", ids.len()));

    // The simulator's values, as Home Assistant shows them.
    for (eid, want) in [
        ("sensor.meter_3phase", 230.0),
        ("sensor.meter_l1_power", 123.4),
        ("sensor.meter_values", 7.0),
        ("sensor.meter_items", 8.0),
        ("sensor.meter_keys", 9.0),
        ("sensor.meter_get", 10.0),
        ("sensor.meter_energy", 1234.56),
        ("number.meter_setpoint", 50.0),
        ("number.meter_level", 250.0),
        ("number.meter_pop", -5.0),
        ("sensor.weather_temperature", 21.5),
        ("sensor.weather_humidity", 40.0),
    ] {
        expect(ha, eid, &want.to_string(), same_number(want));
    }
    for (eid, want) in [
        ("sensor.meter_phase", "run"),
        ("sensor.meter_serial", "AB12"),
        ("binary_sensor.meter_alarm", "on"),
        ("binary_sensor.meter_update", "off"),
        ("switch.meter_copy", "off"),
        ("switch.meter_state", "on"),
        ("select.meter_program", "say \"hi\""),
        // A failing point is unknown, never an invented off.
        ("binary_sensor.meter_broken", "unknown"),
        // A dead device is unavailable.
        ("sensor.dead_temp", "unavailable"),
        ("button.dead_refresh", "unavailable"),
    ] {
        expect(ha, eid, want, |s| s == want);
    }
    let energy = ha.state("sensor.meter_energy").unwrap();
    assert_eq!(
        energy["attributes"]["state_class"], "total_increasing",
        "{energy}"
    );
    let level = ha.state("number.meter_level").unwrap();
    assert_eq!(level["attributes"]["max"], json!(65535.0), "{level}");
    note("values shown");

    // The SunSpec device: its points come from its model chain, scaled by the scale factors.
    for (eid, want) in [
        ("sensor.pv_power", 8450.0),
        ("sensor.pv_voltage_a", 230.1),
        ("sensor.pv_energy", 1_234_567_890.0),
        ("sensor.pv_pv2_power", 3003.0),
        ("sensor.pv_pv1_energy", 1_500_000.0),
        ("sensor.pv_power_2", -1234.0),
        ("sensor.pv_energy_import_2", 1_234_567.0),
        ("sensor.pv_battery_soc", 76.5),
        ("sensor.pv_battery_power", -640.0),
        ("sensor.pv_cell_voltage_max", 3.301),
    ] {
        expect(ha, eid, &want.to_string(), same_number(want));
    }
    for (eid, want) in [
        ("sensor.pv_state", "mppt"),
        ("sensor.pv_pv1_state", "mppt"),
        ("sensor.pv_charge_status", "discharging"),
        ("sensor.pv_battery_state", "connected"),
        // "Not implemented" in the device: unknown, never -32768.
        ("sensor.pv_current_c", "unknown"),
        ("sensor.pv_cabinet_temperature", "unknown"),
    ] {
        expect(ha, eid, want, |s| s == want);
    }
    for eid in [
        "sensor.pv_energy",
        "sensor.pv_pv1_energy",
        "sensor.pv_energy_export_2",
    ] {
        let e = ha.state(eid).unwrap();
        assert_eq!(e["attributes"]["state_class"], "total_increasing", "{e}");
        assert_eq!(e["attributes"]["device_class"], "energy", "{e}");
    }
    let maker = ha.template("{{ device_attr(device_id('sensor.pv_power'), 'manufacturer') }}");
    assert_eq!(maker.trim(), "Fronius");
    note("SunSpec device shown");

    // Every writable entity and button, driven through Home Assistant's services.
    let set = |eid: &str, value: Json| {
        let (domain, _) = eid.split_once('.').unwrap();
        let service = if domain == "number" || domain == "text" {
            "set_value"
        } else {
            "select_option"
        };
        let key = if domain == "select" {
            "option"
        } else {
            "value"
        };
        ha.call(domain, service, json!({"entity_id": eid, key: value}));
    };
    let holding = |a: u16| fake.unit(1, |u| u.holdings.get(&a).copied());
    let coil = |a: u16| fake.unit(1, |u| u.coils.get(&a).copied());
    let until = |what: &str, ok: &dyn Fn() -> bool| {
        common::until_blocking(HA_WAIT, ok, || what.to_string());
    };
    set("number.meter_setpoint", json!(42.5));
    until("setpoint written", &|| holding(10) == Some(85));
    expect(ha, "number.meter_setpoint", "42.5", same_number(42.5));
    set("number.meter_level", json!(300));
    until("level written", &|| holding(11) == Some(300));
    expect(ha, "number.meter_level", "300", same_number(300.0));
    set("number.meter_pop", json!(-7));
    until("pop written", &|| holding(12) == Some(0xFFF9));
    expect(ha, "number.meter_pop", "-7", same_number(-7.0));
    ha.call(
        "switch",
        "turn_on",
        json!({"entity_id": "switch.meter_copy"}),
    );
    until("copy switched on", &|| coil(0) == Some(true));
    expect(ha, "switch.meter_copy", "on", |s| s == "on");
    ha.call(
        "switch",
        "turn_off",
        json!({"entity_id": "switch.meter_state"}),
    );
    until("state switched off", &|| coil(1) == Some(false));
    expect(ha, "switch.meter_state", "off", |s| s == "off");
    set("select.meter_program", json!("it's"));
    until("program selected", &|| holding(13) == Some(2));
    expect(ha, "select.meter_program", "it's", |s| s == "it's");
    ha.call(
        "button",
        "press",
        json!({"entity_id": "button.meter_boost"}),
    );
    until("boost pressed", &|| holding(13) == Some(0));
    expect(ha, "select.meter_program", "eco", |s| s == "eco");
    set("text.weather_led", json!("1"));
    until("LED 1 sent", &|| {
        received.lock().unwrap().iter().any(|l| l == "LED 1")
    });
    ha.call(
        "button",
        "press",
        json!({"entity_id": "button.weather_beep"}),
    );
    until("BEEP sent", &|| {
        received.lock().unwrap().iter().any(|l| l == "BEEP")
    });
    // Refresh reads a Modbus device now; a serial device reports on its own and has none.
    ha.call(
        "button",
        "press",
        json!({"entity_id": "button.meter_refresh"}),
    );
    let ok = results.wait_for(
        "t/home/device/meter/command/result",
        |p| p.contains("\"action\":\"refresh\"") && p.contains("\"ok\":true"),
        HA_WAIT,
    );
    assert!(ok.is_some(), "no refresh result: {:?}", results.seen());
    assert!(ha.state("button.weather_refresh").is_none());
    let failed: Vec<String> = results
        .seen()
        .into_iter()
        .filter(|m| m.topic.ends_with("/result") && !m.payload.contains("\"ok\":true"))
        .map(|m| m.payload)
        .collect();
    assert!(
        failed.is_empty(),
        "commands from Home Assistant failed: {failed:?}"
    );
    note("every writable entity and button driven");
    rt.block_on(gw.stop());
}

fn door(mqtt: u16, id: &str, plc: &str, device: &str) -> String {
    gateway_config(
        mqtt,
        id,
        "",
        &format!("[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"{plc}\"\n"),
        &format!(
            "[devices.{device}]\nbus = \"plc\"\nunit = 1\npoll = \"500ms\"\n[devices.{device}.points.open]\nregister = \"discrete:0\"\n[devices.{device}.points.angle]\nregister = \"input:0\"\n"
        ),
    )
}

fn two_gateways_keep_their_entities_through_restarts(
    rt: &Runtime,
    ha: &HomeAssistant,
    broker: &Mosquitto,
) {
    let fake = FakeModbus::new();
    fake.set_input(1, 0, &[42]);
    fake.unit(1, |u| {
        u.discretes.insert(0, true);
    });
    let plc = rt.block_on(fake.serve_tcp()).to_string();
    let garage = door(broker.port, "garage", &plc, "door");
    let garage_2 = door(broker.port, "garage_2", &plc, "gate");
    let mut all = entity_ids(&garage);
    all.extend(entity_ids(&garage_2));
    let check = |when: &str| {
        for eid in all.values() {
            if let Err(last) = ha.wait_state(eid, |s| s != "unavailable", HA_WAIT) {
                panic!("{when}: {eid} shows {last:?}");
            }
        }
        expect(ha, "sensor.door_angle", "42", same_number(42.0));
        expect(ha, "sensor.gate_angle", "42", same_number(42.0));
    };
    let g2 = rt.block_on(InProcess::start(&garage_2));
    let mut g = rt.block_on(InProcess::start(&garage));
    check("both started");
    for round in 1..=3 {
        rt.block_on(g.stop());
        g = rt.block_on(InProcess::start(&garage));
        check(&format!("garage restarted {round}x"));
    }
    // Reloading the MQTT entry removes its entities and makes them anew from the retained
    // configs: each gets a new state (a new context). Checked once every one has it, not after
    // a pause in which the old states would still pass.
    let context = |eid: &str| ha.state(eid).map(|s| s["context"]["id"].clone());
    let before: Vec<(String, Option<Json>)> =
        all.values().map(|e| (e.clone(), context(e))).collect();
    ha.reload_mqtt();
    for (eid, old) in &before {
        common::until_blocking(
            HA_WAIT,
            || context(eid).is_some_and(|c| Some(c) != *old),
            || format!("{eid} was not made anew by the reload"),
        );
    }
    check("the MQTT entry reloaded");
    note(&format!(
        "{} entities of garage and garage_2 kept",
        all.len()
    ));
    rt.block_on(g.stop());
    rt.block_on(g2.stop());
}

fn switching_modes_keeps_entity_ids_and_leaves_no_orphans(ha: &HomeAssistant, broker: &Mosquitto) {
    let text = |mode: &str| {
        gateway_config(
            broker.port,
            "modes",
            &format!("mode = \"{mode}\""),
            "[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"127.0.0.1:1\"\n",
            "[devices.pump-room]\nbus = \"plc\"\nunit = 1\n[devices.pump-room.points.flow]\nregister = \"input:0\"\n[devices.pump-room.points.run]\nregister = \"coil:0\"\nwritable = true\n[devices.pump-room.actions.flush]\nset = { run = true }\n",
        )
    };
    let ids = entity_ids(&text("entity"));
    let settle = |mode: &str, gw: &GatewayProcess| -> BTreeMap<String, String> {
        let want = discovery_topics(&text(mode));
        let deadline = Instant::now() + HA_WAIT;
        loop {
            let on_broker: Vec<String> = ours_on_broker(broker.port, "modes").into_keys().collect();
            if on_broker == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{mode}: orphans or missing configs: {on_broker:?}, want {want:?}\n{}",
                gw.log()
            );
            // The poll interval while the configs settle on the broker.
            std::thread::sleep(Duration::from_millis(200));
        }
        // Home Assistant takes the configs up in its own time, and nothing on the broker says
        // when it has: a second copy of an entity (`_2`), which must not happen, is given 2 s
        // to show before the checks below.
        std::thread::sleep(Duration::from_secs(2));
        // The same entity ids, each on its device, and no second copy (`_2`) of any.
        let mut devices = BTreeMap::new();
        for eid in ids.values() {
            expect(ha, eid, "to exist", |_| true);
            devices.insert(
                eid.clone(),
                ha.template(&format!("{{{{ device_id('{eid}') }}}}")),
            );
        }
        let copies = ha.template(
            "{{ integration_entities('mqtt') | select('search', 'pump_room|fieldbridge_modes') | select('search', '_2$') | list }}",
        );
        assert_eq!(copies, "[]", "{mode}: duplicated entities");
        devices
    };
    let start = |mode: &str| {
        let dir = tempfile::tempdir().unwrap();
        let config = text(mode).replace("{dir}", &dir.path().display().to_string());
        GatewayProcess::spawn_in(dir, &config, &[])
    };
    let mut gw = start("entity");
    let first = settle("entity", &gw);
    // entity → device by SIGHUP.
    let history = gw.dir.path().display().to_string();
    std::fs::write(&gw.config_path, text("device").replace("{dir}", &history)).unwrap();
    gw.signal(Signal::SIGHUP);
    assert!(
        gw.wait_log("SIGHUP: config applied", HA_WAIT),
        "{}",
        gw.log()
    );
    let second = settle("device", &gw);
    assert_eq!(
        first, second,
        "entity → device moved entities between devices"
    );
    // device → entity by a restart.
    gw.signal(Signal::SIGTERM);
    assert!(gw.wait_exit(Duration::from_secs(5)).is_some());
    let gw = start("entity");
    let third = settle("entity", &gw);
    assert_eq!(
        first, third,
        "device → entity moved entities between devices"
    );
    note(&format!(
        "{} entity ids kept through entity → device → entity",
        ids.len()
    ));
}
