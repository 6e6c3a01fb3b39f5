//! A booted systemd for tests, in the spirit of Debian's autopkgtest: a Debian bookworm root
//! (debootstrap, minbase + systemd) kept between runs outside the repository, booted with
//! `systemd-nspawn --boot` on a throwaway overlay, so every container starts from the same
//! clean root. The machine running the tests need not run systemd itself:
//! the container is not registered (`--register=no`) and is driven with `nsenter` into its
//! PID 1's namespaces. It has its own network namespace holding only loopback: no broker, no
//! device and no other test is reachable from it unless a test puts it there.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The packages of the root beyond minbase: a booting systemd and what the .deb depends on.
const PACKAGES: &str = "systemd,systemd-sysv,dbus,adduser";
/// The root's name in the cache; a new name when `PACKAGES` changes builds a new root.
const ROOT_NAME: &str = "bookworm-systemd-1";

/// Says `text` on the terminal even when the test harness captures output (a skipped test
/// must say so loudly, and a passing test's `eprintln!` is never shown).
pub fn shout(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "\n*** {text}\n");
}

/// Why this machine cannot boot a container, if it cannot.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (systemd-nspawn, debootstrap)".into());
    }
    for (tool, package) in [
        ("systemd-nspawn", "systemd-container"),
        ("debootstrap", "debootstrap"),
        ("nsenter", "util-linux"),
    ] {
        if !super::deb::has(tool, &["--version"]) {
            return Some(format!(
                "no {tool} (Debian package {package}; scripts/setup.sh --tests installs it)"
            ));
        }
    }
    None
}

/// The folder of cached roots: `FIELDBRIDGE_TEST_ROOTS`, else `/var/cache/fieldbridge-tests`.
fn roots_dir() -> PathBuf {
    std::env::var_os("FIELDBRIDGE_TEST_ROOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/fieldbridge-tests"))
}

/// The Debian mirror this machine's apt uses (the only network it may have).
fn mirror() -> String {
    let sources = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources")
        .unwrap_or_default()
        + &std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    sources
        .lines()
        .find_map(|l| {
            let l = l.trim();
            l.strip_prefix("URIs:")
                .map(|u| u.split_whitespace().next().unwrap_or("").to_string())
                .or_else(|| {
                    l.strip_prefix("deb ")
                        .and_then(|r| r.split_whitespace().find(|w| w.starts_with("http")))
                        .map(str::to_string)
                })
        })
        .filter(|u| u.starts_with("http") && !u.contains("security"))
        .unwrap_or_else(|| "http://deb.debian.org/debian".into())
}

/// The cached root, built (about two minutes) when missing. Several test processes (other
/// checkouts on the same machine) may ask at once: one builds under a lock, into a new
/// folder renamed into place when complete, and the others wait for it.
pub fn cached_root() -> Result<PathBuf, String> {
    let dir = roots_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let lock = File::create(dir.join(".lock")).map_err(|e| e.to_string())?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("lock {}: {e}", dir.display()))?;
    let root = dir.join(ROOT_NAME);
    if root.join("usr/lib/systemd/systemd").exists() {
        return Ok(root);
    }
    let new = dir.join(format!("{ROOT_NAME}.new"));
    let _ = std::fs::remove_dir_all(&new);
    shout(&format!(
        "booted tests: building the Debian root {} with debootstrap (once; about 2 min)",
        root.display()
    ));
    let log = dir.join(format!("{ROOT_NAME}.log"));
    let o = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={PACKAGES}"),
            "bookworm",
        ])
        .arg(&new)
        .arg(mirror())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("debootstrap: {e}"))?;
    let _ = std::fs::write(&log, [o.stdout.as_slice(), o.stderr.as_slice()].concat());
    if !o.status.success() {
        return Err(format!(
            "debootstrap failed (log: {}):\n{}",
            log.display(),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    // debootstrap copies the build machine's name; each container takes its own.
    let _ = std::fs::remove_file(new.join("etc/hostname"));
    std::fs::rename(&new, &root).map_err(|e| e.to_string())?;
    Ok(root)
}

/// A bind mount of a host path into the container.
pub struct Bind<'a> {
    pub host: &'a Path,
    pub guest: &'a str,
    pub read_only: bool,
}

/// A booted container; powered off on drop.
pub struct Container {
    /// Its machine name, which is also its host name.
    pub name: String,
    nspawn: Child,
    pid1: i32,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// The process whose parent is `parent`, if any.
fn child_of(parent: u32) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let ppid: u32 = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        (ppid == parent).then_some(pid)
    })
}

impl Container {
    /// Boots `root` as machine `fb-<pid>-<name>` (unique among concurrent test runs), with its
    /// own loopback-only network, and waits until systemd has finished booting.
    pub fn boot(root: &Path, name: &str, binds: &[Bind]) -> Result<Container, String> {
        let name = format!("fb-{}-{name}", std::process::id());
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let log = dir.path().join("nspawn.log");
        let out = File::create(&log).map_err(|e| e.to_string())?;
        let mut cmd = Command::new("systemd-nspawn");
        cmd.args([
            "--boot",
            "--register=no",
            "--keep-unit",
            "--volatile=overlay",
            "--private-network",
            "--console=passive",
            "--quiet",
        ])
        .arg(format!("--directory={}", root.display()))
        .arg(format!("--machine={name}"))
        .arg(format!("--hostname={name}"));
        for b in binds {
            let flag = if b.read_only { "--bind-ro" } else { "--bind" };
            cmd.arg(format!("{flag}={}:{}", b.host.display(), b.guest));
        }
        let nspawn = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|e| e.to_string())?)
            .stderr(out)
            .spawn()
            .map_err(|e| format!("systemd-nspawn: {e}"))?;
        let mut c = Container {
            name,
            pid1: 0,
            nspawn,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(pid) = child_of(c.nspawn.id()) {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() == "systemd" {
                    c.pid1 = pid;
                    break;
                }
            }
            if Instant::now() > deadline || c.nspawn.try_wait().ok().flatten().is_some() {
                return Err(format!("systemd-nspawn did not boot:\n{}", c.nspawn_log()));
            }
            // The poll interval while PID 1 comes up in the container.
            std::thread::sleep(Duration::from_millis(50));
        }
        // Until the boot is finished (or 90 s): "running", or "degraded" when a unit failed.
        // Until PID 1 has made /run/systemd/system and its socket, systemctl says "offline" or
        // nothing at once.
        let deadline = Instant::now() + Duration::from_secs(90);
        let state = loop {
            let o = c.run(&["timeout", "90", "systemctl", "is-system-running", "--wait"]);
            let state = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if !matches!(state.as_str(), "" | "offline") || Instant::now() > deadline {
                break state;
            }
            // The poll interval while PID 1 makes its socket (systemctl answers at once until).
            std::thread::sleep(Duration::from_millis(100));
        };
        match state.as_str() {
            "running" => {}
            // A boot unit that failed is no reason to stop: under cgroup v1 one sometimes
            // loses a race for its cgroup ("Failed at step CGROUP"). Said, not hidden.
            "degraded" => {
                let failed = c.sh("systemctl --failed --no-legend --plain");
                shout(&format!(
                    "{}: booted degraded, failed units:\n{}",
                    c.name,
                    String::from_utf8_lossy(&failed.stdout).trim_end()
                ));
            }
            _ => {
                let errors = c.sh("journalctl -b -p err -o cat");
                return Err(format!(
                    "the container's systemd is {state:?}:\n{}",
                    String::from_utf8_lossy(&errors.stdout)
                ));
            }
        }
        Ok(c)
    }

    fn nspawn_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `args` inside, as root, with a clean environment.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg("-t")
            .arg(self.pid1.to_string())
            .args(["-a", "/usr/bin/env", "-i"])
            .args([
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG=C.UTF-8",
                "SYSTEMD_COLORS=0",
                "SYSTEMD_PAGER=",
                "DEBIAN_FRONTEND=noninteractive",
            ])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("nsenter")
    }

    /// Runs a shell script inside.
    pub fn sh(&self, script: &str) -> Output {
        self.run(&["/bin/sh", "-c", script])
    }

    /// Runs a shell script inside; it must succeed. Returns its stdout.
    pub fn ok(&self, script: &str) -> String {
        self.succeeded(script, self.sh(script))
    }

    /// `o`, the output of `script`, if it succeeded; else a panic with the journal's end.
    fn succeeded(&self, script: &str, o: Output) -> String {
        if !o.status.success() {
            let journal = self.sh("journalctl -n 40 --no-pager");
            panic!(
                "in {}: `{script}` failed ({}):\n{}{}\nthe journal's last lines:\n{}",
                self.name,
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
                String::from_utf8_lossy(&journal.stdout)
            );
        }
        String::from_utf8_lossy(&o.stdout).to_string()
    }

    /// `systemctl ARGS`, which must succeed. Under cgroup v1 in a container, systemd now and
    /// then fails to move a new process into its unit's cgroup ("Failed at step CGROUP", seen
    /// on boot units too): that, and only that, is said and tried once more.
    pub fn systemctl(&self, args: &str) -> String {
        let script = format!("systemctl {args}");
        let o = self.sh(&script);
        if !o.status.success()
            && self
                .journal(&["-n", "20"])
                .contains("Failed at step CGROUP")
        {
            shout(&format!(
                "{}: `{script}` lost a race for its cgroup; once more",
                self.name
            ));
            return self.ok(&script);
        }
        self.succeeded(&script, o)
    }

    /// The host's path of `path` inside the container (through its PID 1's root).
    pub fn path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/root/{}",
            self.pid1,
            path.trim_start_matches('/')
        ))
    }

    /// A TCP listener on the container's loopback, made by a thread that joins the container's
    /// network namespace: the socket stays there, reachable only from inside.
    pub fn listen_tcp(&self) -> std::net::TcpListener {
        let ns = File::open(format!("/proc/{}/ns/net", self.pid1)).unwrap();
        std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.set_nonblocking(true).unwrap();
            l
        })
        .join()
        .unwrap()
    }

    /// One property of a unit (`systemctl show -p`).
    pub fn show(&self, unit: &str, property: &str) -> String {
        let o = self.run(&["systemctl", "show", unit, "-p", property, "--value"]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// `journalctl --no-pager -o cat ARGS`: the messages only.
    pub fn journal(&self, args: &[&str]) -> String {
        let mut all = vec!["journalctl", "--no-pager", "-o", "cat"];
        all.extend_from_slice(args);
        String::from_utf8_lossy(&self.run(&all).stdout).to_string()
    }

    /// The journal's cursor now: `--after-cursor` then shows only what came later.
    pub fn cursor(&self) -> String {
        let o = self.run(&["journalctl", "-n", "0", "--show-cursor", "--no-pager"]);
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("-- cursor: "))
            .unwrap_or_else(|| panic!("no cursor in {}", self.name))
            .to_string()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SIGTERM: nspawn asks the container's systemd to power off.
        let nspawn = nix::unistd::Pid::from_raw(self.nspawn.id() as i32);
        let _ = nix::sys::signal::kill(nspawn, nix::sys::signal::Signal::SIGTERM);
        let nspawn = &mut self.nspawn;
        if super::poll(Duration::from_secs(20), Duration::from_millis(100), || {
            nspawn.try_wait().ok().flatten()
        })
        .is_some()
        {
            return;
        }
        // Killing PID 1 ends every process of the container.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid1),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

/// Polls `f` every 200 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub fn eventually<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    super::poll(timeout, Duration::from_millis(200), f)
        .unwrap_or_else(|| panic!("timed out after {timeout:?}: {what}"))
}
