//! attach (placeholder until the attach branch lands; every call fails).
#![allow(missing_docs, dead_code)]

use std::time::Duration;

pub const HELPER_ARG: &str = "__attach-helper";

#[derive(Debug, Clone)]
pub struct PtyRequest {
    pub term: String,
    pub cols: u16,
    pub rows: u16,
}

#[derive(Debug, Clone)]
pub struct AttachRequest {
    pub container: String,
    pub login: String,
    pub command: Option<String>,
    pub pty: Option<PtyRequest>,
    pub env: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("not implemented")]
    NotImplemented,
}

impl AttachError {
    pub fn user_message(&self) -> String {
        "not implemented".into()
    }
}

pub struct PinnedInit;
impl PinnedInit {
    pub fn pin(_pid: i32, _cg: &str, _st: Option<u64>) -> Result<PinnedInit, AttachError> {
        Err(AttachError::NotImplemented)
    }
}

pub struct HelperBinary;
impl HelperBinary {
    pub fn sealed_copy_of_current_exe() -> Result<HelperBinary, AttachError> {
        Ok(HelperBinary)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal { signal: i32, core_dumped: bool },
}

pub type PtyMaster = tokio::io::DuplexStream;

pub enum SessionIo {
    Pty(PtyMaster),
    Pipes {
        stdin: tokio::process::ChildStdin,
        stdout: tokio::process::ChildStdout,
        stderr: tokio::process::ChildStderr,
    },
}

pub struct Attached;
impl Attached {
    pub async fn wait(&mut self) -> Result<ExitStatus, AttachError> {
        Err(AttachError::NotImplemented)
    }
    pub fn resize(&self, _c: u16, _r: u16) -> Result<(), AttachError> {
        Ok(())
    }
    pub fn signal(&self, _s: i32) -> Result<(), AttachError> {
        Ok(())
    }
    pub async fn terminate(&mut self, _g: Duration) -> Result<ExitStatus, AttachError> {
        Err(AttachError::NotImplemented)
    }
}

pub async fn spawn(
    _h: &HelperBinary,
    _i: &PinnedInit,
    _r: &AttachRequest,
) -> Result<(Attached, SessionIo), AttachError> {
    Err(AttachError::NotImplemented)
}

pub fn helper_main() -> ! {
    std::process::exit(1)
}
