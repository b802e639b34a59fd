//! Real LXC containers for end-to-end tests: a busybox container per
//! fixture, destroyed when the test process exits, and the processes
//! inside it.
//!
//! Cleanup does not rely on `Drop` (statics are never dropped): each
//! fixture starts a small reaper shell whose stdin is a pipe held by the
//! test process; when the test process exits, the pipe closes and the
//! reaper stops and destroys the container (or kills the gateway).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs a command and panics with its output when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Starts `sh -c SCRIPT` that waits for its stdin to close, then runs the
/// script. The returned stdin must be kept (leaked) for the test's life.
// The reaper outlives the test process on purpose, so it is never waited for.
#[allow(clippy::zombie_processes)]
pub fn reaper(script: &str) -> ChildStdin {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("read _ignored; {script}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn reaper");
    child.stdin.take().expect("reaper stdin")
}

/// A running busybox LXC container, destroyed when the test process exits.
pub struct TestContainer {
    /// Container name (unique per test process).
    pub name: String,
    /// Its root filesystem on the host.
    pub rootfs: PathBuf,
    _reaper: ChildStdin,
}

impl TestContainer {
    /// Creates and starts `portcullis-test-<pid>-<suffix>` from the busybox
    /// template with `lxc.net.0.type = empty`, adds a login `app` (uid 1000)
    /// and `/etc/hostname`, and waits until it runs.
    pub fn start(suffix: &str) -> TestContainer {
        TestContainer::start_with(suffix, false)
    }

    /// As [`TestContainer::start`]; `unprivileged` adds `lxc.idmap` lines
    /// mapping ids 0..65536 to host 100000.. ([`ensure_subids`] first), and
    /// files the test adds are chowned to the mapped ids.
    pub fn start_with(suffix: &str, unprivileged: bool) -> TestContainer {
        let name = format!("portcullis-test-{}-{suffix}", std::process::id());
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("lxc.conf");
        let mut text =
            "lxc.net.0.type = empty\nlxc.apparmor.profile = unconfined\nlxc.pty.max = 64\n"
                .to_owned();
        if unprivileged {
            ensure_subids();
            text.push_str("lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n");
        }
        std::fs::write(&conf, text).expect("write lxc conf");
        let off = if unprivileged { UNS_BASE } else { 0 };
        let reaper_stdin = reaper(&format!(
            "lxc-stop -k -n {name} >/dev/null 2>&1; lxc-destroy -f -n {name} >/dev/null 2>&1"
        ));
        run(Command::new("lxc-create")
            .args(["-n", &name, "-t", "busybox", "-f"])
            .arg(&conf));
        // The busybox template appends its own `lxc.pty.max = 1` after the
        // `-f` file's value; give sessions room for more than one PTY.
        let lxc_config = format!("/var/lib/lxc/{name}/config");
        run(Command::new("sed").args(["-i", "s/^lxc.pty.max = .*/lxc.pty.max = 64/", &lxc_config]));
        let rootfs = PathBuf::from(format!("/var/lib/lxc/{name}/rootfs"));
        append(
            &rootfs.join("etc/passwd"),
            "app:x:1000:1000:App:/home/app:/bin/sh\n",
        );
        append(&rootfs.join("etc/group"), "app:x:1000:\nops:x:2000:app\n");
        std::fs::create_dir_all(rootfs.join("home/app")).expect("home");
        std::os::unix::fs::chown(rootfs.join("home/app"), Some(1000 + off), Some(1000 + off))
            .expect("chown");
        std::fs::write(rootfs.join("etc/hostname"), format!("{name}\n")).expect("hostname");
        std::os::unix::fs::chown(rootfs.join("etc/hostname"), Some(off), Some(off)).expect("chown");
        run(Command::new("lxc-start").args(["-n", &name]));
        let started = Instant::now();
        while init_pid_of(&name).is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{name} did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        TestContainer {
            name,
            rootfs,
            _reaper: reaper_stdin,
        }
    }

    /// Host PID of the container's init.
    pub fn init_pid(&self) -> i32 {
        init_pid_of(&self.name).expect("container running")
    }

    /// Host PIDs of processes in the container whose command line contains
    /// `needle`. A process in the middle of execve reads an empty command
    /// line, so callers poll rather than read once.
    pub fn processes_matching(&self, needle: &str) -> Vec<i32> {
        let cgroup = format!("/lxc.payload.{}", self.name);
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            if !cg
                .lines()
                .any(|l| l.ends_with(&cgroup) || l.contains(&format!("{cgroup}/")))
            {
                continue;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(pid);
            }
        }
        found
    }
}

/// Host uid/gid that an unprivileged test container's root maps to.
pub const UNS_BASE: u32 = 100_000;

/// Makes sure `/etc/subuid` and `/etc/subgid` give root the range
/// 100000:65536 that unprivileged test containers use (a fresh CI machine
/// has no such line).
pub fn ensure_subids() {
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if !text.lines().any(|l| l.trim() == "root:100000:65536") {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
                .unwrap_or_else(|e| panic!("open {file}: {e}"));
            let sep = if text.is_empty() || text.ends_with('\n') {
                ""
            } else {
                "\n"
            };
            f.write_all(format!("{sep}root:100000:65536\n").as_bytes())
                .expect("append subid");
        }
    }
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(text.as_bytes()).expect("append");
}

fn init_pid_of(name: &str) -> Option<i32> {
    let out = Command::new("lxc-info")
        .args(["-n", name, "-p", "-H"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}
