//! Shared helpers for integration tests. Each test file includes this with
//! `mod common;` and may use only part of it.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod gateway;
pub mod idp;
pub mod postgres;
