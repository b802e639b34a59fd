//! CVE-2019-5736 / CVE-2016-9962 / CVE-2024-21626 class: while sessions are
//! being attached over and over through the gateway, container root (a loop
//! started inside the container) goes for every process it can see.
//!
//! - `exe`/`mem`: it must never get at a gateway or helper process: in an
//!   unprivileged container not even the pre-exec session process; in a
//!   privileged one (root there is host root, with CAP_SYS_PTRACE) at most
//!   that process, already confined to the init's capabilities, and never
//!   the executable for writing.
//! - fds (review finding 1): in a privileged container it SIGSTOPs each new
//!   PID the moment it exists and lists its fds and cgroup. No process it
//!   can see ever holds a directory or a host file (the CVE-2024-21626
//!   primitive: `openat(fd, "../../..")` out of the host cgroupfs), and the
//!   session process is in its session cgroup from its first instruction.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::gateway::{TestContainer, TestGateway, run_ssh};
use common::idp::TestIdp;

/// The loop: `true <FILE` opens FILE without reading it (a failed open of
/// a regular builtin does not end the shell). Every (kind, pid, comm) seen
/// once is logged with the process's CapEff and argv.
const RACE_SH: &str = r#"out=/tmp/race.out; : > $out; seen=""; n=0
while [ ! -e /tmp/race.stop ]; do
  n=$((n+1))
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [ "$p" = "$$" ] && continue
    for k in exe mem; do
      if true 2>/dev/null < $d/$k; then
        comm=""; cmd=""; ce=""
        read -r comm < $d/comm 2>/dev/null
        read -r cmd < $d/cmdline 2>/dev/null
        while read -r a b; do [ "$a" = "CapEff:" ] && ce=$b; done < $d/status 2>/dev/null
        key="$k:$p:$comm"
        case " $seen " in *" $key "*) ;; *) seen="$seen $key"; echo "$k $p $comm $ce $cmd" >> $out;; esac
        if [ $k = exe ] && true 2>/dev/null >> $d/exe; then echo "exe-w $p $comm $ce $cmd" >> $out; fi
      fi
    done
  done
done
echo "iterations $n" >> $out
"#;

fn field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

/// A record is about the helper (or the session process before exec) when
/// its comm is the memfd's fd number or its argv names the helper.
fn is_helper(comm: &str, cmd: &str) -> bool {
    (!comm.is_empty() && comm.bytes().all(|b| b.is_ascii_digit()))
        || cmd.contains("attach-helper")
        || cmd.contains("portcullis")
}

struct Fixture {
    _idp: TestIdp,
    privileged: TestContainer,
    unprivileged: TestContainer,
    gateway: TestGateway,
    token: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        std::thread::spawn(|| {
            let idp = TestIdp::start();
            let privileged = TestContainer::start("racep");
            let unprivileged = TestContainer::start_with("raceu", true);
            let gateway = TestGateway::start(&idp.issuer, "");
            let rt = tokio::runtime::Runtime::new().unwrap();
            let token = rt.block_on(idp.device_flow_id_token("admin"));
            Fixture {
                _idp: idp,
                privileged,
                unprivileged,
                gateway,
                token,
            }
        })
        .join()
        .unwrap()
    })
}

/// The two races share the containers: one at a time.
static RACING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `racer` (argv inside the container, as root; it writes `/tmp/<name>.out`
/// and ends when `/tmp/<name>.stop` exists) while sessions are started
/// through the gateway, `batch` at a time, until `enough` holds for the
/// racer's output or `max` sessions ran; returns the lines of its output.
fn race(
    c: &TestContainer,
    racer: &[&str],
    name: &str,
    batch: usize,
    max: usize,
    enough: impl Fn(&str) -> bool,
) -> Vec<String> {
    let f = fixture();
    let (stop, out) = (format!("tmp/{name}.stop"), format!("tmp/{name}.out"));
    let _ = std::fs::remove_file(c.rootfs.join(&stop));
    let _ = std::fs::remove_file(c.rootfs.join(&out));
    let mut child = Command::new("lxc-attach")
        .args(["-n", &c.name, "--"])
        .args(racer)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    common::wait_until("the racer", Duration::from_secs(10), || {
        c.rootfs.join(&out).exists()
    });
    let dir = tempfile::tempdir().unwrap();
    let mut sessions = 0;
    while sessions < max {
        for _ in 0..batch {
            let mut cmd = f
                .gateway
                .ssh(&format!("root@{}", c.name), &f.token, dir.path());
            cmd.arg("true");
            let r = run_ssh(&mut cmd, b"");
            assert_eq!(r.code, 0, "{}", r.stderr);
        }
        sessions += batch;
        if enough(&std::fs::read_to_string(c.rootfs.join(&out)).unwrap_or_default()) {
            break;
        }
    }
    std::fs::write(c.rootfs.join(&stop), "").unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(30), "racer hangs");
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(c.rootfs.join(&out)).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let iterations = lines.iter().find(|l| l.starts_with("iterations ")).unwrap();
    eprintln!("{}: {iterations} over {sessions} sessions", c.name);
    lines
}

#[test]
fn container_root_never_reaches_a_gateway_or_helper_process() {
    let f = fixture();
    let _one = RACING.lock().unwrap_or_else(|p| p.into_inner());
    for (c, is_privileged) in [(&f.unprivileged, false), (&f.privileged, true)] {
        let init_status =
            std::fs::read_to_string(format!("/proc/{}/status", c.init_pid())).unwrap();
        let init_eff = u64::from_str_radix(&field(&init_status, "CapEff"), 16).unwrap();
        std::fs::write(c.rootfs.join("tmp/race.sh"), RACE_SH).unwrap();
        let lines = race(c, &["/bin/sh", "/tmp/race.sh"], "race", 40, 40, |_| true);
        let helper: Vec<&String> = lines
            .iter()
            .filter(|l| {
                let f: Vec<&str> = l.splitn(5, ' ').collect();
                f.len() >= 3 && is_helper(f[2], f.get(4).copied().unwrap_or(""))
            })
            .collect();
        eprintln!(
            "{} ({}): opened by container root: {} records, {} of a helper-stage process: {helper:?}",
            c.name,
            if is_privileged {
                "privileged"
            } else {
                "unprivileged"
            },
            lines.len() - 1,
            helper.len()
        );
        assert!(
            !lines.iter().any(|l| l.starts_with("exe-w ")),
            "an executable was opened for writing: {lines:?}"
        );
        if !is_privileged {
            assert!(helper.is_empty(), "{helper:?}");
        }
        for l in &helper {
            let f: Vec<&str> = l.splitn(5, ' ').collect();
            let eff = u64::from_str_radix(f.get(3).copied().unwrap_or("0"), 16).unwrap_or(0);
            assert_eq!(
                eff & !init_eff,
                0,
                "a helper-stage process visible in the container held more than the init: {l}"
            );
        }
    }
}

/// `tests/attach_race_stopper.c`, built static: the stopper that container
/// root runs (see the file).
fn stopper() -> std::path::PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        common::gateway::run(
            Command::new("cc")
                .args(["-static", "-O2", "-o"])
                .arg(dir.path().join("stopper"))
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/attach_race_stopper.c"
                )),
        );
        dir
    });
    dir.path().join("stopper")
}

/// True for a record of the session process before its exec: its comm is
/// still the helper's, the memfd's fd number (all digits).
fn is_pre_exec(record: &str) -> bool {
    record
        .split(' ')
        .find_map(|w| w.strip_prefix("comm="))
        .is_some_and(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()))
}

/// A link target of `/proc/PID/fd/N` that is no handle to the host: a pipe,
/// a socket, an anonymous inode, or the container's own devpts.
fn harmless_fd(target: &str) -> bool {
    target.starts_with("pipe:[")
        || target.starts_with("socket:[")
        || target.starts_with("anon_inode:")
        || target == "/dev/pts/ptmx"
        || target
            .strip_prefix("/dev/pts/")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Runs the stopper in the privileged container until it has caught three
/// session processes before their exec (under load it misses some), at
/// most 200 sessions, and checks every process it stopped: no directory fd
/// and no host file, and each session process in its own session cgroup.
fn stop_every_new_process() {
    let f = fixture();
    let c = &f.privileged;
    let dst = c.rootfs.join("bin/stopper");
    std::fs::copy(stopper(), &dst).unwrap();
    std::fs::set_permissions(&dst, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let lines = race(
        c,
        &["/bin/stopper", "/tmp/stop.out", "/tmp/stop.stop"],
        "stop",
        10,
        200,
        |out| out.lines().filter(|l| is_pre_exec(l)).count() >= 3,
    );
    let records: Vec<&String> = lines.iter().filter(|l| l.starts_with("pid=")).collect();
    let mut bad = Vec::new();
    let mut pre_exec = 0;
    for l in &records {
        let (head, fds) = l.split_once(" fds:").unwrap();
        let cg = head
            .split(' ')
            .find_map(|w| w.strip_prefix("cg="))
            .unwrap_or("");
        for fd in fds.split_whitespace() {
            let target = fd.split_once('=').map_or("", |(_, t)| t);
            if target.starts_with("DIR:") || !harmless_fd(target) {
                bad.push(format!("{l}  <- {fd}"));
            }
        }
        if is_pre_exec(l) {
            pre_exec += 1;
            // Born in its own session cgroup below the container's (never
            // the gateway's, nor the container's own).
            if !cg.starts_with("/.portcullis-") {
                bad.push(format!("{l}  <- cgroup {cg}"));
            }
        }
    }
    eprintln!(
        "stopped {} processes, {pre_exec} of them session processes before their exec",
        records.len()
    );
    assert!(
        bad.is_empty(),
        "host handles in processes the container can see:\n{}",
        bad.join("\n")
    );
    // The test could have failed: it caught session processes before exec.
    assert!(
        pre_exec > 0,
        "no session process was caught before its exec: {records:?}"
    );
}

#[test]
fn a_stopped_session_process_holds_no_host_handle() {
    let _one = RACING.lock().unwrap_or_else(|p| p.into_inner());
    stop_every_new_process();
}

/// The host's cgroup2 hierarchy with `nsdelegate` (systemd's default) for
/// as long as this lives, then as it was. The flag belongs to the one
/// cgroup2 hierarchy of the machine: mounting cgroup2 from the host's
/// cgroup namespace sets or clears it (and the other cgroup2 flags) for
/// every mount, so a scratch mount with the wanted options does it (a
/// `remount` keeps the old options).
struct NsDelegate {
    /// The cgroup2 flags before, restored on drop; `None`: it already had
    /// `nsdelegate`, nothing to undo.
    restore: Option<Vec<String>>,
}

impl NsDelegate {
    /// The super options of the host's cgroup2 mount, without `rw`.
    fn flags() -> Vec<String> {
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let options = mi
            .lines()
            .find_map(|l| {
                let (_, post) = l.split_once(" - ")?;
                let mut post = post.split(' ');
                (post.next()? == "cgroup2").then(|| post.nth(1).unwrap_or("").to_owned())
            })
            .expect("a cgroup2 mount");
        options
            .split(',')
            .filter(|o| *o != "rw" && !o.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Mounts cgroup2 with exactly `flags` on a scratch directory and
    /// unmounts it.
    fn apply(flags: &[String]) {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("mount");
        cmd.args(["-t", "cgroup2"]);
        if !flags.is_empty() {
            cmd.args(["-o", &flags.join(",")]);
        }
        common::gateway::run(cmd.arg("none").arg(dir.path()));
        common::gateway::run(Command::new("umount").arg(dir.path()));
    }

    fn enable() -> NsDelegate {
        let before = Self::flags();
        if before.iter().any(|o| o == "nsdelegate") {
            return NsDelegate { restore: None };
        }
        let mut with = before.clone();
        with.push("nsdelegate".into());
        Self::apply(&with);
        assert!(Self::flags().iter().any(|o| o == "nsdelegate"));
        NsDelegate {
            restore: Some(before),
        }
    }
}

impl Drop for NsDelegate {
    fn drop(&mut self) {
        if let Some(before) = &self.restore {
            Self::apply(before);
        }
    }
}

/// Review finding 10: with `nsdelegate`, `clone3(CLONE_INTO_CGROUP)` from
/// inside the container's cgroup namespace fails, and the session process
/// was born in the gateway's cgroup. The helper now creates it from the
/// host's namespace into the session cgroup: the same race, with
/// `nsdelegate` on, finds every session process in its session cgroup from
/// its first instruction.
#[test]
fn with_nsdelegate_the_session_process_starts_in_its_cgroup() {
    let _one = RACING.lock().unwrap_or_else(|p| p.into_inner());
    let _f = fixture();
    let _nsdelegate = NsDelegate::enable();
    stop_every_new_process();
}
