//! The one table of signal names: RFC 4254 §6.10 names (without the
//! `SIG` prefix) and their Linux numbers, for signals clients send
//! (`signal` requests), exit signals sent back (`exit-signal`), and the
//! `exit_signal` of session rows and `session_end` events, whatever front
//! end the session had.

/// RFC 4254 §6.10 signal names and their numbers on Linux.
const SIGNALS: [(i32, &str); 12] = [
    (libc::SIGABRT, "ABRT"),
    (libc::SIGALRM, "ALRM"),
    (libc::SIGFPE, "FPE"),
    (libc::SIGHUP, "HUP"),
    (libc::SIGILL, "ILL"),
    (libc::SIGINT, "INT"),
    (libc::SIGKILL, "KILL"),
    (libc::SIGPIPE, "PIPE"),
    (libc::SIGQUIT, "QUIT"),
    (libc::SIGSEGV, "SEGV"),
    (libc::SIGTERM, "TERM"),
    (libc::SIGUSR1, "USR1"),
];

/// The name of signal `number`: `KILL`, `TERM`, ...; `SIG<number>` for
/// one the table does not name.
pub fn name(number: i32) -> String {
    SIGNALS
        .iter()
        .find(|(n, _)| *n == number)
        .map(|(_, name)| (*name).to_string())
        .unwrap_or_else(|| format!("SIG{number}"))
}

/// The number of the signal named `name` (`KILL`, without `SIG`); `None`
/// for a name the table does not hold (such requests are ignored).
pub fn number(name: &str) -> Option<i32> {
    SIGNALS
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(number, _)| *number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_round_trip() {
        assert_eq!(name(libc::SIGKILL), "KILL");
        assert_eq!(name(libc::SIGTERM), "TERM");
        assert_eq!(name(64), "SIG64");
        for (n, s) in SIGNALS {
            assert_eq!(number(s), Some(n));
            assert_eq!(name(n), s);
        }
        assert_eq!(number("SIGKILL"), None);
        assert_eq!(number("USR2"), None);
    }
}
