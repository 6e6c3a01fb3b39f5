//! Home Assistant for tests: the real `homeassistant` from PyPI in its own venv (made by
//! `scripts/setup.sh --tests`), its template engine for rendering our templates, and a running
//! instance driven through its REST API.
//!
//! The venv is `$FIELDBRIDGE_HA_VENV`, else `${XDG_CACHE_HOME:-$HOME/.cache}/fieldbridge/ha-<version>`.
//! When it is missing the tests fail and say how to make it; `FIELDBRIDGE_SKIP_HA=1` skips them
//! instead, loudly (CI never sets it).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};

/// The Home Assistant the tests prove against (pinned in scripts/setup.sh).
pub const VERSION: &str = "2025.4.4";
/// Set to 1 to skip the Home Assistant tests.
pub const SKIP_ENV: &str = "FIELDBRIDGE_SKIP_HA";

fn default_venv() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
        });
    cache.join("fieldbridge").join(format!("ha-{VERSION}"))
}

/// The venv with Home Assistant, or `None` (after a loud message) when `FIELDBRIDGE_SKIP_HA=1`.
/// Panics with the remedy when it is missing.
pub fn venv(test: &str) -> Option<PathBuf> {
    if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        super::cannot_run(&format!(
            "{test}: {SKIP_ENV}=1 says the Home Assistant tests are not wanted"
        ));
        return None;
    }
    let venv = std::env::var_os("FIELDBRIDGE_HA_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(default_venv);
    assert!(
        venv.join("bin/hass").exists() && venv.join("bin/python").exists(),
        "{test} needs Home Assistant {VERSION} in a venv at {}: run ./scripts/setup.sh --tests \
         (it makes it), or point FIELDBRIDGE_HA_VENV at one; {SKIP_ENV}=1 skips these tests",
        venv.display()
    );
    Some(venv)
}

/// Devices with every component and the point names that trip Jinja: syntax (`3phase`,
/// `l1-power`) and dict methods (`values`, `items`, `keys`, `get`, `update`, `pop`, `copy`); a
/// point whose read the simulator refuses (`broken`), a device nobody answers for (`dead`), a
/// serial device with `send` actions. Buses `plc` (Modbus TCP) and `usb` (serial).
pub const EVERY_COMPONENT: &str = r#"
[devices.meter]
bus = "plc"
unit = 1
poll = "500ms"
name = "Meter"
manufacturer = "Acme"
model = "M-3"
[devices.meter.points.3phase]
register = "input:0"
[devices.meter.points.l1-power]
register = "input:1"
type = "i16"
scale = 0.1
unit = "W"
device_class = "power"
[devices.meter.points.values]
register = "input:2"
[devices.meter.points.items]
register = "input:3"
[devices.meter.points.keys]
register = "input:4"
[devices.meter.points.get]
register = "input:5"
[devices.meter.points.energy]
register = "input:6"
type = "u32"
scale = 0.01
unit = "kWh"
device_class = "energy"
[devices.meter.points.phase]
register = "input:8"
map = { 0 = "idle", 1 = "run" }
[devices.meter.points.serial]
register = "holding:30"
type = "string"
length = 2
[devices.meter.points.alarm]
register = "discrete:0"
device_class = "problem"
[devices.meter.points.update]
register = "discrete:1"
[devices.meter.points.broken]
register = "coil:40"
[devices.meter.points.setpoint]
register = "holding:10"
scale = 0.5
writable = true
min = 5
max = 80
unit = "°C"
device_class = "temperature"
[devices.meter.points.level]
register = "holding:11"
writable = true
[devices.meter.points.pop]
register = "holding:12"
type = "i16"
writable = true
entity_category = "config"
[devices.meter.points.copy]
register = "coil:0"
writable = true
icon = "mdi:content-copy"
[devices.meter.points.state]
register = "coil:1"
writable = true
map = { 0 = "off", 1 = "on" }
[devices.meter.points.program]
register = "holding:13"
writable = true
map = { 0 = "eco", 1 = 'say "hi"', 2 = "it's" }
[devices.meter.actions.boost]
set = { program = "eco" }
[devices.dead]
bus = "plc"
unit = 2
poll = "500ms"
offline_after = 2
[devices.dead.points.temp]
register = "input:0"
[devices.weather]
bus = "usb"
[devices.weather.points.temperature]
field = "temp"
unit = "°C"
device_class = "temperature"
[devices.weather.points.humidity]
field = "hum"
unit = "%"
device_class = "humidity"
[devices.weather.actions.led]
send = "LED {value}"
expect = "^OK"
[devices.weather.actions.beep]
send = "BEEP"
"#;

/// Every retained discovery config under `homeassistant/` whose payload names gateway `id`
/// (ownership as the gateway itself reads it), by topic.
pub fn ours_on_broker(port: u16, id: &str) -> std::collections::BTreeMap<String, Json> {
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", "homeassistant/#", "-v", "-W", "2", "--retained-only"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (topic, payload) = l.split_once(' ')?;
            let json: Json = serde_json::from_str(payload).ok()?;
            (fieldbridge::ha::owner::owner(&json) == Some(id)).then(|| (topic.to_string(), json))
        })
        .collect()
}

/// The discovery topics of a config text (a `{dir}` placeholder allowed), sorted.
pub fn discovery_topics(config_text: &str) -> Vec<String> {
    let text = config_text.replace("{dir}", "/tmp");
    let config = fieldbridge::config::parse(&text, Path::new("c.toml")).unwrap();
    let topics = fieldbridge::topics::Topics::new(&config);
    let mut out: Vec<String> = fieldbridge::ha::discovery::all(&config, &topics)
        .into_iter()
        .map(|m| m.topic)
        .collect();
    out.sort();
    out
}

/// What Home Assistant's template engine made of one template.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub output: Option<String>,
    /// Lines Home Assistant would log while rendering it.
    pub warnings: Vec<String>,
    pub error: Option<String>,
}

/// One template to render: a state template with the MQTT payload it receives, or a command
/// template with its `value`.
#[derive(Debug, Clone)]
pub enum Render {
    State { template: String, payload: String },
    Command { template: String, value: Json },
}

/// Renders templates as Home Assistant's MQTT integration does, in one Python process.
pub fn render(venv: &Path, items: &[Render]) -> Vec<Rendered> {
    let input: Vec<Json> = items
        .iter()
        .map(|r| match r {
            Render::State { template, payload } => {
                json!({"template": template, "payload": payload})
            }
            Render::Command { template, value } => json!({"template": template, "value": value}),
        })
        .collect();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ha/render_templates.py");
    let mut child = Command::new(venv.join("bin/python"))
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the venv's python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(Json::from(input).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "render_templates.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Json> = serde_json::from_slice(&out.stdout).unwrap();
    results
        .into_iter()
        .map(|r| Rendered {
            output: r["output"].as_str().map(str::to_string),
            warnings: r["warnings"]
                .as_array()
                .map(|w| {
                    w.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            error: r["error"].as_str().map(str::to_string),
        })
        .collect()
}

/// A running Home Assistant with the MQTT integration set up against `mqtt_port`, through its
/// REST API as a user would through the UI: onboarding gives the token, the config flow makes
/// the MQTT entry. Killed on drop.
pub struct HomeAssistant {
    child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
    token: String,
    pub mqtt_entry: String,
    started: Instant,
}

/// An HTTP answer: status and body.
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Json {
        serde_json::from_str(&self.body).unwrap_or(Json::Null)
    }
}

fn curl(method: &str, url: &str, token: Option<&str>, body: Option<(&str, &str)>) -> Answer {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-S",
        "--max-time",
        "60",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if let Some((content_type, data)) = body {
        cmd.args([
            "-H",
            &format!("Content-Type: {content_type}"),
            "--data-binary",
            data,
        ]);
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("curl (scripts/setup.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    Answer {
        status: code.trim().parse().unwrap_or(0),
        body: body.to_string(),
    }
}

impl HomeAssistant {
    /// Starts Home Assistant from `venv` with a fresh config dir, onboards a user and sets up
    /// MQTT against the broker on `mqtt_port` (discovery on, prefix `homeassistant`).
    pub fn start(venv: &Path, mqtt_port: u16) -> HomeAssistant {
        let dir = tempfile::tempdir().unwrap();
        let port = super::mosquitto::free_port();
        // No `default_config`: only what the test needs, so its start is quick and its log
        // carries nothing but what concerns us. The frontend is a default integration.
        std::fs::write(
            dir.path().join("configuration.yaml"),
            format!(
                "homeassistant:\n  name: fieldbridge test\n  latitude: 52.0\n  longitude: 4.0\n  elevation: 0\n  unit_system: metric\n  time_zone: UTC\n  country: NL\n  currency: EUR\nhttp:\n  server_host: 127.0.0.1\n  server_port: {port}\nlogger:\n  default: info\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("stdout.log")).unwrap();
        // --skip-pip: the venv has every requirement; Home Assistant must not reach for PyPI.
        let child = Command::new(venv.join("bin/hass"))
            .args(["--skip-pip", "-c"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start hass");
        let mut ha = HomeAssistant {
            child,
            dir,
            port,
            token: String::new(),
            mqtt_entry: String::new(),
            started: Instant::now(),
        };
        let answered = super::poll(Duration::from_secs(240), Duration::from_millis(250), || {
            if let Ok(Some(status)) = ha.child.try_wait() {
                panic!("hass exited: {status}\n{}", ha.log());
            }
            (ha.get_anon("/api/onboarding").status == 200).then_some(())
        });
        assert!(answered.is_some(), "hass did not answer\n{}", ha.log());
        ha.onboard();
        ha.setup_mqtt(mqtt_port);
        eprintln!(
            "home assistant {VERSION} up and MQTT set up in {:.1} s",
            ha.started.elapsed().as_secs_f64()
        );
        ha
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn get_anon(&self, path: &str) -> Answer {
        curl("GET", &self.url(path), None, None)
    }

    pub fn get(&self, path: &str) -> Answer {
        curl("GET", &self.url(path), Some(&self.token), None)
    }

    pub fn post(&self, path: &str, body: &Json) -> Answer {
        curl(
            "POST",
            &self.url(path),
            Some(&self.token),
            Some(("application/json", &body.to_string())),
        )
    }

    fn onboard(&mut self) {
        let client = self.url("/");
        let user = curl(
            "POST",
            &self.url("/api/onboarding/users"),
            None,
            Some((
                "application/json",
                &json!({"client_id": client, "name": "Test", "username": "test",
                        "password": "fieldbridge-test-1", "language": "en"})
                .to_string(),
            )),
        );
        assert_eq!(user.status, 200, "onboarding: {}", user.body);
        let code = user.json()["auth_code"].as_str().unwrap().to_string();
        let token = curl(
            "POST",
            &self.url("/auth/token"),
            None,
            Some((
                "application/x-www-form-urlencoded",
                &format!("grant_type=authorization_code&code={code}&client_id={client}"),
            )),
        );
        assert_eq!(token.status, 200, "token: {}", token.body);
        self.token = token.json()["access_token"].as_str().unwrap().to_string();
    }

    fn setup_mqtt(&mut self, mqtt_port: u16) {
        let flow = self.post(
            "/api/config/config_entries/flow",
            &json!({"handler": "mqtt", "show_advanced_options": false}),
        );
        assert_eq!(flow.status, 200, "mqtt flow: {}", flow.body);
        let id = flow.json()["flow_id"].as_str().unwrap().to_string();
        let done = self.post(
            &format!("/api/config/config_entries/flow/{id}"),
            &json!({"broker": "127.0.0.1", "port": mqtt_port}),
        );
        let j = done.json();
        assert_eq!(j["type"], "create_entry", "mqtt flow: {}", done.body);
        assert_eq!(j["result"]["state"], "loaded", "mqtt entry: {}", done.body);
        self.mqtt_entry = j["result"]["entry_id"].as_str().unwrap().to_string();
    }

    /// An entity's state object, if Home Assistant has the entity.
    pub fn state(&self, entity_id: &str) -> Option<Json> {
        let a = self.get(&format!("/api/states/{entity_id}"));
        (a.status == 200).then(|| a.json())
    }

    /// Waits until `entity_id`'s state satisfies `pred`; returns the last state seen.
    pub fn wait_state(
        &self,
        entity_id: &str,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<String, String> {
        let mut last = String::from("<no entity>");
        super::poll(timeout, Duration::from_millis(250), || {
            let s = self.state(entity_id)?;
            last = s["state"].as_str().unwrap_or_default().to_string();
            pred(&last).then(|| last.clone())
        })
        .ok_or(last)
    }

    /// Calls a service, as the UI does.
    pub fn call(&self, domain: &str, service: &str, data: Json) {
        let a = self.post(&format!("/api/services/{domain}/{service}"), &data);
        assert_eq!(a.status, 200, "{domain}.{service} {data}: {}", a.body);
    }

    /// Renders a template inside Home Assistant (the registries are there: `device_id`,
    /// `device_attr`, `integration_entities`).
    pub fn template(&self, template: &str) -> String {
        let a = self.post("/api/template", &json!({ "template": template }));
        assert_eq!(a.status, 200, "template {template}: {}", a.body);
        a.body
    }

    /// Reloads the MQTT config entry (as "Reload" in the UI).
    pub fn reload_mqtt(&self) {
        let a = self.post(
            &format!(
                "/api/config/config_entries/entry/{}/reload",
                self.mqtt_entry
            ),
            &json!({}),
        );
        assert_eq!(a.status, 200, "reload: {}", a.body);
    }

    /// Home Assistant's log file so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("home-assistant.log")).unwrap_or_else(|_| {
            std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
        })
    }

    /// Log lines at WARNING or above from the MQTT integration and the entity platforms, or
    /// naming fieldbridge or one of `names` — what concerns our entities. Other lines (start-up
    /// noise of integrations in a network namespace) are returned second, for the report.
    pub fn problems(&self, names: &[&str]) -> (Vec<String>, Vec<String>) {
        let loggers = [
            "homeassistant.components.mqtt",
            "homeassistant.components.sensor",
            "homeassistant.components.binary_sensor",
            "homeassistant.components.number",
            "homeassistant.components.switch",
            "homeassistant.components.select",
            "homeassistant.components.button",
            "homeassistant.components.text",
            "homeassistant.helpers.template",
            "homeassistant.helpers.entity",
            "homeassistant.helpers.entity_platform",
            "homeassistant.helpers.entity_registry",
            "homeassistant.helpers.device_registry",
        ];
        let mut ours = Vec::new();
        let mut other = Vec::new();
        for line in self.log().lines() {
            if !(line.contains(" WARNING ")
                || line.contains(" ERROR ")
                || line.contains(" CRITICAL "))
            {
                continue;
            }
            let about_us = loggers.iter().any(|l| line.contains(&format!("[{l}")))
                || line.contains("fieldbridge")
                || names.iter().any(|n| line.contains(n));
            if about_us {
                ours.push(line.to_string());
            } else {
                other.push(line.to_string());
            }
        }
        (ours, other)
    }
}

impl Drop for HomeAssistant {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
