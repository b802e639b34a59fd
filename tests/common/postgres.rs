//! A real PostgreSQL server for tests: `initdb` into a temporary directory
//! and `postgres` on a free loopback port, run as the `postgres` system user
//! (PostgreSQL refuses to run as root). Stopped when the test process exits
//! (a reaper shell holds a pipe from this process, like the other fixtures).
//!
//! Tests that need it fail, never skip, when the binaries are missing.

use std::path::PathBuf;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A running server.
pub struct TestPostgres {
    /// Its port on 127.0.0.1.
    pub port: u16,
    _reaper: ChildStdin,
}

fn bin(name: &str) -> PathBuf {
    for dir in [
        "/usr/lib/postgresql/17/bin",
        "/usr/lib/postgresql/16/bin",
        "/usr/lib/postgresql/15/bin",
    ] {
        let p = PathBuf::from(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "PostgreSQL's {name} is not installed (apt-get install postgresql); .ci/run installs it"
    );
}

/// The one server of this test process, started on first use.
pub fn server() -> &'static TestPostgres {
    static SERVER: OnceLock<TestPostgres> = OnceLock::new();
    SERVER.get_or_init(start)
}

fn start() -> TestPostgres {
    let dir = std::env::temp_dir().join(format!("portcullis-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("data");
    let owner = Command::new("chown")
        .arg("postgres:postgres")
        .arg(&dir)
        .status()
        .expect("chown");
    assert!(owner.success(), "chown postgres {}", dir.display());
    let init = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin("initdb"))
        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
        .arg(&data)
        .output()
        .expect("run initdb");
    assert!(
        init.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    // Picked after initdb (seconds on a loaded machine), right before the
    // server binds it, from the same registry as the gateways' ports.
    let port = super::gateway::free_port();
    let log = std::fs::File::create(dir.join("postgres.log")).unwrap();
    let server = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin("postgres"))
        .arg("-D")
        .arg(&data)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
        .arg(&dir)
        .args(["-c", "fsync=off", "-c", "max_connections=200"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start postgres");
    let mut reaper = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "read _ignored; kill -INT {} 2>/dev/null; sleep 2; rm -rf '{}'",
            server.id(),
            dir.display()
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("reaper");
    let reaper_stdin = reaper.stdin.take().unwrap();
    std::mem::forget(reaper);
    std::mem::forget(server);
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "postgres did not start: {}",
            std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Accepting TCP is not yet accepting queries: wait for pg_isready.
    while !Command::new(bin("pg_isready"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "postgres not ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    TestPostgres {
        port,
        _reaper: reaper_stdin,
    }
}

impl TestPostgres {
    /// Creates a fresh database and returns its URL.
    pub fn new_database(&self) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let out = Command::new(bin("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                &name,
            ])
            .output()
            .expect("createdb");
        assert!(
            out.status.success(),
            "createdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}
