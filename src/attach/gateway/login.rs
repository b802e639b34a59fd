//! Resolving a login before the access decision (issue 12 point 6): the
//! gateway reads the container's `/etc/passwd` and `/etc/group` through the
//! pinned init's root (`/proc/<pid>/root` of the host, then
//! `openat2(RESOLVE_IN_ROOT)`), with the same bounded parser the session
//! process uses; never NSS. Reads only.

use std::os::fd::AsFd;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::attach::accounts;
use crate::attach::error::AttachError;
use crate::attach::gateway::pin::PinnedInit;
use crate::attach::passwd;
use crate::attach::request::LoginIds;

/// The uid, gid and groups `login` has in the container whose init is
/// `init`, so the policy decides on the uid (`toor:x:0:0` is root) and the
/// audit records it. Blocking (a few small reads); a symlink in the
/// container's `/etc` resolves inside the container, a FIFO or device is
/// refused, files over [`passwd::MAX_FILE_BYTES`] too. Pass the result as
/// [`crate::attach::AttachOptions::expected`]: the session is refused if
/// the files say otherwise by the time it starts.
///
/// # Errors
/// [`AttachError::InvalidRequest`] for a malformed name,
/// [`AttachError::LoginNotFound`], [`AttachError::ContainerNotRunning`] or
/// [`AttachError::InitChanged`] when the init is gone,
/// [`AttachError::Helper`] (step `read_accounts`) when the files cannot be
/// read.
pub fn resolve_login(init: &PinnedInit, login: &str) -> Result<LoginIds, AttachError> {
    if !passwd::valid_login(login) {
        return Err(AttachError::InvalidRequest("invalid login name".into()));
    }
    let root = nix::fcntl::open(
        format!("/proc/{}/root", init.pid).as_str(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|_| AttachError::ContainerNotRunning)?;
    // The root opened above is the pinned init's only if it is still alive
    // now (its pid cannot have been reused in between).
    if !init.is_alive() {
        return Err(AttachError::InitChanged("init exited".into()));
    }
    let account = accounts::read(root.as_fd(), login)?;
    Ok(account.ids())
}
