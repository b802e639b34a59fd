//! Shared helpers for integration tests. Each test file includes this with
//! `mod common;` and may use only part of it.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod browser;
pub mod fleet;
pub mod gateway;
pub mod idp;
pub mod postgres;
pub mod s3;

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
