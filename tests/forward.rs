#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! History forwarding (README "Central history (PostgreSQL)") against the machine's real PostgreSQL: each test creates a
//! database of its own, runs real gateways (in this process or as the `fieldbridge` binary)
//! polling an in-process Modbus server, and compares the central tables with the gateways'
//! local history files row by row: every local row once in the database, nothing else.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::gateway::{GatewayProcess, InProcess};
use common::modbus::FakeModbus;
use common::mosquitto::{Mosquitto, Subscriber};
use common::postgres::{PrivatePostgres, TempDb};
use common::proxy::Proxy;
use fieldbridge::config::{ForwardConfig, HistoryConfig, SslMode};
use fieldbridge::history::{self, ForwardLink, Forwarder, History, HistoryHandle};
use fieldbridge::model::Value;
use nix::sys::signal::Signal;
use serde_json::Value as Json;
use sqlx::Row as _;
use tokio_util::sync::CancellationToken;

/// Forwarding a backlog to PostgreSQL on a loaded 2-core machine takes longer than one event.
const CATCH_UP: Duration = Duration::from_secs(30);

/// A reading as both sides hold it: (device, point, UNIX ms, value).
type Reading = (String, String, i64, String);
/// An event: (device, kind, UNIX ms, detail).
type Event = (Option<String>, String, i64, String);

/// A gateway config: one Modbus TCP device `meter` with `points` holding registers polled every
/// `poll`, history flushed every 200 ms and forwarded to `pg` (plain TCP).
fn config(id: &str, broker: u16, addr: &str, points: u16, poll: &str, pg: &str) -> String {
    let mut c = format!(
        "[gateway]\nid = \"{id}\"\nbase_topic = \"t\"\nhealth_interval = \"1s\"\n\
         [mqtt]\nurl = \"mqtt://127.0.0.1:{broker}\"\n\
         [history]\npath = \"{{dir}}/history.db\"\nflush = \"200ms\"\n\
         [history.forward]\nurl = \"{pg}\"\nsslmode = \"disable\"\n\
         [homeassistant]\ndiscovery = false\n\
         [buses.plc]\nkind = \"modbus-tcp\"\naddress = \"{addr}\"\n\
         [devices.meter]\nbus = \"plc\"\nunit = 1\npoll = \"{poll}\"\n"
    );
    for p in 0..points {
        c += &format!("[devices.meter.points.p{p}]\nregister = \"holding:{p}\"\n");
    }
    c
}

/// Modbus devices whose `points` registers change on every read.
async fn devices(points: u16) -> (FakeModbus, String) {
    let fake = FakeModbus::new();
    fake.set_holding(1, 0, &vec![0; points as usize]);
    fake.unit(1, |u| u.tick = true);
    let addr = fake.serve_tcp().await.to_string();
    (fake, addr)
}

fn value_text(v: &Value) -> String {
    match v {
        Value::Int(i) => format!("{}", *i as f64),
        Value::Float(f) => format!("{f}"),
        Value::Bool(b) => format!("{}", u8::from(*b) as f64),
        Value::Text(t) => t.clone(),
    }
}

/// The local history file's readings and events, by row id.
async fn local(db: &Path) -> (BTreeMap<i64, Reading>, BTreeMap<i64, Event>) {
    let pool = history::open_read_only(db).await.unwrap();
    let mut readings = BTreeMap::new();
    for r in sqlx::query(
        "SELECT r.rowid, s.device, s.point, r.ts, r.kind, r.value FROM readings r JOIN series s ON s.id = r.series",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    {
        let kind: i64 = r.get(4);
        assert_eq!(kind, 0, "these tests read integer registers");
        let v = Value::Int(i128::from(r.get::<i64, _>(5)));
        readings.insert(r.get(0), (r.get(1), r.get(2), r.get(3), value_text(&v)));
    }
    let mut events = BTreeMap::new();
    for e in sqlx::query("SELECT rowid, device, kind, ts, detail FROM events")
        .fetch_all(&pool)
        .await
        .unwrap()
    {
        events.insert(e.get(0), (e.get(1), e.get(2), e.get(3), e.get(4)));
    }
    pool.close().await;
    (readings, events)
}

/// What the central database holds for `gateway`: readings and events by row id, and how
/// many rows each table has for it (a row there twice would show as a count above the map's).
async fn central(
    pool: &sqlx::PgPool,
    gateway: &str,
) -> (BTreeMap<i64, Reading>, BTreeMap<i64, Event>, usize, usize) {
    let rows = sqlx::query(
        "SELECT id, device, point, (extract(epoch FROM ts) * 1000)::int8, coalesce(value::text, value_text) \
         FROM readings WHERE gateway = $1",
    )
    .bind(gateway)
    .fetch_all(pool)
    .await
    .unwrap();
    let n_readings = rows.len();
    let readings = rows
        .into_iter()
        .map(|r| {
            let v: String = r.get(4);
            // PostgreSQL prints whole doubles without ".0", as Rust does.
            let v = v.parse::<f64>().map(|f| format!("{f}")).unwrap_or(v);
            (r.get::<i64, _>(0), (r.get(1), r.get(2), r.get(3), v))
        })
        .collect();
    let rows = sqlx::query(
        "SELECT id, device, kind, (extract(epoch FROM ts) * 1000)::int8, detail FROM events WHERE gateway = $1",
    )
    .bind(gateway)
    .fetch_all(pool)
    .await
    .unwrap();
    let n_events = rows.len();
    let events = rows
        .into_iter()
        .map(|e| (e.get::<i64, _>(0), (e.get(1), e.get(2), e.get(3), e.get(4))))
        .collect();
    (readings, events, n_readings, n_events)
}

/// Asserts that the database holds exactly the local file's rows for `gateway`: each local row
/// once (same id, same content), no row that is not local, and no content twice.
async fn assert_exactly_local(db: &Path, pool: &sqlx::PgPool, gateway: &str) -> usize {
    let (lr, le) = local(db).await;
    let (cr, ce, n_r, n_e) = central(pool, gateway).await;
    let missing: Vec<_> = lr.keys().filter(|k| !cr.contains_key(k)).take(5).collect();
    let extra: Vec<_> = cr.keys().filter(|k| !lr.contains_key(k)).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{gateway}: {} local readings, {} central; missing e.g. {missing:?}, extra e.g. {extra:?}",
        lr.len(),
        cr.len()
    );
    assert_eq!(lr, cr, "{gateway}: readings differ in content");
    assert_eq!(
        n_r,
        lr.len(),
        "{gateway}: a reading is in the database twice"
    );
    assert_eq!(le, ce, "{gateway}: events differ");
    assert_eq!(
        n_e,
        le.len(),
        "{gateway}: an event is in the database twice"
    );
    // No content twice under two ids either.
    let mut contents: Vec<&Reading> = cr.values().collect();
    contents.sort();
    contents.dedup();
    assert_eq!(
        contents.len(),
        cr.len(),
        "{gateway}: the same reading under two ids"
    );
    lr.len() + le.len()
}

/// Rows in the local file and in the database for `gateway`.
async fn counts(db: &Path, pool: &sqlx::PgPool, gateway: &str) -> (i64, i64) {
    let lp = history::open_read_only(db).await.unwrap();
    let l: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM readings) + (SELECT count(*) FROM events)",
    )
    .fetch_one(&lp)
    .await
    .unwrap();
    lp.close().await;
    let c: Result<i64, _> = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM readings WHERE gateway = $1) + (SELECT count(*) FROM events WHERE gateway = $1)",
    )
    .bind(gateway)
    .fetch_one(pool)
    .await;
    let c = match c {
        Ok(c) => c,
        // No tables yet: no gateway has connected.
        Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("42P01") => 0,
        Err(e) => panic!("{e}"),
    };
    (l, c)
}

fn forward_config(url: &str) -> ForwardConfig {
    ForwardConfig {
        url: url.to_string(),
        password_file: None,
        sslmode: SslMode::Disable,
        ca_file: None,
    }
}

/// What the gateway's next start does first: the forwarder sends what the file still holds.
/// Runs it until the database has every local row.
async fn forward_rest(db: &Path, gateway: &str, url: &str, pool: &sqlx::PgPool) {
    forward_rest_with(db, gateway, url, None, pool).await;
}

async fn forward_rest_with(
    db: &Path,
    gateway: &str,
    url: &str,
    password: Option<&str>,
    pool: &sqlx::PgPool,
) {
    let f = forward_config(url);
    let options = history::forward::connect_options(&f, gateway, password).unwrap();
    let forwarder = Forwarder::new(
        db.to_path_buf(),
        gateway,
        url,
        options,
        ForwardLink::new(&f),
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(forwarder.run(stop.clone()));
    let last = std::cell::Cell::new((0, 0));
    common::until_queried(
        Duration::from_secs(120),
        Duration::from_millis(200),
        async || {
            last.set(counts(db, pool, gateway).await);
            last.get().0 == last.get().1
        },
        || {
            let (l, c) = last.get();
            format!("{gateway}: {c} of {l} rows forwarded")
        },
    )
    .await;
    stop.cancel();
    task.await.unwrap();
}

/// Fills a history file with `n` readings (and a few events) through the daemon's own writer:
/// a backlog for the forwarder.
/// Writes a local history file at `db` through the daemon's own writer: `fill` records the
/// rows (the queue holds `capacity`), then the writer stops and the file is closed.
async fn write_local(db: &Path, capacity: usize, fill: impl FnOnce(&HistoryHandle)) {
    let cfg = HistoryConfig {
        enabled: true,
        path: db.to_path_buf(),
        retention: Duration::from_secs(30 * 86_400),
        flush: Duration::from_millis(50),
        max_size: None,
        forward: None,
    };
    let pool = history::open(db).await.unwrap();
    let (writer, h) = History::with_capacity(pool.clone(), &cfg, capacity);
    let stop = CancellationToken::new();
    let task = tokio::spawn(writer.run(stop.clone()));
    fill(&h);
    stop.cancel();
    task.await.unwrap();
    pool.close().await;
}

async fn backlog(db: &Path, n: u64) {
    write_local(db, n as usize + 100, |h| {
        let t0 = SystemTime::now() - Duration::from_secs(3600);
        for i in 0..n {
            h.record_reading(
                "old",
                &format!("p{}", i % 50),
                t0 + Duration::from_millis(i),
                &Value::Int(i128::from(i)),
            );
            if i % 10_000 == 0 {
                h.record_availability("old", i % 20_000 == 0, t0 + Duration::from_millis(i));
            }
        }
    })
    .await;
}

fn health_json(sub: &Subscriber, gateway: &str) -> Option<Json> {
    sub.on(&format!("t/gateway/{gateway}/health"))
        .last()
        .and_then(|m| serde_json::from_str(&m.payload).ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_write_to_one_database_and_each_reading_arrives_once_with_its_gateway() {
    let pg = TempDb::create();
    let broker = Mosquitto::start();
    let mut running = Vec::new();
    for id in ["garage", "boiler-room", "pv-shed"] {
        // The same device and point names on each: only the gateway column tells them apart.
        let (fake, addr) = devices(5).await;
        let gw = InProcess::start(&config(id, broker.port, &addr, 5, "100ms", &pg.url())).await;
        running.push((id, gw, fake));
    }
    let pool = pg.pool().await;
    // Rows reach the database while the gateways run...
    for (id, gw, _) in &running {
        let db = gw.dir.path().join("history.db");
        let c = std::cell::Cell::new(0);
        common::until_queried(
            CATCH_UP,
            Duration::from_millis(100),
            async || {
                c.set(counts(&db, &pool, id).await.1);
                c.get() >= 50
            },
            || format!("{id}: only {} rows forwarded", c.get()),
        )
        .await;
    }
    // ...and a clean stop sends the last of them (the stop event included).
    let mut total = 0;
    for (id, gw, _fake) in running {
        let (code, dir) = gw.stop_keeping_dir().await;
        assert_eq!(code, 0);
        total += assert_exactly_local(&dir.path().join("history.db"), &pool, id).await;
    }
    let gateways: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT gateway FROM readings ORDER BY gateway")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(gateways, ["boiler-room", "garage", "pv-shed"]);
    let all: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM readings) + (SELECT count(*) FROM events)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        all as usize, total,
        "rows in the database that no gateway holds"
    );
    // The schema came from the gateways' own migrations, recorded apart from any other
    // application's.
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM fieldbridge_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(applied, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_60_s_cut_under_1000_readings_per_s_leaves_exactly_the_local_rows_in_the_database() {
    let pg = TempDb::create();
    let broker = Mosquitto::start();
    let proxy = Proxy::start(common::postgres::PORT);
    // 50 points every 50 ms, each value new on every read: 1,000 readings/s.
    let (_fake, addr) = devices(50).await;
    let id = "cut";
    let gw = InProcess::start(&config(
        id,
        broker.port,
        &addr,
        50,
        "50ms",
        &pg.url_at(proxy.port),
    ))
    .await;
    let db = gw.dir.path().join("history.db");
    let health = Subscriber::connect(broker.port, &format!("t/gateway/{id}/health"));
    let pool = pg.pool().await;
    common::until_queried(
        CATCH_UP,
        Duration::from_millis(200),
        async || counts(&db, &pool, id).await.1 >= 2_000,
        || "forwarding did not start".into(),
    )
    .await;

    // The database goes away for 60 s: every connection cut, new ones refused.
    proxy
        .refuse
        .store(true, std::sync::atomic::Ordering::SeqCst);
    proxy.cut();
    let cut_at = SystemTime::now();
    // The promise is about a 60 s cut under load: the first 30 s build the backlog measured next.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let during = health_json(&health, id).expect("health published");
    let fwd = &during["forward"];
    assert_eq!(fwd["connected"], false, "{fwd}");
    assert!(fwd["pending"].as_u64().unwrap() > 10_000, "{fwd}");
    assert!(fwd["lag"].as_f64().unwrap() > 20.0, "{fwd}");
    assert!(fwd["errors"].as_u64().unwrap() > 0, "{fwd}");
    let stuck = counts(&db, &pool, id).await.1;
    // ...and the other 30 s: nothing may reach the database while it is cut off.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        counts(&db, &pool, id).await.1,
        stuck,
        "rows reached the database through a cut link"
    );
    let back_at = SystemTime::now();
    proxy
        .refuse
        .store(false, std::sync::atomic::Ordering::SeqCst);

    // Back: the rows that waited go out, and the backlog drains while new ones keep coming.
    health.clear();
    let drained = health
        .wait_for(
            &format!("t/gateway/{id}/health"),
            |p| {
                let h = common::json_of(p);
                h["forward"]["connected"] == true
                    && h["forward"]["pending"].as_u64().is_some_and(|n| n < 2_000)
            },
            Duration::from_secs(90),
        )
        .unwrap_or_else(|| panic!("backlog not sent: {:?}", health_json(&health, id)));
    let h = common::json_of(&drained.payload);
    assert!(h["forward"]["lag"].as_f64().unwrap() < 10.0, "{h}");
    let (code, dir) = gw.stop_keeping_dir().await;
    assert_eq!(code, 0);
    let db = dir.path().join("history.db");
    forward_rest(&db, id, &pg.url(), &pool).await;
    assert_exactly_local(&db, &pool, id).await;

    // The period of the cut itself, counted on both sides.
    let ms = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let lp = history::open_read_only(&db).await.unwrap();
    let local_cut: i64 =
        sqlx::query_scalar("SELECT count(*) FROM readings WHERE ts >= ? AND ts < ?")
            .bind(ms(cut_at))
            .bind(ms(back_at))
            .fetch_one(&lp)
            .await
            .unwrap();
    let central_cut: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM readings WHERE gateway = $1 AND ts >= to_timestamp($2 / 1000.0) AND ts < to_timestamp($3 / 1000.0)",
    )
    .bind(id)
    .bind(ms(cut_at) as f64)
    .bind(ms(back_at) as f64)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(local_cut, central_cut);
    // About 60,000 readings were made while the database was away (polls may run late on a
    // loaded machine).
    assert!(
        local_cut > 40_000,
        "only {local_cut} readings during the cut"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_with_9_mid_forwarding_ten_times_no_row_is_missing_or_twice() {
    let pg = TempDb::create();
    let broker = Mosquitto::start();
    let (_fake, addr) = devices(10).await;
    let id = "k9";
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("history.db");
    // A backlog, so that forwarding is under way whenever the gateway runs.
    backlog(&db, 400_000).await;
    let cfg = config(id, broker.port, &addr, 10, "100ms", &pg.url())
        .replace("{dir}", &dir.path().display().to_string());
    let pool = pg.pool().await;
    let mut dir = Some(dir);
    for round in 0..10 {
        // The backlog is topped up between rounds (no gateway runs then), so it cannot be
        // drained before the last kill however fast this machine forwards: a backlog of
        // 400,000 rows made once was gone by round 9 on a quiet one.
        let (local, sent) = counts(&db, &pool, id).await;
        if local - sent < 150_000 {
            backlog(&db, 200_000).await;
        }
        let (_, before) = counts(&db, &pool, id).await;
        let mut gw = GatewayProcess::spawn_in(dir.take().unwrap(), &cfg, &[("RUST_LOG", "info")]);
        // Forwarding is under way: rows keep arriving in the database...
        common::until_queried(
            CATCH_UP,
            Duration::from_millis(20),
            async || counts(&db, &pool, id).await.1 > before,
            || format!("round {round}: nothing forwarded\n{}", gw.log()),
        )
        .await;
        // ...when it is killed, at a different moment each round: the offset into the
        // forwarding (0 to 333 ms) is the thing varied.
        tokio::time::sleep(Duration::from_millis(37 * round)).await;
        gw.signal(Signal::SIGKILL);
        gw.wait_exit(CATCH_UP).unwrap();
        let (l, c) = counts(&db, &pool, id).await;
        assert!(
            c < l,
            "round {round}: the backlog was gone ({c} of {l}) before the kill"
        );
        dir = Some(std::mem::replace(&mut gw.dir, tempfile::tempdir().unwrap()));
    }
    forward_rest(&db, id, &pg.url(), &pool).await;
    let n = assert_exactly_local(&db, &pool, id).await;
    assert!(n > 400_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_is_lost_is_sent_again_and_stored_once() {
    let pg = TempDb::create();
    let broker = Mosquitto::start();
    let proxy = Proxy::start(common::postgres::PORT);
    let (_fake, addr) = devices(10).await;
    let id = "lost";
    let dir = tempfile::tempdir().unwrap();
    backlog(&dir.path().join("history.db"), 100_000).await;
    let cfg = config(id, broker.port, &addr, 10, "100ms", &pg.url_at(proxy.port));
    let gw = InProcess::start_in(dir, &cfg).await;
    let db = gw.dir.path().join("history.db");
    let pool = pg.pool().await;
    common::until_queried(
        CATCH_UP,
        Duration::from_millis(20),
        async || counts(&db, &pool, id).await.1 > 0,
        || "forwarding did not start".into(),
    )
    .await;
    for _ in 0..3 {
        let tripped = proxy.tripped();
        // PostgreSQL's CommandComplete for COMMIT: the batch is committed, and the gateway
        // never hears it.
        proxy.cut_on_reply(b"C\x00\x00\x00\x0bCOMMIT\x00");
        common::until(
            CATCH_UP,
            || proxy.tripped() != tripped,
            || "no commit seen".into(),
        )
        .await;
        // The database has rows beyond what the gateway knows it sent.
        let lp = history::open_read_only(&db).await.unwrap();
        let cursor: i64 = sqlx::query_scalar("SELECT readings FROM forward_cursor")
            .fetch_one(&lp)
            .await
            .unwrap();
        lp.close().await;
        let max: i64 = sqlx::query_scalar("SELECT max(id) FROM readings WHERE gateway = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(
            max > cursor,
            "the lost commit's rows: database up to {max}, cursor {cursor}"
        );
    }
    let (code, dir) = gw.stop_keeping_dir().await;
    assert_eq!(code, 0);
    let db = dir.path().join("history.db");
    forward_rest(&db, id, &pg.url(), &pool).await;
    assert_exactly_local(&db, &pool, id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_dropping_the_connection_mid_batch_loses_and_doubles_nothing() {
    let pg = TempDb::create();
    let broker = Mosquitto::start();
    let (_fake, addr) = devices(10).await;
    let id = "terminated";
    let dir = tempfile::tempdir().unwrap();
    // Enough that ten rounds of kill and reconnect end well before the forwarder catches up
    // (200,000 was drained by round 9 one run in two once forwarding got faster).
    backlog(&dir.path().join("history.db"), 600_000).await;
    let cfg = config(id, broker.port, &addr, 10, "100ms", &pg.url());
    let gw = InProcess::start_in(dir, &cfg).await;
    let pool = pg.pool().await;
    // The server ends the gateway's session (as a crashing backend or an administrator would)
    // ten times, each time while a batch is on its way.
    let db = gw.dir.path().join("history.db");
    for i in 0..10u64 {
        let (_, before) = counts(&db, &pool, id).await;
        common::until_queried(
            CATCH_UP,
            Duration::from_millis(10),
            async || counts(&db, &pool, id).await.1 != before,
            || format!("round {i}: not forwarding again"),
        )
        .await;
        // Cut at a different moment of the batch each round: the offset (0 to 117 ms) is the
        // thing varied.
        tokio::time::sleep(Duration::from_millis(13 * i)).await;
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
        )
        .bind(format!("fieldbridge-{id}"))
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(killed, [true], "round {i}");
        let (l, c) = counts(&db, &pool, id).await;
        assert!(c < l, "round {i}: the backlog was gone ({c} of {l})");
    }
    let (code, dir) = gw.stop_keeping_dir().await;
    assert_eq!(code, 0);
    let db = dir.path().join("history.db");
    forward_rest(&db, id, &pg.url(), &pool).await;
    assert_exactly_local(&db, &pool, id).await;
}

/// A pool on a private cluster, as its superuser.
async fn private_pool(pg: &PrivatePostgres, db: &str) -> sqlx::PgPool {
    let o: sqlx::postgres::PgConnectOptions = pg.url(db).parse().unwrap();
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(o.password(&pg.password))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_crash_mid_forwarding_loses_and_doubles_nothing() {
    let pg = PrivatePostgres::start();
    pg.psql("CREATE DATABASE central");
    let broker = Mosquitto::start();
    let (_fake, addr) = devices(10).await;
    let id = "crash";
    let dir = tempfile::tempdir().unwrap();
    // More than three crash-and-recover rounds can forward (see the test above).
    backlog(&dir.path().join("history.db"), 400_000).await;
    let pw = dir.path().join("pg.pass");
    std::fs::write(&pw, format!("{}\n", pg.password)).unwrap();
    let cfg = config(id, broker.port, &addr, 10, "100ms", &pg.url("central")).replace(
        "sslmode = \"disable\"\n",
        &format!(
            "sslmode = \"disable\"\npassword_file = \"{}\"\n",
            pw.display()
        ),
    );
    let gw = InProcess::start_in(dir, &cfg).await;
    let db = gw.dir.path().join("history.db");
    let mut pool = private_pool(&pg, "central").await;
    for round in 0..3 {
        let (_, before) = counts(&db, &pool, id).await;
        common::until_queried(
            CATCH_UP,
            Duration::from_millis(10),
            async || counts(&db, &pool, id).await.1 != before,
            || format!("round {round}: not forwarding"),
        )
        .await;
        // The server dies with batches in flight, and comes back after recovery.
        pool.close().await;
        pg.crash();
        // Down for half a second, as a crashed server before its restart: the outage is the
        // thing tested (the gateway's attempts meanwhile are refused).
        tokio::time::sleep(Duration::from_millis(500)).await;
        pg.run();
        pool = private_pool(&pg, "central").await;
        let (l, c) = counts(&db, &pool, id).await;
        assert!(c < l, "round {round}: nothing left to forward ({c} of {l})");
    }
    let (code, dir) = gw.stop_keeping_dir().await;
    assert_eq!(code, 0);
    let db = dir.path().join("history.db");
    forward_rest_with(&db, id, &pg.url("central"), Some(&pg.password), &pool).await;
    assert!(assert_exactly_local(&db, &pool, id).await > 200_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_comes_from_password_file_or_the_environment_and_is_never_logged() {
    let pg = PrivatePostgres::start();
    pg.psql("CREATE DATABASE central");
    let broker = Mosquitto::start();
    let (_fake, addr) = devices(3).await;
    let pool = private_pool(&pg, "central").await;
    let arrived = async |id: &'static str| {
        common::poll_queried(CATCH_UP, Duration::from_millis(100), async || {
            let n: Result<i64, _> =
                sqlx::query_scalar("SELECT count(*) FROM readings WHERE gateway = $1")
                    .bind(id)
                    .fetch_one(&pool)
                    .await;
            n.is_ok_and(|n| n > 0).then_some(())
        })
        .await
        .is_some()
    };
    let spawn = |id: &str, password_file: Option<&str>, env: &[(&str, &str)]| {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(
            id,
            broker.port,
            &addr.to_string(),
            3,
            "100ms",
            &pg.url("central"),
        )
        .replace("{dir}", &dir.path().display().to_string());
        if let Some(p) = password_file {
            let file = dir.path().join("pg.pass");
            std::fs::write(&file, format!("{p}\n")).unwrap();
            cfg = cfg.replace(
                "sslmode = \"disable\"\n",
                &format!(
                    "sslmode = \"disable\"\npassword_file = \"{}\"\n",
                    file.display()
                ),
            );
        }
        let mut env = env.to_vec();
        env.push(("RUST_LOG", "trace"));
        GatewayProcess::spawn_in(dir, &cfg, &env)
    };
    let mut logs = Vec::new();

    // From password_file.
    let mut gw = spawn("from-file", Some(&pg.password), &[]);
    assert!(arrived("from-file").await, "{}", gw.log());
    gw.signal(Signal::SIGTERM);
    assert_eq!(gw.wait_exit(CATCH_UP).unwrap().code(), Some(0));
    logs.push(gw.log());

    // From the environment.
    let mut gw = spawn(
        "from-env",
        None,
        &[("FIELDBRIDGE_FORWARD_PASSWORD", &pg.password)],
    );
    assert!(arrived("from-env").await, "{}", gw.log());
    gw.signal(Signal::SIGTERM);
    assert_eq!(gw.wait_exit(CATCH_UP).unwrap().code(), Some(0));
    logs.push(gw.log());

    // A wrong one: refused, said once, counted; the gateway runs on and its rows wait.
    let health = Subscriber::connect(broker.port, "t/gateway/wrong/health");
    let mut gw = spawn("wrong", Some("not-the-password"), &[]);
    let refused = health
        .wait_for(
            "t/gateway/wrong/health",
            |p| {
                serde_json::from_str::<Json>(p).is_ok_and(|h| {
                    h["forward"]["connected"] == false
                        && h["forward"]["errors"].as_u64().unwrap_or(0) > 1
                        && h["forward"]["pending"].as_u64().unwrap_or(0) > 0
                })
            },
            CATCH_UP,
        )
        .is_some();
    assert!(refused, "{:?}", health_json(&health, "wrong"));
    assert!(gw.is_running());
    gw.signal(Signal::SIGTERM);
    assert_eq!(gw.wait_exit(CATCH_UP).unwrap().code(), Some(0));
    let log = gw.log();
    assert_eq!(
        log.matches("central database unreachable").count(),
        1,
        "one line for the change of state, not one per retry:\n{log}"
    );
    assert!(log.contains("password authentication failed"), "{log}");
    assert!(!arrived("wrong").await);
    logs.push(log);

    for log in &logs {
        assert!(
            !log.contains(&pg.password),
            "the password was logged:\n{log}"
        );
        assert!(
            !log.contains("not-the-password"),
            "a password was logged:\n{log}"
        );
    }

    // A password file that can't be read stops the start, naming it (exit 78).
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        "nofile",
        broker.port,
        &addr.to_string(),
        3,
        "100ms",
        &pg.url("central"),
    )
    .replace("{dir}", &dir.path().display().to_string())
    .replace(
        "sslmode = \"disable\"\n",
        "sslmode = \"disable\"\npassword_file = \"/nonexistent/pg.pass\"\n",
    );
    let mut gw = GatewayProcess::spawn_in(dir, &cfg, &[]);
    assert_eq!(gw.wait_exit(CATCH_UP).unwrap().code(), Some(78));
    assert!(
        gw.log()
            .contains("history.forward.password_file: cannot read /nonexistent/pg.pass"),
        "{}",
        gw.log()
    );
}

/// The server's own certificate, which the machine's PostgreSQL uses for TLS.
fn server_certificate(pg: &TempDb) -> String {
    assert_eq!(
        pg.scalar("SHOW ssl"),
        "on",
        "the PostgreSQL on 127.0.0.1:5432 has TLS off (scripts/setup.sh --tests turns it on)"
    );
    pg.scalar("SHOW ssl_cert_file")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_follows_sslmode_and_a_certificate_for_another_name_is_refused() {
    let pg = TempDb::create();
    let cert = server_certificate(&pg);
    let pool = pg.pool().await;
    let dir = tempfile::tempdir().unwrap();
    // (gateway, sslmode, ca_file, reaches the database, over TLS)
    let cases = [
        ("plain", SslMode::Disable, None, true, false),
        ("require", SslMode::Require, None, true, true),
        ("verify-ca", SslMode::VerifyCa, Some(&cert), true, true),
        // The certificate is valid, but for another name than 127.0.0.1.
        (
            "verify-full",
            SslMode::VerifyFull,
            Some(&cert),
            false,
            false,
        ),
    ];
    for (id, sslmode, ca, reaches, tls) in cases {
        // A history file each: the cursor is per database, and each case must send its rows.
        let db = dir.path().join(format!("{id}.db"));
        backlog(&db, 100).await;
        let f = ForwardConfig {
            sslmode,
            ca_file: ca.map(std::path::PathBuf::from),
            ..forward_config(&pg.url())
        };
        let options = history::forward::connect_options(&f, id, None).unwrap();
        let link = ForwardLink::new(&f);
        let stats = link.stats.clone();
        let stop = CancellationToken::new();
        let task =
            tokio::spawn(Forwarder::new(db.clone(), id, &f.url, options, link).run(stop.clone()));
        common::until_queried(
            CATCH_UP,
            Duration::from_millis(50),
            async || {
                let errors = stats.errors.load(std::sync::atomic::Ordering::Relaxed);
                reaches && counts(&db, &pool, id).await.1 > 0 || !reaches && errors >= 2
            },
            || format!("{id}: {stats:?}"),
        )
        .await;
        if reaches {
            let ssl: bool = sqlx::query_scalar(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = $1",
            )
            .bind(format!("fieldbridge-{id}"))
            .fetch_one(&pool)
            .await
            .unwrap();
            assert_eq!(ssl, tls, "{id}");
        } else {
            assert!(!stats.connected.load(std::sync::atomic::Ordering::Relaxed));
            assert_eq!(counts(&db, &pool, id).await.1, 0, "{id}");
        }
        stop.cancel();
        task.await.unwrap();
    }
}

/// The README's Grafana queries, with Grafana's macros expanded as its PostgreSQL data source
/// does, run against what a gateway forwarded: each must run and find the rows it is about.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_grafana_queries_run_against_the_central_tables() {
    let pg = TempDb::create();
    let pool = pg.pool().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("history.db");
    write_local(&db, 10_000, |h| {
        let now = SystemTime::now();
        for i in 0..120u64 {
            let at = now - Duration::from_secs(60 * i);
            h.record_reading(
                "boiler",
                "temperature",
                at,
                &Value::Float(60.0 + i as f64 / 10.0),
            );
        }
        h.record_availability("boiler", false, now - Duration::from_secs(600));
        h.record_availability("boiler", true, now - Duration::from_secs(300));
    })
    .await;
    forward_rest(&db, "boiler-room", &pg.url(), &pool).await;

    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("## Central history")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let mut ran = 0;
    for block in section.split("```sql\n").skip(1) {
        let block = block.split("```").next().unwrap();
        // Setting up roles and TimescaleDB is for the database's administrator.
        if block.contains("CREATE ROLE") || block.contains("create_hypertable") {
            continue;
        }
        for statement in block.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let sql = statement
                .replace(
                    "$__timeFilter(ts)",
                    "ts BETWEEN now() - interval '6 hours' AND now()",
                )
                .replace(
                    "$__timeGroupAlias(ts, 1h)",
                    "date_trunc('hour', ts) AS \"time\"",
                );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .fetch_all(&pool)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            assert!(!rows.is_empty(), "no rows: {sql}");
            ran += 1;
        }
    }
    assert_eq!(ran, 3);
}

/// Text PostgreSQL can't store as is (a NUL from a noisy serial line, a malformed command)
/// must not stop forwarding: the row goes with U+FFFD for the NUL, and the rows after it follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_postgresql_cannot_take_as_is_does_not_hold_up_the_rows_after_it() {
    let pg = TempDb::create();
    let pool = pg.pool().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("history.db");
    write_local(&db, 10_000, |h| {
        let now = SystemTime::now();
        h.record_reading("line", "label", now, &Value::Text("ab\0cd".into()));
        h.record_command(
            "line",
            "{\"led\": \0}",
            "{\"ok\":false,\"error\":\"malformed JSON\"}",
            now,
        );
        for i in 1..=100u64 {
            h.record_reading(
                "line",
                "n",
                now + Duration::from_millis(i),
                &Value::Int(i.into()),
            );
        }
    })
    .await;
    forward_rest(&db, "noisy", &pg.url(), &pool).await;
    let label: String = sqlx::query_scalar(
        "SELECT value_text FROM readings WHERE gateway = 'noisy' AND point = 'label'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(label, "ab\u{FFFD}cd");
    let detail: String = sqlx::query_scalar("SELECT detail FROM events WHERE gateway = 'noisy'")
        .fetch_one(&pool)
        .await
        .unwrap();
    // The command's payload went into JSON, where the NUL is an escape.
    let detail: Json = serde_json::from_str(&detail).unwrap();
    assert_eq!(detail["payload"], "{\"led\": \0}");
    assert!(
        detail["result"]
            .as_str()
            .unwrap()
            .contains("malformed JSON")
    );
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM readings WHERE gateway = 'noisy' AND point = 'n'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(n, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restored_from_an_older_dump_gets_its_gap_filled_on_the_next_connect() {
    let pg = TempDb::create();
    let pool = pg.pool().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("history.db");
    backlog(&db, 3_000).await;
    forward_rest(&db, "restored", &pg.url(), &pool).await;
    let all = counts(&db, &pool, "restored").await;
    // The database goes back to an older dump: the newest rows it had are gone, while the
    // local cursor says they were sent.
    sqlx::query("DELETE FROM readings WHERE gateway = 'restored' AND id > 1000")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM events WHERE gateway = 'restored' AND id > 1")
        .execute(&pool)
        .await
        .unwrap();
    assert!(counts(&db, &pool, "restored").await.1 < all.1);
    // The next connection finds the gap and fills it from the local file.
    forward_rest(&db, "restored", &pg.url(), &pool).await;
    assert_eq!(counts(&db, &pool, "restored").await, all);
    assert_exactly_local(&db, &pool, "restored").await;
}
