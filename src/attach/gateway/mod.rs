//! The gateway's side of an attach (B): the sealed helper binary, the
//! pinned init, starting the helper and checking what it reports (the
//! session's pidfd, its PTY master, a forward's socket), the started
//! session and its end, and resolving a login before the decision. Runs in
//! the multi-threaded gateway: never forks it, never enters a namespace.

pub(crate) mod attached;
pub(crate) mod binary;
pub(crate) mod connect;
pub(crate) mod control;
pub(crate) mod login;
pub(crate) mod pin;
pub(crate) mod pty;
pub(crate) mod spawn;

#[cfg(test)]
mod tests;
