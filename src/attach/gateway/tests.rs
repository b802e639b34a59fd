//! Unit tests of the gateway-side attach API (no container needed).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};

use nix::fcntl::{FcntlArg, fcntl};

use crate::attach::error::AttachError;
use crate::attach::gateway::binary::HelperBinary;
use crate::attach::gateway::pin::PinnedInit;
use crate::attach::gateway::spawn::validate;
use crate::attach::request::{AttachRequest, PtyRequest};

#[test]
fn helper_binary_is_sealed_and_executable() {
    let h = HelperBinary::from_path("/bin/true").unwrap();
    assert!(h.memfd.as_raw_fd() >= 10);
    let seals = fcntl(h.memfd.as_fd(), FcntlArg::F_GET_SEALS).unwrap();
    let want = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    assert_eq!(seals & want, want);
    // Writing through /proc/self/fd (the CVE-2019-5736 route) fails.
    let w = std::fs::OpenOptions::new().write(true).open(h.exec_path());
    if let Ok(mut f) = w {
        assert!(f.write_all(b"x").is_err());
    }
    let st = std::process::Command::new(h.exec_path()).status().unwrap();
    assert!(st.success());
}

#[test]
fn pin_rejects_bad_input() {
    let me = std::process::id() as i32;
    assert!(matches!(
        PinnedInit::pin(1, "/x", None),
        Err(AttachError::InvalidRequest(_))
    ));
    assert!(matches!(
        PinnedInit::pin(me, "/", None),
        Err(AttachError::InvalidRequest(_))
    ));
    assert!(matches!(
        PinnedInit::pin(me, "relative", None),
        Err(AttachError::InvalidRequest(_))
    ));
    assert!(matches!(
        PinnedInit::pin(me, "/a/../b", None),
        Err(AttachError::InvalidRequest(_))
    ));
    assert!(matches!(
        PinnedInit::pin(me, "/lxc.payload.nope", None),
        Err(AttachError::InitChanged(_))
    ));
    assert!(matches!(
        PinnedInit::pin(i32::MAX - 1, "/x", None),
        Err(AttachError::ContainerNotRunning)
    ));
}

#[test]
fn request_validation() {
    let mut r = AttachRequest {
        container: "c".into(),
        login: "root".into(),
        command: None,
        pty: None,
        env: vec![],
    };
    assert!(validate(&r).is_ok());
    r.login = "../x".into();
    assert!(validate(&r).is_err());
    r.login = "root".into();
    r.command = Some("a\0b".into());
    assert!(validate(&r).is_err());
    r.command = None;
    r.pty = Some(PtyRequest {
        term: "xterm".into(),
        cols: 0,
        rows: 24,
    });
    assert!(validate(&r).is_err());
}
