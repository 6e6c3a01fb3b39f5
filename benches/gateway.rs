//! `cargo bench`: the figures in BENCHMARKS.md.
//!
//! - throughput: 10 Modbus TCP devices × 100 points on an in-process tokio-modbus server whose
//!   values change on every read, polled as fast as the gateway can; the real `fieldbridge`
//!   binary (release build) confined to one core with taskset, a real mosquitto, a real
//!   subscriber counting sensor messages. Reports point updates/s, gateway CPU per 1000, RSS,
//!   and the history file's bytes per reading (after a clean stop and a checkpoint).
//! - instructions: the same load with the gateway started under `valgrind --tool=callgrind`
//!   (when valgrind is installed): after a warm-up the counters are zeroed, `BENCH_CALLGRIND_UPDATES`
//!   (default 5,000) sensor messages are let through, and the instructions the gateway executed
//!   meanwhile (all its threads, the history writer's SQLite included) are divided by them.
//!   Polled every `BENCH_CALLGRIND_POLL` (default 2 s: 500 updates/s, which the gateway keeps up
//!   with under callgrind, so every reading is published).
//!   Repeatable on a loaded machine where CPU times are not. `BENCH_CALLGRIND_OUT=DIR` keeps
//!   the profile for `callgrind_annotate`.
//! - memory: 1,000 points polled every second for `BENCH_MEMORY_SECS` (default 300 s), resident
//!   set of the gateway process at the end, and how much of packaging/code-order.txt its code
//!   layout found. `BENCH_WEB=1` configures the commissioning page (no browser open).
//! - bus efficiency: a reference device map's reads and wire time per cycle at 9600 baud,
//!   coalesced against one read per point.
//!
//! - forward: a history file holding `BENCH_FORWARD_ROWS` readings (default 1,000,000) is
//!   forwarded by the release binary to the machine's PostgreSQL (a database of its own);
//!   rows/s from the first row arriving to the last.
//! - history_rss: `fieldbridge history` over 10,000 and 1,000,000 readings in each format, the
//!   peak resident set of the process (it streams: the figure must not grow with the rows), its
//!   time, and what it wrote to files (`/proc/<pid>/io` write_bytes: SQLite's sort spills).
//!
//! - soak (only when named): an hour at 1,000 points/s, sampled every minute into a CSV.
//!
//! `cargo bench -- throughput` (or `instructions`, `commands`, `memory`, `bus`, `forward`,
//! `history_rss`, `soak`) runs one of them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::modbus::FakeModbus;
use common::mosquitto::Mosquitto;

const DEVICES: u8 = 10;
const POINTS: u16 = 100;

fn config(broker: u16, modbus: &str, dir: &std::path::Path, poll: &str) -> String {
    let mut c = format!(
        "[gateway]\nid = \"bench\"\nbase_topic = \"b\"\nlocation = \"lab\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{broker}\"\nqueue = 100000\n[history]\npath = \"{}/history.db\"\n[homeassistant]\ndiscovery = false\n[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"{modbus}\"\n",
        dir.display()
    );
    // `BENCH_WEB=1`: the commissioning page configured, no browser open (its cost at rest).
    if std::env::var("BENCH_WEB").is_ok_and(|v| v == "1") {
        c += "[web]\nlisten = \"127.0.0.1:0\"\n";
    }
    for d in 1..=DEVICES {
        c += &format!("[devices.d{d}]\nbus = \"plc\"\nunit = {d}\npoll = \"{poll}\"\n");
        for p in 0..POINTS {
            c += &format!("[devices.d{d}.points.p{p}]\nregister = \"holding:{p}\"\n");
        }
    }
    c
}

/// Counts messages on `filter` with a real subscriber.
fn count_messages(port: u16, filter: &str) -> (std::process::Child, Arc<AtomicU64>) {
    let mut child = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            filter,
            "-F",
            "%t",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let n = Arc::new(AtomicU64::new(0));
    let c = n.clone();
    std::thread::spawn(move || {
        for _ in BufReader::new(out).lines().map_while(Result::ok) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    (child, n)
}

fn proc_cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// The gateway binary the benches run: this build's, or `BENCH_GATEWAY_BIN` (an earlier build
/// kept aside, for before/after figures from the same bench in one sitting).
fn gateway_bin() -> String {
    std::env::var("BENCH_GATEWAY_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_fieldbridge").into())
}

fn spawn_gateway(cfg_path: &std::path::Path, one_core: bool) -> std::process::Child {
    let bin = gateway_bin();
    let mut cmd = if one_core && Command::new("taskset").arg("-V").output().is_ok() {
        let mut c = Command::new("taskset");
        c.args(["-c", "1", &bin]);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(["run", "-c"])
        .arg(cfg_path)
        .env("RUST_LOG", "warn")
        // As systemd/fieldbridge.service runs it; BENCH_ARENA=8 shows glibc's default.
        .env(
            "MALLOC_ARENA_MAX",
            std::env::var("BENCH_ARENA").unwrap_or_else(|_| "1".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn fake_devices(tick: bool) -> (FakeModbus, std::net::SocketAddr) {
    let fake = FakeModbus::new();
    for d in 1..=DEVICES {
        fake.set_holding(d, 0, &vec![0u16; POINTS as usize]);
        fake.unit(d, |u| u.tick = tick);
    }
    let addr = fake.serve_tcp().await;
    (fake, addr)
}

/// A broker, the 10 × 100 simulated points, and the gateway's config polling them every `poll`.
struct Load {
    broker: Mosquitto,
    _fake: FakeModbus,
    dir: tempfile::TempDir,
    cfg: std::path::PathBuf,
}

async fn load(poll: &str) -> Load {
    let broker = Mosquitto::start();
    let (fake, addr) = fake_devices(true).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        config(broker.port, &addr.to_string(), dir.path(), poll),
    )
    .unwrap();
    Load {
        broker,
        _fake: fake,
        dir,
        cfg,
    }
}

async fn throughput() {
    // A pace mosquitto and the subscriber (on the other core) keep up with, so every reading
    // the gateway makes is published and counted: CPU over counted messages is the cost of one
    // update, not of updates dropped from a full outbox. `BENCH_THROUGHPUT_POLL=1ms` saturates.
    let poll = std::env::var("BENCH_THROUGHPUT_POLL").unwrap_or_else(|_| "50ms".into());
    let l = load(&poll).await;
    let (broker, cfg) = (&l.broker, &l.cfg);
    let (mut sub, count) = count_messages(broker.port, "b/lab/sensor/#");
    let mut gw = spawn_gateway(cfg, true);
    let pid = gw.id();
    tokio::time::sleep(Duration::from_secs(3)).await; // warm up
    let (n0, c0, t0) = (
        count.load(Ordering::Relaxed),
        proc_cpu_ticks(pid),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (n1, c1, secs) = (
        count.load(Ordering::Relaxed),
        proc_cpu_ticks(pid),
        t0.elapsed().as_secs_f64(),
    );
    let updates = (n1 - n0) as f64;
    let cpu = (c1 - c0) as f64 / ticks_per_second() as f64;
    println!(
        "throughput: {:.0} point updates/s published ({} devices x {} points polled every {poll}, gateway on one core); gateway CPU {:.1} ms per 1000 updates ({:.0}% of a core); RSS {} KiB",
        updates / secs,
        DEVICES,
        POINTS,
        cpu * 1000.0 / (updates / 1000.0).max(1e-9),
        cpu / secs * 100.0,
        rss_kib(pid)
    );
    stop(&mut gw);
    let _ = sub.kill();
    bytes_per_reading("throughput", &l.dir.path().join("history.db")).await;
}

/// SIGTERM, and waits: the gateway writes what it holds to the history and stops.
fn stop(gw: &mut std::process::Child) {
    let pid = nix::unistd::Pid::from_raw(gw.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(60);
    while gw.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = gw.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = gw.wait();
}

/// The history file's size over its readings, after a checkpoint has moved the WAL into it
/// (what a reading costs on the SD card for as long as it is kept).
async fn bytes_per_reading(case: &str, db: &std::path::Path) {
    let pool = fieldbridge::history::open(db).await.unwrap();
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&pool)
        .await
        .unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM readings")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    let size = std::fs::metadata(db).unwrap().len();
    println!(
        "{case}: history file {} KiB for {rows} readings: {:.1} bytes per reading",
        size / 1024,
        size as f64 / rows.max(1) as f64
    );
}

/// Instructions per point update: the throughput load with the gateway under callgrind.
async fn instructions() {
    if Command::new("valgrind").arg("--version").output().is_err() {
        println!("instructions: valgrind is not installed; skipped");
        return;
    }
    let n: u64 = std::env::var("BENCH_CALLGRIND_UPDATES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5_000);
    // Polled at a pace the gateway keeps up with under callgrind (every reading published, none
    // left waiting in the outbox), unlike `throughput`'s as fast as it can.
    let poll = std::env::var("BENCH_CALLGRIND_POLL").unwrap_or_else(|_| "2s".into());
    let l = load(&poll).await;
    let (broker, cfg) = (&l.broker, &l.cfg);
    let (mut sub, count) = count_messages(broker.port, "b/lab/sensor/#");
    let out_dir = std::env::var("BENCH_CALLGRIND_OUT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| l.dir.path().to_path_buf());
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join("callgrind.out");
    let mut gw = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(gateway_bin())
        .args(["run", "-c"])
        .arg(cfg)
        .env("RUST_LOG", "warn")
        .env("MALLOC_ARENA_MAX", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = gw.id().to_string();
    let wait_for = |target: u64| {
        let t0 = Instant::now();
        while count.load(Ordering::Relaxed) < target {
            assert!(
                t0.elapsed() < Duration::from_secs(600),
                "instructions: only {} updates",
                count.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Warm-up: connected, every device polled a few times, the history writing.
    wait_for(3_000);
    std::thread::sleep(Duration::from_secs(1));
    let control = |arg: &str| {
        let ok = Command::new("callgrind_control")
            .args([arg, &pid])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "callgrind_control {arg} {pid} failed");
    };
    control("-z");
    let n0 = count.load(Ordering::Relaxed);
    wait_for(n0 + n);
    control("-d");
    let n1 = count.load(Ordering::Relaxed);
    stop(&mut gw);
    let _ = sub.kill();
    // The dump made by `-d` is the newest `callgrind.out.N` beside the final one.
    let mut dumps: Vec<std::path::PathBuf> = std::fs::read_dir(&out_dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with("callgrind.out."))
        })
        .collect();
    dumps.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    let dump = dumps.last().expect("no callgrind dump");
    let text = std::fs::read_to_string(dump).unwrap();
    let ir: u64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("no totals in the callgrind dump");
    println!(
        "instructions: {:.0} instructions per point update ({ir} Ir over {} updates, gateway under callgrind, history on; profile {})",
        ir as f64 / (n1 - n0) as f64,
        n1 - n0,
        dump.display()
    );
    bytes_per_reading("instructions", &l.dir.path().join("history.db")).await;
}

async fn memory() {
    let secs: u64 = std::env::var("BENCH_MEMORY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let l = load("1s").await;
    let (broker, cfg) = (&l.broker, &l.cfg);
    let (mut sub, count) = count_messages(broker.port, "b/lab/sensor/#");
    let mut gw = spawn_gateway(cfg, false);
    let pid = gw.id();
    let mut peak = 0;
    let t0 = Instant::now();
    // CPU from after the start-up (connect, first polls) to the end.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (c0, n0, t1) = (
        proc_cpu_ticks(pid),
        count.load(Ordering::Relaxed),
        Instant::now(),
    );
    while t0.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        peak = peak.max(rss_kib(pid));
    }
    let cpu = (proc_cpu_ticks(pid) - c0) as f64 / ticks_per_second() as f64;
    let updates = (count.load(Ordering::Relaxed) - n0) as f64;
    println!(
        "memory: gateway CPU {:.2}% of a core at {:.0} updates/s: {:.1} ms per 1000 updates",
        cpu / t1.elapsed().as_secs_f64() * 100.0,
        updates / t1.elapsed().as_secs_f64(),
        cpu * 1000.0 / (updates / 1000.0).max(1e-9)
    );
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    println!(
        "memory: anonymous {}, file-backed (binary, libc) {}",
        field("Anonymous:"),
        field("Pss_File:")
    );
    println!(
        "memory: {} points polled every 1 s for {} s: RSS {} KiB at the end, peak {} KiB; {} sensor messages",
        u32::from(DEVICES) * u32::from(POINTS),
        secs,
        rss_kib(pid),
        peak,
        count.load(Ordering::Relaxed)
    );
    match code_layout() {
        Some(l) => println!(
            "memory: code layout: {} (packaging/code-order.txt)",
            l.trim()
        ),
        None => println!(
            "memory: code layout: not known (no packaging/cc-ordered summary beside the binary)"
        ),
    }
    let _ = gw.kill();
    let _ = gw.wait();
    let _ = sub.kill();
}

/// What packaging/cc-ordered wrote beside the gateway binary it linked in code-order.txt's
/// order: how many of the listed functions this build has. The binary is a hard link of
/// `deps/fieldbridge-HASH`, whose summary is `deps/fieldbridge-HASH.layout` (the bin's test
/// harness, linked the same way, has its own).
fn code_layout() -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let bin = std::path::PathBuf::from(gateway_bin());
    let inode = std::fs::metadata(&bin).ok()?.ino();
    std::fs::read_dir(bin.parent()?.join("deps"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "layout"))
        .find(|p| std::fs::metadata(p.with_extension("")).is_ok_and(|m| m.ino() == inode))
        .and_then(|p| std::fs::read_to_string(p).ok())
}

/// A reference map: an SDM630-style energy meter (input registers, f32 every 2 registers with
/// gaps) and a heat pump controller (holding registers, coils).
fn bus() {
    use fieldbridge::bus::plan;
    use fieldbridge::config::BusConfig;
    let meter: Vec<u16> = vec![
        0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38, 40, 42, 46, 48,
        52, 56, 60, 62, 66, 70, 72, 74, 76, 78, 200, 202, 204, 206, 334, 342,
    ];
    let mut text = String::from(
        "[buses.rs485]\nkind = \"modbus-rtu\"\nport = \"/dev/ttyUSB0\"\nbaud = 9600\n[devices.meter]\nbus = \"rs485\"\nunit = 1\n",
    );
    for a in &meter {
        text += &format!("[devices.meter.points.r{a}]\nregister = \"input:{a}\"\ntype = \"f32\"\n");
    }
    text += "[devices.hp]\nbus = \"rs485\"\nunit = 2\n";
    for a in 0..24 {
        text += &format!(
            "[devices.hp.points.h{a}]\nregister = \"holding:{}\"\n",
            1000 + a
        );
    }
    for a in 0..16 {
        text += &format!("[devices.hp.points.c{a}]\nregister = \"coil:{a}\"\n");
    }
    let c = fieldbridge::config::parse(&text, std::path::Path::new("reference.toml")).unwrap();
    let bus: &BusConfig = &c.buses["rs485"];
    println!(
        "bus efficiency (9600 baud 8N1, reference map of {} points):",
        meter.len() + 40
    );
    println!("  device  points  reads/cycle (naive)  wire ms/cycle (naive)");
    for (name, dev) in &c.devices {
        let pts: Vec<&fieldbridge::config::PointConfig> = dev.points.values().collect();
        let coalesced: Vec<_> = plan::plan(&pts, bus.max_gap)
            .into_iter()
            .map(|r| r.spec)
            .collect();
        let naive: Vec<_> = plan::plan(&pts, 0)
            .into_iter()
            .flat_map(|r| plan::split(&r, &pts).unwrap_or_else(|| vec![r]))
            .flat_map(|r| plan::split(&r, &pts).unwrap_or_else(|| vec![r]))
            .map(|r| r.spec)
            .collect();
        let wire = |reads: &[fieldbridge::bus::ReadSpec]| -> f64 {
            reads
                .iter()
                .map(|r| plan::rtu_read_time(bus, r).as_secs_f64() * 1000.0)
                .sum()
        };
        println!(
            "  {name:6}  {:6}  {:3} ({:3})            {:6.1} ({:6.1})",
            pts.len(),
            coalesced.len(),
            naive.len(),
            wire(&coalesced),
            wire(&naive)
        );
    }
}

/// An MQTT client subscribed to `results`, handing over each message with the moment it came.
async fn measuring_client(
    port: u16,
    id: &str,
    results: &str,
) -> (
    rumqttc::AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<(Instant, Vec<u8>)>,
) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut ev) = AsyncClient::new(opts, 16);
    // The measuring client must not add Nagle's delay of its own.
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    ev.set_network_options(net);
    client.subscribe(results, QoS::AtLeastOnce).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    tokio::spawn(async move {
        while let Ok(e) = ev.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = e {
                let _ = tx.send((Instant::now(), p.payload.to_vec()));
            }
        }
    });
    (client, rx)
}

/// A second subscriber, on the retained device state: hands over each state with the moment it
/// came (the issue's "command publish -> new state on the broker").
async fn state_watcher(
    port: u16,
    topic: &str,
) -> tokio::sync::mpsc::UnboundedReceiver<(Instant, Vec<u8>)> {
    let (_client, rx) = measuring_client(port, "bench-state", topic).await;
    // The client lives as long as its event loop task, which holds what it needs.
    std::mem::forget(_client);
    rx
}

/// Command latency: MQTT publish → write at the device, and → result on the broker, over 1000
/// commands one after another (in-process TCP device, release gateway, real mosquitto).
async fn commands() {
    use rumqttc::QoS;
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    fake.unit(1, |_| {});
    let addr = fake.serve_tcp().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    let text = format!(
        "[gateway]\nid = \"bench\"\nbase_topic = \"b\"\nlocation = \"lab\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n[history]\npath = \"{}/history.db\"\n[homeassistant]\ndiscovery = false\n[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"{addr}\"\n[devices.lamp]\nbus = \"plc\"\nunit = 1\npoll = \"1s\"\n[devices.lamp.points.level]\nregister = \"holding:1\"\nwritable = true\n",
        broker.port,
        dir.path().display()
    );
    std::fs::write(&cfg, text).unwrap();
    let mut gw = spawn_gateway(&cfg, false);
    let (client, mut rx) =
        measuring_client(broker.port, "bench-cmd", "b/lab/device/lamp/command/result").await;
    // Wait for the gateway to be subscribed: send until a result comes back.
    loop {
        client
            .publish(
                "b/lab/device/lamp/command",
                QoS::AtLeastOnce,
                false,
                r#"{"id":"warm","level":1}"#,
            )
            .await
            .unwrap();
        if tokio::time::timeout(Duration::from_millis(500), rx.recv())
            .await
            .is_ok()
        {
            break;
        }
    }
    let mut states = state_watcher(broker.port, "b/lab/device/lamp/state").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    while rx.try_recv().is_ok() {}
    while states.try_recv().is_ok() {}
    // With an `id` the gateway puts it on disk (one fsync) before the write and records the
    // result after it (another); without one it has nothing to remember.
    for with_id in [true, false] {
        let mut to_write = Vec::new();
        let mut to_result = Vec::new();
        let mut to_state = Vec::new();
        for i in 0..1000u32 {
            fake.clear_log();
            // The result names the command: its `id`, or without one its level (distinct
            // from the previous command's).
            let level = i % 100 + 1;
            let body = match with_id {
                true => format!(r#"{{"id":"c{i}","level":{level}}}"#),
                false => format!(r#"{{"level":{level}}}"#),
            };
            let expect = match with_id {
                true => format!("\"c{i}\""),
                false => format!("\"level\":{level}}}"),
            };
            let sent = Instant::now();
            client
                .publish("b/lab/device/lamp/command", QoS::AtLeastOnce, false, body)
                .await
                .unwrap();
            let (at, payload) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert!(String::from_utf8_lossy(&payload).contains(&expect));
            to_result.push(at.duration_since(sent));
            // The state with the new level (on its own subscriber's connection, so it may come
            // after the result): waited for, so slow ones are not left out of the figures.
            let want = format!("\"level\":{level}");
            let give_up = Instant::now() + Duration::from_secs(2);
            while let Ok(Some((at, state))) =
                tokio::time::timeout_at(give_up.into(), states.recv()).await
            {
                let state = String::from_utf8_lossy(&state);
                if state.contains(&format!("{want},")) || state.contains(&format!("{want}}}")) {
                    to_state.push(at.duration_since(sent));
                    break;
                }
            }
            if let Some(w) = fake.log().iter().find(|s| s.fc == 6) {
                to_write.push(w.at.duration_since(sent));
            }
        }
        println!(
            "commands ({}): 1000 commands, publish -> write at device p50 {:.2} ms p99 {:.2} ms; publish -> new state on broker p50 {:.2} ms p99 {:.2} ms ({} seen); publish -> result on broker p50 {:.2} ms p99 {:.2} ms",
            if with_id { "with id" } else { "without id" },
            pct(&mut to_write, 0.5),
            pct(&mut to_write, 0.99),
            pct(&mut to_state, 0.5),
            pct(&mut to_state, 0.99),
            to_state.len(),
            pct(&mut to_result, 0.5),
            pct(&mut to_result, 0.99),
        );
    }
    let _ = gw.kill();
    let _ = gw.wait();
    busy_rtu_commands().await;
}

/// The `p` quantile of `v`, in milliseconds.
fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

/// Command latency on a busy RTU bus: two devices with four reads each that take 0.3 s (a
/// slow device at 9600 baud), polled back to back, and 40 commands at moments spread over the
/// poll cycle. A command waits for the one read on the wire, then its write and read-back
/// (0.3 s each): at most 0.9 s plus the frames.
async fn busy_rtu_commands() {
    use rumqttc::QoS;
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    for u in [1, 2] {
        fake.unit(u, |x| x.delay = Duration::from_millis(300));
    }
    let dir = tempfile::tempdir().unwrap();
    let bus = fake.serve_rtu(dir.path());
    let mut text = format!(
        "[gateway]\nid = \"bench\"\nbase_topic = \"b\"\nlocation = \"lab\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n[history]\npath = \"{}/history.db\"\n[homeassistant]\ndiscovery = false\n[buses.rs485]\nkind = \"modbus-rtu\"\nport = \"{}\"\ntimeout = \"1s\"\n",
        broker.port,
        dir.path().display(),
        bus.path_str()
    );
    for (u, name) in [(1, "a"), (2, "b")] {
        text += &format!("[devices.{name}]\nbus = \"rs485\"\nunit = {u}\npoll = \"1s\"\n");
        for p in 0..4 {
            text += &format!(
                "[devices.{name}.points.p{p}]\nregister = \"holding:{}\"\nwritable = true\n",
                p * 10
            );
        }
    }
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, text).unwrap();
    let mut gw = spawn_gateway(&cfg, false);
    let (client, mut rx) =
        measuring_client(broker.port, "bench-busy", "b/lab/device/a/command/result").await;
    // Both devices polling.
    while fake.log().iter().filter(|s| s.unit == 2).count() < 8 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut latencies = Vec::new();
    for i in 0..40u64 {
        // Spread over the 2.4 s cycle.
        tokio::time::sleep(Duration::from_millis(300 + (i * 173) % 700)).await;
        let sent = Instant::now();
        client
            .publish(
                "b/lab/device/a/command",
                QoS::AtLeastOnce,
                false,
                format!(r#"{{"id":"b{i}","p1":{i}}}"#),
            )
            .await
            .unwrap();
        let (at, payload) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&payload).contains(&format!("\"b{i}\"")));
        latencies.push(at.duration_since(sent));
    }
    let max = latencies.iter().max().copied().unwrap_or_default();
    println!(
        "commands on a busy RTU bus (2 devices x 4 reads of 0.3 s, polled back to back): 40 commands, publish -> result p50 {:.0} ms p99 {:.0} ms max {:.0} ms",
        pct(&mut latencies, 0.5),
        pct(&mut latencies, 0.99),
        max.as_secs_f64() * 1000.0
    );
    let _ = gw.kill();
    let _ = gw.wait();
}

/// One hour (`BENCH_SOAK_SECS`) at 1,000 points/s with history on: RSS, open file descriptors,
/// threads and CPU sampled every `BENCH_SOAK_EVERY` seconds (default 60) into a CSV
/// (`BENCH_SOAK_CSV`, default `target/soak.csv`) for RELIABILITY.md. Runs only when named.
async fn soak() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let secs = env("BENCH_SOAK_SECS", 3600);
    let every = env("BENCH_SOAK_EVERY", 60).max(1);
    let csv_path = std::env::var("BENCH_SOAK_CSV").unwrap_or_else(|_| "target/soak.csv".into());
    let l = load("1s").await;
    let (broker, cfg) = (&l.broker, &l.cfg);
    let (mut sub, count) = count_messages(broker.port, "b/lab/sensor/#");
    let mut gw = spawn_gateway(cfg, false);
    let pid = gw.id();
    let hz = ticks_per_second() as f64;
    let mut csv = String::from("minute,rss_kib,fds,threads,cpu_percent,messages,history_kib\n");
    let t0 = Instant::now();
    let mut last_ticks = proc_cpu_ticks(pid);
    let mut last = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_secs(every)).await;
        n += 1;
        let ticks = proc_cpu_ticks(pid);
        let cpu = (ticks - last_ticks) as f64 / hz / last.elapsed().as_secs_f64() * 100.0;
        last_ticks = ticks;
        last = Instant::now();
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0);
        let threads = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .map(|v| v.trim().to_string())
            .unwrap_or_default();
        let db = std::fs::metadata(l.dir.path().join("history.db"))
            .map(|m| m.len() / 1024)
            .unwrap_or(0);
        let line = format!(
            "{:.1},{},{},{},{:.2},{},{}\n",
            (n * every) as f64 / 60.0,
            rss_kib(pid),
            fds,
            threads,
            cpu,
            count.load(Ordering::Relaxed),
            db
        );
        print!("soak: {line}");
        csv += &line;
        std::fs::write(&csv_path, &csv).unwrap();
    }
    println!("soak: {n} samples written to {csv_path}");
    let _ = gw.kill();
    let _ = gw.wait();
    let _ = sub.kill();
}

/// A history file of `n` readings (50 points of 20 devices, one a millisecond, an hour ago),
/// written through the daemon's own writer.
async fn history_file(path: &std::path::Path, n: u64) {
    use fieldbridge::history::{self, History};
    let cfg = fieldbridge::config::HistoryConfig {
        enabled: true,
        path: path.to_path_buf(),
        retention: Duration::from_secs(30 * 86_400),
        flush: Duration::from_millis(200),
        max_size: None,
        forward: None,
    };
    let pool = history::open(path).await.unwrap();
    let (writer, h) = History::with_capacity(pool.clone(), &cfg, 100_000);
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(writer.run(stop.clone()));
    let t0 = std::time::SystemTime::now() - Duration::from_secs(3600);
    for i in 0..n {
        h.record_reading(
            &format!("device{}", i % 20),
            &format!("point{}", i % 50),
            t0 + Duration::from_micros(i * 1000 / 8),
            &fieldbridge::model::Value::Float(i as f64 / 4.0),
        );
        // Never more than the queue holds: the writer would drop rows.
        while h.stats.pending.load(Ordering::Relaxed) > 50_000 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    stop.cancel();
    task.await.unwrap();
    pool.close().await;
    assert_eq!(h.stats.dropped.load(Ordering::Relaxed), 0);
    assert_eq!(h.stats.rows.load(Ordering::Relaxed), n);
}

async fn forward() {
    let rows: u64 = std::env::var("BENCH_FORWARD_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let pg = common::postgres::TempDb::create();
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("history.db");
    history_file(&db, rows).await;
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nid = \"bench\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n[history]\npath = \"{}\"\n[history.forward]\nurl = \"{}\"\nsslmode = \"disable\"\n[homeassistant]\ndiscovery = false\n",
            broker.port,
            db.display(),
            pg.url()
        ),
    )
    .unwrap();
    let count = || -> u64 {
        let n = std::process::Command::new("psql")
            .args([
                "-X",
                "-A",
                "-t",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                &pg.name,
            ])
            .args(["-c", "SELECT count(*) FROM readings"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&n.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    };
    let mut gw = spawn_gateway(&cfg, false);
    let pid = gw.id();
    let started = Instant::now();
    let mut first = None;
    loop {
        let n = count();
        if n > 0 && first.is_none() {
            first = Some((Instant::now(), n, proc_cpu_ticks(pid)));
        }
        if n >= rows {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{n} of {rows} forwarded"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (t0, n0, c0) = first.unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (proc_cpu_ticks(pid) - c0) as f64 / ticks_per_second() as f64;
    println!(
        "forward: {:.0} rows/s to PostgreSQL on 127.0.0.1 ({} rows in {:.1} s after the first arrived; {:.1} s from start); gateway CPU {:.1} ms per 1000 rows; RSS {} KiB",
        (rows - n0) as f64 / secs,
        rows,
        secs,
        started.elapsed().as_secs_f64(),
        cpu * 1000.0 / ((rows - n0) as f64 / 1000.0),
        rss_kib(pid)
    );
    let _ = gw.kill();
    let _ = gw.wait();
}

async fn history_rss() {
    let dir = tempfile::tempdir().unwrap();
    for n in [10_000u64, 1_000_000] {
        let db = dir.path().join(format!("h{n}.db"));
        history_file(&db, n).await;
        let cfg = dir.path().join(format!("h{n}.toml"));
        std::fs::write(&cfg, format!("[history]\npath = \"{}\"\n", db.display())).unwrap();
        for format in ["json", "csv", "table"] {
            let started = Instant::now();
            let mut child = Command::new(gateway_bin())
                .args(["history", "-c"])
                .arg(&cfg)
                .args(["--format", format])
                .env("MALLOC_ARENA_MAX", "1")
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let out = child.stdout.take().unwrap();
            let bytes = std::thread::spawn(move || {
                std::io::copy(&mut BufReader::new(out), &mut std::io::sink()).unwrap()
            });
            let (mut peak, mut to_files) = (0, 0);
            while child.try_wait().unwrap().is_none() {
                // Bytes written to files (not the pipe): SQLite's temporary files, if it sorts.
                if let Ok(io) = std::fs::read_to_string(format!("/proc/{}/io", child.id())) {
                    if let Some(b) = io
                        .lines()
                        .find_map(|l| l.strip_prefix("write_bytes:"))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                    {
                        to_files = to_files.max(b);
                    }
                }
                if let Ok(s) = std::fs::read_to_string(format!("/proc/{}/status", child.id())) {
                    if let Some(kib) = s
                        .lines()
                        .find_map(|l| l.strip_prefix("VmHWM:"))
                        .and_then(|v| v.split_whitespace().next())
                        .and_then(|v| v.parse::<u64>().ok())
                    {
                        peak = peak.max(kib);
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let bytes = bytes.join().unwrap();
            println!(
                "history_rss: {n} rows as {format}: peak RSS {peak} KiB, {:.1} MB written in {:.2} s; {:.1} MB written to files",
                bytes as f64 / 1e6,
                started.elapsed().as_secs_f64(),
                to_files as f64 / 1e6
            );
        }
    }
}

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    if want("bus") {
        bus();
    }
    if want("throughput") {
        rt.block_on(throughput());
    }
    if want("instructions") {
        rt.block_on(instructions());
    }
    if want("commands") {
        rt.block_on(commands());
    }
    if want("memory") {
        rt.block_on(memory());
    }
    if want("forward") {
        rt.block_on(forward());
    }
    if want("history_rss") {
        rt.block_on(history_rss());
    }
    // An hour long: only when asked for by name.
    if filter.iter().any(|f| f == "soak") {
        rt.block_on(soak());
    }
}
