//! A real headless browser for the commissioning page: Debian's Chromium driven through its
//! chromedriver (WebDriver) on a free loopback port, one per test, with a profile of its own.
//! Missing, under CI it is a failing test with the reason; elsewhere a skip nobody can miss.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};

use super::mosquitto::free_port;

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// `None` after a loud message when the browser is not installed (a failure under CI).
pub fn available(test: &str) -> Option<()> {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return Some(());
    }
    let why = format!(
        "{test}: {} missing; `scripts/setup.sh --tests` installs Debian's chromium and chromium-driver",
        missing.join(" and ")
    );
    super::cannot_run(&why);
    None
}

/// A chromedriver and one browser session on it.
pub struct Browser {
    driver: Child,
    _profile: tempfile::TempDir,
    pub client: Client,
}

impl Browser {
    pub async fn start() -> Browser {
        let port = free_port();
        let mut driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let listening =
            super::poll_async(Duration::from_secs(20), Duration::from_millis(50), || {
                if let Ok(Some(status)) = driver.try_wait() {
                    panic!("chromedriver exited: {status}");
                }
                std::net::TcpStream::connect(("127.0.0.1", port)).ok()
            })
            .await;
        assert!(listening.is_some(), "chromedriver did not listen on {port}");
        let profile = tempfile::tempdir().expect("profile dir");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--disable-quic",
                    "--window-size=1100,1300",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a WebDriver session in headless Chromium");
        Browser {
            driver,
            _profile: profile,
            client,
        }
    }

    /// The text of the first element matching `css`, or "" when there is none.
    pub async fn text(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Waits until the text of `css` satisfies `pred`; returns it.
    pub async fn wait_text(
        &self,
        css: &str,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> String {
        let mut last = String::new();
        let got = super::poll_queried(timeout, Duration::from_millis(100), async || {
            last = self.text(css).await;
            pred(&last).then(|| last.clone())
        })
        .await;
        got.unwrap_or_else(|| panic!("{css} never satisfied the condition; it says {last:?}"))
    }

    /// Runs `js` in the page and returns its value.
    pub async fn eval(&self, js: &str) -> serde_json::Value {
        self.client
            .execute(js, Vec::new())
            .await
            .unwrap_or(serde_json::Value::Null)
    }

    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Replaces what an input holds.
    pub async fn fill(&self, css: &str, text: &str) {
        let e = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"));
        e.clear().await.ok();
        e.send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// A screenshot of the page, written to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(path, png).expect("write screenshot");
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
