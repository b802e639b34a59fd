//! CVE-2019-5736 / CVE-2016-9962 class: while sessions are being attached
//! over and over through the gateway, container root (a loop started inside
//! the container) tries to open `/proc/<pid>/exe` and `/proc/<pid>/mem` of
//! every process it can see. It must never get at a gateway or helper
//! process: in an unprivileged container not even the pre-exec session
//! process; in a privileged one (root there is host root, with
//! CAP_SYS_PTRACE) at most that process, already confined to the init's
//! capabilities, and never the executable for writing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Stdio};
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

fn race(c: &TestContainer, gateway: &TestGateway, token: &str, sessions: usize) -> Vec<String> {
    std::fs::write(c.rootfs.join("tmp/race.sh"), RACE_SH).unwrap();
    let _ = std::fs::remove_file(c.rootfs.join("tmp/race.stop"));
    let mut racer = Command::new("lxc-attach")
        .args(["-n", &c.name, "--", "/bin/sh", "/tmp/race.sh"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..sessions {
        let mut cmd = gateway.ssh(&format!("root@{}", c.name), token, dir.path());
        cmd.arg("true");
        let r = run_ssh(&mut cmd, b"");
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    std::fs::write(c.rootfs.join("tmp/race.stop"), "").unwrap();
    let start = Instant::now();
    while racer.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(30), "racer hangs");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = std::fs::read_to_string(c.rootfs.join("tmp/race.out")).unwrap();
    let lines: Vec<String> = out.lines().map(str::to_owned).collect();
    let iterations = lines.iter().find(|l| l.starts_with("iterations ")).unwrap();
    eprintln!("{}: {iterations} over {sessions} sessions", c.name);
    lines
}

#[test]
fn container_root_never_reaches_a_gateway_or_helper_process() {
    let idp = TestIdp::start();
    let privileged = TestContainer::start("racep");
    let unprivileged = TestContainer::start_with("raceu", true);
    let gateway = TestGateway::start(&idp.issuer, "");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let token = rt.block_on(idp.device_flow_id_token("admin"));

    for (c, is_privileged) in [(&unprivileged, false), (&privileged, true)] {
        let init_status =
            std::fs::read_to_string(format!("/proc/{}/status", c.init_pid())).unwrap();
        let init_eff = u64::from_str_radix(&field(&init_status, "CapEff"), 16).unwrap();
        let lines = race(c, &gateway, &token, 40);
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
