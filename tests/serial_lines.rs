#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! Line-based serial devices over a socat pseudo-terminal pair, against a real mosquitto.

mod common;

use common::json_of;

use common::WAIT;

use std::time::Duration;

use common::gateway::InProcess;
use common::mosquitto::{Mosquitto, Subscriber, publish};
use common::pty::SocatPair;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn head(port: u16, id: &str, tty: &str, format: &str) -> String {
    format!(
        "[gateway]\nid = \"{id}\"\nbase_topic = \"t\"\nlocation = \"lab\"\nhealth_interval = \"1s\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\n[history]\npath = \"{{dir}}/h.db\"\n[buses.ard]\nkind = \"serial\"\nport = \"{tty}\"\nbaud = 115200\ntimeout = \"300ms\"\n{format}\n"
    )
}

/// The next line the device receives.
async fn next<R: tokio::io::AsyncBufRead + Unpin>(lines: &mut tokio::io::Lines<R>) -> String {
    tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("a line within the wait")
        .unwrap()
        .unwrap()
}

async fn say(dev: &mut tokio_serial::SerialStream, bytes: &[u8]) {
    dev.write_all(bytes).await.unwrap();
    dev.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_are_routed_by_match_to_two_devices_sharing_the_line() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let pty = SocatPair::new(tmp.path());
    let cfg = head(broker.port, "sj", &pty.path_str(), "format = \"json\"")
        + "[devices.weather]\nbus = \"ard\"\nmatch = { field = \"id\", equals = \"w1\" }\n[devices.weather.points.temperature]\nfield = \"temp\"\nunit = \"°C\"\n[devices.weather.points.pressure]\nfield = \"/env/p\"\nscale = 0.1\n"
        + "[devices.pool]\nbus = \"ard\"\nmatch = { field = \"id\", equals = \"p1\" }\n[devices.pool.points.temperature]\nfield = \"temp\"\n";
    let sub = Subscriber::connect(broker.port, "t/#");
    let gw = InProcess::start(&cfg).await;
    let mut dev = pty.device();
    pty.opened().await;
    say(
        &mut dev,
        b"{\"id\":\"w1\",\"temp\":\"21.5\",\"env\":{\"p\":10132}}\n{\"id\":\"p1\",\"temp\":27}\n",
    )
    .await;
    let w = sub
        .wait_for("t/lab/sensor/weather/temperature", |_| true, WAIT)
        .expect("weather");
    let v = json_of(&w.payload);
    assert_eq!(v["value"], json!(21.5));
    assert_eq!(v["unit"], json!("°C"));
    let s = sub
        .wait_for(
            "t/lab/device/weather/state",
            |p| json_of(p).get("pressure").is_some(),
            WAIT,
        )
        .unwrap();
    assert_eq!(json_of(&s.payload)["pressure"], json!(1013.2));
    let p = sub
        .wait_for("t/lab/sensor/pool/temperature", |_| true, WAIT)
        .expect("pool");
    assert_eq!(json_of(&p.payload)["value"], json!(27));
    assert!(sub.on("t/lab/sensor/pool/pressure").is_empty());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_and_regex_lines_give_their_fields() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let pty = SocatPair::new(tmp.path());
    let cfg = head(broker.port, "skv", &pty.path_str(), "format = \"kv\"")
        + "[devices.room]\nbus = \"ard\"\n[devices.room.points.t]\n[devices.room.points.h]\n";
    let sub = Subscriber::connect(broker.port, "t/#");
    let gw = InProcess::start(&cfg).await;
    let mut dev = pty.device();
    pty.opened().await;
    say(&mut dev, b"t=21.5, h=40;x=1\r\n").await;
    let s = sub
        .wait_for(
            "t/lab/device/room/state",
            |p| json_of(p).get("h").is_some(),
            WAIT,
        )
        .expect("kv state");
    let v = json_of(&s.payload);
    assert_eq!((v["t"].clone(), v["h"].clone()), (json!(21.5), json!(40)));
    gw.stop().await;
    drop(dev);

    let tmp = tempfile::tempdir().unwrap();
    let pty = SocatPair::new(tmp.path());
    let cfg = head(
        broker.port,
        "sre",
        &pty.path_str(),
        "format = \"regex\"\npattern = '^T(?P<temperature>[-\\d.]+) H(?P<humidity>\\d+)'",
    ) + "[devices.meter]\nbus = \"ard\"\n[devices.meter.points.temperature]\n[devices.meter.points.humidity]\n";
    let gw = InProcess::start(&cfg).await;
    let mut dev = pty.device();
    pty.opened().await;
    say(&mut dev, b"T-3.5 H77\n").await;
    let s = sub
        .wait_for(
            "t/lab/device/meter/state",
            |p| json_of(p).get("humidity").is_some(),
            WAIT,
        )
        .expect("regex state");
    let v = json_of(&s.payload);
    assert_eq!(
        (v["temperature"].clone(), v["humidity"].clone()),
        (json!(-3.5), json!(77))
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_counted_never_fatal_and_the_next_good_line_is_published() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let pty = SocatPair::new(tmp.path());
    let cfg = head(broker.port, "sg", &pty.path_str(), "format = \"json\"")
        + "[devices.w]\nbus = \"ard\"\nmatch = { field = \"id\", equals = \"w1\" }\n[devices.w.points.temp]\n";
    let sub = Subscriber::connect(broker.port, "t/#");
    let gw = InProcess::start(&cfg).await;
    let mut dev = pty.device();
    pty.opened().await;
    let mut noise = Vec::new();
    noise.extend_from_slice(b"\xff\xfe\x00garbage\n"); // invalid UTF-8
    noise.extend(std::iter::repeat_n(b'x', 5000)); // over-long
    noise.extend_from_slice(b"\n");
    noise.extend_from_slice(b"not json at all\n"); // does not parse
    noise.extend_from_slice(b"{\"id\":\"nobody\",\"temp\":1}\n"); // matches no device
    noise.extend_from_slice(b"{\"id\":\"w1\",\"temp\":19}\n"); // good
    say(&mut dev, &noise).await;
    let good = sub
        .wait_for("t/lab/sensor/w/temp", |_| true, WAIT)
        .expect("good line");
    assert_eq!(json_of(&good.payload)["value"], json!(19));
    let health = sub
        .wait_for(
            "t/gateway/sg/health",
            |p| json_of(p)["buses"]["ard"]["unmatched"] == json!(1),
            WAIT,
        )
        .expect("health");
    let bus = json_of(&health.payload)["buses"]["ard"].clone();
    assert_eq!(bus["garbage"], json!(3), "{bus}");
    assert_eq!(bus["lines"], json!(3), "{bus}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_makes_a_device_offline_and_its_next_line_online() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let pty = SocatPair::new(tmp.path());
    let cfg = head(broker.port, "ss", &pty.path_str(), "format = \"kv\"")
        + "[devices.w]\nbus = \"ard\"\nsilence = \"700ms\"\n[devices.w.points.t]\n";
    let sub = Subscriber::connect(broker.port, "t/#");
    let gw = InProcess::start(&cfg).await;
    let mut dev = pty.device();
    pty.opened().await;
    say(&mut dev, b"t=1\n").await;
    let avail = "t/lab/device/w/availability";
    sub.wait_for(avail, |p| p.contains("online"), WAIT)
        .expect("online");
    sub.clear();
    sub.wait_for(avail, |p| p.contains("offline"), WAIT)
        .expect("offline after silence");
    say(&mut dev, b"t=2\n").await;
    sub.wait_for(avail, |p| p.contains("online"), WAIT)
        .expect("online again");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_template_reaches_the_device_byte_for_byte_and_expect_succeeds_or_times_out() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let pty = SocatPair::new(tmp.path());
    let cfg = head(broker.port, "sw", &pty.path_str(), "format = \"kv\"")
        + "[devices.w]\nbus = \"ard\"\n[devices.w.points.t]\n[devices.w.actions.led]\nsend = \"LED {value} {name}\"\nexpect = \"^OK\"\n";
    let sub = Subscriber::connect(broker.port, "t/#");
    let gw = InProcess::start(&cfg).await;
    let dev = pty.device();
    let (rd, mut wr) = tokio::io::split(dev);
    let mut lines = BufReader::new(rd).lines();
    pty.opened().await;
    let cmd = "t/lab/device/w/command";
    let result = "t/lab/device/w/command/result";
    publish(
        broker.port,
        cmd,
        r#"{"id": "ok1", "action": "led", "value": 3, "name": "kitchen"}"#,
        false,
    );
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(line, "LED 3 kitchen");
    wr.write_all(b"t=5\nOK LED\n").await.unwrap();
    let r = sub
        .wait_for(result, |p| p.contains("\"ok1\""), WAIT)
        .expect("result");
    assert_eq!(json_of(&r.payload)["ok"], json!(true), "{}", r.payload);
    // No reply within the bus timeout: answered as a timeout.
    publish(
        broker.port,
        cmd,
        r#"{"id": "to1", "action": "led", "value": 4, "name": "x"}"#,
        false,
    );
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(line, "LED 4 x");
    let r = sub
        .wait_for(result, |p| p.contains("\"to1\""), WAIT)
        .expect("result");
    let v = json_of(&r.payload);
    assert_eq!(v["ok"], json!(false));
    assert!(v["error"].as_str().unwrap().contains("timeout"), "{v}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplugging_and_replugging_the_serial_cable_resumes_readings() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let mut pty = SocatPair::new(tmp.path());
    let cfg = head(broker.port, "su", &pty.path_str(), "format = \"kv\"")
        + "[devices.w]\nbus = \"ard\"\n[devices.w.points.t]\n";
    let sub = Subscriber::connect(broker.port, "t/#");
    let gw = InProcess::start(&cfg).await;
    let mut dev = pty.device();
    pty.opened().await;
    say(&mut dev, b"t=1\n").await;
    sub.wait_for(
        "t/lab/sensor/w/t",
        |p| json_of(p)["value"] == json!(1),
        WAIT,
    )
    .expect("t=1");
    drop(dev);
    pty.unplug();
    // Unplugged for half a second, as a person pulling the adapter and putting it back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    pty.plug();
    let mut dev = pty.device();
    // The gateway reopens with backoff; keep talking until it hears.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        say(&mut dev, b"t=2\n").await;
        if sub
            .wait_for(
                "t/lab/sensor/w/t",
                |p| json_of(p)["value"] == json!(2),
                Duration::from_millis(500),
            )
            .is_some()
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "readings did not resume"
        );
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writable_serial_point_sends_its_template_with_the_value() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let pty = SocatPair::new(tmp.path());
    let cfg = head(broker.port, "sp", &pty.path_str(), "format = \"kv\"")
        + "[devices.w]\nbus = \"ard\"\n[devices.w.points.setpoint]\nsend = \"SP={value}\"\nmin = 5\nmax = 30\n";
    let sub = Subscriber::connect(broker.port, "t/#");
    let gw = InProcess::start(&cfg).await;
    let dev = pty.device();
    let mut lines = BufReader::new(dev).lines();
    pty.opened().await;
    let cmd = "t/lab/device/w/command";
    let result = "t/lab/device/w/command/result";
    publish(
        broker.port,
        cmd,
        r#"{"id": "sp1", "setpoint": 21.5}"#,
        false,
    );
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(line, "SP=21.5");
    let r = sub
        .wait_for(result, |p| p.contains("\"sp1\""), WAIT)
        .expect("result");
    assert_eq!(json_of(&r.payload)["ok"], json!(true), "{}", r.payload);
    assert_eq!(json_of(&r.payload)["written"], json!({"setpoint": 21.5}));
    publish(broker.port, cmd, r#"{"id": "sp2", "setpoint": 99}"#, false);
    let r = sub
        .wait_for(result, |p| p.contains("\"sp2\""), WAIT)
        .expect("result");
    assert_eq!(
        json_of(&r.payload)["error"],
        json!("setpoint: 99 is above max 30")
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cr_terminated_device_is_read_and_written_with_its_own_line_ending() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let pty = SocatPair::new(tmp.path());
    let cfg = head(
        broker.port,
        "scr",
        &pty.path_str(),
        "format = \"kv\"\nline_ending = \"\\r\"\nmax_line = 64",
    ) + "[devices.w]\nbus = \"ard\"\n[devices.w.points.t]\n[devices.w.actions.beep]\nsend = \"BEEP\"\n";
    let sub = Subscriber::connect(broker.port, "t/#");
    let gw = InProcess::start(&cfg).await;
    let mut dev = pty.device();
    pty.opened().await;
    say(&mut dev, b"t=3\r").await;
    let v = sub
        .wait_for("t/lab/sensor/w/t", |_| true, WAIT)
        .expect("CR-terminated line read");
    assert_eq!(json_of(&v.payload)["value"], json!(3));
    publish(
        broker.port,
        "t/lab/device/w/command",
        r#"{"action": "beep"}"#,
        false,
    );
    let mut buf = [0u8; 5];
    tokio::time::timeout(
        WAIT,
        tokio::io::AsyncReadExt::read_exact(&mut dev, &mut buf),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(&buf, b"BEEP\r");
    gw.stop().await;
}

/// A serial device answers `refresh` (its state published now), sends a line again while its
/// `expect` reply does not come, up to the bus `retries`, and takes point values beside a
/// named action: the action's line first, then each point's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serial_device_answers_refresh_honours_retries_and_takes_values_beside_an_action() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let pty = SocatPair::new(tmp.path());
    let cfg = head(
        broker.port,
        "sr",
        &pty.path_str(),
        "format = \"kv\"\nretries = 2",
    ) + "[devices.w]\nbus = \"ard\"\n[devices.w.points.t]\n[devices.w.points.fan]\nsend = \"FAN {value}\"\nmin = 0\nmax = 3\n[devices.w.actions.led]\nsend = \"LED {value}\"\nexpect = \"^OK\"\n";
    let sub = Subscriber::connect(broker.port, "t/#");
    let gw = InProcess::start(&cfg).await;
    let dev = pty.device();
    let (rd, mut wr) = tokio::io::split(dev);
    let mut lines = BufReader::new(rd).lines();
    pty.opened().await;
    let cmd = "t/lab/device/w/command";
    let result = "t/lab/device/w/command/result";
    let state = "t/lab/device/w/state";
    wr.write_all(b"t=5\n").await.unwrap();
    sub.wait_for(state, |p| json_of(p)["t"] == json!(5), WAIT)
        .expect("state");
    // refresh: answered, and the state published again.
    let states = sub.on(state).len();
    publish(
        broker.port,
        cmd,
        r#"{"id": "r1", "action": "refresh"}"#,
        false,
    );
    let r = sub
        .wait_for(result, |p| p.contains("\"r1\""), WAIT)
        .expect("refresh answered");
    assert_eq!(
        json_of(&r.payload),
        json!({"id": "r1", "action": "refresh", "ok": true, "written": {}})
    );
    assert!(sub.on(state).len() > states, "refresh published no state");
    // retries: the first LED line goes unanswered; the gateway sends it again.
    publish(
        broker.port,
        cmd,
        r#"{"id": "l1", "action": "led", "value": 1}"#,
        false,
    );
    assert_eq!(next(&mut lines).await, "LED 1");
    assert_eq!(
        next(&mut lines).await,
        "LED 1",
        "not sent again after the timeout"
    );
    wr.write_all(b"OK\n").await.unwrap();
    let r = sub
        .wait_for(result, |p| p.contains("\"l1\""), WAIT)
        .expect("result");
    assert_eq!(json_of(&r.payload)["ok"], json!(true), "{}", r.payload);
    // A point value beside the named action: the action's line, then the point's.
    publish(
        broker.port,
        cmd,
        r#"{"id": "l2", "action": "led", "value": 2, "fan": 3}"#,
        false,
    );
    assert_eq!(next(&mut lines).await, "LED 2");
    wr.write_all(b"OK\n").await.unwrap();
    assert_eq!(next(&mut lines).await, "FAN 3");
    let r = sub
        .wait_for(result, |p| p.contains("\"l2\""), WAIT)
        .expect("result");
    assert_eq!(
        json_of(&r.payload),
        json!({"id": "l2", "action": "led", "ok": true, "written": {"fan": 3}})
    );
    // Validated like any point value: nothing is sent for a refused command.
    publish(
        broker.port,
        cmd,
        r#"{"id": "l3", "action": "led", "value": 2, "fan": 9}"#,
        false,
    );
    let r = sub
        .wait_for(result, |p| p.contains("\"l3\""), WAIT)
        .expect("result");
    assert_eq!(json_of(&r.payload)["error"], json!("fan: 9 is above max 3"));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), lines.next_line())
            .await
            .is_err(),
        "a line was sent for a refused command"
    );
    gw.stop().await;
}

/// A point that no line carried for a whole `silence` period, while the device went on
/// talking, is stale: it leaves the retained state. Points sent on different lines keep each
/// other company meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_missing_from_the_lines_for_a_silence_period_leaves_the_state() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let pty = SocatPair::new(tmp.path());
    let cfg = head(broker.port, "ss", &pty.path_str(), "format = \"kv\"")
        + "[devices.w]\nbus = \"ard\"\nsilence = \"1s\"\n[devices.w.points.t]\n[devices.w.points.h]\n";
    let sub = Subscriber::connect(broker.port, "t/#");
    let gw = InProcess::start(&cfg).await;
    let mut dev = pty.device();
    pty.opened().await;
    let state = "t/lab/device/w/state";
    // `t` and `h` on lines of their own, as some devices send them.
    for _ in 0..5 {
        say(&mut dev, b"t=1\n").await;
        say(&mut dev, b"h=40\n").await;
        // The device's own pace: ten lines a second, well inside the 1 s `silence`.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sub.wait_for(
        state,
        |p| json_of(p)["t"] == json!(1) && json_of(p)["h"] == json!(40),
        WAIT,
    )
    .expect("both in the state");
    // `h` stops coming; `t` goes on.
    sub.clear();
    for _ in 0..15 {
        say(&mut dev, b"t=1\n").await;
        // 1.5 s of `t` alone: longer than the 1 s `silence` after which `h` is unknown.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = sub
        .wait_for(state, |p| json_of(p).get("h").is_none(), WAIT)
        .expect("h left the state");
    assert_eq!(json_of(&m.payload)["t"], json!(1));
    assert!(
        sub.on("t/lab/device/w/availability").is_empty(),
        "the device went offline"
    );
    gw.stop().await;
}
