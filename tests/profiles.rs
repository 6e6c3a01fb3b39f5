#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! Device profiles (README "Device profiles"): every built-in profile against a simulated device holding
//! example register contents from its document, published through the real gateway to a real
//! mosquitto; user profiles shadowing built-ins; device overrides; broken profile files;
//! `scan --identify`; `check` on a config that uses every profile.

mod common;

use common::json_of;

use common::WAIT;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::gateway::InProcess;
use common::modbus::FakeModbus;
use common::mosquitto::{Mosquitto, Subscriber};
use fieldbridge::config::{self, Profiles, Table};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_fieldbridge");

/// `test-data/profiles/<name>.toml`: register contents and what they must publish.
struct Example {
    registers: Vec<(config::Register, Vec<u16>)>,
    expect: BTreeMap<String, toml::Table>,
}

fn example(name: &str) -> Example {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("test-data/profiles")
        .join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (every built-in profile needs examples)",
            path.display()
        )
    });
    let doc: toml::Table = toml::from_str(&text).unwrap();
    let registers = doc["registers"]
        .as_table()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let words = v
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w.as_integer().unwrap() as u16)
                .collect();
            (config::parse_register(k).unwrap(), words)
        })
        .collect();
    let expect = doc["expect"]
        .as_table()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_table().unwrap().clone()))
        .collect();
    Example { registers, expect }
}

fn builtin() -> &'static Profiles {
    Profiles::builtin().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_built_in_profile_has_examples_for_every_point() {
    for p in builtin().iter() {
        let ex = example(&p.name);
        let points: Vec<&String> = p.points.keys().collect();
        let expected: Vec<&String> = ex.expect.keys().collect();
        assert_eq!(points, expected, "{}: points without examples", p.name);
        assert!(!ex.registers.is_empty(), "{}", p.name);
    }
}

/// The Home Assistant discovery entry of one point, in either discovery layout.
fn discovery_entry(sub: &Subscriber, gateway: &str, device: &str, point: &str) -> Option<Value> {
    let per_point = format!("/{gateway}_{device}/{point}/config");
    let per_device = format!("homeassistant/device/{gateway}_{device}/config");
    let unique = format!("fieldbridge:{gateway}:{device}:{point}");
    for m in sub.seen().iter().rev() {
        if m.topic.ends_with(&per_point) && !m.payload.is_empty() {
            return Some(json_of(&m.payload));
        }
        if m.topic == per_device {
            let cfg = json_of(&m.payload);
            if let Some(cmps) = cfg.get("cmps").and_then(Value::as_object) {
                if let Some(c) = cmps.values().find(|c| c["unique_id"] == unique.as_str()) {
                    return Some(c.clone());
                }
            }
        }
    }
    None
}

fn same_value(got: &Value, want: &toml::Value) -> bool {
    match want {
        toml::Value::Float(f) => got
            .as_f64()
            .is_some_and(|g| (g - f).abs() <= 1e-9 * f.abs().max(1.0)),
        toml::Value::Integer(i) => got.as_f64() == Some(*i as f64),
        toml::Value::String(s) => got.as_str() == Some(s.as_str()),
        toml::Value::Boolean(b) => got.as_bool() == Some(*b),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_built_in_profile_publishes_the_documented_values_units_and_classes() {
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    let profiles: Vec<_> = builtin().iter().collect();
    let mut cfg = format!(
        "[gateway]\nid = \"prof\"\nbase_topic = \"t\"\nlocation = \"lab\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nreconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n[history]\npath = \"{{dir}}/history.db\"\n",
        broker.port
    );
    let addr = fake.serve_tcp().await;
    cfg += &format!("[buses.lan]\nkind = \"modbus-tcp\"\naddress = \"{addr}\"\ntimeout = \"2s\"\n");
    for (i, p) in profiles.iter().enumerate() {
        let unit = i as u8 + 1;
        for (reg, words) in example(&p.name).registers {
            match reg.table {
                Table::Coil => fake.unit(unit, |u| {
                    u.coils.insert(reg.address, words[0] != 0);
                }),
                Table::Discrete => fake.unit(unit, |u| {
                    u.discretes.insert(reg.address, words[0] != 0);
                }),
                Table::Holding => fake.set_holding(unit, reg.address, &words),
                Table::Input => fake.set_input(unit, reg.address, &words),
            }
        }
        cfg += &format!(
            "[devices.{}]\nbus = \"lan\"\nunit = {unit}\nprofile = \"{}\"\npoll = \"1s\"\n",
            p.name, p.name
        );
    }
    let sub = Subscriber::connect(broker.port, "#");
    let gw = InProcess::start(&cfg).await;
    let mut failures = Vec::new();
    for p in &profiles {
        let ex = example(&p.name);
        let topic = format!("t/lab/device/{}/state", p.name);
        let state = sub
            .wait_for(
                &topic,
                |s| ex.expect.keys().all(|k| json_of(s).get(k).is_some()),
                WAIT,
            )
            .map(|m| json_of(&m.payload))
            .unwrap_or(Value::Null);
        for (point, want) in &ex.expect {
            let got = &state[point.as_str()];
            if !same_value(got, &want["value"]) {
                failures.push(format!(
                    "{}.{point}: published {got}, documented {}",
                    p.name, want["value"]
                ));
            }
            // The unit rides on the sensor topic; the classes on the discovery config.
            let sensor = sub.wait_for(&format!("t/lab/sensor/{}/{point}", p.name), |_| true, WAIT);
            let unit = sensor
                .map(|m| json_of(&m.payload)["unit"].clone())
                .unwrap_or(Value::Null);
            let want_unit = want.get("unit").and_then(|u| u.as_str());
            if unit.as_str() != want_unit {
                failures.push(format!(
                    "{}.{point}: unit {unit}, documented {want_unit:?}",
                    p.name
                ));
            }
            let disc = common::poll_async(WAIT, Duration::from_millis(100), || {
                discovery_entry(&sub, "prof", &p.name, point)
            })
            .await
            .unwrap_or(Value::Null);
            for (key, field) in [
                ("device_class", "device_class"),
                ("state_class", "state_class"),
                ("unit", "unit_of_measurement"),
            ] {
                if let Some(w) = want.get(key).and_then(|v| v.as_str()) {
                    if disc[field].as_str() != Some(w) {
                        failures.push(format!(
                            "{}.{point}: discovery {field} {}, documented {w}",
                            p.name, disc[field]
                        ));
                    }
                }
            }
        }
    }
    gw.stop().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn run(args: &[&str], config: &Path) -> (i32, String, String) {
    let config = config.to_str().unwrap();
    let args: Vec<&str> = args.iter().copied().chain(["-c", config]).collect();
    fieldbridge_cli(&args)
}

/// `fieldbridge ARGS`: exit code, stdout, stderr.
fn fieldbridge_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("FIELDBRIDGE_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// A config dir with `config.toml` and `profiles/<name>.toml` files.
fn config_dir(config: &str, profiles: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[gateway]\nid = \"prof\"\n[history]\npath = \"{}/h.db\"\n{config}",
            dir.path().display()
        ),
    )
    .unwrap();
    if !profiles.is_empty() {
        std::fs::create_dir(dir.path().join("profiles")).unwrap();
        for (name, text) in profiles {
            std::fs::write(
                dir.path().join("profiles").join(format!("{name}.toml")),
                text,
            )
            .unwrap();
        }
    }
    (dir, path)
}

const RTU: &str = "[buses.rs485]\nkind = \"modbus-rtu\"\nport = \"/dev/ttyUSB9\"\nbaud = 9600\n";

#[test]
fn a_user_profile_shadows_a_built_in_and_a_device_override_changes_only_that_point() {
    let user = r#"manufacturer = "Eastron"
model = "SDM120"
buses = ["modbus-rtu"]
poll = "3s"
[document]
title = "My own reading of the SDM120 manual"
date = "2026-01-01"
[points.voltage]
register = "input:0"
type = "f32"
unit = "V"
device_class = "voltage"
[points.power]
register = "input:12"
type = "f32"
unit = "W"
device_class = "power"
precision = 1
"#;
    let cfg = format!(
        "{RTU}[devices.meter]\nbus = \"rs485\"\nunit = 2\nprofile = \"eastron-sdm120\"\n[devices.meter.points.power]\nprecision = 3\ndeadband = 5\n[devices.meter.points.extra]\nregister = \"input:70\"\ntype = \"f32\"\n[devices.plain]\nbus = \"rs485\"\nunit = 3\nprofile = \"eastron-sdm230\"\n"
    );
    let (_dir, path) = config_dir(&cfg, &[("eastron-sdm120", user)]);
    let c = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let meter = &c.devices["meter"];
    // The user's file, not the built-in (which has twelve points and polls every 10 s).
    let mut names: Vec<&str> = meter.points.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["extra", "power", "voltage"]);
    assert_eq!(meter.poll, Duration::from_secs(3));
    let prof = meter.profile.as_ref().unwrap();
    assert!(
        prof.source.ends_with("profiles/eastron-sdm120.toml"),
        "{}",
        prof.source
    );
    // The override changed precision and deadband of `power` only; every other key, and every
    // other point, is the profile's.
    let users = Profiles::load(&config::profiles_dir(&path)).0;
    let base = &users.get("eastron-sdm120").unwrap().points;
    let power = &meter.points["power"];
    assert_eq!(power.precision, Some(3));
    assert_eq!(power.deadband, 5.0);
    let mut restored = power.clone();
    restored.precision = base["power"].precision;
    restored.deadband = base["power"].deadband;
    assert_eq!(&restored, &base["power"]);
    assert_eq!(&meter.points["voltage"], &base["voltage"]);
    let mut keys = prof.points["power"].clone();
    keys.sort();
    assert_eq!(keys, ["deadband", "precision"]);
    assert!(prof.points["voltage"].is_empty());
    // A built-in nobody shadowed is still the built-in one.
    assert_eq!(
        c.devices["plain"].points,
        builtin().get("eastron-sdm230").unwrap().points
    );
    // `check` shows where each point came from, and `profiles` the shadowing file.
    let (code, out, err) = run(&["check"], &path);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("profile      eastron-sdm120 ("), "{out}");
    assert!(out.contains("/profiles/eastron-sdm120.toml)"), "{out}");
    assert!(
        out.contains("point power: input:12 f32 -> ")
            && out.contains("(profile eastron-sdm120; device sets deadband, precision)"),
        "{out}"
    );
    assert!(out.contains("point voltage: input:0 f32 -> fieldbridge/home/sensor/meter/voltage (profile eastron-sdm120)\n"), "{out}");
    assert!(
        out.contains("point extra: input:70 f32 -> fieldbridge/home/sensor/meter/extra (device)\n"),
        "{out}"
    );
    let (code, out, _) = run(&["profiles"], &path);
    assert_eq!(code, 0);
    let line = out
        .lines()
        .find(|l| l.starts_with("eastron-sdm120 "))
        .unwrap();
    assert!(line.ends_with("profiles/eastron-sdm120.toml"), "{line}");
    let (code, out, _) = run(&["profiles", "eastron-sdm120"], &path);
    assert_eq!(code, 0);
    assert!(
        out.contains("document: \"My own reading of the SDM120 manual\", 2026-01-01"),
        "{out}"
    );
}

#[test]
fn a_broken_profile_file_gives_file_line_col_errors_and_exit_78() {
    let broken = r#"manufacturer = "Acme"
model = "M1"
buses = ["modbus-rtu", "cann"]
colour = "red"
[document]
title = "Acme M1 manual"
[points.temp]
register = "input:0"
type = "f33"
[points.mode]
register = "input:1"
map = { 0 = "off", x = "on" }
"#;
    let cfg = format!("{RTU}[devices.m]\nbus = \"rs485\"\nunit = 1\nprofile = \"acme-m1\"\n");
    let (dir, path) = config_dir(&cfg, &[("acme-m1", broken)]);
    // The config's line naming the profile, in the file as written.
    let line = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("profile = \"acme-m1\""))
        .unwrap()
        + 1;
    let (code, _, err) = run(&["check"], &path);
    assert_eq!(code, 78, "{err}");
    let file = dir
        .path()
        .join("profiles/acme-m1.toml")
        .display()
        .to_string();
    for want in [
        format!("{file}:3:24: buses: unknown bus kind \"cann\""),
        format!("{file}:4:1: colour: unknown key \"colour\""),
        format!("{file}:5:2: document.version: the source document needs a `version` or a `date`"),
        format!("{file}:9:8: points.temp.type: unknown type \"f33\""),
        format!("{file}:12:20: points.mode.map.x: map keys are raw integer values"),
        format!(
            "{}:{line}:11: devices.m.profile: profile \"acme-m1\" has errors",
            path.display()
        ),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    // Listing the profiles reports the same file errors, with the same exit code.
    let (code, _, err2) = run(&["profiles"], &path);
    assert_eq!(code, 78);
    assert!(
        err2.contains(&format!("{file}:9:8: points.temp.type")),
        "{err2}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_identify_names_the_profile_of_a_device_with_fc43_and_lists_one_without() {
    let fake = FakeModbus::new();
    fake.set_holding(1, 0, &[1]);
    fake.unit(1, |u| {
        u.identity = Some(vec![
            (0, "Eastron".to_string()),
            (1, "SDM630-Modbus V2".to_string()),
            (2, "1.9".to_string()),
        ]);
    });
    // Unit 2 answers reads but neither identity request; unit 3 gives only its FC 17 data.
    fake.set_holding(2, 0, &[1]);
    fake.set_holding(3, 0, &[1]);
    fake.unit(3, |u| u.server_id = Some(b"XY-MD02 v1".to_vec()));
    let dir = tempfile::tempdir().unwrap();
    let bus = fake.serve_rtu(dir.path());
    let (_cfg_dir, path) = config_dir(
        &format!(
            "[buses.rs485]\nkind = \"modbus-rtu\"\nport = \"{}\"\nbaud = 9600\ntimeout = \"300ms\"\n",
            bus.path_str()
        ),
        &[],
    );
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        run(
            &["scan", "--bus", "rs485", "--units", "1-4", "--identify"],
            &path,
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("unit 1: answers with data\n  device identification (FC 43/14): vendor \"Eastron\", product \"SDM630-Modbus V2\", revision \"1.9\"\n  server id (FC 17): not supported\n  matching profiles: eastron-sdm630\n"),
        "{out}"
    );
    assert!(
        out.contains("unit 2: answers with data\n  device identification (FC 43/14): not supported\n  server id (FC 17): not supported\nunit 3"),
        "{out}"
    );
    assert!(
        out.contains("unit 3: answers with data\n  device identification (FC 43/14): not supported\n  server id (FC 17): id 3, running, data 58592d4d443032207631 \"XY-MD02 v1\"\n  matching profiles: xy-md02\n"),
        "{out}"
    );
    assert!(out.contains("3 unit(s) answered"), "{out}");
    // The identity requests went out as FC 43 and FC 17.
    let fcs: Vec<u8> = fake
        .log()
        .iter()
        .filter(|s| s.unit == 1)
        .map(|s| s.fc)
        .collect();
    assert!(fcs.contains(&43) && fcs.contains(&17), "{fcs:?}");
    drop(bus);
}

/// Each built-in profile's points and the reads a poll of it costs, as `fieldbridge check` must
/// list them, counted from the profile's register map by the README's rules ("Modbus"): the
/// points of one table, in address order, share a read while it stays within 125 registers
/// (2,000 bits) and the unused registers between two of them are at most `max_gap` (4; for
/// bits 64). A u16 or i16 takes one register, a u32, i32 or f32 two, a u64 four, a string its
/// `length`. Above each: the points in each read, in order, with the unused registers it spans;
/// the reads are more than 4 registers apart. Profiles in name order.
const READS_PER_POLL: &[(&str, usize, &[&str])] = &[
    // 17 points: 2 | 3 | 7 (2 unused) | 1 | 4.
    (
        "abb-b23",
        17,
        &[
            "FC03 holding 20480..20487 (8 registers)",
            "FC03 holding 23296..23301 (6 registers)",
            "FC03 holding 23308..23323 (16 registers)",
            "FC03 holding 23340..23340 (1 registers)",
            "FC03 holding 23354..23357 (4 registers)",
        ],
    ),
    // 20 points: 12 | 3 | 2 (1 unused) | 2 | 1.
    (
        "carlo-gavazzi-em24",
        20,
        &[
            "FC04 input 0..23 (24 registers)",
            "FC04 input 40..45 (6 registers)",
            "FC04 input 53..55 (3 registers)",
            "FC04 input 62..65 (4 registers)",
            "FC04 input 92..93 (2 registers)",
        ],
    ),
    // 8 points: 6 (4 unused) | 1 | 1.
    (
        "chint-ddsu666",
        8,
        &[
            "FC03 holding 8192..8207 (16 registers)",
            "FC03 holding 16384..16385 (2 registers)",
            "FC03 holding 16394..16395 (2 registers)",
        ],
    ),
    // 24 points: 1 | 1 | 17 | 4 | 1.
    (
        "chint-dtsu666",
        24,
        &[
            "FC03 holding 4126..4127 (2 registers)",
            "FC03 holding 4136..4137 (2 registers)",
            "FC03 holding 8192..8225 (34 registers)",
            "FC03 holding 8234..8241 (8 registers)",
            "FC03 holding 8260..8261 (2 registers)",
        ],
    ),
    // 33 points: 1 | 14 (8 unused) | 5 (1 unused) | 3 | 1 | 1 | 1 | 1 | 6 (2 unused).
    (
        "deye-sg04lp3",
        33,
        &[
            "FC03 holding 500..500 (1 registers)",
            "FC03 holding 514..541 (28 registers)",
            "FC03 holding 586..591 (6 registers)",
            "FC03 holding 598..600 (3 registers)",
            "FC03 holding 609..609 (1 registers)",
            "FC03 holding 625..625 (1 registers)",
            "FC03 holding 636..636 (1 registers)",
            "FC03 holding 653..653 (1 registers)",
            "FC03 holding 672..679 (8 registers)",
        ],
    ),
    // 12 points: 6 (20 unused) | 5 | 1.
    (
        "eastron-sdm120",
        12,
        &[
            "FC04 input 0..31 (32 registers)",
            "FC04 input 70..79 (10 registers)",
            "FC04 input 342..343 (2 registers)",
        ],
    ),
    // 13 points: 6 (20 unused) | 5 | 2.
    (
        "eastron-sdm220",
        13,
        &[
            "FC04 input 0..31 (32 registers)",
            "FC04 input 70..79 (10 registers)",
            "FC04 input 342..345 (4 registers)",
        ],
    ),
    // 13 points: 6 (20 unused) | 5 | 2.
    (
        "eastron-sdm230",
        13,
        &[
            "FC04 input 0..31 (32 registers)",
            "FC04 input 70..79 (10 registers)",
            "FC04 input 342..345 (4 registers)",
        ],
    ),
    // 33 points: 18 | 4 (4 unused) | 3 | 8.
    (
        "eastron-sdm540",
        33,
        &[
            "FC04 input 0..35 (36 registers)",
            "FC04 input 52..63 (12 registers)",
            "FC04 input 70..75 (6 registers)",
            "FC04 input 342..357 (16 registers)",
        ],
    ),
    // 32 points: 18 | 4 (4 unused) | 5 | 3 | 1 | 1.
    (
        "eastron-sdm630",
        32,
        &[
            "FC04 input 0..35 (36 registers)",
            "FC04 input 52..63 (12 registers)",
            "FC04 input 70..79 (10 registers)",
            "FC04 input 200..205 (6 registers)",
            "FC04 input 224..225 (2 registers)",
            "FC04 input 342..343 (2 registers)",
        ],
    ),
    // 6 points: 1 | 2 | 1 | 2.
    (
        "eastron-sdm72d-m",
        6,
        &[
            "FC04 input 52..53 (2 registers)",
            "FC04 input 72..75 (4 registers)",
            "FC04 input 342..343 (2 registers)",
            "FC04 input 1280..1283 (4 registers)",
        ],
    ),
    // 27 points: 9 | 3 | 4 (4 unused) | 3 | 3 | 1 | 2 | 2.
    (
        "eastron-sdm72d-m-v2",
        27,
        &[
            "FC04 input 0..17 (18 registers)",
            "FC04 input 30..35 (6 registers)",
            "FC04 input 52..63 (12 registers)",
            "FC04 input 70..75 (6 registers)",
            "FC04 input 200..205 (6 registers)",
            "FC04 input 224..225 (2 registers)",
            "FC04 input 342..345 (4 registers)",
            "FC04 input 1280..1283 (4 registers)",
        ],
    ),
    // 17 points: 4 | 4 | 1 | 4 | 4.
    (
        "ebyte-me31-xaax0440",
        17,
        &[
            "FC01 coil 0..3 (4 bits)",
            "FC04 input 100..103 (4 registers)",
            "FC03 holding 1202..1202 (1 registers)",
            "FC03 holding 1400..1403 (4 registers)",
            "FC03 holding 1500..1503 (4 registers)",
        ],
    ),
    // 26 points: 4 | 3 | 3 | 16.
    (
        "finder-7m38",
        26,
        &[
            "FC04 input 462..469 (8 registers)",
            "FC04 input 2500..2505 (6 registers)",
            "FC04 input 2516..2521 (6 registers)",
            "FC04 input 2530..2561 (32 registers)",
        ],
    ),
    // 17 points: 8 | 4 | 2 | 1 | 2 (2 unused).
    (
        "growatt-min-tl-x",
        17,
        &[
            "FC04 input 3000..3010 (11 registers)",
            "FC04 input 3023..3027 (5 registers)",
            "FC04 input 3049..3052 (4 registers)",
            "FC04 input 3093..3093 (1 registers)",
            "FC03 holding 0..3 (4 registers)",
        ],
    ),
    // 36 points: 8 | 4 | 5 (2 unused) | 6 | 1 | 4 | 1 | 5 (6 unused) | 2 (2 unused).
    (
        "growatt-min-tl-xh",
        36,
        &[
            "FC04 input 3000..3010 (11 registers)",
            "FC04 input 3023..3027 (5 registers)",
            "FC04 input 3041..3052 (12 registers)",
            "FC04 input 3067..3078 (12 registers)",
            "FC04 input 3093..3093 (1 registers)",
            "FC04 input 3125..3132 (8 registers)",
            "FC04 input 3144..3144 (1 registers)",
            "FC04 input 3169..3181 (13 registers)",
            "FC03 holding 0..3 (4 registers)",
        ],
    ),
    // 40 points: 8 | 8 (4 unused) | 5 (2 unused) | 6 | 1 | 4 | 1 | 5 (6 unused) | 2 (2 unused).
    (
        "growatt-mod-tl3-xh",
        40,
        &[
            "FC04 input 3000..3010 (11 registers)",
            "FC04 input 3023..3035 (13 registers)",
            "FC04 input 3041..3052 (12 registers)",
            "FC04 input 3067..3078 (12 registers)",
            "FC04 input 3093..3093 (1 registers)",
            "FC04 input 3125..3132 (8 registers)",
            "FC04 input 3144..3144 (1 registers)",
            "FC04 input 3169..3181 (13 registers)",
            "FC03 holding 0..3 (4 registers)",
        ],
    ),
    // 35 points: 7 | 4 | 2 | 1 | 1 | 4 | 1 | 1 | 12 (4 unused) | 2 (2 unused).
    (
        "growatt-sph",
        35,
        &[
            "FC04 input 1..10 (10 registers)",
            "FC04 input 35..39 (5 registers)",
            "FC04 input 53..56 (4 registers)",
            "FC04 input 93..93 (1 registers)",
            "FC04 input 1000..1000 (1 registers)",
            "FC04 input 1009..1014 (6 registers)",
            "FC04 input 1021..1022 (2 registers)",
            "FC04 input 1029..1030 (2 registers)",
            "FC04 input 1037..1063 (27 registers)",
            "FC03 holding 0..3 (4 registers)",
        ],
    ),
    // 21 points: 8 | 8 (4 unused) | 2 | 1 | 2 (2 unused).
    (
        "growatt-tl3-x",
        21,
        &[
            "FC04 input 0..10 (11 registers)",
            "FC04 input 35..47 (13 registers)",
            "FC04 input 53..56 (4 registers)",
            "FC04 input 93..93 (1 registers)",
            "FC03 holding 0..3 (4 registers)",
        ],
    ),
    // 20 points: 13 | 2 | 5 (1 unused).
    (
        "heidelberg-energy-control",
        20,
        &[
            "FC04 input 4..18 (15 registers)",
            "FC04 input 100..101 (2 registers)",
            "FC03 holding 257..262 (6 registers)",
        ],
    ),
    // 29 points: 4 | 14 (6 unused) | 1 | 1 | 5 (1 unused) | 4.
    (
        "huawei-sun2000",
        29,
        &[
            "FC03 holding 32016..32019 (4 registers)",
            "FC03 holding 32064..32089 (26 registers)",
            "FC03 holding 32106..32107 (2 registers)",
            "FC03 holding 32114..32115 (2 registers)",
            "FC03 holding 37760..37766 (7 registers)",
            "FC03 holding 37780..37787 (8 registers)",
        ],
    ),
    // 20 points in one run.
    (
        "huawei-sun2000-meter",
        20,
        &["FC03 holding 37100..37137 (38 registers)"],
    ),
    // 9 points: 2 | 1 | 1 | 1 | 1 | 1 | 1 | 1.
    (
        "orno-we-514",
        9,
        &[
            "FC03 holding 304..305 (2 registers)",
            "FC03 holding 313..314 (2 registers)",
            "FC03 holding 320..321 (2 registers)",
            "FC03 holding 328..329 (2 registers)",
            "FC03 holding 336..337 (2 registers)",
            "FC03 holding 344..344 (1 registers)",
            "FC03 holding 40960..40961 (2 registers)",
            "FC03 holding 40990..40991 (2 registers)",
        ],
    ),
    // 13 points: 2 | 1 | 1 | 1 | 1 | 1 | 5 | 1.
    (
        "orno-we-515",
        13,
        &[
            "FC03 holding 304..305 (2 registers)",
            "FC03 holding 313..314 (2 registers)",
            "FC03 holding 320..321 (2 registers)",
            "FC03 holding 328..329 (2 registers)",
            "FC03 holding 336..337 (2 registers)",
            "FC03 holding 344..344 (1 registers)",
            "FC03 holding 40960..40969 (10 registers)",
            "FC03 holding 40990..40991 (2 registers)",
        ],
    ),
    // 29 points: 23 | 1 | 1 | 1 | 1 | 1 | 1.
    (
        "orno-we-516",
        29,
        &[
            "FC03 holding 14..59 (46 registers)",
            "FC03 holding 256..257 (2 registers)",
            "FC03 holding 264..265 (2 registers)",
            "FC03 holding 272..273 (2 registers)",
            "FC03 holding 280..281 (2 registers)",
            "FC03 holding 288..289 (2 registers)",
            "FC03 holding 296..297 (2 registers)",
        ],
    ),
    // 31 points: 23 | 1 | 1 | 1 | 1 | 1 | 1 | 1 | 1.
    (
        "orno-we-517",
        31,
        &[
            "FC03 holding 14..59 (46 registers)",
            "FC03 holding 256..257 (2 registers)",
            "FC03 holding 264..265 (2 registers)",
            "FC03 holding 272..273 (2 registers)",
            "FC03 holding 280..281 (2 registers)",
            "FC03 holding 288..289 (2 registers)",
            "FC03 holding 296..297 (2 registers)",
            "FC03 holding 304..305 (2 registers)",
            "FC03 holding 316..317 (2 registers)",
        ],
    ),
    // 7 points in one run.
    ("peacefair-pzem-016", 7, &["FC04 input 0..9 (10 registers)"]),
    // 6 points in one run.
    ("peacefair-pzem-017", 6, &["FC04 input 0..7 (8 registers)"]),
    // 25 points: 14 (6 unused) | 5 (1 unused) | 1 | 5.
    (
        "sungrow-sg",
        25,
        &[
            "FC04 input 5002..5023 (22 registers)",
            "FC04 input 5030..5037 (8 registers)",
            "FC04 input 5082..5083 (2 registers)",
            "FC04 input 5090..5099 (10 registers)",
        ],
    ),
    // 34 points: 9 (4 unused) | 2 | 6 (3 unused) | 17 (6 unused).
    (
        "sungrow-sh",
        34,
        &[
            "FC04 input 5007..5020 (14 registers)",
            "FC04 input 5032..5034 (3 registers)",
            "FC04 input 12999..13010 (12 registers)",
            "FC04 input 13019..13046 (28 registers)",
        ],
    ),
    // 5 points: 3 (2 unused) | 2.
    (
        "sunspec-common",
        5,
        &[
            "FC03 holding 40000..40035 (36 registers)",
            "FC03 holding 40044..40067 (24 registers)",
        ],
    ),
    // 25 points: 3 (2 unused) | 7 (3 unused) | 15 (4 unused).
    (
        "sunspec-inverter",
        25,
        &[
            "FC03 holding 40000..40035 (36 registers)",
            "FC03 holding 40044..40079 (36 registers)",
            "FC03 holding 40086..40118 (33 registers)",
        ],
    ),
    // 23 points: 3 (2 unused) | 11 (3 unused) | 6 | 1 | 1 | 1.
    (
        "sunspec-meter",
        23,
        &[
            "FC03 holding 40000..40035 (36 registers)",
            "FC03 holding 40044..40087 (44 registers)",
            "FC03 holding 40096..40107 (12 registers)",
            "FC03 holding 40114..40115 (2 registers)",
            "FC03 holding 40130..40131 (2 registers)",
            "FC03 holding 40138..40139 (2 registers)",
        ],
    ),
    // 22 points: 13 (6 unused) | 5 | 2 | 1 | 1.
    (
        "victron-gx",
        22,
        &[
            "FC03 holding 808..826 (19 registers)",
            "FC03 holding 840..844 (5 registers)",
            "FC03 holding 850..851 (2 registers)",
            "FC03 holding 860..860 (1 registers)",
            "FC03 holding 2700..2700 (1 registers)",
        ],
    ),
    // 17 points in one run.
    (
        "victron-gx-grid",
        17,
        &["FC03 holding 2616..2643 (28 registers)"],
    ),
    // 20 points: 19 (16 unused) | 1.
    (
        "victron-gx-vebus",
        20,
        &[
            "FC03 holding 3..37 (35 registers)",
            "FC03 holding 61..61 (1 registers)",
        ],
    ),
    // 8 points in one run.
    (
        "waveshare-modbus-rtu-relay",
        8,
        &["FC01 coil 0..7 (8 bits)"],
    ),
    // 24 points: 8 | 8 | 8.
    (
        "waveshare-modbus-rtu-relay-d",
        24,
        &[
            "FC01 coil 0..7 (8 bits)",
            "FC02 discrete 0..7 (8 bits)",
            "FC03 holding 4096..4103 (8 registers)",
        ],
    ),
    // 2 points in one run.
    ("xy-md02", 2, &["FC04 input 1..2 (2 registers)"]),
];

#[test]
fn check_on_a_config_using_every_profile_passes_and_counts_their_coalesced_reads() {
    let mut cfg = RTU.replace("9600", "115200");
    let profiles: Vec<_> = builtin().iter().collect();
    for (i, p) in profiles.iter().enumerate() {
        cfg += &format!(
            "[devices.{}]\nbus = \"rs485\"\nunit = {}\nprofile = \"{}\"\n",
            p.name,
            i + 1,
            p.name
        );
    }
    let (_dir, path) = config_dir(&cfg, &[]);
    let (code, out, err) = run(&["check"], &path);
    assert_eq!(code, 0, "{err}\n{out}");
    // Every profile's classes and units are what Home Assistant accepts.
    let warnings: Vec<&str> = out
        .lines()
        .chain(err.lines())
        .filter(|l| l.contains("warning"))
        .collect();
    assert!(warnings.is_empty(), "{}", warnings.join("\n"));
    let mut reads_per_second = 0.0;
    let mut names: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        READS_PER_POLL
            .iter()
            .map(|(name, _, _)| *name)
            .collect::<Vec<_>>(),
        "a built-in profile without its reads counted in READS_PER_POLL, or counted and gone"
    );
    for p in &profiles {
        let (_, points, reads) = READS_PER_POLL
            .iter()
            .find(|(name, _, _)| *name == p.name)
            .unwrap();
        // The device's lines of the listing: its header, then lines indented further.
        let block: Vec<&str> = out
            .split(&format!("\n  {}: bus rs485", p.name))
            .nth(1)
            .unwrap_or_else(|| panic!("no device {} in:\n{out}", p.name))
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with("    "))
            .collect();
        let block = block.join("\n");
        assert!(
            block.contains(&format!(
                "reads per poll: {} (for {points} points)",
                reads.len()
            )),
            "{}: {block}",
            p.name
        );
        let listed: Vec<&str> = block
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("FC"))
            .collect();
        assert_eq!(listed, *reads, "{}: {block}", p.name);
        let poll = p.poll.unwrap_or(Duration::from_secs(10)).as_secs_f64();
        reads_per_second += reads.len() as f64 / poll;
        assert!(
            block.contains(&format!(
                "profile      {} (built in (profiles/{}.toml))",
                p.name, p.name
            )),
            "{block}"
        );
    }
    assert!(
        out.contains(&format!("rs485: {reads_per_second:.1} reads/s")),
        "expected {reads_per_second:.1} reads/s in:\n{out}"
    );
}

#[test]
fn the_readme_supported_devices_table_matches_the_built_in_profiles() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let (begin, end) = ("<!-- profiles:begin -->\n", "<!-- profiles:end -->");
    let start = readme.find(begin).expect("README has the profiles markers") + begin.len();
    let stop = readme.find(end).unwrap();
    let table = fieldbridge::catalogue::readme_table(builtin());
    if readme[start..stop] != table {
        if std::env::var_os("FIELDBRIDGE_BLESS").is_some() {
            let updated = format!("{}{table}{}", &readme[..start], &readme[stop..]);
            std::fs::write(&path, updated).unwrap();
        } else {
            panic!(
                "README's supported devices table is out of date; run with FIELDBRIDGE_BLESS=1 to rewrite it:\n{table}"
            );
        }
    }
}

/// `profiles --check FILE [--dump DUMP]`, for a profile written from a manufacturer's PDF.
fn check_profile(args: &[&str]) -> (i32, String, String) {
    let args: Vec<&str> = std::iter::once("profiles")
        .chain(args.iter().copied())
        .collect();
    fieldbridge_cli(&args)
}

const MY_METER: &str = r#"manufacturer = "Acme"
model = "M-3"
buses = ["modbus-rtu"]
[document]
title = "M-3 Modbus register map"
version = "1.0"
[points.voltage]
register = "input:0"
type = "f32"
unit = "V"
device_class = "voltage"
[points.power]
register = "holding:10"
type = "i16"
scale_register = "holding:12"
unavailable = [0x8000]
unit = "W"
device_class = "power"
[points.energy]
register = "holding:20"
type = "u32"
order = "CDAB"
scale = 0.01
unit = "kWh"
device_class = "energy"
[points.missing]
register = "holding:30"
"#;

#[test]
fn a_users_profile_is_checked_and_decoded_against_a_register_dump() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("my-meter.toml");
    std::fs::write(&file, MY_METER).unwrap();
    // A dump as `fieldbridge read` prints it: two reads appended, with their decodings.
    let dump = dir.path().join("dump.txt");
    std::fs::write(
        &dump,
        "raw: 4366 6666\nregister          hex     u16    i16\ninput:0        0x4366   17254  17254\ninput:1        0x6666   26214  26214\nu32 from input:0:\n  ABCD: 1130784358\n\
         raw: fa24 0000 ffff 0000 0000 0000 0000 0000 0000 0000 e240 0001\n\
         holding:10     0xfa24   64036  -1500\nholding:11     0x0000       0      0\nholding:12     0xffff   65535     -1\n\
         holding:20     0xe240   57920 -7616\nholding:21     0x0001       1      1\n",
    )
    .unwrap();
    let (code, out, err) = check_profile(&[
        "--check",
        file.to_str().unwrap(),
        "--dump",
        dump.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}\n{out}");
    assert!(out.contains("my-meter.toml: ok (4 points)"), "{out}");
    let decoded = out.split("decoded from").nth(1).unwrap_or_default();
    let line = |name: &str| {
        decoded
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {out}"))
            .to_string()
    };
    assert!(line("voltage").ends_with("230.39999389648438 V"), "{out}");
    // -1500 × 10^-1 (the scale factor at holding:12 is -1).
    assert!(line("power").ends_with("-150.0 W"), "{out}");
    // 0x0001E240 = 123456, words swapped, × 0.01.
    assert!(line("energy").ends_with("1234.56 kWh"), "{out}");
    assert!(
        line("missing").contains("not in the dump: holding:30"),
        "{out}"
    );

    // The same profile with mistakes: file:line:col errors and exit 78.
    let broken = MY_METER
        .replace("type = \"i16\"", "type = \"int16\"")
        .replace("unavailable = [0x8000]", "unavailable = [\"none\"]");
    std::fs::write(&file, broken).unwrap();
    let (code, _, err) = check_profile(&["--check", file.to_str().unwrap()]);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("my-meter.toml:14:8: points.power.type: unknown type \"int16\""),
        "{err}"
    );
    assert!(
        err.contains("my-meter.toml:16:16: points.power.unavailable: expected a raw integer value"),
        "{err}"
    );
    // A dump with no registers in it is a usage error that says what a dump is.
    std::fs::write(&file, MY_METER).unwrap();
    std::fs::write(&dump, "nothing here\n").unwrap();
    let (code, _, err) = check_profile(&[
        "--check",
        file.to_str().unwrap(),
        "--dump",
        dump.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no registers in it"), "{err}");
}
