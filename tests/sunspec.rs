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

use std::collections::BTreeSet;
use std::time::Duration;

use common::gateway::GatewayProcess;
use common::modbus::FakeModbus;
use common::mosquitto::{Mosquitto, Subscriber};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);
const BASE: u16 = 40000;

/// A string point's registers: `s` in ASCII, padded with NULs.
fn text(s: &str, registers: usize) -> Vec<u16> {
    let mut bytes = s.as_bytes().to_vec();
    bytes.resize(registers * 2, 0);
    bytes
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect()
}

fn f32_words(x: f32) -> [u16; 2] {
    let b = x.to_bits();
    [(b >> 16) as u16, b as u16]
}

/// Model `id` of length `len`, zero but for `set` (offsets from its ID register).
fn model(id: u16, len: u16, set: &[(u16, &[u16])]) -> Vec<u16> {
    let mut m = vec![0u16; usize::from(len) + 2];
    m[0] = id;
    m[1] = len;
    for (offset, words) in set {
        for (i, w) in words.iter().enumerate() {
            m[usize::from(*offset) + i] = *w;
        }
    }
    m
}

/// The common model, 66 registers as the definition says, or 65 as Fronius sends it.
fn common_model(len: u16) -> Vec<u16> {
    let mut set: Vec<(u16, Vec<u16>)> = vec![
        (2, text("Fronius", 16)),
        (18, text("Symo 10.0-3-M", 16)),
        (42, text("1.2.3", 8)),
        (50, text("28471234", 16)),
        (66, vec![1]),
    ];
    if len == 66 {
        set.push((67, vec![0x8000]));
    }
    let borrowed: Vec<(u16, &[u16])> = set.iter().map(|(o, w)| (*o, w.as_slice())).collect();
    model(1, len, &borrowed)
}

const NI16: u16 = 0x8000;
const NU16: u16 = 0xFFFF;

/// Inverter model 103: integers with scale factors (offsets from the model definition).
fn inverter_103() -> Vec<u16> {
    let neg = |x: i16| x as u16;
    model(
        103,
        50,
        &[
            (2, &[1234, 411, 412, NU16, neg(-2)]), // A, AphA, AphB, AphC (not implemented), A_SF
            (7, &[4001, 4002, 4003, 2301, 2302, 2303, neg(-1)]), // PPV…, PhV…, V_SF
            (14, &[8450, 0]),                      // W, W_SF
            (16, &[5002, neg(-2)]),                // Hz, Hz_SF
            (18, &[8500, 0]),                      // VA, VA_SF
            (20, &[neg(-300), 0]),                 // VAr, VAr_SF
            (22, &[995, neg(-1)]),                 // PF, PF_SF
            (24, &[0x075B, 0xCD15, 1]),            // WH = 123456789, WH_SF = 1
            (27, &[2155, neg(-2), 4120, neg(-1), 8877, 0]), // DCA, DCA_SF, DCV, DCV_SF, DCW, DCW_SF
            (33, &[NI16, neg(-55), NI16, NI16, neg(-1)]), // TmpCab, TmpSnk, TmpTrns, TmpOt, Tmp_SF
            (38, &[4, NU16]),                      // St = MPPT, StVnd not implemented
        ],
    )
}

/// Meter model 203: integers with scale factors.
fn meter_203() -> Vec<u16> {
    let neg = |x: i16| x as u16;
    model(
        203,
        105,
        &[
            (2, &[1050, 350, 351, 349, neg(-2)]), // A, AphA, AphB, AphC, A_SF
            (
                7,
                &[2305, 2301, 2302, 2303, 3995, 3991, 3992, 3993, neg(-1)],
            ), // PhV…, PPV…, V_SF
            (16, &[4998, neg(-2)]),               // Hz, Hz_SF
            (18, &[neg(-1234), neg(-400), neg(-417), neg(-417), 0]), // W…, W_SF
            (23, &[1300, 0, 0, 0, 0]),            // VA…, VA_SF
            (28, &[NI16, NI16, NI16, NI16, 0]),   // VAR… not implemented, VAR_SF
            (38, &[0x004C, 0x4B40]),              // TotWhExp = 5000000
            (46, &[0x0012, 0xD687]),              // TotWhImp = 1234567
            (54, &[0]),                           // TotWh_SF
        ],
    )
}

/// Inverter model 113: the same quantities as floats, other values.
fn inverter_113() -> Vec<u16> {
    let nan = [0x7FC0, 0];
    let f = f32_words;
    let mut set: Vec<(u16, Vec<u16>)> = Vec::new();
    for (offset, x) in [
        (2, 12.5),
        (4, 4.25),
        (6, 4.5),
        (10, 401.5),
        (12, 402.5),
        (14, 403.5),
        (16, 231.5),
        (18, 232.5),
        (20, 233.5),
        (22, 8000.0),
        (24, 49.95),
        (26, 8100.0),
        (28, -250.0),
        (30, 98.0),
        (32, 2_000_000.0),
        (34, 20.25),
        (36, 410.5),
        (38, 8300.0),
        (42, 35.5),
    ] {
        set.push((offset, f(x).to_vec()));
    }
    for offset in [8, 40, 44, 46] {
        set.push((offset, nan.to_vec())); // AphC, TmpCab, TmpTrns, TmpOt: not implemented
    }
    set.push((48, vec![5, NU16])); // St = THROTTLED, StVnd not implemented
    let borrowed: Vec<(u16, &[u16])> = set.iter().map(|(o, w)| (*o, w.as_slice())).collect();
    model(113, 60, &borrowed)
}

/// Meter model 213: floats.
fn meter_213() -> Vec<u16> {
    let nan = [0x7FC0, 0];
    let mut set: Vec<(u16, Vec<u16>)> = Vec::new();
    for (offset, x) in [
        (2, 11.0),
        (4, 3.75),
        (6, 3.5),
        (8, 3.75),
        (10, 231.0),
        (12, 230.5),
        (14, 231.5),
        (16, 231.0),
        (20, 400.0),
        (22, 400.5),
        (24, 401.0),
        (26, 50.01),
        (28, -2000.0),
        (30, -700.0),
        (32, -650.0),
        (34, -650.0),
        (36, 2100.0),
        (60, 6_000_000.0),
        (68, 2_000_000.0),
    ] {
        set.push((offset, f32_words(x).to_vec()));
    }
    set.push((44, nan.to_vec())); // VAR: not implemented
    let borrowed: Vec<(u16, &[u16])> = set.iter().map(|(o, w)| (*o, w.as_slice())).collect();
    model(213, 124, &borrowed)
}

/// A device's holding registers from `BASE`: "SunS", the models, the end marker.
fn load(fake: &FakeModbus, unit: u8, models: &[Vec<u16>]) {
    let mut image = vec![0x5375, 0x6E53];
    for m in models {
        image.extend(m);
    }
    image.extend([0xFFFF, 0]);
    fake.unit(unit, |u| u.holdings.clear());
    fake.set_holding(unit, BASE, &image);
}

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

fn json_of(payload: &str) -> Value {
    serde_json::from_str(payload).unwrap_or(Value::Null)
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
