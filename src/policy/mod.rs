//! policy (stub)
