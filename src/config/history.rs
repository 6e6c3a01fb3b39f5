//! `[history]`: the local SQLite history, and `[history.forward]`, the central PostgreSQL it is
//! forwarded to (README "History", "Central history (PostgreSQL)").

use std::path::PathBuf;
use std::time::Duration;

use super::extract::{Extractor, Section};
use super::*;

impl Extractor<'_> {
    pub(super) fn history(&mut self, s: &Section) -> HistoryConfig {
        self.keys(
            s,
            &[
                "enabled",
                "path",
                "retention",
                "flush",
                "max_size",
                "forward",
            ],
        );
        let forward = self.table(s, "forward").map(|f| self.forward(&f));
        HistoryConfig {
            enabled: self.boolean(s, "enabled").unwrap_or(true),
            path: self
                .text(s, "path")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_HISTORY_PATH)),
            retention: self
                .duration(s, "retention")
                .unwrap_or(Duration::from_secs(30 * 86_400)),
            flush: self.duration(s, "flush").unwrap_or(Duration::from_secs(1)),
            max_size: self.size(s, "max_size"),
            forward,
        }
    }

    fn forward(&mut self, s: &Section) -> ForwardConfig {
        self.keys(s, &["url", "password_file", "sslmode", "ca_file"]);
        let url = self.text(s, "url");
        let url = self.required(s, "url", url, "url (postgres://user@host/database)");
        let url = match url.map(|u| check_postgres_url(&u).map(|()| u)) {
            Some(Ok(u)) => u,
            Some(Err(msg)) => {
                self.error_at(&s.key("url"), msg);
                String::new()
            }
            None => String::new(),
        };
        let chosen = self
            .choice(s, "sslmode", "sslmode", SslMode::NAMES)
            .map(SslMode::from_index);
        // An sslmode given but unknown was reported; don't guess what it meant below.
        let known = chosen.is_some() || !s.table.contains_key("sslmode");
        let sslmode = chosen.unwrap_or(SslMode::Prefer);
        let ca_file = self.text(s, "ca_file").map(PathBuf::from);
        if ca_file.is_some() && known && !sslmode.verifies() {
            self.error_at(
                &s.key("ca_file"),
                "ca_file is used only to verify the server: set sslmode to verify-ca or verify-full",
            );
        }
        ForwardConfig {
            url,
            password_file: self.text(s, "password_file").map(PathBuf::from),
            sslmode,
            ca_file,
        }
    }
}

/// Query parameters of the URL that have keys of their own (or must stay out of it).
const OWN_KEYS: &[(&str, &str)] = &[
    (
        "password",
        "password_file (or FIELDBRIDGE_FORWARD_PASSWORD)",
    ),
    ("sslmode", "the sslmode key"),
    ("sslrootcert", "ca_file"),
];

/// `%XX` escapes decoded; anything malformed kept as it is.
fn percent_decoded(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `postgres://[user@]host[:port]/database[?param=value…]`, with no password in it: the URL is
/// shown by `check` and in logs, so the password comes from `password_file` or the environment.
pub fn check_postgres_url(url: &str) -> Result<(), String> {
    let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    else {
        return Err(format!(
            "unsupported URL \"{url}\"; expected postgres://user@host[:port]/database"
        ));
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        if userinfo.contains(':') {
            return Err(
                "a password in the URL would be shown by `check` and in logs; put it in password_file or FIELDBRIDGE_FORWARD_PASSWORD"
                    .into(),
            );
        }
    }
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    if path.trim_start_matches('/').is_empty() {
        return Err(format!(
            "URL \"{url}\" names no database; expected postgres://user@host[:port]/database"
        ));
    }
    for param in query.split('&').filter(|p| !p.is_empty()) {
        // As the driver reads it: percent-decoded (`pass%77ord` is `password`).
        let name = percent_decoded(param.split_once('=').map_or(param, |(n, _)| n));
        if let Some((_, instead)) = OWN_KEYS.iter().find(|(k, _)| k.eq_ignore_ascii_case(&name)) {
            return Err(format!("\"{name}\" does not go in the URL; use {instead}"));
        }
    }
    // The driver's own parser has the last word on everything else (ports, parameters).
    <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(url)
        .map(|_| ())
        .map_err(|e| format!("invalid URL \"{url}\": {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_in_the_url_is_refused_however_it_is_encoded() {
        for url in [
            "postgres://gw@db.lan/home?password=x",
            "postgres://gw@db.lan/home?pass%77ord=x",
            "postgres://gw@db.lan/home?%70%61%73%73%77%6F%72%64=x",
            "postgres://gw@db.lan/home?PASSWORD=x",
            "postgres://gw:x@db.lan/home",
        ] {
            assert!(check_postgres_url(url).is_err(), "{url}");
        }
    }

    #[test]
    fn postgres_urls_without_passwords_pass() {
        assert!(check_postgres_url("postgres://fieldbridge@db.lan/home").is_ok());
        assert!(check_postgres_url("postgresql://u@[::1]:5433/h?application_name=x").is_ok());
        assert!(check_postgres_url("postgres://db.lan/home").is_ok());
    }

    #[test]
    fn postgres_urls_with_passwords_or_other_problems_fail_with_the_reason() {
        let err = |u: &str| check_postgres_url(u).err().unwrap_or_default();
        assert!(err("postgres://u:secret@db/h").contains("password_file"));
        assert!(err("postgres://u@db/h?password=x").contains("password_file"));
        assert!(err("postgres://u@db/h?sslmode=require").contains("sslmode key"));
        assert!(err("postgres://u@db/h?sslrootcert=/x").contains("ca_file"));
        assert!(err("mysql://u@db/h").contains("unsupported URL"));
        assert!(err("postgres://u@db").contains("names no database"));
        assert!(err("postgres://u@db:99999/h").contains("invalid URL"));
    }
}
