#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! `fieldbridge check` on bad configs: every mistake is reported with file:line:col, the key and
//! a message that says what to do, all of them in one pass, and the exit code is 78.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_fieldbridge");

/// Runs `fieldbridge check` on `text` and returns (exit code, stderr with the temp path shown
/// as `config.toml`, stdout).
fn check(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).expect("write config");
    check_path(&path)
}

fn check_path(path: &Path) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("check")
        .arg("-c")
        .arg(path)
        .env_remove("FIELDBRIDGE_CONFIG")
        .output()
        .expect("run fieldbridge");
    let shown = path.display().to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&shown, "config.toml");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    (out.status.code().unwrap_or(-1), stderr, stdout)
}

/// The error lines (without the closing count line).
fn errors(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| !l.ends_with("error(s)"))
        .collect()
}

/// Asserts that `text` fails with exactly one error, `expected`.
fn fails_with(text: &str, expected: &str) {
    let (code, stderr, _) = check(text);
    assert_eq!(code, 78, "exit code for config error; stderr:\n{stderr}");
    assert_eq!(errors(&stderr), vec![expected], "full stderr:\n{stderr}");
}

const BUS: &str = "[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"127.0.0.1:502\"\n";

#[test]
fn the_example_config_passes_check_and_prints_its_topics() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let (code, stderr, stdout) = check_path(&example);
    assert_eq!(code, 0, "stderr:\n{stderr}");
    assert!(
        stdout.contains("ok (3 buses, 3 devices, 7 points)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("home/basement/sensor/boiler/temperature"),
        "{stdout}"
    );
    assert!(
        stdout.contains("home/garage/device/lamp/command"),
        "{stdout}"
    );
    assert!(stdout.contains("home/gateway/garage-pi/status"), "{stdout}");
}

#[test]
fn toml_syntax_error_names_line_and_column() {
    let (code, stderr, _) = check("[gateway]\nid = \"gw\nbase_topic = \"x\"\n");
    assert_eq!(code, 78);
    let first = errors(&stderr)[0];
    assert_eq!(
        first,
        "config.toml:2:9: invalid basic string, expected `\"`"
    );
}

#[test]
fn missing_file_is_a_config_error_naming_the_path() {
    let (code, stderr, _) = check_path(Path::new("/nonexistent/fieldbridge.toml"));
    assert_eq!(code, 78);
    assert!(
        stderr.starts_with("config.toml: cannot read config: No such file or directory"),
        "{stderr}"
    );
}

#[test]
fn unknown_top_level_section_is_rejected() {
    fails_with(
        "[gatway]\nid = \"gw\"\n",
        "config.toml:1:2: gatway: unknown key \"gatway\" (did you mean \"gateway\"?)",
    );
}

#[test]
fn unknown_device_key_suggests_the_nearest() {
    fails_with(
        &format!(
            "{BUS}[devices.d]\nbus = \"plc\"\nunit = 1\npolll = \"5s\"\n[devices.d.points.p]\nregister = \"input:0\"\n"
        ),
        "config.toml:7:1: devices.d.polll: unknown key \"polll\" (did you mean \"poll\"?)",
    );
}

#[test]
fn bad_duration_is_explained() {
    fails_with(
        &format!(
            "{BUS}[devices.d]\nbus = \"plc\"\nunit = 1\npoll = \"5 parsecs\"\n[devices.d.points.p]\nregister = \"input:0\"\n"
        ),
        "config.toml:7:8: devices.d.poll: invalid duration \"5 parsecs\" (unknown time unit \"parsecs\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)); expected e.g. \"250ms\", \"5s\" or \"30d\"",
    );
}

#[test]
fn duration_given_as_number_is_a_type_error() {
    fails_with(
        "[mqtt]\nkeep_alive = 30\n",
        "config.toml:2:14: mqtt.keep_alive: expected a duration string like \"250ms\", \"5s\" or \"30d\", found an integer",
    );
}

#[test]
fn unknown_register_table_lists_the_tables() {
    fails_with(
        &format!(
            "{BUS}[devices.boiler]\nbus = \"plc\"\nunit = 1\n[devices.boiler.points.temp]\nregister = \"holdng:3\"\n"
        ),
        "config.toml:8:12: devices.boiler.points.temp.register: unknown register table \"holdng\"; expected coil, discrete, input or holding",
    );
}

#[test]
fn device_on_an_undefined_bus_names_the_defined_ones() {
    fails_with(
        &format!(
            "{BUS}[devices.d]\nbus = \"rs458\"\nunit = 1\n[devices.d.points.p]\nregister = \"input:0\"\n"
        ),
        "config.toml:5:7: devices.d.bus: unknown bus \"rs458\"; defined buses: plc",
    );
}

#[test]
fn invalid_device_name_is_rejected() {
    fails_with(
        &format!(
            "{BUS}[devices.Boiler]\nbus = \"plc\"\nunit = 1\n[devices.Boiler.points.p]\nregister = \"input:0\"\n"
        ),
        "config.toml:4:10: devices.Boiler: invalid name \"Boiler\"; names use only a-z, 0-9, _ and -",
    );
}

#[test]
fn two_buses_on_one_serial_port_are_rejected() {
    fails_with(
        "[buses.a]\nkind = \"modbus-rtu\"\nport = \"/dev/ttyUSB0\"\n[buses.b]\nkind = \"serial\"\nport = \"/dev/ttyUSB0\"\n",
        "config.toml:6:8: buses.b.port: port \"/dev/ttyUSB0\" is already used by bus \"a\"; one bus owns each serial port",
    );
}

#[test]
fn min_above_max_is_rejected() {
    fails_with(
        &format!(
            "{BUS}[devices.d]\nbus = \"plc\"\nunit = 1\n[devices.d.points.sp]\nregister = \"holding:1\"\nwritable = true\nmin = 80\nmax = 5\n"
        ),
        "config.toml:10:7: devices.d.points.sp.min: min 80 is above max 5",
    );
}

#[test]
fn duplicate_map_labels_are_rejected() {
    fails_with(
        &format!(
            "{BUS}[devices.d]\nbus = \"plc\"\nunit = 1\n[devices.d.points.mode]\nregister = \"holding:1\"\nmap = {{ 0 = \"off\", 1 = \"on\", 2 = \"on\" }}\n"
        ),
        "config.toml:9:34: devices.d.points.mode.map.2: label \"on\" is used twice (also for 1); labels must be unique",
    );
}

#[test]
fn reserved_point_name_timestamp_is_rejected() {
    fails_with(
        &format!(
            "{BUS}[devices.d]\nbus = \"plc\"\nunit = 1\n[devices.d.points.timestamp]\nregister = \"input:0\"\n"
        ),
        "config.toml:7:19: devices.d.points.timestamp: \"timestamp\" is a reserved name (it is a key of the state and command payloads); choose another point name",
    );
}

#[test]
fn topic_template_without_device_is_rejected() {
    fails_with(
        "[topics]\nstate = \"{base}/{location}/state\"\n",
        "config.toml:2:9: topics.state: \"{base}/{location}/state\" must contain {device}",
    );
}

#[test]
fn topic_template_with_wildcard_is_rejected() {
    fails_with(
        "[topics]\nsensor = \"{base}/+/{device}/{point}\"\n",
        "config.toml:2:10: topics.sensor: \"{base}/+/{device}/{point}\" contains an MQTT wildcard (+ or #)",
    );
}

#[test]
fn coil_with_a_register_type_is_rejected() {
    fails_with(
        &format!(
            "{BUS}[devices.d]\nbus = \"plc\"\nunit = 1\n[devices.d.points.relay]\nregister = \"coil:0\"\ntype = \"f32\"\n"
        ),
        "config.toml:9:8: devices.d.points.relay.type: a coil holds single bits; type must be bool, not f32",
    );
}

#[test]
fn writable_input_register_is_rejected() {
    fails_with(
        &format!(
            "{BUS}[devices.d]\nbus = \"plc\"\nunit = 1\n[devices.d.points.t]\nregister = \"input:0\"\nwritable = true\n"
        ),
        "config.toml:9:12: devices.d.points.t.writable: input registers are read-only in Modbus; only coil and holding can be writable",
    );
}

#[test]
fn register_point_on_a_serial_bus_is_rejected() {
    fails_with(
        "[buses.ard]\nkind = \"serial\"\nport = \"/dev/ttyACM0\"\n[devices.w]\nbus = \"ard\"\n[devices.w.points.t]\nregister = \"input:0\"\n",
        "config.toml:7:12: devices.w.points.t.register: `register` applies to Modbus buses; serial points use `field`",
    );
}

#[test]
fn unknown_bus_kind_lists_the_kinds() {
    fails_with(
        "[buses.b]\nkind = \"modbus\"\naddress = \"1.2.3.4:502\"\n",
        "config.toml:2:8: buses.b.kind: unknown bus kind \"modbus\"; expected modbus-rtu, modbus-tcp, modbus-rtu-over-tcp or serial",
    );
}

#[test]
fn tcp_bus_without_address_is_rejected() {
    fails_with(
        "[buses.plc]\nkind = \"modbus-tcp\"\n",
        "config.toml:1:8: buses.plc.address: missing address (host:port)",
    );
}

#[test]
fn key_of_another_bus_kind_is_explained() {
    fails_with(
        "[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"1.2.3.4:502\"\nbaud = 9600\n",
        "config.toml:4:1: buses.plc.baud: \"baud\" does not apply to a modbus-tcp bus",
    );
}

#[test]
fn wrong_value_type_is_named() {
    fails_with(
        &format!(
            "{BUS}[devices.d]\nbus = \"plc\"\nunit = \"one\"\n[devices.d.points.p]\nregister = \"input:0\"\n"
        ),
        "config.toml:6:8: devices.d.unit: expected an integer, found a string",
    );
}

#[test]
fn unit_out_of_range_is_rejected() {
    fails_with(
        &format!(
            "{BUS}[devices.d]\nbus = \"plc\"\nunit = 300\n[devices.d.points.p]\nregister = \"input:0\"\n"
        ),
        "config.toml:6:8: devices.d.unit: 300 is out of range; expected 0 to 255",
    );
}

#[test]
fn unsupported_mqtt_url_scheme_is_rejected() {
    fails_with(
        "[mqtt]\nurl = \"tcp://broker:1883\"\n",
        "config.toml:2:7: mqtt.url: unsupported URL \"tcp://broker:1883\"; expected mqtt://host[:port] or mqtts://host[:port]",
    );
}

#[test]
fn reconnect_min_above_max_is_rejected() {
    fails_with(
        "[mqtt]\nreconnect_min = \"2m\"\nreconnect_max = \"60s\"\n",
        "config.toml:2:17: mqtt.reconnect_min: reconnect_min 2m is above reconnect_max 1m",
    );
}

#[test]
fn action_setting_an_unknown_point_is_rejected() {
    fails_with(
        &format!(
            "{BUS}[devices.lamp]\nbus = \"plc\"\nunit = 3\n[devices.lamp.points.state]\nregister = \"coil:0\"\nwritable = true\n[devices.lamp.actions.on]\nset = {{ stat = true }}\n"
        ),
        "config.toml:11:9: devices.lamp.actions.on.set.stat: unknown point \"stat\" (did you mean \"state\"?)",
    );
}

#[test]
fn action_value_above_max_is_rejected() {
    fails_with(
        &format!(
            "{BUS}[devices.d]\nbus = \"plc\"\nunit = 3\n[devices.d.points.level]\nregister = \"holding:0\"\nwritable = true\nmax = 100\n[devices.d.actions.full]\nset = {{ level = 120 }}\n"
        ),
        "config.toml:12:17: devices.d.actions.full.set.level: 120 is above max 100",
    );
}

#[test]
fn string_point_without_length_is_rejected() {
    fails_with(
        &format!(
            "{BUS}[devices.d]\nbus = \"plc\"\nunit = 3\n[devices.d.points.sn]\nregister = \"holding:0\"\ntype = \"string\"\n"
        ),
        "config.toml:7:19: devices.d.points.sn.length: a string point needs `length` (registers)",
    );
}

#[test]
fn client_certificate_without_key_is_rejected() {
    fails_with(
        "[mqtt]\nurl = \"mqtts://broker\"\ncert_file = \"/etc/c.pem\"\n",
        "config.toml:3:13: mqtt.cert_file: cert_file needs key_file",
    );
}

#[test]
fn a_file_with_several_mistakes_reports_all_of_them_in_file_order() {
    let text = format!(
        "[gateway]\nid = \"GW\"\n[mqtt]\nqueue = 0\n{BUS}[devices.d]\nbus = \"nope\"\nunit = 1\nfoo = 1\n[devices.d.points.p]\nregister = \"inptu:0\"\ntype = \"u17\"\n"
    );
    let (code, stderr, _) = check(&text);
    assert_eq!(code, 78);
    assert_eq!(
        errors(&stderr),
        vec![
            "config.toml:2:6: gateway.id: invalid name \"GW\"; names use only a-z, 0-9, _ and -",
            "config.toml:4:9: mqtt.queue: 0 is out of range; expected 1 to 10000000",
            "config.toml:9:7: devices.d.bus: unknown bus \"nope\"; defined buses: plc",
            "config.toml:11:1: devices.d.foo: unknown key \"foo\"; expected bus, unit, location, poll, offline_after, offline_retry, name, manufacturer, model, match, silence, write_multiple, profile, sunspec_base, points or actions",
            "config.toml:13:12: devices.d.points.p.register: unknown register table \"inptu\"; expected coil, discrete, input or holding",
            "config.toml:14:8: devices.d.points.p.type: unknown type \"u17\"; expected bool, u16, i16, u32, i32, u64, i64, f32, f64 or string",
        ],
        "full stderr:\n{stderr}"
    );
    assert!(
        stderr.trim_end().ends_with("config.toml: 6 error(s)"),
        "{stderr}"
    );
}

#[test]
fn invalid_regex_pattern_is_rejected() {
    fails_with(
        "[buses.ard]\nkind = \"serial\"\nport = \"/dev/ttyACM0\"\nformat = \"regex\"\npattern = '^T(?P<t>[-\\d.]+'\n",
        "config.toml:5:11: buses.ard.pattern: invalid regex: error: unclosed group",
    );
}

#[test]
fn unknown_line_ending_is_rejected_with_the_escapes_to_use() {
    fails_with(
        "[buses.a]\nkind = \"serial\"\nport = \"/dev/ttyACM0\"\nline_ending = \"crlf\"\n",
        "config.toml:4:15: buses.a.line_ending: unknown line ending \"crlf\"; expected \"\\n\", \"\\r\\n\" or \"\\r\"",
    );
}

#[test]
fn absurdly_long_durations_are_rejected() {
    fails_with(
        "[gateway]\nhealth_interval = \"500000000years\"\n",
        "config.toml:2:19: gateway.health_interval: too long; at most 3650 days",
    );
}

#[test]
fn history_max_size_takes_sizes_with_units_and_refuses_nonsense() {
    let ok = format!("[history]\nmax_size = \"64MB\"\n{BUS}");
    assert_eq!(check(&ok).0, 0);
    fails_with(
        &format!("[history]\nmax_size = \"12 parsecs\"\n{BUS}"),
        "config.toml:2:12: history.max_size: invalid size; expected e.g. \"512KiB\", \"64MB\" or \"1GB\"",
    );
    fails_with(
        &format!("[history]\nmax_size = \"1KiB\"\n{BUS}"),
        "config.toml:2:12: history.max_size: too small; at least 64KiB",
    );
}

#[test]
fn history_forward_mistakes_are_all_reported_with_their_keys() {
    let (code, stderr, _) = check(
        "[history]\nenabled = false\n[history.forward]\nurl = \"postgres://gw:hunter2@db.lan/home\"\nsslmode = \"verify\"\nca_file = \"/etc/ssl/ca.pem\"\ntabel = \"x\"\n",
    );
    assert_eq!(code, 78, "{stderr}");
    assert_eq!(
        errors(&stderr),
        vec![
            "config.toml:4:7: history.forward.url: a password in the URL would be shown by `check` and in logs; put it in password_file or FIELDBRIDGE_FORWARD_PASSWORD",
            "config.toml:5:11: history.forward.sslmode: unknown sslmode \"verify\"; expected disable, prefer, require, verify-ca or verify-full",
            "config.toml:7:1: history.forward.tabel: unknown key \"tabel\"; expected url, password_file, sslmode or ca_file",
        ],
        "{stderr}"
    );
    // The password itself is never echoed.
    assert!(!stderr.contains("hunter2"), "{stderr}");
    fails_with(
        "[history]\nenabled = false\n[history.forward]\nurl = \"postgres://gw@db.lan/home\"\n",
        "config.toml:3:10: history.forward: forwarding sends the local history, which history.enabled = false turns off",
    );
    fails_with(
        "[history.forward]\nurl = \"postgres://gw@db.lan/home\"\nca_file = \"/etc/ssl/ca.pem\"\n",
        "config.toml:3:11: history.forward.ca_file: ca_file is used only to verify the server: set sslmode to verify-ca or verify-full",
    );
    fails_with(
        "[history.forward]\nurl = \"mysql://gw@db.lan/home\"\n",
        "config.toml:2:7: history.forward.url: unsupported URL \"mysql://gw@db.lan/home\"; expected postgres://user@host[:port]/database",
    );
    fails_with(
        "[history.forward]\nsslmode = \"require\"\n",
        "config.toml:1:10: history.forward.url: missing url (postgres://user@host/database)",
    );
}

#[test]
fn check_shows_where_the_history_goes_without_a_password() {
    let (code, stderr, stdout) = check(
        "[history.forward]\nurl = \"postgres://gw@db.lan/home\"\nsslmode = \"verify-full\"\npassword_file = \"/nonexistent/pg.pass\"\n",
    );
    // The password file need not exist for `check` (README "Configuration").
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("forwarded to postgres://gw@db.lan/home (sslmode verify-full)"),
        "{stdout}"
    );
    let (code, _, stdout) = check("[history]\nenabled = false\n");
    assert_eq!(code, 0);
    assert!(stdout.contains("history off"), "{stdout}");
}

#[test]
fn the_example_forward_section_is_valid_once_uncommented() {
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml"))
            .unwrap();
    let mut uncommented = Vec::new();
    let mut in_forward = false;
    for line in example.lines() {
        if line.starts_with("# [history.forward]") {
            in_forward = true;
        } else if in_forward && !line.starts_with("# ") {
            in_forward = false;
        }
        uncommented.push(if in_forward { &line[2..] } else { line });
    }
    let text = uncommented.join("\n");
    assert!(text.contains("\n[history.forward]\nurl = "), "{text}");
    let (code, stderr, stdout) = check(&text);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("forwarded to postgres://fieldbridge@db.lan/home (sslmode verify-full)")
    );
}

#[test]
fn home_assistant_keys_are_checked() {
    let text = format!(
        "{BUS}[homeassistant]\nmode = \"devices\"\n[devices.d]\nbus = \"plc\"\nunit = 1\n[devices.d.points.t]\nregister = \"input:0\"\nentity_category = \"config\"\nicon = \"thermometer\"\n"
    );
    let (code, stderr, _) = check(&text);
    assert_eq!(code, 78, "{stderr}");
    assert_eq!(
        errors(&stderr),
        vec![
            "config.toml:5:8: homeassistant.mode: unknown mode \"devices\"; expected device or entity",
            "config.toml:11:19: devices.d.points.t.entity_category: Home Assistant refuses entity_category \"config\" on a read-only point (a sensor); use \"diagnostic\", or make the point writable",
            "config.toml:12:8: devices.d.points.t.icon: icon \"thermometer\" needs a prefix, as in \"mdi:thermometer\"",
        ],
        "{stderr}"
    );
}
