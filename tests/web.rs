#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::let_underscore_must_use
)]
//! The commissioning page (README "The commissioning page") in a real headless Chromium,
//! against the real gateway process, a real mosquitto, a simulated Modbus TCP device and an RTU
//! bus over a pseudo-terminal: log in, see a value change live, scan, read registers, send a
//! command — and, over plain HTTP, everything it must refuse.

mod common;

use common::WAIT;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};

use common::browser::{self, Browser};
use common::gateway::GatewayProcess;
use common::modbus::FakeModbus;
use common::mosquitto::{Mosquitto, Subscriber, free_port};
use fantoccini::Locator;

const PASSWORD: &str = "correct horse battery staple";

/// A gateway with a thermostat on Modbus TCP, a meter on an RTU bus, and the page.
fn gateway_config(mqtt: u16, plc: &str, rtu: &str, dir: &Path, web: &str) -> String {
    format!(
        r#"[gateway]
id = "webgw"
base_topic = "t"
location = "lab"
[mqtt]
url = "mqtt://127.0.0.1:{mqtt}"
reconnect_min = "100ms"
reconnect_max = "1s"
[history]
path = "{dir}/history.db"
flush = "100ms"
[web]
{web}
[buses.plc]
kind = "modbus-tcp"
address = "{plc}"
timeout = "500ms"
[buses.rs485]
kind = "modbus-rtu"
port = "{rtu}"
baud = 115200
timeout = "100ms"
retries = 0
[devices.thermostat]
bus = "plc"
unit = 1
poll = "200ms"
[devices.thermostat.points.temperature]
register = "input:0"
type = "i16"
scale = 0.1
unit = "°C"
device_class = "temperature"
[devices.thermostat.points.setpoint]
register = "holding:10"
scale = 0.1
unit = "°C"
writable = true
min = 5
max = 30
[devices.thermostat.actions.eco]
set = {{ setpoint = 17 }}
[devices.meter]
bus = "rs485"
unit = 2
profile = "eastron-sdm120"
poll = "1s"
"#,
        dir = dir.display()
    )
}

struct Rig {
    _broker: Mosquitto,
    fake: FakeModbus,
    _meter: FakeModbus,
    _rtu: common::modbus::PtyBus,
    gw: GatewayProcess,
    url: String,
    sub: Subscriber,
}

async fn rig(web: &str) -> Rig {
    let broker = Mosquitto::start();
    let fake = FakeModbus::new();
    fake.set_input(1, 0, &[215]);
    fake.set_holding(1, 10, &[200]);
    // The meter, alone on the RTU bus, says who it is (FC 43/14), so a scan can name its
    // profile.
    let meter = FakeModbus::new();
    meter.unit(2, |u| {
        u.identity = Some(vec![(0, "Eastron".into()), (1, "SDM120-Modbus".into())]);
    });
    meter.set_input(2, 0, &[0x4366, 0x6666]);
    let plc = fake.serve_tcp().await.to_string();
    let dir = tempfile::tempdir().unwrap();
    let rtu = meter.serve_rtu(dir.path());
    let pass = dir.path().join("web.pass");
    std::fs::write(&pass, format!("{PASSWORD}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let port = free_port();
    let web = web
        .replace("{port}", &port.to_string())
        .replace("{pass}", &pass.display().to_string());
    let text = gateway_config(broker.port, &plc, &rtu.path_str(), dir.path(), &web);
    let sub = Subscriber::connect(broker.port, "t/#");
    let gw = GatewayProcess::spawn_in(dir, &text, &[]);
    assert!(
        gw.wait_log("commissioning page listening", WAIT),
        "{}",
        gw.log()
    );
    Rig {
        _broker: broker,
        fake,
        _meter: meter,
        _rtu: rtu,
        gw,
        url: format!("http://127.0.0.1:{port}"),
        sub,
    }
}

/// `FIELDBRIDGE_BLESS=1` also writes the screenshots the README shows (`docs/web-*.png`).
fn screenshot_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("FIELDBRIDGE_BLESS")
        .map(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("docs/web-{name}.png")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_in_see_values_live_scan_read_and_command_in_a_real_browser() {
    if browser::available("the commissioning page in Chromium").is_none() {
        return;
    }
    let r =
        rig("listen = \"127.0.0.1:{port}\"\npassword_file = \"{pass}\"\nallow_writes = true").await;
    let b = Browser::start().await;

    // Not logged in: every page leads to the login form; a wrong password is refused.
    b.client
        .goto(&format!("{}/device/thermostat", r.url))
        .await
        .unwrap();
    assert!(
        b.client
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/login")
    );
    b.fill("#password", "wrong").await;
    b.click("#login").await;
    b.wait_text("#login-error", |t| t.contains("wrong password"), WAIT)
        .await;
    b.fill("#password", PASSWORD).await;
    b.click("#login").await;
    b.wait_text("h1", |t| t.contains("gateway webgw"), WAIT)
        .await;
    b.wait_text(
        "#devices [data-availability$='/thermostat/availability']",
        |t| t == "online",
        WAIT,
    )
    .await;
    if let Some(p) = screenshot_path("gateway") {
        b.screenshot(&p).await;
    }

    // A value changes on the device and on the page, without a reload.
    b.client
        .goto(&format!("{}/device/thermostat", r.url))
        .await
        .unwrap();
    b.wait_text("#value-temperature", |t| t == "21.5", WAIT)
        .await;
    b.eval("window.notReloaded = true; return 1").await;
    r.fake.set_input(1, 0, &[(-35i16) as u16]);
    b.wait_text("#value-temperature", |t| t == "-3.5", WAIT)
        .await;
    assert_eq!(
        b.eval("return window.notReloaded === true").await,
        serde_json::json!(true),
        "the page reloaded instead of updating in place"
    );

    // A command with allow_writes: through the same validation, written, read back, answered.
    b.fill("input[data-set='setpoint']", "22.5").await;
    b.click("button.set[data-point='setpoint']").await;
    let result = b
        .wait_text("#command-result", |t| t.contains("\"ok\""), WAIT)
        .await;
    assert!(
        result.contains("\"ok\": true") && result.contains("22.5"),
        "{result}"
    );
    assert_eq!(r.fake.unit(1, |u| u.holdings.get(&10).copied()), Some(225));
    // A value the point refuses: refused, nothing written.
    b.fill("input[data-set='setpoint']", "99").await;
    b.click("button.set[data-point='setpoint']").await;
    let refused = b
        .wait_text("#command-result", |t| t.contains("above max"), WAIT)
        .await;
    assert!(refused.contains("\"ok\": false"), "{refused}");
    assert_eq!(r.fake.unit(1, |u| u.holdings.get(&10).copied()), Some(225));
    // The page's command went through the router: on the broker too, and in the history.
    assert!(
        r.sub
            .wait_for(
                "t/lab/device/thermostat/command/result",
                |p| p.contains("\"web-") && p.contains("\"ok\":true"),
                WAIT
            )
            .is_some()
    );
    b.client.refresh().await.unwrap();
    b.wait_text("#events", |t| t.contains("web-"), WAIT).await;
    if let Some(p) = screenshot_path("device") {
        b.wait_text("#chart-note", |t| t.contains("readings"), WAIT)
            .await;
        b.screenshot(&p).await;
    }

    // A scan of the RTU bus: progress, then the unit found with its profile and a snippet.
    b.client
        .goto(&format!("{}/bus/rs485", r.url))
        .await
        .unwrap();
    b.fill("#scan-units", "1-4").await;
    b.click("#scan-identify").await;
    b.click("#scan").await;
    let status = b
        .wait_text("#scan-status", |t| t.starts_with("done"), WAIT)
        .await;
    assert_eq!(status, "done: 1 unit(s) answered");
    let found = b.text("#scan-found .found[data-unit='2']").await;
    assert!(
        found.contains("matching profiles: eastron-sdm120"),
        "{found}"
    );
    assert!(found.contains("profile = \"eastron-sdm120\""), "{found}");
    assert_eq!(
        b.eval("return document.getElementById('scan-progress').value")
            .await,
        serde_json::json!(4)
    );

    // A register read, with every decoding.
    b.fill("#read-unit", "2").await;
    b.fill("#read-register", "input:0").await;
    b.fill("#read-count", "2").await;
    b.click("#read").await;
    let decoded = b
        .wait_text("#read-result", |t| t.contains("f32"), WAIT)
        .await;
    assert!(
        decoded.contains("0x4366") && decoded.contains("230.399"),
        "{decoded}"
    );
    if let Some(p) = screenshot_path("bus") {
        b.screenshot(&p).await;
    }
    b.client.goto(&format!("{}/config", r.url)).await.unwrap();
    let summary = b.text("#summary").await;
    assert!(summary.contains("reads per poll"), "{summary}");
    if let Some(p) = screenshot_path("config") {
        b.screenshot(&p).await;
    }
    // Polling went on throughout.
    assert!(
        r.sub
            .wait_for("t/lab/device/meter/state", |p| p.contains("voltage"), WAIT)
            .is_some()
    );
    b.close().await;
    drop(r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_allow_writes_the_page_reads_but_never_writes() {
    if browser::available("the commissioning page in Chromium").is_none() {
        return;
    }
    // On loopback a page may go without a password; it still carries CSRF tokens.
    let r = rig("listen = \"127.0.0.1:{port}\"").await;
    let b = Browser::start().await;
    b.client
        .goto(&format!("{}/device/thermostat", r.url))
        .await
        .unwrap();
    b.wait_text("#value-temperature", |t| t == "21.5", WAIT)
        .await;
    assert!(
        b.client.find(Locator::Css("button.set")).await.is_err(),
        "no controls without allow_writes"
    );
    // Even with the page's own token, the gateway refuses.
    let answer = b
        .eval(
            "const t = document.querySelector('meta[name=csrf-token]').content; \
             const c = await fetch('/api/device/thermostat/command', {method: 'POST', headers: {'x-csrf-token': t, 'content-type': 'application/json'}, body: '{\"setpoint\": 25}'}); \
             const w = await fetch('/api/bus/plc/write', {method: 'POST', headers: {'x-csrf-token': t}, body: '{\"unit\":1,\"register\":\"holding:10\",\"type\":\"u16\",\"value\":\"1\"}'}); \
             return [c.status, (await c.json()).error, w.status];",
        )
        .await;
    assert_eq!(answer[0], serde_json::json!(403), "{answer}");
    assert!(
        answer[1].as_str().unwrap().contains("allow_writes"),
        "{answer}"
    );
    assert_eq!(answer[2], serde_json::json!(403), "{answer}");
    assert_eq!(r.fake.unit(1, |u| u.holdings.get(&10).copied()), Some(200));
    b.close().await;
}

/// One HTTP/1.1 exchange over a fresh connection: status and the whole response.
fn http(url: &str, request: &str) -> (u16, String) {
    let addr = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn get(url: &str, path: &str, headers: &str) -> (u16, String) {
    let host = url.trim_start_matches("http://");
    http(
        url,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{headers}\r\n"),
    )
}

fn post(url: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
    let host = url.trim_start_matches("http://");
    http(
        url,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n{headers}\r\n{body}",
            body.len()
        ),
    )
}

/// A session cookie and its CSRF token, as a browser gets them (logging in when needed).
fn session(url: &str, password: Option<&str>) -> (String, String) {
    let (_, page) = get(url, "/login", "");
    let cookie = page
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_string();
    let token = |page: &str| {
        page.split("name=\"csrf-token\" content=\"")
            .nth(1)
            .or_else(|| page.split("name=\"csrf\" value=\"").nth(1))
            .and_then(|t| t.split('"').next())
            .unwrap()
            .to_string()
    };
    let Some(password) = password else {
        let (_, page) = get(url, "/", &format!("Cookie: {cookie}\r\n"));
        return (cookie, token(&page));
    };
    let form = format!(
        "password={}&csrf={}",
        password.replace(' ', "+"),
        token(&page)
    );
    let (status, resp) = post(
        url,
        "/login",
        &format!("Cookie: {cookie}\r\nContent-Type: application/x-www-form-urlencoded\r\n"),
        &form,
    );
    assert_eq!(status, 303, "{resp}");
    let cookie = resp
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_string();
    let (_, page) = get(url, "/", &format!("Cookie: {cookie}\r\n"));
    (cookie, token(&page))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_clear_4xx_and_nothing_else_is_affected() {
    let r =
        rig("listen = \"127.0.0.1:{port}\"\npassword_file = \"{pass}\"\nallow_writes = true").await;
    let url = r.url.clone();
    let checks = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        // No session: pages send to the login, the API says 401.
        out.push(("page without login", get(&url, "/", "").0, 303));
        out.push(("api without login", get(&url, "/api/live", "").0, 401));
        let (cookie, csrf) = session(&url, Some(PASSWORD));
        let c = format!("Cookie: {cookie}\r\n");
        let cx = format!("Cookie: {cookie}\r\nX-CSRF-Token: {csrf}\r\n");
        out.push(("page with login", get(&url, "/", &c).0, 200));
        // State changes need the session's CSRF token.
        let cmd = "/api/device/thermostat/command";
        out.push((
            "command without CSRF",
            post(&url, cmd, &c, "{\"setpoint\": 25}").0,
            403,
        ));
        out.push((
            "command with another token",
            post(
                &url,
                cmd,
                &format!("{c}X-CSRF-Token: 00ff\r\n"),
                "{\"setpoint\": 25}",
            )
            .0,
            403,
        ));
        out.push((
            "malformed JSON",
            post(&url, cmd, &cx, "{\"setpoint\": ").0,
            400,
        ));
        out.push(("not an object", post(&url, cmd, &cx, "[1,2]").0, 400));
        out.push((
            "unknown device",
            post(&url, "/api/device/nope/command", &cx, "{}").0,
            404,
        ));
        out.push((
            "unknown bus",
            get(&url, "/api/bus/nope/read?unit=1&register=holding:0", &c).0,
            404,
        ));
        out.push(("unknown page", get(&url, "/device/nope", &c).0, 404));
        out.push((
            "bad register",
            get(&url, "/api/bus/plc/read?unit=1&register=holdng:0", &c).0,
            400,
        ));
        out.push((
            "count beyond one read",
            get(
                &url,
                "/api/bus/plc/read?unit=1&register=holding:0&count=500",
                &c,
            )
            .0,
            400,
        ));
        out.push((
            "unit out of range",
            get(&url, "/api/bus/plc/read?unit=300&register=holding:0", &c).0,
            400,
        ));
        out.push((
            "scan of 1..10000",
            get(
                &url,
                &format!("/api/bus/rs485/scan?units=1-10000&csrf={csrf}"),
                &c,
            )
            .0,
            400,
        ));
        out.push((
            "scan without CSRF",
            get(&url, "/api/bus/rs485/scan?units=1-3&csrf=x", &c).0,
            403,
        ));
        let huge = "x".repeat(200_000);
        out.push(("huge body", post(&url, cmd, &cx, &huge).0, 413));
        out.push((
            "write of a read-only table",
            post(
                &url,
                "/api/bus/plc/write",
                &cx,
                "{\"unit\":1,\"register\":\"input:0\",\"type\":\"u16\",\"value\":\"1\"}",
            )
            .0,
            400,
        ));
        out.push((
            "history of an unknown point",
            get(&url, "/api/device/thermostat/history?point=nope", &c).0,
            404,
        ));
        // Failed logins: after five, the address waits.
        let mut last = 0;
        for _ in 0..6 {
            let (_, page) = get(&url, "/login", "");
            let set = page
                .lines()
                .find_map(|l| l.strip_prefix("set-cookie: "))
                .and_then(|c| c.split(';').next())
                .unwrap()
                .to_string();
            let token = page
                .split("name=\"csrf\" value=\"")
                .nth(1)
                .and_then(|t| t.split('"').next())
                .unwrap()
                .to_string();
            last = post(
                &url,
                "/login",
                &format!("Cookie: {set}\r\nContent-Type: application/x-www-form-urlencoded\r\n"),
                &format!("password=guess&csrf={token}"),
            )
            .0;
        }
        out.push(("sixth failed login", last, 429));
        out
    })
    .await
    .unwrap();
    let wrong: Vec<String> = checks
        .iter()
        .filter(|(_, got, want)| got != want)
        .map(|(what, got, want)| format!("{what}: {got}, expected {want}"))
        .collect();
    assert!(wrong.is_empty(), "{}\n{}", wrong.join("\n"), r.gw.log());
    assert!(r.gw.log().contains("failed login"), "{}", r.gw.log());
    assert_eq!(
        r.fake.unit(1, |u| u.holdings.get(&10).copied()),
        Some(200),
        "nothing written"
    );

    // Slow clients holding every connection: the next is refused with 503 at once; the
    // gateway goes on polling and publishing meanwhile.
    let addr = r.url.trim_start_matches("http://").to_string();
    let idle: Vec<TcpStream> = (0..32)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let refused = {
        let url = r.url.clone();
        tokio::task::spawn_blocking(move || get(&url, "/login", ""))
            .await
            .unwrap()
    };
    assert_eq!(refused.0, 503, "{}", refused.1);
    r.sub.clear();
    r.fake.set_input(1, 0, &[222]);
    assert!(
        r.sub
            .wait_for(
                "t/lab/device/thermostat/state",
                |p| p.contains("22.2"),
                WAIT
            )
            .is_some(),
        "polling stopped while the page's connections were full"
    );
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_password_only_loopback_names_reach_the_page() {
    let r = rig("listen = \"127.0.0.1:{port}\"").await;
    let url = r.url.clone();
    let (named, loopback) = tokio::task::spawn_blocking(move || {
        let port = url.rsplit(':').next().unwrap().to_string();
        let addr = format!("127.0.0.1:{port}");
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: attacker.example\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        (out, get(&url, "/", "").0)
    })
    .await
    .unwrap();
    assert!(named.starts_with("HTTP/1.1 403"), "{named}");
    assert!(named.contains("loopback only"), "{named}");
    assert_eq!(loopback, 200);
}

#[test]
fn a_page_beyond_loopback_without_a_password_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        "[history]\nenabled = false\n[web]\nlisten = \"0.0.0.0:8080\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(common::gateway::BIN)
        .args(["check", "-c"])
        .arg(&path)
        .env_remove("FIELDBRIDGE_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "config.toml:4:10: web.listen: a page on 0.0.0.0 (not loopback) needs password_file"
        ),
        "{err}"
    );
}
