#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! The fault campaign of RELIABILITY.md: the real binary under load while the broker, the
//! devices, the cables, the config and the disk misbehave.
//!
//! Small by default, so CI runs it in a couple of minutes; `FIELDBRIDGE_FAULTS=large` runs the
//! full campaign (10 broker restarts, 10 unplugs, 50 reloads, 20 `kill -9`).

mod common;

use common::json_of;

use common::WAIT;

use std::time::{Duration, Instant};

use common::gateway::GatewayProcess;
use common::modbus::FakeModbus;
use common::mosquitto::{Mosquitto, Subscriber, publish, retained, wait_retained};
use common::pty::SocatPair;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

fn large() -> bool {
    std::env::var("FIELDBRIDGE_FAULTS").as_deref() == Ok("large")
}

/// `small` in CI, `big` with `FIELDBRIDGE_FAULTS=large`.
fn scale(small: usize, big: usize) -> usize {
    if large() { big } else { small }
}

/// A pseudo-random number in 0..n (no seed to manage; the campaign wants variety, and every
/// figure it checks holds for any timing).
fn jitter(n: u64) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    (t.wrapping_mul(6364136223846793005) >> 17) % n.max(1)
}

/// A real duration of the campaign: a fault's length, a moment chosen at random, a sampling
/// interval, a warm-up. Each call says which; events are waited for, never slept for.
fn sleep_ms(ms: u64) {
    // The duration the caller names (see above).
    std::thread::sleep(Duration::from_millis(ms));
}

/// A runtime for the simulated devices, apart from the test thread, which blocks.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// The load of campaigns 1, 4, 5 and 6: 10 devices × 10 points every 100 ms (1,000 points/s)
/// whose values move on every read, and a writable `set` register on dw (unit 11), which holds
/// what is written; a broker; a history directory; and the gateway's config for all of it.
struct Rig {
    rt: tokio::runtime::Runtime,
    fake: FakeModbus,
    addr: std::net::SocketAddr,
    broker: Mosquitto,
    hist: tempfile::TempDir,
}

impl Rig {
    fn start() -> Rig {
        let rt = runtime();
        let fake = FakeModbus::new();
        for d in 1..=10u8 {
            fake.set_holding(d, 0, &[0; 10]);
            fake.unit(d, |u| u.tick = true);
        }
        fake.set_holding(11, 0, &[0]);
        let addr = rt.block_on(fake.serve_tcp());
        Rig {
            rt,
            fake,
            addr,
            broker: Mosquitto::start(),
            hist: tempfile::tempdir().unwrap(),
        }
    }

    fn db(&self) -> std::path::PathBuf {
        self.hist.path().join("h.db")
    }

    /// The gateway's config, with `extra` lines in `[history]`.
    fn config(&self, extra: &str) -> String {
        load_config(self.broker.port, &self.addr.to_string(), &self.db(), extra)
    }
}

/// The sections every campaign shares: gateway `fz` under `f/lab`, the broker on `port`, the
/// history at `history` with `extra` lines, no discovery. Buses and devices follow.
fn head(port: u16, history: &std::path::Path, extra: &str) -> String {
    format!(
        r#"[gateway]
id = "fz"
base_topic = "f"
location = "lab"
health_interval = "1s"

[mqtt]
url = "mqtt://127.0.0.1:{port}"
reconnect_min = "100ms"
reconnect_max = "1s"
keep_alive = "5s"
queue = 200

[history]
path = "{}"
flush = "200ms"
{extra}

[homeassistant]
discovery = false
"#,
        history.display()
    )
}

fn load_config(port: u16, modbus: &str, history: &std::path::Path, extra: &str) -> String {
    let mut c = head(port, history, extra)
        + &format!(
            r#"
[buses.plc]
kind = "modbus-tcp"
address = "{modbus}"
timeout = "500ms"
"#
        );
    for d in 1..=10 {
        c += &format!("[devices.d{d}]\nbus = \"plc\"\nunit = {d}\npoll = \"100ms\"\n");
        for p in 0..10 {
            c += &format!("[devices.d{d}.points.p{p}]\nregister = \"holding:{p}\"\n");
        }
    }
    c += "[devices.dw]\nbus = \"plc\"\nunit = 11\npoll = \"1s\"\n[devices.dw.points.set]\nregister = \"holding:0\"\nwritable = true\nmax = 60000\n";
    c
}

fn online(p: &str) -> bool {
    json_of(p)["status"] == "online"
}

fn rss_kib(pid: i32) -> u64 {
    proc_status(pid, "VmRSS:")
}

fn proc_status(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What the process's file descriptors point at, sorted, so a leak names itself.
fn fds(pid: i32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| {
                    std::fs::read_link(e.path())
                        .map(|t| t.display().to_string())
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The most descriptors seen over `window`: the baseline a leak is measured against, with
/// whatever comes and goes in normal running (a socket being replaced, say) counted in.
fn fds_peak(pid: i32, window: Duration) -> Vec<String> {
    let end = Instant::now() + window;
    let mut peak = fds(pid);
    while Instant::now() < end {
        // The sampling interval over the window.
        sleep_ms(50);
        let now = fds(pid);
        if now.len() > peak.len() {
            peak = now;
        }
    }
    peak
}

/// The descriptors once they are back to at most `baseline`, or the last look after `within`:
/// what comes and goes settles, a leak stays.
fn fds_settled(pid: i32, baseline: usize, within: Duration) -> Vec<String> {
    common::poll(within, Duration::from_millis(50), || {
        Some(fds(pid)).filter(|now| now.len() <= baseline)
    })
    .unwrap_or_else(|| fds(pid))
}

/// Health reports until `counter` (a path like `["history", "full"]`) reaches `at_least`.
fn health_until(sub: &Subscriber, counter: [&str; 2], at_least: u64, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let h = next_health(sub);
        if h[counter[0]][counter[1]].as_u64().unwrap() >= at_least {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "{counter:?} never reached {at_least}: {h}"
        );
    }
}

/// The next health report published after now.
fn next_health(sub: &Subscriber) -> Value {
    sub.clear();
    let m = sub
        .wait_for("f/gateway/fz/health", |_| true, WAIT)
        .expect("a health report");
    json_of(&m.payload)
}

/// 1. The broker is killed and restarted while 1,000 points/s flow and commands arrive.
#[test]
fn broker_killed_and_restarted_under_load_leaves_nothing_stale_and_answers_every_command_once() {
    let restarts = scale(3, 10);
    let per_round = scale(5, 20);
    let mut rig = Rig::start();
    let port = rig.broker.port;
    let cfg = rig.config("");
    let gw = GatewayProcess::spawn(&cfg, &[("RUST_LOG", "info"), ("MALLOC_ARENA_MAX", "1")]);
    let pid = gw.pid().as_raw();
    wait_retained(port, "f/gateway/fz/status", online, WAIT).expect("online");
    // A warm-up at full load (queues, caches and the allocator's arenas grown to their working
    // size) before the memory baseline: the leak looked for is growth beyond it.
    sleep_ms(3000);
    let baseline = rss_kib(pid);

    let cmd = "f/lab/device/dw/command";
    let mut last = 0u64;
    let mut sent = 0usize;
    let mut queued_seen = Vec::new();
    for round in 0..restarts {
        let results = Subscriber::connect(port, &format!("{cmd}/result"));
        let health = Subscriber::connect(port, "f/gateway/fz/health");
        let ids: Vec<String> = (0..per_round).map(|c| format!("r{round}c{c}")).collect();
        for (c, id) in ids.iter().enumerate() {
            last = (round * 100 + c) as u64;
            publish(
                port,
                cmd,
                &json!({"set": last, "id": id}).to_string(),
                false,
            );
            sent += 1;
        }
        common::until_blocking(
            WAIT,
            || {
                let seen = results.seen();
                ids.iter().all(|id| {
                    seen.iter()
                        .any(|m| json_of(&m.payload)["id"] == *id.as_str())
                })
            },
            || {
                format!(
                    "round {round}: not every command was answered: {:?}",
                    results.seen()
                )
            },
        );
        // Something that must not happen (a late duplicate answer): given 300 ms to show.
        sleep_ms(300);
        let seen = results.on(&format!("{cmd}/result"));
        for id in &ids {
            let answers: Vec<Value> = seen
                .iter()
                .map(|m| json_of(&m.payload))
                .filter(|v| v["id"] == *id.as_str())
                .collect();
            assert_eq!(answers.len(), 1, "{id}: {answers:?}");
            assert_eq!(answers[0]["ok"], true, "{id}: {answers:?}");
        }
        queued_seen.push(next_health(&health)["mqtt"]["queued"].as_u64().unwrap());
        drop(results);
        drop(health);
        // Readings in flight when it dies, at a moment chosen at random...
        sleep_ms(jitter(700));
        rig.broker.kill();
        // ...and an outage long enough to overflow the queue.
        sleep_ms(600 + jitter(900));
        rig.broker.restart();
        wait_retained(port, "f/gateway/fz/status", online, WAIT)
            .unwrap_or_else(|| panic!("round {round}: not online again"));
    }
    // The broker lost every retained message with each kill: what is there now was published
    // after the last restart, and must be the newest.
    let health = Subscriber::connect(port, "f/gateway/fz/health");
    let h = next_health(&health);
    let h2 = next_health(&health);
    for d in 1..=10 {
        let a = wait_retained(
            port,
            &format!("f/lab/device/d{d}/availability"),
            online,
            WAIT,
        );
        assert!(a.is_some(), "d{d} availability not republished");
        let s = retained(port, &format!("f/lab/device/d{d}/state")).expect("state");
        let ts = json_of(&s)["timestamp"].as_f64().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(now - ts < 5.0, "d{d} state is stale by {} s", now - ts);
    }
    let s = json_of(&retained(port, "f/lab/device/dw/state").unwrap());
    assert_eq!(
        s["set"],
        json!(last),
        "the retained state has the last command"
    );
    // Executed exactly once each.
    let writes = rig
        .fake
        .log()
        .iter()
        .filter(|s| s.unit == 11 && (s.fc == 6 || s.fc == 16))
        .count();
    assert_eq!(writes, sent, "one write per command");
    // The queue bound held, and overflow was counted, not buffered.
    queued_seen.extend([&h, &h2].map(|h| h["mqtt"]["queued"].as_u64().unwrap()));
    assert!(queued_seen.iter().all(|q| *q <= 200), "{queued_seen:?}");
    assert!(h2["mqtt"]["dropped"].as_u64().unwrap() > 0, "{h2}");
    assert!(h2["mqtt"]["reconnects"].as_u64().unwrap() >= restarts as u64);
    let end = rss_kib(pid);
    println!(
        "broker restarts: {restarts}, commands {sent}, RSS {baseline} KiB before, {end} KiB after, dropped {}, queued seen {queued_seen:?}",
        h2["mqtt"]["dropped"]
    );
    assert!(
        end <= baseline + 3 * 1024,
        "memory did not come back: {baseline} KiB -> {end} KiB"
    );
}

/// 2. One device on an RTU bus flaps between answering, silence and garbage while two others
///    poll beside it.
#[test]
fn a_flapping_rtu_device_goes_offline_and_online_with_hysteresis_and_never_publishes_fakes() {
    let phases = scale(4, 12);
    let rt = runtime();
    let _rt = rt.enter();
    let fake = FakeModbus::new();
    for d in 1..=3u8 {
        fake.set_holding(d, 0, &[1000 * u16::from(d)]);
        // Values move on every read, so every good poll publishes.
        fake.unit(d, |u| u.tick = true);
    }
    let tmp = tempfile::tempdir().unwrap();
    let bus = fake.serve_rtu(tmp.path());
    let broker = Mosquitto::start();
    let mut cfg = head(broker.port, &tmp.path().join("h.db"), "")
        + &format!(
            r#"[buses.rs485]
kind = "modbus-rtu"
port = "{}"
baud = 9600
timeout = "150ms"
retries = 0
"#,
            bus.path_str()
        );
    for d in 1..=3 {
        cfg += &format!(
            "[devices.d{d}]\nbus = \"rs485\"\nunit = {d}\npoll = \"300ms\"\noffline_after = 3\noffline_retry = \"1s\"\n[devices.d{d}.points.v]\nregister = \"holding:0\"\n"
        );
    }
    let sub = Subscriber::connect(broker.port, "f/lab/device/+/availability");
    let values = Subscriber::connect(broker.port, "f/lab/sensor/+/v");
    let gw = GatewayProcess::spawn(&cfg, &[]);
    let avail = "f/lab/device/d2/availability";
    sub.wait_for(avail, online, WAIT).expect("d2 online");
    let t0 = Instant::now();
    let mut transitions = 0;
    for phase in 0..phases {
        // A missed poll or two (below offline_after = 3) must not flip availability.
        sub.clear();
        fake.unit(2, |u| u.silent = true);
        // Silent for 350 ms: one or two of its 300 ms polls missed.
        sleep_ms(350);
        fake.unit(2, |u| u.silent = false);
        // Answering again for 700 ms (two polls), in which a flip of its availability would
        // show.
        sleep_ms(700);
        assert!(
            sub.on(avail).is_empty(),
            "phase {phase}: a missed poll changed d2's availability: {:?}",
            sub.on(avail)
        );
        // Then a real outage, silent or garbage in turn.
        let garbage = phase % 2 == 1;
        fake.unit(2, |u| {
            if garbage {
                u.garbage = true;
            } else {
                u.silent = true;
            }
        });
        sub.wait_for(avail, |p| !online(p), WAIT)
            .unwrap_or_else(|| panic!("phase {phase} (garbage {garbage}): d2 did not go offline"));
        fake.unit(2, |u| {
            u.garbage = false;
            u.silent = false;
        });
        sub.wait_for(avail, online, WAIT)
            .unwrap_or_else(|| panic!("phase {phase}: d2 did not come back"));
        transitions += sub.on(avail).len();
    }
    let secs = t0.elapsed().as_secs_f64();
    let log = gw.log();
    drop(gw);
    // One offline and one online per outage, nothing more.
    assert_eq!(transitions, 2 * phases);
    assert!(
        sub.on("f/lab/device/d1/availability").is_empty()
            && sub.on("f/lab/device/d3/availability").is_empty(),
        "the healthy devices' availability changed: {:?}",
        sub.seen()
            .iter()
            .map(|m| format!("{:?} {}", m.at - t0, m.payload))
            .collect::<Vec<_>>()
            .join("\n")
            + &log
    );
    // Every value d2 published is one it held, newer than the one before: no 0, no 0xDEAD,
    // nothing stale dressed as new.
    let d2: Vec<u64> = values
        .on("f/lab/sensor/d2/v")
        .iter()
        .map(|m| json_of(&m.payload)["value"].as_u64().unwrap())
        .collect();
    let held = fake.unit(2, |u| u.holdings[&0]);
    assert!(d2.len() > 10, "{d2:?}");
    assert!(
        d2.windows(2).all(|w| w[1] > w[0])
            && d2[0] >= 2000
            && *d2.last().unwrap() < u64::from(held),
        "{d2:?} (holds {held})"
    );
    // The others kept their 300 ms period throughout.
    for d in [1, 3] {
        let times: Vec<Instant> = values
            .on(&format!("f/lab/sensor/d{d}/v"))
            .iter()
            .map(|m| m.at)
            .filter(|t| *t >= t0)
            .collect();
        let expected = secs / 0.3;
        let gap = gaps(&times);
        println!(
            "flapping: d{d} {} readings in {secs:.1} s (expected {expected:.0}), longest gap {gap:?}",
            times.len()
        );
        assert!(times.len() as f64 >= expected * 0.7, "d{d} starved");
        assert!(gap < Duration::from_millis(1500), "d{d}: gap {gap:?}");
    }
    drop(bus);
}

/// The longest time between two consecutive readings.
fn gaps(times: &[Instant]) -> Duration {
    times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

fn write_line(pty: &SocatPair, line: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .write(true)
        .open(&pty.device_path)
    {
        let _ = f.write_all(line.as_bytes());
    }
}

/// 3. Both kinds of serial adapter are pulled and plugged back in, again and again.
#[test]
fn serial_adapters_unplugged_and_replugged_resume_every_time_without_leaking() {
    let times = scale(3, 10);
    let rt = runtime();
    let _rt = rt.enter();
    let tmp = tempfile::tempdir().unwrap();
    let lines_dir = tmp.path().join("lines");
    let rtu_dir = tmp.path().join("rtu");
    std::fs::create_dir_all(&lines_dir).unwrap();
    std::fs::create_dir_all(&rtu_dir).unwrap();
    let mut cable = SocatPair::new(&lines_dir);
    let fake = FakeModbus::new();
    fake.set_holding(1, 0, &[500]);
    let mut rs485 = fake.serve_rtu(&rtu_dir);
    let broker = Mosquitto::start();
    let cfg = head(broker.port, &tmp.path().join("h.db"), "")
        + &format!(
            r#"[buses.ard]
kind = "serial"
port = "{}"
baud = 115200
format = "kv"
[buses.rs485]
kind = "modbus-rtu"
port = "{}"
baud = 9600
timeout = "150ms"
[devices.w]
bus = "ard"
[devices.w.points.t]
[devices.m]
bus = "rs485"
unit = 1
poll = "200ms"
[devices.m.points.v]
register = "holding:0"
"#,
            cable.path_str(),
            rs485.path_str()
        );
    let sub = Subscriber::connect(broker.port, "f/lab/sensor/#");
    let gw = GatewayProcess::spawn(&cfg, &[("RUST_LOG", "info")]);
    let pid = gw.pid().as_raw();
    sub.wait_for("f/lab/sensor/m/v", |p| json_of(p)["value"] == 500, WAIT)
        .expect("first RTU reading");
    let fds_before = fds_peak(pid, Duration::from_secs(1));
    let threads_before = proc_status(pid, "Threads:");
    for i in 0..times {
        cable.unplug();
        rs485.unplug();
        // Unplugged for a while chosen at random, as a person pulling the adapters.
        sleep_ms(200 + jitter(800));
        cable.plug();
        rs485.plug();
        fake.set_holding(1, 0, &[i as u16]);
        let deadline = Instant::now() + Duration::from_secs(20);
        let line = format!("t={i}\n");
        loop {
            write_line(&cable, &line);
            if sub
                .wait_for(
                    "f/lab/sensor/w/t",
                    |p| json_of(p)["value"] == i,
                    Duration::from_millis(300),
                )
                .is_some()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "unplug {i}: lines did not resume"
            );
        }
        sub.wait_for("f/lab/sensor/m/v", |p| json_of(p)["value"] == i, WAIT)
            .unwrap_or_else(|| panic!("unplug {i}: Modbus RTU did not resume: {}", gw.log()));
    }
    let fds_after = fds_settled(pid, fds_before.len(), Duration::from_secs(5));
    let threads_after = proc_status(pid, "Threads:");
    println!(
        "unplugs: {times}, fds {} -> {}, threads {threads_before} -> {threads_after}",
        fds_before.len(),
        fds_after.len()
    );
    assert!(
        fds_after.len() <= fds_before.len(),
        "file descriptors leaked: {fds_before:?} -> {fds_after:?}"
    );
    assert_eq!(threads_after, threads_before);
    let log = gw.log();
    assert!(
        log.contains("device=\"m\"") || log.contains("rs485"),
        "{log}"
    );
}

/// 4. SIGHUP again and again under load, the config changing every other time.
#[test]
fn fifty_reloads_under_load_keep_the_mqtt_session_and_leak_no_tasks_or_descriptors() {
    let reloads = scale(10, 50);
    let rig = Rig::start();
    let broker = &rig.broker;
    let base = rig.config("");
    let extra = "[devices.x]\nbus = \"plc\"\nunit = 9\npoll = \"100ms\"\n[devices.x.points.p]\nregister = \"holding:3\"\n";
    let status = Subscriber::connect(broker.port, "f/gateway/fz/status");
    let health = Subscriber::connect(broker.port, "f/gateway/fz/health");
    let gw = GatewayProcess::spawn(&base, &[("RUST_LOG", "info")]);
    let pid = gw.pid().as_raw();
    status
        .wait_for("f/gateway/fz/status", online, WAIT)
        .unwrap();
    // A warm-up at full load before the baseline of tasks and descriptors that reloads must
    // come back to.
    sleep_ms(2000);
    let before = next_health(&health);
    let fds_before = fds_peak(pid, Duration::from_secs(1));
    let threads_before = proc_status(pid, "Threads:");
    for i in 0..reloads {
        let text = if i % 2 == 0 {
            base.clone() + extra
        } else {
            base.clone()
        };
        std::fs::write(&gw.config_path, text).unwrap();
        gw.signal(Signal::SIGHUP);
        assert!(
            gw.wait_log_count("SIGHUP: config reloaded", i + 1, WAIT),
            "reload {i} not done: {}",
            gw.log()
        );
        // The next reload after a while chosen at random.
        sleep_ms(jitter(300));
    }
    // Back to the first config: the same tasks as before, once the removed device's have
    // ended (what comes and goes settles, a leak stays).
    let after = common::poll(WAIT, Duration::ZERO, || {
        Some(next_health(&health)).filter(|h| h["tasks"] == before["tasks"])
    })
    .unwrap_or_else(|| next_health(&health));
    let fds_after = fds_settled(pid, fds_before.len(), Duration::from_secs(5));
    let threads_after = proc_status(pid, "Threads:");
    println!(
        "reloads: {reloads}; tasks {} -> {}; fds {} -> {}; threads {threads_before} -> {threads_after}",
        before["tasks"],
        after["tasks"],
        fds_before.len(),
        fds_after.len()
    );
    assert_eq!(after["mqtt"]["reconnects"], 0, "the MQTT session was lost");
    assert!(
        status
            .on("f/gateway/fz/status")
            .iter()
            .all(|m| online(&m.payload)),
        "the gateway went offline during reloads: {:?}\n{}",
        status.on("f/gateway/fz/status"),
        gw.log()
    );
    assert_eq!(after["tasks"], before["tasks"], "tasks leaked");
    assert!(
        fds_after.len() <= fds_before.len(),
        "file descriptors leaked: {fds_before:?} -> {fds_after:?}"
    );
    assert_eq!(threads_after, threads_before);
    assert!(
        after["buses"]["plc"]["transactions"].as_u64().unwrap()
            > before["buses"]["plc"]["transactions"].as_u64().unwrap()
    );
}

async fn newest_reading_ms(db: &std::path::Path) -> Option<i64> {
    let pool = fieldbridge::history::open_read_only(db).await.ok()?;
    let ts: Option<i64> = sqlx::query_scalar("SELECT max(ts) FROM readings")
        .fetch_one(&pool)
        .await
        .ok()?;
    pool.close().await;
    ts
}

/// The readings in the history file.
async fn readings(db: &std::path::Path) -> i64 {
    let pool = fieldbridge::history::open_read_only(db).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM readings")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// 5. The history fills its cap (SQLite's max_page_count, as a full disk), and then its file is
///    deleted underneath the daemon.
#[test]
fn a_full_history_makes_room_and_a_deleted_one_is_recreated_while_bridging_goes_on() {
    let rig = Rig::start();
    let (broker, rt, db) = (&rig.broker, &rig.rt, rig.db());
    let cfg = rig.config("max_size = \"256KiB\"");
    let health = Subscriber::connect(broker.port, "f/gateway/fz/health");
    let sensor = Subscriber::connect(broker.port, "f/lab/sensor/d5/p5");
    let gw = GatewayProcess::spawn(&cfg, &[("RUST_LOG", "info")]);
    // 1,000 rows a second fill 256 KiB in seconds.
    let full = health_until(&health, ["history", "full"], 2, Duration::from_secs(60));
    // Full twice more: room made again and again while the rows keep coming.
    let later = health_until(
        &health,
        ["history", "full"],
        full["history"]["full"].as_u64().unwrap() + 2,
        Duration::from_secs(60),
    );
    let size = std::fs::metadata(&db).unwrap().len();
    println!("full: {full}\nlater: {later}\nfile {size} bytes");
    assert!(size <= 256 * 1024, "the file outgrew max_size: {size}");
    assert!(
        later["history"]["rows"].as_u64() > full["history"]["rows"].as_u64(),
        "rows stopped being written"
    );
    assert_eq!(later["history"]["dropped"], 0, "{later}");
    let newest = rt.block_on(newest_reading_ms(&db)).expect("readings");
    assert!(now_ms() - newest < 3000, "the newest readings are not kept");
    assert!(gw.log().contains("history database full"), "{}", gw.log());

    // Deleted underneath: noticed, created again, and filled with what comes next.
    let deleted_at = now_ms();
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
    sensor.clear();
    let h = health_until(&health, ["history", "reopened"], 1, WAIT);
    // Readings recorded in the new file and published meanwhile.
    common::until_blocking(
        WAIT,
        || {
            rt.block_on(newest_reading_ms(&db))
                .is_some_and(|n| n > deleted_at)
                && sensor.on("f/lab/sensor/d5/p5").len() >= 5
        },
        || "nothing recorded in the new file, or bridging stopped".into(),
    );
    let newest = rt.block_on(newest_reading_ms(&db)).expect("a new database");
    assert!(newest > deleted_at, "nothing written after the delete");
    assert!(
        gw.log()
            .contains("history database was deleted or replaced")
    );
    assert!(h["history"]["errors"].as_u64().unwrap() >= 1);
    assert!(
        sensor.on("f/lab/sensor/d5/p5").len() >= 5,
        "bridging stopped"
    );
}

/// 6. `kill -9` at random moments, then a restart on the same history.
#[test]
fn kill_9_at_random_moments_restarts_cleanly_with_an_intact_history() {
    let runs = scale(3, 20);
    let rig = Rig::start();
    let (broker, rt, db) = (&rig.broker, &rig.rt, rig.db());
    let cfg = rig.config("");
    let mut rows = Vec::new();
    for run in 0..runs {
        let status = Subscriber::connect(broker.port, "f/gateway/fz/status");
        let gw = GatewayProcess::spawn(&cfg, &[("RUST_LOG", "info")]);
        // Every start is clean: online, and no history error.
        status
            .wait_for("f/gateway/fz/status", online, WAIT)
            .unwrap_or_else(|| panic!("run {run}: not online: {}", gw.log()));
        let log = gw.log();
        assert!(!log.contains("history database"), "run {run}: {log}");
        assert!(!log.contains("ERROR"), "run {run}: {log}");
        // Killed at a moment chosen at random.
        sleep_ms(jitter(2500));
        gw.signal(Signal::SIGKILL);
        drop(gw);
        rows.push(rt.block_on(readings(&db)));
    }
    // A last clean run that records readings of its own, then the file is checked page by
    // page.
    let mut gw = GatewayProcess::spawn(&cfg, &[("RUST_LOG", "info")]);
    wait_retained(broker.port, "f/gateway/fz/status", online, WAIT).unwrap();
    let killed = *rows.last().unwrap();
    common::until_blocking(
        WAIT,
        || rt.block_on(readings(&db)) > killed,
        || format!("the last run recorded nothing: {}", gw.log()),
    );
    gw.signal(Signal::SIGTERM);
    assert!(gw.wait_exit(Duration::from_secs(3)).unwrap().success());
    let check: String = rt.block_on(async {
        let pool = fieldbridge::history::open_read_only(&db).await.unwrap();
        sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&pool)
            .await
            .unwrap()
    });
    println!("kill -9 runs: {runs}; readings after each: {rows:?}; integrity: {check}");
    assert_eq!(check, "ok");
    assert!(rows.windows(2).all(|w| w[1] >= w[0]), "{rows:?}");
    assert!(*rows.last().unwrap() > 0);
}
