#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! The wall clock stepped under a running gateway, as NTP does on a Raspberry Pi (no real-time
//! clock): 20 years ahead, a day back, an hour ahead, each under load with forwarding on, the
//! gateway restarted under each stepped clock (retention runs at every start). libfaketime
//! changes the gateway's clock at run time through a file (`FAKETIME_TIMESTAMP_FILE`); its
//! monotonic clock is left alone, as NTP leaves it.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::gateway::GatewayProcess;
use common::modbus::FakeModbus;
use common::mosquitto::{Mosquitto, Subscriber, publish};
use common::postgres::TempDb;
use fieldbridge::history;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

/// Forwarding a backlog to PostgreSQL on a loaded 2-core machine takes longer than one event.
const CATCH_UP: Duration = Duration::from_secs(30);
const POINTS: u16 = 20;
const CMD: &str = "t/lab/device/valve/command";
const RESULT: &str = "t/lab/device/valve/command/result";
const DAY_MS: i64 = 86_400_000;

fn config(broker: u16, addr: &str, pg: &str, dir: &str) -> String {
    let mut c = format!(
        "[gateway]\nid = \"steps\"\nbase_topic = \"t\"\nlocation = \"lab\"\n\
         [mqtt]\nurl = \"mqtt://127.0.0.1:{broker}\"\nreconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n\
         [history]\npath = \"{dir}/history.db\"\nflush = \"100ms\"\nretention = \"1d\"\n\
         [history.forward]\nurl = \"{pg}\"\nsslmode = \"disable\"\n\
         [homeassistant]\ndiscovery = false\n\
         [buses.plc]\nkind = \"modbus-tcp\"\naddress = \"{addr}\"\n\
         [devices.meter]\nbus = \"plc\"\nunit = 1\npoll = \"20ms\"\n\
         [devices.valve]\nbus = \"plc\"\nunit = 2\npoll = \"60s\"\n\
         [devices.valve.points.open]\nregister = \"holding:0\"\nwritable = true\n"
    );
    for p in 0..POINTS {
        c += &format!("[devices.meter.points.p{p}]\nregister = \"holding:{p}\"\n");
    }
    c
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The local history's readings as (id, ts), in id order.
async fn local(db: &std::path::Path) -> Vec<(i64, i64)> {
    let pool = history::open_read_only(db).await.unwrap();
    let rows = sqlx::query_as("SELECT id, ts FROM readings ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    rows
}

/// The central database's readings of this gateway as (id, ts), in id order (none before the
/// forwarder made the table).
async fn central(pg: &sqlx::PgPool) -> Vec<(i64, i64)> {
    sqlx::query_as(
        "SELECT id, (extract(epoch FROM ts) * 1000)::int8 FROM readings WHERE gateway = 'steps' ORDER BY id",
    )
    .fetch_all(pg)
    .await
    .unwrap_or_default()
}

/// Waits until the central database holds 500 readings more whose times `fits` (a second of
/// the load: 20 points every 20 ms).
async fn wait_central(pg: &sqlx::PgPool, what: &str, fits: impl Fn(i64) -> bool) {
    let count = |rows: Vec<(i64, i64)>| rows.iter().filter(|(_, ts)| fits(*ts)).count();
    let want = count(central(pg).await) + 500;
    common::until_queried(
        CATCH_UP,
        Duration::from_millis(100),
        async || count(central(pg).await) >= want,
        || format!("no reading forwarded {what}"),
    )
    .await;
}

/// Sends a command and waits for its result (the `n`th on the result topic).
fn command(broker: u16, sub: &Subscriber, body: &str, n: usize, gw: &GatewayProcess) -> Value {
    publish(broker, CMD, body, false);
    let m = sub
        .wait_nth(RESULT, n, CATCH_UP)
        .unwrap_or_else(|| panic!("no result for {body}\n{}", gw.log()));
    serde_json::from_str(&m.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_steps_under_load_lose_no_row_repeat_no_command_and_keep_recording_order() {
    let Some(lib) = common::libfaketime() else {
        common::cannot_run(
            "libfaketime is not installed (`scripts/setup.sh --tests` installs faketime)",
        );
        return;
    };
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    fake.set_holding(1, 0, &[0; POINTS as usize]);
    fake.unit(1, |u| u.tick = true);
    fake.set_holding(2, 0, &[0]);
    let addr = fake.serve_tcp().await.to_string();
    let db = TempDb::create();
    let pg = db.pool().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = dir.path().join("faketime");
    std::fs::write(&clock, "+0").unwrap();
    let cfg = config(
        broker.port,
        &addr,
        &db.url(),
        &dir.path().display().to_string(),
    );
    let history_db = dir.path().join("history.db");
    let (lib, clock_file) = (lib.display().to_string(), clock.display().to_string());
    let spawn = || {
        GatewayProcess::spawn(
            &cfg,
            &[
                ("LD_PRELOAD", lib.as_str()),
                ("FAKETIME_TIMESTAMP_FILE", clock_file.as_str()),
                ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
                ("FAKETIME_NO_CACHE", "1"),
            ],
        )
    };
    let sub = Subscriber::connect(broker.port, "t/#");
    let mut gw = spawn();
    let start = now_ms();
    wait_central(&pg, "before any step", |ts| (ts - start).abs() < 60_000).await;
    let r = command(broker.port, &sub, r#"{"id": "c0", "open": 10}"#, 1, &gw);
    assert_eq!(r["ok"], json!(true), "{r}");
    let writes = || {
        fake.log()
            .iter()
            .filter(|s| s.unit == 2 && matches!(s.fc, 6 | 16))
            .count()
    };
    assert_eq!(writes(), 1);

    let steps: [(&str, i64); 3] = [
        ("+20y", 20 * 365 * DAY_MS),
        ("-1d", -DAY_MS),
        ("+1h", 3_600_000),
    ];
    let mut results = 1;
    for (n, (step, by)) in steps.into_iter().enumerate() {
        let n = n + 1;
        std::fs::write(&clock, step).unwrap();
        let fits = |ts: i64| (ts - now_ms() - by).abs() < 3_600_000;
        // Readings recorded under the stepped clock reach the central database...
        wait_central(&pg, &format!("at {step}"), fits).await;
        // ...and so do they after a restart under it, whose retention (1 day) finds nothing
        // recorded a day ago on the gateway's own clock, whatever the rows' times say.
        gw.signal(Signal::SIGTERM);
        assert!(gw.wait_exit(CATCH_UP).is_some(), "no stop at {step}");
        gw = spawn();
        // A new command runs once; the one before is not run again, its result repeated.
        results += 1;
        let r = command(
            broker.port,
            &sub,
            &format!(r#"{{"id": "c{n}", "open": {}}}"#, 10 + n),
            results,
            &gw,
        );
        assert_eq!(r["ok"], json!(true), "at {step}: {r}");
        results += 1;
        let again = command(
            broker.port,
            &sub,
            &format!(r#"{{"id": "c{}", "open": {}}}"#, n - 1, 10 + n - 1),
            results,
            &gw,
        );
        assert_eq!(again["id"], json!(format!("c{}", n - 1)), "at {step}");
        assert_eq!(again["ok"], json!(true), "at {step}: {again}");
        assert_eq!(writes(), n + 1, "a command written twice at {step}");
        let before = local(&history_db).await.len();
        wait_central(&pg, &format!("after the restart at {step}"), fits).await;
        common::until_queried(
            CATCH_UP,
            Duration::from_millis(100),
            async || local(&history_db).await.len() > before + 100,
            || format!("no readings after the restart at {step}"),
        )
        .await;
    }

    // Quiet: the values stop moving; the forwarder catches up (the same rows on both sides,
    // and no new one for a second).
    fake.unit(1, |u| u.tick = false);
    let deadline = Instant::now() + CATCH_UP;
    let mut last = Vec::new();
    let here = loop {
        let here = local(&history_db).await;
        let there = central(&pg).await;
        if here == there && here == last {
            break here;
        }
        assert!(
            Instant::now() < deadline,
            "forwarding did not catch up: {} here, {} there",
            here.len(),
            there.len()
        );
        last = here;
        // Caught up means the same rows on both sides and no new one for a second: the second
        // is the point.
        tokio::time::sleep(Duration::from_millis(1_000)).await;
    };
    gw.signal(Signal::SIGTERM);
    assert!(gw.wait_exit(CATCH_UP).is_some());
    // No row lost: the ids run from 1 without a gap (retention deleted none), and the central
    // database holds each, with the time it was recorded under.
    assert!(here.len() > 3_500, "{} readings", here.len());
    let ids: Vec<i64> = here.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, (1..=here.len() as i64).collect::<Vec<_>>());
    eprintln!(
        "clock steps: {} readings, ids 1..={} without a gap, each in the central database; {} \
         commands written once each, {} results",
        here.len(),
        here.len(),
        writes(),
        sub.on(RESULT).len()
    );
    // (What the stop recorded, if anything, is the file's too.)
    let here = local(&history_db).await;
    // The times went ahead 20 years, back, and ahead again: not in time order...
    let ts: Vec<i64> = here.iter().map(|(_, t)| *t).collect();
    assert!(ts.windows(2).any(|w| w[1] < w[0] - DAY_MS), "no step back");
    // ...and `fieldbridge history` shows them in the order they were recorded.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fieldbridge"))
        .args(["history", "-c"])
        .arg(&gw.config_path)
        .args(["--format", "csv"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Vec<i64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(|l| {
            let t: f64 = l.split(',').next().unwrap().parse().unwrap();
            (t * 1000.0).round() as i64
        })
        .collect();
    assert_eq!(shown.len(), ts.len());
    if let Some(i) = (0..ts.len()).find(|i| shown[*i] != ts[*i]) {
        panic!(
            "history shows row {i} at {}, recorded at {}: {:?} vs {:?}",
            shown[i],
            ts[i],
            &shown[i.saturating_sub(2)..(i + 3).min(ts.len())],
            &ts[i.saturating_sub(2)..(i + 3).min(ts.len())]
        );
    }
}
