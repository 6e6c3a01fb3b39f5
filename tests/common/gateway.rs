//! Runs the real `fieldbridge` binary as a subprocess, for what only a process can show:
//! signals, exit codes, the last will after `kill -9`, sd_notify messages, log lines.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub const BIN: &str = env!("CARGO_BIN_EXE_fieldbridge");

/// A config for tests: the broker on `port`, history in `dir`, one Modbus TCP device (nothing
/// listens at its address; only its command topic matters here), plus `extra` TOML.
pub fn config_text(dir: &Path, port: u16, id: &str, extra_mqtt: &str) -> String {
    format!(
        r#"[gateway]
id = "{id}"
base_topic = "test"
location = "lab"

[mqtt]
url = "mqtt://127.0.0.1:{port}"
reconnect_min = "100ms"
reconnect_max = "1s"
keep_alive = "5s"
{extra_mqtt}

[history]
path = "{history}"

[buses.plc]
kind = "modbus-tcp"
address = "127.0.0.1:1"

[devices.lamp]
bus = "plc"
unit = 1
[devices.lamp.points.state]
register = "coil:0"
writable = true
"#,
        history = dir.join("history.db").display()
    )
}

/// A running `fieldbridge run`, killed on drop.
pub struct GatewayProcess {
    child: Child,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    log_path: PathBuf,
}

impl GatewayProcess {
    /// Writes `config` to a temp dir and starts `fieldbridge run -c` on it with `env`.
    pub fn spawn(config: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::spawn_in(dir, config, env)
    }

    pub fn spawn_in(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> Self {
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).expect("write config");
        let log_path = dir.path().join("stderr.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut cmd = Command::new(BIN);
        cmd.arg("run")
            .arg("-c")
            .arg(&config_path)
            .env_remove("FIELDBRIDGE_CONFIG")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("FIELDBRIDGE_MQTT_PASSWORD")
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn fieldbridge");
        GatewayProcess {
            child,
            dir,
            config_path,
            log_path,
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).expect("send signal");
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = &mut self.child;
        super::poll(timeout, Duration::from_millis(10), || {
            child.try_wait().expect("try_wait")
        })
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_log_count(needle, 1, timeout)
    }

    /// Waits until the log contains `needle` at least `n` times (the `n`th retry, reload…).
    pub fn wait_log_count(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        super::poll(timeout, Duration::from_millis(20), || {
            (self.log().matches(needle).count() >= n).then_some(())
        })
        .is_some()
    }

    /// CPU time used so far (user + system), in clock ticks (usually 10 ms).
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("read /proc/pid/stat");
        // Fields after the command name, which is in parentheses and may contain spaces.
        let after = &stat[stat.rfind(')').expect("stat format") + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the name.
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The gateway in this process: `fieldbridge run` on `config`, until the token is cancelled.
pub struct InProcess {
    pub dir: tempfile::TempDir,
    pub token: tokio_util::sync::CancellationToken,
    pub task: tokio::task::JoinHandle<u8>,
}

impl InProcess {
    pub async fn start(config: &str) -> InProcess {
        Self::start_in(tempfile::tempdir().expect("tempdir"), config).await
    }

    /// As `start`, in `dir` (which may already hold a history file).
    pub async fn start_in(dir: tempfile::TempDir, config: &str) -> InProcess {
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            config.replace("{dir}", &dir.path().display().to_string()),
        )
        .expect("write config");
        let gw = match fieldbridge::app::build(&path).await {
            Ok(g) => g,
            Err(e) => panic!("gateway did not build: {e}"),
        };
        let token = tokio_util::sync::CancellationToken::new();
        let t = token.clone();
        let task = tokio::spawn(async move { gw.run_until(t).await });
        InProcess { dir, token, task }
    }

    pub async fn stop(self) -> u8 {
        self.stop_keeping_dir().await.0
    }

    /// Stops the gateway and hands back its temp dir (history, config) for inspection.
    pub async fn stop_keeping_dir(self) -> (u8, tempfile::TempDir) {
        self.token.cancel();
        (self.task.await.expect("gateway task"), self.dir)
    }
}
