//! Markers: asciicast v2 `m` events (`[time, "m", "label"]`,
//! <https://docs.asciinema.org/manual/asciicast/v2/#m-marker>), which
//! asciinema-player shows as chapter marks on its timeline and can jump to
//! (its `markers` option reads them from the recording). The gateway marks
//! what a reviewer looks for: the start, each exec command, each file
//! transferred, each forwarded connection, each resize, signal, kill and
//! lock message, and the exit.
//!
//! Owns the wording of labels only (one prefix word per kind, so `sessions
//! search "exec:"` lists the commands); it never writes anything itself.

/// Longest label written, in bytes; a longer one is cut on a character
/// boundary and ends with `…`.
pub const MAX_LABEL_BYTES: usize = 1024;

/// Which way a file went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferDirection {
    /// From the client into the container.
    Upload,
    /// From the container to the client.
    Download,
}

/// Something a reviewer may want to jump to, recorded in order with the
/// session's output by [`super::Recorder::marker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker<'a> {
    /// A command started with `exec` (label `exec: COMMAND`).
    Exec {
        /// The command line as the client sent it.
        command: &'a str,
    },
    /// A file went through SFTP or scp (label `upload: PATH (N bytes)` or
    /// `download: PATH (N bytes)`).
    FileTransferred {
        /// The file's path inside the container.
        path: &'a str,
        /// Which way it went.
        direction: TransferDirection,
        /// Its size, in bytes.
        bytes: u64,
    },
    /// A forwarded connection opened (label `forward: DESTINATION`).
    ForwardOpened {
        /// `host:port` as the policy saw it.
        destination: &'a str,
    },
    /// The terminal was resized (label `resize: COLSxROWS`).
    Resized {
        /// Columns.
        cols: u32,
        /// Rows.
        rows: u32,
    },
    /// An admin ended the session (label `kill: REASON`).
    Killed {
        /// The reason the user was shown.
        reason: &'a str,
    },
    /// A lock ended or froze the session (label `lock: REASON`).
    Locked {
        /// The lock's message.
        reason: &'a str,
    },
    /// The session started: a shell, a transfer server, a host command
    /// (label `start: WHAT`).
    Started {
        /// `shell`, `sftp`, `scp -t /tmp`, ...
        what: &'a str,
    },
    /// The client sent a signal to the process (label `signal: NAME`,
    /// RFC 4254 §6.9 names: `INT`, `TERM`, ...).
    Signal {
        /// The signal's name, without `SIG`.
        name: &'a str,
    },
    /// The process ended (label `exit: STATUS`: `0`, `127`, `signal
    /// KILL`, `unknown`).
    Exited {
        /// The exit status as the label shows it.
        status: &'a str,
    },
    /// Any other message the gateway showed the user (label `note: TEXT`).
    Note {
        /// The message.
        text: &'a str,
    },
}

impl Marker<'_> {
    /// The `m` event's data: a prefix word, a colon and the facts, at most
    /// [`MAX_LABEL_BYTES`].
    pub fn label(&self) -> String {
        let label = match self {
            Marker::Exec { command } => format!("exec: {command}"),
            Marker::FileTransferred {
                path,
                direction,
                bytes,
            } => {
                let way = match direction {
                    TransferDirection::Upload => "upload",
                    TransferDirection::Download => "download",
                };
                format!("{way}: {path} ({bytes} bytes)")
            }
            Marker::ForwardOpened { destination } => format!("forward: {destination}"),
            Marker::Resized { cols, rows } => format!("resize: {cols}x{rows}"),
            Marker::Killed { reason } => format!("kill: {reason}"),
            Marker::Locked { reason } => format!("lock: {reason}"),
            Marker::Started { what } => format!("start: {what}"),
            Marker::Signal { name } => format!("signal: {name}"),
            Marker::Exited { status } => format!("exit: {status}"),
            Marker::Note { text } => format!("note: {text}"),
        };
        cut(label)
    }
}

/// `label` cut to [`MAX_LABEL_BYTES`] on a character boundary.
fn cut(mut label: String) -> String {
    if label.len() <= MAX_LABEL_BYTES {
        return label;
    }
    let mut end = MAX_LABEL_BYTES - '…'.len_utf8();
    while !label.is_char_boundary(end) {
        end -= 1;
    }
    label.truncate(end);
    label.push('…');
    label
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_the_kind_first() {
        let cases = [
            (Marker::Exec { command: "ls -l" }, "exec: ls -l"),
            (
                Marker::FileTransferred {
                    path: "/etc/hosts",
                    direction: TransferDirection::Download,
                    bytes: 1234,
                },
                "download: /etc/hosts (1234 bytes)",
            ),
            (
                Marker::FileTransferred {
                    path: "/tmp/a b",
                    direction: TransferDirection::Upload,
                    bytes: 0,
                },
                "upload: /tmp/a b (0 bytes)",
            ),
            (
                Marker::ForwardOpened {
                    destination: "10.0.0.5:5432",
                },
                "forward: 10.0.0.5:5432",
            ),
            (
                Marker::Resized {
                    cols: 100,
                    rows: 50,
                },
                "resize: 100x50",
            ),
            (Marker::Killed { reason: "incident" }, "kill: incident"),
            (Marker::Locked { reason: "audit" }, "lock: audit"),
            (Marker::Note { text: "hi" }, "note: hi"),
            (Marker::Started { what: "shell" }, "start: shell"),
            (Marker::Signal { name: "INT" }, "signal: INT"),
            (
                Marker::Exited {
                    status: "signal KILL",
                },
                "exit: signal KILL",
            ),
        ];
        for (marker, label) in cases {
            assert_eq!(marker.label(), label);
        }
    }

    #[test]
    fn long_labels_are_cut_on_a_character_boundary() {
        let command = "é".repeat(1000);
        let label = Marker::Exec { command: &command }.label();
        assert_eq!(label.len(), 1020 + '…'.len_utf8());
        assert!(label.starts_with("exec: éé"));
        assert!(label.ends_with("é…"));
    }
}
