//! Shared test harness: a real mosquitto per test on a free loopback port, a subscriber with
//! bounded waits, the gateway as a subprocess, an sd_notify listener, certificates; the .deb
//! and a booted systemd to install it in; Home Assistant.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]

use std::time::Duration;

/// How long a test waits for an event (a message, a log line, a state) before it fails. Waits
/// end when the event comes, so a generous bound costs nothing on a passing run and spares a
/// loaded 2-core machine false failures.
pub const WAIT: Duration = Duration::from_secs(20);

/// Asks `f` until it gives `Some`, every `every`, for at most `timeout`: the one place where
/// the blocking helpers wait for an event (a message, a log line, a state, a socket).
pub fn poll<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        // The poll interval: how long until the next look.
        std::thread::sleep(every);
    }
}

/// As [`poll`], for async code and a look that is itself asynchronous (a database query, a
/// connection attempt): between looks it yields to the runtime. The one place where the async
/// helpers wait for an event.
pub async fn poll_queried<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        // The poll interval: how long until the next look.
        tokio::time::sleep(every).await;
    }
}

/// As [`poll`], for async code: between looks it yields to the runtime.
pub async fn poll_async<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    poll_queried(timeout, every, async || f()).await
}

/// Waits until `done()` holds, asking again every 10 ms, and fails the test with `what()` once
/// `timeout` has passed. For async tests: between looks it yields to the runtime, on which an
/// in-process gateway runs.
pub async fn until(timeout: Duration, mut done: impl FnMut() -> bool, what: impl Fn() -> String) {
    if poll_async(timeout, Duration::from_millis(10), || done().then_some(()))
        .await
        .is_none()
    {
        panic!("timed out after {timeout:?}: {}", what());
    }
}

/// As [`until`], for code without a runtime.
pub fn until_blocking(
    timeout: Duration,
    mut done: impl FnMut() -> bool,
    what: impl Fn() -> String,
) {
    if poll(timeout, Duration::from_millis(10), || done().then_some(())).is_none() {
        panic!("timed out after {timeout:?}: {}", what());
    }
}

/// As [`until`], for a condition that is itself asked asynchronously (a database query),
/// every `every`.
pub async fn until_queried(
    timeout: Duration,
    every: Duration,
    mut done: impl AsyncFnMut() -> bool,
    what: impl Fn() -> String,
) {
    if poll_queried(timeout, every, async || done().await.then_some(()))
        .await
        .is_none()
    {
        panic!("timed out after {timeout:?}: {}", what());
    }
}

/// A payload as JSON (`null` when it is not).
pub fn json_of(payload: &str) -> serde_json::Value {
    serde_json::from_str(payload).unwrap_or(serde_json::Value::Null)
}

pub mod browser;
pub mod deb;
pub mod gateway;
pub mod home_assistant;
pub mod modbus;
pub mod mosquitto;
pub mod notify;
pub mod nspawn;
pub mod postgres;
pub mod proxy;
pub mod pty;
pub mod sunspec;

/// The overall exposure level in `systemd-analyze security` output for fieldbridge.service.
pub fn exposure_level(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.split("Overall exposure level for fieldbridge.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// libfaketime's preload library, where Debian's `faketime` package puts it.
pub fn libfaketime() -> Option<std::path::PathBuf> {
    std::fs::read_dir("/usr/lib")
        .ok()?
        .flatten()
        .map(|d| d.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists())
}

/// Whether every test must run here: under CI (`CI=true`) or with `FIELDBRIDGE_REQUIRE_ALL=1`,
/// a missing tool, peer or failed boot fails the test (README "Testing").
pub fn all_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var("FIELDBRIDGE_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// A test cannot run because `why`: a failure where every test must run, else a skip printed
/// where nobody can miss it. Returns only in the second case.
pub fn cannot_run(why: &str) {
    if all_required() {
        panic!("cannot run, and every test must run here (CI): {why}");
    }
    skip(why);
}

/// Where the skips of a run are listed for `tests/zz_skipped.rs`, the run's last target.
pub fn skipped_list() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("skipped-tests.txt")
}

/// The run a test belongs to: every test binary of one `cargo test` is a child of that cargo.
pub fn run_id() -> u32 {
    std::os::unix::process::parent_id()
}

/// A test that cannot run here says so where nobody can miss it: on the terminal, past the
/// test harness's capture (which hides what a passing test prints), and on stderr; and lists
/// itself for the run's summary.
pub fn skip(why: &str) {
    use std::io::Write;
    let line = format!("\n**************** SKIPPED: {why} ****************\n");
    if let Ok(mut tty) = std::fs::OpenOptions::new().write(true).open("/dev/tty") {
        let _ = tty.write_all(line.as_bytes());
    }
    eprintln!("{line}");
    if let Ok(mut list) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(skipped_list())
    {
        let test = std::thread::current()
            .name()
            .unwrap_or("a test")
            .to_string();
        let _ = writeln!(list, "{}\t{test}: {why}", run_id());
    }
}
