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

/// A PostgreSQL cluster of the test's own (initdb in a temp dir, run as the `postgres` user on
/// a free loopback port), for what the shared server can't show: password authentication
/// (the shared one trusts every local connection) and a server that crashes.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    pub port: u16,
    pub password: String,
}

fn pg_bin(tool: &str) -> std::path::PathBuf {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's programs in /usr/lib/postgresql (scripts/setup.sh --tests)")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort();
    let v = versions.last().expect("a PostgreSQL version");
    std::path::PathBuf::from(format!("/usr/lib/postgresql/{v}/bin/{tool}"))
}

/// Runs `cmd` as the `postgres` user (initdb and the server refuse to run as root).
fn as_postgres(tool: &str, args: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(pg_bin(tool))
        .args(args)
        .output()
        .expect("runuser")
}

impl PrivatePostgres {
    /// A new cluster that asks for a password (SCRAM) on TCP; the superuser is `postgres`.
    pub fn start() -> PrivatePostgres {
        let dir = tempfile::tempdir().expect("tempdir");
        let password = format!("pw-{}-secret", std::process::id());
        std::fs::write(dir.path().join("pw"), &password).unwrap();
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(chown.success());
        let data = dir.path().join("data");
        let out = as_postgres(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                "--pwfile",
                dir.path().join("pw").to_str().unwrap(),
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = PrivatePostgres {
            port: crate::common::mosquitto::free_port(),
            dir,
            password,
        };
        pg.run();
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Starts the server (again, after a crash: it recovers from its WAL first).
    pub fn run(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        // After a kill, the old server's processes may still be on their way out: pg_ctl
        // refuses to start until they are gone.
        let mut last = None;
        let started = super::poll(
            std::time::Duration::from_secs(30),
            std::time::Duration::from_millis(200),
            || {
                let out = as_postgres(
                    "pg_ctl",
                    &["-D", &self.data(), "-o", &opts, "-l", &log, "-w", "start"],
                );
                let ok = out.status.success();
                last = Some(out);
                ok.then_some(())
            },
        );
        if started.is_none() {
            panic!(
                "pg_ctl start: {}{}",
                last.map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                    .unwrap_or_default(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
    }

    /// SIGKILL to the server's main process: a crash, with whatever was in flight.
    pub fn crash(&self) {
        let pid = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid"))
            .expect("postmaster.pid");
        let pid: i32 = pid.lines().next().unwrap().trim().parse().unwrap();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        // Its backends end as soon as they see it gone; the port must be free again.
        super::until_blocking(
            std::time::Duration::from_secs(10),
            || std::net::TcpStream::connect((HOST, self.port)).is_err(),
            || "server still listening".into(),
        );
    }

    /// A URL for `user` (no password in it) to database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@{HOST}:{}/{db}", self.port)
    }

    /// Runs SQL with psql as the superuser, password given.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                HOST,
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-c", sql])
            .env("PGPASSWORD", &self.password)
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = as_postgres("pg_ctl", &["-D", &self.data(), "-m", "immediate", "stop"]);
    }
}
