//! Issue 19: the quick start's `bash tests/demo.sh` works as written both
//! for root (a fresh Debian logged in as root has no `sudo`) and for a user
//! with sudo (the script re-runs itself with sudo, keeping its knobs).
//! Only the start of the script runs here: a fake `sudo` records how it
//! was called, and as root a copy outside the repository stops the script
//! at its first check, before it installs or starts anything.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn script_copy(dir: &Path) -> std::path::PathBuf {
    let script = dir.join("demo.sh");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/demo.sh"),
        &script,
    )
    .unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    script
}

#[test]
fn a_user_with_sudo_is_rerun_as_root_with_the_knobs_kept() {
    let dir = tempfile::tempdir().unwrap();
    let script = script_copy(dir.path());
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let record = dir.path().join("sudo-called");
    std::fs::write(
        bin.join("sudo"),
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" \"IDP_PORT=$IDP_PORT\" > {}\n",
            record.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(bin.join("sudo"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    // As nobody, with the fake sudo first on PATH.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "env"])
        .arg(format!("PATH={}:/usr/bin:/bin", bin.display()))
        .arg("IDP_PORT=9191")
        .arg("bash")
        .arg(&script)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let called = std::fs::read_to_string(&record)
        .unwrap_or_else(|_| panic!("sudo was not called: {stderr}"));
    assert_eq!(
        called,
        format!(
            "--preserve-env=IDP_PORT,LISTEN,PORTCULLIS_LOG bash {}\nIDP_PORT=9191\n",
            script.display()
        )
    );
}

#[test]
fn without_sudo_a_user_is_told_to_become_root_and_root_needs_none() {
    let dir = tempfile::tempdir().unwrap();
    let script = script_copy(dir.path());
    let empty = dir.path().join("empty-bin");
    std::fs::create_dir(&empty).unwrap();
    // Only the basics on PATH: no sudo.
    for tool in ["id", "readlink", "dirname", "stat"] {
        let from = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap();
        std::os::unix::fs::symlink(from, empty.join(tool)).unwrap();
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "env"])
        .arg(format!("PATH={}", empty.display()))
        .arg("/bin/bash")
        .arg(&script)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("run me as root (this machine has no sudo)"),
        "{stderr}"
    );
    // Root without sudo goes on, to the script's first check of its own
    // (this copy is not in a repository).
    let out = Command::new("env")
        .arg(format!("PATH={}", empty.display()))
        .arg("LISTEN=bad")
        .arg("/bin/bash")
        .arg(&script)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("sudo"), "{stderr}");
    assert!(
        stderr.contains("cannot find the repository root"),
        "{stderr}"
    );
}
