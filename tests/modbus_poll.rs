#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! Modbus polling end to end: registers on a real (in-process) Modbus server, values on a real
//! mosquitto, through the real gateway.

mod common;

use common::json_of;

use common::WAIT;

use std::time::{Duration, Instant};

use common::gateway::InProcess;
use common::modbus::FakeModbus;
use common::mosquitto::{Mosquitto, Subscriber};
use serde_json::{Value, json};

fn head(port: u16, id: &str) -> String {
    format!(
        "[gateway]\nid = \"{id}\"\nbase_topic = \"t\"\nlocation = \"lab\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nreconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n[history]\npath = \"{{dir}}/history.db\"\n"
    )
}

/// Waits until the device state carries `key` and returns the whole state.
fn wait_state(sub: &Subscriber, topic: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let m = sub
        .wait_for(topic, |p| pred(&json_of(p)), WAIT)
        .unwrap_or_else(|| panic!("no state on {topic}; seen: {:?}", sub.seen()));
    json_of(&m.payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_and_order_decodes_end_to_end_with_scale_offset_precision_and_labels() {
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    // 0x41AC0000 = 21.5f32; -100 as i16 = 0xFF9C.
    fake.set_holding(1, 0, &[0xFF9C]); // i16 -100
    fake.set_holding(1, 1, &[0x1234]); // u16
    fake.set_holding(1, 2, &[0x41AC, 0x0000]); // f32 ABCD
    fake.set_holding(1, 4, &[0x0000, 0x41AC]); // f32 CDAB
    fake.set_holding(1, 6, &[0xAC41, 0x0000]); // f32 BADC
    fake.set_holding(1, 8, &[0x0000, 0xAC41]); // f32 DCBA
    fake.set_holding(1, 10, &[0xFFFF, 0xFFFE]); // i32 ABCD = -2
    fake.set_holding(1, 12, &[0x0001, 0x0000]); // u32 CDAB = 1
    fake.set_holding(1, 14, &[0x0000, 0x0000, 0x0000, 0x0064]); // u64 = 100
    fake.set_holding(1, 18, &[0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF]); // i64 = -1
    fake.set_holding(1, 22, &[0x4035, 0x8000, 0, 0]); // f64 = 21.5
    fake.set_holding(1, 26, &[0x4142, 0x4344]); // "ABCD"
    fake.set_holding(1, 28, &[2]); // map -> "heat"
    fake.set_holding(1, 29, &[215]); // 215 * 0.1 = 21.5
    fake.set_holding(1, 30, &[1000]); // 1000 * 0.01 - 5 = 5.0, precision 1
    fake.set_holding(1, 31, &[0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF]); // u64 max -> decimal string
    fake.unit(1, |u| {
        u.coils.insert(0, true);
        u.discretes.insert(0, false);
    });
    let addr = fake.serve_tcp().await;
    let pts = [
        ("a_i16", "holding:0", "i16", "ABCD", ""),
        ("b_u16", "holding:1", "u16", "ABCD", ""),
        ("c_f32_abcd", "holding:2", "f32", "ABCD", ""),
        ("d_f32_cdab", "holding:4", "f32", "CDAB", ""),
        ("e_f32_badc", "holding:6", "f32", "BADC", ""),
        ("f_f32_dcba", "holding:8", "f32", "DCBA", ""),
        ("g_i32", "holding:10", "i32", "ABCD", ""),
        ("h_u32_cdab", "holding:12", "u32", "CDAB", ""),
        ("i_u64", "holding:14", "u64", "ABCD", ""),
        ("j_i64", "holding:18", "i64", "ABCD", ""),
        ("k_f64", "holding:22", "f64", "ABCD", ""),
        ("l_string", "holding:26", "string", "ABCD", "length = 2\n"),
        (
            "m_mode",
            "holding:28",
            "u16",
            "ABCD",
            "map = { 0 = \"off\", 1 = \"auto\", 2 = \"heat\" }\n",
        ),
        ("n_scaled", "holding:29", "u16", "ABCD", "scale = 0.1\n"),
        (
            "o_offset",
            "holding:30",
            "u16",
            "ABCD",
            "scale = 0.01\noffset = -5\nprecision = 1\n",
        ),
        ("p_big", "holding:31", "u64", "ABCD", ""),
        ("q_coil", "coil:0", "bool", "ABCD", ""),
        ("r_discrete", "discrete:0", "bool", "ABCD", ""),
    ];
    let mut cfg = head(broker.port, "types");
    cfg += &format!(
        "[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"{addr}\"\n[devices.d]\nbus = \"plc\"\nunit = 1\npoll = \"200ms\"\n"
    );
    for (name, reg, ty, order, extra) in pts {
        cfg += &format!(
            "[devices.d.points.{name}]\nregister = \"{reg}\"\ntype = \"{ty}\"\norder = \"{order}\"\n{extra}"
        );
    }
    let sub = Subscriber::connect(broker.port, "t/#");
    let gw = InProcess::start(&cfg).await;
    let state = wait_state(&sub, "t/lab/device/d/state", |v| {
        v.get("r_discrete").is_some()
    });
    assert_eq!(state["a_i16"], json!(-100));
    assert_eq!(state["b_u16"], json!(0x1234));
    for k in [
        "c_f32_abcd",
        "d_f32_cdab",
        "e_f32_badc",
        "f_f32_dcba",
        "k_f64",
        "n_scaled",
    ] {
        assert_eq!(state[k], json!(21.5), "{k}");
    }
    assert_eq!(state["g_i32"], json!(-2));
    assert_eq!(state["h_u32_cdab"], json!(1));
    assert_eq!(state["i_u64"], json!(100));
    assert_eq!(state["j_i64"], json!(-1));
    assert_eq!(state["l_string"], json!("ABCD"));
    assert_eq!(state["m_mode"], json!("heat"));
    assert_eq!(state["o_offset"], json!(5.0));
    assert_eq!(state["p_big"], json!("18446744073709551615"));
    assert_eq!(state["q_coil"], json!(true));
    assert_eq!(state["r_discrete"], json!(false));
    assert!(state["timestamp"].as_f64().unwrap() > 1.7e9);
    // The sensor topic carries value, unit-less here, device and location.
    let s = sub
        .wait_for("t/lab/sensor/d/c_f32_abcd", |_| true, WAIT)
        .unwrap();
    let v = json_of(&s.payload);
    assert_eq!(v["value"], json!(21.5));
    assert_eq!(v["device_id"], json!("d"));
    assert_eq!(v["location"], json!("lab"));
    let avail = sub
        .wait_for("t/lab/device/d/availability", |_| true, WAIT)
        .unwrap();
    assert_eq!(
        json_of(&avail.payload),
        json!({"device": "d", "status": "online"})
    );
    assert!(
        avail.retained
            || common::mosquitto::retained(broker.port, "t/lab/device/d/availability").is_some()
    );
    assert_eq!(gw.stop().await, 0);
}

/// Reads (FC01..FC04) of `unit` in the log, grouped into poll cycles by time gaps.
fn cycles(fake: &FakeModbus, unit: u8, gap: Duration) -> Vec<Vec<(u8, u16, u16)>> {
    let mut out: Vec<Vec<(u8, u16, u16)>> = Vec::new();
    let mut last: Option<Instant> = None;
    for s in fake
        .log()
        .into_iter()
        .filter(|s| s.unit == unit && s.fc <= 4)
    {
        if last.is_none_or(|l| s.at.duration_since(l) > gap) {
            out.push(Vec::new());
        }
        last = Some(s.at);
        out.last_mut().unwrap().push((s.fc, s.address, s.count));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_points_in_three_contiguous_runs_cost_three_reads_per_cycle() {
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    fake.unit(1, |_| {});
    let addr = fake.serve_tcp().await;
    let mut cfg = head(broker.port, "coalesce");
    cfg += &format!(
        "[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"{addr}\"\n[devices.d]\nbus = \"plc\"\nunit = 1\npoll = \"300ms\"\n"
    );
    for a in 0..20 {
        cfg += &format!("[devices.d.points.h{a}]\nregister = \"holding:{a}\"\n");
    }
    for a in 0..10 {
        cfg += &format!(
            "[devices.d.points.f{a}]\nregister = \"input:{}\"\ntype = \"f32\"\n",
            100 + 2 * a
        );
    }
    for a in 0..10 {
        cfg += &format!("[devices.d.points.c{a}]\nregister = \"coil:{a}\"\n");
    }
    let gw = InProcess::start(&cfg).await;
    // Three cycles, the last one complete.
    common::until(
        WAIT,
        || {
            let c = cycles(&fake, 1, Duration::from_millis(150));
            c.len() >= 3 && c.last().is_some_and(|last| last.len() >= 3)
        },
        || format!("{:?}", cycles(&fake, 1, Duration::from_millis(150))),
    )
    .await;
    gw.stop().await;
    let c = cycles(&fake, 1, Duration::from_millis(150));
    assert!(c.len() >= 3, "{c:?}");
    for cycle in &c {
        let mut reads = cycle.clone();
        reads.sort();
        assert_eq!(reads, vec![(1, 0, 10), (3, 0, 20), (4, 100, 20)], "{c:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_refused_for_a_gap_is_split_once_and_the_split_is_remembered() {
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    fake.set_holding(1, 0, &[7]);
    fake.set_holding(1, 3, &[9]);
    fake.unit(1, |u| {
        u.missing.insert(1);
        u.missing.insert(2);
    });
    let addr = fake.serve_tcp().await;
    let mut cfg = head(broker.port, "split");
    cfg += &format!(
        "[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"{addr}\"\n[devices.d]\nbus = \"plc\"\nunit = 1\npoll = \"300ms\"\n[devices.d.points.a]\nregister = \"holding:0\"\n[devices.d.points.b]\nregister = \"holding:3\"\n"
    );
    let sub = Subscriber::connect(broker.port, "t/#");
    let gw = InProcess::start(&cfg).await;
    let state = wait_state(&sub, "t/lab/device/d/state", |v| v.get("b").is_some());
    assert_eq!(
        (state["a"].clone(), state["b"].clone()),
        (json!(7), json!(9))
    );
    let reads = || -> Vec<(u16, u16)> {
        fake.log()
            .iter()
            .filter(|s| s.fc == 3)
            .map(|s| (s.address, s.count))
            .collect()
    };
    // Two cycles more after the split (two reads each), whose reads are then checked.
    common::until(WAIT, || reads().len() >= 7, || format!("{:?}", reads())).await;
    gw.stop().await;
    let reads = reads();
    assert_eq!(
        reads.iter().filter(|r| **r == (0, 4)).count(),
        1,
        "{reads:?}"
    );
    assert_eq!(reads[0], (0, 4));
    assert!(
        reads[1..].iter().all(|r| *r == (0, 1) || *r == (3, 1)),
        "{reads:?}"
    );
    assert!(reads.len() >= 5, "{reads:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_inside_the_deadband_wait_for_the_heartbeat_while_the_state_holds_the_latest() {
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    fake.set_holding(1, 0, &[200]);
    let addr = fake.serve_tcp().await;
    let mut cfg = head(broker.port, "deadband");
    cfg += &format!(
        "[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"{addr}\"\n[devices.d]\nbus = \"plc\"\nunit = 1\npoll = \"100ms\"\n[devices.d.points.t]\nregister = \"holding:0\"\nscale = 0.1\ndeadband = 1.0\nheartbeat = \"2s\"\n"
    );
    let sub = Subscriber::connect(broker.port, "t/#");
    let gw = InProcess::start(&cfg).await;
    let sensor = "t/lab/sensor/d/t";
    let first = sub.wait_for(sensor, |_| true, WAIT).unwrap();
    let t_first = Instant::now();
    assert_eq!(json_of(&first.payload)["value"], json!(20.0));
    // 20.0 -> 20.5: inside the deadband. The state moves; the sensor topic does not.
    fake.set_holding(1, 0, &[205]);
    wait_state(&sub, "t/lab/device/d/state", |v| v["t"] == json!(20.5));
    assert_eq!(sub.on(sensor).len(), 1, "published inside the deadband");
    // The heartbeat re-publishes it about 2 s after the first publish.
    let hb = sub
        .wait_for(sensor, |p| json_of(p)["value"] == json!(20.5), WAIT)
        .expect("heartbeat");
    let _ = hb;
    assert!(
        t_first.elapsed() >= Duration::from_millis(1800),
        "{:?}",
        t_first.elapsed()
    );
    // 20.5 -> 22.0 moves past the deadband: published at once.
    fake.set_holding(1, 0, &[220]);
    assert!(
        sub.wait_for(
            sensor,
            |p| json_of(p)["value"] == json!(22.0),
            Duration::from_secs(1)
        )
        .is_some()
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_device_goes_offline_after_exactly_offline_after_polls_and_back_online() {
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    fake.set_holding(2, 0, &[42]);
    fake.unit(2, |u| u.silent = true);
    let addr = fake.serve_tcp().await;
    let mut cfg = head(broker.port, "offline");
    cfg += &format!(
        "[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"{addr}\"\ntimeout = \"100ms\"\nretries = 0\n[devices.d]\nbus = \"plc\"\nunit = 2\npoll = \"200ms\"\noffline_after = 3\noffline_retry = \"400ms\"\n[devices.d.points.v]\nregister = \"holding:0\"\n"
    );
    let sub = Subscriber::connect(broker.port, "t/#");
    let gw = InProcess::start(&cfg).await;
    let avail = "t/lab/device/d/availability";
    sub.wait_for(avail, |p| p.contains("offline"), WAIT)
        .expect("offline");
    let polls_before_offline = fake.log().iter().filter(|s| s.unit == 2).count();
    assert_eq!(
        polls_before_offline, 3,
        "offline after exactly 3 failed polls"
    );
    assert!(
        sub.on("t/lab/sensor/d/v").is_empty(),
        "a value was published for a silent device"
    );
    assert!(sub.on("t/lab/device/d/state").is_empty());
    fake.unit(2, |u| u.silent = false);
    sub.wait_for(avail, |p| p.contains("online"), WAIT)
        .expect("online again");
    let v = sub.wait_for("t/lab/sensor/d/v", |_| true, WAIT).unwrap();
    assert_eq!(json_of(&v.payload)["value"], json!(42));
    gw.stop().await;
}

/// A Modbus TCP-to-RTU gateway (Waveshare, USR, Moxa, our own `share`) answers exception 0x0B
/// for a dead device behind it: that is a failed poll, like a timeout, not an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_a_gateway_answers_0x0b_for_goes_offline_is_retried_slowly_and_comes_back() {
    use tokio_modbus::prelude::ExceptionCode;
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    fake.set_holding(5, 0, &[42]);
    fake.unit(5, |u| {
        u.exception = Some(ExceptionCode::GatewayTargetDevice)
    });
    let addr = fake.serve_tcp().await;
    let mut cfg = head(broker.port, "gw0b").replace(
        "location = \"lab\"\n",
        "location = \"lab\"\nhealth_interval = \"500ms\"\n",
    );
    cfg += &format!(
        "[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"{addr}\"\nretries = 0\n[devices.d]\nbus = \"plc\"\nunit = 5\npoll = \"200ms\"\noffline_after = 3\noffline_retry = \"1500ms\"\n[devices.d.points.v]\nregister = \"holding:0\"\n"
    );
    let sub = Subscriber::connect(broker.port, "t/#");
    let gw = InProcess::start(&cfg).await;
    let avail = "t/lab/device/d/availability";
    sub.wait_for(avail, |p| p.contains("offline"), WAIT)
        .expect("offline after the gateway's 0x0B answers");
    let polls = |fake: &FakeModbus| {
        fake.log()
            .iter()
            .filter(|s| s.unit == 5)
            .map(|s| s.at)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        polls(&fake).len(),
        3,
        "offline after exactly 3 failed polls"
    );
    assert!(sub.on("t/lab/sensor/d/v").is_empty(), "nothing invented");
    // Offline: tried every `offline_retry` (1.5 s), not every `poll` (200 ms): two retries, and
    // the time between them.
    common::until(
        WAIT,
        || polls(&fake).len() >= 5,
        || format!("retried {} times", polls(&fake).len() - 3),
    )
    .await;
    let tries = polls(&fake);
    let retries: Vec<Duration> = tries[3..]
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .collect();
    assert!(
        retries.iter().all(|d| *d >= Duration::from_millis(1_300)),
        "retried faster than offline_retry: {retries:?}"
    );
    // Health counts them apart from the device's own exceptions.
    let h = sub
        .wait_for(
            "t/gateway/gw0b/health",
            |p| json_of(p)["buses"]["plc"]["gateway_exceptions"].as_u64() >= Some(3),
            WAIT,
        )
        .expect("health");
    assert_eq!(json_of(&h.payload)["buses"]["plc"]["exceptions"], json!(0));
    // The device answers again: online at the next retry, and its value published.
    fake.unit(5, |u| u.exception = None);
    sub.wait_for(avail, |p| p.contains("\"online\""), WAIT)
        .expect("online again");
    let v = sub.wait_for("t/lab/sensor/d/v", |_| true, WAIT).unwrap();
    assert_eq!(json_of(&v.payload)["value"], json!(42));
    gw.stop().await;
}

/// A Modbus TCP device that accepts connections and resets them at once (a PLC whose server
/// is full, a firewall): the bus backs off ever more slowly — the backoff starts again only
/// after a good transaction, not after a connect — and says so once, not at every poll.
#[test]
fn a_device_that_accepts_and_resets_is_retried_with_growing_backoff_and_logged_once() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let broker = Mosquitto::start();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let counter = accepts.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            counter.fetch_add(1, Ordering::Relaxed);
            drop(stream);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = head(broker.port, "reset").replace("{dir}", &dir.path().display().to_string());
    cfg += &format!(
        "[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"{addr}\"\nretries = 0\n[devices.d]\nbus = \"plc\"\nunit = 1\npoll = \"200ms\"\n[devices.d.points.v]\nregister = \"holding:0\"\n"
    );
    let gw = common::gateway::GatewayProcess::spawn(&cfg, &[]);
    // The measured stretch: connection attempts are counted over 6 s (see below).
    std::thread::sleep(Duration::from_secs(6));
    let log = gw.log();
    let n = accepts.load(Ordering::Relaxed);
    // Polled every 200 ms for 6 s: 30 connects if every poll reconnected; with the backoff
    // (200 ms doubling to 10 s, with jitter) about 5.
    assert!(
        (2..=10).contains(&n),
        "{n} connections in 6 s; the backoff does not grow"
    );
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("bus"))
        .collect();
    assert!(
        warnings.len() <= 2,
        "warned {} times: {warnings:#?}",
        warnings.len()
    );
}

/// `modbus-rtu-over-tcp` end to end, through a serial-to-TCP converter that forwards whatever
/// the line says to the current connection. The device answers the first read late, after the
/// bus timeout, and the retry's answer follows it: one answer too many reaches the gateway. RTU
/// frames carry no transaction id, so that answer could pass for the next read's; it must be
/// discarded, never published as another point's value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_over_tcp_polls_and_writes_end_to_end_and_discards_a_late_answer() {
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    fake.set_holding(1, 0, &[111]);
    fake.set_holding(1, 20, &[555]);
    fake.unit(1, |u| {
        u.late_answers = 1;
        u.late = Duration::from_millis(450);
    });
    let tmp = tempfile::tempdir().unwrap();
    let conv = fake.serve_rtu_over_tcp(tmp.path()).await;
    let mut cfg = head(broker.port, "rtutcp");
    // `a` and `b` are two reads of one register each (the gap is beyond max_gap), so their
    // answers look alike on the wire.
    cfg += &format!(
        "[buses.conv]\nkind = \"modbus-rtu-over-tcp\"\naddress = \"{}\"\ntimeout = \"300ms\"\nretries = 1\nturnaround = \"100ms\"\n[devices.d]\nbus = \"conv\"\nunit = 1\npoll = \"1s\"\n[devices.d.points.a]\nregister = \"holding:0\"\n[devices.d.points.b]\nregister = \"holding:20\"\nwritable = true\n",
        conv.addr
    );
    let sub = Subscriber::connect(broker.port, "t/#");
    let gw = InProcess::start(&cfg).await;
    let state = wait_state(&sub, "t/lab/device/d/state", |s| {
        s["a"] == json!(111) && s["b"] == json!(555)
    });
    assert!(state["timestamp"].is_number());
    // Two more polls (a and b read apart each time), then a command through the same link.
    let reads = || fake.log().iter().filter(|s| s.fc == 3).count();
    let first = reads();
    common::until(
        WAIT,
        || reads() >= first + 4,
        || format!("{} reads", reads()),
    )
    .await;
    common::mosquitto::publish(
        broker.port,
        "t/lab/device/d/command",
        r#"{"id": "w", "b": 556}"#,
        false,
    );
    let r = sub
        .wait_for(
            "t/lab/device/d/command/result",
            |p| p.contains("\"w\""),
            WAIT,
        )
        .expect("result");
    assert_eq!(
        json_of(&r.payload),
        json!({"id": "w", "action": "set", "ok": true, "written": {"b": 556}})
    );
    let values = |p: &str| -> Vec<Value> {
        sub.on(&format!("t/lab/sensor/d/{p}"))
            .iter()
            .map(|m| json_of(&m.payload)["value"].clone())
            .collect()
    };
    assert_eq!(values("a"), vec![json!(111)], "a: {:?}", values("a"));
    assert_eq!(
        values("b"),
        vec![json!(555), json!(556)],
        "the late answer was taken for b's"
    );
    let late = fake.log().iter().filter(|s| s.fc == 3).count();
    assert!(late >= 4, "{late} reads");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_an_rtu_bus_a_dead_unit_does_not_starve_the_others() {
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    fake.set_holding(1, 0, &[1]);
    fake.set_holding(2, 0, &[2]);
    fake.unit(3, |u| u.silent = true);
    let tmp = tempfile::tempdir().unwrap();
    let pty = fake.serve_rtu(tmp.path());
    let mut cfg = head(broker.port, "rtudead");
    cfg += &format!(
        "[buses.rs485]\nkind = \"modbus-rtu\"\nport = \"{}\"\nbaud = 9600\ntimeout = \"150ms\"\nretries = 1\n",
        pty.path_str()
    );
    for u in 1..=3 {
        cfg += &format!(
            "[devices.u{u}]\nbus = \"rs485\"\nunit = {u}\npoll = \"300ms\"\noffline_after = 2\noffline_retry = \"2s\"\n[devices.u{u}.points.v]\nregister = \"holding:0\"\n"
        );
    }
    let sub = Subscriber::connect(broker.port, "t/#");
    let gw = InProcess::start(&cfg).await;
    sub.wait_for(
        "t/lab/device/u3/availability",
        |p| p.contains("offline"),
        WAIT,
    )
    .expect("u3 offline");
    fake.clear_log();
    let window = Duration::from_secs(3);
    // The measured stretch: the bus's transactions over 3 s.
    tokio::time::sleep(window).await;
    gw.stop().await;
    let log = fake.log();
    for u in [1u8, 2] {
        let n = log.iter().filter(|s| s.unit == u).count();
        // 3 s at a 300 ms period is 10 polls; generous bound for a loaded machine.
        assert!(n >= 7, "unit {u} polled {n} times in {window:?}");
    }
    // The dead unit is only probed every offline_retry (2 s), one read with one retry.
    let dead = log.iter().filter(|s| s.unit == 3).count();
    assert!(dead <= 4, "dead unit tried {dead} times");
    drop(pty);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplugging_the_rtu_adapter_and_plugging_it_back_brings_the_devices_back() {
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    fake.set_holding(1, 0, &[11]);
    let tmp = tempfile::tempdir().unwrap();
    let mut pty = fake.serve_rtu(tmp.path());
    let mut cfg = head(broker.port, "unplug");
    cfg += &format!(
        "[buses.rs485]\nkind = \"modbus-rtu\"\nport = \"{}\"\nbaud = 9600\ntimeout = \"150ms\"\nretries = 0\n[devices.m]\nbus = \"rs485\"\nunit = 1\npoll = \"200ms\"\noffline_after = 2\noffline_retry = \"500ms\"\n[devices.m.points.v]\nregister = \"holding:0\"\n",
        pty.path_str()
    );
    let sub = Subscriber::connect(broker.port, "t/#");
    let gw = InProcess::start(&cfg).await;
    let avail = "t/lab/device/m/availability";
    sub.wait_for(avail, |p| p.contains("online"), WAIT)
        .expect("online");
    pty.unplug();
    sub.wait_for(avail, |p| p.contains("offline"), WAIT)
        .expect("offline after unplug");
    sub.clear();
    fake.set_holding(1, 0, &[12]);
    pty.plug();
    sub.wait_for(avail, |p| p.contains("online"), Duration::from_secs(20))
        .expect("online after replug");
    let v = sub.wait_for("t/lab/sensor/m/v", |_| true, WAIT).unwrap();
    assert_eq!(json_of(&v.payload)["value"], json!(12));
    gw.stop().await;
}
