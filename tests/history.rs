#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! History in a real SQLite file, through the code the daemon uses.

mod common;

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

const WAIT: Duration = Duration::from_secs(10);

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

fn json_of(p: &str) -> Json {
    serde_json::from_str(p).unwrap_or(Json::Null)
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
    tokio::time::sleep(Duration::from_millis(500)).await;
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
    tokio::time::sleep(Duration::from_millis(2500)).await;
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
        rows.len() > 1000,
        "only {} rows written under load",
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_old_rows_and_keeps_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("h.db");
    let pool = history::open(&db).await.unwrap();
    let (writer, h) = History::new(pool.clone(), &hcfg(&db, 50));
    let stop = CancellationToken::new();
    let task = tokio::spawn(writer.run(stop.clone()));
    let now = SystemTime::now();
    let old = now - Duration::from_secs(40 * 86_400);
    for i in 0..2500 {
        h.record_reading(
            "d",
            "p",
            old + Duration::from_millis(i),
            &Value::Int(i.into()),
        );
    }
    h.record_reading("d", "p", now, &Value::Float(1.5));
    h.record_availability("d", true, old);
    h.record_availability("d", false, now);
    stop.cancel();
    task.await.unwrap();
    assert_eq!(
        history::query(&pool, &Filter::default())
            .await
            .unwrap()
            .len(),
        2501
    );
    let cutoff = (now - Duration::from_secs(30 * 86_400))
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let removed = history::retain(&pool, cutoff, None).await.unwrap();
    assert_eq!(removed.rows, 2501);
    let rows = history::query(&pool, &Filter::default()).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].value, Value::Float(1.5));
    let events = history::events(&pool).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].detail, "offline");
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
    let gw = InProcess::start(&cfg).await;
    let db = gw.dir.path().join("history.db");
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.kill();
    let away_from = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, _dir) = gw.stop_keeping_dir().await;
    let pool = history::open_read_only(&db).await.unwrap();
    let rows = history::query(
        &pool,
        &Filter {
            since: Some(away_from),
            ..Filter::default()
        },
    )
    .await
    .unwrap();
    assert!(
        rows.len() >= 8,
        "only {} readings recorded while the broker was away",
        rows.len()
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
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    stop.cancel();
    task.await.unwrap();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
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
    // A second of heartbeats: readings enough for --limit to cut.
    tokio::time::sleep(Duration::from_millis(1000)).await;
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
    // Newest first in time order, as with readings.
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
    // Retention takes every old row but the newest of each table: SQLite numbers a new row
    // after the largest rowid left, so the numbers go on instead of starting again at 1.
    let cutoff = (SystemTime::now() - Duration::from_secs(30 * 86_400))
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let d = history::retain(&pool, cutoff, Some("db:5432/x"))
        .await
        .unwrap();
    assert_eq!(d.rows, 18);
    // Nothing was forwarded to that database: all of them were still waiting for it.
    assert_eq!(d.unforwarded, 18);
    assert_eq!(ids(pool.clone()).await, (vec![10], vec![10]));
    write(pool.clone(), SystemTime::now(), 3).await;
    let (r, e) = ids(pool.clone()).await;
    assert_eq!(r, [10, 11, 12, 13]);
    assert_eq!(e, [10, 11, 12, 13]);
    // VACUUM keeps the rowids of tables with an index (ours): a user compacting the file does
    // not renumber rows the cursor points into.
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

/// Migration 0004 (issue 17): a file made before it loses `readings_series_ts` at the next
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
    assert_eq!(
        indexes(pool.clone()).await,
        ["readings_series_ts", "readings_ts"]
    );
    pool.close().await;

    let pool = history::open(&db).await.unwrap();
    assert_eq!(indexes(pool.clone()).await, ["readings_ts"]);
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
