//! Shared helpers for integration tests. Each test file includes this with
//! `mod common;` and may use only part of it.
//!
//! - [`container`]: real busybox LXC containers;
//! - [`gateway`]: the real `portcullis` binary, its CLI and records (also
//!   re-exports the container and ssh helpers under their old names);
//! - [`ssh`]: the real OpenSSH client aimed at a gateway;
//! - [`idp`]: the real test OpenID provider; [`postgres`]: a real
//!   PostgreSQL server;
//! - [`world`]: the builder of a test file's fixture ([`World`]).
//! - [`inproc`]: the gateway in the test process on port 0 with a russh
//!   client, for policy, broker and refusal paths (no LXC, no IdP).
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod browser;
pub mod container;
pub mod fleet;
pub mod gateway;
pub mod idp;
pub mod inproc;
pub mod postgres;
pub mod s3;
pub mod ssh;
pub mod world;

#[allow(unused_imports)]
pub use world::World;

use std::time::{Duration, Instant};

/// Polls `check` every 100 ms until it holds; panics naming `what` after
/// `limit`. For state that settles after an asynchronous event (a session
/// row closed after the client saw its exit, an audit event, a file).
pub fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
