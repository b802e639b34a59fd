//! The gateway side of a session pty: the master fd from the container's
//! devpts, checked ([`crate::attach::devpts::check_master`]) and driven by
//! tokio. Never opens a pty itself.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::attach::devpts;
use crate::attach::error::AttachError;
use crate::attach::sys;

/// The pty master of a session (nonblocking). Reading returns EOF once the
/// session side is gone (the kernel's EIO is mapped to EOF). Dropping it
/// closes the master, which hangs up the session (SIGHUP). Use
/// `tokio::io::split` to read and write concurrently.
#[derive(Debug)]
pub struct PtyMaster {
    fd: Arc<AsyncFd<OwnedFd>>,
}

/// A weak handle used by [`crate::attach::Attached::resize`]; does not keep
/// the master open.
#[derive(Debug, Clone)]
pub(crate) struct WeakMaster(Weak<AsyncFd<OwnedFd>>);

impl PtyMaster {
    /// Wraps a master fd received from the helper once it is checked to be
    /// a devpts master (review finding 3); sets `O_NONBLOCK`. Errors:
    /// [`AttachError::Protocol`] for any other fd, [`AttachError::Control`].
    pub(crate) fn new(fd: OwnedFd) -> Result<PtyMaster, AttachError> {
        devpts::check_master(fd.as_fd())
            .map_err(|e| AttachError::Protocol(format!("not a pty master: {e}")))?;
        let fl =
            fcntl(fd.as_fd(), FcntlArg::F_GETFL).map_err(|e| AttachError::Control(e.into()))?;
        let fl = OFlag::from_bits_retain(fl) | OFlag::O_NONBLOCK;
        fcntl(fd.as_fd(), FcntlArg::F_SETFL(fl)).map_err(|e| AttachError::Control(e.into()))?;
        let fd = sys::async_fd(fd).map_err(AttachError::Control)?;
        Ok(PtyMaster { fd: Arc::new(fd) })
    }

    /// Sets the window size (`TIOCSWINSZ`); the session gets SIGWINCH.
    /// Sizes are in character cells. Errors: [`AttachError::Control`].
    pub fn resize(&self, cols: u16, rows: u16) -> Result<(), AttachError> {
        sys::set_winsize(self.fd.get_ref().as_fd(), cols, rows).map_err(AttachError::Control)
    }

    pub(crate) fn downgrade(&self) -> WeakMaster {
        WeakMaster(Arc::downgrade(&self.fd))
    }
}

impl WeakMaster {
    /// Resizes when the master is still open; a no-op otherwise.
    pub(crate) fn resize(&self, cols: u16, rows: u16) -> Result<(), AttachError> {
        match self.0.upgrade() {
            Some(fd) => {
                sys::set_winsize(fd.get_ref().as_fd(), cols, rows).map_err(AttachError::Control)
            }
            None => Ok(()),
        }
    }
}

impl AsyncRead for PtyMaster {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // EIO: every slave fd is closed, i.e. the session ended.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PtyMaster {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The size of the terminal on `fd` in character cells (cols, rows), for
/// operators attaching from a host terminal; `None` when `fd` is not a
/// terminal or reports a zero size.
pub fn terminal_size(fd: std::os::fd::BorrowedFd<'_>) -> Option<(u16, u16)> {
    sys::get_winsize(fd).ok().filter(|&(c, r)| c > 0 && r > 0)
}
