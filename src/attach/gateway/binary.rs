//! The helper executable as the gateway holds it: a sealed memfd copy of
//! this crate's binary (CVE-2019-5736). Owns making and naming that copy;
//! never executes anything itself.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};

use crate::attach::error::AttachError;
use crate::attach::sys;

/// File name of the helper-only binary that [`HelperBinary::sealed_copy_of_helper`]
/// looks for next to the running executable (`src/bin/portcullis-helper.rs`).
pub const HELPER_BINARY_NAME: &str = "portcullis-helper";

/// The helper executable: a sealed memfd copy of a binary (CVE-2019-5736: a
/// container can never reach or overwrite the gateway's binary on disk).
///
/// The attack: container root opens `/proc/<pid>/exe` of a host process
/// that has joined the container (or of its child), and later writes the
/// host binary through that handle. Here that handle can only ever name the
/// memfd: H and C run from it, never from a file on disk, and its seals
/// (`F_SEAL_WRITE|GROW|SHRINK|SEAL`) make every write fail, for root too.
/// runc's `exeseal` and LXC's "rexec" do the same. The copy is made per
/// process that spawns helpers: once per gateway start, once per
/// `portcullis attach` run; [`HelperBinary::sealed_copy_of_helper`] copies
/// the small helper-only binary (about 4 MB, not the 33 MB gateway) to keep
/// that cheap.
///
/// The fd is close-on-exec and numbered >= 10; the helper is exec'd through
/// `/proc/self/fd/<n>` (checked: works for ELF binaries; scripts would not).
#[derive(Debug)]
pub struct HelperBinary {
    pub(crate) memfd: OwnedFd,
}

impl HelperBinary {
    /// Copies `/proc/self/exe` into a sealed memfd. Errors:
    /// [`AttachError::HelperBinary`].
    pub fn sealed_copy_of_current_exe() -> Result<HelperBinary, AttachError> {
        Self::from_path("/proc/self/exe")
    }

    /// The helper for this process: a sealed copy of [`HELPER_BINARY_NAME`]
    /// in the running executable's directory (as `cargo build` and an
    /// install put it), or of the running executable itself (which also
    /// contains the helper) when that file does not exist. The helper file
    /// must be a regular file (not a symlink) with the running executable's
    /// owner and no write permission for group or others; anything else is
    /// refused rather than skipped, since it means the installation was
    /// tampered with. Call once per process (gateway start, CLI run).
    ///
    /// # Errors
    /// [`AttachError::HelperBinary`].
    pub fn sealed_copy_of_helper() -> Result<HelperBinary, AttachError> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let err = AttachError::HelperBinary;
        let exe = std::fs::read_link("/proc/self/exe").map_err(err)?;
        let path = exe.with_file_name(HELPER_BINARY_NAME);
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Self::sealed_copy_of_current_exe();
            }
            Err(e) => return Err(err(e)),
        };
        let meta = file.metadata().map_err(err)?;
        let owner = std::fs::metadata("/proc/self/exe").map_err(err)?.uid();
        if !meta.file_type().is_file() || meta.mode() & 0o022 != 0 || meta.uid() != owner {
            return Err(err(std::io::Error::other(format!(
                "{} is not a regular file of uid {owner} without group/other write permission",
                path.display()
            ))));
        }
        Self::from_file(file)
    }

    /// Copies the ELF binary at `path` (which must be this crate's
    /// `portcullis` or `portcullis-helper` binary, whose `main` calls
    /// [`crate::attach::helper_main`]) into a sealed memfd (`F_SEAL_SEAL|SHRINK|GROW|WRITE`,
    /// plus `F_SEAL_EXEC` when the kernel has it). Errors:
    /// [`AttachError::HelperBinary`].
    pub fn from_path(path: impl AsRef<Path>) -> Result<HelperBinary, AttachError> {
        let src = std::fs::File::open(path.as_ref()).map_err(AttachError::HelperBinary)?;
        Self::from_file(src)
    }

    fn from_file(mut src: std::fs::File) -> Result<HelperBinary, AttachError> {
        let err = AttachError::HelperBinary;
        let base = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
        let memfd = memfd_create(
            "portcullis-helper",
            base | MFdFlags::from_bits_retain(libc::MFD_EXEC),
        )
        .or_else(|_| memfd_create("portcullis-helper", base))
        .map_err(|e| err(e.into()))?;
        let mut dst = std::fs::File::from(memfd);
        std::io::copy(&mut src, &mut dst).map_err(err)?;
        let memfd = OwnedFd::from(dst);
        let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE;
        let exec = SealFlag::from_bits_retain(libc::F_SEAL_EXEC);
        if fcntl(
            memfd.as_fd(),
            FcntlArg::F_ADD_SEALS(seals | exec | SealFlag::F_SEAL_SEAL),
        )
        .is_err()
        {
            fcntl(
                memfd.as_fd(),
                FcntlArg::F_ADD_SEALS(seals | SealFlag::F_SEAL_SEAL),
            )
            .map_err(|e| err(e.into()))?;
        }
        let memfd = sys::dup_at_least(memfd.as_fd(), 10).map_err(err)?;
        Ok(HelperBinary { memfd })
    }

    /// `/proc/self/fd/N` of the memfd, to exec.
    pub(crate) fn exec_path(&self) -> String {
        format!("/proc/self/fd/{}", self.memfd.as_raw_fd())
    }
}
