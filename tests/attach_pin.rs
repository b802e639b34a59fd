//! A recycled or exited init PID is never entered: the pin check at the
//! library level, against a real LXC container that is stopped and
//! restarted under a pinned init.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::gateway::{TestContainer, run};
use portcullis::attach::{self, AttachError, AttachRequest, HelperBinary, PinnedInit};

fn request(name: &str) -> AttachRequest {
    AttachRequest {
        container: name.to_owned(),
        login: "root".into(),
        command: Some("true".into()),
        pty: None,
        env: Vec::new(),
    }
}

#[test]
fn an_exited_pid_cannot_be_pinned() {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id() as i32;
    child.wait().unwrap();
    let e = PinnedInit::pin(pid, "/lxc.payload.x", None).unwrap_err();
    assert!(
        matches!(
            e,
            AttachError::ContainerNotRunning | AttachError::InitChanged(_)
        ),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_or_restarted_container_is_not_entered_through_an_old_pin() {
    let c = TestContainer::start("pin");
    let helper = HelperBinary::from_path(env!("CARGO_BIN_EXE_portcullis")).unwrap();
    let cgroup = format!("/lxc.payload.{}", c.name);
    let old_pid = c.init_pid();
    let pin = PinnedInit::pin(old_pid, &cgroup, None).unwrap();
    let start_time = pin.start_time();
    let watch = pin.watch().unwrap();
    // The pin works while the init lives.
    let (mut a, _io) = attach::spawn(&helper, &pin, &request(&c.name))
        .await
        .unwrap();
    a.wait().await.unwrap();

    run(Command::new("lxc-stop").args(["-k", "-n", &c.name]));
    tokio::time::timeout(Duration::from_secs(10), watch.exited())
        .await
        .expect("the watch sees the init exit");
    assert!(!pin.is_alive());
    let e = attach::spawn(&helper, &pin, &request(&c.name))
        .await
        .unwrap_err();
    assert!(matches!(e, AttachError::InitChanged(_)), "{e:?}");

    // Restarted: a new init (maybe even the same PID number); the old pin
    // and the old start time are both refused.
    run(Command::new("lxc-start").args(["-n", &c.name]));
    let mut new_pid = None;
    for _ in 0..100 {
        let out = Command::new("lxc-info")
            .args(["-n", &c.name, "-p", "-H"])
            .output()
            .unwrap();
        if let Ok(p) = String::from_utf8_lossy(&out.stdout).trim().parse::<i32>() {
            new_pid = Some(p);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let new_pid = new_pid.expect("restarted");
    let e = attach::spawn(&helper, &pin, &request(&c.name))
        .await
        .unwrap_err();
    assert!(matches!(e, AttachError::InitChanged(_)), "{e:?}");
    let e = PinnedInit::pin(new_pid, &cgroup, Some(start_time)).unwrap_err();
    assert!(matches!(e, AttachError::InitChanged(_)), "{e:?}");
    // A fresh pin of the new init works.
    let fresh = PinnedInit::pin(new_pid, &cgroup, None).unwrap();
    let (mut a, _io) = attach::spawn(&helper, &fresh, &request(&c.name))
        .await
        .unwrap();
    a.wait().await.unwrap();
}

/// Review finding 9: the pin takes only the init itself. A process of the
/// container (same cgroup, alive, but not PID 1 of the container's PID
/// namespace) and the init of a PID namespace nested inside the container
/// (`unshare -p`: PID 1 of its namespace, but one level too deep) are both
/// refused, so a restart plus PID reuse between lookup and pin cannot land
/// a session in either.
#[test]
fn only_the_containers_own_init_is_pinned() {
    let c = TestContainer::start("pinnest");
    let cgroup = format!("/lxc.payload.{}", c.name);
    run(Command::new("lxc-attach").args([
        "-n",
        &c.name,
        "--",
        "/bin/sh",
        "-c",
        "setsid sleep 4101 </dev/null >/dev/null 2>&1 & \
         setsid unshare -p -f sleep 4102 </dev/null >/dev/null 2>&1 &",
    ]));
    // The nested init: a `sleep 4102` whose NSpid ends in 1 (unshare's own
    // process matches the command line too, and comes first).
    let nested_init = |p: &i32| {
        let st = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        st.lines()
            .any(|l| l.starts_with("NSpid:") && l.split_whitespace().last() == Some("1"))
    };
    let (mut plain, mut nested) = (Vec::new(), None);
    common::wait_until("the two sleeps", Duration::from_secs(10), || {
        plain = c.processes_matching("sleep 4101");
        nested = c
            .processes_matching("sleep 4102")
            .into_iter()
            .find(nested_init);
        plain.len() == 1 && nested.is_some()
    });
    let nested = nested.unwrap();
    for pid in [plain[0], nested] {
        let e = PinnedInit::pin(pid, &cgroup, None).unwrap_err();
        assert!(
            matches!(e, AttachError::InitChanged(ref m) if m.contains("not the init")),
            "{pid}: {e:?}"
        );
    }
    let init = PinnedInit::pin(c.init_pid(), &cgroup, None).unwrap();
    // The start time the lookup saw must match.
    let e = PinnedInit::pin(c.init_pid(), &cgroup, Some(init.start_time() + 1)).unwrap_err();
    assert!(matches!(e, AttachError::InitChanged(_)), "{e:?}");
}
