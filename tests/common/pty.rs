//! A serial cable stand-in: two pseudo-terminals joined by socat. The gateway opens `path`, the
//! test plays the device on `device_path`. `unplug` kills socat, as pulling the USB adapter.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct SocatPair {
    pub path: PathBuf,
    pub device_path: PathBuf,
    child: Option<Child>,
}

impl SocatPair {
    pub fn new(dir: &Path) -> Self {
        let mut p = SocatPair {
            path: dir.join("ttyGW"),
            device_path: dir.join("ttyDEV"),
            child: None,
        };
        p.plug();
        p
    }

    pub fn plug(&mut self) {
        let child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", self.path.display()))
            .arg(format!(
                "pty,raw,echo=0,link={}",
                self.device_path.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat (scripts/setup.sh installs it)");
        self.child = Some(child);
        super::until_blocking(
            Duration::from_secs(5),
            || self.path.exists() && self.device_path.exists(),
            || "socat made no ptys".into(),
        );
    }

    pub fn unplug(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Gone with socat, or given up on after 5 s (a replug makes it anew either way).
        let _ = super::poll(Duration::from_secs(5), Duration::from_millis(10), || {
            (!self.path.exists()).then_some(())
        });
    }

    /// The device's end of the cable.
    pub fn device(&self) -> tokio_serial::SerialStream {
        tokio_serial::SerialStream::open(&tokio_serial::new(
            self.device_path.display().to_string(),
            115_200,
        ))
        .expect("open the device side")
    }

    /// Waits until this process holds the gateway's end open (an in-process gateway opened its
    /// port): what the device says before that is lost, as on a real line.
    pub async fn opened(&self) {
        super::until(
            Duration::from_secs(10),
            || {
                std::fs::canonicalize(&self.path).is_ok_and(|end| {
                    std::fs::read_dir("/proc/self/fd").is_ok_and(|fds| {
                        fds.flatten()
                            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == end))
                    })
                })
            },
            || format!("the gateway never opened {}", self.path.display()),
        )
        .await;
    }

    pub fn path_str(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for SocatPair {
    fn drop(&mut self) {
        self.unplug();
    }
}
