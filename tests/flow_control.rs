//! SSH flow control and channel slots with real clients we did not write
//! (issue 19): OpenSSH and Dropbear's `dbclient` against the real gateway
//! and a real busybox LXC container.
//!
//! - Both directions with slow readers and slow writers, and small
//!   windows: the gateway must never stop reading the connection (window
//!   adjusts, EOF, CLOSE) while a session waits for its client or its
//!   process, so none of these may hang.
//! - A kill ends a session within its grace even when its client stopped
//!   reading.
//! - A channel the server closes first frees its slot: a ControlMaster
//!   connection runs any number of commands one after the other.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::World;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// One container and gateway for the file; `admin` logs in with a
/// certificate (OpenSSH) and with a key bound by one token login (dbclient,
/// which has no certificates).
fn world() -> &'static World {
    static WORLD: std::sync::OnceLock<World> = std::sync::OnceLock::new();
    WORLD.get_or_init(|| {
        World::builder()
            .container("flow")
            .config("[forwarding]\nmax_session_channels = 10\n")
            .users(&["admin"])
            .bound_keys()
            .start()
    })
}

fn target() -> String {
    format!("root@{}", world().container().name)
}

/// `len` bytes that do not repeat in any short period (compression or a
/// lost chunk would show), with their SHA-256.
fn payload(len: usize, seed: u32) -> (Vec<u8>, String) {
    let data: Vec<u8> = (0..len as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let digest = hex::encode(Sha256::digest(&data));
    (data, digest)
}

/// Waits for `child` at most `limit`; kills it and panics naming `what`
/// when it does not exit in time.
fn wait_or_kill(child: &mut Child, what: &str, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: the client did not finish within {limit:?} (flow-control deadlock)");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `cmd` writing `input` (in `chunk`-byte writes, `pause` after each)
/// while reading stdout, whose first read waits `read_delay` and each next
/// one `read_pause`; returns stdout. Panics when it takes over `limit`.
#[allow(clippy::too_many_arguments)]
fn pipe_through(
    cmd: &mut Command,
    what: &str,
    input: Vec<u8>,
    chunk: usize,
    pause: Duration,
    read_delay: Duration,
    read_pause: Duration,
    limit: Duration,
) -> Vec<u8> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        for part in input.chunks(chunk) {
            if stdin.write_all(part).is_err() {
                return;
            }
            if !pause.is_zero() {
                std::thread::sleep(pause);
            }
        }
    });
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        std::thread::sleep(read_delay);
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
            if !read_pause.is_zero() {
                std::thread::sleep(read_pause);
            }
        }
        out
    });
    let mut stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let status = wait_or_kill(&mut child, what, limit);
    let _ = writer.join();
    let out = reader.join().unwrap();
    let err = errors.join().unwrap();
    assert!(status.success(), "{what}: {status}: {err}");
    out
}

#[test]
fn an_upload_echoed_back_to_a_reader_that_starts_late_completes() {
    // `ssh gw cat < 32MB | (sleep 3; cat)`: the gateway must keep reading
    // the connection (the client's window adjusts) while the session waits
    // for the client to read.
    let (data, digest) = payload(32 << 20, 1);
    let mut cmd = world().ssh_cert("admin", &target());
    cmd.arg("cat");
    let out = pipe_through(
        &mut cmd,
        "late reader",
        data,
        256 * 1024,
        Duration::ZERO,
        Duration::from_secs(3),
        Duration::ZERO,
        Duration::from_secs(90),
    );
    assert_eq!(out.len(), 32 << 20);
    assert_eq!(hex::encode(Sha256::digest(&out)), digest);
}

#[test]
fn output_to_a_slow_reader_arrives_intact() {
    let (data, digest) = payload(8 << 20, 2);
    std::fs::write(world().container().rootfs.join("slow-out"), &data).unwrap();
    let mut cmd = world().ssh_cert("admin", &target());
    cmd.arg("cat /slow-out");
    let out = pipe_through(
        &mut cmd,
        "slow reader",
        Vec::new(),
        1,
        Duration::ZERO,
        Duration::ZERO,
        Duration::from_millis(5),
        Duration::from_secs(90),
    );
    assert_eq!(hex::encode(Sha256::digest(&out)), digest);
}

#[test]
fn a_slow_writer_with_concurrent_reads_is_echoed_intact() {
    let (data, digest) = payload(2 << 20, 3);
    let mut cmd = world().ssh_cert("admin", &target());
    cmd.arg("cat");
    let out = pipe_through(
        &mut cmd,
        "slow writer",
        data,
        16 * 1024,
        Duration::from_millis(2),
        Duration::ZERO,
        Duration::ZERO,
        Duration::from_secs(90),
    );
    assert_eq!(hex::encode(Sha256::digest(&out)), digest);
}

#[test]
fn an_upload_to_a_process_that_reads_late_completes() {
    // The process leaves its stdin unread for 2 s: the client must be held
    // back by the window, not by a gateway that stops reading.
    let (data, _) = payload(32 << 20, 4);
    let mut cmd = world().ssh_cert("admin", &target());
    cmd.arg("sleep 2; wc -c");
    let out = pipe_through(
        &mut cmd,
        "late process",
        data,
        256 * 1024,
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
        Duration::from_secs(90),
    );
    assert_eq!(
        String::from_utf8_lossy(&out).trim(),
        (32u32 << 20).to_string()
    );
}

/// `dbclient` (Dropbear) logging in with the bound key of `admin`, with
/// `extra` options before the host.
fn dbclient(extra: &[&str]) -> Command {
    let w = world();
    let mut cmd = Command::new("dbclient");
    cmd.args(["-y", "-y", "-i"])
        .arg(w.dropbear_key("admin"))
        .args(["-p", &w.gateway().port.to_string(), "-l", &target()])
        .args(extra)
        .arg("127.0.0.1")
        .env_remove("SSH_AUTH_SOCK")
        .env("HOME", w.home());
    cmd
}

#[test]
fn dropbear_uploads_past_its_first_window() {
    // Dropbear's client sends with its default 24 KiB receive window.
    let (data, digest) = payload(3 << 20, 5);
    let mut cmd = dbclient(&[]);
    cmd.arg("cat");
    let out = pipe_through(
        &mut cmd,
        "dbclient upload",
        data,
        64 * 1024,
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
        Duration::from_secs(90),
    );
    assert_eq!(out.len(), 3 << 20);
    assert_eq!(hex::encode(Sha256::digest(&out)), digest);
}

#[test]
fn dropbear_with_a_small_window_writes_and_reads_concurrently() {
    let (data, digest) = payload(8 << 20, 6);
    let mut cmd = dbclient(&["-W", "4096"]);
    cmd.arg("cat");
    let out = pipe_through(
        &mut cmd,
        "dbclient small window",
        data,
        32 * 1024,
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
        Duration::from_secs(120),
    );
    assert_eq!(hex::encode(Sha256::digest(&out)), digest);
}

/// The running session whose command is `command`.
fn running(command: &str) -> Value {
    let w = world();
    let mut found = None;
    common::wait_until(
        &format!("session {command:?} running"),
        Duration::from_secs(30),
        || {
            found = w
                .gateway()
                .sessions()
                .into_iter()
                .find(|s| s["command"] == command && s["status"] == "running");
            found.is_some()
        },
    );
    found.unwrap()
}

/// Kills session `id` with the CLI (which waits up to 10 s for its end)
/// and returns how long after the kill was audited the session row was
/// closed, from the gateway's own timestamps, in ms.
fn kill_and_time(id: &str) -> i64 {
    let gw = world().gateway();
    let out = gw.cli(&["sessions", "kill", id, "--reason", "flow test"]);
    assert!(
        out.status.success(),
        "kill: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let session = gw.sessions().into_iter().find(|s| s["id"] == id).unwrap();
    assert_ne!(session["status"], "running");
    let asked = gw
        .audit_events()
        .into_iter()
        .find(|e| e["session_id"] == id && e["detail"].as_str().unwrap_or("").contains("flow test"))
        .unwrap();
    session["ended_at"].as_i64().unwrap() - asked["at"].as_i64().unwrap()
}

#[test]
fn a_kill_ends_a_session_whose_client_stopped_reading() {
    let w = world();
    let command = "cat /dev/zero # unread";
    let mut cmd = w.ssh_cert("admin", &target());
    cmd.arg(command);
    // Its stdout is a pipe nobody reads: the client's window closes.
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let session = running(command);
    let id = session["id"].as_str().unwrap();
    // Let the output fill every buffer on the way.
    std::thread::sleep(Duration::from_secs(1));
    let took = kill_and_time(id);
    // kill_grace is 1 s; the gateway looks for kills every second.
    assert!(took <= 3500, "the session ended {took} ms after the kill");
    common::wait_until(
        "the session's processes to end",
        Duration::from_secs(10),
        || w.container().processes_matching("cat /dev/zero").is_empty(),
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_kill_ends_a_session_whose_process_stopped_reading_its_input() {
    let w = world();
    let command = "sleep 600 # flooded";
    let mut cmd = w.ssh_cert("admin", &target());
    cmd.arg(command);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let flood = std::thread::spawn(move || {
        let block = vec![b'x'; 64 * 1024];
        for _ in 0..1024 {
            if stdin.write_all(&block).is_err() {
                return;
            }
        }
    });
    let session = running(command);
    let id = session["id"].as_str().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let took = kill_and_time(id);
    assert!(took <= 3500, "the session ended {took} ms after the kill");
    let _ = child.kill();
    let _ = child.wait();
    let _ = flood.join();
}

/// An OpenSSH ControlMaster connection of `admin`, stopped when dropped.
struct Master {
    child: Child,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Master {
    fn start() -> Master {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl");
        let mut cmd = world().ssh_cert("admin", &target());
        cmd.args(["-M", "-S"]).arg(&path).args(["-N"]);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        common::wait_until("the ControlMaster socket", Duration::from_secs(30), || {
            path.exists()
        });
        Master {
            child,
            path,
            _dir: dir,
        }
    }

    /// `ssh -S CTL host ARGS...` through the master, its stdin left open
    /// (as Ansible and other clients that reuse connections do) so the
    /// gateway closes the channel first; returns the exit code and stdout.
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let mut cmd = world().ssh_cert("admin", &target());
        cmd.args(["-o", "ControlMaster=no", "-S"]).arg(&self.path);
        cmd.args(args);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let status = wait_or_kill(
            &mut child,
            "a command through the master",
            Duration::from_secs(30),
        );
        drop(stdin);
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status.code().unwrap_or(-1), out, err)
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_control_master_connection_runs_thirty_commands_one_after_the_other() {
    let master = Master::start();
    for i in 0..30 {
        let (code, out, err) = master.run(&[&format!("echo command-{i}")]);
        assert_eq!(
            (code, out),
            (0, format!("command-{i}\n")),
            "command {i}: {err}"
        );
    }
    // All through the master: one client address for all 30 (a refused
    // channel makes OpenSSH fall back to a connection of its own).
    let commands: Vec<String> = (0..30).map(|i| format!("echo command-{i}")).collect();
    let rows = world()
        .gateway()
        .wait_sessions_ended(30, |s| commands.iter().any(|c| s["command"] == c.as_str()));
    let addrs: std::collections::BTreeSet<&str> = rows
        .iter()
        .map(|s| s["client_addr"].as_str().unwrap())
        .collect();
    assert_eq!(addrs.len(), 1, "commands came over {addrs:?}");
}

#[test]
fn a_channel_whose_client_stopped_reading_does_not_stall_the_others() {
    // Two sessions on one ControlMaster connection: the first one's output
    // is never read (its client's window closes), the second one must
    // still run and end.
    let master = Master::start();
    let mut stalled = world().ssh_cert("admin", &target());
    stalled
        .args(["-o", "ControlMaster=no", "-S"])
        .arg(&master.path)
        .arg("cat /dev/zero # stalled");
    let mut stalled = stalled
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    running("cat /dev/zero # stalled");
    let (code, out, err) = master.run(&["echo not-stalled"]);
    assert_eq!((code, out.as_str()), (0, "not-stalled\n"), "{err}");
    let _ = stalled.kill();
    let _ = stalled.wait();
}
