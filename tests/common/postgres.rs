//! PostgreSQL for tests: the machine's server on 127.0.0.1:5432 (trust auth, user postgres;
//! `scripts/setup.sh --tests` installs and starts it where it is missing), one database per
//! test under a unique name, dropped at the end.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub const HOST: &str = "127.0.0.1";
pub const PORT: u16 = 5432;

/// Runs SQL as the `postgres` user through psql; panics with psql's message on failure.
pub fn psql(db: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args([
            "-h",
            HOST,
            "-p",
            &PORT.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
        ])
        .args(["-c", sql])
        .output()
        .expect("run psql (scripts/setup.sh --tests installs PostgreSQL)");
    assert!(
        out.status.success(),
        "psql -c {sql:?} failed: {} (is PostgreSQL running on {HOST}:{PORT}? scripts/setup.sh --tests starts it)",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A database of the test's own, dropped (with its connections) when this goes out of scope.
pub struct TempDb {
    pub name: String,
}

impl TempDb {
    pub fn create() -> TempDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "fieldbridge_test_{}_{}_{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        psql("postgres", &format!("CREATE DATABASE {name}"));
        TempDb { name }
    }

    /// As the gateway is configured to reach it, directly.
    pub fn url(&self) -> String {
        self.url_at(PORT)
    }

    /// Through something listening on `port` on 127.0.0.1 (a proxy).
    pub fn url_at(&self, port: u16) -> String {
        format!("postgres://postgres@{HOST}:{port}/{}", self.name)
    }

    /// A pool for the test's own queries.
    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.url())
            .await
            .expect("connect to the test database")
    }

    /// One value from SQL run in this database.
    pub fn scalar(&self, sql: &str) -> String {
        psql(&self.name, sql)
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                "-X",
                "-q",
                "-h",
                HOST,
                "-p",
                &PORT.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", "postgres", "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .output();
    }
}
