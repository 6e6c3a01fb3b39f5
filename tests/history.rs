#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! History in a real SQLite file, through the code the daemon uses.

mod common;

use common::json_of;

use common::WAIT;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::gateway::{GatewayProcess, InProcess};
use common::modbus::FakeModbus;
use common::mosquitto::{Mosquitto, Subscriber, publish};
use fieldbridge::config::HistoryConfig;
use fieldbridge::history::{self, Filter, History};
use fieldbridge::model::Value;
use nix::sys::signal::Signal;
use serde_json::{Value as Json, json};
use tokio_util::sync::CancellationToken;

fn hcfg(path: &std::path::Path, flush_ms: u64) -> HistoryConfig {
    HistoryConfig {
        enabled: true,
        path: path.to_path_buf(),
        retention: Duration::from_secs(30 * 86_400),
        flush: Duration::from_millis(flush_ms),
        max_size: None,
        forward: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_holds_exactly_what_was_published_with_availability_and_commands() {
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    fake.set_holding(1, 0, &[10, 20, 30]);
    fake.unit(1, |u| u.tick = true);
    let addr = fake.serve_tcp().await;
    let cfg = format!(
        "[gateway]\nid = \"hist\"\nbase_topic = \"t\"\nlocation = \"lab\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n[history]\npath = \"{{dir}}/history.db\"\nflush = \"200ms\"\n[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"{addr}\"\n[devices.d]\nbus = \"plc\"\nunit = 1\npoll = \"100ms\"\n[devices.d.points.a]\nregister = \"holding:0\"\nwritable = true\n[devices.d.points.b]\nregister = \"holding:1\"\nscale = 0.5\n[devices.d.points.c]\nregister = \"holding:2\"\nmap = {{ 30 = \"thirty\" }}\n",
        broker.port
    );
    let sub = Subscriber::connect(broker.port, "t/#");
    let gw = InProcess::start(&cfg).await;
    let db = gw.dir.path().join("history.db");
    sub.wait_for("t/lab/sensor/d/a", |_| true, WAIT).unwrap();
    publish(
        broker.port,
        "t/lab/device/d/command",
        r#"{"id": "h1", "a": 7}"#,
        false,
    );
    sub.wait_for("t/lab/device/d/command/result", |p| p.contains("h1"), WAIT)
        .unwrap();
    // Readings go on after the command (three more of `a`): the history holds more than it.
    let after = sub.on("t/lab/sensor/d/a").len() + 3;
    sub.wait_nth("t/lab/sensor/d/a", after, WAIT)
        .expect("readings after the command");
    let (code, _dir) = gw.stop_keeping_dir().await;
    assert_eq!(code, 0);

    // What the broker saw on the sensor topics...
    let published: BTreeSet<(String, String, String)> = sub
        .seen()
        .into_iter()
        .filter(|m| m.topic.starts_with("t/lab/sensor/d/"))
        .map(|m| {
            let v = json_of(&m.payload);
            (
                m.topic.rsplit('/').next().unwrap().to_string(),
                format!("{:.3}", v["timestamp"].as_f64().unwrap()),
                v["value"].to_string(),
            )
        })
        .collect();
    // ...is exactly what the history holds.
    let pool = history::open_read_only(&db).await.unwrap();
    let rows = history::query(&pool, &Filter::default()).await.unwrap();
    let stored: BTreeSet<(String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r.point.clone(),
                format!("{:.3}", r.timestamp),
                r.value.to_json().to_string(),
            )
        })
        .collect();
    assert!(published.len() >= 6, "{published:?}");
    assert_eq!(stored, published);
    assert_eq!(rows.len(), published.len(), "no duplicates");
    let events = history::events(&pool).await.unwrap();
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.kind.as_str(), e.detail.as_str()))
        .collect();
    assert_eq!(kinds.first(), Some(&("gateway", "start")));
    assert_eq!(kinds.last(), Some(&("gateway", "stop")));
    assert!(kinds.contains(&("availability", "online")));
    let cmd = events
        .iter()
        .find(|e| e.kind == "command")
        .expect("command recorded");
    assert_eq!(cmd.device.as_deref(), Some("d"));
    let detail = json_of(&cmd.detail);
    assert!(detail["payload"].as_str().unwrap().contains("\"h1\""));
    assert!(detail["result"].as_str().unwrap().contains("\"ok\":true"));
}

/// SIGTERM to the daemon: it closes the file's connections (writer, command log) before it
/// exits, so the last one checkpoints the WAL into `history.db` and removes it. A copy of
/// `history.db` alone, or a backup of it, then holds everything; before, the process exited
/// with its connections open and left a WAL of up to 4 MB beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_daemon_leaves_one_file_with_everything_and_no_wal() {
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    fake.set_holding(1, 0, &[10, 20]);
    fake.unit(1, |u| u.tick = true);
    let addr = fake.serve_tcp().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("history.db");
    let cfg = format!(
        "[gateway]\nid = \"wal\"\nbase_topic = \"t\"\nlocation = \"lab\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n[history]\npath = \"{}\"\nflush = \"100ms\"\n[homeassistant]\ndiscovery = false\n[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"{addr}\"\n[devices.d]\nbus = \"plc\"\nunit = 1\npoll = \"50ms\"\n[devices.d.points.a]\nregister = \"holding:0\"\nwritable = true\n[devices.d.points.b]\nregister = \"holding:1\"\n",
        broker.port,
        db.display()
    );
    let sub = Subscriber::connect(broker.port, "t/#");
    let mut gw = GatewayProcess::spawn_in(dir, &cfg, &[]);
    for n in 1..=20 {
        sub.wait_for(
            "t/lab/sensor/d/a",
            |p| {
                json_of(p)["value"]
                    .as_f64()
                    .is_some_and(|v| v >= 10.0 + n as f64)
            },
            WAIT,
        )
        .unwrap();
    }
    // A command with an id: its log is a connection of its own to the same file.
    publish(
        broker.port,
        "t/lab/device/d/command",
        r#"{"id": "w1", "b": 5}"#,
        false,
    );
    sub.wait_for("t/lab/device/d/command/result", |p| p.contains("w1"), WAIT)
        .unwrap();
    let sensor = |m: &&common::mosquitto::Msg| m.topic.starts_with("t/lab/sensor/d/");
    let published = sub.seen().iter().filter(sensor).count();
    gw.signal(Signal::SIGTERM);
    let status = gw.wait_exit(WAIT).expect("stopped");
    assert!(status.success(), "{status:?}\n{}", gw.log());
    let wal = db.with_file_name("history.db-wal");
    assert!(
        !wal.exists(),
        "{} left behind ({} bytes)\n{}",
        wal.display(),
        wal.metadata().map(|m| m.len()).unwrap_or(0),
        gw.log()
    );
    // Everything is in the one file: every reading the broker had before the stop, and the
    // stop itself.
    let pool = history::open_read_only(&db).await.unwrap();
    let rows = history::query(&pool, &Filter::default()).await.unwrap();
    assert!(
        rows.len() >= published && published >= 20,
        "{} readings in history.db, {published} published",
        rows.len()
    );
    let events = history::events(&pool).await.unwrap();
    assert_eq!(
        events.last().map(|e| (e.kind.as_str(), e.detail.as_str())),
        Some(("gateway", "stop"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_heavy_writing_leaves_an_intact_file_missing_at_most_the_last_window() {
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    let mut cfg = format!(
        "[gateway]\nid = \"k9\"\nbase_topic = \"t\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n[history]\npath = \"{{dir}}/history.db\"\nflush = \"250ms\"\n[homeassistant]\ndiscovery = false\n[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"{{addr}}\"\n",
        broker.port
    );
    for d in 1..=4u8 {
        fake.set_holding(d, 0, &[0; 100]);
        fake.unit(d, |u| u.tick = true);
        cfg += &format!("[devices.d{d}]\nbus = \"plc\"\nunit = {d}\npoll = \"20ms\"\n");
        for p in 0..100 {
            cfg += &format!("[devices.d{d}.points.p{p}]\nregister = \"holding:{p}\"\n");
        }
    }
    let addr = fake.serve_tcp().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg
        .replace("{addr}", &addr.to_string())
        .replace("{dir}", &dir.path().display().to_string());
    let db = dir.path().join("history.db");
    let mut gw = GatewayProcess::spawn(&cfg, &[("RUST_LOG", "warn")]);
    // Heavy writing (400 points every 20 ms) under way, several flush windows of it committed,
    // then the kill lands mid-stream.
    let committed = async || -> Option<i64> {
        let pool = history::open_read_only(&db).await.ok()?;
        let n = sqlx::query_scalar("SELECT count(*) FROM readings")
            .fetch_one(&pool)
            .await
            .ok();
        pool.close().await;
        n
    };
    let before_kill = common::poll_queried(WAIT, Duration::from_millis(100), async || {
        committed().await.filter(|n| *n >= 5_000)
    })
    .await
    .expect("5,000 readings committed");
    let killed_at = SystemTime::now();
    gw.signal(Signal::SIGKILL);
    gw.wait_exit(WAIT).unwrap();

    let pool = history::open(&db).await.unwrap();
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(check, "ok");
    let rows = history::query(&pool, &Filter::default()).await.unwrap();
    assert!(
        rows.len() as i64 >= before_kill,
        "{} rows after the kill, {before_kill} committed before it",
        rows.len()
    );
    let last = rows.iter().map(|r| r.timestamp).fold(0.0, f64::max);
    let killed = killed_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let lost = killed - last;
    // One flush window (250 ms) plus the time a batch takes to commit on a loaded machine.
    assert!(lost <= 0.25 + 0.5, "{lost:.3} s of readings lost");
}

/// Retention goes by the time since a row was recorded on the file's own clock, not by the
/// row's time: rows recorded under a clock 40 days behind (a Pi before NTP) are kept for the
/// retention period like any, and go once it has passed, whatever their times say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_goes_by_the_time_since_recording_not_by_the_rows_times() {
    const DAY: i64 = 86_400_000;
    let retention = Duration::from_secs(30 * 86_400);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    let pool = history::open(&db).await.unwrap();
    let write = |f: Box<dyn FnOnce(&history::HistoryHandle) + Send>| {
        let (pool, db) = (pool.clone(), db.clone());
        async move {
            let (writer, h) = History::new(pool, &hcfg(&db, 50));
            let stop = CancellationToken::new();
            let task = tokio::spawn(writer.run(stop.clone()));
            f(&h);
            stop.cancel();
            task.await.unwrap();
        }
    };
    let old = SystemTime::now() - Duration::from_secs(40 * 86_400);
    write(Box::new(move |h| {
        for i in 0..2500 {
            h.record_reading(
                "d",
                "p",
                old + Duration::from_millis(i),
                &Value::Int(i.into()),
            );
        }
        h.record_availability("d", true, old);
    }))
    .await;
    // Marks on the file's clock (the writer's own, at its start, are near 0): nothing has been
    // kept 30 days yet, old as the rows' times are.
    let t0 = 1_000_000;
    assert_eq!(history::mark(&pool, t0, retention).await.unwrap(), None);
    let now = SystemTime::now();
    write(Box::new(move |h| {
        h.record_reading("d", "p", now, &Value::Float(1.5));
        h.record_availability("d", false, now);
    }))
    .await;
    assert_eq!(
        history::mark(&pool, t0 + 10 * DAY, retention)
            .await
            .unwrap(),
        None
    );
    // 30 days after the first mark: what was recorded before it goes.
    let upto = history::mark(&pool, t0 + 30 * DAY, retention)
        .await
        .unwrap()
        .expect("a mark 30 days old");
    assert_eq!(
        upto,
        history::Upto {
            readings: 2500,
            events: 1
        }
    );
    let removed = history::retain(&pool, upto, None).await.unwrap();
    assert_eq!(removed.rows, 2501);
    let rows = history::query(&pool, &Filter::default()).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].value, Value::Float(1.5));
    let events = history::events(&pool).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].detail, "offline");
    // The marks older than the one used are gone; it stays for the next run.
    let marks: Vec<i64> = sqlx::query_scalar("SELECT at FROM retention_marks ORDER BY at")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(marks, [t0, t0 + 10 * DAY, t0 + 30 * DAY]);
    assert_eq!(
        history::retain(&pool, upto, None).await.unwrap(),
        history::Deleted::default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_and_counts_and_never_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    let pool = history::open(&db).await.unwrap();
    let (_writer, h) = History::with_capacity(pool, &hcfg(&db, 1000), 10);
    let t0 = std::time::Instant::now();
    for i in 0..1000 {
        h.record_reading("d", "p", SystemTime::now(), &Value::Int(i));
    }
    assert!(t0.elapsed() < Duration::from_millis(500));
    assert_eq!(
        h.stats.dropped.load(std::sync::atomic::Ordering::Relaxed),
        990
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_every_kind_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    let pool = history::open(&db).await.unwrap();
    let (writer, h) = History::new(pool.clone(), &hcfg(&db, 50));
    let stop = CancellationToken::new();
    let task = tokio::spawn(writer.run(stop.clone()));
    let values = [
        Value::Int(-5),
        Value::Int(i128::from(u64::MAX)),
        Value::Float(21.25),
        Value::Text("on".into()),
        Value::Bool(true),
    ];
    let t = SystemTime::now();
    for (i, v) in values.iter().enumerate() {
        h.record_reading(
            "d",
            &format!("p{i}"),
            t + Duration::from_millis(i as u64),
            v,
        );
    }
    stop.cancel();
    task.await.unwrap();
    let got: Vec<Value> = history::query(&pool, &Filter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.value)
        .collect();
    assert_eq!(got, values);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_command_filters_and_prints_table_csv_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("history.db");
    let pool = history::open(&db).await.unwrap();
    let (writer, h) = History::new(pool.clone(), &hcfg(&db, 50));
    let stop = CancellationToken::new();
    let task = tokio::spawn(writer.run(stop.clone()));
    let now = SystemTime::now();
    let t_old = now - Duration::from_secs(7200);
    let t_new = now - Duration::from_secs(60);
    h.record_reading("boiler", "temp", t_old, &Value::Float(20.5));
    h.record_reading("boiler", "temp", t_new, &Value::Float(21.5));
    h.record_reading("boiler", "mode", t_new, &Value::Text("heat, eco".into()));
    h.record_reading("lamp", "state", t_new, &Value::Bool(true));
    stop.cancel();
    task.await.unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, format!("[history]\npath = \"{}\"\n", db.display())).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_fieldbridge"))
            .arg("history")
            .arg("-c")
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let ts = |t: SystemTime| {
        (t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as f64)
            / 1000.0
    };
    // json: one array, values typed.
    let all: Json = serde_json::from_str(&run(&["--format", "json"])).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 4);
    assert_eq!(
        all[0],
        json!({"timestamp": ts(t_old), "device": "boiler", "point": "temp", "value": 20.5})
    );
    let recent: Json = serde_json::from_str(&run(&[
        "--format", "json", "--device", "boiler", "--since", "1h",
    ]))
    .unwrap();
    let recent = recent.as_array().unwrap();
    assert_eq!(recent.len(), 2);
    assert!(recent.iter().all(|r| r["device"] == json!("boiler")));
    let until = humantime::format_rfc3339_seconds(now - Duration::from_secs(3600)).to_string();
    let old: Json = serde_json::from_str(&run(&["--format", "json", "--until", &until])).unwrap();
    assert_eq!(old.as_array().unwrap().len(), 1);
    assert_eq!(old[0]["value"], json!(20.5));
    let lamp: Json = serde_json::from_str(&run(&["--format", "json", "--point", "state"])).unwrap();
    assert_eq!(lamp[0]["value"], json!(true));
    // csv: the header, then fields; text with a comma is quoted.
    let csv = run(&["--format", "csv", "--device", "boiler", "--since", "1h"]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "timestamp,device,point,value");
    assert_eq!(lines.len(), 3);
    assert!(
        lines.contains(&format!("{:.3},boiler,temp,21.5", ts(t_new)).as_str()),
        "{csv}"
    );
    assert!(
        lines.contains(&format!("{:.3},boiler,mode,\"heat, eco\"", ts(t_new)).as_str()),
        "{csv}"
    );
    // table: for people, one line per row plus the header.
    let table = run(&["--point", "temp"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("time (UTC)"));
    assert!(
        lines[1].contains("boiler") && lines[1].trim_end().ends_with("20.5"),
        "{table}"
    );
    // A bad time is a usage error.
    let out = Command::new(env!("CARGO_BIN_EXE_fieldbridge"))
        .args(["history", "-c"])
        .arg(&config)
        .args(["--since", "yesterday-ish"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_keeps_recording_while_the_broker_is_away() {
    let mut broker = Mosquitto::start();
    let fake = FakeModbus::new();
    fake.set_holding(1, 0, &[1]);
    fake.unit(1, |u| u.tick = true);
    let addr = fake.serve_tcp().await;
    let cfg = format!(
        "[gateway]\nid = \"away\"\nbase_topic = \"t\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n[history]\npath = \"{{dir}}/history.db\"\nflush = \"100ms\"\n[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"{addr}\"\n[devices.d]\nbus = \"plc\"\nunit = 1\npoll = \"100ms\"\n[devices.d.points.a]\nregister = \"holding:0\"\n",
        broker.port
    );
    let sub = Subscriber::connect(broker.port, "t/#");
    let gw = InProcess::start(&cfg).await;
    let db = gw.dir.path().join("history.db");
    // Readings published while the broker is there; then, with it gone, eight more recorded.
    sub.wait_nth("t/home/sensor/d/a", 3, WAIT)
        .unwrap_or_else(|| panic!("no readings published: {:?}", sub.seen()));
    broker.kill();
    let away_from = SystemTime::now();
    let away = async || -> usize {
        let Ok(pool) = history::open_read_only(&db).await else {
            return 0;
        };
        let filter = Filter {
            since: Some(away_from),
            ..Filter::default()
        };
        let n = history::query(&pool, &filter).await.map_or(0, |r| r.len());
        pool.close().await;
        n
    };
    common::until_queried(
        WAIT,
        Duration::from_millis(100),
        async || away().await >= 8,
        || "fewer than 8 readings recorded while the broker was away".into(),
    )
    .await;
    let (_, _dir) = gw.stop_keeping_dir().await;
    let n = away().await;
    assert!(
        n >= 8,
        "only {n} readings recorded while the broker was away"
    );
}

/// A capped database filled again and again: each time SQLite refuses the batch (and rolls the
/// whole transaction back by itself, which once left sqlx's connection unable to begin another),
/// the oldest rows make room and the batch is written; nothing is dropped and the newest rows
/// are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_history_full_again_and_again_drops_nothing_and_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    // Room for a whole batch (up to BATCH = 2,000 rows, when a slow fsync lets rows pile up)
    // beside the schema's dozen pages.
    let cap = 192 * 1024;
    let cfg = HistoryConfig {
        max_size: Some(cap),
        ..hcfg(&db, 20)
    };
    let pool = history::open_with(&db, cfg.max_size).await.unwrap();
    let (writer, h) = History::new(pool, &cfg);
    let stop = CancellationToken::new();
    let task = tokio::spawn(writer.run(stop.clone()));
    let t0 = SystemTime::now();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let mut last = 0;
    for batch in 0..40u64 {
        for i in 0..500u64 {
            last = batch * 500 + i;
            h.record_reading(
                "d",
                &format!("p{}", i % 20),
                t0 + Duration::from_millis(last),
                &Value::Int(i128::from(last)),
            );
        }
        // Each batch written (or dropped, which is counted and fails below) before the next
        // comes, as a poll loop's batches come a flush window apart.
        let handled = (batch + 1) * 500;
        common::until(
            WAIT,
            || load(&h.stats.rows) + load(&h.stats.dropped) >= handled,
            || format!("batch {batch} not written: {:?}", h.stats),
        )
        .await;
    }
    stop.cancel();
    task.await.unwrap();
    assert!(load(&h.stats.full) >= 3, "never full: {:?}", h.stats);
    assert_eq!(load(&h.stats.dropped), 0, "{:?}", h.stats);
    assert_eq!(load(&h.stats.rows), 20_000, "{:?}", h.stats);
    assert!(std::fs::metadata(&db).unwrap().len() <= cap);
    let pool = history::open_read_only(&db).await.unwrap();
    let rows = history::query(&pool, &Filter::default()).await.unwrap();
    assert!(rows.len() < 20_000);
    assert!(
        rows.iter().any(|r| r.value == Value::Int(i128::from(last))),
        "the newest reading was not kept"
    );
}

/// Runs `fieldbridge history -c config args…`; returns (exit code, stdout, stderr).
fn history_cli(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fieldbridge"))
        .arg("history")
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_events_show_availability_changes_and_commands_with_their_results_and_limit_holds()
{
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    fake.set_holding(1, 0, &[10]);
    let addr = fake.serve_tcp().await;
    let cfg = format!(
        "[gateway]\nid = \"ev\"\nbase_topic = \"t\"\nlocation = \"lab\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n[history]\npath = \"{{dir}}/history.db\"\nflush = \"100ms\"\n[homeassistant]\ndiscovery = false\n[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"{addr}\"\ntimeout = \"100ms\"\nretries = 0\n[devices.d]\nbus = \"plc\"\nunit = 1\npoll = \"100ms\"\noffline_after = 2\noffline_retry = \"200ms\"\n[devices.d.points.a]\nregister = \"holding:0\"\nwritable = true\nmax = 100\nheartbeat = \"100ms\"\n",
        broker.port
    );
    let sub = Subscriber::connect(broker.port, "t/#");
    let gw = InProcess::start(&cfg).await;
    sub.wait_for(
        "t/lab/device/d/availability",
        |p| p.contains("online"),
        WAIT,
    )
    .unwrap();
    publish(
        broker.port,
        "t/lab/device/d/command",
        r#"{"id": "c1", "a": 7}"#,
        false,
    );
    sub.wait_for("t/lab/device/d/command/result", |p| p.contains("c1"), WAIT)
        .unwrap();
    publish(
        broker.port,
        "t/lab/device/d/command",
        r#"{"id": "c2", "a": 500}"#,
        false,
    );
    sub.wait_for("t/lab/device/d/command/result", |p| p.contains("c2"), WAIT)
        .unwrap();
    fake.unit(1, |u| u.silent = true);
    sub.wait_for(
        "t/lab/device/d/availability",
        |p| p.contains("offline"),
        WAIT,
    )
    .unwrap();
    sub.clear();
    fake.unit(1, |u| u.silent = false);
    sub.wait_for(
        "t/lab/device/d/availability",
        |p| p.contains("online"),
        WAIT,
    )
    .unwrap();
    // Heartbeats: readings enough for --limit to cut.
    sub.wait_nth("t/lab/sensor/d/a", 6, WAIT)
        .expect("heartbeats");
    let (code, dir) = gw.stop_keeping_dir().await;
    assert_eq!(code, 0);
    let config = dir.path().join("config.toml");

    let (code, out, err) = history_cli(&config, &["--events", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let events: Vec<Json> = serde_json::from_str(&out).unwrap();
    let kinds: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_string(),
                e["detail"].as_str().unwrap_or("<object>").to_string(),
            )
        })
        .collect();
    assert_eq!(
        kinds.first().unwrap(),
        &("gateway".into(), "start".into()),
        "{kinds:?}"
    );
    assert_eq!(
        kinds.last().unwrap(),
        &("gateway".into(), "stop".into()),
        "{kinds:?}"
    );
    let availability: Vec<&str> = kinds
        .iter()
        .filter(|k| k.0 == "availability")
        .map(|k| k.1.as_str())
        .collect();
    assert_eq!(availability, ["online", "offline", "online"]);
    // Each command with the result it got.
    let command = |id: &str| {
        events
            .iter()
            .find(|e| e["event"] == "command" && e["detail"]["command"]["id"] == id)
            .unwrap_or_else(|| panic!("command {id} in {out}"))
            .clone()
    };
    let c1 = command("c1");
    assert_eq!(c1["device"], "d");
    assert_eq!(c1["detail"]["command"]["a"], 7);
    assert_eq!(c1["detail"]["result"]["ok"], true);
    assert_eq!(c1["detail"]["result"]["written"]["a"], 7);
    let c2 = command("c2");
    assert_eq!(c2["detail"]["result"]["ok"], false);
    assert!(
        c2["detail"]["result"]["error"]
            .as_str()
            .unwrap()
            .contains("max"),
        "{c2}"
    );
    // In recording order, as with readings: with no clock step, in time order.
    let times: Vec<f64> = events
        .iter()
        .map(|e| e["timestamp"].as_f64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));

    // --limit: the newest N, still oldest first.
    let (_, out, _) = history_cli(&config, &["--events", "--limit", "2", "--format", "json"]);
    let last2: Vec<Json> = serde_json::from_str(&out).unwrap();
    assert_eq!(last2, events[events.len() - 2..]);
    let (_, all, _) = history_cli(&config, &["--format", "json"]);
    let all: Vec<Json> = serde_json::from_str(&all).unwrap();
    assert!(all.len() > 5, "{all:?}");
    let (_, out, _) = history_cli(&config, &["--limit", "3", "--format", "json"]);
    let last3: Vec<Json> = serde_json::from_str(&out).unwrap();
    assert_eq!(last3, all[all.len() - 3..]);
    let (_, out, _) = history_cli(&config, &["--limit", "3", "--format", "csv"]);
    assert_eq!(out.lines().count(), 4, "{out}");

    // Per device: the gateway's own events are left out.
    let (_, out, _) = history_cli(&config, &["--events", "--device", "d", "--format", "json"]);
    let dev: Vec<Json> = serde_json::from_str(&out).unwrap();
    assert_eq!(dev.len(), events.len() - 2);
    // csv and table.
    let (_, csv, _) = history_cli(&config, &["--events", "--format", "csv"]);
    assert_eq!(csv.lines().next(), Some("timestamp,device,event,detail"));
    assert!(
        csv.lines().any(|l| l.ends_with(",d,availability,offline")),
        "{csv}"
    );
    let (_, table, _) = history_cli(&config, &["--events"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("time (UTC)") && lines[0].contains("event"));
    assert_eq!(lines.len(), events.len() + 1, "{table}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("command") && l.contains("\"c2\"") && l.contains("\"ok\":false")),
        "{table}"
    );
    // Points are for readings.
    let (code, _, err) = history_cli(&config, &["--events", "--point", "a"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = history_cli(&config, &["--limit", "0"]);
    assert_eq!(code, 2);
}

/// The highest resident set `pid` reached, sampled until it exits.
fn peak_rss_kib(child: &mut std::process::Child) -> u64 {
    let mut peak = 0;
    loop {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", child.id())) {
            if let Some(kib) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
            {
                peak = peak.max(kib);
            }
        }
        if child.try_wait().unwrap().is_some() {
            return peak;
        }
        // The sampling interval: short, so the peak of a brief run is seen.
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_output_streams_so_memory_does_not_grow_with_the_result() {
    let dir = tempfile::tempdir().unwrap();
    // The same command on a small and a large history.
    let mut peaks = Vec::new();
    for (name, n) in [("small", 2_000u64), ("large", 300_000)] {
        let db = dir.path().join(format!("{name}.db"));
        let pool = history::open(&db).await.unwrap();
        let (writer, h) = History::with_capacity(pool.clone(), &hcfg(&db, 100), n as usize);
        let stop = CancellationToken::new();
        let task = tokio::spawn(writer.run(stop.clone()));
        let t0 = SystemTime::now() - Duration::from_secs(3600);
        for i in 0..n {
            h.record_reading(
                &format!("device{}", i % 7),
                &format!("point{}", i % 13),
                t0 + Duration::from_millis(i),
                &Value::Float(i as f64 / 8.0),
            );
        }
        stop.cancel();
        task.await.unwrap();
        pool.close().await;
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(&config, format!("[history]\npath = \"{}\"\n", db.display())).unwrap();
        for format in ["json", "csv", "table"] {
            let mut child = Command::new(env!("CARGO_BIN_EXE_fieldbridge"))
                .args(["history", "-c"])
                .arg(&config)
                .args(["--format", format])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let out = child.stdout.take().unwrap();
            let lines = std::thread::spawn(move || {
                use std::io::BufRead;
                std::io::BufReader::new(out).split(b'\n').count()
            });
            let peak = peak_rss_kib(&mut child);
            let lines = lines.join().unwrap() as u64;
            match format {
                "json" => assert_eq!(lines, 1),
                _ => assert_eq!(lines, n + 1, "{format}: header and one line a row"),
            }
            peaks.push((name, format, peak));
        }
    }
    eprintln!("peak resident set (KiB): {peaks:?}");
    for format in ["json", "csv", "table"] {
        let peak = |name| {
            peaks
                .iter()
                .find(|p| p.0 == name && p.1 == format)
                .unwrap()
                .2
        };
        // 150 times the rows; collected in memory they would take tens of MiB more.
        assert!(
            peak("large") < peak("small") + 2 * 1024,
            "{format}: {} KiB for 300,000 rows, {} KiB for 2,000",
            peak("large"),
            peak("small")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_ids_are_never_handed_out_twice_so_a_forward_cursor_stays_true() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    let pool = history::open(&db).await.unwrap();
    let write = |pool: sqlx::SqlitePool, at: SystemTime, n: u64| {
        let db = db.clone();
        async move {
            let (writer, h) = History::new(pool, &hcfg(&db, 50));
            let stop = CancellationToken::new();
            let task = tokio::spawn(writer.run(stop.clone()));
            for i in 0..n {
                h.record_reading(
                    "d",
                    "p",
                    at + Duration::from_millis(i),
                    &Value::Int(i.into()),
                );
                h.record_gateway("start", at + Duration::from_millis(i));
            }
            stop.cancel();
            task.await.unwrap();
        }
    };
    let ids = |pool: sqlx::SqlitePool| async move {
        let r: Vec<i64> = sqlx::query_scalar("SELECT rowid FROM readings ORDER BY rowid")
            .fetch_all(&pool)
            .await
            .unwrap();
        let e: Vec<i64> = sqlx::query_scalar("SELECT rowid FROM events ORDER BY rowid")
            .fetch_all(&pool)
            .await
            .unwrap();
        (r, e)
    };
    let old = SystemTime::now() - Duration::from_secs(40 * 86_400);
    write(pool.clone(), old, 10).await;
    // Retention takes every row but the newest of each table: SQLite numbers a new row after
    // the largest rowid left, so the numbers go on instead of starting again at 1.
    // Nothing was forwarded to that database: every old row still waits for it, and age alone
    // never removes a row the central database does not have.
    let d = history::retain(&pool, history::Upto::ALL, Some("db:5432/x"))
        .await
        .unwrap();
    assert_eq!(d, history::Deleted::default());
    let d = history::retain(&pool, history::Upto::ALL, None)
        .await
        .unwrap();
    assert_eq!(d.rows, 18);
    assert_eq!(ids(pool.clone()).await, (vec![10], vec![10]));
    write(pool.clone(), SystemTime::now(), 3).await;
    let (r, e) = ids(pool.clone()).await;
    assert_eq!(r, [10, 11, 12, 13]);
    assert_eq!(e, [10, 11, 12, 13]);
    // VACUUM keeps the ids of a table with an INTEGER PRIMARY KEY (readings, migration 5) or an
    // index (events): a user compacting the file does not renumber rows the cursor points into.
    // (Readings have no index since migration 5: with only the implicit rowid, VACUUM numbered
    // them 1, 2, 3, 4 here.)
    sqlx::query("VACUUM").execute(&pool).await.unwrap();
    assert_eq!(ids(pool.clone()).await, (r, e));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_history_off_no_file_is_made_and_the_gateway_runs() {
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    fake.set_holding(1, 0, &[5]);
    fake.unit(1, |u| u.tick = true);
    let addr = fake.serve_tcp().await;
    let cfg = format!(
        "[gateway]\nid = \"off\"\nbase_topic = \"t\"\nlocation = \"lab\"\nhealth_interval = \"1s\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n[history]\nenabled = false\npath = \"{{dir}}/state/history.db\"\n[buses.plc]\nkind = \"modbus-tcp\"\naddress = \"{addr}\"\n[devices.d]\nbus = \"plc\"\nunit = 1\npoll = \"100ms\"\n[devices.d.points.a]\nregister = \"holding:0\"\nwritable = true\n",
        broker.port
    );
    let sub = Subscriber::connect(broker.port, "t/#");
    let gw = InProcess::start(&cfg).await;
    // Polling, publishing, commands and health work as ever.
    sub.wait_for("t/lab/sensor/d/a", |_| true, WAIT).unwrap();
    publish(
        broker.port,
        "t/lab/device/d/command",
        r#"{"id": "x", "a": 9}"#,
        false,
    );
    let result = sub
        .wait_for(
            "t/lab/device/d/command/result",
            |p| p.contains("\"x\""),
            WAIT,
        )
        .unwrap();
    assert!(result.payload.contains("\"ok\":true"), "{}", result.payload);
    let health = sub
        .wait_for("t/gateway/off/health", |_| true, WAIT)
        .unwrap();
    let health = json_of(&health.payload);
    assert_eq!(health["history"], Json::Null, "{health}");
    let (code, dir) = gw.stop_keeping_dir().await;
    assert_eq!(code, 0);
    // No file, no folder for it, nothing at all besides the config.
    let files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, ["config.toml"]);
    // `history` says why there is nothing.
    let (code, out, err) = history_cli(&dir.path().join("config.toml"), &[]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(err.contains("history.enabled = false"), "{err}");
}

/// Migration 0004: a file made before it loses `readings_series_ts` at the next
/// start, keeps its rows, and every query still finds them by device and point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_from_before_migration_4_loses_the_series_index_and_keeps_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    let indexes = |pool: sqlx::SqlitePool| async move {
        sqlx::query_scalar::<_, String>(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'readings' ORDER BY name",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    // A file as migrations 0001-0003 left it, with readings in it.
    let pool = history::open(&db).await.unwrap();
    sqlx::query("CREATE INDEX readings_series_ts ON readings (series, ts)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 4")
        .execute(&pool)
        .await
        .unwrap();
    let (writer, h) = History::new(pool.clone(), &hcfg(&db, 50));
    let stop = CancellationToken::new();
    let task = tokio::spawn(writer.run(stop.clone()));
    let now = SystemTime::now();
    for i in 0..10i128 {
        h.record_reading("a", "x", now, &Value::Int(i));
        h.record_reading("b", "y", now, &Value::Float(i as f64 / 2.0));
    }
    stop.cancel();
    task.await.unwrap();
    // (`readings_ts` went with migration 5.)
    assert_eq!(indexes(pool.clone()).await, ["readings_series_ts"]);
    pool.close().await;

    let pool = history::open(&db).await.unwrap();
    assert!(indexes(pool.clone()).await.is_empty());
    let rows = history::query(
        &pool,
        &Filter {
            device: Some("b".into()),
            point: Some("y".into()),
            ..Filter::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(rows.len(), 10);
    assert!(rows.iter().all(|r| r.device == "b" && r.point == "y"));
    assert_eq!(
        history::query(&pool, &Filter::default())
            .await
            .unwrap()
            .len(),
        20
    );
}

/// Writes `rows` (time, device, point, value) through the daemon's writer, in the order given:
/// batches of up to 2,000 readings, each extending the newest block of the time index.
async fn write_readings(
    pool: &sqlx::SqlitePool,
    db: &std::path::Path,
    rows: Vec<(SystemTime, String, String, Value)>,
) {
    let (writer, h) = History::with_capacity(pool.clone(), &hcfg(db, 50), rows.len());
    for (at, device, point, value) in &rows {
        h.record_reading(device, point, *at, value);
    }
    let stop = CancellationToken::new();
    stop.cancel();
    // Cancelled before it starts: it writes everything queued, in batches, and stops.
    writer.run(stop).await;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(load(&h.stats.rows), rows.len() as u64, "{:?}", h.stats);
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The blocks of the time index: (first, last, min_ts, max_ts), by id.
async fn blocks(pool: &sqlx::SqlitePool) -> Vec<(i64, i64, i64, i64)> {
    sqlx::query_as("SELECT first, last, min_ts, max_ts FROM readings_blocks ORDER BY first")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// The readings no block vouches for (outside every block's ids, or its times): must be none.
async fn uncovered(pool: &sqlx::SqlitePool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM readings r WHERE NOT EXISTS (SELECT 1 FROM readings_blocks b \
         WHERE r.id BETWEEN b.first AND b.last AND r.ts BETWEEN b.min_ts AND b.max_ts)",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// What `fieldbridge history` must show for a time range, found the slow way: every reading's
/// time compared, no block consulted. (UNIX ms, device, point), oldest first.
async fn truth(
    pool: &sqlx::SqlitePool,
    since: Option<i64>,
    until: Option<i64>,
    device: Option<&str>,
) -> Vec<(i64, String, String)> {
    sqlx::query_as(
        "SELECT r.ts, s.device, s.point FROM readings r JOIN series s ON s.id = r.series \
         WHERE r.ts >= ?1 AND r.ts <= ?2 AND (?3 IS NULL OR s.device = ?3) ORDER BY r.rowid",
    )
    .bind(since.unwrap_or(i64::MIN))
    .bind(until.unwrap_or(i64::MAX))
    .bind(device)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The same through `history::query` (what `fieldbridge history` prints).
async fn shown(
    pool: &sqlx::SqlitePool,
    since: Option<i64>,
    until: Option<i64>,
    device: Option<&str>,
    limit: Option<u64>,
) -> Vec<(i64, String, String)> {
    let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_millis(t as u64);
    let filter = Filter {
        device: device.map(str::to_string),
        since: since.map(at),
        until: until.map(at),
        limit,
        ..Filter::default()
    };
    history::query(pool, &filter)
        .await
        .unwrap()
        .into_iter()
        .map(|r| ((r.timestamp * 1000.0).round() as i64, r.device, r.point))
        .collect()
}

/// A Pi without a real-time clock steps its clock at boot, back as often as forward: readings
/// recorded later then carry earlier times, and the blocks of the time index overlap in time.
/// Every time-bounded query must still show exactly the readings whose times are in range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_bounded_queries_stay_exact_when_the_clock_was_stepped_back_and_blocks_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    let pool = history::open(&db).await.unwrap();
    let t0 = SystemTime::now() - Duration::from_secs(86_400);
    let back = t0 - Duration::from_secs(86_400);
    let later = t0 + Duration::from_secs(3600);
    let mut rows = Vec::new();
    let mut push = |from: SystemTime, n: u64| {
        for i in 0..n {
            rows.push((
                from + Duration::from_millis(i),
                format!("d{}", i % 3),
                format!("p{}", i % 5),
                Value::Int(i.into()),
            ));
        }
    };
    // 70,000 readings from t0, then the clock goes back a day for 70,000 more, then it is set
    // right: 1,000 readings an hour after t0.
    push(t0, 70_000);
    push(back, 70_000);
    push(later, 1_000);
    write_readings(&pool, &db, rows).await;

    let b = blocks(&pool).await;
    assert!(b.len() >= 3, "{b:?}");
    assert!(
        b.windows(2).any(|w| w[1].2 < w[0].3),
        "no two blocks overlap in time: {b:?}"
    );
    assert_eq!(uncovered(&pool).await, 0, "{b:?}");

    let (t0, back, later) = (ms(t0), ms(back), ms(later));
    let cases = [
        // Inside the stretch recorded after the step back only.
        (Some(back + 10_000), Some(back + 20_000)),
        // Inside the first stretch only.
        (Some(t0 + 5_000), Some(t0 + 6_000)),
        // From the end of the stepped-back stretch to the start of the first.
        (Some(back + 69_000), Some(t0 + 1_000)),
        (None, Some(back + 1_000)),
        (Some(t0 + 69_990), None),
        (Some(later), None),
        (Some(back), None),
        // Bounds right on readings' times.
        (Some(t0), Some(t0)),
        (Some(later + 999), Some(later + 999)),
        // Between the first stretch and the last: no reading at all.
        (Some(t0 + 600_000), Some(t0 + 1_200_000)),
        // Before everything, after everything.
        (None, Some(back - 1)),
        (Some(later + 1_000), None),
    ];
    for (since, until) in cases {
        let want = truth(&pool, since, until, None).await;
        assert_eq!(
            shown(&pool, since, until, None, None).await,
            want,
            "{since:?}..{until:?}"
        );
        let want_d1 = truth(&pool, since, until, Some("d1")).await;
        assert_eq!(
            shown(&pool, since, until, Some("d1"), None).await,
            want_d1,
            "d1, {since:?}..{until:?}"
        );
        // --limit: the newest 7 recorded of them, in recording order.
        let tail = want[want.len().saturating_sub(7)..].to_vec();
        assert_eq!(shown(&pool, since, until, None, Some(7)).await, tail);
    }
    assert!(
        truth(&pool, Some(back + 10_000), Some(back + 20_000), None)
            .await
            .len()
            == 10_001
    );

    // The range between the stretches is empty, and only the newest block (the one holding the
    // readings of the hour after) is read for it. For a range in the stepped-back stretch the
    // blocks after it are not read; the first is (its times are later than the range's start:
    // the ids read are one range, from the first block that may hold a reading to the last).
    let newest = *b.last().unwrap();
    assert_eq!(
        history::reading_ids(&pool, Some(t0 + 600_000), Some(t0 + 1_200_000))
            .await
            .unwrap(),
        (Some(newest.0), None)
    );
    assert_eq!(
        history::reading_ids(&pool, Some(back + 10_000), Some(back + 20_000))
            .await
            .unwrap(),
        (Some(b[0].0), Some(b[1].1)),
        "{b:?}"
    );
    // Before every reading: no block qualifies, only readings above the newest block could.
    assert_eq!(
        history::reading_ids(&pool, None, Some(back - 1))
            .await
            .unwrap(),
        (Some(newest.1 + 1), None)
    );
}

/// Retention up to a mark, with the clock stepped back and forth in between (blocks overlapping
/// in time): exactly the readings up to the mark's id go — whole blocks by id, the one the mark
/// falls in partly — never one the central database does not have yet, never the newest, and
/// the blocks left vouch for every reading left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_exactly_the_readings_up_to_its_mark_and_never_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    let pool = history::open(&db).await.unwrap();
    let now = SystemTime::now();
    let old = now - Duration::from_secs(40 * 86_400);
    let mut rows = Vec::new();
    let mut push = |from: SystemTime, n: u64| {
        for i in 0..n {
            rows.push((
                from + Duration::from_millis(i),
                "d".to_string(),
                format!("p{}", i % 4),
                Value::Int(i.into()),
            ));
        }
    };
    push(now - Duration::from_secs(3600), 40_000);
    // The clock at boot, 40 days behind, for long enough to fill a whole block...
    push(old, 140_000);
    push(now - Duration::from_secs(1800), 30_000);
    // ...and once more at the end.
    push(old, 10);
    write_readings(&pool, &db, rows).await;
    let b = blocks(&pool).await;
    assert!(b.len() >= 4, "{b:?}");
    let max_id: i64 = sqlx::query_scalar("SELECT max(id) FROM readings")
        .fetch_one(&pool)
        .await
        .unwrap();
    let ids = || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT id FROM readings ORDER BY id")
                .fetch_all(&pool)
                .await
                .unwrap()
        }
    };
    let exact = || async {
        assert_eq!(uncovered(&pool).await, 0, "{:?}", blocks(&pool).await);
        let empty: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM readings_blocks b \
             WHERE NOT EXISTS (SELECT 1 FROM readings WHERE id BETWEEN b.first AND b.last)",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            empty,
            0,
            "blocks without readings: {:?}",
            blocks(&pool).await
        );
        let cutoff = ms(now - Duration::from_secs(86_400));
        for (since, until) in [(Some(cutoff), None), (None, Some(cutoff)), (None, None)] {
            assert_eq!(
                shown(&pool, since, until, None, None).await,
                truth(&pool, since, until, None).await
            );
        }
    };
    let upto = |readings: i64| history::Upto {
        readings,
        events: 0,
    };

    // A mark inside the third block: the first two go whole, the third up to the mark.
    let d = history::retain(&pool, upto(150_000), None).await.unwrap();
    assert_eq!(d.rows, 150_000);
    assert_eq!(ids().await, (150_001..=max_id).collect::<Vec<_>>());
    exact().await;
    assert!(blocks(&pool).await.len() < b.len());

    // A central database has the readings up to 170,000: a mark beyond that takes no more.
    sqlx::query("INSERT INTO forward_cursor (target, readings) VALUES ('db:5432/x', 170000)")
        .execute(&pool)
        .await
        .unwrap();
    let d = history::retain(&pool, history::Upto::ALL, Some("db:5432/x"))
        .await
        .unwrap();
    assert_eq!(d.rows, 20_000);
    assert_eq!(d.unforwarded, 0);
    assert_eq!(ids().await, (170_001..=max_id).collect::<Vec<_>>());
    exact().await;
    assert_eq!(
        history::retain(&pool, history::Upto::ALL, Some("db:5432/x"))
            .await
            .unwrap(),
        history::Deleted::default()
    );

    // Without forwarding, everything up to the mark, but never the newest reading.
    history::retain(&pool, history::Upto::ALL, None)
        .await
        .unwrap();
    assert_eq!(ids().await, [max_id], "the newest reading was deleted");
    exact().await;
    // The next reading gets the next id.
    write_readings(
        &pool,
        &db,
        vec![(now, "d".into(), "p0".into(), Value::Int(1))],
    )
    .await;
    let max: i64 = sqlx::query_scalar("SELECT max(id) FROM readings")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(max, max_id + 1);
}

/// A history file as migrations 1-4 (an older fieldbridge) left it, open.
async fn file_of_migration_4(db: &std::path::Path) -> sqlx::SqlitePool {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
    let old = tempfile::tempdir().unwrap();
    let ours = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for f in [
        "0001_history.sql",
        "0002_command_ids.sql",
        "0003_forward.sql",
        "0004_readings_one_index.sql",
    ] {
        std::fs::copy(ours.join(f), old.path().join(f)).unwrap();
    }
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(db)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal),
        )
        .await
        .unwrap();
    sqlx::migrate::Migrator::new(old.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    pool
}

/// Migration 5 on a file as migrations 1-4 left it: every reading keeps its id (so
/// a forward cursor taken before says exactly which rows a central database has), `readings_ts`
/// is gone, the blocks vouch for every reading, the same queries give the same answers, and
/// VACUUM keeps the ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_from_before_migration_5_keeps_every_reading_its_id_and_its_answers() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    let pool = file_of_migration_4(&db).await;
    // 150,000 readings as that version wrote them: integers, floats and text, the clock
    // stepped back a day after the first 100,000; then the oldest 5,000 and every seventh of a
    // stretch in the middle deleted (retention, a full disk), so the rowids have gaps.
    for sql in [
        "INSERT INTO series (device, point) VALUES ('a', 'x'), ('a', 'y'), ('b', 'x')",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 150000) \
         INSERT INTO readings (ts, series, kind, value) \
         SELECT CASE WHEN i <= 100000 THEN 1764000000000 + i * 10 ELSE 1763913600000 + i * 10 END, \
                i % 3 + 1, i % 3, \
                CASE i % 3 WHEN 0 THEN i WHEN 1 THEN i / 4.0 ELSE 'v' || i END \
         FROM n",
        "DELETE FROM readings WHERE rowid <= 5000 OR (rowid BETWEEN 70000 AND 80000 AND rowid % 7 = 0)",
        "INSERT INTO forward_cursor (target, readings) VALUES ('db:5432/x', 90000)",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
    }
    type Reading = (i64, i64, i64, i64, String);
    let all = |pool: sqlx::SqlitePool| async move {
        sqlx::query_as::<_, Reading>(
            "SELECT rowid, ts, series, kind, quote(value) FROM readings ORDER BY rowid",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let unsent = |pool: sqlx::SqlitePool| async move {
        sqlx::query_scalar::<_, i64>(
            "SELECT r.rowid FROM readings r, forward_cursor c WHERE r.rowid > c.readings ORDER BY r.rowid",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let ranges = [
        (None, None),
        (Some(1_764_000_500_000), Some(1_764_000_600_000)),
        (Some(1_763_914_600_000), None),
        (None, Some(1_763_915_000_000)),
        (Some(1_764_000_000_000), None),
        (Some(1_765_000_000_000), None),
    ];
    let mut answers = Vec::new();
    for (since, until) in ranges {
        for device in [None, Some("b")] {
            answers.push(truth(&pool, since, until, device).await);
        }
    }
    let before = all(pool.clone()).await;
    let unsent_before = unsent(pool.clone()).await;
    assert_eq!(before.len(), 150_000 - 5_000 - 1_429);
    pool.close().await;

    let pool = history::open(&db).await.unwrap();
    assert_eq!(all(pool.clone()).await, before);
    assert_eq!(unsent(pool.clone()).await, unsent_before);
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'readings'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(indexes.is_empty(), "{indexes:?}");
    let b = blocks(&pool).await;
    assert_eq!(b.len(), 3, "{b:?}");
    assert_eq!(uncovered(&pool).await, 0);
    // Migration 6 marks blocks' newest readings at the time their readings say (before now,
    // on the file's new clock, which starts at 0), in recording order. The third block, recorded
    // after the clock went back a day, brings no later time: it gets no mark of its own (the
    // writer's first mark covers it), never one that would date the second block later.
    let marks: Vec<(i64, i64)> =
        sqlx::query_as("SELECT at, readings FROM retention_marks ORDER BY readings")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        marks.iter().map(|m| m.1).collect::<Vec<_>>(),
        [b[0].1, b[1].1],
        "{marks:?}"
    );
    assert!(marks.iter().all(|m| m.0 < 0), "{marks:?}");
    assert!(marks.windows(2).all(|w| w[0].0 <= w[1].0), "{marks:?}");
    let mut answers = answers.into_iter();
    for (since, until) in ranges {
        for device in [None, Some("b")] {
            assert_eq!(
                shown(&pool, since, until, device, None).await,
                answers.next().unwrap(),
                "{since:?}..{until:?} {device:?}"
            );
        }
    }
    sqlx::query("VACUUM").execute(&pool).await.unwrap();
    assert_eq!(all(pool.clone()).await, before);
    assert_eq!(blocks(&pool).await, b);
    // New readings go on from the largest id, into the newest block.
    write_readings(
        &pool,
        &db,
        vec![(SystemTime::now(), "a".into(), "x".into(), Value::Int(1))],
    )
    .await;
    let newest = blocks(&pool).await;
    assert_eq!(newest.last().unwrap().1, 150_001);
    assert_eq!(uncovered(&pool).await, 0);
}

/// Migration 5 copies the readings beside the old table before dropping it: in a file near its
/// `max_size` the copy did not fit, the migration failed at every start, and the history was
/// lost for good. Now the oldest readings make room first (as the ring would delete them), are
/// counted, and the rest move with their ids; the file stays within its cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_near_its_cap_goes_through_migration_5_after_making_room() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    let pool = file_of_migration_4(&db).await;
    const N: i64 = 200_000;
    for sql in [
        "INSERT INTO series (device, point) VALUES ('a', 'x')",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000) \
         INSERT INTO readings (ts, series, kind, value) SELECT 1764000000000 + i, 1, 0, i FROM n",
        "PRAGMA wal_checkpoint(TRUNCATE)",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
    }
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    // The cap: the file as it is and 64 KiB, far less than the copy needs (~5 MB).
    let cap = pages as u64 * 4096 + 65_536;
    let (pool, made_room) = history::open_counted(&db, Some(cap))
        .await
        .expect("migration 5 in a capped file");
    let left: Vec<i64> = sqlx::query_scalar("SELECT id FROM readings ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(made_room > 0 && made_room < N as u64, "{made_room} deleted");
    eprintln!(
        "migration 5 at the cap: {made_room} of {N} readings deleted to make room, {} moved",
        N as u64 - made_room
    );
    assert_eq!(left.len() as u64 + made_room, N as u64);
    // The oldest went; the rest kept their ids, the newest among them.
    assert_eq!(left, ((N - left.len() as i64 + 1)..=N).collect::<Vec<_>>());
    assert_eq!(uncovered(&pool).await, 0);
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(pages as u64 * 4096 <= cap, "{pages} pages beyond the cap");
    // The history goes on: a batch fits (the ring makes room as ever).
    write_readings(
        &pool,
        &db,
        vec![(SystemTime::now(), "a".into(), "x".into(), Value::Int(1))],
    )
    .await;
    let max: i64 = sqlx::query_scalar("SELECT max(id) FROM readings")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(max, N + 1);
}

/// Migration 5 copies every reading before READY=1, which on a large history on a Pi could
/// outlast systemd's start timeout: killed mid-way, rolled back, again at every restart. The
/// gateway asks systemd for more time first (30 s and 20 s per million readings), and only
/// when the migration is still to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrading_a_file_from_before_migration_5_asks_systemd_for_more_start_time() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    let pool = file_of_migration_4(&db).await;
    for sql in [
        "INSERT INTO series (device, point) VALUES ('a', 'x')",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000) \
         INSERT INTO readings (ts, series, kind, value) \
         SELECT CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) - 1000 + i, 1, 0, i FROM n",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
    let cfg = format!(
        "[gateway]\nid = \"mig\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n[history]\npath = \"{}\"\n[homeassistant]\ndiscovery = false\n",
        common::mosquitto::free_port(),
        db.display()
    );
    for start in ["first", "second"] {
        let notify = common::notify::NotifySocket::new();
        let mut gw =
            GatewayProcess::spawn(&cfg, &[("NOTIFY_SOCKET", notify.path.to_str().unwrap())]);
        assert!(
            notify.wait_for(|m| m == "READY=1", WAIT).is_some(),
            "{}",
            gw.log()
        );
        gw.signal(Signal::SIGTERM);
        gw.wait_exit(WAIT).unwrap();
        let messages = notify.messages();
        let extend: Vec<&String> = messages
            .iter()
            .filter(|m| m.starts_with("EXTEND_TIMEOUT_USEC="))
            .collect();
        if start == "first" {
            assert_eq!(extend, ["EXTEND_TIMEOUT_USEC=30020000"], "{messages:?}");
            let at = |m: &str| messages.iter().position(|x| x.starts_with(m)).unwrap();
            assert!(at("EXTEND_TIMEOUT_USEC=") < at("READY=1"), "{messages:?}");
            assert!(gw.log().contains("migration 5"), "{}", gw.log());
        } else {
            assert!(extend.is_empty(), "{messages:?}");
        }
    }
    let pool = history::open_read_only(&db).await.unwrap();
    assert_eq!(
        history::query(&pool, &Filter::default())
            .await
            .unwrap()
            .len(),
        1000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_cut_back_after_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    let pool = history::open(&db).await.unwrap();
    let limit: i64 = sqlx::query_scalar("PRAGMA journal_size_limit")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(limit as u64, history::JOURNAL_SIZE_LIMIT);
}
