//! Pure parts of the exec: the environment allow-list and argv building.

use std::ffi::CString;

use super::passwd::PasswdEntry;

/// `PATH` given to every session (LXC's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Longest accepted value of a client-supplied variable, in bytes.
pub const MAX_ENV_VALUE_BYTES: usize = 256;
/// Most client-supplied variables kept.
pub const MAX_CLIENT_ENV: usize = 32;
/// Longest accepted command, in bytes.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Longest accepted `TERM` value, in bytes.
pub const MAX_TERM_BYTES: usize = 64;

/// True for variable names the client may set: `LANG`, `LANGUAGE` and
/// `LC_<UPPER/DIGIT/_>`.
pub fn client_var_allowed(name: &str) -> bool {
    if name == "LANG" || name == "LANGUAGE" {
        return true;
    }
    match name.strip_prefix("LC_") {
        Some(rest) => {
            !rest.is_empty()
                && rest.len() <= 32
                && rest
                    .bytes()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_')
        }
        None => false,
    }
}

/// True for a value that is printable ASCII and at most
/// [`MAX_ENV_VALUE_BYTES`] bytes (locale names are ASCII).
pub fn client_value_allowed(value: &str) -> bool {
    value.len() <= MAX_ENV_VALUE_BYTES && value.bytes().all(|c| (0x20..0x7f).contains(&c))
}

/// True for a usable `TERM`: 1..=64 bytes of `[A-Za-z0-9._+-]`.
pub fn term_allowed(term: &str) -> bool {
    !term.is_empty()
        && term.len() <= MAX_TERM_BYTES
        && term
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'+' | b'-'))
}

/// Builds the session environment from nothing: `PATH`, `HOME`, `USER`,
/// `LOGNAME`, `SHELL`, `TERM` (only with a pty), then the allow-listed
/// client variables (first occurrence wins, at most [`MAX_CLIENT_ENV`]).
/// Disallowed client variables are dropped silently.
pub fn build_env(
    user: &PasswdEntry,
    term: Option<&str>,
    client: &[(String, String)],
) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".to_owned(), DEFAULT_PATH.to_owned()),
        ("HOME".to_owned(), user.home.clone()),
        ("USER".to_owned(), user.name.clone()),
        ("LOGNAME".to_owned(), user.name.clone()),
        ("SHELL".to_owned(), user.shell.clone()),
    ];
    if let Some(t) = term.filter(|t| term_allowed(t)) {
        env.push(("TERM".to_owned(), t.to_owned()));
    }
    let mut added = 0;
    for (k, v) in client {
        if added >= MAX_CLIENT_ENV {
            break;
        }
        if client_var_allowed(k) && client_value_allowed(v) && !env.iter().any(|(e, _)| e == k) {
            env.push((k.clone(), v.clone()));
            added += 1;
        }
    }
    env
}

/// `KEY=VALUE` C strings for `execve`. Fails on an interior NUL.
pub fn env_cstrings(env: &[(String, String)]) -> Result<Vec<CString>, String> {
    env.iter()
        .map(|(k, v)| CString::new(format!("{k}={v}")).map_err(|_| format!("NUL in env {k}")))
        .collect()
}

/// argv for the session: a login shell is `["-" + basename(shell)]`; a
/// command is `[shell, "-c", command]`. Fails on an interior NUL or a command
/// over [`MAX_COMMAND_BYTES`].
pub fn build_argv(shell: &str, command: Option<&str>) -> Result<Vec<CString>, String> {
    let nul = |_| "NUL byte in shell or command".to_owned();
    match command {
        None => {
            let base = shell.rsplit('/').next().unwrap_or(shell);
            let base = if base.is_empty() { "sh" } else { base };
            Ok(vec![CString::new(format!("-{base}")).map_err(nul)?])
        }
        Some(cmd) => {
            if cmd.len() > MAX_COMMAND_BYTES {
                return Err(format!("command longer than {MAX_COMMAND_BYTES} bytes"));
            }
            Ok(vec![
                CString::new(shell).map_err(nul)?,
                CString::new("-c").map_err(nul)?,
                CString::new(cmd).map_err(nul)?,
            ])
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn user() -> PasswdEntry {
        PasswdEntry {
            name: "alice".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/alice".into(),
            shell: "/bin/bash".into(),
        }
    }

    #[test]
    fn env_from_nothing() {
        let env = build_env(&user(), None, &[]);
        let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["PATH", "HOME", "USER", "LOGNAME", "SHELL"]);
        assert_eq!(env[1].1, "/home/alice");
    }

    #[test]
    fn env_allow_list() {
        let client: Vec<(String, String)> = [
            ("LANG", "C.UTF-8"),
            ("LC_ALL", "en_US.UTF-8"),
            ("LD_PRELOAD", "/tmp/x.so"),
            ("PATH", "/evil"),
            ("HOME", "/evil"),
            ("LC_", "x"),
            ("LC_x", "x"),
            ("LC_TIME", "bad\nvalue"),
            ("LC_NUMERIC", &"x".repeat(MAX_ENV_VALUE_BYTES + 1)),
            ("LANG", "second"),
            ("BASH_ENV", "/x"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let env = build_env(&user(), Some("xterm-256color"), &client);
        let get = |k: &str| env.iter().find(|(e, _)| e == k).map(|(_, v)| v.as_str());
        assert_eq!(get("LANG"), Some("C.UTF-8"));
        assert_eq!(get("LC_ALL"), Some("en_US.UTF-8"));
        assert_eq!(get("TERM"), Some("xterm-256color"));
        assert_eq!(get("PATH"), Some(DEFAULT_PATH));
        assert_eq!(get("HOME"), Some("/home/alice"));
        for k in [
            "LD_PRELOAD",
            "LC_",
            "LC_x",
            "LC_TIME",
            "LC_NUMERIC",
            "BASH_ENV",
        ] {
            assert_eq!(get(k), None, "{k}");
        }
        assert_eq!(env.iter().filter(|(k, _)| k == "LANG").count(), 1);
    }

    #[test]
    fn env_count_bounded() {
        let client: Vec<(String, String)> = (0..100)
            .map(|i| (format!("LC_X{i}"), "C".to_owned()))
            .collect();
        assert_eq!(build_env(&user(), None, &client).len(), 5 + MAX_CLIENT_ENV);
    }

    #[test]
    fn bad_term_dropped() {
        for t in ["", "xterm\n", "a b", &"x".repeat(65)] {
            let env = build_env(&user(), Some(t), &[]);
            assert!(!env.iter().any(|(k, _)| k == "TERM"), "{t:?}");
        }
    }

    #[test]
    fn argv() {
        let a = build_argv("/bin/bash", None).unwrap();
        assert_eq!(a, vec![CString::new("-bash").unwrap()]);
        let a = build_argv("/bin/sh", Some("echo hi; exit 3")).unwrap();
        let a: Vec<&str> = a.iter().map(|c| c.to_str().unwrap()).collect();
        assert_eq!(a, ["/bin/sh", "-c", "echo hi; exit 3"]);
        assert!(build_argv("/bin/sh", Some("a\0b")).is_err());
        assert!(build_argv("/bin/sh", Some(&"x".repeat(MAX_COMMAND_BYTES + 1))).is_err());
        assert_eq!(
            build_argv("/", None).unwrap(),
            vec![CString::new("-sh").unwrap()]
        );
    }

    #[test]
    fn env_cstrings_reject_nul() {
        let env = vec![("A".to_owned(), "b\0c".to_owned())];
        assert!(env_cstrings(&env).is_err());
    }
}
