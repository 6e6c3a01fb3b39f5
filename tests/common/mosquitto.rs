//! A real mosquitto on a free loopback port, started by the test, killed and restarted on the
//! same port at will. Never the system broker on 1883.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 for a server the test starts (and may stop and start again).
///
/// Taken below the kernel's ephemeral range (32768-60999 on Linux), from a counter unique to
/// this process: an ephemeral port freed while a broker is down for a restart could be handed
/// to another test's broker or to any outgoing connection, and the restarted broker would fail
/// to bind while the gateway reconnected to someone else's. Checked free by binding it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Processes (test binaries, benches) start at different places in 20000-31999.
    let base = 20_000 + (std::process::id() % 120) as u16 * 100;
    for _ in 0..12_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % 12_000;
        let port = 20_000 + (base - 20_000 + n) % 12_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000-31999");
}

pub struct Mosquitto {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Mosquitto {
    /// Anonymous, no persistence.
    pub fn start() -> Self {
        Self::start_with("allow_anonymous true\n", None)
    }

    /// With extra config lines for the listener (auth, TLS). `port` reuses a port.
    pub fn start_with(extra: &str, port: Option<u16>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = port.unwrap_or_else(free_port);
        let conf = dir.path().join("mosquitto.conf");
        let text = format!(
            // `user root`: as root, mosquitto would otherwise drop to its own user and could not
            // read the temp dir's key and password files. Without root it has no effect.
            "user root\nset_tcp_nodelay true\nlistener {port} 127.0.0.1\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning\n{}",
            extra.replace("{dir}", &dir.path().display().to_string())
        );
        std::fs::write(&conf, text).expect("write mosquitto.conf");
        let mut m = Mosquitto {
            child: None,
            port,
            dir,
            conf,
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto (is it installed? scripts/setup.sh installs it)");
        let pid = child.id();
        self.child = Some(child);
        // Ours listening, not another broker on the port (ours would then exit, unable to bind).
        let up = super::poll(Duration::from_secs(10), Duration::from_millis(20), || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("mosquitto on port {} exited: {status}", self.port);
            }
            listening_on(pid, self.port).then_some(())
        });
        assert!(
            up.is_some(),
            "mosquitto did not listen on port {}",
            self.port
        );
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILL: the broker dies without a word, retained messages and sessions with it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops with SIGTERM — with `persistence true` the broker saves its retained messages and
    /// sessions — and starts again on the same port with the same config.
    pub fn restart_saving(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
        self.spawn();
    }

    /// Starts again on the same port with the same config.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One message a subscriber saw.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: String,
    pub retained: bool,
    /// When the subscriber read it.
    pub at: Instant,
}

/// A real subscriber: `mosquitto_sub` on a filter, every message kept.
pub struct Subscriber {
    child: Child,
    seen: Arc<Mutex<Vec<Msg>>>,
}

impl Subscriber {
    /// Subscribes to `filter` and returns once the subscription is live.
    pub fn connect(port: u16, filter: &str) -> Self {
        Self::connect_with(port, filter, &[])
    }

    pub fn connect_with(port: u16, filter: &str, args: &[&str]) -> Self {
        let probe = format!("probe/{}", free_port());
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args(["-t", filter, "-t", &probe])
            .args(["-F", "%r %t %p"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto_sub");
        let out = child.stdout.take().expect("stdout");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let mut parts = line.splitn(3, ' ');
                let retained = parts.next() == Some("1");
                let topic = parts.next().unwrap_or_default().to_string();
                let payload = parts.next().unwrap_or_default().to_string();
                sink.lock().unwrap().push(Msg {
                    topic,
                    payload,
                    retained,
                    at: Instant::now(),
                });
            }
        });
        let s = Subscriber { child, seen };
        // Live once its own probe comes back through the broker.
        let live = super::poll(Duration::from_secs(10), Duration::from_millis(50), || {
            publish(port, &probe, "probe", false);
            s.seen().iter().any(|m| m.topic == probe).then_some(())
        });
        assert!(live.is_some(), "subscriber did not come up");
        s
    }

    pub fn seen(&self) -> Vec<Msg> {
        self.seen.lock().unwrap().clone()
    }

    /// Messages on `topic` so far.
    pub fn on(&self, topic: &str) -> Vec<Msg> {
        self.seen()
            .into_iter()
            .filter(|m| m.topic == topic)
            .collect()
    }

    /// Waits for a message on `topic` whose payload satisfies `pred`.
    pub fn wait_for(
        &self,
        topic: &str,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<Msg> {
        super::poll(timeout, Duration::from_millis(20), || {
            self.seen()
                .into_iter()
                .find(|m| m.topic == topic && pred(&m.payload))
        })
    }

    /// Waits for the `n`th message (1-based) on `topic`.
    pub fn wait_nth(&self, topic: &str, n: usize, timeout: Duration) -> Option<Msg> {
        super::poll(timeout, Duration::from_millis(20), || {
            self.on(topic).into_iter().nth(n - 1)
        })
    }

    /// Forgets what was seen so far.
    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A publisher kept connected (`mosquitto_pub -l`): each `send` is one QoS 1 message on its
/// topic at once, without a process start, so a test can time what follows it.
pub struct LinePublisher {
    child: Child,
    stdin: std::process::ChildStdin,
}

/// Whether process `pid` holds a TCP socket in `state` whose `column` (1: local address,
/// 2: remote address) is 127.0.0.1:`port`: its sockets' inodes (`/proc/PID/fd`) looked up in
/// the kernel's table (`/proc/net/tcp`: addresses in hex, state 01 = ESTABLISHED,
/// 0A = LISTEN, inode in the tenth column).
fn tcp_socket(pid: u32, column: usize, port: u16, state: &str) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let inodes: Vec<String> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_string)
        })
        .collect();
    let address = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp").is_ok_and(|t| {
        t.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(column) == Some(&address.as_str())
                && f.get(3) == Some(&state)
                && f.get(9).is_some_and(|i| inodes.iter().any(|n| n == i))
        })
    })
}

/// Whether process `pid` holds an established TCP connection to 127.0.0.1:`port`.
fn connected_to(pid: u32, port: u16) -> bool {
    tcp_socket(pid, 2, port, "01")
}

/// Whether process `pid` listens on 127.0.0.1:`port`.
pub fn listening_on(pid: u32, port: u16) -> bool {
    tcp_socket(pid, 1, port, "0A")
}

impl LinePublisher {
    pub fn start(port: u16, topic: &str) -> Self {
        let mut child = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args(["-t", topic, "-l"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto_pub");
        let stdin = child.stdin.take().expect("stdin");
        // Connected before the first line is timed: its TCP connection to the broker is up
        // (the MQTT CONNECT and CONNACK follow on loopback within a millisecond).
        let pid = child.id();
        super::until_blocking(
            Duration::from_secs(10),
            || connected_to(pid, port),
            || "mosquitto_pub never connected".into(),
        );
        LinePublisher { child, stdin }
    }

    /// Publishes `payload` (one line); returns when it was handed over.
    pub fn send(&mut self, payload: &str) -> Instant {
        use std::io::Write;
        let at = Instant::now();
        writeln!(self.stdin, "{payload}").expect("write to mosquitto_pub");
        self.stdin.flush().expect("flush");
        at
    }
}

impl Drop for LinePublisher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `mosquitto_pub` one message (QoS 1).
pub fn publish(port: u16, topic: &str, payload: &str, retain: bool) {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", topic, "-m", payload]);
    if retain {
        cmd.arg("-r");
    }
    let _ = cmd.stderr(Stdio::null()).status();
}

/// The retained message on `topic` now, read by a fresh subscriber.
pub fn retained(port: u16, topic: &str) -> Option<String> {
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", topic, "-C", "1", "-W", "2", "--retained-only"])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Waits until the retained message on `topic` satisfies `pred`.
pub fn wait_retained(
    port: u16,
    topic: &str,
    pred: impl Fn(&str) -> bool,
    timeout: Duration,
) -> Option<String> {
    super::poll(timeout, Duration::from_millis(100), || {
        retained(port, topic).filter(|r| pred(r))
    })
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, made with the
/// openssl CLI (X.509 v3: rustls refuses v1 client certificates).
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    pub fn generate(dir: &Path, name: &str) -> Certs {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let run = |args: &[&str]| {
            let st = Command::new("openssl")
                .args(args)
                .current_dir(&d)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl");
            assert!(st.success(), "openssl {args:?}");
        };
        std::fs::write(
            d.join("server.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        std::fs::write(
            d.join("client.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} test CA"),
        ]);
        for who in ["server", "client"] {
            run(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{who}.key"),
                "-out",
                &format!("{who}.csr"),
                "-subj",
                &format!("/CN={who}"),
            ]);
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{who}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{who}.crt"),
                "-days",
                "2",
                "-extfile",
                &format!("{who}.ext"),
            ]);
        }
        Certs { dir: d }
    }

    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}
