#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! The device core (README "Topics": "Values are never invented", "Availability", "Commands"):
//! the same scenario, assertion for assertion, against a Modbus device (a tokio-modbus server
//! over TCP) and a serial line device (a socat pseudo-terminal pair), through the real gateway
//! and a real mosquitto. Only how the device is made to answer, fail one point, or fall
//! silent differs.

mod common;

use common::json_of;

use common::WAIT;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::gateway::InProcess;
use common::modbus::FakeModbus;
use common::mosquitto::{LinePublisher, Mosquitto, Subscriber};
use common::pty::SocatPair;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// What the simulated device says.
#[derive(Debug, Clone, Copy)]
struct Says {
    a: u16,
    /// `None`: point `b` cannot be read (a Modbus exception; `null` on the line).
    b: Option<u16>,
    /// `false`: the device is silent.
    talking: bool,
}

/// One device `d` with points `a` (writable) and `b`, on either kind of bus.
enum Rig {
    Modbus {
        fake: FakeModbus,
    },
    Serial {
        says: Arc<Mutex<Says>>,
        /// Lines the gateway wrote to the device.
        heard: Arc<Mutex<Vec<String>>>,
        _pty: SocatPair,
    },
}

impl Rig {
    /// Starts the simulated device; returns the rig and its bus and device config.
    async fn start(kind: &str, dir: &std::path::Path, says: Says) -> (Rig, String) {
        match kind {
            "modbus" => {
                let fake = FakeModbus::new();
                fake.unit(1, |_| {});
                let addr = fake.serve_tcp().await;
                let cfg = format!(
                    "[buses.bus]\nkind = \"modbus-tcp\"\naddress = \"{addr}\"\ntimeout = \"200ms\"\nretries = 0\n\
                     [devices.d]\nbus = \"bus\"\nunit = 1\npoll = \"200ms\"\noffline_after = 3\noffline_retry = \"1s\"\n\
                     [devices.d.points.a]\nregister = \"holding:0\"\nwritable = true\n\
                     [devices.d.points.b]\nregister = \"holding:20\"\n"
                );
                let rig = Rig::Modbus { fake };
                rig.say(says);
                (rig, cfg)
            }
            _ => {
                let pty = SocatPair::new(dir);
                let cfg = format!(
                    "[buses.bus]\nkind = \"serial\"\nport = \"{}\"\nbaud = 115200\nformat = \"json\"\ntimeout = \"200ms\"\n\
                     [devices.d]\nbus = \"bus\"\nsilence = \"1s\"\n\
                     [devices.d.points.a]\nsend = \"A {{value}}\"\n\
                     [devices.d.points.b]\ntype = \"u16\"\n",
                    pty.path_str()
                );
                let says = Arc::new(Mutex::new(says));
                let heard = Arc::new(Mutex::new(Vec::new()));
                let (rd, mut wr) = tokio::io::split(pty.device());
                // The device prints its values every 100 ms while it talks.
                let s = says.clone();
                tokio::spawn(async move {
                    loop {
                        let now = *s.lock().unwrap();
                        if now.talking {
                            let b = now.b.map_or("null".to_string(), |b| b.to_string());
                            let line = format!("{{\"a\": {}, \"b\": {b}}}\n", now.a);
                            if wr.write_all(line.as_bytes()).await.is_err() {
                                break;
                            }
                        }
                        // The device's own pace: a line every 100 ms.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                });
                let h = heard.clone();
                tokio::spawn(async move {
                    let mut lines = BufReader::new(rd).lines();
                    while let Ok(Some(l)) = lines.next_line().await {
                        h.lock().unwrap().push(l);
                    }
                });
                let rig = Rig::Serial {
                    says,
                    heard,
                    _pty: pty,
                };
                (rig, cfg)
            }
        }
    }

    fn say(&self, says: Says) {
        match self {
            Rig::Modbus { fake } => fake.unit(1, |u| {
                u.holdings.insert(0, says.a);
                match says.b {
                    Some(b) => {
                        u.holdings.insert(20, b);
                        u.failing.remove(&20);
                    }
                    None => {
                        u.failing.insert(20);
                    }
                }
                u.silent = !says.talking;
            }),
            Rig::Serial { says: s, .. } => *s.lock().unwrap() = says,
        }
    }

    /// What reached the device as a write: Modbus write frames, or lines on the serial line.
    fn writes(&self) -> usize {
        match self {
            Rig::Modbus { fake } => fake.log().iter().filter(|s| s.fc >= 5).count(),
            Rig::Serial { heard, .. } => heard.lock().unwrap().len(),
        }
    }
}

/// The scenario, the same for both kinds.
async fn availability_and_freshness(kind: &str) {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let (rig, bus) = Rig::start(
        kind,
        tmp.path(),
        Says {
            a: 1,
            b: Some(2),
            talking: true,
        },
    )
    .await;
    let cfg = format!(
        "[gateway]\nid = \"core\"\nbase_topic = \"t\"\nlocation = \"lab\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nreconnect_min = \"100ms\"\n[history]\npath = \"{{dir}}/h.db\"\n[homeassistant]\ndiscovery = false\n{bus}",
        broker.port
    );
    let sub = Subscriber::connect(broker.port, "t/#");
    let gw = InProcess::start(&cfg).await;
    let (state, avail) = ("t/lab/device/d/state", "t/lab/device/d/availability");
    let wait_state = |what: &str, pred: &dyn Fn(&Value) -> bool| {
        let m = sub
            .wait_for(state, |p| pred(&json_of(p)), WAIT)
            .unwrap_or_else(|| panic!("{kind}: {what}; seen {:?}", sub.on(state)));
        json_of(&m.payload)
    };
    wait_state("both points", &|s| s["a"] == json!(1) && s["b"] == json!(2));
    sub.wait_for(avail, |p| p.contains("\"online\""), WAIT)
        .expect("online");

    // `b` fails while `a` keeps reading: `b` leaves the retained state (Home Assistant shows it
    // unknown), nothing is published for it, `a` keeps updating.
    rig.say(Says {
        a: 3,
        b: None,
        talking: true,
    });
    let s = wait_state("b gone, a = 3", &|s| s["a"] == json!(3));
    assert!(s.get("b").is_none(), "{kind}: b still in the state: {s}");
    let b_sensor = "t/lab/sensor/d/b";
    let b_before = sub.on(b_sensor).len();
    rig.say(Says {
        a: 4,
        b: None,
        talking: true,
    });
    let s = wait_state("a = 4", &|s| s["a"] == json!(4));
    assert!(s.get("b").is_none(), "{kind}: b came back by itself: {s}");
    assert_eq!(
        sub.on(b_sensor).len(),
        b_before,
        "{kind}: published for a failed b"
    );
    assert!(
        sub.on(state)
            .iter()
            .skip_while(|m| json_of(&m.payload)["a"] != json!(3))
            .all(|m| json_of(&m.payload).get("b").is_none()),
        "{kind}: a state carried the failed b"
    );
    // `b` reads again — the value it had before: published again, and back in the state.
    sub.clear();
    rig.say(Says {
        a: 4,
        b: Some(2),
        talking: true,
    });
    wait_state("b back", &|s| s["b"] == json!(2));
    assert!(
        sub.wait_for(b_sensor, |p| json_of(p)["value"] == json!(2), WAIT)
            .is_some(),
        "{kind}: b not published on its return"
    );

    // The device falls silent: offline. A command is refused at once, and nothing reaches the
    // device.
    rig.say(Says {
        a: 4,
        b: Some(2),
        talking: false,
    });
    sub.wait_for(avail, |p| p.contains("\"offline\""), WAIT)
        .unwrap_or_else(|| panic!("{kind}: never offline"));
    let writes = rig.writes();
    let mut publisher = LinePublisher::start(broker.port, "t/lab/device/d/command");
    let sent = publisher.send(r#"{"id": "off", "a": 9}"#);
    let r = sub
        .wait_for(
            "t/lab/device/d/command/result",
            |p| p.contains("\"off\""),
            WAIT,
        )
        .expect("refused");
    assert_eq!(
        json_of(&r.payload),
        json!({"id": "off", "action": "set", "ok": false, "error": "device offline"}),
        "{kind}"
    );
    let took = r.at.duration_since(sent);
    assert!(
        took < Duration::from_millis(500),
        "{kind}: refused after {took:?}"
    );
    assert_eq!(
        rig.writes(),
        writes,
        "{kind}: the command reached the device"
    );

    // It talks again: online, and its values are in the state.
    sub.clear();
    rig.say(Says {
        a: 5,
        b: Some(6),
        talking: true,
    });
    sub.wait_for(avail, |p| p.contains("\"online\""), WAIT)
        .unwrap_or_else(|| panic!("{kind}: never online again"));
    wait_state("values after the silence", &|s| {
        s["a"] == json!(5) && s["b"] == json!(6)
    });
    // And it takes commands again.
    publisher.send(r#"{"id": "on", "a": 7}"#);
    let r = sub
        .wait_for(
            "t/lab/device/d/command/result",
            |p| p.contains("\"on\""),
            WAIT,
        )
        .expect("executed");
    assert_eq!(
        json_of(&r.payload)["ok"],
        json!(true),
        "{kind}: {}",
        r.payload
    );
    assert!(
        rig.writes() > writes,
        "{kind}: the command did not reach the device"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modbus_device_keeps_no_stale_values_and_goes_offline_and_online() {
    availability_and_freshness("modbus").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serial_line_device_keeps_no_stale_values_and_goes_offline_and_online() {
    availability_and_freshness("serial").await;
}
