//! Who may use the commissioning page: sessions (an HttpOnly, SameSite=Strict cookie with an
//! expiry), the CSRF token every state-changing request carries, and failed logins counted and
//! slowed down per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};

/// The session cookie's name.
pub const COOKIE: &str = "fieldbridge_session";
/// How long a session lasts without use.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; beyond, the least recently used is forgotten (a page that many
/// browsers have open at once is not what a gateway serves).
pub const SESSIONS_CAP: usize = 64;
/// Failed logins from one address within [`LOGIN_WINDOW`] before it is refused (429) until the
/// window ends.
pub const LOGIN_FAILURES: u32 = 5;
pub const LOGIN_WINDOW: Duration = Duration::from_secs(60);
/// Client addresses whose failures are remembered at most.
const LOGIN_CLIENTS_CAP: usize = 256;

/// One browser's session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Logged in (or no password is needed).
    pub authenticated: bool,
    /// What every state-changing request of this session must carry.
    pub csrf: String,
    last_used: Instant,
}

/// The sessions of the page.
#[derive(Default)]
pub struct Sessions {
    by_token: HashMap<String, Session>,
}

/// 32 random bytes in hex. `None` only if the system's random source fails.
pub fn token() -> Option<String> {
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Sessions {
    /// The live session of `token`, touched.
    pub fn get(&mut self, token: &str, now: Instant) -> Option<Session> {
        let s = self.by_token.get_mut(token)?;
        if now.duration_since(s.last_used) > SESSION_TTL {
            self.by_token.remove(token);
            return None;
        }
        s.last_used = now;
        Some(s.clone())
    }

    /// A new session; its token is returned with it.
    pub fn create(&mut self, authenticated: bool, now: Instant) -> Option<(String, Session)> {
        self.by_token
            .retain(|_, s| now.duration_since(s.last_used) <= SESSION_TTL);
        if self.by_token.len() >= SESSIONS_CAP {
            // Sessions not logged in go first: requests without a cookie, however many, cannot
            // push a logged-in user out.
            if let Some(oldest) = self
                .by_token
                .iter()
                .min_by_key(|(_, s)| (s.authenticated, s.last_used))
                .map(|(t, _)| t.clone())
            {
                self.by_token.remove(&oldest);
            }
        }
        let session = Session {
            authenticated,
            csrf: token()?,
            last_used: now,
        };
        let t = token()?;
        self.by_token.insert(t.clone(), session.clone());
        Some((t, session))
    }

    /// Forgets a session (logout, or a login replacing it).
    pub fn remove(&mut self, token: &str) {
        self.by_token.remove(token);
    }
}

/// The `Set-Cookie` value of a session.
pub fn cookie(token: &str) -> String {
    format!(
        "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_TTL.as_secs()
    )
}

/// The session token in a `Cookie` header.
pub fn from_cookie_header(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

/// Compares without an early exit, so the time taken does not tell how much of a guess was
/// right.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        let y = b.get(i % b.len().max(1)).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// Failed logins per client address.
#[derive(Default)]
pub struct Logins {
    failures: HashMap<IpAddr, (u32, Instant)>,
}

impl Logins {
    /// How long `ip` must wait before it may try again, if it is refused now.
    pub fn refused(&mut self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let (n, since) = *self.failures.get(&ip)?;
        let elapsed = now.duration_since(since);
        if elapsed > LOGIN_WINDOW {
            self.failures.remove(&ip);
            return None;
        }
        (n >= LOGIN_FAILURES).then(|| LOGIN_WINDOW - elapsed)
    }

    /// A failed login of `ip`; the count so far in its window.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) -> u32 {
        self.failures
            .retain(|_, (_, since)| now.duration_since(*since) <= LOGIN_WINDOW);
        if self.failures.len() >= LOGIN_CLIENTS_CAP && !self.failures.contains_key(&ip) {
            // Many addresses failing at once: count them together under the first one's
            // window rather than grow without bound.
            if let Some(k) = self.failures.keys().next().copied() {
                self.failures.remove(&k);
            }
        }
        let e = self.failures.entry(ip).or_insert((0, now));
        e.0 += 1;
        e.0
    }

    pub fn succeeded(&mut self, ip: IpAddr) {
        self.failures.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(same_secret(b"hunter2", b"hunter2"));
        assert!(!same_secret(b"hunter2", b"hunter3"));
        assert!(!same_secret(b"hunter2", b"hunter22"));
        assert!(!same_secret(b"", b"x"));
        assert!(same_secret(b"", b""));
    }

    #[test]
    fn sessions_expire_and_are_bounded() {
        let mut s = Sessions::default();
        let t0 = Instant::now();
        let (tok, session) = s.create(true, t0).unwrap();
        assert_eq!(tok.len(), 64);
        assert_ne!(session.csrf, tok);
        assert!(s.get(&tok, t0 + Duration::from_secs(60)).is_some());
        assert!(s.get(&tok, t0 + SESSION_TTL * 2).is_none());
        let (logged_in, _) = s.create(true, t0).unwrap();
        for _ in 0..SESSIONS_CAP * 3 {
            s.create(false, t0 + Duration::from_secs(1)).unwrap();
        }
        assert!(s.by_token.len() <= SESSIONS_CAP);
        assert!(
            s.get(&logged_in, t0 + Duration::from_secs(2)).is_some(),
            "a flood of cookieless requests pushed a logged-in session out"
        );
    }

    #[test]
    fn a_client_is_refused_after_five_failures_until_its_window_ends() {
        let mut l = Logins::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let t0 = Instant::now();
        for i in 1..=LOGIN_FAILURES {
            assert!(l.refused(ip, t0).is_none());
            assert_eq!(l.failed(ip, t0), i);
        }
        assert!(l.refused(ip, t0 + Duration::from_secs(1)).is_some());
        // Another client is not affected.
        assert!(l.refused("192.0.2.8".parse().unwrap(), t0).is_none());
        assert!(
            l.refused(ip, t0 + LOGIN_WINDOW + Duration::from_secs(1))
                .is_none()
        );
    }

    #[test]
    fn the_cookie_is_http_only_and_strict() {
        let c = cookie("abc");
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Max-Age"));
        assert_eq!(
            from_cookie_header("a=1; fieldbridge_session=abc; b=2"),
            Some("abc")
        );
        assert_eq!(from_cookie_header("a=1"), None);
    }
}
