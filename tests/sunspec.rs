#![recursion_limit = "256"]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! `profile = "sunspec"` (README "SunSpec devices"): simulated SunSpec devices over Modbus TCP,
//! the real gateway process, a real mosquitto. Integer models with scale factors publish every
//! value scaled; "not implemented" values leave their points unknown; a 65-register common
//! model (Fronius) is walked like a 66-register one; the same device on float models keeps its
//! point names; broken chains and scale factors are logged and never published.

mod common;

use common::json_of;

use common::WAIT;

use std::collections::BTreeSet;

use common::gateway::GatewayProcess;
use common::modbus::FakeModbus;
use common::mosquitto::{Mosquitto, Subscriber};
use common::sunspec::{
    BASE, common_model, inverter_103, inverter_113, load, meter_203, meter_213, model,
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

fn config(port: u16, addr: std::net::SocketAddr, devices: &str) -> String {
    format!(
        r#"[gateway]
id = "sun"
base_topic = "t"
location = "lab"
[mqtt]
url = "mqtt://127.0.0.1:{port}"
reconnect_min = "100ms"
reconnect_max = "1s"
[history]
enabled = false
[buses.lan]
kind = "modbus-tcp"
address = "{addr}"
timeout = "1s"
{devices}"#
    )
}

fn state_keys(state: &Value) -> BTreeSet<String> {
    state
        .as_object()
        .map(|o| o.keys().filter(|k| *k != "timestamp").cloned().collect())
        .unwrap_or_default()
}

fn expect_values(device: &str, state: &Value, want: &Value) -> Vec<String> {
    let mut failures = Vec::new();
    for (k, w) in want.as_object().unwrap() {
        let got = &state[k.as_str()];
        let same = match (got.as_f64(), w.as_f64()) {
            (Some(g), Some(e)) => (g - e).abs() <= 1e-9 * e.abs().max(1.0),
            _ => got == w,
        };
        if !same {
            failures.push(format!("{device}.{k}: published {got}, expected {w}"));
        }
    }
    failures
}

/// The integer models' values, scaled: the inverter's points, then the meter's behind it
/// (which takes the suffix `_2`, as the inverter names `power` already).
fn integer_values() -> Value {
    json!({
        "current": 12.34, "current_a": 4.11, "current_b": 4.12,
        "voltage_ab": 400.1, "voltage_bc": 400.2, "voltage_ca": 400.3,
        "voltage_a": 230.1, "voltage_b": 230.2, "voltage_c": 230.3,
        "power": 8450, "frequency": 50.02, "apparent_power": 8500, "reactive_power": -300,
        "power_factor": 99.5, "energy": 1_234_567_890, "dc_current": 21.55, "dc_voltage": 412.0,
        "dc_power": 8877, "heat_sink_temperature": -5.5, "state": "mppt",
        "manufacturer": "Fronius", "model": "Symo 10.0-3-M", "version": "1.2.3",
        "serial_number": "28471234",
        "current_2": 10.5, "current_a_2": 3.5, "current_b_2": 3.51, "current_c_2": 3.49,
        "voltage_2": 230.5, "voltage_a_2": 230.1, "voltage_b_2": 230.2, "voltage_c_2": 230.3,
        "voltage_ab_2": 399.1, "voltage_bc_2": 399.2, "voltage_ca_2": 399.3,
        "frequency_2": 49.98, "power_2": -1234, "power_a_2": -400, "power_b_2": -417,
        "power_c_2": -417, "apparent_power_2": 1300,
        "energy_export_2": 5_000_000, "energy_import_2": 1_234_567,
    })
}

/// Points whose registers say "not implemented" (0x8000, 0xFFFF, NaN).
const NOT_IMPLEMENTED: &[&str] = &[
    "current_c",
    "cabinet_temperature",
    "transformer_temperature",
    "other_temperature",
    "vendor_state",
    "reactive_power_2",
];

/// The Home Assistant entry of one point in the device's discovery config.
fn discovery_entry(sub: &Subscriber, device: &str, point: &str) -> Value {
    let topic = format!("homeassistant/device/sun_{device}/config");
    let unique = format!("fieldbridge:sun:{device}:{point}");
    let Some(m) = sub.wait_for(&topic, |p| p.contains(&format!("\"{unique}\"")), WAIT) else {
        return Value::Null;
    };
    json_of(&m.payload)["cmps"]
        .as_object()
        .and_then(|c| {
            c.values()
                .find(|e| e["unique_id"] == unique.as_str())
                .cloned()
        })
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sunspec_device_publishes_every_value_scaled_and_keeps_its_names_on_float_models() {
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    let addr = fake.serve_tcp().await;
    // Unit 1: common model of 66 registers; unit 2: of 65, as Fronius sends it.
    load(&fake, 1, &[common_model(66), inverter_103(), meter_203()]);
    load(&fake, 2, &[common_model(65), inverter_103(), meter_203()]);
    let sub = Subscriber::connect(broker.port, "#");
    let devices = "[devices.inv]\nbus = \"lan\"\nunit = 1\nprofile = \"sunspec\"\npoll = \"1s\"\n\
                   [devices.fronius]\nbus = \"lan\"\nunit = 2\nprofile = \"sunspec\"\npoll = \"1s\"\n";
    let gw = GatewayProcess::spawn(&config(broker.port, addr, devices), &[]);
    let want = integer_values();
    let mut failures = Vec::new();
    let mut keys = BTreeSet::new();
    for device in ["inv", "fronius"] {
        let topic = format!("t/lab/device/{device}/state");
        let state = sub
            .wait_for(
                &topic,
                |p| {
                    want.as_object()
                        .unwrap()
                        .keys()
                        .all(|k| json_of(p).get(k).is_some())
                },
                WAIT,
            )
            .map(|m| json_of(&m.payload))
            .unwrap_or_else(|| panic!("{device}: no full state\n{}", gw.log()));
        failures.extend(expect_values(device, &state, &want));
        keys = state_keys(&state);
        for p in NOT_IMPLEMENTED {
            if state.get(*p).is_some() {
                failures.push(format!("{device}.{p}: not implemented, but in the state"));
            }
            if !sub.on(&format!("t/lab/sensor/{device}/{p}")).is_empty() {
                failures.push(format!("{device}.{p}: not implemented, but published"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        keys,
        want.as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>(),
        "exactly the implemented points"
    );
    // A sensor topic carries the unit; Home Assistant gets energy counters as energy.
    let sensor = sub
        .wait_for("t/lab/sensor/inv/voltage_a", |_| true, WAIT)
        .unwrap();
    assert_eq!(json_of(&sensor.payload)["unit"], "V");
    for point in ["energy", "energy_import_2", "energy_export_2"] {
        let e = discovery_entry(&sub, "inv", point);
        assert_eq!(e["device_class"], "energy", "{point}: {e}");
        assert_eq!(e["state_class"], "total_increasing", "{point}: {e}");
        assert_eq!(e["unit_of_measurement"], "Wh", "{point}: {e}");
    }
    // The common model names the device in Home Assistant.
    let dev = sub
        .wait_for(
            "homeassistant/device/sun_inv/config",
            |p| p.contains("Symo"),
            WAIT,
        )
        .map(|m| json_of(&m.payload))
        .unwrap();
    assert_eq!(dev["dev"]["manufacturer"], "Fronius", "{dev}");
    assert_eq!(dev["dev"]["model"], "Symo 10.0-3-M", "{dev}");
    assert!(
        gw.log().contains("SunSpec model chain read"),
        "{}",
        gw.log()
    );

    // A firmware update: the same device now offers the float models. A reload walks it again;
    // it keeps every point name.
    load(&fake, 1, &[common_model(66), inverter_113(), meter_213()]);
    sub.clear();
    gw.signal(Signal::SIGHUP);
    let state = sub
        .wait_for(
            "t/lab/device/inv/state",
            |p| json_of(p)["state"] == "throttled" && json_of(p).get("energy_import_2").is_some(),
            WAIT,
        )
        .map(|m| json_of(&m.payload))
        .unwrap_or_else(|| panic!("no state from the float models\n{}", gw.log()));
    let floats = json!({
        "current": 12.5, "voltage_a": 231.5, "power": 8000.0, "frequency": 49.95,
        "energy": 2_000_000.0, "heat_sink_temperature": 35.5, "state": "throttled",
        "power_2": -2000.0, "energy_export_2": 6_000_000.0, "energy_import_2": 2_000_000.0,
    });
    let failures = expect_values("inv", &state, &floats);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        state_keys(&state),
        keys,
        "the float models give the same names"
    );
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_chains_and_scale_factors_are_logged_and_never_published() {
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    let addr = fake.serve_tcp().await;
    // Unit 1: no "SunS" anywhere (registers read 0).
    fake.unit(1, |_| {});
    // Unit 2: the chain never ends (every header reads model 1 of length 0).
    let mut endless = vec![0x5375, 0x6E53];
    for _ in 0..200 {
        endless.extend([1, 0]);
    }
    fake.set_holding(2, BASE, &endless);
    // Unit 3: model 103's length runs past address 65535.
    let mut past = vec![0x5375, 0x6E53];
    past.extend(common_model(66));
    past.extend([103, 30000]);
    fake.set_holding(3, BASE, &past);
    // Unit 4: a good chain whose power scale factor reads 15.
    let mut bad_sf = inverter_103();
    bad_sf[15] = 15;
    load(&fake, 4, &[common_model(66), bad_sf]);
    let sub = Subscriber::connect(broker.port, "#");
    let mut devices = String::new();
    for (name, unit) in [("nomark", 1), ("endless", 2), ("pastmap", 3), ("badsf", 4)] {
        devices += &format!(
            "[devices.{name}]\nbus = \"lan\"\nunit = {unit}\nprofile = \"sunspec\"\npoll = \"1s\"\noffline_after = 1\noffline_retry = \"1s\"\n"
        );
    }
    let gw = GatewayProcess::spawn(&config(broker.port, addr, &devices), &[]);
    for (device, line) in [
        (
            "nomark",
            "no SunSpec marker \"SunS\" at holding 40000, 0, 50000",
        ),
        ("endless", "does not end after 64 models"),
        (
            "pastmap",
            "model 103 at holding:40070 with length 30000 runs past the register map",
        ),
    ] {
        assert!(
            gw.wait_log(line, WAIT),
            "{device}: no log line {line:?}\n{}",
            gw.log()
        );
        let avail = format!("t/lab/device/{device}/availability");
        assert!(
            sub.wait_for(&avail, |p| json_of(p)["status"] == "offline", WAIT)
                .is_some(),
            "{device} is not offline"
        );
        assert!(
            sub.on(&format!("t/lab/device/{device}/state")).is_empty(),
            "{device}: a state from a broken chain"
        );
    }
    // The scale factor out of range: that point unknown and warned about, the others published.
    let state = sub
        .wait_for(
            "t/lab/device/badsf/state",
            |p| json_of(p).get("voltage_a").is_some(),
            WAIT,
        )
        .map(|m| json_of(&m.payload))
        .unwrap();
    assert_eq!(state["voltage_a"], json!(230.1));
    assert!(state.get("power").is_none(), "{state}");
    assert!(sub.on("t/lab/sensor/badsf/power").is_empty());
    assert!(
        gw.wait_log(
            "its scale factor at holding:40085 is 15, outside -10..10",
            WAIT
        ),
        "{}",
        gw.log()
    );
    let log = gw.log();
    assert!(!log.contains("panicked"), "{log}");
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_probe_prints_the_walk_and_every_value() {
    let fake = FakeModbus::new();
    let addr = fake.serve_tcp().await;
    load(
        &fake,
        7,
        &[
            common_model(65),
            inverter_103(),
            model(64_900, 4, &[]),
            meter_203(),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config(1, addr, "")).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(common::gateway::BIN)
            .args(["profiles", "--probe", "--bus", "lan", "--unit", "7", "-c"])
            .arg(&path)
            .env_remove("FIELDBRIDGE_CONFIG")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "SunSpec marker \"SunS\" at holding:40000",
        "model 1    Common at holding:40002, 65 registers (the definition has 66)",
        "model 103  Inverter (Three Phase) at holding:40069, 50 registers",
        "model 64900 at holding:40121, 4 registers: not known to fieldbridge, skipped",
        "model 203  ",
        "device: Fronius Symo 10.0-3-M",
    ] {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }
    let point = |name: &str| -> String {
        text.lines()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no point {name} in:\n{text}"))
            .to_string()
    };
    assert!(point("voltage_a").contains("230.1 V"), "{text}");
    assert!(point("energy").contains("1234567890 Wh"), "{text}");
    assert!(point("current_c").contains("not implemented"), "{text}");
    assert!(point("power_2").contains("-1234 W"), "{text}");
    assert!(point("state").contains("\"mppt\""), "{text}");
}

#[test]
fn check_says_a_sunspec_devices_points_come_at_run_time_and_refuses_misuse() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let addr: std::net::SocketAddr = "127.0.0.1:1502".parse().unwrap();
    let devices = "[devices.inv]\nbus = \"lan\"\nunit = 1\nprofile = \"sunspec\"\nsunspec_base = 50000\n\
                   [devices.inv.points.power]\ndeadband = 50\n\
                   [devices.inv.points.limit]\nregister = \"holding:40300\"\nwritable = true\nmax = 100\n";
    std::fs::write(&path, config(1883, addr, devices)).unwrap();
    let run = |path: &std::path::Path| {
        let out = std::process::Command::new(common::gateway::BIN)
            .arg("check")
            .arg("-c")
            .arg(path)
            .env_remove("FIELDBRIDGE_CONFIG")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, err) = run(&path);
    assert_eq!(code, Some(0), "{err}{out}");
    for want in [
        "profile      sunspec (built in (the device's SunSpec models, read at run time))",
        "points       from the device's SunSpec models, read at run time (at holding:50000)",
        "point power: the device sets deadband",
        "point limit: holding:40300 u16 writable",
        "reads per poll: 1 (for 1 points, and those of its SunSpec models)",
    ] {
        assert!(out.contains(want), "no {want:?} in:\n{out}");
    }
    // A serial device cannot speak SunSpec; `sunspec_base` without the profile is a mistake.
    let bad = config(
        1883,
        addr,
        "[buses.line]\nkind = \"serial\"\nport = \"/dev/ttyUSB7\"\n\
         [devices.a]\nbus = \"line\"\nprofile = \"sunspec\"\n\
         [devices.b]\nbus = \"lan\"\nunit = 2\nsunspec_base = 0\n[devices.b.points.x]\nregister = \"holding:0\"\n",
    );
    std::fs::write(&path, bad).unwrap();
    let (code, _, err) = run(&path);
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains("devices.a.profile: profile \"sunspec\" is for Modbus devices"),
        "{err}"
    );
    assert!(
        err.contains(
            "devices.b.sunspec_base: `sunspec_base` applies to devices with profile = \"sunspec\""
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_back_from_offline_is_walked_again() {
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    let addr = fake.serve_tcp().await;
    load(&fake, 1, &[common_model(66), inverter_103()]);
    let sub = Subscriber::connect(broker.port, "#");
    let devices = "[devices.inv]\nbus = \"lan\"\nunit = 1\nprofile = \"sunspec\"\npoll = \"1s\"\n\
                   offline_after = 1\noffline_retry = \"1s\"\n";
    let gw = GatewayProcess::spawn(&config(broker.port, addr, devices), &[]);
    let state = |want: &'static str| {
        sub.wait_for(
            "t/lab/device/inv/state",
            move |p| json_of(p)["state"] == want,
            WAIT,
        )
    };
    assert!(state("mppt").is_some(), "{}", gw.log());
    // The inverter restarts with a firmware that offers the float model.
    fake.unit(1, |u| u.silent = true);
    assert!(
        sub.wait_for(
            "t/lab/device/inv/availability",
            |p| json_of(p)["status"] == "offline",
            WAIT
        )
        .is_some(),
        "{}",
        gw.log()
    );
    load(&fake, 1, &[common_model(66), inverter_113()]);
    fake.unit(1, |u| u.silent = false);
    let back = state("throttled")
        .map(|m| json_of(&m.payload))
        .unwrap_or_else(|| panic!("not walked again\n{}", gw.log()));
    assert_eq!(back["power"], json!(8000.0));
    assert_eq!(gw.log().matches("SunSpec model chain read").count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_reads_the_chain_of_a_device_that_was_never_walked() {
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    let addr = fake.serve_tcp().await;
    load(&fake, 1, &[common_model(66), inverter_103()]);
    fake.unit(1, |u| u.silent = true);
    let sub = Subscriber::connect(broker.port, "#");
    // Polled hourly: only the refresh can bring it back before then.
    let devices = "[devices.inv]\nbus = \"lan\"\nunit = 1\nprofile = \"sunspec\"\npoll = \"1h\"\n\
                   offline_after = 1\n";
    let gw = GatewayProcess::spawn(&config(broker.port, addr, devices), &[]);
    assert!(
        sub.wait_for(
            "t/lab/device/inv/availability",
            |p| json_of(p)["status"] == "offline",
            WAIT
        )
        .is_some(),
        "{}",
        gw.log()
    );
    fake.unit(1, |u| u.silent = false);
    common::mosquitto::publish(
        broker.port,
        "t/lab/device/inv/command",
        r#"{"action": "refresh", "id": "r1"}"#,
        false,
    );
    let result = sub
        .wait_for(
            "t/lab/device/inv/command/result",
            |p| p.contains("r1"),
            WAIT,
        )
        .map(|m| json_of(&m.payload))
        .unwrap_or_else(|| panic!("no result\n{}", gw.log()));
    assert_eq!(result["ok"], json!(true), "{result}");
    let state = sub
        .wait_for(
            "t/lab/device/inv/state",
            |p| json_of(p).get("power").is_some(),
            WAIT,
        )
        .map(|m| json_of(&m.payload))
        .unwrap();
    assert_eq!(state["power"], json!(8450));
}
