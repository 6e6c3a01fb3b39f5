#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! Commands end to end: MQTT command topic → validation → Modbus write → read-back → result and
//! state on the broker, against a real Modbus server and a real mosquitto.

mod common;

use common::json_of;

use common::WAIT;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::gateway::{GatewayProcess, InProcess};
use common::modbus::FakeModbus;
use common::mosquitto::{LinePublisher, Mosquitto, Subscriber, publish};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

fn config(port: u16, modbus: &str, extra_bus: &str) -> String {
    format!(
        r#"[gateway]
id = "cmd"
base_topic = "t"
location = "lab"
health_interval = "1s"
[mqtt]
url = "mqtt://127.0.0.1:{port}"
reconnect_min = "100ms"
reconnect_max = "1s"
[history]
path = "{{dir}}/history.db"
[buses.plc]
kind = "modbus-tcp"
address = "{modbus}"
{extra_bus}
[devices.lamp]
bus = "plc"
unit = 1
poll = "5s"
[devices.lamp.points.state]
register = "coil:0"
writable = true
map = {{ 0 = "off", 1 = "on" }}
[devices.lamp.points.brightness]
register = "holding:1"
writable = true
min = 0
max = 100
[devices.lamp.points.power]
register = "input:0"
[devices.lamp.points.offset]
register = "holding:2"
type = "i32"
writable = true
[devices.lamp.points.sp_abcd]
register = "holding:10"
type = "f32"
order = "ABCD"
writable = true
[devices.lamp.points.sp_cdab]
register = "holding:12"
type = "f32"
order = "CDAB"
writable = true
[devices.lamp.points.sp_badc]
register = "holding:14"
type = "f32"
order = "BADC"
writable = true
[devices.lamp.points.sp_dcba]
register = "holding:16"
type = "f32"
order = "DCBA"
writable = true
[devices.lamp.points.missing]
register = "holding:500"
writable = true
[devices.lamp.actions.turn_on]
set = {{ state = "on", brightness = 100 }}
"#
    )
}

const CMD: &str = "t/lab/device/lamp/command";
const RESULT: &str = "t/lab/device/lamp/command/result";

/// Sends a command with `id` and waits for its result.
fn command(broker: u16, sub: &Subscriber, id: &str, body: &str) -> Value {
    let payload = if body.trim() == "{}" {
        format!(r#"{{"id": "{id}"}}"#)
    } else {
        format!(r#"{{"id": "{id}", {}"#, body.trim().trim_start_matches('{'))
    };
    publish(broker, CMD, &payload, false);
    let m = sub
        .wait_for(RESULT, |p| json_of(p)["id"] == json!(id), WAIT)
        .unwrap_or_else(|| panic!("no result for {id}"));
    json_of(&m.payload)
}

fn writes(fake: &FakeModbus) -> Vec<(u8, u16)> {
    fake.log()
        .iter()
        .filter(|s| matches!(s.fc, 5 | 6 | 15 | 16))
        .map(|s| (s.fc, s.address))
        .collect()
}

async fn setup() -> (Mosquitto, FakeModbus, Subscriber, InProcess) {
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    fake.unit(1, |u| {
        u.missing.insert(500);
    });
    let addr = fake.serve_tcp().await;
    let sub = Subscriber::connect(broker.port, "t/#");
    let gw = InProcess::start(&config(broker.port, &addr.to_string(), "")).await;
    sub.wait_for(
        "t/lab/device/lamp/availability",
        |p| p.contains("online"),
        WAIT,
    )
    .expect("lamp online");
    (broker, fake, sub, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_commands_are_refused_naming_point_and_limit_and_nothing_is_written() {
    let (broker, fake, sub, gw) = setup().await;
    let cases = [
        (r#"{"brightness": 120}"#, "brightness: 120 is above max 100"),
        (r#"{"brightness": -5}"#, "brightness: -5 is below min 0"),
        (r#"{"volume": 3}"#, "volume: unknown point"),
        (r#"{"power": 3}"#, "power: not writable"),
        (
            r#"{"state": "dim"}"#,
            "state: unknown label \"dim\"; expected off or on",
        ),
        (
            r#"{"brightness": "bright"}"#,
            "brightness: expected a number, got \"bright\"",
        ),
        (
            r#"{"action": "dance"}"#,
            "unknown action \"dance\"; expected set, refresh or turn_on",
        ),
        (
            r#"{"state": "on", "brightness": 101}"#,
            "brightness: 101 is above max 100",
        ),
        // A key can't reach another device or point through topic syntax.
        (r#"{"../lamp2/state": 1}"#, "../lamp2/state: unknown point"),
        (r#"{"+/#": 1}"#, "+/#: unknown point"),
    ];
    for (i, (body, error)) in cases.iter().enumerate() {
        let r = command(broker.port, &sub, &format!("bad{i}"), body);
        assert_eq!(r["ok"], json!(false), "{body}");
        assert_eq!(r["error"], json!(error), "{body}");
    }
    // Refused without an id to echo: payloads above 16 KiB (refused unread), malformed JSON.
    let refused_unread = |payload: &str, error_start: &str, error_end: &str| {
        publish(broker.port, CMD, payload, false);
        let m = sub
            .wait_for(
                RESULT,
                |p| {
                    json_of(p)["error"]
                        .as_str()
                        .is_some_and(|e| e.starts_with(error_start) && e.ends_with(error_end))
                },
                WAIT,
            )
            .unwrap_or_else(|| panic!("{error_start}…{error_end} not answered"));
        assert_eq!(json_of(&m.payload)["ok"], json!(false));
    };
    let big = format!(r#"{{"id": "big", "pad": "{}"}}"#, "x".repeat(17 * 1024));
    refused_unread(&big, "command is", "at most 16384 are accepted");
    refused_unread("{not json", "malformed JSON", "");
    assert!(
        writes(&fake).is_empty(),
        "something was written: {:?}",
        writes(&fake)
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_named_actions_and_refresh_write_read_back_and_report() {
    let (broker, fake, sub, gw) = setup().await;
    // set: a coil by label and a u16.
    let r = command(
        broker.port,
        &sub,
        "s1",
        r#"{"state": "on", "brightness": 42}"#,
    );
    assert_eq!(
        r,
        json!({"id": "s1", "action": "set", "ok": true, "written": {"state": "on", "brightness": 42}})
    );
    assert_eq!(writes(&fake), vec![(6, 1), (5, 0)]);
    // A named action with an extra value: the payload wins over the action's own.
    fake.clear_log();
    let r = command(
        broker.port,
        &sub,
        "a1",
        r#"{"action": "turn_on", "brightness": 80}"#,
    );
    assert_eq!(r["ok"], json!(true), "{r}");
    assert_eq!(r["action"], json!("turn_on"));
    assert_eq!(r["written"], json!({"state": "on", "brightness": 80}));
    // i32 and f32 in every order, with the function codes the server saw.
    fake.clear_log();
    let r = command(
        broker.port,
        &sub,
        "f1",
        r#"{"offset": -70000, "sp_abcd": 21.5, "sp_cdab": 21.5, "sp_badc": 21.5, "sp_dcba": 21.5}"#,
    );
    assert_eq!(r["ok"], json!(true), "{r}");
    assert_eq!(r["written"]["offset"], json!(-70000));
    for k in ["sp_abcd", "sp_cdab", "sp_badc", "sp_dcba"] {
        assert_eq!(r["written"][k], json!(21.5), "{k}");
    }
    assert!(
        writes(&fake).iter().all(|(fc, _)| *fc == 16),
        "{:?}",
        writes(&fake)
    );
    let regs = fake.unit(1, |u| {
        [10u16, 11, 12, 13, 14, 15, 16, 17].map(|a| *u.holdings.get(&a).unwrap_or(&0))
    });
    assert_eq!(
        regs,
        [
            0x41AC, 0x0000, 0x0000, 0x41AC, 0xAC41, 0x0000, 0x0000, 0xAC41
        ]
    );
    // The retained state carries the read-back values.
    let state = sub
        .wait_for(
            "t/lab/device/lamp/state",
            |p| json_of(p)["offset"] == json!(-70000),
            WAIT,
        )
        .expect("state after write");
    assert_eq!(json_of(&state.payload)["brightness"], json!(80));
    // refresh: reads every point now and publishes the state.
    fake.set_input(1, 0, &[321]);
    sub.clear();
    let r = command(broker.port, &sub, "r1", r#"{"action": "refresh"}"#);
    assert_eq!(
        r,
        json!({"id": "r1", "action": "refresh", "ok": true, "written": {}})
    );
    let state = sub.wait_for(
        "t/lab/device/lamp/state",
        |p| json_of(p)["power"] == json!(321),
        WAIT,
    );
    assert!(state.is_some(), "refresh did not publish the state");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_clamps_a_write_is_reported_with_the_value_it_kept() {
    let (broker, fake, sub, gw) = setup().await;
    fake.unit(1, |u| {
        u.clamp.insert(1, 50);
    });
    let r = command(broker.port, &sub, "c1", r#"{"brightness": 90}"#);
    assert_eq!(r["ok"], json!(true));
    assert_eq!(r["written"], json!({"brightness": 50}));
    let state = sub.wait_for(
        "t/lab/device/lamp/state",
        |p| json_of(p)["brightness"] == json!(50),
        WAIT,
    );
    assert!(state.is_some());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceptions_and_timeouts_are_answered_by_name() {
    let (broker, fake, sub, gw) = setup().await;
    let r = command(broker.port, &sub, "e1", r#"{"missing": 1}"#);
    assert_eq!(r["ok"], json!(false));
    assert_eq!(r["error"], json!("missing: illegal data address"));
    fake.unit(1, |u| u.silent = true);
    let r = command(broker.port, &sub, "e2", r#"{"brightness": 1}"#);
    assert_eq!(r["ok"], json!(false));
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .starts_with("brightness: timeout"),
        "{r}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_during_a_long_poll_cycle_is_written_before_the_rest_of_the_cycle() {
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    // Six devices answering in 600 ms each: a cycle of ~6 s, and 600 ms for the command to
    // reach the gateway before the next poll starts, even on a loaded machine.
    for u in 1..=6 {
        fake.unit(u, |x| x.delay = Duration::from_millis(600));
    }
    let addr = fake.serve_tcp().await;
    let mut cfg = config(broker.port, &addr.to_string(), "timeout = \"2s\"");
    cfg = cfg.replace("poll = \"5s\"", "poll = \"30s\"");
    for u in 2..=6 {
        cfg += &format!(
            "[devices.m{u}]\nbus = \"plc\"\nunit = {u}\npoll = \"30s\"\n[devices.m{u}.points.v]\nregister = \"holding:0\"\nwritable = true\n"
        );
    }
    let sub = Subscriber::connect(broker.port, "t/#");
    let gw = InProcess::start(&cfg).await;
    // Once the cycle is under way, command a device whose own poll is still waiting in the
    // bus's queue: the write must not wait for that poll (nor for the rest of the cycle).
    common::until(
        WAIT,
        || fake.log().iter().filter(|s| s.fc <= 4).count() >= 2,
        || "the cycle never started".into(),
    )
    .await;
    let seen: Vec<u8> = fake.log().iter().map(|s| s.unit).collect();
    let u = (2..=6u8)
        .find(|u| !seen.contains(u))
        .expect("a device not polled yet");
    publish(
        broker.port,
        &format!("t/lab/device/m{u}/command"),
        r#"{"id": "mid", "v": 7}"#,
        false,
    );
    let result = format!("t/lab/device/m{u}/command/result");
    let r = sub
        .wait_for(&result, |p| p.contains("\"mid\""), WAIT)
        .expect("result");
    assert_eq!(json_of(&r.payload)["ok"], json!(true), "{}", r.payload);
    // The cycle ends: every device read once.
    common::until(
        WAIT,
        || (1..=6u8).all(|d| fake.log().iter().any(|s| s.unit == d && s.fc <= 4)),
        || format!("the cycle never ended: {:?}", fake.log()),
    )
    .await;
    let log = fake.log();
    let write_at = log.iter().position(|s| s.fc == 6).expect("written");
    assert_eq!(log[write_at].unit, u);
    assert!(
        log[..write_at].iter().all(|s| s.unit != u),
        "the write waited for its device's poll: {log:?}"
    );
    let reads_after = log[write_at..]
        .iter()
        .filter(|s| s.fc <= 4 && s.unit != u)
        .count();
    assert!(
        reads_after >= 1,
        "the write waited for the whole cycle: {log:?}"
    );
    gw.stop().await;
}

/// A command taken while its device's poll is on the wire: that poll read the register before
/// the write, and its (older) value must not be published after the command's result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_that_read_before_a_write_does_not_publish_its_older_value_after_it() {
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    fake.unit(2, |x| x.delay = Duration::from_millis(800));
    fake.set_holding(2, 0, &[5]);
    let addr = fake.serve_tcp().await;
    let mut cfg = config(broker.port, &addr.to_string(), "timeout = \"2s\"");
    cfg = cfg.replace("poll = \"5s\"", "poll = \"30s\"");
    cfg += "[devices.m2]\nbus = \"plc\"\nunit = 2\npoll = \"30s\"\n[devices.m2.points.v]\nregister = \"holding:0\"\nwritable = true\n";
    let sub = Subscriber::connect(broker.port, "t/lab/#");
    let gw = InProcess::start(&cfg).await;
    // m2's first poll is on the wire (the device answers in 800 ms): command it now.
    common::until(
        WAIT,
        || fake.log().iter().any(|s| s.unit == 2),
        || "m2 never polled".into(),
    )
    .await;
    publish(
        broker.port,
        "t/lab/device/m2/command",
        r#"{"id": "w", "v": 7}"#,
        false,
    );
    let r = sub
        .wait_for(
            "t/lab/device/m2/command/result",
            |p| p.contains("\"w\""),
            WAIT,
        )
        .expect("result");
    assert_eq!(json_of(&r.payload)["ok"], json!(true), "{}", r.payload);
    // Something that must not happen: an older value published after the result. The poll's
    // answer was due before the write; half a second more is where it would show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = fake.log();
    let first_read = log.iter().position(|s| s.unit == 2 && s.fc == 3).unwrap();
    let write = log.iter().position(|s| s.unit == 2 && s.fc == 6).unwrap();
    assert!(
        first_read < write,
        "the poll was not before the write: {log:?}"
    );
    // Whatever was published of v, the last is the written value.
    let states: Vec<Value> = sub
        .on("t/lab/sensor/m2/v")
        .iter()
        .map(|m| json_of(&m.payload)["value"].clone())
        .collect();
    assert_eq!(states.last(), Some(&json!(7)), "published: {states:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos1_command_sent_while_the_gateway_was_stopped_is_executed_after_restart() {
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    fake.unit(1, |_| {});
    let addr = fake.serve_tcp().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(broker.port, &addr.to_string(), "")
        .replace("{dir}", &dir.path().display().to_string());
    let status = "t/gateway/cmd/status";
    let mut gw = GatewayProcess::spawn(&cfg, &[]);
    assert!(
        common::mosquitto::wait_retained(broker.port, status, |p| p.contains("online"), WAIT)
            .is_some()
    );
    gw.signal(Signal::SIGTERM);
    assert_eq!(gw.wait_exit(WAIT).and_then(|s| s.code()), Some(0));
    // The broker keeps the command for our persistent session (clean_session = false).
    let sub = Subscriber::connect(broker.port, RESULT);
    publish(
        broker.port,
        CMD,
        r#"{"id": "while-away", "brightness": 33}"#,
        false,
    );
    assert!(writes(&fake).is_empty());
    let _gw = GatewayProcess::spawn(&cfg, &[]);
    let r = sub
        .wait_for(RESULT, |p| p.contains("while-away"), WAIT)
        .expect("command executed after restart");
    assert_eq!(json_of(&r.payload)["ok"], json!(true));
    assert_eq!(fake.unit(1, |u| u.holdings.get(&1).copied()), Some(33));
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_malformed_commands_are_counted_cost_bounded_memory_and_valid_ones_still_work()
{
    // mosquitto keeps at most 1,000 QoS 1 messages queued per client by default and drops the
    // rest of a burst silently; this test is about what reaches the gateway, so no limit.
    let broker = Mosquitto::start_with("allow_anonymous true\nmax_queued_messages 0\n", None);
    let fake = FakeModbus::new();
    fake.unit(1, |_| {});
    let addr = fake.serve_tcp().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(broker.port, &addr.to_string(), "")
        .replace("{dir}", &dir.path().display().to_string());
    let sub = Subscriber::connect(broker.port, "t/gateway/cmd/health");
    let results = Subscriber::connect(broker.port, RESULT);
    let mut gw = GatewayProcess::spawn(&cfg, &[("RUST_LOG", "info")]);
    let pid = gw.pid().as_raw() as u32;
    assert!(
        sub.wait_for("t/gateway/cmd/health", |_| true, WAIT)
            .is_some()
    );
    let rss_before = rss_kib(pid);

    // 10,000 malformed commands through one mosquitto_pub -l, valid ones sent alongside.
    let mut flood = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-q",
            "1",
            "-t",
            CMD,
            "-l",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = flood.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        for i in 0..10_000 {
            let line = match i % 4 {
                0 => "{not json".to_string(),
                1 => format!(r#"{{"brightness": {}}}"#, 1000 + i),
                2 => r#"{"nope": 1}"#.to_string(),
                _ => "[1,2,3]".to_string(),
            };
            writeln!(stdin, "{line}").unwrap();
        }
    });
    for i in 0..5 {
        publish(
            broker.port,
            CMD,
            &format!(r#"{{"id": "valid{i}", "brightness": {i}}}"#),
            false,
        );
    }
    writer.join().unwrap();
    let _ = flood.wait();
    for i in 0..5 {
        let r = results.wait_for(
            RESULT,
            |p| p.contains(&format!("\"valid{i}\"")),
            Duration::from_secs(30),
        );
        let r = r.unwrap_or_else(|| panic!("valid{i} got no result during the flood"));
        assert_eq!(json_of(&r.payload)["ok"], json!(true));
    }
    let health = sub
        .wait_for(
            "t/gateway/cmd/health",
            |p| json_of(p)["commands"]["rejected"] == json!(10_000),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|| {
            panic!(
                "rejected counter never reached 10000: {:?}",
                sub.seen().last()
            )
        });
    assert_eq!(json_of(&health.payload)["commands"]["accepted"], json!(5));
    assert!(gw.is_running());
    let rss_after = rss_kib(pid);
    assert!(
        rss_after < rss_before + 8 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // The refusals are logged rate-limited, not one line each.
    let refusals = gw.log().matches("command refused").count();
    assert!(refusals <= 5, "{refusals} log lines for the flood");
}

fn small_config(port: u16, bus: &str, devices: &str) -> String {
    format!(
        "[gateway]\nid = \"cmd\"\nbase_topic = \"t\"\nlocation = \"lab\"\nhealth_interval = \"1s\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nreconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n[history]\npath = \"{{dir}}/history.db\"\n[homeassistant]\ndiscovery = false\n{bus}\n{devices}"
    )
}

/// README "Sending commands": a command for an offline device is refused at once ("device offline") with no
/// bus time — also while the device's probe waits out a 2 s timeout on the wire — and
/// `refresh` is the exception: it tries the device once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_for_an_offline_device_is_refused_at_once_and_refresh_tries_it_once() {
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    fake.unit(2, |u| u.silent = true);
    fake.unit(3, |u| u.silent = true);
    let addr = fake.serve_tcp().await;
    // `probing` is tried every second (a probe almost always on the wire); `quiet` every minute.
    let cfg = small_config(
        broker.port,
        &format!(
            "[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"{addr}\"\ntimeout = \"2s\"\nretries = 0\n"
        ),
        "[devices.probing]\nbus = \"plc\"\nunit = 2\npoll = \"1s\"\noffline_after = 1\noffline_retry = \"1s\"\n[devices.probing.points.v]\nregister = \"holding:0\"\nwritable = true\n\
         [devices.quiet]\nbus = \"plc\"\nunit = 3\npoll = \"1s\"\noffline_after = 1\noffline_retry = \"60s\"\n[devices.quiet.points.v]\nregister = \"holding:0\"\nwritable = true\n",
    );
    let sub = Subscriber::connect(broker.port, "t/#");
    let gw = InProcess::start(&cfg).await;
    for d in ["probing", "quiet"] {
        sub.wait_for(
            &format!("t/lab/device/{d}/availability"),
            |p| p.contains("offline"),
            WAIT,
        )
        .unwrap_or_else(|| panic!("{d} offline"));
    }
    let mut latencies = Vec::new();
    for d in ["probing", "quiet"] {
        let mut publisher = LinePublisher::start(broker.port, &format!("t/lab/device/{d}/command"));
        let result = format!("t/lab/device/{d}/command/result");
        for i in 0..5 {
            let id = format!("{d}{i}");
            let sent = publisher.send(&format!(r#"{{"id": "{id}", "v": 7}}"#));
            let m = sub
                .wait_for(&result, |p| p.contains(&format!("\"{id}\"")), WAIT)
                .expect("refused");
            latencies.push(m.at.duration_since(sent));
            assert_eq!(
                json_of(&m.payload),
                json!({"id": id, "action": "set", "ok": false, "error": "device offline"})
            );
            // Commands spread over time, as a user's clicks: not one burst the link batches
            // (each latency is then that of a lone command, the thing measured).
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
    assert!(writes(&fake).is_empty(), "a command reached the bus");
    // Sending it would cost at least one 2 s timeout. Answered within a tenth of that every
    // time, even on a loaded machine, and the path itself within 50 ms (the best of ten,
    // which load can't spoil).
    latencies.sort();
    assert!(
        latencies.iter().all(|l| *l < Duration::from_millis(500)),
        "{latencies:?}"
    );
    assert!(latencies[0] < Duration::from_millis(50), "{latencies:?}");
    println!("offline refusals answered in {latencies:?}");
    // Counted in health.
    assert!(
        sub.wait_for(
            "t/gateway/cmd/health",
            |p| json_of(p)["commands"]["offline"] == json!(10),
            WAIT
        )
        .is_some(),
        "offline refusals not counted"
    );
    // `refresh` tries the device: exactly one read on the wire, then the answer.
    let frames = |fake: &FakeModbus| fake.log().iter().filter(|s| s.unit == 3).count();
    let before = frames(&fake);
    publish(
        broker.port,
        "t/lab/device/quiet/command",
        r#"{"id": "r", "action": "refresh"}"#,
        false,
    );
    let m = sub
        .wait_for(
            "t/lab/device/quiet/command/result",
            |p| p.contains("\"r\""),
            WAIT,
        )
        .expect("refresh answered");
    assert_eq!(
        json_of(&m.payload),
        json!({"id": "r", "action": "refresh", "ok": false, "error": "device offline: no answer"})
    );
    assert_eq!(frames(&fake), before + 1, "refresh tried the device once");
    gw.stop().await;
}

/// A command left retained on the broker would run at every (re)subscription: it is refused
/// with a warning naming its topic, whether it was there before the gateway started or was
/// published while it ran (that one, reaching a live subscriber unflagged under MQTT 3.1.1,
/// may run once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_command_is_not_executed_at_a_start_or_a_reconnect() {
    // Persistence, so the retained command and our session outlive a broker restart.
    let mut broker = Mosquitto::start_with(
        "allow_anonymous true\npersistence true\npersistence_location {dir}/\n",
        None,
    );
    let fake = FakeModbus::new();
    fake.unit(1, |_| {});
    let addr = fake.serve_tcp().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(broker.port, &addr.to_string(), "")
        .replace("{dir}", &dir.path().display().to_string());
    // Retained before the gateway exists.
    publish(broker.port, CMD, r#"{"id": "old", "brightness": 11}"#, true);
    let sub = Subscriber::connect(broker.port, RESULT);
    let gw = GatewayProcess::spawn(&cfg, &[]);
    let r = sub
        .wait_for(RESULT, |p| p.contains("\"old\""), WAIT)
        .expect("refused at start");
    let r = json_of(&r.payload);
    assert_eq!(r["ok"], json!(false));
    assert!(r["error"].as_str().unwrap().contains("retained"), "{r}");
    assert!(
        gw.wait_log(&format!("topic={CMD}"), WAIT) && gw.log().contains("command refused"),
        "no warning naming the topic:\n{}",
        gw.log()
    );
    assert!(writes(&fake).is_empty(), "the retained command was written");
    // Published retained while the gateway runs: delivered live, not flagged, so it may run.
    publish(
        broker.port,
        CMD,
        r#"{"id": "live", "brightness": 22}"#,
        true,
    );
    let r = sub
        .wait_for(RESULT, |p| p.contains("\"live\""), WAIT)
        .expect("live");
    assert_eq!(json_of(&r.payload)["ok"], json!(true), "{}", r.payload);
    assert_eq!(writes(&fake).len(), 1);
    // The broker restarts (with the retained command on disk); the gateway reconnects and
    // subscribes again, and the broker hands the command over flagged retained. (The history
    // is where to look: a subscriber of ours may reconnect after the result went out.)
    broker.restart_saving();
    let db = dir.path().join("history.db");
    let refused_again = common::poll_queried(WAIT, Duration::from_millis(200), async || {
        let pool = fieldbridge::history::open_read_only(&db).await.ok()?;
        let events = fieldbridge::history::events(&pool)
            .await
            .unwrap_or_default();
        events
            .iter()
            .any(|e| {
                e.kind == "command" && e.detail.contains("live") && e.detail.contains("retained")
            })
            .then_some(())
    })
    .await;
    assert!(
        refused_again.is_some(),
        "not refused at the reconnect:\n{}",
        gw.log()
    );
    assert_eq!(writes(&fake).len(), 1, "written again at the reconnect");
    assert!(gw.log().contains("mqtt connected"));
}

/// A gateway killed (-9) after the device took the write of `{"id": "once", "brightness": 44}`
/// and before the result went out. It had not acknowledged the command, so the broker
/// delivers it again at the next start.
struct Killed {
    broker: Mosquitto,
    fake: FakeModbus,
    sub: Subscriber,
    cfg: String,
    _dir: tempfile::TempDir,
}

async fn killed_during_a_write() -> Killed {
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    fake.unit(1, |_| {});
    let addr = fake.serve_tcp().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(broker.port, &addr.to_string(), "timeout = \"5s\"")
        .replace("poll = \"5s\"", "poll = \"60s\"")
        .replace("{dir}", &dir.path().display().to_string());
    let sub = Subscriber::connect(broker.port, "t/#");
    let gw = GatewayProcess::spawn(&cfg, &[]);
    sub.wait_for(
        "t/lab/device/lamp/availability",
        |p| p.contains("online"),
        WAIT,
    )
    .expect("online");
    // The device now takes 1.5 s to answer: the write is applied, its answer is pending.
    fake.unit(1, |u| u.delay = Duration::from_millis(1_500));
    publish(
        broker.port,
        CMD,
        r#"{"id": "once", "brightness": 44}"#,
        false,
    );
    common::until(
        WAIT,
        || !writes(&fake).is_empty(),
        || "never written".into(),
    )
    .await;
    gw.signal(Signal::SIGKILL);
    drop(gw);
    assert!(sub.on(RESULT).is_empty(), "answered before the kill");
    // The device did take it (its answer is still on its way to nobody).
    common::until(
        WAIT,
        || fake.unit(1, |u| u.holdings.get(&1).copied()) == Some(44),
        || "the device never held the write".into(),
    )
    .await;
    fake.unit(1, |u| u.delay = Duration::ZERO);
    Killed {
        broker,
        fake,
        sub,
        cfg,
        _dir: dir,
    }
}

const INTERRUPTED: &str = r#"{"id": "once", "action": "set", "ok": false, "error": "interrupted", "written": {"brightness": 44}}"#;

/// Waits for the `n`th result (1-based) and returns it.
fn nth_result(sub: &Subscriber, n: usize, gw: &GatewayProcess) -> Value {
    let m = sub
        .wait_nth(RESULT, n, WAIT)
        .unwrap_or_else(|| panic!("no result #{n}; results {:?}\n{}", sub.on(RESULT), gw.log()));
    json_of(&m.payload)
}

/// The id was on disk before the write, so the command the broker delivers again after the
/// restart is not written twice: it is answered "interrupted", with what the device holds of
/// it; a later delivery gets that result again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_redelivered_after_a_kill_9_is_written_once_and_answered_interrupted() {
    let k = killed_during_a_write().await;
    let gw = GatewayProcess::spawn(&k.cfg, &[]);
    assert_eq!(nth_result(&k.sub, 1, &gw), json_of(INTERRUPTED));
    assert_eq!(
        writes(&k.fake),
        vec![(6, 1)],
        "the device saw more than one write"
    );
    // Delivered once more (a reconnect, a sender's retry): the first result again, no write.
    publish(
        k.broker.port,
        CMD,
        r#"{"id": "once", "brightness": 44}"#,
        false,
    );
    assert_eq!(nth_result(&k.sub, 2, &gw), json_of(INTERRUPTED));
    assert_eq!(writes(&k.fake).len(), 1);
}

/// How far ahead of this machine's clock the gateway's is, in hours, from the timestamp of its
/// first log line.
fn log_clock_hours(gw: &GatewayProcess) -> f64 {
    let log = gw.log();
    let stamp = log
        .lines()
        .find_map(|l| l.split_whitespace().next())
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .unwrap_or_else(|| panic!("no timestamp in the log:\n{log}"));
    let now = std::time::SystemTime::now();
    match stamp.duration_since(now) {
        Ok(ahead) => ahead.as_secs_f64() / 3600.0,
        Err(e) => -e.duration().as_secs_f64() / 3600.0,
    }
}

/// A power cut on a Raspberry Pi, which has no real-time clock: after it, NTP steps the clock
/// by hours, ahead or back. The command the broker delivers again is answered "interrupted"
/// 65 s "later"; two hours, a day later or a day earlier on the wall clock (the id window is the
/// gateway's own time) its result is published again, never written again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_a_power_cut_and_clock_steps_a_command_is_never_written_twice() {
    let Some(lib) = common::libfaketime() else {
        common::cannot_run(
            "libfaketime is not installed (`scripts/setup.sh --tests` installs faketime)",
        );
        return;
    };
    let k = killed_during_a_write().await;
    let lib = lib.display().to_string();
    let stepped = |by: &'static str| {
        GatewayProcess::spawn(
            &k.cfg,
            &[
                ("LD_PRELOAD", lib.as_str()),
                ("FAKETIME", by),
                ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
                ("FAKETIME_NO_CACHE", "1"),
            ],
        )
    };
    // Restarted 65 s later (as after a short power cut, the clock set right meanwhile).
    let mut gw = stepped("+65s");
    assert_eq!(nth_result(&k.sub, 1, &gw), json_of(INTERRUPTED));
    assert_eq!(writes(&k.fake), vec![(6, 1)], "written again at +65 s");
    let hours = log_clock_hours(&gw);
    assert!(
        (hours * 3600.0 - 65.0).abs() < 10.0,
        "the clock was not stepped: {hours} h"
    );
    for (n, by, want) in [(2, "+2h", 2.0), (3, "+25h", 25.0), (4, "-1d", -24.0)] {
        gw.signal(Signal::SIGTERM);
        assert!(gw.wait_exit(WAIT).is_some(), "no stop:\n{}", gw.log());
        // Delivered again while the gateway is down (the broker keeps it for its session).
        publish(
            k.broker.port,
            CMD,
            r#"{"id": "once", "brightness": 44}"#,
            false,
        );
        gw = stepped(by);
        assert_eq!(nth_result(&k.sub, n, &gw), json_of(INTERRUPTED), "at {by}");
        assert_eq!(writes(&k.fake).len(), 1, "written again at {by}");
        let hours = log_clock_hours(&gw);
        assert!(
            (hours - want).abs() < 0.1,
            "the clock was not stepped: {hours} h"
        );
    }
    // The gateway under the stepped clock executes new commands as ever.
    let r = command(k.broker.port, &k.sub, "new", r#"{"brightness": 45}"#);
    assert_eq!(r["ok"], json!(true), "{r}");
    assert_eq!(writes(&k.fake).len(), 2);
}

/// Two devices with four 0.3 s reads each, polled continuously on one RTU bus: a command
/// waits for the one read on the wire at most, never for the rest of a poll. Its latency is at
/// most one read + its write + its read-back (0.9 s; 1.5 s allowed here for a loaded
/// machine). Waiting for the whole poll of the other device, as before, took 1.4–2.3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_busy_rtu_bus_a_command_waits_for_one_read_at_most() {
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    for u in [1, 2] {
        fake.unit(u, |x| x.delay = Duration::from_millis(300));
    }
    let tmp = tempfile::tempdir().unwrap();
    let bus = fake.serve_rtu(tmp.path());
    let mut devices = String::new();
    for (u, name) in [(1, "a"), (2, "b")] {
        devices += &format!("[devices.{name}]\nbus = \"rs485\"\nunit = {u}\npoll = \"1s\"\n");
        // Ten registers apart: four reads per poll.
        for p in 0..4 {
            devices += &format!(
                "[devices.{name}.points.p{p}]\nregister = \"holding:{}\"\nwritable = true\n",
                p * 10
            );
        }
    }
    let cfg = small_config(
        broker.port,
        &format!(
            "[buses.rs485]\nkind = \"modbus-rtu\"\nport = \"{}\"\ntimeout = \"1s\"\n",
            bus.path_str()
        ),
        &devices,
    );
    let sub = Subscriber::connect(broker.port, "t/lab/device/+/command/result");
    let gw = InProcess::start(&cfg).await;
    // Both devices polling: a cycle is 2.4 s of reads, back to back.
    common::until(
        WAIT,
        || fake.log().iter().filter(|s| s.unit == 2).count() >= 4,
        || "not polling".into(),
    )
    .await;
    let mut publisher = LinePublisher::start(broker.port, "t/lab/device/a/command");
    let mut latencies = Vec::new();
    for i in 0..8u64 {
        // Spread over the 2.4 s cycle at varied offsets, so that some land in a's poll and some
        // in b's: when a command arrives relative to the reads is the thing varied.
        tokio::time::sleep(Duration::from_millis(400 + 137 * i)).await;
        let id = format!("c{i}");
        let sent = publisher.send(&format!(r#"{{"id": "{id}", "p1": {i}}}"#));
        let m = sub
            .wait_for(
                "t/lab/device/a/command/result",
                |p| p.contains(&format!("\"{id}\"")),
                WAIT,
            )
            .expect("result");
        assert_eq!(json_of(&m.payload)["ok"], json!(true), "{}", m.payload);
        latencies.push(m.at.duration_since(sent));
    }
    latencies.sort();
    println!("command latencies on the busy RTU bus: {latencies:?}");
    assert!(
        latencies.iter().all(|l| *l < Duration::from_millis(1_500)),
        "a command waited for more than one read: {latencies:?}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_fails_part_way_names_what_was_written_what_failed_and_what_was_not() {
    let (broker, fake, sub, gw) = setup().await;
    // Points are written in name order: brightness, missing (refused by the device), offset.
    let r = command(
        broker.port,
        &sub,
        "p1",
        r#"{"brightness": 5, "missing": 1, "offset": 3}"#,
    );
    assert_eq!(
        r,
        json!({"id": "p1", "action": "set", "ok": false,
            "error": "missing: illegal data address",
            "written": {"brightness": 5}, "failed": "missing", "not_written": ["offset"]})
    );
    assert_eq!(writes(&fake), vec![(6, 1), (6, 500)], "offset was written");
    // The written point is in the state all the same.
    let state = sub.wait_for(
        "t/lab/device/lamp/state",
        |p| json_of(p)["brightness"] == json!(5),
        WAIT,
    );
    assert!(state.is_some());
    gw.stop().await;
}
