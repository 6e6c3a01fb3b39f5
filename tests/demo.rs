#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! `fieldbridge demo` for a bounded time: readings from all three simulated devices, and a
//! command sent with a real MQTT client executed — against mosquitto (`--mqtt`) and, with the
//! cargo feature `demo`, against the in-process broker.

mod common;

use common::WAIT;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::mosquitto::{Mosquitto, Subscriber, publish, retained};

const BIN: &str = env!("CARGO_BIN_EXE_fieldbridge");

type Lines = Arc<Mutex<Vec<String>>>;

fn collect(from: impl std::io::Read + Send + 'static) -> Lines {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(from).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(l);
        }
    });
    lines
}

/// Starts the demo; returns the child, its stdout and its stderr (the log) as they come.
fn demo_logged(args: &[&str]) -> (Child, Lines, Lines) {
    let mut child = Command::new(BIN)
        .arg("demo")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());
    (child, out, err)
}

fn wait_line(lines: &Arc<Mutex<Vec<String>>>, pred: impl Fn(&str) -> bool) -> Option<String> {
    common::poll(WAIT, Duration::from_millis(50), || {
        lines.lock().unwrap().iter().find(|l| pred(l)).cloned()
    })
}

/// All three devices publish, a command through the broker is executed, the demo ends by itself.
fn exercise(port: u16, child: &mut Child, lines: &Arc<Mutex<Vec<String>>>) {
    let sub = Subscriber::connect(port, "demo/#");
    for topic in [
        "demo/home/sensor/thermostat/temperature",
        "demo/home/sensor/meter/voltage",
        "demo/home/sensor/weather/temperature",
    ] {
        assert!(
            sub.wait_for(topic, |_| true, WAIT).is_some(),
            "nothing on {topic}"
        );
    }
    let result = "demo/home/device/thermostat/command/result";
    let deadline = Instant::now() + WAIT;
    let answered = loop {
        publish(
            port,
            "demo/home/device/thermostat/command",
            r#"{"id": "t1", "setpoint": 22.5}"#,
            false,
        );
        if let Some(m) = sub.wait_for(result, |p| p.contains("\"t1\""), Duration::from_millis(700))
        {
            break m;
        }
        assert!(Instant::now() < deadline, "no command result");
    };
    assert!(
        answered.payload.contains("\"ok\":true"),
        "{}",
        answered.payload
    );
    assert!(
        answered.payload.contains("\"setpoint\":22.5"),
        "{}",
        answered.payload
    );
    // The demo prints what it publishes, and how to send a command.
    assert!(wait_line(lines, |l| l.starts_with("try:  mosquitto_pub")).is_some());
    // It serves the commissioning page on loopback and says where.
    let page = wait_line(lines, |l| {
        l.starts_with("commissioning page: http://127.0.0.1:")
    })
    .expect("the demo prints the page's URL");
    let addr = page
        .trim_start_matches("commissioning page: http://")
        .trim_end_matches('/')
        .to_string();
    let mut conn = std::net::TcpStream::connect(&addr).expect("the page listens");
    std::io::Write::write_all(
        &mut conn,
        format!("GET /device/thermostat HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut html = String::new();
    let _ = std::io::Read::read_to_string(&mut conn, &mut html);
    assert!(html.starts_with("HTTP/1.1 200"), "{html}");
    assert!(html.contains("id=\"value-setpoint\""), "{html}");
    assert!(wait_line(lines, |l| l.starts_with("demo/home/sensor/meter/power ")).is_some());
    let status = common::poll(WAIT, Duration::from_millis(50), || {
        child.try_wait().unwrap()
    })
    .expect("the demo did not stop after --duration");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn the_demo_runs_against_mosquitto_with_mqtt() {
    let broker = Mosquitto::start();
    let discovery = Subscriber::connect(broker.port, "homeassistant/#");
    let (mut child, lines, log) = demo_logged(&["--mqtt", &broker.url(), "--duration", "8s"]);
    // Pointed at someone's broker, the demo shows up in their Home Assistant, under a gateway
    // of its own...
    let configs = [
        "homeassistant/device/demo/config",
        "homeassistant/device/demo_thermostat/config",
        "homeassistant/device/demo_meter/config",
        "homeassistant/device/demo_weather/config",
    ];
    for topic in configs {
        assert!(
            discovery
                .wait_for(topic, |p| p.contains("\"fieldbridge:demo"), WAIT)
                .is_some(),
            "no {topic}; seen: {:?}; log: {:?}; out: {:?}",
            discovery
                .seen()
                .iter()
                .map(|m| m.topic.clone())
                .collect::<Vec<_>>(),
            log.lock().unwrap(),
            lines.lock().unwrap()
        );
    }
    exercise(broker.port, &mut child, &lines);
    // ...and leaves nothing behind when it ends.
    for topic in configs.iter().chain(&[
        "demo/home/device/thermostat/state",
        "demo/home/device/meter/availability",
    ]) {
        assert_eq!(retained(broker.port, topic), None, "{topic} left behind");
    }
}

#[cfg(feature = "demo")]
#[test]
fn the_demo_runs_with_its_in_process_broker() {
    let (mut child, lines, log) = demo_logged(&["--duration", "8s"]);
    let first = wait_line(&lines, |l| l.starts_with("fieldbridge demo: broker ")).expect("banner");
    // It starts without an ERROR line (the in-process broker logs one for any connection that
    // is not MQTT, such as a bare TCP probe).
    assert!(wait_line(&lines, |l| l.starts_with("demo/home/sensor/")).is_some());
    let errors: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("ERROR"))
        .cloned()
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    let port: u16 = first
        .split("mqtt://127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .and_then(|p| p.parse().ok())
        .expect("port in the banner");
    exercise(port, &mut child, &lines);
}

#[cfg(not(feature = "demo"))]
#[test]
fn without_the_demo_feature_the_demo_asks_for_a_broker() {
    let out = Command::new(BIN)
        .args(["demo", "--duration", "1s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--mqtt"));
}
