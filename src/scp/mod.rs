//! Legacy scp (`scp -O`, the rcp protocol) served by this binary inside a
//! container, as the login (issue 5).
//!
//! OpenSSH's `scp -O` does not use SFTP: it runs `scp -t PATH` (sink, an
//! upload) or `scp -f PATH` (source, a download) on the server as an exec
//! command and speaks the rcp protocol over that command's stdin/stdout.
//! Containers seldom have an `scp` binary, and one there would transfer
//! files the gateway cannot digest, so the gateway recognises exactly
//! these commands ([`ScpCommand::parse`]) and answers them itself: the
//! attach helper's session process, once it is the login inside the
//! container's namespaces (the same confinement as the SFTP server,
//! [`crate::sftp`]), runs [`serve`] instead of exec'ing anything. Paths and
//! symlinks then resolve in the container's mount namespace, whose `/` is
//! the container's root, files are created by the login's ids, and each
//! file is reported as one [`crate::sftp::TransferRecord`] line (path,
//! direction, bytes, SHA-256) on the events fd, exactly like SFTP.
//!
//! The protocol, as OpenSSH's `scp.c` (`source()`, `sink()`,
//! `response()`, `run_err()`) speaks it; every control record is one line
//! ending in `\n`:
//!
//! | record | meaning |
//! | --- | --- |
//! | `C<mode> <size> <name>` | a file follows: 4 octal mode digits, its size in bytes, then exactly `size` bytes and one status byte |
//! | `D<mode> 0 <name>` | enter a directory (only with `-r`) |
//! | `E` | leave the directory |
//! | `T<mtime> 0 <atime> 0` | times (seconds; the zeros are microseconds) for the next `C`/`D` (with `-p`) |
//! | `\x01<message>` | a warning: this file failed, go on |
//! | `\x02<message>` | a fatal error: stop |
//!
//! Each record and each file's data is answered by one status: a `\0`
//! byte (ok), or a `\x01`/`\x02` line. Names in `C`/`D` records are single
//! path components: empty names, `.`, `..` and names with `/` are refused
//! (the fix of CVE-2018-20685 in OpenSSH's sink).

mod record;
mod server;
mod word;

use serde::{Deserialize, Serialize};

pub use record::{MAX_LINE_BYTES, MAX_NAME_BYTES, Record, RecordError, parse_record};
pub use server::{MAX_DEPTH, serve, serve_with};

/// Which way a legacy scp transfer goes, as the server sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScpMode {
    /// `scp -t`: the server is the sink, files come in (an upload).
    Sink,
    /// `scp -f`: the server is the source, files go out (a download).
    Source,
}

/// A parsed `scp -t`/`scp -f` server invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScpCommand {
    /// Sink (`-t`) or source (`-f`).
    pub mode: ScpMode,
    /// `-r`: directories are copied recursively.
    pub recursive: bool,
    /// `-p`: modification/access times and modes are kept.
    pub preserve: bool,
    /// `-d`: the target must be a directory (several sources).
    pub target_is_dir: bool,
    /// The one path, unquoted; relative paths are relative to the login's
    /// home (`~` and `~/` are turned into that). At most 4096 bytes, no NUL
    /// or newline.
    pub path: String,
}

/// Why an scp invocation is refused although it is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScpCommandError {
    /// The path uses shell expansion the gateway does not perform.
    #[error(
        "scp -O: the remote path uses {0}, which this gateway does not expand; name the file plainly (or use scp without -O)"
    )]
    ShellFeature(&'static str),
    /// Not exactly one path.
    #[error("scp -O: exactly one remote path is supported per command, got {0}")]
    PathCount(usize),
    /// An option that OpenSSH's scp does not send to its server.
    #[error("scp -O: unsupported option {0:?}")]
    Option(String),
    /// The path is empty, too long or holds a newline.
    #[error("scp -O: the remote path is empty, too long or holds a newline")]
    BadPath,
}

/// Longest accepted path, in bytes (the kernel's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;

impl ScpCommand {
    /// Recognises an scp server invocation as OpenSSH's `scp -O` sends it
    /// (`scp [-v] [-r] [-p] [-d] -t|-f [--] PATH`, options possibly
    /// grouped as in rcp, e.g. `-pt`). Returns `None` when `command` is
    /// not one (its first word is not `scp`, or it has neither `-t` nor
    /// `-f`): it is then an ordinary exec. `Some(Err(_))` is an scp
    /// invocation the gateway refuses, with the reason for the user (a
    /// path with shell wildcards, variables, substitutions or operators:
    /// the gateway runs no shell; several paths; an unknown option).
    pub fn parse(command: &str) -> Option<Result<ScpCommand, ScpCommandError>> {
        let words = match word::split(command) {
            Ok(w) => w,
            Err(feature) => {
                // Only an invocation of scp is answered here; anything else
                // with shell syntax is an ordinary command.
                let first = command.split_ascii_whitespace().next();
                let flagged = command
                    .split_ascii_whitespace()
                    .any(|w| is_flag_group(w) && w[1..].contains(['t', 'f']));
                return (first == Some("scp") && flagged)
                    .then_some(Err(ScpCommandError::ShellFeature(feature)));
            }
        };
        let (first, rest) = words.split_first()?;
        if first.text != "scp" || first.quoted {
            return None;
        }
        let mut mode = None;
        let mut cmd = ScpCommand {
            mode: ScpMode::Sink,
            recursive: false,
            preserve: false,
            target_is_dir: false,
            path: String::new(),
        };
        let mut paths = Vec::new();
        let mut options_done = false;
        let mut bad_option = None;
        for w in rest {
            if !options_done && !w.quoted && w.text == "--" {
                options_done = true;
            } else if !options_done && !w.quoted && w.text.starts_with('-') && w.text.len() > 1 {
                for c in w.text[1..].chars() {
                    match c {
                        't' | 'f' => {
                            let m = if c == 't' {
                                ScpMode::Sink
                            } else {
                                ScpMode::Source
                            };
                            if mode.is_some_and(|old| old != m) {
                                bad_option.get_or_insert_with(|| "-t with -f".to_string());
                            }
                            mode = Some(m);
                        }
                        'r' => cmd.recursive = true,
                        'p' => cmd.preserve = true,
                        'd' => cmd.target_is_dir = true,
                        'v' => {}
                        other => {
                            bad_option.get_or_insert_with(|| format!("-{other}"));
                        }
                    }
                }
            } else {
                options_done = true;
                paths.push(w);
            }
        }
        cmd.mode = mode?;
        if let Some(o) = bad_option {
            return Some(Err(ScpCommandError::Option(o)));
        }
        if paths.len() != 1 {
            return Some(Err(ScpCommandError::PathCount(paths.len())));
        }
        let path = &paths[0].text;
        if path.is_empty() || path.len() > MAX_PATH_BYTES || path.contains(['\n', '\0']) {
            return Some(Err(ScpCommandError::BadPath));
        }
        cmd.path = path.clone();
        Some(Ok(cmd))
    }

    /// True for `-t` (files come into the container).
    pub fn is_upload(&self) -> bool {
        self.mode == ScpMode::Sink
    }
}

fn is_flag_group(w: &str) -> bool {
    w.len() > 1 && w.starts_with('-') && w[1..].chars().all(|c| "tfrpdv".contains(c))
}

#[cfg(test)]
mod tests;
