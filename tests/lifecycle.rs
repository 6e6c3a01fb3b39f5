#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! The daemon as systemd and users see it: status and last will, signals, exit codes, broker
//! restarts, a broker that is not there yet, TLS, passwords, reload of a bad config.

mod common;

use common::WAIT;

use std::time::{Duration, Instant};

use common::gateway::{GatewayProcess, config_text};
use common::mosquitto::{Certs, Mosquitto, Subscriber, publish, wait_retained};
use common::notify::NotifySocket;
use nix::sys::signal::Signal;

fn online(p: &str) -> bool {
    p.contains("\"status\":\"online\"")
}
fn offline(p: &str) -> bool {
    p.contains("\"status\":\"offline\"")
}

#[test]
fn status_is_online_after_start_and_offline_with_exit_0_within_2s_of_sigterm() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_text(dir.path(), broker.port, "gw-term", "");
    let mut gw = GatewayProcess::spawn_in(dir, &cfg, &[]);
    let status = "test/gateway/gw-term/status";
    let got = wait_retained(broker.port, status, online, WAIT);
    assert!(got.is_some(), "no retained online; log:\n{}", gw.log());
    assert!(got.unwrap().contains("\"gateway\":\"gw-term\""));
    let sub = Subscriber::connect(broker.port, status);
    let t0 = Instant::now();
    gw.signal(Signal::SIGTERM);
    let exit = gw.wait_exit(Duration::from_secs(5)).expect("exited");
    let took = t0.elapsed();
    assert_eq!(exit.code(), Some(0), "log:\n{}", gw.log());
    assert!(took < Duration::from_secs(2), "stop took {took:?}");
    let m = sub
        .wait_for(status, offline, WAIT)
        .expect("offline published");
    assert!(m.retained || wait_retained(broker.port, status, offline, WAIT).is_some());
}

#[test]
fn kill_9_leaves_the_retained_offline_of_the_last_will() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_text(dir.path(), broker.port, "gw-kill", "");
    let mut gw = GatewayProcess::spawn_in(dir, &cfg, &[]);
    let status = "test/gateway/gw-kill/status";
    assert!(
        wait_retained(broker.port, status, online, WAIT).is_some(),
        "{}",
        gw.log()
    );
    gw.signal(Signal::SIGKILL);
    gw.wait_exit(WAIT).expect("killed");
    let will = wait_retained(broker.port, status, offline, WAIT);
    assert!(will.is_some(), "the last will did not set offline");
}

#[test]
fn after_a_broker_restart_it_reconnects_resubscribes_and_republishes_online() {
    let mut broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_text(dir.path(), broker.port, "gw-restart", "");
    let gw = GatewayProcess::spawn_in(dir, &cfg, &[]);
    let status = "test/gateway/gw-restart/status";
    assert!(
        wait_retained(broker.port, status, online, WAIT).is_some(),
        "{}",
        gw.log()
    );

    // No persistence: the restarted broker has forgotten our session and subscriptions.
    broker.restart();
    let t0 = Instant::now();
    let back = wait_retained(broker.port, status, online, WAIT);
    assert!(
        back.is_some(),
        "online not re-published; log:\n{}",
        gw.log()
    );
    // reconnect_max is 1 s in the test config; allow for the broker start and a retry.
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "reconnect took {:?}",
        t0.elapsed()
    );

    // A command sent after the restart reaches the gateway: it answers on the result topic.
    let result = "test/lab/device/lamp/command/result";
    let sub = Subscriber::connect(broker.port, result);
    let deadline = Instant::now() + WAIT;
    let mut answered = None;
    while answered.is_none() && Instant::now() < deadline {
        publish(
            broker.port,
            "test/lab/device/lamp/command",
            r#"{"id": "after-restart"}"#,
            false,
        );
        answered = sub.wait_for(
            result,
            |p| p.contains("after-restart"),
            Duration::from_millis(500),
        );
    }
    let answered =
        answered.unwrap_or_else(|| panic!("no result after restart; log:\n{}", gw.log()));
    assert!(
        answered.payload.contains("\"ok\":false"),
        "{}",
        answered.payload
    );
}

#[test]
fn with_no_broker_at_start_it_is_ready_idles_and_connects_when_the_broker_appears() {
    let port = common::mosquitto::free_port();
    let notify = NotifySocket::new();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_text(dir.path(), port, "gw-late", "");
    let gw = GatewayProcess::spawn_in(
        dir,
        &cfg,
        &[("NOTIFY_SOCKET", notify.path.to_str().unwrap())],
    );
    assert!(
        notify.wait_for(|m| m == "READY=1", WAIT).is_some(),
        "READY=1 not sent without a broker; log:\n{}",
        gw.log()
    );
    // While the broker is away: no busy loop. 3 s of retrying with a 1 s backoff cap must cost
    // far less than a core (generous bound: 30 ticks = 0.3 s of CPU). Measured from its second
    // failed attempt, when the start's own work is done and it only retries.
    assert!(
        gw.wait_log("still not connected", WAIT),
        "no retry without a broker; log:\n{}",
        gw.log()
    );
    let before = gw.cpu_ticks();
    // The measured stretch: 3 s of retrying.
    std::thread::sleep(Duration::from_secs(3));
    let used = gw.cpu_ticks() - before;
    assert!(
        used < 30,
        "{used} CPU ticks in 3 s while the broker was away"
    );

    let broker = Mosquitto::start_with("allow_anonymous true\n", Some(port));
    let got = wait_retained(broker.port, "test/gateway/gw-late/status", online, WAIT);
    assert!(
        got.is_some(),
        "did not connect once the broker came; log:\n{}",
        gw.log()
    );
    assert!(
        notify
            .wait_for(|m| m.starts_with("STATUS=MQTT connected"), WAIT)
            .is_some(),
        "{:?}",
        notify.messages()
    );
}

#[test]
fn a_bad_config_on_sighup_is_refused_with_its_errors_and_the_gateway_keeps_running() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_text(dir.path(), broker.port, "gw-hup", "");
    let notify = NotifySocket::new();
    let mut gw = GatewayProcess::spawn_in(
        dir,
        &cfg,
        &[("NOTIFY_SOCKET", notify.path.to_str().unwrap())],
    );
    let status = "test/gateway/gw-hup/status";
    assert!(
        wait_retained(broker.port, status, online, WAIT).is_some(),
        "{}",
        gw.log()
    );
    std::fs::write(
        &gw.config_path,
        cfg.replace("unit = 1", "unit = 1\npolll = \"5s\"")
            .replace("coil:0", "coyl:0"),
    )
    .unwrap();
    gw.signal(Signal::SIGHUP);
    assert!(
        gw.wait_log("the new config is invalid; keeping the running one", WAIT),
        "{}",
        gw.log()
    );
    let log = gw.log();
    assert!(
        log.contains("devices.lamp.polll: unknown key \"polll\" (did you mean \"poll\"?)"),
        "{log}"
    );
    assert!(
        log.contains("devices.lamp.points.state.register: unknown register table \"coyl\""),
        "{log}"
    );
    assert!(
        notify
            .wait_for(|m| m.starts_with("RELOADING=1"), WAIT)
            .is_some()
    );
    // Still at work on the running config after the refusal: a command is answered.
    let result = "test/lab/device/lamp/command/result";
    let sub = Subscriber::connect(broker.port, result);
    publish(
        broker.port,
        "test/lab/device/lamp/command",
        r#"{"id": "after-hup"}"#,
        false,
    );
    assert!(
        sub.wait_for(result, |p| p.contains("after-hup"), WAIT)
            .is_some(),
        "no result after the refused reload; log:\n{}",
        gw.log()
    );
    assert!(gw.is_running());
    assert_eq!(
        wait_retained(broker.port, status, online, WAIT).map(|p| online(&p)),
        Some(true)
    );
    gw.signal(Signal::SIGTERM);
    assert_eq!(gw.wait_exit(WAIT).and_then(|s| s.code()), Some(0));
}

#[test]
fn a_password_file_logs_in_and_a_wrong_password_is_not_authorized_and_never_logged() {
    // mosquitto reads the password file at start: make it first.
    let auth = tempfile::tempdir().unwrap();
    let passwd = auth.path().join("passwd");
    let st = std::process::Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&passwd)
        .args(["gwuser", "s3cret-Pa55"])
        .status()
        .unwrap();
    assert!(st.success());
    let broker = Mosquitto::start_with(
        &format!(
            "allow_anonymous false\npassword_file {}\n",
            passwd.display()
        ),
        None,
    );

    let dir = tempfile::tempdir().unwrap();
    let pass_file = dir.path().join("mqtt.pass");
    std::fs::write(&pass_file, "s3cret-Pa55\n").unwrap();
    // World-readable on purpose: the gateway warns about it.
    std::fs::set_permissions(
        &pass_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let extra = format!(
        "username = \"gwuser\"\npassword_file = \"{}\"",
        pass_file.display()
    );
    let cfg = config_text(dir.path(), broker.port, "gw-auth", &extra).replace(
        "location = \"lab\"",
        "location = \"lab\"\nhealth_interval = \"1s\"",
    );
    let good = GatewayProcess::spawn_in(dir, &cfg, &[("RUST_LOG", "trace")]);
    let status = "test/gateway/gw-auth/status";
    // Reading the retained status needs credentials too.
    let got = wait_for_retained_auth(broker.port, status);
    assert!(got.is_some_and(|p| online(&p)), "{}", good.log());
    assert!(
        good.log().contains("readable by every user"),
        "{}",
        good.log()
    );
    // Not at trace level, not in the health report, not in `check`.
    let report = std::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-u", "gwuser", "-P", "s3cret-Pa55"])
        .args(["-t", "test/gateway/gw-auth/health", "-C", "1", "-W", "10"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&report.stdout).to_string();
    assert!(report.contains("uptime"), "no health report: {report}");
    assert!(!report.contains("s3cret-Pa55"));
    assert!(
        !good.log().contains("s3cret-Pa55"),
        "the password was logged"
    );
    let check = std::process::Command::new(common::gateway::BIN)
        .args(["check", "-c"])
        .arg(&good.config_path)
        .env("FIELDBRIDGE_MQTT_PASSWORD", "env-s3cret")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&check.stdout).to_string()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{shown}");
    assert!(
        !shown.contains("s3cret-Pa55") && !shown.contains("env-s3cret"),
        "{shown}"
    );
    drop(good);

    let dir = tempfile::tempdir().unwrap();
    let pass_file = dir.path().join("mqtt.pass");
    std::fs::write(&pass_file, "wr0ng-Pa55\n").unwrap();
    let extra = format!(
        "username = \"gwuser\"\npassword_file = \"{}\"",
        pass_file.display()
    );
    let cfg = config_text(dir.path(), broker.port, "gw-auth2", &extra);
    let mut bad = GatewayProcess::spawn_in(dir, &cfg, &[("RUST_LOG", "trace")]);
    assert!(bad.wait_log("not authorized", WAIT), "{}", bad.log());
    // A crash would follow the refusal at once. The window over which attempts are counted
    // below: 1.5 s spans several with reconnect_min 100 ms, max 1 s.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(bad.is_running(), "crashed on a refused login");
    let log = bad.log();
    assert!(
        !log.contains("wr0ng-Pa55"),
        "the password appeared in the log"
    );
    assert!(!log.contains("s3cret-Pa55"));
    // Backs off: at most a handful of attempts in 1.5 s with reconnect_min 100 ms, max 1 s.
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("not authorized"))
        .count();
    assert_eq!(
        warnings, 1,
        "repeated refusals must not warn every retry:\n{log}"
    );
    let attempts = log.matches("still not connected").count();
    assert!(
        (1..=6).contains(&attempts),
        "{attempts} retries in 1.5 s: no backoff?\n{log}"
    );
}

fn wait_for_retained_auth(port: u16, topic: &str) -> Option<String> {
    common::poll(WAIT, Duration::from_millis(100), || {
        let out = std::process::Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-u",
                "gwuser",
                "-P",
                "s3cret-Pa55",
            ])
            .args(["-t", topic, "-C", "1", "-W", "2", "--retained-only"])
            .output()
            .ok()?;
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        online(&s).then_some(s)
    })
}

#[test]
fn tls_with_a_ca_and_client_certificate_connects_and_a_wrong_ca_is_a_clear_retried_error() {
    let tmp = tempfile::tempdir().unwrap();
    let good = Certs::generate(tmp.path(), "good");
    let other = Certs::generate(tmp.path(), "other");
    let tls_port = common::mosquitto::free_port();
    let plain_port = common::mosquitto::free_port();
    let broker = Mosquitto::start_with(
        &format!(
            "allow_anonymous true\nlistener {plain_port} 127.0.0.1\nlistener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            good.file("ca.crt"),
            good.file("server.crt"),
            good.file("server.key")
        ),
        None,
    );
    let _ = &broker;
    let tls = |ca: &str| {
        format!(
            "ca_file = \"{ca}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
            good.file("client.crt"),
            good.file("client.key")
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_text(dir.path(), tls_port, "gw-tls", &tls(&good.file("ca.crt")))
        .replace("mqtt://127.0.0.1", "mqtts://127.0.0.1");
    let gw = GatewayProcess::spawn_in(dir, &cfg, &[("RUST_LOG", "trace")]);
    let got = wait_retained(plain_port, "test/gateway/gw-tls/status", online, WAIT);
    assert!(got.is_some(), "no TLS connection; log:\n{}", gw.log());
    // The private key never shows, not even at trace level.
    let key = std::fs::read_to_string(good.file("client.key")).unwrap();
    let log = gw.log();
    for line in key.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!log.contains(line), "a line of the client key was logged");
    }

    let dir = tempfile::tempdir().unwrap();
    let cfg = config_text(
        dir.path(),
        tls_port,
        "gw-tls-bad",
        &tls(&other.file("ca.crt")),
    )
    .replace("mqtt://127.0.0.1", "mqtts://127.0.0.1");
    let mut bad = GatewayProcess::spawn_in(dir, &cfg, &[]);
    assert!(bad.wait_log("TLS:", WAIT), "{}", bad.log());
    let log = bad.log();
    assert!(
        log.to_lowercase().contains("certificate"),
        "the error should name the certificate problem:\n{log}"
    );
    // A crash would follow the TLS failure at once: it lives on to try again, twice.
    assert!(
        bad.wait_log_count("still not connected", 2, WAIT),
        "{}",
        bad.log()
    );
    assert!(bad.is_running());
    assert!(common::mosquitto::retained(plain_port, "test/gateway/gw-tls-bad/status").is_none());
}

#[test]
fn tls_verification_is_on_by_default_and_tls_insecure_is_an_explicit_logged_opt_out() {
    let tmp = tempfile::tempdir().unwrap();
    // A broker whose certificate no system CA has signed (self-signed, as on many LANs).
    let certs = Certs::generate(tmp.path(), "lan");
    let tls_port = common::mosquitto::free_port();
    let plain_port = common::mosquitto::free_port();
    let _broker = Mosquitto::start_with(
        &format!(
            "allow_anonymous true\nlistener {plain_port} 127.0.0.1\nlistener {tls_port} 127.0.0.1\ncertfile {}\nkeyfile {}\n",
            certs.file("server.crt"),
            certs.file("server.key")
        ),
        None,
    );
    // No ca_file: the system's roots, which don't know this broker. Refused, and retried.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_text(dir.path(), tls_port, "gw-strict", "")
        .replace("mqtt://127.0.0.1", "mqtts://127.0.0.1");
    let mut strict = GatewayProcess::spawn_in(dir, &cfg, &[]);
    assert!(strict.wait_log("TLS:", WAIT), "{}", strict.log());
    assert!(
        strict.log().to_lowercase().contains("certificate"),
        "{}",
        strict.log()
    );
    // No exit on the refused certificate: it lives on to try again, twice.
    assert!(
        strict.wait_log_count("still not connected", 2, WAIT),
        "{}",
        strict.log()
    );
    assert!(strict.is_running());
    assert!(common::mosquitto::retained(plain_port, "test/gateway/gw-strict/status").is_none());

    // The explicit opt-out connects, and says what it gives up at start.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_text(dir.path(), tls_port, "gw-insecure", "tls_insecure = true")
        .replace("mqtt://127.0.0.1", "mqtts://127.0.0.1");
    let insecure = GatewayProcess::spawn_in(dir, &cfg, &[("RUST_LOG", "info")]);
    let got = wait_retained(plain_port, "test/gateway/gw-insecure/status", online, WAIT);
    assert!(got.is_some(), "{}", insecure.log());
    let log = insecure.log();
    assert!(
        log.contains("WARN") && log.contains("tls_insecure") && log.contains("NOT verified"),
        "{log}"
    );

    // And only for TLS: on a plain url the key is a config error, not silently ignored.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_text(dir.path(), plain_port, "gw-plain", "tls_insecure = true");
    std::fs::write(dir.path().join("c.toml"), cfg).unwrap();
    let out = std::process::Command::new(common::gateway::BIN)
        .args(["check", "-c"])
        .arg(dir.path().join("c.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls_insecure is for TLS"), "{err}");
}

/// SIGTERM while two dead RTU units (default timeout 500 ms, 1 retry: a poll of one costs the
/// bus a second) keep the bus busy beside a live one: the stop does not wait for their
/// timeouts, and the history's last batch and the `offline` status each get their share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_dead_rtu_units_exits_0_in_2s_publishes_offline_and_flushes_history() {
    let broker = Mosquitto::start();
    let fake = common::modbus::FakeModbus::new();
    // The live unit's value moves at every read, so every poll is a reading in the history.
    fake.unit(1, |u| u.tick = true);
    fake.unit(2, |u| u.silent = true);
    fake.unit(3, |u| u.silent = true);
    let dir = tempfile::tempdir().unwrap();
    let bus = fake.serve_rtu(dir.path());
    let db = dir.path().join("history.db");
    let mut cfg = config_text(dir.path(), broker.port, "gw-dead", "");
    // Replace the sample TCP bus and lamp with the RTU bus and its three units.
    cfg.truncate(cfg.find("[buses.plc]").unwrap());
    // A flush window longer than the test: every reading is in the history only if the stop
    // flushes it.
    cfg = cfg.replace("[history]\n", "[history]\nflush = \"60s\"\n");
    cfg += &format!(
        "[buses.rs485]\nkind = \"modbus-rtu\"\nport = \"{}\"\n",
        bus.path_str()
    );
    for (unit, name) in [(1, "live"), (2, "dead1"), (3, "dead2")] {
        // `offline_after` high: the dead units stay on the poll schedule, each poll a timeout.
        cfg += &format!(
            "[devices.{name}]\nbus = \"rs485\"\nunit = {unit}\npoll = \"200ms\"\noffline_after = 1000\n[devices.{name}.points.v]\nregister = \"holding:0\"\n"
        );
    }
    let mut gw = GatewayProcess::spawn_in(tempfile::tempdir().unwrap(), &cfg, &[]);
    let status = "test/gateway/gw-dead/status";
    assert!(
        wait_retained(broker.port, status, online, WAIT).is_some(),
        "log:\n{}",
        gw.log()
    );
    let sub = Subscriber::connect(broker.port, "test/#");
    // Readings flow, and the dead units' timeouts are on the wire.
    sub.wait_for("test/lab/sensor/live/v", |_| true, WAIT)
        .expect("live readings");
    common::until(
        WAIT,
        || {
            [2, 3]
                .iter()
                .all(|u| fake.log().iter().any(|s| s.unit == *u))
        },
        || "the dead units were not polled".into(),
    )
    .await;
    let before = std::time::SystemTime::now();
    let t0 = Instant::now();
    gw.signal(Signal::SIGTERM);
    let exit = gw.wait_exit(Duration::from_secs(10)).expect("exited");
    let took = t0.elapsed();
    assert_eq!(exit.code(), Some(0), "log:\n{}", gw.log());
    assert!(
        took < Duration::from_secs(2),
        "stop took {took:?}; log:\n{}",
        gw.log()
    );
    assert!(
        sub.wait_for(status, offline, WAIT).is_some(),
        "no offline published; log:\n{}",
        gw.log()
    );
    // The live unit's readings up to the stop are in the history: the last batch was written.
    let pool = fieldbridge::history::open_read_only(&db).await.unwrap();
    let filter = fieldbridge::history::Filter {
        device: Some("live".into()),
        ..Default::default()
    };
    let rows = fieldbridge::history::query(&pool, &filter).await.unwrap();
    let published = sub.on("test/lab/sensor/live/v").len();
    assert!(
        rows.len() + 1 >= published,
        "{} readings in the history, {published} published",
        rows.len()
    );
    let newest = rows.last().expect("readings in the history").timestamp;
    let stop = before
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    // The bus is shared with two dead units: the live one is read about every 2 s.
    assert!(
        newest > stop - 3.0,
        "the newest reading is {:.1} s before the stop",
        stop - newest
    );
}
