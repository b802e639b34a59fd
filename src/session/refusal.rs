//! The one refusal type of every front end: a message fit for the user
//! ("Access denied: ...", "Access refused: ..."), never internals. The
//! full reason goes to the audit log, where the refusal is recorded before
//! it is sent.

use std::fmt;

/// Why a session or channel is not started, as the user reads it. The
/// text may hold several lines (joined with CR LF, as terminals want).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(String);

impl Refusal {
    /// A refusal reading `message`.
    pub fn new(message: impl Into<String>) -> Refusal {
        Refusal(message.into())
    }

    /// The message for the user.
    pub fn message(&self) -> &str {
        &self.0
    }

    /// The audit log cannot take the event, so the step does not happen.
    pub fn audit_unavailable() -> Refusal {
        Refusal::new("Access refused: the gateway cannot write its audit log right now.")
    }

    /// The database cannot answer (grants, session rows).
    pub fn database_unavailable() -> Refusal {
        Refusal::new("Access refused: the gateway cannot reach its database right now.")
    }

    /// The session cannot be recorded.
    pub fn recording_unavailable() -> Refusal {
        Refusal::new("Access refused: the gateway cannot record this session right now.")
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
