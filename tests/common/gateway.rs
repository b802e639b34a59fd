//! The real `portcullis` binary serving on a free loopback port, its CLI
//! and what it recorded (sessions, audit events).
//!
//! The names other tests import from here stay importable:
//! `common::gateway::{TestContainer, run, run_ssh, SshResult, keygen, ...}`
//! are re-exported from [`super::container`] and [`super::ssh`].

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::container::reaper;
#[allow(unused_imports)]
pub use super::container::{TestContainer, UNS_BASE, ensure_subids, run};
#[allow(unused_imports)]
pub use super::ssh::{SshResult, fingerprint_of, keygen, run_ssh, run_with_browser};

/// The real gateway binary, serving on a free loopback port.
pub struct TestGateway {
    /// SSH port on 127.0.0.1.
    pub port: u16,
    /// Its state directory (host key, database, recordings).
    pub state_dir: PathBuf,
    /// Its config file.
    pub config_path: PathBuf,
    /// Its PostgreSQL database URL; `None`: SQLite in `state_dir`.
    pub database_url: Option<String>,
    child: Child,
    listening_lines_at_spawn: usize,
    _reaper: ChildStdin,
    _dir: tempfile::TempDir,
}

impl TestGateway {
    /// Writes a config for `issuer` plus `extra_config` (TOML, verbatim)
    /// and starts `portcullis serve`. The database is SQLite in the state
    /// directory, or a fresh database on the test PostgreSQL server when
    /// `PORTCULLIS_TEST_DATABASE=postgres`.
    ///
    /// Unless `extra_config` has an `[auth]` section, the per-address
    /// failure delay is off (`failure_delay = "0s"`): the tests of one file
    /// share 127.0.0.1 and many of them fail on purpose. Per-source
    /// penalties are off and 64 unauthenticated connections per source
    /// are allowed unless `extra_config` sets `penalty_min` or
    /// `max_unauthenticated_per_source`.
    pub fn start(issuer: &str, extra_config: &str) -> TestGateway {
        Self::start_with_oidc(&oidc_section(issuer), extra_config)
    }

    /// Like [`TestGateway::start`] with the `[oidc]` / `[[oidc]]` sections
    /// given verbatim in `oidc_config`.
    pub fn start_with_oidc(oidc_config: &str, extra_config: &str) -> TestGateway {
        let database = match std::env::var("PORTCULLIS_TEST_DATABASE").as_deref() {
            Ok("postgres") => Some(super::postgres::server().new_database()),
            Ok("sqlite") | Err(_) => None,
            Ok(other) => panic!("PORTCULLIS_TEST_DATABASE={other}: use sqlite or postgres"),
        };
        Self::start_full(oidc_config, extra_config, database.as_deref())
    }

    /// Like [`TestGateway::start`], on the database at `url` (`None`: SQLite).
    pub fn start_with_database(issuer: &str, extra_config: &str, url: Option<&str>) -> TestGateway {
        Self::start_full(&oidc_section(issuer), extra_config, url)
    }

    fn start_full(oidc_config: &str, extra_config: &str, url: Option<&str>) -> TestGateway {
        // Top-level keys of `extra_config` (lines before its first table)
        // must come before any table of the file.
        let split = extra_config
            .lines()
            .position(|l| l.trim_start().starts_with('['))
            .unwrap_or(extra_config.lines().count());
        let top_level: String = extra_config
            .lines()
            .take(split)
            .map(|l| format!("{l}\n"))
            .collect();
        let tables: String = extra_config
            .lines()
            .skip(split)
            .map(|l| format!("{l}\n"))
            .collect();
        // The per-source limits (issue 14) must not throttle the tests of
        // one file, which share 127.0.0.1 and fail on purpose: no
        // penalties and 64 unauthenticated connections per source, unless
        // `extra_config` sets them.
        let mut auth = String::new();
        for (key, value) in [
            ("penalty_min", "\"0s\""),
            ("max_unauthenticated_per_source", "64"),
        ] {
            if !extra_config.contains(key) {
                auth.push_str(&format!("{key} = {value}\n"));
            }
        }
        let tables = if tables.contains("[auth]\n") {
            tables.replacen("[auth]\n", &format!("[auth]\n{auth}"), 1)
        } else {
            auth.insert_str(0, "[auth]\nfailure_delay = \"0s\"\n");
            format!("{auth}{tables}")
        };
        let extra_config = match url {
            Some(url) => format!("[database]\nurl = \"{url}\"\n{tables}"),
            None => tables,
        };
        let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        // A test with its own `[policy]` section names its own directory.
        let policy = if extra_config.contains("[policy]") {
            String::new()
        } else {
            format!("[policy]\ndir = \"{}\"\n", policies.display())
        };
        // A test with its own `[session]` section sets `kill_grace` there.
        let session = if extra_config.contains("[session]") {
            ""
        } else {
            "[session]\nkill_grace = \"1s\"\n"
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let state_dir = dir.path().join("state");
        let config_path = dir.path().join("portcullis.toml");
        std::fs::write(
            &config_path,
            format!(
                "{top_level}listen = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n{oidc_config}\
                 {policy}{session}{extra_config}",
                state_dir.display(),
            ),
        )
        .expect("write config");
        let log = std::fs::File::create(dir.path().join("gateway.log")).expect("log");
        std::fs::create_dir_all(&state_dir).expect("state dir");
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env("PORTCULLIS_LOG", "info,portcullis=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn portcullis");
        let reaper_stdin = reaper(&format!("kill -TERM {} 2>/dev/null", child.id()));
        let gateway = TestGateway {
            port,
            state_dir,
            config_path,
            database_url: url.map(str::to_string),
            child,
            listening_lines_at_spawn: 0,
            _reaper: reaper_stdin,
            _dir: dir,
        };
        gateway.wait_listening();
        gateway
    }

    /// Stops the gateway with SIGTERM (it signs the audit chain and closes
    /// sessions) and waits for it, at most 20 s.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.wait_exit();
    }

    /// Kills the gateway with SIGKILL, as a crash would.
    pub fn crash(&mut self) {
        let _ = self.child.kill();
        self.wait_exit();
    }

    fn wait_exit(&mut self) {
        let started = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "gateway did not stop"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the gateway again on the same config, state and port.
    pub fn restart(&mut self) {
        self.listening_lines_at_spawn = self.log().matches("portcullis listening").count();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self._dir.path().join("gateway.log"))
            .expect("log");
        self.child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .env("PORTCULLIS_LOG", "info,portcullis=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn portcullis");
        self.wait_listening();
    }

    /// Waits for the gateway's "portcullis listening" log line (one more
    /// than already in the log, for restarts). No probe connection is made:
    /// it would count against connection limits that tests check.
    fn wait_listening(&self) {
        let started = Instant::now();
        let before = self.listening_lines_at_spawn;
        while self.log().matches("portcullis listening").count() <= before {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "gateway did not listen; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The gateway process's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The gateway's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("gateway.log")).unwrap_or_default()
    }

    /// Runs `portcullis ARGS --config CONFIG` and returns its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .output()
            .expect("run portcullis")
    }

    /// Runs `statement` on the gateway's database (the SQLite file with
    /// `sqlite3`, or PostgreSQL with `psql`); panics when it fails.
    pub fn sql(&self, statement: &str) {
        let out = match &self.database_url {
            Some(url) => Command::new("psql")
                .args([url.as_str(), "-v", "ON_ERROR_STOP=1", "-q", "-c", statement])
                .output(),
            None => Command::new("sqlite3")
                .arg(self.state_dir.join("portcullis.db"))
                .arg(statement)
                .output(),
        }
        .expect("run sqlite3 or psql");
        assert!(
            out.status.success(),
            "{statement}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// True when this gateway runs on PostgreSQL.
    pub fn on_postgres(&self) -> bool {
        self.database_url.is_some()
    }

    /// `portcullis audit list --json`, parsed.
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        let out = self.cli(&["audit", "list", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("audit json")
    }

    /// `portcullis sessions list --json`, parsed.
    pub fn sessions(&self) -> Vec<serde_json::Value> {
        let out = self.cli(&["sessions", "list", "--json", "--limit", "1000"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("sessions json")
    }

    /// Waits (at most 30 s) until at least `count` sessions match `which`
    /// and none of them is still running, and returns the matching rows.
    /// The gateway closes a session's row (after its recording and its
    /// `session_end` audit event) only after the client got the exit
    /// status, so a client that has exited does not mean the row is closed.
    pub fn wait_sessions_ended(
        &self,
        count: usize,
        which: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        let mut found = Vec::new();
        super::wait_until(
            &format!("{count} ended sessions"),
            Duration::from_secs(30),
            || {
                found = self.sessions().into_iter().filter(|s| which(s)).collect();
                found.len() >= count && found.iter().all(|s| s["status"] != "running")
            },
        );
        found
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn oidc_section(issuer: &str) -> String {
    format!("[oidc]\nissuer = \"{issuer}\"\nclient_id = \"portcullis\"\n")
}

/// A free loopback port, never one this test process handed out before.
///
/// The port is only probed (bound and released): whoever uses it binds it
/// later (a gateway after its startup, `ssh -L`, PostgreSQL), and until
/// then the kernel may give the same port to another `bind(0)` of a test
/// running in parallel, which would then fail to listen.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}
