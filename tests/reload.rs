#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! SIGHUP with a changed config: exactly the changed buses and devices restart, the others keep
//! polling, the MQTT session stays, removed devices lose their discovery and leave no retained
//! state or availability.

mod common;

use common::WAIT;

use std::time::{Duration, Instant};

use common::gateway::GatewayProcess;
use common::modbus::FakeModbus;
use common::mosquitto::{Mosquitto, Subscriber, retained};
use nix::sys::signal::Signal;

fn config(port: u16, plc: &str, plc2: &str, dir: &str, second: bool) -> String {
    let mut c = format!(
        "[gateway]\nid = \"rl\"\nbase_topic = \"t\"\nlocation = \"lab\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\n[history]\npath = \"{dir}/h.db\"\n[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"{plc}\"\n[buses.plc2]\nkind = \"modbus-tcp\"\naddress = \"{plc2}\"\ntimeout = \"{}\"\n",
        if second { "600ms" } else { "500ms" }
    );
    let dev = |name: &str, bus: &str, unit: u8, poll: &str| {
        format!(
            "[devices.{name}]\nbus = \"{bus}\"\nunit = {unit}\npoll = \"{poll}\"\n[devices.{name}.points.v]\nregister = \"holding:0\"\n"
        )
    };
    c += &dev("keep", "plc", 1, "200ms");
    c += &dev("change", "plc", 2, if second { "300ms" } else { "200ms" });
    c += &dev("onbus2", "plc2", 1, "200ms");
    if second {
        c += &dev("fresh", "plc", 4, "200ms");
    } else {
        c += &dev("gone", "plc", 3, "200ms");
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_restarts_exactly_what_changed_and_keeps_the_mqtt_session() {
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    let fake2 = FakeModbus::new();
    for u in 1..=4 {
        fake.set_holding(u, 0, &[u as u16]);
    }
    fake2.set_holding(1, 0, &[9]);
    let plc = fake.serve_tcp().await.to_string();
    let plc2 = fake2.serve_tcp().await.to_string();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let sub = Subscriber::connect(broker.port, "t/#");
    let mut gw = GatewayProcess::spawn_in(dir, &config(broker.port, &plc, &plc2, &d, false), &[]);
    let gone_discovery = "homeassistant/device/rl_gone/config";
    assert!(
        sub.wait_for(
            "t/lab/device/gone/availability",
            |p| p.contains("online"),
            WAIT
        )
        .is_some(),
        "{}",
        gw.log()
    );
    assert!(
        common::mosquitto::wait_retained(broker.port, gone_discovery, |p| !p.is_empty(), WAIT)
            .is_some()
    );

    std::fs::write(&gw.config_path, config(broker.port, &plc, &plc2, &d, true)).unwrap();
    let reload_at = Instant::now();
    gw.signal(Signal::SIGHUP);
    assert!(gw.wait_log("SIGHUP: config applied", WAIT), "{}", gw.log());
    let log = gw.log();
    let applied = log
        .lines()
        .find(|l| l.contains("SIGHUP: config applied"))
        .unwrap();
    assert!(applied.contains("buses_restarted=[\"plc2\"]"), "{applied}");
    assert!(applied.contains("devices_added=[\"fresh\"]"), "{applied}");
    assert!(applied.contains("devices_removed=[\"gone\"]"), "{applied}");
    assert!(
        applied.contains("devices_restarted=[\"change\", \"onbus2\"]"),
        "{applied}"
    );

    // The added device comes online; the removed one's retained topics are cleared.
    assert!(
        sub.wait_for(
            "t/lab/device/fresh/availability",
            |p| p.contains("online"),
            WAIT
        )
        .is_some()
    );
    for topic in ["t/lab/device/gone/availability", "t/lab/device/gone/state"] {
        assert!(
            sub.wait_for(topic, str::is_empty, WAIT).is_some(),
            "{topic} not cleared"
        );
        assert!(
            retained(broker.port, topic).is_none(),
            "{topic} still retained"
        );
    }
    // The added device takes commands at once: its command topic was subscribed on the
    // running session, not at some later reconnect.
    common::mosquitto::publish(
        broker.port,
        "t/lab/device/fresh/command",
        r#"{"action": "refresh", "id": "after-reload"}"#,
        false,
    );
    let result = sub.wait_for(
        "t/lab/device/fresh/command/result",
        |p| p.contains("after-reload"),
        WAIT,
    );
    assert!(
        result.is_some_and(|m| m.payload.contains("\"ok\":true")),
        "{}",
        gw.log()
    );
    common::until(
        WAIT,
        || retained(broker.port, gone_discovery).is_none(),
        || "discovery of the removed device not deleted".into(),
    )
    .await;
    // The unchanged device is polled past the end of the stretch examined next.
    common::until(
        WAIT,
        || {
            fake.log()
                .iter()
                .any(|s| s.unit == 1 && s.at > reload_at + Duration::from_secs(2))
        },
        || "the unchanged device stopped being polled".into(),
    )
    .await;

    // The unchanged device kept its rhythm through the reload: no gap beyond one period
    // (200 ms; generous margin for a loaded machine).
    let keep: Vec<Instant> = fake
        .log()
        .iter()
        .filter(|s| s.unit == 1)
        .map(|s| s.at)
        .collect();
    let around: Vec<&Instant> = keep
        .iter()
        .filter(|t| {
            **t + Duration::from_secs(2) > reload_at && **t < reload_at + Duration::from_secs(2)
        })
        .collect();
    assert!(
        around.len() >= 5,
        "{} polls around the reload",
        around.len()
    );
    for w in around.windows(2) {
        let gap = w[1].duration_since(*w[0]);
        assert!(
            gap < Duration::from_millis(450),
            "unchanged device paused {gap:?}"
        );
    }
    // The removed device is not polled any more.
    let gone_after = fake
        .log()
        .iter()
        .filter(|s| s.unit == 3 && s.at > reload_at + Duration::from_millis(300))
        .count();
    assert_eq!(gone_after, 0);
    // The MQTT session was not re-made: `online` was published once.
    let onlines = sub
        .on("t/gateway/rl/status")
        .iter()
        .filter(|m| m.payload.contains("online"))
        .count();
    assert_eq!(onlines, 1, "the MQTT connection was re-made");
    assert!(gw.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_queued_for_a_reconfigured_device_are_answered_and_never_run_later() {
    // A broker that keeps sessions over its restart: what the gateway left unacknowledged
    // would be delivered again.
    let broker = Mosquitto::start_with(
        "allow_anonymous true\npersistence true\npersistence_location {dir}/\n",
        None,
    );
    let fake = FakeModbus::new();
    fake.set_holding(1, 0, &[0]);
    // A slow device: each transaction takes 400 ms, so commands queue behind the first.
    fake.unit(1, |u| u.delay = Duration::from_millis(400));
    let plc = fake.serve_tcp().await.to_string();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let config = |poll: &str| {
        format!(
            "[gateway]\nid = \"rq\"\nbase_topic = \"t\"\nlocation = \"lab\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nreconnect_min = \"100ms\"\nreconnect_max = \"500ms\"\n[history]\npath = \"{d}/h.db\"\n[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"{plc}\"\ntimeout = \"2s\"\n[devices.slow]\nbus = \"plc\"\nunit = 1\npoll = \"{poll}\"\n[devices.slow.points.v]\nregister = \"holding:0\"\nwritable = true\n",
            broker.port
        )
    };
    let results = Subscriber::connect(broker.port, "t/lab/device/slow/command/result");
    let gw = GatewayProcess::spawn_in(dir, &config("10s"), &[]);
    assert!(gw.wait_log("device online", WAIT), "{}", gw.log());
    for i in 1..=5 {
        common::mosquitto::publish(
            broker.port,
            "t/lab/device/slow/command",
            &format!("{{\"id\": \"c{i}\", \"v\": {i}}}"),
            false,
        );
    }
    // The first is answered, the second is on the wire, the others wait: the device is changed
    // meanwhile.
    assert!(
        results
            .wait_for(
                "t/lab/device/slow/command/result",
                |p| p.contains("\"c1\""),
                WAIT
            )
            .is_some(),
        "{}",
        gw.log()
    );
    std::fs::write(&gw.config_path, config("9s")).unwrap();
    gw.signal(Signal::SIGHUP);
    assert!(gw.wait_log("SIGHUP: config applied", WAIT), "{}", gw.log());
    let deadline = Instant::now() + WAIT;
    let answered = |results: &Subscriber| -> Vec<String> {
        let mut ids: Vec<String> = results
            .seen()
            .iter()
            .filter_map(|m| {
                serde_json::from_str::<serde_json::Value>(&m.payload)
                    .ok()
                    .and_then(|j| j["id"].as_str().map(str::to_string))
            })
            .collect();
        ids.sort();
        ids
    };
    common::until(
        deadline.saturating_duration_since(Instant::now()),
        || answered(&results).len() >= 5,
        || format!("{:?}", results.seen()),
    )
    .await;
    let ids = answered(&results);
    assert_eq!(ids, ["c1", "c2", "c3", "c4", "c5"], "{:?}", results.seen());
    let reconfigured = results
        .seen()
        .iter()
        .filter(|m| m.payload.contains("\"error\":\"device reconfigured\""))
        .count();
    assert!(reconfigured >= 3, "{:?}", results.seen());
    // The broker restarts: nothing unacknowledged comes back to run now.
    let writes_before = fake
        .log()
        .iter()
        .filter(|s| s.fc == 6 || s.fc == 16)
        .count();
    let mut broker = broker;
    broker.restart_saving();
    assert!(gw.wait_log("mqtt connected", WAIT), "{}", gw.log());
    // Something that must not happen (a redelivered command written): given 3 s, long enough
    // for the 400 ms device to have taken several.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes_after = fake
        .log()
        .iter()
        .filter(|s| s.fc == 6 || s.fc == 16)
        .count();
    assert_eq!(
        writes_after, writes_before,
        "a command ran again after the reconnect"
    );
    assert_eq!(answered(&results).len(), 5, "{:?}", results.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_queued_at_a_stop_are_answered_stopping() {
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    fake.set_holding(1, 0, &[0]);
    fake.unit(1, |u| u.delay = Duration::from_millis(400));
    let plc = fake.serve_tcp().await.to_string();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let text = format!(
        "[gateway]\nid = \"rs\"\nbase_topic = \"t\"\nlocation = \"lab\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n[history]\npath = \"{d}/h.db\"\n[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"{plc}\"\ntimeout = \"2s\"\n[devices.slow]\nbus = \"plc\"\nunit = 1\npoll = \"10s\"\n[devices.slow.points.v]\nregister = \"holding:0\"\nwritable = true\n",
        broker.port
    );
    let results = Subscriber::connect(broker.port, "t/lab/device/slow/command/result");
    let mut gw = GatewayProcess::spawn_in(dir, &text, &[]);
    assert!(gw.wait_log("device online", WAIT), "{}", gw.log());
    for i in 1..=4 {
        common::mosquitto::publish(
            broker.port,
            "t/lab/device/slow/command",
            &format!("{{\"id\": \"s{i}\", \"v\": {i}}}"),
            false,
        );
    }
    assert!(
        results
            .wait_for(
                "t/lab/device/slow/command/result",
                |p| p.contains("\"s1\""),
                WAIT
            )
            .is_some()
    );
    gw.signal(Signal::SIGTERM);
    let status = gw.wait_exit(WAIT).expect("the gateway stops");
    assert_eq!(status.code(), Some(0), "{}", gw.log());
    let stopping = results
        .wait_for(
            "t/lab/device/slow/command/result",
            |p| p.contains("\"s4\"") && p.contains("\"error\":\"stopping\""),
            WAIT,
        )
        .map(|m| m.payload);
    assert!(stopping.is_some(), "{:?}", results.seen());
}
