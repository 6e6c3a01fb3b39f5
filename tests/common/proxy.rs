//! A TCP proxy the test controls, in front of a real server (mosquitto, PostgreSQL): it can
//! swallow the client's bytes (they stay "in flight" forever), cut every connection, refuse new
//! ones as if the server were down, cut the link at the moment the server's answer carries a
//! given byte pattern (an answer lost after the server acted on the request), and hold back the
//! server's first answer on each connection (a slow link).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Shared {
    freeze: AtomicBool,
    refuse: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
    /// Armed: the next server→client chunk containing these bytes is dropped and the link cut.
    trip: Mutex<Option<Vec<u8>>>,
    tripped: AtomicU64,
    first_reply_delay: Mutex<Option<Duration>>,
    connections: AtomicU64,
}

impl Shared {
    fn cut(&self) {
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

pub struct Proxy {
    pub port: u16,
    /// Client→server bytes are swallowed while set.
    pub freeze: Arc<AtomicBool>,
    /// New connections are closed at once, as if the server were down.
    pub refuse: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

impl Proxy {
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let freeze = Arc::new(AtomicBool::new(false));
        let refuse = Arc::new(AtomicBool::new(false));
        let (s, f, r) = (shared.clone(), freeze.clone(), refuse.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                if r.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                s.connections.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                s.conns.lock().unwrap().push(client.try_clone().unwrap());
                s.conns.lock().unwrap().push(server.try_clone().unwrap());
                pipe(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    Some(f.clone()),
                    None,
                );
                pipe(server, client, None, Some(s.clone()));
            }
        });
        Proxy {
            port,
            freeze,
            refuse,
            shared,
        }
    }

    /// Cuts every connection open now.
    pub fn cut(&self) {
        self.shared.cut();
    }

    /// The next answer from the server that contains `pattern` never reaches the client: it is
    /// dropped and every connection cut.
    pub fn cut_on_reply(&self, pattern: &[u8]) {
        *self.shared.trip.lock().unwrap() = Some(pattern.to_vec());
    }

    /// From now on, the server's first bytes on each new connection arrive `delay` late.
    pub fn delay_first_reply(&self, delay: Duration) {
        *self.shared.first_reply_delay.lock().unwrap() = Some(delay);
    }

    /// Connections made through the proxy (refused ones not counted).
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// How many times `cut_on_reply` has fired.
    pub fn tripped(&self) -> u64 {
        self.shared.tripped.load(Ordering::SeqCst)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    freeze: Option<Arc<AtomicBool>>,
    // Set on the server→client side.
    trip: Option<Arc<Shared>>,
) {
    let mut delay = trip
        .as_ref()
        .and_then(|s| *s.first_reply_delay.lock().unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Some(d) = delay.take() {
                // The server's first reply held back for `delay_first_reply`'s duration: the
                // slow answer is what the test is about.
                std::thread::sleep(d);
            }
            if freeze.as_ref().is_some_and(|f| f.load(Ordering::SeqCst)) {
                continue; // swallowed: the bytes are "in flight" forever
            }
            if let Some(shared) = &trip {
                let mut armed = shared.trip.lock().unwrap();
                if armed.as_ref().is_some_and(|p| contains(&buf[..n], p)) {
                    *armed = None;
                    drop(armed);
                    shared.tripped.fetch_add(1, Ordering::SeqCst);
                    shared.cut();
                    break;
                }
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}
