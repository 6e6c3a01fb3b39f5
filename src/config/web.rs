//! `[web]`: the commissioning page (README "The commissioning page"). Absent: no listener at
//! all.

use std::net::SocketAddr;

use super::extract::{Extractor, Section};
use super::*;

impl Extractor<'_> {
    pub(super) fn web(&mut self, s: &Section) -> WebConfig {
        self.keys(s, &["listen", "password_file", "allow_writes"]);
        let listen = match self.text(s, "listen") {
            Some(text) => match text.parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    self.error_at(
                        &s.key("listen"),
                        format!("invalid address \"{text}\"; expected IP:PORT, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\""),
                    );
                    default_listen()
                }
            },
            None => default_listen(),
        };
        let password_file = self.text(s, "password_file").map(PathBuf::from);
        if !listen.ip().is_loopback() && password_file.is_none() {
            self.error(
                self.span_of(&s.key("listen")),
                &s.key("listen"),
                format!(
                    "a page on {} (not loopback) needs password_file: it can write registers and send commands to the devices of anyone on that network",
                    listen.ip()
                ),
            );
        }
        WebConfig {
            listen,
            password_file,
            allow_writes: self.boolean(s, "allow_writes").unwrap_or(false),
        }
    }
}

/// Where the page listens unless `listen` says otherwise: loopback only.
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
