#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! `fieldbridge check` shows the Modbus reads each device's points coalesce into and each bus's
//! expected load, and warns when an RTU bus cannot keep up with its poll periods.

use std::process::Command;

fn check(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fieldbridge"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

/// A meter with 40 points in 3 contiguous runs on an RTU bus.
fn meter(baud: u32, poll: &str, devices: u8) -> String {
    let mut s =
        format!("[buses.rs485]\nkind = \"modbus-rtu\"\nport = \"/dev/ttyUSB9\"\nbaud = {baud}\n");
    for d in 1..=devices {
        s += &format!("[devices.m{d}]\nbus = \"rs485\"\nunit = {d}\npoll = \"{poll}\"\n");
        for a in 0..20 {
            s += &format!("[devices.m{d}.points.h{a}]\nregister = \"holding:{a}\"\n");
        }
        for a in 0..10 {
            s += &format!(
                "[devices.m{d}.points.f{a}]\nregister = \"input:{}\"\ntype = \"f32\"\n",
                100 + 2 * a
            );
        }
        for a in 0..10 {
            s += &format!("[devices.m{d}.points.c{a}]\nregister = \"coil:{a}\"\n");
        }
    }
    s
}

#[test]
fn check_prints_the_coalesced_reads_of_each_device() {
    let (code, out) = check(&meter(9600, "5s", 1));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("reads per poll: 3 (for 40 points)"), "{out}");
    assert!(out.contains("FC01 coil 0..9 (10 bits)"), "{out}");
    assert!(out.contains("FC04 input 100..119 (20 registers)"), "{out}");
    assert!(out.contains("FC03 holding 0..19 (20 registers)"), "{out}");
    assert!(out.contains("rs485: 0.6 reads/s"), "{out}");
    assert!(!out.contains("warning"), "{out}");
}

#[test]
fn check_warns_when_a_9600_baud_bus_cannot_keep_up() {
    // 20 meters × 3 reads every 250 ms at 9600 baud is far more than the wire carries.
    let (code, out) = check(&meter(9600, "250ms", 20));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warning: bus rs485 is") && out.contains("cannot keep up"),
        "{out}"
    );
    // The same load at 115200 baud fits.
    let (_, fast) = check(&meter(115200, "5s", 20));
    assert!(!fast.contains("warning"), "{fast}");
}

/// What Home Assistant would refuse is a warning with its line, and `check` still passes: the
/// gateway runs, and discovery leaves the refused hint out.
#[test]
fn check_warns_about_hints_home_assistant_rejects_naming_the_line() {
    let text = "[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"127.0.0.1:502\"\n[devices.m]\nbus = \"plc\"\nunit = 1\n[devices.m.points.energy]\nregister = \"input:0\"\ntype = \"u32\"\nunit = \"kWh\"\ndevice_class = \"energy\"\nstate_class = \"measurement\"\n[devices.m.points.temp]\nregister = \"input:2\"\nunit = \"C\"\ndevice_class = \"temperature\"\n[devices.m.points.door]\nregister = \"discrete:0\"\ndevice_class = \"temperature\"\n";
    let (code, out) = check(text);
    assert_eq!(code, 0, "{out}");
    let warnings: Vec<&str> = out.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert_eq!(warnings.len(), 3, "{out}");
    assert!(
        warnings[0].contains("config.toml:12:15: devices.m.points.energy.state_class:")
            && warnings[0].contains("\"measurement\" with device_class \"energy\""),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[1].contains(":15:8: devices.m.points.temp.unit:")
            && warnings[1].contains("\"°C\""),
        "{}",
        warnings[1]
    );
    assert!(
        warnings[2].contains(":19:16: devices.m.points.door.device_class:")
            && warnings[2].contains("binary_sensor has no device_class \"temperature\""),
        "{}",
        warnings[2]
    );
}
