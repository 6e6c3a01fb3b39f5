//! An sd_notify socket for tests: what the gateway tells systemd, collected.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct NotifySocket {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
    messages: Arc<Mutex<Vec<String>>>,
}

impl NotifySocket {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                sink.lock()
                    .unwrap()
                    .extend(text.lines().map(str::to_string));
            }
        });
        NotifySocket {
            path,
            _dir: dir,
            messages,
        }
    }

    pub fn messages(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits for a line like `READY=1`.
    pub fn wait_for(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> Option<String> {
        super::poll(timeout, Duration::from_millis(20), || {
            self.messages().into_iter().find(|m| pred(m))
        })
    }
}
